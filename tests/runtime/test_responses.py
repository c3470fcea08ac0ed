"""POST /v1/responses in-process: the Responses API's shapes in, the echo gateway behind,
answers and stream events that validate against the official SDK's own models."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, get_args

import httpx
import pydantic
import pytest
from openai.types.responses import (
    Response,
    ResponseFunctionToolCall,
    ResponseFunctionToolCallItem,
    ResponseFunctionToolCallOutputItem,
    ResponseInputMessageItem,
    ResponseOutputMessage,
    ResponseStreamEvent,
)

from aigw.runtime.app import create_app
from aigw.runtime.chat import Served
from aigw.runtime.errors import UpstreamServerError
from aigw.runtime.live import Gateway
from aigw.runtime.providers.base import ChatDelta, ChatResult, Choice, ToolCallDelta, Usage
from aigw.runtime.responses import EventEncoder, _Ids, echoed, response_body
from aigw.runtime.responses_wire import field_path, parse, to_chat_request
from aigw.runtime.tokens import TokenCounter

from ..conftest import DEV_KEY
from ..fakes.serve import free_port

RESPONSES = "/v1/responses"
# The SDK's stream event models by their type (its union has no discriminator pydantic uses)
EVENTS: dict[str, type[pydantic.BaseModel]] = {
    get_args(model.model_fields["type"].annotation)[0]: model
    for model in get_args(get_args(ResponseStreamEvent)[0])}
WEATHER = {"type": "function", "name": "get_weather", "strict": True,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
# What a Response repeats of a request (the SDK's model requires some of it)
ECHO = echoed(parse(b'{"model": "m", "input": "x"}'))


def _events(raw: str) -> list[dict[str, Any]]:
    """The stream's events, each checked against the SDK's model and its ``event:`` name."""
    events = []
    for frame in raw.split("\n\n"):
        if not frame:
            continue
        name, data = frame.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        EVENTS[event["type"]].model_validate(event)
        events.append(event)
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    return events


async def _stream(client: httpx.AsyncClient, payload: dict[str, Any]) -> list[dict[str, Any]]:
    async with client.stream("POST", RESPONSES, json={**payload, "stream": True}) as response:
        await response.aread()
    assert response.status_code == 200, response.text
    return _events(response.text)


async def test_answer_validates_as_the_sdks_response(client: httpx.AsyncClient) -> None:
    answer = await client.post(RESPONSES, json={
        "model": "fast", "input": "Hello there, gateway!", "instructions": "Be brief.",
        "temperature": 0.5, "user": "u-1"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    response = Response.model_validate(body)
    assert response.output_text == "Hello there, gateway!"
    assert response.id == "resp_" + answer.headers["x-request-id"].removeprefix("chatcmpl-")
    assert (response.temperature, response.user, response.tool_choice) == (0.5, "u-1", "auto")
    assert body["text"] == {"format": {"type": "text"}} and body["tools"] == []
    assert body["usage"]["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}


async def test_forced_tool_gives_a_function_call_item(client: httpx.AsyncClient) -> None:
    answer = await client.post(RESPONSES, json={
        "model": "fast", "input": '{"city": "Oslo"}', "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "get_weather"}})
    response = Response.model_validate(answer.json())
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Oslo"}
    assert call.id is not None and call.id.startswith("fc_")
    assert response.tool_choice.type == "function"  # type: ignore[union-attr]
    assert answer.json()["tools"] == [{"description": None, **WEATHER}]


async def test_stream_of_a_forced_tool(client: httpx.AsyncClient) -> None:
    events = await _stream(client, {"model": "fast", "input": '{"city": "Oslo"}',
                                    "tools": [WEATHER], "tool_choice": "required"})
    assert [event["type"] for event in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    done = events[-1]["response"]
    assert [item["type"] for item in done["output"]] == ["function_call"]
    assert done["output"][0]["arguments"] == '{"city": "Oslo"}'
    assert done["usage"]["output_tokens"] > 0


def test_encoder_keeps_items_in_output_order_with_interleaved_calls() -> None:
    encoder = EventEncoder(_Ids("abc"), 1, "m", ECHO)
    raw = encoder.start()
    for delta in (
        ChatDelta(content="Let me "), ChatDelta(content="look."),
        ChatDelta(tool_calls=(ToolCallDelta(0, "call_a", "first", '{"a"'),)),
        ChatDelta(tool_calls=(ToolCallDelta(1, "call_b", "second", '{"b": 2}'),)),
        ChatDelta(tool_calls=(ToolCallDelta(0, arguments=": 1}"),)),
        ChatDelta(content="Done."),  # after the calls: a message of its own
        ChatDelta(finish_reason="tool_calls"), ChatDelta(usage=Usage(7, 9)),
    ):
        raw += encoder.encode(delta)
    events = _events((raw + encoder.finish()).decode())
    added = [(event["output_index"], event["item"]["type"]) for event in events
             if event["type"] == "response.output_item.added"]
    assert added == [(0, "message"), (1, "function_call"), (2, "function_call"),
                     (3, "message")]
    # the message is closed as the first call opens; the calls stay open to the end
    kinds = [event["type"] for event in events]
    assert kinds.index("response.output_item.done") < kinds.index(
        "response.function_call_arguments.delta")
    final = Response.model_validate(events[-1]["response"])
    assert [(item.type, getattr(item, "arguments", None)) for item in final.output] == [
        ("message", None), ("function_call", '{"a": 1}'), ("function_call", '{"b": 2}'),
        ("message", None)]
    assert len({item.id for item in final.output}) == 4
    assert final.output_text == "Let me look.Done."
    assert final.usage is not None and final.usage.total_tokens == 16


def test_a_call_cut_at_the_output_limit_is_incomplete() -> None:
    encoder = EventEncoder(_Ids("abc"), 1, "m", ECHO)
    raw = encoder.start() + encoder.encode(
        ChatDelta(tool_calls=(ToolCallDelta(0, "call_a", "first", '{"a": '),)))
    raw += encoder.encode(ChatDelta(finish_reason="length")) + encoder.finish()
    events = _events(raw.decode())
    assert [event["item"]["status"] for event in events
            if event["type"] == "response.output_item.done"] == ["incomplete"]
    final = events[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [item["status"] for item in final["response"]["output"]] == ["incomplete"]


def test_encoder_refusal_and_failure() -> None:
    encoder = EventEncoder(_Ids("abc"), 1, "m", ECHO)
    raw = encoder.start() + encoder.encode(ChatDelta(refusal="I can't."))
    raw += encoder.failed(UpstreamServerError("the upstream went away", provider="p"))
    events = _events(raw.decode())
    assert [event["type"] for event in events][2:] == [
        "response.output_item.added", "response.content_part.added",
        "response.refusal.delta", "response.failed"]
    assert events[-1]["response"]["error"] == {"code": "server_error",
                                               "message": "the upstream went away"}


@pytest.mark.parametrize(("finish", "status", "reason"), [
    ("stop", "completed", None), ("tool_calls", "completed", None),
    ("length", "incomplete", "max_output_tokens"),
    ("content_filter", "incomplete", "content_filter"),
])
def test_finish_reasons_give_the_response_status(
    gateway: Gateway, finish: str, status: str, reason: str | None,
) -> None:
    route = gateway.live.graph.routes["echo"]
    served = Served("chatcmpl-abc", 1, route, route.candidates[0], 1)
    result = ChatResult("echo-1", (Choice(0, "Partly", finish, refusal="No more."),),
                        Usage(5, 2, cached_tokens=1, reasoning_tokens=1))
    response = Response.model_validate(response_body(served, result, ECHO))
    assert response.status == status
    assert (response.incomplete_details.reason if response.incomplete_details else None) == (
        reason)
    [message] = response.output
    assert message.type == "message" and message.status == status
    assert [part.type for part in message.content] == ["output_text", "refusal"]
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 1
    assert response.usage.output_tokens_details.reasoning_tokens == 1


def test_lowering_into_chat_messages() -> None:
    request = parse(json.dumps({
        "model": "m", "instructions": "Be brief.", "input": [
            {"role": "developer", "content": "Use metric units."},
            {"role": "user", "content": [
                {"type": "input_text", "text": "Weather here?"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA",
                 "detail": "low"}]},
            {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
             "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather",
             "arguments": '{"city": "Oslo"}'},
            {"type": "function_call", "call_id": "c2", "name": "get_weather",
             "arguments": '{"city": "Bergen"}'},
            {"role": "assistant", "content": " Both."},
            {"type": "function_call_output", "call_id": "c1", "output": "5C"},
            {"type": "function_call_output", "call_id": "c2",
             "output": [{"type": "input_text", "text": "rain"}]},
        ],
        "tools": [WEATHER], "parallel_tool_calls": False, "max_output_tokens": 50,
        "reasoning": {"effort": "low"}, "text": {"format": {"type": "json_object"}},
    }).encode())
    lowered = to_chat_request(request)
    assert lowered.model_dump(exclude_none=True)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use metric units."},
        {"role": "user", "content": [
            {"type": "text", "text": "Weather here?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                "detail": "low"}}]},
        {"role": "assistant", "content": "Checking. Both.", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "c2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Bergen"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "5C"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
    ]
    assert lowered.tools == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["parameters"], "strict": True}}]
    assert lowered.output_limit == 50
    assert lowered.model_extra == {"parallel_tool_calls": False, "reasoning_effort": "low",
                                   "response_format": {"type": "json_object"}}


def test_items_the_sdk_dumps_whole_are_accepted() -> None:
    """Output items given back as the SDK's models dump them, null fields and all."""
    message = ResponseOutputMessage.model_validate(
        {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Hi.", "annotations": []}]})
    call = ResponseFunctionToolCall.model_validate(
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"})
    request = parse(json.dumps({"model": "m", "input": [
        {"role": "user", "content": "hi"},
        message.model_dump(mode="json", by_alias=True),
        call.model_dump(mode="json", by_alias=True),
        {"type": "function_call_output", "call_id": "c1", "output": "ok"}]}).encode())
    assert [m["role"] for m in to_chat_request(request).model_dump()["messages"]] == [
        "user", "assistant", "tool"]


def test_field_path_drops_union_tags() -> None:
    assert field_path(("input", 0, "message", "content", 1, "input_image", "file_id")) == (
        "input.0.content.1.file_id")
    assert field_path(("text", "format", "json_schema", "name")) == "text.format.name"


async def test_unknown_responses_are_not_found(client: httpx.AsyncClient) -> None:
    for method, path in (("GET", "resp_123"), ("DELETE", "resp_123"),
                         ("GET", "resp_123/input_items")):
        found = await client.request(method, f"{RESPONSES}/{path}")
        assert found.status_code == 404
        assert found.json()["error"]["param"] == "response_id"
        anonymous = await client.request(method, f"{RESPONSES}/{path}",
                                         headers={"authorization": ""})
        assert anonymous.status_code == 401


async def test_an_incomplete_stream_is_kept(client: httpx.AsyncClient) -> None:
    events = await _stream(client, {"model": "fast", "input": "one two three four",
                                    "max_output_tokens": 2})
    assert events[-1]["type"] == "response.incomplete"
    kept = await client.get(f"{RESPONSES}/{events[-1]['response']['id']}")
    assert kept.status_code == 200, kept.text
    assert Response.model_validate(kept.json()).status == "incomplete"
    assert kept.json() == events[-1]["response"]


# The SDK's model of each kind of input item /input_items lists.
ITEMS: dict[tuple[str, str | None], type[pydantic.BaseModel]] = {
    ("message", "user"): ResponseInputMessageItem,
    ("message", "assistant"): ResponseOutputMessage,
    ("function_call", None): ResponseFunctionToolCallItem,
    ("function_call_output", None): ResponseFunctionToolCallOutputItem,
}


async def test_input_items_of_a_chain_validate_as_the_sdks_items(
    client: httpx.AsyncClient,
) -> None:
    first = (await client.post(RESPONSES, json={
        "model": "fast", "input": '{"city": "Oslo"}', "instructions": "Be brief.",
        "tools": [WEATHER], "tool_choice": "required"})).json()
    [call] = first["output"]
    second = await client.post(RESPONSES, json={
        "model": "fast", "previous_response_id": first["id"], "tools": [WEATHER],
        "input": [{"type": "function_call_output", "call_id": call["call_id"],
                   "output": "5C"}, {"role": "assistant", "content": "It is 5C."},
                  {"role": "user", "content": "thanks"}]})
    assert second.status_code == 200, second.text
    listed = (await client.get(f"{RESPONSES}/{second.json()['id']}/input_items",
                               params={"order": "asc"})).json()
    for item in listed["data"]:
        ITEMS[item["type"], item.get("role")].model_validate(item)
    assert [(item["type"], item.get("role")) for item in listed["data"]] == [
        ("message", "user"), ("function_call", None), ("function_call_output", None),
        ("message", "assistant"), ("message", "user")]  # the instructions are not an item
    assert listed["data"][1] == call  # as answered, its id kept
    assert len({item["id"] for item in listed["data"]}) == 5


async def test_input_items_paging_is_checked(client: httpx.AsyncClient) -> None:
    answer = (await client.post(RESPONSES, json={"model": "fast", "input": "hi"})).json()
    items = f"{RESPONSES}/{answer['id']}/input_items"
    listed = (await client.get(items)).json()
    assert [item["content"] for item in listed["data"]] == [[{"type": "input_text",
                                                             "text": "hi"}]]
    assert listed["first_id"] == listed["last_id"] == listed["data"][0]["id"]
    for query, param in (("limit=0", "limit"), ("limit=101", "limit"), ("limit=x", "limit"),
                         ("order=up", "order"), ("after=msg_nope", "after")):
        refused = await client.get(f"{items}?{query}")
        assert refused.status_code == 400, query
        assert refused.json()["error"]["param"] == param


@asynccontextmanager
async def _served_with(gateway_dir: Path, counter: TokenCounter, settings: str,
                       store: str = "embedded") -> AsyncIterator[httpx.AsyncClient]:
    """The shipped gateway on ``store`` with ``settings`` (YAML lines) added, in-process."""
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace(
        "settings:\n  store: embedded", f'settings:\n{settings}  store: "{store}"', 1))
    gateway = Gateway(gateway_dir, counter)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gateway)),
                                     base_url="http://aigw.test",
                                     headers={"Authorization": f"Bearer {DEV_KEY}"}) as http:
            yield http
    finally:
        await gateway.aclose()


