"""Pipelines as A2A 0.3 agents over a real ``aigw serve`` (a2a_gateway.py): the a2a-sdk's
0.3 client (message/send, tasks/get, tasks/cancel, message/stream, tasks/resubscribe),
and the SSE of message/stream read as the spec's payloads are written."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from a2a.helpers.proto_helpers import new_text_message
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import TaskNotFoundError, UnsupportedOperationError

from ..conftest import DEV_KEY
from ..pipelines.conftest import BOT_KEY
from .a2a_gateway import a2a_agent
from .server import Server
from .test_workflows import CHAIN_OUTPUT

pytestmark = pytest.mark.e2e


def _message(text: str) -> SendMessageRequest:
    return SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))


def _seen(event: StreamResponse) -> tuple[str, str]:
    if event.HasField("task"):
        return "task", TaskState.Name(event.task.status.state)
    if event.HasField("status_update"):
        return "status", TaskState.Name(event.status_update.status.state)
    [part] = event.artifact_update.artifact.parts
    return "artifact", part.text


async def test_a_0_3_client_sends_gets_and_cancels(a2a_gateway: Server) -> None:
    async with a2a_agent(a2a_gateway, "chain", streaming=False, version="0.3") as (client, _):
        [sent] = [event async for event in client.send_message(_message("{}"))]
        assert sent.task.status.state == TaskState.TASK_STATE_COMPLETED
        assert sent.task.artifacts[0].parts[0].text == CHAIN_OUTPUT
        read = await client.get_task(GetTaskRequest(id=sent.task.id))
        assert read.artifacts[0].parts[0].text == CHAIN_OUTPUT
    async with a2a_agent(a2a_gateway, "publish", streaming=False, version="0.3") as (
            client, _):
        [sent] = [event async for event in client.send_message(_message('{"text": "x"}'))]
        assert sent.task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        cancelled = await client.cancel_task(CancelTaskRequest(id=sent.task.id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
    async with a2a_agent(a2a_gateway, "publish", BOT_KEY, version="0.3") as (other, _):
        with pytest.raises(TaskNotFoundError):  # -32001: another key's task
            await other.get_task(GetTaskRequest(id=sent.task.id))
    anonymous = httpx.post(f"{a2a_gateway.base_url}/a2a/publish", timeout=10, json={
        "jsonrpc": "2.0", "id": 7, "method": "tasks/get", "params": {"id": sent.task.id}})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["data"]["code"] == "invalid_api_key"


async def test_a_0_3_stream_and_resubscription(a2a_gateway: Server) -> None:
    async with a2a_agent(a2a_gateway, "chain", version="0.3") as (client, http):
        events = [_seen(event) async for event in client.send_message(_message("{}"))]
        assert events == [("task", "TASK_STATE_SUBMITTED"), ("status", "TASK_STATE_WORKING"),
                          ("artifact", CHAIN_OUTPUT), ("status", "TASK_STATE_COMPLETED")]
        started = await http.post("/api/v1/executions", json={"pipeline": "chain", "input": {}})
        task_id = started.json()["id"]
        events = [_seen(event) async for event in
                  client.subscribe(SubscribeToTaskRequest(id=task_id))]
        assert events[0][0] == "task"
        assert events[-2:] == [("artifact", CHAIN_OUTPUT), ("status", "TASK_STATE_COMPLETED")]
        with pytest.raises(UnsupportedOperationError, match="has already succeeded"):
            async for _ in client.subscribe(SubscribeToTaskRequest(id=task_id)):
                pass


def test_message_stream_is_sse_of_0_3_objects_the_last_one_final(a2a_gateway: Server) -> None:
    """The spec's own message/stream (A2A 0.3, 9.3): each ``data:`` a JSON-RPC response
    whose result has its ``kind``; the stream ends after the ``final`` status update."""
    results: list[dict[str, Any]] = []
    with httpx.stream("POST", f"{a2a_gateway.base_url}/a2a/chain", timeout=60, json={
        "jsonrpc": "2.0", "id": "s-1", "method": "message/stream", "params": {"message": {
            "role": "user", "parts": [{"kind": "text", "text": "{}"}],
            "messageId": "bbb7dee1-cf5c-4683-8a6f-4114529da5eb"}, "metadata": {}},
    }, headers={"authorization": f"Bearer {DEV_KEY}"}) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                assert event["id"] == "s-1"
                results.append(event["result"])
    task, working, artifact, completed = results
    assert (task["kind"], task["status"]["state"]) == ("task", "submitted")
    assert (working["kind"], working["status"]["state"], working["final"]) == \
        ("status-update", "working", False)
    assert artifact == {"kind": "artifact-update", "taskId": task["id"],
                        "contextId": task["id"], "append": False, "lastChunk": True,
                        "artifact": {
                            "artifactId": "output", "name": "output",
                            "parts": [{"kind": "text", "text": CHAIN_OUTPUT}]}}
    assert (completed["status"]["state"], completed["final"]) == ("completed", True)
