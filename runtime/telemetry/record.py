"""One request's record: filled in by the stages, finished once into metrics and a log line.

The record is the only mutable per-request object; stages write what they learn
(who called, which route and deployment, tokens, cost, time spent upstream), and
``Telemetry.finish`` turns it into metrics and one JSON log line, whether the request
succeeded, failed, or its stream was cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

from ..jsonio import dumps
from .metrics import Metrics
from .tracing import (
    CACHE_READ_TOKENS,
    CACHE_WRITE_TOKENS,
    NO_SPAN,
    PROVIDER_NAMES,
    Span,
    Tracing,
)

access_log = logging.getLogger("aigw.access")


class AccessLog:
    """Where the one JSON line per request goes: the ``aigw.access`` logger, or, once
    ``aigw serve`` has pointed it at a stream, straight to that stream. Profiled under
    load, the logging module's caller lookup and record building cost several times
    what encoding the line does; the logger's level still decides whether it is written.

    On a stream, the first line of an event loop's turn is written at once, and the
    lines of the requests that finish after it in the same turn (a batch of ledger
    commits wakes many together) go in one write at the turn's end: one system call,
    and one wake-up of whatever reads the stream, instead of one a line. A request
    alone in its turn (the usual case at low rates) has its line written before its
    answer is sent, as before. ``flush`` writes what is left (a stop, a new stream).

    One for each ``Telemetry`` (a gateway's), not one for the process: ``aigw serve``
    points its gateway's at stderr, and another app in the process keeps its own."""

    def __init__(self) -> None:
        self._stream: TextIO | None = None
        self._pending: list[str] = []
        # The loop in whose current turn a line was written (the rest of the turn's
        # wait for its end), until that turn ends: a loop that stopped before its turn
        # ended leaves no batching behind for the next one.
        self._turn: asyncio.AbstractEventLoop | None = None

    def to_stream(self, stream: TextIO | None) -> None:
        self.flush()
        self._stream = stream

    def enabled(self) -> bool:
        return access_log.isEnabledFor(logging.INFO)

    def write(self, line: str) -> None:
        if self._stream is None:
            access_log.info(line)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop running (a command, a test): as it comes
            self.flush()
            self._emit(line + "\n")
            return
        if loop is self._turn:
            self._pending.append(line)
            return
        if self._pending:  # left by a loop that stopped mid-turn: they come first
            self.flush()
        loop.call_soon(self._end_turn)
        self._turn = loop
        try:  # noqa: SIM105 (as in ``_emit``; contextlib.suppress is three calls a request)
            self._stream.write(line + "\n")
        except (OSError, ValueError):
            pass

    def flush(self) -> None:
        """Write the lines still waiting for their turn's end."""
        if self._pending:
            lines, self._pending = self._pending, []
            self._emit("\n".join(lines) + "\n")

    def _end_turn(self) -> None:
        self._turn = None
        if self._pending:
            self.flush()

    def _emit(self, text: str) -> None:
        if self._stream is None:
            return
        # A stream that is gone (a closed pipe) loses the lines, as logging would; it
        # never fails a request.
        with contextlib.suppress(OSError, ValueError):
            self._stream.write(text)


UNKNOWN = "_none"  # label value when a stage was not reached (e.g. a 404 has no route)


def served_by(record: RequestRecord) -> tuple[str, str]:
    """The deployment and provider that ``record``'s count names: the one that answered,
    or the one whose call its cancellation cut; ``UNKNOWN`` where it reached none."""
    if record.deployment is None and record.cut_mid_call is not None:
        return record.cut_mid_call
    return record.deployment or UNKNOWN, record.provider or UNKNOWN


def answered_as(scope: MutableMapping[str, Any], request_id: str) -> None:
    """Say that the HTTP request of ``scope`` is the one whose access-log line has
    ``request_id``: app.SnapshotMiddleware stamps it on the request's answer as
    ``x-request-id``, whatever the answer is (an error's too), unless the answer names
    it already. A client can then quote the id of any request, failed or not, to ops."""
    scope.setdefault("state", {})[ANSWERED_AS] = request_id


ANSWERED_AS = "request_id"  # the key in an ASGI scope's "state" that answered_as sets


@dataclass(slots=True)
class UpstreamFailure:
    deployment: str
    provider: str
    error: str


@dataclass(frozen=True, slots=True)
class CutCall:
    """A call a request made and did not use, cut short (its timeout, the request's
    deadline, a hedge that lost, the client gone) or discarded: billed what it likely cost
    the provider, which reported no usage for it (``admission.cut_short``)."""

    deployment: str
    provider: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost: float
    audio_input_tokens: int = 0  # of prompt_tokens, as ``RequestRecord``'s
    audio_output_tokens: int = 0  # of completion_tokens


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    endpoint: str
    graph: str
    started: float = field(default_factory=time.perf_counter)
    key: str | None = None
    team: str | None = None
    user: str | None = None
    route: str | None = None
    deployment: str | None = None
    provider: str | None = None
    provider_type: str | None = None
    # Cancelled before any call answered (its client gone, a shutdown): the deployment and
    # provider of the call it cut, which its count and access line name (``served_by``).
    # Not its ``deployment``: that one is billed the request's tokens, the cut call's own
    # record its estimate.
    cut_mid_call: tuple[str, str] | None = None
    # A pass-through's provider answered: timed and its tokens counted as a deployment's
    # answer is, though no deployment may name it (one no price names: deployment _none).
    relayed: bool = False
    stream: bool = False
    # Finished as its answer's body ends (a stream's, a pass-through's whole answer
    # relayed as it comes), not as its handler returns: every stream is.
    finished_by_body: bool = False
    status: int = 200  # the request's outcome: a stream failed mid-way counts as its error
    sent_status: int | None = None  # the status line, where it said otherwise (a 200)
    error: str | None = None
    attempts: int = 0
    fallback_hop: int = 0  # how many fallbacks from the route's group the served one is
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens: read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens: written to it
    audio_input_tokens: int = 0  # of prompt_tokens: audio, billed at the audio price
    audio_output_tokens: int = 0  # of completion_tokens: audio
    cost: float = 0.0
    upstream_s: float = 0.0  # time spent waiting on providers (``waiting_upstream``)
    upstream_waits: int = 0  # calls waited on now: two while a hedge races
    upstream_since: float = 0.0  # since when at least one has been
    backoff_s: float = 0.0  # and before retrying them: not the gateway's own either
    ttft_s: float | None = None
    failures: list[UpstreamFailure] = field(default_factory=list)
    # Calls cut short (or hedges' losers), billed on their own; None until there is one.
    cut: list[CutCall] | None = None
    model: str | None = None  # as the client asked
    response_model: str | None = None  # as the upstream answered
    upstream_request_id: str | None = None  # the provider's id of the call that answered
    finish_reasons: tuple[str, ...] = ()
    policy_ids: tuple[str, ...] = ()  # the Cedar policies that permitted the deployment
    # None: the route caches nothing
    cache: Literal["hit", "semantic_hit", "miss", "bypass"] | None = None
    cache_similarity: float | None = None  # a semantic hit's
    span: Span = NO_SPAN
    trace_context: Any = None
    finished: bool = False
    in_flight_route: str | None = None  # the route counted in flight (``started``)
    # (scope, name) of the budget that refused the request or cut its stream; a user's
    # budget is named by its team (or "key:<key>"), as user ids are the client's own text.
    budget_refused: tuple[str, str] | None = None
    # (guardrail, direction, action) of each guardrail that acted; None until one does.
    guardrails: list[tuple[str, str, str]] | None = None
    batch: str | None = None  # the batch (/v1/batches) this request is a line of
    responses: int | None = None  # a Realtime session's, each billed (runtime/realtime.py)
    responses_cut: int | None = None  # of them: ended with no response.done, estimated

    def waiting_upstream(self) -> None:
        """A call to a provider is waited on from now (until ``waited_upstream``). The
        time counted is when any call was waited on: a hedge's two calls overlap, and
        adding each one's time made the upstream's more than the request's whole, so the
        gateway's own overhead read 0."""
        if self.upstream_waits == 0:
            self.upstream_since = time.perf_counter()
        self.upstream_waits += 1

    def waited_upstream(self) -> None:
        self.upstream_waits -= 1
        if self.upstream_waits == 0:
            self.upstream_s += time.perf_counter() - self.upstream_since

    def overhead_s(self, now: float | None = None) -> float:
        """Time so far that was the gateway's own, not the upstream's."""
        now = now if now is not None else time.perf_counter()
        upstream = self.upstream_s
        if self.upstream_waits:  # a call is being waited on now
            upstream += now - self.upstream_since
        return max(0.0, now - self.started - upstream - self.backoff_s)


# GenAI's operation names, by the endpoint a record is for (chat, /v1/messages and
# /v1/responses: chat; /v1/completions: text_completion; /v1/images/generations and
# /edits, and Gemini's generateContent: generate_content, the conventions' multimodal
# generation, "such as Gemini Generate Content"; /v1/pipelines/{name} and /a2a/{name} run
# an agent of sorts). Rerank and moderation have no well-known name, nor a pass-through
# (a provider API the gateway does not model): their own, as the conventions allow.
_OPERATIONS = {"embeddings": "embeddings", "completions": "text_completion",
               "rerank": "rerank", "images": "generate_content",
               "image_edits": "generate_content", "generate_content": "generate_content",
               "moderations": "moderation", "passthrough": "passthrough",
               "pipelines": "invoke_agent", "a2a": "invoke_agent",
               "transcriptions": "transcription", "translations": "translation",
               "speech": "speech", "realtime": "realtime"}


def operation_name(record: RequestRecord) -> str:
    return _OPERATIONS.get(record.endpoint, "chat")


@dataclass(slots=True)
class _RouteChildren:
    overhead: Any
    in_flight: Any


@dataclass(slots=True)
class _ServedChildren:
    route: _RouteChildren  # the route's own, kept here: one lookup a request for both
    latency: Any
    stream_latency: Any
    ttft: Any
    tokens_in: Any
    tokens_out: Any
    cache_read: Any
    cache_write: Any
    cost: Any
    statuses: dict[int, Any]


def label_answer(span: Span, record: RequestRecord) -> None:
    """What ``record``'s answer came to, on ``span`` (the request's, or a stream's
    attempt): the model that answered, the tokens (with the prompt cache's reads and
    writes) and the finish reasons, as the GenAI conventions name them."""
    span.set("gen_ai.response.model", record.response_model)
    span.set("gen_ai.usage.input_tokens", record.prompt_tokens)
    span.set("gen_ai.usage.output_tokens", record.completion_tokens)
    span.set(CACHE_READ_TOKENS, record.cached_tokens or None)
    span.set(CACHE_WRITE_TOKENS, record.cache_write_tokens or None)
    if record.finish_reasons:
        span.set("gen_ai.response.finish_reasons", list(record.finish_reasons))


class Telemetry:
    """Where finished records go: Prometheus metrics, spans and the access log."""

    def __init__(self, metrics: Metrics | None = None, tracing: Tracing | None = None,
                 access_log: AccessLog | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.tracing = tracing or Tracing()
        self.access_log = access_log or AccessLog()
        # Bound children by label values: ``labels()`` validates and locks on every call,
        # and the label values are graph names, so these tables stay small.
        self._served: dict[tuple[str, str, str, str], _ServedChildren] = {}
        self._by_route: dict[str, _RouteChildren] = {}

    def refused(self, record: RequestRecord, headers: Mapping[str, str]) -> None:
        """Give a request refused before it was routed (no key, a bad body, an unknown
        model) its span too, so that a client's trace shows where it ended."""
        if record.span is NO_SPAN and self.tracing.enabled:
            elapsed_ns = int((time.perf_counter() - record.started) * 1e9)
            operation = operation_name(record)
            record.span, record.trace_context = self.tracing.request(
                f"{operation} {record.model}" if record.model else operation, headers,
                time.time_ns() - elapsed_ns)

    def _route(self, route: str) -> _RouteChildren:
        children = self._by_route.get(route)
        if children is None:
            metrics = self.metrics
            children = self._by_route[route] = _RouteChildren(
                metrics.overhead.labels(route), metrics.in_flight.labels(route)
            )
        return children

    def _deployment(self, route: str, deployment: str, provider: str, team: str) -> _ServedChildren:
        key = (route, deployment, provider, team)
        children = self._served.get(key)
        if children is None:
            metrics = self.metrics
            children = self._served[key] = _ServedChildren(
                route=self._route(route),
                latency=metrics.latency.labels(route, deployment, provider, "false"),
                stream_latency=metrics.latency.labels(route, deployment, provider, "true"),
                ttft=metrics.ttft.labels(route, deployment, provider),
                tokens_in=metrics.tokens.labels(route, deployment, team, "input"),
                tokens_out=metrics.tokens.labels(route, deployment, team, "output"),
                cache_read=metrics.prompt_cache.labels(route, deployment, team, "read"),
                cache_write=metrics.prompt_cache.labels(route, deployment, team, "write"),
                cost=metrics.cost.labels(route, deployment, team),
                statuses={},
            )
        return children

    def started(self, record: RequestRecord) -> None:
        if record.route is not None and record.in_flight_route is None:
            self._route(record.route).in_flight.inc()
            record.in_flight_route = record.route

    def first_token(self, record: RequestRecord, seconds: float) -> None:
        """A time to first token of one of ``record``'s answers, where a request has
        several (a Realtime session's responses): observed now, labelled as ``finish``
        labels a request's own (``record.ttft_s``, which such a request leaves unset)."""
        self._deployment(record.route or UNKNOWN, record.deployment or UNKNOWN,
                         record.provider or UNKNOWN, record.team or UNKNOWN).ttft.observe(seconds)

    def realtime_response(self, record: RequestRecord, outcome: Literal["done", "cut"]) -> None:
        """One of a Realtime session's responses billed: at its usage (``done``), or at an
        estimate, as it ended with no response.done (``cut``)."""
        self.metrics.realtime_responses.labels(record.route or UNKNOWN,
                                               record.deployment or UNKNOWN,
                                               record.team or UNKNOWN, outcome).inc()

    def finish(self, record: RequestRecord) -> None:
        """Count the request once, however it ended."""
        if record.finished:
            return
        record.finished = True
        now = time.perf_counter()
        metrics = self.metrics
        route = record.route or UNKNOWN
        deployment, provider = served_by(record)
        team = record.team or UNKNOWN
        served = self._served.get((route, deployment, provider, team))
        if served is None:
            served = self._deployment(route, deployment, provider, team)
        counter = served.statuses.get(record.status)
        if counter is None:
            counter = served.statuses[record.status] = metrics.requests.labels(
                route, deployment, provider, team, str(record.status))
        counter.inc()
        # ``record.overhead_s(now)`` written out: a call fewer on every request
        upstream = record.upstream_s
        if record.upstream_waits:  # a call is being waited on now
            upstream += now - record.upstream_since
        overhead = now - record.started - upstream - record.backoff_s
        if overhead < 0.0:
            overhead = 0.0
        by_route = served.route
        by_route.overhead.observe(overhead)
        counted = record.in_flight_route
        if counted is not None:  # only what ``started`` counted
            (by_route if counted == route else self._route(counted)).in_flight.dec()
        if record.deployment is not None or record.relayed:
            (served.stream_latency if record.stream else served.latency).observe(
                now - record.started)
            if record.ttft_s is not None:
                served.ttft.observe(record.ttft_s)
            served.tokens_in.inc(record.prompt_tokens)
            served.tokens_out.inc(record.completion_tokens)
            if record.cached_tokens:
                served.cache_read.inc(record.cached_tokens)
            if record.cache_write_tokens:
                served.cache_write.inc(record.cache_write_tokens)
            served.cost.inc(record.cost)
        if record.cut:  # calls cut short are billed, on their own deployments
            for cut in record.cut:
                charged = self._deployment(route, cut.deployment, cut.provider, team)
                charged.tokens_in.inc(cut.prompt_tokens)
                charged.tokens_out.inc(cut.completion_tokens)
                if cut.cached_tokens:
                    charged.cache_read.inc(cut.cached_tokens)
                charged.cost.inc(cut.cost)
        if record.cache is not None and record.cache != "bypass":  # a bypass looked nothing up
            metrics.cache.labels(route, record.cache).inc()
        if record.fallback_hop:
            metrics.fallbacks.labels(route).inc()
        if record.attempts > 1:
            metrics.retries.labels(route).inc(record.attempts - 1)
        for failure in record.failures:
            metrics.upstream_failures.labels(failure.deployment, failure.provider,
                                             failure.error).inc()
        if record.budget_refused is not None:
            metrics.budget_refusals.labels(*record.budget_refused).inc()
        if record.guardrails is not None:
            for acted in record.guardrails:
                metrics.guardrail_actions.labels(*acted).inc()
        if record.span is not NO_SPAN:
            self._end_span(record)
        access_log = self.access_log
        if not access_log.enabled():
            return
        access_log.write(dumps({
            "ts": round(time.time(), 3),
            "request_id": record.request_id,
            "endpoint": record.endpoint,
            "key": record.key,
            "team": record.team,
            "route": record.route,
            "deployment": None if deployment == UNKNOWN else deployment,
            "upstream_request_id": record.upstream_request_id,
            "status": record.status,
            "error": record.error,
            "stream": record.stream,
            "attempts": record.attempts,
            "latency_ms": round((now - record.started) * 1000, 3),
            "overhead_ms": round(overhead * 1000, 3),
            "ttft_ms": round(record.ttft_s * 1000, 3) if record.ttft_s is not None else None,
            "prompt_tokens": record.prompt_tokens,
            "completion_tokens": record.completion_tokens,
            "cached_tokens": record.cached_tokens,
            "cache_write_tokens": record.cache_write_tokens,
            "audio_input_tokens": record.audio_input_tokens,
            "audio_output_tokens": record.audio_output_tokens,
            "cost": record.cost,
            "cache": record.cache,
            "guardrails": [f"{name}:{direction}:{action}"
                           for name, direction, action in record.guardrails]
            if record.guardrails is not None else None,
            "cache_similarity": record.cache_similarity,
            "graph": record.graph,
            "batch": record.batch,
            "responses": record.responses,
            "responses_cut": record.responses_cut,
        }).decode())

    def _end_span(self, record: RequestRecord) -> None:
        span = record.span
        if span is NO_SPAN:
            return
        span.set("gen_ai.operation.name", operation_name(record))
        span.set("gen_ai.request.model", record.model)
        if record.provider_type is not None:
            span.set("gen_ai.provider.name", PROVIDER_NAMES.get(record.provider_type, "aigw"))
        label_answer(span, record)
        span.set("aigw.route", record.route)
        # Who asked, by name (never the secret), as the access log and MCP's spans have it.
        span.set("aigw.key", record.key)
        span.set("aigw.team", record.team)
        if record.policy_ids:
            span.set("aigw.policy_ids", list(record.policy_ids))
        deployment = served_by(record)[0]
        span.set("aigw.deployment", None if deployment == UNKNOWN else deployment)
        span.set("aigw.graph", record.graph)
        span.set("aigw.fallback_hop", record.fallback_hop)
        span.set("aigw.attempts", record.attempts)
        span.set("aigw.cost", record.cost)
        if record.cache is not None:
            span.set("aigw.cache", record.cache)
        if record.guardrails is not None:
            span.set("aigw.guardrails", [":".join(acted) for acted in record.guardrails])
        span.set("http.response.status_code", record.sent_status or record.status)
        if record.error is not None:
            span.error(record.error)
        span.end()
