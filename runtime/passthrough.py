"""Pass-through at ``/passthrough/<name>/<path>``: a provider API the gateway does not
model (vector stores, fine-tuning jobs, message batches, a vLLM server's /tokenize),
reached with the provider's credentials and governed as the modelled endpoints are.

    authenticate (an aigw key, as /v1) -> the pass-through by name, among the key's
    ``passthrough`` (404, as one not defined) -> its methods (405) and path globs
    (404) -> Cedar invoke on Passthrough::"name" (403) -> the provider's root and
    credentials, as its adapter sends them (providers/raw.py) -> a POST's body read
    whole where it is as small as a chat body (its model and output cap; a gzipped
    one read from an inflated copy) -> the key's, its team's and the end user's rpm,
    max_parallel, tpm and budgets, holding what the request may cost
    (passthrough_hold.py; 429) -> the body streamed up, refused past
    ``settings.max_passthrough_bytes`` (413); a client gone while the upstream has not
    answered a 499 -> the answer streamed back as the upstream gave it (its status,
    headers and body) -> settle: the usage a POST's answer reports (inflated, where
    compressed) billed at the price of the provider's deployment of the model it
    names, else nothing (one in an encoding aigw cannot read: what it held); the
    ledger record, access line and metrics (route label ``passthrough:<name>``, never
    the path), a stream where the answer was one (an event stream, or asked for)

The aigw key is read as any provider's SDK sends it (``Authorization: Bearer``,
``x-api-key``, ``x-goog-api-key`` or ``?key=``). What goes upstream is the client's
request less that key (in whichever header a provider reads one from, or a ``key``
query parameter), its cookies, hop-by-hop headers and the gateway's own
(``x-aigw-*``, the end-user header); the provider's ``headers:`` and credentials are
added. ``accept-encoding: identity`` is asked for, so the usage can be read as it goes
by. The provider's key and header values are scrubbed from every answer: an error
answer (read whole, bounded) as a call's upstream error is, a streamed one where the
key itself appears (masked to its own length, so a ``content-length`` holds). A success
answer the upstream compressed all the same goes on as it came, unmasked: only a
broken upstream echoes its caller's key in a success, and scrubbing one would mean
inflating every compressed answer whole and sending it inflated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator

import anyio
import httpx
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from aigw.compiler.graph import ApiKey, Passthrough, Provider

from .chat import new_record
from .errors import (
    Cancelled,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PassthroughUnavailable,
    PayloadTooLarge,
    RequestTimeout,
    UpstreamConnectionError,
    UpstreamTimeout,
)
from .exchange import Exchange, exchanged
from .gemini_api import gemini_key
from .incoming import client_gone, unless_gone
from .live import Live
from .passthrough_hold import Asked, Held, asked, asks_stream, billed_method, held, priced
from .passthrough_usage import Inflater, UsageReader, inflated
from .policy_request import authorize_passthrough
from .providers.raw import RawTarget, raw_adapter
from .sse import settled_stream
from .telemetry.record import RequestRecord, answered_as, label_answer
from .telemetry.tracing import PROVIDER_NAMES, Span, traced
from .upstream import (
    UPSTREAM_ID_HEADER,
    id_header_of,
    make_client,
    scrub,
    upstream_request_id,
)

log = logging.getLogger("aigw.passthrough")

PREFIX = "/passthrough/"
# The GenAI operation of a pass-through's spans: a provider API the gateway does not model
# (a vector store, a fine-tuning job, or a model call) is none of the conventions' own.
PASSTHROUGH = "passthrough"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]  # HEAD comes with GET
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate",
                        "proxy-authorization", "proxy-connection", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade"})
# The client's headers that never go upstream besides those: its aigw key in any header a
# provider reads a key from (the provider's own are added), its cookies, what httpx sets.
_KEPT_BACK = HOP_BY_HOP | {"host", "authorization", "x-api-key", "api-key",
                           "x-goog-api-key", "cookie", "accept-encoding", "expect",
                           # which of the provider key's organizations and projects pays
                           # and whose files it sees is the operator's (headers:), never
                           # the caller's to choose
                           "openai-organization", "openai-project"}
# The upstream's headers that never reach the client besides the hop-by-hop ones.
_NOT_ANSWERED = HOP_BY_HOP | {"set-cookie", "set-cookie2"}
# The most of an error answer read (to scrub it whole); the rest is cut.
MAX_ERROR_BYTES = 1 << 20
# The media types of an answer that is a stream of events.
_STREAMED_MEDIA = frozenset({"text/event-stream", "application/x-ndjson"})
# The shortest header value masked in a streamed answer, as ``scrub_values``' words.
_SECRET_WORD = 12


def passthrough_routes(proxy: PassthroughProxy) -> list[Route]:
    return [Route(PREFIX + "{name}/{path:path}", proxy.endpoint, methods=METHODS)]


class PassthroughProxy:
    """The /passthrough endpoint and its pooled clients, one per provider as its config
    last read (made on first use, closed when the app stops)."""

    def __init__(self) -> None:
        self._clients: dict[tuple[object, ...], httpx.AsyncClient] = {}

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    def _client(self, provider: Provider) -> httpx.AsyncClient:
        # By what the client is made from: a reload that changes none keeps its pool.
        made_of = (provider.name, provider.timeout_s, provider.max_connections)
        client = self._clients.get(made_of)
        if client is None:
            client = self._clients[made_of] = make_client(provider, native=True)
        return client

    async def endpoint(self, request: Request) -> Response:
        live: Live = request.scope["state"]["live"]
        record = new_record(live, "passthrough")
        answered_as(request.scope, record.request_id)  # its x-request-id, an error's too
        # Not watched for its client's leaving: the body is the upstream's to read, and
        # a client gone mid-answer ends the stream (``_relayed``).
        exchange = Exchange(live, record, request.headers)

        async def nothing() -> bytes:  # the body is streamed up, never read here
            return b""

        async def answer(exchange: Exchange, key: ApiKey, _body: bytes) -> Response:
            return await self._serve(live, exchange, key, request)

        # The key as any provider's SDK sends it (google-genai's in x-goog-api-key or
        # ?key=), so an app needs only its SDK's base URL changed.
        return await exchanged(
            exchange, lambda: gemini_key(live, request.headers, request.query_params),
            nothing, answer)

    async def _serve(self, live: Live, exchange: Exchange, key: ApiKey,
                     request: Request) -> Response:
        record, graph = exchange.record, live.graph
        exchange.identify(key, None)
        name = request.path_params["name"]
        passthrough = graph.passthrough.get(name)
        # One outside the key's passthrough is the same 404 as one not defined: a 403
        # would tell the key which names exist (as check_route_allowed).
        if passthrough is None or (key.passthrough is not None and name not in key.passthrough):
            raise NotFound(f"Pass-through '{name}' is not defined.")
        record.route = f"passthrough:{name}"
        provider = passthrough.provider
        record.provider, record.provider_type = provider.name, provider.type
        if live.telemetry.tracing.enabled:  # a refusal from here on is its span too
            record.span, record.trace_context = live.telemetry.tracing.request(
                f"{PASSTHROUGH} {name}", request.headers)
        method = "GET" if request.method == "HEAD" else request.method
        if method not in passthrough.methods:
            raise MethodNotAllowed(f"Pass-through '{name}' does not allow {request.method}; "
                                   f"it allows {', '.join(sorted(passthrough.methods))}.",
                                   headers={"allow": ", ".join(sorted(passthrough.methods))})
        path = _path(request)
        if path is None or not passthrough.allows(path):
            raise NotFound(f"Pass-through '{name}' does not allow this path.")
        await authorize_passthrough(live, key, exchange.user, name, provider.timeout_s,
                                    request.headers)
        settings = graph.settings
        declared = request.headers.get("content-length")
        limit = settings.max_passthrough_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the limit of "
                                  f"{limit} (settings.max_passthrough_bytes).")
        adapter = live.adapters.get(provider.name)
        if adapter is None:
            raise PassthroughUnavailable(f"Pass-through '{name}' is unavailable: provider "
                                         f"'{provider.name}' is "
                                         f"disabled ({provider.disabled_reason or 'not served'}).")
        target = raw_adapter(adapter, provider.name).raw_target()
        upload = _Upload(request.receive, limit, settings.body_read_timeout_s,
                         "content-length" in request.headers
                         or "transfer-encoding" in request.headers)
        body = None
        if billed_method(request.method) and upload.comes and not (
                declared is not None and declared.isdigit()
                and int(declared) > settings.max_request_bytes):
            # Read whole where it is as small as a chat body may be, for the output cap
            # and model a JSON one names: the hold is what that request may cost
            body = await upload.whole(settings.max_request_bytes)
        read: Asked | None = None
        if body is not None:  # a compressed one inflated (a copy): it goes on as it came
            read = asked(body, request.headers.get("content-encoding", ""),
                         settings.max_request_bytes, settings.max_request_json_containers)
        hold = held(passthrough, request.method, path, read)
        await exchange.admit(key, hold.tokens, hold.cost)
        live.telemetry.started(record)
        upstream, span = await self._send(live, record, passthrough, target, request, path,
                                          upload, body)
        return await _answered(live, exchange, passthrough, target, upstream, span,
                               hold if billed_method(request.method) else None,
                               asks_stream(path, read))

    async def _send(self, live: Live, record: RequestRecord, passthrough: Passthrough,
                    target: RawTarget, request: Request, path: str, upload: _Upload,
                    body: bytes | None) -> tuple[httpx.Response, Span]:
        """The request sent on (``body`` where it was read whole, else ``upload`` as it
        comes), its answer's status and headers come (its body to come). A client that
        leaves meanwhile (once its body is all here) stops the wait: a 499, its hold given
        back, where it held its place until a slow upstream answered or timed out. With
        it, the span of the call, which lasts as long as the answer does (its ender's)."""
        provider, settings = passthrough.provider, live.graph.settings
        headers = _sent_headers(request.headers, target, settings.user_header)
        query = _without_key(request.scope.get("query_string", b"").decode("latin-1"))
        url = target.root + path + ("?" + query if query else "")
        content = body if body is not None else upload.parts() if upload.comes else None
        client = self._client(provider)
        record.waiting_upstream()
        # The call's span: its traceparent goes upstream (``traced``), so a provider that
        # traces joins the request's trace.
        with live.telemetry.tracing.attempt(f"{PASSTHROUGH} {provider.name}",
                                            record.trace_context, ends=False) as span:
            span.set("gen_ai.operation.name", PASSTHROUGH)
            span.set("gen_ai.provider.name", PROVIDER_NAMES.get(provider.type, "aigw"))
            try:
                sent = client.build_request(request.method, url, headers=traced(headers),
                                            content=content)
                return await unless_gone(client.send(sent, stream=True), upload.gone,
                                         "the upstream answered"), span
            except httpx.TimeoutException as exc:
                failure: GatewayError = UpstreamTimeout(
                    f"provider '{provider.name}' timed out: "
                    f"{scrub(str(exc) or type(exc).__name__, provider)}", provider=provider.name)
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                failure = UpstreamConnectionError(
                    f"provider '{provider.name}' is unreachable: "
                    f"{scrub(str(exc) or type(exc).__name__, provider)}",
                    provider=provider.name)
            except BaseException as exc:  # the body refused (413, 408), or cancelled
                span.error(str(exc.code) if isinstance(exc, GatewayError) else "cancelled")
                span.end()
                raise
            finally:
                record.waited_upstream()
            span.error(str(failure.code))
            span.end()
            raise failure from None


def _path(request: Request) -> str | None:
    """The path after ``/passthrough/<name>`` as the client sent it (still
    percent-encoded, as it goes upstream); None for one that could climb out of what the
    globs allow once a server decodes it (a dot segment, an encoded / or \\)."""
    raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    parts = raw.decode("latin-1").split("/", 3)  # "", "passthrough", name, the rest
    if len(parts) < 4:
        return None
    path = "/" + parts[3]
    lowered = path.lower()
    if "%2f" in lowered or "%5c" in lowered or "\\" in path:
        return None
    segments = lowered.replace("%2e", ".").split("/")
    return None if any(segment in (".", "..") for segment in segments) else path


def _without_key(query: str) -> str:
    """``query`` as sent, less its ``key`` parameters (where an app may give its aigw key,
    as Gemini's API takes one): every other byte of it as it came.

    >>> _without_key("alt=sse&key=sk-aigw-dev&pageSize=2"), _without_key("k%65y=x")
    ('alt=sse&pageSize=2', '')
    """
    kept = [part for part in query.split("&")
            if urllib.parse.unquote_plus(part.partition("=")[0]) != "key"]
    return "&".join(part for part in kept if part)


def _sent_headers(headers: Headers, target: RawTarget, user_header: str) -> dict[str, str]:
    """The client's headers as they go upstream (``_KEPT_BACK`` and the gateway's own
    left out), with the provider's headers and credentials, and no compression."""
    named = {value.strip().lower() for value in headers.get("connection", "").split(",")}
    user = user_header.lower()
    sent = {name: value for name, value in headers.items()
            if name not in _KEPT_BACK and name not in named and name != user
            and not name.startswith("x-aigw-")}
    sent.update({name.lower(): value for name, value in target.headers.items()})
    sent["accept-encoding"] = "identity"
    return sent


class _Upload:
    """The request's body as it arrives, refused past ``limit`` bytes (413) and when no
    part of it comes for ``timeout_s`` (408: a client trickling it in), never held whole
    beyond what ``whole`` reads. Timed a part at a time, not whole as ``read_body`` does:
    an upload of hundreds of megabytes may rightly take longer than the wait for a small
    JSON body. ``comes``: the request has a body (a length, or chunks)."""

    def __init__(self, receive: Receive, limit: int, timeout_s: float, comes: bool) -> None:
        self._receive = receive
        self._limit = limit
        self._timeout_s = timeout_s
        self.comes = comes
        self._size = 0
        self._read: list[bytes] = []  # what ``whole`` read of a longer body, sent first
        self._ended = asyncio.Event()  # its last part came: only a disconnect follows
        if not comes:
            self._ended.set()

    async def _part(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout_s):
                message = await self._receive()
        except TimeoutError:
            raise RequestTimeout(f"No part of the request body came for {self._timeout_s:g} "
                                 "s (settings.body_read_timeout_s).") from None
        if message["type"] == "http.disconnect":  # a 499, as any client that left: it
            # was a 500, counted in the gateway's error rate for a client's dropped upload
            raise Cancelled("The client went away while sending the body.")
        chunk: bytes = message.get("body", b"")
        self._size += len(chunk)
        if self._size > self._limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {self._limit} bytes "
                                  "(settings.max_passthrough_bytes).")
        if not message.get("more_body", False):
            self._ended.set()
        return chunk

    async def whole(self, most: int) -> bytes | None:
        """The body, where it ends within ``most`` bytes; None for a longer one, what was
        read of it kept to go first (``parts``)."""
        while not self._ended.is_set():
            self._read.append(await self._part())
            if self._size > most:
                return None
        return b"".join(self._read)

    async def parts(self) -> AsyncIterator[bytes]:
        read, self._read = self._read, []
        for chunk in read:
            yield chunk
        while not self._ended.is_set():
            chunk = await self._part()
            if chunk:
                yield chunk

    async def gone(self) -> None:
        """Returns once the client has gone: watched from the body's end, as the messages
        before it are the body's."""
        await self._ended.wait()
        await client_gone(self._receive)


