"""The checks one reservation makes, and the arithmetic both stores share.

Rate limits are token buckets: a limit of N per minute holds up to N and refills
continuously at N/60 a second. That is what OpenAI's headers describe (``reset`` is
the time until the bucket is full again), a caller is never told to wait for a
window edge, and there is no double burst at a window boundary as with fixed
windows. A reservation takes 1 request and ``tokens`` (prompt + max_tokens) out of
each bucket; settling puts back what was reserved and not used (or takes the
overrun, which may leave a bucket in debt). Nothing needs to expire for buckets: a
crashed gateway's reservation is simply used up and refills like any other.

Budgets are counters per (scope, name, period): ``spent`` plus ``held`` (the
worst-case cost of reservations in flight). A request fits when
``spent + held + cost <= amount``; holds expire after the reservation's TTL.

A ``max_parallel`` counts the reservations of a scope not settled yet: a request fits
while fewer than it are. Each holds its place until it is settled, or its TTL lapses
(a crashed gateway's), as a budget hold does; a request renews both while it runs.

The Redis Lua scripts (``lua.py``) implement the same bucket and budget arithmetic;
both stores then turn the raw levels into a ``Denied`` or a ``RateStatus`` here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .values import (
    NANOS,
    Denied,
    Exceeded,
    Limits,
    Period,
    RateStatus,
    RateWindow,
    Reservation,
    Scope,
    format_duration,
    to_nanos,
)

SECONDS_PER_WINDOW = 60.0
DAY_SECONDS = 86_400.0
# A denial caused only by other requests' holds: they settle within seconds, usually.
HELD_RETRY_AFTER = 1.0
# How long after its period ends a budget counter is kept (for /admin and late settles).
KEEP_AFTER_PERIOD = 35 * 86_400.0
# How long after a reservation expires its settle is still accepted (and charged).
SETTLE_GRACE = 86_400.0


@dataclass(frozen=True, slots=True)
class BucketCheck:
    """Take ``need`` out of the bucket ``(scope, name, unit)`` of capacity ``cap``."""

    scope: Scope
    name: str
    unit: Exceeded
    cap: int
    need: int

    @property
    def rate(self) -> float:
        return self.cap / SECONDS_PER_WINDOW


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    """Hold ``cost`` against the budget counter ``(scope, name, period_key)``."""

    scope: Scope
    name: str
    period: Period
    period_key: str
    amount_nanos: int
    resets_at: float | None
    # (scope, name, period_key): the stores' key for it, read several times a request
    counter: tuple[str, str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "counter", (self.scope.value, self.name, self.period_key))


@dataclass(frozen=True, slots=True)
class SlotCheck:
    """Take a place among the at most ``cap`` requests of ``(scope, name)`` in flight."""

    scope: Scope
    name: str
    cap: int


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one reservation checks, in the caller's scope order."""

    limits: tuple[Limits, ...]
    tokens: int
    cost_nanos: int
    buckets: tuple[BucketCheck, ...]
    budgets: tuple[BudgetCheck, ...]
    slots: tuple[SlotCheck, ...] = ()
    # ``budgets``' counters and period keys, in their order: kept by the shape with its
    # budget checks, not gathered afresh by each reserve and settle
    counters: tuple[tuple[str, str, str], ...] = ()
    periods: tuple[str, ...] = ()


def period_key(period: Period, now: float) -> str:
    """``period_key(Period.MONTH, 1767225600.0) == "2026-01"`` (UTC calendar periods)."""
    return _calendar(period, now)[0]


def period_end(period: Period, now: float) -> float | None:
    """When the period containing ``now`` ends (None: a total budget never resets)."""
    return _calendar(period, now)[1]


