"""The app in-process: endpoints, error shapes and statuses, the graph header."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from aigw.cli import main
from aigw.runtime.app import IndexedHeaders, SnapshotMiddleware, create_app
from aigw.runtime.jsonio import SENT_AS, JSONBody, dumps
from aigw.runtime.live import Gateway
from aigw.runtime.tokens import TokenCounter

from ..conftest import DEV_KEY, GUARD_TOKEN, app_client
from ..fakes.serve import serving

CHAT = "/v1/chat/completions"


def _chat(text: str = "Hello there, gateway!", **extra: object) -> dict[str, object]:
    return {"model": "fast", "messages": [{"role": "user", "content": text}], **extra}


def _assert_openai_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["message"]
    return dict(error)


async def test_chat_completion_echoes_the_last_user_message(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=_chat())
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "echo-1"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there, gateway!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    usage = body["usage"]
    assert usage["completion_tokens"] == 5  # tiktoken cl100k: Hello| there|,| gateway|!
    assert usage["prompt_tokens"] == 3 + 3 + 5  # primer + per-message overhead + text
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert response.headers["x-aigw-route"] == "fast"
    assert response.headers["x-aigw-deployment"] == "echo-small"
    assert response.headers["x-aigw-attempts"] == "1"


async def test_a_null_parameter_is_an_absent_one(client: httpx.AsyncClient) -> None:
    """OpenAI's spec lets every optional parameter be null (the default); an SDK call
    passing n=None or stream=None was a 400."""
    nulls = {name: None for name in (
        "n", "stream", "stream_options", "temperature", "top_p", "stop", "seed", "user",
        "max_tokens", "max_completion_tokens", "tools", "tool_choice", "response_format",
        "logprobs", "parallel_tool_calls")}
    response = await client.post(CHAT, json=_chat(**nulls))
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"  # not a stream
    assert len(response.json()["choices"]) == 1
    async with client.stream("POST", CHAT, json=_chat(
            stream=True, stream_options={"include_usage": None})) as streamed:
        assert streamed.status_code == 200, await streamed.aread()
        chunks = [line for line in (await streamed.aread()).decode().split("\n\n") if line]
    assert chunks[-1] == "data: [DONE]"
    assert '"usage"' not in chunks[-2]  # include_usage null: not asked for


async def test_every_response_names_the_graph(client: httpx.AsyncClient, gateway: Gateway) -> None:
    fingerprint = gateway.live.graph.fingerprint
    for response in (
        await client.post(CHAT, json=_chat()),
        await client.get("/health"),
        await client.get("/nope"),
        await client.post(CHAT, content=b"{"),
    ):
        assert response.headers["x-aigw-graph"] == fingerprint


async def test_max_tokens_cuts_the_answer_with_finish_reason_length(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(CHAT, json=_chat("one two three four five six", max_tokens=2))
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "one two"
    assert response.json()["usage"]["completion_tokens"] == 2


async def test_n_returns_that_many_choices(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=_chat("hi", n=3))
    assert [c["index"] for c in response.json()["choices"]] == [0, 1, 2]


async def test_stream_sends_openai_chunks_then_done(client: httpx.AsyncClient) -> None:
    payload = _chat("alpha beta gamma", stream=True, stream_options={"include_usage": True})
    async with client.stream("POST", CHAT, json=payload) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = b"".join([chunk async for chunk in response.aiter_bytes()]).decode()
    events = [line.removeprefix("data: ") for line in raw.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "alpha beta gamma"
    finishing = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finishing] == ["stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(c["usage"] is None for c in chunks[:-1])


async def test_stream_without_include_usage_has_no_usage_field(client: httpx.AsyncClient) -> None:
    async with client.stream("POST", CHAT, json=_chat("x y", stream=True)) as response:
        raw = b"".join([chunk async for chunk in response.aiter_bytes()]).decode()
    events = [e.removeprefix("data: ") for e in raw.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all("usage" not in c for c in chunks)
    assert all(c["choices"] for c in chunks)


async def test_models_lists_the_routes(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models")
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == [
        "echo", "embed", "fast", "images", "moderation", "rerank", "smart", "speech",
        "transcribe"]


async def test_missing_key_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=_chat(), headers={"Authorization": ""})
    _assert_openai_error(response, 401, "invalid_api_key")


async def test_wrong_key_is_401_and_not_echoed(client: httpx.AsyncClient) -> None:
    response = await client.post(
        CHAT, json=_chat(), headers={"Authorization": "Bearer sk-wrong-secret-123"}
    )
    _assert_openai_error(response, 401, "invalid_api_key")
    assert "sk-wrong-secret-123" not in response.text


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, content=b'{"model": "fast", "messages": [')
    error = _assert_openai_error(response, 400, "invalid_request")
    assert "JSON" in str(error["message"])


async def test_body_that_is_not_an_object_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, content=b"[1, 2]")
    _assert_openai_error(response, 400, "invalid_request")


async def test_missing_messages_is_400_naming_the_parameter(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json={"model": "fast"})
    error = _assert_openai_error(response, 400, "invalid_request")
    assert error["param"] == "messages"


async def test_bad_field_value_is_400_naming_the_parameter(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json=_chat(temperature=7))
    error = _assert_openai_error(response, 400, "invalid_request")
    assert error["param"] == "temperature"
    response = await client.post(
        CHAT, json={"model": "fast", "messages": [{"role": "wizard", "content": "x"}]}
    )
    assert _assert_openai_error(response, 400, "invalid_request")["param"] == "messages.0.role"


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post(CHAT, json={**_chat(), "model": "gpt-17"})
    error = _assert_openai_error(response, 404, "model_not_found")
    assert error["param"] == "model"


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    big = "x" * (4 * 1024 * 1024 + 10)
    response = await client.post(CHAT, json=_chat(big))
    _assert_openai_error(response, 413, "request_too_large")


async def test_prompt_larger_than_every_context_window_is_422(client: httpx.AsyncClient) -> None:
    huge = "word " * 140_000  # more than echo-large's 131072-token window
    response = await client.post(CHAT, json=_chat(huge))
    error = _assert_openai_error(response, 422, "context_length_exceeded")
    assert "echo-large" in str(error["message"])


async def test_prompt_too_big_for_the_first_member_goes_to_the_fallback(
    client: httpx.AsyncClient,
) -> None:
    medium = "word " * 9_000  # over echo-small's 8192 tokens, within echo-large's window
    response = await client.post(CHAT, json=_chat(medium, max_tokens=5))
    assert response.status_code == 200
    assert response.headers["x-aigw-deployment"] == "echo-large"


async def test_unknown_path_and_method_are_openai_shaped(client: httpx.AsyncClient) -> None:
    _assert_openai_error(await client.get("/v1/nothing"), 404, "not_found")
    wrong_method = await client.get(CHAT)
    error = _assert_openai_error(wrong_method, 405, "method_not_allowed")
    assert error["type"] == "invalid_request_error"
    assert wrong_method.headers["allow"] == "POST"  # RFC 9110: a 405 says what is allowed
    assert (await client.delete("/v1/messages")).headers["allow"] == "POST"


async def test_a_starlette_http_error_is_the_clients_when_it_is_a_4xx(gateway: Gateway) -> None:
    # A handler's (or Starlette's own, e.g. Request.form()'s) HTTPException: a 4xx was
    # rendered as a server_error / internal_error.
    async def refusing(request: Request) -> Response:
        status = int(request.query_params["status"])
        raise HTTPException(status, detail=f"refused with {status}", headers={"X-Why": "test"})

    app = SnapshotMiddleware(Starlette(), gateway, {CHAT: refusing})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://aigw.test") as http:
        for status, code, kind in ((400, "bad_request", "invalid_request_error"),
                                   (413, "request_entity_too_large", "invalid_request_error"),
                                   (503, "service_unavailable", "server_error")):
            response = await http.post(CHAT, params={"status": status}, json=_chat())
            error = _assert_openai_error(response, status, code)
            assert (error["type"], error["message"]) == (kind, f"refused with {status}")
            assert response.headers["x-why"] == "test"


async def test_an_end_user_over_256_characters_is_a_400_on_every_endpoint(
        client: httpx.AsyncClient) -> None:
    """``user`` (or the user header) had no cap: it is a Cedar entity's id, a ledger field
    and a limits scope, so a megabyte of it was stored and counted under."""
    too_long = ("Invalid 'user': string too long. Expected a string with maximum length "
                "256, but got a string with length 257 instead.")
    for path, body in ((CHAT, _chat()), ("/v1/embeddings", {"model": "embed", "input": "hi"})):
        served = await client.post(path, json={**body, "user": "u" * 256})
        assert served.status_code == 200, served.text
        refused = await client.post(path, json={**body, "user": "u" * 257})
        error = _assert_openai_error(refused, 400, "invalid_request")
        assert (error["param"], error["message"]) == ("user", too_long), path
    by_header = await client.post("/v1/moderations", json={"model": "moderation", "input": "hi"},
                                  headers={"x-aigw-user": "u" * 300})
    error = _assert_openai_error(by_header, 400, "invalid_request")
    assert error["message"] == ("The x-aigw-user header is too long: an end user's name is at "
                                "most 256 characters; it has 300.")


async def test_admin_status_needs_an_admin_key(client: httpx.AsyncClient, gateway: Gateway) -> None:
    response = await client.get("/admin/status")
    assert response.status_code == 200
    status = response.json()
    assert status["graph"]["fingerprint"] == gateway.live.graph.fingerprint
    assert status["graph"]["providers"]["local"]["enabled"] is True
    no_key = await client.get("/admin/status", headers={"Authorization": ""})
    _assert_openai_error(no_key, 401, "invalid_api_key")


async def test_admin_status_shows_routes_cache_and_guardrails_and_keys_as_compile_does(
    ops_dir: Path, counter: TokenCounter, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same entries as ``aigw compile --format json``, and what only a running gateway
    knows: whether a key has expired and an earlier secret is refused already."""
    assert main(["compile", str(ops_dir), "--format", "json"]) == 0
    compiled = json.loads(capsys.readouterr().out)
    gateway = Gateway(ops_dir, counter)
    try:
        async with app_client(gateway) as client:
            response = await client.get("/admin/status")
    finally:
        await gateway.aclose()
    assert GUARD_TOKEN not in response.text and "sha256" not in response.text
    graph = response.json()["graph"]
    for name, route in compiled["routes"].items():
        assert graph["routes"][name] == route
    assert graph["routes"]["faq"]["cache"]["semantic"]["embeddings"] == "embed"
    assert [g["name"] for g in graph["routes"]["faq"]["guardrails"]] == [
        "secrets", "pii", "checker"]
    assert graph["mcp_servers"] == compiled["mcp_servers"]
    for key in compiled["keys"]:
        shown = graph["keys"][key.pop("name")]
        assert {field: shown.pop(field) for field in ("expired", "previous")} == {
            "expired": False,
            "previous": [{**item, "refused": True} for item in key.pop("previous")]}
        assert shown == key
    assert graph["keys"]["ci-bot"]["mcp_servers"] == ["docs"]


