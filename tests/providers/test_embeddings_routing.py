"""How /v1/embeddings walks a route's members: through the chat's attempt loop, so it
skips those a chat would skip (an open circuit, a vLLM server aigw runs that is loading
or down), gives each call's verdict to its deployment's circuit breaker and stats, and
takes the fallback groups the class of the failure names. Token-id inputs go as they
came to the providers that take them, and to no other.

The upstream is scripted (tests/fakes/scripted.py), or a provider's fake."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from ..fakes.brain import Action
from ..fakes.gemini_fake import GeminiFake
from ..fakes.openai_fake import OpenAIFake
from ..fakes.scripted import Scripted, scripted_upstream
from ..fakes.serve import free_port
from .conftest import GatewayFactory

PROVIDER_KEY = "sk-scripted-provider-key-0123456789"
ROWS = {"data": [{"index": 0, "embedding": [0.1, 0.2]}]}


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    with scripted_upstream() as upstream:
        yield upstream


def _config(scripted: Scripted) -> str:
    return f"""
        providers:
          up: {{type: openai, base_url: "{scripted.base_url}/v1", api_key: "{PROVIDER_KEY}"}}
          box: {{type: vllm, base_url: "http://127.0.0.1:{free_port()}/v1"}}
          local: {{type: echo}}
        deployments:
          gpu-emb: {{provider: box, model: m, kind: embeddings, context_window: 8192,
                     serve: {{command: ["{sys.executable}", "-c", "pass"]}}}}
          up-emb: {{provider: up, model: up-embed, kind: embeddings, context_window: 8192}}
          e: {{provider: local, model: echo-embed, kind: embeddings, context_window: 8192}}
        groups:
          gpu-first: {{members: [gpu-emb, e], strategy: priority}}
          up-first: {{members: [up-emb, e], strategy: priority}}
        routes:
          gpu-first: {{group: gpu-first}}
          gpu-only: {{deployment: gpu-emb}}
          up-first: {{group: up-first}}
          up-only: {{deployment: up-emb}}
        settings:
          circuit_breaker: {{consecutive_failures: 2, failure_rate: 1.0, min_requests: 100,
                            window_s: 60, cooldown_s: 600}}
    """


async def _embed(client: httpx.AsyncClient, model: str) -> httpx.Response:
    return await client.post("/v1/embeddings", json={"model": model, "input": "hello"})


async def _stats(client: httpx.AsyncClient, name: str) -> dict[str, object]:
    stats: dict[str, object] = (await client.get("/admin/status")).json()["deployments"][name]
    return stats


async def test_a_served_deployment_still_loading_is_skipped(
    make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    client = await make_gateway(_config(scripted))
    response = await _embed(client, "gpu-first")
    assert response.status_code == 200, response.text
    assert response.headers["x-aigw-deployment"] == "e"
    assert (await _stats(client, "gpu-emb"))["requests"] == 0  # no call went to it

    alone = await _embed(client, "gpu-only")
    assert alone.status_code == 503, alone.text
    assert "gpu-emb is starting (its vLLM server has not answered yet)" in alone.text


async def test_an_upstream_failing_opens_its_circuit_and_is_skipped_after(
    make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    client = await make_gateway(_config(scripted))
    scripted.now({"error": {"message": "boom", "type": "server_error"}}, status=500)
    for _ in range(2):
        response = await _embed(client, "up-first")
        assert response.status_code == 200, response.text
        assert response.headers["x-aigw-deployment"] == "e"
    stats = await _stats(client, "up-emb")
    assert (stats["requests"], stats["failures"], stats["circuit"]) == (2, 2, "open")

    calls = scripted.calls
    response = await _embed(client, "up-first")
    assert response.headers["x-aigw-deployment"] == "e"
    assert scripted.calls == calls  # skipped: its circuit is open
    alone = await _embed(client, "up-only")
    assert alone.status_code == 503, alone.text
    assert "up-emb circuit open" in alone.text


async def test_a_clients_bad_request_does_not_count_against_the_upstream(
    make_gateway: GatewayFactory, scripted: Scripted
) -> None:
    client = await make_gateway(_config(scripted))
    scripted.now({"error": {"message": "dimensions too large", "type": "invalid_request_error"}},
                 status=400)
    for _ in range(3):
        assert (await _embed(client, "up-only")).status_code == 400
    stats = await _stats(client, "up-emb")
    assert (stats["requests"], stats["failures"], stats["circuit"]) == (3, 0, "closed")
    scripted.now(ROWS)
    assert (await _embed(client, "up-only")).status_code == 200


CONTEXTS = """
    providers:
      local: {type: echo}
    deployments:
      emb-small: {provider: local, model: small-embed, kind: embeddings, context_window: 16}
      emb-large: {provider: local, model: large-embed, kind: embeddings, context_window: 8192}
    groups:
      both: {members: [emb-small, emb-large], strategy: priority}
      small: {members: [emb-small], fallbacks: {on_context_window: [large]}}
      large: {members: [emb-large]}
    routes:
      both: {group: both}
      small-then-large: {group: small}
      small-only: {deployment: emb-small}
