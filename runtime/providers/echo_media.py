"""The echo provider's images and moderations: deterministic and offline, for demos and tests.

Images: each an 8x8 PNG of one colour, taken from the prompt and the image's index (the
same request draws the same images), whatever the size asked for (an edit's too: the
images it was given are not read); base64 unless the
request asks for ``url``, then a ``data:`` URL, which needs no server either.
Moderation: a demonstration only, no classifier. A text is flagged for a category when
it holds one of a few fixed words (``FLAGGED_WORDS``, case folded, whole words); image
parts are not read.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
import time
import zlib
from collections.abc import AsyncIterator
from types import MappingProxyType

from .base import (
    GeneratedImage,
    ImageCall,
    ImageResult,
    ModerationCall,
    ModerationResult,
)

_PNG_SIDE = 8
# OpenAI's moderation categories (omni-moderation's), in its order.
CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
              "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions",
              "sexual", "sexual/minors", "violence", "violence/graphic")
FLAGGED_WORDS = MappingProxyType({
    "idiot": "harassment", "hate": "hate", "steal": "illicit", "bomb": "illicit/violent",
    "suicide": "self-harm", "kill": "violence", "murder": "violence",
})
_TERM = re.compile(r"\w+")


def png(seed: bytes) -> bytes:
    """An 8x8 RGB PNG of the colour the first bytes of ``seed``'s digest give."""
    colour = hashlib.sha256(seed).digest()[:3]
    rows = b"".join(b"\x00" + colour * _PNG_SIDE for _ in range(_PNG_SIDE))  # filter 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", _PNG_SIDE, _PNG_SIDE, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def echo_images(call: ImageCall) -> ImageResult:
    images = []
    for index in range(call.n):
        encoded = base64.b64encode(png(f"{index}:{call.prompt}".encode())).decode()
        images.append(GeneratedImage(f"data:image/png;base64,{encoded}", None)
                      if call.response_format == "url" else GeneratedImage(None, encoded))
    return ImageResult(call.deployment.model, int(time.time()), tuple(images), call.size,
                       call.prompt_tokens, 0, {}, None)


async def echo_image_events(call: ImageCall, events: str = "image_generation",
                            ) -> AsyncIterator[tuple[str, str]]:
    """The image as OpenAI streams one: ``partial_images`` partial images (the same PNG:
    echo draws no better at the end), then ``image_generation.completed`` (``events``:
    ``image_edit`` for an edit's)."""
    encoded = base64.b64encode(png(f"0:{call.prompt}".encode())).decode()
    shown = {"created_at": int(time.time()), "size": call.size or "auto",
             "quality": call.params.get("quality", "auto"),
             "background": call.params.get("background", "auto"),
             "output_format": call.params.get("output_format", "png"), "b64_json": encoded}
    for index in range(int(call.params.get("partial_images", 0))):
        yield f"{events}.partial_image", json.dumps(
            {"type": f"{events}.partial_image", **shown, "partial_image_index": index})
    yield f"{events}.completed", json.dumps(
        {"type": f"{events}.completed", **shown, "usage": {
            "input_tokens": call.prompt_tokens, "output_tokens": 0,
            "total_tokens": call.prompt_tokens,
            "input_tokens_details": {"text_tokens": call.prompt_tokens, "image_tokens": 0}}})


def echo_moderation(call: ModerationCall) -> ModerationResult:
    if isinstance(call.input, str):
        texts = [call.input]
    elif call.results == 1 and call.input and not isinstance(call.input[0], str):
        texts = [" ".join(str(part.get("text", "")) for part in call.input
                          if not isinstance(part, str) and part.get("type") == "text")]
    else:
        texts = [text for text in call.input if isinstance(text, str)]
    digest = hashlib.sha256(repr(call.input).encode()).hexdigest()[:24]
    return ModerationResult(f"modr-{digest}", call.deployment.model,
                            tuple(_result(text) for text in texts), call.prompt_tokens)


def _result(text: str) -> dict[str, object]:
    hits = {FLAGGED_WORDS[word] for word in _TERM.findall(text.casefold())
            if word in FLAGGED_WORDS}
    return {
        "flagged": bool(hits),
        "categories": {name: name in hits for name in CATEGORIES},
        "category_scores": {name: 1.0 if name in hits else 0.0 for name in CATEGORIES},
        "category_applied_input_types": {name: ["text"] for name in CATEGORIES},
    }
