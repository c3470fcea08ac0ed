"""OpenAI's legacy completions wire (``POST /completions``): a /v1/completions request's
body for an OpenAI-format upstream, and its answers and stream chunks read back.

The request reaches the chat core as a ``TextChatRequest``; here its one user message
is the ``prompt`` again (as the input guardrails left it), or its ``prompt_ids`` as they
came (token ids: a list of ints, as OpenAI's API and vLLM take them), with ``suffix``,
``echo``, ``logprobs`` and ``best_of`` and the parameters passed on unread. A choice's
``text`` is the core's content and its ``logprobs`` (tokens, token_logprobs,
top_logprobs, text_offset) pass through as they came.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..chat_request import TextChatRequest
from .base import ChatCall, ChatDelta, Choice

# Chat's fields a completions body has no place for (the prompt is sent as ``prompt``).
_NOT_SENT = frozenset({"messages", "completion", "prompt_ids", "stream", "stream_options",
                       "tools", "tool_choice", "max_completion_tokens"})


def text_body(call: ChatCall, stream: bool) -> dict[str, Any]:
    """The ``/completions`` body for ``call``, whose request is a ``TextChatRequest``."""
    request = call.request
    assert isinstance(request, TextChatRequest)
    body = request.model_dump(exclude_none=True, exclude=set(_NOT_SENT))
    body["model"] = call.deployment.model
    ids = request.prompt_ids
    body["prompt"] = request.messages[0].text() if ids is None else list(ids)
    body.update(request.completion.model_dump(exclude_none=True, exclude_defaults=True))
    body["stream"] = stream
    if stream:  # so every answer can be billed, as chat's streams ask
        body["stream_options"] = {"include_usage": True}
    return body


def text_choices(document: Mapping[str, Any]) -> list[Choice]:
    """The choices of a ``text_completion`` object."""
    return [
        Choice(index=int(choice.get("index", position)), content=str(choice.get("text") or ""),
               finish_reason=str(choice.get("finish_reason") or "stop"),
               logprobs=choice.get("logprobs"))
        for position, choice in enumerate(document.get("choices") or [])
        if isinstance(choice, dict)
    ]


def text_deltas(chunk: Mapping[str, Any]) -> list[ChatDelta]:
    """The deltas of one streamed ``text_completion`` chunk (its usage is read apart)."""
    deltas = [
        ChatDelta(index=int(choice.get("index", position)), content=choice.get("text") or None,
                  finish_reason=choice.get("finish_reason") or None,  # "": none (openai.py)
                  logprobs=choice.get("logprobs"))
        for position, choice in enumerate(chunk.get("choices") or [])
        if isinstance(choice, dict)
    ]
    return [d for d in deltas if d.content or d.finish_reason or d.logprobs is not None]
