"""The store's values: durations and headers as OpenAI writes them, periods, checks."""

from __future__ import annotations

import pytest

from aigw.runtime.errors import RateLimited
from aigw.runtime.store import (
    Budget,
    Denied,
    Exceeded,
    Limits,
    Period,
    RateStatus,
    RateWindow,
    Scope,
    format_duration,
    period_end,
    period_key,
)
from aigw.runtime.store.checks import Shapes

NEW_YEAR = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.0004, "1ms"),
        (0.02, "20ms"),
        (1.0, "1s"),
        (17.28, "17.28s"),
        (59.9999, "1m0s"),
        (360.0, "6m0s"),
        (61.5, "1m1.5s"),
        (3725.0, "1h2m5s"),
    ],
)
def test_durations_are_written_like_openai_reset_headers(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_rate_headers_leave_out_what_is_unlimited() -> None:
    status = RateStatus(tokens=RateWindow(limit=1_000, remaining=-5, reset=0.5))

    assert status.headers() == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "500ms",
    }


def test_a_denial_becomes_a_429_with_retry_after_rounded_up() -> None:
    denied = Denied(Scope.KEY, "ci-bot", Exceeded.TOKENS, "slow down", 0.2, RateStatus())

    error = denied.error()

    assert type(error) is RateLimited
    assert (error.status, error.code, error.message) == (429, "rate_limit_exceeded", "slow down")
    assert error.headers == {"retry-after": "1", "retry-after-ms": "200"}


@pytest.mark.parametrize(
    ("period", "at", "key", "end"),
    [
        (Period.DAY, NEW_YEAR - 1, "2025-12-31", NEW_YEAR),
        (Period.DAY, NEW_YEAR, "2026-01-01", NEW_YEAR + 86_400),
        (Period.MONTH, NEW_YEAR - 1, "2025-12", NEW_YEAR),
        (Period.MONTH, NEW_YEAR + 40 * 86_400, "2026-02", NEW_YEAR + 59 * 86_400),
        (Period.TOTAL, NEW_YEAR, "total", None),
    ],
)
def test_budget_periods_are_utc_calendar_periods(
    period: Period, at: float, key: str, end: float | None
) -> None:
    assert period_key(period, at) == key
    assert period_end(period, at) == end


def test_limits_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match="key 'ci-bot': rpm must be positive"):
        Limits(Scope.KEY, "ci-bot", rpm=0)
    with pytest.raises(ValueError, match="a team limit needs a name"):
        Limits(Scope.TEAM, "")
    with pytest.raises(ValueError, match=r"budget amount must be 0\.\.9007199"):
        Budget(-1.0)
    with pytest.raises(ValueError, match="budget amount"):
        Budget(float("inf"))


def test_a_stores_shapes_are_its_own_and_follow_the_limits_objects() -> None:
    """A store keeps what each set of limits checks (by the Limits objects, as the request
    path reuses them) in a ``Shapes`` of its own: equal limits built anew, as a reload
    builds them, are checked the same; a period that ends gives new budget checks; past
    ``MOST`` sets it starts over rather than grow."""
    shapes = Shapes()
    team = Limits(Scope.TEAM, "eng", rpm=5, budget=Budget(10.0, Period.DAY))
    first = shapes.plan((team,), tokens=3, cost=0.5, now=NEW_YEAR)
    assert shapes.plan((team,), tokens=3, cost=0.5, now=NEW_YEAR).budgets is first.budgets
    again = Limits(Scope.TEAM, "eng", rpm=5, budget=Budget(10.0, Period.DAY))
    assert shapes.plan((again,), tokens=3, cost=0.5, now=NEW_YEAR) == first
    assert Shapes().plan((team,), tokens=3, cost=0.5, now=NEW_YEAR) == first
    tomorrow = shapes.budget_checks((team,), NEW_YEAR + 86_400)
    assert [check.period_key for check in tomorrow] == ["2026-01-02"]
    for number in range(Shapes.MOST + 1):
        shapes.budget_checks((Limits(Scope.USER, f"eng/u{number}", rpm=1),), NEW_YEAR)
    assert [check.period_key for check in shapes.budget_checks((team,), NEW_YEAR)] == [
        "2026-01-01"]
