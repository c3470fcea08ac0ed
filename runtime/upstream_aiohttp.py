"""The upstream calls of ``runtime.upstream``, made with aiohttp's client directly.

Measured on the benchmark machine (bench/BENCH.md, "floor"), a pass-through using
aiohttp's client sustains about 1.5x the throughput of httpx over aiohttp's transport:
httpx's request building is the largest single cost on the request path. Adapters that
need nothing from httpx (no ``httpx.Auth``, no event hooks) get this ``JsonUpstream``;
the others keep ``Upstream``. Both raise the same ``UpstreamError`` classes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from aigw.compiler.graph import Provider

from . import jsonio
from .errors import UpstreamConnectionError, UpstreamError, UpstreamServerError, UpstreamTimeout
from .telemetry.tracing import traced
from .upstream import (
    EventDecoder,
    classify,
    env_proxy,
    failure_from_response,
    id_header_of,
    read_capped,
    scrub,
    too_large,
    upstream_request_id,
)

log = logging.getLogger("aigw.upstream")


@dataclass(frozen=True, slots=True)
class FormFile:
    """A file a multipart POST sends (an audio upload, an image to edit: sent on as the
    client sent it)."""

    field: str
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class RawAnswer:
    """An answer passed through as the provider wrote it (a transcript as text, SRT, VTT
    or JSON), read whole within ``max_response_mb``."""

    body: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class ByteStream:
    """An answer's body being read (speech audio): its status was checked, its bytes come
    as they arrive (``chunks``, each chunk released as it is passed on); ``aclose`` lets
    the connection go whether or not they were read."""

    content_type: str
    chunks: AsyncIterator[bytes]
    release: Callable[[], None]

    def aclose(self) -> None:
        self.release()


class JsonUpstream(Protocol):
    """What an adapter calls: a JSON POST, a server-sent-events POST, and close."""

    async def post_json(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> dict[str, Any]: ...

    async def post_json_identified(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> tuple[dict[str, Any], str | None]: ...

    def post_sse(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str],
        noted: list[str] | None = None,
    ) -> AsyncIterator[tuple[str, str]]: ...

    async def aclose(self) -> None: ...


class AudioUpstream(JsonUpstream, Protocol):
    """And what OpenAI's audio API takes: a multipart POST answered whole (a transcript)
    or in events (a streamed one), a JSON POST answered in bytes as they come (speech),
    and its Realtime API's WebSocket."""

    async def ws_connect(self, url: str,
                         headers: Mapping[str, str]) -> aiohttp.ClientWebSocketResponse: ...

    async def post_form(
        self, url: str, fields: Sequence[tuple[str, str]], uploads: Sequence[FormFile],
        headers: Mapping[str, str],
    ) -> RawAnswer: ...

    async def post_streamed(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> ByteStream: ...

    def post_form_sse(
        self, url: str, fields: Sequence[tuple[str, str]], uploads: Sequence[FormFile],
        headers: Mapping[str, str],
    ) -> AsyncIterator[tuple[str, str]]: ...


def open_upstream(provider: Provider) -> AiohttpUpstream:
    """The fastest upstream client this machine has for ``provider``."""
    return AiohttpUpstream(provider)


class AiohttpUpstream:
    """One provider's pooled aiohttp session (opened on first use, inside the event loop)."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self._id_header = id_header_of(provider.type)
        self._session: aiohttp.ClientSession | None = None
        # Realtime sessions' WebSockets (``ws_connect``), in a pool of their own: each holds
        # its connection for as long as the session lasts, and in the calls' pool a few
        # hundred would leave no connection for a chat call to the same provider.
        self._sockets: aiohttp.ClientSession | None = None
        self._proxies: dict[str, str | None] = {}  # by URL: the proxy the environment names
        self._streams: set[aiohttp.ClientResponse] = set()  # being read: closed by aclose
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(10.0, provider.timeout_s), sock_read=provider.timeout_s
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.provider.max_connections, keepalive_timeout=60.0,
                enable_cleanup_closed=True,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, auto_decompress=True,
                # No cookie jar: a provider's cookies (a load balancer's affinity, say)
                # must not ride along on every tenant's later requests, and the jar's
                # filtering of each request's URL is work for nothing.
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def post_json(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> dict[str, Any]:
        document, _upstream_id = await self.post_json_identified(url, body, headers)
        return document

    async def post_json_identified(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> tuple[dict[str, Any], str | None]:
        """``post_json``'s answer, and the provider's id of the request, if it gave one."""
        payload = jsonio.dumps(body)
        try:
            async with self._client().post(
                url, data=payload, headers={**traced(headers), "content-type": "application/json"},
                allow_redirects=False, proxy=self._proxy(url),
            ) as response:
                raw = await self._whole(response.content)
                status, response_headers = response.status, response.headers
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._transport_error(exc) from None
        if 300 <= status < 400:
            raise self._redirected(status, response_headers)
        if status >= 400:
            raise classify(failure_from_response(status, raw, response_headers, self._id_header),
                           self.provider)
        try:
            document = jsonio.loads(raw)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise UpstreamServerError(
                f"provider '{self.provider.name}' answered with something that is not a "
                "JSON object", provider=self.provider.name,
            )
        return document, upstream_request_id(response_headers, self._id_header)

    def post_sse(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str],
        noted: list[str] | None = None,
    ) -> AsyncIterator[tuple[str, str]]:
        """POST and yield each server-sent event; the status is checked before the first.
        The provider's id of the request, where it gave one, is appended to ``noted``
        before the first event."""
        return self._events(url, jsonio.dumps(body),
                            {**traced(headers), "content-type": "application/json",
                             "accept": "text/event-stream"}, noted)

    def post_form_sse(
        self, url: str, fields: Sequence[tuple[str, str]], uploads: Sequence[FormFile],
        headers: Mapping[str, str],
    ) -> AsyncIterator[tuple[str, str]]:
        """A multipart POST (a streamed transcription) answered in server-sent events,
        yielded as they come; the status is checked before the first."""
        return self._events(url, _form(fields, uploads),
                            {**traced(headers), "accept": "text/event-stream"})

    async def _events(self, url: str, data: bytes | aiohttp.FormData,
                      headers: Mapping[str, str],
                      noted: list[str] | None = None) -> AsyncIterator[tuple[str, str]]:
        try:
            response = await self._client().post(
                url, data=data, headers=headers, allow_redirects=False, proxy=self._proxy(url),
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._transport_error(exc) from None
        self._streams.add(response)
        try:
            if 300 <= response.status < 400:
                raise self._redirected(response.status, response.headers)
            if response.status >= 400:
                raw = await read_capped(response.content.iter_any(), self.provider)
                raise classify(failure_from_response(response.status, raw, response.headers,
                                                     self._id_header),
                               self.provider)
            if noted is not None and (
                    upstream_id := upstream_request_id(response.headers, self._id_header)):
                noted.append(upstream_id)
            # The events decoded here, not by a generator over one over the lines: every
            # chunk of every stream passes through as many resumptions as there are layers
            decoder = EventDecoder(self.provider)
            async for chunk in response.content.iter_any():
                for event in decoder.feed(chunk):
                    yield event
            for event in decoder.end():
                yield event
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._transport_error(exc) from None
        finally:
            self._streams.discard(response)
            response.release()

    async def post_form(
        self, url: str, fields: Sequence[tuple[str, str]], uploads: Sequence[FormFile],
        headers: Mapping[str, str],
    ) -> RawAnswer:
        """A multipart/form-data POST (``fields`` in order, then the files); the answer read
        whole, whatever its content type."""
        try:
            async with self._client().post(
                url, data=_form(fields, uploads), headers=traced(headers), allow_redirects=False,
                proxy=self._proxy(url),
            ) as response:
                raw = await self._whole(response.content)
                status, response_headers = response.status, response.headers
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._transport_error(exc) from None
        self._check(status, raw, response_headers)
        return RawAnswer(raw, response_headers.get("content-type", "application/octet-stream"))

    async def post_streamed(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> ByteStream:
        """A JSON POST whose answer's bytes are passed on as they come (speech audio):
        the status is checked first, so a failure raises before any byte went on."""
        try:
            response = await self._client().post(
                url, data=jsonio.dumps(body),
                headers={**traced(headers), "content-type": "application/json"},
                allow_redirects=False, proxy=self._proxy(url),
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._transport_error(exc) from None
        if response.status >= 300:
            try:
                raw = await read_capped(response.content.iter_any(), self.provider)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise self._transport_error(exc) from None
            finally:
                response.release()
            self._check(response.status, raw, response.headers)
        self._streams.add(response)

        def release() -> None:
            self._streams.discard(response)
            response.release()

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.content.iter_any():
                    yield chunk
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise self._transport_error(exc) from None
            finally:
                release()

        return ByteStream(response.headers.get("content-type", "application/octet-stream"),
                          chunks(), release)

    async def _whole(self, content: aiohttp.StreamReader) -> bytes:
        """An answer's body, within the provider's ``max_response_bytes`` (``read_capped``).
        One that came whole with its headers (a chat completion on a fast link, most
        often) is taken from the buffer as it lies: read through the chunk iterator, it
        cost twenty Python calls more a request."""
        if not content.is_eof():
            return await read_capped(content.iter_any(), self.provider)
        raw = content.read_nowait()
        if len(raw) > self.provider.max_response_bytes:
            raise too_large(self.provider, "an answer")
        return raw

    def _check(self, status: int, raw: bytes, headers: Mapping[str, str]) -> None:
        if 300 <= status < 400:
            raise self._redirected(status, headers)
        if status >= 400:
            raise classify(failure_from_response(status, raw, headers, self._id_header),
                           self.provider)

    def _proxy(self, url: str) -> str | None:
        """The proxy HTTP(S)_PROXY names for ``url`` (None: none, or NO_PROXY spares it),
        worked out once a URL. aiohttp's own ``trust_env`` would look it up, and the
        .netrc file, in a worker thread on every request."""
        if url not in self._proxies:
            self._proxies[url] = env_proxy(url)
        return self._proxies[url]

    def _redirected(self, status: int, headers: Mapping[str, str]) -> UpstreamError:
        """Redirects are not followed: aiohttp would resend the request, the provider's
        key in ``x-api-key`` or ``api-key`` with it (it drops only Authorization when
        the redirect leaves the origin). The target is logged, not told to the client."""
        log.warning("provider '%s' redirected a request (HTTP %d) to %s; redirects are not "
                    "followed: set its base_url to the final address", self.provider.name,
                    status, scrub(headers.get("location", "(no location)"), self.provider))
        return UpstreamServerError(
            f"provider '{self.provider.name}' answered with a redirect (HTTP {status}), "
            "which aigw does not follow", provider=self.provider.name)

    def _transport_error(self, exc: BaseException) -> UpstreamError:
        name = self.provider.name
        detail = scrub(str(exc) or type(exc).__name__, self.provider)
        if isinstance(exc, TimeoutError):
            return UpstreamTimeout(f"provider '{name}' timed out: {detail}", provider=name)
        return UpstreamConnectionError(f"provider '{name}' is unreachable: {detail}",
                                       provider=name)

    async def ws_connect(self, url: str,
                         headers: Mapping[str, str]) -> aiohttp.ClientWebSocketResponse:
        """A WebSocket to ``url`` (a Realtime session's), its handshake within the
        provider's timeout; a refused handshake is the ``UpstreamError`` its status says
        (401, 404, 429, ...), an unreachable upstream a connection error or a timeout."""
        if self._sockets is None or self._sockets.closed:
            self._sockets = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
                cookie_jar=aiohttp.DummyCookieJar())
        try:
            return await asyncio.wait_for(self._sockets.ws_connect(
                url, headers=traced(headers), proxy=self._proxy(http_scheme(url)),
                autoclose=False,
                # No receive timeout: a session may be quiet for minutes between turns.
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0),
                max_msg_size=self.provider.max_response_bytes), self.provider.timeout_s)
        except aiohttp.WSServerHandshakeError as exc:
            # aiohttp reads no body of a refused handshake: the status says what failed.
            raise classify(failure_from_response(exc.status, exc.message.encode(),
                                                 exc.headers or {}), self.provider) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._transport_error(exc) from None

    async def aclose(self) -> None:
        # A stream still being read is cut, so its reader gets an error: closing the
        # session alone left it waiting on a connection nobody would feed again.
        for response in list(self._streams):
            response.close()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._sockets is not None:  # the Realtime sessions still open end with it
            await self._sockets.close()
            self._sockets = None


def http_scheme(url: str) -> str:
    """``url`` with a WebSocket's scheme as HTTP's, which the environment names proxies by
    (HTTPS_PROXY is a wss:// URL's too).

    >>> http_scheme("wss://api.openai.com/v1/realtime?model=gpt-realtime")
    'https://api.openai.com/v1/realtime?model=gpt-realtime'
    """
    scheme, sep, rest = url.partition("://")
    return {"wss": "https", "ws": "http"}.get(scheme.lower(), scheme) + sep + rest


def _form(fields: Sequence[tuple[str, str]], uploads: Sequence[FormFile]) -> aiohttp.FormData:
    """``fields`` in order, then the files in theirs, as the client sent them."""
    form = aiohttp.FormData(quote_fields=False)
    for name, value in fields:
        form.add_field(name, value)
    for upload in uploads:
        form.add_field(upload.field, upload.data, filename=upload.filename,
                       content_type=upload.content_type)
    return form
