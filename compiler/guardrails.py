"""Part of stage 3, link: the ``guardrails:`` section, and the routes that name its entries.

Each guardrail is checked and lowered to what runs (compiler/guardrail_graph.py):
patterns compiled once (one that does not compile, or matches the empty string:
AGW337), PII entities looked up (AGW338), a webhook's URL and headers resolved from
${ENV} (an unset one, or a header that is not ASCII text, leaves the checker disabled,
so its ``on_error`` decides), a credential header written as a literal (AGW340), a URL
aigw cannot call (AGW341), a field its kind needs missing or one it does not take set
(AGW342). A webhook's ``cache`` (on unless ``false``) is lowered with a fingerprint of
the whole guardrail, which the runtime keys its kept verdicts by. A route naming a
guardrail that is not defined is AGW339; guardrails on a pipeline route, AGW343: its
steps' model calls go through routes of their own, whose guardrails apply; on a route
that serves moderation, AGW343 too (a classifier itself), as is one on a route whose
kind has none of its sides (an output guardrail on an embeddings route: nothing comes
back to check).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from . import codes
from .diagnostics import DiagnosticSink, shown_url
from .egress import endpoint
from .guardrail_graph import PII, Guardrail, Matcher, RouteGuardrails, VerdictCache, Webhook
from .mcp_servers import check_literal_headers, not_ascii
from .source import Resolve
from .spec import GuardrailCacheSpec, GuardrailSpec, RouteSpec

if TYPE_CHECKING:
    from .link import Entry

REDACTED = "[REDACTED]"
# The fields only one kind takes, and what each kind needs.
_KIND_FIELDS = {"patterns": "regex", "entities": "pii", "url": "webhook", "headers": "webhook",
                "timeout_s": "webhook", "on_error": "webhook", "cache": "webhook"}
_NEEDS = {"regex": ("patterns", "patterns: ['sk-[A-Za-z0-9]{20,}']"),
          "pii": ("entities", f"entities: [{', '.join(PII)}]"),
          "webhook": ("url", "url: https://guard.internal/check")}


def link_guardrails(
    entries: Mapping[str, Entry[GuardrailSpec]],
    resolve: Resolve,
    secret_looking: Callable[[str], bool],
    sink: DiagnosticSink,
) -> dict[str, Guardrail]:
    """Name -> the guardrail as it runs; problems go to ``sink``."""
    return {name: _link(entry, resolve, secret_looking, sink) for name, entry in entries.items()}


def _link(entry: Entry[GuardrailSpec], resolve: Resolve, secret_looking: Callable[[str], bool],
          sink: DiagnosticSink) -> Guardrail:
    spec = entry.spec
    _check_fields(entry, sink)
    sides = frozenset(spec.on)
    if spec.kind == "regex":
        matchers = tuple(
            matcher for index, pattern in enumerate(spec.patterns or ())
            if (matcher := _pattern(entry, index, pattern, sink)) is not None)
        return Guardrail(entry.name, "regex", spec.action, sides, matchers=matchers)
    if spec.kind == "pii":
        return Guardrail(entry.name, "pii", spec.action, sides, matchers=_entities(entry, sink))
    return Guardrail(entry.name, "webhook", spec.action, sides,
                     webhook=_webhook(entry, resolve, secret_looking, sink))


def _check_fields(entry: Entry[GuardrailSpec], sink: DiagnosticSink) -> None:
    spec = entry.spec
    for name in sorted(spec.model_fields_set & _KIND_FIELDS.keys()):
        if _KIND_FIELDS[name] != spec.kind:
            sink.add(codes.GUARDRAIL_FIELD,
                     f"guardrail '{entry.name}' of kind {spec.kind} does not take {name}",
                     entry.key(name),
                     f"{name}: applies only to kind {_KIND_FIELDS[name]}; remove it here")
    needed, example = _NEEDS[spec.kind]
    if not getattr(spec, needed):
        sink.add(codes.GUARDRAIL_FIELD,
                 f"guardrail '{entry.name}' of kind {spec.kind} has no {needed}",
                 entry.value(needed) if needed in spec.model_fields_set else entry.key(),
                 f"add {example}")
    if len(set(spec.on)) != len(spec.on):
        sink.add(codes.GUARDRAIL_FIELD, f"guardrail '{entry.name}' names a side twice in on:",
                 entry.value("on"), "write on: [input], [output] or [input, output]")


def _pattern(entry: Entry[GuardrailSpec], index: int, pattern: str,
             sink: DiagnosticSink) -> Matcher | None:
    where = entry.value("patterns", index)
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        sink.add(codes.GUARDRAIL_PATTERN,
                 f"guardrail '{entry.name}': pattern {pattern!r} does not compile: {exc}", where,
                 "write a Python regular expression (re module syntax); quote it in YAML with "
                 "single quotes so backslashes stay as written")
        return None
    if compiled.fullmatch("") is not None or compiled.search("") is not None:
        sink.add(codes.GUARDRAIL_PATTERN,
                 f"guardrail '{entry.name}': pattern {pattern!r} matches the empty string, "
                 "so it would match every text", where,
                 "make it match at least one character (+ rather than *)")
        return None
    return Matcher(REDACTED, compiled)


def _entities(entry: Entry[GuardrailSpec], sink: DiagnosticSink) -> tuple[Matcher, ...]:
    named: set[str] = set()
    for index, entity in enumerate(entry.spec.entities or ()):
        if entity in PII:
            named.add(entity)
            continue
        close = difflib.get_close_matches(entity.lower(), list(PII), n=1, cutoff=0.6)
        sink.add(codes.GUARDRAIL_ENTITY,
                 f"guardrail '{entry.name}' names PII entity '{entity}', which aigw does not "
                 "recognize", entry.value("entities", index),
                 (f"did you mean '{close[0]}'? " if close else "")
                 + f"known entities: {', '.join(PII)}")
    # In the recognizers' own order, which decides who claims an overlapping span.
    return tuple(matcher for entity, matcher in PII.items() if entity in named)


def _webhook(entry: Entry[GuardrailSpec], resolve: Resolve,
             secret_looking: Callable[[str], bool], sink: DiagnosticSink) -> Webhook:
    spec = entry.spec
    unset: list[str] = []
    check_literal_headers(f"guardrail '{entry.name}'", entry, spec.headers, secret_looking,
                          codes.GUARDRAIL_LITERAL_SECRET, sink)
    url = resolve(spec.url, entry.value("url"), unset) if spec.url else ""
    headers = {header.lower(): resolve(value, entry.value("headers", header), unset)
               for header, value in spec.headers.items()}
    if url and not unset:
        _check_url(entry, url, sink)
    reason = (f"environment variable {', '.join(unset)} is not set" if unset
              else not_ascii(headers.items()))
    # Verdicts are kept on input texts only (a model's answer is new text each time).
    cache = spec.cache if spec.cache is not False and "input" in spec.on else None
    if cache is True:
        cache = GuardrailCacheSpec()
    return Webhook(url, spec.timeout_s, spec.on_error == "allow", reason, headers,
                   VerdictCache(cache.max_entries, cache.ttl_s) if cache is not None else None,
                   _fingerprint(spec, url, headers))


def _fingerprint(spec: GuardrailSpec, url: str, headers: Mapping[str, str]) -> str:
    """sha256 of the guardrail as it runs: what it was written as, with its ${ENV}s
    resolved (a checker whose token or URL changed may judge otherwise), less its
    description."""
    written = spec.model_dump(mode="json", exclude={"description"})
    written.update(url=url, headers=dict(sorted(headers.items())))
    return hashlib.sha256(json.dumps(written, sort_keys=True).encode()).hexdigest()


def _check_url(entry: Entry[GuardrailSpec], url: str, sink: DiagnosticSink) -> None:
    problem = endpoint(url, "headers", "a checker's")
    if isinstance(problem, str):
        sink.add(codes.GUARDRAIL_URL, f"guardrail '{entry.name}' cannot call "
                 f"{shown_url(url)!r}: {problem}", entry.value("url"),
                 "write the checker's endpoint, e.g. https://guard.internal/check")


def check_route_guardrails(
    entry: Entry[RouteSpec], known: Mapping[str, object], sink: DiagnosticSink,
    unknown: Callable[..., None],
) -> None:
    """Each guardrail ``entry`` names is defined (else ``unknown(name=, position=)``
    reports it), once, and the route is one they apply to."""
    spec = entry.spec
    if spec.guardrails and spec.pipeline is not None:
        sink.add(codes.GUARDRAIL_ROUTE,
                 f"route '{entry.name}' runs pipeline '{spec.pipeline}': guardrails do not "
                 "apply to it", entry.key("guardrails"),
                 "put them on the routes the pipeline's llm steps call (model: <route>)")
    seen: set[str] = set()
    for index, name in enumerate(spec.guardrails):
        if name in seen:
            sink.add(codes.GUARDRAIL_ROUTE,
                     f"route '{entry.name}' lists guardrail '{name}' twice",
                     entry.value("guardrails", index), "list each guardrail once")
        seen.add(name)
        if name not in known:
            unknown(name=name, position=entry.value("guardrails", index))


# What each kind of route's guardrails check: the texts it sends a model (embeddings'
# inputs, a rerank call's query and documents, an image's prompt, a speech's input and
# instructions, a transcription's prompt) and those it returns (a transcript, an image's
# revised_prompt). A moderation model is a classifier itself: none.
_CHECKED = {"chat": ("input", "output"), "embeddings": ("input",), "rerank": ("input",),
            "image": ("input", "output"), "speech": ("input",),
            "transcription": ("input", "output"), "moderation": (),
            # A realtime session's events (audio, mostly) are relayed as they come: none.
            "realtime": ()}


# Why a kind's routes have no guardrails, for the hint.
_UNCHECKED = {"moderation": "a moderation model is a classifier itself",
              "realtime": "a realtime session's events (audio, mostly) are relayed as they "
                          "come, unread"}


def check_served_kinds(
    routes: Mapping[str, Entry[RouteSpec]], kinds: Callable[[str], set[str]],
    sides: Callable[[str], frozenset[str] | None], sink: DiagnosticSink,
) -> None:
    """Guardrails on a route that serves one kind only check the sides that kind has
    (``_CHECKED``): on a moderation route none, and a guardrail listed on a route where
    none of its sides (``sides(name)``; None: not defined) is checked would check
    nothing, and the route's texts would go out, or come back, as sent."""
    for name, entry in routes.items():
        served = kinds(name)
        if not entry.spec.guardrails or len(served) != 1:
            continue
        kind = next(iter(served))
        checked = _CHECKED.get(kind, ("input", "output"))
        if not checked:
            sink.add(codes.GUARDRAIL_ROUTE,
                     f"route '{name}' serves {kind}: guardrails do not apply to it",
                     entry.key("guardrails"), _UNCHECKED[kind] + "; remove them here, and "
                     "put guardrails on the routes whose texts you want checked")
            continue
        for index, guardrail in enumerate(entry.spec.guardrails):
            on = sides(guardrail)
            if on is not None and not on & set(checked):
                sink.add(codes.GUARDRAIL_ROUTE,
                         f"route '{name}' serves {kind}, whose {checked[0]} alone guardrails "
                         f"check: guardrail '{guardrail}' (on: [{', '.join(sorted(on))}]) "
                         "would check nothing", entry.value("guardrails", index),
                         f"add {checked[0]} to the guardrail's on:, or remove it here")


def route_guardrails(
    spec: RouteSpec, guardrails: Mapping[str, Guardrail]
) -> RouteGuardrails | None:
    """The route's guardrails by direction; None when it has none (no work per request)."""
    if not spec.guardrails:
        return None
    named = [guardrails[name] for name in dict.fromkeys(spec.guardrails)]
    return RouteGuardrails(
        input=tuple(g for g in named if "input" in g.sides),
        output=tuple(g for g in named if "output" in g.sides),
    )
