"""A real ``aigw serve`` behind the official anthropic SDK, its route served by the OpenAI fake."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import pydantic
import pytest

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from ..providers.conftest import DEV_KEY_LINE
from .server import Server

pytestmark = pytest.mark.e2e

LOOKUP = {
    "name": "lookup",
    "description": "Look a thing up",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def fake() -> Iterator[OpenAIFake]:
    """One fake and one server for the module: starting ``aigw serve`` takes seconds."""
    upstream = OpenAIFake()
    with pytest.MonkeyPatch.context() as env, serving(upstream.app) as base_url:
        env.setenv("FAKE_OPENAI_KEY", upstream.api_key)  # the server inherits it
        upstream.base_url = base_url  # type: ignore[attr-defined]
        yield upstream


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake: OpenAIFake) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("messages") / "gw"
    root.mkdir()
    base = fake.base_url  # type: ignore[attr-defined]
    (root / "gateway.yaml").write_text(
        "version: 1\n"
        "providers:\n"
        f'  oai: {{type: openai, base_url: "{base}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}\n'
        "  local: {type: echo}\n"
        "deployments:\n"
        "  gpt: {provider: oai, model: gpt-4o-mini, context_window: 128000,\n"
        "        capabilities: [streaming, tools, vision, json_schema]}\n"
        "  echo: {provider: local, model: echo-1, context_window: 8192,\n"
        "         capabilities: [json_schema]}\n"
        "routes:\n"
        "  gpt: {deployment: gpt}\n"
        "  echo: {deployment: echo}\n"
        "  gpt-cached: {deployment: gpt, cache: {ttl_s: 600}}\n" + DEV_KEY_LINE
    )
    started = Server(root)
    started.wait_ready()
    yield started
    started.stop()


def _client(server: Server, api_key: str = DEV_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=api_key, max_retries=0)


@pytest.fixture
def client(server: Server) -> Iterator[anthropic.Anthropic]:
    with _client(server) as sdk:
        yield sdk


def test_sdk_message_is_served_by_an_openai_upstream(
    client: anthropic.Anthropic, fake: OpenAIFake
) -> None:
    raw = client.messages.with_raw_response.create(
        model="gpt", max_tokens=100, system="Be brief.", extra_body={"top_k": 5},
        messages=[{"role": "user", "content": "hello there"}],
    )
    assert raw.headers["x-aigw-route"] == "gpt"
    message = raw.parse()
    assert message.id.startswith("msg_")
    assert message.model == "gpt-4o-mini"
    assert [(block.type, getattr(block, "text", None)) for block in message.content] == [
        ("text", "fake-openai: hello there")
    ]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == (2 + 3) + (2 + 3)  # the fake's count: words + 3
    assert message.usage.output_tokens == 3
    sent = fake.script.requests[-1]
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]
    # OpenAI's reasoning models (o1, o3, gpt-5) refuse max_tokens
    assert sent["max_completion_tokens"] == 100 and "max_tokens" not in sent
    assert "top_k" not in sent  # OpenAI refuses it; the ingress drops it


def test_sdk_stream_gives_text_and_final_usage(client: anthropic.Anthropic) -> None:
    with client.messages.stream(
        model="gpt", max_tokens=100, messages=[{"role": "user", "content": "streamed word by word"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "fake-openai: streamed word by word"
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 4 + 3  # the upstream's count, from message_delta
    assert final.usage.output_tokens == 5


def test_sdk_tool_use_round_trip(client: anthropic.Anthropic, fake: OpenAIFake) -> None:
    question = {"role": "user", "content": "find the moon"}
    fragments: list[str] = []
    starts = []
    with client.messages.stream(
        model="gpt", max_tokens=100, tools=[LOOKUP], messages=[question]
    ) as stream:
        for event in stream:
            if event.type == "content_block_start":
                starts.append(event.content_block)
            elif event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                fragments.append(event.delta.partial_json)
        first = stream.get_final_message()
    assert [block.type for block in starts] == ["tool_use"]
    assert len(fragments) > 1  # the fake sends the arguments in pieces
    assert json.loads("".join(fragments)) == {"query": "find the moon"}
    assert first.stop_reason == "tool_use"
    tool = first.content[0]
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == ("call_fake_1", "lookup", {"query": "find the moon"})

    answer = client.messages.create(
        model="gpt", max_tokens=100, tools=[LOOKUP],
        messages=[
            question,
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": tool.id, "content": "it is full tonight"}
            ]},
        ],
    )
    assert answer.stop_reason == "end_turn"
    assert [getattr(block, "text", None) for block in answer.content] == [
        "tool said: it is full tonight"
    ]
    sent = fake.script.requests[-1]
    assert sent["messages"][1:] == [
        {"role": "assistant", "tool_calls": [
            {"id": "call_fake_1", "type": "function",
             "function": {"name": "lookup", "arguments": '{"query": "find the moon"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_fake_1", "content": "it is full tonight"},
    ]


def test_sdk_raises_its_own_exception_classes(
    server: Server, client: anthropic.Anthropic
) -> None:
    ask = {"max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(anthropic.NotFoundError) as not_found:
        client.messages.create(model="claude-nope", **ask)  # type: ignore[arg-type]
    assert not_found.value.body == {"type": "error", "error": {
        "type": "not_found_error",
        "message": "The model 'claude-nope' does not exist or you do not have access to it.",
    }}
    with pytest.raises(anthropic.AuthenticationError), _client(server, "sk-not-a-key") as bad_key:
        bad_key.messages.create(model="gpt", **ask)  # type: ignore[arg-type]
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model="gpt", extra_body={"temperature": 3}, **ask  # type: ignore[arg-type]
        )
    assert "temperature" in bad.value.message


def test_failure_mid_stream_reaches_the_sdk_as_an_error_event(
    client: anthropic.Anthropic, fake: OpenAIFake
) -> None:
    fake.script.actions.append(Action(cut_stream_after=3))  # after a first word has gone out
    with (
        pytest.raises(anthropic.APIStatusError) as failed,
        client.messages.stream(
            model="gpt", max_tokens=100, messages=[{"role": "user", "content": "one two three"}]
        ) as stream,
    ):
        for _event in stream:
            pass
    assert isinstance(failed.value.body, dict)
    assert failed.value.body["type"] == "error"
    assert failed.value.body["error"]["type"] == "api_error"


def test_the_response_cache_answers_the_messages_api_too(
    server: Server, fake: OpenAIFake,
) -> None:
    client = _client(server)
    before = len(fake.script.requests)
    answers = []
    for _ in range(2):
        raw = client.messages.with_raw_response.create(
            model="gpt-cached", max_tokens=64,
            messages=[{"role": "user", "content": "cache me, Anthropic style"}])
        answers.append((raw.headers["x-aigw-cache"], raw.parse()))
    (first_state, first), (second_state, second) = answers
    assert (first_state, second_state) == ("miss", "hit")
    assert len(fake.script.requests) == before + 1
    assert second.content[0].type == first.content[0].type == "text"
    assert second.content[0].text == first.content[0].text  # type: ignore[union-attr]
    assert second.id != first.id and second.stop_reason == "end_turn"

    with client.messages.stream(model="gpt-cached", max_tokens=64, messages=[
            {"role": "user", "content": "cache me, Anthropic style"}]) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == first.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert len(fake.script.requests) == before + 1  # replayed from the cache


class Place(pydantic.BaseModel):
    city: str


def test_sdk_structured_outputs_are_parsed(client: anthropic.Anthropic) -> None:
    """``messages.parse(output_format=...)`` sends ``output_config``, which was refused
    as an unknown field (the echo deployment answers with the JSON it was sent)."""
    parsed = client.messages.parse(model="echo", max_tokens=64, output_format=Place,
                                   messages=[{"role": "user", "content": '{"city": "Oslo"}'}])
    assert parsed.parsed_output == Place(city="Oslo")


def test_sdk_structured_outputs_reach_an_openai_upstream(
    client: anthropic.Anthropic, fake: OpenAIFake
) -> None:
    """The fake answers JSON of the schema only when response_format reaches it: the SDK
    could not parse the plain text it answers otherwise."""
    parsed = client.messages.parse(model="gpt", max_tokens=64, output_format=Place,
                                   messages=[{"role": "user", "content": "Where is it?"}])
    assert parsed.parsed_output == Place(city="fake-openai: Where is it?")
    assert fake.script.requests[-1]["response_format"]["type"] == "json_schema"
