"""Redis stopped and started while calls flow, on a private redis-server (the shared
one is never touched): fail_closed refuses, fail_open answers from local limits, and
both go back to Redis, with the writes queued meanwhile, once it returns."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import shutil
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import redis.asyncio as aioredis

from aigw.runtime.errors import InternalError, StoreUnavailable
from aigw.runtime.store import (
    Budget,
    Denied,
    Limits,
    OnUnavailable,
    RedisStore,
    Reservation,
    Scope,
    UsageQuery,
)
from aigw.runtime.store.factory import open_store
from aigw.runtime.store.outbox import FileOutbox, Invocation

from ..redis_server import PrivateRedis
from .test_contract import RECORD

LIMITS = [Limits(Scope.KEY, "ci-bot", rpm=100_000)]


class Traffic:
    """Calls flowing in the background (reserve, settle, record), each outcome noted:
    the reservation's origin ("redis" or "local"), or "refused"."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.outcomes: list[tuple[str, str]] = []  # (request id, outcome)
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    def count(self, outcome: str) -> int:
        return sum(1 for _, seen in self.outcomes if seen == outcome)

    def ids(self, outcome: str) -> list[str]:
        return [request_id for request_id, seen in self.outcomes if seen == outcome]

    async def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            request_id = f"flow-{n}"
            try:
                decision = await self.store.reserve(request_id, LIMITS, tokens=10, cost=0.001)
            except StoreUnavailable:
                outcome = "refused"
            else:
                assert isinstance(decision, Reservation)
                outcome = decision.origin
                await self.store.settle(decision, tokens=5, cost=0.0005)
            await self.store.record(replace(RECORD, request_id=request_id))
            self.outcomes.append((request_id, outcome))
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        self._stop.set()
        await self._task  # re-raises anything unexpected that the calls raised


async def eventually(what: str, condition: Callable[[], Awaitable[bool] | bool]) -> None:
    """Poll ``condition`` for at most 10 seconds (a bounded loop, no timing asserts)."""
    for _ in range(200):
        outcome = condition()
        if await outcome if inspect.isawaitable(outcome) else outcome:
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"gave up waiting for {what}")


async def in_ledger(url: str, request_ids: list[str]) -> bool:
    """Whether Redis holds these ledger records (read straight from Redis; a record's
    key has its request id percent-encoded)."""
    client = aioredis.Redis.from_url(url)
    try:
        return all([await client.exists(f"aigw:rec:{quote(rid, safe='')}")
                    for rid in request_ids])
    except redis.ConnectionError:
        return False
    finally:
        await client.aclose()


async def test_fail_closed_refuses_while_redis_is_down_and_recovers(
    private_redis: PrivateRedis,
) -> None:
    store = RedisStore.from_url(private_redis.url, probe_interval=0.05, timeout=0.5)
    traffic = Traffic(store)
    try:
        await eventually("traffic to flow", lambda: traffic.count("redis") >= 5)

        private_redis.stop()
        await eventually("refusals", lambda: traffic.count("refused") >= 5)
        with pytest.raises(StoreUnavailable) as raised:
            await store.reserve("direct", LIMITS, tokens=0, cost=0.0)
        assert (raised.value.status, raised.value.code) == (503, "store_unavailable")
        with pytest.raises(StoreUnavailable):  # nor told: a status read, as a reserve
            await store.rates(LIMITS)
        assert not store.available
        refused = traffic.ids("refused")

        private_redis.start()
        served = traffic.count("redis")
        await eventually("redis to serve again", lambda: traffic.count("redis") > served + 5)
        await eventually(
            "the records queued during the outage",
            lambda: in_ledger(private_redis.url, refused),
        )
    finally:
        await traffic.stop()
        await store.aclose()
    assert store.available
    assert traffic.count("local") == 0
    assert traffic.outcomes[-1][1] == "redis"