async def test_echo_embeddings_are_deterministic_and_normalised(client: httpx.AsyncClient) -> None:
    first = await client.post("/v1/embeddings", json={"model": "embed", "input": ["a b", "c"]})
    again = await client.post("/v1/embeddings", json={"model": "embed", "input": "a b"})
    assert first.status_code == 200
    vectors = [row["embedding"] for row in first.json()["data"]]
    assert len(vectors) == 2 and len(vectors[0]) == 256
    assert again.json()["data"][0]["embedding"] == vectors[0]
    assert abs(sum(v * v for v in vectors[0]) - 1.0) < 1e-9
    chat_model = await client.post("/v1/embeddings", json={"model": "fast", "input": "x"})
    assert chat_model.status_code == 400
    assert chat_model.json()["error"]["param"] == "model"


async def test_the_default_gateway_reranks_offline(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/rerank", json={
        "model": "rerank", "query": "moon landing", "top_n": 2, "return_documents": True,
        "documents": ["the moon", "a landing on the moon", "tides"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"] == [
        {"index": 1, "relevance_score": 1.0, "document": {"text": "a landing on the moon"}},
        {"index": 0, "relevance_score": 0.5, "document": {"text": "the moon"}}]
    assert body["meta"]["billed_units"] == {"search_units": 1}
    assert body["usage"]["total_tokens"] > 0
    assert response.headers["x-aigw-deployment"] == "echo-rerank"
    assert body["id"] in response.headers["x-request-id"]


async def test_the_default_gateway_draws_images_offline(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/images/generations", json={
        "model": "images", "prompt": "a red square", "n": 2, "size": "256x256"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["created"], int) and "usage" not in body
    first, second = (base64.b64decode(row["b64_json"]) for row in body["data"])
    assert first.startswith(b"\x89PNG\r\n\x1a\n") and first != second  # one colour each
    again = await client.post("/v1/images/generations", json={
        "model": "images", "prompt": "a red square", "response_format": "url"})
    assert again.json()["data"] == [
        {"url": "data:image/png;base64," + body["data"][0]["b64_json"]}]  # deterministic
    assert response.headers["x-aigw-deployment"] == "echo-image"


async def test_the_default_gateway_moderates_offline(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/moderations", json={  # no model: the one route
        "input": ["I will kill the process", "a quiet afternoon"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "echo-moderation-1" and body["id"].startswith("modr-")
    flagged, calm = body["results"]
    assert (flagged["flagged"], calm["flagged"]) == (True, False)
    assert [name for name, hit in flagged["categories"].items() if hit] == ["violence"]
    assert flagged["category_scores"]["violence"] == 1.0
    assert response.headers["x-aigw-route"] == "moderation"


async def test_the_default_gateway_transcribes_and_speaks_offline(
    client: httpx.AsyncClient,
) -> None:
    upload = b"ID3 not really an mp3" * 100
    response = await client.post("/v1/audio/transcriptions", data={"model": "transcribe"},
                                 files={"file": ("talk.mp3", upload, "audio/mpeg")})
    assert response.status_code == 200, response.text
    digest = hashlib.sha256(upload).hexdigest()[:16]
    assert response.json()["text"] == f"echo transcript: {len(upload)} bytes, sha256 {digest}"
    assert response.headers["x-aigw-deployment"] == "echo-transcribe"
    spoken = await client.post("/v1/audio/speech", json={
        "model": "speech", "input": "hello", "voice": "alloy"})
    assert spoken.status_code == 200, spoken.text
    assert (spoken.headers["content-type"], spoken.content[:4]) == ("audio/wav", b"RIFF")
    assert spoken.headers["x-aigw-deployment"] == "echo-speech"


async def test_echo_calls_a_forced_tool(client: httpx.AsyncClient) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    response = await client.post(CHAT, json={
        "model": "fast", "tools": tools, "tool_choice": "required",
        "messages": [{"role": "user", "content": '{"q": "moon"}'}],
    })
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"] == {"name": "lookup", "arguments": '{"q": "moon"}'}


async def test_an_unexpected_error_in_a_direct_endpoint_is_a_logged_openai_500(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    # The model endpoints skip Starlette's layers (app.SnapshotMiddleware): what its
    # exception handlers did for them, the direct call must do the same way.
    async def broken(request: Request) -> Response:
        raise RuntimeError("secret detail of a bug")

    app = SnapshotMiddleware(Starlette(), gateway, {CHAT: broken})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://aigw.test") as http:
        response = await http.post(CHAT, json=_chat())
    error = _assert_openai_error(response, 500, "internal_error")
    assert "secret detail" not in str(error["message"])
    assert response.headers["x-aigw-graph"] == gateway.live.graph.fingerprint
    assert "secret detail of a bug" in caplog.text  # logged with its traceback


async def test_the_direct_endpoints_answer_only_their_method_and_exact_path(
    client: httpx.AsyncClient,
) -> None:
    for path in (CHAT, "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v2/rerank",
                 "/v1/images/generations", "/v1/moderations", "/v1/messages", "/v1/responses",
                 "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/audio/speech"):
        assert (await client.get(path)).status_code == 405
        assert (await client.put(path, json={})).status_code == 405
    response = await client.post("/v1/embeddings", json={"model": "embed", "input": "hi"})
    assert response.status_code == 200, response.text
    _assert_openai_error(await client.post(CHAT + "/extra", json=_chat()), 404, "not_found")


async def test_an_asgi_root_path_goes_through_starlettes_router(gateway: Gateway) -> None:
    # Behind a proxy that mounts the gateway under a prefix, Starlette strips it.
    transport = httpx.ASGITransport(app=create_app(gateway), root_path="/gw")
    async with httpx.AsyncClient(transport=transport, base_url="http://aigw.test",
                                 headers={"Authorization": f"Bearer {DEV_KEY}"}) as http:
        response = await http.post("/gw" + CHAT, json=_chat())
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"


async def test_an_error_in_a_direct_endpoints_stream_is_logged_and_ends_the_response(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"data: {}\n\n"
        raise RuntimeError("a bug halfway through a stream")

    async def streaming(request: Request) -> Response:
        return StreamingResponse(chunks(), media_type="text/event-stream")

    app = SnapshotMiddleware(Starlette(), gateway, {CHAT: streaming})
    # Served by hypercorn, logging as in aigw serve: the error is logged once, not raised
    # on for hypercorn to log again, and the server closes the unfinished answer.
    with (serving(app, errorlog=logging.getLogger("hypercorn.error")) as base,
          pytest.raises(httpx.RemoteProtocolError)):
        await asyncio.to_thread(httpx.post, base + CHAT, json=_chat())
    # As Starlette's error middleware logged it, so that an alert on the line still fires.
    [logged] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert "unhandled error on POST /v1/chat/completions" in logged.getMessage()
    assert "RuntimeError: a bug halfway through a stream" in logged.getMessage()


def test_indexed_headers_answer_as_starlettes_headers_do() -> None:
    raw = [(b"authorization", b"Bearer one"), (b"x-aigw-tags", b"a,b"),
           (b"authorization", b"Bearer two"), (b"content-type", b"application/json"),
           (b"x-note", "café".encode("latin-1"))]
    scope = {"type": "http", "headers": raw}
    indexed, plain = IndexedHeaders(scope), Headers(scope=scope)
    for name in ("authorization", "Authorization", "X-AIGW-TAGS", "content-type", "absent",
                 "X-Note", "x-note"):
        assert indexed.get(name) == plain.get(name), name
        assert (name in indexed) == (name in plain), name
    assert indexed["Authorization"] == "Bearer one"  # the first of repeated headers
    assert indexed.getlist("authorization") == ["Bearer one", "Bearer two"]
    assert indexed.get("absent", "default") == "default"
    with pytest.raises(KeyError):
        indexed["absent"]
    assert dict(indexed.items()) == dict(plain.items())


async def test_a_model_answers_headers_are_all_sent_encoded(
        gateway_dir: Path, counter: TokenCounter) -> None:
    """Every header a model answer carries (who served it, both rate limits, the cache's
    verdict, the overhead) has its name in ``SENT_AS``, so none takes Starlette's slower
    path: a header added to answers and not to the table fails here."""
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text()
                      .replace("  default: {}", "  default: {limits: {rpm: 600, tpm: 200000}}")
                      .replace("  # faq: {group: fast,", "  faq: {group: fast,"))
    gateway = Gateway(gateway_dir, counter)
    try:
        async with app_client(gateway) as http:
            answers = [await http.post(CHAT, json=_chat(model="faq")) for _ in range(2)]
    finally:
        await gateway.aclose()
    assert [answer.headers["x-aigw-cache"] for answer in answers] == ["miss", "hit"]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        names = set(answer.headers) - {"content-length", "content-type", "x-aigw-graph"}
        assert "x-ratelimit-remaining-requests" in names and names <= set(SENT_AS), names
    # The miss held tokens, and says what is left of them; the hit took none (a cached
    # answer needs no room under tpm), and tells the requests window alone.
    assert "x-ratelimit-remaining-tokens" in answers[0].headers
    assert "x-ratelimit-remaining-tokens" not in answers[1].headers


@pytest.mark.parametrize("headers", [
    None, {},
    {"x-aigw-route": "fast", "X-Request-Id": "req-1", "x-ratelimit-reset-tokens": "6ms"},
    {"x-aigw-route": "fast", "Content-Type": "application/json; charset=utf-8"},
    {"content-length": "2", "x-aigw-route": "fast"},
])
@pytest.mark.parametrize("status", [200, 204, 429])
def test_json_bodies_send_the_headers_starlette_would(
    headers: dict[str, str] | None, status: int
) -> None:
    """JSONBody sends the same header list as Starlette's own, in the same order, whether
    a name is in ``SENT_AS`` or not."""
    for _ in range(2):
        ours = JSONBody({"ok": True}, status_code=status, headers=headers)
        theirs = Response(dumps({"ok": True}), status_code=status, headers=headers,
                          media_type="application/json")
        assert ours.raw_headers == theirs.raw_headers
