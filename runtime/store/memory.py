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

from .checks import SETTLE_GRACE, Plan, decide, period_key, rate_status, refill, settle_plan
from .values import NANOS, BudgetStatus, Denied, Period, Reservation, Scope

Counter = tuple[str, str, str]  # (scope, name, period_key)
_HOLD, _FORGET = 0, 1
SWEEP_EVERY = 60.0


@dataclass(slots=True)
class _Bucket:
    level: float
    since: float


@dataclass(slots=True)
class _Budget:
    spent: int
    held: int = 0
    holds: dict[str, int] = field(default_factory=dict)


class MemoryLimits:
    """Token buckets, budget counters and the holds of reservations in flight."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self._buckets: dict[tuple[str, str, str], _Bucket] = {}
        self._budgets: dict[Counter, _Budget] = {}
        self._holding: dict[str, tuple[float, tuple[Counter, ...]]] = {}
        self._unsettled: dict[str, float] = {}  # request id -> last moment a settle counts
        self._timers: list[tuple[float, int, str]] = []
        self._next_sweep = 0.0

    def missing(self, counters: tuple[Counter, ...]) -> tuple[Counter, ...]:
        return tuple(counter for counter in counters if counter not in self._budgets)

    def seed(self, counter: Counter, spent: int) -> None:
        """Start a budget counter at what was spent before (no-op if it already exists)."""
        self._budgets.setdefault(counter, _Budget(spent))

    def reserve(
        self, request_id: str, checks: Plan, now: float, ttl: float
    ) -> Reservation | Denied:
        """A ``Reservation``, or the ``Denied`` that explains why not."""
        self._expire(now)
        if request_id in self._unsettled:
            raise ValueError(f"request {request_id!r} already holds a reservation")
        buckets = [
            self._bucket(check.scope, check.name, check.unit, check.cap, now)
            for check in checks.buckets
        ]
        levels = [bucket.level for bucket in buckets]
        budgets = [self._budget(check.counter) for check in checks.budgets]
        denied = decide(checks, levels, [(b.spent, b.held) for b in budgets], now)
        if denied is not None:
            return denied
        for bucket, check in zip(buckets, checks.buckets, strict=True):
            bucket.level -= check.need
        expires_at = now + ttl
        for budget in budgets:
            budget.held += checks.cost_nanos
            budget.holds[request_id] = checks.cost_nanos
        counters = tuple(check.counter for check in checks.budgets)
        self._holding[request_id] = (expires_at, counters)
        self._unsettled[request_id] = expires_at + SETTLE_GRACE
        heapq.heappush(self._timers, (expires_at, _HOLD, request_id))
        heapq.heappush(self._timers, (expires_at + SETTLE_GRACE, _FORGET, request_id))
        return Reservation(
            request_id=request_id,
            limits=checks.limits,
            tokens=checks.tokens,
            cost_nanos=checks.cost_nanos,
            periods=tuple(check.period_key for check in checks.budgets),
            expires_at=expires_at,
            rate=rate_status(checks, levels, granted=True),
            origin=self.origin,
        )

    def settle(self, reservation: Reservation, tokens: int, cost: float, now: float) -> Plan | None:
        """Release the holds, charge ``cost`` and refund unused tokens; once per reservation.

        Returns what was charged, or None when this reservation was settled already.
        """
        self._expire(now)
        if self._unsettled.pop(reservation.request_id, None) is None:
            return None
        held = self._holding.pop(reservation.request_id, None)
        for counter in held[1] if held else ():
            budget = self._budgets[counter]
            budget.held -= budget.holds.pop(reservation.request_id, 0)
        charge = settle_plan(reservation, tokens, cost)
        for check in charge.budgets:
            self._budget(check.counter).spent += charge.cost_nanos
        for refund in charge.buckets:
            bucket = self._bucket(refund.scope, refund.name, refund.unit, refund.cap, now)
            bucket.level = min(float(refund.cap), bucket.level + refund.need)
        return charge

    def budgets(self, checks: Plan, now: float) -> tuple[BudgetStatus, ...]:
        self._expire(now)
        statuses = []
        for check in checks.budgets:
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
        key = (scope.value, name, unit)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(cap), now)
        bucket.level = refill(bucket.level, bucket.since, cap, now)
        bucket.since = max(bucket.since, now)
        return bucket

    def _budget(self, counter: Counter) -> _Budget:
        budget = self._budgets.get(counter)
        if budget is None:
            budget = self._budgets[counter] = _Budget(0)
        return budget

    def _expire(self, now: float) -> None:
        """Drop the holds of reservations past their TTL, and forget old unsettled ones."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, kind, request_id = heapq.heappop(timers)
            if kind == _FORGET:
                if self._unsettled.get(request_id) == when:
                    del self._unsettled[request_id]
                continue
            held = self._holding.get(request_id)
            if held is None or held[0] != when:
                continue  # settled already, or the id was reserved again since
            del self._holding[request_id]
            for counter in held[1]:
                budget = self._budgets[counter]
                budget.held -= budget.holds.pop(request_id, 0)
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
