"""What an execution leaves as it ends: the steps still in flight stop with it. On both
stores."""

from __future__ import annotations

from typing import Any

from .conftest import Serve, Served

SIBLING_FAILS = """
input: {type: object}
steps:
  sign_off: {kind: approval, message: "go?", timeout_s: 60}
  slow: {kind: llm, model: fast, prompt: "one two three"}
  broken: {kind: transform, needs: [slow], expression: "1 // 0"}
output: "{{ steps.sign_off }}"
"""
SLOW_ECHO = ", latency: {per_token_ms: 100}"


async def _settled(served: Served, execution_id: str, status: str) -> dict[str, Any]:
    return await served.wait_for(execution_id, lambda e: e["status"] == status)


async def test_an_approval_beside_a_step_that_failed_stops_with_its_execution(
    serve: Serve, store_options: dict[str, Any]
) -> None:
    """On Redis the approval's task, cancelled as its sibling failed, went on polling the
    store until its deadline (a cancellation swallowed in redis-py), and the execution
    read 'waiting' until then."""
    served = await serve({"sibling": SIBLING_FAILS}, latency=SLOW_ECHO, **store_options)
    started = await served.start("sibling", {})
    done = await _settled(served, started["id"], "failed")
    assert done["error"] == ("step 'broken' failed: template error: ZeroDivisionError: "
                             "integer division or modulo by zero")
