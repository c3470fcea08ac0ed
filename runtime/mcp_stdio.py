"""stdio MCP servers, spoken to as streamable HTTP: an httpx transport (the one-method
seam, ``handle_async_request``, that the proxy in ``mcp`` sends every server's messages
through) that runs one process a session.

What it answers, as a streamable HTTP server would::

    POST initialize, no session    start a process (max_sessions at most: 503 past it),
                                   its answer with Mcp-Session-Id: a new random id
    POST a request                 the line on its stdin; an SSE stream of what its
                                   stdout says until the response with the request's id
    POST a notification, response  the line on its stdin; 202
    GET                            an SSE stream of what it says outside any call
    DELETE                         the process stopped; 200

Its stdout is read line by line (a line over the answer cap ends the process: the
stream is past knowing which answer it was). A response goes to the call with its id;
a notification or request of the server's goes to an open call's stream (stdio says
nothing of which call it belongs to: the oldest open), else to the GET stream, else
it is dropped with a log line. Its stderr goes to the gateway's log, a bounded number
of lines. A process is stopped (SIGTERM to its process group, then SIGKILL) on DELETE,
after ``idle_timeout_s`` with no message, and when the gateway stops; one that ends by
itself ends its session. A session's id is then unknown (404), as it is to every other
replica: a session lives in the gateway process that started it, so several replicas
need sticky sessions for stdio servers. Its environment is ``INHERITED`` of the
gateway's (never the provider keys beside them) with the server's ``env`` over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx

from aigw.compiler.graph import McpStdio

from .errors import McpServerBusy, McpServerFailed, McpServerTimeout, McpSessionUnknown
from .jsonio import dumps, loads

log = logging.getLogger("aigw.mcp")

SESSION = "mcp-session-id"
SSE = "text/event-stream"
# What a program needs of the gateway's environment to run at all.
INHERITED = ("HOME", "LANG", "LC_ALL", "LOGNAME", "PATH", "SHELL", "TERM", "TMPDIR", "TZ",
             "USER")
_STDERR_LINES = 1000  # logged of one process's stderr; the rest is counted, not logged
_STDERR_LINE_CHARS = 2000
_QUEUED = 1024  # messages of the server's held for a stream; past it they are dropped
_STOP_S = 2.0  # from SIGTERM to SIGKILL
# What a call's stream is given: a line of the server's and whether it is the response
# (the last), or the failure that ends the call.
_Item = tuple[bytes, bool] | McpServerFailed


class StdioServer(httpx.AsyncBaseTransport):
    """One stdio MCP server's processes, by session id; ``client`` sends through them."""

    def __init__(self, name: str, stdio: McpStdio, max_line: int) -> None:
        self.name = name
        self.stdio = stdio
        self.max_line = max_line
        self.sessions: dict[str, _Process] = {}
        self._starting = 0
        self.client = httpx.AsyncClient(transport=self)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session_id = request.headers.get(SESSION)
        if request.method == "POST":
            message: dict[str, Any] = loads(await request.aread())  # one, checked by the proxy
            if session_id is not None:
                return await self._process(session_id).send(message, request, {})
            if message.get("method") != "initialize":
                return _refusal(400, "Bad Request: a message other than initialize needs the "
                                "Mcp-Session-Id that its session's initialize answered with.")
            process = await self._start()
            return await process.send(message, request, {SESSION: process.id})
        if session_id is None:
            return _refusal(400, "Bad Request: no Mcp-Session-Id.")
        process = self._process(session_id)
        if request.method == "GET":
            return process.stream()
        with anyio.CancelScope(shield=True):  # DELETE: a client that leaves stops it still
            await process.stop("ended by its client")
        return httpx.Response(200)

    async def aclose(self) -> None:
        """Stop every process (the gateway stops, or a reload changed how they run)."""
        with anyio.CancelScope(shield=True):
            await asyncio.gather(*(process.stop("the gateway stops")
                                   for process in list(self.sessions.values())))

    def _process(self, session_id: str) -> _Process:
        process = self.sessions.get(session_id)
        if process is None:
            raise self.unknown()
        return process

    def unknown(self) -> McpSessionUnknown:
        return McpSessionUnknown(
            f"Session not found: it ended (MCP server '{self.name}' runs a process a "
            "session, and it stopped), or another gateway replica started it.")

    async def _start(self) -> _Process:
        if len(self.sessions) + self._starting >= self.stdio.max_sessions:
            raise McpServerBusy(
                f"MCP server '{self.name}' runs {self.stdio.max_sessions} sessions already "
                "(its max_sessions): end one (DELETE), or wait for one to idle out.")
        self._starting += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.stdio.command, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                cwd=self.stdio.cwd, env=_environment(self.stdio), limit=self.max_line,
                start_new_session=True)  # its own process group: npx's children stop with it
        except OSError as exc:
            raise McpServerFailed(f"MCP server '{self.name}' could not start "
                                  f"{self.stdio.command[0]!r}: "
                                  f"{exc.strerror or type(exc).__name__}.") from exc
        finally:
            self._starting -= 1
        process = _Process(secrets.token_urlsafe(24), proc, self)
        self.sessions[process.id] = process
        log.info("MCP server '%s' started pid %d for a new session", self.name, proc.pid)
        return process


