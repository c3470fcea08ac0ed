"""POST /v1/embeddings: authenticate, parse, resolve, call, encode (floats or base64).

A call goes through the chat's attempt loop (routing/attempts.py) with an embeddings
``Ask``: the route's members in its group's strategy order, skipped when unavailable,
retried, and its fallback groups taken by the class of the last failure, as a chat's;
a deployment's own rpm/tpm (``limits``) holds for it too.
``input`` may be token ids (a list of ints, or a list of them, as OpenAI takes them):
they are sent as they came to providers whose embeddings take them, and each counts one
token. Members whose provider takes text only (Gemini) are skipped for them; a route with
none that takes them answers 400, as the gateway cannot know the tokenizer that made them.
"""

from __future__ import annotations

import base64
import struct
from functools import partial
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.responses import JSONResponse, Response

from aigw.compiler.graph import ApiKey, Route

from .admission import DeploymentQuotas, check_route_allowed
from .chat import (
    bill_answer,
    bill_loser,
    call_upstream,
    deadline_s,
    overhead_header,
    resolve_route,
    run_attempts,
)
from .chat_request import bad_request
from .errors import BadRequest
from .policy_request import authorize_route
from .providers.base import EmbeddingCall, EmbeddingInput, EmbeddingResult
from .providers.registry import EMBEDS_TOKEN_IDS
from .routing.attempts import AttemptLoop, Won
from .routing.candidates import Candidate, EmbeddingAsk
from .telemetry.tracing import Span

if TYPE_CHECKING:
    from .exchange import Exchange

_MAX_INPUTS = 2048
# The largest token id: past int32 is no vocabulary's (nor a number every server's
# tensors hold).
_MAX_TOKEN_ID = 2**31 - 1


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    input: str | list[str] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1, le=65536)] | None = None
    user: str | None = None


async def embeddings(exchange: Exchange, key: ApiKey, body: bytes) -> Response:
    """Counted against the key's (its team's, the end user's) rpm, tpm and budget, and
    written to the spend ledger, as a chat completion is: ``exchange`` holds the limits,
    and the caller settles or releases them with the request's outcome."""
    try:
        request = EmbeddingRequest.model_validate_json(body)
    except ValidationError as exc:
        raise bad_request(exc) from exc
    exchange.identify(key, request.user)
    inputs, token_ids = _inputs(request)
    route = resolve_route(exchange.live.graph, request.model)
    won = await embed(exchange, key, route, inputs, token_ids, request.dimensions,
                      request.user, request.model)
    return JSONResponse(
        _body(won.value, request.encoding_format),
        headers={"x-aigw-route": route.name, "x-aigw-deployment": won.candidate.deployment.name,
                 "x-aigw-attempts": str(won.attempts), **overhead_header(exchange.record)},
    )


async def embed(
    exchange: Exchange, key: ApiKey, route: Route, inputs: tuple[EmbeddingInput, ...],
    token_ids: bool, dimensions: int | None, user: str | None, model: str,
    timeout_s: float | None = None,
) -> Won[EmbeddingResult]:
    """Embed ``inputs`` through ``route`` for ``key`` (identified on ``exchange``): the
    route allowed to it, its policies asked, its limits held and settled, the call
    billed (``exchange.close``): /v1/embeddings' way, and a semantic cache's
    (runtime/semantic_cache.py), which waits at most ``timeout_s`` for it."""
    live, headers, record = exchange.live, exchange.headers, exchange.record
    # Each input tokenized once; token ids are their own count.
    counts = [len(item) if isinstance(item, tuple) else live.counter.count(item)
              for item in inputs]
    prompt_tokens, longest = sum(counts), max(counts, default=0)
    record.route, record.model, record.prompt_tokens = route.name, model, prompt_tokens
    live.telemetry.started(record)
    record.span, record.trace_context = live.telemetry.tracing.request(
        f"embeddings {model}", headers)
    check_route_allowed(key, route)
    gate = await authorize_route(live, key, exchange.user, route, headers, prompt_tokens)
    _check_serves(route, token_ids)
    await exchange.admit(key, prompt_tokens, max(
        (d.price.cost(prompt_tokens, 0) for d in route.candidates if d.kind == "embeddings"),
        default=0.0))

    quotas = DeploymentQuotas(live.store, record)

    async def attempt(candidate: Candidate) -> EmbeddingResult:
        call = EmbeddingCall(candidate.deployment, inputs, dimensions, user, prompt_tokens)
        return await call_upstream(live, record, quotas, candidate, prompt_tokens, prompt_tokens,
                                   partial(candidate.adapter.embed, call), "embeddings", _noted)

    ask = EmbeddingAsk(live.adapters, prompt_tokens, longest, token_ids)
    budget_s = deadline_s(route, headers)  # as a chat's
    deadline = live.routing.clock() + (budget_s if timeout_s is None else min(budget_s, timeout_s))
    loop = AttemptLoop(live.graph, live.routing, route, ask, deadline, attempt,
                       partial(bill_loser, record), gate=gate)
    won = await run_attempts(live, route, loop, record)
    bill_answer(live, record, won)
    await exchange.close()
    return won


def _noted(span: Span, result: EmbeddingResult) -> None:
    span.set("gen_ai.usage.input_tokens", result.prompt_tokens)


def _check_serves(route: Route, token_ids: bool) -> None:
    """A 400, before the request is admitted, for one no member of the route could take:
    a chat route's, or token ids where every embeddings member takes text only."""
    members = [d for d in route.candidates if d.kind == "embeddings"]
    if not members:
        raise BadRequest(f"'{route.name}' is a chat model; it does not serve embeddings.",
                         param="model")
    if token_ids and not any(d.provider.type in EMBEDS_TOKEN_IDS for d in members):
        types = sorted({d.provider.type for d in members})
        raise BadRequest(f"'input' holds token ids; no deployment of '{route.name}' takes them "
                         f"(its providers, {', '.join(types)}, take text): send the text "
                         "instead.", param="input")


def _inputs(request: EmbeddingRequest) -> tuple[tuple[EmbeddingInput, ...], bool]:
    """The inputs, and whether they are token ids (then each a tuple of ints)."""
    raw = request.input
    texts: list[str] = []
    ids: list[tuple[int, ...]] = []
    if isinstance(raw, str):
        texts.append(raw)
    elif raw and isinstance(raw[0], int):  # one input, of token ids
        ids.append(tuple(item for item in raw if isinstance(item, int)))
    else:  # texts, or inputs of token ids
        for item in raw:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list):
                ids.append(tuple(item))
    if not 1 <= len(texts) + len(ids) <= _MAX_INPUTS:
        raise BadRequest(f"'input' must hold 1 to {_MAX_INPUTS} items.", param="input")
    for tokens in ids:
        if not tokens:
            raise BadRequest("'input' holds an empty list of token ids.", param="input")
        if min(tokens) < 0 or max(tokens) > _MAX_TOKEN_ID:
            raise BadRequest(f"'input' holds a token id out of range (0 to {_MAX_TOKEN_ID}).",
                             param="input")
    return (tuple(ids), True) if ids else (tuple(texts), False)


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
