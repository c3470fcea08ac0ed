"""OpenTelemetry traces following the GenAI semantic conventions; off, and free, by default.

Tracing turns on when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) variable is set; the exporter reads the other
``OTEL_*`` variables itself. ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` picks it:
http/protobuf (the default) or grpc, whose exporter is the ``otlp-grpc`` extra (grpcio
is large, and most collectors take both). When off, no OpenTelemetry module is imported
and every span is a shared no-op. A client's W3C ``traceparent`` becomes the parent.

    chat {route}                 the request: aigw.route, aigw.graph, usage (with the prompt
                                 cache's reads and writes), aigw.fallback_hop
                                 (the fallbacks taken: 0 when the route's group served)
    └── chat {upstream model}    one span per call made upstream: gen_ai.provider.name, ...

MCP messages at /mcp/<server> have spans of their own (``mcp_tracing``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

log = logging.getLogger("aigw")

# Our provider types, in the gen_ai.provider.name vocabulary of the GenAI conventions.
PROVIDER_NAMES = {
    "openai": "openai",
    "azure_openai": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
    "cohere": "cohere",
    "echo": "aigw.echo",
    "openai_compatible": "openai",
    "vllm": "openai",
}


# The GenAI conventions' attributes for the input tokens a provider's prompt cache read
# and wrote (parts of gen_ai.usage.input_tokens); set only where there were some.
CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
CACHE_WRITE_TOKENS = "gen_ai.usage.cache_creation.input_tokens"


# Set (to True) inside an exporting ``Tracing.attempt``, for that attempt's context only:
# its upstream call carries the attempt's traceparent (``traced``). Per context, not a
# process-wide switch: an app whose tracing is off, beside one whose is on, never calls
# into OpenTelemetry, and its calls cost one lookup.
_IN_ATTEMPT: ContextVar[bool] = ContextVar("aigw_in_traced_attempt", default=False)


def traced(headers: Mapping[str, str]) -> Mapping[str, str]:
    """``headers`` with the current span's W3C ``traceparent`` when called inside an
    exporting attempt (``Tracing.attempt``), so that an upstream that traces joins the
    request's trace; else ``headers`` themselves."""
    if not _IN_ATTEMPT.get():
        return headers
    from opentelemetry.propagate import inject

    carried = dict(headers)
    inject(carried)
    return carried


def traceparent(context: Any) -> str | None:
    """The W3C ``traceparent`` of a request span's ``context`` (as ``Tracing.request``
    gives it; None when tracing is off), for work that carries on outside the request:
    a pipeline's steps, run later and maybe by another replica, join its trace."""
    if context is None:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier, context=context)
    return carrier.get("traceparent")


class Span:
    """What the runtime needs of a span; the no-op one does nothing at all."""

    def set(self, key: str, value: Any) -> None:
        return None

    def error(self, code: str, description: str | None = None) -> None:
        return None

    def rename(self, name: str) -> None:
        return None

    def link(self, context: Any) -> None:
        return None

    def end(self) -> None:
        return None

    def discard(self) -> None:
        """No call was made after all (the attempt was refused before it went out): the
        span is never ended, so never exported."""
        return None


NO_SPAN = Span()


class _OtelSpan(Span):
    def __init__(self, span: Any) -> None:
        self.span = span
        self.discarded = False

    def set(self, key: str, value: Any) -> None:
        if value is not None:
            self.span.set_attribute(key, value)

    def error(self, code: str, description: str | None = None) -> None:
        from opentelemetry.trace import Status, StatusCode

        self.span.set_attribute("error.type", code)
        self.span.set_status(Status(StatusCode.ERROR, description or code))

    def rename(self, name: str) -> None:
        self.span.update_name(name)

    def link(self, context: Any) -> None:
        """Link the span of ``context`` (an OpenTelemetry context) to this one, when it
        has a valid one."""
        from opentelemetry import trace

        linked = trace.get_current_span(context).get_span_context()
        if linked.is_valid:
            self.span.add_link(linked)

    def end(self) -> None:
        if not self.discarded:  # an unended span is dropped: only ended ones are exported
            self.span.end()

    def discard(self) -> None:
        self.discarded = True