def _environment(stdio: McpStdio) -> dict[str, str]:
    inherited = {name: os.environ[name] for name in INHERITED if name in os.environ}
    return {**inherited, **stdio.env}


def _refusal(status: int, text: str) -> httpx.Response:
    return httpx.Response(status, json={"jsonrpc": "2.0", "id": None,
                                        "error": {"code": -32600, "message": text}})


class _Process:
    """One session's process: what it was asked (``calls``, by request id), its GET
    stream, and the tasks that read its output and stop it when idle."""

    def __init__(self, session_id: str, proc: asyncio.subprocess.Process,
                 owner: StdioServer) -> None:
        self.id = session_id
        self.proc = proc
        self.owner = owner
        self.calls: dict[bytes, asyncio.Queue[_Item]] = {}
        self.events: asyncio.Queue[bytes | None] | None = None  # the GET stream's, when open
        self.last = time.monotonic()
        self.ended = False
        self._tasks = [asyncio.create_task(self._read(), name=f"mcp-{owner.name}-stdout"),
                       asyncio.create_task(self._log_stderr(), name=f"mcp-{owner.name}-stderr"),
                       asyncio.create_task(self._idle(), name=f"mcp-{owner.name}-idle")]

    async def send(self, message: dict[str, Any], request: httpx.Request,
                   headers: dict[str, str]) -> httpx.Response:
        """``message`` on the process's stdin; for a request, the stream of its answer."""
        if self.ended:  # it ended since it was looked up
            raise self.owner.unknown()
        self.last = time.monotonic()
        read_s = request.extensions.get("timeout", {}).get("read")
        if "id" not in message or "method" not in message:  # a notification or a response
            await self._write(dumps(message), read_s)
            return httpx.Response(202, headers=headers)
        key = dumps(message["id"])
        if key in self.calls:
            return _refusal(400, "Bad Request: a request with this id is still in progress.")
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.calls[key] = queue
        try:
            await self._write(dumps(message), read_s)
        except BaseException:
            self.calls.pop(key, None)
            raise
        return httpx.Response(200, headers={**headers, "content-type": SSE},
                              stream=_CallStream(self, key, queue, read_s,
                                                 opening=message["method"] == "initialize"))

    def stream(self) -> httpx.Response:
        if self.events is not None:
            return _refusal(409, "Conflict: only one GET stream a session.")
        self.events = asyncio.Queue()
        return httpx.Response(200, headers={"content-type": SSE},
                              stream=_ServerStream(self, self.events))

    async def stop(self, why: str) -> None:
        """End the session: its calls fail, its GET stream ends, the process (and its
        process group) is stopped and reaped."""
        if not self.ended:
            self.ended = True
            self.owner.sessions.pop(self.id, None)
            failed = McpServerFailed(f"MCP server '{self.owner.name}' ended ({why}) before "
                                     "it answered.")
            for queue in self.calls.values():
                queue.put_nowait(failed)
            if self.events is not None:
                self.events.put_nowait(None)
            log.info("MCP server '%s' pid %d: session ended (%s)", self.owner.name,
                     self.proc.pid, why)
        current = asyncio.current_task()
        reading, stderr_task, idling = self._tasks
        for task in (reading, idling):
            if task is not current:
                task.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(_STOP_S):
                await self.proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        # What it said last (a crash's traceback) is logged: its stderr ends with it,
        # unless a child of its own still holds it open.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STOP_S):
                await asyncio.shield(stderr_task)
        stderr_task.cancel()

    async def _write(self, line: bytes, timeout_s: float | None) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            async with asyncio.timeout(timeout_s):
                stdin.write(line + b"\n")
                await stdin.drain()  # a process that reads nothing holds its caller here
        except TimeoutError:
            raise McpServerTimeout(f"MCP server '{self.owner.name}' read nothing for "
                                   f"{timeout_s:g} s.") from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise McpServerFailed(f"MCP server '{self.owner.name}' ended: it reads no more "
                                  "messages.") from exc

    async def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        why: str | None = None
        try:
            while line := await stdout.readline():
                if line.strip():
                    self._route(line.strip())
        except ValueError:  # a line over the cap (asyncio's LimitOverrunError)
            why = f"it wrote a line over {self.owner.max_line >> 20} MiB"
        except OSError as exc:
            why = f"its output failed: {exc.strerror or type(exc).__name__}"
        if why is None:  # the end of its output: it exited, or is about to
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STOP_S):
                    await self.proc.wait()
            why = ("it closed its output" if self.proc.returncode is None
                   else f"its process exited with status {self.proc.returncode}")
        await self.stop(why)

    def _route(self, line: bytes) -> None:
        try:
            message = loads(line)
        except ValueError:
            log.warning("MCP server '%s' wrote a line that is not JSON (dropped): %.200s",
                        self.owner.name, line.decode("utf-8", "replace"))
            return
        if not isinstance(message, dict):
            log.warning("MCP server '%s' wrote JSON that is not a message (dropped)",
                        self.owner.name)
            return
        if "method" not in message:  # a response: to the call with its id, which ends
            queue = self.calls.pop(dumps(message.get("id")), None)
            if queue is None:
                log.info("MCP server '%s' answered a request that no call waits for "
                         "(dropped)", self.owner.name)
            else:
                queue.put_nowait((line, True))
            return
        method = str(message["method"])[:100]
        call = next(iter(self.calls.values()), None)
        stream: asyncio.Queue[Any] | None = call if call is not None else self.events
        if stream is None:
            log.info("MCP server '%s' sent %s with no stream open to take it (dropped)",
                     self.owner.name, method)
        elif stream.qsize() >= _QUEUED:
            log.warning("MCP server '%s' sent %s to a stream %d messages behind (dropped)",
                        self.owner.name, method, _QUEUED)
        else:
            stream.put_nowait((line, False) if call is not None else line)

    async def _log_stderr(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        logged = dropped = 0
        while True:
            try:
                line = await stderr.readline()
            except ValueError:  # over the line cap: the part read is gone
                dropped += 1
                continue
            if not line:
                break
            if logged < _STDERR_LINES:
                logged += 1
                log.info("MCP server '%s' pid %d: %s", self.owner.name, self.proc.pid,
                         line.decode("utf-8", "replace").rstrip()[:_STDERR_LINE_CHARS])
            else:
                dropped += 1
        if dropped:
            log.info("MCP server '%s' pid %d: %d more stderr lines not logged",
                     self.owner.name, self.proc.pid, dropped)

    async def _idle(self) -> None:
        idle_s = self.owner.stdio.idle_timeout_s
        while (left := self.last + idle_s - time.monotonic()) > 0 or self.calls:
            await asyncio.sleep(left if left > 0 else idle_s)
        await self.stop(f"idle for {idle_s:g} s")


class _CallStream(httpx.AsyncByteStream):
    """A call's answer as SSE: what the server sent while it was open, then its response.
    Nothing for ``read_s`` is a timeout, as between two parts of an HTTP server's."""

    def __init__(self, process: _Process, key: bytes, queue: asyncio.Queue[_Item],
                 read_s: float | None, opening: bool) -> None:
        self._process, self._key, self._queue, self._read_s = process, key, queue, read_s
        self._opening = opening  # an initialize: its process is the client's only once answered
        self._answered = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self._read_s):
                    item = await self._queue.get()
            except TimeoutError:
                raise httpx.ReadTimeout("no answer in time") from None
            if isinstance(item, McpServerFailed):
                raise item
            line, last = item
            self._answered = last
            yield b"event: message\ndata: " + line + b"\n\n"
            if last:
                return

    async def aclose(self) -> None:
        process = self._process
        if process.calls.get(self._key) is self._queue:  # not a later call's with its id
            del process.calls[self._key]
        process.last = time.monotonic()
        if self._opening and not self._answered:
            # Its client never learnt the session's id: nobody could end or reach it.
            with anyio.CancelScope(shield=True):
                await process.stop("its initialize went unanswered")


class _ServerStream(httpx.AsyncByteStream):
    """The GET stream: what the server sends outside any call, until the session ends."""

    def __init__(self, process: _Process, queue: asyncio.Queue[bytes | None]) -> None:
        self._process, self._queue = process, queue

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (item := await self._queue.get()) is not None:
            yield b"event: message\ndata: " + item + b"\n\n"

    async def aclose(self) -> None:
        if self._process.events is self._queue:
            self._process.events = None
