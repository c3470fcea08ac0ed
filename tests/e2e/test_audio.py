"""A real ``aigw serve`` process serving OpenAI's audio endpoints (/v1/audio/transcriptions,
/translations and /speech) over OpenAI's API and an OpenAI-compatible server (speaches,
say: their fakes), and echo's offline ones, through the official openai SDK: each answer
format passed through, the bill in the ledger and the access log (per minute, per token,
per character), a fallback between the two upstreams, speech passed on as it comes, an
upload past the cap refused before it is read, and each bad request's 4xx."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import select
import socket
import sqlite3
import time
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from ..fakes.openai_audio import speech_bytes, transcript_text
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from ..media import wav
from .server import Server, sdk_gateway

pytestmark = pytest.mark.e2e

UPLOAD_CAP = 200_000


@dataclass
class Audio:
    openai: OpenAIFake
    speaches: OpenAIFake
    client: openai.OpenAI
    server: Server

    def post(self, path: str, timeout: float = 10, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.server.base_url}/v1/audio/{path}", timeout=timeout,
                          headers={"authorization": f"Bearer {DEV_KEY}"}, **kwargs)

    def ledger(self, request_id: str) -> tuple[Any, ...]:
        with sqlite3.connect(self.server.root / "aigw.sqlite") as ledger:
            row: tuple[Any, ...] = ledger.execute(
                "SELECT route, deployment, status, tokens_in, tokens_out, cost_nanos / 1e9 "
                "FROM ledger WHERE request_id = ?", (request_id,)).fetchone()
        ledger.close()
        return row


@pytest.fixture
def audio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Audio]:
    with audio_gateway(tmp_path, monkeypatch) as served:
        yield served


@contextmanager
def audio_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, settings: str = "",
                  dev: str = "") -> Iterator[Audio]:
    """The audio fixture's gateway; ``settings``: more of its settings' flow mapping,
    ``dev``: more of the dev key's (a budget)."""
    upstream, speaches = OpenAIFake(), OpenAIFake(name="fake-speaches")
    monkeypatch.setenv("FAKE_OPENAI_KEY", upstream.api_key)
    monkeypatch.setenv("FAKE_SPEACHES_KEY", speaches.api_key)
    with serving(upstream.app) as openai_url, serving(speaches.app) as speaches_url, \
            sdk_gateway(tmp_path / "gw", (
                f"settings: {{max_audio_upload_bytes: {UPLOAD_CAP}{settings}}}\n"
                "providers:\n"
                f'  openai: {{type: openai, base_url: "{openai_url}/v1", '
                'api_key: "${FAKE_OPENAI_KEY}"}\n'
                f'  speaches: {{type: openai_compatible, base_url: "{speaches_url}/v1", '
                'api_key: "${FAKE_SPEACHES_KEY}"}\n'
                "  local: {type: echo}\n"
                "deployments:\n"
                "  whisper: {provider: openai, model: whisper-1, kind: transcription,\n"
                "            context_window: 8192, price: {per_minute: 0.006}}\n"
                "  gpt-4o-transcribe: {provider: openai, model: gpt-4o-transcribe,\n"
                "            kind: transcription, context_window: 16000,\n"
                "            price: {input: 2.5, output: 10.0}}\n"
                "  metered: {provider: openai, model: gpt-4o-transcribe, kind: transcription,\n"
                "            context_window: 16000, limits: {tpm: 100}}\n"
                "  faster-whisper: {provider: speaches, model: Systran/faster-whisper-small,\n"
                "            kind: transcription, context_window: 8192,\n"
                "            price: {per_minute: 0.001}}\n"
                "  tts: {provider: openai, model: tts-1, kind: speech, context_window: 4096,\n"
                "        price: {per_1m_characters: 15.0}}\n"
                "  kokoro: {provider: speaches, model: kokoro, kind: speech,\n"
                "           context_window: 4096}\n"
                "  mini-tts: {provider: openai, model: gpt-4o-mini-tts, kind: speech,\n"
                "             context_window: 2000, price: {input: 0.6, output: 12.0}}\n"
                "  echo-transcribe: {provider: local, model: echo-t, kind: transcription,"
                " context_window: 8192}\n"
                "  echo-speech: {provider: local, model: echo-s, kind: speech,"
                " context_window: 8192}\n"
                "  echo-chat: {provider: local, model: echo-1, context_window: 8192}\n"
                "groups:\n"
                "  transcribe: {members: [whisper, faster-whisper], retry: {attempts: 0}}\n"
                "  speak: {members: [tts, kokoro], retry: {attempts: 0}}\n"
                "  metered: {members: [metered], retry: {attempts: 0}}\n"
                "routes:\n"
                "  whisper: {deployment: whisper}\n"
                "  gpt-4o-transcribe: {deployment: gpt-4o-transcribe}\n"
                "  metered: {group: metered}\n"
                "  transcribe: {group: transcribe}\n"
                "  tts: {deployment: tts}\n"
                "  mini-tts: {deployment: mini-tts}\n"
                "  speak: {group: speak}\n"
                "  local-transcribe: {deployment: echo-transcribe}\n"
                "  local-speech: {deployment: echo-speech}\n"
                "  chat: {deployment: echo-chat}\n"
            ), dev) as (client, server):
        yield Audio(upstream, speaches, client, server)


