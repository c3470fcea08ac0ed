"""The response cache and the limits, through real ``aigw serve`` processes (the embedded
store, and Redis): a hit calls no upstream, so it needs no room under tpm nor in a budget,
while it still counts against rpm; a miss is held and refused as any request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from ..fakes.openai_fake import OpenAIFake
from ..redis_server import PrivateRedis
from .server import Server
from .test_response_cache import (
    ENG_KEY,
    OPS_KEY,
    _ask,
    _client,
    _digest,
    _gateway,
    _streamed,
)

pytestmark = pytest.mark.e2e

THRIFTY_KEY = "sk-thrifty-0001"
# One currency unit a token (the fake deployment's price is 1e6 per million) and 1,000
# output tokens held a request: the repeat of a short question holds about 1,010.
BIG_PROMPT = "word " * 950  # about 950 tokens in, as many out (the fake says it back)


def _thrifty(root: Path, upstream: str, store: str, limit: str) -> Server:
    """The response cache tests' gateway, its deployment capped at 1,000 output tokens,
    with a team ``thrifty`` limited by ``limit`` (a team's YAML: a budget or limits)."""
    config = _gateway(root, upstream, store=store,
                      keys=f"  thrifty: {{team: thrifty, sha256: {_digest(THRIFTY_KEY)}}}\n")
    text = config / "gateway.yaml"
    text.write_text(text.read_text()
                    .replace("context_window: 128000,",
                             "context_window: 128000, max_output_tokens: 1000,")
                    .replace("  ops: {}\n", f"  ops: {{}}\n  thrifty: {{{limit}}}\n"))
    server = Server(config)
    server.wait_ready()
    return server


@pytest.fixture(params=["embedded", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "embedded":
        yield "embedded"
        return
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.mark.parametrize("limit", ["budget: {amount: 2100, period: total}",
                                   "limits: {tpm: 2100}"])
def test_a_hit_is_served_to_a_key_whose_tokens_or_budget_are_spent(
    tmp_path: Path, openai_upstream: tuple[OpenAIFake, str], store: str, limit: str,
) -> None:
    """The lookup came after the tokens and the worst-case cost were held: a caller whose
    tpm or budget had no room for another call was refused its team's cached answer (429),
    though serving it costs nothing."""
    upstream, base_url = openai_upstream
    server = _thrifty(tmp_path / "gw", base_url, store, limit)
    try:
        client = _client(server, THRIFTY_KEY)
        first, headers, _ = _ask(client, "what does a cache cost")
        assert headers["x-aigw-cache"] == "miss"
        _ask(client, BIG_PROMPT, model="plain")  # spends all but about 200 of 2,100
        assert len(upstream.script.requests) == 2

        again, headers, _ = _ask(client, "what does a cache cost")
        assert (headers["x-aigw-cache"], again) == ("hit", first)
        text, headers, _ = _streamed(client, "what does a cache cost")
        assert (headers["x-aigw-cache"], text) == ("hit", first)

        # A miss still needs the room it did: refused before any upstream call.
        with pytest.raises(openai.RateLimitError):
            _ask(client, "a question nobody asked yet")
        with pytest.raises(openai.RateLimitError):
            _streamed(client, "another question nobody asked yet")
        assert len(upstream.script.requests) == 2
    finally:
        server.stop()


def test_a_hit_still_counts_against_rpm(
    tmp_path: Path, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    """rpm counts requests, hits included (as LiteLLM and Portkey count them)."""
    server = _thrifty(tmp_path / "gw", openai_upstream[1], "embedded", "limits: {rpm: 2}")
    try:
        client = _client(server, THRIFTY_KEY)
        _ask(client, "count every request")
        assert _ask(client, "count every request")[1]["x-aigw-cache"] == "hit"
        with pytest.raises(openai.RateLimitError) as refused:
            _ask(client, "count every request")
        assert refused.value.response.headers.get("retry-after")
    finally:
        server.stop()


def test_a_caller_the_invoke_policies_refuse_is_not_served_a_cached_answer(
    tmp_path: Path, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    """Cedar's invoke decision comes before the lookup, whatever the cache holds: the
    lookup moved before the limits, not before the policies."""
    root = _gateway(tmp_path / "gw", openai_upstream[1])
    (root / "policies").mkdir()
    (root / "policies" / "gateway.cedar").write_text(
        '@id("invoke") permit (principal, action == Action::"invoke", resource);\n'
        '@id("route") permit (principal, action == Action::"route", resource);\n'
        '@id("ops-not-brief") forbid (principal in Team::"ops", action == Action::"invoke",'
        ' resource == Route::"brief");\n')
    server = Server(root)
    try:
        server.wait_ready()
        _ask(_client(server, ENG_KEY), "for everyone but ops", model="brief")  # scope shared
        with pytest.raises(openai.PermissionDeniedError):
            _ask(_client(server, OPS_KEY), "for everyone but ops", model="brief")
        assert len(openai_upstream[0].script.requests) == 1
    finally:
        server.stop()
