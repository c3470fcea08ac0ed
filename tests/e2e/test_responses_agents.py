"""The OpenAI Agents SDK (``openai-agents``, whose models speak the Responses API by
default) against a real ``aigw serve``: an agent with a function tool, run whole and
streamed, its turns chained by ``previous_response_id``, by
``auto_previous_response_id``, by a session that sends the whole history, and by a
conversation the gateway keeps (``OpenAIConversationsSession``, ``conversation_id``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    ModelBehaviorError,
    OpenAIConversationsSession,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    RunResult,
    RunResultStreaming,
    SQLiteSession,
    function_tool,
)

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from .responses_gateway import Upstreams, responses_gateway

pytestmark = pytest.mark.e2e

# Tracing would post the run to OpenAI's servers.
QUIET = RunConfig(tracing_disabled=True)


@function_tool
def lookup(query: str) -> str:
    """Look a thing up."""
    return f"found {query}"


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    with responses_gateway(tmp_path_factory.mktemp("agents") / "gw") as served:
        yield served


@pytest.fixture
async def client(upstreams: Upstreams) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{upstreams.server.base_url}/v1",
                                  api_key=DEV_KEY, max_retries=0) as sdk:
        yield sdk


def _agent(client: openai.AsyncOpenAI, route: str) -> Agent[Any]:
    return Agent(name="finder", instructions="Be brief.", tools=[lookup],
                 model=OpenAIResponsesModel(model=route, openai_client=client))


async def _streamed(agent: Agent[Any], text: str, **options: Any) -> RunResultStreaming:
    run = Runner.run_streamed(agent, text, run_config=QUIET, **options)
    kinds = [event.type async for event in run.stream_events()]
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    return run


def _sent(upstreams: Upstreams, route: str) -> list[Any]:
    """The messages the last upstream request of ``route`` carried, as (role, text) pairs
    and tool calls by name."""
    if route == "gpt":
        body = upstreams.gpt.script.requests[-1]
        return [(m["role"], m.get("content") or [c["function"]["name"]
                                                for c in m["tool_calls"]])
                for m in body["messages"]]
    body = upstreams.claude.script.requests[-1]
    return [(m["role"], [block.get("text") or block.get("name") or block.get("content")
                         for block in m["content"]]) for m in body["messages"]]


@pytest.mark.parametrize("route", ["gpt", "claude"])
async def test_an_agent_calls_its_tool_whole_and_streamed(
        client: openai.AsyncOpenAI, route: str) -> None:
    agent = _agent(client, route)
    whole: RunResult = await Runner.run(agent, "find the moon", run_config=QUIET)
    assert whole.final_output == "tool said: found find the moon"
    # The Anthropic fake says a word before its tool call, as Claude does.
    assert [item.type for item in whole.new_items][-3:] == [
        "tool_call_item", "tool_call_output_item", "message_output_item"]
    streamed = await _streamed(agent, "find the sun")
    assert streamed.final_output == "tool said: found find the sun"


async def test_turns_chained_by_previous_response_id(
        client: openai.AsyncOpenAI, upstreams: Upstreams) -> None:
    agent = _agent(client, "gpt")
    first = await Runner.run(agent, "find the moon", run_config=QUIET)
    second = await Runner.run(agent, "and the stars", run_config=QUIET,
                              previous_response_id=first.last_response_id)
    assert second.final_output == "tool said: found and the stars"
    # The gateway put the first run's whole conversation before the second's.
    assert _sent(upstreams, "gpt") == [
        ("system", "Be brief."), ("user", "find the moon"), ("assistant", ["lookup"]),
        ("tool", "found find the moon"), ("assistant", "tool said: found find the moon"),
        ("user", "and the stars"), ("assistant", ["lookup"]),
        ("tool", "found and the stars")]
    third = await _streamed(agent, "and the sun", previous_response_id=second.last_response_id)
    assert third.final_output == "tool said: found and the sun"
    assert len(_sent(upstreams, "gpt")) == 12


@pytest.mark.parametrize("route", ["gpt", "claude"])
async def test_auto_previous_response_id_sends_only_the_new_items(
        client: openai.AsyncOpenAI, upstreams: Upstreams, route: str) -> None:
    agent = _agent(client, route)
    whole = await Runner.run(agent, "find the moon", run_config=QUIET,
                             auto_previous_response_id=True)
    assert whole.final_output == "tool said: found find the moon"
    streamed = await _streamed(agent, "find the sun", auto_previous_response_id=True)
    assert streamed.final_output == "tool said: found find the sun"
    # The tool's output went alone, the call it answers read from the kept response.
    (asked, said), (called, calls), (answered, outputs) = _sent(upstreams, route)[-3:]
    assert (asked, called, answered) == (("user", "assistant", "tool") if route == "gpt"
                                         else ("user", "assistant", "user"))
    assert "find the sun" in said and calls[-1] == "lookup"
    assert "found find the sun" in outputs


async def test_a_session_sends_the_whole_history(
        client: openai.AsyncOpenAI, upstreams: Upstreams) -> None:
    agent, session = _agent(client, "gpt"), SQLiteSession("agents-e2e")
    await Runner.run(agent, "find the moon", run_config=QUIET, session=session)
    streamed = await _streamed(agent, "and the stars", session=session)
    assert streamed.final_output == "tool said: found and the stars"
    assert [role for role, _ in _sent(upstreams, "gpt")] == [
        "system", "user", "assistant", "tool", "assistant", "user", "assistant", "tool"]
    session.close()


async def test_a_conversations_session_keeps_the_history_at_the_gateway(
        client: openai.AsyncOpenAI, upstreams: Upstreams) -> None:
    agent = _agent(client, "gpt")
    session = OpenAIConversationsSession(openai_client=client)
    await Runner.run(agent, "find the moon", run_config=QUIET, session=session)
    streamed = await _streamed(agent, "and the stars", session=session)
    assert streamed.final_output == "tool said: found and the stars"
    assert _sent(upstreams, "gpt") == [
        ("system", "Be brief."), ("user", "find the moon"), ("assistant", ["lookup"]),
        ("tool", "found find the moon"), ("assistant", "tool said: found find the moon"),
        ("user", "and the stars"), ("assistant", ["lookup"]), ("tool", "found and the stars")]
    kept = await session.get_items()  # read back from the gateway
    assert [item["type"] for item in kept] == [  # type: ignore[typeddict-item]
        "message", "function_call", "function_call_output", "message"] * 2
    # Another session instance on the same conversation sees it all.
    again = OpenAIConversationsSession(conversation_id=session.session_id, openai_client=client)
    third = await Runner.run(agent, "and the sun", run_config=QUIET, session=again)
    assert third.final_output == "tool said: found and the sun"
    assert len(_sent(upstreams, "gpt")) == 12
    await session.clear_session()
    with pytest.raises(openai.NotFoundError):
        await client.conversations.retrieve(again.session_id)


async def test_runs_in_a_conversation_the_gateway_keeps(
        client: openai.AsyncOpenAI, upstreams: Upstreams) -> None:
    """``conversation_id``: the SDK sends each turn's new items alone, as ``conversation``;
    the gateway puts the earlier turns before them and adds the new ones."""
    agent, conversation = _agent(client, "gpt"), await client.conversations.create()
    await Runner.run(agent, "find the moon", run_config=QUIET, conversation_id=conversation.id)
    second = await _streamed(agent, "and the stars", conversation_id=conversation.id)
    assert second.final_output == "tool said: found and the stars"
    assert _sent(upstreams, "gpt") == [
        ("system", "Be brief."), ("user", "find the moon"), ("assistant", ["lookup"]),
        ("tool", "found find the moon"), ("assistant", "tool said: found find the moon"),
        ("user", "and the stars"), ("assistant", ["lookup"]), ("tool", "found and the stars")]
    listed = await client.conversations.items.list(conversation.id, order="asc", limit=100)
    assert [item.type for item in listed.data] == [
        "message", "function_call", "function_call_output", "message"] * 2


async def test_a_stream_cut_in_a_tool_call_fails_the_run(
        client: openai.AsyncOpenAI, upstreams: Upstreams) -> None:
    """The upstream goes away while the call's arguments stream: response.failed ends the
    run with the SDK's error; the half call is not run as a tool."""
    asked = len(upstreams.gpt.script.requests)
    upstreams.gpt.script.actions.append(Action(cut_stream_after=3))
    with pytest.raises(ModelBehaviorError, match=r"terminal event `response\.failed`"):
        await _streamed(_agent(client, "gpt"), "find the moon")
    assert len(upstreams.gpt.script.requests) == asked + 1  # no turn with a tool's output


