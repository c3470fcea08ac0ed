"""The openai, openai_compatible and azure_openai adapters against the OpenAI fake."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from aigw.compiler.graph import Provider
from aigw.runtime.providers.openai import AzureOpenAIAdapter
from aigw.runtime.tokens import TokenCounter

from ..fakes.brain import Action
from ..fakes.openai_fake import OpenAIFake
from ..fakes.scripted import scripted_upstream
from .conftest import (
    CACHE_PRICED,
    CHAT,
    EPHEMERAL,
    MARKED_MESSAGE,
    TOOLS,
    GatewayFactory,
    billed,
    cache_priced_cost,
    stream_chunks,
    unmarked,
)


def _sections(fake: OpenAIFake) -> str:
    base = fake.base_url  # type: ignore[attr-defined]
    return f"""
    providers:
      oai: {{type: openai, base_url: "{base}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}
      compat: {{type: openai_compatible, base_url: "{base}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}
      az: {{type: azure_openai, base_url: "{base}", api_key: "${{FAKE_OPENAI_KEY}}",
            api_version: "2024-10-21"}}
    deployments:
      gpt: {{provider: oai, model: gpt-4o-mini, context_window: 128000, {CACHE_PRICED},
             capabilities: [streaming, tools, vision, json_schema]}}
      local-llm: {{provider: compat, model: llama-3.1-8b, context_window: 32000,
                   capabilities: [streaming, tools]}}
      azure-gpt: {{provider: az, model: my-gpt-deployment, context_window: 128000,
                   capabilities: [streaming, tools]}}
      emb: {{provider: oai, model: text-embedding-3-small, kind: embeddings,
             context_window: 8191}}
      azure-emb: {{provider: az, model: my-embedding-deployment, kind: embeddings,
                   context_window: 8191}}
    routes:
      gpt: {{deployment: gpt}}
      local: {{deployment: local-llm}}
      azure: {{deployment: azure-gpt}}
      emb: {{deployment: emb}}
      azure-emb: {{deployment: azure-emb}}
    """


async def test_chat_passes_through_with_the_upstream_model_id(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_sections(openai_fake))
    response = await client.post(CHAT, json={
        "model": "gpt", "messages": [{"role": "user", "content": "hello there"}],
        "temperature": 0.2, "seed": 7, "max_completion_tokens": 50,
    })
    assert response.status_code == 200, response.text
    # The fake words its answer by the seed ("notes" for 7): a seed dropped would show.
    assert response.json()["choices"][0]["message"]["content"] == "fake-openai notes: hello there"
    sent = openai_fake.script.requests[-1]
    assert sent["model"] == "gpt-4o-mini"
    assert (sent["temperature"], sent["seed"], sent["max_completion_tokens"]) == (0.2, 7, 50)
    assert response.json()["usage"]["prompt_tokens"] == 5


async def test_stream_reassembles_a_tool_call(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_sections(openai_fake))
    chunks = await stream_chunks(client, {
        "model": "local", "tools": TOOLS,
        "messages": [{"role": "user", "content": "find the moon"}],
    })
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:  # type: ignore[attr-defined]
            for call in choice["delta"].get("tool_calls", []):
                slot = calls.setdefault(call["index"], {"id": "", "name": "", "arguments": ""})
                slot["id"] += call.get("id", "")
                slot["name"] += call.get("function", {}).get("name", "")
                slot["arguments"] += call.get("function", {}).get("arguments", "")
    assert calls == {0: {"id": "call_fake_1", "name": "lookup",
                         "arguments": json.dumps({"query": "find the moon"})}}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]  # type: ignore[index]
    assert finishes[-1] == "tool_calls"
    # Usage is always asked for upstream (to bill), but not shown unless the client asked.
    assert openai_fake.script.requests[-1]["stream_options"] == {"include_usage": True}
    assert all("usage" not in chunk for chunk in chunks)


@pytest.mark.parametrize("ending", ["\r", "\r\n"], ids=["cr", "crlf"])
async def test_a_stream_whose_lines_end_in_cr_reads_as_one_in_lf(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory, ending: str
) -> None:
    """SSE ends a line with LF, CRLF or a CR alone; each event is sent as a chunk of its
    own, so an event's last CR and the blank line's sit at chunk edges."""
    openai_fake.line_ending = ending
    client = await make_gateway(_sections(openai_fake))
    chunks = await stream_chunks(client, {
        "model": "gpt", "messages": [{"role": "user", "content": "over the sea"}]})
    text = "".join(choice["delta"].get("content") or ""  # type: ignore[attr-defined]
                   for chunk in chunks for choice in chunk["choices"])  # type: ignore[attr-defined]
    assert text == "fake-openai: over the sea"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]


async def test_multi_turn_tool_conversation(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_sections(openai_fake))
    first = (await client.post(CHAT, json={
        "model": "gpt", "tools": TOOLS, "messages": [{"role": "user", "content": "weather?"}],
    })).json()
    message = first["choices"][0]["message"]
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    second = await client.post(CHAT, json={"model": "gpt", "tools": TOOLS, "messages": [
        {"role": "user", "content": "weather?"},
        message,
        {"role": "tool", "tool_call_id": message["tool_calls"][0]["id"], "content": "sunny"},
    ]})
    assert second.status_code == 200, second.text
    assert second.json()["choices"][0]["message"]["content"] == "tool said: sunny"


async def test_azure_uses_deployment_urls_and_api_key_header(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_sections(openai_fake))
    response = await client.post(CHAT, json={
        "model": "azure", "messages": [{"role": "user", "content": "hi azure"}]})
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "my-gpt-deployment"
    assert "model" not in openai_fake.script.requests[-1]
    assert openai_fake.script.headers[-1]["api-key"] == openai_fake.api_key
    assert "authorization" not in openai_fake.script.headers[-1]
    chunks = await stream_chunks(client, {"model": "azure",
                                    "messages": [{"role": "user", "content": "a b c"}]})
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])  # type: ignore[index]
    assert text == "fake-openai: a b c"


async def test_embeddings_as_floats_and_base64(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_sections(openai_fake))
    floats = await client.post("/v1/embeddings", json={"model": "emb", "input": ["a", "bb"]})
    assert floats.status_code == 200, floats.text
    vectors = [row["embedding"] for row in floats.json()["data"]]
    assert len(vectors) == 2 and len(vectors[0]) == 8
    packed = await client.post("/v1/embeddings", json={
        "model": "azure-emb", "input": "a", "encoding_format": "base64", "dimensions": 4})
    assert packed.status_code == 200, packed.text
    raw = base64.b64decode(packed.json()["data"][0]["embedding"])
    assert len(struct.unpack("<4f", raw)) == 4
    assert openai_fake.script.requests[-1]["encoding_format"] == "float"


async def test_upstream_failures_keep_their_meaning(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_sections(openai_fake))
    message = {"model": "gpt", "messages": [{"role": "user", "content": "x"}]}
    # A lone deployment is retried once after Retry-After; then the client gets the 429.
    seen = len(openai_fake.script.requests)
    openai_fake.script.actions += [Action(status=429, headers={"retry-after": "0.05"})] * 2
    limited = await client.post(CHAT, json=message)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(openai_fake.script.requests) == seen + 2

    openai_fake.script.actions.append(Action(status=400, body={"error": {
        "message": "This model's maximum context length is 128000 tokens.",
        "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}))
    too_long = await client.post(CHAT, json=message)
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    assert too_long.json()["error"]["param"] == "messages"

    # A refusal keeps the parameter it names, and its code (the type stays the gateway's).
    openai_fake.script.actions.append(Action(status=400, body={"error": {
        "message": "Invalid value for 'foo'.", "type": "invalid_request_error",
        "param": "foo", "code": "invalid_value"}}))
    refused = await client.post(CHAT, json=message)
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "message": "provider 'oai' rejected the request: Invalid value for 'foo'.",
        "type": "invalid_request_error", "param": "foo", "code": "invalid_value"}

    openai_fake.script.actions += [Action(status=500), Action(status=500)]
    broken = await client.post(CHAT, json=message)
    assert broken.status_code == 502


async def test_a_rejected_provider_key_never_reaches_the_client(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_sections(openai_fake))
    key = openai_fake.api_key
    openai_fake.api_key = "sk-some-other-key"  # the gateway's key is now wrong upstream
    response = await client.post(CHAT, json={
        "model": "gpt", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_auth_failed"
    assert response.headers["x-should-retry"] == "false"  # the SDKs retried it twice
    assert key not in response.text and key[-4:] not in response.text


async def test_a_providers_cookies_are_not_kept(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    """A provider's Set-Cookie (OpenAI's Cloudflare sets __cf_bm) is not stored and
    sent again with later requests: they are other tenants' requests too."""
    # By name, not by address: cookie jars ignore cookies from IP addresses.
    client = await make_gateway(_sections(openai_fake).replace("127.0.0.1", "localhost"))
    message = {"model": "gpt", "messages": [{"role": "user", "content": "x"}]}
    openai_fake.script.actions.append(Action(headers={
        "set-cookie": "__cf_bm=tenant-a-state; Path=/; HttpOnly"}))
    for _ in range(2):
        assert (await client.post(CHAT, json=message)).status_code == 200
    assert [sent.get("cookie") for sent in openai_fake.script.headers[-2:]] == [None, None]


async def test_unreachable_upstream_is_502(make_gateway: GatewayFactory) -> None:
    client = await make_gateway("""
    providers:
      gone: {type: openai_compatible, base_url: "http://127.0.0.1:9/v1"}
    deployments:
      d: {provider: gone, model: m, context_window: 1000}
    routes:
      r: {deployment: d}
    """)
    response = await client.post(CHAT, json={
        "model": "r", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"


async def test_vision_and_json_schema_pass_through_unchanged(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_sections(openai_fake))
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=",
                                                 "detail": "low"}}
    schema = {"type": "json_schema", "json_schema": {
        "name": "answer", "strict": True,
        "schema": {"type": "object", "properties": {"a": {"type": "string"}},
                   "required": ["a"], "additionalProperties": False}}}
    response = await client.post(CHAT, json={
        "model": "gpt", "response_format": schema,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "what is it?"},
                                                   image]}],
    })
    assert response.status_code == 200, response.text
    sent = openai_fake.script.requests[-1]
    assert sent["messages"][0]["content"][1] == image
    assert sent["response_format"] == schema
    # The fake answers JSON of the schema only when it was sent one.
    answer = response.json()["choices"][0]["message"]["content"]
    assert json.loads(answer) == {"a": "fake-openai: what is it?"}


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_a_seed_and_json_object_reach_the_upstream(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory, stream: bool
) -> None:
    """The fake words a seeded answer by its seed and answers json_object in JSON, as a
    model does: each answer differs from the one it gives without them."""
    client = await make_gateway(_sections(openai_fake))
    ask = {"model": "gpt", "messages": [{"role": "user", "content": "reply in json"}]}

    async def answer(**more: object) -> str:
        if not stream:
            response = await client.post(CHAT, json={**ask, **more})
            assert response.status_code == 200, response.text
            return str(response.json()["choices"][0]["message"]["content"])
        return "".join(choice["delta"].get("content") or ""  # type: ignore[attr-defined]
                       for chunk in await stream_chunks(client, {**ask, **more})
                       for choice in chunk["choices"])  # type: ignore[attr-defined]

    assert await answer() == "fake-openai: reply in json"
    assert await answer(seed=1) == await answer(seed=1) == "fake-openai heard: reply in json"
    assert await answer(seed=2) == "fake-openai repeats: reply in json"
    assert json.loads(await answer(response_format={"type": "json_object"})) == {
        "answer": "fake-openai: reply in json"}


