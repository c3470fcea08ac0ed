"""The executions store contract, run against the embedded SQLite store and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from aigw.runtime.errors import InternalError
from aigw.runtime.store.callers import TokenCaller
from aigw.runtime.store.executions import (
    Checkpoint,
    Decision,
    Execution,
    ExecutionConflict,
    ExecutionStore,
    LeaseLost,
    Memo,
    NewEvent,
    NewExecution,
    Status,
    StepState,
    StepStatus,
    new_owner,
)
from aigw.runtime.store.executions_redis import RedisExecutions
from aigw.runtime.store.executions_sqlite import SQLiteExecutions, list_query
from aigw.runtime.workflows.runner import Runner

NOW = 1_767_225_600.0
LEASE = 10.0
IDEM_WORKER = Path(__file__).with_name("idem_worker.py")


@pytest.fixture(params=["sqlite", "redis"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[ExecutionStore]:
    opened: ExecutionStore
    if request.param == "sqlite":
        opened = await SQLiteExecutions.open(tmp_path / "aigw.sqlite")
    else:
        url = request.getfixturevalue("redis_url")
        opened = RedisExecutions.from_url(url, namespace=request.getfixturevalue("namespace"))
    yield opened
    await opened.aclose()


def _new(key: str = "dev", idempotency: str | None = None) -> NewExecution:
    return NewExecution("research", {"topic": "x"}, key, idempotency, "f1ngerprint")


async def test_create_get_list_and_idempotency(store: ExecutionStore) -> None:
    first, created = await store.create(_new(idempotency="k1"), NOW)
    again, created_again = await store.create(_new(idempotency="k1"), NOW + 1)
    other, _ = await store.create(_new(key="alice", idempotency="k1"), NOW + 2)
    assert (created, created_again) == (True, False)
    assert again == first and other.id != first.id
    assert first.status is Status.QUEUED and first.input == {"topic": "x"}
    assert await store.get(first.id) == first
    assert await store.get("exec_missing") is None
    assert [item.id for item in await store.list()] == [other.id, first.id]
    assert [item.id for item in await store.list(key="dev")] == [first.id]
    assert [item.id for item in await store.list(statuses={Status.QUEUED})] == [
        other.id, first.id]
    assert await store.list(statuses={Status.WAITING, Status.PAUSED}) == ()


async def test_an_execution_keeps_the_end_user_it_runs_for(store: ExecutionStore) -> None:
    made, _ = await store.create(
        NewExecution("research", {}, "alice", None, "f1ngerprint", user="u1"), NOW)
    assert made.user == "u1"
    found = await store.get(made.id)
    assert found is not None and found.user == "u1" and found.as_dict()["user"] == "u1"


async def test_an_execution_keeps_the_facts_policy_was_asked_with(store: ExecutionStore) -> None:
    facts = {"route": "", "estimated_tokens": 0, "max_tokens": None, "stream": False,
             "latency_sla_ms": 1500, "tags": ["release"]}
    made, _ = await store.create(
        NewExecution("research", {}, "alice", None, "f1ngerprint", facts=facts), NOW)
    unkept, _ = await store.create(_new(), NOW + 1)
    assert (made.facts, unkept.facts) == (facts, None)
    assert [(item.id, item.facts) for item in await store.list()] == [
        (unkept.id, None), (made.id, facts)]


async def test_an_execution_keeps_the_jwt_caller_that_started_it(store: ExecutionStore) -> None:
    caller = TokenCaller("corp", "ada", "research")
    made, _ = await store.create(
        NewExecution("research", {}, "corp#ada", None, "f1ngerprint", caller=caller), NOW)
    unkept, _ = await store.create(_new(), NOW + 1)
    assert (made.caller, unkept.caller) == (caller, None)
    assert [(item.id, item.caller) for item in await store.list()] == [
        (unkept.id, None), (made.id, caller)]
    owner = new_owner()
    assert made.id in await store.claim(owner, LEASE, NOW + 2, 10)
    await store.commit(made.id, owner, Checkpoint(status=Status.WAITING), NOW + 3)
    found = await store.get(made.id)
    assert found is not None and found.caller == caller  # kept through its checkpoints


async def test_a_redis_execution_written_before_it_kept_its_caller_has_none(
        redis_url: str, namespace: str) -> None:
    store = RedisExecutions.from_url(redis_url, namespace=namespace)
    try:
        made, _ = await store.create(
            NewExecution("research", {}, "corp#ada", None, "f",
                         caller=TokenCaller("corp", "ada", None)), NOW)
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        async with client:  # the hash as the version before wrote it: no caller field
            assert await client.hdel(f"{namespace}:wf:x:{made.id}", "caller") == 1
        found = await store.get(made.id)
        assert found is not None and found.caller is None and found.key == "corp#ada"
    finally:
        await store.aclose()


async def test_a_file_written_before_executions_kept_a_user_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:  # the table as it was, with one execution
        old.execute('''CREATE TABLE wf_executions (id TEXT PRIMARY KEY, pipeline TEXT NOT
            NULL, status TEXT NOT NULL, input TEXT NOT NULL, output TEXT, error TEXT, "key"
            TEXT, idempotency_key TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL,
            finished_at REAL, cost REAL NOT NULL DEFAULT 0, prompt_tokens INTEGER NOT NULL
            DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0, model_calls INTEGER NOT
            NULL DEFAULT 0, graph TEXT NOT NULL, control TEXT, owner TEXT, lease_until REAL
            NOT NULL DEFAULT 0)''')
        old.execute("INSERT INTO wf_executions (id, pipeline, status, input, \"key\", "
                    "created_at, updated_at, graph) VALUES ('exec_old', 'research', 'queued', "
                    "'{}', 'dev', 1, 1, 'f')")
    store = await SQLiteExecutions.open(path)
    try:
        kept = await store.get("exec_old")
        assert kept is not None and kept.user is None and kept.key == "dev"
        assert kept.facts is None and kept.caller is None  # nor its request's facts, caller
        caller = TokenCaller("corp", "ada", "research")
        made, _ = await store.create(
            NewExecution("research", {}, "alice", None, "f", user="u1", facts={"tags": []},
                         caller=caller), NOW)
        assert [(item.id, item.user, item.facts, item.caller)
                for item in await store.list()] == [
            (made.id, "u1", {"tags": []}, caller), ("exec_old", None, None, None)]
    finally:
        await store.aclose()


async def test_claim_gives_each_execution_to_one_runner(store: ExecutionStore) -> None:
    execution, _ = await store.create(_new(), NOW)
    a, b = new_owner(), new_owner()
    assert await store.claim(a, LEASE, NOW, 10) == (execution.id,)
    assert await store.claim(b, LEASE, NOW + 1, 10) == ()
    held = await store.get(execution.id)
    assert held is not None and held.owner == a and held.lease_until == NOW + LEASE
    assert await store.renew(execution.id, a, LEASE, NOW + 5)
    assert not await store.renew(execution.id, b, LEASE, NOW + 5)


async def test_a_runner_that_lets_go_leaves_the_execution_to_the_next(
    store: ExecutionStore,
) -> None:
    execution, _ = await store.create(_new(), NOW)
    a, b = new_owner(), new_owner()
    await store.claim(a, LEASE, NOW, 10)
    await store.release(execution.id, a)
    assert await store.claim(b, LEASE, NOW + 1, 10) == (execution.id,)


async def test_commits_are_fenced_by_the_lease(store: ExecutionStore) -> None:
    execution, _ = await store.create(_new(), NOW)
    a, b = new_owner(), new_owner()
    await store.claim(a, LEASE, NOW, 10)
    with pytest.raises(LeaseLost):
        await store.commit(execution.id, b, Checkpoint(status=Status.RUNNING), NOW)
    state = StepState("search", StepStatus.SUCCEEDED, 1, output={"n": 1}, started_at=NOW)
    events = await store.commit(execution.id, a, Checkpoint(
        steps=(state,), status=Status.RUNNING,
        events=(NewEvent("step_succeeded", "search", {"n": 1}), NewEvent("x"))), NOW)
    assert [(event.seq, event.type) for event in events] == [(1, "step_succeeded"), (2, "x")]
    assert await store.steps(execution.id) == (state,)
    assert [event.seq for event in await store.events(execution.id, after=1)] == [2]


async def test_a_memo_is_written_and_costed_once(store: ExecutionStore) -> None:
    execution, _ = await store.create(_new(), NOW)
    owner = new_owner()
    await store.claim(owner, LEASE, NOW, 10)
    memo = Memo("search@1#0", {"text": "hi"}, 0.25, 10, 5, model_call=True)
    await store.commit(execution.id, owner, Checkpoint(memo=memo), NOW)
    await store.commit(execution.id, owner, Checkpoint(memo=memo), NOW)
    assert await store.memos(execution.id) == {"search@1#0": {"text": "hi"}}
    got = await store.get(execution.id)
    assert got is not None
    assert (got.cost, got.prompt_tokens, got.completion_tokens, got.model_calls) == (
        0.25, 10, 5, 1)
    await store.commit(execution.id, owner, Checkpoint(status=Status.SUCCEEDED, output=[1]), NOW)
    (row,) = await store.costs()
    assert (row.pipeline, row.executions, row.succeeded, row.cost, row.model_calls) == (
        "research", 1, 1, 0.25, 1)
    done = await store.get(execution.id)
    assert done is not None and done.output == [1] and done.finished_at == NOW


async def test_a_lost_answer_is_recorded_once_without_a_lease(store: ExecutionStore) -> None:
    """A call paid for whose answer a runner could not save: recorded whoever holds the
    execution, ended or not; its cost counted and its events written once."""
    execution, _ = await store.create(_new(), NOW)
    owner = new_owner()
    await store.claim(owner, LEASE, NOW, 10)
    await store.commit(execution.id, owner, Checkpoint(status=Status.SUCCEEDED, output=1), NOW)
    lost = Memo("search@1#0#lost:r1", {"model": "fast"}, 0.25, 10, 5, model_call=True)
    events = (NewEvent("model_answer_lost", "search", {"key": "search@1#0"}),)
    assert await store.record_lost(execution.id, lost, events, NOW + 1)
    assert not await store.record_lost(execution.id, lost, events, NOW + 2)
    assert not await store.record_lost("exec_missing", lost, events, NOW + 2)
    got = await store.get(execution.id)
    assert got is not None and got.status is Status.SUCCEEDED
    assert (got.cost, got.prompt_tokens, got.completion_tokens, got.model_calls) == (
        0.25, 10, 5, 1)
    assert await store.memos(execution.id) == {"search@1#0#lost:r1": {"model": "fast"}}
    assert [(event.seq, event.type, event.step) for event in await store.events(execution.id)] \
        == [(1, "model_answer_lost", "search")]
    (row,) = await store.costs()
    assert (row.cost, row.model_calls) == (0.25, 1)


async def test_control_of_an_unheld_execution_changes_it_at_once(
    store: ExecutionStore,
) -> None:
    execution, _ = await store.create(_new(), NOW)
    paused = await store.control(execution.id, "pause", NOW)
    assert paused.status is Status.PAUSED
    assert await store.claim(new_owner(), LEASE, NOW, 10) == ()
    resumed = await store.control(execution.id, "resume", NOW)
    assert resumed.status is Status.QUEUED
    with pytest.raises(ExecutionConflict):
        await store.control(execution.id, "resume", NOW)
    cancelled = await store.control(execution.id, "cancel", NOW)
    assert cancelled.status is Status.CANCELLED
    with pytest.raises(ExecutionConflict):
        await store.control(execution.id, "pause", NOW)
    assert [event.type for event in await store.events(execution.id)] == [
        "execution_paused", "execution_queued", "execution_cancelled"]
    with pytest.raises(KeyError):
        await store.control("exec_missing", "pause", NOW)


@pytest.mark.parametrize("action", ["cancel", "pause"])
async def test_a_runner_whose_lease_lapsed_cannot_undo_a_cancel_or_pause(
    store: ExecutionStore, action: str
) -> None:
    """Its lease lapsed (a long step, a stalled loop), so the store cancelled (paused) at
    once; the runner, still at work, must not renew and commit over it."""
    execution, _ = await store.create(_new(), NOW)
    late = new_owner()
    assert await store.claim(late, LEASE, NOW, 10) == (execution.id,)
    stopped = await store.control(execution.id, action, NOW + LEASE + 1)
    assert stopped.status in (Status.CANCELLED, Status.PAUSED)
    assert not await store.renew(execution.id, late, LEASE, NOW + LEASE + 2)
    with pytest.raises(LeaseLost):
        await store.commit(execution.id, late, Checkpoint(status=Status.SUCCEEDED, output=1),
                           NOW + LEASE + 2)
    final = await store.get(execution.id)
    assert final is not None and final.status is stopped.status


async def test_control_of_a_held_execution_asks_its_runner(store: ExecutionStore) -> None:
    execution, _ = await store.create(_new(), NOW)
    owner = new_owner()
    await store.claim(owner, LEASE, NOW, 10)
    asked = await store.control(execution.id, "cancel", NOW + 1)
    assert asked.status is Status.QUEUED and asked.control == "cancel"
    await store.commit(execution.id, owner, Checkpoint(status=Status.CANCELLED,
                                                      clear_control=True), NOW + 2)
    final = await store.get(execution.id)
    assert final is not None and final.status is Status.CANCELLED and final.control is None


async def test_decisions_only_for_waiting_steps(store: ExecutionStore) -> None:
    execution, _ = await store.create(_new(), NOW)
    owner = new_owner()
    await store.claim(owner, LEASE, NOW, 10)
    decision = Decision(True, "dev", "fine", NOW)
    with pytest.raises(ExecutionConflict):
        await store.decide(execution.id, "sign_off", decision)
    await store.commit(execution.id, owner, Checkpoint(
        steps=(StepState("sign_off", StepStatus.WAITING, 1),)), NOW)
    await store.decide(execution.id, "sign_off", decision)
    with pytest.raises(ExecutionConflict, match="decided already"):  # the first one holds,
        # and the second decider is told so (not a 200 for a decision that changed nothing)
        await store.decide(execution.id, "sign_off", Decision(False, "ops", None, NOW))
    assert await store.decision(execution.id, "sign_off") == decision


async def test_no_decision_for_a_step_of_an_execution_that_has_ended(
    store: ExecutionStore,
) -> None:
    """A cancelled execution's approval stays marked waiting (the run stopped in it); a
    decision for it was recorded and answered 200, for nothing."""
    execution, _ = await store.create(_new(), NOW)
    owner = new_owner()
    await store.claim(owner, LEASE, NOW, 10)
    await store.commit(execution.id, owner, Checkpoint(
        steps=(StepState("sign_off", StepStatus.WAITING, 1),), status=Status.WAITING), NOW)
    await store.commit(execution.id, owner, Checkpoint(status=Status.CANCELLED), NOW)
    with pytest.raises(ExecutionConflict, match="has already cancelled"):
        await store.decide(execution.id, "sign_off", Decision(True, "dev", None, NOW))
    assert await store.decision(execution.id, "sign_off") is None


async def test_no_decision_for_a_step_of_an_execution_whose_cancel_was_asked_for(
    store: ExecutionStore,
) -> None:
    """A held execution's cancel waits for its runner to see it: a decision in between was
    recorded and answered 200, and the runner, reading the decision before the cancel,
    could go on to the next step."""
    execution, _ = await store.create(_new(), NOW)
    owner = new_owner()
    await store.claim(owner, LEASE, NOW, 10)
    await store.commit(execution.id, owner, Checkpoint(
        steps=(StepState("sign_off", StepStatus.WAITING, 1),), status=Status.WAITING), NOW)
    asked = await store.control(execution.id, "cancel", NOW + 1)
    assert asked.status is Status.WAITING and asked.control == "cancel"
    with pytest.raises(ExecutionConflict, match="is being cancelled; nothing waits"):
        await store.decide(execution.id, "sign_off", Decision(True, "dev", None, NOW))
    assert await store.decision(execution.id, "sign_off") is None


async def test_waiting_lists_the_steps_waiting_in_unfinished_executions(
    store: ExecutionStore,
) -> None:
    owner = new_owner()
    made = [(await store.create(_new(idempotency=f"w{n}"), NOW + n))[0] for n in range(3)]
    await store.claim(owner, LEASE, NOW, 10)
    waits = StepState("sign_off", StepStatus.WAITING, 1, detail={"message": "ok?"})
    for execution in made[:2]:  # the third never waits
        await store.commit(execution.id, owner, Checkpoint(
            steps=(waits, StepState("draft", StepStatus.SUCCEEDED, 1)), status=Status.WAITING),
            NOW)
    await store.commit(made[0].id, owner, Checkpoint(status=Status.FAILED), NOW + 5)
    found = await store.waiting(10)
    assert [(execution.id, state.step, dict(state.detail or {})) for execution, state in found] \
        == [(made[1].id, "sign_off", {"message": "ok?"})]
    await store.commit(made[1].id, owner, Checkpoint(
        steps=(StepState("sign_off", StepStatus.SUCCEEDED, 1),), status=Status.RUNNING), NOW)
    assert await store.waiting(10) == ()


async def test_an_expired_lease_is_taken_over(redis_url: str, namespace: str) -> None:
    """On Redis the work item of a runner that stopped renewing is claimed by another
    (XAUTOCLAIM once it is idle for a lease), and the old runner's writes are refused."""
    store = RedisExecutions.from_url(redis_url, namespace=namespace)
    try:
        execution, _ = await store.create(_new(), NOW)
        a, b = new_owner(), new_owner()
        lease = 0.2
        assert await store.claim(a, lease, NOW, 10) == (execution.id,)
        assert await store.claim(b, lease, NOW + 0.1, 10) == ()
        taken: tuple[str, ...] = ()
        for step in range(20):  # the entry must sit idle for a lease in Redis' own time
            taken = await store.claim(b, lease, NOW + 1 + step, 10)
            if taken:
                break
        assert taken == (execution.id,)
        with pytest.raises(LeaseLost):
            await store.commit(execution.id, a, Checkpoint(status=Status.RUNNING), NOW + 30)
        assert not await store.renew(execution.id, a, lease, NOW + 30)
    finally:
        await store.aclose()


