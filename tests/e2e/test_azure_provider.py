"""A real ``aigw serve`` process in front of Azure OpenAI's URLs (the OpenAI fake serves
them), driven by the official openai SDK: chat, stream, a tool conversation, embeddings,
audio."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from ..fakes.openai_audio import speech_bytes, transcript_text
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from .server import sdk_gateway

pytestmark = pytest.mark.e2e

TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "lookup", "description": "Look a thing up",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]


@pytest.fixture
def azure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[openai.OpenAI,
                                                                             OpenAIFake]]:
    fake = OpenAIFake(name="fake-azure")
    monkeypatch.setenv("FAKE_AZURE_KEY", fake.api_key)
    with serving(fake.app) as base_url, sdk_gateway(tmp_path / "gw", (
        "providers:\n"
        f'  az: {{type: azure_openai, base_url: "{base_url}", '
        'api_key: "${FAKE_AZURE_KEY}", api_version: "2024-10-21"}\n'
        "deployments:\n"
        "  gpt: {provider: az, model: prod-gpt-4o, context_window: 128000,\n"
        "        capabilities: [streaming, tools]}\n"
        "  emb: {provider: az, model: prod-embedding, kind: embeddings,"
        " context_window: 8191}\n"
        "  whisper: {provider: az, model: prod-whisper, kind: transcription,"
        " context_window: 8192}\n"
        "  tts: {provider: az, model: prod-tts, kind: speech, context_window: 4096}\n"
        "routes:\n"
        "  gpt: {deployment: gpt}\n"
        "  emb: {deployment: emb}\n"
        "  whisper: {deployment: whisper}\n"
        "  tts: {deployment: tts}\n"
    )) as (client, _server):
        yield client, fake


def test_openai_sdk_through_azure(azure: tuple[openai.OpenAI, OpenAIFake]) -> None:
    client, fake = azure
    completion = client.chat.completions.create(
        model="gpt", messages=[{"role": "user", "content": "hello azure"}])
    assert completion.choices[0].message.content == "fake-azure: hello azure"
    assert completion.model == "prod-gpt-4o"
    assert fake.script.headers[-1]["api-key"] == fake.api_key

    text = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
        model="gpt", stream=True, messages=[{"role": "user", "content": "one two"}])
        if chunk.choices)
    assert text == "fake-azure: one two"


def test_legacy_completions_reach_the_azure_deployments_completions(
    azure: tuple[openai.OpenAI, OpenAIFake],
) -> None:
    client, fake = azure
    completion = client.completions.create(model="gpt", prompt="hello azure", suffix="end")
    assert completion.choices[0].text == "fake-azure: hello azure [end]"
    assert completion.model == "prod-gpt-4o"
    assert "model" not in fake.script.requests[-1]  # the URL names the deployment
    text = "".join(chunk.choices[0].text for chunk in client.completions.create(
        model="gpt", prompt="one two", stream=True) if chunk.choices)
    assert text == "fake-azure: one two"


def test_tool_conversation_reassembled_from_the_stream(
    azure: tuple[openai.OpenAI, OpenAIFake],
) -> None:
    client, _fake = azure
    messages: list[Any] = [{"role": "user", "content": "weather in Oslo?"}]
    calls: dict[int, dict[str, str]] = {}
    for chunk in client.chat.completions.create(model="gpt", stream=True, tools=TOOLS,
                                                messages=messages):
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            slot = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            slot["id"] += call.id or ""
            slot["name"] += (call.function.name or "") if call.function else ""
            slot["arguments"] += (call.function.arguments or "") if call.function else ""
    assert json.loads(calls[0]["arguments"]) == {"query": "weather in Oslo?"}
    messages.append({"role": "assistant", "tool_calls": [{
        "id": calls[0]["id"], "type": "function",
        "function": {"name": calls[0]["name"], "arguments": calls[0]["arguments"]}}]})
    messages.append({"role": "tool", "tool_call_id": calls[0]["id"], "content": "rainy"})
    final = client.chat.completions.create(model="gpt", tools=TOOLS, messages=messages)
    assert final.choices[0].message.content == "tool said: rainy"


def test_embeddings_through_azure(azure: tuple[openai.OpenAI, OpenAIFake]) -> None:
    client, fake = azure
    result = client.embeddings.create(model="emb", input=["a", "bb"])  # the SDK asks base64
    assert [len(row.embedding) for row in result.data] == [8, 8]
    assert fake.script.requests[-1]["encoding_format"] == "float"
    raw = client.embeddings.with_raw_response.create(model="emb", input="a",
                                                     encoding_format="base64")
    assert base64.b64decode(raw.parse().data[0].embedding)  # type: ignore[arg-type]


def test_audio_reaches_the_azure_deployments_audio_urls(
    azure: tuple[openai.OpenAI, OpenAIFake],
) -> None:
    client, fake = azure
    transcript = client.audio.transcriptions.create(model="whisper",
                                                    file=("a.mp3", b"\xff" * 100))
    assert transcript.text == transcript_text(100)
    assert fake.script.headers[-1]["api-key"] == fake.api_key  # and api-version, or a 404
    assert fake.script.requests[-1]["model"] == "prod-whisper"
    spoken = client.audio.speech.create(model="tts", input="hi azure", voice="alloy")
    assert spoken.content == speech_bytes("hi azure", fake.speech_size)
    assert fake.script.requests[-1]["model"] == "prod-tts"
