"""HTTP/2: a request body still arriving after its answer is acknowledged and dropped.

The gateway answers some requests before their whole body has arrived: a 401 for a bad
key, a 413 past ``max_request_bytes``, a 400. hypercorn's HTTP/2 protocol forgets a
stream once its answer is sent, and a DATA frame that comes for it afterwards (the
client is still sending the body, as HTTP/2 lets it) raised ``KeyError`` out of the
connection's reader: a traceback in the log, the connection closed with every other
stream on it, and the client never read its answer. Here such a frame is dropped, its
bytes given back to the connection's flow-control window (h2 does the same for a
stream it has itself closed): left unacknowledged they would stall every stream on the
connection once the window is spent.

The stream is not reset (RFC 9113 8.1 allows RST_STREAM NO_ERROR after a complete
answer): httpx, under the openai SDK, takes any reset as a failed request and reports
an error instead of the answer it was sent.

hypercorn has no seam for it: its connections make their HTTP/2 protocol from the name
``H2Protocol`` of ``hypercorn.protocol``, which ``install`` points at the subclass below
(in the serving process, once, before it serves; nothing at import).
"""

from __future__ import annotations

import h2.events
import hypercorn.protocol
from hypercorn.protocol.h2 import H2Protocol


class AnsweredStreamsH2Protocol(H2Protocol):
    """hypercorn's HTTP/2 protocol, dropping the body that follows a stream's answer."""

    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        # One event at a time: while an earlier one is handled the app may finish its
        # answer, and its stream be gone by the time a later DATA frame of the same
        # batch is looked up (nothing is awaited between the check and the lookup).
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self.connection.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id)
                await self._flush()
            else:
                await super()._handle_events([event])


def install() -> None:
    """Have hypercorn's connections speak HTTP/2 with ``AnsweredStreamsH2Protocol``."""
    hypercorn.protocol.H2Protocol = AnsweredStreamsH2Protocol  # type: ignore[attr-defined]
