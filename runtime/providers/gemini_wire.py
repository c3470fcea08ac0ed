"""An OpenAI chat request in Gemini's ``GenerateContentRequest`` shape (generativelanguage v1beta).

``build_request`` is three named steps: ``check_parameters`` (what Gemini cannot
honour is a ``BadRequest`` naming it), ``contents`` (messages into turns) and
``generation_config``, plus the tools. ``gemini_schema`` lowers a JSON Schema into
the OpenAPI subset that ``FunctionDeclaration.parameters`` accepts. The module
docstring of ``gemini`` lists every mapping decision.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from ..chat_request import ChatRequest, ContentPart, Message
from ..errors import BadRequest
from .base import ChatCall
from .turns import LEADING_USER_TEXT

# Extras a client may send that change nothing Gemini would do differently.
IGNORED_PARAMETERS = frozenset(
    {"metadata", "store", "service_tier", "prompt_cache_key", "safety_identifier"}
)
# Extras mapped below; any other extra is refused.
MAPPED_PARAMETERS = frozenset(
    {"response_format", "presence_penalty", "frequency_penalty", "top_k", "reasoning_effort",
     "parallel_tool_calls", "logprobs", "top_logprobs", "modalities", "logit_bias"}
)
# Google's OpenAI compatibility layer maps reasoning efforts to these thinking budgets.
THINKING_BUDGETS = MappingProxyType(
    {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}
)
SCHEMA_FIELDS = frozenset(
    {"type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
     "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
     "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
     "maximum"}
)
SCHEMA_FORMATS = frozenset({"enum", "date-time", "float", "double", "int32", "int64"})
AUDIO_TYPES = MappingProxyType({"wav": "audio/wav", "mp3": "audio/mp3"})
SIGNATURE_MARK = "."  # call_<n>.<thoughtSignature>: "." is not in base64's alphabet
# Gemini 3 refuses (400) a functionCall part without the thoughtSignature it came with,
# and a call another provider made (a fallback in the middle of a tool loop, a history
# from another model) has none: Google's placeholder for such calls skips the check.
UNSIGNED_CALL = "skip_thought_signature_validator"
_MODEL_GENERATION = re.compile(r"gemini-(\d+)")
# OpenAI's tool_choice strings and Gemini's functionCallingConfig modes (the Gemini
# ingress reads it the other way).
CALLING_MODES = MappingProxyType({"auto": "AUTO", "required": "ANY", "none": "NONE"})


def build_request(call: ChatCall) -> dict[str, Any]:
    """The ``generateContent`` body for one call."""
    request = call.request
    check_parameters(request)
    system, turns = contents(request.messages)
    generation = _MODEL_GENERATION.search(call.deployment.model)
    if generation is not None and int(generation.group(1)) >= 3:
        for turn in turns:
            for part in turn["parts"]:
                if "functionCall" in part:
                    part.setdefault("thoughtSignature", UNSIGNED_CALL)
    body: dict[str, Any] = {"contents": turns}
    if system:
        body["systemInstruction"] = {"parts": system}
    if request.tools:
        body["tools"] = [{"functionDeclarations": function_declarations(request.tools)}]
        config = function_calling_config(request.tool_choice)
        if request.validated_calls and config.get("mode", "AUTO") == "AUTO":
            # Gemini's own mode, as its ingress was asked: calls held to every schema,
            # not only to those OpenAI's strict could take.
            config = {"mode": "VALIDATED"}
        if config:
            body["toolConfig"] = {"functionCallingConfig": config}
    elif request.tool_choice not in (None, "none", "auto"):
        raise BadRequest("'tool_choice' needs 'tools'.", param="tool_choice")
    config = generation_config(call)
    if config:
        body["generationConfig"] = config
    return body


def check_parameters(request: ChatRequest) -> None:
    """Refuse, by name, every parameter a Gemini deployment would silently drop."""
    extras = {k: v for k, v in (request.model_extra or {}).items() if v is not None}
    for name in sorted(extras.keys() - IGNORED_PARAMETERS - MAPPED_PARAMETERS):
        raise BadRequest(f"Gemini deployments do not support '{name}'.", param=name)
    refusals = {
        "logit_bias": bool(extras.get("logit_bias")),
        "logprobs": bool(extras.get("logprobs")),
        "top_logprobs": bool(extras.get("top_logprobs")),
        "parallel_tool_calls": extras.get("parallel_tool_calls") is False,
        "modalities": extras.get("modalities") not in (None, ["text"]),
    }
    for name, refused in refusals.items():
        if refused:
            raise BadRequest(
                f"Gemini deployments cannot honour '{name}' = {json.dumps(extras[name])}.",
                param=name,
            )


def contents(messages: Sequence[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """System parts, and turns with roles ``user``/``model``, consecutive same roles merged."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, latest call wins
    for i, message in enumerate(messages):
        if message.role in ("system", "developer"):
            system.extend(_system_parts(message, i))
            continue
        if message.role == "user":
            role, parts = "user", _user_parts(message, i)
        elif message.role == "assistant":
            role, parts = "model", _model_parts(message, i, names)
        else:  # tool, or the deprecated function role
            role, parts = "user", [_function_response(message, i, names)]
        if not parts:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["parts"].extend(parts)
        else:
            turns.append({"role": role, "parts": parts})
    if not turns or (len(turns) == 1 and turns[0]["role"] == "model"):
        # System messages alone (Gemini needs a turn), or the model's greeting alone
        # (Gemini refuses a single turn that is the model's): the minimal user turns that
        # ``turns.split_turns`` puts there for Anthropic and Bedrock too.
        turns = [_placeholder(), *turns, *([_placeholder()] if turns else [])]
    return system, turns


