"""HTTP to providers: one pooled client per provider, SSE parsing, failures classified.

What runs under httpx is chosen by measurement (bench/BENCH.md): aiohttp's
transport (``httpx-aiohttp``) when installed, httpx's own otherwise. Every failure
leaves here as an ``UpstreamError`` subclass with any provider key scrubbed out.
"""

from __future__ import annotations

import email.utils
import functools
import json
import math
import re
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx

from aigw.compiler.graph import Provider

from . import jsonio
from .error_pages import described
from .errors import (
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamConnectionError,
    UpstreamContentPolicy,
    UpstreamContextLength,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamResponseTooLarge,
    UpstreamServerError,
    UpstreamTimeout,
    UpstreamUnusable,
)
from .telemetry.tracing import traced

# Phrases providers use for "the prompt is too long", whatever their error codes say.
_CONTEXT_PHRASES = (
    "context length",
    "context_length",
    "context window",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "input is too long",
    "exceeds the maximum number of tokens",
    "input token count",
    "reduce the length",
)
_POLICY_PHRASES = ("content policy", "content_policy", "content management policy", "safety")


# Where each type of provider names its own id of a request, which its support asks
# for: OpenAI (Azure OpenAI, vLLM with --enable-request-id-headers) x-request-id,
# Anthropic request-id, Bedrock x-amzn-requestid. Gemini and Vertex send none, and their
# answers are not searched for one: one header looked up a call, where there is one.
_UPSTREAM_ID_HEADERS = MappingProxyType({
    "openai": "x-request-id", "azure_openai": "x-request-id",
    "openai_compatible": "x-request-id", "vllm": "x-request-id",
    "anthropic": "request-id", "bedrock": "x-amzn-requestid",
})
# Where the gateway gives it on: x-request-id is always the gateway's own (its access line's).
UPSTREAM_ID_HEADER = "x-aigw-upstream-request-id"
MAX_UPSTREAM_ID = 256  # the most of one kept (a provider's are 30 to 40 characters)


def id_header_of(provider_type: str) -> str | None:
    """The answer header in which a provider of ``provider_type`` names its id of a
    request; None for a type that names none.

    >>> id_header_of("anthropic"), id_header_of("gemini")
    ('request-id', None)
    """
    return _UPSTREAM_ID_HEADERS.get(provider_type)


def upstream_request_id(headers: Mapping[str, str], name: str | None) -> str | None:
    """The provider's id of the request its answer's ``headers`` answer, in header
    ``name`` (``id_header_of``'s), if it is there.

    >>> upstream_request_id({"request-id": "req_011CS"}, "request-id")
    'req_011CS'
    """
    if name is None:
        return None
    value = headers.get(name)
    # Visible ASCII only: it goes on in a header of the gateway's own (one past Latin-1
    # could not be sent at all) and into the access line.
    if value and value.isascii() and value.isprintable():
        return value[:MAX_UPSTREAM_ID]
    return None


def make_client(provider: Provider, native: bool = False) -> httpx.AsyncClient:
    """A pooled client for one provider, with its limits and timeouts from the config.
    ``native``: on httpx's own transport, whatever is installed: an error a streamed
    request body raises (a pass-through's size cap) comes out of ``send`` as it is, the
    connection dropped, where aiohttp's writes the body in a task of its own and the
    request went on to time out."""
    limits = httpx.Limits(
        max_connections=provider.max_connections,
        max_keepalive_connections=provider.max_connections,
        keepalive_expiry=60.0,
    )
    timeout = httpx.Timeout(provider.timeout_s, connect=min(10.0, provider.timeout_s))
    try:
        from httpx_aiohttp import AiohttpTransport
        if native:
            raise ImportError("httpx's own transport asked for")
    except ImportError:  # the optional fast transport is not installed (or not wanted)

        def build(proxy: httpx.Proxy | None) -> httpx.AsyncBaseTransport:
            return httpx.AsyncHTTPTransport(limits=limits, proxy=proxy)
    else:

        def build(proxy: httpx.Proxy | None) -> httpx.AsyncBaseTransport:
            # Its own aiohttp session would keep cookies too: one without a jar instead.
            fast = AiohttpTransport(limits=limits, proxy=proxy, client=lambda: (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=provider.max_connections,
                                                   keepalive_timeout=60.0,
                                                   ssl=fast.ssl_context),
                    cookie_jar=aiohttp.DummyCookieJar())))
            return fast

    transport = _EnvironmentProxies(build)
    return httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits,
                             cookies=no_cookies())


