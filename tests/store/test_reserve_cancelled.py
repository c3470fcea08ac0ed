"""A reserve whose caller is cancelled (its client gone, a shutdown past its grace) holds
nothing afterwards: its caller never learns of the reservation, so nobody would settle
it, and its budget, tokens and place were held for the reservation's whole TTL."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from aigw.runtime.store import Budget, Limits, RedisStore, Reservation, Scope, Store, lua

from ..redis_server import PrivateRedis
from .test_redis_outage import Link, eventually

RESERVE_SHA = hashlib.sha1(lua.RESERVE.encode()).hexdigest().encode()


def _limits(name: str) -> list[Limits]:
    """Room for one request at a time, of 100 tokens and 1.0 at most."""
    return [Limits(Scope.KEY, name, rpm=10_000, tpm=100, budget=Budget(1.0), max_parallel=1)]


async def _all_free(store: Store, limits: list[Limits], request_id: str) -> None:
    """The whole budget, the whole tpm and the one place can be held again."""
    (status,) = await store.budgets(limits)
    assert status.held == 0.0, status
    whole = await store.reserve(request_id, limits, tokens=100, cost=1.0)
    assert isinstance(whole, Reservation), whole
    await store.release(whole)


async def _cancelled(task: asyncio.Task[object], storm: bool) -> None:
    """Cancel ``task`` once, or at every turn of the loop until it ends (a shutdown's
    second cancel landing wherever it does)."""
    task.cancel()
    while storm and not task.done():
        await asyncio.sleep(0)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("storm", [False, True], ids=["once", "again-and-again"])
async def test_a_redis_reserve_cancelled_once_redis_ran_it_is_undone(
    private_redis: PrivateRedis, storm: bool
) -> None:
    """Redis ran the reserve and its reply was on its way when the caller was cancelled:
    the hold, the tokens and the place stayed taken for the TTL (10 minutes by default),
    refusing the key's next requests (this failed before)."""
    proxy = Link(private_redis.port)
    await proxy.start()
    store = RedisStore.from_url(proxy.url)
    limits = _limits("k")
    try:
        await _all_free(store, limits, "warm")  # scripts loaded, a connection open
        proxy.keep_reply(RESERVE_SHA)
        reserving = asyncio.create_task(store.reserve("req-1", limits, tokens=100, cost=1.0))
        await asyncio.wait_for(proxy.reply_kept.wait(), 5)  # Redis has granted it
        await _cancelled(reserving, storm)
        proxy.let_replies_go()
        await _all_free(store, limits, "after")
    finally:
        await store.aclose()
        await proxy.aclose()


async def test_a_redis_reserve_cancelled_before_it_ran_never_holds(
    private_redis: PrivateRedis,
) -> None:
    """Cancelled with its call kept from Redis: when the call reaches Redis at last (a
    stalled link's buffer), it finds the caller's abandon there first and holds nothing."""
    proxy = Link(private_redis.port)
    await proxy.start()
    store = RedisStore.from_url(proxy.url)
    limits = _limits("k")
    try:
        await _all_free(store, limits, "warm")
        proxy.hold()  # the connection open now: its next call waits in the proxy
        reserving = asyncio.create_task(store.reserve("req-1", limits, tokens=100, cost=1.0))
        await eventually("the call to reach the proxy", lambda: proxy.held_calls > 0)
        await _cancelled(reserving, storm=False)  # its abandon goes by another connection
        proxy.let_go()
        await _all_free(store, limits, "after")
    finally:
        await store.aclose()
        await proxy.aclose()


async def test_a_reserve_cancelled_at_any_turn_holds_nothing_it_did_not_return(
    store: Store,
) -> None:
    """Cancelled after each number of turns of the event loop (at its budget's load from
    SQLite, embedded; at its round trip, Redis): what it did not return, it holds not."""
    for turns in range(40):
        limits = _limits(f"k{turns}")  # a budget not seen yet: the embedded store loads it
        reserving = asyncio.create_task(store.reserve(f"req-{turns}", limits, tokens=100,
                                                      cost=1.0))
        for _ in range(turns):
            await asyncio.sleep(0)
        reserving.cancel()
        try:
            granted = await reserving
        except asyncio.CancelledError:
            pass
        else:
            assert isinstance(granted, Reservation)
            await store.release(granted)
        await _all_free(store, limits, f"after-{turns}")
