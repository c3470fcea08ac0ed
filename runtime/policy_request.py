"""The policy stage of a request: its principal and context, then the invoke decision.

Headers a client may send: ``x-aigw-latency-sla-ms`` (the latency it needs; default:
the request's deadline) and ``x-aigw-tags: a,b`` (``context.tags``). The remaining
budget is read from the limits store only when some policy reads it, and for a chat
request whose invoke policies do not, it comes with the request's reservation instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from starlette.datastructures import Headers

from aigw.compiler.graph import ApiKey, Graph, Route, TargetKind

from .admission import budget_remaining
from .errors import BadRequest, Forbidden, StoreUnavailable
from .live import Live
from .policy import Decision, Facts, RequestGate, principal_for
from .store import Limits, Store

if TYPE_CHECKING:
    from .chat import Plan


log = logging.getLogger("aigw.policy")

SLA_HEADER = "x-aigw-latency-sla-ms"
TAGS_HEADER = "x-aigw-tags"
DEFAULT_DEADLINE_MS = 300_000  # a route's default deadline, for calls that have none

# What an execution made before its request's facts were kept is asked with, and what its
# deny adds: an older aigw kept none, so these are the facts of a request that sent no
# x-aigw-tags and no x-aigw-latency-sla-ms, as the workflow API checks it.
UNKEPT_FACTS = Facts(route="", estimated_tokens=0, max_tokens=None, stream=False,
                     latency_sla_ms=DEFAULT_DEADLINE_MS)
UNKEPT = (f"The execution was made before aigw kept the facts of the request that started "
          f"it, so it was asked as one with no {TAGS_HEADER} and no {SLA_HEADER}; start "
          "it again to run it.")
UNKEPT_ROUTE = ("The execution was made before aigw kept the facts of the request that "
                "started it, which may have come through route '{route}': it was asked as "
                f"such a request with no {TAGS_HEADER} and no {SLA_HEADER}; start it again "
                "to run it.")


async def authorize(
    live: Live,
    store: Store,
    key: ApiKey,
    user: str | None,
    plan: Plan,
    headers: Headers,
    limits: Sequence[Limits],
) -> Plan:
    """``plan`` with its Cedar gate, once the principal may invoke the route (else 403).

    When only route policies read the remaining budget (as the shipped ones), it is not
    read here: the request's reservation brings it (``RequestGate.learn_budget``), one
    store round trip fewer."""
    if not live.policy.enforced:  # no policies at all: nothing to decide, no gate to build
        return plan
    facts = Facts(
        route=plan.route.name,
        estimated_tokens=plan.prompt_tokens,
        max_tokens=plan.request.output_limit,
        stream=plan.request.stream,
        latency_sla_ms=latency_sla_ms(headers, (plan.deadline - live.routing.clock()) * 1000),
        tags=request_tags(headers),
    )
    reads = live.policy.authorization.reads
    later = "budget_remaining" in reads.context and "budget_remaining" not in reads.before_routing
    gate = await _gate(live, key, user, facts, store, limits, budget_later=later)
    gate.check_invoke(plan.route.name)
    return plan.with_gate(gate)


async def authorize_route(
    live: Live, key: ApiKey, user: str | None, route: Route, headers: Headers,
    estimated_tokens: int, max_tokens: int | None = None, stream: bool = False,
) -> RequestGate:
    """The gate of a request that does not go through ``Exchange`` (a pipeline route, an
    embeddings call), once it may invoke ``route`` (else 403)."""
    facts = Facts(route=route.name, estimated_tokens=estimated_tokens, max_tokens=max_tokens,
                  stream=stream, latency_sla_ms=latency_sla_ms(headers, route.deadline_s * 1000),
                  tags=request_tags(headers))
    gate = await _gate(live, key, user, facts)
    gate.check_invoke(route.name)
    return gate


async def authorize_pipeline(
    live: Live, key: ApiKey, user: str | None, pipeline: str, headers: Headers,
) -> Facts:
    """The invoke check for running pipeline ``pipeline`` directly (``Pipeline::"name"``),
    as the workflow API does; a deny is a 403 naming the deciding policies. Returns the
    facts it was asked with (an execution keeps them: ``facts_to_keep``)."""
    facts = Facts(route="", estimated_tokens=0, max_tokens=None, stream=False,
                  latency_sla_ms=latency_sla_ms(headers, DEFAULT_DEADLINE_MS),
                  tags=request_tags(headers))
    (await _gate(live, key, user, facts)).check_invoke_pipeline(pipeline)
    return facts


async def authorize_pipeline_again(
    live: Live, key: ApiKey, user: str | None, pipeline: str,
    kept: Mapping[str, Any] | None, made_for: str,
) -> None:
    """The invoke check on ``Pipeline::"name"`` asked again for an execution of pipeline
    ``made_for`` (as it resumes, or for a step that runs another pipeline) with the facts
    of the request that made it (``kept``), what is true at the moment (its hour, the
    budget left) read now; a deny is a 403 as at the start.

    An execution made before its request's facts were kept (``kept`` None) fails closed:
    it is asked as each request that could have made it (``unkept_facts``), and a deny of
    any (a forbid, or no permit) stops it, saying why. Asked as a workflow API request
    alone, one made through a chat route went on where a forbid names that route."""
    await _authorize_again(live, key, user, kept, made_for,
                           lambda gate: gate.check_invoke_pipeline(pipeline))


async def authorize_agent(
    live: Live, key: ApiKey, user: str | None, agent: str, kept: Mapping[str, Any] | None,
    made_for: str,
) -> None:
    """The invoke check on ``Agent::"name"`` for an ``agent`` step of an execution of
    pipeline ``made_for``, asked as ``authorize_pipeline_again`` asks (the facts of the
    request that made it)."""
    await _authorize_again(live, key, user, kept, made_for,
                           lambda gate: gate.check_invoke_agent(agent))


async def _authorize_again(
    live: Live, key: ApiKey, user: str | None, kept: Mapping[str, Any] | None,
    made_for: str, check: Callable[[RequestGate], Decision],
) -> None:
    if kept is not None:
        check(await _gate(live, key, user, Facts(
            route=str(kept.get("route", "")),
            estimated_tokens=int(kept.get("estimated_tokens", 0)),
            max_tokens=kept.get("max_tokens"),
            stream=bool(kept.get("stream", False)),
            latency_sla_ms=int(kept.get("latency_sla_ms", DEFAULT_DEADLINE_MS)),
            tags=tuple(kept.get("tags", ())),
        )))
        return
    for facts in unkept_facts(live.graph, key, made_for):
        gate = await _gate(live, key, user, facts)
        try:
            check(gate)
        except Forbidden as exc:
            why = UNKEPT_ROUTE.format(route=facts.route) if facts.route else UNKEPT
            raise Forbidden(f"{exc.message} {why}", headers=exc.headers) from exc


def unkept_facts(graph: Graph, key: ApiKey, pipeline: str) -> tuple[Facts, ...]:
    """The requests that could have made an execution of ``pipeline`` by ``key`` that kept
    no facts (an older aigw's): one to the workflow API, then one through each route
    that runs ``pipeline`` and that ``key`` may use, its SLA the route's deadline. Their
    tags and sizes cannot be told again: none are sent.

    Which of them made it is not known, so each is asked: a policy that names a route
    (``context.route``) is held to the execution as to the requests that route serves.
    """
    routes = (Facts(route=name, estimated_tokens=0, max_tokens=None, stream=False,
                    latency_sla_ms=int(route.deadline_s * 1000))
              for name, route in graph.routes.items()
              if route.kind is TargetKind.PIPELINE and route.target == pipeline
              and (key.routes is None or name in key.routes))
    return (UNKEPT_FACTS, *routes)


async def authorize_mcp(
    live: Live, key: ApiKey, user: str | None, server: str, tool: str, timeout_s: float,
    headers: Headers,
) -> RequestGate | None:
    """The invoke check on ``McpServer::"server"`` for one message (``tool``: the tool a
    tools/call names, else ""); a deny is a 403 naming the deciding policies. Returns
    the gate (None when no policies are enforced), which a tools/list filters with."""
    if not live.policy.enforced:
        return None
    facts = Facts(route="", estimated_tokens=0, max_tokens=None, stream=False,
                  latency_sla_ms=latency_sla_ms(headers, timeout_s * 1000),
                  tags=request_tags(headers), tool=tool)
    gate = await _gate(live, key, user, facts)
    gate.check_invoke_mcp(server)
    return gate


async def authorize_passthrough(live: Live, key: ApiKey, user: str | None, name: str,
                                timeout_s: float, headers: Headers) -> None:
    """The invoke check on ``Passthrough::"name"`` for one request; a deny is a 403
    naming the deciding policies."""
    if not live.policy.enforced:
        return
    facts = Facts(route="", estimated_tokens=0, max_tokens=None, stream=False,
                  latency_sla_ms=latency_sla_ms(headers, timeout_s * 1000),
                  tags=request_tags(headers))
    gate = await _gate(live, key, user, facts)
    gate.check_invoke_passthrough(name)


def kept_headers(kept: Mapping[str, Any] | None) -> dict[str, str]:
    """The policy headers of the request whose facts an execution kept (its tags and
    latency SLA), so that its model calls are authorized and routed as that request
    would have been (a forbid on a deployment for tagged requests holds for its steps
    too); none for an execution that kept no facts.

    >>> kept_headers({"tags": ["eu", "release"], "latency_sla_ms": 400})
    {'x-aigw-latency-sla-ms': '400', 'x-aigw-tags': 'eu,release'}
    """
    if kept is None:
        return {}
    headers = {SLA_HEADER: str(int(kept.get("latency_sla_ms", DEFAULT_DEADLINE_MS)))}
    tags = [str(tag) for tag in kept.get("tags", ())]
    if tags:
        headers[TAGS_HEADER] = ",".join(tags)
    return headers


def facts_to_keep(facts: Facts) -> dict[str, Any]:
    """What an execution keeps of the facts its request was checked with: what the
    request said (its route, tags, latency SLA, sizes), not what was true at that
    moment (the hour, the budget left: read again when asked again). No secrets: the
    key and end user are the execution's own fields.

    >>> facts_to_keep(Facts("", 0, None, False, 300000, tags=("release",)))["tags"]
    ['release']
    """
    return {"route": facts.route, "estimated_tokens": facts.estimated_tokens,
            "max_tokens": facts.max_tokens, "stream": facts.stream,
            "latency_sla_ms": facts.latency_sla_ms, "tags": list(facts.tags)}


async def _gate(live: Live, key: ApiKey, user: str | None, facts: Facts,
                store: Store | None = None, limits: Sequence[Limits] | None = None,
                budget_later: bool = False) -> RequestGate:
    """The request's gate, with the remaining budget read when some policy reads it
    (``budget_later``: the caller gives it to the gate once the request is admitted)."""
    engine = live.policy
    reads = engine.authorization.reads
    if engine.enforced and "budget_remaining" in reads.context and not budget_later:
        try:
            store = store or await live.store.get()
            found = await budget_remaining(store, tuple(limits or live.scopes.limits(key, user)))
            facts = facts.with_budget(found)
        except StoreUnavailable:
            log.warning("budget unknown for the policy context: the store is unavailable")
    who = f"user '{user}' of key '{key.name}'" if user else f"key '{key.name}'"
    return RequestGate(engine, principal_for(engine.authorization, key, user), facts, who,
                       budget_pending=budget_later)


def latency_sla_ms(headers: Headers, deadline_ms: float) -> int:
    """The client's latency SLA in milliseconds, else what is left of its deadline."""
    asked = headers.get(SLA_HEADER)
    if asked is None:
        return max(0, round(deadline_ms))
    try:
        value = int(asked)
    except ValueError:
        raise BadRequest(f"{SLA_HEADER} must be a whole number of milliseconds.") from None
    if value < 0:
        raise BadRequest(f"{SLA_HEADER} must not be negative.")
    return value


def request_tags(headers: Headers) -> tuple[str, ...]:
    raw = headers.get(TAGS_HEADER)
    if not raw:  # most requests send none: no split, set and sort for nothing
        return ()
    return tuple(sorted({tag.strip() for tag in raw.split(",") if tag.strip()}))
