"""The pipelines stage of the compiler: what it builds, and what it lets templates see."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from aigw.compiler import compile_gateway
from aigw.compiler.graph import TargetKind
from aigw.compiler.pipeline_graph import Llm, MapStep, StepKind
from aigw.compiler.templates import Const, Expr, Obj, Seq, Text, render_value

from .conftest import gateway_config

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "runtime" / "workflows" / "templates"


def _compile(tmp_path: Path, pipelines: dict[str, str], extra_routes: str = ""):  # type: ignore[no-untyped-def]
    (tmp_path / "pipelines").mkdir(exist_ok=True)
    (tmp_path / "gateway.yaml").write_text(gateway_config(extra_routes=extra_routes))
    for name, text in pipelines.items():
        (tmp_path / "pipelines" / f"{name}.yaml").write_text(text)
    return compile_gateway(tmp_path, {})


def _messages(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [f"{d.code.id} {d.position.line}:{d.position.column} {d.message}"
            for d in result.diagnostics]


def test_the_shipped_templates_are_the_gateways_pipelines() -> None:
    shipped = sorted(path.name for path in TEMPLATES.glob("*.yaml"))
    assert shipped == ["coding.yaml", "data_analysis.yaml", "document_analysis.yaml",
                       "research.yaml"]
    for name in shipped:
        assert (REPO / "pipelines" / name).read_text() == (TEMPLATES / name).read_text(), name


def test_the_templates_compile_against_the_default_gateway() -> None:
    result = compile_gateway(REPO, {})
    assert result.graph is not None, _messages(result)
    graph = result.graph
    assert sorted(graph.pipelines) == ["coding", "data_analysis", "document_analysis",
                                       "research"]
    research = graph.pipelines["research"]
    assert list(research.steps) == ["search", "analyse", "report"]
    assert research.upstream["report"] == frozenset({"search", "analyse"})
    assert research.chat_field == "topic"
    assert research.routes["smart"] is graph.routes["smart"]
    document = graph.pipelines["document_analysis"]
    assert document.steps["validate"].needs == ("extract", "classify", "entities", "summary")


def test_a_group_or_deployment_model_gets_a_route_of_its_own(tmp_path: Path) -> None:
    pipeline = """
steps:
  a: {kind: llm, model: tiered, prompt: "x"}
  b: {kind: llm, model: strong, prompt: "y"}
output: "{{ steps.a }}"
"""
    result = _compile(tmp_path, {"p": pipeline})
    assert result.graph is not None, _messages(result)
    routes = result.graph.pipelines["p"].routes
    assert routes["tiered"].kind is TargetKind.GROUP
    assert [d.name for d in routes["tiered"].candidates] == ["cheap", "strong"]
    assert routes["strong"].kind is TargetKind.DEPLOYMENT
    assert [d.name for d in routes["strong"].candidates] == ["strong"]
    assert "tiered" not in result.graph.routes  # apps still cannot call it by name


def test_inline_steps_see_the_names_of_their_container(tmp_path: Path) -> None:
    pipeline = """
steps:
  items: {kind: transform, expression: "[1, 2]"}
  each:
    kind: map
    needs: [items]
    over: "steps.items"
    step: {kind: llm, model: fast, prompt: "{{ item }} {{ index }} {{ steps.items }}"}
  refine:
    kind: loop
    max_iterations: 2
    planner: {expression: "'done' if iteration else 'go'"}
    actions:
      go: {kind: transform, expression: "[history, last, last_action, outputs, iteration]"}
  check:
    kind: cascade
    models: [fast, smart]
    prompt: "{{ item }}"
    check: "answer | length > 1"
output: "{{ steps.each }}"
"""
    result = _compile(tmp_path, {"p": pipeline})
    assert _messages(result) == [
        "AGW506 18:17 template of step 'check' uses 'item', which is not defined there"]


def test_templates_are_compiled_once_into_values(tmp_path: Path) -> None:
    pipeline = """
steps:
  each:
    kind: map
    over: "input.rows"
    step: {kind: llm, model: fast, prompt: "Row {{ item }}"}
output:
  count: "{{ steps.each | length }}"
  label: "rows: {{ steps.each | length }}"
  fixed: [1, "two"]
"""
    result = _compile(tmp_path, {"p": pipeline})
    assert result.graph is not None
    compiled = result.graph.pipelines["p"]
    each = compiled.steps["each"]
    assert each.kind is StepKind.MAP and isinstance(each.action, MapStep)
    inner = each.action.step.action
    assert isinstance(inner, Llm) and isinstance(inner.call.prompt, Text)
    output = compiled.output
    assert isinstance(output, Obj)
    kinds = {key: type(value) for key, value in output.items}
    assert kinds == {"count": Expr, "label": Text, "fixed": Seq}
    assert render_value(output, {"steps": {"each": ["a", "b"]}}) == {
        "count": 2, "label": "rows: 2", "fixed": [1, "two"]}
    assert render_value(Const(3), {}) == 3


def test_a_bad_step_does_not_hide_the_others(tmp_path: Path) -> None:
    pipeline = """
steps:
  a: {kind: llm, model: fast}
  b: {kind: transform, needs: [a], expression: "steps.a ~ steps.c"}
output: "{{ steps.b }}"
"""
    result = _compile(tmp_path, {"p": pipeline})
    assert _messages(result) == [
        "AGW203 3:3 missing required field 'prompt' in step 'a'",
        "AGW503 4:65 template of step 'b' reads steps.c, which is not a step of pipeline 'p'",
    ]


def test_a_route_may_not_be_a_model_when_it_runs_a_pipeline(tmp_path: Path) -> None:
    pipeline = """
steps:
  a: {kind: llm, model: helper, prompt: "x"}
output: "{{ steps.a }}"
"""
    result = _compile(tmp_path, {"p": pipeline, "helper": pipeline.replace("helper", "fast")},
                      extra_routes="  helper: {pipeline: helper}")
    assert _messages(result) == [
        "AGW509 3:25 model 'helper' is a route that runs a pipeline"]


def test_the_compiler_checks_python_functions_import(tmp_path: Path) -> None:
    shutil.rmtree(tmp_path, ignore_errors=True)
    tmp_path.mkdir()
    pipeline = """
steps:
  a: {kind: python, function: "tests.pipelines.steps:add", args: {a: 1, b: 2}}
  b: {kind: python, function: "no_such_module_for_aigw:run"}
output: "{{ steps.a }}"
"""
    result = _compile(tmp_path, {"p": pipeline})
    assert _messages(result) == [
        "AGW511 4:31 cannot import module 'no_such_module_for_aigw': No module named "
        "'no_such_module_for_aigw'"]


def test_a_module_that_exits_or_prints_on_import_is_a_diagnostic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`aigw check` imports a python step's module: one calling exit() made check exit 0
    with nothing said, and one printing spoilt `--format json` on stdout."""
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "aigw_exits_on_import.py").write_text(
        "print('hello from an import')\nraise SystemExit(0)\n")
    monkeypatch.syspath_prepend(str(modules))
    pipeline = """
steps:
  a: {kind: python, function: "aigw_exits_on_import:run"}
output: "{{ steps.a }}"
"""
    (tmp_path / "gw").mkdir()
    result = _compile(tmp_path / "gw", {"p": pipeline})
    assert _messages(result) == [
        "AGW511 3:31 importing module 'aigw_exits_on_import' failed: SystemExit: 0"]
    assert "hello from an import" not in capsys.readouterr().out
