"""One "gateway process" for the shared-limit test: its own RedisStore client, reserving
tokens against one team's TPM limit until told how many it got.

    python tests/store/tpm_worker.py URL NAMESPACE NOW ATTEMPTS TOKENS TPM

Prints "ready" once connected, waits for a line on stdin (so that every process
starts racing at once, however long each took to start), then prints the number of
reservations it was granted. The clock is fixed at NOW, so buckets do not refill
while the processes race: all of them together can get exactly TPM tokens.
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass

from aigw.runtime.store import Limits, RedisStore, Reservation, Scope


@dataclass(frozen=True, slots=True)
class FixedClock:
    at: float

    def now(self) -> float:
        return self.at


async def main(argv: list[str]) -> int:
    url, namespace, now, attempts, tokens, tpm = argv
    store = RedisStore.from_url(url, namespace=namespace, clock=FixedClock(float(now)))
    limits = [Limits(Scope.TEAM, "engineering", tpm=int(tpm))]
    await store.budgets(limits)  # connected
    print("ready", flush=True)
    sys.stdin.readline()
    granted = 0
    try:
        for attempt in range(int(attempts)):
            request_id = f"worker-{os.getpid()}-{attempt}"
            decision = await store.reserve(request_id, limits, tokens=int(tokens), cost=0.0)
            granted += isinstance(decision, Reservation)
    finally:
        await store.aclose()
    return granted


if __name__ == "__main__":
    print(asyncio.run(main(sys.argv[1:])))
