"""The executions store on Redis tells an outage (503) from a call's own failure (500)."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from aigw.runtime.errors import InternalError, StoreUnavailable
from aigw.runtime.store.executions import (
    Checkpoint,
    NewExecution,
    Status,
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


async def _end(store: RedisExecutions, status: Status, pipeline: str, at: float) -> str:
    """An execution of ``pipeline`` made at ``at`` and ended ``status`` by its runner."""
    execution, _ = await store.create(NewExecution(pipeline, {}, "dev", None, "f"), at)
    owner = new_owner()
    assert await store.claim(owner, 10.0, at, 1) == (execution.id,)
    await store.commit(execution.id, owner, Checkpoint(status=Status.RUNNING), at)
    await store.commit(execution.id, owner, Checkpoint(status=status, error="no"), at)
    await store.release(execution.id, owner)
    return execution.id


async def test_a_status_or_pipeline_list_reads_its_own_executions_not_every_ones(
    store: RedisExecutions, client: aioredis.Redis
) -> None:
    """GET /api/v1/executions?status=failed (or ?pipeline=) read every execution's hash,
    newest first, until it had found its page: the whole store, on every call."""
    failed = await _end(store, Status.FAILED, "rare", NOW - 1)
    for n in range(600):
        await store.create(NewExecution("research", {"n": n}, "dev", None, "f"), NOW + n)
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"statuses": {Status.FAILED}}, [failed]),
        ({"pipeline": "rare"}, [failed]),
        ({"statuses": {Status.FAILED, Status.CANCELLED}, "pipeline": "research"}, []),
        ({"statuses": {Status.FAILED}, "pipeline": "research"}, []),
        ({"statuses": {Status.FAILED}, "pipeline": "rare", "key": "dev"}, [failed]),
    ]
    for filters, expected in cases:
        before = await _hgetalls(client)
        assert [found.id for found in await store.list(**filters)] == expected, filters
        assert await _hgetalls(client) - before <= 1, filters
    queued = await store.list(statuses={Status.QUEUED}, limit=1000)
    assert len(queued) == 600 and [found.input["n"] for found in queued[:2]] == [599, 598]
    assert len(await store.list(pipeline="research", limit=1000)) == 600
    # A purged execution leaves its status's and its pipeline's index too.
    assert await store.purge(NOW + 10**9, 10) == 1
    assert await client.zcard("aigw:wf:by-status:failed") == 0
    assert await client.zcard("aigw:wf:by-pipeline:rare") == 0


async def test_a_status_list_pages_on_when_an_execution_changes_status_between_pages(
    store: RedisExecutions,
) -> None:
    """A page after another goes on from where the first ended, by creation time and
    id, whatever became of the execution it ended with."""
    made = [(await store.create(NEW, NOW + n // 2))[0].id for n in range(6)]  # in twos
    # Made at the same moment: the greater id first, as the embedded store lists them.
    newest = sorted(made, key=lambda execution_id: (made.index(execution_id) // 2,
                                                    execution_id), reverse=True)
    waiting = {Status.QUEUED, Status.PAUSED}
    first = await store.list(statuses=waiting, limit=3)
    assert [found.id for found in first] == newest[:3]
    await store.control(newest[2], "cancel", NOW)  # the page's last one
    await store.control(newest[3], "pause", NOW)  # the next page's first, to another status
    await store.control(newest[4], "cancel", NOW)
    cursor = await store.get(newest[2])
    assert cursor is not None and cursor.status is Status.CANCELLED
    second = await store.list(statuses=waiting, limit=3, after=cursor)
    assert [(found.id, found.status) for found in second] == [
        (newest[3], Status.PAUSED), (newest[5], Status.QUEUED)]
    for limit in (1, 2, 10):  # any page size, across moments shared by two
        pages: list[str] = []
        after = None
        while page := await store.list(statuses={Status.CANCELLED, Status.QUEUED},
                                       limit=limit, after=after):
            pages += [found.id for found in page]
            after = page[-1]
        assert pages == [newest[n] for n in (0, 1, 2, 4, 5)], limit
    assert [found.id for found in await store.list(statuses={Status.PAUSED})] == [newest[3]]


async def test_a_filtered_list_has_the_executions_a_replica_of_the_version_before_wrote(
    store: RedisExecutions, client: aioredis.Redis
) -> None:
    """In a rolling upgrade a replica still on the version before the status and pipeline
    indexes makes executions in none of them, and ends executions without moving them
    out of the status they had: each is listed under its status and pipeline all the
    same (its own by-key index it writes: that version's)."""
    before = await _end(store, Status.SUCCEEDED, "research", NOW)
    ending, _ = await store.create(NewExecution("research", {}, "dev", None, "f"), NOW + 5)
    for index in await client.keys("aigw:wf:by-*") + await client.keys("aigw:wf:indexed*"):
        if not index.startswith(b"aigw:wf:by-key"):  # as a store of that version has it
            await client.delete(index)
    assert [found.id for found in await store.list(statuses={Status.SUCCEEDED})] == [before]
    assert [found.id for found in await store.list(pipeline="research")] == [ending.id, before]

    async def made_by_older_replica(at: float, pipeline: str) -> str:
        older, _ = await store.create(NewExecution(pipeline, {}, "dev", None, "f"), at)
        await client.zrem(f"aigw:wf:by-pipeline:{pipeline}", older.id)
        await client.zrem("aigw:wf:by-status:queued", older.id)
        return older.id

    made = await made_by_older_replica(NOW + 10, "research")
    # A replica whose clock is 3 s behind the one that made the last: made "before" it.
    behind = await made_by_older_replica(NOW + 7, "other")
    queued = [made, behind, ending.id]
    assert [found.id for found in await store.list(statuses={Status.QUEUED})] == queued
    assert [found.id for found in await store.list(pipeline="research")] == [
        made, ending.id, before]
    assert [found.id for found in await store.list(pipeline="other")] == [behind]
    # Ended by an older replica, later: its hash and ``finished`` say so, and the status
    # index it was put in as it was made says queued.
    await client.hset(f"aigw:wf:x:{ending.id}", mapping={
        "status": '"failed"', "finished_at": json.dumps(NOW + 30), "error": '"no"'})
    await client.zadd("aigw:wf:finished", {ending.id: NOW + 30})
    assert [found.id for found in await store.list(statuses={Status.FAILED})] == [ending.id]
    assert [found.id for found in await store.list(statuses={Status.QUEUED})] == queued[:2]
    assert await client.zscore("aigw:wf:by-status:queued", ending.id) is None


RUNNER_WORKER = Path(__file__).with_name("runner_worker.py")


@pytest.mark.parametrize("entries", [1, 2], ids=["one-entry", "queued-twice"])
async def test_two_replicas_racing_for_an_expired_lease_one_wins(
    store: RedisExecutions, client: aioredis.Redis, private_redis: PrivateRedis, entries: int
) -> None:
    """A runner claims an execution and stops renewing (its replica died); two replicas'
    runners (the runtime's own loop, each in a process of its own) start at the same
    moment: once the lease has run out, one of them runs it, and the other never does
    while the winner renews. Queued twice (a resume and a release), each runner may
    be handed an entry of its own: the execution's hash still decides."""
    lease = 2.0  # as the tests' gateways have it: renewed every 0.67 s on a busy machine
    workers = [subprocess.Popen(
        [sys.executable, str(RUNNER_WORKER), private_redis.url, "aigw", str(lease)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for worker in workers:
            assert worker.stdin is not None and worker.stdout is not None
            assert await asyncio.to_thread(worker.stdout.readline) == "ready\n"
        execution, _ = await store.create(NEW, time.time())
        dead, claimed_at = new_owner(), time.time()
        assert await store.claim(dead, lease, claimed_at, 1) == (execution.id,)
        if entries == 2:
            await client.xadd("aigw:wf:queue", {"id": execution.id})
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        await asyncio.sleep(3 * lease)  # the lease runs out, then two more lease periods
    finally:
        for worker in workers:  # killed, as replicas die: a runner stopped lets go
            worker.kill()
    said = []
    for worker in workers:
        out, _ = await asyncio.to_thread(worker.communicate, timeout=30)
        said += [json.loads(line) for line in out.splitlines()]
    [ran] = said
    assert ran["ran"] == execution.id, said
    assert ran["at"] >= claimed_at + lease  # not while the dead runner's lease ran
    held = await store.get(execution.id)  # the winner's, its lease renewed all along
    assert held is not None and held.owner == ran["owner"]
