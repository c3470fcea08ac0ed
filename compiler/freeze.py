"""Stage 6, freeze: the linked config becomes the immutable ``Graph`` the runtime serves.

Read-only mappings and tuples all the way down, defaults applied, and a sha256
fingerprint of every source file, so a response can say which graph answered it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from .authorization import CheckedPolicies, build_authorization
from .diagnostics import Diagnostic
from .graph import (
    ApiKey,
    BreakerPolicy,
    Deployment,
    Graph,
    Group,
    Issuer,
    IssuerTeams,
    McpServer,
    McpSse,
    McpStdio,
    Passthrough,
    Pipeline,
    Policy,
    PreviousSecret,
    Price,
    Provider,
    Quota,
    RetryPolicy,
    Route,
    RouteCache,
    SemanticCache,
    Settings,
    TargetKind,
    Team,
)
from .guardrails import route_guardrails
from .link import Linked
from .mcp_servers import LinkedMcpServer
from .pipelines import attach_routes
from .source import SourceFile
from .spec import (
    BudgetSpec,
    CacheSpec,
    CircuitBreakerSpec,
    GroupSpec,
    IssuerTeamSpec,
    LimitsSpec,
    PerUserSpec,
    PriceSpec,
    SubjectLimitsSpec,
)

V = TypeVar("V")


def fingerprint(sources: Mapping[str, SourceFile]) -> str:
    """sha256 over every source file's path and text, in path order."""
    digest = hashlib.sha256()
    for path in sorted(sources):
        digest.update(path.encode() + b"\0" + sources[path].text.encode() + b"\0")
    return digest.hexdigest()


