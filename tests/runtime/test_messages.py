"""POST /v1/messages in-process: Anthropic's shapes in, the echo gateway behind, Anthropic's out."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Any

import httpx
import pytest

from aigw.runtime.errors import UpstreamOverloaded, UpstreamRateLimited, UpstreamServerError
from aigw.runtime.live import Gateway
from aigw.runtime.messages import EventEncoder
from aigw.runtime.messages_wire import MessagesRequest, field_path, parse, to_chat_request
from aigw.runtime.providers.base import (
    ChatCall,
    ChatDelta,
    ChatResult,
    EmbeddingCall,
    EmbeddingResult,
    ToolCallDelta,
    Usage,
)
from aigw.runtime.tokens import TokenCounter

from ..conftest import DEV_KEY

MESSAGES = "/v1/messages"
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def _message(content: object = "Hello there, gateway!", **extra: object) -> dict[str, object]:
    return {
        "model": "fast",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def _events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in raw.split("\n\n"):
        if not frame:
            continue
        name, data = frame.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), frame
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    for name, data in events:
        assert data["type"] == name
    return events


async def _stream(client: httpx.AsyncClient, payload: dict[str, object]) -> httpx.Response:
    async with client.stream("POST", MESSAGES, json={**payload, "stream": True}) as response:
        await response.aread()
    return response


def _assert_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"type", "error"}
    assert body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind
    message: str = body["error"]["message"]
    assert message
    return message


async def test_message_is_an_anthropic_message(client: httpx.AsyncClient) -> None:
    response = await client.post(
        MESSAGES, json=_message(), headers={"Authorization": "", "x-api-key": DEV_KEY}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("msg_")
    assert body == {
        "id": body["id"],
        "type": "message",
        "role": "assistant",
        "model": "echo-1",
        "content": [{"type": "text", "text": "Hello there, gateway!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 3 + 3 + 5,  # primer + per-message overhead + text
            "output_tokens": 5,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    assert response.headers["x-aigw-route"] == "fast"
    assert response.headers["x-aigw-deployment"] == "echo-small"
    assert response.headers["x-aigw-attempts"] == "1"
    assert response.headers["request-id"] == response.headers["x-request-id"]
    assert body["id"] == "msg_" + response.headers["x-request-id"].removeprefix("chatcmpl-")


async def test_system_prompt_is_counted_as_a_system_message(
    client: httpx.AsyncClient, counter: TokenCounter
) -> None:
    system = [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}]
    response = await client.post(MESSAGES, json=_message("hi", system=system))
    body = response.json()
    assert body["content"] == [{"type": "text", "text": "hi"}]
    system_tokens = counter.count("Be brief.\n\nBe kind.")
    assert body["usage"]["input_tokens"] == 3 + (3 + system_tokens) + (3 + counter.count("hi"))
    plain = await client.post(MESSAGES, json=_message("hi", system="Be brief.\n\nBe kind."))
    assert plain.json()["usage"] == body["usage"]


async def test_text_blocks_and_history_reach_the_model(client: httpx.AsyncClient) -> None:
    payload = _message()
    payload["messages"] = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": [{"type": "text", "text": "first answer"}]},
        {"role": "user", "content": [
            {"type": "text", "text": "second ", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "question"},
        ]},
    ]
    response = await client.post(MESSAGES, json=payload)
    assert response.json()["content"] == [{"type": "text", "text": "second question"}]


async def test_max_tokens_cuts_the_answer(client: httpx.AsyncClient) -> None:
    response = await client.post(
        MESSAGES, json={**_message("one two three four five six"), "max_tokens": 2}
    )
    body = response.json()
    assert body["content"] == [{"type": "text", "text": "one two"}]
    assert body["stop_reason"] == "max_tokens"
    assert body["usage"]["output_tokens"] == 2


async def test_forced_tool_gives_a_tool_use_block(client: httpx.AsyncClient) -> None:
    payload = _message(
        '{"city": "Paris"}', tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"}
    )
    response = await client.post(MESSAGES, json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["content"] == [
        {"type": "tool_use", "id": "call_echo_1", "name": "get_weather",
         "input": {"city": "Paris"}}
    ]
    assert body["stop_reason"] == "tool_use"


async def test_stream_sends_the_exact_event_sequence(client: httpx.AsyncClient) -> None:
    response = await _stream(client, _message("alpha beta gamma"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-aigw-deployment"] == "echo-small"
    events = _events(response.text)
    assert [name for name, _ in events] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["id"] == "msg_" + response.headers["x-request-id"].removeprefix("chatcmpl-")
    assert (start["role"], start["model"], start["content"]) == ("assistant", "echo-1", [])
    assert (start["stop_reason"], start["stop_sequence"]) == (None, None)
    assert start["usage"]["input_tokens"] == 3 + 3 + 3
    assert start["usage"]["output_tokens"] == 0
    assert events[2][1] == {
        "type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}
    }
    assert [data["delta"] for _, data in events[3:6]] == [
        {"type": "text_delta", "text": "alpha "},
        {"type": "text_delta", "text": "beta "},
        {"type": "text_delta", "text": "gamma"},
    ]
    assert {data["index"] for _, data in events[3:7]} == {0}
    assert events[7][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 9, "output_tokens": 3,
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
    }
    assert events[8][1] == {"type": "message_stop"}


async def test_stream_of_a_forced_tool_sends_input_json_deltas(client: httpx.AsyncClient) -> None:
    payload = _message(
        '{"city": "Oslo"}', tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"}
    )
    events = _events((await _stream(client, payload)).text)
    assert [name for name, _ in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop",
    ]
    assert events[2][1]["content_block"] == {
        "type": "tool_use", "id": "call_echo_1", "name": "get_weather", "input": {}
    }
    delta = events[3][1]
    assert (delta["index"], delta["delta"]["type"]) == (0, "input_json_delta")
    assert json.loads(delta["delta"]["partial_json"]) == {"city": "Oslo"}
    assert events[5][1]["delta"]["stop_reason"] == "tool_use"


def test_encoder_closes_text_before_a_tool_and_numbers_blocks_in_order() -> None:
    encoder = EventEncoder("msg_1", "m", 7)
    raw = encoder.start()
    for delta in (
        ChatDelta(content="Let me look. "),
        ChatDelta(tool_calls=(ToolCallDelta(0, "call_a", "find", ""),)),
        ChatDelta(tool_calls=(ToolCallDelta(0, arguments='{"q": '),)),
        ChatDelta(tool_calls=(ToolCallDelta(0, arguments='"a"}'),)),
        ChatDelta(tool_calls=(ToolCallDelta(1, "call_b", "find", '{"q": "b"}'),)),
        ChatDelta(finish_reason="tool_calls"),
        ChatDelta(usage=Usage(20, 9, cached_tokens=4)),
    ):
        raw += encoder.encode(delta)
    raw += encoder.finish()
    events = _events(raw.decode())
    shape = [(name, data.get("index")) for name, data in events]
    assert shape == [
        ("message_start", None), ("ping", None),
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2), ("content_block_delta", 2), ("content_block_stop", 2),
        ("message_delta", None), ("message_stop", None),
    ]
    assert "".join(d["delta"]["partial_json"] for n, d in events[6:8]) == '{"q": "a"}'
    assert events[12][1]["delta"]["stop_reason"] == "tool_use"
    assert events[12][1]["usage"] == {"input_tokens": 16, "output_tokens": 9,
                                      "cache_creation_input_tokens": 0,
                                      "cache_read_input_tokens": 4}


def _shape(deltas: tuple[ChatDelta, ...]) -> list[tuple[str, Any]]:
    encoder = EventEncoder("msg_1", "m", 7)
    raw = encoder.start() + b"".join(encoder.encode(delta) for delta in deltas) + encoder.finish()
    return [(name, data.get("index")) for name, data in _events(raw.decode())]


def test_interleaved_tool_calls_give_one_block_after_another() -> None:
    """An OpenAI-format upstream may interleave its calls' argument fragments. Call 1's
    block waits until call 0's arguments are whole; before, call 0's last fragment came
    as a content_block_delta after its own content_block_stop."""
    encoder = EventEncoder("msg_1", "m", 7)
    raw = encoder.start()
    for delta in (
        ChatDelta(tool_calls=(ToolCallDelta(0, "call_a", "find", '{"q": '),)),
        ChatDelta(tool_calls=(ToolCallDelta(1, "call_b", "find", '{"q": '),)),
        ChatDelta(tool_calls=(ToolCallDelta(1, arguments='"b"}'),)),
        ChatDelta(tool_calls=(ToolCallDelta(0, arguments='"a"}'),)),
        ChatDelta(tool_calls=(ToolCallDelta(0, arguments=" "),)),  # after the whole object
        ChatDelta(finish_reason="tool_calls"),
    ):
        raw += encoder.encode(delta)
    raw += encoder.finish()
    events = _events(raw.decode())
    assert [(name, data.get("index")) for name, data in events] == [
        ("message_start", None), ("ping", None),
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("message_delta", None), ("message_stop", None),
    ]
    blocks: dict[int, dict[str, Any]] = {}
    for name, data in events:
        if name == "content_block_start":
            blocks[data["index"]] = {**data["content_block"], "json": ""}
        elif name == "content_block_delta":
            blocks[data["index"]]["json"] += data["delta"]["partial_json"]
    assert [(block["id"], json.loads(block["json"])) for block in blocks.values()] == [
        ("call_a", {"q": "a"}), ("call_b", {"q": "b"})]


def test_a_held_block_opens_as_soon_as_the_open_call_is_whole() -> None:
    """Held blocks open as soon as the open call's arguments are whole, not at the end:
    text that comes while a call's arguments are open waits for them (blocks 1 and 3)."""
    assert _shape((
        ChatDelta(tool_calls=(ToolCallDelta(0, "call_a", "find", '{"q": '),)),
        ChatDelta(content="Also: "),
        ChatDelta(tool_calls=(ToolCallDelta(1, "call_b", "find", ""),)),
        ChatDelta(tool_calls=(ToolCallDelta(0, arguments='"a"}'),)),
        ChatDelta(content="more."),
        ChatDelta(tool_calls=(ToolCallDelta(1, arguments='{"q": "b"}'),)),
    )) == [
        ("message_start", None), ("ping", None),
        ("content_block_start", 0), ("content_block_delta", 0), ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("content_block_start", 2), ("content_block_delta", 2), ("content_block_stop", 2),
        ("content_block_start", 3), ("content_block_delta", 3), ("content_block_stop", 3),
        ("message_delta", None), ("message_stop", None),
    ]


