"""The anthropic adapter against the Anthropic fake: translation both ways, streams, errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from aigw.compiler.graph import Deployment
from aigw.runtime.providers.anthropic import AnthropicAdapter
from aigw.runtime.providers.base import Usage
from aigw.runtime.tokens import TokenCounter

from ..conftest import metric_sample
from ..fakes.anthropic_fake import AnthropicFake
from ..fakes.brain import Action
from .conftest import (
    CACHE_PRICED,
    CHAT,
    EPHEMERAL,
    MARKED_MESSAGE,
    PIXEL,
    TOOLS,
    GatewayFactory,
    billed,
    cache_priced_cost,
    chat_call,
    compiled,
    finish_reasons,
    stream_chunks,
    stream_events,
    streamed_text,
    streamed_tool_calls,
)


def _sections(fake: AnthropicFake) -> str:
    base = fake.base_url  # type: ignore[attr-defined]
    return f"""
    providers:
      claude: {{type: anthropic, base_url: "{base}", api_key: "${{FAKE_ANTHROPIC_KEY}}"}}
      claude-v1: {{type: anthropic, base_url: "{base}/v1", api_key: "${{FAKE_ANTHROPIC_KEY}}"}}
      local: {{type: echo}}
    deployments:
      sonnet: {{provider: claude, model: claude-sonnet-4-5, context_window: 200000,
                max_output_tokens: 1024, capabilities: [streaming, tools, vision, json_schema],
                {CACHE_PRICED}}}
      haiku: {{provider: claude-v1, model: claude-haiku-4-5, context_window: 200000,
               max_output_tokens: 512, capabilities: [streaming]}}
      echo: {{provider: local, model: echo-1, context_window: 8192}}
    groups:
      once: {{members: [sonnet], retry: {{attempts: 0}}}}
      claude-then-echo: {{members: [haiku, echo], retry: {{attempts: 0}}}}
    routes:
      claude: {{deployment: sonnet}}
      haiku: {{deployment: haiku}}
      once: {{group: once}}
      fallback: {{group: claude-then-echo}}
    """


async def _gateway(fake: AnthropicFake, make_gateway: GatewayFactory) -> httpx.AsyncClient:
    return await make_gateway(_sections(fake))


async def test_plain_chat_is_translated_both_ways(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    response = await client.post(CHAT, json={
        "model": "claude", "messages": [{"role": "user", "content": "hello there"}],
        "temperature": 0.2, "top_p": 0.9, "stop": "STOP", "user": "user-42",
    })
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "fake-anthropic: hello there"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["model"] == "claude-sonnet-4-5"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert anthropic_fake.script.requests[-1] == {
        "model": "claude-sonnet-4-5", "max_tokens": 1024,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}],
        "temperature": 0.2, "top_p": 0.9, "stop_sequences": ["STOP"],
        "metadata": {"user_id": "user-42"},
    }
    headers = anthropic_fake.script.headers[-1]
    assert headers["x-api-key"] == anthropic_fake.api_key
    assert headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in headers


async def test_a_base_url_ending_in_v1_still_reaches_v1_messages(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    response = await client.post(CHAT, json={
        "model": "haiku", "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 50})
    assert response.status_code == 200, response.text
    assert anthropic_fake.script.requests[-1]["max_tokens"] == 50


async def test_a_conversation_the_assistant_starts_gets_a_user_turn_first(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    """A chat UI's greeting before the first user message: Anthropic refuses a first
    turn that is not the user's."""
    client = await _gateway(anthropic_fake, make_gateway)
    response = await client.post(CHAT, json={"model": "claude", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "weather"}]})
    assert response.status_code == 200, response.text
    assert anthropic_fake.script.requests[-1]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi! How can I help?"}]},
        {"role": "user", "content": [{"type": "text", "text": "weather"}]}]


