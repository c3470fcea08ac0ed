"""POST /v1/embeddings: authenticate, parse, resolve, call, encode (floats or base64)."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse, Response

from aigw.compiler.graph import ApiKey

from .admission import check_route_allowed
from .chat import deadline_s, overhead_header, resolve_route
from .chat_request import bad_request
from .errors import (
    BadRequest,
    ContextWindowExceeded,
    NoDeploymentAvailable,
    UpstreamError,
    UpstreamTimeout,
)
from .exchange import Exchange
from .live import Live
from .policy_request import authorize_route
from .providers.base import ChatAdapter, EmbeddingCall, EmbeddingResult
from .routing.attempts import judge, unavailable
from .routing.breaker import Permit
from .telemetry.record import RequestRecord, UpstreamFailure

_MAX_INPUTS = 2048


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=65536)] | None = None
    user: str | None = None


async def embeddings(exchange: Exchange, key: ApiKey, body: bytes) -> Response:
    """Counted against the key's (its team's, the end user's) rpm, tpm and budget, and
    written to the spend ledger, as a chat completion is: ``exchange`` holds the limits,
    and the caller settles or releases them with the request's outcome."""
    live, headers, record = exchange.live, exchange.headers, exchange.record
    try:
        request = EmbeddingRequest.model_validate_json(body)
    except ValidationError as exc:
        raise bad_request(exc) from exc
    exchange.identify(key, request.user)
    user = exchange.user
    inputs = _texts(request, live)
    route = resolve_route(live.graph, request.model)
    counts = [live.counter.count(text) for text in inputs]  # each input tokenized once
    prompt_tokens, longest = sum(counts), max(counts, default=0)
    record.route, record.model, record.prompt_tokens = route.name, request.model, prompt_tokens
    live.telemetry.started(record)
    check_route_allowed(key, route)
    gate = await authorize_route(live, key, user, route, headers, prompt_tokens)
    ranked = gate.rank(route.candidates)
    denied = ranked.denied
    await exchange.admit(key, prompt_tokens, max(
        (d.price.cost(prompt_tokens, 0) for d in route.candidates if d.kind == "embeddings"),
        default=0.0))
    deadline = live.routing.clock() + deadline_s(route, headers)  # as a chat's
    tried: list[str] = []
    too_small: list[str] = []
    waiting = False  # a member that could take the input is unavailable for now
    last_error: UpstreamError | None = None
    for deployment in ranked.order:  # by @priority, then as configured
        adapter = live.adapters.get(deployment.provider.name)
        if deployment.name in denied:
            tried.append(f"{deployment.name}: {denied[deployment.name].reason}")
            continue
        if deployment.kind != "embeddings" or adapter is None:
            tried.append(f"{deployment.name}: "
                         + ("not an embeddings model" if adapter else "provider disabled"))
            continue
        if longest > deployment.context_window:  # a larger member may take it
            too_small.append(f"'{deployment.name}' takes at most {deployment.context_window}")
            tried.append(f"{deployment.name}: takes at most {deployment.context_window} tokens")
            continue
        remaining = deadline - live.routing.clock()
        if remaining <= 0:
            raise last_error or UpstreamTimeout(f"route '{route.name}' passed its deadline",
                                                provider=deployment.provider.name)
        skip = unavailable(live.routing, deployment)  # as a chat's attempt loop skips it
        permit = None if skip else live.routing.of(deployment).breaker.try_acquire(
            live.routing.clock())
        if permit is None:
            tried.append(f"{deployment.name}: {skip or 'circuit open'}")
            waiting = True
            continue
        call = EmbeddingCall(deployment, inputs, request.dimensions, request.user, prompt_tokens)
        waited = time.perf_counter()
        try:
            result = await _attempt(live, adapter, call, permit, record, remaining)
        except UpstreamError as exc:
            record.failures.append(
                UpstreamFailure(deployment.name, deployment.provider.name, str(exc.code)))
            last_error = exc
            if not exc.retryable:
                raise
            continue
        finally:  # the upstream's time, not the gateway's own overhead
            record.upstream_s += time.perf_counter() - waited
        record.deployment, record.provider = deployment.name, deployment.provider.name
        record.prompt_tokens = result.prompt_tokens
        record.cost = deployment.price.cost(result.prompt_tokens, 0)
        await exchange.close()
        return JSONResponse(
            _body(result, request.encoding_format),
            headers={"x-aigw-route": route.name, "x-aigw-deployment": deployment.name,
                     **overhead_header(record)},
        )
    if last_error is not None:
        raise last_error
    if too_small and not waiting:  # no member that could take the input: a 422, not a 503
        raise ContextWindowExceeded(
            f"An input has {longest} tokens; {', '.join(too_small)}.", param="input")
    if denied and not any(d.kind == "embeddings" and d.name not in denied
                          and d.provider.name in live.adapters for d in route.candidates):
        raise gate.forbidden(route.name, list(denied.values()))
    if not any(deployment.kind == "embeddings" for deployment in route.candidates):
        raise BadRequest(f"'{route.name}' is a chat model; it does not serve embeddings.",
                         param="model")
    raise NoDeploymentAvailable(
        f"No deployment of '{route.name}' serves embeddings: {'; '.join(tried)}."
    )