def freeze(
    linked: Linked,
    policies: tuple[Policy, ...],
    sources: Mapping[str, SourceFile],
    root: Path,
    warnings: tuple[Diagnostic, ...],
    pipelines: Mapping[str, Pipeline] | None = None,
    *,
    checked: CheckedPolicies,
) -> Graph:
    """Build the frozen graph; ``linked`` must have passed without errors."""
    providers = {
        name: Provider(
            name=name,
            type=item.entry.spec.type,
            base_url=item.base_url,
            api_version=item.entry.spec.api_version,
            timeout_s=item.entry.spec.timeout_s,
            max_connections=item.entry.spec.max_connections,
            max_response_bytes=int(item.entry.spec.max_response_mb * (1 << 20)),
            headers=_frozen(dict(item.headers)),
            disabled_reason=item.disabled_reason,
            api_key=item.api_key,
            first_token_ms=latency.first_token_ms if (latency := item.entry.spec.latency) else 0.0,
            per_token_ms=latency.per_token_ms if latency else 0.0,
            region=item.region,
            project=item.project,
            location=item.location,
            credentials_file=str(root / Path(item.credentials_file).expanduser())
            if item.credentials_file else None,
            publisher=item.entry.spec.publisher,
            metrics_url=_metrics_url(item.entry.spec.type, item.entry.spec.metrics_url,
                                     item.base_url),
            metrics_interval_s=item.entry.spec.metrics_interval_s,
        )
        for name, item in linked.providers.items()
    }
    deployments = {}
    for name, entry in linked.deployments.items():
        spec = entry.spec
        deployments[name] = Deployment(
            name=name,
            provider=providers[spec.provider],
            model=spec.model,
            kind=spec.kind,
            context_window=spec.context_window,
            max_output_tokens=spec.max_output_tokens or spec.context_window,
            price=_price(spec.price),
            tags=tuple(spec.tags),
            capabilities=frozenset(spec.capabilities),
            timeout_s=spec.timeout_s or providers[spec.provider].timeout_s,
            rpm=spec.limits.rpm if spec.limits else None,
            tpm=spec.limits.tpm if spec.limits else None,
            breaker=_breaker(spec.circuit_breaker or linked.settings.circuit_breaker),
            serve=linked.served.get(name),
            pass_params=None if spec.pass_params is None else frozenset(spec.pass_params),
        )
    groups = _with_prefix_wants(
        {name: _group(name, entry.spec, deployments) for name, entry in linked.groups.items()})
    routes = {}
    for name, route in linked.routes.items():
        route_spec = route.spec
        kind, target = next(
            (kind, value)
            for kind, value in (
                (TargetKind.GROUP, route_spec.group),
                (TargetKind.DEPLOYMENT, route_spec.deployment),
                (TargetKind.PIPELINE, route_spec.pipeline),
            )
            if value is not None
        )
        if kind is TargetKind.GROUP:
            serving: Group | None = groups[target]
        elif kind is TargetKind.DEPLOYMENT:
            serving = _group(f"deployment:{target}", GroupSpec(members=[target]), deployments)
        else:
            serving = None
        hedge = route_spec.hedge_after_ms
        routes[name] = Route(
            name=name,
            kind=kind,
            target=target,
            candidates=tuple(deployments[d] for d in linked.route_candidates[name]),
            description=route_spec.description,
            group=serving,
            deadline_s=route_spec.deadline_s,
            max_attempts=route_spec.max_attempts,
            hedge_after_ms=hedge if isinstance(hedge, float | int) else None,
            hedge_at_p95=hedge == "p95",
            cache=_cache(route_spec.cache, linked.route_candidates, deployments, name)
            if route_spec.cache is not None else None,
            guardrails=route_guardrails(route_spec, linked.guardrails),
        )
    teams = {
        name: Team(
            name=name,
            quota=_quota(entry.spec.limits, entry.spec.budget),
            per_user=_per_user(entry.spec.per_user),
        )
        for name, entry in linked.teams.items()
    }
    keys: dict[str, ApiKey] = {}
    by_name: dict[str, ApiKey] = {}
    previous: dict[str, PreviousSecret] = {}
    for name, item in linked.keys.items():
        earlier = [(each.sha256, each.until) for each in item.previous if each.sha256 is not None]
        if item.sha256 is None and not earlier:
            continue  # no secret signs in as it
        key_spec = item.entry.spec
        team = teams[key_spec.team] if key_spec.team else None
        per_user = _per_user(key_spec.per_user) if key_spec.per_user else None
        key = by_name[name] = ApiKey(
            name=name,
            team=team,
            admin=key_spec.admin,
            quota=_quota(key_spec.limits, key_spec.budget),
            per_user=per_user or (team.per_user if team else Quota()),
            routes=frozenset(key_spec.routes) if key_spec.routes is not None else None,
            mcp_servers=(frozenset(key_spec.mcp_servers)
                         if key_spec.mcp_servers is not None else None),
            sha256=item.sha256,
            own_per_user=per_user is not None,
            expires_at=item.expires_at,
            passthrough=(frozenset(key_spec.passthrough)
                         if key_spec.passthrough is not None else None),
        )
        if item.sha256 is not None:
            keys[item.sha256] = key
        # Whether or not the current secret is set: a rotation whose new ${ENV} is not
        # set yet where aigw serves keeps the old secrets signing in until their until.
        for digest, until in earlier:
            previous[digest] = PreviousSecret(key, until, digest)
    settings = linked.settings
    frozen_pipelines = attach_routes(
        pipelines or {}, routes, groups, deployments,
        lambda name: _group(f"deployment:{name}", GroupSpec(members=[name]), deployments),
    )
    # A step naming a group or deployment is served by a route made up for it; policies
    # see it as any route (in its Group, with kind and target), so one on the group holds.
    made = {route.name: route for pipeline in frozen_pipelines.values()
            for route in pipeline.routes.values() if route.name not in routes}
    return Graph(
        fingerprint=fingerprint(sources),
        root=str(root),
        settings=Settings(
            store=settings.store,
            max_request_bytes=settings.max_request_bytes,
            max_audio_upload_bytes=settings.max_audio_upload_bytes,
            max_image_upload_bytes=settings.max_image_upload_bytes,
            hide_policy_ids=settings.hide_policy_ids,
            log_level=settings.log_level,
            store_failure=settings.store_failure,
            reservation_ttl_s=settings.reservation_ttl_s,
            stop_streams_over_budget=settings.stop_streams_over_budget,
            user_header=settings.user_header,
            ledger_sync=settings.ledger_sync,
            execution_lease_s=settings.execution_lease_s,
            execution_capacity=settings.execution_capacity,
            cache_max_entries=settings.cache_max_entries,
            cache_max_bytes=settings.cache_max_bytes,
            cache_max_entry_bytes=settings.cache_max_entry_bytes,
            execution_retention_s=settings.execution_retention_s,
            store_outbox=settings.store_outbox,
            unsaved_dir=settings.unsaved_dir,
            metrics_access=settings.metrics_access,
            body_read_timeout_s=settings.body_read_timeout_s,
            max_request_json_containers=settings.max_request_json_containers,
            ledger_retention_days=settings.ledger_retention_days,
            responses_ttl_s=settings.responses_ttl_s,
            responses_max_bytes=settings.responses_max_bytes,
            responses_chain_max_depth=settings.responses_chain_max_depth,
            responses_chain_max_bytes=settings.responses_chain_max_bytes,
            conversations_max_items=settings.conversations_max_items,
            files_dir=settings.files_dir,
            files_max_bytes=settings.files_max_bytes,
            batch_output_retention_s=settings.batch_output_retention_s,
            batch_max_lines=settings.batch_max_lines,
            batch_concurrency=settings.batch_concurrency,
            batches_concurrency=settings.batches_concurrency,
            redis_namespace=settings.redis_namespace,
            max_passthrough_bytes=settings.max_passthrough_bytes,
            realtime_max_session_s=settings.realtime_max_session_s,
            websocket_ping_interval_s=settings.websocket_ping_interval_s,
            websocket_max_message_bytes=settings.websocket_max_message_bytes,
        ),
        providers=_frozen(providers),
        deployments=_frozen(deployments),
        groups=_frozen(groups),
        routes=_frozen(routes),
        teams=_frozen(teams),
        keys_by_sha256=_frozen(keys),
        previous_by_sha256=_frozen(previous),
        keys_by_name=_frozen(by_name),
        issuers_by_iss=_frozen({issuer.issuer: issuer
                                for issuer in _issuers(linked, teams).values()}),
        policies=policies,
        pipelines=frozen_pipelines,
        mcp_servers=_frozen({
            name: McpServer(
                name=name,
                url=item.url or f"stdio://{name}",
                timeout_s=item.entry.spec.timeout_s,
                tools=None if item.entry.spec.tools is None else frozenset(item.entry.spec.tools),
                disabled_reason=item.disabled_reason,
                headers=_frozen(dict(item.headers)),
                stdio=_stdio(item, root),
                sse=McpSse(item.entry.spec.idle_timeout_s, item.entry.spec.max_sessions)
                if item.entry.spec.transport == "sse" else None,
            )
            for name, item in linked.mcp_servers.items()
        }),
        warnings=warnings,
        authorization=build_authorization(
            checked, deployments, groups, {**routes, **made}, teams, list(keys.values()),
            list(linked.pipelines), list(linked.mcp_servers), list(linked.agents),
            list(linked.passthrough),
            list(linked.issuers),
        ),
        passthrough=_frozen({
            name: Passthrough(
                name=name,
                provider=providers[item.entry.spec.provider],
                globs=tuple(item.entry.spec.paths),
                paths=re.compile(item.pattern),
                methods=frozenset(item.entry.spec.methods),
                prices=_prices_of(providers[item.entry.spec.provider].name, deployments),
                hold_tokens=item.entry.spec.hold_tokens,
            )
            for name, item in linked.passthrough.items()
        }),
    )


