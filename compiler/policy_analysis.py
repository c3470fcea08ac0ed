"""What a policy set reads and names, found by walking cedarpy's JSON form of each policy.

The runtime sends Cedar only the attributes and context fields some policy reads
(an attribute no policy reads cannot change a decision), and caches a decision about
one deployment only when no policy can see another deployment's live attributes.

A field that policies only ever compare with literals (``context.budget_remaining
.lessThan(decimal("10.0"))``, ``resource.current_error_rate.greaterThan(...)``) can
change a decision only when one of those comparisons changes its answer: the runtime
keys its decision cache on the answers, not the value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .entity_model import CONTEXT, DEPLOYMENT_LIVE

_CONTEXT = {"Var": "context"}
_RESOURCE = {"Var": "resource"}
_COMPARISONS = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
_METHODS = {"lessThan": "<", "lessThanOrEqual": "<=", "greaterThan": ">",
            "greaterThanOrEqual": ">="}

# One comparison of a field with a literal: (operator, "long"|"decimal"|"string", literal),
# the field on the left: ("<", "decimal", "10.0") is ``field.lessThan(decimal("10.0"))``.
Atom = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Reads:
    """The entity attributes and context fields a policy set can observe."""

    attributes: frozenset[str]
    context: frozenset[str]
    # True when a decision about a deployment depends on no other deployment: no policy
    # names a Deployment in a condition or reads a live attribute of anything but
    # ``resource``. Then decisions are cached per deployment.
    live_isolated: bool
    # "context.f" / "resource.f" -> every comparison it takes part in, for the fields
    # used in nothing else.
    atoms: Mapping[str, tuple[Atom, ...]] = field(default_factory=dict)


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
        if any(ref.type == "Deployment" and ref.in_condition for ref in entity_refs(body)):
            isolated = False
    return Reads(
        frozenset(attributes),
        frozenset(CONTEXT) if whole_context else frozenset(context) & frozenset(CONTEXT),
        isolated,
        {} if whole_context else comparisons(bodies),
    )


def comparisons(bodies: Sequence[Mapping[str, Any]]) -> dict[str, tuple[Atom, ...]]:
    """Fields (context.x, resource.x) only ever compared with literals, with those atoms."""
    atoms: dict[str, list[Atom]] = {}
    other: set[str] = set()
    for body in bodies:
        for condition in body.get("conditions", ()):
            _comparisons(condition.get("body"), atoms, other)
    return {name: tuple(dict.fromkeys(found)) for name, found in sorted(atoms.items())
            if name not in other}


def _comparisons(node: Any, atoms: dict[str, list[Atom]], other: set[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _comparisons(item, atoms, other)
        return
    if not isinstance(node, dict):
        return
    if len(node) == 1:
        (op, inner), = node.items()
        sides = (_sides(op, inner))
        if sides is not None:
            normal, left, right = sides
            for name_node, literal_node, operator in ((left, right, normal),
                                                      (right, left, _COMPARISONS[normal])):
                name, literal = _field(name_node), _literal(literal_node)
                if name is not None and literal is not None:
                    atoms.setdefault(name, []).append((operator, *literal))
                    return
        name = _field(node)
        if name is not None:
            other.add(name)
    for value in node.values():
        _comparisons(value, atoms, other)


def _sides(op: str, inner: Any) -> tuple[str, Any, Any] | None:
    if op in _COMPARISONS and isinstance(inner, dict) and "left" in inner:
        return op, inner.get("left"), inner.get("right")
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


def _literal(node: Any) -> tuple[str, str] | None:
    if not isinstance(node, dict) or len(node) != 1:
        return None
    if "Value" in node:
        value = node["Value"]
        if isinstance(value, bool):
            return None
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