async def test_fail_open_answers_from_local_limits_and_goes_back_to_redis(
    private_redis: PrivateRedis,
) -> None:
    store = RedisStore.from_url(
        private_redis.url,
        on_unavailable=OnUnavailable.FAIL_OPEN,
        probe_interval=0.05,
        timeout=0.5,
    )
    traffic = Traffic(store)
    try:
        await eventually("traffic to flow", lambda: traffic.count("redis") >= 5)

        private_redis.stop()
        await eventually("local answers", lambda: traffic.count("local") >= 5)
        tight = [Limits(Scope.TEAM, "outage", rpm=2)]
        local = [await store.reserve(f"tight-{n}", tight, tokens=0, cost=0.0) for n in range(3)]
        assert [type(decision) for decision in local] == [Reservation, Reservation, Denied]
        assert all(d.origin == "local" for d in local if isinstance(d, Reservation))
        told = (await store.rates(tight)).requests  # the local buckets' levels
        assert told is not None and (told.limit, told.remaining) == (2, 0)
        (budget,) = await store.budgets([Limits(Scope.TEAM, "outage", budget=Budget(5.0))])
        assert budget.spent == 0.0  # answered locally too
        answered_locally = traffic.ids("local")

        private_redis.start()
        served = traffic.count("redis")
        await eventually("redis to serve again", lambda: traffic.count("redis") > served + 5)
        await eventually(
            "the records made during the outage",
            lambda: in_ledger(private_redis.url, answered_locally),
        )
    finally:
        await traffic.stop()
        await store.aclose()
    assert store.available
    assert traffic.count("refused") == 0
    assert traffic.outcomes[-1][1] == "redis"


class Link:
    """A TCP proxy in front of Redis whose replies, on the connections open when
    ``stall`` is called, come back late (a stalled link, as a loaded network gives),
    whose calls on the connections open at ``hold`` reach Redis only at ``let_go``,
    which ``keep_reply`` can have keep back one reply that Redis gave (the call ran;
    its caller waits on), and which ``cut`` breaks off: Redis keeps its data, but
    cannot be reached."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.delay_s = 0.0
        self.held_calls = 0  # writes kept back since ``hold``
        self._open: list[asyncio.StreamWriter] = []
        self._stalled: set[int] = set()
        self._held: set[int] = set()
        self._going = asyncio.Event()
        self._going.set()
        self._marker = b""  # in the call whose reply ``keep_reply`` keeps
        self._calls_left = 0  # calls with the marker to let by before the one kept
        self._answering: set[int] = set()  # connections whose next reply may be kept
        self.reply_kept = asyncio.Event()
        self._replies_go = asyncio.Event()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}/0"

    def stall(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self._stalled = {id(writer) for writer in self._open}

    def hold(self) -> None:
        """Keep back what is sent from now on, on the connections open now, until
        ``let_go``: such a call reaches Redis after calls sent later on other connections
        (redis-py's retry of it, once its reply is overdue, among them)."""
        self._held = {id(writer) for writer in self._open}
        self._going.clear()

    def let_go(self) -> None:
        self._going.set()

    def keep_reply(self, marker: bytes, nth: int = 1) -> None:
        """Keep back Redis' reply (an array: a script's answer, not an error such as
        NOSCRIPT) to the ``nth`` call from now that holds ``marker`` (a script's sha1),
        setting ``reply_kept``, until ``let_replies_go``."""
        self._marker, self._calls_left = marker, nth
        self.reply_kept.clear()
        self._replies_go.clear()

    def let_replies_go(self) -> None:
        self._marker = b""
        self._replies_go.set()

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self._server is not None:
            self._server.close()
        for writer in self._open:
            writer.close()

    async def mend(self) -> None:
        """Take connections again, on the same port (after ``cut``)."""
        port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", port)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.append(writer)
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port)

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                       replies: bool) -> None:
            try:
                while data := await source.read(65536):
                    if replies and id(writer) in self._stalled:
                        await asyncio.sleep(self.delay_s)
                    if not replies and self._marker and self._marker in data:
                        self._answering.add(id(writer))
                    if replies and id(writer) in self._answering:
                        self._answering.discard(id(writer))
                        if data.startswith(b"*") and self._marker:
                            self._calls_left -= 1
                            if not self._calls_left:
                                self.reply_kept.set()
                                await self._replies_go.wait()
                    if not replies and id(writer) in self._held and not self._going.is_set():
                        self.held_calls += 1
                        await self._going.wait()
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.close()

        await asyncio.gather(copy(reader, upstream_writer, False),
                             copy(upstream_reader, writer, True))

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._open:
            writer.close()


