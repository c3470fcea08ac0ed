"""MCP servers that speak the HTTP+SSE transport of protocol 2024-11-05, spoken to as
streamable HTTP through ``mcp_held``'s transport: one event stream a session.

The transport (the 2024-11-05 spec, basic/transports): the client GETs the server's SSE
endpoint (``url``); the server's first event, ``endpoint``, names the URI to POST each
JSON-RPC message to (a session id of its own in the query), which the server accepts
(202); every response, request and notification of the server's comes as a ``message``
event on the stream, which stays open for the session's life. So here a session opens
with that GET and its endpoint event (within the server's ``timeout_s``, as any answer's
start), a message is delivered by a POST there (the server's refusal passed on as a
streamable server's is; a 404 ends the session, which the server no longer knows), the
stream's messages are routed by the session, and closing the stream ends the server's
session (the transport has no other end). An endpoint on another origin than ``url`` is
refused: the server's headers, its credentials, go with every POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import AsyncGenerator, Mapping

import anyio
import httpx

from aigw.compiler.graph import McpServer, McpSse

from .errors import McpServerFailed, McpServerTimeout
from .mcp_held import SSE, HeldServer, HeldSession
from .mcp_replay import ReplayBudget
from .upstream import capped_lines, no_cookies, read_bounded, scrub_url, scrub_values

JSON = "application/json"
_MAX_REFUSAL_BYTES = 64 << 10  # of a refused POST's body, passed on
_CONNECT_S = 10.0
_READ_STOP_S = 1.0  # for a stream's reader to finish before the stream is closed under it


class SseServer(HeldServer):
    """One HTTP+SSE MCP server's event streams, by session id."""

    ends = "holds an event stream a session, and it closed"

    def __init__(self, server: McpServer, sse: McpSse, max_event: int,
                 replays: ReplayBudget | None = None) -> None:
        super().__init__(server.name, sse.idle_timeout_s, sse.max_sessions, replays)
        self.url = server.url
        self.headers: Mapping[str, str] = server.headers
        self.max_event = max_event
        # A stream holds its connection for the session's life: httpx's pool of a hundred
        # would leave the POSTs none.
        self.upstream = httpx.AsyncClient(
            cookies=no_cookies(), follow_redirects=False,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=20))

    async def open(self, session_id: str, read_s: float | None) -> HeldSession:
        try:
            request = self.upstream.build_request(
                "GET", self.url, headers={**self.headers, "accept": SSE},
                timeout=httpx.Timeout(None, connect=min(_CONNECT_S, read_s or _CONNECT_S)))
        except httpx.InvalidURL:  # no HTTPError: a host httpx refuses (a ${ENV}'s)
            raise McpServerFailed(f"MCP server '{self.name}' cannot be called: its URL "
                                  "is not one the gateway can send (InvalidURL).") from None
        response: httpx.Response | None = None
        try:
            async with asyncio.timeout(read_s):
                response = await self.upstream.send(request, stream=True)
                await self._check_stream(response)
                events = _events(self, response)
                endpoint = await self._endpoint(events)
        except TimeoutError:
            await _closed(response)
            raise McpServerTimeout(f"MCP server '{self.name}' did not open its event stream "
                                   f"(its endpoint event) within {read_s:g} s.") from None
        except httpx.HTTPError as exc:
            await _closed(response)
            raise self.unreachable(exc) from exc
        except BaseException:
            await _closed(response)
            raise
        return _Stream(session_id, self, response, events, endpoint)

    async def aclose(self) -> None:
        await super().aclose()
        await self.upstream.aclose()

    async def _check_stream(self, response: httpx.Response) -> None:
        status, kind = response.status_code, response.headers.get("content-type", "")
        if status < 300 and kind.startswith(SSE):
            return
        if 300 <= status < 400:
            raise McpServerFailed(f"MCP server '{self.name}' answered the GET of its event "
                                  f"stream with a redirect (HTTP {status}), which the gateway "
                                  "does not follow.")
        if status in (401, 403):
            raise McpServerFailed(f"MCP server '{self.name}' refused the gateway's "
                                  f"credentials (HTTP {status}).")
        if status >= 500:
            raise McpServerFailed(f"MCP server '{self.name}' failed (HTTP {status}) to open "
                                  "its event stream.")
        raise McpServerFailed(
            f"MCP server '{self.name}' answered the GET of its event stream with HTTP "
            f"{status} ({kind.split(';')[0] or 'no content-type'}), not an event stream: "
            "if it speaks streamable HTTP, its config needs no transport: sse.")

    async def _endpoint(self, events: AsyncGenerator[tuple[str, str], None]) -> str:
        """The URI the server's first endpoint event names, on ``url``'s origin."""
        async for event, data in events:
            if event != "endpoint":
                continue  # the spec has it first; anything before it has no session
            endpoint = urllib.parse.urljoin(self.url, data.strip())
            there, here = urllib.parse.urlsplit(endpoint), urllib.parse.urlsplit(self.url)
            if (there.scheme, there.netloc) != (here.scheme, here.netloc):
                raise McpServerFailed(
                    f"MCP server '{self.name}' named an endpoint on another origin than its "
                    "url, where the gateway does not send its headers.")
            return endpoint
        raise McpServerFailed(f"MCP server '{self.name}' closed its event stream before "
                              "its endpoint event.")

    def unreachable(self, exc: httpx.HTTPError) -> McpServerFailed:
        detail = scrub_values(scrub_url(str(exc) or type(exc).__name__, self.url,
                                        f"MCP server '{self.name}'"), self.headers.values())
        return McpServerFailed(f"MCP server '{self.name}' is unreachable: {detail}")

    def too_large(self) -> McpServerFailed:
        return McpServerFailed(f"MCP server '{self.name}' sent an event larger than "
                               f"{self.max_event >> 20} MiB.")


