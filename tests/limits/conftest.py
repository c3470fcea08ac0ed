"""A priced echo gateway with keys, teams and budgets, served in-process on the embedded store."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from aigw.runtime.app import create_app
from aigw.runtime.live import Gateway
from aigw.runtime.tokens import TokenCounter

KEYS = {"dev": "sk-aigw-dev", "alice": "sk-alice-0001", "bob": "sk-bob-0002", "ops": "sk-ops-0003",
        "carol": "sk-carol-0004"}


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def limits_config(extra_keys: str = "", settings: str = "", extra_routes: str = "") -> str:
    """One currency unit per token (price 1e6 per million), so costs are token counts.
    Guardrail ``stretch`` redacts each "x" of an input as "[REDACTED]": what is sent
    weighs more than what came, for ``extra_routes`` to name."""
    return f"""
version: 1
settings:
  store: embedded
{settings}
providers:
  local: {{type: echo}}
deployments:
  paid: {{provider: local, model: paid-1, context_window: 100000, max_output_tokens: 50,
         price: {{input: 1000000, output: 1000000}}}}
  quota-1: {{provider: local, model: q1, context_window: 100000, limits: {{rpm: 1}}}}
  quota-2: {{provider: local, model: q2, context_window: 100000}}
  vectors: {{provider: local, model: embed-1, kind: embeddings, context_window: 8192,
            price: {{input: 1000000, output: 0}}}}
  ranker: {{provider: local, model: rerank-1, kind: rerank, context_window: 8192,
           price: {{input: 1000000, per_1k_search_units: 10000}}}}
  painter: {{provider: local, model: image-1, kind: image, context_window: 8192,
            price: {{per_image: 30}}}}
  sized-painter: {{provider: local, model: image-2, kind: image, context_window: 8192,
                  price: {{per_image_by_size: {{1024x1024: 10, 1792x1024: 20}}}}}}
  moderator: {{provider: local, model: moderation-1, kind: moderation, context_window: 8192}}
  speaker: {{provider: local, model: speak-1, kind: speech, context_window: 8192,
            price: {{per_1m_characters: 1000000}}}}
  listener: {{provider: local, model: listen-1, kind: transcription, context_window: 8192,
             price: {{per_minute: 60}}}}
groups:
  quotas: {{members: [quota-1, quota-2]}}
routes:
  paid: {{deployment: paid}}
  free: {{deployment: quota-2}}
  quotas: {{group: quotas}}
  vectors: {{deployment: vectors}}
  ranker: {{deployment: ranker}}
  painter: {{deployment: painter}}
  moderator: {{deployment: moderator}}
  speaker: {{deployment: speaker}}
  listener: {{deployment: listener}}
{extra_routes}
guardrails:
  stretch: {{kind: regex, patterns: ['x'], action: redact, on: [input]}}
teams:
  eng:
    budget: {{amount: 100, period: day}}
    per_user: {{budget: {{amount: 40, period: day}}}}
  ops: {{}}
keys:
  dev: {{admin: true, team: ops, sha256: {digest(KEYS['dev'])}}}
  alice: {{team: eng, sha256: {digest(KEYS['alice'])}, limits: {{rpm: 3}}}}
  bob: {{team: eng, sha256: {digest(KEYS['bob'])}, routes: [free]}}
{extra_keys}
"""


ClientFactory = Callable[..., Awaitable[Callable[[str], httpx.AsyncClient]]]


@pytest.fixture
async def limited(tmp_path: Path, counter: TokenCounter) -> AsyncIterator[ClientFactory]:
    """Builds the gateway; returns a function giving a client for a key name."""
    gateways: list[Gateway] = []
    clients: list[httpx.AsyncClient] = []

    async def build(extra_keys: str = "", settings: str = "", extra_routes: str = "",
                    store: str = "embedded") -> Callable[[str], httpx.AsyncClient]:
        root = tmp_path / f"gw{len(gateways)}"
        root.mkdir()
        (root / "gateway.yaml").write_text(limits_config(extra_keys, settings, extra_routes)
                                           .replace("store: embedded", f"store: {store}"))
        gateway = Gateway(root, counter)
        gateways.append(gateway)
        app = create_app(gateway)

        def client(key: str) -> httpx.AsyncClient:
            made = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://aigw.test",
                headers={"Authorization": f"Bearer {KEYS[key]}"},
            )
            clients.append(made)
            return made

        return client

    yield build
    for made in clients:
        await made.aclose()
    for gateway in gateways:
        await gateway.aclose()
