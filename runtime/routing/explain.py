"""``aigw route``: what the gateway would do with a request, without calling anything.

A chat goes through the attempt loop's tiers (``explain``), and so do the calls of the
other kinds (``explain_whole``), each with its own test of which members fit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from aigw.compiler.graph import Graph, Group

from ..chat_request import ChatRequest, Message
from ..policy import Decision, RequestGate
from ..providers.base import ChatAdapter
from ..providers.registry import ADAPTERS
from .candidates import (
    Ask,
    AudioAsk,
    ChatAsk,
    Dropped,
    EmbeddingAsk,
    InputAsk,
    RerankAsk,
)
from .choice import fallbacks, rank, untried_class
from .state import RoutingState
from .strategies import expected_cost


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
    key in CI) as available. A prefix_affinity group is ordered as for a conversation
    that starts with an empty message: the facts hold no conversation, and a real one
    may go to another member first.
    """
    route = graph.routes[route_name]
    if route.group is None:
        return []
    request = ChatRequest(
        model=route_name,
        messages=[Message(role="user", content="")],
        max_tokens=max_tokens,
        stream=stream,
    )
    # The Ask the attempt loop would have for this stand-in, its demand included: a
    # prefix_affinity group is ordered by the digest of its (empty) conversation's start.
    ask = ChatAsk(_adapters(graph, every_provider), route, request, prompt_tokens)
    return _tiers(graph, route.group, ask, state, gate)


def served_kind(graph: Graph, route_name: str) -> str | None:
    """The one kind the route's deployments serve, when it is not chat (embeddings,
    rerank, image, moderation): then it is explained as its endpoint serves it
    (``explain_whole``)."""
    kinds = {deployment.kind for deployment in graph.routes[route_name].candidates}
    return next(iter(kinds)) if len(kinds) == 1 and kinds != {"chat"} else None


def explain_whole(
    graph: Graph,
    route_name: str,
    kind: str,
    prompt_tokens: int,
    gate: RequestGate | None = None,
    every_provider: bool = False,
    state: RoutingState | None = None,
) -> list[TierExplanation]:
    """What ``POST /v1/embeddings`` would try for one input of ``prompt_tokens`` (of
    text), ``POST /v1/rerank`` for a query of them over up to 100 documents (one
    search unit), an image or moderation call of a prompt or text of them, or
    ``/v1/audio/*`` (``kind``): the attempt loop's tiers, as for a chat (``explain``)."""
    route = graph.routes[route_name]
    if route.group is None:
        return []
    adapters = _adapters(graph, every_provider)
    ask: Ask
    if kind == "rerank":
        ask = RerankAsk(adapters, prompt_tokens, prompt_tokens, 1)
    elif kind in ("image", "moderation"):
        ask = InputAsk(adapters, kind, prompt_tokens, prompt_tokens,
                       "prompt" if kind == "image" else "input")
    elif kind == "embeddings":
        ask = EmbeddingAsk(adapters, prompt_tokens, prompt_tokens, False)
    else:  # transcription, speech (/v1/audio/*), realtime (/v1/realtime)
        ask = AudioAsk(adapters, kind, prompt_tokens)
    return _tiers(graph, route.group, ask, state, gate)


def _adapters(graph: Graph, every_provider: bool) -> Mapping[str, ChatAdapter]:
    return {name: _Placeholder() for name, p in graph.providers.items()  # type: ignore[misc]
            if (p.enabled or every_provider) and p.type in ADAPTERS}


def _tiers(
    graph: Graph,
    first: Group,
    ask: Ask,
    state: RoutingState | None,
    gate: RequestGate | None,
) -> list[TierExplanation]:
    state = state or RoutingState()
    state.sync(graph)
    tiers: list[TierExplanation] = []
    queue: deque[tuple[Group, str]] = deque([(first, "route")])
    seen: set[str] = set()
    while queue:
        group, reason = queue.popleft()
        if group.name in seen:
            continue
        seen.add(group.name)
        ranked = rank(group, ask, state, gate)
        ordered, dropped = ranked.ordered, ranked.dropped
        tiers.append(TierExplanation(
            group.name, reason, group.strategy,
            tuple((c.deployment.name, expected_cost(c.deployment, ask.demand))
                  for c in ordered),
            tuple(dropped),
            ranked.decisions,
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


class _Placeholder:
    """Stands in for an adapter: explaining never calls an upstream."""


def render(route_name: str, tiers: list[TierExplanation], prompt_tokens: int,
           max_tokens: int | None) -> str:
    lines = [f"route {route_name}: {prompt_tokens} prompt tokens, "
             f"max_tokens {max_tokens if max_tokens is not None else 'unset'}"]
    for tier in tiers:
        lines.append(f"  group {tier.group} ({tier.reason}, strategy {tier.strategy})")
        for place, (name, cost) in enumerate(tier.order, start=1):
            decision = tier.decisions.get(name)
            permitted = ""
            if decision is not None and decision.policies:
                permitted = (f"  permitted by {', '.join(decision.policies)} "
                             f"(priority {decision.priority})")
            lines.append(f"    {place}. {name}  expected cost {cost:.6f}{permitted}")
        for item in tier.dropped:
            lines.append(f"    dropped {item.deployment}: {item.reason}")
    return "\n".join(lines) + "\n"
