"""A provider's id of each request, on its answer, as the real APIs send one: OpenAI's
``x-request-id: req_<32 hex>`` and Anthropic's ``request-id: req_<24 base62>`` (what a
support ticket to the provider quotes). Every answer has one, an error's too; ``given``
keeps them in order, so that a test can tell which answer the gateway passed on."""

from __future__ import annotations

import os

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestIds:
    """ASGI middleware (``Middleware(RequestIds, header=..., given=...)``) stamping
    ``header`` on every HTTP answer with a new id, appended to ``given``."""

    def __init__(self, app: ASGIApp, header: str, given: list[str]) -> None:
        self.app = app
        self.header = header.encode()
        self.given = given

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/__ready":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{os.urandom(12).hex()}"

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.given.append(request_id)
                message = {**message, "headers": [*message.get("headers", []),
                                                  (self.header, request_id.encode())]}
            await send(message)

        await self.app(scope, receive, stamped)
