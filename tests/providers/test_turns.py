"""What Anthropic's Messages bodies and Bedrock's Converse bodies read alike (``turns``):
text-only messages, tool-call arguments, and the OpenAI parameters both lack."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aigw.runtime.errors import BadRequest
from aigw.runtime.providers.anthropic_wire import messages_body
from aigw.runtime.providers.base import ChatCall
from aigw.runtime.providers.bedrock_wire import converse_body

from .conftest import chat_call, compiled

SECTIONS = """
providers:
  claude: {type: anthropic, api_key: unused}
  aws: {type: bedrock, region: us-east-1, api_key: unused}
deployments:
  Anthropic: {provider: claude, model: claude-sonnet-4-5, context_window: 200000}
  Bedrock: {provider: aws, model: amazon.nova-lite-v1:0, context_window: 300000}
routes:
  claude: {deployment: Anthropic}
  aws: {deployment: Bedrock}
"""
BODIES: dict[str, Callable[[ChatCall], dict[str, Any]]] = {
    "Anthropic": lambda call: messages_body(call, stream=False),
    "Bedrock": converse_body,
}
PIXEL = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


def _body(tmp_path: Path, label: str, request: dict[str, Any]) -> dict[str, Any]:
    deployment = compiled(tmp_path, SECTIONS).deployments[label]
    return BODIES[label](chat_call(deployment, {"model": "m", **request}))


def _called(arguments: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "weather?"},
            {"role": "assistant", "tool_calls": [{"id": "t1", "type": "function", "function": {
                "name": "lookup", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "sunny"}]


@pytest.mark.parametrize("label", sorted(BODIES))
def test_tool_call_arguments_are_sent_as_the_object_they_hold(
    label: str, tmp_path: Path
) -> None:
    body = _body(tmp_path, label, {"messages": _called('{"query": "x"}'), "tools": [
        {"type": "function", "function": {"name": "lookup"}}]})
    block = body["messages"][1]["content"][0]
    assert (block.get("toolUse") or block)["input"] == {"query": "x"}


@pytest.mark.parametrize("label", sorted(BODIES))
@pytest.mark.parametrize("arguments", ["[1]", "not json", '"text"'])
def test_tool_call_arguments_that_are_no_json_object_are_refused(
    label: str, arguments: str, tmp_path: Path
) -> None:
    with pytest.raises(BadRequest) as refused:
        _body(tmp_path, label, {"messages": _called(arguments)})
    assert refused.value.message == "Tool call arguments must be a JSON object."
    assert refused.value.param == "messages[1].tool_calls[0].function.arguments"


@pytest.mark.parametrize("label", sorted(BODIES))
@pytest.mark.parametrize("role", ["system", "developer", "assistant"])
def test_a_message_that_holds_text_only_refuses_another_part(
    label: str, role: str, tmp_path: Path
) -> None:
    content = [{"type": "text", "text": "look"}, PIXEL]
    with pytest.raises(BadRequest) as refused:
        _body(tmp_path, label, {"messages": [{"role": "user", "content": "hi"},
                                             {"role": role, "content": content}]})
    assert refused.value.message == f"A {role} message can only hold text for {label}."
    assert refused.value.param == "messages[1].content[1]"


@pytest.mark.parametrize("label", sorted(BODIES))
def test_parameters_that_change_no_answer_or_ask_for_nothing_are_not_sent(
    label: str, tmp_path: Path
) -> None:
    extras = {"store": True, "metadata": {"a": "b"}, "service_tier": "auto",
              "prediction": {"type": "content", "content": "x"}, "prompt_cache_key": "k",
              "safety_identifier": "s", "frequency_penalty": 0, "presence_penalty": 0.0,
              "logit_bias": {}, "logprobs": False, "modalities": ["text"]}
    body = _body(tmp_path, label, {"messages": [{"role": "user", "content": "hi"}], **extras})
    assert not set(extras) & set(body)
    assert body["messages"] == _body(tmp_path, label, {"messages": [
        {"role": "user", "content": "hi"}]})["messages"]


@pytest.mark.parametrize("label", sorted(BODIES))
@pytest.mark.parametrize("name, value", [("logit_bias", {"5": 1}), ("logprobs", True),
                                         ("frequency_penalty", 0.5),
                                         ("reasoning_effort", "high")])
def test_a_parameter_both_lack_is_refused_by_name(
    label: str, name: str, value: object, tmp_path: Path
) -> None:
    with pytest.raises(BadRequest) as refused:
        _body(tmp_path, label, {"messages": [{"role": "user", "content": "hi"}], name: value})
    assert refused.value.param == name
    assert name in refused.value.message
