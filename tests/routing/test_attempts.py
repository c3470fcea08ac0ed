"""The attempt loop against scripted upstream failures: the exact sequence of calls."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from aigw.compiler.graph import Provider
from aigw.runtime.chat_request import ChatRequest
from aigw.runtime.providers import registry
from aigw.runtime.providers.base import ChatAdapter, ChatCall, ChatDelta
from aigw.runtime.providers.echo import EchoAdapter
from aigw.runtime.routing.state import RoutingState
from aigw.runtime.tokens import TokenCounter

from ..fakes.brain import Action
from ..providers.conftest import GatewayFactory
from .conftest import Fleet, JumpingClock

CHAT = "/v1/chat/completions"


def _config(fleet: Fleet, body: str, timeout_s: float = 5.0, price: str = "") -> str:
    """``price``: every deployment's (a YAML flow mapping), where there is one."""
    priced = f", price: {price}" if price else ""
    deployments = "\n".join(
        f"  {name}: {{provider: p-{name}, model: model-{name}, context_window: "
        f"{1000 if name != 'big' else 100000}, capabilities: [streaming, tools]{priced}}}"
        for name in fleet.fakes
    )
    return f"{fleet.providers_yaml(timeout_s)}\ndeployments:\n{deployments}\n{body}"


def _ask(text: str = "hello", **extra: object) -> dict[str, object]:
    return {"model": "r", "messages": [{"role": "user", "content": text}], **extra}


async def _stream_text(client: httpx.AsyncClient, payload: dict[str, object]) -> tuple[
        httpx.Response, str, list[dict[str, object]]]:
    async with client.stream("POST", CHAT, json={**payload, "stream": True}) as response:
        raw = (await response.aread()).decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    parsed = [json.loads(e) for e in events if e != "[DONE]"]
    text = "".join(
        c["choices"][0]["delta"].get("content", "") for c in parsed if c.get("choices")
    )
    return response, text, parsed


async def test_server_error_is_retried_then_the_next_member_serves(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b], retry: {attempts: 1, backoff_ms: 1}}
routes:
  r: {group: g}
"""))
    fleet.fakes["a"].script.actions += [Action(status=500), Action(status=503)]
    response = await client.post(CHAT, json=_ask())
    assert response.status_code == 200, response.text
    assert fleet.calls() == ["a", "a", "b"]
    assert response.headers["x-aigw-deployment"] == "b"
    assert response.headers["x-aigw-attempts"] == "3"
    assert response.json()["choices"][0]["message"]["content"] == "b: hello"


async def test_rate_limited_member_is_not_retried_when_another_can_serve(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b], retry: {attempts: 3}}
routes:
  r: {group: g}
"""))
    fleet.fakes["a"].script.actions.append(Action(status=429, headers={"retry-after": "30"}))
    response = await client.post(CHAT, json=_ask())
    assert response.status_code == 200
    assert fleet.calls() == ["a", "b"]


async def test_retry_waits_for_retry_after(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a], retry: {attempts: 1, backoff_ms: 1}}
routes:
  r: {group: g}
"""))
    fleet.fakes["a"].script.actions.append(Action(status=503, headers={"retry-after": "0.4"}))
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.post(CHAT, json=_ask())
    assert response.status_code == 200
    assert fleet.calls() == ["a", "a"]
    assert loop.time() - started >= 0.4


async def test_timeout_fails_over(fleet: Fleet, make_gateway: GatewayFactory) -> None:
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b], retry: {attempts: 0}}
routes:
  r: {group: g}
""", timeout_s=0.3))
    fleet.fakes["a"].script.actions.append(Action(delay_s=2.0))
    response = await client.post(CHAT, json=_ask())
    assert response.status_code == 200
    assert fleet.calls() == ["a", "b"]


async def test_connection_refused_fails_over(make_gateway: GatewayFactory, fleet: Fleet) -> None:
    client = await make_gateway(f"""
{fleet.providers_yaml()}
  dead: {{type: openai_compatible, base_url: "http://127.0.0.1:9/v1"}}
deployments:
  gone: {{provider: dead, model: m, context_window: 1000}}
  a: {{provider: p-a, model: model-a, context_window: 1000}}
groups:
  g: {{members: [gone, a], retry: {{attempts: 1, backoff_ms: 1}}}}
routes:
  r: {{group: g}}
""")
    response = await client.post(CHAT, json=_ask())
    assert response.status_code == 200
    assert response.headers["x-aigw-attempts"] == "3"  # gone, gone (retry), a
    assert fleet.calls() == ["a"]


async def test_slow_first_byte_on_a_stream_fails_over_before_anything_is_sent(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b], retry: {attempts: 0}}
routes:
  r: {group: g}
