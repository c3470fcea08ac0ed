"""The JSON-RPC endpoints agent cards name, kept a short while for ``agent`` steps.

An agent whose ``url`` is its card is otherwise asked for the card on every run of
every step that calls it: one more round trip before each message. What the card
names is kept for ``CARD_TTL_S`` per agent and URL (a reload that changes the URL
reads the new card), and dropped sooner when a call to it suggests the agent moved
(runtime/workflows/agents.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aigw.compiler.pipeline_graph import Agent

CARD_TTL_S = 60.0


class AgentCards:
    """Each agent's endpoint as its card last named it, until it is ``ttl_s`` old. One
    per ``Workflows``, shared by its runs (one event loop: no lock needed)."""

    def __init__(self, ttl_s: float = CARD_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._found: dict[tuple[str, str], tuple[str, float]] = {}

    def get(self, agent: Agent) -> str | None:
        """The endpoint ``agent``'s card named less than ``ttl_s`` ago, if one did."""
        found = self._found.get((agent.name, agent.url))
        if found is None or self.clock() >= found[1]:
            return None
        return found[0]

    def put(self, agent: Agent, endpoint: str) -> None:
        now = self.clock()
        # Agents of an older graph are dropped as they expire: the table stays as big
        # as the agents in use.
        self._found = {key: item for key, item in self._found.items() if item[1] > now}
        self._found[(agent.name, agent.url)] = (endpoint, now + self.ttl_s)

    def drop(self, agent: Agent) -> None:
        self._found.pop((agent.name, agent.url), None)
