"""Pipelines as A2A 0.3 agents: the same ``/a2a/{name}`` endpoint answering 0.3's methods
in 0.3's shapes, driven by the a2a-sdk's 0.3 client and by the spec's own payloads."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from a2a.client import A2ACardResolver, Client
from a2a.compat.v0_3 import types as v03_types
from a2a.helpers.proto_helpers import new_text_message
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    Role,
    SendMessageRequest,
    Task,
    TaskState,
)
from a2a.utils.errors import TaskNotCancelableError, TaskNotFoundError

from aigw.runtime.workflows import a2a_v03

from .conftest import BOT_KEY, Serve, Served, a2a_client, approval_pipeline
from .test_a2a_api import GREET


async def _client(served: Served, pipeline: str, *, polling: bool = False) -> Client:
    return await a2a_client(served.http, f"http://aigw.test/a2a/{pipeline}",
                            polling=polling, version="0.3")


async def _send(client: Client, text: str) -> Task:
    request = SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))
    async for event in client.send_message(request):
        assert event.HasField("task"), event
        return event.task
    raise AssertionError("no answer")


async def _call(served: Served, method: str, params: dict[str, Any],
                **headers: str) -> dict[str, Any]:
    """The JSON-RPC answer to ``method`` on the agent ``greet``, as a 0.3 client sends it."""
    answer = await served.http.post("/a2a/greet", headers=headers, json={
        "jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def _joke(message_id: str, **configuration: Any) -> dict[str, Any]:
    """message/send's params as A2A 0.3's spec shows them (9.2)."""
    params: dict[str, Any] = {"message": {
        "role": "user", "parts": [{"kind": "text", "text": "owls"}], "messageId": message_id},
        "metadata": {}}
    if configuration:
        params["configuration"] = configuration
    return params


async def test_the_card_names_the_0_3_interface_for_both_kinds_of_client(
    serve: Serve,
) -> None:
    served = await serve({"greet": GREET})
    read = (await served.http.get("/a2a/greet/.well-known/agent-card.json")).json()
    # As a 0.3 client reads it: its own fields, valid by 0.3's types.
    card = v03_types.AgentCard.model_validate(read)
    assert (card.url, card.preferred_transport, card.protocol_version) == \
        ("http://aigw.test/a2a/greet", "JSONRPC", "0.3")
    assert card.security == [{"aigw": []}]
    scheme = card.security_schemes["aigw"].root  # type: ignore[index]
    assert isinstance(scheme, v03_types.HTTPAuthSecurityScheme)
    assert scheme.scheme == "bearer"
    # As a 1.0 client reads it: both interfaces, 1.0 first, the scheme still Bearer.
    parsed = await A2ACardResolver(served.http, "http://aigw.test/a2a/greet").get_agent_card()
    assert [(i.protocol_binding, i.protocol_version) for i in parsed.supported_interfaces] \
        == [("JSONRPC", "1.0"), ("JSONRPC", "0.3")]
    assert parsed.security_schemes["aigw"].http_auth_security_scheme.scheme == "bearer"


async def test_a_0_2_client_finds_the_card_where_0_2_put_it_and_is_served_as_0_3s(
    serve: Serve,
) -> None:
    """A2A 0.2's clients (the a2a-sdk's before 0.3, Google ADK's) read the card at
    ``/.well-known/agent.json`` and call 0.3's methods, with no ``A2A-Version`` and with
    the ``acceptedOutputModes`` 0.2 required."""
    served = await serve({"greet": GREET})
    old = await served.http.get("/a2a/greet/.well-known/agent.json")
    assert old.status_code == 200, old.text
    assert old.json() == (await served.http.get("/a2a/greet/.well-known/agent-card.json")).json()
    sent = await _call(served, "message/send", _joke("m-02", acceptedOutputModes=["text"]))
    assert sent["result"]["status"] == {"state": "completed"}


async def test_a_0_3_client_sends_gets_and_cancels_tasks(serve: Serve) -> None:
    served = await serve({"greet": GREET, "publish": approval_pipeline()})
    client = await _client(served, "greet")
    task = await _send(client, "owls")
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert [part.text for part in task.artifacts[0].parts] == ["about owls"]
    assert (await served.get(task.id))["output"] == "about owls"  # the task is the execution
    # blocking: false, then polled with tasks/get.
    polling = await _client(served, "greet", polling=True)
    task = await _send(polling, '{"topic": "moths"}')
    while task.status.state != TaskState.TASK_STATE_COMPLETED:
        assert task.status.state in (TaskState.TASK_STATE_SUBMITTED,
                                     TaskState.TASK_STATE_WORKING)
        await asyncio.sleep(0.05)
        task = await polling.get_task(GetTaskRequest(id=task.id))
    assert [part.text for part in task.artifacts[0].parts] == ["about moths"]
    with pytest.raises(TaskNotCancelableError, match="has already succeeded"):
        await client.cancel_task(CancelTaskRequest(id=task.id))

    publish = await _client(served, "publish")
    waiting = await _send(publish, '{"text": "hello"}')
    assert waiting.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert "POST /api/v1/executions/" in waiting.status.message.parts[0].text
    cancelled = await publish.cancel_task(CancelTaskRequest(id=waiting.id))
    assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
    served.http.headers["authorization"] = f"Bearer {BOT_KEY}"  # another team's key
    with pytest.raises(TaskNotFoundError):
        await publish.get_task(GetTaskRequest(id=waiting.id))


async def test_0_3_calls_are_answered_in_0_3_shapes(serve: Serve) -> None:
    served = await serve({"greet": GREET})
    sent = await _call(served, "message/send", _joke("m-1"))
    task = sent["result"]
    assert (task["kind"], task["contextId"], task["status"]) == \
        ("task", task["id"], {"state": "completed"})
    assert task["artifacts"] == [{"artifactId": "output", "name": "output",
                                  "parts": [{"kind": "text", "text": "about owls"}]}]
    assert (await _call(served, "tasks/get", {"id": task["id"]}))["result"] == task
    started = (await _call(served, "message/send", _joke("m-2", blocking=False)))["result"]
    assert started["status"]["state"] in ("submitted", "working")
    await served.wait_for(started["id"], lambda e: e["status"] == "succeeded")
    ended = await _call(served, "tasks/cancel", {"id": started["id"]})
    assert ended["error"]["code"] == -32002  # TaskNotCancelableError
    missing = await _call(served, "tasks/cancel", {"id": "exec_nope"})
    assert missing["error"] == {"code": -32001, "message": "no task 'exec_nope'"}


async def test_the_a2a_version_header_picks_the_version_and_push_is_refused(
    serve: Serve,
) -> None:
    served = await serve({"greet": GREET})
    said = await _call(served, "message/send", _joke("m-3"), **{"A2A-Version": "0.3.0"})
    assert said["result"]["kind"] == "task"  # a patch number is not negotiated
    for method, version, code in (
        ("message/send", "1.0", -32601),  # 1.0 has no such method
        ("SendMessage", "0.3", -32601),
        ("message/send", "0.5", -32009),  # VersionNotSupportedError
    ):
        answer = await _call(served, method, _joke("m-4"), **{"A2A-Version": version})
        assert answer["error"]["code"] == code, (method, version, answer)
    answer = (await served.http.post("/a2a/greet?A2A-Version=1.0", json={
        "jsonrpc": "2.0", "id": 1, "method": "tasks/get", "params": {"id": "x"}})).json()
    assert answer["error"]["code"] == -32601  # the query parameter, as the header
    # Push notifications: refused in both versions' words, not "method not found".
    config = {"url": "https://hooks.example/a2a"}
    for method, params in (
        ("tasks/pushNotificationConfig/set", {"taskId": "x", "pushNotificationConfig": config}),
        ("CreateTaskPushNotificationConfig", {"taskId": "x", "url": config["url"]}),
        ("message/send", _joke("m-5", pushNotificationConfig=config)),
        ("SendMessage", {"message": {"messageId": "m-6", "role": "ROLE_USER",
                                     "parts": [{"text": "owls"}]},
                         "configuration": {"taskPushNotificationConfig": config}}),
    ):
        answer = await _call(served, method, params)
        assert answer["error"]["code"] == -32003, (method, answer)
        assert answer["error"]["message"].startswith("push notifications are not supported")


async def test_the_extended_card_is_refused_in_each_version_s_words(serve: Serve) -> None:
    """The card says there is none (0.3's supportsAuthenticatedExtendedCard, 1.0's
    capabilities.extendedAgentCard): 1.0 answers UnsupportedOperationError (3.3.4), 0.3
    its one error for the method, AuthenticatedExtendedCardNotConfiguredError; neither
    "method not found"."""
    served = await serve({"greet": GREET})
    card = (await served.http.get("/a2a/greet/.well-known/agent-card.json")).json()
    assert card["supportsAuthenticatedExtendedCard"] is False
    assert card["capabilities"]["extendedAgentCard"] is False
    for method, headers, code in (
        ("agent/getAuthenticatedExtendedCard", {}, -32007),
        ("agent/getAuthenticatedExtendedCard", {"A2A-Version": "0.3"}, -32007),
        ("GetExtendedAgentCard", {}, -32004),
        ("GetExtendedAgentCard", {"A2A-Version": "1.0"}, -32004),
    ):
        answer = await _call(served, method, {}, **headers)
        assert answer["error"]["code"] == code, (method, headers, answer)
        assert "no extended card" in answer["error"]["message"]


async def test_a_stream_whose_time_is_up_ends_with_a_final_status_update(
    serve: Serve,
) -> None:
    """0.3's ``final`` marks the last event of a stream: the task's end, or, as here, the
    status the task has when the stream's 300 s are up (it may be resubscribed to)."""
    ahead = [0.0]
    served = await serve({"publish": approval_pipeline()},
                         clock=lambda: time.time() + ahead[0])
    started = await served.start("publish", {"text": "hello"})
    await served.wait_for(started["id"], lambda e: e["status"] == "waiting")
    # Paused, it stays as it is while the clock jumps (a waiting approval would time out).
    paused = await served.http.post(f"/api/v1/executions/{started['id']}/pause")
    assert paused.status_code == 202, paused.text
    await served.wait_for(started["id"], lambda e: e["status"] == "paused")

    async def resubscribed() -> list[dict[str, Any]]:
        async with served.http.stream("POST", "/a2a/publish", json={
            "jsonrpc": "2.0", "id": 2, "method": "tasks/resubscribe",
            "params": {"id": started["id"]}}) as answer:
            return [json.loads(line.removeprefix("data: ")) async for line
                    in answer.aiter_lines() if line.startswith("data: ")]

    stream = asyncio.create_task(resubscribed())
    await asyncio.sleep(0.3)  # it follows the task now
    assert not stream.done()
    ahead[0] = 301.0
    task, last = [event["result"] for event in await asyncio.wait_for(stream, 10)]
    assert (task["kind"], task["status"]["state"]) == ("task", "working")
    assert (last["kind"], last["status"]["state"], last["final"]) == \
        ("status-update", "working", True)
    said = last["status"]["message"]
    assert (said["kind"], said["role"]) == ("message", "agent")
    assert said["parts"][0]["text"].startswith("paused: POST /api/v1/executions/")


