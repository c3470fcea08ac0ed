"""runtime/mcp_held.py: what a held session (stdio, HTTP+SSE) keeps for a stream its
client does not read."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterable, Iterator, Mapping
from typing import cast

from aigw.compiler.graph import McpServer, McpSse
from aigw.runtime.mcp import McpProxy
from aigw.runtime.mcp_held import (
    _QUEUED_BYTES,
    _REPLAY_HORIZON_S,
    _UNREAD_KEPT,
    _UNREAD_KEPT_BYTES,
    HeldServer,
    HeldSession,
    ReplayBudget,
)


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


async def test_a_session_whose_client_never_opened_a_get_stream_keeps_its_newest_few(
        ) -> None:
    """Most clients only POST: what their servers said outside a call was kept for a GET
    stream never opened, 1,024 messages and 64 MiB a session. Until one is opened, the
    newest _UNREAD_KEPT messages, in _UNREAD_KEPT_BYTES, are kept; the first stream
    opened starts at the oldest of them."""
    session = _Session("s", HeldServer("docs", idle_timeout_s=300, max_sessions=4))
    try:
        replay = session.replay
        for n in range(2000):
            session.route(_note(f"m{n}"))
        assert [kept.id for kept in replay.kept] == list(range(2001 - _UNREAD_KEPT, 2001))
        big = _note("x" * (100 << 10))
        for _ in range(20):  # 2 MiB
            session.route(big)
        assert replay.held_bytes <= _UNREAD_KEPT_BYTES
        assert len(replay.kept) == _UNREAD_KEPT_BYTES // len(big)
        assert session.owner.replays.held_bytes == replay.held_bytes
        events = _reader(session)
        assert await anext(events) == _event(2021 - len(replay.kept), big)
        await events.aclose()
        for n in range(_UNREAD_KEPT + 10):  # a stream was opened: the full bound now
            session.route(_note(f"later {n}"))
        assert len(replay.kept) == _UNREAD_KEPT_BYTES // len(big) + _UNREAD_KEPT + 10
    finally:
        await session.stop("the test ends")
        for task in session.tasks:
            task.cancel()


async def test_a_message_sent_is_kept_for_a_resumption_only_within_the_horizon() -> None:
    """Sent messages were kept until pushed out by newer ones: for a quiet server, for
    the session's life. One sent longer ago than the horizon is forgotten as the next
    comes; one not yet sent is kept however old."""
    now = [1000.0]
    server = HeldServer("docs", idle_timeout_s=300, max_sessions=4,
                        replays=ReplayBudget(clock=lambda: now[0]))
    session = _Session("s", server)
    events = _reader(session)
    try:
        for n in range(3):
            session.route(_note(f"m{n}"))
        for n in range(1, 3):
            assert await anext(events) == _event(n, _note(f"m{n - 1}"))
        now[0] += _REPLAY_HORIZON_S + 1  # m2 never sent: kept
        session.route(_note("m3"))
        assert [kept.id for kept in session.replay.kept] == [3, 4]
        await events.aclose()
        events = _reader(session, "1")  # m1 gone: from the oldest kept
        assert await anext(events) == _event(3, _note("m2"))
        assert await anext(events) == _event(4, _note("m3"))
        now[0] += _REPLAY_HORIZON_S - 1  # within it: kept for a resumption
        session.route(_note("m4"))
        assert [kept.id for kept in session.replay.kept] == [3, 4, 5]
    finally:
        await events.aclose()
        await session.stop("the test ends")
        for task in session.tasks:
            task.cancel()


async def test_the_gateways_sessions_replays_share_one_bound() -> None:
    """Each session kept up to 64 MiB, however many sessions a gateway held. Together
    they keep what the budget allows: a session past it keeps what it has and drops the
    new (what it sent going first; one message let through when it keeps none), and a
    session's end gives its share back. The proxy's held servers share its budget."""
    budget = ReplayBudget(cap_bytes=1 << 20)
    note = _note("x" * (300 << 10))
    first = _Session("a", HeldServer("docs", idle_timeout_s=300, max_sessions=4,
                                     replays=budget))
    second = _Session("b", HeldServer("wiki", idle_timeout_s=300, max_sessions=4,
                                      replays=budget))
    readers = [_reader(first), _reader(second)]
    try:
        for _ in range(4):
            first.route(note)
        assert len(first.replay.kept) == 3  # the fourth past the budget: dropped
        second.route(note)
        second.route(note)
        assert len(second.replay.kept) == 1  # it kept none: one let through
        for n in range(1, 4):  # sent: first's go as the next comes
            assert await anext(readers[0]) == _event(n, note)
        first.route(note)
        assert [kept.id for kept in first.replay.kept] == [3, 4]
        assert budget.held_bytes == 3 * len(note)
        await first.stop("the test ends")
        assert budget.held_bytes == len(note)
    finally:
        for events in readers:
            await events.aclose()
        for session in (first, second):
            await session.stop("the test ends")
            for task in session.tasks:
                task.cancel()
    proxy = McpProxy()
    try:
        for name in ("docs", "wiki"):
            proxy._client_for(McpServer(
                name=name, url=f"http://127.0.0.1:9/{name}/sse", timeout_s=5.0, tools=None,
                disabled_reason=None, headers={},
                sse=McpSse(idle_timeout_s=60.0, max_sessions=4)), idle=False)
        assert proxy._held["docs"][1].replays is proxy._held["wiki"][1].replays
    finally:
        await proxy.aclose()


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
