"""The OpenAI Responses request, validated at the door and lowered into a ``ChatRequest``.

    ResponsesRequest (what the app sent) -> to_chat_request -> ChatRequest (what the core takes)

``previous_response_id`` names a kept response (runtime/responses_stored.py puts its
conversation before ``input``), ``conversation`` (an id, or ``{"id": ...}``) one of
the Conversations API (runtime/conversations.py puts its items there), never both (a
400, as OpenAI's); ``item_reference`` items are refused with a 400 that says to send
the conversation as ``input`` or continue it. Unknown fields are refused
(``extra="forbid"``), so that a feature the gateway cannot translate (hosted tools,
reusable prompts, background runs) is a 400 naming it rather than silently lost.
Lowering decisions:

- ``input`` as a string -> one user message; ``instructions`` -> a system message first.
- message items keep their role (user, system, developer, assistant); ``input_text``
  parts are text, ``input_image`` parts ``image_url`` parts (a ``file_id`` names a
  file stored at OpenAI, which no upstream of this gateway can read: refused); an
  assistant's ``output_text`` and ``refusal`` parts are its text.
- ``function_call`` items -> the assistant's ``tool_calls`` (consecutive calls, and
  the assistant text of the same turn, are one assistant message);
  ``function_call_output`` items -> ``tool`` messages (text only, as OpenAI's are).
- ``reasoning`` items (an earlier answer's reasoning, sent back by the SDKs) are
  accepted and dropped: chat has no place for them, and neither the OpenAI-format
  upstreams (which refuse or ignore a ``reasoning_content`` sent back) nor the
  Anthropic adapter (which drops thinking blocks) take them. They stay in a kept
  response's input items.
- function ``tools`` (the flat shape) -> chat tools; ``strict`` is sent only where the
  app gave it. Any other tool type runs on OpenAI's servers: refused.
- ``tool_choice`` auto/none/required/{type: function, name} -> the same in chat's shape.
- ``text.format`` text/json_object/json_schema -> ``response_format`` (json_schema
  needs the deployment's ``json_schema`` capability, as on chat).
- ``max_output_tokens`` -> ``max_completion_tokens`` (OpenAI's reasoning models refuse
  ``max_tokens``; the OpenAI adapter sends servers that know only ``max_tokens`` that).
- ``reasoning.effort`` -> ``reasoning_effort``, ``text.verbosity`` -> ``verbosity``
  (upstreams that have neither refuse them, as on chat); ``prompt_cache_key`` and
  ``safety_identifier`` pass on as chat's (the adapters that cannot use them drop them).
- ``include`` (but ``message.output_text.logprobs``: refused, rather than answered
  without them), ``service_tier``, ``stream_options``, ``reasoning.summary``
  (no reasoning items are given back), ``prompt_cache_retention``, parts'
  ``prompt_cache_breakpoint`` and ``metadata`` are accepted and not passed on
  (``metadata`` is echoed in the answer); fields of an OpenAI-hosted feature on items
  and tools (``namespace``, ``caller``, ``defer_loading``...) are accepted only null or
  off.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError

from .chat_request import ChatRequest, chat_request_from, finite
from .errors import BadRequest

# The discriminator values pydantic puts into an error's location after a union site.
_TAGS = frozenset({"message", "function_call", "function_call_output", "reasoning", "input_text",
                   "input_image", "output_text", "refusal", "text", "json_object",
                   "json_schema", "function", "str", "ToolChoiceFunction"})
_STORED = ("this gateway keeps no items apart from responses and conversations: send the "
           "whole conversation as 'input' (earlier output items included), or continue a "
           "kept response with 'previous_response_id' or a conversation with 'conversation'")


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputText(_Wire):
    type: Literal["input_text"]
    text: str
    prompt_cache_breakpoint: Any = None  # a caching hint: accepted, not passed on


class InputImage(_Wire):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None
    prompt_cache_breakpoint: Any = None


class OutputText(_Wire):
    type: Literal["output_text"]
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] | None = None


class RefusalPart(_Wire):
    type: Literal["refusal"]
    refusal: str


def _known_part(value: object) -> object:
    """A file part (``input_file``) or another kind no chat message holds: said so."""
    if isinstance(value, dict) and value.get("type") not in (
            "input_text", "input_image", "output_text", "refusal"):
        raise ValueError(f"{value.get('type')!r} parts cannot be passed on by this gateway: "
                         "input_text and input_image (a user's), output_text and refusal (an "
                         "assistant's) are accepted")
    return value


Part = Annotated[
    Annotated[InputText | InputImage | OutputText | RefusalPart, Field(discriminator="type")],
    BeforeValidator(_known_part),
]


def _as_item(value: object) -> object:
    """A message item may leave out ``type`` (the SDK's EasyInputMessage) and give its
    content as a string: made whole here, an assistant's text as ``output_text``."""
    if not isinstance(value, dict):
        return value
    kind = value.get("type", "message")
    if kind not in ("message", "function_call", "function_call_output", "reasoning"):
        if kind == "item_reference":
            raise ValueError(f"item references are not followed: {_STORED}")
        raise ValueError(f"items of type {kind!r} cannot be passed on by this gateway: "
                         "message, function_call, function_call_output and reasoning items "
                         "are accepted")
    value = {**value, "type": kind}
    content = value.get("content")
    if kind == "message" and isinstance(content, str):
        part = "output_text" if value.get("role") == "assistant" else "input_text"
        value["content"] = [{"type": part, "text": content}]
    return value


def _empty_id_is_none(value: object) -> object:
    """An item's ``id`` of ``""`` is no id: it is given one, as an absent one is. Kept as
    ``""``, it was listed under the id it was given and read back with ``""``, and a
    conversation's second item without one was refused as naming the first."""
    return None if value == "" else value


ItemId = Annotated[str | None, BeforeValidator(_empty_id_is_none)]


class MessageItem(_Wire):
    type: Literal["message"]
    role: Literal["user", "assistant", "system", "developer"]
    content: list[Part]
    id: ItemId = None
    status: str | None = None
    phase: str | None = None  # OpenAI's label of an earlier answer (commentary...)


class FunctionCallItem(_Wire):
    type: Literal["function_call"]
    call_id: Annotated[str, Field(min_length=1)]
    name: Annotated[str, Field(min_length=1)]
    arguments: str
    id: ItemId = None
    status: str | None = None
    # Tool namespaces and programmatic callers are OpenAI-hosted features: only null,
    # as an item the SDK dumped whole carries them.
    namespace: None = None
    caller: None = None
    async_: Annotated[None, Field(alias="async")] = None


class FunctionCallOutputItem(_Wire):
    type: Literal["function_call_output"]
    call_id: Annotated[str, Field(min_length=1)]
    output: str | list[Part]
    id: ItemId = None
    status: str | None = None
    name: str | None = None
    namespace: None = None
    caller: None = None


class ReasoningItem(_Wire):
    """A model's reasoning from an earlier turn, as OpenAI's clients send it back (the
    Agents SDK does, with ``encrypted_content`` under ``store: false``): accepted and kept
    with the history, never sent upstream, where a chat message has no place for it."""

    type: Literal["reasoning"]
    id: ItemId = None
    summary: list[Any] = []
    content: list[Any] | None = None
    encrypted_content: str | None = None
    status: str | None = None


Item = Annotated[
    Annotated[MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem,
              Field(discriminator="type")],
    BeforeValidator(_as_item),
]


def _as_items(value: object) -> object:
    """``input`` given as a string is one user message."""
    return [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) \
        else value


def _function_tool(value: object) -> object:
    """A hosted tool (web search, file search, computer use, MCP...) runs on OpenAI's
    servers, which this gateway does not call: said so, rather than "name: Field required"."""
    if isinstance(value, dict) and value.get("type") != "function":
        raise ValueError(f"{value.get('type')!r} tools run on OpenAI's own servers, which this "
                         "gateway does not call: only function tools are accepted")
    return value


class FunctionTool(_Wire):
    type: Literal["function"]
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None
    # OpenAI-hosted tool features (deferred loading, programmatic callers): only off.
    defer_loading: Literal[False] | None = None
    allowed_callers: None = None
    output_schema: None = None
    async_: Annotated[None, Field(alias="async")] = None


class ToolChoiceFunction(_Wire):
    type: Literal["function"]
    name: Annotated[str, Field(min_length=1)]


_CHOICES = ("auto", "none", "required")
_GIVE_CHOICE = 'give auto, none, required or {"type": "function", "name": ...}'


def _function_choice(value: object) -> object:
    """Said what is accepted, rather than pydantic's words for the union's first member."""
    if isinstance(value, dict) and value.get("type") != "function":
        raise ValueError(f"a tool_choice of type {value.get('type')!r} names a tool this "
                         f"gateway does not offer: {_GIVE_CHOICE}")
    if isinstance(value, str) and value not in _CHOICES:
        raise ValueError(f"{value!r} is not a tool_choice: {_GIVE_CHOICE}")
    return value


class TextFormatText(_Wire):
    type: Literal["text"]


class TextFormatJsonObject(_Wire):
    type: Literal["json_object"]


class TextFormatJsonSchema(_Wire):
    type: Literal["json_schema"]
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    # "schema" would shadow pydantic's BaseModel.schema: named apart, read by its alias.
    json_schema: Annotated[dict[str, Any], Field(alias="schema")]
    description: str | None = None
    strict: StrictBool | None = None


TextFormat = Annotated[TextFormatText | TextFormatJsonObject | TextFormatJsonSchema,
                       Field(discriminator="type")]


class TextConfig(_Wire):
    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class Reasoning(_Wire):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


def _conversation_id(value: object) -> object:
    """``{"id": "conv_..."}`` is its id, as the SDK's ``ConversationParam`` allows."""
    if isinstance(value, dict):
        if set(value) != {"id"}:
            raise ValueError('give a conversation\'s id, or {"id": ...}')
        return value["id"]
    return value


def _no_background(value: object) -> object:
    if value:
        raise ValueError("background responses are not run by this gateway: leave it out, "
                         "or stream the answer")
    return value


def _no_auto_truncation(value: object) -> object:
    if value == "auto":
        raise ValueError("this gateway does not drop input items to fit the context window: "
                         "leave it out, or give \"disabled\"")
    return value


def _no_logprobs(value: object) -> object:
    """The other includables name output of OpenAI-hosted tools and reasoning items,
    neither of which this gateway gives back: asking for them changes nothing."""
    if isinstance(value, list) and "message.output_text.logprobs" in value:
        raise ValueError("log probabilities are not given back by this gateway: leave "
                         "'message.output_text.logprobs' out")
    return value


def _null_is_false(value: object) -> object:
    return False if value is None else value


class ResponsesRequest(_Wire):
    """POST /v1/responses."""

    model: Annotated[str, Field(min_length=1)]
    input: Annotated[list[Item], BeforeValidator(_as_items), Field(min_length=1)]
    instructions: str | None = None
    tools: list[Annotated[FunctionTool, BeforeValidator(_function_tool)]] | None = None
    # The function first: a dict's error is then its own ("tool_choice.name: missing").
    tool_choice: Annotated[ToolChoiceFunction | Literal["auto", "none", "required"] | None,
                           BeforeValidator(_function_choice)] = None
    parallel_tool_calls: StrictBool | None = None
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    user: str | None = None
    reasoning: Reasoning | None = None
    metadata: dict[str, str] | None = None
    stream: Annotated[StrictBool, BeforeValidator(_null_is_false)] = False
    stream_options: dict[str, Any] | None = None
    store: StrictBool | None = None  # None is OpenAI's default: kept
    include: Annotated[list[str] | None, BeforeValidator(_no_logprobs)] = None
    service_tier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None
    truncation: Annotated[Literal["disabled"] | None, BeforeValidator(_no_auto_truncation)] = None
    background: Annotated[StrictBool | None, BeforeValidator(_no_background)] = None
    previous_response_id: Annotated[str, Field(min_length=1)] | None = None
    conversation: Annotated[Annotated[str, Field(min_length=1)] | None,
                            BeforeValidator(_conversation_id)] = None


def parse(body: bytes) -> ResponsesRequest:
    """Validate a body; any problem is a ``BadRequest`` naming the parameter, worded as
    OpenAI words chat's (``Missing required parameter: 'input'.``)."""
    try:
        request = ResponsesRequest.model_validate_json(body)
    except ValidationError as exc:
        raise bad_request_from(exc) from exc
    if request.conversation is not None and request.previous_response_id is not None:
        raise BadRequest("Mutually exclusive parameters: Ensure you are only providing one "
                         "of: 'previous_response_id' or 'conversation'.", param="conversation")
    # A number too large for a float (1e999) parses as infinity, which no JSON encoder
    # will send upstream.
    if not finite(request.model_dump(include={"tools", "text"})):
        raise BadRequest("Invalid value for 'tools': numbers must be finite.", param="tools")
    return request


def bad_request_from(exc: ValidationError) -> BadRequest:
    """The 400 of a body's first validation error, naming its parameter."""
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return BadRequest(f"We could not parse the JSON body of your request: {first['msg']}")
    if first["type"] == "model_type" and not first["loc"]:
        return BadRequest("The request body must be a JSON object.")
    param = field_path(first["loc"])
    if first["type"] == "missing":
        return BadRequest(f"Missing required parameter: '{param}'.", param=param)
    if first["type"] == "extra_forbidden":
        return BadRequest(f"Unknown parameter: '{param}'; this gateway does not pass it on.",
                          param=param)
    reason = first["msg"].removeprefix("Value error, ")  # aigw's own words, from a validator
    return BadRequest(f"Invalid value for '{param}': {reason}.", param=param)


def field_path(loc: tuple[int | str, ...]) -> str:
    """A dotted path to the parameter, without the union tags pydantic adds.

    >>> field_path(("input", 0, "message", "content", 1, "input_image", "file_id"))
    'input.0.content.1.file_id'
    """
    kept: list[str] = []
    for position, part in enumerate(loc):
        before = loc[position - 1] if position else None
        at_union = isinstance(before, int) or before in ("format", "tool_choice", "output")
        if (at_union and part in _TAGS) or (isinstance(part, str) and "[" in part):
            continue  # a tag, or a union member's name such as "list[...]"
        kept.append(str(part))
    return ".".join(kept)


def to_chat_request(request: ResponsesRequest) -> ChatRequest:
    """Lower a Responses request into the OpenAI chat request the serving core takes."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": chat_messages(request),
        "stream": request.stream,
    }
    if request.max_output_tokens is not None:
        body["max_completion_tokens"] = request.max_output_tokens
    for name in ("temperature", "top_p", "user", "prompt_cache_key", "safety_identifier"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.reasoning is not None and request.reasoning.effort is not None:
        body["reasoning_effort"] = request.reasoning.effort
    if request.text is not None and request.text.verbosity is not None:
        body["verbosity"] = request.text.verbosity
    text_format = request.text.format if request.text is not None else None
    if isinstance(text_format, TextFormatJsonObject):
        body["response_format"] = {"type": "json_object"}
    elif isinstance(text_format, TextFormatJsonSchema):
        spec: dict[str, Any] = {"name": text_format.name, "schema": text_format.json_schema}
        if text_format.description is not None:
            spec["description"] = text_format.description
        if text_format.strict is not None:
            spec["strict"] = text_format.strict
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    body.update(_tools(request))
    return chat_request_from(body)


def chat_messages(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The conversation as OpenAI chat messages, the instructions first."""
    lowered: list[dict[str, Any]] = []
    if request.instructions:
        lowered.append({"role": "system", "content": request.instructions})
    for number, item in enumerate(request.input):
        if isinstance(item, ReasoningItem):
            continue  # no chat message holds it; the Anthropic adapter drops thinking too
        if isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}
            last = lowered[-1] if lowered else None
            # Parallel calls, and the text said before them, are one assistant turn.
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                last["content"] = last["content"] or None
            else:
                lowered.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            lowered.append({"role": "tool", "tool_call_id": item.call_id,
                            "content": _tool_output(item, number)})
        elif item.role == "assistant":
            text = _assistant_text(item, number)
            last = lowered[-1] if lowered else None
            if last is not None and last["role"] == "assistant" and last.get("tool_calls"):
                # Text said after its calls (a stream of this gateway's gives it an item
                # of its own) stays in their turn: the tool messages must follow the calls.
                last["content"] = (last["content"] or "") + text or None
            else:
                lowered.append({"role": "assistant", "content": text})
        else:
            lowered.append({"role": item.role, "content": _content(item, number)})
    return lowered


