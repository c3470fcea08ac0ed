"""``aigw check --against REF``: which Cedar decisions a change flips, before it lands.

The config at the git revision REF is compiled too. Every (principal, action,
resource) that both graphs know (each key as itself, as each end user a policy names
and as one no policy names; each issuer's token callers alike, as each ``Subject`` a
policy names and as one no policy names, in each team the issuer can give them;
routes, pipelines and deployments) is then decided by
each graph under the same representative scenarios: request contexts (SLA, budget,
size, stream, hour, ...) crossed with live metric profiles (idle, healthy, slow,
failing, open circuit, busy), plus values just around every number a policy compares
a field with. Each decision
that differs is printed with the policies that decide it before and after; a
deny that becomes an allow widens access, and fails the check unless allowed.
"""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from aigw.compiler import CompileResult, compile_gateway, render_text
from aigw.compiler.entity_model import CONTEXT, DECIMAL, DEPLOYMENT_LIVE, LONG
from aigw.compiler.graph import ApiKey, Graph, Issuer, IssuerTeams, Route, Team
from aigw.compiler.policy_analysis import entity_refs
from aigw.runtime.identity import stand_in
from aigw.runtime.policy import Decision, Facts, PolicyEngine, Principal, principal_for
from aigw.runtime.policy_live import FixedLive

_BASE = Facts(route="", estimated_tokens=1000, max_tokens=None, stream=False,
              latency_sla_ms=300_000, budget_remaining=None, hour_of_day=12)
_CONTEXTS: tuple[Mapping[str, Any], ...] = (
    {}, {"stream": True}, {"max_tokens": 4096}, {"estimated_tokens": 100_000},
    {"latency_sla_ms": 250}, {"latency_sla_ms": 1000}, {"latency_sla_ms": 5000},
    {"budget_remaining": 0.0}, {"budget_remaining": 5.0}, {"budget_remaining": 50.0},
    {"latency_sla_ms": 250, "budget_remaining": 5.0}, {"hour_of_day": 3},
    {"hour_of_day": 18},
)
_PROFILES: tuple[tuple[str, Mapping[str, Any]], ...] = (
    ("idle", {}),
    ("healthy", {"average_latency_ms": 100, "p95_latency_ms": 200, "in_flight": 1}),
    ("slow", {"average_latency_ms": 2000, "p95_latency_ms": 5000, "in_flight": 4}),
    ("very slow", {"average_latency_ms": 30_000, "p95_latency_ms": 60_000}),
    ("failing", {"average_latency_ms": 300, "current_error_rate": 0.2}),
    ("circuit open", {"current_error_rate": 0.5, "circuit_open": True}),
    ("busy", {"average_latency_ms": 500, "in_flight": 100, "queue_depth": 50,
              "queue_wait_ms": 1500}),
)
_COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")
_DECIMAL_METHODS = ("lessThan", "lessThanOrEqual", "greaterThan", "greaterThanOrEqual")


@dataclass(frozen=True, slots=True)
class Scenario:
    context: Mapping[str, Any]
    profile: str
    live: Mapping[str, Any]

    def describe(self) -> str:
        parts = [f"{name}={_show(value)}" for name, value in self.context.items()]
        parts.append(f"{self.profile} deployments" if not _is_threshold(self.profile)
                     else self.profile)
        return ", ".join(parts)


@dataclass(slots=True)
class Flip:
    """One (principal, action, resource) whose decision changes in some scenarios."""

    principal: str
    action: str
    resource: str
    widens: bool
    examples: list[tuple[str, Decision, Decision]] = field(default_factory=list)
    count: int = 0


def check_against(root: Path, ref: str, allow_widening: bool,
                  out: TextIO | None = None) -> int:
    """Compare the config in ``root`` with the one at git revision ``ref``; exit status."""
    out = out or sys.stdout
    compared = _compare_with(root, ref)
    if isinstance(compared, _Refused):
        out.write(compared.why)
        return compared.status
    flips, pairs, skipped = compared
    return report(ref, flips, pairs, skipped, allow_widening, out)


