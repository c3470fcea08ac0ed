"""One SQLite file in WAL mode, written by one thread that commits in batches.

A job is a function of the connection. Jobs run on the writer thread in the order
they were queued, each inside a savepoint of a transaction shared with whatever else
was waiting (group commit), and a caller's future resolves only once that
transaction has committed: an awaited write is durable (``synchronous=FULL``: on
disk, not just in the OS cache). ``post`` queues a job without waiting for it; it is
still committed no later than any job queued after it.

The tables: ``ledger`` (one row per request id), ``ledger_daily`` (the ledger's totals
per UTC day and key, team, route and deployment: a summary reads the days its
window covers whole there, not their records) and ``budget_spend`` (what each budget
counter has spent, so budgets survive a restart).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import StoreUnavailable
from .usage import day_name, day_of, window_of
from .values import NANOS, Dimension, LedgerRecord, UsageQuery, UsageRow, to_nanos

log = logging.getLogger("aigw.store")

T = TypeVar("T")
Counter = tuple[str, str, str]
BATCH = 512
CHECKPOINT_EVERY_S = 1.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    request_id  TEXT PRIMARY KEY,
    at          REAL NOT NULL,
    day         TEXT NOT NULL,
    "key"       TEXT,
    team        TEXT,
    "user"      TEXT,
    route       TEXT,
    deployment  TEXT,
    tokens_in   INTEGER NOT NULL,
    tokens_out  INTEGER NOT NULL,
    cost_nanos  INTEGER NOT NULL,
    latency_ms  REAL NOT NULL,
    status      INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    tokens_cached INTEGER NOT NULL DEFAULT 0,
    estimated   INTEGER NOT NULL DEFAULT 0,
    batch       TEXT,
    tokens_audio_in  INTEGER NOT NULL DEFAULT 0,
    tokens_audio_out INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ledger_at ON ledger (at);
CREATE INDEX IF NOT EXISTS ledger_team_at ON ledger (team, at);
CREATE INDEX IF NOT EXISTS ledger_key_at ON ledger ("key", at);
CREATE TABLE IF NOT EXISTS budget_spend (
    scope       TEXT NOT NULL,
    name        TEXT NOT NULL,
    period      TEXT NOT NULL,
    spent_nanos INTEGER NOT NULL,
    PRIMARY KEY (scope, name, period)
) WITHOUT ROWID;
PRAGMA user_version = 3;
"""
# Columns added since: a ledger file an older aigw wrote gets them when it is opened.
_ADDED_COLUMNS = {"tokens_cached": "INTEGER NOT NULL DEFAULT 0",
                  "estimated": "INTEGER NOT NULL DEFAULT 0", "batch": "TEXT",
                  "tokens_audio_in": "INTEGER NOT NULL DEFAULT 0",
                  "tokens_audio_out": "INTEGER NOT NULL DEFAULT 0"}

# A row of ledger_daily per day and group. NULLs are all distinct in a UNIQUE index, so
# the group's index reads a NULL as x'' (a blob, equal to no text, not even '').
# (Not by the user: see usage.TOTALS_BY.)
_GROUP = ", ".join(["day", *(f"ifnull({column}, x'')" for column in (
    '"key"', "team", "route", "deployment"))])
_SAME_GROUP = " AND ".join(["day = OLD.day", *(
    f"ifnull({column}, x'') = ifnull(OLD.{column}, x'')"
    for column in ('"key"', "team", "route", "deployment"))])
# What a row of ledger_daily sums for its day and group. The audio tokens came later: a
# file whose ledger_daily lacks them gets them (as 0: its records had none) when opened.
_FIGURES = ("records", "requests", "errors", "tokens_in", "tokens_out", "tokens_cached",
            "cost_nanos", "estimated_nanos", "tokens_audio_in", "tokens_audio_out")


