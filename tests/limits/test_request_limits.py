"""Limits, budgets and the ledger on the request path (embedded store, app in-process)."""

from __future__ import annotations

import asyncio
import datetime
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
import redis
from starlette import types as asgi

from aigw.compiler import compile_gateway
from aigw.runtime.admission import deployment_limits, worst_case
from aigw.runtime.app import create_app
from aigw.runtime.live import Gateway
from aigw.runtime.store import Denied, LedgerRecord, Limits, Reservation, Scope, Store
from aigw.runtime.tokens import TokenCounter
from aigw.runtime.usage_api import default_since

from ..conftest import REPO
from ..redis_server import PrivateRedis
from .conftest import KEYS, ClientFactory, digest, limits_config

CHAT = "/v1/chat/completions"


def _ask(route: str, text: str = "one two three", **extra: object) -> dict[str, object]:
    return {"model": route, "messages": [{"role": "user", "content": text}], **extra}


async def test_rpm_over_the_limit_is_a_429_with_openai_headers(limited: ClientFactory) -> None:
    alice = (await limited())("alice")
    for _ in range(3):
        ok = await alice.post(CHAT, json=_ask("free"))
        assert ok.status_code == 200
        assert "x-ratelimit-remaining-requests" in ok.headers
    refused = await alice.post(CHAT, json=_ask("free"))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert "x-should-retry" not in refused.headers  # waiting helps: the SDKs may retry
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


async def test_team_budget_reserves_worst_case_and_charges_real_cost(
    limited: ClientFactory,
) -> None:
    client = await limited()
    alice, dev = client("alice"), client("dev")
    # 1 currency unit per token; the prompt is 9 tokens, the answer 3 (max_tokens 5 held).
    answered = await alice.post(CHAT, json=_ask("paid", max_tokens=5, user="u1"))
    assert answered.status_code == 200
    budgets = {(b["scope"], b["name"]): b for b in (await dev.get("/admin/budgets")).json()["data"]}
    team = budgets[("team", "eng")]
    assert team["spent"] == 12 and team["held"] == 0 and team["remaining"] == 88


async def test_each_of_n_choices_is_held_at_the_output_limit(limited: ClientFactory) -> None:
    """n choices write up to n times the output: the hold counted one, so requests
    asking n=20 spent the team's budget (and a deployment's tpm) many times over."""
    client = await limited()
    alice, dev = client("alice"), client("dev")
    # The prompt is 9 tokens; 20 choices of up to 5 tokens hold 109, over the budget of 100.
    refused = await alice.post(CHAT, json=_ask("paid", max_tokens=5, n=20))
    assert refused.status_code == 429, refused.text
    answered = await alice.post(CHAT, json=_ask("paid", max_tokens=5, n=2))
    assert answered.status_code == 200, answered.text
    assert len(answered.json()["choices"]) == 2
    budgets = {(b["scope"], b["name"]): b for b in (await dev.get("/admin/budgets")).json()["data"]}
    assert budgets[("team", "eng")]["spent"] == 9 + 2 * 3


async def test_per_user_budgets_are_separate_and_refuse_with_insufficient_quota(
    limited: ClientFactory,
) -> None:
    client = await limited()
    alice = client("alice")
    # Each request holds 9 in + 50 out = 59 > the user's 40: refused before any call.
    refused = await alice.post(CHAT, json=_ask("paid", user="u1"))
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "insufficient_quota"
    # No retry can fit it: the SDKs, which retry a 429 twice, are told not to.
    assert refused.headers["x-should-retry"] == "false" and "retry-after" not in refused.headers
    for user in ("u1", "u1", "u2"):  # 9 + 3 = 12 per request, within 40 each
        ok = await alice.post(CHAT, json=_ask("paid", user=user, max_tokens=5))
        assert ok.status_code == 200, ok.text
    summary = (await client("dev").get("/v1/costs/summary?group_by=key")).json()["data"]
    assert summary == [{"day": None, "team": None, "key": "alice", "user": None, "route": None,
                        "deployment": None, "requests": 4, "errors": 1, "tokens_in": 27,
                        "tokens_out": 9, "tokens_cached": 0, "tokens_audio_in": 0,
                        "tokens_audio_out": 0, "cost": 36.0,
                        "estimated_cost": 0.0}]
    # An end user's budget is listed when asked for by name (it was not listed at all).
    budgets = (await client("dev").get("/admin/budgets?user=u1")).json()["data"]
    [mine] = [b for b in budgets if b["scope"] == "user"]
    assert (mine["name"], mine["amount"], mine["spent"], mine["held"]) == ("eng/u1", 40, 24, 0)
    assert not [b for b in (await client("dev").get("/admin/budgets")).json()["data"]
                if b["scope"] == "user"]


