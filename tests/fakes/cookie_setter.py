"""A loopback server that sets a cookie on every answer and echoes the Cookie it got:
does a client keep one caller's cookies and send them with another caller's requests?"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def cookie_setter(value: str = "tenant-a-state") -> Starlette:
    """Any method on any path answers ``{"cookie": <the Cookie header, or null>}`` and sets
    ``__cf_bm`` (as OpenAI's Cloudflare does) to ``?tenant=`` when given, else ``value``."""

    async def answer(request: Request) -> Response:
        response = JSONResponse({"cookie": request.headers.get("cookie")})
        response.set_cookie("__cf_bm", request.query_params.get("tenant", value),
                            httponly=True)
        return response

    async def ready(_request: Request) -> Response:
        return Response()

    return Starlette(routes=[
        Route("/__ready", ready),
        Route("/{path:path}", answer, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ])
