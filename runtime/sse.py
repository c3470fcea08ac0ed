"""OpenAI chat completion objects and chunks, as JSON and as server-sent events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from .providers.base import ChatDelta, ChatResult, Usage

DONE = b"data: [DONE]\n\n"


def usage_body(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


def completion_body(request_id: str, created: int, result: ChatResult) -> dict[str, object]:
    """A ``chat.completion`` object as OpenAI returns it."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": result.model,
        "choices": [
            {
                "index": choice.index,
                "message": {"role": "assistant", "content": choice.content, "refusal": None},
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
            for choice in result.choices
        ],
        "usage": usage_body(result.usage),
        "system_fingerprint": None,
    }


class ChunkEncoder:
    """Turns adapter deltas into ``chat.completion.chunk`` events, exactly as OpenAI streams them.

    Each choice opens with a role delta; with ``include_usage`` every chunk carries
    ``"usage": null`` and a last chunk with no choices carries the usage.
    """

    def __init__(self, request_id: str, created: int, model: str, include_usage: bool) -> None:
        self._head = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }
        self._include_usage = include_usage
        self._opened: set[int] = set()

    def _event(self, choices: list[dict[str, object]], usage: Usage | None = None) -> bytes:
        chunk: dict[str, object] = {**self._head, "choices": choices}
        if self._include_usage:
            chunk["usage"] = usage_body(usage) if usage is not None else None
        return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"

    def encode(self, delta: ChatDelta) -> bytes:
        if delta.usage is not None:
            return self._event([], delta.usage) if self._include_usage else b""
        out = b""
        if delta.index not in self._opened:
            self._opened.add(delta.index)
            out += self._event([_choice(delta.index, {"role": "assistant", "content": ""}, None)])
        if delta.content is not None:
            out += self._event([_choice(delta.index, {"content": delta.content}, None)])
        if delta.finish_reason is not None:
            out += self._event([_choice(delta.index, {}, delta.finish_reason)])
        return out

    async def events(self, deltas: AsyncIterator[ChatDelta]) -> AsyncIterator[bytes]:
        async for delta in deltas:
            event = self.encode(delta)
            if event:
                yield event
        yield DONE


def _choice(index: int, delta: dict[str, object], finish: str | None) -> dict[str, object]:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}


def error_event(body: dict[str, object]) -> bytes:
    """An error in the middle of a stream, after the status line has gone out."""
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
