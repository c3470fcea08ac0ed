"""Running one execution: the DAG of steps, with retries, timeouts, checkpoints and control.

    Run.run()   load the checkpoint -> repeat { pause or cancel asked? -> start every
                step whose needs are done (or skip it) -> wait for one -> checkpoint }
                -> render the output -> final status

Each try of a step is checkpointed when it starts and when it ends. Inside a step each
model call, map item, loop iteration, ensemble member and cascade tier is a memo keyed
by where it is (``report@1``, ``items@2/3``), so an execution resumed after a crash
runs again only the step that was in flight, and repeats none of its completed calls;
a model's answer (or an agent's task) the store fails to save is saved again, never
asked for again, and kept on disk meanwhile for a run resumed after this one stopped
(``unsaved.py``).
A step is skipped when its ``when`` is false, when a branch listing it chose other
steps, or when every step it needs was skipped. Policy is asked again whenever the run
goes on after a stop or a wait (resumed, started on a graph other than the one it was
made on, or decided after an approval's wait): a reload may forbid the pipeline since.
The end of an execution closes the steps it leaves running or waiting (an approval
beside a step that failed), and a resumed run those of steps a reload removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, Protocol

import jinja2

from aigw.compiler.graph import Route
from aigw.compiler.pipeline_graph import Pipeline, Step, StepKind
from aigw.compiler.templates import Expr, Text, Value, render_value

from ..chat_request import ChatRequest
from ..errors import InternalError, StoreUnavailable
from ..store.executions import (
    Checkpoint,
    Execution,
    ExecutionStore,
    LeaseLost,
    Memo,
    NewEvent,
    Status,
    StepState,
    StepStatus,
    abandon,
)
from .agent_cards import AgentCards
from .paths import missing_from
from .unsaved import UnsavedAnswers

log = logging.getLogger("aigw.workflows")

MAX_BACKOFF_S = 30.0
# The longest wait between two tries to save a model's answer while the store is out:
# once it is back, the answer is saved within this, before the run's lease lapses.
MAX_SAVE_BACKOFF_S = 1.0

# The step timeouts a task runs under: its step's, and those of the steps around it (a
# map item's step inside the map step). Tasks a step starts inherit them.
_LIMITS: ContextVar[tuple[asyncio.Timeout, ...]] = ContextVar("aigw_step_limits", default=())


class StepFailed(Exception):
    """A step (or the whole execution) could not produce its output. Its message follows
    a colon where it is told ("step 'draft' failed: ...", "stopped as it resumed: ..."),
    so one made from an API error's sentence is kept as a clause (``clause``)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(clause(message))
        self.retryable = retryable


def clause(sentence: str) -> str:
    """``sentence`` with its first word lower-cased where it is an ordinary word (not an
    acronym, a name in quotes or a step's path), to follow a colon.

    >>> clause("The API key 'dev' expired at 2026-12-15T00:00:00Z.")
    "the API key 'dev' expired at 2026-12-15T00:00:00Z."
    >>> clause("MCP server 'files' is down")
    "MCP server 'files' is down"
    """
    first = sentence.partition(" ")[0]
    if first[:1].isupper() and first[1:].isalpha() and first[1:].islower():
        return sentence[0].lower() + sentence[1:]
    return sentence


class Stop(Exception):
    """The execution must stop now: ``action`` is "pause" or "cancel"."""

    def __init__(self, action: str) -> None:
        super().__init__(action)
        self.action = action


class NoLongerAllowed(Exception):
    """Policy no longer lets the execution's key (and end user) run its pipeline, asked
    again as the run goes on after a stop or a wait: it ends failed, whatever steps are
    in flight."""


class Suspended(Exception):
    """The step gave way to a pause (a waiting approval, or a pipeline or map step whose
    own work in flight has finished); it stays unfinished, and is resumed."""


@dataclass(frozen=True, slots=True)
class ModelAnswer:
    text: str
    deployment: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    request: str = ""  # the spend ledger's id of the call
    estimated: bool = False  # some of it billed as estimated (calls cut short)


