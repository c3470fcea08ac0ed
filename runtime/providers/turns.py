"""OpenAI's message list as the system blocks and alternating turns that Anthropic's
Messages API and Bedrock's Converse both require; each adapter supplies its blocks.

Both require the first turn to be the user's, which OpenAI does not: a chat UI's
greeting before the first user message starts with the assistant, and a prompt may be
system messages alone. Such a conversation gets a minimal user turn (".", as LiteLLM's
and others' repairs give it) before the greeting, or as the only turn, rather than a
400 from the upstream. A greeting with no user turn after it gets one after it too:
ending with the assistant's turn asks Claude to go on with that text (a prefill, which
Claude 4.6 and later refuse), where OpenAI's models answer it with a message of their own.

Both also produce JSON only against a schema (``json_schema_spec`` reads and checks
one), lack the same OpenAI parameters (``NEUTRAL_EXTRAS``), and read message parts and
tool-call arguments alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..chat_request import ContentPart, Message
from ..errors import BadRequest

Block = dict[str, Any]
LEADING_USER_TEXT = "."  # the user turn put where a conversation has none
BlockBuilder = Callable[[Message, str], list[Block]]

# Extras that only concern OpenAI's own dashboards, caching or abuse checks, or latency:
# they cannot change the answer, and are dropped (Gemini drops the same, bar prediction).
DROPPED_EXTRAS = frozenset({"store", "metadata", "service_tier", "prediction",
                            "prompt_cache_key", "safety_identifier"})
# Extras that ask for something Messages and Converse lack, each with the values that ask
# for nothing; another value is refused, never silently dropped.
NEUTRAL_EXTRAS: Mapping[str, tuple[object, ...]] = MappingProxyType({
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "top_logprobs": (None,),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "reasoning_effort": (None,),
    "web_search_options": (None,),
    "functions": (None,),
    "function_call": (None,),
})


@dataclass(frozen=True, slots=True)
class TurnBlocks:
    """How one wire format writes each kind of message as content blocks."""

    label: str  # the provider, for the error on a message it cannot take
    text: BlockBuilder  # system and developer messages
    user: BlockBuilder
    assistant: BlockBuilder
    tool_result: Callable[[Message, str], Block]
    is_tool_result: Callable[[Block], bool]


def split_turns(messages: Sequence[Message], blocks: TurnBlocks) -> tuple[list[Block], list[Block]]:
    """System blocks, and user/assistant turns: tool results become blocks of a user turn;
    consecutive turns of one role are merged, with tool results first in their turn."""
    system: list[Block] = []
    turns: list[Block] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if message.role in ("system", "developer"):
            system.extend(blocks.text(message, where))
            continue
        if message.role == "user":
            role, content = "user", blocks.user(message, where)
        elif message.role == "assistant":
            role, content = "assistant", blocks.assistant(message, where)
        elif message.role == "tool":
            role, content = "user", [blocks.tool_result(message, where)]
        else:
            raise BadRequest(f"{blocks.label} models do not take 'function' messages; "
                             "use tools.", param=f"{where}.role")
        if not content:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(content)
        else:
            turns.append({"role": role, "content": content})
    for turn in turns:
        turn["content"].sort(key=lambda block: not blocks.is_tool_result(block))
    if not turns or turns[0]["role"] == "assistant":
        if len(turns) == 1:  # the assistant's turn alone: no user turn after it either
            turns.append(_placeholder(blocks))
        turns.insert(0, _placeholder(blocks))
    return system, turns


def message_parts(message: Message) -> list[ContentPart]:
    """A message's content as parts: a string is one text part."""
    if isinstance(message.content, str):
        return [ContentPart(type="text", text=message.content)]
    return list(message.content or [])


def text_parts(message: Message, where: str, label: str) -> list[ContentPart]:
    """The parts of a message that may hold text only (system, developer, assistant);
    another part is a ``BadRequest`` naming it."""
    parts = message_parts(message)
    for number, part in enumerate(parts):
        if part.type != "text":
            raise BadRequest(f"A {message.role} message can only hold text for {label}.",
                             param=f"{where}.content[{number}]")
    return parts


def tool_input(function: Mapping[str, Any], param: str) -> dict[str, Any]:
    """An assistant tool call's ``arguments`` (JSON text) as the object both APIs send;
    anything but a JSON object is a ``BadRequest`` naming ``param``."""
    try:
        value = json.loads(function.get("arguments") or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise BadRequest("Tool call arguments must be a JSON object.", param=param)
    return value


def _placeholder(blocks: TurnBlocks) -> Block:
    """The minimal user turn put where the conversation has none."""
    message = Message(role="user", content=LEADING_USER_TEXT)
    return {"role": "user", "content": blocks.user(message, "messages")}


def json_schema_spec(response_format: object, who_produces: str) -> dict[str, Any] | None:
    """The ``json_schema`` object of an OpenAI ``response_format`` (with its ``schema``),
    for a provider that produces JSON only against a schema (Anthropic, Converse): None
    when there is no format or it is text; json_object or no schema is a ``BadRequest``
    naming the parameter. ``who_produces`` opens the refusal: "Anthropic models produce"."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise BadRequest("response_format must be an object.", param="response_format")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind != "json_schema":
        raise BadRequest(f"{who_produces} JSON only against a schema: use response_format "
                         "{\"type\": \"json_schema\"}.", param="response_format")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise BadRequest("response_format json_schema needs a schema.",
                         param="response_format.json_schema.schema")
    return spec
