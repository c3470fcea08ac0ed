"""The Conversations API end to end, on both stores: ``client.conversations.*`` and its
items, ``conversation`` on ``client.responses.create`` (whole and streamed), keys that
find only their own, the bounds of a conversation, and ``previous_response_id`` beside
it refused."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from .responses_gateway import (
    ALICE,
    BOB,
    STORES,
    Upstreams,
    app_keys,
    assert_pages_refused,
    responses_gateway,
    sdk,
    store_url,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def upstreams(kept_upstreams: Upstreams) -> Upstreams:
    return kept_upstreams


def _said(items: Any) -> list[tuple[str, str]]:
    """Each message item's role and first text."""
    return [(item.role, item.content[0].text) for item in items]


def test_made_with_items_added_to_listed_and_deleted(alice: openai.OpenAI) -> None:
    made = alice.conversations.create(
        items=[{"type": "message", "role": "user", "content": "one"},
               {"role": "assistant", "content": "two"}],
        metadata={"topic": "counting"})
    assert made.id.startswith("conv_") and made.object == "conversation"
    assert made.metadata == {"topic": "counting"}
    assert alice.conversations.retrieve(made.id).model_dump() == made.model_dump()

    added = alice.conversations.items.create(made.id, items=[
        {"role": "user", "content": [{"type": "input_text", "text": "three"}]},
        {"type": "message", "role": "user", "content": "four", "id": "msg_mine"}])
    assert [item.id for item in added.data][1] == "msg_mine"
    assert added.first_id == added.data[0].id and added.has_more is False

    newest = alice.conversations.items.list(made.id)  # newest first, by default
    assert _said(newest.data) == [("user", "four"), ("user", "three"),
                                  ("assistant", "two"), ("user", "one")]
    assert all(item.status == "completed" for item in newest.data)
    oldest = alice.conversations.items.list(made.id, order="asc", limit=1)
    assert _said(oldest.data) == [("user", "one")] and oldest.has_more
    following = alice.conversations.items.list(made.id, order="asc", limit=2,
                                               after=oldest.data[0].id)
    assert _said(following.data) == [("assistant", "two"), ("user", "three")]
    assert following.has_more
    assert [item.id for item in alice.conversations.items.list(made.id, order="asc")] == [
        item.id for item in reversed(newest.data)]  # the SDK's pages, followed

    item = alice.conversations.items.retrieve("msg_mine", conversation_id=made.id)
    assert _said([item]) == [("user", "four")]
    after_delete = alice.conversations.items.delete(newest.data[1].id, conversation_id=made.id)
    assert after_delete.id == made.id
    assert _said(alice.conversations.items.list(made.id).data) == [
        ("user", "four"), ("assistant", "two"), ("user", "one")]
    with pytest.raises(openai.NotFoundError):
        alice.conversations.items.retrieve(newest.data[1].id, conversation_id=made.id)
    with pytest.raises(openai.BadRequestError) as twice:
        alice.conversations.items.create(made.id, items=[
            {"role": "user", "content": "again", "id": "msg_mine"}])
    assert twice.value.body["param"] == "items"  # type: ignore[index]

    updated = alice.conversations.update(made.id, metadata={"topic": "numbers"})
    assert updated.metadata == {"topic": "numbers"} and updated.created_at == made.created_at
    assert alice.conversations.retrieve(made.id).metadata == {"topic": "numbers"}
    assert alice.conversations.update(made.id, metadata=None).metadata == {}
    deleted = alice.conversations.delete(made.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (made.id, "conversation.deleted",
                                                             True)
    with pytest.raises(openai.NotFoundError) as gone:
        alice.conversations.retrieve(made.id)
    assert gone.value.body == {"message": f"Conversation with id '{made.id}' not found.",
                               "type": "invalid_request_error", "param": "conversation_id",
                               "code": "not_found"}
    with pytest.raises(openai.NotFoundError):
        alice.conversations.items.list(made.id)


def test_items_are_checked_as_input_is(alice: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as hosted:
        alice.conversations.create(items=[{"type": "web_search_call", "id": "ws_1"}])
    assert hosted.value.body["param"] == "items.0"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as many:
        alice.conversations.create(items=[{"role": "user", "content": "hi"}] * 21)
    assert many.value.body["param"] == "items"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as too_long:
        alice.conversations.create(metadata={"k": "v" * 513})
    assert too_long.value.body["param"] == "metadata"  # type: ignore[index]


def test_a_bad_page_query_is_a_400_that_names_it(alice: openai.OpenAI) -> None:
    conversation = alice.conversations.create(items=[{"role": "user", "content": "one"}])
    assert_pages_refused(partial(alice.conversations.items.list, conversation.id))


def test_an_empty_item_id_is_given_one(alice: openai.OpenAI) -> None:
    # "" is no id: each such item is given one, listed and read back under it, and a
    # second one is not refused as naming the first.
    blank = {"role": "user", "content": "blank", "id": ""}
    conversation = alice.conversations.create(items=[blank])
    added = alice.conversations.items.create(conversation.id, items=[blank])
    alice.responses.create(model="gpt", input=[blank], conversation=conversation.id)
    alice.responses.create(model="gpt", input=[blank], conversation=conversation.id)
    listed = alice.conversations.items.list(conversation.id, order="asc").data
    assert len(listed) == 6 and all(item.id for item in listed)
    assert len({item.id for item in listed}) == 6
    assert added.first_id == added.data[0].id
    assert alice.conversations.items.retrieve(
        listed[1].id, conversation_id=conversation.id).id == listed[1].id


def test_two_turns_through_responses(alice: openai.OpenAI, upstreams: Upstreams) -> None:
    conversation = alice.conversations.create(
        items=[{"role": "user", "content": "my name is Ada"}])
    first = alice.responses.create(model="gpt", instructions="Be brief.",
                                   conversation=conversation.id, input="hello")
    assert first.conversation is not None and first.conversation.id == conversation.id
    assert upstreams.gpt.script.requests[-1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "my name is Ada"},
        {"role": "user", "content": "hello"}]
    events = list(alice.responses.create(model="claude", stream=True, input="who am I?",
                                         conversation={"id": conversation.id}))
    assert events[-1].type == "response.completed"
    # The second turn saw the first, on another route (the conversation is the key's);
    # Anthropic's turns alternate: the two user messages are one, of two blocks.
    assert [(message["role"], [block["text"] for block in message["content"]])
            for message in upstreams.claude.script.requests[-1]["messages"]] == [
        ("user", ["my name is Ada", "hello"]), ("assistant", ["fake-openai: hello"]),
        ("user", ["who am I?"])]
    listed = alice.conversations.items.list(conversation.id, order="asc")
    assert _said(listed.data) == [
        ("user", "my name is Ada"), ("user", "hello"), ("assistant", "fake-openai: hello"),
        ("user", "who am I?"), ("assistant", "fake-anthropic: who am I?")]
    assert listed.data[2].id == first.output[0].id  # an output item keeps its id
    # The response kept (store) lists the conversation before it as its input.
    assert len(alice.responses.input_items.list(events[-1].response.id).data) == 4


def _in_flight(upstreams: Upstreams, turn: Callable[[], object]) -> Future[object]:
    """``turn`` started on a thread and held by the upstream (a second) once it is there."""
    asked = len(upstreams.gpt.script.requests)
    upstreams.gpt.script.actions.append(Action(delay_s=1.0))
    started = ThreadPoolExecutor(max_workers=1).submit(turn)
    deadline = time.monotonic() + 10
    while len(upstreams.gpt.script.requests) == asked:
        assert time.monotonic() < deadline and not started.done(), started
        time.sleep(0.01)
    return started


def test_an_item_id_a_turn_in_flight_gave_is_refused_before_the_call(
        alice: openai.OpenAI, upstreams: Upstreams) -> None:
    """Two turns at once giving one item id: the second was answered and billed, then left
    out of the conversation (a log line said so). It is a 409 before its call now; the
    first is added; once it is, the id is the 400 of an id the conversation holds."""
    conversation = alice.conversations.create()
    mine = [{"role": "user", "content": "hello", "id": "msg_mine"}]
    first = _in_flight(upstreams, lambda: alice.responses.create(
        model="gpt", input=mine, conversation=conversation.id))
    asked = len(upstreams.gpt.script.requests)
    for stream in (False, True):
        with pytest.raises(openai.ConflictError) as busy:
            alice.responses.create(model="gpt", input=mine, conversation=conversation.id,
                                   stream=stream)
        assert busy.value.body == {  # type: ignore[comparison-overlap]
            "message": "Invalid value for 'input': an id of its items ('msg_mine') names an "
                       f"item of another turn of conversation '{conversation.id}' in "
                       "progress. Retry once it has ended, or give the item another id.",
            "type": "invalid_request_error", "param": "input", "code": "conflict"}
    with pytest.raises(openai.BadRequestError):  # nor added beside it
        alice.conversations.items.create(conversation.id, items=mine)
    assert len(upstreams.gpt.script.requests) == asked  # no call went out
    first.result(timeout=10)
    assert _said(alice.conversations.items.list(conversation.id, order="asc").data) == [
        ("user", "hello"), ("assistant", "fake-openai: hello")]
    with pytest.raises(openai.BadRequestError) as held:
        alice.responses.create(model="gpt", input=mine, conversation=conversation.id)
    assert held.value.body["param"] == "input.0.id"  # type: ignore[index]


@pytest.mark.parametrize("kind", STORES)
def test_a_turn_longer_than_its_lease_keeps_its_item_ids(
        tmp_path: Path, request: pytest.FixtureRequest, kind: str) -> None:
    """The ids a turn claimed were held ``reservation_ttl_s`` and no longer: a turn longer
    than that (a long stream) saw an app's items take them, and was answered, billed and
    then not added. Its lease is renewed while it runs."""
    settings = (f'store: "{store_url(request, kind)}", responses_ttl_s: 3600, '
                "reservation_ttl_s: 0.4")
    with responses_gateway(tmp_path / "gw", settings, app_keys()) as served, \
            sdk(served, ALICE) as alice:
        conversation = alice.conversations.create()
        mine = [{"role": "user", "content": "hello", "id": "msg_long"}]
        first = _in_flight(served, lambda: alice.responses.create(  # held 1 s upstream
            model="gpt", input=mine, conversation=conversation.id))
        time.sleep(0.6)  # past its first lease
        with pytest.raises(openai.BadRequestError):  # still the turn's
            alice.conversations.items.create(conversation.id, items=mine)
        first.result(timeout=10)
        assert _said(alice.conversations.items.list(conversation.id, order="asc").data) == [
            ("user", "hello"), ("assistant", "fake-openai: hello")]


def test_a_turn_that_adds_nothing_frees_its_item_ids(
        alice: openai.OpenAI, upstreams: Upstreams) -> None:
    # Failed upstream, whole or streamed: the id is free again, and the next turn takes it
    conversation = alice.conversations.create()
    mine = [{"role": "user", "content": "hello", "id": "msg_free"}]
    upstreams.gpt.script.actions.append(Action(status=400))
    with pytest.raises(openai.BadRequestError):
        alice.responses.create(model="gpt", input=mine, conversation=conversation.id)
    upstreams.gpt.script.actions.append(Action(cut_stream_after=2))
    events = list(alice.responses.create(model="gpt", input=mine, stream=True,
                                         conversation=conversation.id))
    assert events[-1].type == "response.failed"
    alice.responses.create(model="gpt", input=mine, conversation=conversation.id)
    assert alice.conversations.items.list(conversation.id, order="asc").data[0].id == \
        "msg_free"


def test_a_failed_response_adds_nothing(alice: openai.OpenAI, upstreams: Upstreams) -> None:
    conversation = alice.conversations.create()
    upstreams.gpt.script.actions.append(Action(cut_stream_after=2))
    events = list(alice.responses.create(model="gpt", stream=True, input="cut me",
                                         conversation=conversation.id))
    assert events[-1].type == "response.failed"
    assert alice.conversations.items.list(conversation.id).data == []
    alice.responses.create(model="gpt", input="once more", conversation=conversation.id,
                           store=False)  # not kept, still added
    assert _said(alice.conversations.items.list(conversation.id, order="asc").data) == [
        ("user", "once more"), ("assistant", "fake-openai: once more")]


def test_another_key_finds_nothing(alice: openai.OpenAI, upstreams: Upstreams) -> None:
    mine = alice.conversations.create(items=[{"role": "user", "content": "mine"}])
    [item] = alice.conversations.items.list(mine.id).data
    asked = len(upstreams.gpt.script.requests)
    with sdk(upstreams, BOB) as bob:
        for attempt in (
                lambda: bob.conversations.retrieve(mine.id),
                lambda: bob.conversations.update(mine.id, metadata={"a": "b"}),
                lambda: bob.conversations.delete(mine.id),
                lambda: bob.conversations.items.list(mine.id),
                lambda: bob.conversations.items.create(mine.id, items=[
                    {"role": "user", "content": "theirs"}]),
                lambda: bob.conversations.items.retrieve(item.id, conversation_id=mine.id),
                lambda: bob.conversations.items.delete(item.id, conversation_id=mine.id)):
            with pytest.raises(openai.NotFoundError):
                attempt()
        with pytest.raises(openai.NotFoundError) as as_conversation:
            bob.responses.create(model="gpt", input="hi", conversation=mine.id)
        assert as_conversation.value.body["param"] == "conversation"  # type: ignore[index]
    assert len(upstreams.gpt.script.requests) == asked  # no call went out
    with sdk(upstreams, DEV_KEY) as admin:  # an admin key reads any
        assert admin.conversations.retrieve(mine.id).id == mine.id
    assert _said(alice.conversations.items.list(mine.id).data) == [("user", "mine")]


def test_an_id_not_of_a_conversation_finds_none(alice: openai.OpenAI) -> None:
    # In Redis "<id>:ids" and "<id>:items" are the conversation's other keys: reading
    # them as one was a 503 that quoted Redis's WRONGTYPE error, or a 500.
    made = alice.conversations.create(
        items=[{"role": "user", "content": "one", "id": "key"},
               {"role": "user", "content": "two", "id": "created_at"}])
    for suffix in (":ids", ":items"):
        with pytest.raises(openai.NotFoundError):
            alice.conversations.retrieve(made.id + suffix)
        with pytest.raises(openai.NotFoundError):
            alice.conversations.items.list(made.id + suffix)
        with pytest.raises(openai.NotFoundError) as turn:
            alice.responses.create(model="gpt", input="hi", conversation=made.id + suffix)
        assert turn.value.body["param"] == "conversation"  # type: ignore[index]
    assert len(alice.conversations.items.list(made.id).data) == 2


def test_an_id_of_the_apps_is_shown_cut_short(alice: openai.OpenAI) -> None:
    # Ids from the path or the body were repeated whole in the error: kilobytes of them.
    made = alice.conversations.create()
    long = "i" * 100_000
    twice = [{"role": "user", "content": "x", "id": long}] * 2
    for refused in (lambda: alice.conversations.retrieve("c" * 8000),
                    lambda: alice.conversations.items.retrieve("i" * 8000,
                                                               conversation_id=made.id),
                    lambda: alice.conversations.items.create(made.id, items=twice),
                    lambda: alice.responses.create(model="gpt", input=twice,
                                                   conversation=made.id)):
        with pytest.raises(openai.APIStatusError) as error:
            refused()
        assert error.value.status_code in (400, 404)
        assert len(error.value.message) < 300, error.value.message[:100]


def test_a_model_the_key_cannot_call_is_refused_before_the_store_is_read(
        alice: openai.OpenAI) -> None:
    # Neither the conversation nor the previous response is looked up (either may be
    # megabytes): the model is refused first, as it needs none of them.
    for earlier in ({"conversation": "conv_none"}, {"previous_response_id": "resp_none"}):
        with pytest.raises(openai.NotFoundError) as refused:
            alice.responses.create(model="no-such-model", input="hi", **earlier)
        assert refused.value.body["param"] == "model"  # type: ignore[index]


def test_previous_response_id_beside_it_is_refused(alice: openai.OpenAI) -> None:
    conversation = alice.conversations.create()
    kept = alice.responses.create(model="gpt", input="hi")
    with pytest.raises(openai.BadRequestError) as both:
        alice.responses.create(model="gpt", input="more", conversation=conversation.id,
                               previous_response_id=kept.id)
    assert both.value.body["message"] == (  # type: ignore[index]
        "Mutually exclusive parameters: Ensure you are only providing one of: "
        "'previous_response_id' or 'conversation'.")


def test_a_full_conversation_takes_no_more(tmp_path: Path) -> None:
    settings = "store: embedded, conversations_max_items: 3"
    with responses_gateway(tmp_path / "gw", settings, app_keys()) as served, \
            sdk(served, ALICE) as alice:
        conversation = alice.conversations.create(
            items=[{"role": "user", "content": "one"}])
        alice.responses.create(model="gpt", input="two", conversation=conversation.id)
        asked = len(served.gpt.script.requests)
        with pytest.raises(openai.BadRequestError) as full:
            alice.responses.create(model="gpt", input="four", conversation=conversation.id)
        assert "conversations_max_items" in full.value.message
        with pytest.raises(openai.BadRequestError):
            alice.conversations.items.create(conversation.id, items=[
                {"role": "user", "content": "four"}])
        assert len(served.gpt.script.requests) == asked  # refused before any call
        with pytest.raises(openai.BadRequestError):
            alice.conversations.create(items=[{"role": "user", "content": "x"}] * 4)