async def _answered(live: Live, exchange: Exchange, passthrough: Passthrough,
                    target: RawTarget, upstream: httpx.Response, span: Span,
                    hold: Held | None, asked_stream: bool) -> Response:
    """The upstream's answer, passed on: an error read whole (bounded) and scrubbed, any
    other streamed as it comes, its usage read on the way (``hold``: what an answer to a
    POST held; None: not billed) and billed as it ends; ``span`` (the call's) ended with
    it. ``asked_stream``: the request asked for a stream."""
    record, provider = exchange.record, passthrough.provider
    record.status = upstream.status_code
    record.relayed = True
    span.set("http.response.status_code", upstream.status_code)
    # httpx's items() names are lowercase. What is read of the headers is read from this
    # copy: each of httpx's Headers.get decodes all of them again (about 3 us apiece).
    headers = {name: value for name, value in upstream.headers.items()
               if name not in _NOT_ANSWERED}
    _own_id(record, provider, headers)
    encoding = headers.get("content-encoding", "").strip().lower()
    content_type = headers.get("content-type", "")
    if upstream.status_code >= 400:
        try:
            body = await _error_body(upstream)
        finally:
            await upstream.aclose()
        record.error = f"upstream_{upstream.status_code}"
        span.error(record.error)
        span.end()
        shown = body
        if Inflater.reads(encoding):  # read (and sent) inflated, to be scrubbed: its
            # bytes mangled as text went on as gzip, which no client could read
            shown = inflated(body, encoding, MAX_ERROR_BYTES) or b""
            headers.pop("content-encoding", None)
        if encoding in ("", "identity") or Inflater.reads(encoding):
            shown = scrub(shown.decode("utf-8", "replace"), provider).encode()
        headers.pop("content-length", None)
        await exchange.close()
        return Response(shown, status_code=upstream.status_code, headers=headers)
    record.finished_by_body = True  # when its last byte went out, or its client left
    # A stream as the answer is one (an event stream), or as the request asked: a file
    # or a whole JSON answer is timed as a whole answer is (not with the streams)
    record.stream = asked_stream or _streamed(content_type)
    reader = UsageReader(content_type if hold is not None else "", encoding)
    masks = _secrets(provider, target)
    return _Droppable(await settled_stream(
        _relayed(live, exchange, passthrough, upstream, reader, hold, masks, span), headers,
        content_type))


