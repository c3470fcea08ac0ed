"""What an unlucky or odd upstream does to a real ``aigw serve``, seen through the official
openai SDK: a stream cut before its end, usage sent where each provider sends it (and
where odd servers of its kind do), tool calls streamed in pieces and whole, and error
pages. One scripted upstream (tests/fakes/scripted.py) stands behind a provider of each
type and answers, in that provider's wire format, what the test last told it to."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from aigw.runtime.tokens import TokenCounter

from ..conftest import DEV_KEY
from ..fakes.bedrock_fake import event
from ..fakes.scripted import Scripted, scripted_upstream
from .server import Server, sdk_gateway

pytestmark = pytest.mark.e2e

PROVIDER_KEY = "sk-unlucky-provider-key-0123456789abcdef"
ASK: list[Any] = [{"role": "user", "content": "weather in Paris and Rome?"}]
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "weather", "parameters": {"type": "object",
                                      "properties": {"city": {"type": "string"}}}}}]


@dataclass
class Gateway:
    client: openai.OpenAI
    server: Server
    upstream: Scripted

    def admin(self, path: str, **params: str) -> Any:
        answer = httpx.get(f"{self.server.base_url}{path}", params=params,
                           headers={"Authorization": f"Bearer {DEV_KEY}"}, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def ledger(self, route: str) -> dict[str, Any]:
        """The ledger's row of ``route`` (zeros before its first request)."""
        rows = self.admin("/v1/costs/summary", group_by="route")["data"]
        empty = {"requests": 0, "errors": 0, "tokens_in": 0, "tokens_out": 0}
        return next((row for row in rows if row["route"] == route), empty)

    def settled(self, route: str, before: dict[str, Any]) -> dict[str, Any]:
        """``route``'s ledger row once one more request than ``before`` is in it."""
        deadline = time.monotonic() + 10
        while (row := self.ledger(route))["requests"] == before["requests"]:
            assert time.monotonic() < deadline, self.server.log
            time.sleep(0.05)
        return row

    def failures(self, deployment: str) -> int:
        failures: int = self.admin("/admin/status")["deployments"][deployment]["failures"]
        return failures


# Per million tokens: input, output, cache reads, cache writes.
CLAUDE_PRICE = "{input: 3, output: 15, cache_read: 0.3, cache_write: 3.75}"
GEMINI_PRICE = "{input: 0.3, output: 2.5, cache_read: 0.03}"
COMPAT_PRICE = "{input: 0.5, output: 2, cache_read: 0.05}"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with scripted_upstream() as upstream, sdk_gateway(
            tmp_path_factory.mktemp("unlucky") / "gw", f"""
settings:  # the tests' failures are many, and each deployment is asked again after them
  circuit_breaker: {{consecutive_failures: 1000, cooldown_s: 1, min_requests: 1000}}
providers:
  oai: {{type: openai, base_url: "{upstream.base_url}/v1", api_key: "{PROVIDER_KEY}"}}
  compat: {{type: openai_compatible, base_url: "{upstream.base_url}/v1",
            api_key: "{PROVIDER_KEY}"}}
  claude: {{type: anthropic, base_url: "{upstream.base_url}", api_key: "{PROVIDER_KEY}"}}
  gem: {{type: gemini, base_url: "{upstream.base_url}/v1beta", api_key: "{PROVIDER_KEY}"}}
  aws: {{type: bedrock, region: us-east-1, base_url: "{upstream.base_url}",
         api_key: "{PROVIDER_KEY}"}}
deployments:
  oai: {{provider: oai, model: gpt-4o-mini, context_window: 128000,
         capabilities: [streaming, tools]}}
  compat: {{provider: compat, model: qwen3, context_window: 128000,
            capabilities: [streaming, tools]}}
  claude: {{provider: claude, model: claude-sonnet-4-5, context_window: 200000,
            capabilities: [streaming, tools]}}
  gem: {{provider: gem, model: gemini-2.5-flash, context_window: 1000000,
         capabilities: [streaming, tools]}}
  aws: {{provider: aws, model: amazon.nova-lite-v1:0, context_window: 300000,
         capabilities: [streaming, tools]}}
  claude-priced: {{provider: claude, model: claude-sonnet-4-5, context_window: 200000,
                   capabilities: [streaming], price: {CLAUDE_PRICE}}}
  gem-priced: {{provider: gem, model: gemini-2.5-flash, context_window: 1000000,
                capabilities: [streaming], price: {GEMINI_PRICE}}}
  compat-priced: {{provider: compat, model: qwen3, context_window: 128000,
                   capabilities: [streaming], price: {COMPAT_PRICE}}}
groups:
  oai-group: {{members: [oai], retry: {{attempts: 0}}}}
  compat-group: {{members: [compat], retry: {{attempts: 0}}}}
  claude-group: {{members: [claude], retry: {{attempts: 0}}}}
  gem-group: {{members: [gem], retry: {{attempts: 0}}}}
  aws-group: {{members: [aws], retry: {{attempts: 0}}}}
routes:
  oai: {{group: oai-group}}
  compat: {{group: compat-group}}
  claude: {{group: claude-group}}
  gem: {{group: gem-group}}
  aws: {{group: aws-group}}
  claude-priced: {{deployment: claude-priced}}
  claude-priced-left: {{deployment: claude-priced}}
  gem-priced: {{deployment: gem-priced}}
  compat-priced: {{deployment: compat-priced}}
""") as (client, server):
        yield Gateway(client, server, upstream)


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra}


