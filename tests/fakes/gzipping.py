"""An upstream behind a proxy that gzips whatever it answers, whatever its client asked
for (``Accept-Encoding: identity`` too), as some CDNs and misconfigured proxies do: the
body compressed as it goes (each part flushed, so a stream stays a stream), with
``Content-Encoding: gzip`` and no ``Content-Length``; and one whose front takes gzipped
request bodies (``inflating``)."""

from __future__ import annotations

import zlib

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def gzipping(app: ASGIApp) -> ASGIApp:
    """``app`` with every HTTP answer gzipped."""

    async def squeezing(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)

        async def squeezed(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", [])
                           if name.lower() != b"content-length"]
                message = {**message, "headers": [*headers, (b"content-encoding", b"gzip")]}
            elif message["type"] == "http.response.body":
                more = message.get("more_body", False)
                body = compressor.compress(message.get("body", b"")) + compressor.flush(
                    zlib.Z_SYNC_FLUSH if more else zlib.Z_FINISH)
                message = {**message, "body": body}
            await send(message)

        await app(scope, receive, squeezed)

    return squeezing


def inflating(app: ASGIApp, received: list[bytes]) -> ASGIApp:
    """``app`` behind a front that takes request bodies in gzip (``Content-Encoding:
    gzip``), as Google's does: inflated for ``app``, their bytes as they came appended
    to ``received``."""

    async def inflated(scope: Scope, receive: Receive, send: Send) -> None:
        headers = scope.get("headers", [])
        if scope["type"] != "http" or (b"content-encoding", b"gzip") not in headers:
            await app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        received.append(bytes(body))
        plain = zlib.decompress(bytes(body), 16 + zlib.MAX_WBITS)
        kept = [(name, value) for name, value in headers
                if name not in (b"content-encoding", b"content-length")]
        sent = False

        async def plainly() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": plain, "more_body": False}

        await app({**scope, "headers": [*kept, (b"content-length", str(len(plain)).encode())]},
                  plainly, send)

    return inflated
