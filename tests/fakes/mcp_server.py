"""A real MCP server, built with the official SDK (``MCPServer``, FastMCP before mcp 2),
speaking streamable HTTP: three tools, and the headers of every request it got."""

from __future__ import annotations

from mcp.server.mcpserver import Context, MCPServer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PATH = "/mcp"


class RecordingMcpServer:
    """``app`` serves the tools ``add``, ``echo``, ``secret`` and ``big`` at ``/mcp``;
    ``headers`` holds each request's headers as the server got them. With
    ``json_response`` it answers each request with one JSON body, not an SSE stream; with
    ``cr_lines`` its SSE lines end with a CR alone, as SSE allows (the SDK's end in CRLF)."""

    def __init__(self, json_response: bool = False, cr_lines: bool = False) -> None:
        self.headers: list[dict[str, str]] = []
        self.cr_lines = cr_lines
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

        self._inner = server.streamable_http_app(streamable_http_path=PATH,
                                                 json_response=json_response)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.headers.append({name.decode("latin-1"): value.decode("latin-1")
                                 for name, value in scope["headers"]})
        inner: ASGIApp = self._inner
        await inner(scope, receive, _cr_lines(send) if self.cr_lines else send)


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