""", timeout_s=0.3))
    fleet.fakes["a"].script.actions.append(Action(delay_s=2.0))
    response, text, _ = await _stream_text(client, _ask("one two"))
    assert response.status_code == 200
    assert response.headers["x-aigw-deployment"] == "b"
    assert text == "b: one two"
    assert fleet.calls() == ["a", "b"]


async def test_disconnect_mid_stream_ends_in_an_error_event_without_failover(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b]}
routes:
  r: {group: g}
"""))
    fleet.fakes["a"].script.actions.append(Action(cut_stream_after=2))
    response, text, events = await _stream_text(client, _ask("one two three"))
    assert response.status_code == 200
    assert text == "a:"  # the part that reached the client before the cut
    assert "error" in events[-1]
    assert fleet.calls() == ["a"]  # no second answer: the client is not billed twice


async def test_no_call_goes_to_a_member_whose_window_cannot_hold_the_prompt(
    make_gateway: GatewayFactory, fleet: Fleet
) -> None:
    client = await make_gateway(f"""
{fleet.providers_yaml()}
deployments:
  a: {{provider: p-a, model: small, context_window: 1000}}
  b: {{provider: p-b, model: large, context_window: 100000}}
groups:
  small: {{members: [a], fallbacks: {{on_context_window: [large]}}}}
  large: {{members: [b]}}
routes:
  r: {{group: small}}
""")
    response = await client.post(CHAT, json=_ask("word " * 2000))
    assert response.status_code == 200
    assert fleet.calls() == ["b"]
    none_fit = await client.post(CHAT, json=_ask("word " * 200000))
    assert none_fit.status_code == 422
    assert "holds 1000 tokens" in none_fit.json()["error"]["message"]
    assert fleet.calls() == ["b"]


@pytest.mark.parametrize(("route", "extra", "status", "param"), [
    ("plain", {"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ("plain", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     400, "messages"),
    ("plain", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}}}}, 400, "response_format"),
    ("plain", {"max_tokens": 200}, 400, "max_tokens"),
    ("plain", {"max_completion_tokens": 200}, 400, "max_completion_tokens"),
    ("roomy", {"max_tokens": 1000}, 400, "max_tokens"),  # fills the window: no trim helps
    # Members unfit for different things: a shorter prompt lets b serve.
    ("mixed", {"tools": [{"type": "function", "function": {"name": "f"}}],
               "messages": [{"role": "user", "content": "word " * 2000}]},
     422, "messages"),
    # ... a smaller max_tokens lets b serve, whatever a lacks.
    ("mixed", {"tools": [{"type": "function", "function": {"name": "f"}}],
               "max_tokens": 700}, 400, "max_tokens"),
])
async def test_a_request_no_member_can_take_names_the_parameter_to_change(
    make_gateway: GatewayFactory, fleet: Fleet, route: str, extra: dict[str, object],
    status: int, param: str,
) -> None:
    """A missing capability or a max_tokens past every member's output was a 422
    context_length_exceeded: an app that trims its history on that trimmed for ever."""
    client = await make_gateway(f"""
{fleet.providers_yaml()}
deployments:
  a: {{provider: p-a, model: small, context_window: 1000, max_output_tokens: 100}}
  b: {{provider: p-b, model: tooled, context_window: 1000, max_output_tokens: 500,
       capabilities: [tools]}}
  c: {{provider: p-c, model: roomy, context_window: 1000}}
groups:
  plain: {{members: [a]}}
  mixed: {{members: [a, b]}}
routes:
  plain: {{group: plain}}
  mixed: {{group: mixed}}
  roomy: {{deployment: c}}
""")
    response = await client.post(CHAT, json={**_ask(), "model": route, **extra})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    expected = "context_length_exceeded" if status == 422 else "invalid_request"
    assert (error["param"], error["code"], error["type"]) == (
        param, expected, "invalid_request_error")
    assert fleet.calls() == []


async def test_a_prompt_too_long_beside_a_disabled_member_takes_the_context_fallback(
    make_gateway: GatewayFactory, fleet: Fleet
) -> None:
    """A group of a small deployment and one whose provider is disabled (its key unset):
    a prompt too long for the small one was a 503, as the disabled member made the
    tier's failure an "error"; it could not have served either way."""
    client = await make_gateway(f"""
{fleet.providers_yaml()}
  off: {{type: openai, api_key: "${{NOT_SET_ANYWHERE}}"}}
deployments:
  a: {{provider: p-a, model: small, context_window: 1000}}
  b: {{provider: p-b, model: large, context_window: 100000}}
  cloud: {{provider: off, model: gpt, context_window: 128000}}
groups:
  small: {{members: [a, cloud], fallbacks: {{on_error: [], on_context_window: [large]}}}}
  large: {{members: [b]}}
routes:
  r: {{group: small}}
""")
    response = await client.post(CHAT, json=_ask("word " * 2000))
    assert response.status_code == 200, response.text
    assert fleet.calls() == ["b"]


