"""POST /v1/chat/completions as a short list of stages over one request.

    authenticate -> parse -> resolve route -> plan (filter candidates) -> attempt -> respond

Every stage only looks things up in the graph snapshot the request started with.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import anyio
from starlette.datastructures import Headers
from starlette.responses import Response

from aigw.compiler.graph import ApiKey, Deployment, Graph, Route, TargetKind

from .admission import DeploymentQuotas, Hold, check_route_allowed, cut_short
from .chat_request import ChatRequest, chat_request_from, parse_chat_request
from .errors import BadRequest, GatewayError, ModelNotFound, NotImplementedRoute, UpstreamError
from .jsonio import JSONBody
from .live import Live
from .policy import Facts, RequestGate
from .policy_request import authorize_route
from .providers.base import (
    ChatCall,
    ChatDelta,
    ChatResult,
    ToldSoFar,
    Usage,
    close_deltas,
    unreported_usage,
)
from .providers.guard import SentOutput
from .providers.registry import COMPLETES_TEXT
from .routing.attempts import AttemptLoop, Won, stream_ended
from .routing.candidates import Candidate, ChatAsk
from .sse import ChunkEncoder, completion_body, error_event, settled_stream
from .telemetry.record import RequestRecord, UpstreamFailure, label_answer, operation_name
from .telemetry.tracing import (
    CACHE_READ_TOKENS,
    CACHE_WRITE_TOKENS,
    NO_SPAN,
    PROVIDER_NAMES,
    Span,
)
from .tokens import STREAMED_AUDIO_FORMAT
from .uncancelled import uncancelled
from .upstream import UPSTREAM_ID_HEADER

if TYPE_CHECKING:
    from .exchange import Exchange

log = logging.getLogger("aigw.routing")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Plan:
    """A parsed request bound to its route, with its token estimate and deadline."""

    route: Route
    request: ChatRequest
    prompt_tokens: int
    deadline: float  # on the routing state's clock
    gate: RequestGate | None = None  # Cedar: who asks, in what context (None: unchecked)

    def with_gate(self, gate: RequestGate) -> Plan:
        return Plan(self.route, self.request, self.prompt_tokens, self.deadline, gate)


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


def deadline_s(route: Route, headers: Headers | None) -> float:
    """The route's deadline, which a client may shorten with ``x-aigw-deadline-ms``
    (never extend): a chat's, and a pipeline route's wait for its execution."""
    asked = headers.get("x-aigw-deadline-ms") if headers is not None else None
    if asked is None:
        return route.deadline_s
    try:
        return min(route.deadline_s, max(0.001, float(asked) / 1000))
    except ValueError:
        raise BadRequest("x-aigw-deadline-ms must be a number of milliseconds.") from None


def prepare(
    live: Live,
    request: ChatRequest,
    headers: Headers | None = None,
    record: RequestRecord | None = None,
    route: Route | None = None,
) -> Plan:
    """Route a parsed request (whatever wire format it arrived in) and fix its deadline.

    A client may shorten the route's deadline with ``x-aigw-deadline-ms``, never extend it.
    ``route`` serves the request instead of the route its model names (a pipeline's call
    to a group or deployment that apps cannot call by name).
    """
    route = route or resolve_route(live.graph, request.model)
    prompt_tokens = live.counter.count_request(request)
    budget_s = deadline_s(route, headers)
    if record is not None:
        record.route = route.name
        record.model = request.model
        record.stream = request.stream
        record.prompt_tokens = prompt_tokens
        live.telemetry.started(record)
        if headers is not None and live.telemetry.tracing.enabled:
            record.span, record.trace_context = live.telemetry.tracing.request(
                f"{operation_name(record)} {request.model}", headers
            )
    return Plan(route, request, prompt_tokens, live.routing.clock() + budget_s)


def new_record(live: Live, endpoint: str) -> RequestRecord:
    # 128 random bits as 32 hex digits, as uuid4().hex gives, without building a UUID
    return RequestRecord(f"chatcmpl-{os.urandom(16).hex()}", endpoint, live.graph.fingerprint)


def _loop(
    live: Live,
    chosen: Plan,
    attempt: Callable[[Candidate], Awaitable[T]],
    discard: Callable[[Won[T]], Awaitable[None]],
    *,
    streaming: bool = False,
) -> AttemptLoop[T]:
    ask = ChatAsk(live.adapters, chosen.route, chosen.request, chosen.prompt_tokens)
    return AttemptLoop(live.graph, live.routing, chosen.route, ask, chosen.deadline, attempt,
                       discard, gate=chosen.gate, streaming=streaming,
                       finish=live.store.finish)


async def run_attempts(live: Live, route: Route, loop: AttemptLoop[T],
                       record: RequestRecord) -> Won[T]:
    """Run ``loop`` and write down in ``record`` what it tried and who served: a chat's
    and an embeddings call's alike."""
    try:
        won = await loop.run()
    except asyncio.CancelledError:
        record.cut_mid_call = loop.trace.cut  # counted on the call it cut, if one was out
        raise
    finally:
        if loop.trace.keep:  # the debug log is on
            log.debug("route %s trace: %s", route.name, " | ".join(loop.trace.steps))
        record.attempts = loop.trace.attempts
        record.backoff_s = loop.trace.backoff_s
        record.failures.extend(UpstreamFailure(*failure) for failure in loop.trace.failures)
        # Until a call answers (which names its own): the last failed one's, for a ticket.
        record.upstream_request_id = loop.trace.upstream_request_id
    deployment = won.candidate.deployment
    record.deployment = deployment.name
    record.provider = deployment.provider.name
    record.provider_type = deployment.provider.type
    record.policy_ids = loop.trace.policies.get(deployment.name, ())
    record.fallback_hop = won.hop
    return won


