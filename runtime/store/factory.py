"""``open_store``: the store a ``settings.store`` URL names."""

from __future__ import annotations

from pathlib import Path

from .base import Store
from .embedded import DEFAULT_TTL, EmbeddedStore
from .outbox import open_outbox
from .redis_store import OnUnavailable, RedisStore
from .values import Clock

DEFAULT_FILE = "aigw.sqlite"


async def open_store(
    url: str,
    *,
    root: Path | None = None,
    on_unavailable: OnUnavailable | str = OnUnavailable.FAIL_CLOSED,
    namespace: str = "aigw",
    clock: Clock | None = None,
    reservation_ttl: float = DEFAULT_TTL,
    synchronous: str = "FULL",
    outbox: str = "memory",
    ledger_retention: float | None = None,
) -> Store:
    """Open the store ``url`` names; relative files are relative to ``root`` (or cwd).

    ``embedded`` is ``<root>/aigw.sqlite``, ``embedded:/var/lib/aigw/spend.sqlite`` a
    file of your choice, and ``redis://127.0.0.1:6379/0`` (or ``rediss://``,
    ``unix://``) a Redis server shared by every replica; it is not contacted until
    the first call, so a gateway starts while Redis is down. ``ledger_retention`` (seconds;
    None keeps every record) is how long ledger records are kept. ``on_unavailable``
    (``fail_closed`` or ``fail_open``), ``namespace`` and ``outbox`` (where writes wait
    while Redis is unreachable: a file, relative to ``root``, or ``memory``) apply to
    Redis only.
    """
    path = embedded_file(url, root)
    if path is not None:
        return await EmbeddedStore.open(
            path, clock=clock, reservation_ttl=reservation_ttl, synchronous=synchronous,
            ledger_retention=ledger_retention,
        )
    outbox_file = None if outbox == "memory" else (root or Path.cwd()) / outbox
    queued = await open_outbox(outbox_file, synchronous)
    store = RedisStore.from_url(
        url,
        namespace=namespace,
        on_unavailable=OnUnavailable(on_unavailable),
        clock=clock,
        reservation_ttl=reservation_ttl,
        outbox=queued,
        ledger_retention=ledger_retention,
    )
    if queued.waiting:  # what a stopped gateway left: sent now, not at the next request
        store.flush_soon()
    return store


def embedded_file(url: str, root: Path | None) -> Path | None:
    """The SQLite file a ``settings.store`` URL names (relative to ``root``, or cwd); None
    for Redis. What lives in the store (limits and the ledger, executions, kept
    responses) is opened by this one reading of the URL."""
    if url == "embedded" or url.startswith("embedded:"):
        file = url.partition(":")[2] or DEFAULT_FILE
        return Path(file) if file == ":memory:" else (root or Path.cwd()) / file
    if url.startswith(("redis://", "rediss://", "unix://")):
        return None
    raise ValueError(
        f"unknown store {url!r}: expected 'embedded', 'embedded:<file>' or a redis:// URL"
    )
