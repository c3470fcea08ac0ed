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
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, Undefined, meta, nodes
from jinja2.environment import TemplateExpression
from jinja2.exceptions import SecurityError
from jinja2.filters import FILTERS as _JINJA_FILTERS
from jinja2.parser import Parser
from jinja2.runtime import Context, LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range
from pydantic_core import from_json

T = TypeVar("T")

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
    # pydantic-core's parser: text nested past its limit is a ValueError (a template
    # error), where json.loads raised RecursionError, failing the run as an internal error.
    return from_json(text)


# What one operation of a template may make (characters of a string, items of a list),
# what one rendering may write, how many numbers its range() calls may hand out and how
# many times its loops may go round in all, and how long it may run. A template is the
# config's, but its values are a caller's: `"-" * input.width` must not let a request
# ask for a gigabyte, nor two nested loops over a caller's list of 500,000 items keep
# the event loop (every request of the worker) for an hour.
MAX_MADE = 1_000_000
MAX_RENDERED = 16_000_000
MAX_RANGE_TOTAL = 10_000_000
MAX_LOOP_ROUNDS = 1_000_000
MAX_RENDER_S = 1.0
_LOOP_FILTER = "aigw_counted_loop"  # wraps every for loop's iterable (_count_loops)
_MAX_POWER_BITS = 1 << 16  # an integer power's result: about 20,000 digits
_PADDING = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_WIDTHS = re.compile(r"%[#0\- +]*(\d+)?(?:\.(\d+))?|\{[^{}]*:[^{}]*?(\d+)[^{}]*\}")


@dataclass(slots=True)
class _Allowance:
    """What one rendering may still do (see the limits above)."""

    numbers: int = MAX_RANGE_TOTAL
    rounds: int = MAX_LOOP_ROUNDS
    deadline: float = 0.0


_allowance: ContextVar[_Allowance | None] = ContextVar("aigw_template_allowance", default=None)


def _bounded(amount: int, what: str) -> None:
    if amount > MAX_MADE:
        raise SecurityError(f"{what} would make {amount:,}, over the template limit of "
                            f"{MAX_MADE:,}")


def _widths(text: str) -> None:
    """A %- or {}-format whose field widths would make a string past the limit."""
    for match in _WIDTHS.finditer(text):
        for number in match.groups():
            if number is not None:
                _bounded(int(number), "a format width")


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox, with the operations that can make a huge value from a
    small one (repeating, raising to a power, padding, formatting) bounded. Intercepting
    ``*`` and ``**`` also keeps jinja2 from folding them at compile time, where
    ``3 ** 20000000`` in a pipeline file stalled a reload."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for made, times in ((left, right), (right, left)):
                if isinstance(made, str | list | tuple) and isinstance(times, int):
                    _bounded(len(made) * times, "a repetition")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and \
                    abs(left).bit_length() * right > _MAX_POWER_BITS:
                raise SecurityError(f"{left} ** {right} is too large for a template")
        elif isinstance(left, str):  # "%": a printf-style format
            _widths(left)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(__obj, LoopContext) and args:
            # ``loop(items)`` in a recursive loop: its rounds count as the outer loop's
            # do (``_count_loops`` reaches only the iterable written in the for tag).
            args = (_counted_loop(args[0]), *args[1:])
        made = getattr(__obj, "__self__", None)
        if isinstance(made, str):
            name = getattr(__obj, "__name__", "")
            if name in _PADDING:
                for arg in args:
                    if isinstance(arg, int):
                        _bounded(arg, f"str.{name}")
            elif name == "replace" and len(args) >= 2 and isinstance(args[1], str):
                _replacing(made, str(args[0]), args[1], "str.replace")
            elif name == "join" and isinstance(args[0] if args else None, list | tuple):
                _bounded(len(made) * len(args[0]), "str.join")
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        formatting = super().wrap_str_format(value)
        if formatting is None:
            return None
        _widths(value.__self__)
        return formatting


def _counted_range(*args: int) -> range:
    """jinja2's sandboxed range (at most 100,000 numbers), counted against what this
    rendering may still hand out: nested loops over range() add up."""
    numbers = safe_range(*args)
    allowance = _allowance.get()
    if allowance is not None:
        allowance.numbers -= len(numbers)
        if allowance.numbers < 0:
            raise SecurityError(f"range() handed out more than {MAX_RANGE_TOTAL:,} numbers "
                                "in one template")
    return numbers


def _counted_loop(items: Any) -> Iterator[Any]:
    """A for loop's items, each round counted against this rendering's allowance and
    its deadline (checked every round: one round may call a filter over a long list)."""
    allowance = _allowance.get()
    if allowance is None:
        yield from items
        return
    for item in items:
        allowance.rounds -= 1
        if allowance.rounds < 0:
            raise SecurityError(f"the template's loops went round more than "
                                f"{MAX_LOOP_ROUNDS:,} times")
        if time.monotonic() > allowance.deadline:
            raise SecurityError(f"the template ran for more than {MAX_RENDER_S:g} s")
        yield item


