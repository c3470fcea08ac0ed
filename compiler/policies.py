"""Stage 4, policies: Cedar files split into policies, each parsed with cedarpy and positioned.

cedarpy reports parse errors without a position and names policies ``policyN``, so
each file is cut into its policies here (at top-level semicolons, outside strings
and comments) and every policy is parsed on its own: an error then has the
``file:line:col`` of the policy that caused it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cedarpy

from . import codes
from .diagnostics import DiagnosticSink
from .graph import Policy
from .load import PolicyFile
from .source import Position


@dataclass(frozen=True, slots=True)
class PolicyText:
    """The text of one policy and where it starts."""

    text: str
    position: Position


def compile_policies(files: Sequence[PolicyFile], sink: DiagnosticSink) -> tuple[Policy, ...]:
    """Parse every policy of every file; check @id (required, unique) and @priority (integer)."""
    policies: list[Policy] = []
    first_seen: dict[str, Position] = {}
    for policy_file in files:
        for chunk in split_policies(policy_file):
            annotations = _parse(chunk, sink)
            if annotations is None:
                continue
            policy_id = annotations.get("id")
            if not policy_id:
                sink.add(codes.CEDAR_MISSING_ID, "policy has no @id annotation", chunk.position,
                         'start it with @id("a-unique-name"); decisions name policies by id')
                continue
            if policy_id in first_seen:
                sink.add(codes.CEDAR_DUPLICATE_ID, f'@id("{policy_id}") is used twice',
                         chunk.position, f"first used at {first_seen[policy_id]}")
                continue
            first_seen[policy_id] = chunk.position
            priority_text = annotations.get("priority", "0")
            try:
                priority = int(priority_text)
            except ValueError:
                sink.add(codes.CEDAR_PRIORITY,
                         f'@priority("{priority_text}") of policy "{policy_id}" is not an integer',
                         chunk.position, 'write an integer in quotes, e.g. @priority("50")')
                continue
            policies.append(
                Policy(policy_id, chunk.position.file, chunk.position.line, priority, chunk.text)
            )
    return tuple(policies)


def _parse(chunk: PolicyText, sink: DiagnosticSink) -> dict[str, str] | None:
    try:
        parsed = json.loads(cedarpy.policies_to_json_str(chunk.text))
    except ValueError as exc:
        sink.add(codes.CEDAR_SYNTAX, f"Cedar syntax error: {exc}", chunk.position,
                 "a policy is effect (principal, action, resource) [when {...}] ;")
        return None
    bodies = [*parsed.get("staticPolicies", {}).values(), *parsed.get("templates", {}).values()]
    return dict(bodies[0].get("annotations", {})) if bodies else {}


def split_policies(policy_file: PolicyFile) -> Iterator[PolicyText]:
    """Cut a Cedar file into its policies, each with the position of its first character.

    >>> [p.position.line for p in split_policies(PolicyFile("p.cedar", 'permit(principal, action, resource);\\n\\nforbid(principal, action, resource);'))]
    [1, 3]
    """
    text = policy_file.text
    start: int | None = None
    index = 0
    while index < len(text):
        char = text[index]
        if text.startswith("//", index):
            end = text.find("\n", index)
            index = len(text) if end < 0 else end
            continue
        if start is None and not char.isspace():
            start = index
        if char == '"':
            index = _skip_string(text, index)
            continue
        if char == ";" and start is not None:
            yield PolicyText(text[start : index + 1], _position(policy_file.path, text, start))
            start = None
        index += 1
    if start is not None:
        yield PolicyText(text[start:], _position(policy_file.path, text, start))


def _skip_string(text: str, index: int) -> int:
    index += 1
    while index < len(text) and text[index] != '"':
        index += 2 if text[index] == "\\" else 1
    return index + 1


def _position(path: str, text: str, offset: int) -> Position:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return Position(path, line, column)
