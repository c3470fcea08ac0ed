"""A real MCP server, built with the official SDK (``MCPServer``, FastMCP before mcp 2),
speaking the HTTP+SSE transport of protocol 2024-11-05: a GET of ``/sse`` opens the event
stream, whose first event (``endpoint``) names ``/messages/?session_id=...`` to POST
each message to; every answer comes on the stream."""

from __future__ import annotations

import asyncio

from mcp import types
from mcp.server.mcpserver import Context, MCPServer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PATH = "/sse"
MUTE = "/mute"  # an event stream that never names its endpoint
ELSEWHERE = "/elsewhere"  # an event stream whose endpoint is on another origin


class SseMcpServer:
    """``app`` serves the tools ``add``, ``progress``, ``late``, ``notify`` and ``vanish``
    over HTTP+SSE at ``/sse``; ``gets`` holds each GET's headers, ``posts`` each POST's,
    and ``open_streams`` counts the event streams open now."""

    def __init__(self) -> None:
        self.gets: list[dict[str, str]] = []
        self.posts: list[dict[str, str]] = []
        self.open_streams = 0
        self.cut = asyncio.Event()  # set: every event stream ends, cut mid-way
        self._later: set[asyncio.Task[None]] = set()
        server = MCPServer("aigw-test-sse")

        @server.tool()
        def add(a: int, b: int) -> int:
            """Add two numbers."""
            return a + b

        @server.tool()
        async def progress(ctx: Context) -> str:
            """A progress notification during the call, then the answer."""
            await ctx.report_progress(0.5, 1.0, "half way")
            return "done"

        @server.tool()
        async def notify(ctx: Context) -> str:
            """The tool list changed, said a moment after this call has been answered: with
            no call open, the gateway passes it on in the session's GET stream."""
            session = ctx.session

            async def later() -> None:
                await asyncio.sleep(0.3)
                await session.send_notification(types.ToolListChangedNotification())

            task = asyncio.create_task(later())
            self._later.add(task)
            task.add_done_callback(self._later.discard)
            return "soon"

        @server.tool()
        async def late(seconds: float) -> str:
            """The answer ``seconds`` later, nothing before it."""
            await asyncio.sleep(seconds)
            return "late"

        @server.tool()
        async def vanish() -> str:
            """Never answers: the event streams are cut, as a server that crashes cuts them."""
            self.cut.set()
            await asyncio.Event().wait()
            return "never"

        self._inner: ASGIApp = server.sse_app(sse_path=PATH)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._inner(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1")
                   for name, value in scope["headers"]}
        if scope["method"] != "GET":
            self.posts.append(headers)
            await self._inner(scope, receive, send)
            return
        self.gets.append(headers)
        self.open_streams += 1
        try:
            if scope["path"] in (MUTE, ELSEWHERE):
                await _stream(send, receive, b": hello\n\n" if scope["path"] == MUTE else
                              b"event: endpoint\ndata: http://elsewhere.invalid/messages/\n\n")
            else:
                await self._cut_when_told(scope, receive, send)
        finally:
            self.open_streams -= 1

    async def _cut_when_told(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The SDK's event stream, until ``cut`` is set: then it ends with no word more
        (no answer to a call, no end of the chunked body), as a crashed server's does.
        The SDK is told its client left, the one end it cleans up after."""
        async def receiving() -> Message:
            got = asyncio.ensure_future(receive())
            cut = asyncio.ensure_future(self.cut.wait())
            await asyncio.wait([got, cut], return_when=asyncio.FIRST_COMPLETED)
            cut.cancel()
            if got.done():
                return got.result()
            got.cancel()
            return {"type": "http.disconnect"}

        async def sending(message: Message) -> None:
            if not self.cut.is_set():
                await send(message)

        await self._inner(scope, receiving, sending)
        if self.cut.is_set():
            raise ConnectionAbortedError("the event stream was cut")


async def _stream(send: Send, receive: Receive, first: bytes) -> None:
    """An event stream that says ``first`` and then nothing, until its client leaves."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": first, "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass
