"""Every adapter's answers pass through here: an answer it cannot read becomes an
upstream error, never a crash; an answer whose provider reported no usage is counted.

The adapters parse what providers send with ``.get`` and ``int()``; an answer of the
wrong shape (``"choices": [null]``, a string where an object goes, a count that is not
a number) would raise ``TypeError`` or ``KeyError`` out of the parse. Through the
attempt loop that was a 500 with no fallback, and a circuit breaker's half-open probe
neither recorded nor released, so the deployment stayed shut until a restart. Here it
becomes an ``UpstreamServerError`` (502): the next member of the group is tried, the
breaker counts it, a stream ends with an error event. The traceback is logged, for the
rare case where the fault is aigw's own parse and not the provider's answer.

An OpenAI-compatible server that ignores ``stream_options.include_usage`` (or leaves
``usage`` out of an answer) would otherwise be billed for the prompt and no output: the
adapters mark such usage ``reported=False``, and the output is counted here from what
was answered, as the client's usage chunk, the ledger and the tpm quota then see it.
"""

from __future__ import annotations

import dataclasses
import logging
import traceback
from collections.abc import AsyncIterator

import aiohttp

from aigw.compiler.graph import Provider

from ..errors import UpstreamServerError
from ..tokens import (
    STREAMED_AUDIO_FORMAT,
    TokenCounter,
    audio_byte_rate,
    base64_size,
    spoken_tokens,
)
from ..upstream import scrub
from .audio import (
    SpeechCall,
    SpeechResult,
    TranscriptionCall,
    TranscriptionResult,
    audio_adapter,
)
from .base import (
    ChatAdapter,
    ChatCall,
    ChatDelta,
    ChatResult,
    Choice,
    CountsTokens,
    EmbeddingCall,
    EmbeddingResult,
    ImageCall,
    ImageResult,
    ModerationCall,
    ModerationResult,
    RerankCall,
    RerankResult,
    Usage,
    close_deltas,
)
from .events import EventStream, image_events_adapter
from .image_edits import ImageEditCall, image_edit_adapter
from .raw import RawTarget, raw_adapter
from .realtime import RealtimeCall, realtime_adapter

log = logging.getLogger("aigw.upstream")

# What reading a wrongly shaped document raises (pydantic's ValidationError, JSON and
# Unicode errors are ValueErrors).
UNREADABLE = (KeyError, IndexError, TypeError, ValueError, AttributeError)


class GuardedAdapter:
    """``ChatAdapter`` around another: the same calls, unreadable answers made 502s,
    unreported usage counted."""

    __slots__ = ("counter", "inner", "provider")

    def __init__(self, inner: ChatAdapter, provider: Provider, counter: TokenCounter) -> None:
        self.inner = inner
        self.provider = provider
        self.counter = counter

    async def complete(self, call: ChatCall) -> ChatResult:
        try:
            result = await self.inner.complete(call)
        except UNREADABLE as exc:
            raise self._unreadable(exc) from None
        if result.usage.reported:
            return result
        output = SentOutput(call.request.audio_format)
        for choice in result.choices:
            output.add(choice)
        return dataclasses.replace(result, usage=output.counted(result.usage, self.counter))

    async def stream(self, call: ChatCall) -> AsyncIterator[ChatDelta]:
        deltas = self.inner.stream(call)
        # What was answered, counted if no usage is reported.
        output = SentOutput(STREAMED_AUDIO_FORMAT)
        try:
            async for delta in deltas:
                output.add(delta)
                if delta.usage is not None and not delta.usage.reported:
                    delta = dataclasses.replace(
                        delta, usage=output.counted(delta.usage, self.counter))
                yield delta
        except UNREADABLE as exc:
            raise self._unreadable(exc) from None
        finally:  # a client that goes away closes this stream, and so the provider's
            await close_deltas(deltas)

    async def count_tokens(self, call: ChatCall) -> int | None:
        """The inner adapter's exact count (``CountsTokens``); None where it has none."""
        if not isinstance(self.inner, CountsTokens):
            return None
        try:
            return await self.inner.count_tokens(call)
        except UNREADABLE as exc:
            raise self._unreadable(exc) from None

    async def embed(self, call: EmbeddingCall) -> EmbeddingResult:
        try:
            return await self.inner.embed(call)
        except UNREADABLE as exc:
            raise self._unreadable(exc) from None

    async def rerank(self, call: RerankCall) -> RerankResult:
        try:
            return await self.inner.rerank(call)
        except UNREADABLE as exc:
            raise self._unreadable(exc) from None

    async def generate_images(self, call: ImageCall) -> ImageResult:
        try:
            return await self.inner.generate_images(call)
        except UNREADABLE as exc:
            raise self._unreadable(exc) from None

    async def generate_image_events(self, call: ImageCall) -> EventStream:
        try:
            return await image_events_adapter(self.inner, call.deployment) \
                .generate_image_events(call)
        except UNREADABLE as exc:
            raise self._unreadable(exc) from None

    async def edit_images(self, call: ImageEditCall) -> ImageResult:
        try:
            return await image_edit_adapter(self.inner, call.deployment).edit_images(call)
        except UNREADABLE as exc:
            raise self._unreadable(exc) from None

    async def edit_image_events(self, call: ImageEditCall) -> EventStream:
        try:
            return await image_edit_adapter(self.inner, call.deployment) \
                .edit_image_events(call)
        except UNREADABLE as exc:
            raise self._unreadable(exc) from None

    async def moderate(self, call: ModerationCall) -> ModerationResult:
        try:
            return await self.inner.moderate(call)
        except UNREADABLE as exc:
            raise self._unreadable(exc) from None

    async def transcribe(self, call: TranscriptionCall) -> TranscriptionResult:
        try:
            return await audio_adapter(self.inner, call.deployment).transcribe(call)
        except UNREADABLE as exc:
            raise self._unreadable(exc) from None

    async def speak(self, call: SpeechCall) -> SpeechResult:
        try:
            return await audio_adapter(self.inner, call.deployment).speak(call)
        except UNREADABLE as exc:
            raise self._unreadable(exc) from None

    async def transcribe_events(self, call: TranscriptionCall) -> EventStream:
        try:
            return await audio_adapter(self.inner, call.deployment).transcribe_events(call)
        except UNREADABLE as exc:
            raise self._unreadable(exc) from None

    async def speak_events(self, call: SpeechCall) -> EventStream:
        try:
            return await audio_adapter(self.inner, call.deployment).speak_events(call)
        except UNREADABLE as exc:
            raise self._unreadable(exc) from None

    async def realtime(self, call: RealtimeCall) -> aiohttp.ClientWebSocketResponse:
        # Nothing to read: the handshake's answer is the upstream's, the events the client's.
        return await realtime_adapter(self.inner, call.deployment).realtime(call)

    def raw_target(self) -> RawTarget:
        return raw_adapter(self.inner, self.provider.name).raw_target()

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _unreadable(self, exc: Exception) -> UpstreamServerError:
        name = self.provider.name
        # The traceback as text, scrubbed: the exception can quote the answer, and the
        # answer can quote the key the provider was sent.
        trace = scrub("".join(traceback.format_exception(exc)).rstrip(), self.provider)
        log.warning("provider '%s': a call failed inside aigw (most likely an answer of a "
                    "shape it cannot read)\n%s", name, trace)
        return UpstreamServerError(
            f"provider '{name}': aigw could not make the call or read its answer "
            f"({type(exc).__name__}); the gateway's log has the details", provider=name)


