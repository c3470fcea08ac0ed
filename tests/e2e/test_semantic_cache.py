"""The semantic cache with real ``aigw serve`` processes in front of the OpenAI fake
(whose embeddings are a hashed bag of words: close for texts of mostly the same words),
driven by the openai SDK: paraphrases served, other questions and shapes not, the
threshold, scopes, an embeddings failure, the ledger, and Redis shared by replicas."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from ..fakes.openai_fake import OpenAIFake
from ..redis_server import PrivateRedis
from .server import Server, running
from .test_response_cache import (
    ENG_KEY,
    ENG_KEY_2,
    OPS_KEY,
    _access_lines,
    _ask,
    _client,
    _digest,
    _gateway,
    _lookups,
    _streamed,
)

pytestmark = pytest.mark.e2e

QUESTION = "What is the capital of France?"
SAME_WORDS = "what is the capital of france"  # not the same request: the same bag of words
LONGER = "Tell me: what is the capital of France?"  # two words more: a similarity of ~0.88
OTHER = "How do I bake sourdough bread?"

DEPLOYMENTS = """\
  vectors: {provider: up, model: text-embedding-3-small, kind: embeddings,
            context_window: 8191, price: {input: 1000000, output: 0}}
"""
ROUTES = """\
  embed: {deployment: vectors}
  faq: {deployment: gpt, cache: {semantic: {embeddings: embed, threshold: 0.85}}}
  strict: {deployment: gpt, cache: {semantic: {embeddings: embed, threshold: 0.99}}}
  faq-key: {deployment: gpt, cache: {scope: key, semantic: {embeddings: embed, threshold: 0.85}}}
"""


def _semantic_gateway(root: Path, upstream: str, store: str = "embedded",
                      settings: str = "", keys: str = "") -> Path:
    return _gateway(root, upstream, store, settings, deployments=DEPLOYMENTS, routes=ROUTES,
                    keys=keys)


@pytest.fixture
def upstream(openai_upstream: tuple[OpenAIFake, str]) -> tuple[OpenAIFake, str]:
    openai_upstream[0].embedding_dimensions = 256  # few collisions between words
    return openai_upstream


@pytest.fixture
def gateway(tmp_path: Path, upstream: tuple[OpenAIFake, str]) -> Iterator[Server]:
    with running(_semantic_gateway(tmp_path / "gw", upstream[1])) as server:
        yield server


def _chats(fake: OpenAIFake) -> list[dict[str, Any]]:
    return [body for body in fake.script.requests if "messages" in body]


def _embeddings(fake: OpenAIFake) -> list[dict[str, Any]]:
    return [body for body in fake.script.requests if "input" in body]


def test_a_paraphrase_is_served_from_the_cache(
    gateway: Server, upstream: tuple[OpenAIFake, str],
) -> None:
    fake = upstream[0]
    client = _client(gateway)
    first, headers, _ = _ask(client, QUESTION, model="faq")
    assert headers["x-aigw-cache"] == "miss" and "x-aigw-cache-similarity" not in headers

    again, headers, _ = _ask(client, SAME_WORDS, model="faq")
    assert (headers["x-aigw-cache"], headers["x-aigw-cache-similarity"]) == ("hit", "1.0000")
    assert again == first == f"fake-openai: {QUESTION}"
    assert headers["x-aigw-attempts"] == "0"

    near, headers, _ = _ask(client, LONGER, model="faq")
    assert headers["x-aigw-cache"] == "hit" and near == first
    assert 0.85 <= float(headers["x-aigw-cache-similarity"]) < 0.95

    streamed, headers, _ = _streamed(client, SAME_WORDS, model="faq")
    assert headers["x-aigw-cache"] == "hit" and streamed == first

    other, headers, _ = _ask(client, OTHER, model="faq")
    assert headers["x-aigw-cache"] == "miss" and other == f"fake-openai: {OTHER}"
    assert len(_chats(fake)) == 2
    # Each exact miss was embedded: the conversation, its role and its text.
    assert [body["input"] for body in _embeddings(fake)] == [
        [f"user: {text}"] for text in (QUESTION, SAME_WORDS, LONGER, SAME_WORDS, OTHER)]

    # The exact entry is found first, without an embedding.
    _, headers, _ = _ask(client, QUESTION, model="faq")
    assert headers["x-aigw-cache"] == "hit" and "x-aigw-cache-similarity" not in headers
    assert len(_embeddings(fake)) == 5


def test_a_completions_prompt_of_token_ids_is_looked_up_exactly_only(
    gateway: Server, upstream: tuple[OpenAIFake, str],
) -> None:
    """Token ids are numbers whose meaning no embedding reads: not embedded, nor served
    another prompt's answer; the same ids again are an exact hit."""
    client = _client(gateway)
    _ask(client, "1 2 3", model="faq")
    heads = [client.completions.with_raw_response.create(model="faq", prompt=[1, 2, 3])
             .headers["x-aigw-cache"] for _ in range(2)]
    assert heads == ["miss", "hit"]
    assert [body["input"] for body in _embeddings(upstream[0])] == [["user: 1 2 3"]]


