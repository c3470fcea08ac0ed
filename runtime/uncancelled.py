"""Critical steps (a ledger record, a settled or released hold) seen to their end when
the request's task is cancelled outright.

An ``anyio.CancelScope(shield=True)`` holds only against anyio's own cancel scopes: a
plain ``Task.cancel()`` (hypercorn's, a shutdown past its grace; ``unless_gone``'s, the
client gone; ``asyncio.timeout``'s) still raises ``CancelledError`` inside it, and the
step it guarded stopped half-way: a hold left to expire unbilled, a request unrecorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

Spawn = Callable[[Coroutine[Any, Any, T]], "asyncio.Task[T]"]

# How long a cancelled caller waits for its step: the store's own calls time out sooner
# (a Redis socket timeout, SQLite's busy timeout). Past it the step goes on in its task,
# which the store's ``aclose`` still waits for; the caller goes on cancelled.
WAIT_S = 10.0


async def uncancelled(work: Callable[[], Coroutine[Any, Any, T]], spawn: Spawn[T], *,
                      again: bool = False) -> T:
    """``work()`` to its end, though the calling task is cancelled meanwhile; then the
    cancellation goes on (re-raised). ``spawn`` runs it in a task of its own that is kept
    (``Store.finish``: closing the store waits for it).

    ``again``: ``work`` is safe to run twice (a reservation is settled once, a request id
    recorded once, whatever the stores are asked after). It runs in the caller's task,
    no task of its own, and only a cancelled run is run again, whole, in one: the common,
    uncancelled case costs nothing more. Otherwise it runs in its own task from the start.
    As in ``await uncancelled(exchange.close_now, live.store.finish, again=True)``.
    """
    if again:
        try:
            return await work()
        except asyncio.CancelledError:
            await _waited(spawn(work()))
            raise
    task = spawn(work())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await _waited(task)
        raise


async def _waited(task: asyncio.Task[Any]) -> None:
    """Until ``task`` ends (its outcome its own: the caller is cancelled either way), or
    ``WAIT_S``, through further cancellations of the caller (a shutdown's second)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not task.done() and (left := deadline - loop.time()) > 0:
        try:
            await asyncio.wait((task,), timeout=left)
        except asyncio.CancelledError:
            continue
