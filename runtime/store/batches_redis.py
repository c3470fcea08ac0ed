"""``BatchStore`` on Redis, for replicas: files' and batches' records, leases and lines.

    <ns>:file:<id>                  hash: owner, filename, purpose, bytes, created_at[,
                                    expires_at]
    <ns>:files[:owner:<owner>]      sorted sets of file ids by created_at (all, an owner's)
    <ns>:files:expiring             sorted set of the ids of files that expire, by expires_at
    <ns>:batch:<id>                 hash: owner, key, doc (the batch object, JSON)
    <ns>:batches[:owner:<owner>]    sorted sets of batch ids by created_at
    <ns>:batches:running            the ids of batches in a RUNNING status
    <ns>:batches:forgetting         sorted set of finished batches' ids by forget_at (then
                                    their keys are purged)
    <ns>:batches:forgetting:complete  set once ``forgetting`` holds every finished batch
                                    (those that finished before it existed are added,
                                    with a forget_at from when they finished, by one scan
                                    of ``batches``)
    <ns>:batch:<id>:lease           the id of the process running it, expiring with its lease
    <ns>:batch:<id>:lines           hash: line number -> "1" or "0" (2xx or not) + its result
                                    (it and :order dropped once the batch's files are written)
    <ns>:batch:<id>:order           sorted set of the finished lines' numbers, to page them
    <ns>:batch:<id>:counts          hash: completed, failed

A line is recorded by a script that first checks the lease is the caller's (a process
that lost it writes nothing), then counts it, so ``request_counts`` cannot drift from the
lines. A batch's object is changed under WATCH of it and its lease (a compare and set).
The files' bytes are not in Redis: ``settings.files_dir`` must be one folder shared by the
replicas (a volume they all mount), as the README says.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, WatchError

from ..errors import StoreUnavailable
from .batches import FINISHED, RUNNING, BatchRow, FileRow, LineRow, forget_at_of

T = TypeVar("T")

_LINE_DONE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[2])
return 1
"""
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


