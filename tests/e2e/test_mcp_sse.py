"""HTTP+SSE MCP servers (protocol 2024-11-05) through a real ``aigw serve``: an event
stream a session, held by the gateway, to a real server (the official SDK's, its
``sse_app``), and the official SDK's streamable HTTP client in front, as for any server."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from aigw.compiler import compile_gateway

from ..conftest import DEV_KEY
from ..fakes.mcp_sse_server import ELSEWHERE, MUTE, PATH, SseMcpServer
from ..fakes.serve import free_port, serving
from .mcp_client import CutAtFirstEvent, call, opened, session, until, write_mcp_gateway
from .server import Server

pytestmark = pytest.mark.e2e

SSE_TOKEN = "mcp-sse-token-0b7d2e91f4a6"


@dataclass
class SseGateway:
    server: Server
    upstream: SseMcpServer  # "legacy"'s alone
    other: SseMcpServer  # every other server's
    other_url: str
    dying: SseMcpServer  # "dying"'s, which a test stops
    stop_dying: ExitStack

    def url(self, name: str) -> str:
        return f"{self.server.base_url}/mcp/{name}"


def write_config(root: Path, upstream: str, other: str, dying: str, one_idle_s: float = 300,
                 ) -> str:
    """The gateway directory at ``root``; the fingerprint of the graph it compiles to."""
    write_mcp_gateway(root, f"""\
  legacy:
    url: {upstream}{PATH}
    transport: sse
    headers: {{Authorization: "Bearer ${{MCP_SSE_TOKEN}}"}}
    timeout_s: 10
  idle: {{url: "{other}{PATH}", transport: sse, idle_timeout_s: 1, timeout_s: 10}}
  one: {{url: "{other}{PATH}", transport: sse, max_sessions: 1, timeout_s: 10,
         idle_timeout_s: {one_idle_s}}}
  mute: {{url: "{other}{MUTE}", transport: sse, timeout_s: 1}}
  elsewhere: {{url: "{other}{ELSEWHERE}", transport: sse, timeout_s: 10}}
  dying: {{url: "{dying}{PATH}", transport: sse, timeout_s: 10}}
  down: {{url: "http://127.0.0.1:{free_port()}{PATH}", transport: sse, timeout_s: 10}}