def test_outputs_that_are_not_objects_are_held_as_0_3_data_parts_are() -> None:
    assert a2a_v03.part({"data": [1, 2]}) == {
        "kind": "data", "data": {"value": [1, 2]}, "metadata": {"data_part_compat": True}}
    assert a2a_v03.part({"data": {"a": 1}}) == {"kind": "data", "data": {"a": 1}}


def test_an_artifact_update_keeps_append_last_chunk_and_metadata() -> None:
    update = {"taskId": "t", "contextId": "t", "append": True, "lastChunk": False,
              "metadata": {"seq": 2}, "artifact": {"artifactId": "a", "parts": [{"text": "x"}]}}
    assert a2a_v03.stream_result({"artifactUpdate": update}, last=False) == {
        "kind": "artifact-update", "taskId": "t", "contextId": "t", "append": True,
        "lastChunk": False, "metadata": {"seq": 2},
        "artifact": {"artifactId": "a", "parts": [{"kind": "text", "text": "x"}]}}
    # 1.0's JSON leaves its defaults (false) out; 0.3's answer says them.
    bare = {"taskId": "t", "contextId": "t", "artifact": update["artifact"]}
    shown = a2a_v03.stream_result({"artifactUpdate": bare}, last=True)
    assert (shown["append"], shown["lastChunk"]) == (False, False)


