"""The embedded store's file: records are committed before ``record`` returns, and the
ledger and what budgets spent survive closing and reopening it."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from aigw.runtime.errors import StoreUnavailable
from aigw.runtime.store import (
    Budget,
    Dimension,
    EmbeddedStore,
    Limits,
    Period,
    RedisStore,
    Reservation,
    Scope,
    UsageQuery,
    UsageRow,
    open_store,
)
from aigw.runtime.store.sqlite_file import SQLiteFile, insert_record

from .conftest import ManualClock
from .test_contract import RECORD


async def test_a_record_is_committed_when_record_returns(tmp_path: Path) -> None:
    path = tmp_path / "spend.sqlite"
    store = await EmbeddedStore.open(path)
    try:
        await store.record(RECORD)

        with sqlite3.connect(path) as reader:  # another connection sees the commit
            rows = reader.execute("SELECT request_id, cost_nanos FROM ledger").fetchall()
        assert rows == [("req", 27_000)]
    finally:
        await store.aclose()


async def test_the_ledger_and_budget_spend_survive_a_reopen(
    tmp_path: Path, clock: ManualClock
) -> None:
    path = tmp_path / "spend.sqlite"
    limits = [Limits(Scope.TEAM, "engineering", budget=Budget(1.0, Period.MONTH))]
    store = await EmbeddedStore.open(path, clock=clock)
    reservation = await store.reserve("req", limits, tokens=100, cost=0.5)
    assert isinstance(reservation, Reservation)
    await store.settle(reservation, tokens=90, cost=0.4)
    await store.record(replace(RECORD, cost=0.4))
    await store.record(replace(RECORD, request_id="req-2", cost=0.0, status=429))
    await store.aclose()

    reopened = await EmbeddedStore.open(path, clock=clock)
    try:
        (status,) = await reopened.budgets(limits)
        assert (status.spent, status.held) == (0.4, 0.0)
        assert await reopened.summary(UsageQuery(group_by=(Dimension.TEAM,))) == (
            UsageRow(
                team="engineering", requests=2, errors=1, tokens_in=200, tokens_out=40, cost=0.4
            ),
        )
        await reopened.record(replace(RECORD, cost=9.9))  # still recorded once
        (again,) = await reopened.summary(UsageQuery(group_by=()))
        assert again.requests == 2
        assert isinstance(await reopened.reserve("next", limits, tokens=0, cost=0.6), Reservation)
    finally:
        await reopened.aclose()


async def test_a_ledger_written_before_cached_tokens_were_counted_is_kept(
    tmp_path: Path,
) -> None:
    """A file an older aigw wrote has no tokens_cached column: it gets one, its rows
    count none, and new rows are written into it."""
    path = tmp_path / "spend.sqlite"
    with sqlite3.connect(path) as older:
        older.execute(
            'CREATE TABLE ledger (request_id TEXT PRIMARY KEY, at REAL NOT NULL, day TEXT NOT '
            'NULL, "key" TEXT, team TEXT, "user" TEXT, route TEXT, deployment TEXT, tokens_in '
            "INTEGER NOT NULL, tokens_out INTEGER NOT NULL, cost_nanos INTEGER NOT NULL, "
            "latency_ms REAL NOT NULL, status INTEGER NOT NULL, fingerprint TEXT NOT NULL)")
        older.execute("INSERT INTO ledger VALUES ('old', ?, '2026-01-01', 'ci-bot', "
                      "'engineering', NULL, 'fast', 'gpt-4o-mini', 100, 20, 27000, 412.5, 200, "
                      "'ff')", (RECORD.at,))
        older.execute("PRAGMA user_version = 1")
    older.close()
    store = await EmbeddedStore.open(path)
    try:
        await store.record(replace(RECORD, tokens_cached=60))
        assert await store.summary(UsageQuery(group_by=(Dimension.TEAM,))) == (
            UsageRow(team="engineering", requests=2, tokens_in=200, tokens_out=40,
                     tokens_cached=60, cost=0.000054),
        )
    finally:
        await store.aclose()


async def test_a_closed_store_says_it_is_unavailable(tmp_path: Path) -> None:
    store = await EmbeddedStore.open(tmp_path / "spend.sqlite")
    await store.aclose()

    with pytest.raises(StoreUnavailable, match="is closed") as raised:
        await store.record(RECORD)
    assert raised.value.status == 503


async def test_a_file_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(StoreUnavailable, match="unable to open database file"):
        await EmbeddedStore.open(tmp_path / "a-directory")


async def test_open_store_reads_the_settings_url(tmp_path: Path, redis_url: str) -> None:
    default = await open_store("embedded", root=tmp_path)
    chosen = await open_store("embedded:data/spend.sqlite", root=tmp_path, reservation_ttl=5)
    shared = await open_store(redis_url, on_unavailable="fail_open")
    try:
        assert isinstance(default, EmbeddedStore)
        assert default.path == tmp_path / "aigw.sqlite"
        assert default.path.exists()
        assert isinstance(chosen, EmbeddedStore)
        assert chosen.path == tmp_path / "data" / "spend.sqlite"
        assert isinstance(shared, RedisStore)
    finally:
        for store in (default, chosen, shared):
            await store.aclose()

    with pytest.raises(ValueError, match="unknown store 'mysql://db'"):
        await open_store("mysql://db")


async def test_a_hold_still_expires_after_many_others_were_settled(
    embedded_store: EmbeddedStore, clock: ManualClock
) -> None:
    limits = [Limits(Scope.TEAM, "engineering", budget=Budget(100.0))]
    crashed = await embedded_store.reserve("crashed", limits, tokens=0, cost=1.0, ttl=60.0)
    assert isinstance(crashed, Reservation)
    for n in range(1_500):  # enough settled reservations to compact the timers
        reservation = await embedded_store.reserve(f"r{n}", limits, tokens=0, cost=0.01)
        assert isinstance(reservation, Reservation)
        await embedded_store.settle(reservation, tokens=0, cost=0.0)

    clock.advance(61.0)

    (status,) = await embedded_store.budgets(limits)
    assert (status.spent, status.held) == (0.0, 0.0)


@pytest.mark.parametrize("single", [False, True], ids=["in a savepoint", "one statement"])
async def test_a_failing_write_does_not_fail_the_others_committed_with_it(
    tmp_path: Path, single: bool
) -> None:
    db = await SQLiteFile.open(tmp_path / "spend.sqlite")

    def broken(connection: sqlite3.Connection) -> None:
        connection.execute("INSERT INTO ledger (request_id) VALUES ('half a row')")

    try:
        results = await asyncio.gather(
            db.call(partial(insert_record, RECORD), single=single),
            db.call(broken, single=single),
            db.call(partial(insert_record, replace(RECORD, request_id="req-2")), single=single),
            return_exceptions=True,
        )
        assert results[0] is True and results[2] is True
        assert isinstance(results[1], StoreUnavailable)
        assert "NOT NULL constraint failed: ledger.at" in str(results[1])
        rows = await db.call(lambda c: c.execute("SELECT request_id FROM ledger").fetchall())
        assert sorted(rows) == [("req",), ("req-2",)]
    finally:
        await db.aclose()
