"""Limits and budgets held in this process: the embedded store's counters, and Redis'
local stand-in while it is unreachable (fail_open).

Every method is synchronous and awaits nothing, so on one event loop each call is
atomic: a reservation checks and takes every scope at once, with no lock needed.
Budget counters start at zero unless the owner ``seed``s them first (the embedded
store loads what earlier runs spent from SQLite).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from .checks import (
    SECONDS_PER_WINDOW,
    SETTLE_GRACE,
    BudgetCheck,
    Plan,
    Shapes,
    decide,
    period_key,
    rate_status,
)
from .values import NANOS, BudgetStatus, Denied, Period, Reservation, Scope

Counter = tuple[str, str, str]  # (scope, name, period_key)
Subject = tuple[str, str]  # (scope, name): whose requests in flight a max_parallel counts
SWEEP_EVERY = 60.0


@dataclass(slots=True)
class _Bucket:
    level: float
    since: float


@dataclass(frozen=True, slots=True)
class _Open:
    """A reservation not settled yet: until ``deadline`` it holds its budget counters
    and its places under max_parallel (``holding``); after that, a settle is still
    accepted until the next deadline."""

    deadline: float
    counters: tuple[Counter, ...]
    holding: bool
    places: tuple[Subject, ...] = ()


@dataclass(slots=True)
class _Budget:
    spent: int
    held: int = 0
    holds: dict[str, int] = field(default_factory=dict)


class MemoryLimits:
    """Token buckets, budget counters and the holds of reservations in flight."""

    def __init__(self, origin: str, shapes: Shapes) -> None:
        self.origin = origin
        self._shapes = shapes  # its store's
        self._buckets: dict[tuple[str, str, str], _Bucket] = {}
        self._budgets: dict[Counter, _Budget] = {}
        self._running: dict[Subject, int] = {}  # requests in flight, of a max_parallel's
        self._open: dict[str, _Open] = {}
        self._timers: list[tuple[float, str]] = []  # (deadline, request id), some stale
        self._next_sweep = 0.0

    def missing(self, counters: tuple[Counter, ...]) -> tuple[Counter, ...]:
        budgets = self._budgets
        for counter in counters:  # the common case, none missing: no list built
            if counter not in budgets:
                return tuple([counter for counter in counters if counter not in budgets])
        return ()

    def charged_to(self, request_id: str) -> tuple[Counter, ...]:
        """The budget counters a settle of ``request_id`` would charge (none once it is
        settled or forgotten)."""
        opened = self._open.get(request_id)
        return () if opened is None else opened.counters

    def seed(self, counter: Counter, spent: int) -> None:
        """Start a budget counter at what was spent before (no-op if it already exists)."""
        self._budgets.setdefault(counter, _Budget(spent))

    def reserve(
        self, request_id: str, checks: Plan, now: float, ttl: float
    ) -> Reservation | Denied:
        """A ``Reservation``, or the ``Denied`` that explains why not."""
        self._expire(now)
        if request_id in self._open:
            raise ValueError(f"request {request_id!r} already holds a reservation")
        # One pass over the buckets, refilled in place (``_bucket`` written out: five or
        # so a request, each a call), and one over the budgets; ``decide`` only when one
        # of them is short.
        levels: list[float] = []  # before this request: a refusal puts them back
        short = False
        found = self._buckets.get
        for check in checks.buckets:
            key = (check.scope, check.name, check.unit)  # a Scope is the str of its value
            cap = check.cap
            bucket = found(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(float(cap), now)
            level, since = bucket.level, bucket.since
            if now > since:  # refilled at cap/60 a second, capped at ``cap``, as lua.py's
                level += (now - since) * cap / SECONDS_PER_WINDOW
                bucket.since = now
            if level >= cap:
                level = float(cap)
            bucket.level = level - check.need  # taken now, as it will be if granted
            levels.append(level)
            if check.need > level:
                short = True
        budgets: list[_Budget] = []
        cost = checks.cost_nanos
        left: int | None = None  # the least any budget has left before this hold
        for budget_check, counter in zip(checks.budgets, checks.counters, strict=True):
            budget = self._budgets.get(counter)
            if budget is None:
                budget = self._budgets[counter] = _Budget(0)
            budgets.append(budget)
            room = budget_check.amount_nanos - budget.spent - budget.held
            if left is None or room < left:
                left = room
            if cost > room:
                short = True
        places: tuple[Subject, ...] = ()
        running: list[int] = []
        if checks.slots:  # most limits have none: no work for them on every request
            places = tuple([(slot.scope, slot.name) for slot in checks.slots])
            running = [self._running.get(place, 0) for place in places]
            short = True  # ``decide`` counts them
        if short:
            denied = decide(checks, levels, [(b.spent, b.held) for b in budgets], now,
                            running)
            if denied is not None:
                for check, level in zip(checks.buckets, levels, strict=True):
                    self._buckets[check.scope, check.name, check.unit].level = level
                return denied
        expires_at = now + ttl
        for budget in budgets:
            budget.held += cost
            budget.holds[request_id] = cost
        if places:
            for place, count in zip(places, running, strict=True):
                self._running[place] = count + 1
        self._open[request_id] = _Open(expires_at, checks.counters, holding=True, places=places)
        heapq.heappush(self._timers, (expires_at, request_id))
        return Reservation(
            request_id=request_id,
            limits=checks.limits,
            tokens=checks.tokens,
            cost_nanos=cost,
            periods=checks.periods,
            expires_at=expires_at,
            rate=rate_status(checks, levels, granted=True),
            origin=self.origin,
            budget_remaining=None if left is None else max(0, left) / NANOS,
            parallel=bool(places),
        )

    def settle(self, reservation: Reservation, tokens: int, cost: float, now: float) -> Plan | None:
        """Release the holds, charge ``cost`` and refund unused tokens; once per reservation.

        Returns what was charged, or None when this reservation was settled already.
        """
        self._expire(now)
        opened = self._open.pop(reservation.request_id, None)
        if opened is None:
            return None
        if opened.holding:
            self._unhold(reservation.request_id, opened)
        if len(self._timers) > 2 * len(self._open) + 1024:  # drop the settled ones' timers
            self._timers = [(item.deadline, rid) for rid, item in self._open.items()]
            heapq.heapify(self._timers)
        charge = self._shapes.settle_plan(reservation, tokens, cost)
        for counter in charge.counters:
            self._budget(counter).spent += charge.cost_nanos
        for refund in charge.buckets:
            bucket = self._bucket(refund.scope, refund.name, refund.unit, refund.cap, now)
            level = bucket.level + refund.need
            bucket.level = level if level < refund.cap else float(refund.cap)
        return charge

    def renew(self, request_id: str, now: float, ttl: float) -> None:
        """Hold ``request_id``'s budgets until ``now + ttl`` (if it holds them still)."""
        self._expire(now)
        opened = self._open.get(request_id)
        if opened is None or not opened.holding or now + ttl <= opened.deadline:
            return
        self._open[request_id] = _Open(now + ttl, opened.counters, True, opened.places)
        heapq.heappush(self._timers, (now + ttl, request_id))  # the old timer goes stale

    def holds_until(self, request_id: str, now: float) -> float | None:
        """When ``request_id``'s holds lapse, unless renewed; None if it holds nothing
        now (settled, or lapsed)."""
        self._expire(now)
        opened = self._open.get(request_id)
        return opened.deadline if opened is not None and opened.holding else None

    def is_open(self, request_id: str, now: float) -> bool:
        """Whether a settle of ``request_id`` would still be taken (its holds may have
        lapsed: a settle is taken until a grace period after that)."""
        self._expire(now)
        return request_id in self._open

    def levels(self, checks: Plan, now: float) -> list[float]:
        """The levels of ``checks``' buckets now (refilled; nothing taken)."""
        return [self._bucket(check.scope, check.name, check.unit, check.cap, now).level
                for check in checks.buckets]

    def budgets(self, checks: tuple[BudgetCheck, ...], now: float) -> tuple[BudgetStatus, ...]:
        self._expire(now)
        statuses = []
        for check in checks:
            budget = self._budget(check.counter)
            statuses.append(
                BudgetStatus(
                    scope=check.scope,
                    name=check.name,
                    period=check.period,
                    period_key=check.period_key,
                    amount=check.amount_nanos / NANOS,
                    spent=budget.spent / NANOS,
                    held=budget.held / NANOS,
                    resets_at=check.resets_at,
                )
            )
        return tuple(statuses)

    def _bucket(self, scope: Scope, name: str, unit: str, cap: int, now: float) -> _Bucket:
        """The bucket refilled up to ``now`` (a new one starts full)."""
        key = (scope, name, unit)  # a Scope is the str of its value (no .value lookup)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(cap), now)
        # Refilled at cap/60 a second, capped at ``cap`` (levels below zero are debt), as
        # store/lua.py's ``refill``; written out here, as six buckets a request (reserve
        # and settle) paid two calls each for a helper and ``max``.
        level, since = bucket.level, bucket.since
        if now > since:
            level += (now - since) * cap / SECONDS_PER_WINDOW
            bucket.since = now
        bucket.level = level if level < cap else float(cap)
        return bucket

    def _budget(self, counter: Counter) -> _Budget:
        budget = self._budgets.get(counter)
        if budget is None:
            budget = self._budgets[counter] = _Budget(0)
        return budget

    def _unhold(self, request_id: str, opened: _Open) -> None:
        """Give back what ``opened`` holds: its budget holds and its places."""
        for counter in opened.counters:
            budget = self._budgets[counter]
            budget.held -= budget.holds.pop(request_id, 0)
        for place in opened.places:
            left = self._running[place] - 1
            if left:
                self._running[place] = left
            else:
                del self._running[place]

    def _expire(self, now: float) -> None:
        """Drop the holds of reservations past their TTL, and forget old unsettled ones."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, request_id = heapq.heappop(timers)
            opened = self._open.get(request_id)
            if opened is None or opened.deadline != deadline:
                continue  # settled already, or the id was reserved again since
            if opened.holding:
                self._unhold(request_id, opened)
                self._open[request_id] = _Open(deadline + SETTLE_GRACE, opened.counters, False)
                heapq.heappush(timers, (deadline + SETTLE_GRACE, request_id))
            else:
                del self._open[request_id]
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Forget buckets that are full again (a missing bucket is a full one) and budget
        counters of past periods that hold nothing (the embedded store reloads them)."""
        full = [
            key
            for key, bucket in self._buckets.items()
            if bucket.level >= 0 and now - bucket.since >= 60.0
        ]
        for key in full:
            del self._buckets[key]
        current = {period_key(Period.DAY, now), period_key(Period.MONTH, now), "total"}
        past = [
            counter
            for counter, budget in self._budgets.items()
            if counter[2] not in current and not budget.holds
        ]
        for counter in past:
            del self._budgets[counter]