def _content(item: MessageItem, number: int) -> str | list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for position, part in enumerate(item.content):
        param = f"input.{number}.content.{position}"
        if isinstance(part, InputText):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, InputImage):
            parts.append(_image_part(part, param))
        else:
            raise BadRequest(f"Invalid value for '{param}': a {item.role} message cannot hold "
                             f"an '{part.type}' part.", param=param)
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


def _image_part(part: InputImage, param: str) -> dict[str, Any]:
    if part.file_id is not None:
        raise BadRequest(
            f"Invalid value for '{param}.file_id': files stored at OpenAI cannot be passed "
            "on by this gateway; give the image as image_url (a URL or a data: URL).",
            param=f"{param}.file_id")
    if not part.image_url:
        raise BadRequest(f"Missing required parameter: '{param}.image_url'.",
                         param=f"{param}.image_url")
    image: dict[str, Any] = {"url": part.image_url}
    if part.detail in ("low", "high", "auto"):
        image["detail"] = part.detail
    return {"type": "image_url", "image_url": image}


def _assistant_text(item: MessageItem, number: int) -> str:
    texts: list[str] = []
    for position, part in enumerate(item.content):
        if isinstance(part, OutputText | InputText):
            texts.append(part.text)
        elif isinstance(part, RefusalPart):
            texts.append(part.refusal)
        else:
            param = f"input.{number}.content.{position}"
            raise BadRequest(f"Invalid value for '{param}': an assistant message cannot hold "
                             f"an '{part.type}' part.", param=param)
    return "".join(texts)