def test_each_transcript_format_is_passed_through(audio: Audio) -> None:
    upload = wav(2.0)
    text = transcript_text(len(upload))
    answer = audio.client.audio.transcriptions.create(
        model="whisper", file=("speech.wav", upload, "audio/wav"), language="en",
        prompt="A talk.", temperature=0.2)
    assert answer.text == text
    sent = audio.openai.script.requests[-1]
    assert sent == {"model": "whisper-1", "language": "en", "prompt": "A talk.",
                    "temperature": "0.2",
                    "file": {"filename": "speech.wav", "content_type": "audio/wav",
                             "size": len(upload)}}
    assert audio.openai.script.headers[-1]["authorization"] == f"Bearer {audio.openai.api_key}"

    assert audio.client.audio.transcriptions.create(
        model="whisper", file=("speech.wav", upload), response_format="text") == f"{text}\n"
    srt = audio.client.audio.transcriptions.create(
        model="whisper", file=("speech.wav", upload), response_format="srt")
    assert srt == f"1\n00:00:00,000 --> 00:00:42,500\n{text}\n"
    vtt = audio.client.audio.transcriptions.create(
        model="whisper", file=("speech.wav", upload), response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n1\n00:00:00.000 --> 00:00:42.500\n")
    verbose = audio.client.audio.transcriptions.create(
        model="whisper", file=("speech.wav", upload), response_format="verbose_json",
        timestamp_granularities=["word", "segment"])
    assert (verbose.duration, verbose.language, verbose.text) == (42.5, "english", text)
    assert verbose.words is not None and [w.word for w in verbose.words] == text.split()
    assert audio.openai.script.requests[-1]["timestamp_granularities[]"] == ["word", "segment"]


def test_a_translation_goes_to_the_translations_endpoint(audio: Audio) -> None:
    upload = wav(1.0)
    with pytest.deprecated_call():  # the SDK marks OpenAI's translations deprecated
        response = audio.client.audio.translations.with_raw_response.create(
            model="whisper", file=("speech.wav", upload))
    assert response.parse().text == transcript_text(len(upload))
    assert set(audio.openai.script.requests[-1]) == {"model", "file"}
    line = audio.server.access_line(response.headers["x-request-id"])
    assert line is not None
    assert (line["endpoint"], line["route"], line["status"]) == ("translations", "whisper", 200)


def test_a_streamed_translation_is_refused_before_it_is_sent(audio: Audio) -> None:
    """OpenAI's translations endpoint has no stream (it refuses the field): a 400 naming
    it, nothing sent; ``stream=false`` is the default, left out of what is sent."""
    with pytest.deprecated_call(), pytest.raises(openai.BadRequestError) as refused:
        audio.client.audio.translations.create(model="whisper", file=("speech.wav", wav(1.0)),
                                               extra_body={"stream": True})
    assert refused.value.status_code == 400 and refused.value.param == "stream"
    assert audio.openai.script.requests == []
    with pytest.deprecated_call():
        audio.client.audio.translations.create(model="whisper", file=("speech.wav", wav(1.0)),
                                               extra_body={"stream": False})
    assert set(audio.openai.script.requests[-1]) == {"model", "file"}


def test_whisper_is_billed_per_minute_of_the_duration_it_reports(audio: Audio) -> None:
    response = audio.client.audio.transcriptions.with_raw_response.create(
        model="whisper", file=("speech.wav", wav(2.0)), response_format="verbose_json")
    request_id = response.headers["x-request-id"]
    route, deployment, status, _, _, cost = audio.ledger(request_id)
    assert (route, deployment, status) == ("whisper", "whisper", 200)
    assert cost == pytest.approx(42.5 / 60 * 0.006)  # the answer's duration, not the file's
    line = audio.server.access_line(request_id)
    assert line is not None
    assert (line["endpoint"], line["cost"]) == ("transcriptions", pytest.approx(cost))


def test_a_transcript_without_a_duration_is_billed_for_the_upload(audio: Audio) -> None:
    """text, SRT and VTT report no duration: a WAV file's samples at its header's rate
    tell its length (not the count its header claims), any other upload is taken at
    16,000 bytes a second (MP3 at 128 kbit/s)."""
    exact = audio.client.audio.transcriptions.with_raw_response.create(
        model="whisper", file=("speech.wav", wav(3.0)), response_format="text")
    assert audio.ledger(exact.headers["x-request-id"])[-1] == pytest.approx(3 / 60 * 0.006)
    lying = bytearray(wav(3.0))
    lying[40:44] = bytes(4)  # its data chunk claims no samples
    claimed = audio.client.audio.transcriptions.with_raw_response.create(
        model="whisper", file=("speech.wav", bytes(lying)), response_format="vtt")
    assert audio.ledger(claimed.headers["x-request-id"])[-1] == pytest.approx(3 / 60 * 0.006)
    guessed = audio.client.audio.transcriptions.with_raw_response.create(
        model="whisper", file=("speech.mp3", b"\xff\xfb" * 24_000, "audio/mpeg"),
        response_format="srt")
    assert audio.ledger(guessed.headers["x-request-id"])[-1] == pytest.approx(3 / 60 * 0.006)


def test_a_token_billed_transcription_is_billed_for_its_usage(audio: Audio) -> None:
    response = audio.client.audio.transcriptions.with_raw_response.create(
        model="gpt-4o-transcribe", file=("speech.wav", wav(1.0)))
    assert response.parse().usage.type == "tokens"  # passed through as OpenAI wrote it
    _, _, _, tokens_in, tokens_out, cost = audio.ledger(response.headers["x-request-id"])
    assert (tokens_in, tokens_out) == audio.openai.audio_tokens
    assert cost == pytest.approx((120 * 2.5 + 30 * 10.0) / 1_000_000)


def test_speech_is_streamed_through_with_its_content_type_and_billed(audio: Audio) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    with audio.client.audio.speech.with_streaming_response.create(
            model="tts", input=text, voice="alloy", response_format="wav",
            speed=1.5) as response:
        assert response.headers["content-type"] == "audio/wav"
        assert response.headers["x-aigw-deployment"] == "tts"
        data = response.read()
        request_id = response.headers["x-request-id"]
    assert data == speech_bytes(text, audio.openai.speech_size)
    assert audio.openai.script.requests[-1] == {"model": "tts-1", "input": text, "voice": "alloy",
                                                "response_format": "wav", "speed": 1.5}
    route, deployment, status, _, _, cost = audio.ledger(request_id)
    assert (route, deployment, status) == ("tts", "tts", 200)
    assert cost == pytest.approx(len(text) * 15.0 / 1_000_000)
    line = audio.server.access_line(request_id)
    assert line is not None and line["endpoint"] == "speech"
    mp3 = audio.client.audio.speech.create(model="tts", input="hi", voice="alloy")
    assert mp3.response.headers["content-type"] == "audio/mpeg"  # OpenAI's default format


def test_speech_reaches_the_client_before_the_upstream_has_sent_it_all(audio: Audio) -> None:
    audio.openai.speech_pause_s = 2.0  # between the first chunk and the rest
    started = time.monotonic()
    with audio.client.audio.speech.with_streaming_response.create(
            model="tts", input="hello", voice="alloy") as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        first_at = time.monotonic() - started
        rest = b"".join(chunks)
    assert first_at < 1.5, first_at  # not held until the whole file came
    assert time.monotonic() - started >= 2.0
    assert first + rest == speech_bytes("hello", audio.openai.speech_size)


def test_a_client_gone_mid_speech_lets_the_upstreams_answer_go(audio: Audio) -> None:
    audio.openai.speech_pause_s = 30.0
    with audio.client.audio.speech.with_streaming_response.create(
            model="tts", input="hello", voice="alloy") as response:
        next(response.iter_bytes())
    deadline = time.monotonic() + 10
    while audio.openai.speeches_cut == 0:  # not held open until the pause ends
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_failing_upstream_falls_back_to_the_next_member(audio: Audio) -> None:
    audio.openai.script.actions.append(Action(status=500))
    upload = wav(1.0)
    response = audio.client.audio.transcriptions.with_raw_response.create(
        model="transcribe", file=("speech.wav", upload))
    assert (response.headers["x-aigw-deployment"], response.headers["x-aigw-attempts"]) == (
        "faster-whisper", "2")
    assert response.parse().text == transcript_text(len(upload))
    assert audio.speaches.script.requests[-1]["model"] == "Systran/faster-whisper-small"
    assert audio.speaches.script.requests[-1]["file"]["size"] == len(upload)  # sent again whole

    audio.openai.script.actions.append(Action(status=503))
    with audio.client.audio.speech.with_streaming_response.create(
            model="speak", input="fall back", voice="alloy") as spoken:
        assert spoken.headers["x-aigw-deployment"] == "kokoro"
        assert spoken.read() == speech_bytes("fall back", audio.speaches.speech_size)
    assert audio.speaches.script.requests[-1]["model"] == "kokoro"


def test_echo_transcribes_and_speaks_offline(audio: Audio) -> None:
    upload = wav(1.5)
    digest = hashlib.sha256(upload).hexdigest()[:16]
    verbose = audio.client.audio.transcriptions.create(
        model="local-transcribe", file=("speech.wav", upload), response_format="verbose_json")
    assert verbose.text == f"echo transcript: {len(upload)} bytes, sha256 {digest}"
    assert verbose.duration == 1.5
    spoken = audio.client.audio.speech.create(model="local-speech", input="two words",
                                              voice="alloy")
    assert spoken.response.headers["content-type"] == "audio/wav"
    with wave.open(io.BytesIO(spoken.content)) as silence:
        assert silence.getnframes() / silence.getframerate() == pytest.approx(0.2)


def test_an_upload_over_the_cap_is_refused(audio: Audio) -> None:
    with pytest.raises(openai.APIStatusError) as refused:
        audio.client.audio.transcriptions.create(model="whisper",
                                                 file=("big.wav", b"\0" * (UPLOAD_CAP + 1)))
    assert refused.value.status_code == 413
    assert audio.openai.script.requests == []


def test_an_upload_over_the_cap_is_refused_before_it_is_all_sent(audio: Audio) -> None:
    """A chunked body (no Content-Length to refuse it by) is refused as it passes the cap:
    the 413 comes while the client still has most of its 10 MB to send."""
    host, port = audio.server.base_url.removeprefix("http://").split(":")
    total, piece = 10 * 1024 * 1024, b"\0" * 65536
    sent = 0
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nhost: gw\r\n"
            + f"authorization: Bearer {DEV_KEY}\r\n".encode()
            + b"content-type: multipart/form-data; boundary=xx\r\n"
            b"transfer-encoding: chunked\r\n\r\n")
        try:
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sent += len(piece)
        except OSError:  # the gateway answered and closed while we were sending
            pass
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < total // 2, sent


