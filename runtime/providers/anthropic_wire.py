"""OpenAI chat requests as Anthropic Messages bodies, and Anthropic messages as chat results.

Pure translation, no I/O: ``messages_body`` builds the POST /v1/messages body (raising
``BadRequest`` naming any parameter Anthropic cannot honour), ``parse_message`` reads
an answer back, ``usage`` and ``STOP_REASONS`` serve both the whole and the streamed
answer. The adapter that sends them is ``anthropic.py``; the mapping decisions are
listed in its docstring.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from aigw.compiler.graph import Provider

from ..chat_request import ChatRequest, ContentPart, Message
from ..errors import BadRequest, UpstreamServerError
from .base import ChatCall, ChatResult, Choice, ToolCall, Usage, unreported_usage
from .turns import (
    DROPPED_EXTRAS,
    NEUTRAL_EXTRAS,
    TurnBlocks,
    json_schema_spec,
    message_parts,
    split_turns,
    text_parts,
    tool_input,
)

# Anthropic's stop_reason as OpenAI's finish_reason.
STOP_REASONS: Mapping[str, str] = MappingProxyType({
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
})

# The HTTP status Anthropic gives each error type, for an error that arrives in a stream.
ERROR_STATUS: Mapping[str, int] = MappingProxyType({
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
})

IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL = re.compile(r"data:(?P<media_type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)", re.DOTALL)

_MAPPED = frozenset({"parallel_tool_calls", "response_format", "top_k"})


def messages_body(call: ChatCall, stream: bool) -> dict[str, Any]:
    """The Messages API body for ``call``, or a ``BadRequest`` naming what cannot be sent.

    ``[system "Be brief.", user "hi"]`` with a cap of 1024 becomes ``{"model": ...,
    "max_tokens": 1024, "messages": [{"role": "user", "content": [{"type": "text",
    "text": "hi"}]}], "system": [{"type": "text", "text": "Be brief."}]}``.
    """
    request = call.request
    extras = {name: value for name, value in (request.model_extra or {}).items()
              if value is not None}
    _refuse_unsupported(request, extras)
    system, turns = translate_messages(request.messages)
    body: dict[str, Any] = {
        "model": call.deployment.model,
        "max_tokens": call.max_output_tokens,
        "messages": turns,
    }
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if "top_k" in extras:
        body["top_k"] = extras["top_k"]
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    if stop:
        body["stop_sequences"] = stop
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if request.tools:
        body["tools"] = [_tool(tool, index) for index, tool in enumerate(request.tools)]
    choice = _tool_choice(request, extras.get("parallel_tool_calls"))
    if choice is not None:
        body["tool_choice"] = choice
    output_format = _output_format(extras.get("response_format"))
    if output_format is not None:
        body["output_config"] = {"format": output_format}
    if stream:
        body["stream"] = True
    return body


def _refuse_unsupported(request: ChatRequest, extras: Mapping[str, object]) -> None:
    if request.n > 1:
        raise BadRequest("Anthropic returns one choice per request; 'n' must be 1.", param="n")
    if request.seed is not None:
        raise BadRequest("Anthropic has no seed for reproducible sampling; remove 'seed'.",
                         param="seed")
    if request.temperature is not None and request.temperature > 1:
        raise BadRequest("Anthropic takes a temperature from 0 to 1.", param="temperature")
    for name, value in extras.items():
        if name in DROPPED_EXTRAS or name in _MAPPED:
            continue
        neutral = NEUTRAL_EXTRAS.get(name)
        if neutral is None:
            raise BadRequest(f"Unrecognized request argument for an Anthropic model: {name}",
                             param=name)
        if value not in neutral:
            raise BadRequest(f"Anthropic models do not support '{name}'.", param=name)


def translate_messages(messages: list[Message]) -> tuple[list[dict[str, Any]],
                                                        list[dict[str, Any]]]:
    """OpenAI messages as Anthropic's ``system`` blocks and user/assistant turns."""
    return split_turns(messages, _BLOCKS)


def _text_block(part: ContentPart) -> dict[str, Any] | None:
    if not part.text:
        return None  # Anthropic refuses empty text blocks
    return _marked({"type": "text", "text": part.text}, part.model_extra)


def _marked(block: dict[str, Any], source: Mapping[str, Any] | None) -> dict[str, Any]:
    """``block`` with the ``cache_control`` mark ``source`` (a part, a tool) carries."""
    cache_control = (source or {}).get("cache_control")
    if cache_control is not None:
        block["cache_control"] = cache_control
    return block


def _text_blocks(message: Message, where: str) -> list[dict[str, Any]]:
    blocks = (_text_block(part) for part in text_parts(message, where, "Anthropic"))
    return [block for block in blocks if block is not None]


def _user_blocks(message: Message, where: str) -> list[dict[str, Any]]:
    blocks = []
    for number, part in enumerate(message_parts(message)):
        if part.type == "text":
            block = _text_block(part)
        elif part.type in ("image_url", "input_image"):
            block = _image_block(part, f"{where}.content[{number}]")
        else:
            raise BadRequest(f"Anthropic models do not take '{part.type}' content parts.",
                             param=f"{where}.content[{number}].type")
        if block is not None:
            blocks.append(block)
    return blocks


