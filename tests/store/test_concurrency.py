"""Many requests at once: budgets and limits hold under concurrency, and one Redis
limit holds across separate gateway processes."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from pathlib import Path

import pytest

from aigw.runtime.store import (
    Budget,
    Limits,
    Period,
    RedisStore,
    Reservation,
    Scope,
    Store,
)

from .conftest import ManualClock, drop_namespace

WORKER = Path(__file__).with_name("tpm_worker.py")


async def test_200_concurrent_reservations_never_overspend_a_budget_for_10(
    store: Store,
) -> None:
    limits = [
        Limits(Scope.KEY, "ci-bot", rpm=10_000),
        Limits(Scope.TEAM, "engineering", budget=Budget(1.0, Period.MONTH)),
    ]
    worst_case = 0.1  # the budget allows 10 requests at their worst-case cost

    results = await asyncio.gather(
        *(store.reserve(f"r{n}", limits, tokens=1_000, cost=worst_case) for n in range(200))
    )

    granted = [result for result in results if isinstance(result, Reservation)]
    assert len(granted) == 10
    (status,) = await store.budgets(limits)
    assert (status.spent, status.held) == (0.0, 1.0)


async def test_reservations_and_settles_racing_stay_within_one_reservation_of_budget(
    store: Store,
) -> None:
    limits = [Limits(Scope.TEAM, "engineering", budget=Budget(1.0, Period.MONTH))]
    worst_case = 0.1
    chance = random.Random(7)
    costs = [round(chance.uniform(0.02, worst_case), 6) for _ in range(200)]

    async def one_request(n: int) -> float:
        decision = await store.reserve(f"r{n}", limits, tokens=100, cost=worst_case)
        if not isinstance(decision, Reservation):
            return 0.0
        await asyncio.sleep(0)  # the upstream call
        await store.settle(decision, tokens=50, cost=costs[n])
        return costs[n]

    charged = await asyncio.gather(*(one_request(n) for n in range(200)))

    (status,) = await store.budgets(limits)
    assert status.held == 0.0
    assert status.spent == pytest.approx(sum(charged))
    assert status.spent <= 1.0 + worst_case


async def test_a_tpm_limit_shared_by_three_clients_holds_as_one(
    embedded_store: Store,
) -> None:
    limits = [Limits(Scope.TEAM, "engineering", tpm=10_000)]

    async def client(name: str) -> int:
        granted = 0
        for attempt in range(60):
            decision = await embedded_store.reserve(
                f"{name}-{attempt}", limits, tokens=100, cost=0.0
            )
            granted += isinstance(decision, Reservation)
            await asyncio.sleep(0)
        return granted

    counts = await asyncio.gather(client("a"), client("b"), client("c"))

    assert sum(counts) == 100  # 10,000 tokens at 100 each; the clock does not move


def test_a_redis_tpm_limit_shared_by_three_processes_holds_as_one(
    redis_url: str, namespace: str, clock: ManualClock
) -> None:
    # 1,000 grants of 10 tokens fit in the limit; the three ask for 1,800 together.
    args = [redis_url, namespace, repr(clock.now()), "600", "10", "10000"]
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline() == "ready\n"
        for worker in workers:  # all three start racing now
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = [worker.communicate(timeout=60)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
        drop_namespace(redis_url, namespace)

    assert [worker.returncode for worker in workers] == [0, 0, 0]
    counts = [int(output) for output in outputs]
    assert sum(counts) == 1_000, counts
    assert sum(1 for count in counts if count) >= 2, counts  # they did share it


async def test_redis_clients_of_one_namespace_share_limits_and_budgets(
    redis_url: str, namespace: str, clock: ManualClock, request: pytest.FixtureRequest
) -> None:
    first = RedisStore.from_url(redis_url, namespace=namespace, clock=clock)
    second = RedisStore.from_url(redis_url, namespace=namespace, clock=clock)
    request.addfinalizer(lambda: drop_namespace(redis_url, namespace))
    limits = [Limits(Scope.TEAM, "engineering", rpm=1, budget=Budget(1.0))]
    try:
        reservation = await first.reserve("r1", limits, tokens=0, cost=0.4)
        assert isinstance(reservation, Reservation)
        assert not isinstance(await second.reserve("r2", limits, tokens=0, cost=0.1), Reservation)

        await second.settle(reservation, tokens=0, cost=0.25)

        (status,) = await first.budgets(limits)
        assert (status.spent, status.held) == (0.25, 0.0)
    finally:
        await first.aclose()
        await second.aclose()
