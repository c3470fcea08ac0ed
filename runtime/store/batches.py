"""Files (/v1/files) and batches (/v1/batches): their records, and the leases and
finished lines of the batches being run. The files' bytes are in ``settings.files_dir``.

    BatchStore                      the seam; ``open_batches(settings.store URL)``
    ├── SQLiteBatches               embedded: a SQLite file of its own beside the ledger's
    └── RedisBatches                replicas: runtime/store/batches_redis.py

In SQLite (``aigw.sqlite`` -> ``aigw-batches.sqlite``):

    files         one row per file: its owner, name, purpose, size (bytes on disk), and
                  when it expires (none: kept until deleted)
    batches       one row per batch: its object (JSON), status, the lease of the
                  process running it (``lease_owner`` until ``lease_until``), and once it
                  is finished when its record is purged (``forget_at``: as its files)
    batch_lines   one row per finished line of a batch: its outcome, as the output or
                  error file will hold it; dropped once those files are written

A line's row is written (committed) as the line finishes, fenced by the lease: a process
that lost its batch's lease writes nothing. After a restart, or when a lease lapses
(its process died), the next claimant runs only the lines without a row, so a line that
finished is never sent (nor billed) again. ``request_counts`` are counted from the line
rows (kept in the batch's object when they are dropped, once its files are written), so
they cannot drift from what the output files hold.

Every job runs on the file's one writer thread (``SQLiteFile``), so a claim (a check then
a write) is atomic even when several worker processes share the file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from .callers import TokenCaller
from .sqlite_file import SQLiteFile, run_statements

# A batch is run (and so leased) while it is in one of these.
RUNNING = ("in_progress", "finalizing", "cancelling")
# And it is finished (for good: its record is purged once its forget_at is past) in these.
FINISHED = ("completed", "failed", "cancelled", "expired")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    filename    TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER
);
CREATE INDEX IF NOT EXISTS files_created ON files (created_at, id);
CREATE TABLE IF NOT EXISTS batches (
    id          TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    "key"       TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    doc         TEXT NOT NULL,
    lease_owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    forget_at   REAL
);
CREATE INDEX IF NOT EXISTS batches_status ON batches (status);
CREATE INDEX IF NOT EXISTS batches_created ON batches (created_at, id);
CREATE TABLE IF NOT EXISTS batch_lines (
    batch_id    TEXT NOT NULL,
    line        INTEGER NOT NULL,
    ok          INTEGER NOT NULL,
    result      TEXT NOT NULL,
    PRIMARY KEY (batch_id, line)
) WITHOUT ROWID
"""


@dataclass(frozen=True, slots=True)
class FileRow:
    id: str
    owner: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None = None  # then it is gone (a 404), and purged; None: kept

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def as_object(self) -> dict[str, Any]:
        """OpenAI's file object."""
        return {"id": self.id, "object": "file", "bytes": self.bytes,
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": "processed",
                "expires_at": self.expires_at, "status_details": None}


# Kept in a batch's object for the runner, not shown: its lines, its files' retention,
# once it is finished its lines' counts (their rows are forgotten then) and when its
# record is purged, whether it is finalizing because its window ended (it ends
# expired), the max_request_bytes its lines were checked against, the JWT caller
# that created it (``TokenCaller``: its lines run as it on any process, after a restart),
# and the x-aigw-tags of the request that created it (its lines are asked with them).
_OURS = ("total", "output_expires_s", "counts", "expiring", "forget_at", "max_line_bytes",
         "caller", "tags")


@dataclass(frozen=True, slots=True)
class BatchRow:
    id: str
    owner: str
    key: str  # the name of the key that created it: its lines run as that key
    doc: Mapping[str, Any]  # the batch object, request_counts aside
    completed: int  # lines that finished with a 2xx
    failed: int  # lines that did not

    @property
    def status(self) -> str:
        status: str = self.doc["status"]
        return status

    @property
    def caller(self) -> TokenCaller | None:
        """The JWT caller that created it, whose lines run as it; None: a key of the
        config (``key``), or a batch created before this was kept."""
        return TokenCaller.from_json(self.doc.get("caller"))

    @property
    def tags(self) -> tuple[str, ...]:
        """The x-aigw-tags the request that created it sent, which Cedar asks each of its
        lines with (none: it sent none, or it was created before they were kept)."""
        return tuple(self.doc.get("tags", ()))

    def as_object(self) -> dict[str, Any]:
        """OpenAI's batch object."""
        total = self.doc.get("total", 0)
        found = {name: value for name, value in self.doc.items() if name not in _OURS}
        return {**found, "request_counts": {"total": total, "completed": self.completed,
                                            "failed": self.failed}}


