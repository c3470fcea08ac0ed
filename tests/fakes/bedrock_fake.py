"""A fake of Amazon Bedrock's runtime: POST /model/{modelId}/converse and /converse-stream.

Every request must carry a valid AWS Signature Version 4, checked the way AWS checks
it and computed here independently of botocore: the ``Authorization`` header's shape
(``AWS4-HMAC-SHA256 Credential=<key id>/<date>/<region>/bedrock/aws4_request,
SignedHeaders=..., Signature=<64 hex>``), ``X-Amz-Date`` (within 5 minutes, the same
day as the scope), ``host`` and ``x-amz-date`` among the signed headers, the session
token when the credentials have one, and the signature itself over the canonical
request (the path URI-encoded once more, as for every service but S3). A wrong
signature is answered as AWS answers it, with the canonical request and the string to
sign in the message (which hold the session token: the adapter must scrub it). A
Bedrock API key (``Authorization: Bearer``) is accepted instead when one is set.

Bodies are checked as Converse checks them (unknown fields, roles alternating from
user, blank text, content block unions, tool results answering the tool uses of the
turn before, a toolConfig whenever tool blocks appear, toolChoice naming a tool,
structured output's ``outputConfig.textFormat`` with its schema a JSON string holding
an object). A text answer under a JSON schema is a JSON document that fits it
(``brain.json_answer``).
Errors carry ``x-amzn-ErrorType: <Type>:http://internal.amazon.com/...`` and
``{"message": ...}``. Streams are AWS event-stream frames (prelude, headers, JSON
payload, both CRC32s), each frame sent in two pieces so that readers must reassemble.

Answers come from ``brain.decide``; a tool call follows a short text block. They are
Claude's: ``additionalModelResponseFieldPaths`` (JSON Pointers; an empty or malformed
one is a 400) are resolved against Claude's own stream as Bedrock reads it, the message
of ``message_start`` (``stop_reason`` and ``stop_sequence`` still null) with the closing
``message_delta`` event over it, and each value found is put in
``additionalModelResponseFields`` at its path (a path that finds nothing is left out),
in the answer and in the stream's ``messageStop``. So ``/delta/stop_sequence`` names
the stop sequence that ended the answer and ``/stop_sequence`` (the API reference's
example) is null, as live Converse answers have them. Scripted
actions (``brain.Action``): an error status answers with ``body`` {"type", "message"}
or a default; status 200 with a Converse answer ``body`` (it has ``output``) answers
with it, streamed when asked; status 200 with a body {"exception": "throttlingException", "message"}
sends that exception frame after ``cut_stream_after`` frames (default 2); a bare
``cut_stream_after`` drops the connection.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import hmac
import json
import re
import struct
import zlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .brain import Action, Script, decide, json_answer, words

TOP_FIELDS = {"messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig",
              "additionalModelRequestFields", "additionalModelResponseFieldPaths",
              "promptVariables", "requestMetadata", "performanceConfig", "outputConfig"}
BLOCK_KINDS = {"text", "image", "toolUse", "toolResult", "cachePoint", "document",
               "reasoningContent"}
INFERENCE_FIELDS = {"maxTokens", "temperature", "topP", "stopSequences"}
IMAGE_FORMATS = {"png", "jpeg", "gif", "webp"}
ERROR_TYPES = {400: "ValidationException", 403: "AccessDeniedException",
               404: "ResourceNotFoundException", 408: "ModelTimeoutException",
               424: "ModelErrorException", 429: "ThrottlingException",
               500: "InternalServerException", 503: "ServiceUnavailableException"}
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, ?SignedHeaders=(?P<signed>[a-z0-9;-]+), ?"
    r"Signature=(?P<signature>[0-9a-f]{64})$")
_AMZ_DATE = re.compile(r"^\d{8}T\d{6}Z$")
_POINTER = re.compile(r"(/([^/~]|~[01])*)+")  # RFC 6901, not empty


class Invalid(Exception):
    """A request Bedrock would refuse with 400 ValidationException."""


def aws_error(status: int, message: str, kind: str | None = None,
              headers: dict[str, str] | None = None) -> JSONResponse:
    kind = kind or ERROR_TYPES.get(status, "InternalServerException")
    return JSONResponse({"message": message}, status_code=status, headers={
        "x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        "x-amzn-RequestId": "00000000-fake-0000-0000-000000000000", **(headers or {})})


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (total and headers length, CRC32), string
    headers, payload, CRC32 of everything before it."""
    encoded = b"".join(
        bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value.encode()))
        + value.encode() for name, value in headers.items())
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(kind: str, payload: dict[str, Any]) -> bytes:
    body = json.dumps({**payload, "p": "abcdefghijklmnop"[:len(kind)]}).encode()
    return frame({":event-type": kind, ":content-type": "application/json",
                  ":message-type": "event"}, body)


