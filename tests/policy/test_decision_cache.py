"""Cached decisions are exact: a long-lived engine agrees with a fresh one on every request."""

from __future__ import annotations

import random
from pathlib import Path

import cedarpy
import pytest

from aigw.compiler import compile_gateway
from aigw.runtime.policy import Facts, PolicyEngine, RequestGate, principal_for
from aigw.runtime.policy_live import FixedLive

from .conftest import PERMIT_ALL, SHIPPED_ROUTING, config

RULES = """
@id("tight-sla")
forbid (principal, action == Action::"route", resource)
when { context.latency_sla_ms < 500 && resource.average_latency_ms > context.latency_sla_ms };

@id("errors")
forbid (principal, action == Action::"route", resource)
when { decimal("0.05").lessThan(resource.current_error_rate) };

@id("cheap-when-poor")
@priority("40")
permit (principal, action == Action::"route", resource)
when { context.budget_remaining.lessThanOrEqual(decimal("2.5")) && resource.self_hosted };

@id("busy")
forbid (principal, action == Action::"route", resource)
when { resource.in_flight >= resource.queue_depth + 3 || resource.circuit_open == true };

@id("big-requests-need-room")
forbid (principal, action == Action::"route", resource)
when { context.estimated_tokens > resource.context_window - 1000 };

@id("code-intent-not-on-b")
forbid (principal, action == Action::"route", resource == Deployment::"local-b")
when { context.intent == "code" && resource.p95_latency_ms != 0 };

@id("big-invokes")
forbid (principal, action == Action::"invoke", resource == Route::"solo")
when { context.estimated_tokens >= 7000 && context.budget_remaining.lessThan(decimal("1.0")) };
"""


@pytest.mark.parametrize("narrow", [False, True], ids=["wide", "narrow"])
def test_a_caching_engine_decides_as_a_fresh_one(tmp_path: Path, narrow: bool) -> None:
    # "narrow" draws the live values from a few, so that the cached engine meets the
    # same deployment state under many different contexts (where a key too coarse
    # shows); "wide" covers more of the policies.
    root = tmp_path / "gw"
    (root / "policies").mkdir(parents=True)
    (root / "gateway.yaml").write_text(config())
    (root / "policies" / "base.cedar").write_text(PERMIT_ALL)
    (root / "policies" / "rules.cedar").write_text(RULES)
    graph = compile_gateway(root, environ={}).graph
    assert graph is not None
    live: dict[str, dict[str, object]] = {}
    cached = PolicyEngine(graph, FixedLive(live))
    deployments = [graph.deployments["local-a"], graph.deployments["local-b"]]
    keys = {k.name: k for k in graph.keys_by_sha256.values()}
    rng = random.Random(7)
    seen = set()
    for _ in range(600):
        for name in ("local-a", "local-b"):
            if narrow:
                live[name] = {"average_latency_ms": rng.choice([150, 450])}
                continue
            live[name] = {
                "average_latency_ms": rng.choice([0, 100, 299, 300, 301, 450, 900]),
                "p95_latency_ms": rng.choice([0, 0, 800]),
                "current_error_rate": rng.choice([0.0, 0.05, 0.0501, 0.2]),
                "in_flight": rng.randrange(6), "queue_depth": rng.randrange(3),
                "circuit_open": rng.random() < 0.1,
            }
        facts = Facts(route=rng.choice(["pair", "solo"]),
                      estimated_tokens=rng.choice([10, 6999, 7000, 7192, 7193, 9000]),
                      max_tokens=None, stream=False,
                      latency_sla_ms=rng.choice([100, 300, 499, 500, 300_000]),
                      budget_remaining=rng.choice([None, 0.5, 1.0, 2.4999, 2.5, 2.5001, 40.0]),
                      intent=rng.choice(["", "code", "chat"]), hour_of_day=12)
        principal = principal_for(graph.authorization, keys[rng.choice(["dev", "alice"])],
                                  rng.choice([None, "carol"]))
        fresh = PolicyEngine(graph, FixedLive(live))
        for engine_a, engine_b in ((cached, fresh),):
            got = engine_a.route(principal, deployments, engine_a.context(facts))
            want = engine_b.route(principal, deployments, engine_b.context(facts))
            assert got == want, (facts, live)
            invoke = engine_a.invoke(principal, facts.route, engine_a.context(facts))
            assert invoke == engine_b.invoke(principal, facts.route, engine_b.context(facts))
            seen.update((d.allowed, d.policies) for d in got)
            seen.add((invoke.allowed, invoke.policies))
    assert len(seen) >= (3 if narrow else 8)  # the scenarios exercise most of the policies


