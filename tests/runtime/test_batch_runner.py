"""The batch runner through its seam (the call that answers one line): a line refused by
the gateway's own limits is tried again, not failed; one past the completion window is
in the error file as ``batch_expired``; the store's lease keeps a second runner off a
batch that one runs."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import httpx
import pytest

from aigw.runtime.app import create_app
from aigw.runtime.batches import BatchRunner, LineAnswer, batch_doc, check_input
from aigw.runtime.batches import input as batch_input
from aigw.runtime.batches.runner import FileBytes
from aigw.runtime.errors import RateLimited, StoreUnavailable
from aigw.runtime.live import Gateway
from aigw.runtime.store.batches import BatchRow, BatchStore, FileRow, LineRow, SQLiteBatches
from aigw.runtime.store.batches_redis import RedisBatches
from aigw.runtime.store.callers import TokenCaller
from aigw.runtime.tokens import TokenCounter

from ..conftest import DEV_KEY, app_client

OK = json.dumps({"object": "chat.completion"}).encode()


def one_at_a_time(gateway_dir: Path) -> None:
    """The gateway at ``gateway_dir`` runs one line of a batch at a time."""
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace("settings:\n", "settings:\n"
                                                 "  batch_concurrency: 1\n", 1))


def _input_line(n: int, pad: int = 0) -> bytes:
    return json.dumps({
        "custom_id": f"c{n}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": f"c{n}" + "x" * pad}]},
    }).encode() + b"\n"


def _input(count: int, pad: int = 0) -> bytes:
    return b"".join(_input_line(n, pad) for n in range(count))


async def _created(gateway: Gateway, runner: BatchRunner, count: int,
                   output_expires_s: int | None = None,
                   pad: int = 0) -> tuple[BatchStore, str]:
    """A batch of ``count`` lines (each ``pad`` bytes longer), as POST /v1/batches makes it."""
    store = await gateway.store.batches()
    assert store is not None
    data = _input(count, pad)
    await runner.files().write("file-in", data)
    await store.put_file(FileRow("file-in", "key:dev", "in.jsonl", "batch", len(data), 0))
    doc = batch_doc("/v1/chat/completions", "file-in",
                    check_input(data, "/v1/chat/completions", 50_000, 1 << 20), None,
                    int(time.time()), output_expires_s, retention_s=30 * 86_400,
                    max_line_bytes=1 << 20)
    await store.put_batch(doc["id"], "key:dev", "dev", doc)
    return store, doc["id"]


@asynccontextmanager
async def _running(runner: BatchRunner) -> AsyncIterator[None]:
    async with runner.running():
        runner.poke()
        yield


async def _final(store: BatchStore, batch_id: str, timeout: float = 20.0) -> BatchRow:
    deadline = time.monotonic() + timeout
    while True:
        row = await store.batch(batch_id)
        assert row is not None
        if row.status in ("completed", "expired", "cancelled", "failed"):
            return row
        assert time.monotonic() < deadline, row
        await asyncio.sleep(0.05)


async def _file_lines(runner: BatchRunner, file_id: str | None) -> list[dict[str, Any]]:
    assert file_id is not None
    return [json.loads(text) for text in (await runner.files().read(file_id)).splitlines()]


async def test_a_line_our_limits_refuse_is_tried_again_not_failed(gateway: Gateway) -> None:
    calls: Counter[bytes] = Counter()

    async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
        calls[body] += 1
        assert (key, path) == ("dev", "/v1/chat/completions")
        if sum(calls.values()) <= 2:  # the first two calls: the key's rpm is spent
            refused = RateLimited("Rate limit reached.", headers={"Retry-After": "0"})
            return LineAnswer(429, refused.body(), "req-limited", refused)
        return LineAnswer(200, OK, f"req-{sum(calls.values())}")

    runner = BatchRunner(gateway, call)
    store, batch_id = await _created(gateway, runner, 2)
    async with _running(runner):
        done = await _final(store, batch_id)
    assert done.status == "completed" and (done.completed, done.failed) == (2, 0)
    assert sum(calls.values()) == 4 and done.doc["error_file_id"] is None


async def test_a_line_no_wait_can_help_fails_at_once(gateway: Gateway) -> None:
    calls: list[bytes] = []

    async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
        calls.append(body)  # over the key's total budget, which never resets
        refused = RateLimited("Budget spent.", headers={"x-should-retry": "false"})
        return LineAnswer(429, refused.body(), "req-over", refused)

    runner = BatchRunner(gateway, call)
    store, batch_id = await _created(gateway, runner, 1)
    async with _running(runner):
        done = await _final(store, batch_id)
    assert (done.completed, done.failed, len(calls)) == (0, 1, 1)
    failed = await _file_lines(runner, done.doc["error_file_id"])
    assert failed[0]["response"]["status_code"] == 429


async def test_lines_left_when_the_window_ends_are_expired(
        gateway_dir: Path, counter: TokenCounter) -> None:
    one_at_a_time(gateway_dir)
    gateway = Gateway(gateway_dir, counter)
    now = [time.time()]

    async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
        now[0] += 2 * 86_400  # the first line took the window and more
        return LineAnswer(200, OK, "req-1")

    runner = BatchRunner(gateway, call, clock=lambda: now[0])
    store, batch_id = await _created(gateway, runner, 3)
    async with _running(runner):
        done = await _final(store, batch_id)
    assert done.status == "expired" and done.doc["expired_at"]
    assert (done.completed, done.failed) == (1, 2)
    expired = await _file_lines(runner, done.doc["error_file_id"])
    assert [(line["custom_id"], line["error"]["code"]) for line in expired] == [
        ("c1", "batch_expired"), ("c2", "batch_expired")]
    assert (await _file_lines(runner, done.doc["output_file_id"]))[0]["custom_id"] == "c0"
    await gateway.aclose()


async def test_a_leased_batch_is_run_by_one_runner(gateway: Gateway) -> None:
    seen: list[str] = []

    def answering(name: str) -> Any:
        async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                       batch: str, tags: tuple[str, ...]) -> LineAnswer:
            seen.append(name)
            await asyncio.sleep(0.02)
            return LineAnswer(200, OK, f"req-{len(seen)}")
        return call

    first, second = BatchRunner(gateway, answering("first")), BatchRunner(
        gateway, answering("second"))
    store, batch_id = await _created(gateway, first, 6)
    assert await store.claim(first.owner, 30.0, time.time()) == (batch_id,)
    async with _running(second):
        await asyncio.sleep(1.5)  # it looked, and found the batch held
        assert seen == []
    await store.release(batch_id, first.owner)
    async with _running(first):
        done = await _final(store, batch_id)
    assert (done.completed, done.failed) == (6, 0) and set(seen) == {"first"}


async def test_a_batch_whose_input_file_is_gone_fails(gateway: Gateway) -> None:
    async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
        raise AssertionError("no line of it is sent")

    runner = BatchRunner(gateway, call)
    store, batch_id = await _created(gateway, runner, 2)
    await store.delete_file("file-in")  # as DELETE /v1/files/{id} does
    await runner.files().delete("file-in")
    async with _running(runner):
        done = await _final(store, batch_id)
    assert done.status == "failed" and done.doc["failed_at"]
    assert [error["code"] for error in done.doc["errors"]["data"]] == ["input_file_missing"]


class _PagesRead:
    """The gateway's batch store, noting the size of each page of results read from it."""

    def __init__(self, store: BatchStore) -> None:
        self._store = store
        self.pages: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def lines(self, batch_id: str, after: int, limit: int) -> tuple[LineRow, ...]:
        found = await self._store.lines(batch_id, after, limit)
        self.pages.append(len(found))
        return found


