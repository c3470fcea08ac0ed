"""Stage 4, policies: Cedar files split into policies, each parsed with cedarpy and positioned.

cedarpy reports parse errors without a position and names policies ``policyN``, so
each file is cut into its policies here (at top-level semicolons, outside strings
and comments) and every policy is parsed on its own: an error then has the
``file:line:col`` of the policy that caused it.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cedarpy

from . import codes
from .diagnostics import DiagnosticSink
from .graph import Policy
from .load import PolicyFile
from .policy_principals import principal_findings
from .source import Position


@dataclass(frozen=True, slots=True)
class PolicyText:
    """The text of one policy and where it starts."""

    text: str
    position: Position


@dataclass(frozen=True, slots=True)
class ParsedPolicy:
    """A policy that parsed, with its annotations checked, and cedarpy's JSON form of it."""

    policy: Policy
    chunk: PolicyText
    body: Mapping[str, Any]


def compile_policies(files: Sequence[PolicyFile], sink: DiagnosticSink) -> tuple[Policy, ...]:
    """Parse every policy of every file; check @id (required, unique) and @priority (integer)."""
    return tuple(parsed.policy for parsed in parse_policies(files, sink))


def parse_policies(files: Sequence[PolicyFile], sink: DiagnosticSink) -> tuple[ParsedPolicy, ...]:
    """Like ``compile_policies``, keeping each policy's text and JSON form for validation."""
    policies: list[ParsedPolicy] = []
    first_seen: dict[str, Position] = {}
    for policy_file in files:
        for chunk in split_policies(policy_file):
            body = _parse(chunk, sink)
            if body is None:
                continue
            annotations = dict(body.get("annotations", {}))
            _check_annotation_names(chunk, annotations, sink)
            policy_id = annotations.get("id")
            if not policy_id:
                effect = re.match(r"\w+", chunk.text)
                sink.add(codes.CEDAR_MISSING_ID, "policy has no @id annotation",
                         _at(chunk, 0, len(effect.group()) if effect else 1),
                         'start it with @id("a-unique-name"); decisions name policies by id')
                continue
            if policy_id in first_seen:
                sink.add(codes.CEDAR_DUPLICATE_ID, f'@id("{policy_id}") is used twice',
                         _annotation(chunk, "id"), f"first used at {first_seen[policy_id]}")
                continue
            first_seen[policy_id] = _annotation(chunk, "id")
            priority_text = annotations.get("priority", "0")
            try:
                priority = int(priority_text)
            except ValueError:
                sink.add(codes.CEDAR_PRIORITY,
                         f'@priority("{priority_text}") of policy "{policy_id}" is not an integer',
                         _annotation(chunk, "priority"),
                         'write an integer in quotes, e.g. @priority("50")')
                continue
            for found in principal_findings(chunk.text, body, code_offsets(chunk.text)):
                sink.add(found.code, found.message, _at(chunk, found.offset, found.width),
                         found.hint)
            position = chunk.position
            policy = Policy(policy_id, position.file, position.line, priority, chunk.text)
            policies.append(ParsedPolicy(policy, chunk, body))
    return tuple(policies)


# The annotations aigw reads; Cedar allows any others, which aigw keeps as notes.
READ_ANNOTATIONS = ("id", "priority")


def _check_annotation_names(
    chunk: PolicyText, annotations: Mapping[str, Any], sink: DiagnosticSink
) -> None:
    """``@priorty("90")`` or ``@Priority("90")`` is valid Cedar that aigw never reads:
    the policy would rank at 0 (or have no id) with nothing said."""
    for name in annotations:
        if name in READ_ANNOTATIONS:
            continue
        close = difflib.get_close_matches(name.lower(), READ_ANNOTATIONS, n=1, cutoff=0.7)
        if close and close[0] not in annotations:
            sink.add(codes.CEDAR_ANNOTATION,
                     f"@{name} is not an annotation aigw reads; the policy is compiled "
                     f"without @{close[0]}", _annotation(chunk, name),
                     f"did you mean @{close[0]}? (aigw reads @id and @priority; other "
                     "annotations are kept as notes)")


