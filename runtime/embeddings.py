"""POST /v1/embeddings: authenticate, parse, resolve, call, encode (floats or base64).

A call goes through the chat's attempt loop (routing/attempts.py) with an embeddings
``Ask``: the route's members in its group's strategy order, skipped when unavailable,
retried, and its fallback groups taken by the class of the last failure, as a chat's.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse, Response

from aigw.compiler.graph import ApiKey, Route

from .admission import check_route_allowed
from .chat import deadline_s, nothing, overhead_header, resolve_route, run_attempts
from .chat_request import bad_request
from .errors import BadRequest
from .exchange import Exchange
from .live import Live
from .policy_request import authorize_route
from .providers.base import EmbeddingCall, EmbeddingResult
from .routing.attempts import AttemptLoop
from .routing.candidates import Candidate, EmbeddingAsk

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
    _check_serves(route)
    await exchange.admit(key, prompt_tokens, max(
        (d.price.cost(prompt_tokens, 0) for d in route.candidates if d.kind == "embeddings"),
        default=0.0))

    async def attempt(candidate: Candidate) -> EmbeddingResult:
        call = EmbeddingCall(candidate.deployment, inputs, request.dimensions, request.user,
                             prompt_tokens)
        waited = time.perf_counter()
        try:
            return await candidate.adapter.embed(call)
        finally:  # the upstream's time, not the gateway's own overhead
            record.upstream_s += time.perf_counter() - waited

    ask = EmbeddingAsk(live.adapters, prompt_tokens, longest)
    deadline = live.routing.clock() + deadline_s(route, headers)  # as a chat's
    loop = AttemptLoop(live.graph, live.routing, route, ask, deadline, attempt, nothing,
                       gate=gate)
    won = await run_attempts(live, route, loop, record)
    result, deployment = won.value, won.candidate.deployment
    stats = live.routing.of(deployment)
    now = live.routing.clock()
    stats.observe_latency((now - won.started) * 1000)
    stats.add_usage(now, result.prompt_tokens)
    record.prompt_tokens = result.prompt_tokens
    record.cost = deployment.price.cost(result.prompt_tokens, 0)
    await exchange.close()
    return JSONResponse(
        _body(result, request.encoding_format),
        headers={"x-aigw-route": route.name, "x-aigw-deployment": deployment.name,
                 "x-aigw-attempts": str(won.attempts), **overhead_header(record)},
    )


def _check_serves(route: Route) -> None:
    """A 400, before the request is admitted, for a chat route's."""
    if not any(d.kind == "embeddings" for d in route.candidates):
        raise BadRequest(f"'{route.name}' is a chat model; it does not serve embeddings.",
                         param="model")


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