def _bill(record: RequestRecord, deployment: Deployment, usage: Usage) -> None:
    record.prompt_tokens = usage.prompt_tokens
    record.completion_tokens = usage.completion_tokens
    record.cached_tokens = usage.cached_tokens
    record.cache_write_tokens = usage.cache_creation_tokens
    record.audio_input_tokens = usage.audio_input_tokens
    record.audio_output_tokens = usage.audio_output_tokens
    record.cost = usage.cost(deployment.price)


async def complete(
    live: Live, chosen: Plan, record: RequestRecord | None = None
) -> tuple[Served, ChatResult]:
    """Run the attempt loop for a whole answer."""
    record = record or new_record(live, "chat")
    quotas = DeploymentQuotas(live.store, record)

    def attempt(candidate: Candidate) -> Awaitable[ChatResult]:
        # call_upstream's coroutine itself, not one awaiting it: a frame fewer for each
        # of the call's resumptions to pass through
        return call_upstream(
            live, record, quotas, candidate, _worst_tokens(chosen, candidate),
            chosen.prompt_tokens,
            partial(candidate.adapter.complete, _call(chosen, candidate)),
            _operation(chosen, candidate), _noted, partial(_unanswered, chosen, candidate))

    won = await run_attempts(live, chosen.route,
                             _loop(live, chosen, attempt, partial(bill_loser, record)), record)
    bill_answer(live, record, won)
    record.response_model = won.value.model
    record.upstream_request_id = won.value.upstream_request_id
    record.finish_reasons = tuple([choice.finish_reason for choice in won.value.choices])
    return _served(record, chosen, won), won.value


class Answer(Protocol):
    """A whole answer from an upstream: a chat's (``ChatResult``), an embeddings call's."""

    @property
    def usage(self) -> Usage: ...


A = TypeVar("A", bound=Answer)