async def _finish(store: ExecutionStore, owner: str, at: float, idempotency: str,
                  status: Status | None = Status.SUCCEEDED) -> str:
    """An execution created and (unless ``status`` is None) ended at ``at``, with a step,
    a memo, an event and a cost."""
    execution, _ = await store.create(_new(idempotency=idempotency), at)
    assert execution.id in await store.claim(owner, LEASE, at, 10)
    step = StepState("search", StepStatus.SUCCEEDED, 1, output={"n": 1}, started_at=at)
    await store.commit(execution.id, owner, Checkpoint(
        steps=(step,), memo=Memo("search@1#0", "hi", 0.5, 10, 5, model_call=True),
        events=(NewEvent("step_succeeded", "search"),)), at)
    if status is not None:
        await store.commit(execution.id, owner, Checkpoint(status=status, output=[1]), at)
    await store.release(execution.id, owner)
    return execution.id


async def test_purge_deletes_what_ended_before_the_cutoff_and_keeps_its_costs(
    store: ExecutionStore,
) -> None:
    owner = new_owner()
    old = [await _finish(store, owner, NOW - 100 + i, f"old-{i}") for i in range(3)]
    running = await _finish(store, owner, NOW - 90, "still-running", status=None)
    recent = await _finish(store, owner, NOW, "recent")
    before = await store.costs()

    assert await store.purge(NOW - 50, limit=2) == 2  # the oldest first, at most the limit
    assert await store.purge(NOW - 50, limit=10) == 1
    assert await store.purge(NOW - 50, limit=10) == 0

    for execution_id in old:
        assert await store.get(execution_id) is None
        assert await store.steps(execution_id) == ()
        assert await store.memos(execution_id) == {}
        assert await store.events(execution_id) == ()
    assert await store.get(running) is not None  # not ended: never purged
    assert await store.get(recent) is not None and len(await store.events(recent)) == 1
    assert {item.id for item in await store.list()} == {running, recent}
    assert await store.costs() == before  # the totals still count what was purged
    # The idempotency key went with its execution: the same key makes a new one.
    again, created = await store.create(_new(idempotency="old-0"), NOW + 1)
    assert created and again.id not in old


