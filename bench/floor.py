"""The floor of aigw's stack: Starlette on hypercorn passing requests through, nothing else.

Run: python bench/floor.py --upstream http://127.0.0.1:9100 --client aiohttp [--port 9400]

No auth, routing or parsing: the body goes to ``UPSTREAM/v1/chat/completions`` as it
came and the answer comes back as it went. Served exactly as ``aigw serve`` serves
(hypercorn's asyncio worker on uvloop, no access log), so what aigw reaches above this
is the cost of its own logic, and the three ``--client`` choices show what the
upstream client alone costs.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Protocol

import aiohttp
import httpx
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CLIENTS = ("httpx", "httpx-aiohttp", "aiohttp")
POOL = 100  # the same pool size as an aigw provider's default max_connections


class Forwarder(Protocol):
    """POST a JSON body upstream; the status and the body that came back."""

    async def post(self, body: bytes) -> tuple[int, bytes]: ...

    async def aclose(self) -> None: ...


class HttpxForwarder:
    def __init__(self, url: str, transport: httpx.AsyncBaseTransport | None) -> None:
        limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
        self.url = url
        self.client = httpx.AsyncClient(
            transport=transport, limits=limits, timeout=httpx.Timeout(60.0)
        )

    async def post(self, body: bytes) -> tuple[int, bytes]:
        response = await self.client.post(
            self.url, content=body, headers={"content-type": "application/json"}
        )
        return response.status_code, response.content

    async def aclose(self) -> None:
        await self.client.aclose()


class AiohttpForwarder:
    def __init__(self, url: str) -> None:
        self.url = url
        # Built lazily: an aiohttp session must be created inside the running loop.
        self.session: aiohttp.ClientSession | None = None

    async def post(self, body: bytes) -> tuple[int, bytes]:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=POOL),
                timeout=aiohttp.ClientTimeout(total=60.0),
            )
        async with self.session.post(
            self.url, data=body, headers={"content-type": "application/json"}
        ) as response:
            return response.status, await response.read()

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()


def make_forwarder(client: str, url: str) -> Forwarder:
    if client == "httpx":
        return HttpxForwarder(url, None)
    if client == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        limits = httpx.Limits(max_connections=POOL, max_keepalive_connections=POOL)
        return HttpxForwarder(url, AiohttpTransport(limits=limits))
    return AiohttpForwarder(url)


def create_app(forwarder: Forwarder) -> Starlette:
    async def chat(request: Request) -> Response:
        status, content = await forwarder.post(await request.body())
        return Response(content, status_code=status, media_type="application/json")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ]
    )


async def main_async(host: str, port: int, forwarder: Forwarder) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.keep_alive_timeout = 75.0
    config.include_server_header = False  # as aigw serve (runtime/server.py)
    try:
        # Starlette's ASGI types and hypercorn's differ in name only (aigw ignores it too).
        await serve(create_app(forwarder), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
    finally:
        await forwarder.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9100")
    parser.add_argument("--client", choices=CLIENTS, default="httpx")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9400)
    args = parser.parse_args()
    forwarder = make_forwarder(args.client, args.upstream.rstrip("/") + "/v1/chat/completions")
    try:
        import uvloop
    except ImportError:  # aigw itself falls back the same way
        asyncio.run(main_async(args.host, args.port, forwarder))
    else:
        uvloop.run(main_async(args.host, args.port, forwarder))


if __name__ == "__main__":
    main()