async def call_upstream(
    live: Live, record: RequestRecord, quotas: DeploymentQuotas, candidate: Candidate,
    hold_tokens: int, prompt_tokens: int, call: Callable[[], Awaitable[A]], operation: str,
    noted: Callable[[Span, A], None], cut: Usage | Callable[[], Usage] | None = None,
    holds: dict[str, Hold | None] | None = None,
) -> A:
    """One attempt at a whole answer from ``candidate`` (``call``, GenAI's ``operation``:
    chat, embeddings): its deployment's own rpm/tpm held for ``hold_tokens`` (over it, the
    member is skipped, DeploymentAtQuota, and no call goes out) and settled with what the
    answer used; if the call failed its quota is given back, and if it was cut short
    (cancelled) it is billed ``cut`` (or what it returns, asked only then), else an
    estimate from ``prompt_tokens`` (``quotas.failed``); the upstream's time counted as
    such, not as the gateway's overhead; the attempt's span, which ``noted`` labels with
    the answer.
    ``holds``: the answer is a stream, whose usage is known at its end: its hold is kept
    there (by deployment) for the stream to settle, not settled with the estimate."""
    hold = await quotas.take(candidate.deployment, hold_tokens)
    record.waiting_upstream()
    with attempt_span(live, record, candidate, operation=operation) as span:
        try:
            result = await call()
        except BaseException as exc:  # its quota given back, or a call cut short billed
            with anyio.CancelScope(shield=True):  # and cancelled outright: ``uncancelled``
                await uncancelled(partial(quotas.failed, hold, candidate.deployment,
                                          prompt_tokens, exc, cut() if callable(cut) else cut),
                                  live.store.finish, again=True)
            span_failed(span, exc)
            raise
        finally:
            record.waited_upstream()
        if holds is None:
            await quotas.settle(hold, result.usage.total_tokens)
        else:
            holds[candidate.deployment.name] = hold
        if span is not NO_SPAN:  # untraced: nothing to label
            noted(span, result)
    return result


def _noted(span: Span, result: ChatResult) -> None:
    span.set("gen_ai.response.model", result.model)
    span.set("gen_ai.usage.input_tokens", result.usage.prompt_tokens)
    span.set("gen_ai.usage.output_tokens", result.usage.completion_tokens)
    span.set(CACHE_READ_TOKENS, result.usage.cached_tokens or None)
    span.set(CACHE_WRITE_TOKENS, result.usage.cache_creation_tokens or None)


async def bill_loser(record: RequestRecord, lost: Won[A]) -> None:
    """A hedge's loser that answered too: billed what it used (its quota is settled)."""
    cut_short(record, lost.candidate.deployment, lost.value.usage)


def bill_answer(live: Live, record: RequestRecord, won: Won[A]) -> None:
    """The routing stats of a whole answer's deployment (its latency, its tokens a
    minute) and the request's bill: a chat's and an embeddings call's alike."""
    deployment, usage = won.candidate.deployment, won.value.usage
    stats = live.routing.of(deployment)
    now = live.routing.clock()
    stats.observe_latency((now - won.started) * 1000)
    stats.add_usage(now, usage.total_tokens)
    _bill(record, deployment, usage)


async def stream(
    live: Live, chosen: Plan, record: RequestRecord | None = None
) -> tuple[Served, AsyncIterator[ChatDelta]]:
    """Open a stream, failing over only before its first delta: nothing has reached the
    client yet. After that, a failure is raised from the iterator."""
    record = record or new_record(live, "chat")
    quotas = DeploymentQuotas(live.store, record)
    holds: dict[str, Hold | None] = {}
    Opened = tuple[ChatDelta | None, AsyncIterator[ChatDelta], Span, ToldSoFar]

    async def attempt(candidate: Candidate) -> Opened:
        hold = await quotas.take(candidate.deployment, _worst_tokens(chosen, candidate))
        call = _call(chosen, candidate)
        deltas = candidate.adapter.stream(call)
        record.waiting_upstream()
        # The span lasts as long as the stream (``_measured`` ends it), not to its first
        # delta: its duration and usage are the whole call's.
        with attempt_span(live, record, candidate, ends=False,
                          operation=_operation(chosen, candidate)) as span:
            try:
                first = await anext(deltas)
            except StopAsyncIteration:
                first = None
            except BaseException as exc:  # its quota given back, or a call cut short billed
                with anyio.CancelScope(shield=True):  # and cancelled outright: ``uncancelled``
                    await uncancelled(partial(quotas.failed, hold, candidate.deployment,
                                              chosen.prompt_tokens, exc,
                                              _cut(live, chosen, candidate, call.told)),
                                      live.store.finish, again=True)
                span_failed(span, exc)
                span.end()
                raise
            finally:
                record.waited_upstream()
            holds[candidate.deployment.name] = hold
            return first, deltas, span, call.told

    async def discard(lost: Won[Opened]) -> None:
        # A hedge's loser, which had its first delta too: closed, and billed its prompt
        # and that delta (its own usage, if that came in it), as a call cut short.
        first, deltas, span, told = lost.value
        await close_deltas(deltas)
        span.end()
        deployment = lost.candidate.deployment
        if first is not None and first.usage is not None:
            used = first.usage
        else:
            used = _cut(live, chosen, lost.candidate, told, first)
        await quotas.settle(holds.pop(deployment.name, None), cut_short(record, deployment, used))

    won = await run_attempts(live, chosen.route,
                             _loop(live, chosen, attempt, discard, streaming=True), record)
    stats = live.routing.of(won.candidate.deployment)
    stats.observe_ttft((live.routing.clock() - won.started) * 1000)
    record.ttft_s = time.perf_counter() - record.started
    first, rest, span, told = won.value
    record.response_model = won.candidate.deployment.model
    record.upstream_request_id = first.upstream_request_id if first is not None else None
    hold = holds.get(won.candidate.deployment.name)  # its losers' were settled (discard)
    return _served(record, chosen, won), _measured(
        live, won, record, first, rest, hold, partial(_unanswered, chosen, won.candidate),
        told, span)


