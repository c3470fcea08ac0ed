"""The bedrock adapter against the Bedrock fake: SigV4, Converse both ways, event streams."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from aigw.compiler import CompileResult, compile_gateway
from aigw.compiler.graph import Deployment
from aigw.runtime.errors import UpstreamConnectionError
from aigw.runtime.providers.base import Usage
from aigw.runtime.providers.bedrock import BedrockAdapter
from aigw.runtime.tokens import TokenCounter

from ..fakes.bedrock_fake import BedrockFake
from ..fakes.brain import Action
from .conftest import (
    CACHE_PRICED,
    CHAT,
    FORECAST,
    FORECAST_FORMAT,
    MARKED_MESSAGE,
    PIXEL,
    TOOLS,
    GatewayFactory,
    billed,
    cache_priced_cost,
    chat_call,
    compiled,
    finish_reasons,
    forecast,
    stream_chunks,
    stream_events,
    streamed_text,
    streamed_tool_calls,
)

CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PROFILE = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"


def _sections(fake: BedrockFake) -> str:
    base = fake.base_url  # type: ignore[attr-defined]
    return f"""
    providers:
      aws: {{type: bedrock, region: us-east-1, base_url: "{base}"}}
      aws-key: {{type: bedrock, region: us-east-1, base_url: "{base}",
                 api_key: "${{FAKE_BEDROCK_API_KEY}}"}}
      local: {{type: echo}}
    deployments:
      claude: {{provider: aws, model: "{CLAUDE}", context_window: 200000,
                max_output_tokens: 1024, capabilities: [streaming, tools, vision, json_schema],
                {CACHE_PRICED}}}
      profile: {{provider: aws, model: "{PROFILE}", context_window: 200000}}
      keyed: {{provider: aws-key, model: "amazon.nova-lite-v1:0", context_window: 300000,
               max_output_tokens: 5000}}
      echo: {{provider: local, model: echo-1, context_window: 8192}}
    groups:
      once: {{members: [claude], retry: {{attempts: 0}}}}
      bedrock-then-echo: {{members: [claude, echo], retry: {{attempts: 0}}}}
    routes:
      claude: {{deployment: claude}}
      profile: {{deployment: profile}}
      keyed: {{deployment: keyed}}
      once: {{group: once}}
      fallback: {{group: bedrock-then-echo}}
    """


async def _gateway(fake: BedrockFake, make_gateway: GatewayFactory) -> httpx.AsyncClient:
    return await make_gateway(_sections(fake))


async def test_plain_chat_is_signed_and_translated_both_ways(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    response = await client.post(CHAT, json={
        "model": "claude", "temperature": 0.2, "top_p": 0.9, "stop": "STOP", "user": "u-1",
        "messages": [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "hello there"}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "fake-bedrock: hello there"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["model"] == CLAUDE
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert bedrock_fake.script.requests[-1] == {
        "messages": [{"role": "user", "content": [{"text": "hello there"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 1024, "temperature": 0.2, "topP": 0.9,
                            "stopSequences": ["STOP"]},
        "additionalModelResponseFieldPaths": ["/delta/stop_sequence", "/stop_sequence"],
    }
    assert bedrock_fake.paths[-1] == f"/model/{CLAUDE}/converse"
    headers = bedrock_fake.script.headers[-1]
    assert headers["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={bedrock_fake.access_key}/{headers['x-amz-date'][:8]}"
        "/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date;"
        "x-amz-security-token, Signature=")
    assert headers["x-amz-security-token"] == bedrock_fake.session_token


async def test_an_arn_model_id_is_encoded_signed_and_sent_without_a_cap(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    response = await client.post(CHAT, json={
        "model": "profile", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    assert bedrock_fake.paths[-1] == (
        "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fabc123"
        "/converse")
    # The deployment sets no max_output_tokens and the client asked for none.
    assert "inferenceConfig" not in bedrock_fake.script.requests[-1]


async def test_long_term_credentials_are_signed_without_a_session_token(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    bedrock_fake.session_token = None
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    client = await _gateway(bedrock_fake, make_gateway)
    response = await client.post(CHAT, json={
        "model": "claude", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    headers = bedrock_fake.script.headers[-1]
    assert "x-amz-security-token" not in headers
    assert "SignedHeaders=content-type;host;x-amz-date," in headers["authorization"]


async def test_a_bedrock_api_key_is_sent_as_a_bearer_token_instead_of_a_signature(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    response = await client.post(CHAT, json={
        "model": "keyed", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200, response.text
    headers = bedrock_fake.script.headers[-1]
    assert headers["authorization"] == f"Bearer {bedrock_fake.api_key}"
    assert "x-amz-date" not in headers
    assert bedrock_fake.script.requests[-1]["inferenceConfig"] == {"maxTokens": 5000}


async def test_stream_text_with_usage(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    chunks = await stream_chunks(client, {
        "model": "claude", "messages": [{"role": "user", "content": "a b c"}],
        "stream_options": {"include_usage": True}})
    assert streamed_text(chunks) == "fake-bedrock: a b c"
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": 4,
                                   "total_tokens": 10}
    assert bedrock_fake.paths[-1] == f"/model/{CLAUDE}/converse-stream"


async def test_stream_reassembles_a_tool_call_after_text(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    chunks = await stream_chunks(client, {
        "model": "claude", "tools": TOOLS,
        "messages": [{"role": "user", "content": "find the moon"}]})
    # The toolUse block is Converse's block 1; it is OpenAI's tool call 0.
    assert streamed_tool_calls(chunks) == {0: {"id": "tooluse_fake1", "name": "lookup",
                                       "arguments": json.dumps({"query": "find the moon"})}}
    assert streamed_text(chunks) == "I'll call lookup."
    assert finish_reasons(chunks) == ["tool_calls"]
    assert bedrock_fake.script.requests[-1]["toolConfig"] == {"tools": [{"toolSpec": {
        "name": "lookup", "description": "Look a thing up",
        "inputSchema": {"json": {"type": "object",
                                 "properties": {"query": {"type": "string"}}}}}}]}


async def test_a_streamed_tool_call_with_no_input_has_arguments_that_parse(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    """ConverseStream sends no input fragment for an empty input: the call's arguments
    were "", which json.loads refuses (the whole answer gives "{}")."""
    client = await _gateway(bedrock_fake, make_gateway)
    bedrock_fake.script.actions.append(Action(body={
        "output": {"message": {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "tooluse_a", "name": "lookup", "input": {"query": "x"}}},
            {"toolUse": {"toolUseId": "tooluse_b", "name": "now", "input": {}}}]}},
        "stopReason": "tool_use",
        "usage": {"inputTokens": 9, "outputTokens": 2, "totalTokens": 11},
        "metrics": {"latencyMs": 5}}))
    chunks = await stream_chunks(client, {
        "model": "claude", "tools": TOOLS,
        "messages": [{"role": "user", "content": "look it up, and the time"}]})
    calls = streamed_tool_calls(chunks)
    assert [(call["id"], json.loads(call["arguments"])) for call in calls.values()] == [
        ("tooluse_a", {"query": "x"}), ("tooluse_b", {})]


async def test_a_conversation_the_assistant_starts_gets_a_user_turn_first(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    """A chat UI's greeting before the first user message: Converse refuses a first
    turn that is not the user's."""
    client = await _gateway(bedrock_fake, make_gateway)
    response = await client.post(CHAT, json={"model": "claude", "messages": [
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "weather"}]})
    assert response.status_code == 200, response.text
    assert bedrock_fake.script.requests[-1]["messages"] == [
        {"role": "user", "content": [{"text": "."}]},
        {"role": "assistant", "content": [{"text": "Hi! How can I help?"}]},
        {"role": "user", "content": [{"text": "weather"}]}]


