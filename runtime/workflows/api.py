"""The workflow API: templates, compiled pipelines, executions and their events.

    GET  /api/v1/templates                       built-in pipeline templates
    GET  /api/v1/workflows                       the gateway's compiled pipelines
    POST /api/v1/executions                      {pipeline | template, input, idempotency_key}
    GET  /api/v1/executions?status=&pipeline=    newest first (a key sees its own), paged
         &limit=&after=                          by the last id of the page before
    GET  /api/v1/executions/{id}                 status, output, cost, usage
    GET  /api/v1/executions/{id}/steps           each step's checkpoint
    GET  /api/v1/executions/{id}/events?after=N  the history of events
    POST /api/v1/executions/{id}/pause|resume|cancel
    POST /api/v1/executions/{id}/approvals       {step?, decision: approve|reject, comment?}
    GET  /api/v1/approvals                       the steps waiting on this key's decision
    GET  /api/v1/costs/summary                   per pipeline (admin keys)
    WS   /ws/executions/{id}?after=N             events as they happen, then {"type": "end"}
    POST /v1/pipelines/{name}?wait_s=            run with the body as input; wait for the output

Every endpoint takes the gateway's API keys (``Authorization: Bearer``; the WebSocket
also ``?api_key=``). A key sees and steers the executions it started; an admin key,
all of them. An approval step that names ``approvers`` is decided by them (and admin
keys) only, and they see nothing else of the execution.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from aigw.compiler.graph import ApiKey, Graph, TargetKind
from aigw.compiler.graph import Route as GraphRoute
from aigw.compiler.pipeline_graph import Pipeline

from .. import jsonio
from ..admission import check_route_allowed
from ..auth import authenticate, require_admin
from ..chat import deadline_s, new_record, overhead_header
from ..chat_request import ChatRequest
from ..errors import (
    BadRequest,
    Cancelled,
    Conflict,
    Forbidden,
    GatewayError,
    InternalError,
    NotFound,
    PipelineFailed,
    PipelineTimeout,
    StoreUnavailable,
    Unauthorized,
    quoted,
)
from ..exchange import Exchange, end_user
from ..incoming import client_gone, read_body, unless_gone
from ..live import Live
from ..paging import page_limit, whole_number
from ..policy import Facts
from ..policy_request import authorize_pipeline
from ..providers.base import ChatDelta, ChatResult, Choice, Usage
from ..sse import ChunkEncoder, completion_body
from ..store.executions import (
    ACTIVE,
    FINAL,
    Decision,
    Execution,
    ExecutionConflict,
    Status,
    StepState,
)
from ..telemetry.access import called_by
from ..telemetry.record import RequestRecord, answered_as
from ..telemetry.tracing import Span, traceparent
from ..uncancelled import uncancelled
from .service import Workflows, chat_input, may_decide, may_run

TEMPLATES_DIR = Path(__file__).parent / "templates"
# The longest POST /v1/pipelines/{name} waits for its execution (``?wait_s=``, README):
# each waiter polls the store, so one held for ever by a client long gone was not free.
MAX_WAIT_S = 300.0

log = logging.getLogger("aigw.workflows")


def workflow_routes(workflows: Workflows) -> list[BaseRoute]:
    api = _Api(workflows)
    base = "/api/v1/executions/{execution_id}"
    return [
        Route("/api/v1/templates", api.templates, methods=["GET"]),
        Route("/api/v1/workflows", api.pipelines, methods=["GET"]),
        Route("/api/v1/executions", api.create, methods=["POST"]),
        Route("/api/v1/executions", api.executions, methods=["GET"]),
        Route("/api/v1/approvals", api.approvals, methods=["GET"]),
        Route(base, api.get, methods=["GET"]),
        Route(f"{base}/steps", api.steps, methods=["GET"]),
        Route(f"{base}/events", api.events, methods=["GET"]),
        Route(f"{base}/pause", api.pause, methods=["POST"]),
        Route(f"{base}/resume", api.resume, methods=["POST"]),
        Route(f"{base}/cancel", api.cancel, methods=["POST"]),
        Route(f"{base}/approvals", api.approve, methods=["POST"]),
        Route("/api/v1/costs/summary", api.costs, methods=["GET"]),
        Route("/v1/pipelines/{name}", api.call_pipeline, methods=["POST"]),
        WebSocketRoute("/ws/executions/{execution_id}", api.follow),
    ]


class _Api:
    def __init__(self, workflows: Workflows) -> None:
        self.workflows = workflows

    def _graph(self) -> Graph:
        return self.workflows.gateway.live.graph

    async def _key(self, request: Request) -> ApiKey:
        return called_by(request.scope,
                         await authenticate(self.workflows.gateway.live, request.headers))

    def _user(self, request: Request, given: object = None) -> str | None:
        """The end user a run is for: ``given`` (the body's ``user``), else the user header
        (as a chat request reads them)."""
        if given is not None and not isinstance(given, str):
            raise BadRequest("user must be a string.", param="user")
        return end_user(given, request.headers, self._graph().settings.user_header)

    async def _authorize(
        self, request: Request, key: ApiKey, pipeline: str, user: str | None
    ) -> Facts | None:
        """Cedar's invoke check on ``Pipeline::"name"`` (a deny is a 403 naming policies);
        the facts it was asked with."""
        if pipeline not in self._graph().pipelines:
            return None  # starting it answers 404 with the known names
        return await authorize_pipeline(self.workflows.gateway.live, key, user, pipeline,
                                        request.headers)

    async def templates(self, request: Request) -> Response:
        await self._key(request)
        graph = self._graph()
        data = [_template(path, graph) for path in sorted(TEMPLATES_DIR.glob("*.yaml"))]
        return JSONResponse({"object": "list", "data": data})

    async def pipelines(self, request: Request) -> Response:
        """The pipelines this key may run (a key limited to some routes: those a route of
        its own runs)."""
        key = await self._key(request)
        graph = self._graph()
        data = [_describe(pipeline, graph) for name, pipeline in sorted(graph.pipelines.items())
                if may_run(key, graph, name)]
        return JSONResponse({"object": "list", "data": data})

    async def create(self, request: Request) -> Response:
        key = await self._key(request)
        body = await _json_object(request)
        name = body.get("pipeline") or body.get("template")
        if not isinstance(name, str) or not name:
            raise BadRequest("Name the pipeline (or template) to run: {\"pipeline\": ...}.",
                             param="pipeline")
        if "template" in body and name not in self._graph().pipelines:
            raise NotFound(f"Template '{name}' is not installed in this gateway: copy "
                           f"{name}.yaml from GET /api/v1/templates into pipelines/.",
                           param="template")
        idempotency = body.get("idempotency_key") or request.headers.get("idempotency-key")
        if idempotency is not None and not isinstance(idempotency, str):
            raise BadRequest("idempotency_key must be a string.", param="idempotency_key")
        user = self._user(request, body.get("user"))
        facts = await self._authorize(request, key, name, user)
        # A span for the request that starts the run (the client's trace, if it sent one):
        # the run's model calls, made later, are its children.
        span, context = pipeline_span(self.workflows.gateway.live, f"invoke_agent {name}",
                                      name, request.headers)
        span.set("gen_ai.operation.name", "invoke_agent")
        try:
            execution, created = await self.workflows.start_execution(
                key, name, body.get("input", {}), idempotency, user, facts, traceparent(context)
            )
            span.set("aigw.execution", execution.id)
        finally:
            span.end()
        return JSONResponse(execution.as_dict(), status_code=201 if created else 200,
                            headers={"location": f"/api/v1/executions/{execution.id}"})

    async def executions(self, request: Request) -> Response:
        key = await self._key(request)
        store = await self.workflows.store()
        limit = page_limit(request.query_params.get("limit"), 100, 1000)
        statuses = None
        if "status" in request.query_params:
            try:
                statuses = {Status(name) for name in request.query_params["status"].split(",")}
            except ValueError:
                raise BadRequest(f"status is one or more of {', '.join(Status)}, comma "
                                 "separated.", param="status") from None
        after = None
        if "after" in request.query_params:
            cursor = request.query_params["after"]
            try:
                after = await self.workflows.execution(key, cursor)
            except NotFound:
                raise BadRequest(f"Invalid value for 'after': {quoted(cursor)} is not the id "
                                 "of an execution of this key's.", param="after") from None
        # One more than the page: whether there is a next one.
        found = await store.list(key=None if key.admin else key.name,
                                 pipeline=request.query_params.get("pipeline"),
                                 statuses=statuses, limit=limit + 1, after=after)
        page = found[:limit]
        return JSONResponse({"object": "list", "data": [item.as_dict() for item in page],
                             "first_id": page[0].id if page else None,
                             "last_id": page[-1].id if page else None,
                             "has_more": len(found) > limit})

    async def get(self, request: Request) -> Response:
        execution = await self._execution(request)
        return JSONResponse(execution.as_dict())

    async def steps(self, request: Request) -> Response:
        execution = await self._execution(request)
        store = await self.workflows.store()
        states = await store.steps(execution.id)
        return JSONResponse({"object": "list", "execution": execution.id,
                             "data": [state.as_dict() for state in states]})

    async def events(self, request: Request) -> Response:
        execution = await self._execution(request)
        store = await self.workflows.store()
        after = _after(request.query_params.get("after"))
        events = await store.events(execution.id, after)
        return JSONResponse({"object": "list", "execution": execution.id,
                             "data": [event.as_dict(execution.id) for event in events]})

    async def pause(self, request: Request) -> Response:
        return await self._control(request, "pause")

    async def resume(self, request: Request) -> Response:
        return await self._control(request, "resume")

    async def cancel(self, request: Request) -> Response:
        return await self._control(request, "cancel")

    async def _control(self, request: Request, action: str) -> Response:
        key = await self._key(request)
        try:
            execution = await self.workflows.control(
                key, request.path_params["execution_id"], action
            )
        except ExecutionConflict as exc:
            raise Conflict(str(exc)) from exc
        except KeyError:
            raise NotFound(f"No execution '{request.path_params['execution_id']}'.") from None
        return JSONResponse(execution.as_dict(), status_code=202)

    async def approve(self, request: Request) -> Response:
        key = await self._key(request)
        body = await _json_object(request)  # first: what is waiting is read just before deciding
        execution, waiting = await self.workflows.waiting(key, request.path_params["execution_id"])
        verdict = body.get("decision")
        if verdict not in ("approve", "reject"):
            raise BadRequest("decision must be 'approve' or 'reject'.", param="decision")
        comment = body.get("comment")
        if comment is not None and not isinstance(comment, str):
            raise BadRequest("comment must be a string.", param="comment")
        step = body.get("step")
        if step is not None and not isinstance(step, str):
            raise BadRequest("step must be a string.", param="step")
        mine = [state for state in waiting if may_decide(key, execution, state)]
        if step is None:
            if not waiting:
                raise Conflict(f"Execution {execution.id} has no step waiting for a decision.")
            if len(mine) > 1:
                raise Conflict(f"Execution {execution.id} has {len(mine)} steps waiting for a "
                               "decision; name one with 'step'.")
            step = (mine or waiting)[0].step
        named = next((state for state in waiting if state.step == step), None)
        if named is None:  # deciding it later would skip the approvers' check
            raise Conflict(f"step '{step}' is not waiting for a decision")
        if named not in mine:
            raise Forbidden(f"key '{key.name}' may not decide step '{step}': "
                            f"{_approvers_text(named)}.")
        decision = Decision(verdict == "approve", key.name, comment, time.time())
        try:
            await self.workflows.decide(execution.id, step, decision)
        except ExecutionConflict as exc:
            raise Conflict(str(exc)) from exc
        return JSONResponse({"execution": execution.id, "step": step, "decision": verdict,
                             "by": key.name})

    async def approvals(self, request: Request) -> Response:
        """The approvals waiting for a decision this key may make (its inbox)."""
        key = await self._key(request)
        limit = page_limit(request.query_params.get("limit"), 100, 1000)
        found = await self.workflows.inbox(key, limit)
        data = [{"execution": execution.id, "pipeline": execution.pipeline, "step": state.step,
                 "started_by": execution.key, **(state.detail or {})}
                for execution, state in found]
        return JSONResponse({"object": "list", "data": data})

    async def costs(self, request: Request) -> Response:
        called_by(request.scope, require_admin(self._graph(), request.headers))
        store = await self.workflows.store()
        rows = await store.costs()
        return JSONResponse({"object": "list", "data": [row.as_dict() for row in rows],
                             "total_cost": round(sum(row.cost for row in rows), 9)})

    async def call_pipeline(self, request: Request) -> Response:
        """POST /v1/pipelines/{name}: counted in the metrics and the access log as any
        model request is (its model calls are counted on their own, with the ledger)."""
        live = self.workflows.gateway.live
        record = new_record(live, "pipelines")
        answered_as(request.scope, record.request_id)
        return await counted(live, record, self._call_pipeline(request, record))

    async def _call_pipeline(self, request: Request, record: RequestRecord) -> Response:
        key = await self._key(request)
        record.key, record.team = key.name, key.team.name if key.team else None
        name = request.path_params["name"]
        given = await _json_body(request)
        wait_s = _wait_s(request.query_params.get("wait_s"))
        user = self._user(request)
        record.user = user
        facts = await self._authorize(request, key, name, user)
        if name in self._graph().pipelines:  # declared: a bounded label, never raw input
            record.route = f"pipeline:{name}"
            self.workflows.gateway.live.telemetry.started(record)
        record.model = name
        record.span, record.trace_context = pipeline_span(
            self.workflows.gateway.live, f"invoke_agent {name}", name, request.headers)
        execution, _ = await self.workflows.start_execution(
            key, name, given, request.headers.get("idempotency-key"), user, facts,
            traceparent(record.trace_context)
        )
        # Only the wait ends when its client leaves: the execution runs on (README).
        final = await unless_gone(_final(self.workflows, record, execution.id, wait_s),
                                  partial(client_gone, request.receive), "the pipeline's answer")
        assert final is not None
        # The line's tokens stay 0, as its cost: its model calls have their own lines,
        # which bill them, and a sum over the log counted them twice.
        body = {"execution": final.id, "pipeline": name, "status": final.status.value,
                "output": final.output, "error": final.error, "cost": round(final.cost, 9),
                "usage": final.as_dict()["usage"]}
        headers = {"x-aigw-execution": final.id, "location": f"/api/v1/executions/{final.id}"}
        if final.status is Status.SUCCEEDED:
            return JSONResponse(body, headers=headers)
        if final.status in FINAL:  # OpenAI's error object, the execution's fields beside it
            error = PipelineFailed(f"Pipeline '{name}' {final.status.value}: {final.error}")
            return JSONResponse({**body, **error.body()}, status_code=error.status,
                                headers=headers)
        return JSONResponse(body, status_code=202, headers=headers)

    async def follow(self, websocket: WebSocket) -> None:
        """Send the execution's events as JSON messages, old ones first, until it ends."""
        execution_id = websocket.path_params["execution_id"]
        token = websocket.query_params.get("api_key")
        headers = Headers({"authorization": f"Bearer {token}"}) if token else websocket.headers
        try:
            key = await authenticate(self.workflows.gateway.live, headers)
            await self.workflows.execution(key, execution_id)
        except Unauthorized:
            await websocket.close(code=4401)
            return
        except NotFound:
            await websocket.close(code=4404)
            return
        # Checked before the accept: a 400 is an HTTP answer, which a socket accepted
        # can no longer give (Starlette sent it after the accept, which the server refused)
        after = _after(websocket.query_params.get("after"))
        await websocket.accept()
        # What the client sends is not read (a follower only listens), but its close is:
        # unnoticed, the loop polled the store for a socket nobody held any more.
        closed = partial(_closed, websocket)
        batches = self.workflows.follow(execution_id, after)
        execution: Execution | None = None
        try:
            while (batch := await unless_gone(anext(batches, None), closed)) is not None:
                execution, events = batch
                for event in events:
                    await websocket.send_json(event.as_dict(execution_id))
                    after = event.seq
            status = execution.status.value if execution else "gone"
            await websocket.send_json({"execution": execution_id, "seq": after,
                                       "type": "end", "step": None, "status": status})
            await websocket.close()
        except (WebSocketDisconnect, Cancelled):  # Cancelled: closed while we waited
            return
        finally:
            await batches.aclose()

    async def _execution(self, request: Request, key: ApiKey | None = None) -> Execution:
        key = key or await self._key(request)
        return await self.workflows.execution(key, request.path_params["execution_id"])


async def _final(
    workflows: Workflows, record: RequestRecord, execution_id: str, wait_s: float
) -> Execution | None:
    """The execution once final (or as it is after ``wait_s``). The wait is its steps'
    time (model calls included), counted as the upstream's: the request's overhead is
    the gateway's own around it, as for a model call."""
    record.waiting_upstream()
    try:
        return await workflows.wait_final(execution_id, wait_s)
    finally:
        record.waited_upstream()


async def counted(live: Live, record: RequestRecord, work: Awaitable[Response]) -> Response:
    """``work``'s response, ``record`` finished with its status (the access log line, the
    metrics) and the overhead header on it; a ``GatewayError`` is raised with the overhead
    header added, for the caller's handler to answer (OpenAI's shape, or JSON-RPC's). A
    stream's record (``record.stream``) is finished by the stream, as it ends."""
    try:
        response = await work
    except GatewayError as exc:
        record.status, record.error = exc.status, str(exc.code)
        if exc.key_name is not None and record.key is None:
            # Refused by name before it was signed in (a key expired, a JWT's issuer):
            # whose client sent it, as Exchange.fail has it on /v1.
            record.key, record.team = exc.key_name, exc.team_name
        exc.headers = {**exc.headers, **overhead_header(record)}
        raise
    except Exception:
        record.status, record.error = 500, "internal_error"
        raise
    else:
        record.status = response.status_code
        response.headers.update(overhead_header(record))
        return response
    finally:
        if not record.stream:
            live.telemetry.finish(record)


def pipeline_span(
    live: Live, name: str, pipeline: str, headers: Mapping[str, str]
) -> tuple[Span, Any]:
    """The span ``name`` of a request that runs ``pipeline`` (under the client's
    traceparent), and the context its execution's model calls, made later and perhaps
    by another replica, go under (kept as the execution's ``trace``)."""
    span, context = live.telemetry.tracing.request(name, headers)
    span.set("gen_ai.agent.name", pipeline)
    return span, context


async def _closed(websocket: WebSocket) -> None:
    """Returns once the client has closed ``websocket`` (its messages are dropped)."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


class PipelineChat:
    """/v1/chat/completions with a pipeline route as the model: the pipeline runs with the
    chat's input (see ``chat_input``) and its output is the assistant's answer.

    An ``Idempotency-Key`` header names the execution, as on POST /v1/pipelines/{name}: a
    retry with the same key waits for the same run. Without one, only this request can
    collect the answer, so a request that ends without it (the route's deadline passed,
    the client went away) cancels the execution it started: left running, it spent for
    nobody, and each retry of an SDK (which sends no key) started another run."""

    def __init__(self, workflows: Workflows) -> None:
        self.workflows = workflows

    async def __call__(
        self, exchange: Exchange, key: ApiKey, request: ChatRequest, route: GraphRoute,
        facts: Facts,
    ) -> Response:
        record = exchange.record  # identified (key, team, end user) by the caller
        record.route, record.model = route.name, request.model
        check_route_allowed(key, route)
        exchange.live.telemetry.started(record)
        pipeline = exchange.live.graph.pipelines[route.target]
        record.span, record.trace_context = pipeline_span(
            exchange.live, f"chat {request.model}", pipeline.name, exchange.headers)
        idempotency = exchange.headers.get("idempotency-key")
        execution, started = await self.workflows.start_execution(
            key, pipeline.name, chat_input(pipeline, request), idempotency, exchange.user,
            facts, traceparent(record.trace_context),
        )
        orphaned = started and idempotency is None
        wait_s = deadline_s(route, exchange.headers)
        try:
            final = await unless_gone(_final(self.workflows, record, execution.id, wait_s),
                                      exchange.gone, "the pipeline's answer")
        except (asyncio.CancelledError, Cancelled):
            if orphaned:
                await self._cancel(key, execution.id)
            raise
        if final is None or final.status in (Status.FAILED, Status.CANCELLED):
            error = final.error if final is not None else "it disappeared"
            raise PipelineFailed(f"Pipeline '{pipeline.name}' (execution {execution.id}) did not "
                                 f"finish: {error}")
        if final.status is not Status.SUCCEEDED:
            still = f"Pipeline '{pipeline.name}' is still {final.status.value} after " \
                    f"{wait_s:g}s"
            if orphaned and final.status in ACTIVE:
                await self._cancel(key, execution.id)
                raise PipelineTimeout(
                    f"{still}; its execution {execution.id} is cancelled, as no other "
                    "request could collect its answer (send an Idempotency-Key header to "
                    "let a retry with the same key wait for the same run)."
                )
            raise PipelineTimeout(
                f"{still}; follow it at /api/v1/executions/{execution.id}"
                + (", or send the request again with the same Idempotency-Key."
                   if idempotency is not None else ".")
            )
        output = final.output
        text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
        # The answer tells the client what its steps used; the record (the access log
        # line) does not: each step's call has its own line, ledger record and cost, so
        # summing the log counted the pipeline twice.
        usage = Usage(final.prompt_tokens, final.completion_tokens)
        created = int(time.time())
        headers = {"x-aigw-route": route.name, "x-aigw-execution": final.id,
                   "x-request-id": record.request_id, **overhead_header(record)}
        if not request.stream:
            result = ChatResult(route.name, (Choice(0, text, "stop"),), usage)
            return JSONResponse(completion_body(record.request_id, created, result),
                                headers=headers)
        encoder = ChunkEncoder(record.request_id, created, route.name, request.include_usage)

        async def deltas() -> AsyncIterator[ChatDelta]:
            yield ChatDelta(content=text)
            yield ChatDelta(finish_reason="stop")
            yield ChatDelta(usage=usage)

        return StreamingResponse(encoder.events(deltas()), media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache"})

    async def _cancel(self, key: ApiKey, execution_id: str) -> None:
        """Cancel an execution nobody can collect; shielded, as the request that started
        it may itself be cancelled."""
        with anyio.CancelScope(shield=True):  # and cancelled outright: ``uncancelled``
            await uncancelled(partial(self._cancelled, key, execution_id),
                              self.workflows.gateway.live.store.finish)

    async def _cancelled(self, key: ApiKey, execution_id: str) -> None:
        try:
            await self.workflows.control(key, execution_id, "cancel")
        except ExecutionConflict:
            pass  # it ended meanwhile
        except (StoreUnavailable, InternalError) as exc:
            log.error("could not cancel execution %s, which no request waits for: %s",
                      execution_id, exc)


def _describe(pipeline: Pipeline, graph: Graph) -> dict[str, Any]:
    return {
        "name": pipeline.name,
        "object": "workflow",
        "description": pipeline.description,
        "file": pipeline.file,
        "input": dict(pipeline.input_schema.document),
        "output_schema": dict(pipeline.output_schema.document)
        if pipeline.output_schema is not None else None,
        "steps": [
            {"name": step.name, "kind": step.kind.value, "needs": list(step.needs),
             "when": step.when.source if step.when is not None else None,
             "retries": step.retries, "timeout_s": step.timeout_s,
             "description": step.description}
            for step in pipeline.steps.values()
        ],
        "models": sorted(pipeline.models),
        "calls": sorted(pipeline.calls),
        "routes": sorted(name for name, route in graph.routes.items()
                         if route.kind is TargetKind.PIPELINE and route.target == pipeline.name),
        "endpoint": f"/v1/pipelines/{pipeline.name}",
    }


def _approvers_text(state: StepState) -> str:
    approvers = (state.detail or {}).get("approvers")
    if approvers is None:
        return "only the key that started the execution and admin keys may"
    named = [f"key '{name}'" for name in approvers.get("keys", ())]
    named += [f"team '{name}'" for name in approvers.get("teams", ())]
    return f"its approvers are {', '.join(named)} (and admin keys)"


def _template(path: Path, graph: Graph) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    try:
        data = YAML(typ="safe", pure=True).load(text)
    except YAMLError:
        data = {}
    installed = graph.pipelines.get(path.stem)
    return {
        "name": path.stem,
        "object": "template",
        "description": data.get("description") if isinstance(data, dict) else None,
        "input": data.get("input") if isinstance(data, dict) else None,
        "steps": [{"name": name, "kind": step.get("kind")}
                  for name, step in (data.get("steps") or {}).items() if isinstance(step, dict)]
        if isinstance(data, dict) else [],
        "installed": installed is not None,
        "yaml": text,
    }


async def _json_body(request: Request) -> Any:
    live: Live = request.state.live
    body = await read_body(request, live.graph.settings)
    if not body.strip():
        return {}
    try:
        # pydantic-core's parser: a body nested thousands deep is a ValueError ("recursion
        # limit exceeded"), where json.loads raised RecursionError (a 500).
        return jsonio.loads(body)
    except ValueError as exc:
        raise BadRequest(f"We could not parse the JSON body of your request: {exc}") from exc


async def _json_object(request: Request) -> dict[str, Any]:
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def _after(text: str | None) -> int:
    """``?after=``: the number of the last event the client has, 0 (none) when absent."""
    after = 0 if text is None else whole_number(text)
    if after is None:
        raise BadRequest(f"Invalid value for 'after': {quoted(text or '')} is not a whole "
                         "number.", param="after")
    return after


def _wait_s(text: str | None) -> float:
    """``?wait_s=``: seconds from 0, at most ``MAX_WAIT_S`` (a longer wait is cut to it)."""
    if text is None:
        return MAX_WAIT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise BadRequest(f"wait_s must be a number of seconds from 0 to {MAX_WAIT_S:g} (longer "
                         f"is cut to {MAX_WAIT_S:g}); got {quoted(text)}.", param="wait_s")
    return min(seconds, MAX_WAIT_S)

