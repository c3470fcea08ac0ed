"""The Redis store's spend ledger: one hash per request, indexed by time three ways,
and totals per UTC day.

    rec:<request id>             one record (a hash)
    ledger                       request ids by time: every record
    ledger:key:<key>             ... the records of one key
    ledger:team:<team>           ... the records of one team
    ledger:day:<day>             the day's totals (a hash): every record's
    ledger:day:<day>:key:<key>   ... one key's
    ledger:day:<day>:team:<team> ... one team's
    ledger:day:<day>:audio       the audio tokens of the day's totals (a hash, as they
    ... :key:<key>:audio         are): of every record's, one key's and one team's
    ledger:indexed               set once the records written before the key and team
                                 indexes existed are in them
    ledger:rolled                set once the records written before the days' totals
                                 existed are in them

A record, its index entries and its days' totals are written by one script
(``lua.RECORD``), which writes nothing for a request id recorded already: each record is
in its day's totals once, whichever replica wrote it and however late (from an outbox).
A day's totals have a field per group (key, team, route, deployment; not the user, see
usage.TOTALS_BY), `` =ci-bot =engineering =fast =gpt-4o`` (names percent-encoded after
``=``; a space alone for none), holding its eight figures (``figures_of``), and the
same field of the day's audio totals its two audio tokens (``audio_totals``; none for a
group with no audio). So a summary reads the days its window covers whole from the totals of
the narrowest of the ledger, the key and the team, two hashes a day, and only the partial
days at its edges record by record, from the narrowest index. The audio tokens came
later, and have hashes of their own so that the totals stay as the version before them
writes and reads them (its summaries read every field of a day's totals, eight figures
each): during a rolling upgrade both versions add to and read the same days' totals,
an older replica's summaries without the audio tokens, and a newer one's with those of
the records it wrote.

With a retention (``ledger_retention_days``), each record's script also drops up to a
hundred records older than the retention from the indexes it writes (deleting their
hashes), and the hashes and indexes expire when no record has been written to them for
that long; a day's totals expire once the whole day is past the retention, so a summary
reads nothing older than the retention (a day that is partly is read record by record).

Records written before the indexes or the totals existed (by an older aigw) are indexed
and summed once each, by the first summary that needs them, which sets
``ledger:indexed`` and ``ledger:rolled``. Replicas still on an older version write
records that only the whole-ledger index knows: a rolling upgrade's summaries leave out
what those wrote after then, so upgrade every replica before relying on them (or delete
``ledger:indexed`` and ``ledger:rolled`` after: the next summary adds what is missing,
and only that, as a record in the totals says so: ``rolled`` in its hash).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import cast
from urllib.parse import quote, unquote

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from . import lua
from .outbox import Arg, Invocation
from .usage import DAY_S, TOTALS_BY, Summary, Totals, day_name, day_number, window_of
from .values import NANOS, Dimension, LedgerRecord, UsageQuery, UsageRow

log = logging.getLogger("aigw.store")

PAGE = 500
INDEX_PAGE = 1000  # records a call of the script that indexes old ones reads (~1 ms)
DAYS_PAGE = 100  # days' totals read in one round trip
# The script that writes a record. Older versions' names, in outbox rows they left:
# "record" (no indexes), "ledger_record" (no days' totals) and "ledger_record_totals"
# (no audio tokens), and where in their ARGV the record's field, value pairs start.
RECORD_SCRIPT = "ledger_record_audio"
_OLDER_RECORD_SCRIPTS = {"record": 2, "ledger_record": 5, "ledger_record_totals": 15}


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
        self._rolled = False  # the old records are in the days' totals, in this process
        self._index_page = client.register_script(lua.INDEX_OLD_RECORDS)
        self._roll_page = client.register_script(lua.ROLL_OLD_RECORDS)
        self._read = client.register_script(lua.READ_RECORDS)

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

    def _day_totals(self, day: int, key: str | None, team: str | None) -> list[str]:
        """The totals of ``day`` of the ledger, of ``key`` and of ``team``."""
        ledger = self._key("ledger", "day", day_name(day))
        found = [ledger]
        if key is not None:
            found.append(f"{ledger}:key:{quote(key, safe='')}")
        if team is not None:
            found.append(f"{ledger}:team:{quote(team, safe='')}")
        return found

    def record(self, record: LedgerRecord) -> Invocation:
        """The script call that writes ``record`` with its index entries and days' totals."""
        day = day_number(record.at)
        keys = [self._rec(record.request_id), self._key("ledger"),
                *self._indexes(record.key, record.team),
                *(totals := self._day_totals(day, record.key, record.team)),
                *(audio_totals(key) for key in totals)]
        cutoff = record.at - self._keep_ms / 1000
        # The day's totals go when all of the day is past the retention.
        totals_ms = (math.ceil(((day + 1) * DAY_S - record.at) * 1000) + self._keep_ms
                     if self._keep_ms else 0)
        args: list[Arg] = [record.request_id, record.at, self._keep_ms, cutoff,
                           self._key("rec", ""), totals_ms, group_of(record),
                           *figures_of(record), record.tokens_audio_in,
                           record.tokens_audio_out]
        for field, value in encode_record(record).items():
            args += [field, value]
        return Invocation(RECORD_SCRIPT, tuple(keys), tuple(args))

    def upgraded(self, invocation: Invocation) -> Invocation:
        """An outbox row an older aigw left (scripts ``record``, ``ledger_record``,
        ``ledger_record_totals``: no indexes, no days' totals, no audio tokens in them) as
        this version writes it."""
        start = _OLDER_RECORD_SCRIPTS.get(invocation.script)
        if start is None:
            return invocation
        args = invocation.args
        try:
            fields = {str(name): str(value)
                      for name, value in zip(args[start::2], args[start + 1::2], strict=True)}
            return self.record(decode_record(fields))
        except (KeyError, ValueError) as exc:  # damaged: sent as it is, the script it names
            # is unknown, so it is dropped (logged), not left to block the outbox
            log.error("redis store: a queued ledger record of an older aigw cannot be read "
                      "(%s)", exc)
            return invocation

    async def summary(self, query: UsageQuery, now: float) -> tuple[UsageRow, ...]:
        """Usage over the days the window covers whole from their totals, and over the
        rest from the narrowest index's records, a page at a time."""
        narrowest = self._indexes(query.key, query.team)
        if narrowest:
            await self._index_old_records()
        await self._roll_old_records()
        if self._keep_ms:  # past the retention, records go one by one (RECORD's trims)
            # while their day's totals stay until all of the day is past it: read neither
            oldest = now - self._keep_ms / 1000
            if query.since is None or query.since < oldest:
                query = replace(query, since=oldest)
        index = narrowest[0] if narrowest else self._key("ledger")
        summary = Summary(query)
        window = window_of(query)
        if window.days is not None:
            await self._add_days(summary, index, window.days)
        for low, high in window.edges:
            async for page in self._walk(index, low, high):
                found = await self._read(keys=[self._rec(rid) for rid, _ in page],
                                         args=RECORD_FIELDS)
                for values in json.loads(found):
                    fields = {name: value for name, value in zip(RECORD_FIELDS, values,
                                                                 strict=True)
                              if value is not False}
                    if fields:  # none: deleted meanwhile (a retention)
                        summary.add(decode_record(fields))
        return summary.rows()

    async def _add_days(self, summary: Summary, index: str,
                        days: tuple[int | None, int | None]) -> None:
        """The totals of the whole days ``[first, end)``, no further than ``index``'s
        first and last records go (a window from 1970 reads no empty days)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrange(index, 0, 0, withscores=True)
        pipe.zrange(index, -1, -1, withscores=True)
        oldest, newest = await pipe.execute()
        if not oldest:
            return
        first = day_number(oldest[0][1])
        end = day_number(newest[0][1]) + 1
        if days[0] is not None:
            first = max(first, days[0])
        if days[1] is not None:
            end = min(end, days[1])
        key, team = summary.query.key, summary.query.team
        if key is not None:  # the key's totals (the team asked too is checked per group)
            team = None
        for start in range(first, end, DAYS_PAGE):
            numbers = range(start, min(end, start + DAYS_PAGE))
            pipe = self._redis.pipeline(transaction=False)
            for day in numbers:  # the narrowest totals: the key's, the team's or the ledger's
                narrowest = self._day_totals(day, key, team)[-1]
                pipe.hgetall(narrowest)
                pipe.hgetall(audio_totals(narrowest))
            read = await pipe.execute()
            for day, fields, audio in zip(numbers, read[::2], read[1::2], strict=True):
                add_day(summary, day_name(day), fields, audio)

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
        if not self._indexed:
            await self._once("indexed", self._index_page, "redis store: indexing the "
                             "ledger's %d records by key and team, once (they were written "
                             "before those indexes)")
            self._indexed = True

    async def _roll_old_records(self) -> None:
        """Add the records written before the days' totals existed to them, once for the
        namespace (every replica's later records are added as written)."""
        if not self._rolled:
            await self._once("rolled", self._roll_page, "redis store: reading the ledger's "
                             "%d records once, to add those an older aigw wrote to the "
                             "daily totals", self._keep_ms)
            self._rolled = True

    async def _once(self, done: str, page: AsyncScript, warning: str, *extra: int) -> None:
        """Run ``page`` (INDEX_OLD_RECORDS' or ROLL_OLD_RECORDS') over the whole ledger,
        unless the marker ``ledger:<done>`` says it ran; then set that."""
        async with self._indexing:
            marker = self._key("ledger", done)
            if await self._redis.exists(marker):
                return
            total = await self._redis.zcard(self._key("ledger"))
            if total:
                log.warning(warning, total)
            low, offset = "-inf", 0
            while True:  # a page at a time, by score, as _walk goes
                read, last, same = await page(
                    keys=[self._key("ledger")],
                    args=[low, offset, INDEX_PAGE, self._key(""), *extra])
                if read < INDEX_PAGE:
                    break
                low, offset = (low, offset + read) if last == low else (last, same)
            await self._redis.set(marker, "1")


def group_of(record: LedgerRecord) -> str:
    """How the fields of ``record``'s day's totals end: its key, team, route and
    deployment (``TOTALS_BY``), each `` =<name percent-encoded>``, or a space for none."""
    return "".join(" " if name is None else f" ={quote(name, safe='')}"
                   for name in (record.key, record.team, record.route, record.deployment))


def figures_of(record: LedgerRecord) -> tuple[int, ...]:
    """What ``record`` adds to its group's day's totals, as ``usage.Totals`` sums them:
    records, requests, errors, tokens_in, tokens_out, tokens_cached, cost_nanos and
    estimated_nanos (its audio tokens go to the day's audio totals). An estimated record
    (a call a request made and did not use) adds its tokens and cost, and is no request
    nor an error (lua.ROLL_OLD_RECORDS: the same)."""
    cost = round(record.cost * NANOS)
    if record.estimated:
        return 1, 0, 0, record.tokens_in, record.tokens_out, record.tokens_cached, cost, cost
    return (1, 1, int(record.status >= 400), record.tokens_in, record.tokens_out,
            record.tokens_cached, cost, 0)


def audio_totals(totals: str) -> str:
    """The key of the audio tokens of the day's totals ``totals`` (a key's and a team's
    name is percent-encoded: no ':' in it, so this names no other totals)."""
    return f"{totals}:audio"


def add_day(summary: Summary, day: str, fields: dict[str, str],
            audio: dict[str, str]) -> None:
    """One day's totals (a hash: a field per group, its eight figures in one) and its
    audio totals (the same fields, two figures; none for a group with no audio) into
    ``summary``."""
    for group, figures in fields.items():
        owner: dict[Dimension, str | None] = {Dimension.DAY: day}
        for dimension, name in zip(TOTALS_BY, group[1:].split(" "), strict=True):
            owner[dimension] = unquote(name[1:]) if name else None
        totals = Totals()
        (totals.records, totals.requests, totals.errors, totals.tokens_in, totals.tokens_out,
         totals.tokens_cached, totals.cost_nanos,
         totals.estimated_nanos) = map(int, figures.split(" "))
        if group in audio:
            totals.tokens_audio_in, totals.tokens_audio_out = map(int, audio[group].split(" "))
        summary.add_day(owner, totals)


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
    for name in ("key", "team", "user", "route", "deployment", "batch"):
        value = getattr(record, name)
        if value is not None:
            fields[name] = value
    for name in ("tokens_audio_in", "tokens_audio_out"):  # most records have none
        if count := getattr(record, name):
            fields[name] = count
    if record.estimated:
        fields["estimated"] = 1
    return fields


RECORD_FIELDS = ("request_id", "at", "key", "team", "user", "route", "deployment", "tokens_in",
                 "tokens_out", "cost_nanos", "latency_ms", "status", "fingerprint",
                 "tokens_cached", "estimated", "batch", "tokens_audio_in", "tokens_audio_out")


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
        # absent from older records, and from a record with no audio
        tokens_audio_in=int(fields.get("tokens_audio_in", 0)),
        tokens_audio_out=int(fields.get("tokens_audio_out", 0)),
        estimated=fields.get("estimated") == "1",  # absent: a request's own record
        batch=fields.get("batch"),
    )
