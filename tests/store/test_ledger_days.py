"""The spend ledger's daily totals: a summary reads the days its window covers whole
from them and only its partial first and last days record by record, and answers what
summing every record one by one answers: on both stores, with records on several days,
several writers, late records (an outbox's), records written before the totals existed,
a retention, and estimated records (calls cut short: cost, but no request)."""

from __future__ import annotations

import asyncio
import math
import random
import sqlite3
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import redis.asyncio as aioredis

from aigw.runtime.store import (
    Dimension,
    EmbeddedStore,
    LedgerRecord,
    RedisStore,
    Store,
    UsageQuery,
)
from aigw.runtime.store.outbox import FileOutbox, Invocation, MemoryOutbox
from aigw.runtime.store.redis_ledger import RedisLedger, encode_record
from aigw.runtime.store.sqlite_file import SCHEMA, SQLiteFile, insert_record, usage
from aigw.runtime.store.usage import summarize

from ..redis_server import PrivateRedis
from .conftest import ManualClock
from .test_contract import DAY, ledger_record
from .test_redis_outage import Link, eventually, in_ledger

D = Dimension


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    """``at(2028, 2, 29, 13)``: seconds since the epoch, UTC."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


# Two runs of days: over a year's end, and over a leap day.
DAYS = [at(2027, 12, 30), at(2027, 12, 31), at(2028, 1, 1), at(2028, 2, 28), at(2028, 2, 29),
        at(2028, 3, 1)]
KEYS = ["ci-bot", "ops/ü:1", None]
TEAMS = ["engineering", "a b", None]
USERS = [None, "", "alice", "bob%"]  # none and the empty name are two groups


def records(count: int, prefix: str, seed: int) -> list[LedgerRecord]:
    """``count`` records spread over DAYS, with every field's kinds of names, and one
    at each midnight and at the last float before it (which is the day before). Every
    fourth is estimated (a call cut short: status 499, no request nor error), some of
    them of a deployment that has no other records (a group with no request)."""
    rng = random.Random(seed)
    found = []
    for n in range(count):
        day = DAYS[n % len(DAYS)]
        when = [day + rng.random() * DAY, day, math.nextafter(day, 0.0)][n % 7 % 3]
        estimated = n % 4 == 3
        found.append(ledger_record(
            f"{prefix}-{n}", at=when, key=rng.choice(KEYS), team=rng.choice(TEAMS),
            user=rng.choice(USERS), route=rng.choice(["fast", "slow", None]),
            deployment=rng.choice(["gpt-4o", "mini", *(["cut"] if estimated else [])]),
            tokens_in=rng.randrange(1000), tokens_out=rng.randrange(300),
            tokens_cached=rng.choice([0, 0, rng.randrange(100)]),
            tokens_audio_in=rng.choice([0, 0, rng.randrange(200)]),
            tokens_audio_out=rng.choice([0, 0, rng.randrange(300)]),
            cost=rng.randrange(10**7) / 1e9,
            status=499 if estimated else rng.choice([200, 200, 200, 429, 500]),
            estimated=estimated))
    return found


WINDOWS = [
    (None, None),
    (0.0, None),
    (at(2027, 12, 31), at(2028, 1, 2)),  # whole days only
    (at(2027, 12, 30, 7, 30), at(2028, 3, 1, 5)),  # partial at both ends, empty days between
    (at(2028, 2, 29, 1), at(2028, 2, 29, 20)),  # within one day
    (None, at(2028, 1, 1, 12)),
    (at(2028, 2, 28, 12), None),
    (math.nextafter(at(2028, 1, 1), 0.0), at(2028, 2, 29)),  # from the float before midnight
]
GROUPINGS = [(), (D.DAY,), (D.TEAM, D.KEY), (D.DAY, D.USER), (D.ROUTE, D.DEPLOYMENT, D.DAY),
             (D.KEY, D.TEAM, D.USER, D.ROUTE, D.DEPLOYMENT, D.DAY)]
FILTERS = [(None, None), ("engineering", None), (None, "ops/ü:1"), ("a b", "ci-bot"),
           ("nobody", None)]


async def assert_summed_as_records(store: Store, written: Sequence[LedgerRecord]) -> None:
    """Every window, grouping and filter above answers as the records summed one by one
    (the first record of a request id is the one kept)."""
    kept: dict[str, LedgerRecord] = {}
    for record in written:
        kept.setdefault(record.request_id, record)
    for since, until in WINDOWS:
        for team, key in FILTERS:
            for group_by in GROUPINGS:
                query = UsageQuery(group_by=group_by, since=since, until=until, team=team,
                                   key=key)
                assert await store.summary(query) == summarize(kept.values(), query), query


@pytest.fixture
async def replica(store: Store, redis_url: str, namespace: str,
                  clock: ManualClock) -> AsyncIterator[Store]:
    """A second writer of ``store``'s ledger: another replica on its Redis namespace, or
    another process's store on its SQLite file."""
    second: Store
    if isinstance(store, EmbeddedStore):
        second = await EmbeddedStore.open(store.path, clock=clock)
    else:
        second = RedisStore.from_url(redis_url, namespace=namespace, clock=clock)
    yield second
    await second.aclose()


