"""The Redis store (several gateway replicas behind a load balancer): every
check-and-update is one Lua script, so all replicas share each limit and budget.

Keys live under ``<namespace>:`` (names are percent-encoded, so a user id cannot
reach another subject's key)::

    rate:<scope>:<name>:<requests|tokens>     token bucket (expires once full again)
    budget:<scope>:<name>:<period>            spent, held, h:<request id> (and
                                              h:adopted:<request id>, an adoption's)
    budget:<scope>:<name>:<period>:holds      request ids by hold expiry
    par:<scope>:<name>                        its requests in flight (max_parallel), by
                                              hold expiry
    res:<request id>                          reserved and not yet settled (or "settled",
                                              by a settle sent from the outbox)
    charged:<request id>                      a locally made reservation, settled
                                              (charged, its adoption given back)
    rec:<request id>, ledger...               the spend ledger (redis_ledger.py)

When Redis cannot answer (connection refused, timeout, or refusing every write for now:
out of memory, a read-only replica, still loading), ``on_unavailable`` decides:
``fail_closed`` makes ``reserve`` and ``budgets`` raise ``StoreUnavailable`` (a 503);
``fail_open`` answers them from limits kept in this process (``MemoryLimits``) for the
time being, logged. Those local limits know only what this replica did during the
outage (a budget starts from zero spent), and the spend of requests admitted locally
is charged to Redis when it returns. Either way settles and ledger records wait in the
``outbox`` (outbox.py: a file, so a restart loses none, or memory) and are written once
Redis answers again, which is tried at most every ``probe_interval`` seconds (by the
requests, and by a task of the store's own while the outbox holds writes);
``summary`` raises ``StoreUnavailable`` meanwhile. Any other error reply (an argument
Redis refuses, a script's own failure) is not an outage: a healthy Redis refuses that
call again and takes every other one, so it is that call's error (an ``InternalError``,
logged), and a write is dropped, logged.

Requests admitted locally and still running when Redis answers again are adopted:
the ``adopt`` script holds in Redis what each holds here (its cost on each budget, its
places under max_parallel, until its local hold's expiry), so the other replicas count
it. While local reservations wait for that, the store's task probes Redis with their
adoptions, so no request is needed to notice that it answers. A renewal sends the
adoption again with the new expiry (``adopt`` moves an expiry forward only, and puts
back a hold that lapsed while Redis was away); with Redis away, it is adopted again
once Redis answers. An adoption is sent now or not at all (never queued, so none
carries an old expiry, or holds after a restart for a request that ended). Its settle
is two writes, each written as any write (now or from the outbox), in this order: the
``charge`` of its cost (the settle of any local reservation, adopted or not, as an aigw
from before adoption writes it, so either version reads the other's outbox rows), then
``unadopt``, which gives back what the adoption holds (nothing if none ran). Both leave
the marker ``charged:<id>``, and ``adopt`` holds nothing once it is there: an adoption
sent twice holds once (``HSETNX``), and one that reaches Redis after the settle (a
retried call, a stalled one) holds nothing, so adoptions and the settle need no order.
Between the two writes the request is charged and held (counted twice, the safe way);
an aigw from before adoption, reading them from an outbox file, charges the cost and
leaves the hold to lapse at its expiry. An adoption holds under a name of its own
(``adopted:<id>``): a reserve of the request that Redis ran after its reply was given
up on holds under the request id until its abandon gives that back (the two count it
twice meanwhile). A replica that stops before the settle leaves the adopted hold to
lapse at its expiry, as a crashed replica's holds do. Rate-limit buckets are not
adopted: a local reservation took its tokens from the replica's own buckets, which
refill within the minute, as Redis' do.

How durable a written record is, is Redis' own setting: run it with ``appendonly
yes`` (and ``appendfsync always`` for every write on disk before the reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from enum import StrEnum
from functools import partial
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterDownError,
    InvalidResponse,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..background import Background
from ..errors import InternalError, StoreUnavailable
from ..uncancelled import uncancelled
from . import lua
from .base import Store
from .checks import Plan, Shapes, decide, rate_status
from .memory import MemoryLimits
from .outbox import Invocation, MemoryOutbox, Outbox
from .redis_calls import RedisCalls
from .redis_ledger import RECORD_SCRIPT, RedisLedger
from .values import (
    NANOS,
    BudgetStatus,
    Clock,
    Denied,
    LedgerRecord,
    Limits,
    RateStatus,
    Reservation,
    SystemClock,
    UsageQuery,
    UsageRow,
    least_left,
)

log = logging.getLogger("aigw.store")

DEFAULT_TTL = 600.0
# What a call to Redis raises when it fails; ``unreachable`` tells an outage from the rest.
REDIS_ERRORS = (RedisError, OSError)


class OnUnavailable(StrEnum):
    FAIL_CLOSED = "fail_closed"
    FAIL_OPEN = "fail_open"


# Writes sent from the outbox a batch at a time.
FLUSH_BATCH = 256


class RedisStore(Store):
    """``Store`` shared by every replica on one Redis; build it with ``from_url``."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        namespace: str = "aigw",
        on_unavailable: OnUnavailable = OnUnavailable.FAIL_CLOSED,
        clock: Clock | None = None,
        reservation_ttl: float = DEFAULT_TTL,
        probe_interval: float = 1.0,
        outbox: Outbox | None = None,
        ledger_retention: float | None = None,
    ) -> None:
        self._redis = client
        self._shapes = shapes = Shapes()
        self._calls = RedisCalls(namespace, shapes)
        self._mode = on_unavailable
        self._clock = clock or SystemClock()
        self._ttl = reservation_ttl
        self._probe_interval = probe_interval
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("reserve", lua.RESERVE),
                ("settle", lua.SETTLE),
                ("abandon", lua.ABANDON),
                ("renew", lua.RENEW),
                ("charge", lua.CHARGE),
                ("adopt", lua.ADOPT),
                ("unadopt", lua.UNADOPT),
                ("budgets", lua.BUDGETS),
                ("levels", lua.LEVELS),
                (RECORD_SCRIPT, lua.RECORD),
            )
        }
        self._local = MemoryLimits("local", shapes)
        # Reservations made locally that hold something, until Redis holds it too
        # (adopted) or they are settled; and those adopted, until they are settled.
        self._unadopted: dict[str, Reservation] = {}
        self._adopted: set[str] = set()
        self._ledger = RedisLedger(client, namespace, ledger_retention)
        self._down_since: float | None = None
        self._probe_at = 0.0
        self._last_error: BaseException | None = None
        self._outbox = outbox or MemoryOutbox()
        self._spill = MemoryOutbox()  # what a failing outbox file could not keep
        self._flusher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # the flusher's wait for its next probe, cut short
        self._closing = False  # set by aclose: the flusher stops probing
        self._finishing = Background()  # abandons of cancelled reserves, run on their own

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        max_connections: int = 64,
        timeout: float = 1.0,
        **options: Any,
    ) -> RedisStore:
        """A store on ``redis://host:port/db`` (or ``rediss://``, ``unix://``).

        ``timeout`` bounds connecting and each command, so an unreachable Redis is
        noticed quickly; a dead pooled connection is retried once on a new one.
        """
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=max(5.0, timeout),
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
            decode_responses=True,
        )
        return cls(aioredis.Redis.from_pool(pool), **options)

    @property
    def available(self) -> bool:
        """Whether the last attempt to reach Redis succeeded."""
        return self._down_since is None

    async def reserve(
        self,
        request_id: str,
        limits: Sequence[Limits],
        *,
        tokens: int,
        cost: float,
        ttl: float | None = None,
    ) -> Reservation | Denied:
        now = self._clock.now()
        checks = self._shapes.plan(limits, tokens, cost, now)
        ttl = self._ttl if ttl is None else ttl
        if self._reachable():
            # This call's own mark: redis-py sends a script again when its reply times
            # out, and the second run must know the hold it finds is its own.
            nonce = os.urandom(8).hex()
            try:
                decision = await self._reserve(request_id, checks, now, ttl, nonce)
            except asyncio.CancelledError:
                # The caller is gone with the reply (its client, a shutdown), which may be
                # a grant: it would hold for ``ttl`` with nobody to settle it.
                await self._abandon(request_id, checks, now, ttl, nonce)
                raise
            except REDIS_ERRORS as exc:
                down = unreachable(exc)
                if down:
                    self._lost(exc)
                # Sent, perhaps run (or to run, from a stalled server's buffer; or run up
                # to a failure): undone once Redis answers, or its hold would block the
                # budget for ``ttl``.
                await self._abandon(request_id, checks, now, ttl, nonce)
                if not down:
                    raise self._failed_call("reserve", exc) from exc
            else:
                self._back()
                return decision
        if self._mode is OnUnavailable.FAIL_OPEN:
            local = self._local.reserve(request_id, checks, now, ttl)
            if isinstance(local, Reservation) and (local.parallel or (local.periods
                                                                    and local.cost_nanos)):
                self._unadopted[request_id] = local
                self._start_flusher()  # which adopts it once Redis answers
            return local
        raise self._unavailable()

    async def _abandon(self, request_id: str, checks: Plan, now: float, ttl: float,
                       nonce: str) -> None:
        """Undo the reserve call ``nonce`` whose reply the caller will not have, whether
        Redis ran it or runs it later: written now or queued, though the caller is
        cancelled meanwhile (an abandon is safe to send twice: the second finds the first's
        tombstone)."""
        abandon = self._calls.abandon(request_id, checks, now, ttl, nonce)
        await uncancelled(partial(self._write, abandon), self._finishing.spawn, again=True)

    async def settle(self, reservation: Reservation, *, tokens: int, cost: float) -> None:
        now = self._clock.now()
        if reservation.origin == self._local.origin:
            request_id = reservation.request_id
            self._unadopted.pop(request_id, None)
            adopted = request_id in self._adopted
            self._adopted.discard(request_id)
            charged = self._local.settle(reservation, tokens, cost, now)
            if charged is None:
                return
            if charged.budgets and charged.cost_nanos:
                await self._write(self._calls.charge(request_id, charged, now))
            if adopted:  # after the charge: counted twice meanwhile, never not at all
                await self._write(self._calls.unadoption(reservation))
            return
        charge = self._shapes.settle_plan(reservation, tokens, cost)
        await self._write(self._calls.settle(reservation.request_id, charge, now))

    async def renew(self, reservation: Reservation, *, ttl: float | None = None) -> None:
        now = self._clock.now()
        ttl = self._ttl if ttl is None else ttl
        if reservation.origin == self._local.origin:
            self._local.renew(reservation.request_id, now, ttl)
            if reservation.request_id in self._adopted:
                await self._readopt(reservation, now)
            return
        if not self._reachable():
            return  # the hold keeps its expiry; renewing it later is the next call's
        await self._renewing(self._calls.renew(reservation, now, ttl))

    async def _readopt(self, reservation: Reservation, now: float) -> None:
        """Renew an adopted reservation's holds in Redis: its adoption sent again with the
        expiry its holds have here (``adopt`` moves an expiry forward only, and puts back
        a hold that lapsed there while Redis was away). With Redis away, it is adopted
        again once Redis answers."""
        until = self._local.holds_until(reservation.request_id, now)
        if until is None:
            return  # lapsed here too: nothing to renew
        if not (self._reachable()
                and await self._renewing(self._calls.adoption(reservation, until, now))):
            self._unadopted[reservation.request_id] = reservation
            self._start_flusher()

    async def _renewing(self, invocation: Invocation) -> bool:
        """Send a renewal now, never queued (the next renewal supersedes it); False if
        Redis could not be reached."""
        try:
            await self._invoke(invocation)
        except REDIS_ERRORS as exc:
            if not unreachable(exc):
                self._failed_call("renew", exc)
                return True
            self._lost(exc)
            return False
        self._back()
        return True

    async def budgets(self, limits: Sequence[Limits]) -> tuple[BudgetStatus, ...]:
        now = self._clock.now()
        checks = self._shapes.plan(limits, 0, 0.0, now)
        if self._reachable():
            try:
                statuses = await self._budgets(checks, now)
            except REDIS_ERRORS as exc:
                if not unreachable(exc):
                    raise self._failed_call("budgets", exc) from exc
                self._lost(exc)
            else:
                self._back()
                return statuses
        if self._mode is OnUnavailable.FAIL_OPEN:
            return self._local.budgets(checks.budgets, now)
        raise self._unavailable()

    async def rates(self, limits: Sequence[Limits]) -> RateStatus:
        now = self._clock.now()
        checks = self._shapes.plan(limits, 0, 0.0, now)
        if not checks.buckets:
            return RateStatus()
        if self._reachable():
            keys = [self._calls.bucket_key(bucket.scope.value, bucket.name, bucket.unit.value)
                    for bucket in checks.buckets]
            try:
                reply: list[str] = await self._scripts["levels"](
                    keys=keys, args=[now, *(bucket.cap for bucket in checks.buckets)])
            except REDIS_ERRORS as exc:
                if not unreachable(exc):
                    raise self._failed_call("rates", exc) from exc
                self._lost(exc)
            else:
                self._back()
                return rate_status(checks, [float(level) for level in reply], granted=False)
        if self._mode is OnUnavailable.FAIL_OPEN:
            return rate_status(checks, self._local.levels(checks, now), granted=False)
        raise self._unavailable()

    async def record(self, record: LedgerRecord) -> None:
        await self._write(self._ledger.record(record))

    async def summary(self, query: UsageQuery) -> tuple[UsageRow, ...]:
        if self._reachable():
            try:
                rows = await self._ledger.summary(query, self._clock.now())
            except REDIS_ERRORS as exc:
                if not unreachable(exc):
                    raise self._failed_call("summary", exc) from exc
                self._lost(exc)
            else:
                self._back()
                return rows
        raise self._unavailable()

    async def aclose(self) -> None:
        """Write what is still queued if Redis answers, then close the connections (what
        Redis did not take stays in a file outbox for the next start)."""
        await self._finishing.wait()  # their writes go out, or into the outbox, first
        self._closing = True
        self._wake.set()
        try:
            if self._flusher is not None:
                await self._flusher  # ends its current flush, or wakes from its wait
            if self._waiting():
                self._probe_at = 0.0
                await self._flush()
        except Exception:  # a bug in the flush must not leave the file and the pool open
            log.exception("redis store: the outbox flush failed")
        finally:
            try:
                await self._outbox.aclose()
                await self._spill.aclose()
            finally:
                await self._redis.aclose()

    async def _reserve(
        self, request_id: str, checks: Plan, now: float, ttl: float, nonce: str
    ) -> Reservation | Denied:
        reply: Any = await self._invoke(self._calls.reserve(request_id, checks, now, ttl,
                                                            nonce))
        if reply[0] == -1:
            raise ValueError(f"request {request_id!r} already holds a reservation")
        levels = [float(level) for level in reply[1 : 1 + len(checks.buckets)]]
        counts = [int(value) for value in reply[1 + len(checks.buckets) :]]
        pairs = 2 * len(checks.budgets)  # each budget's (spent, held), then each in flight
        counts, running = counts[:pairs], counts[pairs:]
        if reply[0] in (1, 2):
            if reply[0] == 2:  # granted by this call's first run, whose reply was lost:
                # what the buckets and budgets had left is not known, so no rate headers,
                # and routing policies see no budget figure for this one request
                rate, left = RateStatus(), None
            else:
                rate = rate_status(checks, levels, granted=True)
                left = least_left((budget.amount_nanos, spent, held) for budget, spent, held
                                  in zip(checks.budgets, counts[::2], counts[1::2], strict=True))
            return Reservation(
                request_id=request_id,
                limits=checks.limits,
                tokens=checks.tokens,
                cost_nanos=checks.cost_nanos,
                periods=tuple(budget.period_key for budget in checks.budgets),
                expires_at=now + ttl,
                rate=rate,
                origin="redis",
                budget_remaining=left,
                parallel=bool(checks.slots),
            )
        denied = decide(checks, levels, list(zip(counts[::2], counts[1::2], strict=True)), now,
                        running)
        if denied is None:
            raise RuntimeError("the reserve script denied what checks.decide allows")
        return denied

    async def _budgets(self, checks: Plan, now: float) -> tuple[BudgetStatus, ...]:
        keys = [key for budget in checks.budgets for key in self._calls.budget_keys(budget)]
        reply: list[int] = await self._scripts["budgets"](keys=keys, args=[now]) if keys else []
        return tuple(
            BudgetStatus(
                scope=budget.scope,
                name=budget.name,
                period=budget.period,
                period_key=budget.period_key,
                amount=budget.amount_nanos / NANOS,
                spent=int(spent) / NANOS,
                held=int(held) / NANOS,
                resets_at=budget.resets_at,
            )
            for budget, spent, held in zip(checks.budgets, reply[::2], reply[1::2], strict=True)
        )

    async def _invoke(self, invocation: Invocation) -> object:
        return await self._scripts[invocation.script](keys=list(invocation.keys),
                                                      args=list(invocation.args))

    def _reachable(self) -> bool:
        """Whether to try Redis now: always while it answers, then once per probe interval."""
        if self._down_since is None:
            return True
        now = time.monotonic()
        if now < self._probe_at:
            return False
        self._probe_at = now + self._probe_interval
        return True

    def _lost(self, exc: BaseException) -> None:
        self._last_error = exc
        self._probe_at = time.monotonic() + self._probe_interval
        if self._down_since is None:
            self._down_since = time.monotonic()
            action = (
                "using local limits"
                if self._mode is OnUnavailable.FAIL_OPEN
                else "refusing requests (fail_closed)"
            )
            log.error("redis store unreachable (%s); %s until it answers", exc, action)

    def _back(self) -> None:
        if self._down_since is not None:
            log.warning("redis store reachable again after %.1f s",
                        time.monotonic() - self._down_since)
            self._down_since = None
        if self._waiting():
            self.flush_soon()

    def _failed_call(self, what: str, error: BaseException) -> InternalError:
        """A call Redis answered with an error of its own (so it is up): a bug on this
        side, logged; that request fails and every other call goes on."""
        log.error("redis store: Redis refused a %s call (%s); that request fails, the "
                  "store stays up", what, error, exc_info=error)
        self._back()
        return InternalError("The gateway had an internal error; it is logged.")

    def flush_soon(self) -> None:
        """Deliver what waits in the outbox now, in a task (one at a time) that goes on
        probing Redis until the outbox is empty or the store closes."""
        if not self._start_flusher():
            self._wake.set()  # Redis answered: the flusher need not wait for its probe

    def _start_flusher(self) -> bool:
        """Start the flusher unless it runs (or the store is closing); True if started."""
        if self._closing or (self._flusher is not None and not self._flusher.done()):
            return False
        self._wake.clear()
        self._flusher = asyncio.create_task(self._deliver(), name="aigw-redis-outbox")
        return True

    def _waiting(self) -> bool:
        return bool(self._unadopted) or self._outbox.waiting or self._spill.waiting

    async def _deliver(self) -> None:
        """Flush, and while writes (or adoptions) are left (Redis is away), flush again at
        each probe: else a replica with no traffic kept its settles until a request
        reached Redis, and their holds refused the other replicas' requests until the
        holds' TTL (and its requests in flight went uncounted there)."""
        while not self._closing:
            self._wake.clear()
            await self._flush()
            if not self._waiting():
                return
            wait = max(self._probe_at - time.monotonic(), self._probe_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def _adopt(self) -> bool:
        """Hold in Redis what the reservations made locally and still running hold here.
        Sent now or not at all, never queued: one that cannot reach Redis is tried again
        at the next probe with the expiry its holds have then (a queued one would carry
        an old expiry, and hold for a request a restart ended). False when Redis could
        not be reached."""
        now = self._clock.now()
        # Forget any never settled (a bug): those the local limits forgot, whose settle
        # does nothing. Not those whose holds lapsed here: their settle still gives back
        # what the adoption holds (a replica whose clock is behind counts it still).
        self._adopted = {rid for rid in self._adopted if self._local.is_open(rid, now)}
        for request_id in list(self._unadopted):
            now = self._clock.now()
            until = self._local.holds_until(request_id, now)
            if until is None:  # settled meanwhile, or its holds lapsed: nothing to hold
                self._unadopted.pop(request_id, None)
                continue
            if not self._reachable():  # checked after: a probe is for a call to Redis
                return False
            reservation = self._unadopted.pop(request_id, None)
            if reservation is None:
                continue
            self._adopted.add(request_id)  # its settle gives back what Redis may hold now
            adoption = self._calls.adoption(reservation, until, now)
            try:
                await self._invoke(adoption)
            except REDIS_ERRORS as exc:
                if not unreachable(exc):
                    _dropped(adoption, exc)
                    continue
                self._lost(exc)
                self._unadopted[request_id] = reservation
                return False
            self._back()
        return True

    def _unavailable(self) -> StoreUnavailable:
        error = StoreUnavailable("The rate limit and budget store is unavailable; try again.")
        error.__cause__ = self._last_error
        return error

    async def _write(self, invocation: Invocation) -> None:
        """Write now, or queue the write until Redis answers again (never lose it)."""
        if self._reachable():
            try:
                await self._invoke(invocation)
            except REDIS_ERRORS as exc:
                if not unreachable(exc):
                    _dropped(invocation, exc)
                    return
                self._lost(exc)
            else:
                self._back()
                return
        queued = _queued(invocation)
        try:
            await self._outbox.put(queued)
        except StoreUnavailable as exc:  # the outbox file failed (a full disk, say)
            log.error("redis store: the outbox could not keep a write (%s); it is kept in "
                      "memory until Redis answers", exc)
            await self._spill.put(queued)
        self._start_flusher()

    async def _flush(self) -> None:
        """Adopt the local reservations (first: the other replicas should count them
        soon, not after a backlog of ledger records; not once closing, their requests
        ended), then deliver queued writes in order; stop at the first failure (kept for
        later)."""
        if self._unadopted and not self._closing and not await self._adopt():
            return
        for outbox in (self._outbox, self._spill):
            try:
                if not await self._drain(outbox):
                    return
            except StoreUnavailable as exc:  # reading the outbox file failed: try later
                log.error("redis store: could not read the outbox: %s", exc)
                return

    async def _drain(self, outbox: Outbox) -> bool:
        """Send ``outbox``'s writes until it is empty (True) or Redis is lost (False)."""
        while self._reachable():
            batch = await outbox.oldest(FLUSH_BATCH)
            if not batch:
                return True
            delivered = None
            try:
                for seq, queued in batch:
                    invocation = self._ledger.upgraded(queued)
                    try:
                        answer = await self._invoke(invocation)
                    except REDIS_ERRORS as exc:
                        if unreachable(exc):
                            raise
                        _dropped(invocation, exc)
                    except KeyError:  # a script this version does not have
                        log.error("redis store: dropped a queued write for the unknown "
                                  "script %r", invocation.script)
                    else:
                        if invocation.script == "settle":
                            _settled_late(invocation, answer)
                    delivered = seq
            except REDIS_ERRORS as exc:  # only an outage comes this far
                self._lost(exc)
                return False
            finally:
                if delivered is not None:
                    await outbox.delivered(delivered)
            self._back()  # Redis took the batch (this flush is the one running)
        return False


def _queued(invocation: Invocation) -> Invocation:
    """``invocation`` as the outbox keeps it: a settle marked as one that may be sent
    twice (by each worker on one outbox file), so that the second run can say so."""
    if invocation.script != "settle":
        return invocation
    return replace(invocation, args=(*invocation.args, "1"))


def _settled_late(invocation: Invocation, answer: object) -> None:
    """Log what a settle sent from the outbox found, where it did not apply."""
    if answer == 2:  # expected with workers sharing an outbox file: nothing was lost
        log.debug("redis store: a queued settle of %s was applied already (sent twice: by "
                  "another worker on the outbox file, or again after a lost reply)",
                  invocation.keys[0])
    elif answer == 0:
        log.warning("redis store: a queued settle of %s found no reservation: it was "
                    "settled by a call whose reply was lost, or the reservation is gone "
                    "(older than its TTL and a day, or lost with Redis' data), and then "
                    "its spend was not charged to the budgets", invocation.keys[0])


# Redis refusing every call for now (full, a read-only replica, busy, short of replicas),
# as plain ResponseErrors whose text starts with the code; Redis 7 names the script in
# them too, so they must not pass for a script's own failure.
_TRANSIENT_CODES = ("BUSY", "MISCONF", "NOREPLICAS", "TRYAGAIN", "CLUSTERDOWN", "LOADING",
                    "OOM", "READONLY", "MASTERDOWN", "UNBLOCKED", "NOPERM", "NOSCRIPT")
# A connection that failed, timed out or read garbage (BusyLoadingError, LOADING, is a
# ConnectionError; the OS's own errors, asyncio's timeout among them, are OSErrors).
_DISCONNECTED = (OSError, RedisConnectionError, RedisTimeoutError, InvalidResponse)
# Those, and the refusals above as redis-py raises those it knows (with the code cut
# from the text).
_OUTAGES = (*_DISCONNECTED, OutOfMemoryError, ReadOnlyError, NoPermissionError,
            NoScriptError, TryAgainError, ClusterDownError)


def disconnected(error: BaseException) -> bool:
    """Whether ``error`` says Redis did not answer at all (unreachable, too slow, a
    broken connection), not that it answered and refused the call: a refusal, even one
    every write gets for now (out of memory under maxmemory), comes back at once.

    >>> disconnected(RedisTimeoutError("Timeout reading from socket"))
    True
    >>> disconnected(OutOfMemoryError("command not allowed when used memory > 'maxmemory'"))
    False
    """
    return isinstance(error, _DISCONNECTED)


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` says Redis cannot answer for now (down, too slow, or refusing
    every write), so the store is unavailable until a later attempt succeeds. Any other
    error is this call's own (an argument Redis refuses, a script's own failure): a
    healthy Redis refuses it again and takes every other call, so it marks nothing down.

    >>> unreachable(ResponseError("min or max is not a float"))
    False
    >>> unreachable(ResponseError("MASTERDOWN Link with MASTER is down"))
    True
    """
    if isinstance(error, _OUTAGES):
        return True
    return type(error) is ResponseError and str(error).startswith(_TRANSIENT_CODES)


def _dropped(invocation: Invocation, error: BaseException) -> None:
    """``invocation``'s script failed, not for an outage (a key of the wrong type, a value
    that is not a number): sent again it would fail again, so it is dropped (logged), not
    queued to block every later write."""
    log.error("redis store: the %s script failed for %s (%s); the write is dropped",
              invocation.script, invocation.keys[0] if invocation.keys else "?", error)
