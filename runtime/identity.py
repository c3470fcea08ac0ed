"""Sign-in with a JWT: a bearer token from an identity provider of ``issuers:`` to its caller.

A bearer token shaped like a JWT (three base64url parts) whose ``iss`` names an issuer
of the graph is verified with PyJWT against that issuer's published keys: the
algorithm among the issuer's (never ``none``, never HS*), the signature, ``exp``,
``nbf`` and ``iat`` (with the issuer's leeway), ``iss`` and ``aud``. Its caller is an
``ApiKey`` made for the request: named ``<issuer>#<principal>`` (``#`` is in no config
name, so no key shares its counters or ledger rows), in the team the issuer maps it to,
with the issuer's routes and per-caller quota.

Keys from a ``jwks_url`` are kept for the gateway's life, across reloads, and fetched
again when older than ``jwks_max_age_s`` (in the background, the old ones serving
meanwhile) or, the token waiting, when it names a ``kid`` the set lacks
(a rotation), or when its signature does not verify with the key its kid names (a
rotation that kept the kid, or a provider naming none), at most once per the issuer's
``jwks_refetch_s`` however many tokens ask: a flood of made-up kids or forged signatures
costs the provider one request that often. One
fetch at a time per URL, the others waiting for it, for ``FETCH_TIMEOUT_S`` at most in
all (httpx's timeouts are each read's: a provider sending a byte at a time would hold
them for good). While the provider cannot be reached, or answers anything but a key set
holding a usable signing key (``{"keys": []}`` too), the keys fetched last are used,
however old, and a warning logged.

A verified token's caller is kept (``_Verified``, by the sha256 of the token, never the
token; the latest ``VERIFIED_CALLERS``), so that an app sending the same token until it
expires pays for one signature check, not one a request. A kept caller stands while the
graph's issuer for its ``iss`` is the very ``Issuer`` it was verified for (a reload
makes new ones: changed, removed or not, the token is verified again, once), its ``exp``
is not past (with the issuer's leeway, as PyJWT holds it), and the issuer's keys, asked
as a fresh token would ask them (so a stale set is still renewed in the background and
an unknown kid still refetched), still hold for its kid the key it was verified with: a
key the provider took out of its JWKS (a rotation after a compromise) stops the tokens
it signed once the set is fetched again. Refusals are never kept: a flood of bad tokens
cannot push good ones out.
"""

from __future__ import annotations

import asyncio
import base64
import difflib
import hashlib
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import jwt

from aigw.compiler import overview
from aigw.compiler.graph import ApiKey, Graph, Issuer, IssuerTeams, Quota, Team
from aigw.compiler.keys import shown_moment

from .background import Background
from .errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    IdentityProviderUnavailable,
    TokenRefused,
    Unauthorized,
)
from .store.callers import TokenCaller

log = logging.getLogger("aigw.identity")

# Three base64url parts, the last (the signature) possibly empty: what alg "none" sends.
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
FETCH_TIMEOUT_S = 5.0  # a whole fetch of a key set, from connecting to its last byte
MAX_JWKS_BYTES = 1 << 20
# The deepest a token's header or claims may nest (a real token's: 3 or 4): deeper,
# parsing them again (PyJWT does, further down the stack) could exhaust the recursion
# limit, which is no refusal but a crash.
MAX_TOKEN_NESTING = 32
# A key with no kid in a fetched set is kept under this prefix and its place in the set,
# so that two such keys (an RSA and an EC one) are both kept; shown as "".
_NO_KID = "\0"
# Key types by the algorithm families that sign with them.
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
_SHOWN = 120  # the most characters of a claim a message repeats
_PREPARED_KEYS = 256
# Callers remembered by name, for the work they started that outlives their request.
RECENT_CALLERS = 10_000
# Verified tokens' callers kept, by the token's sha256 (the latest so many).
VERIFIED_CALLERS = 4096
# What a token of a known issuer that failed verification is logged as: its principal
# claim is the sender's to write, so it names nobody ("#" is in no config name, and an
# issuer's callers are named <issuer>#<principal>).
UNVERIFIED = "?"

