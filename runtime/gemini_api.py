"""Gemini's own API (v1beta) in front of the serving core, any provider behind.

    POST /v1beta/models/{route}:generateContent        a GenerateContentResponse
    POST /v1beta/models/{route}:streamGenerateContent  ?alt=sse: one per event; else
                                                        a JSON array, elements as they come
    POST /v1beta/models/{route}:countTokens            {"totalTokens": n}: counted by the
                                                        deployment the route would try
                                                        first for the caller now (Cedar,
                                                        live stats, open circuits
                                                        skipped) where it can (Gemini's,
                                                        Vertex's), else by the gateway;
                                                        ``x-aigw-counted-by`` says which
    GET  /v1beta/models[/{route}]                       the key's routes as Models, paged

The key is the gateway's, in ``x-goog-api-key`` (what google-genai sends) or ``?key=``;
it is never sent upstream. The request is lowered by ``gemini_api_wire`` and runs the
same ``Exchange`` as /v1/chat/completions; the answer is raised back:

- finish reason length -> MAX_TOKENS, content_filter (or a refusal) -> SAFETY, others
  -> STOP (the outbound adapter's table read the other way).
- tool calls -> ``functionCall`` parts with the upstream's call id, which the app sends
  back in its ``functionResponse`` (google-genai keeps it).
- usage -> ``usageMetadata``: the completion less its reasoning is
  ``candidatesTokenCount``, the reasoning ``thoughtsTokenCount``, cache reads
  ``cachedContentTokenCount``.
- a stream sends text as it comes; function calls, whose arguments an OpenAI-format
  upstream streams in pieces, are sent whole in the last event, with the finish
  reason and the usage.

Every failure is ``google.rpc.Status``-shaped, ``{"error": {"code", "message",
"status"}}``; after a stream has started it is such an object as the stream's last
event (or the array's last element), which google-genai raises.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from types import MappingProxyType
from typing import Any

from starlette.datastructures import Headers, QueryParams
from starlette.responses import JSONResponse, Response

from aigw.compiler.graph import ApiKey, Route

from .auth import bearer_token, caller_for
from .chat import PlannedCount, Served, overhead_header, planned_count, upstream_id_header
from .errors import (
    BadRequest,
    GatewayError,
    InternalError,
    NotFound,
    Unauthorized,
    UpstreamServerError,
)
from .exchange import Exchange, in_its_shape
from .gemini_api_wire import (
    CountTokensRequest,
    GenerateContentRequest,
    chat_messages,
    parse,
    to_chat_request,
    tools_of,
)
from .live import Live
from .messages import tool_input
from .providers.base import ChatCall, ChatDelta, ChatResult, CountsTokens, ToolCall, Usage
from .providers.gemini import FINISH_REASONS
from .routing.candidates import ChatAsk
from .routing.choice import first_choice
from .sse import encoded_events, settled_stream
from .telemetry.access import called_by, failed_with
from .telemetry.record import RequestRecord

__all__ = ["error_body", "get_model", "list_models", "model_call"]

# The first Gemini reason for each OpenAI one (STOP, MAX_TOKENS, SAFETY).
_FINISH: Mapping[str, str] = MappingProxyType(
    {finish: reason for reason, finish in reversed(list(FINISH_REASONS.items()))})
_STATUS: Mapping[int, str] = MappingProxyType({
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 405: "INVALID_ARGUMENT", 408: "DEADLINE_EXCEEDED", 409: "ABORTED",
    413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
    501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
})
_METHODS = ("generateContent", "streamGenerateContent", "countTokens")
COUNTED_BY = "x-aigw-counted-by"  # a countTokens answer's: deployment or gateway
_PAGE, _MAX_PAGE = 50, 1000  # Google's default and largest pageSize for models.list

log = logging.getLogger("aigw.http")

Body = Callable[[], Awaitable[bytes]]


def error_body(error: GatewayError) -> dict[str, object]:
    """``google.rpc.Status`` for a gateway error; 422 (no deployment's window holds the
    prompt) is a 400, as Gemini answers a prompt that is too long."""
    code = 400 if error.status == 422 else error.status
    status = _STATUS.get(code, "INTERNAL" if code >= 500 else "FAILED_PRECONDITION")
    return {"error": {"code": code, "message": error.message, "status": status}}


def error_response(error: GatewayError) -> Response:
    body = error_body(error)
    code = body["error"]["code"]  # type: ignore[index]
    return JSONResponse(body, status_code=code, headers=error.headers)


async def gemini_key(live: Live, headers: Headers, query: QueryParams) -> ApiKey:
    """The caller's key (or JWT): ``x-goog-api-key``, ``?key=``, or as the other APIs take it."""
    token = headers.get("x-goog-api-key") or query.get("key") or bearer_token(headers)
    if not token:
        raise Unauthorized("You didn't provide an API key: give it in an x-goog-api-key "
                           "header (as google-genai does) or a key query parameter.")
    return await caller_for(live, token)


