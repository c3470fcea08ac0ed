"""runtime/mcp_held.py: what a held session (stdio, HTTP+SSE) keeps for a stream its
client does not read."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, Iterator, Mapping
from typing import cast

from aigw.compiler.graph import McpServer, McpSse
from aigw.runtime.mcp import McpProxy
from aigw.runtime.mcp_held import _QUEUED_BYTES, HeldServer, HeldSession


class _Session(HeldSession):
    """A held session with no upstream end to close."""

    async def close(self) -> None:
        return None


def _note(data: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": "notifications/message",
                       "params": {"data": data}}).encode()


def _reader(session: HeldSession, last_event_id: str | None = None,
            ) -> AsyncGenerator[bytes, None]:
    """A GET stream of ``session``'s, as its events."""
    answer = session.stream(last_event_id)
    assert answer.status_code == 200
    stream = answer.stream
    assert isinstance(stream, AsyncIterable)
    return cast("AsyncGenerator[bytes, None]", aiter(stream))


def _event(event_id: int, raw: bytes) -> bytes:
    return b"id: %d\nevent: message\ndata: %s\n\n" % (event_id, raw)


async def test_a_stream_nobody_reads_holds_a_bounded_number_of_bytes() -> None:
    """1,024 messages of up to the transport's cap (tens of MiB) each were held for a
    GET stream its client did not read: gigabytes for one session. Past _QUEUED_BYTES a
    message is dropped; the first is let through whatever its size; what was sent is
    kept for a resumption only while it fits."""
    session = HeldSession("s", HeldServer("docs", idle_timeout_s=300, max_sessions=4))
    events = _reader(session)
    try:
        replay = session.replay
        big = _note("x" * (_QUEUED_BYTES + 1))
        session.route(big)
        assert len(replay.kept) == 1  # alone, it goes through
        note = _note("y" * (1 << 20))
        session.route(note)
        assert len(replay.kept) == 1  # behind it, dropped
        assert await anext(events) == _event(1, big)
        for _ in range(200):  # 200 MiB sent to a stream that reads none
            session.route(note)
        assert replay.held_bytes <= _QUEUED_BYTES
        assert len(replay.kept) == _QUEUED_BYTES // len(note)  # the big one gone first
    finally:
        await events.aclose()
        for task in session.tasks:
            task.cancel()


async def test_a_get_stream_resumed_has_what_came_after_its_last_event_id() -> None:
    """A GET with Last-Event-ID has the messages after it again, then the new ones, and
    takes over the stream its client left (whose end had not noticed: it ends); a GET
    without one, while a stream is open, is still refused."""
    session = HeldSession("s", HeldServer("docs", idle_timeout_s=300, max_sessions=4))
    first = _reader(session)
    second = None
    try:
        for n in range(3):
            session.route(_note(f"m{n}"))
        assert await anext(first) == _event(1, _note("m0"))
        assert await anext(first) == _event(2, _note("m1"))  # sent, its client gone
        assert session.stream().status_code == 409
        second = _reader(session, "1")
        assert await anext(second) == _event(2, _note("m1"))
        assert await anext(second) == _event(3, _note("m2"))
        session.route(_note("m3"))
        assert await anext(second) == _event(4, _note("m3"))
        assert [event async for event in first] == []  # taken over: ended
    finally:
        await first.aclose()
        if second is not None:
            await second.aclose()
        for task in session.tasks:
            task.cancel()


async def test_what_is_said_with_no_stream_open_is_kept_for_the_next() -> None:
    """Said while no GET stream is open (its client between two): kept, and the next
    stream begins with what no stream has sent; an id the session did not give is
    read as none, and one older than what is kept resumes from the oldest kept."""
    session = _Session("s", HeldServer("docs", idle_timeout_s=300, max_sessions=4))
    try:
        session.route(_note("early"))
        events = _reader(session)
        assert await anext(events) == _event(1, _note("early"))
        await events.aclose()
        for n, unknown in enumerate(("99", "abc"), start=2):
            session.route(_note(f"away {n}"))
            events = _reader(session, unknown)
            assert await anext(events) == _event(n, _note(f"away {n}"))
            await events.aclose()
        for _ in range(2):  # as if pushed out by others
            session.replay.kept.popleft()
        events = _reader(session, "0")
        assert await anext(events) == _event(3, _note("away 3"))
        await events.aclose()
        await session.stop("the test ends")
        assert [event async for event in _reader(session, "2")] == [
            _event(3, _note("away 3"))]  # what is kept, then the end
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
