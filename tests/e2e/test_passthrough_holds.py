"""A pass-through holds its caller's budget and tokens per minute before it is sent, as a
chat request does, and settles them to its answer's usage or gives them back (the
upstream failed, the client left): through a real ``aigw serve`` on the embedded store
and on a real redis-server, with the Anthropic SDK.

One currency unit per token (price 1e6 per million), so costs are token counts. A
message of "hi" with max_tokens 40 holds its body's bytes / 4 (about 22) and its 40 at
most; the fake answers it with 4 prompt tokens and 2 of output: it costs 6.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

from ..conftest import DEV_KEY
from ..fakes.anthropic_fake import AnthropicFake
from ..fakes.brain import Action
from ..fakes.gzipping import inflating
from ..fakes.serve import serving
from ..redis_server import PrivateRedis
from .server import Server, free_port

pytestmark = pytest.mark.e2e

ANTHROPIC_KEY = "sk-ant-provider-holds-3c9e51d0a7"
APP_KEY = "sk-aigw-app-holds"  # team app: a budget of BUDGET, in total
TIGHT_KEY = "sk-aigw-tight-holds"  # 50 tokens a minute
BUDGET = 100
COST = 6  # what the fake's answer to "hi" costs
MAX_TOKENS = 40


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@pytest.fixture
def received() -> list[bytes]:
    """The gzipped request bodies the upstream received, as they came."""
    return []


@pytest.fixture(params=["embedded", "redis"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path, private_redis: PrivateRedis,
            received: list[bytes]) -> Iterator[tuple[Server, AnthropicFake]]:
    store = "embedded" if request.param == "embedded" else private_redis.url
    claude = AnthropicFake(api_key=ANTHROPIC_KEY)
    with serving(inflating(claude.app, received)) as claude_url:
        root = tmp_path / "gw"
        root.mkdir()
        (root / "gateway.yaml").write_text(f"""
version: 1
settings: {{store: "{store}"}}
providers:
  claude: {{type: anthropic, base_url: "{claude_url}", api_key: "${{PH_ANTHROPIC_KEY}}"}}
  dead: {{type: openai, base_url: "http://127.0.0.1:{free_port()}/v1",
         api_key: "${{PH_ANTHROPIC_KEY}}"}}
deployments:
  sonnet: {{provider: claude, model: claude-sonnet-4-6, context_window: 200000,
           price: {{input: 1000000, output: 1000000}}}}
  nobody: {{provider: dead, model: gpt-nobody, context_window: 8192,
           price: {{input: 1000000, output: 1000000}}}}
routes: {{sonnet: {{deployment: sonnet}}, nobody: {{deployment: nobody}}}}
teams:
  app: {{budget: {{amount: {BUDGET}, period: total}}}}
keys:
  app: {{team: app, sha256: {_digest(APP_KEY)}}}
  tight: {{sha256: {_digest(TIGHT_KEY)}, limits: {{tpm: 50}}}}
  dev: {{admin: true, sha256: {_digest(DEV_KEY)}}}
passthrough:
  anthropic-raw: {{provider: claude, paths: ["/v1/messages"], methods: [POST]}}
  dead-raw: {{provider: dead, paths: ["/v1/chat/completions"], methods: [POST]}}
""")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PH_ANTHROPIC_KEY", ANTHROPIC_KEY)
            server = Server(root)
        try:
            server.wait_ready()
            yield server, claude
        finally:
            server.stop()


def _claude(server: Server, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=f"{server.base_url}/passthrough/anthropic-raw",
                               api_key=key, max_retries=0)


def _ask(client: anthropic.Anthropic, max_tokens: int = MAX_TOKENS) -> anthropic.types.Message:
    return client.messages.create(model="claude-sonnet-4-6", max_tokens=max_tokens,
                                  messages=[{"role": "user", "content": "hi"}])


def _team(server: Server) -> dict[str, float]:
    answer = httpx.get(f"{server.base_url}/admin/budgets",
                       headers={"authorization": f"Bearer {DEV_KEY}"})
    assert answer.status_code == 200, answer.text
    row: dict[str, float] = next(row for row in answer.json()["data"] if row["name"] == "app")
    return row


def _until(server: Server, held: bool, within_s: float) -> dict[str, float]:
    """The team's budget once something is held (``held``) or nothing is, waited for."""
    deadline = time.monotonic() + within_s
    while ((budget := _team(server))["held"] > 0) != held:
        assert time.monotonic() < deadline, f"held {budget['held']} after {within_s} s"
        time.sleep(0.02)
    return budget


