"""The semantic caches of routes (``cache: {semantic: ...}``), checked as ``link`` runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from . import codes
from .diagnostics import DiagnosticSink
from .spec import DeploymentSpec, RouteSpec

if TYPE_CHECKING:
    from .keys import LinkedKey
    from .link import Entry


def check_semantic_caches(
    routes: Mapping[str, Entry[RouteSpec]],
    candidates: Mapping[str, tuple[str, ...]],
    deployments: Mapping[str, Entry[DeploymentSpec]],
    keys: Mapping[str, LinkedKey],
    sink: DiagnosticSink,
) -> None:
    """A semantic cache embeds each conversation through an embeddings route of this
    gateway (``link`` has checked the name), and serves only chat: both are checked
    here, not on the first request; so is a key that may not call the one it names."""

    def kinds(route: str) -> set[str]:
        return {deployments[m].spec.kind for m in candidates.get(route, ()) if m in deployments}

    for name, entry in routes.items():
        cache = entry.spec.cache
        if cache is None or cache.semantic is None:
            continue
        where = entry.value("cache", "semantic", "embeddings")
        embeddings = cache.semantic.embeddings
        if embeddings in routes and (routes[embeddings].spec.pipeline is not None or (
                kinds(embeddings) and "embeddings" not in kinds(embeddings))):
            # (no kinds known: its deployments failed validation, and said so themselves)
            serves = "a pipeline" if routes[embeddings].spec.pipeline is not None \
                else " and ".join(sorted(kinds(embeddings)))
            sink.add(codes.SEMANTIC_NOT_EMBEDDINGS,
                     f"route '{name}' embeds its conversations through route '{embeddings}', "
                     f"which serves {serves}, not embeddings", where,
                     "name a route whose deployments have kind: embeddings")
        served = kinds(name)
        if len(served) == 1 and "chat" not in served:
            sink.add(codes.SEMANTIC_NOT_CHAT,
                     f"route '{name}' serves {next(iter(served))}: its semantic cache would "
                     "never be asked (only chat answers are cached)",
                     entry.value("cache", "semantic"),
                     "remove 'semantic', or put it on a chat route")
    _check_keys(routes, keys, sink)


def _check_keys(routes: Mapping[str, Entry[RouteSpec]], keys: Mapping[str, LinkedKey],
                sink: DiagnosticSink) -> None:
    """A key limited to routes that may call one with a semantic cache, but not the route
    that embeds for it, never has a semantic lookup (runtime/exchange.py skips it)."""
    for name, item in keys.items():
        allowed = item.entry.spec.routes
        for index, route in enumerate(allowed or ()):
            cache = routes[route].spec.cache if route in routes else None
            if cache is not None and cache.semantic is not None and \
                    cache.semantic.embeddings not in (allowed or ()):
                sink.add(codes.SEMANTIC_KEY_NO_EMBEDDINGS,
                         f"key '{name}' may call route '{route}' but not its semantic cache's "
                         f"embeddings route '{cache.semantic.embeddings}': its requests are "
                         "looked up exactly only", item.entry.value("routes", index),
                         f"add '{cache.semantic.embeddings}' to the key's routes")
