"""A session the gateway holds of an MCP server is ended to its end though the task
ending it is cancelled outright, again and again (a shutdown past its grace): an anyio
shield holds against none of that."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import httpx
import pytest
from starlette import types as asgi
from starlette.responses import Response

from aigw.compiler.graph import McpServer, McpSse, McpStdio
from aigw.runtime.app import create_app
from aigw.runtime.live import Gateway
from aigw.runtime.mcp_held import SESSION, SSE, HeldServer, HeldSession
from aigw.runtime.mcp_sse import SseServer
from aigw.runtime.mcp_stdio import StdioServer
from aigw.runtime.tokens import TokenCounter

from ..conftest import DEV_KEY
from ..e2e.mcp_client import until, write_mcp_gateway
from ..fakes.mcp_server import PATH as MCP_PATH
from ..fakes.mcp_server import RecordingMcpServer
from ..fakes.mcp_sse_server import PATH, SseMcpServer
from ..fakes.serve import serving

FAKE = Path(__file__).parent.parent / "fakes" / "mcp_stdio_server.py"
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "aigw-test", "version": "1"}}}


async def _cancelled_again_and_again(task: asyncio.Task[object]) -> None:
    task.cancel()
    while not task.done():
        await asyncio.sleep(0)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def _opened(server: HeldServer) -> HeldSession:
    """A session of ``server``, opened by an initialize (answered)."""
    opened = await server.client.post("http://mcp.test/", json=INITIALIZE, timeout=30,
                                      headers={"accept": f"application/json, {SSE}"})
    assert opened.status_code == 200, opened.text
    await opened.aread()  # its answer: the server runs and speaks
    return server.sessions[opened.headers[SESSION]]


async def _deleted_by_a_task_cancelled_outright(server: HeldServer,
                                                session: HeldSession) -> None:
    """DELETE ``session``, its task cancelled again and again once it is ending."""
    deleting = asyncio.create_task(server.client.delete(
        "http://mcp.test/", headers={SESSION: session.id}))
    while not session.ended:
        await asyncio.sleep(0)
    await _cancelled_again_and_again(deleting)


async def test_a_session_deleted_by_a_task_cancelled_outright_closes_its_event_stream() -> None:
    """An HTTP+SSE server's session ends when its event stream closes (the transport has
    no other end). A DELETE cancelled outright while it waits for the stream's reader
    leaves the close to that reader: httpcore closes a stream whose read is cancelled, in
    the reader's task, which is cancelled once (a stop run again must not cancel it a
    second time, which would cut that close). Why the stream's own close needs no task
    of its own: this passed before too."""
    upstream = SseMcpServer()
    with serving(upstream.app) as url:
        server = SseServer(McpServer(name="legacy", url=url + PATH, timeout_s=10.0,
                                     tools=None, disabled_reason=None, headers={},
                                     sse=McpSse(idle_timeout_s=300.0, max_sessions=4)),
                           McpSse(idle_timeout_s=300.0, max_sessions=4), max_event=1 << 20)
        try:
            session = await _opened(server)
            assert upstream.open_streams == 1
            await _deleted_by_a_task_cancelled_outright(server, session)
            await until(lambda: upstream.open_streams == 0, "the event stream closed")
        finally:
            await server.aclose()


async def test_a_session_deleted_by_a_task_cancelled_outright_still_stops_its_process(
    tmp_path: Path,
) -> None:
    """A DELETE whose task is cancelled outright while its session's process is asked
    to stop: the process is killed all the same once it has not stopped in time. The
    stop was cut at its wait for the process, which never got its SIGKILL and ran on
    with nobody to end it, its session gone (this failed before)."""
    stdio = McpStdio(command=(sys.executable, str(FAKE)), cwd=str(tmp_path),
                     idle_timeout_s=300, max_sessions=4,
                     env={"AIGW_TEST_IGNORE_SIGTERM": "1"})
    server = StdioServer("tools", stdio, max_line=1 << 20)
    pid = None
    try:
        session = await _opened(server)
        proc = session.proc  # type: ignore[attr-defined]
        pid = proc.pid
        await _deleted_by_a_task_cancelled_outright(server, session)  # SIGTERM: ignored
        await asyncio.wait_for(proc.wait(), 10)  # killed
    finally:
        await server.aclose()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


class _Client:
    """The gateway's ASGI app called as a server calls it (ASGI 2.4: no Starlette task
    group around a stream), for one GET stream whose ``send`` stops for good at the
    message ``stop_at`` ("http.response.start", or the first event's body): the client
    left, and the request's task is cancelled there."""

    def __init__(self, app: asgi.ASGIApp, headers: dict[str, str], stop_at: str) -> None:
        self.stopped = asyncio.Event()
        self._stop_at = stop_at
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
                 "http_version": "1.1", "method": "GET", "scheme": "http",
                 "path": "/mcp/live", "raw_path": b"/mcp/live", "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 50000),
                 "server": ("aigw.test", 80),
                 "headers": [(name.encode(), value.encode())
                             for name, value in {"host": "aigw.test", **headers}.items()]}
        self.task = asyncio.create_task(app(scope, self._receive, self._send))

    async def _receive(self) -> asgi.Message:
        await asyncio.Event().wait()  # the client says nothing more
        raise AssertionError("unreachable")

    async def _send(self, message: asgi.Message) -> None:
        if message["type"] == self._stop_at and message.get("body") != b"":
            self.stopped.set()
            await asyncio.Event().wait()


