"""Gemini's API in-process: its shapes in, the echo gateway behind, its shapes out."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from aigw.runtime.errors import BadRequest, ContextWindowExceeded, UpstreamServerError
from aigw.runtime.gemini_api import ChunkEncoder, error_body
from aigw.runtime.gemini_api_wire import (
    GenerateContentRequest,
    json_schema,
    parse,
    to_chat_request,
)
from aigw.runtime.live import Gateway
from aigw.runtime.providers.base import ChatDelta, ToolCallDelta, Usage

from ..providers.conftest import PIXEL
from .test_messages import _Failing, _serve_with

GENERATE = "/v1beta/models/echo:generateContent"
STREAM = "/v1beta/models/echo:streamGenerateContent?alt=sse"


def _lowered(body: dict[str, Any], stream: bool = False) -> dict[str, Any]:
    request = parse(GenerateContentRequest, json.dumps(body).encode())
    return to_chat_request("echo", request, stream).model_dump(exclude_none=True)


def _ask(text: str = "Hello there, gateway!", **extra: object) -> dict[str, object]:
    return {"contents": [{"role": "user", "parts": [{"text": text}]}], **extra}


def _assert_error(response: httpx.Response, code: int, status: str) -> str:
    assert response.status_code == code, response.text
    error = response.json()["error"]
    assert (error["code"], error["status"]) == (code, status)
    message: str = error["message"]
    return message


def _chunks(raw: str) -> list[dict[str, Any]]:
    frames = [frame for frame in raw.split("\n\n") if frame]
    assert all(frame.startswith("data: ") for frame in frames), raw
    return [json.loads(frame.removeprefix("data: ")) for frame in frames]


def test_a_conversation_with_calls_is_lowered_into_openai_messages() -> None:
    lowered = _lowered({
        "systemInstruction": {"role": "system",
                              "parts": [{"text": "Be brief."}, {"text": "Be kind."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "weather?"},
                                       {"inlineData": {"mimeType": "image/png", "data": "AAA"}}]},
            {"role": "model", "parts": [{"text": "pondering", "thought": True}]},
            {"role": "model", "parts": [
                {"text": "hmm", "thought": True},
                {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}},
                {"functionCall": {"name": "weather", "args": {"city": "Rome"}}}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "weather", "response": {"sky": "grey"}}},
                {"functionResponse": {"name": "weather", "response": {"sky": "blue"}}}]},
        ],
        "generationConfig": {"stopSequences": ["END"], "maxOutputTokens": 50, "topP": 0.5},
    })
    assert lowered["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."},
                                       {"type": "text", "text": "Be kind."}]},
        {"role": "user", "content": [
            {"type": "text", "text": "weather?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}]},
        {"role": "assistant", "tool_calls": [
            {"id": "call_2_1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_2_2", "type": "function",
             "function": {"name": "weather", "arguments": '{"city": "Rome"}'}}]},
        # Answers without ids answer the calls of their name in order.
        {"role": "tool", "tool_call_id": "call_2_1", "content": '{"sky": "grey"}'},
        {"role": "tool", "tool_call_id": "call_2_2", "content": '{"sky": "blue"}'},
    ]
    assert (lowered["stop"], lowered["max_completion_tokens"], lowered["top_p"]) == (
        ["END"], 50, 0.5)


def test_tools_schemas_and_calling_modes_are_lowered() -> None:
    declaration = {"name": "weather", "parameters": {
        "type": "OBJECT", "properties": {"city": {"type": "STRING", "nullable": True}},
        "required": ["city"], "propertyOrdering": ["city"]}}
    body = _ask(tools=[{"functionDeclarations": [declaration]}],
                toolConfig={"functionCallingConfig": {"mode": "ANY"}})
    lowered = _lowered(body)
    assert lowered["tools"] == [{"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": ["string", "null"]}},
        "required": ["city"]}}}]
    assert lowered["tool_choice"] == "required"
    forced = _lowered({**body, "toolConfig": {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["weather"]}}})
    assert forced["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert _lowered({**body, "toolConfig": {"function_calling_config": {"mode": "NONE"}}})[
        "tool_choice"] == "none"  # proto names are read too


def test_several_allowed_functions_are_the_only_tools_sent_and_one_is_required() -> None:
    declarations = [{"name": name} for name in ("weather", "time", "news")]
    body = _ask(tools=[{"functionDeclarations": declarations}], toolConfig={
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["news", "weather"]}})
    lowered = _lowered(body)
    assert [tool["function"]["name"] for tool in lowered["tools"]] == ["weather", "news"]
    assert lowered["tool_choice"] == "required"
    for config, named in (({"mode": "ANY", "allowedFunctionNames": ["weather", "nope"]},
                           "no function named 'nope'"),
                          ({"mode": "AUTO", "allowedFunctionNames": ["weather", "time"]},
                           "only with mode ANY")):
        with pytest.raises(BadRequest) as refused:
            _lowered({**body, "toolConfig": {"functionCallingConfig": config}})
        assert named in refused.value.message


def test_validated_is_auto_with_strict_functions_where_their_schemas_can_be() -> None:
    """Mode VALIDATED (text, or a call held to its schema) was refused. It is OpenAI's
    auto with strict functions: a schema whose every property is required is made
    strict (no other properties), one with an optional property kept as it is (strict
    would make it required); allowedFunctionNames are the only tools sent, auto still
    (one name is no forced call, as under ANY). Gemini deployments are told VALIDATED."""
    city = {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}
    loose = {"type": "object", "properties": {"topic": {"type": "string"}}}
    declarations = [{"name": "weather", "parameters": city},
                    {"name": "news", "parametersJsonSchema": loose}, {"name": "time"}]
    body = _ask(tools=[{"functionDeclarations": declarations}],
                toolConfig={"functionCallingConfig": {"mode": "VALIDATED"}})
    request = to_chat_request("echo", parse(GenerateContentRequest, json.dumps(body).encode()),
                              False)
    assert request.validated_calls
    lowered = request.model_dump(exclude_none=True)
    assert lowered["tool_choice"] == "auto"
    assert lowered["tools"] == [
        {"type": "function", "function": {"name": "weather", "strict": True, "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
            "additionalProperties": False}}},
        {"type": "function", "function": {"name": "news", "parameters": loose}},
        {"type": "function", "function": {"name": "time", "strict": True, "parameters": {
            "type": "object", "properties": {}, "additionalProperties": False}}}]
    allowed = _lowered({**body, "toolConfig": {"functionCallingConfig": {
        "mode": "VALIDATED", "allowedFunctionNames": ["weather"]}}})
    assert [tool["function"]["name"] for tool in allowed["tools"]] == ["weather"]
    assert allowed["tool_choice"] == "auto"
    plain = to_chat_request("echo", parse(GenerateContentRequest, json.dumps(
        {**body, "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}}).encode()), False)
    assert not plain.validated_calls
    assert all("strict" not in tool["function"] for tool in plain.model_dump()["tools"])


def test_response_schemas_become_json_schema_response_formats() -> None:
    schema = {"type": "OBJECT", "properties": {"city": {"type": "STRING"}}}
    lowered = _lowered(_ask(generationConfig={"responseMimeType": "application/json",
                                              "responseSchema": schema}))
    assert lowered["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "output", "schema": json_schema(schema)}}
    assert _lowered(_ask(generationConfig={"responseMimeType": "application/json"}))[
        "response_format"] == {"type": "json_object"}


@pytest.mark.parametrize(("body", "named"), [
    (_ask(safetySettings=[]), "safetySettings"),
    (_ask(generationConfig={"candidateCount": 3}), "generationConfig.candidateCount"),
    (_ask(generationConfig={"thinkingConfig": {}}), "generationConfig.thinkingConfig"),
    (_ask(tools=[{"googleSearch": {}}]), "tools.0.googleSearch"),
    ({"contents": [{"role": "user", "parts": [{"text": "a", "inlineData": {
        "mimeType": "image/png", "data": "AAA"}}]}]}, "contents.0.parts.0"),
    ({"contents": [{"role": "user", "parts": [{"functionResponse": {
        "name": "weather", "response": {}}}]}]}, "contents.0.parts.0.functionResponse"),
    ({"contents": [{"role": "user", "parts": [{"inlineData": {
        "mimeType": "application/pdf", "data": "AAA"}}]}]}, "contents.0.parts.0.inlineData"),
])
def test_what_cannot_be_passed_on_is_a_400_naming_it(body: dict[str, Any], named: str) -> None:
    with pytest.raises(BadRequest) as refused:
        _lowered(body)
    assert refused.value.message.startswith(f"{named}"), refused.value.message


@pytest.mark.parametrize("body", [
    {"contents": [{"role": "user", "parts": [{"functionResponse": {
        "name": "w" * 100_000, "response": {}}}]}]},
    {"contents": [{"role": "user", "parts": [{"inlineData": {
        "mimeType": "x" * 100_000, "data": "AAA"}}]}]},
    _ask(tools=[{"functionDeclarations": [{"name": "weather"}]}], toolConfig={
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["w" * 100_000]}}),
])
def test_a_value_the_app_sent_is_shown_cut_short_in_its_400(body: dict[str, Any]) -> None:
    """A function's name or a part's MIME type (bounded by the body alone) was repeated
    whole in the error, as other endpoints' refusals no longer do."""
    with pytest.raises(BadRequest) as refused:
        _lowered(body)
    assert "(100000 characters)" in refused.value.message
    assert len(refused.value.message) < 400, len(refused.value.message)


