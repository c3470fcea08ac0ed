"""Streams over a real socket through a gateway's lifecycle: reloads that replace their
provider's client, and a shutdown.

The in-process reload tests cannot show this: httpx's ASGI transport reads a whole
response before it returns, so their reloads come after the stream has ended.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from ..fakes.openai_fake import OpenAIFake
from .server import Server

WORDS = " ".join(f"w{n}" for n in range(16))


def _config(url: str, up: str, other: str) -> str:
    """Two providers on one upstream; a change to one's header replaces its client."""
    sha = hashlib.sha256(DEV_KEY.encode()).hexdigest()
    key = "${FAKE_OPENAI_KEY}"
    return f"""
version: 1
providers:
  up: {{type: openai, base_url: "{url}/v1", api_key: "{key}", headers: {{x-r: "{up}"}}}}
  other: {{type: openai, base_url: "{url}/v1", api_key: "{key}", headers: {{x-r: "{other}"}}}}
deployments:
  gpt: {{provider: up, model: gpt-4o-mini, context_window: 128000,
        price: {{input: 1000000, output: 1000000}}}}
  gpt2: {{provider: other, model: gpt-4o-mini, context_window: 128000}}
routes:
  chat: {{deployment: gpt}}
  chat2: {{deployment: gpt2}}
keys:
  dev: {{admin: true, sha256: {sha}}}
"""


def _reload(server: Server, root: Path, text: str) -> None:
    old = httpx.get(f"{server.base_url}/health").json()["graph"]
    (root / "gateway.yaml").write_text(text)
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 15
    while httpx.get(f"{server.base_url}/health").json()["graph"] == old:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.05)


def _streaming(server: Server) -> openai.Stream[ChatCompletionChunk]:
    """A stream of route chat through ``server`` once it is up, its first chunk read."""
    server.wait_ready()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=DEV_KEY, max_retries=0)
    chunks = client.chat.completions.create(
        model="chat", stream=True, messages=[{"role": "user", "content": WORDS}])
    next(chunks)
    return chunks


def test_a_stream_outlives_two_reloads_the_first_of_which_kept_its_client(
    tmp_path: Path, openai_upstream: tuple[OpenAIFake, str]
) -> None:
    """The first reload keeps provider 'up' (its client goes on to the new graph); the
    second replaces it. Its client was closed once the graph just before had no
    requests left, under a stream of the first graph: 'provider up is unreachable'."""
    fake, url = openai_upstream
    fake.script.actions.append(Action(event_delay_s=0.2))
    root = tmp_path / "gw"
    root.mkdir()
    (root / "gateway.yaml").write_text(_config(url, "1", "1"))
    server = Server(root)
    try:
        chunks = _streaming(server)
        _reload(server, root, _config(url, "1", "2"))  # 'up' kept: its client moves on
        _reload(server, root, _config(url, "2", "2"))  # 'up' replaced
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.rstrip().endswith("w15")  # the whole answer, on the client it started with
    finally:
        server.stop()


def test_a_shutdown_gives_streams_in_flight_the_graceful_timeout_asked(
    tmp_path: Path, openai_upstream: tuple[OpenAIFake, str]
) -> None:
    """hypercorn's grace was fixed at 30 s: every deploy cut LLM streams longer than
    that, and a gateway that must stop sooner could not."""
    fake, url = openai_upstream
    fake.script.actions.append(Action(event_delay_s=0.5))  # 16 words: about 8 s
    root = tmp_path / "gw"
    root.mkdir()
    (root / "gateway.yaml").write_text(_config(url, "1", "1"))
    server = Server(root, "--graceful-timeout", "1")
    try:
        _streaming(server)
        stopped = time.monotonic()
        server.signal(signal.SIGTERM)
        server.process.wait(timeout=20)
        assert time.monotonic() - stopped < 6, server.log  # cut at about 1 s, not 30
    finally:
        server.stop()


def test_requests_a_shutdown_cuts_are_recorded_as_the_servers_cut_and_billed(
    tmp_path: Path, openai_upstream: tuple[OpenAIFake, str]
) -> None:
    """A stream the graceful timeout ran out on was recorded as 499 client_disconnected
    (the ledger, the metrics, the access log), as if its client had left, and an answer
    still waited for as 499 cancelled: each is the gateway's 503 shutdown, the stream
    billed what it streamed. A client that leaves during the grace is still a 499."""
    fake, url = openai_upstream
    fake.script.actions += [Action(event_delay_s=0.5), Action(event_delay_s=0.5),
                            Action(delay_s=30)]
    root = tmp_path / "gw"
    root.mkdir()
    (root / "gateway.yaml").write_text(_config(url, "1", "1"))
    server = Server(root, "--graceful-timeout", "2")
    try:
        cut = _streaming(server)
        left = _streaming(server)
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=DEV_KEY,
                               max_retries=0)
        waiting = threading.Thread(target=_unanswered, args=(client,), daemon=True)
        waiting.start()
        deadline = time.monotonic() + 15
        while len(fake.script.requests) < 3:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.05)
        server.signal(signal.SIGTERM)
        time.sleep(0.3)
        left.close()  # within the grace: its client's doing
        server.process.wait(timeout=20)
        cut.close()  # only now: the gateway cut it
        waiting.join(timeout=10)
    finally:
        server.stop()
    lines = [line for line in map(json.loads, (text for text in server.log.splitlines()
                                               if text.startswith("{")))
             if line.get("endpoint") == "chat"]
    assert sorted((line["stream"], line["status"], line["error"]) for line in lines) == [
        (False, 503, "shutdown"), (True, 499, "client_disconnected"),
        (True, 503, "shutdown")], server.log
    [shut] = [line for line in lines if line["stream"] and line["status"] == 503]
    assert shut["completion_tokens"] > 0 and shut["cost"] == pytest.approx(
        shut["prompt_tokens"] + shut["completion_tokens"])  # one currency unit a token
    with sqlite3.connect(root / "aigw.sqlite") as ledger:
        rows = ledger.execute("SELECT status, tokens_out FROM ledger WHERE NOT estimated "
                              "ORDER BY status, tokens_out").fetchall()
        # The answer still waited for: its call went out and was cut, so it is billed an
        # estimate too (its prompt), in a record of its own.
        cut_calls = ledger.execute("SELECT tokens_in, tokens_out FROM ledger WHERE "
                                   "estimated").fetchall()
    ledger.close()
    assert [status for status, _ in rows] == [499, 503, 503]
    assert rows[2][1] == shut["completion_tokens"]
    assert len(cut_calls) == 1 and cut_calls[0][0] > 0 and cut_calls[0][1] == 0


def _unanswered(client: openai.OpenAI) -> None:
    """A request whose answer never comes before the gateway stops (hypercorn answers one
    cut before its response started with a bare 500)."""
    with contextlib.suppress(openai.APIError):
        client.chat.completions.create(model="chat",
                                       messages=[{"role": "user", "content": "slow"}])
