"""Which members of a group can serve a request at all, decided before any upstream call.

A member is dropped, with the reason kept for the 422/503 message, the debug trace
and ``aigw route``, when its provider is disabled, it is not a chat model, it lacks a
capability the request needs, or the prompt plus the requested output cannot fit
its context window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aigw.compiler.graph import Deployment, Group

from ..chat_request import ChatRequest
from ..providers.base import ChatAdapter
from .state import RoutingState
from .strategies import Demand, order


@dataclass(frozen=True, slots=True)
class Candidate:
    """A deployment that can take this request, with its adapter and output cap."""

    deployment: Deployment
    adapter: ChatAdapter
    max_output_tokens: int


@dataclass(frozen=True, slots=True)
class Dropped:
    deployment: str
    reason: str
    unfit: bool  # True: the request does not fit it (422); False: it is unavailable (503)


def required_capabilities(request: ChatRequest) -> frozenset[str]:
    needs = set()
    if request.stream:
        needs.add("streaming")
    if request.tools:
        needs.add("tools")
    response_format = (request.model_extra or {}).get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        needs.add("json_schema")
    for message in request.messages:
        if isinstance(message.content, list) and any(
            part.type in ("image_url", "input_image") for part in message.content
        ):
            needs.add("vision")
    return frozenset(needs)


def eligible(
    group: Group,
    adapters: Mapping[str, ChatAdapter],
    request: ChatRequest,
    prompt_tokens: int,
) -> tuple[list[Candidate], list[Dropped]]:
    """Split ``group``'s members into those that can serve ``request`` and those that cannot."""
    needs = required_capabilities(request)
    wanted = request.output_limit
    fit: list[Candidate] = []
    dropped: list[Dropped] = []
    for deployment in group.members:
        adapter = adapters.get(deployment.provider.name)
        if deployment.kind != "chat":
            dropped.append(Dropped(deployment.name, "is an embeddings model", True))
            continue
        if adapter is None:
            reason = deployment.provider.disabled_reason or "its provider has no adapter"
            dropped.append(Dropped(deployment.name, f"is disabled: {reason}", False))
            continue
        missing = needs - deployment.capabilities
        if missing:
            dropped.append(Dropped(deployment.name, f"lacks {', '.join(sorted(missing))}", True))
            continue
        room = deployment.context_window - prompt_tokens
        if room < 1 or (wanted is not None and wanted > min(room, deployment.max_output_tokens)):
            dropped.append(Dropped(
                deployment.name,
                f"holds {deployment.context_window} tokens (at most "
                f"{deployment.max_output_tokens} out); the request needs {prompt_tokens} in + "
                f"{wanted or 1} out",
                True,
            ))
            continue
        fit.append(Candidate(deployment, adapter, deployment.output_cap(prompt_tokens, wanted)))
    return fit, dropped


def order_candidates(
    group: Group, candidates: list[Candidate], state: RoutingState, demand: Demand
) -> list[Candidate]:
    """``candidates`` in the order of ``group``'s strategy."""
    by_name = {candidate.deployment.name: candidate for candidate in candidates}
    ranked = order(group, [candidate.deployment for candidate in candidates], state, demand)
    return [by_name[deployment.name] for deployment in ranked]
