"""POST /v1/responses: OpenAI's Responses API in front of the serving core, any provider behind.

    (app: authenticate, read body) -> parse and lower (responses_wire) -> exchange.open
              -> complete | stream -> a Response object | the Responses stream events

With ``store`` true (the default) the response is kept before it is answered (a stream's
before its last event, ``response.failed`` included; a stream the client left is kept
``cancelled``), and ``previous_response_id`` continues a kept one
(runtime/responses_stored.py); ``store: false`` keeps nothing (it may still continue a
kept response, as on OpenAI). ``conversation`` continues a conversation instead, and
adds the turn to it at the same moment (runtime/conversations.py). Errors
are OpenAI's error objects with chat's statuses (the app renders them); after a
stream has started, a failure ends it with ``response.failed``. Answers are translated
back from the core's OpenAI chat results:

- the first (only) choice's text is a ``message`` output item with one ``output_text``
  part (a refusal, a ``refusal`` part); each tool call a ``function_call`` item whose
  ``call_id`` is the upstream's tool call id, so a later ``function_call_output`` finds it.
- finish reason length -> status ``incomplete``, ``incomplete_details.reason``
  ``max_output_tokens``; content_filter -> ``content_filter``; else ``completed``.
- an OpenAI-format upstream's ``reasoning_content`` (DeepSeek's, vLLM's, Ollama's) is a
  ``reasoning`` output item first, its text as one ``reasoning_text`` part (streamed as
  ``response.reasoning_text.delta``), so that an app (the Agents SDK) sends it back as
  it would OpenAI's; sent back, it is accepted and not passed on (responses_wire).
- usage: input tokens (cached ones included, as OpenAI counts them), output tokens
  (reasoning ones included), and their details.
- ``model`` is the model that answered, as chat's ``model`` is.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any

import anyio
from starlette.responses import Response

from aigw.compiler.graph import ApiKey

from . import jsonio
from .admission import check_route_allowed
from .chat import Served, resolve_route
from .conversations import Claim, add_turn, claim, in_conversation, release
from .errors import GatewayError, RateLimited, UpstreamRateLimited, params_renamed
from .exchange import Exchange
from .jsonio import JSONBody
from .live import Live
from .providers.base import ChatDelta, ChatResult, ToolCallDelta, Usage
from .responses_stored import continued, keep, kept_items
from .responses_wire import ResponsesRequest, ToolChoiceFunction, parse, to_chat_request
from .sse import encoded_events, named_event, settled_stream
from .uncancelled import Spawn, uncancelled

__all__ = ["EventEncoder", "create_response", "echoed", "response_body"]

# The statuses of a response that ended before its answer did: its conversation gets
# nothing (OpenAI's rule for a failed one), its own record keeps what it completed.
_ENDED_SHORT = frozenset({"failed", "cancelled"})
_INCOMPLETE: Mapping[str, str] = MappingProxyType(
    {"length": "max_output_tokens", "content_filter": "content_filter"})
# The chat parameters the serving core's errors name, as a Responses request names them.
_PARAMS: Mapping[str, str] = MappingProxyType({
    "messages": "input", "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens", "response_format": "text.format",
    "reasoning_effort": "reasoning.effort", "verbosity": "text.verbosity"})


async def create_response(exchange: Exchange, key: ApiKey, body: bytes) -> Response:
    """POST /v1/responses for ``key`` (authenticated), the body read."""
    return await params_renamed(_PARAMS, _create(exchange, key, body))


async def _create(exchange: Exchange, key: ApiKey, body: bytes) -> Response:
    live, record = exchange.live, exchange.record
    asked = parse(body)
    echo = echoed(asked)  # this request's own fields: instructions are not carried over
    # The route's existence and the key's routes: before the earlier conversation is read
    # (up to megabytes), as they need none of it. Cedar and the limits count its tokens,
    # so they are asked after (exchange.open).
    check_route_allowed(key, resolve_route(live.graph, asked.model))
    held: Claim | None = None
    if asked.conversation is None:
        request, earlier = await continued(live, key, asked)
    else:
        request, earlier = await in_conversation(live, key, asked)
        held = await claim(live, asked)  # before the limits and the call: a 409 costs nothing
    handed = False  # whether the claim is the answer's to end (_kept), else this one's
    try:
        await exchange.open(key, to_chat_request(request))
        if not request.stream:
            served, answer = await exchange.complete_as(
                lambda served, result: response_body(served, result, echo))
            handed = True
            # Kept (the turn added, the claim ended) though a shutdown cancels it meanwhile.
            await uncancelled(partial(_kept, live, key, asked, answer, kept_items(
                request, earlier, _ids(served).hex), len(earlier), held),
                live.store.finish, again=True)
            return JSONBody(answer, headers=exchange.answer_headers(served))
        served, deltas = await exchange.stream()
        encoder = EventEncoder(_ids(served), served.created, served.deployment.model, echo)
        headers = exchange.answer_headers(served)
        events = encoded_events(encoder, deltas, live, record)
        if asked.store is not False or asked.conversation is not None:
            items = kept_items(request, earlier, _ids(served).hex)
            events = _kept_at_end(events, encoder, lambda final: _kept(
                live, key, asked, final, items, len(earlier), held), live.store.finish)
        streamed = await settled_stream(events, headers)  # started: it ends the claim
        handed = True
        return streamed
    finally:
        if not handed:  # refused, failed or cut before its answer: nothing is added
            await release(live, held)


async def _kept(live: Live, key: ApiKey, asked: ResponsesRequest, response: dict[str, Any],
                items: list[bytes], earlier: int, held: Claim | None = None) -> None:
    """The response kept (unless ``store: false``), and its turn added to its
    ``conversation``: ``items`` are its input items as kept, the first ``earlier`` of
    them the conversation's (or the previous response's) own; ``held``, the ids of its
    own that it claimed there, are added with them or released."""
    if asked.store is not False:  # a continuation keeps its own items, after its previous's
        # or its conversation's (up to the last it held, read from there: kept once)
        previous = asked.previous_response_id
        after = jsonio.loads(items[earlier - 1])["id"] if asked.conversation and earlier \
            else None
        await keep(live, key, asked.model, response,
                   items[earlier:] if previous or after else items, previous, after)
    if asked.conversation is not None and response["status"] not in _ENDED_SHORT:
        await add_turn(live, asked.conversation, response, items[earlier:], held)
    else:
        await release(live, held)


async def _kept_at_end(events: AsyncGenerator[bytes, None], encoder: EventEncoder,
                       kept: Callable[[dict[str, Any]], Coroutine[Any, Any, None]],
                       spawn: Spawn[None]) -> AsyncGenerator[bytes, None]:
    """``events``, the response kept before their last one (completed, incomplete or
    failed) goes out: an app that continues as soon as it reads it finds it. A stream the
    client cut (or a shutdown) is kept ``cancelled``, with the items it had completed.
    Closing this closes ``events`` (whose ``finally`` settles the request). ``spawn``
    keeps a cut stream's keeping to its end though the task is cancelled outright."""
    ended = False
    try:
        async for event in events:
            final, encoder.final = encoder.final, None
            if final is not None:
                ended = True
                await kept(final)
            yield event
    finally:
        # Shielded: a client that leaves while the next event is awaited cancels this
        # generator's task, and anyio cancels every await after that in its scope; the
        # response's own aclose (settled_stream) comes only once this has ended.
        with anyio.CancelScope(shield=True):
            try:
                if not ended:  # and cancelled outright (no anyio shield stops that): kept
                    await uncancelled(partial(kept, encoder.cancelled()), spawn, again=True)
            finally:  # the request is settled whatever keeping it did
                await events.aclose()