async def test_summaries_from_daily_totals_are_the_records_summed(
    store: Store, replica: Store
) -> None:
    """Two writers at once, one request sent by both (counted once), and records of
    earlier days written after their days' totals were read (late)."""
    early, later = records(150, "early", 1), records(250, "later", 2)
    both = later[:20]
    await asyncio.gather(*(writer.record(record)
                           for writer, part in ((store, later), (replica, later[100:] + both))
                           for record in part))
    await assert_summed_as_records(store, later)
    await asyncio.gather(*(writer.record(record) for writer, part in
                           ((store, early[:75]), (replica, early[75:])) for record in part))
    await assert_summed_as_records(replica, later + early)
    [cut] = [row for row in await store.summary(UsageQuery(group_by=(D.DEPLOYMENT,)))
             if row.deployment == "cut"]  # estimated records only: a row, of no request
    assert cut.requests == cut.errors == 0 < cut.estimated_cost == cut.cost


async def test_a_whole_days_summary_on_redis_reads_their_totals_not_their_records(
    private_redis: PrivateRedis,
) -> None:
    """It read every record of the window, each a hash: 200k records took 33 s."""
    store = RedisStore.from_url(private_redis.url)
    watcher = redis.Redis.from_url(private_redis.url)
    try:
        for n in range(300):
            await store.record(ledger_record(f"r{n}", team="t", at=DAYS[0] + n * 720))
        query = UsageQuery(group_by=(D.DAY,), team="t", since=DAYS[0], until=DAYS[0] + 3 * DAY)
        await store.summary(query)  # the one-off pass over older records is done
        before = _calls(watcher, "hgetall")
        rows = await store.summary(query)
        assert _calls(watcher, "hgetall") - before == 2 * 3  # a day: its totals, its audio
        assert [row.requests for row in rows] == [120, 120, 60]
    finally:
        watcher.close()
        await store.aclose()


def _calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats").get(f"cmdstat_{command}", {"calls": 0})
    return int(stats["calls"])


async def test_a_whole_days_summary_in_sqlite_reads_their_totals_not_their_records(
    tmp_path: Path,
) -> None:
    """It read every record of the window: 200k records took 0.9 to 1.4 s, and a month
    of a busy gateway's many times that."""
    path = tmp_path / "spend.sqlite"
    db = await SQLiteFile.open(path)
    written = records(60, "r", 3)
    await db.call(lambda connection: [insert_record(record, connection) for record in written])
    await db.aclose()
    connection = sqlite3.connect(path)
    tables: set[str] = set()

    def note(action: int, table: str | None, *_: object) -> int:
        if action == sqlite3.SQLITE_READ and table is not None:
            tables.add(table)
        return sqlite3.SQLITE_OK

    connection.set_authorizer(note)
    try:
        whole = UsageQuery(group_by=(D.DAY, D.TEAM), team="engineering", since=DAYS[0],
                           until=DAYS[2] + DAY)
        assert usage(whole, connection) == summarize(written, whole)
        assert "ledger" not in tables and "ledger_daily" in tables
        partial = UsageQuery(group_by=(D.DAY,), since=DAYS[0] + 3600, until=DAYS[2] + DAY)
        assert usage(partial, connection) == summarize(written, partial)
        assert "ledger" in tables  # its first day's records
    finally:
        connection.close()


