"""Upstream clients keep no cookies: a provider's Set-Cookie is not sent again."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aigw.compiler.graph import Provider
from aigw.runtime.upstream import make_client

from ..fakes.serve import serving


def _cookie_setter() -> Starlette:
    """Answers with the Cookie header it got, and sets a cookie every time."""

    async def answer(request: Request) -> Response:
        response = JSONResponse({"cookie": request.headers.get("cookie")})
        response.set_cookie("__cf_bm", "tenant-a-state", httponly=True)
        return response

    async def ready(_request: Request) -> Response:
        return Response()

    return Starlette(routes=[Route("/v1/answer", answer, methods=["POST"]),
                             Route("/__ready", ready)])


async def test_the_httpx_client_sends_no_cookie_it_was_given() -> None:
    """The client Gemini and Bedrock use (httpx, over aiohttp's transport when installed)."""
    with serving(_cookie_setter()) as url:
        base = url.replace("127.0.0.1", "localhost")  # cookie jars ignore IP hosts
        provider = Provider(name="p", type="gemini", base_url=base, api_version=None,
                            timeout_s=5.0, max_connections=4, headers={}, disabled_reason=None)
        client = make_client(provider)
        try:
            seen = []
            for _ in range(2):
                response = await client.post(f"{base}/v1/answer", json={})
                assert response.status_code == 200
                assert "__cf_bm" in response.headers.get("set-cookie", "")
                seen.append(response.json()["cookie"])
        finally:
            await client.aclose()
    assert seen == [None, None]
    assert not client.cookies
