"""The Redis store's spend ledger: one hash per request, indexed by time three ways.

    rec:<request id>             one record (a hash)
    ledger                       request ids by time: every record
    ledger:key:<key>             ... the records of one key
    ledger:team:<team>           ... the records of one team
    ledger:indexed               set once the records written before the key and team
                                 indexes existed are in them

A record and its index entries are written by one script (``lua.RECORD``), so a
summary for one key or team reads that key's or team's records only, never the whole
ledger. With a retention (``ledger_retention_days``), each record's script also drops
up to a hundred records older than the retention from the indexes it writes (deleting
their hashes), and the hashes and indexes expire when no record has been written to
them for that long.

Records written before the indexes existed (by an older aigw) are indexed once, by the
first summary that needs an index, which sets ``ledger:indexed``. Replicas still on
that older version write records that only the whole-ledger index knows: a rolling
upgrade's key and team summaries leave out what those wrote after the indexing, so
upgrade every replica before relying on them.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import quote

import redis.asyncio as aioredis

from . import lua
from .outbox import Arg, Invocation
from .usage import Summary
from .values import NANOS, LedgerRecord, UsageQuery, UsageRow

log = logging.getLogger("aigw.store")

PAGE = 500
INDEX_PAGE = 1000  # records a call of the script that indexes old ones reads (~1 ms)


class RedisLedger:
    """Builds the record script's calls (sent through the store's outbox) and reads
    summaries; ``retention`` is in seconds (None: keep every record)."""

    def __init__(self, client: aioredis.Redis, namespace: str,
                 retention: float | None = None) -> None:
        self._redis = client
        self._ns = namespace
        self._keep_ms = math.ceil(retention * 1000) if retention else 0
        self._indexed = False  # known to be, in this process
        self._indexing = asyncio.Lock()
        self._index_page = client.register_script(lua.INDEX_OLD_RECORDS)

    def _key(self, *parts: str) -> str:
        return ":".join((self._ns, *parts))

    def _rec(self, request_id: str) -> str:
        return self._key("rec", quote(request_id, safe=""))

    def _indexes(self, key: str | None, team: str | None) -> list[str]:
        """The indexes of a record of ``key`` and ``team``, narrowest first."""
        found = []
        if key is not None:
            found.append(self._key("ledger", "key", quote(key, safe="")))
        if team is not None:
            found.append(self._key("ledger", "team", quote(team, safe="")))
        return found

    def record(self, record: LedgerRecord) -> Invocation:
        """The script call that writes ``record`` with its index entries."""
        keys = [self._rec(record.request_id), self._key("ledger"),
                *self._indexes(record.key, record.team)]
        cutoff = record.at - self._keep_ms / 1000
        args: list[Arg] = [record.request_id, record.at, self._keep_ms, cutoff,
                           self._key("rec", "")]
        for field, value in encode_record(record).items():
            args += [field, value]
        return Invocation("ledger_record", tuple(keys), tuple(args))

    def upgraded(self, invocation: Invocation) -> Invocation:
        """An outbox row an older aigw left (script ``record``: no indexes) as this
        version writes it, so that the record is indexed too."""
        if invocation.script != "record":
            return invocation
        args = invocation.args
        try:
            fields = {str(name): str(value) for name, value in zip(args[2::2], args[3::2],
                                                                     strict=True)}
            return self.record(decode_record(fields))
        except (KeyError, ValueError) as exc:  # damaged: sent as it is, the script it names
            # is unknown, so it is dropped (logged), not left to block the outbox
            log.error("redis store: a queued ledger record of an older aigw cannot be read "
                      "(%s)", exc)
            return invocation

    async def summary(self, query: UsageQuery) -> tuple[UsageRow, ...]:
        """Usage from the narrowest index, a page of records at a time."""
        narrowest = self._indexes(query.key, query.team)
        if narrowest:
            await self._index_old_records()
        index = narrowest[0] if narrowest else self._key("ledger")
        summary = Summary(query)
        async for page in self._walk(index, query.since, query.until):
            pipe = self._redis.pipeline(transaction=False)
            for rid, _ in page:
                pipe.hgetall(self._rec(rid))
            for fields in await pipe.execute():
                if fields:
                    summary.add(decode_record(fields))
        return summary.rows()

    async def _walk(
        self, index: str, since: float | None, until: float | None
    ) -> AsyncIterator[list[tuple[str, float]]]:
        """The index's (request id, at) over the time range, a page at a time, by score
        (so records written meanwhile are neither counted twice nor make others skip)."""
        low = -math.inf if since is None else since
        high = "+inf" if until is None else f"({until!r}"
        seen_at_low: set[str] = set()
        while True:
            wanted = PAGE + len(seen_at_low)
            page = cast(
                list[tuple[str, float]],
                await self._redis.zrangebyscore(
                    index, low, high, start=0, num=wanted, withscores=True
                ),
            )
            fresh = [(rid, at) for rid, at in page if not (at == low and rid in seen_at_low)]
            if fresh:
                yield fresh
            if len(page) < wanted:
                return
            last = page[-1][1]
            same = {rid for rid, at in page if at == last}
            seen_at_low = same | seen_at_low if last == low else same
            low = last

    async def _index_old_records(self) -> None:
        """Put the records written before the key and team indexes existed in them, once
        for the namespace (every replica's later records are indexed as written)."""
        if self._indexed:
            return
        async with self._indexing:
            marker = self._key("ledger", "indexed")
            if self._indexed or await self._redis.exists(marker):
                self._indexed = True
                return
            total = await self._redis.zcard(self._key("ledger"))
            if total:
                log.warning("redis store: indexing the ledger's %d records by key and team, "
                            "once (they were written before those indexes)", total)
            low, offset = "-inf", 0
            while True:  # a page at a time, by score, as _walk goes
                read, last, same = await self._index_page(
                    keys=[self._key("ledger")], args=[low, offset, INDEX_PAGE, self._key("")])
                if read < INDEX_PAGE:
                    break
                low, offset = (low, offset + read) if last == low else (last, same)
            await self._redis.set(marker, "1")
            self._indexed = True


def encode_record(record: LedgerRecord) -> dict[str, str | int | float]:
    """A ledger record as hash fields; a missing team, user... is a missing field."""
    fields: dict[str, str | int | float] = {
        "request_id": record.request_id,
        "at": record.at,
        "tokens_in": record.tokens_in,
        "tokens_out": record.tokens_out,
        "tokens_cached": record.tokens_cached,
        "cost_nanos": round(record.cost * NANOS),
        "latency_ms": record.latency_ms,
        "status": record.status,
        "fingerprint": record.fingerprint,
    }
    for name in ("key", "team", "user", "route", "deployment"):
        value = getattr(record, name)
        if value is not None:
            fields[name] = value
    if record.estimated:
        fields["estimated"] = 1
    return fields


def decode_record(fields: dict[str, str]) -> LedgerRecord:
    return LedgerRecord(
        request_id=fields["request_id"],
        at=float(fields["at"]),
        key=fields.get("key"),
        team=fields.get("team"),
        user=fields.get("user"),
        route=fields.get("route"),
        deployment=fields.get("deployment"),
        tokens_in=int(fields["tokens_in"]),
        tokens_out=int(fields["tokens_out"]),
        cost=int(fields["cost_nanos"]) / NANOS,
        latency_ms=float(fields["latency_ms"]),
        status=int(fields["status"]),
        fingerprint=fields["fingerprint"],
        tokens_cached=int(fields.get("tokens_cached", 0)),  # absent from older records
        estimated=fields.get("estimated") == "1",  # absent: a request's own record
    )