def _record_figures(row: str = "") -> tuple[str, ...]:
    """What a ledger row adds to its group's ``_FIGURES``, as SQL over its columns
    (``row``: ``NEW.`` or ``OLD.`` in a trigger). An estimated record (a call a request
    made and did not use) adds its tokens and cost, and is no request nor an error."""
    return ("1", f"NOT {row}estimated", f"{row}status >= 400 AND NOT {row}estimated",
            f"{row}tokens_in", f"{row}tokens_out", f"{row}tokens_cached", f"{row}cost_nanos",
            f"CASE WHEN {row}estimated THEN {row}cost_nanos ELSE 0 END",
            f"{row}tokens_audio_in", f"{row}tokens_audio_out")


_DAILY_COLUMNS = ", ".join(['day, "key", team, route, deployment', *_FIGURES])
# Kept by triggers, so in the very statement that inserts or deletes a ledger row (whole
# or not at all, whichever process or aigw version runs it): a record is counted once.
# They name every figure: a file that gains figures has them made again (``_add_figures``).
DAILY_TRIGGERS = (
    f"""CREATE TRIGGER ledger_daily_add AFTER INSERT ON ledger BEGIN
        INSERT INTO ledger_daily ({_DAILY_COLUMNS}) VALUES (NEW.day, NEW."key", NEW.team,
            NEW.route, NEW.deployment, {", ".join(_record_figures("NEW."))})
        ON CONFLICT ({_GROUP}) DO UPDATE SET
            {", ".join(f"{figure} = {figure} + excluded.{figure}" for figure in _FIGURES)};
    END""",
    f"""CREATE TRIGGER ledger_daily_remove AFTER DELETE ON ledger BEGIN
        UPDATE ledger_daily SET {", ".join(
            f"{figure} = {figure} - ({added})"
            for figure, added in zip(_FIGURES, _record_figures("OLD."), strict=True))}
        WHERE {_SAME_GROUP};
    END""",
)
DAILY_SCHEMA = (
    f"""CREATE TABLE ledger_daily (
        day           TEXT NOT NULL,
        "key"         TEXT,
        team          TEXT,
        route         TEXT,
        deployment    TEXT,
        {", ".join(f"{figure} INTEGER NOT NULL" for figure in _FIGURES)}
    )""",
    f"CREATE UNIQUE INDEX ledger_daily_group ON ledger_daily ({_GROUP})",
    "CREATE INDEX ledger_daily_team ON ledger_daily (team, day)",
    'CREATE INDEX ledger_daily_key ON ledger_daily ("key", day)',
    *DAILY_TRIGGERS,
)

_COLUMN = {
    Dimension.DAY: "day",
    Dimension.TEAM: "team",
    Dimension.KEY: '"key"',
    Dimension.USER: '"user"',
    Dimension.ROUTE: "route",
    Dimension.DEPLOYMENT: "deployment",
}


@dataclass(frozen=True, slots=True)
class _Job:
    run: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[Any] | None = None
    # One SQL statement, which SQLite applies whole or not at all: it needs no
    # savepoint of its own to leave the shared transaction intact when it fails.
    single: bool = False