def test_a_passthrough_holds_its_budget_before_its_answer_and_settles_to_its_usage(
        gateway: tuple[Server, AnthropicFake]) -> None:
    server, claude = gateway
    claude.script.actions.append(Action(delay_s=3.0))  # the first is in flight a while
    answers: list[anthropic.types.Message] = []
    with _claude(server, APP_KEY) as client:
        first = threading.Thread(target=lambda: answers.append(_ask(client)))
        first.start()
        try:
            holding = _until(server, held=True, within_s=2.5)
            assert MAX_TOKENS < holding["held"] < BUDGET  # its prompt and its output cap
            deadline = time.monotonic() + 2
            while not claude.script.requests:  # the first is upstream, waiting
                assert time.monotonic() < deadline
                time.sleep(0.02)
            # Its hold leaves too little for another: refused before anything is sent.
            refused = httpx.post(
                f"{server.base_url}/passthrough/anthropic-raw/v1/messages",
                headers={"x-api-key": APP_KEY, "anthropic-version": "2023-06-01"},
                json={"model": "claude-sonnet-4-6", "max_tokens": MAX_TOKENS,
                      "messages": [{"role": "user", "content": "hi"}]})
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "insufficient_quota"
            assert len(claude.script.requests) == 1
        finally:
            first.join(timeout=10)
        (answer,) = answers
        assert (answer.usage.input_tokens, answer.usage.output_tokens) == (4, 2)
        settled = _until(server, held=False, within_s=5)
        assert settled["spent"] == COST
        _ask(client)  # room again once the first settled
        assert _until(server, held=False, within_s=5)["spent"] == 2 * COST
    # A call the upstream never answers gives its hold back, and costs nothing.
    failed = httpx.post(f"{server.base_url}/passthrough/dead-raw/v1/chat/completions",
                        headers={"authorization": f"Bearer {APP_KEY}"},
                        json={"model": "gpt-nobody", "max_tokens": 10, "messages": []})
    assert failed.status_code == 502, failed.text
    assert _until(server, held=False, within_s=5)["spent"] == 2 * COST


def test_a_passthrough_over_its_tokens_per_minute_is_refused_before_it_is_sent(
        gateway: tuple[Server, AnthropicFake]) -> None:
    server, claude = gateway
    with _claude(server, TIGHT_KEY) as client:
        with pytest.raises(anthropic.RateLimitError) as refused:
            _ask(client)  # about 22 + 40 tokens held: more than the minute's 50
        assert refused.value.response.json()["error"]["code"] == "rate_limit_exceeded"
        assert claude.script.requests == []
        assert _ask(client, max_tokens=10).usage.output_tokens == 2  # about 32: it fits


def test_a_gzipped_body_holds_its_own_prompt_and_output_cap(
        gateway: tuple[Server, AnthropicFake], received: list[bytes]) -> None:
    """A body sent with Content-Encoding: gzip held the flat hold_tokens (4096), its JSON
    unread: a key of 50 tokens a minute was refused a request of about 32. It holds what
    its inflated copy says, and goes upstream as it came."""
    server, claude = gateway

    def send(words: str) -> httpx.Response:
        body = gzip.compress(json.dumps({
            "model": "claude-sonnet-4-6", "max_tokens": 10,
            "messages": [{"role": "user", "content": words}]}).encode())
        answer = httpx.post(f"{server.base_url}/passthrough/anthropic-raw/v1/messages",
                            content=body, headers={
                                "x-api-key": TIGHT_KEY, "anthropic-version": "2023-06-01",
                                "content-type": "application/json",
                                "content-encoding": "gzip"})
        if answer.status_code == 200:
            assert received[-1] == body
        return answer

    fits = send("hi")  # about 22 + 10
    assert fits.status_code == 200, fits.text
    assert fits.json()["usage"]["output_tokens"] == 2
    # Its prompt is counted inflated: about 114 tokens, where its 110 gzipped bytes are 28.
    refused = send("hi " * 120)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(claude.script.requests) == 1


def test_a_client_gone_while_the_upstream_is_slow_gives_its_hold_back(
        gateway: tuple[Server, AnthropicFake]) -> None:
    server, claude = gateway
    answer_s = 6.0
    claude.script.actions.append(Action(delay_s=answer_s))
    started = time.monotonic()

    def leave_early() -> None:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.base_url}/passthrough/anthropic-raw/v1/messages",
                       headers={"x-api-key": APP_KEY, "anthropic-version": "2023-06-01"},
                       json={"model": "claude-sonnet-4-6", "max_tokens": MAX_TOKENS,
                             "messages": [{"role": "user", "content": "hi"}]},
                       timeout=1.5)

    client = threading.Thread(target=leave_early)
    client.start()
    try:
        assert _until(server, held=True, within_s=1.4)["held"] > MAX_TOKENS
    finally:
        client.join(timeout=10)
    # Given back as the client left, not once the upstream answered (or timed out).
    assert _until(server, held=False, within_s=answer_s - 2.0)["spent"] == 0
    assert time.monotonic() - started < answer_s
    deadline = time.monotonic() + 5
    while not (lines := [line for line in _access_lines(server)
                         if line.get("route") == "passthrough:anthropic-raw"]):
        assert time.monotonic() < deadline, server.log
        time.sleep(0.05)
    assert lines[-1]["status"] == 499


def _access_lines(server: Server) -> list[dict[str, object]]:
    lines: list[dict[str, object]] = []
    for text in server.log.splitlines():
        if text.startswith("{"):
            lines.append(json.loads(text))
    return lines