async def model_call(
    live: Live, headers: Headers, query: QueryParams, name: str, body: Body,
    current: Callable[[], Live] | None = None, gone: Callable[[], Awaitable[None]] | None = None,
    scope: MutableMapping[str, Any] | None = None,
) -> Response:
    """POST /v1beta/models/{name}, ``name`` being ``route:method``; ``scope``: the
    request's, whose answer gets the request's id (``exchange.in_its_shape``)."""
    route, _, method = name.rpartition(":")
    if method not in _METHODS or not route:
        return error_response(NotFound(
            f"Unknown method '{name}': this gateway serves {', '.join(_METHODS)}."))
    if method == "countTokens":
        return await count_tokens(live, headers, query, route, body, scope)
    stream = method == "streamGenerateContent"
    if stream and query.get("alt", "json") not in ("sse", "json"):
        return error_response(BadRequest(
            f"alt: '{query['alt']}' is not a stream this gateway sends; give sse "
            "(server-sent events, as google-genai asks) or json (a JSON array, the default)."))
    return await in_its_shape(
        live, "generate_content", headers, current, gone,
        lambda exchange: _generate(exchange, query, route, body, stream), error_response,
        scope)


async def _generate(exchange: Exchange, query: QueryParams, route: str, read: Body,
                    stream: bool) -> Response:
    live, record = exchange.live, exchange.record
    key = await gemini_key(live, exchange.headers, query)  # before the body is read
    request = parse(GenerateContentRequest, await read())
    await exchange.open(key, to_chat_request(_route_name(route), request, stream))
    if not stream:
        served, body = await exchange.complete_as(response_body)
        return JSONResponse(body, headers={**_headers(served, record), **exchange.rate_headers(),
                                           **exchange.cache_headers()})
    served, deltas = await exchange.stream()
    array = query.get("alt") != "sse"
    encoder = ChunkEncoder(response_id(served), served, array=array)
    headers = {**_headers(served, record), **exchange.rate_headers(), **exchange.cache_headers()}
    return await settled_stream(encoded_events(encoder, deltas, live, record), headers,
                                "application/json" if array else "text/event-stream")


