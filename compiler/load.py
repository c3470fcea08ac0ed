"""Stage 1, load: read gateway.yaml (and its includes), pipelines and Cedar files, keeping positions.

Input: a gateway directory. Output: ``Loaded``, plain Python data (dicts, lists,
scalars) for each YAML document with a ``SourceMap`` beside it, and the raw text of
every Cedar file. Everything that can go wrong with reading a file or its YAML
syntax becomes an ``AGW1xx`` diagnostic; nothing here raises.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from . import codes
from .diagnostics import DiagnosticSink
from .source import NodePath, Position, SourceFile, SourceMap

GATEWAY_FILE = "gateway.yaml"


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """One YAML file as plain data, with where each node came from."""

    path: str
    data: dict[str, Any]
    source_map: SourceMap


@dataclass(frozen=True, slots=True)
class PolicyFile:
    path: str
    text: str


@dataclass(frozen=True, slots=True)
class Loaded:
    """Everything read from a gateway directory."""

    root: Path
    gateway: YamlDocument | None
    includes: tuple[YamlDocument, ...]
    pipelines: Mapping[str, YamlDocument]
    policies: tuple[PolicyFile, ...]
    sources: Mapping[str, SourceFile]


def load(root: Path, sink: DiagnosticSink) -> Loaded:
    """Read the gateway directory ``root``; problems go to ``sink``."""
    reader = _Reader(root, sink)
    gateway = reader.read_yaml(GATEWAY_FILE, Position(GATEWAY_FILE, 1, 1))
    includes: list[YamlDocument] = []
    if gateway is not None:
        reader.follow_includes(gateway, includes, (GATEWAY_FILE,))
    pipelines = {}
    for path in sorted((root / "pipelines").glob("*.yaml")):
        relative = path.relative_to(root).as_posix()
        document = reader.read_yaml(relative, Position(relative, 1, 1))
        if document is not None:
            pipelines[path.stem] = document
    policies = []
    for path in sorted((root / "policies").glob("*.cedar")):
        relative = path.relative_to(root).as_posix()
        text = reader.read_text(relative, Position(relative, 1, 1))
        if text is not None:
            policies.append(PolicyFile(relative, text))
    return Loaded(
        root=root,
        gateway=gateway,
        includes=tuple(includes),
        pipelines=MappingProxyType(pipelines),
        policies=tuple(policies),
        sources=MappingProxyType(dict(reader.sources)),
    )


class _Reader:
    """Reads files under one root, recording every text it read for diagnostics."""

    def __init__(self, root: Path, sink: DiagnosticSink) -> None:
        self.root = root
        self.sink = sink
        self.sources: dict[str, SourceFile] = {}

    def read_text(self, relative: str, cited_at: Position) -> str | None:
        try:
            raw = (self.root / relative).read_bytes()
        except FileNotFoundError:
            hint = (
                "run aigw in the directory that holds gateway.yaml, or pass that directory"
                if relative == GATEWAY_FILE
                else "include paths are relative to the file that includes them"
            )
            self.sink.add(codes.FILE_MISSING, f"file '{relative}' not found", cited_at, hint)
            return None
        except OSError as exc:
            self.sink.add(codes.FILE_MISSING, f"cannot read '{relative}': {exc.strerror}", cited_at)
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            self.sink.add(
                codes.FILE_ENCODING,
                f"byte 0x{raw[exc.start]:02x} is not valid UTF-8",
                Position(relative, line, column),
                "save the file as UTF-8",
            )
            return None
        self.sources[relative] = SourceFile(relative, text)
        return text

    def read_yaml(self, relative: str, cited_at: Position) -> YamlDocument | None:
        text = self.read_text(relative, cited_at)
        if text is None:
            return None
        yaml = YAML(typ="rt", pure=True)
        yaml.allow_duplicate_keys = False
        try:
            node = yaml.load(text)
        except MarkedYAMLError as exc:
            self._syntax_error(relative, exc)
            return None
        except YAMLError as exc:
            self.sink.add(codes.YAML_SYNTAX, str(exc), Position(relative, 1, 1))
            return None
        if node is None:
            self.sink.add(
                codes.FILE_EMPTY,
                f"'{relative}' has no content",
                Position(relative, 1, 1),
                "a gateway file is a mapping that starts with 'version: 1'"
                if relative == GATEWAY_FILE
                else "delete the file or give it content",
            )
            return None
        if not isinstance(node, CommentedMap):
            self.sink.add(
                codes.SCHEMA_NOT_MAPPING,
                f"'{relative}' must be a mapping of keys to values, found {_kind(node)}",
                Position(relative, 1, 1),
            )
            return None
        builder = _PlainBuilder(relative, self.sources[relative], self.sink)
        data = builder.mapping(node, ())
        source_map = SourceMap(
            keys=MappingProxyType(builder.keys),
            values=MappingProxyType(builder.values),
            default=Position(relative, 1, 1),
        )
        return YamlDocument(relative, data, source_map)

    def follow_includes(
        self, document: YamlDocument, found: list[YamlDocument], stack: tuple[str, ...]
    ) -> None:
        includes = document.data.get("include")
        if not isinstance(includes, list):
            return  # validate reports the wrong type
        base = Path(document.path).parent
        for index, item in enumerate(includes):
            if not isinstance(item, str):
                continue
            cited_at = document.source_map.value(("include", index))
            relative = (base / item).as_posix()
            resolved = (self.root / relative).resolve()
            if not resolved.is_relative_to(self.root.resolve()):
                self.sink.add(
                    codes.FILE_MISSING,
                    f"include '{item}' points outside the gateway directory",
                    cited_at,
                    "keep every config file under the directory that holds gateway.yaml",
                )
                continue
            relative = resolved.relative_to(self.root.resolve()).as_posix()
            if relative in stack:
                chain = " -> ".join((*stack, relative))
                self.sink.add(codes.INCLUDE_CYCLE, f"include cycle: {chain}", cited_at)
                continue
            if any(done.path == relative for done in found):
                continue  # a diamond include: the file is already in, once
            included = self.read_yaml(relative, cited_at)
            if included is not None:
                found.append(included)
                self.follow_includes(included, found, (*stack, relative))

    def _syntax_error(self, relative: str, exc: MarkedYAMLError) -> None:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        column = mark.column + 1 if mark is not None else 1
        problem = exc.problem or str(exc)
        position = Position(relative, line, column)
        if "'\\t'" in problem or "\t" in problem:
            self.sink.add(
                codes.YAML_TAB,
                "tab character where YAML expects spaces",
                position,
                "indent with spaces; YAML does not allow tabs for indentation",
            )
        elif "duplicate key" in problem:
            first = exc.context_mark
            where = f" (first at line {first.line + 1})" if first is not None else ""
            self.sink.add(
                codes.YAML_DUPLICATE_KEY,
                f"{problem.split(' with value')[0]}{where}",
                position,
                "names are mapping keys, so each must be unique; rename or merge the two",
            )
        else:
            context = f" {exc.context}" if exc.context else ""
            self.sink.add(codes.YAML_SYNTAX, f"{problem}{context}", position)


class _PlainBuilder:
    """Turns ruamel's round-trip nodes into plain data, recording positions as it goes."""

    def __init__(self, path: str, source: SourceFile, sink: DiagnosticSink) -> None:
        self.path = path
        self.source = source
        self.sink = sink
        self.keys: dict[NodePath, Position] = {}
        self.values: dict[NodePath, Position] = {}

    def mapping(self, node: CommentedMap, path: NodePath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in node.items():
            name = str(key)
            key_line, key_col = node.lc.key(key)
            self.keys[(*path, name)] = Position(self.path, key_line + 1, key_col + 1, len(name))
            value_line, value_col = node.lc.value(key)
            result[name] = self.node(value, (*path, name), value_line, value_col)
        return result

    def node(self, value: Any, path: NodePath, line: int, col: int) -> Any:
        width = self._width(value, line, col)
        position = Position(self.path, line + 1, col + 1, width)
        self.values[path] = position
        if isinstance(value, CommentedMap):
            return self.mapping(value, path)
        if isinstance(value, CommentedSeq):
            items = []
            for index, item in enumerate(value):
                item_line, item_col = value.lc.item(index)
                items.append(self.node(item, (*path, index), item_line, item_col))
            return items
        if isinstance(value, TaggedScalar):
            self.sink.add(
                codes.YAML_FEATURE,
                f"YAML tag '{value.tag}' is not supported",
                position,
                "write a plain value; gateway files use no custom tags",
            )
            return str(value.value)
        return _plain_scalar(value)

    def _width(self, value: Any, line: int, col: int) -> int:
        if isinstance(value, (CommentedMap, CommentedSeq)) or value is None:
            return 1
        text = self.source.line_text(line + 1)[col:]
        if text[:1] in ("'", '"'):
            closing = text.find(text[0], 1)
            return closing + 1 if closing > 0 else max(len(text), 1)
        literal = str(value)
        return max(min(len(literal), len(text)) if text.startswith(literal) else 1, 1)


def _plain_scalar(value: Any) -> Any:
    # ruamel's scalar subclasses keep formatting; the specs want the plain types.
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return bool(value) if type(value).__name__ == "ScalarBoolean" else int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return value


def _kind(node: object) -> str:
    if isinstance(node, CommentedSeq):
        return "a list"
    if isinstance(node, str):
        return "a string"
    return f"a {type(node).__name__}"