async def _closed(response: httpx.Response | None) -> None:
    """Close a response: a POST's answer, or an event stream (which ends the server's
    session). An anyio shield is enough, though a task cancelled outright cuts it: a
    POST's answer holds nothing at the server (it took the message, or refused it), and
    an event stream is closed by httpcore as soon as a read of it is cancelled (the
    session's reader, cancelled when the session stops; ``open``'s own reads), in the
    reader's task. A cut close here leaves only httpx's bookkeeping undone."""
    if response is not None:
        with anyio.CancelScope(shield=True):
            await response.aclose()


async def _events(server: SseServer,
                  response: httpx.Response) -> AsyncGenerator[tuple[str, str], None]:
    """The stream's events as (type, data), each capped at the server's ``max_event``;
    comments (keep-alives) and events without data skipped."""
    event, size = "message", 0
    data: list[str] = []
    async for line in capped_lines(response.aiter_bytes(), server.max_event, server.too_large):
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data, size = "message", [], 0
            continue
        size += len(line)
        if size > server.max_event:
            raise server.too_large()
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield event, "\n".join(data)


class _Stream(HeldSession):
    """One session's event stream, and the task that reads it."""

    label = "event stream"

    def __init__(self, session_id: str, server: SseServer, response: httpx.Response,
                 events: AsyncGenerator[tuple[str, str], None], endpoint: str) -> None:
        super().__init__(session_id, server)
        self.server, self.response, self.endpoint = server, response, endpoint
        self._reading = asyncio.create_task(self._read(events), name=f"mcp-{server.name}-sse")
        self.tasks.append(self._reading)

    async def deliver(self, message: bytes, read_s: float | None,
                      carried: Mapping[str, str]) -> httpx.Response | None:
        server = self.server
        try:
            request = server.upstream.build_request(
                "POST", self.endpoint, content=message,
                headers={**server.headers, **carried, "content-type": JSON},
                timeout=httpx.Timeout(read_s, connect=min(_CONNECT_S, read_s or _CONNECT_S)))
            answer = await server.upstream.send(request, stream=True)
        except httpx.TimeoutException as exc:
            within = f"within {read_s:g} s" if read_s is not None else "in time"
            raise McpServerTimeout(f"MCP server '{server.name}' did not take a message "
                                   f"{within}.") from exc
        except httpx.HTTPError as exc:
            raise server.unreachable(exc) from exc
        try:
            if answer.is_success:
                return None
            if answer.status_code == 404:  # its session is gone: no message reaches it
                await self.ended_by("the server no longer knows it (HTTP 404)")
                raise server.unknown()
            with contextlib.suppress(httpx.HTTPError, McpServerFailed):
                refusal = await read_bounded(answer.aiter_bytes(), _MAX_REFUSAL_BYTES,
                                             server.too_large)
                return httpx.Response(answer.status_code, content=refusal, headers={
                    "content-type": answer.headers.get("content-type", "text/plain")})
            return httpx.Response(answer.status_code)
        finally:
            await _closed(answer)

    async def close(self) -> None:
        if self._reading is not asyncio.current_task():
            await asyncio.wait([self._reading], timeout=_READ_STOP_S)
        await _closed(self.response)

    async def _read(self, events: AsyncGenerator[tuple[str, str], None]) -> None:
        why = "the server closed its event stream"
        try:
            async with contextlib.aclosing(events):
                async for event, data in events:
                    if event == "message":
                        # JSON has a line break only between tokens, where a space does.
                        self.route(data.replace("\n", " ").encode())
        except McpServerFailed as exc:  # an event over the cap
            why = exc.message
        except httpx.HTTPError as exc:
            why = f"its event stream failed: {type(exc).__name__}"
        await self.stop(why)