""")
    graph = compile_gateway(root, {"MCP_SSE_TOKEN": SSE_TOKEN}).graph
    assert graph is not None
    return graph.fingerprint


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SseGateway]:
    upstream, other, dying = SseMcpServer(), SseMcpServer(), SseMcpServer()
    with (serving(upstream.app) as upstream_url, serving(other.app) as other_url,
          ExitStack() as stop_dying):
        dying_url = stop_dying.enter_context(serving(dying.app))
        root = tmp_path_factory.mktemp("mcp-sse") / "gw"
        write_config(root, upstream_url, other_url, dying_url)
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MCP_SSE_TOKEN", SSE_TOKEN)
            server = Server(root)
        try:
            server.wait_ready()
            yield SseGateway(server, upstream, other, other_url, dying, stop_dying)
        finally:
            server.stop()


def initialize(url: str) -> httpx.Response:
    return httpx.post(url, timeout=20, headers={
        "Authorization": f"Bearer {DEV_KEY}", "accept": "application/json"}, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}})


async def test_tools_are_listed_called_and_the_server_heard(gateway: SseGateway) -> None:
    """What the server says during a call comes in the call's stream, what it says after
    in the GET stream; the server's headers go with the stream's GET and every POST;
    DELETE (the SDK's, on leaving) closes the event stream."""
    progress: list[float] = []
    notified: list[str] = []
    shown: list[str] = []

    async def progressed(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with session(gateway.url("legacy"), DEV_KEY, session_ids=shown,
                       notified=notified) as client:
        await client.initialize()
        listed = await client.list_tools()
        added = await client.call_tool("add", {"a": 2, "b": 40})
        done = await client.call_tool("progress", {}, progress_callback=progressed)
        await client.call_tool("notify", {})
        await until(lambda: "notifications/tools/list_changed" in notified,
                    "the notification after the call came down the GET stream")
        assert gateway.upstream.open_streams == 1
    assert {"add", "progress", "notify", "vanish"} <= {tool.name for tool in listed.tools}
    assert added.structured_content == {"result": 42}
    assert done.structured_content == {"result": "done"} and progress == [0.5]
    assert shown[0].startswith("aigw1.")  # sealed as a streamable HTTP server's id is
    streams = [get for get in gateway.upstream.gets if get.get("accept") == "text/event-stream"]
    assert len(streams) == 1 and gateway.upstream.posts
    for headers in [*streams, *gateway.upstream.posts]:
        assert headers["authorization"] == f"Bearer {SSE_TOKEN}"  # never the aigw key
        assert "mcp-session-id" not in headers
    await until(lambda: gateway.upstream.open_streams == 0, "DELETE closed the event stream")


def test_a_session_it_does_not_hold_is_404(gateway: SseGateway) -> None:
    url = gateway.url("legacy")
    session_id = opened(url, DEV_KEY)
    assert call(url, session_id, "add", a=1, b=2).json()["result"]["structuredContent"] == {
        "result": 3}
    ended = httpx.delete(url, headers={"Authorization": f"Bearer {DEV_KEY}",
                                       "mcp-session-id": session_id})
    assert ended.status_code == 200
    gone = call(url, session_id, "add", a=1, b=2)
    assert gone.status_code == 404
    assert gone.json()["error"]["message"] == (
        "Session not found: it ended (MCP server 'legacy' holds an event stream a session, "
        "and it closed), or another gateway replica opened it.")
    assert call(url, "aigw1.not-one-of-ours", "add", a=1, b=2).status_code == 404


async def closed(upstream: SseMcpServer, what: str) -> None:
    """Wait for every event stream of ``upstream`` to be closed (each test on ``other``
    leaves it so: the next counts from 0)."""
    await until(lambda: upstream.open_streams == 0, what)


async def test_a_session_idle_past_its_timeout_is_closed(gateway: SseGateway) -> None:
    url = gateway.url("idle")
    session_id = opened(url, DEV_KEY)
    assert call(url, session_id, "add", a=1, b=2).status_code == 200
    assert gateway.other.open_streams == 1
    await closed(gateway.other, "the idle stream closed")
    assert call(url, session_id, "add", a=1, b=2).status_code == 404


async def test_sessions_past_max_sessions_are_refused(gateway: SseGateway) -> None:
    url = gateway.url("one")
    first = opened(url, DEV_KEY)
    refused = initialize(url)
    assert refused.status_code == 503
    assert refused.json()["error"]["data"]["code"] == "mcp_server_busy"
    assert httpx.delete(url, headers={"Authorization": f"Bearer {DEV_KEY}",
                                      "mcp-session-id": first}).status_code == 200
    second = opened(url, DEV_KEY)
    assert call(url, second, "add", a=1, b=2).status_code == 200
    httpx.delete(url, headers={"Authorization": f"Bearer {DEV_KEY}", "mcp-session-id": second})
    await closed(gateway.other, "DELETE closed the event streams")


async def test_a_server_that_never_names_its_endpoint_is_a_504(gateway: SseGateway) -> None:
    silent = initialize(gateway.url("mute"))
    assert silent.status_code == 504, silent.text
    assert silent.json()["error"]["message"] == (
        "MCP server 'mute' did not open its event stream (its endpoint event) within 1 s.")
    await closed(gateway.other, "the mute stream was closed")


async def test_an_endpoint_on_another_origin_is_refused(gateway: SseGateway) -> None:
    refused = initialize(gateway.url("elsewhere"))
    assert refused.status_code == 502
    assert refused.json()["error"]["message"] == (
        "MCP server 'elsewhere' named an endpoint on another origin than its url, where the "
        "gateway does not send its headers.")
    await closed(gateway.other, "the stream was closed")


def test_a_server_that_is_down_is_a_502(gateway: SseGateway) -> None:
    down = initialize(gateway.url("down"))
    assert down.status_code == 502
    assert down.json()["error"]["message"].startswith("MCP server 'down' is unreachable: ")


async def test_a_server_that_dies_fails_its_calls_with_502_and_ends_its_sessions(
    gateway: SseGateway,
) -> None:
    """Its event stream cut mid-call (the fake's ``vanish``), as a crash cuts it: the call
    is a 502, the session ends (404 after); stopped, it is unreachable (502)."""
    url = gateway.url("dying")
    session_id = opened(url, DEV_KEY)
    failed = call(url, session_id, "vanish")
    assert failed.status_code == 502, failed.text
    assert failed.json()["error"]["message"] == (
        "MCP server 'dying' ended (its event stream failed: RemoteProtocolError) before it "
        "answered.")
    assert call(url, session_id, "add", a=1, b=2).status_code == 404
    gateway.stop_dying.close()
    again = initialize(url)
    assert again.status_code == 502
    assert again.json()["error"]["message"].startswith("MCP server 'dying' is unreachable: ")


async def test_a_reload_that_changes_the_server_and_a_stop_close_its_event_streams(
    gateway: SseGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    other, root = gateway.other, tmp_path / "gw"
    write_config(root, "http://127.0.0.1:9", gateway.other_url, "http://127.0.0.1:9")
    monkeypatch.setenv("MCP_SSE_TOKEN", SSE_TOKEN)
    stopping = Server(root)
    try:
        stopping.wait_ready()
        url = f"{stopping.base_url}/mcp/one"
        session_id = opened(url, DEV_KEY)
        assert other.open_streams == 1
        fingerprint = write_config(root, "http://127.0.0.1:9", gateway.other_url,
                                   "http://127.0.0.1:9", one_idle_s=200)
        stopping.signal(signal.SIGHUP)
        stopping.wait_for_graph(fingerprint)
        assert call(url, session_id, "add", a=1, b=2).status_code == 404
        await closed(other, "the reload closed the event stream")
        opened(url, DEV_KEY)
        assert other.open_streams == 1
    finally:
        stopping.stop()
    await closed(other, "the stop closed the event stream")


async def test_the_sdks_client_resumes_a_call_cut_before_its_first_message(
    gateway: SseGateway,
) -> None:
    """The official SDK's client (2025-11-25), its call's stream cut at its first event,
    before the server said anything: the stream's priming event (an id, no data) is all
    it has, and it resumes the stream with that id and has its answer. Before, the first
    event was the answer itself: cut there, the call failed ("SSE stream ended without a
    response")."""
    network = CutAtFirstEvent()
    async with session(gateway.url("legacy"), DEV_KEY, transport=network) as client:
        await client.initialize()
        answered = await client.call_tool("late", {"seconds": 2.0})
    assert network.cut == 1 and len(network.passed) == 1
    assert network.passed[0].startswith(b"id: aigw1.")  # the priming event, its id sealed
    assert answered.structured_content == {"result": "late"}
