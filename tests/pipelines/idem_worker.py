"""Another replica for the idempotency race: it asks for an execution with an
idempotency key the moment the test's process has taken that key in Redis.

    python tests/pipelines/idem_worker.py URL NAMESPACE KEY IDEMPOTENCY_KEY

Prints "ready" once connected, waits for the key ``<NAMESPACE>:wf:idem:KEY:IDEM`` to
exist, creates an execution with it, and prints {"id": ..., "created": ...}.
"""

from __future__ import annotations

import asyncio
import json
import sys

import redis.asyncio as aioredis

from aigw.runtime.store.executions import NewExecution
from aigw.runtime.store.executions_redis import RedisExecutions


async def main(url: str, namespace: str, key: str, idempotency: str) -> None:
    store = RedisExecutions.from_url(url, namespace=namespace)
    watch = aioredis.Redis.from_url(url)
    try:
        await store.get("exec_none")  # connected
        await watch.ping()
        print("ready", flush=True)
        while not await watch.exists(f"{namespace}:wf:idem:{key}:{idempotency}"):
            pass
        execution, created = await store.create(
            NewExecution("research", {"topic": "x"}, key, idempotency, "f1"), 0.0)
        print(json.dumps({"id": execution.id, "created": created}), flush=True)
    finally:
        await watch.aclose()
        await store.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
