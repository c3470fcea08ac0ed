"""The values that cross the store seam: limits in, reservations, denials and records out.

Money is held as integer nanos (1e-9 of the currency unit) inside the stores, so a
reservation and its release cancel exactly; these values show it as floats.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from ..errors import NO_RETRY, BudgetExceeded, RateLimited, retry_after_headers

NANOS = 1_000_000_000
# Redis' Lua numbers are doubles: integers are exact up to 2**53, so no counter may pass it.
MAX_NANOS = 2**53 - 1


def to_nanos(amount: float) -> int:
    """Currency to integer nanos: ``to_nanos(0.15) == 150_000_000``."""
    return round(amount * NANOS)


class Scope(StrEnum):
    """Who a limit or budget belongs to."""

    KEY = "key"
    TEAM = "team"
    USER = "user"
    DEPLOYMENT = "deployment"


class Period(StrEnum):
    """How long a budget lasts; day and month are calendar periods in UTC."""

    DAY = "day"
    MONTH = "month"
    TOTAL = "total"


class Exceeded(StrEnum):
    """What a denied reservation ran out of."""

    REQUESTS = "requests"
    TOKENS = "tokens"
    BUDGET = "budget"
    PARALLEL = "parallel"  # requests in flight at once (max_parallel)


@dataclass(frozen=True, slots=True)
class Budget:
    amount: float
    period: Period = Period.MONTH

    def __post_init__(self) -> None:
        if not math.isfinite(self.amount) or not 0 <= to_nanos(self.amount) <= MAX_NANOS:
            raise ValueError(f"budget amount must be 0..{MAX_NANOS // NANOS}, not {self.amount}")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one subject may use; ``None`` is unlimited.

    The request path builds one per applicable scope from the graph, e.g.
    ``Limits(Scope.TEAM, "engineering", rpm=600, tpm=200_000, budget=Budget(500))``.
    ``max_parallel`` caps the reservations held at once (requests in flight).
    """

    scope: Scope
    name: str
    rpm: int | None = None
    tpm: int | None = None
    budget: Budget | None = None
    max_parallel: int | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError(f"a {self.scope} limit needs a name")
        for label, value in (("rpm", self.rpm), ("tpm", self.tpm),
                             ("max_parallel", self.max_parallel)):
            if value is not None and value <= 0:
                raise ValueError(f"{self.scope} '{self.name}': {label} must be positive")

    @property
    def subject(self) -> str:
        return f"{self.scope} '{self.name}'"


@dataclass(frozen=True, slots=True)
class RateWindow:
    """One rate limit as OpenAI reports it: the limit, what is left, seconds until full."""

    limit: int
    remaining: int
    reset: float


@dataclass(frozen=True, slots=True)
class RateStatus:
    """The tightest requests and tokens limits among a request's scopes (None: unlimited)."""

    requests: RateWindow | None = None
    tokens: RateWindow | None = None

    def headers(self) -> dict[str, str]:
        """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``, as OpenAI sends them."""
        out: dict[str, str] = {}
        for name, window in (("requests", self.requests), ("tokens", self.tokens)):
            if window is not None:
                out[f"x-ratelimit-limit-{name}"] = str(window.limit)
                out[f"x-ratelimit-remaining-{name}"] = str(max(0, window.remaining))
                out[f"x-ratelimit-reset-{name}"] = format_duration(window.reset)
        return out


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI's reset headers write it (Go's style).

    >>> [format_duration(s) for s in (0.02, 1, 17.28, 360, 3725)]
    ['20ms', '1s', '17.28s', '6m0s', '1h2m5s']
    """
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    whole_minutes, rest = divmod(round(seconds, 3), 60)
    hours, minutes = divmod(int(whole_minutes), 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


@dataclass(frozen=True, slots=True)
class Reservation:
    """What ``reserve`` granted; hand it back to ``settle`` or ``release`` exactly once.

    ``periods`` names the budget period each budgeted limit was charged to (spend is
    settled into the period the request was admitted in). ``origin`` is the store that
    holds it: "embedded", "redis", or "local" (Redis was down and fail_open applied).
    ``parallel``: it holds a place under a ``max_parallel`` until it is settled (or its
    TTL lapses), as it holds its budgets.
    """

    request_id: str
    limits: tuple[Limits, ...]
    tokens: int
    cost_nanos: int
    periods: tuple[str, ...]
    expires_at: float
    rate: RateStatus
    origin: str
    # The least any of its budgets had left before this hold (None: no budget applies):
    # what a policy reading ``context.budget_remaining`` sees, read with the hold.
    budget_remaining: float | None = None
    parallel: bool = False

    @property
    def cost(self) -> float:
        return self.cost_nanos / NANOS

    def headers(self) -> dict[str, str]:
        return self.rate.headers()


@dataclass(frozen=True, slots=True)
class Denied:
    """A reservation refused: which scope ran out of what, and when to try again.

    ``retry_after`` is None when waiting cannot help (the request alone is larger than
    the limit, or a total budget is spent): the answer then tells the SDKs, which retry
    a 429, not to (``x-should-retry: false``). ``error()`` is what the handler raises.
    """

    scope: Scope
    name: str
    exceeded: Exceeded
    message: str
    retry_after: float | None
    rate: RateStatus

    def headers(self) -> dict[str, str]:
        headers = self.rate.headers()
        if self.retry_after is not None:
            headers.update(retry_after_headers(self.retry_after))
        else:  # the SDKs would retry a 429 twice, for nothing
            headers.update(NO_RETRY)
        return headers

    def error(self) -> RateLimited:
        kind = BudgetExceeded if self.exceeded is Exceeded.BUDGET else RateLimited
        return kind(self.message, headers=self.headers())


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One budget now: what the period allows, what was spent, what is reserved."""

    scope: Scope
    name: str
    period: Period
    period_key: str
    amount: float
    spent: float
    held: float
    resets_at: float | None

    @property
    def remaining(self) -> float:
        return max(0.0, self.amount - self.spent - self.held)