def test_lowering_into_openai_messages() -> None:
    body = {
        "model": "fast", "max_tokens": 9, "system": "Be brief.", "top_k": 5,
        "temperature": 0.5, "top_p": 0.9, "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"}, "service_tier": "auto",
        "tools": [WEATHER], "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "iVBORw0K"}},
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Rome"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {"type": "text", "text": "And tomorrow?"},
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                 "content": [{"type": "text", "text": "no forecast"}]},
            ]},
        ],
    }
    request = to_chat_request(parse(MessagesRequest, json.dumps(body).encode()))
    lowered = request.model_dump(exclude_none=True)
    assert lowered["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "Look:"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
            {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
        ]},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "user", "content": "And tomorrow?"},
        {"role": "assistant", "tool_calls": [
            {"id": "toolu_2", "type": "function",
             "function": {"name": "get_weather", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no forecast"},
    ]
    assert lowered["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": WEATHER["input_schema"]}}]
    assert lowered["tool_choice"] == "required"
    assert lowered["parallel_tool_calls"] is False
    # OpenAI's reasoning models refuse max_tokens (the OpenAI adapter sends max_tokens
    # to the servers that know only that).
    assert "max_tokens" not in lowered
    assert (lowered["max_completion_tokens"], lowered["temperature"], lowered["top_p"]) == (
        9, 0.5, 0.9)
    assert (lowered["stop"], lowered["user"]) == (["END"], "u-1")
    assert "service_tier" not in lowered
    # Anthropic's hint: kept for Anthropic-family upstreams, left out by OpenAI-format ones.
    assert lowered["top_k"] == 5 and request.anthropic_hints


def test_cache_marks_are_lowered_where_an_openai_format_client_writes_them() -> None:
    mark = {"type": "ephemeral"}
    body = {
        "model": "fast", "max_tokens": 9,
        "system": [{"type": "text", "text": "A."}, {"type": "text", "text": "B.",
                                                    "cache_control": mark}],
        "tools": [{**WEATHER, "cache_control": mark}],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Look:", "cache_control": mark},
                {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"},
                 "cache_control": mark}]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking.", "cache_control": mark},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1",
                 "content": [{"type": "text", "text": "sunny", "cache_control": mark}]},
                {"type": "text", "text": "Thanks.", "cache_control": mark}]},
        ],
    }
    request = to_chat_request(parse(MessagesRequest, json.dumps(body).encode()))
    assert request.anthropic_hints
    lowered = request.model_dump(exclude_none=True)
    assert lowered["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "A."},
                                       {"type": "text", "text": "B.", "cache_control": mark}]},
        {"role": "user", "content": [
            {"type": "text", "text": "Look:", "cache_control": mark},
            {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"},
             "cache_control": mark}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking.", "cache_control": mark}], "tool_calls": [
            {"id": "toolu_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "toolu_1",
         "content": [{"type": "text", "text": "sunny", "cache_control": mark}]},
        {"role": "user", "content": [{"type": "text", "text": "Thanks.", "cache_control": mark}]},
    ]
    assert lowered["tools"][0]["cache_control"] == mark
    unmarked = to_chat_request(parse(MessagesRequest, json.dumps(_message("hi")).encode()))
    assert not unmarked.anthropic_hints


_MARK = {"type": "ephemeral"}
_TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}


