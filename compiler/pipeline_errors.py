"""Pydantic errors of a pipeline file, as positioned diagnostics.

Steps are a union discriminated by ``kind``, so pydantic puts the kind into an error's
location (``steps.a.llm.prompt``); it is taken out again here, so the location is a
path in the file, and the hint for an unknown key lists the fields of that kind.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from . import codes
from .diagnostics import DiagnosticSink
from .load import YamlDocument
from .pipeline_spec import (
    STEP_KINDS,
    BranchCaseSpec,
    BranchStepSpec,
    LoopStepSpec,
    MapStepSpec,
    PipelineSpec,
    PlannerSpec,
    StepSpec,
)
from .source import NodePath
from .validate import _TYPE_WORDS, _expected, _found, _found_value, _literal_choices

_STEP_MODELS: dict[str, type[BaseModel]] = {
    typing.get_args(model.model_fields["kind"].annotation)[0]: model
    for model in typing.get_args(typing.get_args(StepSpec)[0])
}


def report_spec_errors(
    errors: list[ErrorDetails], document: YamlDocument, sink: DiagnosticSink
) -> None:
    for error in errors:
        _report(error, document, sink)


def _report(error: ErrorDetails, document: YamlDocument, sink: DiagnosticSink) -> None:
    loc = _strip_tags(tuple(error["loc"]), document.data)
    source_map = document.source_map
    kind = error["type"]
    where = _describe(loc)
    if kind == "union_tag_invalid":
        found = str((error.get("ctx") or {}).get("tag", ""))
        sink.add(
            codes.STEP_KIND,
            f"unknown step kind '{found}'{where}",
            source_map.value((*loc, "kind")),
            _did_you_mean(found, list(STEP_KINDS)) or f"kinds: {', '.join(STEP_KINDS)}",
        )
    elif kind == "union_tag_not_found":
        node = _node_at(document.data, loc)
        if isinstance(node, dict):
            sink.add(codes.SCHEMA_MISSING, f"missing required field 'kind'{where}",
                     source_map.key(loc), f"add 'kind:' with one of {', '.join(STEP_KINDS)}")
        else:
            sink.add(codes.SCHEMA_TYPE, f"expected a mapping, found {_found(node)}{where}",
                     source_map.value(loc), "a step is a mapping that starts with 'kind:'")
    elif kind == "extra_forbidden":
        field = str(loc[-1])
        allowed = sorted(_fields(_model_at(loc[:-1], document.data)))
        sink.add(
            codes.SCHEMA_UNKNOWN_KEY,
            f"unknown key '{field}'{_describe(loc[:-1])}",
            source_map.key(loc),
            _did_you_mean(field, allowed) or f"allowed keys: {', '.join(allowed)}",
        )
    elif kind == "missing":
        sink.add(codes.SCHEMA_MISSING, f"missing required field '{loc[-1]}'{_describe(loc[:-1])}",
                 source_map.key(loc[:-1]), f"add '{loc[-1]}:'")
    elif kind in _TYPE_WORDS:
        sink.add(codes.SCHEMA_TYPE, f"expected {_TYPE_WORDS[kind]}, found {_found(error['input'])}"
                 f"{where}", source_map.value(loc))
    elif kind in _CUSTOM_HINTS:
        sink.add(codes.SCHEMA_VALUE, f"{error['msg']}{where}", source_map.key(loc),
                 _CUSTOM_HINTS[kind])
    else:
        hint = None
        if kind == "literal_error" and isinstance(error["input"], str):
            hint = _did_you_mean(error["input"], _literal_choices(error))
        model = _model_at(loc[:-1], document.data) if loc else None
        if hint is None and model is not None and str(loc[-1]) in model.model_fields:
            hint = model.model_fields[str(loc[-1])].description
        sink.add(
            codes.SCHEMA_VALUE,
            f"invalid value {_found_value(error['input'])}{where}: {_expected(error)}",
            source_map.value(loc),
            hint,
        )


# The spec validators' own error kinds, and what to do about each.
_CUSTOM_HINTS = {
    "planner_kind": "write 'expression: ...', or 'model: ...' with 'prompt: ...'",
    "approvers_empty": "name 'keys: [...]' or 'teams: [...]', or leave approvers out to let "
                       "the key that started the execution decide",
}


def _strip_tags(loc: NodePath, data: Any) -> NodePath:
    """``steps.a.llm.prompt`` -> ``steps.a.prompt``: drop the kinds pydantic inserted."""
    kept: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part not in node and node.get("kind") == part:
            continue
        kept.append(part)
        node = _child(node, part)
    return tuple(kept)


def _child(node: Any, part: str | int) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def _node_at(data: Any, loc: NodePath) -> Any:
    node = data
    for part in loc:
        node = _child(node, part)
    return node


def _step_model(node: Any) -> type[BaseModel] | None:
    return _STEP_MODELS.get(str(node.get("kind"))) if isinstance(node, dict) else None


def _model_at(loc: NodePath, data: Any) -> type[BaseModel] | None:
    """The spec model describing the mapping at ``loc`` (None for a plain value)."""
    model: type[BaseModel] | None = PipelineSpec
    node = data
    index = 0
    while index < len(loc) and model is not None:
        part = loc[index]
        node_next = _child(node, part)
        named_step = (model is PipelineSpec and part == "steps") or (
            model is LoopStepSpec and part == "actions")
        if named_step and index + 1 < len(loc):
            index += 1
            node_next = _child(node_next, loc[index])
            model = _step_model(node_next)
        elif model is MapStepSpec and part == "step":
            model = _step_model(node_next)
        elif model is LoopStepSpec and part == "planner":
            model = PlannerSpec
        elif model is BranchStepSpec and part == "cases" and index + 1 < len(loc):
            index += 1
            node_next = _child(node_next, loc[index])
            model = BranchCaseSpec
        else:
            model = None
        node = node_next
        index += 1
    return model


def _fields(model: type[BaseModel] | None) -> set[str]:
    if model is None:
        return set()
    return {field.alias or name for name, field in model.model_fields.items()}


def _describe(loc: NodePath) -> str:
    """ " in step 'a'" or " at steps.a.cases.0" for an error's location."""
    if len(loc) == 2 and loc[0] == "steps":
        return f" in step '{loc[1]}'"
    return f" at {'.'.join(str(part) for part in loc)}" if loc else ""


def _did_you_mean(word: str, choices: list[str]) -> str | None:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
