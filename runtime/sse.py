"""OpenAI chat completion objects and chunks, as JSON and as server-sent events; the
event loop every other wire format's stream runs (``encoded_events``)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Protocol

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from . import jsonio
from .errors import GatewayError
from .jsonio import AnswerHeaders
from .providers.base import ChatDelta, ChatResult, Choice, ToolCallDelta, Usage, close_deltas

if TYPE_CHECKING:
    from .live import Live
    from .telemetry.record import RequestRecord

DONE = b"data: [DONE]\n\n"


def named_event(name: str, data: Mapping[str, object]) -> bytes:
    """One server-sent event as Anthropic's Messages and OpenAI's Responses streams frame
    theirs: ``event:`` then ``data:`` JSON (a chat completion chunk has no ``event:``)."""
    payload = json.dumps(data, separators=(",", ":"))
    return f"event: {name}\ndata: {payload}\n\n".encode()


def usage_body(usage: Usage) -> dict[str, object]:
    body: dict[str, object] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    given: dict[str, int] = {}
    written: dict[str, int] = {}
    if usage.cached_tokens:
        given["cached_tokens"] = usage.cached_tokens
    if usage.reasoning_tokens:
        written["reasoning_tokens"] = usage.reasoning_tokens
    if usage.audio_input_tokens or usage.audio_output_tokens:  # a spoken chat's, as OpenAI's
        given["audio_tokens"] = usage.audio_input_tokens
        written["audio_tokens"] = usage.audio_output_tokens
    if given:
        body["prompt_tokens_details"] = given
    if written:
        body["completion_tokens_details"] = written
    return body


def message_body(choice: Choice) -> dict[str, object]:
    message: dict[str, object] = {
        "role": "assistant",
        "content": choice.content,
        "refusal": choice.refusal,
    }
    if choice.tool_calls:
        message["tool_calls"] = [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": call.arguments}}
            for call in choice.tool_calls
        ]
    if choice.extra:
        message.update(choice.extra)
    return message


def completion_body(request_id: str, created: int, result: ChatResult) -> dict[str, object]:
    """A ``chat.completion`` object as OpenAI returns it."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": result.model,
        "choices": [
            {
                "index": choice.index,
                "message": message_body(choice),
                "logprobs": choice.logprobs,
                "finish_reason": choice.finish_reason,
            }
            for choice in result.choices
        ],
        "usage": usage_body(result.usage),
        "system_fingerprint": None,
    }


class ChunkEncoder:
    """Turns adapter deltas into ``chat.completion.chunk`` events, exactly as OpenAI streams them.

    Each choice opens with a role delta; with ``include_usage`` every chunk carries
    ``"usage": null`` and a last chunk with no choices carries the usage.
    """

    def __init__(self, request_id: str, created: int, model: str, include_usage: bool) -> None:
        self._head = {"id": request_id, "object": "chat.completion.chunk", "created": created,
                      "model": model, "system_fingerprint": None}
        self._include_usage = include_usage
        self._opened: set[int] = set()

    def _event(self, choices: list[dict[str, object]], usage: Usage | None = None) -> bytes:
        chunk: dict[str, object] = {**self._head, "choices": choices}
        if self._include_usage:
            chunk["usage"] = usage_body(usage) if usage is not None else None
        return b"data: " + jsonio.dumps(chunk) + b"\n\n"

    def encode(self, delta: ChatDelta) -> bytes:
        if delta.usage is not None:
            return self._event([], delta.usage) if self._include_usage else b""
        out = b""
        if delta.index not in self._opened:
            self._opened.add(delta.index)
            out += self._event([_choice(delta.index, {"role": "assistant", "content": ""}, None)])
        body: dict[str, object] = {}
        if delta.content is not None:
            body["content"] = delta.content
        if delta.refusal is not None:
            body["refusal"] = delta.refusal
        if delta.tool_calls:
            body["tool_calls"] = [_tool_call_delta(call) for call in delta.tool_calls]
        if delta.extra:
            body.update(delta.extra)
        if body or delta.logprobs is not None:
            out += self._event([_choice(delta.index, body, None, delta.logprobs)])
        if delta.finish_reason is not None:
            out += self._event([_choice(delta.index, {}, delta.finish_reason)])
        return out

    async def events(self, deltas: AsyncIterator[ChatDelta]) -> AsyncIterator[bytes]:
        async for delta in deltas:
            event = self.encode(delta)
            if event:
                yield event
        yield DONE


