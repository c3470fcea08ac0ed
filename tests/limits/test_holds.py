"""What a request holds against its key's budget before its call: never less than what
the upstream bills it (in-process app, embedded store)."""

from __future__ import annotations

from ..redis_server import PrivateRedis
from .conftest import KEYS, ClientFactory, digest

SIZED = "  sized: {deployment: sized-painter}\n"
STRETCHED = ("  stretched: {deployment: paid, guardrails: [stretch]}\n"
             "  stretched-vectors: {deployment: vectors, guardrails: [stretch]}\n")


async def test_a_chat_redacted_longer_is_held_as_it_is_sent(limited: ClientFactory) -> None:
    """Guardrail ``stretch`` makes each "x" ten characters: the hold was the prompt as it
    came (20 "x", 26 tokens and 5 out, within the team's 100), so the call went out and
    was billed as sent (126 in), past the budget. Now the hold grows to what is sent,
    refused where it does not fit; one that fits holds it, and gives it back settled."""
    await _chat_held_as_sent(limited, "embedded")


async def test_a_chat_redacted_longer_is_held_as_it_is_sent_on_redis(
    private_redis: PrivateRedis, limited: ClientFactory
) -> None:
    """As on the embedded store: the top-up counts against tpm and budgets alone."""
    await _chat_held_as_sent(limited, private_redis.url)


async def _chat_held_as_sent(limited: ClientFactory, store: str) -> None:
    client = await limited(extra_routes=STRETCHED, store=store)
    alice, dev = client("alice"), client("dev")
    long = {"model": "stretched", "max_tokens": 5,
            "messages": [{"role": "user", "content": " ".join(["x"] * 20)}]}
    refused = await alice.post("/v1/chat/completions", json=long)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "insufficient_quota"
    short = {**long, "messages": [{"role": "user", "content": "x x"}]}
    answered = await alice.post("/v1/chat/completions", json=short)
    assert answered.status_code == 200, answered.text
    usage = answered.json()["usage"]
    assert usage["prompt_tokens"] == 6 + 2 * 6  # "[REDACTED]" is six tokens
    budgets = {(b["scope"], b["name"]): b
               for b in (await dev.get("/admin/budgets")).json()["data"]}
    team = budgets[("team", "eng")]
    assert (team["spent"], team["held"]) == (usage["total_tokens"], 0)


async def test_an_embedding_redacted_longer_is_held_as_it_is_sent(
    limited: ClientFactory,
) -> None:
    """As a chat's: 20 "x" hold 20 of the team's 100; sent as 120 tokens, billed 120."""
    client = await limited(extra_routes=STRETCHED)
    alice, dev = client("alice"), client("dev")
    refused = await alice.post("/v1/embeddings", json={"model": "stretched-vectors",
                                                       "input": " ".join(["x"] * 20)})
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "insufficient_quota"
    answered = await alice.post("/v1/embeddings", json={"model": "stretched-vectors",
                                                        "input": "x x"})
    assert answered.status_code == 200, answered.text
    assert answered.json()["usage"]["prompt_tokens"] == 12
    budgets = {(b["scope"], b["name"]): b
               for b in (await dev.get("/admin/budgets")).json()["data"]}
    assert (budgets[("team", "eng")]["spent"], budgets[("team", "eng")]["held"]) == (12, 0)


async def test_an_image_is_billed_at_a_priced_size_and_one_no_member_prices_is_a_400(
    limited: ClientFactory,
) -> None:
    """``sized-painter`` prices 1024x1024 at 10 and 1792x1024 at 20, and no other size:
    512x512 was held at 20 and drawn, billed nothing (per_image, unset), as was a request
    naming no size. A size it does not price is now a 400 naming ``size``; one naming
    none is billed as held, the dearest, never nothing."""
    client = await limited(extra_routes=SIZED)
    alice, dev = client("alice"), client("dev")
    refused = await alice.post("/v1/images/generations",
                               json={"model": "sized", "prompt": "a cat", "size": "512x512"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == {
        "message": "Invalid value: '512x512'. Supported values for 'sized' are: "
                   "'1024x1024', '1792x1024'.",
        "type": "invalid_request_error", "param": "size", "code": "invalid_request"}
    # A size of the pattern's digits is as long as the body allows: shown cut short.
    long = await alice.post("/v1/images/generations", json={
        "model": "sized", "prompt": "a cat", "size": "1" * 100_000 + "x1"})
    assert long.status_code == 400, long.text[:300]
    error = long.json()["error"]
    assert error["param"] == "size" and "(100002 characters)" in error["message"], error
    assert len(error["message"]) < 300, error
    for size in ("1024x1024", None, "auto"):
        asked = {"model": "sized", "prompt": "a cat"} | ({"size": size} if size else {})
        drawn = await alice.post("/v1/images/generations", json=asked)
        assert drawn.status_code == 200, drawn.text
    budgets = {(b["scope"], b["name"]): b
               for b in (await dev.get("/admin/budgets")).json()["data"]}
    assert (budgets[("team", "eng")]["spent"], budgets[("team", "eng")]["held"]) == (
        10 + 20 + 20, 0)


async def test_the_rate_headers_count_the_hold_as_it_grew(limited: ClientFactory) -> None:
    """x-ratelimit-remaining-tokens was read with the hold on the prompt as it came
    (8 tokens and 5 out), not the one it grew to as sent (18 and 5): the client was told
    of ten tokens the gateway held from it. Now the tokens window is the grown hold's."""
    await _rate_headers_as_grown(limited, "embedded")


async def test_the_rate_headers_count_the_hold_as_it_grew_on_redis(
    private_redis: PrivateRedis, limited: ClientFactory
) -> None:
    await _rate_headers_as_grown(limited, private_redis.url)


async def _rate_headers_as_grown(limited: ClientFactory, store: str) -> None:
    carol = f"  carol: {{team: ops, sha256: {digest(KEYS['carol'])}, limits: {{tpm: 1000}}}}\n"
    client = await limited(extra_keys=carol, extra_routes=STRETCHED, store=store)
    answered = await client("carol").post("/v1/chat/completions", json={
        "model": "stretched", "max_tokens": 5,
        "messages": [{"role": "user", "content": "x x"}]})
    assert answered.status_code == 200, answered.text
    sent = answered.json()["usage"]["prompt_tokens"]
    assert sent == 6 + 2 * 6
    assert answered.headers["x-ratelimit-limit-tokens"] == "1000"
    assert answered.headers["x-ratelimit-remaining-tokens"] == str(1000 - sent - 5)
