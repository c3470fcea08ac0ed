"""Runs batches in the background: each line through the gateway's own request path.

A runner looks for work every second (and at once when this process creates or cancels
a batch): it takes the lease of every running batch nobody holds, and renews it every
third of ``execution_lease_s`` while it runs the batch. With several processes on one
store file, exactly one runs a batch at a time; one that died leaves its lease to lapse,
and the next claimant resumes the batch, skipping every line that has a row (a line is
recorded as it finishes, fenced by the lease). A line sent but not yet recorded when its
process died is sent again: the one request a crash can repeat.

Lines run at most ``batch_concurrency`` at once per batch and ``batches_concurrency``
at once in the process. A line refused by the gateway's own rate limits or budgets (a
429 that is not the upstream's) is tried again later, until the completion window ends,
rather than counted as failed; one that waiting cannot help (``x-should-retry: false``:
larger than a limit on its own, a budget that never resets) fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import anyio

from ..errors import GatewayError, InternalError, PayloadTooLarge, RateLimited
from ..store.batches import BatchRow, BatchStore, FileRow, LineRow
from ..store.callers import TokenCaller
from .input import READ_CHUNK, InputLine, UnreadLine, pending_lines

if TYPE_CHECKING:
    from ..live import Gateway

log = logging.getLogger("aigw.batches")

LOOK_EVERY_S = 1.0
# At a stop, lines in flight are waited for this long (no new one is sent), then cut:
# one cut is sent again by whichever process resumes the batch.
STOP_WAIT_S = 10.0
RETRY_LIMITED_S = 1.0  # a line refused by our own limits waits this at least
RECORD_AGAIN_S = 0.2  # a line's outcome the store did not take is offered again after
# The finished lines a finalizing batch reads from the store at a time: its output and
# error files are written a page at a time, so memory does not grow with the batch.
FINISH_PAGE = 500
# The lines of a running batch's input read (and parsed) at a time, in a worker thread.
PENDING_PAGE = 256
# Expired files (bytes, then record) and the records of batches finished as long ago
# are purged this often, at most PURGE_PAGE of each a pass: every process purges, so a
# pass is short however many expired at once.
PURGE_EVERY_S = 60.0
PURGE_PAGE = 100
# A batch whose input file this process cannot read (though the file's record is there)
# is left to the others this long: its files_dir is not the one the file was uploaded to.
ELSEWHERE_S = 60.0


class LeaseLost(Exception):
    """Another process holds the batch now: this one stops running it."""


@dataclass(frozen=True, slots=True)
class LineAnswer:
    """What a line's request answered: its status, body and request id; ``error`` when
    the gateway refused or failed it."""

    status: int
    body: Any  # the answer's JSON (bytes), or an error's body (a dict)
    request_id: str
    error: GatewayError | None = None

    def parsed(self) -> Any:
        return json.loads(self.body) if isinstance(self.body, bytes) else self.body


# A line's answer, asked as (the creator key's name, the JWT caller it was if one, the
# endpoint's path, the line's body, the batch's id, the x-aigw-tags its creating request
# sent: Cedar asks each line with them, as it asked that request).
LineCall = Callable[[str, TokenCaller | None, str, bytes, str, tuple[str, ...]],
                    Awaitable[LineAnswer]]


class FileBytes:
    """The bytes of files, one per file under ``folder``; written to a temporary name and
    renamed, so a file is whole or absent."""

    def __init__(self, folder: anyio.Path) -> None:
        self.folder = folder

    async def write(self, file_id: str, data: bytes) -> None:
        await self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".{file_id}.part"
        await temporary.write_bytes(data)
        await temporary.rename(self.folder / file_id)

    async def write_chunks(self, file_id: str, chunks: AsyncIterator[bytes],
                           most: int) -> int:
        """``chunks`` into the file ``file_id`` as they come, so an upload is never whole in
        memory; its size. Past ``most`` bytes it raises ``PayloadTooLarge``: then, as on
        any failure (a cancel too), the part written is removed and no file is made."""
        await self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self.folder / f".{file_id}.part"
        size = 0
        try:
            async with await anyio.open_file(temporary, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > most:
                        raise PayloadTooLarge(
                            f"The file is over this gateway's files_max_bytes ({most}).")
                    await out.write(chunk)
            await temporary.rename(self.folder / file_id)
        except BaseException:
            # Synchronous: a cancelled task could not await the removal.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        return size

    async def write_split(self, ids: tuple[str, str],
                          pages: AsyncIterator[tuple[LineRow, ...]]) -> tuple[int, int]:
        """The lines of ``pages`` that are ok into the file ``ids[0]``, the others into
        ``ids[1]``, a page at a time; the bytes of each (0: that file is not made)."""
        await self.folder.mkdir(parents=True, exist_ok=True)
        temporary = tuple(self.folder / f".{file_id}.part" for file_id in ids)
        sizes = [0, 0]
        async with await anyio.open_file(temporary[0], "wb") as ok_file, \
                await anyio.open_file(temporary[1], "wb") as error_file:
            async for page in pages:
                for index, out in enumerate((ok_file, error_file)):
                    chunk = "".join(f"{line.result}\n" for line in page
                                    if line.ok is (index == 0)).encode()
                    if chunk:
                        await out.write(chunk)
                        sizes[index] += len(chunk)
        for index, file_id in enumerate(ids):
            if sizes[index]:
                await temporary[index].rename(self.folder / file_id)
            else:
                await temporary[index].unlink()
        return sizes[0], sizes[1]

    async def read(self, file_id: str) -> bytes:
        return await (self.folder / file_id).read_bytes()

    def open(self, file_id: str) -> BinaryIO:
        """The file to read a chunk at a time, in a worker thread (an input file is up to
        files_max_bytes: it is never read whole)."""
        return open(self.folder / file_id, "rb")  # the caller closes it

    async def delete(self, file_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await (self.folder / file_id).unlink()


def owner_of(team: str | None, key: str) -> str:
    """Files and batches are their team's (any key of it finds them), else their key's."""
    return f"team:{team}" if team is not None else f"key:{key}"


class BatchRunner:
    """Finds, leases and runs batches; ``call`` answers one line (runtime/app.py)."""

    def __init__(self, gateway: Gateway, call: LineCall,
                 clock: Callable[[], float] = time.time, page: int = FINISH_PAGE,
                 files: FileBytes | None = None) -> None:
        self.gateway = gateway
        self._call = call
        self._clock = clock
        self._page = page
        started = gateway.live.graph.settings  # a reload does not move the files
        self._files = files or FileBytes(anyio.Path(gateway.root) / started.files_dir)
        self._concurrency = started.batches_concurrency
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._wake: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._active: dict[str, asyncio.Task[None]] = {}
        self._elsewhere: dict[str, float] = {}  # batch id -> when this process tries again
        self._stopping = False

    def files(self) -> FileBytes:
        return self._files

    def poke(self) -> None:
        """Look for work now (a batch was created or cancelled here)."""
        if self._wake is not None:
            self._wake.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self._concurrency)
        looking = asyncio.create_task(self._look(), name="aigw-batches")
        try:
            yield
        finally:
            self._stopping = True
            looking.cancel()
            if self._active:
                await asyncio.wait(list(self._active.values()), timeout=STOP_WAIT_S)
            for task in self._active.values():
                task.cancel()
            await asyncio.gather(looking, *self._active.values(), return_exceptions=True)

    async def _look(self) -> None:
        assert self._wake is not None
        purged = 0.0
        while True:
            try:
                store = await self.gateway.store.batches(create=False)
                if store is not None and self._clock() - purged >= PURGE_EVERY_S:
                    purged = self._clock()
                    await self.purge(store)
                if store is not None:
                    lease_s = self.gateway.live.graph.settings.execution_lease_s
                    now = self._clock()
                    self._elsewhere = {batch_id: until for batch_id, until
                                       in self._elsewhere.items() if until > now}
                    for batch_id in await store.claim(self.owner, lease_s, now,
                                                      frozenset(self._elsewhere)):
                        if batch_id not in self._active:
                            self._active[batch_id] = asyncio.create_task(
                                self._held(store, batch_id), name=f"aigw-batch-{batch_id}")
            except GatewayError as exc:  # the store is down: looked for again in a second
                log.warning("looking for batches to run failed: %s", exc.message)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), LOOK_EVERY_S)
            self._wake.clear()

    async def purge(self, store: BatchStore, most: int = PURGE_PAGE) -> int:
        """Delete up to ``most`` expired files, their bytes before their record (a crash
        between leaves a record the next pass finds again, never bytes without one), and
        up to ``most`` records of batches finished longer ago than their files are kept;
        how many of each, together."""
        expired = await store.expired_files(self._clock(), most)
        for row in expired:
            await self.files().delete(row.id)
            await store.delete_file(row.id)
        if expired:
            log.info("purged %d expired files", len(expired))
        forgotten = await store.purge_batches(
            self._clock(), most, self.gateway.live.graph.settings.batch_output_retention_s)
        if forgotten:
            log.info("purged %d finished batches", forgotten)
        return len(expired) + forgotten

    async def _held(self, store: BatchStore, batch_id: str) -> None:
        """Run the batch while renewing its lease; give the lease back at the end (a
        stop too), so that another process, or this one restarted, takes it at once."""
        lost = asyncio.Event()
        renewing = asyncio.create_task(self._renew(store, batch_id, lost))
        try:
            await _unless(lost, self._run(store, batch_id))
        except Exception:  # logged: the lease lapses and the batch is tried again
            log.exception("running batch %s failed", batch_id)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            self._active.pop(batch_id, None)
            if not lost.is_set():
                with contextlib.suppress(GatewayError):
                    await asyncio.shield(store.release(batch_id, self.owner))

    async def _renew(self, store: BatchStore, batch_id: str, lost: asyncio.Event) -> None:
        """Renew the lease every third of it; set ``lost`` when another holds it, or when
        the store has not renewed it for half of it. A store error ended this task while
        the lines went on being sent: the lease lapsed, another process took the batch,
        and both sent its lines."""
        lease_s = self.gateway.live.graph.settings.execution_lease_s
        renewed = self._clock()
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                held = await store.renew(batch_id, self.owner, lease_s, self._clock())
            except GatewayError as exc:
                if self._clock() - renewed < lease_s / 2:
                    log.warning("batch %s: renewing its lease failed (%s); trying again",
                                batch_id, exc.message)
                    continue
                log.warning("batch %s: its lease could not be renewed; stopping here before "
                            "it lapses", batch_id)
                held = False
            if not held:
                log.warning("batch %s: its lease was taken over; stopping here", batch_id)
                lost.set()
                return
            renewed = self._clock()

    async def _run(self, store: BatchStore, batch_id: str) -> None:
        row = await store.batch(batch_id)
        if row is None:
            return
        if row.status == "in_progress":
            if not await self._lines(store, row):
                return  # stopped here: the batch is resumed where it stopped
            row = await store.batch(batch_id)
            assert row is not None
        await self._finish(store, row)

    async def _lines(self, store: BatchStore, row: BatchRow) -> bool:
        """Send the lines that have no outcome yet; False if the gateway's stop cut that
        short, or this process cannot read the input (the batch is neither finished nor
        expired: it is resumed, here or by another process)."""
        settings = self.gateway.live.graph.settings
        try:
            file = await anyio.to_thread.run_sync(self.files().open, row.doc["input_file_id"])
        except FileNotFoundError:
            if self._clock() < row.doc["expires_at"] and \
                    await store.file(row.doc["input_file_id"]) is not None:
                # Not deleted: this process's files_dir is not where it was uploaded (a
                # replica that does not mount the shared folder, another gateway on the
                # same Redis). Failing it here failed every batch such a process claimed.
                log.error("batch %s: its input file %s is not in this process's files_dir "
                          "%s; left to the processes that have it", row.id,
                          row.doc["input_file_id"], self.files().folder)
                self._elsewhere[row.id] = self._clock() + ELSEWHERE_S
                return False
            log.error("batch %s: its input file %s is gone from %s; the batch failed",
                      row.id, row.doc["input_file_id"], self.files().folder)
            now = int(self._clock())
            kept = row.doc.get("output_expires_s") or settings.batch_output_retention_s
            await store.change(row.id, {"status": "failed", "failed_at": now,
                                        "forget_at": now + kept,
                                        "errors": {"object": "list", "data": [{
                                            "code": "input_file_missing", "line": None,
                                            "param": "input_file_id", "message":
                                            "The batch's input file was deleted."}]}},
                               self.owner)
            return True
        per_batch = asyncio.Semaphore(settings.batch_concurrency)
        stop = _Stop(store, row.id, row.doc["expires_at"], self._clock,
                     lambda: self._stopping)
        with file:
            done = await store.done(row.id)
            async with contextlib.aclosing(self._pending(file, row, done)) as pending, \
                    asyncio.TaskGroup() as group:
                async for line in pending:
                    if isinstance(line, UnreadLine):  # failed as it is: nothing to send
                        if not await self._record(store, row.id, line.line, False,
                                                  _line_json(line.custom_id, None, line.error)):
                            raise LeaseLost(row.id)
                        continue
                    await per_batch.acquire()
                    if await stop.now():
                        per_batch.release()
                        break
                    group.create_task(self._line(store, row, line, per_batch, stop))
        if self._stopping:
            return False
        if stop.expired:
            file = await anyio.to_thread.run_sync(self.files().open, row.doc["input_file_id"])
            with file:
                done = await store.done(row.id)
                async with contextlib.aclosing(self._pending(file, row, done)) as pending:
                    async for line in pending:
                        await store.line_done(row.id, self.owner, line.line, False, _line_json(
                            line.custom_id, None, line.error if isinstance(line, UnreadLine)
                            else {"code": "batch_expired", "message": "This request could "
                                  "not be executed before the completion window expired."}))
            # Finalizing (a status that is resumed), and expired once its files are
            # written: "expired" at once left a stop or crash before then with no files.
            await store.change(row.id, {"status": "finalizing", "expiring": True,
                                        "finalizing_at": int(self._clock())}, self.owner)
        return True

    async def _pending(self, file: BinaryIO, row: BatchRow,
                       done: frozenset[int]) -> AsyncGenerator[InputLine | UnreadLine, None]:
        """The batch's lines not ``done``, read from ``file`` a page at a time in a worker
        thread: a resume parses only these, and holds a page of them. They are read with
        the max_request_bytes they were checked against when the batch was created: with
        the setting as it is now, a reload that lowered it dropped the lines over it
        without a trace (neither sent nor in the error file), and every line after the
        first too long to read. A batch made before the limit was kept has only the
        setting."""
        checked_with = row.doc.get("max_line_bytes") or \
            self.gateway.live.graph.settings.max_request_bytes
        lines = pending_lines(file, row.doc["endpoint"], done, checked_with)
        try:
            while page := await anyio.to_thread.run_sync(_page_of, lines):
                for line in page:
                    yield line
        finally:
            lines.close()

    async def _line(self, store: BatchStore, row: BatchRow, line: InputLine,
                    per_batch: asyncio.Semaphore, stop: _Stop) -> None:
        assert self._slots is not None
        try:
            while True:
                async with self._slots:
                    if await stop.now():  # while it waited for a slot, or to try again
                        return
                    answer = await self._answer(row, line)
                if not _waitable(answer.error):
                    break
                await asyncio.sleep(max(RETRY_LIMITED_S, _retry_after(answer.error)))
            ok = 200 <= answer.status < 300
            response = {"status_code": answer.status, "request_id": answer.request_id,
                        "body": answer.parsed()}
            if not await self._record(store, row.id, line.line, ok,
                                      _line_json(line.custom_id, response, None)):
                raise LeaseLost(row.id)  # the lease is another's: it resumes the batch
        finally:
            per_batch.release()

    async def _record(self, store: BatchStore, batch_id: str, line: int, ok: bool,
                      result: str) -> bool:
        """``line_done``, tried again while the store is down: the line was answered (and
        billed), and a store error here failed the whole batch, which sent it again. Not
        for ever: a store down past half the lease stops the batch (``_renew``)."""
        while True:
            try:
                return await store.line_done(batch_id, self.owner, line, ok, result)
            except GatewayError as exc:
                log.warning("batch %s line %d: recording it failed (%s); trying again",
                            batch_id, line, exc.message)
                await asyncio.sleep(RECORD_AGAIN_S)

    async def _answer(self, row: BatchRow, line: InputLine) -> LineAnswer:
        try:
            return await self._call(row.key, row.caller, row.doc["endpoint"], line.body,
                                    row.id, row.tags)
        except Exception:  # one line's bug fails that line, not the batch
            log.exception("batch %s line %d failed in the gateway", row.id, line.line)
            error = InternalError("The gateway had an internal error; it is logged.")
            return LineAnswer(error.status, error.body(), "", error)

    async def _finish(self, store: BatchStore, row: BatchRow) -> None:
        """Write the output and error files of a batch whose lines are done (or stopped)
        and give it its final status; done again from the start after a restart."""
        now = int(self._clock())
        final = {"in_progress": "completed",
                 "finalizing": "expired" if row.doc.get("expiring") else "completed",
                 "cancelling": "cancelled"}.get(row.status)
        if final is None:
            return
        if row.status == "in_progress" and not await store.change(
                row.id, {"status": "finalizing", "finalizing_at": now}, self.owner,
                only_from=("in_progress",)):
            # Cancelled since it was read (else its lease is lost): finished as it is now,
            # not "completed" over the cancel the API has answered.
            found = await store.batch(row.id)
            if found is None or found.status == "in_progress":
                raise LeaseLost(row.id)
            await self._finish(store, found)
            return
        names = ("output", "error")
        ids = (f"file-{row.id}-output", f"file-{row.id}-error")
        sizes = await self.files().write_split(ids, _pages(store, row.id, self._page))
        kept = row.doc.get("output_expires_s") or \
            self.gateway.live.graph.settings.batch_output_retention_s
        changes: dict[str, Any] = {}
        for name, file_id, size in zip(names, ids, sizes, strict=True):
            if size:
                await store.put_file(FileRow(file_id, row.owner, f"{row.id}_{name}.jsonl",
                                             "batch_output", size, now, now + kept))
                changes[f"{name}_file_id"] = file_id
        # Its record is purged with its files (the setting's retention when it has none).
        changes.update({"status": final, f"{final}_at": now, "forget_at": now + kept})
        counted = await store.batch(row.id)
        if counted is not None:
            changes["counts"] = [counted.completed, counted.failed]
        if await store.change(row.id, changes, self.owner):
            # Its outcomes are in its files now: the store, which kept every result a
            # second time for ever, keeps only their counts.
            await store.forget_lines(row.id)


class _Stop:
    """Whether a batch's lines should stop being sent: it was cancelled, its completion
    window ended, or the gateway is stopping. The store is asked at most once a second."""

    def __init__(self, store: BatchStore, batch_id: str, expires_at: float,
                 clock: Callable[[], float], stopping: Callable[[], bool]) -> None:
        self._store, self._id, self._expires_at, self._clock = store, batch_id, expires_at, clock
        self._stopping = stopping
        self._asked = 0.0
        self._cancelled = False
        self.expired = False

    async def now(self) -> bool:
        now = self._clock()
        if now >= self._expires_at:
            self.expired = True
        elif not self._cancelled and now - self._asked >= 1.0:
            self._asked = now
            row = await self._store.batch(self._id)
            self._cancelled = row is None or row.status != "in_progress"
        return self.expired or self._cancelled or self._stopping()


async def _pages(store: BatchStore, batch_id: str,
                 page: int) -> AsyncIterator[tuple[LineRow, ...]]:
    """A batch's finished lines, ``page`` at a time, in order."""
    after = 0
    while found := await store.lines(batch_id, after, page):
        yield found
        after = found[-1].line


