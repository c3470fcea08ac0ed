"""Audio calls (a transcription or translation, a speech), their answers, and the seam
the adapters that serve them offer (``AudioAdapter``: OpenAI's API and echo's).

A transcript is passed through as the provider wrote it (JSON, text, SRT, VTT); only its
usage is read from it, where it is JSON. Speech audio is passed on as it arrives. A
streamed answer (``EventStream``) is passed on event by event, and billed for what its
last event reports.
"""

from __future__ import annotations

import io
import json
import math
import wave
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from aigw.compiler.graph import Deployment, Provider

from ..errors import UpstreamServerError
from ..upstream_aiohttp import ByteStream, FormFile
from .base import ChatAdapter, Usage, not_served, reported_count
from .events import EventStream

# What an upload whose length cannot be read from it (not a WAV file) is taken to last:
# 16,000 bytes a second is MP3 at 128 kbit/s, the common rate. It is the transcription's
# hold, and its bill where the answer reports no duration (text, SRT and VTT answers).
ESTIMATED_BYTES_PER_SECOND = 16_000
# A hold's estimate of a token-billed transcription (gpt-4o-transcribe): input audio
# tokens a second, and transcript tokens a second (speech is ~150 words a minute).
AUDIO_TOKENS_PER_SECOND = 10
TRANSCRIPT_TOKENS_PER_SECOND = 4
# A hold's bound on the audio tokens a streamed speech reports (gpt-4o-mini-tts's
# ``speech.audio.done`` usage, billed at the output price): OpenAI estimates its speech
# at $0.015 a minute, at $12 per 1M audio tokens 1,250 tokens a minute (~21 a second);
# speech runs ~15 characters a second (150 words a minute), so ~1.4 tokens a character
# (one measurement found ~6 audio tokens a text token of ~4.7 characters: ~1.3). Rounded
# up; a slower ``speed`` speaks longer, in proportion. Instructions that slow the voice
# (or a language denser per character) are the estimate's error.
SPEECH_AUDIO_TOKENS_PER_CHARACTER = 1.5


@dataclass(frozen=True, slots=True)
class TranscriptionCall:
    """``upload`` transcribed (``operation`` "transcriptions") or translated to English
    ("translations"); ``fields``: the client's other form fields, in its order, sent on
    as they came (model set to the deployment's)."""

    deployment: Deployment
    operation: Literal["transcriptions", "translations"]
    fields: tuple[tuple[str, str], ...]
    upload: FormFile
    response_format: str
    prompt_tokens: int  # the ``prompt`` field's, as the gateway counted them
    seconds: float  # the upload's length, read from a WAV file's header or estimated

    @property
    def estimate(self) -> Usage:
        """What it is held for, and a stream cut before its usage came is billed: the
        prompt's tokens and the audio's, and a transcript of the audio's length."""
        return Usage(self.prompt_tokens + round(self.seconds * AUDIO_TOKENS_PER_SECOND),
                     round(self.seconds * TRANSCRIPT_TOKENS_PER_SECOND),
                     audio_seconds=self.seconds)


@dataclass(frozen=True, slots=True)
class TranscriptionResult:
    body: bytes  # as the provider wrote it, in the asked response_format
    content_type: str
    usage: Usage


@dataclass(frozen=True, slots=True)
class SpeechCall:
    """``body`` (the client's JSON: input, voice, response_format, ...) spoken; the model
    is set to the deployment's when it is sent."""

    deployment: Deployment
    body: dict[str, Any]
    characters: int
    prompt_tokens: int  # the input's, as the gateway counted them

    @property
    def usage(self) -> Usage:
        """A speech answer is bytes, with no usage in it: the input is what is billed
        (tts-1's characters, gpt-4o-mini-tts's input tokens)."""
        return Usage(self.prompt_tokens, 0, characters=self.characters)


@dataclass(frozen=True, slots=True)
class SpeechResult:
    audio: ByteStream  # its status checked; its bytes not read yet
    usage: Usage


@runtime_checkable
class AudioAdapter(Protocol):
    async def transcribe(self, call: TranscriptionCall) -> TranscriptionResult: ...

    async def speak(self, call: SpeechCall) -> SpeechResult: ...

    async def transcribe_events(self, call: TranscriptionCall) -> EventStream:
        """The transcript as ``transcript.text.delta`` events, then
        ``transcript.text.done`` (``stream=true``)."""
        ...

    async def speak_events(self, call: SpeechCall) -> EventStream:
        """The audio as ``speech.audio.delta`` events, then ``speech.audio.done``
        (``stream_format: "sse"``)."""
        ...


def speech_audio_tokens(characters: int, speed: float | None) -> int:
    """The audio tokens a speech of ``characters`` is held for, at ``speed`` (1 unset)."""
    return math.ceil(characters * SPEECH_AUDIO_TOKENS_PER_CHARACTER / (speed or 1.0))


def audio_adapter(adapter: ChatAdapter, deployment: Deployment) -> AudioAdapter:
    """``adapter`` as the audio seam; the compiler keeps audio deployments off providers
    without one (AGW354), so the error is for a provider whose adapter lost it."""
    if not isinstance(adapter, AudioAdapter):
        raise not_served(deployment, deployment.provider, "audio")
    return adapter


def upload_seconds(data: bytes) -> float:
    """How long an upload lasts: a PCM WAV file's samples after its header, at the rate
    its header gives (not the frame count it claims: a header that says 0 would have its
    audio billed as none); any other upload is estimated at
    ``ESTIMATED_BYTES_PER_SECOND``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        file = io.BytesIO(data)
        try:
            with wave.open(file) as audio:  # read up to the samples' start
                rate: int = audio.getframerate() * audio.getsampwidth() * audio.getnchannels()
                return (len(data) - file.tell()) / rate
        # RuntimeError: what wave raises for a chunk that claims to run past the one
        # holding it (a client's bytes, not a bug of ours).
        except (wave.Error, EOFError, ZeroDivisionError, RuntimeError):
            pass  # not PCM, or a damaged header: estimated as any other upload
    return len(data) / ESTIMATED_BYTES_PER_SECOND


def transcript_usage(body: bytes, call: TranscriptionCall, provider: Provider) -> Usage:
    """What a transcript is billed for: the tokens its ``usage`` reports (OpenAI's
    ``{"type": "tokens", input_tokens, output_tokens}``), and the audio's seconds, as
    ``usage.seconds`` (``{"type": "duration"}``) or verbose_json's ``duration`` reports
    them, else ``call.seconds``. A text, SRT or VTT answer reports neither."""
    prompt, output, seconds = call.prompt_tokens, 0, call.seconds
    if call.response_format not in ("json", "verbose_json"):
        return Usage(prompt, output, audio_seconds=seconds)
    document = json.loads(body)
    if not isinstance(document, dict):
        raise UpstreamServerError(f"provider '{provider.name}' answered a transcript that is "
                                  "not a JSON object", provider=provider.name)
    usage = document.get("usage") or {}
    if usage.get("type") == "tokens":
        prompt = reported_count(usage.get("input_tokens"), provider, "tokens") or 0
        output = reported_count(usage.get("output_tokens"), provider, "tokens") or 0
    duration = usage.get("seconds") if usage.get("type") == "duration" \
        else document.get("duration")
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, int | float) \
                or not 0 <= duration < float("inf"):
            raise UpstreamServerError(f"provider '{provider.name}' reported a duration that "
                                      f"is not a number of seconds ({duration!r})",
                                      provider=provider.name)
        seconds = float(duration)
    return Usage(prompt, output, audio_seconds=seconds)
