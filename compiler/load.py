"""Stage 1, load: read gateway.yaml, its includes, pipelines and Cedar files, keeping positions.

Input: a gateway directory. Output: ``Loaded``, plain Python data (dicts, lists,
scalars) for each YAML document with a ``SourceMap`` beside it, and the raw text of
every Cedar file. Everything that can go wrong with reading a file or its YAML
syntax becomes an ``AGW1xx`` diagnostic; nothing here raises.
"""

from __future__ import annotations

import datetime
import difflib
import errno
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError, YAMLFutureWarning, YAMLWarning
from ruamel.yaml.reader import ReaderError

from . import codes
from .diagnostics import DiagnosticSink, encodable
from .source import NodePath, Position, SourceFile, SourceMap
from .yaml_errors import (
    CONSTRUCT_ERRORS,
    report_construct_error,
    report_marked_error,
    report_reader_error,
)

GATEWAY_FILE = "gateway.yaml"
# The largest config file read (a gateway.yaml of 10,000 routes is about 1 MiB).
MAX_FILE_BYTES = 8 << 20


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
    # Pipeline files that exist but could not be read; their own error is reported,
    # so routes naming them are not reported again as unknown.
    broken_pipelines: frozenset[str] = frozenset()
    # False when an included config file could not be read (see _Reader.complete).
    complete: bool = True


def load(root: Path, sink: DiagnosticSink) -> Loaded:
    """Read the gateway directory ``root``; problems go to ``sink``."""
    reader = _Reader(root, sink)
    gateway = reader.read_yaml(GATEWAY_FILE, Position(GATEWAY_FILE, 1, 1))
    includes: list[YamlDocument] = []
    if gateway is not None:
        reader.follow_includes(gateway, includes, (GATEWAY_FILE,))
    pipelines = {}
    broken_pipelines = set()
    for path in reader.listed("pipelines", ".yaml"):
        relative = path.relative_to(root).as_posix()
        document = reader.read_yaml(
            relative, Position(relative, 1, 1), not_mapping=codes.PIPELINE_NOT_MAPPING
        )
        if document is not None:
            pipelines[path.stem] = document
        else:
            broken_pipelines.add(path.stem)
    policies = []
    for path in reader.listed("policies", ".cedar"):
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
        broken_pipelines=frozenset(broken_pipelines),
        complete=reader.complete,
    )