async def test_the_output_file_is_written_a_page_of_results_at_a_time(
        gateway: Gateway) -> None:
    """The finalizer held every line's result in memory at once (a 50,000-line batch of
    long answers: gigabytes): it reads them from the store a page at a time."""
    async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
        return LineAnswer(200, body, "req")  # the answer as long as the line

    runner = BatchRunner(gateway, call, page=2)
    store, batch_id = await _created(gateway, runner, 5)
    paged = _PagesRead(store)
    gateway.store._batches = paged  # type: ignore[assignment]  # the store it opened, watched
    async with _running(runner):
        done = await _final(paged, batch_id)  # type: ignore[arg-type]
    assert paged.pages == [2, 2, 1, 0]
    assert await store.lines(batch_id, 0, 10) == ()  # in the file now, not twice
    assert (done.completed, done.failed) == (5, 0)  # counted still
    output = await _file_lines(runner, done.doc["output_file_id"])
    assert [line["custom_id"] for line in output] == [f"c{n}" for n in range(5)]
    found = await store.file(done.doc["output_file_id"])
    assert found is not None and found.bytes == (
        await runner.files().folder.joinpath(found.id).stat()).st_size


@pytest.fixture(params=["embedded", "redis"])
async def batch_store(request: pytest.FixtureRequest, tmp_path: Path,
                      redis_url: str) -> AsyncIterator[BatchStore]:
    """A batch store of each kind (Redis: a namespace of its own)."""
    store: BatchStore = (await SQLiteBatches.open(tmp_path / "batches.sqlite")
                         if request.param == "embedded" else
                         RedisBatches(redis_url, namespace=f"test-{secrets.token_hex(6)}"))
    yield store
    await store.aclose()


