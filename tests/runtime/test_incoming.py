"""What a client sends after its body: its leaving stops the work awaited for it, and
nothing after."""

from __future__ import annotations

import asyncio

import pytest

from aigw.runtime.errors import Cancelled
from aigw.runtime.incoming import unless_gone


async def _turn(answered: asyncio.Future[str], leaving: asyncio.Event,
                after: list[str]) -> str:
    """A request's task: the answer awaited unless the client leaves, then kept."""
    answer = await unless_gone(answered, leaving.wait)
    await asyncio.sleep(0.01)  # what follows the answer: settled, kept, added
    after.append("kept")
    return answer


async def test_a_client_that_leaves_first_stops_the_work() -> None:
    answered: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    leaving = asyncio.Event()
    after: list[str] = []
    turn = asyncio.create_task(_turn(answered, leaving, after))
    await asyncio.sleep(0.01)
    leaving.set()
    with pytest.raises(Cancelled):
        await turn
    assert answered.cancelled() and after == []


async def test_a_client_that_leaves_as_the_answer_comes_cancels_nothing_after_it() -> None:
    """The client's leaving and the answer in one turn of the loop: the watcher's callback
    was scheduled already, and its cancel fell on what the task awaited next (the answer's
    settlement, a conversation turn kept and added): billed, then lost."""
    answered: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    leaving = asyncio.Event()
    after: list[str] = []
    turn = asyncio.create_task(_turn(answered, leaving, after))
    await asyncio.sleep(0.01)
    leaving.set()  # the watcher ends first, then the task has its answer
    answered.set_result("answer")
    assert await turn == "answer"
    assert after == ["kept"]
