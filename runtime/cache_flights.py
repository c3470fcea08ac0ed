"""Single flight for the response cache: identical requests that miss at once in one
process make one upstream call, not one each.

The first request to miss a cache key leads: it goes upstream and keeps its answer as
any miss does. Requests for the same key that miss while it is in the air wait for it to
land (at most half of what is left of their own deadline, so that one left waiting
still has time to be answered itself) and then look the cache up again: served the
leader's answer as a hit, through the same checks as any hit (the route policies for
its deployment, the scope, which the key holds). A leader that failed, or whose answer
was not kept (not cacheable, over the entry cap, withheld by an output guardrail), kept
nothing to serve: each waiter then goes upstream itself rather than be given the
leader's error, which may be the leader's own (its budget, its policies, its client
gone). A waiter that stopped waiting goes upstream too, and leads nothing.

Streams take part as plain requests do, since a stream's answer is kept once it ended:
a waiting stream's first token comes when the leader's last one did. Only this
process's requests share a flight; replicas (and ``--workers``) each lead their own.
"""

from __future__ import annotations

import asyncio

import anyio


class Flights:
    """The cache keys being fetched now, each with the event set when it lands."""

    def __init__(self) -> None:
        self._flying: dict[str, asyncio.Event] = {}

    def join(self, key: str) -> tuple[asyncio.Event, bool]:
        """The flight of ``key`` and whether the caller leads it (it was not in the air:
        land it with ``land``), or waits for it.

        >>> flights = Flights()
        >>> first, leads = flights.join("k")
        >>> second, waits = flights.join("k")
        >>> (leads, waits, first is second)
        (True, False, True)
        """
        landed = self._flying.get(key)
        if landed is not None:
            return landed, False
        landed = self._flying[key] = asyncio.Event()
        return landed, True

    def land(self, key: str, flight: asyncio.Event) -> None:
        """The leader of ``flight`` is done (answered and kept, or failed): its waiters
        look again, and the next miss of ``key`` leads a new one."""
        if self._flying.get(key) is flight:
            del self._flying[key]
        flight.set()

    def __len__(self) -> int:
        return len(self._flying)


async def landed(flight: asyncio.Event, wait_s: float) -> bool:
    """Whether ``flight`` landed within ``wait_s`` seconds."""
    if wait_s <= 0:
        return False
    with anyio.move_on_after(wait_s) as waited:
        await flight.wait()
    return not waited.cancelled_caught
