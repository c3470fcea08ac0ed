"""The executions store on Redis tells an outage (503) from a call's own failure (500)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from aigw.runtime.errors import InternalError, StoreUnavailable
from aigw.runtime.store.executions import (
    Checkpoint,
    NewExecution,
    StepState,
    StepStatus,
    new_owner,
)
from aigw.runtime.store.executions_redis import RedisExecutions
from aigw.runtime.workflows.runner import Runner

from ..redis_server import PrivateRedis

NOW = 1_767_225_600.0
NEW = NewExecution("research", {"topic": "x"}, "dev", None, "f1ngerprint")


@pytest.fixture
async def store(private_redis: PrivateRedis) -> AsyncIterator[RedisExecutions]:
    opened = RedisExecutions.from_url(private_redis.url)
    yield opened
    await opened.aclose()


@pytest.fixture
async def client(private_redis: PrivateRedis) -> AsyncIterator[aioredis.Redis]:
    opened = aioredis.Redis.from_url(private_redis.url)
    yield opened
    await opened.aclose()


async def test_a_redis_that_does_not_answer_is_unreachable(
    store: RedisExecutions, private_redis: PrivateRedis
) -> None:
    private_redis.stop()
    with pytest.raises(StoreUnavailable) as raised:
        await store.get("exec_1")
    assert raised.value.message.startswith("the executions store (redis) cannot be reached: ")


async def test_a_full_redis_refuses_the_call_for_what_it_is(
    store: RedisExecutions, client: aioredis.Redis
) -> None:
    """Every Redis error read 'the executions store (redis) failed', out of memory or a
    key of the wrong type alike."""
    await client.config_set("maxmemory-policy", "noeviction")
    await client.config_set("maxmemory", "1")
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await store.create(NEW, NOW)
    finally:
        await client.config_set("maxmemory", "0")
    assert raised.value.status == 503
    assert raised.value.message == ("the executions store (redis) refuses the call: command "
                                    "not allowed when used memory > 'maxmemory'.")


async def test_a_key_of_the_wrong_type_fails_that_call_not_the_store(
    store: RedisExecutions, client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    execution, _ = await store.create(NEW, NOW)
    owner = new_owner()
    assert await store.claim(owner, 10.0, NOW, 1) == (execution.id,)
    await client.set(f"aigw:wf:x:{execution.id}:steps", "not a hash")
    with pytest.raises(InternalError) as read:
        await store.steps(execution.id)
    with pytest.raises(InternalError) as written:  # in the commit script
        await store.commit(execution.id, owner, Checkpoint(
            steps=(StepState("only", StepStatus.RUNNING, 1),)), NOW)
    for raised in (read, written):
        assert raised.value.status == 500
        assert raised.value.message == ("The executions store (redis) refused a call; the "
                                        "error is logged.")
    assert caplog.text.count("Redis refused a call (WRONGTYPE") == 2
    found = await store.get(execution.id)  # every other call goes on
    assert found is not None and found.owner == owner


async def test_a_runner_says_once_that_it_cannot_claim_work_and_when_it_can_again(
    store: RedisExecutions, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """While Redis was away the runner logged an error at every poll (twice a second)."""
    async def never_runs(execution_id: str) -> None:
        raise AssertionError(execution_id)

    runner = Runner(store, new_owner(), 10.0, never_runs, time.time, poll_s=0.02)
    caplog.set_level(logging.INFO, logger="aigw.workflows")
    private_redis.stop()
    runner.start()
    try:
        await asyncio.sleep(0.5)
        private_redis.start_on_same_port()
        for _ in range(200):
            if any("claims work again" in record.message for record in caplog.records):
                break
            await asyncio.sleep(0.05)
    finally:
        await runner.stop()
    said = [record.message for record in caplog.records if "claim" in record.message]
    assert len(said) == 2, said
    assert "cannot claim work" in said[0] and "claims work again" in said[1]


async def _hgetalls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def test_a_keys_list_reads_its_own_executions_not_every_ones(
    store: RedisExecutions, client: aioredis.Redis
) -> None:
    """GET /api/v1/executions of a key with one execution read every execution's hash,
    newest first, until it had found its page: the whole store, on every call."""
    for n in range(600):
        await store.create(NewExecution("research", {"n": n}, "dev", None, "f"), NOW + n)
    mine, _ = await store.create(NewExecution("research", {}, "alice", None, "f"), NOW - 1)
    # As a store written before a key's executions were indexed: found by one scan.
    if indexed := await client.keys("aigw:wf:by-key*"):
        await client.delete(*indexed)
    assert [found.id for found in await store.list(key="alice")] == [mine.id]
    before = await _hgetalls(client)
    assert [found.id for found in await store.list(key="alice")] == [mine.id]
    assert await _hgetalls(client) - before == 1
    assert len(await store.list(key="dev", limit=1000)) == 600
    assert await store.list(key="bot") == ()
    # A purged execution leaves its key's index too.
    await store.control(mine.id, "cancel", NOW)
    assert await store.purge(NOW + 10**9, 10) == 1
    assert await client.zcard("aigw:wf:by-key:alice") == 0


async def test_a_keys_list_has_the_executions_a_replica_of_the_version_before_made(
    store: RedisExecutions, client: aioredis.Redis
) -> None:
    """In a rolling upgrade, a replica still on the version before ``by-key`` writes an
    execution's hash and ``index`` and not its key's index: made after the first list
    of a newer replica (its one scan), it was missing from its key's list for good."""
    first, _ = await store.create(NewExecution("research", {}, "alice", None, "f"), NOW)
    assert [found.id for found in await store.list(key="alice")] == [first.id]

    async def made_by_older_replica(at: float) -> str:
        older, _ = await store.create(NewExecution("research", {}, "alice", None, "f"), at)
        await client.zrem("aigw:wf:by-key:alice", older.id)  # as that version writes it
        return older.id

    later = await made_by_older_replica(NOW + 10)
    assert [found.id for found in await store.list(key="alice")] == [later, first.id]
    # A replica whose clock is 3 s behind the one that made the last: made "before" it.
    behind = await made_by_older_replica(NOW + 7)
    assert [found.id for found in await store.list(key="alice")] == [later, behind, first.id]
    assert await store.list(key="bob") == ()
