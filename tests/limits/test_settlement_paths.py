"""Every way a request can end is settled and recorded once: a client that leaves
before its stream's first byte, usage that comes in a stream's first chunk, a prompt
held in its tool definitions, an adapter that fails in a way nobody planned for, and an
answer /v1/messages cannot pass on. Each test checked the store and the ledger through
the admin API, as an operator would."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aigw.compiler.graph import Provider
from aigw.runtime.app import create_app
from aigw.runtime.chat_request import ChatRequest
from aigw.runtime.live import Gateway
from aigw.runtime.providers import registry
from aigw.runtime.providers.base import ChatAdapter, ChatCall, ChatResult
from aigw.runtime.providers.echo import EchoAdapter
from aigw.runtime.tokens import TokenCounter

from ..fakes.scripted import Scripted, scripted_upstream
from ..fakes.serve import serving
from .conftest import KEYS, digest, limits_config

CHAT = "/v1/chat/completions"
DEV = {"Authorization": f"Bearer {KEYS['dev']}"}
ALICE = {"Authorization": f"Bearer {KEYS['alice']}"}


def _team(http: httpx.Client) -> tuple[float, float]:
    budgets = http.get("/admin/budgets", headers=DEV).json()["data"]
    team = next(b for b in budgets if b["name"] == "eng")
    return team["spent"], team["held"]


def _ledger(http: httpx.Client) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = http.get("/v1/costs/summary?group_by=key",
                                          headers=DEV).json()["data"]
    return rows


def test_a_client_gone_before_the_first_token_is_settled_and_recorded(
    tmp_path: Path, counter: TokenCounter
) -> None:
    """Served by hypercorn (ASGI 2.1), Starlette cancels a streaming response as soon as
    the client is gone, which can be before the body is first read. The stream's
    generators had not started, so their ``finally`` (settle, ledger, the in-flight
    gauge) never ran, and the team's hold stayed until it expired."""
    (tmp_path / "gateway.yaml").write_text(limits_config().replace(
        "local: {type: echo}", "local: {type: echo, latency: {first_token_ms: 400}}"))
    gateway = Gateway(tmp_path, counter)
    body = json.dumps({"model": "paid", "stream": True, "max_tokens": 5,
                       "messages": [{"role": "user", "content": "one two three"}]}).encode()
    with serving(create_app(gateway), ready_path="/health") as base:
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: aigw\r\n"
                        b"authorization: Bearer " + KEYS["alice"].encode() + b"\r\n"
                        b"content-type: application/json\r\ncontent-length: "
                        + str(len(body)).encode() + b"\r\n\r\n" + body)
            time.sleep(0.15)  # the gateway waits for the first token (400 ms): leave now
        with httpx.Client(base_url=base) as http:
            deadline = time.monotonic() + 5
            while _team(http)[1] and time.monotonic() < deadline:
                time.sleep(0.05)
            spent, held = _team(http)
            assert held == 0 and spent > 0  # what was answered before it was cut is billed
            [row] = _ledger(http)
            assert (row["key"], row["requests"], row["cost"]) == ("alice", 1, spent)
            metrics = http.get("/metrics", headers=DEV).text
            assert 'aigw_in_flight_requests{route="paid"} 0.0' in metrics


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    with scripted_upstream() as upstream:
        yield upstream


def _scripted_config(scripted: Scripted) -> str:
    """The limits config with deployment ``paid`` on the scripted OpenAI upstream."""
    return limits_config().replace(
        "local: {type: echo}",
        f'local: {{type: echo}}\n  up: {{type: openai_compatible, '
        f'base_url: "{scripted.base_url}/v1"}}',
    ).replace("paid: {provider: local, model: paid-1",
              "paid: {provider: up, model: paid-1, capabilities: [streaming, tools]")


