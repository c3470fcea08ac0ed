"""stdio MCP servers through a real ``aigw serve``: a process a session, started from a
real server (the official SDK's FastMCP, run with this python), and the official SDK's
client in front, as for a streamable HTTP server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from aigw.compiler import compile_gateway

from ..conftest import DEV_KEY
from .mcp_client import (
    CutAtFirstEvent,
    call,
    event_ids,
    opened,
    server_session,
    session,
    shown_event_id,
    until,
    write_mcp_gateway,
)
from .server import Server

pytestmark = pytest.mark.e2e

STDIO_TOKEN = "stdio-token-8c1f0e4b"
# The fake run as a program (not imported here: it builds its server as it loads).
SERVER = f"[{sys.executable}, {Path(__file__).parent.parent / 'fakes' / 'mcp_stdio_server.py'}]"


@dataclass
class StdioGateway:
    server: Server
    root: Path

    def url(self, name: str) -> str:
        return f"{self.server.base_url}/mcp/{name}"


def write_config(root: Path, fs_idle_s: float = 300) -> str:
    """The gateway directory at ``root``; the fingerprint of the graph it compiles to."""
    write_mcp_gateway(root, f"""\
  fs:
    command: {SERVER}
    env: {{TEST_TOKEN: "${{MCP_STDIO_TOKEN}}"}}
    timeout_s: 20
    idle_timeout_s: {fs_idle_s}
  idle: {{command: {SERVER}, idle_timeout_s: 1, timeout_s: 20}}
  one: {{command: {SERVER}, max_sessions: 1, timeout_s: 20}}
  missing: {{command: [aigw-no-such-mcp-server]}}
  mute: {{command: [{sys.executable}, -c, "import time; time.sleep(60)"], timeout_s: 1,
          max_sessions: 1}}
