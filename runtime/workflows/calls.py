"""The outside world of a step: model calls through the gateway's own serving core, the
policy check on a pipeline or agent a step calls, and HTTP tool calls.

A model call is an ``Exchange``, exactly like a request to /v1/chat/completions after
authentication: routing, fallbacks and circuit breakers, the key's (and its team's)
rate limits and budgets, the spend ledger and the metrics. The key is the one that
started the execution; its ``routes`` list limits what an app may call by name, not the
models a pipeline's author chose, so it does not apply inside a pipeline.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

import httpx
from starlette.datastructures import Headers

from aigw.compiler.graph import ApiKey, Route, TargetKind

from ..auth import work_key
from ..chat import new_record
from ..chat_request import ChatRequest
from ..errors import Forbidden, GatewayError, InternalError, Unauthorized
from ..exchange import Exchange
from ..guardrails import withheld_by
from ..live import Gateway, Live
from ..policy_request import authorize_agent, authorize_pipeline_again, kept_headers
from ..store.executions import Execution
from ..telemetry.record import RequestRecord
from ..upstream import no_cookies, read_bounded
from .engine import HttpAnswer, ModelAnswer, Spent, StepFailed


class GatewayModels:
    """``ModelCaller`` for one run, as the key that started the execution, for the end
    user it was started for (whose own limits and budgets apply as on a chat request).

    Each call is served by the graph serving at that moment (an execution can outlive
    reloads, waiting for an approval): its route for the model name and its key, so a
    reload that changes a route or revokes the key applies to the next call."""

    def __init__(self, gateway: Gateway, execution: Execution) -> None:
        self.gateway = gateway
        self.key_name = execution.key
        self.caller = execution.caller  # a JWT's caller: made again from it each call
        self.user = execution.user
        self.facts = execution.facts
        self.pipeline = execution.pipeline  # what made it, asked again without ``facts``
        # Its calls are asked of Cedar with the tags and latency SLA of the request that
        # made the execution (as its invoke checks are asked again), and their spans go
        # under that request's span.
        self.headers = Headers({**kept_headers(execution.facts),
                                **({"traceparent": execution.trace} if execution.trace else {})})

    async def __call__(self, route: Route, request: ChatRequest, spent: Spent) -> ModelAnswer:
        live = self.gateway.live
        key = self._key(live)
        record = new_record(live, "pipeline")
        exchange = Exchange(live, record, self.headers)
        if self.user is not None:  # in the body, as a chat names it (any text, not latin-1)
            request = request.model_copy(update={"user": self.user})
        live.in_flight.count += 1  # a reload closes the adapters it drops after this call
        try:
            await exchange.open(dataclasses.replace(key, routes=None), request,
                                current_route(live, route))
            served, result = await exchange.complete()
        except GatewayError as exc:
            await exchange.fail(exc)
            raise
        except asyncio.CancelledError:  # the execution stopped (a shutdown, a lost lease)
            await exchange.cancelled()
            raise
        except Exception:  # aigw's own fault (the runner logs it): given back, recorded
            # and counted as a chat request's is, not held until the hold expires
            await exchange.fail(InternalError("The gateway had an internal error."))
            raise
        finally:
            live.in_flight.leave()
            live.telemetry.finish(record)
            billed(record, spent)  # the exchange is closed or failed: its bill is known
        choice = result.choices[0] if result.choices else None
        guardrail = withheld_by(record)
        if guardrail is not None:  # an empty answer would pass for the model's own
            raise StepFailed(f"guardrail '{guardrail}' withheld the answer of model "
                             f"'{route.name}'", retryable=False)
        return ModelAnswer(
            text=(choice.content or "") if choice is not None else "",
            deployment=served.deployment.name,
            # As billed: a cached answer (runtime/response_cache.py) spent no tokens.
            prompt_tokens=spent.prompt_tokens,
            completion_tokens=spent.completion_tokens,
            cost=spent.cost,
            request=record.request_id,
            estimated=spent.estimated,
        )

    async def check_pipeline(self, pipeline: str) -> None:
        """The check ``/api/v1/executions`` makes, for a step that runs ``pipeline`` (a
        forbid on ``Pipeline::"name"`` holds however it is reached) and for the
        execution's own pipeline as it resumes: asked with the facts of the request that
        started the execution (its tags, its latency SLA), as it was then."""
        live = self.gateway.live
        try:
            await authorize_pipeline_again(live, self._key(live), self.user, pipeline,
                                           self.facts, self.pipeline)
        except Forbidden as exc:
            raise StepFailed(exc.message, retryable=False) from exc

    async def check_agent(self, agent: str) -> None:
        """As ``check_pipeline``, for an ``agent`` step about to message ``agent``
        (invoke on ``Agent::"name"``), as a key reaching a route or an MCP server is
        checked on it."""
        live = self.gateway.live
        try:
            await authorize_agent(live, self._key(live), self.user, agent, self.facts,
                                  self.pipeline)
        except Forbidden as exc:
            raise StepFailed(exc.message, retryable=False) from exc

    async def check_caller(self) -> None:
        """``StepFailed`` if the execution's key or caller is refused now (``_key``)."""
        self._key(self.gateway.live)

    def _key(self, live: Live) -> ApiKey:
        """The execution's key as the graph serving now has it, refused as a batch's line
        is: gone from the config, past its ``expires`` (the ``KeyExpired`` message naming
        when), a JWT caller whose issuer or team left the config."""
        if self.key_name is None:
            raise StepFailed("the execution was started by no key", retryable=False)
        try:
            return work_key(live, self.key_name, self.caller)
        except Unauthorized as exc:
            raise StepFailed(exc.message, retryable=False) from exc