def no_cookies() -> CookieJar:
    """A cookie jar that keeps nothing, for a client shared by every tenant: a cookie one
    request was given (a provider's, a tool server's session) would go with the next
    request to that host, whoever made it. A jar, not ``httpx.Cookies``: httpx copies
    those into a jar of its own, the policy lost."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=()))


class _EnvironmentProxies(httpx.AsyncBaseTransport):
    """A transport per origin, each through the proxy the environment names for it
    (``env_proxy``), worked out once an origin: httpx reads HTTP(S)_PROXY only for the
    transports it builds itself, never for one it is given."""

    def __init__(self, build: Callable[[httpx.Proxy | None], httpx.AsyncBaseTransport]):
        self._build = build
        self._by_origin: dict[tuple[bytes, bytes, int | None], httpx.AsyncBaseTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = (url.raw_scheme, url.raw_host, url.port)
        transport = self._by_origin.get(origin)
        if transport is None:
            proxy = env_proxy(str(url))
            transport = self._build(httpx.Proxy(proxy) if proxy else None)
            self._by_origin[origin] = transport
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        for transport in self._by_origin.values():
            await transport.aclose()


def env_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url``: ``HTTPS_PROXY`` or ``HTTP_PROXY``
    by its scheme, unless ``NO_PROXY`` lists its host."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """What a provider said when it failed, before classification."""

    status: int
    message: str
    kind: str  # the provider's own error type or code, lowercased ("" if none)
    retry_after: float | None
    param: str | None = None  # the parameter it named (OpenAI's errors name one)
    code: str | None = None  # its own error code, as it wrote it (OpenAI's "invalid_value")
    request_id: str | None = None  # its id of the request (``upstream_request_id``)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP
    date); None when neither says anything usable ("soon", "inf", a broken date)."""
    milliseconds = _seconds(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, parsed.timestamp() - time.time())


def _seconds(value: str | None) -> float | None:
    try:
        number = float(value) if value else None
    except ValueError:
        return None
    # inf or nan would break the arithmetic (and the Retry-After sent on to the client).
    return max(0.0, number) if number is not None and math.isfinite(number) else None


