"""A2A 0.3's JSON-RPC wire, translated at the edge to and from 1.0's, which the agents
speak inside: one endpoint, one set of checks and one execution path for both; and the
other way for ``agent`` steps calling a remote agent of 0.3 (agents.py), whose calls
are made as 1.0's and raised into 0.3's (``CALLS``, ``raised_params``), and its
answers lowered into 1.0's (``lowered_result``, ``lowered_task``).

An agent of A2A 0.2 (0.2.0 to 0.2.6: Google ADK's and the a2a-sdk's before 0.3) is
called the same way: what a step sends and reads (``message/send``, ``tasks/get``,
``tasks/cancel``, objects and parts with their ``kind``, kebab-case states) is 0.3's.
Its differences are a card's (agents.py reads it: before 0.2.5 none names its
``protocolVersion``), MessageSendConfiguration's ``acceptedOutputModes``, required
until 0.2.6 (``raised_params`` sends it), and the ``A2A-Version`` header, which it
predates: a call to it has none (``header``), as 1.0 reads one without it as 0.3's.

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
V02 = "0.2"
# The versions whose agents are called in 0.3's wire format.
LEGACY = (PROTOCOL_VERSION, V02)
# What a step reads of an answer (agents.py): its text and data parts.
ACCEPTED_OUTPUT_MODES = ("text/plain", "application/json")

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
# 1.0's methods a 0.3 agent is called with, by their 0.3 names (streaming is not among
# them: an agent step sends and polls).
CALLS: Mapping[str, str] = MappingProxyType({
    new: old for old, new in METHODS.items()
    if new in ("SendMessage", "GetTask", "CancelTask")})

_FINAL_STATES = frozenset({"completed", "canceled", "failed", "rejected"})
_ROLES: Mapping[str, str] = MappingProxyType({"ROLE_USER": "user", "ROLE_AGENT": "agent"})
_LOWER_STATES = MappingProxyType({old: new for new, old in _STATES.items()})
_LOWER_ROLES = MappingProxyType({old: new for new, old in _ROLES.items()})


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


def header(version: str) -> str | None:
    """The ``A2A-Version`` a call to an agent of ``version`` carries: None for 0.2, which
    predates the header (an agent that serves 0.3 beside 1.0 reads a call without one as
    0.3's, and 0.2's calls are 0.3's; ``0.2`` it would refuse)."""
    return None if version == V02 else version


def raised_params(given: Mapping[str, Any], version: str = PROTOCOL_VERSION) -> dict[str, Any]:
    """1.0's params as 0.3's (or 0.2's), for a call to an agent of ``version``
    (``params`` the other way): a message in 0.3's shape, ``returnImmediately`` as
    ``blocking: false``; to 0.2, the ``acceptedOutputModes`` its schema requires.

    >>> raised_params({"configuration": {"returnImmediately": True}})
    {'configuration': {'blocking': False}}
    """
    raised = dict(given)
    if "message" in given:
        raised["message"] = message(given["message"])
    configuration = given.get("configuration")
    if isinstance(configuration, Mapping):
        raised["configuration"] = {
            **{name: value for name, value in configuration.items()
               if name not in ("returnImmediately", "taskPushNotificationConfig")},
            "blocking": not configuration.get("returnImmediately", False)}
        if version == V02:  # optional from 0.2.6 on; before, an agent refuses a call without
            raised["configuration"].setdefault("acceptedOutputModes",
                                               list(ACCEPTED_OUTPUT_MODES))
    return raised


# A 0.3 agent's answers are read as 1.0's: what a part of it lacks, or has of the wrong
# type, is left as it is, for the step's own checks of 1.0's answers to refuse.

def lowered_result(found: Mapping[str, Any]) -> dict[str, Any]:
    """message/send's result (a Task or a Message, told by ``kind``) as SendMessage's."""
    if found.get("kind", "message" if "messageId" in found else "task") == "message":
        return {"message": _lowered_message(found)}
    return {"task": lowered_task(found)}


def lowered_task(found: Mapping[str, Any]) -> dict[str, Any]:
    """A 0.3 Task as 1.0's: its state ``TASK_STATE_...``, its messages' and artifacts'
    parts without ``kind``."""
    lowered = {name: value for name, value in found.items() if name != "kind"}
    status = found.get("status")
    if isinstance(status, Mapping):
        state = status.get("state")
        lowered["status"] = {**status, "state": _LOWER_STATES.get(
            state, "TASK_STATE_UNSPECIFIED") if isinstance(state, str) else state}
        if isinstance(status.get("message"), Mapping):
            lowered["status"]["message"] = _lowered_message(status["message"])
    for name, lower in (("artifacts", _lowered_parts), ("history", _lowered_message)):
        if isinstance(found.get(name), list):
            lowered[name] = [lower(each) if isinstance(each, Mapping) else each
                             for each in found[name]]
    return lowered


def _lowered_message(found: Mapping[str, Any]) -> dict[str, Any]:
    lowered = _lowered_parts(found)
    role = found.get("role")
    if isinstance(role, str):
        lowered["role"] = _LOWER_ROLES.get(role, "ROLE_UNSPECIFIED")
    return lowered


def _lowered_parts(found: Mapping[str, Any]) -> dict[str, Any]:
    """A message or artifact with its parts as 1.0's."""
    lowered = {name: value for name, value in found.items() if name != "kind"}
    if isinstance(found.get("parts"), list):
        lowered["parts"] = [_lowered_part(each) if isinstance(each, Mapping) else each
                            for each in found["parts"]]
    return lowered


def _lowered_part(found: Mapping[str, Any]) -> dict[str, Any]:
    """A 0.3 part as 1.0's: a text or data part without ``kind`` (data that ``part``, or the
    a2a-sdk, held under ``value`` given back as it was), a file part as 1.0's ``raw`` or
    ``url`` with its ``mediaType`` and ``filename``."""
    kind = found.get("kind")
    lowered = {name: value for name, value in found.items() if name not in ("kind", "file")}
    metadata = found.get("metadata")
    if kind == "data" and isinstance(metadata, Mapping) and metadata.get("data_part_compat") \
            and isinstance(found.get("data"), Mapping) and "value" in found["data"]:
        lowered["data"] = found["data"]["value"]
        rest = {name: value for name, value in metadata.items() if name != "data_part_compat"}
        lowered.pop("metadata")
        if rest:
            lowered["metadata"] = rest
    file = found.get("file")
    if kind == "file" and isinstance(file, Mapping):
        for old, new in (("bytes", "raw"), ("uri", "url"), ("mimeType", "mediaType"),
                         ("name", "filename")):
            if old in file:
                lowered[new] = file[old]
    return lowered
