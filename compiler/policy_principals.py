"""What a policy says of its principal that a client's ``user`` can get around.

A request that names an end user (its ``user`` field or the user header) has
``User::"id"`` as principal, a child of its key and the key's team; one that names
none has the key. So a policy that matches keys only (``principal == ApiKey::"k"``,
``principal is ApiKey``, in its scope or in a ``when``) misses the key's end users:
a forbid so written is escaped by sending a ``user`` (AGW413), a permit refuses them
(AGW414). And the ``user`` is the client's own word, checked by nobody: a policy that
names ``User::"alice"`` without tying it to a key or team (``principal in
ApiKey::"app"``) holds for any key that sends "alice" (AGW416).

These functions read cedarpy's JSON form of one policy and return findings with
offsets into its text; ``policies.parse_policies`` positions and reports them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import codes
from .codes import Code
from .policy_analysis import entity_refs

# The principals an end user's entity is in: a User tied to one of these is that key's
# (or team's, or a JWT caller's) user, as its app names it.
_OWNERS = ("ApiKey", "Subject", "Issuer", "Team")
# The principals an end user's User entity is a child of: matching one with == or is
# misses its requests that name an end user (AGW413/414).
_CALLERS = ("ApiKey", "Subject")
_WHO = {"ApiKey": "key", "Subject": "token caller"}
_AMONG = {"ApiKey": 'ApiKey::"k"', "Subject": 'Issuer::"i"'}


@dataclass(frozen=True, slots=True)
class PrincipalFinding:
    """One diagnostic about a policy, at ``offset`` (``width`` characters) in its text."""

    code: Code
    message: str
    offset: int
    width: int
    hint: str


def principal_findings(
    text: str, body: Mapping[str, Any], code: Collection[int]
) -> list[PrincipalFinding]:
    """AGW413/414 (keys matched without their end users) and AGW416 (an end user named
    without a key) for one policy; ``code`` holds the offsets of ``text`` outside
    comments and strings."""
    return [*_key_only(text, body, code), *_untied_users(text, body, code)]


def _key_only(
    text: str, body: Mapping[str, Any], code: Collection[int]
) -> Iterator[PrincipalFinding]:
    forbid = body.get("effect") == "forbid"
    scope = body.get("principal") or {}
    entity = scope.get("entity") or {}
    if scope.get("op") == "==" and entity.get("type") in _CALLERS:
        kind, key = entity["type"], json.dumps(entity.get("id", ""))
        offset, width = _find(text, code, r"\bprincipal\b")
        yield _key_finding(forbid, f"principal == {kind}::{key}", offset, width,
                           f"write principal in {kind}::{key}: it matches the {_WHO[kind]} "
                           "and the end users of its requests")
    elif scope.get("op") == "is" and scope.get("entity_type") in _CALLERS:
        kind = scope["entity_type"]
        owner = (scope.get("in") or {}).get("entity") or {}
        written = f"principal is {kind}" + (
            f" in {owner.get('type')}::{json.dumps(owner.get('id', ''))}" if owner else "")
        offset, width = _find(text, code, rf"\bprincipal\s+is\s+{kind}\b")
        hint = (f"write principal in {written.partition(' in ')[2]}: it matches its "
                f"{_WHO[kind]}s and the end users of their requests" if owner
                else f"write principal alone: it matches every {_WHO[kind]} and end user")
        yield _key_finding(forbid, written, offset, width, hint)
    after = _when_offset(text, code)
    for node in _when_bodies(body):
        for kind, test in _key_tests(node):
            if test is None:
                offset, width = _find(text, code, rf"\bprincipal\s+is\s+{kind}\b", after)
                yield _key_finding(forbid, f"principal is {kind} in a when condition", offset,
                                   width, "leave the test out, or test principal in "
                                   f'{_AMONG[kind]} (or Team::"t"): that matches the '
                                   f"{_WHO[kind]}s and the end users of their requests")
                continue
            literal = rf"{kind}\s*::\s*{re.escape(json.dumps(test))}"
            offset, width = _find(
                text, code, rf"\bprincipal\s*==\s*{literal}|{literal}\s*==\s*principal\b", after)
            yield _key_finding(forbid, f"principal == {kind}::{json.dumps(test)} in a when "
                               "condition", offset, width,
                               f"write principal in {kind}::{json.dumps(test)}: it matches the "
                               f"{_WHO[kind]} and the end users of its requests")


def _key_finding(forbid: bool, written: str, offset: int, width: int,
                 hint: str) -> PrincipalFinding:
    who = "caller" if "Subject" in written.partition(" in ")[0] else "key"
    keys = f"that {who}" if "==" in written else f"those {who}s"
    missed = (f"does not apply to requests of {keys} that name an end user (their principal "
              f"is User::, a child of the {who})")
    if forbid:
        return PrincipalFinding(codes.CEDAR_KEY_EQUALS, f"forbid with {written} {missed}, so a "
                                "client escapes it by sending a user", offset, width, hint)
    return PrincipalFinding(codes.CEDAR_KEY_EQUALS_PERMIT, f"permit with {written} {missed}, "
                            "so those are refused", offset, width, hint)


def _when_bodies(body: Mapping[str, Any]) -> Iterator[Any]:
    for condition in body.get("conditions", ()):
        if condition.get("kind") == "when":
            yield condition.get("body")


def _key_tests(node: Any) -> Iterator[tuple[str, str | None]]:
    """The callers a condition matches with ``principal == ApiKey::"k"`` (or ``Subject``),
    as (type, id), and its ``principal is ApiKey`` tests, as (type, None), outside any
    ``!`` (a negated test makes the policy apply to more, not fewer, principals)."""
    if isinstance(node, list):
        for item in node:
            yield from _key_tests(item)
        return
    if not isinstance(node, dict):
        return
    if "!" in node:
        return
    equal = node.get("==")
    if isinstance(equal, dict):
        sides = (equal.get("left"), equal.get("right"))
        for one, other in (sides, sides[::-1]):
            uid = _entity(other)
            if _is_principal(one) and uid is not None and uid.get("type") in _CALLERS:
                yield str(uid["type"]), str(uid.get("id", ""))
                return
    test = node.get("is")
    if isinstance(test, dict) and _is_principal(test.get("left")) \
            and test.get("entity_type") in _CALLERS:
        yield str(test["entity_type"]), None
        return
    for value in node.values():
        yield from _key_tests(value)


def _untied_users(
    text: str, body: Mapping[str, Any], code: Collection[int]
) -> Iterator[PrincipalFinding]:
    users = list(dict.fromkeys(ref.id for ref in entity_refs(body) if ref.type == "User"))
    if not users or _tied(body):
        return
    effect = "forbid" if body.get("effect") == "forbid" else "permit"
    named = ", ".join(f"User::{json.dumps(user)}" for user in users)
    first = json.dumps(users[0])
    offset, width = _find(text, code, rf"\bUser\s*::\s*{re.escape(first)}")
    what = ("any key that sends it gets what this permits" if effect == "permit"
            else "this holds only while a client sends it, and one that sends another id (or "
                 "none) escapes it")
    yield PrincipalFinding(
        codes.CEDAR_USER_UNTIED,
        f"{effect} names {named} but no key or team: a user id is the client's own word "
        f"(the request's user field or the user header), so {what}", offset, width,
        "aigw authenticates keys, not users: tie the policy to the key (or team) whose app "
        'vouches for its user ids, with principal in ApiKey::"app" in its scope or when { '
        'principal in ApiKey::"app" && ... }')


def _tied(body: Mapping[str, Any]) -> bool:
    """Whether the policy holds only for principals in some key or team: its scope says
    ``principal in ApiKey::"k"`` (or Team, or ``is User in`` one), or a ``when`` has such
    a test among its conjuncts."""
    scope = body.get("principal") or {}
    owner = scope.get("entity") if scope.get("op") == "in" else \
        (scope.get("in") or {}).get("entity") if scope.get("op") == "is" else None
    if isinstance(owner, dict) and owner.get("type") in _OWNERS:
        return True
    return any(_owned(part) for node in _when_bodies(body) for part in _conjuncts(node))


def _conjuncts(node: Any) -> Iterator[Any]:
    both = node.get("&&") if isinstance(node, dict) else None
    if isinstance(both, dict):
        yield from _conjuncts(both.get("left"))
        yield from _conjuncts(both.get("right"))
    else:
        yield node


def _owned(node: Any) -> bool:
    """``principal in ApiKey::"k"`` (a Team, or a set of them) or ``principal is User in``
    one."""
    if not isinstance(node, dict):
        return False
    test = node.get("in")
    if isinstance(test, dict) and _is_principal(test.get("left")):
        right = test.get("right")
        items = right.get("Set") if isinstance(right, dict) and "Set" in right else [right]
        uids = [_entity(item) for item in items or ()]
        return bool(uids) and all(uid is not None and uid.get("type") in _OWNERS
                                  for uid in uids)
    test = node.get("is")
    if isinstance(test, dict) and _is_principal(test.get("left")) and "in" in test:
        uid = _entity(test["in"])
        return uid is not None and uid.get("type") in _OWNERS
    return False


def _is_principal(node: Any) -> bool:
    return isinstance(node, dict) and node.get("Var") == "principal"


def _entity(node: Any) -> Mapping[str, Any] | None:
    value = node.get("Value") if isinstance(node, dict) else None
    uid = value.get("__entity") if isinstance(value, dict) else None
    return uid if isinstance(uid, dict) else None


def _find(text: str, code: Collection[int], pattern: str, after: int = 0) -> tuple[int, int]:
    """The offset and width of the first match of ``pattern`` in code at or past
    ``after``, else of the policy's effect."""
    for found in re.finditer(pattern, text):
        if found.start() >= after and found.start() in code:
            return found.start(), len(found.group())
    for found in re.finditer(r"\b(?:permit|forbid)\b", text):
        if found.start() in code:
            return found.start(), len(found.group())
    return 0, 1


def _when_offset(text: str, code: Collection[int]) -> int:
    """Where the first ``when`` is (conditions' matches are looked for from there)."""
    for found in re.finditer(r"\bwhen\b", text):
        if found.start() in code:
            return found.start()
    return len(text)
