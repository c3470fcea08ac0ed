"""A real ``aigw serve`` process serving a spoken chat (gpt-4o-audio-preview: ``modalities``
with "audio", an ``audio`` voice and format, ``input_audio`` parts) over OpenAI's chat API
(the OpenAI fake), through the official openai SDK: the request passed on as it came, the
answer's ``message.audio`` (a stream's ``delta.audio``) passed back, its audio tokens billed
at the deployment's audio prices in the ledger and the access log, and a hold priced at the
audio output price, so that a budget the spoken answer would overrun refuses it up front."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ..fakes.brain import Action
from ..fakes.openai_fake import OpenAIFake
from ..fakes.openai_spoken import (
    AUDIO_ID,
    input_audio_tokens,
    output_audio_tokens,
    speech,
    spoken_pcm,
)
from ..fakes.serve import serving
from ..media import wav_base64
from .server import Server, sdk_gateway

pytestmark = pytest.mark.e2e

# gpt-4o-audio-preview's prices: its audio 16 and 8 times its text.
INPUT, OUTPUT, AUDIO_INPUT, AUDIO_OUTPUT = 2.5, 10.0, 40.0, 80.0


MESSAGES: list[Any] = [{"role": "user", "content": [
    {"type": "text", "text": "What is said in this recording?"},
    {"type": "input_audio", "input_audio": {"data": wav_base64(2.0), "format": "wav"}}]}]
SPOKEN: dict[str, Any] = {"modalities": ["text", "audio"],
                          "audio": {"voice": "alloy", "format": "wav"}}


@dataclass
class Spoken:
    upstream: OpenAIFake
    client: openai.OpenAI
    server: Server


@contextmanager
def spoken_gateway(root: Path, dev: str = "") -> Iterator[Spoken]:
    """A route ``speaker`` to gpt-4o-audio-preview on the OpenAI fake, at its prices;
    ``dev``: more of the dev key's entry (a budget)."""
    upstream = OpenAIFake()
    with pytest.MonkeyPatch.context() as monkeypatch, serving(upstream.app) as url:
        monkeypatch.setenv("FAKE_OPENAI_KEY", upstream.api_key)
        with sdk_gateway(root, (
                "providers:\n"
                f'  openai: {{type: openai, base_url: "{url}/v1", '
                'api_key: "${FAKE_OPENAI_KEY}"}\n'
                "deployments:\n"
                "  gpt-4o-audio: {provider: openai, model: gpt-4o-audio-preview,\n"
                "                 context_window: 128000, max_output_tokens: 16384,\n"
                f"                 price: {{input: {INPUT}, output: {OUTPUT},\n"
                f"                         audio_input: {AUDIO_INPUT}, "
                f"audio_output: {AUDIO_OUTPUT}}}}}\n"
                "routes:\n"
                "  speaker: {deployment: gpt-4o-audio}\n"
        ), dev) as (client, server):
            yield Spoken(upstream, client, server)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spoken]:
    with spoken_gateway(tmp_path_factory.mktemp("spoken") / "gw") as served:
        yield served


def billed(prompt: int, completion: int, audio_in: int, audio_out: int) -> float:
    """What a spoken chat's usage costs at gpt-4o-audio-preview's prices."""
    return ((prompt - audio_in) * INPUT + audio_in * AUDIO_INPUT
            + (completion - audio_out) * OUTPUT + audio_out * AUDIO_OUTPUT) / 1_000_000


def test_a_spoken_chat_is_passed_through_and_its_audio_billed_at_audio_prices(
    spoken: Spoken,
) -> None:
    raw = spoken.client.chat.completions.with_raw_response.create(
        model="speaker", messages=MESSAGES, **SPOKEN)
    answer = raw.parse()
    sent = spoken.upstream.script.requests[-1]
    assert (sent["messages"], sent["modalities"], sent["audio"]) == (
        MESSAGES, SPOKEN["modalities"], SPOKEN["audio"])
    message = answer.choices[0].message
    assert message.content is None and message.audio is not None
    transcript = message.audio.transcript
    assert transcript and (message.audio.id, message.audio.data) == (AUDIO_ID,
                                                                     speech(transcript))
    audio_in, audio_out = input_audio_tokens(MESSAGES), output_audio_tokens(transcript)
    assert audio_in == 20 and audio_out > 0  # two seconds at 10 a second
    usage = answer.usage
    assert usage is not None
    request_id = raw.headers["x-request-id"]
    row = spoken.server.ledger_row(request_id)
    assert (row["tokens_in"], row["tokens_out"]) == (usage.prompt_tokens,
                                                     usage.completion_tokens)
    assert (row["tokens_audio_in"], row["tokens_audio_out"]) == (audio_in, audio_out)
    assert row["cost"] == pytest.approx(billed(usage.prompt_tokens, usage.completion_tokens,
                                               audio_in, audio_out))
    assert usage.prompt_tokens_details is not None
    assert usage.completion_tokens_details is not None
    assert (usage.prompt_tokens_details.audio_tokens,
            usage.completion_tokens_details.audio_tokens) == (audio_in, audio_out)
    line = spoken.server.access_line(request_id)
    assert line is not None
    assert (line["audio_input_tokens"], line["audio_output_tokens"]) == (audio_in, audio_out)
    assert line["cost"] == pytest.approx(row["cost"])