async def test_expired_files_are_purged_a_page_at_a_time(gateway: Gateway,
                                                         batch_store: BatchStore) -> None:
    """Files were kept for ever: an expired one is now purged, its bytes then its record,
    at most a page of them a pass; one that has not expired (or never does) stays."""
    runner = BatchRunner(gateway, _no_call)
    now = int(time.time())
    for n, expires_at in enumerate((now - 30, now - 20, now - 10, now + 3600, None)):
        await runner.files().write(f"file-{n}", b"{}\n")
        await batch_store.put_file(FileRow(f"file-{n}", "key:dev", "in.jsonl", "batch", 3,
                                           now - 60, expires_at))
    assert [row.id for row in await batch_store.files(None, None, None, 10, False, now)] == [
        "file-3", "file-4"]  # the expired are listed no more
    assert [await runner.purge(batch_store, most=2) for _ in range(3)] == [2, 1, 0]
    for n in range(5):
        assert (await batch_store.file(f"file-{n}") is None) is (n < 3)
        assert await (runner.files().folder / f"file-{n}").exists() is (n >= 3)


async def _no_call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
    raise AssertionError("no line is sent")


async def test_an_expired_file_is_a_404_before_it_is_purged(gateway: Gateway) -> None:
    store = await gateway.store.batches()
    assert store is not None
    runner = BatchRunner(gateway, _no_call)
    await runner.files().write("file-old", b"{}\n")
    await store.put_file(FileRow("file-old", "key:dev", "in.jsonl", "batch", 3, 0, 3600))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(gateway)), base_url="http://aigw.test",
        headers={"authorization": f"Bearer {DEV_KEY}"},
    ) as client:
        for path in ("/v1/files/file-old", "/v1/files/file-old/content"):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"]["message"] == "No such File object: file-old"
        assert (await client.get("/v1/files")).json()["data"] == []


@pytest.mark.parametrize("asked", [3600, None])
async def test_output_files_expire_as_the_batch_asked_or_the_setting_says(
        gateway: Gateway, asked: int | None) -> None:
    async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
        return LineAnswer(200, OK, "req")

    runner = BatchRunner(gateway, call)
    store, batch_id = await _created(gateway, runner, 1, output_expires_s=asked)
    async with _running(runner):
        done = await _final(store, batch_id)
    output = await store.file(done.doc["output_file_id"])
    assert output is not None and output.expires_at == output.created_at + (asked or 30 * 86_400)
    assert "output_expires_s" not in done.as_object()