class SQLiteFile:
    """The writer thread and its queue; ``await call(job)`` or ``post(job)``.

    The writer never checkpoints: SQLite's automatic checkpoint runs inside the commit
    that crosses 1,000 WAL pages, copying them into the database and syncing it, and
    every request waiting on its ledger record waited behind it (tens to hundreds of
    milliseconds under load: bench/BENCH.md, "What the profiles found"). A second thread
    with its own connection checkpoints instead, passively (it never blocks the
    writer), every ``CHECKPOINT_EVERY_S``. Commits are as durable as before.
    """

    def __init__(self, path: Path, *, synchronous: str = "FULL") -> None:
        self.path = path
        self._synchronous = synchronous
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=f"aigw-sqlite:{path.name}")
        self._thread.daemon = True
        self._checkpointer = threading.Thread(
            target=self._checkpoint, name=f"aigw-sqlite-checkpoint:{path.name}", daemon=True
        )
        self._stopping = threading.Event()
        self._closed = False

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        synchronous: str = "FULL",
        schema: Callable[[sqlite3.Connection], None] | None = None,
    ) -> SQLiteFile:
        """Start the writer and create the tables if they are missing: ``schema``'s, by
        default the ledger's and the budgets'."""
        file = cls(path, synchronous=synchronous)
        file._thread.start()
        try:
            await file.call(schema or create_schema)
        except StoreUnavailable:
            await file.aclose()
            raise
        if file._on_disk:
            file._checkpointer.start()
        return file

    @property
    def _on_disk(self) -> bool:
        return str(self.path) != ":memory:"

    async def call(self, run: Callable[[sqlite3.Connection], T], *, single: bool = False) -> T:
        """Run ``run(connection)`` on the writer; return once its transaction committed.
        ``single``: ``run`` executes one SQL statement (no savepoint needed around it)."""
        if self._closed:
            raise StoreUnavailable(f"the embedded store {self.path} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(run, loop, future, single))
        try:
            return await future
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"the embedded store {self.path} failed: {exc}") from exc

    def post(self, run: Callable[[sqlite3.Connection], object]) -> None:
        """Queue ``run`` without waiting; a failure is logged."""
        if self._closed:
            raise StoreUnavailable(f"the embedded store {self.path} is closed")
        self._queue.put(_Job(run))

    async def aclose(self) -> None:
        """Finish every queued job, then stop the writer (its close checkpoints the rest)."""
        if not self._closed:
            self._closed = True
            self._stopping.set()
            if self._checkpointer.is_alive():
                await asyncio.to_thread(self._checkpointer.join)
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)

    def _checkpoint(self) -> None:
        """Copy committed WAL pages into the database, off the writer's path."""
        try:
            connection = sqlite3.connect(self.path, isolation_level=None)
        except sqlite3.Error as exc:
            log.error("embedded store: no checkpoint connection (%s); the WAL will grow", exc)
            return
        try:
            while not self._stopping.wait(CHECKPOINT_EVERY_S):
                try:
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # e.g. busy: the next round catches up
                    log.debug("embedded store: checkpoint skipped: %s", exc)
        finally:
            connection.close()

    def _serve(self) -> None:
        try:
            if self._on_disk:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, isolation_level=None)
            _while_locked(lambda: connection.execute("PRAGMA journal_mode=WAL"))
            connection.execute(f"PRAGMA synchronous={self._synchronous}")
            if self._on_disk:  # the checkpointer thread does it (see the class)
                connection.execute("PRAGMA wal_autocheckpoint=0")
        except (sqlite3.Error, OSError) as exc:
            self._fail_all(exc)
            return
        try:
            while (batch := self._take()) is not None:
                self._commit(connection, batch)
        finally:
            connection.close()

    def _take(self) -> list[_Job] | None:
        """The next batch: one job, blocking, then whatever else is already queued."""
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < BATCH:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._queue.put(None)  # stop after this batch
                break
            batch.append(job)
        return batch

    def _commit(self, connection: sqlite3.Connection, batch: list[_Job]) -> None:
        outcomes: list[tuple[object, BaseException | None]] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for job in batch:
                if job.single:
                    try:
                        outcomes.append((job.run(connection), None))
                    except sqlite3.OperationalError:
                        raise  # the disk or the file, not the job: every job fails
                    except Exception as exc:  # e.g. a constraint: this statement only
                        outcomes.append((None, exc))
                    continue
                connection.execute("SAVEPOINT job")
                try:
                    result = job.run(connection)
                # Handed to the job's caller and raised there; one job's failure must not
                # fail the others sharing the transaction.
                except Exception as exc:
                    connection.execute("ROLLBACK TO job")
                    outcomes.append((None, exc))
                else:
                    outcomes.append((result, None))
                connection.execute("RELEASE job")
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            outcomes = [(None, exc)] * len(batch)
            if connection.in_transaction:
                try:
                    connection.execute("ROLLBACK")
                except sqlite3.Error as rollback:
                    log.error("embedded store: rollback failed: %s", rollback)
        _resolve(batch, outcomes)

    def _fail_all(self, error: BaseException) -> None:
        while (job := self._queue.get()) is not None:
            _resolve([job], [(None, error)])


