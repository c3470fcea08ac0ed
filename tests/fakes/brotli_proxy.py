"""An upstream behind a proxy that answers in brotli (``Content-Encoding: br``) whatever
its client asked for (``Accept-Encoding: identity`` too), as a CDN set to compress may:
each part of the body a stored meta-block (RFC 7932, 9.2: its bytes uncompressed), so a
stream stays a stream and no brotli encoder is needed; a brotli decoder reads it as any
other brotli stream. No ``Content-Length``."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The stream's header: a window of 16 bits (WBITS: one bit, 0).
_WINDOW_16 = 0
# The last meta-block, empty (ISLAST 1, ISLASTEMPTY 1): after a stored one, and as a
# stream's only one (after its header's bit).
_LAST = b"\x03"
_ONLY = b"\x06"
# The most a stored meta-block holds with four nibbles of MLEN - 1.
_MOST_STORED = 1 << 16


def stored(data: bytes, first: bool) -> bytes:
    """``data`` as stored meta-blocks; ``first``: the stream's first, after its header.

    >>> stored(b"hi", first=True).hex()
    '1000106869'
    """
    out = bytearray()
    for start in range(0, len(data), _MOST_STORED):
        part = data[start:start + _MOST_STORED]
        # Bits from the least significant: ISLAST 0, MNIBBLES 0 (four), MLEN - 1 in 16
        # bits, ISUNCOMPRESSED 1; then zeros to the byte's end, then the bytes.
        bits, width = 0, 0
        if first and start == 0:
            bits, width = _WINDOW_16, 1
        bits |= (len(part) - 1) << (width + 3)
        bits |= 1 << (width + 19)
        out += bits.to_bytes(3, "little") + part
    return bytes(out)


def brotli_proxy(app: ASGIApp) -> ASGIApp:
    """``app`` with every HTTP answer in brotli."""

    async def proxied(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        first = True

        async def encoded(message: Message) -> None:
            nonlocal first
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", [])
                           if name.lower() != b"content-length"]
                message = {**message, "headers": [*headers, (b"content-encoding", b"br")]}
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                data = stored(body, first) if body else b""
                if body:
                    first = False
                if not message.get("more_body", False):
                    data += _ONLY if first else _LAST
                message = {**message, "body": data}
            await send(message)

        await app(scope, receive, encoded)

    return proxied
