"""Google Cloud Vertex AI: Gemini and Anthropic models of one project, with OAuth bearer tokens.

Needs the ``vertex`` extra (google-auth); the registry imports this module only when a
vertex provider is configured. Every model lives at

    {base}/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{model}

where ``base`` is ``https://{location}-aiplatform.googleapis.com`` (for location
``global``, ``https://aiplatform.googleapis.com``) unless ``base_url`` replaces it.
The publisher is the provider's ``publisher`` when set; otherwise it follows the
deployment's model id: ``claude...`` is Anthropic's, anything else Google's. So one
provider serves both families, e.g. ``gemini-2.5-pro`` and ``claude-sonnet-4-5@20250929``.

- google: the Gemini adapter as it is (``gemini`` lists its translation both ways),
  on ``:generateContent`` and ``:streamGenerateContent?alt=sse``.
- anthropic: the Anthropic adapter as it is (``anthropic`` lists its translation), on
  ``:rawPredict`` and ``:streamRawPredict``; the body is the Messages API body without
  ``model`` (the URL names it) and with ``anthropic_version: vertex-2023-10-16`` in
  place of the ``anthropic-version`` header. An image by http(s) URL is a 400 naming
  it, unsent: Vertex refuses Anthropic's URL sources (it takes base64 ``data:`` URLs).

Both go through one pooled client whose ``BearerAuth`` adds the service account's
access token (``vertex_auth``: from ``credentials_file``, else Google's default
credentials; refreshed off the event loop and cached until it is nearly expired).
Vertex's own failures (quota, permissions) come in Google's error shape, a Claude
model's in Anthropic's: each adapter already classifies its own. Vertex serves
embeddings through ``:predict``, which this adapter does not speak: the compiler
refuses ``kind: embeddings`` on a vertex provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from aigw.compiler.graph import Provider

from ..errors import BadRequest
from ..tokens import TokenCounter
from ..upstream import Upstream
from .anthropic import AnthropicAdapter
from .base import (
    ChatCall,
    ChatDelta,
    ChatResult,
    Refusals,
)
from .gemini import GeminiAdapter
from .vertex_auth import BearerAuth, GoogleTokens

ANTHROPIC_VERSION = "vertex-2023-10-16"


def vertex_base_url(location: str) -> str:
    """The regional endpoint: ``us-east5`` -> ``https://us-east5-aiplatform.googleapis.com``."""
    if location == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def publisher_of(provider: Provider, model: str) -> str:
    """``anthropic`` or ``google``: the provider's choice, else by the model id."""
    if provider.publisher:
        return provider.publisher
    return "anthropic" if model.startswith("claude") else "google"


class VertexAdapter(Refusals):
    """Chat against Vertex AI, by the deployment's publisher; the rest refused."""

    def __init__(self, provider: Provider, counter: TokenCounter) -> None:
        self.provider = provider
        self.tokens = GoogleTokens(provider.name, provider.credentials_file, provider.timeout_s)
        location = provider.location or "global"  # the compiler requires project and location
        base = (provider.base_url or vertex_base_url(location)).rstrip("/")
        models = f"{base}/v1/projects/{provider.project}/locations/{location}/publishers"
        self._gemini = _VertexGemini(provider, counter, f"{models}/google/models")
        client = self._gemini.upstream.client
        client.auth = BearerAuth(self.tokens)
        self._anthropic = _VertexAnthropic(provider, counter, client,
                                           f"{models}/anthropic/models")

    def _adapter(self, model: str) -> GeminiAdapter | AnthropicAdapter:
        return self._anthropic if publisher_of(self.provider, model) == "anthropic" \
            else self._gemini

    async def complete(self, call: ChatCall) -> ChatResult:
        return await self._adapter(call.deployment.model).complete(call)

    def stream(self, call: ChatCall) -> AsyncIterator[ChatDelta]:
        return self._adapter(call.deployment.model).stream(call)

    async def count_tokens(self, call: ChatCall) -> int | None:
        """Gemini's count on Vertex; None for Claude, whose count Vertex does not serve
        as Anthropic's API does."""
        adapter = self._adapter(call.deployment.model)
        return await adapter.count_tokens(call) if adapter is self._gemini else None

    async def aclose(self) -> None:
        await self._gemini.upstream.aclose()  # the client both publishers share


class _VertexGemini(GeminiAdapter):
    """Gemini on Vertex: the same bodies and answers, another address and no API key."""

    def __init__(self, provider: Provider, counter: TokenCounter, models: str) -> None:
        super().__init__(provider, counter)
        self._models = models

    def url(self, model: str, method: str) -> str:
        return f"{self._models}/{model}:{method}"

    def count_body(self, model: str, prompt: dict[str, Any]) -> dict[str, Any]:
        """Vertex's countTokens takes the prompt's fields themselves."""
        return prompt


class _VertexAnthropic(AnthropicAdapter):
    """Claude on Vertex: the Anthropic adapter over an upstream that addresses rawPredict."""

    def __init__(self, provider: Provider, counter: TokenCounter, client: httpx.AsyncClient,
                 models: str) -> None:
        super().__init__(provider, counter)
        self.upstream = _RawPredict(provider, client, models)

    async def complete(self, call: ChatCall) -> ChatResult:
        _refuse_url_images(call)
        return await super().complete(call)

    def stream(self, call: ChatCall) -> AsyncIterator[ChatDelta]:
        _refuse_url_images(call)  # before the stream starts: the next member may serve
        return super().stream(call)


def _refuse_url_images(call: ChatCall) -> None:
    """Vertex refuses Anthropic's URL image sources ("URL sources are not supported"):
    refused here by name, unsent, so that a group's next member may take the request."""
    for index, message in enumerate(call.request.messages):
        for number, part in enumerate(message.content if isinstance(message.content, list)
                                      else []):
            if part.type not in ("image_url", "input_image"):
                continue
            value = (part.model_extra or {}).get("image_url")
            url = value.get("url") if isinstance(value, dict) else value
            if isinstance(url, str) and url.startswith(("https://", "http://")):
                raise BadRequest("Claude on Vertex takes images as base64 data: URLs, not "
                                 "http(s) URLs.",
                                 param=f"messages[{index}].content[{number}].image_url")


class _RawPredict(Upstream):
    """The Messages API as Vertex serves it: the URL the Anthropic adapter gives
    (``/v1/messages``) is replaced by the model's rawPredict address, the model moves from
    the body to that URL, and the version from the header into the body."""

    def __init__(self, provider: Provider, client: httpx.AsyncClient, models: str) -> None:
        super().__init__(provider, client)
        self._models = models

    def _vertex(
        self, body: Mapping[str, Any], headers: Mapping[str, str], method: str
    ) -> tuple[str, dict[str, Any], dict[str, str]]:
        moved = {name: value for name, value in body.items() if name != "model"}
        moved["anthropic_version"] = ANTHROPIC_VERSION
        kept = {name: value for name, value in headers.items()
                if name.lower() != "anthropic-version"}
        return f"{self._models}/{body['model']}:{method}", moved, kept

    async def post_json_identified(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> tuple[dict[str, Any], str | None]:
        # post_json comes here too
        return await super().post_json_identified(*self._vertex(body, headers, "rawPredict"))

    async def post_sse(
        self, url: str, body: Mapping[str, Any], headers: Mapping[str, str],
        noted: list[str] | None = None,
    ) -> AsyncIterator[tuple[str, str]]:
        async for event in super().post_sse(*self._vertex(body, headers, "streamRawPredict"),
                                            noted):
            yield event
