"""Diagnostics: what went wrong, where, and what to do about it, in four output formats."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from .codes import Code, Severity
from .source import Position, SourceFile

# A URL's user info: what comes before the last "@" of its authority (after "//", or from
# the start when it has none, as in "user:pw@host:8000/v1"), which ends at "/", "?" or "#".
_USER_INFO = re.compile(r"^(?P<lead>(?:[A-Za-z][A-Za-z0-9+.-]*:)?//)?[^/?#]*@")


def shown_url(url: str) -> str:
    """``url`` as a diagnostic may quote it: user info, a query and a fragment can carry a
    password or a key (a base_url's ${ENV} values among them), and diagnostics reach
    whoever reads ``aigw check`` output or ``/admin/status``.

    >>> shown_url("https://user:s3cret@llm.example.com/v1?key=abc#x")
    'https://***@llm.example.com/v1?***'
    """
    shown = _USER_INFO.sub(lambda found: f"{found['lead'] or ''}***@", url, count=1)
    query = shown.find("?")
    fragment = shown.find("#")
    cut = min((at for at in (query, fragment) if at >= 0), default=-1)
    return shown if cut < 0 else f"{shown[: cut + 1]}***"


# A lone surrogate: how Python holds a byte that did not decode (a file name's, an
# environment variable's) and a YAML escape of half a pair ("\\ud800").
_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> str:
    """``text`` with each lone surrogate as U+FFFD: a diagnostic is written to a terminal,
    a log and /admin/status's JSON, and none of them can encode a surrogate.

    >>> encodable("caf\\udce9") == "caf\\ufffd"
    True
    """
    return _SURROGATE.sub("\ufffd", text)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding of the compiler, positioned in a source file."""

    code: Code
    message: str
    position: Position
    hint: str | None = None

    @property
    def severity(self) -> Severity:
        return self.code.severity

    @property
    def is_error(self) -> bool:
        return self.code.severity is Severity.ERROR

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.position.file, self.position.line, self.position.column, self.code.id)

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code.id,
            "severity": self.severity.value,
            "file": self.position.file,
            "line": self.position.line,
            "column": self.position.column,
            "message": self.message,
            "hint": self.hint,
        }


class DiagnosticSink:
    """Collects the diagnostics of one compiler run; stages add to it and go on."""

    def __init__(self) -> None:
        self._items: list[Diagnostic] = []

    def add(self, code: Code, message: str, position: Position, hint: str | None = None) -> None:
        if _SURROGATE.search(f"{message}{hint}{position.file}"):
            message, hint = encodable(message), hint and encodable(hint)
            position = replace(position, file=encodable(position.file))
        self._items.append(Diagnostic(code, message, position, hint))

    @property
    def has_errors(self) -> bool:
        return self.error_count > 0

    @property
    def error_count(self) -> int:
        return sum(1 for item in self._items if item.is_error)

    def sorted(self) -> tuple[Diagnostic, ...]:
        return tuple(sorted(self._items, key=Diagnostic.sort_key))


def summary_line(diagnostics: Sequence[Diagnostic]) -> str:
    """ "2 errors, 1 warning" (or "no problems")."""
    errors = sum(1 for item in diagnostics if item.is_error)
    warnings = len(diagnostics) - errors
    if not diagnostics:
        return "no problems"
    parts = [_plural(errors, "error"), _plural(warnings, "warning")]
    return ", ".join(parts)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def render_text(diagnostics: Sequence[Diagnostic], sources: Mapping[str, SourceFile]) -> str:
    """Human-readable diagnostics with the source line, a caret under the span and the hint.

    >>> # AGW301 error gateway.yaml:12:15 deployment 'gpt' refers to provider 'opnai' ...
    >>> #    12 |     provider: opnai
    >>> #       |               ^^^^^
    >>> #       = hint: did you mean 'openai'?
    """
    blocks = [_render_one(item, sources.get(item.position.file)) for item in diagnostics]
    blocks.append(summary_line(diagnostics))
    return "\n".join(blocks) + "\n"


# The most columns of a source line shown, around the caret: a line of megabytes (a
# minified file, a pasted blob) must not be copied into a CI log whole.
EXCERPT_COLUMNS = 160


def _render_one(item: Diagnostic, source: SourceFile | None) -> str:
    pos = item.position
    lines = [f"{item.code.id} {item.severity.value} {pos} {item.message}"]
    text = _visible(source.line_text(pos.line)) if source is not None else ""
    if text:
        gutter = " " * len(str(pos.line))
        width = min(max(pos.width, 1), EXCERPT_COLUMNS // 2)
        start = 0 if len(text) <= EXCERPT_COLUMNS else \
            max(0, min(pos.column - 1 - EXCERPT_COLUMNS // 2, len(text) - EXCERPT_COLUMNS))
        shown = text[start : start + EXCERPT_COLUMNS]
        before = "..." if start > 0 else ""
        after = "..." if start + EXCERPT_COLUMNS < len(text) else ""
        # Tabs stay tabs under the line, so the caret lines up however a terminal draws them.
        pad = "".join("\t" if char == "\t" else " "
                      for char in before + text[start : pos.column - 1])
        lines.append(f" {pos.line} | {before}{shown}{after}")
        lines.append(f" {gutter} | {pad}{'^' * width}")
        if item.hint:
            lines.append(f" {gutter} = hint: {item.hint}")
    elif item.hint:
        lines.append(f"   = hint: {item.hint}")
    return "\n".join(lines)


def _visible(text: str) -> str:
    """Control characters (but tab) as their Unicode pictures, one column each: a NUL or a
    BEL in a config is shown, not sent to the terminal."""
    return "".join(
        chr(0x2400 + ord(char)) if ord(char) < 0x20 and char != "\t"
        else "\u2421" if char == "\x7f" else char
        for char in text
    )


def render_json(diagnostics: Sequence[Diagnostic],
                more: Mapping[str, object] | None = None) -> str:
    """A JSON document: {"diagnostics": [...], "errors": N, "warnings": N}, and the
    sections of ``more`` (``aigw check --against``'s "against")."""
    errors = sum(1 for item in diagnostics if item.is_error)
    document = {
        "diagnostics": [item.as_dict() for item in diagnostics],
        "errors": errors,
        "warnings": len(diagnostics) - errors,
        **(more or {}),
    }
    return json.dumps(document, indent=2) + "\n"


def render_github(diagnostics: Iterable[Diagnostic], root: str = "") -> str:
    """GitHub Actions workflow commands, one annotation per diagnostic."""
    lines = []
    for item in diagnostics:
        pos = item.position
        path = f"{root.rstrip('/')}/{pos.file}" if root else pos.file
        message = item.message + (f" (hint: {item.hint})" if item.hint else "")
        lines.append(
            f"::{item.severity.value} file={_escape_property(path)},line={pos.line},"
            f"col={pos.column},title={item.code.id}::{_escape_data(message)}"
        )
    return "".join(line + "\n" for line in lines)


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")
