"""The gemini adapter against the Gemini fake: the gateway in-process, the fake on loopback."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from ..fakes.brain import Action
from ..fakes.gemini_fake import SIGNATURE, GeminiFake
from ..fakes.scripted import scripted_upstream
from .conftest import (
    CACHE_PRICED,
    CHAT,
    FORECAST,
    FORECAST_FORMAT,
    GatewayFactory,
    billed,
    cache_priced_cost,
    forecast,
    gemini_on,
    stream_chunks,
    streamed_text,
    streamed_tool_calls,
)

TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Look a thing up",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                   "required": ["query"]}}}]


@pytest.fixture
async def client(gemini_fake: GeminiFake, make_gateway: GatewayFactory) -> httpx.AsyncClient:
    return await make_gateway(f"""
    providers:
      gem: {{type: gemini, base_url: "{gemini_fake.base_url}/v1beta",
             api_key: "${{FAKE_GEMINI_KEY}}"}}
    deployments:
      flash: {{provider: gem, model: gemini-2.5-flash, context_window: 1048576,
               max_output_tokens: 65536, capabilities: [streaming, tools, vision, json_schema],
               {CACHE_PRICED}}}
      pro3: {{provider: gem, model: gemini-3-pro-preview, context_window: 1048576,
              capabilities: [streaming, tools, json_schema]}}
      emb: {{provider: gem, model: gemini-embedding-001, kind: embeddings,
             context_window: 2048}}
    routes:
      flash: {{deployment: flash}}
      pro3: {{deployment: pro3}}
      emb: {{deployment: emb}}
    """)


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def test_plain_chat(gemini_fake: GeminiFake, client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json={"model": "flash", "messages": _user("hello there")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "fake-gemini: hello there"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["model"] == "gemini-2.5-flash"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert gemini_fake.paths == ["/v1beta/models/gemini-2.5-flash:generateContent"]
    assert gemini_fake.script.headers[-1]["x-goog-api-key"] == gemini_fake.api_key
    assert "authorization" not in gemini_fake.script.headers[-1]
    assert gemini_fake.script.requests[-1] == {
        "contents": [{"role": "user", "parts": [{"text": "hello there"}]}],
        # the deployment's max_output_tokens: the request was held at it
        "generationConfig": {"maxOutputTokens": 65536}}


async def test_a_prompt_with_no_user_turn_gets_a_placeholder_one(
    gemini_fake: GeminiFake, client: httpx.AsyncClient
) -> None:
    """System messages alone were the gateway's own 400 (Gemini needs a turn), and a
    greeting alone Gemini's (a single turn may not be the model's)."""
    placeholder = {"role": "user", "parts": [{"text": "."}]}
    for messages, sent in (
        ([{"role": "system", "content": "Write a haiku."}], [placeholder]),
        ([{"role": "system", "content": "Be brief."},
          {"role": "assistant", "content": "Hi! How can I help?"}],
         [placeholder, {"role": "model", "parts": [{"text": "Hi! How can I help?"}]},
          placeholder]),
    ):
        response = await client.post(CHAT, json={"model": "flash", "messages": messages})
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "fake-gemini: ."
        assert gemini_fake.script.requests[-1]["contents"] == sent
        assert await stream_chunks(client, {"model": "flash", "messages": messages})


async def test_system_messages_become_the_system_instruction_and_roles_merge(
    gemini_fake: GeminiFake, client: httpx.AsyncClient
) -> None:
    response = await client.post(CHAT, json={"model": "flash", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "noted"},
        {"role": "developer", "content": "Answer in English."},
        # Blocks kept apart (as /v1/messages lowers Anthropic's cache-marked ones) stay
        # apart: joined, they ran into one another mid-sentence.
        {"role": "system", "content": [{"type": "text", "text": "Cite sources."},
                                       {"type": "text", "text": "Use metric units."}]},
        {"role": "user", "content": "three"},
    ]})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "fake-gemini: three"
    sent = gemini_fake.script.requests[-1]
    assert sent["systemInstruction"] == {"parts": [
        {"text": "Be brief."}, {"text": "Answer in English."}, {"text": "Cite sources."},
        {"text": "Use metric units."}]}
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
        {"role": "model", "parts": [{"text": "noted"}]},
        {"role": "user", "parts": [{"text": "three"}]},
    ]


async def test_image_data_urls_become_inline_data(
    gemini_fake: GeminiFake, client: httpx.AsyncClient
) -> None:
    response = await client.post(CHAT, json={"model": "flash", "messages": [{
        "role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]}]})
    assert response.status_code == 200, response.text
    assert gemini_fake.script.requests[-1]["contents"][0]["parts"] == [
        {"text": "what is this"},
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
    ]


async def test_stream_text(gemini_fake: GeminiFake, client: httpx.AsyncClient) -> None:
    chunks = await stream_chunks(client, {"model": "flash", "messages": _user("a b c"),
                                    "stream_options": {"include_usage": True}})
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "fake-gemini: a b c"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop"
    assert chunks[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": 4,
                                   "total_tokens": 10}
    assert gemini_fake.paths == ["/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"]


async def test_streamed_function_call_is_reassembled(
    gemini_fake: GeminiFake, client: httpx.AsyncClient
) -> None:
    chunks = await stream_chunks(client, {"model": "flash", "tools": TOOLS,
                                    "messages": _user("find the moon")})
    assert streamed_tool_calls(chunks) == {0: {"id": f"call_0.{SIGNATURE}", "name": "lookup",
                                       "arguments": '{"query":"find the moon"}'}}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "tool_calls"


@pytest.mark.parametrize("route", ["flash", "pro3"])
async def test_multi_turn_tool_conversation(
    gemini_fake: GeminiFake, client: httpx.AsyncClient, route: str
) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "weather in Oslo?"}]
    first = (await client.post(CHAT, json={"model": route, "tools": TOOLS,
                                           "messages": messages})).json()
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    message = first["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["id"] == f"call_0.{SIGNATURE}"
    messages += [message, {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"],
                           "content": "sunny"}]
    second = await client.post(CHAT, json={"model": route, "tools": TOOLS, "messages": messages})
    assert second.status_code == 200, second.text
    assert second.json()["choices"][0]["message"]["content"] == "tool said: sunny"
    assert gemini_fake.script.requests[-1]["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "lookup",
                                                      "args": {"query": "weather in Oslo?"}},
                                     "thoughtSignature": SIGNATURE}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "lookup",
                                                         "response": {"result": "sunny"}}}]},
    ]


async def test_gemini_3_takes_a_tool_call_another_provider_made(
    gemini_fake: GeminiFake, client: httpx.AsyncClient
) -> None:
    """Gemini 3 refuses a functionCall part without a thoughtSignature, and a call
    Claude or OpenAI made has none: a fallback to Gemini 3 in the middle of a tool loop
    was a 400 blaming the client."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "toolu_01A", "type": "function",
            "function": {"name": "lookup", "arguments": '{"query": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_01A", "content": "sunny"},
    ]
    answer = await client.post(CHAT, json={"model": "pro3", "tools": TOOLS, "messages": messages})
    assert answer.status_code == 200, answer.text
    call = gemini_fake.script.requests[-1]["contents"][1]["parts"][0]
    assert call["thoughtSignature"] == "skip_thought_signature_validator"
    # Gemini 2.5 validates no signature: nothing is added there.
    assert (await client.post(CHAT, json={"model": "flash", "tools": TOOLS,
                                          "messages": messages})).status_code == 200
    assert "thoughtSignature" not in gemini_fake.script.requests[-1]["contents"][1]["parts"][0]