class _Reader:
    """Reads files under one root, recording every text it read for diagnostics."""

    def __init__(self, root: Path, sink: DiagnosticSink) -> None:
        self.root = root
        self.sink = sink
        self.sources: dict[str, SourceFile] = {}
        # False once a config file that was asked for could not be read: what it
        # defines is unknown, so link must not call references to it undefined.
        self.complete = True

    def listed(self, folder: str, suffix: str) -> list[Path]:
        """The files ``folder/*suffix`` of the gateway directory, by name. A folder that
        is there but cannot be listed (no permission, not a directory) is an error:
        read as empty, an unreadable policies/ switched Cedar off (no policy: nothing is
        checked) and pipelines/ dropped every pipeline, with nothing said."""
        directory = self.root / folder
        if not self.root.is_dir():  # the gateway file's own error says so
            return []
        try:
            with os.scandir(directory) as entries:
                names = sorted(entry.name for entry in entries if entry.name.endswith(suffix))
        except FileNotFoundError:
            return []
        except OSError as exc:
            if isinstance(exc, NotADirectoryError):
                what, hint = "is not a directory", f"{folder} is a directory of *{suffix} files"
            else:
                what = f"cannot be read ({exc.strerror or exc})"
                hint = f"let the user that runs aigw list and read {folder}/"
            self.sink.add(codes.FILE_MISSING, f"'{folder}/' {what}", Position(folder, 1, 1),
                          hint)
            self.complete = False  # what its files define is unknown
            return []
        readable = []
        for name in names:
            if encodable(name) == name:
                readable.append(directory / name)
                continue
            # Not UTF-8: Python holds the bytes it could not decode as surrogates, which
            # no output (aigw check's, the log's, /admin/status's JSON) can encode.
            shown = f"{folder}/{name.encode('utf-8', 'surrogateescape').decode('utf-8', 'replace')}"
            self.sink.add(codes.FILE_ENCODING, f"the name of '{shown}' is not UTF-8",
                          Position(shown, 1, 1), "rename the file: config file names are UTF-8")
            self.complete = False  # what it defines is unknown
        return readable

    def _read(self, relative: str, cited_at: Position) -> bytes | None:
        """The file's bytes, if it is a regular file inside the gateway directory and no
        larger than ``MAX_FILE_BYTES``: a config file linked to /dev/zero, a FIFO or a
        file outside the tree (/proc/self/environ, whose text a diagnostic would echo
        into CI's log) must not hang the check, fill its memory or leak."""
        path = self.root / relative
        try:
            resolved = path.resolve()
        except RuntimeError:  # Python 3.11's resolve() on a symlink loop (later: OSError)
            self.sink.add(codes.FILE_MISSING, f"'{relative}' is a symlink loop", cited_at,
                          "point the link at a config file, or remove it")
            return None
        if not resolved.is_relative_to(self.root.resolve()):
            self.sink.add(codes.INCLUDE_OUTSIDE, f"'{relative}' leads outside the gateway "
                          "directory", cited_at, "keep config files (and what links point "
                          "to) inside the directory aigw checks")
            return None
        if resolved.exists() and not resolved.is_file():
            self.sink.add(codes.FILE_MISSING, f"'{relative}' is not a regular file",
                          cited_at, "config files are plain files")
            return None
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            self.sink.add(codes.FILE_TOO_LARGE, f"'{relative}' is larger than "
                          f"{MAX_FILE_BYTES // (1 << 20)} MiB", cited_at,
                          "split it with include:, or keep what is not config elsewhere")
            return None
        return raw

    def read_text(self, relative: str, cited_at: Position) -> str | None:
        try:
            raw = self._read(relative, cited_at)
            if raw is None:
                return None
        except FileNotFoundError:
            hint = (
                "run aigw in the directory that holds gateway.yaml, or pass that directory"
                if relative == GATEWAY_FILE
                else self._nearby(relative)
                or "include paths are relative to the file that includes them"
            )
            self.sink.add(codes.FILE_MISSING, f"file '{relative}' not found", cited_at, hint)
            return None
        except NotADirectoryError as exc:  # aigw check gateway.yaml: the file, not its folder
            self.sink.add(codes.FILE_MISSING, f"cannot read '{relative}': {exc.strerror}",
                          cited_at, "pass the directory that holds gateway.yaml, not the file")
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # how a later Python's open() meets a loop
                self.sink.add(codes.FILE_MISSING, f"'{relative}' is a symlink loop", cited_at,
                              "point the link at a config file, or remove it")
                return None
            self.sink.add(codes.FILE_MISSING, f"cannot read '{relative}': {exc.strerror}", cited_at)
            return None
        except ValueError:  # a NUL byte in the path
            self.sink.add(codes.FILE_MISSING, f"{relative!r} is not a valid file name", cited_at)
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            # Keep a readable copy, so the diagnostic can show the line; columns count
            # characters, as everywhere else, not bytes.
            before = raw[: exc.start].decode("utf-8", errors="replace")
            line = before.count("\n") + 1
            column = len(before) - (before.rfind("\n") + 1) + 1
            self.sources[relative] = SourceFile(relative, raw.decode("utf-8", errors="replace"))
            self.sink.add(
                codes.FILE_ENCODING,
                f"byte 0x{raw[exc.start]:02x} is not valid UTF-8",
                Position(relative, line, column),
                _encoding_hint(raw),
            )
            return None
        # A byte-order mark (an editor's, on Windows) is not part of the config: YAML skips
        # it, and Cedar read it as an invalid token at 1:1.
        text = text.removeprefix("\ufeff")
        self.sources[relative] = SourceFile(relative, text)
        return text

    def _nearby(self, relative: str) -> str | None:
        """ "did you mean 'x.yaml'?" for a missing file with a near namesake beside it."""
        wanted = Path(relative)
        folder = self.root / wanted.parent
        try:
            names = sorted(p.name for p in folder.iterdir() if p.is_file())
        except OSError:  # no such folder, or not readable: no suggestion
            names = []
        close = difflib.get_close_matches(wanted.name, names, n=1, cutoff=0.8)
        return f"did you mean '{(wanted.parent / close[0]).as_posix()}'?" if close else None

    def read_yaml(
        self, relative: str, cited_at: Position, not_mapping: codes.Code = codes.SCHEMA_NOT_MAPPING
    ) -> YamlDocument | None:
        text = self.read_text(relative, cited_at)
        if text is None:
            return None
        yaml = YAML(typ="rt", pure=True)
        yaml.allow_duplicate_keys = False
        try:
            with warnings.catch_warnings():
                # ruamel warns on stderr about valid YAML (a reused anchor name: the later
                # one wins), which is noise around aigw check's own output.
                warnings.simplefilter("ignore", YAMLWarning)
                warnings.simplefilter("ignore", YAMLFutureWarning)
                node = yaml.load(text)
        except MarkedYAMLError as exc:
            report_marked_error(relative, text, exc, self.sink)
            return None
        except ReaderError as exc:
            report_reader_error(relative, text, exc, self.sink)
            return None
        except YAMLError as exc:
            self.sink.add(codes.YAML_SYNTAX, str(exc).splitlines()[0], Position(relative, 1, 1))
            return None
        except CONSTRUCT_ERRORS as exc:  # ruamel building a value: a bad date, "!!bool maybe"
            report_construct_error(relative, text, exc, self.sink)
            return None
        except RecursionError:  # ruamel composes nested nodes recursively: ~300 levels
            self._too_deep(relative)
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
                not_mapping,
                f"'{relative}' must be a mapping of keys to values, found {_kind(node)}",
                Position(relative, 1, 1),
                "a gateway file is a mapping that starts with 'version: 1'"
                if relative == GATEWAY_FILE else "write 'key: value' lines at the top level",
            )
            return None
        builder = _PlainBuilder(relative, self.sources[relative], self.sink)
        try:
            data = builder.mapping(node, ())
        except RecursionError:
            self._too_deep(relative)
            return None
        except _Expanding as too_far:
            self.sink.add(codes.YAML_FEATURE, "the document's aliases expand to more than "
                          f"{builder.budget:,} values", too_far.position,
                          "an anchor used inside an anchor used inside another multiplies; "
                          "write the values out, or use include:")
            return None
        source_map = SourceMap(
            keys=MappingProxyType(builder.keys),
            values=MappingProxyType(builder.values),
            default=Position(relative, 1, 1),
        )
        return YamlDocument(relative, data, source_map)

    def _too_deep(self, relative: str) -> None:
        """Reading it (ruamel, then the builder) recursed past Python's limit."""
        self.sink.add(codes.YAML_FEATURE, f"'{relative}' nests lists and mappings too deeply "
                      "to read", Position(relative, 1, 1),
                      "no config nests more than a few levels: look for a run of [ or {")

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
            try:
                resolved = (self.root / relative).resolve()
            except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop
                self.sink.add(codes.FILE_MISSING, f"include {item!r} is not a valid path", cited_at)
                self.complete = False
                continue
            if not resolved.is_relative_to(self.root.resolve()):
                self.sink.add(
                    codes.INCLUDE_OUTSIDE,
                    f"include '{item}' points outside the gateway directory",
                    cited_at,
                    "keep every config file under the directory that holds gateway.yaml",
                )
                self.complete = False
                continue
            relative = resolved.relative_to(self.root.resolve()).as_posix()
            if relative in stack:
                chain = " -> ".join((*stack, relative))
                self.sink.add(codes.INCLUDE_CYCLE, f"include cycle: {chain}", cited_at)
                continue
            if any(done.path == relative for done in found):
                continue  # a diamond include: the file is already in, once
            included = self.read_yaml(relative, cited_at)
            if included is None:
                self.complete = False
                continue
            found.append(included)
            self.follow_includes(included, found, (*stack, relative))


