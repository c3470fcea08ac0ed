"""POST /v1/chat/completions as a short list of stages over one request.

    authenticate -> parse -> resolve route -> plan (filter candidates) -> attempt -> respond

Every stage only looks things up in the graph snapshot the request started with.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response, StreamingResponse

from aigw.compiler.graph import Deployment, Graph, Route, TargetKind

from .auth import authenticate
from .chat_request import ChatRequest, parse_chat_request
from .errors import BadRequest, GatewayError, ModelNotFound, NotImplementedRoute
from .live import Live
from .providers.base import ChatCall, ChatDelta, ChatResult
from .routing.attempts import AttemptLoop, Won
from .routing.candidates import Candidate
from .sse import ChunkEncoder, completion_body, error_event

log = logging.getLogger("aigw.routing")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Plan:
    """A parsed request bound to its route, with its token estimate and deadline."""

    route: Route
    request: ChatRequest
    prompt_tokens: int
    deadline: float  # on the routing state's clock


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


def prepare(live: Live, request: ChatRequest, headers: Headers | None = None) -> Plan:
    """Route a parsed request (whatever wire format it arrived in) and fix its deadline.

    A client may shorten the route's deadline with ``x-aigw-deadline-ms``, never extend it.
    """
    route = resolve_route(live.graph, request.model)
    prompt_tokens = live.counter.count_messages(request.messages)
    budget_s = route.deadline_s
    asked = headers.get("x-aigw-deadline-ms") if headers is not None else None
    if asked is not None:
        try:
            budget_s = min(budget_s, max(0.001, float(asked) / 1000))
        except ValueError:
            raise BadRequest("x-aigw-deadline-ms must be a number of milliseconds.") from None
    return Plan(route, request, prompt_tokens, live.routing.clock() + budget_s)


def _loop(
    live: Live,
    chosen: Plan,
    attempt: Callable[[Candidate], Awaitable[T]],
    discard: Callable[[T], Awaitable[None]],
) -> AttemptLoop[T]:
    return AttemptLoop(
        live.graph, live.adapters, live.routing, chosen.route, chosen.request,
        chosen.prompt_tokens, chosen.deadline, attempt, discard,
    )


async def complete(live: Live, chosen: Plan) -> tuple[Served, ChatResult]:
    """Run the attempt loop for a whole answer."""
    request_id, created = _new_id()

    async def attempt(candidate: Candidate) -> ChatResult:
        return await candidate.adapter.complete(_call(chosen, candidate))

    loop = _loop(live, chosen, attempt, _nothing)
    try:
        won = await loop.run()
    finally:
        log.debug("route %s trace: %s", chosen.route.name, " | ".join(loop.trace.steps))
    stats = live.routing.of(won.candidate.deployment)
    now = live.routing.clock()
    stats.observe_latency((now - won.started) * 1000)
    stats.add_usage(now, won.value.usage.total_tokens)
    return _served(request_id, created, chosen, won), won.value


async def stream(live: Live, chosen: Plan) -> tuple[Served, AsyncIterator[ChatDelta]]:
    """Open a stream, failing over only before its first delta: nothing has reached the
    client yet. After that, a failure is raised from the iterator."""
    request_id, created = _new_id()
    Opened = tuple[ChatDelta | None, AsyncIterator[ChatDelta]]

    async def attempt(candidate: Candidate) -> Opened:
        deltas = candidate.adapter.stream(_call(chosen, candidate))
        try:
            return await anext(deltas), deltas
        except StopAsyncIteration:
            return None, deltas

    async def discard(opened: Opened) -> None:
        await _close(opened[1])

    loop = _loop(live, chosen, attempt, discard)
    try:
        won = await loop.run()
    finally:
        log.debug("route %s trace: %s", chosen.route.name, " | ".join(loop.trace.steps))
    stats = live.routing.of(won.candidate.deployment)
    stats.observe_ttft((live.routing.clock() - won.started) * 1000)
    first, rest = won.value
    served = _served(request_id, created, chosen, won)
    return served, _measured(live, won.candidate, won.started, first, rest)


async def chat_completions(live: Live, headers: Headers, body: bytes) -> Response:
    """POST /v1/chat/completions in OpenAI's wire format."""
    authenticate(live.graph, headers)
    request = parse_chat_request(body)
    chosen = prepare(live, request, headers)
    if not request.stream:
        served, result = await complete(live, chosen)
        return JSONResponse(
            completion_body(served.request_id, served.created, result), headers=served.headers()
        )
    served, deltas = await stream(live, chosen)
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


def _served(request_id: str, created: int, chosen: Plan, won: Won[Any]) -> Served:
    return Served(request_id, created, chosen.route, won.candidate.deployment, won.attempts)


def _call(chosen: Plan, candidate: Candidate) -> ChatCall:
    return ChatCall(
        chosen.request, candidate.deployment, chosen.prompt_tokens, candidate.max_output_tokens
    )


async def _nothing(_value: object) -> None:
    return None


async def _close(deltas: AsyncIterator[ChatDelta]) -> None:
    closer = getattr(deltas, "aclose", None)
    if closer is not None:
        await closer()


async def _measured(
    live: Live,
    candidate: Candidate,
    started: float,
    first: ChatDelta | None,
    rest: AsyncIterator[ChatDelta],
) -> AsyncIterator[ChatDelta]:
    """The stream as the client sees it, counted in-flight to its end, with its latency."""
    stats = live.routing.of(candidate.deployment)
    stats.in_flight += 1
    try:
        if first is not None:
            yield first
        async for delta in rest:
            if delta.usage is not None:
                stats.add_usage(live.routing.clock(), delta.usage.total_tokens)
            yield delta
        stats.observe_latency((live.routing.clock() - started) * 1000)
    finally:
        stats.in_flight -= 1
        await _close(rest)


async def _events(encoder: ChunkEncoder, deltas: AsyncIterator[ChatDelta]) -> AsyncIterator[bytes]:
    try:
        async for event in encoder.events(deltas):
            yield event
    except GatewayError as exc:  # after the status line: the error goes in the stream
        yield error_event(exc.body())
