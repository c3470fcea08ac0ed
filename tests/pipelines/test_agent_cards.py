"""The endpoints agent cards named, kept for a while (runtime/workflows/agent_cards.py)."""

from __future__ import annotations

from aigw.compiler.egress import Egress
from aigw.compiler.pipeline_graph import Agent
from aigw.runtime.workflows.agent_cards import AgentCards, Endpoint

CARD = "https://agents.example/a/.well-known/agent-card.json"


def _agent(url: str = CARD, version: str | None = None) -> Agent:
    return Agent("a", url, True, Egress(frozenset({"https://agents.example"}), True), (), None,
                 version)


def test_an_endpoint_is_kept_until_its_ttl_passes_or_it_is_dropped() -> None:
    now = [0.0]
    cards = AgentCards(ttl_s=60, clock=lambda: now[0])
    cards.put(_agent(), Endpoint("https://agents.example/a/rpc", "0.3"))
    now[0] = 59.9
    assert cards.get(_agent()) == Endpoint("https://agents.example/a/rpc", "0.3")
    assert cards.get(_agent("https://agents.example/b/.well-known/agent-card.json")) is None
    assert cards.get(_agent(version="1.0")) is None  # reloaded, told another version
    now[0] = 60.0
    assert cards.get(_agent()) is None
    cards.put(_agent(), Endpoint("https://agents.example/a/v2", "1.0"))
    cards.drop(_agent())
    assert cards.get(_agent()) is None