@pytest.mark.parametrize(("fields", "files", "param", "words"), [
    ({"model": "whisper"}, {}, "file", "Missing required parameter: 'file'"),
    ({"model": "whisper"}, {"file": ("a.wav", b"")}, "file", "'file' is empty"),
    ({}, {"file": ("a.wav", b"RIFF")}, "model", "Missing required parameter: 'model'"),
    ({"model": "whisper", "response_format": "mp4"}, {"file": ("a.wav", b"RIFF")},
     "response_format", "expected one of json, text, srt, verbose_json, vtt"),
    ({"model": "whisper", "temperature": "hot"}, {"file": ("a.wav", b"RIFF")},
     "temperature", "expected a number from 0 to 1"),
    ({"model": "whisper", "stream": "true"}, {"file": ("a.wav", b"RIFF")}, "stream",
     "'whisper-1' does not stream transcripts"),
    ({"model": "whisper"}, {"audio": ("a.wav", b"RIFF")}, "audio",
     "the audio goes in 'file'"),
    ({"model": "chat"}, {"file": ("a.wav", b"RIFF")}, "model",
     "'chat' is a chat model; it does not serve transcription"),
])
def test_bad_transcription_requests_are_refused_naming_the_field(
    audio: Audio, fields: dict[str, str], files: dict[str, Any], param: str, words: str,
) -> None:
    # (None, value) parts: a multipart form even with no file in it
    parts = {name: (None, value) for name, value in fields.items()} | files
    response = audio.post("transcriptions", files=parts)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")
    assert words in error["message"]
    assert audio.openai.script.requests == []  # refused before any call went out


