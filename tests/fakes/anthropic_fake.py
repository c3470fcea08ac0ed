"""A fake of Anthropic's Messages API: POST /v1/messages, whole and streamed.

Requests are checked as the real API checks them: ``x-api-key`` and
``anthropic-version`` headers, ``max_tokens`` required, unknown fields refused, roles
only user and assistant, alternating and starting with user, ``system`` only at the
top level, every ``tool_result`` answering a ``tool_use`` of the turn before (and
every ``tool_use`` answered), no empty text blocks. Errors have Anthropic's shape
``{"type": "error", "error": {"type", "message"}, "request_id"}``. Streams follow
the documented event sequence byte for byte (``event: name\\ndata: {json}\\n\\n``,
a ping after the first block starts).

Answers come from ``brain.decide``; a tool call comes after a short text block, as
Claude's do; with ``output_config.format`` a text answer is JSON of its schema's shape
(``brain.json_answer``). The text is cut at ``max_tokens`` words or at a stop sequence, with the
matching stop reason. A ``cache_control`` breakpoint caches the prompt up to it:
the first request writes it (``cache_creation_input_tokens``), the next read it.

Scripted actions (``brain.Action``): an error status answers with ``body`` or a
default error of that status; status 200 with a message ``body`` answers with that
message (streamed as events when asked); status 200 with an error ``body`` sends it
as an ``error`` event after ``cut_stream_after`` events (default 3); a bare
``cut_stream_after`` drops the connection.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .brain import Action, Script, decide, json_answer, words
from .request_ids import RequestIds

VERSION = "2023-06-01"
PARAMETERS = {
    "model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
    "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier",
    "output_config",
}
BLOCK_FIELDS = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control"},
    "tool_use": {"type", "id", "name", "input", "cache_control"},
    "tool_result": {"type", "tool_use_id", "content", "is_error", "cache_control"},
}
MEDIA_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


class Invalid(Exception):
    """A request the real API would refuse with 400 invalid_request_error."""


def error(status: int, message: str, kind: str | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"type": "error", "error": {"type": kind or ERROR_TYPES.get(status, "api_error"),
                                       "message": message},
            "request_id": "req_fake0123456789"}
    return JSONResponse(body, status_code=status, headers=headers)


def _fields(value: Any, allowed: set[str], where: str) -> None:
    if not isinstance(value, dict):
        raise Invalid(f"{where}: Input should be a valid dictionary")
    for name in value:
        if name not in allowed:
            raise Invalid(f"{where}.{name}: Extra inputs are not permitted")


def _block(block: Any, role: str, where: str) -> None:
    kind = block.get("type") if isinstance(block, dict) else None
    if kind not in BLOCK_FIELDS:
        raise Invalid(f"{where}.type: Input tag '{kind}' does not match any of the expected tags")
    _fields(block, BLOCK_FIELDS[kind], where)
    if kind == "text" and (not isinstance(block.get("text"), str) or not block["text"]):
        raise Invalid(f"{where}.text: text content blocks must be non-empty")
    if kind == "image":
        if role != "user":
            raise Invalid(f"{where}: image blocks are only allowed in user messages")
        _image_source(block.get("source"), f"{where}.source")
    if kind == "tool_use":
        if role != "assistant":
            raise Invalid(f"{where}: tool_use blocks are only allowed in assistant messages")
        if not block.get("id") or not isinstance(block.get("input"), dict):
            raise Invalid(f"{where}: tool_use needs an id, a name and an input object")
    if kind == "tool_result" and role != "user":
        raise Invalid(f"{where}: tool_result blocks are only allowed in user messages")


def _image_source(source: Any, where: str) -> None:
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64":
        _fields(source, {"type", "media_type", "data"}, where)
        if source.get("media_type") not in MEDIA_TYPES:
            raise Invalid(f"{where}.media_type: Input should be 'image/jpeg', 'image/png', "
                          "'image/gif' or 'image/webp'")
        try:
            base64.b64decode(str(source.get("data")), validate=True)
        except binascii.Error:
            raise Invalid(f"{where}.data: invalid base64 data") from None
    elif kind == "url":
        _fields(source, {"type", "url"}, where)
    else:
        raise Invalid(f"{where}.type: Input tag '{kind}' does not match any of the expected tags")


def _blocks(content: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _validate_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise Invalid("messages: at least one message is required")
    pending: set[str] = set()  # tool_use ids the next turn must answer
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        role = message.get("role") if isinstance(message, dict) else None
        if role == "system":
            raise Invalid('messages: Unexpected role "system". The Messages API accepts a '
                          'top-level `system` parameter, not "system" as an input message role.')
        if role not in ("user", "assistant"):
            raise Invalid(f"{where}.role: Input should be 'user' or 'assistant'")
        _fields(message, {"role", "content"}, where)
        if index == 0 and role != "user":
            raise Invalid('messages: first message must use the "user" role')
        if index and messages[index - 1].get("role") == role:
            raise Invalid('messages: roles must alternate between "user" and "assistant", '
                          f'but found multiple "{role}" roles in a row')
        content = message.get("content")
        if isinstance(content, str):
            if not content and index != len(messages) - 1:
                raise Invalid(f"{where}: all messages must have non-empty content except for "
                              "the optional final assistant message")
        elif not isinstance(content, list) or not content:
            raise Invalid(f"{where}.content: content must be a string or a non-empty list")
        blocks = _blocks(content)
        for number, block in enumerate(blocks):
            _block(block, role, f"{where}.content.{number}")
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        if any(b["type"] != "tool_result" for b in blocks[:len(results)]):
            raise Invalid(f"{where}: tool_result blocks must come first in the message")
        unexpected = [tool_id for tool_id in results if tool_id not in pending]
        if unexpected:
            raise Invalid(f"{where}.content: unexpected `tool_use_id` found in `tool_result` "
                          f"blocks: {unexpected[0]}. Each `tool_result` block must have a "
                          "corresponding `tool_use` block in the previous message.")
        if pending - set(results):
            raise Invalid(f"messages.{index - 1}: `tool_use` ids were found without "
                          f"`tool_result` blocks immediately after: {sorted(pending)[0]}. Each "
                          "`tool_use` block must have a corresponding `tool_result` block in "
                          "the next message.")
        pending = {b["id"] for b in blocks if b["type"] == "tool_use"}


def validate(body: Any) -> None:
    """Raise ``Invalid`` with the real API's words for anything it would refuse."""
    if not isinstance(body, dict):
        raise Invalid("Input should be a valid dictionary")
    for name in body:
        if name not in PARAMETERS:
            raise Invalid(f"{name}: Extra inputs are not permitted")
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            raise Invalid(f"{name}: Field required")
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        raise Invalid("max_tokens: Input should be greater than or equal to 1")
    temperature = body.get("temperature", 0)
    if not isinstance(temperature, int | float) or not 0 <= temperature <= 1:
        raise Invalid("temperature: Input should be less than or equal to 1")
    system = body.get("system", "")
    if not isinstance(system, str):
        for number, block in enumerate(system):
            _block(block, "system", f"system.{number}")
            if block["type"] != "text":
                raise Invalid(f"system.{number}.type: system blocks must be text")
    _validate_messages(body["messages"])
    names = []
    for number, tool in enumerate(body.get("tools") or []):
        _fields(tool, {"name", "description", "input_schema", "cache_control", "strict"},
                f"tools.{number}")
        if not _TOOL_NAME.match(str(tool.get("name"))):
            raise Invalid(f"tools.{number}.name: String should match pattern "
                          "'^[a-zA-Z0-9_-]{1,128}$'")
        if (tool.get("input_schema") or {}).get("type") != "object":
            raise Invalid(f"tools.{number}.input_schema.type: Input should be 'object'")
        names.append(tool["name"])
    if "tool_choice" in body:
        _validate_tool_choice(body["tool_choice"], names)
    if "metadata" in body:
        _fields(body["metadata"], {"user_id"}, "metadata")
    if "output_config" in body:
        _fields(body["output_config"], {"format", "effort"}, "output_config")
        output_format = body["output_config"].get("format")
        _fields(output_format, {"type", "schema"}, "output_config.format")
        if output_format.get("type") != "json_schema":
            raise Invalid("output_config.format.type: Input should be 'json_schema'")
    stops = body.get("stop_sequences", [])
    if not isinstance(stops, list) or not all(isinstance(stop, str) for stop in stops):
        raise Invalid("stop_sequences: Input should be a valid list of strings")


