"""One MCP message's record at /mcp/<server>: finished once into metrics and a log line.

Label values come from the graph or a closed set, never from what a client wrote: a
method outside MCP's own is ``_other``, and a tool is named only when the server's
allow-list names it or the server answered the call (a client making up tool names
cannot grow the metrics without bound).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..jsonio import dumps
from .record import UNKNOWN, Telemetry

if TYPE_CHECKING:
    from .mcp_tracing import McpTrace

# MCP's own methods (2025-11-25), as metric labels; notifications are one label.
METHODS = frozenset({
    "initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/read",
    "resources/templates/list", "resources/subscribe", "resources/unsubscribe",
    "prompts/list", "prompts/get", "completion/complete", "logging/setLevel",
    "tasks/get", "tasks/list", "tasks/result", "tasks/cancel",
})
OTHER = "_other"


def method_label(method: str | None) -> str:
    if method is None:
        return "response"  # the client's answer to a request of the server's
    if method.startswith("notifications/"):
        return "notification"
    return method if method in METHODS else OTHER


@dataclass(slots=True)
class McpCall:
    """What one message to an MCP server came to; the proxy fills it in as it goes."""

    server: str
    started: float = field(default_factory=time.perf_counter)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    method: str = OTHER
    tool: str = ""  # "" unless a tools/call, shown as the label rules above allow
    key: str | None = None
    team: str | None = None
    status: int = 200
    error: str | None = None  # the gateway's error code, or the JSON-RPC error's
    finished: bool = False
    trace: McpTrace | None = None  # its spans: None with tracing off (``mcp_tracing``)


def finish_mcp(telemetry: Telemetry, call: McpCall) -> None:
    """Count ``call`` once, end its spans and write its access-log line."""
    if call.finished:
        return
    call.finished = True
    if call.trace is not None:
        call.trace.end(call)
    elapsed = time.perf_counter() - call.started
    metrics = telemetry.metrics
    metrics.mcp_requests.labels(call.server, call.method, call.tool, call.team or UNKNOWN,
                                str(call.status)).inc()
    metrics.mcp_latency.labels(call.server, call.method).observe(elapsed)
    access_log = telemetry.access_log
    if not access_log.enabled():
        return
    access_log.write(dumps({
        "ts": round(time.time(), 3),
        "request_id": call.request_id,
        "endpoint": "mcp",
        "key": call.key,
        "team": call.team,
        "mcp_server": call.server,
        "method": call.method,
        "tool": call.tool or None,
        "status": call.status,
        "error": call.error,
        "latency_ms": round(elapsed * 1000, 3),
    }).decode())
