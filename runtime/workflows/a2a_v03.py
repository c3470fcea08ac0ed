"""A2A 0.3's JSON-RPC wire, translated at the edge to and from 1.0's, which the agents
speak inside: one endpoint, one set of checks and one execution path for both.

A 0.3 call names its method with a slash (``message/send``, ``tasks/get``, ...): its
method is mapped to 1.0's (``SendMessage``, ``GetTask``), its params' few differences
(``configuration.blocking``) lowered into 1.0's, and the 1.0 result it gets is raised
into 0.3's shapes: objects with a ``kind`` (``task``, ``message``, ``status-update``,
``artifact-update``; parts ``{"kind": "text", "text"}``), states in kebab case
(``input-required``), roles ``user``/``agent``, a Task where 1.0 wraps it (``{"task":
...}``), and a ``final`` flag on the status update that ends a stream.

The version a call speaks (A2A 1.0, section 3.6) is its ``A2A-Version`` header (or query
parameter), ``Major.Minor``: ``1.0`` and ``0.3`` are served, any other is
VersionNotSupportedError. Without one, the spec reads a call as 0.3; 1.0's method names
do not exist in 0.3, so a call without it is read by its method's name, as 1.0's
clients that send no header were before. A method of the other version than the header
names is MethodNotFound.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from .a2a_wire import (
    EXTENDED_CARD_NOT_CONFIGURED,
    METHOD_NOT_FOUND,
    UNSUPPORTED_OPERATION,
    VERSION_NOT_SUPPORTED,
    RpcError,
)

PROTOCOL_VERSION = "0.3"

# 0.3's methods and the 1.0 methods that do their work (push notifications are refused
# there, for both: the card says ``pushNotifications: false``).
METHODS: Mapping[str, str] = MappingProxyType({
    "message/send": "SendMessage",
    "message/stream": "SendStreamingMessage",
    "tasks/get": "GetTask",
    "tasks/cancel": "CancelTask",
    "tasks/resubscribe": "SubscribeToTask",
    "tasks/pushNotificationConfig/set": "CreateTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/get": "GetTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/list": "ListTaskPushNotificationConfigs",
    "tasks/pushNotificationConfig/delete": "DeleteTaskPushNotificationConfig",
    "agent/getAuthenticatedExtendedCard": "GetExtendedAgentCard",
})

_STATES: Mapping[str, str] = MappingProxyType({
    "TASK_STATE_SUBMITTED": "submitted", "TASK_STATE_WORKING": "working",
    "TASK_STATE_INPUT_REQUIRED": "input-required", "TASK_STATE_COMPLETED": "completed",
    "TASK_STATE_CANCELED": "canceled", "TASK_STATE_FAILED": "failed",
    "TASK_STATE_REJECTED": "rejected", "TASK_STATE_AUTH_REQUIRED": "auth-required",
})
_FINAL_STATES = frozenset({"completed", "canceled", "failed", "rejected"})
_ROLES: Mapping[str, str] = MappingProxyType({"ROLE_USER": "user", "ROLE_AGENT": "agent"})


def negotiated(method: str, version: str | None) -> tuple[str, bool]:
    """The 1.0 method a call is served by, and whether it speaks 0.3, from its method and
    its ``A2A-Version`` (None or empty: not said).

    >>> negotiated("tasks/get", None), negotiated("GetTask", "1.0")
    (('GetTask', True), ('GetTask', False))
    """
    legacy = method in METHODS
    if version:
        said = ".".join(version.strip().split(".")[:2])  # a patch number is not negotiated
        if said not in (PROTOCOL_VERSION, "1.0"):
            raise RpcError(VERSION_NOT_SUPPORTED, f"A2A-Version '{version}' is not "
                           "supported; this agent speaks A2A 1.0 and 0.3")
        if legacy != (said == PROTOCOL_VERSION):
            raise RpcError(METHOD_NOT_FOUND, f"method '{method}' is not A2A {said}'s, "
                           "the version the A2A-Version header names")
    return (METHODS[method], True) if legacy else (method, False)


def error_code(method: str, code: int) -> int:
    """The code 0.3 gives the error 1.0 answered ``method`` (1.0's) with: an agent without
    an extended card refuses GetExtendedAgentCard with UnsupportedOperationError (1.0,
    3.3.4), and agent/getAuthenticatedExtendedCard with 0.3's one error for it,
    AuthenticatedExtendedCardNotConfiguredError; the others are the same in both."""
    if method == "GetExtendedAgentCard" and code == UNSUPPORTED_OPERATION:
        return EXTENDED_CARD_NOT_CONFIGURED
    return code


def params(given: dict[str, Any]) -> dict[str, Any]:
    """0.3's params as 1.0's: MessageSendParams' ``configuration`` (``blocking: false``
    is ``returnImmediately``; a ``pushNotificationConfig`` is 1.0's
    ``taskPushNotificationConfig``). The rest is the same: a message's ``messageId`` and
    parts (``text``, ``data``), a task's ``id``."""
    configuration = given.get("configuration")
    if not isinstance(configuration, dict):
        return given
    lowered = {"returnImmediately": configuration.get("blocking") is False}
    if configuration.get("pushNotificationConfig") is not None:
        lowered["taskPushNotificationConfig"] = configuration["pushNotificationConfig"]
    return {**given, "configuration": lowered}


