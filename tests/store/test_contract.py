"""One suite, both stores: limits, budgets, reservations and the ledger behave the same."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from aigw.runtime.errors import BudgetExceeded, RateLimited
from aigw.runtime.store import (
    Budget,
    Denied,
    Dimension,
    Exceeded,
    LedgerRecord,
    Limits,
    Period,
    Reservation,
    Scope,
    Store,
    UsageQuery,
    UsageRow,
    tightest_remaining,
)

from .conftest import ManualClock

DAY = 86_400.0


async def granted(
    store: Store, request_id: str, limits: list[Limits], *, tokens: int = 0, cost: float = 0.0
) -> Reservation:
    decision = await store.reserve(request_id, limits, tokens=tokens, cost=cost)
    assert isinstance(decision, Reservation), decision
    return decision


async def denied(
    store: Store, request_id: str, limits: list[Limits], *, tokens: int = 0, cost: float = 0.0
) -> Denied:
    decision = await store.reserve(request_id, limits, tokens=tokens, cost=cost)
    assert isinstance(decision, Denied), decision
    return decision


async def test_requests_per_minute_denies_the_next_request_and_says_when(
    store: Store, clock: ManualClock
) -> None:
    limits = [Limits(Scope.KEY, "ci-bot", rpm=2)]
    await granted(store, "r1", limits)
    await granted(store, "r2", limits)

    refused = await denied(store, "r3", limits)

    assert (refused.scope, refused.name, refused.exceeded) == (
        Scope.KEY,
        "ci-bot",
        Exceeded.REQUESTS,
    )
    assert refused.message == (
        "Rate limit reached for key 'ci-bot' on requests per min (RPM): Limit 2, Used 2, "
        "Requested 1. Please try again in 30s."
    )
    assert refused.retry_after == pytest.approx(30.0)
    assert refused.headers() == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
        "retry-after": "30",
        "retry-after-ms": "30000",
    }
    clock.advance(30.0)
    await granted(store, "r3", limits)


async def test_a_grant_reports_the_tightest_limits_as_openai_headers(store: Store) -> None:
    limits = [
        Limits(Scope.KEY, "ci-bot", rpm=100, tpm=10_000),
        Limits(Scope.TEAM, "engineering", rpm=10, tpm=50_000),
    ]
    reservation = await granted(store, "r1", limits, tokens=4_000)

    assert reservation.headers() == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "6s",
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": "6000",
        "x-ratelimit-reset-tokens": "24s",
    }


async def test_rates_read_the_buckets_as_they_are_now_and_take_nothing(
    store: Store, clock: ManualClock
) -> None:
    """What a grant's headers would tell, less nothing: the same tightest windows,
    refilled to now, and a second read reads the same (no request counted)."""
    limits = [
        Limits(Scope.KEY, "ci-bot", rpm=100, tpm=10_000),
        Limits(Scope.TEAM, "engineering", rpm=10, tpm=50_000),
    ]
    reservation = await granted(store, "r1", limits, tokens=4_000)
    await store.settle(reservation, tokens=3_000, cost=0.0)
    clock.advance(6.0)  # a request refilled in the team's rpm, 1,000 tokens in the key's

    for _read in range(2):
        assert (await store.rates(limits)).headers() == {
            "x-ratelimit-limit-requests": "10",
            "x-ratelimit-remaining-requests": "10",
            "x-ratelimit-reset-requests": "0s",
            "x-ratelimit-limit-tokens": "10000",
            "x-ratelimit-remaining-tokens": "8000",
            "x-ratelimit-reset-tokens": "12s",
        }
    assert (await store.rates([Limits(Scope.KEY, "none", max_parallel=2)])).headers() == {}


async def test_settle_gives_back_the_tokens_reserved_but_not_used(store: Store) -> None:
    limits = [Limits(Scope.TEAM, "engineering", tpm=1_000)]
    first = await granted(store, "r1", limits, tokens=800)
    await denied(store, "r2", limits, tokens=700)

    await store.settle(first, tokens=300, cost=0.0)

    second = await granted(store, "r2", limits, tokens=700)
    assert second.rate.tokens is not None
    assert second.rate.tokens.remaining == 0


async def test_using_more_than_reserved_leaves_the_bucket_in_debt(
    store: Store, clock: ManualClock
) -> None:
    limits = [Limits(Scope.TEAM, "engineering", tpm=600)]
    reservation = await granted(store, "r1", limits, tokens=600)
    await store.settle(reservation, tokens=720, cost=0.0)

    refused = await denied(store, "r2", limits, tokens=0)

    assert refused.exceeded is Exceeded.TOKENS
    assert refused.retry_after == pytest.approx(12.0)  # 120 tokens of debt at 10 a second
    clock.advance(12.0)
    await granted(store, "r2", limits, tokens=0)


async def test_a_request_larger_than_the_limit_is_told_waiting_will_not_help(
    store: Store,
) -> None:
    refused = await denied(
        store, "r1", [Limits(Scope.DEPLOYMENT, "gpt-4o", tpm=1_000)], tokens=1_500
    )

    assert refused.retry_after is None
    assert "retry-after" not in refused.headers()
    assert refused.message == (
        "Request too large for deployment 'gpt-4o' on tokens per min (TPM): Limit 1000, "
        "Requested 1500. Reduce the input or max_tokens and try again."
    )


async def test_a_reservation_takes_every_scope_or_none(store: Store) -> None:
    team = Limits(Scope.TEAM, "engineering", tpm=1_000)
    await granted(store, "other-key", [Limits(Scope.KEY, "other", rpm=5), team], tokens=900)
    key = Limits(Scope.KEY, "ci-bot", rpm=1)

    refused = await denied(store, "r1", [key, team], tokens=200)

    assert (refused.scope, refused.exceeded) == (Scope.TEAM, Exceeded.TOKENS)
    # The key's one request a minute was not taken by the refused reservation.
    await granted(store, "r2", [key], tokens=200)


async def test_the_longest_wait_among_failing_checks_is_reported(store: Store) -> None:
    key = Limits(Scope.KEY, "ci-bot", rpm=60)  # one request back every second
    team = Limits(Scope.TEAM, "engineering", rpm=6)  # one request back every 10 seconds
    for n in range(60):
        await granted(store, f"key-{n}", [key])
    for n in range(6):
        await granted(store, f"team-{n}", [team])

    refused = await denied(store, "r1", [key, team])

    assert (refused.scope, refused.retry_after) == (Scope.TEAM, pytest.approx(10.0))


async def test_a_budget_holds_the_worst_case_then_charges_the_real_cost(store: Store) -> None:
    limits = [Limits(Scope.TEAM, "engineering", budget=Budget(1.0, Period.DAY))]
    reservation = await granted(store, "r1", limits, cost=0.4)

    (held,) = await store.budgets(limits)
    assert (held.period_key, held.spent, held.held) == ("2026-01-01", 0.0, 0.4)
    assert held.remaining == pytest.approx(0.6)

    await store.settle(reservation, tokens=10, cost=0.1)

    (charged,) = await store.budgets(limits)
    assert (charged.spent, charged.held, charged.remaining) == (0.1, 0.0, 0.9)
    assert tightest_remaining((held, charged)) == pytest.approx(0.6)


async def test_settling_twice_charges_once(store: Store) -> None:
    limits = [Limits(Scope.KEY, "ci-bot", tpm=100, budget=Budget(1.0))]
    reservation = await granted(store, "r1", limits, tokens=100, cost=0.3)

    await store.settle(reservation, tokens=50, cost=0.2)
    await store.settle(reservation, tokens=50, cost=0.2)
    await store.release(reservation)

    (status,) = await store.budgets(limits)
    assert (status.spent, status.held) == (0.2, 0.0)
    await granted(store, "r2", limits, tokens=50)
    await denied(store, "r3", limits, tokens=1)


async def test_release_gives_everything_back(store: Store) -> None:
    limits = [Limits(Scope.USER, "alice", tpm=100, budget=Budget(0.5))]
    reservation = await granted(store, "r1", limits, tokens=100, cost=0.5)
    await denied(store, "r2", limits, tokens=1, cost=0.1)

    await store.release(reservation)

    (status,) = await store.budgets(limits)
    assert (status.spent, status.held) == (0.0, 0.0)
    await granted(store, "r2", limits, tokens=100, cost=0.5)


async def test_an_exhausted_budget_is_a_429_until_the_period_resets(
    store: Store, clock: ManualClock
) -> None:
    limits = [Limits(Scope.TEAM, "engineering", budget=Budget(1.0, Period.DAY))]
    clock.advance(DAY - 3_600)  # 2026-01-01T23:00:00Z
    reservation = await granted(store, "r1", limits, cost=1.0)
    await store.settle(reservation, tokens=0, cost=0.95)

    refused = await denied(store, "r2", limits, cost=0.1)

    assert refused.exceeded is Exceeded.BUDGET
    assert refused.retry_after == pytest.approx(3_600.0)
    assert refused.message == (
        "Budget exceeded for team 'engineering' (2026-01-01): Limit 1, Spent 0.95, "
        "Reserved 0, Requested up to 0.1. The budget resets at 2026-01-02T00:00:00Z."
    )
    error = refused.error()
    assert isinstance(error, BudgetExceeded)
    assert (error.status, error.code, error.headers["retry-after"]) == (
        429,
        "insufficient_quota",
        "3600",
    )

    clock.advance(3_600)
    (fresh,) = await store.budgets(limits)
    assert (fresh.period_key, fresh.spent) == ("2026-01-02", 0.0)
    await granted(store, "r2", limits, cost=0.1)


async def test_spend_is_charged_to_the_period_the_request_was_admitted_in(
    store: Store, clock: ManualClock
) -> None:
    limits = [Limits(Scope.KEY, "ci-bot", budget=Budget(1.0, Period.DAY))]
    clock.advance(DAY - 1)
    reservation = await granted(store, "r1", limits, cost=0.5)
    clock.advance(2)  # the stream ends after midnight

    await store.settle(reservation, tokens=0, cost=0.4)

    (today,) = await store.budgets(limits)
    assert (today.period_key, today.spent, today.held) == ("2026-01-02", 0.0, 0.0)
    clock.advance(-2)
    (yesterday,) = await store.budgets(limits)
    assert (yesterday.period_key, yesterday.spent) == ("2026-01-01", 0.4)


async def test_a_reservation_says_what_its_tightest_budget_had_left_before_it(
    store: Store,
) -> None:
    """What a route policy reading ``context.budget_remaining`` sees, read atomically
    with the hold: spent and the others' holds counted, this request's hold not."""
    key_budget = Limits(Scope.KEY, "ci-bot", budget=Budget(2.0, Period.MONTH))
    team_budget = Limits(Scope.TEAM, "engineering", budget=Budget(1.0, Period.MONTH))
    first = await granted(store, "r1", [key_budget, team_budget], cost=0.3)
    assert first.budget_remaining == pytest.approx(1.0)
    second = await granted(store, "r2", [key_budget, team_budget], cost=0.2)
    assert second.budget_remaining == pytest.approx(0.7)  # r1 holds 0.3 of the team's
    await store.settle(first, tokens=0, cost=0.25)
    third = await granted(store, "r3", [key_budget], cost=0.1)
    assert third.budget_remaining == pytest.approx(2.0 - 0.25 - 0.2)
    unbudgeted = await granted(store, "r4", [Limits(Scope.KEY, "ci-bot", rpm=10)])
    assert unbudgeted.budget_remaining is None


async def test_held_budget_asks_to_retry_shortly(store: Store) -> None:
    limits = [Limits(Scope.TEAM, "engineering", budget=Budget(1.0, Period.MONTH))]
    await granted(store, "r1", limits, cost=0.8)

    refused = await denied(store, "r2", limits, cost=0.3)

    assert refused.retry_after == 1.0
    assert refused.message.endswith("Requests in flight hold the rest; try again shortly.")


async def test_a_spent_total_budget_never_resets(store: Store) -> None:
    limits = [Limits(Scope.USER, "alice", budget=Budget(0.1, Period.TOTAL))]
    reservation = await granted(store, "r1", limits, cost=0.1)
    await store.settle(reservation, tokens=0, cost=0.1)

    refused = await denied(store, "r2", limits, cost=0.01)

    assert refused.retry_after is None
    assert isinstance(refused.error(), RateLimited)
    assert refused.message.endswith("The budget does not reset.")


async def test_reservations_expire_and_a_late_settle_still_charges_once(
    store: Store, clock: ManualClock
) -> None:
    limits = [Limits(Scope.TEAM, "engineering", budget=Budget(1.0))]
    crashed = await store.reserve("r1", limits, tokens=0, cost=0.6, ttl=30.0)
    assert isinstance(crashed, Reservation)
    await denied(store, "r2", limits, cost=0.6)

    clock.advance(31.0)
    (status,) = await store.budgets(limits)
    assert status.held == 0.0
    await granted(store, "r2", limits, cost=0.6)

    await store.settle(crashed, tokens=0, cost=0.3)
    await store.settle(crashed, tokens=0, cost=0.3)
    (status,) = await store.budgets(limits)
    assert (status.spent, status.held) == (0.3, 0.6)


async def test_a_renewed_hold_outlives_its_first_ttl_and_settles_once(
    store: Store, clock: ManualClock
) -> None:
    """A hold counted from its reservation: a call longer than the TTL lost it midway,
    and other requests spent the budget it was to be charged to."""
    limits = [Limits(Scope.TEAM, "engineering", budget=Budget(1.0))]
    running = await store.reserve("r1", limits, tokens=0, cost=0.6, ttl=30.0)
    assert isinstance(running, Reservation)
    for _ in range(3):  # 60 s in all, renewed every 20 s
        clock.advance(20.0)
        await store.renew(running, ttl=30.0)
    (status,) = await store.budgets(limits)
    assert status.held == 0.6
    await denied(store, "r2", limits, cost=0.6)
    await store.settle(running, tokens=0, cost=0.5)
    await store.renew(running, ttl=30.0)  # settled: nothing to renew
    (status,) = await store.budgets(limits)
    assert (status.spent, status.held) == (0.5, 0.0)
    clock.advance(31.0)
    lapsed = await store.reserve("r3", limits, tokens=0, cost=0.1, ttl=30.0)
    assert isinstance(lapsed, Reservation)
    clock.advance(31.0)
    await store.renew(lapsed, ttl=30.0)  # too late: a lapsed hold stays lapsed
    (status,) = await store.budgets(limits)
    assert (status.spent, status.held) == (0.5, 0.0)


async def test_a_free_request_on_a_budget_is_held_and_released_like_any_other(
    store: Store, clock: ManualClock
) -> None:
    """Prices default to 0, so a budgeted team's requests to a free deployment hold 0.
    On Redis, releasing such a hold sent HINCRBY held -0, which Redis refuses: the
    settle failed (the replica then refused every request for a while), and once the
    hold expired every reserve and budget read on that budget failed, from every
    replica, until the counter itself expired, 35 days after its period."""
    limits = [Limits(Scope.TEAM, "free", budget=Budget(10.0, Period.MONTH))]
    settled = await granted(store, "free-1", limits, cost=0.0)
    await store.settle(settled, tokens=50, cost=0.0)
    unsettled = await store.reserve("free-2", limits, tokens=0, cost=0.0, ttl=30.0)
    assert isinstance(unsettled, Reservation)  # and never settled
    clock.advance(31.0)  # its hold expires, and is released by the next call
    paid = await granted(store, "paid-1", limits, cost=1.0)
    (status,) = await store.budgets(limits)
    assert (status.spent, status.held) == (0.0, 1.0)
    await store.settle(paid, tokens=5, cost=0.5)
    (status,) = await store.budgets(limits)
    assert (status.spent, status.held) == (0.5, 0.0)


async def test_max_parallel_refuses_past_the_requests_in_flight_until_one_ends(
    store: Store,
) -> None:
    limits = [Limits(Scope.KEY, "ci-bot", rpm=100, max_parallel=2)]
    first = await granted(store, "r1", limits)
    second = await granted(store, "r2", limits)

    refused = await denied(store, "r3", limits)

    assert (refused.scope, refused.name, refused.exceeded) == (
        Scope.KEY, "ci-bot", Exceeded.PARALLEL)
    assert refused.message == (
        "Concurrency limit reached for key 'ci-bot' on requests in flight (max_parallel): "
        "Limit 2, In flight 2. Try again when one of them has ended."
    )
    assert refused.retry_after == 1.0
    assert isinstance(refused.error(), RateLimited)
    assert refused.headers()["retry-after"] == "1"
    await store.settle(first, tokens=0, cost=0.0)
    third = await granted(store, "r3", limits)  # a refusal took no place
    await denied(store, "r4", limits)
    await store.release(second)
    await store.release(second)  # once: the place is not given back twice
    await granted(store, "r4", limits)
    await denied(store, "r5", limits)
    await store.settle(third, tokens=0, cost=0.0)
    await granted(store, "r5", limits)


async def test_a_team_max_parallel_counts_every_key_of_it(store: Store) -> None:
    team = Limits(Scope.TEAM, "eng", max_parallel=3)
    a, b = Limits(Scope.KEY, "a", max_parallel=2), Limits(Scope.KEY, "b", max_parallel=2)
    await granted(store, "a1", [a, team])
    await granted(store, "a2", [a, team])
    assert (await denied(store, "a3", [a, team])).scope is Scope.KEY
    b1 = await granted(store, "b1", [b, team])
    refused = await denied(store, "b2", [b, team])
    assert (refused.scope, refused.name) == (Scope.TEAM, "eng")
    await store.settle(b1, tokens=0, cost=0.0)
    await granted(store, "b2", [b, team])


async def test_a_place_lapses_with_its_hold_unless_renewed(
    store: Store, clock: ManualClock
) -> None:
    """A gateway that crashed mid-request never settles it: its place is free again
    after the reservation's TTL, as its budget hold is; one still running renews it."""
    limits = [Limits(Scope.KEY, "ci-bot", max_parallel=1)]
    crashed = await store.reserve("r1", limits, tokens=0, cost=0.0, ttl=30.0)
    assert isinstance(crashed, Reservation)
    await denied(store, "r2", limits)
    clock.advance(31.0)
    running = await store.reserve("r2", limits, tokens=0, cost=0.0, ttl=30.0)
    assert isinstance(running, Reservation)
    await store.settle(crashed, tokens=0, cost=0.0)  # late: frees nobody else's place
    for _ in range(3):  # 60 s in all, renewed every 20 s
        clock.advance(20.0)
        await store.renew(running, ttl=30.0)
    await denied(store, "r3", limits)
    await store.settle(running, tokens=0, cost=0.0)
    await granted(store, "r3", limits)


