"""``aigw route``: the explanation of a routing decision, with nothing called."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _route(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aigw", "route", str(root), *args],
                          capture_output=True, text=True, timeout=60)


def test_route_explains_order_drops_and_costs(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text("""
version: 1
providers:
  local: {type: echo}
  off: {type: openai, api_key: "${NOT_SET_ANYWHERE}"}
deployments:
  small: {provider: local, model: s, context_window: 4000, price: {input: 1, output: 2}}
  big: {provider: local, model: b, context_window: 200000, price: {input: 5, output: 10}}
  cloud: {provider: off, model: gpt, context_window: 128000}
groups:
  g: {members: [small, cloud], fallbacks: {on_context_window: [long]}}
  long: {members: [big]}
routes:
  r: {group: g}
""")
    result = _route(tmp_path, "--model", "r", "--prompt-tokens", "9000", "--max-tokens", "100")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "route r: 9000 prompt tokens, max_tokens 100",
        "  group g (route, strategy priority)",
        "    dropped small: holds 4000 tokens (at most 4000 out); the request needs 9000 in"
        " + 100 out",
        "    dropped cloud: is disabled: environment variable NOT_SET_ANYWHERE is not set",
        "  group long (context-window fallback, strategy priority)",
        "    1. big  expected cost 0.046000",
    ]


def test_route_names_an_unknown_model(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(
        "version: 1\nproviders: {l: {type: echo}}\n"
        "deployments: {d: {provider: l, model: m, context_window: 10}}\n"
        "routes: {r: {deployment: d}}\n"
    )
    result = _route(tmp_path, "--model", "nope")
    assert result.returncode == 1
    assert "no route named 'nope' (routes: r)" in result.stderr