def _streamed(content_type: str) -> bool:
    """Whether an answer of ``content_type`` is a stream of events (SSE, or Ollama's
    newline-delimited JSON).

    >>> _streamed("text/event-stream; charset=utf-8"), _streamed("application/json")
    (True, False)
    """
    return content_type.partition(";")[0].strip().lower() in _STREAMED_MEDIA


def _own_id(record: RequestRecord, provider: Provider, answered: dict[str, str]) -> None:
    """The request ids of ``answered`` (the upstream's headers as the client gets them):
    ``x-request-id`` the gateway's (SnapshotMiddleware stamps it, as on every answer: the
    id of the access line an operator is handed), the upstream's own id moved to
    ``x-aigw-upstream-request-id`` and the line, for a ticket to the provider. Anthropic's
    ``request-id`` (its SDK's ``_request_id``) is the gateway's too, as /v1/messages has
    it."""
    # Looked up in the answer's headers as copied (a dict), not in httpx's Headers: its
    # every lookup decodes them all again.
    upstream_id = upstream_request_id(answered, id_header_of(provider.type))
    answered.pop("x-request-id", None)  # an empty one too, which named no request
    if upstream_id is None:
        return
    record.upstream_request_id = upstream_id
    if "request-id" in answered:
        answered["request-id"] = record.request_id
    answered[UPSTREAM_ID_HEADER] = upstream_id


