"""POST /v1/messages: Anthropic's Messages API in front of the serving core, any provider behind.

    read body -> authenticate -> parse and lower (messages_wire) -> prepare
              -> complete | stream -> a Message | Anthropic's stream events

Every failure, a body over the limit included, is rendered in Anthropic's shape
``{"type": "error", "error": {"type", "message"}}``; after a stream has started it is
an ``event: error`` in the stream. Answers are translated back from the core's
OpenAI-shaped results:

- finish reason stop -> end_turn, length -> max_tokens, tool_calls -> tool_use,
  content_filter (or a refusal) -> refusal; a stop at a stop sequence the upstream
  names (Anthropic, Vertex's Claude and Claude on Bedrock do) -> stop_sequence, with
  ``stop_sequence``. Other upstreams do not say which stop sequence matched (OpenAI's,
  Gemini's, other Bedrock models): there ``stop_sequence`` is null and a stop is end_turn.
- usage: ``input_tokens`` is the prompt less its cached part (Anthropic counts
  cache reads and writes apart); the stream's ``message_start`` carries the gateway's
  own count, and ``message_delta`` the upstream's final counts.
- tool call ids pass through unchanged, so a later ``tool_result`` finds its call.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response

from .auth import authenticate
from .chat import Served, overhead_header, planned_count, upstream_id_header
from .errors import GatewayError, InternalError, UpstreamOverloaded, UpstreamServerError
from .exchange import Exchange, in_its_shape
from .jsonio import loads
from .live import Live
from .messages_wire import (
    CountTokensRequest,
    MessagesRequest,
    chat_messages,
    parse,
    to_chat_request,
    tools_of,
)
from .providers.base import (
    ChatDelta,
    ChatResult,
    Choice,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from .sse import encoded_events, named_event, settled_stream
from .telemetry.access import called_by, failed_with
from .telemetry.record import RequestRecord

__all__ = ["count_tokens", "create_message", "error_body", "error_status"]

_ERROR_TYPES: Mapping[int, str] = MappingProxyType({
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
})
_STOP_REASONS: Mapping[str, str] = MappingProxyType({
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
})

log = logging.getLogger("aigw.http")


async def create_message(
    live: Live,
    headers: Headers,
    body: Callable[[], Awaitable[bytes]],
    current: Callable[[], Live] | None = None,
    gone: Callable[[], Awaitable[None]] | None = None,
    scope: MutableMapping[str, Any] | None = None,
) -> Response:
    """POST /v1/messages. ``body()`` reads the body, once the key is known, so that a 413
    is Anthropic-shaped too; ``gone()`` returns once the client has gone (after it).

    The request's record is finished here, or when its stream ends; the app's handlers
    would answer errors in OpenAI's shape, so none reaches them. ``scope``: the request's,
    whose answer gets the request's id (``exchange.in_its_shape``).
    """
    return await in_its_shape(live, "messages", headers, current, gone,
                              lambda exchange: _message(exchange, body), _error_response, scope)


async def count_tokens(
    live: Live, headers: Headers, body: Callable[[], Awaitable[bytes]],
    scope: MutableMapping[str, Any] | None = None,
) -> Response:
    """POST /v1/messages/count_tokens: the prompt tokens the gateway plans a request with,
    for a principal that may send it (the key's routes and Cedar's invoke check, as on
    /v1/messages: a count tells what the route's planning does with a prompt).
    ``scope``: the request's, whose access line notes the caller and the error."""
    try:
        key = called_by(scope, await authenticate(live, headers))
        request = parse(CountTokensRequest, await body())
        # As the request would be planned: the conversation and the tools.
        tokens = (await planned_count(live, key, headers, request.model,
                                      chat_messages(request), tools_of(request))).tokens
    except GatewayError as exc:
        failed_with(scope, exc)
        return _error_response(exc)
    except Exception:  # in Anthropic's shape too, whatever failed
        log.exception("count_tokens failed")
        error = InternalError("The gateway had an internal error; it is logged.")
        failed_with(scope, error)
        return _error_response(error)
    return JSONResponse({"input_tokens": tokens})


def error_status(error: GatewayError) -> tuple[int, str]:
    """Anthropic's HTTP status and error type for a gateway error.

    The gateway's status stands, except that 422 (no deployment's window holds the
    prompt) is 400, as Anthropic answers a prompt that is too long, and an overloaded
    upstream is 529 ``overloaded_error``. Other 4xx are ``invalid_request_error``,
    other 5xx ``api_error`` (an upstream refusing the gateway's own key is a 502, never
    a 401 that would blame the client's key).
    """
    if isinstance(error, UpstreamOverloaded):
        return 529, "overloaded_error"
    status = 400 if error.status == 422 else error.status
    default = "api_error" if status >= 500 else "invalid_request_error"
    return status, _ERROR_TYPES.get(status, default)


def error_body(error: GatewayError) -> dict[str, object]:
    _status, kind = error_status(error)
    return {"type": "error", "error": {"type": kind, "message": error.message}}


def _error_response(error: GatewayError) -> Response:
    status, _kind = error_status(error)
    return JSONResponse(error_body(error), status_code=status, headers=error.headers)


async def _message(exchange: Exchange, read: Callable[[], Awaitable[bytes]]) -> Response:
    live, record = exchange.live, exchange.record
    key = await authenticate(live, exchange.headers)  # before the body is read
    request = parse(MessagesRequest, await read())
    chosen = await exchange.open(key, to_chat_request(request))
    if not request.stream:
        served, body = await exchange.complete_as(message_body)
        return JSONResponse(body,
                            headers={**_headers(served, record), **exchange.rate_headers(),
                                     **exchange.cache_headers()})
    served, deltas = await exchange.stream()
    encoder = EventEncoder(message_id(served), served.deployment.model, chosen.prompt_tokens)
    headers = {**_headers(served, record), **exchange.rate_headers(), **exchange.cache_headers()}
    return await settled_stream(encoded_events(encoder, deltas, live, record), headers)


def _headers(served: Served, record: RequestRecord) -> dict[str, str]:
    return {
        **served.headers(),
        "request-id": served.request_id,
        **upstream_id_header(record),
        **overhead_header(record),
    }


def message_id(served: Served) -> str:
    """``msg_`` and the hex of the gateway's request id, so logs and answers correlate."""
    return "msg_" + served.request_id.removeprefix("chatcmpl-")


def message_body(served: Served, result: ChatResult) -> dict[str, object]:
    """An Anthropic ``message`` object for the first (only) choice of a result."""
    choice = result.choices[0]
    content: list[dict[str, object]] = []
    if choice.content:
        content.append({"type": "text", "text": choice.content})
    if choice.refusal:
        content.append({"type": "text", "text": choice.refusal})
    content.extend(
        {"type": "tool_use", "id": call.id, "name": call.name, "input": tool_input(call, served)}
        for call in choice.tool_calls
    )
    return {
        "id": message_id(served),
        "type": "message",
        "role": "assistant",
        "model": result.model,
        "content": content,
        "stop_reason": _stop_reason(choice),
        "stop_sequence": choice.stop_sequence,
        "usage": usage_body(result.usage),
    }


def _stop_reason(choice: Choice) -> str:
    return stop_reason(choice.finish_reason, bool(choice.tool_calls), bool(choice.refusal),
                       choice.stop_sequence)


def stop_reason(finish_reason: str, called_tools: bool, refused: bool,
                stop_sequence: str | None = None) -> str:
    """Anthropic's ``stop_reason`` for an OpenAI finish reason.

    >>> stop_reason("stop", called_tools=True, refused=False)
    'tool_use'
    """
    if finish_reason == "length":
        return "max_tokens"
    if called_tools:
        return "tool_use"
    if refused:
        return "refusal"
    if stop_sequence is not None:
        return "stop_sequence"
    return _STOP_REASONS.get(finish_reason, "end_turn")


def usage_body(usage: Usage) -> dict[str, int]:
    """Anthropic's usage: input tokens exclude those read from or written to the cache."""
    uncached = usage.prompt_tokens - usage.cached_tokens - usage.cache_creation_tokens
    return {
        "input_tokens": max(0, uncached),
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": usage.cache_creation_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
    }


def tool_input(call: ToolCall, served: Served) -> dict[str, Any]:
    """A tool call's arguments as the JSON object they must be (else the upstream's 502)."""
    try:
        parsed = loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        provider = served.deployment.provider.name
        raise UpstreamServerError(
            f"deployment '{served.deployment.name}' called tool '{call.name}' with "
            "arguments that are not a JSON object.",
            provider=provider,
        )
    return parsed


@dataclass
class _Block:
    """A content block held back: its ``content_block_start`` and what it has so far."""

    start: dict[str, object]
    tool: int | None  # the OpenAI tool call index, or None for text
    parts: list[str] = field(default_factory=list)


def _block_start(call: ToolCallDelta | None) -> dict[str, object]:
    if call is None:
        return {"type": "text", "text": ""}
    return {"type": "tool_use", "id": call.id or f"toolu_{uuid.uuid4().hex[:24]}",
            "name": call.name or "", "input": {}}


class EventEncoder:
    """Turns adapter deltas into Anthropic stream events, opening and closing content blocks.

        message_start, ping,
        (content_block_start, content_block_delta..., content_block_stop) per block,
        message_delta (stop reason, final usage), message_stop

    Blocks are numbered in order and one is open at a time: text, then each tool call
    (``input_json_delta`` fragments). Deltas of choices other than 0 are dropped: a
    Messages request never asks for more than one.

    Anthropic's blocks follow one another, but an OpenAI-format upstream may interleave
    its tool calls' argument fragments (call 1 starts before call 0's arguments end).
    So the open tool call's block is closed only once its arguments are a whole JSON
    object; a block that cannot open yet is held back, whole, and sent as soon as the
    open one is done (at the latest when the answer ends). An upstream that sends its
    calls one after another, as OpenAI's does, is streamed as it comes.
    """

    def __init__(self, message_id: str, model: str, prompt_tokens: int) -> None:
        self._message_id = message_id
        self._model = model
        self._prompt_tokens = prompt_tokens
        self._blocks = 0  # how many blocks have been opened
        self._open: _Block | None = None
        self._held: list[_Block] = []  # blocks that could not open yet, in order of arrival
        self._calls: set[int] = set()  # the OpenAI tool call indexes seen
        self._closed: set[int] = set()  # those whose block has been closed
        self._finish: str | None = None
        self._stop_sequence: str | None = None
        self._refused = False
        self._usage: Usage | None = None

    def start(self) -> bytes:
        message: dict[str, object] = {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage_body(Usage(self._prompt_tokens, 0)),
        }
        return named_event("message_start", {"type": "message_start", "message": message}) + (
            named_event("ping", {"type": "ping"})
        )

    def encode(self, delta: ChatDelta) -> bytes:
        if delta.usage is not None:
            self._usage = delta.usage
            return b""
        if delta.index != 0:
            return b""
        out = b""
        self._refused = self._refused or bool(delta.refusal)
        text = (delta.content or "") + (delta.refusal or "")
        if text:
            out += self._add(None, text, None)
        for call in delta.tool_calls:
            self._calls.add(call.index)
            out += self._add(call.index, call.arguments or "", call)
        if delta.finish_reason is not None:
            self._finish = delta.finish_reason
            self._stop_sequence = delta.stop_sequence
        return out

    def finish(self) -> bytes:
        usage = self._usage or Usage(self._prompt_tokens, 0)
        reason = stop_reason(self._finish or "stop", bool(self._calls), self._refused,
                             self._stop_sequence)
        out = self._stop_block()
        while self._held:
            out += self._open_block(self._held.pop(0)) + self._stop_block()
        return out + named_event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": self._stop_sequence},
            "usage": usage_body(usage),
        }) + named_event("message_stop", {"type": "message_stop"})

    def failed(self, error: GatewayError) -> bytes:
        """An ``error`` event: what the SDK raises from a stream that failed after it
        started."""
        return named_event("error", error_body(error))

    def _add(self, tool: int | None, part: str, call: ToolCallDelta | None) -> bytes:
        """``part`` of the text (``tool`` None) or of tool call ``tool``'s arguments."""
        block = self._open
        if block is not None and block.tool == tool:
            if not part:
                return b""
            block.parts.append(part)
            return self._delta(part, tool) + self._advance()
        if tool is not None and tool in self._closed:
            # Only after a whole JSON object: nothing a client could use (whitespace).
            return b""
        held = next((each for each in self._held if each.tool == tool), None)
        if held is None:
            held = _Block(_block_start(call), tool)
            self._held.append(held)
        if part:
            held.parts.append(part)
        return self._advance()

    def _advance(self) -> bytes:
        """Close the open block once it is done and open the held blocks that can follow."""
        out = b""
        while self._held and self._can_close():
            out += self._stop_block() + self._open_block(self._held.pop(0))
        return out

    def _can_close(self) -> bool:
        block = self._open
        if block is None or block.tool is None:  # text ends whenever something else starts
            return True
        try:
            return isinstance(loads("".join(block.parts)), dict)
        except ValueError:
            return False

    def _open_block(self, block: _Block) -> bytes:
        self._open, index = block, self._blocks
        self._blocks += 1
        out = named_event("content_block_start", {
            "type": "content_block_start", "index": index, "content_block": block.start})
        if block.parts:
            out += self._delta("".join(block.parts), block.tool)
        return out

    def _stop_block(self) -> bytes:
        if self._open is None:
            return b""
        if self._open.tool is not None:
            self._closed.add(self._open.tool)
        self._open = None
        return named_event("content_block_stop",
                         {"type": "content_block_stop", "index": self._blocks - 1})

    def _delta(self, part: str, tool: int | None) -> bytes:
        delta = ({"type": "text_delta", "text": part} if tool is None
                 else {"type": "input_json_delta", "partial_json": part})
        return named_event("content_block_delta", {
            "type": "content_block_delta", "index": self._blocks - 1, "delta": delta})