async def test_an_execution_cancelled_while_nobody_ran_it_is_purged_too(
    store: ExecutionStore,
) -> None:
    execution, _ = await store.create(_new(), NOW - 100)
    cancelled = await store.control(execution.id, "cancel", NOW - 90)
    assert cancelled.status is Status.CANCELLED
    assert await store.purge(NOW - 95, limit=10) == 0  # it ended after this cutoff
    assert await store.purge(NOW - 50, limit=10) == 1
    assert await store.get(execution.id) is None


async def test_redis_purges_executions_that_ended_before_it_kept_a_finished_index(
    redis_url: str, namespace: str,
) -> None:
    """A store written by an aigw that kept no ``finished`` set: the first purge finds
    what ended there by one scan, and purges it as if it had been indexed."""
    store = RedisExecutions.from_url(redis_url, namespace=namespace)
    try:
        owner = new_owner()
        old = [await _finish(store, owner, NOW - 100 + i, f"old-{i}") for i in range(3)]
        waiting = await _finish(store, owner, NOW - 95, "waiting", status=None)
        client = aioredis.Redis.from_url(redis_url)
        try:
            assert await client.delete(f"{namespace}:wf:finished") == 1  # as it was
        finally:
            await client.aclose()
        assert await store.purge(NOW - 50, limit=10) == 3
        for execution_id in old:
            assert await store.get(execution_id) is None
        assert await store.get(waiting) is not None
        assert await store.purge(NOW - 50, limit=10) == 0
    finally:
        await store.aclose()