class _Dropped(Exception):
    """The upstream cut an answer part of which the client has: its connection is
    dropped, so that it sees the answer cut (an answer ended cleanly would read as whole)."""


class _Droppable(Response):
    """``inner``, ended without its last message when the stream is ``_Dropped``: the
    server closes the connection, and nothing is raised past here (recorded and logged
    already, it needs no traceback)."""

    def __init__(self, inner: Response) -> None:  # no body of its own: inner's
        self.inner = inner
        self.status_code = inner.status_code
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with contextlib.suppress(_Dropped):
            await self.inner(scope, receive, send)


async def _error_body(upstream: httpx.Response) -> bytes:
    """An error answer's body, cut at ``MAX_ERROR_BYTES`` (an error page can be
    megabytes) or where the upstream cut it."""
    body = bytearray()
    try:
        async for chunk in upstream.aiter_raw():
            body += chunk
            if len(body) >= MAX_ERROR_BYTES:
                break
    except httpx.HTTPError:
        pass  # what came is shown: the status says what went wrong
    return bytes(body[:MAX_ERROR_BYTES])


def _secrets(provider: Provider, target: RawTarget) -> tuple[bytes, ...]:
    """What is masked in a streamed answer: the provider's key and header values (those
    long enough to be a credential), longest first."""
    values = {provider.api_key or "", *provider.headers.values(), *target.headers.values()}
    words = {word for value in values for word in (value, *value.split())
             if len(word) >= _SECRET_WORD}
    return tuple(sorted((word.encode() for word in words), key=len, reverse=True))


