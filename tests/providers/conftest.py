"""Fixtures for provider tests: upstream fakes on loopback and gateways pointed at them."""

from __future__ import annotations

import json
import textwrap
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from aigw.compiler import compile_gateway
from aigw.compiler.graph import Deployment, Graph
from aigw.runtime.app import create_app
from aigw.runtime.chat_request import ChatRequest
from aigw.runtime.live import Gateway
from aigw.runtime.providers.base import ChatCall
from aigw.runtime.routing.state import RoutingState
from aigw.runtime.tokens import TokenCounter

from ..conftest import DEV_KEY
from ..fakes.anthropic_fake import AnthropicFake
from ..fakes.gemini_fake import GeminiFake
from ..fakes.openai_fake import OpenAIFake
from ..fakes.scripted import Scripted
from ..fakes.serve import serving


def dev_key_line(more: str = "", keys: str = "") -> str:
    """The ``keys`` section of the dev key alone; ``more``: more of its flow mapping (a
    budget, say); ``keys``: more keys' lines, after it."""
    return ("keys:\n  dev: {admin: true, sha256: "
            "2f0527c3d35a1f337ec6033b75e33c053e72e7122963d86dffe7c2f10bcbb482"
            + (f", {more}" if more else "") + "}\n" + keys)


DEV_KEY_LINE = dev_key_line()

CHAT = "/v1/chat/completions"
TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Look a thing up",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]
# A 1x1 PNG, base64, for image parts.
PIXEL = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJ"
         "RU5ErkJggg==")


class GatewayFactory(Protocol):
    """Serves ``sections`` in-process, on ``routing`` when given (a test's clock); ``dev``:
    more of the dev key's entry (``dev_key_line``)."""

    def __call__(
        self, sections: str, routing: RoutingState | None = None, *, dev: str = ""
    ) -> Awaitable[httpx.AsyncClient]: ...


# A /v1/messages request as an Anthropic SDK app with prompt caching sends it (Claude
# Code's habit): the system prompt's last block, the last tool and the last user turn
# marked, and a top_k. ``model`` is the route to put it to.
EPHEMERAL = {"type": "ephemeral"}
MARKED_MESSAGE: dict[str, Any] = {
    "max_tokens": 100, "top_k": 5,
    "system": [{"type": "text", "text": "You are terse."},
               {"type": "text", "text": "a long shared instruction", "cache_control": EPHEMERAL}],
    "tools": [{"name": "lookup", "input_schema": {"type": "object", "properties": {}},
               "cache_control": EPHEMERAL}],
    "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny",
             "cache_control": EPHEMERAL},
            {"type": "text", "text": "and tomorrow?",
             "cache_control": {"type": "ephemeral", "ttl": "5m"}}]},
    ],
}


def unmarked(value: Any) -> Any:
    """``value`` (a request) without its cache_control marks and top_k, at any depth."""
    if isinstance(value, dict):
        return {name: unmarked(item) for name, item in value.items()
                if name not in ("cache_control", "top_k")}
    if isinstance(value, list):
        return [unmarked(item) for item in value]
    return value


# A json_schema response_format whose shape a fake gives only when the schema reaches it
# whole: a property that is not "answer", a count, an enum behind pydantic's $ref.
# ``forecast(text)`` is the answer that fits it, its strings the fake's reply ``text``.
FORECAST = {"type": "object", "additionalProperties": False, "required": ["city", "days", "sky"],
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                           "sky": {"$ref": "#/$defs/Sky"}},
            "$defs": {"Sky": {"type": "string", "enum": ["clear", "cloudy"]}}}
FORECAST_FORMAT = {"type": "json_schema", "json_schema": {"name": "forecast", "strict": True,
                                                          "schema": FORECAST}}


def forecast(text: str) -> dict[str, Any]:
    """The answer that fits ``FORECAST`` (the fakes' ``json_answer``, spelled out)."""
    return {"city": text, "days": len(text.split()), "sky": "clear"}


# A deployment price with cache prices apart (per million tokens), for the billing tests:
# a cache read costs a tenth of an input token, a cache write 1.25 times one.
CACHE_PRICED = "price: {input: 1000, output: 2000, cache_read: 100, cache_write: 1250}"


def cache_priced_cost(fresh: int, read: int, written: int, output: int) -> float:
    """What ``CACHE_PRICED`` bills: ``fresh`` prompt tokens not from the cache."""
    return (fresh * 1000 + read * 100 + written * 1250 + output * 2000) / 1e6


async def _streamed(client: httpx.AsyncClient, payload: dict[str, Any]) -> list[str]:
    """``payload`` streamed to /v1/chat/completions (a 200): each event's data."""
    async with client.stream("POST", CHAT, json={**payload, "stream": True}) as response:
        assert response.status_code == 200, await response.aread()
        raw = (await response.aread()).decode()
    return [e.removeprefix("data: ") for e in raw.split("\n\n") if e]


