"""Requests a replica admits locally while Redis refuses it (fail_open), still running
when it answers again: Redis holds them too, so another replica on the same Redis
counts their budget holds and places, and their settle gives those back once.

The replica that admits locally reaches Redis through a link the tests cut; to make a
write wait in the outbox at a chosen moment, Redis refuses writes (out of memory, which
the store counts as unreachable) while it answers reads."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis

from aigw.runtime.store import (
    Budget,
    Denied,
    Exceeded,
    Limits,
    OnUnavailable,
    RedisStore,
    Reservation,
    Scope,
)
from aigw.runtime.store.outbox import FileOutbox, Invocation
from aigw.runtime.store.redis_ledger import RECORD_SCRIPT

from ..redis_server import PrivateRedis
from .conftest import ManualClock
from .test_redis_outage import Link, eventually

BOTH = [Limits(Scope.TEAM, "t", budget=Budget(10.0), max_parallel=1)]
BUDGET = [Limits(Scope.TEAM, "t", budget=Budget(10.0))]  # the same counter, alone
PLACES = [Limits(Scope.TEAM, "t", max_parallel=1)]  # the same places, alone
# The scripts of an aigw from before adoption: it drops an outbox row of any other.
_BEFORE_ADOPTION = ("reserve", "settle", "abandon", "renew", "charge", "budgets", RECORD_SCRIPT)


@asynccontextmanager
async def writes_refused(url: str) -> AsyncIterator[None]:
    """Redis out of memory: writes refused for now, reads answered (a script is refused
    at its first write that takes memory, if it wrote nothing before)."""
    client = aioredis.Redis.from_url(url)
    try:
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", "1")
        yield
    finally:
        await client.config_set("maxmemory", "0")
        await client.aclose()


@asynccontextmanager
async def replicas(
    private_redis: PrivateRedis, clock: ManualClock, outbox: FileOutbox | None = None,
    probe_interval: float = 0.05,
) -> AsyncIterator[tuple[RedisStore, RedisStore, Link]]:
    """A fail_open replica on a link to Redis that the test may cut, and another replica
    straight on the same Redis, both on ``clock``."""
    link = Link(private_redis.port)
    await link.start()
    first = RedisStore.from_url(link.url, on_unavailable=OnUnavailable.FAIL_OPEN,
                                clock=clock, probe_interval=probe_interval, timeout=0.5,
                                outbox=outbox)
    other = RedisStore.from_url(private_redis.url, clock=clock)
    try:
        yield first, other, link
    finally:
        await first.aclose()
        await other.aclose()
        await link.aclose()


async def spent_held(store: RedisStore) -> tuple[float, float]:
    (status,) = await store.budgets(BUDGET)
    return status.spent, status.held


async def admitted_locally(store: RedisStore, link: Link) -> Reservation:
    """Request "long" (worst case 6.0 of team t's 10.0, its one place) admitted by
    ``store`` from its local limits, its link to Redis cut (and left so); its hold
    lasts 60 s."""
    link.cut()
    long = await store.reserve("long", BOTH, tokens=10, cost=6.0, ttl=60.0)
    assert isinstance(long, Reservation) and long.origin == "local"
    return long


async def test_a_request_admitted_locally_is_held_in_redis_once_it_answers(
    private_redis: PrivateRedis, clock: ManualClock
) -> None:
    """The hold stayed in the replica: the other replica spent the budget (and took the
    place) that the request was to be charged to, until it settled."""
    async with replicas(private_redis, clock) as (first, other, link):
        long = await admitted_locally(first, link)
        await link.mend()
        await eventually("the other replica to count the hold",
                         lambda: _is(spent_held(other), (0.0, 6.0)))
        over = await other.reserve("b1", BUDGET, tokens=1, cost=5.0)
        assert isinstance(over, Denied) and over.exceeded is Exceeded.BUDGET
        full = await other.reserve("p1", PLACES, tokens=1, cost=0.0)
        assert isinstance(full, Denied) and full.exceeded is Exceeded.PARALLEL

        clock.advance(50.0)
        await first.renew(long, ttl=60.0)  # renewed in Redis too: now until 110 s
        clock.advance(20.0)
        assert await spent_held(other) == (0.0, 6.0)

        await first.settle(long, tokens=10, cost=4.0)
        assert await spent_held(other) == (4.0, 0.0)  # charged once, released once
        assert isinstance(await other.reserve("p2", PLACES, tokens=1, cost=0.0), Reservation)


async def test_an_adoption_sent_again_and_late_and_a_settle_sent_from_the_outbox_count_once(
    private_redis: PrivateRedis, clock: ManualClock, tmp_path: Path
) -> None:
    """A renewal sends the adoption again: held here by the link, and retried by redis-py
    when its reply is overdue (one hold). The settle waits in the outbox (Redis refusing
    writes), is sent from it, and once more by hand (as a second worker on the file
    would); the held adoption reaches Redis after it: they change nothing."""
    path = tmp_path / "aigw-outbox.sqlite"
    reader = await FileOutbox.open(path)
    async with replicas(private_redis, clock, await FileOutbox.open(path)) as (
            first, other, link):
        long = await admitted_locally(first, link)
        await link.mend()
        await eventually("the other replica to count the hold",
                         lambda: _is(spent_held(other), (0.0, 6.0)))
        link.hold()
        clock.advance(30.0)
        await first.renew(long, ttl=60.0)
        assert link.held_calls >= 1
        assert await spent_held(other) == (0.0, 6.0)

        async with writes_refused(private_redis.url):
            await first.settle(long, tokens=10, cost=4.0)
            assert not first.available  # the settle waits in the outbox
            settles = [call for _, call in await reader.oldest(10)
                       if call.script in ("charge", "unadopt")]
            assert [call.script for call in settles] == ["charge", "unadopt"]
            assert await spent_held(other) == (0.0, 6.0)
        await eventually("the settle from the outbox",
                         lambda: _is(spent_held(other), (4.0, 0.0)))
        await _send_again(settles, private_redis.url, tmp_path / "again.sqlite")

        ran = await _scripts_run(private_redis.url)
        link.let_go()
        await eventually("the held calls to reach Redis",
                         lambda: _ran_since(private_redis.url, ran + link.held_calls))
        assert await spent_held(other) == (4.0, 0.0)  # charged once, released once
        assert isinstance(await other.reserve("p1", PLACES, tokens=1, cost=0.0), Reservation)
    await reader.aclose()


async def test_an_aigw_from_before_adoption_charges_an_adopted_settle_it_finds_waiting(
    private_redis: PrivateRedis, clock: ManualClock, tmp_path: Path
) -> None:
    """A gateway rolled back while Redis was away, to a version that has no adoption,
    sends the settles the newer one left in the outbox file and drops the rows of the
    scripts it does not have (logged). The settle of an adopted request was one such
    row (charge and release in one script): its spend was never charged. Its charge is
    now a row of its own, as that version writes it; the hold lapses at its expiry."""
    path = tmp_path / "aigw-outbox.sqlite"
    reader = await FileOutbox.open(path)
    async with replicas(private_redis, clock, await FileOutbox.open(path)) as (
            first, other, link):
        long = await admitted_locally(first, link)
        await link.mend()
        await eventually("the other replica to count the hold",
                         lambda: _is(spent_held(other), (0.0, 6.0)))
        link.cut()
        await first.settle(long, tokens=10, cost=4.0)
        assert not first.available  # the settle waits in the outbox
        waiting = [call for _, call in await reader.oldest(10)
                   if call.script in _BEFORE_ADOPTION]
    await _send_again(waiting, private_redis.url, tmp_path / "older.sqlite")
    await reader.aclose()
    async with replicas(private_redis, clock) as (_, other, _):
        assert await spent_held(other) == (4.0, 6.0)  # charged; held until it lapses
        clock.advance(61.0)
        assert await spent_held(other) == (4.0, 0.0)


async def test_a_replica_with_nothing_to_write_adopts_without_waiting_for_a_request(
    private_redis: PrivateRedis, clock: ManualClock
) -> None:
    """The request was admitted without trying Redis (a read had just failed; the next
    try was not due), so no write waits in the outbox: the replica tries Redis on its
    own while it has requests to adopt."""
    async with replicas(private_redis, clock, probe_interval=0.5) as (first, other, link):
        link.cut()
        await first.budgets(BUDGET)  # answered locally: Redis is away
        long = await first.reserve("long", BOTH, tokens=10, cost=6.0, ttl=60.0)
        assert isinstance(long, Reservation) and long.origin == "local"
        await link.mend()  # and no call on the replica from here on
        await eventually("the other replica to count the hold",
                         lambda: _is(spent_held(other), (0.0, 6.0)))


async def test_requests_whose_holds_lapsed_here_do_not_hold_back_the_adoption_of_others(
    private_redis: PrivateRedis, clock: ManualClock
) -> None:
    """Each request waiting for adoption whose hold had lapsed here spent the store's
    probe of Redis (one a probe interval) without a call to Redis: with 30 of them
    before it, the request still running was adopted 30 probes (15 s) after Redis
    answered, and the writes in the outbox waited as long."""
    async with replicas(private_redis, clock, probe_interval=0.5) as (first, other, link):
        link.cut()
        for number in range(30):
            lapsing = await first.reserve(f"lapsing-{number}", BUDGET, tokens=1, cost=0.1,
                                          ttl=1.0)
            assert isinstance(lapsing, Reservation) and lapsing.origin == "local"
        clock.advance(2.0)  # never settled (nor renewed): their holds lapsed
        await admitted_locally(first, link)
        await link.mend()
        await eventually("the other replica to count the hold",
                         lambda: _is(spent_held(other), (0.0, 6.0)))


async def test_an_adopted_request_renewed_while_redis_is_away_again_is_held_once_it_answers(
    private_redis: PrivateRedis, clock: ManualClock
) -> None:
    """Redis down, up (the request adopted), down again: the renewal cannot reach Redis,
    whose hold lapses meanwhile; once Redis answers, the request is adopted again with
    its new expiry (the hold put back once, not twice), and its settle gives it back."""
    async with replicas(private_redis, clock) as (first, other, link):
        long = await admitted_locally(first, link)
        await link.mend()
        await eventually("the other replica to count the hold",
                         lambda: _is(spent_held(other), (0.0, 6.0)))
        link.cut()
        clock.advance(50.0)
        await first.renew(long, ttl=60.0)  # here until 110 s; in Redis still until 60 s
        clock.advance(20.0)
        assert await spent_held(other) == (0.0, 0.0)  # lapsed there
        await link.mend()
        await eventually("the hold put back", lambda: _is(spent_held(other), (0.0, 6.0)))
        clock.advance(30.0)  # 100 s: within the renewed hold
        assert await spent_held(other) == (0.0, 6.0)
        await first.settle(long, tokens=10, cost=4.0)
        assert await spent_held(other) == (4.0, 0.0)


async def test_an_adopted_hold_lapses_with_its_ttl_when_its_replica_stops(
    private_redis: PrivateRedis, clock: ManualClock
) -> None:
    async with replicas(private_redis, clock) as (first, other, link):
        await admitted_locally(first, link)
        await link.mend()
        await eventually("the other replica to count the hold",
                         lambda: _is(spent_held(other), (0.0, 6.0)))
        link.cut()  # the replica is gone: "long" is never settled
        clock.advance(59.0)
        assert await spent_held(other) == (0.0, 6.0)
        clock.advance(2.0)
        assert await spent_held(other) == (0.0, 0.0)  # lapsed, not charged
        assert isinstance(await other.reserve("p1", PLACES, tokens=1, cost=0.0), Reservation)


async def test_an_adopted_request_stays_held_when_the_reserve_it_gave_up_on_is_undone(
    private_redis: PrivateRedis, clock: ManualClock
) -> None:
    """Redis stalled under the replica's reserve, which ran once Redis resumed: the
    request was admitted locally meanwhile, and the reserve's undoing (abandon) queued.
    The adoption's hold had the reserve's name (one per request id), so the undoing gave
    it back: the request in flight went uncounted in Redis (its cost and its place)."""
    assert private_redis.process is not None
    async with replicas(private_redis, clock) as (first, other, _):
        warm = await first.reserve("warm", [Limits(Scope.KEY, "w", rpm=100)], tokens=1,
                                   cost=0.0)  # scripts loaded, a connection open
        assert isinstance(warm, Reservation)
        await first.release(warm)
        private_redis.process.send_signal(signal.SIGSTOP)
        try:
            long = await first.reserve("long", BOTH, tokens=10, cost=6.0, ttl=60.0)
            assert isinstance(long, Reservation) and long.origin == "local"
        finally:
            private_redis.process.send_signal(signal.SIGCONT)
        await eventually("the reserve undone (after the adoption: Redis answered)",
                         lambda: _is_key(private_redis.url, "aigw:res:long", "abandoned"))
        assert await spent_held(other) == (0.0, 6.0)
        full = await other.reserve("p1", PLACES, tokens=1, cost=0.0)
        assert isinstance(full, Denied) and full.exceeded is Exceeded.PARALLEL

        await first.settle(long, tokens=10, cost=4.0)
        assert await spent_held(other) == (4.0, 0.0)
        assert isinstance(await other.reserve("p2", PLACES, tokens=1, cost=0.0), Reservation)


async def test_the_settle_of_a_request_never_adopted_waits_as_an_older_aigw_reads_it(
    private_redis: PrivateRedis, clock: ManualClock, tmp_path: Path
) -> None:
    """A request admitted and settled while Redis was away, its settle in the outbox file:
    it waited as ``settle_local``, which an aigw from before adoption drops (a script it
    does not have), so a gateway rolled back during the outage lost the spend of every
    request it had admitted locally. A settle of a request never adopted is the charge
    that version writes too."""
    path = tmp_path / "aigw-outbox.sqlite"
    reader = await FileOutbox.open(path)
    async with replicas(private_redis, clock, await FileOutbox.open(path)) as (
            first, other, link):
        long = await admitted_locally(first, link)
        await first.settle(long, tokens=10, cost=4.0)
        waiting = [call.script for _, call in await reader.oldest(10)]
        assert waiting == ["abandon", "charge"]  # the reserve it tried first, undone
        await link.mend()
        await eventually("the charge from the outbox",
                         lambda: _is(spent_held(other), (4.0, 0.0)))
    await reader.aclose()


async def test_an_adopted_request_whose_hold_lapsed_here_is_still_released_by_its_settle(
    private_redis: PrivateRedis, clock: ManualClock
) -> None:
    """Its hold lapsed here (no renewal for longer than its TTL), so the store's check of
    its adopted requests could forget it: its settle must still be the one that releases
    what the adoption holds in Redis, and charges its cost once."""
    async with replicas(private_redis, clock) as (first, other, link):
        long = await admitted_locally(first, link)
        await link.mend()
        await eventually("the other replica to count the hold",
                         lambda: _is(spent_held(other), (0.0, 6.0)))
        clock.advance(61.0)  # its hold lapsed, here and in Redis
        link.cut()
        later = await first.reserve("later", PLACES, tokens=1, cost=0.0)
        assert isinstance(later, Reservation) and later.origin == "local"
        await link.mend()  # "later" is adopted: the adopted requests are looked over
        await eventually("the later request adopted", lambda: _in_flight(private_redis.url,
                                                                          "adopted:later"))
        await first.settle(long, tokens=10, cost=4.0)
        assert await spent_held(other) == (4.0, 0.0)


async def _is_key(url: str, key: str, expected: str) -> bool:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return bool(await client.get(key) == expected)
    finally:
        await client.aclose()


async def _in_flight(url: str, member: str) -> bool:
    """Whether ``member`` has one of team t's places (max_parallel) in Redis."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return await client.zscore("aigw:par:team:t", member) is not None
    finally:
        await client.aclose()


async def _is(found: Awaitable[tuple[float, float]], expected: tuple[float, float]) -> bool:
    return await found == expected


async def _scripts_run(url: str) -> int:
    """How many script calls Redis has run (EVALSHA, as redis-py sends them)."""
    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def _ran_since(url: str, calls: int) -> bool:
    return await _scripts_run(url) >= calls


async def _send_again(calls: list[Invocation], url: str, path: Path) -> None:
    """Send ``calls`` once more, from an outbox file of their own."""
    assert calls
    outbox = await FileOutbox.open(path)
    for call in calls:
        await outbox.put(call)
    await RedisStore.from_url(url, outbox=outbox).aclose()  # which delivers them