@dataclass(slots=True)
class Spent:
    """What one model call was billed, as the spend ledger has it, filled in by the
    caller as the call ends, however it ends: a call that failed after the provider was
    paid (an answer a guardrail withheld; one cut short by the step's timeout, billed as
    an ``estimated`` ledger record) is charged to the key's budget, so it counts in the
    execution's totals too, as ops reconcile them with the ledger."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    request: str = ""
    deployment: str = ""
    estimated: bool = False


class ModelCaller(Protocol):
    """One call through the gateway's serving core (routing, limits, budgets, ledger);
    and its invoke checks on a pipeline (one a step runs, or the execution's own, asked
    again as it resumes) and on an agent a step messages."""

    async def __call__(self, route: Route, request: ChatRequest, spent: Spent) -> ModelAnswer:
        """The answer; ``spent`` filled in with what the call was billed, even as it
        raises."""
        ...

    async def check_pipeline(self, pipeline: str) -> None:
        """Raise ``StepFailed`` (not retryable) if policy does not let the execution's key
        and end user run ``pipeline`` (invoke on ``Pipeline::"name"``)."""

    async def check_agent(self, agent: str) -> None:
        """Raise ``StepFailed`` (not retryable) if policy does not let them message
        ``agent`` (invoke on ``Agent::"name"``)."""

    async def check_caller(self) -> None:
        """Raise ``StepFailed`` (not retryable) if the gateway no longer accepts the
        execution's key or JWT caller (gone from the config, past its ``expires``), as
        it refuses a request from it or a batch's line; asked as each step's try begins."""


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    status: int
    content_type: str
    text: str


class HttpCaller(Protocol):
    async def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: Any, timeout: float
    ) -> HttpAnswer: ...


@dataclass(frozen=True, slots=True)
class Services:
    """What a run needs from outside: the store, its runner's name, the callers, a clock."""

    store: ExecutionStore
    owner: str
    http: HttpCaller
    clock: Callable[[], float]
    notify: Callable[[str], None]  # wake whoever follows this execution in this process
    wait: Callable[[str, float], Awaitable[None]]  # until a local wake, or the timeout
    # Held while an approval waits for a decision: the runner does not count the
    # execution against its capacity meanwhile. Decided, the run goes on once what it
    # gives says True: a slot is its again.
    waiting: Callable[[str], AbstractContextManager[Callable[[], bool]]]
    unsaved: UnsavedAnswers  # where an answer the store cannot save for now waits
    agent_cards: AgentCards  # the endpoints agent cards named, shared by the runs
    poll_s: float = 0.5


@dataclass(frozen=True, slots=True)
class StepContext:
    """Where a step's action runs: which pipeline, its path and this try's memo key."""

    run: Run
    pipeline: Pipeline
    path: str  # the step's place: "report", "sub/inner", "items@1/0"
    key: str  # this try's memo prefix: "report@2"
    scope: Mapping[str, Any]

    def with_scope(self, **extra: Any) -> Mapping[str, Any]:
        return {**self.scope, **extra}


Action = Callable[[StepContext, Step], Awaitable[Any]]