def _calendar(period: Period, now: float) -> tuple[str, float | None]:
    """The key and the end of the period containing ``now``: asked when a set of limits
    is first seen and when a period ends (``_Shape`` keeps its budget checks until then)."""
    if period is Period.TOTAL:
        return "total", None
    when = datetime.fromtimestamp(now, UTC)
    if period is Period.DAY:
        start = now // DAY_SECONDS * DAY_SECONDS  # POSIX days are all 86,400 s
        return f"{when.year:04d}-{when.month:02d}-{when.day:02d}", start + DAY_SECONDS
    following = datetime(when.year + when.month // 12, when.month % 12 + 1, 1, tzinfo=UTC)
    return f"{when.year:04d}-{when.month:02d}", following.timestamp()


@functools.lru_cache(maxsize=256)  # every settle asks; keys change once a day at most
def period_start(period: Period, key: str) -> float:
    """The inverse of ``period_key``: when the period it names began (0 for total)."""
    if period is Period.TOTAL:
        return 0.0
    day = int(key[8:10]) if period is Period.DAY else 1
    return datetime(int(key[:4]), int(key[5:7]), day, tzinfo=UTC).timestamp()


def keep_seconds(check: BudgetCheck, now: float) -> int:
    """How long a budget counter should live from now; 0 means forever."""
    if check.resets_at is None:
        return 0
    return max(1, math.ceil(check.resets_at - now + KEEP_AFTER_PERIOD))


_BucketSlot = tuple[BucketCheck | None, Scope, str, int]  # a fixed check, or a tpm to fill in
_BudgetSlot = tuple[Scope, str, Period, int]


class _Shape:
    """The checks of some limits that do not depend on the request, in the caller's
    order: each rpm check as it is, each tpm check's bucket, each budget's counter and
    amount, each max_parallel; and the budget checks of the current periods, kept until
    a period ends."""

    __slots__ = ("_counters", "_current", "_from", "_keys", "_until", "buckets", "budgets",
                 "slots")

    def __init__(self, buckets: tuple[_BucketSlot, ...], budgets: tuple[_BudgetSlot, ...],
                 slots: tuple[SlotCheck, ...] = ()):
        self.buckets = buckets
        self.budgets = budgets
        self.slots = slots
        self._current: tuple[BudgetCheck, ...] = ()
        self._keys: tuple[str, ...] = ()  # their period keys
        self._counters: tuple[tuple[str, str, str], ...] = ()  # and their counters
        # They hold from the latest start of their periods until the first end.
        self._from, self._until = math.inf, -math.inf

    def budget_checks(self, now: float) -> tuple[BudgetCheck, ...]:
        if self._from <= now < self._until:
            return self._current
        self._renew(now)
        return self._current

    def plan(self, limits: tuple[Limits, ...], tokens: int, cost_nanos: int,
             now: float) -> Plan:
        """The checks of a reservation of ``tokens`` and ``cost_nanos`` at ``now``."""
        if not self._from <= now < self._until:
            self._renew(now)
        # tuple([...]), here and on the rest of the request path: a list comprehension is
        # one call, where tuple() resumes a generator once an item and once more to end it.
        buckets = tuple([fixed or BucketCheck(scope, name, Exceeded.TOKENS, cap, tokens)
                         for fixed, scope, name, cap in self.buckets])
        return Plan(limits, tokens, cost_nanos, buckets, self._current, self.slots,
                    self._counters, self._keys)

    def _renew(self, now: float) -> None:
        """Take the budget checks of the periods containing ``now``."""
        checks: list[BudgetCheck] = []
        for scope, name, period, amount in self.budgets:
            key, resets_at = _calendar(period, now)
            checks.append(BudgetCheck(scope, name, period, key, amount, resets_at))
        self._current = tuple(checks)
        self._keys = tuple(check.period_key for check in checks)
        self._counters = tuple(check.counter for check in checks)
        self._from = max((period_start(c.period, c.period_key) for c in checks),
                         default=-math.inf)
        self._until = min((c.resets_at for c in checks if c.resets_at is not None),
                          default=math.inf)

    def settle_checks(
        self, periods: tuple[str, ...]
    ) -> tuple[tuple[BudgetCheck, ...], tuple[tuple[str, str, str], ...]]:
        """``checks_in(periods)``, and their counters."""
        if periods == self._keys:
            return self._current, self._counters
        checks = self.checks_in(periods)
        return checks, tuple([check.counter for check in checks])

    def checks_in(self, periods: tuple[str, ...]) -> tuple[BudgetCheck, ...]:
        """The budget checks of the periods named (a reservation's, for its settle)."""
        if periods == self._keys:
            return self._current
        return tuple(BudgetCheck(scope, name, period, key, amount,
                                 period_end(period, period_start(period, key)))
                     for (scope, name, period, amount), key in zip(self.budgets, periods,
                                                                   strict=True))


def _compute_shape(limits: tuple[Limits, ...]) -> _Shape:
    seen: set[tuple[Scope, str]] = set()
    buckets: list[_BucketSlot] = []
    budgets: list[_BudgetSlot] = []
    slots: list[SlotCheck] = []
    for item in limits:
        if (item.scope, item.name) in seen:
            raise ValueError(f"{item.subject} is listed twice")
        seen.add((item.scope, item.name))
        if item.rpm is not None:
            fixed = BucketCheck(item.scope, item.name, Exceeded.REQUESTS, item.rpm, 1)
            buckets.append((fixed, item.scope, item.name, item.rpm))
        if item.tpm is not None:
            buckets.append((None, item.scope, item.name, item.tpm))
        if item.budget is not None:
            budgets.append((item.scope, item.name, item.budget.period,
                            to_nanos(item.budget.amount)))
        if item.max_parallel is not None:
            slots.append(SlotCheck(item.scope, item.name, item.max_parallel))
    return _Shape(tuple(buckets), tuple(budgets), tuple(slots))


class Shapes:
    """The ``_Shape`` of each set of limits a store was asked about, by the identities of
    its Limits objects: the request path reuses them (``KeyScopes``, admission's
    ``_limits``), and hashing them field by field cost more than the work saved. Each
    store makes its own and drops it when closed; each entry keeps its Limits alive, so
    an id cannot be reused while its entry exists."""

    __slots__ = ("_found",)

    MOST = 4096  # past it, rare (many distinct end users), all are rebuilt as they come

    def __init__(self) -> None:
        self._found: dict[tuple[int, ...], tuple[tuple[Limits, ...], _Shape]] = {}

    def plan(self, limits: Sequence[Limits], tokens: int, cost: float, now: float) -> Plan:
        """What ``reserve`` has to check for these scopes."""
        if tokens < 0 or cost < 0:
            raise ValueError("tokens and cost of a reservation cannot be negative")
        scopes = tuple(limits)  # the same tuple, when it is one
        return self._of(scopes).plan(scopes, tokens, round(cost * NANOS), now)

    def budget_checks(self, limits: Sequence[Limits], now: float) -> tuple[BudgetCheck, ...]:
        """The budget counters of these scopes in the periods containing ``now``."""
        return self._of(tuple(limits)).budget_checks(now)

    def settle_plan(self, reservation: Reservation, tokens: int, cost: float) -> Plan:
        """The settle of a reservation: token buckets get ``reserved - used`` back
        (``need`` is that refund, negative for an overrun), the budgets are those of
        the periods it was admitted in, and its places under max_parallel are given back."""
        if tokens < 0 or cost < 0:
            raise ValueError("tokens and cost of a settle cannot be negative")
        refund = reservation.tokens - tokens
        buckets = tuple([
            BucketCheck(item.scope, item.name, Exceeded.TOKENS, item.tpm, refund)
            for item in reservation.limits
            if item.tpm is not None
        ]) if refund != 0 else ()
        shape = self._of(reservation.limits)
        budgets, counters = shape.settle_checks(reservation.periods)
        # ``to_nanos`` written out, here and in ``plan``: a call fewer each
        return Plan(reservation.limits, tokens, round(cost * NANOS), buckets, budgets,
                    shape.slots if reservation.parallel else (), counters, reservation.periods)

    def reservation_budgets(self, reservation: Reservation) -> tuple[BudgetCheck, ...]:
        """The budget counters ``reservation`` holds: those of the periods it was admitted in."""
        return self._of(reservation.limits).checks_in(reservation.periods)

    def reservation_slots(self, reservation: Reservation) -> tuple[SlotCheck, ...]:
        """The max_parallel places ``reservation`` holds."""
        return self._of(reservation.limits).slots if reservation.parallel else ()

    def _of(self, limits: tuple[Limits, ...]) -> _Shape:
        ids = tuple(map(id, limits))
        found = self._found.get(ids)
        if found is not None:
            return found[1]
        shape = _compute_shape(limits)
        if len(self._found) >= self.MOST:
            self._found.clear()
        self._found[ids] = (limits, shape)
        return shape


def decide(
    checks: Plan, levels: Sequence[float], budgets: Sequence[tuple[int, int]], now: float,
    running: Sequence[int] = (),
) -> Denied | None:
    """The denial that waits longest among the checks that fail, or None if all pass.

    ``levels`` are the buckets' levels now, ``budgets`` each counter's (spent, held),
    ``running`` how many requests each max_parallel has in flight.
    """
    cost = checks.cost_nanos
    short = [
        (bucket, level)
        for bucket, level in zip(checks.buckets, levels, strict=True)
        if bucket.need > level
    ]
    over = [
        (budget, spent, held)
        for budget, (spent, held) in zip(checks.budgets, budgets, strict=True)
        if spent + held + cost > budget.amount_nanos
    ]
    full = [
        (slot, count) for slot, count in zip(checks.slots, running, strict=True)
        if count >= slot.cap
    ] if checks.slots else []
    if not short and not over and not full:
        return None
    rate = rate_status(checks, levels, granted=False)
    denials = [_bucket_denial(bucket, level, rate) for bucket, level in short]
    denials += [_budget_denial(b, spent, held, cost, now, rate) for b, spent, held in over]
    denials += [_parallel_denial(slot, count, rate) for slot, count in full]
    return max(denials, key=lambda d: math.inf if d.retry_after is None else d.retry_after)


def rate_status(checks: Plan, levels: Sequence[float], *, granted: bool) -> RateStatus:
    """The tightest requests and tokens buckets, after this request if it was granted:
    fewest whole units left first; among equals, the one that takes longest to fill."""
    # A loop with each unit's best so far (whole units left, seconds to fill, cap) in a
    # local: a reserve asks on every request, and a dict with a closure over it cost as
    # many calls again as the buckets.
    requests: tuple[int, float, int] | None = None
    tokens: tuple[int, float, int] | None = None
    for bucket, level in zip(checks.buckets, levels, strict=True):
        after = level - bucket.need if granted else level
        cap = bucket.cap
        whole = math.floor(after)
        reset = (cap - after) / (cap / SECONDS_PER_WINDOW)  # ``BucketCheck.rate`` written out
        if bucket.unit is Exceeded.REQUESTS:
            if requests is None or whole < requests[0] or (
                    whole == requests[0] and reset > requests[1]):
                requests = (whole, reset, cap)
        elif tokens is None or whole < tokens[0] or (whole == tokens[0] and reset > tokens[1]):
            tokens = (whole, reset, cap)
    return RateStatus(
        None if requests is None else RateWindow(requests[2], requests[0], requests[1]),
        None if tokens is None else RateWindow(tokens[2], tokens[0], tokens[1]))


_UNIT_LABEL = {Exceeded.REQUESTS: "requests per min (RPM)", Exceeded.TOKENS: "tokens per min (TPM)"}


def _bucket_denial(bucket: BucketCheck, level: float, rate: RateStatus) -> Denied:
    label = _UNIT_LABEL[bucket.unit]
    subject = f"{bucket.scope} '{bucket.name}'"
    if bucket.need > bucket.cap:
        message = (
            f"Request too large for {subject} on {label}: Limit {bucket.cap}, "
            f"Requested {bucket.need}. Reduce the input or max_tokens and try again."
        )
        return Denied(bucket.scope, bucket.name, bucket.unit, message, None, rate)
    wait = (bucket.need - level) / bucket.rate
    used = bucket.cap - math.floor(level)
    message = (
        f"Rate limit reached for {subject} on {label}: Limit {bucket.cap}, Used {used}, "
        f"Requested {bucket.need}. Please try again in {format_duration(wait)}."
    )
    return Denied(bucket.scope, bucket.name, bucket.unit, message, wait, rate)


def _parallel_denial(slot: SlotCheck, running: int, rate: RateStatus) -> Denied:
    message = (
        f"Concurrency limit reached for {slot.scope} '{slot.name}' on requests in flight "
        f"(max_parallel): Limit {slot.cap}, In flight {running}. Try again when one of "
        "them has ended."
    )
    # When one ends is not known (a stream may run for minutes): soon, as for a hold.
    return Denied(slot.scope, slot.name, Exceeded.PARALLEL, message, HELD_RETRY_AFTER, rate)


def _budget_denial(
    budget: BudgetCheck, spent: int, held: int, cost: int, now: float, rate: RateStatus
) -> Denied:
    def money(nanos: int) -> str:
        return f"{nanos / NANOS:.6f}".rstrip("0").rstrip(".")

    wait: float | None
    if cost > budget.amount_nanos:
        wait, when = None, "This request alone costs more than the budget."
    elif spent + cost <= budget.amount_nanos:
        wait, when = HELD_RETRY_AFTER, "Requests in flight hold the rest; try again shortly."
    elif budget.resets_at is None:
        wait, when = None, "The budget does not reset."
    else:
        wait = budget.resets_at - now
        reset = datetime.fromtimestamp(budget.resets_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        when = f"The budget resets at {reset}."
    period = budget.period.value if budget.period is Period.TOTAL else budget.period_key
    message = (
        f"Budget exceeded for {budget.scope} '{budget.name}' ({period}): "
        f"Limit {money(budget.amount_nanos)}, Spent {money(spent)}, Reserved {money(held)}, "
        f"Requested up to {money(cost)}. {when}"
    )
    return Denied(budget.scope, budget.name, Exceeded.BUDGET, message, wait, rate)