async def test_context_error_with_unexpected_wording_still_takes_the_context_fallback(
    make_gateway: GatewayFactory, fleet: Fleet
) -> None:
    client = await make_gateway(f"""
{fleet.providers_yaml()}
deployments:
  a: {{provider: p-a, model: small, context_window: 1000}}
  b: {{provider: p-b, model: large, context_window: 100000}}
  c: {{provider: p-c, model: other, context_window: 1000}}
groups:
  small: {{members: [a], fallbacks: {{on_error: [other], on_context_window: [large]}}}}
  large: {{members: [b]}}
  other: {{members: [c]}}
routes:
  r: {{group: small}}
""")
    fleet.fakes["a"].script.actions.append(Action(status=400, body={"error": {
        "message": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 1000",
        "type": "BadRequestError", "param": None, "code": 400}}))
    response = await client.post(CHAT, json=_ask("word " * 850))
    assert response.status_code == 200, response.text
    assert fleet.calls() == ["a", "b"]


async def test_a_bad_request_is_not_retried_anywhere(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b], retry: {attempts: 2}}
routes:
  r: {group: g}
"""))
    fleet.fakes["a"].script.actions.append(Action(status=400, body={"error": {
        "message": "Invalid 'temperature'", "type": "invalid_request_error",
        "param": "temperature", "code": None}}))
    response = await client.post(CHAT, json=_ask())
    assert response.status_code == 400
    assert fleet.calls() == ["a"]


async def test_fallback_by_error_class(fleet: Fleet, make_gateway: GatewayFactory) -> None:
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a], retry: {attempts: 0}, fallbacks: {on_error: [gb], on_rate_limit: [gc]}}
  gb: {members: [b]}
  gc: {members: [c]}
routes:
  r: {group: g}
"""))
    fleet.fakes["a"].script.actions.append(Action(status=429, headers={"retry-after": "60"}))
    assert (await client.post(CHAT, json=_ask())).headers["x-aigw-deployment"] == "c"
    fleet.fakes["a"].script.actions.append(Action(status=500))
    assert (await client.post(CHAT, json=_ask())).headers["x-aigw-deployment"] == "b"
    assert fleet.calls() == ["a", "c", "a", "b"]


async def test_attempt_cap_bounds_the_loop(fleet: Fleet, make_gateway: GatewayFactory) -> None:
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b, c], retry: {attempts: 0}}
routes:
  r: {group: g, max_attempts: 2}
"""))
    for name in ("a", "b", "c"):
        fleet.fakes[name].script.actions.append(Action(status=500))
    response = await client.post(CHAT, json=_ask())
    assert response.status_code == 502
    assert "provider 'p-b' failed" in response.json()["error"]["message"]
    assert fleet.calls() == ["a", "b"]


async def test_at_the_attempt_cap_the_upstreams_error_comes_back_at_once(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b], retry: {attempts: 2, backoff_ms: 400, max_backoff_ms: 400}}
  solo: {members: [a], retry: {attempts: 3, backoff_ms: 1}}
routes:
  r: {group: g, max_attempts: 1}
  s: {group: solo, max_attempts: 2}
"""))
    fleet.fakes["a"].script.actions.append(Action(status=500))
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.post(CHAT, json=_ask())
    assert response.status_code == 502
    assert "provider 'p-a' failed" in response.json()["error"]["message"]
    assert loop.time() - started < 0.3  # no backoff waited for a retry the cap forbids
    assert fleet.calls() == ["a"]
    fleet.fakes["a"].script.actions += [
        Action(status=429, headers={"retry-after": "0.2"}) for _ in range(2)]
    response = await client.post(CHAT, json={**_ask(), "model": "s"})
    assert response.status_code == 429  # the provider's answer, with its Retry-After
    assert response.headers["retry-after"] == "1"
    assert fleet.calls() == ["a", "a", "a"]


async def test_at_the_attempt_cap_on_a_groups_last_member_no_fallback_is_entered(
    fleet: Fleet, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The fallback group was still entered (in the request's routing trace with its
    members, as if about to be tried, its Cedar policies evaluated) before the loop
    noticed that no attempt was left (found by a review)."""
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b], retry: {attempts: 0}, fallbacks: {on_error: [spare]}}
  spare: {members: [c]}
routes:
  r: {group: g, max_attempts: 2}
"""))
    for name in ("a", "b"):
        fleet.fakes[name].script.actions.append(Action(status=500))
    with caplog.at_level(logging.DEBUG, logger="aigw.routing"):
        response = await client.post(CHAT, json=_ask())
    assert response.status_code == 502
    assert "provider 'p-b' failed" in response.json()["error"]["message"]
    assert fleet.calls() == ["a", "b"]
    [trace] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("route r")]
    assert trace.split(" | ") == [
        "route r trace: g (route, priority): a, b", "attempt 1: a", "  a failed: upstream_error",
        "attempt 2: b", "  b failed: upstream_error", "route 'r' used its 2 attempts"]