async def test_usage_in_a_streams_first_chunk_is_billed(
    tmp_path: Path, counter: TokenCounter, scripted: Scripted
) -> None:
    """The attempt reads the first chunk to know the stream is up; the usage it carried
    was passed on but not billed (the gateway's own prompt count stood instead)."""
    (tmp_path / "gateway.yaml").write_text(_scripted_config(scripted))
    # Nothing to say but the usage: the adapter's first delta is the usage-only one.
    scripted.now([{"id": "x", "object": "chat.completion.chunk", "model": "paid-1",
                   "choices": [], "usage": {"prompt_tokens": 40, "completion_tokens": 0}},
                  "[DONE]"])
    gateway = Gateway(tmp_path, counter)
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://aigw.test") as http:
            response = await http.post(CHAT, headers=ALICE, json={
                "model": "paid", "stream": True, "max_tokens": 5,
                "messages": [{"role": "user", "content": "hi"}]})
            assert response.status_code == 200 and "[DONE]" in response.text
            rows = (await http.get("/v1/costs/summary?group_by=key", headers=DEV)).json()
            assert [(r["tokens_in"], r["cost"]) for r in rows["data"]] == [(40, 40.0)]
    finally:
        await gateway.aclose()


async def test_a_prompt_in_tool_definitions_is_held_against_the_budget(
    tmp_path: Path, counter: TokenCounter
) -> None:
    """The hold is the prompt's tokens plus the output cap; a prompt carried in the tool
    definitions (and the calls the conversation made) counted as nothing, so a team with
    100 left could start a request that bills thousands."""
    (tmp_path / "gateway.yaml").write_text(limits_config())
    gateway = Gateway(tmp_path, counter)
    schema = {"type": "object", "description": "word " * 300}
    request = {"model": "paid", "max_tokens": 5, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "lookup", "arguments": json.dumps({"q": "word " * 300})}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": schema}}]}
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://aigw.test") as http:
            response = await http.post(CHAT, headers=ALICE, json=request)
            assert response.status_code == 429, response.text
            assert response.json()["error"]["code"] == "insufficient_quota"
    finally:
        await gateway.aclose()
    counted = counter.count_request(ChatRequest.model_validate(request))
    assert counted > 600  # 300 words twice, and the rest


class _Failing(EchoAdapter):
    """An adapter whose call fails in a way no handler names (a bug, a library's own
    exception): the seam the gateway calls providers through, not its internals."""

    async def complete(self, call: ChatCall) -> ChatResult:
        raise RuntimeError("an unplanned failure")


