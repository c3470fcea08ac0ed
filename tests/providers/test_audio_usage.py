"""Audio tokens as each provider reports them, read into the usage and billed at the
deployment's audio prices: OpenAI's chat (and Azure's and every OpenAI-compatible
server's: one adapter) in ``prompt_tokens_details`` / ``completion_tokens_details``
``audio_tokens``, whole and streamed; Gemini's (and Vertex's: one adapter) by modality
in ``promptTokensDetails`` / ``cacheTokensDetails`` / ``candidatesTokensDetails``.
Anthropic and Bedrock take and answer no audio: nothing to read there."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ..fakes.gemini_fake import GeminiFake
from ..fakes.scripted import scripted_upstream
from ..media import wav_base64
from .conftest import CHAT, GatewayFactory, billed

# Per million: audio 16 and 32 times the text input price (cache reads at the input's).
AUDIO_PRICED = "price: {input: 1, output: 2, audio_input: 16, audio_output: 32}"
HEARD = [{"role": "user", "content": [{"type": "text", "text": "what is said?"}]}]
# 100 prompt tokens, of them 10 read from the cache and 60 audio; 50 output, 40 audio.
OPENAI_USAGE = {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
                "prompt_tokens_details": {"cached_tokens": 10, "audio_tokens": 60},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 40}}
OPENAI_COST = (30 * 1 + 10 * 1 + 60 * 16 + 10 * 2 + 40 * 32) / 1e6


def _openai_on(base_url: str) -> str:
    return f"""
        providers:
          oai: {{type: openai, base_url: "{base_url}/v1", api_key: "sk-test"}}
        deployments:
          audio: {{provider: oai, model: gpt-4o-audio-preview, context_window: 128000,
                  {AUDIO_PRICED}}}
        routes:
          audio: {{deployment: audio}}
        """


def _message(transcript: str) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "refusal": None,
            "audio": {"id": "audio_1", "data": "UklGRg==", "expires_at": 1,
                      "transcript": transcript}}


async def test_openai_audio_tokens_are_read_and_billed_at_audio_prices(
    make_gateway: GatewayFactory,
) -> None:
    with scripted_upstream() as upstream:
        client = await make_gateway(_openai_on(upstream.base_url))
        upstream.now({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                      "model": "gpt-4o-audio-preview", "usage": OPENAI_USAGE,
                      "choices": [{"index": 0, "message": _message("Hi there"),
                                   "finish_reason": "stop"}]})
        answer = await client.post(CHAT, json={"model": "audio", "messages": HEARD})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["audio"]["transcript"] == "Hi there"
    usage = answer.json()["usage"]
    assert (usage["prompt_tokens_details"], usage["completion_tokens_details"]) == (
        {"cached_tokens": 10, "audio_tokens": 60}, {"audio_tokens": 40})
    assert (await billed(client))["cost"] == pytest.approx(OPENAI_COST)


async def test_openai_streamed_audio_tokens_are_billed_at_audio_prices(
    make_gateway: GatewayFactory,
) -> None:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-audio-preview"}
    with scripted_upstream() as upstream:
        client = await make_gateway(_openai_on(upstream.base_url))
        upstream.now([
            {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None},
                                  "finish_reason": None}]},
            {**head, "choices": [{"index": 0, "delta": {"audio": {
                "id": "audio_1", "transcript": "Hi"}}, "finish_reason": None}]},
            {**head, "choices": [{"index": 0, "delta": {"audio": {"data": "UklGRg=="}},
                                  "finish_reason": None}]},
            {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {**head, "choices": [], "usage": OPENAI_USAGE}, "[DONE]"])
        async with client.stream("POST", CHAT, json={"model": "audio", "messages": HEARD,
                                                     "stream": True}) as response:
            assert response.status_code == 200
            events = [json.loads(line.removeprefix("data: "))
                      for line in (await response.aread()).decode().split("\n\n")
                      if line.startswith("data: {")]
    audio = [choice["delta"]["audio"] for event in events for choice in event["choices"]
             if "audio" in choice["delta"]]
    assert audio == [{"id": "audio_1", "transcript": "Hi"}, {"data": "UklGRg=="}]
    assert (await billed(client))["cost"] == pytest.approx(OPENAI_COST)


def _gemini_on(base_url: str, api_key: str = "AIza-test") -> str:
    return f"""
        providers:
          gem: {{type: gemini, base_url: "{base_url}/v1beta", api_key: "{api_key}"}}
        deployments:
          flash: {{provider: gem, model: gemini-2.5-flash, context_window: 1000000,
                  {AUDIO_PRICED}}}
        routes:
          flash: {{deployment: flash}}
        """


async def test_gemini_audio_by_modality_is_billed_at_audio_prices(
    make_gateway: GatewayFactory,
) -> None:
    """Of 100 prompt tokens 60 are audio, 10 of them read from the cache: 50 are billed at
    the audio input price; of 50 output tokens the 40 AUDIO ones at the audio output's."""
    with scripted_upstream() as upstream:
        client = await make_gateway(_gemini_on(upstream.base_url))
        upstream.now({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]},
                                      "finishReason": "STOP", "index": 0}],
                      "usageMetadata": {
                          "promptTokenCount": 100, "cachedContentTokenCount": 10,
                          "candidatesTokenCount": 50, "totalTokenCount": 150,
                          "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 40},
                                                  {"modality": "AUDIO", "tokenCount": 60}],
                          "cacheTokensDetails": [{"modality": "AUDIO", "tokenCount": 10}],
                          "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 10},
                                                      {"modality": "AUDIO",
                                                       "tokenCount": 40}]}})
        answer = await client.post(CHAT, json={"model": "flash", "messages": HEARD})
    assert answer.status_code == 200, answer.text
    assert (await billed(client))["cost"] == pytest.approx(
        (40 * 1 + 10 * 1 + 50 * 16 + 10 * 2 + 40 * 32) / 1e6)


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_gemini_input_audio_is_billed_at_the_audio_input_price(
    gemini_fake: GeminiFake, make_gateway: GatewayFactory, stream: bool,
) -> None:
    client = await make_gateway(_gemini_on(gemini_fake.base_url, "${FAKE_GEMINI_KEY}"))
    audio = wav_base64(1.0)  # 16,044 bytes: 33 AUDIO tokens as the fake counts them
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "what is said?"},
        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]}]
    response = await client.post(CHAT, json={"model": "flash", "messages": messages,
                                             "stream": stream})
    assert response.status_code == 200, response.text
    await response.aread()
    totals = await billed(client)
    heard = 33
    assert totals["cost"] == pytest.approx(
        ((totals["tokens_in"] - heard) * 1 + heard * 16 + totals["tokens_out"] * 2) / 1e6)


async def test_a_client_is_told_no_audio_where_there_was_none(
    make_gateway: GatewayFactory,
) -> None:
    """Text-only usage keeps its shape: no audio details added."""
    with scripted_upstream() as upstream:
        client = await make_gateway(_openai_on(upstream.base_url))
        upstream.now({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                      "model": "gpt-4o", "usage": {"prompt_tokens": 5, "completion_tokens": 2,
                                                    "total_tokens": 7},
                      "choices": [{"index": 0, "message": {"role": "assistant",
                                                            "content": "Hi"},
                                   "finish_reason": "stop"}]})
        answer = await client.post(CHAT, json={"model": "audio", "messages": HEARD})
    assert answer.json()["usage"] == {"prompt_tokens": 5, "completion_tokens": 2,
                                      "total_tokens": 7}
    assert (await billed(client))["cost"] == pytest.approx((5 + 2 * 2) / 1e6)