def _validate_tool_choice(choice: Any, names: list[str]) -> None:
    kind = choice.get("type") if isinstance(choice, dict) else None
    allowed = {"auto": {"type", "disable_parallel_tool_use"},
               "any": {"type", "disable_parallel_tool_use"},
               "tool": {"type", "name", "disable_parallel_tool_use"},
               "none": {"type"}}
    if kind not in allowed:
        raise Invalid(f"tool_choice.type: Input tag '{kind}' does not match any of the "
                      "expected tags: 'auto', 'any', 'tool', 'none'")
    _fields(choice, allowed[kind], "tool_choice")
    if kind == "tool" and choice.get("name") not in names:
        raise Invalid(f"tool_choice.name: Tool '{choice.get('name')}' not found in tools")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content or [] if b.get("type") == "text")


class AnthropicFake:
    """The fake's state: its key, its script, its prompt cache and what it has seen."""

    def __init__(self, api_key: str = "sk-ant-fake-key-0123456789abcdef") -> None:
        self.api_key = api_key
        self.script = Script()
        self.cached: set[str] = set()
        self.request_ids: list[str] = []  # the ids its answers gave, in order
        self.app = Starlette(routes=[
            Route("/__ready", self._ready),
            Route("/v1/messages", self._messages, methods=["POST"]),
        ], middleware=[Middleware(RequestIds, header="request-id", given=self.request_ids)])

    async def _ready(self, request: Request) -> Response:
        return Response("ok")

    async def _messages(self, request: Request) -> Response:
        if request.headers.get("x-api-key") != self.api_key:
            return error(401, "invalid x-api-key")
        if request.headers.get("anthropic-version") != VERSION:
            return error(400, "anthropic-version: header is required")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "There was an error parsing the body of your request")
        self.script.requests.append(body if isinstance(body, dict) else {"_": body})
        self.script.headers.append(dict(request.headers))
        action = self.script.next()
        if action.delay_s:
            await asyncio.sleep(action.delay_s)
        if action.status != 200:
            if action.body is not None:
                return JSONResponse(action.body, action.status, headers=action.headers)
            return error(action.status, f"scripted failure {action.status}",
                         headers=action.headers)
        try:
            validate(body)
        except Invalid as exc:
            return error(400, str(exc))
        message = action.body if action.body and action.body.get("type") == "message" \
            else self._answer(body)
        if body.get("stream"):
            return StreamingResponse(self._stream(message, action),
                                     media_type="text/event-stream")
        return JSONResponse(message)

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body["messages"]
        last = _blocks(messages[-1]["content"])
        results = [b for b in last if b["type"] == "tool_result"]
        result = _text(results[0].get("content")) if results else None
        users = [m for m in messages if m["role"] == "user" and _text(m["content"])]
        names = [tool["name"] for tool in body.get("tools") or []]
        allowed = (body.get("tool_choice") or {}).get("type") != "none"
        reply = decide("fake-anthropic", _text(users[-1]["content"]) if users else "", names,
                       result, allowed)
        content: list[dict[str, Any]] = []
        stop_reason, stop_sequence = "end_turn", None
        if reply.tool_name:
            content.append({"type": "text", "text": f"I'll call {reply.tool_name}."})
            content.append({"type": "tool_use", "id": f"toolu_fake{len(self.script.requests)}",
                            "name": reply.tool_name, "input": reply.tool_arguments or {}})
            stop_reason = "tool_use"
        else:
            text = reply.text or ""
            output_format = (body.get("output_config") or {}).get("format")
            if output_format is not None:  # structured output: JSON of the schema's shape
                text = json.dumps(json_answer(output_format["schema"], text))
            for stop in body.get("stop_sequences") or []:
                if stop in text:
                    text, stop_sequence = text[:text.index(stop)], stop
                    stop_reason = "stop_sequence"
            pieces = text.split(" ")
            if len(pieces) > body["max_tokens"]:
                text, stop_reason = " ".join(pieces[:body["max_tokens"]]), "max_tokens"
            content.append({"type": "text", "text": text})
        output = len(_text(content).split()) + sum(
            len(json.dumps(b["input"]).split()) for b in content if b["type"] == "tool_use")
        return {"id": f"msg_fake{len(self.script.requests)}", "type": "message",
                "role": "assistant", "model": body["model"], "content": content,
                "stop_reason": stop_reason, "stop_sequence": stop_sequence,
                "usage": {**self._input_usage(body), "output_tokens": output}}

    def _input_usage(self, body: dict[str, Any]) -> dict[str, int]:
        """Prompt tokens (words, plus 3 a message), split at the last cache breakpoint."""
        system = body.get("system", "")
        blocks = _blocks(system) if system else []
        for message in body["messages"]:
            blocks.extend([*_blocks(message["content"]), {"type": "turn"}])
        total, prefix, prefix_tokens = 0, "", 0
        for number, block in enumerate(blocks):
            total += 3 if block["type"] == "turn" else len(_text([block]).split())
            if block.get("cache_control"):
                prefix, prefix_tokens = json.dumps(blocks[:number + 1]), total
        read = prefix_tokens if prefix in self.cached else 0
        written = prefix_tokens - read
        if prefix:
            self.cached.add(prefix)
        return {"input_tokens": total - prefix_tokens, "cache_creation_input_tokens": written,
                "cache_read_input_tokens": read}

    async def _stream(self, message: dict[str, Any], action: Action) -> AsyncIterator[bytes]:
        events = stream_events(message)
        failure = action.body if action.body and action.body.get("type") == "error" else None
        cut = action.cut_stream_after
        if failure is not None and cut is None:
            cut = 3
        for number, item in enumerate(events):
            if cut is not None and number >= cut:
                if failure is None:
                    raise ConnectionResetError("scripted disconnect")
                yield sse("error", failure)
                return
            yield item
            await asyncio.sleep(0)


def sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def stream_events(message: dict[str, Any]) -> list[bytes]:
    """The documented event sequence that streams ``message``."""
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None,
             "usage": {**usage, "output_tokens": 1}}
    events = [sse("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            opened = {**block, "input": {}}
            # An empty input streams one empty fragment, as Anthropic's API sends it.
            arguments = json.dumps(block["input"]) if block["input"] else ""
            deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in
                      ["", *(arguments[at:at + 7] for at in range(0, len(arguments), 7))]]
        else:
            opened = {**block, "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in words(block["text"])]
        events.append(sse("content_block_start",
                          {"type": "content_block_start", "index": index, "content_block": opened}))
        if index == 0:
            events.append(b'event: ping\ndata: {"type": "ping"}\n\n')
        events.extend(sse("content_block_delta",
                          {"type": "content_block_delta", "index": index, "delta": delta})
                      for delta in deltas)
        events.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(sse("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": message["stop_reason"],
                  "stop_sequence": message["stop_sequence"]},
        "usage": {"output_tokens": usage["output_tokens"]},
    }))
    events.append(sse("message_stop", {"type": "message_stop"}))
    return events