class RedisBatches:
    """``BatchStore`` on the Redis of ``settings.store``."""

    TIMEOUT_S = 2.0

    def __init__(self, url: str, namespace: str = "aigw") -> None:
        # Any: redis-py's types make every reply ``bytes | str`` (decode_responses: str)
        self.redis: Any = Redis.from_url(
            url, socket_timeout=self.TIMEOUT_S, socket_connect_timeout=self.TIMEOUT_S,
            retry=Retry(NoBackoff(), 1), decode_responses=True)
        self._ns = namespace
        self._line_done = self.redis.register_script(_LINE_DONE)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)

    def _key(self, *parts: str) -> str:
        return ":".join((self._ns, *parts))

    async def _do(self, work: Callable[[], Awaitable[T]]) -> T:
        try:
            return await work()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"the batch store (Redis) failed: {exc}") from exc

    async def put_file(self, row: FileRow) -> None:
        async def put() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                fields: dict[str, Any] = {
                    "owner": row.owner, "filename": row.filename, "purpose": row.purpose,
                    "bytes": row.bytes, "created_at": row.created_at}
                if row.expires_at is not None:
                    fields["expires_at"] = row.expires_at
                    pipe.zadd(self._key("files", "expiring"), {row.id: row.expires_at})
                pipe.hset(self._key("file", row.id), mapping=fields)
                for index in (self._key("files"), self._key("files", "owner", row.owner)):
                    pipe.zadd(index, {row.id: row.created_at})
                await pipe.execute()
        await self._do(put)

    async def file(self, file_id: str) -> FileRow | None:
        found = await self._do(lambda: self.redis.hgetall(self._key("file", file_id)))
        return _file_row(file_id, found)

    async def files(self, owner: str | None, purpose: str | None, after: str | None,
                    limit: int, newest_first: bool, now: float) -> tuple[FileRow, ...]:
        index = self._key("files") if owner is None else self._key("files", "owner", owner)
        rows: list[FileRow] = []
        async for ids in self._pages(index, after, newest_first, limit + 1):
            for row in await self._file_rows(ids):
                if row is not None and (purpose is None or row.purpose == purpose) \
                        and not row.expired(now):
                    rows.append(row)
                    if len(rows) > limit:
                        return tuple(rows)
        return tuple(rows)

    async def _file_rows(self, ids: list[str]) -> list[FileRow | None]:
        """The rows of ``ids`` (None for one deleted meanwhile), read in one round trip:
        a listing of 10,000 made as many before."""
        async def read() -> list[dict[str, str]]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for file_id in ids:
                    pipe.hgetall(self._key("file", file_id))
                found: list[dict[str, str]] = await pipe.execute()
                return found
        found = await self._do(read) if ids else []
        return [_file_row(file_id, fields) for file_id, fields in zip(ids, found, strict=True)]

    async def expired_files(self, now: float, limit: int) -> tuple[FileRow, ...]:
        expiring = self._key("files", "expiring")
        ids: list[str] = await self._do(lambda: self.redis.zrangebyscore(
            expiring, "-inf", now, start=0, num=limit))
        rows: list[FileRow] = []
        for file_id, row in zip(ids, await self._file_rows(ids), strict=True):
            if row is None:  # deleted meanwhile: its mark goes too
                await self._do(partial(self.redis.zrem, expiring, file_id))
            else:
                rows.append(row)
        return tuple(rows)

    async def _pages(self, index: str, after: str | None, newest_first: bool,
                     wanted: int) -> AsyncIterator[list[str]]:
        """The ids of ``index`` in order, from the one after ``after``, a page at a time:
        ``wanted`` ids in the first (what a listing needs when nothing is filtered out),
        between 100 and 1,000 each."""
        rank = None
        if after is not None:
            ranked = self.redis.zrevrank if newest_first else self.redis.zrank
            rank = await self._do(lambda: ranked(index, after))
        start = 0 if rank is None else rank + 1
        page = min(max(wanted, 100), 1000)
        while True:
            ids: list[str] = await self._do(partial(
                self.redis.zrange, index, start, start + page - 1, desc=newest_first))
            if ids:
                yield ids
            if len(ids) < page:
                return
            start += page

    async def delete_file(self, file_id: str) -> bool:
        row = await self.file(file_id)
        if row is None:
            return False

        async def delete() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._key("file", file_id))
                pipe.zrem(self._key("files"), file_id)
                pipe.zrem(self._key("files", "owner", row.owner), file_id)
                pipe.zrem(self._key("files", "expiring"), file_id)
                await pipe.execute()
        await self._do(delete)
        return True

    async def put_batch(self, batch_id: str, owner: str, key: str,
                        doc: Mapping[str, Any]) -> None:
        async def put() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._key("batch", batch_id), mapping={
                    "owner": owner, "key": key, "doc": json.dumps(dict(doc))})
                for index in (self._key("batches"), self._key("batches", "owner", owner)):
                    pipe.zadd(index, {batch_id: doc["created_at"]})
                if doc["status"] in RUNNING:
                    pipe.sadd(self._key("batches", "running"), batch_id)
                if doc.get("forget_at") is not None:
                    pipe.zadd(self._key("batches", "forgetting"), {batch_id: doc["forget_at"]})
                await pipe.execute()
        await self._do(put)

    async def batch(self, batch_id: str) -> BatchRow | None:
        return (await self._batch_rows([batch_id]))[0]

    async def _batch_rows(self, ids: list[str]) -> list[BatchRow | None]:
        """The rows of ``ids`` (None for one purged meanwhile), read in one round trip."""
        async def read() -> list[dict[str, str]]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for batch_id in ids:
                    pipe.hgetall(self._key("batch", batch_id))
                    pipe.hgetall(self._key("batch", batch_id, "counts"))
                found: list[dict[str, str]] = await pipe.execute()
                return found
        found = await self._do(read) if ids else []
        return [_batch_row(batch_id, row, counts) for batch_id, row, counts
                in zip(ids, found[::2], found[1::2], strict=True)]

    async def batches(self, owner: str | None, after: str | None,
                      limit: int) -> tuple[BatchRow, ...]:
        index = self._key("batches") if owner is None else self._key("batches", "owner", owner)
        rows: list[BatchRow] = []
        async for ids in self._pages(index, after, True, limit + 1):
            for row in await self._batch_rows(ids):
                if row is not None:
                    rows.append(row)
                    if len(rows) > limit:
                        return tuple(rows)
        return tuple(rows)

    async def change(self, batch_id: str, changes: Mapping[str, Any],
                     lease_owner: str | None = None, only_from: tuple[str, ...] = ()) -> bool:
        name, lease = self._key("batch", batch_id), self._key("batch", batch_id, "lease")

        async def change() -> bool:
            async with self.redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(name, lease)
                        text = await pipe.hget(name, "doc")
                        holder = await pipe.get(lease)
                        if text is None or (lease_owner is not None and holder != lease_owner):
                            return False
                        doc = json.loads(text)
                        if only_from and doc["status"] not in only_from:
                            return False
                        doc.update(changes)
                        pipe.multi()
                        pipe.hset(name, "doc", json.dumps(doc))
                        running = self._key("batches", "running")
                        if doc["status"] in RUNNING:
                            pipe.sadd(running, batch_id)
                        else:
                            pipe.srem(running, batch_id)
                        if doc.get("forget_at") is not None:
                            pipe.zadd(self._key("batches", "forgetting"),
                                      {batch_id: doc["forget_at"]})
                        await pipe.execute()
                        return True
                    except WatchError:  # changed meanwhile (a line's lease renewed): again
                        continue
        return await self._do(change)

    async def claim(self, owner: str, lease_s: float, now: float,
                    skip: frozenset[str] = frozenset()) -> tuple[str, ...]:
        running = await self._do(lambda: self.redis.smembers(self._key("batches", "running")))
        return tuple([batch_id for batch_id in sorted(running)
                      if batch_id not in skip and await self._take(batch_id, owner, lease_s)])

    async def _take(self, batch_id: str, owner: str, lease_s: float) -> bool:
        lease = self._key("batch", batch_id, "lease")
        return bool(await self._do(lambda: self.redis.set(
            lease, owner, nx=True, px=max(1, int(lease_s * 1000)))))

    async def renew(self, batch_id: str, owner: str, lease_s: float, now: float) -> bool:
        renewed = await self._do(lambda: self._renew(
            keys=[self._key("batch", batch_id, "lease")],
            args=[owner, max(1, int(lease_s * 1000))]))
        return bool(renewed)

    async def release(self, batch_id: str, owner: str) -> None:
        await self._do(lambda: self._release(keys=[self._key("batch", batch_id, "lease")],
                                             args=[owner]))

    async def line_done(self, batch_id: str, owner: str, line: int, ok: bool,
                        result: str) -> bool:
        done = await self._do(lambda: self._line_done(
            keys=[self._key("batch", batch_id, "lease"), self._key("batch", batch_id, "lines"),
                  self._key("batch", batch_id, "counts"),
                  self._key("batch", batch_id, "order")],
            args=[owner, line, ("1" if ok else "0") + result,
                  "completed" if ok else "failed"]))
        return bool(done)

    async def done(self, batch_id: str) -> frozenset[int]:
        found = await self._do(lambda: self.redis.hkeys(self._key("batch", batch_id, "lines")))
        return frozenset(int(line) for line in found)

    async def lines(self, batch_id: str, after: int, limit: int) -> tuple[LineRow, ...]:
        numbers: list[str] = await self._do(lambda: self.redis.zrangebyscore(
            self._key("batch", batch_id, "order"), f"({after}", "+inf", start=0, num=limit))
        if not numbers:
            return ()
        found = await self._do(lambda: self.redis.hmget(
            self._key("batch", batch_id, "lines"), numbers))
        return tuple(LineRow(int(line), value[0] == "1", value[1:])
                     for line, value in zip(numbers, found, strict=True) if value is not None)

    async def forget_lines(self, batch_id: str) -> None:
        # UNLINK: a batch's lines are up to gigabytes, freed off Redis's main thread
        await self._do(lambda: self.redis.unlink(self._key("batch", batch_id, "lines"),
                                                 self._key("batch", batch_id, "order")))

    async def purge_batches(self, now: float, limit: int, retention_s: float) -> int:
        forgetting = self._key("batches", "forgetting")
        if not await self._do(partial(self.redis.exists, self._key("batches", "forgetting",
                                                                    "complete"))):
            await self._index_forgetting(retention_s)
        ids: list[str] = await self._do(lambda: self.redis.zrangebyscore(
            forgetting, "-inf", now, start=0, num=limit))
        for batch_id in ids:
            owner = await self._do(partial(self.redis.hget, self._key("batch", batch_id),
                                           "owner"))

            async def purge(batch_id: str = batch_id, owner: str | None = owner) -> None:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.unlink(*(self._key("batch", batch_id, *part) for part in (
                        (), ("counts",), ("lines",), ("order",), ("lease",))))
                    pipe.zrem(self._key("batches"), batch_id)
                    if owner is not None:
                        pipe.zrem(self._key("batches", "owner", owner), batch_id)
                    pipe.srem(self._key("batches", "running"), batch_id)
                    pipe.zrem(forgetting, batch_id)
                    await pipe.execute()
            await self._do(purge)
        return len(ids)

    async def _index_forgetting(self, retention_s: float) -> None:
        """Add the batches that finished before ``forgetting`` existed to it: one scan of
        every batch, once per namespace (replicas doing it at once add the same; NX: a
        batch's own forget_at is never moved)."""
        index, start = self._key("batches"), 0

        async def docs(ids: list[str]) -> list[str | None]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for batch_id in ids:
                    pipe.hget(self._key("batch", batch_id), "doc")
                found: list[str | None] = await pipe.execute()
                return found

        while ids := await self._do(partial(self.redis.zrange, index, start, start + 499)):
            start += len(ids)
            unforgotten = {}
            for batch_id, text in zip(ids, await self._do(partial(docs, ids)), strict=True):
                doc = json.loads(text) if text is not None else None
                if doc is not None and doc["status"] in FINISHED \
                        and doc.get("forget_at") is None:
                    unforgotten[batch_id] = forget_at_of(doc, retention_s)
            if unforgotten:
                await self._do(partial(self.redis.zadd, self._key("batches", "forgetting"),
                                       unforgotten, nx=True))
        await self._do(partial(self.redis.set, self._key("batches", "forgetting", "complete"),
                               "1"))

    async def aclose(self) -> None:
        await self.redis.aclose()


def _file_row(file_id: str, found: dict[str, str]) -> FileRow | None:
    if not found:
        return None
    expires_at = found.get("expires_at")
    return FileRow(file_id, found["owner"], found["filename"], found["purpose"],
                   int(found["bytes"]), int(found["created_at"]),
                   None if expires_at is None else int(expires_at))


def _batch_row(batch_id: str, found: dict[str, str], counts: dict[str, str]) -> BatchRow | None:
    if not found:
        return None
    return BatchRow(batch_id, found["owner"], found["key"], json.loads(found["doc"]),
                    int(counts.get("completed", 0)), int(counts.get("failed", 0)))
