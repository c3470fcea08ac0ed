"""The pipelines stage's work on one file: its DAG, steps, templates, schemas and functions.

``Builder`` walks a validated ``PipelineSpec`` once and builds the runtime ``Pipeline``,
reporting each problem as a positioned ``AGW5xx`` diagnostic on the way: step
references and cycles, templates that do not compile or read a name their step cannot
see, invalid JSON Schemas, unknown models, loops without a cap, python functions that
do not import. See ``pipelines`` for the stage around it.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from jinja2 import TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from . import codes
from .diagnostics import DiagnosticSink, shown_url
from .egress import Egress, allowed_origin, literal_origin
from .link import Linked
from .load import YamlDocument
from .pipeline_graph import (
    Action,
    Agent,
    AgentCall,
    Approval,
    Approvers,
    Branch,
    Cascade,
    Ensemble,
    Http,
    JsonSchema,
    Llm,
    Loop,
    MapStep,
    ModelCall,
    Pipeline,
    Python,
    Step,
    StepKind,
    SubPipeline,
    Transform,
)
from .pipeline_spec import (
    AgentStepSpec,
    ApprovalStepSpec,
    BranchStepSpec,
    CascadeStepSpec,
    EnsembleStepSpec,
    HttpStepSpec,
    LlmStepSpec,
    LoopStepSpec,
    MapStepSpec,
    ModelCallSpec,
    PipelineSpec,
    PipelineStepSpec,
    PythonStepSpec,
    StepBaseSpec,
    TransformStepSpec,
)
from .source import NodePath, Position, SourceFile
from .templates import (
    Const,
    Expr,
    Names,
    Text,
    Value,
    ValueTemplateError,
    compile_expr,
    compile_text,
    compile_value,
)
from .validate import Validated

_BASE_NAMES = frozenset({"input", "steps"})
MAP_NAMES = frozenset({"item", "index"})
LOOP_NAMES = frozenset({"history", "iteration", "last", "last_action", "outputs"})
CASCADE_NAMES = frozenset({"answer"})


@dataclass(frozen=True, slots=True)
class _Visible:
    """What a template of one step can read: its upstream steps and some extra names."""

    owner: str | None  # the step, or None for the pipeline's output
    steps: frozenset[str]
    extra: frozenset[str] = frozenset()


@dataclass(slots=True)
class Call:
    pipeline: str
    position: Position


@dataclass(slots=True)
class State:
    calls: dict[str, list[Call]] = field(default_factory=dict)


class GatewayNames:
    """The names of the gateway's config a pipeline may refer to: what an llm step's
    ``model`` may name (a route, not a pipeline's, a group or a chat deployment), and
    the keys and teams an approval's ``approvers`` may name."""

    def __init__(self, linked: Linked, validated: Validated) -> None:
        self.pipeline_routes = {n for n, e in linked.routes.items() if e.spec.pipeline}
        self.embeddings = {n for n, e in linked.deployments.items() if e.spec.kind != "chat"}
        self.names = set(linked.routes) | set(linked.groups) | set(linked.deployments)
        for section in ("routes", "groups", "deployments"):
            self.names |= set(validated.broken.get(section, ()))
        self.principals = {
            "key": set(linked.keys) | set(validated.broken.get("keys", ())),
            "team": set(linked.teams) | set(validated.broken.get("teams", ())),
        }
        self.complete = validated.complete
        self.agents = linked.agents
        self.broken_agents = frozenset(validated.broken.get("agents", ()))

    def agent(self, name: str) -> Agent | str | None:
        """The agent ``name``; else the hint saying it is not defined (None: it is, but
        its entry failed, or the file that may define it was lost: already reported)."""
        found = self.agents.get(name)
        if found is not None:
            return found
        if name in self.broken_agents or not self.complete:
            return None
        return did_you_mean(name, sorted(self.agents)) or (
            f"agents: {', '.join(sorted(self.agents))}" if self.agents
            else "define it under agents: in gateway.yaml, with its url")

    def problem(self, name: str) -> tuple[str, str] | None:
        """(message tail, hint) when ``name`` cannot serve a model call."""
        if name in self.pipeline_routes:
            return ("a route that runs a pipeline",
                    f"call it with 'kind: pipeline' and 'pipeline: {name}'")
        if name in self.embeddings:
            return "an embeddings deployment", "name a chat route, group or deployment"
        if name in self.names or not self.complete:
            return None
        close = difflib.get_close_matches(name, sorted(self.names), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else (
            "models are the gateway's routes, groups and deployments")
        return "not a route, group or deployment of this gateway", hint

    def unknown_principal(self, kind: str, name: str) -> str | None:
        """The hint when ``name`` is not a ``kind`` ("key" or "team") of this gateway."""
        known = self.principals[kind]
        if name in known or not self.complete:
            return None
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        if close:
            return f"did you mean '{close[0]}'?"
        return f"{kind}s: {', '.join(sorted(known))}" if known else f"this gateway has no {kind}s"


class Builder:
    """Compiles one pipeline, reporting what is wrong with it as it goes."""

    def __init__(
        self,
        name: str,
        document: YamlDocument,
        source: SourceFile,
        spec: PipelineSpec,
        names: GatewayNames,
        env: ImmutableSandboxedEnvironment,
        sink: DiagnosticSink,
        broken: set[str],
    ) -> None:
        self.name = name
        self.broken = broken
        self.document = document
        self.source = source
        self.spec = spec
        self.names = names
        self.env = env
        self.sink = sink
        self.calls: list[Call] = []
        self.used_models: set[str] = set()
        self.edges: dict[tuple[str, str], Position] = {}
        self.allowed_globals = frozenset(env.globals)

    def build(self) -> Pipeline:
        needs, chosen_by = self._needs()
        order = _order(list(self.spec.steps), needs, self._report_cycle)
        upstream = _upstream(order, needs)
        steps = {
            name: self._step(
                name, self.spec.steps[name], ("steps", name),
                _Visible(name, upstream[name]), inline=False, needs=tuple(needs[name]),
            )
            for name in order
        }
        everything = _Visible(None, frozenset(self.spec.steps))
        output = self._value(("output",), self.spec.output, everything)
        input_schema = self._schema(("input",), self.spec.input)
        return Pipeline(
            name=self.name,
            file=self.document.path,
            description=self.spec.description,
            input_schema=input_schema or _schema_of({"type": "object"}),
            output=output,
            output_schema=self._schema(("output_schema",), self.spec.output_schema),
            steps=MappingProxyType(steps),
            upstream=MappingProxyType(upstream),
            chosen_by=MappingProxyType({k: tuple(v) for k, v in chosen_by.items()}),
            chat_field=_chat_field(self.spec.input),
            calls=frozenset(call.pipeline for call in self.calls),
            models=frozenset(self.used_models),
            routes=MappingProxyType({}),
        )

    # The DAG

    def _needs(self) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
        names = list(self.spec.steps)
        needs: dict[str, list[str]] = {name: [] for name in names}
        chosen_by: dict[str, list[str]] = {}
        for name, spec in self.spec.steps.items():
            for index, dependency in enumerate(spec.needs):
                where = self.document.source_map.value(("steps", name, "needs", index))
                if self._known_step(dependency, where, f"step '{name}' needs"):
                    self._edge(needs, name, dependency, where)
            if isinstance(spec, BranchStepSpec):
                for path, target in _branch_targets(spec):
                    where = self.document.source_map.value(("steps", name, *path))
                    if self._known_step(target, where, f"branch '{name}' lists"):
                        self._edge(needs, target, name, where)
                        chosen_by.setdefault(target, [])
                        if name not in chosen_by[target]:
                            chosen_by[target].append(name)
        return needs, chosen_by

    def _edge(self, needs: dict[str, list[str]], step: str, dependency: str, at: Position) -> None:
        if dependency not in needs[step]:
            needs[step].append(dependency)
            self.edges[(step, dependency)] = at

    def _known_step(self, name: str, where: Position, subject: str) -> bool:
        if name in self.spec.steps:
            return True
        if name in self.broken:
            return False  # its own errors are reported
        self.sink.add(codes.REF_STEP,
                      f"{subject} '{name}', which is not a step of pipeline '{self.name}'",
                      where, did_you_mean(name, self.spec.steps) or _steps_hint(self.spec.steps))
        return False

    def _report_cycle(self, cycle: list[str]) -> None:
        chain = " -> ".join(cycle)
        at = self.edges[(cycle[-2], cycle[-1])]
        message = (f"step '{cycle[0]}' needs itself" if len(cycle) == 2
                   else f"steps depend on each other in a cycle: {chain}")
        self.sink.add(codes.STEP_CYCLE, message, at,
                      "a pipeline's steps form a DAG; remove one of these needs")

    # Steps

    def _step(
        self,
        name: str,
        spec: StepBaseSpec,
        path: NodePath,
        visible: _Visible,
        *,
        inline: bool,
        needs: tuple[str, ...] = (),
    ) -> Step:
        kind = StepKind(getattr(spec, "kind"))  # noqa: B009 - every step spec has a kind
        if inline and spec.needs:
            self._not_allowed((*path, "needs"), f"step '{name}' runs inside another step and "
                              "cannot have needs", "list needs on the step that contains it")
        if inline and kind is StepKind.BRANCH:
            self._not_allowed((*path, "kind"), f"a branch cannot run inside another step "
                              f"('{name}')", "branch between top-level steps")
        when = self._expr((*path, "when"), spec.when, visible) if spec.when is not None else None
        return Step(
            name=name,
            kind=kind,
            needs=needs,
            when=when,
            retries=spec.retries,
            backoff_ms=spec.backoff_ms,
            timeout_s=spec.timeout_s,
            output_schema=self._schema((*path, "output_schema"), spec.output_schema),
            action=self._action(name, spec, path, visible),
            description=spec.description,
        )

    def _action(self, name: str, spec: StepBaseSpec, path: NodePath, visible: _Visible) -> Action:
        if isinstance(spec, LlmStepSpec):
            return Llm(self._call(path, spec, [(("model",), spec.model)], visible))
        if isinstance(spec, EnsembleStepSpec):
            return Ensemble(self._call(path, spec, _indexed("models", spec.models), visible),
                            spec.combine)
        if isinstance(spec, CascadeStepSpec):
            call = self._call(path, spec, _indexed("models", spec.models), visible)
            check = self._expr((*path, "check"), spec.check, _extend(visible, CASCADE_NAMES))
            return Cascade(call, check)
        if isinstance(spec, HttpStepSpec):
            headers = tuple(
                (header, self._text((*path, "headers", header), value, visible))
                for header, value in spec.headers.items()
            )
            body = self._value((*path, "body"), spec.body, visible) if spec.body is not None \
                else None
            return Http(spec.method, self._text((*path, "url"), spec.url, visible), headers, body,
                        self._egress(name, spec, path))
        if isinstance(spec, TransformStepSpec):
            return Transform(self._expr((*path, "expression"), spec.expression, visible))
        if isinstance(spec, BranchStepSpec):
            cases = tuple(
                (self._expr((*path, "cases", index, "when"), case.when, visible), tuple(case.then))
                for index, case in enumerate(spec.cases)
            )
            return Branch(cases, tuple(spec.default))
        if isinstance(spec, MapStepSpec):
            inner = _extend(visible, MAP_NAMES)
            step = self._step(f"{name}.step", spec.step, (*path, "step"), inner, inline=True)
            return MapStep(self._expr((*path, "over"), spec.over, visible), step,
                           spec.concurrency, spec.max_items)
        if isinstance(spec, LoopStepSpec):
            return self._loop(name, spec, path, visible)
        if isinstance(spec, ApprovalStepSpec):
            return Approval(self._text((*path, "message"), spec.message, visible), spec.default,
                            self._approvers(spec, path))
        if isinstance(spec, PipelineStepSpec):
            self.calls.append(Call(spec.pipeline, self.document.source_map.value(
                (*path, "pipeline"))))
            return SubPipeline(spec.pipeline, self._value((*path, "input"), spec.input, visible))
        if isinstance(spec, AgentStepSpec):
            return self._agent(spec, path, visible)
        assert isinstance(spec, PythonStepSpec)
        args = tuple(
            (arg, self._value((*path, "args", arg), value, visible))
            for arg, value in spec.args.items()
        )
        return Python(spec.function, self._function((*path, "function"), spec.function), args)

    def _loop(self, name: str, spec: LoopStepSpec, path: NodePath, visible: _Visible) -> Loop:
        if spec.max_iterations is None:
            self.sink.add(codes.LOOP_UNBOUNDED, f"loop step '{name}' has no max_iterations",
                          self.document.source_map.key(path),
                          "add 'max_iterations: N' (at most 100): every loop must end")
        inner = _extend(visible, LOOP_NAMES)
        planner_spec = spec.planner
        planner: Expr | ModelCall
        if planner_spec.expression is not None:
            planner = self._expr((*path, "planner", "expression"), planner_spec.expression, inner)
        else:
            assert planner_spec.model is not None and planner_spec.prompt is not None
            self._check_model((*path, "planner", "model"), planner_spec.model)
            planner = ModelCall(
                models=(planner_spec.model,),
                prompt=self._text((*path, "planner", "prompt"), planner_spec.prompt, inner),
                system=self._text((*path, "planner", "system"), planner_spec.system, inner)
                if planner_spec.system is not None else None,
                output="text", schema=None, validation_retries=0, max_tokens=None,
                temperature=None,
            )
        actions = {}
        for action, action_spec in spec.actions.items():
            if action == "done":
                self._not_allowed((*path, "actions", action), "an action cannot be named "
                                  "'done': the planner answers 'done' to end the loop",
                                  "rename the action")
            actions[action] = self._step(action, action_spec, (*path, "actions", action), inner,
                                         inline=True)
        return Loop(spec.max_iterations or 1, planner, MappingProxyType(actions))

    def _call(
        self,
        path: NodePath,
        spec: ModelCallSpec,
        models: list[tuple[NodePath, str]],
        visible: _Visible,
    ) -> ModelCall:
        for sub, model in models:
            self._check_model((*path, *sub), model)
        if spec.json_schema is not None and spec.output != "json":
            self._not_allowed((*path, "schema"), "a schema applies only to a json answer",
                              "add 'output: json', or remove the schema")
        return ModelCall(
            models=tuple(model for _sub, model in models),
            prompt=self._text((*path, "prompt"), spec.prompt, visible),
            system=self._text((*path, "system"), spec.system, visible)
            if spec.system is not None else None,
            output=spec.output,
            schema=self._schema((*path, "schema"), spec.json_schema),
            validation_retries=spec.validation_retries,
            max_tokens=spec.max_tokens,
            temperature=spec.temperature,
        )

    def _check_model(self, path: NodePath, model: str) -> None:
        self.used_models.add(model)
        problem = self.names.problem(model)
        if problem is not None:
            message, hint = problem
            self.sink.add(codes.REF_MODEL, f"model '{model}' is {message}",
                          self.document.source_map.value(path), hint)

    def _agent(self, spec: AgentStepSpec, path: NodePath, visible: _Visible) -> AgentCall:
        agent = self.names.agent(spec.agent)
        if isinstance(agent, str):
            self.sink.add(codes.REF_AGENT, f"agent '{spec.agent}' is not defined",
                          self.document.source_map.value((*path, "agent")), agent)
        if not isinstance(agent, Agent):  # reported; the graph will not be built
            agent = Agent(spec.agent, "", False, Egress(frozenset(), True), (), "undefined")
        return AgentCall(agent, self._text((*path, "prompt"), spec.prompt, visible), spec.output)

    def _approvers(self, spec: ApprovalStepSpec, path: NodePath) -> Approvers | None:
        if spec.approvers is None:
            return None
        for kind, names in (("key", spec.approvers.keys), ("team", spec.approvers.teams)):
            for index, name in enumerate(names):
                hint = self.names.unknown_principal(kind, name)
                if hint is not None:
                    self.sink.add(codes.APPROVER_UNKNOWN,
                                  f"approvers name {kind} '{name}', which is not defined: "
                                  "it matches no key",
                                  self.document.source_map.value(
                                      (*path, "approvers", f"{kind}s", index)), hint)
        return Approvers(frozenset(spec.approvers.keys), frozenset(spec.approvers.teams))

    def _egress(self, name: str, spec: HttpStepSpec, path: NodePath) -> Egress:
        """A written-out origin, else the origins ``allow_hosts`` lists (see egress.py)."""
        if spec.allow_hosts is not None:
            return Egress(frozenset(allowed_origin(entry) for entry in spec.allow_hosts), False)
        origin = literal_origin(spec.url)
        if origin is None:
            self.sink.add(
                codes.HTTP_DESTINATION,
                f"http step '{name}' lets its template choose the host of "
                f"{shown_url(spec.url)!r}",
                self.document.source_map.value((*path, "url")),
                "write 'https://host/' out before the first '{{', or list the hosts a "
                "templated URL may reach in 'allow_hosts'",
            )
            return Egress(frozenset(), False)
        return Egress(frozenset({origin}), True)

    def _not_allowed(self, path: NodePath, message: str, hint: str) -> None:
        self.sink.add(codes.STEP_NOT_ALLOWED, message, self.document.source_map.key(path), hint)

    # Templates, schemas and functions

    def _text(self, path: NodePath, source: str, visible: _Visible) -> Text:
        try:
            text, names = compile_text(self.env, source)
        except TemplateSyntaxError as exc:
            self._syntax_error(path, exc)
            return compile_text(self.env, "")[0]  # reported; the graph will not be built
        self._check_names(path, names, visible, source)
        return text

    def _expr(self, path: NodePath, source: str, visible: _Visible) -> Expr:
        try:
            expr, names = compile_expr(self.env, source)
        except TemplateSyntaxError as exc:
            self._syntax_error(path, exc)
            return compile_expr(self.env, "none")[0]
        self._check_names(path, names, visible, source)
        return expr

    def _value(self, path: NodePath, data: Any, visible: _Visible) -> Value:
        try:
            value, found = compile_value(self.env, data, path)
        except ValueTemplateError as exc:
            self._syntax_error(exc.path, exc.error)
            return Const(None)
        for at, names in found:
            text = _at(data, at[len(path):])
            self._check_names(at, names, visible, text if isinstance(text, str) else "")
        return value

    def _syntax_error(self, path: NodePath, error: TemplateSyntaxError) -> None:
        self.sink.add(codes.TEMPLATE_SYNTAX, f"template error: {error.message}",
                      self._position(path, error.lineno or 1, None),
                      "templates are jinja2: {{ expression }}, {% if %}...{% endif %}")

    def _check_names(self, path: NodePath, names: Names, visible: _Visible, source: str) -> None:
        allowed = _BASE_NAMES | visible.extra | self.allowed_globals
        whose = f"step '{visible.owner}'" if visible.owner else f"pipeline '{self.name}' output"
        for name in sorted(names.free - allowed):
            seen = ", ".join(sorted(_BASE_NAMES | visible.extra))
            sink_hint = f"a template here sees {seen} (steps: only those the step needs)"
            close = did_you_mean(name, sorted(_BASE_NAMES | visible.extra))
            self.sink.add(codes.TEMPLATE_NAME,
                          f"template of {whose} uses '{name}', which is not defined there",
                          self._position(path, _line_of(source, name), name),
                          close or sink_hint)
        declared = _declared_properties(self.spec.input)
        for read, lineno in names.inputs:
            if declared is not None and read not in declared:
                self.sink.add(codes.INPUT_UNDECLARED,
                              f"template of {whose} reads input.{read}, which the input schema "
                              f"of pipeline '{self.name}' does not declare",
                              self._position(path, lineno, read),
                              did_you_mean(read, sorted(declared))
                              or "declare it under input.properties, or read a declared field")
        for step, lineno in names.steps:
            where = self._position(path, lineno, step)
            if step in self.broken:
                continue
            if step not in self.spec.steps:
                self.sink.add(codes.REF_STEP,
                              f"template of {whose} reads steps.{step}, which is not a step of "
                              f"pipeline '{self.name}'", where,
                              did_you_mean(step, self.spec.steps) or _steps_hint(self.spec.steps))
            elif step == visible.owner:
                self.sink.add(codes.TEMPLATE_NAME,
                              f"template of {whose} reads its own output (steps.{step})", where,
                              "a step sees only the outputs of steps it needs")
            elif step not in visible.steps:
                self.sink.add(codes.TEMPLATE_NAME,
                              f"template of {whose} reads steps.{step}, but '{visible.owner}' "
                              f"does not need '{step}'", where,
                              f"add '{step}' to the needs of '{visible.owner}'")

    def _position(self, path: NodePath, lineno: int, needle: str | None) -> Position:
        base = self.document.source_map.value(path)
        text = self.source.line_text(base.line)
        line, column = base.line, base.column
        if text[base.column - 1:base.column] in ("|", ">"):  # a block scalar: lines below
            line = base.line + lineno
            below = self.source.line_text(line)
            column = len(below) - len(below.lstrip()) + 1
        elif lineno > 1:
            line = base.line + lineno - 1
            column = 1
        if needle:
            found = self.source.line_text(line).find(needle, column - 1)
            if found >= 0:
                return Position(base.file, line, found + 1, len(needle))
        return Position(base.file, line, column, base.width if line == base.line else 1)

    def _schema(self, path: NodePath, document: dict[str, Any] | None) -> JsonSchema | None:
        if document is None:
            return None
        validator = jsonschema.validators.validator_for(
            document, default=jsonschema.Draft202012Validator
        )
        try:
            validator.check_schema(document)
        except jsonschema.SchemaError as exc:
            self.sink.add(codes.JSON_SCHEMA, f"invalid JSON Schema: {exc.message}",
                          self.document.source_map.value((*path, *exc.path)),
                          "see https://json-schema.org/understanding-json-schema/")
            return None
        return _schema_of(document, validator)

    def _function(self, path: NodePath, name: str) -> Callable[..., Any]:
        module_name, _, attribute = name.partition(":")
        where = self.document.source_map.value(path)
        try:
            # Its prints must not reach stdout, where `aigw check --format json` writes.
            with contextlib.redirect_stdout(sys.stderr):
                module = importlib.import_module(module_name)
        except ImportError as exc:
            self.sink.add(codes.PYTHON_CALLABLE, f"cannot import module '{module_name}': {exc}",
                          where, "install the package, or put the module on PYTHONPATH "
                          "where aigw runs")
            return _missing
        # The boundary to the user's own code: whatever it raises while importing is
        # a diagnostic about that code, not a compiler crash.
        # SystemExit too: a module that exits on import made `aigw check` exit 0, saying
        # nothing of the errors it had found.
        except (Exception, SystemExit) as exc:
            self.sink.add(codes.PYTHON_CALLABLE, f"importing module '{module_name}' failed: "
                          f"{type(exc).__name__}: {exc}", where)
            return _missing
        function = getattr(module, attribute, None)
        if function is None:
            names = [n for n in dir(module) if not n.startswith("_")]
            self.sink.add(codes.PYTHON_CALLABLE,
                          f"module '{module_name}' has no attribute '{attribute}'", where,
                          did_you_mean(attribute, names) or "name an async def in that module")
            return _missing
        if not inspect.iscoroutinefunction(function):
            self.sink.add(codes.PYTHON_CALLABLE, f"'{name}' is not an async function", where,
                          "a python step awaits its function: define it with 'async def'")
            return _missing
        result: Callable[..., Any] = function
        return result


async def _missing(**_kwargs: Any) -> None:  # stands in for a function that did not import
    return None


def _order(
    names: list[str], needs: Mapping[str, list[str]], report: Callable[[list[str]], None]
) -> list[str]:
    """Steps after what they need, in file order otherwise; each cycle is reported once
    (its steps are still listed, so their templates get checked)."""
    state: dict[str, int] = {}  # 1: visiting, 2: done
    order: list[str] = []
    seen_cycles: set[frozenset[str]] = set()

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dependency in needs[name]:
            if state.get(dependency) == 1:
                cycle = [*stack[stack.index(dependency):], dependency]
                if frozenset(cycle) not in seen_cycles:
                    seen_cycles.add(frozenset(cycle))
                    report(cycle)
            elif dependency not in state:
                visit(dependency, [*stack, dependency])
        state[name] = 2
        order.append(name)

    for name in names:
        if name not in state:
            visit(name, [name])
    return order


def _declared_properties(schema: Any) -> frozenset[str] | None:
    """The fields an object input schema declares; None when it declares none (any
    field may come, and none can be called undeclared)."""
    if not isinstance(schema, Mapping):
        return None
    properties = schema.get("properties")
    if not isinstance(properties, Mapping) or not properties:
        return None
    return frozenset(str(name) for name in properties)


def _upstream(order: list[str], needs: Mapping[str, list[str]]) -> dict[str, frozenset[str]]:
    found: dict[str, frozenset[str]] = {}
    for name in order:
        result: set[str] = set()
        for dependency in needs[name]:
            result.add(dependency)
            result |= found.get(dependency, frozenset())
        result.discard(name)
        found[name] = frozenset(result)
    return found


def _branch_targets(spec: BranchStepSpec) -> Iterable[tuple[NodePath, str]]:
    for index, case in enumerate(spec.cases):
        for position, target in enumerate(case.then):
            yield ("cases", index, "then", position), target
    for position, target in enumerate(spec.default):
        yield ("default", position), target


def _chat_field(schema: Mapping[str, Any]) -> str | None:
    """The one string field a chat message can fill: the only required string property,
    else the only property if it is a string."""
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return None
    strings = [name for name, prop in properties.items()
               if isinstance(prop, dict) and prop.get("type") == "string"]
    # Read before the schema is known to be valid (its error is reported apart): a
    # "required" that is no list of names must not fail here.
    listed = schema.get("required")
    required = [name for name in listed if isinstance(name, str) and name in properties] \
        if isinstance(listed, list) else []
    if len(required) == 1 and required[0] in strings:
        return str(required[0])
    if len(properties) == 1 and strings:
        return str(strings[0])
    return None


def _schema_of(document: Mapping[str, Any], validator: Any = None) -> JsonSchema:
    plain = dict(document)
    if validator is None:
        validator = jsonschema.validators.validator_for(
            plain, default=jsonschema.Draft202012Validator
        )
    return JsonSchema(MappingProxyType(plain), validator(plain))


def _extend(visible: _Visible, names: frozenset[str]) -> _Visible:
    return _Visible(visible.owner, visible.steps, visible.extra | names)


def _indexed(field_name: str, items: list[str]) -> list[tuple[NodePath, str]]:
    return [((field_name, index), item) for index, item in enumerate(items)]


def _at(data: Any, path: NodePath) -> Any:
    for part in path:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int):
            data = data[part]
        else:
            return None
    return data


def _line_of(source: str, name: str) -> int:
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    for number, line in enumerate(source.splitlines(), start=1):
        if pattern.search(line):
            return number
    return 1


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _steps_hint(steps: Iterable[str]) -> str:
    return "steps: " + ", ".join(steps)