def billed(record: RequestRecord, spent: Spent) -> None:
    """Fill ``spent`` with what the ledger has for ``record``'s call: its own record, and
    the calls it cut short (a hedge's loser, one its timeout cut), each an ``estimated``
    record of its own, settled with it to the same budgets."""
    spent.request = record.request_id
    spent.deployment = record.deployment or ""
    # As ``ledger_record`` counts them: a prompt never sent (no deployment) is not billed.
    spent.prompt_tokens = record.prompt_tokens if record.deployment else 0
    spent.completion_tokens = record.completion_tokens
    spent.cost = record.cost
    for cut in record.cut or ():
        spent.prompt_tokens += cut.prompt_tokens
        spent.completion_tokens += cut.completion_tokens
        spent.cost += cut.cost
        spent.deployment = spent.deployment or cut.deployment
        spent.estimated = True


def current_route(live: Live, route: Route) -> Route:
    """``route`` as the serving graph has it now (the one a run compiled with, if gone)."""
    found = live.graph.routes.get(route.name)
    if found is not None and found.kind is not TargetKind.PIPELINE:
        return found
    for pipeline in live.graph.pipelines.values():
        if route.name in pipeline.routes:
            return pipeline.routes[route.name]
    return route


# The most an http step's answer may hold: it becomes the step's output, which is kept
# in the execution's checkpoint (SQLite or Redis) and fed to later steps' templates.
MAX_STEP_ANSWER_BYTES = 16 << 20


class HttpxCaller:
    """``HttpCaller`` on one pooled httpx client; transport errors are retryable failures.
    Redirects are not followed: each step's destination is checked (compiler/egress.py),
    and a redirect could lead past that check. An answer past ``MAX_STEP_ANSWER_BYTES``
    fails the step (not retried) when it gets there, before it is held whole. Cookies
    are not kept: the client serves every key, execution and pipeline."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client or httpx.AsyncClient(cookies=no_cookies())

    async def __call__(
        self, method: str, url: str, headers: Mapping[str, str], body: Any, timeout: float
    ) -> HttpAnswer:
        for name, value in headers.items():
            if not (name.isascii() and value.isascii()):  # httpx would raise UnicodeEncodeError
                raise StepFailed(f"{method} {url}: header '{name}' is not ASCII text; encode "
                                 "it in the template (e.g. with urlencode)", retryable=False)
        request = self._client.build_request(
            method, url, headers=dict(headers),
            json=body if body is not None and method != "GET" else None, timeout=timeout,
        )
        try:
            # Not followed, whatever the client's default.
            response = await self._client.send(request, stream=True, follow_redirects=False)
            try:
                content = await read_bounded(
                    response.aiter_bytes(), MAX_STEP_ANSWER_BYTES,
                    lambda: StepFailed(f"{method} {url} answered more than "
                                       f"{MAX_STEP_ANSWER_BYTES >> 20} MiB", retryable=False))
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise StepFailed(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
        encoding = response.encoding or "utf-8"
        return HttpAnswer(response.status_code, response.headers.get("content-type", ""),
                          content.decode(encoding, "replace"))

    async def aclose(self) -> None:
        await self._client.aclose()