def test_a_transcription_that_is_not_multipart_is_refused(audio: Audio) -> None:
    response = audio.post("transcriptions", json={"model": "whisper", "file": "x"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"
    assert "must be multipart/form-data" in response.json()["error"]["message"]


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"input": ""}, "input", "'input' is empty"),
    ({"input": "x" * 4097}, "input", "'input' has 4097 characters; the most is 4096"),
    ({"voice": None}, "voice", "'voice'"),
    ({"response_format": "ogg"}, "response_format", "'response_format'"),
    ({"speed": 5}, "speed", "'speed'"),
    ({"stream_format": "chunks"}, "stream_format", "'stream_format'"),
    ({"model": "whisper"}, "model",
     "'whisper' is a transcription model; it does not serve speech"),
])
def test_bad_speech_requests_are_refused_naming_the_field(
    audio: Audio, body: dict[str, Any], param: str, words: str,
) -> None:
    sent = {name: value for name, value in
            {"model": "tts", "input": "hello", "voice": "alloy", **body}.items()
            if value is not None}
    response = audio.post("speech", json=sent)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]
    assert audio.openai.script.requests == []


def test_an_audio_route_is_no_chat_model(audio: Audio) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        audio.client.chat.completions.create(
            model="tts", messages=[{"role": "user", "content": "hi"}])
    assert "tts is a speech model" in str(refused.value)
    with pytest.raises(openai.BadRequestError) as embedded:
        audio.client.embeddings.create(model="whisper", input="hi")
    assert "'whisper' is a transcription model; it does not serve embeddings" \
        in str(embedded.value)


