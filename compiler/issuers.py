"""Part of stage 3, link: the identity providers (``issuers:``) whose JWTs sign apps in.

Checked: the teams, routes and MCP servers an issuer names (AGW304, AGW302-style
"did you mean" through the caller's ``unknown``), a ``jwks_url`` a man in the middle
could answer (plain http off loopback, AGW358), a ``jwks_file`` that is not a JSON Web
Key Set of public keys (AGW359: unreadable, a malformed, private or shared-secret key,
no signing key for any of the issuer's algorithms), an inline ``jwks`` with a key no
token of the issuer's could be verified with (AGW361, at that key: malformed, private,
a shared secret, an alg or key type outside the issuer's algorithms, not for signing),
and two issuers with one ``iss`` (AGW360: a token would be one's or the other's by
chance).
"""

from __future__ import annotations

import ipaddress
import json
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import codes
from .diagnostics import DiagnosticSink
from .source import Position
from .spec import IssuerSpec, IssuerTeamSpec, JwksSpec

if TYPE_CHECKING:
    from .link import Entry

# Reports a name ``kind`` that is not among ``known``: (code, kind, name, known,
# position, where) -> None; link's own ``_unknown`` with its "did you mean" hint.
Unknown = Callable[[codes.Code, str, str, Mapping[str, object], Position, str], None]

# JWK key types by the algorithm families that sign with them.
_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
# Members only a private (or shared-secret) JWK has.
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")


@dataclass(frozen=True, slots=True)
class LinkedIssuer:
    entry: Entry[IssuerSpec]
    # jwks_file's or the inline jwks's key set as JSON text, checked; None: fetched from
    # jwks_url (or not usable: an error says why)
    jwks: str | None


def link_issuers(
    issuers: Mapping[str, Entry[IssuerSpec]],
    known_teams: Mapping[str, object],
    known_routes: Mapping[str, object],
    known_mcp_servers: Mapping[str, object],
    known_passthrough: Mapping[str, object],
    root: Path,
    unknown: Unknown,
    sink: DiagnosticSink,
) -> dict[str, LinkedIssuer]:
    """Name -> the issuer with its key file read; problems go to ``sink``."""
    linked: dict[str, LinkedIssuer] = {}
    by_iss: dict[str, str] = {}
    for name, entry in issuers.items():
        spec = entry.spec
        where = f"issuer '{name}'"
        for team, path in _teams(spec.team):
            if team not in known_teams:
                unknown(codes.REF_TEAM, "team", team, known_teams, entry.value(*path), where)
        # The names an issuer narrows its callers to, each list checked as a key's is.
        narrowed = (("routes", spec.routes, codes.REF_ROUTE, "route", known_routes),
                    ("mcp_servers", spec.mcp_servers, codes.REF_MCP_SERVER, "MCP server",
                     known_mcp_servers),
                    ("passthrough", spec.passthrough, codes.REF_PASSTHROUGH, "pass-through",
                     known_passthrough))
        for field_name, names, code, kind, known in narrowed:
            for index, named in enumerate(names or ()):
                if named not in known:
                    unknown(code, kind, named, known, entry.value(field_name, index), where)
        if spec.jwks_url is not None:
            _check_url(spec.jwks_url, entry.value("jwks_url"), where, sink)
        jwks: str | None = None
        if spec.jwks_file is not None:
            jwks = _read_key_set(root / spec.jwks_file, spec.algorithms,
                                 entry.value("jwks_file"), where, sink)
        elif spec.jwks is not None:
            jwks = _inline_key_set(spec.jwks, spec.algorithms, entry, where, sink)
        first = by_iss.setdefault(spec.issuer, name)
        if first != name:
            sink.add(codes.DUPLICATE_ISSUER,
                     f"{where} accepts iss '{spec.issuer}', as issuer '{first}' does",
                     entry.value("issuer"),
                     "a token names one issuer: merge the two (list both audiences under one)")
        linked[name] = LinkedIssuer(entry, jwks)
    return linked


def _teams(team: str | IssuerTeamSpec | None) -> list[tuple[str, tuple[str | int, ...]]]:
    """Every team name ``team`` holds, with its path under the issuer."""
    if team is None:
        return []
    if isinstance(team, str):
        return [(team, ("team",))]
    found: list[tuple[str, tuple[str | int, ...]]] = [
        (value, ("team", "map", claim)) for claim, value in team.map.items()]
    if team.default is not None:
        found.append((team.default, ("team", "default")))
    return found