def test_a_0_3_agents_answers_are_read_as_the_1_0_ones_they_were_raised_from() -> None:
    """An ``agent`` step calling a 0.3 agent lowers its answers: what ``task`` and
    ``message`` raise comes back as it was, data held under ``value`` included."""
    said = {"messageId": "m", "role": "ROLE_AGENT", "parts": [{"text": "done"}]}
    found = {"id": "t", "contextId": "t",
             "status": {"state": "TASK_STATE_COMPLETED", "message": said},
             "artifacts": [{"artifactId": "a", "parts": [
                 {"text": "x"}, {"data": [1, 2]}, {"data": {"a": 1}, "metadata": {"k": 1}}]}]}
    assert a2a_v03.lowered_task(a2a_v03.task(found)) == found
    assert a2a_v03.lowered_result(a2a_v03.message(said)) == {"message": said}
    assert a2a_v03.lowered_result(a2a_v03.task(found)) == {"task": found}
    file = {"kind": "file", "file": {"uri": "https://x/f.pdf", "mimeType": "application/pdf"}}
    assert a2a_v03.lowered_task({"kind": "task", "id": "t", "artifacts": [
        {"artifactId": "f", "parts": [file]}]})["artifacts"][0]["parts"] == [
        {"url": "https://x/f.pdf", "mediaType": "application/pdf"}]


def test_a_call_to_a_0_3_agent_is_raised_into_0_3s_params() -> None:
    sent = {"message": {"messageId": "m", "role": "ROLE_USER", "parts": [{"text": "hi"}]},
            "configuration": {"returnImmediately": True}}
    assert a2a_v03.raised_params(sent) == {
        "message": {"kind": "message", "messageId": "m", "role": "user",
                    "parts": [{"kind": "text", "text": "hi"}]},
        "configuration": {"blocking": False}}
    assert a2a_v03.params(a2a_v03.raised_params(sent)) == {
        **a2a_v03.raised_params(sent), "configuration": sent["configuration"]}
    assert a2a_v03.CALLS == {"SendMessage": "message/send", "GetTask": "tasks/get",
                             "CancelTask": "tasks/cancel"}
