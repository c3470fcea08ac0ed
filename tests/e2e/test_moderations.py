"""A real ``aigw serve`` process serving POST /v1/moderations over OpenAI's moderation API
(the OpenAI fake) and echo's word list, asked with the official openai SDK: a result an
input, one for a list of parts, the route a request that names no model gets, free by
default yet in the ledger and the access log, priced by input tokens where configured,
a fallback between two upstreams, a route of another kind refused, each bad request's
400."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from .server import Server, sdk_gateway

pytestmark = pytest.mark.e2e


@dataclass
class Moderators:
    upstream: OpenAIFake
    backup: OpenAIFake
    client: openai.OpenAI
    server: Server

    def post(self, **body: Any) -> httpx.Response:
        return httpx.post(f"{self.server.base_url}/v1/moderations", json=body, timeout=10,
                          headers={"authorization": f"Bearer {DEV_KEY}"})


def _gateway(upstream: str, backup: str, *, default_route: bool) -> str:
    named = "  omni-moderation-latest: {deployment: omni}\n" if default_route else ""
    return (
        "providers:\n"
        f'  openai: {{type: openai, base_url: "{upstream}/v1", api_key: "${{FAKE_KEY}}"}}\n'
        f'  backup: {{type: openai_compatible, base_url: "{backup}/v1", '
        'api_key: "${FAKE_KEY}"}\n'
        "  local: {type: echo}\n"
        "deployments:\n"
        "  omni: {provider: openai, model: omni-moderation-latest, kind: moderation,\n"
        "         context_window: 32768}\n"
        "  priced: {provider: backup, model: guard-1, kind: moderation, context_window: 8,\n"
        "           price: {input: 2}}\n"
        "  echo-moderation: {provider: local, model: echo-mod, kind: moderation,\n"
        "                    context_window: 8192}\n"
        "  echo-chat: {provider: local, model: echo-1, context_window: 8192}\n"
        "groups:\n"
        "  guard: {members: [omni, priced], retry: {attempts: 0}}\n"
        "routes:\n"
        f"{named}"
        "  guard: {group: guard}\n"
        "  priced: {deployment: priced}\n"
        "  local: {deployment: echo-moderation}\n"
        "  chat: {deployment: echo-chat}\n"
    )


@pytest.fixture
def moderators(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Moderators]:
    upstream, backup = OpenAIFake(), OpenAIFake(name="fake-backup")
    monkeypatch.setenv("FAKE_KEY", upstream.api_key)
    with serving(upstream.app) as url, serving(backup.app) as backup_url, \
            sdk_gateway(tmp_path / "gw", _gateway(url, backup_url, default_route=True)) \
            as (client, server):
        yield Moderators(upstream, backup, client, server)


def test_each_text_has_a_result_and_the_call_is_free_but_recorded(
    moderators: Moderators,
) -> None:
    raw = moderators.client.moderations.with_raw_response.create(
        model="guard", input=["they attack at dawn", "a calm sea"])
    answer = raw.parse()
    assert answer.model == "omni-moderation-latest"
    assert [result.flagged for result in answer.results] == [True, False]
    assert answer.results[0].categories.violence is True
    assert answer.results[0].category_scores.violence == 0.9
    assert moderators.upstream.script.requests[-1] == {
        "model": "omni-moderation-latest", "input": ["they attack at dawn", "a calm sea"]}
    request_id = raw.headers["x-request-id"]
    row = moderators.server.ledger_row(request_id)
    assert (row["route"], row["deployment"], row["status"], row["cost"]) == (
        "guard", "omni", 200, 0)
    assert row["tokens_in"] > 0
    line = moderators.server.access_line(request_id)
    assert line is not None
    assert (line["endpoint"], line["route"], line["status"]) == ("moderations", "guard", 200)


def test_no_model_is_the_route_named_for_openais_default(moderators: Moderators) -> None:
    raw = moderators.client.moderations.with_raw_response.create(input="attack")
    assert raw.headers["x-aigw-route"] == "omni-moderation-latest"
    assert raw.parse().results[0].flagged is True


def test_parts_have_one_result_and_images_go_upstream(moderators: Moderators) -> None:
    parts: list[Any] = [{"type": "text", "text": "attack plan"},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]
    answer = moderators.client.moderations.create(model="guard", input=parts)
    assert len(answer.results) == 1 and answer.results[0].flagged
    assert moderators.upstream.script.requests[-1]["input"] == parts


def test_input_tokens_are_billed_where_priced(moderators: Moderators) -> None:
    raw = moderators.client.moderations.with_raw_response.create(model="priced",
                                                                 input="one two three")
    row = moderators.server.ledger_row(raw.headers["x-request-id"])
    assert row["cost"] == pytest.approx(row["tokens_in"] * 2 / 1_000_000) and row["cost"] > 0
    assert moderators.backup.script.requests[-1]["model"] == "guard-1"


def test_a_failing_upstream_falls_back_to_the_next_member(moderators: Moderators) -> None:
    moderators.upstream.script.actions.append(Action(status=503))
    raw = moderators.client.moderations.with_raw_response.create(model="guard", input="hi")
    assert (raw.headers["x-aigw-deployment"], raw.headers["x-aigw-attempts"]) == ("priced", "2")
    assert len(moderators.upstream.script.requests) == 1


def test_echo_flags_its_word_list_offline(moderators: Moderators) -> None:
    answer = moderators.client.moderations.create(
        model="local", input=["How do I kill a zombie process?", "Good morning"])
    assert [result.flagged for result in answer.results] == [True, False]
    assert answer.results[0].categories.violence is True
    assert answer.results[0].category_applied_input_types is not None


def test_a_route_of_another_kind_is_refused_both_ways(moderators: Moderators) -> None:
    with pytest.raises(openai.BadRequestError) as moderated:
        moderators.client.moderations.create(model="chat", input="hi")
    assert "'chat' is a chat model; it does not serve moderation" in str(moderated.value)
    with pytest.raises(openai.BadRequestError) as chatted:
        moderators.client.chat.completions.create(
            model="guard", messages=[{"role": "user", "content": "hi"}])
    assert "omni is a moderation model" in str(chatted.value)


@pytest.mark.parametrize(("body", "status", "param", "words"), [
    ({"input": []}, 400, "input", "a list of 1 to 1000"),
    ({"input": 3}, 400, "input", "must be a string"),
    ({"input": ["a", {"type": "text", "text": "b"}]}, 400, "input[1]", "not a mix"),
    ({"input": [{"type": "audio", "data": "x"}]}, 400, "input[0]", "{type: image_url"),
    ({"input": [{"type": "text", "text": 4}]}, 400, "input[0]", "{type: text, text}"),
    ({"input": None}, 400, "input", "must be a string"),
    ({"input": "x", "threshold": 0.5}, 400, "threshold", "'threshold'"),
    ({"model": "nope"}, 404, "model", "'nope' does not exist"),
    ({"model": "priced", "input": "one two three four five six seven eight nine"}, 422,
     "input", "priced takes an input of at most 8 tokens; this one has 9"),
])
def test_bad_requests_are_refused_naming_the_field(
    moderators: Moderators, body: dict[str, Any], status: int, param: str, words: str,
) -> None:
    response = moderators.post(**{"model": "guard", "input": "hello", **body})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]
    assert moderators.upstream.script.requests == moderators.backup.script.requests == []
    missing = moderators.post(model="guard")
    assert (missing.status_code, missing.json()["error"]["param"]) == (400, "input")


def test_no_model_with_several_routes_and_none_named_for_the_default_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_KEY", "sk-unused")
    sections = _gateway("http://127.0.0.1:9", "http://127.0.0.1:9", default_route=False)
    with sdk_gateway(tmp_path / "gw", sections) as (client, _server), \
            pytest.raises(openai.BadRequestError) as refused:
        client.moderations.create(input="hi")
    assert "several moderation routes: guard, local, priced" in str(refused.value)