"""


@pytest.mark.parametrize("model", ["both", "small-then-large"])
async def test_an_input_too_long_for_one_member_goes_to_one_that_takes_it(
    make_gateway: GatewayFactory, model: str
) -> None:
    client = await make_gateway(CONTEXTS)
    long = " ".join(["word"] * 40)
    response = await client.post("/v1/embeddings", json={"model": model, "input": long})
    assert response.status_code == 200, response.text
    assert response.headers["x-aigw-deployment"] == "emb-large"

    alone = await client.post("/v1/embeddings", json={"model": "small-only", "input": long})
    assert alone.status_code == 422, alone.text
    assert alone.json()["error"]["message"] == (
        "No deployment of 'small-only' can take this input: emb-small takes inputs of at "
        "most 16 tokens; one has 40.")


async def test_embeddings_keep_the_deadline_a_client_asks(
    openai_fake: OpenAIFake, make_gateway: GatewayFactory
) -> None:
    """x-aigw-deadline-ms (and the route's deadline_s) bound every route (README); an
    embeddings call waited the provider's timeout_s whatever they said. Running out is
    the request's own deadline, no verdict on the deployment's health."""
    base = openai_fake.base_url  # type: ignore[attr-defined]
    client = await make_gateway(f"""
        providers:
          oai: {{type: openai, base_url: "{base}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}
        deployments:
          emb: {{provider: oai, model: text-embedding-3-small, kind: embeddings,
                 context_window: 8191}}
        routes:
          emb: {{deployment: emb}}
    """)
    openai_fake.script.actions.append(Action(delay_s=3.0))
    started = time.monotonic()
    response = await client.post("/v1/embeddings", json={"model": "emb", "input": "hello"},
                                 headers={"x-aigw-deadline-ms": "200"})
    assert response.status_code == 504, response.text
    assert time.monotonic() - started < 2.0
    stats = await _stats(client, "emb")
    assert (stats["circuit"], stats["failures"]) == ("closed", 0), stats


FALLBACKS = """
    providers:
      up: {{type: openai, base_url: "{base}/v1", api_key: "{key}"}}
      local: {{type: echo}}
    deployments:
      up-emb: {{provider: up, model: up-embed, kind: embeddings, context_window: 8192}}
      spare-emb: {{provider: local, model: spare-embed, kind: embeddings, context_window: 8192}}
      long-emb: {{provider: local, model: long-embed, kind: embeddings, context_window: 8192}}
    groups:
      main: {{members: [up-emb], retry: {{attempts: 0}},
              fallbacks: {{on_rate_limit: [spare], on_context_window: [long]}}}}
      spare: {{members: [spare-emb]}}
      long: {{members: [long-emb]}}
    routes:
      main: {{group: main}}
"""


@pytest.mark.parametrize(("status", "error", "served"), [
    (400, {"message": "This model's maximum context length is 8192 tokens",
           "type": "invalid_request_error", "code": "context_length_exceeded"}, "long-emb"),
    (429, {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"},
     "spare-emb"),
    (500, {"message": "boom", "type": "server_error"}, None),  # no on_error fallback
])
async def test_a_failure_takes_the_fallbacks_its_class_names(
    make_gateway: GatewayFactory, scripted: Scripted, status: int, error: dict[str, str],
    served: str | None,
) -> None:
    """As a chat's: an input too long for the upstream goes to the context-window
    fallbacks, a rate limit to the rate-limit ones, a failure the group names no fallback
    for is the client's error. Embeddings tried the route's deployments in one list,
    whatever the failure: a 500 went to the rate-limit group's member, and a context
    window the upstream refused was the client's 400."""
    client = await make_gateway(FALLBACKS.format(base=scripted.base_url, key=PROVIDER_KEY))
    scripted.now({"error": error}, status=status)
    response = await _embed(client, "main")
    if served is None:
        assert response.status_code == 502, response.text
        assert response.json()["error"]["code"] == "upstream_error"
    else:
        assert response.status_code == 200, response.text
        assert response.headers["x-aigw-deployment"] == served
    assert scripted.calls == 1


async def test_a_deployments_own_quota_holds_for_embeddings(
    make_gateway: GatewayFactory,
) -> None:
    """A deployment's limits (rpm, tpm) held for a chat's attempts only: embeddings went
    past them. At its quota a member is skipped, no call made, as in a chat."""
    client = await make_gateway("""
        providers:
          local: {type: echo}
        deployments:
          capped: {provider: local, model: capped, kind: embeddings, context_window: 8192,
                   limits: {rpm: 1}}
          spare: {provider: local, model: spare, kind: embeddings, context_window: 8192}
        groups:
          both: {members: [capped, spare], retry: {attempts: 0}}
        routes:
          both: {group: both}
          capped: {deployment: capped, deadline_s: 5}  # no waiting a minute for the rpm
    """)
    first = await _embed(client, "both")
    assert first.headers["x-aigw-deployment"] == "capped"
    second = await _embed(client, "both")
    assert second.status_code == 200, second.text
    assert (second.headers["x-aigw-deployment"], second.headers["x-aigw-attempts"]) == (
        "spare", "1")
    alone = await _embed(client, "capped")
    assert alone.status_code == 429, alone.text
    assert "at its own quota" in alone.json()["error"]["message"]


def _token_config(openai: OpenAIFake, gemini: GeminiFake) -> str:
    base = openai.base_url  # type: ignore[attr-defined]
    return f"""
        providers:
          oai: {{type: openai, base_url: "{base}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}
          box: {{type: vllm, base_url: "{base}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}
          az: {{type: azure_openai, base_url: "{base}", api_key: "${{FAKE_OPENAI_KEY}}",
                api_version: "2024-10-21"}}
          gem: {{type: gemini, base_url: "{gemini.base_url}/v1beta",
                 api_key: "${{FAKE_GEMINI_KEY}}"}}
          local: {{type: echo}}
        deployments:
          oai-emb: {{provider: oai, model: text-embedding-3-small, kind: embeddings,
                     context_window: 8191}}
          vllm-emb: {{provider: box, model: bge-m3, kind: embeddings, context_window: 8192}}
          az-emb: {{provider: az, model: my-embeddings, kind: embeddings,
                    context_window: 8191}}
          gem-emb: {{provider: gem, model: gemini-embedding-001, kind: embeddings,
                     context_window: 2048}}
          echo-emb: {{provider: local, model: echo-embed, kind: embeddings,
                      context_window: 8192}}
        groups:
          mixed: {{members: [gem-emb, oai-emb], strategy: priority}}
        routes:
          oai: {{deployment: oai-emb}}
          vllm: {{deployment: vllm-emb}}
          azure: {{deployment: az-emb}}
          gem: {{deployment: gem-emb}}
          echo: {{deployment: echo-emb}}
          mixed: {{group: mixed}}
    """


async def test_token_ids_go_upstream_as_they_came_and_count_one_each(
    make_gateway: GatewayFactory, openai_fake: OpenAIFake, gemini_fake: GeminiFake,
) -> None:
    """They were decoded with the gateway's own tokenizer (cl100k) and sent as text:
    another model's ids (or cl100k's unused 100256, a 400) meant other words."""
    client = await make_gateway(_token_config(openai_fake, gemini_fake))
    ids = [[15339, 1917], [100256, 7, 7]]
    for model in ("oai", "vllm", "azure"):
        response = await client.post("/v1/embeddings", json={"model": model, "input": ids})
        assert response.status_code == 200, (model, response.text)
        assert openai_fake.script.requests[-1]["input"] == ids
        assert len(response.json()["data"]) == 2
        assert response.json()["usage"]["prompt_tokens"] == 5  # the fake counts ids
    one = await client.post("/v1/embeddings", json={"model": "oai", "input": [1, 2, 3]})
    assert one.status_code == 200, one.text
    assert openai_fake.script.requests[-1]["input"] == [[1, 2, 3]]
    assert len(one.json()["data"]) == 1
    echoed = await client.post("/v1/embeddings", json={"model": "echo", "input": ids})
    assert echoed.json()["usage"]["prompt_tokens"] == 5  # the gateway's count: one an id


async def test_token_ids_skip_members_that_take_text_only(
    make_gateway: GatewayFactory, openai_fake: OpenAIFake, gemini_fake: GeminiFake,
) -> None:
    """Gemini's embeddings take text: a token-id input is refused (400) where no member
    takes ids, and in a group that mixes them goes to one that does."""
    client = await make_gateway(_token_config(openai_fake, gemini_fake))
    refused = await client.post("/v1/embeddings", json={"model": "gem", "input": [[15339]]})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == {
        "message": "'input' holds token ids; no deployment of 'gem' takes them (its "
                   "providers, gemini, take text): send the text instead.",
        "type": "invalid_request_error", "param": "input", "code": "invalid_request"}
    assert gemini_fake.paths == []
    mixed = await client.post("/v1/embeddings", json={"model": "mixed", "input": [[15339]]})
    assert mixed.status_code == 200, mixed.text
    assert mixed.headers["x-aigw-deployment"] == "oai-emb"
    text = await client.post("/v1/embeddings", json={"model": "mixed", "input": "hello"})
    assert text.headers["x-aigw-deployment"] == "gem-emb"
    assert len(gemini_fake.paths) == 1
