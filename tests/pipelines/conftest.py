"""Pipeline fixtures: a priced echo gateway with pipelines, served in-process with its runner.

Prices are one currency unit per token (1e6 per million), so an execution's cost is
the number of tokens its model calls used. Redis tests use ``AIGW_TEST_REDIS_URL``
(default redis://127.0.0.1:6379/15), each in a namespace of its own.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from a2a.client import Client, ClientConfig, ClientFactory
from a2a.compat.v0_3 import conversions as v03_conversions
from a2a.compat.v0_3 import types as v03_types

from aigw.compiler.graph import Route
from aigw.runtime.app import create_app
from aigw.runtime.chat_request import ChatRequest
from aigw.runtime.live import Gateway
from aigw.runtime.store.executions import (
    Checkpoint,
    Execution,
    NewExecution,
    Status,
    new_owner,
)
from aigw.runtime.tokens import TokenCounter
from aigw.runtime.workflows import Workflows
from aigw.runtime.workflows.calls import GatewayModels
from aigw.runtime.workflows.engine import HttpCaller, ModelAnswer, Spent
from aigw.runtime.workflows.service import open_executions

DEV_KEY = "sk-aigw-dev"
ALICE_KEY = "sk-alice-pipelines"
BOT_KEY = "sk-bot-pipelines"  # of another team, not an admin
FAST_ONLY_KEY = "sk-fast-only-pipelines"  # may call the route 'fast' and nothing else


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def gateway_config(
    store: str = "embedded", extra_routes: str = "", latency: str = "", eng: str = "{}",
    settings: str = "", providers: str = "", deployments: str = "", agents: str = "",
    guardrails: str = "", groups: str = "",
) -> str:
    return f"""
version: 1
settings:
  store: {store}
  execution_lease_s: 2
{settings}
providers:
  local: {{type: echo{latency}}}
{providers}
deployments:
  cheap: {{provider: local, model: cheap-1, context_window: 100000,
          price: {{input: 1000000, output: 1000000}}}}
  strong: {{provider: local, model: strong-1, context_window: 100000,
           price: {{input: 2000000, output: 2000000}}}}
{deployments}
groups:
  tiered: {{members: [cheap], fallbacks: [strong-group]}}
  strong-group: {{members: [strong]}}
{groups}
routes:
  fast: {{deployment: cheap}}
  smart: {{deployment: strong}}
{extra_routes}
teams:
  eng: {eng}
  ops: {{}}
keys:
  dev: {{admin: true, team: eng, sha256: {digest(DEV_KEY)}}}
  alice: {{team: eng, sha256: {digest(ALICE_KEY)}}}
  bot: {{team: ops, sha256: {digest(BOT_KEY)}}}
  fast-only: {{routes: [fast], sha256: {digest(FAST_ONLY_KEY)}}}
agents: {{{agents}}}
guardrails: {{{guardrails}}}
"""


async def a2a_client(http: httpx.AsyncClient, url: str, *, streaming: bool = False,
                     polling: bool = False, version: str = "1.0") -> Client:
    """The a2a-sdk's own client of the agent at ``url`` (a pipeline's ``/a2a/{name}``),
    over ``http`` (which carries the key): its card read, as A2A clients start. Version
    ``0.3`` is the SDK's A2A 0.3 client (its compat transport, which speaks 0.3's wire
    and checks answers against 0.3's types), the card read as 0.3's clients read it:
    its ``url``, ``preferredTransport`` and ``protocolVersion``."""
    factory = ClientFactory(ClientConfig(httpx_client=http, streaming=streaming,
                                         polling=polling))
    if version == "1.0":
        return await factory.create_from_url(url)
    read = (await http.get(f"{url}/.well-known/agent-card.json")).json()
    card = v03_conversions.to_core_agent_card(v03_types.AgentCard.model_validate(read))
    assert [i.protocol_version for i in card.supported_interfaces] == [version]
    return factory.create(card)


def refuse_memos(file: Path, refuse: bool) -> None:
    """Make the embedded file fail (or stop failing) every write of a memo: a store out,
    as a full disk makes it."""
    with closing(sqlite3.connect(file, isolation_level=None)) as db:
        db.execute("CREATE TRIGGER full BEFORE INSERT ON wf_memos BEGIN "
                   "SELECT RAISE(ABORT, 'database or disk is full'); END" if refuse
                   else "DROP TRIGGER full")


APPROVAL = """
input: {type: object}
steps:
  draft: {kind: llm, model: fast, prompt: "{{ input.text }}"}
  sign_off:
    kind: approval
    needs: [draft]
    message: "Publish '{{ steps.draft }}'?"
    timeout_s: {timeout}
    default: {default}
  publish:
    kind: transform
    needs: [sign_off]
    when: "steps.sign_off.approved"
    expression: "'published: ' + steps.draft"
