"""deploy/: the alert rules pass promtool, and the dashboard only queries metrics aigw exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from aigw.runtime.telemetry.metrics import Metrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def _exported_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum"))
    return names


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: ./scripts/test installs Debian's prometheus package")
    return found


def test_alert_rules_pass_promtool_check() -> None:
    result = subprocess.run([_promtool(), "check", "rules", str(DEPLOY / "prometheus/alerts.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10 rules found" in result.stdout


def test_alert_rules_fire_as_their_unit_tests_say() -> None:
    result = subprocess.run([_promtool(), "test", "rules", "alerts_test.yml"],
                            cwd=DEPLOY / "prometheus", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_and_rules_query_only_exported_metrics() -> None:
    exported = _exported_names()
    dashboard = json.loads((DEPLOY / "grafana/aigw-dashboard.json").read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions.append((DEPLOY / "prometheus/alerts.yml").read_text())
    used = {name for text in expressions for name in re.findall(r"\baigw_[a-z_]+", text)}
    assert used and used <= exported, used - exported
    titles = {p["title"] for p in dashboard["panels"]}
    for needed in ("Cost per hour by team", "Cache hit rate", "Upstream failures by provider"
                   " and class", "Guardrail actions per second, by guardrail, side and action",
                   "Semantic cache hits per second by route",
                   "Keys: time left before expiry (keys with expires:)"):
        assert needed in titles
    assert any('result="semantic_hit"' in text for text in expressions)


def test_every_alert_rule_has_a_unit_test() -> None:
    rules = (DEPLOY / "prometheus/alerts.yml").read_text()
    tested = (DEPLOY / "prometheus/alerts_test.yml").read_text()
    for name in re.findall(r"- alert: (\w+)", rules):
        assert f"alertname: {name}" in tested, name
