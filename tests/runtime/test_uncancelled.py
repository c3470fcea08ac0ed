"""A critical step seen to its end though its task is cancelled outright, as no anyio
shield does."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from aigw.runtime.background import Background
from aigw.runtime.uncancelled import uncancelled


class _Step:
    """A store call that takes a while (a slow round trip), counted."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.runs = 0
        self.ends = 0

    async def __call__(self) -> str:
        self.runs += 1
        self.started.set()
        await asyncio.sleep(0.05)
        self.ends += 1
        return "written"


async def _cancelled_twice(caller: asyncio.Task[object], step: _Step) -> None:
    await step.started.wait()
    caller.cancel()  # a shutdown past its grace
    await asyncio.sleep(0.01)
    caller.cancel()  # and another
    with pytest.raises(asyncio.CancelledError):
        await caller


async def test_an_anyio_shield_does_not_hold_against_a_task_cancelled_outright() -> None:
    """Why the helper exists: the step stops half-way inside the shield."""
    step = _Step()

    async def shielded() -> None:
        with anyio.CancelScope(shield=True):
            await step()

    await _cancelled_twice(asyncio.create_task(shielded()), step)
    assert step.ends == 0


@pytest.mark.parametrize("again", [False, True], ids=["own-task", "run-again"])
async def test_the_step_ends_before_the_cancelled_caller_does(again: bool) -> None:
    step, kept = _Step(), Background()
    caller = asyncio.create_task(uncancelled(step, kept.spawn, again=again))
    await _cancelled_twice(caller, step)
    assert step.ends == 1  # ended while the caller waited, and only then did it go on
    assert step.runs == (2 if again else 1)  # run again, whole, after a cut


async def test_uncancelled_the_step_runs_in_the_callers_task_when_it_may_run_again() -> None:
    """The common case costs no task: the caller's own runs it."""
    tasks: list[asyncio.Task[object] | None] = []

    async def step() -> str:
        tasks.append(asyncio.current_task())
        return "written"

    def spawn(work: object) -> asyncio.Task[str]:
        raise AssertionError("no task for an uncancelled step")

    assert await uncancelled(step, spawn, again=True) == "written"
    assert tasks == [asyncio.current_task()]
