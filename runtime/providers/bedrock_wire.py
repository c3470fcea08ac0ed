"""OpenAI chat requests as Bedrock Converse bodies, and Converse answers as chat results.

Pure translation, no I/O: ``converse_body`` builds the body of POST
/model/{modelId}/converse (and /converse-stream, which takes the same body), raising
``BadRequest`` naming any parameter Converse cannot honour; ``parse_converse`` reads
an answer back; ``usage`` and ``STOP_REASONS`` serve whole and streamed answers. The
adapter that sends them is ``bedrock``; its docstring lists the mapping.
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

# Converse's stopReason as OpenAI's finish_reason.
STOP_REASONS: Mapping[str, str] = MappingProxyType({
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "content_filtered": "content_filter",
    "guardrail_intervened": "content_filter",
})
# Where Claude's own answer names the stop sequence that ended it, asked for as
# additionalModelResponseFieldPaths and returned (whole or streamed) at the same path in
# additionalModelResponseFields. Live answers carry it in the closing message_delta
# event's delta, and null at the top level that the API reference's example names; both
# are asked for, so a Converse that fills either is read (a path that finds nothing is
# ignored, as the reference says).
STOP_SEQUENCE_PATHS = ("/delta/stop_sequence", "/stop_sequence")
# Stop reasons of an answer the model botched (a tool call or output that does not
# parse): nothing a client can use, and a retry or another member may well do better.
MALFORMED_STOPS = frozenset({"malformed_tool_use", "malformed_model_output"})


def finish_reason(stop_reason: str, provider: str) -> str:
    """Converse's stopReason as OpenAI's finish_reason; a malformed answer is a
    (retryable) upstream failure."""
    if stop_reason in MALFORMED_STOPS:
        raise UpstreamServerError(f"provider '{provider}' produced a malformed answer "
                                  f"(stopReason {stop_reason})", provider=provider)
    return STOP_REASONS.get(stop_reason, "stop")


def matched_stop(stop_reason: str, fields: object) -> str | None:
    """The stop sequence an answer ended at, from its ``additionalModelResponseFields``
    (there when ``STOP_SEQUENCE_PATHS`` were asked for), or None."""
    if stop_reason != "stop_sequence" or not isinstance(fields, dict):
        return None
    delta = fields.get("delta")
    for sequence in (delta.get("stop_sequence") if isinstance(delta, dict) else None,
                     fields.get("stop_sequence")):
        if isinstance(sequence, str):
            return sequence
    return None


IMAGE_FORMATS: Mapping[str, str] = MappingProxyType({
    "image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp",
})
_DATA_URL = re.compile(r"data:(?P<media_type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.+)", re.DOTALL)

# Converse also cannot forbid parallel tool calls (Anthropic's Messages API can).
_NEUTRAL: Mapping[str, tuple[object, ...]] = MappingProxyType({
    **NEUTRAL_EXTRAS, "parallel_tool_calls": (None, True)})


def converse_body(call: ChatCall) -> dict[str, Any]:
    """The Converse body for ``call``, or a ``BadRequest`` naming what cannot be sent.

    ``[system "Be brief.", user "hi"]`` becomes ``{"messages": [{"role": "user",
    "content": [{"text": "hi"}]}], "system": [{"text": "Be brief."}]}``.
    """
    request = call.request
    claude = is_claude(call.deployment.model)
    _refuse_unsupported(request, claude)
    system, messages = translate_messages(request.messages)
    body: dict[str, Any] = {"messages": messages}
    if system:
        body["system"] = system
    inference = _inference_config(call)
    if inference:
        body["inferenceConfig"] = inference
    if claude and "stopSequences" in inference:
        # Converse does not say which stop sequence ended an answer (/v1/messages answers
        # with it) unless asked for the field of Claude's own closing message_delta event.
        body["additionalModelResponseFieldPaths"] = list(STOP_SEQUENCE_PATHS)
    top_k = (request.model_extra or {}).get("top_k")
    if top_k is not None and claude:  # Claude's own field, which Converse passes on
        body["additionalModelRequestFields"] = {"top_k": top_k}
    tool_config = _tool_config(request, messages)
    if tool_config is not None:
        body["toolConfig"] = tool_config
    text_format = _text_format((request.model_extra or {}).get("response_format"))
    if text_format is not None:
        body["outputConfig"] = {"textFormat": text_format}
    return body


def is_claude(model: str) -> bool:
    """Whether a model id (``anthropic.claude-...``, ``us.anthropic.claude-...``, an ARN
    that names one) is one of Anthropic's, which take ``top_k`` as a model field."""
    return "anthropic" in model or "claude" in model


