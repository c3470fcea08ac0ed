"""Source files and the source map: every config node traced back to file:line:col."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# A path into the merged config document: ("deployments", "gpt-4o", "provider").
NodePath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Position:
    """A 1-based line and column in one source file, with the span's width in columns."""

    file: str
    line: int
    column: int
    width: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file the compiler read, by its path relative to the gateway directory."""

    path: str
    text: str
    # Split once: a diagnostic's width asks for a line per node, and splitting the whole
    # file each time made checking a config of 10,000 routes take minutes.
    lines: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lines", tuple(self.text.splitlines()))

    def line_text(self, line: int) -> str:
        """The text of a 1-based line, or "" past the end of the file."""
        return self.lines[line - 1] if 0 < line <= len(self.lines) else ""


@dataclass(frozen=True, slots=True)
class SourceMap:
    """Where each node of the merged document came from.

    ``keys`` holds the position of a mapping key (where "unknown key" points),
    ``values`` the position of the value under it (where "wrong type" points).
    Lookups fall back to the nearest ancestor, so every path has some position.
    """

    keys: Mapping[NodePath, Position] = field(default_factory=lambda: MappingProxyType({}))
    values: Mapping[NodePath, Position] = field(default_factory=lambda: MappingProxyType({}))
    default: Position = Position("gateway.yaml", 1, 1)

    def key(self, path: NodePath) -> Position:
        """Position of the key that names ``path``, else of its nearest ancestor."""
        return self._nearest(self.keys, path) or self.value(path)

    def value(self, path: NodePath) -> Position:
        """Position of the value at ``path``, else of its nearest ancestor."""
        return self._nearest(self.values, path) or self._nearest(self.keys, path) or self.default

    @staticmethod
    def _nearest(table: Mapping[NodePath, Position], path: NodePath) -> Position | None:
        for end in range(len(path), -1, -1):
            found = table.get(path[:end])
            if found is not None:
                return found
        return None


# A ${ENV} template resolved as a compile resolves it: the text, where it was written,
# the list unset names go into -> the text resolved.
Resolve = Callable[[str, Position, list[str]], str]
