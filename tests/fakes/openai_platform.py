"""A fake of the parts of OpenAI's API the gateway does not model, for pass-through:
vector stores (create, retrieve, list, delete: ``/v1/vector_stores``) and files (a
multipart upload at ``/v1/files``, its bytes back from ``/v1/files/{id}/content``),
in the shapes of OpenAI's API reference.

Every request must carry ``Authorization: Bearer <api_key>``; another is OpenAI's 401
``invalid_api_key``. Each request's headers are kept (``seen``), so a test can tell
what reached the upstream. A vector store named ``echo-key`` is refused with a 400
that quotes the key it was sent, as some providers' errors quote a credential. The
content of file ``file-held`` is its first part, then the rest only once ``release`` is
set: a test can tell that the first part reached it before the upstream had sent all.
That of ``file-cut`` promises 1 MiB (its content-length) and drops the connection after
its first part. A response made earlier (``responses``: id -> its object, usage and
all) is retrieved at ``GET /v1/responses/{id}``, as OpenAI keeps them.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .request_ids import RequestIds


def _error(status: int, message: str, kind: str, code: str | None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None,
                                   "code": code}}, status_code=status)


class OpenAIPlatformFake:
    def __init__(self, api_key: str = "sk-fake-platform-key-0123456789") -> None:
        self.api_key = api_key
        self.seen: list[dict[str, str]] = []  # each request's headers, lowercased names
        self.stores: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self.release = threading.Event()  # file-held's rest may come
        self.responses: dict[str, dict[str, Any]] = {}
        self.request_ids: list[str] = []  # the ids its answers gave, in order
        self.app = Starlette(routes=[
            Route("/__ready", self._ready),
            Route("/v1/vector_stores", self._stores, methods=["GET", "POST"]),
            Route("/v1/vector_stores/{store_id}", self._store, methods=["GET", "DELETE"]),
            Route("/v1/files", self._upload, methods=["POST"]),
            Route("/v1/files/{file_id}/content", self._content, methods=["GET"]),
            Route("/v1/responses/{response_id}", self._response, methods=["GET"]),
        ], middleware=[Middleware(RequestIds, header="x-request-id", given=self.request_ids)])

    async def _ready(self, request: Request) -> Response:
        return Response("ok")

    def _refused(self, request: Request) -> JSONResponse | None:
        self.seen.append({name.lower(): value for name, value in request.headers.items()})
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided.", "invalid_request_error",
                          "invalid_api_key")
        return None

    async def _stores(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        if request.method == "GET":
            data = sorted(self.stores.values(), key=lambda store: store["created_at"],
                          reverse=True)
            return JSONResponse({"object": "list", "data": data,
                                 "first_id": data[0]["id"] if data else None,
                                 "last_id": data[-1]["id"] if data else None,
                                 "has_more": False})
        body = await request.json()
        name = body.get("name")
        if name == "echo-key":
            return _error(400, f"Vector store name refused for key "
                          f"{request.headers.get('authorization', '')}",
                          "invalid_request_error", None)
        store_id = "vs_" + hashlib.sha256(f"{name}{len(self.stores)}".encode()).hexdigest()[:24]
        store = {"id": store_id, "object": "vector_store", "created_at": int(time.time()),
                 "name": name, "usage_bytes": 0, "status": "completed",
                 "file_counts": {"in_progress": 0, "completed": 0, "failed": 0,
                                 "cancelled": 0, "total": 0},
                 "last_active_at": int(time.time()), "metadata": body.get("metadata") or {},
                 "expires_after": None, "expires_at": None}
        self.stores[store_id] = store
        return JSONResponse(store)

    async def _store(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        store_id = request.path_params["store_id"]
        if store_id not in self.stores:
            return _error(404, f"No vector store found with id '{store_id}'.",
                          "invalid_request_error", None)
        if request.method == "DELETE":
            del self.stores[store_id]
            return JSONResponse({"id": store_id, "object": "vector_store.deleted",
                                 "deleted": True})
        return JSONResponse(self.stores[store_id])

    async def _response(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        response_id = request.path_params["response_id"]
        if response_id not in self.responses:
            return _error(404, f"Response with id '{response_id}' not found.",
                          "invalid_request_error", None)
        return JSONResponse(self.responses[response_id])

    async def _upload(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        async with request.form(max_part_size=1 << 30) as form:
            upload = form.get("file")
            purpose = form.get("purpose")
            if not isinstance(upload, UploadFile) or not isinstance(purpose, str):
                return _error(400, "file and purpose are required", "invalid_request_error",
                              None)
            data = await upload.read()
            filename = upload.filename or "upload"
        file_id = "file-" + hashlib.sha256(data).hexdigest()[:24]
        self.files[file_id] = data
        return JSONResponse({"id": file_id, "object": "file", "bytes": len(data),
                             "created_at": int(time.time()), "filename": filename,
                             "purpose": purpose, "status": "processed",
                             "status_details": None})

    async def _content(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        if request.path_params["file_id"] == "file-held":
            return StreamingResponse(self._held(), media_type="application/octet-stream")
        if request.path_params["file_id"] == "file-cut":
            return StreamingResponse(_cut(), media_type="application/octet-stream",
                                     headers={"content-length": str(1 << 20)})
        data = self.files.get(request.path_params["file_id"])
        if data is None:
            return _error(404, "No such File object", "invalid_request_error", None)

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(data), 64 << 10):
                yield data[start:start + (64 << 10)]

        return StreamingResponse(pieces(), media_type="application/octet-stream",
                                 headers={"content-length": str(len(data))})

    async def _held(self) -> AsyncIterator[bytes]:
        yield b"first part;"
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        yield b"the rest"


async def _cut() -> AsyncIterator[bytes]:
    yield b"the start of it"
    raise ConnectionResetError("the fake drops the connection")
