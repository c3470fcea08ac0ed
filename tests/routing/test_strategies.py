"""Group strategies over many requests, the breaker's state machine, and state across reloads."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from aigw.compiler import compile_gateway
from aigw.compiler.graph import BreakerPolicy, Graph
from aigw.runtime.chat_request import ChatRequest
from aigw.runtime.live import Gateway
from aigw.runtime.routing.breaker import CircuitBreaker, CircuitState, Permit
from aigw.runtime.routing.candidates import chat_prefix
from aigw.runtime.routing.state import RoutingState
from aigw.runtime.routing.strategies import Demand, order, prefix_digest
from aigw.runtime.tokens import TokenCounter

DEMAND = Demand(prompt_tokens=1000, output_tokens=100, stream=False)


def _graph(tmp_path: Path, strategy: str, extra: str = "") -> Graph:
    (tmp_path / "gateway.yaml").write_text(f"""
version: 1
providers:
  local: {{type: echo}}
deployments:
  a: {{provider: local, model: a, context_window: 9000, price: {{input: 3, output: 9}}}}
  b: {{provider: local, model: b, context_window: 9000, price: {{input: 1, output: 2}},
      limits: {{tpm: 1000}}}}
  c: {{provider: local, model: c, context_window: 9000, price: {{input: 2, output: 2}},
      limits: {{tpm: 5000}}}}
groups:
  g: {{members: [a, b, c], strategy: {strategy}{extra}}}
routes:
  r: {{group: g}}