# The deepest nesting of brackets a policy may have. cedarpy's parser recurses and
# crashes the whole process (a segfault, no diagnostic) at about 700 levels; no policy
# a person writes comes near this.
MAX_NESTING = 64


def _too_deep(chunk: PolicyText) -> int | None:
    """The offset where ``chunk``'s brackets pass ``MAX_NESTING``, if they do."""
    depth = 0
    for index, char in _code(chunk.text):
        if char in "([{":
            depth += 1
            if depth > MAX_NESTING:
                return index
        elif char in ")]}":
            depth -= 1
    return None


# The most operators (&&, ||, ., +, ==, if, has, ...) one policy may hold. cedarpy builds
# a chain of them as nested nodes: at about 500 its JSON form is nested past what Python's
# json reads (RecursionError), at some thousands its parser overflows its stack (a
# segfault, as brackets do). Policies people write hold tens.
MAX_OPERATORS = 200
_OPERATOR = re.compile(r"&&|\|\||[!=<>]=?|[-+*.]|\b(?:if|has|like|is|in)\b")


def _too_many_operators(chunk: PolicyText) -> re.Match[str] | None:
    """The operator of ``chunk`` past ``MAX_OPERATORS``, if there is one."""
    code = [" "] * len(chunk.text)  # comments and strings blanked, offsets kept
    for index, char in _code(chunk.text):
        code[index] = char
    operators = _OPERATOR.finditer("".join(code))
    return next(itertools.islice(operators, MAX_OPERATORS, None), None)


def _parse(chunk: PolicyText, sink: DiagnosticSink) -> Mapping[str, Any] | None:
    """cedarpy's JSON form of the one policy in ``chunk`` (an empty one for a bare comment)."""
    deep = _too_deep(chunk)
    if deep is not None:
        sink.add(codes.CEDAR_SYNTAX, f"Cedar policy nests brackets more than {MAX_NESTING} "
                 "deep", _at(chunk, deep, 1), "split the condition, or name its parts "
                 "with && and ||")
        return None
    operator = _too_many_operators(chunk)
    if operator is not None:
        sink.add(codes.CEDAR_SYNTAX, f"Cedar policy has more than {MAX_OPERATORS} operators",
                 _at(chunk, operator.start(), len(operator.group())),
                 "write it as several policies (a forbid's || as several forbids), or test "
                 "a tag or group the config defines rather than list names")
        return None
    try:
        parsed = json.loads(cedarpy.policies_to_json_str(chunk.text))
    except ValueError as exc:
        unended = _missing_semicolon(chunk, str(exc))
        if unended is not None:  # the commonest slip: the policy before runs on
            sink.add(codes.CEDAR_SYNTAX, f"Cedar syntax error: {exc}: the policy does not "
                     "end with ';'", unended, "a policy ends with ';': add it here")
            return None
        position = _error_position(chunk, str(exc))
        in_annotation = chunk.text.splitlines()[position.line - chunk.position.line].lstrip()
        if in_annotation.startswith("@") and position != chunk.position:
            hint = 'annotation values are quoted strings: @priority("50")'
        else:
            hint = next(text for start, text in _SYNTAX_HINTS if str(exc).startswith(start))
        sink.add(codes.CEDAR_SYNTAX, f"Cedar syntax error: {exc}", position, hint)
        return None
    bodies = [*parsed.get("staticPolicies", {}).values(), *parsed.get("templates", {}).values()]
    if not bodies:
        return {}
    body: Mapping[str, Any] = bodies[0]
    if parsed.get("templates"):
        body = {**body, "template": True}
    return body


