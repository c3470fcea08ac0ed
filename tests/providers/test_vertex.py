"""The vertex adapter against the Vertex fake: service-account tokens, Gemini and Claude models."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from aigw.compiler import CompileResult, compile_gateway
from aigw.runtime.chat_request import ChatRequest
from aigw.runtime.errors import NoDeploymentAvailable
from aigw.runtime.providers.base import ChatCall, EmbeddingCall
from aigw.runtime.providers.vertex import VertexAdapter
from aigw.runtime.tokens import TokenCounter

from ..fakes.brain import Action
from ..fakes.serve import serving
from ..fakes.vertex_fake import VertexFake, make_key, make_service_account
from .conftest import (
    CHAT,
    FORECAST,
    FORECAST_FORMAT,
    MARKED_MESSAGE,
    TOOLS,
    GatewayFactory,
    compiled,
    forecast,
    stream_chunks,
    streamed_text,
    streamed_tool_calls,
)

CLAUDE = "claude-sonnet-4-5@20250929"
PREFIX = "/v1/projects/fake-project/locations/us-east5/publishers"


@pytest.fixture(scope="module")
def key() -> RSAPrivateKey:
    return make_key()


@pytest.fixture
def vertex_fake(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: RSAPrivateKey
) -> Iterator[VertexFake]:
    """The fake, and a service-account file whose token_uri is the fake's."""
    fake = VertexFake()
    with serving(fake.app) as base_url:
        fake.base_url = base_url
        path, fake.public_key = make_service_account(tmp_path, fake.token_uri, key)
        monkeypatch.setenv("FAKE_VERTEX_CREDENTIALS", str(path))
        yield fake


def _sections(fake: VertexFake) -> str:
    vertex = (f'type: vertex, base_url: "{fake.base_url}", location: us-east5, '
              'credentials_file: "${FAKE_VERTEX_CREDENTIALS}"')
    return f"""
    providers:
      gcp: {{{vertex}, project: fake-project}}
      gcp-claude: {{{vertex}, project: fake-project, publisher: anthropic}}
      elsewhere: {{{vertex}, project: someone-elses-project}}
    deployments:
      gemini: {{provider: gcp, model: gemini-2.5-flash, context_window: 1000000,
                capabilities: [streaming, tools, vision, json_schema]}}
      claude: {{provider: gcp, model: "{CLAUDE}", context_window: 200000,
                max_output_tokens: 1024, capabilities: [streaming, tools, vision]}}
      pinned: {{provider: gcp-claude, model: my-sonnet, context_window: 200000,
                max_output_tokens: 64}}
      denied: {{provider: elsewhere, model: gemini-2.5-flash, context_window: 1000000}}
    groups:
      once-gemini: {{members: [gemini], retry: {{attempts: 0}}}}
      once-claude: {{members: [claude], retry: {{attempts: 0}}}}
    routes:
      gemini: {{deployment: gemini}}
      claude: {{deployment: claude}}
      pinned: {{deployment: pinned}}
      denied: {{deployment: denied}}
      once-gemini: {{group: once-gemini}}
      once-claude: {{group: once-claude}}
    """


async def _gateway(fake: VertexFake, make_gateway: GatewayFactory) -> httpx.AsyncClient:
    return await make_gateway(_sections(fake))


