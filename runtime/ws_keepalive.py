"""WebSocket keepalive: a client that stops answering the gateway's pings is dropped.

hypercorn pings each WebSocket every ``Config.websocket_ping_interval`` seconds, and never
reads the pongs: a client that vanished (a laptop shut, a network that dropped it, a
process hung) kept its connection, and a Realtime session its place under max_parallel,
until TCP gave up (about 15 minutes of retransmits; never, on a quiet session). Here the
stream that has heard nothing from its client since its last ping (no pong, no frame) is
closed at the next one (1011, "keepalive ping timeout", as the ``websockets`` library
closes one), as a pong timeout of one interval: the app gets its disconnect, and a
session ends as when its client leaves.

hypercorn has no seam for it: its HTTP/1.1 and HTTP/2 protocols make their WebSocket
streams from the name ``WSStream`` of their own modules, which ``install`` points at the
subclass below (in the serving process, once, before it serves; nothing at import).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from hypercorn.protocol import h2, h11
from hypercorn.protocol.events import Body, Data, Event, StreamClosed
from hypercorn.protocol.ws_stream import WSStream
from wsproto.events import CloseConnection, Ping

log = logging.getLogger("aigw")

PING_TIMEOUT = 1011  # RFC 6455's "internal error", the code websockets closes one with
_REASON = "keepalive ping timeout"


class KeptAliveWSStream(WSStream):
    """hypercorn's WebSocket stream, closed when its client has not been heard from (a
    pong, or any frame) since the ping before."""

    heard = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Set once the stream is closed: the pings stop then, not an interval later (the
        # connection's tasks, which a stopping server waits for, ended that late).
        self._ended = asyncio.Event()

    async def handle(self, event: Event) -> None:
        if isinstance(event, (Body, Data)):  # the client's bytes (HTTP/2's, HTTP/1.1's once
            # upgraded): its pongs among them
            self.heard = True
        await super().handle(event)
        if self.closed:
            self._ended.set()

    async def _send_pings(self) -> None:
        interval = self.config.websocket_ping_interval
        assert interval is not None  # hypercorn pings only with one
        while not self.closed:
            self.heard = False
            # Within the interval, though the client reads nothing and the send waits for
            # room in a full buffer: the check below is made all the same.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._send_wsproto_event(Ping()), interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ended.wait(), interval)
            if not self.heard and not self.closed:
                await self._dropped()
                return

    async def _dropped(self) -> None:
        log.info("websocket %s dropped: no answer to a ping within %ss",
                 self.scope.get("path"), self.config.websocket_ping_interval)
        # A client that reads nothing may leave no room for the close frame.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._send_wsproto_event(
                CloseConnection(code=PING_TIMEOUT, reason=_REASON)), 1.0)
        # The app is told (websocket.disconnect) and the connection closed.
        await self.send(StreamClosed(stream_id=self.stream_id))


def install() -> None:
    """Have hypercorn's HTTP/1.1 and HTTP/2 protocols make ``KeptAliveWSStream``s."""
    h11.WSStream = KeptAliveWSStream  # type: ignore[attr-defined]
    h2.WSStream = KeptAliveWSStream  # type: ignore[attr-defined]
