"""Cedar at request time: may this caller use this route, and which deployments may serve it.

    invoke   one decision before routing; a deny is a 403 naming the deciding policies
    route    each tier's candidates in one ``is_authorized_batch`` call, with live metrics
             in the deployment entities; the permitted ones are ordered by the highest
             @priority among the policies that permitted them (then the group's strategy)

The policy set, schema and static entities come parsed from the graph. Per request
only the principal (for an end user), the context and the candidates' live values
are written, and only the attributes and fields some policy reads. Entity sets and
decisions are cached by exactly what they were computed from, so a decision is
recomputed only when something a policy can see has changed.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import cedarpy

from aigw.compiler.authorization import Authorization
from aigw.compiler.entity_model import DEPLOYMENT_LIVE, cedar_decimal, cedar_long, encode_value
from aigw.compiler.graph import ApiKey, Deployment, Graph

from .errors import Forbidden
from .policy_keys import (
    CedarContext,
    ContextEncoder,
    compile_comparison,
    mentions_resource,
    plain,
)
from .policy_live import LiveSource
from .routing.candidates import Candidate, Dropped

log = logging.getLogger("aigw.policy")

_ROUTE = {"type": "Action", "id": "route"}
INVOKE: Mapping[str, str] = MappingProxyType({"type": "Action", "id": "invoke"})
_CACHE_ENTITIES = 64
_CACHE_DECISIONS = 4096
_CACHE_JSON = 1024
# A live value as comparisons see it: what plain(encode_value(...)) gives, directly.
_PLAIN: Mapping[str, Callable[[Any], Any]] = MappingProxyType({
    "Long": lambda value: cedar_long(float(value)),
    "decimal": lambda value: plain(cedar_decimal(float(value))),
    "Bool": bool,
})


@dataclass(frozen=True, slots=True)
class Facts:
    """What the request context is made of, before Cedar encoding.

    ``budget_remaining`` None means no budget applies (sent as the largest decimal);
    ``latency_sla_ms`` defaults to the request's deadline.
    """

    route: str
    estimated_tokens: int
    max_tokens: int | None
    stream: bool
    latency_sla_ms: int
    budget_remaining: float | None = None
    intent: str = ""
    tags: tuple[str, ...] = ()
    hour_of_day: int = field(default_factory=lambda: time.gmtime().tm_hour)
    tool: str = ""  # the MCP tool a tools/call names

    def with_tool(self, tool: str) -> Facts:
        """These facts about MCP tool ``tool`` (built, as ``with_budget``)."""
        return Facts(self.route, self.estimated_tokens, self.max_tokens, self.stream,
                     self.latency_sla_ms, self.budget_remaining, self.intent, self.tags,
                     self.hour_of_day, tool)

    def with_budget(self, remaining: float | None) -> Facts:
        """These facts with ``budget_remaining`` read (built, not ``dataclasses.replace``d:
        this runs once a request)."""
        return Facts(self.route, self.estimated_tokens, self.max_tokens, self.stream,
                     self.latency_sla_ms, remaining, self.intent, self.tags, self.hour_of_day,
                     self.tool)

    def values(self) -> dict[str, Any]:
        return {
            "estimated_tokens": self.estimated_tokens,
            "max_tokens": self.max_tokens or 0,
            "stream": self.stream,
            "latency_sla_ms": self.latency_sla_ms,
            "budget_remaining": self.budget_remaining,
            "intent": self.intent,
            "hour_of_day": self.hour_of_day,
            "tags": self.tags,
            "route": self.route,
            "tool": self.tool,
        }


@dataclass(frozen=True, slots=True)
class Principal:
    """Who asks: an API key, or an end user (the request's ``user``) of one."""

    entity_type: str
    id: str
    # The entities that are the request's own (a User, a JWT's Subject) as JSON objects
    # joined by commas; an ApiKey is among the static entities
    entity: str | None

    @property
    def uid(self) -> dict[str, str]:
        return {"type": self.entity_type, "id": self.id}

    def __str__(self) -> str:
        return f"{self.entity_type}::{json.dumps(self.id)}"


def principal_for(authorization: Authorization, key: ApiKey, user: str | None) -> Principal:
    """``ApiKey::"name"`` (or, signed in with a JWT, ``Subject::"sub"`` in its issuer and
    team), or ``User::"user"`` in that key (or subject) and its team."""
    admin = {"admin": key.admin} if "admin" in authorization.reads.attributes else {}
    team = [{"type": "Team", "id": key.team.name}] if key.team is not None else []
    entities: list[str] = []
    if key.issuer is not None and key.subject is not None:
        owner = {"type": "Subject", "id": key.subject}
        entities.append(json.dumps({"uid": owner, "attrs": admin, "parents": [
            {"type": "Issuer", "id": key.issuer}, *team]}, separators=(",", ":")))
    else:
        owner = {"type": "ApiKey", "id": key.name}
    if not user:
        return Principal(owner["type"], owner["id"], ",".join(entities) or None)
    entity = {"uid": {"type": "User", "id": user}, "attrs": admin, "parents": [owner, *team]}
    entities.append(json.dumps(entity, separators=(",", ":")))
    return Principal("User", user, ",".join(entities))


@dataclass(frozen=True, slots=True)
class Decision:
    """One Cedar answer, in our terms."""

    allowed: bool
    policies: tuple[str, ...]  # the deciding @ids: permits when allowed, forbids when denied
    priority: int  # the highest @priority among the permitting policies
    errors: tuple[str, ...] = ()


ALLOWED = Decision(True, (), 0)


@dataclass(frozen=True, slots=True)
class Denied(Dropped):
    """A candidate a policy does not let serve this request."""

    policies: tuple[str, ...] = ()


class PolicyEngine:
    """Asks Cedar about one graph; caches entity sets and decisions by what made them."""

    def __init__(self, graph: Graph, live: LiveSource) -> None:
        self.graph = graph
        self.authorization = graph.authorization
        self.live = live
        reads = self.authorization.reads
        self._live_fields = tuple(sorted(set(DEPLOYMENT_LIVE) & reads.attributes))
        self._live_exact = tuple(i for i, name in enumerate(self._live_fields)
                                 if f"resource.{name}" not in reads.compared)
        self._comparisons = tuple(compile_comparison(item) for item in reads.comparisons
                                  if mentions_resource(item))
        self._plain = tuple(_PLAIN[DEPLOYMENT_LIVE[name].text] for name in self._live_fields)
        self._live_names = tuple(f"resource.{name}" for name in self._live_fields)
        # kind and target of every route a request can name, and of those made up for a
        # pipeline step that names a group or deployment (policies see those too).
        self._routes = {
            route.name: {"resource.kind": route.kind.value, "resource.target": route.target}
            for routes in (*(p.routes for p in graph.pipelines.values()), graph.routes)
            for route in routes.values()
        }
        self._static = {
            name: {f"resource.{k}": plain(v) for k, v in attributes.items()}
            for name, attributes in self.authorization.deployment_attributes.items()
        }
        self._meanings: dict[tuple[str, ...], tuple[tuple[str, ...], int]] = {}
        self._encoder = ContextEncoder(reads)
        # What invoke decisions are asked with when the policies that can make them read
        # no context: any context gives the same answer, so one encoded once will do.
        self._blank = self._encoder.encode(Facts("", 0, None, False, 0, hour_of_day=0).values())
        self._contexts: OrderedDict[tuple[object, ...], CedarContext] = OrderedDict()
        self._outcomes: OrderedDict[tuple[object, ...], tuple[object, ...]] = OrderedDict()
        self._isolated = reads.live_isolated
        self._entities: OrderedDict[tuple[object, ...], cedarpy.Entities] = OrderedDict()
        self._decisions: OrderedDict[tuple[object, ...], Decision] = OrderedDict()
        self._json: OrderedDict[tuple[object, ...], str] = OrderedDict()
        self._logged: set[str] = set()

    @property
    def enforced(self) -> bool:
        # This class's own methods read ``self.authorization.enforced`` directly: three
        # property calls a request fewer.
        return self.authorization.enforced

    def context(self, facts: Facts) -> CedarContext:
        values = facts.values()
        raw = tuple([values[name] for name in self._encoder.names])
        found = self._contexts.get(raw)
        if found is None:
            found = self._encoder.encode(values)
            _remember(self._contexts, raw, found, _CACHE_JSON)
        return found

    def invoke_context(self, gate: RequestGate) -> CedarContext:
        """The context an invoke decision about ``gate``'s request is asked with: its own
        when some policy that can decide invoke reads the context, else the blank one
        (nothing to encode; the facts may still wait for the remaining budget)."""
        return gate.context if self.authorization.reads.before_routing else self._blank

    def invoke(self, principal: Principal, route: str, context: CedarContext) -> Decision:
        """May ``principal`` use route ``route``?"""
        if not self.authorization.enforced:
            return ALLOWED
        resource = {"type": "Route", "id": route}
        return self.decide(principal, INVOKE, resource, context)

    def decide(self, principal: Principal, action: Mapping[str, str],
               resource: Mapping[str, str], context: CedarContext) -> Decision:
        """One decision about a resource that is not a deployment (or is one: see ``route``)."""
        if not self.authorization.enforced:  # no policies at all: nothing is checked
            return ALLOWED
        deployment = self.graph.deployments.get(resource["id"])
        if action == _ROUTE and resource.get("type") == "Deployment" and deployment is not None:
            return self.route(principal, [deployment], context)[0]
        if self._isolated:  # the common case, a cached decision, without decide_each's lists
            found = self._decisions.get(self._decide_key(principal, action, resource, context))
            if found is not None:
                return found
        return self.decide_each(principal, action, resource, (context,))[0]

    def decide_each(self, principal: Principal, action: Mapping[str, str],
                    resource: Mapping[str, str], contexts: Sequence[CedarContext]
                    ) -> list[Decision]:
        """``decide`` under each of ``contexts`` (one resource that is not a deployment): the
        decisions not cached are asked in one Cedar call, each distinct key once (the tools
        of an MCP server, most of which no policy names, share one)."""
        if not self.authorization.enforced:
            return [ALLOWED] * len(contexts)
        keys = [self._decide_key(principal, action, resource, context) for context in contexts]
        found = [self._decisions.get(key) if self._isolated else None for key in keys]
        missing: dict[tuple[object, ...], int] = {}  # key -> the first context with it
        for i, item in enumerate(found):
            if item is None:
                missing.setdefault(keys[i], i)
        if missing:
            members = () if self._isolated else tuple(self.graph.deployments.values())
            entities = self._entities_for(principal, members, [self._live(d) for d in members])
            requests = [{"principal": principal.uid, "action": dict(action),
                         "resource": dict(resource), "context": contexts[i].text}
                        for i in missing.values()]
            answers = cedarpy.is_authorized_batch(requests, self.authorization.policy_set,
                                                  entities)
            decided = {key: self._decision(answer)
                       for key, answer in zip(missing, answers, strict=True)}
            if self._isolated:
                for key, decision in decided.items():
                    _remember(self._decisions, key, decision, _CACHE_DECISIONS)
            found = [item if item is not None else decided[key]
                     for item, key in zip(found, keys, strict=True)]
        return [item if item is not None else ALLOWED for item in found]

    def _decide_key(self, principal: Principal, action: Mapping[str, str],
                    resource: Mapping[str, str], context: CedarContext) -> tuple[object, ...]:
        return ("decide", *_who(principal), tuple(action.items()), tuple(resource.items()),
                context.key, self._resource_answers(resource, context))

    def route(self, principal: Principal, deployments: Sequence[Deployment],
              context: CedarContext) -> list[Decision]:
        """May each of ``deployments`` serve this request now? One Cedar call at most."""
        if not self.authorization.enforced:
            return [ALLOWED] * len(deployments)
        live = [self._live(d) for d in deployments]
        who = _who(principal)
        keys = [("route", *who, context.key, d.name, *self._deployment_key(d, values, context))
                for d, values in zip(deployments, live, strict=True)]
        found: list[Decision | None] = [
            self._decisions.get(key) if self._isolated else None for key in keys
        ]
        missing = [i for i, item in enumerate(found) if item is None]
        if missing:
            if self._isolated:
                members = tuple(deployments[i] for i in missing)
                values = [live[i] for i in missing]
            else:
                members = tuple(self.graph.deployments.values())
                values = [self._live(d) for d in members]
            entities = self._entities_for(principal, members, values)
            requests = [{"principal": principal.uid, "action": _ROUTE,
                         "resource": {"type": "Deployment", "id": deployments[i].name},
                         "context": context.text} for i in missing]
            answers = cedarpy.is_authorized_batch(
                requests, self.authorization.policy_set, entities
            )
            for i, answer in zip(missing, answers, strict=True):
                found[i] = decision = self._decision(answer)
                if self._isolated:
                    _remember(self._decisions, keys[i], decision, _CACHE_DECISIONS)
        return [item if item is not None else ALLOWED for item in found]

    def _deployment_key(self, deployment: Deployment, values: tuple[object, ...],
                        context: CedarContext) -> tuple[object, object]:
        """What a decision about ``deployment`` can see of its live values: the exact value
        of a field read otherwise, the outcome of the comparisons of the others."""
        if not self._comparisons:
            return values, ()
        exact = tuple([values[i] for i in self._live_exact])
        # The context's key says how its comparisons with literals came out; comparisons
        # with this deployment's attributes need the values they compare as well.
        key = (deployment.name, values, context.key, context.versus_resource)
        answers = self._outcomes.get(key)
        if answers is None:
            resource = dict(self._static.get(deployment.name, {}))
            for name, convert, value in zip(self._live_names, self._plain, values, strict=True):
                resource[name] = convert(value)
            answers = self._answers(context, resource)
            _remember(self._outcomes, key, answers, _CACHE_JSON)
        return exact, answers

    def _resource_answers(self, resource: Mapping[str, str],
                          context: CedarContext) -> tuple[object, ...]:
        """How the comparisons with resource attributes come out for a resource that is not
        a deployment (a route, on every request's invoke decision): its attributes are the
        graph's, so the outcome is a function of the context's key and the values it sets
        against resources, computed once for each."""
        if not self._comparisons:
            return ()
        key = ("resource", resource.get("type"), resource.get("id"), context.key,
               context.versus_resource)
        answers = self._outcomes.get(key)
        if answers is None:
            answers = self._answers(context, self._resource_values(resource))
            _remember(self._outcomes, key, answers, _CACHE_JSON)
        return answers

    def _answers(self, context: CedarContext, resource: Mapping[str, Any]) -> tuple[object, ...]:
        return tuple([evaluate(context.values, resource) for evaluate in self._comparisons])

    def _resource_values(self, resource: Mapping[str, str]) -> dict[str, Any]:
        """The attributes of a resource that is not a deployment, as comparisons see them."""
        if resource.get("type") != "Route":
            return {}
        return self._routes.get(resource["id"], {})

    def _live(self, deployment: Deployment) -> tuple[object, ...]:
        if not self._live_fields:
            return ()
        return self.live.values(deployment, self._live_fields)

    def _entities_for(self, principal: Principal, members: Sequence[Deployment],
                      live: Sequence[tuple[object, ...]]) -> cedarpy.Entities:
        parts = tuple(self._deployment_json(d, values) for d, values in zip(members, live,
                                                                              strict=True))
        key = (principal.entity, parts)
        handle = self._entities.get(key)
        if handle is not None:
            self._entities.move_to_end(key)
            return handle
        delta = [*([principal.entity] if principal.entity else []), *parts]
        base = self.authorization.entities
        handle = base.with_added_json_str("[" + ",".join(delta) + "]") if delta else base
        _remember(self._entities, key, handle, _CACHE_ENTITIES)
        return handle

    def _deployment_json(self, deployment: Deployment, values: tuple[object, ...]) -> str:
        key = (deployment.name, values)
        text = self._json.get(key)
        if text is None:
            attrs = dict(self.authorization.deployment_attributes[deployment.name])
            for name, value in zip(self._live_fields, values, strict=True):
                attrs[name] = encode_value(DEPLOYMENT_LIVE[name], value)
            groups = self.authorization.deployment_groups.get(deployment.name, ())
            text = json.dumps({"uid": {"type": "Deployment", "id": deployment.name},
                               "attrs": attrs,
                               "parents": [{"type": "Group", "id": g} for g in groups]},
                              separators=(",", ":"))
            _remember(self._json, key, text, _CACHE_JSON)
        return text

    def _decision(self, answer: cedarpy.AuthzResult) -> Decision:
        reasons = list(answer.diagnostics.reasons)
        errors = tuple(str(error) for error in answer.diagnostics.errors)
        for error in errors:
            if error not in self._logged and len(self._logged) < 100:
                self._logged.add(error)
                log.warning("policy evaluation error (the policy is skipped): %s", error)
        allowed = answer.allowed
        meaning = self._meanings.get(tuple(reasons))
        if meaning is None:
            meaning = (self.authorization.policy_ids(reasons),
                       self.authorization.priority(reasons))
            if len(self._meanings) < _CACHE_JSON:
                self._meanings[tuple(reasons)] = meaning
        return Decision(allowed, meaning[0], meaning[1] if allowed else 0, errors)


def _who(principal: Principal) -> tuple[str, str, str | None]:
    return principal.entity_type, principal.id, principal.entity


def _remember(cache: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    cache[key] = value
    if len(cache) > limit:
        cache.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Filtered:
    """A tier's candidates after the route policies: who may serve, who may not, and why."""

    permitted: list[Candidate]
    denied: list[Denied]
    decisions: Mapping[str, Decision]

    def by_priority(self, ordered: Sequence[Candidate]) -> list[Candidate]:
        """``ordered`` (the group's strategy order), highest permitting @priority first."""
        return sorted(ordered, key=lambda c: -self.decisions[c.deployment.name].priority)


class RequestGate:
    """One request's principal and context, bound to the engine of its graph."""

    def __init__(self, engine: PolicyEngine, principal: Principal, facts: Facts,
                 describe: str, budget_pending: bool = False) -> None:
        self.engine = engine
        self.principal = principal
        self.facts = facts
        self.describe = describe  # "key 'ci-bot'" or "user 'alice' of key 'ci-bot'"
        self.permitted = 0  # candidates permitted so far, over every tier
        # The policies read the remaining budget, and only route decisions do: it comes
        # from the request's reservation (``learn_budget``), not a read of its own.
        self.budget_pending = budget_pending
        self._context: CedarContext | None = None

    @property
    def context(self) -> CedarContext:
        """The request's context as Cedar gets it (encoded when first asked for)."""
        if self._context is None:
            self._context = self.engine.context(self.facts)
        return self._context

    def learn_budget(self, remaining: float | None) -> None:
        """The least the request's budgets had left as it was admitted (None: none)."""
        self.facts = self.facts.with_budget(remaining)
        self._context = None
        self.budget_pending = False

    @property
    def hide_ids(self) -> bool:
        return self.engine.graph.settings.hide_policy_ids

    def check_invoke(self, route: str) -> Decision:
        """The invoke decision; a deny raises ``Forbidden`` naming the deciding policies."""
        decision = self.engine.invoke(self.principal, route, self.engine.invoke_context(self))
        if not decision.allowed:
            raise self._refused(decision, f"call '{route}'")
        return decision

    def check_invoke_pipeline(self, pipeline: str) -> Decision:
        """As ``check_invoke``, for running a pipeline directly (``Pipeline::"name"``)."""
        decision = self.engine.decide(self.principal, INVOKE,
                                      {"type": "Pipeline", "id": pipeline}, self.context)
        if not decision.allowed:
            raise self._refused(decision, f"run pipeline '{pipeline}'")
        return decision

    def check_invoke_agent(self, agent: str) -> Decision:
        """As ``check_invoke``, for an ``agent`` step's message to ``agent``
        (``Agent::"name"``)."""
        decision = self.engine.decide(self.principal, INVOKE,
                                      {"type": "Agent", "id": agent}, self.context)
        if not decision.allowed:
            raise self._refused(decision, f"call agent '{agent}'")
        return decision

    def check_invoke_mcp(self, server: str) -> Decision:
        """As ``check_invoke``, for a message to MCP server ``server``
        (``McpServer::"name"``; the tool a tools/call names is ``context.tool``)."""
        decision = self.engine.decide(self.principal, INVOKE,
                                      {"type": "McpServer", "id": server}, self.context)
        if not decision.allowed:
            tool = f" tool '{self.facts.tool}' of" if self.facts.tool else ""
            raise self._refused(decision, f"use{tool} MCP server '{server}'")
        return decision

    def check_invoke_passthrough(self, name: str) -> Decision:
        """As ``check_invoke``, for a request through pass-through ``name``
        (``Passthrough::"name"``)."""
        decision = self.engine.decide(self.principal, INVOKE,
                                      {"type": "Passthrough", "id": name}, self.context)
        if not decision.allowed:
            raise self._refused(decision, f"use pass-through '{name}'")
        return decision

    def mcp_tools(self, server: str, tools: Sequence[str]) -> frozenset[str]:
        """Those of ``tools`` the policies let this caller call on MCP server ``server``
        (``context.tool`` each one's name), for a tools/list. When no policy reads
        ``context.tool``, every tool gets the decision the message had (it passed)."""
        if not self.engine.enforced or "tool" not in self.engine.authorization.reads.context:
            return frozenset(tools)
        contexts = [self.engine.context(self.facts.with_tool(tool)) for tool in tools]
        decisions = self.engine.decide_each(self.principal, INVOKE,
                                            {"type": "McpServer", "id": server}, contexts)
        return frozenset(tool for tool, decision in zip(tools, decisions, strict=True)
                         if decision.allowed)

    def filter(self, candidates: Sequence[Candidate]) -> Filtered:
        """Split a tier's candidates into those the route policies permit and those they deny."""
        decisions = self.engine.route(self.principal, [c.deployment for c in candidates],
                                      self.context)
        permitted: list[Candidate] = []
        denied: list[Denied] = []
        for candidate, decision in zip(candidates, decisions, strict=True):
            if decision.allowed:
                permitted.append(candidate)
                continue
            denied.append(Denied(candidate.deployment.name, self._reason(decision), False,
                                 policies=decision.policies))
        self.permitted += len(permitted)
        return Filtered(permitted, denied,
                        {c.deployment.name: d for c, d in zip(candidates, decisions, strict=True)})

    def deny(self, deployments: Sequence[Deployment]) -> dict[str, Denied]:
        """The deployments among ``deployments`` the route policies deny, by name."""
        decisions = self.engine.route(self.principal, deployments, self.context)
        return {d.name: Denied(d.name, self._reason(decision), False,
                               policies=decision.policies)
                for d, decision in zip(deployments, decisions, strict=True)
                if not decision.allowed}

    def forbidden(self, route: str, denied: Sequence[Denied]) -> Forbidden:
        """The 403 for a request that no deployment may serve."""
        ids = tuple(dict.fromkeys(p for item in denied for p in item.policies))
        detail = "" if self.hide_ids else ": " + "; ".join(
            f"{item.deployment} {item.reason}" for item in denied)
        return Forbidden(f"Policy allows no deployment of '{route}' to serve this request"
                         f"{detail}.", headers=self._headers(ids))

    def _refused(self, decision: Decision, doing: str) -> Forbidden:
        """The 403 for an invoke ``decision`` that denies ``doing`` ("call 'r'"), naming
        the deciding policies unless they are hidden."""
        because = ("" if self.hide_ids
                   else f": denied by {', '.join(decision.policies)}" if decision.policies
                   else ": no policy permits it")
        return Forbidden(f"Policy does not allow {self.describe} to {doing}{because}.",
                         headers=self._headers(decision.policies))

    def _reason(self, decision: Decision) -> str:
        if self.hide_ids:
            return "is denied by policy"
        if decision.policies:
            return f"is forbidden by {', '.join(decision.policies)}"
        return "is permitted by no policy"

    def _headers(self, ids: Sequence[str]) -> dict[str, str]:
        return {} if self.hide_ids or not ids else {"x-aigw-policy-ids": ",".join(ids)}