def _while_locked(run: Callable[[], object], tries: int = 100) -> None:
    """``run``, tried again while another process holds the file (several workers opening
    it at once: switching to WAL takes a lock the busy timeout does not wait for)."""
    for attempt in range(tries):
        try:
            run()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == tries - 1:
                raise
            time.sleep(0.05)


Outcome = tuple[object, BaseException | None]


def _resolve(batch: list[_Job], outcomes: list[Outcome]) -> None:
    """Hand each job's outcome to its caller: one wake-up of each event loop a batch,
    not one a job (each is a write to the loop's wake-up pipe and a callback)."""
    waiting: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
    for job, outcome in zip(batch, outcomes, strict=True):
        if job.future is None or job.loop is None:
            if outcome[1] is not None:
                log.error("embedded store: a background write failed: %s", outcome[1])
            continue
        waiting.setdefault(job.loop, []).append((job.future, outcome))
    for loop, settled in waiting.items():
        try:
            loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:  # the caller's loop is closed; nobody is waiting any more
            log.warning("embedded store: a result arrived after its event loop closed")


def _settle(settled: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    for future, (result, error) in settled:
        if future.done():  # the caller may have been cancelled meanwhile
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def run_statements(connection: sqlite3.Connection, script: str) -> None:
    """Each ``;``-separated statement of ``script`` (a schema's CREATE ... IF NOT EXISTS),
    in the connection's transaction: ``executescript`` would commit first."""
    for statement in script.split(";"):
        if statement.strip():
            connection.execute(statement)


def create_schema(connection: sqlite3.Connection) -> None:
    run_statements(connection, SCHEMA)
    present = {row[1] for row in connection.execute("PRAGMA table_info(ledger)")}
    for name, kind in _ADDED_COLUMNS.items():
        if name not in present:
            connection.execute(f"ALTER TABLE ledger ADD COLUMN {name} {kind}")
    daily = {row[1] for row in connection.execute("PRAGMA table_info(ledger_daily)")}
    if not daily:
        _add_daily_totals(connection)
    elif missing := [figure for figure in _FIGURES if figure not in daily]:
        _add_figures(connection, missing)


def _add_figures(connection: sqlite3.Connection, missing: list[str]) -> None:
    """Give an older file's ``ledger_daily`` the figures it lacks, as 0 (its records
    have none of them: their columns were added as 0 too), and its triggers made again
    to sum them, in one transaction: a record written after counts them."""
    for figure in missing:
        connection.execute(f"ALTER TABLE ledger_daily ADD COLUMN {figure} INTEGER NOT NULL "
                           "DEFAULT 0")
    for trigger in ("ledger_daily_add", "ledger_daily_remove"):
        connection.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    for statement in DAILY_TRIGGERS:
        connection.execute(statement)


def _add_daily_totals(connection: sqlite3.Connection) -> None:
    """Create ``ledger_daily`` and sum the records already in the ledger into it, in the
    transaction that creates its triggers (no other writer gets between the two)."""
    for statement in DAILY_SCHEMA:
        connection.execute(statement)
    figures = ", ".join(f"SUM({figure})" for figure in _record_figures())
    columns = 'day, "key", team, route, deployment'
    cursor = connection.execute(
        f"INSERT INTO ledger_daily SELECT {columns}, {figures} FROM ledger GROUP BY {columns}")
    if cursor.rowcount > 0:
        log.warning("embedded store: summed the ledger's records into daily totals, once "
                    "(they were written before those existed)")


def insert_record(record: LedgerRecord, connection: sqlite3.Connection) -> bool:
    """Insert one ledger row; False when the request id was recorded already."""
    day = day_of(record.at)
    cursor = connection.execute(
        "INSERT OR IGNORE INTO ledger (request_id, at, day, \"key\", team, \"user\", route, "
        "deployment, tokens_in, tokens_out, cost_nanos, latency_ms, status, fingerprint, "
        "tokens_cached, estimated, batch, tokens_audio_in, tokens_audio_out) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.request_id,
            record.at,
            day,
            record.key,
            record.team,
            record.user,
            record.route,
            record.deployment,
            record.tokens_in,
            record.tokens_out,
            to_nanos(record.cost),
            record.latency_ms,
            record.status,
            record.fingerprint,
            record.tokens_cached,
            int(record.estimated),
            record.batch,
            record.tokens_audio_in,
            record.tokens_audio_out,
        ),
    )
    return cursor.rowcount == 1