async def test_a_deployment_without_vision_is_not_sent_images(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_sections(openai_fake))
    response = await client.post(CHAT, json={"model": "local", "messages": [{
        "role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
    }]})
    assert response.status_code == 400  # not context_length_exceeded: no trim would help
    assert response.json()["error"]["param"] == "messages"
    assert "lacks vision" in response.json()["error"]["message"]
    assert openai_fake.script.requests == []


async def test_azure_tool_calls_and_vision_go_through_the_same_adapter(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    with_vision = _sections(openai_fake).replace(
        "tools]}\n      emb:", "tools, vision]}\n      emb:")
    client = await make_gateway(with_vision)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    response = await client.post(CHAT, json={"model": "azure", "tools": TOOLS, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "see"}, image]}]})
    assert response.status_code == 200, response.text
    call = response.json()["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "lookup"
    assert openai_fake.script.requests[-1]["messages"][0]["content"][1] == image


async def test_log_probabilities_reach_the_client(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    """They were asked for upstream and dropped: "logprobs": null, whole and streamed."""
    client = await make_gateway(_sections(openai_fake))
    ask = {"model": "gpt", "messages": [{"role": "user", "content": "hello there"}],
           "logprobs": True, "top_logprobs": 1}
    response = await client.post(CHAT, json=ask)
    assert response.status_code == 200, response.text
    scored = response.json()["choices"][0]["logprobs"]["content"]
    assert "".join(item["token"] for item in scored) == "fake-openai: hello there"
    chunks = await stream_chunks(client, ask)
    streamed = [item for chunk in chunks for choice in chunk["choices"]
                for item in (choice["logprobs"] or {}).get("content", [])]
    assert "".join(item["token"] for item in streamed) == "fake-openai: hello there"
    plain = await client.post(CHAT, json={**ask, "logprobs": False})
    assert plain.json()["choices"][0]["logprobs"] is None
    assert "annotations" not in plain.json()["choices"][0]["message"]  # empty: left out


async def test_message_fields_the_gateway_does_not_read_pass_through(
    make_gateway: GatewayFactory,
) -> None:
    """Audio (modalities), url citations (web_search_options) and the legacy
    function_call were dropped: the client got content null and nothing else."""
    audio = {"id": "audio_1", "data": "UklGRg==", "expires_at": 1, "transcript": "hi"}
    annotations = [{"type": "url_citation", "url_citation": {
        "url": "https://example.com", "title": "Example", "start_index": 0, "end_index": 2}}]
    with scripted_upstream() as upstream:
        client = await make_gateway(f"""
        providers:
          up: {{type: openai, base_url: "{upstream.base_url}/v1", api_key: "sk-test"}}
        deployments:
          gpt: {{provider: up, model: gpt-4o-audio, context_window: 128000,
                 capabilities: [streaming]}}
        routes:
          gpt: {{deployment: gpt}}
        """)
        upstream.now({"id": "x", "object": "chat.completion", "model": "gpt-4o-audio",
                      "choices": [{"index": 0, "finish_reason": "stop", "message": {
                          "role": "assistant", "content": None, "audio": audio,
                          "annotations": annotations}}],
                      "usage": {"prompt_tokens": 5, "completion_tokens": 9}})
        response = await client.post(CHAT, json={
            "model": "gpt", "messages": [{"role": "user", "content": "say hi"}],
            "modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}})
        assert response.status_code == 200, response.text
        message = response.json()["choices"][0]["message"]
        assert (message["audio"], message["annotations"]) == (audio, annotations)
        upstream.now([{"id": "x", "object": "chat.completion.chunk", "model": "gpt-4o-audio",
                       "choices": [{"index": 0, "delta": {"audio": {"transcript": "hi"}},
                                    "finish_reason": None}]},
                      {"id": "x", "object": "chat.completion.chunk", "model": "gpt-4o-audio",
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                      "[DONE]"])
        chunks = await stream_chunks(client, {"model": "gpt", "messages": [
            {"role": "user", "content": "say hi"}], "modalities": ["text", "audio"]})
        assert [choice["delta"].get("audio") for chunk in chunks
                for choice in chunk["choices"]] == [None, {"transcript": "hi"}, None]


async def test_a_deployments_output_cap_reaches_the_upstream_when_the_client_sets_none(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    """The request is held (budgets, tpm) at the deployment's max_output_tokens; the
    upstream was sent no cap, so it could write, and cost, more than was held."""
    client = await make_gateway(_sections(openai_fake).replace("    routes:\n", """
      capped: {provider: oai, model: gpt-4o-mini, context_window: 128000,
               max_output_tokens: 100}
      capped-local: {provider: compat, model: llama-3.1-8b, context_window: 32000,
                     max_output_tokens: 100}
      capped-azure: {provider: az, model: my-gpt, context_window: 128000,
                     max_output_tokens: 100}
    routes:
      capped: {deployment: capped}
      capped-local: {deployment: capped-local}
      capped-azure: {deployment: capped-azure}
""", 1))
    hello = [{"role": "user", "content": "hello"}]
    for route, field, other in (
        ("capped", "max_completion_tokens", "max_tokens"),
        ("capped-local", "max_tokens", "max_completion_tokens"),
        ("capped-azure", "max_completion_tokens", "max_tokens"),
    ):
        answer = await client.post(CHAT, json={"model": route, "messages": hello})
        assert answer.status_code == 200, answer.text
        sent = openai_fake.script.requests[-1]
        assert sent[field] == 100 and other not in sent, sent
    await client.post(CHAT, json={"model": "capped", "messages": hello, "max_tokens": 20})
    sent = openai_fake.script.requests[-1]
    assert sent.get("max_tokens") == 20 and "max_completion_tokens" not in sent
    await client.post(CHAT, json={"model": "gpt", "messages": hello})  # no cap of its own
    assert not {"max_tokens", "max_completion_tokens"} & set(openai_fake.script.requests[-1])


async def test_a_clients_max_completion_tokens_reaches_a_server_that_knows_max_tokens_only(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    """Ollama (and Azure before 2024-09-01) read max_tokens only: the client's
    max_completion_tokens, passed through as it was, was ignored there, and the upstream
    wrote past the cap the request was held at."""
    client = await make_gateway(_sections(openai_fake))
    hello = [{"role": "user", "content": "hello"}]
    answer = await client.post(CHAT, json={"model": "local", "messages": hello,
                                           "max_completion_tokens": 50})
    assert answer.status_code == 200, answer.text
    sent = openai_fake.script.requests[-1]
    assert sent.get("max_tokens") == 50 and "max_completion_tokens" not in sent, sent
    await client.post(CHAT, json={"model": "gpt", "messages": hello, "max_completion_tokens": 50})
    sent = openai_fake.script.requests[-1]  # OpenAI's own API reads it as it is
    assert sent.get("max_completion_tokens") == 50 and "max_tokens" not in sent, sent
    # The Messages API's max_tokens reaches each as an OpenAI SDK's max_completion_tokens
    # does: OpenAI's reasoning models refuse max_tokens.
    for route, field in (("local", "max_tokens"), ("gpt", "max_completion_tokens"),
                         ("azure", "max_completion_tokens")):
        answer = await client.post("/v1/messages", json={"model": route, "max_tokens": 50,
                                                         "messages": hello})
        assert answer.status_code == 200, answer.text
        sent = openai_fake.script.requests[-1]
        assert sent.get(field) == 50, sent
        assert len({"max_tokens", "max_completion_tokens"} & set(sent)) == 1, sent


async def test_anthropic_hints_from_the_messages_api_are_left_out_upstream(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    """/v1/messages keeps cache_control and top_k for Anthropic-family upstreams; an
    OpenAI-format one is sent what the same request unmarked would send (OpenAI refuses
    top_k, some compatible servers cache_control), while an OpenAI-format client's own
    cache_control still passes through."""
    client = await make_gateway(_sections(openai_fake))
    for route in ("gpt", "local"):
        sent = []
        for message in (MARKED_MESSAGE, unmarked(MARKED_MESSAGE)):
            answer = await client.post("/v1/messages", json={**message, "model": route})
            assert answer.status_code == 200, answer.text
            sent.append(openai_fake.script.requests[-1])
        assert sent[0] == sent[1]
        assert sent[0]["messages"][0] == {"role": "system",
                                          "content": "You are terse.\n\na long shared instruction"}
    own = [{"type": "text", "text": "hello", "cache_control": EPHEMERAL}]
    await client.post(CHAT, json={"model": "local", "messages": [{"role": "user", "content": own}]})
    assert openai_fake.script.requests[-1]["messages"][0]["content"] == own


async def test_the_messages_apis_structured_outputs_are_a_strict_json_schema(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    """Anthropic's ``output_config.format`` (what its SDK's ``messages.parse`` sends) was
    refused as an unknown field; Anthropic's structured outputs always hold to the schema."""
    client = await make_gateway(_sections(openai_fake))
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    answer = await client.post("/v1/messages", json={
        "model": "gpt", "max_tokens": 10, "messages": [{"role": "user", "content": "where?"}],
        "output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert answer.status_code == 200, answer.text
    assert openai_fake.script.requests[-1]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": schema,
                                               "strict": True}}
    assert json.loads(answer.json()["content"][0]["text"]) == {"city": "fake-openai: where?"}
    unable = await client.post("/v1/messages", json={
        "model": "local", "max_tokens": 10, "messages": [{"role": "user", "content": "where?"}],
        "output_config": {"format": {"type": "json_schema", "schema": schema}}})
    assert unable.status_code == 400, unable.text
    assert "lacks json_schema" in unable.json()["error"]["message"]


async def test_reasoning_tokens_reach_the_client(make_gateway: GatewayFactory) -> None:
    """completion_tokens_details.reasoning_tokens (o-series models) came back null."""
    with scripted_upstream() as upstream:
        client = await make_gateway(f"""
        providers:
          up: {{type: openai, base_url: "{upstream.base_url}/v1", api_key: "sk-test"}}
        deployments:
          o: {{provider: up, model: o4-mini, context_window: 128000}}
        routes:
          o: {{deployment: o}}
        """)
        upstream.now({"id": "x", "object": "chat.completion", "model": "o4-mini",
                      "choices": [{"index": 0, "finish_reason": "stop", "message": {
                          "role": "assistant", "content": "42"}}],
                      "usage": {"prompt_tokens": 5, "completion_tokens": 30,
                                "completion_tokens_details": {"reasoning_tokens": 25}}})
        answer = await client.post(CHAT, json={"model": "o", "messages": [
            {"role": "user", "content": "think"}]})
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    assert usage["completion_tokens"] == 30
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 25}


async def test_reasoning_tokens_counted_in_total_tokens_only_are_billed(
    make_gateway: GatewayFactory,
) -> None:
    """xAI counts reasoning tokens in total_tokens, not in completion_tokens: they went
    unbilled (9 output tokens billed of 144) and the client was told total_tokens 41."""
    with scripted_upstream() as upstream:
        client = await make_gateway(f"""
        providers:
          up: {{type: openai_compatible, base_url: "{upstream.base_url}/v1", api_key: "k-1"}}
        deployments:
          grok: {{provider: up, model: grok-4, context_window: 128000,
                  price: {{input: 1000, output: 2000}}}}
        routes:
          grok: {{deployment: grok}}
        """)
        upstream.now({"id": "x", "object": "chat.completion", "model": "grok-4",
                      "choices": [{"index": 0, "finish_reason": "stop", "message": {
                          "role": "assistant", "content": "42"}}],
                      "usage": {"prompt_tokens": 32, "completion_tokens": 9,
                                "total_tokens": 176,
                                "completion_tokens_details": {"reasoning_tokens": 135}}})
        answer = await client.post(CHAT, json={"model": "grok", "messages": [
            {"role": "user", "content": "think"}]})
        assert answer.status_code == 200, answer.text
        usage = answer.json()["usage"]
        assert (usage["completion_tokens"], usage["total_tokens"]) == (144, 176)
        summary = (await client.get("/v1/costs/summary")).json()["data"]
    assert sum(row["cost"] for row in summary) == pytest.approx((32 * 1000 + 144 * 2000) / 1e6)


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_cached_prompt_tokens_are_billed_at_the_cache_read_price(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory, stream: bool
) -> None:
    """OpenAI's cached_tokens are part of prompt_tokens: they were billed at the full
    input price, whatever the prompt cache saved."""
    openai_fake.cached_tokens = 3
    client = await make_gateway(_sections(openai_fake))
    payload = {"model": "gpt", "messages": [{"role": "user", "content": "hello there"}]}
    if stream:
        chunks = await stream_chunks(client, {**payload, "stream_options": {"include_usage": True}})
        usage = chunks[-1]["usage"]
    else:
        usage = (await client.post(CHAT, json=payload)).json()["usage"]
    assert (usage["prompt_tokens"], usage["prompt_tokens_details"]) == (5, {"cached_tokens": 3})
    totals = await billed(client)
    assert (totals["tokens_in"], totals["tokens_cached"], totals["tokens_out"]) == (5, 3, 3)
    assert totals["cost"] == pytest.approx(cache_priced_cost(2, 3, 0, 3))


def test_azure_api_versions_before_max_completion_tokens_are_sent_max_tokens() -> None:
    """API versions before 2024-09-01-preview know max_tokens only."""
    def adapter(version: str) -> AzureOpenAIAdapter:
        return AzureOpenAIAdapter(Provider(
            name="az", type="azure_openai", base_url="https://x.openai.azure.com",
            api_version=version, timeout_s=5.0, max_connections=1, headers={},
            disabled_reason=None), TokenCounter())

    assert adapter("2024-06-01").cap_field() == "max_tokens"
    assert adapter("2024-09-01-preview").cap_field() == "max_completion_tokens"
    assert adapter("2024-10-21").cap_field() == "max_completion_tokens"


async def test_fewer_choices_than_n_asked_is_an_upstream_error_a_group_serves(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    """A server that ignores n (Ollama's /v1) answered one choice to n=2, and the client
    could not tell it from a whole answer: it is a 502 naming n and the provider, whole
    and streamed, and a group's next member serves the request."""
    client = await make_gateway(_sections(openai_fake))
    ask = {"model": "local", "messages": [{"role": "user", "content": "two ways"}], "n": 2}
    whole = await client.post(CHAT, json=ask)
    assert [choice["index"] for choice in whole.json()["choices"]] == [0, 1], whole.text
    chunks = await stream_chunks(client, ask)
    assert {choice["index"] for chunk in chunks for choice in chunk["choices"]} == {0, 1}

    openai_fake.ignores_n = True
    short = await client.post(CHAT, json=ask)
    assert short.status_code == 502, short.text
    error = short.json()["error"]
    assert (error["code"], error["param"]) == ("upstream_error", "n")
    assert error["message"].startswith(
        "provider 'compat' answered 1 choice(s) where the request asked for n=2")
    async with client.stream("POST", CHAT, json={**ask, "stream": True}) as response:
        lines = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] != "data: [DONE]"
    error = json.loads(lines[-1][6:])["error"]
    assert (error["code"], error["param"]) == ("upstream_error", "n"), error

    base = openai_fake.base_url  # type: ignore[attr-defined]
    grouped = await make_gateway(f"""
    providers:
      ollama: {{type: openai_compatible, base_url: "{base}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}
      backup: {{type: echo}}
    deployments:
      llama: {{provider: ollama, model: llama-3.1-8b, context_window: 32000}}
      good: {{provider: backup, model: echo-model, context_window: 32000}}
    groups:
      pair: {{members: [llama, good], strategy: priority}}
    routes:
      pair: {{group: pair}}
    """)
    served = await grouped.post(CHAT, json={**ask, "model": "pair"})
    assert served.status_code == 200, served.text
    assert served.headers["x-aigw-deployment"] == "good"
    assert len(served.json()["choices"]) == 2
