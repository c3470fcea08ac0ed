"""Which member a request goes to: one tier's members ranked, and the first to call now.

    members -> fit the request (its ``Ask``) -> Cedar's route policies (``gate``) ->
    the group's strategy (live stats) -> the permitting policy's @priority

The attempt loop ranks each tier so (``rank``), ``aigw route`` and the policy router
explain each so, and an endpoint that asks one deployment something about a request
without serving it (Gemini's ``countTokens``) asks the member the attempt loop would
call first now (``first_choice``): the same ranking, members whose circuit is open (or
whose vLLM server is down) skipped, and a group with none left followed to the
fallbacks the attempt loop would take.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from aigw.compiler.graph import Deployment, Graph, Group

from ..policy import Decision, RequestGate
from .candidates import Ask, Candidate, Dropped, order_candidates
from .state import RoutingState


@dataclass(frozen=True, slots=True)
class Ranked:
    """A tier's members for one request: those to try, in order, those dropped (unfit,
    disabled, denied by policy) with why, and Cedar's decision on each it was asked of
    (empty without a gate)."""

    ordered: list[Candidate]
    dropped: list[Dropped]
    decisions: Mapping[str, Decision]


_NO_DECISIONS: Mapping[str, Decision] = MappingProxyType({})


def rank(group: Group, ask: Ask, state: RoutingState, gate: RequestGate | None) -> Ranked:
    """``group``'s members that fit ``ask`` and the route policies permit, in the order
    its strategy gives them on ``state``, the highest permitting @priority first."""
    fit, dropped = ask.eligible(group)
    if gate is None:
        return Ranked(order_candidates(group, fit, state, ask.demand), dropped, _NO_DECISIONS)
    filtered = gate.filter(fit)
    ordered = order_candidates(group, filtered.permitted, state, ask.demand)
    return Ranked(filtered.by_priority(ordered), [*dropped, *filtered.denied],
                  filtered.decisions)


def first_choice(graph: Graph, group: Group, ask: Ask, state: RoutingState,
                 gate: RequestGate | None) -> Candidate | None:
    """The member the attempt loop would call first for ``ask`` now, starting at
    ``group`` (the route's), or None where it would call none. ``state`` is read, not
    moved: give it a ``RoutingState.shadow`` where a strategy keeps a counter."""
    queue = [group]
    seen: set[str] = set()
    while queue:
        tier = queue.pop(0)
        if tier.name in seen:
            continue
        seen.add(tier.name)
        ranked = rank(tier, ask, state, gate)
        for candidate in ranked.ordered:
            if unavailable(state, candidate.deployment) is None:
                return candidate
        # Every member skipped or dropped: the attempt loop falls back by why.
        queue += [graph.groups[name] for name in fallbacks(tier, untried_class(ranked.dropped))
                  if name in graph.groups]
    return None


def untried_class(dropped: Sequence[Dropped]) -> str:
    """How a tier failed when none of its members is tried: "context_window" when some
    were dropped as unfit for the request (too small, lacking a capability) and the
    rest could not serve anyway (disabled, denied by policy), else "error" (none
    unfit, or no members). A disabled member beside one too small sent a long prompt to
    the error fallbacks (or to a 503), never to the context-window ones."""
    return "context_window" if any(d.unfit for d in dropped) else "error"


def fallbacks(group: Group, failure_class: str) -> tuple[str, ...]:
    """The groups ``group`` falls back to after a failure of ``failure_class``."""
    if failure_class == "rate_limit":
        return group.on_rate_limit
    if failure_class == "context_window":
        return group.on_context_window
    if failure_class == "content_policy":
        return group.on_content_policy
    return group.fallbacks


def unavailable(state: RoutingState, deployment: Deployment) -> str | None:
    """Why no call should go to ``deployment`` now (its circuit is open, or the vLLM
    server aigw runs for it is loading or down), or None."""
    stats = state.of(deployment)
    if not stats.breaker.available(state.clock()):
        return "circuit open"
    return stats.server_down
