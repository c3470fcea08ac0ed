"""What providers send that they should not: answers of the wrong shape, broken
Retry-After headers, streams that stop short, no usage, negative usage, embeddings,
rankings, images, moderation results and transcripts of the wrong shape. Each is a clean
upstream error (a 502 the next member of a group can stand in for) or is counted by the
gateway, never a 500 with a traceback.

The upstream is scripted (tests/fakes/scripted.py): every request gets the answer the
test last set, in the provider's wire format, as written."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from ..fakes.bedrock_fake import event, frame
from ..fakes.scripted import Scripted, scripted_upstream
from .conftest import GatewayFactory, gemini_on, stream_events

PROVIDER_KEY = "sk-scripted-provider-key-0123456789"
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "say hello"}]}


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    with scripted_upstream() as upstream:
        yield upstream


def _openai(scripted: Scripted, extra: str = "") -> str:
    return f"""
        providers:
          up: {{type: openai, base_url: "{scripted.base_url}/v1", api_key: "{PROVIDER_KEY}"}}
          backup: {{type: echo}}
        deployments:
          bad: {{provider: up, model: up-model, context_window: 8000{extra}}}
          good: {{provider: backup, model: echo-model, context_window: 8000}}
          emb: {{provider: up, model: up-embed, kind: embeddings, context_window: 8000}}
        groups:
          pair: {{members: [bad, good], strategy: priority}}
        routes:
          chat: {{deployment: bad}}
          pair: {{group: pair}}
          emb: {{deployment: emb}}
    """


def _completion(choices: object, usage: object = None) -> dict[str, object]:
    body: dict[str, object] = {"id": "x", "object": "chat.completion", "model": "up-model",
                               "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def _chunk(delta: object, finish: str | None = None, **extra: object) -> dict[str, object]:
    return {"id": "x", "object": "chat.completion.chunk", "model": "up-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


GOOD_MESSAGE = {"index": 0, "message": {"role": "assistant", "content": "hello there"},
                "finish_reason": "stop"}

WRONG_SHAPES = {
    "null choice": _completion([None]),
    "choices a string": _completion("abc"),
    "message a string": _completion([{"index": 0, "message": "hello"}]),
    "index null": _completion([{"index": None, "message": {"content": "x"}}]),
    "tool call null": _completion([{"message": {"tool_calls": [None]}}]),
    "usage a string count": _completion([GOOD_MESSAGE], {"prompt_tokens": "twelve"}),
    "usage a list": _completion([GOOD_MESSAGE], [1]),
    "negative usage": _completion([GOOD_MESSAGE], {"prompt_tokens": -1000,
                                                   "completion_tokens": -5}),
}


@pytest.mark.parametrize("body", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
async def test_an_answer_of_the_wrong_shape_is_a_502_and_the_group_falls_back(
    make_gateway: GatewayFactory, scripted: Scripted, body: object
) -> None:
    client = await make_gateway(_openai(scripted))
    scripted.now(body)
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "upstream_error"
    assert "provider 'up'" in error["message"] and "could not" in error["message"]

    scripted.now(body)  # the next member stands in for it
    response = await client.post("/v1/chat/completions", json={**CHAT, "model": "pair"})
    assert response.status_code == 200, response.text
    assert response.headers["x-aigw-deployment"] == "good"
    assert int(response.headers["x-aigw-attempts"]) >= 2  # after bad's attempt (and retry)


async def test_a_probe_answered_wrongly_does_not_shut_the_deployment_for_good(
    make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    """The half-open breaker's one probe got an unreadable answer: it must count as a
    failure (open again, probe later), not stay taken, refusing every request after."""
    client = await make_gateway(_openai(
        scripted, ", circuit_breaker: {consecutive_failures: 1, cooldown_s: 0.2}"))
    scripted.now({"error": {"message": "boom"}}, status=500)
    # 502, or 503 when the retry finds the circuit the failure opened (a retry that came
    # after the cooldown, on a busy machine, is a second call)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code in (502, 503)
    opened_after = scripted.calls
    await asyncio.sleep(0.3)  # open -> half-open
    scripted.now(_completion([None]))  # the probe
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code in (502, 503)
    assert scripted.calls > opened_after  # the probe went out
    await asyncio.sleep(0.3)  # open again -> half-open again: the probe was not kept
    scripted.now(_completion([GOOD_MESSAGE]))
    probed_after = scripted.calls
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200, response.text
    assert scripted.calls == probed_after + 1  # let through, as the next probe


@pytest.mark.parametrize("value", ["soon", "inf", "nan", "Tue, 99 Foo 2026 99:99:99 GMT"])
async def test_a_retry_after_that_says_nothing_usable_is_ignored(
    make_gateway: GatewayFactory, scripted: Scripted, value: str
) -> None:
    client = await make_gateway(_openai(scripted))
    scripted.now({"error": {"message": "slow down", "type": "requests"}},
                                   status=429, headers={"retry-after": value})
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 429, response.text
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert "retry-after" not in response.headers


async def test_usage_the_provider_left_out_is_counted_from_the_answer(
    make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    """An OpenAI-compatible server that ignores stream_options.include_usage: the output
    is counted by the gateway, for the client's usage and for the bill, not taken as 0."""
    client = await make_gateway(_openai(scripted))
    words = ["one", " two", " three", " four", " five"]
    scripted.now([*(_chunk({"content": word}) for word in words),
                                    _chunk({}, "stop"), "[DONE]"])
    events = await stream_events(client, {**CHAT, "stream_options": {"include_usage": True}})
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == 5  # "one two three four five"
    scripted.now(_completion([GOOD_MESSAGE]))  # no usage either
    answer = (await client.post("/v1/chat/completions", json=CHAT)).json()
    assert answer["usage"]["completion_tokens"] == 2  # "hello there"

    summary = await client.get("/v1/costs/summary", params={"group_by": "route"})
    assert summary.json()["data"][0]["tokens_out"] == 7


