"""The HTTP side of /v1/files and /v1/batches: OpenAI's shapes, the caller's own only."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from aigw.compiler.graph import ApiKey

from ..auth import authenticate
from ..conversations import Metadata
from ..errors import (
    BadRequest,
    Conflict,
    GatewayError,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    quoted,
)
from ..identity import token_caller
from ..incoming import read_body
from ..live import Live
from ..multipart import FormWords, MultipartForm
from ..paging import page_limit, page_order, whole_number
from ..policy_request import request_tags
from ..responses_wire import bad_request_from
from ..store.batches import BatchRow, BatchStore, FileRow
from ..telemetry.access import called_by
from .input import Checked, check_file
from .runner import BatchRunner, owner_of

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                   "/v1/responses")
COMPLETION_WINDOW_S = 86_400
_FORM_SLACK = 64 << 10  # of a multipart upload, beside the file: its boundaries and fields
_FORM = FormWords(file="the upload", cut_short="The upload was cut short: its multipart body "
                  "ends before its closing boundary ('{closing}').")
# An upload's fields beside the file (OpenAI's takes three), and the most bytes of one.
_MOST_FIELDS = 8
_FIELD_MOST = 64 << 10
_PURPOSES = ("batch",)
# OpenAI's range for a file's expires_after and a batch's output_expires_after
EXPIRES_AFTER_S = (3600, 30 * 86_400)


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: Annotated[int, Field(ge=EXPIRES_AFTER_S[0], le=EXPIRES_AFTER_S[1])]


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                      "/v1/responses"]
    completion_window: Literal["24h"]
    metadata: Metadata | None = None
    output_expires_after: ExpiresAfter | None = None


def batch_routes(runner: BatchRunner) -> list[Route]:
    api = _Api(runner)
    return [
        Route("/v1/files", api.files, methods=["GET", "POST"]),
        Route("/v1/files/{file_id}", api.file, methods=["GET", "DELETE"]),
        Route("/v1/files/{file_id}/content", api.content, methods=["GET"]),
        Route("/v1/batches", api.batches, methods=["GET", "POST"]),
        Route("/v1/batches/{batch_id}", api.batch, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", api.cancel, methods=["POST"]),
    ]


def _live(request: Request) -> Live:
    live: Live = request.scope["state"]["live"]
    return live


def _owner(key: ApiKey) -> str:
    return owner_of(key.team.name if key.team else None, key.name)


def _page(objects: list[dict[str, Any]], limit: int) -> JSONResponse:
    shown = objects[:limit]
    return JSONResponse({"object": "list", "data": shown,
                         "first_id": shown[0]["id"] if shown else None,
                         "last_id": shown[-1]["id"] if shown else None,
                         "has_more": len(objects) > limit})


def _expires_after(anchor: object, seconds: object) -> int | None:
    """An upload's ``expires_after[anchor]`` and ``[seconds]`` form fields (as the SDKs
    send the object): the seconds it is kept, None when not given (kept until deleted)."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise BadRequest(f"expires_after.anchor must be 'created_at'; got {quoted(anchor)}.",
                         param="expires_after.anchor")
    low, high = EXPIRES_AFTER_S
    whole = whole_number(seconds) if isinstance(seconds, str) else None
    if whole is None or not low <= whole <= high:
        raise BadRequest(f"expires_after.seconds must be a whole number from {low} to "
                         f"{high}; got {quoted(seconds)}.", param="expires_after.seconds")
    return whole


def batch_doc(endpoint: str, input_file_id: str, checked: Checked,
              metadata: dict[str, str] | None, now: int,
              output_expires_s: int | None = None, *, retention_s: int,
              max_line_bytes: int) -> dict[str, Any]:
    """A new batch's object (``request_counts`` aside: the store counts its lines):
    ``in_progress``, or ``failed`` with the input's line errors. ``output_expires_s``:
    how long its output and error files are kept (None: ``retention_s``, the setting
    batch_output_retention_s); a failed batch's record is kept as long.
    ``max_line_bytes``: the max_request_bytes its lines were checked against, which a
    resume reads them with (a reload that lowers the setting must not drop a line that
    was accepted)."""
    doc: dict[str, Any] = {
        "id": f"batch_{secrets.token_hex(12)}", "object": "batch", "endpoint": endpoint,
        "errors": None, "input_file_id": input_file_id, "completion_window": "24h",
        "status": "in_progress", "output_file_id": None, "error_file_id": None,
        "created_at": now, "in_progress_at": now, "expires_at": now + COMPLETION_WINDOW_S,
        "finalizing_at": None, "completed_at": None, "failed_at": None, "expired_at": None,
        "cancelling_at": None, "cancelled_at": None, "metadata": metadata,
        "total": checked.total, "output_expires_s": output_expires_s,
        "max_line_bytes": max_line_bytes}
    if checked.errors:
        doc.update({"status": "failed", "failed_at": now, "in_progress_at": None, "total": 0,
                    "errors": {"object": "list", "data": list(checked.errors)},
                    "forget_at": now + (output_expires_s or retention_s)})
    return doc


