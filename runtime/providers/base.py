"""The seam between the gateway and an upstream: one call in, one result (or a stream) out.

The gateway speaks OpenAI's chat format inside. Adapters translate a ``ChatCall``
into a provider's own wire format and its answer back into a ``ChatResult`` (or a
stream of ``ChatDelta``), raising ``UpstreamError`` subclasses for failures. Tests put
an upstream fake that speaks the provider's real protocol behind an adapter; they
never mock the adapter's callers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
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
    cached_tokens: int = 0  # prompt tokens read from the provider's prompt cache
    cache_creation_tokens: int = 0  # prompt tokens written to it (Anthropic bills these)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    content: str | None
    finish_reason: str
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str | None = None


@dataclass(frozen=True, slots=True)
class ChatResult:
    model: str
    choices: tuple[Choice, ...]
    usage: Usage


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call: its id and name come first, then argument fragments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(frozen=True, slots=True)
class ChatDelta:
    """A piece of a streamed answer for one choice, or its end, or (alone) the usage."""

    index: int = 0
    content: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    refusal: str | None = None


@dataclass(frozen=True, slots=True)
class EmbeddingCall:
    deployment: Deployment
    inputs: tuple[str, ...]
    dimensions: int | None
    user: str | None
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    model: str
    vectors: tuple[Sequence[float], ...]
    prompt_tokens: int


class ChatAdapter(Protocol):
    """What every provider adapter offers. ``stream`` must end with a usage-only delta."""

    async def complete(self, call: ChatCall) -> ChatResult: ...

    def stream(self, call: ChatCall) -> AsyncIterator[ChatDelta]: ...

    async def embed(self, call: EmbeddingCall) -> EmbeddingResult: ...

    async def aclose(self) -> None: ...


class AdapterFactory(Protocol):
    def __call__(self, provider: Provider, counter: TokenCounter) -> ChatAdapter: ...
