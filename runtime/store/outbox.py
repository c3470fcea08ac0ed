"""Where the Redis store's writes wait while Redis cannot take them.

A write is one Lua script call kept as data (``Invocation``: the script's name, its
keys and its arguments), so it can wait in a file and be sent after a restart. Every
script is idempotent per request id (a settle deletes its reservation's marker, a
charge and a ledger record write theirs), so a write sent twice (before a crash whose
reply was lost, and again after) changes nothing the second time.

``MemoryOutbox`` keeps up to ``limit`` writes in this process: they are lost if it
stops, and past the limit the oldest is dropped (logged). ``FileOutbox`` keeps them in a
SQLite file, committed before the request that made them finishes, with no limit but
the disk; what a stopped gateway left there is sent once Redis answers again. Several
processes may share one file (hypercorn's workers): each sends the oldest rows, and a
row sent twice is harmless.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from ..errors import StoreUnavailable
from .sqlite_file import SQLiteFile

log = logging.getLogger("aigw.store")

Arg = str | int | float


@dataclass(frozen=True, slots=True)
class Invocation:
    """One call of the Redis store's Lua script ``script``."""

    script: str
    keys: tuple[str, ...]
    args: tuple[Arg, ...]


class Outbox(Protocol):
    """Writes in the order they were put; ``delivered`` removes the oldest ones."""

    @property
    def waiting(self) -> bool:
        """Whether writes may be waiting (a hint: ``oldest`` says for sure)."""
        ...

    async def put(self, invocation: Invocation) -> None: ...

    async def oldest(self, count: int) -> list[tuple[int, Invocation]]:
        """Up to ``count`` of the oldest writes, each with its sequence number."""
        ...

    async def delivered(self, through: int) -> None:
        """Forget every write up to sequence number ``through``, which Redis took."""
        ...

    async def count(self) -> int: ...

    async def aclose(self) -> None: ...


class MemoryOutbox:
    def __init__(self, limit: int = 100_000) -> None:
        self._writes: deque[tuple[int, Invocation]] = deque(maxlen=limit)
        self._next = 0

    @property
    def waiting(self) -> bool:
        return bool(self._writes)

    async def put(self, invocation: Invocation) -> None:
        if len(self._writes) == self._writes.maxlen:
            log.error("redis store outbox full: the oldest queued write is dropped")
        self._next += 1
        self._writes.append((self._next, invocation))

    async def oldest(self, count: int) -> list[tuple[int, Invocation]]:
        return [self._writes[index] for index in range(min(count, len(self._writes)))]

    async def delivered(self, through: int) -> None:
        while self._writes and self._writes[0][0] <= through:
            self._writes.popleft()

    async def count(self) -> int:
        return len(self._writes)

    async def aclose(self) -> None:
        if self._writes:
            log.error("redis store closed with %d writes it could not deliver (lost: they "
                      "were kept in memory)", len(self._writes))


SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    script TEXT NOT NULL,
    keys   TEXT NOT NULL,
    args   TEXT NOT NULL
)
"""


class FileOutbox:
    """Open with ``await FileOutbox.open(path)``."""

    def __init__(self, db: SQLiteFile, waiting: bool) -> None:
        self._db = db
        self._waiting = waiting

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL") -> FileOutbox:
        db = await SQLiteFile.open(path, synchronous=synchronous, schema=_create)
        try:
            left = await db.call(_count)
        except StoreUnavailable:
            await db.aclose()
            raise
        if left:
            log.warning("redis store: %d writes left in %s wait for Redis", left, path)
        return cls(db, left > 0)

    @property
    def path(self) -> Path:
        return self._db.path

    @property
    def waiting(self) -> bool:
        return self._waiting

    async def put(self, invocation: Invocation) -> None:
        await self._db.call(partial(_insert, invocation), single=True)
        self._waiting = True

    async def oldest(self, count: int) -> list[tuple[int, Invocation]]:
        rows = await self._db.call(partial(_oldest, count))
        if not rows:
            self._waiting = False
        return rows

    async def delivered(self, through: int) -> None:
        await self._db.call(partial(_delete_through, through), single=True)

    async def count(self) -> int:
        return await self._db.call(_count, single=True)

    async def aclose(self) -> None:
        left = await self.count()
        if left:
            log.warning("redis store closed with %d writes waiting in %s: they are sent once "
                        "a gateway on this file reaches Redis", left, self.path)
        await self._db.aclose()


async def open_outbox(path: Path | None, synchronous: str = "FULL") -> Outbox:
    """A ``FileOutbox`` on ``path``; in memory when ``path`` is None or cannot be opened
    (a read-only gateway directory, say), which is logged."""
    if path is None:
        return MemoryOutbox()
    try:
        return await FileOutbox.open(path, synchronous=synchronous)
    except StoreUnavailable as exc:
        log.error("redis store: cannot keep its outbox in %s (%s); writes made while Redis "
                  "is unreachable are kept in memory only, and lost if the gateway stops",
                  path, exc.__cause__ or exc)
        return MemoryOutbox()


def _create(connection: sqlite3.Connection) -> None:
    connection.execute(SCHEMA)


def _insert(invocation: Invocation, connection: sqlite3.Connection) -> None:
    connection.execute(
        "INSERT INTO outbox (script, keys, args) VALUES (?, ?, ?)",
        (invocation.script, json.dumps(invocation.keys), json.dumps(invocation.args)),
    )


def _oldest(count: int, connection: sqlite3.Connection) -> list[tuple[int, Invocation]]:
    rows = connection.execute(
        "SELECT seq, script, keys, args FROM outbox ORDER BY seq LIMIT ?", (count,)
    ).fetchall()
    found = []
    for seq, script, keys, args in rows:
        try:
            found.append((seq, Invocation(script, tuple(json.loads(keys)),
                                          tuple(json.loads(args)))))
        except (TypeError, ValueError):  # damaged: it would block every write after it
            log.error("redis store: dropped outbox row %d, which cannot be read", seq)
            connection.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
    return found


def _delete_through(through: int, connection: sqlite3.Connection) -> None:
    connection.execute("DELETE FROM outbox WHERE seq <= ?", (through,))


def _count(connection: sqlite3.Connection) -> int:
    (count,) = connection.execute("SELECT count(*) FROM outbox").fetchone()
    return int(count)
