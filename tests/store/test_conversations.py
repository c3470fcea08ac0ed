"""Conversations in both stores: made with items, items added in order within their
bounds and with ids of their own, read, removed, metadata replaced, deleted, expired."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aigw.runtime.store.conversations import (
    Bounds,
    ConversationStore,
    ItemsPage,
    KeptConversation,
)
from aigw.runtime.store.stored_responses import (
    PURGE_EVERY_S,
    RedisResponses,
    ResponseStore,
    SQLiteResponses,
)

from .conftest import ManualClock, drop_namespace

WIDE = Bounds(items=100, bytes=1 << 20)


@pytest.fixture(params=["sqlite", "redis"])
async def responses(request: pytest.FixtureRequest, tmp_path: Path,
                    clock: ManualClock) -> AsyncIterator[ResponseStore]:
    store: ResponseStore
    if request.param == "sqlite":
        store = await SQLiteResponses.open(tmp_path / "aigw-responses.sqlite", clock=clock.now)
    else:
        redis_url, namespace = (request.getfixturevalue("redis_url"),
                                request.getfixturevalue("namespace"))
        store = RedisResponses(redis_url, namespace)
    yield store
    await store.aclose()
    if request.param == "redis":
        drop_namespace(redis_url, namespace)


@pytest.fixture
def conversations(responses: ResponseStore) -> ConversationStore:
    return responses.conversations()


async def test_made_added_read_and_removed(conversations: ConversationStore) -> None:
    await conversations.create("conv_1", "alice", 1700, b'{"a":"1"}',
                               [("msg_1", b'{"id":"msg_1"}')], ttl_s=60)
    assert await conversations.get("conv_1") == KeptConversation("alice", 1700, b'{"a":"1"}')
    assert await conversations.add("conv_1", [("msg_2", b'{"id":"msg_2"}'),
                                              ("msg_3", b'{"id":"msg_3"}')], 60, WIDE) == "added"
    kept = await conversations.get("conv_1", items=True)
    assert kept is not None and kept.items == (b'{"id":"msg_1"}', b'{"id":"msg_2"}',
                                               b'{"id":"msg_3"}')
    assert await conversations.item("conv_1", "msg_2") == b'{"id":"msg_2"}'
    assert await conversations.remove("conv_1", "msg_2", 60) is True
    assert await conversations.remove("conv_1", "msg_2", 60) is False
    assert await conversations.item("conv_1", "msg_2") is None
    kept = await conversations.get("conv_1", items=True)
    assert kept is not None and kept.items == (b'{"id":"msg_1"}', b'{"id":"msg_3"}')
    assert await conversations.update("conv_1", b'{"b":"2"}', 60) is True
    assert await conversations.add("conv_1", [("msg_4", b"{}")], 60, None) == "added"
    kept = await conversations.get("conv_1", items=True)
    assert kept is not None and kept.metadata == b'{"b":"2"}' and len(kept.items) == 3
    assert await conversations.delete("conv_1") is True
    assert await conversations.delete("conv_1") is False
    assert await conversations.get("conv_1") is None
    assert await conversations.item("conv_1", "msg_1") is None
    assert await conversations.add("conv_1", [("msg_5", b"{}")], 60, WIDE) == "gone"
    assert await conversations.update("conv_1", b"{}", 60) is False


async def test_items_are_read_for_their_owner_alone(conversations: ConversationStore) -> None:
    await conversations.create("conv_1", "alice", 1700, b"{}",
                               [("msg_1", b'"1"'), ("msg_2", b'"2"')], ttl_s=60)
    # another key that knows the id gets the head (to be refused), never the items
    assert await conversations.get("conv_1", items=True, owner="bob") == KeptConversation(
        "alice", 1700, b"{}")
    kept = await conversations.get("conv_1", items=True, owner="alice")
    assert kept is not None and kept.items == (b'"1"', b'"2"')
    kept = await conversations.get("conv_1", items=True)  # an admin's read: anyone's
    assert kept is not None and kept.items == (b'"1"', b'"2"')


async def test_a_deleted_conversation_leaves_its_items_to_the_responses_made_in_it(
        conversations: ConversationStore) -> None:
    await conversations.create("conv_1", "alice", 1700, b"{}",
                               [("msg_1", b'"1"'), ("msg_2", b'"2"')], ttl_s=60)
    assert await conversations.add("conv_1", [("msg_3", b'"3"')], 60, WIDE) == "added"
    assert await conversations.held("conv_1", "msg_2") == (b'"1"', b'"2"')
    assert await conversations.delete("conv_1") is True
    assert await conversations.get("conv_1", items=True) is None
    assert await conversations.item("conv_1", "msg_1") is None
    assert await conversations.add("conv_1", [("msg_4", b"{}")], 60, WIDE) == "gone"
    assert await conversations.update("conv_1", b"{}", 60) is False
    assert await conversations.delete("conv_1") is False
    # OpenAI's rule: its items are not deleted with it, and expire as they would have
    assert await conversations.held("conv_1", "msg_3") == (b'"1"', b'"2"', b'"3"')
    assert await conversations.held("conv_1", "msg_9") is None
    assert await conversations.held("conv_2", "msg_1") is None


async def test_a_page_reads_its_items_alone(conversations: ConversationStore) -> None:
    """A page is a range read: ``limit`` items (and whether more follow) from the one after
    ``after``, in either order, not the whole conversation sliced (a page of a 10k-item
    conversation read all 4 MB of it)."""
    items = [(f"m{n}", b'{"n":%d}' % n) for n in range(250)]
    await conversations.create("conv_1", "alice", 1700, b"{}", items[:100], ttl_s=60)
    assert await conversations.add("conv_1", items[100:], 60, None) == "added"
    bodies = [body for _, body in items]
    assert await conversations.page("conv_1", "asc", 3, None) == ItemsPage(
        tuple(bodies[:3]), True)
    assert await conversations.page("conv_1", "desc", 3, None) == ItemsPage(
        tuple(bodies[:-4:-1]), True)
    assert await conversations.page("conv_1", "asc", 3, "m120") == ItemsPage(
        tuple(bodies[121:124]), True)
    assert await conversations.page("conv_1", "desc", 3, "m120") == ItemsPage(
        tuple(bodies[119:116:-1]), True)
    assert await conversations.page("conv_1", "asc", 100, "m200") == ItemsPage(
        tuple(bodies[201:]), False)
    assert await conversations.page("conv_1", "desc", 100, "m50") == ItemsPage(
        tuple(bodies[49::-1]), False)
    assert await conversations.page("conv_1", "asc", 5, "m249") == ItemsPage((), False)
    assert await conversations.page("conv_1", "desc", 5, "m0") == ItemsPage((), False)
    assert await conversations.remove("conv_1", "m121", 60) is True
    assert await conversations.page("conv_1", "asc", 2, "m120") == ItemsPage(
        (bodies[122], bodies[123]), True)
    assert await conversations.page("conv_1", "asc", 2, "m121") is None  # removed
    assert await conversations.page("conv_1", "asc", 2, "nope") is None
    assert await conversations.page("conv_9", "desc", 2, None) == ItemsPage((), False)


async def test_bounds_and_ids_are_checked_as_items_are_added(
        conversations: ConversationStore) -> None:
    await conversations.create("conv_1", "alice", 1700, b"{}", [], ttl_s=60)
    assert await conversations.get("conv_1", items=True) == KeptConversation("alice", 1700,
                                                                             b"{}")
    assert await conversations.add("conv_1", [("a", b"12345"), ("b", b"12345")], 60,
                                   Bounds(items=2, bytes=10)) == "added"
    assert await conversations.add("conv_1", [("c", b"1")], 60,
                                   Bounds(items=3, bytes=10)) == "full"  # bytes
    assert await conversations.add("conv_1", [("c", b"1")], 60,
                                   Bounds(items=2, bytes=100)) == "full"  # items
    assert await conversations.add("conv_1", [("c", b"1"), ("a", b"1")], 60,
                                   WIDE) == "duplicate"
    assert await conversations.add("conv_1", [("c", b"1"), ("c", b"2")], 60,
                                   WIDE) == "duplicate"
    assert await conversations.remove("conv_1", "a", 60) is True  # makes room again
    assert await conversations.add("conv_1", [("c", b"1")], 60,
                                   Bounds(items=2, bytes=6)) == "added"
    kept = await conversations.get("conv_1", items=True)
    assert kept is not None and kept.items == (b"12345", b"1")


async def test_ids_claimed_by_a_turn_in_flight_are_its_own(
        conversations: ConversationStore) -> None:
    await conversations.create("conv_1", "alice", 1700, b"{}", [("a", b"1")], ttl_s=60)
    assert await conversations.claim("conv_1", ["a"], "t1", 60) == "duplicate"
    assert await conversations.claim("conv_1", ["b", "c"], "t1", 60) == "claimed"
    assert await conversations.claim("conv_1", ["c"], "t2", 60) == "in_flight"
    assert await conversations.claim("conv_1", ["c"], "t1", 60) == "claimed"  # renewed
    # Nor added by another (the items API: no token), nor by another turn
    assert await conversations.add("conv_1", [("c", b"2")], 60, WIDE) == "duplicate"
    assert await conversations.add("conv_1", [("b", b"2")], 60, WIDE, "t2") == "duplicate"
    assert await conversations.add("conv_1", [("b", b"2"), ("x", b"3")], 60, WIDE,
                                   "t1") == "added"  # its claim of "b" is an item now
    assert await conversations.claim("conv_1", ["b"], "t2", 60) == "duplicate"
    await conversations.release("conv_1", ["c"], "t2")  # another's: changes nothing
    assert await conversations.claim("conv_1", ["c"], "t2", 60) == "in_flight"
    await conversations.release("conv_1", ["c"], "t1")
    assert await conversations.claim("conv_1", ["c"], "t2", 60) == "claimed"
    assert await conversations.claim("conv_9", ["c"], "t2", 60) == "gone"
    kept = await conversations.get("conv_1", items=True)
    assert kept is not None and kept.items == (b"1", b"2", b"3")


async def test_a_claim_lapses_after_its_lease(responses: ResponseStore,
                                              clock: ManualClock) -> None:
    # A gateway stopped mid-turn releases nothing: its claims end with their lease. A turn
    # in flight renews it, claiming its ids again under its own token.
    conversations = responses.conversations()

    async def wait(seconds: float) -> None:  # the embedded store's clock; Redis's (TIME)
        clock.advance(seconds)
        if isinstance(responses, RedisResponses):
            await asyncio.sleep(seconds)

    await conversations.create("conv_1", "alice", 1700, b"{}", [], ttl_s=60)
    assert await conversations.claim("conv_1", ["a"], "t1", 0.4) == "claimed"
    assert await conversations.claim("conv_1", ["a"], "t2", 0.4) == "in_flight"
    await wait(0.3)
    assert await conversations.claim("conv_1", ["a"], "t1", 0.4) == "claimed"  # renewed
    await wait(0.3)  # past the first lease, within the renewed one
    assert await conversations.claim("conv_1", ["a"], "t2", 0.4) == "in_flight"
    await wait(0.5)
    assert await conversations.add("conv_1", [("a", b"1")], 60, WIDE) == "added"


async def test_sqlite_expires_and_purges_them(tmp_path: Path, clock: ManualClock) -> None:
    store = await SQLiteResponses.open(tmp_path / "aigw-responses.sqlite", clock=clock.now)
    conversations = store.conversations()
    try:
        await conversations.create("conv_1", "alice", 1700, b"{}", [("msg_1", b"{}")], 60)
        clock.advance(50)
        assert await conversations.add("conv_1", [("msg_2", b"{}")], 60, WIDE) == "added"
        clock.advance(50)  # a write sets the expiry ahead
        assert await conversations.item("conv_1", "msg_2") == b"{}"
        clock.advance(61)
        assert await conversations.get("conv_1") is None
        assert await conversations.item("conv_1", "msg_1") is None
        assert await conversations.add("conv_1", [("msg_3", b"{}")], 60, WIDE) == "gone"
        assert await conversations.held("conv_1", "msg_1") is None
        await conversations.create("conv_2", "alice", 1700, b"{}", [("msg_1", b"{}")], 60)
        assert await conversations.delete("conv_2") is True  # its items wait for the purge
        clock.advance(PURGE_EVERY_S)
        await store.put("resp_1", "alice", b"{}", b"", ttl_s=60)  # purges the expired
        await store.get("resp_1")  # behind the purge on the writer thread
        with sqlite3.connect(tmp_path / "aigw-responses.sqlite") as connection:
            assert connection.execute("SELECT count(*) FROM conversations").fetchone() == (0,)
            assert connection.execute("SELECT count(*) FROM conversation_items"
                                      ).fetchone() == (0,)
    finally:
        await store.aclose()


async def test_redis_expires_them(redis_url: str, namespace: str) -> None:
    store = RedisResponses(redis_url, namespace)
    conversations = store.conversations()
    try:
        await conversations.create("conv_1", "alice", 1700, b"{}", [("msg_1", b"{}")], 0.3)
        assert await conversations.add("conv_1", [("msg_2", b"{}")], 0.3, WIDE) == "added"
        await conversations.create("conv_2", "alice", 1700, b"{}", [("msg_1", b"{}")], 0.3)
        assert await conversations.delete("conv_2") is True
        await asyncio.sleep(0.4)
        assert await conversations.get("conv_1", items=True) is None
        assert await conversations.item("conv_1", "msg_1") is None
        assert await conversations.held("conv_2", "msg_1") is None
        client = store.redis
        assert await client.exists(f"{namespace}:conversation:conv_2:items") == 0
    finally:
        await store.aclose()
        drop_namespace(redis_url, namespace)