async def test_a_keys_own_per_user_budget_is_its_users_own(limited: ClientFactory) -> None:
    """Key carol's per_user (1000 a day) overrides team eng's (40): its users' spend was
    counted under the team's name all the same, so what user u1 spent through carol had
    alice (the team's 40) refuse u1, and /admin/budgets?user=u1 showed one budget."""
    client = await limited(extra_keys=(
        f"  carol: {{team: eng, sha256: {digest(KEYS['carol'])}, "
        "per_user: {budget: {amount: 1000, period: day}}}\n"))
    long = _ask("paid", "word " * 25, max_tokens=5, user="u1")
    for _ in range(2):  # 34 tokens in and 3 out at 1 a token: 74 in all, past the team's 40
        spent = await client("carol").post(CHAT, json=long)
        assert spent.status_code == 200, spent.text
    ok = await client("alice").post(CHAT, json=_ask("paid", max_tokens=5, user="u1"))
    assert ok.status_code == 200, ok.text  # u1's 40 under the team is untouched
    budgets = (await client("dev").get("/admin/budgets?user=u1")).json()["data"]
    users = sorted((b["name"], b["amount"], b["spent"]) for b in budgets if b["scope"] == "user")
    assert users == [("eng/u1", 40, 12), ("key:carol/u1", 1000, 74)]


async def test_user_may_come_from_the_configured_header(limited: ClientFactory) -> None:
    client = await limited()
    alice = client("alice")
    ok = await alice.post(CHAT, json=_ask("paid", max_tokens=5), headers={"x-aigw-user": "h1"})
    assert ok.status_code == 200
    rows = (await client("dev").get("/admin/spend?group_by=user")).json()["data"]
    assert [row["user"] for row in rows] == ["h1"]


async def test_a_key_lists_and_finds_only_the_models_it_may_call(
    limited: ClientFactory,
) -> None:
    client = await limited()
    bob, alice = client("bob"), client("alice")
    listed = (await bob.get("/v1/models")).json()["data"]
    assert [model["id"] for model in listed] == ["free"]
    assert (await bob.get("/v1/models/free")).json()["id"] == "free"
    hidden = await bob.get("/v1/models/paid")
    assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"
    everything = (await alice.get("/v1/models")).json()["data"]
    assert [model["id"] for model in everything] == [
        "free", "listener", "moderator", "paid", "painter", "quotas", "ranker", "speaker",
        "vectors"]
    assert (await alice.get("/v1/models/paid")).status_code == 200


async def test_a_route_outside_the_keys_allow_list_is_as_unknown_as_a_missing_one(
    limited: ClientFactory,
) -> None:
    """A 403 "may not call 'paid'" (against a 404 for a name that does not exist) told a
    key limited to some routes which other routes there are; /v1/models does not."""
    bob = (await limited())("bob")
    assert (await bob.post(CHAT, json=_ask("free"))).status_code == 200
    refused = await bob.post(CHAT, json=_ask("paid"))
    missing = await bob.post(CHAT, json=_ask("nowhere"))
    assert (refused.status_code, missing.status_code) == (404, 404)
    assert refused.json()["error"]["message"] == missing.json()["error"]["message"].replace(
        "nowhere", "paid")
    assert refused.json()["error"]["code"] == missing.json()["error"]["code"]


async def test_every_request_writes_one_ledger_record(limited: ClientFactory) -> None:
    client = await limited()
    alice, dev = client("alice"), client("dev")
    await alice.post(CHAT, json=_ask("free"))
    await alice.post(CHAT, json=_ask("nope"))  # 404: recorded as an error
    rows = (await dev.get("/admin/spend?group_by=key,route")).json()["data"]
    by_route = {row["route"]: row for row in rows}
    assert by_route["free"]["requests"] == 1 and by_route["free"]["errors"] == 0
    assert by_route[None]["requests"] == 1 and by_route[None]["errors"] == 1


async def test_a_key_sees_only_its_own_costs(limited: ClientFactory) -> None:
    client = await limited()
    await client("alice").post(CHAT, json=_ask("free"))
    await client("bob").post(CHAT, json=_ask("free"))
    mine = (await client("bob").get("/v1/costs/summary?group_by=key")).json()["data"]
    assert [row["key"] for row in mine] == ["bob"]
    everyone = (await client("dev").get("/v1/costs/summary?group_by=key")).json()["data"]
    assert sorted(row["key"] for row in everyone) == ["alice", "bob"]


async def test_deployment_quota_skips_the_member_without_calling_it(
    limited: ClientFactory,
) -> None:
    dev = (await limited())("dev")
    first = await dev.post(CHAT, json=_ask("quotas"))
    second = await dev.post(CHAT, json=_ask("quotas"))
    assert first.headers["x-aigw-deployment"] == "quota-1"
    assert second.headers["x-aigw-deployment"] == "quota-2"  # quota-1 is at its 1 rpm


