"""Hostile and unlucky HTTP/1.1 clients of a real ``aigw serve``: bodies that lie about
their length, arrive too slowly or too large, hold invalid UTF-8, lone surrogates, numbers
past a double, NaN or nesting past any parser's stack, and keys with garbage after them.
Each gets an OpenAI-shaped 4xx (or is served), no traceback reaches the log, and the
worker goes on serving. Written on the wire (a socket) where no SDK would send it."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ..conftest import DEV_KEY, REPO
from .server import Server

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"
BODY_READ_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One gateway for the module (each test leaves it serving): the shipped one with a
    body read timeout of a second, a route ``slow`` to a priced slow echo (a stream lasts
    long enough to be left, and its record has a cost to lose) and a pipeline route."""
    gateway_dir = tmp_path_factory.mktemp("hostile") / "gw"
    gateway_dir.mkdir()
    shutil.copy(REPO / "gateway.yaml", gateway_dir / "gateway.yaml")
    for folder in ("policies", "pipelines"):
        shutil.copytree(REPO / folder, gateway_dir / folder)
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text()
                      .replace("  max_request_bytes: 4194304\n",
                               f"  max_request_bytes: 4194304\n"
                               f"  body_read_timeout_s: {BODY_READ_TIMEOUT_S}\n", 1)
                      .replace("\ndeployments:\n", """
  slow: {type: echo, latency: {per_token_ms: 40}}
deployments:
  slow-echo:
    provider: slow
    model: echo-1
    context_window: 8192
    price: {input: 1000, output: 2000}
    capabilities: [streaming]
""", 1)
                      .replace("routes:", "routes:\n  slow: {deployment: slow-echo}\n"
                               "  research: {pipeline: research}", 1))
    started = Server(gateway_dir)
    started.wait_ready()
    yield started
    started.stop()


def _wire(server: Server, head: bytes, body: bytes = b"", *, pause_s: float = 0.0,
          rest: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send ``head`` (the request line and headers, without the blank line) and ``body``,
    then after ``pause_s`` ``rest``; the answer's status, headers and body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(head + b"\r\n" + body)
        if pause_s:
            time.sleep(pause_s)
            sock.sendall(rest)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"closed before an answer: {received!r}"
            received += chunk
        top, _, answer = received.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        while len(answer) < int(headers.get("content-length", "0")):
            chunk = sock.recv(65536)
            assert chunk, f"closed mid-answer: {answer!r}"
            answer += chunk
        return int(lines[0].split()[1]), headers, answer


def _post(body: bytes, *, length: int | None = None, key: bytes = DEV_KEY.encode(),
          path: str = CHAT) -> bytes:
    """The head of a POST of ``body`` (``length``: the Content-Length it claims)."""
    return (f"POST {path} HTTP/1.1\r\nHost: aigw\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n").encode() \
        + b"Authorization: Bearer " + key + b"\r\n"


def _error(headers: dict[str, str], body: bytes) -> tuple[str, str | None]:
    """The code and param of an answer's OpenAI error object."""
    assert headers["content-type"] == "application/json", (headers, body)
    error = json.loads(body)["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    return error["code"], error["param"]


def _still_serving(server: Server) -> None:
    answer = httpx.post(f"{server.base_url}{CHAT}", headers={"Authorization": f"Bearer {DEV_KEY}"},
                        json={"model": "echo", "messages": [{"role": "user", "content": "ok"}]},
                        timeout=20)
    assert answer.json()["choices"][0]["message"]["content"] == "ok"
    assert "Traceback" not in server.log
    assert not [line for line in _access_lines(server) if line["status"] >= 500]


def _access_lines(server: Server) -> list[dict[str, Any]]:
    return [json.loads(text) for text in server.log.splitlines() if text.startswith("{")]


def _chat(**fields: Any) -> bytes:
    return json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}],
                       **fields}).encode()