async def stream_chunks(client: httpx.AsyncClient,
                        payload: dict[str, Any]) -> list[dict[str, Any]]:
    """``payload`` streamed: its chunks, the stream having ended with ``[DONE]``."""
    events = await _streamed(client, payload)
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def stream_events(client: httpx.AsyncClient,
                        payload: dict[str, Any]) -> list[dict[str, Any]]:
    """``payload`` streamed: every event, a closing error event too, ``[DONE]`` or not."""
    return [json.loads(e) for e in await _streamed(client, payload) if e != "[DONE]"]


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    """The first choice's content, as the chunks streamed it."""
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def streamed_tool_calls(chunks: list[dict[str, Any]]) -> dict[int, dict[str, str]]:
    """Reassemble streamed tool calls the way OpenAI's clients do."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for call in choice["delta"].get("tool_calls", []):
                slot = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                slot["id"] += call.get("id", "")
                slot["name"] += call.get("function", {}).get("name", "")
                slot["arguments"] += call.get("function", {}).get("arguments", "")
    return calls


def finish_reasons(chunks: list[dict[str, Any]]) -> list[str]:
    """The first choice's finish reasons, as the chunks streamed them."""
    return [c["choices"][0]["finish_reason"] for c in chunks
            if c["choices"] and c["choices"][0]["finish_reason"]]


async def billed(client: httpx.AsyncClient) -> dict[str, float]:
    """The ledger's totals over every request so far (cost, tokens_in, tokens_out,
    tokens_cached), as /v1/costs/summary gives them to the dev key."""
    rows = (await client.get("/v1/costs/summary")).json()["data"]
    return {name: sum(row[name] for row in rows)
            for name in ("cost", "tokens_in", "tokens_out", "tokens_cached")}


def compiled(root: Path, sections: str, environ: Mapping[str, str] | None = None) -> Graph:
    """``sections`` (providers, deployments, routes) compiled as the gateway in ``root``,
    for a test that drives an adapter itself; ``environ``: what ${ENV} references read."""
    (root / "gateway.yaml").write_text("version: 1\n" + textwrap.dedent(sections))
    result = compile_gateway(root, environ or {})
    assert result.graph is not None, result.diagnostics
    return result.graph


def gemini_on(upstream: Scripted, route: str = "flash") -> str:
    """A gateway with one Gemini deployment, flash, on a scripted upstream, served as
    ``route``."""
    return f"""
        providers:
          gem: {{type: gemini, base_url: "{upstream.base_url}/v1beta", api_key: "AIza-test"}}
        deployments:
          flash: {{provider: gem, model: gemini-2.5-flash, context_window: 1000000}}
        routes:
          {route}: {{deployment: flash}}
        """


def chat_call(deployment: Deployment, request: dict[str, Any]) -> ChatCall:
    """One attempt at ``deployment``: a 10-token prompt with room for 1024 more."""
    return ChatCall(ChatRequest.model_validate(request), deployment, 10, 1024)


class _Fake(Protocol):
    api_key: str
    app: Any


@contextmanager
def _served(fake: _Fake, key_variable: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``fake`` on loopback at its ``base_url``, its key in ``key_variable``."""
    monkeypatch.setenv(key_variable, fake.api_key)
    with serving(fake.app) as base_url:
        fake.base_url = base_url  # type: ignore[attr-defined]
        yield


@pytest.fixture
def openai_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAIFake]:
    fake = OpenAIFake()
    with _served(fake, "FAKE_OPENAI_KEY", monkeypatch):
        yield fake


@pytest.fixture
def gemini_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[GeminiFake]:
    fake = GeminiFake()
    with _served(fake, "FAKE_GEMINI_KEY", monkeypatch):
        yield fake


@pytest.fixture
def anthropic_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[AnthropicFake]:
    fake = AnthropicFake()
    with _served(fake, "FAKE_ANTHROPIC_KEY", monkeypatch):
        yield fake


@pytest.fixture
async def make_gateway(
    tmp_path: Path, counter: TokenCounter
) -> AsyncIterator[GatewayFactory]:
    """Write ``providers/deployments/routes`` YAML (plus the dev key) and serve it in-process."""
    clients: list[httpx.AsyncClient] = []
    gateways: list[Gateway] = []

    async def factory(sections: str, routing: RoutingState | None = None, *,
                      dev: str = "") -> httpx.AsyncClient:
        root = tmp_path / f"gw{len(clients)}"
        root.mkdir()
        text = "version: 1\n" + textwrap.dedent(sections).strip() + "\n" + dev_key_line(dev)
        (root / "gateway.yaml").write_text(text)
        gateway = Gateway(root, counter, routing=routing)
        gateways.append(gateway)
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(gateway)),
            base_url="http://aigw.test",
            headers={"Authorization": f"Bearer {DEV_KEY}"},
            timeout=30,
        )
        clients.append(client)
        return client

    yield factory
    for client in clients:
        await client.aclose()
    for gateway in gateways:
        await gateway.aclose()
