"""Stage 2, validate: plain YAML data to pydantic specs, every error mapped to its position.

Input: ``Loaded``. Output: ``Validated``, one spec per YAML document. All errors of
every document are reported in one run, with a hint where one helps.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from . import codes
from .diagnostics import DiagnosticSink
from .gateway_spec import GatewaySpec
from .load import GATEWAY_FILE, Loaded, YamlDocument
from .source import NodePath, SourceMap
from .spec import NAME_PATTERN, NAMED_SECTIONS, SectionsSpec

_TOP_LEVEL_ONLY = ("version", "settings")


@dataclass(frozen=True, slots=True)
class ValidatedDocument:
    path: str
    spec: SectionsSpec
    source_map: SourceMap


@dataclass(frozen=True, slots=True)
class Validated:
    """Specs for every YAML document that passed, in include order (gateway.yaml first)."""

    gateway: GatewaySpec | None
    documents: tuple[ValidatedDocument, ...]
    pipelines: Mapping[str, YamlDocument]
    # section (or "pipelines") -> names whose entries failed to load or validate
    broken: Mapping[str, frozenset[str]]
    # False when a config file or a whole section of one was lost to an error: then
    # no name can be called undefined, since the lost part may define it.
    complete: bool = True


def validate(loaded: Loaded, sink: DiagnosticSink) -> Validated:
    """Check every loaded YAML document against its spec model."""
    gateway: GatewaySpec | None = None
    documents: list[ValidatedDocument] = []
    broken: dict[str, set[str]] = {}
    lost: set[str] = set()
    # No gateway.yaml read (a YAML error, an empty file): what it would have defined is
    # lost, and names it defines (routes, teams, keys) cannot be called unknown.
    complete = loaded.complete and loaded.gateway is not None
    if loaded.gateway is not None:
        spec = _validate_document(loaded.gateway, GatewaySpec, sink, broken, lost)
        if isinstance(spec, GatewaySpec):
            gateway = spec
            source_map = loaded.gateway.source_map
            documents.append(ValidatedDocument(loaded.gateway.path, spec, source_map))
        else:
            complete = False
    for included in loaded.includes:
        for key in _TOP_LEVEL_ONLY:
            if key in included.data:
                sink.add(
                    codes.SCHEMA_INCLUDE_SECTION,
                    f"'{key}' is only allowed in {GATEWAY_FILE}, not in an included file",
                    included.source_map.key((key,)),
                    f"move '{key}' to {GATEWAY_FILE}",
                )
        data = {k: v for k, v in included.data.items() if k not in _TOP_LEVEL_ONLY}
        spec = _validate_document(
            YamlDocument(included.path, data, included.source_map), SectionsSpec, sink, broken, lost
        )
        if spec is not None:
            documents.append(ValidatedDocument(included.path, spec, included.source_map))
        else:
            complete = False
    if loaded.broken_pipelines:
        broken["pipelines"] = set(loaded.broken_pipelines)
    return Validated(
        gateway,
        tuple(documents),
        MappingProxyType(dict(loaded.pipelines)),
        MappingProxyType({section: frozenset(names) for section, names in broken.items()}),
        complete=complete and not lost,
    )


def _validate_document(
    document: YamlDocument,
    model: type[SectionsSpec],
    sink: DiagnosticSink,
    broken: dict[str, set[str]],
    lost: set[str],
) -> SectionsSpec | None:
    """Validate each named entry on its own, so one bad entry hides nothing else.

    Names of entries that failed go into ``broken``, so that link does not report
    references to them as undefined; sections left out whole go into ``lost``.
    """
    bad_names = _check_names(document, sink)
    data = dict(document.data)
    for section in NAMED_SECTIONS:
        entries = data.get(section)
        if not isinstance(entries, dict):
            continue
        entry_model = _entry_model(model, section)
        valid: dict[str, BaseModel] = {}
        for name, value in entries.items():
            try:
                entry = entry_model.model_validate(value)
            except ValidationError as exc:
                located = [
                    _relocated(error, (section, name, *error["loc"]))
                    for error in exc.errors(include_url=False)
                ]
                for error in _without_union_tags(located, model):
                    _report(error, document.source_map, model, sink)
                broken.setdefault(section, set()).add(name)
                continue
            if name in bad_names:
                broken.setdefault(section, set()).add(name)
            else:
                valid[name] = entry
        data[section] = valid
    # With broken entries left out the document still links, so its other errors show too.
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = _without_union_tags(exc.errors(include_url=False), model)
    for error in errors:
        _report(error, document.source_map, model, sink)
    # The same for top-level keys: leave out those that failed (a section that is a list,
    # a bad version) and keep the rest, so one wrong section does not hide the others.
    failed = {str(error["loc"][0]) for error in errors if error["loc"]}
    lost.update(failed & {*NAMED_SECTIONS, "include"})
    rest = {key: value for key, value in data.items() if key not in failed}
    if "version" in failed and "version" in model.model_fields:
        rest["version"] = 1  # reported above
    try:
        return model.model_validate(rest)
    except ValidationError:  # nothing left to report: every error was reported above
        return None


def _entry_model(model: type[SectionsSpec], section: str) -> type[BaseModel]:
    annotation = model.model_fields[section].annotation
    entry = typing.get_args(annotation)[1]
    assert isinstance(entry, type) and issubclass(entry, BaseModel)
    return entry


def _check_names(document: YamlDocument, sink: DiagnosticSink) -> set[str]:
    bad: set[str] = set()
    for section in NAMED_SECTIONS:
        entries = document.data.get(section)
        if not isinstance(entries, dict):
            continue
        for name in entries:
            if not NAME_PATTERN.match(name):
                bad.add(name)
                sink.add(
                    codes.SCHEMA_NAME,
                    f"'{name}' is not a valid name in '{section}'",
                    document.source_map.key((section, name)),
                    "names start with a letter or digit and use only letters, digits "
                    "and . _ - : / @ (at most 128 characters)",
                )
    return bad


_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "list_type": "a list",
}


def _report(
    error: ErrorDetails, source_map: SourceMap, model: type[BaseModel], sink: DiagnosticSink
) -> None:
    loc: NodePath = tuple(error["loc"])
    kind = error["type"]
    where = _describe(loc)
    if kind == "extra_forbidden":
        field = str(loc[-1])
        allowed = sorted(_fields_at(model, loc[:-1]))
        sink.add(
            codes.SCHEMA_UNKNOWN_KEY,
            f"unknown key '{field}'{_describe(loc[:-1])}",
            source_map.key(loc),
            _did_you_mean(field, allowed) or f"allowed keys: {', '.join(allowed)}",
        )
    elif kind == "missing":
        sink.add(
            codes.SCHEMA_MISSING,
            f"missing required field '{loc[-1]}'{_describe(loc[:-1])}",
            source_map.key(loc[:-1]),
            f"add '{loc[-1]}:'" + (" (the only supported version is 1)" * (loc == ("version",))),
        )
    elif loc == ("version",):
        sink.add(
            codes.SCHEMA_VERSION,
            f"config version {_found_value(error['input'])} is not supported",
            source_map.value(loc),
            "this aigw reads 'version: 1'",
        )
    elif kind in _TYPE_WORDS:
        sink.add(
            codes.SCHEMA_TYPE,
            f"expected {_TYPE_WORDS[kind]}, found {_found(error['input'])}{where}",
            source_map.value(loc),
        )
    elif kind == _UNION_SHAPE:
        sink.add(
            codes.SCHEMA_TYPE,
            f"expected {(error.get('ctx') or {}).get('expected')}, found {_found(error['input'])}"
            f"{where}",
            source_map.value(loc),
            _description(model, loc),
        )
    elif kind == "route_target":
        sink.add(
            codes.SCHEMA_ROUTE_TARGET, f"{_subject(loc)} {error['msg']}", source_map.key(loc),
            "point the route at one group, one deployment or one pipeline",
        )
    elif kind == "route_cache":
        sink.add(
            codes.SCHEMA_VALUE, f"{_subject(loc)} {error['msg']}", source_map.key((*loc, "cache")),
            "cache the group or deployment routes the pipeline's steps call instead",
        )
    elif kind == "key_secret":
        sink.add(
            codes.SCHEMA_KEY_SECRET, f"{_key_subject(loc)} {error['msg']}", source_map.key(loc),
            "use 'secret: ${ENV_VAR}' or 'sha256: <hex digest of the key>'",
        )
    elif kind == "sha256":
        sink.add(
            codes.SCHEMA_SHA256, f"{_key_subject(loc)}: {error['msg']}",
            source_map.value((*loc, "sha256")),
            "compute it with: printf %s \"$KEY\" | sha256sum",
        )
    elif kind == "issuer_jwks":
        sink.add(
            codes.SCHEMA_ISSUER_JWKS, f"{_subject(loc)} {error['msg']}", source_map.key(loc),
            "give jwks_url: the provider's https JWKS endpoint, or, where the gateway cannot "
            "reach the provider, jwks_file: a JWKS file beside gateway.yaml or jwks: the "
            "key set itself",
        )
    elif kind == "literal_error" and loc[:1] == ("issuers",) and "algorithms" in loc:
        sink.add(
            codes.SCHEMA_VALUE,
            f"invalid value {_found_value(error['input'])}{where}: {_expected(error)}",
            source_map.value(loc),
            "only public-key algorithms: with none anyone can forge a token, and with HS* "
            "the verifying key is a shared secret (whoever holds the JWKS could sign)",
        )
    elif kind == "moment":
        sink.add(
            codes.SCHEMA_VALUE, f"{_key_subject(loc[:-1])} {loc[-1]}: {error['msg']}",
            source_map.value(loc), "a date alone is 00:00 UTC that day; a time with no zone is UTC",
        )
    else:
        expected = _expected(error)
        hint = None
        if kind == "literal_error" and isinstance(error["input"], str):
            hint = _did_you_mean(error["input"], _literal_choices(error))
        # A pattern means nothing to most readers; the field's description does.
        hint = hint or _description(model, loc)
        sink.add(
            codes.SCHEMA_VALUE,
            f"invalid value {_found_value(error['input'])}{where}: {expected}",
            source_map.value(loc),
            hint,
        )


# A value of a field that takes two shapes (a list or a mapping; a number or "p95") fits
# neither: one error naming both, in place of one error a shape in pydantic's words.
_UNION_SHAPE = "union_shape"
# Error kinds meaning "the value is not this shape at all", as opposed to "it is this
# shape, and something inside it (or its range) is wrong".
_WRONG_SHAPE = {*_TYPE_WORDS, "float_parsing", "int_parsing", "bool_parsing", "literal_error"}


def _without_union_tags(errors: list[ErrorDetails], model: type[BaseModel]) -> list[ErrorDetails]:
    """Pydantic's errors with the union members it tried taken out of their locations.

    For a field typed ``A | B`` pydantic reports every member's failure, each under a
    location naming the member's type (``fallbacks.FallbacksSpec.on_error``,
    ``hedge_after_ms.constrained-float``): two errors for one mistake, in words no
    config mentions. Kept: the errors of the members whose shape the value has (a
    mapping for a model), located in the file's own terms; when it has none of their
    shapes, one error that names them all.
    """
    kept: list[ErrorDetails] = []
    branches: dict[NodePath, dict[str, list[ErrorDetails]]] = {}
    for error in errors:
        loc: NodePath = tuple(error["loc"])
        at = _union_member_index(model, loc)
        if at is None:
            kept.append(error)
            continue
        if loc[:at] not in branches:
            kept.append(ErrorDetails(type=_UNION_SHAPE, loc=loc[:at], msg="", input=None))
        branches.setdefault(loc[:at], {}).setdefault(str(loc[at]), []).append(error)
    merged: list[ErrorDetails] = []
    for error in kept:
        members = branches.get(tuple(error["loc"])) if error["type"] == _UNION_SHAPE else None
        if members is None:
            merged.append(error)
            continue
        depth = len(error["loc"]) + 1
        fitting = [
            member_errors for member_errors in members.values()
            if not all(
                len(each["loc"]) == depth and each["type"] in _WRONG_SHAPE
                for each in member_errors
            )
        ]
        for member_errors in fitting:
            merged.extend(
                _relocated(each, (*error["loc"], *each["loc"][depth:]))
                for each in member_errors
            )
        if not fitting:
            first = next(iter(members.values()))[0]
            shapes = " or ".join(_shape_word(errs[0]) for errs in members.values())
            merged.append(ErrorDetails(
                type=_UNION_SHAPE, loc=error["loc"], msg=shapes, input=first["input"],
                ctx={"expected": shapes},
            ))
    return merged


def _relocated(error: ErrorDetails, loc: NodePath) -> ErrorDetails:
    return ErrorDetails(**{**error, "loc": loc})


def _union_member_index(model: type[BaseModel], loc: NodePath) -> int | None:
    """Where in ``loc`` pydantic named a union member, if it did."""
    current: Any = model
    for index, part in enumerate(loc):
        annotation = _unwrap(current)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            return index
        current = _step(current, part)
        if current is None:
            return None
    return None


def _shape_word(error: ErrorDetails) -> str:
    """ "a list", "a number", "'p95'": what a union member takes, from its error."""
    if error["type"] == "literal_error":
        return " or ".join(repr(choice) for choice in _literal_choices(error))
    if error["type"] == "float_parsing":
        return "a number"
    if error["type"] == "int_parsing":
        return "an integer"
    return _TYPE_WORDS.get(error["type"], _expected(error))


def _subject(loc: NodePath) -> str:
    """ "route 'chat'" for a loc inside a named section entry."""
    if len(loc) >= 2 and loc[0] in NAMED_SECTIONS:
        return f"{str(loc[0])[:-1]} '{loc[1]}'"
    return ".".join(str(part) for part in loc)


def _key_subject(loc: NodePath) -> str:
    """ "key 'ci'", or "key 'ci' previous[0]" for a loc inside one of its earlier secrets."""
    if loc[:1] == ("keys",) and len(loc) >= 4 and loc[2] == "previous":
        return f"{_subject(loc)} previous[{loc[3]}]"
    return _subject(loc)


def _describe(loc: NodePath) -> str:
    return f" at {'.'.join(str(part) for part in loc)}" if loc else ""


def _found(value: Any) -> str:
    word = _TYPE_WORDS.get(f"{type(value).__name__}_type")
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return f"{value!r}" if word is None else f"{word} {value!r}"


def _found_value(value: Any) -> str:
    if isinstance(value, bool):  # a bool is an int to Python, "true" to the YAML reader
        return _found(value)
    return repr(value) if isinstance(value, (str, int, float)) else _found(value)


def _expected(error: ErrorDetails) -> str:
    if error["type"] == "literal_error":
        return "expected one of " + ", ".join(_literal_choices(error))
    if error["type"] == "string_pattern_mismatch":
        return "it does not have the expected form"
    message = str(error["msg"])
    return message.replace("Input should be", "expected").replace("String should", "it should")


def _literal_choices(error: ErrorDetails) -> list[str]:
    expected = str((error.get("ctx") or {}).get("expected", ""))
    return [part.strip(" '") for part in expected.replace(" or ", ", ").split(",") if part.strip()]


def _did_you_mean(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _description(model: type[BaseModel], loc: NodePath) -> str | None:
    """The description of the spec field at ``loc``, if it has one (of the mapping, for
    one of its keys)."""
    if loc and loc[-1] == "[key]":
        loc = loc[:-2]
    if not loc:
        return None
    parent = _unwrap(model)
    for part in loc[:-1]:
        parent = _unwrap(_step(parent, part))
    if isinstance(parent, type) and issubclass(parent, BaseModel):
        field = parent.model_fields.get(str(loc[-1]))
        return field.description if field is not None else None
    return None


def _fields_at(model: type[BaseModel], loc: NodePath) -> set[str]:
    """The field names of the spec model found by following ``loc`` from ``model``."""
    current: Any = model
    for part in loc:
        current = _step(current, part)
        if current is None:
            return set()
    return {
        name
        for member in _members(current)
        if isinstance(member, type) and issubclass(member, BaseModel)
        for name in member.model_fields
    }


def _members(annotation: Any) -> list[Any]:
    """The types a field may hold: a union's members, None left out."""
    annotation = _unwrap(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return [annotation]


def _step(annotation: Any, part: str | int) -> Any:
    members = _members(annotation)
    if len(members) > 1:  # a two-shape field: the member the path goes on into
        stepped = (_step(member, part) for member in members)
        return next((found for found in stepped if found is not None), None)
    annotation = members[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return field.annotation if field is not None else None
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if origin is dict and len(args) == 2:
        return args[1]
    if origin is list and args:
        return args[0]
    return None


def _unwrap(annotation: Any) -> Any:
    # Optional[X] and X | None: follow the non-None member.
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return members[0] if len(members) == 1 else annotation
    return annotation
