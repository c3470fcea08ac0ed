"""A webhook guardrail checker (as Presidio, Lakera or an in-house service would sit
behind one): POST /check takes {text, direction, route, key, team} and answers
{allow, reason?, text?}.

What it answers is read from the text, so a test picks the verdict by what it sends:
``deny`` -> not allowed; ``redact-me`` -> allowed, with it replaced by ``[CHECKED]``;
``hang`` -> no answer for 5 s; ``slow`` -> an allow after 0.2 s; ``drip`` -> an allow
sent a byte every 0.2 s (each read is quick, the whole answer slow); ``crash`` -> a 500;
``garble`` -> an answer that is not JSON; ``one-line`` -> allowed, its lines joined
into one (a checker that does not keep them; ``redact-me`` replaced too); anything else
-> allowed as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


class GuardChecker:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []  # every body it was sent, in order
        self.headers: list[dict[str, str]] = []
        self.checking = 0  # checks being answered now
        self.most_at_once = 0  # the most checks it answered at once
        self.app = Starlette(routes=[
            Route("/__ready", self._ready),
            Route("/check", self._check, methods=["POST"]),
        ])

    async def _ready(self, request: Request) -> Response:
        return Response("ok")

    async def _check(self, request: Request) -> Response:
        body = await request.json()
        self.seen.append(body)
        self.headers.append(dict(request.headers))
        text = body["text"]
        if "hang" in text:
            await asyncio.sleep(5)
        if "slow" in text:
            self.checking += 1
            self.most_at_once = max(self.most_at_once, self.checking)
            try:
                await asyncio.sleep(0.2)
            finally:
                self.checking -= 1
        if "drip" in text:
            return StreamingResponse(_drip(b'{"allow": true}' + b" " * 40),
                                     media_type="application/json")
        if "crash" in text:
            return JSONResponse({"error": "checker failed"}, status_code=500)
        if "garble" in text:
            return Response("<html>not json</html>", media_type="text/html")
        if "deny" in text:
            return JSONResponse({"allow": False, "reason": "denied by policy"})
        if "one-line" in text and "\n" in text:
            text = text.replace("\n", " ")
            return JSONResponse({"allow": True, "text": text.replace("redact-me", "[CHECKED]")})
        if "redact-me" in text:
            return JSONResponse({"allow": True, "text": text.replace("redact-me", "[CHECKED]")})
        return JSONResponse({"allow": True})


async def _drip(answer: bytes) -> AsyncIterator[bytes]:
    for byte in answer:
        yield bytes([byte])
        await asyncio.sleep(0.2)
