"""GET /admin: one server-rendered page for a person, read-mostly.

What ``/admin/status``, ``/admin/budgets`` and the executions API say, on one page:
the graph being served and its last reload, a notice of keys that expire within a week
(or have expired), the routes (with their cache and guardrails), each deployment's live
state (circuit, in flight, latency, error rate, and a vLLM server's own queue, KV cache
and prefix cache hits), the budgets, the keys (whose, what they may reach, when they
and their rotations' earlier secrets end), the issuers whose JWTs sign callers in (their
key ids, when those were fetched, whether the last fetch failed), the pass-throughs, the
executions waiting for a human (with approve and reject buttons) and the latest
executions. Configuration is not edited here: it lives in git.

A browser signs in with HTTP Basic (any user name, an admin key as the password);
``Authorization: Bearer`` works as everywhere else. A decision is a form POST, and a
browser sends Basic credentials with any site's form, so a POST is accepted only when
its ``Origin`` (or, without one, its ``Referer``) is this gateway's own.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

import jinja2
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from aigw import __version__
from aigw.compiler import overview
from aigw.compiler.graph import ApiKey, Graph, PreviousSecret, RouteCache
from aigw.compiler.guardrail_graph import RouteGuardrails
from aigw.compiler.keys import EXPIRY_NOTICE_S

from .auth import admin_only, bearer_token, key_for
from .errors import (
    Forbidden,
    GatewayError,
    PayloadTooLarge,
    RequestTimeout,
    StoreUnavailable,
    Unauthorized,
)
from .incoming import read_body
from .live import Gateway
from .routing.state import SERVER_UP, Snapshot
from .store.executions import Decision, ExecutionConflict
from .usage_api import declared_budgets
from .workflows import Workflows

_REALM = 'Basic realm="aigw admin", charset="UTF-8"'
_RECENT = 20
_WAITING = 200  # approvals listed, the newest first
# Never cached, and never inside another site's frame: a framed page could be clicked
# on through a decoy (its POSTs would come from this origin).
_PAGE_HEADERS = {"cache-control": "no-store", "x-frame-options": "DENY",
                 "content-security-policy": "frame-ancestors 'none'"}
_MAX_FORM_BYTES = 64 * 1024

_PAGE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string("""\
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>aigw admin</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;
padding:.25em .6em;text-align:left}th{background:#f4f4f4}.bad{color:#b00}.ok{color:#070}
code{font-size:13px}form{display:inline}
</style></head><body>
<h1>aigw {{ version }}</h1>
<p>Serving graph <code>{{ graph.fingerprint[:12] }}</code> from <code>{{ graph.root }}</code>,
loaded {{ loaded_at }}.
{% if reload %}Last reload ({{ reload.trigger }}, {{ reload.at }}):
<span class="{{ 'ok' if reload.ok else 'bad' }}">{{ 'ok' if reload.ok else 'failed' }}</span>
{% for d in reload.diagnostics %}<br><code>{{ d.code }} {{ d.file }}:{{ d.line }}:{{ d.column }}
{{ d.message }}</code>{% endfor %}{% endif %}</p>
{% if expiring %}<p class="bad">Keys expired or expiring within 7 days:
{% for k in expiring %}{{ k.name }} ({{ 'expired' if k.expired else 'expires' }} {{ k.expires }})
{{- ", " if not loop.last }}{% endfor %}. Rotate them (a new secret, the old one under
<code>previous:</code>) or move <code>expires</code> in the config.</p>{% endif %}

<h2>Waiting for a decision</h2>
{% if waiting %}<table><tr><th>execution</th><th>pipeline</th><th>step</th><th>message</th>
<th>deadline</th><th>default</th><th>approvers</th><th></th></tr>
{% for item in waiting %}<tr><td><code>{{ item.id }}</code></td><td>{{ item.pipeline }}</td>
<td>{{ item.step }}</td><td>{{ item.message }}</td><td>{{ item.deadline }}</td>
<td>{{ item.default }}</td><td>{{ item.approvers }}</td><td>
{% for verdict in ("approve", "reject") %}<form method="post" action="{{ item.action }}">
<input type="hidden" name="decision" value="{{ verdict }}">
<button type="submit">{{ verdict }}</button></form>{% endfor %}</td></tr>{% endfor %}
</table>{% else %}<p>Nothing is waiting.</p>{% endif %}

<h2>Routes</h2>
<table><tr><th>route</th><th>serves</th><th>candidates</th><th>cache</th><th>guardrails</th></tr>
{% for r in routes %}<tr><td>{{ r.name }}</td><td>{{ r.kind }} {{ r.target }}</td>
<td>{{ r.candidates }}</td><td>{{ r.cache }}</td><td>{{ r.guardrails }}</td></tr>
{% endfor %}</table>

<h2>Deployments</h2>
<table><tr><th>deployment</th><th>provider</th><th>model</th><th>circuit</th>
<th>in flight</th><th>latency ms (avg / p95)</th><th>error rate</th>
<th>server: running / waiting / KV cache / prefix cache hits</th></tr>
{% for d in deployments %}<tr><td>{{ d.name }}</td><td>{{ d.provider }}</td>
<td>{{ d.model }}</td><td class="{{ 'ok' if d.circuit == 'closed' else 'bad' }}">
{{ d.circuit }}</td><td>{{ d.in_flight }}</td><td>{{ d.latency }}</td><td>{{ d.errors }}</td>
<td>{{ d.server }}</td></tr>{% endfor %}</table>

<h2>Budgets</h2>
{% if budgets %}<table><tr><th>scope</th><th>name</th><th>period</th><th>amount</th>
<th>spent</th><th>held</th><th>used</th></tr>
{% for b in budgets %}<tr><td>{{ b.scope }}</td><td>{{ b.name }}</td><td>{{ b.period }}</td>
<td>{{ b.amount }}</td><td>{{ b.spent }}</td><td>{{ b.held }}</td>
<td class="{{ 'bad' if b.over else '' }}">{{ b.used }}</td></tr>{% endfor %}</table>
{% else %}<p>{{ budgets_note }}</p>{% endif %}

<h2>Keys</h2>
<table><tr><th>key</th><th>team</th><th>admin</th><th>routes</th><th>MCP servers</th>
<th>pass-throughs</th><th>expires</th><th>earlier secrets</th></tr>
{% for k in keys %}<tr><td>{{ k.name }}</td><td>{{ k.team }}</td><td>{{ k.admin }}</td>
<td>{{ k.routes }}</td><td>{{ k.mcp_servers }}</td><td>{{ k.passthrough }}</td>
<td class="{{ 'bad' if k.soon else '' }}">{{ k.expires }}</td><td>{{ k.previous }}</td></tr>
{% endfor %}</table>

<h2>Issuers</h2>
{% if issuers %}<table><tr><th>issuer</th><th>iss</th><th>keys from</th><th>audiences</th>
<th>team</th><th>routes</th><th>pass-throughs</th><th>key ids</th><th>last fetch</th></tr>
{% for i in issuers %}<tr><td>{{ i.name }}</td><td><code>{{ i.iss }}</code></td>
<td><code>{{ i.jwks }}</code></td><td>{{ i.audiences }}</td><td>{{ i.team }}</td>
<td>{{ i.routes }}</td><td>{{ i.passthrough }}</td><td><code>{{ i.kids }}</code></td>
<td class="{{ 'bad' if i.failed else '' }}">{{ i.fetched }}</td></tr>{% endfor %}</table>
{% else %}<p>No issuers: only keys sign in.</p>{% endif %}

<h2>Pass-throughs</h2>
{% if passthrough %}<table><tr><th>pass-through</th><th>provider</th><th>methods</th>
<th>paths</th></tr>
{% for x in passthrough %}<tr><td>{{ x.name }}</td>
<td class="{{ '' if x.enabled else 'bad' }}">{{ x.provider }}</td><td>{{ x.methods }}</td>
<td><code>{{ x.paths }}</code></td></tr>{% endfor %}</table>
{% else %}<p>No pass-throughs.</p>{% endif %}

<h2>Latest executions</h2>
{% if executions %}<table><tr><th>execution</th><th>pipeline</th><th>status</th><th>key</th>
<th>cost</th><th>created</th></tr>
{% for x in executions %}<tr><td><code>{{ x.id }}</code></td><td>{{ x.pipeline }}</td>
<td>{{ x.status }}</td><td>{{ x.key }}</td><td>{{ x.cost }}</td><td>{{ x.created }}</td>
</tr>{% endfor %}</table>{% else %}<p>{{ executions_note }}</p>{% endif %}
<p><a href="/metrics">/metrics</a> · <a href="/admin/status">/admin/status</a></p>
</body></html>
""")


def admin_page_routes(gateway: Gateway, workflows: Workflows) -> list[Route]:
    page = _AdminPage(gateway, workflows)
    return [
        Route("/admin", page.show, methods=["GET"]),
        Route("/admin/approvals/{execution_id}/{step:path}", page.decide, methods=["POST"]),
    ]


def admin_key(graph: Graph, headers: Headers) -> ApiKey:
    """The admin key of a Bearer or a Basic (password) ``Authorization`` header."""
    token = bearer_token(headers) or _basic_password(headers)
    if token is None:
        raise Unauthorized("Sign in with an admin key as the password.")
    return admin_only(key_for(graph, token))


def _basic_password(headers: Headers) -> str | None:
    scheme, _, encoded = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2] or None


def same_origin(request: Request) -> bool:
    """Whether a POST comes from a page of this gateway (see the module's docstring)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    # The host only: behind a proxy that terminates TLS the page is https and the
    # request here is http. A cross-site form cannot set Host or X-Forwarded-Host.
    netloc = urllib.parse.urlsplit(source).netloc
    hosts = {request.headers.get("host"), request.headers.get("x-forwarded-host")}
    return bool(netloc) and netloc in hosts


def _when(at: float | None) -> str:
    if not at:
        return ""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class _AdminPage:
    def __init__(self, gateway: Gateway, workflows: Workflows) -> None:
        self.gateway = gateway
        self.workflows = workflows

    async def show(self, request: Request) -> Response:
        live = self.gateway.live
        refused = _refusal(live.graph, request.headers)
        if refused is not None:
            return refused
        return HTMLResponse(_PAGE.render(await self._facts()), headers=_PAGE_HEADERS)

    async def decide(self, request: Request) -> Response:
        live = self.gateway.live
        refused = _refusal(live.graph, request.headers)
        if refused is not None:
            return refused
        if not same_origin(request):
            return PlainTextResponse("A decision must come from this gateway's own page.",
                                     status_code=403)
        key = admin_key(live.graph, request.headers)
        try:  # never more than a form's worth in memory, nor a form trickling in for ever
            body = await read_body(request, live.graph.settings, _MAX_FORM_BYTES)
        except (PayloadTooLarge, RequestTimeout) as exc:
            return PlainTextResponse(exc.message, status_code=exc.status)
        # application/x-www-form-urlencoded, as a plain HTML form posts it.
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        verdict = (form.get("decision") or [""])[0]
        if verdict not in ("approve", "reject"):
            return PlainTextResponse("decision must be approve or reject", status_code=400)
        comment = (form.get("comment") or [""])[0] or None
        decision = Decision(verdict == "approve", key.name, comment, time.time())
        try:
            await self.workflows.decide(request.path_params["execution_id"],
                                        request.path_params["step"], decision)
        except ExecutionConflict as exc:
            return PlainTextResponse(str(exc), status_code=409)
        return RedirectResponse("/admin", status_code=303)

    async def _facts(self) -> dict[str, Any]:
        live = self.gateway.live
        graph, routing = live.graph, live.routing
        last = self.gateway.last_reload
        facts: dict[str, Any] = {
            "version": __version__,
            "graph": graph,
            "loaded_at": _when(live.loaded_at),
            "reload": {**last.as_dict(), "at": _when(last.at)} if last is not None else None,
            "routes": [
                {"name": name, "kind": route.kind.value, "target": route.target,
                 "candidates": ", ".join(d.name for d in route.candidates),
                 "cache": _cache(route.cache), "guardrails": _guardrails(route.guardrails)}
                for name, route in sorted(graph.routes.items())
            ],
            "deployments": [_deployment_row(name, graph, snapshot)
                            for name, snapshot in routing.snapshot().items()
                            if name in graph.deployments],
        }
        now = time.time()
        facts["keys"] = [_key_row(key, previous, now) for key, previous in overview.keys(graph)]
        facts["expiring"] = [row for row in facts["keys"] if row["soon"]]
        facts["issuers"] = [_issuer_row(name, entry)
                            for name, entry in live.identities.status(graph).items()]
        facts["passthrough"] = [
            {"name": name, "provider": f"{entry.provider.name} ({entry.provider.type})"
             + ("" if entry.provider.name in live.adapters else ": disabled"),
             "enabled": entry.provider.name in live.adapters,
             "methods": ", ".join(sorted(entry.methods)), "paths": " ".join(entry.globs)}
            for name, entry in sorted(graph.passthrough.items())
        ]
        try:
            facts["budgets"] = [
                {"scope": b.scope.value, "name": b.name, "period": b.period.value,
                 "amount": f"{b.amount:g}", "spent": f"{b.spent:.4f}", "held": f"{b.held:.4f}",
                 "used": f"{b.spent / b.amount:.1%}" if b.amount else "",
                 "over": bool(b.amount) and b.spent >= b.amount}
                for b in await declared_budgets(live)
            ]
            facts["budgets_note"] = "No team or key has a budget."
        except StoreUnavailable as exc:
            facts["budgets"], facts["budgets_note"] = [], f"The store is unavailable: {exc}"
        facts.update(await self._executions())
        return facts

    async def _executions(self) -> dict[str, Any]:
        try:
            store = await self.workflows.store()
            latest = await store.list(limit=_RECENT)
            waiting = []
            # Every approval waiting, in a paused execution or beside a running branch
            # too (an admin key may decide any of them).
            for execution, state in await store.waiting(_WAITING):
                detail = state.detail or {}
                approvers = detail.get("approvers")
                waiting.append({
                    "id": execution.id, "pipeline": execution.pipeline,
                    "step": state.step, "message": detail.get("message", ""),
                    "deadline": _when(detail.get("deadline")),
                    "default": detail.get("default", ""),
                    "approvers": ", ".join([*approvers.get("keys", ()),
                                            *(f"team {t}" for t in approvers.get("teams", ()))])
                    if approvers else f"{execution.key or 'the starting key'} (started it)",
                    "action": "/admin/approvals/"
                              f"{urllib.parse.quote(execution.id, safe='')}/"
                              f"{urllib.parse.quote(state.step, safe='/')}",
                })
        except (StoreUnavailable, GatewayError) as exc:
            note = f"Could not read the executions: {exc}"
            return {"waiting": [], "executions": [], "executions_note": note}
        return {
            "waiting": waiting,
            "executions": [
                {"id": x.id, "pipeline": x.pipeline, "status": x.status.value,
                 "key": x.key or "", "cost": f"{x.cost:.4f}", "created": _when(x.created_at)}
                for x in latest
            ],
            "executions_note": "No executions yet.",
        }


def _cache(cache: RouteCache | None) -> str:
    """``600 s, key, by model, semantic via embed >= 0.9``; empty for a route with no
    cache."""
    if cache is None:
        return ""
    semantic = cache.semantic
    return f"{cache.ttl_s:g} s, {cache.scope}" + (", by model" if cache.by_model else "") + (
        f", semantic via {semantic.embeddings} ≥ {semantic.threshold:g}" if semantic else "")


def _guardrails(guardrails: RouteGuardrails | None) -> str:
    """``secrets (input: block), pii (input, output: redact)``, in the route's order."""
    return ", ".join(f"{g.name} ({', '.join(sorted(g.sides))}: {g.action})"
                     for g in overview.each_guardrail(guardrails))


def _key_row(key: ApiKey, previous: list[PreviousSecret], now: float) -> dict[str, Any]:
    soon = key.expires_at is not None and key.expires_at <= now + EXPIRY_NOTICE_S
    return {
        "name": key.name, "team": key.team.name if key.team else "",
        "admin": "yes" if key.admin else "",
        "routes": _names(key.routes),
        "mcp_servers": _names(key.mcp_servers),
        "passthrough": _names(key.passthrough),
        "expires": _when(key.expires_at) or "never", "soon": soon,
        "expired": key.expires_at is not None and key.expires_at <= now,
        "previous": "; ".join(
            "accepted while listed" if item.until is None
            else f"{'refused since' if item.until <= now else 'accepted until'} "
                 f"{_when(item.until)}"
            for item in previous),
    }


def _names(names: frozenset[str] | None) -> str:
    """What a key or issuer may reach: ``all`` (no list), ``none`` (an empty one)."""
    return "all" if names is None else ", ".join(sorted(names)) or "none"


def _issuer_row(name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """One issuer as ``Identities.status`` shows it, in words."""
    team = entry["team"]
    if isinstance(team, Mapping):
        team = (f"by its {team['claim']} claim: "
                + ", ".join(f"{value} → {each}" for value, each in team["map"].items())
                + (f"; else {team['default']}" if team["default"] else "; else refused"))
    ago = entry["fetched_s_ago"]
    fetched = ("from its jwks_file" if entry["jwks"] == "jwks_file"
               else "written in its config" if entry["jwks"] == "jwks"
               else "never" if ago is None else f"{ago:g} s ago")
    if entry["last_fetch_failed"]:
        fetched += " (the last fetch failed)"
    return {
        "name": name, "iss": entry["issuer"], "jwks": entry["jwks"],
        "audiences": ", ".join(entry["audiences"]), "team": team or "",
        "routes": _listed(entry["routes"]), "passthrough": _listed(entry["passthrough"]),
        "kids": ", ".join(entry["kids"]) or "none", "fetched": fetched,
        "failed": bool(entry["last_fetch_failed"]),
    }


def _listed(names: list[str] | None) -> str:
    return "all" if names is None else ", ".join(names) or "none"


def _deployment_row(name: str, graph: Graph, snapshot: Snapshot) -> dict[str, Any]:
    deployment = graph.deployments[name]
    server = ""
    if snapshot.upstream_running is not None:
        kv = f"{snapshot.kv_cache_usage:.0%}" if snapshot.kv_cache_usage is not None else "-"
        hits = (f"{snapshot.prefix_cache_hit_rate:.0%}"
                if snapshot.prefix_cache_hit_rate is not None else "-")
        server = f"{snapshot.upstream_running} / {snapshot.upstream_waiting} / {kv} / {hits}"
    if snapshot.server not in (None, SERVER_UP):  # a server aigw runs, loading or down
        server = snapshot.server.removeprefix("is ")
    latency = snapshot.latency_ms
    p95 = snapshot.p95_ms
    return {
        "name": name, "provider": f"{deployment.provider.name} ({deployment.provider.type})",
        "model": deployment.model, "circuit": snapshot.circuit, "in_flight": snapshot.in_flight,
        "latency": (f"{latency:.0f} / {p95:.0f}" if latency is not None and p95 is not None
                    else f"{latency:.0f} / -" if latency is not None else "-"),
        "errors": f"{snapshot.failures / snapshot.requests:.1%}" if snapshot.requests else "-",
        "server": server,
    }


def _refusal(graph: Graph, headers: Headers) -> Response | None:
    """A 401 that makes a browser ask for the key, or a 403; None for an admin."""
    try:
        admin_key(graph, headers)
    except Unauthorized as exc:
        return PlainTextResponse(exc.message, status_code=401,
                                 headers={"www-authenticate": _REALM})
    except Forbidden as exc:
        return PlainTextResponse(exc.message, status_code=403)
    return None
