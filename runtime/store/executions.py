"""Pipeline executions in the store: records, checkpoints, events and leases.

    ExecutionStore                  the seam; ``open_executions(settings.store URL)``
    ├── SQLiteExecutions            embedded: tables in the gateway's SQLite file
    └── RedisExecutions             replicas: hashes and lists, a stream + consumer group

An execution's states, and who moves it (``control_change``, ``claimable`` and
``check_decidable`` are the only places that decide, for both stores)::

    queued --claim--> running <--> waiting (an approval)   --> succeeded | failed
      ^                  |                                  \\-> cancelled
      +----resume---- paused <--pause--+

A runner ``claim``s an execution, which gives it a lease it renews; every write it
makes is a ``Checkpoint`` fenced by that lease (``LeaseLost`` when another runner has
taken over). A checkpoint is atomic: step states, one memo (a completed model call or
sub-step, so a resumed execution never repeats it; its cost is added to the
execution's exactly once), events and the execution's status commit together. The
checkpoint that ends an execution (and a cancel the store makes itself) closes the
steps it leaves running or waiting (``abandon``). The one write without a lease is
``record_lost``: a model call paid for whose answer a runner could not save in time
(``workflows/unsaved.py``).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Protocol

from .callers import TokenCaller


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
ACTIVE = frozenset({Status.QUEUED, Status.RUNNING, Status.WAITING})


class StepStatus(StrEnum):
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"  # left unfinished: the execution ended, or went on without it


UNFINISHED = frozenset({StepStatus.RUNNING, StepStatus.WAITING})


class LeaseLost(Exception):
    """Another runner holds this execution now; stop working on it."""


class ExecutionConflict(Exception):
    """The action does not apply to the execution in its current state (a 409)."""


@dataclass(frozen=True, slots=True)
class Execution:
    id: str
    pipeline: str
    status: Status
    input: Any
    output: Any = None
    error: str | None = None
    key: str | None = None  # the API key that started it
    # A JWT's caller that started it: what makes that caller again as its steps run,
    # on any replica, after a restart (its token is not kept). None: a key, or an
    # execution made before this was kept.
    caller: TokenCaller | None = None
    user: str | None = None  # the end user it runs for: their limits and budgets apply
    idempotency_key: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_calls: int = 0
    graph: str = ""  # fingerprint of the graph it was started on
    # What the request that made it told policy (its route, tags, latency SLA, sizes;
    # ``policy_request.facts_to_keep``), to ask again as it resumes. None: made before
    # they were kept.
    facts: Mapping[str, Any] | None = None
    # The W3C traceparent of the request that made it (when tracing is on): its steps'
    # model calls are spans of that request's trace, whichever replica runs them.
    trace: str | None = None
    control: str | None = None  # "pause" or "cancel": asked for, not done yet
    owner: str | None = None  # the runner holding it
    lease_until: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "execution",
            "pipeline": self.pipeline,
            "status": self.status.value,
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "key": self.key,
            "user": self.user,
            "idempotency_key": self.idempotency_key,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "cost": round(self.cost, 9),
            "usage": {"prompt_tokens": self.prompt_tokens,
                      "completion_tokens": self.completion_tokens,
                      "model_calls": self.model_calls},
            "graph": self.graph,
            "control": self.control,
            "runner": self.owner,
        }


@dataclass(frozen=True, slots=True)
class StepState:
    """A step's checkpoint. ``step`` is a path: ``report``, or ``sub/inner`` for a step of
    a pipeline that a ``pipeline`` step called."""

    step: str
    status: StepStatus
    attempts: int = 0
    output: Any = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    detail: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "status": self.status.value,
            "attempts": self.attempts,
            "output": self.output,
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "detail": dict(self.detail) if self.detail is not None else None,
        }


@dataclass(frozen=True, slots=True)
class Memo:
    """A completed unit of work inside a step, by a key stable across restarts."""

    key: str
    value: Any
    cost: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model_call: bool = False


@dataclass(frozen=True, slots=True)
class NewEvent:
    type: str
    step: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    at: float
    type: str
    step: str | None
    data: Mapping[str, Any]

    def as_dict(self, execution_id: str) -> dict[str, Any]:
        return {"execution": execution_id, "seq": self.seq, "at": self.at, "type": self.type,
                "step": self.step, "data": dict(self.data)}


@dataclass(frozen=True, slots=True)
class Decision:
    """A person's answer to an approval step."""

    approve: bool
    by: str | None = None
    comment: str | None = None
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One atomic write by the runner holding an execution."""

    steps: tuple[StepState, ...] = ()
    memo: Memo | None = None
    events: tuple[NewEvent, ...] = ()
    status: Status | None = None
    output: Any = None  # with status succeeded
    error: str | None = None  # with status failed or cancelled
    clear_control: bool = False


@dataclass(frozen=True, slots=True)
class NewExecution:
    pipeline: str
    input: Any
    key: str | None
    idempotency_key: str | None
    graph: str
    user: str | None = None
    facts: Mapping[str, Any] | None = None  # see ``Execution.facts``
    trace: str | None = None  # see ``Execution.trace``
    caller: TokenCaller | None = None  # see ``Execution.caller``


@dataclass(frozen=True, slots=True)
class CostRow:
    """Totals of one pipeline's executions."""

    pipeline: str
    executions: int
    succeeded: int
    failed: int
    cancelled: int
    cost: float
    prompt_tokens: int
    completion_tokens: int
    model_calls: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline, "executions": self.executions,
            "succeeded": self.succeeded, "failed": self.failed, "cancelled": self.cancelled,
            "cost": round(self.cost, 9), "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "model_calls": self.model_calls,
        }


