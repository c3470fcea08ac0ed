"""MCP streams through a real ``aigw serve`` as a hostile client or a dropped connection
meets them: a GET stream the gateway ends, a response lost in its stream's last write,
an event id from another session or key. A real streamable HTTP server (the official
SDK's, keeping its events) and a real stdio server behind it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import httpx2
import pytest

from ..conftest import DEV_KEY
from ..fakes.mcp_server import PATH, RecordingMcpServer
from ..fakes.serve import serving
from .mcp_client import opened, session, write_mcp_gateway
from .server import Server

pytestmark = pytest.mark.e2e

# The fake run as a program (not imported here: it builds its server as it loads).
STDIO = f"[{sys.executable}, {Path(__file__).parent.parent / 'fakes' / 'mcp_stdio_server.py'}]"
SSE = "text/event-stream"
OTHER_KEY = "sk-aigw-other-streams"  # of the dev key's team: may use every server too


@dataclass
class StreamsGateway:
    server: Server
    live: RecordingMcpServer  # "live": streamable HTTP, keeps its events

    def url(self, name: str) -> str:
        return f"{self.server.base_url}/mcp/{name}"


def write_config(root: Path, live_url: str) -> None:
    write_mcp_gateway(root, f"""\
  live: {{url: "{live_url}{PATH}", timeout_s: 10}}
  fs: {{command: {STDIO}, timeout_s: 20}}
""")
    config = root / "gateway.yaml"
    other = hashlib.sha256(OTHER_KEY.encode()).hexdigest()
    config.write_text(config.read_text().replace(
        "mcp_servers:", f"  other: {{team: platform, sha256: {other}}}\nmcp_servers:"))


@pytest.fixture(scope="module")
def live_url() -> Iterator[tuple[RecordingMcpServer, str]]:
    live = RecordingMcpServer(resumable=True)
    with serving(live.app) as url:
        yield live, url


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory,
            live_url: tuple[RecordingMcpServer, str]) -> Iterator[StreamsGateway]:
    root = tmp_path_factory.mktemp("mcp-streams") / "gw"
    write_config(root, live_url[1])
    server = Server(root)
    try:
        server.wait_ready()
        yield StreamsGateway(server, live_url[0])
    finally:
        server.stop()


def _headers(session_id: str, version: str = "2025-06-18") -> dict[str, str]:
    return {"Authorization": f"Bearer {DEV_KEY}", "mcp-session-id": session_id,
            "mcp-protocol-version": version}


async def _events(stream: httpx.Response) -> AsyncIterator[str]:
    """A stream's SSE events, each as its text (its lines joined by newlines)."""
    lines: list[str] = []
    async for line in stream.aiter_lines():
        if line:
            lines.append(line)
        elif lines:
            yield "\n".join(lines)
            lines = []


async def test_a_get_stream_the_gateway_ends_tells_its_client_when_to_reconnect(
    tmp_path: Path, live_url: tuple[RecordingMcpServer, str],
) -> None:
    """A GET stream the gateway ends itself (here as it shuts down; after its hour's
    life, or when the server's stream fails, alike) ends with an event whose ``retry``
    field says how long to wait before reconnecting, as MCP 2025-11-25 has a server
    that closes a stream send, so that its clients do not all come back at once. It
    ended with the last of the server's events: each client reconnected at once, or
    after a wait of its own choosing."""
    root = tmp_path / "gw"
    write_config(root, live_url[1])
    server = Server(root)
    try:
        server.wait_ready()
        gateway = StreamsGateway(server, live_url[0])
        ended: dict[str, list[str]] = {}
        async with httpx.AsyncClient(timeout=20) as http:
            streams = {}
            for name in ("live", "fs"):
                session_id = opened(gateway.url(name), DEV_KEY)
                streams[name] = await http.send(http.build_request(
                    "GET", gateway.url(name),
                    headers={**_headers(session_id), "accept": SSE}), stream=True)
                assert streams[name].status_code == 200
            server.signal(signal.SIGTERM)
            for name, stream in streams.items():
                async with asyncio.timeout(15):
                    ended[name] = [event async for event in _events(stream)]
                await stream.aclose()
    finally:
        assert server.stop() == 0
    for name, events in ended.items():
        assert events, name
        retry = re.fullmatch(r"retry: (\d+)", events[-1])
        assert retry is not None, (name, events)
        assert 1000 <= int(retry[1]) <= 2000