""")
    result = compile_gateway(tmp_path, environ={})
    assert result.graph is not None, result.diagnostics
    return result.graph


def _first_choices(graph: Graph, state: RoutingState, times: int) -> Counter[str]:
    group = graph.groups["g"]
    return Counter(order(group, group.members, state, DEMAND)[0].name for _ in range(times))


def test_weighted_follows_the_weights(tmp_path: Path) -> None:
    graph = _graph(tmp_path, "weighted", ", weights: {a: 6, b: 3, c: 1}")
    state = RoutingState(rng=random.Random(7))
    state.sync(graph)
    counts = _first_choices(graph, state, 10_000)
    for name, share in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
        assert abs(counts[name] / 10_000 - share) < 0.02, counts


def test_round_robin_cycles_evenly(tmp_path: Path) -> None:
    graph = _graph(tmp_path, "round_robin")
    state = RoutingState()
    state.sync(graph)
    counts = _first_choices(graph, state, 300)
    assert counts == Counter({"a": 100, "b": 100, "c": 100})


def test_least_busy_prefers_fewest_in_flight(tmp_path: Path) -> None:
    graph = _graph(tmp_path, "least_busy")
    state = RoutingState()
    state.sync(graph)
    state.stats["a"].in_flight, state.stats["b"].in_flight, state.stats["c"].in_flight = 5, 2, 9
    group = graph.groups["g"]
    assert [d.name for d in order(group, group.members, state, DEMAND)] == ["b", "a", "c"]


def test_lowest_latency_measures_unknowns_first_then_prefers_fast(tmp_path: Path) -> None:
    graph = _graph(tmp_path, "lowest_latency")
    state = RoutingState()
    state.sync(graph)
    state.stats["a"].observe_latency(300)
    state.stats["b"].observe_latency(80)
    group = graph.groups["g"]
    assert [d.name for d in order(group, group.members, state, DEMAND)] == ["c", "b", "a"]
    state.stats["c"].observe_latency(500)
    assert [d.name for d in order(group, group.members, state, DEMAND)] == ["b", "a", "c"]
    stream = Demand(1000, 100, stream=True)
    state.stats["a"].observe_ttft(10)
    assert order(group, group.members, state, stream)[0].name == "a"


def test_lowest_cost_uses_the_price_table(tmp_path: Path) -> None:
    graph = _graph(tmp_path, "lowest_cost")
    state = RoutingState()
    group = graph.groups["g"]
    # 1000 in + 100 out: a = 3.9e-3, b = 1.2e-3, c = 2.2e-3
    assert [d.name for d in order(group, group.members, state, DEMAND)] == ["b", "c", "a"]


def test_usage_prefers_most_tpm_headroom(tmp_path: Path) -> None:
    graph = _graph(tmp_path, "usage")
    state = RoutingState()
    state.sync(graph)
    state.stats["c"].add_usage(state.clock(), 4900)
    group = graph.groups["g"]
    # a has no declared quota (unbounded); b has 1000 left; c has 100 left
    assert [d.name for d in order(group, group.members, state, DEMAND)] == ["a", "b", "c"]


def test_usage_window_counts_the_last_minute_and_stays_bounded(tmp_path: Path) -> None:
    """Every request adds its tokens; the window must forget, whichever strategy runs
    (it once kept one entry per request forever unless the usage strategy read it)."""
    graph = _graph(tmp_path, "priority")
    now = [1000.0]
    state = RoutingState(clock=lambda: now[0])
    state.sync(graph)
    stats = state.stats["c"]
    for _ in range(20_000):  # 200 requests a second for 100 seconds, 10 tokens each
        stats.add_usage(now[0], 10)
        now[0] += 0.005
    assert len(stats._usage) <= 62  # a second's bucket each, about a minute of them
    assert 119_000 <= stats.tokens_last_minute(now[0]) <= 121_000  # 60 s x 200 x 10
    now[0] += 61.0
    assert stats.tokens_last_minute(now[0]) == 0


def test_breaker_state_machine() -> None:
    now = [100.0]
    breaker = CircuitBreaker(BreakerPolicy(3, 0.5, 4, 10.0, 5.0))
    for _ in range(2):
        breaker.record(now[0], ok=False, permit=Permit.CALL)
    assert breaker.state(now[0]) is CircuitState.CLOSED
    breaker.record(now[0], ok=True, permit=Permit.CALL)  # resets the run of failures
    breaker.record(now[0], ok=False, permit=Permit.CALL)
    assert breaker.state(now[0]) is CircuitState.OPEN  # 3 of 4 failed in the window: rate 0.75
    assert breaker.try_acquire(now[0] + 4.9) is None
    assert breaker.try_acquire(now[0] + 5.0) is Permit.PROBE  # half-open: one probe...
    assert breaker.try_acquire(now[0] + 5.1) is None  # ...only one
    breaker.record(now[0] + 5.2, ok=True, permit=Permit.PROBE)
    assert breaker.state(now[0] + 5.2) is CircuitState.CLOSED


def test_only_the_probe_decides_a_half_open_circuit() -> None:
    breaker = CircuitBreaker(BreakerPolicy(1, 0.5, 100, 10.0, 5.0))
    early, late = breaker.try_acquire(0.0), breaker.try_acquire(0.0)  # while closed
    assert early is late is Permit.CALL
    breaker.record(0.0, ok=False, permit=Permit.CALL)
    probe = breaker.try_acquire(5.0)
    assert probe is Permit.PROBE
    breaker.release(early)  # ended without a verdict (a 400, a 429, a client gone)
    breaker.record(5.1, ok=True, permit=late)  # ended well, during half-open
    assert breaker.try_acquire(5.2) is None  # the probe is still out: nobody else
    assert breaker.state(5.2) is CircuitState.HALF_OPEN
    breaker.record(5.3, ok=False, permit=probe)
    assert breaker.state(5.3) is CircuitState.OPEN


def test_consecutive_failures_open_the_breaker_below_min_requests() -> None:
    breaker = CircuitBreaker(BreakerPolicy(2, 0.9, 100, 10.0, 5.0))
    breaker.record(1.0, ok=False, permit=Permit.CALL)
    breaker.record(1.1, ok=False, permit=Permit.CALL)
    assert breaker.state(1.2) is CircuitState.OPEN


async def test_routing_state_survives_a_reload(gateway_dir: Path, counter: TokenCounter) -> None:
    gateway = Gateway(gateway_dir, counter)
    stats = gateway.routing.stats["echo-small"]
    stats.observe_latency(42.0)
    config = gateway_dir / "gateway.yaml"
    text = config.read_text().replace("  smart: {group: smart", "  smarter: {group: smart")
    config.write_text(text)
    report = await gateway.reload("test")
    assert report.ok
    assert gateway.routing.stats["echo-small"] is stats
    assert gateway.routing.stats["echo-small"].latency_ms == 42.0


def _conversation(index: int) -> Demand:
    digest = prefix_digest([f"You are assistant number {index}.", f"Question {index}?"])
    return Demand(prompt_tokens=1000, output_tokens=100, stream=False, prefix=digest)


def test_prefix_affinity_keeps_a_conversation_on_one_member_and_spreads_the_others(
    tmp_path: Path,
) -> None:
    graph = _graph(tmp_path, "prefix_affinity")
    group = graph.groups["g"]
    state = RoutingState()
    state.sync(graph)
    homes = {i: order(group, group.members, state, _conversation(i))[0].name for i in range(300)}
    for i in range(300):  # every later turn goes to the same member
        assert order(group, group.members, state, _conversation(i))[0].name == homes[i]
    spread = Counter(homes.values())
    assert set(spread) == {"a", "b", "c"} and min(spread.values()) > 60, spread
    # Removing a member moves only the conversations it had (rendezvous hashing).
    without_c = [m for m in group.members if m.name != "c"]
    for i, home in homes.items():
        if home != "c":
            assert order(group, without_c, state, _conversation(i))[0].name == home


def test_prefix_affinity_gives_way_when_its_member_is_much_busier(tmp_path: Path) -> None:
    graph = _graph(tmp_path, "prefix_affinity")
    group = graph.groups["g"]
    state = RoutingState()
    state.sync(graph)
    demand = _conversation(7)
    home = order(group, group.members, state, demand)[0]
    state.of(home).in_flight = 4  # within the slack (4 over the least busy): it stays
    assert order(group, group.members, state, demand)[0] is home
    state.of(home).upstream_running, state.of(home).queue_depth = 9, 3  # the server says 12
    moved = order(group, group.members, state, demand)
    assert moved[0] is not home and home in moved[1:]


def test_a_prefix_is_digested_for_a_prefix_affinity_group_however_deep_the_fallback(
    tmp_path: Path,
) -> None:
    (tmp_path / "gateway.yaml").write_text("""
