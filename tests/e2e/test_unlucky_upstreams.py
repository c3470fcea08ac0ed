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


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with scripted_upstream() as upstream, sdk_gateway(
            tmp_path_factory.mktemp("unlucky") / "gw", f"""
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
