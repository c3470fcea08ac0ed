"""Pipelines as A2A agents, streamed: a real ``aigw serve`` and the a2a-sdk's own client
with streaming on (SendStreamingMessage, SubscribeToTask over SSE), on the gateway of
a2a_gateway.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from a2a.helpers.proto_helpers import new_text_message
from a2a.types.a2a_pb2 import (
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import TaskNotFoundError, UnsupportedOperationError

from ..conftest import DEV_KEY
from ..pipelines.conftest import BOT_KEY
from .a2a_gateway import a2a_agent as _agent
from .server import Server
from .test_workflows import CHAIN_OUTPUT

pytestmark = pytest.mark.e2e


@pytest.fixture
def gateway(a2a_gateway: Server) -> Server:
    return a2a_gateway


def _message(text: str) -> SendMessageRequest:
    return SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))


def _seen(event: StreamResponse) -> tuple[str, str]:
    """What one StreamResponse says: the Task's state, a status update's, or an artifact's
    text."""
    if event.HasField("task"):
        return "task", TaskState.Name(event.task.status.state)
    if event.HasField("status_update"):
        return "status", TaskState.Name(event.status_update.status.state)
    assert event.HasField("artifact_update"), event
    [part] = event.artifact_update.artifact.parts
    return "artifact", part.text


def _a2a_lines(gateway: Server) -> list[dict[str, Any]]:
    """The access log lines of POST /a2a/{name}, oldest first."""
    lines = [json.loads(line) for line in gateway.log.splitlines()
             if line.startswith("{") and '"endpoint":"a2a"' in line]
    return lines


def _wait(gateway: Server, execution_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        found: dict[str, Any] = httpx.get(
            f"{gateway.base_url}/api/v1/executions/{execution_id}", timeout=10,
            headers={"authorization": f"Bearer {DEV_KEY}"}).json()
        if found["status"] == status:
            return found
        assert time.monotonic() < deadline, f"timed out; last seen {found}"
        time.sleep(0.05)


async def test_a_streamed_message_shows_its_task_working_then_completed_with_the_output(
    gateway: Server,
) -> None:
    async with _agent(gateway, "chain") as (client, _http):
        # The card says it streams: the client sends SendStreamingMessage.
        events = [_seen(event) async for event in client.send_message(_message("{}"))]
    assert events == [("task", "TASK_STATE_SUBMITTED"), ("status", "TASK_STATE_WORKING"),
                      ("artifact", CHAIN_OUTPUT), ("status", "TASK_STATE_COMPLETED")]
    # Its access log line is written as the stream ends, as a chat stream's is.
    line = _a2a_lines(gateway)[-1]
    assert (line["route"], line["status"], line["stream"], line["key"]) == \
        ("pipeline:chain", 200, True, "dev")


async def test_an_approval_is_input_required_in_the_stream_until_it_is_decided(
    gateway: Server,
) -> None:
    events = []
    async with _agent(gateway, "publish") as (client, http):
        async for event in client.send_message(_message('{"text": "hello"}')):
            events.append(_seen(event))
            if events[-1] == ("status", "TASK_STATE_INPUT_REQUIRED"):
                [part] = event.status_update.status.message.parts
                assert "POST /api/v1/executions/" in part.text
                approved = await http.post(
                    f"/api/v1/executions/{event.status_update.task_id}/approvals",
                    json={"decision": "approve"})
                assert approved.status_code == 200, approved.text
    assert events[:3] == [("task", "TASK_STATE_SUBMITTED"), ("status", "TASK_STATE_WORKING"),
                          ("status", "TASK_STATE_INPUT_REQUIRED")]
    assert events[-2:] == [("artifact", "published: hello"), ("status", "TASK_STATE_COMPLETED")]


async def test_subscribing_to_a_running_task_streams_it_to_its_end_once(
    gateway: Server,
) -> None:
    async with _agent(gateway, "chain") as (client, http):
        started = await http.post("/api/v1/executions", json={"pipeline": "chain", "input": {}})
        task_id = started.json()["id"]
        events = []
        async for event in client.subscribe(SubscribeToTaskRequest(id=task_id)):
            if event.HasField("task"):
                assert event.task.id == task_id
            events.append(_seen(event))
        assert events[0][0] == "task"  # its state then, first
        assert events[-2:] == [("artifact", CHAIN_OUTPUT), ("status", "TASK_STATE_COMPLETED")]
        # Ended, there is nothing to stream: A2A 1.0 refuses it (GetTask reads it).
        with pytest.raises(UnsupportedOperationError, match="has already succeeded"):
            async for _ in client.subscribe(SubscribeToTaskRequest(id=task_id)):
                pass


async def test_another_keys_task_cannot_be_subscribed_to_and_refusals_come_before_a_stream(
    gateway: Server,
) -> None:
    started = httpx.post(f"{gateway.base_url}/api/v1/executions", timeout=10,
                         headers={"authorization": f"Bearer {DEV_KEY}"},
                         json={"pipeline": "publish", "input": {"text": "x"}})
    task_id = started.json()["id"]
    async with _agent(gateway, "publish", key=BOT_KEY) as (other, _http):
        with pytest.raises(TaskNotFoundError):
            async for _ in other.subscribe(SubscribeToTaskRequest(id=task_id)):
                pass
    # No key: the JSON-RPC error object at 401, not a stream.
    anonymous = httpx.post(f"{gateway.base_url}/a2a/publish", timeout=10, json={
        "jsonrpc": "2.0", "id": 7, "method": "SubscribeToTask", "params": {"id": task_id}})
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/json"
    assert anonymous.json()["error"]["data"]["code"] == "invalid_api_key"
    cancelled = httpx.post(f"{gateway.base_url}/api/v1/executions/{task_id}/cancel",
                           timeout=10, headers={"authorization": f"Bearer {DEV_KEY}"})
    assert cancelled.status_code == 202


async def test_a_client_that_leaves_mid_stream_ends_only_its_stream(gateway: Server) -> None:
    async with _agent(gateway, "chain") as (client, _http):
        stream = client.send_message(_message("{}"))
        first = await anext(stream)
        task_id = first.task.id
        assert _seen(first) == ("task", "TASK_STATE_SUBMITTED")
        second = await anext(stream)
        assert _seen(second) == ("status", "TASK_STATE_WORKING")
    # The connection is closed: the execution runs on to its end all the same.
    done = _wait(gateway, task_id, "succeeded")
    assert done["output"] == CHAIN_OUTPUT
    line = next(line for line in reversed(_a2a_lines(gateway)) if line["status"] == 499)
    assert (line["route"], line["error"], line["stream"]) == \
        ("pipeline:chain", "client_disconnected", True)
