"""Rate limits, budgets and the spend ledger, behind one small interface (``Store``).

    store = await open_store("embedded")          # or "redis://127.0.0.1:6379/0"
    decision = await store.reserve(request_id, limits, tokens=..., cost=...)

Two implementations run the same test suite: ``EmbeddedStore`` (one gateway; memory
and a SQLite file) and ``RedisStore`` (several replicas; atomic Lua scripts).
Errors a client can see are ``StoreUnavailable`` (503) and, from ``Denied.error()``,
``RateLimited`` / ``BudgetExceeded`` (429), all in ``aigw.runtime.errors``.
"""

from .base import Store
from .checks import period_end, period_key
from .embedded import EmbeddedStore
from .factory import open_store
from .redis_store import OnUnavailable, RedisStore
from .values import (
    Budget,
    BudgetStatus,
    Clock,
    Denied,
    Dimension,
    Exceeded,
    LedgerRecord,
    Limits,
    Period,
    RateStatus,
    RateWindow,
    Reservation,
    Scope,
    SystemClock,
    UsageQuery,
    UsageRow,
    format_duration,
    tightest_remaining,
)

__all__ = [
    "Budget",
    "BudgetStatus",
    "Clock",
    "Denied",
    "Dimension",
    "EmbeddedStore",
    "Exceeded",
    "LedgerRecord",
    "Limits",
    "OnUnavailable",
    "Period",
    "RateStatus",
    "RateWindow",
    "RedisStore",
    "Reservation",
    "Scope",
    "Store",
    "SystemClock",
    "UsageQuery",
    "UsageRow",
    "format_duration",
    "open_store",
    "period_end",
    "period_key",
    "tightest_remaining",
]