async def test_one_request_id_cannot_hold_two_reservations(store: Store) -> None:
    limits = [Limits(Scope.KEY, "ci-bot", rpm=10)]
    reservation = await granted(store, "r1", limits)

    with pytest.raises(ValueError, match="already holds a reservation"):
        await store.reserve("r1", limits, tokens=0, cost=0.0)
    await store.settle(reservation, tokens=0, cost=0.0)
    await granted(store, "r1", limits)


async def test_names_are_kept_apart_whatever_they_contain(store: Store) -> None:
    await granted(store, "r1", [Limits(Scope.USER, "a:b", rpm=1)])
    await granted(store, "r2", [Limits(Scope.USER, "a", rpm=1)])
    await granted(store, "r3", [Limits(Scope.TEAM, "a:b", rpm=1)])
    await denied(store, "r4", [Limits(Scope.USER, "a:b", rpm=1)])


async def test_no_limits_no_budgets(store: Store) -> None:
    reservation = await granted(store, "r1", [], tokens=10**9, cost=10**6)
    assert reservation.headers() == {}
    assert await store.budgets([Limits(Scope.KEY, "ci-bot", rpm=1)]) == ()
    await store.settle(reservation, tokens=1, cost=1.0)


RECORD = LedgerRecord(
    request_id="req",
    at=1_767_225_600.0,
    key="ci-bot",
    team="engineering",
    user=None,
    route="fast",
    deployment="gpt-4o-mini",
    tokens_in=100,
    tokens_out=20,
    cost=0.000027,
    latency_ms=412.5,
    status=200,
    fingerprint="f" * 64,
)


