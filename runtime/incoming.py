"""What a client sends after a request's headers: its body, then (only) its disconnect."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from .errors import GatewayError, PayloadTooLarge


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit}.")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            chunks.append(chunk)
    except ClientDisconnect:
        raise GatewayError("client disconnected while sending the body") from None
    return b"".join(chunks)


async def client_gone(receive: Receive) -> None:
    """Returns once the client has gone: after the body only http.disconnect follows
    (hypercorn sends it when the connection closes; httpx's in-process transport once
    the response is complete)."""
    while (await receive())["type"] != "http.disconnect":
        pass