@pytest.mark.parametrize("body", [
    _message("hi", system=[{"type": "text", "text": "A.", "cache_control": _MARK}]),
    _message("hi", tools=[{**WEATHER, "cache_control": _MARK}]),
    _message([{"type": "text", "text": "hi", "cache_control": _MARK}]),
    _message([{"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"},
               "cache_control": _MARK}]),
    {**_message("hi"), "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hm.", "cache_control": _MARK}]},
        {"role": "user", "content": "go on"}]},
    {**_message("hi"), "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{**_TOOL_USE, "cache_control": _MARK}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]}]},
    {**_message("hi"), "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": [_TOOL_USE]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": "sunny", "cache_control": _MARK}]}]},
    {**_message("hi"), "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": [_TOOL_USE]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "sunny",
                                                   "cache_control": _MARK}]}]}]},
], ids=["system", "tool", "text", "image", "assistant text", "tool_use", "tool_result",
        "tool_result text"])
def test_a_single_cache_mark_anywhere_marks_the_request(body: dict[str, object]) -> None:
    """The lowering notes the marks it meets (no second walk finds them): one alone, in any
    place a block or tool may carry it, gives the request Anthropic's hints."""
    request = to_chat_request(parse(MessagesRequest, json.dumps(body).encode()))
    assert request.anthropic_hints