@pytest.mark.parametrize("stream", [False, True])
async def test_reasoning_the_model_returned_goes_back_without_a_400(
        client: openai.AsyncOpenAI, upstreams: Upstreams, stream: bool) -> None:
    """A reasoning model (reasoning_content, as DeepSeek's and vLLM's) thinks before its
    tool call: the gateway gives that back as a reasoning item, the SDK sends it back with
    the tool's output (and later turns), and the gateway takes it without passing it on."""
    agent = _agent(client, "gpt")
    upstreams.gpt.script.actions.append(Action(reasoning="the moon needs a lookup"))
    first: RunResult | RunResultStreaming = (
        await _streamed(agent, "find the moon") if stream
        else await Runner.run(agent, "find the moon", run_config=QUIET))
    assert first.final_output == "tool said: found find the moon"
    assert [item.type for item in first.new_items] == [
        "reasoning_item", "tool_call_item", "tool_call_output_item", "message_output_item"]
    [reasoning] = [item.raw_item for item in first.new_items if item.type == "reasoning_item"]
    assert reasoning.content[0].text == "the moon needs a lookup"  # type: ignore[union-attr,index]
    sent = upstreams.gpt.script.requests[-1]["messages"]
    assert "reasoning" not in json.dumps(sent)  # chat has no place for it: dropped
    second = await Runner.run(agent, "and the stars", run_config=QUIET,
                              previous_response_id=first.last_response_id)
    assert second.final_output == "tool said: found and the stars"
    kept = await client.responses.input_items.list(second.last_response_id or "", order="asc")
    assert "reasoning" in [item.type for item in kept.data]