def _count_loops(tree: nodes.Template) -> nodes.Template:
    """Every ``{% for %}`` of ``tree`` iterating through ``_counted_loop``."""
    for loop in list(tree.find_all(nodes.For)):
        loop.iter = nodes.Filter(loop.iter, _LOOP_FILTER, [], [], None, None,
                                 lineno=loop.lineno)
    return tree


def _center(value: str, width: int = 80) -> str:
    _bounded(width, "center")
    return str(value).center(width)


def _indent(value: str, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    if isinstance(width, int):
        _bounded(width * (str(value).count("\n") + 1), "indent")
    return str(_JINJA_FILTERS["indent"](value, width, first, blank))


def _format(value: str, *args: Any, **kwargs: Any) -> str:
    _widths(str(value))
    return str(_JINJA_FILTERS["format"](value, *args, **kwargs))


def _replacing(text: str, old: str, new: str, what: str) -> None:
    """A replace that would make more than the limit (each match, and then some, by
    ``new``)."""
    _bounded(len(text) + (text.count(old) + 1) * len(new), what)


def _replace(context: Any, value: str, old: str, new: str, count: int | None = None) -> str:
    _replacing(str(value), str(old), str(new), "replace")
    return str(_JINJA_FILTERS["replace"](context, value, old, new, count))


_replace.jinja_pass_arg = _JINJA_FILTERS["replace"].jinja_pass_arg  # type: ignore[attr-defined]


def new_environment() -> ImmutableSandboxedEnvironment:
    """The sandbox every pipeline template compiles in (one per compile)."""
    env = _BoundedSandbox(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True
    )
    env.filters["json"] = _to_json
    env.filters["fromjson"] = _from_json
    env.filters.update(center=_center, indent=_indent, format=_format, replace=_replace)
    env.filters[_LOOP_FILTER] = _counted_loop
    env.globals["range"] = _counted_range
    del env.globals["lipsum"]  # lorem ipsum of any length: nothing a pipeline needs
    return env


def _budgeted(render: Callable[[], T]) -> T:
    """``render()`` with this rendering's own allowance (see the limits above)."""
    token = _allowance.set(_Allowance(deadline=time.monotonic() + MAX_RENDER_S))
    try:
        return render()
    finally:
        _allowance.reset(token)


@dataclass(frozen=True, slots=True)
class Text:
    """A template rendering to a string."""

    source: str
    template: Template

    def render(self, scope: Mapping[str, Any]) -> str:
        return _budgeted(lambda: self._written(scope))

    def _written(self, scope: Mapping[str, Any]) -> str:
        """The rendering, stopped once it passes ``MAX_RENDERED`` characters (it is made
        a piece at a time, so a long loop ends there, not at the end of the loop)."""
        parts: list[str] = []
        size = 0
        for part in self.template.generate(scope):
            size += len(part)
            if size > MAX_RENDERED:
                raise SecurityError(f"the template wrote more than {MAX_RENDERED:,} "
                                    "characters")
            parts.append(part)
        return "".join(parts)


@dataclass(frozen=True, slots=True)
class Expr:
    """An expression evaluating to a value; an undefined result is an error."""

    source: str
    compiled: TemplateExpression

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        result = _budgeted(lambda: self.compiled(**scope))
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
    """What a template reads: top-level names, and ``steps.<name>`` and ``input.<field>``
    with each one's line."""

    free: frozenset[str]
    steps: tuple[tuple[str, int], ...]
    inputs: tuple[tuple[str, int], ...] = ()


def compile_text(env: ImmutableSandboxedEnvironment, source: str) -> tuple[Text, Names]:
    """Compile a template; raises ``TemplateSyntaxError`` (with a line number)."""
    tree = env.parse(source)
    names = _names(tree)
    return Text(source, env.from_string(_count_loops(tree))), names


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
    return Names(free, _fields_read(tree, "steps", free), _fields_read(tree, "input", free))


def _fields_read(
    tree: nodes.Template, name: str, free: frozenset[str]
) -> tuple[tuple[str, int], ...]:
    """``name.<field>`` and ``name['<field>']`` in ``tree``, each with its line."""
    if name not in free:
        return ()
    read: list[tuple[str, int]] = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr) and _is_name(node.node, name):
            read.append((node.attr, node.lineno))
        elif isinstance(node, nodes.Getitem) and _is_name(node.node, name) and isinstance(
            node.arg, nodes.Const
        ) and isinstance(node.arg.value, str):
            read.append((node.arg.value, node.lineno))
    return tuple(read)


def _is_name(node: nodes.Node, name: str) -> bool:
    return isinstance(node, nodes.Name) and node.name == name
