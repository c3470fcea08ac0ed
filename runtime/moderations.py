"""POST /v1/moderations: whether texts (and images) break a content policy, per category.

Request, as OpenAI takes it: ``{model?, input: str | [str] | [{type: "text", text} |
{type: "image_url", image_url: {url}}]}``; answer OpenAI's ``{id, model, results:
[{flagged, categories, category_scores, category_applied_input_types?}]}``, a result for
each text, one for a list of parts. ``model`` left out (OpenAI's default model), the
route named ``omni-moderation-latest`` serves it where there is one, else the one route
of moderation deployments; with several and none of that name, it is a 400 naming them.

The call goes through the stages of runtime/route_call.py, as an embeddings call does
(key, Cedar, rpm, limits and budget, the attempt loop, ledger, access log, metrics,
tracing). OpenAI does not charge for moderation: a deployment's input price, where it
has one, bills the texts' tokens; else the call costs 0, and is still in the ledger.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse, Response

from aigw.compiler.graph import ApiKey, Graph, Route

from .chat import resolve_route
from .chat_request import bad_request
from .errors import BadRequest
from .providers.base import ModerationCall, ModerationResult
from .route_call import answer_headers, call_route
from .routing.candidates import Candidate, InputAsk
from .telemetry.tracing import Span

if TYPE_CHECKING:
    from .exchange import Exchange

DEFAULT_MODEL = "omni-moderation-latest"  # what OpenAI serves a request that names none
MAX_INPUTS = 1000  # a bound on what one request makes the gateway count


class ModerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Annotated[str, Field(min_length=1)] | None = None
    input: Any  # str, [str] or [part]: checked by _input, naming the item


async def moderate(exchange: Exchange, key: ApiKey, body: bytes) -> Response:
    try:
        request = ModerationRequest.model_validate_json(body)
    except ValidationError as exc:
        raise bad_request(exc) from exc
    exchange.identify(key, None)
    sent, texts, results = _input(request.input)
    live = exchange.live
    route = _route(live.graph, request.model)
    counts = [live.counter.count(text) for text in texts]
    prompt_tokens, longest = sum(counts), max(counts, default=0)

    # No guardrails (compiler/guardrails.py refuses them here): a moderation model is a
    # classifier itself, and what it is sent comes back as its verdict, not as text.
    def call(candidate: Candidate, _texts: tuple[str, ...], _tokens: int) -> Callable[
            [], Awaitable[ModerationResult]]:
        moderation = ModerationCall(candidate.deployment, sent, results, prompt_tokens)
        return partial(candidate.adapter.moderate, moderation)

    won = await call_route(
        exchange, key, route, kind="moderation", model=route.name, prompt_tokens=prompt_tokens,
        ask=InputAsk(live.adapters, "moderation", prompt_tokens, longest, "input"),
        cost=lambda deployment, _sent: deployment.price.cost(prompt_tokens, 0), call=call,
        noted=_noted)
    result = won.value
    return JSONResponse(
        {"id": result.id or f"modr-{exchange.record.request_id.removeprefix('chatcmpl-')}",
         "model": result.model, "results": list(result.results)},
        headers=answer_headers(exchange, route, won))


def _noted(span: Span, result: ModerationResult) -> None:
    span.set("gen_ai.response.model", result.model)
    span.set("gen_ai.usage.input_tokens", result.prompt_tokens)


def _route(graph: Graph, model: str | None) -> Route:
    """The route a request names, or, naming none, the one that stands for OpenAI's
    default: a route of that name, else the only route of moderation deployments."""
    if model is not None:
        return resolve_route(graph, model)
    if DEFAULT_MODEL in graph.routes:
        return resolve_route(graph, DEFAULT_MODEL)
    # Only a request that names no model looks: a scan of the routes, not a lookup.
    serving = sorted(name for name, route in graph.routes.items()
                     if route.candidates and all(d.kind == "moderation" for d in route.candidates))
    if len(serving) == 1:
        return resolve_route(graph, serving[0])
    raise BadRequest(
        "Missing required parameter: 'model' (the gateway has "
        + (f"several moderation routes: {', '.join(serving)}" if serving
           else "no moderation route") + ").", param="model")


def _input(raw: object) -> tuple[str | tuple[str, ...] | tuple[Mapping[str, Any], ...],
                                 list[str], int]:
    """What goes upstream, the texts in it (counted and held for), and how many results
    the answer holds; 400s naming the item that is wrong."""
    if isinstance(raw, str):
        return raw, [raw], 1
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_INPUTS:
        raise BadRequest(f"'input' must be a string, or a list of 1 to {MAX_INPUTS} strings "
                         "or of text and image_url parts.", param="input")
    if isinstance(raw[0], str):  # texts: each a string
        odd = next((index for index, item in enumerate(raw) if not isinstance(item, str)), None)
        if odd is not None:
            raise BadRequest(f"'input[{odd}]' must be a string, as the texts before it are "
                             "(not a mix of strings and parts).", param=f"input[{odd}]")
        return tuple(raw), list(raw), len(raw)
    texts = []
    for index, part in enumerate(raw):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict) \
                and isinstance(part["image_url"].get("url"), str):
            continue
        else:
            raise BadRequest(
                f"'input[{index}]' must be a part {{type: text, text}} or "
                "{type: image_url, image_url: {url}} (not a mix of strings and parts).",
                param=f"input[{index}]")
    return tuple(raw), texts, 1