class SentOutput:
    """What an answer sent that its output tokens are counted from where its provider
    gave no count: content, refusal, each tool call's name and arguments, and a spoken
    answer's transcript (text tokens) and audio (audio tokens, from its bytes: see
    ``tokens.spoken_tokens``). The gateway's one estimate of output tokens, so that an
    answer or stream whose upstream reported no usage (``GuardedAdapter``) and a stream
    cut before its usage (``chat._measured``) are counted alike. ``audio_format``: what
    the audio is in (``tokens.STREAMED_AUDIO_FORMAT`` for a stream's)."""

    __slots__ = ("_audio_bytes", "_audio_format", "_audio_rate", "_parts")

    def __init__(self, audio_format: str | None) -> None:
        self._parts: list[str] = []
        self._audio_format = audio_format
        self._audio_bytes = 0
        self._audio_rate = 0  # bytes a second, read from the first piece of audio

    def add(self, piece: Choice | ChatDelta) -> None:
        """Keep what a whole choice, or a piece of a stream, said."""
        parts = self._parts
        if piece.content:
            parts.append(piece.content)
        if piece.refusal:
            parts.append(piece.refusal)
        for tool in piece.tool_calls:
            if tool.name:
                parts.append(tool.name)
            if tool.arguments:
                parts.append(tool.arguments)
        audio = piece.extra.get("audio") if piece.extra else None
        if isinstance(audio, dict):  # a spoken answer's message.audio (delta.audio)
            if isinstance(transcript := audio.get("transcript"), str) and transcript:
                parts.append(transcript)
            if isinstance(data := audio.get("data"), str) and data:
                if not self._audio_rate:
                    self._audio_rate = audio_byte_rate(data, self._audio_format)
                self._audio_bytes += base64_size(data)

    def tokens(self, counter: TokenCounter) -> int:
        """Its output tokens: text and audio."""
        text = counter.count("".join(self._parts)) if self._parts else 0
        return text + self.audio_tokens()

    def audio_tokens(self) -> int:
        return spoken_tokens(self._audio_bytes, self._audio_rate) if self._audio_bytes else 0

    def counted(self, unreported: Usage, counter: TokenCounter) -> Usage:
        """``unreported`` (the prompt as the gateway counted it, ``unreported_usage``)
        with this output: what the answer is billed."""
        return dataclasses.replace(unreported, completion_tokens=self.tokens(counter),
                                   audio_output_tokens=self.audio_tokens())

    def cut(self, told: Usage | None, unreported: Usage, counter: TokenCounter) -> Usage:
        """What a stream cut before its end is billed: the counts its provider reported
        before the cut (``ToldSoFar``: its prompt's cache reads and writes priced as such),
        ``unreported`` where it reported no prompt, and as output the larger of its count
        and this output's (what was relayed after its last count)."""
        counted = self.counted(unreported, counter)
        if told is None:
            return counted
        # A prompt of no tokens is one not reported yet: Anthropic-compatible relays send
        # input_tokens 0 before the end (and no prompt of a call is empty).
        said = told if told.prompt_tokens else counted
        return dataclasses.replace(
            said, completion_tokens=max(told.completion_tokens, counted.completion_tokens),
            reasoning_tokens=told.reasoning_tokens,
            audio_output_tokens=max(told.audio_output_tokens, counted.audio_output_tokens))
