"""The ``Mcp-Session-Id`` a client sees: the server's own id, sealed to the aigw key that
opened the session and to the server's name.

Why sealed (encrypted and authenticated), not the server's id with a MAC beside it:
the holder of another key who learns an id would read the server's id in it and use
it. Sealed with the opening key's own secret, the server's id is out of sight of
every other key's holder, and an id shown to one key opens under no other. The secret
is the key as its client presents it (the bearer token, on every message): aigw never
stores it (the config holds its sha256 digest, which a reader of the config would know,
so the digest is not used), every replica sees it on each request, and so this holds
across replicas and restarts with no state and no secret of aigw's own to distribute.
During a key's rotation its old and new secrets are one key, but each seals its own
sessions: a client that switches secrets gets a 404 for its old session id and opens
a new one (as the MCP spec has it do), and whoever holds a leaked old secret can open
no session of the new one's.

The construction is a deterministic SIV from HMAC-SHA256 (a PRF), all stdlib::

    k      = SHA256("aigw-mcp-session" 0 token)
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
from dataclasses import dataclass

_PREFIX = "aigw1."
_TAG = 16
_BLOCK = 32  # bytes of keystream one HMAC-SHA256 gives
MAX_SERVER_ID = 512  # the longest server id sealed (the spec sets none; ids are short)


def session_secret(token: str) -> bytes:
    """The sealing secret of the key a client presents as ``token`` (its bearer)."""
    return hashlib.sha256(b"aigw-mcp-session\0" + token.encode("utf-8", "replace")).digest()


def caller_secret(caller: str) -> bytes:
    """The sealing secret of a caller signed in with a JWT (``<issuer>#<principal>``):
    its token is renewed every hour or so, and a session sealed to the token would end
    with it. Sealed to the caller's name, an id opens for that caller only, whatever
    token it presents next; another caller (another name) opens none of it. What it
    gives up against a key's: whoever knows the name and sees a shown id reads the
    server's id in it (and still cannot send it: the server is the gateway's to reach).
    A key's own secret never starts with "aigw-jwt-caller", so the two never meet."""
    return hashlib.sha256(b"aigw-mcp-session\0aigw-jwt-caller\0"
                          + caller.encode("utf-8", "replace")).digest()


def seal(server_id: str, secret: bytes, server: str) -> str | None:
    """The id the client of the key whose ``session_secret`` is ``secret`` sees for the
    server's ``server_id`` on MCP server ``server``; None for an id no spec-abiding
    server sends (empty, not visible ASCII) or one over ``MAX_SERVER_ID`` bytes."""
    raw = server_id.encode("latin-1", "replace")
    if not raw or len(raw) > MAX_SERVER_ID or not all(0x21 <= byte <= 0x7E for byte in raw):
        return None
    tag = _tag(secret, server, raw)
    sealed = tag + bytes(a ^ b for a, b in zip(raw, _stream(secret, tag, len(raw)),
                                               strict=True))
    return _PREFIX + base64.urlsafe_b64encode(sealed).decode().rstrip("=")


def open_sealed(shown: str, secret: bytes, server: str) -> str | None:
    """The server's id inside ``shown`` when the key whose ``session_secret`` is ``secret``
    opened it on ``server``, else None."""
    if not shown.startswith(_PREFIX) or len(shown) > 2 * MAX_SERVER_ID:
        return None
    text = shown[len(_PREFIX):]
    try:
        sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(sealed) <= _TAG:
        return None
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


@dataclass(frozen=True, slots=True)
class EventIds:
    """The SSE event ids a client sees on the streams of one session (``session``, the
    server's own id; "" for a server without sessions) of MCP server ``server``: the
    server's ids sealed as session ids are, to the caller's key (``secret``), the server
    and the session. A Last-Event-ID comes back to the server only as the id it gave:
    one from another key's stream, or another session's, opens under none of this one
    (a server whose event store is not kept by session, and whose ids can be guessed,
    replayed another session's messages to whoever named one of its ids)."""

    secret: bytes
    server: str
    session: str

    @property
    def _context(self) -> str:
        return f"event\0{self.server}\0{self.session}"

    def shown(self, event: bytes) -> bytes:
        """``event`` (one SSE event, as sent) with its id sealed; an id no client could
        send back (not visible ASCII, over ``MAX_SERVER_ID``) taken out."""
        if not event.startswith(b"id:") and b"\nid:" not in event:
            return event
        lines = event.split(b"\n")
        for n, line in enumerate(lines):
            field, colon, value = line.partition(b":")
            if field != b"id" or not colon:
                continue
            value = value.removeprefix(b" ").removesuffix(b"\r")
            if not value:  # an empty id resets the client's: passed on as it is
                continue
            sealed = seal(value.decode("latin-1"), self.secret, self._context)
            lines[n] = b"id: " + sealed.encode() if sealed is not None else b":"
        return b"\n".join(lines)

    def opened(self, shown: str) -> str | None:
        """The server's id inside ``shown`` (a client's Last-Event-ID), when it is one
        this session's streams gave this key; else None."""
        return open_sealed(shown.strip(), self.secret, self._context)
