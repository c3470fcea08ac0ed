"""The pass-through seam: where a provider's API is rooted, and the headers that
authenticate a request to it, as its adapter sends them (runtime/passthrough.py sends
requests the gateway did not write with them).

The root is the adapter's base URL without a trailing API version (``/v1``,
``/v1beta``), so an app's path names the version itself: OpenAI's
``https://api.openai.com`` + ``/v1/vector_stores``; a vLLM server's ``/tokenize`` is at
its root. The compiler keeps pass-throughs off the provider types whose adapters have no
such seam (compiler/passthrough.py's ``PASSTHROUGH_TYPES``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..errors import PassthroughUnavailable
from .base import ChatAdapter

_VERSION_AT_END = re.compile(r"/v\d+(?:(?:alpha|beta)\d*)?/?$")


@dataclass(frozen=True, slots=True)
class RawTarget:
    """``root`` (no trailing /) and the headers every request to it carries: the
    provider's ``headers:`` and its credentials."""

    root: str
    headers: Mapping[str, str] = field(repr=False)


@runtime_checkable
class RawAdapter(Protocol):
    def raw_target(self) -> RawTarget:
        """Where the provider's API is rooted, and how a request to it authenticates."""
        ...


def api_root(base_url: str) -> str:
    """``base_url`` without a trailing API version or slash.

    >>> api_root("https://api.openai.com/v1"), api_root("http://gpu:8000/v1/")
    ('https://api.openai.com', 'http://gpu:8000')
    >>> api_root("https://generativelanguage.googleapis.com/v1beta")
    'https://generativelanguage.googleapis.com'
    """
    return _VERSION_AT_END.sub("", base_url.rstrip("/") + "/").rstrip("/")


def raw_adapter(adapter: ChatAdapter, provider: str) -> RawAdapter:
    """``adapter`` as the pass-through seam; the compiler keeps pass-throughs off the
    others (AGW356), so the error is for an adapter that lost its seam."""
    if not isinstance(adapter, RawAdapter):
        raise PassthroughUnavailable(f"Provider '{provider}' cannot be passed through to.")
    return adapter
