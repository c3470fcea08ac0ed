"""The outside world of a step: model calls through the gateway's own serving core, and
HTTP tool calls.

A model call is an ``Exchange``, exactly like a request to /v1/chat/completions after
authentication: routing, fallbacks and circuit breakers, the key's (and its team's)
rate limits and budgets, the spend ledger and the metrics. The key is the one that
started the execution; its ``routes`` list limits what an app may call by name, not the
models a pipeline's author chose, so it does not apply inside a pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import httpx
from starlette.datastructures import Headers

from aigw.compiler.graph import ApiKey, Route

from ..chat import new_record
from ..chat_request import ChatRequest
from ..errors import GatewayError
from ..exchange import Exchange
from ..live import Live
from .engine import HttpAnswer, ModelAnswer, StepFailed


def find_key(live: Live, name: str | None) -> ApiKey | None:
    return next((key for key in live.graph.keys_by_sha256.values() if key.name == name), None)


class GatewayModels:
    """``ModelCaller`` for one run: the live graph it started on and its caller's key."""

    def __init__(self, live: Live, key_name: str | None) -> None:
        self.live = live
        key = find_key(live, key_name)
        self.key = dataclasses.replace(key, routes=None) if key is not None else None
        self.key_name = key_name

    async def __call__(self, route: Route, request: ChatRequest) -> ModelAnswer:
        if self.key is None:
            raise StepFailed(f"the key '{self.key_name}' that started this execution is no "
                             "longer accepted by the gateway", retryable=False)
        live = self.live
        record = new_record(live, "pipeline")
        exchange = Exchange(live, record, Headers())
        try:
            await exchange.open(self.key, request, route)
            served, result = await exchange.complete()
        except GatewayError as exc:
            await exchange.fail(exc)
            raise
        finally:
            live.telemetry.finish(record)
        choice = result.choices[0] if result.choices else None
        return ModelAnswer(
            text=(choice.content or "") if choice is not None else "",
            deployment=served.deployment.name,
            prompt_tokens=result.usage.prompt_tokens,
            completion_tokens=result.usage.completion_tokens,
            cost=record.cost,
        )


class HttpxCaller:
    """``HttpCaller`` on one pooled httpx client; transport errors are retryable failures."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client or httpx.AsyncClient(follow_redirects=True)

    async def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: Any, timeout: float
    ) -> HttpAnswer:
        try:
            response = await self._client.request(
                method, url, headers=dict(headers),
                json=body if body is not None and method != "GET" else None, timeout=timeout,
            )
        except httpx.HTTPError as exc:
            raise StepFailed(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
        return HttpAnswer(response.status_code, response.headers.get("content-type", ""),
                          response.text)

    async def aclose(self) -> None:
        await self._client.aclose()
