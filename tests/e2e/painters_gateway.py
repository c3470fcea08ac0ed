"""The gateway of the image tests (test_images.py, test_image_edits.py): a real ``aigw
serve`` over the OpenAI fake's image APIs (OpenAI's and Azure OpenAI's URLs) and echo's
offline PNGs, a guarded gpt-image route, and an edit's upload cap of ``UPLOAD_CAP``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from .server import Server, sdk_gateway

PROMPT = "a lighthouse at dusk"
UPLOAD_CAP = 256 * 1024  # an edit's form (its images and mask) past it is a 413


@dataclass
class Painters:
    upstream: OpenAIFake
    client: openai.OpenAI
    server: Server

    def post(self, **body: Any) -> httpx.Response:
        return httpx.post(f"{self.server.base_url}/v1/images/generations", json=body,
                          timeout=10, headers={"authorization": f"Bearer {DEV_KEY}"})

    def post_edit(self, fields: dict[str, str], files: list[tuple[str, Any]],
                  ) -> httpx.Response:
        """An edit's multipart form as written here, ``fields`` first (``files``: (field,
        (filename, bytes, content type)) each), past what the SDK would check: a form of
        no files is multipart too."""
        parts = [*((name, (None, value)) for name, value in fields.items()), *files]
        return httpx.post(f"{self.server.base_url}/v1/images/edits", files=parts,
                          timeout=10, headers={"authorization": f"Bearer {DEV_KEY}"})


@pytest.fixture
def painters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Painters]:
    upstream = OpenAIFake()
    monkeypatch.setenv("FAKE_OPENAI_KEY", upstream.api_key)
    with serving(upstream.app) as url, sdk_gateway(tmp_path / "gw", (
        "providers:\n"
        f'  openai: {{type: openai, base_url: "{url}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}\n'
        f'  azure: {{type: azure_openai, base_url: "{url}", api_key: "${{FAKE_OPENAI_KEY}}"}}\n'
        "  local: {type: echo}\n"
        "deployments:\n"
        "  dall-e-3: {provider: openai, model: dall-e-3, kind: image, context_window: 4000,\n"
        "             price: {per_image: 0.04, per_image_by_size: {1792x1024: 0.08}}}\n"
        "  gpt-image: {provider: openai, model: gpt-image-1, kind: image,\n"
        "              context_window: 32000, max_output_tokens: 4160,\n"
        "              price: {input: 5, output: 40}}\n"
        "  azure-dalle: {provider: azure, model: my-dalle, kind: image, context_window: 4000,\n"
        "                price: {per_image: 0.05}}\n"
        "  echo-image: {provider: local, model: echo-image, kind: image, context_window: 16}\n"
        "  echo-chat: {provider: local, model: echo-1, context_window: 8192}\n"
        "groups:\n"
        "  draw: {members: [dall-e-3, azure-dalle], retry: {attempts: 0}}\n"
        "routes:\n"
        "  dall-e-3: {deployment: dall-e-3}\n"
        "  gpt-image: {deployment: gpt-image}\n"
        "  azure: {deployment: azure-dalle}\n"
        "  draw: {group: draw}\n"
        "  local: {deployment: echo-image}\n"
        "  chat: {deployment: echo-chat}\n"
        "  guarded: {deployment: gpt-image, guardrails: [no-secrets, pii]}\n"
        "guardrails:\n"
        "  no-secrets: {kind: regex, patterns: ['sk-[A-Za-z0-9]{20,}'], action: block}\n"
        "  pii: {kind: pii, entities: [email], action: redact}\n"
        f"settings: {{max_image_upload_bytes: {UPLOAD_CAP}}}\n"
    )) as (client, server):
        yield Painters(upstream, client, server)