def test_the_threshold_is_respected(gateway: Server, upstream: tuple[OpenAIFake, str]) -> None:
    client = _client(gateway)
    _ask(client, QUESTION, model="strict")
    assert _ask(client, SAME_WORDS, model="strict")[1]["x-aigw-cache"] == "hit"
    assert _ask(client, LONGER, model="strict")[1]["x-aigw-cache"] == "miss"
    assert len(_chats(upstream[0])) == 2


def test_another_conversation_or_shape_is_not_served(
    gateway: Server, upstream: tuple[OpenAIFake, str],
) -> None:
    client = _client(gateway)
    _ask(client, QUESTION, model="faq")
    # Any field but the messages and delivery's is another shape: never compared.
    assert _ask(client, SAME_WORDS, model="faq", temperature=0.5)[1]["x-aigw-cache"] == "miss"
    assert _ask(client, SAME_WORDS, model="faq", max_tokens=9)[1]["x-aigw-cache"] == "miss"
    assert _ask(client, SAME_WORDS, model="faq", user="else")[1]["x-aigw-cache"] == "hit"
    # Another system prompt is another conversation.
    raw = client.chat.completions.with_raw_response.create(model="faq", messages=[
        {"role": "system", "content": "Answer in riddles about dragons and castles."},
        {"role": "user", "content": SAME_WORDS}])
    assert raw.headers["x-aigw-cache"] == "miss"
    # Not text only (a tool's result): no semantic lookup, so no embedding.
    embedded = len(_embeddings(upstream[0]))
    raw = client.chat.completions.with_raw_response.create(model="faq", messages=[
        {"role": "user", "content": SAME_WORDS},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Paris"}])
    assert raw.headers["x-aigw-cache"] == "miss"
    assert len(_embeddings(upstream[0])) == embedded
    assert len(_chats(upstream[0])) == 5


def test_a_near_question_after_another_system_prompt_or_turn_is_not_served(
    gateway: Server, upstream: tuple[OpenAIFake, str],
) -> None:
    """A few other words in a long conversation move its embedding little: compared whole,
    a question under "Answer in German." was served the answer written in French (0.95),
    and "are you sure?" after "9 days" the answer to it after "90 days" (0.93). Only the
    last message is compared by meaning; what came before it must be the same."""
    client = _client(gateway)

    def ask(*messages: dict[str, str]) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="faq", messages=[*messages])  # type: ignore[list-item]
        return raw.headers["x-aigw-cache"]

    long = {"role": "user", "content": "Please explain in detail how the water cycle works "
            "including evaporation condensation and precipitation over oceans"}
    french, german = ({"role": "system", "content": f"Answer in {language}."}
                      for language in ("French", "German"))
    assert ask(french, long) == "miss"
    assert ask(german, long) == "miss"
    near = {"role": "user", "content": f"{long['content']} please"}
    assert ask(french, near) == "hit"  # the same system prompt, a near question: served

    sure = {"role": "user", "content": "are you sure about that number"}
    assert ask(long, {"role": "assistant", "content": "It takes 9 days."}, sure) == "miss"
    assert ask(long, {"role": "assistant", "content": "It takes 90 days."}, sure) == "miss"
    assert len(_chats(upstream[0])) == 4
    # The last message alone is embedded.
    assert [body["input"] for body in _embeddings(upstream[0])][-1] == [
        "user: are you sure about that number"]


def test_a_long_system_prompt_does_not_keep_a_question_from_the_lookup(
    gateway: Server, upstream: tuple[OpenAIFake, str],
) -> None:
    """max_prompt_tokens bounds what is embedded, the last message: a system prompt past
    it (2048 by default, and RAG prompts are longer) kept every question of the route
    from the semantic lookup."""
    client = _client(gateway)
    system = {"role": "system", "content": " ".join(f"rule{n}" for n in range(1500))}

    def ask(text: str) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="faq", messages=[system, {"role": "user", "content": text}])
        return raw.headers["x-aigw-cache"]

    assert (ask(QUESTION), ask(SAME_WORDS)) == ("miss", "hit")
    assert [body["input"] for body in _embeddings(upstream[0])] == [
        [f"user: {text}"] for text in (QUESTION, SAME_WORDS)]


