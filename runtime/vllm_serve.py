"""The vLLM servers ``aigw serve`` runs for deployments with a ``serve:`` block.

``ServedFleet.follow`` keeps one supervised process per served deployment of the
current graph, for as long as the gateway runs:

- a server is started with the command line the compiler built (``ServedServer``),
  in its own process group, its output appended to ``<gateway dir>/vllm-<name>.log``;
- it counts as up once ``GET /health`` answers 200, and is checked every
  ``LIVENESS_S`` after that: vLLM's API process can outlive its engine, and then its
  ``/health`` fails while the port still accepts connections;
- a server that exits, never comes up within ``startup_timeout_s``, or fails
  ``UNHEALTHY_AFTER`` checks in a row is stopped and started again, after a backoff
  that doubles from 1 s to 60 s (reset once it was up for a while), with the last
  lines of its log in the gateway's log;
- a reload that adds a served deployment starts its server, one that removes it stops
  it, one that changes its command line restarts it; unchanged servers keep running;
- at shutdown every server gets SIGTERM, and SIGKILL after ``STOP_TIMEOUT_S``; on
  Linux a gateway that is killed outright (``kill -9``, the OOM killer) takes its
  servers with it too (the kernel's parent-death signal), so no orphan keeps the GPU
  memory and the port its successor needs.

Routing does not ask this module whether a server is up: every worker learns it from
the server's ``/metrics`` (``runtime/upstream_load.py``), so that with ``--workers N``
(this runs in the master process then) each worker skips a server that is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import httpx

from aigw.compiler.graph import Graph, ServedServer

log = logging.getLogger("aigw.vllm")

LIVENESS_S = 10.0
UNHEALTHY_AFTER = 3  # failed liveness checks in a row
STARTUP_POLL_S = 1.0
STOP_TIMEOUT_S = 30.0
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
STABLE_AFTER_S = 300.0  # up this long: the next failure starts the backoff afresh
_LOG_TAIL_LINES = 20
_FOLLOW_S = 1.0  # how often the current graph is compared with what runs
_PR_SET_PDEATHSIG = 1  # prctl(2)


class ServerState(StrEnum):
    STARTING = "starting"
    UP = "up"
    RESTARTING = "restarting"  # waiting out the backoff after a failure
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ServerStatus:
    deployment: str
    state: ServerState
    pid: int | None
    restarts: int
    last_exit: str | None  # why it last stopped, when it did


class Supervised:
    """One deployment's server: started, watched and restarted by its own task."""

    def __init__(self, deployment: str, server: ServedServer, log_path: Path,
                 client: httpx.AsyncClient, on_restart: Callable[[str], None]) -> None:
        self.deployment = deployment
        self.server = server
        self.log_path = log_path
        self._client = client
        self._on_restart = on_restart
        self._process: asyncio.subprocess.Process | None = None
        self._state = ServerState.STARTING
        self._restarts = 0
        self._last_exit: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"aigw-vllm:{self.deployment}")

    async def stop(self) -> None:
        """Stop supervising and stop the server (SIGTERM, then SIGKILL)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._state = ServerState.STOPPED

    def status(self) -> ServerStatus:
        pid = self._process.pid if self._process is not None else None
        return ServerStatus(self.deployment, self._state, pid, self._restarts, self._last_exit)

    async def _supervise(self) -> None:
        backoff = FIRST_BACKOFF_S
        try:
            while True:
                started = time.monotonic()
                why = await self._run_once()
                if time.monotonic() - started > STABLE_AFTER_S:
                    backoff = FIRST_BACKOFF_S
                self._last_exit = why
                self._restarts += 1
                self._on_restart(self.deployment)
                self._state = ServerState.RESTARTING
                log.error("vLLM server of deployment '%s' %s; starting it again in %.0f s. "
                          "The end of %s:\n%s", self.deployment, why, backoff, self.log_path,
                          _tail(self.log_path))
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
        finally:
            if self._process is not None:
                # Shielded: a cancelled stop must still end the server, or its GPU memory
                # stays taken by an orphan.
                await asyncio.shield(self._terminate(self._process))

    async def _run_once(self) -> str:
        """Start the server and watch it until it fails; returns how it failed."""
        self._state = ServerState.STARTING
        started = time.monotonic()
        with self.log_path.open("ab") as output:
            output.write(f"--- aigw: starting {' '.join(self.server.argv)}\n".encode())
            output.flush()
            try:
                process = await asyncio.create_subprocess_exec(
                    *self.server.argv, env={**os.environ, **dict(self.server.env)},
                    stdin=asyncio.subprocess.DEVNULL, stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stopped with its workers
                    preexec_fn=_parent_death_signal(),
                )
            except OSError as exc:  # no such program, not executable
                output.write(f"--- aigw: cannot start it: {exc}\n".encode())
                return f"could not be started ({exc})"
        self._process = process
        log.info("started the vLLM server of deployment '%s' (pid %d); its output goes to %s",
                 self.deployment, process.pid, self.log_path)
        why = await self._until_up(process)
        if why is None:
            self._state = ServerState.UP
            log.info("vLLM server of deployment '%s' is up (pid %d, %.1f s to start)",
                     self.deployment, process.pid, time.monotonic() - started)
            why = await self._while_healthy(process)
        await self._terminate(process)
        return why

    async def _until_up(self, process: asyncio.subprocess.Process) -> str | None:
        """None once ``/health`` says 200; else why the server never came up."""
        deadline = time.monotonic() + self.server.startup_timeout_s
        while time.monotonic() < deadline:
            if await self._exited(process, STARTUP_POLL_S):
                return f"exited with code {process.returncode} while starting"
            if await self._healthy():
                return None
        return f"was not up after {self.server.startup_timeout_s:g} s (startup_timeout_s)"

    async def _while_healthy(self, process: asyncio.subprocess.Process) -> str:
        """Wait while the server runs and answers; returns why it stopped doing so."""
        failed = 0
        while True:
            if await self._exited(process, LIVENESS_S):
                return f"exited with code {process.returncode}"
            failed = 0 if await self._healthy() else failed + 1
            if failed >= UNHEALTHY_AFTER:
                return f"failed {failed} health checks in a row at {self.server.health_url}"

    async def _healthy(self) -> bool:
        try:
            response = await self._client.get(self.server.health_url)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    @staticmethod
    async def _exited(process: asyncio.subprocess.Process, within: float) -> bool:
        try:
            await asyncio.wait_for(process.wait(), within)
        except TimeoutError:
            return False
        return True

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            if not await self._exited(process, STOP_TIMEOUT_S):
                log.warning("vLLM server of deployment '%s' ignored SIGTERM for %.0f s; "
                            "killing it", self.deployment, STOP_TIMEOUT_S)
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        else:  # it exited; its own children (engine workers) may not have
            _signal_group(process.pid, signal.SIGKILL)
        if self._process is process:
            self._process = None


class ServedFleet:
    """Every supervised server, kept in step with the current graph."""

    def __init__(self, log_dir: Path, on_restart: Callable[[str], None] = lambda _: None,
                 client: httpx.AsyncClient | None = None) -> None:
        self._log_dir = log_dir
        self._on_restart = on_restart
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(5.0))
        self._running: dict[str, Supervised] = {}

    async def follow(self, current: Callable[[], Graph]) -> None:
        """Keep the servers of ``current()`` running until cancelled, then stop them all."""
        try:
            while True:
                await self.apply(current())
                await asyncio.sleep(_FOLLOW_S)
        finally:
            await asyncio.shield(self.aclose())

    async def apply(self, graph: Graph) -> None:
        """Start, stop and restart servers so that exactly ``graph``'s run."""
        wanted = {name: d.serve for name, d in graph.deployments.items() if d.serve is not None}
        for name, supervised in list(self._running.items()):
            if wanted.get(name) != supervised.server:
                log.info("deployment '%s' %s: stopping its vLLM server", name,
                         "changed its serve: block" if name in wanted else "no longer serves")
                del self._running[name]
                await supervised.stop()
        for name, server in wanted.items():
            if name not in self._running:
                supervised = Supervised(name, server, self._log_dir / _log_name(name),
                                        self._client, self._on_restart)
                self._running[name] = supervised
                supervised.start()

    def status(self) -> list[ServerStatus]:
        return [supervised.status() for supervised in self._running.values()]

    async def aclose(self) -> None:
        running, self._running = list(self._running.values()), {}
        await asyncio.gather(*(supervised.stop() for supervised in running))
        await self._client.aclose()


def _log_name(deployment: str) -> str:
    # Deployment names may hold '/', ':' and '@' (model ids); file names may not.
    return f"vllm-{re.sub(r'[^A-Za-z0-9._-]', '_', deployment)}.log"


def _parent_death_signal() -> Callable[[], None] | None:
    """What the child runs before exec to get SIGTERM when the gateway dies (Linux)."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the child
    gateway = os.getpid()

    def arrange() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != gateway:  # it died before the signal was arranged
            os._exit(1)

    return arrange


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone
        os.killpg(pid, signum)


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as file:
            file.seek(max(0, path.stat().st_size - 64 * 1024))
            lines: deque[bytes] = deque(file, maxlen=_LOG_TAIL_LINES)
    except OSError as exc:
        return f"  (cannot read it: {exc})"
    return "\n".join("  " + line.decode(errors="replace").rstrip() for line in lines)
