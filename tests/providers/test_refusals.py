"""Every adapter refuses the APIs its provider lacks alike: ``not_served``, one wording."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from aigw.compiler.graph import Deployment
from aigw.runtime.errors import NoDeploymentAvailable
from aigw.runtime.providers.audio import audio_adapter
from aigw.runtime.providers.base import (
    ChatAdapter,
    EmbeddingCall,
    ImageCall,
    ModerationCall,
    RerankCall,
    not_served,
)
from aigw.runtime.providers.registry import ADAPTERS
from aigw.runtime.tokens import TokenCounter

from .conftest import chat_call, compiled

# No call reaches an upstream: every one of these is refused before it is sent.
SECTIONS = """
providers:
  claude: {type: anthropic, api_key: unused}
  aws: {type: bedrock, region: us-east-1, api_key: unused}
  gcp: {type: vertex, project: p, location: us-east5, credentials_file: unused.json}
  gem: {type: gemini, api_key: unused}
  rerank: {type: cohere, api_key: unused}
deployments:
  claude: {provider: claude, model: claude-sonnet-4-5, context_window: 200000}
  aws: {provider: aws, model: amazon.nova-lite-v1:0, context_window: 300000}
  gcp: {provider: gcp, model: gemini-2.5-flash, context_window: 1000000}
  gem: {provider: gem, model: gemini-2.5-flash, context_window: 1000000}
  rerank: {provider: rerank, model: rerank-v3.5, kind: rerank, context_window: 4096}
routes:
  claude: {deployment: claude}
  aws: {deployment: aws}
  gcp: {deployment: gcp}
  gem: {deployment: gem}
  rerank: {deployment: rerank}
"""
# Each provider's deployment, and the APIs (as ``not_served`` names them) its adapter refuses.
REFUSED = {
    "claude": ("embeddings", "rerank", "image generation", "moderation"),
    "aws": ("embeddings", "rerank", "image generation", "moderation"),
    "gcp": ("embeddings", "rerank", "image generation", "moderation"),
    "gem": ("rerank", "image generation", "moderation"),
    "rerank": ("chat", "embeddings", "image generation", "moderation"),
}


def _deployment(tmp_path: Path, name: str) -> Deployment:
    return compiled(tmp_path, SECTIONS).deployments[name]


def _calls(adapter: ChatAdapter, deployment: Deployment,
           api: str) -> list[Callable[[], Awaitable[object]]]:
    """The adapter's calls of ``api``: chat has two, whole and streamed."""
    chat = chat_call(deployment, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
    return {
        "chat": [lambda: adapter.complete(chat), lambda: anext(adapter.stream(chat))],
        "embeddings": [lambda: adapter.embed(EmbeddingCall(deployment, ("x",), None, None, 1))],
        "rerank": [lambda: adapter.rerank(RerankCall(deployment, "q", ("d",), None, None, 2))],
        "image generation": [lambda: adapter.generate_images(
            ImageCall(deployment, "a cat", 1, None, None, {}, 2))],
        "moderation": [lambda: adapter.moderate(ModerationCall(deployment, "x", 1, 1))],
    }[api]


@pytest.mark.parametrize("name", sorted(REFUSED))
async def test_each_adapter_refuses_what_its_provider_lacks_with_not_served(
    name: str, tmp_path: Path, counter: TokenCounter
) -> None:
    deployment = _deployment(tmp_path, name)
    provider = deployment.provider
    adapter = ADAPTERS[provider.type](provider, counter)
    try:
        for api in REFUSED[name]:
            for call in _calls(adapter, deployment, api):
                with pytest.raises(NoDeploymentAvailable) as refused:
                    await call()
                assert str(refused.value) == str(not_served(deployment, provider, api))
        with pytest.raises(NoDeploymentAvailable) as refused:
            audio_adapter(adapter, deployment)
        assert str(refused.value) == str(not_served(deployment, provider, "audio"))
    finally:
        await adapter.aclose()


def test_the_refusal_names_the_deployment_the_provider_and_the_api(tmp_path: Path) -> None:
    deployment = _deployment(tmp_path, "claude")
    assert str(not_served(deployment, deployment.provider, "embeddings")) == (
        "Deployment 'claude' is on provider 'claude' (anthropic), which has no embeddings "
        "API this gateway speaks.")