def test_entries_are_served_only_within_their_scope(gateway: Server) -> None:
    _ask(_client(gateway, ENG_KEY), QUESTION, model="faq")
    assert _ask(_client(gateway, ENG_KEY_2), SAME_WORDS, model="faq")[1]["x-aigw-cache"] == "hit"
    assert _ask(_client(gateway, OPS_KEY), SAME_WORDS, model="faq")[1]["x-aigw-cache"] == "miss"

    _ask(_client(gateway, ENG_KEY), QUESTION, model="faq-key")
    assert _ask(_client(gateway, ENG_KEY_2), SAME_WORDS,
                model="faq-key")[1]["x-aigw-cache"] == "miss"
    assert _ask(_client(gateway, ENG_KEY), SAME_WORDS,
                model="faq-key")[1]["x-aigw-cache"] == "hit"


def test_an_embeddings_failure_is_a_miss_and_the_answer_is_served(
    gateway: Server, upstream: tuple[OpenAIFake, str],
) -> None:
    fake = upstream[0]
    client = _client(gateway)
    _ask(client, QUESTION, model="faq")
    fake.script.actions.append(Action(status=400))  # the embedding's call: not retried
    answer, headers, _ = _ask(client, SAME_WORDS, model="faq")
    assert headers["x-aigw-cache"] == "miss" and answer == f"fake-openai: {SAME_WORDS}"
    # Too slow (the semantic cache's timeout_s, 2 s by default): a miss as well.
    fake.script.actions.append(Action(delay_s=3))
    _, headers, _ = _ask(client, LONGER, model="faq")
    assert headers["x-aigw-cache"] == "miss"
    assert len(_chats(fake)) == 3
    lines = [line for line in _access_lines(gateway) if line["route"] == "embed"]
    assert [line["status"] for line in lines] == [200, 400, 504]


def test_a_slow_embedding_leaves_the_request_time_to_be_answered(
    gateway: Server, upstream: tuple[OpenAIFake, str],
) -> None:
    """It waited up to timeout_s (2 s) whatever the request's own deadline: an embedding
    of 1.8 s left a 2 s request 0.2 s, and an upstream that answers in 0.4 s a 504."""
    fake = upstream[0]
    fake.script.actions += [Action(delay_s=1.8), Action(delay_s=0.4)]  # embedding, chat
    client = _client(gateway, **{"x-aigw-deadline-ms": "2000"})
    answer, headers, _ = _ask(client, QUESTION, model="faq")
    assert headers["x-aigw-cache"] == "miss" and answer == f"fake-openai: {QUESTION}"
    lines = _access_lines(gateway)
    assert [(line["route"], line["status"]) for line in lines] == [("embed", 504), ("faq", 200)]


