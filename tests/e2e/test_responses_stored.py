"""Kept responses end to end, on both stores: ``previous_response_id`` chains over the
OpenAI and Anthropic fakes, ``client.responses.retrieve / delete / input_items``, keys
that find only their own, ``store: false``, expiry and a restart."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from agents import Agent, OpenAIResponsesModel, RunConfig, Runner, function_tool

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from .responses_gateway import (
    ALICE,
    BOB,
    Upstreams,
    app_keys,
    assert_pages_refused,
    responses_gateway,
    sdk,
    store_url,
)

pytestmark = pytest.mark.e2e

LOOKUP: Any = {
    "type": "function", "name": "lookup", "description": "Look a thing up",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def upstreams(kept_upstreams: Upstreams) -> Upstreams:
    return kept_upstreams


@function_tool(name_override="lookup")
def _lookup(query: str) -> str:
    """Look a thing up."""
    return f"found {query}"


def _not_found_as_previous(client: openai.OpenAI, response_id: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="gpt", previous_response_id=response_id, input="more")
    assert refused.value.body == {
        "message": f"Previous response with id '{response_id}' not found.",
        "type": "invalid_request_error", "param": "previous_response_id",
        "code": "previous_response_not_found"}


def test_two_turns_over_openai(alice: openai.OpenAI, upstreams: Upstreams) -> None:
    first = alice.responses.create(model="gpt", instructions="Be brief.",
                                   input="my name is Ada")
    assert first.store is True and first.previous_response_id is None
    second = alice.responses.create(model="gpt", previous_response_id=first.id,
                                    input="what is my name?")
    assert second.previous_response_id == first.id
    assert second.instructions is None  # not carried over, as OpenAI's are not
    third = alice.responses.create(model="gpt", previous_response_id=second.id,
                                   instructions="Be terse.", input="and again?")
    assert third.output_text == "fake-openai: and again?"
    # The whole chain, the first turn's instructions left behind, this turn's first.
    assert upstreams.gpt.script.requests[-1]["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "fake-openai: my name is Ada"},
        {"role": "user", "content": "what is my name?"},
        {"role": "assistant", "content": "fake-openai: what is my name?"},
        {"role": "user", "content": "and again?"},
    ]


def test_two_turns_over_anthropic(alice: openai.OpenAI, upstreams: Upstreams) -> None:
    first = alice.responses.create(model="claude", instructions="Be brief.",
                                   input="my name is Ada")
    second = alice.responses.create(model="claude", previous_response_id=first.id,
                                    input="what is my name?")
    assert second.output_text == "fake-anthropic: what is my name?"
    sent = upstreams.claude.script.requests[-1]
    assert "system" not in sent
    assert sent["messages"] == [
        {"role": role, "content": [{"type": "text", "text": text}]} for role, text in (
            ("user", "my name is Ada"), ("assistant", "fake-anthropic: my name is Ada"),
            ("user", "what is my name?"))]


def test_a_continuation_is_checked_as_the_route_it_names(
        alice: openai.OpenAI, upstreams: Upstreams) -> None:
    """A conversation kept on one route goes on on another (it is the key's own, and the
    Responses API has no routes); the route a continuation names is authorized as any
    request's: Cedar's forbid holds, whatever route the earlier turn was on."""
    first = alice.responses.create(model="gpt", input="my name is Ada")
    alice.responses.create(model="claude", previous_response_id=first.id, input="who?")
    assert "my name is Ada" in json.dumps(upstreams.claude.script.requests[-1]["messages"])
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        alice.responses.create(model="locked", previous_response_id=first.id, input="who?")
    assert forbidden.value.code == "permission_denied"


def test_a_stream_is_kept_and_continued(alice: openai.OpenAI, upstreams: Upstreams) -> None:
    completed = list(alice.responses.create(model="gpt", input="one two three", stream=True))[-1]
    assert completed.type == "response.completed"
    final = completed.response
    assert final.store is True
    assert alice.responses.retrieve(final.id).model_dump() == final.model_dump()
    answer = alice.responses.create(model="gpt", previous_response_id=final.id,
                                    input="four", stream=True)
    events = list(answer)
    assert events[-1].type == "response.completed"
    assert upstreams.gpt.script.requests[-1]["messages"] == [
        {"role": "user", "content": "one two three"},
        {"role": "assistant", "content": "fake-openai: one two three"},
        {"role": "user", "content": "four"},
    ]


def test_a_function_call_is_answered_by_its_output_alone(
    alice: openai.OpenAI, upstreams: Upstreams,
) -> None:
    first = alice.responses.create(model="gpt", input="find the moon", tools=[LOOKUP])
    [call] = first.output
    assert call.type == "function_call"
    answer = alice.responses.create(model="gpt", previous_response_id=first.id, tools=[LOOKUP],
                                    input=[{"type": "function_call_output",
                                            "call_id": call.call_id, "output": "it is full"}])
    assert answer.output_text == "tool said: it is full"
    assert upstreams.gpt.script.requests[-1]["messages"] == [
        {"role": "user", "content": "find the moon"},
        {"role": "assistant", "tool_calls": [
            {"id": call.call_id, "type": "function",
             "function": {"name": "lookup", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "it is full"},
    ]


def test_retrieve_input_items_and_delete(alice: openai.OpenAI) -> None:
    first = alice.responses.create(model="gpt", input="one")
    second = alice.responses.create(model="gpt", previous_response_id=first.id,
                                    input=[{"role": "user", "content": "two"}])
    assert alice.responses.retrieve(second.id).model_dump() == second.model_dump()

    page = alice.responses.input_items.list(second.id)  # newest first, by default
    said = [(item.type, getattr(item, "role", None),
             item.content[0].text)  # type: ignore[union-attr]
            for item in page.data]
    assert said == [("message", "user", "two"), ("message", "assistant", "fake-openai: one"),
                    ("message", "user", "one")]
    assert page.data[1].id == first.output[0].id  # an output item keeps its id
    assert len({item.id for item in page.data}) == 3 and page.has_more is False
    oldest = alice.responses.input_items.list(second.id, order="asc", limit=1)
    assert [item.id for item in oldest.data] == [page.data[2].id] and oldest.has_more
    following = alice.responses.input_items.list(second.id, order="asc", limit=5,
                                                 after=oldest.data[0].id)
    assert [item.id for item in following.data] == [page.data[1].id, page.data[0].id]

    assert alice.responses.delete(second.id) is None
    with pytest.raises(openai.NotFoundError) as gone:
        alice.responses.retrieve(second.id)
    assert gone.value.body == {"message": f"Response with id '{second.id}' not found.",
                               "type": "invalid_request_error", "param": "response_id",
                               "code": "not_found"}
    with pytest.raises(openai.NotFoundError):
        alice.responses.delete(second.id)
    _not_found_as_previous(alice, second.id)
    assert alice.responses.retrieve(first.id).id == first.id  # its own record stays


def test_a_bad_page_query_is_a_400_that_names_it(alice: openai.OpenAI) -> None:
    # A value of kilobytes was repeated whole in the message; " 5" and "1_0", which int
    # reads, were taken as 5 and 10.
    kept = alice.responses.create(model="gpt", input="one")
    assert_pages_refused(partial(alice.responses.input_items.list, kept.id))
    with pytest.raises(openai.BadRequestError) as bad:
        alice.responses.input_items.list(kept.id, extra_query={"limit": "9" * 8000})
    assert bad.value.body == {  # type: ignore[comparison-overlap]
        "message": f"Invalid value for 'limit': '{'9' * 64}'... (8000 characters) is not an "
                   "integer from 1 to 100.",
        "type": "invalid_request_error", "param": "limit", "code": "invalid_request"}


def test_a_long_response_id_is_shown_cut_short(alice: openai.OpenAI) -> None:
    # From the path or the body, it was repeated whole in the error: kilobytes of it.
    with pytest.raises(openai.NotFoundError) as unknown:
        alice.responses.retrieve("resp_" + "x" * 8000)
    assert unknown.value.body["message"] == (  # type: ignore[index]
        f"Response with id '{'resp_' + 'x' * 59}'... (8005 characters) not found.")
    with pytest.raises(openai.BadRequestError) as previous:
        alice.responses.create(model="gpt", input="hi", previous_response_id="r" * 100_000)
    assert len(previous.value.message) < 200


def test_cancel_says_only_a_background_response_can_be(alice: openai.OpenAI) -> None:
    # OpenAI cancels only background responses, which this gateway refuses to make: a
    # kept one has ended, and the SDK's cancel is told so, not sent to an unknown endpoint.
    kept = alice.responses.create(model="gpt", input="done already")
    with pytest.raises(openai.BadRequestError) as refused:
        alice.responses.cancel(kept.id)
    assert refused.value.body == {
        "message": f"Response with id '{kept.id}' cannot be cancelled: only responses created "
                   "with 'background': true can be, and this gateway runs none (it is "
                   "completed).",
        "type": "invalid_request_error", "param": "response_id", "code": "invalid_request"}
    with pytest.raises(openai.NotFoundError):
        alice.responses.cancel("resp_never_kept")
    assert alice.responses.retrieve(kept.id).status == "completed"


def test_another_key_finds_nothing(alice: openai.OpenAI, upstreams: Upstreams) -> None:
    kept = alice.responses.create(model="gpt", input="mine")
    with sdk(upstreams, BOB) as bob:
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(kept.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.input_items.list(kept.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.delete(kept.id)
        with pytest.raises(openai.NotFoundError) as cancelled:
            bob.responses.cancel(kept.id)
        assert cancelled.value.body["param"] == "response_id"  # type: ignore[index]
        _not_found_as_previous(bob, kept.id)
    with sdk(upstreams, DEV_KEY) as admin:  # an admin key reads any
        assert admin.responses.retrieve(kept.id).output_text == "fake-openai: mine"
    assert alice.responses.retrieve(kept.id).id == kept.id


def test_store_false_keeps_nothing(alice: openai.OpenAI) -> None:
    passing = alice.responses.create(model="gpt", input="forget me", store=False)
    assert passing.store is False
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(passing.id)
    _not_found_as_previous(alice, passing.id)


def test_a_restart_keeps_them(alice: openai.OpenAI, upstreams: Upstreams) -> None:
    kept = alice.responses.create(model="gpt", input="remember me")
    upstreams.restart()
    with sdk(upstreams, ALICE) as again:
        assert again.responses.retrieve(kept.id).model_dump() == kept.model_dump()
        answer = again.responses.create(model="gpt", previous_response_id=kept.id,
                                        input="who?")
    assert answer.previous_response_id == kept.id
    assert json.dumps(upstreams.gpt.script.requests[-1]["messages"]).count("remember me") == 2


@pytest.mark.parametrize("kind", ["embedded", "redis"])
def test_they_expire(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> None:
    settings = f'store: "{store_url(request, kind)}", responses_ttl_s: 2'
    with (responses_gateway(tmp_path / "gw", settings, app_keys()) as served,
          sdk(served, ALICE) as alice):
        kept = alice.responses.create(model="echo", input="short-lived")
        assert alice.responses.retrieve(kept.id).id == kept.id
        time.sleep(2.2)
        with pytest.raises(openai.NotFoundError):
            alice.responses.retrieve(kept.id)
        _not_found_as_previous(alice, kept.id)


def test_reasoning_items_sent_back_are_kept_and_not_passed_on(
        alice: openai.OpenAI, upstreams: Upstreams) -> None:
    """What an app sends after a turn of OpenAI's reasoning model (``store: false``,
    ``include: ["reasoning.encrypted_content"]``): the reasoning item is accepted, not
    sent upstream, and listed with the input of a kept response."""
    thought: Any = {"type": "reasoning", "id": "rs_openai_1", "encrypted_content": "gAAAA...",
                    "summary": [{"type": "summary_text", "text": "look it up"}]}
    history: Any = [{"role": "user", "content": "find the moon"}, thought,
                    {"type": "function_call", "call_id": "call_1", "name": "lookup",
                     "arguments": '{"query": "moon"}'},
                    {"type": "function_call_output", "call_id": "call_1", "output": "full"}]
    passing = alice.responses.create(model="gpt", input=history, tools=[LOOKUP], store=False,
                                     include=["reasoning.encrypted_content"])
    assert passing.output_text == "tool said: full"
    assert "reasoning" not in json.dumps(upstreams.gpt.script.requests[-1]["messages"])
    kept = alice.responses.create(model="gpt", input=history, tools=[LOOKUP])
    listed = alice.responses.input_items.list(kept.id, order="asc")
    assert [item.type for item in listed.data] == [
        "message", "reasoning", "function_call", "function_call_output"]
    assert listed.data[1].model_dump(exclude_none=True) == {**thought, "status": "completed"}


@dataclass
class Chains:
    """A gateway whose kept records are small (``responses_max_bytes: 4000``) and whose
    chains are at most 20 responses, and the store it keeps them in."""

    served: Upstreams
    store: str  # "embedded", or the Redis URL

    def as_an_older_aigw_kept(self, response_id: str, lines: list[bytes]) -> None:
        """Rewrite the record of ``response_id`` as aigw kept records before chains (and
        before a response made in a conversation named where in it it began): its whole
        input as its items, no ``previous``, no ``after``."""
        items = b"\n".join(lines)
        if self.store == "embedded":
            with sqlite3.connect(self.served.server.root / "aigw-responses.sqlite") as db:
                (body,) = db.execute("SELECT body FROM responses WHERE id = ?",
                                     (response_id,)).fetchone()
                db.execute("UPDATE responses SET body = ?, items = ?, previous = NULL, "
                           "conversation = NULL WHERE id = ?",
                           (_without_after(body), items, response_id))
            db.close()
            return
        with redis.Redis.from_url(self.store) as client:
            name = f"aigw:response:{response_id}"
            body = client.hget(name, "body")
            assert isinstance(body, bytes)
            client.hset(name, mapping={"items": items, "body": _without_after(body)})
            client.hdel(name, "previous", "conversation")

    def kept_items(self, response_id: str) -> bytes:
        """The items part of the record of ``response_id``, as kept."""
        if self.store == "embedded":
            with sqlite3.connect(self.served.server.root / "aigw-responses.sqlite") as db:
                (items,) = db.execute("SELECT items FROM responses WHERE id = ?",
                                      (response_id,)).fetchone()
            db.close()
            return bytes(items)
        with redis.Redis.from_url(self.store) as client:
            kept = client.hget(f"aigw:response:{response_id}", "items")
        assert isinstance(kept, bytes)
        return kept


def _without_after(body: bytes) -> bytes:
    head = json.loads(body)
    head.pop("after", None)
    return json.dumps(head).encode()


@pytest.fixture(scope="module", params=["embedded", "redis"])
def chains(request: pytest.FixtureRequest,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chains]:
    url = store_url(request, request.param)
    settings = (f'store: "{url}", responses_ttl_s: 3600, responses_max_bytes: 4000, '
                "responses_chain_max_depth: 20")
    with responses_gateway(tmp_path_factory.mktemp("chains") / "gw", settings,
                           app_keys()) as served:
        yield Chains(served, url)


def _turns(client: openai.OpenAI, count: int, previous: str | None = None) -> list[str]:
    """``count`` turns, each continuing the one before; their ids."""
    ids: list[str] = []
    for number in range(count):
        previous = client.responses.create(model="gpt", previous_response_id=previous,
                                           input=f"turn {number} " + "words " * 30).id
        ids.append(previous)
    return ids


def test_a_long_chain_keeps_each_turn_once(chains: Chains) -> None:
    """Each record holds its own input and output, not the turns before it: 20 turns of
    ~600 bytes go on under a 4000-byte record (a whole-conversation record was over it
    by the sixth turn), and the 21st is past responses_chain_max_depth."""
    with sdk(chains.served, ALICE) as alice:
        ids = _turns(alice, 20)
        sent = chains.served.gpt.script.requests[-1]["messages"]
        assert len(sent) == 39 and sent[0]["content"].startswith("turn 0 ")
        listed = alice.responses.input_items.list(ids[-1], order="asc", limit=100)
        assert len(listed.data) == 39 and not listed.has_more
        assert [item.role for item in listed.data[:3]] == [  # type: ignore[union-attr]
            "user", "assistant", "user"]
        with pytest.raises(openai.BadRequestError) as deep:
            alice.responses.create(model="gpt", previous_response_id=ids[-1], input="more")
    assert deep.value.body == {
        "message": f"The chain of response '{ids[-1]}' is too long: this gateway's "
                   "responses_chain_max_depth is 20 responses. Send the conversation (or its "
                   "recent part) as 'input'.",
        "type": "invalid_request_error", "param": "previous_response_id",
        "code": "invalid_request"}


def test_a_gone_link_is_a_previous_response_not_found(chains: Chains) -> None:
    """A continuation cannot go on without the turn gone; input_items lists those kept
    (a 404 there said the response was gone, which GET answered)."""
    with sdk(chains.served, ALICE) as alice:
        first, second, third, fourth = _turns(alice, 4)
        alice.responses.delete(second)
        why = f"An earlier response of its conversation, '{second}', is not kept " \
              "(expired or deleted)."
        with pytest.raises(openai.BadRequestError) as refused:
            alice.responses.create(model="gpt", previous_response_id=third, input="more")
        assert refused.value.body == {
            "message": f"Previous response with id '{third}' not found. {why}",
            "type": "invalid_request_error", "param": "previous_response_id",
            "code": "previous_response_not_found"}
        assert alice.responses.retrieve(third).id == third  # the response itself is kept
        [own] = alice.responses.input_items.list(third).data
        assert own.content[0].text.startswith("turn 2 ")  # type: ignore[union-attr]
        listed = alice.responses.input_items.list(fourth, order="asc").data
        assert [(item.role, item.content[0].text[:6])  # type: ignore[union-attr]
                for item in listed] == [("user", "turn 2"), ("assistant", "fake-o"),
                                        ("user", "turn 3")]
        newest = alice.responses.input_items.list(fourth, limit=2)
        assert [item.id for item in newest.data] == [listed[2].id, listed[1].id]
        assert newest.has_more
        following = alice.responses.input_items.list(fourth, after=listed[1].id)
        assert [item.id for item in following.data] == [listed[0].id]
        assert not following.has_more
        assert len(alice.responses.input_items.list(first).data) == 1


def test_a_record_an_older_aigw_kept_is_read_whole(chains: Chains) -> None:
    """Records kept before chains hold their whole conversation and no previous: read as
    they are, alone or at the start of a chain kept since."""
    with sdk(chains.served, ALICE) as alice:
        first, second = _turns(alice, 2)
        whole = alice.responses.input_items.list(second, order="asc").data
        chains.as_an_older_aigw_kept(second, [json.dumps(item.model_dump(exclude_none=True),
                                                         separators=(",", ":")).encode()
                                              for item in whole])
        alice.responses.delete(first)  # an older record does not need the one before it
        assert alice.responses.input_items.list(second, order="asc").data == whole
        [third] = _turns(alice, 1, previous=second)
        assert len(chains.served.gpt.script.requests[-1]["messages"]) == 5
        listed = alice.responses.input_items.list(third, order="asc").data
        assert listed[:3] == whole and len(listed) == 5


def test_a_response_made_in_a_conversation_keeps_its_own_items(chains: Chains) -> None:
    """Its record holds its own input and names the conversation's last item before it,
    which are read from the conversation (kept once there): a record repeating the
    conversation grew with each turn. Rebuilt, its input is what it was sent, for
    input_items and for a previous_response_id naming it, also once the conversation is
    deleted (its items are not)."""
    with sdk(chains.served, ALICE) as alice:
        conversation = alice.conversations.create(
            items=[{"role": "user", "content": "my name is Ada"}])
        ids = [alice.responses.create(model="gpt", conversation=conversation.id,
                                      input=f"turn {number} " + "words " * 30).id
               for number in range(4)]
        assert b"\n" not in chains.kept_items(ids[-1])  # its one input item alone
        held = alice.conversations.items.list(conversation.id, order="asc", limit=100).data
        listed = alice.responses.input_items.list(ids[-1], order="asc", limit=100).data
        assert [item.id for item in listed] == [item.id for item in held[:8]]
        assert len(alice.responses.input_items.list(ids[0], limit=100).data) == 2
        alice.responses.create(model="gpt", previous_response_id=ids[1], input="back")
        sent = chains.served.gpt.script.requests[-1]["messages"]
        assert [message["content"][:6] for message in sent] == [
            "my nam", "turn 0", "fake-o", "turn 1", "fake-o", "back"]
        alice.conversations.delete(conversation.id)
        assert alice.responses.input_items.list(ids[-1], order="asc", limit=100).data == listed


def test_a_response_an_older_aigw_kept_in_a_conversation_is_read_whole(
        chains: Chains) -> None:
    with sdk(chains.served, ALICE) as alice:
        conversation = alice.conversations.create(items=[{"role": "user", "content": "one"}])
        made = alice.responses.create(model="gpt", conversation=conversation.id, input="two")
        whole = alice.responses.input_items.list(made.id, order="asc").data
        chains.as_an_older_aigw_kept(made.id, [json.dumps(item.model_dump(exclude_none=True),
                                                          separators=(",", ":")).encode()
                                               for item in whole])
        alice.conversations.items.delete(whole[0].id, conversation_id=conversation.id)
        assert alice.responses.input_items.list(made.id, order="asc").data == whole
        alice.responses.create(model="gpt", previous_response_id=made.id, input="three")
        assert len(chains.served.gpt.script.requests[-1]["messages"]) == 4


def test_a_conversation_item_gone_is_a_previous_response_not_found(chains: Chains) -> None:
    with sdk(chains.served, ALICE) as alice:
        conversation = alice.conversations.create(
            items=[{"role": "user", "content": "one", "id": "msg_one"}])
        made = alice.responses.create(model="gpt", conversation=conversation.id, input="two")
        alice.conversations.items.delete("msg_one", conversation_id=conversation.id)
        why = (f"The items of its conversation '{conversation.id}' are not kept (expired, "
               "or its item 'msg_one' deleted).")
        with pytest.raises(openai.BadRequestError) as refused:
            alice.responses.create(model="gpt", previous_response_id=made.id, input="more")
        assert refused.value.body["message"] == (  # type: ignore[index]
            f"Previous response with id '{made.id}' not found. {why}")
        # Its own items are listed, as a response made in no conversation lists its own
        [own] = alice.responses.input_items.list(made.id).data
        assert own.content[0].text == "two"  # type: ignore[union-attr]


def test_a_stream_the_upstream_cut_is_kept_failed(
        alice: openai.OpenAI, upstreams: Upstreams) -> None:
    """Kept as it ended: failed, with its error and the items it completed (the
    reasoning, not the half message); it cannot be continued, the one before it can."""
    first = alice.responses.create(model="gpt", input="hello")
    # The role, the two words of reasoning and two of the answer, then the connection drops.
    upstreams.gpt.script.actions.append(Action(reasoning="thinking hard", cut_stream_after=5))
    with alice.responses.create(model="gpt", input="one two three four", stream=True,
                                previous_response_id=first.id) as stream:
        events = list(stream)
    assert events[-1].type == "response.failed"
    sent = events[-1].response  # type: ignore[union-attr]
    assert [item.type for item in sent.output] == ["reasoning", "message"]
    kept = alice.responses.retrieve(sent.id)
    assert (kept.status, kept.error and kept.error.code) == ("failed", "server_error")
    assert kept.output == sent.output[:1]  # the message was cut: not kept
    assert [item.type for item in alice.responses.input_items.list(sent.id).data] == [
        "message", "message", "message"]
    with pytest.raises(openai.BadRequestError) as refused:
        alice.responses.create(model="gpt", previous_response_id=sent.id, input="more")
    assert refused.value.param == "previous_response_id"
    assert f"Previous response with id '{sent.id}' failed (" in refused.value.message
    assert alice.responses.create(model="gpt", previous_response_id=first.id,
                                  input="again").status == "completed"


def test_a_stream_the_client_left_is_kept_cancelled(
        alice: openai.OpenAI, upstreams: Upstreams) -> None:
    """Kept cancelled, with the items completed before the client went; continued from
    those."""
    upstreams.gpt.script.actions.append(Action(reasoning="thinking hard", event_delay_s=0.3))
    with alice.responses.create(model="gpt", input="a slow answer of many words",
                                stream=True) as stream:
        for event in stream:
            if event.type == "response.created":
                response_id = event.response.id
            if event.type == "response.output_text.delta":
                break  # the client leaves after the first word of the answer
    deadline = time.monotonic() + 10
    while True:
        try:
            kept = alice.responses.retrieve(response_id)
            break
        except openai.NotFoundError:
            assert time.monotonic() < deadline, upstreams.server.log
            time.sleep(0.1)
    assert kept.status == "cancelled"
    [reasoning] = kept.output
    assert reasoning.type == "reasoning" and reasoning.status == "completed"
    later = alice.responses.create(model="gpt", previous_response_id=response_id, input="go on")
    assert later.output_text == "fake-openai: go on"
    assert upstreams.gpt.script.requests[-1]["messages"] == [
        {"role": "user", "content": "a slow answer of many words"},
        {"role": "user", "content": "go on"}]


async def test_an_agent_on_a_reasoning_model_chains_its_turns(upstreams: Upstreams) -> None:
    """The Agents SDK's run against a reasoning model (reasoning_content): the reasoning
    item goes back with the tool's output and stays in the kept chain the next run
    continues."""
    quiet = RunConfig(tracing_disabled=True)  # tracing would post the run to OpenAI
    async with openai.AsyncOpenAI(base_url=f"{upstreams.server.base_url}/v1", api_key=ALICE,
                                  max_retries=0) as client:
        agent = Agent(name="finder", instructions="Be brief.", tools=[_lookup],
                      model=OpenAIResponsesModel(model="gpt", openai_client=client))
        upstreams.gpt.script.actions.append(Action(reasoning="the moon needs a lookup"))
        first = await Runner.run(agent, "find the moon", run_config=quiet)
        assert first.new_items[0].type == "reasoning_item"
        second = await Runner.run(agent, "and the stars", run_config=quiet,
                                  previous_response_id=first.last_response_id)
        assert second.final_output == "tool said: found and the stars"
        kept = await client.responses.input_items.list(second.last_response_id or "",
                                                       order="asc")
    assert [item.type for item in kept.data] == [
        "message", "reasoning", "function_call", "function_call_output", "message",
        "message", "function_call", "function_call_output"]
