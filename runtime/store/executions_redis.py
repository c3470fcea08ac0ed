"""Executions in Redis: shared by every replica, handed out through a stream.

Keys live under ``<namespace>:wf:``::

    x:<id>              hash: the execution's fields (JSON values)
    x:<id>:steps        hash: step path -> state (JSON)
    x:<id>:memo         hash: memo key -> value (JSON), written once
    x:<id>:events       list: events in order (seq = position, from 1)
    x:<id>:decisions    hash: approval step -> decision (JSON)
    idem:<key>:<idem>   the execution an idempotency key made
    index               sorted set: execution ids by creation time
    by-key:<key>, by-pipeline:<pipeline>, by-status:<status>
                        sorted sets: the ids of a key's, a pipeline's and a status's
                        executions by creation time, what a filtered list reads (and
                        their marks for a rolling upgrade: ``executions_redis_index``)
    finished            sorted set: ended execution ids by when they ended (what the
                        purge deletes, without reading the executions still waiting)
    waiting             sorted set: executions that had a step waiting for a decision,
                        by when it began to wait (read from the newest, a page at a
                        time, and tidied by ``waiting``; the purge takes out the ended)
    finished:complete   set once ``finished`` holds every ended execution (written
                        before it existed, they are added by one scan of ``index``)
    costs               hash: <pipeline>:<total> sums for /api/v1/costs/summary
    queue               stream of work items {id}, consumer group "runners"

A new (or resumed, or released) execution is a stream entry. A runner reads entries
with XREADGROUP and claims the execution (its lease: ``owner`` and ``lease_until`` in the
hash); it renews the lease and resets the entry's idle time together (XCLAIM JUSTID),
so an entry idle for longer than a lease belongs to a runner that died: other replicas
take it over with XAUTOCLAIM and resume the execution. Every write of a runner is a
Lua script that first checks it is still the owner.

A Redis that cannot be reached or answers too late, or refuses every call for now (out
of memory under ``maxmemory``, a read-only replica, still loading), is
``StoreUnavailable`` (503), each said as it is; a runner stops and tries again later.
Any other error reply (a key of the wrong type, a script's own failure) is that call's:
a healthy Redis refuses it again, so it is an ``InternalError`` (500), logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import fields
from typing import Any, TypeVar
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import (
    InvalidResponse,
    RedisError,
    ResponseError,
    WatchError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import GatewayError, InternalError, StoreUnavailable
from .callers import TokenCaller
from .executions import (
    FINAL,
    Checkpoint,
    CostRow,
    Decision,
    Event,
    Execution,
    ExecutionConflict,
    LeaseLost,
    Memo,
    NewEvent,
    NewExecution,
    Status,
    StepState,
    StepStatus,
    abandon,
    check_decidable,
    claimable,
    control_change,
    decision_from_json,
    decision_to_json,
    in_start_order,
    json_text,
    new_execution_id,
    step_from_json,
    step_to_json,
)
from .executions_redis_index import PLACE, ListingIndexes
from .redis_store import unreachable

log = logging.getLogger("aigw.store")

T = TypeVar("T")
GROUP = "runners"
_WAITING_PAGE = 200  # executions ``waiting`` reads in one round trip
_JSON_FIELDS = frozenset({"input", "output"})
_FIELDS = {item.name: item for item in fields(Execution)}
_PARTS = ("", "steps", "memo", "events", "decisions")  # an execution's keys (see above)

# A memo (key, value, cost, prompt and completion tokens, 1 for a model call), written
# once: the first time, its cost and tokens are added to the execution's and to the
# pipeline's costs. True when it was new. Shared by the scripts below.
_ADD_MEMO = """
local function add_memo(exec, memos, costs, pipeline, m)
  if redis.call('HSETNX', memos, m[1], m[2]) == 0 then return false end
  local totals = {cost = m[3], prompt_tokens = m[4], completion_tokens = m[5],
                  model_calls = m[6]}
  for name, amount in pairs(totals) do
    local now = tonumber(redis.call('HGET', exec, name) or '0') + amount
    redis.call('HSET', exec, name, tostring(now))
    redis.call('HINCRBYFLOAT', costs, pipeline .. ':' .. name, amount)
  end
  return true
