"""runtime/mcp_held.py: what a held session (stdio, HTTP+SSE) keeps for a stream its
client does not read."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

from aigw.compiler.graph import McpServer, McpSse
from aigw.runtime.mcp import McpProxy
from aigw.runtime.mcp_held import _QUEUED_BYTES, HeldServer, HeldSession


async def test_a_stream_nobody_reads_holds_a_bounded_number_of_bytes() -> None:
    """1,024 messages of up to the transport's cap (tens of MiB) each were held for a
    GET stream its client did not read: gigabytes for one session. Past _QUEUED_BYTES a
    message is dropped; the first is let through whatever its size."""
    session = HeldSession("s", HeldServer("docs", idle_timeout_s=300, max_sessions=4))
    try:
        session.stream()
        events = session.events
        assert events is not None
        big = json.dumps({"jsonrpc": "2.0", "method": "notifications/message",
                          "params": {"data": "x" * (_QUEUED_BYTES + 1)}}).encode()
        session.route(big)
        assert events.qsize() == 1  # alone, it goes through
        note = json.dumps({"jsonrpc": "2.0", "method": "notifications/progress",
                           "params": {"data": "y" * (1 << 20)}}).encode()
        session.route(note)
        assert events.qsize() == 1  # behind it, dropped
        assert events.get_nowait() == big and events.held_bytes == 0
        for _ in range(200):  # 200 MiB sent to a stream that reads none
            session.route(note)
        assert events.held_bytes <= _QUEUED_BYTES
        assert events.qsize() == _QUEUED_BYTES // len(note)
    finally:
        for task in session.tasks:
            task.cancel()


class _CountedHeaders(Mapping[str, str]):
    """A server's headers that count how often they are read whole."""

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers, self.reads = headers, 0

    def __getitem__(self, name: str) -> str:
        return self._headers[name]

    def __iter__(self) -> Iterator[str]:
        self.reads += 1
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)


async def test_a_held_servers_messages_do_not_copy_its_headers_each() -> None:
    """Every message to an HTTP+SSE server built what its sessions were opened from, a
    dict of its headers, to find its client; only a reload's check compares that. Now
    it is taken once, when the server is first held."""
    headers = _CountedHeaders({"authorization": "Bearer upstream"})
    server = McpServer(name="legacy", url="http://127.0.0.1:9/sse", timeout_s=5.0,
                       tools=None, disabled_reason=None, headers=headers,
                       sse=McpSse(idle_timeout_s=60.0, max_sessions=4))
    proxy = McpProxy()
    try:
        client = proxy._client_for(server, idle=False)
        opened = headers.reads
        assert all(proxy._client_for(server, idle=False) is client for _ in range(3))
        assert headers.reads == opened
    finally:
        await proxy.aclose()
