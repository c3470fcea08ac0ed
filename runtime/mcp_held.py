"""MCP servers whose sessions the gateway holds (a stdio server's process, an HTTP+SSE
server's event stream), spoken to as streamable HTTP: an httpx transport (the one-method
seam, ``handle_async_request``, that the proxy in ``mcp`` sends every server's messages
through) that keeps one upstream connection a session.

What it answers, as a streamable HTTP server would::

    POST initialize, no session    open a session (max_sessions at most: 503 past it),
                                   its answer with Mcp-Session-Id: a new random id
    POST a request                 the message to the server; an SSE stream of what the
                                   server says until the response with the request's id,
                                   each event with its id (``<call>-<n>``), after a
                                   priming event (``<call>-0``, no data) for a client of
                                   2025-11-25 or later
    POST a notification, response  the message to the server; 202
    GET                            an SSE stream of what it says outside any call, each
                                   event with its id; with Last-Event-ID, those after it
                                   again first (and an older GET stream of the session
                                   ended: its client has left it); with the id of a
                                   call's event, the rest of that call's stream instead
    DELETE                         the session ended; 200

A response goes to the call with its id; a notification or request of the server's goes
to the stream of an open call whose client reads it (neither stdio nor HTTP+SSE says
which call it belongs to: the oldest), else to the GET stream. Every stream keeps what
it is given in a replay (``mcp_replay``), for the stream to send and for a client that
reconnects with ``Last-Event-ID`` (MCP streamable HTTP's resumability) to have again: a
GET stream's a few until one is first opened, a sent message for minutes (a call's
response too: the write that sent it may have been lost with the connection), the newest
``LEFT_KEPT`` call streams a session's client does not read, and all sessions' within
one ``ReplayBudget`` of the gateway's. A client that leaves a call's stream does not
cancel the call (as the spec has it): its response is kept for the client to resume. A
session is ended on DELETE, after ``idle_timeout_s`` with no message, when the gateway
stops, and when its upstream end does; its id is then unknown (404), as it is to every
other replica: a session lives in the gateway process that opened it, so several
replicas need sticky sessions for these servers. Each transport is a subclass pair: a
``HeldServer`` that opens a ``HeldSession``, which delivers a message and closes.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any, TypeVar

import anyio
import httpx

from .background import Background
from .errors import McpServerBusy, McpServerFailed, McpSessionUnknown
from .jsonio import dumps, loads
from .mcp_replay import LEFT_KEPT, Replay, ReplayBudget, event_number
from .telemetry.mcp_tracing import CARRIED
from .uncancelled import uncancelled

log = logging.getLogger("aigw.mcp")

SESSION = "mcp-session-id"
PROTOCOL = "mcp-protocol-version"
LAST_EVENT_ID = "last-event-id"
SSE = "text/event-stream"
# How often a session forgets what it keeps past the horizon: this many times a horizon.
_SWEEPS = 10
# Of a session's dropped messages, those logged; the rest are counted.
_DROPS_LOGGED = 20
_T = TypeVar("_T")
_UNTRACED: Mapping[str, str] = MappingProxyType({})
# The protocol revision from which a client is sent a call stream's priming event (MCP
# 2025-11-25, SEP-1699): an older client takes its empty data for a message and fails
# on it, as the SDKs found (they prime only from this revision too).
PRIMED_FROM = "2025-11-25"
# A revision is a date; another name (none yet) is not taken for a later one.
_REVISION = re.compile(r"\d{4}-\d{2}-\d{2}")


class HeldServer(httpx.AsyncBaseTransport):
    """One server's sessions, by session id; ``client`` sends through them."""

    ends = "ended it"  # how a session of this transport ends, for the 404 that follows

    def __init__(self, name: str, idle_timeout_s: float, max_sessions: int,
                 replays: ReplayBudget | None = None) -> None:
        self.name = name
        self.idle_timeout_s = idle_timeout_s
        self.max_sessions = max_sessions
        # Shared by every held server of a gateway (its own, when none is given).
        self.replays = ReplayBudget() if replays is None else replays
        self.sessions: dict[str, HeldSession] = {}
        self._opening = 0
        self._finishing = Background()  # session ends cut short, finishing on their own
        self.client = httpx.AsyncClient(transport=self)

    async def open(self, session_id: str, read_s: float | None) -> HeldSession:
        """A new session's upstream end, with the id the client will know it by."""
        raise NotImplementedError

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session_id = request.headers.get(SESSION)
        if request.method == "POST":
            message: dict[str, Any] = loads(await request.aread())  # one, checked by the proxy
            if session_id is not None:
                return await self._session(session_id).send(message, request, {})
            if message.get("method") != "initialize":
                return refusal(400, "Bad Request: a message other than initialize needs the "
                               "Mcp-Session-Id that its session's initialize answered with.")
            session = await self._open(request.extensions.get("timeout", {}).get("read"))
            return await session.send(message, request, {SESSION: session.id})
        if session_id is None:
            return refusal(400, "Bad Request: no Mcp-Session-Id.")
        session = self._session(session_id)
        if request.method == "GET":
            return session.stream(request.headers.get(LAST_EVENT_ID))
        # DELETE: a client that leaves ends it still, and so does a task cancelled outright
        await session.ended_by("ended by its client")
        return httpx.Response(200)

    async def aclose(self) -> None:
        """End every session (the gateway stops, or a reload changed how they run)."""
        sessions = list(self.sessions.values())
        with anyio.CancelScope(shield=True):
            await uncancelled(partial(_stopped, sessions, "the gateway stops"), self.finish,
                              again=True)
            await self._finishing.wait()

    def finish(self, work: Coroutine[Any, Any, _T]) -> asyncio.Task[_T]:
        """Run ``work`` (a session's end, cut short by a cancellation) in a task of its
        own, which ``aclose`` waits for."""
        return self._finishing.spawn(work)

    def _session(self, session_id: str) -> HeldSession:
        session = self.sessions.get(session_id)
        if session is None:
            raise self.unknown()
        return session

    def unknown(self) -> McpSessionUnknown:
        return McpSessionUnknown(f"Session not found: it ended (MCP server '{self.name}' "
                                 f"{self.ends}), or another gateway replica opened it.")

    async def _open(self, read_s: float | None) -> HeldSession:
        if len(self.sessions) + self._opening >= self.max_sessions:
            raise McpServerBusy(
                f"MCP server '{self.name}' has {self.max_sessions} sessions already "
                "(its max_sessions): end one (DELETE), or wait for one to idle out.")
        self._opening += 1
        try:
            session = await self.open(secrets.token_urlsafe(24), read_s)
        finally:
            self._opening -= 1
        self.sessions[session.id] = session
        return session