def _tool_output(item: FunctionCallOutputItem, number: int) -> str:
    if isinstance(item.output, str):
        return item.output
    texts: list[str] = []
    for position, part in enumerate(item.output):
        if not isinstance(part, InputText | OutputText):
            param = f"input.{number}.output.{position}"
            raise BadRequest(
                f"Invalid value for '{param}': only text can be passed on in a "
                "function_call_output (OpenAI-format tool messages hold only text); send "
                "an image in a user message instead.", param=param)
        texts.append(part.text)
    return "\n".join(texts)


def _tools(request: ResponsesRequest) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls``, or nothing when no tools."""
    names = {tool.name for tool in request.tools or ()}
    choice = request.tool_choice
    if isinstance(choice, ToolChoiceFunction) and choice.name not in names:
        raise BadRequest(f"Invalid value for 'tool_choice.name': no function named "
                         f"'{choice.name}' is in 'tools'.", param="tool_choice.name")
    if not request.tools:
        if choice == "required":  # dropped with no tools, the answer was text, never a call
            raise BadRequest("Invalid value for 'tool_choice': 'required' asks for a call to "
                             "one of 'tools', and none were given.", param="tool_choice")
        return {}
    lowered: dict[str, Any] = {"tools": [_tool(tool) for tool in request.tools]}
    if isinstance(choice, ToolChoiceFunction):
        lowered["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None:
        lowered["tool_choice"] = choice
    if request.parallel_tool_calls is not None:
        lowered["parallel_tool_calls"] = request.parallel_tool_calls
    return lowered


def _tool(tool: FunctionTool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    if tool.parameters is not None:
        function["parameters"] = tool.parameters
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}