async def _relayed(live: Live, exchange: Exchange, passthrough: Passthrough,
                   upstream: httpx.Response, reader: UsageReader, hold: Held | None,
                   masks: tuple[bytes, ...], span: Span) -> AsyncGenerator[bytes, None]:
    """The answer's bytes as they come, masked; in its ``finally`` (however it ends) the
    request is billed what the answer reported, settled and recorded, and ``span`` (the
    call's) ended with what the answer said."""
    record = exchange.record
    held = b""  # the tail of what came that a key could begin, and the next part end
    sent = False
    record.waiting_upstream()  # the answer comes at the upstream's pace: not overhead
    try:
        async for chunk in upstream.aiter_raw():
            reader.feed(chunk)
            text = _masked(held + chunk, masks)
            cut = len(text) - _unfinished(text, masks)
            held = text[cut:]
            if cut:
                if not sent:  # the first byte the client has: its wait, as a stream's
                    record.ttft_s = time.perf_counter() - record.started
                sent = True
                yield text[:cut]
        if held:
            yield held
    except httpx.HTTPError as exc:
        # The upstream cut its answer: before its first part, a 502 error; after, the
        # client's answer is cut too (its connection dropped), and logged.
        provider = passthrough.provider
        failure = UpstreamConnectionError(
            f"provider '{provider.name}' cut its answer to pass-through '{passthrough.name}': "
            f"{scrub(str(exc) or type(exc).__name__, provider)}", provider=provider.name)
        log.warning("%s", failure.message)
        record.status, record.error = failure.status, str(failure.code)
        span.error(record.error)
        if sent:
            raise _Dropped from None
        raise failure from None
    except (asyncio.CancelledError, GeneratorExit):
        record.sent_status = record.status
        record.status, record.error = live.shutdown.cut()
        span.error("cancelled")
        raise
    finally:
        with anyio.CancelScope(shield=True):
            try:
                await upstream.aclose()
            finally:
                record.waited_upstream()
                _bill(record, passthrough, reader, hold)
                label_answer(span, record)
                span.end()
                await exchange.close()
                live.telemetry.finish(record)


