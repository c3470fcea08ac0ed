"""What a key may do is checked on every endpoint, and every secret a key may have
signs in (found by a review helper)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from aigw.compiler.graph import ApiKey, Quota, Team
from aigw.runtime.admission import subject_limits
from aigw.runtime.live import Gateway
from aigw.runtime.store.values import Scope
from aigw.runtime.tokens import TokenCounter

from .conftest import ClientFactory, digest, limits_config

UNICODE_SECRET = "sk-clé-ünïcode-0005"


async def test_count_tokens_checks_the_keys_routes(limited: ClientFactory) -> None:
    """bob may call only 'free': counting the tokens of a 'paid' request is refused as
    the request itself would be."""
    client: Callable[[str], httpx.AsyncClient] = await limited()
    ask = {"model": "paid", "messages": [{"role": "user", "content": "hi"}]}
    refused = await client("bob").post("/v1/messages/count_tokens", json=ask)
    assert refused.status_code == 404, refused.text
    allowed = await client("bob").post("/v1/messages/count_tokens", json={**ask, "model": "free"})
    assert allowed.status_code == 200, allowed.text


async def test_a_secret_with_non_ascii_characters_signs_in(limited: ClientFactory) -> None:
    """The digest is of the secret's UTF-8; a header value arrives decoded as latin-1,
    so such a key was refused whatever the client sent."""
    client = await limited(
        extra_keys=f"  intl: {{team: eng, sha256: {digest(UNICODE_SECRET)}}}\n")
    http = client("dev")
    ask = {"model": "paid", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    signed = await http.post("/v1/chat/completions", json=ask, headers={
        "Authorization": b"Bearer " + UNICODE_SECRET.encode()})
    assert signed.status_code == 200, signed.text
    wrong = await http.post("/v1/chat/completions", json=ask, headers={
        "Authorization": b"Bearer " + UNICODE_SECRET.encode()[:-1]})
    assert wrong.status_code == 401


ROTATED_OLD = "sk-rotated-old-0006"


async def test_a_previous_secret_signs_in_while_the_new_ones_env_is_unset(
        limited: ClientFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rotation whose new ${ENV} is not set yet where aigw serves (a deploy that lags
    the config): the old secret, listed under previous: and not past its until, still
    signs in as the key. It was refused with the key, a 401 to every client mid-rotation.
    A stream too, whose budget checks look the key up by name."""
    monkeypatch.delenv("ROTATED_NEW", raising=False)
    monkeypatch.setenv("ROTATED_OLD", ROTATED_OLD)
    client = await limited(
        extra_keys='  rotated: {team: eng, secret: "${ROTATED_NEW}", '
                   'previous: [{secret: "${ROTATED_OLD}", until: 2999-01-01}]}\n',
        settings="  stop_streams_over_budget: true")
    old = {"Authorization": f"Bearer {ROTATED_OLD}"}
    ask = {"model": "free", "messages": [{"role": "user", "content": "hi"}]}
    answered = await client("dev").post("/v1/chat/completions", json=ask, headers=old)
    assert answered.status_code == 200, answered.text
    words = " ".join(f"w{number}" for number in range(40))  # past a budget check or two
    streamed = await client("dev").post("/v1/chat/completions", headers=old, json={
        **ask, "stream": True, "messages": [{"role": "user", "content": words}]})
    assert streamed.status_code == 200 and "revoked" not in streamed.text
    assert streamed.text.rstrip().endswith("data: [DONE]")
    status = (await client("dev").get("/admin/status")).json()
    assert status["graph"]["keys"]["rotated"]["previous"] == [
        {"until": "2999-01-01T00:00:00Z", "refused": False}]


async def test_a_keys_scopes_are_its_graphs_and_a_reload_gives_new_ones(
        tmp_path: Path, counter: TokenCounter) -> None:
    """Each graph that goes live works out its keys' scopes once: the same tuple each
    request. A reload builds the next graph's, with a changed quota; a key of the graph
    it replaced (a request begun before it) still gets its own, never the other's."""
    (tmp_path / "gateway.yaml").write_text(limits_config())
    gateway = Gateway(tmp_path, counter)
    try:
        before = gateway.live
        alice = before.graph.keys_by_name["alice"]
        first = before.scopes.limits(alice, None)
        assert before.scopes.limits(alice, None) is first
        assert [(item.scope, item.name, item.rpm) for item in first] == [
            (Scope.KEY, "alice", 3), (Scope.TEAM, "eng", None)]
        (tmp_path / "gateway.yaml").write_text(
            limits_config().replace("limits: {rpm: 3}", "limits: {rpm: 7}"))
        assert (await gateway.reload("test")).ok
        after = gateway.live
        reloaded = after.graph.keys_by_name["alice"]
        assert [item.rpm for item in after.scopes.limits(reloaded, None)] == [7, None]
        assert [item.rpm for item in after.scopes.limits(alice, None)] == [3, None]
        assert [item.rpm for item in before.scopes.limits(reloaded, None)] == [7, None]
        assert [item.name for item in after.scopes.limits(reloaded, "u1")] == [
            "alice", "eng", "eng/u1"]
    finally:
        await gateway.aclose()


def test_a_keys_scopes_for_an_end_user_are_under_its_owner() -> None:
    team = Team("eng", Quota(rpm=10), Quota())
    key = ApiKey("k", team, False, Quota(tpm=100), Quota(), None, None, "digest")
    per_user = replace(key, per_user=Quota(rpm=1))
    assert [item.name for item in subject_limits(per_user, "u1")] == ["k", "eng", "eng/u1"]
