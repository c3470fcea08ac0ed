"""MCP at ``/mcp/<server>``: JSON-RPC over streamable HTTP, proxied to the server's url
(or, for a server whose sessions the gateway holds, a stdio server's processes or an
HTTP+SSE server's event streams, through ``mcp_held``'s httpx transport, which answers as
a streamable HTTP server would: every check below is the same for all).

The gateway speaks the transport itself (a POST carries one JSON-RPC message; the
answer is JSON, or an SSE stream of messages ending with the response) rather than
run the official SDK's session machinery: a proxy needs to read one message, decide,
forward it and pass the answer on, and the SDK's server would terminate sessions the
upstream owns. What it does to a message, in order:

    authenticate (an aigw key, as /v1) -> the server by name, among the key's
    ``mcp_servers`` (404) -> parse (one message; batches were dropped from MCP in
    2025-06-18) -> Cedar invoke on McpServer::"name" with context.tool (403) -> the
    allow-list (a tools/call of a tool outside it is a JSON-RPC error) -> the server;
    its tools/list answer keeps only the tools the allow-list names and Cedar lets the
    caller call

``Mcp-Session-Id`` is the upstream's, sealed to the aigw key that opened the session
(``mcp_session``): the client sees it sealed, the server only ever its own, and a
message or DELETE whose id does not open under its key and server is a 404, the spec's
answer for an unknown session. The ids of the events a client is passed are sealed the
same way, to the key, the server and the session (``mcp_session.EventIds``): a ``Last-
Event-ID`` that does not open is a 400, never sent to the server. A session lives where
the spec puts it. GET opens the server's own stream (its requests and notifications
outside any POST's), passed on event by event with ``Last-Event-ID`` for a resumption,
and ended after ``STREAM_LIFE_S`` (the client, told when by a ``retry`` field, opens it
again; what the server says back is passed on by ``mcp_events``); DELETE ends a session.
Both are checked as a message is.
Every refusal is a JSON-RPC error object at the HTTP status of its cause, which the
MCP SDKs surface as it is. With tracing on, a message and its call upstream are spans
(``telemetry.mcp_tracing``), the call's trace context sent in its ``params._meta``.
Egress as for providers: no redirects, no cookies, the client's aigw key never
forwarded, and the server's header values scrubbed from anything shown or logged.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from aigw.compiler.graph import ApiKey, Graph, McpServer

from .admission import count_request, rpm_limits
from .auth import authenticate, bearer_token
from .background import Background
from .errors import (
    BadRequest,
    GatewayError,
    McpServerDisabled,
    McpServerFailed,
    McpServerTimeout,
    McpSessionUnknown,
    NotFound,
    Unauthorized,
)
from .incoming import read_body
from .jsonio import dumps, loads
from .live import Live
from .mcp_events import (
    INTERNAL,
    MAX_ANSWER_BYTES,
    SSE,
    Cursor,
    Listing,
    ServerStream,
    finishing,
    get_stream_events,
    response_of,
    scrub,
    server_events,
    too_large,
    unreachable,
)
from .mcp_held import HeldServer
from .mcp_replay import ReplayBudget
from .mcp_session import EventIds, caller_secret, open_sealed, seal, session_secret
from .mcp_sse import SseServer
from .mcp_stdio import StdioServer
from .policy_request import authorize_mcp
from .telemetry.mcp import McpCall, finish_mcp, method_label
from .telemetry.mcp_tracing import (
    Asked,
    Where,
    traced_answer,
    traced_http,
    traced_message,
)
from .telemetry.record import UNKNOWN, answered_as
from .upstream import no_cookies, read_bounded

SESSION = "mcp-session-id"
PROTOCOL = "mcp-protocol-version"
JSON = "application/json"
LAST_EVENT_ID = "last-event-id"
_MAX_ERROR_BYTES = 64 << 10
# A call's stream the server ended before its response is polled for it (a client taking
# JSON: the gateway reads the stream for it) after the retry the server asked for, else
# this long (the SDKs' wait), and at most this many times: a guard against a server that
# ends every stream at once, for ever.
POLL_WAIT_MS = 1000
POLLS = 100
# JSON-RPC codes: the spec's own, and -32602 for a tool the server does not offer.
PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS = -32700, -32600, -32602


def mcp_routes(proxy: McpProxy) -> list[Route]:
    return [Route("/mcp/{server:path}", proxy.endpoint, methods=["POST", "GET", "DELETE"])]


class McpProxy:
    """The /mcp endpoint, its one pooled client (made on first use, for every streamable
    HTTP server) and the sessions it holds of its stdio and HTTP+SSE servers, by server,
    each with what it was opened from (``_held_as``)."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client
        self._streams: httpx.AsyncClient | None = None  # GET streams'
        self._held: dict[str, tuple[object, HeldServer]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._finishing = Background()  # GET streams' upstream closes, each in a task of its own
        self._graph: Graph | None = None  # the graph the held servers were last checked on
        self._replays = ReplayBudget()  # what their sessions keep for GET streams, together
        self._asked = Asked()  # servers' requests passed on, traced, awaiting their answers

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            # A cookie one caller was given would go with the next caller's request;
            # a redirect could lead past the url the operator wrote.
            self._client = httpx.AsyncClient(cookies=no_cookies(), follow_redirects=False)
        return self._client

    @property
    def streams(self) -> httpx.AsyncClient:
        """The client for GET streams: each holds its connection for as long as it is open,
        and a hundred of them (httpx's pool) would leave messages none."""
        if self._streams is None:
            self._streams = httpx.AsyncClient(
                cookies=no_cookies(), follow_redirects=False,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=0))
        return self._streams

    async def aclose(self) -> None:
        for client in (self._client, self._streams):
            if client is not None:
                await client.aclose()
        await asyncio.gather(*(held.client.aclose() for _, held in self._held.values()),
                             *self._stopping, self._finishing.wait())

    def _client_for(self, server: McpServer, idle: bool) -> httpx.AsyncClient:
        """The client that reaches ``server``: the pooled one (the streams' for an ``idle``
        one), or the one through the sessions it holds of it. What a held server was opened
        from (``_held_as``, a copy of an HTTP+SSE server's headers) is taken once, when it
        is first held: only ``_follow`` compares it, once a graph."""
        if server.stdio is None and server.sse is None:
            return self.streams if idle else self.client
        found = self._held.get(server.name)
        if found is not None:
            return found[1].client
        held_as = _held_as(server)
        held: HeldServer
        if server.sse is not None:
            held = SseServer(server, server.sse, MAX_ANSWER_BYTES, self._replays)
        else:
            assert server.stdio is not None  # checked above: it is one or the other
            held = StdioServer(server.name, server.stdio, MAX_ANSWER_BYTES, self._replays)
        self._held[server.name] = (held_as, held)
        return held.client

    def _follow(self, graph: Graph) -> None:
        """After a reload, the held servers it removed or changed how they are reached have
        their sessions ended (as the spec lets a server end one: processes stopped, event
        streams closed) rather than left to idle out; one identity check a message
        otherwise."""
        if graph is self._graph:
            return
        self._graph = graph
        for name, (held_as, held) in list(self._held.items()):
            server = graph.mcp_servers.get(name)
            if server is None or _held_as(server) != held_as:
                del self._held[name]
                task = asyncio.create_task(held.client.aclose())
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)

    async def endpoint(self, request: Request) -> Response:
        live: Live = request.scope["state"]["live"]
        call = McpCall(UNKNOWN)
        answered_as(request.scope, call.request_id)
        rpc_id: object = None
        try:
            self._follow(live.graph)
            key = await authenticate(live, request.headers)
            call.key, call.team = key.name, key.team.name if key.team else None
            name = request.path_params["server"]
            server = live.graph.mcp_servers.get(name)
            # A server outside the key's mcp_servers is the same 404 as one not defined:
            # a 403 would tell the key which names exist (as check_route_allowed).
            if server is None or (key.mcp_servers is not None and name not in key.mcp_servers):
                raise NotFound(f"MCP server '{name}' is not defined.")
            call.server = name
            if server.disabled_reason is not None:
                raise McpServerDisabled(f"MCP server '{name}' is disabled: "
                                        f"{server.disabled_reason}.")
            user = request.headers.get(live.graph.settings.user_header) or None
            session = _session(request.headers, key, name)
            if request.method in ("GET", "DELETE"):
                call.method = request.method.lower()
                if live.telemetry.tracing.enabled:
                    call.trace = traced_http(live.telemetry.tracing, call, request.method,
                                             request.headers, live.graph.fingerprint)
                await _count(live, key, user)
                await authorize_mcp(live, key, user, name, "", server.timeout_s, request.headers)
                if request.method == "GET":
                    return await self._stream(live, server, request, session, call)
                return await self._delete(live, server, session, call)
            message = _message(await read_body(request, live.graph.settings))
            rpc_id = message.get("id")
            if live.telemetry.tracing.enabled and "method" in message:
                call.trace = traced_message(live.telemetry.tracing, call, request.headers,
                                            message, live.graph.fingerprint)
            elif live.telemetry.tracing.enabled:  # a response to the server's request
                call.trace = traced_answer(live.telemetry.tracing, call, request.headers,
                                           message, live.graph.fingerprint, self._asked,
                                           _where(name, session.sent, key.name))
            await _count(live, key, user)
            method = message.get("method")
            call.method = method_label(method if isinstance(method, str) else None)
            tool = _tool(message) if method == "tools/call" else ""
            gate = await authorize_mcp(live, key, user, name, tool, server.timeout_s,
                                       request.headers)
            if tool and not server.allows(tool):
                call.error = "tool_not_allowed"
                refusal = f"Tool '{tool}' is not available through MCP server '{name}'."
                if call.trace is not None:
                    call.trace.failed(INVALID_PARAMS, call.error, refusal, {})
                finish_mcp(live.telemetry, call)
                return _rpc_error(rpc_id, INVALID_PARAMS, refusal, 200, {})
            if tool and server.tools is not None:
                call.tool = tool
            # A tools/list answer is filtered only when something can take a tool out.
            filters = server.tools is not None or (
                gate is not None and "tool" in live.policy.authorization.reads.context)
            listing = Listing(server, gate) if method == "tools/list" and filters else None
            return await self._forward(live, server, request, message, tool, session, call,
                                       listing)
        except GatewayError as exc:
            status = exc.shown_status if isinstance(exc, _Refused) else exc.status
            call.status, call.error = status, exc.code
            if exc.key_name is not None and (call.key is None
                                             or isinstance(exc, Unauthorized)):
                # Refused by name (expired, an old secret past its rotation, a JWT's
                # issuer): the access log says whose client sent it, as Exchange.fail
                # has it on /v1.
                call.key, call.team = exc.key_name, exc.team_name
            code = (PARSE_ERROR if exc.code == "mcp_parse_error"
                    else INTERNAL if status >= 500 else INVALID_REQUEST)
            if call.trace is None and live.telemetry.tracing.enabled:
                # Refused before its message was read: a span still, that the client's
                # trace shows where it ended.
                call.trace = traced_http(live.telemetry.tracing, call, request.method,
                                         request.headers, live.graph.fingerprint)
            if call.trace is not None:
                call.trace.failed(code, exc.code, exc.message, exc.headers)
            finish_mcp(live.telemetry, call)
            return _rpc_error(rpc_id, code, exc.message, status, exc.headers,
                              {"type": exc.error_type, "code": exc.shown_code})
        except asyncio.CancelledError:
            # Cut mid-call (a shutdown past its grace): counted and logged all the same,
            # as 503 or 499 as a chat request cut is; finish_mcp awaits nothing, so a
            # further cancel cannot stop it half-way.
            call.status, call.error = live.shutdown.cut()
            if call.trace is not None:
                call.trace.failed(INTERNAL, call.error, "The request was cut.", {})
            finish_mcp(live.telemetry, call)
            raise

    async def _forward(self, live: Live, server: McpServer, request: Request,
                       message: Mapping[str, Any], tool: str, session: _Session,
                       call: McpCall, listing: Listing | None) -> Response:
        headers = {**server.headers, "content-type": JSON, "accept": f"{JSON}, {SSE}",
                   **session.sent}
        sent = message
        if call.trace is not None:
            sent = call.trace.sending(_transport(server), message, headers)
        upstream = await self._send(server, "POST", headers, dumps(sent))
        try:
            await _check(server, upstream, session)
        except GatewayError:
            await upstream.aclose()
            raise
        call.status = upstream.status_code
        rpc_id = message.get("id")
        if tool:
            call.tool = tool  # the server took the call: a tool it has
        try:
            passed = session.shown(server, upstream.headers)
        except GatewayError:
            await upstream.aclose()
            raise
        if call.trace is not None:
            call.trace.answered_with(upstream.headers, passed)
            call.trace.asks(self._asked, _where(server.name, {**upstream.headers,
                                                              **session.sent}, call.key),
                            request.headers.get(SESSION) or passed.get(SESSION))
        if upstream.status_code == 202 or "id" not in message or "method" not in message:
            await upstream.aclose()  # a notification or a response: nothing comes back
            finish_mcp(live.telemetry, call)
            return Response(status_code=upstream.status_code, headers=passed)
        accept = request.headers.get("accept", "")
        takes_json = not accept or JSON in accept or "*/*" in accept
        if upstream.headers.get("content-type", "").startswith(SSE):
            events = server_events(server, upstream, listing)
            if SSE in accept or "*/*" in accept:
                # The first event is read before the status is sent: a failure there (an
                # answer over the cap, a server gone) is still an error at its own status.
                try:
                    first = await anext(events, b"")
                except GatewayError:
                    await events.aclose()
                    raise
                # Sealed to the session the server named (an initialize's is new).
                ids = session.event_ids(upstream.headers.get(SESSION))
                return StreamingResponse(finishing(live, call, first, events, rpc_id, ids),
                                         status_code=200, media_type=SSE, headers=passed)
            # the client takes JSON only: the response, without what came before it
            answer = await self._polled(server, session, events, listing, rpc_id)
        else:
            answer = await _json(server, upstream)
            if listing is not None:
                answer = listing.filtered(answer)
        if call.trace is not None:
            call.trace.answered(answer)
        finish_mcp(live.telemetry, call)
        if not takes_json:
            return Response(b"event: message\ndata: " + dumps(answer) + b"\n\n",
                            media_type=SSE, headers=passed)
        return Response(dumps(answer), media_type=JSON, headers=passed)

    async def _polled(self, server: McpServer, session: _Session,
                      events: AsyncGenerator[bytes, None], listing: Listing | None,
                      rpc_id: object) -> Any:
        """The response to ``rpc_id`` among ``events`` (a call's stream), for a client that
        takes JSON. A stream the server ends before it, after an event with an id (MCP
        2025-11-25: a server may, to have its client poll), is polled for it as a client
        would: a GET with that id, after the retry the server asked for, again while each
        brings an event with an id of its own (``POLLS`` at most)."""
        cursor = Cursor()
        for _poll in range(POLLS + 1):
            left = cursor.last_id
            try:
                answer = await response_of(events, rpc_id, cursor)
            finally:
                await events.aclose()
            if answer is not None:
                return answer
            if cursor.last_id is None or cursor.last_id == left:
                break
            wait_s = (POLL_WAIT_MS if cursor.retry_ms is None else cursor.retry_ms) / 1000
            if wait_s > server.timeout_s:
                raise McpServerTimeout(f"MCP server '{server.name}' asked to be polled for "
                                       f"its answer in {wait_s:g} s, past its timeout_s.")
            await asyncio.sleep(wait_s)
            headers = {**server.headers, "accept": SSE, **session.sent,
                       LAST_EVENT_ID: cursor.last_id}
            upstream = await self._send(server, "GET", headers, None)
            try:
                await _check(server, upstream, session)
                if not upstream.headers.get("content-type", "").startswith(SSE):
                    raise McpServerFailed(f"MCP server '{server.name}' answered a poll for "
                                          "its answer with something that is not an event "
                                          "stream.")
            except GatewayError:
                await upstream.aclose()
                raise
            events = server_events(server, upstream, listing)
        raise McpServerFailed("The MCP server's stream ended without a response.")

    async def _stream(self, live: Live, server: McpServer, request: Request,
                      session: _Session, call: McpCall) -> Response:
        """The server's own stream (GET): its events passed on as they come, for as long
        as both ends keep it, ``STREAM_LIFE_S`` at most. A server without one answers
        405, passed on as the spec has it."""
        headers = {**server.headers, "accept": SSE, **session.sent}
        ids = session.event_ids(None)
        if (last := request.headers.get(LAST_EVENT_ID)) is not None:
            opened = ids.opened(_header(LAST_EVENT_ID, last))
            if opened is None:
                raise BadRequest("Last-Event-ID is not the id of an event this session's "
                                 "streams gave this key.")
            headers[LAST_EVENT_ID] = opened  # replayed after it
        if call.trace is not None:
            call.trace.calling(_transport(server), headers)
        upstream = await self._send(server, "GET", headers, None, idle=True)
        try:
            await _check(server, upstream, session)
            if not upstream.headers.get("content-type", "").startswith(SSE):
                raise McpServerFailed(f"MCP server '{server.name}' answered a GET with "
                                      "something that is not an event stream.")
            passed = session.shown(server, upstream.headers)
        except GatewayError:
            await upstream.aclose()
            raise
        call.status = upstream.status_code
        # Counted as it opens: its latency is the server's to answer, not the stream's life.
        finish_mcp(live.telemetry, call)
        if call.trace is not None:
            call.trace.asks(self._asked, _where(server.name, session.sent, call.key),
                            request.headers.get(SESSION))
        return ServerStream(get_stream_events(server, upstream, call.trace, ids), upstream,
                            passed, live.shutdown, self._finishing.spawn)

    async def _delete(self, live: Live, server: McpServer, session: _Session,
                      call: McpCall) -> Response:
        headers = {**server.headers, **session.sent}
        if call.trace is not None:
            call.trace.calling(_transport(server), headers)
        upstream = await self._send(server, "DELETE", headers, None)
        await upstream.aclose()
        call.status = upstream.status_code if upstream.status_code < 500 else 502
        finish_mcp(live.telemetry, call)
        return Response(status_code=call.status)

    async def _send(self, server: McpServer, method: str, headers: Mapping[str, str],
                    body: bytes | None, idle: bool = False) -> httpx.Response:
        """``idle``: the answer is a stream that may say nothing for as long as the server
        has nothing to say (GET); only its start is timed."""
        timeout = httpx.Timeout(None if idle else server.timeout_s,
                                connect=min(10.0, server.timeout_s))
        client = self._client_for(server, idle)
        try:
            request = client.build_request(method, server.url, headers=headers,
                                           content=body, timeout=timeout)
        except httpx.InvalidURL:  # no HTTPError: a host httpx refuses (10.0.0.256,
            # a ${ENV}'s), which was a 500 whose traceback quoted it; as a checker's
            raise McpServerFailed(f"MCP server '{server.name}' cannot be called: its URL "
                                  "is not one the gateway can send (InvalidURL).") from None
        try:
            if not idle:
                return await client.send(request, stream=True, follow_redirects=False)
            async with asyncio.timeout(server.timeout_s):
                return await client.send(request, stream=True, follow_redirects=False)
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise McpServerTimeout(f"MCP server '{server.name}' did not answer within "
                                   f"{server.timeout_s:g} s.") from exc
        except httpx.HTTPError as exc:
            raise unreachable(server, exc) from exc


