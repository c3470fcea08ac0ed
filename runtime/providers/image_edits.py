"""The seam of image edits (POST /v1/images/edits): the call an adapter is given, and the
adapters that take it (``ImageEditAdapter``: OpenAI's API, Azure OpenAI's and
OpenAI-compatible servers', and echo's).

Every provider type that serves ``kind: image`` (compiler/kinds.py, ``IMAGES``) edits
too, so routing has no member to skip; an adapter without the seam refuses the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from aigw.compiler.graph import Deployment

from ..upstream_aiohttp import FormFile
from .base import ImageCall, ImageResult, not_served
from .events import EventStream


@dataclass(frozen=True, slots=True)
class ImageEditCall:
    """An edit of ``files`` (the images, then any mask, as the client sent them) as
    ``drawing`` asks (its prompt as the route's input guardrails left it, ``n``, size,
    response format, the parsed fields); ``fields``: the form's fields besides ``model``,
    in the client's order and as it wrote them (the prompt the checked one), sent on."""

    drawing: ImageCall
    fields: tuple[tuple[str, str], ...]
    files: tuple[FormFile, ...]

    @property
    def deployment(self) -> Deployment:
        return self.drawing.deployment


@runtime_checkable
class ImageEditAdapter(Protocol):
    async def edit_images(self, call: ImageEditCall) -> ImageResult:
        """The edited images, answered whole."""
        ...

    async def edit_image_events(self, call: ImageEditCall) -> EventStream:
        """The edited image as ``image_edit.partial_image`` events, then
        ``image_edit.completed`` with its usage (``stream: true``)."""
        ...


def image_edit_adapter(adapter: object, deployment: Deployment) -> ImageEditAdapter:
    """``adapter`` as the seam of edits; every provider type of ``kind: image`` has one,
    so the error is for an adapter that lost it."""
    if not isinstance(adapter, ImageEditAdapter):
        raise not_served(deployment, deployment.provider, "image edit")
    return adapter