def exception(kind: str, message: str) -> bytes:
    return frame({":exception-type": kind, ":content-type": "application/json",
                  ":message-type": "exception"}, json.dumps({"message": message}).encode())


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _fields(value: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(f"Malformed input request: {where} must be an object")
    for name in value:
        if name not in allowed:
            raise Invalid(f"Malformed input request: #{where}: extraneous key [{name}] is "
                          "not permitted, please reformat your input and try again.")
    return value


def _block(block: Any, role: str, where: str) -> str:
    if not isinstance(block, dict) or len(block) != 1 or next(iter(block)) not in BLOCK_KINDS:
        raise Invalid(f"The content block at {where} must set exactly one of "
                      f"{', '.join(sorted(BLOCK_KINDS))}.")
    kind, value = next(iter(block.items()))
    if kind == "text" and (not isinstance(value, str) or not value.strip()):
        raise Invalid(f"The text field in the ContentBlock object at {where} is blank. Add "
                      "text to the text field, and try again.")
    if kind == "image":
        image = _fields(value, {"format", "source"}, f"{where}.image")
        source = _fields(image.get("source"), {"bytes", "s3Location"}, f"{where}.image.source")
        if image.get("format") not in IMAGE_FORMATS:
            raise Invalid(f"{where}.image.format: must be one of png, jpeg, gif, webp")
        try:
            base64.b64decode(str(source.get("bytes")), validate=True)
        except binascii.Error:
            raise Invalid(f"{where}.image.source.bytes: invalid base64") from None
    if kind == "toolUse":
        use = _fields(value, {"toolUseId", "name", "input"}, f"{where}.toolUse")
        if role != "assistant" or not use.get("toolUseId") or not use.get("name") \
                or not isinstance(use.get("input"), dict):
            raise Invalid(f"{where}.toolUse: only assistant turns use tools, with a toolUseId, "
                          "a name and an input object")
    if kind == "toolResult":
        result = _fields(value, {"toolUseId", "content", "status"}, f"{where}.toolResult")
        if role != "user" or not isinstance(result.get("content"), list):
            raise Invalid(f"{where}.toolResult: only user turns hold tool results, with content")
        for number, part in enumerate(result["content"]):
            _fields(part, {"text", "json", "image", "document"},
                    f"{where}.toolResult.content.{number}")
    if kind == "cachePoint":
        _fields(value, {"type"}, f"{where}.cachePoint")
    return kind


def validate(body: Any) -> None:
    """Raise ``Invalid`` with Bedrock's words for what Converse would refuse."""
    _fields(body, TOP_FIELDS, "")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Invalid("A conversation must start with a user message. Try again with a "
                      "conversation that starts with a user message.")
    pending: set[str] = set()
    tool_blocks = False
    for index, message in enumerate(messages):
        _fields(message, {"role", "content"}, f"messages.{index}")
        role = message.get("role")
        if index == 0 and role != "user":
            raise Invalid("A conversation must start with a user message. Try again with a "
                          "conversation that starts with a user message.")
        if role not in ("user", "assistant") or (index and messages[index - 1]["role"] == role):
            raise Invalid("A conversation must alternate between user and assistant roles. "
                          "Make sure the conversation alternates between user and assistant "
                          "roles and try again.")
        content = message.get("content")
        if not isinstance(content, list) or not content:
            raise Invalid(f"messages.{index}.content: must hold at least one content block")
        kinds = [_block(block, role, f"messages.{index}.content.{n}")
                 for n, block in enumerate(content)]
        results = {b["toolResult"]["toolUseId"] for b in content if "toolResult" in b}
        if results != pending and (results or pending):
            raise Invalid(f"Expected toolResult blocks at messages.{index}.content for the "
                          f"following Ids: {', '.join(sorted(pending))}")
        pending = {b["toolUse"]["toolUseId"] for b in content if "toolUse" in b}
        tool_blocks = tool_blocks or "toolUse" in kinds or "toolResult" in kinds
    for number, block in enumerate(body.get("system") or []):
        _fields(block, {"text", "cachePoint", "guardContent"}, f"system.{number}")
    config = _fields(body.get("inferenceConfig", {}), INFERENCE_FIELDS, "inferenceConfig")
    if not isinstance(config.get("maxTokens", 1), int) or config.get("maxTokens", 1) < 1:
        raise Invalid("inferenceConfig.maxTokens: must be at least 1")
    for name in ("temperature", "topP"):
        if not 0 <= config.get(name, 0) <= 1:
            raise Invalid(f"inferenceConfig.{name}: must be between 0 and 1")
    if len(config.get("stopSequences", [])) > 4:
        raise Invalid("inferenceConfig.stopSequences: at most 4")
    _field_paths(body.get("additionalModelResponseFieldPaths", []))
    if tool_blocks and "toolConfig" not in body:
        raise Invalid("The toolConfig field must be defined when using toolUse and "
                      "toolResult content blocks.")
    if "toolConfig" in body:
        _tool_config(body["toolConfig"])
    if "outputConfig" in body:
        _output_config(body["outputConfig"])


def _output_config(config: Any) -> None:
    text_format = _fields(_fields(config, {"textFormat"}, "outputConfig").get("textFormat"),
                          {"type", "structure"}, "outputConfig.textFormat")
    if text_format.get("type") != "json_schema":
        raise Invalid("outputConfig.textFormat.type: must be json_schema")
    structure = _fields(text_format.get("structure"), {"jsonSchema"},
                        "outputConfig.textFormat.structure")
    definition = _fields(structure.get("jsonSchema"), {"schema", "name", "description"},
                         "outputConfig.textFormat.structure.jsonSchema")
    try:  # a String in the service model: the schema's JSON text, not an object
        schema = json.loads(definition["schema"]) if isinstance(
            definition.get("schema"), str) else None
    except ValueError:
        schema = None
    if not isinstance(schema, dict):
        raise Invalid("outputConfig.textFormat.structure.jsonSchema.schema: must be a JSON "
                      "Schema object, as a JSON string")


def _field_paths(paths: Any) -> None:
    if not isinstance(paths, list) or len(paths) > 10:
        raise Invalid("additionalModelResponseFieldPaths: at most 10 paths")
    for number, path in enumerate(paths):
        if not isinstance(path, str) or not _POINTER.fullmatch(path) or len(path) > 256:
            raise Invalid(f"additionalModelResponseFieldPaths.{number}: '{path}' is not a "
                          "valid JSON Pointer")


def response_fields(paths: list[str], native: dict[str, Any]) -> dict[str, Any]:
    """``additionalModelResponseFields``: each path's value in the model's ``native``
    output, at that path (``/delta/stop_sequence`` -> ``{"delta": {"stop_sequence": ...}}``)."""
    fields: dict[str, Any] = {}
    for path in paths:
        keys = [key.replace("~1", "/").replace("~0", "~") for key in path[1:].split("/")]
        value: Any = native
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            slot = fields
            for key in keys[:-1]:
                slot = slot.setdefault(key, {})
            slot[keys[-1]] = value
    return fields


def _tool_config(config: Any) -> None:
    _fields(config, {"tools", "toolChoice"}, "toolConfig")
    names = []
    for number, tool in enumerate(config.get("tools") or []):
        where = f"toolConfig.tools.{number}"
        if len(_fields(tool, {"toolSpec", "cachePoint"}, where)) != 1:
            raise Invalid(f"{where}: set exactly one of toolSpec, cachePoint")
        if "cachePoint" in tool:  # a Tool is a union: a spec, or a cache point after some
            _fields(tool["cachePoint"], {"type"}, f"{where}.cachePoint")
            continue
        spec = _fields(tool.get("toolSpec"), {"name", "description", "inputSchema"},
                       f"{where}.toolSpec")
        schema = _fields(spec.get("inputSchema"), {"json"},
                         f"toolConfig.tools.{number}.toolSpec.inputSchema")
        if not isinstance(schema.get("json"), dict) or not spec.get("name"):
            raise Invalid(f"toolConfig.tools.{number}.toolSpec: needs a name and inputSchema.json")
        names.append(spec["name"])
    if not names:
        raise Invalid("toolConfig.tools: must hold at least one tool")
    choice = config.get("toolChoice")
    if choice is not None:
        _fields(choice, {"auto", "any", "tool"}, "toolConfig.toolChoice")
        if len(choice) != 1:
            raise Invalid("toolConfig.toolChoice: set exactly one of auto, any, tool")
        if "tool" in choice and choice["tool"].get("name") not in names:
            raise Invalid(f"toolConfig.toolChoice.tool.name: {choice['tool'].get('name')} is "
                          "not one of the tools")


def _texts(content: list[dict[str, Any]]) -> str:
    return "".join(str(block["text"]) for block in content if "text" in block)


class BedrockFake:
    """The fake's state: credentials it accepts, its script, its cache, what it has seen."""

    def __init__(self, region: str = "us-east-1") -> None:
        self.region = region
        self.access_key = "AKIAFAKEBEDROCK12345"
        self.secret_key = "fake/Secret+Key0123456789abcdefghijklmnop"
        self.session_token: str | None = "FwoGZXIvYXdzEFAKESESSIONTOKEN0123456789"
        self.api_key: str | None = None  # a Bedrock API key, accepted as a Bearer token
        self.script = Script()
        self.paths: list[str] = []
        self.cached: set[str] = set()
        self.app = Starlette(routes=[
            Route("/__ready", self._ready),
            Route("/model/{target:path}", self._invoke, methods=["POST"]),
        ])

    async def _ready(self, request: Request) -> Response:
        return Response("ok")

    async def _invoke(self, request: Request) -> Response:
        raw = request.scope.get("raw_path", request.url.path.encode()).decode().split("?")[0]
        body_bytes = await request.body()
        refusal = self._check_auth(request, raw, body_bytes)
        if refusal is not None:
            return refusal
        operation = raw.rpartition("/")[2]
        if operation not in ("converse", "converse-stream"):
            return aws_error(404, f"Unknown operation {operation}", "UnknownOperationException")
        try:
            body = json.loads(body_bytes)
        except ValueError:
            return aws_error(400, "Malformed input request, please reformat your input and "
                             "try again.")
        self.paths.append(raw)
        self.script.requests.append(body if isinstance(body, dict) else {"_": body})
        self.script.headers.append(dict(request.headers))
        action = self.script.next()
        if action.delay_s:
            await asyncio.sleep(action.delay_s)
        if action.status != 200:
            failure = action.body or {}
            return aws_error(action.status, str(failure.get("message") or
                                                f"scripted failure {action.status}"),
                             str(failure["type"]) if "type" in failure else None,
                             action.headers)
        try:
            validate(body)
        except Invalid as exc:
            return aws_error(400, str(exc))
        answer = action.body if action.body and "output" in action.body else self._answer(body)
        if operation == "converse-stream":
            return StreamingResponse(self._stream(answer, action),
                                     media_type="application/vnd.amazon.eventstream")
        return JSONResponse(answer)

    def _check_auth(self, request: Request, raw_path: str, body: bytes) -> Response | None:
        authorization = request.headers.get("authorization", "")
        if authorization.startswith("Bearer "):
            if self.api_key is None or authorization != f"Bearer {self.api_key}":
                return aws_error(403, "Invalid API Key format: Must start with pre-defined "
                                 "prefix", "AccessDeniedException")
            return None
        match = _AUTHORIZATION.match(authorization)
        if match is None:
            return aws_error(403, "Authorization header requires 'Credential', "
                             "'SignedHeaders' and 'Signature'", "IncompleteSignatureException")
        amz_date = request.headers.get("x-amz-date", "")
        if not _AMZ_DATE.match(amz_date) or amz_date[:8] != match["date"]:
            return aws_error(403, "X-Amz-Date must be YYYYMMDDTHHMMSSZ and match the "
                             "credential scope", "IncompleteSignatureException")
        signed_at = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(
            tzinfo=datetime.UTC)
        if abs((datetime.datetime.now(datetime.UTC) - signed_at).total_seconds()) > 300:
            return aws_error(403, "Signature expired", "InvalidSignatureException")
        token = request.headers.get("x-amz-security-token")
        if match["key"] != self.access_key or token != self.session_token:
            return aws_error(403, "The security token included in the request is invalid.",
                             "UnrecognizedClientException")
        if (match["region"], match["service"]) != (self.region, "bedrock"):
            return aws_error(403, f"Credential should be scoped to a valid region and to "
                             f"service bedrock, not {match['region']}/{match['service']}",
                             "InvalidSignatureException")
        signed = match["signed"].split(";")
        needed = {"host", "x-amz-date"} | ({"x-amz-security-token"} if token else set())
        if not needed <= set(signed) or signed != sorted(signed):
            return aws_error(403, f"SignedHeaders must list {', '.join(sorted(needed))}, "
                             "sorted", "InvalidSignatureException")
        canonical = "\n".join([
            request.method, quote(raw_path, safe="/~"), request.url.query,
            *(f"{name}:{' '.join(request.headers.get(name, '').split())}" for name in signed),
            "", match["signed"], hashlib.sha256(body).hexdigest()])
        scope = f"{match['date']}/{self.region}/bedrock/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = _hmac(_hmac(_hmac(_hmac(f"AWS4{self.secret_key}".encode(), match["date"]),
                                self.region), "bedrock"), "aws4_request")
        if not hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(),
                                   match["signature"]):
            return aws_error(403, "The request signature we calculated does not match the "
                             "signature you provided. Check your AWS Secret Access Key and "
                             "signing method. Consult the service documentation for details."
                             f"\n\nThe Canonical String for this request should have been\n"
                             f"'{canonical}'\n\nThe String-to-Sign should have been\n"
                             f"'{to_sign}'\n", "InvalidSignatureException")
        return None

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body["messages"]
        results = [b["toolResult"] for b in messages[-1]["content"] if "toolResult" in b]
        result = _texts(results[0]["content"]) if results else None
        users = [m for m in messages if m["role"] == "user" and _texts(m["content"])]
        tools = (body.get("toolConfig") or {}).get("tools") or []
        reply = decide("fake-bedrock", _texts(users[-1]["content"]) if users else "",
                       [t["toolSpec"]["name"] for t in tools if "toolSpec" in t], result, True)
        config = body.get("inferenceConfig") or {}
        content: list[dict[str, Any]] = []
        stop, matched = "end_turn", None
        if reply.tool_name:
            content.append({"text": f"I'll call {reply.tool_name}."})
            content.append({"toolUse": {"toolUseId": f"tooluse_fake{len(self.script.requests)}",
                                        "name": reply.tool_name,
                                        "input": reply.tool_arguments or {}}})
            stop = "tool_use"
        else:
            text = reply.text or ""
            text_format = (body.get("outputConfig") or {}).get("textFormat")
            if text_format is not None:
                schema = json.loads(text_format["structure"]["jsonSchema"]["schema"])
                text = json.dumps(json_answer(schema, text))
            for sequence in config.get("stopSequences") or []:
                if sequence in text:
                    text, stop, matched = text[:text.index(sequence)], "stop_sequence", sequence
            pieces = text.split(" ")
            if len(pieces) > config.get("maxTokens", 4096):
                text, stop, matched = " ".join(pieces[:config["maxTokens"]]), "max_tokens", None
            content.append({"text": text})
        output = len(_texts(content).split()) + sum(
            len(json.dumps(b["toolUse"]["input"]).split()) for b in content if "toolUse" in b)
        counts = self._input_usage(body)
        total = sum(counts.values()) + output
        answer = {"output": {"message": {"role": "assistant", "content": content}},
                  "stopReason": stop, "metrics": {"latencyMs": 12},
                  "usage": {**counts, "outputTokens": output, "totalTokens": total}}
        if body.get("additionalModelResponseFieldPaths"):
            native = {"type": "message_delta", "role": "assistant", "stop_reason": None,
                      "stop_sequence": None, "usage": {"output_tokens": output},
                      "delta": {"stop_reason": stop, "stop_sequence": matched}}
            answer["additionalModelResponseFields"] = response_fields(
                body["additionalModelResponseFieldPaths"], native)
        return answer

    def _input_usage(self, body: dict[str, Any]) -> dict[str, int]:
        """Prompt tokens (words, plus 3 a turn), split at the last cache point."""
        blocks = [*body.get("system", [])]
        for message in body["messages"]:
            blocks.extend([*message["content"], {"turn": True}])
        total, prefix, prefix_tokens = 0, "", 0
        for number, block in enumerate(blocks):
            total += 3 if "turn" in block else len(str(block.get("text", "")).split())
            if "cachePoint" in block:
                prefix, prefix_tokens = json.dumps(blocks[:number]), total
        read = prefix_tokens if prefix in self.cached else 0
        if prefix:
            self.cached.add(prefix)
        counts = {"inputTokens": total - prefix_tokens}
        if prefix:
            counts |= {"cacheReadInputTokens": read, "cacheWriteInputTokens": prefix_tokens - read}
        return counts

    async def _stream(self, answer: dict[str, Any], action: Action) -> AsyncIterator[bytes]:
        frames = stream_frames(answer)
        failure = action.body if action.body and "exception" in action.body else None
        cut = action.cut_stream_after
        if failure is not None and cut is None:
            cut = 2
        for number, item in enumerate(frames):
            if cut is not None and number >= cut:
                if failure is None:
                    raise ConnectionResetError("scripted disconnect")
                yield exception(str(failure["exception"]), str(failure.get("message", "")))
                return
            middle = len(item) // 2
            yield item[:middle]
            await asyncio.sleep(0)
            yield item[middle:]