async def test_the_runner_purges_on_its_own_once_the_retention_has_passed(
    store: ExecutionStore,
) -> None:
    owner = new_owner()
    ended = await _finish(store, owner, NOW, "ended")
    now = [NOW + 10]

    async def never(_execution: Execution) -> Status:
        raise AssertionError("nothing is left to run")

    runner = Runner(store, new_owner(), LEASE, never, lambda: now[0], poll_s=0.01,
                    retention_s=60, purge_every_s=0.01)
    runner.start()
    try:
        await asyncio.sleep(0.1)
        assert await store.get(ended) is not None  # ended 10 s ago; kept for 60
        now[0] = NOW + 61
        for _ in range(200):
            if await store.get(ended) is None:
                break
            await asyncio.sleep(0.01)
        assert await store.get(ended) is None
    finally:
        await runner.stop()


class SlowRelease:
    """The store, with each lease release taking a while (as a Redis WATCH/MULTI does
    under load)."""

    def __init__(self, store: ExecutionStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def release(self, execution_id: str, owner: str) -> None:
        await asyncio.sleep(0.2)
        await self._store.release(execution_id, owner)


async def test_stop_waits_for_the_lease_releases_under_way(store: ExecutionStore) -> None:
    """An execution that just ended is still letting go of its lease; stop() must wait
    for that, or the store closes under the release (a leaked Redis connection)."""
    execution, _ = await store.create(_new(), NOW)
    owner = new_owner()

    async def finish(running: Execution) -> Status:
        await store.commit(running.id, owner, Checkpoint(status=Status.SUCCEEDED), NOW)
        return Status.SUCCEEDED

    runner = Runner(SlowRelease(store), owner, LEASE, finish,  # type: ignore[arg-type]
                    lambda: NOW, poll_s=0.01)
    runner.start()
    try:
        for _ in range(200):
            found = await store.get(execution.id)
            if found is not None and found.status is Status.SUCCEEDED:
                break
            await asyncio.sleep(0.01)
    finally:
        await runner.stop()
    released = await store.get(execution.id)
    assert released is not None and released.status is Status.SUCCEEDED
    assert released.owner is None


class SwallowsCancellation:
    """The store, with a purge that catches its cancellation and carries on (as client
    libraries sometimes do, turning it into an error or a result)."""

    def __init__(self, store: ExecutionStore) -> None:
        self._store = store
        self.swallowing = True

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def purge(self, finished_before: float, limit: int) -> int:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if not self.swallowing:
                raise
        return 0


async def test_stop_ends_the_runner_even_if_a_store_call_swallows_its_cancellation(
    store: ExecutionStore,
) -> None:
    swallowing = SwallowsCancellation(store)
    runner = Runner(swallowing, new_owner(), LEASE,  # type: ignore[arg-type]
                    _never_run, lambda: NOW, poll_s=0.01, retention_s=60, purge_every_s=0.0)
    runner.start()
    await asyncio.sleep(0.02)  # in the middle of a purge
    stopping = asyncio.create_task(runner.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)
    swallowing.swallowing = False  # so that a failure here does not hang the test run
    if not done:
        await runner.stop()
    assert done, "stop() still waits for a loop that swallowed its cancellation"


async def _never_run(_execution: Execution) -> Status:
    raise AssertionError("nothing is queued")


class ClaimSwallowsCancellation(SwallowsCancellation):
    """...and a claim that does too, then takes what is queued."""

    async def claim(self, owner: str, lease_s: float, now: float, limit: int) -> tuple[str, ...]:
        await self.purge(now, limit)  # the swallowing wait
        claimed: tuple[str, ...] = await self._store.claim(owner, lease_s, now, limit)
        return claimed


async def test_what_is_claimed_as_stop_begins_is_let_go_not_run(store: ExecutionStore) -> None:
    swallowing = ClaimSwallowsCancellation(store)
    ran: list[str] = []

    async def run(execution: Execution) -> Status:
        ran.append(execution.id)
        return Status.SUCCEEDED

    runner = Runner(swallowing, new_owner(), LEASE, run,  # type: ignore[arg-type]
                    lambda: NOW, poll_s=0.01)
    runner.start()
    await asyncio.sleep(0.02)  # the claim loop is in its swallowing wait
    execution, _ = await store.create(_new(), NOW)
    stopping = asyncio.create_task(runner.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)
    swallowing.swallowing = False
    if not done:
        await runner.stop()
    assert done and ran == []
    left = await store.get(execution.id)
    assert left is not None and left.owner is None and left.status is Status.QUEUED
    assert execution.id in await store.claim(new_owner(), LEASE, NOW, 10)  # for the next


class SlowClaim:
    """The store, with each claim taking a while before it looks (a Redis claim waits up
    to half a second for new work)."""

    def __init__(self, store: ExecutionStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def claim(self, owner: str, lease_s: float, now: float, limit: int) -> tuple[str, ...]:
        await asyncio.sleep(0.3)
        claimed: tuple[str, ...] = await self._store.claim(owner, lease_s, now, limit)
        return claimed


async def test_an_execution_decided_during_a_claim_leaves_it_the_room_it_claims(
    store: ExecutionStore,
) -> None:
    """Decided while a claim was under way (for the slot its wait had left free), an
    execution took that slot back at once, and the claim then started another in it:
    two ran at once under a capacity of 1."""
    owner = new_owner()
    approval, _ = await store.create(_new(key="approval"), NOW)
    decided = asyncio.Event()
    running: set[str] = set()
    most = 0

    async def run(execution: Execution) -> Status:
        nonlocal most
        if execution.key == "approval":
            with runner.waiting_for_decision(execution.id) as take_slot:
                await decided.wait()
                while not take_slot():
                    await asyncio.sleep(0.01)
        running.add(execution.id)
        most = max(most, len(running))
        await asyncio.sleep(0.5)  # past the claim under way
        running.discard(execution.id)
        await store.commit(execution.id, owner, Checkpoint(status=Status.SUCCEEDED), NOW)
        return Status.SUCCEEDED

    runner = Runner(SlowClaim(store), owner, LEASE, run,  # type: ignore[arg-type]
                    lambda: NOW, capacity=lambda: 1, poll_s=0.01)
    runner.start()
    try:
        while approval.id not in runner.waiting:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the next claim is under way
        other, _ = await store.create(_new(), NOW)
        decided.set()
        for execution in (approval, other):
            for _ in range(300):
                found = await store.get(execution.id)
                if found is not None and found.status is Status.SUCCEEDED:
                    break
                await asyncio.sleep(0.01)
            assert found is not None and found.status is Status.SUCCEEDED
    finally:
        await runner.stop()
    assert most == 1


class RenewFailsOnce:
    """The store, with the first lease renewal failing as a call of its own does (a key
    of the wrong type): not an outage."""

    def __init__(self, store: ExecutionStore) -> None:
        self._store = store
        self.failed = False

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def renew(self, execution_id: str, owner: str, lease_s: float, now: float) -> bool:
        if not self.failed:
            self.failed = True
            raise InternalError("The executions store (redis) refused a call; the error is "
                                "logged.")
        held: bool = await self._store.renew(execution_id, owner, lease_s, now)
        return held


async def test_a_renewal_that_fails_on_its_own_leaves_the_leases_renewed(
    store: ExecutionStore,
) -> None:
    """Only an outage was caught: any other error ended the renewing loop, and every
    lease the runner held lapsed, its executions taken over while it ran them."""
    execution, _ = await store.create(_new(), time.time())
    owner = new_owner()
    renewing = RenewFailsOnce(store)
    done = asyncio.Event()

    async def run(_execution: Execution) -> Status:
        await done.wait()
        return Status.SUCCEEDED

    runner = Runner(renewing, owner, 0.3, run, time.time,  # type: ignore[arg-type]
                    poll_s=0.01)
    runner.start()
    try:
        for _ in range(100):  # 0.1 s apart, renewed each time but the first
            await asyncio.sleep(0.01)
        held = await store.get(execution.id)
        assert renewing.failed and held is not None and held.owner == owner
        assert held.lease_until > time.time()
    finally:
        done.set()
        await runner.stop()


async def test_a_replica_asking_while_an_execution_is_written_gets_that_execution(
    redis_url: str, namespace: str
) -> None:
    """On Redis the idempotency key was set before the execution was written: another
    replica asking in between found the key and no execution behind it, took the key
    over and made a second execution (with the stock SDK's retries, a second run). A
    large input keeps this process between the two for a while."""
    store = RedisExecutions.from_url(redis_url, namespace=namespace)
    with subprocess.Popen([sys.executable, str(IDEM_WORKER), redis_url, namespace, "dev", "k"],
                          stdout=subprocess.PIPE, text=True) as worker:
        try:
            assert worker.stdout is not None
            assert worker.stdout.readline() == "ready\n"
            large = NewExecution("research", {"text": "x" * (16 << 20)}, "dev", "k", "f1")
            mine, created = await store.create(large, NOW)
            theirs = json.loads(await asyncio.to_thread(worker.stdout.readline))
            assert created and theirs == {"id": mine.id, "created": False}
            assert [execution.id for execution in await store.list()] == [mine.id]
        finally:
            worker.kill()
            await store.aclose()


async def test_an_idempotency_key_whose_execution_is_gone_starts_a_new_one(
    redis_url: str, namespace: str
) -> None:
    store = RedisExecutions.from_url(redis_url, namespace=namespace)
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(f"{namespace}:wf:idem:dev:k", "exec_evicted")
        made, created = await store.create(_new(idempotency="k"), NOW)
        again, created_again = await store.create(_new(idempotency="k"), NOW)
        assert (created, created_again, again.id) == (True, False, made.id)
        assert await store.claim(new_owner(), LEASE, NOW, 10) == (made.id,)  # queued
    finally:
        await client.aclose()
        await store.aclose()


HOLDER_WORKER = Path(__file__).with_name("holder_worker.py")


def _hold(path: Path, *prefix: str) -> subprocess.Popen[str]:
    """A process that holds the queued executions of ``path`` (started under ``prefix``)
    and says which owner it is."""
    return subprocess.Popen([*prefix, sys.executable, str(HOLDER_WORKER), str(path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _pid(owner: str) -> int:
    return int(owner.split(":")[1])


async def test_an_execution_held_by_a_process_gone_from_this_host_is_taken_at_once(
    tmp_path: Path,
) -> None:
    store = await SQLiteExecutions.open(tmp_path / "aigw.sqlite")
    try:
        execution, _ = await store.create(_new(), NOW)
        with _hold(tmp_path / "aigw.sqlite") as holder:
            assert holder.stdout is not None and holder.stdin is not None
            holder.stdout.readline()
            holder.stdin.close()
        # Its lease has an hour to run, but its process is gone.
        assert await store.claim(new_owner(), LEASE, time.time(), 10) == (execution.id,)
    finally:
        await store.aclose()


def _unused_pid() -> int:
    """A process id nobody uses in this PID namespace (the highest free one)."""
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while Path(f"/proc/{pid}").exists():
        pid -= 1
    return pid


async def test_an_execution_held_in_another_pid_namespace_of_this_host_is_left_to_it(
    tmp_path: Path,
) -> None:
    """A gateway in another container with the same hostname (network_mode: host, or a
    volume shared by containers named alike) numbers its processes on its own: its
    runner's process id, absent here, was taken for a dead process, and its live
    executions were taken over and run twice."""
    unshare = ["unshare", "--pid", "--fork", "--mount-proc"]
    try:
        usable = subprocess.run([*unshare, "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        usable = False
    if not usable:
        pytest.skip("needs unshare with the right to make a PID namespace (root)")
    pid = _unused_pid()
    # The holder takes the process id that is free here: its namespace's next one.
    prefix = [*unshare, "sh", "-c", f'echo {pid - 1} > /proc/sys/kernel/ns_last_pid && '
              '"$@"; exit $?', "sh"]
    store = await SQLiteExecutions.open(tmp_path / "aigw.sqlite")
    try:
        execution, _ = await store.create(_new(), NOW)
        with _hold(tmp_path / "aigw.sqlite", *prefix) as holder:
            assert holder.stdout is not None and holder.stdin is not None
            owner = holder.stdout.readline().strip()
            assert _pid(owner) == pid and not Path(f"/proc/{pid}").exists()
            assert await store.claim(new_owner(), LEASE, time.time(), 10) == ()
            holder.stdin.close()
        held = await store.get(execution.id)
        assert held is not None and held.owner == owner
    finally:
        await store.aclose()


async def test_a_dead_replicas_execution_is_found_behind_many_live_ones(
    redis_url: str, namespace: str
) -> None:
    """XAUTOCLAIM looks at ten entries per one it may claim, and every claim started from
    the stream's first pending entry: behind 20 entries of a live runner, a dead one's
    execution was never looked at by a runner with two free slots."""
    lease = 0.5
    live, dead, survivor = (RedisExecutions.from_url(redis_url, namespace=namespace)
                            for _ in range(3))
    a, b, c = new_owner(), new_owner(), new_owner()
    try:
        for _ in range(30):
            await live.create(_new(), time.time())
        held = await live.claim(a, lease, time.time(), 30)
        assert len(held) == 30
        orphan, _ = await dead.create(_new(), time.time())
        assert await dead.claim(b, lease, time.time(), 5) == (orphan.id,)  # then it dies

        stopping = asyncio.Event()

        async def renew() -> None:  # told to stop: a cancellation may be swallowed mid-command
            while not stopping.is_set():
                for execution_id in held:
                    assert await live.renew(execution_id, a, lease, time.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), lease / 4)

        renewing = asyncio.create_task(renew())
        try:
            taken: tuple[str, ...] = ()
            for _ in range(8):  # each claim waits up to 0.5 s for new work
                await asyncio.sleep(lease / 2)
                taken = await survivor.claim(c, lease, time.time(), 2)
                if taken:
                    break
            assert taken == (orphan.id,)
        finally:
            stopping.set()
            await renewing
    finally:
        for store in (live, dead, survivor):
            await store.aclose()


def _plan(path: Path, **query: Any) -> list[str]:
    """What SQLite does for ``list``'s query (``EXPLAIN QUERY PLAN``'s details)."""
    sql, params = list_query(**query)
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]


async def test_a_list_reads_a_range_of_one_index_in_a_file_written_before_there_was_one(
    tmp_path: Path,
) -> None:
    """A key's list read the whole table (no index had the key), and a status's or a
    pipeline's list every row of it, sorted; a page after another read from the newest
    (``created_at < ? OR ...`` could not be sought). Files written before the indexes
    get them as they are opened."""
    path = tmp_path / "aigw.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as old:  # as the version before made it
        old.executescript('''CREATE TABLE wf_executions (id TEXT PRIMARY KEY, pipeline TEXT
            NOT NULL, status TEXT NOT NULL, input TEXT NOT NULL, output TEXT, error TEXT,
            "key" TEXT, caller TEXT, "user" TEXT, idempotency_key TEXT, created_at REAL NOT
            NULL, updated_at REAL NOT NULL, finished_at REAL, cost REAL NOT NULL DEFAULT 0,
            prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL
            DEFAULT 0, model_calls INTEGER NOT NULL DEFAULT 0, graph TEXT NOT NULL, facts
            TEXT, trace TEXT, control TEXT, owner TEXT, lease_until REAL NOT NULL DEFAULT 0);
            CREATE INDEX wf_active ON wf_executions (status);
            CREATE INDEX wf_created ON wf_executions (created_at);''')
    store = await SQLiteExecutions.open(path)
    try:
        made = [(await store.create(_new(key=f"k{n % 3}"), NOW + n))[0] for n in range(9)]
    finally:
        await store.aclose()
    page = {"after": made[5], "limit": 2}
    assert _plan(path, key="k1", **page) == [
        "SEARCH wf_executions USING INDEX wf_by_key (key=? AND (created_at,id)<(?,?))"]
    assert _plan(path, statuses={Status.QUEUED}, **page) == [
        "SEARCH wf_executions USING INDEX wf_by_status (status=? AND (created_at,id)<(?,?))"]
    assert _plan(path, pipeline="research", **page) == [
        "SEARCH wf_executions USING INDEX wf_by_pipeline (pipeline=? AND "
        "(created_at,id)<(?,?))"]
    assert _plan(path, **page) == [
        "SEARCH wf_executions USING INDEX wf_by_created ((created_at,id)<(?,?))"]
    with contextlib.closing(sqlite3.connect(path)) as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE "
                                              "type = 'index' AND tbl_name = 'wf_executions'")}
    assert not names & {"wf_active", "wf_created"}  # replaced, not kept beside
    store = await SQLiteExecutions.open(path)
    try:
        assert [found.id for found in await store.list(key="k1", **page)] == [
            made[4].id, made[1].id]
    finally:
        await store.aclose()
