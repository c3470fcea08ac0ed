"""Gemini's ``GenerateContentRequest``, validated at the door and lowered into a ``ChatRequest``.

    GenerateContentRequest (what google-genai sent) -> to_chat_request -> ChatRequest

Field names are read as Gemini's JSON writes them (camelCase) or as their proto names
(snake_case), as Google's API reads both. Unknown fields are refused with a 400 naming
the field, as Google's API refuses an unknown name: ``safetySettings``,
``cachedContent``, ``thinkingConfig``, Google's own tools (search, code execution)
and the like have no meaning for the upstreams behind a route, and silently dropping
them would change what the app gets without telling it. The lowering reads the
outbound adapter's tables (``providers.gemini_wire``) the other way:

- ``systemInstruction`` text parts -> one system message (a part each when several).
- ``contents``: role ``user`` -> user messages (text; ``inlineData`` images as
  ``image_url`` data URLs, wav/mp3 as ``input_audio``; other types refused), its
  ``functionResponse`` parts -> ``tool`` messages placed first (the response object
  JSON-encoded); role ``model`` -> assistant messages, ``functionCall`` parts as
  ``tool_calls`` (``args`` JSON-encoded), ``thought`` parts skipped.
- Call ids: a ``functionCall``'s ``id`` when it has one, else ``call_<turn>_<part>``;
  a ``functionResponse`` answers the call with its ``id``, else the earliest call of
  its name not yet answered.
- ``generationConfig``: temperature, topP, topK (sent where the upstream takes it),
  maxOutputTokens, stopSequences, seed, presence/frequency penalties; candidateCount
  only 1; ``responseMimeType`` application/json -> json_object, with
  ``responseJsonSchema`` or ``responseSchema`` (Gemini's Schema, made JSON Schema)
  -> json_schema "output".
- ``tools[].functionDeclarations`` -> function tools (``parametersJsonSchema`` as is,
  ``parameters`` made JSON Schema); ``toolConfig.functionCallingConfig`` mode
  AUTO/ANY/NONE -> auto/required/none, ANY with one ``allowedFunctionNames`` -> that
  function, with several -> only those tools, required. VALIDATED (text or a call, the
  call held to its schema) -> auto, with only the ``allowedFunctionNames`` tools if
  given, each ``strict`` where its schema can be (every object's properties required,
  none other allowed: ``strict_schema``); a Gemini-family deployment is sent VALIDATED
  itself (``ChatRequest.validated_calls``).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from .chat_request import ChatRequest, chat_request_from, finite
from .errors import BadRequest, quoted
from .messages_wire import field_path
from .providers.gemini_wire import AUDIO_TYPES, CALLING_MODES

_AUDIO_FORMATS = {mime: name for name, mime in AUDIO_TYPES.items()}
_TOOL_CHOICES = {mode: choice for choice, mode in CALLING_MODES.items()}
# Gemini's Schema fields with no JSON Schema keyword of their own (``nullable`` is
# written into ``type``).
_SCHEMA_ONLY = frozenset({"nullable", "propertyOrdering", "example"})


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class Blob(_Wire):
    mime_type: Annotated[str, Field(min_length=1)]
    data: Annotated[str, Field(min_length=1)]


class FunctionCall(_Wire):
    name: Annotated[str, Field(min_length=1)]
    args: dict[str, Any] = {}
    id: str | None = None


class FunctionResponse(_Wire):
    name: Annotated[str, Field(min_length=1)]
    response: dict[str, Any]
    id: str | None = None


class Part(_Wire):
    text: str | None = None
    inline_data: Blob | None = None
    function_call: FunctionCall | None = None
    function_response: FunctionResponse | None = None
    thought: StrictBool | None = None
    # Gemini's own answers carry one, and an app sends its history back as it got it.
    thought_signature: str | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Part:
        given = [self.text, self.inline_data, self.function_call, self.function_response]
        if sum(value is not None for value in given) != 1:
            raise ValueError("a part holds exactly one of text, inlineData, functionCall "
                             "or functionResponse")
        return self


class Content(_Wire):
    role: Literal["user", "model"] = "user"
    parts: Annotated[list[Part], Field(min_length=1)]


class SystemInstruction(_Wire):
    """Its role, if any, is not read (Google's API ignores it; clients write "user",
    "system" or none)."""

    role: str | None = None
    parts: Annotated[list[Part], Field(min_length=1)]


class FunctionDeclaration(_Wire):
    name: Annotated[str, Field(pattern=r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,127}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    parameters_json_schema: dict[str, Any] | None = None


class Tool(_Wire):
    function_declarations: Annotated[list[FunctionDeclaration], Field(min_length=1)]


class FunctionCallingConfig(_Wire):
    mode: Literal["AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED"] = "AUTO"
    allowed_function_names: list[str] | None = None


class ToolConfig(_Wire):
    function_calling_config: FunctionCallingConfig | None = None


class GenerationConfig(_Wire):
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=1)] | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    stop_sequences: list[str] | None = None
    candidate_count: Annotated[int, Field(ge=1)] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    response_mime_type: Literal["text/plain", "application/json"] | None = None
    response_schema: dict[str, Any] | None = None
    response_json_schema: dict[str, Any] | None = None


class GenerateContentRequest(_Wire):
    """The body of ``models/{model}:generateContent`` and ``:streamGenerateContent``."""

    contents: Annotated[list[Content], Field(min_length=1)]
    system_instruction: SystemInstruction | None = None
    tools: list[Tool] | None = None
    tool_config: ToolConfig | None = None
    generation_config: GenerationConfig | None = None
    model: str | None = None  # inside a countTokens body; the URL names the route


class CountTokensRequest(_Wire):
    """The body of ``models/{model}:countTokens``: contents, or a whole request."""

    contents: list[Content] | None = None
    generate_content_request: GenerateContentRequest | None = None

    def request(self) -> GenerateContentRequest:
        if self.generate_content_request is not None:
            return self.generate_content_request
        if not self.contents:
            raise BadRequest("contents: give contents or generateContentRequest.",
                             param="contents")
        return GenerateContentRequest(contents=self.contents)


_Request = TypeVar("_Request", GenerateContentRequest, CountTokensRequest)


def parse(model: type[_Request], body: bytes) -> _Request:
    """Validate a body; any problem is a ``BadRequest`` naming the field
    (``generationConfig.temperature: Input should be less than or equal to 2``)."""
    try:
        request = model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            reason = first["msg"].removeprefix("Invalid JSON: ")
            raise BadRequest(f"The request body is not valid JSON: {reason}.") from exc
        if first["type"] == "model_type" and not first["loc"]:
            raise BadRequest("The request body must be a JSON object.") from exc
        param = field_path(first["loc"])
        if first["type"] == "extra_forbidden":
            reason = "this gateway does not take this field (its upstreams could not honour it)"
        else:
            reason = first["msg"].removeprefix("Value error, ")
        raise BadRequest(f"{param}: {reason}.", param=param) from exc
    # 1e999 parses as infinity, which no upstream reads back as JSON.
    if not finite(request.model_dump(include={"tools", "contents"})):
        raise BadRequest("tools, contents: numbers must be finite (1e999 is too large).",
                         param="contents")
    return request


def to_chat_request(route: str, request: GenerateContentRequest, stream: bool) -> ChatRequest:
    """Lower a Gemini request for ``route`` into the OpenAI-shaped request the core takes."""
    body: dict[str, Any] = {"model": route, "messages": chat_messages(request), "stream": stream}
    config = request.generation_config or GenerationConfig()
    if config.candidate_count not in (None, 1):
        raise BadRequest("generationConfig.candidateCount: this gateway answers one "
                         "candidate; leave it out or give 1.",
                         param="generationConfig.candidateCount")
    pairs = (("temperature", config.temperature), ("top_p", config.top_p),
             ("top_k", config.top_k), ("max_completion_tokens", config.max_output_tokens),
             ("seed", config.seed), ("presence_penalty", config.presence_penalty),
             ("frequency_penalty", config.frequency_penalty))
    body.update({name: value for name, value in pairs if value is not None})
    if config.stop_sequences:
        body["stop"] = list(config.stop_sequences)
    response_format = _response_format(config)
    if response_format is not None:
        body["response_format"] = response_format
    body.update(tools_of(request))
    calling = request.tool_config.function_calling_config if request.tool_config else None
    # top_k as Anthropic's ingress sends it: kept for upstreams that take it, never sent
    # to OpenAI-format ones, which refuse it.
    return chat_request_from(body, anthropic_hints=config.top_k is not None,
                             validated_calls="tools" in body and calling is not None
                             and calling.mode == "VALIDATED")


def _response_format(config: GenerationConfig) -> dict[str, Any] | None:
    schema = config.response_json_schema
    if schema is None and config.response_schema is not None:
        schema = json_schema(config.response_schema)
    if config.response_mime_type != "application/json":
        if schema is not None:
            raise BadRequest("generationConfig.responseMimeType: a response schema needs "
                             "application/json.", param="generationConfig.responseMimeType")
        return None
    if schema is None:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Gemini's Schema (an OpenAPI subset) as JSON Schema: types in lower case,
    ``nullable`` as a ``null`` type.

    >>> json_schema({"type": "OBJECT", "properties": {"a": {"type": "STRING", "nullable": True}}})
    {'type': 'object', 'properties': {'a': {'type': ['string', 'null']}}}
    """
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            kind = value.lower()
            out[key] = [kind, "null"] if schema.get("nullable") else kind
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: json_schema(sub) for name, sub in value.items()
                        if isinstance(sub, dict)}
        elif key == "items" and isinstance(value, dict):
            out[key] = json_schema(value)
        elif key == "anyOf" and isinstance(value, list):
            out[key] = [json_schema(sub) for sub in value if isinstance(sub, dict)]
        elif key not in _SCHEMA_ONLY:
            out[key] = value
    return out