output: {decision: "{{ steps.sign_off }}", published: "{{ steps.publish }}"}
"""


def approval_pipeline(timeout: float = 60, default: str = "reject",
                      approvers: str | None = None) -> str:
    """A draft, a person's sign-off (by ``approvers``, YAML, if given), then publishing."""
    text = APPROVAL.replace("{timeout}", str(timeout)).replace("{default}", default)
    if approvers is not None:
        text = text.replace(f"    default: {default}\n",
                            f"    default: {default}\n    approvers: {approvers}\n")
    return text


@dataclass
class Served:
    """A gateway with its workflows, and an HTTP client for it (as the dev key)."""

    root: Path
    gateway: Gateway
    workflows: Workflows
    http: httpx.AsyncClient

    async def run(self, pipeline: str, given: Any, key: str = DEV_KEY) -> dict[str, Any]:
        """POST /v1/pipelines/{pipeline} and return the JSON answer. A failure's answer
        is checked here (OpenAI's error object, whose message says the execution's
        error); its ``error`` is then that error's text, as the tests compare it."""
        response = await self.http.post(f"/v1/pipelines/{pipeline}", json=given,
                                        headers={"authorization": f"Bearer {key}"})
        assert response.status_code in (200, 202, 502), response.text
        body: dict[str, Any] = response.json()
        if response.status_code == 502:
            execution = await self.get(body["execution"])
            assert body["error"] == {
                "message": f"Pipeline '{pipeline}' {body['status']}: {execution['error']}",
                "type": "server_error", "param": None, "code": "pipeline_failed"}, body
            body["error"] = execution["error"]
        return body

    async def start(self, pipeline: str, given: Any, **extra: Any) -> dict[str, Any]:
        response = await self.http.post("/api/v1/executions",
                                        json={"pipeline": pipeline, "input": given, **extra})
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        return body

    async def get(self, execution_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/api/v1/executions/{execution_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def wait_for(
        self, execution_id: str, check: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            execution = await self.get(execution_id)
            if check(execution):
                return execution
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting; last seen: {execution}")
            await asyncio.sleep(0.02)

    async def events(self, execution_id: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"/api/v1/executions/{execution_id}/events")
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    async def steps(self, execution_id: str) -> dict[str, dict[str, Any]]:
        response = await self.http.get(f"/api/v1/executions/{execution_id}/steps")
        return {state["step"]: state for state in response.json()["data"]}

    async def spend(self) -> dict[str, Any]:
        """The spend ledger's totals (all of it: a test's gateway serves one test)."""
        response = await self.http.get("/admin/spend?group_by=route")
        assert response.status_code == 200, response.text
        rows = response.json()["data"]
        return {name: sum(row[name] for row in rows)
                for name in ("requests", "tokens_in", "tokens_out", "cost", "estimated_cost")}

    async def assert_totals_are_the_ledgers(self, execution: dict[str, Any]) -> None:
        """``execution``'s cost and usage are what the spend ledger billed for it (this
        gateway's only execution)."""
        spend = await self.spend()
        assert spend["cost"] > 0, spend
        assert execution["cost"] == pytest.approx(spend["cost"]), (execution, spend)
        usage = execution["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == \
            (spend["tokens_in"], spend["tokens_out"]), (execution, spend)

    def with_new_runner(self, models: Any = None) -> Served:
        """This gateway with a runner of its own on the same store, as after a restart
        (or on another replica), its model calls made by ``models`` if given (as
        ``serve``'s); stop it with ``aclose``."""
        options: dict[str, Any] = {"models": models} if models is not None else {}
        workflows = Workflows(self.gateway, poll_s=0.05, **options)
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(self.gateway, workflows)),
            base_url="http://aigw.test", headers={"authorization": f"Bearer {DEV_KEY}"},
            timeout=30,
        )
        return Served(self.root, self.gateway, workflows, http)

    async def aclose(self) -> None:
        """Stop what ``with_new_runner`` made (the gateway is the first one's)."""
        await self.http.aclose()
        await self.workflows.stop()

    async def left_by_a_crash(self, pipeline: str, *checkpoints: Checkpoint) -> str:
        """An execution of ``pipeline`` (by the dev key) whose runner wrote
        ``checkpoints`` and died: its lease is let go, as one that ran out is, for this
        gateway's runner (started by the next request) to resume."""
        graph = self.gateway.live.graph
        store = await open_executions(graph.settings.store, self.root,
                                      graph.settings.redis_namespace)
        try:
            now = time.time()
            execution, _ = await store.create(
                NewExecution(pipeline, {}, "dev", None, graph.fingerprint), now)
            owner = new_owner()
            assert await store.claim(owner, 60.0, now, 1) == (execution.id,)
            await store.commit(execution.id, owner, Checkpoint(status=Status.RUNNING), now)
            for checkpoint in checkpoints:
                await store.commit(execution.id, owner, checkpoint, now)
            await store.release(execution.id, owner)
        finally:
            await store.aclose()
        return execution.id


Serve = Callable[..., Awaitable[Served]]


class AfterAnswer:
    """``serve``'s ``models``: the gateway's own model calls (``GatewayModels``), counted,
    with ``then(execution_id)`` awaited once an answer is in, before the run saves it
    (to stage what happens to the store at that moment)."""

    def __init__(self, then: Callable[[str], Awaitable[None]]) -> None:
        self.then = then
        self.calls = 0

    def __call__(self, gateway: Gateway, execution: Execution) -> GatewayModels:
        return _Answered(gateway, execution, self)


class _Answered(GatewayModels):
    def __init__(self, gateway: Gateway, execution: Execution, counter: AfterAnswer) -> None:
        super().__init__(gateway, execution)
        self.execution_id = execution.id
        self.counter = counter

    async def __call__(self, route: Route, request: ChatRequest, spent: Spent) -> ModelAnswer:
        answer = await super().__call__(route, request, spent)
        self.counter.calls += 1
        await self.counter.then(self.execution_id)
        return answer


@pytest.fixture
async def serve(tmp_path: Path, counter: TokenCounter) -> AsyncIterator[Serve]:
    """``await serve({"name": yaml}, store=..., http=...)``: a gateway dir with these
    pipelines, served in-process; everything is stopped at the end of the test. ``eng``
    is team eng's spec (its budgets), ``extra_routes`` lines added under routes, ``providers``,
    ``deployments``, ``settings``, ``agents``, ``guardrails`` and ``groups`` lines under theirs;
    ``clock``: the workflows' (their seam for time); ``namespace``: settings.redis_namespace."""
    opened: list[Served] = []

    async def start(
        pipelines: dict[str, str],
        *,
        store: str = "embedded",
        extra_routes: str = "",
        latency: str = "",
        eng: str = "{}",
        settings: str = "",
        providers: str = "",
        deployments: str = "",
        agents: str = "",
        guardrails: str = "",
        groups: str = "",
        http: HttpCaller | None = None,
        models: Any = None,
        namespace: str | None = None,
        root: Path | None = None,
        clock: Callable[[], float] | None = None,
    ) -> Served:
        root = root or tmp_path / f"gw{len(opened)}"
        if namespace is not None:  # every key of this gateway's under it, as configured
            settings = f"  redis_namespace: {namespace}\n{settings}"
        (root / "pipelines").mkdir(parents=True, exist_ok=True)
        (root / "gateway.yaml").write_text(gateway_config(store, extra_routes, latency, eng,
                                                                settings, providers,
                                                                deployments, agents,
                                                                guardrails, groups))
        for name, text in pipelines.items():
            (root / "pipelines" / f"{name}.yaml").write_text(text)
        gateway = Gateway(root, counter)
        options: dict[str, Any] = {"models": models} if models is not None else {}
        if clock is not None:
            options["clock"] = clock
        workflows = Workflows(gateway, http=http, poll_s=0.05, **options)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(gateway, workflows)),
            base_url="http://aigw.test", headers={"authorization": f"Bearer {DEV_KEY}"},
            timeout=30,
        )
        served = Served(root, gateway, workflows, client)
        opened.append(served)
        return served

    yield start
    for served in opened:
        await served.http.aclose()
        await served.workflows.stop()
        await served.gateway.aclose()
    # Anything left unclosed (a Redis connection, a socket) warns now, failing the test
    # that left it, not whichever test the garbage collector happens to run in later.
    gc.collect()


@pytest.fixture(params=["embedded", "redis"])
def store_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``serve``'s options for each store: the embedded one, then Redis."""
    if request.param == "embedded":
        return {}
    return {"store": request.getfixturevalue("redis_url"),
            "namespace": request.getfixturevalue("namespace")}


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A key namespace of this test's own; its keys are deleted afterwards."""
    name = f"aigw-test-wf-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{name}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
