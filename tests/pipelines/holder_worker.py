"""A runner in another process that claims an execution and holds it.

    python tests/pipelines/holder_worker.py SQLITE_PATH

Claims every execution queued in the embedded store with a lease of an hour, prints
its owner name once it holds them, and exits (without letting go) when stdin closes.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from aigw.runtime.store.executions import new_owner
from aigw.runtime.store.executions_sqlite import SQLiteExecutions


async def main(path: str) -> None:
    store = await SQLiteExecutions.open(Path(path))
    owner = new_owner()
    try:
        held = await store.claim(owner, 3600.0, time.time(), 10)
        assert held, "nothing to hold"
        print(owner, flush=True)
        await asyncio.to_thread(sys.stdin.read)
    finally:
        await store.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
