"""The Anthropic Messages request, validated at the door and lowered into a ``ChatRequest``.

    MessagesRequest (what the app sent) -> to_chat_request -> ChatRequest (what the core takes)

Unknown fields are refused (``extra="forbid"``), as Anthropic refuses them, so that a
feature this gateway cannot translate (``thinking`` other than disabled, server tools,
documents) is a 400 naming the field rather than silently lost. Lowering decisions,
each chosen so that an OpenAI-format upstream receives only what it accepts:

- ``system`` -> one system message; text blocks joined with a blank line (kept as text
  parts when one carries ``cache_control``, see below).
- user text and image blocks -> the user message's content; a single text block
  becomes a plain string. Images become ``image_url`` parts (base64 -> ``data:`` URL).
- ``tool_result`` blocks -> ``tool`` messages, placed before the rest of the user
  turn; ``is_error`` prefixes the text with "Error: " (OpenAI has no such flag).
  Images inside a tool result are refused: OpenAI's tool messages hold only text.
- ``tool_use`` blocks -> the assistant's ``tool_calls``, ``input`` JSON-encoded.
- ``tool_choice`` auto/any/tool/none -> "auto"/"required"/named function/"none";
  ``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``.
- ``max_tokens`` -> ``max_completion_tokens`` (what OpenAI's reasoning models take;
  servers that know only ``max_tokens`` are sent that).
- ``stop_sequences`` -> ``stop``; ``metadata.user_id`` -> ``user``.
- ``output_config.format`` (structured outputs, what ``messages.parse`` sends) ->
  ``response_format`` json_schema named "output", strict (Anthropic's always are); it
  needs the deployment's ``json_schema`` capability. ``output_config.effort`` is refused.
- ``cache_control`` on system, text, image and tool_result blocks and on tools, and
  ``top_k``, are kept as an OpenAI-format client writes them for an Anthropic upstream
  (a text part's or a tool's ``cache_control``, a ``top_k`` parameter; a marked system
  prompt stays one text part a block), and the request is marked as carrying them
  (``ChatRequest.anthropic_hints``): Anthropic, Vertex's Claude and Bedrock honour
  them as far as each can, OpenAI-format upstreams are not sent them.
- ``service_tier`` and the top-level ``cache_control`` are accepted and ignored.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError

from .chat_request import ChatRequest, chat_request_from, finite
from .errors import BadRequest

# The discriminator values pydantic puts into an error's location after a union site.
_TAGS = frozenset({"text", "image", "tool_use", "tool_result", "base64", "url",
                   "auto", "any", "tool", "none"})


def _as_blocks(value: object) -> object:
    """Content given as a string is one text block (Anthropic's own shorthand)."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextBlock(_Wire):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None
    citations: list[dict[str, Any]] | None = None


class Base64Source(_Wire):
    type: Literal["base64"]
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: Annotated[str, Field(min_length=1)]


class UrlSource(_Wire):
    type: Literal["url"]
    url: Annotated[str, Field(min_length=1)]


class ImageBlock(_Wire):
    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]
    cache_control: dict[str, Any] | None = None


class ToolUseBlock(_Wire):
    type: Literal["tool_use"]
    id: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None


ResultPart = Annotated[TextBlock | ImageBlock, Field(discriminator="type")]


class ToolResultBlock(_Wire):
    type: Literal["tool_result"]
    tool_use_id: Annotated[str, Field(min_length=1)]
    content: Annotated[list[ResultPart], BeforeValidator(_as_blocks)] = []
    is_error: StrictBool = False
    cache_control: dict[str, Any] | None = None


Block = Annotated[
    TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")
]


class MessageParam(_Wire):
    role: Literal["user", "assistant"]
    content: Annotated[list[Block], BeforeValidator(_as_blocks), Field(min_length=1)]