async def test_a_member_skipped_for_its_own_quota_is_not_an_attempt(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    config = _config(fleet, """
groups:
  g: {members: [a, b], retry: {attempts: 0}}
routes:
  r: {group: g, max_attempts: 1}
""").replace("model: model-a,", "model: model-a, limits: {rpm: 1},")
    client = await make_gateway(config)
    assert (await client.post(CHAT, json=_ask())).headers["x-aigw-deployment"] == "a"
    response = await client.post(CHAT, json=_ask())  # a is at its rpm: b, as attempt 1
    assert response.status_code == 200, response.text
    assert response.headers["x-aigw-deployment"] == "b"
    assert response.headers["x-aigw-attempts"] == "1"
    assert fleet.calls() == ["a", "b"]
    # Nor is it a failed upstream attempt: none went out.
    metrics = (await client.get("/metrics")).text
    assert not [line for line in metrics.splitlines()
                if line.startswith("aigw_upstream_failures_total{")], metrics


async def test_a_member_refusing_a_parameter_is_not_an_attempt(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    """An Anthropic member refuses ``seed`` before any call goes out: it was counted as
    one of the route's max_attempts (and in x-aigw-attempts), so with max_attempts 1 the
    client got the refusal's 400 while the next member could serve."""
    client = await make_gateway(f"""
{fleet.providers_yaml()}
  ant: {{type: anthropic, base_url: "http://127.0.0.1:9", api_key: "sk-ant-never-called"}}
deployments:
  claude: {{provider: ant, model: claude-x, context_window: 100000}}
  a: {{provider: p-a, model: model-a, context_window: 1000}}
groups:
  g: {{members: [claude, a], retry: {{attempts: 0}}}}
routes:
  r: {{group: g, max_attempts: 1}}
""")
    response = await client.post(CHAT, json=_ask(seed=7))
    assert response.status_code == 200, response.text
    assert response.headers["x-aigw-deployment"] == "a"
    assert response.headers["x-aigw-attempts"] == "1"
    assert fleet.calls() == ["a"]


async def test_deadline_header_shortens_the_route_deadline(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b], retry: {attempts: 0}}
routes:
  r: {group: g}
"""))
    fleet.fakes["a"].script.actions.append(Action(delay_s=3.0))
    response = await client.post(CHAT, json=_ask(), headers={"x-aigw-deadline-ms": "500"})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert "b" not in fleet.calls()  # the deadline ended the loop: no fallback was tried


async def test_a_deadline_passing_between_attempts_answers_with_the_last_upstream_error(
    fleet: Fleet, make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The deadline came after a member failed, before another attempt could start (the
    next member's, a retry's after its wait): the client got a 504 'passed its deadline'
    in place of what the upstream answered, and the metrics and the log line counted a
    timeout that no upstream had (found by a review)."""
    clock = JumpingClock()
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b], retry: {attempts: 0}}
  solo: {members: [a], retry: {attempts: 1, backoff_ms: 1}}
routes:
  r: {group: g}
  s: {group: solo}
"""), routing=RoutingState(clock))
    assert (await client.post(CHAT, json=_ask())).status_code == 200  # all loaded
    ten_s = {"x-aigw-deadline-ms": "10000"}
    fleet.fakes["a"].script.actions.append(Action(status=500, delay_s=0.8))
    clock.jump(after_s=0.4, by_s=60)  # while a answers: the 10 s pass
    caplog.clear()  # the first request's line, where an earlier test left the level at INFO
    with caplog.at_level(logging.INFO, logger="aigw.access"):
        response = await client.post(CHAT, json=_ask(), headers=ten_s)
    assert response.status_code == 502, response.text
    assert response.json()["error"] == {
        "message": "provider 'p-a' failed: scripted failure 500 (the request's deadline "
                   "left no time for another attempt)",
        "type": "api_error", "param": None, "code": "upstream_error"}
    assert fleet.calls() == ["a", "a"]  # b: no time left
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "aigw.access"]
    assert (line["status"], line["error"], line["attempts"]) == (502, "upstream_error", 1)
    metrics = (await client.get("/metrics")).text
    assert re.findall(r'aigw_requests_total\{[^}]*route="r"[^}]*status="(\d+)"', metrics) == [
        "200", "502"]

    # A 503 whose Retry-After the deadline allows, and which the wait then overruns.
    fleet.fakes["a"].script.actions.append(Action(status=503, headers={"retry-after": "0.8"}))
    clock.jump(after_s=0.4, by_s=60)
    response = await client.post(CHAT, json={**_ask(), "model": "s"}, headers=ten_s)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "upstream_overloaded"
    assert response.json()["error"]["message"].endswith(
        "(the request's deadline left no time for another attempt)")
    assert response.headers["retry-after"] == "1"
    assert fleet.calls() == ["a", "a", "a"]


async def test_a_short_deadline_does_not_open_a_healthy_deployments_circuit(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
settings:
  circuit_breaker: {consecutive_failures: 2, cooldown_s: 30}
groups:
  g: {members: [a], retry: {attempts: 0}}
routes:
  r: {group: g}
"""))
    fleet.fakes["a"].script.actions += [Action(delay_s=0.3) for _ in range(3)]
    impatient = [  # a answers in 300 ms; these clients will not wait 50
        await client.post(CHAT, json=_ask(), headers={"x-aigw-deadline-ms": "50"})
        for _ in range(3)
    ]
    status = (await client.get("/admin/status")).json()["deployments"]["a"]
    assert (status["circuit"], status["failures"]) == ("closed", 0)
    assert [response.status_code for response in impatient] == [504] * 3
    assert "passed its deadline waiting for deployment 'a'" in impatient[-1].text
    response = await client.post(CHAT, json=_ask())  # anyone else is still served
    assert response.status_code == 200, response.text


