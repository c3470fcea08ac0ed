"""Fixtures for routing tests: several OpenAI fakes, each one deployment, in one gateway."""

from __future__ import annotations

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