def echoed(request: ResponsesRequest) -> dict[str, Any]:
    """The request's fields a Response object repeats (the SDK's model requires some)."""
    text_format = request.text.format if request.text is not None else None
    choice = request.tool_choice
    tool_choice = choice.model_dump() if isinstance(choice, ToolChoiceFunction) \
        else choice or "auto"
    reasoning = request.reasoning
    return {
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "metadata": request.metadata or {},
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": request.previous_response_id,
        "conversation": {"id": request.conversation} if request.conversation else None,
        "reasoning": {"effort": reasoning.effort if reasoning else None, "summary": None},
        "store": request.store is not False,
        "temperature": request.temperature,
        "text": {"format": text_format.model_dump(by_alias=True, exclude_none=True)
                 if text_format is not None else {"type": "text"}},
        "tool_choice": tool_choice,
        "tools": [tool.model_dump(include={"type", "name", "description", "parameters",
                                           "strict"}) for tool in request.tools or ()],
        "top_p": request.top_p,
        "truncation": "disabled",
        "user": request.user,
    }


@dataclass(frozen=True, slots=True)
class _Ids:
    """A response's id and its items', from the gateway's request id, so that logs and
    answers correlate: ``resp_<hex>``, ``msg_<hex>``, ``fc_<hex>_<n>``."""

    hex: str

    @property
    def response(self) -> str:
        return f"resp_{self.hex}"

    def message(self, output_index: int = 0) -> str:
        """The first message item's id is the response's hex; a later one's (text a
        stream sent after a tool call) has its place in ``output`` too."""
        return f"msg_{self.hex}" if output_index == 0 else f"msg_{self.hex}_{output_index}"

    def call(self, number: int) -> str:
        return f"fc_{self.hex}_{number}"

    def reasoning(self, output_index: int = 0) -> str:
        return f"rs_{self.hex}" if output_index == 0 else f"rs_{self.hex}_{output_index}"


