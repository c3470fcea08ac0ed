"""Cohere's rerank API (``POST /v2/rerank``); the only operation this adapter speaks.

Request ``{model, query, documents: [str], top_n?, max_tokens_per_doc?}``, with the key as
``Authorization: Bearer``; answer ``{id, results: [{index, relevance_score}], meta:
{billed_units: {search_units}}}``. Cohere bills per search unit (one query over up to 100
documents, a document past the model's chunk counted as more): the answer's count is
billed, or the gateway's when it reports none. Its errors are ``{"message": ...}`` with
the HTTP status saying what (``upstream.failure_from_response`` reads them).

Chat and embeddings deployments on a cohere provider are refused by the compiler
(AGW354), so the refusals it inherits (``Refusals``) are never raised.
"""

from __future__ import annotations

from typing import Any

from aigw.compiler.graph import Provider

from ..tokens import TokenCounter
from ..upstream_aiohttp import JsonUpstream, open_upstream
from .base import (
    Refusals,
    RerankCall,
    RerankResult,
    parse_ranking,
    reported_count,
)
from .raw import RawTarget, api_root

COHERE_BASE_URL = "https://api.cohere.com"


class CohereAdapter(Refusals):
    """Rerank against Cohere's v2 API (or a server that speaks it at ``base_url``); the
    rest refused."""

    def __init__(self, provider: Provider, counter: TokenCounter) -> None:
        self.provider = provider
        self.upstream: JsonUpstream = open_upstream(provider)
        self._root = (provider.base_url or COHERE_BASE_URL).rstrip('/')
        self._url = f"{self._root}/v2/rerank"
        self._headers = {**provider.headers, "authorization": f"Bearer {provider.api_key}"}

    async def rerank(self, call: RerankCall) -> RerankResult:
        body: dict[str, Any] = {"model": call.deployment.model, "query": call.query,
                                "documents": list(call.documents)}
        if call.top_n is not None:
            body["top_n"] = call.top_n
        if call.max_tokens_per_doc is not None:
            body["max_tokens_per_doc"] = call.max_tokens_per_doc
        document = await self.upstream.post_json(self._url, body, self._headers)
        meta = document.get("meta") or {}
        units = reported_count((meta.get("billed_units") or {}).get("search_units"),
                               self.provider, "search units")
        tokens = reported_count((meta.get("tokens") or {}).get("input_tokens"),
                                self.provider, "tokens")
        return RerankResult(
            model=call.deployment.model,
            ranking=parse_ranking(document, call, self.provider),
            prompt_tokens=call.prompt_tokens if tokens is None else tokens,
            search_units=call.search_units if units is None else units,
        )

    def raw_target(self) -> RawTarget:
        """The pass-through seam (providers/raw.py): its key as ``Authorization: Bearer``."""
        return RawTarget(api_root(self._root), self._headers)

    async def aclose(self) -> None:
        await self.upstream.aclose()
