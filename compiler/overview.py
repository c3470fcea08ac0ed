"""What an operator is shown of a graph's routes, MCP servers and keys: JSON-ready, no
secret in it.

``aigw compile --format json`` and ``GET /admin/status`` both list routes, MCP servers
and keys;
they build each entry here, so the two say the same thing in the same words. A key is
shown by its name, never its secret or its digest; a guardrail webhook or an MCP server
by its URL (shown as diagnostics show one: user info and query hidden) and the names of
the headers it sends, never their values (a credential among them).

>>> route_cache(RouteCache(3600.0, "team"))
{'ttl_s': 3600.0, 'scope': 'team', 'semantic': None, 'by_model': False}
"""

from __future__ import annotations

from collections.abc import Iterable

from .diagnostics import shown_url
from .graph import (
    ApiKey,
    Graph,
    Issuer,
    IssuerTeams,
    McpServer,
    Passthrough,
    PreviousSecret,
    RouteCache,
)
from .guardrail_graph import Guardrail, RouteGuardrails
from .keys import shown_moment


def route_cache(cache: RouteCache | None) -> dict[str, object] | None:
    """A route's response cache, with its semantic lookup if it has one; None: no cache."""
    if cache is None:
        return None
    semantic = cache.semantic
    return {
        "ttl_s": cache.ttl_s,
        "scope": cache.scope,
        "semantic": None if semantic is None else {
            "embeddings": semantic.embeddings,
            "threshold": semantic.threshold,
            "max_prompt_tokens": semantic.max_prompt_tokens,
            "timeout_s": semantic.timeout_s,
        },
        # Its deployments' answers kept apart by model (not one model, nor one_model).
        "by_model": cache.by_model,
    }


def each_guardrail(guardrails: RouteGuardrails | None) -> list[Guardrail]:
    """A route's guardrails, each once: the graph keeps them by side, input first."""
    if guardrails is None:
        return []
    return list({g.name: g for g in (*guardrails.input, *guardrails.output)}.values())


def route_guardrails(guardrails: RouteGuardrails | None) -> list[dict[str, object]]:
    """A route's guardrails, each once (input side first), with the sides it checks."""
    return [_guardrail(guardrail) for guardrail in each_guardrail(guardrails)]


def _guardrail(guardrail: Guardrail) -> dict[str, object]:
    shown: dict[str, object] = {
        "name": guardrail.name,
        "kind": guardrail.kind,
        "on": sorted(guardrail.sides),
        "action": guardrail.action,
    }
    webhook = guardrail.webhook
    if webhook is not None:
        shown["webhook"] = {
            "url": shown_url(webhook.url),
            "timeout_s": webhook.timeout_s,
            "on_error": "allow" if webhook.allow_on_error else "block",
            "headers": sorted(webhook.headers),  # names only: a value may be a credential
            "disabled_reason": webhook.disabled_reason,
            "cache": None if webhook.cache is None else {
                "max_entries": webhook.cache.max_entries, "ttl_s": webhook.cache.ttl_s},
        }
    return shown


def mcp_server(server: McpServer) -> dict[str, object]:
    """An MCP server of ``mcp_servers:``: where it is, which tools pass, why it is off."""
    shown: dict[str, object] = {
        "url": shown_url(server.url),
        "timeout_s": server.timeout_s,
        "tools": None if server.tools is None else sorted(server.tools),
        "headers": sorted(server.headers),  # names only: a value may be a credential
        "disabled_reason": server.disabled_reason,
    }
    if server.stdio is not None:
        shown.update(command=list(server.stdio.command), cwd=server.stdio.cwd,
                     env=sorted(server.stdio.env),  # names only, as headers
                     idle_timeout_s=server.stdio.idle_timeout_s,
                     max_sessions=server.stdio.max_sessions)
    return shown


def passthrough(entry: Passthrough) -> dict[str, object]:
    """A pass-through of ``passthrough:``: its provider, path globs and methods."""
    return {"provider": entry.provider.name, "paths": list(entry.globs),
            "methods": sorted(entry.methods)}


def keys(graph: Graph) -> list[tuple[ApiKey, list[PreviousSecret]]]:
    """Every key the graph accepts, by name, with its rotations' earlier secrets."""
    earlier: dict[str, list[PreviousSecret]] = {}
    for previous in graph.previous_by_sha256.values():
        earlier.setdefault(previous.key.name, []).append(previous)
    return [(key, earlier.get(key.name, []))
            for key in sorted(graph.keys_by_name.values(), key=lambda key: key.name)]


def issuers(graph: Graph) -> list[Issuer]:
    """Every issuer whose tokens the graph accepts, by name."""
    return sorted(graph.issuers_by_iss.values(), key=lambda issuer: issuer.name)


def issuer_entry(issuer: Issuer) -> dict[str, object]:
    """One issuer as configured: what its tokens must carry, and whose callers they are."""
    team = issuer.team
    return {
        "issuer": issuer.issuer,
        "jwks": issuer.jwks_url or ("jwks_file" if issuer.jwks_file is not None else "jwks"),
        "audiences": list(issuer.audiences),
        "algorithms": list(issuer.algorithms),
        "team": {"claim": team.claim, "map": {value: each.name for value, each in team.choices},
                 "default": team.default.name if team.default is not None else None}
        if isinstance(team, IssuerTeams) else team.name if team is not None else None,
        "principal_claim": issuer.principal_claim,
        "routes": None if issuer.routes is None else sorted(issuer.routes),
        "mcp_servers": None if issuer.mcp_servers is None else sorted(issuer.mcp_servers),
        "passthrough": None if issuer.passthrough is None else sorted(issuer.passthrough),
    }


def key_entry(
    key: ApiKey, previous: Iterable[PreviousSecret], now: float | None = None
) -> dict[str, object]:
    """One key as configured: whose it is, what it may reach, and its secrets' end dates;
    given ``now`` (epoch seconds), also whether it has expired and which earlier secret
    is refused already (what a running gateway says; a compiled config has no now)."""
    entry: dict[str, object] = {
        "team": key.team.name if key.team else None,
        "admin": key.admin,
        "routes": None if key.routes is None else sorted(key.routes),
        "mcp_servers": None if key.mcp_servers is None else sorted(key.mcp_servers),
        "passthrough": None if key.passthrough is None else sorted(key.passthrough),
        "expires_at": None if key.expires_at is None else shown_moment(key.expires_at),
        "previous": [_previous(item, now) for item in previous],
    }
    if now is not None:
        entry["expired"] = key.expires_at is not None and key.expires_at <= now
    return entry


def _previous(item: PreviousSecret, now: float | None) -> dict[str, object]:
    shown: dict[str, object] = {"until": None if item.until is None else shown_moment(item.until)}
    if now is not None:
        shown["refused"] = item.until is not None and item.until <= now
    return shown