def _page_of(lines: Iterator[InputLine | UnreadLine]) -> list[InputLine | UnreadLine]:
    """The next lines of ``lines``: ``PENDING_PAGE`` of them, or fewer as long as they
    are (a line's body is up to max_request_bytes)."""
    page: list[InputLine | UnreadLine] = []
    size = 0
    for line in lines:
        page.append(line)
        size += len(line.body) if isinstance(line, InputLine) else 0
        if len(page) >= PENDING_PAGE or size >= READ_CHUNK:
            break
    return page


def _waitable(error: GatewayError | None) -> bool:
    """Whether a line's refusal is one of the gateway's own limits that waiting can lift:
    not a request over a limit on its own, nor a budget that never resets (they say
    ``x-should-retry: false``), which fail the line."""
    return isinstance(error, RateLimited) and error.headers.get("x-should-retry") != "false"


def _retry_after(error: GatewayError | None) -> float:
    """The seconds a refusal's Retry-After asks for (0 when it has none)."""
    for name, value in (error.headers if error is not None else {}).items():
        if name.lower() == "retry-after":
            with contextlib.suppress(ValueError):
                return float(value)
    return 0.0


def _line_json(custom_id: str | None, response: dict[str, Any] | None,
               error: dict[str, Any] | None) -> str:
    """A line of the output or error file, as OpenAI writes it."""
    return json.dumps({"id": f"batch_req_{secrets.token_hex(12)}", "custom_id": custom_id,
                       "response": response, "error": error})


async def _unless(lost: asyncio.Event, work: Awaitable[None]) -> None:
    """``work``, cancelled if ``lost`` is set first (the lease went to another)."""
    task = asyncio.ensure_future(work)
    waiting = asyncio.create_task(lost.wait())
    try:
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiting.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
