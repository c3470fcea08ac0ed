"""The Redis batch store's listings of files and batches, on a redis-server of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis

from aigw.runtime.store.batches import FileRow
from aigw.runtime.store.batches_redis import RedisBatches

from ..redis_server import PrivateRedis

NOW = 1_767_225_600


@pytest.fixture
async def store(private_redis: PrivateRedis) -> AsyncIterator[RedisBatches]:
    batches = RedisBatches(private_redis.url)
    yield batches
    await batches.aclose()


def _reads(watcher: redis.Redis) -> int:
    """How many reads the server has processed: one a round trip of a client's."""
    return int(watcher.info("stats")["total_reads_processed"])


async def test_a_long_file_listing_is_read_in_a_few_round_trips(
    store: RedisBatches, private_redis: PrivateRedis,
) -> None:
    # Each row was read with an HGETALL of its own: a listing of 10,000 files was as
    # many round trips. Others' files, one of a purpose not asked for and an expired one
    # are among them, and are skipped.
    for n in range(300):
        owner = "key:b" if n % 4 == 3 else "key:a"
        purpose = "assistants" if n == 100 else "batch"
        await store.put_file(FileRow(f"file-{n:03}", owner, f"{n}.jsonl", purpose, n,
                                     NOW + n, NOW - 1 if n == 200 else None))
    mine = [f"file-{n:03}" for n in range(300) if n % 4 != 3 and n not in (100, 200)]
    watcher = redis.Redis.from_url(private_redis.url)
    before = _reads(watcher)
    newest = await store.files("key:a", "batch", None, 200, True, NOW + 1000)
    reads = _reads(watcher) - before - 1  # the INFO that asked is one
    watcher.close()
    assert [row.id for row in newest] == mine[::-1][:201]  # one past the limit: has_more
    # Two pages of ids (the skipped rows make the first too short), each page's rows in
    # one pipeline: 4 round trips (it was 211).
    assert reads <= 6, f"{reads} round trips for one listing"
    after = await store.files("key:a", "batch", "file-150", 20, False, NOW + 1000)
    assert [row.id for row in after] == [i for i in mine if i > "file-150"][:21]
    assert [row.id for row in await store.files("key:b", None, None, 3, False, NOW)] == [
        "file-003", "file-007", "file-011", "file-015"]
    everyone = await store.files(None, None, None, 1000, False, NOW + 1000)
    assert len(everyone) == 299 and everyone[0].as_object()["filename"] == "0.jsonl"
