"""The runner: claims executions from the store, runs them, and keeps their leases alive.

Every gateway process runs one. It asks the store for work (new executions, and those
whose runner stopped renewing its lease: a crashed replica, or this gateway before a
restart), runs each claimed execution as a task, and renews every lease it holds three
times per lease period. A lease it cannot renew means another runner took the
execution over: its task is cancelled. It runs at most ``settings.execution_capacity``
executions at once, not counting those waiting for an approval's decision: a wait can
last a day, and enough of them would keep every new execution queued for that long.
Decided, such an execution goes on once a slot is free again, ahead of new work.
Stopping cancels the tasks and lets go of their leases, so another replica, or this
gateway once restarted, resumes them at once.
Once an hour (and when it starts) it deletes the executions that ended longer ago than
``settings.execution_retention_s``; every replica may, as a purge is idempotent. Once a
lease period (and when it starts) it records the model answers and agent tasks this
gateway's runs left unsaved (``unsaved.py``) for the executions another runner went on
with, and lets go of those the store holds after all (of its own executions too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator

from ..background import Background
from ..errors import GatewayError, InternalError, StoreUnavailable
from ..store.executions import (
    FINAL,
    Checkpoint,
    Execution,
    ExecutionStore,
    LeaseLost,
    NewEvent,
    Status,
    abandon,
)
from .unsaved import UnsavedAnswers

log = logging.getLogger("aigw.workflows")

RunExecution = Callable[[Execution], Awaitable[Status]]
PURGE_EVERY_S = 3600.0
PURGE_BATCH = 1000


class Runner:
    def __init__(
        self,
        store: ExecutionStore,
        owner: str,
        lease_s: float,
        run: RunExecution,
        clock: Callable[[], float],
        *,
        capacity: Callable[[], int] = lambda: 256,
        poll_s: float = 0.5,
        retention_s: float | None = None,
        purge_every_s: float = PURGE_EVERY_S,
        unsaved: UnsavedAnswers | None = None,
    ) -> None:
        self.store = store
        self.owner = owner
        self.lease_s = lease_s
        self._run = run
        self._clock = clock
        self._capacity = capacity
        self._poll_s = poll_s
        self._unclaimable_since: float | None = None  # the store refused claims from then
        self._said_unclaimable = 0.0  # when the log last said so
        self._retention_s = retention_s  # None: executions are kept forever
        self._purge_every_s = purge_every_s
        self._unsaved = unsaved
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # Executions with approvals waiting for a decision (how many each): their tasks
        # hold no slot of ``capacity`` meanwhile.
        self.waiting: Counter[str] = Counter()
        # Decided, and waiting for a slot to go on: new work is not claimed ahead of them.
        self._resuming: set[str] = set()
        # Slots a claim under way may fill: an execution decided meanwhile waits for them.
        self._claiming = 0
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        # Lease releases under way: shielded from their execution's cancellation, so
        # ``stop`` waits for them before the store closes under them.
        self._releasing = Background()
        # Checked by every loop as well: a cancellation swallowed somewhere below (a
        # client library catching it mid-command) must not leave stop() waiting forever.
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        self._loops = [asyncio.create_task(self._claim_loop(), name="aigw-runner-claim"),
                       asyncio.create_task(self._renew_loop(), name="aigw-runner-renew")]
        if self._retention_s is not None:
            self._loops.append(asyncio.create_task(self._purge_loop(self._retention_s),
                                                   name="aigw-runner-purge"))
        if self._unsaved is not None:
            self._loops.append(asyncio.create_task(self._unsaved_loop(self._unsaved),
                                                   name="aigw-runner-unsaved"))

    def wake(self) -> None:
        """Look for work now (an execution was created or resumed in this process)."""
        self._wake.set()

    @contextlib.contextmanager
    def waiting_for_decision(self, execution_id: str) -> Iterator[Callable[[], bool]]:
        """While an approval of ``execution_id`` waits: its slot is free for other work.
        Decided, the execution takes a slot back before it goes on: it calls what this
        yields until that says it has one (else, its slot taken meanwhile, the runner
        ran more than ``capacity`` executions at once)."""
        self.waiting[execution_id] += 1
        self.wake()
        back = False

        def take_slot() -> bool:
            nonlocal back
            # Another approval of it still waits: it holds no slot either way.
            if self.waiting[execution_id] == 1 \
                    and self.busy() + self._claiming >= self._capacity():
                self._resuming.add(execution_id)
                return False
            back = True
            self._resuming.discard(execution_id)
            self._stop_waiting(execution_id)
            return True

        try:
            yield take_slot
        finally:
            self._resuming.discard(execution_id)
            if not back:
                self._stop_waiting(execution_id)

    def _stop_waiting(self, execution_id: str) -> None:
        self.waiting[execution_id] -= 1
        if self.waiting[execution_id] <= 0:
            del self.waiting[execution_id]

    def busy(self) -> int:
        """The executions that count against ``capacity``: those not only waiting."""
        return len(self.tasks) - sum(1 for execution_id in self.waiting
                                     if execution_id in self.tasks)

    async def stop(self) -> None:
        self._stopping = True
        for task in (*self._loops, *self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self._loops, *self.tasks.values(), return_exceptions=True)
        self._loops = []
        await self._releasing.wait()

    async def _claim_loop(self) -> None:
        while not self._stopping:
            free = self._capacity() - self.busy() - len(self._resuming)
            claimed: tuple[str, ...] = ()
            if free > 0:
                self._claiming = free
                try:
                    claimed = await self.store.claim(self.owner, self.lease_s, self._clock(),
                                                     free)
                except StoreUnavailable as exc:
                    # Said when it starts and once a minute while it lasts, not each poll
                    # (twice a second for as long as Redis is away).
                    now = time.monotonic()
                    if self._unclaimable_since is None or now - self._said_unclaimable >= 60:
                        log.error("runner %s cannot claim work: %s", self.owner, exc)
                        self._said_unclaimable = now
                    self._unclaimable_since = self._unclaimable_since or now
                # The loop must outlive a bug: without it this gateway runs nothing more.
                except Exception:
                    log.exception("runner %s: claiming work failed", self.owner)
                else:
                    if self._unclaimable_since is not None:
                        log.warning("runner %s claims work again, after %.0fs", self.owner,
                                    time.monotonic() - self._unclaimable_since)
                        self._unclaimable_since = None
                finally:
                    # What it took is counted as tasks (below, before any wait) instead.
                    self._claiming = 0
            if self._stopping:  # claimed as stop() began: let go at once, not run here
                for execution_id in claimed:
                    await self._release(execution_id)
                break
            for execution_id in claimed:
                if execution_id not in self.tasks:
                    log.info("runner %s took execution %s", self.owner, execution_id)
                    self.tasks[execution_id] = asyncio.create_task(
                        self._hold(execution_id), name=f"aigw-execution-{execution_id}"
                    )
            if not claimed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_s)
            self._wake.clear()

    async def _hold(self, execution_id: str) -> None:
        try:
            execution = await self.store.get(execution_id)
            if execution is not None:
                status = await self._run(execution)
                log.info("execution %s %s", execution_id, status.value)
        except LeaseLost:
            log.warning("execution %s: another runner took it over", execution_id)
        except StoreUnavailable as exc:
            log.error("execution %s stopped: %s", execution_id, exc)
        # A bug in a step's code must not end the runner: the execution fails, logged.
        except Exception as exc:
            log.exception("execution %s failed with an internal error", execution_id)
            await self._fail(execution_id, exc)
        finally:
            self.tasks.pop(execution_id, None)
            # A second cancellation (a lost lease, then stop) ends this wait, not the
            # release; stop() waits for the release itself.
            release = self._releasing.spawn(self._release(execution_id))
            await asyncio.shield(release)

    async def _release(self, execution_id: str) -> None:
        try:
            await self.store.release(execution_id, self.owner)
        except (StoreUnavailable, InternalError) as exc:
            log.error("execution %s: could not release its lease: %s", execution_id, exc)

    async def _fail(self, execution_id: str, exc: Exception) -> None:
        error = f"internal error: {type(exc).__name__}: {exc}"
        # The store may be what failed: the error is logged already, this is a last try.
        with contextlib.suppress(GatewayError, LeaseLost):
            closed, events = abandon(await self.store.steps(execution_id),
                                     f"abandoned: the execution failed ({error})", self._clock())
            await self.store.commit(execution_id, self.owner, Checkpoint(
                status=Status.FAILED, error=error, steps=closed,
                events=(*events, NewEvent("execution_failed", data={"error": error}))),
                self._clock())

    async def _purge_loop(self, retention_s: float) -> None:
        while not self._stopping:
            try:
                purged = 0
                while (batch := await self.store.purge(self._clock() - retention_s,
                                                       PURGE_BATCH)):
                    purged += batch
                    if batch < PURGE_BATCH:
                        break
                if purged:
                    log.info("purged %d executions that ended over %.0f s ago", purged,
                             retention_s)
            except StoreUnavailable as exc:
                log.error("cannot purge old executions: %s", exc)
            # The loop must outlive a bug, as the claim loop does.
            except Exception:
                log.exception("purging old executions failed")
            await asyncio.sleep(self._purge_every_s)

    async def _unsaved_loop(self, unsaved: UnsavedAnswers) -> None:
        while not self._stopping:
            try:
                for execution_id in await unsaved.executions():
                    await self._record_unsaved(unsaved, execution_id,
                                               held=execution_id in self.tasks)
            except StoreUnavailable as exc:
                log.error("cannot record the answers left unsaved: %s", exc)
            # The loop must outlive a bug, as the claim loop does.
            except Exception:
                log.exception("recording the answers left unsaved failed")
            await asyncio.sleep(self.lease_s)

    async def _record_unsaved(self, unsaved: UnsavedAnswers, execution_id: str, *,
                              held: bool = False) -> None:
        """The memos left unsaved for ``execution_id``, once it is known what became of
        them: saved after all (the store's reply was lost), or the work was done again by
        the runner that went on with it, or it ended without them (work done and lost,
        recorded so). Otherwise they wait for a run that resumes it here. ``held`` (a run
        of this runner has it): only those saved after all are let go, the rest being its
        run's to save. Skipped, one a try left as it was cancelled after a save that went
        through unanswered stayed on disk while the run went on, waiting for an approval
        a day, say."""
        execution = await self.store.get(execution_id)
        items = await unsaved.of(execution_id)
        memos = await self.store.memos(execution_id) if execution is not None else {}
        for item in items:
            saved = memos.get(item.memo.key)
            if held and not item.held_by(saved):
                continue
            if execution is None:  # purged: there is nothing to record it on
                log.warning("execution %s is gone: the memo %s left unsaved is dropped",
                            execution_id, item.memo.key)
            elif saved is None and execution.status not in FINAL:
                continue
            elif not item.held_by(saved):
                try:
                    await self.store.record_lost(execution_id, *item.lost(), self._clock())
                except InternalError as exc:  # it would refuse it again: logged, let go
                    log.error("execution %s: the memo %s left unsaved cannot be "
                              "recorded: %s", execution_id, item.memo.key, exc)
            await unsaved.drop(execution_id, item.memo.key)

    async def _renew_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.lease_s / 3)
            for execution_id, task in list(self.tasks.items()):
                try:
                    held = await self.store.renew(execution_id, self.owner, self.lease_s,
                                                  self._clock())
                # Its own error (a key of the wrong type) must not end the loop: every
                # lease this runner holds would lapse, and its executions run twice.
                except (StoreUnavailable, InternalError) as exc:
                    log.error("cannot renew the lease of %s: %s", execution_id, exc)
                    continue
                if not held:
                    log.warning("lost the lease of execution %s", execution_id)
                    task.cancel()