@dataclass(frozen=True, slots=True)
class LineRow:
    line: int
    ok: bool
    result: str  # the output or error file's line (JSON)


class BatchStore(Protocol):
    """Where files' and batches' records live; every method raises ``StoreUnavailable``
    when the store cannot answer."""

    async def put_file(self, row: FileRow) -> None: ...

    async def file(self, file_id: str) -> FileRow | None: ...

    async def files(self, owner: str | None, purpose: str | None, after: str | None,
                    limit: int, newest_first: bool, now: float) -> tuple[FileRow, ...]:
        """A page of files (``owner``'s, or all for None) not expired at ``now``,
        ``limit`` + 1 asked for so that the caller knows whether there are more."""
        ...

    async def expired_files(self, now: float, limit: int) -> tuple[FileRow, ...]:
        """At most ``limit`` files expired at ``now``, the longest expired first."""
        ...

    async def delete_file(self, file_id: str) -> bool: ...

    async def put_batch(self, batch_id: str, owner: str, key: str,
                        doc: Mapping[str, Any]) -> None: ...

    async def batch(self, batch_id: str) -> BatchRow | None: ...

    async def batches(self, owner: str | None, after: str | None,
                      limit: int) -> tuple[BatchRow, ...]:
        """Newest first, after the batch ``after``; ``limit`` + 1 rows at most."""
        ...

    async def change(self, batch_id: str, changes: Mapping[str, Any],
                     lease_owner: str | None = None, only_from: tuple[str, ...] = ()) -> bool:
        """Merge ``changes`` into the batch's object; False, nothing changed, when its
        lease is not ``lease_owner``'s (if given) or its status not in ``only_from``."""
        ...

    async def claim(self, owner: str, lease_s: float, now: float,
                    skip: frozenset[str] = frozenset()) -> tuple[str, ...]:
        """Take the lease of every running batch that nobody holds now, but ``skip``."""
        ...

    async def renew(self, batch_id: str, owner: str, lease_s: float, now: float) -> bool: ...

    async def release(self, batch_id: str, owner: str) -> None: ...

    async def line_done(self, batch_id: str, owner: str, line: int, ok: bool,
                        result: str) -> bool:
        """Record a line's outcome if ``owner`` still holds the batch; False if not."""
        ...

    async def done(self, batch_id: str) -> frozenset[int]:
        """The numbers of the batch's finished lines (their results are not read)."""
        ...

    async def lines(self, batch_id: str, after: int, limit: int) -> tuple[LineRow, ...]:
        """A page of finished lines: those numbered past ``after``, in order, ``limit`` at
        most. Read a page at a time, so that a batch's results (gigabytes for 50,000 long
        answers) are never all in memory."""
        ...

    async def forget_lines(self, batch_id: str) -> None:
        """Drop a finished batch's line rows (its files hold them; its object the counts)."""
        ...

    async def purge_batches(self, now: float, limit: int, retention_s: float) -> int:
        """Delete at most ``limit`` finished batches whose ``forget_at`` (in their object,
        set when they finish: when their output files expire) is past at ``now``, the
        longest past first; how many. A batch that finished before records were purged
        has none: it is given one first (``forget_at_of``, ``retention_s`` for one that
        asked for no retention of its own), so that it is not kept for ever."""
        ...

    async def aclose(self) -> None: ...


def forget_at_of(doc: Mapping[str, Any], retention_s: float) -> float:
    """When the record of a finished batch made before records were purged goes: as
    ``BatchRunner`` sets it when a batch finishes, its retention after it finished (its
    ``completed_at``, ``failed_at``...; its creation if it has none).

    >>> forget_at_of({"status": "completed", "created_at": 10, "completed_at": 50,
    ...               "output_expires_s": None}, 100)
    150
    """
    finished: float = doc.get(f"{doc['status']}_at") or doc["created_at"]
    kept: float = doc.get("output_expires_s") or retention_s
    return finished + kept


def batches_file(ledger: Path) -> Path:
    """``aigw.sqlite`` -> ``aigw-batches.sqlite`` in its folder (``:memory:`` stays)."""
    if str(ledger) == ":memory:":
        return ledger
    return ledger.with_name(f"{ledger.stem}-batches{ledger.suffix}")


