"""The Realtime seam: a provider's WebSocket for one session (``kind: realtime``).

OpenAI's Realtime API is a WebSocket at ``/v1/realtime?model=``, Azure OpenAI's at
``/openai/realtime?api-version=&deployment=``; OpenAI-compatible servers serve OpenAI's.
The gateway opens it with the provider's key (never the client's) and relays events
both ways (runtime/realtime.py); nothing of the protocol is read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import aiohttp

from aigw.compiler.graph import Deployment

from .base import ChatAdapter, not_served


@dataclass(frozen=True, slots=True)
class RealtimeCall:
    """A session to open on ``deployment``; ``beta``: the client speaks the beta protocol
    (``OpenAI-Beta: realtime=v1``), which the upstream is asked for too; ``query``: the
    client's query parameters OpenAI's URL takes besides ``model`` (``intent``,
    ``call_id``), added to the upstream's."""

    deployment: Deployment
    beta: bool
    query: tuple[tuple[str, str], ...] = ()


@runtime_checkable
class RealtimeAdapter(Protocol):
    async def realtime(self, call: RealtimeCall) -> aiohttp.ClientWebSocketResponse:
        """The upstream's WebSocket, open (its handshake answered 101)."""
        ...


def realtime_adapter(adapter: ChatAdapter, deployment: Deployment) -> RealtimeAdapter:
    """``adapter`` as the Realtime seam; the compiler keeps realtime deployments off
    providers without one (AGW354), so the error is for a provider whose adapter lost it."""
    if not isinstance(adapter, RealtimeAdapter):
        raise not_served(deployment, deployment.provider, "Realtime")
    return adapter