# What a body holds, written as its bytes: the error's param, and words of its message.
BAD_BODIES = {
    "invalid UTF-8": (b'{"model":"echo","messages":[{"role":"user","content":"\xff\xfe"}]}',
                      None, "Invalid JSON"),
    "a lone surrogate": (b'{"model":"echo","messages":[{"role":"user","content":"a\\ud800"}]}',
                         None, "Invalid JSON"),
    "stream a string": (_chat(stream="maybe"), "stream", "valid boolean"),
    "temperature 1e999": (_chat().replace(b'"model"', b'"temperature":1e999,"model"'),
                          "temperature", "finite number"),
    "max_tokens 1e999": (_chat().replace(b'"model"', b'"max_tokens":1e999,"model"'),
                         "max_tokens", "finite number"),
    "max_tokens of 5000 digits": (_chat().replace(b'"model"', b'"max_tokens":' + b"9" * 5000
                                                  + b',"model"'), None, "number out of range"),
    "temperature NaN": (_chat().replace(b'"model"', b'"temperature":NaN,"model"'),
                        "temperature", "finite number"),
    "top_p -Infinity": (_chat().replace(b'"model"', b'"top_p":-Infinity,"model"'),
                        "top_p", "finite number"),
    "nesting 100,000 deep": (_chat().replace(b'"model"', b'"metadata":' + b"[" * 100_000
                                             + b"]" * 100_000 + b',"model"'),
                             None, "max_request_json_containers"),
    "nesting 1,000 deep": (_chat().replace(b'"model"', b'"metadata":' + b"[" * 1000
                                           + b"]" * 1000 + b',"model"'),
                           None, "recursion limit exceeded"),
    "messages a string": (b'{"model":"echo","messages":"hi"}', "messages", "valid array"),
    "not an object": (b"[1,2]", None, "must be a JSON object"),
}


@pytest.mark.parametrize("name", BAD_BODIES)
def test_a_bad_body_is_a_400(hostile: Server, name: str) -> None:
    body, param, words = BAD_BODIES[name]
    status, headers, answer = _wire(hostile, _post(body), body)
    assert (status, *_error(headers, answer)) == (400, "invalid_request", param)
    assert words in json.loads(answer)["error"]["message"]
    _still_serving(hostile)


def test_a_content_length_shorter_than_the_body_is_a_400(hostile: Server) -> None:
    body = _chat()
    status, headers, answer = _wire(hostile, _post(body, length=len(body) - 5), body)
    assert (status, *_error(headers, answer)) == (400, "invalid_request", None)
    _still_serving(hostile)


def test_a_content_length_longer_than_the_body_is_a_408(hostile: Server) -> None:
    body = _chat()
    started = time.monotonic()
    status, headers, answer = _wire(hostile, _post(body, length=len(body) + 50), body)
    assert (status, *_error(headers, answer)) == (408, "request_timeout", None)
    assert BODY_READ_TIMEOUT_S <= time.monotonic() - started < BODY_READ_TIMEOUT_S + 10
    _still_serving(hostile)


def test_a_body_slower_than_its_timeout_is_a_408(hostile: Server) -> None:
    body = _chat()
    half = len(body) // 2
    status, headers, answer = _wire(hostile, _post(body), body[:half],
                                    pause_s=BODY_READ_TIMEOUT_S + 1, rest=body[half:])
    assert (status, *_error(headers, answer)) == (408, "request_timeout", None)
    _still_serving(hostile)


def test_a_chunked_body_over_the_limit_is_a_413(hostile: Server) -> None:
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: aigw\r\nTransfer-Encoding: chunked\r\n"
            f"Authorization: Bearer {DEV_KEY}\r\n").encode()
    mib = b"%x\r\n" % 2**20 + b"x" * 2**20 + b"\r\n"
    status, headers, answer = _wire(hostile, head, mib * 5 + b"0\r\n\r\n")
    assert (status, *_error(headers, answer)) == (413, "request_too_large", None)
    _still_serving(hostile)


@pytest.mark.parametrize("key", [b"sk-aigw-dev garbage", b"sk-aigw-dev\x01\x7f",
                                 b"sk-aigw-dev\xe9\xff", b"sk-aigw-dev, Basic YWxhZGRpbg==",
                                 b"k" * 60_000])
def test_a_key_with_garbage_is_a_401(hostile: Server, key: bytes) -> None:
    body = _chat()
    status, headers, answer = _wire(hostile, _post(body, key=key), body)
    assert (status, *_error(headers, answer)) == (401, "invalid_api_key", None)
    _still_serving(hostile)


def test_a_client_gone_mid_stream_is_billed(hostile: Server) -> None:
    words = " ".join(f"word{i}" for i in range(60))
    with httpx.Client(base_url=hostile.base_url, timeout=20) as http, http.stream(
            "POST", CHAT, headers={"Authorization": f"Bearer {DEV_KEY}"},
            json={"model": "slow", "stream": True,
                  "messages": [{"role": "user", "content": words}]}) as streamed:
        request_id = streamed.headers["x-request-id"]
        for line in streamed.iter_lines():
            if "word3" in line:
                break  # and the connection is closed mid-stream
    record = hostile.ledger_row(request_id, wait_s=10.0)
    assert record["status"] == 499 and record["tokens_out"] > 0 and record["cost"] > 0
    summary = httpx.get(f"{hostile.base_url}/v1/costs/summary?group_by=route",
                        headers={"Authorization": f"Bearer {DEV_KEY}"}).json()
    slow = [row for row in summary["data"] if row["route"] == "slow"]
    assert slow and slow[0]["cost"] >= record["cost"]
    _still_serving(hostile)