Fetch = Callable[[str], Awaitable[bytes]]


def looks_like_jwt(token: str) -> bool:
    """Whether ``token`` has a JWT's shape (a key's secret never has two dots).

    >>> looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"), looks_like_jwt("sk-aigw-dev")
    (True, False)
    """
    return _JWT_SHAPE.fullmatch(token) is not None


@dataclass(slots=True)
class _KeySet:
    """One jwks_url's keys as last fetched (kid -> JWK), and when."""

    keys: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    fetched_at: float | None = None  # monotonic; None: never fetched
    tried_at: float = float("-inf")
    failed: bool = False  # the last fetch failed
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token's caller, and what it was verified against: its ``issuer`` (the graph's
    object), the key (``jwk``, the issuer's for ``kid``) and algorithm that checked its
    signature, and its ``exp``."""

    issuer: Issuer
    kid: object
    algorithm: str
    jwk: Mapping[str, Any]
    expires: float
    caller: ApiKey


class Identities:
    """The key sets of every issuer's jwks_url, and the verification of tokens against
    them. One for the gateway, handed on by each reload; ``fetch`` is the seam a test
    may replace (default: an httpx GET that follows no redirect), ``clock`` (monotonic)
    times fetches and ``wall`` (epoch seconds) is what a kept token's ``exp`` is held
    to (PyJWT holds a token it verifies to the system's)."""

    def __init__(self, fetch: Fetch | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._client: httpx.AsyncClient | None = None
        self._fetch = fetch or self._get
        self._clock = clock
        self._wall = wall
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()  # by sha256(token)
        self._sets: dict[str, _KeySet] = {}
        self._files: dict[str, Mapping[str, Mapping[str, Any]]] = {}  # jwks_file text -> keys
        self._renewing = Background()  # fetches of key sets past their max age
        # (id of a JWK, algorithm) -> that JWK and the PyJWK made of it
        self._prepared: dict[tuple[int, str], tuple[Mapping[str, Any], jwt.PyJWK]] = {}
        # Callers signed in lately, by name: an execution or batch they started before
        # it kept its caller (``remade``) runs as them, in the team their token's claim
        # gave them, while this process remembers it.
        self._recent: OrderedDict[str, ApiKey] = OrderedDict()

    async def caller(self, graph: Graph, token: str) -> ApiKey:
        """The caller ``token`` signs in, or ``TokenRefused`` saying why not; for the
        access log, a refusal of a token that named an issuer of the graph names it:
        ``<issuer>#?`` while the token is not verified (``TokenRefused``, and
        ``IdentityProviderUnavailable`` when its keys cannot be fetched), and
        ``<issuer>#<principal>`` once it is (``Forbidden``: its claim maps to no team)."""
        digest = hashlib.sha256(token.encode()).digest()
        kept = await self._kept(graph, digest)
        if kept is not None:
            return self._signed_in(kept)
        header, unverified = _unverified(token)
        claimed = unverified.get("iss")
        issuer = graph.issuers_by_iss.get(claimed) if isinstance(claimed, str) else None
        if issuer is None:
            raise TokenRefused(
                f"The token's issuer {_shown(claimed)} is not one this gateway accepts.")
        try:
            verified = await self._verify(issuer, token, header, unverified)
        except (TokenRefused, IdentityProviderUnavailable) as refusal:
            _unverified_of(refusal, issuer)
            raise
        self._verified[digest] = verified
        if len(self._verified) > VERIFIED_CALLERS:
            self._verified.popitem(last=False)
        return self._signed_in(verified.caller)

    async def _verify(self, issuer: Issuer, token: str, header: Mapping[str, Any],
                      unverified: Mapping[str, Any]) -> _Verified:
        algorithm = header.get("alg")
        if algorithm not in issuer.algorithms:
            raise TokenRefused(
                f"The token is signed with alg {_shown(algorithm)}, which issuer "
                f"'{issuer.name}' does not accept (it accepts {', '.join(issuer.algorithms)}).")
        kid = header.get("kid")
        jwk, key = await self._key(issuer, kid, algorithm)
        try:
            try:
                claims = _decoded(issuer, token, key, algorithm)
            except jwt.InvalidSignatureError:
                # A provider that rotated its key and kept the kid (or names none) signs
                # with a key the set held here lacks: asked again, as for a new kid.
                renewed = await self._renewed(issuer, kid, algorithm, jwk)
                if renewed is None:
                    raise
                jwk, key = renewed
                claims = _decoded(issuer, token, key, algorithm)
        except jwt.PyJWTError as exc:
            raise TokenRefused(_refusal(exc, issuer, unverified)) from exc
        # exp as PyJWT read it to check it (int(), which refuses what is not a number).
        return _Verified(issuer, kid, algorithm, jwk, int(claims["exp"]),
                         _caller(issuer, claims))

    async def _kept(self, graph: Graph, digest: bytes) -> ApiKey | None:
        """The caller kept for the token of ``digest``, if it stands (the module's
        docstring says when); one that does not is dropped, and the token verified
        again, except one past its exp: refused here, as verifying it would be."""
        verified = self._verified.get(digest)
        if verified is None:
            return None
        issuer = verified.issuer
        if graph.issuers_by_iss.get(issuer.issuer) is not issuer:
            del self._verified[digest]
            return None
        if self._wall() >= verified.expires + issuer.leeway_s:
            del self._verified[digest]
            expired = TokenRefused(_expired(issuer, verified.expires))
            raise _unverified_of(expired, issuer)
        found = _pick(await self._keys(issuer, verified.kid, verified.algorithm),
                      verified.kid, verified.algorithm)
        if found is not verified.jwk:
            if found is None or found != verified.jwk:  # gone from the set, or replaced
                self._verified.pop(digest, None)
                return None
            # The same key in a set fetched again: identity is the quick check next time.
            verified = replace(verified, jwk=found)
        self._verified[digest] = verified
        self._verified.move_to_end(digest)
        return verified.caller

    def _signed_in(self, caller: ApiKey) -> ApiKey:
        self._recent[caller.name] = caller
        self._recent.move_to_end(caller.name)
        if len(self._recent) > RECENT_CALLERS:
            self._recent.popitem(last=False)
        return caller

    def named(self, graph: Graph, name: str) -> ApiKey | None:
        """The caller called ``name`` (``<issuer>#<principal>``) as ``graph`` has it, for
        an execution or batch recorded before work kept its caller (``remade`` is for
        those that did): its issuer's routes and quota now; its team the issuer's fixed
        one or, where a claim picks it, the one its token gave it when it last signed in
        to this process (None once that is forgotten, or the issuer or team left the
        config)."""
        issuer_name, hash_sign, subject = name.partition("#")
        issuer = next((item for item in graph.issuers_by_iss.values()
                       if item.name == issuer_name), None)
        if not hash_sign or issuer is None:
            return None
        if not isinstance(issuer.team, IssuerTeams):
            return _made(issuer, subject, issuer.team)
        recent = self._recent.get(name)
        team = graph.teams.get(recent.team.name) if recent is not None and recent.team else None
        return _made(issuer, subject, team) if team is not None else None

    async def _keys(self, issuer: Issuer, kid: object,
                    algorithm: str) -> Mapping[str, Mapping[str, Any]]:
        """The keys ``issuer`` verifies a token naming ``kid``, signed with ``algorithm``,
        with now."""
        if issuer.jwks is not None:
            keys = self._files.get(issuer.jwks)
            if keys is None:
                keys = self._files[issuer.jwks] = _by_kid(json.loads(issuer.jwks))
            return keys
        assert issuer.jwks_url is not None  # the compiler makes sure of one of the two
        return await self._fetched(issuer, kid, algorithm)

    async def _key(self, issuer: Issuer, kid: object,
                   algorithm: str) -> tuple[Mapping[str, Any], jwt.PyJWK]:
        """The JWK that verifies a token of ``issuer`` naming ``kid``, and the PyJWK made
        of it for ``algorithm``."""
        found = _pick(await self._keys(issuer, kid, algorithm), kid, algorithm)
        if found is None:
            raise TokenRefused(_unknown_kid(issuer, kid, algorithm))
        return self._prepare(issuer, kid, algorithm, found)

    async def _renewed(self, issuer: Issuer, kid: object, algorithm: str,
                       tried: Mapping[str, Any]) -> tuple[Mapping[str, Any], jwt.PyJWK] | None:
        """After a signature that ``tried`` (the key ``kid`` named) did not verify: the key
        ``kid`` names in ``issuer``'s set fetched again, where that is another key; None
        where it is the same, or the set may not be fetched yet (once per jwks_refetch_s,
        shared with unknown kids: a flood of forged signatures costs the provider one
        request that often, the tokens waiting on a fetch under way using its keys).
        A set fetched again that lacks the key is a ``TokenRefused`` naming the kid as
        unknown: the provider took it out, so no signature can make it verify."""
        url = issuer.jwks_url
        state = self._sets.get(url) if url is not None else None
        if url is None or state is None:  # keys written in the config: nothing to fetch
            return None
        if (self._clock() - state.tried_at < issuer.jwks_refetch_s
                and not state.lock.locked()):
            return None
        async with state.lock:
            if self._clock() - state.tried_at >= issuer.jwks_refetch_s:
                await self._refresh_now(state, url, issuer.name)
        found = _pick(state.keys, kid, algorithm)
        if found is None:
            raise TokenRefused(_unknown_kid(issuer, kid, algorithm))
        if found == tried:
            return None
        return self._prepare(issuer, kid, algorithm, found)

    def _prepare(self, issuer: Issuer, kid: object, algorithm: str,
                 found: Mapping[str, Any]) -> tuple[Mapping[str, Any], jwt.PyJWK]:
        """``found`` and the PyJWK made of it for ``algorithm``."""
        # Made once a key and algorithm (a key set fetched again is a new mapping).
        prepared = (id(found), algorithm)
        made = self._prepared.get(prepared)
        if made is None or made[0] is not found:
            try:
                made = (found, jwt.PyJWK(dict(found), algorithm=algorithm))
            except jwt.PyJWTError as exc:
                raise TokenRefused(f"Issuer '{issuer.name}''s key {_shown(kid)} cannot "
                                   f"verify {algorithm}.") from exc
            self._prepared[prepared] = made
            if len(self._prepared) > _PREPARED_KEYS:
                self._prepared.pop(next(iter(self._prepared)))
        return made

    async def _fetched(self, issuer: Issuer, kid: object,
                       algorithm: str) -> Mapping[str, Mapping[str, Any]]:
        """The keys of ``issuer.jwks_url``: fetched first when there are none yet or they
        lack ``kid`` (for a token naming none: a key for ``algorithm``, as a provider
        with one key and no kids rotates it) as its jwks_refetch_s allows; when they are
        only older than its max age, used as they are while a fetch in the background
        renews them."""
        url = issuer.jwks_url
        assert url is not None
        state = self._sets.setdefault(url, _KeySet())

        def lacking() -> bool:
            return (kid not in state.keys if isinstance(kid, str)
                    else _pick(state.keys, kid, algorithm) is None)

        known = state.fetched_at is not None and not lacking()
        due = self._clock() - state.tried_at >= issuer.jwks_refetch_s
        if known:
            assert state.fetched_at is not None
            if (self._clock() - state.fetched_at >= issuer.jwks_max_age_s and due
                    and not state.lock.locked()):
                state.tried_at = self._clock()  # one renewal, however many ask meanwhile
                self._renewing.spawn(self._refresh(state, url, issuer.name),
                                     name=f"jwks {issuer.name}")
            return state.keys
        if due or state.lock.locked():
            async with state.lock:
                # Another request may have fetched while this one waited.
                if (self._clock() - state.tried_at >= issuer.jwks_refetch_s
                        and (state.fetched_at is None or lacking())):
                    await self._refresh_now(state, url, issuer.name)
        if state.fetched_at is None:
            # When the next fetch may be tried: the SDKs wait so long before their retry,
            # rather than retry into the same refusal at once.
            wait_s = issuer.jwks_refetch_s - (self._clock() - state.tried_at)
            raise IdentityProviderUnavailable(
                f"The keys of issuer '{issuer.name}' could not be fetched; try again shortly.",
                headers={"retry-after": str(max(1, math.ceil(wait_s)))})
        return state.keys

    async def _refresh(self, state: _KeySet, url: str, name: str) -> None:
        async with state.lock:
            await self._refresh_now(state, url, name)

    async def _refresh_now(self, state: _KeySet, url: str, name: str) -> None:
        state.tried_at = self._clock()
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                document = json.loads(await self._fetch(url))
            keys = _by_kid(document)
        # What a provider answering garbage raises: an HTTP error status, a body that is
        # no JSON (or nests past the recursion limit), JSON that is no key set; and one
        # that answers a byte at a time, each in its read timeout, never done.
        except (httpx.HTTPError, ValueError, TypeError, KeyError, AttributeError,
                RecursionError, TimeoutError) as exc:
            log.warning("issuer '%s': fetching its keys from %s failed (%s); %s", name, url,
                        type(exc).__name__, "keeping those fetched before"
                        if state.fetched_at is not None else "none to use yet")
            state.failed = True
            return
        if not keys:
            # A provider mid-rotation or misconfigured ({"keys": []}, or only encryption
            # or private keys): taking that set would refuse every token of the issuer,
            # those its keys still verify too. Kept as a failed fetch, tried again as one.
            log.warning("issuer '%s': %s answered a key set with no usable signing key; %s",
                        name, url, "keeping those fetched before"
                        if state.fetched_at is not None else "none to use yet")
            state.failed = True
            return
        state.keys, state.fetched_at, state.failed = keys, self._clock(), False

    def status(self, graph: Graph) -> dict[str, dict[str, object]]:
        """Each issuer of ``graph`` as ``aigw compile`` shows it, with the kids of the keys
        it verifies with now, how
        long ago they were fetched (None: never, or from its jwks_file) and whether the
        last fetch failed, for /admin/status."""
        shown: dict[str, dict[str, object]] = {}
        for issuer in overview.issuers(graph):
            state = self._sets.get(issuer.jwks_url) if issuer.jwks_url is not None else None
            keys = (_by_kid(json.loads(issuer.jwks)) if issuer.jwks is not None
                    else state.keys if state is not None else {})
            fetched = state.fetched_at if state is not None else None
            shown[issuer.name] = {
                **overview.issuer_entry(issuer),
                "kids": sorted("" if kid.startswith(_NO_KID) else kid for kid in keys),
                "fetched_s_ago": None if fetched is None else round(self._clock() - fetched, 1),
                "last_fetch_failed": state.failed if state is not None else False,
            }
        return shown

    async def _get(self, url: str) -> bytes:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False)
        # identity: the cap below counts decoded bytes, and a gzip chunk may decode to
        # many MiB before it is counted.
        async with self._client.stream("GET", url, headers={
                "accept": "application/json", "accept-encoding": "identity"}) as got:
            got.raise_for_status()
            body = bytearray()
            async for chunk in got.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"a key set over {MAX_JWKS_BYTES} bytes")
            return bytes(body)

    async def aclose(self) -> None:
        self._renewing.cancel()
        await self._renewing.wait()
        if self._client is not None:
            await self._client.aclose()


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A token's header and claims as written, to pick its issuer and key: nothing in
    them is trusted until PyJWT has verified the signature over them."""
    try:
        header, claims = (json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
                          for part in token.split(".", 2)[:2])
    # binascii.Error is a ValueError; RecursionError: "[[[[..." a few KiB long
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise TokenRefused("The bearer token is not a well-formed JWT.") from exc
    if (not isinstance(header, dict) or not isinstance(claims, dict)
            or _nesting(header) > MAX_TOKEN_NESTING or _nesting(claims) > MAX_TOKEN_NESTING):
        raise TokenRefused("The bearer token is not a well-formed JWT.")
    return header, claims


def _nesting(value: object) -> int:
    """How deep ``value`` (parsed JSON) nests, counted without recursion.

    >>> _nesting({"a": [1, {"b": 2}]}), _nesting("x")
    (3, 0)
    """
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        inner = (item.values() if isinstance(item, dict)
                 else item if isinstance(item, list) else None)
        if inner is None:
            continue
        deepest = max(deepest, depth)
        pending.extend((each, depth + 1) for each in inner)
    return deepest


def _by_kid(document: Any) -> dict[str, Mapping[str, Any]]:
    """A JWKS's public signing keys by kid (a key with none by ``_NO_KID`` and its place:
    a token naming no kid is verified with the one key that suits its algorithm)."""
    keys = document["keys"]
    if not isinstance(keys, list):
        raise ValueError("keys is not a list")
    return {str(key["kid"]) if "kid" in key else f"{_NO_KID}{index}": key
            for index, key in enumerate(keys)
            if isinstance(key, dict) and key.get("use", "sig") == "sig" and "d" not in key
            and key.get("kty") in _KEY_TYPES.values()}


def _pick(keys: Mapping[str, Mapping[str, Any]], kid: object,
          algorithm: str) -> Mapping[str, Any] | None:
    """The key ``kid`` names, if it suits ``algorithm``; with no kid, the one key that
    suits it (a provider with a single key may leave kid out)."""
    def suits(key: Mapping[str, Any]) -> bool:
        return (key.get("kty") == _KEY_TYPES[algorithm[:2]]
                and key.get("alg", algorithm) == algorithm)

    if isinstance(kid, str):
        found = keys.get(kid)
        return found if found is not None and suits(found) else None
    suiting = [key for key in keys.values() if suits(key)]
    return suiting[0] if len(suiting) == 1 else None


def _unknown_kid(issuer: Issuer, kid: object, algorithm: str) -> str:
    """Why a token whose kid (or, naming none, whose algorithm) finds no key is refused."""
    return (f"The token's signing key (kid {_shown(kid)}) is not among issuer "
            f"'{issuer.name}''s keys for {algorithm}.")


def _decoded(issuer: Issuer, token: str, key: jwt.PyJWK, algorithm: str) -> dict[str, Any]:
    """``token``'s claims, verified with ``key`` as ``issuer`` requires."""
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=[algorithm], audience=list(issuer.audiences),
        issuer=issuer.issuer, leeway=issuer.leeway_s,
        options={"require": ["exp", "iss", "aud"]})
    return claims