def _refuse_unsupported(request: ChatRequest, claude: bool) -> None:
    if request.n > 1:
        raise BadRequest("Bedrock returns one choice per request; 'n' must be 1.", param="n")
    if request.seed is not None:
        raise BadRequest("Bedrock's Converse API has no seed; remove 'seed'.", param="seed")
    for name, value in (request.model_extra or {}).items():
        if value is None or name in DROPPED_EXTRAS or name == "response_format":  # _text_format
            continue
        # top_k reaches Claude (converse_body); from /v1/messages, Anthropic's hint is
        # left out for another model, as OpenAI-format upstreams leave it out.
        if name == "top_k" and (claude or request.anthropic_hints):
            continue
        neutral = _NEUTRAL.get(name)
        if neutral is None:
            raise BadRequest(f"Unrecognized request argument for a Bedrock model: {name}",
                             param=name)
        if value not in neutral:
            raise BadRequest(f"Bedrock's Converse API cannot honour '{name}' = "
                             f"{json.dumps(value)}.", param=name)


def _text_format(response_format: object) -> dict[str, Any] | None:
    """json_schema as Converse's structured output (``outputConfig.textFormat``, its
    schema a JSON string); json_object has no Converse match: Converse promises JSON only
    against a schema."""
    spec = json_schema_spec(response_format, "Bedrock's Converse API produces")
    if spec is None:
        return None
    definition: dict[str, Any] = {"schema": json.dumps(spec["schema"])}
    for field in ("name", "description"):  # ``strict`` is not sent: Converse's always is
        if isinstance(spec.get(field), str):
            definition[field] = spec[field]
    return {"type": "json_schema", "structure": {"jsonSchema": definition}}


def translate_messages(messages: list[Message]) -> tuple[list[dict[str, Any]],
                                                        list[dict[str, Any]]]:
    """OpenAI messages as Converse's ``system`` blocks and user/assistant turns."""
    return split_turns(messages, _BLOCKS)


def _text(part: ContentPart) -> list[dict[str, Any]]:
    """A text block (Converse refuses blank ones), and a cache point where the client
    marked one with ``cache_control``."""
    if not part.text:
        return []
    if (part.model_extra or {}).get("cache_control") is not None:
        return [{"text": part.text}, {"cachePoint": {"type": "default"}}]
    return [{"text": part.text}]


def _text_blocks(message: Message, where: str) -> list[dict[str, Any]]:
    return [block for part in text_parts(message, where, "Bedrock") for block in _text(part)]


def _user_blocks(message: Message, where: str) -> list[dict[str, Any]]:
    blocks = []
    for number, part in enumerate(message_parts(message)):
        if part.type == "text":
            blocks.extend(_text(part))
        elif part.type == "image_url":
            blocks.append(_image(part, f"{where}.content[{number}].image_url"))
        else:
            raise BadRequest(f"Bedrock models do not take '{part.type}' content parts.",
                             param=f"{where}.content[{number}].type")
    return blocks


def _image(part: ContentPart, where: str) -> dict[str, Any]:
    """A base64 ``data:`` URL as image bytes; Converse fetches no URLs (S3 aside)."""
    value = (part.model_extra or {}).get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    match = _DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None or match["media_type"] not in IMAGE_FORMATS:
        raise BadRequest("Bedrock takes images as base64 data: URLs of image/png, image/jpeg, "
                         "image/gif or image/webp.", param=where)
    return {"image": {"format": IMAGE_FORMATS[match["media_type"]],
                      "source": {"bytes": match["data"]}}}


def _assistant_blocks(message: Message, where: str) -> list[dict[str, Any]]:
    blocks = _text_blocks(message, where)
    for number, call in enumerate(message.tool_calls or []):
        function = call.get("function") or {}
        arguments = tool_input(function, f"{where}.tool_calls[{number}].function.arguments")
        blocks.append({"toolUse": {"toolUseId": call.get("id"), "name": function.get("name"),
                                   "input": arguments}})
    return blocks


def _tool_result(message: Message, where: str) -> dict[str, Any]:
    if not message.tool_call_id:
        raise BadRequest("A tool message needs tool_call_id.", param=f"{where}.tool_call_id")
    text = message.text()
    # A blank text block is refused: an empty result goes as an empty JSON object.
    content: list[dict[str, Any]] = [{"text": text}] if text else [{"json": {}}]
    return {"toolResult": {"toolUseId": message.tool_call_id, "content": content}}