async def test_a_deployments_own_quota_refuses_with_openai_headers(
    tmp_path: Path, counter: TokenCounter
) -> None:
    """Its 429 had no x-ratelimit-* and no retry-after-ms, and rounded Retry-After to
    the nearest second: a client that waited what it was told could come back early."""
    (tmp_path / "gateway.yaml").write_text(limits_config().replace(
        "  free: {deployment: quota-2}",
        "  free: {deployment: quota-2}\n  one: {deployment: quota-1}"))
    gateway = Gateway(tmp_path, counter)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gateway)),
                                     base_url="http://aigw.test",
                                     headers={"Authorization": f"Bearer {KEYS['dev']}"}) as dev:
            assert (await dev.post(CHAT, json=_ask("one"))).status_code == 200
            refused = await dev.post(CHAT, json=_ask("one"),
                                     headers={"x-aigw-deadline-ms": "300"})  # no waiting
    finally:
        await gateway.aclose()
    assert refused.status_code == 429, refused.text
    assert refused.headers["x-ratelimit-limit-requests"] == "1"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    waited_ms = int(refused.headers["retry-after-ms"])
    assert int(refused.headers["retry-after"]) * 1000 >= waited_ms > 0


async def test_a_stream_is_settled_once_when_it_ends(limited: ClientFactory) -> None:
    client = await limited()
    alice, dev = client("alice"), client("dev")
    async with alice.stream("POST", CHAT, json=_ask("paid", "a b c d", stream=True,
                                                   max_tokens=5, user="s1")) as response:
        raw = (await response.aread()).decode()
    assert raw.rstrip().endswith("data: [DONE]")
    rows = (await dev.get("/admin/spend?group_by=user")).json()["data"]
    row = next(r for r in rows if r["user"] == "s1")
    assert (row["requests"], row["errors"]) == (1, 0)
    budgets = (await dev.get("/admin/budgets")).json()["data"]
    team = next(b for b in budgets if b["name"] == "eng")
    assert team["held"] == 0  # nothing left reserved
    assert team["spent"] == row["cost"] == row["tokens_in"] + row["tokens_out"] > 0
    assert not any(b["name"] == "eng/s1" for b in budgets)  # users are not in the graph


async def test_bad_query_parameters_are_400(limited: ClientFactory) -> None:
    dev = (await limited())("dev")
    response = await dev.get("/v1/costs/summary?group_by=planet")
    assert response.status_code == 400 and response.json()["error"]["param"] == "group_by"
    response = await dev.get("/v1/costs/summary?since=yesterday")
    assert response.status_code == 400
    for query in ("since=nan", "until=NaN", "since=inf", "until=-Infinity", "since=1e999"):
        response = await dev.get(f"/v1/costs/summary?{query}")
        assert response.status_code == 400, query
        assert response.json()["error"]["param"] == query.split("=")[0]


async def test_a_time_that_is_no_number_is_a_400_not_a_redis_outage(
    tmp_path: Path, counter: TokenCounter, private_redis: PrivateRedis
) -> None:
    """float() reads 'nan': sent to Redis as a score, the error reply marked the store
    down, so any key's /v1/costs/summary?since=nan had every limited request refused
    (fail_closed, 503) until the next probe."""
    (tmp_path / "gateway.yaml").write_text(
        limits_config().replace("store: embedded", f"store: {private_redis.url}"))
    gateway = Gateway(tmp_path, counter)
    try:
        app = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=app, base_url="http://aigw.test",
                                     headers={"Authorization": f"Bearer {KEYS['bob']}"}) as http:
            refused = await http.get("/v1/costs/summary?since=nan")
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["param"] == "since"
            answered = await http.post(CHAT, json=_ask("free"))
            assert answered.status_code == 200, answered.text
    finally:
        await gateway.aclose()