def _exporter(environ: Mapping[str, str]) -> Any:
    """The OTLP span exporter ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` names, or None
    (said in the log) when it cannot be had: spans sent over HTTP to a gRPC port are
    lost without a word, so a protocol aigw cannot speak turns tracing off, loudly."""
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip().lower()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as GrpcSpanExporter,
            )
        except ImportError:
            log.error("tracing is off: OTEL_EXPORTER_OTLP_PROTOCOL is grpc, whose exporter "
                      "is not installed (pip install 'aigw[otlp-grpc]'), or set it to "
                      "http/protobuf and point the endpoint at the collector's HTTP port")
            return None
        return GrpcSpanExporter()
    log.error("tracing is off: OTEL_EXPORTER_OTLP_PROTOCOL %r is none aigw exports by "
              "(http/protobuf or grpc)", protocol)
    return None


class Tracing:
    """Creates request and attempt spans when an OTLP endpoint is configured."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self.enabled = bool(
            environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        ) and environ.get("OTEL_SDK_DISABLED", "").lower() != "true"
        self._tracer: Any = None
        self._provider: Any = None
        if self.enabled:
            exporter = _exporter(environ)
            if exporter is None:
                self.enabled = False
            else:
                self._setup(exporter)

    def _setup(self, exporter: Any) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "aigw")})
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("aigw")

    def request(
        self, name: str, headers: Mapping[str, str], started_ns: int | None = None
    ) -> tuple[Span, Any]:
        """Start the request's span, parented by the client's traceparent (at
        ``started_ns``, epoch nanoseconds, when given: a request refused before it was
        routed gets its span as it ends).

        Returns the span (ended by ``Telemetry.finish``, after a stream's last byte) and
        the context its attempt spans are children of.
        """
        if not self.enabled:
            return NO_SPAN, None
        from opentelemetry import trace
        from opentelemetry.propagate import extract
        from opentelemetry.trace import SpanKind

        parent = extract(dict(headers))
        span = self._tracer.start_span(name, context=parent, kind=SpanKind.SERVER,
                                       start_time=started_ns)
        return _OtelSpan(span), trace.set_span_in_context(span)

    def start(self, name: str, parent: Any, *, server: bool,
              started_ns: int | None = None) -> tuple[Span, Any]:
        """A span of ``name`` under ``parent`` (an OpenTelemetry context, None for a new
        trace), SERVER (``server``) or CLIENT kind, begun at ``started_ns`` (epoch
        nanoseconds; now when None), not made current; and the context its children
        are started in. Only called with tracing on."""
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        span = self._tracer.start_span(name, context=parent, start_time=started_ns,
                                       kind=SpanKind.SERVER if server else SpanKind.CLIENT)
        return _OtelSpan(span), trace.set_span_in_context(span)

    @contextlib.contextmanager
    def attempt(self, name: str, parent: Any, *, ends: bool = True) -> Iterator[Span]:
        """One upstream attempt, a child of the request span, current inside the block.
        ``ends=False``: a stream's, which its reader ends (``Span.end``) with the stream,
        not when the first delta is in. A span ``discard``ed in the block is not ended."""
        if not self.enabled or parent is None:
            yield NO_SPAN
            return
        from opentelemetry.trace import SpanKind

        attempt: _OtelSpan | None = None
        try:
            with self._tracer.start_as_current_span(name, context=parent, kind=SpanKind.CLIENT,
                                                    end_on_exit=False) as span:
                attempt = _OtelSpan(span)
                inside = _IN_ATTEMPT.set(True)
                try:
                    yield attempt
                finally:
                    # A block left in another context than it began in has nothing of
                    # ours to reset there (OpenTelemetry's own detach says so in the log).
                    with contextlib.suppress(ValueError):
                        _IN_ATTEMPT.reset(inside)
        finally:
            # Ended here, not by the block (after it has noted an exception that left it),
            # so that a span discarded inside it is not ended, and not exported.
            if ends and attempt is not None:
                attempt.end()

    def shutdown(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()
