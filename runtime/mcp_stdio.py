"""stdio MCP servers, spoken to as streamable HTTP through ``mcp_held``'s transport: one
process a session, its stdin and stdout the session's upstream end.

Its stdout is read line by line (a line over the answer cap ends the process: the
stream is past knowing which answer it was), each line a message for the session to
route. Its stderr goes to the gateway's log, a bounded number of lines. A process is
stopped (SIGTERM to its process group, then SIGKILL) when its session ends; one that
ends by itself ends its session. Its environment is ``INHERITED`` of the gateway's
(never the provider keys beside them) with the server's ``env`` over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping

import httpx

from aigw.compiler.graph import McpStdio

from .errors import McpServerFailed, McpServerTimeout
from .mcp_held import HeldServer, HeldSession
from .mcp_replay import ReplayBudget

log = logging.getLogger("aigw.mcp")

# What a program needs of the gateway's environment to run at all.
INHERITED = ("HOME", "LANG", "LC_ALL", "LOGNAME", "PATH", "SHELL", "TERM", "TMPDIR", "TZ",
             "USER")
_STDERR_LINES = 1000  # logged of one process's stderr; the rest is counted, not logged
_STDERR_LINE_CHARS = 2000
_STOP_S = 2.0  # from SIGTERM to SIGKILL


class StdioServer(HeldServer):
    """One stdio MCP server's processes, by session id."""

    ends = "runs a process a session, and it stopped"

    def __init__(self, name: str, stdio: McpStdio, max_line: int,
                 replays: ReplayBudget | None = None) -> None:
        super().__init__(name, stdio.idle_timeout_s, stdio.max_sessions, replays)
        self.stdio = stdio
        self.max_line = max_line

    async def open(self, session_id: str, read_s: float | None) -> HeldSession:
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
        log.info("MCP server '%s' started pid %d for a new session", self.name, proc.pid)
        return _Process(session_id, proc, self)


def _environment(stdio: McpStdio) -> dict[str, str]:
    inherited = {name: os.environ[name] for name in INHERITED if name in os.environ}
    return {**inherited, **stdio.env}


class _Process(HeldSession):
    """One session's process, and the tasks that read its output."""

    def __init__(self, session_id: str, proc: asyncio.subprocess.Process,
                 owner: StdioServer) -> None:
        super().__init__(session_id, owner)
        self.proc = proc
        self.max_line = owner.max_line
        self.label = f"pid {proc.pid}"
        self._stderr = asyncio.create_task(self._log_stderr(), name=f"mcp-{owner.name}-stderr")
        self.tasks.append(asyncio.create_task(self._read(), name=f"mcp-{owner.name}-stdout"))

    async def deliver(self, message: bytes, read_s: float | None,
                      carried: Mapping[str, str]) -> httpx.Response | None:
        # No headers here: the trace context is the message's own params._meta.
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            async with asyncio.timeout(read_s):
                stdin.write(message + b"\n")
                await stdin.drain()  # a process that reads nothing holds its caller here
        except TimeoutError:
            raise McpServerTimeout(f"MCP server '{self.owner.name}' read nothing for "
                                   f"{read_s:g} s.") from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise McpServerFailed(f"MCP server '{self.owner.name}' ended: it reads no more "
                                  "messages.") from exc
        return None

    async def close(self) -> None:
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
                await asyncio.shield(self._stderr)
        self._stderr.cancel()

    async def _read(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        why: str | None = None
        try:
            while line := await stdout.readline():
                if line.strip():
                    self.route(line.strip())
        except ValueError:  # a line over the cap (asyncio's LimitOverrunError)
            why = f"it wrote a line over {self.max_line >> 20} MiB"
        except OSError as exc:
            why = f"its output failed: {exc.strerror or type(exc).__name__}"
        if why is None:  # the end of its output: it exited, or is about to
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STOP_S):
                    await self.proc.wait()
            why = ("it closed its output" if self.proc.returncode is None
                   else f"its process exited with status {self.proc.returncode}")
        await self.stop(why)

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
