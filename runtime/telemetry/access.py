"""The access line of a request no endpoint records itself: the stored responses,
conversations, files and batches, the usage and admin APIs, /v1/models, the token counts,
an unknown path or method.

The model endpoints, MCP, pipelines, A2A and the pass-throughs make a record of their own
(``record.RequestRecord``, ``mcp.McpCall``) and claim the request with ``answered_as``.
For the rest, app.SnapshotMiddleware puts an ``AccessRecord`` in the request's scope,
the endpoint notes who called (``called_by``) and the handlers how it failed
(``failed_with``), and the middleware finishes it once the answer is sent: one line,
and one count in ``aigw_requests`` with no route, deployment or provider (an unknown
path is never a label).
"""

from __future__ import annotations

import os
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..jsonio import dumps
from .record import UNKNOWN, Telemetry

if TYPE_CHECKING:
    from aigw.compiler.graph import ApiKey

    from ..errors import GatewayError

ACCESS = "access"  # the key in an ASGI scope's "state" holding its ``AccessRecord``
CLIENT_GONE = 499  # no answer was sent: the client left first (nginx's status for it)

# An endpoint's name in its line, by the start of its path: a fixed set, so that a
# client's path never names one (the path is in the line as it came).
_ENDPOINTS = (
    ("/v1/messages/count_tokens", "count_tokens"),
    ("/v1/responses/", "responses_stored"),
    ("/v1/conversations", "conversations"),
    ("/v1/files", "files"),
    ("/v1/batches", "batches"),
    ("/v1/costs/", "usage"),
    ("/v1/models", "models"),
    ("/v1beta/models", "gemini"),
    ("/v1/realtime", "realtime"),
    ("/admin", "admin"),
    ("/api/v1/", "workflows"),
)
NOT_FOUND = "not_found"  # no route has the path


def endpoint_of(path: str) -> str:
    """The endpoint name of a request to ``path``.

    >>> endpoint_of("/v1/responses/resp_1/input_items"), endpoint_of("/v1/nothing")
    ('responses_stored', 'other')
    """
    for start, name in _ENDPOINTS:
        if path.startswith(start):
            return name
    return "other"


@dataclass(slots=True)
class AccessRecord:
    """What a request no endpoint records itself came to."""

    graph: str
    method: str
    path: str
    started: float = field(default_factory=time.perf_counter)
    # 128 random bits as 32 hex digits, as a model request's id has them
    request_id: str = field(default_factory=lambda: os.urandom(16).hex())
    endpoint: str | None = None  # set where known better than by the path (a 404)
    key: str | None = None
    team: str | None = None
    status: int = CLIENT_GONE  # until the answer starts
    error: str | None = None


def _access(scope: MutableMapping[str, Any] | None) -> AccessRecord | None:
    if scope is None:
        return None
    access: AccessRecord | None = scope.get("state", {}).get(ACCESS)
    return access


def called_by(scope: MutableMapping[str, Any] | None, key: ApiKey) -> ApiKey:
    """Note ``key`` (its name and team, never its secret) as the caller in the access
    line of the request of ``scope``; ``key`` is given back, for the endpoint's use."""
    access = _access(scope)
    if access is not None:
        access.key, access.team = key.name, key.team.name if key.team else None
    return key


def failed_with(scope: MutableMapping[str, Any] | None, error: GatewayError) -> None:
    """Note ``error``'s code in the access line of the request of ``scope``."""
    access = _access(scope)
    if access is not None:
        access.error = str(error.code)
        if error.key_name is not None:  # refused by name: whose client sent it
            access.key, access.team = error.key_name, error.team_name


def finish_access(telemetry: Telemetry, access: AccessRecord) -> None:
    """Count ``access`` and write its line."""
    telemetry.metrics.requests.labels(UNKNOWN, UNKNOWN, UNKNOWN, access.team or UNKNOWN,
                                      str(access.status)).inc()
    if access.status == CLIENT_GONE and access.error is None:
        access.error = "client_gone"
    log = telemetry.access_log
    if not log.enabled():
        return
    log.write(dumps({
        "ts": round(time.time(), 3),
        "request_id": access.request_id,
        "endpoint": access.endpoint or endpoint_of(access.path),
        "method": access.method,
        "path": access.path,
        "key": access.key,
        "team": access.team,
        # Every line has the model lines' route and deployment (none here), so a reader
        # of the log can count on the same fields in all of them.
        "route": None,
        "deployment": None,
        "upstream_request_id": None,
        "status": access.status,
        "error": access.error,
        "latency_ms": round((time.perf_counter() - access.started) * 1000, 3),
        "graph": access.graph,
    }).decode())