def against_document(root: Path, ref: str, allow_widening: bool) -> tuple[int, dict[str, Any]]:
    """What ``check_against`` prints, as data for ``aigw check --format json``: the exit
    status and {"ref", "compared", "not_compared", "flips", "widen", "narrow"}, or
    {"ref", "error"} when nothing could be compared."""
    compared = _compare_with(root, ref)
    if isinstance(compared, _Refused):
        return compared.status, {"ref": ref, "error": compared.why.rstrip("\n")}
    flips, pairs, skipped = compared
    ordered = sorted(flips, key=lambda f: (not f.widens, f.principal, f.action, f.resource))
    widening = sum(1 for flip in flips if flip.widens)
    document = {
        "ref": ref,
        "compared": pairs,
        "not_compared": skipped,
        "flips": [{
            "principal": flip.principal, "action": flip.action, "resource": flip.resource,
            "change": "widens" if flip.widens else "narrows",
            "scenarios": flip.count,
            "examples": [{"scenario": scenario, "before": _decided(was), "after": _decided(now)}
                         for scenario, was, now in flip.examples],
        } for flip in ordered],
        "widen": widening,
        "narrow": len(flips) - widening,
    }
    return (1 if widening and not allow_widening else 0), document


@dataclass(frozen=True, slots=True)
class _Refused:
    """Nothing was compared: why (text to print), and the exit status."""

    why: str
    status: int


def _compare_with(root: Path, ref: str) -> tuple[list[Flip], int, list[str]] | _Refused:
    current = compile_gateway(root)
    if current.graph is None:
        return _Refused("", 1)  # aigw check has printed why
    try:
        with tempfile.TemporaryDirectory(prefix="aigw-against-") as scratch:
            previous = _compile_at(root, ref, Path(scratch))
            if previous.graph is None:
                return _Refused(f"the config at {ref} does not compile, so nothing is "
                                f"compared:\n{render_text(previous.errors, previous.sources)}", 2)
            return diff(previous.graph, current.graph)
    except _GitError as exc:
        return _Refused(f"aigw check --against {ref}: {exc}\n", 2)


class _GitError(Exception):
    pass


def _compile_at(root: Path, ref: str, scratch: Path) -> CompileResult:
    """Compile the gateway directory as it was at ``ref`` (extracted with git archive)."""
    def git(*args: str, at: Path = root) -> bytes:
        try:
            done = subprocess.run(["git", "-C", str(at), *args], capture_output=True,
                                  check=True)
        except FileNotFoundError as exc:
            raise _GitError("git is not installed") from exc
        except subprocess.CalledProcessError as exc:
            raise _GitError(exc.stderr.decode(errors="replace").strip() or "git failed") from exc
        return done.stdout

    top = Path(git("rev-parse", "--show-toplevel").decode().strip())
    prefix = root.resolve().relative_to(top.resolve()).as_posix()
    try:
        git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except _GitError:
        raise _GitError(f"'{ref}' is not a commit of the repository at {top}") from None
    archive = git("archive", "--format=tar", ref, "--", prefix, at=top)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(scratch, filter="data")
    return compile_gateway(scratch / prefix)