async def test_tool_calls_are_numbered_through_the_conversation(
    gemini_fake: GeminiFake, client: httpx.AsyncClient
) -> None:
    earlier = {"role": "assistant", "content": None, "tool_calls": [{
        "id": "call_0", "type": "function",
        "function": {"name": "lookup", "arguments": '{"query": "a"}'}}]}
    response = await client.post(CHAT, json={"model": "flash", "tools": TOOLS, "messages": [
        {"role": "user", "content": "a"}, earlier,
        {"role": "tool", "tool_call_id": "call_0", "content": '{"found": true}'},
        {"role": "user", "content": "now b"},
    ]})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["tool_calls"][0]["id"].startswith("call_1.")
    sent = gemini_fake.script.requests[-1]["contents"]
    assert sent[2]["parts"] == [
        {"functionResponse": {"name": "lookup", "response": {"found": True}}},
        {"text": "now b"},
    ]
    unknown = await client.post(CHAT, json={"model": "flash", "messages": [
        {"role": "user", "content": "a"},
        {"role": "tool", "tool_call_id": "call_9", "content": "x"}]})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "messages[1].tool_call_id"


async def test_generation_config_mapping(
    gemini_fake: GeminiFake, client: httpx.AsyncClient
) -> None:
    response = await client.post(CHAT, json={
        "model": "flash", "messages": _user("one two three four five"),
        "temperature": 0.3, "top_p": 0.9, "top_k": 40, "seed": 7, "n": 2,
        "stop": ["four"], "max_completion_tokens": 50, "presence_penalty": 0.5,
        "frequency_penalty": 0.25, "reasoning_effort": "low", "user": "u-1",
    })
    assert response.status_code == 200, response.text
    assert gemini_fake.script.requests[-1]["generationConfig"] == {
        "temperature": 0.3, "topP": 0.9, "topK": 40, "seed": 7, "presencePenalty": 0.5,
        "frequencyPenalty": 0.25, "maxOutputTokens": 50, "stopSequences": ["four"],
        "candidateCount": 2, "thinkingConfig": {"thinkingBudget": 1024},
    }
    choices = response.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert choices[1]["message"]["content"] == "fake-gemini: one two three "


