"""Store fixtures: each store under one test clock, and the real Redis they share.

Redis tests use ``AIGW_TEST_REDIS_URL`` (default redis://127.0.0.1:6379/15); when the
default server is not up, ``scripts/redis`` installs and starts it. Every test gets
its own key namespace and deletes only that namespace afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from aigw.runtime.store import EmbeddedStore, RedisStore, Store


@dataclass(slots=True)
class ManualClock:
    """A clock that only moves when told to."""

    at: float = field(default=1_767_225_600.0)  # 2026-01-01T00:00:00Z

    def now(self) -> float:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += seconds


def drop_namespace(url: str, namespace: str) -> None:
    """Delete this test's keys, and nothing else, from the shared Redis."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def namespace() -> str:
    return f"aigw-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def redis_store(
    redis_url: str, namespace: str, clock: ManualClock
) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_url, namespace=namespace, clock=clock)
    yield store
    await store.aclose()
    drop_namespace(redis_url, namespace)


@pytest.fixture
async def embedded_store(tmp_path: Path, clock: ManualClock) -> AsyncIterator[EmbeddedStore]:
    store = await EmbeddedStore.open(tmp_path / "store.sqlite", clock=clock)
    yield store
    await store.aclose()


@pytest.fixture(params=["embedded", "redis"])
def store(request: pytest.FixtureRequest) -> Store:
    """The same tests run against both stores."""
    chosen: Store = request.getfixturevalue(f"{request.param}_store")
    return chosen


@pytest.fixture(params=["embedded", "redis"])
async def kept_a_day(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock, namespace: str,
    redis_url: str,
) -> AsyncIterator[Store]:
    """Each store, keeping ledger records for one day."""
    store: Store
    if request.param == "embedded":
        store = await EmbeddedStore.open(tmp_path / "store.sqlite", clock=clock,
                                         ledger_retention=86_400.0)
    else:
        store = RedisStore.from_url(redis_url, namespace=namespace, clock=clock,
                                    ledger_retention=86_400.0)
    yield store
    await store.aclose()
    if request.param == "redis":
        drop_namespace(redis_url, namespace)
