"""A replica's runner in another process, for the race for an expired lease: the
runtime's own ``Runner`` loop on a Redis store, whose work is to hold what it is given.

    python tests/pipelines/runner_worker.py URL NAMESPACE LEASE_S

Prints "ready" once connected; at a line on stdin starts its runner, which prints
{"owner", "ran", "at"} for each execution it is given to run and holds it (renewing its
lease) until the process is killed, as a replica dies: stopped, a runner lets go of what
it holds, and another would take it, rightly.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aigw.runtime.store.executions import Execution, Status, new_owner
from aigw.runtime.store.executions_redis import RedisExecutions
from aigw.runtime.workflows.runner import Runner


async def main(url: str, namespace: str, lease_s: float) -> None:
    store = RedisExecutions.from_url(url, namespace=namespace)
    owner = new_owner()

    async def hold(execution: Execution) -> Status:
        print(json.dumps({"owner": owner, "ran": execution.id, "at": time.time()}), flush=True)
        await asyncio.Event().wait()  # until the runner stops
        return execution.status

    try:
        await store.get("exec_none")  # connected
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        Runner(store, owner, lease_s, hold, time.time, poll_s=0.05).start()
        await asyncio.Event().wait()
    finally:
        await store.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
