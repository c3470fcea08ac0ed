"""What a runner's poll and an approvals read cost: bounded by what they may return,
never by how many executions are held or waiting."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import redis

from aigw.runtime.store.executions import (
    Checkpoint,
    NewExecution,
    Status,
    StepState,
    StepStatus,
    local_owners,
    new_owner,
)
from aigw.runtime.store.executions_redis import RedisExecutions
from aigw.runtime.store.executions_sqlite import CLAIM_SQL, SQLiteExecutions
from aigw.runtime.store.sqlite_file import SQLiteFile

from ..redis_server import PrivateRedis

NOW = 1_767_225_600.0
HOUR = 3600.0
HELD = 2000


def _new(n: int) -> NewExecution:
    return NewExecution("research", {"topic": "x" * 200}, "dev", f"i{n}", "f1ngerprint")


def _unused_pid() -> int:
    """A process id nobody uses in this PID namespace (the highest free one)."""
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while Path(f"/proc/{pid}").exists():
        pid -= 1
    return pid


class Instructions:
    """Counts the SQLite virtual machine's instructions run on the store's own
    connection (its progress handler, called at each one): what a call reads."""

    def __init__(self, db: SQLiteFile) -> None:
        self._db = db
        self.count = 0

    def _step(self) -> int:
        self.count += 1
        return 0  # go on

    async def start(self) -> None:
        self.count = 0
        await self._db.call(lambda connection: connection.set_progress_handler(self._step, 1))

    async def stop(self) -> int:
        await self._db.call(lambda connection: connection.set_progress_handler(None, 1))
        return self.count


async def test_a_claim_reads_what_it_may_take_not_the_executions_held(tmp_path: Path) -> None:
    """Each poll (twice a second per runner) read and decoded every active execution,
    those held by live runners too: with 2000 running or waiting it ran some hundred
    thousand instructions to take nothing. It now reads ranges of partial indexes: with
    2000 held it costs what it costs with none, and still finds, behind them, a lapsed
    lease's execution, a dead local process's and a queued one, in that order."""
    path = tmp_path / "aigw.sqlite"
    await (await SQLiteExecutions.open(path)).aclose()  # the tables
    db = await SQLiteFile.open(path, synchronous="OFF")
    store = SQLiteExecutions(db)
    counter = Instructions(db)
    runner = new_owner()
    try:
        await counter.start()
        assert await store.claim(runner, 10, NOW, 10) == ()
        empty = await counter.stop()

        holder = new_owner()  # a live runner (this process) holding them all for an hour
        for n in range(HELD):
            await store.create(_new(n), NOW)
        held: list[str] = []
        while taken := await store.claim(holder, HOUR, NOW, HELD):
            held += taken
        assert len(held) == HELD
        for n, execution_id in enumerate(held):
            status = Status.RUNNING if n % 2 else Status.WAITING
            await store.commit(execution_id, holder, Checkpoint(status=status), NOW)

        await counter.start()
        assert await store.claim(runner, 10, NOW + 5, 10) == ()
        loaded = await counter.stop()
        assert loaded <= empty + 200, (empty, loaded)

        lapsed, _ = await store.create(_new(HELD), NOW)  # its runner elsewhere stopped
        assert await store.claim("elsewhere:1:0badcafe", 1, NOW, 1) == (lapsed.id,)
        orphan, _ = await store.create(_new(HELD + 1), NOW)  # its process here is gone
        dead = f"{local_owners()[0]}{_unused_pid()}:deadbeef"
        assert await store.claim(dead, HOUR, NOW, 1) == (orphan.id,)
        queued, _ = await store.create(_new(HELD + 2), NOW)
        assert await store.claim(runner, 10, NOW + 5, 10) == (lapsed.id, orphan.id, queued.id)
        assert await store.claim(runner, 10, NOW + 5, 10) == ()  # its own are not taken again
    finally:
        await store.aclose()


async def test_each_statement_of_a_claim_is_a_range_of_a_partial_index(
    tmp_path: Path,
) -> None:
    """``INDEXED BY`` makes SQLite refuse a statement that cannot use its index; the
    plans show a range of it, never a scan nor a sort."""
    path = tmp_path / "aigw.sqlite"
    await (await SQLiteExecutions.open(path)).aclose()
    params = {"lapsed": (NOW, "me", 5), "next_holder": ("a", "b"), "held_by": ("a", 5),
              "unheld": (5,)}
    with contextlib.closing(sqlite3.connect(path)) as db:
        plans = {name: [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}",
                                                      params[name])]
                 for name, sql in CLAIM_SQL.items()}
    assert plans == {
        "lapsed": ["SEARCH wf_executions USING INDEX wf_claimable "
                   "(lease_until>? AND lease_until<?)"],
        "next_holder": ["SEARCH wf_executions USING INDEX wf_held_by (owner>? AND owner<?)"],
        "held_by": ["SEARCH wf_executions USING INDEX wf_held_by (owner=?)"],
        "unheld": ["SEARCH wf_executions USING INDEX wf_claimable (lease_until=?)"],
    }


@contextlib.contextmanager
def _calls(url: str, command: str) -> Iterator[list[int]]:
    """How many times ``command`` ran on the server while in the block (INFO
    commandstats, before and after), in the list it yields."""
    client = redis.Redis.from_url(url)

    def calls() -> int:
        stats = client.info("commandstats").get(f"cmdstat_{command}")
        return int(stats["calls"]) if stats else 0

    counted: list[int] = []
    try:
        before = calls()
        yield counted
        counted.append(calls() - before)
    finally:
        client.close()


async def test_waiting_reads_a_page_of_the_index_not_every_execution_in_it(
    private_redis: PrivateRedis,
) -> None:
    """``waiting`` (the admin page's approvals, each approvals inbox) read the whole
    ``waiting`` set and every execution in it on each call: 1000 executions for the 5
    newest approvals. It reads the newest page now, and tidies what it reads; the purge
    takes the executions it deletes out of the set (those past the pages read stayed)."""
    store = RedisExecutions.from_url(private_redis.url, namespace="polling")
    owner = new_owner()
    waits = StepState("sign_off", StepStatus.WAITING, 1, detail={"message": "ok?"})
    try:
        made = [(await store.create(_new(n), NOW + n))[0] for n in range(1000)]
        claimed: list[str] = []
        while taken := await store.claim(owner, HOUR, NOW, 1000):
            claimed += taken
        assert len(claimed) == 1000
        for n, execution in enumerate(made):
            await store.commit(execution.id, owner, Checkpoint(steps=(waits,),
                               status=Status.WAITING), NOW + n)
        # The newest two no longer wait: read, tidied away, and the page goes on past them.
        for execution in made[-2:]:
            await store.commit(execution.id, owner, Checkpoint(status=Status.FAILED), NOW)
        # The oldest ends and is purged: out of the index too, where no page would reach it.
        await store.commit(made[0].id, owner, Checkpoint(status=Status.FAILED), NOW)
        assert await store.purge(NOW + 1, 10) == 3
        client = redis.Redis.from_url(private_redis.url, decode_responses=True)
        try:
            assert client.zscore("polling:wf:waiting", made[0].id) is None
        finally:
            client.close()

        with _calls(private_redis.url, "hgetall") as hashes:
            found = await store.waiting(5)
        assert [execution.id for execution, _ in found] == [e.id for e in made[-3:-8:-1]]
        assert hashes[0] <= 10, hashes  # it was 1000
        with _calls(private_redis.url, "hgetall") as hashes:
            assert [execution.id for execution, _ in await store.waiting(5)] == \
                [e.id for e in made[-3:-8:-1]]
        assert hashes[0] == 5, hashes  # the two that ended were taken out
    finally:
        await store.aclose()