async def test_output_limit_reached_is_length(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json={"model": "flash", "max_tokens": 2,
                                             "messages": _user("many words in here")})
    assert response.json()["choices"][0]["finish_reason"] == "length"
    assert response.json()["choices"][0]["message"]["content"] == "fake-gemini: many"


async def test_tool_schemas_are_lowered_and_tool_choice_mapped(
    gemini_fake: GeminiFake, client: httpx.AsyncClient
) -> None:
    parameters = {
        "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
        "additionalProperties": False,
        "properties": {
            "query": {"type": "string", "format": "email", "minLength": 1},
            "when": {"type": ["string", "null"], "format": "date-time"},
            "place": {"$ref": "#/$defs/Place"},
            "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None},
        },
        "required": ["query", "ghost"],
        "$defs": {"Place": {"type": "object", "additionalProperties": False,
                            "properties": {"city": {"const": "Oslo"}}}},
    }
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": parameters,
                                               "strict": True}},
             {"type": "function", "function": {"name": "ping", "parameters": {
                 "type": "object", "properties": {}}}}]
    forced = await client.post(CHAT, json={
        "model": "flash", "messages": _user("x"), "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "ping"}}})
    assert forced.status_code == 200, forced.text
    assert forced.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "ping"
    sent = gemini_fake.script.requests[-1]
    assert sent["toolConfig"] == {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["ping"]}}
    assert sent["tools"] == [{"functionDeclarations": [
        {"name": "lookup", "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1},
                "when": {"type": "string", "nullable": True, "format": "date-time"},
                "place": {"type": "object", "properties": {"city": {"enum": ["Oslo"]}}},
                "limit": {"nullable": True, "type": "integer", "default": None},
            },
            "required": ["query"]}},
        {"name": "ping"},
    ]}]
    declined = await client.post(CHAT, json={"model": "flash", "messages": _user("x"),
                                             "tools": tools, "tool_choice": "none"})
    assert declined.json()["choices"][0]["message"]["content"] == "fake-gemini: x"
    assert gemini_fake.script.requests[-1]["toolConfig"] == {
        "functionCallingConfig": {"mode": "NONE"}}


async def test_the_output_cap_the_request_was_held_at_reaches_gemini(
    gemini_fake: GeminiFake, client: httpx.AsyncClient
) -> None:
    """maxOutputTokens went only with a client's own limit: a deployment's
    max_output_tokens held the request's budgets and tpm, and Gemini wrote, and
    billed, past it."""
    answer = await client.post(CHAT, json={"model": "flash", "messages": _user("hi")})
    assert answer.status_code == 200, answer.text
    assert gemini_fake.script.requests[-1]["generationConfig"]["maxOutputTokens"] == 65536
    # A deployment without a cap of its own (max_output_tokens is its context window)
    # sends none: Gemini's own limit is lower than any context window.
    await client.post(CHAT, json={"model": "pro3", "messages": _user("hi")})
    assert "maxOutputTokens" not in gemini_fake.script.requests[-1].get("generationConfig", {})
    # candidateCount takes 1 to 8: more is the client's 400 before anything is sent.
    sent = len(gemini_fake.script.requests)
    many = await client.post(CHAT, json={"model": "flash", "messages": _user("hi"), "n": 9})
    assert many.status_code == 400 and many.json()["error"]["param"] == "n", many.text
    assert len(gemini_fake.script.requests) == sent


