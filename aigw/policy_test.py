"""``aigw test``: routing fixtures (policies/tests/*.yaml) run offline against the compiled graph.

A fixture file holds cases; each is a request, the live metrics it sees, and what
must come out::

    cases:
      - name: a tight SLA forbids a slow deployment
        request: {key: dev, model: echo, latency_sla_ms: 300}
        live: {echo-small: {average_latency_ms: 900}}
        expect: {deployment: null, denied: {echo-small: [tight-sla-forbids-slow]}}

      - name: one direct decision
        evaluate: {principal: 'ApiKey::"dev"', action: route,
                   resource: 'Deployment::"echo-small"', context: {latency_sla_ms: 300}}
        live: {echo-small: {average_latency_ms: 900}}
        expect: {decision: deny, policies: [tight-sla-forbids-slow]}

      - name: a caller signed in with a JWT of issuer corp, mapped to team engineering
        request: {subject: corp#alice, team: engineering, model: fast}
        expect: {invoke: deny}

A ``subject`` (``<issuer>#<principal>``, with the ``team`` the issuer's claim would map
it to) is made as a token's caller is (runtime/identity.py), so its Cedar entities are
a live request's: ``Subject::"alice"`` in ``Issuer::"corp"`` and its team. An
``evaluate`` names one by ``subject`` too (its principal, or the key of a ``User``).

Every provider counts as available (a key unset in CI disables nothing here), the
hour of day is 12 unless a request says, and nothing is called.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from aigw.compiler.entity_model import CONTEXT, DEPLOYMENT_LIVE
from aigw.compiler.graph import ApiKey, Graph
from aigw.runtime.errors import BadRequest
from aigw.runtime.identity import stand_in
from aigw.runtime.policy import (
    Decision,
    Facts,
    PolicyEngine,
    Principal,
    principal_for,
)
from aigw.runtime.policy_live import FixedLive
from aigw.runtime.policy_plan import RoutePlan, plan_route
from aigw.runtime.routing.state import RoutingState

TESTS_DIR = "policies/tests"
FIXTURE_HOUR = 12


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class RequestSpec(_Spec):
    model: str
    key: str | None = None
    subject: str | None = Field(None, description="A JWT's caller: <issuer>#<principal>.")
    team: str | None = Field(None, description="The team a subject's issuer maps it to.")
    user: str | None = None
    estimated_tokens: int = Field(100, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    stream: bool = False
    latency_sla_ms: int | None = Field(None, ge=0)
    budget_remaining: float | None = None
    intent: str = ""
    tags: list[str] = Field(default_factory=list)
    hour_of_day: int = Field(FIXTURE_HOUR, ge=0, le=23)


class EvaluateSpec(_Spec):
    principal: str | None = Field(None, description="Default: the subject.")
    action: str
    resource: str
    context: dict[str, Any] = Field(default_factory=dict)
    key: str | None = Field(None, description="For a User principal: its key.")
    subject: str | None = Field(None, description="A JWT's caller, or a User's.")
    team: str | None = Field(None, description="The team a subject's issuer maps it to.")


class ExpectSpec(_Spec):
    invoke: Literal["allow", "deny"] | None = None
    allowed: bool | None = None
    deployment: str | None = None  # null: nothing may serve (only checked when given)
    order: list[str] | None = None
    denied: dict[str, list[str]] | None = None
    permitted_by: dict[str, list[str]] | None = None
    policies: list[str] | None = None
    decision: Literal["allow", "deny"] | None = None


class CaseSpec(_Spec):
    name: str
    request: RequestSpec | None = None
    evaluate: EvaluateSpec | None = None
    live: dict[str, dict[str, int | float | bool]] = Field(default_factory=dict)
    expect: ExpectSpec


class FixtureSpec(_Spec):
    defaults: dict[str, Any] = Field(default_factory=dict)
    cases: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Outcome:
    file: str
    name: str
    problems: tuple[str, ...]
    detail: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def run_tests(graph: Graph, root: Path, out: TextIO | None = None) -> int:
    """Run every fixture under ``root/policies/tests``; 0 when all pass."""
    out = out or sys.stdout
    try:  # a folder that is there and cannot be read is no "no tests": CI would pass
        with os.scandir(root / TESTS_DIR) as entries:
            names = sorted(e.name for e in entries if e.name.endswith((".yaml", ".yml")))
    except FileNotFoundError:
        names = []
    except OSError as exc:
        out.write(f"cannot read {TESTS_DIR}/: {exc.strerror or exc}\n")
        return 1
    files = [root / TESTS_DIR / name for name in names]
    if not files:
        out.write(f"no routing tests in {TESTS_DIR}/\n")
        return 0
    outcomes: list[Outcome] = []
    for path in files:
        relative = path.relative_to(root).as_posix()
        out.write(f"{relative}\n")
        for outcome in run_file(graph, path, relative):
            outcomes.append(outcome)
            out.write(f"  {'ok  ' if outcome.ok else 'FAIL'}  {outcome.name}\n")
            for problem in outcome.problems:
                out.write(f"        {problem}\n")
            if outcome.problems and outcome.detail:
                out.write(f"        ({outcome.detail})\n")
    failed = sum(1 for item in outcomes if not item.ok)
    out.write(f"{len(outcomes)} case{'s' if len(outcomes) != 1 else ''}, {failed} failed\n")
    return 1 if failed else 0


def run_file(graph: Graph, path: Path, relative: str) -> list[Outcome]:
    try:
        text = path.read_text(encoding="utf-8")
        data = YAML(typ="safe", pure=True).load(text)
        fixture = FixtureSpec.model_validate(data)
        tree = YAML(typ="safe", pure=True).compose(text)
    # ValueError and TypeError: what the YAML constructor raises for "!!int abc" or a date
    # 2024-13-45; RecursionError: thousands of nested brackets.
    except (OSError, YAMLError, ValidationError, ValueError, TypeError, RecursionError) as exc:
        return [Outcome(relative, "(file)", (f"cannot read the fixture: {_first_line(exc)}",))]
    outcomes = []
    for index, raw in enumerate(fixture.cases, start=1):
        label = str(raw.get("name", f"case {index}"))
        merged = dict(raw)
        given = raw.get("request")
        if isinstance(given, dict):
            defaults = fixture.defaults
            if CALLER & given.keys():  # a case's caller is its own: no defaulted key or team
                defaults = {name: value for name, value in defaults.items()
                            if name not in CALLER | {"team"}}
            merged["request"] = {**defaults, **given}
        try:
            case = CaseSpec.model_validate(merged)
            outcomes.append(run_case(graph, case, relative))
        except ValidationError as exc:
            outcomes.append(Outcome(relative, label, (f"bad case: {_first_line(exc)}",)))
        except FixtureError as exc:
            where = _where(tree, relative, exc.at, index - 1, given)
            outcomes.append(Outcome(relative, label, (f"bad case: {where}{exc}",)))
    return outcomes


CALLER = frozenset({"key", "subject"})


class FixtureError(ValueError):
    """A case names something the graph does not have; ``at``: the field, as
    ("request", "subject"), where a position can point at it."""

    def __init__(self, message: str, at: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.at = at


def _where(tree: Node | None, relative: str, at: tuple[str, ...], case: int,
           request: object) -> str:
    """``file:line:col: `` of the field ``at`` of case ``case`` (or, for a request field
    the case took from ``defaults``, of that default); "" where it is not written."""
    if not at:
        return ""
    path: tuple[str | int, ...] = ("cases", case, *at)
    if (at[0] == "request" and len(at) > 1 and isinstance(request, dict)
            and at[1] not in request):
        path = ("defaults", *at[1:])
    node = tree
    for step in path:
        node = _child(node, step)
    if node is None:
        return ""
    mark = node.start_mark
    return f"{relative}:{mark.line + 1}:{mark.column + 1}: "


def _child(node: Node | None, step: str | int) -> Node | None:
    if isinstance(node, SequenceNode) and isinstance(step, int):
        return node.value[step] if step < len(node.value) else None
    if isinstance(node, MappingNode) and isinstance(step, str):
        return next((value for key, value in node.value if key.value == step), None)
    return None


def run_case(graph: Graph, case: CaseSpec, relative: str) -> Outcome:
    live = _live(graph, case.live)
    engine = PolicyEngine(graph, FixedLive(live))
    if (case.request is None) == (case.evaluate is None):
        raise FixtureError("a case has exactly one of request or evaluate")
    if case.evaluate is not None:
        decision = _evaluate(graph, engine, case.evaluate)
        return Outcome(relative, case.name, tuple(_check_decision(decision, case.expect)),
                       _describe_decision(decision))
    assert case.request is not None
    plan = _plan(graph, engine, case.request, live)
    return Outcome(relative, case.name, tuple(_check_plan(plan, case.expect)), describe(plan))


def _live(graph: Graph, given: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    for name, values in given.items():
        if name not in graph.deployments:
            raise FixtureError(f"live: no deployment '{name}'")
        unknown = sorted(set(values) - set(DEPLOYMENT_LIVE))
        if unknown:
            raise FixtureError(f"live.{name}: unknown attribute(s) {', '.join(unknown)} "
                               f"(live attributes: {', '.join(DEPLOYMENT_LIVE)})")
    return {name: dict(values) for name, values in given.items()}


def _plan(graph: Graph, engine: PolicyEngine, request: RequestSpec,
          live: Mapping[str, Mapping[str, Any]]) -> RoutePlan:
    route = graph.routes.get(request.model)
    if route is None:
        raise FixtureError(f"request.model: no route '{request.model}'")
    key = _caller(graph, request.key, request.subject, request.team, "request")
    if key is None:
        raise FixtureError("request.key: name the caller's key or subject (here or in "
                           "defaults)")
    facts = Facts(
        route=route.name, estimated_tokens=request.estimated_tokens,
        max_tokens=request.max_tokens, stream=request.stream,
        latency_sla_ms=(request.latency_sla_ms if request.latency_sla_ms is not None
                        else round(route.deadline_s * 1000)),
        budget_remaining=request.budget_remaining, intent=request.intent,
        tags=tuple(request.tags), hour_of_day=request.hour_of_day,
    )
    principal = principal_for(graph.authorization, key, request.user)
    return plan_route(graph, engine, principal, facts, _state(graph, live), every_provider=True,
                      key=key)


def _state(graph: Graph, live: Mapping[str, Mapping[str, Any]]) -> RoutingState:
    """A routing state whose strategies see the fixture's latency and load."""
    state = RoutingState(rng=random.Random(0))
    state.sync(graph)
    for name, values in live.items():
        stats = state.stats[name]
        if values.get("average_latency_ms"):
            stats.latency_ms = float(values["average_latency_ms"])
        stats.in_flight = int(values.get("in_flight", 0))
        stats.queue_depth = int(values.get("queue_depth", 0))
    return state


