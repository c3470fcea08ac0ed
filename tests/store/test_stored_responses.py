"""Kept responses in both stores: put, get, delete, expiry, and the key they belong to."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aigw.runtime.errors import StoreUnavailable
from aigw.runtime.store import open_store
from aigw.runtime.store.conversations import KeptConversation
from aigw.runtime.store.stored_responses import (
    PURGE_EVERY_S,
    KeptResponse,
    RedisResponses,
    SQLiteResponses,
    open_responses,
)

from ..fakes.serve import free_port
from .conftest import ManualClock, drop_namespace
from .test_contract import ledger_record


@pytest.fixture
async def sqlite_responses(tmp_path: Path,
                           clock: ManualClock) -> AsyncIterator[SQLiteResponses]:
    store = await SQLiteResponses.open(tmp_path / "aigw-responses.sqlite", clock=clock.now)
    yield store
    await store.aclose()


@pytest.fixture
async def redis_responses(redis_url: str, namespace: str) -> AsyncIterator[RedisResponses]:
    store = RedisResponses(redis_url, namespace)
    yield store
    await store.aclose()
    drop_namespace(redis_url, namespace)


async def test_sqlite_keeps_until_expiry_and_purges(
    sqlite_responses: SQLiteResponses, clock: ManualClock, tmp_path: Path,
) -> None:
    await sqlite_responses.put("resp_1", "alice", b'{"a": 1}', b'{"i": 1}', ttl_s=60)
    assert await sqlite_responses.get("resp_1") == KeptResponse("alice", b'{"a": 1}', b'{"i": 1}')
    assert await sqlite_responses.get("resp_1", items=False) == KeptResponse("alice", b'{"a": 1}')
    assert await sqlite_responses.get("resp_2") is None
    clock.advance(61)
    assert await sqlite_responses.get("resp_1") is None
    assert await sqlite_responses.delete("resp_1") is False  # expired: nothing to forget
    clock.advance(PURGE_EVERY_S)
    await sqlite_responses.put("resp_3", "alice", b"{}", b"", ttl_s=60)  # purges the expired
    await sqlite_responses.get("resp_3")  # behind the purge on the writer thread
    with sqlite3.connect(tmp_path / "aigw-responses.sqlite") as connection:
        assert connection.execute("SELECT id FROM responses").fetchall() == [("resp_3",)]
    assert await sqlite_responses.delete("resp_3") is True
    assert await sqlite_responses.get("resp_3") is None


async def test_sqlite_keeps_them_across_a_reopen(tmp_path: Path, clock: ManualClock) -> None:
    first = await SQLiteResponses.open(tmp_path / "aigw-responses.sqlite", clock=clock.now)
    await first.put("resp_1", "alice", b"{}", b"", ttl_s=60)
    await first.aclose()
    again = await SQLiteResponses.open(tmp_path / "aigw-responses.sqlite", clock=clock.now)
    try:
        assert await again.get("resp_1") == KeptResponse("alice", b"{}")
    finally:
        await again.aclose()


async def test_redis_keeps_until_expiry(redis_responses: RedisResponses) -> None:
    await redis_responses.put("resp_1", "alice", b'{"a": 1}', b'{"i": 1}', ttl_s=0.2)
    assert await redis_responses.get("resp_1") == KeptResponse("alice", b'{"a": 1}', b'{"i": 1}')
    assert await redis_responses.get("resp_1", items=False) == KeptResponse("alice", b'{"a": 1}')
    await redis_responses.put("resp_2", "bob", b"{}", b"", ttl_s=60)
    assert await redis_responses.delete("resp_2") is True
    assert await redis_responses.delete("resp_2") is False
    await asyncio.sleep(0.3)
    assert await redis_responses.get("resp_1") is None


async def test_redis_down_is_unavailable_and_rests() -> None:
    store = RedisResponses(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreUnavailable, match="failed"):
            await store.get("resp_1")
        with pytest.raises(StoreUnavailable, match="did not answer a moment ago"):
            await store.put("resp_1", "alice", b"{}", b"", ttl_s=60)  # not tried while it rests
    finally:
        await store.aclose()


def _holding_responses(folder: Path) -> list[str]:
    """The SQLite files in ``folder`` with a responses table."""
    found = []
    for path in sorted(folder.glob("*.sqlite")):
        with sqlite3.connect(path) as connection:
            if connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'responses'"
                                  ).fetchone():
                found.append(path.name)
    return found


async def test_embedded_responses_do_not_take_the_ledgers_write_lock(tmp_path: Path) -> None:
    # A kept response of megabytes holds its file's write lock while it is written; the
    # ledger's records (every request awaits its own) must not wait behind it.
    ledger = await open_store("embedded", root=tmp_path)
    responses = await open_responses("embedded", tmp_path)
    try:
        await responses.put("resp_1", "alice", b"{}", b"", ttl_s=60)
        assert _holding_responses(tmp_path) == ["aigw-responses.sqlite"]
        writing = sqlite3.connect(tmp_path / "aigw-responses.sqlite", isolation_level=None)
        writing.execute("BEGIN IMMEDIATE")  # as the response writer does, for a long write
        try:
            await asyncio.wait_for(ledger.record(ledger_record("req-1")), timeout=1.0)
        finally:
            writing.execute("ROLLBACK")
            writing.close()
    finally:
        await responses.aclose()
        await ledger.aclose()


async def test_sqlite_reads_a_chain_by_its_previous_links(
        sqlite_responses: SQLiteResponses) -> None:
    await _chain_walked(sqlite_responses)


async def test_redis_reads_a_chain_by_its_previous_links(
        redis_responses: RedisResponses) -> None:
    await _chain_walked(redis_responses)


async def _chain_walked(store: SQLiteResponses | RedisResponses) -> None:
    """Three responses, each continuing the one before: read newest first, as far as the
    links, the bytes and the records kept allow."""
    await store.put("resp_1", "alice", b"{1}", b"[a]", ttl_s=60)
    await store.put("resp_2", "alice", b"{2}", b"[b]", ttl_s=60, previous="resp_1")
    await store.put("resp_3", "alice", b"{3}", b"[c]", ttl_s=60, previous="resp_2")
    third, second, first = (KeptResponse("alice", b"{3}", b"[c]", "resp_2"),
                            KeptResponse("alice", b"{2}", b"[b]", "resp_1"),
                            KeptResponse("alice", b"{1}", b"[a]"))
    assert await store.chain("resp_3", 10, 1000) == [third, second, first]
    assert await store.get("resp_3") == third
    assert await store.get("resp_3", owner="alice") == third
    assert await store.get("resp_3", owner="bob") is None  # another key's: not read
    assert await store.chain("resp_3", 2, 1000) == [third, second]  # at most 2 links
    assert await store.chain("resp_3", 10, 7) == [third, second]  # 12 bytes read: past 7
    assert await store.chain("resp_4", 10, 1000) == []
    # Another key's records are not read: the walk ends before them.
    assert await store.chain("resp_3", 10, 1000, owner="alice") == [third, second, first]
    assert await store.chain("resp_3", 10, 1000, owner="bob") == []
    await store.put("resp_5", "bob", b"{5}", b"[e]", ttl_s=60, previous="resp_3")
    assert await store.chain("resp_5", 10, 1000, owner="bob") == [
        KeptResponse("bob", b"{5}", b"[e]", "resp_3")]
    assert await store.delete("resp_2") is True
    assert await store.chain("resp_3", 10, 1000) == [third]  # the walk stops at the gap


async def test_sqlite_keeps_a_chain_as_long_as_its_newest_turn(
        sqlite_responses: SQLiteResponses, clock: ManualClock) -> None:
    # Each turn holds only its own items: if the first turn expired on its own schedule,
    # a conversation continued every day would lose its start after responses_ttl_s.
    await sqlite_responses.put("resp_1", "alice", b"{1}", b"[a]", ttl_s=60)
    clock.advance(40)
    await sqlite_responses.put("resp_2", "alice", b"{2}", b"[b]", ttl_s=60, previous="resp_1")
    clock.advance(40)  # 80 s after resp_1 was kept, 40 s after resp_2
    await sqlite_responses.put("resp_3", "alice", b"{3}", b"[c]", ttl_s=60, previous="resp_2")
    clock.advance(50)  # 130 s after resp_1: alive only through resp_3's 60 s
    assert [kept.body for kept in await sqlite_responses.chain("resp_3", 10, 1000)] == [
        b"{3}", b"{2}", b"{1}"]
    clock.advance(11)
    assert await sqlite_responses.chain("resp_3", 10, 1000) == []


async def test_redis_keeps_a_chain_as_long_as_its_newest_turn(
        redis_responses: RedisResponses) -> None:
    await redis_responses.put("resp_1", "alice", b"{1}", b"[a]", ttl_s=0.3)
    await redis_responses.put("resp_2", "alice", b"{2}", b"[b]", ttl_s=60, previous="resp_1")
    await redis_responses.put("resp_3", "alice", b"{3}", b"[c]", ttl_s=60, previous="resp_2")
    await asyncio.sleep(0.4)  # past resp_1's own expiry
    assert [kept.body for kept in await redis_responses.chain("resp_3", 10, 1000)] == [
        b"{3}", b"{2}", b"{1}"]
    ttl_ms = await redis_responses.redis.pttl(redis_responses._prefix + "resp_1")
    assert 59_000 < ttl_ms <= 60_000


async def test_sqlite_keeps_a_conversation_as_long_as_a_response_made_in_it(
        sqlite_responses: SQLiteResponses, clock: ManualClock) -> None:
    # A response made in a conversation holds its own items only: its conversation's
    # items (deleted or not) must outlive it, and the chain continuing it.
    conversations = sqlite_responses.conversations()
    await conversations.create("conv_1", "alice", 1700, b"{}", [("msg_1", b"{}")], 60)
    assert await conversations.delete("conv_1") is True
    clock.advance(40)
    await sqlite_responses.put("resp_1", "alice", b"{1}", b"[a]", ttl_s=60,
                               conversation="conv_1")
    clock.advance(40)
    await sqlite_responses.put("resp_2", "alice", b"{2}", b"[b]", ttl_s=60, previous="resp_1")
    clock.advance(50)  # 130 s after the conversation's last change, 50 s after resp_2
    assert await conversations.held("conv_1", "msg_1") == (b"{}",)
    clock.advance(11)
    assert await conversations.held("conv_1", "msg_1") is None


async def test_redis_keeps_a_conversation_as_long_as_a_response_made_in_it(
        redis_responses: RedisResponses) -> None:
    conversations = redis_responses.conversations()
    await conversations.create("conv_1", "alice", 1700, b"{}", [("msg_1", b"{}")], 0.3)
    await conversations.create("conv_2", "alice", 1700, b"{}", [("msg_1", b"{}")], 0.3)
    assert await conversations.delete("conv_1") is True
    await redis_responses.put("resp_1", "alice", b"{1}", b"[a]", ttl_s=0.3,
                              conversation="conv_1")
    await redis_responses.put("resp_2", "alice", b"{2}", b"[b]", ttl_s=60, previous="resp_1")
    await redis_responses.put("resp_3", "alice", b"{3}", b"[c]", ttl_s=60,
                              conversation="conv_2")
    await asyncio.sleep(0.4)  # past the conversations' and resp_1's own expiry
    assert await conversations.held("conv_1", "msg_1") == (b"{}",)
    assert await conversations.held("conv_2", "msg_1") == (b"{}",)
    assert (await conversations.get("conv_2", items=True) or KeptConversation("", 0, b"")
            ).items == (b"{}",)


async def test_a_file_an_older_aigw_made_gains_the_previous_and_conversation_columns(
        tmp_path: Path, clock: ManualClock) -> None:
    file = tmp_path / "aigw-responses.sqlite"
    with sqlite3.connect(file) as connection:  # the table as aigw made it before chains
        connection.execute(
            'CREATE TABLE responses (id TEXT PRIMARY KEY, "key" TEXT NOT NULL, created_at REAL '
            "NOT NULL, expires_at REAL NOT NULL, body BLOB NOT NULL, items BLOB NOT NULL)")
        connection.execute("INSERT INTO responses VALUES ('resp_old', 'alice', 0, ?, ?, ?)",
                           (clock.now() + 60, b"{}", b"[whole]"))
    connection.close()
    store = await SQLiteResponses.open(file, clock=clock.now)
    try:
        await store.put("resp_new", "alice", b"{}", b"[own]", ttl_s=60, previous="resp_old")
        await store.put("resp_conv", "alice", b"{}", b"[own]", ttl_s=60, conversation="c")
        assert await store.chain("resp_new", 10, 1000) == [
            KeptResponse("alice", b"{}", b"[own]", "resp_old"),
            KeptResponse("alice", b"{}", b"[whole]")]
    finally:
        await store.aclose()