def test_a_streamed_spoken_chat_passes_delta_audio_on_and_is_billed_at_audio_prices(
    spoken: Spoken,
) -> None:
    raw = spoken.client.chat.completions.with_raw_response.create(
        model="speaker", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True}, **SPOKEN)
    pieces, usage = [], None
    for chunk in raw.parse():
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            audio = choice.delta.to_dict().get("audio")
            if audio is not None:
                pieces.append(audio)
    sent = spoken.upstream.script.requests[-1]
    assert (sent["messages"], sent["modalities"], sent["audio"]) == (
        MESSAGES, SPOKEN["modalities"], SPOKEN["audio"])
    transcript = "".join(piece.get("transcript", "") for piece in pieces)
    assert pieces[0]["id"] == AUDIO_ID
    assert b"".join(base64.b64decode(piece["data"]) for piece in pieces
                    if "data" in piece) == spoken_pcm(transcript)
    assert "expires_at" in pieces[-1]
    audio_in, audio_out = input_audio_tokens(MESSAGES), output_audio_tokens(transcript)
    assert usage is not None
    row = spoken.server.ledger_row(raw.headers["x-request-id"], wait_s=5.0)
    assert row["cost"] == pytest.approx(billed(usage.prompt_tokens, usage.completion_tokens,
                                               audio_in, audio_out))
    assert (row["tokens_audio_in"], row["tokens_audio_out"]) == (audio_in, audio_out)
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.audio_tokens == audio_out


def test_a_spoken_answer_is_held_at_the_audio_output_price(tmp_path: Path) -> None:
    """1,000 output tokens held at the text price ($0.01) fit a $0.02 budget; spoken,
    they may cost $0.08, and the request is refused before it is sent."""
    with spoken_gateway(tmp_path / "gw", dev="budget: {amount: 0.02, period: total}") as served:
        text = served.client.chat.completions.create(
            model="speaker", messages=[{"role": "user", "content": "Hello"}],
            max_completion_tokens=1000)
        assert text.choices[0].message.content
        asked = len(served.upstream.script.requests)
        with pytest.raises(openai.RateLimitError) as refused:
            served.client.chat.completions.create(
                model="speaker", messages=[{"role": "user", "content": "Hello"}],
                max_completion_tokens=1000, **SPOKEN)
        assert "budget" in str(refused.value).lower()
        assert len(served.upstream.script.requests) == asked  # never sent


def test_the_usage_api_and_admin_spend_sum_audio_tokens(tmp_path: Path) -> None:
    """A spoken chat whole and one streamed: /v1/costs/summary and /admin/spend give
    their audio tokens, summed, beside the text tokens they are of."""
    with spoken_gateway(tmp_path / "gw") as served:
        usages = []
        whole = served.client.chat.completions.create(model="speaker", messages=MESSAGES,
                                                      **SPOKEN)
        usages.append(whole.usage)
        for chunk in served.client.chat.completions.create(
                model="speaker", messages=MESSAGES, stream=True,
                stream_options={"include_usage": True}, **SPOKEN):
            if chunk.usage is not None:
                usages.append(chunk.usage)
        served.server.ledger_rows(2, wait_s=5.0)  # a stream's is written as it ends
        audio_in = sum(usage.prompt_tokens_details.audio_tokens for usage in usages
                       if usage is not None and usage.prompt_tokens_details is not None)
        audio_out = sum(usage.completion_tokens_details.audio_tokens for usage in usages
                        if usage is not None and usage.completion_tokens_details is not None)
        assert audio_in == 2 * input_audio_tokens(MESSAGES) and audio_out > 0
        for path in ("/v1/costs/summary?group_by=route", "/admin/spend?group_by=route"):
            answer = httpx.get(f"{served.server.base_url}{path}",
                               headers={"authorization": f"Bearer {served.client.api_key}"})
            assert answer.status_code == 200, answer.text
            (row,) = answer.json()["data"]
            assert (row["route"], row["requests"], row["tokens_audio_in"],
                    row["tokens_audio_out"]) == ("speaker", 2, audio_in, audio_out), path


