"""The MCP client side of the e2e tests: the official SDK's client session, and the
messages any HTTP client can send (the SDK's cannot be handed a session id)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import httpx2
from mcp import types
from mcp.client import ClientSession
from mcp.client.streamable_http import streamable_http_client

from aigw.runtime.mcp_session import EventIds, open_sealed, session_secret

from ..conftest import DEV_KEY


@asynccontextmanager
async def session(url: str, key: str, statuses: list[int] | None = None,
                  session_ids: list[str] | None = None,
                  notified: list[str] | None = None,
                  headers: dict[str, str] | None = None,
                  timeout_s: float = 30.0,
                  confirms: bool | None = None,
                  transport: httpx2.AsyncBaseTransport | None = None,
                  ) -> AsyncIterator[ClientSession]:
    """The official SDK's client session on ``url``, with ``key`` as its bearer token
    (and ``headers`` on every request; ``timeout_s`` for each answer to begin);
    the HTTP status of every answer goes into ``statuses``, the Mcp-Session-Id of
    every answer that has one into ``session_ids``, and the method of every notification
    the server sends into ``notified``; ``confirms``: what the client answers when the
    server asks it to confirm (None: it refuses, as the SDK's default does); ``transport``:
    the network between the client and aigw (a real one when None). The timeout is
    generous: on a busy machine a stdio server's python, or a 32 MiB answer, takes
    seconds to begin."""
    async def seen(response: httpx2.Response) -> None:
        if statuses is not None:
            statuses.append(response.status_code)
        if session_ids is not None and "mcp-session-id" in response.headers:
            session_ids.append(response.headers["mcp-session-id"])

    async def handled(message: object) -> None:
        method = getattr(message, "method", None)
        if notified is not None and isinstance(method, str):
            notified.append(method)

    async def elicited(context: object, params: object) -> types.ElicitResult | types.ErrorData:
        if confirms is None:
            return types.ErrorData(code=types.INVALID_REQUEST, message="nobody to ask")
        return types.ElicitResult(action="accept", content={"ok": confirms})

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}", **(headers or {})},
                              timeout=timeout_s, transport=transport,
                              event_hooks={"response": [seen]})
    async with (http, streamable_http_client(url, http_client=http) as (read, write),
                ClientSession(read, write, message_handler=handled,
                              elicitation_callback=elicited) as client):
        yield client


def rpc(url: str, key: str, session_id: str, method: str, params: dict[str, object],
        ) -> httpx.Response:
    """One JSON-RPC request to ``url`` in session ``session_id``, as any HTTP client can
    send it (the SDK's client cannot be handed a session id)."""
    headers = {"Authorization": f"Bearer {key}", "mcp-session-id": session_id,
               "accept": "application/json", "mcp-protocol-version": "2025-06-18"}
    return httpx.post(url, headers=headers, timeout=10,
                      json={"jsonrpc": "2.0", "id": 7, "method": method, "params": params})


async def until(done: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Wait for ``done()``, which another process or thread makes true."""
    async with asyncio.timeout(seconds):
        while not done():
            await asyncio.sleep(0.02)
    assert done(), what


def opened(url: str, key: str) -> str:
    """A new session on ``url`` opened as any HTTP client can (initialize, then its
    notification), with no GET stream of the SDK's; its Mcp-Session-Id as shown."""
    headers = {"Authorization": f"Bearer {key}", "accept": "application/json"}
    initialize = httpx.post(url, headers=headers, timeout=10, json={
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"}}})
    assert initialize.status_code == 200, initialize.text
    shown = initialize.headers["mcp-session-id"]
    done = httpx.post(url, headers={**headers, "mcp-session-id": shown,
                                    "mcp-protocol-version": "2025-06-18"},
                      json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    assert done.status_code == 202, done.text
    return shown


def write_mcp_gateway(root: Path, servers: str) -> None:
    """A gateway directory at ``root``: an echo route, the dev key (an admin of team
    platform, which Cedar lets invoke every MCP server), and ``servers``, the YAML
    under ``mcp_servers:`` (each line indented two spaces)."""
    (root / "policies").mkdir(parents=True, exist_ok=True)
    (root / "policies" / "mcp.cedar").write_text(
        '@id("platform-uses-mcp")\n'
        'permit (principal in Team::"platform", action == Action::"invoke", resource);\n')
    (root / "gateway.yaml").write_text(f"""
version: 1
providers: {{local: {{type: echo}}}}
deployments: {{e: {{provider: local, model: echo-1, context_window: 8192}}}}
routes: {{echo: {{deployment: e}}}}
teams: {{platform: {{}}}}
keys:
  dev: {{admin: true, team: platform, sha256: {hashlib.sha256(DEV_KEY.encode()).hexdigest()}}}
mcp_servers:
{servers}""")


def call(url: str, session_id: str, tool: str, **arguments: object) -> httpx.Response:
    """A tools/call of ``tool`` in session ``session_id``, as the dev key."""
    return rpc(url, DEV_KEY, session_id, "tools/call", {"name": tool, "arguments": arguments})


class CutAtFirstEvent(httpx2.AsyncBaseTransport):
    """The network between a client and aigw, which cuts the answer to the first
    tools/call at its first SSE event, as a dropped connection does. The event gets
    through only when it carries no message (a priming event: an id, empty data): the
    client has that event's id at most, never the call's answer, and resumes with it or
    fails. The call must take a while: cut after its answer, the answer is lost.
    ``passing_messages``: the first event gets through whatever it carries (a progress
    notification), and the cut comes after it."""

    def __init__(self, passing_messages: bool = False) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self._passing_messages = passing_messages
        self.cut = 0
        self.passed: list[bytes] = []  # the event that got through before the cut

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        if self.cut or request.method != "POST" or b'"tools/call"' not in request.content:
            return response
        self.cut += 1
        return httpx2.Response(response.status_code, headers=response.headers,
                               stream=_UntilFirstEvent(response, self.passed,
                                                       self._passing_messages),
                               extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _UntilFirstEvent(httpx2.AsyncByteStream):
    """An answer's first SSE event, when it carries no message or ``passing_messages``,
    then a cut connection."""

    def __init__(self, response: httpx2.Response, passed: list[bytes],
                 passing_messages: bool) -> None:
        self._response, self._passed = response, passed
        self._passing_messages = passing_messages

    async def __aiter__(self) -> AsyncIterator[bytes]:
        read = b""
        stream = self._response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        async for chunk in stream:
            read += chunk.replace(b"\r\n", b"\n")
            if b"\n\n" in read:
                event = read.split(b"\n\n")[0] + b"\n\n"
                if self._passing_messages or not any(
                        line.startswith(b"data:") and line[5:].strip()
                        for line in event.splitlines()):
                    self._passed.append(event)
                    yield event
                break
        raise httpx2.ReadError("the connection was cut")

    async def aclose(self) -> None:
        await self._response.aclose()


def server_session(shown: str, server: str, key: str = DEV_KEY) -> str:
    """The server's own session id inside ``shown`` (an Mcp-Session-Id aigw gave ``key``)."""
    opened_id = open_sealed(shown, session_secret(key), server)
    assert opened_id is not None
    return opened_id


def event_ids(server: str, session_id: str, key: str = DEV_KEY) -> EventIds:
    """How aigw shows ``key`` the event ids of the server's session ``session_id``."""
    return EventIds(session_secret(key), server, session_id)


def shown_event_id(ids: EventIds, server_id: str) -> str:
    """The id a client sees for the server's event ``server_id``."""
    return ids.shown(b"id: " + server_id.encode()).decode()[4:]