version: 1
providers:
  local: {type: echo}
deployments:
  a: {provider: local, model: a, context_window: 9000}
  b: {provider: local, model: b, context_window: 9000}
groups:
  g1: {members: [a], fallbacks: [g2]}
  g2: {members: [a], fallbacks: {on_rate_limit: [g3]}}
  g3: {members: [a, b], strategy: prefix_affinity}
  plain: {members: [a, b]}
routes:
  deep: {group: g1}
  plain: {group: plain}
""")
    compiled = compile_gateway(tmp_path, environ={}).graph
    assert compiled is not None
    request = ChatRequest.model_validate(
        {"model": "deep", "messages": [{"role": "user", "content": "hello"}]})
    assert chat_prefix(compiled.routes["deep"], request) == prefix_digest(["hello"])
    assert chat_prefix(compiled.routes["plain"], request) == 0  # nobody wants it


def test_a_deployment_a_reload_removed_does_not_come_back_when_its_request_ends(
    tmp_path: Path,
) -> None:
    old = _graph(tmp_path, "priority")
    state = RoutingState()
    state.sync(old)
    removed = old.deployments["c"]
    stats = state.of(removed)  # a request in flight on it
    stats.in_flight += 1
    config = (tmp_path / "gateway.yaml").read_text().replace("members: [a, b, c]",
                                                            "members: [a, b]")
    (tmp_path / "gateway.yaml").write_text(config.replace(
        "  c: {provider: local, model: c, context_window: 9000, price: {input: 2, output: 2},\n"
        "      limits: {tpm: 5000}}\n", ""))
    new = compile_gateway(tmp_path, environ={}).graph
    assert new is not None and "c" not in new.deployments
    state.sync(new)
    state.of(removed).in_flight -= 1  # the request ends, on the removed deployment
    assert set(state.stats) == {"a", "b"}
    assert set(state.snapshot()) == {"a", "b"}