def test_a_spoken_stream_cut_before_its_usage_is_billed_the_audio_it_delivered(
    spoken: Spoken,
) -> None:
    """Three words spoken (each its transcript, then its audio as pcm16), then the
    upstream's connection drops, before its usage: billed its prompt's audio at the audio
    input price, the transcript as text, and the audio delivered at the audio output
    price (its seconds, at 48,000 bytes a second, at ~20 tokens a second). It was billed
    the transcript alone, at the text price: 9 tokens of a spoken answer's ~30."""
    spoken.upstream.script.actions.append(Action(cut_stream_after=7))  # the role's, 3 x 2
    raw = spoken.client.chat.completions.with_raw_response.create(
        model="speaker", messages=MESSAGES, stream=True,
        stream_options={"include_usage": True}, **SPOKEN)
    pieces: list[dict[str, Any]] = []
    with pytest.raises(openai.APIError):
        for chunk in raw.parse():
            for choice in chunk.choices:
                audio = choice.delta.to_dict().get("audio")
                if audio is not None:
                    pieces.append(audio)
    delivered = b"".join(base64.b64decode(piece["data"]) for piece in pieces if "data" in piece)
    transcript = "".join(piece.get("transcript", "") for piece in pieces)
    assert len(transcript.split()) == 3 and delivered == spoken_pcm(transcript)
    audio_in, audio_out = input_audio_tokens(MESSAGES), len(delivered) * 20 // 48_000
    assert audio_out == output_audio_tokens(transcript) == 24

    row = spoken.server.ledger_row(raw.headers["x-request-id"], wait_s=5.0)
    assert row["status"] >= 500
    # The gateway's estimate of the input audio counts the WAV file's header too: a token.
    assert (row["tokens_audio_in"], row["tokens_audio_out"]) == (audio_in + 1, audio_out)
    assert row["tokens_out"] > audio_out  # and the transcript's text tokens
    assert row["cost"] == pytest.approx(billed(row["tokens_in"], row["tokens_out"],
                                               audio_in + 1, audio_out))


def test_an_answer_without_usage_bills_its_audio_at_audio_prices(spoken: Spoken) -> None:
    """An upstream that leaves usage out (whole, or a stream that ignores include_usage):
    the gateway counts the answer, its input_audio parts as audio input tokens (as its
    hold estimated them: 10 a second of the file) and its spoken audio as audio output tokens (a WAV
    file's seconds from its header, a stream's pcm16 at 48,000 bytes a second). Both
    were billed at the text prices, the spoken audio not at all."""
    spoken.upstream.reports_usage = False
    try:
        whole = spoken.client.chat.completions.with_raw_response.create(
            model="speaker", messages=MESSAGES, **SPOKEN)
        streamed = spoken.client.chat.completions.with_raw_response.create(
            model="speaker", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True}, **SPOKEN)
        chunks = list(streamed.parse())
    finally:
        spoken.upstream.reports_usage = True
    message = whole.parse().choices[0].message
    assert message.audio is not None
    transcripts = [message.audio.transcript, "".join(
        choice.delta.to_dict().get("audio", {}).get("transcript", "")
        for chunk in chunks for choice in chunk.choices)]
    usages = [whole.parse().usage, chunks[-1].usage]  # as the gateway counted them
    audio_in = input_audio_tokens(MESSAGES)  # the input's WAV header is counted too, below
    # The header of the whole answer's WAV file is counted as audio too: a token.
    for raw, transcript, usage, header in zip((whole, streamed), transcripts, usages, (1, 0),
                                              strict=True):
        audio_out = output_audio_tokens(transcript) + header
        row = spoken.server.ledger_row(raw.headers["x-request-id"], wait_s=5.0)
        assert (row["tokens_audio_in"], row["tokens_audio_out"]) == (audio_in + 1, audio_out)
        assert row["tokens_out"] > audio_out  # the transcript's text too
        assert row["cost"] == pytest.approx(billed(row["tokens_in"], row["tokens_out"],
                                                   audio_in + 1, audio_out))
        assert usage is not None and usage.prompt_tokens_details is not None
        assert usage.completion_tokens_details is not None
        assert (usage.prompt_tokens_details.audio_tokens,
                usage.completion_tokens_details.audio_tokens) == (
            audio_in + 1, audio_out)


def test_a_spoken_call_cut_before_it_answered_bills_its_input_audio_at_the_audio_price(
    spoken: Spoken,
) -> None:
    """The request's deadline passes while the upstream is still thinking: the call that
    went out is billed its prompt (an estimated record of its own), its input_audio parts
    as audio input tokens, as its hold priced them. They were billed at the text price."""
    before = len(spoken.server.ledger_rows(0))
    spoken.upstream.script.actions.append(Action(delay_s=3.0))
    with pytest.raises(openai.APIStatusError):
        spoken.client.chat.completions.create(
            model="speaker", messages=MESSAGES, extra_headers={"x-aigw-deadline-ms": "500"},
            **SPOKEN)
    row = [row for row in spoken.server.ledger_rows(before + 2) if row["estimated"]][-1]
    audio_in = input_audio_tokens(MESSAGES) + 1  # the WAV file's header counted too
    assert (row["tokens_audio_in"], row["tokens_out"]) == (audio_in, 0)
    assert row["cost"] == pytest.approx(billed(row["tokens_in"], 0, audio_in, 0))
