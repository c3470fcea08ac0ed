"""The Grafana dashboard and the alert rules (and their unit tests) query only what a real
``aigw serve`` exports at /metrics: every metric name, and every label they select on or
group by. A metric or label renamed in the code, and not in deploy/, shows here, not as
an empty panel or an alert that can never fire."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import openai
from ruamel.yaml import YAML

from ..conftest import DEV_KEY, REPO
from .server import Server

DEPLOY = REPO / "deploy"
# Labels Prometheus adds to every series it scrapes, and a histogram's own.
SCRAPE_LABELS = frozenset({"job", "instance", "le"})
_SELECTOR = re.compile(r"\b(aigw_[a-z_]+)\s*(?:\{([^}]*)\})?")
_GROUPED = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)\s*\(?")


def _scraped(text: str) -> dict[str, set[str]]:
    """Each name a scrape exports (a histogram's series names too), with the labels its
    samples carry (none for a family with no series yet)."""
    names: dict[str, set[str]] = {}
    for line in text.splitlines():
        declared = re.match(r"# TYPE (\w+) (\w+)", line)
        if declared:
            name, kind = declared.groups()
            suffixes = ("_bucket", "_count", "_sum") if kind == "histogram" else ("",)
            for suffix in suffixes:
                names.setdefault(name + suffix, set())
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            if rest:
                names.setdefault(name, set()).update(re.findall(r'(\w+)="', rest.split("}")[0]))
    return names


def _queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every query in deploy/: the dashboard's panels, the alert rules
    and the series their unit tests feed them."""
    dashboard = json.loads((DEPLOY / "grafana/aigw-dashboard.json").read_text())
    queries = [(f"panel {panel['title']!r}", target["expr"])
               for panel in dashboard["panels"] for target in panel["targets"]]
    yaml = YAML(typ="safe")
    rules = yaml.load(DEPLOY / "prometheus/alerts.yml")
    queries += [(f"alert {rule['alert']}", rule["expr"])
                for group in rules["groups"] for rule in group["rules"]]
    tests = yaml.load(DEPLOY / "prometheus/alerts_test.yml")
    queries += [("alerts_test.yml", series["series"])
                for case in tests["tests"] for series in case["input_series"]]
    return queries


def _used(query: str) -> list[tuple[str, set[str]]]:
    """Each metric ``query`` names, with the labels it selects on, or groups it by (a
    ``by (...)`` is checked against the first metric inside what it aggregates)."""
    used = [(name, set(re.findall(r"(\w+)\s*[!=]~?", labels or "")))
            for name, labels in _SELECTOR.findall(query)]
    for grouped in _GROUPED.finditer(query):
        inside = _SELECTOR.search(query, grouped.end())
        if inside is not None:
            used.append((inside.group(1), {label.strip() for label in
                                           grouped.group(1).split(",") if label.strip()}))
    return used


def test_deploy_queries_only_what_a_real_scrape_exports(ops_dir: Path) -> None:
    server = Server(ops_dir)
    try:
        server.wait_ready()
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=DEV_KEY,
                           max_retries=0) as client:  # some series of the request metrics
            client.chat.completions.create(model="fast",
                                           messages=[{"role": "user", "content": "hi"}])
            client.embeddings.create(model="embed", input="hi")
        scraped = _scraped(httpx.get(f"{server.base_url}/metrics", timeout=10).text)
    finally:
        server.stop()
    queries = _queries()
    assert len(queries) > 40, queries  # the parsing above found them
    missing, unlabelled = set(), set()
    for where, query in queries:
        for name, labels in _used(query):
            if name not in scraped:
                missing.add(f"{where}: {name}")
            elif scraped[name] and not labels <= scraped[name] | SCRAPE_LABELS:
                unlabelled.add(f"{where}: {name} has no {sorted(labels - scraped[name])}")
    assert not missing, sorted(missing)
    assert not unlabelled, sorted(unlabelled)
