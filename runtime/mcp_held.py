"""MCP servers whose sessions the gateway holds (a stdio server's process, an HTTP+SSE
server's event stream), spoken to as streamable HTTP: an httpx transport (the one-method
seam, ``handle_async_request``, that the proxy in ``mcp`` sends every server's messages
through) that keeps one upstream connection a session.

What it answers, as a streamable HTTP server would::

    POST initialize, no session    open a session (max_sessions at most: 503 past it),
                                   its answer with Mcp-Session-Id: a new random id
    POST a request                 the message to the server; an SSE stream of what the
                                   server says until the response with the request's id
    POST a notification, response  the message to the server; 202
    GET                            an SSE stream of what it says outside any call, each
                                   event with its id; with Last-Event-ID, those after it
                                   again first (and an older GET stream of the session
                                   ended: its client has left it)
    DELETE                         the session ended; 200

A response goes to the call with its id; a notification or request of the server's goes
to an open call's stream (neither stdio nor HTTP+SSE says which call it belongs to: the
oldest open), else to the GET stream's replay (``_Replay``), which keeps it, whether a
GET stream is open or not, for the stream to send and for a client that reconnects with
``Last-Event-ID`` (MCP streamable HTTP's resumability) to have again: a few until a GET
stream is first opened, a sent one for minutes, and all sessions' within one
``ReplayBudget`` of the gateway's. A session is ended on DELETE, after
``idle_timeout_s`` with no message, when the gateway stops, and when its upstream end
does; its id is then unknown (404), as it is to every other replica: a session lives in
the gateway process that opened it, so several replicas need sticky sessions for these
servers. Each transport is a subclass pair: a ``HeldServer`` that opens a
``HeldSession``, which delivers a message and closes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any, TypeVar

import anyio
import httpx

from .background import Background
from .errors import McpServerBusy, McpServerFailed, McpSessionUnknown
from .jsonio import dumps, loads
from .telemetry.mcp_tracing import CARRIED
from .uncancelled import uncancelled

log = logging.getLogger("aigw.mcp")

SESSION = "mcp-session-id"
LAST_EVENT_ID = "last-event-id"
SSE = "text/event-stream"
_QUEUED = 1024  # messages of the server's held for a stream; past it they are dropped
# And the bytes: 1,024 messages of up to the transport's cap each (tens of MiB) would be
# gigabytes held for one client that does not read. Past it a message is dropped too,
# unless the stream holds none (one message is always let through, whatever its size).
_QUEUED_BYTES = 64 << 20
# What a session's replay keeps while no GET stream has ever been opened (most clients
# only POST, and never will): the newest few, for one that opens it late. Its full
# bound (above) kept 64 MiB a session for nobody. Constants, not settings: a client
# resuming needs seconds of messages, not an operator's judgement.
_UNREAD_KEPT = 64
_UNREAD_KEPT_BYTES = 256 << 10
# How long a message a stream sent is kept for a client to resume after: clients retry
# within seconds (the SDKs' backoff is at most 30 s), and what they did not ask for
# again by then is held for nobody.
_REPLAY_HORIZON_S = 300.0
# What every held session's replay keeps, together, in one gateway: a session past its
# share of it keeps what it has (its oldest sent dropped first) and drops the new.
_REPLAYS_BYTES = 256 << 20
# What a call's stream is given: a message of the server's and whether it is the
# response (the last), or the failure that ends the call.
_Item = tuple[bytes, bool] | McpServerFailed
_T = TypeVar("_T")
_UNTRACED: Mapping[str, str] = MappingProxyType({})


class _Backlog(asyncio.Queue[_T]):
    """A stream's queue of the server's messages, knowing how many bytes it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.held_bytes = 0

    def _put(self, item: _T) -> None:
        super()._put(item)
        self.held_bytes += _size(item)

    def _get(self) -> _T:
        item = super()._get()
        self.held_bytes -= _size(item)
        return item


def _size(item: object) -> int:
    if isinstance(item, bytes):
        return len(item)
    return len(item[0]) if isinstance(item, tuple) else 0  # a failure, the end: nothing


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
async def _stopped(sessions: list[HeldSession], why: str) -> None:
    await asyncio.gather(*(session.stop(why) for session in sessions))


def refusal(status: int, text: str) -> httpx.Response:
    return httpx.Response(status, json={"jsonrpc": "2.0", "id": None,
                                        "error": {"code": -32600, "message": text}})