def _a2a(server: Server, body: bytes) -> httpx.Response:
    return httpx.post(f"{server.base_url}/a2a/research", content=body, timeout=30,
                      headers={"Authorization": f"Bearer {DEV_KEY}"})


def _a2a_send(text: str, message_id: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {
        "message": {"role": "user", "messageId": message_id,
                    "parts": [{"kind": "text", "text": text}]},
        "configuration": {"blocking": False}}}).encode()  # A2A 0.3 names


def test_an_a2a_body_is_bounded_and_parsed_as_every_body(hostile: Server) -> None:
    too_large = _a2a(hostile, _a2a_send("x" * 5_000_000, "m-large"))
    assert too_large.status_code == 413
    assert too_large.json()["error"]["data"]["code"] == "request_too_large"
    surrogate = _a2a(hostile, _a2a_send("x", "m-surrogate").replace(b'"x"', b'"\\ud800"'))
    assert surrogate.json()["error"]["code"] == -32700  # JSON-RPC's parse error
    nested = _a2a(hostile, _a2a_send("[" * 100_000 + "]" * 100_000, "m-nested"))
    assert nested.status_code == 200 and "result" in nested.json()  # a text, not JSON
    _still_serving(hostile)


def test_a_pipeline_chat_of_nested_brackets_is_its_text(hostile: Server) -> None:
    """A user message is the pipeline's input when it is a JSON object, else its text:
    brackets nested past the standard library's stack raised RecursionError (a 500)."""
    nested = "[" * 2000 + "]" * 2000
    answer = httpx.post(f"{hostile.base_url}{CHAT}", timeout=30,
                        headers={"Authorization": f"Bearer {DEV_KEY}"},
                        json={"model": "research", "messages": [
                            {"role": "user", "content": nested}]})
    assert answer.status_code == 200, answer.text
    assert nested in answer.json()["choices"][0]["message"]["content"]
    _still_serving(hostile)


UNREADABLE = {  # requests h11 refuses before the app sees them: the status and code
    "two Content-Lengths": (b"Content-Length: 3\r\n", 400, "bad_request"),
    "a header of 200 KB": (b"X-Big: " + b"a" * 200_000 + b"\r\n", 431,
                           "request_header_fields_too_large"),
    "a header with no colon": (b"No colon here\r\n", 400, "bad_request"),
}


@pytest.mark.parametrize("name", UNREADABLE)
def test_a_request_that_is_no_http_is_refused_openai_shaped(hostile: Server, name: str) -> None:
    extra, status, code = UNREADABLE[name]
    body = _chat()
    answer = _wire(hostile, _post(body) + extra, body)
    assert (answer[0], *_error(answer[1], answer[2])) == (status, code, None)
    assert answer[1]["connection"] == "close"
    _still_serving(hostile)


def test_headers_given_twice_alike_are_served(hostile: Server) -> None:
    body = _chat()
    twice = _post(body) + b"Content-Length: %d\r\n" % len(body) + b"X-Note: a\r\nX-Note: b\r\n"
    status, _headers, answer = _wire(hostile, twice, body)
    assert status == 200 and json.loads(answer)["choices"][0]["message"]["content"] == "hi"
    many = _post(body) + b"".join(b"X-H%d: v\r\n" % i for i in range(500))
    assert _wire(hostile, many, body)[0] == 200
    _still_serving(hostile)


def test_a_client_gone_while_sending_its_body_is_a_499(hostile: Server) -> None:
    """Its access line says the client left (a 500 counted it as the gateway's failure)."""
    before = len(_access_lines(hostile))
    with socket.create_connection(("127.0.0.1", hostile.port), timeout=20) as sock:
        sock.sendall(_post(b"", length=1000) + b'\r\n{"model":')
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while len(lines := _access_lines(hostile)) == before:
        assert time.monotonic() < deadline, hostile.log
        time.sleep(0.05)
    assert (lines[-1]["status"], lines[-1]["error"]) == (499, "cancelled")
    _still_serving(hostile)