def ledger_record(request_id: str, **fields: Any) -> LedgerRecord:
    return replace(RECORD, request_id=request_id, **fields)


async def test_the_same_request_id_is_recorded_once(store: Store) -> None:
    await store.record(ledger_record("req-1"))
    await store.record(ledger_record("req-1", tokens_out=999, status=500))

    assert await store.summary(UsageQuery(group_by=())) == (
        UsageRow(requests=1, tokens_in=100, tokens_out=20, cost=0.000027),
    )


async def test_cached_prompt_tokens_are_summed(store: Store) -> None:
    await store.record(ledger_record("a", tokens_cached=60))
    await store.record(ledger_record("b", tokens_cached=40))
    await store.record(ledger_record("c"))

    assert await store.summary(UsageQuery(group_by=())) == (
        UsageRow(requests=3, tokens_in=300, tokens_out=60, tokens_cached=100, cost=0.000081),
    )


async def test_a_call_cut_short_adds_its_cost_but_is_no_request(store: Store) -> None:
    """A call a request made and did not use (cut by its timeout, a hedge's loser) has an
    estimated record of its own: its tokens and cost count, and the summary says how
    much of the cost is such estimates; it is no request, nor an error."""
    await store.record(ledger_record("req"))
    await store.record(ledger_record("req:slow:1", deployment="slow", tokens_out=0,
                                     cost=0.0001, latency_ms=0.0, status=499, estimated=True))

    assert await store.summary(UsageQuery(group_by=())) == (
        UsageRow(requests=1, tokens_in=200, tokens_out=20, cost=0.000127,
                 estimated_cost=0.0001),
    )
    assert await store.summary(UsageQuery(group_by=(Dimension.DEPLOYMENT,))) == (
        UsageRow(deployment="gpt-4o-mini", requests=1, tokens_in=100, tokens_out=20,
                 cost=0.000027),
        UsageRow(deployment="slow", tokens_in=100, cost=0.0001, estimated_cost=0.0001),
    )