async def test_records_sent_late_from_an_outbox_are_counted_once(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """A replica that lost Redis keeps its records in its outbox while another writes
    on; they arrive later, into days whose totals were read meanwhile. A record sent
    twice (its reply lost, then sent again), and one an older aigw left in the outbox
    file (no days' totals in its script), are counted once too."""
    link = Link(private_redis.port)
    await link.start()
    cut_off = RedisStore.from_url(link.url, timeout=0.3, probe_interval=0.05,
                                  outbox=MemoryOutbox())
    other = RedisStore.from_url(private_redis.url)
    late, on_time = records(60, "late", 4), records(60, "on-time", 5)
    try:
        await cut_off.record(on_time[0])  # connected before the link is cut
        link.cut()
        for record in late:
            await cut_off.record(record)
        assert not cut_off.available
        for record in on_time:
            await other.record(record)
        await assert_summed_as_records(other, on_time)
        await link.mend()
        cut_off.flush_soon()
        await eventually("the outbox's records",
                         lambda: in_ledger(private_redis.url, [r.request_id for r in late]))
        await assert_summed_as_records(other, on_time + late)
    finally:
        await cut_off.aclose()
        await other.aclose()
        await link.aclose()

    path = tmp_path / "outbox.sqlite"
    outbox = await FileOutbox.open(path)
    ledger = RedisLedger(aioredis.Redis.from_url(private_redis.url), "aigw")
    await outbox.put(ledger.record(late[0]))  # delivered already
    older = [ledger_record("older-v2", key="ops/ü:1", team="a b", at=DAYS[4] + 60),
             ledger_record("older-v2:mini:1", key="ops/ü:1", team="a b", at=DAYS[4] + 60,
                           deployment="mini", status=499, estimated=True)]
    for record in older:
        await outbox.put(Invocation(
            "ledger_record",
            (f"aigw:rec:{quote(record.request_id, safe='')}", "aigw:ledger",
             f"aigw:ledger:key:{quote('ops/ü:1', safe='')}", "aigw:ledger:team:a%20b"),
            (record.request_id, record.at, 0, record.at, "aigw:rec:",
             *(item for pair in encode_record(record).items() for item in pair))))
    await outbox.aclose()
    sender = RedisStore.from_url(private_redis.url, outbox=await FileOutbox.open(path))
    try:
        sender.flush_soon()
        await eventually("the outbox file sent", lambda: in_ledger(
            private_redis.url, [record.request_id for record in older]))
        await assert_summed_as_records(sender, on_time + late + older)
    finally:
        await sender.aclose()


async def test_a_sqlite_ledger_written_before_daily_totals_gets_them_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file an older aigw wrote has records and no ``ledger_daily``: they are summed
    into it when it is opened, once, and records written then are added as written."""
    path = tmp_path / "spend.sqlite"
    older = records(120, "older", 6)
    with sqlite3.connect(path) as connection:
        connection.executescript(SCHEMA)
        for record in older:
            insert_record(record, connection)
    connection.close()
    newer = records(40, "newer", 7)
    store = await EmbeddedStore.open(path)
    try:
        await assert_summed_as_records(store, older)
        for record in newer:
            await store.record(record)
    finally:
        await store.aclose()
    reopened = await EmbeddedStore.open(path)
    try:
        await assert_summed_as_records(reopened, older + newer)
    finally:
        await reopened.aclose()
    assert caplog.text.count("summed the ledger's records into daily totals") == 1


async def test_redis_records_written_before_daily_totals_are_summed_once(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Records an older aigw wrote (straight into the ledger, or indexed by key and
    team too) are in no day's totals: the first summary adds them, once, working out
    their days and groups as a record's script is given them, and not the records this
    version wrote meanwhile."""
    client = redis.Redis.from_url(private_redis.url)
    oldest, older = records(90, "v1", 8), records(90, "v2", 9)
    pipe = client.pipeline(transaction=False)
    for n, record in enumerate(oldest + older):
        pipe.hset(f"aigw:rec:{quote(record.request_id, safe='')}",
                  mapping=encode_record(record))
        pipe.zadd("aigw:ledger", {record.request_id: record.at})
        if n >= len(oldest):
            for kind, name in (("key", record.key), ("team", record.team)):
                if name is not None:
                    pipe.zadd(f"aigw:ledger:{kind}:{quote(name, safe='')}",
                              {record.request_id: record.at})
    pipe.execute()
    client.close()
    newer = records(60, "v3", 10)
    for _ in range(2):  # the second replica finds them summed
        store = RedisStore.from_url(private_redis.url)
        try:
            for record in newer:
                await store.record(record)
            await assert_summed_as_records(store, oldest + older + newer)
        finally:
            await store.aclose()
    assert caplog.text.count("to add those an older aigw wrote to the daily totals") == 1


async def test_days_past_the_retention_are_summed_no_more(
    kept_a_day: Store, clock: ManualClock, redis_url: str, namespace: str
) -> None:
    """The days' totals lose the records a retention deletes, and go with their days."""
    now = DAYS[2] + 6 * 3600  # 2028-01-01T06:00: what is before 12-31T06:00 is past
    written = [record for record in records(120, "r", 11) if record.at < now]
    clock.at = DAYS[0]
    for record in written:
        await kept_a_day.record(record)
    clock.at = now
    last = ledger_record("last", at=now)
    await kept_a_day.record(last)
    kept = [record for record in [*written, last] if record.at >= now - DAY]
    assert len(kept) < len(written)
    await assert_summed_as_records(kept_a_day, kept)
    if isinstance(kept_a_day, RedisStore):  # the totals go once the day is past it
        client = redis.Redis.from_url(redis_url)
        try:
            assert 0 < client.pttl(f"{namespace}:ledger:day:2027-12-31") <= 2 * DAY * 1000
            # and the day's audio tokens with them (some of its records have audio)
            assert 0 < client.pttl(f"{namespace}:ledger:day:2027-12-31:audio") <= 2 * DAY * 1000
        finally:
            client.close()