def _carried(headers: httpx.Headers) -> Mapping[str, str]:
    """The W3C trace context among ``headers`` (the proxy puts it there with tracing on)."""
    if "traceparent" not in headers:
        return _UNTRACED
    return {key: headers[key] for key in CARRIED if key in headers}


def primed(version: str | None) -> bool:
    """Whether a client speaking ``version`` (its MCP-Protocol-Version, None when it sent
    none: 2025-03-26, as the spec has a server assume) is sent priming events.

    >>> primed("2025-11-25"), primed("2025-06-18"), primed(None), primed("zzz")
    (True, False, False, False)
    """
    return (version is not None and _REVISION.fullmatch(version) is not None
            and version >= PRIMED_FROM)


async def _stopped(sessions: list[HeldSession], why: str) -> None:
    await asyncio.gather(*(session.stop(why) for session in sessions))


def refusal(status: int, text: str) -> httpx.Response:
    return httpx.Response(status, json={"jsonrpc": "2.0", "id": None,
                                        "error": {"code": -32600, "message": text}})


class HeldSession:
    """One session: its streams (``calls``, the POSTs not yet answered, by request id;
    ``streams``, every POST's kept for a resumption, by number; ``replay``, the GET
    stream's), and the tasks that end it when idle and forget on time what it keeps.
    A subclass reads what the server says and hands each message to ``route``;
    ``deliver`` and ``close`` are its transport's."""

    label = "session"  # what the log calls it: a process's pid

    def __init__(self, session_id: str, owner: HeldServer) -> None:
        self.id = session_id
        self.owner = owner
        self.calls: dict[bytes, _Call] = {}
        self.streams: dict[int, _Call] = {}
        self.numbered = 0  # the number of the newest call's stream (the GET stream's: 0)
        self.replay = Replay(owner.replays)  # what the server said outside any call
        self.reader: _ServerStream | None = None  # the GET stream, when open
        self.last = time.monotonic()
        self.ended = False
        self.drops = 0  # the server's messages dropped (``_dropped``)
        self.tasks = [asyncio.create_task(self._idle(), name=f"mcp-{owner.name}-idle"),
                      asyncio.create_task(self._sweep(), name=f"mcp-{owner.name}-sweep")]

    async def deliver(self, message: bytes, read_s: float | None,
                      carried: Mapping[str, str]) -> httpx.Response | None:
        """``message`` to the server: None once it has it, or the server's refusal of it
        (an HTTP answer, which the proxy passes on as it would a streamable server's).
        ``carried``: the proxy's trace context headers, for a transport that has headers."""
        raise NotImplementedError

    async def close(self) -> None:
        """The upstream end closed (``tasks`` cancelled already); run again after a cut
        (``ended_by``), what the first run left open."""
        raise NotImplementedError

    async def send(self, message: dict[str, Any], request: httpx.Request,
                   headers: dict[str, str]) -> httpx.Response:
        """``message`` to the server; for a request, the stream of its answer."""
        if self.ended:  # it ended since it was looked up
            raise self.owner.unknown()
        self.last = time.monotonic()
        read_s = request.extensions.get("timeout", {}).get("read")
        opening = message.get("method") == "initialize"
        carried = _carried(request.headers)
        if "id" not in message or "method" not in message:  # a notification or a response
            return await self.deliver(dumps(message), read_s, carried) or httpx.Response(
                202, headers=headers)
        key = dumps(message["id"])
        if key in self.calls:
            return refusal(400, "Bad Request: a request with this id is still in progress.")
        self.numbered += 1
        call = _Call(self.numbered, key, Replay(self.owner.replays, read=True))
        self.calls[key] = self.streams[call.number] = call
        # Read from the start: what the server says as it takes the request is the call's.
        # An initialize is never primed: its session ends if its stream is left unanswered,
        # so there would be nothing to resume.
        reader = call.reader = _CallStream(
            self, call, 0, read_s, opening,
            primes=not opening and primed(request.headers.get(PROTOCOL)))
        try:
            refused = await self.deliver(dumps(message), read_s, carried)
        except BaseException:
            self.forget(call)
            if opening:  # its client will never learn the session's id
                await self.ended_by("its initialize could not be sent")
            raise
        if refused is not None:
            self.forget(call)
            if opening:
                await self.ended_by("its initialize was refused")
            return refused
        return httpx.Response(200, headers={**headers, "content-type": SSE}, stream=reader)

    def stream(self, last_event_id: str | None = None) -> httpx.Response:
        """The GET stream: from the message after ``last_event_id`` (a reconnect), else
        from the first no stream has sent. A reconnect takes over the session's stream,
        whose client has left it though its end may not have noticed yet. An id of a
        call's stream (``<number>-<id>``) resumes that call's stream instead, to its
        response (MCP streamable HTTP: never a message of another stream's)."""
        if last_event_id is not None and "-" in last_event_id:
            return self._resume(last_event_id)
        if self.reader is not None and last_event_id is None:
            return refusal(409, "Conflict: only one GET stream a session.")
        self.reader = _ServerStream(self, self.replay.start(last_event_id, self.owner.name))
        self.replay.wake()  # a stream taken over ends
        return httpx.Response(200, headers={"content-type": SSE}, stream=self.reader)

    def _resume(self, last_event_id: str) -> httpx.Response:
        number, _, after = last_event_id.strip().partition("-")
        stream, event = event_number(number), event_number(after)
        call = self.streams.get(stream) if stream is not None else None
        if call is None or event is None:
            # Not the GET stream (whose own messages it never had), nor a wait for
            # nothing: a client resuming a call it cannot have again is told so.
            return refusal(400, "Bad Request: Last-Event-ID names no stream this session "
                           "keeps (its answer was read to its end, or nobody resumed it "
                           f"within {self.owner.replays.horizon_s:g} s).")
        self.owner.replays.spare.pop(call, None)  # read again: not to be forgotten now
        call.reader = _CallStream(self, call, call.replay.resumed(event, self.owner.name),
                                  None, opening=False, primes=False)
        call.replay.wake()  # a stream taken over ends
        return httpx.Response(200, headers={"content-type": SSE}, stream=call.reader)

    def forget(self, call: _Call) -> None:
        """``call``'s stream is kept no longer: its response (when it comes) is dropped."""
        self.streams.pop(call.number, None)
        if self.calls.get(call.key) is call:  # not a later call's with its id
            del self.calls[call.key]
        self.owner.replays.spare.pop(call, None)
        call.replay.release()
        call.replay.wake()

    def left(self, call: _Call, finished: bool) -> None:
        """``call``'s client no longer reads its stream, ``finished`` (read to its
        response) or not: it is kept for a resumption (the response's write may have
        been lost with the connection) within the horizon, ``LEFT_KEPT`` of a session's
        at most (the oldest left go first), a finished one until a message of any
        session's does not fit (``ReplayBudget.make_room``)."""
        call.reader = None
        call.left = self.owner.replays.clock()
        if finished:
            self.owner.replays.spare[call] = partial(self.forget, call)
        unread = [kept for kept in self.streams.values() if kept.reader is None]
        for oldest in unread[:max(0, len(unread) - LEFT_KEPT)]:
            self.forget(oldest)

    def expire(self) -> None:
        """Forget what was sent longer ago than the horizon, and the call streams nobody
        resumed within it: a quiet session's would otherwise be held until its next
        message came, or its end."""
        now = self.owner.replays.clock()
        horizon = self.owner.replays.horizon_s
        self.replay.forget(now)
        for call in list(self.streams.values()):
            if call.reader is None and call.left < now - horizon:
                self.forget(call)
            else:
                call.replay.forget(now)

    async def ended_by(self, why: str) -> None:
        """``stop``, to its end though the calling task is cancelled meanwhile, outright
        too (a shutdown past its grace): cut half-way, a stdio process that ignores
        SIGTERM was never killed and ran on with nobody to end it (its session's id gone
        from ``sessions``)."""
        with anyio.CancelScope(shield=True):
            await uncancelled(partial(self.stop, why), self.owner.finish, again=True)

    async def stop(self, why: str) -> None:
        """End the session: its calls fail, its GET stream ends, its upstream end closes.
        Safe to run again (its end is said once; its upstream end is closed again)."""
        if not self.ended:
            self.ended = True
            self.owner.sessions.pop(self.id, None)
            failed = McpServerFailed(f"MCP server '{self.owner.name}' ended ({why}) before "
                                     "it answered.")
            for call in self.calls.values():
                call.failed = failed
            for call in self.streams.values():
                self.owner.replays.spare.pop(call, None)
                call.replay.release()
                call.replay.wake()
            self.replay.release()
            self.replay.wake()
            if self.drops > _DROPS_LOGGED:
                log.warning("MCP server '%s' %s: %d more messages dropped, not logged",
                            self.owner.name, self.label, self.drops - _DROPS_LOGGED)
            log.info("MCP server '%s' %s: session ended (%s)", self.owner.name, self.label, why)
        current = asyncio.current_task()
        for task in self.tasks:
            # Once: run again (``ended_by``), a second cancel would cut the task's own
            # cleanup (httpcore closing the event stream it read, under an anyio shield).
            if task is not current and not task.cancelling():
                task.cancel()
        await self.close()

    def route(self, raw: bytes) -> None:
        """One message the server sent, to the stream waiting for it."""
        try:
            message = loads(raw)
        except ValueError:
            self._dropped("MCP server '%s' sent a message that is not JSON (dropped): %.200r",
                          self.owner.name, raw.decode("utf-8", "replace"))
            return
        if not isinstance(message, dict):
            self._dropped("MCP server '%s' sent JSON that is not a message (dropped)",
                          self.owner.name)
            return
        if "method" not in message:  # a response: to the call with its id, which ends
            call = self.calls.pop(dumps(message.get("id")), None)
            if call is None:
                self._dropped("MCP server '%s' answered a request that no call waits for "
                              "(dropped)", self.owner.name)
            else:
                call.answered = True
                # Kept past the bounds for a client that reads the stream (it takes it
                # at once); for one that left, only as any other message is.
                if not call.replay.add(raw, always=call.reader is not None,
                                       fits=call.reader is None):
                    self.forget(call)
                    self._dropped("MCP server '%s' answered a call whose client left, "
                                  "past the gateway's replays (%d bytes held): dropped",
                                  self.owner.name, self.owner.replays.held_bytes)
            return
        method = str(message["method"])[:100]
        # The oldest call whose client reads its stream (neither transport says which
        # call a message is of); a call its client left has its response alone.
        call = next((call for call in self.calls.values() if call.reader is not None), None)
        replay = self.replay if call is None else call.replay
        if not replay.add(raw):
            self._dropped("MCP server '%s' sent %s to a %s %d messages (%d bytes) behind, "
                        "the gateway's replays holding %d bytes (dropped)", self.owner.name,
                        method, "GET stream" if call is None else "stream",
                        len(replay.kept), replay.held_bytes, self.owner.replays.held_bytes)

    def _dropped(self, text: str, *args: object) -> None:
        """Log a message of the server's the session drops: the first ``_DROPS_LOGGED``,
        the rest counted and said as it ends (a server writing garbage, or answers to
        nothing, wrote a log line for each)."""
        self.drops += 1
        if self.drops <= _DROPS_LOGGED:
            log.warning(text, *args)

    def _streaming(self) -> bool:
        """Whether a client reads a call's stream (which keeps the session from idling)."""
        return any(call.reader is not None for call in self.streams.values())

    async def _idle(self) -> None:
        idle_s = self.owner.idle_timeout_s
        while (left := self.last + idle_s - time.monotonic()) > 0 or self._streaming():
            await asyncio.sleep(left if left > 0 else idle_s)
        await self.stop(f"idle for {idle_s:g} s")

    async def _sweep(self) -> None:
        """``expire`` ``_SWEEPS`` times a horizon: a message is forgotten at most a tenth
        of it late, whether or not anything else comes."""
        while True:
            await asyncio.sleep(self.owner.replays.horizon_s / _SWEEPS)
            self.expire()


