"""The Starlette application: endpoints, the per-request graph snapshot, OpenAI-shaped errors."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aigw import __version__
from aigw.compiler import overview
from aigw.compiler.graph import ApiKey

from . import usage_api
from .admin_page import admin_page_routes
from .audio import speech, transcriptions, translations
from .auth import authenticate, keys_status, require_admin, work_key
from .batches import BatchRunner, LineAnswer, batch_routes
from .chat import chat_completions, new_record
from .completions import create_completion
from .conversations import conversation_routes
from .embeddings import embeddings
from .errors import (
    GatewayError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    StatusError,
    StoreUnavailable,
)
from .exchange import Exchange, exchanged
from .gemini_api import error_body as gemini_error_body
from .gemini_api import get_model, list_models, model_call
from .image_edits import edit_images
from .images import generate_images
from .incoming import body_arriving, client_gone, read_body
from .jsonio import dumps
from .live import Gateway, Live
from .mcp import McpProxy, mcp_routes
from .messages import count_tokens, create_message, error_body
from .moderations import moderate
from .passthrough import PassthroughProxy, passthrough_routes
from .policy_endpoints import policy_routes
from .policy_request import TAGS_HEADER
from .realtime import realtime
from .rerank import rerank
from .responses import create_response
from .responses_stored import cancel_response, delete_response, get_response, input_items
from .store.callers import TokenCaller
from .store.namespaces import warn_of_namespaces_left
from .telemetry.access import ACCESS, NOT_FOUND, AccessRecord, called_by, failed_with, finish_access
from .telemetry.faults import log_fault
from .telemetry.record import ANSWERED_AS, answered_as
from .upstream_load import UpstreamLoadWatch
from .workflows import PipelineChat, Workflows, a2a_routes, workflow_routes

CIRCUITS_PUBLISHED_EVERY_S = 1.0

log = logging.getLogger("aigw.http")

Endpoint = Callable[[Request], Awaitable[Response]]
Answer = Callable[[Exchange, ApiKey, bytes], Awaitable[Response]]


def create_app(gateway: Gateway, workflows: Workflows | None = None) -> ASGIApp:
    """The ASGI app serving ``gateway``; every response says which graph answered it.

    ``workflows`` runs its pipelines (one is made when not given; its runner starts with
    the ASGI lifespan, or on first use)."""
    workflows = workflows or Workflows(gateway)
    endpoints = _Endpoints(gateway, PipelineChat(workflows))
    batches = BatchRunner(gateway, endpoints.batch_line)
    mcp = McpProxy()
    passthrough = PassthroughProxy()
    # The model endpoints are most of the traffic: they are called without Starlette's
    # routing and middleware layers (bench/BENCH.md, "What the profiles found").
    direct: dict[str, Endpoint] = {
        "/v1/chat/completions": endpoints.chat,
        "/v1/completions": endpoints.completions,
        "/v1/embeddings": endpoints.embeddings,
        "/v1/rerank": endpoints.rerank,
        "/v1/images/generations": endpoints.images,
        "/v1/images/edits": endpoints.image_edits,
        "/v1/moderations": endpoints.moderations,
        "/v2/rerank": endpoints.rerank,  # where Cohere's SDK (ClientV2) posts
        "/v1/audio/transcriptions": endpoints.transcriptions,
        "/v1/audio/translations": endpoints.translations,
        "/v1/audio/speech": endpoints.speech,
        "/v1/messages": endpoints.messages,
        "/v1/responses": endpoints.responses,
    }
    app = Starlette(
        routes=[
            *(Route(path, endpoint, methods=["POST"]) for path, endpoint in direct.items()),
            Route("/v1/messages/count_tokens", endpoints.count_tokens, methods=["POST"]),
            WebSocketRoute("/v1/realtime", partial(realtime, gateway)),
            Route("/v1/responses/{response_id}", endpoints.stored_response,
                  methods=["GET", "DELETE"]),
            Route("/v1/responses/{response_id}/input_items", endpoints.response_input_items,
                  methods=["GET"]),
            Route("/v1/responses/{response_id}/cancel", endpoints.cancel_response,
                  methods=["POST"]),
            *conversation_routes(),
            *batch_routes(batches),
            Route("/v1beta/models", endpoints.gemini_models, methods=["GET"]),
            Route("/v1beta/models/{name:path}", endpoints.gemini_model, methods=["GET", "POST"]),
            Route("/v1/models", endpoints.models, methods=["GET"]),
            Route("/v1/models/{name:path}", endpoints.model, methods=["GET"]),
            Route("/health", endpoints.health, methods=["GET"]),
            Route("/v1/costs/summary", endpoints.costs_summary, methods=["GET"]),
            Route("/admin/spend", endpoints.admin_spend, methods=["GET"]),
            Route("/admin/budgets", endpoints.admin_budgets, methods=["GET"]),
            Route("/metrics", endpoints.metrics, methods=["GET"]),
            Route("/admin/status", endpoints.admin_status, methods=["GET"]),
            Route("/admin/reload", endpoints.admin_reload, methods=["POST"]),
            *workflow_routes(workflows),
            *a2a_routes(workflows),
            *admin_page_routes(gateway, workflows),
            *policy_routes(gateway),
            *mcp_routes(mcp),
            *passthrough_routes(passthrough),
        ],
        lifespan=partial(_lifespan, gateway, workflows, mcp, batches, passthrough),
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
    )
    return SnapshotMiddleware(app, gateway, direct)


@asynccontextmanager
async def _lifespan(gateway: Gateway, workflows: Workflows, mcp: McpProxy,
                    batches: BatchRunner, passthrough: PassthroughProxy,
                    app: object) -> AsyncIterator[None]:
    """vLLM servers' metrics are read for as long as the app serves; pipelines and
    batches run; the MCP proxy's and the pass-throughs' clients are closed at the end."""
    tasks = [asyncio.create_task(
        UpstreamLoadWatch(lambda: (gateway.live.graph, gateway.routing)).run(),
        name="aigw-upstream-load")]
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        tasks.append(asyncio.create_task(_publish_circuits(gateway), name="aigw-circuits"))
    if not gateway.live.graph.settings.store.startswith("embedded"):
        # A Redis store is opened at once (it does not connect yet): writes an earlier run
        # left in its outbox file are sent without waiting for a request.
        await gateway.store.get()
        settings = gateway.live.graph.settings
        tasks.append(asyncio.create_task(
            warn_of_namespaces_left(settings.store, settings.redis_namespace, gateway.root),
            name="aigw-namespaces"))
    try:
        async with workflows.lifespan(app), batches.running():
            yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await mcp.aclose()
        await passthrough.aclose()


async def _publish_circuits(gateway: Gateway) -> None:
    """With several workers, a scrape is answered by one of them from the shared metric
    files: each worker writes its breakers there every second, so the one answering
    shows every worker's circuits as they are, not as the last request each served
    left them."""
    while True:
        try:
            gateway.telemetry.metrics.publish_circuits()
        except Exception:  # the loop must outlive a bug, or the metric goes stale again
            log.exception("publishing the circuit states to /metrics failed")
        await asyncio.sleep(CIRCUITS_PUBLISHED_EVERY_S)


class SnapshotMiddleware:
    """Pins the live graph for the whole request and stamps ``x-aigw-graph`` on the
    response, and ``x-request-id`` (the id of its access-log line, ``answered_as``) on
    one that has none: an error's, whichever handler answered it. A POST to one of the
    ``direct`` paths goes straight to its endpoint."""

    def __init__(self, app: ASGIApp, gateway: Gateway, direct: Mapping[str, Endpoint]) -> None:
        self.app = app
        self.gateway = gateway
        self.direct = direct

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        live = self.gateway.live  # read once: a reload swaps the reference, not this request's
        state = scope.setdefault("state", {})
        state["live"] = live
        stamp = live.graph.fingerprint.encode()
        drained: asyncio.Future[None] | None = None
        ended = False  # the app has read the request's last message

        async def receive_noted() -> Message:
            nonlocal ended
            message = await receive()
            ended = not message.get("more_body", False)
            return message

        # read_body asks hypercorn's queue whether the body is here (incoming._queue_of)
        receive_noted.__wrapped__ = receive  # type: ignore[attr-defined]

        async def send_stamped(message: Message) -> None:
            nonlocal drained
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-aigw-graph", stamp)]
                # The id of the request's access-log line, on every answer (an error's
                # too: only a model's answer sets its own), once its record was made.
                answered = state.get(ANSWERED_AS)
                if answered is not None and not any(name.lower() == b"x-request-id"
                                                    for name, _value in headers):
                    headers.append((b"x-request-id", answered.encode("latin-1")))
                if not ended and body_arriving(receive):
                    # An answer given before the body came whole (on the headers alone:
                    # a 404, a 413). hypercorn queues at most 10 of its parts for the
                    # app, and puts the disconnect behind them from within the answer's
                    # last send: once the rest filled the queue, that put never returned
                    # and the connection hung, the client's next request on it too. The
                    # parts are read and dropped while the answer goes out, and hypercorn
                    # closes the connection. (Asked of the queue, not of how full it is
                    # now: the answer may go before a fast client's body fills it.)
                    headers.append((b"connection", b"close"))
                    drained = asyncio.ensure_future(client_gone(receive))
                message["headers"] = headers
            await send(message)

        endpoint = self.direct.get(scope["path"]) if scope["method"] == "POST" else None
        live.in_flight.count += 1  # until its body is sent (a stream's last byte too)
        try:
            if endpoint is None or scope.get("root_path"):
                await self._routed(scope, live, receive_noted, _with_overhead(send_stamped))
            else:
                await _call(endpoint, scope, receive_noted, send_stamped)
        except Exception as exc:
            # Answered by the handlers (a 500; a stream cut short) and logged here, once,
            # with the request's id; raised no further, as hypercorn would log it again.
            log_fault(exc, f"{scope['method']} {scope['path']}", state.get(ANSWERED_AS),
                      live.graph, IndexedHeaders(scope))
        finally:
            live.in_flight.leave()
            if drained is not None:  # the answer is sent, and the connection closed
                drained.cancel()

    async def _routed(self, scope: Scope, live: Live, receive: Receive, send: Send) -> None:
        """Through Starlette's router. A request that no endpoint claims with a record of
        its own (``answered_as``) by the time its answer starts is given an access line
        here, and its answer that line's id; the probes (/health, /metrics) are not."""
        if scope["path"] in _UNLOGGED:
            await self.app(scope, receive, send)
            return
        state = scope["state"]
        access = state[ACCESS] = AccessRecord(live.graph.fingerprint, scope["method"],
                                              scope["path"])

        async def send_noted(message: Message) -> None:
            if message["type"] == "http.response.start":
                access.status = message["status"]
                state.setdefault(ANSWERED_AS, access.request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_noted)
        finally:
            # Unless an endpoint claimed it (its own record has its line), or none
            # started (the client left): the id not on an answer names the line still.
            if state.get(ANSWERED_AS, access.request_id) == access.request_id:
                finish_access(live.telemetry, access)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket goes to its endpoint as it came (/v1/realtime writes its session's
        line). One to a path no route has, which Starlette's router refuses by closing
        before the accept, is given a line here: endpoint not_found, status 403, as the
        server answers such a refusal. Where the server lets an app answer a handshake
        itself (ASGI's websocket.http.response, as hypercorn does), the 403 is sent here,
        with the line's id (x-request-id), the graph and the error's body."""
        live = self.gateway.live
        state = scope.setdefault("state", {})
        access = AccessRecord(live.graph.fingerprint, "GET", scope["path"])
        access.endpoint = NOT_FOUND
        refused = False
        accepted = closed = False

        async def send_refusal(message: Message) -> None:
            nonlocal refused, accepted, closed
            accepted = accepted or message["type"] == "websocket.accept"
            closed = closed or message["type"] in _WEBSOCKET_ENDS
            # A route that matched named its endpoint in the scope (Router.app).
            if message["type"] != "websocket.close" or "endpoint" in scope or refused:
                await send(message)
                return
            refused = True
            access.status = 403
            unknown = NotFound(f"Unknown endpoint: GET {scope['path']}.")
            access.error = str(unknown.code)
            if "websocket.http.response" not in (scope.get("extensions") or {}):
                await send(message)
                return
            await send({"type": "websocket.http.response.start", "status": 403, "headers": [
                (b"content-type", b"application/json"),
                (b"x-aigw-graph", live.graph.fingerprint.encode()),
                (b"x-request-id", access.request_id.encode())]})
            await send({"type": "websocket.http.response.body", "body": dumps(unknown.body())})

        try:
            await self.app(scope, receive, send_refusal)
        except Exception as exc:
            # Logged here, once, with the session's id (answered_as), and the socket
            # closed as a server error: raised on, hypercorn would log it again, naming
            # no session and quoting whatever keys its traceback holds.
            log_fault(exc, f"GET {scope['path']}", state.get(ANSWERED_AS), live.graph,
                      IndexedHeaders(scope))
            if not closed:
                with contextlib.suppress(OSError, RuntimeError):  # the client has gone
                    await send({"type": "websocket.close", "code": WEBSOCKET_SERVER_ERROR}
                               if accepted else {"type": "websocket.close"})
        finally:
            if refused:
                finish_access(live.telemetry, access)


# What ends a WebSocket from the app's side: a close, or an answer to its handshake.
_WEBSOCKET_ENDS = frozenset({"websocket.close", "websocket.http.response.start"})
WEBSOCKET_SERVER_ERROR = 1011  # RFC 6455 7.4.1: the server met a condition it did not expect


# Probes, asked every few seconds: a line each would bury the requests.
_UNLOGGED = frozenset({"/health", "/metrics"})


def _with_overhead(send: Send) -> Send:
    """``send``, stamping ``x-aigw-overhead-ms`` on a response that has none: the model
    endpoints set their own (upstream time excluded); the rest (an unknown path, a 405,
    /v1/models, count_tokens) call no upstream, so all their time is the gateway's
    (Gemini's countTokens, when it asks its deployment, sets its own)."""
    started = time.perf_counter()

    async def send_timed(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = message.get("headers", [])
            if not any(name.lower() == b"x-aigw-overhead-ms" for name, _value in headers):
                overhead = f"{(time.perf_counter() - started) * 1000:.3f}".encode()
                message["headers"] = [*headers, (b"x-aigw-overhead-ms", overhead)]
        await send(message)

    return send_timed


class IndexedHeaders(Headers):
    """A request's headers as Starlette's ``Headers``, looked up in a dict built once:
    the request path asks for a dozen, most of them absent, and ``Headers`` scans the
    list for each (raising and catching a KeyError inside ``get`` for an absent one).
    The first of repeated headers wins, as in ``Headers``; names arrive lowercased.

    The dict is of the bytes as they arrived, built backwards (so the first of repeated
    names is written last): a client sends a dozen headers or more (the OpenAI SDK's
    x-stainless-* ones), and decoding each name and value cost three calls a header,
    for the few that are read. A value is decoded when it is read; the name asked for
    is lowercased and encoded once per process (``_wire_name``)."""

    def __init__(self, scope: Scope) -> None:
        super().__init__(scope=scope)
        self._index = {name: value for name, value in reversed(self._list)}

    def __getitem__(self, key: str) -> str:
        return self._index[_wire_name(key)].decode("latin-1")

    def get(self, key: str, default: Any = None) -> Any:
        value = self._index.get(_wire_name(key))
        return default if value is None else value.decode("latin-1")

    def __contains__(self, key: Any) -> bool:
        return isinstance(key, str) and _wire_name(key) in self._index


@functools.lru_cache(maxsize=256)  # the names the code asks for: a few dozen constants
def _wire_name(key: str) -> bytes:
    """A header name as it arrives: lowercased bytes."""
    return key.lower().encode("latin-1")


class _Request(Request):
    """Starlette's request, with ``IndexedHeaders``."""

    @property
    def headers(self) -> Headers:
        found = self.__dict__.get("_indexed")
        if found is None:
            found = self.__dict__["_indexed"] = IndexedHeaders(self.scope)
        return found


async def _call(endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
    """What Starlette's router, request wrapper and exception handlers do for one
    endpoint: its response, or the OpenAI-shaped error it raised. An error no handler
    names is answered as a 500 and raised on, as Starlette's error middleware does, for
    SnapshotMiddleware to log; one after the response started (a stream's) too, and the
    server closes the connection on the answer left unfinished."""
    request = _Request(scope, receive, send)
    unexpected: Exception | None = None
    try:
        response = await endpoint(request)
    except GatewayError as exc:
        response = _error_response(exc)
    except HTTPException as exc:
        response = await _http_error(request, exc)
    except Exception as exc:
        response, unexpected = await _unexpected_error(request, exc), exc
    await response(scope, receive, send)
    if unexpected is not None:
        raise unexpected  # answered; SnapshotMiddleware logs it


def _live(request: Request) -> Live:
    live: Live = request.scope["state"]["live"]  # not request.state: that builds an object
    return live


def _model(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "aigw"}


async def _named_key(live: Live, name: str, caller: TokenCaller | None) -> ApiKey:
    """The batch creator called ``name``, as its lines run (``work_key``)."""
    return work_key(live, name, caller)


# A batch line's request has no headers of its own: its key is the batch's creator's.
_BATCH_HEADERS = Headers({})


class _Endpoints:
    def __init__(self, gateway: Gateway, pipelines: PipelineChat | None = None) -> None:
        self.gateway = gateway
        self.pipelines = pipelines
        # What a batch's line may be (runtime/batches): the endpoint's name and answer.
        self._batchable: dict[str, tuple[str, Answer]] = {
            "/v1/chat/completions": ("chat", partial(chat_completions, pipelines=pipelines)),
            "/v1/completions": ("completions", create_completion),
            "/v1/embeddings": ("embeddings", embeddings),
            "/v1/responses": ("responses", create_response),
        }

    async def chat(self, request: Request) -> Response:
        return await self._exchanged(request, "chat",
                                     partial(chat_completions, pipelines=self.pipelines))

    async def _exchanged(self, request: Request, endpoint: str, answer: Answer,
                         upload: Literal["audio", "image"] | None = None) -> Response:
        """``answer``'s response to the request's key and body. The key is checked before
        the body is read: a caller without one cannot make the gateway hold megabytes.
        ``upload``: the body is a multipart form of audio or images, bounded by
        ``max_audio_upload_bytes`` or ``max_image_upload_bytes``."""
        live = _live(request)
        record = new_record(live, endpoint)
        answered_as(request.scope, record.request_id)
        headers = request.headers  # a property: two calls each time it is read
        exchange = Exchange(live, record, headers, lambda: self.gateway.live,
                            partial(client_gone, request.receive))
        settings = live.graph.settings
        limit = None if upload is None else settings.max_audio_upload_bytes \
            if upload == "audio" else settings.max_image_upload_bytes
        return await exchanged(exchange, partial(authenticate, live, headers),
                               partial(read_body, request, settings, upload_limit=limit),
                               answer)

    async def batch_line(self, key_name: str, caller: TokenCaller | None, path: str,
                         body: bytes, batch: str, tags: tuple[str, ...]) -> LineAnswer:
        """One line of ``batch`` answered as a POST of ``body`` to ``path`` by the key named
        ``key_name`` (the batch's creator; ``caller``: the JWT's caller it was), with the
        ``tags`` its creating request sent, is: the same exchange, limits, routing (Cedar
        asked with those tags), billing and telemetry, its ledger record and access line
        marked with the batch."""
        live = self.gateway.live
        endpoint, answer = self._batchable[path]
        record = new_record(live, endpoint)
        record.batch = batch
        headers = Headers({TAGS_HEADER: ",".join(tags)}) if tags else _BATCH_HEADERS
        exchange = Exchange(live, record, headers, lambda: self.gateway.live)

        async def read() -> bytes:
            return body

        # In flight on its snapshot, as a request is: a reload closes the adapters it
        # dropped only once nothing on the old graph still uses them.
        live.in_flight.count += 1
        try:
            response = await exchanged(exchange, partial(_named_key, live, key_name, caller),
                                       read, answer)
        except GatewayError as exc:
            return LineAnswer(exc.status, exc.body(), record.request_id, exc)
        finally:
            live.in_flight.leave()
        return LineAnswer(response.status_code, bytes(response.body), record.request_id)

    async def costs_summary(self, request: Request) -> Response:
        return await usage_api.costs_summary(_live(request), request)

    async def admin_spend(self, request: Request) -> Response:
        return await usage_api.admin_spend(_live(request), request)

    async def admin_budgets(self, request: Request) -> Response:
        return await usage_api.admin_budgets(_live(request), request)

    async def metrics(self, request: Request) -> Response:
        live = _live(request)
        if live.graph.settings.metrics_access == "admin":
            require_admin(live.graph, request.headers)
        metrics = live.telemetry.metrics
        metrics.publish_circuits()
        # Budget use is read at scrape time, not per request: the store has the figures.
        try:
            metrics.publish_budgets({
                (status.scope.value, status.name):
                    status.spent / status.amount if status.amount else float(status.spent > 0)
                for status in await usage_api.declared_budgets(live)
            })
        except StoreUnavailable:
            log.warning("budget use left out of /metrics: the store is unavailable")
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    async def completions(self, request: Request) -> Response:
        return await self._exchanged(request, "completions", create_completion)

    async def embeddings(self, request: Request) -> Response:
        return await self._exchanged(request, "embeddings", embeddings)

    async def rerank(self, request: Request) -> Response:
        return await self._exchanged(request, "rerank", rerank)

    async def images(self, request: Request) -> Response:
        return await self._exchanged(request, "images", generate_images)

    async def image_edits(self, request: Request) -> Response:
        return await self._exchanged(request, "image_edits", edit_images, upload="image")

    async def moderations(self, request: Request) -> Response:
        return await self._exchanged(request, "moderations", moderate)

    async def transcriptions(self, request: Request) -> Response:
        return await self._exchanged(request, "transcriptions", transcriptions, upload="audio")

    async def translations(self, request: Request) -> Response:
        return await self._exchanged(request, "translations", translations, upload="audio")

    async def speech(self, request: Request) -> Response:
        return await self._exchanged(request, "speech", speech)

    async def messages(self, request: Request) -> Response:
        live = _live(request)  # the body is read inside, so its errors are Anthropic-shaped
        body = partial(read_body, request, live.graph.settings)
        return await create_message(live, request.headers, body, lambda: self.gateway.live,
                                    partial(client_gone, request.receive), request.scope)

    async def responses(self, request: Request) -> Response:
        return await self._exchanged(request, "responses", create_response)

    async def stored_response(self, request: Request) -> Response:
        """GET or DELETE /v1/responses/{id}: a response kept for the caller's key."""
        live, response_id = _live(request), request.path_params["response_id"]
        key = called_by(request.scope, await authenticate(live, request.headers))
        if request.method == "DELETE":
            return await delete_response(live, key, response_id)
        return await get_response(live, key, response_id)

    async def cancel_response(self, request: Request) -> Response:
        live = _live(request)
        key = called_by(request.scope, await authenticate(live, request.headers))
        return await cancel_response(live, key, request.path_params["response_id"])

    async def response_input_items(self, request: Request) -> Response:
        live = _live(request)
        key = called_by(request.scope, await authenticate(live, request.headers))
        return await input_items(live, key, request.path_params["response_id"],
                                 request.query_params)

    async def gemini_models(self, request: Request) -> Response:
        return await list_models(_live(request), request.headers, request.query_params,
                                 request.scope)

    async def gemini_model(self, request: Request) -> Response:
        """GET a Model, or POST ``{route}:generateContent`` and its siblings; the body
        is read inside, so that its errors are Gemini-shaped."""
        live, name = _live(request), request.path_params["name"]
        if request.method == "GET":
            return await get_model(live, request.headers, request.query_params, name,
                                   request.scope)
        body = partial(read_body, request, live.graph.settings)
        return await model_call(live, request.headers, request.query_params, name, body,
                                lambda: self.gateway.live, partial(client_gone, request.receive),
                                request.scope)

    async def count_tokens(self, request: Request) -> Response:
        live = _live(request)
        body = partial(read_body, request, live.graph.settings)
        return await count_tokens(live, request.headers, body, request.scope)

    async def models(self, request: Request) -> Response:
        """The routes this key may call by name (its ``routes:``, if it has them), as
        OpenAI's model objects. Cedar policies are not asked: whether they permit a call
        can depend on the request (its tokens, tags, the time), not on its name alone."""
        live = _live(request)
        key = called_by(request.scope, await authenticate(live, request.headers))
        created = int(live.loaded_at)
        data = [_model(name, created) for name in sorted(live.graph.routes)
                if key.routes is None or name in key.routes]
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request: Request) -> Response:
        live = _live(request)
        key = called_by(request.scope, await authenticate(live, request.headers))
        name = request.path_params["name"]
        if name not in live.graph.routes or (key.routes is not None and name not in key.routes):
            raise NotFound(f"The model '{name}' does not exist.", param="model")
        return JSONResponse(_model(name, int(live.loaded_at)))

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "graph": _live(request).graph.fingerprint})

    async def admin_status(self, request: Request) -> Response:
        live = _live(request)
        called_by(request.scope, require_admin(live.graph, request.headers))
        graph = live.graph
        last = self.gateway.last_reload
        return JSONResponse(
            {
                "version": __version__,
                "graph": {
                    "fingerprint": graph.fingerprint,
                    "root": graph.root,
                    "loaded_at": live.loaded_at,
                    "routes": {
                        name: {
                            "kind": route.kind.value,
                            "target": route.target,
                            "candidates": [d.name for d in route.candidates],
                            "cache": overview.route_cache(route.cache),
                            "guardrails": overview.route_guardrails(route.guardrails),
                        }
                        for name, route in sorted(graph.routes.items())
                    },
                    "providers": {
                        name: {
                            "type": p.type,
                            "enabled": name in live.adapters,
                            "disabled_reason": p.disabled_reason,
                        }
                        for name, p in sorted(graph.providers.items())
                    },
                    "mcp_servers": {name: overview.mcp_server(server)
                                    for name, server in sorted(graph.mcp_servers.items())},
                    "passthrough": {name: overview.passthrough(entry)
                                    for name, entry in sorted(graph.passthrough.items())},
                    "warnings": [item.as_dict() for item in graph.warnings],
                    "keys": keys_status(graph, time.time()),
                    "issuers": live.identities.status(graph),
                },
                "deployments": {
                    name: dataclasses.asdict(snapshot)
                    for name, snapshot in live.routing.snapshot().items()
                },
                "last_reload": last.as_dict() if last is not None else None,
            }
        )

    async def admin_reload(self, request: Request) -> Response:
        called_by(request.scope, require_admin(_live(request).graph, request.headers))
        report = await self.gateway.reload_everywhere("admin-api")
        return JSONResponse(report.as_dict(), status_code=200 if report.ok else 422)


def _error_response(error: GatewayError) -> Response:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    failed_with(request.scope, exc)
    return _error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no route, wrong method, a handler's ``HTTPException``)
    OpenAI-shaped: a 4xx is the client's (``invalid_request_error``), a 5xx the gateway's.
    The exception's headers are kept: a 405 must say what is ``Allow``ed (RFC 9110)."""
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        wrong = MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}.",
                                 headers=headers)
        failed_with(request.scope, wrong)
        if request.url.path.startswith("/v1/messages"):  # in the shape its SDK reads
            return JSONResponse(error_body(wrong), status_code=405, headers=wrong.headers)
        if request.url.path.startswith("/v1beta/"):
            return JSONResponse(gemini_error_body(wrong), status_code=405, headers=wrong.headers)
        return _error_response(wrong)
    if exc.status_code == 404:
        unknown = NotFound(f"Unknown endpoint: {request.method} {request.url.path}.")
        access = request.scope["state"].get(ACCESS)
        if access is not None:  # no route has the path: not the endpoint its start names
            access.endpoint = NOT_FOUND
        failed_with(request.scope, unknown)
        return _error_response(unknown)
    error = StatusError(exc.status_code, str(exc.detail), headers=headers)
    failed_with(request.scope, error)
    return _error_response(error)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    """The 500 of an error no handler names; SnapshotMiddleware logs it (Starlette's
    error middleware, and ``_call``, raise it on once it is answered). A request that
    no record claimed yet is given an id here: the answer's, and the log line's."""
    state = request.scope["state"]
    if ACCESS not in state and ANSWERED_AS not in state:
        answered_as(request.scope, os.urandom(16).hex())
    error = InternalError("The gateway had an internal error; it is logged.")
    failed_with(request.scope, error)
    return _error_response(error)