async def test_a_reserve_whose_reply_was_lost_is_not_taken_for_a_duplicate(
    private_redis: PrivateRedis,
) -> None:
    """redis-py sends a script again when its reply times out. The second run found the
    first run's marker and answered "already reserved": a ValueError (a 500), and the
    first run's hold stayed for its whole TTL. Now the call knows its own mark."""
    proxy = Link(private_redis.port)
    await proxy.start()
    store = RedisStore.from_url(proxy.url, timeout=0.3)
    limits = [Limits(Scope.KEY, "k", rpm=100, budget=Budget(1.0))]
    try:
        warm = await store.reserve("warm", limits, tokens=1, cost=0.001)  # scripts loaded
        assert isinstance(warm, Reservation)
        await store.release(warm)
        proxy.stall(0.6)  # the next reply on that connection comes after the timeout
        granted = await store.reserve("req-1", limits, tokens=10, cost=0.4)
        assert isinstance(granted, Reservation) and granted.origin == "redis"
        with pytest.raises(ValueError, match="already holds a reservation"):
            await store.reserve("req-1", limits, tokens=10, cost=0.4)  # a real duplicate
        await store.settle(granted, tokens=5, cost=0.25)
        (status,) = await store.budgets(limits)
        assert (status.spent, status.held) == (0.25, 0.0)  # held once, settled once
    finally:
        await store.aclose()
        await proxy.aclose()


@pytest.mark.parametrize("mode", [OnUnavailable.FAIL_CLOSED, OnUnavailable.FAIL_OPEN])
async def test_a_reserve_given_up_on_leaves_no_hold_when_redis_runs_it_late(
    private_redis: PrivateRedis, mode: OnUnavailable
) -> None:
    """A stalled Redis (SIGSTOP: a fork, a failover, a slow network) ran the reserve the
    gateway had given up on once it resumed: the hold and the rpm it took stayed for the
    hold's TTL (15 minutes), and with them the key was refused ("requests in flight hold
    the rest") though nothing was in flight."""
    assert private_redis.process is not None
    store = RedisStore.from_url(private_redis.url, timeout=0.3, on_unavailable=mode,
                                probe_interval=0.05)
    limits = [Limits(Scope.KEY, "k", rpm=2, budget=Budget(1.0), max_parallel=2)]
    try:
        warm = await store.reserve("warm", [Limits(Scope.KEY, "w", rpm=100)], tokens=1,
                                   cost=0.0)  # scripts loaded, a connection open
        assert isinstance(warm, Reservation)
        await store.release(warm)
        private_redis.process.send_signal(signal.SIGSTOP)
        try:
            if mode is OnUnavailable.FAIL_CLOSED:
                with pytest.raises(StoreUnavailable):
                    await store.reserve("lost", limits, tokens=10, cost=0.6)
            else:
                local = await store.reserve("lost", limits, tokens=10, cost=0.6)
                assert isinstance(local, Reservation) and local.origin == "local"
                await store.release(local)
        finally:
            private_redis.process.send_signal(signal.SIGCONT)

        async def nothing_held() -> bool:
            try:
                (status,) = await store.budgets(limits)
            except StoreUnavailable:
                return False
            return status.held == 0.0 and not store._outbox.waiting

        await eventually("the lost reserve to be undone", nothing_held)
        # Its rpm and its place were given back too: both of the minute's two requests
        # are there, and both may be in flight at once.
        for number in range(2):
            granted = await store.reserve(f"after-{number}", limits, tokens=10, cost=0.3)
            assert isinstance(granted, Reservation) and granted.origin == "redis", granted
        (status,) = await store.budgets(limits)
        assert (status.spent, status.held) == (0.0, 0.6)
    finally:
        await store.aclose()