class SQLiteBatches:
    """``BatchStore`` in a SQLite file (``batches_file``); ``await SQLiteBatches.open(path)``."""

    def __init__(self, db: SQLiteFile) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL") -> SQLiteBatches:
        return cls(await SQLiteFile.open(path, synchronous=synchronous, schema=_create_tables))

    async def put_file(self, row: FileRow) -> None:
        await self._db.call(partial(_put_file, row), single=True)

    async def file(self, file_id: str) -> FileRow | None:
        return await self._db.call(partial(_file, file_id), single=True)

    async def files(self, owner: str | None, purpose: str | None, after: str | None,
                    limit: int, newest_first: bool, now: float) -> tuple[FileRow, ...]:
        return await self._db.call(partial(_files, owner, purpose, after, limit, newest_first,
                                           now))

    async def expired_files(self, now: float, limit: int) -> tuple[FileRow, ...]:
        return await self._db.call(partial(_expired_files, now, limit))

    async def delete_file(self, file_id: str) -> bool:
        return await self._db.call(partial(_delete_file, file_id), single=True)

    async def put_batch(self, batch_id: str, owner: str, key: str,
                        doc: Mapping[str, Any]) -> None:
        await self._db.call(partial(_put_batch, batch_id, owner, key, doc), single=True)

    async def batch(self, batch_id: str) -> BatchRow | None:
        return await self._db.call(partial(_batch, batch_id))

    async def batches(self, owner: str | None, after: str | None,
                      limit: int) -> tuple[BatchRow, ...]:
        return await self._db.call(partial(_batches, owner, after, limit))

    async def change(self, batch_id: str, changes: Mapping[str, Any],
                     lease_owner: str | None = None, only_from: tuple[str, ...] = ()) -> bool:
        return await self._db.call(partial(_change, batch_id, dict(changes), lease_owner,
                                           only_from))

    async def claim(self, owner: str, lease_s: float, now: float,
                    skip: frozenset[str] = frozenset()) -> tuple[str, ...]:
        return await self._db.call(partial(_claim, owner, now + lease_s, now, skip))

    async def renew(self, batch_id: str, owner: str, lease_s: float, now: float) -> bool:
        return await self._db.call(partial(_renew, batch_id, owner, now + lease_s),
                                   single=True)

    async def release(self, batch_id: str, owner: str) -> None:
        await self._db.call(partial(_renew, batch_id, owner, 0.0), single=True)

    async def line_done(self, batch_id: str, owner: str, line: int, ok: bool,
                        result: str) -> bool:
        return await self._db.call(partial(_line_done, batch_id, owner, line, ok, result),
                                   single=True)

    async def done(self, batch_id: str) -> frozenset[int]:
        return await self._db.call(partial(_done, batch_id))

    async def lines(self, batch_id: str, after: int, limit: int) -> tuple[LineRow, ...]:
        return await self._db.call(partial(_lines, batch_id, after, limit))

    async def forget_lines(self, batch_id: str) -> None:
        await self._db.call(partial(_forget_lines, batch_id), single=True)

    async def purge_batches(self, now: float, limit: int, retention_s: float) -> int:
        return await self._db.call(partial(_purge_batches, now, limit, retention_s))

    async def aclose(self) -> None:
        await self._db.aclose()


def _create_tables(connection: sqlite3.Connection) -> None:
    run_statements(connection, SCHEMA)
    columns = {row[1] for row in connection.execute("PRAGMA table_info(files)")}
    if "expires_at" not in columns:  # a file made before files expired
        connection.execute("ALTER TABLE files ADD COLUMN expires_at INTEGER")
    connection.execute("CREATE INDEX IF NOT EXISTS files_expiring ON files (expires_at) "
                       "WHERE expires_at IS NOT NULL")
    columns = {row[1] for row in connection.execute("PRAGMA table_info(batches)")}
    if "forget_at" not in columns:  # a store made before batches were purged
        connection.execute("ALTER TABLE batches ADD COLUMN forget_at REAL")
    connection.execute("CREATE INDEX IF NOT EXISTS batches_forgotten ON batches (forget_at) "
                       "WHERE forget_at IS NOT NULL")
    # The running batches, and the finished ones made before records were purged: a purge
    # finds the latter without reading every finished batch each pass.
    connection.execute("CREATE INDEX IF NOT EXISTS batches_unforgotten ON batches (status) "
                       "WHERE forget_at IS NULL")