async def test_a_batch_whose_input_is_not_in_this_files_dir_is_left_to_others(
        gateway: Gateway) -> None:
    """A process whose files_dir lacks the input file (a replica without the shared
    folder, another gateway on the same Redis) failed every batch it claimed as
    ``input_file_missing``: its record is there, so the batch is left to the others."""
    async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
        return LineAnswer(200, OK, "req")

    elsewhere, runner = BatchRunner(gateway, call), BatchRunner(gateway, call)
    store, batch_id = await _created(gateway, elsewhere, 2)
    data = await elsewhere.files().read("file-in")
    await elsewhere.files().delete("file-in")  # not in this process's folder
    async with _running(elsewhere):
        await asyncio.sleep(1.5)  # it claimed the batch, found no input, and let it be
        row = await store.batch(batch_id)
        assert row is not None and row.status == "in_progress", row
        await elsewhere.files().write("file-in", data)  # the folder of the one below
        async with _running(runner):
            done = await _final(store, batch_id)
    assert done.status == "completed" and (done.completed, done.failed) == (2, 0)


class _CancelledWhileFinalizing:
    """The gateway's batch store, with a cancel (as POST .../cancel makes it) arriving
    just before the runner moves the batch to ``finalizing``."""

    def __init__(self, store: BatchStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def change(self, batch_id: str, changes: Any, lease_owner: str | None = None,
                     only_from: tuple[str, ...] = ()) -> bool:
        if changes.get("status") == "finalizing":
            await self._store.change(batch_id, {"status": "cancelling",
                                                "cancelling_at": int(time.time())},
                                     only_from=("validating", "in_progress"))
        return await self._store.change(batch_id, changes, lease_owner, only_from)


async def test_a_cancel_as_the_lines_end_is_not_overwritten_by_completed(
        gateway: Gateway) -> None:
    """The finalizer chose "completed" from the batch it read before the lines ended: a
    cancel answered meanwhile ("cancelling") was overwritten. It ends cancelled."""
    async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
        return LineAnswer(200, OK, "req")

    runner = BatchRunner(gateway, call)
    store, batch_id = await _created(gateway, runner, 2)
    gateway.store._batches = _CancelledWhileFinalizing(store)  # type: ignore[assignment]
    async with _running(runner):
        done = await _final(store, batch_id)
    assert (done.status, done.completed, done.failed) == ("cancelled", 2, 0)
    assert done.doc["cancelled_at"] and done.doc["completed_at"] is None
    assert done.doc["output_file_id"] is not None


class _RenewFails:
    """The gateway's batch store, down for every lease renewal (Redis gone a while)."""

    def __init__(self, store: BatchStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def renew(self, batch_id: str, owner: str, lease_s: float, now: float) -> bool:
        raise StoreUnavailable("the batch store (Redis) failed: connection refused")


async def test_lines_are_sent_only_while_the_lease_is_held(
        gateway_dir: Path, counter: TokenCounter) -> None:
    """A store error renewing the lease ended the renewal while the lines went on: the
    lease lapsed and another process could take the batch and send them too. Now the
    runner stops before the lease lapses."""
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace("settings:\n", "settings:\n"
                                                 "  batch_concurrency: 1\n"
                                                 "  execution_lease_s: 0.6\n", 1))
    gateway = Gateway(gateway_dir, counter)
    lapsed: list[str] = []

    async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
        if await store.claim("probe", 0.001, time.time()):  # another could take it
            lapsed.append(json.loads(body)["messages"][0]["content"])
        await asyncio.sleep(0.15)
        return LineAnswer(200, OK, "req")

    runner = BatchRunner(gateway, call)
    store, batch_id = await _created(gateway, runner, 12)
    gateway.store._batches = _RenewFails(store)  # type: ignore[assignment]
    async with _running(runner):
        await asyncio.sleep(3.0)
    assert lapsed == []
    row = await store.batch(batch_id)
    assert row is not None and row.completed > 0  # sent while it was held
    await gateway.aclose()


class _RecordFailsOnce:
    """The gateway's batch store, down for the first try at recording each line."""

    def __init__(self, store: BatchStore) -> None:
        self._store = store
        self.refused: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def line_done(self, batch_id: str, owner: str, line: int, ok: bool,
                        result: str) -> bool:
        if line not in self.refused:
            self.refused.add(line)
            raise StoreUnavailable("the batch store (Redis) failed: connection reset")
        return await self._store.line_done(batch_id, owner, line, ok, result)


async def test_a_line_the_store_failed_to_record_is_not_sent_again(gateway: Gateway) -> None:
    """A store error recording an answered (and billed) line failed the whole batch, and
    its lines were sent again when it was resumed: the outcome is offered again."""
    calls: Counter[bytes] = Counter()

    async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
        calls[body] += 1
        return LineAnswer(200, OK, "req")

    runner = BatchRunner(gateway, call)
    store, batch_id = await _created(gateway, runner, 3)
    flaky = _RecordFailsOnce(store)
    gateway.store._batches = flaky  # type: ignore[assignment]
    async with _running(runner):
        done = await _final(store, batch_id)
    assert (done.status, done.completed, done.failed) == ("completed", 3, 0)
    assert sorted(calls.values()) == [1, 1, 1] and len(flaky.refused) == 3


class _FilesFailOnce:
    """The gateway's batch store, failing the first file record a finalizer writes (a
    process stopped or killed while it wrote a batch's files)."""

    def __init__(self, store: BatchStore) -> None:
        self._store = store
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def put_file(self, row: FileRow) -> None:
        if not self.failed:
            self.failed = True
            raise StoreUnavailable("the batch store (Redis) failed: connection reset")
        await self._store.put_file(row)


async def test_an_expiring_batch_cut_while_finalizing_still_gets_its_files(
        gateway_dir: Path, counter: TokenCounter) -> None:
    """An ended window made the batch "expired" before its files were written: cut
    there, it was never run again (expired is final) and had no output or error file."""
    one_at_a_time(gateway_dir)
    gateway = Gateway(gateway_dir, counter)
    now = [time.time()]

    async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
        now[0] += 2 * 86_400
        return LineAnswer(200, OK, "req-1")

    runner = BatchRunner(gateway, call, clock=lambda: now[0])
    store, batch_id = await _created(gateway, runner, 3)
    cut = _FilesFailOnce(store)
    gateway.store._batches = cut  # type: ignore[assignment]
    async with _running(runner):
        done = await _final(store, batch_id)
    assert cut.failed and done.status == "expired" and done.doc["expired_at"]
    assert (done.completed, done.failed) == (1, 2)
    assert done.doc["output_file_id"] and done.doc["error_file_id"]
    assert "expiring" not in done.as_object()
    await gateway.aclose()


class _ReadsCounted(FileBytes):
    """The runner's files, the size of each read of an opened one counted."""

    def __init__(self, folder: anyio.Path) -> None:
        super().__init__(folder)
        self.reads: list[int] = []

    def open(self, file_id: str) -> BinaryIO:
        reads = self.reads

        class Counted(io.FileIO):
            def read(self, size: int = -1, /) -> bytes:
                reads.append(size)
                return super().read(size) or b""

        return Counted(str(self.folder / file_id), "r")


async def test_a_resumed_batch_reads_only_a_chunk_of_its_input_at_a_time(
        gateway: Gateway) -> None:
    """A resume read the whole input file and parsed every line (the finished ones too):
    it reads a chunk at a time, and parses and sends only the lines not finished."""
    sent: list[str] = []

    async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
        sent.append(json.loads(body)["messages"][0]["content"][:6])
        return LineAnswer(200, OK, "req")

    files = _ReadsCounted(anyio.Path(gateway.root / gateway.live.graph.settings.files_dir))
    runner = BatchRunner(gateway, call, files=files)
    store, batch_id = await _created(gateway, runner, 300, pad=5000)  # 1.5 MB
    assert await store.claim(runner.owner, 60, time.time()) == (batch_id,)
    for line in range(1, 291):  # finished before the gateway stopped
        assert await store.line_done(batch_id, runner.owner, line, True, "{}")
    await store.release(batch_id, runner.owner)
    async with _running(runner):
        done = await _final(store, batch_id)
    assert (done.completed, done.failed) == (300, 0)
    assert sorted(sent) == sorted(f"c{n}xxxx"[:6] for n in range(290, 300))
    assert files.reads and min(files.reads) > 0
    assert max(files.reads) <= batch_input.READ_CHUNK


async def test_a_resumed_line_that_no_longer_parses_is_failed_not_skipped(
        gateway: Gateway) -> None:
    """A line the batch's check accepted but that no longer parses when it is sent (its
    file changed under it, a check added since) was skipped without a trace: the
    request_counts fell short of the total. It is failed, into the error file."""
    sent: list[str] = []

    async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
        sent.append(json.loads(body)["messages"][0]["content"])
        return LineAnswer(200, OK, "req")

    runner = BatchRunner(gateway, call)
    store, batch_id = await _created(gateway, runner, 4)
    streamed = json.loads(_input_line(2))
    streamed["body"]["stream"] = True
    await runner.files().write("file-in", b"".join((
        _input_line(0), b"{not json\n", json.dumps(streamed).encode() + b"\n",
        _input_line(3))))
    async with _running(runner):
        done = await _final(store, batch_id)
    assert (done.status, done.completed, done.failed) == ("completed", 2, 2)
    assert sorted(sent) == ["c0", "c3"]
    errors = await _file_lines(runner, done.doc["error_file_id"])
    assert sorted((line["custom_id"] or "", line["error"]["code"]) for line in errors) == [
        ("", "invalid_json_line"), ("c2", "invalid_request")]
    assert all(line["response"] is None and line["error"]["message"] for line in errors)


async def test_a_batch_runs_the_lines_its_create_accepted_after_a_reload(
        gateway: Gateway) -> None:
    """The runner read a batch's lines against max_request_bytes as it is now: a reload
    that lowered it dropped the lines accepted over it, neither sent nor in the error
    file. They are read with the limit the batch was checked against."""
    sent: list[str] = []

    async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
        sent.append(json.loads(body)["messages"][0]["content"][:2])
        return LineAnswer(200, OK, "req")

    data = b"".join(_input_line(n, pad=3000 if n % 2 == 0 else 0) for n in range(4))
    async with app_client(gateway) as client:
        uploaded = await client.post("/v1/files", files={"file": ("in.jsonl", data)},
                                     data={"purpose": "batch"})
        created = await client.post("/v1/batches", json={
            "input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"})
    assert created.json()["request_counts"]["total"] == 4, created.text
    config = gateway.root / "gateway.yaml"
    config.write_text(config.read_text().replace("max_request_bytes: 4194304",
                                                 "max_request_bytes: 2000"))
    assert (await gateway.reload("test")).ok
    store = await gateway.store.batches()
    assert store is not None
    async with _running(BatchRunner(gateway, call)):
        done = await _final(store, created.json()["id"])
    assert (done.completed, done.failed) == (4, 0)
    assert sorted(sent) == ["c0", "c1", "c2", "c3"]
    assert "max_line_bytes" not in done.as_object()


async def test_a_50000_line_batch_is_checked_without_holding_its_file(
        gateway: Gateway) -> None:
    """Creating a batch read its whole input file and parsed all its lines into memory
    (up to files_max_bytes, twice): it is checked a chunk at a time."""
    store = await gateway.store.batches()
    assert store is not None
    folder = gateway.root / gateway.live.graph.settings.files_dir
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "file-big").open("wb") as out:
        for n in range(50_000):
            out.write(_input_line(n, pad=1000))
    size = (folder / "file-big").stat().st_size
    await store.put_file(FileRow("file-big", "key:dev", "in.jsonl", "batch", size, 0))
    async with app_client(gateway) as client:
        tracemalloc.start()
        try:
            response = await client.post("/v1/batches", json={
                "input_file_id": "file-big", "endpoint": "/v1/chat/completions",
                "completion_window": "24h"})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert response.status_code == 200, response.text
    assert response.json()["request_counts"]["total"] == 50_000
    assert peak < 16 << 20, (peak, size)  # the custom_ids seen and a chunk, not 50 MB


