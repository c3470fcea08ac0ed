"""What an execution leaves as it ends, or resumes without some of its steps: the steps
in flight stop with it, and none reads running or waiting for good (the steps, the events
and the approvals listed agree). On both stores."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from aigw.compiler.graph import Provider
from aigw.runtime.providers import registry
from aigw.runtime.providers.base import ChatAdapter, ChatCall, ChatResult
from aigw.runtime.providers.echo import EchoAdapter
from aigw.runtime.tokens import TokenCounter
from aigw.runtime.workflows.paths import missing_from

from .conftest import DEV_KEY, Serve, Served, approval_pipeline

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


async def _inbox(served: Served) -> list[str]:
    answer = await served.http.get("/api/v1/approvals")
    assert answer.status_code == 200, answer.text
    return [item["step"] for item in answer.json()["data"]]


async def _closed(served: Served, execution_id: str, step: str, reason: str,
                  last: str) -> None:
    """``step`` reads cancelled for ``reason``, said by the event before ``last``."""
    state = (await served.steps(execution_id))[step]
    assert (state["status"], state["error"]) == ("cancelled", reason)
    assert state["finished_at"] is not None
    events = await served.events(execution_id)
    assert [(e["type"], e["step"]) for e in events[-2:]] == [("step_abandoned", step),
                                                            (last, None)]
    assert events[-2]["data"] == {"reason": reason}


async def test_an_approval_beside_a_step_that_failed_stops_with_its_execution(
    serve: Serve, store_options: dict[str, Any]
) -> None:
    """On Redis the approval's task, cancelled as its sibling failed, went on polling the
    store until its deadline (a cancellation swallowed in redis-py), and the execution
    read 'waiting' until then; then, failed, it still read 'waiting' in its steps."""
    served = await serve({"sibling": SIBLING_FAILS}, latency=SLOW_ECHO, **store_options)
    started = await served.start("sibling", {})
    done = await _settled(served, started["id"], "failed")
    assert done["error"] == ("step 'broken' failed: template error: ZeroDivisionError: "
                             "integer division or modulo by zero")
    await _closed(served, started["id"], "sign_off",
                  f"abandoned: the execution failed ({done['error']})", "execution_failed")
    assert await _inbox(served) == []


async def test_an_approval_waiting_as_its_execution_is_cancelled_is_closed(
    serve: Serve, store_options: dict[str, Any]
) -> None:
    served = await serve({"publish": approval_pipeline()}, **store_options)
    started = await served.start("publish", {"text": "hello"})
    await _settled(served, started["id"], "waiting")
    cancelled = await served.http.post(f"/api/v1/executions/{started['id']}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    await _settled(served, started["id"], "cancelled")
    await _closed(served, started["id"], "sign_off", "abandoned: the execution was cancelled",
                  "execution_cancelled")


async def test_an_approval_of_a_paused_execution_cancelled_by_the_store_is_closed(
    serve: Serve, store_options: dict[str, Any]
) -> None:
    """Paused, no runner holds the execution: the store cancels it itself."""
    served = await serve({"publish": approval_pipeline()}, **store_options)
    started = await served.start("publish", {"text": "hello"})
    await _settled(served, started["id"], "waiting")
    paused = await served.http.post(f"/api/v1/executions/{started['id']}/pause")
    assert paused.status_code == 202, paused.text
    held = await _settled(served, started["id"], "paused")
    for _ in range(200):  # the runner lets go of it
        if held["runner"] is None:
            break
        await asyncio.sleep(0.02)
        held = await served.get(started["id"])
    assert (await served.steps(started["id"]))["sign_off"]["status"] == "waiting"
    cancelled = await served.http.post(f"/api/v1/executions/{started['id']}/cancel")
    assert (cancelled.status_code, cancelled.json()["status"]) == (202, "cancelled")
    await _closed(served, started["id"], "sign_off", "abandoned: the execution was cancelled",
                  "execution_cancelled")


# 'publish' run as a step of another pipeline: its steps' states are 'inner/<step>'.
WRAPPED = """
input: {type: object}
steps:
  inner: {kind: pipeline, pipeline: publish, input: {text: "{{ input.text }}"}}
