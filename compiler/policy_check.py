"""Policies checked against the generated schema, each error at the policy's own file:line:col.

cedarpy validates a policy set at once and names the policy an error is about
``policyN`` (its index in the set), with no position. The set is validated as the
concatenation of the policies in order, so ``policyN`` is the N-th policy here; the
offending token (an attribute, an entity type, an action) is then found in that
policy's text when the message names one. Entity literals are checked against the
config too: ``Deployment::"gtp-4o"`` is an error with a "did you mean" hint.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

import cedarpy

from . import codes
from .codes import Code
from .diagnostics import DiagnosticSink
from .entity_model import (
    ACTIONS,
    CONTEXT,
    ENTITY_TYPES,
    EntityNames,
    cedar_schema_json,
)
from .policies import ParsedPolicy, code_offsets, position_in
from .policy_analysis import entity_refs, permits_action
from .source import Position

_PREFIX = re.compile(r"^for policy `[^`]+`[,:]\s*")
_ATTRIBUTE = re.compile(
    r"attribute `(?P<attr>[^`]+)`(?: on entity type `(?P<type>[^`]+)`| in (?P<context>context) "
    r"for \S+)? not found"
)
_UNKNOWN_TYPE = re.compile(r"unrecognized entity type `(?P<type>[^`]+)`")
_UNKNOWN_ACTION = re.compile(r'unrecognized action `Action::"(?P<action>[^"]+)"`')
_NO_ACTION = "unable to find an applicable action"
_TYPE_ERROR = re.compile(r"unexpected type|are not compatible|extension function argument")
_ENUM = "enumerated entity type"
_BAD_DECIMAL = re.compile(r"failed to parse as a decimal value: `(?P<arg>\"[^`]*\")`")
_DECIMAL_COMPARED = (r"\.\s*((?:budget_remaining|current_error_rate|input|output)\s*(?:<=?|>=?))"
                     r"|((?:<=?|>=?)\s*\w+(?:\s*\.\s*\w+)*\s*\.\s*(?:budget_remaining|"
                     r"current_error_rate|input|output))\b")
_SIGNATURES = "; ".join(
    f"{name}: {'|'.join(principals)} -> {'|'.join(resources)}"
    for name, (principals, resources) in ACTIONS.items()
)


@dataclass(frozen=True, slots=True)
class _Finding:
    code: Code
    message: str
    position: Position
    hint: str | None


def check_policies(
    parsed: Sequence[ParsedPolicy],
    names: EntityNames,
    schema: cedarpy.Schema,
    sink: DiagnosticSink,
    all_parsed: bool = True,
) -> tuple[ParsedPolicy, ...]:
    """The policies that validate against ``schema`` and name only entities that exist.

    ``all_parsed`` False says some policy was already dropped (a syntax error, a bad
    @priority): then no "nothing permits" warning, since that policy may be the permit.
    """
    findings: dict[int, list[_Finding]] = {}
    for index, item in enumerate(parsed):
        findings[index] = [*_template(item), *_unknown_entities(item, names)]
    text = "\n".join(item.chunk.text for item in parsed)
    result = cedarpy.validate_policies(text, schema)
    for error in result.errors:
        at = _index(error.policy_id)
        if at is None or at >= len(parsed):
            continue
        finding = _finding(parsed[at], _PREFIX.sub("", error.error))
        if finding is not None:
            findings[at].append(finding)
    kept: list[ParsedPolicy] = []
    for index, item in enumerate(parsed):
        reported = _reportable(findings[index])
        for finding in reported:
            sink.add(finding.code, finding.message, finding.position, finding.hint)
        if not reported:
            kept.append(item)
    if all_parsed and len(kept) == len(parsed) and kept:
        _warn_unpermitted(kept, sink)
    return tuple(kept)


def _index(policy_id: str) -> int | None:
    found = re.fullmatch(r"policy(\d+)", policy_id)
    return int(found.group(1)) if found else None


def _reportable(findings: list[_Finding]) -> list[_Finding]:
    """Each distinct finding once; "no applicable action" only when nothing explains it."""
    unique: dict[tuple[str, str], _Finding] = {}
    for item in findings:
        unique.setdefault((item.code.id, item.message), item)
    found = list(unique.values())
    causes = {codes.CEDAR_UNKNOWN_TYPE.id, codes.CEDAR_UNKNOWN_ENTITY.id}
    if any(item.code.id in causes for item in found):
        found = [item for item in found if item.code is not codes.CEDAR_ACTION_SCOPE]
    named_action = any(item.code is codes.CEDAR_ACTION_SCOPE and "unknown action" in item.message
                       for item in found)
    if named_action:
        found = [item for item in found
                 if item.code is not codes.CEDAR_ACTION_SCOPE or "unknown action" in item.message]
    return _merge_attributes(found)


def _merge_attributes(found: list[_Finding]) -> list[_Finding]:
    """One AGW406 per attribute, naming every entity type it is missing on."""
    merged: list[_Finding] = []
    by_attribute: dict[str, tuple[int, list[str]]] = {}
    for item in found:
        named = re.match(r'policy "[^"]+": (?P<type>\w+) has no attribute `(?P<attr>[^`]+)`',
                         item.message)
        if item.code is not codes.CEDAR_UNKNOWN_ATTRIBUTE or named is None:
            merged.append(item)
            continue
        attr = named.group("attr")
        if attr in by_attribute:
            by_attribute[attr][1].append(named.group("type"))
            continue
        by_attribute[attr] = (len(merged), [named.group("type")])
        merged.append(item)
    for attr, (slot, types) in by_attribute.items():
        if len(types) < 2:
            continue
        first = merged[slot]
        policy = first.message.split(":", 1)[0]
        holders = sorted(t for t, (_, attrs) in ENTITY_TYPES.items() if attr.split(".")[0] in attrs)
        hint = (f"`{attr}` is an attribute of {', '.join(holders)}; name the action "
                f'(action == Action::"route") or test `resource is {holders[0]}`'
                if holders else first.hint)
        merged[slot] = _Finding(first.code,
                                f"{policy}: {' or '.join(sorted(types))} has no attribute `{attr}`",
                                first.position, hint)
    return merged


def _template(item: ParsedPolicy) -> list[_Finding]:
    if not item.body.get("template"):
        return []
    slot = re.search(r"\?(principal|resource)", item.chunk.text)
    where = (position_in(item.chunk, slot.start(), len(slot.group())) if slot
             else item.chunk.position)
    return [_Finding(codes.CEDAR_TEMPLATE,
                     f'policy "{item.policy.id}" is a template: it authorizes nothing until linked',
                     where, "name the principal or resource itself, e.g. principal in "
                     'Team::"eng"; aigw does not link templates')]


def _unknown_entities(item: ParsedPolicy, names: EntityNames) -> list[_Finding]:
    found = []
    for ref in entity_refs(item.body):
        if ref.type not in ENTITY_TYPES:
            continue  # Action:: is the validator's; an unknown type is AGW405
        known = names.known(ref.type)
        if known is None or ref.id in known:
            continue
        close = difflib.get_close_matches(ref.id, known, n=1)
        hint = (f'did you mean {ref.type}::"{close[0]}"?' if close
                else f"{ref.type} ids in the config: {', '.join(known)}" if known
                else f"the config defines no {ref.type}")
        literal = rf'{ref.type}\s*::\s*{re.escape(json.dumps(ref.id))}'
        found.append(_Finding(codes.CEDAR_UNKNOWN_ENTITY,
                              f'policy "{item.policy.id}" names {ref.type}::{json.dumps(ref.id)}, '
                              "which the config does not define",
                              _locate(item, literal, 0), hint))
    return found


def _finding(item: ParsedPolicy, message: str) -> _Finding | None:
    name = f'policy "{item.policy.id}"'
    attribute = _ATTRIBUTE.search(message)
    if attribute is not None and attribute.group("type") is None and not attribute.group("context"):
        attr = attribute.group("attr")
        return _Finding(codes.CEDAR_UNKNOWN_ATTRIBUTE,
                        f"{name}: the record has no attribute `{attr}`",
                        _locate(item, _attribute_pattern(attr.split(".")[-1]), 1), None)
    if attribute is not None:
        return _attribute(item, attribute.group("attr"), attribute.group("type"))
    unknown_type = _UNKNOWN_TYPE.search(message)
    if unknown_type is not None:
        entity_type = unknown_type.group("type")
        close = difflib.get_close_matches(entity_type, list(ENTITY_TYPES), n=1)
        return _Finding(codes.CEDAR_UNKNOWN_TYPE, f"{name}: unknown entity type `{entity_type}`",
                        _locate(item, rf"\b{re.escape(entity_type)}\b(?=\s*::|\s*[,)\]}}])", 0),
                        f"did you mean `{close[0]}`?" if close
                        else f"entity types: {', '.join(ENTITY_TYPES)}")
    action = _UNKNOWN_ACTION.search(message)
    if action is not None:
        close = difflib.get_close_matches(action.group("action"), list(ACTIONS), n=1)
        literal = rf'Action\s*::\s*"{re.escape(action.group("action"))}"'
        return _Finding(codes.CEDAR_ACTION_SCOPE,
                        f'{name}: unknown action Action::"{action.group("action")}"',
                        _locate(item, literal, 0),
                        f'did you mean Action::"{close[0]}"?' if close
                        else f"actions: {', '.join(ACTIONS)}")
    if _NO_ACTION in message:
        return _Finding(codes.CEDAR_ACTION_SCOPE,
                        f"{name}: no action applies to this principal and resource",
                        _effect(item), f"the actions are {_SIGNATURES}")
    if _ENUM in message:
        return None  # an unknown Team/Group/...: reported with a hint by _unknown_entities
    bad_decimal = _BAD_DECIMAL.search(message)
    if bad_decimal is not None:
        text = bad_decimal.group("arg")
        return _Finding(codes.CEDAR_TYPE, f"{name}: {text} is not a Cedar decimal",
                        _locate(item, rf'\bdecimal\s*\(\s*{re.escape(text)}\s*\)', 0),
                        "write it with a point and at most four digits after it: "
                        'decimal("1.0"), decimal("0.0525")')
    if _TYPE_ERROR.search(message):
        hint = ('decimals compare with methods: resource.current_error_rate.greaterThan('
                'decimal("0.05")); a decimal has at most four digits after the point'
                if "decimal" in message else None)
        where = _locate(item, _DECIMAL_COMPARED, 1) if "decimal" in message else _condition(item)
        if where == item.chunk.position:
            where = _condition(item)
        return _Finding(codes.CEDAR_TYPE, f"{name}: type error: {message}", where, hint)
    return _Finding(codes.CEDAR_INVALID, f"{name}: {message}", _condition(item), None)


def _suggest(word: str, candidates: Sequence[str]) -> list[str]:
    """Names ``word`` may have meant: those containing it, else the closest one."""
    containing = [name for name in candidates if word in name and word != name]
    return containing[:2] or difflib.get_close_matches(word, candidates, n=1)


def _attribute(item: ParsedPolicy, attr: str, entity_type: str | None) -> _Finding:
    last = attr.split(".")[-1]
    if entity_type is None:
        close = _suggest(attr, list(CONTEXT))
        return _Finding(codes.CEDAR_UNKNOWN_ATTRIBUTE,
                        f'policy "{item.policy.id}": the context has no field `{attr}`',
                        _locate(item, rf"\bcontext\s*\.\s*({re.escape(last)})\b", 1,
                                _attribute_pattern(last)),
                        f"did you mean {' or '.join(f'`context.{name}`' for name in close)}?"
                        if close
                        else f"context fields: {', '.join(CONTEXT)}")
    attributes = ENTITY_TYPES.get(entity_type, ((), {}))[1]
    close = _suggest(attr, list(attributes))
    hint = (f"did you mean {' or '.join(f'`{name}`' for name in close)}?" if close
            else f"{entity_type} attributes: {', '.join(attributes)}" if attributes
            else f"{entity_type} has no attributes")
    return _Finding(codes.CEDAR_UNKNOWN_ATTRIBUTE,
                    f'policy "{item.policy.id}": {entity_type} has no attribute `{attr}`',
                    _locate(item, _attribute_pattern(last), 1), hint)


def _attribute_pattern(attr: str) -> str:
    name = re.escape(attr)
    return rf'(?:\.\s*|\bhas\s+)({name})\b|\bhas\s+("{name}")'


def _locate(item: ParsedPolicy, pattern: str, group: int, fallback: str | None = None) -> Position:
    """The first match of ``pattern`` in the policy's code (not its comments), else the policy."""
    offsets = code_offsets(item.chunk.text)
    for candidate in (pattern, fallback):
        if candidate is None:
            continue
        for found in re.finditer(candidate, item.chunk.text):
            if found.start() not in offsets:
                continue
            chosen = group if group and found.group(group) is not None else 0
            if chosen == 0 and group and found.lastindex:
                chosen = found.lastindex
            return position_in(item.chunk, found.start(chosen), len(found.group(chosen)))
    return item.chunk.position


def _effect(item: ParsedPolicy) -> Position:
    return _locate(item, r"\b(permit|forbid)\b", 1)


def _condition(item: ParsedPolicy) -> Position:
    found = _locate(item, r"\b(when|unless)\b", 1)
    return found if found != item.chunk.position else _effect(item)


def _warn_unpermitted(kept: Sequence[ParsedPolicy], sink: DiagnosticSink) -> None:
    first = kept[0].chunk.position
    for action in ("invoke", "route"):
        if any(permits_action(item.body, action) for item in kept):
            continue
        what = "calls a route" if action == "invoke" else "is served by a deployment"
        sink.add(codes.CEDAR_NO_PERMIT,
                 f'no policy permits Action::"{action}", so no request {what}',
                 Position(first.file, 1, 1),
                 f'add @id("allow-{action}") permit (principal, action == Action::"{action}", '
                 "resource); Cedar denies what no policy permits")


def schema_for(names: EntityNames) -> cedarpy.Schema:
    """The cedarpy handle of the generated schema."""
    return cedarpy.Schema.from_json_str(json.dumps(cedar_schema_json(names)))