async def test_finished_batches_are_purged_a_page_at_a_time(
        batch_store: BatchStore) -> None:
    """Batch records were kept for ever: a finished one is purged once its forget_at (when
    its files expire) is past, at most a page a pass; a running one, or one whose time
    has not come, stays."""
    now = int(time.time())
    for n, forget_at in enumerate((now - 30, now - 20, now - 10, now + 3600, None)):
        doc = {"status": "completed" if forget_at else "in_progress", "created_at": now - 60,
               "forget_at": forget_at}
        await batch_store.put_batch(f"batch_{n}", "key:dev", "dev", doc)
    assert await batch_store.claim("me", 60, now) == ("batch_4",)
    assert await batch_store.line_done("batch_4", "me", 1, True, "{}")
    assert await batch_store.change("batch_4", {"status": "completed", "forget_at": now - 5})
    assert [await batch_store.purge_batches(now, 2, 86_400) for _ in range(4)] == [
        2, 2, 0, 0]
    assert [row.id for row in await batch_store.batches(None, None, 10)] == ["batch_3"]
    for n in (0, 1, 2, 4):
        assert await batch_store.batch(f"batch_{n}") is None
    assert await batch_store.lines("batch_4", 0, 10) == ()
    if isinstance(batch_store, RedisBatches):  # nothing of theirs is left behind
        assert await batch_store.redis.keys(f"{batch_store._ns}:batch:batch_[0124]*") == []


