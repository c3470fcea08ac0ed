"""The upstream calls of ``runtime.upstream``, made with aiohttp's client directly.

Measured on the benchmark machine (bench/BENCH.md, "floor"), a pass-through using
aiohttp's client sustains about 1.5x the throughput of httpx over aiohttp's transport:
httpx's request building is the largest single cost on the request path. Adapters that
need nothing from httpx (no ``httpx.Auth``, no event hooks) get this ``JsonUpstream``;
the others keep ``Upstream``. Both raise the same ``UpstreamError`` classes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import aiohttp

from aigw.compiler.graph import Provider

from . import jsonio
from .errors import UpstreamConnectionError, UpstreamError, UpstreamServerError, UpstreamTimeout
from .telemetry.tracing import traced
from .upstream import (
    classify,
    env_proxy,
    failure_from_response,
    parse_sse,
    provider_lines,
    read_capped,
    scrub,
)

log = logging.getLogger("aigw.upstream")


class JsonUpstream(Protocol):
    """What an adapter calls: a JSON POST, a server-sent-events POST, and close."""

    async def post_json(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> dict[str, Any]: ...

    def post_sse(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> AsyncIterator[tuple[str, str]]: ...

    async def aclose(self) -> None: ...


def open_upstream(provider: Provider) -> JsonUpstream:
    """The fastest upstream client this machine has for ``provider``."""
    return AiohttpUpstream(provider)


class AiohttpUpstream:
    """One provider's pooled aiohttp session (opened on first use, inside the event loop)."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self._session: aiohttp.ClientSession | None = None
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
        payload = jsonio.dumps(body)
        try:
            async with self._client().post(
                url, data=payload, headers={**traced(headers), "content-type": "application/json"},
                allow_redirects=False, proxy=self._proxy(url),
            ) as response:
                raw = await read_capped(response.content.iter_any(), self.provider)
                status, response_headers = response.status, response.headers
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._transport_error(exc) from None
        if 300 <= status < 400:
            raise self._redirected(status, response_headers)
        if status >= 400:
            raise classify(failure_from_response(status, raw, response_headers), self.provider)
        try:
            document = jsonio.loads(raw)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise UpstreamServerError(
                f"provider '{self.provider.name}' answered with something that is not a "
                "JSON object", provider=self.provider.name,
            )
        return document

    async def post_sse(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> AsyncIterator[tuple[str, str]]:
        """POST and yield each server-sent event; the status is checked before the first."""
        payload = jsonio.dumps(body)
        try:
            response = await self._client().post(
                url, data=payload,
                headers={**traced(headers), "content-type": "application/json",
                         "accept": "text/event-stream"},
                allow_redirects=False, proxy=self._proxy(url),
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._transport_error(exc) from None
        self._streams.add(response)
        try:
            if 300 <= response.status < 400:
                raise self._redirected(response.status, response.headers)
            if response.status >= 400:
                raw = await read_capped(response.content.iter_any(), self.provider)
                raise classify(failure_from_response(response.status, raw, response.headers),
                               self.provider)
            lines = provider_lines(response.content.iter_any(), self.provider)
            async for event in parse_sse(lines, self.provider):
                yield event
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise self._transport_error(exc) from None
        finally:
            self._streams.discard(response)
            response.release()

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

    async def aclose(self) -> None:
        # A stream still being read is cut, so its reader gets an error: closing the
        # session alone left it waiting on a connection nobody would feed again.
        for response in list(self._streams):
            response.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

