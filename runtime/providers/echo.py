"""The echo provider: answers locally and deterministically, so a gateway works offline.

Chat: the answer is the text of the last user message, cut at the output limit (then
the finish reason is "length"); streaming sends it word by word. When the request
forces a tool (``tool_choice`` "required" or a named function), echo calls it, with
the last user message as arguments if that is a JSON object and ``{}`` otherwise, so
tool flows can be exercised offline. Embeddings: a normalised bag of token ids, so
texts sharing words get similar vectors. Rerank: the share of the query's words each
document holds (case folded), ties in the documents' order. Images and moderation:
providers/echo_media.py; audio: providers/echo_audio.py. Tokens are counted with the
gateway's tiktoken encoding.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import AsyncIterator

from aigw.compiler.graph import Provider

from ..tokens import TokenCounter
from .audio import (
    SpeechCall,
    SpeechResult,
    TranscriptionCall,
    TranscriptionResult,
)
from .base import (
    ChatCall,
    ChatDelta,
    ChatResult,
    Choice,
    EmbeddingCall,
    EmbeddingResult,
    ImageCall,
    ImageResult,
    ModerationCall,
    ModerationResult,
    RerankCall,
    RerankResult,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from .echo_audio import silence, silence_events, transcript, transcript_events
from .echo_media import echo_image_events, echo_images, echo_moderation
from .events import EventStream, image_estimate, opened
from .image_edits import ImageEditCall

_WORD = re.compile(r"\s*\S+\s*|\s+")
_TERM = re.compile(r"\w+")
ECHO_EMBEDDING_DIMENSIONS = 256


class EchoAdapter:
    """A provider that repeats the last user message."""

    def __init__(self, provider: Provider, counter: TokenCounter) -> None:
        self._provider = provider
        self._counter = counter

    def _answer(self, call: ChatCall) -> tuple[str, str, int]:
        users = [m for m in call.request.messages if m.role == "user"]
        text = users[-1].text() if users else ""
        tokens = self._counter.encode(text)
        if len(tokens) > call.max_output_tokens:
            cut = tokens[: call.max_output_tokens]
            return self._counter.decode(cut), "length", len(cut)
        return text, "stop", len(tokens)

    def _forced_tool(self, call: ChatCall) -> ToolCall | None:
        request = call.request
        if not request.tools:
            return None
        choice = request.tool_choice
        if isinstance(choice, dict):
            name = str((choice.get("function") or {}).get("name", ""))
        elif choice == "required":
            name = str((request.tools[0].get("function") or {}).get("name", ""))
        else:
            return None
        users = [m for m in request.messages if m.role == "user"]
        text = users[-1].text() if users else ""
        try:
            arguments = json.loads(text)
        except ValueError:
            arguments = None
        encoded = json.dumps(arguments if isinstance(arguments, dict) else {})
        return ToolCall(f"call_echo_{len(request.messages)}", name, encoded)

    async def _wait(self, tokens: int) -> None:
        delay_ms = self._provider.first_token_ms + self._provider.per_token_ms * tokens
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)

    async def complete(self, call: ChatCall) -> ChatResult:
        n = call.request.n
        tool = self._forced_tool(call)
        if tool is not None:
            tokens = self._counter.count(tool.arguments)
            await self._wait(tokens)
            choices = tuple(Choice(i, None, "tool_calls", (tool,)) for i in range(n))
            return ChatResult(call.deployment.model, choices, Usage(call.prompt_tokens, tokens * n))
        text, finish, completion_tokens = self._answer(call)
        await self._wait(completion_tokens)
        return ChatResult(
            model=call.deployment.model,
            choices=tuple(Choice(i, text, finish) for i in range(n)),
            usage=Usage(call.prompt_tokens, completion_tokens * n),
        )

    async def stream(self, call: ChatCall) -> AsyncIterator[ChatDelta]:
        n = call.request.n
        await asyncio.sleep(self._provider.first_token_ms / 1000)
        tool = self._forced_tool(call)
        if tool is not None:
            for index in range(n):
                yield ChatDelta(index, tool_calls=(ToolCallDelta(0, tool.id, tool.name, ""),))
                yield ChatDelta(index, tool_calls=(ToolCallDelta(0, arguments=tool.arguments),))
                yield ChatDelta(index, finish_reason="tool_calls")
            tokens = self._counter.count(tool.arguments)
            yield ChatDelta(usage=Usage(call.prompt_tokens, tokens * n))
            return
        text, finish, completion_tokens = self._answer(call)
        for word in _WORD.findall(text):
            for index in range(n):
                yield ChatDelta(index=index, content=word)
            # Sleeping even 0 lets other requests run between words, as with a real upstream.
            per_token_ms = self._provider.per_token_ms
            tokens = self._counter.count(word) if per_token_ms else 0
            await asyncio.sleep(per_token_ms * tokens / 1000)
        for index in range(n):
            yield ChatDelta(index=index, finish_reason=finish)
        yield ChatDelta(usage=Usage(call.prompt_tokens, completion_tokens * n))

    async def embed(self, call: EmbeddingCall) -> EmbeddingResult:
        dimensions = call.dimensions or ECHO_EMBEDDING_DIMENSIONS
        vectors = []
        for item in call.inputs:
            vector = [0.0] * dimensions
            for token in self._counter.encode(item) if isinstance(item, str) else item:
                vector[token % dimensions] += 1.0
            norm = math.sqrt(sum(value * value for value in vector)) or 1.0
            vectors.append(tuple(value / norm for value in vector))
        return EmbeddingResult(call.deployment.model, tuple(vectors), call.prompt_tokens)

    async def rerank(self, call: RerankCall) -> RerankResult:
        query = set(_TERM.findall(call.query.casefold()))
        scores = [len(query & set(_TERM.findall(document.casefold()))) / (len(query) or 1)
                  for document in call.documents]
        await self._wait(0)
        ranking = sorted(enumerate(scores), key=lambda pair: (-pair[1], pair[0]))
        return RerankResult(call.deployment.model, tuple(ranking[:call.top_n]),
                            call.prompt_tokens, call.search_units)

    async def generate_images(self, call: ImageCall) -> ImageResult:
        await self._wait(0)
        return echo_images(call)

    async def generate_image_events(self, call: ImageCall) -> EventStream:
        await self._wait(0)
        return await opened(echo_image_events(call), image_estimate(call),
                            "image_generation.completed", self._provider)

    async def edit_images(self, call: ImageEditCall) -> ImageResult:
        await self._wait(0)
        return echo_images(call.drawing)

    async def edit_image_events(self, call: ImageEditCall) -> EventStream:
        await self._wait(0)
        return await opened(echo_image_events(call.drawing, "image_edit"),
                            image_estimate(call.drawing), "image_edit.completed",
                            self._provider)

    async def moderate(self, call: ModerationCall) -> ModerationResult:
        await self._wait(0)
        return echo_moderation(call)

    async def transcribe(self, call: TranscriptionCall) -> TranscriptionResult:
        await self._wait(0)
        return transcript(call)

    async def speak(self, call: SpeechCall) -> SpeechResult:
        await self._wait(0)
        return silence(call)

    async def transcribe_events(self, call: TranscriptionCall) -> EventStream:
        await self._wait(0)
        return await opened(transcript_events(call), call.estimate, "transcript.text.done",
                            self._provider)

    async def speak_events(self, call: SpeechCall) -> EventStream:
        await self._wait(0)
        return await opened(silence_events(call), call.usage, "speech.audio.done",
                            self._provider)

    async def aclose(self) -> None:
        return None
