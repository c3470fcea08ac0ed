"""OpenAI's ``/v1/images/edits`` for the OpenAI fake (``OpenAIFake`` takes it in), with Azure
OpenAI's deployment URL: the multipart form OpenAI's API reference gives (``image``, or
``image[]`` up to 16 for gpt-image models, ``mask``, ``prompt``, ``n``, ``size``, ...),
answered as a generation is (``OpenAIFake._drawn``), a gpt-image model's usage counting
``IMAGE_TOKENS`` input tokens an image. What it received is journaled in ``script.requests``
as ``{field: value, ..., "files": [{"field", "filename", "content_type", "data"}]}``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

EDIT_FIELDS = {"model", "prompt", "n", "size", "quality", "response_format", "background",
               "output_format", "output_compression", "input_fidelity", "user", "stream",
               "partial_images"}
IMAGE_TOKENS = 323  # what one input image reports, as gpt-image-1's usage details give it


class ImageEditFake:
    """The edit half of ``OpenAIFake`` (its ``_failure`` and ``_drawn``)."""

    _failure: Callable[[Request, dict[str, Any]], Awaitable[Response | None]]
    _drawn: Callable[[Request, dict[str, Any], str, int], Response]

    def image_edit_routes(self) -> list[Route]:
        return [Route("/v1/images/edits", self._edit, methods=["POST"]),
                Route("/openai/deployments/{deployment}/images/edits", self._edit,
                      methods=["POST"])]

    async def _edit(self, request: Request) -> Response:
        seen: dict[str, Any] = {"files": []}
        async with request.form() as form:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    seen["files"].append({"field": name, "filename": value.filename,
                                          "content_type": value.content_type,
                                          "data": await value.read()})
                elif name in seen:
                    return _invalid(f"Duplicate parameter: '{name}'.", name)
                else:
                    seen[name] = value
        failed = await self._failure(request, seen)
        if failed:
            return failed
        unknown = [name for name in seen if name not in EDIT_FIELDS | {"files"}]
        if unknown:
            return _invalid(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
        images = [file for file in seen["files"] if file["field"] in ("image", "image[]")]
        if not images:
            return _invalid("Missing required parameter: 'image'.", "image")
        body: dict[str, Any] = {name: value for name, value in seen.items() if name != "files"}
        for name in ("n", "partial_images"):
            if name in body:
                body[name] = int(body[name])
        if "stream" in body:
            body["stream"] = body["stream"] == "true"
        return self._drawn(request, body, "image_edit", IMAGE_TOKENS * len(images))


def _invalid(message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error",
                                   "param": param, "code": None}}, status_code=400)
