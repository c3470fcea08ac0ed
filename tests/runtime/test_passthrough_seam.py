"""The pass-through seam (runtime/providers/raw.py) and the compiler's list of the provider
types it serves (compiler/passthrough.py) say the same, and each adapter's target is its
root and its own credentials."""

from __future__ import annotations

import pytest

from aigw.compiler.graph import Provider
from aigw.compiler.passthrough import PASSTHROUGH_TYPES
from aigw.compiler.spec import ProviderType
from aigw.runtime.providers.raw import RawAdapter
from aigw.runtime.providers.registry import ADAPTERS
from aigw.runtime.tokens import TokenCounter

KEY = "sk-provider-key-0123456789"


def _provider(kind: str, base_url: str | None = None) -> Provider:
    return Provider(name="p", type=kind, base_url=base_url, api_version=None, timeout_s=5.0,
                    max_connections=2, headers={"x-extra": "1"}, disabled_reason=None,
                    api_key=KEY, region="us-east-1",
                    project="proj", location="us-east5")


@pytest.mark.parametrize("kind", sorted(PASSTHROUGH_TYPES))
def test_every_type_the_compiler_lets_through_has_the_seam(kind: str) -> None:
    adapter = ADAPTERS[kind](_provider(kind, "http://127.0.0.1:9/v1" if kind in (
        "openai_compatible", "vllm") else None), TokenCounter())
    assert isinstance(adapter, RawAdapter)


def test_the_types_it_refuses_have_none() -> None:
    assert not isinstance(ADAPTERS["echo"](_provider("echo"), TokenCounter()), RawAdapter)
    assert {"echo", "bedrock", "vertex"} == set(ProviderType.__args__) - PASSTHROUGH_TYPES


@pytest.mark.parametrize(("kind", "base_url", "root", "credential"), [
    ("openai", None, "https://api.openai.com", ("authorization", f"Bearer {KEY}")),
    ("vllm", "http://gpu:8000/v1", "http://gpu:8000", ("authorization", f"Bearer {KEY}")),
    ("azure_openai", "https://x.openai.azure.com", "https://x.openai.azure.com",
     ("api-key", KEY)),
    ("anthropic", "https://api.anthropic.com/v1", "https://api.anthropic.com",
     ("x-api-key", KEY)),
    ("gemini", None, "https://generativelanguage.googleapis.com", ("x-goog-api-key", KEY)),
])
def test_the_target_is_the_root_with_the_adapters_credentials(
        kind: str, base_url: str | None, root: str, credential: tuple[str, str]) -> None:
    adapter = ADAPTERS[kind](_provider(kind, base_url), TokenCounter())
    assert isinstance(adapter, RawAdapter)
    target = adapter.raw_target()
    assert target.root == root
    assert target.headers[credential[0]] == credential[1]
    assert target.headers["x-extra"] == "1"