async def test_json_response_formats(gemini_fake: GeminiFake, client: httpx.AsyncClient) -> None:
    """json_object is Gemini's JSON mode and json_schema its responseJsonSchema, the schema
    sent whole: the answer has the schema's shape (the fake answers {"answer": ...} to bare
    JSON mode and plain text to none), whole and streamed."""
    loose = {"model": "flash", "messages": _user("hi"), "response_format": {"type": "json_object"}}
    response = await client.post(CHAT, json=loose)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == {
        "answer": "fake-gemini: hi"}
    assert gemini_fake.script.requests[-1]["generationConfig"] == {
        "responseMimeType": "application/json", "maxOutputTokens": 65536}
    assert json.loads(streamed_text(await stream_chunks(client, loose))) == {
        "answer": "fake-gemini: hi"}

    strict = {"model": "flash", "messages": _user("forecast"), "response_format": FORECAST_FORMAT}
    fitting = forecast("fake-gemini: forecast")
    response = await client.post(CHAT, json=strict)
    assert response.status_code == 200, response.text
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == fitting
    assert gemini_fake.script.requests[-1]["generationConfig"] == {
        "responseMimeType": "application/json", "responseJsonSchema": FORECAST,
        "maxOutputTokens": 65536}
    assert json.loads(streamed_text(await stream_chunks(client, strict))) == fitting
    assert gemini_fake.paths[-1].endswith(":streamGenerateContent?alt=sse")