def chat_messages(request: GenerateContentRequest) -> list[dict[str, Any]]:
    """The conversation as OpenAI chat messages, system instruction first."""
    lowered: list[dict[str, Any]] = []
    if request.system_instruction is not None:
        lowered.append(_system(request.system_instruction))
    pending: list[tuple[str, str]] = []  # (id, name) of calls not yet answered, in order
    for number, content in enumerate(request.contents):
        if content.role == "model":
            turn = _assistant(content, number, pending)
            if turn["content"] is not None or "tool_calls" in turn:  # not thoughts alone
                lowered.append(turn)
        else:
            lowered.extend(_user(content, number, pending))
    return lowered


def _system(content: SystemInstruction) -> dict[str, Any]:
    texts = []
    for position, part in enumerate(content.parts):
        if part.text is None:
            param = f"systemInstruction.parts.{position}"
            raise BadRequest(f"{param}: a system instruction holds text parts only.",
                             param=param)
        texts.append(part.text)
    if len(texts) == 1:
        return {"role": "system", "content": texts[0]}
    return {"role": "system", "content": [{"type": "text", "text": text} for text in texts]}


def _assistant(content: Content, number: int, pending: list[tuple[str, str]]) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for position, part in enumerate(content.parts):
        if part.text is not None:
            if not part.thought:  # the model's thinking is not a part of its answer
                texts.append(part.text)
        elif part.function_call is not None:
            call = part.function_call
            call_id = call.id or f"call_{number}_{position}"
            pending.append((call_id, call.name))
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": call.name, "arguments": json.dumps(call.args)}})
        else:
            param = f"contents.{number}.parts.{position}"
            raise BadRequest(f"{param}: a model turn holds text and functionCall parts only.",
                             param=param)
    lowered: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        lowered["tool_calls"] = calls
    return lowered


