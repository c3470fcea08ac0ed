"""A real ``aigw serve`` process in front of the Gemini fake, driven by the official openai SDK."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest

from ..fakes.gemini_fake import GeminiFake
from ..fakes.serve import serving
from .server import sdk_gateway

pytestmark = pytest.mark.e2e

TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "lookup", "description": "Look a thing up",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                   "required": ["query"], "additionalProperties": False}}}]


@pytest.fixture
def gemini_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[openai.OpenAI]:
    fake = GeminiFake()
    monkeypatch.setenv("FAKE_GEMINI_KEY", fake.api_key)
    with serving(fake.app) as base_url, sdk_gateway(tmp_path / "gw", (
        "providers:\n"
        f'  gem: {{type: gemini, base_url: "{base_url}/v1beta", '
        'api_key: "${FAKE_GEMINI_KEY}"}\n'
        "deployments:\n"
        "  flash: {provider: gem, model: gemini-2.5-flash, context_window: 1048576,\n"
        "          capabilities: [streaming, tools, json_schema]}\n"
        "routes:\n"
        "  gemini: {deployment: flash}\n"
        "  cached: {deployment: flash, cache: {ttl_s: 600}}\n"
    )) as (client, _server):
        yield client


def test_openai_sdk_chat_and_stream_through_gemini(gemini_server: openai.OpenAI) -> None:
    completion = gemini_server.chat.completions.create(
        model="gemini", messages=[{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "Hello from the SDK"}])
    assert completion.choices[0].message.content == "fake-gemini: Hello from the SDK"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 5

    chunks = list(gemini_server.chat.completions.create(
        model="gemini", messages=[{"role": "user", "content": "streamed word by word"}],
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "fake-gemini: streamed word by word"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


class Sky(enum.StrEnum):
    CLEAR = "clear"
    CLOUDY = "cloudy"


class Forecast(pydantic.BaseModel):
    city: str
    days: int
    sky: Sky  # pydantic puts it in $defs, behind a $ref


def test_openai_sdk_structured_output_through_gemini(gemini_server: openai.OpenAI) -> None:
    """response_format becomes responseJsonSchema, which the fake answers with JSON of the
    schema (plain text without it, which the SDK would fail to parse), whole and streamed."""
    messages: list[Any] = [{"role": "user", "content": "Tomorrow in Oslo?"}]
    fitting = Forecast(city="fake-gemini: Tomorrow in Oslo?", days=4, sky=Sky.CLEAR)
    completion = gemini_server.chat.completions.parse(
        model="gemini", response_format=Forecast, messages=messages)
    assert completion.choices[0].message.parsed == fitting
    with gemini_server.chat.completions.stream(
            model="gemini", response_format=Forecast, messages=messages) as stream:
        assert stream.get_final_completion().choices[0].message.parsed == fitting
    loose = gemini_server.chat.completions.create(
        model="gemini", response_format={"type": "json_object"}, messages=messages)
    assert json.loads(loose.choices[0].message.content or "") == {
        "answer": "fake-gemini: Tomorrow in Oslo?"}


def test_an_answer_the_safety_filter_stopped_is_not_cached(
    gemini_server: openai.OpenAI,
) -> None:
    """finishReason SAFETY (content_filter) was cached and replayed for the whole TTL."""
    def cache(text: str, **options: Any) -> tuple[str | None, str | None]:
        raw = gemini_server.chat.completions.with_raw_response.create(
            model="cached", messages=[{"role": "user", "content": text}], **options)
        if not options:
            return raw.headers.get("x-aigw-cache"), raw.parse().choices[0].finish_reason
        finishes = [chunk.choices[0].finish_reason for chunk in raw.parse() if chunk.choices]
        return raw.headers.get("x-aigw-cache"), finishes[-1]  # read to its end: cached then

    assert [cache("please BLOCKME") for _ in range(2)] == [("miss", "content_filter")] * 2
    assert [cache("stream BLOCKME", stream=True) for _ in range(2)] == [
        ("miss", "content_filter")] * 2
    assert [cache("an answer to keep")[0] for _ in range(2)] == ["miss", "hit"]


def test_openai_sdk_tool_conversation_through_gemini(gemini_server: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "weather in Oslo?"}]
    first = gemini_server.chat.completions.create(model="gemini", messages=messages,
                                                  tools=TOOLS)
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "lookup"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"query": "weather in Oslo?"}  # type: ignore[union-attr]
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    second = gemini_server.chat.completions.create(model="gemini", messages=messages,
                                                   tools=TOOLS)
    assert second.choices[0].message.content == "tool said: sunny, 21 C"

    messages += [{"role": "assistant", "content": second.choices[0].message.content},
                 {"role": "user", "content": "and in Bergen?"}]
    stream = gemini_server.chat.completions.create(model="gemini", messages=messages,
                                                   tools=TOOLS, stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                slot = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += delta.id or ""
                slot["name"] += (delta.function and delta.function.name) or ""
                slot["arguments"] += (delta.function and delta.function.arguments) or ""
    assert finish == "tool_calls"
    assert calls[0]["id"].startswith("call_1")
    assert calls[0]["name"] == "lookup"
    assert json.loads(calls[0]["arguments"]) == {"query": "and in Bergen?"}