class ExecutionStore(Protocol):
    """Executions, their checkpoints and events, shared by every runner of one store."""

    async def create(self, new: NewExecution, now: float) -> tuple[Execution, bool]:
        """A queued execution, or the one already made with the same key and
        idempotency key (then False)."""
        ...

    async def get(self, execution_id: str) -> Execution | None: ...

    async def list(
        self,
        *,
        key: str | None = None,
        pipeline: str | None = None,
        statuses: Collection[Status] | None = None,
        limit: int = 100,
        after: Execution | None = None,
    ) -> tuple[Execution, ...]:
        """The newest first (made at the same moment: the greater id first);
        ``statuses``: only executions in one of them; ``after``: only those listed after
        it (the last one of the page before)."""
        ...

    async def steps(self, execution_id: str) -> tuple[StepState, ...]: ...

    async def waiting(self, limit: int) -> tuple[tuple[Execution, StepState], ...]:
        """Up to ``limit`` steps waiting for a decision, in executions not finished, the
        newest first: what approvers are asked (without reading every execution)."""
        ...

    async def memos(self, execution_id: str) -> Mapping[str, Any]: ...

    async def events(
        self, execution_id: str, after: int = 0, limit: int = 1000
    ) -> tuple[Event, ...]: ...

    async def claim(self, owner: str, lease_s: float, now: float, limit: int) -> tuple[str, ...]:
        """Executions this runner now holds: new ones, and those whose runner's lease
        ran out. May wait up to a second for new work (Redis)."""
        ...

    async def renew(self, execution_id: str, owner: str, lease_s: float, now: float) -> bool:
        """Extend the lease; False when another runner holds it now."""
        ...

    async def release(self, execution_id: str, owner: str) -> None:
        """Give the execution up (final, paused, or this runner stopping): if it is still
        active, any runner may claim it at once."""
        ...

    async def commit(
        self, execution_id: str, owner: str, checkpoint: Checkpoint, now: float
    ) -> tuple[Event, ...]:
        """Write ``checkpoint`` if ``owner`` still holds the execution (else LeaseLost)."""
        ...

    async def record_lost(self, execution_id: str, memo: Memo, events: tuple[NewEvent, ...],
                          now: float) -> bool:
        """Write ``memo`` (a model call paid for whose answer the execution did not use,
        under a key of its own) with ``events``, whoever holds the execution, ended or
        not: its cost and tokens are added once, and ``events`` with them. False when it
        was written before, or there is no such execution."""
        ...

    async def control(self, execution_id: str, action: str, now: float) -> Execution:
        """pause, resume or cancel (``control_change``); ExecutionConflict when it does not
        apply, KeyError when there is no such execution."""
        ...

    async def decide(
        self, execution_id: str, step: str, decision: Decision
    ) -> None:
        """Record a decision for the waiting approval step ``step`` (ExecutionConflict
        when that step is not waiting, or the execution has ended)."""
        ...

    async def decision(self, execution_id: str, step: str) -> Decision | None: ...

    async def costs(self) -> tuple[CostRow, ...]: ...

    async def purge(self, finished_before: float, limit: int) -> int:
        """Delete up to ``limit`` executions that ended (succeeded, failed or cancelled)
        before ``finished_before``, with their steps, memos, events, decisions and
        idempotency key; ``costs`` totals keep counting them. Returns how many went."""
        ...

    async def aclose(self) -> None: ...


def control_change(execution: Execution, action: str, now: float) -> dict[str, Any]:
    """The fields ``action`` changes; ExecutionConflict when it does not apply."""
    leased = execution.owner is not None and execution.lease_until > now
    status = execution.status
    if action == "pause":
        if status in FINAL:
            raise ExecutionConflict(f"execution {execution.id} has already {status.value}")
        if status is Status.PAUSED:
            return {}
        return {"control": "pause"} if leased else {"status": Status.PAUSED, "control": None,
                                                    **_UNHELD}
    if action == "resume":
        if status is Status.PAUSED:
            return {"status": Status.QUEUED, "control": None}
        if execution.control == "pause":
            return {"control": None}
        raise ExecutionConflict(f"execution {execution.id} is {status.value}, not paused")
    if action == "cancel":
        if status in FINAL:
            raise ExecutionConflict(f"execution {execution.id} has already {status.value}")
        if leased:
            return {"control": "cancel"}
        return {"status": Status.CANCELLED, "control": None, "finished_at": now,
                "error": "cancelled", **_UNHELD}
    raise ValueError(f"unknown action {action!r}")