def _ids(served: Served) -> _Ids:
    return _Ids(served.request_id.removeprefix("chatcmpl-"))


def usage_body(usage: Usage) -> dict[str, object]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens,
                                 "cache_write_tokens": usage.cache_creation_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _status(finish_reason: str | None) -> tuple[str, dict[str, str] | None]:
    reason = _INCOMPLETE.get(finish_reason or "")
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def _response(ids: _Ids, created: int, model: str, echo: dict[str, Any], status: str,
              output: list[dict[str, Any]], usage: Usage | None,
              incomplete: dict[str, str] | None = None,
              error: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "id": ids.response,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
        "usage": usage_body(usage) if usage is not None else None,
        **echo,
    }


def _message_item(item_id: str, parts: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": parts}


def _text_part(kind: str, text: str) -> dict[str, Any]:
    if kind == "refusal":
        return {"type": "refusal", "refusal": text}
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_item(ids: _Ids, number: int, call_id: str, name: str, arguments: str,
               status: str) -> dict[str, Any]:
    return {"type": "function_call", "id": ids.call(number), "call_id": call_id,
            "name": name, "arguments": arguments, "status": status}


def _reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}], "status": status}


def _reasoning_text(extra: Mapping[str, Any] | None) -> str:
    """The reasoning an OpenAI-format upstream sent beside the answer, or ""."""
    text = extra.get("reasoning_content") if extra else None
    return text if isinstance(text, str) else ""


def response_body(served: Served, result: ChatResult, echo: dict[str, Any]) -> dict[str, Any]:
    """A ``response`` object for the first (only) choice of a whole answer."""
    ids = _ids(served)
    choice = result.choices[0]
    status, incomplete = _status(choice.finish_reason)
    output: list[dict[str, Any]] = []
    reasoning = _reasoning_text(choice.extra)
    if reasoning:
        output.append(_reasoning_item(ids.reasoning(), reasoning, status))
    parts = [_text_part(kind, text) for kind, text in
             (("output_text", choice.content), ("refusal", choice.refusal)) if text]
    if parts:
        output.append(_message_item(ids.message(), parts, status))
    output.extend(_call_item(ids, number, call.id, call.name, call.arguments, status)
                  for number, call in enumerate(choice.tool_calls))
    return _response(ids, served.created, result.model, echo, status, output, result.usage,
                     incomplete)


@dataclass
class _Call:
    """A function call item being streamed: its place in ``output`` and its arguments."""

    output_index: int
    number: int
    call_id: str
    name: str
    arguments: list[str] = field(default_factory=list)