@pytest.mark.parametrize(
    ("choice", "lowered"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "get_weather"},
         {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
def test_tool_choice_lowering(choice: dict[str, object], lowered: object) -> None:
    body = json.dumps(_message("x", tools=[WEATHER], tool_choice=choice)).encode()
    request = to_chat_request(parse(MessagesRequest, body))
    assert request.tool_choice == lowered
    assert "parallel_tool_calls" not in request.model_dump(exclude_none=True)


def test_field_path_drops_union_tags() -> None:
    assert field_path(("messages", 0, "content", 1, "text", "text")) == "messages.0.content.1.text"
    assert field_path(("tool_choice", "tool", "name")) == "tool_choice.name"
    assert field_path(("system", 0, "text")) == "system.0.text"


async def test_count_tokens_matches_the_planned_prompt(client: httpx.AsyncClient) -> None:
    payload = _message("count these words", system="Be brief.")
    message = (await client.post(MESSAGES, json=payload)).json()
    del payload["max_tokens"]
    counted = await client.post(f"{MESSAGES}/count_tokens", json=payload)
    assert counted.status_code == 200, counted.text
    assert counted.json() == {"input_tokens": message["usage"]["input_tokens"]}
    unknown = await client.post(f"{MESSAGES}/count_tokens", json={**payload, "model": "nope"})
    _assert_error(unknown, 404, "not_found_error")


async def test_missing_or_wrong_key_is_401_authentication_error(
    client: httpx.AsyncClient,
) -> None:
    missing = _assert_error(
        await client.post(MESSAGES, json=_message(), headers={"Authorization": ""}),
        401, "authentication_error",
    )
    assert "x-api-key" in missing  # the header Anthropic's SDK sends
    wrong = await client.post(
        MESSAGES, json=_message(), headers={"Authorization": "", "x-api-key": "sk-wrong-7f3a"}
    )
    _assert_error(wrong, 401, "authentication_error")
    assert "sk-wrong-7f3a" not in wrong.text


async def test_unknown_model_is_404_not_found_error(client: httpx.AsyncClient) -> None:
    response = await client.post(MESSAGES, json={**_message(), "model": "claude-9"})
    assert "claude-9" in _assert_error(response, 404, "not_found_error")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "fast", "messages": [{"role": "user", "content": "x"}]},
         "max_tokens: Field required"),
        ({**_message(), "thinking": {"type": "enabled", "budget_tokens": 1024}},
         'thinking: extended thinking ("enabled") is not available through this gateway, whose'
         ' upstreams are called in OpenAI\'s format: leave it out, or give {"type": "disabled"}'),
        ({**_message(), "thinking": {"type": "adaptive"}},
         'thinking: extended thinking ("adaptive") is not available through this gateway, whose'
         ' upstreams are called in OpenAI\'s format: leave it out, or give {"type": "disabled"}'),
        ({**_message(), "output_config": {"effort": "high"}},
         "output_config.effort: effort is not available through this gateway, whose upstreams"
         " are called in OpenAI's format: leave it out"),
        ({**_message(), "output_config": {"format": {"type": "json_schema"}}},
         "output_config.format.schema: Field required"),
        (_message("x", tools=[{"type": "web_search_20250305", "name": "web_search"}]),
         "tools.0: 'web_search_20250305' is a server tool, which this gateway cannot run: only"
         " custom tools (with an input_schema) are accepted"),
        ({**_message(), "temperature": 1.5},
         "temperature: Input should be less than or equal to 1"),
        (_message([{"type": "text"}]), "messages.0.content.0.text: Field required"),
        ({**_message(), "messages": [{"role": "system", "content": "x"}]},
         "messages.0.role: Input should be 'user' or 'assistant'"),
        (_message("x", tool_choice={"type": "tool", "name": "nope"}, tools=[WEATHER]),
         "tool_choice.name: no tool named 'nope' is in 'tools'."),
        (_message([{"type": "tool_use", "id": "t", "name": "f", "input": {}}]),
         "messages.0.content.0: a user turn cannot hold a 'tool_use' block."),
    ],
)
async def test_bad_body_is_400_invalid_request_error(
    client: httpx.AsyncClient, body: dict[str, object], message: str
) -> None:
    response = await client.post(MESSAGES, json=body)
    assert _assert_error(response, 400, "invalid_request_error") == message


