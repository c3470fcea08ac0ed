"""``aigw route``: the explanation of a routing decision, with nothing called."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aigw.compiler import compile_gateway
from aigw.runtime.policy import Facts, PolicyEngine, principal_for
from aigw.runtime.policy_live import FixedLive
from aigw.runtime.policy_plan import RoutePlan, plan_route
from aigw.runtime.routing.state import RoutingState


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
  g: {members: [small], fallbacks: {on_context_window: [long]}}
  long: {members: [cloud, big]}
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
        "  group long (context-window fallback, strategy priority)",
        "    1. big  expected cost 0.046000",
        "    dropped cloud: is disabled: environment variable NOT_SET_ANYWHERE is not set",
    ]


FALLBACKS = """
version: 1
providers:
  local: {type: echo}
  off: {type: openai, api_key: "${NOT_SET_ANYWHERE}"}
deployments:
  small: {provider: local, model: s, context_window: 4000}
  big: {provider: local, model: b, context_window: 200000}
  cloud: {provider: off, model: gpt, context_window: 128000}
groups:
  g: {members: [small], fallbacks: {on_error: [], on_rate_limit: [spare],
                                    on_context_window: [long]}}
  with-cloud: {members: [small, cloud], fallbacks: {on_error: [], on_context_window: [long]}}
  spare: {members: [big]}
  long: {members: [big]}
routes:
  r: {group: g}
  c: {group: with-cloud}
keys:
  alice: {sha256: 2f0527c3d35a1f337ec6033b75e33c053e72e7122963d86dffe7c2f10bcbb482}
"""


def test_a_group_with_nothing_to_try_falls_back_only_as_the_attempt_loop_does(
    tmp_path: Path,
) -> None:
    """With no member to try, the attempt loop takes the context-window fallbacks when
    every member was too small, else the error ones; the explanation followed every kind
    (here the rate-limit one), and said a request would be served that the gateway
    refused (found by a review)."""
    (tmp_path / "gateway.yaml").write_text(FALLBACKS)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.cedar").write_text(
        '@id("all")\npermit (principal, action, resource);\n'
        '@id("not-small")\nforbid (principal, action == Action::"route", '
        'resource == Deployment::"small") when { context.estimated_tokens < 1000 };\n')
    graph = compile_gateway(tmp_path).graph
    assert graph is not None
    engine = PolicyEngine(graph, FixedLive({}))
    (key,) = graph.keys_by_sha256.values()

    def plan(route: str, tokens: int) -> RoutePlan:
        facts = Facts(route=route, estimated_tokens=tokens, max_tokens=None, stream=False,
                      latency_sla_ms=1000)
        return plan_route(graph, engine, principal_for(graph.authorization, key, None), facts,
                          RoutingState())

    denied = plan("r", 10)  # small is forbidden: an "error", and g has no error fallback
    assert [tier.group for tier in denied.tiers] == ["g"]
    assert (denied.allowed, denied.policies) == (False, ("not-small",))
    too_small = plan("r", 9000)  # small is too small: the context-window fallback
    assert [(tier.group, tier.reason) for tier in too_small.tiers] == [
        ("g", "route"), ("long", "context-window fallback")]
    assert too_small.deployment == "big"
    # A member too small beside a disabled one (which could not serve anyway): the
    # context-window fallback, as the attempt loop takes it.
    assert [tier.group for tier in plan("c", 9000).tiers] == ["with-cloud", "long"]
    served = plan("r", 2000)  # small may fail any way: every fallback may be reached
    assert [(tier.group, tier.reason) for tier in served.tiers] == [
        ("g", "route"), ("spare", "rate-limit fallback"), ("long", "context-window fallback")]


def test_route_names_an_unknown_model(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text(
        "version: 1\nproviders: {l: {type: echo}}\n"
        "deployments: {d: {provider: l, model: m, context_window: 10}}\n"
        "routes: {r: {deployment: d}}\n"
    )
    result = _route(tmp_path, "--model", "nope")
    assert result.returncode == 1
    assert "no route named 'nope' (routes: r)" in result.stderr
