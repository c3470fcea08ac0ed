"""``aigw route``: what the gateway would do with a request, without calling anything.

A chat goes through the attempt loop's tiers (``explain``); an embeddings call tries
its route's deployments in turn (``explain_embeddings``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from aigw.compiler.graph import Graph, Group

from ..chat_request import ChatRequest, Message
from ..policy import Decision, RequestGate
from ..providers.registry import ADAPTERS
from .attempts import fallbacks, untried_class
from .candidates import Dropped, eligible, order_candidates
from .state import RoutingState
from .strategies import Demand, expected_cost


@dataclass(frozen=True, slots=True)
class TierExplanation:
    group: str
    reason: str
    strategy: str
    order: tuple[tuple[str, float], ...]  # (deployment, expected cost)
    dropped: tuple[Dropped, ...]
    decisions: Mapping[str, Decision] = field(default_factory=dict)  # Cedar, when asked


def explain(
    graph: Graph,
    route_name: str,
    prompt_tokens: int,
    max_tokens: int | None,
    stream: bool = False,
    state: RoutingState | None = None,
    gate: RequestGate | None = None,
    every_provider: bool = False,
) -> list[TierExplanation]:
    """Every group the request could reach, in the order the attempt loop would try them:
    after a group with members to try, each of its fallbacks (any may be reached, by how
    they fail); after one with none, only those the attempt loop takes for why (the
    context-window fallbacks when each member was too small, else the error ones).

    With ``gate``, Cedar's route policies filter and order each group as they would for
    that principal and context; ``every_provider`` counts disabled providers (an unset
    key in CI) as available.
    """
    route = graph.routes[route_name]
    if route.group is None:
        return []
    state = state or RoutingState()
    state.sync(graph)
    request = ChatRequest(
        model=route_name,
        messages=[Message(role="user", content="")],
        max_tokens=max_tokens,
        stream=stream,
    )
    adapters = {name: _Placeholder() for name, p in graph.providers.items()
                if (p.enabled or every_provider) and p.type in ADAPTERS}
    tiers: list[TierExplanation] = []
    queue: deque[tuple[Group, str]] = deque([(route.group, "route")])
    seen: set[str] = set()
    demand = Demand(prompt_tokens, max_tokens, stream)
    while queue:
        group, reason = queue.popleft()
        if group.name in seen:
            continue
        seen.add(group.name)
        fit, dropped = eligible(group, adapters, request, prompt_tokens)  # type: ignore[arg-type]
        filtered = gate.filter(fit) if gate is not None else None
        if filtered is not None:
            fit, dropped = filtered.permitted, [*dropped, *filtered.denied]
        ordered = order_candidates(group, fit, state, demand)
        if filtered is not None:
            ordered = filtered.by_priority(ordered)
        tiers.append(TierExplanation(
            group.name, reason, group.strategy,
            tuple((c.deployment.name, expected_cost(c.deployment, demand)) for c in ordered),
            tuple(dropped),
            filtered.decisions if filtered is not None else {},
        ))
        if ordered:  # any of these may fail, each in its own way
            labelled = [(name, "fallback") for name in group.fallbacks]
            labelled += [(name, "rate-limit fallback") for name in group.on_rate_limit]
            labelled += [(name, "context-window fallback") for name in group.on_context_window]
            labelled += [(name, "content-policy fallback") for name in group.on_content_policy]
        else:  # nothing to try: the attempt loop falls back by why, and only so
            failure_class = untried_class(dropped)
            label = "context-window fallback" if failure_class == "context_window" else "fallback"
            labelled = [(name, label) for name in fallbacks(group, failure_class)]
        for name, label in labelled:
            if name in graph.groups and name not in seen:
                queue.append((graph.groups[name], label))
    return tiers


def serves_embeddings(graph: Graph, route_name: str) -> bool:
    """Whether the route has embeddings deployments and no chat one to serve it: then
    it is explained as ``POST /v1/embeddings`` serves it (``explain_embeddings``)."""
    kinds = {deployment.kind for deployment in graph.routes[route_name].candidates}
    return kinds == {"embeddings"}


def explain_embeddings(
    graph: Graph,
    route_name: str,
    prompt_tokens: int,
    gate: RequestGate | None = None,
    every_provider: bool = False,
) -> list[TierExplanation]:
    """What ``POST /v1/embeddings`` would try: the route's deployments (its group's
    members, then its fallbacks'), as one tier, by @priority, then as configured."""
    route = graph.routes[route_name]
    ranked = gate.rank(route.candidates) if gate is not None else None
    order = ranked.order if ranked is not None else list(route.candidates)
    kept: list[tuple[str, float]] = []
    dropped: list[Dropped] = []
    for deployment in order:
        provider = deployment.provider
        if ranked is not None and deployment.name in ranked.denied:
            dropped.append(ranked.denied[deployment.name])
        elif deployment.kind != "embeddings":
            dropped.append(Dropped(deployment.name, "is a chat model", True))
        elif not (provider.enabled or every_provider) or provider.type not in ADAPTERS:
            reason = provider.disabled_reason or "its provider has no adapter"
            dropped.append(Dropped(deployment.name, f"is disabled: {reason}", False))
        else:
            kept.append((deployment.name, deployment.price.cost(prompt_tokens, 0)))
    group = route.group.name if route.group is not None else route_name
    return [TierExplanation(group, "route", "embeddings: by @priority, then as configured",
                            tuple(kept), tuple(dropped),
                            ranked.decisions if ranked is not None else {})]


class _Placeholder:
    """Stands in for an adapter: explaining never calls an upstream."""


def render(route_name: str, tiers: list[TierExplanation], prompt_tokens: int,
           max_tokens: int | None) -> str:
    lines = [f"route {route_name}: {prompt_tokens} prompt tokens, "
             f"max_tokens {max_tokens if max_tokens is not None else 'unset'}"]
    for tier in tiers:
        lines.append(f"  group {tier.group} ({tier.reason}, strategy {tier.strategy})")
        for rank, (name, cost) in enumerate(tier.order, start=1):
            decision = tier.decisions.get(name)
            permitted = ""
            if decision is not None and decision.policies:
                permitted = (f"  permitted by {', '.join(decision.policies)} "
                             f"(priority {decision.priority})")
            lines.append(f"    {rank}. {name}  expected cost {cost:.6f}{permitted}")
        for item in tier.dropped:
            lines.append(f"    dropped {item.deployment}: {item.reason}")
    return "\n".join(lines) + "\n"
