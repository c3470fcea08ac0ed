"""The JSON-RPC endpoints agent cards name, and their A2A versions, kept a short while
for ``agent`` steps.

An agent whose ``url`` is its card is otherwise asked for the card on every run of
every step that calls it: one more round trip before each message. What the card
names is kept for ``CARD_TTL_S`` per agent, URL and ``a2a_version`` (a reload that
changes either reads the card again), and dropped sooner when a call to it suggests the agent moved
(runtime/workflows/agents.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aigw.compiler.pipeline_graph import Agent

CARD_TTL_S = 60.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where an agent's JSON-RPC calls go, and the A2A version ("1.0", "0.3", "0.2") they
    speak; ``unsaid``: a card named it without a ``protocolVersion`` (0.2 before 0.2.5,
    or an A2A 0.1 card that does not give itself away)."""

    url: str
    version: str
    unsaid: bool = False


class AgentCards:
    """Each agent's endpoint as its card last named it, until it is ``ttl_s`` old. One
    per ``Workflows``, shared by its runs (one event loop: no lock needed)."""

    def __init__(self, ttl_s: float = CARD_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._found: dict[tuple[str, str, str | None], tuple[Endpoint, float]] = {}

    def get(self, agent: Agent) -> Endpoint | None:
        """The endpoint ``agent``'s card named less than ``ttl_s`` ago, if one did."""
        found = self._found.get((agent.name, agent.url, agent.a2a_version))
        if found is None or self.clock() >= found[1]:
            return None
        return found[0]

    def put(self, agent: Agent, endpoint: Endpoint) -> None:
        now = self.clock()
        # Agents of an older graph are dropped as they expire: the table stays as big
        # as the agents in use.
        self._found = {key: item for key, item in self._found.items() if item[1] > now}
        self._found[(agent.name, agent.url, agent.a2a_version)] = \
            (endpoint, now + self.ttl_s)

    def drop(self, agent: Agent) -> None:
        self._found.pop((agent.name, agent.url, agent.a2a_version), None)
