"""The seam between the gateway and an upstream: one call in, one result (or a stream) out.

Adapters translate between these OpenAI-shaped values and a provider's own wire
format. Tests swap in an upstream fake behind the adapter, never a mock of this seam's
callers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from aigw.compiler.graph import Deployment, Provider

from ..chat_request import ChatRequest
from ..tokens import TokenCounter


@dataclass(frozen=True, slots=True)
class ChatCall:
    """One attempt at one deployment."""

    request: ChatRequest
    deployment: Deployment
    prompt_tokens: int
    max_output_tokens: int


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    content: str
    finish_reason: str


@dataclass(frozen=True, slots=True)
class ChatResult:
    model: str
    choices: tuple[Choice, ...]
    usage: Usage


@dataclass(frozen=True, slots=True)
class ChatDelta:
    """A piece of a streamed answer: some text for one choice, or its end, or the usage."""

    index: int = 0
    content: str | None = None
    finish_reason: str | None = None
    usage: Usage | None = None


class ChatAdapter(Protocol):
    """What every provider adapter offers."""

    async def complete(self, call: ChatCall) -> ChatResult: ...

    def stream(self, call: ChatCall) -> AsyncIterator[ChatDelta]: ...

    async def aclose(self) -> None: ...


class AdapterFactory(Protocol):
    def __call__(self, provider: Provider, counter: TokenCounter) -> ChatAdapter: ...