async def test_system_and_developer_messages_are_split_out_and_turns_merged(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    response = await client.post(CHAT, json={"model": "claude", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
        {"role": "user", "content": "first", "name": "ann"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "fake-anthropic: firstsecond"
    sent = anthropic_fake.script.requests[-1]
    assert sent["system"] == [{"type": "text", "text": "Be brief."},
                              {"type": "text", "text": "Answer in English."}]
    assert sent["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "first"}, {"type": "text", "text": "second"}]}]


async def test_stream_text_with_usage(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    chunks = await stream_chunks(client, {
        "model": "claude", "messages": [{"role": "user", "content": "a b c"}],
        "stream_options": {"include_usage": True}})
    assert streamed_text(chunks) == "fake-anthropic: a b c"
    assert finish_reasons(chunks) == ["stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": 4,
                                   "total_tokens": 10}
    assert anthropic_fake.script.requests[-1]["stream"] is True


async def test_stream_reassembles_a_tool_call_after_text(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    chunks = await stream_chunks(client, {
        "model": "claude", "tools": TOOLS,
        "messages": [{"role": "user", "content": "find the moon"}]})
    # The tool_use block is Anthropic's block 1; it is OpenAI's tool call 0.
    assert streamed_tool_calls(chunks) == {0: {"id": "toolu_fake1", "name": "lookup",
                                       "arguments": json.dumps({"query": "find the moon"})}}
    assert streamed_text(chunks) == "I'll call lookup."
    assert finish_reasons(chunks) == ["tool_calls"]
    assert anthropic_fake.script.requests[-1]["tools"] == [{
        "name": "lookup", "description": "Look a thing up",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]
    assert "tool_choice" not in anthropic_fake.script.requests[-1]


async def test_a_streamed_tool_call_with_no_input_has_arguments_that_parse(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    """Anthropic streams an empty input as one empty fragment: the call's arguments were
    "", which json.loads refuses (the whole answer gives "{}")."""
    client = await _gateway(anthropic_fake, make_gateway)
    anthropic_fake.script.actions.append(Action(body={
        "id": "msg_two", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [
            {"type": "tool_use", "id": "toolu_a", "name": "lookup", "input": {"query": "x"}},
            {"type": "tool_use", "id": "toolu_b", "name": "now", "input": {}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 2}}))
    chunks = await stream_chunks(client, {
        "model": "claude", "tools": TOOLS,
        "messages": [{"role": "user", "content": "look it up, and the time"}]})
    calls = streamed_tool_calls(chunks)
    assert [(call["id"], json.loads(call["arguments"])) for call in calls.values()] == [
        ("toolu_a", {"query": "x"}), ("toolu_b", {})]


async def test_multi_turn_tool_conversation(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    first = (await client.post(CHAT, json={
        "model": "claude", "tools": TOOLS, "messages": [{"role": "user", "content": "weather?"}],
    })).json()
    message = first["choices"][0]["message"]
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    assert message["content"] == "I'll call lookup."
    assert message["tool_calls"] == [{"id": "toolu_fake1", "type": "function", "function": {
        "name": "lookup", "arguments": json.dumps({"query": "weather?"})}}]
    second = await client.post(CHAT, json={"model": "claude", "tools": TOOLS, "messages": [
        {"role": "user", "content": "weather?"},
        message,
        {"role": "tool", "tool_call_id": "toolu_fake1", "content": "sunny"},
        {"role": "user", "content": "and tomorrow?"},
    ]})
    assert second.status_code == 200, second.text
    assert second.json()["choices"][0]["message"]["content"] == "tool said: sunny"
    assert anthropic_fake.script.requests[-1]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "I'll call lookup."},
            {"type": "tool_use", "id": "toolu_fake1", "name": "lookup",
             "input": {"query": "weather?"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_fake1", "content": "sunny"},
            {"type": "text", "text": "and tomorrow?"}]},
    ]


@pytest.mark.parametrize(("tool_choice", "parallel", "sent"), [
    ("required", None, {"type": "any"}),
    ({"type": "function", "function": {"name": "lookup"}}, False,
     {"type": "tool", "name": "lookup", "disable_parallel_tool_use": True}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ("none", False, {"type": "none"}),
])
async def test_tool_choice_and_parallel_tool_calls(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory,
    tool_choice: object, parallel: bool | None, sent: dict[str, object],
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    payload: dict[str, Any] = {"model": "claude", "tools": TOOLS, "tool_choice": tool_choice,
                               "messages": [{"role": "user", "content": "x"}]}
    if parallel is not None:
        payload["parallel_tool_calls"] = parallel
    response = await client.post(CHAT, json=payload)
    assert response.status_code == 200, response.text
    assert anthropic_fake.script.requests[-1]["tool_choice"] == sent
    finish = response.json()["choices"][0]["finish_reason"]
    assert finish == ("stop" if tool_choice == "none" else "tool_calls")


async def test_images_become_base64_and_url_sources(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    response = await client.post(CHAT, json={"model": "claude", "messages": [{
        "role": "user", "content": [
            {"type": "text", "text": "compare"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg",
                                                "detail": "high"}},
        ]}]})
    assert response.status_code == 200, response.text
    assert anthropic_fake.script.requests[-1]["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": PIXEL}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    marked = await client.post("/v1/messages", json={
        "model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": PIXEL}, "cache_control": EPHEMERAL}]}]})
    assert marked.status_code == 200, marked.text
    assert anthropic_fake.script.requests[-1]["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": PIXEL}, "cache_control": EPHEMERAL}]
    calls = len(anthropic_fake.script.requests)
    refused = await client.post(CHAT, json={"model": "claude", "messages": [{
        "role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}]})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "messages[0].content[0].image_url"
    assert len(anthropic_fake.script.requests) == calls


async def test_stop_reasons_map_to_finish_reasons(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    words = "one two three four five"

    async def finish(**extra: Any) -> tuple[str, str | None]:
        response = await client.post(CHAT, json={
            "model": "claude", "messages": [{"role": "user", "content": words}], **extra})
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        return choice["finish_reason"], choice["message"]["content"]

    assert await finish() == ("stop", f"fake-anthropic: {words}")
    assert await finish(max_completion_tokens=3) == ("length", "fake-anthropic: one two")
    assert await finish(stop=["three"]) == ("stop", "fake-anthropic: one two ")
    anthropic_fake.script.actions.append(Action(body={
        "id": "msg_refused", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "I can"}], "stop_reason": "refusal",
        "stop_sequence": None, "usage": {"input_tokens": 9, "output_tokens": 2}}))
    assert await finish() == ("content_filter", "I can")
    chunks = await stream_chunks(client, {
        "model": "claude", "messages": [{"role": "user", "content": words}], "max_tokens": 2})
    assert (streamed_text(chunks), finish_reasons(chunks)) == ("fake-anthropic: one", ["length"])


async def test_the_stop_sequence_matched_reaches_a_messages_api_client(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    """/v1/messages answered stop_reason end_turn and stop_sequence null even when
    Anthropic said which stop sequence the answer ended at."""
    cached = "\n      cached: {deployment: sonnet, cache: {ttl_s: 60}}"
    client = await make_gateway(_sections(anthropic_fake).replace(
        "      claude: {deployment: sonnet}", "      claude: {deployment: sonnet}" + cached))
    ask = {"model": "claude", "max_tokens": 50, "stop_sequences": ["three", "nine"],
           "messages": [{"role": "user", "content": "one two three four"}]}
    whole = (await client.post("/v1/messages", json=ask)).json()
    assert (whole["stop_reason"], whole["stop_sequence"]) == ("stop_sequence", "three")
    assert whole["content"] == [{"type": "text", "text": "fake-anthropic: one two "}]
    plain = (await client.post("/v1/messages", json={**ask, "stop_sequences": ["nine"]})).json()
    assert (plain["stop_reason"], plain["stop_sequence"]) == ("end_turn", None)
    for route in ("claude", "cached", "cached"):  # streamed, and replayed from the cache
        async with client.stream("POST", "/v1/messages",
                                 json={**ask, "model": route, "stream": True}) as response:
            raw = (await response.aread()).decode()
        ending = [json.loads(frame.split("data: ", 1)[1]) for frame in raw.split("\n\n")
                  if frame.startswith("event: message_delta")]
        assert ending[0]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "three"}
    assert response.headers["x-aigw-cache"] == "hit"
    # OpenAI's answer has no field for it: the finish reason is stop, as before.
    chat = await client.post(CHAT, json={"model": "claude", "stop": ["three"], "messages": [
        {"role": "user", "content": "one two three four"}]})
    assert chat.json()["choices"][0]["finish_reason"] == "stop"
    assert "stop_sequence" not in chat.json()["choices"][0]


def _deployment(fake: AnthropicFake, tmp_path: Path) -> Deployment:
    """The ``sonnet`` deployment, as the compiler builds it."""
    graph = compiled(tmp_path, _sections(fake), {"FAKE_ANTHROPIC_KEY": fake.api_key})
    return graph.deployments["sonnet"]


async def test_usage_counts_cache_reads_and_writes_as_prompt_tokens(
    anthropic_fake: AnthropicFake, counter: TokenCounter, tmp_path: Path
) -> None:
    deployment = _deployment(anthropic_fake, tmp_path)
    adapter = AnthropicAdapter(deployment.provider, counter)
    request = {"model": "claude", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "a long shared instruction text",
                                        "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "hi"}]}
    try:
        first = await adapter.complete(chat_call(deployment, request))
        deltas = [delta async for delta in adapter.stream(chat_call(deployment, request))]
    finally:
        await adapter.aclose()
    assert anthropic_fake.script.requests[0]["system"][0]["cache_control"] == {
        "type": "ephemeral"}
    assert first.usage == Usage(prompt_tokens=9, completion_tokens=2, cached_tokens=0,
                                cache_creation_tokens=5)
    assert deltas[-1].usage == Usage(prompt_tokens=9, completion_tokens=2, cached_tokens=5,
                                     cache_creation_tokens=0)
    assert all(delta.usage is None for delta in deltas[:-1])


async def test_messages_api_cache_marks_and_top_k_reach_anthropic(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    """/v1/messages dropped every cache_control (and top_k) on the way to Anthropic
    itself: an Anthropic SDK app's prompt was never cached."""
    client = await _gateway(anthropic_fake, make_gateway)
    answers = [await client.post("/v1/messages", json={**MARKED_MESSAGE, "model": "claude"})
               for _ in range(2)]
    assert [answer.status_code for answer in answers] == [200, 200], answers[0].text
    sent = anthropic_fake.script.requests[-1]
    assert sent["system"] == MARKED_MESSAGE["system"]
    assert sent["tools"] == [{"name": "lookup", "input_schema": {"type": "object",
                                                                 "properties": {}},
                              "cache_control": EPHEMERAL}]
    assert sent["messages"][2] == MARKED_MESSAGE["messages"][2]
    assert sent["top_k"] == 5
    usages = [answer.json()["usage"] for answer in answers]
    assert usages[0]["cache_creation_input_tokens"] > 0
    assert usages[1]["cache_read_input_tokens"] == usages[0]["cache_creation_input_tokens"]


async def test_cached_tokens_reach_the_client(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    payload = {"model": "claude", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "shared prefix",
                                        "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "hi"}]}
    await client.post(CHAT, json=payload)
    usage = (await client.post(CHAT, json=payload)).json()["usage"]
    assert usage["prompt_tokens"] == 6
    assert usage["prompt_tokens_details"] == {"cached_tokens": 2}


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_cache_writes_and_reads_are_billed_at_their_prices(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory, stream: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first request writes the system prompt to Anthropic's cache, the second reads
    it: both are prompt tokens to the client (Anthropic's input_tokens leaves them out),
    and they were billed at the input price whatever the cache saved or cost."""
    caplog.set_level(logging.INFO, logger="aigw.access")
    client = await _gateway(anthropic_fake, make_gateway)
    payload: dict[str, Any] = {"model": "claude", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "shared prefix",
                                        "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "hi"}]}
    usages = []
    for _ in range(2):
        if stream:
            chunks = await stream_chunks(client, {**payload,
                                            "stream_options": {"include_usage": True}})
            usages.append(chunks[-1]["usage"])
        else:
            usages.append((await client.post(CHAT, json=payload)).json()["usage"])
    assert [usage["prompt_tokens"] for usage in usages] == [6, 6]
    assert "prompt_tokens_details" not in usages[0]  # a write is no cached token to OpenAI
    assert usages[1]["prompt_tokens_details"] == {"cached_tokens": 2}
    totals = await billed(client)
    assert (totals["tokens_in"], totals["tokens_cached"]) == (12, 2)
    assert totals["cost"] == pytest.approx(
        cache_priced_cost(8, 2, 2, int(totals["tokens_out"])))
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "aigw.access"]
    assert [(line["prompt_tokens"], line["cached_tokens"], line["cache_write_tokens"])
            for line in logged if line["route"] == "claude"] == [(6, 0, 2), (6, 2, 0)]
    # Metrics show them too (they did not), apart from aigw_tokens_total, whose input
    # direction holds them already.
    metrics = (await client.get("/metrics")).text
    series = {"route": "claude", "deployment": "sonnet", "team": "_none"}  # the key has none
    assert metric_sample(metrics, "aigw_tokens_total", **series, direction="input") == 12
    assert [metric_sample(metrics, "aigw_prompt_cache_tokens_total", **series,
                          operation=operation)
            for operation in ("read", "write")] == [2, 2]


@pytest.mark.parametrize(("status", "kind", "message", "expected_status", "code"), [
    (529, "overloaded_error", "Overloaded", 503, "upstream_overloaded"),
    (400, "invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum",
     400, "context_length_exceeded"),
    (413, "request_too_large", "Request exceeds the maximum allowed number of bytes.",
     400, "context_length_exceeded"),
    (500, "api_error", "Internal server error", 502, "upstream_error"),
    (403, "permission_error", "Your API key does not have permission", 502,
     "upstream_auth_failed"),
    (404, "not_found_error", "model: claude-nope", 502, "upstream_unusable"),
    (402, "billing_error", "Your credit balance is too low", 502, "upstream_unusable"),
])
async def test_error_types_keep_their_meaning(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory,
    status: int, kind: str, message: str, expected_status: int, code: str,
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    body = {"type": "error", "error": {"type": kind, "message": message},
            "request_id": "req_1"}
    for stream in (False, True):
        anthropic_fake.script.actions.append(Action(status=status, body=body))
        response = await client.post(CHAT, json={
            "model": "once", "stream": stream, "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == expected_status, response.text
        assert response.json()["error"]["code"] == code


async def test_rate_limit_keeps_retry_after(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    anthropic_fake.script.actions.append(Action(status=429, headers={"retry-after": "7"}))
    limited = await client.post(CHAT, json={
        "model": "once", "messages": [{"role": "user", "content": "x"}]})
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "7"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"


async def test_a_rejected_provider_key_never_reaches_the_client(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    key = anthropic_fake.api_key
    anthropic_fake.api_key = "sk-ant-some-other-key"
    response = await client.post(CHAT, json={
        "model": "claude", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_auth_failed"
    assert key not in response.text and key[-4:] not in response.text


async def test_an_error_event_mid_stream_ends_the_stream_with_its_meaning(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    anthropic_fake.script.actions.append(Action(body=overloaded, cut_stream_after=5))
    events = await stream_events(client, {
        "model": "claude", "messages": [{"role": "user", "content": "a b c"}]})
    assert streamed_text(events[:-1]) == "fake-anthropic: a"
    assert events[-1]["error"]["code"] == "upstream_overloaded"


async def test_an_error_event_before_any_content_falls_back(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    anthropic_fake.script.actions.append(Action(body=overloaded, cut_stream_after=1))
    async with client.stream("POST", CHAT, json={
        "model": "fallback", "stream": True,
        "messages": [{"role": "user", "content": "still here"}]}) as response:
        assert response.status_code == 200
        assert response.headers["x-aigw-deployment"] == "echo"
        assert response.headers["x-aigw-attempts"] == "2"


@pytest.mark.parametrize(("extra", "param"), [
    ({"n": 2}, "n"),
    ({"seed": 7}, "seed"),
    ({"temperature": 1.5}, "temperature"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logprobs": True}, "logprobs"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0]"),
    ({"some_new_parameter": 1}, "some_new_parameter"),
])
async def test_a_parameter_anthropic_cannot_honour_is_refused_by_name(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory,
    extra: dict[str, object], param: str,
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    response = await client.post(CHAT, json={
        "model": "claude", "messages": [{"role": "user", "content": "x"}], **extra})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert anthropic_fake.script.requests == []


async def test_neutral_and_descriptive_parameters_are_accepted(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    response = await client.post(CHAT, json={
        "model": "claude", "messages": [{"role": "user", "content": "x"}],
        "n": 1, "seed": None, "frequency_penalty": 0, "presence_penalty": 0.0,
        "logprobs": False, "logit_bias": {}, "store": True, "metadata": {"app": "t"},
        "service_tier": "auto", "top_k": 5, "response_format": {"type": "text"},
        # OpenAI's caching and abuse hints (were refused, while Bedrock and Gemini drop them)
        "prompt_cache_key": "k1", "safety_identifier": "user-hash"})
    assert response.status_code == 200, response.text
    sent = anthropic_fake.script.requests[-1]
    assert sent["top_k"] == 5
    assert {"store", "metadata", "service_tier", "output_config", "prompt_cache_key",
            "safety_identifier"}.isdisjoint(sent)


async def test_json_schema_becomes_a_structured_output_format(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(anthropic_fake, make_gateway)
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    response = await client.post(CHAT, json={
        "model": "claude", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "place", "schema": schema, "strict": True}}})
    assert response.status_code == 200, response.text
    assert anthropic_fake.script.requests[-1]["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}}
    # The fake answers JSON of the schema only when output_config reached it.
    answer = response.json()["choices"][0]["message"]["content"]
    assert json.loads(answer) == {"city": "fake-anthropic: x"}


async def test_the_messages_apis_structured_outputs_reach_anthropic(
    anthropic_fake: AnthropicFake, make_gateway: GatewayFactory
) -> None:
    """Anthropic's ``output_config.format`` (what its SDK's ``messages.parse`` sends) was
    refused by /v1/messages as an unknown field."""
    client = await _gateway(anthropic_fake, make_gateway)
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    answer = await client.post("/v1/messages", json={
        "model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}],
        "output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert answer.status_code == 200, answer.text
    assert anthropic_fake.script.requests[-1]["output_config"] == {
        "format": {"type": "json_schema", "schema": schema}}
    assert json.loads(answer.json()["content"][0]["text"]) == {"city": "fake-anthropic: x"}


def test_the_fake_speaks_the_wire_format_the_official_sdk_reads(
    anthropic_fake: AnthropicFake,
) -> None:
    sdk = anthropic.Anthropic(
        base_url=anthropic_fake.base_url,  # type: ignore[attr-defined]
        api_key="unused", max_retries=0,
        default_headers={"x-api-key": anthropic_fake.api_key, "anthropic-version": "2023-06-01"})
    tools: Any = [{"name": "lookup", "input_schema": {"type": "object"}}]
    with sdk.messages.stream(model="claude", max_tokens=64, tools=tools,
                             messages=[{"role": "user", "content": "find it"}]) as stream:
        message = stream.get_final_message()
    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"query": "find it"}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    with pytest.raises(anthropic.BadRequestError, match="first message must use the"):
        sdk.messages.create(model="claude", max_tokens=8,
                            messages=[{"role": "assistant", "content": "x"}])
    sdk.close()