def _user(content: Content, number: int, pending: list[tuple[str, str]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for position, part in enumerate(content.parts):
        where = f"contents.{number}.parts.{position}"
        if part.function_response is not None:
            answer = part.function_response
            call_id = _answered(answer, pending, where)
            results.append({"role": "tool", "tool_call_id": call_id,
                            "content": json.dumps(answer.response)})
        elif part.inline_data is not None:
            parts.append(_blob_part(part.inline_data, f"{where}.inlineData"))
        elif part.text is not None:
            parts.append({"type": "text", "text": part.text})
        else:
            raise BadRequest(f"{where}: a user turn cannot hold a functionCall part.",
                             param=where)
    if not parts:
        return results
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*results, {"role": "user", "content": parts[0]["text"]}]
    return [*results, {"role": "user", "content": parts}]


def _answered(answer: FunctionResponse, pending: list[tuple[str, str]], where: str) -> str:
    """The id of the call ``answer`` answers, taken off ``pending``."""
    for index, (call_id, name) in enumerate(pending):
        if (call_id == answer.id) if answer.id else (name == answer.name):
            del pending[index]
            return call_id
    raise BadRequest(f"{where}.functionResponse: it answers no earlier functionCall "
                     f"named {quoted(answer.name)}.", param=f"{where}.functionResponse")


def _blob_part(blob: Blob, where: str) -> dict[str, Any]:
    if blob.mime_type.startswith("image/"):
        url = f"data:{blob.mime_type};base64,{blob.data}"
        return {"type": "image_url", "image_url": {"url": url}}
    audio = _AUDIO_FORMATS.get(blob.mime_type)
    if audio is not None:
        return {"type": "input_audio", "input_audio": {"data": blob.data, "format": audio}}
    raise BadRequest(f"{where}.mimeType: {quoted(blob.mime_type)} cannot be passed on; this "
                     "gateway takes images and wav or mp3 audio.", param=f"{where}.mimeType")


def tools_of(request: GenerateContentRequest) -> dict[str, Any]:
    """``tools`` and ``tool_choice``, or nothing when the request declares no function.

    ``allowedFunctionNames`` (modes ANY and VALIDATED, as Google documents it) holds the
    model to those functions: under ANY one is OpenAI's named choice; several are the
    only tools sent, with ``required``, which is the same promise (a call, of one of
    them). Under VALIDATED they are the only tools sent, with ``auto`` (the model may
    answer in text), each ``strict`` where its schema can be."""
    declarations = [each for tool in request.tools or () for each in tool.function_declarations]
    calling = request.tool_config.function_calling_config if request.tool_config else None
    if not declarations:
        return {}
    if calling is None or calling.mode == "MODE_UNSPECIFIED":
        return {"tools": [_tool(each) for each in declarations]}
    allowed = calling.allowed_function_names or []
    if allowed and calling.mode not in ("ANY", "VALIDATED"):
        raise BadRequest("toolConfig.functionCallingConfig.allowedFunctionNames: only "
                         "with mode ANY or VALIDATED.", param="toolConfig.functionCallingConfig")
    names = {each.name for each in declarations}
    for name in allowed:
        if name not in names:
            raise BadRequest(f"toolConfig.functionCallingConfig.allowedFunctionNames: no "
                             f"function named {quoted(name)} is declared.",
                             param="toolConfig.functionCallingConfig.allowedFunctionNames")
    kept = [each for each in declarations if not allowed or each.name in allowed]
    if calling.mode == "VALIDATED":
        return {"tools": [_tool(each, validated=True) for each in kept], "tool_choice": "auto"}
    if len(set(allowed)) == 1:
        return {"tools": [_tool(each) for each in declarations],
                "tool_choice": {"type": "function", "function": {"name": allowed[0]}}}
    return {"tools": [_tool(each) for each in kept], "tool_choice": _TOOL_CHOICES[calling.mode]}


def _tool(declaration: FunctionDeclaration, validated: bool = False) -> dict[str, Any]:
    """A function tool; ``validated`` (mode VALIDATED): strict, where its schema can be."""
    parameters = declaration.parameters_json_schema
    if parameters is None and declaration.parameters is not None:
        parameters = json_schema(declaration.parameters)
    function: dict[str, Any] = {
        "name": declaration.name,
        "parameters": parameters or {"type": "object", "properties": {}},
    }
    if declaration.description is not None:
        function["description"] = declaration.description
    strict = strict_schema(function["parameters"]) if validated else None
    if strict is not None:
        function["parameters"], function["strict"] = strict, True
    return {"type": "function", "function": function}


def strict_schema(schema: Any) -> dict[str, Any] | None:
    """``schema`` as OpenAI's strict function calling takes it, where it means the same:
    each object's properties all ``required`` and no others allowed (written
    ``additionalProperties: false``, as strict asks); None where it cannot be (an
    optional property, other properties allowed, a ``$ref``), which a strict schema
    would change.

    >>> strict_schema({"type": "object", "properties": {"q": {"type": "string"}},
    ...                "required": ["q"]})["additionalProperties"]
    False
    >>> strict_schema({"type": "object", "properties": {"q": {"type": "string"}}}) is None
    True
    """
    if not isinstance(schema, dict) or "$ref" in schema:
        return None
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict):
            properties = {name: strict_schema(sub) for name, sub in value.items()}
            if any(sub is None for sub in properties.values()):
                return None
            out[key] = properties
        elif key == "items":
            items = strict_schema(value)
            if items is None:
                return None
            out[key] = items
        elif key in ("anyOf", "oneOf") and isinstance(value, list):
            options = [strict_schema(sub) for sub in value]
            if any(sub is None for sub in options):
                return None
            out[key] = options
        else:
            out[key] = value
    kind = schema.get("type")
    if kind == "object" or (isinstance(kind, list) and "object" in kind):
        if schema.get("additionalProperties", False) is not False:
            return None
        if set(schema.get("required") or ()) != set(schema.get("properties") or {}):
            return None
        out["additionalProperties"] = False
    return out