async def test_multi_turn_tool_conversation(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    first = (await client.post(CHAT, json={
        "model": "claude", "tools": TOOLS, "messages": [{"role": "user", "content": "weather?"}],
    })).json()
    message = first["choices"][0]["message"]
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    assert message["tool_calls"] == [{"id": "tooluse_fake1", "type": "function", "function": {
        "name": "lookup", "arguments": json.dumps({"query": "weather?"})}}]
    second = await client.post(CHAT, json={"model": "claude", "tools": TOOLS, "messages": [
        {"role": "user", "content": "weather?"},
        message,
        {"role": "tool", "tool_call_id": "tooluse_fake1", "content": "sunny"},
        {"role": "user", "content": "and tomorrow?"},
    ]})
    assert second.status_code == 200, second.text
    assert second.json()["choices"][0]["message"]["content"] == "tool said: sunny"
    assert bedrock_fake.script.requests[-1]["messages"] == [
        {"role": "user", "content": [{"text": "weather?"}]},
        {"role": "assistant", "content": [
            {"text": "I'll call lookup."},
            {"toolUse": {"toolUseId": "tooluse_fake1", "name": "lookup",
                         "input": {"query": "weather?"}}}]},
        {"role": "user", "content": [
            {"toolResult": {"toolUseId": "tooluse_fake1", "content": [{"text": "sunny"}]}},
            {"text": "and tomorrow?"}]},
    ]


@pytest.mark.parametrize(("tool_choice", "sent"), [
    ("required", {"any": {}}),
    ({"type": "function", "function": {"name": "lookup"}}, {"tool": {"name": "lookup"}}),
    ("auto", None),
    (None, None),
])
async def test_tool_choice_is_mapped(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory,
    tool_choice: object, sent: dict[str, object] | None,
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    response = await client.post(CHAT, json={
        "model": "claude", "tools": TOOLS, "tool_choice": tool_choice,
        "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 200, response.text
    assert bedrock_fake.script.requests[-1]["toolConfig"].get("toolChoice") == sent
    assert response.json()["choices"][0]["finish_reason"] == "tool_calls"


async def test_tool_choice_none_sends_no_tools(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    response = await client.post(CHAT, json={
        "model": "claude", "tools": TOOLS, "tool_choice": "none",
        "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 200, response.text
    assert "toolConfig" not in bedrock_fake.script.requests[-1]
    assert response.json()["choices"][0]["message"]["content"] == "fake-bedrock: x"


async def test_images_become_bytes_and_urls_are_refused(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    response = await client.post(CHAT, json={"model": "claude", "messages": [{
        "role": "user", "content": [
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}]}]})
    assert response.status_code == 200, response.text
    assert bedrock_fake.script.requests[-1]["messages"][0]["content"] == [
        {"text": "describe"}, {"image": {"format": "png", "source": {"bytes": PIXEL}}}]
    refused = await client.post(CHAT, json={"model": "claude", "messages": [{
        "role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "messages[0].content[0].image_url"
    assert len(bedrock_fake.script.requests) == 1


async def test_stop_reasons_map_to_finish_reasons(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    words = "one two three four five"

    async def finish(**extra: Any) -> tuple[str, str | None]:
        response = await client.post(CHAT, json={
            "model": "claude", "messages": [{"role": "user", "content": words}], **extra})
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        return choice["finish_reason"], choice["message"]["content"]

    assert await finish(max_completion_tokens=3) == ("length", "fake-bedrock: one two")
    assert await finish(stop=["three"]) == ("stop", "fake-bedrock: one two ")
    for reason in ("guardrail_intervened", "content_filtered"):
        bedrock_fake.script.actions.append(Action(body={
            "output": {"message": {"role": "assistant", "content": [{"text": "Sorry."}]}},
            "stopReason": reason, "usage": {"inputTokens": 4, "outputTokens": 1}}))
        assert await finish() == ("content_filter", "Sorry.")
    chunks = await stream_chunks(client, {
        "model": "claude", "messages": [{"role": "user", "content": words}], "max_tokens": 2})
    assert (streamed_text(chunks), finish_reasons(chunks)) == ("fake-bedrock: one", ["length"])


async def test_a_stop_sequence_named_at_the_top_level_is_read_too(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    """The API reference's example path is /stop_sequence: should Converse fill it (live
    answers fill /delta/stop_sequence, which the e2e test covers), it is read as well."""
    client = await _gateway(bedrock_fake, make_gateway)
    bedrock_fake.script.actions.append(Action(body={
        "output": {"message": {"role": "assistant", "content": [{"text": "one two"}]}},
        "stopReason": "stop_sequence", "additionalModelResponseFields": {"stop_sequence": "END"},
        "usage": {"inputTokens": 4, "outputTokens": 2}}))
    answer = await client.post("/v1/messages", json={
        "model": "claude", "max_tokens": 10, "stop_sequences": ["END"],
        "messages": [{"role": "user", "content": "count"}]})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["stop_reason"], answer.json()["stop_sequence"]) == (
        "stop_sequence", "END")


async def test_a_malformed_answer_is_retried_and_a_temperature_over_1_refused_unsent(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    """stopReason malformed_tool_use / malformed_model_output was a 200 with "stop"
    (and a tool call that does not parse); a temperature over 1, which Converse refuses,
    was sent, and its ValidationException ended the request with no fallback."""
    client = await _gateway(bedrock_fake, make_gateway)
    hello = [{"role": "user", "content": "one two"}]
    for reason in ("malformed_tool_use", "malformed_model_output"):
        bedrock_fake.script.actions.append(Action(body={
            "output": {"message": {"role": "assistant", "content": [{"text": "{"}]}},
            "stopReason": reason, "usage": {"inputTokens": 4, "outputTokens": 1}}))
        sent = len(bedrock_fake.script.requests)
        answer = await client.post(CHAT, json={"model": "claude", "messages": hello})
        assert answer.status_code == 200, answer.text  # the retry's answer
        assert answer.json()["choices"][0]["finish_reason"] == "stop"
        assert len(bedrock_fake.script.requests) - sent == 2
    sent = len(bedrock_fake.script.requests)
    hot = await client.post(CHAT, json={"model": "claude", "messages": hello, "temperature": 1.5})
    assert hot.status_code == 400 and hot.json()["error"]["param"] == "temperature", hot.text
    assert len(bedrock_fake.script.requests) == sent


def _deployment(fake: BedrockFake, tmp_path: Path, name: str = "claude") -> Deployment:
    return compiled(tmp_path, _sections(fake), {"FAKE_BEDROCK_API_KEY": "unused"}).deployments[name]


async def test_cache_points_and_cached_usage(
    bedrock_fake: BedrockFake, counter: TokenCounter, tmp_path: Path
) -> None:
    deployment = _deployment(bedrock_fake, tmp_path)
    adapter = BedrockAdapter(deployment.provider, counter)
    request = {"model": "claude", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "a long shared instruction",
                                        "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "hi"}]}
    try:
        first = await adapter.complete(chat_call(deployment, request))
        deltas = [delta async for delta in adapter.stream(chat_call(deployment, request))]
    finally:
        await adapter.aclose()
    assert bedrock_fake.script.requests[0]["system"] == [
        {"text": "a long shared instruction"}, {"cachePoint": {"type": "default"}}]
    assert first.usage == Usage(prompt_tokens=8, completion_tokens=2, cached_tokens=0,
                                cache_creation_tokens=4)
    assert deltas[-1].usage == Usage(prompt_tokens=8, completion_tokens=2, cached_tokens=4,
                                     cache_creation_tokens=0)
    assert all(delta.usage is None for delta in deltas[:-1])


async def test_messages_api_cache_marks_and_top_k_reach_claude_on_bedrock(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    """/v1/messages dropped every cache_control (and top_k) before Bedrock: marks are
    cache points after the marked text and tools, top_k Claude's own model field."""
    client = await _gateway(bedrock_fake, make_gateway)
    answer = await client.post("/v1/messages", json={**MARKED_MESSAGE, "model": "claude"})
    assert answer.status_code == 200, answer.text
    point = {"cachePoint": {"type": "default"}}
    sent = bedrock_fake.script.requests[-1]
    assert sent["system"] == [{"text": "You are terse."},
                              {"text": "a long shared instruction"}, point]
    assert sent["toolConfig"]["tools"][1:] == [point]
    assert sent["messages"][2]["content"][1:] == [{"text": "and tomorrow?"}, point]
    assert sent["additionalModelRequestFields"] == {"top_k": 5}
    # Another model has no top_k: Anthropic's hint is left out, a client's own refused.
    answer = await client.post("/v1/messages", json={
        "model": "keyed", "max_tokens": 10, "top_k": 5,
        "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200, answer.text
    assert "additionalModelRequestFields" not in bedrock_fake.script.requests[-1]
    refused = await client.post(CHAT, json={
        "model": "keyed", "messages": [{"role": "user", "content": "x"}], "top_k": 5})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "top_k"


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_cache_writes_and_reads_are_billed_at_their_prices(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory, stream: bool
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    payload = {"model": "claude", "stream": stream, "messages": [
        {"role": "system", "content": [{"type": "text", "text": "a long shared instruction",
                                        "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "hi"}]}
    for _ in range(2):  # the first writes the system prompt to the cache, the second reads it
        response = await client.post(CHAT, json=payload)
        assert response.status_code == 200, response.text
    totals = await billed(client)
    assert (totals["tokens_in"], totals["tokens_cached"]) == (16, 4)
    assert totals["cost"] == pytest.approx(
        cache_priced_cost(8, 4, 4, int(totals["tokens_out"])))


@pytest.mark.parametrize(("status", "kind", "message", "expected_status", "code"), [
    (429, "ThrottlingException", "Too many requests, please wait before trying again.",
     429, "rate_limit_exceeded"),
    (400, "ServiceQuotaExceededException", "Your request exceeds the service quota.",
     429, "rate_limit_exceeded"),
    (400, "ValidationException", "Input is too long for requested model.",
     400, "context_length_exceeded"),
    (400, "ValidationException", "input length and `max_tokens` exceed context limit",
     400, "context_length_exceeded"),
    (400, "ValidationException", "messages.0.content: blank", 400, "invalid_request"),
    (403, "AccessDeniedException", "You don't have access to the model with the specified "
     "model ID.", 502, "upstream_auth_failed"),
    (408, "ModelTimeoutException", "Model has timed out in processing the request.",
     504, "upstream_timeout"),
    (503, "ServiceUnavailableException", "Service is unavailable.", 503, "upstream_overloaded"),
    (500, "InternalServerException", "Internal error", 502, "upstream_error"),
    (424, "ModelErrorException", "The model returned an error", 502, "upstream_error"),
])
async def test_error_types_keep_their_meaning(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory,
    status: int, kind: str, message: str, expected_status: int, code: str,
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    for stream in (False, True):
        bedrock_fake.script.actions.append(Action(status=status,
                                                  body={"type": kind, "message": message}))
        response = await client.post(CHAT, json={
            "model": "once", "stream": stream, "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == expected_status, response.text
        assert response.json()["error"]["code"] == code


async def test_a_retryable_failure_falls_back_and_retry_after_is_kept(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    bedrock_fake.script.actions.append(Action(status=500))
    response = await client.post(CHAT, json={
        "model": "fallback", "messages": [{"role": "user", "content": "still here"}]})
    assert response.status_code == 200, response.text
    assert response.headers["x-aigw-deployment"] == "echo"
    bedrock_fake.script.actions.append(Action(status=429, headers={"retry-after": "7"}))
    limited = await client.post(CHAT, json={
        "model": "once", "messages": [{"role": "user", "content": "x"}]})
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"


async def test_an_exception_frame_mid_stream_ends_the_stream_with_its_meaning(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    bedrock_fake.script.actions.append(Action(
        body={"exception": "throttlingException", "message": "Too many tokens"},
        cut_stream_after=3))
    events = await stream_events(client, {
        "model": "claude", "messages": [{"role": "user", "content": "a b c"}]})
    assert streamed_text(events[:-1]) == "fake-bedrock: a"
    assert events[-1]["error"]["code"] == "rate_limit_exceeded"


async def test_an_exception_frame_before_any_content_falls_back(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    bedrock_fake.script.actions.append(Action(
        body={"exception": "modelStreamErrorException", "message": "boom"}, cut_stream_after=1))
    async with client.stream("POST", CHAT, json={
        "model": "fallback", "stream": True,
        "messages": [{"role": "user", "content": "still here"}]}) as response:
        assert response.status_code == 200
        assert response.headers["x-aigw-deployment"] == "echo"
        assert response.headers["x-aigw-attempts"] == "2"


async def test_a_dropped_stream_is_an_upstream_failure(
    bedrock_fake: BedrockFake, counter: TokenCounter, tmp_path: Path
) -> None:
    deployment = _deployment(bedrock_fake, tmp_path)
    adapter = BedrockAdapter(deployment.provider, counter)
    bedrock_fake.script.actions.append(Action(cut_stream_after=3))
    request = {"model": "claude", "messages": [{"role": "user", "content": "a b c"}]}
    try:
        with pytest.raises(UpstreamConnectionError, match="provider 'aws' is unreachable"):
            _ = [delta async for delta in adapter.stream(chat_call(deployment, request))]
    finally:
        await adapter.aclose()


async def test_aws_secrets_never_reach_the_client(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    secrets = [bedrock_fake.access_key, bedrock_fake.secret_key, bedrock_fake.session_token or ""]
    echoed = f"bad request from {' and '.join(secrets)}"
    bedrock_fake.script.actions.append(Action(status=400, body={"type": "ValidationException",
                                                                "message": echoed}))
    bedrock_fake.script.actions.append(Action(body={"exception": "validationException",
                                                    "message": echoed}, cut_stream_after=0))
    texts = []
    for stream in (False, True):
        response = await client.post(CHAT, json={
            "model": "once", "stream": stream, "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == 400, response.text
        assert "bad request from ***" in response.text
        texts.append(response.text)
    # A signature AWS cannot verify is answered with the canonical request, token and all.
    bedrock_fake.secret_key = "not-the-secret-the-gateway-signs-with"
    refused = await client.post(CHAT, json={
        "model": "once", "messages": [{"role": "user", "content": "x"}]})
    assert refused.status_code == 502
    assert refused.json()["error"]["code"] == "upstream_auth_failed"
    texts.append(refused.text)
    for text in texts:
        for secret in secrets:
            assert secret not in text


async def test_missing_aws_credentials_are_an_auth_failure(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    client = await _gateway(bedrock_fake, make_gateway)
    response = await client.post(CHAT, json={
        "model": "once", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_auth_failed"
    assert bedrock_fake.script.requests == []


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2}, "n"),
    ({"seed": 7}, "seed"),
    ({"parallel_tool_calls": False, "tools": TOOLS}, "parallel_tool_calls"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logprobs": True}, "logprobs"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
])
async def test_a_parameter_converse_cannot_honour_is_refused_by_name(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory,
    extra: dict[str, object], param: str,
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    response = await client.post(CHAT, json={
        "model": "claude", "messages": [{"role": "user", "content": "x"}], **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert bedrock_fake.script.requests == []


async def test_a_json_schema_is_sent_as_converse_structured_output(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    """response_format json_schema was refused with a 400; Converse has structured output
    (outputConfig.textFormat, the schema as a JSON string), which the answer fits, whole
    and streamed."""
    client = await _gateway(bedrock_fake, make_gateway)
    ask = {"model": "claude", "messages": [{"role": "user", "content": "forecast"}],
           "response_format": FORECAST_FORMAT}
    response = await client.post(CHAT, json=ask)
    assert response.status_code == 200, response.text
    fitting = forecast("fake-bedrock: forecast")
    assert json.loads(response.json()["choices"][0]["message"]["content"]) == fitting
    text_format = bedrock_fake.script.requests[-1]["outputConfig"]["textFormat"]
    definition = text_format["structure"]["jsonSchema"]
    assert (text_format["type"], definition["name"]) == ("json_schema", "forecast")
    assert json.loads(definition["schema"]) == FORECAST
    assert json.loads(streamed_text(await stream_chunks(client, ask))) == fitting
    assert bedrock_fake.paths[-1].endswith("/converse-stream")
    assert "outputConfig" in bedrock_fake.script.requests[-1]


async def test_a_tool_conversation_needs_its_tools(
    bedrock_fake: BedrockFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(bedrock_fake, make_gateway)
    history = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {
            "name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"}]
    for extra, param in (({}, "tools"), ({"tools": TOOLS, "tool_choice": "none"}, "tool_choice")):
        response = await client.post(CHAT, json={"model": "claude", "messages": history,
                                                 **extra})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


def _compile(tmp_path: Path, providers: str, kind: str = "chat") -> CompileResult:
    (tmp_path / "gateway.yaml").write_text(
        "version: 1\nproviders:\n" + textwrap.indent(textwrap.dedent(providers), "  ")
        + f"deployments:\n  d: {{provider: p, model: m, context_window: 8192, kind: {kind}}}\n"
        "routes:\n  r: {deployment: d}\n")
    return compile_gateway(tmp_path, {})


def _said(result: CompileResult) -> list[str]:
    return [f"{item.code.id} {item.message}" for item in result.diagnostics]


def test_the_compiler_requires_a_region_and_keeps_it_to_bedrock(tmp_path: Path) -> None:
    assert _said(_compile(tmp_path, "p: {type: bedrock}\n")) == [
        "AGW313 provider 'p' of type 'bedrock' needs region"]
    assert _said(_compile(tmp_path, "p: {type: echo, region: us-east-1}\n")) == [
        "AGW319 provider 'p' of type 'echo' does not take region"]
    assert _said(_compile(tmp_path, "p: {type: bedrock, region: us-east-1}\n", "embeddings")) \
        == ["AGW321 deployment 'd' serves embeddings, but provider 'p' of type 'bedrock' has "
            "no embeddings API"]
    result = _compile(tmp_path, "p: {type: bedrock, region: eu-west-3}\n")
    assert result.graph is not None and result.diagnostics == ()
    assert result.graph.providers["p"].region == "eu-west-3"


def test_without_botocore_a_bedrock_provider_is_disabled_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "botocore", None)  # how Python spells "not installed"
    result = _compile(tmp_path, "p: {type: bedrock, region: us-east-1}\n")
    assert _said(result) == ["AGW322 provider 'p' of type 'bedrock' needs botocore, which is "
                             "not installed; its deployments will not serve"]
    assert result.diagnostics[0].hint == "install the extra where aigw serves: " \
        "pip install 'aigw[bedrock]'"
    assert result.graph is not None
    assert result.graph.providers["p"].disabled_reason == (
        "provider type 'bedrock' needs botocore: pip install 'aigw[bedrock]'")


def test_the_registry_imports_no_extra_until_such_a_provider_is_configured() -> None:
    probe = (
        "import sys\n"
        "from aigw.runtime.app import create_app\n"
        "from aigw.runtime.providers.registry import build_adapters\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'botocore'"
        " or m.startswith('google.auth') or m.endswith(('.bedrock', '.vertex'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_the_fake_speaks_the_wire_format_boto3_reads(bedrock_fake: BedrockFake) -> None:
    """boto3 signs and parses event streams its own way: the fake must satisfy it too."""
    boto3 = pytest.importorskip("boto3")
    sdk = boto3.client(
        "bedrock-runtime", region_name="us-east-1",
        endpoint_url=bedrock_fake.base_url,  # type: ignore[attr-defined]
        aws_access_key_id=bedrock_fake.access_key,
        aws_secret_access_key=bedrock_fake.secret_key,
        aws_session_token=bedrock_fake.session_token)
    messages = [{"role": "user", "content": [{"text": "find it"}]}]
    tools = {"tools": [{"toolSpec": {"name": "lookup", "inputSchema": {"json": {
        "type": "object"}}}}]}
    answer = sdk.converse(modelId=PROFILE, messages=messages, toolConfig=tools)
    assert answer["stopReason"] == "tool_use"
    assert answer["output"]["message"]["content"][1]["toolUse"]["input"] == {"query": "find it"}
    stream = sdk.converse_stream(modelId=CLAUDE, messages=messages)["stream"]
    kinds = [next(iter(item)) for item in stream]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    stopped = {"modelId": CLAUDE, "messages": messages, "inferenceConfig": {"stopSequences": [
        "it"]}, "additionalModelResponseFieldPaths": ["/delta/stop_sequence", "/stop_sequence"]}
    fields = {"delta": {"stop_sequence": "it"}, "stop_sequence": None}
    assert sdk.converse(**stopped)["additionalModelResponseFields"] == fields
    [stop] = [item["messageStop"] for item in sdk.converse_stream(**stopped)["stream"]
              if "messageStop" in item]
    assert stop == {"stopReason": "stop_sequence", "additionalModelResponseFields": fields}
    sdk.close()
