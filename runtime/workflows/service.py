"""The gateway's workflow side: starting and steering executions, and the runner.

``Workflows`` opens the executions store named by ``settings.store`` (the embedded
SQLite file, or Redis shared by every replica) and starts this process's ``Runner``,
either at startup (the ASGI lifespan, so ``aigw serve`` resumes interrupted executions
at once) or on first use (an app served in-process, as the tests do). Everything the
HTTP API and the pipeline endpoints do goes through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from aigw.compiler.graph import ApiKey, Graph, TargetKind
from aigw.compiler.pipeline_graph import Pipeline

from ..admission import admit
from ..chat_request import ChatRequest
from ..errors import BadRequest, Conflict, NotFound, StoreUnavailable
from ..identity import token_caller
from ..jsonio import loads
from ..live import Gateway
from ..policy import Facts
from ..policy_request import facts_to_keep
from ..store.executions import (
    FINAL,
    Decision,
    Event,
    Execution,
    ExecutionStore,
    NewExecution,
    Status,
    StepState,
    StepStatus,
    new_owner,
)
from ..store.executions_redis import RedisExecutions
from ..store.executions_sqlite import SQLiteExecutions
from ..store.factory import embedded_file
from ..telemetry.record import RequestRecord
from ..uncancelled import uncancelled
from .agent_cards import AgentCards
from .calls import GatewayModels, HttpxCaller
from .engine import HttpCaller, ModelCaller, Run, Services
from .kinds import act
from .runner import Runner
from .unsaved import UnsavedAnswers


async def open_executions(url: str, root: Path, namespace: str = "aigw") -> ExecutionStore:
    """The executions store of a ``settings.store`` URL: the embedded SQLite file (the
    same file as the spend ledger) or Redis."""
    path = embedded_file(url, root)
    if path is not None:
        return await SQLiteExecutions.open(path)
    return RedisExecutions.from_url(url, namespace=namespace)


class Workflows:
    """``http`` and ``models`` are the seams to the outside: HTTP tool calls, and model
    calls (by default through the gateway's serving core, as the execution's key)."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        http: HttpCaller | None = None,
        models: Callable[[Gateway, Execution], ModelCaller] = GatewayModels,
        clock: Callable[[], float] = time.time,
        poll_s: float = 0.5,
    ) -> None:
        self.gateway = gateway
        self._models = models
        self.owner = new_owner()
        self.clock = clock
        self.poll_s = poll_s
        self._http = http
        self._own_http: HttpxCaller | None = None
        self._store: ExecutionStore | None = None
        self._runner: Runner | None = None
        self._lock = asyncio.Lock()
        # Per execution: its waiters' futures, all set (and the entry dropped) by a change
        # to it; waiters of one execution are not woken by another's checkpoints.
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._stopped = False
        # Shared by every process serving this root: a restarted one finds what a
        # stopped one left.
        self.unsaved = UnsavedAnswers(gateway.root / gateway.live.graph.settings.unsaved_dir)
        self.agent_cards = AgentCards()

    async def start(self) -> None:
        """Open the store and start the runner (once; never again after ``stop``)."""
        async with self._lock:
            if self._runner is not None:
                return
            # A request that arrives while (or after) the gateway shuts down must not
            # start a runner and open a store that nothing will ever close.
            if self._stopped:
                raise StoreUnavailable("The gateway is shutting down; try another replica.")
            graph = self.gateway.live.graph
            # Under the namespace of every other key: one prefix for the whole gateway.
            self._store = await open_executions(graph.settings.store, self.gateway.root,
                                                graph.settings.redis_namespace)
            await self.unsaved.check()
            if self._http is None:
                self._own_http = HttpxCaller()
                self._http = self._own_http
            self._runner = Runner(self._store, self.owner, graph.settings.execution_lease_s,
                                  self.run_execution, self.clock, poll_s=self.poll_s,
                                  retention_s=graph.settings.execution_retention_s,
                                  capacity=self._capacity, unsaved=self.unsaved)
            self._runner.start()

    def _capacity(self) -> int:
        """``settings.execution_capacity`` of the graph serving now (a reload applies it)."""
        return self.gateway.live.graph.settings.execution_capacity

    async def stop(self) -> None:
        """Stop running (leases are let go, so the executions resume elsewhere or later)."""
        async with self._lock:
            self._stopped = True
            if self._runner is not None:
                await self._runner.stop()
                self._runner = None
            if self._store is not None:
                await self._store.aclose()
                self._store = None
            if self._own_http is not None:
                await self._own_http.aclose()
                self._own_http = self._http = None

    @asynccontextmanager
    async def lifespan(self, _app: object) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def store(self) -> ExecutionStore:
        await self.start()
        assert self._store is not None
        return self._store

    async def run_execution(self, execution: Execution) -> Status:
        """The runner's callback: one run of ``execution`` on the graph serving now."""
        live = self.gateway.live
        assert self._store is not None and self._http is not None
        assert self._runner is not None  # it is what calls this
        services = Services(self._store, self.owner, self._http, self.clock, self.notify,
                            self.wait, self._runner.waiting_for_decision, self.unsaved,
                            self.agent_cards, self.poll_s)
        models = self._models(self.gateway, execution)
        run = Run(services, execution, live.graph.pipelines, models, act, live.graph.fingerprint)
        status = await run.run()
        self._count(execution.pipeline, status)
        return status

    def _count(self, pipeline: str, status: Status) -> None:
        """aigw_workflow_executions{pipeline, status}: each execution once, when it ends."""
        if status in FINAL:
            self.gateway.telemetry.metrics.workflows.labels(pipeline, status.value).inc()

    def notify(self, execution_id: str) -> None:
        """Something about an execution changed: wake whoever waits for it in this process."""
        for waiter in self._waiters.pop(execution_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self, execution_id: str, timeout: float) -> None:
        """Until something changes about ``execution_id`` here, or ``timeout`` (changes
        made by other replicas are seen by polling the store after it)."""
        waiter = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(execution_id, set())
        waiters.add(waiter)
        try:
            # asyncio.wait, not wait_for: on 3.11 wait_for swallows a cancel that comes as
            # the waiter is woken, and a client's leaving (``unless_gone``) went unseen.
            await asyncio.wait((waiter,), timeout=timeout)
        finally:
            waiters.discard(waiter)
            if not waiters and self._waiters.get(execution_id) is waiters:
                del self._waiters[execution_id]

    async def follow(
        self, execution_id: str, after: int = 0, deadline: float | None = None
    ) -> AsyncGenerator[tuple[Execution | None, tuple[Event, ...]], None]:
        """The execution and its events after ``after``, then again each time something
        changes about it (``wait``: woken by this process's changes, else after
        ``poll_s``, for another replica's), until it is gone or has ended with all its
        events given, or ``deadline`` (``clock``'s) has passed. What WS
        /ws/executions/{id} and A2A's streams send is read here."""
        store = await self.store()
        while True:
            execution = await store.get(execution_id)
            events = await store.events(execution_id, after)
            if events:
                after = events[-1].seq
            yield execution, events
            if execution is None or (execution.status in FINAL and not events):
                return
            wait_s = self.poll_s
            if deadline is not None:
                wait_s = min(wait_s, deadline - self.clock())
                if wait_s <= 0:
                    return
            await self.wait(execution_id, wait_s)

    # What the API does

    async def start_execution(
        self,
        key: ApiKey,
        name: str,
        given: Any,
        idempotency_key: str | None,
        user: str | None,
        facts: Facts | None,
        trace: str | None = None,
    ) -> tuple[Execution, bool]:
        """Queue a run of pipeline ``name`` for ``key`` (and the end user it names: the
        model calls hold that user's limits and budgets too); ``facts``: those policy was
        asked with to let it run, asked with again as it resumes; ``trace``: the
        traceparent of the request's span, which its model calls' spans go under."""
        graph = self.gateway.live.graph
        pipeline = graph.pipelines.get(name)
        if pipeline is None or not may_run(key, graph, name):
            # Only the pipelines this key may run are named; one it may not run is as
            # unknown to it as one that does not exist.
            known = ", ".join(sorted(other for other in graph.pipelines
                                     if may_run(key, graph, other))) or "none"
            raise NotFound(f"No pipeline named '{name}' (pipelines: {known}).", param="pipeline")
        # Off the event loop: jsonschema takes about 20 us an item, and a caller's valid
        # list of a million short strings (4 MiB) held every request of the worker 20 s.
        problems = await asyncio.to_thread(pipeline.input_schema.errors, given)
        if problems:
            raise BadRequest(f"The input does not match pipeline '{name}': "
                             + "; ".join(problems), param="input")
        await self._admit(key, user)
        store = await self.store()
        execution, created = await store.create(
            NewExecution(name, given, key.name, idempotency_key, graph.fingerprint, user,
                         facts_to_keep(facts) if facts is not None else None, trace,
                         token_caller(key)),
            self.clock(),
        )
        if not created and (execution.pipeline, execution.input) != (name, given):
            raise Conflict(f"The idempotency key '{idempotency_key}' started execution "
                           f"{execution.id} of another request (pipeline "
                           f"'{execution.pipeline}', another input); use a new key.",
                           param="idempotency_key")
        if created and self._runner is not None:
            self._runner.wake()
        return execution, created

    async def execution(self, key: ApiKey, execution_id: str) -> Execution:
        """The execution, if ``key`` started it (an admin key sees every one)."""
        store = await self.store()
        execution = await store.get(execution_id)
        if execution is None or not (key.admin or execution.key == key.name):
            raise NotFound(f"No execution '{execution_id}'.")
        return execution

    async def control(self, key: ApiKey, execution_id: str, action: str) -> Execution:
        await self.execution(key, execution_id)
        store = await self.store()
        before = await store.get(execution_id)
        execution = await store.control(execution_id, action, self.clock())
        self.notify(execution_id)
        if before is not None and before.status is not execution.status:
            self._count(execution.pipeline, execution.status)  # cancelled while unheld
        if execution.status is Status.QUEUED and self._runner is not None:
            self._runner.wake()
        return execution

    async def _admit(self, key: ApiKey, user: str | None) -> None:
        """Starting a run is a request: it takes one of the key's (its team's, its end
        user's) requests a minute, as a chat does, and is a 429 past them; else a key
        limited to 3 a minute could queue any number of runs, each input stored."""
        limits = self.gateway.live.scopes.limits(key, user)
        if not limits:
            return  # nothing to count, nor a store to open for it
        record = RequestRecord(f"start-{os.urandom(16).hex()}", "pipeline",
                               self.gateway.live.graph.fingerprint)
        admission = await admit(await self.gateway.store.get(), record, limits, 0, 0.0)
        # Given back though the task is cancelled meanwhile (its client gone, a shutdown):
        # else its place under a max_parallel stayed taken until the hold expired.
        with anyio.CancelScope(shield=True):
            await uncancelled(admission.release, self.gateway.store.finish, again=True)

    async def waiting(self, key: ApiKey, execution_id: str) -> tuple[Execution, list[StepState]]:
        """The execution and its steps waiting for a decision, as ``key`` may see them: the
        key that started it and admin keys see it, and so does a key that may decide one
        of its waiting steps (an approver, who may see nothing else of it)."""
        store = await self.store()
        execution = await store.get(execution_id)
        if execution is None:
            raise NotFound(f"No execution '{execution_id}'.")
        states = await store.steps(execution_id)
        waiting = [state for state in states if state.status is StepStatus.WAITING]
        # Ended, its approvals were closed with it: a key they asked is told so (409),
        # as the key that started it is, rather than that there is no such execution.
        asked = [state for state in states if state.status is StepStatus.CANCELLED] \
            if execution.status in FINAL else waiting
        if not (key.admin or execution.key == key.name
                or any(may_decide(key, execution, state) for state in asked)):
            raise NotFound(f"No execution '{execution_id}'.")
        if execution.status in FINAL:  # ended as the decision came: nothing will read it
            raise Conflict(f"Execution {execution_id} has already {execution.status.value}; "
                           "nothing waits for a decision.")
        return execution, waiting

    async def inbox(self, key: ApiKey, limit: int) -> list[tuple[Execution, StepState]]:
        """The approvals waiting for a decision that ``key`` may make, newest first (among
        the newest ``INBOX_SCAN`` waiting anywhere)."""
        store = await self.store()
        found = [(execution, state) for execution, state in await store.waiting(INBOX_SCAN)
                 if may_decide(key, execution, state)]
        return found[:limit]

    async def decide(self, execution_id: str, step: str, decision: Decision) -> None:
        store = await self.store()
        await store.decide(execution_id, step, decision)
        self.notify(execution_id)

    async def wait_final(self, execution_id: str, timeout: float) -> Execution | None:
        """The execution once final (or paused, or waiting past ``timeout``: as it is then)."""
        store = await self.store()
        deadline = self.clock() + timeout
        while True:
            execution = await store.get(execution_id)
            if execution is None or execution.status in FINAL or \
                    execution.status is Status.PAUSED:
                return execution
            remaining = deadline - self.clock()
            if remaining <= 0:
                return execution
            await self.wait(execution_id, min(self.poll_s, remaining))


