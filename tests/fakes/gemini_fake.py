"""A fake of Google's Gemini API (generativelanguage v1beta): generateContent, its SSE stream,
countTokens, embedContent and batchEmbedContents.

Strict as the real API is, in Google's error shape (``{"error": {"code", "message",
"status", "details"}}``): no key is 403 PERMISSION_DENIED, a wrong one 400
INVALID_ARGUMENT "API key not valid" (reason API_KEY_INVALID); an unknown field
anywhere in the body, a Schema keyword Gemini lacks (``additionalProperties``), a role
other than user/model, empty ``contents`` or ``parts``, a single turn that is the
model's, a ``functionResponse`` that answers no ``functionCall`` of the turn before,
a ``responseMimeType`` outside Google's list, a ``responseSchema`` or
``responseJsonSchema`` without a MIME type that takes it (application/json; text/x.enum
for ``responseSchema``), both schemas at once, and function declarations with JSON
output on models before Gemini 3 are 400 INVALID_ARGUMENT. Only the
camelCase field names are accepted (Google also takes snake_case). Streams are
``alt=sse`` only: ``data: {GenerateContentResponse}\\r\\n\\r\\n``, as Google sends them.

Answers come from ``brain.decide``; under ``responseMimeType`` application/json a text
answer is JSON of the schema's shape (``brain.json_answer``; ``{"answer": ...}`` without a
schema), under text/x.enum the schema's first enum value. A user text containing
``BLOCKME`` ends with finishReason SAFETY and no content; one containing ``BLOCKPROMPT``
is refused with ``promptFeedback.blockReason`` SAFETY and no candidates. Function calls
carry a ``thoughtSignature``; models named ``gemini-3*`` require it back, as Gemini 3 does.

``countTokens`` takes ``contents`` or a ``generateContentRequest`` (checked as a
request is, its ``model`` the URL's), not both, and answers ``totalTokens``: what the
request's ``usageMetadata.promptTokenCount`` would be.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .brain import Action, Reply, Script, decide, json_answer, words

STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
REQUEST_FIELDS = {"contents", "tools", "toolConfig", "safetySettings", "systemInstruction",
                  "generationConfig", "cachedContent"}
PART_FIELDS = {"text", "inlineData", "fileData", "functionCall", "functionResponse", "thought",
               "thoughtSignature"}
TOOL_FIELDS = {"functionDeclarations", "googleSearch", "codeExecution", "urlContext"}
DECLARATION_FIELDS = {"name", "description", "parameters", "parametersJsonSchema", "response"}
SCHEMA_FIELDS = {"type", "format", "title", "description", "nullable", "enum", "maxItems",
                 "minItems", "properties", "required", "minProperties", "maxProperties",
                 "minLength", "maxLength", "pattern", "example", "anyOf", "propertyOrdering",
                 "default", "items", "minimum", "maximum"}
GENERATION_FIELDS = {"stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema",
                     "responseModalities", "candidateCount", "maxOutputTokens", "temperature",
                     "topP", "topK", "seed", "presencePenalty", "frequencyPenalty",
                     "responseLogprobs", "logprobs", "thinkingConfig"}
MODES = {"AUTO", "ANY", "NONE", "VALIDATED"}
MIME_TYPES = ("text/plain", "application/json", "application/xml", "application/yaml",
              "text/x.enum")
SIGNATURE = "c2lnbmVkLWJ5LWZha2UtZ2VtaW5p"  # base64 of "signed-by-fake-gemini"
UNSIGNED = "skip_thought_signature_validator"  # Google's placeholder for a foreign call


class Invalid(Exception):
    """A request the real API would refuse with 400 INVALID_ARGUMENT."""


def google_error(status: int, message: str, details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    error: dict[str, Any] = {"code": status, "message": message,
                             "status": STATUS_NAMES.get(status, "UNKNOWN")}
    if details:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def _unknown(name: str, where: str) -> Invalid:
    at = f" at '{where}'" if where else ""
    return Invalid(f'Invalid JSON payload received. Unknown name "{name}"{at}: '
                   "Cannot find field.")


def _fields(value: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"Invalid value at '{where}': expected an object.")
    for name in value:
        if name not in allowed:
            raise _unknown(name, where)
    return value


def _schema(schema: Any, where: str) -> None:
    _fields(schema, SCHEMA_FIELDS, where)
    if schema.get("type") == "object" and "properties" in schema and not schema["properties"]:
        raise Invalid(f"{where}.properties: should be non-empty for OBJECT type")
    for name, sub in (schema.get("properties") or {}).items():
        _schema(sub, f"{where}.properties[{name}]")
    if "items" in schema:
        _schema(schema["items"], f"{where}.items")
    for i, sub in enumerate(schema.get("anyOf") or []):
        _schema(sub, f"{where}.any_of[{i}]")


def validate(body: Any, model: str) -> None:
    """Raise ``Invalid`` where Gemini would answer 400 INVALID_ARGUMENT."""
    _fields(body, REQUEST_FIELDS, "")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise Invalid("* GenerateContentRequest.contents: contents is not specified")
    if len(contents) == 1 and isinstance(contents[0], dict) and contents[0].get("role") == "model":
        raise Invalid("Please ensure that single turn requests end with a user role or the role "
                      "field is empty.")
    previous: dict[str, Any] | None = None
    for i, turn in enumerate(contents):
        _fields(turn, {"role", "parts"}, f"contents[{i}]")
        if turn.get("role") not in ("user", "model"):
            raise Invalid(f"Please use a valid role: user, model. (contents[{i}])")
        parts = turn.get("parts")
        if not isinstance(parts, list) or not parts:
            raise Invalid(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must "
                          "not be empty.")
        for j, part in enumerate(parts):
            _part(_fields(part, PART_FIELDS, f"contents[{i}].parts[{j}]"), turn, previous,
                  f"contents[{i}].parts[{j}]", model)
        previous = turn
    if "systemInstruction" in body:
        system = _fields(body["systemInstruction"], {"role", "parts"}, "system_instruction")
        for j, part in enumerate(system.get("parts") or []):
            _fields(part, {"text"}, f"system_instruction.parts[{j}]")
    declared: set[str] = set()
    for i, tool in enumerate(body.get("tools") or []):
        for j, declaration in enumerate(_fields(tool, TOOL_FIELDS, f"tools[{i}]")
                                        .get("functionDeclarations") or []):
            where = f"tools[{i}].function_declarations[{j}]"
            _fields(declaration, DECLARATION_FIELDS, where)
            declared.add(str(declaration.get("name")))
            if "parameters" in declaration:
                _schema(declaration["parameters"], f"{where}.parameters")
    _tool_config(body.get("toolConfig"), declared)
    _generation_config(body.get("generationConfig"), bool(declared), model)


def _part(part: dict[str, Any], turn: dict[str, Any], previous: dict[str, Any] | None,
          where: str, model: str) -> None:
    if len(set(part) - {"thought", "thoughtSignature"}) != 1:
        raise Invalid(f"{where}: a part must hold exactly one kind of data")
    if "inlineData" in part:
        _fields(part["inlineData"], {"mimeType", "data"}, f"{where}.inline_data")
    if "functionCall" in part:
        call = _fields(part["functionCall"], {"id", "name", "args"}, f"{where}.function_call")
        if turn["role"] != "model" or not isinstance(call.get("args", {}), dict):
            raise Invalid(f"{where}.function_call: only model turns call functions, with "
                          "object args")
        if model.startswith("gemini-3") and part.get("thoughtSignature") not in (
                SIGNATURE, UNSIGNED):
            raise Invalid(f"Function call is missing a thought_signature in functionCall "
                          f"parts. ({where})")
    if "functionResponse" in part:
        response = _fields(part["functionResponse"], {"id", "name", "response"},
                           f"{where}.function_response")
        asked = {p["functionCall"]["name"] for p in (previous or {}).get("parts", [])
                 if "functionCall" in p} if (previous or {}).get("role") == "model" else set()
        if turn["role"] != "user" or response.get("name") not in asked:
            raise Invalid("Please ensure that function response turn comes immediately after "
                          f"a function call turn. ({where})")
        if not isinstance(response.get("response"), dict):
            raise Invalid(f"{where}.function_response.response: expected an object")


def _tool_config(config: Any, declared: set[str]) -> None:
    if config is None:
        return
    calling = _fields(_fields(config, {"functionCallingConfig"}, "tool_config")
                      .get("functionCallingConfig", {}), {"mode", "allowedFunctionNames"},
                      "tool_config.function_calling_config")
    if calling.get("mode", "AUTO") not in MODES:
        raise Invalid(f"Invalid value at 'tool_config.function_calling_config.mode': "
                      f"{calling.get('mode')!r}")
    names = calling.get("allowedFunctionNames")
    if names is not None and (calling.get("mode") not in ("ANY", "VALIDATED")
                              or not set(names) <= declared):
        raise Invalid("allowed_function_names should only be set when the mode is ANY or "
                      "VALIDATED, and name declared functions")


def _generation_config(config: Any, tools: bool, model: str) -> None:
    if config is None:
        return
    _fields(config, GENERATION_FIELDS, "generation_config")
    mime = config.get("responseMimeType", "text/plain")
    if mime not in MIME_TYPES:
        raise Invalid("* GenerateContentRequest.generation_config.response_mime_type: allowed "
                      "mimetypes are text/plain, application/json, application/xml, "
                      "application/yaml and text/x.enum")
    if "responseSchema" in config and "responseJsonSchema" in config:
        raise Invalid("responseSchema and responseJsonSchema cannot both be set")
    if "responseSchema" in config:  # Google's Schema, checked as tool parameters are
        _schema(config["responseSchema"], "generation_config.response_schema")
        if mime not in ("application/json", "text/x.enum"):
            raise Invalid("response_mime_type must be application/json or text/x.enum with a "
                          "response_schema")
    if "responseJsonSchema" in config:
        if not isinstance(config["responseJsonSchema"], (dict, bool)):
            raise Invalid("Invalid value at 'generation_config.response_json_schema'")
        if mime != "application/json":
            raise Invalid("response_mime_type must be application/json with a "
                          "response_json_schema")
    # Gemini 2.5 answers either with calls or with JSON; Gemini 3 takes both at once.
    if tools and mime == "application/json" and not model.startswith("gemini-3"):
        raise Invalid("Tool use with a response mime type: 'application/json' is unsupported")
    if len(config.get("stopSequences") or []) > 5:
        raise Invalid("generation_config.stop_sequences: at most 5 stop sequences")
    if not 1 <= int(config.get("candidateCount", 1)) <= 8:
        raise Invalid("generation_config.candidate_count must be between 1 and 8")


def structured(config: dict[str, Any], text: str) -> str:
    """The answer in the form ``generationConfig`` asks: JSON of the schema's shape
    (``{"answer": text}`` without one), or the schema's first enum value as text/x.enum."""
    schema = config.get("responseJsonSchema", config.get("responseSchema"))
    mime = config.get("responseMimeType")
    if mime == "text/x.enum" and schema is not None:
        return str(json_answer(schema, text))
    if mime != "application/json":
        return text
    return json.dumps({"answer": text} if schema is None else json_answer(schema, text))


