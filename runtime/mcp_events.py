"""What an MCP server says back, passed on to the client by the proxy (``mcp``): a POST's
SSE stream event by event (a tools/list answer filtered in it, a failure after the first
byte ended with a JSON-RPC error), the response among its events for a client that takes
JSON only, and the server's GET stream, ended after ``STREAM_LIFE_S``; with the errors
a server's answer fails with, its credentials scrubbed from them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from starlette.responses import StreamingResponse
from starlette.types import Send

from aigw.compiler.graph import McpServer

from .errors import GatewayError, McpServerFailed, McpServerTimeout
from .jsonio import dumps, loads
from .live import Live, Shutdown
from .mcp_session import EventIds
from .policy import RequestGate
from .telemetry.mcp import McpCall, finish_mcp
from .telemetry.mcp_tracing import McpTrace
from .uncancelled import Spawn, uncancelled
from .upstream import capped_lines, scrub_url, scrub_values

log = logging.getLogger("aigw.mcp")

SSE = "text/event-stream"
# The longest a GET stream is kept open before it is ended (and the client reopens it).
STREAM_LIFE_S = 3600.0
# The most of an answer held whole (JSON, one SSE event, an error body).
MAX_ANSWER_BYTES = 32 << 20
INTERNAL = -32603  # JSON-RPC's internal error: a stream that failed after its first byte
# How long a client is asked to wait before it opens again a GET stream the gateway ended
# (SSE's retry field, which MCP 2025-11-25 has a server send before it closes a stream
# and its clients respect): a second, and up to a second more at random, so that the
# clients of a replica shutting down do not all come back to the next one at once.
RECONNECT_MS = 1000


async def server_events(server: McpServer, upstream: httpx.Response,
                        listing: Listing | None) -> AsyncGenerator[bytes, None]:
    """The server's SSE stream, one event at a time as bytes to send on; the response to
    a tools/list with only the tools ``listing`` keeps."""
    lines: list[str] = []
    size = 0
    try:
        # capped_lines, not httpx's aiter_lines: that holds a line whole however long it
        # grows, before any cap here could see it.
        async for line in capped_lines(upstream.aiter_bytes(), MAX_ANSWER_BYTES,
                                       lambda: too_large(server)):
            if line:
                size += len(line)
                if size > MAX_ANSWER_BYTES:
                    raise too_large(server)
                lines.append(line)
                continue
            if lines:
                yield _event(lines, listing)
            lines, size = [], 0
        if lines:
            yield _event(lines, listing)
    except httpx.TimeoutException as exc:
        raise McpServerTimeout(f"MCP server '{server.name}' sent nothing for "
                               f"{server.timeout_s:g} s.") from exc
    except httpx.HTTPError as exc:
        raise unreachable(server, exc) from exc
    finally:
        await upstream.aclose()


def _event(lines: list[str], listing: Listing | None) -> bytes:
    data = [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]
    if listing is not None and data:
        try:
            message = loads("\n".join(data))
        except ValueError:
            message = None
        if isinstance(message, dict) and "result" in message:
            kept = [line for line in lines if not line.startswith("data:")]
            kept.append("data: " + dumps(listing.filtered(message)).decode())
            lines = kept
    return ("\n".join(lines) + "\n\n").encode()


@dataclass(slots=True)
class Cursor:
    """Where a server's stream was left (MCP 2025-11-25 lets a server close a call's
    stream before its response, for its client to poll for the rest): the id of its last
    event with one, and how long it asked a client to wait before it reconnects."""

    last_id: str | None = None
    retry_ms: int | None = None

    def read(self, lines: list[str]) -> None:
        """The ``id`` and ``retry`` fields of one event, as SSE has a client read them."""
        for line in lines:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "id" and "\0" not in value:
                # An empty id resets it; one past visible ASCII cannot be sent back as
                # a Last-Event-ID (httpx sends ASCII alone): the stream is not resumable.
                visible = value.isascii() and value.isprintable()
                self.last_id = value if value and visible else None
            elif field == "retry" and value.isascii() and value.isdigit() and len(value) < 10:
                self.retry_ms = int(value)


async def response_of(events: AsyncIterator[bytes], rpc_id: object, cursor: Cursor) -> Any:
    """The JSON-RPC response to ``rpc_id`` among a stream's events; None when the stream
    ends without it (``cursor`` says where)."""
    async for event in events:
        lines = event.decode().splitlines()
        cursor.read(lines)
        data = [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]
        if not data:
            continue
        try:
            message = loads("\n".join(data))
        except ValueError:
            continue
        if isinstance(message, dict) and message.get("id") == rpc_id and "method" not in message:
            return message
    return None


async def finishing(live: Live, call: McpCall, first: bytes, events: AsyncIterator[bytes],
                     rpc_id: object, ids: EventIds) -> AsyncIterator[bytes]:
    """``first`` and the rest of ``events``, their ids sealed by ``ids``, with ``call``
    counted once the stream ends, however it ends. A failure after the first byte cannot
    change the status: it ends the stream with a JSON-RPC error answering ``rpc_id`` (so
    the client's request ends with that error, not a wait for an answer that will not
    come), and is logged."""
    trace = call.trace
    try:
        if first:
            if trace is not None:
                trace.event(first, rpc_id)
            yield ids.shown(first)
        async for event in events:
            if trace is not None:
                trace.event(event, rpc_id)
            yield ids.shown(event)
    except GatewayError as exc:
        call.error = exc.code
        log.warning("MCP stream from '%s' ended early: %s", call.server, exc.message)
        if trace is not None:
            trace.failed(INTERNAL, exc.code, exc.message, {})
        error = {"jsonrpc": "2.0", "id": rpc_id if isinstance(rpc_id, str | int) else None,
                 "error": {"code": INTERNAL, "message": exc.message,
                           "data": {"type": exc.error_type, "code": exc.shown_code}}}
        yield b"event: message\ndata: " + dumps(error) + b"\n\n"
    finally:
        finish_mcp(live.telemetry, call)


async def get_stream_events(server: McpServer, upstream: httpx.Response,
                            trace: McpTrace | None, ids: EventIds,
                            ) -> AsyncGenerator[bytes, None]:
    """The server's GET stream, event by event, their ids sealed by ``ids`` (capped as a
    POST's are; with tracing on, its requests of the client's traced by ``trace``). A
    failure ends it, logged, after a ``reconnect_event``: no request waits on it, and
    the client opens it again. Its ``upstream`` is closed by the ``ServerStream`` that
    sends it, however it ends."""
    try:
        async for event in server_events(server, upstream, None):
            if trace is not None:
                trace.passed(event)
            yield ids.shown(event)
    except GatewayError as exc:
        log.warning("MCP GET stream from '%s' ended early: %s", server.name, exc.message)
        yield reconnect_event()


def reconnect_event() -> bytes:
    """An event with a ``retry`` field alone (no data: no message), sent as the gateway
    ends a GET stream the server did not end: the client's wait before it reconnects.

    >>> reconnect_event().startswith(b"retry: 1")
    True
    """
    return b"retry: %d\n\n" % (RECONNECT_MS + secrets.randbelow(RECONNECT_MS + 1))


class ServerStream(StreamingResponse):
    """A GET stream, ended after ``STREAM_LIFE_S`` or when the gateway begins to shut down
    (the client opens it again, with ``Last-Event-ID``, after the ``reconnect_event``
    that ends it): nothing else bounds a stream that may be idle for hours, a client
    gone without a word (no FIN) would hold its server's stream for ever, and a shutdown
    would wait out its grace for it."""

    def __init__(self, events: AsyncGenerator[bytes, None], upstream: httpx.Response,
                 headers: Mapping[str, str], shutdown: Shutdown,
                 finish: Spawn[None]) -> None:
        super().__init__(events, media_type=SSE,
                         headers={**headers, "cache-control": "no-cache"})
        self._events = events
        self._upstream = upstream
        self._shutdown = shutdown
        self._finish = finish

    async def stream_response(self, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            with anyio.move_on_after(STREAM_LIFE_S) as life:
                watch = asyncio.create_task(self._end_at_shutdown(life))
                try:
                    async for event in self._events:
                        await send({"type": "http.response.body", "body": event,
                                    "more_body": True})
                finally:
                    watch.cancel()
            if life.cancelled_caught:  # ended by the gateway, not by its server
                await send({"type": "http.response.body", "body": reconnect_event(),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:  # the life bound may fall while sending, the client leave before the
            # first event: the server's end is closed still, in a task of its own, though
            # this one is cancelled outright (a shutdown past its grace). httpx closes a
            # response once: a close cut half-way was never finished, and the server held
            # the stream open for nobody (a second GET of the session refused, on some).
            with anyio.CancelScope(shield=True):
                await self._events.aclose()
                if not self._upstream.is_closed:  # not by the server's end (read to it)
                    await uncancelled(self._upstream.aclose, self._finish)

    async def _end_at_shutdown(self, life: anyio.CancelScope) -> None:
        await self._shutdown.began()
        life.cancel()


@dataclass(frozen=True, slots=True)
class Listing:
    """What a tools/list answer keeps: the tools the allow-list names and Cedar lets this
    caller call (``gate``: the message's own, None when no policies are enforced)."""

    server: McpServer
    gate: RequestGate | None

    def filtered(self, message: Any) -> Any:
        """``message`` (a tools/list response) with only the tools kept."""
        result = message.get("result") if isinstance(message, dict) else None
        tools = result.get("tools") if isinstance(result, dict) else None
        if not isinstance(result, dict) or not isinstance(tools, list):
            return message
        named = [tool for tool in tools if isinstance(tool, dict)
                 and isinstance(tool.get("name"), str) and self.server.allows(tool["name"])]
        if self.gate is not None:  # one Cedar call at most, for decisions not cached
            allowed = self.gate.mcp_tools(self.server.name, [tool["name"] for tool in named])
            named = [tool for tool in named if tool["name"] in allowed]
        return {**message, "result": {**result, "tools": named}}


def unreachable(server: McpServer, exc: httpx.HTTPError) -> McpServerFailed:
    detail = scrub(str(exc) or type(exc).__name__, server)
    return McpServerFailed(f"MCP server '{server.name}' is unreachable: {detail}")


def too_large(server: McpServer) -> McpServerFailed:
    return McpServerFailed(f"MCP server '{server.name}' sent an answer larger than "
                           f"{MAX_ANSWER_BYTES >> 20} MiB.")


def scrub(text: str, server: McpServer) -> str:
    """``text`` without the server's header values (its credentials), each whole value
    and each long word of one, nor its url nor its query (which may hold a key)."""
    return scrub_values(scrub_url(text, server.url, f"MCP server '{server.name}'"),
                        server.headers.values())