_FILE_COLUMNS = "id, owner, filename, purpose, bytes, created_at, expires_at"


def _put_file(row: FileRow, connection: sqlite3.Connection) -> None:
    connection.execute(
        f"INSERT OR REPLACE INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (row.id, row.owner, row.filename, row.purpose, row.bytes, row.created_at,
         row.expires_at))


def _file(file_id: str, connection: sqlite3.Connection) -> FileRow | None:
    found = connection.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ?",
                               (file_id,)).fetchone()
    return None if found is None else FileRow(*found)


def _files(owner: str | None, purpose: str | None, after: str | None, limit: int,
           newest_first: bool, now: float,
           connection: sqlite3.Connection) -> tuple[FileRow, ...]:
    owned, owned_args = _owned(owner)
    where, args = owned + " AND (expires_at IS NULL OR expires_at > ?)", [*owned_args, now]
    if purpose is not None:
        where, args = where + " AND purpose = ?", [*args, purpose]
    order = "DESC" if newest_first else "ASC"
    if after is not None:  # the owner's own file only: another's is no cursor, as in Redis
        mark = connection.execute(f"SELECT created_at, id FROM files WHERE id = ? AND {owned}",
                                  (after, *owned_args)).fetchone()
        if mark is not None:
            sign = "<" if newest_first else ">"
            where, args = where + f" AND (created_at, id) {sign} (?, ?)", [*args, *mark]
    rows = connection.execute(
        f"SELECT {_FILE_COLUMNS} FROM files WHERE {where} "
        f"ORDER BY created_at {order}, id {order} LIMIT ?", (*args, limit + 1)).fetchall()
    return tuple(FileRow(*row) for row in rows)


def _expired_files(now: float, limit: int,
                   connection: sqlite3.Connection) -> tuple[FileRow, ...]:
    return tuple(FileRow(*row) for row in connection.execute(
        f"SELECT {_FILE_COLUMNS} FROM files WHERE expires_at IS NOT NULL AND expires_at <= ? "
        "ORDER BY expires_at LIMIT ?", (now, limit)))


def _owned(owner: str | None) -> tuple[str, list[Any]]:
    return ("1", []) if owner is None else ("owner = ?", [owner])


def _delete_file(file_id: str, connection: sqlite3.Connection) -> bool:
    return connection.execute("DELETE FROM files WHERE id = ?", (file_id,)).rowcount > 0


def _put_batch(batch_id: str, owner: str, key: str, doc: Mapping[str, Any],
               connection: sqlite3.Connection) -> None:
    connection.execute(
        'INSERT INTO batches (id, owner, "key", status, created_at, doc, forget_at) '
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (batch_id, owner, key, doc["status"], doc["created_at"], json.dumps(dict(doc)),
         doc.get("forget_at")))


_BATCH = ('SELECT b.id, b.owner, b."key", b.doc, '
          "(SELECT count(*) FROM batch_lines l WHERE l.batch_id = b.id AND l.ok), "
          "(SELECT count(*) FROM batch_lines l WHERE l.batch_id = b.id AND NOT l.ok) "
          "FROM batches b")


def _batch_row(row: tuple[Any, ...]) -> BatchRow:
    doc = json.loads(row[3])
    completed, failed = doc.get("counts") or (row[4], row[5])
    return BatchRow(row[0], row[1], row[2], doc, completed, failed)


def _batch(batch_id: str, connection: sqlite3.Connection) -> BatchRow | None:
    found = connection.execute(_BATCH + " WHERE b.id = ?", (batch_id,)).fetchone()
    return None if found is None else _batch_row(found)


def _batches(owner: str | None, after: str | None, limit: int,
             connection: sqlite3.Connection) -> tuple[BatchRow, ...]:
    where, args = ("1", []) if owner is None else ("b.owner = ?", [owner])
    if after is not None:  # the owner's own batch only: another's is no cursor, as in Redis
        owned, owned_args = _owned(owner)
        mark = connection.execute(f"SELECT created_at, id FROM batches WHERE id = ? AND {owned}",
                                  (after, *owned_args)).fetchone()
        if mark is not None:
            where, args = where + " AND (b.created_at, b.id) < (?, ?)", [*args, *mark]
    rows = connection.execute(
        _BATCH + f" WHERE {where} ORDER BY b.created_at DESC, b.id DESC LIMIT ?",
        (*args, limit + 1)).fetchall()
    return tuple(_batch_row(row) for row in rows)


