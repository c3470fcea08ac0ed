"""Authentication: a bearer key to the ApiKey the graph knows it by (only digests are kept)."""

from __future__ import annotations

import hashlib

from starlette.datastructures import Headers

from aigw.compiler.graph import ApiKey, Graph

from .errors import Forbidden, Unauthorized

# sha256 of "sk-aigw-dev", the development key documented in the README and gateway.yaml.
DEV_KEY_SHA256 = "2f0527c3d35a1f337ec6033b75e33c053e72e7122963d86dffe7c2f10bcbb482"


def bearer_token(headers: Headers) -> str | None:
    """The key from ``Authorization: Bearer`` (or ``x-api-key``, as Anthropic's SDK sends it)."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return headers.get("x-api-key") or None


def authenticate(graph: Graph, headers: Headers) -> ApiKey:
    """The caller's key, or ``Unauthorized``. The key itself is never logged or echoed."""
    token = bearer_token(headers)
    if token is None:
        raise Unauthorized(
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
            "or in an x-api-key header."
        )
    return key_for(graph, token)


def key_for(graph: Graph, token: str) -> ApiKey:
    """The key a secret is, or ``Unauthorized``. Digests are of the secret's UTF-8; a
    header value arrives decoded as latin-1, so a secret with non-ASCII characters is
    also tried as the bytes that were sent."""
    keys = graph.keys_by_sha256
    key = keys.get(hashlib.sha256(token.encode()).hexdigest())
    if key is None and not token.isascii():
        try:
            sent = token.encode("latin-1")
        except UnicodeEncodeError:  # not from a header: no other reading of it
            sent = b""
        key = keys.get(hashlib.sha256(sent).hexdigest()) if sent else None
    if key is None:
        raise Unauthorized("Incorrect API key provided.")
    return key


def require_admin(graph: Graph, headers: Headers) -> ApiKey:
    return admin_only(authenticate(graph, headers))


def admin_only(key: ApiKey) -> ApiKey:
    """``key`` if it is an admin key, else ``Forbidden``."""
    if not key.admin:
        raise Forbidden(f"key '{key.name}' is not an admin key")
    return key