async def test_json_output_with_tools_is_gemini_3s(
    gemini_fake: GeminiFake, client: httpx.AsyncClient
) -> None:
    """Gemini 2.5 refuses function declarations with JSON output (400 "Tool use with a
    response mime type: 'application/json' is unsupported"); the refusal reaches the client
    as a 400 with Google's words. Gemini 3 takes both, and calls the tool."""
    ask = {"messages": _user("forecast"), "tools": TOOLS, "response_format": FORECAST_FORMAT}
    refused = await client.post(CHAT, json={"model": "flash", **ask})
    assert refused.status_code == 400, refused.text
    assert "Tool use with a response mime type" in refused.json()["error"]["message"]
    answered = await client.post(CHAT, json={"model": "pro3", **ask})
    assert answered.status_code == 200, answered.text
    assert answered.json()["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(("extra", "param"), [
    ({"logit_bias": {"50256": -100}}, "logit_bias"),
    ({"logprobs": True}, "logprobs"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"audio": {"voice": "alloy"}}, "audio"),
    ({"response_format": {"type": "yaml"}}, "response_format.type"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]},
     "messages[0].content[0].image_url.url"),
])
async def test_what_gemini_cannot_honour_is_refused_by_name(
    gemini_fake: GeminiFake, client: httpx.AsyncClient, extra: dict[str, Any], param: str
) -> None:
    response = await client.post(CHAT, json={"model": "flash", "messages": _user("x"), **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert gemini_fake.script.requests == []


async def test_safety_stop_is_content_filter(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json={"model": "flash", "messages": _user("BLOCKME now")})
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert (choice["finish_reason"], choice["message"]["content"]) == ("content_filter", None)
    chunks = await stream_chunks(client, {"model": "flash", "messages": _user("BLOCKME now")})
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "content_filter"


async def test_blocked_prompt_is_a_content_policy_violation(client: httpx.AsyncClient) -> None:
    payload = {"model": "flash", "messages": _user("BLOCKPROMPT please")}
    response = await client.post(CHAT, json=payload)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "content_policy_violation"
    assert "blockReason SAFETY" in response.json()["error"]["message"]
    streamed = await client.post(CHAT, json={**payload, "stream": True})
    assert streamed.status_code == 400
    assert streamed.json()["error"]["code"] == "content_policy_violation"


async def test_usage_reports_cached_tokens(
    gemini_fake: GeminiFake, client: httpx.AsyncClient
) -> None:
    gemini_fake.cached_tokens = 4
    response = await client.post(CHAT, json={"model": "flash", "messages": _user("cache me")})
    assert response.json()["usage"] == {"prompt_tokens": 5, "completion_tokens": 3,
                                        "total_tokens": 8,
                                        "prompt_tokens_details": {"cached_tokens": 4}}


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_cached_tokens_are_billed_at_the_cache_read_price(
    gemini_fake: GeminiFake, client: httpx.AsyncClient, stream: bool
) -> None:
    """cachedContentTokenCount is part of promptTokenCount: it was billed at the input
    price."""
    gemini_fake.cached_tokens = 4
    payload = {"model": "flash", "messages": _user("cache me"), "stream": stream}
    response = await client.post(CHAT, json=payload)
    assert response.status_code == 200, response.text
    totals = await billed(client)
    assert (totals["tokens_in"], totals["tokens_cached"], totals["tokens_out"]) == (5, 4, 3)
    assert totals["cost"] == pytest.approx(cache_priced_cost(1, 4, 0, 3))


def _exhausted(delay: str) -> Action:
    return Action(status=429, body={"error": {
        "code": 429, "status": "RESOURCE_EXHAUSTED",
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]}})


async def test_resource_exhausted_is_retried_after_its_retry_delay(
    gemini_fake: GeminiFake, client: httpx.AsyncClient
) -> None:
    gemini_fake.script.actions.append(_exhausted("0.05s"))
    response = await client.post(CHAT, json={"model": "flash", "messages": _user("again")})
    assert response.status_code == 200, response.text
    assert len(gemini_fake.script.requests) == 2
    gemini_fake.script.actions += [_exhausted("0.05s"), _exhausted("2s")]
    limited = await client.post(CHAT, json={"model": "flash", "messages": _user("again")})
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert limited.headers["retry-after"] == "2"
    gemini_fake.script.actions += [_exhausted("0.05s"), _exhausted("3s")]
    streamed = await client.post(CHAT, json={"model": "flash", "messages": _user("again"),
                                             "stream": True})
    assert streamed.status_code == 429
    assert streamed.headers["retry-after"] == "3"


async def test_token_limit_is_context_length_exceeded(
    gemini_fake: GeminiFake, client: httpx.AsyncClient
) -> None:
    gemini_fake.script.actions.append(Action(status=400, body={"error": {
        "code": 400, "status": "INVALID_ARGUMENT",
        "message": "The input token count (1200000) exceeds the maximum number of tokens "
                   "allowed (1048576)."}}))
    response = await client.post(CHAT, json={"model": "flash", "messages": _user("long")})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


async def test_refused_keys_are_auth_failures_that_never_leak_the_key(
    gemini_fake: GeminiFake, client: httpx.AsyncClient
) -> None:
    key = gemini_fake.api_key
    gemini_fake.script.actions.append(Action(status=403, body={"error": {
        "code": 403, "status": "PERMISSION_DENIED",
        "message": f"Permission denied for key {key}"}}))
    denied = await client.post(CHAT, json={"model": "flash", "messages": _user("x")})
    assert denied.status_code == 502
    assert denied.json()["error"]["code"] == "upstream_auth_failed"
    gemini_fake.api_key = "AIzaSomeOtherKey"  # the gateway's key is now wrong upstream
    wrong = await client.post(CHAT, json={"model": "flash", "messages": _user("x")})
    assert wrong.status_code == 502, wrong.text
    assert wrong.json()["error"]["code"] == "upstream_auth_failed"
    streamed = await client.post(CHAT, json={"model": "flash", "messages": _user("x"),
                                             "stream": True})
    assert streamed.json()["error"]["code"] == "upstream_auth_failed"
    for response in (denied, wrong, streamed):
        assert key not in response.text and key[-4:] not in response.text


async def test_embeddings_in_batches_with_dimensions(
    gemini_fake: GeminiFake, client: httpx.AsyncClient
) -> None:
    texts = [f"text {i}" for i in range(150)]
    response = await client.post("/v1/embeddings", json={"model": "emb", "input": texts,
                                                         "dimensions": 4})
    assert response.status_code == 200, response.text
    rows = response.json()["data"]
    assert len(rows) == 150 and all(len(row["embedding"]) == 4 for row in rows)
    assert gemini_fake.paths == ["/v1beta/models/gemini-embedding-001:batchEmbedContents"] * 2
    first = gemini_fake.script.requests[0]["requests"]
    assert len(first) == 100
    assert first[0] == {"model": "models/gemini-embedding-001",
                        "content": {"parts": [{"text": "text 0"}]}, "outputDimensionality": 4}


async def test_thinking_tokens_are_reported_as_reasoning_tokens(
    make_gateway: GatewayFactory,
) -> None:
    """thoughtsTokenCount was billed as output (it is) but not told apart."""
    with scripted_upstream() as upstream:
        client = await make_gateway(gemini_on(upstream))
        upstream.now({"candidates": [{"content": {"role": "model", "parts": [{"text": "42"}]},
                                      "finishReason": "STOP", "index": 0}],
                      "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2,
                                        "thoughtsTokenCount": 40, "totalTokenCount": 47}})
        answer = await client.post("/v1/chat/completions", json={
            "model": "flash", "messages": [{"role": "user", "content": "think"}]})
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    assert usage["completion_tokens"] == 42
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 40}