def _where(server: str, headers: Mapping[str, str], caller: str | None) -> Where:
    """Where a request of ``server``'s is asked: in the session its ``headers`` name (the
    server's own id), of ``caller`` (a key's name; a server without sessions has many)."""
    return server, headers.get(SESSION, ""), caller or ""


def _transport(server: McpServer) -> str:
    """``server``'s ``network.transport``: a pipe for stdio, else HTTP's TCP."""
    return "pipe" if server.stdio is not None else "tcp"


def _held_as(server: McpServer) -> object | None:
    """What the sessions the gateway holds of ``server`` were opened from (a change ends
    them), None for a streamable HTTP server, whose sessions are its own."""
    if server.stdio is not None:
        return server.stdio
    if server.sse is not None:
        return server.sse, server.url, dict(server.headers)
    return None


async def _count(live: Live, key: ApiKey, user: str | None) -> None:
    """Each message counts against the key's, team's and end user's rpm (429 past one)."""
    limits = rpm_limits(live.scopes.limits(key, user))
    if limits:
        await count_request(await live.store.get(), f"mcp-{uuid.uuid4().hex}", limits)


def _message(body: bytes) -> dict[str, Any]:
    """The one JSON-RPC message a POST carries."""
    try:
        message = loads(body)
    except ValueError:
        raise _ParseError("The body is not JSON.") from None
    if isinstance(message, list):
        raise BadRequest("JSON-RPC batches are not supported (MCP dropped them in "
                         "2025-06-18): send one message a POST.")
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise BadRequest('The body is not a JSON-RPC 2.0 message ({"jsonrpc": "2.0", ...}).')
    if "method" in message:
        method = message["method"]
        if not isinstance(method, str):
            raise BadRequest("A JSON-RPC method is a string.")
        rpc_id = message.get("id")
        if "id" in message and method.startswith("notifications/"):
            # Sent on as a request, it held a call open for an answer no server gives.
            raise BadRequest(f"A notification has no id (MCP); {method[:100]!r} has one.")
        if "id" in message and (isinstance(rpc_id, bool) or not isinstance(rpc_id, str | int)):
            raise BadRequest("A request's id is a string or an integer (MCP: never null).")
    elif "id" not in message or ("result" in message) == ("error" in message):
        raise BadRequest("The body is not a JSON-RPC request, notification or response: "
                         "a response has an id and a result or an error.")
    return message


