"""A real ``aigw serve`` whose pipelines are A2A agents, shared by the A2A e2e modules, and
the a2a-sdk's clients of them (1.0's, or its 0.3 client).

Its echo provider is slowed down (per token) so an execution is reliably seen working
before it ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from a2a.client import Client

from ..conftest import DEV_KEY
from ..pipelines.conftest import a2a_client, gateway_config
from .server import Server, running
from .test_workflows import APPROVAL, CHAIN, SLOW


@pytest.fixture(scope="package")
def a2a_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("a2a") / "gw"
    (root / "pipelines").mkdir(parents=True)
    (root / "gateway.yaml").write_text(gateway_config(latency=SLOW))
    for name, text in {"chain": CHAIN, "publish": APPROVAL}.items():
        (root / "pipelines" / f"{name}.yaml").write_text(text)
    with running(root) as server:
        yield server


@asynccontextmanager
async def a2a_agent(gateway: Server, pipeline: str, key: str = DEV_KEY, *,
                    streaming: bool = True, version: str = "1.0"
                    ) -> AsyncIterator[tuple[Client, httpx.AsyncClient]]:
    """The a2a-sdk's client of ``pipeline``'s agent (A2A ``version``), as ``key``, and
    its HTTP client (for the gateway's own API); closing it closes the connections."""
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60,
                                 headers={"authorization": f"Bearer {key}"}) as http:
        yield await a2a_client(http, f"{gateway.base_url}/a2a/{pipeline}",
                               streaming=streaming, version=version), http
