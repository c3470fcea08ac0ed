"""The aigw compiler: a gateway directory in, a frozen routing Graph (or diagnostics) out.

    load -> validate -> link -> policies -> pipelines -> freeze

It imports neither the runtime nor any network library, so ``aigw check`` runs
fast in a bare CI job.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import codes
from .authorization import check_cedar
from .diagnostics import Diagnostic, DiagnosticSink, render_github, render_json, render_text
from .freeze import freeze
from .graph import Graph
from .link import link
from .load import GATEWAY_FILE, load
from .pipelines import compile_pipelines
from .source import Position, SourceFile
from .validate import validate

__all__ = [
    "CompileResult",
    "Diagnostic",
    "Graph",
    "compile_gateway",
    "render_github",
    "render_json",
    "render_text",
]


@dataclass(frozen=True, slots=True)
class CompileResult:
    """The graph (None when any error was found) and every diagnostic, sorted by position."""

    graph: Graph | None
    diagnostics: tuple[Diagnostic, ...]
    sources: Mapping[str, SourceFile]

    @property
    def ok(self) -> bool:
        return self.graph is not None

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(item for item in self.diagnostics if item.is_error)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(item for item in self.diagnostics if not item.is_error)


def compile_gateway(
    root: str | Path, environ: Mapping[str, str] | None = None, *, now: float | None = None
) -> CompileResult:
    """Compile the gateway directory ``root``; ${ENV} references read ``environ`` (or os.environ).
    Key expiry warnings are measured from ``now`` (epoch seconds; default the clock's).

    >>> result = compile_gateway(".")
    >>> result.ok, result.graph.fingerprint[:12] if result.graph else None  # doctest: +SKIP
    (True, '3f1c0a9e2b7d')
    """
    root = Path(root)
    environ = os.environ if environ is None else environ
    sink = DiagnosticSink()
    sources: Mapping[str, SourceFile] = {}
    try:
        loaded = load(root, sink)
        sources = loaded.sources
        validated = validate(loaded, sink)
        linked = link(validated, environ, sink, time.time() if now is None else now, root)
        checked = check_cedar(loaded.policies, linked, validated, sink)
        policies = checked.policies
        pipelines = compile_pipelines(validated, linked, sources, sink)
        graph = None
        if not sink.has_errors:
            warnings = sink.sorted()
            graph = freeze(linked, policies, sources, root.resolve(), warnings, pipelines,
                           checked=checked)
    except Exception as exc:  # the boundary: a compiler bug is a diagnostic, not a traceback
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        sink.add(codes.INTERNAL, f"internal compiler error: {detail}", Position(GATEWAY_FILE, 1, 1),
                 "this is a bug in aigw; please report it with the config that caused it")
        graph = None
    return CompileResult(graph, sink.sorted(), sources)