async def count_tokens(live: Live, headers: Headers, query: QueryParams, name: str,
                       body: Body, scope: MutableMapping[str, Any] | None = None) -> Response:
    """``:countTokens``, for a principal that may send the request (the key's routes and
    Cedar's invoke check): the deployment's own count where the one the route would try
    first for this caller now counts exactly (``deployment_count``), else the prompt
    tokens the gateway plans the request with. ``x-aigw-counted-by`` says which
    (``deployment``, with ``x-aigw-deployment``, or ``gateway``). A deployment's time
    counting is left out of its ``x-aigw-overhead-ms``, as a model endpoint's upstream time is."""
    started = time.perf_counter()
    try:
        key = called_by(scope, await gemini_key(live, headers, query))
        request = parse(CountTokensRequest, await body()).request()
        route = _route_name(name)
        planned = await planned_count(live, key, headers, route, chat_messages(request),
                                      tools_of(request), to_chat_request(route, request, False))
        tokens = planned.tokens
        counted = await deployment_count(live, planned)
    except GatewayError as exc:
        failed_with(scope, exc)
        return error_response(exc)
    except Exception:  # in Gemini's shape too, whatever failed
        log.exception("countTokens failed")
        error = InternalError("The gateway had an internal error; it is logged.")
        failed_with(scope, error)
        return error_response(error)
    if counted is None:
        return JSONResponse({"totalTokens": tokens}, headers={COUNTED_BY: "gateway"})
    deployment, total, upstream_s = counted
    overhead_ms = (time.perf_counter() - started - upstream_s) * 1000
    return JSONResponse({"totalTokens": total},
                        headers={COUNTED_BY: "deployment", "x-aigw-deployment": deployment,
                                 "x-aigw-overhead-ms": f"{overhead_ms:.3f}"})


async def deployment_count(live: Live, planned: PlannedCount) -> tuple[str, int, float] | None:
    """(deployment, its count, the seconds it took) of the deployment the attempt loop
    would call first for the request now (``routing.choice.first_choice``: the members
    that fit it, Cedar's route policies for this caller, the strategy on the live stats,
    @priority, open circuits skipped, fallbacks), where its adapter counts exactly
    (``CountsTokens``: Gemini, Vertex's Gemini), asked with the provider's credentials
    (never shown: a failure is logged by the adapter's scrubbed message). None where it
    cannot, or its count failed: the gateway's count answers.

    A count is no call: it moves no round robin (the next request's member is the one
    asked), holds nothing against the deployment's quotas (Google meters countTokens
    apart from generation, and free), and gives its circuit no verdict (a count failing
    says nothing sure of generation, and must not take a half-open circuit's probe).
    Nor is another member asked after a failure: another model's count is no more the
    served one's than the gateway's is."""
    route = planned.route
    if route.group is None:  # a pipeline's: no deployment serves it as one call
        return None
    ask = ChatAsk(live.adapters, route, planned.request, planned.tokens)
    chosen = first_choice(live.graph, route.group, ask, live.routing.shadow(), planned.gate)
    if chosen is None or not isinstance(chosen.adapter, CountsTokens):
        return None
    deployment = chosen.deployment
    call = ChatCall(planned.request, deployment, planned.tokens, chosen.max_output_tokens)
    asked = time.perf_counter()
    try:
        total = await chosen.adapter.count_tokens(call)
    except GatewayError as exc:
        log.warning("countTokens: deployment '%s' did not count the prompt (%s); the "
                    "gateway's count answers", deployment.name, exc.message)
        return None
    return None if total is None else (deployment.name, total, time.perf_counter() - asked)


async def list_models(live: Live, headers: Headers, query: QueryParams,
                      scope: MutableMapping[str, Any] | None = None) -> Response:
    """GET /v1beta/models: the routes this key may call by name, as /v1/models lists
    them, in Gemini's Model shape, sorted by name and paged as Google's API pages:
    ``pageSize`` (50 unless given, at most 1,000) and the ``nextPageToken`` of the
    page before as ``pageToken``."""
    try:
        key = called_by(scope, await gemini_key(live, headers, query))
        size, after = _page(query)
    except GatewayError as exc:
        failed_with(scope, exc)
        return error_response(exc)
    names = [name for name in sorted(live.graph.routes)
             if name > after and (key.routes is None or name in key.routes)]
    page = names[:size]
    body: dict[str, object] = {"models": [model_body(live.graph.routes[name]) for name in page]}
    if len(names) > size:
        body["nextPageToken"] = _page_token(page[-1])
    return JSONResponse(body)