def _tool(message: Mapping[str, Any]) -> str:
    params = message.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    if not isinstance(name, str) or not name:
        raise BadRequest("tools/call needs params.name, the tool to call.")
    return name


class _ParseError(BadRequest):
    code = "mcp_parse_error"


def _session(headers: Headers, key: ApiKey, server: str) -> _Session:
    """The protocol headers a client sends the server, its session id opened (an id that
    does not open under the key the client presents, authenticated already, and
    ``server`` is ``McpSessionUnknown``); never its Authorization (the aigw key) nor
    anything else of its own."""
    token = bearer_token(headers)
    assert token is not None  # authenticated
    secret = session_secret(token) if key.issuer is None else caller_secret(key.name)
    value = headers.get(PROTOCOL)
    sent = {PROTOCOL: _header(PROTOCOL, value)} if value is not None else {}
    if (shown := headers.get(SESSION)) is not None:
        opened = open_sealed(shown, secret, server)
        if opened is None:
            raise McpSessionUnknown("Session not found: it ended, or it is not one this key "
                                    f"was given for MCP server '{server}'.")
        sent[SESSION] = opened
    return _Session(secret, server, sent)


def _header(name: str, value: str) -> str:
    """``value``, a header of the client's sent on to the server, when it is visible ASCII
    (as every protocol version and event id is); else BadRequest. httpx sends ASCII
    alone: a byte past it was a UnicodeEncodeError, a 500 with its traceback."""
    if not value.isascii() or not value.isprintable():
        raise BadRequest(f"The {name} header is not visible ASCII, as its values are.")
    return value