async def test_a_response_over_responses_max_bytes_is_answered_not_kept(
    gateway_dir: Path, counter: TokenCounter, caplog: pytest.LogCaptureFixture,
) -> None:
    async with _served_with(gateway_dir, counter, "  responses_max_bytes: 1500\n") as http:
        small = (await http.post(RESPONSES, json={"model": "fast", "input": "hi"})).json()
        large = await http.post(RESPONSES, json={"model": "fast", "input": "word " * 300})
        assert large.status_code == 200
        assert (await http.get(f"{RESPONSES}/{small['id']}")).status_code == 200
        large_id = large.json()["id"]
        why = ("It was answered and not kept: with its input items it is 4047 bytes, over "
               "this gateway's responses_max_bytes (1500). Send the whole conversation as "
               "'input'.")
        for path in (large_id, f"{large_id}/input_items"):
            read = await http.get(f"{RESPONSES}/{path}")
            assert read.status_code == 404
            assert read.json()["error"]["message"] == (
                f"Response with id '{large_id}' not found. {why}")
        continued = await http.post(RESPONSES, json={
            "model": "fast", "input": "more", "previous_response_id": large_id})
        assert continued.status_code == 400
        assert continued.json()["error"] == {
            "message": f"Previous response with id '{large_id}' not found. {why}",
            "type": "invalid_request_error", "param": "previous_response_id",
            "code": "previous_response_not_found"}
        assert (await http.delete(f"{RESPONSES}/{large_id}")).json()["deleted"] is True
        assert (await http.get(f"{RESPONSES}/{large_id}")).json()["error"]["message"] == (
            f"Response with id '{large_id}' not found.")
    [warning] = [r.getMessage() for r in caplog.records if r.name == "aigw.responses"]
    assert f"response {large.json()['id']} of key dev not kept" in warning
    assert "over responses_max_bytes (1500)" in warning


