"""Work a run could not save, kept in local files until the store has it.

A model call is paid for, and an agent's task made, before its memo is saved. While the
store is unavailable the run tries the save again (``Run.keep``), and first writes the
memo here, on disk, so that it outlives a runner that stops before the store is back.
Then whoever goes on with the execution:

- a run resumed by this gateway (any process with the same root) saves the memo from
  here and uses it, rather than call the model again or send the agent its message
  again (``Run._recover``);
- where another replica resumed it and did the work again, or it ended without the
  memo, the work is recorded as done and lost (``ExecutionStore.record_lost``, by the
  runner's sweep): for a model call the execution's cost, tokens and model calls count
  both calls, and a ``model_answer_lost`` event names its memo key and its request id
  in the spend ledger; for an agent's task an ``agent_task_lost`` event names the task
  nobody polled.

A host that never comes back takes its files with it: nothing else knows of the work
(on Redis, the call's spend record waits in that host's outbox too), so the lost call
is never recorded. Replicas whose ``settings.unsaved_dir`` is one shared folder (a
network volume) recover each other's: the files are named by execution, written whole
and renamed, and whichever runner resumes the execution, or sweeps, acts on them.

One file per memo, written whole (a temporary file, synced, then renamed)::

    <root>/<settings.unsaved_dir>/<execution id>.<sha256 of the memo key>.json
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..store.executions import Memo, NewEvent

log = logging.getLogger("aigw.workflows")

_ID = re.compile(r"[A-Za-z0-9_-]+")  # what an execution id is made of (``exec_<hex>``)


@dataclass(frozen=True, slots=True)
class Unsaved:
    """A memo of execution ``execution`` (a model's answer, an agent's task) and the event
    its save carries."""

    execution: str
    memo: Memo
    event: NewEvent

    @property
    def work(self) -> str:
        """Which work the memo records, to tell whether a saved memo is this one: the
        spend ledger's id of a model call, an agent's task id."""
        return str(self.memo.value.get("request" if self.memo.model_call else "task", ""))

    def held_by(self, saved: Mapping[str, Any] | None) -> bool:
        """Whether ``saved``, the execution's memo under this key, records this work."""
        return saved is not None and str(saved.get(
            "request" if self.memo.model_call else "task", "")) == self.work

    @property
    def recovered(self) -> str:
        """The event that says a run took the memo from here."""
        return "model_answer_recovered" if self.memo.model_call else "agent_task_recovered"

    def lost(self) -> tuple[Memo, tuple[NewEvent, ...]]:
        """The work as done but not used by the execution: a memo of a key of its own (a
        call's cost counted once, however often it is recorded) without the text, which
        nothing reads, and the event that says so."""
        value = {name: item for name, item in self.memo.value.items() if name != "text"}
        memo = replace(self.memo, key=f"{self.memo.key}#lost:{self.work}", value=value)
        if not self.memo.model_call:
            return memo, (NewEvent("agent_task_lost", self.event.step,
                                   {**self.event.data, "key": self.memo.key}),)
        return memo, (NewEvent("model_answer_lost", self.event.step,
                               {**self.event.data, "request": self.work}),)


class UnsavedAnswers:
    """The memos under ``folder``; every call works off the event loop."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def check(self) -> bool:
        """Whether a memo can be kept here (the folder made if need be, a file written in
        it); False, logged as a warning, if not: the runner still runs, holding a memo
        the store cannot save for now in memory only, as it did before this folder."""
        try:
            await asyncio.to_thread(self._probe)
        except OSError as exc:
            log.warning("workflows: cannot keep unsaved answers in %s (%s); a model answer "
                        "or agent task the store cannot save for now is held in memory "
                        "only, and done again if the runner stops before the store is back "
                        "(settings.unsaved_dir names a writable folder)", self.folder, exc)
            return False
        return True

    async def put(self, execution_id: str, memo: Memo, event: NewEvent) -> bool:
        """Keep the memo (durably, once this returns True); False, logged, if the disk
        would not take it: it is then held in memory only, as the run tries the save."""
        try:
            await asyncio.to_thread(self._write, execution_id, memo, event)
        except (OSError, ValueError) as exc:
            log.error("execution %s: %s could not be kept in %s either: %s",
                      execution_id, memo.key, self.folder, exc)
            return False
        return True

    async def of(self, execution_id: str) -> tuple[Unsaved, ...]:
        """The memos kept for ``execution_id``."""
        return await asyncio.to_thread(self._read, execution_id)

    async def drop(self, execution_id: str, key: str) -> None:
        """Forget memo ``key``: the store has it now."""
        await asyncio.to_thread(self._remove, execution_id, key)

    async def executions(self) -> tuple[str, ...]:
        """The executions with memos kept."""
        return await asyncio.to_thread(self._list)

    def _path(self, execution_id: str, key: str) -> Path:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.folder / f"{_checked(execution_id)}.{digest}.json"

    def _probe(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        probe = self.folder / f".{uuid.uuid4().hex}.tmp"
        try:
            probe.write_bytes(b"")
        finally:
            probe.unlink(missing_ok=True)

    def _write(self, execution_id: str, memo: Memo, event: NewEvent) -> None:
        path = self._path(execution_id, memo.key)
        self.folder.mkdir(parents=True, exist_ok=True)
        data = {"execution": execution_id, "key": memo.key, "value": memo.value,
                "cost": memo.cost, "prompt_tokens": memo.prompt_tokens,
                "completion_tokens": memo.completion_tokens, "model_call": memo.model_call,
                "event": {"type": event.type, "step": event.step, "data": dict(event.data)}}
        # Several processes may share the folder (hypercorn's workers): a name of its own.
        temporary = self.folder / f".{uuid.uuid4().hex}.tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump(data, file, ensure_ascii=False)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)  # left only if it was not renamed
        _sync(self.folder)  # the rename itself is on disk

    def _read(self, execution_id: str) -> tuple[Unsaved, ...]:
        found = []
        for path in sorted(self.folder.glob(f"{_checked(execution_id)}.*.json")):
            try:
                found.append(_unsaved(json.loads(path.read_text(encoding="utf-8"))))
            except FileNotFoundError:  # dropped meanwhile by another process
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("cannot read the unsaved memo %s: %s", path, exc)
        return tuple(found)

    def _remove(self, execution_id: str, key: str) -> None:
        self._path(execution_id, key).unlink(missing_ok=True)

    def _list(self) -> tuple[str, ...]:
        try:
            names = {path.name.partition(".")[0] for path in self.folder.glob("*.json")}
        except OSError:
            return ()
        return tuple(sorted(name for name in names if _ID.fullmatch(name)))


def _checked(execution_id: str) -> str:
    """``execution_id``, a part of a file's name: nothing in it may lead elsewhere."""
    if not _ID.fullmatch(execution_id):
        raise ValueError(f"{execution_id!r} is not an execution id")
    return execution_id


def _unsaved(data: dict[str, Any]) -> Unsaved:
    event = data["event"]
    memo = Memo(str(data["key"]), data["value"], float(data["cost"]),
                int(data["prompt_tokens"]), int(data["completion_tokens"]),
                bool(data["model_call"]))
    return Unsaved(str(data["execution"]), memo,
                   NewEvent(str(event["type"]), event["step"], event["data"]))


def _sync(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