def _refusal(exc: jwt.PyJWTError, issuer: Issuer, unverified: Mapping[str, Any]) -> str:
    """Why a token of ``issuer`` was refused, in the caller's terms."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return _expired(issuer, unverified.get("exp"))
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "The token is not valid yet (its nbf or iat is in the future)."
    if isinstance(exc, jwt.InvalidAudienceError) and _audiences(unverified.get("aud")) is None:
        return "The token's aud claim is not a string or a list of strings."
    if isinstance(exc, jwt.InvalidAudienceError):
        return (f"The token's audience {_shown(unverified.get('aud'))} is not this gateway "
                f"(issuer '{issuer.name}' tokens must name one of: "
                f"{', '.join(issuer.audiences)}).")
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"The token has no '{exc.claim}' claim."
    if isinstance(exc, jwt.InvalidSignatureError):
        return f"The token's signature does not verify with issuer '{issuer.name}''s key."
    if isinstance(exc, jwt.InvalidIssuedAtError):
        return "The token's iat claim is not a time."
    return f"The token does not verify ({type(exc).__name__})."


def _audiences(aud: object) -> list[str] | None:
    """The audiences an ``aud`` claim names, as RFC 7519 writes it (a string, or a list
    of strings); None for anything else, which PyJWT refuses as an audience it lacks."""
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and all(isinstance(each, str) for each in aud):
        return aud
    return None


def _expired(issuer: Issuer, exp: object) -> str:
    when = f" at {shown_moment(exp)}" if isinstance(exp, int | float) else ""
    return f"The token expired{when}; get a new one from issuer '{issuer.name}'."


def _unverified_of(refusal: GatewayError, issuer: Issuer) -> GatewayError:
    """``refusal`` of a token that names ``issuer``, naming in the access log the issuer
    (its config's name, never the token's text) and no caller: ``<issuer>#?``."""
    refusal.key_name = f"{issuer.name}#{UNVERIFIED}"
    return refusal


