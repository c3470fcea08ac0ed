"""The response cache's parts: its key, its two backends, and a stream put back together."""

from __future__ import annotations

import asyncio
import json
import logging
import tracemalloc
from pathlib import Path

import pytest
import redis.asyncio

from aigw.compiler import compile_gateway
from aigw.compiler.graph import Graph
from aigw.runtime.chat_request import chat_request_from, parse_chat_request
from aigw.runtime.providers.base import (
    ChatDelta,
    ChatResult,
    Choice,
    ToolCall,
    ToolCallDelta,
    Usage,
)
from aigw.runtime.response_cache import (
    LocalCache,
    RedisCache,
    StreamedAnswer,
    cache_key,
    cacheable,
    decode_answer,
    encode_answer,
    replay,
)

from ..e2e.server import free_port
from ..redis_server import PrivateRedis

GATEWAY = """
version: 1
providers:
  local: {type: echo}
deployments:
  small: {provider: local, model: echo-1, context_window: 8192}
  large: {provider: local, model: echo-1-large, context_window: 8192}
groups:
  both: {members: [small, large]}
routes:
  team: {deployment: small, cache: {ttl_s: 60}}
  shared: {group: both, cache: {scope: shared}}
teams:
  eng: {}
keys:
  a: {team: eng, sha256: A_DIGEST}
  b: {team: eng, sha256: B_DIGEST}
  c: {sha256: C_DIGEST}
""".replace("A_DIGEST", "a" * 64).replace("B_DIGEST", "b" * 64).replace("C_DIGEST", "c" * 64)


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Graph:
    root: Path = tmp_path_factory.mktemp("gw")
    (root / "gateway.yaml").write_text(GATEWAY)
    compiled = compile_gateway(root)
    assert compiled.graph is not None, compiled.diagnostics
    return compiled.graph


def _body(text: str, **fields: object) -> bytes:
    return json.dumps({"model": "team", "messages": [{"role": "user", "content": text}],
                       **fields}).encode()


def test_the_key_follows_what_decides_the_answer(graph: Graph) -> None:
    route, keys = graph.routes["team"], {k.name: k for k in graph.keys_by_sha256.values()}
    base = cache_key(route, parse_chat_request(_body("hi")), keys["a"])
    # Delivery only: the same entry.
    assert base == cache_key(route, parse_chat_request(_body("hi", stream=True, user="u")),
                             keys["a"])
    assert base == cache_key(route, parse_chat_request(_body("hi", temperature=None)), keys["a"])
    # Who it is for (OpenAI's successor to user) and which provider prompt cache it goes
    # to: not what it says.
    assert base == cache_key(route, parse_chat_request(_body(
        "hi", safety_identifier="s-1", prompt_cache_key="faq-v1")), keys["a"])
    assert base == cache_key(route, parse_chat_request(_body("hi")), keys["b"])  # same team
    # The answer could differ: another entry.
    for other in (_body("hi!"), _body("hi", temperature=0.2), _body("hi", seed=1),
                  _body("hi", tools=[{"type": "function", "function": {"name": "f"}}])):
        assert cache_key(route, parse_chat_request(other), keys["a"]) != base
    assert cache_key(route, parse_chat_request(_body("hi")), keys["c"]) != base  # no team
    # Gemini's mode VALIDATED, which a Gemini deployment is sent as it is (a request the
    # same as auto's in OpenAI's shape where no schema can be strict)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}}}}]
    auto = json.loads(_body("hi", tools=tools, tool_choice="auto"))
    assert cache_key(route, chat_request_from(auto, validated_calls=True), keys["a"]) != \
        cache_key(route, chat_request_from(auto), keys["a"])
    # A /v1/messages top_k (an Anthropic hint: not sent to an OpenAI-format upstream)
    # and a chat client's own top_k (sent to vLLM as it came): asked another thing.
    top_k = json.loads(_body("hi", top_k=5))
    assert cache_key(route, chat_request_from(top_k, anthropic_hints=True), keys["a"]) != \
        cache_key(route, chat_request_from(top_k), keys["a"])
    shared = graph.routes["shared"]
    assert (cache_key(shared, parse_chat_request(_body("hi")), keys["a"])
            == cache_key(shared, parse_chat_request(_body("hi")), keys["c"]))


async def test_local_entries_expire_and_the_least_recently_used_goes_first() -> None:
    now = [100.0]
    cache = LocalCache(max_entries=2, clock=lambda: now[0])
    await cache.put("one", b"1", ttl_s=10)
    await cache.put("two", b"2", ttl_s=10)
    assert await cache.get("one") == b"1"  # now "two" is the least recently used
    await cache.put("three", b"3", ttl_s=10)
    assert await cache.get("two") is None
    assert await cache.get("one") == b"1" and await cache.get("three") == b"3"
    now[0] += 10
    assert await cache.get("one") is None