async def test_a_deadline_cutting_a_call_short_says_the_upstream_error_before_it(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    """a failed with a 500, then the deadline ran out while b was answering: the client
    was told only "passed its deadline waiting for deployment 'b'", never what a said."""
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b], retry: {attempts: 0}}
routes:
  r: {group: g}
"""))
    fleet.fakes["a"].script.actions.append(Action(status=500))
    fleet.fakes["b"].script.actions.append(Action(delay_s=3.0))
    response = await client.post(CHAT, json=_ask(), headers={"x-aigw-deadline-ms": "800"})
    assert response.status_code == 504, response.text
    assert response.json()["error"] == {
        "message": "route 'r' passed its deadline waiting for deployment 'b'; before that, "
                   "provider 'p-a' failed: scripted failure 500",
        "type": "api_error", "param": None, "code": "upstream_timeout"}
    assert fleet.calls() == ["a", "b"]


async def test_hedge_takes_the_first_answer_and_cancels_the_other(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b]}
routes:
  r: {group: g, hedge_after_ms: 100}
"""))
    fleet.fakes["a"].script.actions.append(Action(delay_s=1.5))
    fleet.fakes["b"].script.actions.append(Action(delay_s=0.4))
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await client.post(CHAT, json=_ask())
    assert response.status_code == 200
    assert response.headers["x-aigw-deployment"] == "b"
    assert loop.time() - started < 1.2  # did not wait for the slow one
    assert fleet.calls() == ["a", "b"]
    usage = response.json()["usage"]
    assert usage["completion_tokens"] == len(["b:", "hello"])  # one answer billed
    # The two calls overlapped: counted once, not each (their sum passed the request's
    # whole time, and the gateway's own overhead read 0).
    assert 0 < float(response.headers["x-aigw-overhead-ms"]) < 100


async def test_calls_cut_short_are_billed_an_estimate(
    fleet: Fleet, make_gateway: GatewayFactory, counter: TokenCounter
) -> None:
    """A call cut by its timeout, or a hedge's loser cancelled, had gone out: its provider
    billed at least the prompt. Nothing recorded it, so the key's budget and the ledger
    counted the answer that served only. Each is now billed the prompt tokens aigw
    counted for its hold (no output came), in an estimated ledger record of its own
    (no request of its own), and charged to the same budget: also when the request
    failed (its deadline cut the call)."""
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b], retry: {attempts: 0}}
routes:
  r: {group: g}
  hedged: {group: g, hedge_after_ms: 50}
""", timeout_s=0.3, price="{input: 1000000, output: 1000000}"),
        dev="budget: {amount: 100000, period: total}")  # a unit a token: costs are counts
    prompt = counter.count_request(ChatRequest.model_validate(_ask()))
    fleet.fakes["a"].script.actions.append(Action(delay_s=2.0))  # cut by its 0.3 s timeout
    response = await client.post(CHAT, json=_ask())
    assert response.headers["x-aigw-deployment"] == "b", response.text
    # a's first byte is due in 2 s: b, started after 50 ms, wins and a is cancelled.
    fleet.fakes["a"].script.actions += [Action(delay_s=2.0), Action(delay_s=2.0)]
    response = await client.post(CHAT, json={**_ask(), "model": "hedged"})
    assert response.status_code == 200, response.text
    assert response.headers["x-aigw-deployment"] == "b", response.text
    _, text, _ = await _stream_text(client, {**_ask(), "model": "hedged"})
    assert text == "b: hello"
    fleet.fakes["a"].script.actions.append(Action(delay_s=2.0))
    response = await client.post(CHAT, json=_ask(), headers={"x-aigw-deadline-ms": "150"})
    assert response.status_code == 504, response.text
    assert fleet.calls() == ["a", "b"] * 3 + ["a"]

    rows = {row["deployment"]: row for row in (await client.get(
        "/v1/costs/summary?group_by=deployment")).json()["data"]}
    assert rows["a"] == {**rows["a"], "requests": 0, "errors": 0, "tokens_in": 4 * prompt,
                         "tokens_out": 0, "cost": 4 * prompt, "estimated_cost": 4 * prompt}
    assert (rows["b"]["requests"], rows["b"]["estimated_cost"]) == (3, 0)
    assert (rows[None]["requests"], rows[None]["errors"], rows[None]["cost"]) == (1, 1, 0)
    total = rows["a"]["cost"] + rows["b"]["cost"]
    [budget] = (await client.get("/admin/budgets")).json()["data"]
    assert (budget["name"], budget["spent"], budget["held"]) == ("dev", total, 0)
    metrics = (await client.get("/metrics")).text
    assert re.search(r'aigw_cost_total\{deployment="a",route="r",team="_none"\} '
                     f"{2.0 * prompt}", metrics), metrics  # the 200 and the 504


async def test_a_request_cancelled_during_a_hedge_gives_its_attempts_back(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    """The race's tasks went on without the request: a streamed winner kept its
    half-open circuit's probe (held until its stream ends, which nobody read), and the
    deployment was skipped as "circuit open" until a restart (found by a review)."""
    client = await make_gateway(_config(fleet, """
