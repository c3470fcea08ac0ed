"""What a policy set reads and names, found by walking cedarpy's JSON form of each policy.

The runtime sends Cedar only the attributes and context fields some policy reads
(an attribute no policy reads cannot change a decision), and caches a decision about
one deployment only when no policy can see another deployment's live attributes.

A field (``context.x`` or ``resource.x``) that policies only ever compare, with
literals or with other such fields, can change a decision only by changing how one
of those comparisons comes out: ``context.latency_sla_ms < 500`` and
``resource.average_latency_ms > context.latency_sla_ms`` make latency matter only
when it crosses the SLA. The runtime keys its decision cache on those answers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .entity_model import CONTEXT, DEPLOYMENT_LIVE

_CONTEXT = {"Var": "context"}
_RESOURCE = {"Var": "resource"}
_FLIPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_METHODS = {"lessThan": "<", "lessThanOrEqual": "<=", "greaterThan": ">",
            "greaterThanOrEqual": ">="}

# An operand: ("field", "context.x" | "resource.x"), or a literal ("long", "500"),
# ("decimal", "0.05"), ("string", "code"), ("bool", "true").
Operand = tuple[str, str]
# One comparison: (operator, left, right); "<" is also decimal's lessThan.
Comparison = tuple[str, Operand, Operand]


@dataclass(frozen=True, slots=True)
class Reads:
    """The entity attributes and context fields a policy set can observe."""

    attributes: frozenset[str]
    context: frozenset[str]
    # True when a decision about a deployment depends on no other deployment: no policy
    # names a Deployment in a condition or reads a live attribute of anything but
    # ``resource``. Then decisions are cached per deployment.
    live_isolated: bool
    # Fields used in nothing but comparisons (with literals or with each other), and
    # every comparison that involves one of them.
    compared: frozenset[str] = frozenset()
    comparisons: tuple[Comparison, ...] = field(default=())
    # The context fields read by policies that may decide something other than
    # ``route`` (invoke): only these must be known before a request is admitted; the
    # others (``budget_remaining`` in the shipped routing policies) may come from its
    # reservation.
    before_routing: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class EntityRef:
    """An entity literal in a policy: ``Team::"eng"``."""

    type: str
    id: str
    in_condition: bool


def reads(bodies: Sequence[Mapping[str, Any]]) -> Reads:
    """What the policies (each cedarpy's JSON form of one policy) read."""
    attributes: set[str] = set()
    context: set[str] = set()
    before_routing: set[str] = set()
    whole_context = False
    isolated = True
    for body in bodies:
        for condition in body.get("conditions", ()):
            found = _Accesses()
            found.visit(condition.get("body"))
            attributes |= found.attributes
            context |= found.context
            whole_context = whole_context or found.whole_context
            isolated = isolated and not found.live_elsewhere
            if not only_routes(body):
                before_routing |= set(CONTEXT) if found.whole_context else found.context
        if any(ref.type == "Deployment" and ref.in_condition for ref in entity_refs(body)):
            isolated = False
    compared, comparisons = _abstraction(bodies, whole_context)
    known = frozenset(CONTEXT)
    return Reads(
        frozenset(attributes),
        known if whole_context else frozenset(context) & known,
        isolated,
        compared,
        comparisons,
        frozenset(before_routing) & known,
    )


def only_routes(body: Mapping[str, Any]) -> bool:
    """Does the scope of ``body`` admit ``Action::"route"`` and no other action?"""
    scope = body.get("action", {})
    if scope.get("op") == "All":
        return False
    named = [scope["entity"]] if "entity" in scope else list(scope.get("entities", ()))
    return bool(named) and all(
        item.get("type") == "Action" and item.get("id") == "route" for item in named)


class _Accesses:
    def __init__(self) -> None:
        self.attributes: set[str] = set()
        self.context: set[str] = set()
        self.whole_context = False
        self.live_elsewhere = False

    def visit(self, node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                self.visit(item)
            return
        if not isinstance(node, dict):
            return
        if node == _CONTEXT:
            self.whole_context = True
            return
        if len(node) == 1:
            (op, inner), = node.items()
            if op in (".", "has") and isinstance(inner, dict) and "left" in inner:
                self._access(inner["left"], str(inner.get("attr", "")))
                return
        for value in node.values():
            self.visit(value)

    def _access(self, left: Any, attr: str) -> None:
        if left == _CONTEXT:
            self.context.add(attr)
            return
        self.attributes.add(attr)
        if attr in DEPLOYMENT_LIVE and left != _RESOURCE:
            self.live_elsewhere = True
        self.visit(left)


def _abstraction(bodies: Sequence[Mapping[str, Any]],
                 whole_context: bool) -> tuple[frozenset[str], tuple[Comparison, ...]]:
    """The fields used only in comparisons whose operands are literals or such fields."""
    walk = _Comparisons()
    for body in bodies:
        for condition in body.get("conditions", ()):
            walk.visit(condition.get("body"))
    fields = {name for name, count in walk.uses.items() if walk.compared[name] == count}
    if whole_context:
        fields = {name for name in fields if not name.startswith("context.")}
    changed = True
    while changed:  # a comparison with a field that is read otherwise tells too little
        changed = False
        for _op, left, right in walk.comparisons:
            named = [value for kind, value in (left, right) if kind == "field"]
            if any(name not in fields for name in named) and any(n in fields for n in named):
                fields -= set(named)
                changed = True
    kept = tuple(dict.fromkeys(
        item for item in walk.comparisons
        if any(kind == "field" and value in fields for kind, value in item[1:])
    ))
    return frozenset(fields), kept


class _Comparisons:
    def __init__(self) -> None:
        self.uses: Counter[str] = Counter()
        self.compared: Counter[str] = Counter()
        self.comparisons: list[Comparison] = []

    def visit(self, node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                self.visit(item)
            return
        if not isinstance(node, dict):
            return
        name = _field(node)
        if name is not None:
            self.uses[name] += 1
            return
        sides = _sides(node)
        if sides is not None:
            op, left, right = sides
            first, second = _operand(left), _operand(right)
            if first is not None and second is not None:
                for kind, value in (first, second):
                    if kind == "field":
                        self.uses[value] += 1
                        self.compared[value] += 1
                self.comparisons.append((op, first, second))
                return
        for value in node.values():
            self.visit(value)


def _sides(node: dict[str, Any]) -> tuple[str, Any, Any] | None:
    if len(node) != 1:
        return None
    (op, inner), = node.items()
    if op in _FLIPPED and isinstance(inner, dict) and "left" in inner and "right" in inner:
        return op, inner["left"], inner["right"]
    if op in _METHODS and isinstance(inner, list) and len(inner) == 2:
        return _METHODS[op], inner[0], inner[1]
    return None


def _field(node: Any) -> str | None:
    if isinstance(node, dict) and len(node) == 1 and isinstance(node.get("."), dict):
        inner = node["."]
        for var, prefix in ((_CONTEXT, "context"), (_RESOURCE, "resource")):
            if inner.get("left") == var:
                return f"{prefix}.{inner.get('attr')}"
    return None


def _operand(node: Any) -> Operand | None:
    name = _field(node)
    if name is not None:
        return "field", name
    if not isinstance(node, dict) or len(node) != 1:
        return None
    if "Value" in node:
        value = node["Value"]
        if isinstance(value, bool):
            return "bool", "true" if value else "false"
        if isinstance(value, int):
            return "long", str(value)
        if isinstance(value, str):
            return "string", value
        return None
    arguments = node.get("decimal")
    if isinstance(arguments, list) and len(arguments) == 1 and isinstance(arguments[0], dict):
        text = arguments[0].get("Value")
        if isinstance(text, str):
            return "decimal", text
    return None


def entity_refs(body: Mapping[str, Any]) -> Iterator[EntityRef]:
    """Every entity literal of one policy, in its scope and in its conditions."""
    for part in ("principal", "action", "resource"):
        for uid in _uids(body.get(part)):
            yield EntityRef(uid["type"], uid["id"], False)
    for condition in body.get("conditions", ()):
        for uid in _uids(condition.get("body")):
            yield EntityRef(uid["type"], uid["id"], True)


def _uids(node: Any) -> Iterator[Mapping[str, str]]:
    if isinstance(node, list):
        for item in node:
            yield from _uids(item)
    elif isinstance(node, dict):
        if node.keys() == {"type", "id"} and all(isinstance(v, str) for v in node.values()):
            yield node
            return
        for value in node.values():
            yield from _uids(value)


def permits_action(body: Mapping[str, Any], action: str) -> bool:
    """Is ``body`` a permit whose scope admits ``Action::"action"``?"""
    if body.get("effect") != "permit":
        return False
    scope = body.get("action", {})
    op = scope.get("op")
    if op == "All":
        return True
    named = [scope["entity"]] if "entity" in scope else list(scope.get("entities", ()))
    return any(item.get("type") == "Action" and item.get("id") == action for item in named)
