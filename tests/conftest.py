"""Shared fixtures: a copy of the shipped gateway, the app in-process, and a real server."""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aigw.compiler.keys import shown_moment
from aigw.runtime.app import create_app
from aigw.runtime.live import Gateway
from aigw.runtime.tokens import TokenCounter

from .fakes.bedrock_fake import BedrockFake
from .fakes.openai_fake import OpenAIFake
from .fakes.serve import free_port, serving
from .redis_server import PrivateRedis, shared_redis_url

REPO = Path(__file__).resolve().parent.parent
DEV_KEY = "sk-aigw-dev"


def metric_sample(text: str, metric: str, **labels: str) -> float:
    """The value of the sample in Prometheus text format named ``metric`` whose labels
    are exactly ``labels``, all of them (0 when there is none): a sample that has a
    label more is another series, never taken for the one asked."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and sample.labels == labels:
                return float(sample.value)
    return 0.0


def add_broken_route(gateway_dir: Path, cooldown_s: float) -> str:
    """Add a route ``broken`` to a deployment whose server is not there (a closed
    loopback port), its circuit opening at the first failure; returns the config as
    it was."""
    config = gateway_dir / "gateway.yaml"
    shipped = config.read_text()
    config.write_text(shipped.replace("\ndeployments:\n", f"""
  dead: {{type: vllm, base_url: "http://127.0.0.1:{free_port()}/v1"}}
deployments:
  broken:
    provider: dead
    model: nobody-home
    context_window: 8192
    circuit_breaker: {{consecutive_failures: 1, cooldown_s: {cooldown_s}}}
""", 1).replace("routes:", "routes:\n  broken: {deployment: broken}", 1))
    return shipped


GUARD_TOKEN = "guard-token-never-shown"  # $OPS_GUARD_TOKEN, the checker's credential
CI_BOT_KEY, CI_BOT_OLD_KEY = "sk-aigw-ci-bot", "sk-aigw-ci-bot-old"


def add_ops_features(gateway_dir: Path, expires: float, until: float) -> None:
    """Give the shipped gateway what operators should see of routes and keys: a route
    ``faq`` with a semantic cache and three guardrails (one a webhook whose credential
    header comes from $OPS_GUARD_TOKEN), an MCP server ``docs``, and a key ``ci-bot``
    limited to it, expiring at ``expires`` (epoch seconds), with an earlier secret
    accepted until ``until``."""
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace("\nroutes:", """
guardrails:
  secrets: {kind: regex, patterns: ['sk-[a-z]{8}'], on: [input]}
  pii: {kind: pii, entities: [email], action: redact}
  checker:
    kind: webhook
    url: "https://guard.example.com/check?token=abc"
    headers: {Authorization: "Bearer ${OPS_GUARD_TOKEN}"}
    on: [output]
    action: log
    on_error: allow
mcp_servers:
  docs:
    url: "https://mcp.example.com/mcp"
    headers: {Authorization: "Bearer ${OPS_GUARD_TOKEN}"}
    tools: [search]
routes:
  faq:
    group: fast
    cache: {ttl_s: 600, scope: key, semantic: {embeddings: embed, threshold: 0.9}}
    guardrails: [secrets, pii, checker]""", 1).replace("\nkeys:\n", f"""
keys:
  ci-bot:
    team: default
    sha256: {hashlib.sha256(CI_BOT_KEY.encode()).hexdigest()}
    mcp_servers: [docs]
    expires: '{shown_moment(expires)}'
    previous:
      - sha256: {hashlib.sha256(CI_BOT_OLD_KEY.encode()).hexdigest()}
        until: '{shown_moment(until)}'
""", 1))


# The key ci-bot of ops_dir: it expires within the week operators are warned of, and
# its earlier secret is refused already.
OPS_EXPIRES, OPS_UNTIL = int(time.time()) + 3 * 86400, int(time.time()) - 86400


@pytest.fixture
def ops_dir(gateway_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The shipped gateway with add_ops_features, its checker's credential set."""
    monkeypatch.setenv("OPS_GUARD_TOKEN", GUARD_TOKEN)
    add_ops_features(gateway_dir, OPS_EXPIRES, OPS_UNTIL)
    return gateway_dir


@asynccontextmanager
async def app_client(gateway: Gateway, key: str = DEV_KEY) -> AsyncIterator[httpx.AsyncClient]:
    """The app of ``gateway`` in-process, called with ``key``."""
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://aigw.test",
        headers={"Authorization": f"Bearer {key}"},
    ) as http:
        yield http


@pytest.fixture(scope="session")
def counter() -> TokenCounter:
    return TokenCounter()


@pytest.fixture
def gateway_dir(tmp_path: Path) -> Iterator[Path]:
    """A writable copy of the shipped gateway directory."""
    root = tmp_path / "gw"
    root.mkdir()
    shutil.copy(REPO / "gateway.yaml", root / "gateway.yaml")
    shutil.copytree(REPO / "policies", root / "policies")
    shutil.copytree(REPO / "pipelines", root / "pipelines")
    yield root


@pytest.fixture
async def gateway(gateway_dir: Path, counter: TokenCounter) -> AsyncIterator[Gateway]:
    served = Gateway(gateway_dir, counter)
    yield served
    await served.aclose()


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(gateway) as http:
        yield http


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own (the shared one is never touched)."""
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The shared Redis the store and pipeline tests use, each in its own namespace."""
    return shared_redis_url()


@pytest.fixture
def openai_upstream(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[OpenAIFake, str]]:
    """An OpenAI fake on loopback and its base URL; its key is in $FAKE_OPENAI_KEY."""
    fake = OpenAIFake()
    monkeypatch.setenv("FAKE_OPENAI_KEY", fake.api_key)
    with serving(fake.app) as url:
        yield fake, url


@pytest.fixture
def bedrock_fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[BedrockFake]:
    """The fake, and the AWS chain pointed at its credentials and nothing else."""
    fake = BedrockFake()
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", fake.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", fake.secret_key)
    monkeypatch.setenv("AWS_SESSION_TOKEN", fake.session_token or "")
    fake.api_key = "bedrock-api-key-ABSKfake0123456789"
    monkeypatch.setenv("FAKE_BEDROCK_API_KEY", fake.api_key)
    with serving(fake.app) as base_url:
        fake.base_url = base_url  # type: ignore[attr-defined]
        yield fake