def _custom_tool(value: object) -> object:
    """A server tool (web search, code execution...) runs at Anthropic, which no upstream
    of this gateway is: said so, rather than "input_schema: Field required"."""
    if isinstance(value, dict) and value.get("type") not in (None, "custom"):
        raise ValueError(f"'{value['type']}' is a server tool, which this gateway cannot "
                         "run: only custom tools (with an input_schema) are accepted")
    return value


def _no_thinking(value: object) -> object:
    """Any thinking but none (enabled, adaptive...) would come back as thinking blocks,
    which no OpenAI-format answer holds: refused, as the gateway cannot give them."""
    if isinstance(value, dict) and value.get("type") != "disabled":
        raise ValueError(f"extended thinking ({json.dumps(value.get('type'))}) is not available "
                         "through this gateway, whose upstreams are called in OpenAI's format: "
                         'leave it out, or give {"type": "disabled"}')
    return value


def _no_effort(value: object) -> object:
    if value is not None:
        raise ValueError("effort is not available through this gateway, whose upstreams are "
                         "called in OpenAI's format: leave it out")
    return value


class ThinkingDisabled(_Wire):
    type: Literal["disabled"]


class ToolParam(_Wire):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,128}$")]
    description: str | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoiceAuto(_Wire):
    type: Literal["auto"]
    disable_parallel_tool_use: StrictBool = False


class ToolChoiceAny(_Wire):
    type: Literal["any"]
    disable_parallel_tool_use: StrictBool = False


class ToolChoiceTool(_Wire):
    type: Literal["tool"]
    name: Annotated[str, Field(min_length=1)]
    disable_parallel_tool_use: StrictBool = False


class ToolChoiceNone(_Wire):
    type: Literal["none"]


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class Metadata(_Wire):
    user_id: str | None = None


class JsonOutputFormat(_Wire):
    """Structured outputs: the answer is JSON that matches ``schema``."""

    type: Literal["json_schema"]
    # "schema" would shadow pydantic's BaseModel.schema: named apart, read by its alias.
    json_schema: Annotated[dict[str, Any], Field(alias="schema")]


class OutputConfig(_Wire):
    format: JsonOutputFormat | None = None
    effort: Annotated[None, BeforeValidator(_no_effort)] = None