@dataclass(frozen=True, slots=True)
class _Session:
    """A message's protocol headers both ways: ``sent`` to the server (its own session id),
    and ``shown`` to the client (the server's id sealed to the caller's key)."""

    secret: bytes  # the caller's key's (mcp_session.session_secret)
    server: str
    sent: Mapping[str, str]

    def event_ids(self, named: str | None) -> EventIds:
        """How the ids of this session's events are shown: sealed to the key, the server
        and the server's session id (``named`` by an answer, else the one sent)."""
        return EventIds(self.secret, self.server, named or self.sent.get(SESSION, ""))

    def shown(self, server: McpServer, headers: Mapping[str, str]) -> dict[str, str]:
        shown = {PROTOCOL: value} if (value := headers.get(PROTOCOL)) is not None else {}
        if (session := headers.get(SESSION)) is not None:
            sealed = seal(session, self.secret, self.server)
            if sealed is None:
                raise McpServerFailed(f"MCP server '{server.name}' sent a session id that "
                                      "is not one (visible ASCII, at most 512 bytes).")
            shown[SESSION] = sealed
        return shown


async def _check(server: McpServer, upstream: httpx.Response, session: _Session) -> None:
    """Raise for an answer that is not one: a redirect (not followed), the server's
    refusal of the gateway's own credentials (401, 403), a failure (5xx); a refusal
    of the message (another 4xx) passes on as the server worded it."""
    status = upstream.status_code
    if status < 300:
        return
    if 300 <= status < 400:
        raise McpServerFailed(f"MCP server '{server.name}' answered with a redirect (HTTP "
                              f"{status}), which the gateway does not follow.")
    text = scrub(await _error_text(upstream), server)
    if status in (401, 403):
        raise McpServerFailed(f"MCP server '{server.name}' refused the gateway's credentials "
                              f"(HTTP {status}).")
    if status >= 500:
        raise McpServerFailed(f"MCP server '{server.name}' failed (HTTP {status}): {text}")
    raise _Refused(status, text, session.shown(server, upstream.headers))


