"""Echo's audio, so the default gateway serves /v1/audio/* offline and tests can bill it.

A transcript names the upload: ``echo transcript: {bytes} bytes, sha256 {first 16 hex
digits}``, in the asked ``response_format`` (one segment spanning the upload's length).
Speech is a WAV file of silence, a tenth of a second per word of input (at least one
tenth), whatever format was asked: the gateway cannot encode MP3 or Opus.
"""

from __future__ import annotations

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
    data = call.upload.data
    text = f"echo transcript: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}"
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
    words = len(str(call.body.get("input", "")).split())
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(SAMPLE_RATE)
        audio.writeframes(b"\0\0" * (SAMPLE_RATE // 10) * max(1, words))
    return SpeechResult(ByteStream("audio/wav", _chunks(buffer.getvalue()), lambda: None),
                        call.usage)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), _CHUNK):
        yield data[start:start + _CHUNK]


def _clock(seconds: float, mark: str) -> str:
    whole = int(seconds)
    return (f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"
            f"{mark}{round((seconds - whole) * 1000):03d}")