async def test_a_summary_with_no_since_covers_the_last_31_days(
    tmp_path: Path, counter: TokenCounter
) -> None:
    """With no time range, a summary read every record ever written (on Redis each one,
    summed in Python, on the replica's event loop)."""
    (tmp_path / "gateway.yaml").write_text(limits_config())
    gateway = Gateway(tmp_path, counter)
    try:
        store = await gateway.store.get()
        now = time.time()
        for name, days in (("recent", 30), ("old", 32)):
            await store.record(LedgerRecord(
                request_id=name, at=now - days * 86_400, key="alice", team="eng", user=None,
                route="paid", deployment="paid", tokens_in=1, tokens_out=1, cost=2.0,
                latency_ms=1.0, status=200, fingerprint="f" * 64))
        app = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=app, base_url="http://aigw.test") as http:
            alice = {"Authorization": f"Bearer {KEYS['alice']}"}
            body = (await http.get("/v1/costs/summary?group_by=key", headers=alice)).json()
            assert [row["requests"] for row in body["data"]] == [1]
            # From the midnight 31 whole days before today (the test may cross one).
            assert body["since"] in {default_since(None, now), default_since(None, time.time())}
            assert body["since"] % 86_400 == 0 and body["since"] <= now - 31 * 86_400
            assert body["until"] is None
            until = now - 86_400 / 2
            body = (await http.get(f"/v1/costs/summary?until={until}", headers=alice)).json()
            assert body["since"] == (until // 86_400 - 31) * 86_400
            every = (await http.get("/v1/costs/summary?group_by=key&since=0",
                                    headers=alice)).json()
            assert [row["requests"] for row in every["data"]] == [2]
            dev = {"Authorization": f"Bearer {KEYS['dev']}"}
            spend = (await http.get("/admin/spend?key=alice", headers=dev)).json()["data"]
            assert [row["requests"] for row in spend] == [1]
    finally:
        await gateway.aclose()


async def test_a_summary_with_no_since_reads_the_days_totals_not_records(
    tmp_path: Path, counter: TokenCounter, private_redis: PrivateRedis
) -> None:
    """It began 31 days before now at that time of day, so its first day was read record
    by record (on Redis a hash each: a busy gateway's day of them) and shown in part; it
    begins at a midnight, and every day of it comes from the days' totals."""
    (tmp_path / "gateway.yaml").write_text(
        limits_config().replace("store: embedded", f"store: {private_redis.url}"))
    gateway = Gateway(tmp_path, counter)
    watcher = redis.Redis.from_url(private_redis.url)
    try:
        store = await gateway.store.get()
        first_day = default_since(None, time.time())
        for n in range(5):  # early in the window's first day (before now less 31 days)
            await store.record(LedgerRecord(
                request_id=f"early{n}", at=first_day + 60 * n, key="alice", team="eng",
                user=None, route="paid", deployment="paid", tokens_in=1, tokens_out=1,
                cost=2.0, latency_ms=1.0, status=200, fingerprint="f" * 64))
        app = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=app, base_url="http://aigw.test",
                                     headers={"Authorization": f"Bearer {KEYS['alice']}"}) as http:
            await http.get("/v1/costs/summary")  # the one-off passes over older records
            watcher.config_resetstat()
            body = (await http.get("/v1/costs/summary")).json()
        stats = watcher.info("commandstats")
        assert "cmdstat_zrangebyscore" not in stats, stats  # no record read one by one
        assert [(row["day"], row["requests"]) for row in body["data"]] == [
            (datetime.datetime.fromtimestamp(first_day, datetime.UTC).date().isoformat(), 5)]
    finally:
        watcher.close()
        await gateway.aclose()


async def test_a_call_longer_than_the_reservation_ttl_keeps_its_hold(
    tmp_path: Path, counter: TokenCounter
) -> None:
    """A hold lasted reservation_ttl_s from the reservation whatever the call did: a call
    that took longer let it lapse while it ran, and the budget it was to be charged to
    could be spent by others meanwhile (more than the docs say it can be overspent)."""
    (tmp_path / "gateway.yaml").write_text(
        limits_config(settings="  reservation_ttl_s: 0.4").replace(
            "local: {type: echo}", "local: {type: echo, latency: {first_token_ms: 1500}}"))
    gateway = Gateway(tmp_path, counter)
    try:
        app = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=app, base_url="http://aigw.test") as http:
            call = asyncio.create_task(http.post(
                CHAT, json=_ask("paid", max_tokens=5),
                headers={"Authorization": f"Bearer {KEYS['alice']}"}))
            await asyncio.sleep(1.0)  # the call runs on, 2.5 TTLs after its reservation
            dev = {"Authorization": f"Bearer {KEYS['dev']}"}

            async def team() -> tuple[float, float]:
                budgets = (await http.get("/admin/budgets", headers=dev)).json()["data"]
                eng = next(b for b in budgets if b["name"] == "eng")
                return eng["spent"], eng["held"]

            assert await team() == (0, 14)  # 9 prompt tokens and 5 out, at 1 a token
            answered = await call
            assert answered.status_code == 200, answered.text
            assert await team() == (12, 0)
    finally:
        await gateway.aclose()


async def test_metrics_show_each_declared_budgets_use(limited: ClientFactory) -> None:
    """aigw_budget_used_ratio, what the BudgetExhausted alert reads: teams and keys the
    graph gives a budget, never end users (their names are client input)."""
    client = await limited()
    alice = client("alice")
    answered = await alice.post(CHAT, json=_ask("paid", max_tokens=5, user="u1"))
    assert answered.status_code == 200  # 9 + 3 tokens at 1 a token: 12 of eng's 100
    text = (await client("dev").get("/metrics")).text
    used = [line for line in text.splitlines() if line.startswith("aigw_budget_used_ratio{")]
    assert used == ['aigw_budget_used_ratio{name="eng",scope="team"} 0.12']


async def test_a_budget_a_reload_removed_leaves_the_metrics(
    limited: ClientFactory, tmp_path: Path
) -> None:
    client = await limited()
    answered = await client("alice").post(CHAT, json=_ask("paid", max_tokens=5))
    assert answered.status_code == 200
    dev = client("dev")
    assert 'aigw_budget_used_ratio{name="eng"' in (await dev.get("/metrics")).text
    config = tmp_path / "gw0" / "gateway.yaml"
    config.write_text(config.read_text().replace("    budget: {amount: 100, period: day}\n", ""))
    reloaded = await dev.post("/admin/reload")
    assert reloaded.status_code == 200 and reloaded.json()["ok"], reloaded.text
    assert "aigw_budget_used_ratio{" not in (await dev.get("/metrics")).text