async def test_a_kept_record_is_the_response_apart_from_an_input_item_a_line(
    gateway_dir: Path, counter: TokenCounter,
) -> None:
    """A record is up to responses_max_bytes: a GET reads and parses the response alone,
    input_items the lines of its page, not the whole conversation. A continuation's
    record keeps its own input items and the id it continued, not the earlier turns."""
    async with _served_with(gateway_dir, counter, "") as http:
        first = (await http.post(RESPONSES, json={"model": "fast", "input": "one"})).json()
        second = (await http.post(RESPONSES, json={
            "model": "fast", "input": "two", "previous_response_id": first["id"]})).json()
        with sqlite3.connect(gateway_dir / "aigw-responses.sqlite") as connection:
            [(body, kept, previous)] = connection.execute(
                "SELECT body, items, previous FROM responses WHERE id = ?",
                (second["id"],)).fetchall()
        assert json.loads(body) == {"key": "dev", "route": "fast", "response": second}
        assert previous == first["id"]
        lines = bytes(kept).split(b"\n")
        items = f"{RESPONSES}/{second['id']}/input_items"
        listed = (await http.get(items, params={"order": "asc"})).json()["data"]
        assert [json.loads(line) for line in lines] == listed[2:]
        assert [item["role"] for item in listed] == ["user", "assistant", "user"]
        after = await http.get(items, params={"order": "asc", "after": listed[0]["id"],
                                              "limit": 1})
        assert after.json() == {"object": "list", "data": listed[1:2], "has_more": True,
                                "first_id": listed[1]["id"], "last_id": listed[1]["id"]}


