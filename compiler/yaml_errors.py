"""ruamel's YAML errors, translated into positioned diagnostics in plain words.

ruamel words its errors for YAML implementers ("expected <block end>, but found
'<block mapping start>'"); this module keeps its positions, says what the user did
and adds a hint. It is part of stage 1, load.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, StreamMark, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from . import codes
from .diagnostics import DiagnosticSink
from .source import Position, SourceFile

_DUPLICATE_KEY = re.compile(r'^found duplicate key "(?P<key>.*?)"(?: with value|$)')

# (words in ruamel's problem, our message, hint); the first that matches wins.
_PLAIN_WORDS: tuple[tuple[str, str, str], ...] = (
    (
        "expected <block end>",
        "this line is indented differently from the lines above it",
        "indent every key of one mapping by the same number of spaces",
    ),
    (
        "found undefined alias",
        "",  # ruamel's own words say it
        "define the anchor (&name) before the alias (*name) that uses it",
    ),
    (
        "could not find expected ':'",
        "this line has a key with no ':' after it",
        "write 'key: value', with a space after the colon",
    ),
    (
        "mapping values are not allowed here",
        "",
        "a value holding ': ' must be quoted, and a nested mapping goes on its own indented lines",
    ),
)


def report_reader_error(relative: str, text: str, exc: ReaderError, sink: DiagnosticSink) -> None:
    """A character YAML forbids (a control character): point at it, not at line 1."""
    offset = exc.position if isinstance(exc.position, int) else 0
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    character = exc.character
    if not isinstance(character, int):
        character = ord(str(character)[:1] or "?")
    sink.add(
        codes.YAML_SYNTAX,
        f"control character U+{character:04X} is not allowed in YAML",
        Position(relative, line, column),
        "delete it; in a double-quoted string write it as an escape such as \\t or \\x07",
    )


def report_marked_error(
    relative: str, text: str, exc: MarkedYAMLError, sink: DiagnosticSink
) -> None:
    """A YAML syntax error at the place the parser stopped, with the place it started if apart."""
    problem = exc.problem or str(exc)
    # At the end of the file there is nothing to show; the unclosed thing starts elsewhere.
    at_end = "end of stream" in problem or "<stream end>" in problem
    # A key with no ':' after it is found on the next line; its own line is the one to fix.
    no_colon = "could not find expected ':'" in problem
    mark = exc.context_mark if (at_end or no_colon) and exc.context_mark \
        else exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    column = mark.column + 1 if mark is not None else 1
    position = Position(relative, line, column)
    if "'\\t'" in problem or "\t" in problem:
        before = SourceFile(relative, text).line_text(line)[: column - 1]
        indenting = not before.strip()
        sink.add(
            codes.YAML_TAB,
            "tab character where YAML expects spaces",
            position,
            "indent with spaces; YAML does not allow tabs for indentation"
            if indenting else "replace the tab with spaces",
        )
        return
    duplicate = _DUPLICATE_KEY.match(problem)
    if duplicate is not None and mark is not None:
        _report_duplicate(relative, text, duplicate.group("key"), mark, sink)
        return
    if "duplicate merge key" in problem:
        sink.add(codes.YAML_DUPLICATE_KEY, "a mapping has two '<<' merge keys", position,
                 "merge several anchors with one key: <<: [*first, *second]")
        return
    message, hint = _plain_message(problem, exc.context, exc.context_mark, mark)
    sink.add(codes.YAML_SYNTAX, message, position, hint)


def _plain_message(
    problem: str, context: str | None, context_mark: StreamMark | None, mark: StreamMark | None
) -> tuple[str, str | None]:
    for words, plain, advice in _PLAIN_WORDS:
        if words in problem:
            return plain or problem, advice
    hint: str | None = None
    if problem.startswith("but "):  # "expected a single document in the stream, but found another"
        if "single document" in (context or ""):
            hint = "a config file holds one YAML document; remove the extra '---'"
        return f"{context}, {problem}" if context else problem, hint
    where = ""
    if context and context_mark is not None and mark is not None and context_mark.line != mark.line:
        where = f" that starts at line {context_mark.line + 1}"
    message = f"{problem} {context}{where}" if context else problem
    if context and "flow" in context:
        hint = "close every '{' with '}' and every '[' with ']'; quote values that hold them"
    elif context and "quoted scalar" in context:
        hint = "close the string with the quote it opens with"
    return message, hint


def _report_duplicate(
    relative: str, text: str, key: str, mark: StreamMark, sink: DiagnosticSink
) -> None:
    # ruamel's context mark is where the mapping starts, not where the key first was;
    # the composed node tree (which does not check duplicates) has both places.
    first = _first_occurrence(text, mark.line, mark.column)
    where = f" (first at line {first.line + 1})" if first is not None else ""
    sink.add(
        codes.YAML_DUPLICATE_KEY,
        f'duplicate key "{key}"{where}',
        Position(relative, mark.line + 1, mark.column + 1, max(len(key), 1)),
        "names are mapping keys, so each must be unique; rename or merge the two",
    )


# What ruamel's constructors raise, bare and unpositioned, on a value they cannot build:
# ValueError ("!!int x", a date 2024-13-45), TypeError (a mapping as a key), KeyError
# ("!!bool maybe"), IndexError ("!!int ''"), AttributeError ("!!set x", a scalar where
# its constructor wants a mapping).
CONSTRUCT_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, LookupError,
                                                 AttributeError)


def report_construct_error(
    relative: str, text: str, exc: Exception, sink: DiagnosticSink
) -> None:
    """ruamel raised one of ``CONSTRUCT_ERRORS`` while building a value: say where and why.

    A date that is not one (2024-13-45), ``!!bool maybe``, or a complex key holding a
    mapping (``? {a: b}``) fail there, with no position; the composed nodes tell which it was.
    """
    complex_key = isinstance(exc, TypeError) and "unhashable" in str(exc)
    node = _failing_node(text, complex_key=complex_key)
    position = Position(relative, 1, 1)
    quoted = f'"{node.value}"' if isinstance(node, ScalarNode) else "it"
    if node is not None:
        start, end = node.start_mark, node.end_mark
        width = end.column - start.column if end.line == start.line else 1
        position = Position(relative, start.line + 1, start.column + 1, max(width, 1))
    if complex_key:
        sink.add(codes.YAML_FEATURE, "a mapping cannot be a mapping key", position,
                 "keys are plain names")
        return
    if node is not None and node.tag and text[node.start_mark.index :].startswith("!"):
        tag = _short_tag(node.tag)  # written on the value, not implied by its text
        sink.add(codes.YAML_SYNTAX, f"{_shown(node)} cannot be read as {tag}", position,
                 f"write a plain value without the tag, or one that {tag} reads")
        return
    reason = f": {exc}" if isinstance(exc, ValueError) and str(exc) else ""
    sink.add(codes.YAML_SYNTAX, f"this value cannot be read{reason}", position,
             f"if it is meant as text, quote it: {quoted}")


def _shown(node: Node) -> str:
    if isinstance(node, ScalarNode):
        return f'"{node.value}"'
    return "a list" if isinstance(node, SequenceNode) else "a mapping"


def _short_tag(tag: str) -> str:
    """``tag:yaml.org,2002:bool`` as it is written, ``!!bool``."""
    return f"!!{tag.removeprefix(_STANDARD_TAG)}" if tag.startswith(_STANDARD_TAG) else tag


_STANDARD_TAG = "tag:yaml.org,2002:"


def _failing_node(text: str, complex_key: bool) -> Node | None:
    try:
        yaml = YAML(typ="rt", pure=True)
        root = yaml.compose(text)
    except YAMLError:
        return None
    for node, is_key in _nodes(root, set()):
        if complex_key and is_key and not isinstance(node, ScalarNode):
            return node
        if not complex_key and isinstance(node, ScalarNode) and not _constructs(yaml, node):
            return node
    return None


def _constructs(yaml: YAML, node: ScalarNode) -> bool:
    try:
        yaml.constructor.construct_object(node, deep=True)
    except CONSTRUCT_ERRORS:
        return False
    except YAMLError:
        return False
    return True


def _first_occurrence(text: str, line: int, column: int) -> StreamMark | None:
    try:
        root = YAML(typ="rt", pure=True).compose(text)
    except YAMLError:
        return None
    mappings = (node for node, _ in _nodes(root, set()) if isinstance(node, MappingNode))
    for mapping in mappings:
        seen: dict[object, StreamMark] = {}
        for key, _ in mapping.value:
            mark = key.start_mark
            if (mark.line, mark.column) == (line, column):
                return seen.get(key.value)
            seen.setdefault(key.value, mark)
    return None


def _nodes(
    node: Node | None, visited: set[int], is_key: bool = False
) -> Iterator[tuple[Node, bool]]:
    """Every node in document order, each with whether it is a mapping key."""
    if node is None or id(node) in visited:  # aliases share nodes; anchors may nest
        return
    visited.add(id(node))
    yield node, is_key
    if isinstance(node, MappingNode):
        for key, value in node.value:
            yield from _nodes(key, visited, is_key=True)
            yield from _nodes(value, visited)
    elif isinstance(node, SequenceNode):
        for item in node.value:
            yield from _nodes(item, visited)