def _gemini(parts: list[Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], **extra}


def _gemini_usage(prompt: int, output: int | None) -> dict[str, Any]:
    usage = {"promptTokenCount": prompt}
    if output is not None:
        usage |= {"candidatesTokenCount": output, "totalTokenCount": prompt + output}
    return {"usageMetadata": usage}


def _anthropic_text(text: str, start_usage: dict[str, int],
                    delta_usage: dict[str, int]) -> list[Any]:
    return [
        {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [],
            "model": "claude-sonnet-4-5", "usage": start_usage}},
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": text}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": delta_usage},
        {"type": "message_stop"}]


def _bedrock_text(text: str, usage: dict[str, int] | None) -> bytes:
    frames = [event("messageStart", {"role": "assistant"}),
              event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}}),
              event("contentBlockStop", {"contentBlockIndex": 0}),
              event("messageStop", {"stopReason": "end_turn"})]
    if usage is not None:
        frames.append(event("metadata", {"usage": usage, "metrics": {"latencyMs": 9}}))
    return b"".join(frames)


# Each provider's stream of "Sunny." with its usage where that provider (or an odd server
# of its type) puts it, and the (prompt, completion) tokens it means.
USAGE_STREAMS: dict[str, tuple[str, object, tuple[int, int]]] = {
    "openai include_usage chunk with no choices": ("oai", [
        _chunk({"role": "assistant", "content": ""}, usage=None),
        _chunk({"content": "Sunny."}, usage=None),
        _chunk({}, "stop", usage=None),
        {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": 3,
                                  "total_tokens": 24}},
        "[DONE]"], (21, 3)),
    "compatible server with cumulative usage on every chunk": ("compat", [
        _chunk({"role": "assistant", "content": ""},
               usage={"prompt_tokens": 21, "completion_tokens": 0, "total_tokens": 21}),
        _chunk({"content": "Sunny."},
               usage={"prompt_tokens": 21, "completion_tokens": 2, "total_tokens": 23}),
        _chunk({}, "stop",
               usage={"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24}),
        "[DONE]"], (21, 3)),
    # Ollama's /v1 (before 0.1.40) and sglang: "finish_reason": "" on every chunk.
    "compatible server with an empty finish_reason on each chunk": ("compat", [
        _chunk({"role": "assistant", "content": ""}, ""),
        _chunk({"content": "Sun"}, ""),
        _chunk({"content": "ny."}, ""),
        _chunk({}, "stop", usage={"prompt_tokens": 21, "completion_tokens": 3,
                                  "total_tokens": 24}),
        "[DONE]"], (21, 3)),
    "anthropic output in message_delta": ("claude", _anthropic_text(
        "Sunny.", {"input_tokens": 21, "cache_read_input_tokens": 4, "output_tokens": 1},
        {"output_tokens": 3}), (25, 3)),
    "anthropic cumulative counts in message_delta": ("claude", _anthropic_text(
        "Sunny.", {"input_tokens": 21, "cache_read_input_tokens": 4, "output_tokens": 1},
        {"input_tokens": 21, "cache_read_input_tokens": 4, "output_tokens": 3}), (25, 3)),
    # Anthropic-compatible servers (sglang, some relays) send message_delta an
    # input_tokens of 0: the counts are cumulative, so that is no refund of the prompt.
    "anthropic relay with input_tokens 0 in message_delta": ("claude", _anthropic_text(
        "Sunny.", {"input_tokens": 21, "cache_read_input_tokens": 4, "output_tokens": 1},
        {"input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 3}), (25, 3)),
    "gemini usageMetadata cumulative on every chunk": ("gem", [
        _gemini([{"text": "Sun"}], **_gemini_usage(21, 1)),
        _gemini([{"text": "ny."}], "STOP", **_gemini_usage(21, 3))], (21, 3)),
    "gemini usageMetadata on the last chunk only": ("gem", [
        _gemini([{"text": "Sun"}]),
        _gemini([{"text": "ny."}], "STOP", **_gemini_usage(21, 3))], (21, 3)),
    "gemini usageMetadata in a chunk of its own after the finish": ("gem", [
        _gemini([{"text": "Sunny."}], "STOP", **_gemini_usage(21, None)),
        {"candidates": [], **_gemini_usage(21, 3)}], (21, 3)),
    "bedrock metadata event after messageStop": ("aws", _bedrock_text(
        "Sunny.", {"inputTokens": 21, "outputTokens": 3, "totalTokens": 24}), (21, 3)),
}


@pytest.mark.parametrize(("route", "stream", "counts"), USAGE_STREAMS.values(),
                         ids=USAGE_STREAMS.keys())
def test_streamed_usage_is_read_where_each_provider_sends_it_and_billed_once(
    gateway: Gateway, route: str, stream: object, counts: tuple[int, int]
) -> None:
    before = gateway.ledger(route)
    gateway.upstream.now(stream)
    chunks = list(gateway.client.chat.completions.create(
        model=route, messages=ASK, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Sunny."
    assert [c.choices[0].finish_reason for c in chunks
            if c.choices and c.choices[0].finish_reason is not None] == ["stop"]
    usages = [chunk.usage for chunk in chunks if chunk.usage is not None]
    assert [(u.prompt_tokens, u.completion_tokens) for u in usages] == [counts]
    row = gateway.settled(route, before)
    assert (row["tokens_in"] - before["tokens_in"],
            row["tokens_out"] - before["tokens_out"]) == counts


def _tool_chunk(calls: list[dict[str, Any]], finish: str | None = None) -> dict[str, Any]:
    return _chunk({"tool_calls": calls}, finish)


def _anthropic_tools() -> list[Any]:
    """Text, then two tool_use blocks whose input comes in pieces (cut mid-word)."""
    events: list[Any] = _anthropic_text("Checking.", {"input_tokens": 30, "output_tokens": 1},
                                        {"output_tokens": 40})[:4]
    for index, (call_id, city) in enumerate((("toolu_01", "Paris"), ("toolu_02", "Rome")), 1):
        events += [
            {"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": call_id, "name": "weather", "input": {}}},
            {"type": "content_block_delta", "index": index,
             "delta": {"type": "input_json_delta", "partial_json": '{"ci'}},
            {"type": "content_block_delta", "index": index,
             "delta": {"type": "input_json_delta", "partial_json": f'ty": "{city}"}}'}},
            {"type": "content_block_stop", "index": index}]
    return [*events,
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
             "usage": {"output_tokens": 40}},
            {"type": "message_stop"}]


def _bedrock_tools() -> bytes:
    frames = [event("messageStart", {"role": "assistant"})]
    for index, (call_id, city) in enumerate((("tooluse_1", "Paris"), ("tooluse_2", "Rome"))):
        frames += [
            event("contentBlockStart", {"contentBlockIndex": index, "start": {
                "toolUse": {"toolUseId": call_id, "name": "weather"}}}),
            event("contentBlockDelta", {"contentBlockIndex": index,
                                        "delta": {"toolUse": {"input": '{"city": '}}}),
            event("contentBlockDelta", {"contentBlockIndex": index,
                                        "delta": {"toolUse": {"input": f'"{city}"}}'}}}),
            event("contentBlockStop", {"contentBlockIndex": index})]
    return b"".join([*frames, event("messageStop", {"stopReason": "tool_use"}),
                     event("metadata", {"usage": {"inputTokens": 30, "outputTokens": 40}})])


def _function_call(city: str) -> dict[str, Any]:
    return {"functionCall": {"name": "weather", "args": {"city": city}}}


def _openai_tools(repeat: bool) -> list[Any]:
    """Two parallel calls, their arguments in pieces; ``repeat``: each piece repeats the
    call's id, type and name, as Fireworks, DeepSeek and Qwen's servers send them."""
    chunks: list[Any] = [_chunk({"role": "assistant", "content": None})]
    for index, (call_id, city) in enumerate((("call_a1", "Paris"), ("call_b2", "Rome"))):
        head = {"index": index, "id": call_id, "type": "function"}
        chunks.append(_tool_chunk([{**head, "function": {"name": "weather", "arguments": ""}}]))
        for piece in ('{"city": ', f'"{city}"}}'):
            chunks.append(_tool_chunk([
                {**head, "function": {"name": "weather", "arguments": piece}} if repeat
                else {"index": index, "function": {"arguments": piece}}]))
    return [*chunks, _chunk({}, "tool_calls"), "[DONE]"]


PARIS_AND_ROME = [("weather", {"city": "Paris"}), ("weather", {"city": "Rome"})]
TOOL_STREAMS: dict[str, tuple[str, object, list[tuple[str, dict[str, str]]]]] = {
    "anthropic input_json_delta after text": ("claude", _anthropic_tools(), PARIS_AND_ROME),
    "bedrock toolUse input in pieces": ("aws", _bedrock_tools(), PARIS_AND_ROME),
    "gemini functionCall parts in one chunk and the next": ("gem", [
        _gemini([_function_call("Paris"), _function_call("Rome")]),
        _gemini([_function_call("Oslo")], "STOP")],
        [*PARIS_AND_ROME, ("weather", {"city": "Oslo"})]),
    "openai id and name on the first piece only": ("oai", _openai_tools(False), PARIS_AND_ROME),
    "compatible server repeating id, type and name on every piece": (
        "compat", _openai_tools(True), PARIS_AND_ROME),
    # Gemini's OpenAI layer: each call whole, in a chunk of its own, with no index.
    "compatible server sending whole calls without an index": ("compat", [
        _chunk({"role": "assistant"}),
        _tool_chunk([{"id": "call_a1", "type": "function",
                      "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]),
        _tool_chunk([{"id": "call_b2", "type": "function",
                      "function": {"name": "weather", "arguments": '{"city": "Rome"}'}}]),
        _chunk({}, "tool_calls"), "[DONE]"], PARIS_AND_ROME),
    "compatible server sending no ids": ("compat", [
        _chunk({"role": "assistant"}),
        _tool_chunk([{"index": 0, "function": {"name": "weather", "arguments": '{"city": '}}]),
        _tool_chunk([{"index": 0, "function": {"arguments": '"Paris"}'}}]),
        _tool_chunk([{"index": 1, "function": {"name": "weather",
                                               "arguments": '{"city": "Rome"}'}}]),
        _chunk({}, "tool_calls"), "[DONE]"], PARIS_AND_ROME),
}


@pytest.mark.parametrize(("route", "stream", "expected"), TOOL_STREAMS.values(),
                         ids=TOOL_STREAMS.keys())
def test_streamed_tool_calls_accumulate_in_the_sdk_as_the_whole_calls(
    gateway: Gateway, route: str, stream: object, expected: list[tuple[str, dict[str, str]]]
) -> None:
    """The openai SDK's own accumulation (``chat.completions.stream``) gives each call
    once, with one id and its name and arguments whole: stable ``index`` and ``id``."""
    gateway.upstream.now(stream)
    with gateway.client.chat.completions.stream(model=route, messages=ASK,
                                                tools=TOOLS) as streamed:
        final = streamed.get_final_completion()
    [choice] = final.choices
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == expected
    ids = [c.id for c in calls]
    assert all(ids) and len(set(ids)) == len(ids), ids
    assert all(len(i) <= 40 for i in ids), ids  # OpenAI refuses longer ids sent back


PARTIAL = "Partly sunny with"
# Each provider's stream closed cleanly mid-answer: no finish, no [DONE], no
# message_stop, no messageStop frame.
CUT_STREAMS: dict[str, tuple[str, object]] = {
    "openai": ("oai", [_chunk({"role": "assistant", "content": ""}, usage=None),
                       _chunk({"content": PARTIAL}, usage=None)]),
    "compatible server with an empty finish_reason on each chunk": ("compat", [
        _chunk({"role": "assistant", "content": ""}, ""), _chunk({"content": PARTIAL}, "")]),
    "anthropic": ("claude", _anthropic_text(PARTIAL, {"input_tokens": 21, "output_tokens": 1},
                                            {"output_tokens": 4})[:3]),
    "gemini": ("gem", [_gemini([{"text": PARTIAL}], **_gemini_usage(21, 4))]),
    "bedrock": ("aws", _bedrock_text(PARTIAL, None)[:-len(event("messageStop", {
        "stopReason": "end_turn"}))]),
}


@pytest.mark.parametrize(("route", "stream"), CUT_STREAMS.values(), ids=CUT_STREAMS.keys())
def test_a_stream_cut_midway_ends_in_an_error_is_billed_and_counts_against_the_circuit(
    gateway: Gateway, route: str, stream: object
) -> None:
    before, failures = gateway.ledger(route), gateway.failures(route)
    gateway.upstream.now(stream)
    received = []
    with pytest.raises(openai.APIError) as cut:
        for chunk in gateway.client.chat.completions.create(model=route, messages=ASK,
                                                            stream=True):
            received.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices) == PARTIAL
    assert "ended the stream before" in cut.value.message
    assert all(c.choices[0].finish_reason is None for c in received if c.choices)
    row = gateway.settled(route, before)
    assert row["errors"] == before["errors"] + 1
    # What was relayed is billed: the prompt and the words sent (counted, as no usage came).
    assert row["tokens_in"] > before["tokens_in"]
    assert row["tokens_out"] - before["tokens_out"] >= 3
    assert gateway.failures(route) == failures + 1


RELAYED_TOKENS = TokenCounter().count(PARTIAL)  # the output the gateway counts of a cut
# Each provider's stream cut mid-answer after it had reported counts of its own, and what
# the cut is billed: (prompt, cache reads, cache writes, output) and the cost of those.
# The prompt as reported (cache reads at their own price, not the gateway's estimate of
# the prompt at the input price); the output the larger of the provider's count so far
# and the gateway's of what it relayed.
CUT_REPORTED: dict[str, tuple[str, object, tuple[int, int, int, int], float]] = {
    "anthropic message_start with cache reads and writes": ("claude-priced", _anthropic_text(
        PARTIAL, {"input_tokens": 7, "cache_read_input_tokens": 3000,
                  "cache_creation_input_tokens": 200, "output_tokens": 1},
        {"output_tokens": 40})[:3], (3207, 3000, 200, RELAYED_TOKENS),
        (7 * 3 + 3000 * 0.3 + 200 * 3.75 + RELAYED_TOKENS * 15) / 1e6),
    "gemini running usageMetadata with cached content": ("gem-priced", [
        _gemini([{"text": "Partly "}], usageMetadata={
            "promptTokenCount": 1200, "cachedContentTokenCount": 1000,
            "candidatesTokenCount": 2}),
        _gemini([{"text": "sunny with"}], usageMetadata={
            "promptTokenCount": 1200, "cachedContentTokenCount": 1000,
            "candidatesTokenCount": 9})], (1200, 1000, 0, 9),
        (200 * 0.3 + 1000 * 0.03 + 9 * 2.5) / 1e6),
    "compatible server with cumulative usage on every chunk": ("compat-priced", [
        _chunk({"role": "assistant", "content": ""}, usage={
            "prompt_tokens": 900, "completion_tokens": 0, "total_tokens": 900,
            "prompt_tokens_details": {"cached_tokens": 768}}),
        _chunk({"content": PARTIAL}, usage={
            "prompt_tokens": 900, "completion_tokens": 1, "total_tokens": 901,
            "prompt_tokens_details": {"cached_tokens": 768}})], (900, 768, 0, RELAYED_TOKENS),
        (132 * 0.5 + 768 * 0.05 + RELAYED_TOKENS * 2) / 1e6),
}


@pytest.mark.parametrize(("route", "stream", "counts", "cost"), CUT_REPORTED.values(),
                         ids=CUT_REPORTED.keys())
def test_a_cut_stream_is_billed_the_counts_its_provider_reported_before_the_cut(
    gateway: Gateway, route: str, stream: object, counts: tuple[int, int, int, int],
    cost: float
) -> None:
    before = gateway.ledger(route)
    assert before["requests"] == 0  # each case's route is its own: its row is the cut's
    gateway.upstream.now(stream)
    received = []
    with pytest.raises(openai.APIError) as cut:
        for chunk in gateway.client.chat.completions.create(model=route, messages=ASK,
                                                            stream=True):
            received.append(chunk)
    assert "ended the stream before" in cut.value.message
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices) == PARTIAL
    row = gateway.settled(route, before)
    prompt, cache_reads, _cache_writes, output = counts
    assert row["errors"] == 1
    assert (row["tokens_in"], row["tokens_cached"], row["tokens_out"]) == (
        prompt, cache_reads, output)
    assert row["cost"] == pytest.approx(cost, abs=1e-9)  # the ledger keeps nanos


def test_a_stream_its_client_left_is_billed_the_counts_its_provider_reported(
    gateway: Gateway
) -> None:
    # The upstream stalls after the first words: the client leaving is the cut.
    route = "claude-priced-left"
    gateway.upstream.now(_anthropic_text(PARTIAL, {
        "input_tokens": 7, "cache_read_input_tokens": 3000, "output_tokens": 1},
        {"output_tokens": 40})[:3], held=True)
    before = gateway.ledger(route)
    assert before["requests"] == 0
    stream = gateway.client.chat.completions.create(model=route, messages=ASK, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    row = gateway.settled(route, before)
    assert (row["tokens_in"], row["tokens_cached"], row["tokens_out"]) == (
        3007, 3000, RELAYED_TOKENS)
    assert row["cost"] == pytest.approx((7 * 3 + 3000 * 0.3 + RELAYED_TOKENS * 15) / 1e6,
                                        abs=1e-9)


BAD_GATEWAY_PAGE = (b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 "
                    b"Bad Gateway</h1></center><hr><center>nginx</center></body></html>")
UNAVAILABLE_PAGE = (b"<!DOCTYPE html><html><body><h1>503 Service Temporarily Unavailable"
                    b"</h1><p>upstream connect error</p></body></html>")
LEAKED = f"Incorrect API key provided: {PROVIDER_KEY}."
# Each provider's error answer as it sends it: (route, status, body, headers) and the
# status and OpenAI error code the client gets.
ERROR_ANSWERS: dict[str, tuple[str, int, object, dict[str, str], int, str]] = {
    "openai rate limit": ("oai", 429, {"error": {
        "message": "Rate limit reached for gpt-4o-mini", "type": "requests",
        "param": None, "code": "rate_limit_exceeded"}}, {}, 429, "rate_limit_exceeded"),
    "openai context length": ("oai", 400, {"error": {
        "message": "This model's maximum context length is 128000 tokens.",
        "type": "invalid_request_error", "param": "messages",
        "code": "context_length_exceeded"}}, {}, 400, "context_length_exceeded"),
    "openai key refused, quoted": ("oai", 401, {"error": {
        "message": LEAKED, "type": "invalid_request_error", "param": None,
        "code": "invalid_api_key"}}, {}, 502, "upstream_auth_failed"),
    "openai html 502 page": ("oai", 502, BAD_GATEWAY_PAGE, {"content-type": "text/html"},
                             502, "upstream_error"),
    "anthropic overloaded": ("claude", 529, {"type": "error", "error": {
        "type": "overloaded_error", "message": "Overloaded"}}, {}, 503, "upstream_overloaded"),
    "anthropic prompt too long": ("claude", 400, {"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "prompt is too long: 210000 tokens > 200000 maximum"}}, {},
        400, "context_length_exceeded"),
    "anthropic key refused, quoted": ("claude", 401, {"type": "error", "error": {
        "type": "authentication_error", "message": f"invalid x-api-key {PROVIDER_KEY}"}}, {},
        502, "upstream_auth_failed"),
    "anthropic html 503 page": ("claude", 503, UNAVAILABLE_PAGE, {"content-type": "text/html"},
                                503, "upstream_overloaded"),
    "gemini resource exhausted": ("gem", 429, {"error": {
        "code": 429, "message": "Resource has been exhausted (e.g. check quota).",
        "status": "RESOURCE_EXHAUSTED"}}, {}, 429, "rate_limit_exceeded"),
    "gemini key refused, quoted": ("gem", 400, {"error": {
        "code": 400, "message": f"API key not valid. Please pass a valid API key. "
        f"({PROVIDER_KEY})", "status": "INVALID_ARGUMENT"}}, {}, 502, "upstream_auth_failed"),
    "gemini model overloaded": ("gem", 503, {"error": {
        "code": 503, "message": "The model is overloaded. Please try again later.",
        "status": "UNAVAILABLE"}}, {}, 503, "upstream_overloaded"),
    "gemini html 502 page": ("gem", 502, BAD_GATEWAY_PAGE, {"content-type": "text/html"},
                             502, "upstream_error"),
    "bedrock throttled": ("aws", 429, {"message": "Too many requests, please wait."},
                          {"x-amzn-errortype": "ThrottlingException:http://internal.amazon.com/"},
                          429, "rate_limit_exceeded"),
    "bedrock input too long": ("aws", 400, {"message": "Input is too long for requested model."},
                               {"x-amzn-errortype": "ValidationException"},
                               400, "context_length_exceeded"),
    "bedrock key refused, quoted": ("aws", 403, {"message": f"Bearer {PROVIDER_KEY} is invalid"},
                                    {"x-amzn-errortype": "AccessDeniedException"},
                                    502, "upstream_auth_failed"),
    "bedrock html 502 page": ("aws", 502, BAD_GATEWAY_PAGE, {"content-type": "text/html"},
                              502, "upstream_error"),
}


@pytest.mark.parametrize(("route", "status", "body", "headers", "expected", "code"),
                         ERROR_ANSWERS.values(), ids=ERROR_ANSWERS.keys())
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_each_providers_error_answer_keeps_its_meaning_and_never_its_key(
    gateway: Gateway, route: str, status: int, body: object, headers: dict[str, str],
    expected: int, code: str, stream: bool
) -> None:
    gateway.upstream.now(body, status=status, headers=headers)
    with pytest.raises(openai.APIStatusError) as failed:
        gateway.client.chat.completions.create(model=route, messages=ASK, stream=stream)
    answer = failed.value.response
    error = answer.json()["error"]
    assert (answer.status_code, error["code"]) == (expected, code), answer.text
    assert error["type"] and error["message"]
    assert PROVIDER_KEY[:12] not in answer.text and PROVIDER_KEY[-6:] not in answer.text


# A proxy's error page, and what the client is told of it: its title, not its markup.
ERROR_PAGES: dict[str, tuple[str, int, bytes, str, str]] = {
    "openai nginx 502": ("oai", 502, BAD_GATEWAY_PAGE, "text/html",
                         "provider 'oai' failed: HTTP 502 (an HTML page: 502 Bad Gateway)"),
    "anthropic 503 page with no title, its heading": (
        "claude", 503, UNAVAILABLE_PAGE, "text/html; charset=utf-8",
        "provider 'claude' is overloaded: HTTP 503 (an HTML page: 503 Service Temporarily "
        "Unavailable)"),
    "gemini page said to be plain text, its title's entities read": (
        "gem", 502, b"\n<!DOCTYPE html><html><head><title>Error 502 &amp; "
        b"retry\n </title><style>body{color:red}</style></head><body>" + b"x" * 5000
        + b"</body></html>", "text/plain", "provider 'gem' failed: HTTP 502 (an HTML page: "
        "Error 502 & retry)"),
    "bedrock binary body": ("aws", 500, bytes(range(256)) * 8, "application/octet-stream",
                            "provider 'aws' failed: HTTP 500 (a body of 2048 bytes, "
                            "application/octet-stream)"),
}


@pytest.mark.parametrize(("route", "status", "body", "content_type", "message"),
                         ERROR_PAGES.values(), ids=ERROR_PAGES.keys())
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_an_error_page_is_said_by_its_title_and_never_as_its_markup(
    gateway: Gateway, route: str, status: int, body: bytes, content_type: str, message: str,
    stream: bool
) -> None:
    """The page went into the client's error message raw, up to 2,000 characters."""
    gateway.upstream.now(body, status=status, headers={"content-type": content_type})
    with pytest.raises(openai.APIStatusError) as failed:
        gateway.client.chat.completions.create(model=route, messages=ASK, stream=stream)
    assert failed.value.response.json()["error"]["message"] == message


def test_an_empty_finish_reason_of_a_streamed_text_completion_is_no_finish(
    gateway: Gateway
) -> None:
    """/v1/completions goes to the server's own legacy endpoint, whose chunks such
    servers end with "" too."""

    def piece(text: str, finish: str | None) -> dict[str, Any]:
        return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": finish}]}

    gateway.upstream.now([piece("Sun", ""), piece("ny.", "")])
    received = []
    with pytest.raises(openai.APIError) as cut:
        for chunk in gateway.client.completions.create(model="compat", prompt="Weather?",
                                                       stream=True):
            received.append(chunk)
    assert "ended the stream before" in cut.value.message
    assert [(c.choices[0].text, c.choices[0].finish_reason) for c in received
            if c.choices] == [("Sun", None), ("ny.", None)]


def test_a_whole_answers_tool_calls_without_ids_are_given_them(gateway: Gateway) -> None:
    """A tool message names the call it answers: a call with no id (some vLLM tool
    parsers) could not be answered, nor sent back to OpenAI or Anthropic."""
    calls = [{"type": "function", "function": {"name": "weather",
                                               "arguments": json.dumps({"city": city})}}
             for city in ("Paris", "Rome")]
    gateway.upstream.now({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "qwen3",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "tool_calls": calls}}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 20, "total_tokens": 41}})
    answer = gateway.client.chat.completions.create(model="compat", messages=ASK, tools=TOOLS)
    ids = [call.id for call in answer.choices[0].message.tool_calls or []]
    assert len(ids) == 2 and all(ids) and ids[0] != ids[1], ids


def test_a_stream_of_two_choices_cut_before_the_second_finished_ends_in_an_error(
    gateway: Gateway
) -> None:
    """n=2: the first choice's finish_reason is not the end of the second."""

    def piece(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**_chunk(delta, finish), "choices": [
            {"index": index, "delta": delta, "finish_reason": finish}]}

    gateway.upstream.now([piece(0, {"role": "assistant", "content": "Sunny."}),
                          piece(1, {"role": "assistant", "content": "Partly"}),
                          piece(0, {}, "stop")])
    received = []
    with pytest.raises(openai.APIError) as cut:
        for chunk in gateway.client.chat.completions.create(model="oai", messages=ASK, n=2,
                                                            stream=True):
            received.append(chunk)
    assert "ended the stream before" in cut.value.message
    assert [c.choices[0].finish_reason for c in received if c.choices
            and c.choices[0].index == 1 and c.choices[0].finish_reason] == []


def test_a_gemini_stream_of_two_candidates_cut_before_the_second_finished_ends_in_an_error(
    gateway: Gateway
) -> None:
    def candidate(index: int, text: str, finish: str | None = None) -> dict[str, Any]:
        chunk = _gemini([{"text": text}], finish)
        chunk["candidates"][0]["index"] = index
        return chunk

    gateway.upstream.now([candidate(0, "Sunny.", "STOP"), candidate(1, "Partly")])
    with pytest.raises(openai.APIError) as cut:
        list(gateway.client.chat.completions.create(model="gem", messages=ASK, n=2,
                                                    stream=True))
    assert "ended the stream before its end (no finishReason)" in cut.value.message


def test_tool_arguments_sent_as_a_json_object_reach_the_client_as_json_text(
    gateway: Gateway
) -> None:
    """TGI and llama.cpp's server send a call's arguments as an object, where OpenAI sends
    the JSON text; the gateway wrote the whole answer's as Python's repr."""
    arguments = {"city": "Paris", "days": 2, "metric": True}
    call = {"id": "call_a1", "type": "function",
            "function": {"name": "weather", "arguments": arguments}}
    gateway.upstream.now({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "qwen3",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None, "tool_calls": [call]}}],
        "usage": {"prompt_tokens": 21, "completion_tokens": 20, "total_tokens": 41}})
    whole = gateway.client.chat.completions.create(model="compat", messages=ASK, tools=TOOLS)
    [answered] = whole.choices[0].message.tool_calls or []
    assert json.loads(answered.function.arguments) == arguments

    gateway.upstream.now([_chunk({"role": "assistant"}), _tool_chunk([{"index": 0, **call}]),
                          _chunk({}, "tool_calls"), "[DONE]"])
    with gateway.client.chat.completions.stream(model="compat", messages=ASK,
                                                tools=TOOLS) as streamed:
        [assembled] = streamed.get_final_completion().choices[0].message.tool_calls or []
    assert json.loads(assembled.function.arguments) == arguments


# An error as a stream's first event, after the upstream's 200: what an OpenAI-compatible
# server (vLLM, SGLang) sends when it refuses the request once streaming began.
FIRST_EVENT_ERRORS: dict[str, tuple[dict[str, Any], int, str]] = {
    "openai invalid request": ({"error": {
        "message": "temperature must be at most 2", "type": "invalid_request_error",
        "param": "temperature", "code": "invalid_value"}}, 400, "invalid_value"),
    "vllm BadRequestError": ({"error": {
        "object": "error", "message": "This model's maximum context length is 8192 tokens.",
        "type": "BadRequestError", "param": None, "code": 400}}, 400,
        "context_length_exceeded"),
    "rate limited": ({"error": {"message": "Rate limit reached", "type": "requests",
                                "code": "rate_limit_exceeded"}}, 429, "rate_limit_exceeded"),
}


@pytest.mark.parametrize(("event", "status", "code"), FIRST_EVENT_ERRORS.values(),
                         ids=FIRST_EVENT_ERRORS.keys())
def test_an_error_as_a_streams_first_event_keeps_its_meaning(
    gateway: Gateway, event: dict[str, Any], status: int, code: str
) -> None:
    """An OpenAI-format stream whose first event is an error is answered as the HTTP
    error of its type or numeric code would be: a refusal of the request is the client's
    400 (not a deployment's failure, not counted against its circuit). Every such event
    was a 502 server failure, failed over and counted against the deployment."""
    failures = gateway.failures("compat")
    gateway.upstream.now([event])
    with pytest.raises(openai.APIStatusError) as failed:
        list(gateway.client.chat.completions.create(model="compat", messages=ASK,
                                                    stream=True))
    answer = failed.value.response
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), answer.text
    assert gateway.failures("compat") == failures