def _placeholder() -> dict[str, Any]:
    return {"role": "user", "parts": [{"text": LEADING_USER_TEXT}]}


def _system_parts(message: Message, i: int) -> list[dict[str, Any]]:
    """Text only: ``systemInstruction`` takes no images. Each text part is a part of its
    own: joined, blocks an app kept apart (Anthropic's system blocks, each with its
    cache mark) ran into one another mid-sentence."""
    if not isinstance(message.content, list):
        return [{"text": message.content}] if message.content else []
    for j, part in enumerate(message.content):
        if part.type != "text":
            raise BadRequest(f"Gemini system instructions take text parts only, not "
                             f"'{part.type}'.", param=f"messages[{i}].content[{j}].type")
    return [{"text": part.text} for part in message.content if part.text]


def _user_parts(message: Message, i: int) -> list[dict[str, Any]]:
    if isinstance(message.content, str) or message.content is None:
        return [{"text": message.content}] if message.content else []
    return [p for j, part in enumerate(message.content)
            if (p := _content_part(part, f"messages[{i}].content[{j}]"))]


def _content_part(part: ContentPart, where: str) -> dict[str, Any] | None:
    extra = part.model_extra or {}
    if part.type == "text":
        return {"text": part.text} if part.text else None
    if part.type == "image_url":
        image = extra.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        return {"inlineData": _data_url(str(url or ""), f"{where}.image_url.url")}
    if part.type == "input_audio":
        audio = extra.get("input_audio") or {}
        mime = AUDIO_TYPES.get(str(audio.get("format")))
        if mime is None or not audio.get("data"):
            raise BadRequest(f"'{where}.input_audio' needs base64 data and a format of "
                             f"{' or '.join(AUDIO_TYPES)}.", param=f"{where}.input_audio")
        return {"inlineData": {"mimeType": mime, "data": audio["data"]}}
    if part.type == "file":
        data = (extra.get("file") or {}).get("file_data")
        return {"inlineData": _data_url(str(data or ""), f"{where}.file.file_data")}
    raise BadRequest(f"Gemini deployments do not take '{part.type}' content parts.",
                     param=f"{where}.type")