def _inference_config(call: ChatCall) -> dict[str, Any]:
    """maxTokens only when the client or the deployment set a cap: a deployment without
    one defaults to its context window, which most Bedrock models would refuse."""
    request = call.request
    config: dict[str, Any] = {}
    deployment = call.deployment
    if request.output_limit is not None or deployment.max_output_tokens < deployment.context_window:
        config["maxTokens"] = call.max_output_tokens
    if request.temperature is not None:
        if request.temperature > 1:  # Converse's ValidationException, unsent
            raise BadRequest("Bedrock's Converse takes a temperature from 0 to 1.",
                             param="temperature")
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    if stop:
        config["stopSequences"] = stop
    return config


def _tool_config(request: ChatRequest, turns: list[dict[str, Any]]) -> dict[str, Any] | None:
    """tools and tool_choice; Converse needs the tools whenever the conversation holds
    tool calls, and has no way to forbid calling them."""
    choice = request.tool_choice
    history = any("toolUse" in block or "toolResult" in block
                  for turn in turns for block in turn["content"])
    if not request.tools:
        if choice not in (None, "auto", "none"):
            raise BadRequest("tool_choice needs tools.", param="tool_choice")
        if history:
            raise BadRequest("Bedrock needs the tools of the tool calls in the conversation: "
                             "send them in 'tools'.", param="tools")
        return None
    if choice == "none":
        if history:
            raise BadRequest("Bedrock cannot forbid tool calls in a conversation that has "
                             "them; send tool_choice auto.", param="tool_choice")
        return None
    tools: list[dict[str, Any]] = []
    for index, tool in enumerate(request.tools):
        tools.append(_tool(tool, index))
        if tool.get("cache_control") is not None:  # the tools up to here are cached
            tools.append({"cachePoint": {"type": "default"}})
    config: dict[str, Any] = {"tools": tools}
    if choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        config["toolChoice"] = {"tool": {"name": choice["function"].get("name")}}
    elif choice not in (None, "auto"):
        raise BadRequest("tool_choice must be auto, none, required or a named function.",
                         param="tool_choice")
    return config


def _tool(tool: Mapping[str, Any], index: int) -> dict[str, Any]:
    """A function tool as a ``toolSpec``; ``strict`` is not sent: Converse has no such mode."""
    function = tool.get("function")
    if tool.get("type") != "function" or not isinstance(function, dict) \
            or not function.get("name"):
        raise BadRequest("Bedrock models take only function tools with a name.",
                         param=f"tools[{index}]")
    spec: dict[str, Any] = {
        "name": function["name"],
        "inputSchema": {"json": function.get("parameters")
                        or {"type": "object", "properties": {}}},
    }
    if function.get("description"):
        spec["description"] = function["description"]
    return {"toolSpec": spec}


def parse_converse(document: Mapping[str, Any], call: ChatCall, provider: Provider) -> ChatResult:
    """A Converse answer as a one-choice ``ChatResult``: text joined, toolUse as calls."""
    message = (document.get("output") or {}).get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list):
        raise UpstreamServerError(f"provider '{provider.name}' answered without a message",
                                  provider=provider.name)
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            use = block["toolUse"]
            calls.append(ToolCall(str(use.get("toolUseId", "")), str(use.get("name", "")),
                                  json.dumps(use.get("input") or {})))
    stop_reason = str(document.get("stopReason") or "end_turn")
    choice = Choice(
        index=0,
        content="".join(texts) if texts else None,
        finish_reason=finish_reason(stop_reason, provider.name),
        tool_calls=tuple(calls),
        stop_sequence=matched_stop(stop_reason, document.get("additionalModelResponseFields")),
    )
    counts = document.get("usage")
    return ChatResult(
        model=call.deployment.model,
        choices=(choice,),
        usage=usage(counts) if isinstance(counts, dict) else unreported_usage(call),
    )


def usage(counts: Mapping[str, Any]) -> Usage:
    """Converse counts cache reads and writes apart from ``inputTokens``; OpenAI's
    ``prompt_tokens`` holds all three."""
    cache_read = int(counts.get("cacheReadInputTokens") or 0)
    cache_write = int(counts.get("cacheWriteInputTokens") or 0)
    return Usage(
        prompt_tokens=int(counts.get("inputTokens") or 0) + cache_read + cache_write,
        completion_tokens=int(counts.get("outputTokens") or 0),
        cached_tokens=cache_read,
        cache_creation_tokens=cache_write,
    )


_BLOCKS = TurnBlocks(
    label="Bedrock",
    text=_text_blocks,
    user=_user_blocks,
    assistant=_assistant_blocks,
    tool_result=_tool_result,
    is_tool_result=lambda block: "toolResult" in block,
)