def _check_url(url: str, position: Position, where: str, sink: DiagnosticSink) -> None:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "https" and parsed.hostname:
        return
    if parsed.scheme == "http" and parsed.hostname and _loopback(parsed.hostname):
        return
    sink.add(codes.ISSUER_JWKS_URL, f"{where} jwks_url '{url}' is not an https URL", position,
             "keys fetched over plain http can be swapped on the way, and then anyone can "
             "sign in: write https://... (http only to a loopback address)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_key_set(
    path: Path, algorithms: Sequence[str], position: Position, where: str, sink: DiagnosticSink
) -> str | None:
    """The file's key set as JSON text, or None (with an error) when it is not a set of
    public keys some algorithm of the issuer's can verify with."""
    problem: str | None
    try:
        document: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror or type(exc).__name__})"
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"is not JSON ({exc})"
    else:
        problem = _key_set_problem(document, algorithms)
        if problem is None:
            return json.dumps(document, sort_keys=True)
    sink.add(codes.ISSUER_JWKS_FILE, f"{where} jwks_file '{path.name}' {problem}", position,
             "export the provider's JWKS (its jwks_uri, as JSON: {\"keys\": [...]}) and keep "
             "the file beside gateway.yaml")
    return None


def _key_set_problem(document: Any, algorithms: Sequence[str]) -> str | None:
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        return 'has no "keys" list'
    for index, key in enumerate(keys):
        if not isinstance(key, dict):
            return f"keys[{index}] is not a JSON object"
        found = _key_problem(key)
        if found is not None:
            return f"keys[{index}] {found[0]}"
    if not any(_verifies(key, algorithms) for key in keys):
        return f"has no signing key for {', '.join(algorithms)}"
    return None


def _inline_key_set(jwks: JwksSpec, algorithms: Sequence[str], entry: Entry[IssuerSpec],
                    where: str, sink: DiagnosticSink) -> str | None:
    """The inline key set as JSON text, or None when a key in it is one no token of the
    issuer's could be verified with: written in the config, each key is meant to be
    used, so a key for another algorithm is an error here (a provider's file may hold
    keys for other clients)."""
    problems = 0
    for index, key in enumerate(jwks.keys):
        found = _key_problem(key) or _unused(key, algorithms)
        if found is None:
            continue
        problem, member = found
        problems += 1
        at = (entry.value("jwks", "keys", index, member) if member in key
              else entry.value("jwks", "keys", index))
        sink.add(codes.ISSUER_JWKS_INLINE, f"{where} jwks keys[{index}] {problem}", at,
                 "copy the keys of the provider's JWKS (its jwks_uri) as they are: public "
                 "keys, for the issuer's algorithms")
    if problems:
        return None
    return json.dumps({"keys": jwks.keys}, sort_keys=True)


def _key_problem(key: Mapping[str, Any]) -> tuple[str, str] | None:
    """Why ``key`` is no public key to verify a signature with, and the member that
    shows it ("" for the key as a whole); None when it is one."""
    if key.get("kty") == "oct" or str(key.get("alg", "")).startswith("HS"):
        member = "kty" if key.get("kty") == "oct" else "alg"
        return ("is a shared secret (kty oct or alg HS*): whoever can read it can sign "
                "tokens; an issuer verifies with public keys only", member)
    secret = [member for member in _PRIVATE_MEMBERS if member in key]
    if secret:
        return (f"holds private key material ({', '.join(secret)}): publish only public "
                "keys", secret[0])
    import jwt  # only for a config with keys of its own: `aigw check` stays quick without

    try:
        jwt.PyJWK(dict(key))
    except jwt.PyJWTError as exc:
        return f"is not a usable key ({exc})", ""
    return None


def _unused(key: Mapping[str, Any], algorithms: Sequence[str]) -> tuple[str, str] | None:
    """Why no token of an issuer accepting ``algorithms`` could be verified with the
    public ``key``, and the member that says so; None when some could."""
    alg = key.get("alg")
    if alg is not None and alg not in algorithms:
        return (f"is for alg '{alg}', which is not among the issuer's algorithms "
                f"({', '.join(algorithms)})", "alg")
    if key.get("use", "sig") != "sig":
        return f"is for use '{key.get('use')}', not for signatures (sig)", "use"
    if not _verifies(key, algorithms):
        return (f"is of kty '{key.get('kty')}', which none of the issuer's algorithms "
                f"({', '.join(algorithms)}) verifies with", "kty")
    return None


def _verifies(key: Mapping[str, Any], algorithms: Sequence[str]) -> bool:
    """Whether some algorithm of ``algorithms`` verifies with the public ``key``."""
    usable = {_KEY_TYPES[algorithm[:2]] for algorithm in algorithms}
    return key.get("kty") in usable and key.get("use", "sig") == "sig"