def _key(graph: Graph, name: str | None) -> ApiKey | None:
    if name is None:
        return None
    key = graph.keys_by_name.get(name)
    if key is not None:
        return key
    raise FixtureError(f"request.key: no key '{name}' (keys need a secret or sha256 to count)")


def _caller(graph: Graph, key: str | None, subject: str | None, team: str | None,
            field: str) -> ApiKey | None:
    """The key named, or the stand-in for a JWT's caller (as a token would sign it in)."""
    if subject is None:
        if team is not None:
            raise FixtureError(f"{field}.team: only a subject has a team named here (a "
                               "key's is in the config)", (field, "team"))
        return _key(graph, key)
    if key is not None:
        raise FixtureError(f"{field}: name a key or a subject, not both", (field, "subject"))
    try:
        return stand_in(graph, subject, team)
    except BadRequest as exc:
        param = exc.param or "subject"
        # No team written: point at the subject that needs one.
        at = (field, "subject" if team is None else param)
        raise FixtureError(f"{field}.{param}: {exc.message}", at) from exc


def _evaluate(graph: Graph, engine: PolicyEngine, spec: EvaluateSpec) -> Decision:
    resource_type, resource_id = _uid(spec.resource)
    caller = _caller(graph, spec.key, spec.subject, spec.team, "evaluate")
    if spec.principal is None:
        if spec.subject is None or caller is None:
            raise FixtureError("evaluate: name a principal (or a subject)")
        principal = principal_for(graph.authorization, caller, None)
    else:
        principal = _principal(graph, spec, caller)
    unknown = sorted(set(spec.context) - set(CONTEXT))
    if unknown:
        raise FixtureError(f"evaluate.context: unknown field(s) {', '.join(unknown)}")
    values: dict[str, Any] = {
        "route": resource_id if resource_type == "Route" else "", "estimated_tokens": 100,
        "max_tokens": None, "stream": False, "latency_sla_ms": 300_000,
        "budget_remaining": None, "hour_of_day": FIXTURE_HOUR, **spec.context,
    }
    values["tags"] = tuple(values.get("tags", ()))
    context = engine.context(Facts(**values))
    action = spec.action.removeprefix('Action::"').removesuffix('"')
    if not engine.enforced:
        return Decision(True, (), 0)
    return engine.decide(principal, {"type": "Action", "id": action},
                         {"type": resource_type, "id": resource_id}, context)


