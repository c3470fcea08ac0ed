"""A real stdio MCP server, built with the official SDK's ``MCPServer`` (FastMCP): run as
``python mcp_stdio_server.py``, it speaks JSON-RPC lines on its stdin and stdout."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from mcp import types
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("aigw-test-stdio")
_later: set[asyncio.Task[None]] = set()


@server.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@server.tool()
def pid() -> int:
    """This process's id: the test sees it stop."""
    return os.getpid()


@server.tool()
def environment(name: str) -> str:
    """``name`` in this process's environment ("" when unset)."""
    return os.environ.get(name, "")


@server.tool()
async def progress(ctx: Context) -> str:
    """A progress notification during the call, then the answer."""
    await ctx.report_progress(0.5, 1.0, "half way")
    return "done"


@server.tool()
async def late(seconds: float, ctx: Context) -> str:
    """A progress notification at once, the answer ``seconds`` later: a client can lose
    the call's stream between the two."""
    await ctx.report_progress(0.5, 1.0, "half way")
    await asyncio.sleep(seconds)
    return "late"


@server.tool()
async def notify(ctx: Context) -> str:
    """The tool list changed, said a moment after this call has been answered: with no
    call open, it goes to the session's GET stream."""
    session = ctx.session

    async def later() -> None:
        await asyncio.sleep(0.3)
        await session.send_notification(types.ToolListChangedNotification())

    task = asyncio.create_task(later())
    _later.add(task)
    task.add_done_callback(_later.discard)
    return "soon"


@server.tool()
async def chatter(prefix: str, count: int, ctx: Context) -> str:
    """``count`` resources said to be updated (``memo://<prefix>/<n>``), a moment after
    this call has been answered: with no call open, they go to the session's GET
    stream, or are kept for it while its client is away."""
    session = ctx.session

    async def later() -> None:
        await asyncio.sleep(0.2)
        for n in range(count):
            await session.send_resource_updated(f"memo://{prefix}/{n}")

    task = asyncio.create_task(later())
    _later.add(task)
    task.add_done_callback(_later.discard)
    return "soon"


@server.tool()
def traceparent(ctx: Context) -> str:
    """The ``traceparent`` in this call's ``params._meta`` ("" if none)."""
    meta = ctx.request_context.meta or {}
    return str(meta.get("traceparent", ""))


@server.tool()
def crash() -> str:
    """The process ends without an answer, saying so on stderr."""
    print("aigw-test-stdio crashing", file=sys.stderr, flush=True)
    os._exit(3)


if __name__ == "__main__":
    if os.environ.get("AIGW_TEST_IGNORE_SIGTERM"):  # a server that stops only when killed
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"aigw-test-stdio {os.getpid()} starting", file=sys.stderr, flush=True)
    server.run("stdio")