async def test_a_stream_that_stops_short_ends_in_an_error(
    make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    """The connection closed cleanly mid-answer (no finish_reason, no [DONE]): not a
    whole answer, so the client is told, rather than given a [DONE] it would trust."""
    client = await make_gateway(_openai(scripted))
    scripted.now([_chunk({"role": "assistant"}), _chunk({"content": "Hel"})])
    async with client.stream("POST", "/v1/chat/completions",
                             json={**CHAT, "stream": True}) as response:
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] != "data: [DONE]"
    error = json.loads(lines[-1][6:])["error"]
    assert error["code"] == "upstream_error" and "before its end" in error["message"]
    # Its status line said 200, but the ledger and the metrics count a failed request.
    summary = (await client.get("/v1/costs/summary", params={"group_by": "route"})).json()
    assert [(row["requests"], row["errors"]) for row in summary["data"]] == [(1, 1)]
    metrics = (await client.get("/metrics")).text
    assert [line for line in metrics.splitlines() if line.startswith("aigw_requests_total{")
            and 'status="502"' in line and line.endswith(" 1.0")], metrics


async def test_a_refusal_streamed_before_a_stream_stops_short_is_billed(
    make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    """A stream cut before its usage is billed what it sent, counted as a whole stream's
    output is: refusal text and tool call names too. Only content and tool arguments
    were counted, so a refusal cut short was billed 0 output tokens."""
    client = await make_gateway(_openai(scripted))
    scripted.now([_chunk({"role": "assistant"}),
                  _chunk({"refusal": "I cannot help with writing that letter"}),
                  _chunk({"refusal": " as it asks for something harmful"})])
    async with client.stream("POST", "/v1/chat/completions",
                             json={**CHAT, "stream": True}) as response:
        [line async for line in response.aiter_lines()]
    summary = (await client.get("/v1/costs/summary", params={"group_by": "route"})).json()
    assert summary["data"][0]["tokens_out"] > 5, summary


async def test_an_error_mid_stream_does_not_carry_the_providers_key(
    make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    client = await make_gateway(_openai(scripted))
    scripted.now([_chunk({"content": "Hi"}),
                                    {"error": {"message": f"bad key {PROVIDER_KEY}"}}])
    async with client.stream("POST", "/v1/chat/completions",
                             json={**CHAT, "stream": True}) as response:
        text = "".join([line async for line in response.aiter_lines()])
    assert "failed mid-stream" in text
    assert PROVIDER_KEY not in text and PROVIDER_KEY[-4:] not in text


@pytest.mark.parametrize("provider", [
    f'type: openai, base_url: "{{url}}/v1", api_key: "{PROVIDER_KEY}"',
    f'type: bedrock, region: us-east-1, base_url: "{{url}}", api_key: "{PROVIDER_KEY}"',
], ids=["openai", "bedrock"])
async def test_a_key_across_the_cut_of_a_long_error_page_is_scrubbed(
    make_gateway: GatewayFactory, scripted: Scripted, provider: str
) -> None:
    """An error page that is not JSON is cut to 2000 characters: the key was scrubbed
    after the cut, so one that straddled it was no longer whole and all but its last
    four characters got through."""
    client = await make_gateway(f"""
        providers:
          up: {{{provider.format(url=scripted.base_url)}}}
        deployments:
          bad: {{provider: up, model: up-model, context_window: 8000}}
        routes:
          chat: {{deployment: bad}}
    """)
    page = "x" * (2000 - len(PROVIDER_KEY) + 4) + f"{PROVIDER_KEY} was sent"
    # plain text: an HTML page is told by its title alone (error_pages.py), no text of it
    scripted.now(page.encode(), status=500, headers={"content-type": "text/plain"})
    answer = await client.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 502, answer.text
    message = answer.json()["error"]["message"]
    assert message.endswith("x*** was sent"), message
    assert PROVIDER_KEY[:8] not in message


@pytest.mark.parametrize(("status", "error"), [
    (402, {"type": "billing_error", "message": "Your credit balance is too low"}),
    (404, {"message": "The model `up-model` does not exist", "type": "invalid_request_error",
           "code": "model_not_found"}),
    (429, {"message": "You exceeded your current quota", "type": "insufficient_quota",
           "code": "insufficient_quota"}),
], ids=["no credit", "no such model", "no quota"])
async def test_a_deployment_its_provider_will_not_serve_gives_way_to_the_next_member(
    make_gateway: GatewayFactory, scripted: Scripted, status: int, error: object
) -> None:
    """They were a 400 blaming the client (402, 404) with the group's healthy member never
    tried, or retried on the same deployment as a rate limit (insufficient_quota)."""
    client = await make_gateway(_openai(scripted))
    scripted.now({"error": error}, status=status)
    alone = await client.post("/v1/chat/completions", json=CHAT)
    assert alone.status_code == 502, alone.text
    assert alone.json()["error"]["code"] == "upstream_unusable"
    assert scripted.calls == 1  # not retried: the same answer would come back
    response = await client.post("/v1/chat/completions", json={**CHAT, "model": "pair"})
    assert response.status_code == 200, response.text
    assert response.headers["x-aigw-deployment"] == "good"
    assert scripted.calls == 2


async def test_the_log_of_an_unreadable_answer_does_not_carry_the_providers_key(
    make_gateway: GatewayFactory, scripted: Scripted, caplog: pytest.LogCaptureFixture
) -> None:
    """The answer quoted the key it was sent; the log line's traceback quoted the answer."""
    client = await make_gateway(_openai(scripted))
    scripted.now(_completion([GOOD_MESSAGE], {"prompt_tokens": f"Bearer {PROVIDER_KEY}"}))
    with caplog.at_level("WARNING", logger="aigw.upstream"):
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502, response.text
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "a call failed inside aigw" in logged
    assert "Traceback" in logged and "ValueError" in logged  # still says what failed
    assert PROVIDER_KEY not in logged and PROVIDER_KEY[-4:] not in logged


async def test_an_error_does_not_carry_a_credential_from_the_providers_headers(
    make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    token = "hl-secret-token-abcdefghijkl"
    client = await make_gateway(_openai(scripted).replace(
        f'api_key: "{PROVIDER_KEY}"}}',
        f'api_key: "{PROVIDER_KEY}", headers: {{Helicone-Auth: "Bearer {token}"}}}}'))
    scripted.now({"error": {"message": f"header 'Bearer {token}' is not valid",
                            "type": "invalid_request_error"}}, status=400)
    answer = await client.post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 400
    assert token not in answer.text and "is not valid" in answer.text


EMBEDDINGS = {
    "one row for two inputs": {"data": [{"index": 0, "embedding": [0.1, 0.2]}]},
    "base64 not asked for": {"data": [{"index": 0, "embedding": "AAAAAA=="},
                                      {"index": 1, "embedding": "AAAAAA=="}]},
    "no data": {"data": None},
    "an empty vector": {"data": [{"index": 0, "embedding": []},
                                 {"index": 1, "embedding": [0.3]}]},
    # Two rows for input 0 and none for input 1: one input's vector was given twice.
    "an index twice": {"data": [{"index": 0, "embedding": [0.1]},
                                {"index": 0, "embedding": [0.3]}]},
    # Not finite, or past float32: JSON cannot carry it (a 500), base64 cannot pack it.
    "NaN": {"data": [{"index": 0, "embedding": ["NaN"]}, {"index": 1, "embedding": [0.3]}]},
    "infinity": {"data": [{"index": 0, "embedding": [0.1]},
                          {"index": 1, "embedding": ["-Infinity"]}]},
    "past float32": {"data": [{"index": 0, "embedding": [1e39]},
                              {"index": 1, "embedding": [0.3]}]},
    # Settled as it came, it refunded the budget: a 500, no ledger record.
    "negative usage": {"data": [{"index": 0, "embedding": [0.1]},
                                {"index": 1, "embedding": [0.3]}],
                       "usage": {"prompt_tokens": -500}},
}


@pytest.mark.parametrize("body", EMBEDDINGS.values(), ids=EMBEDDINGS.keys())
async def test_embeddings_of_the_wrong_shape_are_a_502(
    make_gateway: GatewayFactory, scripted: Scripted, body: object
) -> None:
    client = await make_gateway(_openai(scripted))
    for encoding in ("float", "base64"):  # base64: the openai SDK's default
        scripted.now(body)
        response = await client.post("/v1/embeddings", json={
            "model": "emb", "input": ["a", "b"], "encoding_format": encoding})
        assert response.status_code == 502, response.text
    scripted.now({"data": [{"index": 1, "embedding": [0.3, 0.4]},
                                             {"index": 0, "embedding": [0.1, 0.2]}]})
    response = await client.post("/v1/embeddings", json={"model": "emb", "input": ["a", "b"]})
    assert [row["embedding"] for row in response.json()["data"]] == [[0.1, 0.2], [0.3, 0.4]]


async def test_embeddings_without_an_index_keep_the_order_they_came_in(
    make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    """Some compatible servers send no index: each row stands where it came (two rows
    with none are not two rows with the same index)."""
    client = await make_gateway(_openai(scripted))
    scripted.now({"data": [{"embedding": [0.1, 0.2]}, {"embedding": [0.3, 0.4]}]})
    response = await client.post("/v1/embeddings", json={"model": "emb", "input": ["a", "b"]})
    assert response.status_code == 200, response.text
    assert [row["embedding"] for row in response.json()["data"]] == [[0.1, 0.2], [0.3, 0.4]]


RANKINGS = {
    "no results": {"meta": {}},
    "results a string": {"results": "abc"},
    "more results than documents": {"results": [
        {"index": i % 2, "relevance_score": 0.5} for i in range(3)]},
    "index out of range": {"results": [{"index": 2, "relevance_score": 0.5}]},
    "index twice": {"results": [{"index": 0, "relevance_score": 0.5},
                                {"index": 0, "relevance_score": 0.4}]},
    "index a string": {"results": [{"index": "0", "relevance_score": 0.5}]},
    "score missing": {"results": [{"index": 0}]},
    "score NaN": {"results": [{"index": 0, "relevance_score": "NaN"}]},
    # Billed as they came, they refunded the budget.
    "negative tokens": {"results": [{"index": 0, "relevance_score": 0.5}],
                        "usage": {"total_tokens": -5},  # vLLM's, and Cohere's count:
                        "meta": {"tokens": {"input_tokens": -5}}},
    "negative search units": {"results": [{"index": 0, "relevance_score": 0.5}],
                              "meta": {"billed_units": {"search_units": -1}}},
}


@pytest.mark.parametrize("body", RANKINGS.values(), ids=RANKINGS.keys())
@pytest.mark.parametrize("route", ["cohere", "compatible"])
async def test_rankings_of_the_wrong_shape_are_a_502(
    make_gateway: GatewayFactory, scripted: Scripted, body: object, route: str
) -> None:
    client = await make_gateway(f"""
        providers:
          cohere: {{type: cohere, base_url: "{scripted.base_url}", api_key: "{PROVIDER_KEY}"}}
          compatible: {{type: openai_compatible, base_url: "{scripted.base_url}/v1"}}
        deployments:
          cohere: {{provider: cohere, model: rerank-v3.5, kind: rerank, context_window: 4096}}
          compatible: {{provider: compatible, model: bge, kind: rerank, context_window: 4096}}
        routes:
          cohere: {{deployment: cohere}}
          compatible: {{deployment: compatible}}
    """)
    ask = {"model": route, "query": "q", "documents": ["a", "b"]}
    scripted.now(body)
    response = await client.post("/v1/rerank", json=ask)
    assert response.status_code == 502, response.text
    scripted.now({"results": [{"index": 1, "relevance_score": 0.2},
                              {"index": 0, "relevance_score": 0.9}]})
    response = await client.post("/v1/rerank", json=ask)
    assert [row["index"] for row in response.json()["results"]] == [0, 1]  # best first


MEDIA = {
    "fewer images than n": ("images", {"data": [{"url": "https://x.test/1.png"}]}),
    "no data": ("images", {"created": 1}),
    "an image with neither url nor b64_json": ("images", {"data": [{"url": 1}, {}]}),
    "data a string": ("images", {"data": "abc"}),
    "negative output tokens": ("images", {"data": [{"b64_json": "eA=="}] * 2,
                                          "usage": {"input_tokens": 3, "output_tokens": -9}}),
    "fewer results than inputs": ("moderations", {"results": [
        {"flagged": False, "categories": {}, "category_scores": {}}]}),
    "flagged a string": ("moderations", {"results": [
        {"flagged": "no", "categories": {}, "category_scores": {}}] * 2}),
    "no category_scores": ("moderations", {"results": [
        {"flagged": False, "categories": {}}] * 2}),
    "results a string": ("moderations", {"results": "abc"}),
}


@pytest.mark.parametrize(("endpoint", "body"), MEDIA.values(), ids=MEDIA.keys())
async def test_images_and_moderations_of_the_wrong_shape_are_a_502(
    make_gateway: GatewayFactory, scripted: Scripted, endpoint: str, body: object,
) -> None:
    client = await make_gateway(f"""
        providers:
          compatible: {{type: openai_compatible, base_url: "{scripted.base_url}/v1"}}
        deployments:
          painter: {{provider: compatible, model: sd, kind: image, context_window: 4096}}
          guard: {{provider: compatible, model: guard, kind: moderation, context_window: 4096}}
        routes:
          images: {{deployment: painter}}
          moderations: {{deployment: guard}}
    """)
    ask = {"model": "images", "prompt": "a cat", "n": 2} if endpoint == "images" \
        else {"model": "moderations", "input": ["a", "b"]}
    path = "/v1/images/generations" if endpoint == "images" else "/v1/moderations"
    scripted.now(body)
    response = await client.post(path, json=ask)
    assert response.status_code == 502, response.text


TRANSCRIPTS = {
    "not an object": b"[1, 2]",
    "a negative duration": {"text": "hi", "usage": {"type": "duration", "seconds": -3}},
    "a duration that is text": {"text": "hi", "duration": "long", "task": "transcribe"},
    "negative tokens": {"text": "hi", "usage": {"type": "tokens", "input_tokens": -1,
                                                "output_tokens": 2}},
}


@pytest.mark.parametrize("body", TRANSCRIPTS.values(), ids=TRANSCRIPTS.keys())
async def test_transcripts_of_the_wrong_shape_are_a_502(
    make_gateway: GatewayFactory, scripted: Scripted, body: object
) -> None:
    """A transcript's usage is billed as it is: one that is no count would refund the
    budget, or break the bill. The text itself is passed through unread."""
    client = await make_gateway(f"""
        providers:
          up: {{type: openai, base_url: "{scripted.base_url}/v1", api_key: "{PROVIDER_KEY}"}}
        deployments:
          whisper: {{provider: up, model: whisper-1, kind: transcription, context_window: 8000,
                     price: {{per_minute: 0.006}}}}
        routes:
          whisper: {{deployment: whisper}}
    """)
    upload = {"file": ("a.mp3", b"\xff" * 100)}
    scripted.now(body)
    response = await client.post("/v1/audio/transcriptions", data={"model": "whisper"},
                                 files=upload)
    assert response.status_code == 502, response.text
    scripted.now({"text": "hi", "usage": {"type": "duration", "seconds": 3}})
    response = await client.post("/v1/audio/transcriptions", data={"model": "whisper"},
                                 files=upload)
    assert response.json() == {"text": "hi", "usage": {"type": "duration", "seconds": 3}}


async def test_gemini_errors_of_an_unexpected_shape_are_still_classified(
    make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    client = await make_gateway(gemini_on(scripted, route="chat"))
    # RetryInfo details that are not objects: no retry advice, still a rate limit.
    scripted.now({"error": {"code": 429, "message": "quota",
                                              "status": "RESOURCE_EXHAUSTED",
                                              "details": ["x"]}}, status=429)
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 429, response.text
    # An error event whose code is the status name, not a number.
    scripted.now([
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}}]},
        {"error": {"code": "UNAVAILABLE", "message": "try later", "status": "UNAVAILABLE"}}])
    assert (await stream_events(client, CHAT))[-1]["error"]["code"] == "upstream_error"
    # A stream that ends without a finishReason was cut.
    scripted.now([
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hi"}]}}]}])
    assert "before its end" in (await stream_events(client, CHAT))[-1]["error"]["message"]


async def test_a_number_too_large_for_a_float_is_a_400(make_gateway: GatewayFactory,
                                                        scripted: Scripted) -> None:
    """1e999 parses as infinity, which no JSON encoder sends upstream."""
    client = await make_gateway(_openai(scripted))
    body = json.dumps(CHAT)[:-1] + ', "presence_penalty": 1e999}'
    response = await client.post("/v1/chat/completions", content=body,
                                 headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "presence_penalty"
    assert scripted.calls == 0


async def test_an_anthropic_stream_without_message_stop_ends_in_an_error(
    make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    """The connection closed cleanly before message_stop: not a whole answer."""
    client = await make_gateway(f"""
        providers:
          claude: {{type: anthropic, base_url: "{scripted.base_url}", api_key: "{PROVIDER_KEY}"}}
        deployments:
          sonnet: {{provider: claude, model: claude-sonnet-4-5, context_window: 8000}}
        routes:
          chat: {{deployment: sonnet}}
    """)
    scripted.now([
        {"type": "message_start", "message": {"usage": {"input_tokens": 3}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta",
                                                              "text": "Hi"}}])
    events = await stream_events(client, CHAT)
    assert events[-2]["choices"][0]["delta"]["content"] == "Hi"
    error = events[-1]["error"]
    assert error["code"] == "upstream_error"
    assert "provider 'claude' ended the stream before message_stop" in error["message"]


async def test_a_bedrock_stream_cut_before_message_stop_or_with_no_json_event_is_an_error(
    make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    client = await make_gateway(f"""
        providers:
          aws: {{type: bedrock, region: us-east-1, base_url: "{scripted.base_url}",
                 api_key: "{PROVIDER_KEY}"}}
        deployments:
          nova: {{provider: aws, model: amazon.nova-lite-v1:0, context_window: 8000}}
        routes:
          chat: {{deployment: nova}}
    """)
    started = event("messageStart", {"role": "assistant"})
    text = event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}})
    not_json = frame({":event-type": "contentBlockDelta", ":message-type": "event"}, b"[1]")
    for frames, said in (([started, text], "ended the stream before messageStop"),
                         ([started, text, not_json], "sent an event that is not a JSON object")):
        scripted.now(b"".join(frames))
        error = (await stream_events(client, CHAT))[-1]["error"]
        assert error["code"] == "upstream_error"
        assert f"provider 'aws' {said}" in error["message"]