async def test_thinking_disabled_is_accepted(client: httpx.AsyncClient) -> None:
    """As Anthropic accepts it; it was refused as an unknown field."""
    response = await client.post(MESSAGES, json={**_message(), "thinking": {"type": "disabled"}})
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["type"] == "text"


async def test_a_wrong_method_is_405_in_anthropic_shape(client: httpx.AsyncClient) -> None:
    """It was OpenAI-shaped, which Anthropic's SDK does not read."""
    _assert_error(await client.get(MESSAGES), 405, "invalid_request_error")


async def test_an_empty_content_list_is_a_400_on_both_endpoints(
    client: httpx.AsyncClient,
) -> None:
    """It failed in the lowering to the OpenAI shape: a 500, and on count_tokens in
    OpenAI's error shape."""
    body = _message([])
    assert _assert_error(await client.post(MESSAGES, json=body), 400,
                         "invalid_request_error").startswith("messages.0")
    counted = await client.post(f"{MESSAGES}/count_tokens",
                                json={"model": "fast", "messages": body["messages"]})
    assert _assert_error(counted, 400, "invalid_request_error").startswith("messages.0")


async def test_a_number_too_large_for_a_float_is_a_400(client: httpx.AsyncClient) -> None:
    """It reached the upstream as null in a tool's schema, or as "Infinity" (not JSON) in
    a tool call's input; /v1/chat/completions refused it already."""
    body = (b'{"model": "fast", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],'
            b' "tools": [{"name": "f", "input_schema": {"type": "object", "maximum": 1e999}}]}')
    refused = await client.post(MESSAGES, content=body,
                                headers={"content-type": "application/json"})
    assert "numbers must be finite" in _assert_error(refused, 400, "invalid_request_error")