def _prices_of(provider: str, deployments: Mapping[str, Deployment]) -> Mapping[str, Deployment]:
    """Model id -> the first deployment (as written) that serves it on ``provider``: whose
    price a pass-through's answer naming that model is billed at."""
    found: dict[str, Deployment] = {}
    for deployment in deployments.values():
        if deployment.provider.name == provider:
            found.setdefault(deployment.model, deployment)
    return _frozen(found)


def _issuers(linked: Linked, teams: Mapping[str, Team]) -> dict[str, Issuer]:
    frozen: dict[str, Issuer] = {}
    for name, item in linked.issuers.items():
        spec = item.entry.spec
        team: Team | IssuerTeams | None
        if isinstance(spec.team, IssuerTeamSpec):
            team = IssuerTeams(
                spec.team.claim,
                tuple((value, teams[team_name]) for value, team_name in spec.team.map.items()),
                teams[spec.team.default] if spec.team.default is not None else None)
        else:
            team = teams[spec.team] if spec.team is not None else None
        frozen[name] = Issuer(
            name=name,
            issuer=spec.issuer,
            audiences=tuple(spec.audiences),
            algorithms=tuple(dict.fromkeys(spec.algorithms)),
            jwks_url=spec.jwks_url,
            jwks=item.jwks,
            jwks_file=spec.jwks_file,
            team=team,
            principal_claim=spec.principal_claim,
            routes=frozenset(spec.routes) if spec.routes is not None else None,
            mcp_servers=frozenset(spec.mcp_servers) if spec.mcp_servers is not None else None,
            passthrough=frozenset(spec.passthrough) if spec.passthrough is not None else None,
            quota=_quota(spec.limits, spec.budget),
            leeway_s=spec.leeway_s,
            jwks_max_age_s=spec.jwks_max_age_s,
            jwks_refetch_s=spec.jwks_refetch_s,
        )
    return frozen


def _quota(limits: LimitsSpec | None, budget: BudgetSpec | None) -> Quota:
    return Quota(
        rpm=limits.rpm if limits else None,
        tpm=limits.tpm if limits else None,
        budget=budget.amount if budget else None,
        period=budget.period if budget else "month",
        max_parallel=limits.max_parallel if isinstance(limits, SubjectLimitsSpec) else None,
    )


def _per_user(spec: PerUserSpec | None) -> Quota:
    return _quota(spec.limits, spec.budget) if spec else Quota()