settings:
  circuit_breaker: {consecutive_failures: 1, cooldown_s: 0.3}
groups:
  g: {members: [a, b], retry: {attempts: 0}}
  solo: {members: [a], retry: {attempts: 0}}
routes:
  r: {group: g, hedge_after_ms: 100}
  s: {group: solo}
"""))
    fleet.fakes["a"].script.actions.append(Action(status=500))
    assert (await client.post(CHAT, json=_ask())).headers["x-aigw-deployment"] == "b"
    await asyncio.sleep(0.4)  # a's circuit: open, then half-open
    fleet.fakes["a"].script.actions.append(Action(delay_s=0.8))  # a takes the probe
    fleet.fakes["b"].script.actions.append(Action(delay_s=0.8))
    call = asyncio.create_task(client.post(CHAT, json=_ask(stream=True)))
    await asyncio.sleep(0.4)  # the race is on
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await asyncio.sleep(1.0)  # the slow answers would have come by now
    response = await client.post(CHAT, json={**_ask(), "model": "s"})
    assert response.status_code == 200, response.text
    assert response.headers["x-aigw-deployment"] == "a"


async def test_a_first_member_failing_before_the_hedge_delay_is_retried_then_the_next_serves(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b], retry: {attempts: 1, backoff_ms: 1}}
  once: {members: [a, b], retry: {attempts: 0}}
routes:
  r: {group: g, hedge_after_ms: 500}
  r0: {group: once, hedge_after_ms: 500}
"""))
    fleet.fakes["a"].script.actions.append(Action(status=500))
    response = await client.post(CHAT, json=_ask())  # no race began: a plain retry
    assert response.status_code == 200, response.text
    assert fleet.calls() == ["a", "a"]
    fleet.fakes["a"].script.actions.append(Action(status=500))
    response = await client.post(CHAT, json={**_ask(), "model": "r0"})
    assert response.status_code == 200, response.text
    assert response.headers["x-aigw-deployment"] == "b"  # the partner, never started, serves
    assert fleet.calls() == ["a", "a", "a", "b"]


async def test_when_both_hedged_members_fail_each_goes_on_with_its_retries(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    """The partner's failed call in the race was all it got: hedging, there for latency,
    took the group's retries away from it (found by a review)."""
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b, c], retry: {attempts: 1, backoff_ms: 1}}
routes:
  r: {group: g, hedge_after_ms: 100}
  capped: {group: g, hedge_after_ms: 100, max_attempts: 3}
"""))
    fleet.fakes["a"].script.actions += [Action(status=503, delay_s=0.4), Action(status=500)]
    fleet.fakes["b"].script.actions += [Action(status=500), Action(status=502)]
    response = await client.post(CHAT, json=_ask())
    assert response.status_code == 200, response.text
    assert response.headers["x-aigw-attempts"] == "5"
    assert fleet.calls() == ["a", "b", "a", "b", "c"]  # b retried after a, as a member
    # Within the route's max_attempts: the race's two calls and a's retry are all.
    fleet.fakes["a"].script.actions += [Action(status=503, delay_s=0.4), Action(status=500)]
    fleet.fakes["b"].script.actions.append(Action(status=500))
    response = await client.post(CHAT, json={**_ask(), "model": "capped"})
    assert response.status_code == 502, response.text
    assert "provider 'p-a' failed" in response.json()["error"]["message"]
    assert fleet.calls()[5:] == ["a", "b", "a"]


async def test_breaker_opens_probes_and_closes(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
settings:
  circuit_breaker: {consecutive_failures: 2, cooldown_s: 0.3}
groups:
  g: {members: [a, b], retry: {attempts: 0}}
routes:
  r: {group: g}
"""))
    fleet.fakes["a"].script.actions += [Action(status=500), Action(status=500)]
    for _ in range(2):
        assert (await client.post(CHAT, json=_ask())).headers["x-aigw-deployment"] == "b"
    status = (await client.get("/admin/status")).json()
    assert status["deployments"]["a"]["circuit"] == "open"
    assert (await client.post(CHAT, json=_ask())).headers["x-aigw-deployment"] == "b"
    assert fleet.calls() == ["a", "b", "a", "b", "b"]  # open: a is skipped

    await asyncio.sleep(0.35)  # cooldown over: one probe goes to a, and succeeds
    assert (await client.post(CHAT, json=_ask())).headers["x-aigw-deployment"] == "a"
    status = (await client.get("/admin/status")).json()
    assert status["deployments"]["a"]["circuit"] == "closed"


