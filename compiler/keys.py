"""Part of stage 3, link: the API keys (``keys:``), each secret down to its sha256 digest.

A key's secret is written as ``${ENV}`` (resolved here; unset, that secret is not
accepted) or as its digest. During a rotation a key lists its earlier secrets under
``previous:``, each accepted as the same key until its ``until``, whether or not the
current secret's ``${ENV}`` is set where aigw serves (AGW309 warns that it is not). ``expires`` and
``until`` are compiled to epoch seconds, so a request compares numbers and never parses
a date. Checked: a literal secret (AGW310), one secret under two keys or twice under
one (AGW315), a key expired or expiring within a week (AGW348), a previous secret
past its ``until`` that is still listed (AGW349).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import codes
from .diagnostics import DiagnosticSink
from .source import Position, Resolve
from .spec import KeySpec, moment_epoch

if TYPE_CHECKING:
    from .link import Entry

# How far ahead `aigw check` looks for keys about to expire.
EXPIRY_NOTICE_S = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class LinkedPrevious:
    sha256: str | None  # None: its ${ENV} secret is unset, so it is not accepted
    until: float | None  # epoch seconds from which it is refused; None: while it is listed


@dataclass(frozen=True, slots=True)
class LinkedKey:
    entry: Entry[KeySpec]
    sha256: str | None  # None: its ${ENV} secret is unset (its previous ones may sign in)
    expires_at: float | None = None  # epoch seconds from which it is refused
    previous: tuple[LinkedPrevious, ...] = ()


def link_keys(
    keys: Mapping[str, Entry[KeySpec]],
    resolve: Resolve,
    now: float,
    sink: DiagnosticSink,
) -> dict[str, LinkedKey]:
    """Name -> the key with its digests and dates; problems go to ``sink``.

    ``now`` (epoch seconds) is what "already expired" and "within a week" are measured
    from; it only decides warnings, never what the graph holds."""
    linked: dict[str, LinkedKey] = {}
    for name, entry in keys.items():
        spec = entry.spec
        digest = _digest(f"key '{name}'", spec.secret, spec.sha256, entry.value("secret"),
                         resolve, sink)
        previous = tuple(
            LinkedPrevious(
                _digest(f"key '{name}' previous[{index}]", item.secret, item.sha256,
                        entry.value("previous", index, "secret"), resolve, sink),
                _epoch(item.until),
            )
            for index, item in enumerate(spec.previous)
        )
        expires_at = _epoch(spec.expires)
        linked[name] = LinkedKey(entry, digest, expires_at, previous)
        _check_dates(linked[name], now, sink)
    _check_shared_secrets(linked, sink)
    return linked


def _digest(
    what: str, secret: str | None, sha256: str | None, position: Position, resolve: Resolve,
    sink: DiagnosticSink,
) -> str | None:
    if secret is None:
        return sha256
    if "${" not in secret:
        sink.add(codes.LITERAL_SECRET, f"{what} has a literal secret in the config", position,
                 "write secret: ${ENV_VAR}, or store only its sha256: digest")
        resolved: str | None = secret
    else:
        unset: list[str] = []
        resolved = resolve(secret, position, unset)
        resolved = None if unset or not resolved else resolved
    return hashlib.sha256(resolved.encode()).hexdigest() if resolved is not None else None


def _epoch(text: str | None) -> float | None:
    return None if text is None else moment_epoch(text)  # validate made sure it parses


def _check_dates(key: LinkedKey, now: float, sink: DiagnosticSink) -> None:
    entry = key.entry
    if key.expires_at is not None and key.expires_at <= now:
        sink.add(codes.KEY_EXPIRES, f"key '{entry.name}' expired at {shown_moment(key.expires_at)}",
                 entry.value("expires"),
                 "its clients get 401 key_expired; give them a new key, or move expires later")
    elif key.expires_at is not None and key.expires_at <= now + EXPIRY_NOTICE_S:
        sink.add(codes.KEY_EXPIRES,
                 f"key '{entry.name}' expires at {shown_moment(key.expires_at)}, within 7 days",
                 entry.value("expires"),
                 "rotate it now (new secret, the old one under previous:), or move expires later")
    for index, item in enumerate(key.previous):
        if item.until is not None and item.until <= now:
            sink.add(codes.PREVIOUS_SECRET_RETIRED,
                     f"key '{entry.name}' previous[{index}] is refused since "
                     f"{shown_moment(item.until)}", entry.value("previous", index, "until"),
                     "the rotation is over: take this entry out of previous:")


def _check_shared_secrets(linked: Mapping[str, LinkedKey], sink: DiagnosticSink) -> None:
    """Every secret, current or previous, identifies one key: a shared one could not be
    revoked alone, and a request bearing it would be one key's or the other's by chance.
    Current secrets claim first, so a clash names the previous entry, not the key."""
    owner_of_digest: dict[str, str] = {}
    for name, key in linked.items():
        if key.sha256 is None:
            continue
        if key.sha256 in owner_of_digest:
            sink.add(codes.DUPLICATE_KEY_SECRET,
                     f"key '{name}' has the same secret as {owner_of_digest[key.sha256]}",
                     key.entry.key(), "give every key its own secret, so each can be revoked alone")
        owner_of_digest.setdefault(key.sha256, f"key '{name}'")
    for name, key in linked.items():
        for index, item in enumerate(key.previous):
            if item.sha256 is None:
                continue
            if item.sha256 in owner_of_digest:
                sink.add(codes.DUPLICATE_KEY_SECRET,
                         f"key '{name}' previous[{index}] has the same secret as "
                         f"{owner_of_digest[item.sha256]}", key.entry.value("previous", index),
                         "previous: lists the secrets a rotation replaced, each one key's; "
                         "take this entry out")
            owner_of_digest.setdefault(item.sha256, f"key '{name}' previous[{index}]")


def shown_moment(epoch: float) -> str:
    """``2026-12-15T00:00:00Z`` for an epoch second: how expiry is shown and logged."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat().replace("+00:00", "Z")