class _LoseTheAnswer(httpx2.AsyncBaseTransport):
    """The network between a client and aigw, which loses the answer to the first
    tools/call: the stream is read from aigw to its end (every write of aigw's done), but
    its client is handed the events before the response alone, then a cut connection,
    as when a connection drops while its last write is on the way."""

    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self.lost: list[bytes] = []  # the event the client never had

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        if self.lost or request.method != "POST" or b'"tools/call"' not in request.content:
            return response
        return httpx2.Response(response.status_code, headers=response.headers,
                               stream=_AllButTheResponse(response, self.lost),
                               extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _AllButTheResponse(httpx2.AsyncByteStream):
    def __init__(self, response: httpx2.Response, lost: list[bytes]) -> None:
        self._response, self._lost = response, lost

    async def __aiter__(self) -> AsyncIterator[bytes]:
        stream = self._response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        read = b"".join([chunk async for chunk in stream]).replace(b"\r\n", b"\n")
        for event in read.split(b"\n\n"):
            if b'"result"' in event:
                self._lost.append(event)
                raise httpx2.ReadError("the connection was cut")
            if event:
                yield event + b"\n\n"

    async def aclose(self) -> None:
        await self._response.aclose()


async def test_a_response_lost_in_its_streams_last_write_is_resumed(
    gateway: StreamsGateway,
) -> None:
    """A held session's call stream read to its response was forgotten as its last
    event went: a client whose connection dropped in that write (the gateway wrote it,
    the client never had it) resumed with the last id it had and was refused (400, no
    stream kept), and the official SDK's client failed the call. The stream is kept
    for a resumption now, and the client has its answer from it."""
    network = _LoseTheAnswer()
    async with session(gateway.url("fs"), DEV_KEY, transport=network) as client:
        await client.initialize()
        answered = await client.call_tool("add", {"a": 2, "b": 40})
    assert len(network.lost) == 1 and b'"result"' in network.lost[0]
    assert answered.structured_content == {"result": 42}
    # As any HTTP client: the stream read to its response, resumed after its priming
    url = gateway.url("fs")
    session_id = opened(url, DEV_KEY)
    add = {"jsonrpc": "2.0", "id": 5, "method": "tools/call",
           "params": {"name": "add", "arguments": {"a": 1, "b": 2}}}
    headers = _headers(session_id, "2025-11-25")
    async with httpx.AsyncClient(timeout=20) as http:
        async with http.stream("POST", url, json=add, headers={
                **headers, "accept": f"application/json, {SSE}"}) as stream:
            events = [event async for event in _events(stream)]
        primed = re.fullmatch(r"id: (aigw1\.\S+)\ndata: ?", events[0])
        assert primed is not None and '"result"' in events[-1], events
        resumed = await http.get(url, headers={**headers, "accept": SSE,
                                               "last-event-id": primed[1]})
        assert resumed.status_code == 200, resumed.text
        assert resumed.text.replace("\r\n", "\n").split("\n\n")[0] == events[-1]
        assert (await http.delete(url, headers=headers)).status_code == 200


async def test_an_event_id_of_another_key_or_session_replays_nothing(
    gateway: StreamsGateway,
) -> None:
    """A Last-Event-ID went to the server as the client sent it: a server whose event
    store is not kept by session (the SDK's interface leaves that to the store) and
    whose ids can be guessed (these count from 1) replayed one key's call to another
    key that named its id in a session of its own. The ids a client sees are sealed to
    its key, the server and the session, as session ids are: its own resume, another
    key's or session's (or one made up) is a 400, and the server never sees it."""
    url = gateway.url("live")
    mine = opened(url, DEV_KEY)
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "the dev key's own"}}}
    async with httpx.AsyncClient(timeout=20) as http:
        async with http.stream("POST", url, json=call, headers={
                **_headers(mine, "2025-11-25"), "accept": f"application/json, {SSE}"}) as stream:
            events = [event async for event in _events(stream)]
        shown = [line[4:] for event in events for line in event.splitlines()
                 if line.startswith("id: ")]
        assert shown, events
        async with http.stream("GET", url, headers={
                **_headers(mine, "2025-11-25"), "accept": SSE,
                "last-event-id": shown[0]}) as resumed:  # the server's stream stays open
            assert resumed.status_code == 200
            async with asyncio.timeout(20):
                replayed = await anext(event async for event in _events(resumed)
                                       if "data: {" in event)
        assert "the dev key's own" in replayed
        heard = len(gateway.live.gets)
        theirs = opened(url, OTHER_KEY)
        other = {"Authorization": f"Bearer {OTHER_KEY}", "mcp-session-id": theirs,
                 "mcp-protocol-version": "2025-11-25", "accept": SSE}
        again = opened(url, DEV_KEY)
        for headers, event_id in ((other, shown[0]), (other, "1"), (other, "2"),
                                  ({**_headers(again, "2025-11-25"), "accept": SSE},
                                   shown[0])):
            async with (asyncio.timeout(20),
                        http.stream("GET", url, headers={**headers,
                                                         "last-event-id": event_id}) as refused):
                # the old code's answer: the server's stream, replaying what it names
                first = await anext(_events(refused), "") if refused.status_code == 200 else ""
                assert refused.status_code == 400, first
                error = json.loads(await refused.aread())["error"]["message"]
            assert "Last-Event-ID is not the id of an event" in error
        assert len(gateway.live.gets) == heard  # none reached the server
    assert all(event_id.startswith("aigw1.") for event_id in shown), events