def _tool_call_delta(call: ToolCallDelta) -> dict[str, object]:
    body: dict[str, object] = {"index": call.index}
    if call.id is not None:
        body["id"] = call.id
        body["type"] = "function"
    function: dict[str, str] = {}
    if call.name is not None:
        function["name"] = call.name
    if call.arguments is not None:
        function["arguments"] = call.arguments
    if function:
        body["function"] = function
    return body


def _choice(
    index: int, delta: dict[str, object], finish: str | None, logprobs: object = None
) -> dict[str, object]:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}


def error_event(body: dict[str, object]) -> bytes:
    """An error in the middle of a stream, after the status line has gone out."""
    return b"data: " + jsonio.dumps(body) + b"\n\n"


class _SettledStream(AnswerHeaders, StreamingResponse):
    """A stream whose events' generator is closed when the response ends, however it
    ends: its ``finally`` settles the request and writes its records."""

    def __init__(self, first: bytes, events: AsyncGenerator[bytes, None],
                 headers: Mapping[str, str], media_type: str) -> None:
        super().__init__(_chained(first, events), media_type=media_type,
                         headers={**headers, "cache-control": "no-cache"})
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:  # shielded: a client that went away cancels the response, not this
            with anyio.CancelScope(shield=True):
                await self._events.aclose()


async def _chained(first: bytes, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for event in events:
        yield event


async def settled_stream(
    events: AsyncGenerator[bytes, None], headers: Mapping[str, str],
    media_type: str = "text/event-stream",
) -> StreamingResponse:
    """The event-stream response for ``events``, a generator that settles and records
    its request in its ``finally``; ``media_type`` for a stream of another framing
    (Gemini's JSON array).

    Its first event is read here, before the response exists, so that it and every
    generator under it (down to the provider's) have started and are inside their
    ``try``. With hypercorn (ASGI 2.1) Starlette cancels a streaming response as soon as
    the client disconnects, which can be before the body is first read; a generator that
    never started never runs its ``finally``, and the request's hold would stay until
    it expired, unbilled and unrecorded. The response closes ``events`` when it ends.
    """
    try:
        first = await anext(events)
    except StopAsyncIteration:
        first = b""
    return _SettledStream(first, events, headers, media_type)


class StreamEncoder(Protocol):
    """A wire format's stream events for the core's deltas (Anthropic's Messages,
    OpenAI's Responses): its opening events, one delta's, its closing ones, and the
    event that ends a stream which failed after it started."""

    def start(self) -> bytes: ...

    def encode(self, delta: ChatDelta) -> bytes: ...

    def finish(self) -> bytes: ...

    def failed(self, error: GatewayError) -> bytes: ...


async def encoded_events(
    encoder: StreamEncoder, deltas: AsyncIterator[ChatDelta], live: Live, record: RequestRecord
) -> AsyncGenerator[bytes, None]:
    """``deltas`` as ``encoder``'s events, for ``settled_stream``; the request is
    settled, recorded and finished however the stream ends."""
    ended = False
    try:
        # The first delta before the first event: the streams under this one have then
        # started, and close (settling the request) however it ends (settled_stream).
        delta = await anext(deltas, None)
        yield encoder.start()
        while delta is not None:
            event = encoder.encode(delta)
            if event:
                yield event
            delta = await anext(deltas, None)
        yield encoder.finish()
        ended = True
    except GatewayError as exc:  # after the status line: the error goes in the stream
        record.error = str(exc.code)
        ended = True
        yield encoder.failed(exc)
    finally:  # also when the client went away: settled, recorded and finished either way
        if not ended:  # the client went away, or a shutdown cut it
            record.error = live.shutdown.cut()[1]
        try:
            with anyio.CancelScope(shield=True):
                await close_deltas(deltas)  # settles and records (``Exchange.close``)
        finally:  # counted though the task is cancelled outright meanwhile
            live.telemetry.finish(record)
