"""Gateways with Cedar policies, served in-process: echo deployments, two teams, three keys."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from aigw.runtime.app import create_app
from aigw.runtime.live import Gateway
from aigw.runtime.tokens import TokenCounter

from ..fakes.openai_fake import OpenAIFake

REPO = Path(__file__).resolve().parent.parent.parent
KEYS = {"dev": "sk-aigw-dev", "alice": "sk-alice-0001", "ops": "sk-ops-0003"}
PERMIT_ALL = """
@id("keys-may-invoke-routes")
permit (principal, action == Action::"invoke", resource);

@id("any-deployment-may-serve")
permit (principal, action == Action::"route", resource);
"""
SHIPPED_ROUTING = (REPO / "policies" / "routing.cedar").read_text()


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def config(settings: str = "", hosted_url: str | None = None, groups: str = "",
           routes: str = "", deployments: str = "") -> str:
    """local-a and local-b (echo: self-hosted) in group pair; with ``hosted_url``, an
    OpenAI-compatible ``hosted`` deployment first in group mixed; ``groups``, ``routes``
    and ``deployments``: more entries (YAML lines, two spaces in)."""
    hosted_provider = hosted_deployment = hosted_group = hosted_route = ""
    if hosted_url is not None:
        hosted_provider = (f'  hosted: {{type: openai_compatible, base_url: "{hosted_url}/v1", '
                           'api_key: "${FAKE_OPENAI_KEY}"}')
        hosted_deployment = ("  hosted: {provider: hosted, model: gpt-x, context_window: 8192, "
                             "price: {input: 1, output: 2}}")
        hosted_group = "  mixed: {members: [hosted, local-a]}"
        hosted_route = "  mixed: {group: mixed}"
    return textwrap.dedent("""\
        version: 1
        settings:
          store: embedded
        {settings}
        providers:
          local: {{type: echo}}
        {hosted_provider}
        deployments:
          local-a: {{provider: local, model: local-a, context_window: 8192}}
          local-b: {{provider: local, model: local-b, context_window: 8192}}
          vectors: {{provider: local, model: vec-1, kind: embeddings, context_window: 8192}}
        {hosted_deployment}
        {deployments}
        groups:
          pair: {{members: [local-a, local-b]}}
          backup: {{members: [local-b]}}
        {hosted_group}
        {groups}
        routes:
          pair: {{group: pair}}
          solo: {{deployment: local-a}}
          embed: {{deployment: vectors}}
          guarded: {{group: pair, description: "a second route onto the same group"}}
        {hosted_route}
        {routes}
        teams:
          eng: {{budget: {{amount: 5, period: month}}}}
          ops: {{}}
        keys:
          dev: {{admin: true, team: ops, sha256: {dev}}}
          alice: {{team: eng, sha256: {alice}}}
          ops: {{team: ops, sha256: {ops}}}
        """).format(
        settings=textwrap.indent(settings, "  "), hosted_provider=hosted_provider,
        hosted_deployment=hosted_deployment, hosted_group=hosted_group,
        hosted_route=hosted_route, groups=groups.strip("\n"), routes=routes.strip("\n"),
        deployments=deployments.strip("\n"),
        dev=digest(KEYS["dev"]), alice=digest(KEYS["alice"]),
        ops=digest(KEYS["ops"]),
    )


@dataclass
class PolicyGateway:
    root: Path
    gateway: Gateway
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)

    def client(self, key: str = "dev") -> httpx.AsyncClient:
        if key not in self.clients:
            self.clients[key] = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=create_app(self.gateway)),
                base_url="http://aigw.test",
                headers={"Authorization": f"Bearer {KEYS[key]}"},
                timeout=30,
            )
        return self.clients[key]

    def stats(self, deployment: str):  # type: ignore[no-untyped-def]
        live = self.gateway.live
        return live.routing.of(live.graph.deployments[deployment])


Factory = Callable[..., Awaitable[PolicyGateway]]


@pytest.fixture
async def policy_gateway(tmp_path: Path, counter: TokenCounter) -> AsyncIterator[Factory]:
    """``await policy_gateway({"routing.cedar": ...}, settings="hide_policy_ids: true")``;
    ``deployments``/``groups``/``routes`` add YAML lines (two spaces in), ``pipelines``
    name -> YAML."""
    made: list[PolicyGateway] = []

    async def factory(policies: dict[str, str], settings: str = "",
                      hosted_url: str | None = None, groups: str = "", routes: str = "",
                      pipelines: dict[str, str] | None = None,
                      deployments: str = "") -> PolicyGateway:
        root = tmp_path / f"gw{len(made)}"
        (root / "policies").mkdir(parents=True)
        (root / "gateway.yaml").write_text(config(settings, hosted_url, groups, routes,
                                                  deployments))
        for name, text in policies.items():
            (root / "policies" / name).write_text(text)
        if pipelines:
            (root / "pipelines").mkdir()
            for name, text in pipelines.items():
                (root / "pipelines" / f"{name}.yaml").write_text(text)
        made.append(PolicyGateway(root, Gateway(root, counter)))
        return made[-1]

    yield factory
    for item in made:
        for client in item.clients.values():
            await client.aclose()
        await item.gateway.aclose()


@pytest.fixture
def hosted(openai_upstream: tuple[OpenAIFake, str]) -> tuple[OpenAIFake, str]:
    """The upstream of the ``hosted`` (not self-hosted) deployment."""
    return openai_upstream


def chat(model: str, content: str = "hello", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}