async def test_a_store_that_cannot_answer(
    gateway_dir: Path, counter: TokenCounter, caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis down (the limits failing open): answered and not kept, logged; a continuation
    is a 503, at once while the store rests after the failure."""
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    async with _served_with(gateway_dir, counter, "  store_failure: fail_open\n",
                            store=nobody) as http:
        answer = await http.post(RESPONSES, json={"model": "fast", "input": "hi"})
        assert answer.status_code == 200, answer.text
        started = time.monotonic()
        refused = await http.post(RESPONSES, json={
            "model": "fast", "input": "more", "previous_response_id": answer.json()["id"]})
        assert time.monotonic() - started < 0.5
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "store_unavailable"
    assert any(f"response {answer.json()['id']} of key dev not kept" in r.getMessage()
               for r in caplog.records if r.name == "aigw.responses")


async def test_each_request_logs_one_access_line(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aigw.access")
    await client.post(RESPONSES, json={"model": "fast", "input": "a b c"})
    await _stream(client, {"model": "fast", "input": "x y"})
    await client.post(RESPONSES, json={"model": "missing", "input": "a"})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "aigw.access"]
    seen = [(line["endpoint"], line["route"], line["status"], line["stream"]) for line in lines]
    assert seen == [
        ("responses", "fast", 200, False),
        ("responses", "fast", 200, True),
        ("responses", None, 404, False),
    ]
    assert [line["completion_tokens"] for line in lines] == [3, 2, 0]


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"tool_choice": {"type": "function"}}, "tool_choice.name",
     "Missing required parameter: 'tool_choice.name'."),
    ({"tool_choice": "required"}, "tool_choice",
     "Invalid value for 'tool_choice': 'required' asks for a call to one of 'tools', and "
     "none were given."),
    ({"tool_choice": "sometimes"}, "tool_choice",
     "Invalid value for 'tool_choice': 'sometimes' is not a tool_choice: give auto, none, "
     'required or {"type": "function", "name": ...}.'),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice",
     "Invalid value for 'tool_choice': a tool_choice of type 'file_search' names a tool this "
     'gateway does not offer: give auto, none, required or {"type": "function", "name": ...}.'),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input.0.content.0",
     "Invalid value for 'input.0.content.0': 'input_file' parts cannot be passed on by this "
     "gateway: input_text and input_image (a user's), output_text and refusal (an "
     "assistant's) are accepted."),
    ({"input": [{"role": "assistant", "content": [
        {"type": "input_image", "image_url": "https://x/y.png"}]}]}, "input.0.content.0",
     "Invalid value for 'input.0.content.0': an assistant message cannot hold an "
     "'input_image' part."),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": [
        {"type": "input_image", "image_url": "https://x/y.png"}]}]}, "input.0.output.0",
     "Invalid value for 'input.0.output.0': only text can be passed on in a "
     "function_call_output (OpenAI-format tool messages hold only text); send an image in a "
     "user message instead."),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0",
     "Invalid value for 'input.0': item references are not followed: this gateway keeps no "
     "items apart from responses and conversations: send the whole conversation as 'input' "
     "(earlier output items included), or continue a kept response with "
     "'previous_response_id' or a conversation with 'conversation'."),
    ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name",
     "Missing required parameter: 'text.format.name'."),
    ({"truncation": "auto"}, "truncation",
     "Invalid value for 'truncation': this gateway does not drop input items to fit the "
     'context window: leave it out, or give "disabled".'),
    ({"background": True}, "background",
     "Invalid value for 'background': background responses are not run by this gateway: "
     "leave it out, or stream the answer."),
    ({"input": []}, "input",
     "Invalid value for 'input': Value should have at least 1 item after validation, not 0."),
    ({"include": ["reasoning.encrypted_content", "message.output_text.logprobs"]}, "include",
     "Invalid value for 'include': log probabilities are not given back by this gateway: "
     "leave 'message.output_text.logprobs' out."),
])
async def test_bad_bodies_are_400s_naming_the_parameter(
    client: httpx.AsyncClient, body: dict[str, Any], param: str, message: str,
) -> None:
    answer = await client.post(RESPONSES, json={"model": "fast", "input": "hi", **body})
    assert answer.status_code == 400, answer.text
    assert answer.json() == {"error": {"message": message, "type": "invalid_request_error",
                                       "param": param, "code": "invalid_request"}}


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"input": "word " * 140_000}, 422, "input"),
    ({"max_output_tokens": 100_000}, 400, "max_output_tokens"),
])
async def test_errors_of_the_core_name_the_responses_parameter(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, param: str,
) -> None:
    """Routing refuses the lowered chat request: its error names the parameter the app
    sent (``input``), not chat's (``messages``)."""
    answer = await client.post(RESPONSES, json={"model": "fast", "input": "hi", **body})
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["param"] == param