async def test_embeddings_are_limited_budgeted_and_recorded(limited: ClientFactory) -> None:
    """An embeddings request counts against the key's rpm and its team's budget, and is
    in the spend ledger, priced, like a chat completion."""
    client = await limited()
    alice = client("alice")  # rpm 3; team eng: a budget of 100 a day
    ask = {"model": "vectors", "input": "one two three"}
    for _ in range(3):
        answered = await alice.post("/v1/embeddings", json=ask)
        assert answered.status_code == 200, answered.text
    refused = await alice.post("/v1/embeddings", json=ask)
    assert refused.status_code == 429, refused.text
    spend = (await client("dev").get("/admin/spend?group_by=route")).json()["data"]
    vectors = next(row for row in spend if row["route"] == "vectors")
    assert (vectors["requests"], vectors["errors"]) == (4, 1)
    assert vectors["tokens_in"] == 9 and vectors["cost"] == 9  # 3 tokens at 1 a token
    budgets = (await client("dev").get("/admin/budgets")).json()["data"]
    assert next(b for b in budgets if b["name"] == "eng")["spent"] == 9


async def test_rerank_is_limited_budgeted_and_recorded(limited: ClientFactory) -> None:
    """A rerank request counts against the key's rpm and its team's budget, and is in the
    spend ledger, priced for its tokens and its search units, as an embeddings one is."""
    client = await limited()
    alice = client("alice")  # rpm 3; team eng: a budget of 100 a day
    ask = {"model": "ranker", "query": "one two", "documents": ["one", "two three"]}
    for _ in range(3):
        answered = await alice.post("/v1/rerank", json=ask)
        assert answered.status_code == 200, answered.text
        assert answered.headers["x-ratelimit-remaining-requests"]
    refused = await alice.post("/v1/rerank", json=ask)
    assert refused.status_code == 429, refused.text
    spend = (await client("dev").get("/admin/spend?group_by=route")).json()["data"]
    ranker = next(row for row in spend if row["route"] == "ranker")
    assert (ranker["requests"], ranker["errors"]) == (4, 1)
    # The query with each document, 7 tokens at 1 a token, and a search unit at 10.
    assert ranker["tokens_in"] == 3 * 7 and ranker["cost"] == 3 * (7 + 10)
    budgets = (await client("dev").get("/admin/budgets")).json()["data"]
    assert next(b for b in budgets if b["name"] == "eng")["spent"] == 51
    bob = client("bob")  # routes: [free]
    assert (await bob.post("/v1/rerank", json=ask)).status_code == 404


async def test_images_hold_n_images_against_the_budget_and_are_recorded(
    limited: ClientFactory,
) -> None:
    """An image request holds its n images' price before the call: past the team's
    budget it is refused and nothing is drawn; served, it is billed per image."""
    client = await limited()
    alice = client("alice")  # team eng: a budget of 100 a day; an image costs 30
    over = await alice.post("/v1/images/generations",
                            json={"model": "painter", "prompt": "a cat", "n": 4})
    assert over.status_code == 429, over.text  # 120 held: past the budget
    assert over.json()["error"]["code"] == "insufficient_quota"
    drawn = await alice.post("/v1/images/generations",
                             json={"model": "painter", "prompt": "a cat", "n": 3})
    assert drawn.status_code == 200, drawn.text
    assert len(drawn.json()["data"]) == 3
    again = await alice.post("/v1/images/generations", json={"model": "painter", "prompt": "x"})
    assert again.status_code == 429, again.text  # 90 spent, 30 more held: past 100
    spend = (await client("dev").get("/admin/spend?group_by=route")).json()["data"]
    painter = next(row for row in spend if row["route"] == "painter")
    assert (painter["requests"], painter["errors"], painter["cost"]) == (3, 2, 90)
    budgets = (await client("dev").get("/admin/budgets")).json()["data"]
    assert next(b for b in budgets if b["name"] == "eng")["spent"] == 90


async def test_moderation_is_free_but_rate_limited_and_recorded(limited: ClientFactory) -> None:
    client = await limited()
    alice = client("alice")  # rpm 3
    for _ in range(3):
        answered = await alice.post("/v1/moderations",
                                    json={"model": "moderator", "input": "hello there"})
        assert answered.status_code == 200, answered.text
    refused = await alice.post("/v1/moderations", json={"model": "moderator", "input": "hi"})
    assert refused.status_code == 429, refused.text
    spend = (await client("dev").get("/admin/spend?group_by=route")).json()["data"]
    moderator = next(row for row in spend if row["route"] == "moderator")
    assert (moderator["requests"], moderator["errors"], moderator["cost"]) == (4, 1, 0)
    assert moderator["tokens_in"] == 3 * 2
    bob = client("bob")  # routes: [free]
    assert (await bob.post("/v1/moderations",
                           json={"model": "moderator", "input": "hi"})).status_code == 404