class HeldSession:
    """One session: what it was asked (``calls``, by request id), its GET stream, and the
    task that ends it when idle. A subclass reads what the server says and hands each
    message to ``route``; ``deliver`` and ``close`` are its transport's."""

    label = "session"  # what the log calls it: a process's pid

    def __init__(self, session_id: str, owner: HeldServer) -> None:
        self.id = session_id
        self.owner = owner
        self.calls: dict[bytes, _Backlog[_Item]] = {}
        self.replay = _Replay(owner.replays)  # what the server said outside any call
        self.reader: _ServerStream | None = None  # the GET stream, when open
        self.last = time.monotonic()
        self.ended = False
        self.tasks = [asyncio.create_task(self._idle(), name=f"mcp-{owner.name}-idle")]

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
        queue: _Backlog[_Item] = _Backlog()
        self.calls[key] = queue
        try:
            refused = await self.deliver(dumps(message), read_s, carried)
        except BaseException:
            self.calls.pop(key, None)
            if opening:  # its client will never learn the session's id
                await self.ended_by("its initialize could not be sent")
            raise
        if refused is not None:
            self.calls.pop(key, None)
            if opening:
                await self.ended_by("its initialize was refused")
            return refused
        return httpx.Response(200, headers={**headers, "content-type": SSE},
                              stream=_CallStream(self, key, queue, read_s, opening))

    def stream(self, last_event_id: str | None = None) -> httpx.Response:
        """The GET stream: from the message after ``last_event_id`` (a reconnect), else
        from the first no stream has sent. A reconnect takes over the session's stream,
        whose client has left it though its end may not have noticed yet."""
        if self.reader is not None and last_event_id is None:
            return refusal(409, "Conflict: only one GET stream a session.")
        self.reader = _ServerStream(self, self.replay.start(last_event_id, self.owner.name))
        self.replay.wake()  # a stream taken over ends
        return httpx.Response(200, headers={"content-type": SSE}, stream=self.reader)

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
            for queue in self.calls.values():
                queue.put_nowait(failed)
            self.replay.release()
            self.replay.wake()
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
            log.warning("MCP server '%s' sent a message that is not JSON (dropped): %.200s",
                        self.owner.name, raw.decode("utf-8", "replace"))
            return
        if not isinstance(message, dict):
            log.warning("MCP server '%s' sent JSON that is not a message (dropped)",
                        self.owner.name)
            return
        if "method" not in message:  # a response: to the call with its id, which ends
            queue = self.calls.pop(dumps(message.get("id")), None)
            if queue is None:
                log.info("MCP server '%s' answered a request that no call waits for "
                         "(dropped)", self.owner.name)
            else:
                queue.put_nowait((raw, True))
            return
        method = str(message["method"])[:100]
        call = next(iter(self.calls.values()), None)
        if call is None:
            if not self.replay.add(raw):
                log.warning("MCP server '%s' sent %s to a GET stream %d messages (%d bytes) "
                            "behind, the gateway's replays holding %d bytes (dropped)",
                            self.owner.name, method, len(self.replay.kept),
                            self.replay.held_bytes, self.owner.replays.held_bytes)
        elif call.qsize() >= _QUEUED or (
                call.held_bytes and call.held_bytes + len(raw) > _QUEUED_BYTES):
            log.warning("MCP server '%s' sent %s to a stream %d messages (%d bytes) behind "
                        "(dropped)", self.owner.name, method, call.qsize(), call.held_bytes)
        else:
            call.put_nowait((raw, False))

    async def _idle(self) -> None:
        idle_s = self.owner.idle_timeout_s
        while (left := self.last + idle_s - time.monotonic()) > 0 or self.calls:
            await asyncio.sleep(left if left > 0 else idle_s)
        await self.stop(f"idle for {idle_s:g} s")


class _CallStream(httpx.AsyncByteStream):
    """A call's answer as SSE: what the server sent while it was open, then its response.
    Nothing for ``read_s`` is a timeout, as between two parts of an HTTP server's."""

    def __init__(self, session: HeldSession, key: bytes, queue: asyncio.Queue[_Item],
                 read_s: float | None, opening: bool) -> None:
        self._session, self._key, self._queue, self._read_s = session, key, queue, read_s
        self._opening = opening  # an initialize: its session is the client's only once answered
        self._answered = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self._read_s):
                    item = await self._queue.get()
            except TimeoutError:
                raise httpx.ReadTimeout("no answer in time") from None
            if isinstance(item, McpServerFailed):
                raise item
            raw, last = item
            self._answered = last
            yield b"event: message\ndata: " + raw + b"\n\n"
            if last:
                return

    async def aclose(self) -> None:
        session = self._session
        if session.calls.get(self._key) is self._queue:  # not a later call's with its id
            del session.calls[self._key]
        session.last = time.monotonic()
        if self._opening and not self._answered:
            # Its client never learnt the session's id: nobody could end or reach it.
            await session.ended_by("its initialize went unanswered")


@dataclass(slots=True)
class ReplayBudget:
    """What the replays of a gateway's held sessions keep together (``cap_bytes`` at
    most), how long one keeps a message a stream sent (``horizon_s``), and the clock
    that is measured on (monotonic seconds; a test's own)."""

    cap_bytes: int = _REPLAYS_BYTES
    horizon_s: float = _REPLAY_HORIZON_S
    clock: Callable[[], float] = time.monotonic
    held_bytes: int = 0