def _principal(graph: Graph, spec: EvaluateSpec, caller: ApiKey | None) -> Principal:
    """``spec.principal`` with the entities a request gives it: a User in its key (or
    subject) and team, a Subject in its issuer and team."""
    assert spec.principal is not None
    principal_type, principal_id = _uid(spec.principal)
    if principal_type == "User":
        if caller is None:
            raise FixtureError("evaluate: a User principal needs its key (or subject)")
        return principal_for(graph.authorization, caller, principal_id)
    if principal_type == "Subject":
        # Without its issuer and team a Subject is in nothing, and a policy on
        # Issuer::"corp" or a team would not hold for it as it does for a token's caller.
        if caller is None or caller.subject is None:
            raise FixtureError("evaluate: a Subject principal is named by subject: "
                               f"<issuer>#{principal_id} (and team:), its issuer and team "
                               "being its parents", ("evaluate", "principal"))
        if caller.subject != principal_id:
            raise FixtureError(f"evaluate.principal: subject '{spec.subject}' is "
                               f'Subject::"{caller.subject}", not {spec.principal}',
                               ("evaluate", "principal"))
        return principal_for(graph.authorization, caller, None)
    if spec.subject is not None:
        raise FixtureError(f"evaluate: a {principal_type} principal takes no subject",
                           ("evaluate", "subject"))
    return Principal(principal_type, principal_id, None)


