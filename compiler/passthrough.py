"""Part of stage 3, link: the provider APIs apps reach raw (``passthrough:``).

An entry names a provider (AGW301 where it is not defined) of a type whose adapter
authenticates a request with headers it can put on any request: OpenAI and the servers
that speak its API (``Authorization: Bearer``), Azure OpenAI (``api-key``), Anthropic
(``x-api-key`` and ``anthropic-version``), Gemini (``x-goog-api-key``) and Cohere
(``Bearer``). Echo has no upstream, and Bedrock and Vertex sign each request (SigV4 over
its body, a service account's short-lived token) inside their adapters, with no seam a
raw request could go through: AGW356. Its paths are globs compiled here, once, into one
regular expression the runtime matches a request's path with (AGW357 for a glob that
cannot be a path); a key naming a pass-through that is not defined is AGW355 (in link).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import codes
from .diagnostics import DiagnosticSink
from .spec import PassthroughSpec

if TYPE_CHECKING:
    from .link import Entry, LinkedProvider

# Provider types whose adapter authenticates with headers alone (runtime/providers/raw.py:
# their adapters' ``raw_target``); tests/runtime/test_passthrough_seam.py keeps the two in
# step.
PASSTHROUGH_TYPES = frozenset({"openai", "openai_compatible", "vllm", "azure_openai",
                               "anthropic", "gemini", "cohere"})
_WHY_NOT = {
    "echo": "answers locally and has no upstream API to pass requests to",
    "bedrock": "signs each request with AWS SigV4 over its body inside its adapter",
    "vertex": "authenticates with a service account's short-lived token inside its adapter",
}


@dataclass(frozen=True, slots=True)
class LinkedPassthrough:
    entry: Entry[PassthroughSpec]
    pattern: str  # the regular expression of its paths, matched whole


def link_passthrough(
    entries: Mapping[str, Entry[PassthroughSpec]],
    providers: Mapping[str, LinkedProvider],
    sink: DiagnosticSink,
) -> dict[str, LinkedPassthrough]:
    """Name -> the pass-through with its paths compiled; problems go to ``sink`` (the
    provider's name was checked by link)."""
    linked: dict[str, LinkedPassthrough] = {}
    for name, entry in entries.items():
        provider = providers.get(entry.spec.provider)
        if provider is not None and provider.entry.spec.type not in PASSTHROUGH_TYPES:
            kind = provider.entry.spec.type
            sink.add(codes.PASSTHROUGH_PROVIDER,
                     f"pass-through '{name}' uses provider '{entry.spec.provider}' of type "
                     f"'{kind}', which {_WHY_NOT.get(kind, 'has no way to authenticate it')}",
                     entry.value("provider"),
                     "pass-through serves providers of type "
                     f"{', '.join(sorted(PASSTHROUGH_TYPES))}")
        parts: list[str] = []
        for index, glob in enumerate(entry.spec.paths):
            problem = _glob_problem(glob)
            if problem is not None:
                sink.add(codes.PASSTHROUGH_PATH,
                         f"pass-through '{name}' has path {glob!r}, {problem}",
                         entry.value("paths", index),
                         "write a path from the provider's root, e.g. /v1/vector_stores/** "
                         "(* within one segment, /** any number of segments)")
                continue
            parts.append(glob_regex(glob))
        linked[name] = LinkedPassthrough(entry, "|".join(f"(?:{part})" for part in parts))
    return linked


def _glob_problem(glob: str) -> str | None:
    """What keeps ``glob`` from being a path glob, said after the glob; None if nothing."""
    if not glob.startswith("/"):
        return "which does not start with /"
    if any(char in glob for char in "?#") or any(char.isspace() for char in glob):
        return "which holds a query, a fragment or a space (only the path is matched)"
    for segment in glob[1:].split("/"):
        if segment in (".", ".."):
            return f"which holds a '{segment}' segment"
        if "**" in segment and segment != "**":
            return "where ** is part of a segment (it stands for whole segments only)"
        if not segment and glob != "/":
            return "which holds an empty segment (//, or a trailing /)"
    return None


def glob_regex(glob: str) -> str:
    """The regular expression of a path glob (one ``_glob_problem`` has nothing against):
    ``*`` any text within a segment, ``/**`` any number of segments, none included.

    >>> glob_regex("/v1/vector_stores/**")
    '/v1/vector_stores(?:/.*)?'
    >>> glob_regex("/v1beta/models/*:countTokens")
    '/v1beta/models/[^/]*:countTokens'
    """
    pattern = ""
    segments = glob[1:].split("/")
    for index, segment in enumerate(segments):
        if segment == "**":
            pattern += "(?:/.*)?" if index == len(segments) - 1 else "(?:/[^/]+)*"
        else:
            pattern += "/" + "[^/]*".join(re.escape(piece) for piece in segment.split("*"))
    return pattern
