"""The ``Mcp-Session-Id`` a client sees: the server's own id, sealed to the aigw key that
opened the session and to the server's name.

Why sealed (encrypted and authenticated), not the server's id with a MAC beside it:
a MAC keyed by something the key's holder knows (its digest) binds nothing, since
the holder of another key who learns an id reads the server's id in it and MACs it
with its own key's digest. Sealed with a secret of the opening key, the server's id
is out of sight of every other key's holder, and an id shown to one key opens under
no other. The secret is the key's stored sha256 digest: its holder and aigw have it,
no other client does, and every replica has it from the config, so this holds across
replicas and restarts with no state and no secret of aigw's own to distribute.

The construction is a deterministic SIV from HMAC-SHA256 (a PRF), all stdlib::

    tag    = HMAC(k, "tag" 0 server 0 id)[:16]          (synthetic IV and MAC at once)
    stream = HMAC(k, "enc" 0 tag 0 i) for i = 0, 1, ...  (CTR keystream from the tag)
    shown  = "aigw1." base64url(tag || id XOR stream)

Deterministic on purpose: the server repeats its id on every answer, and the client
sees the same id each time. Opening recomputes the tag from the recovered id and
compares it in constant time; anything that does not open is an unknown session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from aigw.compiler.graph import ApiKey

_PREFIX = "aigw1."
_TAG = 16
_BLOCK = 32  # bytes of keystream one HMAC-SHA256 gives
MAX_SERVER_ID = 512  # the longest server id sealed (the spec sets none; ids are short)


def seal(server_id: str, key: ApiKey, server: str) -> str | None:
    """The id ``key``'s client sees for the server's ``server_id`` on MCP server
    ``server``; None for an id no spec-abiding server sends (empty, not visible ASCII)
    or one over ``MAX_SERVER_ID`` bytes."""
    raw = server_id.encode("latin-1", "replace")
    if not raw or len(raw) > MAX_SERVER_ID or not all(0x21 <= byte <= 0x7E for byte in raw):
        return None
    secret = key.sha256.encode()
    tag = _tag(secret, server, raw)
    sealed = tag + bytes(a ^ b for a, b in zip(raw, _stream(secret, tag, len(raw)),
                                               strict=True))
    return _PREFIX + base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def open_sealed(shown: str, key: ApiKey, server: str) -> str | None:
    """The server's id inside ``shown`` when ``key`` opened it on ``server``, else None."""
    if not shown.startswith(_PREFIX) or len(shown) > 2 * MAX_SERVER_ID:
        return None
    text = shown[len(_PREFIX):]
    try:
        sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(sealed) <= _TAG:
        return None
    secret = key.sha256.encode()
    tag, body = sealed[:_TAG], sealed[_TAG:]
    raw = bytes(a ^ b for a, b in zip(body, _stream(secret, tag, len(body)), strict=True))
    if not hmac.compare_digest(tag, _tag(secret, server, raw)):
        return None
    return raw.decode("latin-1")


def _tag(secret: bytes, server: str, raw: bytes) -> bytes:
    message = b"tag\0" + server.encode() + b"\0" + raw
    return hmac.new(secret, message, hashlib.sha256).digest()[:_TAG]


def _stream(secret: bytes, tag: bytes, size: int) -> bytes:
    blocks = (hmac.new(secret, b"enc\0" + tag + b"\0" + i.to_bytes(4, "big"),
                       hashlib.sha256).digest() for i in range(-(-size // _BLOCK)))
    return b"".join(blocks)[:size]