@pytest.mark.parametrize("stop_at", ["http.response.start", "http.response.body"],
                         ids=["as-it-starts", "at-an-event"])
async def test_a_get_stream_whose_task_is_cancelled_outright_closes_the_servers(
    tmp_path: Path, counter: TokenCounter, stop_at: str
) -> None:
    """The server allows one GET stream a session: one left open refuses the client's
    next (409). Cancelled as it started (its first event not read yet), the stream left
    the server's open whatever the cancellation; cancelled again and again while it sent
    an event, its close was cut half-way and never finished (both failed before)."""
    upstream = RecordingMcpServer()
    with serving(upstream.app) as url:
        write_mcp_gateway(tmp_path, f"  live: {{url: {url}{MCP_PATH}, timeout_s: 10}}\n")
        gateway = Gateway(tmp_path, counter)
        try:
            app = create_app(gateway)
            shown = await _opened_through(app)
            headers = {"authorization": f"Bearer {DEV_KEY}", "mcp-session-id": shown,
                       "accept": SSE, "mcp-protocol-version": "2025-06-18"}
            client = _Client(app, headers, stop_at)
            await until(lambda: upstream.open_gets == 1, "the GET stream opened")
            if stop_at == "http.response.body":  # an event for it: the server's notify
                await _called_notify(app, shown)
            await asyncio.wait_for(client.stopped.wait(), 10)
            await _cancelled_again_and_again(client.task)
            await until(lambda: upstream.open_gets == 0, "the server's stream closed")
        finally:
            await gateway.aclose()


async def _opened_through(app: asgi.ASGIApp) -> str:
    """A session of "live" through the gateway (initialize, then its notification)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://aigw.test") as http:
        headers = {"authorization": f"Bearer {DEV_KEY}", "accept": "application/json"}
        answer = await http.post("/mcp/live", headers=headers, json=INITIALIZE)
        assert answer.status_code == 200, answer.text
        shown = answer.headers[SESSION]
        done = await http.post("/mcp/live", headers={
            **headers, SESSION: shown, "mcp-protocol-version": "2025-06-18"},
            json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert done.status_code == 202, done.text
        return shown


async def _called_notify(app: asgi.ASGIApp, shown: str) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://aigw.test") as http:
        answer = await http.post("/mcp/live", headers={
            "authorization": f"Bearer {DEV_KEY}", "accept": "application/json",
            SESSION: shown, "mcp-protocol-version": "2025-06-18"},
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                  "params": {"name": "notify", "arguments": {}}})
        assert answer.status_code == 200, answer.text


async def test_a_message_whose_task_is_cancelled_mid_call_is_counted_and_logged(
    tmp_path: Path, counter: TokenCounter, caplog: pytest.LogCaptureFixture
) -> None:
    """A message cut while its server had not answered (a shutdown past its grace) was
    neither in /metrics nor in the access log: only a refusal reached the count. It is
    counted as 499 (503 once the grace is over), as a chat request cut is."""
    asked = threading.Event()

    async def unanswering(scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/__ready":
            await Response("ready")(scope, receive, send)
            return
        if scope["type"] == "http":
            asked.set()
            await asyncio.sleep(3600)

    with serving(unanswering) as url:
        write_mcp_gateway(tmp_path, f"  mute: {{url: {url}/mcp, timeout_s: 60}}\n")
        gateway = Gateway(tmp_path, counter)
        logged = io.StringIO()
        caplog.set_level(logging.INFO, logger="aigw.access")
        gateway.telemetry.access_log.to_stream(logged)
        try:
            app = create_app(gateway)
            # Its lifespan closes the MCP client (and the connection the cut call left).
            async with (app.app.router.lifespan_context(app.app),  # type: ignore[attr-defined]
                        httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                          base_url="http://aigw.test") as http):
                posting = asyncio.create_task(http.post("/mcp/mute", json=INITIALIZE, headers={
                    "authorization": f"Bearer {DEV_KEY}", "accept": "application/json"}))
                await until(asked.is_set, "the server asked")
                await _cancelled_again_and_again(posting)  # type: ignore[arg-type]
            counted = gateway.telemetry.metrics.registry.get_sample_value(
                "aigw_mcp_requests_total", {"server": "mute", "method": "initialize",
                                            "tool": "", "team": "platform",
                                            "status": "499"})
            assert counted == 1
            gateway.telemetry.access_log.flush()
            line = json.loads(logged.getvalue().splitlines()[-1])
            assert (line["mcp_server"], line["status"], line["error"]) == (
                "mute", 499, "client_disconnected")
        finally:
            await gateway.aclose()