def _unfinished(data: bytes, masks: tuple[bytes, ...]) -> int:
    """How many of ``data``'s last bytes begin one of ``masks``: held back until the next
    part tells whether the mask goes on there (most parts end in none, and go at once).

    >>> _unfinished(b"key: sk-pro", (b"sk-provider-1",)), _unfinished(b"ok", (b"sk-1",))
    (6, 0)
    """
    longest = 0
    for mask in masks:
        for size in range(min(len(mask) - 1, len(data)), longest, -1):
            if data.endswith(mask[:size]):
                longest = size
                break
    return longest


def _masked(data: bytes, masks: tuple[bytes, ...]) -> bytes:
    for mask in masks:
        if mask in data:
            data = data.replace(mask, b"*" * len(mask))
    return data


def _bill(record: RequestRecord, passthrough: Passthrough, reader: UsageReader,
          hold: Held | None) -> None:
    """The answer's usage on the request's record, at the price of the provider's
    deployment of the model it names (none: its tokens counted, nothing billed). A JSON
    or event-stream answer to a POST in an encoding aigw cannot read (``br``, ``zstd``:
    an upstream that compressed though asked for ``identity``) is billed what the
    request held, its worst case: read as nothing, it was free."""
    reported = reader.reported()
    if reported is None:
        if hold is not None and reader.unreadable is not None:
            log.warning("pass-through %r answered in encoding %r, which aigw cannot "
                        "read: billed what it held (%d tokens)", passthrough.name,
                        reader.unreadable[:64], hold.tokens)
            record.prompt_tokens, record.completion_tokens = hold.prompt, hold.output
            record.cost = hold.cost
            if hold.deployment is not None:
                record.deployment = hold.deployment.name
        return
    usage = reported.usage
    record.prompt_tokens, record.completion_tokens = usage.prompt_tokens, usage.completion_tokens
    record.cached_tokens = usage.cached_tokens
    record.cache_write_tokens = usage.cache_creation_tokens
    record.response_model = reported.model
    deployment = priced(passthrough.prices, reported.model)
    if deployment is not None:
        record.deployment = deployment.name
        record.cost = usage.cost(deployment.price)