def _caller(issuer: Issuer, claims: Mapping[str, Any]) -> ApiKey:
    principal = claims.get(issuer.principal_claim)
    if isinstance(principal, int) and not isinstance(principal, bool):
        principal = str(principal)
    if not isinstance(principal, str) or not principal:
        raise TokenRefused(
            f"The token has no '{issuer.principal_claim}' claim naming its caller "
            f"(issuer '{issuer.name}' names callers by it).")
    try:
        team = _team(issuer, claims)
    except Forbidden as refusal:
        # The token verified: its principal is the provider's word, and the access log
        # says whose client has no team (the token itself is never logged).
        refusal.key_name = f"{issuer.name}#{principal}"
        raise
    return _made(issuer, principal, team)


def _made(issuer: Issuer, principal: str, team: Team | None) -> ApiKey:
    return ApiKey(
        name=f"{issuer.name}#{principal}", team=team, admin=False, quota=issuer.quota,
        per_user=team.per_user if team is not None else Quota(),
        routes=issuer.routes, mcp_servers=issuer.mcp_servers, passthrough=issuer.passthrough,
        sha256=None,
        issuer=issuer.name, subject=principal)


def stand_in(graph: Graph, subject: str, team: str | None) -> ApiKey:
    """The caller a token of ``subject`` (``<issuer>#<principal>``) signs in, with no
    token: made as ``Identities.caller`` makes it (the issuer's routes and quota, the
    same Cedar entities), in ``team`` where the issuer picks one by a claim, for asking
    policies about such a caller offline (``aigw test``, ``aigw route``, ``POST /route``).
    A ``BadRequest`` says what is wrong, its ``param`` "subject" or "team"."""
    issuer_name, hash_sign, principal = subject.partition("#")
    if not hash_sign or not issuer_name or not principal:
        raise BadRequest(f"A subject is written <issuer>#<principal> (corp#alice), not "
                         f"'{subject}'.", param="subject")
    issuers = {item.name: item for item in graph.issuers_by_iss.values()}
    issuer = issuers.get(issuer_name)
    if issuer is None:
        close = difflib.get_close_matches(issuer_name, sorted(issuers), n=1, cutoff=0.6)
        hint = (f"; did you mean '{close[0]}'?" if close
                else f" (issuers: {', '.join(sorted(issuers))})" if issuers
                else " (the config has no issuers:)")
        raise BadRequest(f"There is no issuer '{issuer_name}'{hint}", param="subject")
    rule = issuer.team
    if isinstance(rule, IssuerTeams):
        teams = {each.name: each for _value, each in rule.choices}
        if rule.default is not None:
            teams[rule.default.name] = rule.default
        if team is None or team not in teams:
            said = "name the team" if team is None else f"it gives no team '{team}'"
            raise BadRequest(
                f"Issuer '{issuer.name}' picks a caller's team by its '{rule.claim}' claim: "
                f"{said} (one of {', '.join(teams)}).", param="team")
        return _made(issuer, principal, teams[team])
    fixed = rule.name if rule is not None else None
    if team is not None and team != fixed:
        puts = f"puts every caller in team '{fixed}'" if fixed else "gives its callers no team"
        raise BadRequest(f"Issuer '{issuer.name}' {puts}, not '{team}'.", param="team")
    return _made(issuer, principal, rule)