class CountTokensRequest(_Wire):
    """POST /v1/messages/count_tokens: the prompt part of a Messages request."""

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[MessageParam], Field(min_length=1)]
    system: Annotated[list[TextBlock], BeforeValidator(_as_blocks)] | None = None
    tools: list[Annotated[ToolParam, BeforeValidator(_custom_tool)]] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Annotated[ThinkingDisabled, BeforeValidator(_no_thinking)] | None = None


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages."""

    max_tokens: Annotated[int, Field(ge=1)]
    stream: StrictBool = False
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    stop_sequences: list[str] | None = None
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    cache_control: dict[str, Any] | None = None
    output_config: OutputConfig | None = None


_Request = TypeVar("_Request", bound=CountTokensRequest)


def parse(model: type[_Request], body: bytes) -> _Request:
    """Validate a body; any problem is a ``BadRequest`` worded as Anthropic words it,
    ``<field path>: <what is wrong>`` (e.g. ``max_tokens: Field required``)."""
    try:
        request = model.model_validate_json(body)
    except ValidationError as exc:
        raise _bad_request(exc) from exc
    # A number too large for a float (1e999) parses as infinity, which reaches the upstream
    # as null (a tool's schema) or as "Infinity", not JSON (a tool call's input).
    if not finite(request.model_dump(include={"tools", "messages"})):
        raise BadRequest("tools, messages: numbers must be finite (1e999 is too large).",
                         param="messages")
    return request


def _bad_request(exc: ValidationError) -> BadRequest:
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        reason = first["msg"].removeprefix("Invalid JSON: ")
        return BadRequest(f"The request body is not valid JSON: {reason}.")
    if first["type"] == "model_type" and not first["loc"]:
        return BadRequest("The request body must be a JSON object.")
    param = field_path(first["loc"])
    reason = first["msg"].removeprefix("Value error, ")  # aigw's own words, from a validator
    return BadRequest(f"{param}: {reason}", param=param)


def field_path(loc: tuple[int | str, ...]) -> str:
    """A dotted path to the field, without the union tags pydantic adds to locations.

    >>> field_path(("messages", 0, "content", 1, "tool_use", "input"))
    'messages.0.content.1.input'
    """
    kept: list[str] = []
    for position, part in enumerate(loc):
        before = loc[position - 1] if position else None
        at_union = before in ("source", "tool_choice") or (
            isinstance(before, int) and position >= 2 and loc[position - 2] == "content"
        )
        if at_union and part in _TAGS:
            continue
        kept.append(str(part))
    return ".".join(kept)


def to_chat_request(request: MessagesRequest) -> ChatRequest:
    """Lower a Messages request into the OpenAI-shaped request the serving core takes."""
    marks = _Marks()
    body: dict[str, Any] = {
        "model": request.model,
        "messages": chat_messages(request, marks),
        # OpenAI's reasoning models (o1, o3, gpt-5...) refuse max_tokens: the cap goes as
        # an OpenAI SDK sends it today, and the OpenAI adapter writes it in the field its
        # server reads (cap_field), as it does for an OpenAI-format client's.
        "max_completion_tokens": request.max_tokens,
        "stream": request.stream,
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.top_k is not None:
        body["top_k"] = request.top_k
    if request.stop_sequences:
        body["stop"] = list(request.stop_sequences)
    if request.metadata is not None and request.metadata.user_id:
        body["user"] = request.metadata.user_id
    output_format = request.output_config and request.output_config.format
    if output_format:
        # Anthropic's structured outputs always hold to the schema: strict, as OpenAI says it.
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "output", "schema": output_format.json_schema, "strict": True}}
    body.update(tools_of(request, marks))
    hints = request.top_k is not None or marks.met
    return chat_request_from(body, anthropic_hints=hints)


class _Marks:
    """Whether the lowering met a ``cache_control`` mark (on a block of any kind, a tool
    result's text or a tool): then the request carries Anthropic's hints. Noted where
    each block is lowered, as a second walk over every block found what it had seen."""

    __slots__ = ("met",)

    def __init__(self) -> None:
        self.met = False


def _text_part(block: TextBlock, marks: _Marks) -> dict[str, Any]:
    """A text block as an OpenAI text part, its ``cache_control`` kept where it has one
    (as an OpenAI-format client writes it for an Anthropic upstream)."""
    part: dict[str, Any] = {"type": "text", "text": block.text}
    if block.cache_control is not None:
        part["cache_control"] = block.cache_control
        marks.met = True
    return part


def chat_messages(
    request: CountTokensRequest, marks: _Marks | None = None
) -> list[dict[str, Any]]:
    """The conversation as OpenAI chat messages, system prompt first; ``marks`` notes
    whether it met a ``cache_control`` mark."""
    marks = marks or _Marks()
    lowered: list[dict[str, Any]] = []
    if request.system:
        system: str | list[dict[str, Any]] = "\n\n".join(b.text for b in request.system)
        if any(block.cache_control is not None for block in request.system):
            # the marks' places
            system = [_text_part(block, marks) for block in request.system]
        lowered.append({"role": "system", "content": system})
    for number, message in enumerate(request.messages):
        if message.role == "assistant":
            lowered.append(_assistant(message, number, marks))
        else:
            lowered.extend(_user(message, number, marks))
    return lowered


def _assistant(message: MessageParam, number: int, marks: _Marks) -> dict[str, Any]:
    texts: list[TextBlock] = []
    calls: list[dict[str, Any]] = []
    for position, block in enumerate(message.content):
        if isinstance(block, TextBlock):
            texts.append(block)
        elif isinstance(block, ToolUseBlock):
            # A tool call has no place for the block's mark, which still marks the request.
            if block.cache_control is not None:
                marks.met = True
            calls.append({
                "id": block.id,
                "type": "function",
                "function": {"name": block.name, "arguments": json.dumps(block.input)},
            })
        else:
            raise _misplaced(block.type, "an assistant", number, position)
    content: str | list[dict[str, Any]] = "".join(block.text for block in texts)
    if any(block.cache_control is not None for block in texts):
        content = [_text_part(block, marks) for block in texts]
    lowered: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        lowered["tool_calls"] = calls
        lowered["content"] = lowered["content"] or None
    return lowered


def _user(message: MessageParam, number: int, marks: _Marks) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for position, block in enumerate(message.content):
        if isinstance(block, ToolResultBlock):
            results.append(_tool_message(block, number, position, marks))
        elif isinstance(block, TextBlock):
            parts.append(_text_part(block, marks))
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block, marks))
        else:
            raise _misplaced(block.type, "a user", number, position)
    if not parts:
        return results
    if len(parts) == 1 and parts[0].keys() == {"type", "text"}:
        return [*results, {"role": "user", "content": parts[0]["text"]}]
    return [*results, {"role": "user", "content": parts}]


def _tool_message(
    block: ToolResultBlock, number: int, position: int, marks: _Marks
) -> dict[str, Any]:
    texts: list[str] = []
    for inner, part in enumerate(block.content):
        if not isinstance(part, TextBlock):
            param = f"messages.{number}.content.{position}.content.{inner}"
            raise BadRequest(
                f"{param}: images in a tool_result cannot be passed on; OpenAI-format "
                "tool messages hold only text. Send the image in a user text turn instead.",
                param=param,
            )
        texts.append(part.text)
    text = "\n".join(texts)
    text = f"Error: {text}" if block.is_error else text
    # A mark on the result or on its last marked text marks the whole result: OpenAI's
    # tool message is one text.
    given = [block.cache_control, *(part.cache_control for part in block.content)]
    mark = next((each for each in reversed(given) if each is not None), None)
    content: str | list[dict[str, Any]] = text
    if mark is not None:
        content = [{"type": "text", "text": text, "cache_control": mark}]
        marks.met = True
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": content}


def _image_part(block: ImageBlock, marks: _Marks) -> dict[str, Any]:
    source = block.source
    if isinstance(source, Base64Source):
        url = f"data:{source.media_type};base64,{source.data}"
    else:
        url = source.url
    part: dict[str, Any] = {"type": "image_url", "image_url": {"url": url}}
    if block.cache_control is not None:
        part["cache_control"] = block.cache_control
        marks.met = True
    return part


def _misplaced(kind: str, turn: str, number: int, position: int) -> BadRequest:
    param = f"messages.{number}.content.{position}"
    return BadRequest(f"{param}: {turn} turn cannot hold a '{kind}' block.", param=param)


def tools_of(request: CountTokensRequest, marks: _Marks | None = None) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls``, or nothing when no tools;
    ``marks`` notes whether a tool carried a ``cache_control`` mark."""
    names = {tool.name for tool in request.tools or ()}
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceTool) and choice.name not in names:
        raise BadRequest(
            f"tool_choice.name: no tool named '{choice.name}' is in 'tools'.",
            param="tool_choice.name",
        )
    if not request.tools:
        return {}
    marks = marks or _Marks()
    lowered: dict[str, Any] = {"tools": [_tool(tool, marks) for tool in request.tools]}
    if isinstance(choice, ToolChoiceNone):
        lowered["tool_choice"] = "none"
        return lowered
    if isinstance(choice, ToolChoiceAny):
        lowered["tool_choice"] = "required"
    elif isinstance(choice, ToolChoiceTool):
        lowered["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif isinstance(choice, ToolChoiceAuto):
        lowered["tool_choice"] = "auto"
    if choice is not None and choice.disable_parallel_tool_use:
        lowered["parallel_tool_calls"] = False
    return lowered


def _tool(tool: ToolParam, marks: _Marks) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description is not None:
        function["description"] = tool.description
    lowered: dict[str, Any] = {"type": "function", "function": function}
    if tool.cache_control is not None:
        lowered["cache_control"] = tool.cache_control
        marks.met = True
    return lowered
