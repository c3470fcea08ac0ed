"""A tool server for pipelines' http steps that counts the calls it gets, one path each:
how many times did a step's side effect happen? The first call to a ``/hold/`` path is
kept waiting until the test lets it go: a step is reliably in flight when its gateway
is killed."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


class SideEffects:
    """What the server saw (``calls``, by path) and the hold on its first held call."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.holding = threading.Event()  # a held call is in
        self.released = threading.Event()  # set by the test: the held call answers
        self._lock = threading.Lock()

    def app(self) -> Starlette:
        async def effect(request: Request) -> Response:
            path = request.url.path
            with self._lock:
                self.calls[path] += 1
                first = self.calls[path] == 1
            if path.startswith("/hold/") and first:
                self.holding.set()
                await asyncio.to_thread(self.released.wait, 60)
            return JSONResponse({"done": path})

        async def ready(_request: Request) -> Response:
            return Response()

        return Starlette(routes=[Route("/__ready", ready),
                                 Route("/{path:path}", effect, methods=["POST"])])
