"""The response cache with real ``aigw serve`` processes in front of the OpenAI fake,
driven by the openai SDK: hits and misses, streams, Cache-Control, scopes, the TTL,
what is billed, the metrics, and one cache shared by two gateways through Redis."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from ..conftest import DEV_KEY
from ..fakes.openai_fake import OpenAIFake, reply_for
from ..redis_server import PrivateRedis
from .server import Server, running

pytestmark = pytest.mark.e2e

ENG_KEY, ENG_KEY_2, OPS_KEY = "sk-eng-0001", "sk-eng-0002", "sk-ops-0003"
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "lookup", "description": "Look a thing up",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _gateway(root: Path, upstream: str, store: str = "embedded", settings: str = "",
             deployments: str = "", routes: str = "", keys: str = "") -> Path:
    """The gateway of these tests; ``deployments``, ``routes`` and ``keys``: YAML lines
    (indented two spaces) added to those sections."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "gateway.yaml").write_text(f"""
version: 1
settings: {{store: "{store}"{settings}}}
providers:
  up: {{type: openai, base_url: "{upstream}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}
deployments:
  gpt: {{provider: up, model: gpt-4o-mini, context_window: 128000,
        capabilities: [streaming, tools], price: {{input: 1000000, output: 1000000}}}}
{deployments}routes:
{routes}  cached: {{deployment: gpt, cache: {{ttl_s: 600}}}}
  brief: {{deployment: gpt, cache: {{ttl_s: 0.5, scope: shared}}}}
  per-key: {{deployment: gpt, cache: {{scope: key}}}}
  plain: {{deployment: gpt}}
teams:
  eng: {{}}
  ops: {{}}
keys:
  dev: {{admin: true, team: ops, sha256: {_digest(DEV_KEY)}}}
  eng: {{team: eng, sha256: {_digest(ENG_KEY)}}}
  eng-2: {{team: eng, sha256: {_digest(ENG_KEY_2)}}}
  ops: {{team: ops, sha256: {_digest(OPS_KEY)}}}
{keys}""")
    return root


@pytest.fixture
def gateway(tmp_path: Path, openai_upstream: tuple[OpenAIFake, str]) -> Iterator[Server]:
    with running(_gateway(tmp_path / "gw", openai_upstream[1])) as server:
        yield server


def _client(server: Server, key: str = ENG_KEY, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0,
                         default_headers=headers or None)


def _ask(client: openai.OpenAI, text: str, model: str = "cached",
         **options: Any) -> tuple[str, dict[str, str], Any]:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}], **options)
    completion = raw.parse()
    return completion.choices[0].message.content or "", dict(raw.headers), completion


def _streamed(client: openai.OpenAI, text: str, model: str = "cached",
              **options: Any) -> tuple[str, dict[str, str], list[Any]]:
    with client.chat.completions.with_streaming_response.create(
        model=model, stream=True, messages=[{"role": "user", "content": text}], **options
    ) as response:
        chunks = list(response.parse())
        headers = dict(response.headers)
    text_out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text_out, headers, chunks


def _lookups(server: Server) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
        if line.startswith("aigw_cache_lookups_total{"):
            labels = dict(part.split("=") for part in line[line.index("{") + 1:
                                                            line.index("}")].split(","))
            found[(labels["route"].strip('"'), labels["result"].strip('"'))] = float(
                line.rsplit(" ", 1)[1])
    return found


def _access_lines(server: Server) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log.splitlines()
            if line.startswith("{") and '"request_id"' in line]


def test_a_repeated_request_is_answered_without_the_upstream(
    gateway: Server, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    upstream = openai_upstream[0]
    client = _client(gateway)
    first, first_headers, _ = _ask(client, "what is a cache")
    second, second_headers, completion = _ask(client, "what is a cache")

    assert len(upstream.script.requests) == 1
    assert second == first == "fake-openai: what is a cache"
    assert first_headers["x-aigw-cache"] == "miss"
    assert second_headers["x-aigw-cache"] == "hit"
    assert second_headers["x-aigw-attempts"] == "0"
    assert second_headers["x-request-id"] != first_headers["x-request-id"]  # a new answer id
    assert completion.usage is not None and completion.usage.prompt_tokens > 0  # as it was

    # Anything that changes the answer is another entry; the user field is not.
    _ask(client, "what is a cache", temperature=0.5)
    _ask(client, "what is a cache", max_tokens=7)
    assert len(upstream.script.requests) == 3
    _, headers, _ = _ask(client, "what is a cache", user="someone-else")
    assert headers["x-aigw-cache"] == "hit" and len(upstream.script.requests) == 3

    # A route without a cache says nothing about one.
    _, plain_headers, _ = _ask(client, "what is a cache", model="plain")
    assert "x-aigw-cache" not in plain_headers and len(upstream.script.requests) == 4


def test_streams_fill_the_cache_and_are_replayed_from_it(
    gateway: Server, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    upstream = openai_upstream[0]
    upstream.cached_tokens = 2
    client = _client(gateway)
    text, headers, streamed = _streamed(client, "stream me a cache",
                                        stream_options={"include_usage": True})
    assert headers["x-aigw-cache"] == "miss" and len(upstream.script.requests) == 1

    replayed, headers, chunks = _streamed(client, "stream me a cache",
                                          stream_options={"include_usage": True})
    assert headers["x-aigw-cache"] == "hit" and replayed == text
    # The usage the upstream reported, as an answer's entry keeps it: the stream's entry
    # was given a usage of its own, without the upstream's details (its cached tokens).
    assert chunks[-1].usage == streamed[-1].usage
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"

    whole, headers, completion = _ask(client, "stream me a cache")  # one entry for both
    assert headers["x-aigw-cache"] == "hit" and whole == text
    assert completion.usage == streamed[-1].usage
    assert len(upstream.script.requests) == 1


def test_tool_calls_come_back_whole_from_a_cached_stream(
    gateway: Server, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    upstream = openai_upstream[0]
    client = _client(gateway)
    _streamed(client, "weather in Oslo?", tools=TOOLS)
    _, headers, completion = _ask(client, "weather in Oslo?", tools=TOOLS)

    assert headers["x-aigw-cache"] == "hit" and len(upstream.script.requests) == 1
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.function.name == "lookup"
    # What the fake streamed the first time (its answer is a function of the request).
    assert json.loads(call.function.arguments) == json.loads(
        reply_for(upstream.script.requests[0]).arguments_json)


def test_cache_control_skips_the_lookup_or_the_whole_cache(
    gateway: Server, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    upstream = openai_upstream[0]
    _ask(_client(gateway), "fresh please")
    _, headers, _ = _ask(_client(gateway, **{"Cache-Control": "no-cache"}), "fresh please")
    assert headers["x-aigw-cache"] == "bypass" and len(upstream.script.requests) == 2

    _, headers, _ = _ask(_client(gateway, **{"Cache-Control": "no-store"}), "never kept")
    assert headers["x-aigw-cache"] == "bypass"
    _, headers, _ = _ask(_client(gateway), "never kept")
    assert headers["x-aigw-cache"] == "miss"  # the no-store answer was not kept
    assert len(upstream.script.requests) == 4


def test_no_cache_refreshes_only_the_callers_own_entries(gateway: Server) -> None:
    """In a team (or shared) scope, a caller re-asking with no-cache until an answer
    suited it would choose what the others are served: only its own entries (a key
    scope) are refreshed, or any by an admin key."""
    fresh = {"Cache-Control": "no-cache"}
    assert _ask(_client(gateway, OPS_KEY, **fresh), "ops pick")[1]["x-aigw-cache"] == "bypass"
    assert _ask(_client(gateway, DEV_KEY), "ops pick")[1]["x-aigw-cache"] == "miss"  # team ops
    assert _ask(_client(gateway, DEV_KEY, **fresh), "admin pick")[1]["x-aigw-cache"] == "bypass"
    assert _ask(_client(gateway, OPS_KEY), "admin pick")[1]["x-aigw-cache"] == "hit"
    _ask(_client(gateway, ENG_KEY, **fresh), "mine", model="per-key")
    assert _ask(_client(gateway, ENG_KEY), "mine", model="per-key")[1]["x-aigw-cache"] == "hit"


def test_entries_are_shared_only_within_their_scope(
    gateway: Server, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    upstream = openai_upstream[0]
    _ask(_client(gateway, ENG_KEY), "team secret")
    assert _ask(_client(gateway, ENG_KEY_2), "team secret")[1]["x-aigw-cache"] == "hit"
    assert _ask(_client(gateway, OPS_KEY), "team secret")[1]["x-aigw-cache"] == "miss"
    assert len(upstream.script.requests) == 2

    _ask(_client(gateway, ENG_KEY), "mine alone", model="per-key")
    assert _ask(_client(gateway, ENG_KEY_2), "mine alone",
                model="per-key")[1]["x-aigw-cache"] == "miss"
    assert _ask(_client(gateway, ENG_KEY), "mine alone",
                model="per-key")[1]["x-aigw-cache"] == "hit"

    _ask(_client(gateway, ENG_KEY), "for everyone", model="brief")
    assert _ask(_client(gateway, OPS_KEY), "for everyone",
                model="brief")[1]["x-aigw-cache"] == "hit"


def test_who_an_answer_is_for_does_not_split_its_entry(
    gateway: Server, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    """user, safety_identifier (OpenAI asks apps for one per end user) and
    prompt_cache_key say who asks and which provider prompt cache to use, not what the
    answer says: each end user of a team had an entry of their own, a miss each."""
    upstream = openai_upstream[0]
    _ask(_client(gateway, ENG_KEY), "for any user", user="ann", safety_identifier="ann-hash",
         prompt_cache_key="faq-v1")
    _, headers, _ = _ask(_client(gateway, ENG_KEY_2), "for any user", user="bob",
                         safety_identifier="bob-hash", prompt_cache_key="faq-v2")
    assert headers["x-aigw-cache"] == "hit" and len(upstream.script.requests) == 1
    assert upstream.script.requests[0]["safety_identifier"] == "ann-hash"  # sent as it came


def test_a_reload_that_raises_max_output_tokens_does_not_serve_answers_cut_short(
    tmp_path: Path, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    """A request with no output limit is sent the deployment's max_output_tokens: answers
    cut at a limit set too low were served for the TTL after a reload raised it."""
    upstream, base_url = openai_upstream
    root = _gateway(tmp_path / "gw", base_url)
    config = root / "gateway.yaml"
    config.write_text(config.read_text().replace(
        "context_window: 128000,", "context_window: 128000, max_output_tokens: 8,"))
    server = Server(root)
    try:
        server.wait_ready()
        client = _client(server)
        assert _ask(client, "a long answer")[1]["x-aigw-cache"] == "miss"
        assert _ask(client, "a long answer")[1]["x-aigw-cache"] == "hit"
        config.write_text(config.read_text().replace("max_output_tokens: 8,",
                                                     "max_output_tokens: 4096,"))
        reloaded = httpx.post(f"{server.base_url}/admin/reload", timeout=30,
                              headers={"Authorization": f"Bearer {DEV_KEY}"})
        assert reloaded.status_code == 200, reloaded.text
        assert _ask(client, "a long answer")[1]["x-aigw-cache"] == "miss"
        assert [body.get("max_completion_tokens", body.get("max_tokens"))
                for body in upstream.script.requests] == [8, 4096]
    finally:
        server.stop()


def test_an_entry_expires_after_its_ttl(
    gateway: Server, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    upstream = openai_upstream[0]
    client = _client(gateway)
    _ask(client, "short lived", model="brief")
    assert _ask(client, "short lived", model="brief")[1]["x-aigw-cache"] == "hit"
    time.sleep(0.7)  # the route's ttl_s is 0.5
    assert _ask(client, "short lived", model="brief")[1]["x-aigw-cache"] == "miss"
    assert len(upstream.script.requests) == 2


def test_hits_are_counted_logged_and_billed_as_nothing(gateway: Server) -> None:
    client = _client(gateway)
    _ask(client, "count me")
    _ask(client, "count me")
    _ask(client, "count me")
    _streamed(client, "count me")

    assert _lookups(gateway) == {("cached", "miss"): 1.0, ("cached", "hit"): 3.0}
    lines = [line for line in _access_lines(gateway) if line["route"] == "cached"]
    assert [line["cache"] for line in lines] == ["miss", "hit", "hit", "hit"]
    assert lines[0]["cost"] > 0 and all(line["cost"] == 0 for line in lines[1:])
    assert all(line["deployment"] == "gpt" for line in lines)

    spend = httpx.get(f"{gateway.base_url}/admin/spend?group_by=key",
                      headers={"authorization": f"Bearer {DEV_KEY}"}).json()["data"]
    row = next(row for row in spend if row["key"] == "eng")
    assert row["requests"] == 4  # every request is in the ledger...
    assert row["cost"] == lines[0]["cost"]  # ...and only the upstream call cost anything


def test_two_gateways_on_one_redis_share_their_cache(
    tmp_path: Path, openai_upstream: tuple[OpenAIFake, str], private_redis: PrivateRedis,
) -> None:
    upstream, base_url = openai_upstream
    with ExitStack() as stack:
        servers = []
        for name in ("a", "b"):
            server = Server(_gateway(tmp_path / name, base_url, store=private_redis.url))
            stack.callback(server.stop)
            server.wait_ready()
            servers.append(server)
        first, headers, _ = _ask(_client(servers[0]), "shared across replicas")
        assert headers["x-aigw-cache"] == "miss"
        second, headers, _ = _ask(_client(servers[1]), "shared across replicas")
        assert headers["x-aigw-cache"] == "hit" and second == first
        assert len(upstream.script.requests) == 1


def test_an_answer_over_the_entry_cap_is_served_but_not_kept(
    tmp_path: Path, openai_upstream: tuple[OpenAIFake, str], private_redis: PrivateRedis,
) -> None:
    """An answer may be up to max_response_mb (64 MiB): each was kept whole, in the
    process (10,000 of them) or in Redis, next to the limits and budgets."""
    upstream, base_url = openai_upstream
    server = Server(_gateway(tmp_path / "gw", base_url, store=private_redis.url,
                             settings=", cache_max_entry_bytes: 2048"))
    try:
        server.wait_ready()
        client = _client(server)
        large = "large " * 400  # the fake's answer repeats it: an entry of about 3 KB
        for ask in (_ask, _streamed):
            for _ in range(2):
                _, headers, _ = ask(client, large)
                assert headers["x-aigw-cache"] == "miss"
        assert len(upstream.script.requests) == 4
        _ask(client, "small")
        _, headers, _ = _ask(client, "small")
        assert headers["x-aigw-cache"] == "hit" and len(upstream.script.requests) == 5
        cached = redis.Redis.from_url(private_redis.url)
        try:
            assert len(cached.keys("aigw:cache:*")) == 1  # the small answer only
        finally:
            cached.close()
    finally:
        server.stop()


def test_a_hit_is_served_only_from_a_deployment_the_callers_policies_permit(
    tmp_path: Path, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    upstream, base_url = openai_upstream
    root = _gateway(tmp_path / "gw", base_url)
    text = (root / "gateway.yaml").read_text()
    (root / "gateway.yaml").write_text(text.replace(
        "routes:\n",
        "  alt: {provider: up, model: gpt-4o, context_window: 128000}\n"
        "groups:\n  pair: {strategy: priority, members: [gpt, alt]}\n"
        "routes:\n  everyone: {group: pair, cache: {scope: shared}}\n", 1))
    (root / "policies").mkdir()
    (root / "policies" / "gateway.cedar").write_text(
        '@id("invoke") permit (principal, action == Action::"invoke", resource);\n'
        '@id("route") permit (principal, action == Action::"route", resource);\n'
        '@id("ops-stay-off-gpt") forbid (principal in Team::"ops", action == Action::"route",'
        ' resource == Deployment::"gpt");\n')
    server = Server(root)
    try:
        server.wait_ready()
        _, headers, _ = _ask(_client(server, ENG_KEY), "who may see this", model="everyone")
        assert (headers["x-aigw-cache"], headers["x-aigw-deployment"]) == ("miss", "gpt")
        # gpt's cached answer is not for ops: a miss, answered by the member they may use.
        _, headers, _ = _ask(_client(server, OPS_KEY), "who may see this", model="everyone")
        assert (headers["x-aigw-cache"], headers["x-aigw-deployment"]) == ("miss", "alt")
        assert len(upstream.script.requests) == 2
    finally:
        server.stop()
