"""jinja2 templates and expressions for pipelines: compiled once, sandboxed, strict about names.

Three shapes of templated config, all built by the compiler and only evaluated at run time:

    Text    "Summarise {{ steps.extract }}"           renders to a string
    Expr    "steps.classify == 'bug'"                  evaluates to any value
    Value   {id: "{{ input.id }}", tags: [a, b]}      a structure whose strings are
                                                       templates; a string that is exactly
                                                       "{{ expression }}" keeps its type

The environment is jinja2's immutable sandbox with ``StrictUndefined``: a template
cannot call unsafe attributes or change its inputs, and a name that is not there is an
error, never an empty string. ``names_used`` tells the compiler which top-level names
and which ``steps.<name>`` a template reads, so it can check them against what the step
can see.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, Undefined, meta, nodes
from jinja2.environment import TemplateExpression
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "Const",
    "Expr",
    "Obj",
    "Seq",
    "TemplateSyntaxError",
    "Text",
    "Value",
    "new_environment",
    "render_value",
]

_WHOLE_EXPRESSION = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\{\{|\}\}|\{%).)*)\}\}\s*$", re.DOTALL)


def _to_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _from_json(text: str) -> Any:
    return json.loads(text)


def new_environment() -> ImmutableSandboxedEnvironment:
    """The sandbox every pipeline template compiles in (one per compile)."""
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    env.filters["json"] = _to_json
    env.filters["fromjson"] = _from_json
    return env


@dataclass(frozen=True, slots=True)
class Text:
    """A template rendering to a string."""

    source: str
    template: Template

    def render(self, scope: Mapping[str, Any]) -> str:
        return self.template.render(scope)


@dataclass(frozen=True, slots=True)
class Expr:
    """An expression evaluating to a value; an undefined result is an error."""

    source: str
    compiled: TemplateExpression

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        result = self.compiled(**scope)
        if isinstance(result, Undefined):
            str(result)  # StrictUndefined raises UndefinedError naming what is missing
        return result


@dataclass(frozen=True, slots=True)
class Const:
    value: Any


@dataclass(frozen=True, slots=True)
class Seq:
    items: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Obj:
    items: tuple[tuple[str, Value], ...]


Value = Text | Expr | Const | Seq | Obj


def render_value(value: Value, scope: Mapping[str, Any]) -> Any:
    """Evaluate a templated structure into plain data."""
    if isinstance(value, Text):
        return value.render(scope)
    if isinstance(value, Expr):
        return value.evaluate(scope)
    if isinstance(value, Seq):
        return [render_value(item, scope) for item in value.items]
    if isinstance(value, Obj):
        return {key: render_value(item, scope) for key, item in value.items}
    return value.value


@dataclass(frozen=True, slots=True)
class Names:
    """What a template reads: top-level names, and ``steps.<name>`` with each one's line."""

    free: frozenset[str]
    steps: tuple[tuple[str, int], ...]


def compile_text(env: ImmutableSandboxedEnvironment, source: str) -> tuple[Text, Names]:
    """Compile a template; raises ``TemplateSyntaxError`` (with a line number)."""
    tree = env.parse(source)
    return Text(source, env.from_string(tree)), _names(tree)


def compile_expr(env: ImmutableSandboxedEnvironment, source: str) -> tuple[Expr, Names]:
    """Compile an expression; raises ``TemplateSyntaxError`` (with a line number)."""
    parser = Parser(env, source, state="variable")
    expression = parser.parse_expression()
    if not parser.stream.eos:
        token = parser.stream.current
        raise TemplateSyntaxError(
            f"unexpected {token.value!r} after the expression", token.lineno, None, None
        )
    tree = nodes.Template([nodes.Output([expression], lineno=1)], lineno=1)
    tree.set_environment(env)
    compiled = env.compile_expression(source, undefined_to_none=False)
    return Expr(source, compiled), _names(tree)


def compile_value(
    env: ImmutableSandboxedEnvironment, data: Any, path: tuple[str | int, ...] = ()
) -> tuple[Value, list[tuple[tuple[str | int, ...], Names]]]:
    """Compile every string in ``data``; also returns each template's path and names.

    Raises ``ValueTemplateError`` with the path of a template that does not compile.
    """
    found: list[tuple[tuple[str | int, ...], Names]] = []

    def walk(node: Any, at: tuple[str | int, ...]) -> Value:
        if isinstance(node, str):
            try:
                whole = _WHOLE_EXPRESSION.match(node)
                if whole is not None:
                    compiled_expr, names = compile_expr(env, whole.group("expr"))
                    found.append((at, names))
                    return compiled_expr
                if "{{" not in node and "{%" not in node and "{#" not in node:
                    return Const(node)
                text, names = compile_text(env, node)
            except TemplateSyntaxError as exc:
                raise ValueTemplateError(at, exc) from exc
            found.append((at, names))
            return text
        if isinstance(node, list):
            return Seq(tuple(walk(item, (*at, index)) for index, item in enumerate(node)))
        if isinstance(node, dict):
            return Obj(tuple((str(key), walk(item, (*at, str(key)))) for key, item in node.items()))
        return Const(node)

    return walk(data, path), found


class ValueTemplateError(Exception):
    """A template inside a structure did not compile; ``path`` says which one."""

    def __init__(self, path: tuple[str | int, ...], error: TemplateSyntaxError) -> None:
        super().__init__(error.message)
        self.path = path
        self.error = error


def _names(tree: nodes.Template) -> Names:
    free = frozenset(meta.find_undeclared_variables(tree))
    steps: list[tuple[str, int]] = []
    if "steps" in free:
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            if isinstance(node, nodes.Getattr) and _is_steps(node.node):
                steps.append((node.attr, node.lineno))
            elif isinstance(node, nodes.Getitem) and _is_steps(node.node) and isinstance(
                node.arg, nodes.Const
            ) and isinstance(node.arg.value, str):
                steps.append((node.arg.value, node.lineno))
    return Names(free, tuple(steps))


def _is_steps(node: nodes.Node) -> bool:
    return isinstance(node, nodes.Name) and node.name == "steps"
