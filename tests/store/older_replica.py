"""A replica of an older aigw on a Redis ledger, for tests of a rolling upgrade: run with
the older version's ``aigw`` first on ``sys.path``, it reads a JSON request on stdin,
``{"url", "records": [LedgerRecord fields], "queries": [UsageQuery fields]}``, writes the
records through its RedisStore, then answers each query's summary (its rows' fields) as
JSON on stdout.

It imports only what that version has (``aigw.runtime.store``), and passes a record's
fields that version's ``LedgerRecord`` knows."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from typing import Any

import aigw
from aigw.runtime.store import Dimension, LedgerRecord, RedisStore, UsageQuery


async def serve(request: dict[str, Any]) -> list[list[dict[str, Any]]]:
    known = {field.name for field in dataclasses.fields(LedgerRecord)}
    store = RedisStore.from_url(request["url"])
    try:
        for fields in request["records"]:
            await store.record(LedgerRecord(**{name: value for name, value in fields.items()
                                               if name in known}))
        answers = []
        for query in request["queries"]:
            rows = await store.summary(UsageQuery(
                **{**query, "group_by": tuple(map(Dimension, query["group_by"]))}))
            answers.append([dataclasses.asdict(row) for row in rows])
        return answers
    finally:
        await store.aclose()


if __name__ == "__main__":
    answers = asyncio.run(serve(json.load(sys.stdin)))
    json.dump({"aigw": aigw.__file__, "summaries": answers}, sys.stdout)
