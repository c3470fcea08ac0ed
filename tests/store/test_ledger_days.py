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

import pytest

from aigw.runtime.store import (
    Dimension,
    EmbeddedStore,
    LedgerRecord,
    RedisStore,
    Store,
    UsageQuery,
)
from aigw.runtime.store.sqlite_file import SCHEMA, SQLiteFile, insert_record, usage
from aigw.runtime.store.usage import summarize

from .conftest import ManualClock
from .test_contract import DAY, ledger_record

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


async def test_days_past_the_retention_are_summed_no_more(
    kept_a_day: Store, clock: ManualClock
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
