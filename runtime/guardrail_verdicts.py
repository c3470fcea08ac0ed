"""Webhook guardrails' verdicts on input texts, kept in the process for a while.

A chat app sends its whole conversation again every turn, so without them a webhook on
``input`` was asked about every earlier message again each turn: its cost (often a paid
moderation API) and its latency grew with the conversation. Only definite verdicts are
kept (an allow, a block, a redaction with its text), never a checker that did not answer,
so its ``on_error`` is decided afresh each time.

Each guardrail has its own least-recently-used entries (its ``cache.max_entries``, each
for its ``cache.ttl_s``), keyed by the sha256 of its name, its fingerprint and what the
checker is sent (the text, the direction, and the route, key and team asking, which a
checker may judge by: one team's allow is not another's): the text itself is not kept,
and a guardrail a reload changed (another fingerprint) reuses none of the old verdicts.
"""

from __future__ import annotations

import collections
import hashlib
import json
import time
from collections.abc import Callable, Iterable

from aigw.compiler.guardrail_graph import Guardrail, VerdictCache

# What the checker answered: allow, and the text that replaces the one sent (None: as sent).
Verdict = tuple[bool, str | None]
# What the checker is sent: {text, direction, route, key, team}.
Asked = dict[str, str | None]


class _Kept:
    """One guardrail's verdicts, as one fingerprint of it gave them."""

    __slots__ = ("entries", "fingerprint", "settings")

    def __init__(self, fingerprint: str, settings: VerdictCache) -> None:
        self.fingerprint = fingerprint
        self.settings = settings
        self.entries: collections.OrderedDict[bytes, tuple[float, Verdict]] = (
            collections.OrderedDict())


class Verdicts:
    """The verdicts of every webhook guardrail that keeps them, shared by the graphs a
    reload brings (a guardrail it leaves as it was keeps its verdicts)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_name: dict[str, _Kept] = {}

    def get(self, guardrail: Guardrail, asked: Asked) -> Verdict | None:
        """What ``guardrail``'s checker answered to ``asked``, if kept and not expired."""
        kept = self._by_name.get(guardrail.name)
        webhook = guardrail.webhook
        if kept is None or webhook is None or kept.fingerprint != webhook.fingerprint:
            return None
        key = _key(guardrail, asked)
        entry = kept.entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del kept.entries[key]
            return None
        kept.entries.move_to_end(key)
        return entry[1]

    def put(self, guardrail: Guardrail, asked: Asked, verdict: Verdict) -> None:
        webhook = guardrail.webhook
        if webhook is None or webhook.cache is None:
            return
        kept = self._by_name.get(guardrail.name)
        if kept is None or kept.fingerprint != webhook.fingerprint:
            # Changed by a reload: the old verdicts were another configuration's (maybe
            # another checker's), and none of them is reused.
            kept = self._by_name[guardrail.name] = _Kept(webhook.fingerprint, webhook.cache)
        key = _key(guardrail, asked)
        kept.entries[key] = (self._clock() + kept.settings.ttl_s, verdict)
        kept.entries.move_to_end(key)
        while len(kept.entries) > kept.settings.max_entries:
            kept.entries.popitem(last=False)

    def retain(self, guardrails: Iterable[Guardrail]) -> None:
        """Drop the verdicts of guardrails no longer configured as they were (a reload
        took them out, or changed them), so that they do not stay for the process's life."""
        current = {g.name: g.webhook.fingerprint for g in guardrails if g.webhook is not None}
        for name in [name for name, kept in self._by_name.items()
                     if current.get(name) != kept.fingerprint]:
            del self._by_name[name]


def _key(guardrail: Guardrail, asked: Asked) -> bytes:
    webhook = guardrail.webhook
    assert webhook is not None
    digest = hashlib.sha256(f"{guardrail.name}\0{webhook.fingerprint}\0".encode())
    # As JSON (ASCII): a text may hold a lone surrogate (\ud800), which UTF-8 cannot encode.
    digest.update(json.dumps(asked, sort_keys=True).encode())
    return digest.digest()
