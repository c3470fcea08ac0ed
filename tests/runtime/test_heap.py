"""The serving heap: frozen after start-up, and frozen again after a reload."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from aigw.runtime import heap


@pytest.fixture
def restored() -> Iterator[None]:
    """Put the collector back as the test process had it."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_refreeze_does_nothing_in_a_process_that_never_froze(restored: None) -> None:
    gc.unfreeze()
    before = gc.get_threshold()

    async def scenario() -> None:
        heap.refreeze_later(0.0)
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert not heap.frozen()
    assert gc.get_threshold() == before


def test_freeze_keeps_what_is_alive_out_of_later_collections(restored: None) -> None:
    heap.freeze()
    assert heap.frozen()
    assert gc.get_threshold() == heap.THRESHOLDS
    survivors = gc.get_freeze_count()
    assert survivors > 1000  # the interpreter, pytest and aigw's modules at least


def test_after_a_reload_an_old_cycle_is_collected_and_the_rest_frozen_again(
    restored: None,
) -> None:
    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    old = Node()
    old.other = Node()
    old.other.other = old  # a cycle: only the collector can free it
    heap.freeze()  # frozen with the cycle alive, as a graph is at start-up
    collected: list[bool] = []
    probe = weakref.ref(old, lambda _ref: collected.append(True))
    del old  # the reload dropped it; reference counting cannot free a cycle

    async def scenario() -> None:
        heap.refreeze_later(0.0)
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert probe() is None and collected == [True]
    assert heap.frozen()