async def test_writes_waiting_in_a_file_outbox_survive_a_restart(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """A settle and a ledger record made while Redis cannot be reached wait in the
    outbox file; a gateway stopped meanwhile leaves them there, and the next one on the
    file delivers them. Kept in memory (as before), they were lost with the process."""
    path = tmp_path / "aigw-outbox.sqlite"
    await _left_in_outbox(private_redis, path)
    left = await FileOutbox.open(path)
    assert await left.count() == 2
    await left.aclose()

    second = RedisStore.from_url(private_redis.url, outbox=await FileOutbox.open(path))
    try:
        async def settled() -> bool:
            (status,) = await second.budgets(_TEAM_T)
            return (status.spent, status.held) == (0.75, 0.0)

        await eventually("the settle the stopped gateway left", settled)
        assert await in_ledger(private_redis.url, ["r1"])
    finally:
        await second.aclose()
    emptied = await FileOutbox.open(path)
    assert await emptied.count() == 0
    await emptied.aclose()


_TEAM_T = [Limits(Scope.TEAM, "t", budget=Budget(10.0))]


async def _left_in_outbox(private_redis: PrivateRedis, path: Path) -> None:
    """Request r1 holds 1.0 of team t's budget in Redis; its settle (0.75) and ledger
    record are left in the outbox file ``path`` by a gateway that lost Redis and stopped."""
    link = Link(private_redis.port)
    await link.start()
    first = RedisStore.from_url(link.url, timeout=0.3, probe_interval=0.05,
                                outbox=await FileOutbox.open(path))
    try:
        held = await first.reserve("r1", _TEAM_T, tokens=10, cost=1.0)
        assert isinstance(held, Reservation) and held.origin == "redis"
        link.cut()  # Redis keeps the hold; this gateway cannot reach it
        await first.settle(held, tokens=10, cost=0.75)
        await first.record(replace(RECORD, request_id="r1"))
        assert not first.available
    finally:
        await first.aclose()
        await link.aclose()


async def test_a_settle_two_workers_send_from_one_outbox_is_not_taken_for_a_loss(
    private_redis: PrivateRedis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """hypercorn's workers share one outbox file and may both send its oldest rows: the
    second run of a settle found no reservation and logged that its spend was not
    charged, though it was (once). It now knows the settle ran already."""
    caplog.set_level(logging.DEBUG, "aigw.store")
    path = tmp_path / "aigw-outbox.sqlite"
    await _left_in_outbox(private_redis, path)
    for suffix in ("-wal", "-shm", ""):  # the same rows, as the other worker reads them
        if Path(f"{path}{suffix}").exists():
            shutil.copy(f"{path}{suffix}", f"{tmp_path / 'other.sqlite'}{suffix}")
    for worker in (path, tmp_path / "other.sqlite"):
        await RedisStore.from_url(private_redis.url, outbox=await FileOutbox.open(worker)).aclose()
    store = RedisStore.from_url(private_redis.url)
    try:
        (status,) = await store.budgets(_TEAM_T)
        assert (status.spent, status.held) == (0.75, 0.0)  # charged once
    finally:
        await store.aclose()
    settles = [(r.levelno, r.getMessage()) for r in caplog.records
               if "queued settle" in r.getMessage()]
    assert [level for level, _ in settles] == [logging.DEBUG], settles
    assert "was applied already" in settles[0][1]


def _outbox_tasks() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "aigw-redis-outbox"]


async def test_an_idle_gateway_sends_its_outbox_once_redis_answers_again(
    private_redis: PrivateRedis,
) -> None:
    """The outbox was sent only after a call reached Redis again: a replica with no
    traffic after an outage kept its settles and ledger records, and the holds it did
    not settle refused the other replicas' requests until their TTL (15 minutes)."""
    link = Link(private_redis.port)
    await link.start()
    idle = RedisStore.from_url(link.url, timeout=0.3, probe_interval=0.05)
    other = RedisStore.from_url(private_redis.url)  # another replica, on the same Redis
    try:
        held = await idle.reserve("r1", _TEAM_T, tokens=10, cost=1.0)
        assert isinstance(held, Reservation)
        link.cut()
        await idle.settle(held, tokens=10, cost=0.75)
        await idle.record(replace(RECORD, request_id="r1"))
        assert not idle.available
        cpu = time.process_time()
        await asyncio.sleep(0.5)  # ten probe intervals with Redis away: probes, no busy loop
        assert time.process_time() - cpu < 0.25
        await link.mend()  # and no call on the idle store from here on

        async def settled() -> bool:
            (status,) = await other.budgets(_TEAM_T)
            return (status.spent, status.held) == (0.75, 0.0)

        await eventually("the idle replica's settle", settled)
        await eventually("its ledger record", lambda: in_ledger(private_redis.url, ["r1"]))
        assert idle.available
    finally:
        await idle.aclose()
        await other.aclose()
        await link.aclose()
    assert not _outbox_tasks()


async def test_a_store_closed_while_redis_is_away_stops_probing(
    private_redis: PrivateRedis,
) -> None:
    """The task that probes Redis for the outbox ends when the store closes, at once."""
    link = Link(private_redis.port)
    await link.start()
    link.cut()
    store = RedisStore.from_url(link.url, timeout=0.3, probe_interval=60.0)
    try:
        await store.record(replace(RECORD, request_id="kept"))
        assert len(_outbox_tasks()) == 1  # waiting for its next probe, a minute away
    finally:
        await asyncio.wait_for(store.aclose(), 5)
        await link.aclose()
    assert not _outbox_tasks()


async def test_a_write_whose_script_fails_is_dropped_not_retried_forever(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis answered, but the script failed (here a budget counter that is not a hash):
    sent again it fails again, so it is dropped and logged; it does not mark Redis down
    or block the writes after it."""
    store = RedisStore.from_url(private_redis.url)
    limits = [Limits(Scope.TEAM, "broken", budget=Budget(10.0))]
    client = aioredis.Redis.from_url(private_redis.url)
    try:
        held = await _hold_then_break_the_budget(store, client, limits)
        await store.settle(held, tokens=1, cost=0.5)
        assert store.available
        assert "the settle script failed" in caplog.text
        await store.record(replace(RECORD, request_id="after"))
        assert await in_ledger(private_redis.url, ["after"])
    finally:
        await client.aclose()
        await store.aclose()


async def _hold_then_break_the_budget(
    store: RedisStore, client: aioredis.Redis, limits: list[Limits]
) -> Reservation:
    """A hold on team broken's budget, whose counter is then made a string: every script
    that reads it fails from then on."""
    held = await store.reserve("p1", limits, tokens=1, cost=1.0)
    assert isinstance(held, Reservation)
    (counter,) = [key for key in await client.keys("aigw:budget:team:broken:*")
                  if not key.endswith(b":holds")]
    await client.delete(counter)
    await client.set(counter, "not a hash")
    return held


async def test_an_argument_redis_refuses_fails_that_call_not_the_store(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """A NaN in a time range: Redis answers 'min or max is not a float'. That is this
    call's error (a 500, logged), not an outage: it marked the store down, and under
    fail_closed every limited request was refused until the next probe."""
    store = RedisStore.from_url(private_redis.url)
    try:
        with pytest.raises(InternalError):
            await store.summary(UsageQuery(since=math.nan))
        assert store.available
        assert "Redis refused a summary call" in caplog.text
        assert isinstance(await store.reserve("after", LIMITS, tokens=1, cost=0.0), Reservation)
    finally:
        await store.aclose()


async def test_a_reserve_whose_script_fails_fails_that_request_not_the_store(
    private_redis: PrivateRedis,
) -> None:
    """The reserve script failing on a key of the wrong type is that request's 500; the
    store stays up for every other subject."""
    store = RedisStore.from_url(private_redis.url)
    limits = [Limits(Scope.TEAM, "broken", budget=Budget(10.0))]
    client = aioredis.Redis.from_url(private_redis.url)
    try:
        await _hold_then_break_the_budget(store, client, limits)
        with pytest.raises(InternalError):
            await store.reserve("p2", limits, tokens=1, cost=1.0)
        assert store.available
        assert isinstance(await store.reserve("p3", LIMITS, tokens=1, cost=0.0), Reservation)
    finally:
        await client.aclose()
        await store.aclose()


async def test_a_write_redis_refuses_for_now_waits_for_it(private_redis: PrivateRedis) -> None:
    """Out of memory (or read-only, busy...), Redis names the script in its refusal too;
    such a write is not the script's own failure and must wait, not be dropped."""
    store = RedisStore.from_url(private_redis.url, probe_interval=0.05)
    client = aioredis.Redis.from_url(private_redis.url)
    try:
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", "1")
        await store.record(replace(RECORD, request_id="while-full"))
        assert not store.available  # refused: queued, not dropped
        await client.config_set("maxmemory", "0")
        await eventually("the refused write, once Redis takes writes again",
                         lambda: _delivered_after_a_call(store, private_redis.url,
                                                         "while-full"))
    finally:
        await client.aclose()
        await store.aclose()


async def _delivered_after_a_call(store: RedisStore, url: str, request_id: str) -> bool:
    try:
        await store.reserve(f"probe-{uuid.uuid4().hex}", LIMITS, tokens=0, cost=0.0)  # a call
        # that reaches Redis starts the flush
    except StoreUnavailable:
        return False  # not yet: the next probe is a moment away
    return await in_ledger(url, [request_id])


async def test_what_a_stopped_gateway_left_is_sent_without_waiting_for_a_request(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    path = tmp_path / "aigw-outbox.sqlite"
    early = await FileOutbox.open(path)  # a row of another version's script comes first
    await early.put(Invocation("settle_v9", ("aigw:res:x",), (1,)))
    await early.aclose()
    link = Link(private_redis.port)
    await link.start()
    link.cut()  # the stopped gateway never reached Redis
    stopped = RedisStore.from_url(link.url, timeout=0.3, outbox=await FileOutbox.open(path))
    for request_id in ("left-1", "left-2"):
        await stopped.record(replace(RECORD, request_id=request_id))
    await stopped.aclose()
    await link.aclose()

    opened = await open_store(private_redis.url, root=tmp_path, outbox=path.name)
    try:  # no request at all: the backlog goes on its own
        await eventually("the backlog", lambda: in_ledger(private_redis.url,
                                                          ["left-1", "left-2"]))
    finally:
        await opened.aclose()
    emptied = await FileOutbox.open(path)
    assert await emptied.count() == 0  # the unknown script's row dropped, not blocking
    await emptied.aclose()
