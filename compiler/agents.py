"""The ``agents:`` section linked: each remote A2A agent's URL checked and its credentials read.

An agent is called by ``agent`` pipeline steps (runtime/workflows/agents.py) over the
A2A JSON-RPC binding, of A2A 1.0, 0.3 or 0.2 (``a2a_version``, else as its card says). Its
``url`` is written in the config, never templated, so its origin (scheme, host and
port) is where every call to it goes; an agent card's endpoint must be on that origin
too. Credentials come only from ${ENV} references: a
literal api_key is warning ``AGW310``, an unset variable ``AGW309`` and disables the
agent (a step calling it fails and says why), as an api_key or header that is not ASCII
text does; a URL aigw cannot call is ``AGW336``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import codes
from .diagnostics import DiagnosticSink, shown_url
from .egress import Egress, endpoint, origin
from .mcp_servers import not_ascii
from .pipeline_graph import Agent
from .source import Resolve
from .spec import AgentSpec

if TYPE_CHECKING:
    from .link import Entry

# Where an agent card is published: A2A 1.0, and the name 0.x servers used.
CARD_PATHS = ("/.well-known/agent-card.json", "/.well-known/agent.json")


def link_agent(entry: Entry[AgentSpec], resolve: Resolve, sink: DiagnosticSink) -> Agent:
    """``entry`` as the runtime calls it, reporting what is wrong with it."""
    spec = entry.spec
    unset: list[str] = []
    url = resolve(spec.url, entry.value("url"), unset)
    headers: list[tuple[str, str]] = []
    if spec.api_key is not None:
        if "${" not in spec.api_key:
            sink.add(codes.LITERAL_SECRET, f"agent '{entry.name}' has a literal api_key in the "
                     "config", entry.value("api_key"),
                     "keep keys out of git: write api_key: ${SOME_ENV_VAR} and set it where "
                     "aigw runs")
        key = resolve(spec.api_key, entry.value("api_key"), unset)
        headers.append(("authorization", f"Bearer {key}"))
    for name, value in spec.headers.items():
        headers.append((name.lower(), resolve(value, entry.value("headers", name), unset)))
    reason = (f"environment variable {', '.join(unset)} is not set" if unset
              else not_ascii(headers))
    allowed, card = _origin(url, entry, sink) if not unset else (None, False)
    return Agent(
        name=entry.name,
        url=url,
        card=card,
        egress=Egress(frozenset({allowed} if allowed else ()), True),
        headers=tuple(headers),
        disabled_reason=reason,
        # An endpoint has no card to say which version it speaks: 1.0 unless told
        a2a_version=spec.a2a_version or (None if card else "1.0"),
    )


def _origin(url: str, entry: Entry[AgentSpec], sink: DiagnosticSink) -> tuple[str | None, bool]:
    """The origin ``url`` reaches and whether it is an agent card; None when it is not
    a URL aigw can call (reported)."""
    parsed = endpoint(url, "api_key or headers", "an agent's")
    if isinstance(parsed, str):
        sink.add(codes.AGENT_URL, f"agent '{entry.name}' cannot be called at "
                 f"{shown_url(url)!r}: {parsed}", entry.value("url"),
                 "write the agent card's URL (https://host/.well-known/agent-card.json) or "
                 "its JSON-RPC endpoint")
        return None, False
    return (origin(parsed.scheme, parsed.hostname or "", parsed.port),
            parsed.path.endswith(CARD_PATHS))