async def test_a_route_whose_circuits_are_all_open_says_when_to_come_back(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    """The 503 for an open circuit had no Retry-After, though the breaker knows when
    it lets a call through again: the SDKs retried at once, into the same 503."""
    client = await make_gateway(_config(fleet, """
settings:
  circuit_breaker: {consecutive_failures: 1, cooldown_s: 30}
groups:
  g: {members: [a], retry: {attempts: 0}}
routes:
  r: {group: g}
"""))
    fleet.fakes["a"].script.actions.append(Action(status=500))
    assert (await client.post(CHAT, json=_ask())).status_code == 502  # the circuit opens
    response = await client.post(CHAT, json=_ask())
    assert response.status_code == 503, response.text
    assert "circuit open" in response.json()["error"]["message"]
    assert response.headers["retry-after"] == "30"
    assert 29_000 < int(response.headers["retry-after-ms"]) <= 30_000
    assert fleet.calls() == ["a"]


async def test_breaker_reopens_when_the_probe_fails(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
settings:
  circuit_breaker: {consecutive_failures: 1, cooldown_s: 0.2}
groups:
  g: {members: [a, b], retry: {attempts: 0}}
routes:
  r: {group: g}
"""))
    fleet.fakes["a"].script.actions += [Action(status=500), Action(status=500)]
    await client.post(CHAT, json=_ask())
    await asyncio.sleep(0.25)
    await client.post(CHAT, json=_ask())  # the probe, which fails
    await client.post(CHAT, json=_ask())  # open again: a is skipped
    assert fleet.calls() == ["a", "b", "a", "b", "b"]


async def test_a_request_begun_before_the_circuit_opened_does_not_free_the_probes_place(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
settings:
  circuit_breaker: {consecutive_failures: 3, cooldown_s: 0.3, min_requests: 100}
groups:
  g: {members: [a], retry: {attempts: 0}}
routes:
  r: {group: g}
"""))
    refused = Action(status=400, delay_s=0.8, body={"error": {
        "message": "Invalid 'temperature'", "type": "invalid_request_error",
        "param": "temperature", "code": None}})
    fleet.fakes["a"].script.actions += [refused, *(Action(status=500) for _ in range(3)),
                                        Action(delay_s=1.5)]
    early = asyncio.create_task(client.post(CHAT, json=_ask()))  # in flight, circuit closed
    while not fleet.calls():
        await asyncio.sleep(0.01)
    for _ in range(3):
        await client.post(CHAT, json=_ask())  # the circuit opens
    await asyncio.sleep(0.35)
    probe = asyncio.create_task(client.post(CHAT, json=_ask()))  # half-open: the probe
    assert (await early).status_code == 400  # ends while the probe is out
    meanwhile = await client.post(CHAT, json=_ask())
    assert meanwhile.status_code == 503, meanwhile.text  # still the probe's turn alone
    assert fleet.calls() == ["a"] * 5
    assert (await probe).status_code == 200
    status = (await client.get("/admin/status")).json()["deployments"]["a"]
    assert status["circuit"] == "closed"


async def test_a_stream_failing_after_its_first_byte_counts_against_the_circuit(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
settings:
  circuit_breaker: {consecutive_failures: 3, cooldown_s: 30, min_requests: 100}
groups:
  g: {members: [a, b], retry: {attempts: 0}}
routes:
  r: {group: g}
""", timeout_s=0.3))
    # Its first words, then nothing for longer than the provider's timeout_s.
    fleet.fakes["a"].script.actions += [Action(stall_after=2, stall_s=2.0) for _ in range(3)]
    for _ in range(3):
        response, _, events = await _stream_text(client, _ask())
        assert response.headers["x-aigw-deployment"] == "a"
        assert events[-1]["error"]["code"] == "upstream_timeout"  # type: ignore[index]
    status = (await client.get("/admin/status")).json()["deployments"]["a"]
    assert (status["circuit"], status["failures"]) == ("open", 3)
    response, text, _ = await _stream_text(client, _ask())
    assert (response.headers["x-aigw-deployment"], text) == ("b", "b: hello")


async def test_a_streamed_probe_holds_the_half_open_circuit_until_its_end(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
settings:
  circuit_breaker: {consecutive_failures: 1, cooldown_s: 0.3}
groups:
  g: {members: [a, b], retry: {attempts: 0}}
routes:
  r: {group: g}
"""))
    fleet.fakes["a"].script.actions += [Action(status=500), Action(event_delay_s=0.3)]
    assert (await client.post(CHAT, json=_ask())).headers["x-aigw-deployment"] == "b"
    await asyncio.sleep(0.35)  # half-open
    probe = asyncio.create_task(_stream_text(client, _ask()))  # a, slowly
    while fleet.calls().count("a") < 2:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.4)  # its first chunks have gone out; it has not ended
    meanwhile = await client.post(CHAT, json=_ask())
    assert meanwhile.headers["x-aigw-deployment"] == "b"  # a's probe is still out
    response, text, _ = await probe
    assert (response.headers["x-aigw-deployment"], text) == ("a", "a: hello")
    status = (await client.get("/admin/status")).json()["deployments"]["a"]
    assert status["circuit"] == "closed"  # the probe's stream ended well


