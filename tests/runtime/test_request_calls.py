"""The chat request path's cost, in Python calls made by aigw's own code: a budget that a
change cannot overrun unseen.

Time is too noisy on a shared machine to guard the request path (bench/BENCH.md), but the
calls a request makes are counted exactly: the app is driven in process, as hypercorn
calls it, against the OpenAI fake (in a thread of its own, so not counted), with every
stage on (key, Cedar, rate limits and a budget, pricing, the ledger, metrics). Counted
are the calls whose caller is a function of aigw (runtime/, compiler/): those inside a
library are the library's business, and change with its version.

A change that needs more calls raises the budget here and says why in its commit
(``python bench/inproc.py --calls`` and ``--profile`` show where they go)."""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import aigw.compiler
import aigw.runtime
from aigw.runtime.app import create_app
from aigw.runtime.live import Gateway
from aigw.runtime.tokens import TokenCounter

from ..conftest import DEV_KEY, REPO
from ..fakes.openai_fake import OpenAIFake

# Calls a request's own code makes, at most. A whole answer: 580 on a loaded machine (where
# the code before these budgets made 617-620, and 600.5 quiet). A streamed one moves with
# how the fake's chunks arrive (in one read or several): 935-947 quiet once the provider's
# request id was read from a stream's headers (870-873 loaded before it; 960-974 loaded
# and 937-947 quiet at 56e5b5a), so its budget only catches a regression larger than
# the load's spread; bench/inproc.py --calls --stream measures it.
CHAT_BUDGET = 600
STREAM_BUDGET = 1_000

DEV_KEY_SHA256 = "2f0527c3d35a1f337ec6033b75e33c053e72e7122963d86dffe7c2f10bcbb482"
OURS = tuple(str(Path(package.__file__).parent) for package in (aigw.runtime, aigw.compiler))

Message = dict[str, Any]
App = Callable[[dict[str, Any], Callable[[], Awaitable[Message]],
                Callable[[Message], Awaitable[None]]], Awaitable[None]]


def gateway_config(base_url: str) -> str:
    """bench/targets.py's "every stage on", in front of the fake."""
    return f"""version: 1
providers:
  upstream: {{type: openai_compatible, base_url: "{base_url}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}
deployments:
  model:
    provider: upstream
    model: gpt-4o-mini
    context_window: 128000
    max_output_tokens: 256
    price: {{input: 0.15, output: 0.60}}
    capabilities: [streaming]
routes:
  chat: {{deployment: model}}
teams:
  default:
    budget: {{amount: 1000000, period: month}}
    limits: {{rpm: 100000000, tpm: 1000000000}}
keys:
  dev:
    team: default
    sha256: {DEV_KEY_SHA256}
    limits: {{rpm: 100000000, tpm: 1000000000}}
"""


async def one_request(app: App, body: bytes) -> int:
    """One POST /v1/chat/completions through the app, as hypercorn gives it; its status."""
    sent = False
    status = 0
    finished = asyncio.Event()

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            finished.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "",
        "headers": [(b"host", b"aigw.test"), (b"content-type", b"application/json"),
                    (b"authorization", f"Bearer {DEV_KEY}".encode()),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 4000), "extensions": {},
    }
    await app(scope, receive, send)
    return status


def calls_by_ours(stats: pstats.Stats) -> int:
    """The calls whose caller is a function in aigw's own packages."""
    total = 0
    for _callee, (_, _, _, _, callers) in stats.stats.items():  # type: ignore[attr-defined]
        for (filename, _, _), counts in callers.items():
            if filename.startswith(OURS):
                total += counts[1] if isinstance(counts, tuple) else counts
    return total


async def calls_per_request(root: Path, body: bytes, requests: int = 40) -> float:
    gateway = Gateway(root, TokenCounter())
    app: App = create_app(gateway)  # type: ignore[assignment]
    try:
        for _ in range(20):  # caches, pools and the budget's counters are warm after these
            assert await one_request(app, body) == 200
        profile = cProfile.Profile()
        profile.enable()
        statuses = [await one_request(app, body) for _ in range(requests)]
        profile.disable()
    finally:
        await gateway.aclose()
    assert statuses == [200] * requests
    return calls_by_ours(pstats.Stats(profile)) / requests


@pytest.fixture
def every_stage(tmp_path: Path, openai_upstream: tuple[OpenAIFake, str]) -> Path:
    root = tmp_path / "gw"
    root.mkdir()
    (root / "gateway.yaml").write_text(gateway_config(openai_upstream[1]))
    shutil.copytree(REPO / "policies", root / "policies")
    return root


CHAT = b'{"model":"chat","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16}'


async def test_a_chat_request_stays_within_its_budget_of_python_calls(every_stage: Path) -> None:
    calls = await calls_per_request(every_stage, CHAT)
    assert calls <= CHAT_BUDGET, (
        f"a chat request's own code made {calls:.1f} Python calls, over its budget of "
        f"{CHAT_BUDGET}: see this module's docstring")


async def test_a_streamed_request_stays_within_its_budget_of_python_calls(
        every_stage: Path) -> None:
    streamed = CHAT[:-1] + b',"stream":true,"stream_options":{"include_usage":true}}'
    calls = await calls_per_request(every_stage, streamed)
    assert calls <= STREAM_BUDGET, (
        f"a streamed chat request's own code made {calls:.1f} Python calls, over its "
        f"budget of {STREAM_BUDGET}: see this module's docstring")
