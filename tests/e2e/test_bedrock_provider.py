"""A real ``aigw serve`` in front of the Bedrock fake, driven by the official SDKs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.bedrock_fake import BedrockFake
from .server import Server, answered_both_ways, sdk_gateway

pytestmark = pytest.mark.e2e

CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"


@dataclass
class Served:
    chat: openai.OpenAI
    messages: anthropic.Anthropic
    server: Server
    fake: BedrockFake


@pytest.fixture
def bedrock(tmp_path: Path, bedrock_fake: BedrockFake) -> Iterator[Served]:
    base = bedrock_fake.base_url  # type: ignore[attr-defined]
    with sdk_gateway(tmp_path / "gw", (
        "providers:\n"
        f'  aws: {{type: bedrock, region: us-east-1, base_url: "{base}"}}\n'
        "deployments:\n"
        f'  claude: {{provider: aws, model: "{CLAUDE}", context_window: 200000,\n'
        "            max_output_tokens: 1024, capabilities: [streaming, tools]}\n"
        '  nova: {provider: aws, model: "amazon.nova-lite-v1:0", context_window: 300000,\n'
        "         max_output_tokens: 1024, capabilities: [streaming]}\n"
        "routes:\n"
        "  claude: {deployment: claude}\n"
        "  nova: {deployment: nova}\n"
    )) as (chat, server), anthropic.Anthropic(base_url=server.base_url, api_key=DEV_KEY,
                                              max_retries=0) as messages:
        yield Served(chat, messages, server, bedrock_fake)


def test_the_messages_api_names_the_stop_sequence_claude_on_bedrock_stopped_at(
    bedrock: Served,
) -> None:
    """Converse says which stop sequence ended an answer only when asked for Claude's
    own field: /v1/messages answered stop_reason end_turn and stop_sequence null."""
    ask = {"max_tokens": 100, "stop_sequences": ["nowhere", "three"],
           "messages": [{"role": "user", "content": "one two three four"}]}
    message = bedrock.messages.messages.create(model="claude", **ask)  # type: ignore[arg-type]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "three")
    assert [getattr(block, "text", None) for block in message.content] == [
        "fake-bedrock: one two "]
    assert bedrock.fake.script.requests[-1]["additionalModelResponseFieldPaths"] == [
        "/delta/stop_sequence", "/stop_sequence"]

    with bedrock.messages.messages.stream(model="claude", **ask) as stream:  # type: ignore[arg-type]
        deltas = [event.delta for event in stream if event.type == "message_delta"]
        final = stream.get_final_message()
    assert [(delta.stop_reason, delta.stop_sequence) for delta in deltas] == [
        ("stop_sequence", "three")]
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "three")

    # An answer that ends on its own names none; nor does a model other than Claude,
    # which is not asked (the path is Claude's).
    ended = bedrock.messages.messages.create(model="claude", max_tokens=100,
                                             stop_sequences=["nowhere"],
                                             messages=[{"role": "user", "content": "one"}])
    assert (ended.stop_reason, ended.stop_sequence) == ("end_turn", None)
    other = bedrock.messages.messages.create(model="nova", **ask)  # type: ignore[arg-type]
    assert (other.stop_reason, other.stop_sequence) == ("end_turn", None)
    assert "additionalModelResponseFieldPaths" not in bedrock.fake.script.requests[-1]


def test_a_prompt_with_no_user_turn_is_answered_by_claude_on_bedrock(bedrock: Served) -> None:
    """Converse wants a user turn first: system messages alone were its 400, and a
    greeting alone went as the last turn, which Claude continues (Claude 4.6 refuses)."""
    placeholder = {"role": "user", "content": [{"text": "."}]}
    greeting = {"role": "assistant", "content": "Hi! How can I help?"}
    prompts: list[tuple[list[Any], list[Any]]] = [
        ([{"role": "system", "content": "Write a haiku."}], [placeholder]),
        ([{"role": "developer", "content": "Be brief."}, greeting], [
            placeholder, {"role": "assistant", "content": [{"text": "Hi! How can I help?"}]},
            placeholder]),
    ]
    for messages, sent in prompts:
        assert answered_both_ways(bedrock.chat, "claude", messages) == [
            ("claude", "fake-bedrock: .")] * 2
        assert [request["messages"] for request in bedrock.fake.script.requests[-2:]] == [
            sent, sent]
