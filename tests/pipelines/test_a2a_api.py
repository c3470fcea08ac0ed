"""Pipelines as A2A agents (``/a2a/{name}``), driven by the a2a-sdk's own client in-process."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
from a2a.client import A2ACardResolver
from a2a.client.errors import AgentCardResolutionError
from a2a.helpers.proto_helpers import new_text_message
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    Task,
    TaskState,
)
from a2a.utils.errors import InvalidParamsError, TaskNotCancelableError
from google.protobuf import json_format

from .conftest import (
    BOT_KEY,
    DEV_KEY,
    FAST_ONLY_KEY,
    Serve,
    Served,
    a2a_client,
    approval_pipeline,
)
from .test_approvals import DENIED, EVERYTHING, NO_PUBLISH_FOR_BOT

GREET = """
description: Greets a topic.
input: {type: object, required: [topic], properties: {topic: {type: string}}}
steps:
  greet: {kind: transform, expression: "'about ' + input.topic"}
output: "{{ steps.greet }}"
"""


async def _client(served: Served, pipeline: str, *, polling: bool = False) -> object:
    return await a2a_client(served.http, f"http://aigw.test/a2a/{pipeline}", polling=polling)


async def _send(client: object, text: str) -> Task:
    request = SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))
    async for event in client.send_message(request):  # type: ignore[attr-defined]
        assert event.HasField("task"), event
        return event.task
    raise AssertionError("no answer")


async def test_a_pipeline_is_an_agent_whose_task_output_is_an_artifact(serve: Serve) -> None:
    served = await serve({"greet": GREET})
    card = (await served.http.get("/a2a/greet/.well-known/agent-card.json")).json()
    assert card["supportedInterfaces"] == [  # 1.0 first: preferred (0.3: test_a2a_v03)
        {"url": "http://aigw.test/a2a/greet", "protocolBinding": "JSONRPC",
         "protocolVersion": version} for version in ("1.0", "0.3")]
    assert card["skills"][0]["description"] == "Greets a topic."
    client = await _client(served, "greet")
    task = await _send(client, "owls")
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert [part.text for part in task.artifacts[0].parts] == ["about owls"]
    assert (await served.get(task.id))["output"] == "about owls"  # the task is the execution


async def test_a_task_sent_to_return_at_once_is_polled_with_get_task(serve: Serve) -> None:
    served = await serve({"greet": GREET})
    client = await _client(served, "greet", polling=True)
    task = await _send(client, '{"topic": "moths"}')
    for _ in range(200):
        if task.status.state == TaskState.TASK_STATE_COMPLETED:
            break
        assert task.status.state in (TaskState.TASK_STATE_SUBMITTED,
                                     TaskState.TASK_STATE_WORKING)
        await asyncio.sleep(0.05)
        task = await client.get_task(GetTaskRequest(id=task.id))  # type: ignore[attr-defined]
    assert json_format.MessageToDict(task)["artifacts"][0]["parts"] == [{"text": "about moths"}]


async def test_an_approval_is_input_required_and_cancel_task_cancels_it(serve: Serve) -> None:
    served = await serve({"publish": approval_pipeline()})
    client = await _client(served, "publish")
    task = await _send(client, '{"text": "hello"}')
    assert task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert "POST /api/v1/executions/" in task.status.message.parts[0].text
    approved = await served.http.post(f"/api/v1/executions/{task.id}/approvals",
                                      json={"decision": "approve"})
    assert approved.status_code == 200, approved.text
    await served.wait_for(task.id, lambda e: e["status"] == "succeeded")
    done = await client.get_task(GetTaskRequest(id=task.id))  # type: ignore[attr-defined]
    assert done.status.state == TaskState.TASK_STATE_COMPLETED
    [part] = json_format.MessageToDict(done)["artifacts"][0]["parts"]
    assert part["data"]["published"] == "published: hello"  # a JSON output: a data part

    waiting = await _send(client, '{"text": "again"}')
    cancelled = await client.cancel_task(  # type: ignore[attr-defined]
        CancelTaskRequest(id=waiting.id))
    assert cancelled.status.state == TaskState.TASK_STATE_CANCELED


async def test_callers_need_a_key_and_see_only_their_own_tasks(serve: Serve) -> None:
    served = await serve({"greet": GREET})
    task = await _send(await _client(served, "greet"), "owls")
    anonymous = await served.http.post("/a2a/greet", json={}, headers={"authorization": ""})
    assert anonymous.status_code == 401  # a JSON-RPC error, for A2A clients to show
    assert anonymous.json()["jsonrpc"] == "2.0"
    assert anonymous.json()["error"]["code"] == -32600
    assert anonymous.json()["error"]["data"] == {"type": "invalid_request_error",
                                                 "code": "invalid_api_key"}
    nowhere = await served.http.post("/a2a/nope", json={"jsonrpc": "2.0", "id": 3,
                                                        "method": "GetTask"})
    assert nowhere.status_code == 404
    assert nowhere.json() == {"jsonrpc": "2.0", "id": None, "error": {
        "code": -32600, "message": "No pipeline named 'nope'.",
        "data": {"type": "invalid_request_error", "code": "not_found"}}}
    other = await served.http.post(
        "/a2a/greet", headers={"authorization": f"Bearer {BOT_KEY}"},
        json={"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": task.id}})
    assert other.json() == {"jsonrpc": "2.0", "id": 1,
                            "error": {"code": -32001, "message": f"no task '{task.id}'"}}
    unknown = await served.http.post("/a2a/greet", json={"jsonrpc": "2.0", "id": 2,
                                                         "method": "ListTasks"})
    assert unknown.json()["error"]["code"] == -32601
    assert (await served.http.get("/a2a/nope/.well-known/agent-card.json")).status_code == 404
    with pytest.raises(InvalidParamsError, match="does not match pipeline 'greet'"):
        await _send(await _client(served, "greet"), "{}")  # not the input the schema takes


async def test_a_card_refused_is_answered_as_a2a_answers_an_http_call(serve: Serve) -> None:
    """The card's GET is refused with A2A's HTTP+JSON error (google.rpc.Status), not the
    OpenAI error object, and a 401 names the Bearer scheme."""
    served = await serve({"greet": GREET})
    card = await A2ACardResolver(served.http, "http://aigw.test/a2a/greet").get_agent_card()
    assert card.name == "greet"
    for key, pipeline, status, code in (
        ("", "greet", 401, "UNAUTHENTICATED"), (DEV_KEY, "nope", 404, "NOT_FOUND"),
        (FAST_ONLY_KEY, "greet", 404, "NOT_FOUND"),  # may not run it: as if it were not
    ):
        headers = {"authorization": f"Bearer {key}" if key else ""}
        resolver = A2ACardResolver(served.http, f"http://aigw.test/a2a/{pipeline}")
        with pytest.raises(AgentCardResolutionError) as refused:
            await resolver.get_agent_card(http_kwargs={"headers": headers})
        assert refused.value.status_code == status
        answer = await served.http.get(f"/a2a/{pipeline}/.well-known/agent-card.json",
                                       headers=headers)
        error = answer.json()["error"]
        assert (answer.status_code, error["code"], error["status"]) == (status, status, code)
        assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
        assert "type" not in error and "param" not in error
    assert answer.json()["error"]["message"] == "No pipeline named 'greet'."
    anonymous = await served.http.get("/a2a/greet/.well-known/agent-card.json",
                                      headers={"authorization": ""})
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.json()["error"]["details"][0]["reason"] == "INVALID_API_KEY"


async def test_sending_a_message_is_checked_by_cedar_as_running_the_pipeline(
    serve: Serve, tmp_path: Path
) -> None:
    root = tmp_path / "policed"
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "gateway.cedar").write_text(EVERYTHING + NO_PUBLISH_FOR_BOT)
    served = await serve({"publish": approval_pipeline()}, root=root)
    refused = await served.http.post(
        "/a2a/publish", headers={"authorization": f"Bearer {BOT_KEY}"},
        json={"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": {
            "messageId": "m1", "role": "ROLE_USER", "parts": [{"text": "{}"}]}}})
    assert refused.status_code == 403, refused.text
    assert refused.json() == {"jsonrpc": "2.0", "id": 1, "error": {
        # The refusal on its own reads as a sentence (DENIED is as joined after a colon)
        "code": -32600, "message": DENIED[:1].upper() + DENIED[1:],
        "data": {"type": "permission_denied", "code": "permission_denied"}}}


async def test_each_call_has_its_log_line_and_metrics(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """POST /a2a/{name} left no access log line and no metric, as POST /v1/pipelines does."""
    served = await serve({"greet": GREET})
    caplog.set_level(logging.INFO, logger="aigw.access")
    task = await _send(await _client(served, "greet"), "owls")
    refused = await served.http.post("/a2a/greet", json={},
                                     headers={"authorization": "Bearer sk-nobody"})
    assert refused.status_code == 401
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "aigw.access"]
    calls = [line for line in lines if line["endpoint"] == "a2a"]
    assert [(line["route"], line["status"], line["key"]) for line in calls] == [
        ("pipeline:greet", 200, "dev"), (None, 401, None)]
    assert (await served.get(task.id))["status"] == "succeeded"
    metrics = (await served.http.get("/metrics")).text
    assert 'aigw_requests_total{deployment="_none",provider="_none",route="pipeline:greet",' \
        'status="200",team="eng"} 1.0' in metrics


async def test_a_stream_ends_after_its_time_with_the_tasks_status(serve: Serve) -> None:
    """A stream is open at most 300 s, as SendMessage waits: then it says where the task
    stands and ends, and the client may subscribe again."""
    ahead = [0.0]
    served = await serve({"publish": approval_pipeline()},
                         clock=lambda: time.time() + ahead[0])
    started = await served.start("publish", {"text": "hello"})
    await served.wait_for(started["id"], lambda e: e["status"] == "waiting")
    paused = await served.http.post(f"/api/v1/executions/{started['id']}/pause")
    assert paused.status_code == 202, paused.text
    await served.wait_for(started["id"], lambda e: e["status"] == "paused")
    client = await a2a_client(served.http, "http://aigw.test/a2a/publish", streaming=True)

    async def subscribed() -> list[StreamResponse]:
        request = SubscribeToTaskRequest(id=started["id"])
        return [event async for event in client.subscribe(request)]  # type: ignore[attr-defined]

    stream = asyncio.create_task(subscribed())
    await asyncio.sleep(0.3)  # it follows the task now
    assert not stream.done()
    ahead[0] = 301.0
    events = await asyncio.wait_for(stream, 10)
    assert [event.WhichOneof("payload") for event in events] == ["task", "status_update"]
    status = events[-1].status_update.status
    assert status.state == TaskState.TASK_STATE_WORKING
    assert status.message.parts[0].text.startswith("paused: POST /api/v1/executions/")


async def test_cancelling_a_task_that_has_ended_is_task_not_cancelable(serve: Serve) -> None:
    """The store's conflict (ExecutionConflict) was not the gateway's Conflict the code
    caught: the call was a 500, where A2A names TaskNotCancelableError."""
    served = await serve({"greet": GREET})
    client = await _client(served, "greet")
    task = await _send(client, "owls")
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    with pytest.raises(TaskNotCancelableError, match="has already succeeded"):
        await client.cancel_task(CancelTaskRequest(id=task.id))  # type: ignore[attr-defined]
