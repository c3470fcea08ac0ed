"""Where a request would go, with Cedar's say, and no upstream called.

Used by the policy router (``POST /route``), ``aigw route`` and ``aigw test``: the
invoke decision (on the route, and on the pipeline a pipeline route runs), then every
group the request could reach in the attempt loop's order, each filtered by the route
policies and ordered by @priority and strategy (for a route of embeddings or rerank
deployments, what /v1/embeddings or /v1/rerank would try).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aigw.compiler.graph import ApiKey, Graph, TargetKind

from .policy import INVOKE, Decision, Denied, Facts, PolicyEngine, Principal, RequestGate
from .routing.explain import TierExplanation, explain, explain_whole, served_kind
from .routing.state import RoutingState


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """The outcome for one principal, route and context."""

    route: str
    principal: Principal
    facts: Facts
    invoke: Decision
    tiers: tuple[TierExplanation, ...]
    pipeline: str | None = None

    @property
    def order(self) -> list[str]:
        """Every permitted deployment, in the order the attempt loop would try them."""
        return [name for tier in self.tiers for name, _cost in tier.order]

    @property
    def deployment(self) -> str | None:
        order = self.order
        return order[0] if order else None

    def decision(self, deployment: str) -> Decision | None:
        for tier in self.tiers:
            if deployment in tier.decisions:
                return tier.decisions[deployment]
        return None

    def denied(self) -> dict[str, tuple[str, ...]]:
        """Deployment -> the policies that denied it (empty: no policy permitted it)."""
        return {item.deployment: item.policies for tier in self.tiers
                for item in tier.dropped if isinstance(item, Denied)}

    @property
    def allowed(self) -> bool:
        return self.invoke.allowed and (self.pipeline is not None or bool(self.order))

    @property
    def policies(self) -> tuple[str, ...]:
        """The deciding policies: the invoke deny, the chosen deployment's permits, or the
        policies that denied every deployment."""
        if not self.invoke.allowed or self.pipeline is not None:
            return self.invoke.policies
        chosen = self.deployment
        if chosen is not None:
            decision = self.decision(chosen)
            return decision.policies if decision is not None else ()
        return tuple(dict.fromkeys(p for ids in self.denied().values() for p in ids))

    def as_dict(self) -> dict[str, Any]:
        order = self.order
        return {
            "model": self.route,
            "principal": str(self.principal),
            "allowed": self.allowed,
            "deployment": order[0] if order else None,
            "alternatives": order[1:],
            "policies": list(self.policies),
            "invoke": decision_dict(self.invoke),
            **({"pipeline": self.pipeline} if self.pipeline is not None else {}),
            "tiers": [_tier(tier) for tier in self.tiers],
            "context": {**self.facts.values(), "tags": list(self.facts.tags)},
        }


def plan_route(
    graph: Graph,
    engine: PolicyEngine,
    principal: Principal,
    facts: Facts,
    state: RoutingState,
    every_provider: bool = False,
    key: ApiKey | None = None,
) -> RoutePlan:
    """Ask Cedar about ``facts.route`` for ``principal``; order what it permits. With the
    caller's ``key`` (or JWT caller), a route outside its ``routes:`` is denied before
    Cedar is asked, as a live request is refused (a 404: ``check_route_allowed``)."""
    route = graph.routes[facts.route]
    if key is not None and key.routes is not None and route.name not in key.routes:
        outside = Decision(False, (), 0, (f"route '{route.name}' is not among the routes "
                                          f"'{key.name}' may call (a live request: 404)",))
        return RoutePlan(facts.route, principal, facts, outside, ())
    gate = RequestGate(engine, principal, facts, str(principal))
    invoke = engine.invoke(principal, facts.route, gate.context)
    if invoke.allowed and route.kind is TargetKind.PIPELINE:
        # As a chat to it is: the pipeline it runs is invoked too (``chat_completions``).
        ran = engine.decide(principal, INVOKE, {"type": "Pipeline", "id": route.target},
                            gate.context)
        invoke = invoke if ran.allowed else ran
    if not invoke.allowed or route.group is None:
        pipeline = route.target if route.group is None else None
        return RoutePlan(facts.route, principal, facts, invoke, (), pipeline)
    kind = served_kind(graph, facts.route)
    if kind is not None:
        tiers = explain_whole(graph, facts.route, kind, facts.estimated_tokens, gate,
                              every_provider, state)
    else:
        tiers = explain(graph, facts.route, facts.estimated_tokens, facts.max_tokens,
                        facts.stream, state, gate, every_provider)
    return RoutePlan(facts.route, principal, facts, invoke, tuple(tiers))


def decision_dict(decision: Decision) -> dict[str, Any]:
    return {"decision": "allow" if decision.allowed else "deny",
            "policies": list(decision.policies), "priority": decision.priority,
            "errors": list(decision.errors)}


def _tier(tier: TierExplanation) -> dict[str, Any]:
    return {
        "group": tier.group, "reason": tier.reason, "strategy": tier.strategy,
        "order": [{"deployment": name, "expected_cost": cost,
                   "priority": tier.decisions[name].priority if name in tier.decisions else 0,
                   "policies": list(tier.decisions[name].policies)
                   if name in tier.decisions else []}
                  for name, cost in tier.order],
        "dropped": [{"deployment": item.deployment, "reason": item.reason,
                     "policies": list(item.policies) if isinstance(item, Denied) else []}
                    for item in tier.dropped],
    }