async def test_local_entries_are_kept_within_a_byte_budget() -> None:
    """The count alone let 10,000 answers of up to 64 MiB each stay in the process."""
    cache = LocalCache(max_entries=100, max_bytes=10)
    await cache.put("one", b"1111", ttl_s=10)
    await cache.put("two", b"2222", ttl_s=10)
    assert await cache.get("one") == b"1111"  # now "two" is the least recently used
    await cache.put("three", b"3333", ttl_s=10)  # 12 bytes: "two" goes
    assert await cache.get("two") is None
    assert await cache.get("one") == b"1111" and await cache.get("three") == b"3333"
    await cache.put("one", b"1", ttl_s=10)  # replaced: its old bytes no longer count
    await cache.put("four", b"4444", ttl_s=10)
    assert [await cache.get(key) for key in ("one", "three", "four")] == [
        b"1", b"3333", b"4444"]
    await cache.put("huge", b"x" * 11, ttl_s=10)  # over the whole budget: not kept,
    assert await cache.get("huge") is None  # and nothing else pushed out for it
    assert await cache.get("one") == b"1" and await cache.get("four") == b"4444"


async def test_a_redis_cache_that_cannot_be_reached_is_a_miss_not_an_error() -> None:
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        await cache.put("k", b"v", ttl_s=5)
        assert await cache.get("k") is None
    finally:
        await cache.aclose()


async def test_a_redis_that_hangs_costs_one_lookup_then_the_cache_rests() -> None:
    """A Redis that accepts and never answers: the lookup fails after the cache's own
    short timeout, not retried, and for a while no lookup or write goes to it at all
    (each cost a request seconds of waiting)."""
    received: list[bytes] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.append(data)
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cache = RedisCache(f"redis://127.0.0.1:{port}/0")
    try:
        assert await cache.get("k") is None
        sent = len(received)
        assert sent >= 1  # it tried (its connection's handshake went unanswered)
        for _ in range(5):
            await cache.put("k", b"v", ttl_s=5)
            assert await cache.get("k") is None
        assert len(received) == sent  # resting: nothing more was sent
    finally:
        await cache.aclose()
        server.close()


async def test_a_redis_cache_expires_its_entries(redis_url: str) -> None:
    cache = RedisCache(redis_url, namespace="test-response-cache")
    try:
        await cache.put("k", b"v", ttl_s=0.2)
        assert await cache.get("k") == b"v"
        await asyncio.sleep(0.4)
        assert await cache.get("k") is None
    finally:
        await cache.aclose()


async def test_a_write_redis_refuses_for_memory_skips_that_entry_not_the_cache(
    private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture,
) -> None:
    """Under maxmemory (noeviction) Redis refuses a write at once (OOM), as a cache next to
    the limits and budgets should expect: that entry is not kept, and lookups and later
    writes go on. The cache rested 5 s after it, every lookup a miss for every request,
    as if Redis were down; and logged each refusal."""
    cache = RedisCache(private_redis.url, namespace="test-response-cache")
    admin = redis.asyncio.Redis.from_url(private_redis.url)
    try:
        await cache.put("kept", b"v", ttl_s=60)
        await admin.config_set("maxmemory-policy", "noeviction")
        await admin.config_set("maxmemory", "1")  # every write is refused from now
        with caplog.at_level(logging.WARNING, "aigw.cache"):
            for _ in range(3):
                await cache.put("refused", b"x" * 1000, ttl_s=60)
        assert await cache.get("kept") == b"v"
        assert await admin.exists("test-response-cache:cache:refused") == 0
        refusals = [r.getMessage() for r in caplog.records if r.name == "aigw.cache"]
        assert len(refusals) == 1 and "refused by Redis (OutOfMemoryError" in refusals[0]
        await admin.config_set("maxmemory", "0")
        await cache.put("later", b"w", ttl_s=60)
        assert await cache.get("later") == b"w"
    finally:
        await admin.aclose()
        await cache.aclose()


RESULT = ChatResult("echo-1", (
    Choice(0, "Hello there", "stop"),
    Choice(1, None, "tool_calls", (ToolCall("call_1", "lookup", '{"q": "x"}'),)),
), Usage(7, 3))


CAP = 1 << 20  # cache_max_entry_bytes' default


def test_an_answer_over_the_entry_cap_is_not_encoded_when_its_text_says_so() -> None:
    """An answer may be up to max_response_mb (64 MiB): it was encoded whole (another
    copy as large) before its size was compared with the cap. Its text is at most its
    entry's bytes, so text past the cap is refused before anything is built."""
    huge = ChatResult("m", (Choice(0, "x" * (16 << 20), "stop"),), Usage(1, 1))
    tracemalloc.start()
    try:
        assert encode_answer("small", huge, CAP) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < CAP, peak
    near = ChatResult("m", (Choice(0, "x" * (CAP - 10), "stop"),), Usage(1, 1))
    assert encode_answer("small", near, CAP) is None  # under the cap as text, not as an entry
    entry = encode_answer("small", RESULT, CAP)
    assert entry is not None and len(entry) < 1000


