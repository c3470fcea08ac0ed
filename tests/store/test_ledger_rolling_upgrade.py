"""A rolling upgrade past the ledger's audio tokens, on Redis: a replica still on the
version before them (aigw at commit 6364d43, its code taken from git and run in a
process of its own, ``older_replica.py``) and one on this version write records into the
same days' totals, each after the other, and both read every record's totals right, the
older without the audio tokens. An older replica's summaries failed on the totals a
newer one wrote."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from aigw.runtime.store import LedgerRecord, RedisStore, UsageQuery
from aigw.runtime.store.usage import summarize

from ..redis_server import REPO, PrivateRedis
from .test_ledger_audio import QUERIES, at, spoken

OLDER_VERSION = "6364d43"  # the last aigw without audio tokens on the ledger
AUDIO = ("tokens_audio_in", "tokens_audio_out")

# Written by each replica in turn (older, newer, older, newer), into the same days and
# groups; the older version's records have no audio tokens, as it counts none.
TURNS: tuple[tuple[str, tuple[LedgerRecord, ...]], ...] = (
    ("older", (
        spoken("older-1", at(2027, 12, 31, 9), tokens_in=120, tokens_out=40, cost=0.0012),
        spoken("older-2", at(2028, 1, 1, 7), key="ops", team=None, status=500, cost=0.0),
        spoken("older-2:gpt-4o-audio:1", at(2028, 1, 1, 7), key="ops", team=None,
               tokens_out=0, cost=0.0003, status=499, estimated=True),
    )),
    ("newer", (
        spoken("newer-1", at(2027, 12, 31, 20), tokens_in=300, tokens_out=500,
               tokens_audio_in=200, tokens_audio_out=420, cost=0.05),
        spoken("newer-2", at(2028, 1, 1, 8), key="ops", team=None, tokens_in=90,
               tokens_out=70, tokens_audio_in=20, tokens_audio_out=50, cost=0.005),
        spoken("newer-2:gpt-4o-audio:1", at(2028, 1, 1, 8), key="ops", team=None,
               tokens_in=90, tokens_out=30, tokens_audio_in=20, tokens_audio_out=25,
               cost=0.002, status=499, estimated=True),
    )),
    ("older", (
        spoken("older-3", at(2027, 12, 31, 22), tokens_in=70, tokens_out=10, cost=0.0007),
        spoken("older-4", at(2028, 1, 2, 10), tokens_in=10, tokens_out=5, cost=0.0001),
    )),
    ("newer", (
        spoken("newer-3", at(2027, 12, 31, 23), tokens_in=50, tokens_out=60,
               tokens_audio_out=60, cost=0.004),
        spoken("newer-4", at(2028, 1, 1, 9), key="ops", team=None, tokens_in=40,
               tokens_audio_in=40, cost=0.001),
    )),
)
EVERY_RECORD = tuple(record for _, records in TURNS for record in records)


@pytest.fixture(scope="module")
def older_aigw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose ``aigw`` package is the older version's (its aigw/, compiler/ and
    runtime/ laid out as installed: aigw.compiler, aigw.runtime)."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", OLDER_VERSION, "aigw",
             "compiler", "runtime"], capture_output=True, check=True, timeout=60).stdout
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"aigw {OLDER_VERSION} is not in this clone's history (a shallow "
                    f"clone? git fetch --unshallow): {exc.stderr.decode()}")
    root = tmp_path_factory.mktemp("older")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getmembers()
        for member in members:
            if not member.name.startswith("aigw/"):
                member.name = f"aigw/{member.name}"
        tar.extractall(root, members=members, filter="data")
    return root


async def older_replica(older_aigw: Path, url: str, records: tuple[LedgerRecord, ...],
                        queries: list[UsageQuery]) -> list[list[dict[str, Any]]]:
    """What the older version's replica answers to ``queries``, after writing
    ``records``."""
    request = {"url": url, "records": [dataclasses.asdict(record) for record in records],
               "queries": [{**dataclasses.asdict(query),
                            "group_by": [str(dimension) for dimension in query.group_by]}
                           for query in queries]}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, str(Path(__file__).parent / "older_replica.py")],
        input=json.dumps(request), capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(older_aigw)})
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert Path(answer["aigw"]).is_relative_to(older_aigw)  # the older code, not this one
    summaries: list[list[dict[str, Any]]] = answer["summaries"]
    return summaries


def without_audio(query: UsageQuery) -> list[dict[str, Any]]:
    """The summary of every record as the older version shows it: no audio tokens."""
    return [{name: value for name, value in dataclasses.asdict(row).items()
             if name not in AUDIO} for row in summarize(EVERY_RECORD, query)]


async def test_an_older_and_a_newer_replica_write_and_read_the_same_days_totals(
    private_redis: PrivateRedis, older_aigw: Path,
) -> None:
    store = RedisStore.from_url(private_redis.url)
    try:
        for version, records in TURNS:
            if version == "older":
                await older_replica(older_aigw, private_redis.url, records, [])
            else:
                for record in records:
                    await store.record(record)

        for query in QUERIES:
            assert await store.summary(query) == summarize(EVERY_RECORD, query), query
        assert await older_replica(older_aigw, private_redis.url, (), QUERIES) == [
            without_audio(query) for query in QUERIES]
        # and the newer replica reads them still, after the older one's summaries
        (row,) = await store.summary(UsageQuery(group_by=(), since=0.0))
        assert (row.requests, row.tokens_audio_in, row.tokens_audio_out) == (8, 280, 555)
    finally:
        await store.aclose()