@dataclass(slots=True, eq=False)
class _Call:
    """One POST's stream: what the server said while its request was open, then its
    response, under event ids ``<number>-<id>``, kept for a client that lost the POST's
    answer and resumes it (GET with ``Last-Event-ID``) until nobody resumed it within the
    horizon (read to its end, or not), or ``HeldSession.left`` lets it go sooner."""

    number: int
    key: bytes  # its request's id, as JSON
    replay: Replay
    reader: _CallStream | None = None  # the stream its client reads, when one does
    failed: McpServerFailed | None = None  # the session ended before the response
    answered: bool = False  # its response is kept (the newest of its replay)
    left: float = 0.0  # when its last reader left (on the budget's clock)


class _CallStream(httpx.AsyncByteStream):
    """A call's stream as SSE, from the message after ``after``: what the server sent
    while it was open, then its response. Nothing for ``read_s`` is a timeout, as
    between two parts of an HTTP server's; a stream that takes over from it ends it.
    ``primes``: it opens with a priming event, an id (``<call>-0``, before any message's)
    and empty data (MCP 2025-11-25), so that a client whose connection is cut before the
    first message still has an id to resume the stream with."""

    def __init__(self, session: HeldSession, call: _Call, after: int, read_s: float | None,
                 opening: bool, primes: bool) -> None:
        self._session, self._call, self._after, self._read_s = session, call, after, read_s
        self._opening = opening  # an initialize: its session is the client's only once answered
        self._primes = primes
        self._answered = False  # its client was sent the response
        self._failed = False  # or the gateway's error in its place

    async def __aiter__(self) -> AsyncIterator[bytes]:
        call, replay = self._call, self._call.replay
        if self._primes and call.reader is self:
            yield b"id: %d-0\ndata: \n\n" % call.number
        while call.reader is self:
            change = replay.change
            found = replay.after(self._after)
            if found is None:
                if call.failed is not None:
                    self._failed = True
                    raise call.failed
                if call.answered:  # resumed after its response: nothing is left
                    self._answered = True
                    return
                try:
                    async with asyncio.timeout(self._read_s):
                        await change.wait()
                except TimeoutError:
                    self._failed = True  # its client is answered with the gateway's error
                    raise httpx.ReadTimeout("no answer in time") from None
                continue
            replay.sending(found)
            self._after = found.id
            # The response handed on is its client's (a JSON answer has no event id to
            # resume after): the stream is read to its end.
            self._answered = call.answered and found.id == replay.last_id
            yield b"id: %d-%d\nevent: message\ndata: %s\n\n" % (call.number, found.id,
                                                                  found.raw)
            if self._answered:
                return

    async def aclose(self) -> None:
        session, call = self._session, self._call
        session.last = time.monotonic()
        if call.reader is not self:  # taken over by a resumption
            return
        if self._failed:  # ended with the gateway's error: nothing to resume
            session.forget(call)
        else:  # an answer written may be lost with the connection it went down
            session.left(call, finished=self._answered)
        if self._opening and not self._answered:
            # Its client never learnt the session's id: nobody could end or reach it.
            await session.ended_by("its initialize went unanswered")


class _ServerStream(httpx.AsyncByteStream):
    """The GET stream: what the server sends outside any call, each event with its id,
    from the message after ``after``; until the session ends (what was kept for it sent
    first) or another GET stream takes over."""

    def __init__(self, session: HeldSession, after: int) -> None:
        self._session, self._after = session, after

    async def __aiter__(self) -> AsyncIterator[bytes]:
        session, replay = self._session, self._session.replay
        while session.reader is self:
            change = replay.change
            found = replay.after(self._after)
            if found is None:
                if session.ended:
                    return
                await change.wait()
                continue
            replay.sending(found)
            self._after = found.id
            yield b"id: %d\nevent: message\ndata: %s\n\n" % (found.id, found.raw)

    async def aclose(self) -> None:
        if self._session.reader is self:
            self._session.reader = None
