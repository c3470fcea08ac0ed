"""What a Cedar decision can depend on: the context as sent, and the keys decisions are cached by.

A decision is a function of the principal, the entities and the context. The part
of the context (and of a deployment's live values) that the policies only ever
compare counts by how those comparisons come out (computed here exactly as Cedar
would: Longs as integers, decimals to four places, strings and booleans as they are);
the rest counts by its exact value. Two requests with the same key get the same
decision, so the second one does not ask Cedar.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from aigw.compiler.entity_model import (
    BOOL,
    CONTEXT,
    DECIMAL,
    LONG,
    STRING,
    CedarType,
    cedar_decimal,
    encode_value,
)
from aigw.compiler.policy_analysis import Comparison, Operand, Reads

from .jsonio import dumps

MISSING = "missing"  # an operand the resource has no such attribute for: Cedar errors, always

_ORDER: Mapping[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
    "==": operator.eq, "!=": operator.ne,
}


@dataclass(frozen=True, slots=True)
class CedarContext:
    """The context record as Cedar gets it, and what decisions about it are keyed by."""

    record: Mapping[str, Any]  # in Cedar's JSON form
    key: tuple[object, ...]
    values: Mapping[str, Any]  # "context.x" -> the value, comparable
    # The values of the fields some comparison sets against a resource attribute: how
    # those come out depends on the value itself, not on the comparisons in ``key``.
    versus_resource: tuple[object, ...] = ()

    @property
    def text(self) -> str:
        """The record as JSON text: written only when Cedar is asked (a decision not
        cached), not for every request whose remaining budget made a new context."""
        return dumps(self.record).decode()


class ContextEncoder:
    """A request's context as Cedar gets it, with only the fields some policy of one
    policy set reads (budget None: no budget): what it reads, in which form and through
    which comparisons is worked out once (per engine), not on every request."""

    def __init__(self, reads: Reads) -> None:
        self.names = tuple(sorted(reads.context))
        # (field, "context.field", its Cedar type, whether its exact value is in the key,
        # how ``plain`` turns its JSON form into what comparisons see)
        self._fields = tuple(
            (name, f"context.{name}", CONTEXT[name], f"context.{name}" not in reads.compared,
             _plain_form(CONTEXT[name]))
            for name in self.names
        )
        self._own = tuple(compile_comparison(item) for item in reads.comparisons
                          if not mentions_resource(item))
        self._versus = tuple(sorted({value for item in reads.comparisons
                                     if mentions_resource(item)
                                     for kind, value in item[1:]
                                     if kind == "field" and value.startswith("context.")}))

    def encode(self, values: Mapping[str, Any]) -> CedarContext:
        record: dict[str, Any] = {}
        exact: list[str] = []
        comparable: dict[str, Any] = {}
        for name, qualified, kind, keyed, form in self._fields:
            value = values.get(name)
            if name == "budget_remaining" and value is None:
                encoded = cedar_decimal(float("inf"))
            else:
                encoded = encode_value(kind, value)
            record[name] = encoded
            # ``plain``, its branch known from the type: two calls a field fewer
            comparable[qualified] = (encoded if form is _AS_IS
                                     else Decimal(encoded["__extn"]["arg"]) if form is _DECIMAL
                                     else plain(encoded))
            if keyed:
                exact.append(json.dumps(encoded, sort_keys=True))
        own = tuple([evaluate(comparable, _NO_RESOURCE) for evaluate in self._own])
        versus = tuple([comparable.get(name) for name in self._versus])
        return CedarContext(record, (*exact, own), comparable, versus)


_AS_IS, _DECIMAL, _OTHER = "as is", "decimal", "other"


def _plain_form(kind: CedarType) -> str:
    """Which branch of ``plain`` a value of ``kind`` in Cedar's JSON form takes."""
    if kind is DECIMAL:
        return _DECIMAL
    return _AS_IS if kind is LONG or kind is BOOL or kind is STRING else _OTHER


_NO_RESOURCE: Mapping[str, Any] = {}


def plain(encoded: Any) -> Any:
    """A value in Cedar's JSON form as a Python value that compares as Cedar's does."""
    if isinstance(encoded, dict) and "__extn" in encoded:
        return Decimal(encoded["__extn"]["arg"])
    if isinstance(encoded, list):
        return tuple(encoded)
    if isinstance(encoded, dict):
        return json.dumps(encoded, sort_keys=True)
    return encoded


def mentions_resource(comparison: Comparison) -> bool:
    return any(kind == "field" and value.startswith("resource.")
               for kind, value in comparison[1:])


Outcome = Callable[[Mapping[str, Any], Mapping[str, Any]], object]


def outcome(comparison: Comparison, context: Mapping[str, Any],
            resource: Mapping[str, Any]) -> object:
    """How ``comparison`` comes out: True, False, or MISSING (Cedar raises an error)."""
    return compile_comparison(comparison)(context, resource)


def compile_comparison(comparison: Comparison) -> Outcome:
    """``outcome`` for one comparison as a function of (context values, resource values),
    its literals converted once."""
    op, left, right = comparison
    order = _ORDER[op]
    unequal = op == "!="
    # Each operand read in place, not through a getter function: a request evaluates
    # several comparisons, and two calls each were a good part of its Cedar stage.
    left_in, left_key, left_literal = _operand(left)
    right_in, right_key, right_literal = _operand(right)

    def evaluate(context: Mapping[str, Any], resource: Mapping[str, Any]) -> object:
        a = (left_literal if left_in is _LITERAL
             else (context if left_in is _CONTEXT else resource).get(left_key, _ABSENT))
        b = (right_literal if right_in is _LITERAL
             else (context if right_in is _CONTEXT else resource).get(right_key, _ABSENT))
        if a is _ABSENT or b is _ABSENT:
            return MISSING
        if type(a) is not type(b):  # never equal; an order between them fails validation
            return unequal
        return order(a, b)

    return evaluate


_ABSENT = object()
_CONTEXT, _RESOURCE, _LITERAL = "context", "resource", "literal"


def _operand(operand: Operand) -> tuple[str, str, Any]:
    """Where an operand's value is read (the context's values, the resource's, or
    nowhere: a literal), under which name, and the literal's value."""
    kind, text = operand
    if kind == "field":
        return (_CONTEXT if text.startswith("context.") else _RESOURCE), text, None
    literal: Any = (int(text) if kind == "long" else Decimal(text) if kind == "decimal"
                    else text == "true" if kind == "bool" else text)
    return _LITERAL, "", literal
