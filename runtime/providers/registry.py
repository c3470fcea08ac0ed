"""Provider type to adapter factory: the only place that knows which adapters exist."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from aigw.compiler.graph import Provider

from ..tokens import TokenCounter
from .anthropic import AnthropicAdapter
from .base import AdapterFactory, ChatAdapter
from .cohere import CohereAdapter
from .echo import EchoAdapter
from .gemini import GeminiAdapter
from .guard import GuardedAdapter
from .openai import AzureOpenAIAdapter, OpenAIAdapter


def _bedrock(provider: Provider, counter: TokenCounter) -> ChatAdapter:
    """Imported here, not above: it needs botocore, the optional ``bedrock`` extra."""
    from .bedrock import BedrockAdapter

    return BedrockAdapter(provider, counter)


def _vertex(provider: Provider, counter: TokenCounter) -> ChatAdapter:
    """Imported here, not above: it needs google-auth, the optional ``vertex`` extra."""
    from .vertex import VertexAdapter

    return VertexAdapter(provider, counter)


ADAPTERS: Mapping[str, AdapterFactory] = MappingProxyType(
    {
        "echo": EchoAdapter,
        "openai": OpenAIAdapter,
        "openai_compatible": OpenAIAdapter,
        "vllm": OpenAIAdapter,
        "azure_openai": AzureOpenAIAdapter,
        "gemini": GeminiAdapter,
        "anthropic": AnthropicAdapter,
        "bedrock": _bedrock,
        "vertex": _vertex,
        "cohere": CohereAdapter,
    }
)

# Provider types whose embeddings API takes token ids for input (OpenAI's list of ints,
# or list of lists), sent to them as they came. The others (Gemini's takes text) get no
# token-id input: a request's ids are in the tokenizer of the model that made them, and
# no gateway-side guess at it turns them back into the text the client meant.
EMBEDS_TOKEN_IDS = frozenset({"echo", "openai", "openai_compatible", "vllm", "azure_openai"})

# Provider types whose adapter sends a /v1/completions request to the upstream's own
# /completions, the prompt as it came: only there do suffix, echo, logprobs (a count)
# and best_of mean anything. The others (chat APIs only) get the prompt as one user
# message, and a request with one of those parameters is not sent to them.
COMPLETES_TEXT = frozenset({"openai", "openai_compatible", "vllm", "azure_openai"})

# Provider types that serve a /v1/completions prompt of token ids: those of
# ``COMPLETES_TEXT``, sent them as they came, and echo, which answers them written out
# (``"1 2 3"``) so a gateway without keys can be tried with them, as its embeddings take
# them. A chat API has no place for ids, and no gateway-side guess at the tokenizer
# that made them turns them back into the text the client meant.
COMPLETES_TOKEN_IDS = COMPLETES_TEXT | {"echo"}


def build_adapters(
    providers: Mapping[str, Provider],
    counter: TokenCounter,
    reusable: Mapping[str, ChatAdapter] | None = None,
) -> Mapping[str, ChatAdapter]:
    """One adapter per enabled provider that has one; the others stay out (and say why).
    Each is guarded (``GuardedAdapter``): an answer it cannot read is a 502, not a crash.

    ``reusable`` holds adapters built for identical providers, kept with their pools.
    """
    reusable = reusable or {}
    return MappingProxyType(
        {
            name: reusable.get(name)
            or GuardedAdapter(ADAPTERS[provider.type](provider, counter), provider, counter)
            for name, provider in providers.items()
            if provider.enabled and provider.type in ADAPTERS
        }
    )