def test_a_stream_past_the_entry_cap_is_let_go_as_it_comes() -> None:
    """A streamed answer was gathered whole (and joined, and encoded) before its size was
    compared with the cap: what it gathered is let go once its text passes the cap, and
    the rest of the stream is not gathered."""
    under = StreamedAnswer("m", 2500)
    for delta in (ChatDelta(content="x" * 1000), ChatDelta(content="y" * 1000),
                  ChatDelta(finish_reason="stop")):
        under.add(delta)
    kept = under.result(Usage(1, 1))
    assert under.kept and kept is not None and kept.choices[0].content == "x" * 1000 + "y" * 1000
    answer = StreamedAnswer("m", 2500)
    answer.add(ChatDelta(content="x" * 1000))
    answer.add(ChatDelta(content="y" * 1000))
    assert answer.kept
    answer.add(ChatDelta(index=1, tool_calls=(ToolCallDelta(0, "c", "f", "z" * 600),)))
    assert not answer.kept and not answer._choices  # what it had gathered is let go
    answer.add(ChatDelta(content="small"))
    answer.add(ChatDelta(finish_reason="stop"))
    assert not answer._choices and answer.result(Usage(1, 1)) is None


async def test_a_replayed_answer_reassembles_to_itself() -> None:
    answer = StreamedAnswer("echo-1", CAP)
    async for delta in replay(RESULT):
        answer.add(delta)
    assert answer.result(Usage(7, 3)) == RESULT


def test_a_stream_in_pieces_reassembles_and_an_unfinished_one_does_not() -> None:
    answer = StreamedAnswer("echo-1", CAP)
    for delta in (
        ChatDelta(content="Hel"), ChatDelta(content="lo there"),
        ChatDelta(index=1, tool_calls=(ToolCallDelta(0, "call_1", "lookup", '{"q"'),)),
        ChatDelta(index=1, tool_calls=(ToolCallDelta(0, arguments=': "x"}'),)),
        ChatDelta(index=1, finish_reason="tool_calls"),
    ):
        answer.add(delta)
    assert answer.result(Usage(7, 3)) is None  # choice 0 never finished
    answer.add(ChatDelta(finish_reason="stop"))
    answer.add(ChatDelta(usage=Usage(7, 3)))
    assert answer.result(Usage(7, 3)) == RESULT


def test_an_answer_with_tool_arguments_that_are_not_an_object_is_not_kept() -> None:
    def calling(arguments: str) -> ChatResult:
        call = ToolCall("call_1", "lookup", arguments)
        return ChatResult("m", (Choice(0, None, "tool_calls", (call,)),), Usage(1, 1))

    assert cacheable(RESULT) and cacheable(calling('{"q": 1}')) and cacheable(calling(""))
    assert not cacheable(calling('{"q": ')) and not cacheable(calling("[1, 2]"))


def test_an_answer_a_content_filter_cut_is_not_kept() -> None:
    """It was replayed to every later asker for the whole TTL, streamed or not."""
    filtered = ChatResult("m", (Choice(0, "Hello", "stop"), Choice(1, "Par", "content_filter")),
                          Usage(1, 1))
    assert not cacheable(filtered)
    answer = StreamedAnswer("m", CAP)
    for delta in (ChatDelta(content="Hello"), ChatDelta(finish_reason="stop"),
                  ChatDelta(index=1, content="Par"),
                  ChatDelta(index=1, finish_reason="content_filter")):
        answer.add(delta)
    assert answer.result(Usage(1, 1)) is None


def test_an_answer_with_what_the_cache_does_not_keep_is_not_kept() -> None:
    """Log probabilities and passed-through fields (audio...) are not in an entry: a
    request asking for them must never be served one without them."""
    scored = {"content": [{"token": "Hi", "logprob": -0.1}]}
    assert not cacheable(ChatResult("m", (Choice(0, "Hi", "stop", logprobs=scored),),
                                    Usage(1, 1)))
    assert not cacheable(ChatResult("m", (Choice(0, None, "stop", extra={"audio": {}}),),
                                    Usage(1, 1)))
    answer = StreamedAnswer("m", CAP)
    for delta in (ChatDelta(content="Hi", logprobs=scored), ChatDelta(finish_reason="stop")):
        answer.add(delta)
    assert answer.result(Usage(1, 1)) is None


def test_an_entry_whose_deployment_is_gone_is_not_served(graph: Graph) -> None:
    for deployment, kept in (("small", True), ("removed", False)):
        entry = encode_answer(deployment, RESULT, CAP)
        assert entry is not None and (decode_answer(entry, graph) is not None) is kept
    assert decode_answer(b"not json", graph) is None