def least_left(budgets: Iterable[tuple[int, int, int]]) -> float | None:
    """The least that any of ``budgets`` (amount, spent, held in nanos) has left, or
    None when there are none: ``tightest_remaining`` from the stores' raw figures."""
    left = min([amount - spent - held for amount, spent, held in budgets], default=None)
    return None if left is None else max(0, left) / NANOS


def tightest_remaining(statuses: tuple[BudgetStatus, ...]) -> float | None:
    """The least any budget has left (for policy context); None when no budget applies."""
    return min((status.remaining for status in statuses), default=None)


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One request, served or failed; recording the same ``request_id`` twice keeps one.

    ``estimated``: not a request but a call one made and did not use (cut by its timeout
    or the request's deadline, a hedge's loser, the client gone), billed what it likely
    cost the provider, which reported no usage for it: the prompt tokens aigw counted and
    any output received, at the deployment's prices. Its ``request_id`` is the request's
    with ``:<deployment>:<n>`` after it; summaries add its tokens and cost (and say how
    much of the cost is such estimates) but do not count it as a request.
    """

    request_id: str
    at: float
    key: str | None
    team: str | None
    user: str | None
    route: str | None
    deployment: str | None
    tokens_in: int
    tokens_out: int
    cost: float
    latency_ms: float
    status: int
    fingerprint: str
    tokens_cached: int = 0  # of tokens_in: read from the provider's prompt cache
    tokens_audio_in: int = 0  # of tokens_in: audio (billed at the audio input price)
    tokens_audio_out: int = 0  # of tokens_out: audio (spoken answers)
    estimated: bool = False
    batch: str | None = None  # the batch (/v1/batches) the request was a line of


class Dimension(StrEnum):
    """What a usage summary can be grouped by."""

    DAY = "day"
    TEAM = "team"
    KEY = "key"
    USER = "user"
    ROUTE = "route"
    DEPLOYMENT = "deployment"


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Usage grouped by ``group_by``, over ``since <= at < until``, for one team or key."""

    group_by: tuple[Dimension, ...] = (Dimension.TEAM,)
    since: float | None = None
    until: float | None = None
    team: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Totals for one group; the dimensions not grouped by are None (as is a missing team)."""

    day: str | None = None
    team: str | None = None
    key: str | None = None
    user: str | None = None
    route: str | None = None
    deployment: str | None = None
    requests: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cached: int = 0  # of tokens_in
    tokens_audio_in: int = 0  # of tokens_in
    tokens_audio_out: int = 0  # of tokens_out
    cost: float = 0.0
    estimated_cost: float = 0.0  # of cost: calls cut short, estimated (LedgerRecord.estimated)


class Clock(Protocol):
    """The store's one time source: seconds since the epoch (a seam for tests)."""

    def now(self) -> float: ...


@dataclass(frozen=True, slots=True)
class SystemClock:
    def now(self) -> float:
        return time.time()