# Hints by the start of cedarpy's message, the first that matches; "" matches any.
_SYNTAX_HINTS = (
    ("'=' is not a valid operator", "Cedar compares with =="),
    ("invalid token", "close the string here, or remove a character Cedar does not use "
                      "outside strings (' # $ `)"),
    ("invalid policy condition", "a condition is when { ... } or unless { ... }"),
    ("", 'a policy is @id("name") permit|forbid (principal, action, resource) [when { ... }];'),
)


def split_policies(policy_file: PolicyFile) -> Iterator[PolicyText]:
    """Cut a Cedar file into its policies, each with the position of its first character.

    >>> text = "permit(principal, action, resource);\\n\\nforbid(principal, action, resource);"
    >>> [p.position.line for p in split_policies(PolicyFile("p.cedar", text))]
    [1, 3]
    """
    text = policy_file.text
    start: int | None = None
    for index, char in _code(text):
        if start is None and not char.isspace():
            start = index
        if char == ";" and start is not None:
            yield PolicyText(text[start : index + 1], _position(policy_file.path, text, start))
            start = None
    if start is not None:
        yield PolicyText(text[start:], _position(policy_file.path, text, start))


def code_offsets(text: str) -> frozenset[int]:
    """Offsets of ``text`` outside comments and string literals (an opening quote counts)."""
    return frozenset(index for index, _ in _code(text))


def position_in(chunk: PolicyText, offset: int, width: int) -> Position:
    """The position of ``offset`` inside ``chunk``, ``width`` columns wide."""
    return _at(chunk, offset, width)


def _code(text: str) -> Iterator[tuple[int, str]]:
    """Each character outside comments; a string literal comes as its opening quote only."""
    index = 0
    while index < len(text):
        if text.startswith("//", index):
            end = text.find("\n", index)
            index = len(text) if end < 0 else end
            continue
        yield index, text[index]
        index = _skip_string(text, index) if text[index] == '"' else index + 1


def _skip_string(text: str, index: int) -> int:
    index += 1
    while index < len(text) and text[index] != '"':
        index += 2 if text[index] == "\\" else 1
    return index + 1


def _missing_semicolon(chunk: PolicyText, message: str) -> Position | None:
    """Where a ';' is missing, when cedarpy's error says the policy ran on: into the next
    one's annotation or effect ("unexpected token `@`"), or to the end of the file
    ("unexpected end of input") after a whole head. The position is just after the last
    code before that point."""
    code = [(index, char) for index, char in _code(chunk.text) if not char.isspace()]
    if message == "unexpected end of input":
        ended = chunk.text.rstrip().endswith(("}", ")"))
        stop = len(chunk.text) if ended and code else None
    else:
        named = _ERROR_TOKEN.search(message)
        token = named.group("tick") if named is not None else None
        if token not in ("@", "permit", "forbid"):
            return None
        heads = [i for i, _ in code if _token_at(chunk.text, i, "permit")
                 or _token_at(chunk.text, i, "forbid")]
        # The next policy's first token: the first ``token`` after this policy's effect.
        later = [i for i, _ in code if heads and i > heads[0] and _token_at(chunk.text, i, token)]
        stop = later[0] if later else None
    if stop is None:
        return None
    before = [i for i, _ in code if i < stop]
    if not before:
        return None
    # After the last code character before ``stop``: its closing ) or }.
    last = before[-1]
    return _at(chunk, last + 1, 1)


def _error_position(chunk: PolicyText, message: str) -> Position:
    """Where in ``chunk`` cedarpy's (position-less) error is.

    "unexpected token `5`", "'=' is not a valid operator" or "invalid policy effect:
    allow" name a token; if that token occurs exactly once in the policy's code, the
    error is there. Otherwise the policy is parsed again cut short, to find the first
    stretch of it that cannot be the start of a policy (``_probe_position``); failing
    both, the policy's first character is the honest answer.
    """
    token = _named_token(message)
    if token is not None:
        offsets = [i for i, _ in _code(chunk.text) if _token_at(chunk.text, i, token)]
        if len(offsets) == 1:
            return _at(chunk, offsets[0], len(token))
    return _probe_position(chunk, token) or chunk.position