class Run:
    """One runner's go at one execution, until it ends, pauses or the runner lets go."""

    def __init__(
        self,
        services: Services,
        execution: Execution,
        pipelines: Mapping[str, Pipeline],
        caller: ModelCaller,
        act: Action,
        graph: str,
    ) -> None:
        self.services = services
        self.execution = execution
        self.graph = graph  # fingerprint of the graph serving this run
        self.id = execution.id
        self.pipelines = pipelines
        self.caller = caller
        self._act = act
        self.states: dict[str, StepState] = {}
        self.memos: dict[str, Any] = {}
        self._control: str | None = execution.control
        self._checked = 0.0
        # A waiting state and the execution's status commit one at a time
        # (``commit_states``): two approvals decided at once each saw the other still
        # waiting, and both left it waiting.
        self._approvals = asyncio.Lock()
        self._paused: dict[asyncio.Timeout, _Pause] = {}  # see ``_untimed``
        # The run stops here, to be resumed (it lost the lease, or the store): the steps
        # it cancels meanwhile are not given up (``gives_up``).
        self.stopping = False
        self._task: asyncio.Task[Any] | None = None  # the one running ``run``

    async def run(self) -> Status:
        """Run to a final status, or to paused; raises LeaseLost if another runner took it."""
        store = self.services.store
        self._task = asyncio.current_task()
        self.states = {state.step: state for state in await store.steps(self.id)}
        self.memos = dict(await store.memos(self.id))
        started = "execution_resumed" if self.states else "execution_started"
        await self.commit(Checkpoint(status=Status.RUNNING, events=(
            NewEvent(started, data={"runner": self.services.owner}),)))
        if self.states:  # a step ran, and may have left answers it could not save
            await self._recover()
        pipeline = self.pipelines.get(self.execution.pipeline)
        try:
            if pipeline is None:
                raise StepFailed(f"pipeline '{self.execution.pipeline}' is no longer defined",
                                 retryable=False)
            if self.states or self.graph != self.execution.graph:
                # Policy was asked when the execution was made; since then a reload (or a
                # restart on new files) may forbid the pipeline to its key.
                await self.still_allowed("stopped as it resumed" if self.states
                                         else "not started")
                await self._drop_removed(pipeline)
            output = await self.run_pipeline(pipeline, "", self.execution.input)
        except Stop as stop:
            if stop.action == "pause":  # its approvals stay waiting, to go on when resumed
                await self.commit(Checkpoint(status=Status.PAUSED, clear_control=True,
                                             events=(NewEvent("execution_paused"),)))
                return Status.PAUSED
            await self._end(Status.CANCELLED, "the execution was cancelled",
                            Checkpoint(error="cancelled", clear_control=True))
            return Status.CANCELLED
        except (StepFailed, NoLongerAllowed) as exc:
            await self._end(Status.FAILED, f"the execution failed ({exc})",
                            Checkpoint(error=str(exc)), {"error": str(exc)})
            return Status.FAILED
        await self._end(Status.SUCCEEDED, "the execution succeeded without it",
                        Checkpoint(output=output), {"output": output})
        return Status.SUCCEEDED

    async def _recover(self) -> None:
        """Save the memos a runner of this gateway could not (``unsaved``): this run uses
        them rather than call the models or send the agents their messages again. One
        for a key the execution holds other work under (another replica did it again
        meanwhile) is recorded as work done and lost."""
        unsaved = self.services.unsaved
        for item in await unsaved.of(self.id):
            saved = self.memos.get(item.memo.key)
            if saved is None:
                await self.remember(item.memo, item.event, NewEvent(
                    item.recovered, item.event.step, {"key": item.memo.key}))
            elif not item.held_by(saved):
                await self.services.store.record_lost(self.id, *item.lost(), self.now())
            await unsaved.drop(self.id, item.memo.key)

    async def _end(self, status: Status, why: str, checkpoint: Checkpoint,
                   data: Mapping[str, Any] | None = None) -> None:
        """Commit the final ``status`` (with ``checkpoint``'s output or error), and close
        the steps it leaves running or waiting (an approval beside a step that failed,
        or waiting as the execution was cancelled): they read so for good."""
        closed, events = abandon(self.states.values(), f"abandoned: {why}", self.now())
        await self.commit(replace(checkpoint, status=status, steps=closed, events=(
            *events, NewEvent(f"execution_{status.value}", data=data or {}))))

    async def _drop_removed(self, pipeline: Pipeline) -> None:
        """Close the running or waiting states of steps the pipelines no longer have (a
        reload removed or renamed them), at any depth: a step of a pipeline a step runs
        too. Nothing runs them again, and an approval among them stayed listed as
        waiting, holding the execution 'waiting' while it ran."""
        closed: list[StepState] = []
        events: list[NewEvent] = []
        for state in self.states.values():
            missing = missing_from(self.pipelines, pipeline, state.step)
            if missing is not None:
                more = abandon((state,), f"abandoned: pipeline '{missing}' no longer has "
                               "this step (a reload removed or renamed it)", self.now())
                closed.extend(more[0])
                events.extend(more[1])
        if closed:
            await self.commit_states(tuple(closed), tuple(events))

    async def run_pipeline(self, pipeline: Pipeline, prefix: str, given: Any) -> Any:
        """Run ``pipeline``'s steps (their states under ``prefix``) and render its output."""
        outputs: dict[str, Any] = {}
        finished: dict[str, StepStatus] = {}
        for name in pipeline.steps:
            state = self.states.get(prefix + name)
            if state is not None and state.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED):
                finished[name] = state.status
                outputs[name] = state.output
        running: dict[asyncio.Task[Any], str] = {}
        try:
            while True:
                control = await self.control()
                if control == "cancel":
                    raise Stop("cancel")
                # Read afresh each round: a resume while the steps in flight finish takes
                # the pause back (an approval that gave way to it starts waiting again).
                stopping = "pause" if control == "pause" else None
                if stopping is None:
                    await self._start_ready(pipeline, prefix, given, outputs, finished, running)
                if not running:
                    if stopping is not None:
                        # A pipeline step's pipeline gives way as a step does: raised as
                        # Stop, it ended the run then and there, cancelling the steps in
                        # flight beside it, so a pause acted as a cancel.
                        raise Stop(stopping) if not prefix else Suspended()
                    break
                done, _ = await asyncio.wait(
                    running, timeout=self.services.poll_s, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    name = running.pop(task)
                    try:
                        outputs[name] = task.result()
                    except Suspended:
                        continue
                    finished[name] = StepStatus.SUCCEEDED
        except (LeaseLost, StoreUnavailable):
            self.stopping = True
            raise
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        scope = {"input": given, "steps": dict(outputs)}
        output = jsonable(self.render(pipeline.output, scope))
        if pipeline.output_schema is not None:
            problems = await asyncio.to_thread(pipeline.output_schema.errors, output)
            if problems:
                raise StepFailed(f"pipeline '{pipeline.name}' output does not match its "
                                 f"output_schema: {'; '.join(problems)}", retryable=False)
        return output

    async def _start_ready(
        self,
        pipeline: Pipeline,
        prefix: str,
        given: Any,
        outputs: dict[str, Any],
        finished: dict[str, StepStatus],
        running: dict[asyncio.Task[Any], str],
    ) -> None:
        progressed = True
        while progressed:  # a skip can make further steps ready
            progressed = False
            started = set(running.values())
            for name, step in pipeline.steps.items():
                if name in finished or name in started:
                    continue
                if not all(need in finished for need in step.needs):
                    continue
                scope = {"input": given,
                         "steps": {n: outputs.get(n) for n in pipeline.upstream[name]}}
                reason = self._skip_reason(pipeline, step, finished, outputs, scope)
                if reason is not None:
                    await self.set_state(StepState(prefix + name, StepStatus.SKIPPED,
                                                   detail={"reason": reason}),
                                         NewEvent("step_skipped", prefix + name,
                                                  {"reason": reason}))
                    finished[name] = StepStatus.SKIPPED
                    outputs[name] = None
                    progressed = True
                    continue
                context = StepContext(self, pipeline, prefix + name, "", scope)
                running[asyncio.create_task(self.run_step(context, step))] = name
                started.add(name)

    def _skip_reason(
        self,
        pipeline: Pipeline,
        step: Step,
        finished: Mapping[str, StepStatus],
        outputs: Mapping[str, Any],
        scope: Mapping[str, Any],
    ) -> str | None:
        for branch in pipeline.chosen_by.get(step.name, ()):
            chosen = outputs.get(branch)
            if finished.get(branch) is StepStatus.SKIPPED or not isinstance(chosen, list) \
                    or step.name not in chosen:
                return f"branch '{branch}' did not choose it"
        if step.needs and all(finished[need] is StepStatus.SKIPPED for need in step.needs):
            return "every step it needs was skipped"
        if step.when is not None and not truthy(self.evaluate(step.when, scope)):
            return f"condition is false: {step.when.source}"
        return None

    async def run_step(self, context: StepContext, step: Step) -> Any:
        """A checkpointed step: tries with backoff until one succeeds or retries run out."""
        path = context.path
        state = self.states.get(path)
        if state is not None and state.status is StepStatus.FAILED:
            # Failed for good (a step's failure is recorded only then), and the runner
            # stopped before it failed the execution: it fails now, as it would have.
            raise StepFailed(f"step '{path}' failed: {state.error}", retryable=False)
        # A running step with an error is between tries (the runner stopped during the
        # backoff): its last try is over, and the next one begins under keys of its own.
        resuming = state is not None and state.error is None \
            and state.status in (StepStatus.RUNNING, StepStatus.WAITING)
        attempt = state.attempts if state is not None else 0
        # The tries made before a restart count against ``retries``: none are given back.
        tries = attempt - 1 if resuming else attempt
        while True:
            tries += 1
            if not resuming:
                attempt += 1
                await self.set_state(
                    StepState(path, StepStatus.RUNNING, attempt, started_at=self.now()),
                    NewEvent("step_started", path, {"attempt": attempt, "kind": step.kind.value}),
                )
            resuming = False
            try:
                output = await self.attempt(replace(context, key=f"{path}@{attempt}"), step)
            except StepFailed as exc:
                error = exc
            else:
                await self.set_state(
                    StepState(path, StepStatus.SUCCEEDED, attempt, output,
                              started_at=self.states[path].started_at, finished_at=self.now()),
                    NewEvent("step_succeeded", path, {"attempt": attempt, "output": output}),
                )
                return output
            if not error.retryable or tries > step.retries:
                await self._end_attempt(path, attempt, error, (
                    StepState(path, StepStatus.FAILED, attempt, error=str(error),
                              started_at=self.states[path].started_at, finished_at=self.now()),),
                    NewEvent("step_failed", path, {"attempt": attempt, "error": str(error)}))
                raise StepFailed(f"step '{path}' failed: {error}", retryable=False)
            delay = min(step.backoff_ms * 2 ** (tries - 1) / 1000, MAX_BACKOFF_S)
            await self._end_attempt(path, attempt, error, (
                StepState(path, StepStatus.RUNNING, attempt, error=str(error),
                          started_at=self.states[path].started_at),),
                NewEvent("step_retry", path, {"attempt": attempt, "error": str(error),
                                              "delay_s": delay}))
            await asyncio.sleep(delay)

    async def _end_attempt(self, path: str, attempt: int, error: StepFailed,
                           states: tuple[StepState, ...], event: NewEvent) -> None:
        """Commit a failed try's end, with what it left unfinished under its key (a map
        item's approval, the steps of a pipeline an item ran) marked failed: the next try
        works under keys of its own, so they would read running or waiting for good (an
        approval listed, decidable, and holding the execution 'waiting')."""
        prefix = f"{path}@{attempt}/"
        now = self.now()
        reason = f"abandoned: try {attempt} of step '{path}' failed ({error})"
        left = tuple(replace(state, status=StepStatus.FAILED, error=reason, finished_at=now)
                     for state in self.states.values() if state.step.startswith(prefix)
                     and state.status in (StepStatus.RUNNING, StepStatus.WAITING))
        events = (*(NewEvent("step_abandoned", state.step, {"reason": reason})
                    for state in left), event)
        await self.commit_states((*left, *states), events)

    async def commit_states(self, states: tuple[StepState, ...],
                             events: tuple[NewEvent, ...]) -> None:
        """Commit step states that start or end a wait, and the execution's status with
        them: waiting while any approval waits (this one or another beside it; one
        decided left it running while the other still waited, missing from
        ?status=waiting), else running."""
        async with self._approvals:
            self.states.update((state.step, state) for state in states)
            waiting = any(other.status is StepStatus.WAITING for other in self.states.values())
            await self.commit(Checkpoint(steps=states, events=events,
                                         status=Status.WAITING if waiting else Status.RUNNING))

    async def attempt(self, context: StepContext, step: Step) -> Any:
        """One try: the action under the step's timeout, then its output_schema; none for
        a key the gateway no longer accepts (an approval waiting when it expired goes on
        waiting, and stops after the decision: a reload may move its ``expires``)."""
        await self.caller.check_caller()
        if step.kind is StepKind.APPROVAL:
            output = await self._act(context, step)  # waits up to its own timeout_s
        else:
            try:
                async with asyncio.timeout(step.timeout_s) as limit:
                    limits = _LIMITS.set((*_LIMITS.get(), limit))
                    try:
                        output = await self._act(context, step)
                    finally:
                        _LIMITS.reset(limits)
            except TimeoutError:
                raise StepFailed(f"timed out after {step.timeout_s:g}s") from None
        output = jsonable(output)
        if step.output_schema is not None:
            problems = await asyncio.to_thread(step.output_schema.errors, output)
            if problems:
                raise StepFailed(f"output does not match output_schema: {'; '.join(problems)}")
        return output

    async def run_inline(self, context: StepContext, step: Step, key: str) -> Any:
        """A step inside another (a map item, a loop action): retried like any step, its
        result a memo rather than a step of its own."""
        if key in self.memos:
            return self.memos[key].get("value")
        inner = replace(context, path=key, key=key)
        if step.when is not None and not truthy(self.evaluate(step.when, context.scope)):
            value = None
        else:
            tries = 0
            while True:
                tries += 1
                try:
                    value = await self.attempt(replace(inner, key=f"{key}@{tries}"), step)
                    break
                except StepFailed as exc:
                    if not exc.retryable or tries > step.retries:
                        raise StepFailed(f"{key}: {exc}", retryable=False) from exc
                    await self.emit(NewEvent("step_retry", key, {"attempt": tries,
                                                                 "error": str(exc)}))
                    await asyncio.sleep(min(step.backoff_ms * 2 ** (tries - 1) / 1000,
                                            MAX_BACKOFF_S))
        await self.remember(Memo(key, {"value": value}))
        return value

    async def still_allowed(self, when: str) -> None:
        """``NoLongerAllowed`` (its message opening with ``when``) if policy, as it is now,
        does not let the execution's key and end user run its pipeline: the check the
        execution passed when it was made, asked again."""
        try:
            await self.caller.check_pipeline(self.execution.pipeline)
        except StepFailed as exc:
            raise NoLongerAllowed(f"{when}: {exc}") from exc

    async def call_model(self, context: StepContext, model: str, request: ChatRequest,
                         key: str) -> str:
        """A model call through the gateway, made at most once per ``key``."""
        if key in self.memos:
            return str(self.memos[key]["text"])
        route = context.pipeline.routes[model]
        spent = Spent()
        try:
            answer = await self.caller(route, request, spent)
        except BaseException as exc:
            if spent.cost or spent.prompt_tokens or spent.completion_tokens:
                # A task of its own: a step cut by its timeout is still cancelling here,
                # and a commit from it would raise that cancellation (``_lost_cancel``).
                await asyncio.shield(self._count_failed(context, model, key, spent, exc))
            raise
        data: dict[str, Any] = {"model": model, "deployment": answer.deployment,
                                "cost": answer.cost, "prompt_tokens": answer.prompt_tokens,
                                "completion_tokens": answer.completion_tokens}
        if answer.estimated:
            data["estimated"] = True
        await self.keep(
            Memo(key, {"text": answer.text, **data, "request": answer.request}, answer.cost,
                 answer.prompt_tokens, answer.completion_tokens, model_call=True),
            NewEvent("model_call", context.path, {"key": key, **data}),
            f"model '{model}' answered, but the store did not keep the answer", on_disk=True,
        )
        return answer.text

    async def _count_failed(self, context: StepContext, model: str, key: str, spent: Spent,
                            error: BaseException) -> None:
        """Add a failed call's bill to the execution's totals, with a ``model_call`` event
        saying it failed. A memo of its own (by the call's ledger id, so counted once):
        not the answer's key, which the next try calls again. Tried once: the try is
        failing anyway, and a store out (or a lease lost) must not hold it up."""
        data: dict[str, Any] = {
            "model": model, "deployment": spent.deployment, "cost": spent.cost,
            "prompt_tokens": spent.prompt_tokens, "completion_tokens": spent.completion_tokens,
            "failed": str(error) or type(error).__name__}
        if spent.estimated:
            data["estimated"] = True
        memo = Memo(f"{key}!{spent.request}", {**data, "request": spent.request}, spent.cost,
                    spent.prompt_tokens, spent.completion_tokens, model_call=True)
        try:
            await self.remember(memo, NewEvent("model_call", context.path, {"key": key, **data}))
        except (StoreUnavailable, InternalError, LeaseLost) as exc:
            log.warning("execution %s: the bill of failed call %s is not in its totals: %s",
                        self.id, spent.request, exc)

    async def keep(self, memo: Memo, event: NewEvent, refused: str, *,
                   on_disk: bool = False) -> None:
        """Save ``memo``, the record of work done outside that is not to be done again (a
        model's answer, an agent's task). The work is done (billed, or under way): a
        failed save must not end this try of the step (a retryable failure), as the next
        try, or the run that resumes it, did the work again. So while the store is
        unavailable the save is tried again, the step timeouts paused meanwhile, until
        it is saved, the lease is lost (``LeaseLost``: the runner holding the execution
        now goes on) or this run is stopped; a store that refuses the save itself (its
        own error, which it would give again) fails the step, not to be tried again,
        with ``refused`` and the store's error. Held in memory only, a model's answer (an
        agent's task) was lost with a runner that stopped before the store was back, and
        the work done again: ``on_disk``, it is kept on disk too (``unsaved``) until the
        store has it."""
        tries = 0
        kept = False
        with self._untimed():
            while True:
                try:
                    await self.remember(memo, event)
                except StoreUnavailable as exc:
                    if not tries:
                        log.warning("execution %s: %s is not saved, the store is "
                                    "unavailable; trying again: %s", self.id, memo.key, exc)
                        kept = on_disk and await self.services.unsaved.put(self.id, memo, event)
                except InternalError as exc:
                    if kept:  # refused, as it would be again: nothing to save it for
                        await self.services.unsaved.drop(self.id, memo.key)
                    raise StepFailed(f"{refused}: {exc.message}", retryable=False) from exc
                else:
                    if tries:
                        log.info("execution %s: %s is saved after %d tries",
                                 self.id, memo.key, tries + 1)
                    if kept:
                        await self.services.unsaved.drop(self.id, memo.key)
                    return
                tries += 1
                await asyncio.sleep(min(0.05 * 2 ** tries, MAX_SAVE_BACKOFF_S))

    @contextlib.contextmanager
    def _untimed(self) -> Iterator[None]:
        """The step timeouts this task runs under stop counting meanwhile; then each goes
        on, its deadline later by as long. Paused by several tasks at once (two items of
        a map saving), one goes on when the last lets go of it."""
        limits = [limit for limit in _LIMITS.get() if not limit.expired()]
        clock = asyncio.get_running_loop().time
        for limit in limits:
            pause = self._paused.get(limit)
            if pause is None:
                self._paused[limit] = _Pause(limit.when(), clock())
                limit.reschedule(None)
            else:
                pause.holders += 1
        try:
            yield
        finally:
            for limit in limits:
                pause = self._paused[limit]
                pause.holders -= 1
                if pause.holders == 0:
                    del self._paused[limit]
                    if pause.deadline is not None:
                        limit.reschedule(pause.deadline + clock() - pause.since)

    # Checkpoints and events

    async def set_state(self, state: StepState, event: NewEvent) -> None:
        await self.commit(Checkpoint(steps=(state,), events=(event,)))
        self.states[state.step] = state

    async def remember(self, memo: Memo, *events: NewEvent) -> None:
        await self.commit(Checkpoint(memo=memo, events=events))
        self.memos[memo.key] = memo.value

    async def emit(self, event: NewEvent) -> None:
        await self.commit(Checkpoint(events=(event,)))

    async def commit(self, checkpoint: Checkpoint) -> None:
        _lost_cancel()
        await self.services.store.commit(self.id, self.services.owner, checkpoint, self.now())
        self.services.notify(self.id)

    async def control(self) -> str | None:
        """"pause" or "cancel" when asked for (read from the store at most every poll_s).
        A store that cannot be read now leaves it as last read: nobody can ask for a
        change meanwhile, and the run goes on (a step's answer waiting to be saved,
        ``keep``) until it must write."""
        _lost_cancel()  # every loop of a run comes by here
        now = self.now()
        if now - self._checked >= self.services.poll_s:
            self._checked = now
            try:
                execution = await self.services.store.get(self.id)
            except StoreUnavailable:
                return self._control
            if execution is None or execution.owner != self.services.owner:
                raise LeaseLost(f"execution {self.id} is no longer held by this runner")
            self._control = execution.control
        return self._control

    def gives_up(self) -> bool:
        """Whether the cancellation this task is in ends its work for good: a step's
        timeout passed, the execution is cancelled, or a step beside it failed (a retry
        works under keys of its own). Not a stop of the run itself, its runner stopping
        or its lease or store lost, after which a run resumes the work where it was left."""
        task = self._task
        return not self.stopping and not (task is not None and task.cancelling())

    def now(self) -> float:
        return self.services.clock()

    # Templates

    def render(self, value: Value, scope: Mapping[str, Any]) -> Any:
        return _template_call(lambda: render_value(value, scope))

    def text(self, text: Text, scope: Mapping[str, Any]) -> str:
        return str(_template_call(lambda: text.render(scope)))

    def evaluate(self, expr: Expr, scope: Mapping[str, Any]) -> Any:
        return _template_call(lambda: expr.evaluate(scope))


@dataclass(slots=True)
class _Pause:
    """A step timeout held paused by ``holders`` tasks since ``since`` (loop time)."""

    deadline: float | None
    since: float
    holders: int = 1


def _lost_cancel() -> None:
    """Raise the cancellation this task was asked for, if a call below swallowed it. On
    Python 3.11, ``asyncio.wait_for`` returns the result it has rather than raise a
    cancellation that came meanwhile, and redis-py sends every command through it: a
    step cancelled as a sibling failed, or as its runner stopped, went on, an approval
    polling the store until its deadline, with its execution waiting for it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _template_call(run: Callable[[], Any]) -> Any:
    try:
        return run()
    except jinja2.TemplateError as exc:
        raise StepFailed(f"template error: {exc}", retryable=False) from exc
    except (TypeError, ValueError, ArithmeticError, LookupError, AttributeError) as exc:
        raise StepFailed(f"template error: {type(exc).__name__}: {exc}", retryable=False) from exc


def truthy(value: Any) -> bool:
    """A condition's value as a bool; the strings "false", "no", "0" and "" are false."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "no", "0", "none", "null")
    return bool(value)


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (tuples become lists; other objects their text)."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError, jinja2.UndefinedError) as exc:
        raise StepFailed(f"the output is not JSON data: {exc}", retryable=False) from exc