class _Expanding(Exception):
    """The aliases of a document build more values than its text could hold."""

    def __init__(self, position: Position) -> None:
        super().__init__(str(position))
        self.position = position


class _PlainBuilder:
    """Turns ruamel's round-trip nodes into plain data, recording positions as it goes.

    An alias is expanded where it is used, so nested anchors multiply ("billion laughs":
    422 bytes became gigabytes). The values built are counted against ten for each
    character of the file, more than any config writes out, then it stops (``_Expanding``).
    """

    def __init__(self, path: str, source: SourceFile, sink: DiagnosticSink) -> None:
        self.path = path
        self.source = source
        self.sink = sink
        self.keys: dict[NodePath, Position] = {}
        self.values: dict[NodePath, Position] = {}
        self.budget = 10 * len(source.text) + 10_000
        self._left = self.budget

    def mapping(self, node: CommentedMap, path: NodePath) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in node.items():
            key_line, key_col, value_line, value_col = _marks(node, key)
            key_at = Position(self.path, key_line + 1, key_col + 1, len(str(key)))
            if isinstance(key, bool) or not isinstance(key, (str, int, float)):
                self.sink.add(
                    codes.SCHEMA_TYPE,
                    f"expected a name as the key, found {_key_kind(key)}",
                    Position(self.path, key_line + 1, key_col + 1),
                    f'quote the key if it is meant as text: "{_key_kind(key)}":'
                    if key is None or isinstance(key, bool) else "write the key as a plain name",
                )
                continue
            name = self._characters(str(key), key_at)
            self.keys[(*path, name)] = key_at
            if value is None and value_line != key_line:
                # An empty value: ruamel places it at the next token, often a line
                # below; "found nothing" must point at the key that has nothing.
                self.values[(*path, name)] = key_at
                result[name] = None
                continue
            result[name] = self.node(value, (*path, name), value_line, value_col)
        return result

    def node(self, value: Any, path: NodePath, line: int, col: int) -> Any:
        width = self._width(value, line, col)
        position = Position(self.path, line + 1, col + 1, width)
        self._left -= 1
        if self._left < 0:
            raise _Expanding(position)
        self.values[path] = position
        tag = _custom_tag(value)
        if tag is not None:
            self.sink.add(
                codes.YAML_FEATURE,
                f"YAML tag '{tag}' is not supported",
                position,
                "write a plain value; gateway files use no custom tags",
            )
        if isinstance(value, CommentedMap):
            return self.mapping(value, path)
        if isinstance(value, CommentedSeq):
            items = []
            for index, item in enumerate(value):
                # ruamel keeps no item positions in a tagged list; use the list's own.
                item_line, item_col = value.lc.item(index) or (line, col)
                items.append(self.node(item, (*path, index), item_line, item_col))
            return items
        if isinstance(value, TaggedScalar):
            return self._characters(str(value.value), position)
        plain = _plain_scalar(value)
        return self._characters(plain, position) if isinstance(plain, str) else plain

    def _characters(self, text: str, position: Position) -> str:
        """``text``, if it holds only characters. A double-quoted escape of a UTF-16
        surrogate ("\\ud800", or a pair) is no character: it cannot be encoded as
        UTF-8, so a name, header or secret holding one failed wherever it was written
        (aigw check's own output among them); it is reported, and shown as U+FFFD."""
        shown = encodable(text)
        if shown == text:
            return text
        found = next(char for char in text if 0xD800 <= ord(char) <= 0xDFFF)
        self.sink.add(codes.YAML_SURROGATE, f"the escape \\u{ord(found):04x} is half of "
                      "a UTF-16 surrogate pair, not a character", position,
                      "write the character itself, or escape one past U+FFFF as "
                      "\\UXXXXXXXX (eight hex digits)")
        return shown

    def _width(self, value: Any, line: int, col: int) -> int:
        text = self.source.line_text(line + 1)[col:]
        if text.startswith("!"):  # a tagged value: the caret covers the tag
            return max(len(text.split(" ", 1)[0]), 1)
        if isinstance(value, (CommentedMap, CommentedSeq)) or value is None:
            return 1
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


