"""POST /v1/rerank: documents ranked by relevance to a query, over the providers that rank.

``POST /v2/rerank`` is the same endpoint, at the path Cohere's own SDK (``ClientV2``)
posts to, so that a Cohere client pointed at the gateway works unchanged.

Request, as Cohere's and Jina's rerank take it: ``{model, query, documents: [str |
{text}], top_n?, return_documents?, max_tokens_per_doc?}``. Answer, Cohere's v2 shape
with Jina's ``usage`` beside it, so either kind of client reads it::

    {"id": ..., "model": ..., "results": [{"index": 2, "relevance_score": 0.91,
     "document": {"text": ...}}, ...],             # document: with return_documents
     "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}},
     "usage": {"total_tokens": 310}}

The call goes through the stages of runtime/route_call.py, as an embeddings call does
(key, Cedar, limits and budget, the attempt loop, billing, ledger, access log, metrics,
tracing). It is held and billed for the query paired with each document (what a
cross-encoder reads, and what vLLM and Jina count), and for its search units (Cohere's
billing unit: a query over up to 100 documents) where a deployment prices them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError
from starlette.responses import JSONResponse, Response

from aigw.compiler.graph import ApiKey

from .chat import resolve_route
from .chat_request import bad_request
from .errors import BadRequest
from .providers.base import DOCUMENTS_PER_SEARCH_UNIT, RerankCall, RerankResult, Usage
from .route_call import Weighed, answer_headers, call_route
from .routing.candidates import Candidate, RerankAsk
from .telemetry.tracing import Span

if TYPE_CHECKING:
    from .exchange import Exchange

# The most documents one request may rank: Cohere's own cap, and a bound on the tokens
# one request makes the gateway count.
MAX_DOCUMENTS = 1000


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Annotated[str, Field(min_length=1)]
    query: Annotated[str, Field(min_length=1)]
    documents: list[Any]  # str or {"text": str}: checked by _texts, naming the index
    top_n: StrictInt | None = None
    return_documents: StrictBool = False
    max_tokens_per_doc: Annotated[StrictInt, Field(ge=1)] | None = None
    user: str | None = None


async def rerank(exchange: Exchange, key: ApiKey, body: bytes) -> Response:
    """Counted against the key's (its team's, the end user's) rpm, tpm and budget, and
    written to the spend ledger, as an embeddings call is."""
    try:
        request = RerankRequest.model_validate_json(body)
    except ValidationError as exc:
        raise bad_request(exc) from exc
    exchange.identify(key, request.user)
    documents = _texts(request)
    route = resolve_route(exchange.live.graph, request.model)
    live = exchange.live
    cap = request.max_tokens_per_doc
    units = -(-len(documents) // DOCUMENTS_PER_SEARCH_UNIT)

    def weigh(texts: tuple[str, ...]) -> Weighed:
        # The query is read with each document (a cross-encoder's pairs); a document past
        # max_tokens_per_doc is cut to it upstream. The query must fit a member's window.
        query = live.counter.count(texts[0])
        tokens = sum(query + min(live.counter.count(text), cap or 1 << 62)
                     for text in texts[1:])
        return Weighed(tokens, RerankAsk(live.adapters, tokens, query, units),
                       Usage(tokens, 0, search_units=units))

    weighed = weigh((request.query, *documents))
    prompt_tokens = weighed.prompt_tokens

    def call(candidate: Candidate, texts: tuple[str, ...], tokens: int) -> Callable[
            [], Awaitable[RerankResult]]:
        # The query and documents as the route's input guardrails left them (the answer
        # returns the client's own documents, by index).
        ranking = RerankCall(candidate.deployment, texts[0], texts[1:], request.top_n,
                             cap, tokens)
        return partial(candidate.adapter.rerank, ranking)

    won = await call_route(
        exchange, key, route, kind="rerank", model=request.model, prompt_tokens=prompt_tokens,
        ask=weighed.ask,
        cost=lambda deployment, sent: deployment.price.cost(sent.prompt_tokens, 0,
                                                      search_units=units),
        call=call, noted=_noted, cut=weighed.cut, texts=(request.query, *documents),
        weigh=weigh)
    return JSONResponse(
        _body(exchange.record.request_id, won.value, documents, request.return_documents),
        headers=answer_headers(exchange, route, won))


def _noted(span: Span, result: RerankResult) -> None:
    span.set("gen_ai.response.model", result.model)
    span.set("gen_ai.usage.input_tokens", result.prompt_tokens)


def _texts(request: RerankRequest) -> tuple[str, ...]:
    """The documents' texts; 400s naming what is wrong (none, too many, a document that
    is not text, ``top_n`` past them)."""
    raw = request.documents
    if not 1 <= len(raw) <= MAX_DOCUMENTS:
        raise BadRequest(f"'documents' must hold 1 to {MAX_DOCUMENTS} documents; it holds "
                         f"{len(raw)}.", param="documents")
    texts = []
    for index, document in enumerate(raw):
        text = document.get("text") if isinstance(document, dict) else document
        if not isinstance(text, str):
            raise BadRequest(f"'documents[{index}]' must be a string or an object with a "
                             "'text' string.", param=f"documents[{index}]")
        texts.append(text)
    if request.top_n is not None and not 1 <= request.top_n <= len(texts):
        raise BadRequest(f"'top_n' must be 1 to the number of documents ({len(texts)}); it "
                         f"is {request.top_n}.", param="top_n")
    return tuple(texts)


def _body(request_id: str, result: RerankResult, documents: tuple[str, ...],
          return_documents: bool) -> dict[str, object]:
    results: list[dict[str, object]] = []
    for index, score in result.ranking:
        row: dict[str, object] = {"index": index, "relevance_score": score}
        if return_documents:
            row["document"] = {"text": documents[index]}
        results.append(row)
    return {
        "id": request_id.removeprefix("chatcmpl-"),
        "model": result.model,
        "results": results,
        "meta": {"api_version": {"version": "2"},
                 "billed_units": {"search_units": result.search_units}},
        "usage": {"total_tokens": result.prompt_tokens},
    }