async def _chat(client: httpx.AsyncClient, model: str, content: str,
                **extra: Any) -> dict[str, Any]:
    response = await client.post(CHAT, json={
        "model": model, "messages": [{"role": "user", "content": content}], **extra})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_gemini_on_vertex_with_a_service_account_token(
    vertex_fake: VertexFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(vertex_fake, make_gateway)
    body = await _chat(client, "gemini", "hello there", temperature=0.5)
    assert body["choices"][0]["message"]["content"] == "fake-gemini: hello there"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 5
    assert vertex_fake.paths == [f"{PREFIX}/google/models/gemini-2.5-flash:generateContent"]
    assert vertex_fake.requests[-1] == {
        "contents": [{"role": "user", "parts": [{"text": "hello there"}]}],
        "generationConfig": {"temperature": 0.5}}
    assert vertex_fake.authorizations[-1].startswith("Bearer ya29.fake-token-1-")
    assert vertex_fake.token_requests == 1


async def test_count_tokens_of_gemini_on_vertex_is_vertexs_and_of_claude_the_gateways(
    vertex_fake: VertexFake, make_gateway: GatewayFactory
) -> None:
    """Gemini's countTokens ingress asks a Gemini model on Vertex (its body the prompt's
    fields themselves, with the service account's token); Claude on Vertex has no such
    count there: the gateway's answers."""
    client = await _gateway(vertex_fake, make_gateway)
    prompt = {"contents": [{"role": "user", "parts": [{"text": "how many tokens is this"}]}],
              "systemInstruction": {"parts": [{"text": "Be brief."}]}}
    counted = await client.post("/v1beta/models/gemini:countTokens",
                                json={"generateContentRequest": prompt})
    assert counted.status_code == 200, counted.text
    assert counted.headers["x-aigw-counted-by"] == "deployment"
    assert counted.json() == {"totalTokens": 10}  # the fake's: 5 words + 3, 2 of system
    assert vertex_fake.paths == [f"{PREFIX}/google/models/gemini-2.5-flash:countTokens"]
    assert vertex_fake.requests[-1] == prompt
    assert vertex_fake.authorizations[-1].startswith("Bearer ya29.fake-token-1-")
    claude = await client.post("/v1beta/models/claude:countTokens",
                               json={"generateContentRequest": prompt})
    assert claude.status_code == 200, claude.text
    assert claude.headers["x-aigw-counted-by"] == "gateway"
    assert len(vertex_fake.paths) == 1  # Vertex not asked


async def test_gemini_stream_with_usage(
    vertex_fake: VertexFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(vertex_fake, make_gateway)
    chunks = await stream_chunks(client, {
        "model": "gemini", "messages": [{"role": "user", "content": "a b c"}],
        "stream_options": {"include_usage": True}})
    assert streamed_text(chunks) == "fake-gemini: a b c"
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert vertex_fake.paths[-1] == (
        f"{PREFIX}/google/models/gemini-2.5-flash:streamGenerateContent?alt=sse")


async def test_gemini_json_schema_answer_has_its_shape(
    vertex_fake: VertexFake, make_gateway: GatewayFactory
) -> None:
    """Gemini on Vertex takes the schema as the Gemini API does (responseJsonSchema): the
    answer fits it, whole and streamed."""
    client = await _gateway(vertex_fake, make_gateway)
    ask = {"model": "gemini", "messages": [{"role": "user", "content": "forecast"}],
           "response_format": FORECAST_FORMAT}
    body = await _chat(client, "gemini", "forecast", response_format=FORECAST_FORMAT)
    fitting = forecast("fake-gemini: forecast")
    assert json.loads(body["choices"][0]["message"]["content"]) == fitting
    assert vertex_fake.requests[-1]["generationConfig"] == {
        "responseMimeType": "application/json", "responseJsonSchema": FORECAST}
    assert json.loads(streamed_text(await stream_chunks(client, ask))) == fitting
    assert vertex_fake.paths[-1].endswith(":streamGenerateContent?alt=sse")


async def test_gemini_tool_call_round_trip(
    vertex_fake: VertexFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(vertex_fake, make_gateway)
    first = await _chat(client, "gemini", "weather?", tools=TOOLS)
    message = first["choices"][0]["message"]
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    call = message["tool_calls"][0]
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == (
        "lookup", {"query": "weather?"})
    second = await client.post(CHAT, json={"model": "gemini", "tools": TOOLS, "messages": [
        {"role": "user", "content": "weather?"}, message,
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]})
    assert second.status_code == 200, second.text
    assert second.json()["choices"][0]["message"]["content"] == "tool said: sunny"


async def test_claude_on_vertex_goes_to_raw_predict_without_a_model_in_the_body(
    vertex_fake: VertexFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(vertex_fake, make_gateway)
    body = await _chat(client, "claude", "hello there")
    assert body["choices"][0]["message"]["content"] == "fake-anthropic: hello there"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert vertex_fake.paths == [f"{PREFIX}/anthropic/models/{CLAUDE}:rawPredict"]
    assert vertex_fake.requests[-1] == {
        "anthropic_version": "vertex-2023-10-16", "max_tokens": 1024,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello there"}]}]}


async def test_messages_api_cache_marks_and_top_k_reach_claude_on_vertex(
    vertex_fake: VertexFake, make_gateway: GatewayFactory
) -> None:
    """/v1/messages dropped every cache_control (and top_k) before Vertex's Claude."""
    client = await _gateway(vertex_fake, make_gateway)
    answer = await client.post("/v1/messages", json={**MARKED_MESSAGE, "model": "claude"})
    assert answer.status_code == 200, answer.text
    sent = vertex_fake.requests[-1]
    assert sent["system"] == MARKED_MESSAGE["system"]
    assert sent["messages"][2] == MARKED_MESSAGE["messages"][2]
    assert sent["tools"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent["top_k"] == 5


async def test_claude_stream_reassembles_a_tool_call_and_the_answer_comes_back(
    vertex_fake: VertexFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(vertex_fake, make_gateway)
    chunks = await stream_chunks(client, {
        "model": "claude", "tools": TOOLS, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "find the moon"}]})
    assert streamed_tool_calls(chunks) == {0: {"id": "toolu_fake1", "name": "lookup",
                                       "arguments": json.dumps({"query": "find the moon"})}}
    assert chunks[-1]["usage"]["prompt_tokens"] > 0
    assert vertex_fake.paths[-1] == f"{PREFIX}/anthropic/models/{CLAUDE}:streamRawPredict"
    assert vertex_fake.requests[-1]["stream"] is True
    answer = await client.post(CHAT, json={"model": "claude", "tools": TOOLS, "messages": [
        {"role": "user", "content": "find the moon"},
        {"role": "assistant", "content": streamed_text(chunks), "tool_calls": [
            {"id": "toolu_fake1", "type": "function", "function": {
                "name": "lookup", "arguments": json.dumps({"query": "find the moon"})}}]},
        {"role": "tool", "tool_call_id": "toolu_fake1", "content": "it is up there"}]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "tool said: it is up there"


async def test_claude_on_vertex_takes_images_as_data_and_refuses_urls_unsent(
    vertex_fake: VertexFake, make_gateway: GatewayFactory
) -> None:
    """Vertex refuses Anthropic's URL image sources: the URL went, and came back as the
    upstream's 400 with no parameter named (and no other member tried)."""
    client = await _gateway(vertex_fake, make_gateway)
    pixel = "R0lGODlhAQABAAAAACw="

    def image(url: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "text", "text": "what is it"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]

    answer = await client.post(CHAT, json={"model": "claude",
                                           "messages": image(f"data:image/gif;base64,{pixel}")})
    assert answer.status_code == 200, answer.text
    assert vertex_fake.requests[-1]["messages"][0]["content"][1] == {
        "type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": pixel}}
    sent = len(vertex_fake.requests)
    for stream in (False, True):
        refused = await client.post(CHAT, json={
            "model": "claude", "stream": stream, "messages": image("https://example.com/a.png")})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "messages[0].content[1].image_url"
    assert len(vertex_fake.requests) == sent


async def test_the_publisher_field_overrides_the_model_id(
    vertex_fake: VertexFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(vertex_fake, make_gateway)
    await _chat(client, "pinned", "hi")
    assert vertex_fake.paths == [f"{PREFIX}/anthropic/models/my-sonnet:rawPredict"]


async def test_the_token_is_cached_until_it_goes_stale(
    vertex_fake: VertexFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(vertex_fake, make_gateway)
    for model in ("gemini", "claude", "gemini"):
        await _chat(client, model, "hi")
    assert vertex_fake.token_requests == 1
    assert len(set(vertex_fake.authorizations)) == 1
    # A token that expires within google-auth's refresh margin is renewed before use.
    vertex_fake.token_lifetime_s = 60
    client = await _gateway(vertex_fake, make_gateway)
    for _ in range(2):
        await _chat(client, "gemini", "hi")
    assert vertex_fake.token_requests == 3


async def test_a_revoked_token_is_replaced_once(
    vertex_fake: VertexFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(vertex_fake, make_gateway)
    await _chat(client, "gemini", "hi")
    vertex_fake.revoke()
    for stream in (False, True):
        response = await client.post(CHAT, json={
            "model": "claude", "stream": stream, "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == 200, response.text
    assert vertex_fake.token_requests == 2
    assert vertex_fake.authorizations[1] != vertex_fake.authorizations[2]


async def test_a_refused_grant_is_an_auth_failure_that_leaks_nothing(
    vertex_fake: VertexFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(vertex_fake, make_gateway)
    vertex_fake.refuse_grants = True
    response = await client.post(CHAT, json={
        "model": "once-gemini", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_auth_failed"
    account = json.loads(Path(_credentials()).read_text())
    for secret in (account["private_key"].splitlines()[1], account["private_key_id"]):
        assert secret not in response.text
    assert vertex_fake.paths == []


def _credentials() -> str:
    return os.environ["FAKE_VERTEX_CREDENTIALS"]


async def test_an_unreadable_credentials_file_is_an_auth_failure(
    vertex_fake: VertexFake, make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("FAKE_VERTEX_CREDENTIALS", str(tmp_path / "missing.json"))
    client = await _gateway(vertex_fake, make_gateway)
    response = await client.post(CHAT, json={
        "model": "once-claude", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 502, response.text
    assert "could not load its Google credentials" in response.json()["error"]["message"]


@pytest.mark.parametrize(("model", "action", "expected_status", "code"), [
    ("once-gemini", Action(status=429), 429, "rate_limit_exceeded"),
    ("once-gemini", Action(status=500), 502, "upstream_error"),
    ("once-gemini", Action(status=400, body={"error": {
        "code": 400, "status": "INVALID_ARGUMENT",
        "message": "The input token count (1200000) exceeds the maximum number of tokens "
                   "allowed (1048576)."}}), 400, "context_length_exceeded"),
    ("once-claude", Action(status=529), 503, "upstream_overloaded"),
    ("once-claude", Action(status=400, body={"type": "error", "error": {
        "type": "invalid_request_error",
        "message": "prompt is too long: 208310 tokens > 200000 maximum"}}),
     400, "context_length_exceeded"),
])
async def test_errors_keep_their_meaning(
    vertex_fake: VertexFake, make_gateway: GatewayFactory,
    model: str, action: Action, expected_status: int, code: str,
) -> None:
    client = await _gateway(vertex_fake, make_gateway)
    fake = vertex_fake.gemini if model == "once-gemini" else vertex_fake.anthropic
    for stream in (False, True):
        fake.script.actions.append(action)
        response = await client.post(CHAT, json={
            "model": model, "stream": stream, "messages": [{"role": "user", "content": "x"}]})
        assert response.status_code == expected_status, response.text
        assert response.json()["error"]["code"] == code


async def test_a_project_the_account_cannot_use_is_an_auth_failure(
    vertex_fake: VertexFake, make_gateway: GatewayFactory
) -> None:
    client = await _gateway(vertex_fake, make_gateway)
    response = await client.post(CHAT, json={
        "model": "denied", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_auth_failed"


async def test_streams_end_with_a_usage_only_delta_and_embeddings_are_refused(
    vertex_fake: VertexFake, counter: TokenCounter, tmp_path: Path
) -> None:
    graph = compiled(tmp_path, _sections(vertex_fake),
                     {"FAKE_VERTEX_CREDENTIALS": _credentials()})
    adapter = VertexAdapter(graph.providers["gcp"], counter)
    try:
        for name in ("gemini", "claude"):
            deployment = graph.deployments[name]
            request = ChatRequest.model_validate({
                "model": name, "messages": [{"role": "user", "content": "a b"}]})
            deltas = [d async for d in adapter.stream(ChatCall(request, deployment, 3, 64))]
            assert deltas[-1].usage is not None and deltas[-1].content is None
            assert all(delta.usage is None for delta in deltas[:-1])
        with pytest.raises(NoDeploymentAvailable,
                           match="has no embeddings API this gateway speaks"):
            await adapter.embed(EmbeddingCall(deployment, ("x",), None, None, 1))
    finally:
        await adapter.aclose()
    assert vertex_fake.token_requests == 1


def _compile(tmp_path: Path, provider: str, environ: dict[str, str] | None = None
             ) -> CompileResult:
    (tmp_path / "gateway.yaml").write_text(
        f"version: 1\nproviders:\n  p: {provider}\n"
        "deployments:\n  d: {provider: p, model: gemini-2.5-pro, context_window: 8192}\n"
        "routes:\n  r: {deployment: d}\n")
    return compile_gateway(tmp_path, environ or {})


def _said(result: CompileResult) -> list[str]:
    return [f"{item.code.id} {item.message}" for item in result.diagnostics]


def test_the_compiler_requires_project_and_location_and_keeps_them_to_vertex(
    tmp_path: Path,
) -> None:
    assert _said(_compile(tmp_path, "{type: vertex}")) == [
        "AGW313 provider 'p' of type 'vertex' needs project and location"]
    assert _said(_compile(tmp_path, "{type: vertex, project: x, location: global, "
                                    "api_key: '${K}'}", {"K": "k"})) == [
        "AGW319 provider 'p' of type 'vertex' does not take an api_key"]
    assert _said(_compile(tmp_path, "{type: bedrock, region: r, project: x, publisher: google}")) \
        == ["AGW319 provider 'p' of type 'bedrock' does not take project",
            "AGW319 provider 'p' of type 'bedrock' does not take publisher"]


def test_the_credentials_file_is_resolved_from_env_or_the_gateway_directory(
    tmp_path: Path,
) -> None:
    result = _compile(tmp_path, "{type: vertex, project: x, location: us-east5, "
                                "credentials_file: keys/sa.json}")
    assert result.graph is not None, _said(result)
    provider = result.graph.providers["p"]
    assert provider.credentials_file == str(tmp_path.resolve() / "keys" / "sa.json")
    assert (provider.project, provider.location, provider.publisher) == ("x", "us-east5", None)
    result = _compile(tmp_path, "{type: vertex, project: x, location: us-east5, "
                                "credentials_file: '${GOOGLE_APPLICATION_CREDENTIALS}'}",
                      {"GOOGLE_APPLICATION_CREDENTIALS": "/secrets/sa.json"})
    assert result.graph is not None
    assert result.graph.providers["p"].credentials_file == "/secrets/sa.json"
    unset = _compile(tmp_path, "{type: vertex, project: x, location: us-east5, "
                               "credentials_file: '${GOOGLE_APPLICATION_CREDENTIALS}'}")
    assert unset.graph is not None
    assert unset.graph.providers["p"].disabled_reason == (
        "environment variable GOOGLE_APPLICATION_CREDENTIALS is not set")


def test_without_google_auth_a_vertex_provider_is_disabled_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "google.auth", None)  # how Python spells "not installed"
    result = _compile(tmp_path, "{type: vertex, project: x, location: global}")
    assert _said(result) == ["AGW322 provider 'p' of type 'vertex' needs google.auth, which is "
                             "not installed; its deployments will not serve"]
    assert result.graph is not None
    assert result.graph.providers["p"].disabled_reason == (
        "provider type 'vertex' needs google.auth: pip install 'aigw[vertex]'")


def test_the_fake_speaks_what_the_anthropic_vertex_sdk_sends(vertex_fake: VertexFake) -> None:
    vertex_fake.tokens.add("ya29.sdk-token")
    sdk = anthropic.AnthropicVertex(region="us-east5", project_id="fake-project",
                                    access_token="ya29.sdk-token", max_retries=0,
                                    base_url=f"{vertex_fake.base_url}/v1")
    tools: Any = [{"name": "lookup", "input_schema": {"type": "object"}}]
    version = {"anthropic_version": "vertex-2023-10-16"}  # what Google documents
    message = sdk.messages.create(model=CLAUDE, max_tokens=64, tools=tools, extra_body=version,
                                  messages=[{"role": "user", "content": "find it"}])
    assert [block.type for block in message.content] == ["text", "tool_use"]
    with sdk.messages.stream(model=CLAUDE, max_tokens=64, extra_body=version,
                             messages=[{"role": "user", "content": "a b"}]) as stream:
        assert stream.get_final_text() == "fake-anthropic: a b"
    assert vertex_fake.paths == [f"{PREFIX}/anthropic/models/{CLAUDE}:rawPredict",
                                 f"{PREFIX}/anthropic/models/{CLAUDE}:streamRawPredict"]
    sdk.close()
