"""The endpoints agent cards named, kept for a while (runtime/workflows/agent_cards.py)."""

from __future__ import annotations

from aigw.compiler.egress import Egress
from aigw.compiler.pipeline_graph import Agent
from aigw.runtime.workflows.agent_cards import AgentCards

CARD = "https://agents.example/a/.well-known/agent-card.json"


def _agent(url: str = CARD) -> Agent:
    return Agent("a", url, True, Egress(frozenset({"https://agents.example"}), True), (), None)


def test_an_endpoint_is_kept_until_its_ttl_passes_or_it_is_dropped() -> None:
    now = [0.0]
    cards = AgentCards(ttl_s=60, clock=lambda: now[0])
    cards.put(_agent(), "https://agents.example/a/rpc")
    now[0] = 59.9
    assert cards.get(_agent()) == "https://agents.example/a/rpc"
    assert cards.get(_agent("https://agents.example/b/.well-known/agent-card.json")) is None
    now[0] = 60.0
    assert cards.get(_agent()) is None
    cards.put(_agent(), "https://agents.example/a/v2")
    cards.drop(_agent())
    assert cards.get(_agent()) is None
