"""What a held MCP session (``mcp_held``) keeps of its server's messages for its streams:
each stream's replay, under the event ids a client resumes after (MCP streamable HTTP's
``Last-Event-ID``), and the one budget all of a gateway's replays share.

A replay keeps the messages no stream has sent yet and, behind them, those one has, for
a client that lost its connection and comes back for them. Three bounds hold it: its
own (a count and bytes), the gateway's ``ReplayBudget`` (bytes, every session's
together) and the budget's horizon (a message sent longer ago is forgotten, by the
session's sweep if nothing else comes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("aigw.mcp")

QUEUED = 1024  # messages of the server's held for a stream; past it they are dropped
# And the bytes: 1,024 messages of up to the transport's cap each (tens of MiB) would be
# gigabytes held for one client that does not read. Past it a message is dropped too,
# unless the stream holds none (one message is always let through, whatever its size).
QUEUED_BYTES = 64 << 20
# What a session's GET replay keeps while no GET stream has ever been opened (most
# clients only POST, and never will): the newest few, for one that opens it late. Its
# full bound (above) kept 64 MiB a session for nobody. Constants, not settings: a client
# resuming needs seconds of messages, not an operator's judgement.
UNREAD_KEPT = 64
UNREAD_KEPT_BYTES = 256 << 10
# How long a message a stream sent is kept for a client to resume after: clients retry
# within seconds (the SDKs' backoff is at most 30 s), and what they did not ask for
# again by then is held for nobody.
REPLAY_HORIZON_S = 300.0
# What every held session's replay keeps, together, in one gateway: a session past its
# share of it keeps what it has (its oldest sent dropped first) and drops the new.
REPLAYS_BYTES = 256 << 20
# The most call streams a session keeps that no client reads (left before their
# response, or read to it: its last write may have been lost with the connection): past
# it the oldest goes. Each is a replay and its response; a client that cuts every call
# short made a session keep one a call, for minutes, without bound.
LEFT_KEPT = 64
# The longest event id read as one (an id of ours is a few digits): int() of a longer
# run of digits is slow, and past 4,300 digits a ValueError.
_MAX_ID_DIGITS = 18


@dataclass(slots=True)
class ReplayBudget:
    """What the replays of a gateway's held sessions keep together (``cap_bytes`` at
    most), how long one keeps a message a stream sent (``horizon_s``), and the clock
    that is measured on (monotonic seconds; a test's own)."""

    cap_bytes: int = REPLAYS_BYTES
    horizon_s: float = REPLAY_HORIZON_S
    clock: Callable[[], float] = time.monotonic
    held_bytes: int = 0
    # Streams read to their end, kept in case their last write was lost, oldest first:
    # each with what forgets it. They are the first to go when a message does not fit.
    spare: dict[object, Callable[[], None]] = field(default_factory=dict)

    def make_room(self, adding: int) -> None:
        """Forget spare streams, oldest first, until ``adding`` bytes fit."""
        while self.spare and self.held_bytes + adding > self.cap_bytes:
            forget = self.spare.pop(next(iter(self.spare)))
            forget()


@dataclass(slots=True)
class Kept:
    """A message kept, under its event id; ``at``: when a stream last sent it, else
    when it came."""

    id: int
    raw: bytes
    at: float


def event_number(text: str) -> int | None:
    """``text`` (an event id, or a part of one) as the number it is, None when it is
    not one of ours (not ASCII digits, or too many of them).

    >>> event_number("12"), event_number("1e3"), event_number("9" * 40)
    (12, None, None)
    """
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_ID_DIGITS:
        return None
    return int(text)


class Replay:
    """One stream's messages, each under its event id (1, 2, ... in the replay): those no
    stream has sent yet and, behind them, those one has, for a client that resumes.

    Bounded, until a stream is first opened (``read``), by ``UNREAD_KEPT`` messages and
    ``UNREAD_KEPT_BYTES``: the newest are kept, the oldest go. Once one was, by
    ``QUEUED`` messages and ``QUEUED_BYTES``, and a message sent is kept for the budget's
    ``horizon_s`` at most: the oldest sent go first; a message that would still not fit
    is dropped (the stream is that far behind). Always by the budget, which the
    gateway's replays share, as by its own bytes; one message is let through, whatever
    its size, when none is kept."""

    def __init__(self, budget: ReplayBudget, read: bool = False) -> None:
        self.kept: deque[Kept] = deque()
        self.held_bytes = 0
        self.last_id = 0  # the id of the newest message kept (none yet: 0)
        self.sent = 0  # the id of the newest message a stream sent
        self.read = read  # whether a stream was ever opened
        self.change = asyncio.Event()  # set (and replaced) by ``wake``
        self._budget: ReplayBudget | None = budget  # None once released
        self._clock, self._horizon_s = budget.clock, budget.horizon_s

    def add(self, raw: bytes, always: bool = False, fits: bool = False) -> bool:
        """Keep ``raw`` under the next id; False: dropped, as it does not fit. ``always``:
        kept though it does not (a call's response, which its client reads the stream
        for); ``fits``: dropped though nothing is kept (a response nobody reads yet:
        the one message let through otherwise, of any size, was one a call)."""
        now = self._clock()
        self.forget(now)
        if self._budget is not None:
            self._budget.make_room(len(raw))
        while self.kept and self._full(len(raw)) and (
                not self.read or self.kept[0].id <= self.sent):
            self._drop()
        if self._full(len(raw)) and not always and (self.kept or fits):
            return False
        self.last_id += 1
        self.kept.append(Kept(self.last_id, raw, now))
        self._held(len(raw))
        self.wake()
        return True

    def sending(self, kept: Kept) -> None:
        """``kept`` is being sent by a stream: the horizon counts from now."""
        kept.at = self._clock()
        self.sent = max(self.sent, kept.id)

    def release(self) -> None:
        """Nobody will read it again (its session ended, its stream was read to its end):
        what it keeps leaves the budget (a stream finishing keeps its own)."""
        if self._budget is not None:
            self._budget.held_bytes -= self.held_bytes
            self._budget = None

    def forget(self, now: float) -> None:
        """The messages sent longer ago than the horizon: nobody resumes that late."""
        horizon = now - self._horizon_s
        while self.kept and self.kept[0].id <= self.sent and self.kept[0].at < horizon:
            self._drop()

    def _full(self, adding: int) -> bool:
        count, size = (QUEUED, QUEUED_BYTES) if self.read else (
            UNREAD_KEPT, UNREAD_KEPT_BYTES)
        budget = self._budget
        return len(self.kept) >= count or self.held_bytes + adding > size or (
            budget is not None and budget.held_bytes + adding > budget.cap_bytes)

    def _drop(self) -> None:
        self._held(-len(self.kept.popleft().raw))

    def _held(self, change: int) -> None:
        self.held_bytes += change
        if self._budget is not None:
            self._budget.held_bytes += change

    def after(self, event_id: int) -> Kept | None:
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
        said = event_number(last_event_id.strip())
        if said is None:
            log.info("MCP server '%s': a GET stream resumed after an event id its session "
                     "did not give (%.40r): from the messages not yet sent", server,
                     last_event_id)
            return self.sent
        return self.resumed(said, server)

    def resumed(self, after: int, server: str) -> int:
        """The id a stream resumed after event ``after`` starts after: ``after``, or (an
        id this replay did not give) the newest a stream sent."""
        if after > self.last_id:
            log.info("MCP server '%s': a stream resumed after an event id its session did "
                     "not give (%d): from the messages not yet sent", server, after)
            return self.sent
        first = self.kept[0].id if self.kept else self.last_id + 1
        if (lost := first - after - 1) > 0:
            log.warning("MCP server '%s': a stream resumed after event %d, of which %d "
                        "messages are no longer kept", server, after, lost)
        return after

    def wake(self) -> None:
        """Wake the streams waiting: a message came, a stream was taken over, or the
        session ended."""
        self.change.set()
        self.change = asyncio.Event()
