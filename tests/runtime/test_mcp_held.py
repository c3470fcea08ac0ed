"""runtime/mcp_held.py: what a held session (stdio, HTTP+SSE) keeps for a stream its
client does not read."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterable, Iterator, Mapping
from typing import cast

import httpx
import pytest

from aigw.compiler.graph import McpServer, McpSse
from aigw.runtime.mcp import McpProxy
from aigw.runtime.mcp_held import HeldServer, HeldSession
from aigw.runtime.mcp_replay import (
    LEFT_KEPT,
    QUEUED_BYTES,
    REPLAY_HORIZON_S,
    UNREAD_KEPT,
    UNREAD_KEPT_BYTES,
    ReplayBudget,
)


class _Session(HeldSession):
    """A held session with no upstream end to close, whose server takes every message."""

    async def deliver(self, message: bytes, read_s: float | None,
                      carried: Mapping[str, str]) -> httpx.Response | None:
        return None

    async def close(self) -> None:
        return None


async def _called(session: HeldSession, rpc_id: int) -> httpx.Response:
    """A tools/call's answer, its stream open."""
    answer = await session.send(
        {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": "t"}},
        httpx.Request("POST", "http://gateway/mcp/docs"), {})
    assert answer.status_code == 200
    return answer


def _answer(rpc_id: int) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": rpc_id, "result": {}}).encode()


async def _events(answer: httpx.Response) -> list[bytes]:
    return [event async for event in answer.aiter_raw()]


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
    GET stream its client did not read: gigabytes for one session. Past QUEUED_BYTES a
    message is dropped; the first is let through whatever its size; what was sent is
    kept for a resumption only while it fits."""
    session = HeldSession("s", HeldServer("docs", idle_timeout_s=300, max_sessions=4))
    events = _reader(session)
    try:
        replay = session.replay
        big = _note("x" * (QUEUED_BYTES + 1))
        session.route(big)
        assert len(replay.kept) == 1  # alone, it goes through
        note = _note("y" * (1 << 20))
        session.route(note)
        assert len(replay.kept) == 1  # behind it, dropped
        assert await anext(events) == _event(1, big)
        for _ in range(200):  # 200 MiB sent to a stream that reads none
            session.route(note)
        assert replay.held_bytes <= QUEUED_BYTES
        assert len(replay.kept) == QUEUED_BYTES // len(note)  # the big one gone first
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
    newest UNREAD_KEPT messages, in UNREAD_KEPT_BYTES, are kept; the first stream
    opened starts at the oldest of them."""
    session = _Session("s", HeldServer("docs", idle_timeout_s=300, max_sessions=4))
    try:
        replay = session.replay
        for n in range(2000):
            session.route(_note(f"m{n}"))
        assert [kept.id for kept in replay.kept] == list(range(2001 - UNREAD_KEPT, 2001))
        big = _note("x" * (100 << 10))
        for _ in range(20):  # 2 MiB
            session.route(big)
        assert replay.held_bytes <= UNREAD_KEPT_BYTES
        assert len(replay.kept) == UNREAD_KEPT_BYTES // len(big)
        assert session.owner.replays.held_bytes == replay.held_bytes
        events = _reader(session)
        assert await anext(events) == _event(2021 - len(replay.kept), big)
        await events.aclose()
        for n in range(UNREAD_KEPT + 10):  # a stream was opened: the full bound now
            session.route(_note(f"later {n}"))
        assert len(replay.kept) == UNREAD_KEPT_BYTES // len(big) + UNREAD_KEPT + 10
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
        now[0] += REPLAY_HORIZON_S + 1  # m2 never sent: kept
        session.route(_note("m3"))
        assert [kept.id for kept in session.replay.kept] == [3, 4]
        await events.aclose()
        events = _reader(session, "1")  # m1 gone: from the oldest kept
        assert await anext(events) == _event(3, _note("m2"))
        assert await anext(events) == _event(4, _note("m3"))
        now[0] += REPLAY_HORIZON_S - 1  # within it: kept for a resumption
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


async def test_a_call_whose_client_left_is_resumed_to_its_response() -> None:
    """A call's events had no ids, and a client that left its stream (a cut connection)
    lost the call: the response came to no call and was dropped. Each event has an id
    naming the call's stream; the response is kept, and a GET with the last id its client
    had sends the rest, to the response; a call read to its end is kept no longer."""
    session = _Session("s", HeldServer("docs", idle_timeout_s=300, max_sessions=4))
    try:
        answer = await _called(session, 1)
        events = answer.aiter_raw()
        session.route(_note("during"))
        assert await anext(events) == b"id: 1-1\nevent: message\ndata: %s\n\n" % _note(
            "during")
        await answer.aclose()  # its client left
        session.route(_note("after"))  # no call is read: to the GET stream's replay
        session.route(_answer(1))
        assert session.replay.last_id == 1
        resumed = session.stream("1-1")
        assert resumed.status_code == 200
        assert await _events(resumed) == [
            b"id: 1-2\nevent: message\ndata: %s\n\n" % _answer(1)]
        await resumed.aclose()
        # Read to its end, it is kept still (the response's write may have been lost
        # with the connection), the first to go when the budget is short
        assert session.calls == {} and list(session.streams) == [1]
        assert list(session.owner.replays.spare) == [session.streams[1]]
        again = session.stream("1-1")
        assert await _events(again) == [
            b"id: 1-2\nevent: message\ndata: %s\n\n" % _answer(1)]
        await again.aclose()
        after = session.stream("1-2")  # resumed after its response: nothing is left
        assert await _events(after) == []
        await after.aclose()
        gone = session.stream("9-1")
        assert gone.status_code == 400
        assert "names no stream this session keeps" in gone.json()["error"]["message"]
        answered = await _called(session, 2)  # read to its end as it comes
        session.route(_answer(2))
        assert await _events(answered) == [
            b"id: 2-1\nevent: message\ndata: %s\n\n" % _answer(2)]
        await answered.aclose()
        assert list(session.streams) == [1, 2] and session.calls == {}
    finally:
        await session.stop("the test ends")


async def test_the_calls_a_session_keeps_for_nobody_are_bounded() -> None:
    """A call whose client left was kept to the horizon, its response always (past the
    budget, whatever its size): a client that cut every call short made its session
    keep one a call, and the gateway their responses past its budget, for minutes. Now
    a session keeps the newest LEFT_KEPT streams nobody reads, and a response nobody
    reads is kept only within the budget (a stream read to its end is the first to go
    when a message does not fit: its client most likely had it)."""
    budget = ReplayBudget(cap_bytes=1 << 20)
    session = _Session("s", HeldServer("docs", idle_timeout_s=300, max_sessions=4,
                                       replays=budget))
    events = _reader(session)
    try:
        for rpc_id in range(1, LEFT_KEPT + 6):
            await (await _called(session, rpc_id)).aclose()  # left before its response
        assert list(session.streams) == list(range(6, LEFT_KEPT + 6))
        session.route(_answer(1))  # its stream forgotten: dropped
        assert budget.held_bytes == 0
        big = json.dumps({"jsonrpc": "2.0", "id": 6, "result": {
            "text": "x" * (2 << 20)}}).encode()
        session.route(big)  # past the budget, for nobody: dropped
        assert 6 not in session.streams and budget.held_bytes == 0
        answer = await _called(session, 100)
        session.route(json.dumps({"jsonrpc": "2.0", "id": 100, "result": {
            "text": "x" * (600 << 10)}}).encode())
        assert len(await _events(answer)) == 1
        await answer.aclose()  # read to its end: kept, spare
        number = session.numbered
        assert number in session.streams and list(budget.spare) == [session.streams[number]]
        note = _note("x" * (600 << 10))
        session.route(note)  # to the GET stream: the spare stream makes room for it
        assert number not in session.streams and budget.spare == {}
        assert await anext(events) == _event(1, note)
    finally:
        await events.aclose()
        await session.stop("the test ends")


async def test_what_a_quiet_session_keeps_is_forgotten_on_time() -> None:
    """A message sent was forgotten past the horizon only as the next one came: a quiet
    session held it for its life, against the gateway's budget. A sweep forgets it on
    time, and a call's stream nobody resumed within the horizon with it."""
    budget = ReplayBudget(horizon_s=0.2)
    session = _Session("s", HeldServer("docs", idle_timeout_s=300, max_sessions=4,
                                       replays=budget))
    events = _reader(session)
    try:
        session.route(_note("once"))
        assert await anext(events) == _event(1, _note("once"))
        await asyncio.sleep(0.6)  # three horizons, and nothing comes
        assert list(session.replay.kept) == [] and budget.held_bytes == 0
        answer = await _called(session, 1)
        session.route(_note("during"))
        await answer.aclose()  # left before its response
        assert budget.held_bytes > 0 and session.streams
        await asyncio.sleep(0.6)
        assert session.streams == {} and budget.held_bytes == 0
        session.route(_answer(1))  # nobody resumed it: dropped
        assert budget.held_bytes == 0
    finally:
        await events.aclose()
        await session.stop("the test ends")


async def test_an_event_id_too_long_to_be_one_is_read_as_none() -> None:
    """A Last-Event-ID of 5,000 digits was int()ed: a ValueError (past 4,300 digits),
    a 500 from the proxy. Now it is an id the session did not give."""
    session = _Session("s", HeldServer("docs", idle_timeout_s=300, max_sessions=4))
    try:
        session.route(_note("m"))
        events = _reader(session, "9" * 5000)
        assert await anext(events) == _event(1, _note("m"))
        await events.aclose()
        assert session.stream("1-" + "9" * 5000).status_code == 400
    finally:
        await session.stop("the test ends")


async def test_a_server_writing_garbage_does_not_fill_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    """Each line a server wrote that is not a message (or an answer no call waits for)
    was a log line: a stdio server writing garbage filled the gateway's log. A session
    logs its first few drops, and counts the rest as it ends."""
    session = _Session("s", HeldServer("docs", idle_timeout_s=300, max_sessions=4))
    try:
        with caplog.at_level(logging.INFO, logger="aigw.mcp"):
            for n in range(1000):
                session.route(b"\x1b[2Jgarbage %d" % n if n % 2 else b"[1, 2]")
                session.route(_answer(n))
            await session.stop("the test ends")
        dropped = [record.getMessage() for record in caplog.records
                   if "dropped" in record.getMessage()]
        assert len(dropped) <= 25, len(dropped)
        assert dropped[-1] == "MCP server 'docs' session: 1980 more messages dropped, not logged"
        assert any("\\x1b" in line for line in dropped)  # quoted: no terminal escapes
    finally:
        await session.stop("the test ends")


class _Eager(_Session):
    """A session whose server says something the moment it takes a request."""

    async def deliver(self, message: bytes, read_s: float | None,
                      carried: Mapping[str, str]) -> httpx.Response | None:
        self.route(_note("taking it"))
        return None


async def test_what_the_server_says_as_it_takes_a_request_is_the_calls() -> None:
    """While a request was delivered its call had no reader yet: what the server said
    then went to the GET stream, not the call's (and a sweep then would have forgotten
    the call, its response dropped)."""
    session = _Eager("s", HeldServer("docs", idle_timeout_s=300, max_sessions=4))
    try:
        answer = await _called(session, 1)
        session.route(_answer(1))
        assert await _events(answer) == [
            b"id: 1-1\nevent: message\ndata: %s\n\n" % _note("taking it"),
            b"id: 1-2\nevent: message\ndata: %s\n\n" % _answer(1)]
        assert session.replay.last_id == 0
    finally:
        await session.stop("the test ends")
