"""Stage 5, pipelines: each ``pipelines/<name>.yaml`` checked and compiled.

Input: the validated config (its pipeline documents), the linked config (the names a
model may be) and the source texts (to point into templates). Output: a ``Pipeline``
per file whose ``routes`` freeze fills in. Checked here, each as a positioned
``AGW5xx`` diagnostic: the file's shape, step references and a DAG without cycles,
every template and expression compiled in the sandbox and each name it reads visible to
its step, JSON Schemas, models, loops with a cap, python functions that import, and
pipelines that do not call each other in a cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from pydantic import TypeAdapter, ValidationError

from . import codes
from .diagnostics import DiagnosticSink
from .graph import Deployment, Group, Route, TargetKind
from .link import Linked
from .load import YamlDocument
from .pipeline_builder import Builder, Call, GatewayNames, State, did_you_mean
from .pipeline_errors import report_spec_errors
from .pipeline_graph import Pipeline
from .pipeline_spec import PipelineSpec, StepSpec
from .source import Position, SourceFile
from .spec import NAME_PATTERN, RouteSpec
from .templates import new_environment
from .validate import Validated

_STEP: TypeAdapter[Any] = TypeAdapter(StepSpec)


def compile_pipelines(
    validated: Validated,
    linked: Linked,
    sources: Mapping[str, SourceFile],
    sink: DiagnosticSink,
) -> Mapping[str, Pipeline]:
    """Check and compile every pipeline document; problems go to ``sink``."""
    env = new_environment()
    names = GatewayNames(linked, validated)
    state = State()
    compiled: dict[str, Pipeline] = {}
    for name, document in validated.pipelines.items():
        if not NAME_PATTERN.match(name):
            sink.add(codes.SCHEMA_NAME, f"'{name}' is not a valid pipeline name",
                     Position(document.path, 1, 1),
                     "rename the file: names start with a letter or digit and use only "
                     "letters, digits and . _ - : / @")
        spec, broken = _validate(document, sink)
        if spec is None:
            continue
        source = sources[document.path]
        builder = Builder(name, document, source, spec, names, env, sink, broken)
        compiled[name] = builder.build()
        state.calls[name] = builder.calls
    known = set(validated.pipelines) | set(validated.broken.get("pipelines", ()))
    _check_calls(state.calls, known, sink)
    return MappingProxyType(compiled)


def _validate(document: YamlDocument, sink: DiagnosticSink) -> tuple[PipelineSpec | None, set[str]]:
    """The spec, and the steps left out of it: each step is validated on its own, so one
    bad step hides nothing else (and references to it are not reported as unknown)."""
    data = dict(document.data)
    broken: set[str] = set()
    steps = data.get("steps")
    if isinstance(steps, dict):
        valid = {}
        for name, step in steps.items():
            try:
                _STEP.validate_python(step)
            except ValidationError as exc:
                errors = exc.errors(include_url=False)
                for error in errors:
                    error["loc"] = ("steps", name, *error["loc"])
                report_spec_errors(errors, document, sink)
                broken.add(name)
                continue
            valid[name] = step
        data["steps"] = valid or steps
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if broken:  # the steps' own errors are reported above
            errors = [error for error in errors if error["loc"][:1] != ("steps",)]
        report_spec_errors(errors, document, sink)
        return None, broken
    return spec, broken


def attach_routes(
    pipelines: Mapping[str, Pipeline],
    routes: Mapping[str, Route],
    groups: Mapping[str, Group],
    deployments: Mapping[str, Deployment],
    deployment_group: Callable[[str], Group],
) -> Mapping[str, Pipeline]:
    """Freeze's part: each model name a pipeline uses becomes the route that serves it.

    A route of the gateway serves as itself (its deadline, attempts and hedging); a group
    or deployment gets a route of its own with the defaults a route would have."""
    defaults = RouteSpec.model_fields
    made: dict[str, Route] = {}

    def route_for(name: str) -> Route:
        if name in routes:
            return routes[name]
        if name not in made:
            group = groups[name] if name in groups else deployment_group(name)
            made[name] = Route(
                name=name,
                kind=TargetKind.GROUP if name in groups else TargetKind.DEPLOYMENT,
                target=name,
                candidates=_candidates(group, groups),
                description=None,
                group=group,
                deadline_s=defaults["deadline_s"].default,
                max_attempts=defaults["max_attempts"].default,
                hedge_after_ms=None,
                hedge_at_p95=False,
            )
        return made[name]

    return MappingProxyType({
        name: replace(pipeline, routes=MappingProxyType(
            {model: route_for(model) for model in sorted(pipeline.models)}
        ))
        for name, pipeline in pipelines.items()
    })


def _candidates(group: Group, groups: Mapping[str, Group]) -> tuple[Deployment, ...]:
    """The group's members, then those of its fallback groups (breadth first), each once."""
    ordered: list[Deployment] = []
    visited: set[str] = set()
    queue = [group]
    while queue:
        current = queue.pop(0)
        if current.name in visited:
            continue
        visited.add(current.name)
        ordered.extend(m for m in current.members if m not in ordered)
        queue.extend(groups[name] for name in current.falls_back_to() if name in groups)
    return tuple(ordered)


def _check_calls(
    calls: Mapping[str, list[Call]], known: Collection[str], sink: DiagnosticSink
) -> None:
    """Every pipeline a step calls exists, and no pipeline calls itself, however indirectly."""
    for caller, items in calls.items():
        for call in items:
            if call.pipeline not in known:
                close = did_you_mean(call.pipeline, known)
                sink.add(codes.REF_PIPELINE,
                         f"pipeline '{caller}' calls pipeline '{call.pipeline}', which is not "
                         "defined", call.position,
                         close or "pipelines are the files pipelines/<name>.yaml")
    reported: set[frozenset[str]] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        for call in calls.get(name, ()):
            if call.pipeline in stack:
                cycle = (*stack[stack.index(call.pipeline):], call.pipeline)
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    sink.add(codes.PIPELINE_CYCLE,
                             f"pipelines call each other in a cycle: {' -> '.join(cycle)}",
                             call.position, "a pipeline step may not lead back to its pipeline")
                continue
            visit(call.pipeline, (*stack, call.pipeline))

    for name in calls:
        visit(name, (name,))


