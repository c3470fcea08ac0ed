"""``first_choice``: the member the attempt loop would call first now, with nothing called."""

from __future__ import annotations

from pathlib import Path

from aigw.compiler import compile_gateway
from aigw.compiler.graph import Graph
from aigw.runtime.chat_request import ChatRequest, Message
from aigw.runtime.providers.base import ChatAdapter
from aigw.runtime.providers.echo import EchoAdapter
from aigw.runtime.routing.breaker import Permit
from aigw.runtime.routing.candidates import ChatAsk
from aigw.runtime.routing.choice import first_choice
from aigw.runtime.routing.state import RoutingState
from aigw.runtime.tokens import TokenCounter

GATEWAY = """
version: 1
providers:
  local: {type: echo}
deployments:
  a: {provider: local, model: a, context_window: 8000}
  b: {provider: local, model: b, context_window: 8000}
  c: {provider: local, model: c, context_window: 8000}
  big: {provider: local, model: big, context_window: 100000}
groups:
  g: {strategy: round_robin, members: [a, b], fallbacks: {on_error: [spare],
                                                          on_context_window: [long]}}
  spare: {members: [c]}
  long: {members: [big]}
settings:
  circuit_breaker: {consecutive_failures: 1, cooldown_s: 600}
routes:
  r: {group: g}
"""


def _chosen(graph: Graph, state: RoutingState, prompt_tokens: int = 10) -> str | None:
    route = graph.routes["r"]
    assert route.group is not None
    adapters: dict[str, ChatAdapter] = {
        "local": EchoAdapter(graph.providers["local"], TokenCounter())}
    request = ChatRequest(model="r", messages=[Message(role="user", content="hi")])
    chosen = first_choice(graph, route.group, ChatAsk(adapters, route, request, prompt_tokens),
                          state, None)
    return None if chosen is None else chosen.deployment.name


def _compiled(root: Path) -> tuple[Graph, RoutingState]:
    """``GATEWAY`` compiled in ``root``, and a routing state in step with it."""
    (root / "gateway.yaml").write_text(GATEWAY)
    graph = compile_gateway(root).graph
    assert graph is not None
    state = RoutingState()
    state.sync(graph)
    return graph, state


def _open(state: RoutingState, graph: Graph, name: str) -> None:
    state.of(graph.deployments[name]).breaker.record(state.clock(), ok=False,
                                                     permit=Permit.CALL)


def test_open_circuits_are_skipped_then_the_error_fallbacks_taken(tmp_path: Path) -> None:
    graph, state = _compiled(tmp_path)
    assert _chosen(graph, state.shadow()) == "a"
    _open(state, graph, "a")
    assert _chosen(graph, state.shadow()) == "b"
    _open(state, graph, "b")
    assert _chosen(graph, state.shadow()) == "c"  # as the loop: skipped, so error fallbacks
    _open(state, graph, "c")
    assert _chosen(graph, state.shadow()) is None
    # A prompt no member of g holds goes where the loop sends it: the window's fallback.
    assert _chosen(graph, state.shadow(), prompt_tokens=50000) == "big"


def test_a_shadow_moves_no_round_robin(tmp_path: Path) -> None:
    graph, state = _compiled(tmp_path)
    assert [_chosen(graph, state.shadow()) for _ in range(3)] == ["a", "a", "a"]
    assert state.round_robin == {}
    assert [_chosen(graph, state) for _ in range(3)] == ["a", "b", "a"]  # the live one turns
