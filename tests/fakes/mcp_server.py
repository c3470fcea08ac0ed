"""A real MCP server, built with the official SDK (``MCPServer``, FastMCP before mcp 2),
speaking streamable HTTP: a few tools, the headers of every message it got, and its GET
streams (the server's own)."""

from __future__ import annotations

import anyio
from mcp import types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PATH = "/mcp"
RETRY_MS = 300  # what a resumable server's priming events ask a client to wait to reconnect


class RecordingMcpServer:
    """``app`` serves the tools ``add``, ``echo``, ``secret``, ``big``, ``late``, ``poll``,
    ``notify`` and ``shout`` at ``/mcp``; ``headers`` holds each POST's and DELETE's
    headers as the server got them, ``gets`` each GET's, and ``open_gets`` counts the GET
    streams open now. With ``json_response`` it answers each request with one JSON body,
    not an SSE stream; with ``cr_lines`` its SSE lines end with a CR alone, as SSE allows
    (the SDK's end in CRLF); with ``get_stream`` False it has no GET stream (a 405, as the
    spec allows); with ``resumable`` it keeps its events in ``events``, and a GET with
    ``Last-Event-ID`` replays those after it (its priming events ask a client to wait
    ``RETRY_MS`` before it reconnects); with ``traced`` it has the tools ``traceparent``
    too, which answers with the ``traceparent`` its call's ``params._meta`` carried (""
    if none), and ``confirm``, which asks the client to confirm (elicitation/create)
    during the call."""

    def __init__(self, json_response: bool = False, cr_lines: bool = False,
                 get_stream: bool = True, resumable: bool = False,
                 traced: bool = False) -> None:
        self.events = StoredEvents()
        self.headers: list[dict[str, str]] = []
        self.gets: list[dict[str, str]] = []
        self.open_gets = 0
        self.cr_lines = cr_lines
        self.get_stream = get_stream
        server = MCPServer("aigw-test-tools")

        @server.tool()
        def add(a: int, b: int) -> int:
            """Add two numbers."""
            return a + b

        @server.tool()
        def echo(text: str) -> str:
            """Say it back."""
            return text

        @server.tool()
        def secret() -> str:
            """A tool the gateway's allow-list leaves out."""
            return "the secret"

        @server.tool()
        async def big(size: int, ctx: Context, log_first: bool = False) -> str:
            """``size`` bytes of text in one answer (one SSE line), after a progress
            notification on the same stream with ``log_first`` (and a progress token)."""
            if log_first:
                await ctx.report_progress(0.5, 1.0, "here it comes")
            return "x" * size

        @server.tool()
        async def late(seconds: float) -> str:
            """The answer ``seconds`` later, nothing before it."""
            await anyio.sleep(seconds)
            return "late"

        @server.tool()
        async def poll(seconds: float, ctx: Context) -> str:
            """The answer ``seconds`` later, after closing the call's stream (when the
            server keeps its events): its client polls for the rest, as MCP 2025-11-25
            lets a server have it."""
            await ctx.close_sse_stream()
            await anyio.sleep(seconds)
            return "polled"

        @server.tool()
        async def notify(ctx: Context) -> str:
            """Say the tool list changed, outside this call: on the session's GET stream."""
            await ctx.session.send_notification(types.ToolListChangedNotification())
            return "sent"

        @server.tool()
        async def shout(size: int, ctx: Context) -> str:
            """A notification ``size`` bytes long outside this call (on the GET stream)."""
            await ctx.session.send_notification(types.ResourceUpdatedNotification(
                params=types.ResourceUpdatedNotificationParams(uri="x" * size)))
            return "sent"

        if traced:
            server.tool(name="traceparent")(_traceparent)
            server.tool(name="confirm")(_confirm)

        self._inner = server.streamable_http_app(
            streamable_http_path=PATH, json_response=json_response,
            event_store=self.events if resumable else None,
            retry_interval=RETRY_MS if resumable else None)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        inner: ASGIApp = self._inner
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1")
                   for name, value in scope["headers"]}
        if scope["method"] != "GET" or scope["path"] != PATH:
            self.headers.append(headers)
            await inner(scope, receive, _cr_lines(send) if self.cr_lines else send)
            return
        self.gets.append(headers)
        if not self.get_stream:
            await Response("no GET stream here", 405, headers={"allow": "POST, DELETE"})(
                scope, receive, send)
            return
        self.open_gets += 1
        try:
            await inner(scope, receive, send)
        finally:
            self.open_gets -= 1


def _traceparent(ctx: Context) -> str:
    """The ``traceparent`` in this call's ``params._meta`` ("" if none)."""
    meta = ctx.request_context.meta or {}
    return str(meta.get("traceparent", ""))


async def _confirm(ctx: Context, outside: bool = False) -> str:
    """What the client answered when asked to confirm (a request of the server's,
    elicitation/create, on this call's stream; ``outside``, on the GET stream)."""
    answer = await ctx.session.elicit_form(
        "Go ahead?", {"type": "object", "properties": {"ok": {"type": "boolean"}}},
        related_request_id=None if outside else ctx.request_id)
    return f"{answer.action} {answer.content}"


class StoredEvents(EventStore):
    """Every event the server sent, numbered from 1 (``stored``: event id, stream id,
    message), in memory: what a resumption replays."""

    def __init__(self) -> None:
        self.stored: list[tuple[str, str, types.JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: types.JSONRPCMessage | None) -> str:
        event_id = str(len(self.stored) + 1)
        self.stored.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str,
                                  send_callback: EventCallback) -> str | None:
        streams = [stream for event_id, stream, _ in self.stored if event_id == last_event_id]
        if not streams:
            return None
        for event_id, stream, message in self.stored[int(last_event_id):]:
            if stream == streams[0] and message is not None:
                await send_callback(EventMessage(message, event_id))
        return streams[0]


def _cr_lines(send: Send) -> Send:
    """``send`` with an event stream's line endings made CR alone (the SDK's server sends
    each event, its blank line included, in one body message: no CRLF spans two)."""
    events = False

    async def sending(message: Message) -> None:
        nonlocal events
        if message["type"] == "http.response.start":
            events = any(name.lower() == b"content-type" and value.startswith(b"text/event-stream")
                         for name, value in message.get("headers", ()))
        elif message["type"] == "http.response.body" and events:
            body = message.get("body", b"").replace(b"\r\n", b"\r").replace(b"\n", b"\r")
            message = {**message, "body": body}
        await send(message)

    return sending