async def _attempt(
    live: Live, adapter: ChatAdapter, call: EmbeddingCall, permit: Permit, record: RequestRecord,
    remaining_s: float,
) -> EmbeddingResult:
    """One call, bounded by the deployment's timeout_s (or what is left of the route's
    deadline) and judged by its circuit breaker as a chat attempt is: a timeout or a 5xx
    counts against it, a client's 400 or the request's own deadline does not."""
    deployment = call.deployment
    stats = live.routing.of(deployment)
    record.attempts += 1
    stats.requests += 1
    stats.in_flight += 1
    own_timeout = deployment.timeout_s <= remaining_s
    try:
        async with asyncio.timeout(min(deployment.timeout_s, remaining_s)):
            result = await adapter.embed(call)
    except TimeoutError:
        error = UpstreamTimeout(f"deployment '{deployment.name}' did not answer in time"
                                if own_timeout else "the route passed its deadline waiting "
                                f"for deployment '{deployment.name}'",
                                provider=deployment.provider.name)
        if own_timeout:
            judge(live.routing, deployment, permit, error)
        else:  # the request's deadline, not the deployment's health
            stats.breaker.release(permit)
        raise error from None
    except UpstreamError as exc:
        judge(live.routing, deployment, permit, exc)
        raise
    except BaseException:  # not the deployment's answer (cancelled, a bug): no verdict,
        stats.breaker.release(permit)  # but a half-open probe's place is given back
        raise
    finally:
        stats.in_flight -= 1
    judge(live.routing, deployment, permit, None)
    return result


def _decoded(items: Sequence[object], live: Live) -> str:
    """Token ids as text, if the gateway's tokenizer knows them all: an id out of its
    range overflowed inside it, and one of the unused ids in range is a KeyError."""
    size = live.counter.vocabulary_size
    ids = [item for item in items if isinstance(item, int) and 0 <= item < size]
    try:
        if len(ids) == len(items):
            return live.counter.decode(ids)
    except KeyError:
        pass
    raise BadRequest(f"'input' holds token ids this gateway's tokenizer does not know "
                     f"(it reads 0 to {size - 1}, less a few unused).", param="input")


def _texts(request: EmbeddingRequest, live: Live) -> tuple[str, ...]:
    raw = request.input
    if isinstance(raw, str):
        texts: Sequence[str] = [raw]
    elif raw and all(isinstance(item, int) for item in raw):
        texts = [_decoded(raw, live)]
    elif raw and isinstance(raw[0], list):
        texts = [_decoded(item, live) for item in raw]
    else:
        texts = [str(item) for item in raw]
    if not texts or len(texts) > _MAX_INPUTS:
        raise BadRequest(f"'input' must hold 1 to {_MAX_INPUTS} items.", param="input")
    return tuple(texts)


def _body(result: EmbeddingResult, encoding: str) -> dict[str, object]:
    data = []
    for index, vector in enumerate(result.vectors):
        embedding: object = list(vector)
        if encoding == "base64":
            packed = struct.pack(f"<{len(vector)}f", *vector)
            embedding = base64.b64encode(packed).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {
        "object": "list",
        "data": data,
        "model": result.model,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
