"""Keeping Python's cyclic garbage collector off the request path.

Measured under load (bench/BENCH.md, "Garbage collection under load"): with CPython's default
thresholds a serving process ran a full (generation 2) collection every second or so,
each one walking the ~90,000 objects of the compiled graph, Cedar, pydantic and the
libraries, and pausing every in-flight request for 30 to 60 ms: that was the p95 and
p99 at a few hundred requests a second, and a tenth of the CPU.

So a worker, once its gateway is built, collects once and freezes what survived
(``gc.freeze``: those objects are never scanned again), and raises the first
threshold so that the short-lived objects of in-flight requests are mostly freed by
reference counting before a young collection ever looks at them. Objects still
reachable are unaffected; only the collector's scanning changes.

A reload builds a new graph; the old one is released by reference counting when its
last request ends. Frozen objects are never collected, so anything of the old graph
that sits in a reference cycle would stay: after a reload, once the old graph's
requests must be over, the heap is unfrozen, collected and frozen again.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("aigw")

# Young collections every 10,000 net container allocations instead of 700: a request
# allocates a few hundred, nearly all freed by reference counting when it ends.
THRESHOLDS = (10_000, 20, 20)


def freeze() -> None:
    """Collect once, then keep everything alive now out of every later collection."""
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
    log.debug("heap frozen: %d objects in %.1f ms", gc.get_freeze_count(),
              (time.perf_counter() - started) * 1000)


def frozen() -> bool:
    return gc.get_freeze_count() > 0


def refreeze_later(delay_s: float) -> None:
    """After a reload: once ``delay_s`` has passed (the old graph's requests are over),
    let the collector see the old graph's cycles once, then freeze again."""
    if not frozen():
        return  # not a serving worker (tests, the CLI): the defaults stay

    def refreeze() -> None:
        gc.unfreeze()
        freeze()

    asyncio.get_running_loop().call_later(delay_s, refreeze)