def classify(failure: UpstreamFailure, provider: Provider) -> UpstreamError:
    """The exception for a failed upstream call, by status, then by the provider's words
    (scrubbed, then cut to ``MAX_MESSAGE``: cut first, a key across the cut escaped)."""
    message = scrub(failure.message, provider)[:MAX_MESSAGE] or f"HTTP {failure.status}"
    text = f"{failure.kind} {message}".lower()
    prefix = f"provider '{provider.name}'"
    kwargs: dict[str, Any] = {
        "provider": provider.name,
        "retry_after": failure.retry_after,
        "upstream_status": failure.status,
        "upstream_request_id": failure.request_id,
    }
    status = failure.status
    if status in (401, 403):
        return UpstreamAuthError(f"{prefix} refused the gateway's credentials (HTTP {status})",
                                 **kwargs)
    if status == 402 or (status == 429 and "insufficient_quota" in failure.kind):
        return UpstreamUnusable(f"{prefix} refused for its account's credit or quota "
                                f"(HTTP {status}): {message}", **kwargs)
    if status == 404:
        return UpstreamUnusable(f"{prefix} has no such model or endpoint (HTTP 404): "
                                f"{message}", **kwargs)
    if status == 400 and failure.kind == "failed_precondition":
        # Google's answer for an account it will not serve: an unsupported region, no
        # billing. Another member (another account or provider) may well serve it.
        return UpstreamUnusable(f"{prefix} will not serve this account (HTTP 400 "
                                f"FAILED_PRECONDITION): {message}", **kwargs)
    if status == 429:
        return UpstreamRateLimited(f"{prefix} is rate limiting: {message}", **kwargs)
    if status in (503, 529) or "overloaded" in text:
        return UpstreamOverloaded(f"{prefix} is overloaded: {message}", **kwargs)
    if status in (408, 504):
        return UpstreamTimeout(f"{prefix} timed out: {message}", **kwargs)
    if status >= 500:
        return UpstreamServerError(f"{prefix} failed: {message}", **kwargs)
    # A refusal of the request names the parameter as the client sent it: OpenAI-format
    # upstreams, the only ones that name one, are sent the client's own parameters.
    if failure.param is not None:
        kwargs["param"] = scrub(failure.param, provider)
    if any(phrase in text for phrase in _CONTEXT_PHRASES):
        return UpstreamContextLength(f"{prefix}: {message}", **kwargs)
    if any(phrase in text for phrase in _POLICY_PHRASES):
        return UpstreamContentPolicy(f"{prefix}: {message}", **kwargs)
    if status == 413:
        return UpstreamContextLength(f"{prefix}: request too large: {message}", **kwargs)
    if failure.code is not None:
        kwargs["upstream_code"] = scrub(failure.code, provider)
    return UpstreamBadRequest(f"{prefix} rejected the request: {message}", **kwargs)


def scrub(text: str, provider: Provider) -> str:
    """``text`` with the provider's key (and anything that looks like its tail) removed,
    and the values of its custom ``headers:``, which may carry a credential of their own
    (``Helicone-Auth: Bearer sk-...``): each whole value and each long word of one."""
    key = provider.api_key
    if key:
        text = text.replace(key, "***")
        if len(key) > 8:
            text = text.replace(key[-4:], "***")
    return scrub_values(text, provider.headers.values())


def scrub_url(text: str, url: str, shown: str) -> str:
    """``text`` with ``url`` said as ``shown``, and its query cut out wherever it stands
    (a ${ENV} there may be a token, ``?token=...``): an error may quote the URL as its
    client normalised it (``:80`` dropped, the host lower-cased), not as written."""
    query = urllib.parse.urlsplit(url).query
    text = text.replace(url, shown)
    return text.replace(query, "***") if query else text


def scrub_values(text: str, values: Iterable[str]) -> str:
    """``text`` without each of ``values`` (header values that may carry a credential):
    each whole value and each long word of one (``Bearer sk-...``: the token)."""
    for value in values:
        for secret in (value, *value.split()):
            if len(secret) >= _SECRET_WORD:
                text = text.replace(secret, "***")
    return text


# The most of a provider's error text passed on: an error page can be megabytes.
MAX_MESSAGE = 2000

# The shortest word of a header value scrubbed from error text: tokens are longer, and
# shorter words ("Bearer", a version date) would blank out ordinary text.
_SECRET_WORD = 12


def failure_from_response(status: int, body: bytes, headers: Mapping[str, str],
                          id_header: str | None = None) -> UpstreamFailure:
    """Read the error out of the common JSON shapes: OpenAI, Anthropic and Google all nest
    it under ``error`` with a message and a type, code or status. The message is whole:
    ``classify`` cuts it, once the key is scrubbed out. The provider's id of the request
    is read from ``id_header`` (``id_header_of``'s). A body that is no JSON is the
    message as it is, unless it is a page or no text (``error_pages.described``)."""
    message = body.decode("utf-8", "replace")
    kind = ""
    param = code = None
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    wait = retry_after(headers)
    if document is None:
        message = described(status, body, headers.get("content-type")) or message
    if isinstance(document, dict):
        error = document.get("error", document)
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            # Google's "code" is the HTTP status again (a number); its "status" says what.
            named = (error.get(field) for field in ("code", "type", "status"))
            kind = next((value for value in named if isinstance(value, str) and value), "")
            if wait is None:
                wait = _retry_delay(error.get("details"))
            param, code = _text(error.get("param")), _text(error.get("code"))
        elif isinstance(error, str):
            message = error
    return UpstreamFailure(status, message, kind.lower(), wait, param, code,
                           upstream_request_id(headers, id_header))


