"""POST /v1/audio/transcriptions, /v1/audio/translations and /v1/audio/speech, as OpenAI
serves them, over the providers that have them.

Transcriptions and translations take OpenAI's multipart form (``file``, ``model``,
``language``, ``prompt``, ``response_format``, ``temperature``,
``timestamp_granularities[]``, ...): the body is refused past
``settings.max_audio_upload_bytes`` as it arrives (413), the form's other fields go
upstream as the client sent them, and the answer comes back as the provider wrote it in
the asked format. Speech takes OpenAI's JSON (``model``, ``input``, ``voice``,
``response_format``, ``speed``, ``instructions``); its audio is passed on to the client
as the provider sends it, never held whole. A transcription with ``stream=true`` and
speech with ``stream_format: "sse"`` are answered in the provider's server-sent events,
passed on as they come (runtime/media_stream.py).

Each call goes through the stages of runtime/route_call.py, as an embeddings call does
(key, Cedar, limits and budget held, the attempt loop, billing, ledger, access log,
metrics, tracing). A transcription is held for its upload's estimated length
(providers/audio.py) and billed for what its answer reports; a speech call for its
input's characters and tokens, and as events also for a bound on the audio tokens its
last event reports (``SPEECH_AUDIO_TOKENS_PER_CHARACTER``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from aigw.compiler.graph import ApiKey, Deployment

from .chat import resolve_route
from .chat_request import bad_request
from .errors import BadRequest, quoted
from .media_stream import passed_on
from .multipart import FormWords, MultipartForm, flag_field, single_field
from .providers.audio import (
    AUDIO_TOKENS_PER_SECOND,
    TRANSCRIPT_TOKENS_PER_SECOND,
    SpeechCall,
    SpeechResult,
    TranscriptionCall,
    TranscriptionResult,
    audio_adapter,
    speech_audio_tokens,
    upload_seconds,
)
from .providers.base import Usage
from .providers.events import EventStream
from .route_call import Weighed, answer_headers, call_route
from .routing.candidates import AudioAsk, Candidate
from .telemetry.tracing import Span
from .transcripts import checked_transcript
from .upstream_aiohttp import ByteStream, FormFile

if TYPE_CHECKING:
    from .exchange import Exchange

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
# OpenAI's cap on a speech's input.
MAX_SPEECH_CHARACTERS = 4096
# A form's fields besides the file: OpenAI's take about ten; more is no client of it.
_MAX_FIELDS = 64
# The most bytes of one (Starlette's parser's cap, kept): a diarizing model's
# known_speaker_references[] are a few seconds of audio each, as data URLs.
_FIELD_MOST = 1 << 20
_FORM = FormWords(file="the audio", cut_short="The multipart body ends before its closing "
                  "boundary ('{closing}'): it was cut short.")


async def transcriptions(exchange: Exchange, key: ApiKey, body: bytes) -> Response:
    return await _transcribe(exchange, key, body, "transcriptions")


async def translations(exchange: Exchange, key: ApiKey, body: bytes) -> Response:
    return await _transcribe(exchange, key, body, "translations")


async def _transcribe(exchange: Exchange, key: ApiKey, body: bytes,
                      operation: Literal["transcriptions", "translations"]) -> Response:
    upload, fields = _upload(exchange, body)
    model = single_field(fields, "model")
    if not model:
        raise BadRequest("Missing required parameter: 'model'.", param="model")
    response_format = single_field(fields, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise BadRequest(f"Invalid value for 'response_format': {quoted(response_format)}; "
                         f"expected one of {', '.join(RESPONSE_FORMATS)}.",
                         param="response_format")
    streamed = flag_field(fields, "stream")
    if operation == "translations":
        # OpenAI's translations endpoint has no stream: it refuses the field (as its other
        # unknown ones), and would answer whole anyway, no events to pass on.
        if streamed:
            raise BadRequest("Translations do not stream: leave 'stream' out.", param="stream")
        fields = tuple((name, value) for name, value in fields if name != "stream")
    else:  # sent as read here: an upstream reading '1' otherwise would answer whole
        fields = tuple((name, ("true" if streamed else "false") if name == "stream" else value)
                       for name, value in fields)
    _check_temperature(single_field(fields, "temperature"))
    exchange.identify(key, None)
    route = resolve_route(exchange.live.graph, model)
    live = exchange.live
    seconds = upload_seconds(upload.data)
    sent = tuple((name, value) for name, value in fields if name != "model")
    # Every prompt field (a client may repeat one, and each is sent): the input
    # guardrails check each, and each is counted.
    prompts = tuple(value for name, value in sent if name == "prompt")

    def weigh(texts: tuple[str, ...]) -> Weighed:
        tokens = sum(map(live.counter.count, texts))
        # Cut short, the audio sent was most likely billed (per minute, or its tokens).
        return Weighed(tokens, AudioAsk(live.adapters, "transcription", tokens),
                       Usage(tokens + round(seconds * AUDIO_TOKENS_PER_SECOND), 0,
                             audio_seconds=seconds))

    weighed = weigh(prompts)
    prompt_tokens = weighed.prompt_tokens

    def transcription(candidate: Candidate, texts: tuple[str, ...],
                      tokens: int) -> TranscriptionCall:
        given = sent
        if texts is not prompts:  # the prompts as the route's input guardrails left them
            checked = iter(texts)
            given = tuple((name, next(checked) if name == "prompt" else value)
                          for name, value in sent)
        return TranscriptionCall(candidate.deployment, operation, given, upload,
                                 response_format, tokens, seconds)

    def call(candidate: Candidate, texts: tuple[str, ...], tokens: int) -> Callable[
            [], Awaitable[TranscriptionResult]]:
        return partial(audio_adapter(candidate.adapter, candidate.deployment).transcribe,
                       transcription(candidate, texts, tokens))

    def events(candidate: Candidate, texts: tuple[str, ...], tokens: int) -> Callable[
            [], Awaitable[EventStream]]:
        return partial(audio_adapter(candidate.adapter, candidate.deployment)
                       .transcribe_events, transcription(candidate, texts, tokens))

    routed = partial(
        call_route, exchange, key, route, kind="transcription", model=model,
        # The spans' GenAI operation: a translation's were named (and its calls labelled)
        # transcription, its request span's operation translation.
        operation="translation" if operation == "translations" else "transcription",
        prompt_tokens=prompt_tokens, ask=weighed.ask,
        cost=lambda deployment, sent: deployment.price.cost(
            sent.prompt_tokens + round(seconds * AUDIO_TOKENS_PER_SECOND),
            round(seconds * TRANSCRIPT_TOKENS_PER_SECOND), audio_seconds=seconds),
        cut=weighed.cut, texts=prompts, weigh=weigh)
    if streamed:
        if route.guardrails is not None and route.guardrails.output:
            # The output guardrails read a whole transcript; its events go out as they come.
            raise BadRequest(f"'{route.name}' checks transcripts with output guardrails, "
                             "which read the whole text: ask without 'stream'.",
                             param="stream")
        return await passed_on(exchange, route,
                               partial(routed, call=events, noted=_noted_events))
    won = await routed(call=call, noted=_noted_transcript,
                       checked=partial(checked_transcript, response_format))
    return Response(won.value.body, headers={**answer_headers(exchange, route, won),
                                             "content-type": won.value.content_type})


class SpeechRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    input: str
    voice: str | dict[str, Any]  # a built-in voice's name, or a custom one's {id}
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: Annotated[float, Field(ge=0.25, le=4.0)] | None = None
    instructions: str | None = None
    stream_format: Literal["audio", "sse"] | None = None


async def speech(exchange: Exchange, key: ApiKey, body: bytes) -> Response:
    try:
        request = SpeechRequest.model_validate_json(body)
    except ValidationError as exc:
        raise bad_request(exc) from exc
    if not request.input.strip():
        raise BadRequest("'input' is empty: give the text to speak.", param="input")
    if len(request.input) > MAX_SPEECH_CHARACTERS:
        raise BadRequest(f"'input' has {len(request.input)} characters; the most is "
                         f"{MAX_SPEECH_CHARACTERS}.", param="input")
    exchange.identify(key, None)
    route = resolve_route(exchange.live.graph, request.model)
    live = exchange.live
    characters = len(request.input)
    sent = request.model_dump(exclude_none=True)
    # The input, and the instructions (how to speak it: a text the model reads as well).
    said = (request.input,) if request.instructions is None else (
        request.input, request.instructions)

    def weigh(texts: tuple[str, ...]) -> Weighed:
        # Billed by the input (its characters, or tokens), cut short too: as it is sent.
        tokens = live.counter.count(texts[0])
        return Weighed(tokens, AudioAsk(live.adapters, "speech", tokens),
                       Usage(tokens, 0, characters=len(texts[0])))

    weighed = weigh(said)
    prompt_tokens = weighed.prompt_tokens

    def spoken(candidate: Candidate, texts: tuple[str, ...], tokens: int) -> SpeechCall:
        # The texts as the route's input guardrails left them, billed by the input sent.
        return SpeechCall(candidate.deployment, {**sent, **dict(zip(
            ("input", "instructions"), texts, strict=False))}, len(texts[0]), tokens)

    def call(candidate: Candidate, texts: tuple[str, ...], tokens: int) -> Callable[
            [], Awaitable[SpeechResult]]:
        return partial(audio_adapter(candidate.adapter, candidate.deployment).speak,
                       spoken(candidate, texts, tokens))

    def events(candidate: Candidate, texts: tuple[str, ...], tokens: int) -> Callable[
            [], Awaitable[EventStream]]:
        return partial(audio_adapter(candidate.adapter, candidate.deployment).speak_events,
                       spoken(candidate, texts, tokens))

    def held(deployment: Deployment, sent: Weighed) -> float:
        # As it is sent: a redaction longer than what it took out is spoken, and billed.
        spoken = sent.cut.characters if sent.cut is not None else characters
        # Speech as events reports its audio tokens, billed at the output price: held for
        # a bound on them, so the bill stays within the hold (but for the estimate's error).
        audio_tokens = speech_audio_tokens(spoken, request.speed) \
            if request.stream_format == "sse" else 0
        return deployment.price.cost(sent.prompt_tokens, audio_tokens, characters=spoken)

    routed = partial(
        call_route, exchange, key, route, kind="speech", model=request.model,
        prompt_tokens=prompt_tokens, ask=weighed.ask, cost=held,
        cut=weighed.cut, texts=said, weigh=weigh)
    if request.stream_format == "sse":
        return await passed_on(exchange, route,
                               partial(routed, call=events, noted=_noted_events))
    won = await routed(call=call, noted=_noted_speech,
                       release=lambda result: result.audio.aclose())
    audio = won.value.audio
    # Released after the response too: a client gone before the first chunk never
    # started the iterator, whose own ``finally`` would have let the connection go.
    return StreamingResponse(_passed_on(audio), media_type=audio.content_type,
                             headers=answer_headers(exchange, route, won),
                             background=BackgroundTask(_released, audio))


async def _passed_on(audio: ByteStream) -> AsyncIterator[bytes]:
    """The audio's chunks as they come; the provider's connection let go however the
    client's ends (it may go away mid-file)."""
    try:
        async for chunk in audio.chunks:
            yield chunk
    finally:
        audio.aclose()