def _events(response: httpx.Response | Any) -> list[dict[str, Any]]:
    """The ``data:`` of each server-sent event in a streamed answer."""
    return [json.loads(line.removeprefix("data: ")) for line in response.iter_lines()
            if line.startswith("data: ")]


def _ledger_row(audio: Audio, request_id: str) -> tuple[Any, ...]:
    """The request's ledger row, once its stream has been settled (as it ends)."""
    row = audio.server.ledger_row(request_id, wait_s=10)
    return tuple(row[name] for name in ("route", "deployment", "status", "tokens_in",
                                        "tokens_out", "cost"))


def test_a_streamed_transcription_passes_its_events_on_and_bills_their_usage(
    audio: Audio,
) -> None:
    upload = wav(1.0)
    response = audio.client.audio.transcriptions.with_raw_response.create(
        model="gpt-4o-transcribe", file=("speech.wav", upload), stream=True)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = list(response.parse())
    text = transcript_text(len(upload))
    assert [event.type for event in events] == (
        ["transcript.text.delta"] * len(text.split()) + ["transcript.text.done"])
    assert "".join(event.delta for event in events[:-1]) == text
    done = events[-1]
    assert done.type == "transcript.text.done" and done.text == text
    assert done.usage is not None and done.usage.input_tokens == 120
    assert audio.openai.script.requests[-1]["stream"] == "true"
    _, _, status, tokens_in, tokens_out, cost = _ledger_row(audio, response.headers["x-request-id"])
    assert (status, tokens_in, tokens_out) == (200, *audio.openai.audio_tokens)
    assert cost == pytest.approx((120 * 2.5 + 30 * 10.0) / 1_000_000)
    line = audio.server.access_line(response.headers["x-request-id"])
    assert line is not None and (line["endpoint"], line["status"]) == ("transcriptions", 200)