async def test_audio_is_limited_budgeted_and_recorded(limited: ClientFactory) -> None:
    """Speech and transcriptions count against the key's rpm and its team's budget (held
    for a speech's characters before the call), and are in the spend ledger, priced per
    character and per minute of audio."""
    client = await limited(
        extra_keys=f"  carol: {{team: eng, sha256: {digest(KEYS['carol'])}}}")
    speak = {"model": "speaker", "input": "hello", "voice": "alloy"}  # 5 characters at 1
    too_dear = await client("carol").post("/v1/audio/speech", json={**speak, "input": "x" * 101})
    assert too_dear.status_code == 429, too_dear.text  # 101 held of a budget of 100
    assert too_dear.json()["error"]["code"] == "insufficient_quota"
    alice = client("alice")  # rpm 3; team eng: a budget of 100 a day
    for _ in range(2):
        spoken = await alice.post("/v1/audio/speech", json=speak)
        assert spoken.status_code == 200, spoken.text
        assert spoken.headers["x-ratelimit-remaining-requests"]
    # Not a WAV file: taken at 16,000 bytes a second, so 2 s at 1 a second.
    heard = await alice.post("/v1/audio/transcriptions", data={"model": "listener"},
                             files={"file": ("talk.mp3", b"\xff" * 32_000, "audio/mpeg")})
    assert heard.status_code == 200, heard.text
    refused = await alice.post("/v1/audio/speech", json=speak)
    assert refused.status_code == 429, refused.text
    spend = (await client("dev").get("/admin/spend?group_by=route")).json()["data"]
    speaker = next(row for row in spend if row["route"] == "speaker")
    listener = next(row for row in spend if row["route"] == "listener")
    assert (speaker["requests"], speaker["errors"], speaker["cost"]) == (4, 2, 10)
    assert (listener["requests"], listener["cost"]) == (1, pytest.approx(2))
    budgets = (await client("dev").get("/admin/budgets")).json()["data"]
    assert next(b for b in budgets if b["name"] == "eng")["spent"] == pytest.approx(12)
    bob = client("bob")  # routes: [free]
    assert (await bob.post("/v1/audio/speech", json=speak)).status_code == 404


async def test_embeddings_respect_the_keys_routes(limited: ClientFactory) -> None:
    client = await limited()
    bob = client("bob")  # routes: [free]
    refused = await bob.post("/v1/embeddings", json={"model": "vectors", "input": "x"})
    assert refused.status_code == 404, refused.text
    spend = (await client("dev").get("/admin/spend?group_by=key,route")).json()["data"]
    assert [(row["key"], row["route"], row["requests"], row["errors"]) for row in spend] == [
        ("bob", "vectors", 1, 1)]  # the refusal is in the ledger, as a chat's is