end
"""

# KEYS: exec, steps, memo, events, costs, finished, then the status indexes (``PLACE``).
# ARGV: owner, now, payload (JSON), id. Returns the sequence number the first event got.
_COMMIT = _ADD_MEMO + PLACE + """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return redis.error_reply('LEASE_LOST')
end
local p = cjson.decode(ARGV[3])
for _, s in ipairs(p.steps) do redis.call('HSET', KEYS[2], s[1], s[2]) end
local pipeline = cjson.decode(redis.call('HGET', KEYS[1], 'pipeline'))
if p.memo ~= cjson.null then add_memo(KEYS[1], KEYS[3], KEYS[5], pipeline, p.memo) end
for name, value in pairs(p.fields) do redis.call('HSET', KEYS[1], name, value) end
if p.status ~= cjson.null then
  place(7, ARGV[4], p.status, redis.call('HGET', KEYS[1], 'created_at'))
end
if p.final ~= cjson.null then
  redis.call('HINCRBY', KEYS[5], pipeline .. ':' .. p.final, 1)
  redis.call('ZADD', KEYS[6], ARGV[2], ARGV[4])
end
local first = redis.call('LLEN', KEYS[4]) + 1
for _, e in ipairs(p.events) do redis.call('RPUSH', KEYS[4], e) end
return first
"""

# A model call's answer recorded without a lease (``record_lost``): its memo, and its
# events only if the memo is new. KEYS: exec, memo, events, costs. ARGV: the memo (as in
# a commit's payload, JSON), the events (JSON). Returns 1 when it was new.
_LOST = _ADD_MEMO + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local pipeline = cjson.decode(redis.call('HGET', KEYS[1], 'pipeline'))
if not add_memo(KEYS[1], KEYS[2], KEYS[4], pipeline, cjson.decode(ARGV[1])) then return 0 end
for _, e in ipairs(cjson.decode(ARGV[2])) do redis.call('RPUSH', KEYS[3], e) end
return 1
"""

# A new execution, with its idempotency key if it has one: the key is taken, and the
# execution written and queued, together. Taken first and written after, a request in
# between (another replica's) found the key with no execution behind it, took it over
# and started a second run.
# KEYS: exec, index, costs, queue, by-key, by-pipeline, by-status:queued, then the
# idempotency key (if any).
# ARGV: id, now, pipeline, the idempotency key's execution if it names one that is gone
# ('' otherwise), then the execution's field, value pairs.
# Returns '' when it made the execution, else the id the idempotency key names.
_CREATE = """
if #KEYS == 8 then
  local made = redis.call('GET', KEYS[8])
  if made and made ~= ARGV[4] then return made end
  redis.call('SET', KEYS[8], ARGV[1])
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
for i = 5, 7 do redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1]) end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[3] .. ':executions', 1)
redis.call('XADD', KEYS[4], '*', 'id', ARGV[1])
return ''
"""

# KEYS: exec, queue. ARGV: owner (JSON), lease_until, group, entry id ('' if none),
# consumer (the owner as plain text).
_RENEW = """
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease_until', ARGV[2])
if ARGV[4] ~= '' then
  redis.call('XCLAIM', KEYS[2], ARGV[3], ARGV[5], 0, ARGV[4], 'JUSTID')
end
return 1
"""


