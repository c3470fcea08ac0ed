"""Echo's audio, so the default gateway serves /v1/audio/* offline and tests can bill it.

A transcript names the upload: ``echo transcript: {bytes} bytes, sha256 {first 16 hex
digits}``, in the asked ``response_format`` (one segment spanning the upload's length).
Speech is a WAV file of silence, a tenth of a second per word of input (at least one
tenth), whatever format was asked: the gateway cannot encode MP3 or Opus. Either streams
as OpenAI's events when asked (``stream=true``, ``stream_format: "sse"``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import wave
from collections.abc import AsyncIterator

from ..upstream_aiohttp import ByteStream
from .audio import SpeechCall, SpeechResult, TranscriptionCall, TranscriptionResult
from .base import Usage

SAMPLE_RATE = 8000
_CHUNK = 4096  # bytes a chunk of the speech stream, so a client sees it come in pieces


def transcript(call: TranscriptionCall) -> TranscriptionResult:
    text = _text(call.upload.data)
    seconds = round(call.seconds, 3)
    usage = Usage(call.prompt_tokens, 0, audio_seconds=call.seconds)
    kind = call.response_format
    if kind == "text":
        return TranscriptionResult(f"{text}\n".encode(), "text/plain; charset=utf-8", usage)
    if kind in ("srt", "vtt"):
        end = _clock(seconds, "," if kind == "srt" else ".")
        cue = f"1\n00:00:00{',' if kind == 'srt' else '.'}000 --> {end}\n{text}\n"
        body = cue if kind == "srt" else f"WEBVTT\n\n{cue}"
        return TranscriptionResult(body.encode(), "text/plain; charset=utf-8", usage)
    document: dict[str, object] = {"text": text}
    if kind == "verbose_json":
        document = {"task": call.operation.removesuffix("s").replace("transcription",
                                                                    "transcribe"),
                    "language": "english", "duration": seconds, "text": text,
                    "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": seconds,
                                  "text": text, "tokens": [], "temperature": 0.0,
                                  "avg_logprob": 0.0, "compression_ratio": 1.0,
                                  "no_speech_prob": 0.0}]}
    else:
        document["usage"] = {"type": "duration", "seconds": max(1, round(call.seconds))}
    return TranscriptionResult(json.dumps(document).encode(), "application/json", usage)


def silence(call: SpeechCall) -> SpeechResult:
    return SpeechResult(ByteStream("audio/wav", _chunks(_wav(call)), lambda: None), call.usage)


def _wav(call: SpeechCall) -> bytes:
    words = len(str(call.body.get("input", "")).split())
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(SAMPLE_RATE)
        audio.writeframes(b"\0\0" * (SAMPLE_RATE // 10) * max(1, words))
    return buffer.getvalue()


async def transcript_events(call: TranscriptionCall) -> AsyncIterator[tuple[str, str]]:
    """The transcript as OpenAI streams one: a ``transcript.text.delta`` a word, then
    ``transcript.text.done`` with the text and its usage."""
    text = _text(call.upload.data)
    for index, word in enumerate(text.split(" ")):
        delta = word if index == 0 else f" {word}"
        yield "message", json.dumps({"type": "transcript.text.delta", "delta": delta})
    estimate = call.estimate
    yield "message", json.dumps({"type": "transcript.text.done", "text": text, "usage": {
        "type": "tokens", "input_tokens": estimate.prompt_tokens,
        "output_tokens": estimate.completion_tokens, "total_tokens": estimate.total_tokens}})


async def silence_events(call: SpeechCall) -> AsyncIterator[tuple[str, str]]:
    """The silence as OpenAI streams speech: ``speech.audio.delta`` events of base64
    audio, then ``speech.audio.done`` with the usage."""
    async for chunk in _chunks(_wav(call)):
        yield "message", json.dumps({"type": "speech.audio.delta",
                                     "audio": base64.b64encode(chunk).decode()})
    yield "message", json.dumps({"type": "speech.audio.done", "usage": {
        "input_tokens": call.prompt_tokens, "output_tokens": 0,
        "total_tokens": call.prompt_tokens}})


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), _CHUNK):
        yield data[start:start + _CHUNK]


def _clock(seconds: float, mark: str) -> str:
    whole = int(seconds)
    return (f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"
            f"{mark}{round((seconds - whole) * 1000):03d}")


def _text(data: bytes) -> str:
    return f"echo transcript: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}"