def diff(before: Graph, after: Graph) -> tuple[list[Flip], int, list[str]]:
    """Decisions that differ between the graphs: (flips, pairs compared, names skipped).

    Each key is compared as itself, as each end user a policy names, and as one end
    user no policy names (a request with any other ``user``: ``principal is User``
    matches it); so is each issuer's token caller (``_callers``); the resources are
    the routes (with those a pipeline step makes up for a group or deployment it
    names), the pipelines and the deployments."""
    keys_before = before.keys_by_name
    keys_after = after.keys_by_name
    named = _named(before, after, "User")
    users = [*sorted(named), _stand_in(named)]
    callers: list[tuple[ApiKey, ApiKey, str]] = [
        (keys_before[name], keys_after[name], f'ApiKey::"{name}"')
        for name in sorted(set(keys_before) & set(keys_after))]
    callers += _callers(before, after)
    principals: list[tuple[Principal, Principal, str]] = []
    for old_key, new_key, label in callers:
        principals.append((principal_for(before.authorization, old_key, None),
                           principal_for(after.authorization, new_key, None), label))
        for user in users:
            principals.append((principal_for(before.authorization, old_key, user),
                               principal_for(after.authorization, new_key, user),
                               f"User::{json.dumps(user)} of {label}"))
    issuers_before, issuers_after = _issuers(before), _issuers(after)
    routes_before, routes_after = set(_routes(before)), set(_routes(after))
    routes = sorted(routes_before & routes_after)
    pipelines = sorted(set(before.pipelines) & set(after.pipelines))
    deployments = sorted(set(before.deployments) & set(after.deployments))
    skipped = [f"{kind} {name}" for kind, mine, theirs in (
        ("key", set(keys_after), set(keys_before)),
        ("issuer", set(issuers_after), set(issuers_before)),
        ("route", routes_after, routes_before),
        ("pipeline", set(after.pipelines), set(before.pipelines)),
        ("deployment", set(after.deployments), set(before.deployments)))
        for name in sorted(mine) if name not in theirs]
    by_route = _by_route((before, after), deployments)
    flips: dict[tuple[str, str, str, bool], Flip] = {}
    for scenario in scenarios(before, after):
        engines = (PolicyEngine(before, FixedLive(_everywhere(before, scenario.live))),
                   PolicyEngine(after, FixedLive(_everywhere(after, scenario.live))))
        for old, new, who_label in principals:
            for route in routes:
                facts = _facts(scenario, route)
                decisions = [engine.invoke(who, route, engine.context(facts))
                             for engine, who in zip(engines, (old, new), strict=True)]
                _note(flips, who_label, "invoke", f'Route::"{route}"', scenario.describe(),
                      *decisions)
            for pipeline in pipelines:  # as the gateway asks it: with no route in the context
                facts = _facts(scenario, "")
                resource = {"type": "Pipeline", "id": pipeline}
                decisions = [engine.decide(who, _INVOKE, resource, engine.context(facts))
                             for engine, who in zip(engines, (old, new), strict=True)]
                _note(flips, who_label, "invoke", f"Pipeline::{json.dumps(pipeline)}",
                      scenario.describe(), *decisions)
            for route, served in by_route.items():
                facts = _facts(scenario, route)
                results = [engine.route(who, [graph.deployments[d] for d in served],
                                        engine.context(facts))
                           for engine, who, graph in zip(engines, (old, new), (before, after),
                                                         strict=True)]
                for name, was, now in zip(served, *results, strict=True):
                    where = scenario.describe() + (f", route {route}" if route else "")
                    _note(flips, who_label, "route", f'Deployment::"{name}"', where, was, now)
    compared = len(principals) * (len(routes) + len(pipelines) + len(deployments))
    return list(flips.values()), compared, skipped


_INVOKE = {"type": "Action", "id": "invoke"}


def _named(before: Graph, after: Graph, entity_type: str) -> set[str]:
    """The ids of the ``entity_type`` entities the policies of either graph name."""
    return {ref.id for graph in (before, after) for body in graph.authorization.bodies
            for ref in entity_refs(body) if ref.type == entity_type}


def _stand_in(named: set[str], user: str = "any-other-user") -> str:
    """An id no policy names (``user`` unless one does): what any other ``user`` a
    client sends is, or any other token's principal."""
    while user in named:
        user += "_"
    return user


def _issuers(graph: Graph) -> dict[str, Issuer]:
    return {issuer.name: issuer for issuer in graph.issuers_by_iss.values()}


def _callers(before: Graph, after: Graph) -> list[tuple[ApiKey, ApiKey, str]]:
    """The token callers of each issuer both graphs have, each as each graph makes it:
    as each ``Subject`` a policy names and as one no policy names, in each team the
    issuer gives (its fixed team, or by each value of its claim's map and by one the
    map does not hold; a value one graph refuses, giving it no team, is a refusal
    there, not a policy's decision, and is not compared)."""
    named = _named(before, after, "Subject")
    subjects = [*sorted(named), _stand_in(named, "any-other-subject")]
    issuers_before, issuers_after = _issuers(before), _issuers(after)
    found: list[tuple[ApiKey, ApiKey, str]] = []
    for name in sorted(set(issuers_before) & set(issuers_after)):
        rules = (issuers_before[name].team, issuers_after[name].team)
        by_claim = [rule for rule in rules if isinstance(rule, IssuerTeams)]
        values = sorted({value for rule in by_claim for value, _team in rule.choices})
        for value in (*values, None):
            old_team, new_team = (_team_for(rule, value) for rule in rules)
            if _REFUSED in (old_team, new_team):
                continue
            shown = ("" if not by_claim else
                     f" with {by_claim[-1].claim} {json.dumps(value)}" if value is not None
                     else f" with no {by_claim[-1].claim} it maps")
            for subject in subjects:
                found.append((stand_in(before, f"{name}#{subject}", old_team),
                              stand_in(after, f"{name}#{subject}", new_team),
                              f'Subject::{json.dumps(subject)} of Issuer::"{name}"{shown}'))
            if not by_claim:
                break  # one team, whatever the claims
    return found