class _Api:
    def __init__(self, runner: BatchRunner) -> None:
        self.runner = runner

    async def _caller(self, request: Request) -> tuple[Live, ApiKey, BatchStore]:
        live = _live(request)
        key = called_by(request.scope, await authenticate(live, request.headers))
        store = await live.store.batches()
        assert store is not None  # made when asked for
        return live, key, store

    async def _file(self, store: BatchStore, key: ApiKey, file_id: str,
                    param: str = "file_id") -> FileRow:
        row = await store.file(file_id)
        if row is None or (row.owner != _owner(key) and not key.admin) \
                or row.expired(time.time()):  # gone, though not purged yet
            raise NotFound(f"No such File object: {file_id}", param=param)
        return row

    async def files(self, request: Request) -> Response:
        live, key, store = await self._caller(request)
        if request.method == "POST":
            return await self._upload(request, live, key, store)
        limit = page_limit(request.query_params.get("limit"), 10_000, 10_000)
        order = page_order(request.query_params.get("order"))
        rows = await store.files(None if key.admin else _owner(key),
                                 request.query_params.get("purpose"),
                                 request.query_params.get("after"), limit, order == "desc",
                                 time.time())
        return _page([row.as_object() for row in rows], limit)

    async def _upload(self, request: Request, live: Live, key: ApiKey,
                      store: BatchStore) -> Response:
        most = live.graph.settings.files_max_bytes
        length = whole_number(request.headers.get("content-length", ""))
        # Checked up front (a declared size over the cap is refused before a byte is
        # read); a body longer than it says is cut at the cap as it arrives (MultipartForm).
        if length is None:
            raise BadRequest("An upload needs a Content-Length header (the SDKs send one).")
        if length > most + _FORM_SLACK:
            raise PayloadTooLarge(f"The file is over this gateway's files_max_bytes ({most}).")
        content_type = request.headers.get("content-type", "")
        # A media type is case-insensitive (RFC 9110).
        if not content_type.lower().startswith("multipart/form-data"):
            raise BadRequest("Upload a file as multipart/form-data, with 'file' and "
                             "'purpose' fields.")
        # Its file is written to files_dir as it arrives, once (Starlette's form parser
        # spooled it first, then it was copied); its fields are checked once the
        # whole form has (wherever they were in it), before the file is renamed into place,
        # so a refused upload leaves nothing behind.
        form = MultipartForm(content_type, _FORM, most_fields=_MOST_FIELDS,
                             field_most=_FIELD_MOST, unique=True)
        file_id = f"file-{secrets.token_hex(12)}"
        purpose: str = ""
        expires_s: int | None = None

        async def checked() -> AsyncIterator[bytes]:
            """The file's bytes, then the fields checked: a refusal is raised before the
            file is renamed into place, so it leaves nothing."""
            nonlocal purpose, expires_s
            async for data in form.file_bytes(request.stream(), most + _FORM_SLACK, length):
                yield data
            if form.filename is None:
                raise BadRequest("Missing required parameter: 'file'.", param="file")
            asked = form.field("purpose")
            if asked not in _PURPOSES:
                raise BadRequest(f"purpose must be one of {list(_PURPOSES)}; got "
                                 f"{quoted(asked)}.", param="purpose")
            purpose = asked
            expires_s = _expires_after(form.field("expires_after[anchor]"),
                                       form.field("expires_after[seconds]"))

        timeout_s = live.graph.settings.body_read_timeout_s
        files = self.runner.files()
        try:  # as any body: a client trickling its upload held a worker and a connection
            async with asyncio.timeout(timeout_s):
                size = await files.write_chunks(file_id, checked(), most)
        except TimeoutError:
            raise RequestTimeout(f"The upload did not arrive within {timeout_s:g} s "
                                 "(settings.body_read_timeout_s).") from None
        except ClientDisconnect:  # the client went, not a bug of ours
            raise BadRequest("The upload was cut short: the client closed the connection "
                             "before its Content-Length was sent.", param="file") from None
        now = int(time.time())
        row = FileRow(file_id, _owner(key), form.filename or "upload.jsonl", purpose, size,
                      now, None if expires_s is None else now + expires_s)
        try:
            await store.put_file(row)
        except GatewayError:  # no record: its bytes would be kept for ever, found by none
            await files.delete(file_id)
            raise
        return JSONResponse(row.as_object())

    async def file(self, request: Request) -> Response:
        _, key, store = await self._caller(request)
        row = await self._file(store, key, request.path_params["file_id"])
        if request.method == "GET":
            return JSONResponse(row.as_object())
        await store.delete_file(row.id)
        await self.runner.files().delete(row.id)
        return JSONResponse({"id": row.id, "object": "file", "deleted": True})

    async def content(self, request: Request) -> Response:
        _, key, store = await self._caller(request)
        row = await self._file(store, key, request.path_params["file_id"])
        path = self.runner.files().folder / row.id
        if not await path.exists():
            raise NotFound(f"The content of {row.id} is gone from this gateway's "
                           "files_dir.", param="file_id")
        # Sent from the disk a chunk at a time: a file is up to files_max_bytes.
        return FileResponse(str(path), media_type="application/octet-stream")

    async def _batch(self, store: BatchStore, key: ApiKey, batch_id: str) -> BatchRow:
        row = await store.batch(batch_id)
        if row is None or (row.owner != _owner(key) and not key.admin):
            raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
        return row

    async def batches(self, request: Request) -> Response:
        live, key, store = await self._caller(request)
        if request.method == "POST":
            return await self._create(request, live, key, store)
        limit = page_limit(request.query_params.get("limit"), 20, 100)
        rows = await store.batches(None if key.admin else _owner(key),
                                   request.query_params.get("after"), limit)
        return _page([row.as_object() for row in rows], limit)

    async def _create(self, request: Request, live: Live, key: ApiKey,
                      store: BatchStore) -> Response:
        try:
            asked = CreateBatch.model_validate_json(
                await read_body(request, live.graph.settings))
        except ValidationError as exc:
            raise bad_request_from(exc) from exc
        source = await self._file(store, key, asked.input_file_id, "input_file_id")
        if source.purpose != "batch":
            raise BadRequest(f"The file {source.id} has purpose {source.purpose!r}, not "
                             "'batch'.", param="input_file_id")
        settings = live.graph.settings
        file = await anyio.to_thread.run_sync(self.runner.files().open, source.id)
        with file:  # read a chunk at a time: it is up to files_max_bytes
            checked = await anyio.to_thread.run_sync(
                check_file, file, asked.endpoint, settings.batch_max_lines,
                settings.max_request_bytes)
        kept = asked.output_expires_after
        doc = batch_doc(asked.endpoint, source.id, checked, asked.metadata, int(time.time()),
                        None if kept is None else kept.seconds,
                        retention_s=settings.batch_output_retention_s,
                        max_line_bytes=settings.max_request_bytes)
        caller = token_caller(key)
        if caller is not None:  # its lines run as it wherever, whenever they run
            doc["caller"] = caller.as_json()
        tags = request_tags(request.headers)
        if tags:  # a line has no headers: routed as the request that made it, tagged so
            doc["tags"] = list(tags)
        await store.put_batch(doc["id"], _owner(key), key.name, doc)
        self.runner.poke()
        row = await store.batch(doc["id"])
        assert row is not None
        return JSONResponse(row.as_object())

    async def batch(self, request: Request) -> Response:
        _, key, store = await self._caller(request)
        row = await self._batch(store, key, request.path_params["batch_id"])
        return JSONResponse(row.as_object())

    async def cancel(self, request: Request) -> Response:
        _, key, store = await self._caller(request)
        row = await self._batch(store, key, request.path_params["batch_id"])
        if row.status in ("validating", "in_progress"):
            await store.change(row.id, {"status": "cancelling",
                                        "cancelling_at": int(time.time())},
                               only_from=("validating", "in_progress"))
            self.runner.poke()
        found = await store.batch(row.id)
        assert found is not None
        if found.status not in ("cancelling", "cancelled"):
            raise Conflict(f"Cannot cancel a batch with status '{found.status}'.")
        return JSONResponse(found.as_object())