def _page(query: QueryParams) -> tuple[int, str]:
    """``pageSize`` and the name a ``pageToken`` names: the page starts after it. The
    token is the last name of the page before, opaque to the client (base64url), so a
    route added or removed between two pages moves no other route."""
    given = query.get("pageSize") or "0"
    if not given.isdigit():
        raise BadRequest(f"pageSize: '{given}' is not a whole number of models.",
                         param="pageSize")
    size = min(int(given), _MAX_PAGE) or _PAGE
    token = query.get("pageToken") or ""
    try:
        after = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeError) as exc:
        raise BadRequest("pageToken: not a token this gateway gave; give the "
                         "nextPageToken of the page before.", param="pageToken") from exc
    return size, after


def _page_token(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode("ascii")


async def get_model(live: Live, headers: Headers, query: QueryParams, name: str,
                    scope: MutableMapping[str, Any] | None = None) -> Response:
    """GET /v1beta/models/{name}; ``scope``: the request's, whose access line notes the
    caller and the error (``telemetry.access``)."""
    try:
        key = called_by(scope, await gemini_key(live, headers, query))
        route = live.graph.routes.get(_route_name(name))
        if route is None or (key.routes is not None and route.name not in key.routes):
            raise NotFound(f"models/{_route_name(name)} is not found.")
    except GatewayError as exc:
        failed_with(scope, exc)
        return error_response(exc)
    return JSONResponse(model_body(route))


def model_body(route: Route) -> dict[str, object]:
    """A route as Gemini's Model: the limits are those every deployment behind it holds;
    a route of another kind (embeddings, images...) or a pipeline's has no method here."""
    candidates = route.candidates
    chat = bool(candidates) and all(each.kind == "chat" for each in candidates)
    return {
        "name": f"models/{route.name}",
        "version": "aigw",
        "displayName": route.name,
        "description": route.description or "",
        "inputTokenLimit": min((each.context_window for each in candidates), default=0),
        "outputTokenLimit": min((each.max_output_tokens for each in candidates), default=0),
        "supportedGenerationMethods": list(_METHODS) if chat else [],
    }


def _route_name(name: str) -> str:
    """``models/gpt`` names route ``gpt``; google-genai adds the prefix, curl may not."""
    return name.removeprefix("models/")


def _headers(served: Served, record: RequestRecord) -> dict[str, str]:
    return {**served.headers(), **upstream_id_header(record), **overhead_header(record)}


def response_id(served: Served) -> str:
    """The gateway's request id without its prefix, so logs and answers correlate."""
    return served.request_id.removeprefix("chatcmpl-")


def response_body(served: Served, result: ChatResult) -> dict[str, object]:
    """A GenerateContentResponse for the first (only) choice of a result."""
    choice = result.choices[0]
    parts: list[dict[str, object]] = []
    text = (choice.content or "") + (choice.refusal or "")
    if text:
        parts.append({"text": text})
    parts.extend(_call_part(call, served) for call in choice.tool_calls)
    reason = finish_reason(choice.finish_reason, bool(choice.refusal))
    return _chunk(parts, reason, result.usage, result.model, response_id(served))


def finish_reason(finish: str, refused: bool) -> str:
    """Gemini's ``finishReason`` for an OpenAI finish reason.

    >>> finish_reason("tool_calls", refused=False)
    'STOP'
    """
    return "SAFETY" if refused else _FINISH.get(finish, "STOP")


def usage_metadata(usage: Usage) -> dict[str, int]:
    """Gemini counts the model's thinking apart from its answer; the total is both."""
    metadata = {
        "promptTokenCount": usage.prompt_tokens,
        "candidatesTokenCount": max(0, usage.completion_tokens - usage.reasoning_tokens),
        "totalTokenCount": usage.prompt_tokens + usage.completion_tokens,
    }
    if usage.cached_tokens:
        metadata["cachedContentTokenCount"] = usage.cached_tokens
    if usage.reasoning_tokens:
        metadata["thoughtsTokenCount"] = usage.reasoning_tokens
    return metadata


def _call_part(call: ToolCall, served: Served) -> dict[str, object]:
    return {"functionCall": {"id": call.id, "name": call.name, "args": tool_input(call, served)}}


def _chunk(parts: list[dict[str, object]], reason: str | None, usage: Usage | None,
           model: str, answer_id: str) -> dict[str, object]:
    candidate: dict[str, object] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if reason is not None:
        candidate["finishReason"] = reason
    chunk: dict[str, object] = {"candidates": [candidate]}
    if usage is not None:
        chunk["usageMetadata"] = usage_metadata(usage)
    chunk["modelVersion"] = model
    chunk["responseId"] = answer_id
    return chunk


class ChunkEncoder:
    """Adapter deltas as ``streamGenerateContent`` chunks: one per piece of text, and a
    last chunk with the function calls (whole: Gemini's arrive whole, and google-genai
    reads each part as it comes), the finish reason and the usage. Deltas of choices
    other than 0 are dropped: a Gemini request asks for one.

    With ``?alt=sse`` each chunk is an event; without it (``array``) the chunks are the
    elements of one JSON array, written as Google's API writes it: ``[`` before the
    first, ``\\n,\\r\\n`` between two, ``\\n]`` after the last, each sent as it comes, so
    a client may parse element by element or the whole body at the end."""

    def __init__(self, answer_id: str, served: Served, array: bool = False) -> None:
        self._array = array
        self._opened = False  # an array's "[" has gone out
        self._id = answer_id
        self._model = served.deployment.model
        self._served = served
        self._calls: dict[int, list[str]] = {}  # tool call index -> id, name, arguments...
        self._finish: str | None = None
        self._refused = False
        self._usage: Usage | None = None

    def start(self) -> bytes:
        return b""

    def encode(self, delta: ChatDelta) -> bytes:
        if delta.usage is not None:
            self._usage = delta.usage
            return b""
        if delta.index != 0:
            return b""
        for call in delta.tool_calls:
            held = self._calls.setdefault(call.index, ["", ""])
            held[0] = held[0] or call.id or ""
            held[1] = held[1] or call.name or ""
            held.append(call.arguments or "")
        if delta.finish_reason is not None:
            self._finish = delta.finish_reason
        self._refused = self._refused or bool(delta.refusal)
        text = (delta.content or "") + (delta.refusal or "")
        if not text:
            return b""
        return self._event(_chunk([{"text": text}], None, None, self._model, self._id))

    def finish(self) -> bytes:
        parts: list[dict[str, object]] = []
        for index, (call_id, name, *arguments) in sorted(self._calls.items()):
            try:
                args = json.loads("".join(arguments) or "{}")
            except ValueError:
                args = None
            if not isinstance(args, dict):  # the stream's error event, as a refusal is
                deployment = self._served.deployment
                raise UpstreamServerError(
                    f"deployment '{deployment.name}' called tool '{name}' (call {index}) "
                    "with arguments that are not a JSON object.",
                    provider=deployment.provider.name)
            parts.append({"functionCall": {"id": call_id, "name": name, "args": args}})
        reason = finish_reason(self._finish or "stop", self._refused)
        return self._event(_chunk(parts, reason, self._usage, self._model, self._id),
                           last=True)

    def failed(self, error: GatewayError) -> bytes:
        """A ``google.rpc.Status`` as an event (an array's last element): what
        google-genai raises mid-stream."""
        return self._event(error_body(error), last=True)

    def _event(self, data: Mapping[str, object], last: bool = False) -> bytes:
        encoded = json.dumps(data, separators=(",", ":")).encode()
        if not self._array:
            return b"data: " + encoded + b"\n\n"
        opening = b"\n,\r\n" if self._opened else b"["
        self._opened = True
        return opening + encoded + (b"\n]" if last else b"")