_ERROR_TOKEN = re.compile(
    r"unexpected token `(?P<tick>[^`]+)`|invalid policy effect: (?P<word>\w+)"
    r"|'(?P<operator>[^']+)' is not a valid operator|invalid policy condition: (?P<clause>\w+)"
)


def _named_token(message: str) -> str | None:
    named = _ERROR_TOKEN.search(message)
    if named is None:
        return None
    return next(group for group in named.groups() if group is not None)


# What cedarpy says of a policy's text cut short and closed with ";" when that text is a
# good start of a policy: the ";" came too soon, or (after a comment) the text ran out.
_GOOD_START = ("unexpected token `;`", "unexpected end of input")


def _bad_start(text: str) -> bool:
    """Whether ``text`` cannot be the start of any policy."""
    try:
        cedarpy.policies_to_json_str(text + " ;")
    except ValueError as exc:
        return str(exc) not in _GOOD_START
    return False


def _probe_position(chunk: PolicyText, token: str | None) -> Position | None:
    """The first stretch of ``chunk`` (between two spaces of its code) that no policy can
    start with, found by parsing the text cut short at its spaces (a binary search: a
    bad start stays bad however much follows); in that stretch, the token cedarpy named,
    when one occurrence of it is where the start turns bad.

    cedarpy's parser recovers from an error and may report a later one, so this only
    narrows the search to where the text first goes wrong, which is where to look.
    """
    text = chunk.text
    cuts = [index for index, char in _code(text) if char.isspace()] + [len(text)]
    low, high = 0, len(cuts)
    while low < high:
        middle = (low + high) // 2
        if _bad_start(text[: cuts[middle]]):
            high = middle
        else:
            low = middle + 1
    if low == len(cuts):
        return None
    start, end = (cuts[low - 1] + 1 if low else 0), cuts[low]
    if token is not None:
        for index in range(start, end):
            if (_token_at(text, index, token) and not _bad_start(text[:index])
                    and _bad_start(text[: index + len(token)])):
                return _at(chunk, index, len(token))
    stretch = text[start:end]
    offset = start + len(stretch) - len(stretch.lstrip())
    width = len(stretch.strip().split("\n", 1)[0])
    return _at(chunk, offset, max(width, 1))


_OPERATOR_CHARS = "=<>!&|:"


def _token_at(text: str, index: int, token: str) -> bool:
    if not text.startswith(token, index):
        return False
    if not (token[0].isalnum() or token[0] == "_"):
        # An operator must not be part of a longer one: `=` is not the = in == or <=.
        if token[0] in _OPERATOR_CHARS:
            before = text[index - 1] if index > 0 else " "
            after = text[index + len(token)] if index + len(token) < len(text) else " "
            return before not in _OPERATOR_CHARS and after not in _OPERATOR_CHARS
        return True
    # A word must not be part of a longer one: `5` is not the 5 in 50.
    before = text[index - 1] if index > 0 else " "
    after = text[index + len(token)] if index + len(token) < len(text) else " "
    return not (before.isalnum() or before == "_" or after.isalnum() or after == "_")


def _annotation(chunk: PolicyText, name: str) -> Position:
    """The position of ``@name`` in the policy, else of the policy."""
    found = re.search(rf"@{name}\s*\(", chunk.text)
    return _at(chunk, found.start(), len(name) + 1) if found else chunk.position


def _at(chunk: PolicyText, offset: int, width: int) -> Position:
    """The position of ``offset`` inside ``chunk``, ``width`` columns wide."""
    line_start = chunk.text.rfind("\n", 0, offset) + 1
    start = chunk.position
    if line_start == 0:
        return Position(start.file, start.line, start.column + offset, width)
    line = start.line + chunk.text.count("\n", 0, offset)
    return Position(start.file, line, offset - line_start + 1, width)


def _position(path: str, text: str, offset: int) -> Position:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return Position(path, line, column)
