"""The policy router, for admin keys: ask Cedar without calling any upstream.

    POST /route            who, which model, budget and SLA in -> the deployment Cedar and
                           the group's strategy would choose, the ordered alternatives, and
                           the policies that decided
    POST /evaluate         one Cedar decision: principal, action, resource, context
    POST /policies/reload  recompile the config (policies included) and swap it in
    GET  /models           every deployment with the live values policies see
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from aigw.compiler.entity_model import (
    BOOL,
    CONTEXT,
    DECIMAL,
    DEPLOYMENT_LIVE,
    ENTITY_TYPES,
    LONG,
    PRICE_PARTS,
    STRING,
    STRINGS,
    CedarType,
)
from aigw.compiler.graph import ApiKey, Graph, Settings

from . import jsonio
from .auth import require_admin
from .chat_request import bad_request
from .errors import BadRequest, ModelNotFound
from .identity import stand_in
from .incoming import read_body
from .live import Gateway, Live
from .policy import Decision, Facts, Principal, principal_for
from .policy_live import StateLive
from .policy_plan import decision_dict, plan_route
from .telemetry.access import called_by

_UID = re.compile(r'^(?P<type>[A-Za-z_]\w*)::(?P<id>".*")$')
DEFAULT_SLA_MS = 300_000  # a route's default deadline


class RouteQuery(BaseModel):
    """POST /route."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    key: str | None = Field(None, description="The key's name (default: the caller's).")
    user: str | None = None
    subject: str | None = Field(None, description="A JWT's caller, <issuer>#<principal>, "
                                "made as its token would sign it in.")
    team: str | None = Field(None, description="The user's team, when no key is named; a "
                             "subject's, where its issuer maps one by a claim.")
    # JSON bodies may carry NaN and Infinity (1e999 too): no budget figure, and no answer
    # could carry them back.
    budget_remaining: Annotated[float, Field(allow_inf_nan=False)] | None = None
    latency_sla_ms: int | None = Field(None, ge=0)
    estimated_tokens: int = Field(100, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    intent: str = ""
    tags: list[str] = Field(default_factory=list)
    hour_of_day: int | None = Field(None, ge=0, le=23)


class EvaluateQuery(BaseModel):
    """POST /evaluate: uids as 'Type::"id"' or {"type": ..., "id": ...}."""

    model_config = ConfigDict(extra="forbid", strict=True)

    principal: str | dict[str, str]
    action: str
    resource: str | dict[str, str]
    context: dict[str, Any] = Field(default_factory=dict)
    key: str | None = Field(None, description="For a User principal: its key.")
    subject: str | None = Field(None, description="For a Subject principal, or a User "
                                "principal's: the JWT's caller, <issuer>#<principal>.")
    team: str | None = Field(None, description="For a User principal without a key; a "
                             "subject's, where its issuer maps one by a claim.")


def policy_routes(gateway: Gateway) -> list[Route]:
    endpoints = _PolicyEndpoints(gateway)
    return [
        Route("/route", endpoints.route, methods=["POST"]),
        Route("/evaluate", endpoints.evaluate, methods=["POST"]),
        Route("/policies/reload", endpoints.reload, methods=["POST"]),
        Route("/models", endpoints.models, methods=["GET"]),
    ]


class _PolicyEndpoints:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def route(self, request: Request) -> Response:
        live: Live = request.state.live
        caller = called_by(request.scope, require_admin(live.graph, request.headers))
        query = _parse(RouteQuery, await read_json(request, live.graph.settings))
        route = live.graph.routes.get(query.model)
        if route is None:
            raise ModelNotFound(f"The model '{query.model}' does not exist.", param="model")
        if query.subject is not None:
            if query.key:
                raise BadRequest("Name a key or a subject, not both.", param="subject")
            key: ApiKey | None = stand_in(live.graph, query.subject, query.team)
            assert key is not None
            principal = principal_for(live.graph.authorization, key, query.user)
        else:
            key = (_key(live.graph, query.key) if query.key
                   else caller if not query.user else None)
            principal = subject(live, query.user, key, query.team)
        facts = Facts(
            route=route.name, estimated_tokens=query.estimated_tokens,
            max_tokens=query.max_tokens, stream=query.stream,
            latency_sla_ms=(query.latency_sla_ms if query.latency_sla_ms is not None
                            else round(route.deadline_s * 1000)),
            budget_remaining=query.budget_remaining, intent=query.intent,
            tags=tuple(query.tags),
            **({"hour_of_day": query.hour_of_day} if query.hour_of_day is not None else {}),
        )
        plan = plan_route(live.graph, live.policy, principal, facts, live.routing.shadow(),
                          key=key)
        return JSONResponse(plan.as_dict())

    async def evaluate(self, request: Request) -> Response:
        live: Live = request.state.live
        called_by(request.scope, require_admin(live.graph, request.headers))
        query = _parse(EvaluateQuery,
                       await read_json(request, live.graph.settings))
        principal_uid = _uid(query.principal, "principal")
        resource = _uid(query.resource, "resource")
        action = query.action.removeprefix('Action::"').removesuffix('"')
        if query.subject is not None or principal_uid["type"] == "Subject":
            principal = _subject_principal(live.graph, query, principal_uid)
        elif principal_uid["type"] == "User":
            key = _key(live.graph, query.key) if query.key else None
            principal = subject(live, principal_uid["id"], key, query.team)
        elif principal_uid["type"] == "ApiKey":
            principal = Principal("ApiKey", principal_uid["id"], None)
        else:
            principal = Principal(principal_uid["type"], principal_uid["id"], None)
        facts = _facts(query.context, resource)
        engine = live.policy
        decision = (engine.decide(principal, {"type": "Action", "id": action}, resource,
                                  engine.context(facts))
                    if engine.enforced else Decision(True, (), 0))
        return JSONResponse({
            "principal": str(principal), "action": f'Action::"{action}"',
            "resource": f'{resource["type"]}::{json.dumps(resource["id"])}',
            "context": _plain(facts), **decision_dict(decision),
        })

    async def reload(self, request: Request) -> Response:
        called_by(request.scope, require_admin(request.state.live.graph, request.headers))
        report = await self.gateway.reload_everywhere("policies-api")
        graph = self.gateway.live.graph
        body = {**report.as_dict(), "policies": [p.id for p in graph.policies]}
        return JSONResponse(body, status_code=200 if report.ok else 422)

    async def models(self, request: Request) -> Response:
        live: Live = request.state.live
        called_by(request.scope, require_admin(live.graph, request.headers))
        authorization = live.graph.authorization
        fields = tuple(DEPLOYMENT_LIVE)
        source = StateLive(live.routing)
        deployments = {}
        for name, deployment in sorted(live.graph.deployments.items()):
            values = dict(zip(fields, source.values(deployment, fields), strict=True))
            deployments[name] = {
                "provider": deployment.provider.name,
                "provider_type": deployment.provider.type,
                "model": deployment.model,
                "kind": deployment.kind,
                "groups": list(authorization.deployment_groups.get(name, ())),
                "tags": list(deployment.tags),
                "price": {part: getattr(deployment.price, part) for part in PRICE_PARTS},
                "context_window": deployment.context_window,
                "max_output_tokens": deployment.max_output_tokens,
                "enabled": deployment.provider.name in live.adapters,
                "live": values,
            }
        return JSONResponse({"deployments": deployments})


def subject(live: Live, user: str | None, key: ApiKey | None, team: str | None) -> Principal:
    """The principal a query names: a key, or an end user of a key (or of a team)."""
    authorization = live.graph.authorization
    if team is not None and team not in live.graph.teams:
        raise BadRequest(f"There is no team '{team}'.", param="team")
    if key is not None and (user is None or team is None):
        return principal_for(authorization, key, user)
    if user is None:
        raise BadRequest("Name a user or a key.", param="user")
    parents = [{"type": "ApiKey", "id": key.name}] if key is not None else []
    if team is not None:
        parents.append({"type": "Team", "id": team})
    attrs = {"admin": key.admin if key else False} if "admin" in authorization.reads.attributes \
        else {}
    entity = {"uid": {"type": "User", "id": user}, "attrs": attrs, "parents": parents}
    return Principal("User", user, json.dumps(entity, separators=(",", ":")))


def _subject_principal(graph: Graph, query: EvaluateQuery, uid: dict[str, str]) -> Principal:
    """A Subject principal (or a User of one) with its issuer and team as its parents,
    as a token's caller has them: asked as in nothing, a policy on ``Issuer::"corp"`` or
    the caller's team would not hold for it."""
    if query.subject is None:
        raise BadRequest(f'A Subject principal is named with its subject: "subject": '
                         f'"<issuer>#{uid["id"]}" (and its "team"), its issuer and team '
                         "being its parents.", param="subject")
    if query.key:
        raise BadRequest("Name a key or a subject, not both.", param="subject")
    caller = stand_in(graph, query.subject, query.team)
    if uid["type"] == "User":
        return principal_for(graph.authorization, caller, uid["id"])
    if uid["type"] != "Subject" or uid["id"] != caller.subject:
        raise BadRequest(f"Subject '{query.subject}' is Subject::\"{caller.subject}\", not "
                         f'{uid["type"]}::"{uid["id"]}".', param="principal")
    return principal_for(graph.authorization, caller, None)


def _key(graph: Graph, name: str) -> ApiKey:
    key = graph.keys_by_name.get(name)
    if key is not None:
        return key
    raise BadRequest(f"There is no key '{name}'.", param="key")


def _uid(value: str | dict[str, str], param: str) -> dict[str, str]:
    if isinstance(value, dict):
        if set(value) != {"type", "id"}:
            raise BadRequest(f"'{param}' needs exactly 'type' and 'id'.", param=param)
        uid = dict(value)
    else:
        found = _UID.match(value.strip())
        if found is None:
            raise BadRequest(f"'{param}' must look like Type::\"id\".", param=param)
        uid = {"type": found.group("type"), "id": json.loads(found.group("id"))}
    if uid["type"] not in ENTITY_TYPES:
        raise BadRequest(f"Unknown entity type '{uid['type']}' (known: "
                         f"{', '.join(ENTITY_TYPES)}).", param=param)
    return uid


def _facts(context: dict[str, Any], resource: dict[str, str]) -> Facts:
    unknown = sorted(set(context) - set(CONTEXT))
    if unknown:
        raise BadRequest(f"Unknown context field(s): {', '.join(unknown)} (known: "
                         f"{', '.join(CONTEXT)}).", param="context")
    defaults: dict[str, Any] = {
        "route": resource["id"] if resource["type"] == "Route" else "",
        "estimated_tokens": 0, "max_tokens": None, "stream": False,
        "latency_sla_ms": DEFAULT_SLA_MS, "budget_remaining": None,
    }
    for name, value in context.items():
        if not _fits(CONTEXT[name], value):
            raise BadRequest(f"context.{name} must be {_EXPECTED[CONTEXT[name].text]}.",
                             param=f"context.{name}")
    values = {**defaults, **context}
    values["tags"] = tuple(values.get("tags", ()))
    return Facts(**values)


_EXPECTED = {"Long": "an integer", "Bool": "true or false", "String": "a string",
             "decimal": "a number (or null: no budget)", "Set<String>": "a list of strings"}


def _fits(kind: CedarType, value: Any) -> bool:
    if kind is LONG:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is BOOL:
        return isinstance(value, bool)
    if kind is STRING:
        return isinstance(value, str)
    if kind is DECIMAL:
        return value is None or (isinstance(value, int | float) and not isinstance(value, bool)
                                 and math.isfinite(value))  # NaN and Infinity parse as JSON
    if kind is STRINGS:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return False


async def read_json(request: Request, settings: Settings) -> Any:
    """The request body as JSON, bounded as every body is (``read_body``): reading it
    whole before its size was looked at let an admin request buffer any amount."""
    body = await read_body(request, settings)
    try:
        # pydantic-core's parser: a body nested thousands deep is a ValueError ("recursion
        # limit exceeded"), where json.loads raised RecursionError (a 500).
        return jsonio.loads(body)
    except ValueError as exc:
        raise BadRequest(f"We could not parse the JSON body of your request: {exc}") from exc


def _plain(facts: Facts) -> dict[str, Any]:
    values = facts.values()
    values["tags"] = list(facts.tags)
    return values


def _parse(model: type[Any], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise bad_request(exc) from exc
