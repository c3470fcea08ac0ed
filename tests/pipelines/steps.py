"""Async functions that pipelines in the tests call as python steps."""

from __future__ import annotations

from pathlib import Path


async def add(a: int, b: int) -> int:
    return a + b


async def flaky(marker: str, failures: int) -> str:
    """Fails the first ``failures`` calls (counted in the file ``marker``), then succeeds."""
    path = Path(marker)
    calls = len(path.read_text().splitlines()) if path.exists() else 0
    with path.open("a") as file:
        file.write("call\n")
    if calls < failures:
        raise RuntimeError(f"failure {calls + 1} of {failures}")
    return f"ok after {calls} failures"


async def count(marker: str) -> int:
    """Appends a line to ``marker`` and returns how many calls it has seen."""
    path = Path(marker)
    with path.open("a") as file:
        file.write("call\n")
    return len(path.read_text().splitlines())
