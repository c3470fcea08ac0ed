"""End-to-end fixtures: a real gateway process on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .a2a_gateway import a2a_gateway  # noqa: F401  (a re-exported fixture)
from .painters_gateway import painters  # noqa: F401  (a re-exported fixture)
from .responses_gateway import alice, client, kept_upstreams  # noqa: F401  (re-exported fixtures)
from .server import Server


@pytest.fixture
def server(gateway_dir: Path) -> Iterator[Server]:
    started = Server(gateway_dir)
    started.wait_ready()
    yield started
    started.stop()