class PipelineChat(Protocol):
    """Serves a chat request whose model is a pipeline route (runtime/workflows); the
    exchange has identified it (key, team, end user)."""

    async def __call__(
        self, exchange: Exchange, key: ApiKey, request: ChatRequest, route: Route,
        facts: Facts,
    ) -> Response:
        """``facts``: those the request's policy check was asked with (kept with the
        execution, to ask again as it resumes)."""
        ...


async def chat_completions(
    exchange: Exchange, key: ApiKey, body: bytes, pipelines: PipelineChat | None = None
) -> Response:
    """POST /v1/chat/completions in OpenAI's wire format, for ``key`` (authenticated)."""
    live, record = exchange.live, exchange.record
    request = parse_chat_request(body)
    route = live.graph.routes.get(request.model)
    if pipelines is not None and route is not None and route.kind is TargetKind.PIPELINE:
        exchange.identify(key, request.user)
        gate = await authorize_route(live, key, exchange.user, route, exchange.headers,
                                     live.counter.count_request(request),
                                     request.output_limit, request.stream)
        # The request runs the pipeline: a policy on Pipeline::"p" holds here too, as on
        # /v1/pipelines/p, not only one on the route that names it.
        gate.check_invoke_pipeline(route.target)
        return await pipelines(exchange, key, request, route, gate.facts)
    await exchange.open(key, request)
    if not request.stream:
        served, result = await exchange.complete()
        return JSONBody(
            completion_body(served.request_id, served.created, result),
            headers=exchange.answer_headers(served),
        )
    served, deltas = await exchange.stream()
    encoder = ChunkEncoder(
        served.request_id, served.created, served.deployment.model, request.include_usage
    )
    headers = exchange.answer_headers(served)
    return await settled_stream(_events(encoder, deltas, live, record), headers)


_UNTRACED = nullcontext(NO_SPAN)  # reusable: entering it does nothing


def attempt_span(
    live: Live, record: RequestRecord, candidate: Candidate, *, ends: bool = True,
    operation: str = "chat",
) -> AbstractContextManager[Span]:
    """The span of one call to ``candidate`` (GenAI's ``operation``: chat, embeddings),
    under the request's span."""
    if record.trace_context is None:  # tracing is off (or the request has no span)
        return _UNTRACED
    deployment = candidate.deployment
    span = live.telemetry.tracing.attempt(f"{operation} {deployment.model}",
                                          record.trace_context, ends=ends)
    return _labelled(span, deployment, operation)


@contextmanager
def _labelled(span_manager: AbstractContextManager[Span], deployment: Deployment,
              operation: str) -> Iterator[Span]:
    with span_manager as span:
        span.set("gen_ai.operation.name", operation)
        span.set("gen_ai.provider.name", PROVIDER_NAMES.get(deployment.provider.type, "aigw"))
        span.set("gen_ai.request.model", deployment.model)
        span.set("aigw.deployment", deployment.name)
        yield span


