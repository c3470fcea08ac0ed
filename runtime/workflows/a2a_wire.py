"""A2A 1.0's wire forms the pipelines' agents answer with: JSON-RPC's error codes, and
an execution as a Task (its proto JSON form), its status and its output artifact."""

from __future__ import annotations

from typing import Any

from ..store.executions import Execution, Status

# JSON-RPC's codes and A2A's own (A2A 1.0, JSON-RPC binding; 0.3 has the same but the
# last, which is 1.0's).
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
INTERNAL = -32603
TASK_NOT_FOUND, TASK_NOT_CANCELABLE, UNSUPPORTED_OPERATION = -32001, -32002, -32004
PUSH_NOT_SUPPORTED, EXTENDED_CARD_NOT_CONFIGURED, VERSION_NOT_SUPPORTED = -32003, -32007, -32009


class RpcError(Exception):
    """A call answered with JSON-RPC's error object (HTTP 200): ``code`` is one of the
    codes above."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_STATES = {
    Status.QUEUED: "TASK_STATE_SUBMITTED", Status.RUNNING: "TASK_STATE_WORKING",
    Status.PAUSED: "TASK_STATE_WORKING", Status.WAITING: "TASK_STATE_INPUT_REQUIRED",
    Status.SUCCEEDED: "TASK_STATE_COMPLETED", Status.FAILED: "TASK_STATE_FAILED",
    Status.CANCELLED: "TASK_STATE_CANCELED",
}


def task(execution: Execution) -> dict[str, Any]:
    """``execution`` as an A2A Task (its proto JSON form)."""
    found: dict[str, Any] = {"id": execution.id, "contextId": execution.id,
                             "status": task_status(execution)}
    if execution.status is Status.SUCCEEDED:
        found["artifacts"] = [output_artifact(execution)]
    return found


def task_status(execution: Execution) -> dict[str, Any]:
    """The TaskStatus of ``execution``: its state, and a message saying what it waits for
    (an approval, a resume) or why it ended (failed, cancelled)."""
    status: dict[str, Any] = {"state": _STATES[execution.status]}
    said = {
        Status.WAITING: f"waiting for an approval: POST /api/v1/executions/{execution.id}"
                        "/approvals decides it",
        Status.PAUSED: f"paused: POST /api/v1/executions/{execution.id}/resume goes on",
        Status.FAILED: execution.error, Status.CANCELLED: execution.error,
    }.get(execution.status)
    if said:
        status["message"] = {"messageId": f"{execution.id}:{execution.status.value}",
                             "role": "ROLE_AGENT", "taskId": execution.id,
                             "contextId": execution.id, "parts": [{"text": said}]}
    return status


def output_artifact(execution: Execution) -> dict[str, Any]:
    """A succeeded execution's output as the artifact ``output``: a text part, or a data
    part for JSON."""
    output = execution.output
    part = {"text": output} if isinstance(output, str) else {"data": output}
    return {"artifactId": "output", "name": "output", "parts": [part]}