def _image_block(part: ContentPart, where: str) -> dict[str, Any]:
    """``data:`` URLs become base64 sources, http(s) URLs url sources."""
    value = (part.model_extra or {}).get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str):
        raise BadRequest("An image part needs image_url.url.", param=f"{where}.image_url")
    if url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if match is None or match["media_type"] not in IMAGE_MEDIA_TYPES:
            raise BadRequest(
                "Images must be base64 data URLs of image/jpeg, image/png, image/gif or "
                "image/webp.", param=f"{where}.image_url")
        source = {"type": "base64", "media_type": match["media_type"], "data": match["data"]}
    elif url.startswith(("https://", "http://")):
        source = {"type": "url", "url": url}
    else:
        raise BadRequest("An image URL must be http(s) or a data: URL.",
                         param=f"{where}.image_url")
    return _marked({"type": "image", "source": source}, part.model_extra)


def _assistant_blocks(message: Message, where: str) -> list[dict[str, Any]]:
    blocks = _text_blocks(message, where)
    for number, call in enumerate(message.tool_calls or []):
        function = call.get("function") or {}
        arguments = tool_input(function, f"{where}.tool_calls[{number}].function.arguments")
        blocks.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                       "input": arguments})
    return blocks


def _tool_result(message: Message, where: str) -> dict[str, Any]:
    if not message.tool_call_id:
        raise BadRequest("A tool message needs tool_call_id.", param=f"{where}.tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    text = message.text()
    if text:
        block["content"] = text
    for part in message_parts(message):  # a marked part marks the result: its text is one
        _marked(block, part.model_extra)
    return block


def _tool(tool: Mapping[str, Any], index: int) -> dict[str, Any]:
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict):
        raise BadRequest("Anthropic models take only tools of type 'function'.",
                         param=f"tools[{index}]")
    translated: dict[str, Any] = {
        "name": function.get("name"),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        translated["description"] = function["description"]
    if function.get("strict") is not None:
        translated["strict"] = function["strict"]
    return _marked(translated, tool)


def _tool_choice(request: ChatRequest, parallel: object) -> dict[str, Any] | None:
    """auto, none, required and a named function as Anthropic's auto, none, any and tool."""
    choice = request.tool_choice
    translated: dict[str, Any]
    if choice is None or choice == "auto":
        translated = {"type": "auto"}
    elif choice == "none":
        translated = {"type": "none"}
    elif choice == "required":
        translated = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        translated = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise BadRequest("tool_choice must be auto, none, required or a named function.",
                         param="tool_choice")
    if not request.tools:
        if translated["type"] in ("any", "tool"):
            raise BadRequest("tool_choice needs tools.", param="tool_choice")
        return None
    if parallel is False and translated["type"] != "none":
        translated["disable_parallel_tool_use"] = True
    return None if choice is None and len(translated) == 1 else translated  # auto is the default


def _output_format(response_format: object) -> dict[str, Any] | None:
    """json_schema becomes a structured-output format; json_object has no Anthropic match."""
    spec = json_schema_spec(response_format, "Anthropic models produce")
    return None if spec is None else {"type": "json_schema", "schema": spec["schema"]}


def parse_message(document: Mapping[str, Any], call: ChatCall, provider: Provider,
                  upstream_request_id: str | None = None) -> ChatResult:
    """An Anthropic message as a one-choice ``ChatResult``: text joined, tool_use as calls."""
    content = document.get("content")
    if not isinstance(content, list):
        raise UpstreamServerError(f"provider '{provider.name}' answered without content",
                                  provider=provider.name)
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        if block.get("type") == "text":
            texts.append(str(block.get("text") or ""))
        elif block.get("type") == "tool_use":
            calls.append(ToolCall(str(block.get("id", "")), str(block.get("name", "")),
                                  json.dumps(block.get("input") or {})))
    stop_reason = str(document.get("stop_reason") or "end_turn")
    choice = Choice(
        index=0,
        content="".join(texts) if texts else None,
        finish_reason=STOP_REASONS.get(stop_reason, "stop"),
        tool_calls=tuple(calls),
        stop_sequence=matched_stop(stop_reason, document.get("stop_sequence")),
    )
    counts = document.get("usage")
    return ChatResult(
        model=str(document.get("model") or call.deployment.model),
        choices=(choice,),
        usage=usage(counts) if isinstance(counts, dict) else unreported_usage(call),
        upstream_request_id=upstream_request_id,
    )


def matched_stop(stop_reason: object, stop_sequence: object) -> str | None:
    """The stop sequence an answer ended at, or None."""
    if stop_reason == "stop_sequence" and isinstance(stop_sequence, str):
        return stop_sequence
    return None


def usage(counts: Mapping[str, Any]) -> Usage:
    """Anthropic counts cache reads and writes apart from ``input_tokens``; OpenAI's
    ``prompt_tokens`` holds all three."""
    cache_read = int(counts.get("cache_read_input_tokens") or 0)
    cache_creation = int(counts.get("cache_creation_input_tokens") or 0)
    return Usage(
        prompt_tokens=int(counts.get("input_tokens") or 0) + cache_read + cache_creation,
        completion_tokens=int(counts.get("output_tokens") or 0),
        cached_tokens=cache_read,
        cache_creation_tokens=cache_creation,
    )


_BLOCKS = TurnBlocks(
    label="Anthropic",
    text=_text_blocks,
    user=_user_blocks,
    assistant=_assistant_blocks,
    tool_result=_tool_result,
    is_tool_result=lambda block: block["type"] == "tool_result",
)