def abandon(
    states: Iterable[StepState], reason: str, now: float
) -> tuple[tuple[StepState, ...], tuple[NewEvent, ...]]:
    """Those of ``states`` still running or waiting, cancelled with ``reason`` as their
    error, and a ``step_abandoned`` event for each: what an execution that ends (or goes
    on without them) leaves unfinished. Left as they were, an approval read waiting
    after its execution had ended, in the steps, the events and the admin page alike.

    >>> closed, _ = abandon([StepState("ok", StepStatus.WAITING)], "abandoned: cancelled", 1.0)
    >>> closed[0].status.value, closed[0].error
    ('cancelled', 'abandoned: cancelled')
    """
    closed = tuple(replace(state, status=StepStatus.CANCELLED, error=reason, finished_at=now)
                   for state in states if state.status in UNFINISHED)
    return closed, tuple(NewEvent("step_abandoned", state.step, {"reason": reason})
                         for state in closed)


def check_decidable(execution_id: str, status: Status, control: str | None) -> None:
    """ExecutionConflict for a decision on an execution that has ended (its approval
    ended with it, or is ending as the decision comes), or whose cancel was asked for:
    nothing will read the decision (its runner, seeing the cancel at its next look, may
    have read the decision first, and gone on to the next step)."""
    if status in FINAL:
        raise ExecutionConflict(f"execution {execution_id} has already {status.value}; "
                                "nothing waits for a decision")
    if control == "cancel":
        raise ExecutionConflict(f"execution {execution_id} is being cancelled; nothing "
                                "waits for a decision")


# Changed by the store, not by a runner (its lease had lapsed): the lease goes too, so the
# runner that let it lapse, if it is still at work, is fenced off (LeaseLost) rather than
# renewing and committing over the pause or the cancel.
_UNHELD: Mapping[str, Any] = MappingProxyType({"owner": None, "lease_until": 0.0})


def claimable(execution: Execution, owner: str, now: float) -> bool:
    """May ``owner`` take ``execution`` now? Active, and nobody else holds a live lease
    (a runner on this machine whose process is gone holds nothing)."""
    if execution.status not in ACTIVE:
        return False
    holder = execution.owner
    return holder is None or holder == owner or execution.lease_until <= now \
        or not _alive(holder)


def new_owner() -> str:
    """A runner's name: host, process and a random part (``host/4026531836:pid:ab12cd34``,
    the host's name with the inode of the PID namespace the process is in)."""
    return f"{_host()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def local_owners() -> tuple[str, str]:
    """The range of runner names (``low <= name < high``) that ``new_owner`` gives on this
    host and PID namespace: the only runners whose process ``claimable`` can see gone.
    A store reads the runners holding executions in this range, not every execution
    held, to find those of a dead process."""
    host = _host()
    return f"{host}:", f"{host};"  # ';' is the character after ':'


def _host() -> str:
    """The hostname, and the PID namespace whose numbers ``os.getpid`` gives (where /proc
    shows it). The hostname alone is not enough: containers sharing the host's network
    (network_mode: host) or named alike have one hostname, and each numbers its
    processes on its own, so another's runner looked dead here and its live executions
    were taken over."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # no /proc (macOS) or not readable: the hostname alone
        return socket.gethostname()
    return f"{socket.gethostname()}/{namespace}"


def _alive(owner: str) -> bool:
    """False only when the owner ran on this host, in this PID namespace, in a process
    that no longer exists (another one's is left to its lease)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _host() or not pid_text.isdigit():
        return True
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        return True
    return True


def new_execution_id() -> str:
    return f"exec_{uuid.uuid4().hex}"


# The text both stores keep of a step's state, a decision and any JSON value: the same
# in a SQLite column as in a Redis hash, so each reads what either wrote.


def json_text(value: Any) -> str:
    """Compact JSON, as stored: ``json_text({"a": [1, "é"]}) == '{"a":[1,"é"]}'``."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def step_to_json(state: StepState) -> str:
    return json_text(state.as_dict())


def step_from_json(text: str) -> StepState:
    data = json.loads(text)
    data["status"] = StepStatus(data["status"])
    return StepState(**data)


def decision_to_json(decision: Decision) -> str:
    return json_text({"approve": decision.approve, "by": decision.by,
                      "comment": decision.comment, "at": decision.at})


def decision_from_json(text: str) -> Decision:
    return Decision(**json.loads(text))


def in_start_order(states: Iterable[StepState]) -> tuple[StepState, ...]:
    """An execution's steps as ``steps`` lists them: by when each started, then by path."""
    return tuple(sorted(states, key=lambda state: (state.started_at or 0.0, state.step)))
