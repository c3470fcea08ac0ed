"""The OpenAI fake's spoken chat (gpt-4o-audio-preview): ``input_audio`` parts counted as
audio prompt tokens, and with ``modalities`` asking for "audio" the answer spoken.

As OpenAI's API reference gives them: the message's ``content`` is null and its
``audio`` holds ``id``, base64 ``data`` (here a WAV file of silence as long as the
answer is spoken), ``expires_at`` and the ``transcript``; a stream's ``delta.audio``
brings the id with the transcript's pieces, each followed by its audio's data (pcm16),
then ``expires_at``. The usage counts the audio in ``prompt_tokens`` and ``completion_tokens``
and, of them, in ``prompt_tokens_details.audio_tokens`` and
``completion_tokens_details.audio_tokens`` (the transcript's tokens are text tokens).
"""

from __future__ import annotations

import base64
import io
import math
import time
import wave
from typing import Any

from .brain import words

AUDIO_ID = "audio_fake"
# Input audio tokens a second (OpenAI counts ~1 per 100 ms of user audio) and audio
# tokens a transcript's word is spoken in (~20 a second, ~2.5 words a second).
INPUT_AUDIO_TOKENS_PER_SECOND = 10
AUDIO_TOKENS_PER_WORD = 8
MP3_BYTES_PER_SECOND = 16_000
# A spoken answer's audio: ~20 tokens a second (OpenAI counts ~1 per 50 ms of assistant
# audio), at pcm16's 24 kHz.
SPOKEN_TOKENS_PER_SECOND = 20
PCM16_RATE = 24_000


def speaks(body: dict[str, Any]) -> bool:
    return "audio" in (body.get("modalities") or [])


def input_audio_tokens(messages: list[Any]) -> int:
    """The audio tokens of the ``input_audio`` parts of ``messages``: a WAV file's
    seconds from its header, any other audio's at MP3's 128 kbit/s."""
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if part.get("type") == "input_audio":
                total += math.ceil(_seconds(part["input_audio"]) * INPUT_AUDIO_TOKENS_PER_SECOND)
    return total


def _seconds(audio: dict[str, Any]) -> float:
    data = base64.b64decode(audio["data"])
    if audio.get("format") == "wav":
        with wave.open(io.BytesIO(data)) as sound:
            return sound.getnframes() / sound.getframerate()
    return len(data) / MP3_BYTES_PER_SECOND


def output_audio_tokens(transcript: str) -> int:
    return len(transcript.split()) * AUDIO_TOKENS_PER_WORD


def spoken_pcm(transcript: str) -> bytes:
    """The transcript spoken: silence as long as its audio tokens last, as pcm16 (24 kHz
    mono, 16-bit), the format a stream's audio comes in."""
    return _pcm(output_audio_tokens(transcript))


def _pcm(tokens: int) -> bytes:
    return b"\0\0" * (tokens * PCM16_RATE // SPOKEN_TOKENS_PER_SECOND)


def speech(transcript: str) -> str:
    """A whole answer's audio, base64: ``spoken_pcm`` in a WAV file (the format the
    tests ask for)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(PCM16_RATE)
        sound.writeframes(spoken_pcm(transcript))
    return base64.b64encode(buffer.getvalue()).decode()


def spoken_message(transcript: str) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "refusal": None, "annotations": [],
            "audio": {"id": AUDIO_ID, "data": speech(transcript),
                      "expires_at": int(time.time()) + 3600, "transcript": transcript}}


def spoken_deltas(transcript: str) -> list[dict[str, Any]]:
    """The stream's deltas after the role's: each word of the transcript (the first with
    the id), then its audio, as pcm16 (what OpenAI streams); then when it expires."""
    deltas: list[dict[str, Any]] = []
    for piece in words(transcript):
        deltas.append({"audio": {"transcript": piece}})
        deltas.append({"audio": {"data": base64.b64encode(
            _pcm(output_audio_tokens(piece))).decode()}})
    if deltas:
        deltas[0]["audio"]["id"] = AUDIO_ID
    return [*deltas, {"audio": {"expires_at": int(time.time()) + 3600}}]
