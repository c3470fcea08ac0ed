"""A request cancelled outright (its client gone, a shutdown past its grace) while Redis
grants one of its holds leaves nothing held: neither its key's budget nor its
deployment's tpm (in-process app, on a private redis-server behind a proxy that keeps
the grant's reply back)."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest

from aigw.runtime.admission import deployment_limits
from aigw.runtime.app import create_app
from aigw.runtime.live import Gateway
from aigw.runtime.store import Reservation, lua
from aigw.runtime.tokens import TokenCounter

from ..redis_server import PrivateRedis
from ..store.test_redis_outage import Link
from .conftest import KEYS, limits_config

CHAT = "/v1/chat/completions"
RESERVE_SHA = hashlib.sha1(lua.RESERVE.encode()).hexdigest().encode()


@pytest.mark.parametrize("held", ["budget", "tpm"])
async def test_a_request_cancelled_while_redis_grants_its_hold_holds_nothing(
    tmp_path: Path, counter: TokenCounter, private_redis: PrivateRedis, held: str
) -> None:
    """Redis granted the hold (the key's and team's budget, first; the deployment's tpm,
    second) and the request was cancelled before the grant came back: nobody had it to
    give back, and it held the team's budget, or the deployment's tpm, for the hold's TTL
    (10 minutes), refusing requests that fit (this failed before)."""
    proxy = Link(private_redis.port)
    await proxy.start()
    (tmp_path / "gateway.yaml").write_text(limits_config().replace(
        "store: embedded", f"store: {proxy.url}").replace(
        "limits: {rpm: 1}", "limits: {tpm: 1000}").replace(
        "  free: {deployment: quota-2}", "  free: {deployment: quota-2}\n"
        "  one: {deployment: quota-1}"))
    gateway = Gateway(tmp_path, counter)
    try:
        app = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=app, base_url="http://aigw.test") as http:
            alice = {"Authorization": f"Bearer {KEYS['alice']}"}
            dev = {"Authorization": f"Bearer {KEYS['dev']}"}
            warm = await http.post(CHAT, headers=dev, json=_ask("one", 5))  # scripts loaded
            assert warm.status_code == 200, warm.text
            # The request holds the team's budget (100) first, then quota-1's tpm.
            proxy.keep_reply(RESERVE_SHA, nth=1 if held == "budget" else 2)
            call = asyncio.create_task(http.post(CHAT, headers=alice, json=_ask(
                "paid" if held == "budget" else "one", 50)))
            await asyncio.wait_for(proxy.reply_kept.wait(), 5)  # granted in Redis
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            proxy.let_replies_go()
            budgets = (await http.get("/admin/budgets", headers=dev)).json()["data"]
            team = next(b for b in budgets if b["name"] == "eng")
            assert (team["spent"], team["held"]) == (0, 0)
        limits = deployment_limits(gateway.live.graph.deployments["quota-1"])
        assert limits is not None
        store = await gateway.store.get()
        whole = await store.reserve("probe", (limits,), tokens=1000 - 20, cost=0.0)
        assert isinstance(whole, Reservation), whole  # the warm call used ~20 of it
    finally:
        await gateway.aclose()
        await proxy.aclose()


def _ask(route: str, max_tokens: int) -> dict[str, object]:
    return {"model": route, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "one two three"}]}
