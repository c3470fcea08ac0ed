"""An upstream that answers what the test tells it to, as written: for answers no
provider fake would give (wrong shapes, broken headers, streams that stop short).

``Scripted.now(body, status, headers)`` sets the answer every request gets from then
on (retries included): a JSON document (dumped), raw bytes, or a list of server-sent
event payloads (each sent as ``data: <payload>``; strings as they are, others dumped),
the stream held open after them with ``held=True`` (an upstream that stalls, until the
gateway goes).
Any POST path answers; GET /__ready is for ``serving``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .serve import serving


@dataclass
class Answer:
    body: object  # JSON (dumped), bytes, or a list of SSE data payloads (a stream)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    held: bool = False  # a stream: kept open after its events, until the reader goes


@dataclass
class Scripted:
    base_url: str = ""
    answer: Answer | None = None
    calls: int = 0

    def now(self, body: object, status: int = 200, headers: dict[str, str] | None = None,
            held: bool = False) -> None:
        self.answer = Answer(body, status, headers or {}, held)


def _app(scripted: Scripted) -> Starlette:
    async def answer(request: Request) -> Response:
        await request.body()
        scripted.calls += 1
        given = scripted.answer
        assert given is not None, "the test set no answer"
        if isinstance(given.body, list):  # server-sent events, each payload as written
            events = given.body

            async def stream() -> AsyncIterator[bytes]:
                for data in events:
                    text = data if isinstance(data, str) else json.dumps(data)
                    yield f"data: {text}\n\n".encode()
                if given.held:  # cancelled when the gateway closes the connection
                    await anyio.sleep(60)

            return StreamingResponse(stream(), status_code=given.status, headers=given.headers,
                                     media_type="text/event-stream")
        raw = given.body if isinstance(given.body, bytes) else json.dumps(given.body).encode()
        return Response(raw, status_code=given.status, headers=given.headers,
                        media_type="application/json")

    async def ready(_request: Request) -> Response:
        return Response()

    return Starlette(routes=[Route("/__ready", ready),
                             Route("/{path:path}", answer, methods=["POST"])])


@contextmanager
def scripted_upstream() -> Iterator[Scripted]:
    state = Scripted()
    with serving(_app(state)) as url:
        state.base_url = url
        yield state
