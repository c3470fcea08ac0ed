"""The echo provider: answers locally and deterministically, so a gateway works offline.

The answer is the text of the last user message, cut at the output limit (then the
finish reason is "length"). Streaming sends it word by word. Tokens are counted
with the same tiktoken encoding as every other estimate in the gateway.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

from aigw.compiler.graph import Provider

from ..tokens import TokenCounter
from .base import ChatCall, ChatDelta, ChatResult, Choice, Usage

_WORD = re.compile(r"\s*\S+\s*|\s+")


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

    async def complete(self, call: ChatCall) -> ChatResult:
        text, finish, completion_tokens = self._answer(call)
        provider = self._provider
        delay_ms = provider.first_token_ms + provider.per_token_ms * completion_tokens
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        n = call.request.n
        return ChatResult(
            model=call.deployment.model,
            choices=tuple(Choice(i, text, finish) for i in range(n)),
            usage=Usage(call.prompt_tokens, completion_tokens * n),
        )

    async def stream(self, call: ChatCall) -> AsyncIterator[ChatDelta]:
        text, finish, completion_tokens = self._answer(call)
        n = call.request.n
        await asyncio.sleep(self._provider.first_token_ms / 1000)
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

    async def aclose(self) -> None:
        return None
