"""A2A's streaming methods (SendStreamingMessage, SubscribeToTask): a task's updates as SSE.

Each event's ``data:`` is a JSON-RPC response (the request's id) whose result is a
StreamResponse: the Task first, then a ``statusUpdate`` each time the task's status
changes as its execution moves (``working``, ``input-required`` while an approval
waits, ...), and, as it completes, an ``artifactUpdate`` with the output before the
``completed`` status. The stream ends once the task has ended (A2A 1.0 has no ``final``
flag: the end of the stream is it; 0.3's clients get one on the last status update,
each result shaped by a2a_v03), or after ``STREAM_S`` with the task's status as it is
then, and the client may SubscribeToTask again. The updates are read as WS
/ws/executions/{id} reads its events (``Workflows.follow``: woken by the execution's
changes in this process, polled for another replica's); a client that leaves ends its
stream, never the execution.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

from starlette.responses import StreamingResponse

from .. import jsonio
from ..errors import GatewayError
from ..live import Live
from ..sse import settled_stream
from ..store.executions import FINAL, Execution, Status
from ..telemetry.record import RequestRecord
from .a2a_v03 import Shape
from .a2a_wire import INTERNAL, output_artifact, task, task_status
from .service import Workflows

# The longest a stream is open, as long as SendMessage waits for its task.
STREAM_S = 300.0


async def task_stream(workflows: Workflows, live: Live, record: RequestRecord, call_id: Any,
                      execution: Execution, shape: Shape) -> StreamingResponse:
    """The ``text/event-stream`` response of ``execution``'s task, each result as
    ``shape`` gives it; ``record`` is finished when the stream ends (its access log line
    and metrics then, as for a chat stream)."""
    record.stream = True
    return await settled_stream(_events(workflows, live, record, call_id, execution, shape),
                                {})


async def _events(workflows: Workflows, live: Live, record: RequestRecord, call_id: Any,
                  execution: Execution, shape: Shape) -> AsyncGenerator[bytes, None]:
    ended = False
    # Waiting for the steps is the upstream's time, as POST /v1/pipelines counts it.
    record.waiting_upstream()
    try:
        async with aclosing(updates(workflows, execution,
                                    workflows.clock() + STREAM_S)) as results:
            async for result, last in results:
                yield _event({"jsonrpc": "2.0", "id": call_id, "result": shape(result, last)})
        ended = True
    except GatewayError as exc:  # the store failed after the status line: said in the stream
        record.sent_status = record.status
        record.status, record.error = exc.status, str(exc.code)
        ended = True
        yield _event({"jsonrpc": "2.0", "id": call_id, "error": {
            "code": INTERNAL, "message": exc.message,
            "data": {"type": exc.error_type, "code": exc.shown_code}}})
    finally:  # also when the client went away (only its stream ends: 499) or a shutdown
        record.waited_upstream()
        if not ended:
            record.sent_status = record.status
            record.status, record.error = live.shutdown.cut()
        live.telemetry.finish(record)


async def updates(workflows: Workflows, execution: Execution, deadline: float
                  ) -> AsyncGenerator[tuple[dict[str, Any], bool], None]:
    """The StreamResponses of ``execution``'s task, from its state now until it ends or
    ``deadline`` (``workflows.clock``'s) has passed, each with whether it is the last."""
    yield {"task": task(execution)}, execution.status in FINAL
    if execution.status in FINAL:
        return
    shown = task_status(execution)
    async with aclosing(workflows.follow(execution.id, deadline=deadline)) as batches:
        async for found, _events in batches:
            if found is None:  # removed (past its retention): nothing more to tell
                return
            execution = found
            status = task_status(execution)
            if status == shown:
                continue
            if execution.status is Status.SUCCEEDED:
                yield {"artifactUpdate": {"taskId": execution.id, "contextId": execution.id,
                                          "artifact": output_artifact(execution),
                                          "lastChunk": True}}, False
            yield _status_update(execution, status), execution.status in FINAL
            if execution.status in FINAL:  # at once: its last events are not waited for
                return
            shown = status
    yield _status_update(execution, shown), True  # time is up: where the task stands


def _status_update(execution: Execution, status: dict[str, Any]) -> dict[str, Any]:
    return {"statusUpdate": {"taskId": execution.id, "contextId": execution.id,
                             "status": status}}


def _event(response: dict[str, Any]) -> bytes:
    return b"data: " + jsonio.dumps(response) + b"\n\n"
