"""Executions on Redis: the indexes a list reads, so a filtered page is a range read.

Keys live under ``<namespace>:wf:`` beside the executions (``executions_redis``)::

    by-key:<key>            sorted sets of execution ids by creation time: those a key
    by-pipeline:<pipeline>  started, those of a pipeline (neither ever changes), and
    by-status:<status>      those in a status now (moved as the status changes)
    indexed-through         sorted sets of one member, ``mark``: the creation time up to
    indexed-finished-through  which ``index`` (and the end time up to which ``finished``)
                            is in the three kinds of set above
    by-key-through          the mark of the version before, which knew only ``by-key``:
                            moved forward with ``indexed-through`` for its replicas

Every write of this version that makes an execution or changes its status puts it in
its sets in the same script or transaction (``place``): in the set of its new status and
in no other, so one left in a wrong set by an older replica is put right by the next.

In a rolling upgrade a replica of an older version makes executions that are in none of
these sets, and ends executions without moving them. Before a filtered list reads the
sets, ``caught_up`` puts in them the executions made (``index``) and ended
(``finished``) since the marks, less ``SKEW_S`` for a write that lands late or a clock
behind; the first time, every execution. What is left out: a change between unfinished
statuses (queued, running, waiting, paused) made by an older replica is listed under the
status it had until a replica of this version writes it again, or it ends. A list reads
each execution's hash before it answers, so nothing is listed under a status it is not
in (nor under a key or pipeline it is not of).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import quote

from .executions import Status

# How far before a mark ``caught_up`` looks again: a creation whose write lands after a
# later one's, and replicas' clocks apart.
SKEW_S = 5.0
STATUSES = tuple(Status)
_BATCH = 500

# ``place(first, id, status, created)``: ``id`` in the status index of ``status`` (by
# ``created``, the creation time as its hash holds it) and out of every other. KEYS from
# ``first``: the status indexes, in ``STATUSES``' order.
PLACE = "local STATUSES = {" + ", ".join(f"'{status.value}'" for status in STATUSES) + """}
local function place(first, id, status, created)
  for i, name in ipairs(STATUSES) do
    if name == status then redis.call('ZADD', KEYS[first + i - 1], created, id)
    else redis.call('ZREM', KEYS[first + i - 1], id) end
  end
end
"""

# Executions put in the indexes of their key, pipeline and status as their hashes are
# now (a purged one, whose hash is gone, in none). KEYS: the status indexes, then for
# each execution its hash, its key's index and its pipeline's. ARGV: their ids.
_CATCH_UP = PLACE + """
local first = #STATUSES
for i, id in ipairs(ARGV) do
  local base = first + (i - 1) * 3
  local found = redis.call('HMGET', KEYS[base + 1], 'status', 'created_at')
  if found[1] then
    redis.call('ZADD', KEYS[base + 2], found[2], id)
    redis.call('ZADD', KEYS[base + 3], found[2], id)
    place(1, id, cjson.decode(found[1]), found[2])
  end