def _uid(text: str) -> tuple[str, str]:
    entity_type, sep, quoted = text.partition("::")
    if not sep or not quoted.startswith('"'):
        raise FixtureError(f'{text!r} is not an entity uid like Deployment::"name"')
    return entity_type.strip(), json.loads(quoted)


def _check_decision(decision: Decision, expect: ExpectSpec) -> list[str]:
    problems = []
    verdict = "allow" if decision.allowed else "deny"
    if expect.decision is not None and expect.decision != verdict:
        problems.append(f"decision: expected {expect.decision}, got {verdict}")
    if expect.policies is not None and sorted(expect.policies) != sorted(decision.policies):
        problems.append(f"policies: expected {sorted(expect.policies)}, "
                        f"got {sorted(decision.policies)}")
    return problems


def _check_plan(plan: RoutePlan, expect: ExpectSpec) -> list[str]:
    problems = []
    invoke = "allow" if plan.invoke.allowed else "deny"
    if expect.invoke is not None and expect.invoke != invoke:
        problems.append(f"invoke: expected {expect.invoke}, got {invoke} "
                        f"({', '.join(plan.invoke.policies) or 'no policy'})")
    if expect.allowed is not None and expect.allowed != plan.allowed:
        problems.append(f"allowed: expected {expect.allowed}, got {plan.allowed}")
    if "deployment" in expect.model_fields_set and expect.deployment != plan.deployment:
        problems.append(f"deployment: expected {expect.deployment}, got {plan.deployment}")
    if expect.order is not None and expect.order != plan.order:
        problems.append(f"order: expected {expect.order}, got {plan.order}")
    denied = plan.denied()
    for name, ids in (expect.denied or {}).items():
        if name not in denied:
            problems.append(f"denied: expected {name} denied by {ids or 'no permit'}, "
                            "but it was not denied")
        elif sorted(ids) != sorted(denied[name]):
            problems.append(f"denied: {name} expected by {sorted(ids)}, "
                            f"got {sorted(denied[name])}")
    for name, ids in (expect.permitted_by or {}).items():
        decision = plan.decision(name)
        got = sorted(decision.policies) if decision is not None and decision.allowed else None
        if got != sorted(ids):
            problems.append(f"permitted_by: {name} expected {sorted(ids)}, got "
                            f"{got if got is not None else 'not permitted'}")
    if expect.policies is not None and sorted(expect.policies) != sorted(plan.policies):
        problems.append(f"policies: expected {sorted(expect.policies)}, "
                        f"got {sorted(plan.policies)}")
    return problems


def describe(plan: RoutePlan) -> str:
    """One line: what Cedar decided about each deployment."""
    if not plan.invoke.allowed:
        return f"invoke denied by {', '.join(plan.invoke.policies) or 'no permit'}"
    parts = []
    for tier in plan.tiers:
        for name, _cost in tier.order:
            decision = tier.decisions.get(name)
            by = ", ".join(decision.policies) if decision else "no policies"
            parts.append(f"{name} permitted by {by} ({decision.priority if decision else 0})")
        parts.extend(f"{item.deployment} {item.reason}" for item in tier.dropped)
    return "; ".join(parts) or "no candidates"


def _describe_decision(decision: Decision) -> str:
    verdict = "allowed" if decision.allowed else "denied"
    return f"{verdict} by {', '.join(decision.policies) or 'no policy'}"


def _first_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        return f"{where}: {error['msg']}" if where else str(error["msg"])
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