def _text(value: object) -> str | None:
    """A short string as it is; anything else (Google's numeric code) is none."""
    return value if isinstance(value, str) and 0 < len(value) <= 200 else None


_RETRY_DELAY = re.compile(r"^(\d+(?:\.\d+)?)s$")


def _retry_delay(details: object) -> float | None:
    """Google's ``google.rpc.RetryInfo`` (``"retryDelay": "37s"``), which Gemini and
    Vertex send in the error body instead of a Retry-After header."""
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict):
            match = _RETRY_DELAY.match(str(detail.get("retryDelay", "")))
            if match:
                return float(match.group(1))
    return None


def json_event(data: str | bytes, provider: Provider) -> dict[str, Any]:
    """One streamed event's JSON object (an SSE event's data, an event-stream frame's
    payload); anything else is the provider's fault. Parsed by pydantic-core (one call,
    where the standard library's decoder made ten an event: a stream's events are most of
    its parsing), and by the standard library only where pydantic-core refuses what it
    reads (the escape of a lone surrogate)."""
    try:
        document = jsonio.loads(data)
    except ValueError:
        try:
            document = json.loads(data)
        except ValueError:
            document = None
    if not isinstance(document, dict):
        raise UpstreamServerError(
            f"provider '{provider.name}' sent an event that is not a JSON object",
            provider=provider.name,
        )
    return document


def too_large(provider: Provider, what: str) -> UpstreamResponseTooLarge:
    mebibytes = provider.max_response_bytes / (1 << 20)
    return UpstreamResponseTooLarge(
        f"provider '{provider.name}' sent {what} larger than its max_response_mb "
        f"({mebibytes:g} MiB); raise providers.{provider.name}.max_response_mb if such "
        "answers are expected", provider=provider.name)


async def read_capped(chunks: AsyncIterable[bytes], provider: Provider) -> bytes:
    """A whole answer, failing once it passes the provider's ``max_response_bytes`` (a
    wrong ``base_url`` serving a huge file, a server that never ends its answer) instead
    of filling the worker's memory."""
    return await read_bounded(chunks, provider.max_response_bytes,
                              lambda: too_large(provider, "an answer"))


