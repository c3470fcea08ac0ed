"""POST /v1/embeddings: authenticate, parse, resolve, call, encode (floats or base64).

A call goes through the stages of runtime/route_call.py (the chat's attempt loop,
routing/attempts.py) with an embeddings ``Ask``: the route's members in its group's
strategy order, skipped when unavailable, retried, and its fallback groups taken by the
class of the last failure, as a chat's; a deployment's own rpm/tpm (``limits``) holds
for it too.
``input`` may be token ids (a list of ints, or a list of them, as OpenAI takes them):
they are sent as they came to providers whose embeddings take them, and each counts one
token. Members whose provider takes text only (Gemini) are skipped for them; a route with
none that takes them answers 400, as the gateway cannot know the tokenizer that made them.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Annotated, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError
from starlette.responses import JSONResponse, Response

from aigw.compiler.graph import ApiKey, Deployment, Route

from .chat import resolve_route
from .chat_request import MAX_TOKEN_ID, bad_request
from .errors import BadRequest
from .live import Live
from .providers.base import EmbeddingCall, EmbeddingInput, EmbeddingResult
from .providers.registry import EMBEDS_TOKEN_IDS
from .route_call import Weighed, answer_headers, call_route
from .routing.attempts import Won
from .routing.candidates import Candidate, EmbeddingAsk
from .telemetry.tracing import Span

if TYPE_CHECKING:
    from .exchange import Exchange

_MAX_INPUTS = 2048


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
    return JSONResponse(_body(won.value, request.encoding_format),
                        headers=answer_headers(exchange, route, won))


async def embed(
    exchange: Exchange, key: ApiKey, route: Route, inputs: tuple[EmbeddingInput, ...],
    token_ids: bool, dimensions: int | None, user: str | None, model: str,
    timeout_s: float | None = None,
) -> Won[EmbeddingResult]:
    """Embed ``inputs`` through ``route`` for ``key`` (identified on ``exchange``), through
    the stages of runtime/route_call.py: /v1/embeddings' way, and a semantic cache's
    (runtime/semantic_cache.py), which waits at most ``timeout_s`` for it."""
    live = exchange.live
    weighed = _weighed(live, inputs, token_ids)
    prompt_tokens = weighed.prompt_tokens

    def call(candidate: Candidate, texts: tuple[str, ...], tokens: int) -> Callable[
            [], Awaitable[EmbeddingResult]]:
        # Texts as the route's input guardrails left them; token ids are no text to check.
        sent = inputs if token_ids else texts
        embedding = EmbeddingCall(candidate.deployment, sent, dimensions, user, tokens)
        return partial(candidate.adapter.embed, embedding)

    return await call_route(
        exchange, key, route, kind="embeddings", model=model, prompt_tokens=prompt_tokens,
        ask=weighed.ask,
        cost=lambda deployment, sent: deployment.price.cost(sent.prompt_tokens, 0), call=call,
        noted=_noted, check=partial(_check_serves, route, token_ids), timeout_s=timeout_s,
        # Texts alone when not token ids (no copy: a route without guardrails reads none).
        texts=() if token_ids else cast("tuple[str, ...]", inputs),
        weigh=partial(_weighed, live, token_ids=False))


def _weighed(live: Live, inputs: tuple[EmbeddingInput, ...], token_ids: bool) -> Weighed:
    """The inputs as sent (as they came, or as the input guardrails redacted them): each
    tokenized once (token ids are their own count), and each must fit a member's window."""
    counts = [len(item) if isinstance(item, tuple) else live.counter.count(item)
              for item in inputs]
    prompt_tokens = sum(counts)
    return Weighed(prompt_tokens, EmbeddingAsk(live.adapters, prompt_tokens,
                                               max(counts, default=0), token_ids))


def _noted(span: Span, result: EmbeddingResult) -> None:
    span.set("gen_ai.usage.input_tokens", result.prompt_tokens)


def _check_serves(route: Route, token_ids: bool, members: list[Deployment]) -> None:
    """A 400, before the request is admitted, for token ids where every embeddings
    member of the route takes text only, or where the route's input guardrails would
    check the input: ids are no text to check, and a guardrail a client could step
    around by tokenizing its input is none (as a completions prompt's)."""
    guards = route.guardrails
    if token_ids and guards is not None and guards.input:
        raise BadRequest(f"'input' holds token ids, which guardrail '{guards.input[0].name}' "
                         "cannot check (it reads text): send the text.", param="input")
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
        if min(tokens) < 0 or max(tokens) > MAX_TOKEN_ID:
            raise BadRequest(f"'input' holds a token id out of range (0 to {MAX_TOKEN_ID}).",
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
