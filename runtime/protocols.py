"""hypercorn's HTTP/1.1 and HTTP/2 protocols, amended where a client can break them.

HTTP/2: a request body still arriving after its answer is acknowledged and dropped. The
gateway answers some requests before their whole body has arrived: a 401 for a bad
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

HTTP/1.1: a request h11 cannot read (a Content-Length given twice with two values,
headers past h11's 16 KiB, a broken request line) is answered with an OpenAI error object.
hypercorn answered it with an empty body, which the openai SDK shows as an error with no
message; the app never sees such a request.

hypercorn has no seam for either: its connections make their protocols from the names
``H11Protocol`` and ``H2Protocol`` of ``hypercorn.protocol``, which ``install`` points at
the subclasses below (in the serving process, once, before it serves; nothing at import).
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain
from types import MappingProxyType

import h2.events
import h11
import hypercorn.protocol
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol

from .errors import StatusError
from .jsonio import dumps

# What h11's refusals mean (the statuses it hints), said to the client.
_UNREADABLE: Mapping[int, str] = MappingProxyType({
    400: "The request is not valid HTTP/1.1 (its request line, its headers or the length "
         "of its body).",
    431: "The request's headers are too large.",
    501: "The request's Transfer-Encoding is not supported.",
})


class OpenAIErrorsH11Protocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, refusing a request it cannot read OpenAI-shaped."""

    async def _send_error_response(self, status_code: int) -> None:
        message = _UNREADABLE.get(status_code, "The request could not be read as HTTP/1.1.")
        body = dumps(StatusError(status_code, message).body())
        await self._send_h11_event(h11.Response(status_code=status_code, headers=list(chain(
            [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json"),
             (b"connection", b"close")],
            self.config.response_headers("h11")))))
        await self._send_h11_event(h11.Data(data=body))
        await self._send_h11_event(h11.EndOfMessage())


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
    """Have hypercorn's connections speak HTTP/1.1 with ``OpenAIErrorsH11Protocol`` and
    HTTP/2 with ``AnsweredStreamsH2Protocol``."""
    hypercorn.protocol.H11Protocol = OpenAIErrorsH11Protocol  # type: ignore[attr-defined]
    hypercorn.protocol.H2Protocol = AnsweredStreamsH2Protocol  # type: ignore[attr-defined]