async def test_a_refusal_for_the_accounts_region_or_billing_lets_the_next_member_serve(
    gemini_fake: GeminiFake, make_gateway: GatewayFactory
) -> None:
    """Gemini's 400 FAILED_PRECONDITION ("User location is not supported", billing not
    enabled) is about the account, not the request. Google's error carries its code as
    a number, which was read as the error's kind, so its status went unread: the client
    got a 400 blaming its request and the group's next member was never tried."""
    client = await make_gateway(f"""
    providers:
      gem: {{type: gemini, base_url: "{gemini_fake.base_url}/v1beta",
             api_key: "${{FAKE_GEMINI_KEY}}"}}
      local: {{type: echo}}
    deployments:
      flash: {{provider: gem, model: gemini-2.5-flash, context_window: 1048576}}
      echo: {{provider: local, model: echo-1, context_window: 8192}}
    groups:
      both: {{members: [flash, echo]}}
    routes:
      both: {{group: both}}
    """)
    gemini_fake.script.actions.append(Action(status=400, body={"error": {
        "code": 400, "status": "FAILED_PRECONDITION",
        "message": "User location is not supported for the API use."}}))
    response = await client.post(CHAT, json={"model": "both", "messages": _user("hi")})
    assert response.status_code == 200, response.text
    assert response.headers["x-aigw-deployment"] == "echo"
    assert len(gemini_fake.script.requests) == 1  # refused once, not retried there


async def test_finish_reasons_gemini_added_keep_their_meaning(
    make_gateway: GatewayFactory,
) -> None:
    """UNEXPECTED_TOOL_CALL and TOO_MANY_TOOL_CALLS (a botched call, as
    MALFORMED_FUNCTION_CALL) and LANGUAGE (a refusal) were answered as a plain "stop"
    with no content: a 200 the client could not use, never retried."""
    with scripted_upstream() as upstream:
        client = await make_gateway(gemini_on(upstream))

        def ending(reason: str) -> dict[str, Any]:
            return {"candidates": [{"content": {"role": "model", "parts": []},
                                    "finishReason": reason, "index": 0}],
                    "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 0}}

        hello = {"model": "flash", "messages": [{"role": "user", "content": "hi"}]}
        for reason in ("UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"):
            upstream.now(ending(reason))
            calls = upstream.calls
            botched = await client.post("/v1/chat/completions", json=hello)
            assert botched.status_code == 502, botched.text
            assert reason in botched.json()["error"]["message"]
            assert upstream.calls - calls == 2  # retried once, as a server error is
        upstream.now(ending("LANGUAGE"))
        refused = await client.post("/v1/chat/completions", json=hello)
    assert refused.status_code == 200, refused.text
    assert refused.json()["choices"][0]["finish_reason"] == "content_filter"