def token_caller(key: ApiKey) -> TokenCaller | None:
    """What work ``key`` starts (an execution, a batch) keeps to run as it later: for a
    JWT's caller its issuer, principal and team (never its token); None for a key of the
    config, which is found again by its name."""
    if key.issuer is None or key.subject is None:
        return None
    return TokenCaller(key.issuer, key.subject, key.team.name if key.team else None)


def remade(graph: Graph, caller: TokenCaller) -> ApiKey:
    """The JWT caller that started some work, as ``graph`` has it now, wherever and
    whenever the work goes on: its issuer's routes and quota now; its team the issuer's
    fixed one now (as a key's team is the config's) or, where a claim picked it, the one
    the claim gave it then. ``Unauthorized`` once the issuer, or that team, left the
    config (or the issuer picks teams by claim now and the caller had none)."""
    issuer = next((item for item in graph.issuers_by_iss.values()
                   if item.name == caller.issuer), None)
    if issuer is None:
        raise _refused(caller, f"its issuer '{caller.issuer}' is no longer in the "
                               "gateway's config")
    if not isinstance(issuer.team, IssuerTeams):
        return _made(issuer, caller.principal, issuer.team)
    if caller.team is None:
        raise _refused(caller, f"issuer '{issuer.name}' now gives its callers a team by "
                               f"their token's '{issuer.team.claim}' claim, and it had none "
                               "when it started this work")
    team = graph.teams.get(caller.team)
    if team is None:
        raise _refused(caller, f"its team '{caller.team}' (the one its token gave it when "
                               "it started this work) is no longer in the gateway's config")
    return _made(issuer, caller.principal, team)