def test_speech_as_server_sent_events_is_passed_on_and_billed_its_usage(audio: Audio) -> None:
    text = "Say it as events."
    with audio.client.audio.speech.with_streaming_response.create(
            model="mini-tts", input=text, voice="alloy", stream_format="sse") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
        request_id = response.headers["x-request-id"]
    assert {event["type"] for event in events[:-1]} == {"speech.audio.delta"}
    audio_bytes = b"".join(base64.b64decode(event["audio"]) for event in events[:-1])
    assert audio_bytes == speech_bytes(text, audio.openai.speech_size)
    assert events[-1]["type"] == "speech.audio.done"
    assert audio.openai.script.requests[-1]["stream_format"] == "sse"
    _, _, status, tokens_in, tokens_out, cost = _ledger_row(audio, request_id)
    words = len(text.split())
    assert (status, tokens_in, tokens_out) == (200, words, audio.openai.speech_tokens)
    assert cost == pytest.approx((words * 0.6 + 400 * 12.0) / 1_000_000)


def test_a_streams_deployment_tpm_counts_the_usage_it_reported(audio: Audio) -> None:
    """The deployment's own tpm (100) is settled with the stream's reported usage (150
    tokens), not the hold's estimate of a second's audio (14): the next call is over it."""
    response = audio.client.audio.transcriptions.with_raw_response.create(
        model="metered", file=("speech.wav", wav(1.0)), stream=True)
    assert list(response.parse())[-1].type == "transcript.text.done"
    _ledger_row(audio, response.headers["x-request-id"])  # settled as it ended
    sent = len(audio.openai.script.requests)
    with pytest.raises(openai.RateLimitError):
        audio.client.audio.transcriptions.create(model="metered", file=("speech.wav", wav(1.0)))
    assert len(audio.openai.script.requests) == sent  # no call went out


def test_speech_as_events_is_held_for_its_audio_so_a_budget_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its hold bounds the audio tokens it reports (1.5 a character: 450 for these 300,
    $0.0054), not its input alone: the second speech, which its 400 tokens ($0.0048 each)
    would take past the $0.006 budget, is refused before it is sent."""
    text = ("Read this sentence aloud. " * 12)[:300]
    with audio_gateway(tmp_path, monkeypatch,
                       dev="budget: {amount: 0.006, period: total}") as served:
        def spoken() -> list[dict[str, Any]]:
            with served.client.audio.speech.with_streaming_response.create(
                    model="mini-tts", input=text, voice="alloy",
                    stream_format="sse") as response:
                events = _events(response)
                _ledger_row(served, response.headers["x-request-id"])  # settled
            return events

        assert spoken()[-1]["type"] == "speech.audio.done"
        with pytest.raises(openai.RateLimitError) as refused:
            spoken()
        assert "budget" in str(refused.value).lower()
        assert len(served.openai.script.requests) == 1
        spent = sum(row["cost"] for row in served.server.ledger_rows(1))
        assert spent == pytest.approx((len(text.split()) * 0.6 + 400 * 12.0) / 1e6)


def test_speech_as_events_stops_when_its_budget_runs_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stop_streams_over_budget, as for a chat stream: a reload that cuts the budget
    mid-stream stops it at its next check (every 16 events) with an error event."""
    with audio_gateway(tmp_path, monkeypatch, settings=", stop_streams_over_budget: true",
                       dev="budget: {amount: 10, period: total}") as served:
        served.openai.speech_size = 4096 * 40  # 40 events
        served.openai.speech_pause_s = 1.0  # after the first
        with served.client.audio.speech.with_streaming_response.create(
                model="mini-tts", input="stop me", voice="alloy",
                stream_format="sse") as response:
            lines = (line for line in response.iter_lines() if line.startswith("data: "))
            assert json.loads(next(lines).removeprefix("data: "))["type"] == "speech.audio.delta"
            config = served.server.root / "gateway.yaml"
            config.write_text(config.read_text().replace("amount: 10,", "amount: 0.000001,"))
            reloaded = httpx.post(f"{served.server.base_url}/admin/reload", timeout=30,
                                  headers={"Authorization": f"Bearer {DEV_KEY}"})
            assert reloaded.status_code == 200, reloaded.text
            rest = [json.loads(line.removeprefix("data: ")) for line in lines]
            request_id = response.headers["x-request-id"]
        assert "budget ran out" in rest[-1]["error"]["message"]
        assert len(rest) == 16  # 15 more events, then the error
        assert _ledger_row(served, request_id)[2] == 429


def test_an_upstreams_refusal_of_a_stream_is_an_openai_error(audio: Audio) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        audio.client.audio.speech.create(model="tts", input="hi", voice="alloy",
                                         stream_format="sse")
    assert "not supported for tts-1" in str(refused.value)
    assert refused.value.body is not None and audio.openai.api_key not in str(refused.value.body)