def _custom_tag(value: Any) -> str | None:
    """The tag written on ``value`` (``!env``), or None for no tag or a standard one (``!!str``)."""
    tag = getattr(value, "tag", None)
    text = getattr(tag, "value", tag)
    if not isinstance(text, str):
        return None
    if text.startswith(_STANDARD_TAG):  # "!!python/object:os.system" is in this namespace too
        name = text.removeprefix(_STANDARD_TAG)
        return None if name in _YAML_TYPES else f"!!{name}"
    return text


_STANDARD_TAG = "tag:yaml.org,2002:"
# The types YAML itself defines (1.1's, which ruamel reads too).
_YAML_TYPES = frozenset({"str", "int", "float", "bool", "null", "map", "seq", "omap", "set",
                         "pairs", "binary", "timestamp", "merge", "value"})


def _marks(node: CommentedMap, key: Any) -> tuple[int, int, int, int]:
    """Key line, key column, value line, value column of ``key`` (0-based).

    A key merged in with ``<<: *anchor`` has its marks in the anchored mapping.
    """
    try:
        hash(key)
    except TypeError:  # a complex key ("? {a: b}") holding a mapping: use the mapping's start
        return node.lc.line, node.lc.col, node.lc.line, node.lc.col
    # An ordered map (!!omap) keeps no positions of its keys: its own start stands in.
    marks = node.lc.data or {}
    if key in marks:
        key_line, key_col, value_line, value_col = marks[key]
        return key_line, key_col, value_line, value_col
    for source in getattr(node, "merge", ()):
        if isinstance(source, CommentedMap) and key in source:
            return _marks(source, key)
    return node.lc.line, node.lc.col, node.lc.line, node.lc.col


def _key_kind(key: object) -> str:
    if key is None:
        return "null"
    if isinstance(key, bool):
        return str(key).lower()
    return _kind(key)


def _encoding_hint(raw: bytes) -> str:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "the file is UTF-16; save it as UTF-8"
    # A byte 0x80-0xff outside a UTF-8 sequence is almost always Latin-1 or Windows-1252.
    return "save the file as UTF-8; it looks like Latin-1 or Windows-1252"


def _kind(node: object) -> str:
    if isinstance(node, (list, tuple)):
        return "a list"
    if isinstance(node, dict):
        return "a mapping"
    if isinstance(node, str):
        return "a string"
    return f"a {type(node).__name__}"