def delete_records_before(cutoff: float, connection: sqlite3.Connection) -> None:
    """Forget the ledger records older than ``cutoff`` (the ledger's retention); their
    days' totals lose them (a trigger), and the days with none left go."""
    connection.execute("DELETE FROM ledger WHERE at < ?", (cutoff,))
    connection.execute("DELETE FROM ledger_daily WHERE day < ? AND records = 0",
                       (day_of(cutoff),))


def add_spend(charges: tuple[tuple[Counter, int], ...], connection: sqlite3.Connection) -> None:
    connection.executemany(
        "INSERT INTO budget_spend VALUES (?, ?, ?, ?) ON CONFLICT (scope, name, period) "
        "DO UPDATE SET spent_nanos = spent_nanos + excluded.spent_nanos",
        [(*counter, nanos) for counter, nanos in charges],
    )


def load_spend(counters: tuple[Counter, ...], connection: sqlite3.Connection) -> dict[Counter, int]:
    spent: dict[Counter, int] = {}
    for counter in counters:
        row = connection.execute(
            "SELECT spent_nanos FROM budget_spend WHERE scope = ? AND name = ? AND period = ?",
            counter,
        ).fetchone()
        spent[counter] = int(row[0]) if row else 0
    return spent


def usage(query: UsageQuery, connection: sqlite3.Connection) -> tuple[UsageRow, ...]:
    """The ledger summed per group: the days the window covers whole from
    ``ledger_daily``, the partial days at its edges from their records (SQL text is built
    only from the fixed column maps)."""
    columns = [_COLUMN[dimension] for dimension in query.group_by]
    owner = [(sql, value) for sql, value in (("team = ?", query.team), ('"key" = ?', query.key))
             if value is not None]
    parts: list[str] = []
    params: list[object] = []

    def part(table: str, figures: tuple[str, ...],
             conditions: list[tuple[str, object]]) -> None:
        picked = [*owner, *conditions]
        select = ", ".join([*columns, *(f"{figure} AS {name}"
                                        for figure, name in zip(figures, _FIGURES, strict=True))])
        sql = f"SELECT {select} FROM {table}"
        if picked:
            sql += " WHERE " + " AND ".join(condition for condition, _ in picked)
        parts.append(sql)
        params.extend(value for _, value in picked)

    window = window_of(query)
    if window.days is not None:
        first, end = window.days
        part("ledger_daily", _FIGURES, [
            (sql, day_name(day)) for sql, day in (("day >= ?", first), ("day < ?", end))
            if day is not None
        ])
    for low, high in window.edges:
        part("ledger", _record_figures(),
             [(sql, at) for sql, at in (("at >= ?", low), ("at < ?", high)) if at is not None])
    totals = ", ".join(f"SUM({figure})" for figure in _FIGURES)
    sql = f"SELECT {', '.join([*columns, totals])} FROM ({' UNION ALL '.join(parts)})"
    if columns:
        sql += f" GROUP BY {', '.join(columns)} ORDER BY {', '.join(columns)}"
    rows = []
    for row in connection.execute(sql, params):
        (*group, records, requests, errors, tokens_in, tokens_out, tokens_cached, cost_nanos,
         estimated_nanos, tokens_audio_in, tokens_audio_out) = row
        if not records:  # none at all, or a group whose records a retention deleted
            continue
        fields: dict[str, Any] = {d.value: v for d, v in zip(query.group_by, group, strict=True)}
        rows.append(
            UsageRow(
                **fields,
                requests=requests,
                errors=errors,
                tokens_in=tokens_in,
                tokens_out=tokens_out,
                tokens_cached=tokens_cached,
                tokens_audio_in=tokens_audio_in,
                tokens_audio_out=tokens_audio_out,
                cost=cost_nanos / NANOS,
                estimated_cost=estimated_nanos / NANOS,
            )
        )
    return tuple(rows)
