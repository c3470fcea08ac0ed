"""OpenAI's ``/images/generations`` (and ``/images/edits``) and ``/moderations``: the
bodies sent and the answers read.

Images: ``{model, prompt, n, size?, quality?, ...}`` in, ``{created, data: [{url |
b64_json, revised_prompt?}], usage?, size?, ...}`` out; ``usage`` (gpt-image-1's:
``input_tokens``, ``output_tokens``) only where the model bills tokens. Moderations:
``{model, input}`` in, ``{id, model, results: [{flagged, categories, category_scores,
category_applied_input_types?}]}`` out, one result an input (one for a list of parts).

An answer with fewer images than ``n``, an image with neither a URL nor base64, or a
result that is not OpenAI's shape is the provider's fault (502): the client could not
tell it from a whole answer, and a group's next member may serve it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from aigw.compiler.graph import Provider

from ..errors import UpstreamServerError
from .base import (
    GeneratedImage,
    ImageCall,
    ImageResult,
    ModerationCall,
    ModerationResult,
    reported_count,
)


def image_body(call: ImageCall, named: bool) -> dict[str, Any]:
    """The client's fields as it set them, with the deployment's model where the URL does
    not name it (``named``: Azure's does)."""
    body = {**call.params, "prompt": call.prompt, "n": call.n}
    if not named:
        body["model"] = call.deployment.model
    return body


def edit_answer(raw: bytes, provider: Provider) -> dict[str, Any]:
    """An edit's answer (a multipart POST's, read as bytes) as its JSON object; anything
    else is the provider's fault."""
    try:
        document = json.loads(raw)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise UpstreamServerError(f"provider '{provider.name}' answered an image edit with "
                                  "something that is not a JSON object", provider=provider.name)
    return document


def parse_images(document: Mapping[str, Any], call: ImageCall,
                 provider: Provider) -> ImageResult:
    rows = document.get("data")
    if not isinstance(rows, list) or len(rows) < call.n:
        raise UpstreamServerError(
            f"provider '{provider.name}' answered "
            f"{len(rows) if isinstance(rows, list) else 'no'} image(s) where the request "
            f"asked for n={call.n}", provider=provider.name, param="n")
    images = []
    for row in rows:
        url, b64 = row.get("url"), row.get("b64_json")
        if not isinstance(url, str) and not isinstance(b64, str):
            raise UpstreamServerError(
                f"provider '{provider.name}' answered an image with neither a url nor "
                "b64_json", provider=provider.name)
        revised = row.get("revised_prompt")
        images.append(GeneratedImage(url if isinstance(url, str) else None,
                                     b64 if isinstance(b64, str) else None,
                                     revised if isinstance(revised, str) else None))
    usage = document.get("usage")
    usage = usage if isinstance(usage, dict) else None
    tokens_in = reported_count((usage or {}).get("input_tokens"), provider, "input tokens")
    tokens_out = reported_count((usage or {}).get("output_tokens"), provider, "output tokens")
    size = document.get("size")
    created = document.get("created")
    return ImageResult(
        model=str(document.get("model") or call.deployment.model),
        created=created if isinstance(created, int) else int(time.time()),
        images=tuple(images),
        size=size if isinstance(size, str) else call.size,
        prompt_tokens=call.prompt_tokens if tokens_in is None else tokens_in,
        output_tokens=tokens_out or 0,
        answer={name: value for name, value in document.items()
                if name not in ("created", "data", "usage", "model")},
        reported_usage=usage,
    )


def moderation_body(call: ModerationCall) -> dict[str, Any]:
    return {"model": call.deployment.model,
            "input": call.input if isinstance(call.input, str) else list(call.input)}


def parse_moderation(document: Mapping[str, Any], call: ModerationCall,
                     provider: Provider) -> ModerationResult:
    rows = document.get("results")
    if not isinstance(rows, list) or len(rows) != call.results:
        raise UpstreamServerError(
            f"provider '{provider.name}' answered "
            f"{len(rows) if isinstance(rows, list) else 'no'} moderation result(s) for "
            f"{call.results} input(s)", provider=provider.name)
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("flagged"), bool) \
                or not isinstance(row.get("categories"), dict) \
                or not isinstance(row.get("category_scores"), dict):
            raise UpstreamServerError(
                f"provider '{provider.name}' answered a moderation result without flagged, "
                "categories and category_scores", provider=provider.name)
    return ModerationResult(
        id=str(document.get("id") or ""),
        model=str(document.get("model") or call.deployment.model),
        results=tuple(rows),
        prompt_tokens=call.prompt_tokens,
    )