def _audio_tokens(contents: list[dict[str, Any]]) -> int:
    """The audio of ``inlineData`` parts of an audio type, at Gemini's 32 tokens a
    second, its seconds at 16,000 bytes a second (the fake reads no header)."""
    size = sum(len(base64.b64decode(part["inlineData"]["data"]))
               for turn in contents for part in turn.get("parts", [])
               if str((part.get("inlineData") or {}).get("mimeType", "")).startswith("audio/"))
    return math.ceil(size / 16_000 * 32)


def _prompt_tokens(body: dict[str, Any]) -> int:
    """The fake's count of a request's prompt: each turn's words and 3, the system
    instruction's words, and the audio."""
    prompt = sum(len(_texts(t).split()) + 3 for t in body["contents"])
    prompt += len(_texts(body.get("systemInstruction") or {}).split())
    return prompt + _audio_tokens(body["contents"])


def _texts(turn: dict[str, Any]) -> str:
    return "".join(str(part.get("text", "")) for part in turn.get("parts", []))


def reply_for(body: dict[str, Any], fake: str = "fake-gemini") -> Reply:
    contents = body["contents"]
    users = [turn for turn in contents if turn["role"] == "user" and _texts(turn)]
    last = contents[-1]["parts"][-1]  # the last message was a tool result
    result = None
    if "functionResponse" in last:
        answer = last["functionResponse"]["response"]
        result = str(answer["result"]) if set(answer) == {"result"} else json.dumps(answer)
    calling = (body.get("toolConfig") or {}).get("functionCallingConfig") or {}
    names = list(calling.get("allowedFunctionNames") or []) or [
        str(d["name"]) for tool in body.get("tools") or []
        for d in tool.get("functionDeclarations") or []]
    return decide(fake, _texts(users[-1]) if users else "", names, result,
                  calling.get("mode") != "NONE")