def _data_url(url: str, where: str) -> dict[str, str]:
    """``data:<mime>;base64,<data>`` as an ``inlineData`` blob; other URLs are refused."""
    head, _, data = url.partition(",")
    if not head.startswith("data:") or not head.endswith(";base64") or not data:
        raise BadRequest(
            f"'{where}' must be a base64 data: URL (data:image/png;base64,...); Gemini "
            "deployments do not fetch http(s) URLs.", param=where)
    return {"mimeType": head[5:-7] or "application/octet-stream", "data": data}


def _model_parts(message: Message, i: int, names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    text = message.text() or str((message.model_extra or {}).get("refusal") or "")
    if text:
        parts.append({"text": text})
    calls = list(message.tool_calls or [])
    legacy = (message.model_extra or {}).get("function_call")
    if isinstance(legacy, dict):
        calls.append({"id": legacy.get("name"), "function": legacy})
    for j, tool_call in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        function = tool_call.get("function") or {}
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"'{where}.function.name' is missing.", param=f"{where}.function")
        call_id = str(tool_call.get("id") or "")
        names[call_id] = name
        part: dict[str, Any] = {
            "functionCall": {"name": name, "args": _arguments(function.get("arguments"), where)}
        }
        _, mark, signature = call_id.partition(SIGNATURE_MARK)
        if mark and signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _arguments(arguments: Any, where: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except ValueError as exc:
        raise BadRequest(f"'{where}.function.arguments' is not JSON: {exc}.",
                         param=f"{where}.function.arguments") from exc
    if not isinstance(value, dict):
        raise BadRequest(f"'{where}.function.arguments' must be a JSON object for Gemini.",
                         param=f"{where}.function.arguments")
    return value


def _function_response(message: Message, i: int, names: Mapping[str, str]) -> dict[str, Any]:
    if message.role == "function":
        name = message.name or ""
    else:
        name = names.get(message.tool_call_id or "", "")
    if not name:
        raise BadRequest(
            f"'messages[{i}].tool_call_id' ({message.tool_call_id!r}) answers no earlier "
            "assistant tool call.", param=f"messages[{i}].tool_call_id")
    text = message.text()
    try:
        result: Any = json.loads(text)
    except ValueError:
        result = text
    response = result if isinstance(result, dict) else {"result": result}
    return {"functionResponse": {"name": name, "response": response}}


def function_declarations(tools: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    declarations = []
    for i, tool in enumerate(tools):
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict) \
                or not function.get("name"):
            raise BadRequest(f"Gemini deployments take only function tools with a name; "
                             f"'tools[{i}]' is not one.", param=f"tools[{i}]")
        declaration: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            declaration["description"] = function["description"]
        parameters = function.get("parameters")
        if isinstance(parameters, dict):
            schema = gemini_schema(parameters, parameters, (), f"tools[{i}].function.parameters")
            if schema.get("properties"):
                declaration["parameters"] = schema
        declarations.append(declaration)
    return declarations


def gemini_schema(
    schema: Mapping[str, Any], root: Mapping[str, Any], refs: tuple[str, ...], where: str
) -> dict[str, Any]:
    """A JSON Schema as Gemini's ``Schema``: local ``$ref`` inlined, the rest of it kept
    only where Gemini has the field (see ``SCHEMA_FIELDS``; ``gemini`` lists what is lost).

    >>> gemini_schema({"type": ["string", "null"], "format": "email"}, {}, (), "p")
    {'nullable': True, 'type': 'string'}
    """
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if ref in refs:
            raise BadRequest(f"'{where}' is recursive ({ref}); Gemini schemas cannot be.",
                             param=where)
        return gemini_schema(_resolve(ref, root, where), root, (*refs, ref), where)
    out: dict[str, Any] = {}
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        kind = kinds[0] if len(kinds) == 1 else None
        if len(kinds) < len(schema["type"]):
            out["nullable"] = True
    if isinstance(kind, str):
        out["type"] = kind
    for key, value in schema.items():
        if key == "properties" and isinstance(value, dict) and value:
            out[key] = {name: gemini_schema(sub, root, refs, f"{where}.{name}")
                        for name, sub in value.items() if isinstance(sub, dict)}
        elif key == "items" and isinstance(value, dict):
            out[key] = gemini_schema(value, root, refs, f"{where}.items")
        elif key in ("anyOf", "oneOf") and isinstance(value, list):
            _merge_any_of(out, [gemini_schema(v, root, refs, where) for v in value
                                if isinstance(v, dict)])
        elif key == "const" and isinstance(value, str):
            out["enum"] = [value]
        elif key == "enum" and isinstance(value, list):
            if all(isinstance(v, str) for v in value):
                out[key] = value
        elif key == "format":
            if value in SCHEMA_FORMATS:
                out[key] = value
        elif key == "required" and isinstance(value, list):
            out[key] = [n for n in value if n in (schema.get("properties") or {})]
        elif key in SCHEMA_FIELDS and key not in ("type", "properties", "items", "anyOf"):
            out[key] = value
    return out


def _resolve(ref: str, root: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix):
            target = (root.get(prefix[2:-1]) or {}).get(ref[len(prefix):])
            if isinstance(target, dict):
                return target
    raise BadRequest(f"'{where}' refers to {ref}, which is not a local definition.",
                     param=where)


def _merge_any_of(out: dict[str, Any], options: list[dict[str, Any]]) -> None:
    """``anyOf`` with a ``null`` branch (how pydantic writes Optional) becomes ``nullable``."""
    real = [o for o in options if o.get("type") != "null"]
    if len(real) < len(options):
        out["nullable"] = True
    if len(real) == 1:
        out.update({k: v for k, v in real[0].items() if k not in out})
    elif real:
        out["anyOf"] = real


def function_calling_config(tool_choice: str | dict[str, Any] | None) -> dict[str, Any]:
    if tool_choice is None:
        return {}
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
        if tool_choice.get("type") != "function" or not isinstance(name, str):
            raise BadRequest("'tool_choice' must name a function.", param="tool_choice")
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    if tool_choice not in CALLING_MODES:
        raise BadRequest(f"'tool_choice' must be one of {', '.join(CALLING_MODES)} or a "
                         "function.", param="tool_choice")
    return {"mode": CALLING_MODES[tool_choice]}


# generationConfig.candidateCount takes 1 to 8; a larger n would be Gemini's 400, which
# the router cannot tell from any other bad request, where it is a request another
# member may serve.
MAX_CANDIDATES = 8


def generation_config(call: ChatCall) -> dict[str, Any]:
    request = call.request
    extras = request.model_extra or {}
    config: dict[str, Any] = {}
    pairs = (
        ("temperature", request.temperature), ("topP", request.top_p),
        ("topK", extras.get("top_k")), ("seed", request.seed),
        ("presencePenalty", extras.get("presence_penalty")),
        ("frequencyPenalty", extras.get("frequency_penalty")),
    )
    config.update({name: value for name, value in pairs if value is not None})
    deployment = call.deployment
    if request.output_limit is not None or deployment.max_output_tokens < deployment.context_window:
        # The request was held (budgets, tpm) at this cap: the upstream is held to it too.
        config["maxOutputTokens"] = call.max_output_tokens
    if request.stop:
        config["stopSequences"] = [request.stop] if isinstance(request.stop, str) \
            else list(request.stop)
    if request.n != 1:
        if request.n > MAX_CANDIDATES:
            raise BadRequest(f"This model answers at most {MAX_CANDIDATES} choices (n).",
                             param="n")
        config["candidateCount"] = request.n
    config.update(_response_format(extras.get("response_format")))
    effort = extras.get("reasoning_effort")
    if effort is not None:
        if effort not in THINKING_BUDGETS:
            raise BadRequest(f"'reasoning_effort' must be one of {', '.join(THINKING_BUDGETS)}.",
                             param="reasoning_effort")
        config["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS[effort]}
    return config


def _response_format(response_format: Any) -> dict[str, Any]:
    if response_format is None:
        return {}
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise BadRequest("'response_format.json_schema.schema' must be a JSON Schema object.",
                             param="response_format.json_schema.schema")
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    raise BadRequest("'response_format.type' must be text, json_object or json_schema.",
                     param="response_format.type")
