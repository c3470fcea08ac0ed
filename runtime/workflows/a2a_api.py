"""Pipelines as A2A agents: an agent card and a JSON-RPC endpoint (A2A 1.0, and 0.3) per
pipeline.

    GET  /a2a/{pipeline}/.well-known/agent-card.json   its card: one skill, the pipeline
    GET  /a2a/{pipeline}/.well-known/agent.json        the same, where 0.2's clients look
    POST /a2a/{pipeline}                               SendMessage, GetTask, CancelTask;
                                                       SendStreamingMessage and
                                                       SubscribeToTask (SSE, a2a_stream);
                                                       0.3's message/send, tasks/get, ...
                                                       (a2a_v03)

Each pipeline is an agent with a base URL of its own, ``/a2a/{pipeline}``, and its card
where A2A puts one under a base URL (the a2a-sdk's ``A2ACardResolver(client,
base_url)`` reads ``{base_url}/.well-known/agent-card.json``; before 0.3, and Google
ADK's, ``agent.json``: a 0.2 client then calls it as a 0.3 one does, without
``A2A-Version``, which 0.2 predates, and with 0.3's methods). A task is an execution,
and has its id: SendMessage starts one (the message's ``messageId`` is its idempotency
key, so a resent message gets the same task) with the message's data part as input, or
its text (a JSON object as is, else the input's one string field, else ``{"prompt":
text}``), and waits for it as ``POST /v1/pipelines`` does unless ``returnImmediately``.
An execution waiting for an approval is ``input-required`` (decided with POST
/api/v1/executions/{id}/approvals); one that succeeded is ``completed``, its output
the artifact ``output``. Callers authenticate with aigw API keys (Bearer), and Cedar's
invoke check on ``Pipeline::"name"`` is made as for ``POST /v1/pipelines/{name}``;
GetTask and CancelTask see only the key's own executions (an admin key's: all).
SendStreamingMessage starts one as SendMessage does and streams its task's updates;
SubscribeToTask streams those of a task GetTask may read, unless it has ended (A2A 1.0
refuses that: UnsupportedOperationError). A card is refused as A2A's HTTP+JSON binding
refuses a call (no key: 401, a pipeline the key may not run or that does not exist:
404), with google.rpc.Status's error object, not OpenAI's, as it is read by A2A clients.
A 0.3 call is served by the 1.0 method it maps to (a2a_v03: its params lowered, its
result raised into 0.3's shapes), every check the same; the card lists a 0.3 interface
at the same URL beside 1.0's, and 0.3's own fields for its clients. Push notifications
are refused in both (PushNotificationNotSupportedError; the card says so too).

Each POST is counted as ``POST /v1/pipelines/{name}`` is: an access log line (endpoint
``a2a``), the request metrics of route ``pipeline:{name}``, and an ``invoke_agent``
span its execution's model calls go under. A call the gateway refuses (no key: 401,
policy: 403, no such pipeline: 404, ...) is answered with a JSON-RPC error object at
that HTTP status, its OpenAI-style type and code in the error's ``data``, as the MCP
proxy answers, so an A2A client shows why; a stream is refused so, before it starts, and
its line is written when it ends.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from aigw.compiler.graph import ApiKey, Graph

from ..auth import authenticate
from ..chat import new_record
from ..errors import BadRequest, Conflict, GatewayError, NotFound
from ..exchange import end_user
from ..incoming import read_body
from ..jsonio import loads
from ..policy_request import authorize_pipeline
from ..store.executions import FINAL, Execution, ExecutionConflict, Status
from ..telemetry.record import RequestRecord, answered_as
from ..telemetry.tracing import traceparent
from . import a2a_v03
from .a2a_stream import STREAM_S, task_stream
from .a2a_wire import (
    INTERNAL,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    PUSH_NOT_SUPPORTED,
    TASK_NOT_CANCELABLE,
    TASK_NOT_FOUND,
    UNSUPPORTED_OPERATION,
    RpcError,
    task,
)
from .api import counted, pipeline_span
from .service import Workflows, may_run

PROTOCOL_VERSION = "1.0"
# The push notification config methods (1.0's; 0.3's are mapped to them) and what
# refuses them, and a message that asks for one: the card says pushNotifications: false.
_PUSH_CONFIG = frozenset({
    "CreateTaskPushNotificationConfig", "GetTaskPushNotificationConfig",
    "ListTaskPushNotificationConfigs", "DeleteTaskPushNotificationConfig"})
_NO_PUSH = ("push notifications are not supported; SendStreamingMessage (message/stream) "
            "streams a task's updates, GetTask (tasks/get) reads it")
# How long SendMessage waits for its task to settle, as POST /v1/pipelines waits (and a
# stream is open); and CancelTask for the runner holding the execution to stop it.
SEND_WAIT_S = STREAM_S
CANCEL_WAIT_S = 10.0

# google.rpc's status names of the HTTP statuses a card's GET may be refused with.
_RPC_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
               404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}


def a2a_routes(workflows: Workflows) -> list[BaseRoute]:
    api = _A2a(workflows)
    return [
        Route("/a2a/{name}/.well-known/agent-card.json", api.card, methods=["GET"]),
        Route("/a2a/{name}/.well-known/agent.json", api.card, methods=["GET"]),
        Route("/a2a/{name}", api.rpc, methods=["POST"]),
    ]


class _A2a:
    def __init__(self, workflows: Workflows) -> None:
        self.workflows = workflows

    def _graph(self) -> Graph:
        return self.workflows.gateway.live.graph

    async def _pipeline(self, request: Request) -> tuple[ApiKey, str]:
        """The caller's key (else a 401) and the pipeline the path names, if that key may
        run it (else a 404, as for a pipeline that does not exist)."""
        key = await authenticate(self.workflows.gateway.live, request.headers)
        name: str = request.path_params["name"]
        if name not in self._graph().pipelines or not may_run(key, self._graph(), name):
            raise NotFound(f"No pipeline named '{name}'.")
        return key, name

    async def card(self, request: Request) -> Response:
        try:
            _key, name = await self._pipeline(request)
        except GatewayError as exc:
            return card_error(exc)
        pipeline = self._graph().pipelines[name]
        url = f"{str(request.base_url).rstrip('/')}/a2a/{name}"
        about = pipeline.description or f"Runs the aigw pipeline '{name}'."
        return JSONResponse({
            "name": name,
            "description": about,
            # Both versions at one endpoint (A2A 1.0, 3.6.2), 1.0 preferred: first.
            "supportedInterfaces": [
                {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": version}
                for version in (PROTOCOL_VERSION, a2a_v03.PROTOCOL_VERSION)],
            # 0.3's clients read its own fields (1.0's ignore them): the endpoint, its
            # transport and version, and the security scheme in 0.3's form beside 1.0's.
            "url": url, "preferredTransport": "JSONRPC",
            "protocolVersion": a2a_v03.PROTOCOL_VERSION,
            "version": self._graph().fingerprint[:12],
            # No extended card: GetExtendedAgentCard is refused, as 1.0 (3.3.4) and 0.3
            # (supportsAuthenticatedExtendedCard) say for a card that says so.
            "capabilities": {"streaming": True, "pushNotifications": False,
                             "extendedAgentCard": False},
            "supportsAuthenticatedExtendedCard": False,
            "securitySchemes": {"aigw": {"httpAuthSecurityScheme": {"scheme": "Bearer"},
                                         "type": "http", "scheme": "bearer"}},
            "securityRequirements": [{"schemes": {"aigw": {"list": []}}}],
            "security": [{"aigw": []}],
            "defaultInputModes": ["text/plain", "application/json"],
            "defaultOutputModes": ["text/plain", "application/json"],
            "skills": [{"id": name, "name": name, "description": about, "tags": ["pipeline"]}],
        })

    async def rpc(self, request: Request) -> Response:
        """POST /a2a/{name}, logged, counted and traced (see the module's docstring)."""
        live = self.workflows.gateway.live
        record = new_record(live, "a2a")
        answered_as(request.scope, record.request_id)
        call_id: list[Any] = [None]  # the request's id, once its body is read
        try:
            return await counted(live, record, self._rpc(request, record, call_id))
        except GatewayError as exc:  # as JSON-RPC's error object, at its HTTP status
            error = {"code": INTERNAL if exc.status >= 500 else INVALID_REQUEST,
                     "message": exc.message,
                     "data": {"type": exc.error_type, "code": exc.shown_code}}
            return JSONResponse({"jsonrpc": "2.0", "id": call_id[0], "error": error},
                                status_code=exc.status, headers=exc.headers)

    async def _rpc(self, request: Request, record: RequestRecord, call_id: list[Any]
                   ) -> Response:
        key, name = await self._pipeline(request)
        record.key, record.team = key.name, key.team.name if key.team else None
        record.route, record.model = f"pipeline:{name}", name  # a declared one: bounded
        live = self.workflows.gateway.live
        live.telemetry.started(record)
        record.span, record.trace_context = pipeline_span(live, f"invoke_agent {name}", name,
                                                          request.headers)
        method, legacy = "", False
        try:
            # Under max_request_bytes and body_read_timeout_s as every endpoint's body (it
            # was read whole, however large, however slowly), and parsed as theirs: a
            # lone surrogate in a text part reached the store's UTF-8 (a 500).
            raw = await read_body(request, live.graph.settings)
            try:
                body = loads(raw)
            except ValueError as exc:
                raise RpcError(PARSE_ERROR, f"the body is not JSON: {exc}") from exc
            if not isinstance(body, dict) or body.get("jsonrpc") != "2.0" \
                    or not isinstance(body.get("method"), str):
                raise RpcError(INVALID_REQUEST, "not a JSON-RPC 2.0 request")
            call_id[0] = body.get("id")
            params = body.get("params") or {}
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params must be an object")
            # A2A 0.3's calls are served as 1.0's, translated here and only here.
            method, legacy = a2a_v03.negotiated(body["method"], _version(request))
            if legacy:
                params = a2a_v03.params(params)
            if method in ("SendStreamingMessage", "SubscribeToTask"):
                execution = await self._start(request, record, key, name, params) \
                    if method == "SendStreamingMessage" \
                    else await self._subscribed(key, name, params)
                return await task_stream(self.workflows, live, record, call_id[0], execution,
                                         a2a_v03.as_v03 if legacy else a2a_v03.as_v10)
            result = await self._call(request, record, key, name, method, params)
            if legacy:
                result = a2a_v03.result(result)
        except RpcError as exc:
            code = a2a_v03.error_code(method, exc.code) if legacy else exc.code
            record.error = str(code)  # the JSON-RPC code, as the client got it
            return JSONResponse({"jsonrpc": "2.0", "id": call_id[0],
                                 "error": {"code": code, "message": exc.message}})
        return JSONResponse({"jsonrpc": "2.0", "id": call_id[0], "result": result})

    async def _call(self, request: Request, record: RequestRecord, key: ApiKey, name: str,
                    method: str, params: dict[str, Any]) -> dict[str, Any]:
        if method == "SendMessage":
            return await self._send(request, record, key, name, params)
        if method in _PUSH_CONFIG:
            raise RpcError(PUSH_NOT_SUPPORTED, _NO_PUSH)
        if method == "GetExtendedAgentCard":
            raise RpcError(UNSUPPORTED_OPERATION, "this agent has no extended card "
                           "(capabilities.extendedAgentCard: false): its card at "
                           ".well-known/agent-card.json is the whole of it")
        if method not in ("GetTask", "CancelTask"):
            raise RpcError(METHOD_NOT_FOUND, f"method '{method}' is not supported; this "
                           "agent takes SendMessage, SendStreamingMessage, GetTask, "
                           "CancelTask and SubscribeToTask (A2A 1.0), or message/send, "
                           "message/stream, tasks/get, tasks/cancel and tasks/resubscribe "
                           "(A2A 0.3)")
        execution = await self._task(key, name, params)
        if method == "CancelTask":
            try:
                execution = await self.workflows.control(key, execution.id, "cancel")
            except (NotFound, KeyError):  # removed meanwhile
                raise RpcError(TASK_NOT_FOUND, f"no task '{execution.id}'") from None
            except ExecutionConflict as exc:  # it has ended
                raise RpcError(TASK_NOT_CANCELABLE, str(exc)) from exc
            execution = await self._settled(execution, CANCEL_WAIT_S, FINAL)
        return task(execution)

    async def _task(self, key: ApiKey, name: str, params: dict[str, Any]) -> Execution:
        """The execution ``params.id`` names, if it is this pipeline's and ``key`` may see
        it (its own, or any for an admin key); else TaskNotFound, as for none."""
        task_id = params.get("id")
        try:
            execution = await self.workflows.execution(key, str(task_id))
        except NotFound:
            raise RpcError(TASK_NOT_FOUND, f"no task '{task_id}'") from None
        if execution.pipeline != name:
            raise RpcError(TASK_NOT_FOUND, f"no task '{task_id}'")
        return execution

    async def _subscribed(self, key: ApiKey, name: str, params: dict[str, Any]) -> Execution:
        """The task SubscribeToTask streams: one that has ended is refused, as A2A 1.0
        requires (UnsupportedOperationError; GetTask reads it)."""
        execution = await self._task(key, name, params)
        if execution.status in FINAL:
            raise RpcError(UNSUPPORTED_OPERATION,
                           f"task '{execution.id}' has already {execution.status.value}; "
                           "GetTask reads it")
        return execution

    async def _send(self, request: Request, record: RequestRecord, key: ApiKey, name: str,
                    params: dict[str, Any]) -> dict[str, Any]:
        execution = await self._start(request, record, key, name, params)
        configuration = params.get("configuration")
        if not (isinstance(configuration, dict) and configuration.get("returnImmediately")):
            record.waiting_upstream()  # its steps' time, as POST /v1/pipelines counts it
            try:
                execution = await self._settled(execution, SEND_WAIT_S,
                                                FINAL | {Status.PAUSED, Status.WAITING})
            finally:
                record.waited_upstream()
        return {"task": task(execution)}

    async def _start(self, request: Request, record: RequestRecord, key: ApiKey, name: str,
                     params: dict[str, Any]) -> Execution:
        """The execution the message starts (or started, for a ``messageId`` sent before),
        as POST /v1/pipelines/{name} starts one: Cedar's invoke check, the key's limits,
        the input schema."""
        message = params.get("message")
        if not isinstance(message, dict) or not isinstance(message.get("parts"), list):
            raise RpcError(INVALID_PARAMS, "params.message with parts is required")
        configuration = params.get("configuration")
        if isinstance(configuration, dict) \
                and configuration.get("taskPushNotificationConfig") is not None:
            raise RpcError(PUSH_NOT_SUPPORTED, _NO_PUSH)
        user = end_user(None, request.headers, self._graph().settings.user_header)
        record.user = user
        facts = await authorize_pipeline(self.workflows.gateway.live, key, user, name,
                                         request.headers)
        given = self._input(name, message["parts"])
        message_id = message.get("messageId")
        try:
            execution, _ = await self.workflows.start_execution(
                key, name, given, str(message_id) if message_id else None, user, facts,
                traceparent(record.trace_context))
        except (BadRequest, Conflict) as exc:  # the input, or a messageId used before
            raise RpcError(INVALID_PARAMS, exc.message) from exc
        return execution

    def _input(self, name: str, parts: list[Any]) -> Any:
        data = [part["data"] for part in parts if isinstance(part, dict) and "data" in part]
        if data:
            return data[0]
        text = "\n".join(str(part["text"]) for part in parts
                         if isinstance(part, dict) and "text" in part)
        try:  # jsonio's: a text part of nested brackets made json's RecursionError (a 500)
            parsed = loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
        field = self._graph().pipelines[name].chat_field
        return {field: text} if field is not None else {"prompt": text}

    async def _settled(self, execution: Execution, timeout: float,
                       until: frozenset[Status]) -> Execution:
        """The execution once its status is one of ``until`` (or after ``timeout``)."""
        store = await self.workflows.store()
        deadline = self.workflows.clock() + timeout
        while execution.status not in until:
            remaining = deadline - self.workflows.clock()
            if remaining <= 0:
                break
            await self.workflows.wait(execution.id, min(self.workflows.poll_s, remaining))
            execution = await store.get(execution.id) or execution
        return execution


def _version(request: Request) -> str | None:
    """The A2A version the call names: its ``A2A-Version`` header, else the query
    parameter A2A 1.0 allows in its place."""
    return request.headers.get("a2a-version") or request.query_params.get("A2A-Version")


def card_error(exc: GatewayError) -> Response:
    """A card the gateway will not give, as A2A answers a plain HTTP call (its HTTP+JSON
    binding's error, google.rpc.Status: ``{"error": {"code", "status", "message",
    "details"}}``) at the same status. A client's card resolver (the a2a-sdk's
    ``A2ACardResolver``) goes by the status; a 401 says, as RFC 6750 asks, the scheme the
    card would have named (Bearer)."""
    headers = dict(exc.headers)
    if exc.status == 401:
        headers["www-authenticate"] = "Bearer"
    status = _RPC_STATUS.get(exc.status, "INTERNAL" if exc.status >= 500 else "UNKNOWN")
    details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": (exc.shown_code or exc.error_type).upper(), "domain": "aigw"}]
    return JSONResponse({"error": {"code": exc.status, "status": status,
                                   "message": exc.message, "details": details}},
                        status_code=exc.status, headers=headers)
