"""Authentication: a bearer key to the ApiKey the graph knows it by (only digests are kept),
or a bearer JWT of one of the graph's issuers to the caller it names (runtime/identity.py)."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, TypeVar

from starlette.datastructures import Headers

from aigw.compiler import overview
from aigw.compiler.graph import ApiKey, Graph
from aigw.compiler.keys import shown_moment

from .errors import Forbidden, GatewayError, KeyExpired, Unauthorized
from .identity import looks_like_jwt, remade

if TYPE_CHECKING:
    from .live import Live
    from .store.callers import TokenCaller

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


async def authenticate(live: Live, headers: Headers) -> ApiKey:
    """The caller's key (or the caller a JWT signs in), or ``Unauthorized``. The key or
    token itself is never logged or echoed."""
    return await caller_for(live, _required(bearer_token(headers)))


async def caller_for(live: Live, token: str) -> ApiKey:
    """The key ``token`` is or, when the graph has issuers and it is shaped like a JWT
    and no key's current secret, the caller it signs in."""
    graph = live.graph
    if (graph.issuers_by_iss and looks_like_jwt(token)
            and hashlib.sha256(token.encode()).hexdigest() not in graph.keys_by_sha256):
        return await live.identities.caller(graph, token)
    return key_for(graph, token)


def _required(token: str | None) -> str:
    if token is None:
        raise Unauthorized(
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
            "or in an x-api-key header."
        )
    return token


def key_for(graph: Graph, token: str) -> ApiKey:
    """The key a secret is, or ``Unauthorized``. Digests are of the secret's UTF-8; a
    header value arrives decoded as latin-1, so a secret with non-ASCII characters is
    also tried as the bytes that were sent. Expiry is one comparison of epoch seconds,
    made only for a key that has one."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    key = graph.keys_by_sha256.get(digest) or _previous(graph, digest)
    if key is None and not token.isascii():
        try:
            sent = token.encode("latin-1")
        except UnicodeEncodeError:  # not from a header: no other reading of it
            sent = b""
        if sent:
            digest = hashlib.sha256(sent).hexdigest()
            key = graph.keys_by_sha256.get(digest) or _previous(graph, digest)
    if key is None:
        raise Unauthorized("Incorrect API key provided.")
    if key.expires_at is not None and key.expires_at <= time.time():
        raise _named(KeyExpired(
            f"The API key '{key.name}' expired at {shown_moment(key.expires_at)}."), key)
    return key


def key_named(graph: Graph, name: str) -> ApiKey:
    """The key called ``name`` in ``graph`` (a batch's lines run as the key that created
    it), refused as its secret would be: gone from the config, or expired."""
    key = graph.keys_by_name.get(name)
    if key is None:
        raise Unauthorized(f"The API key '{name}' is no longer in the gateway's config.")
    if key.expires_at is not None and key.expires_at <= time.time():
        raise _named(KeyExpired(
            f"The API key '{key.name}' expired at {shown_moment(key.expires_at)}."), key)
    return key


def work_key(live: Live, name: str, caller: TokenCaller | None) -> ApiKey:
    """The caller that work runs as (a batch's lines, an execution's steps), refused as
    its request would be now: a key of the config (gone, or past its ``expires``:
    ``KeyExpired``), or the JWT's caller the work kept (``caller``) made again as the
    graph has it; of work made before it kept one, the JWT's caller this process still
    remembers (runtime/identity.py)."""
    if caller is not None:
        return remade(live.graph, caller)
    try:
        return key_named(live.graph, name)
    except Unauthorized:  # KeyExpired too: a JWT caller's name is no key's
        remembered = live.identities.named(live.graph, name)
        if remembered is None:
            raise
        return remembered


E = TypeVar("E", bound=GatewayError)


def _named(refusal: E, key: ApiKey) -> E:
    """``refusal``, naming ``key`` as the one refused (``GatewayError.key_name``)."""
    refusal.key_name, refusal.team_name = key.name, key.team.name if key.team else None
    return refusal


def _previous(graph: Graph, digest: str) -> ApiKey | None:
    """The key whose earlier secret, still in its rotation, has ``digest``; looked for
    only when no key's current secret has it."""
    previous = graph.previous_by_sha256.get(digest)
    if previous is None:
        return None
    if previous.until is not None and previous.until <= time.time():
        # Said plainly: only a holder of the old secret sees it, and it tells them why.
        raise _named(Unauthorized(
            f"This API key was replaced; the key '{previous.key.name}' stopped accepting it "
            f"at {shown_moment(previous.until)}."), previous.key)
    return previous.key


def require_admin(graph: Graph, headers: Headers) -> ApiKey:
    """The admin key of the request; a JWT's caller is never an admin."""
    return admin_only(key_for(graph, _required(bearer_token(headers))))


def admin_only(key: ApiKey) -> ApiKey:
    """``key`` if it is an admin key, else ``Forbidden``."""
    if not key.admin:
        raise _named(Forbidden(f"key '{key.name}' is not an admin key"), key)
    return key


def keys_status(graph: Graph, now: float) -> dict[str, dict[str, object]]:
    """Each key as ``aigw compile`` shows it (compiler/overview.py), with whether it has
    expired and which of its rotations' earlier secrets are refused already, for
    /admin/status.

    >>> keys_status(graph, time.time())["ci-bot"]  # doctest: +SKIP
    {'team': 'eng', 'admin': False, 'routes': None, 'mcp_servers': ['docs'],
     'expires_at': '2027-01-01T00:00:00Z', 'previous': [{'until': '2026-12-15T00:00:00Z',
     'refused': False}], 'expired': False}
    """
    return {key.name: overview.key_entry(key, previous, now)
            for key, previous in overview.keys(graph)}