async def test_an_unplanned_failure_after_admission_gives_the_hold_back(
    tmp_path: Path, counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(provider: Provider, counter: TokenCounter) -> ChatAdapter:
        return _Failing(provider, counter)

    monkeypatch.setattr(registry, "ADAPTERS", {**registry.ADAPTERS, "echo": failing})
    (tmp_path / "gateway.yaml").write_text(limits_config())
    gateway = Gateway(tmp_path, counter)
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://aigw.test") as http:
            response = await http.post(CHAT, headers=ALICE, json={
                "model": "paid", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
            assert response.status_code == 500
            assert response.json()["error"]["code"] == "internal_error"
            budgets = (await http.get("/admin/budgets", headers=DEV)).json()["data"]
            team = next(b for b in budgets if b["name"] == "eng")
            assert (team["spent"], team["held"]) == (0, 0)  # given back, not held 10 minutes
            rows = (await http.get("/v1/costs/summary?group_by=key", headers=DEV)).json()
            assert [(r["requests"], r["errors"]) for r in rows["data"]] == [(1, 1)]
            metrics = (await http.get("/metrics", headers=DEV)).text
            assert 'aigw_in_flight_requests{route="paid"} 0.0' in metrics
    finally:
        await gateway.aclose()


async def test_an_answer_messages_cannot_pass_on_is_recorded_as_the_error_it_is(
    tmp_path: Path, counter: TokenCounter, scripted: Scripted
) -> None:
    """/v1/messages got a tool call whose arguments are not a JSON object: the client
    gets a 502, and the ledger said 200 (the request was recorded before the answer was
    turned into Anthropic's shape). It is billed either way: the provider was paid."""
    (tmp_path / "gateway.yaml").write_text(_scripted_config(scripted))
    scripted.now({"id": "x", "object": "chat.completion", "model": "paid-1", "choices": [
        {"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "lookup", "arguments": "not json"}}]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
    gateway = Gateway(tmp_path, counter)
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://aigw.test") as http:
            response = await http.post("/v1/messages", headers=ALICE, json={
                "model": "paid", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"name": "lookup", "input_schema": {"type": "object"}}]})
            assert response.status_code == 502, response.text
            rows = (await http.get("/v1/costs/summary?group_by=key", headers=DEV)).json()
            assert [(r["requests"], r["errors"], r["cost"]) for r in rows["data"]] == [
                (1, 1, 15.0)]
    finally:
        await gateway.aclose()


async def test_end_users_of_different_teams_never_share_a_budget(
    tmp_path: Path, counter: TokenCounter
) -> None:
    """A user's budget is kept under its owner's name and the user's, joined by "/";
    names may hold "/", so user "x/victim" of team "eng" was the user "victim" of team
    "eng/x", and a client could spend another team's user's budget by naming it."""
    carol = "sk-carol-0004"
    config = limits_config(
        extra_keys=f"  carol: {{team: eng/x, sha256: {digest(carol)}}}\n"
    ).replace("  ops: {}\n", "  ops: {}\n  eng/x:\n    per_user: {budget: {amount: 40, "
              "period: day}}\n")
    (tmp_path / "gateway.yaml").write_text(config)
    gateway = Gateway(tmp_path, counter)
    ask = {"model": "paid", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://aigw.test") as http:
            long = {**ask, "messages": [{"role": "user", "content": "word " * 25}]}
            spent = await http.post(CHAT, headers=ALICE, json={**long, "user": "x/victim"})
            assert spent.status_code == 200, spent.text  # about 37 of user x/victim's 40
            victim = await http.post(CHAT, json={**ask, "user": "victim"},
                                     headers={"Authorization": f"Bearer {carol}"})
            # carol's user has all 40 left (shared, 37 were gone and 12 more held: a 429)
            assert victim.status_code == 200, victim.text
    finally:
        await gateway.aclose()


def test_a_stream_the_client_cut_is_charged_to_the_deployments_tpm_and_counted_an_error(
    tmp_path: Path, counter: TokenCounter
) -> None:
    """The cut reaches the innermost stream first: the deployment's own tpm was settled
    with the prompt alone, before the output sent was counted (an upstream's tpm could
    be passed by clients that leave), and the ledger was written with status 200 before
    the stream knew the client had gone (the errors column counted none)."""
    (tmp_path / "gateway.yaml").write_text(limits_config().replace(
        "local: {type: echo}", "local: {type: echo, latency: {per_token_ms: 20}}").replace(
        "price: {input: 1000000, output: 1000000}}",
        "price: {input: 1000000, output: 1000000}, limits: {tpm: 120}}", 1))
    gateway = Gateway(tmp_path, counter)

    def ask(words: int, stream: bool) -> dict[str, object]:
        return {"model": "paid", "stream": stream, "max_tokens": 50,
                "messages": [{"role": "user", "content": " ".join(["word"] * words)}]}

    with serving(create_app(gateway), ready_path="/health") as base, \
            httpx.Client(base_url=base, headers=DEV) as http:  # team ops: no budget
        with http.stream("POST", CHAT, json=ask(40, True)) as response:
            chunks = 0
            for line in response.iter_lines():
                chunks += '"content":"word' in line or '"content":" word' in line
                if chunks == 25:
                    break  # and leave
        deadline = time.monotonic() + 5
        while not _ledger(http) and time.monotonic() < deadline:
            time.sleep(0.05)
        [row] = _ledger(http)
        assert row["errors"] == 1, row  # 499: the client did not see it to its end
        sent = row["tokens_out"]
        assert sent >= 20, row  # what it was sent, not the prompt alone
        # The deployment's bucket (120 a minute) now has about 120 - prompt - sent; one
        # that was charged the prompt alone would have ``sent`` more. Ask for the middle.
        prompt = row["tokens_in"]
        middle = 120 - prompt - sent // 2
        second = http.post(CHAT, json=ask(40 + (middle - 50) - prompt, False),
                           headers={"x-aigw-deadline-ms": "500"})  # not waiting for it
        assert second.status_code in (429, 503, 504), second.text