def span_failed(span: Span, exc: BaseException) -> None:
    if isinstance(exc, BadRequest):
        # A parameter this member cannot honour, refused before the call went out (the
        # attempt loop's _Unsupported): no call was made, so the trace shows none.
        span.discard()
    elif isinstance(exc, GatewayError):
        span.error(str(exc.code))
    elif isinstance(exc, asyncio.CancelledError):
        # The attempt's timeout, a hedge that lost or the client gone: the span says the
        # call did not finish (it showed as unset, as if it had).
        span.error("cancelled")


def overhead_header(record: RequestRecord) -> dict[str, str]:
    """``x-aigw-overhead-ms``: the gateway's own time so far, on every answer."""
    return {"x-aigw-overhead-ms": f"{record.overhead_s() * 1000:.3f}"}


def upstream_id_header(record: RequestRecord) -> dict[str, str]:
    """``x-aigw-upstream-request-id``: the provider's id of the call that answered, where
    it gave one (``x-request-id`` is the gateway's, its access line's)."""
    upstream_id = record.upstream_request_id
    return {UPSTREAM_ID_HEADER: upstream_id} if upstream_id is not None else {}


def _served(record: RequestRecord, chosen: Plan, won: Won[Any]) -> Served:
    return Served(record.request_id, int(time.time()), chosen.route, won.candidate.deployment,
                  won.attempts)


def _worst_tokens(chosen: Plan, candidate: Candidate) -> int:
    return chosen.prompt_tokens + candidate.max_output_tokens * chosen.request.samples


def _operation(chosen: Plan, candidate: Candidate) -> str:
    """GenAI's operation of one call: a /v1/completions prompt its upstream is sent raw
    is a text_completion; the same prompt as a user message (a chat-only provider) a chat."""
    if chosen.request.text_completion and candidate.deployment.provider.type in COMPLETES_TEXT:
        return "text_completion"
    return "chat"


def _call(chosen: Plan, candidate: Candidate) -> ChatCall:
    return ChatCall(
        chosen.request, candidate.deployment, chosen.prompt_tokens, candidate.max_output_tokens
    )


def _unanswered(chosen: Plan, candidate: Candidate) -> Usage:
    """What a call to ``candidate`` cut before its usage came is billed for its prompt:
    as one whose upstream reports none (its audio parts as audio tokens)."""
    return unreported_usage(_call(chosen, candidate))


def _cut(live: Live, chosen: Plan, candidate: Candidate, told: ToldSoFar,
         first: ChatDelta | None = None) -> Usage:
    """What a stream from ``candidate`` cut before its first delta (or after ``first``,
    a hedge's loser) is billed: what its provider reported so far, estimated past it."""
    sent = SentOutput(STREAMED_AUDIO_FORMAT)
    if first is not None:
        sent.add(first)
    return sent.cut(told.usage, _unanswered(chosen, candidate), live.counter)


