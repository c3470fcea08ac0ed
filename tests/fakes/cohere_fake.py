"""A fake of Cohere's rerank API (``POST /v2/rerank``), and the scoring the rerank fakes share.

Requests are checked as Cohere's v2 API checks them: the key as ``Authorization:
Bearer``, ``model``, ``query`` and ``documents`` (strings only in v2) required, no
field v2 does not know (``return_documents`` was v1's), ``top_n`` and
``max_tokens_per_doc`` positive. Errors are Cohere's ``{"id", "message"}`` with the
HTTP status saying what. Answers are v2's: results best first, with no documents, and
``meta.billed_units.search_units`` (a query over up to 100 documents is one).

``relevance`` scores a document by the share of the query's words it holds, and a little
for being short, so that no two documents of a test tie.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .brain import Script

V2_FIELDS = {"model", "query", "documents", "top_n", "max_tokens_per_doc", "priority"}


def relevance(query: str, document: str) -> float:
    """Share of the query's words in the document, less a thousandth a word of it."""
    asked = set(re.findall(r"[a-z0-9']+", query.lower()))
    words = re.findall(r"[a-z0-9']+", document.lower())
    held = len(asked & set(words)) / (len(asked) or 1)
    return round(max(0.0, held - len(words) / 1000), 6)


def ranked(query: str, documents: list[str], top_n: int | None) -> list[tuple[int, float]]:
    """(index, score), best first, at most ``top_n``."""
    scores = sorted(((index, relevance(query, text)) for index, text in enumerate(documents)),
                    key=lambda pair: -pair[1])
    return scores[:top_n] if top_n else scores


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"id": str(uuid.uuid4()), "message": message}, status_code=status)


class CohereFake:
    """The fake's state: its key, its script (failures to answer), what it has seen, and
    how many search units it bills a call (None: Cohere's count)."""

    def __init__(self, api_key: str = "cohere-fake-key-0123456789abcdef") -> None:
        self.api_key = api_key
        self.script = Script()
        self.search_units: int | None = None
        self.app = Starlette(routes=[
            Route("/__ready", self._ready),
            Route("/v2/rerank", self._rerank, methods=["POST"]),
        ])

    async def _ready(self, request: Request) -> Response:
        return Response("ok")

    async def _rerank(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "invalid api token")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "invalid request: could not parse the body")
        self.script.requests.append(body)
        self.script.headers.append(dict(request.headers))
        action = self.script.next()
        if action.delay_s:
            await asyncio.sleep(action.delay_s)
        if action.status != 200:
            return JSONResponse(action.body or {"id": str(uuid.uuid4()),
                                                "message": f"scripted failure {action.status}"},
                                status_code=action.status, headers=action.headers)
        return self._answer(body)

    def _answer(self, body: Any) -> Response:
        if not isinstance(body, dict):
            return _error(400, "invalid request: body must be an object")
        unknown = sorted(set(body) - V2_FIELDS)
        if unknown:
            return _error(400, f"invalid request: unknown field: parameter {unknown[0]} is "
                          "not a valid field")
        query, documents = body.get("query"), body.get("documents")
        if not isinstance(body.get("model"), str) or not isinstance(query, str) or not query:
            return _error(400, "invalid request: model and query are required")
        if not isinstance(documents, list) or not documents \
                or not all(isinstance(text, str) for text in documents):
            return _error(400, "invalid request: documents must be a non-empty list of strings")
        for field in ("top_n", "max_tokens_per_doc"):
            value = body.get(field)
            if value is not None and (not isinstance(value, int) or value < 1):
                return _error(400, f"invalid request: {field} must be a positive integer")
        units = self.search_units if self.search_units is not None \
            else -(-len(documents) // 100)
        return JSONResponse({
            "id": str(uuid.uuid4()),
            "results": [{"index": index, "relevance_score": score}
                        for index, score in ranked(query, documents, body.get("top_n"))],
            "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": units}},
        })