_REFUSED = "\0refused"  # no team's name: a token a claim-mapped issuer refuses


def _team_for(rule: Team | IssuerTeams | None, value: str | None) -> str | None:
    """The name of the team ``rule`` gives a token whose claim holds ``value`` (None:
    none of the map's values), or ``_REFUSED`` where it gives none."""
    if not isinstance(rule, IssuerTeams):
        return rule.name if rule is not None else None
    for held, team in rule.choices:
        if held == value:
            return team.name
    return rule.default.name if rule.default is not None else _REFUSED


def _routes(graph: Graph) -> dict[str, Route]:
    """The routes apps name, and those a pipeline step makes up for a group or deployment."""
    made = {name: route for pipeline in graph.pipelines.values()
            for name, route in pipeline.routes.items()}
    return {**made, **graph.routes}


def _by_route(graphs: Sequence[Graph], deployments: Sequence[str]) -> dict[str, list[str]]:
    """Route name -> the compared deployments that may serve it in either graph (each is
    decided with that route in ``context.route``); "" for those no route reaches."""
    found: dict[str, list[str]] = {}
    reached: set[str] = set()
    routes = [_routes(graph) for graph in graphs]
    for name in sorted({n for table in routes for n in table}):
        serving = {d.name for table in routes if name in table for d in table[name].candidates}
        members = [d for d in deployments if d in serving]
        if members:
            found[name] = members
            reached.update(members)
    unreached = [d for d in deployments if d not in reached]
    if unreached:
        found[""] = unreached
    return found


