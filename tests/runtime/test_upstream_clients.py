"""The upstream clients' hygiene: a provider's Set-Cookie is not sent again (later
requests are other tenants'), and a redirect is not followed (the key would go too)."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from aigw.compiler.graph import Provider
from aigw.runtime.errors import UpstreamConnectionError, UpstreamError, UpstreamServerError
from aigw.runtime.upstream import make_client
from aigw.runtime.upstream_aiohttp import AiohttpUpstream

from ..fakes.cookie_setter import cookie_setter
from ..fakes.serve import free_port, serving


def _provider(base: str) -> Provider:
    return Provider(name="p", type="anthropic", base_url=base, api_version=None,
                    timeout_s=5.0, max_connections=4, headers={}, disabled_reason=None,
                    api_key="sk-ant-secret-0123456789")


async def test_the_httpx_client_sends_no_cookie_it_was_given() -> None:
    """The client Gemini and Bedrock use (httpx, over aiohttp's transport when installed)."""
    with serving(cookie_setter()) as url:
        base = url.replace("127.0.0.1", "localhost")  # cookie jars ignore IP hosts
        client = make_client(_provider(base))
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


@pytest.mark.parametrize("stream", [False, True], ids=["json", "events"])
async def test_a_redirect_is_not_followed_with_the_providers_key(
    stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp follows redirects by default and, leaving the origin, drops only the
    Authorization header: Anthropic's x-api-key (Azure's api-key) would go along."""
    seen: list[dict[str, str]] = []

    async def elsewhere(request: Request) -> Response:
        seen.append(dict(request.headers))
        return JSONResponse({"id": "x"})

    async def ready(_request: Request) -> Response:
        return Response()

    other = Starlette(routes=[Route("/v1/messages", elsewhere, methods=["POST"]),
                              Route("/__ready", ready)])
    with serving(other) as target:

        async def moved(_request: Request) -> Response:
            return Response(status_code=307, headers={
                "location": f"{target}/v1/messages?echo=sk-ant-secret-0123456789"})

        provider_app = Starlette(routes=[Route("/v1/messages", moved, methods=["POST"]),
                                         Route("/__ready", ready)])
        with serving(provider_app) as base:
            upstream = AiohttpUpstream(_provider(base))
            headers = {"x-api-key": "sk-ant-secret-0123456789"}
            try:
                with pytest.raises(UpstreamServerError, match="redirect"):
                    if stream:
                        async for _event in upstream.post_sse(f"{base}/v1/messages", {},
                                                              headers):
                            pass
                    else:
                        await upstream.post_json(f"{base}/v1/messages", {}, headers)
            finally:
                await upstream.aclose()
    assert seen == []
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "redirected a request" in logged and "sk-ant-secret" not in logged


@pytest.mark.parametrize("client", ["aiohttp", "httpx"])
async def test_calls_go_through_the_proxy_the_environment_names(
    client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP(S)_PROXY apply to every provider's calls, whichever client makes them (the
    JSON upstream: OpenAI, Anthropic, Azure, vLLM; httpx: Gemini, Bedrock, Vertex): a
    gateway behind a corporate proxy reaches its providers only through it. NO_PROXY
    spares the hosts it lists."""
    through: list[str] = []

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        through.append(scope["path"])  # the absolute URL a proxy is asked for
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"id": "via-proxy"}'})

    nowhere = f"http://localhost:{free_port()}"  # nothing listens: only the proxy answers
    with serving(proxy) as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        for name in ("NO_PROXY", "no_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        assert await _post(client, nowhere) == {"id": "via-proxy"}
        monkeypatch.setenv("NO_PROXY", "localhost")
        with pytest.raises((UpstreamConnectionError, httpx.TransportError)):  # to nowhere
            await _post(client, nowhere)
    assert [path for path in through if "/v1/messages" in path] == [f"{nowhere}/v1/messages"]


async def test_a_realtime_websocket_goes_through_the_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ws:// (wss://) URL is proxied as http:// (https://) is: HTTP_PROXY (HTTPS_PROXY)
    names its proxy too, and a Realtime session reaches its provider through it."""
    through: list[str] = []

    async def proxy(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        through.append(scope["path"])
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    nowhere = f"ws://localhost:{free_port()}"
    with serving(proxy) as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        for name in ("NO_PROXY", "no_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        upstream = AiohttpUpstream(_provider(nowhere))
        try:
            with pytest.raises(UpstreamError) as refused:  # the proxy's 404, not nowhere's
                await upstream.ws_connect(f"{nowhere}/v1/realtime?model=m", {})
        finally:
            await upstream.aclose()
    assert not isinstance(refused.value, UpstreamConnectionError)
    assert any(path.endswith("/v1/realtime") for path in through)


async def _post(client: str, base: str) -> object:
    """POST {} to ``base``/v1/messages with a fresh client of the kind named."""
    if client == "aiohttp":
        upstream = AiohttpUpstream(_provider(base))
        try:
            return await upstream.post_json(f"{base}/v1/messages", {}, {})
        finally:
            await upstream.aclose()
    http = make_client(_provider(base))
    try:
        return (await http.post(f"{base}/v1/messages", json={})).json()
    finally:
        await http.aclose()