async def test_generate_content_is_a_generate_content_response(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(GENERATE, json=_ask())
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["candidates"][0]["finishReason"] == "STOP"
    assert body["candidates"][0]["content"]["role"] == "model"
    assert body["candidates"][0]["content"]["parts"][0]["text"]
    usage = body["usageMetadata"]
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert response.headers["x-request-id"] == f"chatcmpl-{body['responseId']}"


async def test_stream_ends_with_the_finish_and_usage(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", STREAM, json=_ask()) as response:
        raw = (await response.aread()).decode()
    assert response.status_code == 200
    chunks = _chunks(raw)
    assert "finishReason" not in chunks[0]["candidates"][0]
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] > 0


async def test_failure_mid_stream_is_a_status_event(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    _serve_with(gateway, _Failing(UpstreamServerError("it broke"), after_first_delta=True))
    async with client.stream("POST", STREAM, json=_ask()) as response:
        raw = (await response.aread()).decode()
    chunks = _chunks(raw)
    assert chunks[0]["candidates"][0]["content"]["parts"] == [{"text": "partial "}]
    assert chunks[-1] == {"error": {"code": 502, "message": "it broke", "status": "UNAVAILABLE"}}


async def test_a_stream_without_alt_sse_is_one_json_array(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    """Google's default framing: ``[`` chunk ``\n,\r\n`` chunk ... ``\n]``, parsed whole
    here; the e2e test reads it element by element."""
    path = STREAM.removesuffix("?alt=sse")
    async with client.stream("POST", path, json=_ask()) as response:
        raw = (await response.aread()).decode()
    assert response.headers["content-type"] == "application/json"
    assert raw.startswith("[{") and raw.endswith("}\n]") and "\n,\r\n{" in raw
    chunks = json.loads(raw)
    parts = [part for chunk in chunks for part in chunk["candidates"][0]["content"]["parts"]]
    assert "".join(part["text"] for part in parts) == "Hello there, gateway!"
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    _serve_with(gateway, _Failing(UpstreamServerError("it broke"), after_first_delta=True))
    async with client.stream("POST", path, json=_ask()) as response:
        failed = json.loads((await response.aread()).decode())
    assert failed[0]["candidates"][0]["content"]["parts"] == [{"text": "partial "}]
    assert failed[-1] == {"error": {"code": 502, "message": "it broke", "status": "UNAVAILABLE"}}


@pytest.mark.parametrize(("method", "path", "code", "status"), [
    ("POST", "/v1beta/models/echo:embedContent", 404, "NOT_FOUND"),
    ("POST", "/v1beta/models/echo:streamGenerateContent?alt=proto", 400, "INVALID_ARGUMENT"),
    ("DELETE", "/v1beta/models/echo", 405, "INVALID_ARGUMENT"),
    ("GET", "/v1beta/models/nope", 404, "NOT_FOUND"),
])
async def test_wrong_calls_are_googles_status(
    client: httpx.AsyncClient, method: str, path: str, code: int, status: str
) -> None:
    response = await client.request(method, path, json=_ask())
    _assert_error(response, code, status)


async def test_body_errors_are_googles_status(client: httpx.AsyncClient) -> None:
    message = _assert_error(await client.post(GENERATE, content=b"{nope"), 400,
                            "INVALID_ARGUMENT")
    assert message.startswith("The request body is not valid JSON")
    _assert_error(await client.post(GENERATE, json=_ask("x" * (4 * 1024 * 1024 + 10))), 413,
                  "INVALID_ARGUMENT")
    _assert_error(await client.post(GENERATE, json=_ask("word " * 140_000)), 400,
                  "INVALID_ARGUMENT")


async def test_count_tokens_counts_a_whole_request_too(client: httpx.AsyncClient) -> None:
    path = "/v1beta/models/echo:countTokens"
    alone = (await client.post(path, json=_ask())).json()["totalTokens"]
    whole = await client.post(path, json={"generateContentRequest": {
        "model": "models/echo", **_ask(), "systemInstruction": {"parts": [{"text": "Be brief."}]}}})
    assert whole.json()["totalTokens"] > alone > 0


async def test_a_forced_call_streams_as_a_function_call(client: httpx.AsyncClient) -> None:
    weather = {"name": "get_weather", "parameters": {
        "type": "OBJECT", "properties": {"city": {"type": "STRING"}}}}
    body = _ask('{"city": "Oslo"}', tools=[{"functionDeclarations": [weather]}],
                toolConfig={"functionCallingConfig": {
                    "mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
    async with client.stream("POST", STREAM.replace("echo", "fast"), json=body) as response:
        chunks = _chunks((await response.aread()).decode())
    assert chunks[-1]["candidates"][0]["content"]["parts"] == [{"functionCall": {
        "id": "call_echo_1", "name": "get_weather", "args": {"city": "Oslo"}}}]
    whole = (await client.post(GENERATE.replace("echo", "fast"), json=body)).json()
    assert whole["candidates"][0]["content"] == chunks[-1]["candidates"][0]["content"]


def test_stream_calls_in_pieces_are_sent_whole_at_the_end() -> None:
    served = SimpleNamespace(deployment=SimpleNamespace(
        model="m", name="d", provider=SimpleNamespace(name="p")))
    encoder = ChunkEncoder("id", served)  # type: ignore[arg-type]
    assert encoder.encode(ChatDelta(tool_calls=(
        ToolCallDelta(0, id="call_1", name="weather", arguments='{"ci'),))) == b""
    assert encoder.encode(ChatDelta(tool_calls=(ToolCallDelta(0, arguments='ty": "Oslo"}'),),
                                    finish_reason="tool_calls")) == b""
    encoder.encode(ChatDelta(usage=Usage(7, 5, reasoning_tokens=2)))
    (last,) = _chunks(encoder.finish().decode())
    assert last["candidates"][0] == {"content": {"role": "model", "parts": [
        {"functionCall": {"id": "call_1", "name": "weather", "args": {"city": "Oslo"}}}]},
        "index": 0, "finishReason": "STOP"}
    assert last["usageMetadata"] == {"promptTokenCount": 7, "candidatesTokenCount": 3,
                                     "totalTokenCount": 12, "thoughtsTokenCount": 2}


def test_a_prompt_too_long_is_invalid_argument() -> None:
    assert error_body(ContextWindowExceeded("too long"))["error"] == {
        "code": 400, "message": "too long", "status": "INVALID_ARGUMENT"}


async def test_models_name_their_methods_by_kind(client: httpx.AsyncClient) -> None:
    models = {model["name"]: model for model in
              (await client.get("/v1beta/models")).json()["models"]}
    assert models["models/echo"]["supportedGenerationMethods"] == [
        "generateContent", "streamGenerateContent", "countTokens"]
    assert models["models/embed"]["supportedGenerationMethods"] == []
    assert models["models/echo"]["description"] == "Repeats the last user message."
    one = await client.get("/v1beta/models/models/echo")  # as a name, prefix and all
    assert one.json() == models["models/echo"]


async def test_models_are_paged_by_name(client: httpx.AsyncClient) -> None:
    every = [model["name"] for model in (await client.get("/v1beta/models")).json()["models"]]
    assert every == sorted(every) and len(every) > 3
    seen: list[str] = []
    token = ""
    while True:
        page = (await client.get("/v1beta/models",
                                 params={"pageSize": 2, "pageToken": token})).json()
        assert len(page["models"]) <= 2
        seen += [model["name"] for model in page["models"]]
        if "nextPageToken" not in page:
            break
        token = page["nextPageToken"]
    assert seen == every
    for params, named in (({"pageSize": "-1"}, "pageSize"), ({"pageToken": "!!"}, "pageToken")):
        message = _assert_error(await client.get("/v1beta/models", params=params), 400,
                                "INVALID_ARGUMENT")
        assert message.startswith(named)


async def test_an_image_needs_a_route_whose_models_take_images(
    client: httpx.AsyncClient,
) -> None:
    body = {"contents": [{"parts": [{"text": "what is it?"}, {"inlineData": {
        "mimeType": "image/png", "data": PIXEL}}]}]}
    message = _assert_error(await client.post(GENERATE, json=body), 400, "INVALID_ARGUMENT")
    assert "vision" in message