async def read_bounded(
    chunks: AsyncIterable[bytes], limit: int, too_big: Callable[[], Exception]
) -> bytes:
    """A whole body, read chunk by chunk: past ``limit`` bytes, ``too_big()`` is raised
    when it gets there, before the body is held whole. The bound is on the decoded
    bytes, so a compressed body cannot slip past it."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_big()
        parts.append(chunk)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class LineSplitter:
    """A stream's lines as its chunks arrive (ended by LF, CRLF or a CR alone, as SSE
    allows; the ending removed), none longer than ``limit`` bytes: ``too_big()`` is
    raised as a line passes it, before it is held whole (a provider's
    ``max_response_bytes``, an MCP server's answer cap). aiohttp's own line reader stops
    at 512 KiB (an image in one event is more), and httpx's has no bound.

    ``feed`` gives the lines a chunk ends, ``end`` the last one, unended. A line past the
    bound is raised by the next call, after the lines before it were given, as a reader
    that takes them one at a time would see it. One call a chunk, not an async
    generator's resumption a line: every event of every stream is split here."""

    __slots__ = ("_after_cr", "_failed", "_limit", "_parts", "_size", "_too_big")

    def __init__(self, limit: int, too_big: Callable[[], Exception]) -> None:
        self._limit = limit
        self._too_big = too_big
        self._parts: list[bytes] = []  # the line so far, when it spans chunks
        self._size = 0
        # The last chunk ended with a CR: an LF opening the next one ends no line.
        self._after_cr = False
        self._failed = False  # a line passed the bound: the next call raises

    def feed(self, chunk: bytes) -> list[str]:
        if self._failed:
            raise self._too_big()
        if self._after_cr and chunk:
            self._after_cr = False
            if chunk[0] == 0x0A:
                chunk = chunk[1:]
        if 0x0D in chunk:  # a CR; an int is a memchr, where b"\r" costs five times more
            # Most streams end lines with LF and never get here. A CR ends a line
            # everywhere (SSE has no CR inside a line), so CRLF and CR become LF.
            self._after_cr = chunk[-1] == 0x0D
            chunk = chunk.replace(b"\r\n", b"\n")
            if 0x0D in chunk:
                chunk = chunk.replace(b"\r", b"\n")
        parts = self._parts
        if not parts and chunk[-1:] == b"\n" and len(chunk) <= self._limit:
            # The usual chunk, whole lines (an event or a few) and none too long: decoded
            # at once (UTF-8 never has an LF inside a character, so as line by line)
            return chunk[:-1].decode("utf-8", "replace").split("\n")
        lines: list[str] = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            piece = chunk[start:end]
            if parts:
                parts.append(piece)
                piece, parts, self._size = b"".join(parts), [], 0
                self._parts = parts
            start = end + 1
            if len(piece) > self._limit:
                self._failed = True
                return lines
            lines.append(piece.decode("utf-8", "replace"))
        if start < len(chunk):
            rest = chunk[start:]
            self._size += len(rest)
            if self._size > self._limit:
                self._failed = True
                return lines
            parts.append(rest)
        return lines

    def end(self) -> list[str]:
        """The last line, where the stream ended without ending it."""
        if self._failed:
            raise self._too_big()
        if self._parts:
            return [b"".join(self._parts).decode("utf-8", "replace")]
        return []


async def capped_lines(chunks: AsyncIterable[bytes], limit: int,
                       too_big: Callable[[], Exception]) -> AsyncIterator[str]:
    """``LineSplitter``'s lines of ``chunks``, one at a time."""
    splitter = LineSplitter(limit, too_big)
    async for chunk in chunks:
        for line in splitter.feed(chunk):
            yield line
    for line in splitter.end():
        yield line


class EventDecoder:
    """Server-sent events per the HTML spec, as a provider's stream arrives: ``event:``
    and ``data:`` fields, blank-line ended, over ``LineSplitter``'s lines at the
    provider's ``max_response_bytes``. An event's data, however many lines it spans, is
    bounded as one line is. ``feed`` gives the events a chunk ends, ``end`` the last
    one; an event past the bound is raised by the next call, as a line is."""

    __slots__ = ("_data", "_event", "_failed", "_lines", "_provider", "_size")

    def __init__(self, provider: Provider) -> None:
        self._provider = provider
        self._lines = LineSplitter(provider.max_response_bytes,
                                   functools.partial(too_large, provider, "a line"))
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._failed = False

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        if self._failed:
            raise too_large(self._provider, "an event")
        return self._events(self._lines.feed(chunk))

    def end(self) -> list[tuple[str, str]]:
        if self._failed:
            raise too_large(self._provider, "an event")
        events = self._events(self._lines.end())
        if self._failed:
            raise too_large(self._provider, "an event")
        if self._data:
            events.append((self._event or "message", "\n".join(self._data)))
        return events

    def _events(self, lines: list[str]) -> list[tuple[str, str]]:
        events: list[tuple[str, str]] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    events.append((self._event or "message", "\n".join(data)))
                self._event, data, self._size = "", [], 0
                self._data = data
                continue
            # Indexed and sliced, not startswith(): no call for each line of every stream
            if line[0] == ":":
                continue  # a comment, used as a keep-alive
            field, _, value = line.partition(":")
            value = value[1:] if value[:1] == " " else value
            if field == "event":
                self._event = value
            elif field == "data":
                data.append(value)
                self._size += len(value)
                if self._size > self._provider.max_response_bytes:
                    self._failed = True
                    return events
        return events


class Upstream:
    """One provider's HTTP client and the calls every adapter makes through it."""

    def __init__(self, provider: Provider, client: httpx.AsyncClient | None = None) -> None:
        self.provider = provider
        self.client = client or make_client(provider)
        self._id_header = id_header_of(provider.type)

    async def post_json(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> dict[str, Any]:
        document, _upstream_id = await self.post_json_identified(url, body, headers)
        return document

    async def post_json_identified(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> tuple[dict[str, Any], str | None]:
        """``post_json``'s answer, and the provider's id of the request, if it gave one."""
        request = self.client.build_request("POST", url, json=body, headers=traced(headers))
        try:
            response = await self.client.send(request, stream=True)
            content = await self._read(response)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 400:
            raise classify(
                failure_from_response(response.status_code, content, response.headers,
                                      self._id_header),
                self.provider,
            )
        try:
            document = json.loads(content)
        except ValueError:
            raise UpstreamServerError(
                f"provider '{self.provider.name}' answered with something that is not JSON",
                provider=self.provider.name,
            ) from None
        if not isinstance(document, dict):
            raise UpstreamServerError(
                f"provider '{self.provider.name}' answered with JSON that is not an object",
                provider=self.provider.name,
            )
        return document, upstream_request_id(response.headers, self._id_header)

    async def post_sse(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str],
        noted: list[str] | None = None,
    ) -> AsyncIterator[tuple[str, str]]:
        """POST and yield each server-sent event as ``(event name, data)``.

        The status is checked before the first event, so a failure raises before any
        byte could have been sent on to the client (and a fallback is still possible).
        The provider's id of the request, where it gave one, is appended to ``noted``
        before the first event.
        """
        request = self.client.build_request(
            "POST", url, json=body, headers={**traced(headers), "accept": "text/event-stream"}
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        try:
            if response.status_code >= 400:
                content = await self._read(response)
                raise classify(
                    failure_from_response(response.status_code, content, response.headers,
                                          self._id_header),
                    self.provider,
                )
            if noted is not None and (
                    upstream_id := upstream_request_id(response.headers, self._id_header)):
                noted.append(upstream_id)
            async for event in sse_events(response.aiter_bytes(), self.provider):
                yield event
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from None
        finally:
            await response.aclose()

    async def _read(self, response: httpx.Response) -> bytes:
        """A streamed response's body, within ``max_response_mb``; the response closed."""
        try:
            return await read_capped(response.aiter_bytes(), self.provider)
        finally:
            await response.aclose()

    def _transport_error(self, exc: httpx.HTTPError) -> UpstreamError:
        name = self.provider.name
        detail = scrub(str(exc) or type(exc).__name__, self.provider)
        # httpx-aiohttp reports a refused connection as ConnectTimeout; its cause tells.
        refused = isinstance(exc.__cause__, OSError) and not isinstance(exc.__cause__, TimeoutError)
        if isinstance(exc, httpx.TimeoutException) and not refused:
            return UpstreamTimeout(f"provider '{name}' timed out: {detail}", provider=name)
        return UpstreamConnectionError(f"provider '{name}' is unreachable: {detail}",
                                       provider=name)

    async def aclose(self) -> None:
        await self.client.aclose()


async def sse_events(
    chunks: AsyncIterable[bytes], provider: Provider
) -> AsyncIterator[tuple[str, str]]:
    """``EventDecoder``'s events of a provider's stream, one at a time."""
    decoder = EventDecoder(provider)
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.end():
        yield event
