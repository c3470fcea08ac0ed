"""A real ``aigw serve`` in front of the Anthropic fake, driven by the official openai SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest

from ..fakes.anthropic_fake import AnthropicFake
from ..fakes.brain import Action
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from .server import answered_both_ways, sdk_gateway

pytestmark = pytest.mark.e2e

TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "lookup", "description": "Look a thing up",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                   "required": ["query"]}}}]


@dataclass
class Upstreams:
    client: openai.OpenAI
    claude: AnthropicFake
    gpt: OpenAIFake  # the first member of the route "fallback", before Claude


@pytest.fixture
def upstreams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              openai_upstream: tuple[OpenAIFake, str]) -> Iterator[Upstreams]:
    fake = AnthropicFake()
    gpt, gpt_url = openai_upstream
    monkeypatch.setenv("FAKE_ANTHROPIC_KEY", fake.api_key)
    with serving(fake.app) as base_url, sdk_gateway(tmp_path / "gw", (
        "providers:\n"
        f'  claude: {{type: anthropic, base_url: "{base_url}", '
        'api_key: "${FAKE_ANTHROPIC_KEY}"}\n'
        f'  oai: {{type: openai, base_url: "{gpt_url}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}\n'
        "deployments:\n"
        "  sonnet: {provider: claude, model: claude-sonnet-4-5, context_window: 200000,\n"
        "           max_output_tokens: 4096, capabilities: [streaming, tools, json_schema]}\n"
        "  gpt: {provider: oai, model: gpt-4o-mini, context_window: 128000,\n"
        "        capabilities: [streaming, tools]}\n"
        "groups:\n"
        "  gpt-then-claude: {members: [gpt, sonnet], retry: {attempts: 0}}\n"
        "routes:\n"
        "  claude: {deployment: sonnet}\n"
        "  fallback: {group: gpt-then-claude}\n"
    )) as (client, _server):
        yield Upstreams(client, fake, gpt)


@pytest.fixture
def claude(upstreams: Upstreams) -> tuple[openai.OpenAI, AnthropicFake]:
    return upstreams.client, upstreams.claude


def test_openai_sdk_chat_and_stream_through_anthropic(
    claude: tuple[openai.OpenAI, AnthropicFake],
) -> None:
    client, fake = claude
    completion = client.chat.completions.create(
        model="claude", messages=[{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Hello from the SDK"}])
    assert completion.choices[0].message.content == "fake-anthropic: Hello from the SDK"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "claude-sonnet-4-5"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (9, 5)
    assert fake.script.requests[-1]["system"] == [{"type": "text", "text": "Be brief."}]

    chunks = list(client.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "streamed word by word"}],
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "fake-anthropic: streamed word by word"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


class Place(pydantic.BaseModel):
    city: str
    population: int


def test_openai_sdk_structured_output_through_anthropic(
    claude: tuple[openai.OpenAI, AnthropicFake],
) -> None:
    """response_format becomes output_config.format, which the fake answers with JSON of
    the schema (plain text without it, which the SDK would fail to parse)."""
    client, fake = claude
    completion = client.chat.completions.parse(
        model="claude", response_format=Place,
        messages=[{"role": "user", "content": "The biggest city?"}])
    assert completion.choices[0].message.parsed == Place(
        city="fake-anthropic: The biggest city?", population=4)  # its words
    assert fake.script.requests[-1]["output_config"]["format"]["type"] == "json_schema"


def _streamed_turn(client: openai.OpenAI, messages: list[Any]) -> tuple[dict[str, Any], str]:
    """One streamed answer reassembled into an assistant message, with its finish reason."""
    text, finish = "", ""
    calls: dict[int, dict[str, Any]] = {}
    for chunk in client.chat.completions.create(model="claude", messages=messages, tools=TOOLS,
                                                stream=True):
        choice = chunk.choices[0]
        text += choice.delta.content or ""
        for call in choice.delta.tool_calls or []:
            slot = calls.setdefault(call.index, {"id": "", "type": "function",
                                                 "function": {"name": "", "arguments": ""}})
            slot["id"] += call.id or ""
            if call.function is not None:
                slot["function"]["name"] += call.function.name or ""
                slot["function"]["arguments"] += call.function.arguments or ""
        finish = choice.finish_reason or finish
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = [calls[index] for index in sorted(calls)]
    return message, finish


def test_openai_sdk_streamed_tool_conversation_through_anthropic(
    claude: tuple[openai.OpenAI, AnthropicFake],
) -> None:
    client, fake = claude
    messages: list[Any] = [{"role": "user", "content": "weather in Oslo?"}]
    assistant, finish = _streamed_turn(client, messages)
    assert finish == "tool_calls"
    assert assistant["content"] == "I'll call lookup."
    [call] = assistant["tool_calls"]
    assert call["id"].startswith("toolu_") and call["function"]["name"] == "lookup"
    assert json.loads(call["function"]["arguments"]) == {"query": "weather in Oslo?"}

    messages += [assistant, {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"}]
    answer, finish = _streamed_turn(client, messages)
    assert (answer["content"], finish) == ("tool said: sunny, 21 C", "stop")
    assert fake.script.requests[-1]["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "I'll call lookup."},
            {"type": "tool_use", "id": call["id"], "name": "lookup",
             "input": {"query": "weather in Oslo?"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": call["id"], "content": "sunny, 21 C"}]},
    ]


# Prompts with no user turn, which OpenAI answers and Anthropic refuses (its first turn
# must be the user's), and the turns Anthropic is sent for them instead.
GREETING = {"role": "assistant", "content": "Hi! How can I help?"}
PLACEHOLDER = {"role": "user", "content": [{"type": "text", "text": "."}]}
NO_USER_TURN: list[tuple[list[Any], list[Any]]] = [
    ([{"role": "system", "content": "Write a haiku."}], [PLACEHOLDER]),
    ([{"role": "system", "content": "Be brief."}, GREETING], [
        PLACEHOLDER,
        {"role": "assistant", "content": [{"type": "text", "text": "Hi! How can I help?"}]},
        PLACEHOLDER]),
]


def test_a_prompt_with_no_user_turn_falls_back_from_openai_to_anthropic(
    upstreams: Upstreams,
) -> None:
    """System messages alone were a 400 from Anthropic (no message); a greeting alone
    went as the last turn, which Claude continues as a prefill (Claude 4.6 refuses one)."""
    for messages, sent in NO_USER_TURN:
        assert answered_both_ways(upstreams.client, "fallback", messages) == [
            ("gpt", "fake-openai: ")] * 2
        assert upstreams.gpt.script.requests[-1]["messages"] == messages  # as it came
        upstreams.gpt.script.actions += [Action(status=503), Action(status=503)]
        assert answered_both_ways(upstreams.client, "fallback", messages) == [
            ("sonnet", "fake-anthropic: .")] * 2
        assert [request["messages"] for request in upstreams.claude.script.requests[-2:]] == [
            sent, sent]
