"""Fixtures for routing tests: several OpenAI fakes, each one deployment, in one gateway."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from ..providers.conftest import make_gateway  # noqa: F401  (re-exported fixture)


class Fleet:
    """Named upstream fakes; ``calls()`` is the order in which they were called."""

    def __init__(self, names: list[str]) -> None:
        self.journal: list[str] = []
        self.fakes = {name: OpenAIFake(name=name, journal=self.journal) for name in names}
        self.urls: dict[str, str] = {}

    def calls(self) -> list[str]:
        return list(self.journal)

    def providers_yaml(self, timeout_s: float = 5.0) -> str:
        lines = ["providers:"]
        for name in self.fakes:
            lines.append(
                f"  p-{name}: {{type: openai_compatible, base_url: \"{self.urls[name]}/v1\", "
                f"api_key: \"{self.fakes[name].api_key}\", timeout_s: {timeout_s}}}"
            )
        return "\n".join(lines)


@pytest.fixture
def fleet(request: pytest.FixtureRequest) -> Iterator[Fleet]:
    names = getattr(request, "param", ["a", "b", "c"])
    fleet = Fleet(names)
    with ExitStack() as stack:
        for name, fake in fleet.fakes.items():
            fleet.urls[name] = stack.enter_context(serving(fake.app))
        yield fleet


class JumpingClock:
    """``time.monotonic``, made to jump ahead at chosen moments: the routing state's clock
    in a test where a deadline must pass at an exact point of a request (between two
    attempts, during a backoff), however long the request really takes."""

    def __init__(self) -> None:
        self.jumps: list[tuple[float, float]] = []  # (from when, on time.monotonic; by)

    def jump(self, after_s: float, by_s: float) -> None:
        """From ``after_s`` seconds on, read ``by_s`` seconds later than now."""
        self.jumps.append((time.monotonic() + after_s, by_s))

    def __call__(self) -> float:
        now = time.monotonic()
        return now + sum(by for at, by in self.jumps if now >= at)