async def test_weighted_group_spreads_requests_by_weight(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    # A seeded draw: the shares of 400 random picks are within 0.08 of the weights only
    # about 99.8% of the time, and a suite of a thousand tests should not flake.
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b, c], strategy: weighted, weights: {a: 6, b: 3, c: 1}}
routes:
  r: {group: g}
"""), RoutingState(rng=random.Random(20261124)))
    for _ in range(400):
        assert (await client.post(CHAT, json=_ask())).status_code == 200
    calls = fleet.calls()
    for name, share in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
        assert abs(calls.count(name) / 400 - share) < 0.08, calls


async def test_prefix_affinity_keeps_every_turn_of_a_conversation_on_one_member(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet, """
groups:
  g: {members: [a, b, c], strategy: prefix_affinity}
routes:
  r: {group: g}
"""))
    homes = set()
    for index in range(12):
        served = []
        turns: list[dict[str, str]] = [{"role": "user", "content": f"conversation {index}"}]
        if index % 2:  # half of them with a system prompt in front
            turns.insert(0, {"role": "system", "content": "You are terse."})
        for turn in range(3):
            response = await client.post(CHAT, json={"model": "r", "messages": turns})
            assert response.status_code == 200, response.text
            served.append(response.headers["x-aigw-deployment"])
            turns += [{"role": "assistant", "content": response.json()["choices"][0]
                       ["message"]["content"]}, {"role": "user", "content": f"and {turn}?"}]
        assert len(set(served)) == 1, served  # the KV cache of one server has it
        homes.add(served[0])
    assert len(homes) > 1  # different conversations spread over the members


class _Gated(EchoAdapter):
    """Echo, whose streams answer together (each first delta waits until both were
    asked) and close slowly (until ``release``): a hedge's loser answered too, and its
    discard is under way while the test cancels the request."""

    asked: list[str]
    both_asked: asyncio.Event
    closing: asyncio.Event
    release: asyncio.Event

    async def stream(self, call: ChatCall) -> AsyncIterator[ChatDelta]:
        self.asked.append(call.deployment.name)
        if len(self.asked) == 2:
            self.both_asked.set()
        await self.both_asked.wait()
        try:
            async for delta in super().stream(call):
                yield delta
        finally:
            self.closing.set()
            await self.release.wait()


@pytest.mark.parametrize("storm", [False, True], ids=["once", "again-and-again"])
async def test_a_request_cancelled_while_a_hedge_loser_is_discarded_settles_both_holds(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch, storm: bool
) -> None:
    """Cancelled (its client gone) while the loser that answered too was being closed,
    the request left the rest of that discard undone and the winner unread: both
    deployments' quota holds were kept until they expired, and their tpm refused calls
    meanwhile. Both are settled now, and the next calls go out. Cancelled again and
    again (a shutdown past its grace: ``storm``), the anyio shield around the burial
    held against none of it, and the winner's stream was never closed nor its hold
    settled (this failed before)."""
    gates: dict[str, Any] = {"asked": [], "both_asked": asyncio.Event(), "closing": asyncio.Event(),
             "release": asyncio.Event()}

    def gated(provider: Provider, counter: TokenCounter) -> ChatAdapter:
        adapter = _Gated(provider, counter)
        adapter.__dict__.update(gates)
        return adapter

    monkeypatch.setattr(registry, "ADAPTERS", {**registry.ADAPTERS, "echo": gated})
    client = await make_gateway("""
providers:
  pa: {type: echo}
  pb: {type: echo}
deployments:
  a: {provider: pa, model: echo-a, context_window: 1000, limits: {tpm: 600}}
  b: {provider: pb, model: echo-b, context_window: 1000, limits: {tpm: 600}}
groups:
  g: {members: [a, b], retry: {attempts: 0}}
  only-a: {members: [a], retry: {attempts: 0}}
  only-b: {members: [b], retry: {attempts: 0}}
routes:
  r: {group: g, hedge_after_ms: 50}
  ra: {group: only-a}
  rb: {group: only-b}
""")
    # Each call holds its worst case (~410 tokens) of its deployment's 600 a minute.
    call = asyncio.create_task(client.post(CHAT, json=_ask(stream=True, max_tokens=400)))
    await asyncio.wait_for(gates["closing"].wait(), 5)  # the loser's discard is under way
    call.cancel()
    gates["release"].set()  # the discard may end now (it is waited for)
    while storm and not call.done():
        await asyncio.sleep(0)
        call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    for route in ("ra", "rb"):  # each room for another worst case: the holds were settled
        response = await client.post(CHAT, json=_ask(model=route, max_tokens=400))
        assert response.status_code == 200, response.text
