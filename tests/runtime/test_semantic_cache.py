"""The semantic cache's parts: the conversation embedded, the shape, and the vectors
kept next to the entries (in the process, bounded and evicted with them; in Redis,
bounded per bucket and expiring with them). End to end: tests/e2e/test_semantic_cache.py."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio

from aigw.compiler import compile_gateway
from aigw.compiler.graph import Graph
from aigw.runtime.chat_request import parse_chat_request
from aigw.runtime.response_cache import LocalCache, RedisCache, cache_key
from aigw.runtime.semantic_cache import conversation, semantic_ask
from aigw.runtime.vector_index import Rows, Vector, unit

from ..redis_server import PrivateRedis

GATEWAY = """
version: 1
providers:
  local: {type: echo}
deployments:
  small: {provider: local, model: echo-1, context_window: 8192}
  vectors: {provider: local, model: echo-embed, context_window: 8192, kind: embeddings}
  narrow: {provider: local, model: echo-embed, context_window: 64, kind: embeddings}
routes:
  embed: {deployment: vectors}
  embed-narrow: {deployment: narrow}
  faq-narrow: {deployment: small, cache: {semantic: {embeddings: embed-narrow}}}
  faq: {deployment: small, cache: {semantic: {embeddings: embed, max_prompt_tokens: 40}}}
  exact: {deployment: small, cache: {}}
keys:
  a: {sha256: A_DIGEST}
