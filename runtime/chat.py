"""POST /v1/chat/completions as a short list of stages over one request.

    authenticate -> parse -> resolve route -> plan (filter candidates) -> attempt -> respond

Every stage only looks things up in the graph snapshot the request started with.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response, StreamingResponse

from aigw.compiler.graph import Deployment, Graph, Route, TargetKind

from .auth import authenticate
from .chat_request import ChatRequest, parse_chat_request
from .errors import (
    ContextWindowExceeded,
    GatewayError,
    ModelNotFound,
    NoDeploymentAvailable,
    NotImplementedRoute,
    UpstreamError,
)
from .live import Live
from .providers.base import ChatAdapter, ChatCall, ChatDelta, ChatResult
from .sse import ChunkEncoder, completion_body, error_event


@dataclass(frozen=True, slots=True)
class Attempt:
    """A deployment that can take this request, with its adapter and output cap."""

    deployment: Deployment
    adapter: ChatAdapter
    max_output_tokens: int


@dataclass(frozen=True, slots=True)
class Plan:
    route: Route
    request: ChatRequest
    prompt_tokens: int
    attempts: tuple[Attempt, ...]


def resolve_route(graph: Graph, model: str) -> Route:
    route = graph.routes.get(model)
    if route is None:
        raise ModelNotFound(
            f"The model '{model}' does not exist or you do not have access to it.", param="model"
        )
    if route.kind is TargetKind.PIPELINE:
        raise NotImplementedRoute(
            f"'{model}' is a pipeline route; this version of aigw does not serve pipelines yet.",
            param="model",
        )
    return route


def required_capabilities(request: ChatRequest) -> frozenset[str]:
    needs = set()
    if request.stream:
        needs.add("streaming")
    if request.tools:
        needs.add("tools")
    response_format = getattr(request, "response_format", None)
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        needs.add("json_schema")
    for message in request.messages:
        if isinstance(message.content, list) and any(
            part.type in ("image_url", "input_image") for part in message.content
        ):
            needs.add("vision")
    return frozenset(needs)


def plan(live: Live, route: Route, request: ChatRequest, prompt_tokens: int) -> Plan:
    """Drop candidates that cannot serve this request before any upstream call, saying why."""
    needs = required_capabilities(request)
    attempts: list[Attempt] = []
    unavailable: list[str] = []
    unfit: list[str] = []
    for deployment in route.candidates:
        adapter = live.adapters.get(deployment.provider.name)
        if deployment.kind != "chat":
            unfit.append(f"{deployment.name} is an embeddings model")
            continue
        if adapter is None:
            reason = deployment.provider.disabled_reason or "provider has no adapter"
            unavailable.append(f"{deployment.name}: {reason}")
            continue
        missing = needs - deployment.capabilities
        if missing:
            unfit.append(f"{deployment.name} lacks {', '.join(sorted(missing))}")
            continue
        room = deployment.context_window - prompt_tokens
        wanted = request.output_limit
        if room < 1 or (wanted is not None and wanted > min(room, deployment.max_output_tokens)):
            unfit.append(
                f"{deployment.name} holds {deployment.context_window} tokens "
                f"(at most {deployment.max_output_tokens} out); the request needs "
                f"{prompt_tokens} in + {wanted or 1} out"
            )
            continue
        cap = min(wanted or deployment.max_output_tokens, deployment.max_output_tokens, room)
        attempts.append(Attempt(deployment, adapter, cap))
    if not attempts:
        if unfit:
            raise ContextWindowExceeded(
                f"No deployment of '{route.name}' can serve this request: {'; '.join(unfit)}.",
                param="messages",
            )
        raise NoDeploymentAvailable(
            f"No deployment of '{route.name}' is available: {'; '.join(unavailable)}."
        )
    return Plan(route, request, prompt_tokens, tuple(attempts))


@dataclass(frozen=True, slots=True)
class Served:
    """Which deployment answered, after how many attempts: for headers, logs and billing."""

    request_id: str
    created: int
    route: Route
    deployment: Deployment
    attempts: int

    def headers(self) -> dict[str, str]:
        return {
            "x-aigw-route": self.route.name,
            "x-aigw-deployment": self.deployment.name,
            "x-aigw-attempts": str(self.attempts),
            "x-request-id": self.request_id,
        }


def prepare(live: Live, request: ChatRequest) -> Plan:
    """Route and plan a parsed request (whatever wire format it arrived in)."""
    route = resolve_route(live.graph, request.model)
    prompt_tokens = live.counter.count_messages(request.messages)
    return plan(live, route, request, prompt_tokens)


async def complete(chosen: Plan) -> tuple[Served, ChatResult]:
    """Try each planned attempt in order until one answers."""
    request_id, created = _new_id()
    last_error: UpstreamError | None = None
    for number, attempt in enumerate(chosen.attempts, start=1):
        try:
            result = await attempt.adapter.complete(_call(chosen, attempt))
        except UpstreamError as exc:
            last_error = exc
            if not exc.retryable:
                raise
            continue
        return Served(request_id, created, chosen.route, attempt.deployment, number), result
    assert last_error is not None
    raise last_error


async def stream(chosen: Plan) -> tuple[Served, AsyncIterator[ChatDelta]]:
    """Open a stream, failing over only before its first delta: nothing has reached the
    client yet. After that, a failure is raised from the iterator."""
    request_id, created = _new_id()
    last_error: UpstreamError | None = None
    for number, attempt in enumerate(chosen.attempts, start=1):
        deltas = attempt.adapter.stream(_call(chosen, attempt))
        try:
            first: ChatDelta | None = await anext(deltas)
        except UpstreamError as exc:
            last_error = exc
            if not exc.retryable:
                raise
            continue
        except StopAsyncIteration:
            first = None
        served = Served(request_id, created, chosen.route, attempt.deployment, number)
        return served, _prepend(first, deltas)
    assert last_error is not None
    raise last_error


async def chat_completions(live: Live, headers: Headers, body: bytes) -> Response:
    """POST /v1/chat/completions in OpenAI's wire format."""
    authenticate(live.graph, headers)
    request = parse_chat_request(body)
    chosen = prepare(live, request)
    if not request.stream:
        served, result = await complete(chosen)
        return JSONResponse(
            completion_body(served.request_id, served.created, result), headers=served.headers()
        )
    served, deltas = await stream(chosen)
    encoder = ChunkEncoder(
        served.request_id, served.created, served.deployment.model, request.include_usage
    )
    return StreamingResponse(
        _events(encoder, deltas),
        media_type="text/event-stream",
        headers={**served.headers(), "cache-control": "no-cache"},
    )


def _new_id() -> tuple[str, int]:
    return f"chatcmpl-{uuid.uuid4().hex}", int(time.time())


def _call(chosen: Plan, attempt: Attempt) -> ChatCall:
    return ChatCall(
        chosen.request, attempt.deployment, chosen.prompt_tokens, attempt.max_output_tokens
    )


async def _prepend(
    first: ChatDelta | None, rest: AsyncIterator[ChatDelta]
) -> AsyncIterator[ChatDelta]:
    if first is not None:
        yield first
    async for delta in rest:
        yield delta


async def _events(encoder: ChunkEncoder, deltas: AsyncIterator[ChatDelta]) -> AsyncIterator[bytes]:
    try:
        async for event in encoder.events(deltas):
            yield event
    except GatewayError as exc:  # after the status line: the error goes in the stream
        yield error_event(exc.body())
