"""OpenAI's audio endpoints for the OpenAI fake (``OpenAIFake`` takes them in): the
multipart ``/v1/audio/transcriptions`` and ``/translations``, and ``/v1/audio/speech``,
with Azure OpenAI's deployment URLs for each.

Shapes as OpenAI's API reference gives them: a ``json`` transcript is ``{"text",
"usage"}`` (``{"type": "tokens", "input_tokens", "output_tokens", ...}`` for the
gpt-4o-transcribe models, ``{"type": "duration", "seconds"}`` for whisper-1);
``verbose_json`` is ``{"task", "language", "duration", "text", "segments"[, "words"]}``;
``text``, ``srt`` and ``vtt`` are plain text. Speech is the audio's bytes, with the
format's content type, sent in chunks (``speech_pause_s`` after the first one, for a test
that the gateway passes the first on before the rest come).

Streamed (server-sent events, ``data:`` lines only, as OpenAI sends them): a transcription
with ``stream=true`` on a gpt-4o model is a ``{"type": "transcript.text.delta", "delta"}``
a word, then ``{"type": "transcript.text.done", "text", "usage"}`` (whisper-1 ignores
``stream``, as OpenAI's does); speech with ``stream_format: "sse"`` is ``{"type":
"speech.audio.delta", "audio": base64}`` a chunk, then ``{"type": "speech.audio.done",
"usage": {"input_tokens", "output_tokens", "total_tokens"}}`` (refused for tts-1 and
tts-1-hd, as OpenAI's API reference says). ``speech_pause_s`` comes after the first event.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

TRANSCRIPTION_FIELDS = {"model", "file", "language", "prompt", "response_format", "temperature",
                        "timestamp_granularities[]", "include[]", "chunking_strategy", "stream"}
TRANSLATION_FIELDS = {"model", "file", "prompt", "response_format", "temperature"}
SPEECH_FIELDS = {"model", "input", "voice", "instructions", "response_format", "speed",
                 "stream_format"}
SPEECH_TYPES = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac",
                "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}


def transcript_text(size: int) -> str:
    return f"fake transcript of {size} bytes"


def speech_bytes(text: str, size: int) -> bytes:
    """What the fake speaks for ``text``: ``size`` bytes repeating the text's bytes."""
    seed = text.encode() or b"\0"
    return (seed * (size // len(seed) + 1))[:size]


class AudioFake:
    """The audio half of ``OpenAIFake`` (its ``_authorized``, ``script`` and journal)."""

    script: Any
    journal: list[str] | None
    name: str
    # verbose_json's duration and whisper's usage.seconds; the tokens the gpt-4o models report.
    audio_seconds = 42.5
    audio_tokens = (120, 30)
    speech_size = 48_000  # bytes of audio a speech answers
    speech_pause_s = 0.0  # between its first chunk (or event) and the rest
    speech_tokens = 400  # the audio tokens a streamed speech's usage reports
    breaks_off = False  # a stream ends after its first chunk or event, its connection cut
    speeches_cut = 0  # speech answers (and streams) whose reader went away before their end
    # What every transcript says (None: transcript_text); a line break between two of its
    # segments (srt's and vtt's cues, verbose_json's segments), which its text joins with
    # a space.
    transcript: str | None = None
    cue_line_end = "\n"  # an srt's and a vtt's line ending ("\r\n", as some servers write)

    def _authorized(self, request: Request, azure: bool) -> JSONResponse | None:
        raise NotImplementedError

    def audio_routes(self) -> list[Route]:
        routes = []
        for operation in ("transcriptions", "translations", "speech"):
            handler = self._speech if operation == "speech" else self._transcription
            routes.append(Route(f"/v1/audio/{operation}", handler, methods=["POST"]))
            routes.append(Route(f"/openai/deployments/{{deployment}}/audio/{operation}",
                                handler, methods=["POST"]))
        return routes

    async def _failure(self, request: Request, seen: dict[str, Any]) -> Response | None:
        denied = self._authorized(request, "deployment" in request.path_params)
        if denied:
            return denied
        self.script.requests.append(seen)
        self.script.headers.append(dict(request.headers))
        if self.journal is not None:
            self.journal.append(self.name)
        action = self.script.next()
        if action.delay_s:
            await asyncio.sleep(action.delay_s)
        if action.status != 200:
            return JSONResponse(action.body or {"error": {
                "message": f"scripted failure {action.status}", "type": "server_error",
                "param": None, "code": None}}, status_code=action.status)
        return None

    async def _transcription(self, request: Request) -> Response:
        translation = request.url.path.endswith("/translations")
        seen: dict[str, Any] = {}
        size = 0
        async with request.form() as form:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    size = len(await value.read())
                    seen[name] = {"filename": value.filename,
                                  "content_type": value.content_type, "size": size}
                elif name in seen:  # a repeated field (timestamp_granularities[])
                    earlier = seen[name]
                    seen[name] = [*([earlier] if isinstance(earlier, str) else earlier), value]
                else:
                    seen[name] = value
        failed = await self._failure(request, seen)
        if failed:
            return failed
        allowed = TRANSLATION_FIELDS if translation else TRANSCRIPTION_FIELDS
        unknown = [name for name in seen if name not in allowed]
        if unknown:
            return _invalid(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
        if "file" not in seen:
            return _invalid("you must provide a file", "file")
        model = str(seen.get("model") or "")
        kind = seen.get("response_format", "json")
        said = (self.transcript if self.transcript is not None
                else transcript_text(size)).split("\n")
        text = " ".join(said)
        share = self.audio_seconds / len(said)  # of the audio, each segment's
        if kind == "text":
            return PlainTextResponse(f"{text}\n")
        if kind in ("srt", "vtt"):
            mark = "," if kind == "srt" else "."
            cues = "\n".join(f"{index + 1}\n{_clock(index * share, mark)} --> "
                             f"{_clock((index + 1) * share, mark)}\n{segment}\n"
                             for index, segment in enumerate(said))
            cues = cues if kind == "srt" else f"WEBVTT\n\n{cues}"
            return PlainTextResponse(cues.replace("\n", self.cue_line_end))
        if kind == "verbose_json":
            document: dict[str, Any] = {
                "task": "translate" if translation else "transcribe", "language": "english",
                "duration": self.audio_seconds, "text": text,
                "segments": [{"id": index, "seek": 0, "start": index * share,
                              "end": (index + 1) * share, "text": segment, "tokens": [1, 2],
                              "temperature": 0.0, "avg_logprob": -0.2,
                              "compression_ratio": 1.1, "no_speech_prob": 0.01}
                             for index, segment in enumerate(said)]}
            if "word" in seen.get("timestamp_granularities[]", ()):
                document["words"] = [{"word": word, "start": 0.0, "end": 0.5}
                                     for word in text.split()]
            return JSONResponse(document)
        if kind != "json":
            return _invalid(f"response_format {kind!r} is not one of json, text, srt, "
                            "verbose_json, vtt", "response_format")
        if model.startswith("gpt-4o"):
            fresh, written = self.audio_tokens
            usage = {"type": "tokens", "input_tokens": fresh, "output_tokens": written,
                     "total_tokens": fresh + written,
                     "input_token_details": {"text_tokens": 0, "audio_tokens": fresh}}
            if seen.get("stream") == "true":
                return self._events([
                    *({"type": "transcript.text.delta", "delta": word if index == 0
                       else f" {word}"} for index, word in enumerate(text.split(" "))),
                    {"type": "transcript.text.done", "text": text, "usage": usage}])
        else:
            usage = {"type": "duration", "seconds": round(self.audio_seconds)}
        return JSONResponse({"text": text, "usage": usage})

    async def _speech(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _invalid("We could not parse the JSON body of your request.")
        failed = await self._failure(request, body)
        if failed:
            return failed
        unknown = [name for name in body if name not in SPEECH_FIELDS]
        if unknown:
            return _invalid(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
        text, voice = body.get("input"), body.get("voice")
        if not isinstance(text, str) or not text or len(text) > 4096:
            return _invalid("input must be a string of 1 to 4096 characters", "input")
        if not voice:
            return _invalid("you must provide a voice", "voice")
        kind = body.get("response_format", "mp3")
        data = speech_bytes(text, self.speech_size)
        if body.get("stream_format") == "sse":
            if str(body.get("model")).startswith("tts-1"):
                return _invalid("stream_format 'sse' is not supported for tts-1 and tts-1-hd",
                                "stream_format")
            used = len(text.split())
            return self._events([
                *({"type": "speech.audio.delta",
                   "audio": base64.b64encode(data[start:start + 4096]).decode()}
                  for start in range(0, len(data), 4096)),
                {"type": "speech.audio.done", "usage": {
                    "input_tokens": used, "output_tokens": self.speech_tokens,
                    "total_tokens": used + self.speech_tokens}}])
        return StreamingResponse(self._spoken([data[start:start + 4096] for start in
                                               range(0, len(data), 4096)]),
                                 media_type=SPEECH_TYPES[kind])

    def _events(self, events: list[dict[str, Any]]) -> StreamingResponse:
        chunks = [f"data: {json.dumps(event)}\n\n".encode() for event in events]
        return StreamingResponse(self._spoken(chunks), media_type="text/event-stream")

    async def _spoken(self, chunks: list[bytes]) -> AsyncIterator[bytes]:
        try:
            yield chunks[0]
            if self.breaks_off:
                raise ConnectionResetError("the fake broke the stream off")
            await asyncio.sleep(self.speech_pause_s)
            for chunk in chunks[1:]:
                yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            self.speeches_cut += 1
            raise


def _clock(seconds: float, mark: str) -> str:
    """A cue's time, as srt (``00:00:42,500``) or vtt (``00:00:42.500``) writes it."""
    millis = round(seconds * 1000)
    return (f"{millis // 3_600_000:02d}:{millis // 60_000 % 60:02d}:"
            f"{millis // 1000 % 60:02d}{mark}{millis % 1000:03d}")


def _invalid(message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "param": param, "code": None}}, status_code=400)