def result(found: dict[str, Any]) -> dict[str, Any]:
    """A 1.0 result as 0.3's: SendMessageResponse's task or message, or a Task as is."""
    if "task" in found or "message" in found:
        return stream_result(found, last=False)
    return task(found)


def stream_result(found: dict[str, Any], *, last: bool) -> dict[str, Any]:
    """A 1.0 StreamResponse (or SendMessageResponse) as the 0.3 object it holds; ``last``
    says the stream ends after it (0.3's ``final``, on a status update)."""
    if "task" in found:
        return task(found["task"])
    if "statusUpdate" in found:
        update = found["statusUpdate"]
        shown = status(update["status"])
        return {"kind": "status-update", "taskId": update["taskId"],
                "contextId": update["contextId"], "status": shown,
                "final": last or shown["state"] in _FINAL_STATES}
    if "artifactUpdate" in found:
        update = found["artifactUpdate"]
        # 0.3's fields are 1.0's: ``append`` and ``lastChunk`` (false where 1.0 leaves
        # them out, its JSON form's default) and ``metadata``, passed on as they are.
        return {"kind": "artifact-update", **update, "artifact": artifact(update["artifact"]),
                "append": update.get("append", False),
                "lastChunk": update.get("lastChunk", False)}
    return message(found["message"])


def task(found: dict[str, Any]) -> dict[str, Any]:
    raised = {"kind": "task", **found, "status": status(found["status"])}
    if "artifacts" in found:
        raised["artifacts"] = [artifact(each) for each in found["artifacts"]]
    return raised


def status(found: dict[str, Any]) -> dict[str, Any]:
    raised = {**found, "state": _STATES.get(found["state"], "unknown")}
    if "message" in found:
        raised["message"] = message(found["message"])
    return raised


def message(found: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "message", **found, "role": _ROLES.get(found.get("role", ""), "agent"),
            "parts": [part(each) for each in found["parts"]]}


def artifact(found: dict[str, Any]) -> dict[str, Any]:
    return {**found, "parts": [part(each) for each in found["parts"]]}


def part(found: dict[str, Any]) -> dict[str, Any]:
    """A text or data part with its ``kind``. 0.3's data is an object: any other JSON is
    held under ``value``, marked as the a2a-sdk's own translation marks it, so its 0.3
    clients give back the value itself."""
    if "text" in found:
        return {"kind": "text", **found}
    data = found["data"]
    if isinstance(data, dict):
        return {"kind": "data", **found}
    return {"kind": "data", "data": {"value": data},
            "metadata": {**found.get("metadata", {}), "data_part_compat": True}}


# How a stream's results are shaped for its client: as they are (1.0), or 0.3's.
Shape = Callable[[dict[str, Any], bool], dict[str, Any]]


def as_v10(found: dict[str, Any], last: bool) -> dict[str, Any]:
    return found


def as_v03(found: dict[str, Any], last: bool) -> dict[str, Any]:
    return stream_result(found, last=last)
