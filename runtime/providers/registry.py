"""Provider type to adapter factory: the only place that knows which adapters exist."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from aigw.compiler.graph import Provider

from ..tokens import TokenCounter
from .base import AdapterFactory, ChatAdapter
from .echo import EchoAdapter

ADAPTERS: Mapping[str, AdapterFactory] = MappingProxyType({"echo": EchoAdapter})


def build_adapters(
    providers: Mapping[str, Provider], counter: TokenCounter
) -> Mapping[str, ChatAdapter]:
    """One adapter per enabled provider that has one; the others stay out (and say why)."""
    return MappingProxyType(
        {
            name: ADAPTERS[provider.type](provider, counter)
            for name, provider in providers.items()
            if provider.enabled and provider.type in ADAPTERS
        }
    )
