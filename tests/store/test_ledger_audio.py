"""Audio tokens on the spend ledger: each record's, summed in summaries (from the days'
totals and record by record alike), on both stores; and a ledger the version before
them wrote, read and written on: a SQLite file (its ledger and daily totals gain the
columns, as 0) and Redis data (records, days' totals of eight figures, and an outbox row
of the older record script), all of it read as having no audio.

``data/ledger_before_audio.sql`` (the SQLite file, dumped) and
``data/redis_ledger_before_audio.json`` (the Redis keys, and one record's queued script
call) were written by aigw at commit 6364d43, the last without audio on the ledger, from
the four records ``OLDER`` lists."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from aigw.runtime.store import (
    Dimension,
    EmbeddedStore,
    LedgerRecord,
    RedisStore,
    Store,
    UsageQuery,
    UsageRow,
)
from aigw.runtime.store.outbox import FileOutbox, Invocation
from aigw.runtime.store.usage import summarize

from ..redis_server import PrivateRedis
from .test_contract import ledger_record
from .test_redis_outage import eventually, in_ledger

DATA = Path(__file__).parent / "data"
D = Dimension


def at(year: int, month: int, day: int, hour: int = 0) -> float:
    return datetime(year, month, day, hour, tzinfo=UTC).timestamp()


def spoken(request_id: str, when: float, **fields: Any) -> LedgerRecord:
    return ledger_record(request_id, at=when, **{
        "key": "ci-bot", "team": "engineering", "user": None, "route": "speaker",
        "deployment": "gpt-4o-audio", **fields})


# What the fixtures hold, as records (none with audio).
OLDER = (
    spoken("old-1", at(2027, 12, 31, 9), tokens_in=120, tokens_out=40, cost=0.0012,
           latency_ms=80.0, fingerprint="ff"),
    spoken("old-2", at(2027, 12, 31, 18), tokens_in=120, tokens_out=40, tokens_cached=20,
           cost=0.001, latency_ms=80.0, fingerprint="ff"),
    spoken("old-3", at(2028, 1, 1, 7), tokens_in=120, tokens_out=40, cost=0.0,
           latency_ms=80.0, fingerprint="ff", key="ops", team=None, status=500),
    spoken("old-3:gpt-4o-audio:1", at(2028, 1, 1, 7), tokens_in=120, tokens_out=0,
           cost=0.0003, latency_ms=80.0, fingerprint="ff", key="ops", team=None, status=499,
           estimated=True),
)
# Written after the upgrade, into the same days and groups as the older ones and a day
# of their own; one an estimated record (a spoken stream's call cut short).
NEWER = (
    spoken("new-1", at(2027, 12, 31, 20), tokens_in=300, tokens_out=500,
           tokens_audio_in=200, tokens_audio_out=420, cost=0.05),
    spoken("new-2", at(2028, 1, 1, 8), key="ops", team=None, tokens_in=90, tokens_out=70,
           tokens_audio_in=20, tokens_audio_out=50, cost=0.005),
    spoken("new-2:gpt-4o-audio:1", at(2028, 1, 1, 8), key="ops", team=None, tokens_in=90,
           tokens_out=30, tokens_audio_in=20, tokens_audio_out=25, cost=0.002, status=499,
           estimated=True),
    spoken("new-3", at(2028, 1, 2, 10), tokens_in=50, tokens_out=60, tokens_audio_out=60,
           cost=0.004),
)
QUERIES = [
    UsageQuery(group_by=(D.DAY, D.TEAM), since=0.0),  # whole days: their totals
    UsageQuery(group_by=(D.KEY,), since=at(2027, 12, 31, 12), until=at(2028, 1, 2, 12)),
    UsageQuery(group_by=(D.USER, D.DAY), since=0.0),  # by the user: record by record
    UsageQuery(group_by=(), since=0.0, key="ops"),
    UsageQuery(group_by=(D.DAY,), since=0.0, team="engineering"),
]


async def assert_summed(store: Store, records: tuple[LedgerRecord, ...]) -> None:
    for query in QUERIES:
        assert await store.summary(query) == summarize(records, query), query


async def test_audio_tokens_are_recorded_and_summed(store: Store) -> None:
    await store.record(ledger_record("a", tokens_audio_in=30, tokens_audio_out=80))
    await store.record(ledger_record("b", tokens_audio_in=10))
    await store.record(ledger_record("c"))
    await store.record(ledger_record("c:mini:1", tokens_audio_out=5, status=499,
                                     estimated=True))

    assert await store.summary(UsageQuery(group_by=())) == (
        UsageRow(requests=3, tokens_in=400, tokens_out=80, tokens_audio_in=40,
                 tokens_audio_out=85, cost=0.000108, estimated_cost=0.000027),
    )


async def test_audio_tokens_of_whole_days_come_from_their_totals(store: Store) -> None:
    for record in NEWER:
        await store.record(record)

    (row,) = await store.summary(UsageQuery(group_by=(), since=0.0))
    assert (row.tokens_audio_in, row.tokens_audio_out) == (240, 555)
    await assert_summed(store, NEWER)


async def test_a_sqlite_ledger_written_before_audio_tokens_is_read_and_written_on(
    tmp_path: Path,
) -> None:
    """Its records read as no audio; its ledger_daily gains the columns, and its
    triggers sum them from then on (an older trigger would fail every insert)."""
    path = tmp_path / "aigw.sqlite"
    with sqlite3.connect(path) as older:
        older.executescript((DATA / "ledger_before_audio.sql").read_text())
    older.close()
    store = await EmbeddedStore.open(path)
    try:
        await assert_summed(store, OLDER)
        for record in NEWER:
            await store.record(record)
        await assert_summed(store, OLDER + NEWER)
    finally:
        await store.aclose()
    reopened = await EmbeddedStore.open(path)  # the change is made once
    try:
        await assert_summed(reopened, OLDER + NEWER)
    finally:
        await reopened.aclose()
    with sqlite3.connect(path) as reader:
        (user_version,) = reader.execute("PRAGMA user_version").fetchone()
        days = reader.execute("SELECT day, tokens_audio_in, tokens_audio_out FROM "
                              "ledger_daily ORDER BY day, \"key\"").fetchall()
    reader.close()
    assert user_version == 3
    assert days == [("2027-12-31", 200, 420), ("2028-01-01", 40, 75), ("2028-01-02", 0, 60)]


async def test_a_redis_ledger_written_before_audio_tokens_is_read_and_written_on(
    private_redis: PrivateRedis, tmp_path: Path,
) -> None:
    """Records with no audio fields and days' totals of eight figures read as no audio;
    the older version's queued record call (its script's name and arguments, from an
    outbox file) is sent as this version writes it; new records add to the older
    totals."""
    written = json.loads((DATA / "redis_ledger_before_audio.json").read_text())
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    for key, value in written["keys"].items():
        if "hash" in value:
            client.hset(key, mapping=value["hash"])
        elif "zset" in value:
            client.zadd(key, dict(value["zset"]))
        else:
            client.set(key, value["string"])
    client.close()
    queued = written["outbox"]
    assert queued["script"] == "ledger_record_totals"
    outbox = await FileOutbox.open(tmp_path / "outbox.sqlite")
    await outbox.put(Invocation(queued["script"], tuple(queued["keys"]),
                                tuple(queued["args"])))
    await outbox.aclose()
    store = RedisStore.from_url(private_redis.url,
                                outbox=await FileOutbox.open(tmp_path / "outbox.sqlite"))
    try:
        store.flush_soon()
        await eventually("the older outbox row sent",
                         lambda: in_ledger(private_redis.url, [OLDER[3].request_id]))
        await assert_summed(store, OLDER)
        for record in NEWER:
            await store.record(record)
        await assert_summed(store, OLDER + NEWER)
    finally:
        await store.aclose()


def test_the_fixtures_hold_the_records_listed() -> None:
    """OLDER is what the fixtures were written from (so the tests above compare with
    what they hold)."""
    dump = (DATA / "ledger_before_audio.sql").read_text()
    for record in OLDER:
        assert f"'{record.request_id}',{record.at!r}" in dump
