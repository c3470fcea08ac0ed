"""A real ``aigw serve`` behind the official openai SDK's Responses API (``client.responses``),
its routes served by the OpenAI fake, the Anthropic fake and the echo provider."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pydantic
import pytest

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from .responses_gateway import Upstreams, logged_and_billed, responses_gateway, sdk

pytestmark = pytest.mark.e2e

LOOKUP: Any = {
    "type": "function", "name": "lookup", "description": "Look a thing up", "strict": None,
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    """Both fakes and one server for the module: starting ``aigw serve`` takes seconds."""
    with responses_gateway(tmp_path_factory.mktemp("responses") / "gw") as served:
        yield served


@pytest.mark.parametrize(("route", "said", "sent_system"), [
    ("gpt", "fake-openai", {"role": "system", "content": "Be brief."}),
    ("claude", "fake-anthropic", [{"type": "text", "text": "Be brief."}]),
])
def test_plain_text_over_either_adapter(
    client: openai.OpenAI, upstreams: Upstreams, route: str, said: str, sent_system: object,
) -> None:
    raw = client.responses.with_raw_response.create(
        model=route, instructions="Be brief.", input="hello there", max_output_tokens=100,
        metadata={"ticket": "42"})
    assert raw.headers["x-aigw-route"] == route
    response = raw.parse()
    assert response.id.startswith("resp_")
    assert response.object == "response" and response.status == "completed"
    assert response.output_text == f"{said}: hello there"
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"
    assert [part.type for part in message.content] == ["output_text"]
    assert response.store is True and response.metadata == {"ticket": "42"}
    assert response.instructions == "Be brief." and response.max_output_tokens == 100
    assert response.usage is not None
    assert response.usage.output_tokens == 3  # the fakes' count: a word a token
    assert response.usage.total_tokens == response.usage.input_tokens + 3
    if route == "gpt":
        assert response.model == "gpt-4o-mini"
        sent = upstreams.gpt.script.requests[-1]
        assert sent["messages"] == [sent_system, {"role": "user", "content": "hello there"}]
        assert sent["max_completion_tokens"] == 100
    else:
        assert response.model == "claude-sonnet-4-5"
        sent = upstreams.claude.script.requests[-1]
        assert sent["system"] == sent_system and sent["max_tokens"] == 100


def test_stream_events_in_order(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="gpt", input="streamed word by word",
                                          stream=True))
    kinds = [event.type for event in events]
    assert kinds == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.content_part.added", *["response.output_text.delta"] * 5,
        "response.output_text.done", "response.content_part.done",
        "response.output_item.done", "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == "fake-openai: streamed word by word"
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.output_text == text
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == 5
    assert completed.response.id == events[0].response.id  # type: ignore[union-attr]


@pytest.mark.parametrize("route", ["gpt", "claude"])
def test_stream_helper_gives_the_final_response(client: openai.OpenAI, route: str) -> None:
    with client.responses.stream(model=route, input="one two three") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text
    assert final.output_text.endswith(": one two three")
    assert final.status == "completed" and final.usage is not None


def test_function_call_round_trip(client: openai.OpenAI, upstreams: Upstreams) -> None:
    question: Any = {"role": "user", "content": "find the moon"}
    with client.responses.stream(model="gpt", input=[question], tools=[LOOKUP]) as stream:
        fragments = [event.delta for event in stream
                     if event.type == "response.function_call_arguments.delta"]
        first = stream.get_final_response()
    assert len(fragments) > 1  # the fake sends the arguments in pieces
    [call] = first.output
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.status) == ("call_fake_1", "lookup", "completed")
    assert json.loads(call.arguments) == {"query": "find the moon"} == json.loads(
        "".join(fragments))

    answer = client.responses.create(model="gpt", tools=[LOOKUP], input=[
        question, *[item.model_dump(exclude_none=True) for item in first.output],  # type: ignore[misc]
        {"type": "function_call_output", "call_id": call.call_id, "output": "it is full"},
    ])
    assert answer.output_text == "tool said: it is full"
    sent = upstreams.gpt.script.requests[-1]
    assert sent["messages"][1:] == [
        {"role": "assistant", "tool_calls": [
            {"id": "call_fake_1", "type": "function",
             "function": {"name": "lookup", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": "call_fake_1", "content": "it is full"},
    ]
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "lookup", "description": "Look a thing up", "parameters": LOOKUP["parameters"]}}]


def test_function_call_round_trip_through_anthropic(client: openai.OpenAI) -> None:
    question: Any = {"role": "user", "content": "find the moon"}
    first = client.responses.create(model="claude", input=[question], tools=[LOOKUP],
                                    tool_choice="required")
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(call.name, json.loads(call.arguments)) for call in calls] == [
        ("lookup", {"query": "find the moon"})]
    answer = client.responses.create(model="claude", tools=[LOOKUP], input=[
        question, *[item.model_dump(exclude_none=True) for item in first.output],  # type: ignore[misc]
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "full"},
    ])
    assert answer.output_text == "tool said: full"


def test_the_response_cache_answers_the_responses_api_too(
    client: openai.OpenAI, upstreams: Upstreams,
) -> None:
    before = len(upstreams.gpt.script.requests)
    answers = []
    for _ in range(2):
        raw = client.responses.with_raw_response.create(model="gpt-cached",
                                                        input="cache me, Responses style")
        answers.append((raw.headers["x-aigw-cache"], raw.parse()))
    (first_state, first), (second_state, second) = answers
    assert (first_state, second_state) == ("miss", "hit")
    assert second.output_text == first.output_text == "fake-openai: cache me, Responses style"
    assert second.id != first.id
    with client.responses.stream(model="gpt-cached", input="cache me, Responses style") as stream:
        final = stream.get_final_response()
    assert final.output_text == first.output_text
    assert len(upstreams.gpt.script.requests) == before + 1  # replayed from the cache


class Place(pydantic.BaseModel):
    city: str


def test_json_schema_through_text_format(client: openai.OpenAI) -> None:
    """``responses.parse(text_format=...)`` sends text.format json_schema, served by a
    deployment with the json_schema capability (echo answers with the JSON it was sent)."""
    parsed = client.responses.parse(model="echo", input='{"city": "Oslo"}', text_format=Place)
    assert parsed.output_parsed == Place(city="Oslo")
    assert parsed.text is not None and parsed.text.format is not None
    assert parsed.text.format.type == "json_schema"
    with pytest.raises(openai.BadRequestError) as refused:  # no member has the capability
        client.responses.parse(model="gpt", input="x", text_format=Place)
    assert "json_schema" in refused.value.message


def test_max_output_tokens_gives_an_incomplete_response(client: openai.OpenAI) -> None:
    ask: Any = {"model": "echo", "input": "one two three four five six",
                "max_output_tokens": 2}
    response = client.responses.create(**ask)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "one two"
    [message] = response.output
    assert message.type == "message" and message.status == "incomplete"
    events = list(client.responses.create(**ask, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]


def test_failure_mid_stream_ends_with_response_failed(
    client: openai.OpenAI, upstreams: Upstreams,
) -> None:
    upstreams.gpt.script.actions.append(Action(cut_stream_after=3))  # after a word went out
    events = list(client.responses.create(model="gpt", input="one two three", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"  # type: ignore[union-attr]
    assert events[-1].response.error is not None  # type: ignore[union-attr]
    assert events[-1].response.error.code == "server_error"  # type: ignore[union-attr]
    assert "response.output_text.delta" in [event.type for event in events]


def test_ledger_and_access_log_say_responses(client: openai.OpenAI, upstreams: Upstreams) -> None:
    raw = client.responses.with_raw_response.create(model="gpt", input="count me")
    request_id = raw.headers["x-request-id"]
    streamed = client.responses.with_raw_response.create(model="gpt", input="me too",
                                                         stream=True)
    list(streamed.parse())
    streamed_id = streamed.headers["x-request-id"]
    logged_and_billed(upstreams.server, "responses", request_id, streamed_id)


def test_a_client_leaving_a_stream_is_settled_as_chat_streams_are(
    client: openai.OpenAI, upstreams: Upstreams,
) -> None:
    upstreams.gpt.script.actions.append(Action(event_delay_s=0.3))
    raw = client.responses.with_raw_response.create(
        model="gpt", input="a slow answer of many words", stream=True)
    request_id = raw.headers["x-request-id"]
    with raw.parse() as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                break  # the client leaves after its first word
    deadline = time.monotonic() + 10
    while not (line := upstreams.server.access_line(request_id)):
        assert time.monotonic() < deadline, upstreams.server.log
        time.sleep(0.1)
    assert (line["endpoint"], line["stream"], line["status"], line["error"]) == (
        "responses", True, 499, "client_disconnected")
    assert line["completion_tokens"] > 0  # billed what it streamed


@pytest.mark.parametrize(("ask", "param", "words"), [
    ({"conversation": {"id": "conv_123", "name": "x"}}, "conversation",
     "give a conversation's id"),
    ({"tools": [{"type": "web_search"}]}, "tools.0", "'web_search' tools run on OpenAI's"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]},
     "input.0.content.0.file_id", "files stored at OpenAI cannot be passed on"),
    ({"input": [{"type": "computer_call_output", "call_id": "c1", "output": {}}]}, "input.0",
     "items of type 'computer_call_output'"),
    ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [LOOKUP]},
     "tool_choice.name", "no function named 'nope'"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt", "Unknown parameter: 'prompt'"),
    ({"temperature": 3}, "temperature", "less than or equal to 2"),
    ({"input": None}, "input", "Invalid value for 'input'"),
])
def test_bad_input_is_a_400_naming_the_parameter(
    client: openai.OpenAI, ask: dict[str, Any], param: str, words: str,
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(**{"model": "gpt", "input": "hi", **ask})
    assert refused.value.param == param
    assert words in refused.value.message
    assert refused.value.code == "invalid_request"


def test_other_errors_have_chat_statuses(upstreams: Upstreams, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(model="nope", input="hi")
    assert unknown.value.body == {
        "message": "The model 'nope' does not exist or you do not have access to it.",
        "type": "invalid_request_error", "param": "model", "code": "model_not_found"}
    with pytest.raises(openai.AuthenticationError), sdk(upstreams, "sk-not-a-key") as stranger:
        stranger.responses.create(model="gpt", input="hi")
    with pytest.raises(openai.PermissionDeniedError) as forbidden:  # by Cedar
        client.responses.create(model="locked", input="hi")
    assert forbidden.value.code == "permission_denied"
    with pytest.raises(openai.NotFoundError) as stored:
        client.responses.retrieve("resp_123")
    assert stored.value.param == "response_id" and "'resp_123' not found" in stored.value.message
    # refused on the try and on its retry (last in the module: the member cools down)
    upstreams.gpt.script.actions.extend([Action(status=429, headers={"retry-after": "1"})] * 2)
    with pytest.raises(openai.RateLimitError) as limited:
        client.responses.create(model="gpt", input="hi")
    assert limited.value.response.headers["retry-after"]
    body = httpx.post(f"{upstreams.server.base_url}/v1/responses", content=b"{not json",
                      headers={"authorization": f"Bearer {DEV_KEY}"})
    assert body.status_code == 400
    assert body.json()["error"]["type"] == "invalid_request_error"