class _Refused(McpServerFailed):
    """A 4xx the server gave the message, passed on with its status."""

    error_type = "invalid_request_error"
    code = "mcp_request_refused"

    def __init__(self, status: int, text: str, headers: dict[str, str]) -> None:
        super().__init__(text, headers=headers)
        self.shown_status = status

    @property
    def shown_code(self) -> str | None:
        return self.code


async def _error_text(upstream: httpx.Response) -> str:
    try:
        raw = await read_bounded(upstream.aiter_bytes(), _MAX_ERROR_BYTES,
                                 lambda: McpServerFailed("error body too large"))
    except (httpx.HTTPError, McpServerFailed):
        return "(no readable body)"
    finally:
        await upstream.aclose()
    try:
        found = loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")[:2000]
    error = found.get("error") if isinstance(found, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:2000]
    return raw.decode("utf-8", "replace")[:2000]


async def _json(server: McpServer, upstream: httpx.Response) -> Any:
    try:
        raw = await read_bounded(upstream.aiter_bytes(), MAX_ANSWER_BYTES,
                                 lambda: too_large(server))
    except httpx.HTTPError as exc:
        raise unreachable(server, exc) from exc
    finally:
        await upstream.aclose()
    try:
        return loads(raw)
    except ValueError:
        raise McpServerFailed(f"MCP server '{server.name}' answered with something that is "
                              "not JSON.") from None


def _rpc_error(rpc_id: object, code: int, message: str, status: int,
               headers: Mapping[str, str], data: Mapping[str, object] | None = None) -> Response:
    error: dict[str, object] = {"code": code, "message": message}
    if data is not None:
        error["data"] = dict(data)
    body = {"jsonrpc": "2.0", "id": rpc_id if isinstance(rpc_id, str | int) else None,
            "error": error}
    return Response(dumps(body), status_code=status, media_type=JSON, headers=dict(headers))
