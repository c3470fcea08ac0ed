"""An upstream behind a proxy that gzips whatever it answers, whatever its client asked
for (``Accept-Encoding: identity`` too), as some CDNs and misconfigured proxies do: the
body compressed as it goes (each part flushed, so a stream stays a stream), with
``Content-Encoding: gzip`` and no ``Content-Length``."""

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
