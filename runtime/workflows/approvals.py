"""The ``approval`` step: a durable wait for a person's decision, or its default at the deadline.

The deadline, message and approvers are a memo fixed when the wait begins; the step (and
the execution) reads waiting meanwhile, and holds no slot of the runner's capacity.
"""

from __future__ import annotations

from typing import Any

from aigw.compiler.pipeline_graph import Approval, Step

from ..store.executions import Decision, Memo, NewEvent, StepState, StepStatus
from .engine import Run, StepContext, Stop, Suspended


async def wait_for_decision(context: StepContext, step: Step, action: Approval) -> Any:
    """An approval: wait (durably) for a decision, or take the default at the deadline."""
    run = context.run
    path = context.path
    store = run.services.store
    decision = await store.decision(run.id, path)
    timed_out = False
    if decision is None:
        key = f"{path}#deadline"
        if key not in run.memos:
            # Who may decide is fixed when the wait begins, like its message: a reload
            # or a restart of the runner does not change it while it waits.
            memo = {"deadline": run.now() + step.timeout_s,
                    "message": run.text(action.message, context.scope)}
            if action.approvers is not None:
                memo["approvers"] = action.approvers.as_dict()
            await run.remember(Memo(key, memo))
        deadline = float(run.memos[key]["deadline"])
        detail = {"message": run.memos[key]["message"], "deadline": deadline,
                  "default": action.default}
        if "approvers" in run.memos[key]:
            detail["approvers"] = run.memos[key]["approvers"]
        state = run.states.get(path)
        await run.commit_states((
            StepState(path, StepStatus.WAITING, state.attempts if state else 1,
                      started_at=state.started_at if state else run.now(), detail=detail),),
            (NewEvent("step_waiting", path, detail),))
        with run.services.waiting(run.id) as take_slot:
            while decision is None:
                remaining = deadline - run.now()
                if remaining <= 0:
                    decision = Decision(action.default == "approve", None,
                                        "no decision before the deadline", run.now())
                    timed_out = True
                    break
                await _obey_control(run)
                await run.services.wait(run.id, min(run.services.poll_s, remaining))
                decision = await store.decision(run.id, path)
            result = await _decided(run, path, decision, timed_out)
            # Its slot was other work's while it waited: it goes on once the runner
            # has room again (taken at once, it ran past ``execution_capacity``).
            while not take_slot():
                await _obey_control(run)
                await run.services.wait(run.id, run.services.poll_s)
        # The wait may have outlasted a reload that forbids the pipeline now.
        await run.still_allowed(f"stopped after the decision on '{path}'")
        return result
    return await _decided(run, path, decision, timed_out)


async def _decided(run: Run, path: str, decision: Decision,
                   timed_out: bool) -> dict[str, Any]:
    """The approval's output, committed: out of WAITING at once (an approval inside a
    map or a loop has no step of its own that a later commit would mark done, and
    must not stay listed as waiting)."""
    result = {"approved": decision.approve,
              "decision": "approve" if decision.approve else "reject",
              "by": decision.by, "comment": decision.comment, "timed_out": timed_out}
    state = run.states.get(path)
    decided = StepState(path, StepStatus.SUCCEEDED, state.attempts if state else 1, result,
                        started_at=state.started_at if state else run.now(),
                        finished_at=run.now())
    await run.commit_states((decided,), (NewEvent("approval_decided", path, result),))
    return result


async def _obey_control(run: Run) -> None:
    """Give way to a pause (the approval stays waiting) or a cancel asked for."""
    control = await run.control()
    if control == "pause":
        raise Suspended()
    if control == "cancel":
        raise Stop("cancel")