async def test_a_batch_finished_before_batches_were_purged_is_purged_too(
        gateway: Gateway, batch_store: BatchStore) -> None:
    """A batch that finished before records had a forget_at was kept for ever: the purge
    gives it one, from when it finished and its retention (its own, else the setting's)."""
    now, day = int(time.time()), 86_400
    olds = {"batch_old": ("completed", now - 31 * day, None),  # past the setting's 30 days
            "batch_asked": ("failed", now - 2 * 3600, 3600),  # past its own hour
            "batch_recent": ("cancelled", now - day, None),
            "batch_asked_long": ("expired", now - 31 * day, 40 * day)}
    for batch_id, (status, finished, kept) in olds.items():
        await batch_store.put_batch(batch_id, "key:dev", "dev", {  # as they were written
            "status": status, "created_at": finished - 60, f"{status}_at": finished,
            "output_expires_s": kept})
    runner = BatchRunner(gateway, _no_call)
    assert await runner.purge(batch_store) == 2
    assert sorted(row.id for row in await batch_store.batches(None, None, 10)) == [
        "batch_asked_long", "batch_recent"]
    assert await runner.purge(batch_store) == 0


async def test_a_finished_batch_is_forgotten_with_its_files(gateway: Gateway) -> None:
    async def call(key: str, caller: TokenCaller | None, path: str, body: bytes,
                   batch: str, tags: tuple[str, ...]) -> LineAnswer:
        return LineAnswer(200, OK, "req")

    later = [0.0]
    runner = BatchRunner(gateway, call, clock=lambda: time.time() + later[0])
    store, batch_id = await _created(gateway, runner, 1, output_expires_s=3600)
    async with _running(runner):
        done = await _final(store, batch_id)
    output = await store.file(done.doc["output_file_id"])
    assert output is not None and done.doc["forget_at"] == output.expires_at
    assert "forget_at" not in done.as_object()
    assert await runner.purge(store) == 0
    later[0] = 3601
    assert await runner.purge(store) == 2  # its output file and its record
    assert await store.batch(batch_id) is None