end
"""

Position = tuple[float, str]  # (created_at, id): where a page ends


class ListingIndexes:
    """The sets a list of executions reads, under ``key(...)``'s names."""

    def __init__(self, client: Any, key: Callable[..., str]) -> None:
        self._redis = client
        self._key = key
        self._catch_up = client.register_script(_CATCH_UP)

    def by_key(self, key: str | None) -> str:
        return self._key("by-key", quote(key or "", safe=""))

    def by_pipeline(self, pipeline: str) -> str:
        return self._key("by-pipeline", quote(pipeline, safe=""))

    def by_status(self, status: Status) -> str:
        return self._key("by-status", status.value)

    def statuses(self) -> list[str]:
        """The status indexes in ``STATUSES``' order (``PLACE``'s KEYS)."""
        return [self.by_status(status) for status in STATUSES]

    async def drivers(
        self, key: str | None, pipeline: str | None, statuses: Collection[Status] | None
    ) -> list[str]:
        """The sets whose union holds every execution a list with these filters can
        have: those of the filter with the fewest members (the others are checked
        against each execution's hash), or ``index`` with none."""
        families = []
        if statuses is not None:
            families.append([self.by_status(status) for status in sorted(statuses)])
        if pipeline is not None:
            families.append([self.by_pipeline(pipeline)])
        if key is not None:
            families.append([self.by_key(key)])
        if not families:
            return [self._key("index")]
        await self.caught_up()
        if len(families) == 1:
            return families[0]
        async with self._redis.pipeline(transaction=False) as pipe:
            for family in families:
                for index in family:
                    pipe.zcard(index)
            sizes: list[int] = await pipe.execute()
        totals = []
        for family in families:
            totals.append(sum(sizes[:len(family)]))
            sizes = sizes[len(family):]
        return families[totals.index(min(totals))]

    async def after(
        self, indexes: list[str], position: Position | None, count: int
    ) -> tuple[list[Position], bool]:
        """The next ids of the union of ``indexes`` after ``position`` (the newest first;
        made at the same moment, the greater id first), at least ``count`` of them unless
        the union has fewer (then False: there are no more). An id in two of them (moved
        between statuses as they were read) comes once."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for index in indexes:
                if position is None:
                    pipe.zrevrange(index, 0, count - 1, withscores=True)
                else:
                    # Made at the page's last moment with a lower id, then those before.
                    pipe.zrangebyscore(index, position[0], position[0], withscores=True)
                    pipe.zrevrangebyscore(index, f"({position[0]!r}", "-inf", start=0,
                                          num=count, withscores=True)
            replies = await pipe.execute()
        merged: dict[str, float] = {}
        cutoff: Position | None = None  # past it, an index that filled its count may have more
        for n in range(len(indexes)):
            if position is None:
                older = replies[n]
            else:
                ties, older = replies[2 * n], replies[2 * n + 1]
                merged.update((member, score) for member, score in ties if member < position[1])
            merged.update(older)
            if len(older) == count:
                last = (older[-1][1], older[-1][0])
                cutoff = last if cutoff is None else max(cutoff, last)
        ordered = sorted(((score, member) for member, score in merged.items()), reverse=True)
        if cutoff is not None:
            ordered = [item for item in ordered if item >= cutoff]
        return ordered, cutoff is not None

    async def caught_up(self) -> None:
        """Put in their sets the executions made and ended since the marks (see the
        module's docstring). Concurrent replicas doing it too put the same."""
        indexed = await self._redis.zscore(self._key("indexed-through"), "mark")
        by_key = await self._redis.zscore(self._key("by-key-through"), "mark")
        # Behind either mark, a set may lack what was made since (a store whose by-key
        # sets were written before the others existed, or were deleted with their mark).
        made = None if indexed is None or by_key is None else min(indexed, by_key)
        await self._place_since(self._key("index"), made,
                                (self._key("indexed-through"), self._key("by-key-through")))
        ended = await self._redis.zscore(self._key("indexed-finished-through"), "mark")
        await self._place_since(self._key("finished"), ended,
                                (self._key("indexed-finished-through"),))

    async def _place_since(self, source: str, through: float | None,
                           marks: tuple[str, ...]) -> None:
        since = "-inf" if through is None else through - SKEW_S
        start = 0
        while ids := await self._redis.zrangebyscore(source, since, "+inf", start=start,
                                                     num=_BATCH, withscores=True):
            start += len(ids)
            async with self._redis.pipeline(transaction=False) as pipe:
                for execution_id, _ in ids:
                    pipe.hmget(self._key("x", execution_id), "key", "pipeline")
                found: list[list[str | None]] = await pipe.execute()
            keys, args = self.statuses(), []
            for (execution_id, _), (key, pipeline) in zip(ids, found, strict=True):
                if pipeline is None:  # dangling: the list skips it, the purge removes it
                    continue
                keys += [self._key("x", execution_id), self.by_key(json.loads(key or "null")),
                         self.by_pipeline(json.loads(pipeline))]
                args.append(execution_id)
            if args:
                await self._catch_up(keys=keys, args=args)
            # Only forward: a replica that read less must not take a mark back.
            for mark in marks:
                await self._redis.zadd(mark, {"mark": ids[-1][1]}, gt=True)