def test_the_embedding_is_billed_and_in_the_ledger(gateway: Server) -> None:
    client = _client(gateway)
    _ask(client, QUESTION, model="faq")
    _ask(client, SAME_WORDS, model="faq")

    assert _lookups(gateway) == {("faq", "miss"): 1.0, ("faq", "semantic_hit"): 1.0}
    lines = _access_lines(gateway)
    faq = [line for line in lines if line["route"] == "faq"]
    assert [(line["cache"], line["cache_similarity"]) for line in faq] == [
        ("miss", None), ("semantic_hit", 1.0)]
    assert faq[1]["cost"] == 0 and faq[1]["deployment"] == "gpt"
    embed = [line for line in lines if line["route"] == "embed"]
    assert [(line["key"], line["endpoint"], line["deployment"]) for line in embed] == [
        ("eng", "embeddings", "vectors")] * 2
    assert all(line["cost"] > 0 for line in embed)

    spend = httpx.get(f"{gateway.base_url}/admin/spend?group_by=key,route",
                      headers={"authorization": f"Bearer {DEV_KEY}"}).json()["data"]
    rows = {row["route"]: row for row in spend if row["key"] == "eng"}
    assert rows["embed"]["requests"] == 2
    assert rows["embed"]["cost"] == pytest.approx(sum(line["cost"] for line in embed))
    assert rows["faq"]["requests"] == 2 and rows["faq"]["cost"] == faq[0]["cost"]


def test_two_gateways_on_one_redis_share_their_vectors(
    tmp_path: Path, upstream: tuple[OpenAIFake, str], private_redis: PrivateRedis,
) -> None:
    fake, base_url = upstream
    with ExitStack() as stack:
        servers = []
        for name in ("a", "b"):
            server = Server(_semantic_gateway(tmp_path / name, base_url, private_redis.url))
            stack.callback(server.stop)
            server.wait_ready()
            servers.append(server)
        first, headers, _ = _ask(_client(servers[0]), QUESTION, model="faq")
        assert headers["x-aigw-cache"] == "miss"
        second, headers, _ = _ask(_client(servers[1]), LONGER, model="faq")
        assert headers["x-aigw-cache"] == "hit" and second == first
        assert _ask(_client(servers[1]), OTHER, model="faq")[1]["x-aigw-cache"] == "miss"
        assert _ask(_client(servers[0], OPS_KEY), SAME_WORDS,
                    model="faq")[1]["x-aigw-cache"] == "miss"  # team eng's entry
        assert len(_chats(fake)) == 3
        store = redis.Redis.from_url(private_redis.url)
        try:
            buckets = store.keys("aigw:cache:vectors:*")
            # eng's and ops' buckets (one shape, two owners): the first holds two entries
            assert sorted(store.hlen(bucket) for bucket in buckets) == [1, 2]
            assert all(0 < store.pttl(bucket) <= 3_600_000 for bucket in buckets)
        finally:
            store.close()


def test_while_redis_is_away_no_embedding_is_made_for_the_lookup(
    tmp_path: Path, upstream: tuple[OpenAIFake, str], private_redis: PrivateRedis,
) -> None:
    """The cache rests (every lookup a miss, nothing kept): with store_failure: fail_open
    each request was still embedded, billed, for a lookup that could not be read."""
    fake, base_url = upstream
    server = Server(_semantic_gateway(tmp_path / "gw", base_url, private_redis.url,
                                      ", store_failure: fail_open"))
    try:
        server.wait_ready()
        client = _client(server)
        _ask(client, QUESTION, model="faq")
        private_redis.stop()
        for text in (SAME_WORDS, OTHER):
            answer, headers, _ = _ask(client, text, model="faq")
            assert headers["x-aigw-cache"] == "miss" and answer == f"fake-openai: {text}"
        assert len(_embeddings(fake)) == 1 and len(_chats(fake)) == 3
    finally:
        server.stop()