async def _released(audio: ByteStream) -> None:
    audio.aclose()  # async, so Starlette runs it on the loop, not in a thread


def _upload(exchange: Exchange, body: bytes) -> tuple[FormFile, tuple[tuple[str, str], ...]]:
    """The form's file, and its other fields in order, from the body already read
    (within its cap); 400s naming what is wrong (runtime/multipart.py)."""
    content_type = exchange.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):  # any case (RFC 9110)
        raise BadRequest("The request must be multipart/form-data, with the audio in 'file' "
                         f"(it is {content_type or 'of no content type'}).", param="file")
    form = MultipartForm(content_type, _FORM, most_fields=_MAX_FIELDS, field_most=_FIELD_MOST)
    data = form.write(body)
    # No declared length to check: read_body read the whole body, and one that ended
    # before its Content-Length was the client's disconnect.
    form.end(len(body), None)
    if form.filename is None:
        raise BadRequest("Missing required parameter: 'file' (the audio, as a multipart "
                         "file).", param="file")
    if not data:
        raise BadRequest("'file' is empty.", param="file")
    return FormFile("file", form.filename or "audio",
                    form.file_type or "application/octet-stream", data), form.fields


def _check_temperature(value: str | None) -> None:
    if value is None:
        return
    try:
        temperature = float(value)
    except ValueError:
        temperature = -1.0
    if not 0 <= temperature <= 1:
        raise BadRequest(f"Invalid value for 'temperature': {quoted(value)}; expected a number "
                         "from 0 to 1.", param="temperature")


def _noted_transcript(span: Span, result: TranscriptionResult) -> None:
    span.set("gen_ai.usage.input_tokens", result.usage.prompt_tokens)
    span.set("gen_ai.usage.output_tokens", result.usage.completion_tokens)


def _noted_speech(span: Span, result: SpeechResult) -> None:
    span.set("gen_ai.usage.input_tokens", result.usage.prompt_tokens)


def _noted_events(span: Span, result: EventStream) -> None:
    span.set("gen_ai.usage.input_tokens", result.usage.prompt_tokens)