async def test_image_in_a_tool_result_is_refused(client: httpx.AsyncClient) -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}}
    body = _message([{"type": "tool_result", "tool_use_id": "t", "content": [image]}])
    message = _assert_error(await client.post(MESSAGES, json=body), 400, "invalid_request_error")
    assert message.startswith("messages.0.content.0.content.0: images in a tool_result")


async def test_malformed_json_and_non_object_are_400(client: httpx.AsyncClient) -> None:
    broken = await client.post(MESSAGES, content=b'{"model": "fast", "messages": [')
    assert "not valid JSON" in _assert_error(broken, 400, "invalid_request_error")
    listed = await client.post(MESSAGES, content=b"[1, 2]")
    assert _assert_error(listed, 400, "invalid_request_error") == (
        "The request body must be a JSON object."
    )


async def test_body_over_the_limit_is_413_request_too_large(client: httpx.AsyncClient) -> None:
    response = await client.post(MESSAGES, json=_message("x" * (4 * 1024 * 1024 + 10)))
    _assert_error(response, 413, "request_too_large")


async def test_prompt_beyond_every_window_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(MESSAGES, json=_message("word " * 140_000))
    assert "echo-large" in _assert_error(response, 400, "invalid_request_error")


class _Failing:
    """An adapter that fails as scripted: before answering, or after a first delta."""

    def __init__(self, error: Exception, *, after_first_delta: bool = False) -> None:
        self.error = error
        self.after_first_delta = after_first_delta

    async def complete(self, call: ChatCall) -> ChatResult:
        raise self.error

    async def stream(self, call: ChatCall) -> AsyncIterator[ChatDelta]:
        if self.after_first_delta:
            yield ChatDelta(content="partial ")
        raise self.error

    async def embed(self, call: EmbeddingCall) -> EmbeddingResult:
        raise self.error

    async def aclose(self) -> None:
        return None


def _serve_with(gateway: Gateway, adapter: _Failing) -> None:
    """Swap the live snapshot for one whose only provider is ``adapter`` (as a reload would)."""
    gateway.live = dataclasses.replace(gateway.live, adapters=MappingProxyType({"local": adapter}))


async def test_upstream_rate_limit_is_429_with_retry_after(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    _serve_with(gateway, _Failing(UpstreamRateLimited("slow down", retry_after=7)))
    # A deadline shorter than the Retry-After: the gateway gives up rather than wait.
    response = await client.post(
        MESSAGES, json={**_message(), "model": "echo"}, headers={"x-aigw-deadline-ms": "2000"}
    )
    _assert_error(response, 429, "rate_limit_error")
    assert response.headers["retry-after"] == "7"


async def test_overloaded_upstream_is_529_overloaded_error(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    _serve_with(gateway, _Failing(UpstreamOverloaded("busy")))
    response = await _stream(client, {**_message(), "model": "echo"})
    _assert_error(response, 529, "overloaded_error")


async def test_failure_mid_stream_is_an_error_event(
    client: httpx.AsyncClient, gateway: Gateway
) -> None:
    _serve_with(gateway, _Failing(UpstreamServerError("it broke"), after_first_delta=True))
    response = await _stream(client, {**_message(), "model": "echo"})
    assert response.status_code == 200
    events = _events(response.text)
    assert [name for name, _ in events] == [
        "message_start", "ping", "content_block_start", "content_block_delta", "error",
    ]
    assert events[-1][1] == {"type": "error", "error": {"type": "api_error", "message": "it broke"}}


async def test_each_request_logs_one_access_line(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aigw.access")
    await client.post(MESSAGES, json=_message("a b c"))
    await _stream(client, _message("x y"))
    await client.post(MESSAGES, json={**_message(), "model": "missing"})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "aigw.access"]
    seen = [(line["endpoint"], line["route"], line["status"], line["stream"]) for line in lines]
    assert seen == [
        ("messages", "fast", 200, False),
        ("messages", "fast", 200, True),
        ("messages", None, 404, False),
    ]
    assert [line["completion_tokens"] for line in lines] == [3, 2, 0]
    assert lines[2]["error"] == "model_not_found"
