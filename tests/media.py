"""Media the tests send: audio files made here, of a known length."""

from __future__ import annotations

import base64
import io
import wave


def wav(seconds: float, rate: int = 8000) -> bytes:
    """A WAV file of silence ``seconds`` long (16-bit mono at ``rate``)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        audio.writeframes(b"\0\0" * int(rate * seconds))
    return buffer.getvalue()


def wav_base64(seconds: float, rate: int = 8000) -> str:
    """``wav``, as an ``input_audio`` part's ``data`` carries it."""
    return base64.b64encode(wav(seconds, rate)).decode()
