"""MCP streams through a real ``aigw serve`` as a hostile client or a dropped connection
meets them: a GET stream the gateway ends, a response lost in its stream's last write,
an event id from another session or key. A real streamable HTTP server (the official
SDK's, keeping its events) and a real stdio server behind it."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ..conftest import DEV_KEY
from ..fakes.mcp_server import PATH, RecordingMcpServer
from ..fakes.serve import serving
from .mcp_client import opened, write_mcp_gateway
from .server import Server

pytestmark = pytest.mark.e2e

# The fake run as a program (not imported here: it builds its server as it loads).
STDIO = f"[{sys.executable}, {Path(__file__).parent.parent / 'fakes' / 'mcp_stdio_server.py'}]"
SSE = "text/event-stream"


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