async def test_usage_is_summed_by_team_key_model_and_day_with_filters(store: Store) -> None:
    day2 = 1_767_225_600.0 + DAY
    for record in (
        ledger_record("a"),
        ledger_record("b", deployment="echo-small", cost=0.0),
        ledger_record(
            "c",
            key="ops",
            team=None,
            route="echo",
            deployment=None,
            status=404,
            tokens_in=0,
            tokens_out=0,
            cost=0.0,
        ),
        ledger_record("d", at=day2, tokens_in=50, cost=0.5),
        ledger_record("e", at=day2 + 10, key="other", team="research", cost=0.25, status=502),
    ):
        await store.record(record)

    by_team = await store.summary(UsageQuery(group_by=(Dimension.TEAM,)))
    assert by_team == (
        UsageRow(team=None, requests=1, errors=1),
        UsageRow(team="engineering", requests=3, tokens_in=250, tokens_out=60, cost=0.500027),
        UsageRow(team="research", requests=1, errors=1, tokens_in=100, tokens_out=20, cost=0.25),
    )

    by_day_and_model = await store.summary(
        UsageQuery(
            group_by=(Dimension.DAY, Dimension.ROUTE, Dimension.DEPLOYMENT),
            team="engineering",
        )
    )
    assert by_day_and_model == (
        UsageRow(
            day="2026-01-01",
            route="fast",
            deployment="echo-small",
            requests=1,
            tokens_in=100,
            tokens_out=20,
        ),
        UsageRow(
            day="2026-01-01",
            route="fast",
            deployment="gpt-4o-mini",
            requests=1,
            tokens_in=100,
            tokens_out=20,
            cost=0.000027,
        ),
        UsageRow(
            day="2026-01-02",
            route="fast",
            deployment="gpt-4o-mini",
            requests=1,
            tokens_in=50,
            tokens_out=20,
            cost=0.5,
        ),
    )

    second_day_by_key = await store.summary(
        UsageQuery(group_by=(Dimension.KEY,), since=day2, until=day2 + 10)
    )
    assert second_day_by_key == (
        UsageRow(key="ci-bot", requests=1, tokens_in=50, tokens_out=20, cost=0.5),
    )
    assert await store.summary(UsageQuery(group_by=(Dimension.USER,), key="ops")) == (
        UsageRow(requests=1, errors=1),
    )


async def test_a_summary_counts_every_record_of_a_large_ledger(store: Store) -> None:
    # More records than one page of the Redis walk, many sharing one timestamp.
    records = [
        ledger_record(f"req-{n}", at=RECORD.at + (0 if n % 2 else n), tokens_in=1, tokens_out=0)
        for n in range(1_200)
    ]
    await asyncio.gather(*(store.record(record) for record in records))

    assert await store.summary(UsageQuery(group_by=())) == (
        UsageRow(requests=1_200, tokens_in=1_200, cost=1_200 * 0.000027),
    )