async def _measured(
    live: Live,
    won: Won[Any],
    record: RequestRecord,
    first: ChatDelta | None,
    rest: AsyncIterator[ChatDelta],
    hold: Hold | None,
    unanswered: Callable[[], Usage],
    told: ToldSoFar,
    span: Span = NO_SPAN,
) -> AsyncIterator[ChatDelta]:
    """The stream as the client sees it: in flight to its end, timed, billed once, and
    judged at its end (the breaker's verdict on the deployment). Cut before the upstream's
    usage-only delta, it is billed what the upstream reported before the cut (``told``:
    Anthropic's message_start, Gemini's running counts) and, for what that leaves out,
    ``unanswered()`` (its prompt) and what it sent (a spoken answer's audio too, at the
    audio price), before the deployment's own tpm is settled (a cut reaches this, the
    innermost stream, first)."""
    deployment = won.candidate.deployment
    stats = live.routing.of(deployment)
    stats.in_flight += 1
    sent = SentOutput(STREAMED_AUDIO_FORMAT)
    billed = ended = False
    error: BaseException | None = None
    try:
        while True:
            if first is not None:  # read already, by the attempt: its usage counts too
                delta, first = first, None
            else:
                record.waiting_upstream()
                try:
                    delta = await anext(rest)
                except StopAsyncIteration:
                    break
                finally:
                    record.waited_upstream()
            if delta.usage is not None:
                stats.add_usage(live.routing.clock(), delta.usage.total_tokens)
                _bill(record, deployment, delta.usage)
                billed = True
            else:
                sent.add(delta)
            if delta.finish_reason is not None:
                record.finish_reasons = (*record.finish_reasons, delta.finish_reason)
            yield delta
        stats.observe_latency((live.routing.clock() - won.started) * 1000)
        ended = True
    except BaseException as exc:
        error = exc
        span_failed(span, exc)
        if isinstance(exc, UpstreamError):  # the upstream failed after its first byte:
            # counted as the attempt loop counts a failure before it (the client's leaving
            # or a budget's stopping the stream is no failure of the upstream's)
            record.failures.append(UpstreamFailure(
                deployment.name, deployment.provider.name, str(exc.code)))
        raise
    finally:
        stats.in_flight -= 1
        stream_ended(live.routing, won, ended, error)
        if not billed:  # as an answer whose upstream reports no usage (providers/guard.py)
            _bill(record, deployment, sent.cut(told.usage, unanswered(), live.counter))
        if span is not NO_SPAN:  # untraced: nothing to label
            label_answer(span, record)
            span.end()
        # Shielded: a client that went away cancels the stream, not its clean-up; and a
        # task cancelled outright (no anyio shield stops it) settles all the same.
        with anyio.CancelScope(shield=True):
            try:
                await close_deltas(rest)
            finally:
                await uncancelled(partial(DeploymentQuotas.settle, hold,
                                          record.prompt_tokens + record.completion_tokens),
                                  live.store.finish, again=True)


async def _events(
    encoder: ChunkEncoder, deltas: AsyncIterator[ChatDelta], live: Live, record: RequestRecord
) -> AsyncGenerator[bytes, None]:
    ended = False
    try:
        async for event in encoder.events(deltas):
            yield event
        ended = True
    except GatewayError as exc:  # after the status line: the error goes in the stream
        record.error = str(exc.code)
        ended = True
        yield error_event(exc.body())
    finally:  # also when the client went away: settled, recorded and finished either way
        if not ended:  # the client went away, or a shutdown cut it
            record.error = live.shutdown.cut()[1]
        try:
            with anyio.CancelScope(shield=True):
                await close_deltas(deltas)  # settles and records (``Exchange.close``)
        finally:  # counted though the task is cancelled outright meanwhile
            live.telemetry.finish(record)


@dataclass(frozen=True, slots=True)
class PlannedCount:
    """What a count-tokens endpoint answers from: the route, the request as the route
    would plan it, its prompt tokens, and its Cedar gate (None: no policies), with which
    the deployment that would serve it is picked (Gemini's count asks that one)."""

    route: Route
    request: ChatRequest
    tokens: int
    gate: RequestGate | None


async def planned_count(live: Live, key: ApiKey, headers: Headers, model: str,
                        messages: list[dict[str, Any]], tools: dict[str, Any],
                        request: ChatRequest | None = None) -> PlannedCount:
    """A count-tokens endpoint's answer (Anthropic's, Gemini's): the prompt tokens the
    route ``model`` plans a request of ``messages`` and ``tools`` with, for a principal
    that may send it (the key's routes and Cedar's invoke check, as on a call: a count
    tells what the route's planning does with a prompt). ``request``: the whole request
    as the endpoint lowers it (its output limit and format pick deployments too), where
    the endpoint has one."""
    route = resolve_route(live.graph, model)
    check_route_allowed(key, route)
    planned = chat_request_from({"model": route.name, "messages": messages, **tools})
    tokens = live.counter.count_request(planned)
    user = headers.get(live.graph.settings.user_header) or None
    gate = await authorize_route(live, key, user, route, headers, tokens,
                                 (request or planned).output_limit)
    return PlannedCount(route, request or planned, tokens,
                        gate if live.policy.enforced else None)