def stream_frames(answer: dict[str, Any]) -> list[bytes]:
    """The ConverseStream events that stream ``answer``, in Bedrock's order."""
    frames = [event("messageStart", {"role": "assistant"})]
    for index, block in enumerate(answer["output"]["message"]["content"]):
        if "toolUse" in block:
            use = block["toolUse"]
            frames.append(event("contentBlockStart", {"contentBlockIndex": index, "start": {
                "toolUse": {"toolUseId": use["toolUseId"], "name": use["name"]}}}))
            arguments = json.dumps(use["input"]) if use["input"] else ""  # none: no delta
            frames.extend(event("contentBlockDelta", {"contentBlockIndex": index, "delta": {
                "toolUse": {"input": arguments[at:at + 7]}}})
                for at in range(0, len(arguments), 7))
        else:
            frames.extend(event("contentBlockDelta", {"contentBlockIndex": index,
                                                      "delta": {"text": piece}})
                          for piece in words(block["text"]))
        frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
    stop: dict[str, Any] = {"stopReason": answer["stopReason"]}
    if "additionalModelResponseFields" in answer:
        stop["additionalModelResponseFields"] = answer["additionalModelResponseFields"]
    frames.append(event("messageStop", stop))
    frames.append(event("metadata", {"usage": answer["usage"], "metrics": answer["metrics"]}))
    return frames