def _change(batch_id: str, changes: dict[str, Any], lease_owner: str | None,
            only_from: tuple[str, ...], connection: sqlite3.Connection) -> bool:
    found = connection.execute("SELECT doc, lease_owner FROM batches WHERE id = ?",
                               (batch_id,)).fetchone()
    if found is None or (lease_owner is not None and found[1] != lease_owner):
        return False
    doc = json.loads(found[0])
    if only_from and doc["status"] not in only_from:
        return False
    doc.update(changes)
    connection.execute("UPDATE batches SET doc = ?, status = ?, forget_at = ? WHERE id = ?",
                       (json.dumps(doc), doc["status"], doc.get("forget_at"), batch_id))
    return True


def _claim(owner: str, until: float, now: float, skip: frozenset[str],
           connection: sqlite3.Connection) -> tuple[str, ...]:
    marks = ", ".join("?" for _ in RUNNING)
    ids = tuple(row[0] for row in connection.execute(
        f"SELECT id FROM batches WHERE status IN ({marks}) AND lease_until < ? "
        "ORDER BY created_at", (*RUNNING, now)) if row[0] not in skip)
    for batch_id in ids:
        connection.execute("UPDATE batches SET lease_owner = ?, lease_until = ? WHERE id = ?",
                           (owner, until, batch_id))
    return ids


def _renew(batch_id: str, owner: str, until: float, connection: sqlite3.Connection) -> bool:
    return connection.execute(
        "UPDATE batches SET lease_until = ? WHERE id = ? AND lease_owner = ?",
        (until, batch_id, owner)).rowcount > 0


def _line_done(batch_id: str, owner: str, line: int, ok: bool, result: str,
               connection: sqlite3.Connection) -> bool:
    cursor = connection.execute(
        "INSERT OR IGNORE INTO batch_lines (batch_id, line, ok, result) "
        "SELECT ?, ?, ?, ? WHERE EXISTS "
        "(SELECT 1 FROM batches WHERE id = ? AND lease_owner = ?)",
        (batch_id, line, int(ok), result, batch_id, owner))
    return cursor.rowcount > 0


def _forget_lines(batch_id: str, connection: sqlite3.Connection) -> None:
    connection.execute("DELETE FROM batch_lines WHERE batch_id = ?", (batch_id,))


def _done(batch_id: str, connection: sqlite3.Connection) -> frozenset[int]:
    return frozenset(row[0] for row in connection.execute(
        "SELECT line FROM batch_lines WHERE batch_id = ?", (batch_id,)))


def _lines(batch_id: str, after: int, limit: int,
           connection: sqlite3.Connection) -> tuple[LineRow, ...]:
    return tuple(LineRow(row[0], bool(row[1]), row[2]) for row in connection.execute(
        "SELECT line, ok, result FROM batch_lines WHERE batch_id = ? AND line > ? "
        "ORDER BY line LIMIT ?", (batch_id, after, limit)))


def _give_forget_at(limit: int, retention_s: float, connection: sqlite3.Connection) -> None:
    """Give at most ``limit`` finished batches without a ``forget_at`` (finished before
    records were purged) theirs, in their object and its column."""
    marks = ", ".join("?" for _ in FINISHED)
    for batch_id, text in connection.execute(
            f"SELECT id, doc FROM batches WHERE forget_at IS NULL AND status IN ({marks}) "
            "LIMIT ?", (*FINISHED, limit)).fetchall():
        doc = json.loads(text)
        doc["forget_at"] = forget_at_of(doc, retention_s)
        connection.execute("UPDATE batches SET doc = ?, forget_at = ? WHERE id = ?",
                           (json.dumps(doc), doc["forget_at"], batch_id))


def _purge_batches(now: float, limit: int, retention_s: float,
                   connection: sqlite3.Connection) -> int:
    _give_forget_at(limit, retention_s, connection)
    ids = [row[0] for row in connection.execute(
        "SELECT id FROM batches WHERE forget_at IS NOT NULL AND forget_at <= ? "
        "ORDER BY forget_at LIMIT ?", (now, limit))]
    for batch_id in ids:  # its lines were forgotten when its files were written, or it had none
        connection.execute("DELETE FROM batch_lines WHERE batch_id = ?", (batch_id,))
        connection.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
    return len(ids)