class RedisExecutions:
    """``ExecutionStore`` on a Redis server; build it with ``from_url``."""

    def __init__(self, client: aioredis.Redis, *, namespace: str = "aigw") -> None:
        # Typed loosely: with decode_responses every reply is str, which redis' stubs
        # cannot express.
        self._redis: Any = client
        self._ns = f"{namespace}:wf"
        self._create_script = client.register_script(_CREATE)
        self._commit_script = client.register_script(_COMMIT)
        self._lost_script = client.register_script(_LOST)
        self._renew_script = client.register_script(_RENEW)
        self._indexes = ListingIndexes(client, self._key)
        self._entries: dict[str, str] = {}  # execution id -> stream entry this runner holds
        # Where the next XAUTOCLAIM goes on looking among the pending entries: each looks
        # at ten entries per one it may claim, so starting every time from the first, a
        # live runner's entries at the head hid a dead one's behind them for good.
        self._autoclaim_from = "0-0"
        self._group_ready = False

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "aigw") -> RedisExecutions:
        client = aioredis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=10.0
        )
        return cls(client, namespace=namespace)

    def _key(self, *parts: str) -> str:
        return ":".join((self._ns, *parts))

    def _x(self, execution_id: str, part: str = "") -> str:
        return self._key("x", execution_id) + (f":{part}" if part else "")

    async def _hashes(self, ids: list[str]) -> list[dict[str, str]]:
        """The execution hashes of ``ids`` in one round trip (empty where one is gone)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for execution_id in ids:
                pipe.hgetall(self._x(execution_id))
            rows: list[dict[str, str]] = await pipe.execute()
        return rows

    async def create(self, new: NewExecution, now: float) -> tuple[Execution, bool]:
        async def run() -> tuple[Execution, bool]:
            execution = Execution(
                id=new_execution_id(), pipeline=new.pipeline, status=Status.QUEUED,
                input=new.input, key=new.key, user=new.user,
                idempotency_key=new.idempotency_key,
                created_at=now, updated_at=now, graph=new.graph, facts=new.facts,
                trace=new.trace, caller=new.caller,
            )
            keys = [self._x(execution.id), self._key("index"), self._key("costs"),
                    self._key("queue"), self._indexes.by_key(new.key),
                    self._indexes.by_pipeline(new.pipeline),
                    self._indexes.by_status(Status.QUEUED)]
            if new.idempotency_key is not None:
                keys.append(self._key("idem", quote(new.key or "", safe=""),
                                      quote(new.idempotency_key, safe="")))
            fields_ = [item for pair in _encode(execution).items() for item in pair]
            await self._ensure_group()
            gone = ""
            # Twice at most: a key naming an execution that is gone (deleted by hand, or
            # evicted) is taken over, once, by whichever request finds it first.
            for _ in range(2):
                made = await self._create_script(
                    keys=keys, args=[execution.id, now, new.pipeline, gone, *fields_])
                if not made:
                    return execution, True
                found = await self.get(made)
                if found is not None:
                    return found, False
                gone = made
            raise StoreUnavailable(f"the idempotency key '{new.idempotency_key}' names "
                                   f"execution {gone}, which is gone, and another request "
                                   "is taking it over; try again")

        return await self._guard(run)

    async def get(self, execution_id: str) -> Execution | None:
        async def run() -> Execution | None:
            data = await self._redis.hgetall(self._x(execution_id))
            return _decode(data) if data else None

        return await self._guard(run)

    async def list(
        self,
        *,
        key: str | None = None,
        pipeline: str | None = None,
        statuses: Collection[Status] | None = None,
        limit: int = 100,
        after: Execution | None = None,
    ) -> tuple[Execution, ...]:
        async def run() -> tuple[Execution, ...]:
            # Read from the indexes of the filter with the fewest: read from every
            # execution's hash until a page was found, a rare status, a key or a pipeline
            # with few executions had each list read the whole store.
            indexes = await self._indexes.drivers(key, pipeline, statuses)
            position = (after.created_at, after.id) if after is not None else None
            found: list[Execution] = []
            more = True
            while more and len(found) < limit:
                ids, more = await self._indexes.after(indexes, position, min(limit, 500))
                if not ids:
                    break
                position = ids[-1]
                for row in await self._hashes([execution_id for _, execution_id in ids]):
                    if not row:  # purged as it was read
                        continue
                    execution = _decode(row)
                    if (key is None or execution.key == key) and (
                        pipeline is None or execution.pipeline == pipeline
                    ) and (statuses is None or execution.status in statuses):
                        found.append(execution)
            return tuple(found[:limit])

        return await self._guard(run)

    async def waiting(self, limit: int) -> tuple[tuple[Execution, StepState], ...]:
        async def run() -> tuple[tuple[Execution, StepState], ...]:
            # A range of the index from the newest, a page at a time, until ``limit``
            # steps are found: it read the whole set, and every execution in it, on each
            # call (the admin page, each approvals inbox), however few were asked for.
            index = self._key("waiting")
            found: list[tuple[Execution, StepState]] = []
            seen: set[str] = set()
            start = 0
            page = max(1, min(limit, _WAITING_PAGE))
            while len(found) < limit:
                read: list[str] = await self._redis.zrevrange(index, start, start + page - 1)
                if not read:
                    break
                # One moved down as another came in is read once.
                ids = [execution_id for execution_id in read if execution_id not in seen]
                seen.update(ids)
                async with self._redis.pipeline(transaction=False) as pipe:
                    for execution_id in ids:
                        pipe.hgetall(self._x(execution_id))
                        pipe.hvals(self._x(execution_id, "steps"))
                    replies = await pipe.execute()
                done: list[str] = []  # decided, finished or purged: no longer worth reading
                for execution_id, row, states in zip(ids, replies[::2], replies[1::2],
                                                     strict=True):
                    execution = _decode(row) if row else None
                    waits = [state for state in map(step_from_json, states)
                             if state.status is StepStatus.WAITING]
                    if execution is None or execution.status in FINAL or not waits:
                        done.append(execution_id)
                        continue
                    found += [(execution, state) for state in waits]
                if done:
                    await self._redis.zrem(index, *done)
                start += len(read) - len(done)  # what was tidied away moved the rest up
            return tuple(found[:limit])

        return await self._guard(run)

    async def steps(self, execution_id: str) -> tuple[StepState, ...]:
        async def run() -> tuple[StepState, ...]:
            rows = await self._redis.hgetall(self._x(execution_id, "steps"))
            return in_start_order(map(step_from_json, rows.values()))

        return await self._guard(run)

    async def memos(self, execution_id: str) -> Mapping[str, Any]:
        async def run() -> Mapping[str, Any]:
            rows = await self._redis.hgetall(self._x(execution_id, "memo"))
            return {key: json.loads(value) for key, value in rows.items()}

        return await self._guard(run)

    async def events(
        self, execution_id: str, after: int = 0, limit: int = 1000
    ) -> tuple[Event, ...]:
        async def run() -> tuple[Event, ...]:
            rows = await self._redis.lrange(self._x(execution_id, "events"), after,
                                            after + limit - 1)
            events = []
            for offset, text in enumerate(rows, start=after + 1):
                data = json.loads(text)
                events.append(Event(offset, data["at"], data["type"], data["step"], data["data"]))
            return tuple(events)

        return await self._guard(run)

    async def claim(self, owner: str, lease_s: float, now: float, limit: int) -> tuple[str, ...]:
        async def run() -> tuple[str, ...]:
            await self._ensure_group()
            queue = self._key("queue")
            entries: list[tuple[str, dict[str, str]]] = []
            stale = await self._redis.xautoclaim(
                queue, GROUP, owner, min_idle_time=int(lease_s * 1000),
                start_id=self._autoclaim_from, count=limit,
            )
            self._autoclaim_from = stale[0]  # "0-0" once it has looked at them all
            entries.extend(stale[1])
            if len(entries) < limit:
                fresh = await self._redis.xreadgroup(
                    GROUP, owner, {queue: ">"}, count=limit - len(entries), block=500
                )
                for _stream, items in fresh or ():
                    entries.extend(items)
            taken = []
            for entry_id, values in entries:
                execution_id = (values or {}).get("id")
                if execution_id and await self._claim_one(execution_id, owner, lease_s, now):
                    previous = self._entries.get(execution_id)
                    if previous is not None and previous != entry_id:
                        await self._drop_entry(previous)
                    self._entries[execution_id] = entry_id
                    taken.append(execution_id)
                elif execution_id is None or await self._finished_with(execution_id):
                    await self._drop_entry(entry_id)
                # Else a live runner holds it: the entry stays pending, and is looked at
                # again (XAUTOCLAIM) should that runner stop renewing its lease.
            return tuple(taken)

        return await self._guard(run)

    async def _claim_one(self, execution_id: str, owner: str, lease_s: float, now: float) -> bool:
        key = self._x(execution_id)
        while True:
            try:
                async with self._redis.pipeline(transaction=True) as pipe:
                    await pipe.watch(key)
                    data = await pipe.hgetall(key)
                    if not data or not claimable(_decode(data), owner, now):
                        return False
                    pipe.multi()
                    pipe.hset(key, mapping={"owner": json.dumps(owner),
                                            "lease_until": json.dumps(now + lease_s)})
                    await pipe.execute()
                    return True
            except WatchError:
                continue

    async def _finished_with(self, execution_id: str) -> bool:
        """Does no runner need a work item for this execution (gone, final or paused)?"""
        data = await self._redis.hgetall(self._x(execution_id))
        return not data or _decode(data).status in (*FINAL, Status.PAUSED)

    async def renew(self, execution_id: str, owner: str, lease_s: float, now: float) -> bool:
        async def run() -> bool:
            result = await self._renew_script(
                keys=[self._x(execution_id), self._key("queue")],
                args=[json.dumps(owner), json.dumps(now + lease_s), GROUP,
                      self._entries.get(execution_id, ""), owner],
            )
            return bool(result)

        return await self._guard(run)

    async def release(self, execution_id: str, owner: str) -> None:
        async def run() -> None:
            key = self._x(execution_id)
            requeue = False
            held = False
            while True:
                try:
                    async with self._redis.pipeline(transaction=True) as pipe:
                        await pipe.watch(key)
                        data = await pipe.hgetall(key)
                        if not data or _decode(data).owner != owner:
                            break
                        held = True
                        requeue = Status(json.loads(data["status"])) in (
                            Status.QUEUED, Status.RUNNING, Status.WAITING)
                        pipe.multi()
                        pipe.hset(key, mapping={"owner": "null", "lease_until": "0"})
                        await pipe.execute()
                        break
                except WatchError:
                    continue
            entry = self._entries.pop(execution_id, None)
            if entry is not None and held:  # else the entry is the new holder's now
                await self._drop_entry(entry)
            if requeue:
                await self._enqueue(execution_id)

        await self._guard(run)

    async def commit(
        self, execution_id: str, owner: str, checkpoint: Checkpoint, now: float
    ) -> tuple[Event, ...]:
        async def run() -> tuple[Event, ...]:
            payload = _payload(checkpoint, now)
            if any(state.status is StepStatus.WAITING for state in checkpoint.steps):
                # Before the commit: the index may name an execution with nothing waiting
                # (``waiting`` drops it), never miss one that waits.
                await self._redis.zadd(self._key("waiting"), {execution_id: now}, nx=True)
            try:
                first = await self._commit_script(
                    keys=[self._x(execution_id), self._x(execution_id, "steps"),
                          self._x(execution_id, "memo"), self._x(execution_id, "events"),
                          self._key("costs"), self._key("finished"),
                          *self._indexes.statuses()],
                    args=[json.dumps(owner), now, json.dumps(payload), execution_id],
                )
            except ResponseError as exc:
                if "LEASE_LOST" in str(exc):
                    raise LeaseLost(f"execution {execution_id} is held by another runner") \
                        from exc
                raise
            return tuple(
                Event(int(first) + offset, now, new.type, new.step, dict(new.data))
                for offset, new in enumerate(checkpoint.events)
            )

        return await self._guard(run)

    async def record_lost(self, execution_id: str, memo: Memo, events: tuple[NewEvent, ...],
                          now: float) -> bool:
        async def run() -> bool:
            payload = _payload(Checkpoint(memo=memo, events=events), now)
            new = await self._lost_script(
                keys=[self._x(execution_id), self._x(execution_id, "memo"),
                      self._x(execution_id, "events"), self._key("costs")],
                args=[json.dumps(payload["memo"]), json.dumps(payload["events"])],
            )
            return bool(new)

        return await self._guard(run)

    async def control(self, execution_id: str, action: str, now: float) -> Execution:
        async def run() -> Execution:
            key, steps = self._x(execution_id), self._x(execution_id, "steps")
            while True:
                try:
                    async with self._redis.pipeline(transaction=True) as pipe:
                        await pipe.watch(key, steps)
                        data = await pipe.hgetall(key)
                        if not data:
                            raise KeyError(execution_id)
                        execution = _decode(data)
                        changes = control_change(execution, action, now)
                        if not changes:
                            return execution
                        changes["updated_at"] = now
                        status = changes.get("status")
                        closed: tuple[StepState, ...] = ()
                        events: tuple[NewEvent, ...] = ()
                        if status is Status.CANCELLED:  # what it left waiting ends with it
                            closed, events = abandon(
                                map(step_from_json, await pipe.hvals(steps)),
                                "abandoned: the execution was cancelled", now)
                        pipe.multi()
                        pipe.hset(key, mapping={name: _field(name, value)
                                                for name, value in changes.items()})
                        if isinstance(status, Status):  # in its status's index, and no other
                            for index in self._indexes.statuses():
                                pipe.zrem(index, execution_id)
                            pipe.zadd(self._indexes.by_status(status),
                                      {execution_id: execution.created_at})
                        for state in closed:
                            pipe.hset(steps, state.step, step_to_json(state))
                        if status is Status.CANCELLED:
                            pipe.hincrby(self._key("costs"), f"{execution.pipeline}:cancelled", 1)
                            pipe.zadd(self._key("finished"), {execution_id: now})
                        if isinstance(status, Status):  # no runner held it: say so
                            for event in (*events, NewEvent(f"execution_{status.value}")):
                                pipe.rpush(self._x(execution_id, "events"), json.dumps(
                                    {"at": now, "type": event.type, "step": event.step,
                                     "data": dict(event.data)}, ensure_ascii=False))
                        await pipe.execute()
                    break
                except WatchError:
                    continue
            if changes.get("status") is Status.QUEUED:
                await self._enqueue(execution_id)
            updated = await self.get(execution_id)
            assert updated is not None
            return updated

        return await self._guard(run)

    async def decide(self, execution_id: str, step: str, decision: Decision) -> None:
        async def run() -> None:
            # Watched, as control() watches: a cancel between the checks and the write
            # left a decision recorded, and answered 200, on an execution that had ended.
            key, steps = self._x(execution_id), self._x(execution_id, "steps")
            while True:
                try:
                    async with self._redis.pipeline(transaction=True) as pipe:
                        await pipe.watch(key, steps)
                        status, control = await pipe.hmget(key, "status", "control")
                        if status is not None:
                            check_decidable(execution_id, Status(json.loads(status)),
                                            json.loads(control) if control else None)
                        text = await pipe.hget(steps, step)
                        if text is None or step_from_json(text).status is not \
                                StepStatus.WAITING:
                            raise ExecutionConflict(f"step '{step}' is not waiting for a "
                                                    "decision")
                        pipe.multi()
                        pipe.hsetnx(self._x(execution_id, "decisions"), step,
                                    decision_to_json(decision))
                        [made] = await pipe.execute()
                    break
                except WatchError:
                    continue
            if not made:
                raise ExecutionConflict(f"step '{step}' was decided already")

        await self._guard(run)

    async def decision(self, execution_id: str, step: str) -> Decision | None:
        async def run() -> Decision | None:
            text = await self._redis.hget(self._x(execution_id, "decisions"), step)
            return decision_from_json(text) if text is not None else None

        return await self._guard(run)

    async def purge(self, finished_before: float, limit: int) -> int:
        async def run() -> int:
            finished = self._key("finished")
            if not await self._redis.exists(self._key("finished", "complete")):
                await self._index_finished()
            # The oldest ended first; executions still running or waiting (an approval
            # for weeks) are not in this set, so they cost the purge nothing.
            ids = await self._redis.zrangebyscore(finished, "-inf", f"({finished_before}",
                                                  start=0, num=limit)
            if not ids:
                return 0
            gone: list[Execution] = []
            for row in await self._hashes(ids):
                if row:  # else it was deleted already: only its entry is left
                    gone.append(_decode(row))
            async with self._redis.pipeline(transaction=True) as pipe:
                for execution in gone:
                    pipe.delete(*(self._x(execution.id, part) for part in _PARTS))
                    pipe.zrem(self._indexes.by_key(execution.key), execution.id)
                    pipe.zrem(self._indexes.by_pipeline(execution.pipeline), execution.id)
                    for index in self._indexes.statuses():
                        pipe.zrem(index, execution.id)
                    if execution.idempotency_key is not None:
                        pipe.delete(self._key("idem", quote(execution.key or "", safe=""),
                                              quote(execution.idempotency_key, safe="")))
                pipe.zrem(self._key("index"), *ids)
                pipe.zrem(finished, *ids)
                # An ended execution whose approval nobody listed since: no longer read.
                pipe.zrem(self._key("waiting"), *ids)
                await pipe.execute()
            return len(gone)

        return await self._guard(run)

    async def _index_finished(self) -> None:
        """Add executions that ended before ``finished`` existed to it: one scan of the
        whole index, once per Redis (concurrent replicas doing it too add the same)."""
        start = 0
        index = self._key("index")
        while ids := await self._redis.zrange(index, start, start + 499):
            start += len(ids)
            ended = {}
            for execution_id, row in zip(ids, await self._hashes(ids), strict=True):
                execution = _decode(row) if row else None
                if execution is None:  # dangling: an entry whose execution is gone
                    await self._redis.zrem(index, execution_id)
                    start -= 1
                elif execution.status in FINAL and execution.finished_at is not None:
                    ended[execution_id] = execution.finished_at
            if ended:
                await self._redis.zadd(self._key("finished"), ended)
        await self._redis.set(self._key("finished", "complete"), "1")

    async def costs(self) -> tuple[CostRow, ...]:
        async def run() -> tuple[CostRow, ...]:
            raw = await self._redis.hgetall(self._key("costs"))
            totals: dict[str, dict[str, float]] = {}
            for name, value in raw.items():
                pipeline, _, total = name.rpartition(":")
                totals.setdefault(pipeline, {})[total] = float(value)
            return tuple(
                CostRow(
                    pipeline=pipeline,
                    executions=int(t.get("executions", 0)),
                    succeeded=int(t.get("succeeded", 0)),
                    failed=int(t.get("failed", 0)),
                    cancelled=int(t.get("cancelled", 0)),
                    cost=t.get("cost", 0.0),
                    prompt_tokens=int(t.get("prompt_tokens", 0)),
                    completion_tokens=int(t.get("completion_tokens", 0)),
                    model_calls=int(t.get("model_calls", 0)),
                )
                for pipeline, t in sorted(totals.items())
            )

        return await self._guard(run)

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _enqueue(self, execution_id: str) -> None:
        await self._ensure_group()
        await self._redis.xadd(self._key("queue"), {"id": execution_id})

    async def _drop_entry(self, entry_id: str) -> None:
        queue = self._key("queue")
        await self._redis.xack(queue, GROUP, entry_id)
        await self._redis.xdel(queue, entry_id)

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._redis.xgroup_create(self._key("queue"), GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def _guard(self, run: Callable[[], Awaitable[T]]) -> T:
        try:
            return await run()
        except (RedisError, OSError) as exc:
            raise self._translated(exc) from exc

    def _translated(self, error: RedisError | OSError) -> GatewayError:
        """``error`` as the runtime's: an outage (503), or this call's own failure (500)."""
        if "NOGROUP" in str(error):  # the stream was deleted (a flushed Redis): make it again
            self._group_ready = False
            return StoreUnavailable("the executions store (redis) lost its work queue (was "
                                    "it flushed?); it is made again on the next call")
        if isinstance(error, RedisTimeoutError | TimeoutError):
            return StoreUnavailable(f"the executions store (redis) did not answer in time: "
                                    f"{error}")
        # A ConnectionError's subclasses are refusals (loading, a wrong password).
        if isinstance(error, OSError | InvalidResponse) or type(error) is RedisConnectionError:
            return StoreUnavailable(f"the executions store (redis) cannot be reached: {error}")
        if unreachable(error):  # out of memory, read-only, loading...: every call, for now
            return StoreUnavailable(f"the executions store (redis) refuses the call: {error}")
        log.error("the executions store: Redis refused a call (%s); that call fails, the "
                  "store stays up", error, exc_info=error)
        return InternalError("The executions store (redis) refused a call; the error is "
                             "logged.")


def _field(name: str, value: Any) -> str:
    if isinstance(value, Status):
        value = value.value
    elif isinstance(value, TokenCaller):
        value = value.as_json()
    return json_text(value)


def _encode(execution: Execution) -> dict[str, str]:
    return {name: _field(name, getattr(execution, name)) for name in _FIELDS}


def _decode(data: Mapping[str, str]) -> Execution:
    values: dict[str, Any] = {}
    for name in _FIELDS:
        if name in data:
            values[name] = json.loads(data[name])
    values["status"] = Status(values["status"])
    values["caller"] = TokenCaller.from_json(values.get("caller"))  # none before it was kept
    for name in ("cost", "lease_until"):
        values[name] = float(values.get(name) or 0.0)
    for name in ("prompt_tokens", "completion_tokens", "model_calls"):
        values[name] = int(values.get(name) or 0)
    return Execution(**values)


def _payload(checkpoint: Checkpoint, now: float) -> dict[str, Any]:
    fields_: dict[str, str] = {"updated_at": _field("updated_at", now)}
    final = None
    status = checkpoint.status.value if checkpoint.status is not None else None
    if checkpoint.status is not None:
        fields_["status"] = _field("status", checkpoint.status)
        if checkpoint.status in FINAL:
            fields_.update(finished_at=_field("finished_at", now),
                           output=_field("output", checkpoint.output),
                           error=_field("error", checkpoint.error),
                           control="null")
            final = checkpoint.status.value
    if checkpoint.clear_control:
        fields_["control"] = "null"
    memo = checkpoint.memo
    return {
        "steps": [[state.step, step_to_json(state)] for state in checkpoint.steps],
        "memo": [memo.key, json_text(memo.value), memo.cost,
                 memo.prompt_tokens, memo.completion_tokens, int(memo.model_call)]
        if memo is not None else None,
        "fields": fields_,
        "final": final,
        "status": status,
        "events": [json.dumps({"at": now, "type": e.type, "step": e.step, "data": dict(e.data)},
                              ensure_ascii=False) for e in checkpoint.events],
    }