# How many waiting approvals an inbox looks through (the newest), before choosing the
# ones its key may decide.
INBOX_SCAN = 5000


def may_decide(key: ApiKey, execution: Execution, state: StepState) -> bool:
    """Whether ``key`` may decide the approval ``state`` waits for: an admin key always;
    else the keys and teams the step names as approvers, or, where it names none, the
    key that started the execution."""
    if key.admin:
        return True
    approvers = (state.detail or {}).get("approvers")
    if approvers is None:
        return execution.key == key.name
    return key.name in approvers.get("keys", ()) or (
        key.team is not None and key.team.name in approvers.get("teams", ()))


def may_run(key: ApiKey, graph: Graph, name: str) -> bool:
    """A key limited to some routes may run a pipeline only through one of them."""
    return key.routes is None or any(
        route.kind is TargetKind.PIPELINE and route.target == name
        for route_name, route in graph.routes.items() if route_name in key.routes)


def chat_input(pipeline: Pipeline, request: ChatRequest) -> Any:
    """A pipeline's input from a chat request: the last user message, if it is a JSON
    object; else ``{<chat_field>: text}`` for a pipeline whose input has one string field
    to fill; else ``{"prompt": text, "messages": [...]}``."""
    users = [message for message in request.messages if message.role == "user"]
    text = users[-1].text() if users else ""
    with contextlib.suppress(ValueError):
        parsed = loads(text)
        if isinstance(parsed, dict):
            return parsed
    if pipeline.chat_field is not None:
        return {pipeline.chat_field: text}
    return {"prompt": text,
            "messages": [{"role": m.role, "content": m.text()} for m in request.messages]}