def _everywhere(graph: Graph, live: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {name: live for name in graph.deployments}


def _facts(scenario: Scenario, route: str) -> Facts:
    values = {**_BASE.values(), "route": route, **scenario.context}
    values["tags"] = tuple(values.get("tags", ()))
    return Facts(**values)


def _note(flips: dict[tuple[str, str, str, bool], Flip], principal: str, action: str,
          resource: str, scenario: str, was: Decision, now: Decision) -> None:
    if was.allowed == now.allowed:
        return
    widens = now.allowed
    flip = flips.setdefault((principal, action, resource, widens),
                            Flip(principal, action, resource, widens))
    flip.count += 1
    if len(flip.examples) < 3:
        flip.examples.append((scenario, was, now))


def scenarios(*graphs: Graph) -> Iterator[Scenario]:
    """Contexts crossed with live profiles, plus the thresholds the policies compare with."""
    contexts: list[Mapping[str, Any]] = list(_CONTEXTS)
    profiles: list[tuple[str, Mapping[str, Any]]] = list(_PROFILES)
    for name, value in sorted(_thresholds(graphs), key=lambda item: (item[0], str(item[1]))):
        if name in CONTEXT:
            contexts.append({name: value})
        elif name in DEPLOYMENT_LIVE:
            profiles.append((f"{name}={_show(value)}", {name: value}))
    seen: set[str] = set()
    for context, (profile, live) in itertools.product(contexts, profiles):
        key = json.dumps([context, live], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            yield Scenario(context, profile, live)


def _thresholds(graphs: Sequence[Graph]) -> set[tuple[str, Any]]:
    """(field, value) just around each literal a context field or live attribute meets."""
    found: set[tuple[str, Any]] = set()
    for graph in graphs:
        for body in graph.authorization.bodies:
            for condition in body.get("conditions", ()):
                _walk(condition.get("body"), found)
    return found


def _walk(node: Any, found: set[tuple[str, Any]]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, found)
        return
    if not isinstance(node, dict):
        return
    for op, inner in node.items():
        if op in _COMPARISONS and isinstance(inner, dict):
            _compare(inner.get("left"), inner.get("right"), found)
            _compare(inner.get("right"), inner.get("left"), found)
        elif op in _DECIMAL_METHODS and isinstance(inner, list) and len(inner) == 2:
            _compare(inner[0], inner[1], found)
            _compare(inner[1], inner[0], found)
        elif op == "contains" and isinstance(inner, dict):
            name = _field(inner.get("left"))
            literal = inner.get("right", {})
            if name == "tags" and isinstance(literal, dict) and "Value" in literal:
                found.add(("tags", (str(literal["Value"]),)))
        _walk(inner, found)


def _compare(side: Any, other: Any, found: set[tuple[str, Any]]) -> None:
    name = _field(side)
    if name is None or not isinstance(other, dict):
        return
    if "Value" in other and isinstance(other["Value"], int) and not isinstance(
            other["Value"], bool):
        value = other["Value"]
        kind = CONTEXT.get(name) or DEPLOYMENT_LIVE.get(name)
        if kind is LONG:
            found.update((name, max(0, value + step)) for step in (-1, 0, 1))
    elif "Value" in other and isinstance(other["Value"], str) and name == "intent":
        found.add((name, other["Value"]))
    elif "decimal" in other and isinstance(other["decimal"], list) and other["decimal"]:
        literal = other["decimal"][0].get("Value") if isinstance(other["decimal"][0], dict) \
            else None
        kind = CONTEXT.get(name) or DEPLOYMENT_LIVE.get(name)
        try:
            number = Decimal(str(literal))
        except InvalidOperation:
            return
        if kind is not DECIMAL:
            return
        for step in (Decimal("-0.0001"), Decimal(0), Decimal("0.0001")):
            found.add((name, float(number + step)))


def _field(node: Any) -> str | None:
    """``context.x`` -> x; ``resource.x`` -> x; anything else -> None."""
    if isinstance(node, dict) and isinstance(node.get("."), dict):
        inner = node["."]
        if inner.get("left") in ({"Var": "context"}, {"Var": "resource"}):
            return str(inner.get("attr"))
    return None


def report(ref: str, flips: list[Flip], compared: int, skipped: list[str],
           allow_widening: bool, out: TextIO) -> int:
    """Print each flip with the deciding policies before and after; the exit status."""
    widening = [flip for flip in flips if flip.widens]
    out.write(f"aigw check --against {ref}: {compared} (principal, action, resource) "
              f"pairs compared\n")
    if skipped:
        out.write(f"  new here, not compared: {', '.join(skipped)}\n")
    for flip in sorted(flips, key=lambda f: (not f.widens, f.principal, f.action, f.resource)):
        label = "WIDENS " if flip.widens else "NARROWS"
        change = "deny -> allow" if flip.widens else "allow -> deny"
        out.write(f"  {label} {flip.principal} {flip.action} {flip.resource}: {change} in "
                  f"{flip.count} scenario{'s' if flip.count != 1 else ''}\n")
        for scenario, was, now in flip.examples:
            out.write(f"          with {scenario}: before {_why(was)}; "
                      f"after {_why(now)}\n")
    if not flips:
        out.write("  no decision changes\n")
        return 0
    out.write(f"{len(flips)} decision{'s' if len(flips) != 1 else ''} change: "
              f"{len(widening)} widen access, {len(flips) - len(widening)} narrow it\n")
    if widening and not allow_widening:
        out.write("access widens: review the changes above, then pass --allow-widening if "
                  "they are meant\n")
        return 1
    return 0


def _decided(decision: Decision) -> dict[str, Any]:
    return {"allowed": decision.allowed, "policies": list(decision.policies),
            "why": _why(decision)}


def _why(decision: Decision) -> str:
    if decision.allowed:
        return f"permitted by {', '.join(decision.policies) or 'no policy (unchecked)'}"
    if decision.policies:
        return f"forbidden by {', '.join(decision.policies)}"
    return "permitted by no policy"


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    return json.dumps(value) if isinstance(value, str | bool) else str(value)


def _is_threshold(profile: str) -> bool:
    return "=" in profile