output: {published: "{{ steps.inner.published }}"}
"""


@pytest.mark.parametrize(("pipeline", "prefix"), [("publish", ""), ("wrapped", "inner/")])
async def test_an_approval_a_reload_renamed_is_closed_as_the_run_resumes(
    serve: Serve, store_options: dict[str, Any], pipeline: str, prefix: str
) -> None:
    """Its state stayed waiting beside the renamed step's: listed, decidable, and holding
    the execution 'waiting' until it ended. Renamed in a pipeline a step runs, it stayed
    so even once the run resumed (only the execution's own pipeline was looked at)."""
    served = await serve({"publish": approval_pipeline(), "wrapped": WRAPPED}, **store_options)
    started = await served.start(pipeline, {"text": "hello"})
    await _settled(served, started["id"], "waiting")
    await served.workflows.stop()
    (served.root / "pipelines" / "publish.yaml").write_text(
        approval_pipeline().replace("sign_off", "approve"))
    assert (await served.gateway.reload("test")).ok
    second = served.with_new_runner()
    try:
        async def renamed_waits() -> bool:
            steps = await second.steps(started["id"])
            return steps.get(f"{prefix}approve", {}).get("status") == "waiting"

        for _ in range(200):
            if await renamed_waits():
                break
            await asyncio.sleep(0.02)
        state = (await second.steps(started["id"]))[f"{prefix}sign_off"]
        assert (state["status"], state["error"]) == (
            "cancelled", "abandoned: pipeline 'publish' no longer has this step (a reload "
            "removed or renamed it)")
        assert await _inbox(second) == [f"{prefix}approve"]
        page = await second.http.get("/admin", auth=("admin", DEV_KEY))
        assert f"/{started['id']}/{prefix}approve" in page.text
        assert f"/{started['id']}/{prefix}sign_off" not in page.text
        decided = await second.http.post(f"/api/v1/executions/{started['id']}/approvals",
                                         json={"decision": "approve"})
        assert decided.status_code == 200 and decided.json()["step"] == f"{prefix}approve"
        done = await _settled(second, started["id"], "succeeded")
        assert done["output"]["published"] == "published: hello"
    finally:
        await second.aclose()


async def test_an_approval_waiting_as_the_run_fails_on_an_internal_error_is_closed(
    serve: Serve, redis_url: str, namespace: str
) -> None:
    """The runner's last try at failing an execution that raised an error of its own
    (here Redis refusing the read of its decisions) closes what it left waiting too."""
    served = await serve({"publish": approval_pipeline()}, store=redis_url,
                         namespace=namespace)
    started = await served.start("publish", {"text": "hello"})
    await _settled(served, started["id"], "waiting")
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(f"{namespace}:wf:x:{started['id']}:decisions", "not a hash")
    finally:
        await client.aclose()
    done = await _settled(served, started["id"], "failed")
    assert done["error"] == ("internal error: InternalError: The executions store (redis) "
                             "refused a call; the error is logged.")
    await _closed(served, started["id"], "sign_off",
                  f"abandoned: the execution failed ({done['error']})", "execution_failed")


ONE_CALL = """
input: {type: object}
steps:
  draft: {kind: llm, model: fast, prompt: "{{ input.text }}", retries: 0}
output: "{{ steps.draft }}"
"""


class _Failing(EchoAdapter):
    """An adapter whose call fails in a way no handler names (a bug, a library's own
    exception): the seam the gateway calls providers through, not its internals."""

    async def complete(self, call: ChatCall) -> ChatResult:
        raise RuntimeError("an unplanned failure")


async def test_a_model_call_that_fails_unplanned_gives_its_hold_back_and_is_recorded(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step's model call that raised something other than a gateway error kept the
    team's hold until it expired, wrote no ledger record and was counted as a 200; a
    chat request that fails so is given back, recorded and counted as a 500."""
    def failing(provider: Provider, counter: TokenCounter) -> ChatAdapter:
        return _Failing(provider, counter)

    monkeypatch.setattr(registry, "ADAPTERS", {**registry.ADAPTERS, "echo": failing})
    served = await serve({"ask": ONE_CALL}, eng="{budget: {amount: 1000000, period: day}}")
    started = await served.start("ask", {"text": "hello"})
    done = await _settled(served, started["id"], "failed")
    assert "RuntimeError" in done["error"]
    budgets = (await served.http.get("/admin/budgets")).json()["data"]
    assert [(b["spent"], b["held"]) for b in budgets if b["name"] == "eng"] == [(0, 0)]
    rows = (await served.http.get("/v1/costs/summary?group_by=route")).json()["data"]
    assert [(r["route"], r["requests"], r["errors"]) for r in rows] == [("fast", 1, 1)]
    metrics = (await served.http.get("/metrics")).text
    assert 'route="fast",status="500"' in metrics
    assert 'route="fast",status="200"' not in metrics


# A pipeline run by a step, by every item of a map and by a loop's action.
AT_EVERY_DEPTH = """
input: {type: object}
steps:
  sub: {kind: pipeline, pipeline: child, input: {}}
  each:
    kind: map
    over: "[1]"
    concurrency: 1
    step: {kind: pipeline, pipeline: child, input: {}}
  plan:
    kind: loop
    max_iterations: 1
    planner: {expression: "'act'"}
    actions:
      act: {kind: pipeline, pipeline: child, input: {}}
  note: {kind: transform, expression: "1"}
output: "{{ steps.note }}"
"""
CHILD = """
input: {type: object}
steps:
  ask: {kind: approval, message: "go?", timeout_s: 60}
output: "{{ steps.ask }}"
"""


async def test_a_state_path_is_looked_up_at_every_depth(serve: Serve) -> None:
    """Which pipeline no longer has a step on the way to a state (None: all are there)."""
    served = await serve({"outer": AT_EVERY_DEPTH, "child": CHILD})
    pipelines = served.gateway.live.graph.pipelines
    found = {path: missing_from(pipelines, pipelines["outer"], path) for path in (
        "sub", "sub/ask", "sub/gone", "gone", "gone/ask", "note/ask",
        "each@1/0", "each@1/0/ask", "each@2/3/gone",
        "plan@1/0/act", "plan@1/0/act/ask", "plan@1/0/act/gone", "plan@1/0/gone",
        "note@1/0")}
    assert found == {
        "sub": None, "sub/ask": None, "sub/gone": "child", "gone": "outer",
        "gone/ask": "outer", "note/ask": "outer",
        "each@1/0": None, "each@1/0/ask": None, "each@2/3/gone": "child",
        "plan@1/0/act": None, "plan@1/0/act/ask": None, "plan@1/0/act/gone": "child",
        "plan@1/0/gone": "outer", "note@1/0": "outer"}


# A loop whose planner (a model, whose answers are kept) chose an action that waits.
LOOP_WAITS = """
input: {type: object}
steps:
  plan:
    kind: loop
    max_iterations: 2
    retries: {retries}
    backoff_ms: 0
    planner: {model: fast, prompt: "{% if iteration < 1 %}ask{% else %}done{% endif %}"}
    actions:
      ask: {kind: approval, message: "go?", timeout_s: 60}
output: "{{ steps.plan.history }}"
"""


@pytest.mark.parametrize("retries", [0, 1])
async def test_a_loop_action_a_reload_renamed_is_planned_again_or_named_as_it_resumes(
    serve: Serve, store_options: dict[str, Any], retries: int
) -> None:
    """The planner's kept answer names the action a reload renamed: the action's
    approval is closed as a removed step's is, and the loop fails saying so (it read as
    the planner's own mistake). A retry of the loop plans again, on the new graph."""
    looping = LOOP_WAITS.replace("{retries}", str(retries))
    served = await serve({"looping": looping}, **store_options)
    started = await served.start("looping", {})
    await _settled(served, started["id"], "waiting")
    await served.workflows.stop()
    (served.root / "pipelines" / "looping.yaml").write_text(looping.replace("ask", "confirm"))
    assert (await served.gateway.reload("test")).ok
    second = served.with_new_runner()
    try:
        if retries:
            await second.wait_for(started["id"], lambda e: e["status"] == "waiting"
                                  and e["runner"] is not None)
            assert await _inbox(second) == ["plan@2/0/confirm"]
            decided = await second.http.post(f"/api/v1/executions/{started['id']}/approvals",
                                             json={"decision": "approve"})
            assert decided.status_code == 200, decided.text
            done = await _settled(second, started["id"], "succeeded")
            assert [item["action"] for item in done["output"]] == ["confirm"]
        else:
            done = await _settled(second, started["id"], "failed")
            assert done["error"] == (
                "step 'plan' failed: iteration 0: the planner chose 'ask' before the run "
                "resumed, which is none of the actions now: confirm, done (a reload may "
                "have removed or renamed it)")
        state = (await second.steps(started["id"]))["plan@1/0/ask"]
        assert (state["status"], state["error"]) == (
            "cancelled", "abandoned: pipeline 'looping' no longer has this step (a reload "
            "removed or renamed it)")
    finally:
        await second.aclose()
