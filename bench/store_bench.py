"""Added latency of the limits-and-budget checks: one reserve + settle round trip, and
one durable ledger write, on each store.

Run: python bench/store_bench.py [--iterations N] [--redis-url URL] [--stores embedded,redis]
Prints median and p99 per store and operation, in microseconds, as a Markdown table.

Each reservation checks what a real request would: the key (rpm, tpm), its team
(rpm, tpm, monthly budget) and the deployment (tpm), all at once. The Redis store
talks to a real server (default redis://127.0.0.1:6379/15, the tests' database)
under a namespace of its own, deleted afterwards. The event loop is uvloop when
installed, as ``aigw serve`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import redis.asyncio as aioredis

from aigw.runtime.store import (
    Budget,
    EmbeddedStore,
    LedgerRecord,
    Limits,
    Period,
    RedisStore,
    Reservation,
    Scope,
    Store,
)

LIMITS = [
    Limits(Scope.KEY, "ci-bot", rpm=100_000_000, tpm=10**12),
    Limits(
        Scope.TEAM, "engineering", rpm=100_000_000, tpm=10**12, budget=Budget(1e6, Period.MONTH)
    ),
    Limits(Scope.DEPLOYMENT, "gpt-4o-mini", tpm=10**12),
]
RECORD = LedgerRecord(
    request_id="",
    at=0.0,
    key="ci-bot",
    team="engineering",
    user=None,
    route="fast",
    deployment="gpt-4o-mini",
    tokens_in=1_200,
    tokens_out=180,
    cost=0.000288,
    latency_ms=412.5,
    status=200,
    fingerprint="f" * 64,
)


async def sample(iterations: int, run: Callable[[int], Awaitable[None]]) -> tuple[float, float]:
    """Median and p99 of ``run(i)``, in microseconds, after a short warm-up."""
    for i in range(min(200, iterations)):
        await run(-1 - i)
    samples = []
    for i in range(iterations):
        started = time.perf_counter_ns()
        await run(i)
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


async def measure(store: Store, iterations: int, tag: str) -> dict[str, tuple[float, float]]:
    async def reserve_and_settle(i: int) -> None:
        decision = await store.reserve(f"{tag}-{i}", LIMITS, tokens=1_400, cost=0.0004)
        assert isinstance(decision, Reservation), decision
        await store.settle(decision, tokens=1_380, cost=0.000288)

    async def record(i: int) -> None:
        await store.record(replace(RECORD, request_id=f"{tag}-{i}", at=time.time()))

    return {
        "reserve + settle": await sample(iterations, reserve_and_settle),
        "record (durable)": await sample(iterations, record),
    }


async def main(options: argparse.Namespace) -> None:
    rows: list[tuple[str, str, float, float]] = []
    stores = options.stores.split(",")
    if "embedded" in stores:
        with tempfile.TemporaryDirectory() as tmp:
            embedded = await EmbeddedStore.open(Path(tmp) / "bench.sqlite")
            try:
                for op, (median, p99) in (await measure(embedded, options.iterations, "e")).items():
                    rows.append(("embedded (SQLite WAL, synchronous=FULL)", op, median, p99))
            finally:
                await embedded.aclose()
    if "redis" in stores:
        namespace = f"aigw-bench-{os.getpid()}"
        shared = RedisStore.from_url(options.redis_url, namespace=namespace)
        try:
            for op, (median, p99) in (await measure(shared, options.iterations, "r")).items():
                rows.append((f"redis ({options.redis_url}, loopback)", op, median, p99))
        finally:
            await shared.aclose()
            await drop_namespace(options.redis_url, namespace)

    print(f"Python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs,")
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"event loop: {loop}, iterations: {options.iterations}\n")
    print("| store | operation | median (µs) | p99 (µs) |")
    print("|---|---|---|---|")
    for store_name, op, median, p99 in rows:
        print(f"| {store_name} | {op} | {median:.1f} | {p99:.1f} |")


async def drop_namespace(url: str, namespace: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{namespace}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await client.delete(*keys[start : start + 1000])
    finally:
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5_000)
    parser.add_argument(
        "--redis-url", default=os.environ.get("AIGW_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    )
    parser.add_argument("--stores", default="embedded,redis")
    arguments = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # uvloop is optional, as it is for aigw serve
        asyncio.run(main(arguments))
    else:
        uvloop.run(main(arguments))