class _SlowSettle:
    """The gateway's store, with every settle and release waiting first (a slow Redis
    round trip), and a deployment's hold too (``reserving``), once ``slow_deployments``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.settling = asyncio.Event()
        self.releasing = asyncio.Event()
        self.reserving = asyncio.Event()
        self.slow_deployments = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def settle(self, reservation: Reservation, *, tokens: int, cost: float) -> None:
        self.settling.set()
        await asyncio.sleep(0.1)
        await self.store.settle(reservation, tokens=tokens, cost=cost)

    async def release(self, reservation: Reservation) -> None:
        self.releasing.set()
        await asyncio.sleep(0.1)
        await self.store.release(reservation)

    async def reserve(self, request_id: str, limits: Sequence[Limits], *, tokens: int,
                      cost: float, ttl: float | None = None) -> Reservation | Denied:
        if self.slow_deployments and limits[0].scope is Scope.DEPLOYMENT:
            self.reserving.set()
            await asyncio.sleep(5)
        return await self.store.reserve(request_id, limits, tokens=tokens, cost=cost, ttl=ttl)


@pytest.mark.parametrize("stream", [False, True], ids=["answer", "stream"])
async def test_a_request_cancelled_while_it_settles_is_still_billed_and_recorded(
    tmp_path: Path, counter: TokenCounter, stream: bool
) -> None:
    """A served request whose task is cancelled outright while its spend is being
    settled (a shutdown past its grace) is still charged, its hold given back, and its
    ledger record written. An answer's settlement ran unshielded in the request's task
    (this failed before); a stream's runs in Starlette's task group under an anyio
    shield, which holds when the cancellation comes through the group."""
    (tmp_path / "gateway.yaml").write_text(limits_config())
    gateway = Gateway(tmp_path, counter)
    try:
        slow = _SlowSettle(await gateway.store.get())
        gateway.store._store = slow  # type: ignore[assignment]  # the store it opened, slowed
        app = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=app, base_url="http://aigw.test") as http:
            headers = {"Authorization": f"Bearer {KEYS['alice']}"}
            call = asyncio.create_task(http.post(CHAT, headers=headers, json=_ask(
                "paid", max_tokens=5, user="c1", stream=stream)))
            await asyncio.wait_for(slow.settling.wait(), 5)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            dev = {"Authorization": f"Bearer {KEYS['dev']}"}
            for _ in range(100):  # the rest of the settlement runs on its own
                rows = (await http.get("/admin/spend?group_by=user", headers=dev)).json()["data"]
                if rows:
                    break
                await asyncio.sleep(0.02)
            assert [(row["user"], row["requests"], row["cost"]) for row in rows] == [
                ("c1", 1, 12.0)]  # 9 tokens in and 3 out at 1 a token
            budgets = (await http.get("/admin/budgets", headers=dev)).json()["data"]
            team = next(b for b in budgets if b["name"] == "eng")
            assert (team["spent"], team["held"]) == (12, 0)
    finally:
        await gateway.aclose()


async def test_a_request_cancelled_again_while_its_hold_is_given_back_ends_released(
    tmp_path: Path, counter: TokenCounter
) -> None:
    """A request cancelled before it was served (a client gone, waiting for its
    deployment's hold), and cancelled again while its hold is given back (a shutdown past
    its grace): when its task has ended, its hold is given back and its ledger record
    written, before the server goes on to close the store. An ``asyncio.shield`` left the
    release to a task of its own that no one waited for, and the store closed under it:
    the hold lapsed unbilled, the record was lost (this failed before)."""
    (tmp_path / "gateway.yaml").write_text(limits_config())
    gateway = Gateway(tmp_path, counter)
    try:
        slow = _SlowSettle(await gateway.store.get())
        gateway.store._store = slow  # type: ignore[assignment]  # the store it opened, slowed
        slow.slow_deployments = True
        app = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=app, base_url="http://aigw.test") as http:
            headers = {"Authorization": f"Bearer {KEYS['alice']}"}
            call = asyncio.create_task(http.post(CHAT, headers=headers, json=_ask(
                "quotas", max_tokens=5, user="c1")))
            await asyncio.wait_for(slow.reserving.wait(), 5)
            call.cancel()
            await asyncio.wait_for(slow.releasing.wait(), 5)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            dev = {"Authorization": f"Bearer {KEYS['dev']}"}
            rows = (await http.get("/admin/spend?group_by=user", headers=dev)).json()["data"]
            assert [(row["user"], row["requests"], row["errors"]) for row in rows] == [
                ("c1", 1, 1)]
            budgets = (await http.get("/admin/budgets", headers=dev)).json()["data"]
            team = next(b for b in budgets if b["name"] == "eng")
            assert (team["spent"], team["held"]) == (0, 0)
    finally:
        await gateway.aclose()


async def test_a_stream_cancelled_while_its_deployment_hold_settles_frees_the_tpm(
    tmp_path: Path, counter: TokenCounter
) -> None:
    """A stream whose task is cancelled outright (a shutdown past its grace) while its
    deployment's tpm hold is settled at what it used: the hold is settled all the same.
    Under an anyio shield the settle stopped half-way, and the deployment's tpm stayed
    held at the worst case until the hold expired, refusing calls (this failed before).
    Served as ASGI 2.4 is (uvicorn's): no Starlette task group, whose anyio scope turned
    the cancellation into one the shield held against, around the stream."""
    (tmp_path / "gateway.yaml").write_text(limits_config().replace(
        "limits: {rpm: 1}", "limits: {tpm: 1000}").replace(
        "  free: {deployment: quota-2}",
        "  free: {deployment: quota-2}\n  one: {deployment: quota-1}"))
    gateway = Gateway(tmp_path, counter)
    try:
        slow = _SlowSettle(await gateway.store.get())
        gateway.store._store = slow  # type: ignore[assignment]  # the store it opened, slowed
        inner = create_app(gateway)

        async def asgi_2_4(scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
            await inner({**scope, "asgi": {"version": "3.0", "spec_version": "2.4"}},
                        receive, send)

        app = httpx.ASGITransport(app=asgi_2_4)
        async with httpx.AsyncClient(transport=app, base_url="http://aigw.test") as http:
            call = asyncio.create_task(http.post(
                CHAT, headers={"Authorization": f"Bearer {KEYS['dev']}"},
                json=_ask("one", max_tokens=50, stream=True)))
            await asyncio.wait_for(slow.settling.wait(), 5)  # the deployment's, first
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        limits = deployment_limits(gateway.live.graph.deployments["quota-1"])
        assert limits is not None
        # 9 tokens in and 3 out used; 59 held (the prompt and max_tokens) unless settled
        probe = await slow.store.reserve("probe", (limits,), tokens=1000 - 20, cost=0.0)
        assert isinstance(probe, Reservation), probe
    finally:
        await gateway.aclose()


async def test_a_chat_request_costs_three_redis_scripts(
    tmp_path: Path, counter: TokenCounter, private_redis: PrivateRedis
) -> None:
    """On Redis, with the shipped policies (one of which reads the remaining budget), a
    served request is one script each to reserve, settle and record: the budget the
    policy reads comes with the reservation, not from a round trip of its own."""
    (tmp_path / "gateway.yaml").write_text(
        limits_config().replace("store: embedded", f"store: {private_redis.url}"))
    shutil.copytree(REPO / "policies", tmp_path / "policies")
    gateway = Gateway(tmp_path, counter)
    watcher = redis.Redis.from_url(private_redis.url)
    try:
        assert "budget_remaining" in gateway.live.graph.authorization.reads.context
        app = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=app, base_url="http://aigw.test",
                                     headers={"Authorization": f"Bearer {KEYS['alice']}"}) as http:
            warm = await http.post(CHAT, json=_ask("paid", max_tokens=5))  # loads the scripts
            assert warm.status_code == 200, warm.text
            watcher.config_resetstat()
            answered = await http.post(CHAT, json=_ask("paid", max_tokens=5))
            assert answered.status_code == 200, answered.text
        stats = watcher.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 3, stats
        assert "cmdstat_eval" not in stats, stats
    finally:
        watcher.close()
        await gateway.aclose()


def test_a_deployments_quota_is_one_limits_object_for_every_attempt(tmp_path: Path) -> None:
    """The stores cache what a set of limits checks by the Limits objects it holds, as
    for keys and teams: a new object every attempt would miss that cache every time."""
    (tmp_path / "gateway.yaml").write_text(limits_config())
    graph = compile_gateway(tmp_path, environ={}).graph
    assert graph is not None
    quota = graph.deployments["quota-1"]
    first = deployment_limits(quota)
    assert first is not None and (first.rpm, first.tpm) == (1, None)
    assert deployment_limits(quota) is first
    assert deployment_limits(graph.deployments["quota-2"]) is None  # no quota of its own


def test_a_hold_prices_the_prompt_at_its_dearest_cache_price(tmp_path: Path) -> None:
    """A prompt the provider writes to its cache costs cache_write a token: held at the
    input price, a request whose prompt was all written overran its hold."""
    (tmp_path / "gateway.yaml").write_text(limits_config().replace(
        "price: {input: 1000000, output: 1000000}}",
        "price: {input: 1000000, output: 1000000, cache_read: 0, cache_write: 2000000}}", 1))
    graph = compile_gateway(tmp_path, environ={}).graph
    assert graph is not None
    # 9 prompt tokens at 2 a token (all written), 5 out at 1; the hold's tokens as before
    assert worst_case(graph.routes["paid"], 9, 5) == (14, 9 * 2 + 5)
    assert worst_case(graph.routes["free"], 9, 5) == (14, 0)


def test_a_hold_prices_audio_at_the_audio_prices(tmp_path: Path) -> None:
    """A spoken answer's output tokens may all be audio, and the prompt's audio parts are
    audio: held at text prices, a spoken chat overran its hold 8-16 times."""
    (tmp_path / "gateway.yaml").write_text(limits_config().replace(
        "price: {input: 1000000, output: 1000000}}",
        "price: {input: 1000000, output: 1000000, audio_input: 3000000,\n"
        "                                audio_output: 8000000}}", 1))
    graph = compile_gateway(tmp_path, environ={}).graph
    assert graph is not None
    paid = graph.routes["paid"]
    assert worst_case(paid, 9, 5) == (14, 9 + 5)
    # 4 of the 9 prompt tokens audio at 3; the 5 out at 8, when audio is asked for
    assert worst_case(paid, 9, 5, audio_input_tokens=4) == (14, 5 + 4 * 3 + 5)
    assert worst_case(paid, 9, 5, audio_output=True) == (14, 9 + 5 * 8)


def test_a_hold_counts_the_output_the_call_is_capped_at(tmp_path: Path) -> None:
    """With no max_output_tokens (so the context window's) and no max_tokens, a call can
    write what the window has left after the prompt, and is capped there: the hold
    counted the whole window as output besides the prompt, so a large prompt held up to
    twice the tokens it could use, and was refused by a tpm it fitted."""
    (tmp_path / "gateway.yaml").write_text(limits_config())
    graph = compile_gateway(tmp_path, environ={}).graph
    assert graph is not None
    free = graph.routes["free"]  # quota-2: a window of 100,000, no max_output_tokens
    assert worst_case(free, 60_000, None) == (100_000, 0)
    assert worst_case(free, 60_000, None, choices=2) == (140_000, 0)
    assert worst_case(free, 60_000, 500) == (60_500, 0)
    paid = graph.routes["paid"]  # max_output_tokens 50, within the window: as before
    assert worst_case(paid, 60_000, None) == (60_050, 60_050)