def test_what_only_crosses_no_threshold_changes_no_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "gw"
    (root / "policies").mkdir(parents=True)
    (root / "gateway.yaml").write_text(config())
    (root / "policies" / "base.cedar").write_text(PERMIT_ALL)
    (root / "policies" / "routing.cedar").write_text(SHIPPED_ROUTING)
    graph = compile_gateway(root, environ={}).graph
    assert graph is not None
    live = {"local-a": {"average_latency_ms": 120}, "local-b": {"current_error_rate": 0.01}}
    engine = PolicyEngine(graph, FixedLive(live))
    key = next(k for k in graph.keys_by_sha256.values() if k.name == "alice")
    principal = principal_for(graph.authorization, key, None)
    deployments = [graph.deployments["local-a"], graph.deployments["local-b"]]
    calls = 0
    real = cedarpy.is_authorized_batch

    def counted(*args: object, **kwargs: object) -> list[cedarpy.AuthzResult]:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cedarpy, "is_authorized_batch", counted)
    for step in range(50):  # budget, SLA, latency and error rate all move...
        live["local-a"]["average_latency_ms"] = 120 + step
        live["local-b"]["current_error_rate"] = 0.01 + step / 10_000
        facts = Facts(route="pair", estimated_tokens=10, max_tokens=None, stream=False,
                      latency_sla_ms=400 - step, budget_remaining=40.0 - step / 3)
        decisions = engine.route(principal, deployments, engine.context(facts))
        assert [d.allowed for d in decisions] == [True, True]
    assert calls == 1  # ...but no comparison changed its answer: one Cedar call in all
    live["local-a"]["average_latency_ms"] = 351  # now over an SLA of 350
    facts = Facts(route="pair", estimated_tokens=10, max_tokens=None, stream=False,
                  latency_sla_ms=350, budget_remaining=20.0)
    decisions = engine.route(principal, deployments, engine.context(facts))
    assert [d.policies for d in decisions] == [("tight-sla-forbids-slow",),
                                               ("any-deployment-may-serve",)]
    assert calls == 2


def test_a_context_value_compared_with_a_resource_attribute_is_part_of_the_key(
    tmp_path: Path,
) -> None:
    # Both SLAs are under 500, so every comparison with a literal comes out the same;
    # only their values against the deployment's latency tell them apart.
    root = tmp_path / "gw"
    (root / "policies").mkdir(parents=True)
    (root / "gateway.yaml").write_text(config())
    (root / "policies" / "base.cedar").write_text(PERMIT_ALL)
    (root / "policies" / "rules.cedar").write_text(
        '@id("tight-sla")\n'
        'forbid (principal, action == Action::"route", resource)\n'
        "when { context.latency_sla_ms < 500 && "
        "resource.average_latency_ms > context.latency_sla_ms };\n")
    graph = compile_gateway(root, environ={}).graph
    assert graph is not None
    engine = PolicyEngine(graph, FixedLive({"local-a": {"average_latency_ms": 300}}))
    key = next(k for k in graph.keys_by_sha256.values() if k.name == "dev")
    principal = principal_for(graph.authorization, key, None)
    deployment = graph.deployments["local-a"]

    def allowed(sla_ms: int) -> bool:
        facts = Facts(route="pair", estimated_tokens=10, max_tokens=None, stream=False,
                      latency_sla_ms=sla_ms)
        return engine.route(principal, [deployment], engine.context(facts))[0].allowed

    assert [allowed(100), allowed(400), allowed(100), allowed(400)] == [False, True, False, True]


def test_an_mcp_servers_tools_are_decided_in_one_cedar_call_then_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "gw"
    (root / "policies").mkdir(parents=True)
    (root / "gateway.yaml").write_text(
        config() + 'mcp_servers:\n  files: {url: "http://127.0.0.1:9/mcp"}\n')
    (root / "policies" / "base.cedar").write_text(PERMIT_ALL)
    (root / "policies" / "tools.cedar").write_text(
        '@id("no-rm")\n'
        'forbid (principal, action == Action::"invoke", resource == McpServer::"files")\n'
        'when { context.tool == "rm" };\n')
    graph = compile_gateway(root, environ={}).graph
    assert graph is not None
    engine = PolicyEngine(graph, FixedLive({}))
    key = next(k for k in graph.keys_by_sha256.values() if k.name == "alice")
    principal = principal_for(graph.authorization, key, None)
    calls = 0
    real = cedarpy.is_authorized_batch

    def counted(*args: object, **kwargs: object) -> list[cedarpy.AuthzResult]:
        nonlocal calls
        calls += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cedarpy, "is_authorized_batch", counted)
    for _ in range(3):  # three tools/list requests, each with a gate of its own
        facts = Facts(route="", estimated_tokens=0, max_tokens=None, stream=False,
                      latency_sla_ms=10_000, hour_of_day=12)
        gate = RequestGate(engine, principal, facts, "key 'alice'")
        assert gate.mcp_tools("files", ["ls", "rm", "cat", "cp"]) == {"ls", "cat", "cp"}
    assert calls == 1  # the four tools' two distinct keys in one call; then all cached