@dataclass(slots=True)
class _Kept:
    """A message kept, under its event id; ``at``: when a stream last sent it, else
    when it came."""

    id: int
    raw: bytes
    at: float


class _Replay:
    """What the server said outside any call, each message under its event id (1, 2,
    ... in the session), kept for the GET stream: those no stream has sent yet and,
    behind them, those one has, for a client that reconnects with ``Last-Event-ID``.

    Bounded, until a GET stream is first opened, by ``_UNREAD_KEPT`` messages and
    ``_UNREAD_KEPT_BYTES``: the newest are kept, the oldest go. Once one was, as a call's
    stream is, by ``_QUEUED`` messages and ``_QUEUED_BYTES``, and a message sent is kept
    for the budget's ``horizon_s`` at most: the oldest sent go first; a message that would
    still not fit is dropped (the stream is that far behind). Always by the budget, which
    the gateway's replays share, as by its own bytes; one message is let through,
    whatever its size, when none is kept."""

    def __init__(self, budget: ReplayBudget) -> None:
        self.kept: deque[_Kept] = deque()
        self.held_bytes = 0
        self.last_id = 0  # the id of the newest message kept (none yet: 0)
        self.sent = 0  # the id of the newest message a stream sent
        self.read = False  # whether a GET stream was ever opened
        self.change = asyncio.Event()  # set (and replaced) by ``wake``
        self._budget: ReplayBudget | None = budget  # None once released
        self._clock, self._horizon_s = budget.clock, budget.horizon_s

    def add(self, raw: bytes) -> bool:
        """Keep ``raw`` under the next id; False: dropped, as it does not fit."""
        now = self._clock()
        self._forget(now)
        while self.kept and self._full(len(raw)) and (
                not self.read or self.kept[0].id <= self.sent):
            self._drop()
        if self.kept and self._full(len(raw)):
            return False
        self.last_id += 1
        self.kept.append(_Kept(self.last_id, raw, now))
        self._held(len(raw))
        self.wake()
        return True

    def sending(self, kept: _Kept) -> None:
        """``kept`` is being sent by a stream: the horizon counts from now."""
        kept.at = self._clock()
        self.sent = max(self.sent, kept.id)

    def release(self) -> None:
        """The session ended: what it keeps (for a stream to finish) leaves the budget."""
        if self._budget is not None:
            self._budget.held_bytes -= self.held_bytes
            self._budget = None

    def _forget(self, now: float) -> None:
        """The messages sent longer ago than the horizon: nobody resumes that late."""
        horizon = now - self._horizon_s
        while self.kept and self.kept[0].id <= self.sent and self.kept[0].at < horizon:
            self._drop()

    def _full(self, adding: int) -> bool:
        count, size = (_QUEUED, _QUEUED_BYTES) if self.read else (
            _UNREAD_KEPT, _UNREAD_KEPT_BYTES)
        budget = self._budget
        return len(self.kept) >= count or self.held_bytes + adding > size or (
            budget is not None and budget.held_bytes + adding > budget.cap_bytes)

    def _drop(self) -> None:
        self._held(-len(self.kept.popleft().raw))

    def _held(self, change: int) -> None:
        self.held_bytes += change
        if self._budget is not None:
            self._budget.held_bytes += change

    def after(self, event_id: int) -> _Kept | None:
        """The message kept after ``event_id`` (the oldest kept, if that one is gone)."""
        if not self.kept or event_id >= self.last_id:
            return None
        return self.kept[max(0, event_id - self.kept[0].id + 1)]

    def start(self, last_event_id: str | None, server: str) -> int:
        """The id a GET stream starts after: its ``Last-Event-ID``, else (none, or one
        this session did not give) the newest a stream sent."""
        first = self.kept[0].id if self.kept else self.last_id + 1
        if not self.read and first > 1:
            log.info("MCP server '%s': a session's first GET stream opened; its %d "
                     "oldest messages, said with none open, are no longer kept", server,
                     first - 1)
        self.read = True
        if last_event_id is None:
            return self.sent
        said = last_event_id.strip()
        if not said.isdecimal() or int(said) > self.last_id:
            log.info("MCP server '%s': a GET stream resumed after an event id its session "
                     "did not give (%.40r): from the messages not yet sent", server, said)
            return self.sent
        lost = first - int(said) - 1
        if lost > 0:
            log.warning("MCP server '%s': a GET stream resumed after event %s, of which "
                        "%d messages are no longer kept", server, said, lost)
        return int(said)

    def wake(self) -> None:
        """Wake the streams waiting: a message came, a stream was taken over, or the
        session ended."""
        self.change.set()
        self.change = asyncio.Event()


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