def _refused(caller: TokenCaller, why: str) -> Unauthorized:
    refusal = Unauthorized(f"The caller '{caller.name}' is no longer accepted: {why}.")
    refusal.key_name = caller.name  # the access log says whose work was refused
    return refusal


def caller_in(graph: Graph, key: ApiKey) -> ApiKey | None:
    """``key`` as ``graph`` has it, None once a reload took it out: a key by its name; a
    JWT's caller (verified when its request began) while its issuer is in the config."""
    if key.issuer is None:
        return graph.keys_by_name.get(key.name)
    present = any(item.name == key.issuer for item in graph.issuers_by_iss.values())
    return key if present else None


def _team(issuer: Issuer, claims: Mapping[str, Any]) -> Team | None:
    if not isinstance(issuer.team, IssuerTeams):
        return issuer.team
    rule = issuer.team
    held = claims.get(rule.claim)
    values = {held} if isinstance(held, str) else (
        {item for item in held if isinstance(item, str)} if isinstance(held, list) else set())
    for value, team in rule.choices:
        if value in values:
            return team
    if rule.default is not None:
        return rule.default
    raise Forbidden(
        f"The token's '{rule.claim}' claim holds none of the values issuer "
        f"'{issuer.name}' maps to a team ({', '.join(value for value, _ in rule.choices)}).")


def _shown(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