@pytest.mark.parametrize("kind", ["transcription", "speech"])
def test_a_client_gone_mid_stream_cuts_the_upstream_and_is_billed_as_cut(
    audio: Audio, kind: str,
) -> None:
    audio.openai.speech_pause_s = 30.0  # after the first event
    if kind == "speech":
        opened = audio.client.audio.speech.with_streaming_response.create(
            model="mini-tts", input="cut me off", voice="alloy", stream_format="sse")
    else:
        opened = audio.client.audio.transcriptions.with_streaming_response.create(
            model="gpt-4o-transcribe", file=("speech.wav", wav(2.0)), stream=True)
    with opened as response:
        next(response.iter_lines())
        request_id = response.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while audio.openai.speeches_cut == 0:  # not held open until the pause ends
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _, _, status, tokens_in, tokens_out, cost = _ledger_row(audio, request_id)
    assert status == 499
    if kind == "speech":  # the input it was held for, no audio tokens reported
        assert tokens_out == 0 and cost == pytest.approx(tokens_in * 0.6 / 1_000_000)
    else:  # the hold's estimate: 10 audio tokens and 4 transcript tokens a second
        assert tokens_in >= 20 and tokens_out == 8
        assert cost == pytest.approx((tokens_in * 2.5 + 8 * 10.0) / 1_000_000)


def test_echo_streams_a_transcript_and_speech_offline(audio: Audio) -> None:
    upload = wav(1.0)
    events = list(audio.client.audio.transcriptions.create(
        model="local-transcribe", file=("speech.wav", upload), stream=True))
    digest = hashlib.sha256(upload).hexdigest()[:16]
    assert events[-1].type == "transcript.text.done"
    assert events[-1].text == f"echo transcript: {len(upload)} bytes, sha256 {digest}"
    with audio.client.audio.speech.with_streaming_response.create(
            model="local-speech", input="two words", voice="alloy",
            stream_format="sse") as response:
        spoken = _events(response)
    wav_bytes = b"".join(base64.b64decode(event["audio"]) for event in spoken[:-1])
    with wave.open(io.BytesIO(wav_bytes)) as silence:
        assert silence.getnframes() / silence.getframerate() == pytest.approx(0.2)
    assert spoken[-1]["type"] == "speech.audio.done"


@pytest.mark.parametrize("kind", ["transcription", "speech"])
def test_a_client_gone_before_the_answer_is_billed_what_the_call_costs_anyway(
    audio: Audio, kind: str,
) -> None:
    """A client that stops waiting stops the call (a 499); the call that went out is
    billed what the provider bills whatever it answers: the audio's minutes, the input's
    characters (not the prompt's tokens alone, which these prices do not bill: 0)."""
    audio.openai.script.actions.append(Action(delay_s=3))
    with pytest.raises(httpx.TimeoutException):
        if kind == "transcription":
            audio.post("transcriptions", timeout=0.5, files={
                "model": (None, "whisper"), "file": ("speech.wav", wav(3.0))})
        else:
            audio.post("speech", timeout=0.5,
                       json={"model": "tts", "input": "hello there", "voice": "alloy"})
    rows = audio.server.ledger_rows(2)
    cost = 3 / 60 * 0.006 if kind == "transcription" else len("hello there") * 15 / 1e6
    assert [(row["status"], row["estimated"]) for row in rows] == [(499, 0), (499, 1)]
    assert rows[1]["cost"] == pytest.approx(cost)


def test_a_stream_the_upstream_breaks_off_ends_in_an_error_event_billed_the_estimate(
    audio: Audio,
) -> None:
    audio.openai.breaks_off = True
    with audio.client.audio.speech.with_streaming_response.create(
            model="mini-tts", input="broken off", voice="alloy", stream_format="sse") as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        request_id = response.headers["x-request-id"]
    assert json.loads(lines[0].removeprefix("data: "))["type"] == "speech.audio.delta"
    error = json.loads(lines[-1].removeprefix("data: "))["error"]
    assert error["code"] == "upstream_unreachable" and audio.openai.api_key not in str(error)
    _, _, status, tokens_in, tokens_out, cost = _ledger_row(audio, request_id)
    assert (status, tokens_out) == (502, 0)  # no usage came: the input it was held for
    assert cost == pytest.approx(tokens_in * 0.6 / 1_000_000)