def test_a_semantic_hit_is_served_only_from_a_deployment_the_callers_policies_permit(
    tmp_path: Path, upstream: tuple[OpenAIFake, str],
) -> None:
    fake, base_url = upstream
    root = _gateway(
        tmp_path / "gw", base_url,
        deployments=DEPLOYMENTS + "  alt: {provider: up, model: gpt-4o, context_window: 128000}\n"
        "groups:\n  pair: {strategy: priority, members: [gpt, alt]}\n",
        routes="  embed: {deployment: vectors}\n"
        "  everyone: {group: pair, cache: {scope: shared, semantic: {embeddings: embed}}}\n")
    (root / "policies").mkdir()
    (root / "policies" / "gateway.cedar").write_text(
        '@id("invoke") permit (principal, action == Action::"invoke", resource);\n'
        '@id("route") permit (principal, action == Action::"route", resource);\n'
        '@id("ops-stay-off-gpt") forbid (principal in Team::"ops", action == Action::"route",'
        ' resource == Deployment::"gpt");\n')
    server = Server(root)
    try:
        server.wait_ready()
        _, headers, _ = _ask(_client(server, ENG_KEY), QUESTION, model="everyone")
        assert (headers["x-aigw-cache"], headers["x-aigw-deployment"]) == ("miss", "gpt")
        _, headers, _ = _ask(_client(server, ENG_KEY_2), SAME_WORDS, model="everyone")
        assert (headers["x-aigw-cache"], headers["x-aigw-deployment"]) == ("hit", "gpt")
        # gpt's cached answer is not for ops: a miss, answered by the member they may use.
        _, headers, _ = _ask(_client(server, OPS_KEY), SAME_WORDS.upper(), model="everyone")
        assert (headers["x-aigw-cache"], headers["x-aigw-deployment"]) == ("miss", "alt")
        # Their next near question is served that answer: gpt's, as near, is passed over
        # (only the nearest was tried: each of their near questions a miss).
        _, headers, _ = _ask(_client(server, OPS_KEY), SAME_WORDS, model="everyone")
        assert (headers["x-aigw-cache"], headers["x-aigw-deployment"]) == ("hit", "alt")
        assert len(_chats(fake)) == 2
    finally:
        server.stop()


def test_a_key_that_may_not_call_the_embeddings_route_is_looked_up_exactly_only(
    tmp_path: Path, upstream: tuple[OpenAIFake, str],
) -> None:
    """Rather than an embedding refused (403, a ledger record) on every request (AGW346
    says so at compile time)."""
    fake, base_url = upstream
    root = _semantic_gateway(tmp_path / "gw", base_url)
    narrow = "sk-narrow-0004"
    with (root / "gateway.yaml").open("a") as config:
        config.write(f"  narrow: {{team: eng, routes: [faq], sha256: {_digest(narrow)}}}\n")
    server = Server(root)
    try:
        server.wait_ready()
        _ask(_client(server, ENG_KEY), QUESTION, model="faq")
        assert _ask(_client(server, narrow), SAME_WORDS, model="faq")[1]["x-aigw-cache"] == "miss"
        assert _ask(_client(server, narrow), QUESTION, model="faq")[1]["x-aigw-cache"] == "hit"
        assert len(_embeddings(fake)) == 1  # the eng key's only
        assert [line["key"] for line in _access_lines(server) if line["route"] == "embed"] == [
            "eng"]
    finally:
        server.stop()


LIMITED_KEY = "sk-semantic-limited"


def test_the_embedding_is_part_of_its_request_for_rpm_and_max_parallel(
    tmp_path: Path, upstream: tuple[OpenAIFake, str],
) -> None:
    """The lookup's embedding is made on behalf of the request: it counted as a request
    of its own against the key's rpm (halving it) and wanted a second place in flight,
    so a key with max_parallel: 1 was refused every embedding and never hit."""
    keys = (f"  limited: {{team: eng, sha256: {_digest(LIMITED_KEY)}, "
            "limits: {rpm: 3, max_parallel: 1}}\n")
    server = Server(_semantic_gateway(tmp_path / "gw", upstream[1], keys=keys))
    try:
        server.wait_ready()
        client = _client(server, LIMITED_KEY).with_options(max_retries=0)
        assert _ask(client, QUESTION, model="faq")[1]["x-aigw-cache"] == "miss"
        assert _ask(client, SAME_WORDS, model="faq")[1]["x-aigw-cache"] == "hit"
        assert _ask(client, LONGER, model="faq")[1]["x-aigw-cache"] == "hit"
        with pytest.raises(openai.RateLimitError):  # the fourth request of the minute
            _ask(client, OTHER, model="faq")
        assert len(_embeddings(upstream[0])) == 3
    finally:
        server.stop()
