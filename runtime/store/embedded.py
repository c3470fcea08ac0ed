"""The embedded store (the default, for one gateway process): limits and budgets in
memory, the ledger and what budgets have spent in a SQLite file.

Counters live in ``MemoryLimits``; its methods await nothing, so each check-and-update
is atomic on the event loop. SQLite is only touched through the one writer thread of
``SQLiteFile``: ledger records are awaited until committed, budget spend is queued
behind them (``post``), so it is on disk no later than the request's ledger record.
Rate-limit buckets are not persisted: after a restart every bucket starts full. With a
ledger retention, records older than it are deleted by the first record written each hour.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

from .base import Store
from .checks import Shapes, rate_status
from .memory import Counter, MemoryLimits
from .sqlite_file import (
    SQLiteFile,
    add_spend,
    delete_records_before,
    insert_record,
    load_spend,
    usage,
)
from .values import (
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
)

DEFAULT_TTL = 600.0
TRIM_EVERY_S = 3600.0


class EmbeddedStore(Store):
    """``Store`` for one process; open it with ``await EmbeddedStore.open(path)``."""

    def __init__(
        self, db: SQLiteFile, *, clock: Clock | None = None, reservation_ttl: float = DEFAULT_TTL,
        ledger_retention: float | None = None,
    ) -> None:
        self.path = db.path
        self._db = db
        self._clock = clock or SystemClock()
        self._ttl = reservation_ttl
        self._shapes = shapes = Shapes()
        self._limits = MemoryLimits("embedded", shapes)
        self._retention = ledger_retention  # seconds a ledger record is kept; None: forever
        self._trim_at = 0.0  # when the records past the retention are next deleted

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        clock: Clock | None = None,
        reservation_ttl: float = DEFAULT_TTL,
        synchronous: str = "FULL",
        ledger_retention: float | None = None,
    ) -> EmbeddedStore:
        db = await SQLiteFile.open(path, synchronous=synchronous)
        return cls(db, clock=clock, reservation_ttl=reservation_ttl,
                   ledger_retention=ledger_retention)

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
        missing = self._limits.missing(checks.counters)
        if missing:  # the common case, none: no coroutine to start
            await self._load(missing)
            now = self._clock.now()  # SQLite was waited for
        ttl = self._ttl if ttl is None else ttl
        return self._limits.reserve(request_id, checks, now, ttl)

    async def settle(self, reservation: Reservation, *, tokens: int, cost: float) -> None:
        missing = self._limits.missing(self._limits.charged_to(reservation.request_id))
        if missing:
            await self._load(missing)
        charged = self._limits.settle(reservation, tokens, cost, self._clock.now())
        if charged is not None and charged.cost_nanos and charged.budgets:
            spend = tuple([(counter, charged.cost_nanos) for counter in charged.counters])
            self._db.post(partial(add_spend, spend))

    async def renew(self, reservation: Reservation, *, ttl: float | None = None) -> None:
        self._limits.renew(reservation.request_id, self._clock.now(),
                           self._ttl if ttl is None else ttl)

    async def budgets(self, limits: Sequence[Limits]) -> tuple[BudgetStatus, ...]:
        checks = self._shapes.budget_checks(limits, self._clock.now())
        await self._load(tuple(check.counter for check in checks))
        return self._limits.budgets(checks, self._clock.now())

    async def rates(self, limits: Sequence[Limits]) -> RateStatus:
        now = self._clock.now()
        checks = self._shapes.plan(limits, 0, 0.0, now)
        return rate_status(checks, self._limits.levels(checks, now), granted=False)

    async def record(self, record: LedgerRecord) -> None:
        await self._db.call(partial(insert_record, record), single=True)
        if self._retention is not None and (now := self._clock.now()) >= self._trim_at:
            # Queued behind the records, not awaited: at most once every TRIM_EVERY_S.
            self._trim_at = now + TRIM_EVERY_S
            self._db.post(partial(delete_records_before, now - self._retention))

    async def summary(self, query: UsageQuery) -> tuple[UsageRow, ...]:
        return await self._db.call(partial(usage, query))

    async def aclose(self) -> None:
        await self._db.aclose()

    async def _load(self, counters: tuple[Counter, ...]) -> None:
        """Bring budget counters this process has not seen yet in from SQLite."""
        missing = self._limits.missing(counters)
        if missing:
            spent = await self._db.call(partial(load_spend, missing))
            for counter, nanos in spent.items():
                self._limits.seed(counter, nanos)
