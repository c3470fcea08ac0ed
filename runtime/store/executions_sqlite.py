"""Executions in the embedded store: tables beside the ledger in the gateway's SQLite file.

Every read and write is a job on the file's one writer thread (``SQLiteFile``) inside
``BEGIN IMMEDIATE``, so a check-then-write (a claim, a fenced checkpoint, a pause) is
atomic even when several worker processes share the file. There is no queue: a runner
finds work by asking for active executions nobody holds (``claim``), which it does
every half second and whenever this process creates or resumes one; a claim reads
bounded ranges of partial indexes (``CLAIM_SQL``), never the executions held.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import fields, replace
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .callers import TokenCaller
from .executions import (
    ACTIVE,
    FINAL,
    Checkpoint,
    CostRow,
    Decision,
    Event,
    Execution,
    ExecutionConflict,
    LeaseLost,
    Memo,
    NewEvent,
    NewExecution,
    Status,
    StepState,
    StepStatus,
    abandon,
    check_decidable,
    claimable,
    control_change,
    decision_from_json,
    decision_to_json,
    in_start_order,
    json_text,
    local_owners,
    new_execution_id,
    step_from_json,
    step_to_json,
)
from .sqlite_file import SQLiteFile, run_statements

# An active execution, as the claim's partial indexes and queries say it (the same text,
# so SQLite sees that the queries' rows are in the indexes).
_ACTIVE_SQL = "status IN (" + ", ".join(f"'{status.value}'" for status in sorted(ACTIVE)) + ")"

SCHEMA = """
CREATE TABLE IF NOT EXISTS wf_executions (
    id                TEXT PRIMARY KEY,
    pipeline          TEXT NOT NULL,
    status            TEXT NOT NULL,
    input             TEXT NOT NULL,
    output            TEXT,
    error             TEXT,
    "key"             TEXT,
    caller            TEXT,
    "user"            TEXT,
    idempotency_key   TEXT,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL,
    finished_at       REAL,
    cost              REAL NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    model_calls       INTEGER NOT NULL DEFAULT 0,
    graph             TEXT NOT NULL,
    facts             TEXT,
    trace             TEXT,
    control           TEXT,
    owner             TEXT,
    lease_until       REAL NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS wf_idempotency
    ON wf_executions ("key", idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS wf_by_status ON wf_executions (status, created_at, id);
CREATE INDEX IF NOT EXISTS wf_by_created ON wf_executions (created_at, id);
CREATE INDEX IF NOT EXISTS wf_by_key ON wf_executions ("key", created_at, id);
CREATE INDEX IF NOT EXISTS wf_by_pipeline ON wf_executions (pipeline, created_at, id);
CREATE TABLE IF NOT EXISTS wf_steps (
    execution_id TEXT NOT NULL,
    step         TEXT NOT NULL,
    state        TEXT NOT NULL,
    PRIMARY KEY (execution_id, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wf_memos (
    execution_id TEXT NOT NULL,
    "key"        TEXT NOT NULL,
    value        TEXT NOT NULL,
    PRIMARY KEY (execution_id, "key")
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wf_events (
    execution_id TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    at           REAL NOT NULL,
    type         TEXT NOT NULL,
    step         TEXT,
    data         TEXT NOT NULL,
    PRIMARY KEY (execution_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS wf_decisions (
    execution_id TEXT NOT NULL,
    step         TEXT NOT NULL,
    decision     TEXT NOT NULL,
    PRIMARY KEY (execution_id, step)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS wf_finished ON wf_executions (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS wf_purged_costs (
    pipeline          TEXT PRIMARY KEY,
    executions        INTEGER NOT NULL,
    succeeded         INTEGER NOT NULL,
    failed            INTEGER NOT NULL,
    cancelled         INTEGER NOT NULL,
    cost              REAL NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    model_calls       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS wf_claimable ON wf_executions (lease_until, created_at)
    WHERE """ + _ACTIVE_SQL + """;
CREATE INDEX IF NOT EXISTS wf_held_by ON wf_executions (owner, created_at)
    WHERE """ + _ACTIVE_SQL + """
"""

# Indexes of files written before the listing's were added, which those replace: the
# same columns without (created_at, id), so a page of a key, a status or a pipeline read
# every row of it and sorted them (or, for a key, scanned the whole table).
_REPLACED_INDEXES = ("wf_active", "wf_created")

_COLUMNS = tuple(item.name for item in fields(Execution))
_SELECT = "SELECT " + ", ".join(f'"{name}"' for name in _COLUMNS) + " FROM wf_executions"


class SQLiteExecutions:
    """``ExecutionStore`` on a SQLite file; open it with ``await SQLiteExecutions.open(path)``."""

    def __init__(self, db: SQLiteFile) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL") -> SQLiteExecutions:
        db = await SQLiteFile.open(path, synchronous=synchronous)
        await db.call(_create_tables)
        return cls(db)

    async def create(self, new: NewExecution, now: float) -> tuple[Execution, bool]:
        return await self._db.call(partial(_create, new, now))

    async def get(self, execution_id: str) -> Execution | None:
        return await self._db.call(partial(_get, execution_id))

    async def list(
        self,
        *,
        key: str | None = None,
        pipeline: str | None = None,
        statuses: Collection[Status] | None = None,
        limit: int = 100,
        after: Execution | None = None,
    ) -> tuple[Execution, ...]:
        return await self._db.call(partial(_list, key, pipeline, statuses, limit, after))

    async def steps(self, execution_id: str) -> tuple[StepState, ...]:
        return await self._db.call(partial(_steps, execution_id))

    async def waiting(self, limit: int) -> tuple[tuple[Execution, StepState], ...]:
        return await self._db.call(partial(_waiting, limit))

    async def memos(self, execution_id: str) -> Mapping[str, Any]:
        return await self._db.call(partial(_memos, execution_id))

    async def events(
        self, execution_id: str, after: int = 0, limit: int = 1000
    ) -> tuple[Event, ...]:
        return await self._db.call(partial(_events, execution_id, after, limit))

    async def claim(self, owner: str, lease_s: float, now: float, limit: int) -> tuple[str, ...]:
        return await self._db.call(partial(_claim, owner, lease_s, now, limit))

    async def renew(self, execution_id: str, owner: str, lease_s: float, now: float) -> bool:
        return await self._db.call(partial(_renew, execution_id, owner, now + lease_s))

    async def release(self, execution_id: str, owner: str) -> None:
        await self._db.call(partial(_release, execution_id, owner))

    async def commit(
        self, execution_id: str, owner: str, checkpoint: Checkpoint, now: float
    ) -> tuple[Event, ...]:
        return await self._db.call(partial(_commit, execution_id, owner, checkpoint, now))

    async def record_lost(self, execution_id: str, memo: Memo, events: tuple[NewEvent, ...],
                          now: float) -> bool:
        return await self._db.call(partial(_record_lost, execution_id, memo, events, now))

    async def control(self, execution_id: str, action: str, now: float) -> Execution:
        return await self._db.call(partial(_control, execution_id, action, now))

    async def decide(self, execution_id: str, step: str, decision: Decision) -> None:
        await self._db.call(partial(_decide, execution_id, step, decision))

    async def decision(self, execution_id: str, step: str) -> Decision | None:
        return await self._db.call(partial(_decision, execution_id, step))

    async def costs(self) -> tuple[CostRow, ...]:
        return await self._db.call(_costs)

    async def purge(self, finished_before: float, limit: int) -> int:
        return await self._db.call(partial(_purge, finished_before, limit))

    async def aclose(self) -> None:
        await self._db.aclose()


def _create_tables(connection: sqlite3.Connection) -> None:
    run_statements(connection, SCHEMA)
    for name in _REPLACED_INDEXES:
        connection.execute(f"DROP INDEX IF EXISTS {name}")
    # Files written before an execution kept its end user, its request's facts, its
    # trace or its JWT caller get the columns (empty).
    columns = {row[1] for row in connection.execute("PRAGMA table_info(wf_executions)")}
    for added in ("user", "facts", "trace", "caller"):
        if added not in columns:
            connection.execute(f'ALTER TABLE wf_executions ADD COLUMN "{added}" TEXT')


def _row(row: tuple[Any, ...]) -> Execution:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["status"] = Status(values["status"])
    values["input"] = json.loads(values["input"])
    for name in ("output", "facts", "caller"):
        values[name] = json.loads(values[name]) if values[name] is not None else None
    values["caller"] = TokenCaller.from_json(values["caller"])
    return Execution(**values)


def _get(execution_id: str, connection: sqlite3.Connection) -> Execution | None:
    row = connection.execute(f"{_SELECT} WHERE id = ?", (execution_id,)).fetchone()
    return _row(row) if row is not None else None


def _create(
    new: NewExecution, now: float, connection: sqlite3.Connection
) -> tuple[Execution, bool]:
    if new.idempotency_key is not None:
        row = connection.execute(
            f'{_SELECT} WHERE "key" IS ? AND idempotency_key = ?', (new.key, new.idempotency_key)
        ).fetchone()
        if row is not None:
            return _row(row), False
    execution = Execution(
        id=new_execution_id(), pipeline=new.pipeline, status=Status.QUEUED, input=new.input,
        key=new.key, user=new.user, idempotency_key=new.idempotency_key, created_at=now,
        updated_at=now, graph=new.graph, facts=new.facts, trace=new.trace, caller=new.caller,
    )
    _write(connection, execution)
    return execution, True


def _write(connection: sqlite3.Connection, execution: Execution) -> None:
    values = [getattr(execution, name) for name in _COLUMNS]
    values[_COLUMNS.index("input")] = json_text(execution.input)
    values[_COLUMNS.index("output")] = json_text(execution.output)
    if execution.facts is not None:
        values[_COLUMNS.index("facts")] = json_text(execution.facts)
    if execution.caller is not None:
        values[_COLUMNS.index("caller")] = json_text(execution.caller.as_json())
    values[_COLUMNS.index("status")] = execution.status.value
    placeholders = ", ".join("?" for _ in _COLUMNS)
    names = ", ".join(f'"{name}"' for name in _COLUMNS)
    connection.execute(f"INSERT OR REPLACE INTO wf_executions ({names}) VALUES ({placeholders})",
                       values)


def _list(
    key: str | None,
    pipeline: str | None,
    statuses: Collection[Status] | None,
    limit: int,
    after: Execution | None,
    connection: sqlite3.Connection,
) -> tuple[Execution, ...]:
    sql, params = list_query(key=key, pipeline=pipeline, statuses=statuses, limit=limit,
                             after=after)
    return tuple(_row(row) for row in connection.execute(sql, params).fetchall())


def list_query(
    *,
    key: str | None = None,
    pipeline: str | None = None,
    statuses: Collection[Status] | None = None,
    limit: int = 100,
    after: Execution | None = None,
) -> tuple[str, tuple[Any, ...]]:
    """The SQL of ``list`` and its parameters. The page is a range of one index (by key,
    status or pipeline, then creation time and id): the row value ``(created_at, id)``
    is what SQLite seeks on, where ``created_at < ? OR (created_at = ? AND id < ?)`` made
    it read every row of the key, status or pipeline from the newest.

    >>> sql, params = list_query(key="dev", limit=10)
    >>> sql.partition(" WHERE ")[2], params
    ('"key" = ? ORDER BY created_at DESC, id DESC LIMIT ?', ('dev', 10))
    """
    conditions: list[str] = []
    params: list[Any] = []
    if after is not None:
        conditions.append("(created_at, id) < (?, ?)")
        params += [after.created_at, after.id]
    if key is not None:
        conditions.append('"key" = ?')
        params.append(key)
    if pipeline is not None:
        conditions.append("pipeline = ?")
        params.append(pipeline)
    if statuses is not None:
        conditions.append(f"status IN ({', '.join('?' * len(statuses))})")
        params += sorted(status.value for status in statuses)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return (f"{_SELECT}{where} ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, limit))


def _waiting(
    limit: int, connection: sqlite3.Connection
) -> tuple[tuple[Execution, StepState], ...]:
    columns = ", ".join(f'e."{name}"' for name in _COLUMNS)
    unfinished = tuple(status.value for status in Status if status not in FINAL)
    rows = connection.execute(
        f"SELECT {columns}, s.state FROM wf_executions e JOIN wf_steps s "
        f"ON s.execution_id = e.id WHERE e.status IN ({', '.join('?' * len(unfinished))}) "
        "AND json_extract(s.state, '$.status') = ? ORDER BY e.created_at DESC LIMIT ?",
        (*unfinished, StepStatus.WAITING.value, limit),
    ).fetchall()
    return tuple((_row(row[:-1]), step_from_json(row[-1])) for row in rows)


def _steps(execution_id: str, connection: sqlite3.Connection) -> tuple[StepState, ...]:
    rows = connection.execute(
        "SELECT state FROM wf_steps WHERE execution_id = ?", (execution_id,)
    ).fetchall()
    return in_start_order(step_from_json(row[0]) for row in rows)


def _memos(execution_id: str, connection: sqlite3.Connection) -> dict[str, Any]:
    rows = connection.execute(
        'SELECT "key", value FROM wf_memos WHERE execution_id = ?', (execution_id,)
    ).fetchall()
    return {key: json.loads(value) for key, value in rows}


def _events(
    execution_id: str, after: int, limit: int, connection: sqlite3.Connection
) -> tuple[Event, ...]:
    rows = connection.execute(
        "SELECT seq, at, type, step, data FROM wf_events WHERE execution_id = ? AND seq > ? "
        "ORDER BY seq LIMIT ?", (execution_id, after, limit),
    ).fetchall()
    return tuple(Event(seq, at, kind, step, json.loads(data))
                 for seq, at, kind, step, data in rows)


# The most executions one claim takes: the runner claims again at once when it took
# some, so a big capacity fills in a few claims, each as cheap as the next.
CLAIM_BATCH = 32

# What a claim reads: ranges of the partial indexes of active executions, each bounded,
# so that a poll's cost grows with what it may take, never with how many executions
# runners hold (it read and decoded every active one, held or not, twice a second).
# INDEXED BY: SQLite fails the statement rather than pick another index (by status, then
# every row of it) or scan.
CLAIM_SQL: Mapping[str, str] = MappingProxyType({
    # Held by a runner whose lease ran out, the oldest lapse first: work cut short.
    "lapsed": f"{_SELECT} INDEXED BY wf_claimable WHERE {_ACTIVE_SQL} AND lease_until > 0 "
              "AND lease_until <= ? AND owner IS NOT ? ORDER BY lease_until, created_at "
              "LIMIT ?",
    # The oldest execution of the next runner of this host (``local_owners``) after a
    # name: one seek per runner, past all it holds; its process may be gone.
    "next_holder": f"{_SELECT} INDEXED BY wf_held_by WHERE {_ACTIVE_SQL} AND owner > ? "
                   "AND owner < ? ORDER BY owner, created_at LIMIT 1",
    "held_by": f"{_SELECT} INDEXED BY wf_held_by WHERE {_ACTIVE_SQL} AND owner = ? "
               "ORDER BY created_at LIMIT ?",
    # Queued or released (no lease: ``_release`` and a store's own change set it to 0).
    "unheld": f"{_SELECT} INDEXED BY wf_claimable WHERE {_ACTIVE_SQL} AND lease_until = 0 "
              "ORDER BY created_at LIMIT ?",
})


def _claim(
    owner: str, lease_s: float, now: float, limit: int, connection: sqlite3.Connection
) -> tuple[str, ...]:
    limit = min(limit, CLAIM_BATCH)

    def read(name: str, params: tuple[Any, ...]) -> list[Execution]:
        return [_row(row) for row in connection.execute(CLAIM_SQL[name], params).fetchall()]

    def candidates() -> Iterator[Execution]:  # read as they are needed, no further
        yield from read("lapsed", (now, owner, limit))
        low, high = local_owners()
        while found := read("next_holder", (low, high)):
            low = found[0].owner or high
            if low != owner and claimable(found[0], owner, now):  # its process is gone
                yield from read("held_by", (low, limit))
        yield from read("unheld", (limit,))

    taken: list[str] = []
    for execution in candidates():
        if execution.owner == owner or not claimable(execution, owner, now):
            continue
        # A dead runner's lapsed execution is read twice: taken the first time, the
        # second finds its owner changed.
        cursor = connection.execute(
            "UPDATE wf_executions SET owner = ?, lease_until = ? WHERE id = ? AND owner IS ?",
            (owner, now + lease_s, execution.id, execution.owner),
        )
        if cursor.rowcount == 1:
            taken.append(execution.id)
        if len(taken) >= limit:
            break
    return tuple(taken)


def _renew(execution_id: str, owner: str, until: float, connection: sqlite3.Connection) -> bool:
    cursor = connection.execute(
        "UPDATE wf_executions SET lease_until = ? WHERE id = ? AND owner = ?",
        (until, execution_id, owner),
    )
    return cursor.rowcount == 1


def _release(execution_id: str, owner: str, connection: sqlite3.Connection) -> None:
    connection.execute(
        "UPDATE wf_executions SET owner = NULL, lease_until = 0 WHERE id = ? AND owner = ?",
        (execution_id, owner),
    )


def _commit(
    execution_id: str, owner: str, checkpoint: Checkpoint, now: float,
    connection: sqlite3.Connection,
) -> tuple[Event, ...]:
    # Only the fields a checkpoint changes are read and written: the whole row (its input,
    # up to a request's size) rewritten at every step made a long map quadratic.
    held = connection.execute(
        "SELECT owner, cost, prompt_tokens, completion_tokens, model_calls FROM wf_executions "
        "WHERE id = ?", (execution_id,)).fetchone()
    if held is None or held[0] != owner:
        raise LeaseLost(f"execution {execution_id} is held by another runner")
    for state in checkpoint.steps:
        connection.execute("INSERT OR REPLACE INTO wf_steps VALUES (?, ?, ?)",
                           (execution_id, state.step, step_to_json(state)))
    changes: dict[str, Any] = {"updated_at": now}
    if checkpoint.memo is not None:
        changes.update(_add_memo(execution_id, checkpoint.memo, held[1:], connection))
    if checkpoint.status is not None:
        changes["status"] = checkpoint.status.value
        if checkpoint.status in FINAL:
            changes.update(finished_at=now, output=json_text(checkpoint.output),
                           error=checkpoint.error, control=None)
    if checkpoint.clear_control:
        changes["control"] = None
    assignments = ", ".join(f'"{name}" = ?' for name in changes)
    connection.execute(f"UPDATE wf_executions SET {assignments} WHERE id = ?",
                       (*changes.values(), execution_id))
    return _append(execution_id, checkpoint.events, now, connection)


def _add_memo(execution_id: str, memo: Memo, totals: tuple[Any, ...],
              connection: sqlite3.Connection) -> dict[str, Any]:
    """Write ``memo`` once: the first time, the execution's new totals (``totals``: its
    cost, prompt and completion tokens and model calls until now); else none."""
    cursor = connection.execute("INSERT OR IGNORE INTO wf_memos VALUES (?, ?, ?)",
                                (execution_id, memo.key, json_text(memo.value)))
    if cursor.rowcount != 1:
        return {}
    return {"cost": totals[0] + memo.cost, "prompt_tokens": totals[1] + memo.prompt_tokens,
            "completion_tokens": totals[2] + memo.completion_tokens,
            "model_calls": totals[3] + int(memo.model_call)}


def _append(execution_id: str, new: Iterable[NewEvent], now: float,
            connection: sqlite3.Connection) -> tuple[Event, ...]:
    last = connection.execute(
        "SELECT COALESCE(MAX(seq), 0) FROM wf_events WHERE execution_id = ?", (execution_id,)
    ).fetchone()[0]
    events = []
    for seq, item in enumerate(new, start=last + 1):
        event = Event(seq, now, item.type, item.step, dict(item.data))
        connection.execute("INSERT INTO wf_events VALUES (?, ?, ?, ?, ?, ?)",
                           (execution_id, seq, now, item.type, item.step, json_text(event.data)))
        events.append(event)
    return tuple(events)


def _record_lost(execution_id: str, memo: Memo, events: tuple[NewEvent, ...], now: float,
                 connection: sqlite3.Connection) -> bool:
    totals = connection.execute(
        "SELECT cost, prompt_tokens, completion_tokens, model_calls FROM wf_executions "
        "WHERE id = ?", (execution_id,)).fetchone()
    if totals is None:
        return False
    changes = _add_memo(execution_id, memo, totals, connection)
    if not changes:
        return False
    assignments = ", ".join(f'"{name}" = ?' for name in changes)
    connection.execute(f"UPDATE wf_executions SET {assignments} WHERE id = ?",
                       (*changes.values(), execution_id))
    _append(execution_id, events, now, connection)
    return True


def _control(
    execution_id: str, action: str, now: float, connection: sqlite3.Connection
) -> Execution:
    execution = _get(execution_id, connection)
    if execution is None:
        raise KeyError(execution_id)
    changes = control_change(execution, action, now)
    if changes:
        execution = replace(execution, **changes, updated_at=now)
        _write(connection, execution)
    if "status" in changes:  # no runner held it: the store changed it, and says so
        events: tuple[NewEvent, ...] = ()
        if execution.status is Status.CANCELLED:  # what it left waiting ends with it
            closed, events = abandon(_steps(execution_id, connection),
                                     "abandoned: the execution was cancelled", now)
            for state in closed:
                connection.execute("INSERT OR REPLACE INTO wf_steps VALUES (?, ?, ?)",
                                   (execution_id, state.step, step_to_json(state)))
        last = connection.execute(
            "SELECT COALESCE(MAX(seq), 0) FROM wf_events WHERE execution_id = ?", (execution_id,)
        ).fetchone()[0]
        for seq, event in enumerate(
                (*events, NewEvent(f"execution_{execution.status.value}")), start=last + 1):
            connection.execute("INSERT INTO wf_events VALUES (?, ?, ?, ?, ?, ?)",
                               (execution_id, seq, now, event.type, event.step,
                                json_text(dict(event.data))))
    return execution


def _decide(
    execution_id: str, step: str, decision: Decision, connection: sqlite3.Connection
) -> None:
    found = connection.execute("SELECT status, control FROM wf_executions WHERE id = ?",
                               (execution_id,)).fetchone()
    if found is not None:
        check_decidable(execution_id, Status(found[0]), found[1])
    row = connection.execute(
        "SELECT state FROM wf_steps WHERE execution_id = ? AND step = ?", (execution_id, step)
    ).fetchone()
    if row is None or step_from_json(row[0]).status is not StepStatus.WAITING:
        raise ExecutionConflict(f"step '{step}' is not waiting for a decision")
    inserted = connection.execute(
        "INSERT OR IGNORE INTO wf_decisions VALUES (?, ?, ?)",
        (execution_id, step, decision_to_json(decision)),
    )
    if inserted.rowcount == 0:
        raise ExecutionConflict(f"step '{step}' was decided already")


def _decision(execution_id: str, step: str, connection: sqlite3.Connection) -> Decision | None:
    row = connection.execute(
        "SELECT decision FROM wf_decisions WHERE execution_id = ? AND step = ?",
        (execution_id, step),
    ).fetchone()
    return decision_from_json(row[0]) if row is not None else None


_TOTALS = ("COUNT(*) AS executions, SUM(status = 'succeeded') AS succeeded, "
           "SUM(status = 'failed') AS failed, SUM(status = 'cancelled') AS cancelled, "
           "SUM(cost) AS cost, SUM(prompt_tokens) AS prompt_tokens, "
           "SUM(completion_tokens) AS completion_tokens, SUM(model_calls) AS model_calls")
_COST_COLUMNS = ("executions", "succeeded", "failed", "cancelled", "cost", "prompt_tokens",
                 "completion_tokens", "model_calls")


def _costs(connection: sqlite3.Connection) -> tuple[CostRow, ...]:
    """Live executions' totals plus those of the executions purged (``_purge``)."""
    summed = ", ".join(f"SUM({column})" for column in _COST_COLUMNS)
    rows = connection.execute(
        f"SELECT pipeline, {summed} FROM ("
        f"SELECT pipeline, {_TOTALS} FROM wf_executions GROUP BY pipeline "
        f"UNION ALL SELECT pipeline, {', '.join(_COST_COLUMNS)} FROM wf_purged_costs"
        ") GROUP BY pipeline ORDER BY pipeline"
    ).fetchall()
    return tuple(CostRow(*row) for row in rows)


def _purge(finished_before: float, limit: int, connection: sqlite3.Connection) -> int:
    ids = [row[0] for row in connection.execute(
        "SELECT id FROM wf_executions WHERE finished_at IS NOT NULL AND finished_at < ? "
        f"AND status IN ({', '.join('?' * len(FINAL))}) ORDER BY finished_at LIMIT ?",
        (finished_before, *sorted(FINAL), limit),
    )]
    if not ids:
        return 0
    marks = ", ".join("?" * len(ids))
    for pipeline, *totals in connection.execute(
        f"SELECT pipeline, {_TOTALS} FROM wf_executions WHERE id IN ({marks}) "
        "GROUP BY pipeline", ids,
    ).fetchall():
        added = ", ".join(f"{column} = {column} + excluded.{column}"
                          for column in _COST_COLUMNS)
        connection.execute(
            "INSERT INTO wf_purged_costs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT (pipeline) DO UPDATE SET {added}", (pipeline, *totals),
        )
    for table in ("wf_steps", "wf_memos", "wf_events", "wf_decisions"):
        connection.execute(f"DELETE FROM {table} WHERE execution_id IN ({marks})", ids)
    connection.execute(f"DELETE FROM wf_executions WHERE id IN ({marks})", ids)
    return len(ids)
