"""Tasks that run on their own: held (the event loop keeps only weak references to
tasks, so an unheld one can be collected mid-run) and awaited together before what
they use is closed."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Background:
    """The tasks ``spawn`` started that have not ended yet."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def wait(self) -> None:
        """Until every task started so far has ended (what each raised stays its own)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