class EventEncoder:
    """Turns adapter deltas into the Responses stream's events, each numbered
    (``sequence_number``) in order:

        response.created, response.in_progress,
        reasoning: output_item.added, reasoning_text.delta..., reasoning_text.done,
                 output_item.done
        message: output_item.added, (content_part.added, output_text.delta...,
                 output_text.done, content_part.done) per part, output_item.done
        function call: output_item.added, function_call_arguments.delta...,
                 function_call_arguments.done, output_item.done
        response.completed | response.incomplete (with usage) | response.failed

    The message item is closed as the first tool call opens (text after it opens
    another). Tool calls stay open to the end: an OpenAI-format upstream may interleave
    their argument fragments, and every event names its item (``output_index``,
    ``item_id``). Deltas of choices other
    than 0 are dropped: a Responses request never asks for more than one.
    """

    def __init__(self, ids: _Ids, created: int, model: str, echo: dict[str, Any]) -> None:
        self._ids = ids
        self._created = created
        self._model = model
        self._echo = echo
        self._sequence = 0
        self._outputs = 0  # output items opened
        self._message: int | None = None  # the open message item's output index
        self._parts: list[tuple[str, list[str]]] = []  # its parts: kind, text so far
        self._closed_messages: dict[int, dict[str, Any]] = {}  # and reasoning, by index
        self._reasoning: tuple[int, list[str]] | None = None  # the open one: index, texts
        self._calls: dict[int, _Call] = {}  # by the upstream's tool call index
        self._finish: str | None = None
        self._usage: Usage | None = None
        # The Response object ``finish`` closed the stream with, until it is kept.
        self.final: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return named_event(kind, event)

    def _snapshot(self, status: str, output: list[dict[str, Any]], usage: Usage | None = None,
                  incomplete: dict[str, str] | None = None,
                  error: dict[str, str] | None = None) -> dict[str, Any]:
        return _response(self._ids, self._created, self._model, self._echo, status, output,
                         usage, incomplete, error)

    def start(self) -> bytes:
        return (self._event("response.created", response=self._snapshot("in_progress", []))
                + self._event("response.in_progress",
                              response=self._snapshot("in_progress", [])))

    def encode(self, delta: ChatDelta) -> bytes:
        if delta.usage is not None:
            self._usage = delta.usage
            return b""
        if delta.index != 0:
            return b""
        out = b""
        reasoning = _reasoning_text(delta.extra)
        if reasoning:
            out += self._reason(reasoning)
        if delta.content:
            out += self._text("output_text", delta.content)
        if delta.refusal:
            out += self._text("refusal", delta.refusal)
        for call in delta.tool_calls:
            out += self._call(call)
        if delta.finish_reason is not None:
            self._finish = delta.finish_reason
        return out

    def _reason(self, text: str) -> bytes:
        out = b""
        if self._reasoning is None:
            out += self._close_message("completed")  # reasoning after text: an item of its own
            self._reasoning = (self._outputs, [])
            self._outputs += 1
            out += self._event("response.output_item.added", output_index=self._reasoning[0],
                               item={**_reasoning_item(self._ids.reasoning(self._reasoning[0]),
                                                       "", "in_progress"), "content": []})
        index, texts = self._reasoning
        texts.append(text)
        return out + self._event("response.reasoning_text.delta",
                                 item_id=self._ids.reasoning(index), output_index=index,
                                 content_index=0, delta=text)

    def _close_reasoning(self, status: str) -> bytes:
        if self._reasoning is None:
            return b""
        index, texts = self._reasoning
        item = _reasoning_item(self._ids.reasoning(index), "".join(texts), status)
        self._closed_messages[index] = item
        self._reasoning = None
        return (self._event("response.reasoning_text.done", item_id=item["id"],
                            output_index=index, content_index=0, text=item["content"][0]["text"])
                + self._event("response.output_item.done", output_index=index, item=item))

    def _text(self, kind: str, text: str) -> bytes:
        out = self._close_reasoning("completed")
        if self._message is None:  # text after a tool call opens a message of its own
            self._message, self._parts = self._outputs, []
            self._outputs += 1
            out += self._event("response.output_item.added", output_index=self._message,
                               item=_message_item(self._ids.message(self._message), [],
                                                  "in_progress"))
        if not self._parts or self._parts[-1][0] != kind:
            out += self._close_part()
            self._parts.append((kind, []))
            out += self._event("response.content_part.added", **self._at_part(),
                               part=_text_part(kind, ""))
        self._parts[-1][1].append(text)
        if kind == "output_text":
            return out + self._event("response.output_text.delta", **self._at_part(),
                                     delta=text, logprobs=[])
        return out + self._event("response.refusal.delta", **self._at_part(), delta=text)

    def _at_part(self) -> dict[str, Any]:
        assert self._message is not None
        return {"item_id": self._ids.message(self._message), "output_index": self._message,
                "content_index": len(self._parts) - 1}

    def _close_part(self) -> bytes:
        if not self._parts or self._message is None:
            return b""
        kind, texts = self._parts[-1]
        text = "".join(texts)
        if kind == "output_text":
            done = self._event("response.output_text.done", **self._at_part(), text=text,
                               logprobs=[])
        else:
            done = self._event("response.refusal.done", **self._at_part(), refusal=text)
        return done + self._event("response.content_part.done", **self._at_part(),
                                  part=_text_part(kind, text))

    def _close_message(self, status: str) -> bytes:
        if self._message is None:
            return b""
        out = self._close_part()
        item = _message_item(self._ids.message(self._message),
                             [_text_part(kind, "".join(texts)) for kind, texts in self._parts],
                             status)
        out += self._event("response.output_item.done", output_index=self._message, item=item)
        self._closed_messages[self._message] = item
        self._message = None
        return out

    def _call(self, delta: ToolCallDelta) -> bytes:
        out = b""
        call = self._calls.get(delta.index)
        if call is None:
            out += self._close_reasoning("completed") + self._close_message("completed")
            number = len(self._calls)
            call = _Call(self._outputs, number, delta.id or f"call_{self._ids.hex}_{number}",
                         delta.name or "")
            self._calls[delta.index] = call
            self._outputs += 1
            out += self._event("response.output_item.added", output_index=call.output_index,
                               item=self._call_item(call, "in_progress"))
        if delta.arguments:
            call.arguments.append(delta.arguments)
            out += self._event("response.function_call_arguments.delta",
                               item_id=self._ids.call(call.number),
                               output_index=call.output_index, delta=delta.arguments)
        return out

    def _call_item(self, call: _Call, status: str) -> dict[str, Any]:
        return _call_item(self._ids, call.number, call.call_id, call.name,
                          "".join(call.arguments), status)

    def finish(self) -> bytes:
        status, incomplete = _status(self._finish)
        out = self._close_reasoning(status) + self._close_message(status)
        for call in self._calls.values():  # cut at the output limit: incomplete too
            item = self._call_item(call, status)
            out += self._event("response.function_call_arguments.done",
                               item_id=item["id"], output_index=call.output_index,
                               name=call.name, arguments=item["arguments"])
            out += self._event("response.output_item.done", output_index=call.output_index,
                               item=item)
        done = "response.completed" if status == "completed" else "response.incomplete"
        self.final = self._snapshot(status, self._items(status), self._usage, incomplete)
        return out + self._event(done, response=self.final)

    def _items(self, calls: str) -> list[dict[str, Any]]:
        """Every item, in output order: the messages as closed (an open one as it
        stands, incomplete), the calls with status ``calls``."""
        by_index = {call.output_index: self._call_item(call, calls)
                    for call in self._calls.values()}
        by_index.update(self._closed_messages)
        if self._reasoning is not None:
            index, texts = self._reasoning
            by_index[index] = _reasoning_item(self._ids.reasoning(index), "".join(texts),
                                              "incomplete")
        if self._message is not None:
            by_index[self._message] = _message_item(
                self._ids.message(self._message),
                [_text_part(kind, "".join(texts)) for kind, texts in self._parts], "incomplete")
        return [by_index[index] for index in sorted(by_index)]

    def failed(self, error: GatewayError) -> bytes:
        """``response.failed``: the stream cannot go on (the upstream failed after its
        first byte, the budget ran out); the items so far with it. It is kept (``final``)
        with the items it completed: a half-streamed call or text is no conversation to
        go on from."""
        code = "rate_limit_exceeded" if isinstance(error, RateLimited | UpstreamRateLimited) \
            else "server_error"
        failed = self._snapshot("failed", self._items("incomplete"), self._usage,
                                error={"code": code, "message": error.message})
        self.final = {**failed, "output": _completed(failed["output"])}
        return self._event("response.failed", response=failed)

    def cancelled(self) -> dict[str, Any]:
        """The Response object of a stream the client cut: ``cancelled``, the items it
        completed, the usage if the upstream had sent it."""
        return self._snapshot("cancelled", _completed(self._items("incomplete")), self._usage)


def _completed(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item for item in output if item["status"] == "completed"]