""")
    graph = compile_gateway(root, {"MCP_STDIO_TOKEN": STDIO_TOKEN}).graph
    assert graph is not None
    return graph.fingerprint


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StdioGateway]:
    root = tmp_path_factory.mktemp("mcp-stdio") / "gw"
    write_config(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MCP_STDIO_TOKEN", STDIO_TOKEN)
        server = Server(root)
    try:
        server.wait_ready()
        yield StdioGateway(server, root)
    finally:
        server.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_tools_are_listed_called_and_the_server_heard(gateway: StdioGateway) -> None:
    """A session's process answers; what it says during a call comes in the call's
    stream, what it says after in the GET stream; DELETE (the SDK's, on leaving) stops
    it."""
    progress: list[float] = []
    notified: list[str] = []
    shown: list[str] = []

    async def progressed(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with session(gateway.url("fs"), DEV_KEY, session_ids=shown,
                       notified=notified) as client:
        await client.initialize()
        listed = await client.list_tools()
        added = await client.call_tool("add", {"a": 2, "b": 40})
        pid = (await client.call_tool("pid", {})).structured_content
        token = await client.call_tool("environment", {"name": "TEST_TOKEN"})
        leaked = await client.call_tool("environment", {"name": "MCP_STDIO_TOKEN"})
        done = await client.call_tool("progress", {}, progress_callback=progressed)
        await client.call_tool("notify", {})
        await until(lambda: "notifications/tools/list_changed" in notified,
                    "the notification after the call came down the GET stream")
        assert pid is not None and alive(pid["result"])
    assert {"add", "pid", "progress", "notify", "crash"} <= {tool.name for tool in listed.tools}
    assert added.structured_content == {"result": 42}
    assert token.structured_content == {"result": STDIO_TOKEN}
    assert leaked.structured_content == {"result": ""}  # the gateway's own env stays its own
    assert done.structured_content == {"result": "done"} and progress == [0.5]
    assert shown[0].startswith("aigw1.")  # sealed as a streamable HTTP server's id is
    await until(lambda: not alive(pid["result"]), "DELETE stopped the process")
    assert f"aigw-test-stdio {pid['result']} starting" in gateway.server.log  # its stderr


async def _said(stream: httpx.Response, count: int) -> list[tuple[str | None, str]]:
    """The next ``count`` events of a GET stream of resources said to be updated: each
    as its event id (None without one) and the resource's URI."""
    found: list[tuple[str | None, str]] = []
    lines: list[str] = []
    events: AsyncIterator[str] = stream.aiter_lines()
    async with asyncio.timeout(10):
        while len(found) < count:
            line = await anext(events)
            if line:
                lines.append(line)
                continue
            if lines:
                data = "".join(line[5:].strip() for line in lines if line.startswith("data:"))
                event_id = next((line[3:].strip() for line in lines if line.startswith("id:")),
                                None)
                found.append((event_id, json.loads(data)["params"]["uri"]))
            lines = []
    return found


async def test_a_get_stream_resumed_with_last_event_id_has_what_was_said_while_away(
    gateway: StdioGateway,
) -> None:
    """A held session's GET events had no ids, and what the server said while its
    client was away (between a GET stream's end and the next) was dropped: a client that
    reconnected with ``Last-Event-ID`` had lost it. Now each event has its id, and a GET
    with ``Last-Event-ID`` has what came after it first (MCP streamable HTTP's
    resumability); one without begins with what no stream has sent."""
    url = gateway.url("fs")
    session_id = opened(url, DEV_KEY)
    headers = {"Authorization": f"Bearer {DEV_KEY}", "mcp-session-id": session_id,
               "mcp-protocol-version": "2025-06-18", "accept": "text/event-stream"}
    async with httpx.AsyncClient(timeout=20) as http:
        async with http.stream("GET", url, headers=headers) as stream:
            assert stream.status_code == 200
            assert call(url, session_id, "chatter", prefix="here", count=1).status_code == 200
            [(seen, uri)] = await _said(stream, 1)
        assert seen is not None and uri == "memo://here/0"
        assert call(url, session_id, "chatter", prefix="away", count=3).status_code == 200
        await asyncio.sleep(1.0)  # said 0.2 s after the call, while no stream is open
        async with http.stream("GET", url, headers={**headers, "last-event-id": seen}) \
                as stream:
            assert stream.status_code == 200
            resumed = await _said(stream, 3)
        assert [uri for _id, uri in resumed] == [f"memo://away/{n}" for n in range(3)]
        opening = event_ids("fs", server_session(session_id, "fs")).opened
        ids = [int(opening(seen) or 0),
               *(int(opening(event_id or "") or 0) for event_id, _uri in resumed)]
        assert ids == sorted(set(ids)) and ids[0] > 0
        # Resumed after the last, nothing again: what the server says next
        async with http.stream("GET", url, headers={
                **headers, "last-event-id": resumed[-1][0] or ""}) as stream:
            assert call(url, session_id, "chatter", prefix="next", count=1).status_code == 200
            [(after, uri)] = await _said(stream, 1)
        assert uri == "memo://next/0" and int(opening(after or "") or 0) > ids[-1]
        assert (await http.delete(url, headers=headers)).status_code == 200


async def _messages(stream: httpx.Response) -> list[tuple[str | None, dict[str, Any]]]:
    """A stream's events to its end: each as its event id (None without one) and its
    message."""
    found: list[tuple[str | None, dict[str, Any]]] = []
    async with asyncio.timeout(20):
        text = (await stream.aread()).decode()
    for event in text.split("\n\n"):
        lines = event.splitlines()
        data = "".join(line[5:].strip() for line in lines if line.startswith("data:"))
        if data:
            event_id = next((line[3:].strip() for line in lines if line.startswith("id:")),
                            None)
            found.append((event_id, json.loads(data)))
    return found


async def test_a_calls_stream_its_client_lost_is_resumed_with_last_event_id(
    gateway: StdioGateway,
) -> None:
    """A POST's stream had no event ids, and a client that lost it mid-call (its
    connection cut) could not have the rest: the response came to no call and was
    dropped. Now each event has an id naming its stream (``<call>-<n>``), the call goes
    on without its client, and a GET with the last id the client had sends the rest of
    that stream, to its response, then ends; an id of no stream it keeps is a 400."""
    url = gateway.url("fs")
    session_id = opened(url, DEV_KEY)
    headers = {"Authorization": f"Bearer {DEV_KEY}", "mcp-session-id": session_id,
               "mcp-protocol-version": "2025-06-18"}
    late = {"jsonrpc": "2.0", "id": "late-1", "method": "tools/call", "params": {
        "name": "late", "arguments": {"seconds": 1.5}, "_meta": {"progressToken": "p"}}}
    async with httpx.AsyncClient(timeout=20) as http:
        async with http.stream("POST", url, json=late, headers={
                **headers, "accept": "application/json, text/event-stream"}) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            async with asyncio.timeout(20):
                first = [line async for line in _until_blank(lines)]
        # The client has the progress notification and its id, then its connection ends.
        seen = next((line[3:].strip() for line in first if line.startswith("id:")), None)
        opening = event_ids("fs", server_session(session_id, "fs")).opened
        assert seen is not None and re.fullmatch(r"\d+-1", opening(seen) or ""), first
        assert '"notifications/progress"' in "".join(first)
        resuming = {**headers, "accept": "text/event-stream", "last-event-id": seen}
        async with http.stream("GET", url, headers=resuming) as stream:
            assert stream.status_code == 200
            resumed = await _messages(stream)
        [(answered, response)] = resumed
        assert opening(answered or "") == (opening(seen) or "").replace("-1", "-2")
        assert response["id"] == "late-1"
        assert response["result"]["structuredContent"] == {"result": "late"}
        ids = event_ids("fs", server_session(session_id, "fs"))
        again = await http.get(url, headers={**resuming,
                                             "last-event-id": shown_event_id(ids, "999-1")})
        assert again.status_code == 400, again.text
        assert "names no stream this session keeps" in again.json()["error"]["message"]
        # An id too long to be one (int() of it raised, a 500): not one aigw gave
        async with http.stream("GET", url, headers={**resuming,
                                                    "last-event-id": "9" * 5000}) as stream:
            assert stream.status_code == 400
        assert (await http.delete(url, headers=headers)).status_code == 200


async def _until_blank(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The lines of the next SSE event."""
    async for line in lines:
        if not line:
            return
        yield line


async def test_the_sdks_client_resumes_a_call_whose_stream_was_cut(
    gateway: StdioGateway,
) -> None:
    """The official SDK's client, its call's stream cut after the first event (the
    progress notification), reconnects with a GET and the event's id as the spec has it
    and has its answer. Before, the event had no id: the SDK could not resume, and the
    call failed ("SSE stream ended without a response")."""
    network = CutAtFirstEvent(passing_messages=True)
    progress: list[float] = []

    async def progressed(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with session(gateway.url("fs"), DEV_KEY, transport=network) as client:
        await client.initialize()
        answered = await client.call_tool("late", {"seconds": 1.5},
                                          progress_callback=progressed)
    assert network.cut == 1 and progress == [0.5]
    assert answered.structured_content == {"result": "late"}


async def test_a_calls_stream_opens_with_a_priming_event_for_a_client_of_2025_11_25(
    gateway: StdioGateway,
) -> None:
    """MCP 2025-11-25: a server opening a POST's SSE stream first sends an event with an
    id and empty data, which a client cut off before the first message resumes with. A
    held session's call streams had none. Now a client speaking 2025-11-25 has one (the
    stream's ``<call>-0``) before the messages; a client of an older revision none: it
    would take the empty data for a message and fail on it."""
    url = gateway.url("fs")
    session_id = opened(url, DEV_KEY)
    add = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
           "params": {"name": "add", "arguments": {"a": 1, "b": 2}}}
    firsts: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=20) as http:
        for version in ("2025-11-25", "2025-06-18"):
            headers = {"Authorization": f"Bearer {DEV_KEY}", "mcp-session-id": session_id,
                       "mcp-protocol-version": version,
                       "accept": "application/json, text/event-stream"}
            async with http.stream("POST", url, json=add, headers=headers) as stream:
                assert stream.status_code == 200
                text = (await stream.aread()).decode()
            firsts[version] = text.split("\n\n")[0]
            assert '"structuredContent":{"result":3}' in text.replace(" ", ""), text
        assert (await http.delete(url, headers=headers)).status_code == 200
    opening = event_ids("fs", server_session(session_id, "fs")).opened
    primed = re.fullmatch(r"id: (\S+)\ndata: ?", firsts["2025-11-25"])
    assert primed is not None and re.fullmatch(r"\d+-0", opening(primed[1]) or ""), firsts
    message = re.fullmatch(r"id: (\S+)\nevent: message\ndata: \{.*", firsts["2025-06-18"])
    assert message is not None and re.fullmatch(r"\d+-1", opening(message[1]) or ""), firsts


async def test_the_sdks_client_resumes_a_call_cut_before_its_first_message(
    gateway: StdioGateway,
) -> None:
    """The official SDK's client (2025-11-25), its call's stream cut at its first event,
    before the server said anything: the priming event's id is all it has, and it
    resumes the stream with it (GET, Last-Event-ID) and has its answer. Before, the
    stream's first event was the answer itself: cut there, the client had no id, and the
    call failed ("SSE stream ended without a response")."""
    network = CutAtFirstEvent()
    async with session(gateway.url("fs"), DEV_KEY, transport=network) as client:
        await client.initialize()
        answered = await client.call_tool("late", {"seconds": 2.0})
    assert network.cut == 1
    assert [re.fullmatch(rb"id: aigw1\.\S+\ndata: ?\n\n", event) is not None
            for event in network.passed] == [True]
    assert answered.structured_content == {"result": "late"}


def test_a_message_no_server_answers_is_refused_before_it_holds_a_call(
    gateway: StdioGateway,
) -> None:
    """A notification with an id, a request whose id is null or true, a "response" with
    neither result nor error: each went to the server as a request or a response (MCP
    has notifications without ids, requests with a string or integer id), and a server
    keeping to MCP answers none of them, so a request held a call open until its
    timeout. Each is a 400 now, before the server sees it."""
    url = gateway.url("fs")
    session_id = opened(url, DEV_KEY)
    headers = {"Authorization": f"Bearer {DEV_KEY}", "mcp-session-id": session_id,
               "mcp-protocol-version": "2025-06-18",
               "accept": "application/json, text/event-stream"}
    for message, says in (
            ({"id": 3, "method": "notifications/initialized"}, "A notification has no id"),
            ({"id": None, "method": "ping"}, "A request's id is a string or an integer"),
            ({"id": True, "method": "ping"}, "A request's id is a string or an integer"),
            ({"id": {"a": 1}, "method": "ping"}, "A request's id is a string or an integer"),
            ({"id": 4}, "is not a JSON-RPC request, notification or response"),
            ({"method": None, "id": 5}, "A JSON-RPC method is a string")):
        answer = httpx.post(url, headers=headers, timeout=30,
                            json={"jsonrpc": "2.0", **message})
        assert answer.status_code == 400, (message, answer.text)
        assert says in answer.json()["error"]["message"], answer.text
    added = call(url, session_id, "add", a=1, b=2)
    assert added.json()["result"]["structuredContent"] == {"result": 3}


async def test_a_session_idle_past_its_timeout_is_stopped(gateway: StdioGateway) -> None:
    url = gateway.url("idle")
    session_id = opened(url, DEV_KEY)
    pid = call(url, session_id, "pid").json()["result"]["structuredContent"]["result"]
    await until(lambda: not alive(pid), "the idle process stopped")
    ended = call(url, session_id, "add", a=1, b=2)
    assert ended.status_code == 404
    assert ended.json()["error"]["message"].startswith("Session not found")


def test_sessions_past_max_sessions_are_refused(gateway: StdioGateway) -> None:
    url = gateway.url("one")
    first = opened(url, DEV_KEY)
    refused = httpx.post(url, timeout=20, headers={
        "Authorization": f"Bearer {DEV_KEY}", "accept": "application/json"}, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}})
    assert refused.status_code == 503
    assert refused.json()["error"]["data"]["code"] == "mcp_server_busy"
    ended = httpx.delete(url, headers={"Authorization": f"Bearer {DEV_KEY}",
                                       "mcp-session-id": first})
    assert ended.status_code == 200
    second = opened(url, DEV_KEY)
    assert call(url, second, "add", a=1, b=2).json()["result"]["structuredContent"] == {
        "result": 3}
    assert call(url, first, "add", a=1, b=2).status_code == 404


def test_a_process_that_crashes_ends_its_session(gateway: StdioGateway) -> None:
    url = gateway.url("fs")
    session_id = opened(url, DEV_KEY)
    crashed = call(url, session_id, "crash")
    assert crashed.status_code == 502
    assert crashed.json()["error"]["message"] == (
        "MCP server 'fs' ended (its process exited with status 3) before it answered.")
    assert call(url, session_id, "add", a=1, b=2).status_code == 404
    assert "aigw-test-stdio crashing" in gateway.server.log  # its last words are logged


def test_a_command_that_is_not_there_is_a_clear_error(gateway: StdioGateway) -> None:
    refused = httpx.post(gateway.url("missing"), timeout=20, headers={
        "Authorization": f"Bearer {DEV_KEY}", "accept": "application/json"}, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})
    assert refused.status_code == 502
    assert refused.json()["error"]["message"] == (
        "MCP server 'missing' could not start 'aigw-no-such-mcp-server': No such file or "
        "directory.")


def test_a_process_that_never_answers_its_initialize_is_stopped(gateway: StdioGateway) -> None:
    """Its client never learnt its session's id: left running, it would hold one of the
    server's max_sessions until it idled out."""
    for _ in range(2):  # the second is not refused as past max_sessions: 1
        silent = httpx.post(gateway.url("mute"), timeout=20, headers={
            "Authorization": f"Bearer {DEV_KEY}", "accept": "application/json"}, json={
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}})
        assert silent.status_code == 504, silent.text
    assert "session ended (its initialize went unanswered)" in gateway.server.log


async def test_a_reload_that_changes_how_it_runs_and_a_stop_end_its_processes(
    gateway: StdioGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop ends the GET streams at once (their clients open them again elsewhere),
    not after its 30 s grace, and then stops the processes."""
    root = tmp_path / "gw"
    write_config(root)
    monkeypatch.setenv("MCP_STDIO_TOKEN", STDIO_TOKEN)
    other = Server(root)
    try:
        other.wait_ready()
        url = f"{other.base_url}/mcp/fs"
        session_id = opened(url, DEV_KEY)
        pid = call(url, session_id, "pid").json()["result"]["structuredContent"]["result"]
        # Another replica did not start it: an unknown session there.
        assert call(gateway.url("fs"), session_id, "pid").status_code == 404
        fingerprint = write_config(root, fs_idle_s=200)
        other.signal(signal.SIGHUP)
        other.wait_for_graph(fingerprint)
        assert call(url, session_id, "pid").status_code == 404
        await until(lambda: not alive(pid), "the reload stopped the process")
        session_id = opened(url, DEV_KEY)
        pid = call(url, session_id, "pid").json()["result"]["structuredContent"]["result"]
        assert alive(pid)
        headers = {"Authorization": f"Bearer {DEV_KEY}", "mcp-session-id": session_id,
                   "accept": "text/event-stream"}
        async with (httpx.AsyncClient(timeout=20) as http,
                    http.stream("GET", url, headers=headers) as stream):
            assert stream.status_code == 200
            started = time.monotonic()
            stopping = asyncio.create_task(asyncio.to_thread(other.stop))
            # ended, not cut, its client told when to reconnect
            assert re.fullmatch(rb"retry: \d+\n\n", await stream.aread())
            assert await stopping == 0
        assert time.monotonic() - started < 10
    finally:
        other.stop()
    assert not alive(pid)