class GeminiFake:
    """The fake's state: its key, its script, what it has seen, and what to report cached."""

    def __init__(self, api_key: str = "AIzaFakeGeminiKey0123456789abcdef") -> None:
        self.api_key = api_key
        self.script = Script()
        self.paths: list[str] = []
        self.cached_tokens = 0
        self.base_url = ""
        self.app = Starlette(routes=[
            Route("/__ready", self._ready),
            Route("/v1beta/{target:path}", self._dispatch, methods=["POST"]),
        ])

    async def _ready(self, request: Request) -> Response:
        return Response("ok")

    async def _dispatch(self, request: Request) -> Response:
        target = request.path_params["target"]
        resource, _, method = target.rpartition(":")
        if not resource.startswith("models/"):
            return google_error(404, f"Requested entity was not found: {target}")
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        if not key:
            return google_error(403, "Method doesn't allow unregistered callers (callers "
                                "without established identity). Please use API Key or other "
                                "form of API consumer identity to call this API.")
        if key != self.api_key:
            return google_error(400, "API key not valid. Please pass a valid API key.", [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"}}])
        try:
            body = json.loads(await request.body())
        except ValueError:
            return google_error(400, "Invalid JSON payload received.")
        self.paths.append(request.url.path + (f"?{request.url.query}" if request.url.query
                                              else ""))
        self.script.requests.append(body if isinstance(body, dict) else {"_": body})
        self.script.headers.append(dict(request.headers))
        action = self.script.next()
        if action.delay_s:
            await asyncio.sleep(action.delay_s)
        if action.status != 200:
            if action.body is not None:
                return JSONResponse(action.body, status_code=action.status,
                                    headers=action.headers)
            return google_error(action.status, f"scripted failure {action.status}",
                                headers=action.headers)
        model = resource.removeprefix("models/")
        try:
            if method == "generateContent":
                return self._generate(body, model)
            if method == "streamGenerateContent":
                if request.query_params.get("alt") != "sse":
                    raise Invalid("this fake streams only with alt=sse")
                candidates, usage = self._answer(body, model)  # before the status line
                return StreamingResponse(self._stream(candidates, usage, model, action),
                                         media_type="text/event-stream")
            if method == "countTokens":
                return self._count(body, model)
            if method == "batchEmbedContents":
                return self._batch_embed(body, resource)
            if method == "embedContent":
                return JSONResponse({"embedding": {"values": self._embed(body, resource)}})
        except Invalid as exc:
            return google_error(400, str(exc))
        return google_error(404, f"Method not found: {method}")

    def _answer(self, body: Any, model: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Candidates and usage for a valid request."""
        validate(body, model)
        config = body.get("generationConfig") or {}
        reply = reply_for(body)
        prompt = _prompt_tokens(body)
        user_text = " ".join(_texts(t) for t in body["contents"] if t["role"] == "user")
        parts: list[dict[str, Any]]
        finish = "STOP"
        if "BLOCKME" in user_text:
            parts, spent = [], 0
            finish = "SAFETY"
        elif reply.tool_name:
            parts = [{"functionCall": {"name": reply.tool_name, "args": reply.tool_arguments},
                      "thoughtSignature": SIGNATURE}]
            spent = len(reply.arguments_json.split())
        else:
            text = structured(config, reply.text or "")
            for stop in config.get("stopSequences") or []:
                text = text.split(stop)[0]
            pieces = text.split(" ")
            limit = config.get("maxOutputTokens")
            if limit is not None and len(pieces) > limit:
                pieces, finish = pieces[:limit], "MAX_TOKENS"
            parts, spent = [{"text": " ".join(pieces)}], len(pieces)
        candidates = []
        for index in range(int(config.get("candidateCount", 1))):
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"},
                                         "finishReason": finish, "index": index}
            if finish == "SAFETY":
                candidate["content"] = {"role": "model"}
                candidate["safetyRatings"] = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT",
                                               "probability": "HIGH", "blocked": True}]
            candidates.append(candidate)
        completion = spent * len(candidates)
        heard = _audio_tokens(body["contents"])
        details = [{"modality": "TEXT", "tokenCount": prompt - heard}]
        if heard:  # Gemini counts audio in the prompt, and details it by modality
            details.append({"modality": "AUDIO", "tokenCount": heard})
        usage: dict[str, Any] = {
            "promptTokenCount": prompt, "candidatesTokenCount": completion,
            "totalTokenCount": prompt + completion, "promptTokensDetails": details}
        if self.cached_tokens:
            usage["cachedContentTokenCount"] = self.cached_tokens
        if "BLOCKPROMPT" in user_text:
            return [], {"promptTokenCount": prompt, "totalTokenCount": prompt}
        return candidates, usage

    def _count(self, body: Any, model: str) -> Response:
        """countTokens: the prompt of ``contents`` or of a ``generateContentRequest``."""
        _fields(body, {"contents", "generateContentRequest"}, "")
        if "contents" in body and "generateContentRequest" in body:
            raise Invalid("contents and generate_content_request cannot both be set")
        if "generateContentRequest" in body:
            request = dict(_fields(body["generateContentRequest"], REQUEST_FIELDS | {"model"},
                                   "generate_content_request"))
            if request.pop("model", None) != f"models/{model}":
                raise Invalid("* CountTokensRequest.generate_content_request.model: the "
                              "model of the request must be the model of the URL")
        else:
            request = {"contents": body.get("contents")}
        validate(request, model)
        return JSONResponse({"totalTokens": _prompt_tokens(request), "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": _prompt_tokens(request)}]})

    def _generate(self, body: Any, model: str) -> Response:
        candidates, usage = self._answer(body, model)
        document: dict[str, Any] = {"usageMetadata": usage, "modelVersion": model,
                                    "responseId": "fake-response-1"}
        if candidates:
            document["candidates"] = candidates
        else:
            document["promptFeedback"] = {"blockReason": "SAFETY", "safetyRatings": []}
        return JSONResponse(document)

    async def _stream(self, candidates: list[dict[str, Any]], usage: dict[str, Any], model: str,
                      action: Action) -> AsyncIterator[bytes]:
        head = {"modelVersion": model, "responseId": "fake-response-1"}

        def event(document: dict[str, Any]) -> bytes:
            return f"data: {json.dumps({**document, **head})}\r\n\r\n".encode()

        events = []
        if not candidates:
            events.append(event({"promptFeedback": {"blockReason": "SAFETY"},
                                 "usageMetadata": usage}))
        for candidate in candidates:
            parts = candidate["content"].get("parts", [])
            pieces: list[dict[str, Any]] = [{"text": w} for w in words(parts[0]["text"])] \
                if parts and "text" in parts[0] else list(parts)
            for number, piece in enumerate(pieces or [None]):
                streamed: dict[str, Any] = {"content": {"parts": [piece] if piece else [],
                                                        "role": "model"}}
                if candidate["index"]:
                    streamed["index"] = candidate["index"]
                last = number == max(len(pieces), 1) - 1
                if last:  # Gemini sends the finish reason with the last piece
                    streamed["finishReason"] = candidate["finishReason"]
                running = {"promptTokenCount": usage["promptTokenCount"]}
                events.append(event({"candidates": [streamed],
                                     "usageMetadata": usage if last else running}))
        for number, item in enumerate(events):
            if action.cut_stream_after is not None and number >= action.cut_stream_after:
                raise ConnectionResetError("scripted disconnect")
            yield item
            await asyncio.sleep(0)

    def _embed(self, request: Any, model: str) -> list[float]:
        _fields(request, {"model", "content", "taskType", "title", "outputDimensionality"},
                "request")
        if request.get("model", model) != model:
            raise Invalid(f"Model in the request ({request.get('model')}) must match {model}.")
        text = _texts(_fields(request.get("content"), {"role", "parts"}, "content"))
        dimensions = int(request.get("outputDimensionality") or 8)
        return [float((len(text) + i) % 7) / 7 for i in range(dimensions)]

    def _batch_embed(self, body: Any, model: str) -> Response:
        requests = _fields(body, {"requests"}, "").get("requests")
        if not isinstance(requests, list) or not requests or len(requests) > 100:
            raise Invalid("* BatchEmbedContentsRequest.requests: 1 to 100 requests")
        return JSONResponse({"embeddings": [{"values": self._embed(r, model)}
                                            for r in requests]})