""".replace("A_DIGEST", "a" * 64)


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Graph:
    root: Path = tmp_path_factory.mktemp("gw")
    (root / "gateway.yaml").write_text(GATEWAY)
    compiled = compile_gateway(root)
    assert compiled.graph is not None, compiled.diagnostics
    return compiled.graph


def _request(*messages: dict[str, object], **fields: object) -> bytes:
    return json.dumps({"model": "faq", "messages": list(messages), **fields}).encode()


def _vector(*values: float) -> Vector:
    vector = unit(list(values))
    assert vector is not None
    return vector


def test_only_text_conversations_within_the_size_are_looked_up(graph: Graph) -> None:
    route, key = graph.routes["faq"], next(iter(graph.keys_by_sha256.values()))
    user = {"role": "user", "content": [{"type": "text", "text": "hello"}]}
    ask = semantic_ask(route, parse_chat_request(_request(
        {"role": "system", "content": "Be brief."}, user, {"role": "assistant", "content": "hi"},
        {"role": "user", "name": "ann", "content": "and again"})), key, 30)
    assert ask is not None
    assert ask.text == "user (ann): and again"  # the rest is in the shape
    assert semantic_ask(route, parse_chat_request(_request(user)), key, 41) is None  # too long
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    tool = {"role": "tool", "tool_call_id": "c", "content": "result"}
    for messages in ([user, image], [user, tool]):
        assert conversation(parse_chat_request(_request(*messages)).messages) is None
    assert semantic_ask(graph.routes["exact"], parse_chat_request(_request(user)), key, 1) is None


def test_a_prompt_no_embeddings_deployment_could_take_is_not_looked_up(graph: Graph) -> None:
    """max_prompt_tokens (2048 by default) past the embeddings deployments' windows (64
    here, 512 for many local models): each longer prompt's embedding was refused (422,
    context_length_exceeded), a ledger record every time."""
    route, key = graph.routes["faq-narrow"], next(iter(graph.keys_by_sha256.values()))
    request = parse_chat_request(_request({"role": "user", "content": "hello"}))
    assert semantic_ask(route, request, key, 64) is not None
    assert semantic_ask(route, request, key, 65) is None


def test_the_shape_is_all_but_the_messages_and_delivery(graph: Graph) -> None:
    route, key = graph.routes["faq"], next(iter(graph.keys_by_sha256.values()))

    def shape(body: bytes) -> str | None:
        ask = semantic_ask(route, parse_chat_request(body), key, 1)
        return ask.shape if ask is not None else None

    hello = {"role": "user", "content": "hello"}
    base = shape(_request(hello))
    assert base == shape(_request({"role": "user", "content": "hi"}, stream=True, user="u"))
    assert base != shape(_request(hello, temperature=0.3))
    assert base != cache_key(route, parse_chat_request(_request(hello)), key)  # not the entry's
    # Only the last message is compared by meaning: what came before it, exactly.
    system = {"role": "system", "content": "Answer in French."}
    said = {"role": "assistant", "content": "It takes 9 days."}
    asked = shape(_request(system, hello))
    assert asked not in (base, shape(_request({**system, "content": "Answer in German."}, hello)))
    assert asked == shape(_request(system, {"role": "user", "content": "hi"}))
    assert shape(_request(hello, said, hello)) != shape(
        _request(hello, {**said, "content": "It takes 90 days."}, hello))
    # Who the answer is for, and which provider prompt cache it goes to: the same shape.
    assert base == shape(_request(hello, safety_identifier="s", prompt_cache_key="k"))


def test_rows_find_the_nearest_and_fill_the_holes_left() -> None:
    rows = Rows()
    for index in range(20):  # past the first allocation
        assert rows.add(f"k{index}", _vector(1.0, index / 10))
    assert rows.nearest(_vector(1.0, 0.52)) == [("k5", pytest.approx(1.0, abs=1e-3))]
    rows.remove("k5")
    rows.remove("k19")
    assert len(rows) == 18
    assert [key for key, _ in rows.nearest(_vector(1.0, 0.52), 2)] == ["k6", "k4"]
    assert rows.nearest(_vector(1.0, 1.8))[0][0] == "k18"
    assert not rows.add("other", _vector(1.0, 0.0, 0.0))  # another model's length
    assert unit([0.0, 0.0]) is None and unit([float("nan"), 1.0]) is None


async def test_local_vectors_are_evicted_with_their_entries_and_counted_in_bytes() -> None:
    near = _vector(1.0, 0.0)
    cache = LocalCache(max_entries=2, max_bytes=1000)
    await cache.put("one", b"1", ttl_s=10)
    await cache.add_vector("bucket", "one", near, ttl_s=10)
    assert await cache.nearest("bucket", near) == [("one", pytest.approx(1.0))]
    await cache.add_vector("bucket", "never-put", near, ttl_s=10)  # no entry: not kept
    await cache.put("two", b"2", ttl_s=10)
    await cache.put("three", b"3", ttl_s=10)  # "one" goes, and its vector with it
    assert await cache.nearest("bucket", near) == []
    # A refresh of an entry (its messages the same) keeps its vector.
    await cache.add_vector("bucket", "three", near, ttl_s=10)
    await cache.put("three", b"33", ttl_s=10)
    assert await cache.nearest("bucket", near) == [("three", pytest.approx(1.0))]
    # An expired entry is passed over (and dropped, with the bucket's other expired ones).
    now = [0.0]
    timed = LocalCache(max_entries=10, clock=lambda: now[0])
    for name, ttl_s, vector in (("near", 1, near), ("gone", 1, near), ("far", 9, _vector(1, 1))):
        await timed.put(name, b"x", ttl_s=ttl_s)
        await timed.add_vector("bucket", name, vector, ttl_s=ttl_s)
    now[0] = 2.0
    assert await timed.nearest("bucket", near, 2) == [("far", pytest.approx(0.5 ** 0.5))]
    assert len(timed._buckets["bucket"]) == 1
    # Vectors count against the byte budget: a 256-float vector (1 KiB) pushes out all.
    wide = LocalCache(max_entries=10, max_bytes=1500)
    for name in ("a", "b"):
        await wide.put(name, b"x", ttl_s=10)
        await wide.add_vector("bucket", name, _vector(*np.ones(256)), ttl_s=10)
    assert await wide.get("a") is None and await wide.get("b") == b"x"


async def test_redis_keeps_the_most_recent_vectors_of_a_bucket_expiring_with_them(
    private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(RedisCache, "MAX_VECTORS", 3)
    cache = RedisCache(private_redis.url, namespace="semantic")
    admin = redis.asyncio.Redis.from_url(private_redis.url)
    try:
        for index in range(5):
            await cache.put(f"k{index}", b"v", ttl_s=60)
            await cache.add_vector("b", f"k{index}", _vector(1.0, index / 10), ttl_s=60)
        assert sorted(await admin.hkeys("semantic:cache:vectors:{b}")) == [b"k2", b"k3", b"k4"]
        assert await cache.nearest("b", _vector(1.0, 0.0)) == [
            ("k2", pytest.approx(1 / 1.04 ** 0.5))]
        assert await cache.nearest("other", _vector(1.0, 0.0)) == []
        await cache.add_vector("short", "k0", _vector(1.0, 0.0), ttl_s=0.2)
        await cache.add_vector("short", "k1", _vector(1.0, 1.0), ttl_s=0.2)
        await cache.add_vector("short", "k4", _vector(0.0, 1.0), ttl_s=60)
        await asyncio.sleep(0.4)  # the nearer ones expired: passed over
        assert await cache.nearest("short", _vector(1.0, 0.0), 3) == [("k4", pytest.approx(0.0))]
    finally:
        await admin.aclose()
        await cache.aclose()


async def test_local_vectors_cost_no_more_memory_than_the_byte_budget() -> None:
    """The matrices are counted as allocated: a bucket a key (one vector each) took eight
    rows' room but counted one; one that grew and emptied kept its largest matrix."""
    vectors = [_vector(*row) for row in np.random.default_rng(0).standard_normal((1000, 512))]
    budget = 512 << 10  # 256 vectors of 2 KiB
    tracemalloc.start()
    try:
        cache = LocalCache(max_entries=100_000, max_bytes=budget)
        for index, vector in enumerate(vectors):  # a bucket each: scope key
            await cache.put(f"k{index}", b"x", ttl_s=60)
            await cache.add_vector(f"b{index}", f"k{index}", vector, ttl_s=60)
        assert tracemalloc.get_traced_memory()[0] < budget * 1.5
        await cache.aclose()

        now = [0.0]
        grown = LocalCache(max_entries=100_000, max_bytes=64 << 20, clock=lambda: now[0])
        for index, vector in enumerate(vectors):  # one bucket, all but the last expire first
            await grown.put(f"k{index}", b"x", ttl_s=1 if index < 999 else 60)
            await grown.add_vector("b", f"k{index}", vector, ttl_s=60)
        now[0] = 2.0
        # the nearest expired: the expired go, and the one left is the nearest
        assert [key for key, _ in await grown.nearest("b", vectors[0], 2)] == ["k999"]
        assert tracemalloc.get_traced_memory()[0] < 256 << 10  # the matrix was 2 MiB
    finally:
        tracemalloc.stop()


async def test_vectors_of_a_new_length_replace_their_buckets_old_ones() -> None:
    """The embeddings model changed under its deployment's name (and model): the old
    vectors were kept and every new one refused, no semantic hit until they expired."""
    cache = LocalCache(max_entries=10)
    for name, vector in (("old", _vector(1.0, 0.0)), ("new", _vector(1.0, 0.0, 0.0))):
        await cache.put(name, b"x", ttl_s=60)
        await cache.add_vector("bucket", name, vector, ttl_s=60)
    assert await cache.nearest("bucket", _vector(1.0, 0.1, 0.0)) == [
        ("new", pytest.approx(0.995, abs=1e-3))]
    assert await cache.nearest("bucket", _vector(1.0, 0.0)) == []
    assert await cache.get("old") == b"x"  # its entry stays, for an exact hit
