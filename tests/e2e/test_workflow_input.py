"""Pipelines given hostile input through a real ``aigw serve``: JSON nested past Python's
recursion limit (in a chat message, an A2A message's text, a template's ``fromjson``)
and an A2A body past ``max_request_bytes``. Each is refused or read as text, as any bad
input is, never a RecursionError (a 500, or an execution failed as an internal error
with a traceback in the log).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..pipelines.conftest import gateway_config
from .server import Server, running

pytestmark = pytest.mark.e2e

AUTH = {"authorization": f"Bearer {DEV_KEY}"}

# One string field to fill: a chat's (or an A2A message's) text that is not a JSON object
# becomes its value.
SIZE = """
input: {type: object, properties: {text: {type: string}}, required: [text]}
steps:
  size: {kind: transform, expression: "input.text | length"}
output: "{{ steps.size }}"
"""

PARSE = """
input: {type: object, properties: {text: {type: string}}, required: [text]}
steps:
  parsed: {kind: transform, expression: "input.text | fromjson"}
output: "{{ steps.parsed }}"
"""

TALLY = """
input:
  type: object
  properties: {items: {type: array, items: {type: string}}}
  required: [items]
steps:
  count: {kind: transform, expression: "input['items'] | length"}
output: "{{ steps.count }}"
"""

DEEP = "[" * 100_000  # json.loads: RecursionError, not ValueError


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "gw"
    (root / "pipelines").mkdir(parents=True)
    (root / "gateway.yaml").write_text(gateway_config(
        settings="  max_request_bytes: 800000",
        extra_routes="  size: {pipeline: size}"))
    for name, text in {"size": SIZE, "parse": PARSE, "tally": TALLY}.items():
        (root / "pipelines" / f"{name}.yaml").write_text(text)
    with running(root) as started:
        yield started


def _no_traceback(server: Server) -> None:
    assert "Traceback" not in server.log and "RecursionError" not in server.log, server.log


def test_a_chat_message_nested_past_the_recursion_limit_is_the_pipelines_text(
    server: Server,
) -> None:
    """A pipeline route's chat message is read as the input when it is a JSON object;
    one nested too deep to parse was a RecursionError, a 500."""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=DEV_KEY, max_retries=0)
    answer = client.chat.completions.create(
        model="size", messages=[{"role": "user", "content": DEEP}])
    assert answer.choices[0].message.content == str(len(DEEP))
    _no_traceback(server)


def test_a_fromjson_of_input_nested_past_the_recursion_limit_fails_the_step(
    server: Server,
) -> None:
    """A template's ``fromjson`` of a caller's text nested too deep fails its step as a
    template error; it failed the execution as an internal error, with a traceback."""
    response = httpx.post(f"{server.base_url}/v1/pipelines/parse", headers=AUTH,
                          json={"text": DEEP}, timeout=30)
    assert response.status_code == 502, response.text
    error = response.json()["error"]["message"]
    assert "step 'parsed' failed: template error:" in error, error
    assert "recursion limit exceeded" in error and "internal error" not in error, error
    _no_traceback(server)


def _send(server: Server, body: str | bytes) -> httpx.Response:
    return httpx.post(f"{server.base_url}/a2a/size", headers={
        **AUTH, "content-type": "application/json", "a2a-version": "1.0"}, content=body,
        timeout=30)


def _message(text: str) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {
        "message": {"messageId": f"m-{len(text)}", "role": "ROLE_USER",
                    "parts": [{"text": text}]}}})


def test_an_a2a_body_nested_past_the_recursion_limit_is_a_parse_error(server: Server) -> None:
    response = _send(server, DEEP)
    assert response.status_code == 200, response.text
    error = response.json()["error"]
    assert error["code"] == -32700 and "recursion limit exceeded" in error["message"], error
    _no_traceback(server)


def test_an_a2a_message_text_nested_past_the_recursion_limit_is_the_pipelines_text(
    server: Server,
) -> None:
    response = _send(server, _message(DEEP))
    assert response.status_code == 200, response.text
    task = response.json()["result"]["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED", task
    assert task["artifacts"][0]["parts"] == [{"data": len(DEEP)}]
    _no_traceback(server)


def test_an_a2a_body_past_max_request_bytes_is_refused_unread(server: Server) -> None:
    """The A2A endpoint read any body whole, whatever ``max_request_bytes`` said."""
    response = _send(server, _message("x" * 900_000))
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["data"]["type"] == "invalid_request_error", error
    assert "exceeds the limit of 800000" in error["message"], error
    executions = httpx.get(f"{server.base_url}/api/v1/executions", headers=AUTH,
                           timeout=30).json()["data"]
    assert executions == []


def test_an_input_with_many_problems_is_told_the_first_ten_each_cut_short(
    server: Server,
) -> None:
    """60,000 wrong items were 60,000 problems, found in seconds of the event loop (every
    request of the worker waited) and answered as megabytes; a long value was quoted
    whole in its problem."""
    many = '{"items": [' + ",".join(["1"] * 60_000) + "]}"
    began = time.monotonic()
    response = httpx.post(f"{server.base_url}/v1/pipelines/tally", headers={
        **AUTH, "content-type": "application/json"}, content=many, timeout=60)
    elapsed = time.monotonic() - began
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert message == ("The input does not match pipeline 'tally': "
                       + "; ".join(f"items/{n}: 1 is not of type 'string'" for n in range(10))
                       + "; and more (the first 10 problems are shown)"), message[:500]
    assert elapsed < 3.0, elapsed
    long = httpx.post(f"{server.base_url}/v1/pipelines/tally", headers=AUTH,
                      json={"items": "x" * 150_000}, timeout=60)
    assert long.status_code == 400, long.text
    message = long.json()["error"]["message"]
    assert message == ("The input does not match pipeline 'tally': items: '" + "x" * 292
                       + "... (150032 characters)"), message[:500]


def test_a_long_valid_input_is_checked_off_the_event_loop(server: Server) -> None:
    """jsonschema checks about 50,000 items a second: a valid list of 150,000 (600 KB)
    held the worker's event loop, and every request of the worker, for seconds."""
    items = '{"items": [' + ",".join(['"a"'] * 150_000) + "]}"
    health: list[float] = []

    def check_health() -> None:
        time.sleep(0.3)  # the big request's body is read, its check begun
        began = time.monotonic()
        httpx.get(f"{server.base_url}/health", timeout=60).raise_for_status()
        health.append(time.monotonic() - began)

    waiter = threading.Thread(target=check_health)
    waiter.start()
    began = time.monotonic()
    response = httpx.post(f"{server.base_url}/v1/pipelines/tally", headers={
        **AUTH, "content-type": "application/json"}, content=items, timeout=120)
    took = time.monotonic() - began
    waiter.join()
    assert response.status_code == 200, response.text
    assert response.json()["output"] == 150_000
    assert took > 1.0, took  # else this machine checks too fast for the test to tell
    assert health[0] < min(0.5, took / 3), (health, took)