def _price(spec: PriceSpec) -> Price:
    """Cache prices the config leaves out are the input price: a config written before
    they existed bills as it did (cached tokens were input tokens)."""
    return Price(
        input=spec.input,
        output=spec.output,
        cache_read=spec.input if spec.cache_read is None else spec.cache_read,
        cache_write=spec.input if spec.cache_write is None else spec.cache_write,
        search_unit=spec.per_1k_search_units / 1000,
        image=spec.per_image,
        image_by_size=tuple(sorted(spec.per_image_by_size.items())),
        minute=spec.per_minute,
        character=spec.per_1m_characters / 1_000_000,
        audio_input=spec.input if spec.audio_input is None else spec.audio_input,
        audio_output=spec.output if spec.audio_output is None else spec.audio_output,
    )


def _cache(spec: CacheSpec, candidates: Mapping[str, Sequence[str]],
           deployments: Mapping[str, Deployment], route: str) -> RouteCache:
    # Deployments of one model id (gpt-4o-mini on OpenAI and on Azure) give the same
    # model's answers; others share theirs only where the config says they are one model.
    models = {deployments[name].model for name in candidates[route]}
    by_model = len(models) > 1 and not spec.one_model
    semantic = spec.semantic
    if semantic is None:
        return RouteCache(spec.ttl_s, spec.scope, None, by_model)
    # A conversation longer than every embeddings deployment's window fails its embedding
    # (a refused request in the ledger, each time): it skips the lookup instead (the
    # conversation embedded counts about as many tokens as the prompt).
    windows = [deployments[name].context_window for name in candidates[semantic.embeddings]
               if deployments[name].kind == "embeddings"]
    longest = min(semantic.max_prompt_tokens, max(windows, default=semantic.max_prompt_tokens))
    return RouteCache(spec.ttl_s, spec.scope, SemanticCache(
        semantic.embeddings, semantic.threshold, longest, semantic.timeout_s), by_model)


def _breaker(spec: CircuitBreakerSpec) -> BreakerPolicy:
    return BreakerPolicy(
        consecutive_failures=spec.consecutive_failures,
        failure_rate=spec.failure_rate,
        min_requests=spec.min_requests,
        window_s=spec.window_s,
        cooldown_s=spec.cooldown_s,
    )


def _group(name: str, spec: GroupSpec, deployments: Mapping[str, Deployment]) -> Group:
    fallbacks = spec.fallbacks
    on_content_policy: tuple[str, ...]
    if isinstance(fallbacks, list):
        on_error = tuple(fallbacks)
        on_rate_limit, on_context_window, on_content_policy = on_error, on_error, ()
    else:
        on_error = tuple(fallbacks.on_error)
        on_rate_limit = tuple(fallbacks.on_rate_limit if fallbacks.on_rate_limit is not None
                              else fallbacks.on_error)
        on_context_window = tuple(fallbacks.on_context_window
                                  if fallbacks.on_context_window is not None
                                  else fallbacks.on_error)
        on_content_policy = tuple(fallbacks.on_content_policy or ())
    return Group(
        name=name,
        strategy=spec.strategy,
        members=tuple(deployments[m] for m in spec.members),
        weights=tuple(spec.weights.get(m, 1) for m in spec.members),
        fallbacks=on_error,
        on_rate_limit=on_rate_limit,
        on_context_window=on_context_window,
        on_content_policy=on_content_policy,
        retry=RetryPolicy(spec.retry.attempts, spec.retry.backoff_ms, spec.retry.max_backoff_ms),
    )


def _with_prefix_wants(groups: dict[str, Group]) -> dict[str, Group]:
    """Each group marked when a prefix_affinity group is among it and its fallbacks (once
    here, not per request)."""
    def wants(name: str) -> bool:
        pending, seen = [name], set()
        while pending:
            group = groups.get(pending.pop())
            if group is None or group.name in seen:
                continue
            if group.strategy == "prefix_affinity":
                return True
            seen.add(group.name)
            pending += group.falls_back_to()
        return False

    return {name: replace(group, wants_prefix=True) if wants(name) else group
            for name, group in groups.items()}


def _frozen(mapping: dict[str, V]) -> Mapping[str, V]:
    return MappingProxyType(mapping)


def _stdio(item: LinkedMcpServer, root: Path) -> McpStdio | None:
    """How a stdio server runs (None for a streamable HTTP one); its cwd made absolute,
    from the config's folder, as a credentials_file is."""
    spec = item.entry.spec
    if spec.command is None:
        return None
    return McpStdio(
        command=tuple(spec.command),
        cwd=str(root / Path(spec.cwd).expanduser()) if spec.cwd else str(root),
        idle_timeout_s=spec.idle_timeout_s,
        max_sessions=spec.max_sessions,
        env=_frozen(dict(item.env)),
    )


def _metrics_url(kind: str, configured: str | None, base_url: str | None) -> str | None:
    """Where a vLLM server's metrics are: as configured, else next to its API root."""
    if kind != "vllm":
        return None
    if configured is not None:
        return configured
    if base_url is None:
        return None
    root = base_url.rstrip("/")
    return root.removesuffix("/v1") + "/metrics"
