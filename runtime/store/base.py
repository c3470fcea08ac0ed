"""The store seam: what the request path asks of limits, budgets and the spend ledger.

One request, in the order the handler calls it::

    decision = await store.reserve(request_id, limits, tokens=prompt + max_tokens,
                                   cost=worst_case_cost)
    if isinstance(decision, Denied):
        raise decision.error()               # 429 with Retry-After and x-ratelimit-*
    try:
        ...call the upstream, stream the answer...
    finally:
        await store.settle(decision, tokens=used, cost=actual_cost)   # or release()
        await store.record(LedgerRecord(...))    # every request, served or failed

``reserve`` checks and takes every scope in ``limits`` at once, or nothing.
``settle`` and ``release`` are idempotent (the second call does nothing), and a
reservation nobody settles gives its budget hold back after its TTL, which ``renew``
pushes back while the call runs. ``record`` is
idempotent by request id and returns once the record is durable.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Protocol, Self

from .values import (
    BudgetStatus,
    Denied,
    LedgerRecord,
    Limits,
    RateStatus,
    Reservation,
    UsageQuery,
    UsageRow,
)


class Store(Protocol):
    """Rate limits, budgets and the spend ledger, embedded or shared through Redis.

    The stores subclass it for what is the same whatever holds the counters: ``release``
    and ``async with``."""

    async def reserve(
        self,
        request_id: str,
        limits: Sequence[Limits],
        *,
        tokens: int,
        cost: float,
        ttl: float | None = None,
    ) -> Reservation | Denied:
        """Take 1 request and ``tokens`` from every rate limit and hold ``cost`` against
        every budget in ``limits``, all or nothing; the hold lasts ``ttl`` seconds
        (the store's default when None). Raises ``StoreUnavailable`` when the store
        cannot answer and the store is set to fail closed. A reserve whose caller is
        cancelled holds nothing once the cancellation reaches the caller: it was never
        made, or it is undone (the caller never learns of it, so nobody would settle it)."""
        ...

    async def settle(self, reservation: Reservation, *, tokens: int, cost: float) -> None:
        """The call is over: release the hold, charge ``cost`` to the budgets, and give
        back the tokens reserved but not used (``tokens`` is what was really used)."""
        ...

    async def release(self, reservation: Reservation) -> None:
        """The call did not happen: give back the tokens and the budget hold (the
        request still counts against requests per minute). Same as settling zero."""
        await self.settle(reservation, tokens=0, cost=0.0)

    async def renew(self, reservation: Reservation, *, ttl: float | None = None) -> None:
        """The call still runs: its budget holds last ``ttl`` seconds from now (the
        store's default when None). A hold that lapsed already stays lapsed; renewing a
        settled reservation does nothing, and a store that cannot answer is not an error
        (the hold keeps the expiry it had)."""
        ...

    async def budgets(self, limits: Sequence[Limits]) -> tuple[BudgetStatus, ...]:
        """Each budget in ``limits`` for its current period: amount, spent, held."""
        ...

    async def rates(self, limits: Sequence[Limits]) -> RateStatus:
        """The tightest of the rpm and of the tpm buckets of ``limits`` as they are now,
        nothing taken: what ``reserve``'s answer tells (``RateStatus.headers``), for a
        caller that holds its requests already (a Realtime session, between responses).
        One round trip; raises ``StoreUnavailable`` as ``reserve`` does."""
        ...

    async def record(self, record: LedgerRecord) -> None:
        """Write one ledger record, once per request id; durable when this returns."""
        ...

    async def summary(self, query: UsageQuery) -> tuple[UsageRow, ...]:
        """Usage totals from the ledger, grouped and filtered as ``query`` says."""
        ...

    async def aclose(self) -> None:
        """Finish pending writes and let go of files, threads and connections."""
        ...

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
