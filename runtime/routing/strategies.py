"""Group strategies: the order in which a group's members are tried for one request.

Each takes the members that can serve the request (already filtered) and returns them
ordered; the attempt loop walks that order. Unknown latencies sort first, so a new
deployment gets measured instead of starved.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from aigw.compiler.graph import Deployment, Group

from .state import RoutingState

# What a request is expected to produce when it sets no max_tokens (for lowest_cost).
EXPECTED_OUTPUT_TOKENS = 256
# prefix_affinity: the member a prefix hashes to keeps it while its load is at most
# this much above the least loaded member's (requests), or this share above it.
AFFINITY_SLACK = 4
AFFINITY_RATIO = 1.5
PREFIX_CHARS = 4096  # of each message that names a conversation's start


@dataclass(frozen=True, slots=True)
class Demand:
    """What the strategies need to know of the request."""

    prompt_tokens: int
    output_tokens: int | None
    stream: bool
    prefix: int = 0  # prefix_affinity: a stable digest of the conversation's start
    search_units: int = 0  # a rerank call's (lowest_cost weighs Cohere's price of them)


def prefix_digest(texts: Sequence[str]) -> int:
    """A digest of a conversation's first messages that every gateway process computes
    alike (unlike ``hash``, which is salted per process), so all replicas agree."""
    digest = 0
    for text in texts:
        digest = zlib.crc32(text[:PREFIX_CHARS].encode(), digest)
    return digest


Strategy = Callable[[Group, list[Deployment], RoutingState, Demand], list[Deployment]]


def _priority(group: Group, members: list[Deployment], state: RoutingState,
              demand: Demand) -> list[Deployment]:
    return members


def _weighted(group: Group, members: list[Deployment], state: RoutingState,
              demand: Demand) -> list[Deployment]:
    # Weighted sampling without replacement (Efraimidis-Spirakis): key = u ** (1 / w).
    weight = dict(zip((m.name for m in group.members), group.weights, strict=True))
    keyed = [(state.rng.random() ** (1.0 / weight.get(m.name, 1)), m) for m in members]
    return [m for _key, m in sorted(keyed, key=lambda item: item[0], reverse=True)]


def _round_robin(group: Group, members: list[Deployment], state: RoutingState,
                 demand: Demand) -> list[Deployment]:
    if not members:
        return members
    turn = state.round_robin.get(group.name, 0)
    state.round_robin[group.name] = turn + 1
    start = turn % len(members)
    return members[start:] + members[:start]


def _least_busy(group: Group, members: list[Deployment], state: RoutingState,
                demand: Demand) -> list[Deployment]:
    return sorted(members, key=lambda m: state.of(m).load())


def _lowest_latency(group: Group, members: list[Deployment], state: RoutingState,
                    demand: Demand) -> list[Deployment]:
    def latency(member: Deployment) -> float:
        stats = state.of(member)
        value = stats.ttft_ms if demand.stream and stats.ttft_ms is not None else stats.latency_ms
        return -1.0 if value is None else value

    return sorted(members, key=latency)


def expected_cost(member: Deployment, demand: Demand) -> float:
    output = demand.output_tokens if demand.output_tokens is not None \
        else min(EXPECTED_OUTPUT_TOKENS, member.max_output_tokens)  # 0: an embeddings call
    return member.price.cost(demand.prompt_tokens, output, search_units=demand.search_units)


def _lowest_cost(group: Group, members: list[Deployment], state: RoutingState,
                 demand: Demand) -> list[Deployment]:
    return sorted(members, key=lambda m: expected_cost(m, demand))


def _usage(group: Group, members: list[Deployment], state: RoutingState,
           demand: Demand) -> list[Deployment]:
    now = state.clock()

    def headroom(member: Deployment) -> float:
        if member.tpm is None:
            return math.inf
        return member.tpm - state.of(member).tokens_last_minute(now)

    return sorted(members, key=headroom, reverse=True)


def _prefix_affinity(group: Group, members: list[Deployment], state: RoutingState,
                     demand: Demand) -> list[Deployment]:
    """The same conversation start to the same member (whose server then has its prefix in
    its KV cache), bounded by load: a member busier than the least busy one by more than
    the slack gives way to it. Rendezvous hashing, so removing one member moves only the
    prefixes it had."""
    def weight(member: Deployment) -> bytes:
        return hashlib.blake2b(f"{demand.prefix}:{member.name}".encode(), digest_size=8).digest()

    ranked = sorted(members, key=weight, reverse=True)
    if not ranked:
        return ranked
    least = min(state.of(m).load() for m in ranked)
    bound = max(least + AFFINITY_SLACK, least * AFFINITY_RATIO)
    first = next((m for m in ranked if state.of(m).load() <= bound), ranked[0])
    return [first, *(m for m in ranked if m is not first)]


STRATEGIES: Mapping[str, Strategy] = MappingProxyType({
    "priority": _priority,
    "weighted": _weighted,
    "round_robin": _round_robin,
    "least_busy": _least_busy,
    "lowest_latency": _lowest_latency,
    "lowest_cost": _lowest_cost,
    "usage": _usage,
    "prefix_affinity": _prefix_affinity,
})


def order(group: Group, members: Sequence[Deployment], state: RoutingState,
          demand: Demand) -> list[Deployment]:
    """``members`` in the order ``group``'s strategy would try them for ``demand``."""
    return STRATEGIES[group.strategy](group, list(members), state, demand)
