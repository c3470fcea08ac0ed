"""The spend ledger's indexes and retention: a key's or team's summary reads its own
records only (on Redis, where summaries are summed in Python), records an older aigw
wrote are indexed once, and records past the retention are deleted, on both stores."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import quote

import pytest
import redis

from aigw.runtime.store import (
    Dimension,
    RedisStore,
    Store,
    UsageQuery,
    UsageRow,
)
from aigw.runtime.store.factory import open_store
from aigw.runtime.store.outbox import FileOutbox, Invocation
from aigw.runtime.store.redis_ledger import encode_record

from ..redis_server import PrivateRedis
from .conftest import ManualClock
from .test_contract import DAY, RECORD, ledger_record

BUSY = [ledger_record(f"busy-{n}", key="busy", team="big", at=RECORD.at + n)
        for n in range(300)]
QUIET = [ledger_record(f"quiet-{n}", key="quiet", team="small", at=RECORD.at + n)
         for n in range(2)]


def _hgetalls(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_hgetall", {"calls": 0})
    return int(stats["calls"])


async def test_a_keys_or_teams_summary_reads_only_its_own_records(
    private_redis: PrivateRedis,
) -> None:
    """It walked the whole ledger and filtered in Python: 200k records of another team
    made a key with no usage wait 28.8 s for its summary (and slowed the replica's chat)."""
    store = RedisStore.from_url(private_redis.url)
    watcher = redis.Redis.from_url(private_redis.url)
    try:
        for record in BUSY + QUIET:
            await store.record(record)
        await store.summary(UsageQuery(key="nobody"))  # indexes what came before, once
        watcher.config_resetstat()
        mine = await store.summary(UsageQuery(group_by=(Dimension.KEY,), key="quiet"))
        assert mine == (UsageRow(key="quiet", requests=2, tokens_in=200, tokens_out=40,
                                 cost=2 * RECORD.cost),)
        team = await store.summary(UsageQuery(group_by=(Dimension.TEAM,), team="small"))
        assert [(row.team, row.requests) for row in team] == [("small", 2)]
        assert _hgetalls(watcher) == 2 * 2  # the day's totals of each and their audio, not 302
        busy = await store.summary(UsageQuery(group_by=(), key="busy", team="big",
                                              since=RECORD.at + 100))
        assert [row.requests for row in busy] == [200]  # paged from its own index
        assert await store.summary(UsageQuery(key="quiet", team="big")) == ()
    finally:
        watcher.close()
        await store.aclose()


async def test_records_an_older_version_wrote_are_in_key_and_team_summaries(
    private_redis: PrivateRedis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Written before the key and team indexes existed (straight into the ledger, or
    left in an outbox file by the older gateway): indexed once, not lost from summaries."""
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    pipe = client.pipeline(transaction=False)
    for n in range(2_500):  # pages of the indexing, a thousand of them at one time
        older = ledger_record(f"older:{n}", key="quiet", team="small",
                              at=RECORD.at + (0 if n % 3 else n))
        pipe.hset(f"aigw:rec:{quote(older.request_id, safe='')}", mapping=encode_record(older))
        pipe.zadd("aigw:ledger", {older.request_id: older.at})
    pipe.execute()
    queued = ledger_record("queued", key="quiet", team="small")
    outbox = await FileOutbox.open(tmp_path / "outbox.sqlite")
    args = [queued.request_id, queued.at]
    for field, value in encode_record(queued).items():
        args += [field, value]
    await outbox.put(Invocation("record", ("aigw:rec:queued", "aigw:ledger"), tuple(args)))
    await outbox.aclose()

    try:
        await (await open_store(private_redis.url, root=tmp_path,
                                outbox="outbox.sqlite")).aclose()  # sends the outbox's row
        for _ in range(2):  # the second gateway finds them indexed
            store = RedisStore.from_url(private_redis.url)
            try:
                for query in (UsageQuery(group_by=(), key="quiet"),
                              UsageQuery(group_by=(), team="small")):
                    assert [row.requests for row in await store.summary(query)] == [2_501]
            finally:
                await store.aclose()
    finally:
        client.close()
    assert caplog.text.count("indexing the ledger's 2501 records") == 1


async def test_records_past_the_ledger_retention_are_deleted(
    kept_a_day: Store, clock: ManualClock, redis_url: str, namespace: str
) -> None:
    """Neither store ever deleted a ledger record: on Redis, every summary walked all."""
    old = ledger_record("old/ü:1", key="quiet", team="small")
    await kept_a_day.record(old)
    clock.advance(2 * DAY)
    await kept_a_day.record(ledger_record("new", key="quiet", team="small", at=clock.at))
    for query in (UsageQuery(group_by=()), UsageQuery(group_by=(), key="quiet"),
                  UsageQuery(group_by=(), team="small")):
        assert [row.requests for row in await kept_a_day.summary(query)] == [1], query
    if isinstance(kept_a_day, RedisStore):
        client = redis.Redis.from_url(redis_url)
        try:
            assert not client.exists(f"{namespace}:rec:{quote(old.request_id, safe='')}")
            assert client.pttl(f"{namespace}:rec:new") > 0  # goes by itself in a day
        finally:
            client.close()


async def test_the_ledger_index_walk_is_quiet_on_a_fresh_ledger(
    redis_store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "aigw.store")
    assert await redis_store.summary(UsageQuery(key="nobody")) == ()
    assert "indexing" not in caplog.text
