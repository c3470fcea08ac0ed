"""The vLLM servers ``aigw serve`` runs for deployments with a ``serve:`` block.

``ServedFleet.follow`` keeps one supervised process per served deployment of the
current graph, for as long as the gateway runs:

- a server is started with the command line the compiler built (``ServedServer``),
  in its own process group, its output appended to ``<gateway dir>/vllm-<name>.log``;
- it counts as up once ``GET /health`` answers 200, and is checked every
  ``Timings.liveness`` after that: vLLM's API process can outlive its engine, and then its
  ``/health`` fails while the port still accepts connections;
- a server that exits, never comes up within ``startup_timeout_s``, or fails
  ``Timings.unhealthy_after`` checks in a row is stopped and started again, after a backoff
  that doubles from 1 s to 60 s (reset once it was up for a while), with the last
  lines of its log in the gateway's log;
- a reload that adds a served deployment starts its server, one that removes it stops
  it, one that changes its command line restarts it; unchanged servers keep running;
- at shutdown every server gets SIGTERM, and its process group SIGKILL after
  ``Timings.stop_timeout`` (or once the server itself has exited); on
  Linux a gateway that is killed outright (``kill -9``, the OOM killer) takes its
  servers with it too (the kernel's parent-death signal), so no orphan keeps the GPU
  memory and the port its successor needs.

Routing does not ask this module whether a server is up: every worker learns it from
the server's ``/metrics`` (``runtime/upstream_load.py``), so that with ``--workers N``
(the first worker supervises then) each worker skips a server that is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import re
import signal
import socket
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

_LOG_TAIL_LINES = 20
_LOG_ROTATE_BYTES = 64 * 1024 * 1024  # at a (re)start, a bigger log becomes <name>.log.1
_FOLLOW_S = 1.0  # how often the current graph is compared with what runs
_PR_SET_PDEATHSIG = 1  # prctl(2)
# Not passed on to a server: the gateway's own Prometheus multiprocess folder (vLLM
# would write its metrics into it, and add up every process's there), and a vLLM key
# the provider did not declare (the server would refuse the gateway's calls).
_NOT_INHERITED = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "VLLM_API_KEY")


@dataclass(frozen=True, slots=True)
class Timings:
    """How servers are watched and restarted (seconds); tests pass shorter ones."""

    liveness: float = 10.0  # between health checks of a server that is up
    unhealthy_after: int = 3  # failed checks in a row that count as hung
    startup_poll: float = 1.0
    stop_timeout: float = 30.0  # SIGTERM, then this long, then SIGKILL
    first_backoff: float = 1.0
    max_backoff: float = 60.0
    stable_after: float = 300.0  # up this long: the next failure starts the backoff afresh


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
                 client: httpx.AsyncClient, on_restart: Callable[[str], None],
                 timings: Timings) -> None:
        self.deployment = deployment
        self.server = server
        self.log_path = log_path
        self._client = client
        self._on_restart = on_restart
        self._timings = timings
        self._process: asyncio.subprocess.Process | None = None
        self._state = ServerState.STARTING
        self._restarts = 0
        self._last_exit: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._ending: asyncio.Task[None] | None = None  # the last server's termination

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._supervise(), name=f"aigw-vllm:{self.deployment}")

    async def stop(self) -> None:
        """Stop supervising and stop the server (SIGTERM, then SIGKILL); safe to repeat,
        and a stop cancelled half-way is finished by the next."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._ending is not None:  # the server ends even if the task's wait was cut
            await self._ending
        self._state = ServerState.STOPPED

    def status(self) -> ServerStatus:
        pid = self._process.pid if self._process is not None else None
        return ServerStatus(self.deployment, self._state, pid, self._restarts, self._last_exit)

    async def _supervise(self) -> None:
        timings = self._timings
        backoff = timings.first_backoff
        try:
            while True:
                try:
                    why, up_s = await self._run_once()
                # Supervision must outlive any one failure (a log it cannot write, an
                # environment exec refuses): counted, logged and retried like an exit.
                except Exception as exc:
                    log.exception("supervising the vLLM server of deployment '%s' failed",
                                  self.deployment)
                    why, up_s = f"could not be run ({exc})", 0.0
                    if self._process is not None:
                        await self._end(self._process)
                if up_s > timings.stable_after:
                    backoff = timings.first_backoff
                self._last_exit = why
                self._restarts += 1
                self._on_restart(self.deployment)
                self._state = ServerState.RESTARTING
                log.error("vLLM server of deployment '%s' %s; starting it again in %.1f s. "
                          "The end of %s:\n%s", self.deployment, why, backoff, self.log_path,
                          _tail(self.log_path))
                await asyncio.sleep(backoff)
                backoff = min(timings.max_backoff, backoff * 2)
        finally:
            if self._process is not None:
                await self._end(self._process)

    async def _end(self, process: asyncio.subprocess.Process) -> None:
        # Its own task, shielded: a cancelled stop must still end the server, or its GPU
        # memory stays taken by an orphan; ``stop`` waits for the task.
        self._ending = asyncio.ensure_future(self._terminate(process))
        await asyncio.shield(self._ending)

    async def _run_once(self) -> tuple[str, float]:
        """Start the server and watch it until it fails: how it failed, and for how
        long it was up."""
        self._state = ServerState.STARTING
        started = time.monotonic()
        _rotate(self.log_path)
        with self.log_path.open("ab") as output:
            # Another process on the port (a server left from an earlier gateway) would
            # answer the health checks for ours, which fails to bind and is restarted
            # forever, while requests went to the stranger.
            if _port_taken(self.server.host, self.server.port):
                taken = f"port {self.server.port} is in use by another process"
                output.write(f"--- aigw: not starting it: {taken}\n".encode())
                return f"was not started: {taken}", 0.0
            output.write(f"--- aigw: starting {' '.join(self.server.argv)}\n".encode())
            output.flush()
            environment = {name: value for name, value in os.environ.items()
                           if name not in _NOT_INHERITED}
            try:
                process = await asyncio.create_subprocess_exec(
                    *self.server.argv, env={**environment, **dict(self.server.env)},
                    stdin=asyncio.subprocess.DEVNULL, stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stopped with its workers
                    preexec_fn=parent_death_signal(),
                )
            except OSError as exc:  # no such program, not executable
                output.write(f"--- aigw: cannot start it: {exc}\n".encode())
                if isinstance(exc, FileNotFoundError):
                    return (f"could not be started: there is no {self.server.argv[0]} "
                            "(pip install 'aigw[vllm]', or set serve.command)"), 0.0
                return f"could not be started ({exc})", 0.0
        self._process = process
        log.info("started the vLLM server of deployment '%s' (pid %d); its output goes to %s",
                 self.deployment, process.pid, self.log_path)
        why = await self._until_up(process)
        up_s = 0.0
        if why is None:
            self._state = ServerState.UP
            up_at = time.monotonic()
            log.info("vLLM server of deployment '%s' is up (pid %d, %.1f s to start)",
                     self.deployment, process.pid, up_at - started)
            why = await self._while_healthy(process)
            up_s = time.monotonic() - up_at
        await self._end(process)
        return why, up_s

    async def _until_up(self, process: asyncio.subprocess.Process) -> str | None:
        """None once ``/health`` says 200; else why the server never came up."""
        deadline = time.monotonic() + self.server.startup_timeout_s
        while time.monotonic() < deadline:
            if await self._exited(process, self._timings.startup_poll):
                return f"exited with code {process.returncode} while starting"
            if await self._healthy():
                return None
        return f"was not up after {self.server.startup_timeout_s:g} s (startup_timeout_s)"

    async def _while_healthy(self, process: asyncio.subprocess.Process) -> str:
        """Wait while the server runs and answers; returns why it stopped doing so."""
        failed = 0
        while True:
            if await self._exited(process, self._timings.liveness):
                return f"exited with code {process.returncode}"
            failed = 0 if await self._healthy() else failed + 1
            if failed >= self._timings.unhealthy_after:
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
        stop_timeout = self._timings.stop_timeout
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            if not await self._exited(process, stop_timeout):
                log.warning("vLLM server of deployment '%s' ignored SIGTERM for %.0f s; "
                            "killing it", self.deployment, stop_timeout)
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        # The leader is gone; an engine or tensor-parallel worker of its group may not
        # be, and would keep its GPU memory from the server that replaces it.
        _signal_group(process.pid, signal.SIGKILL)
        if self._process is process:
            self._process = None


class ServedFleet:
    """Every supervised server, kept in step with the current graph."""

    def __init__(self, log_dir: Path, on_restart: Callable[[str], None] = lambda _: None,
                 timings: Timings | None = None) -> None:
        self._log_dir = log_dir
        self._on_restart = on_restart
        self._timings = timings or Timings()
        # Loopback only: never through an HTTP_PROXY a GPU box may set to download models.
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(5.0), trust_env=False)
        self._running: dict[str, Supervised] = {}

    async def follow(self, current: Callable[[], Graph]) -> None:
        """Keep the servers of ``current()`` running until cancelled, then stop them all."""
        try:
            while True:
                try:
                    await self.apply(current())
                except Exception:  # the next round tries again; servers keep running
                    log.exception("keeping the vLLM servers in step with the graph failed")
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
                await supervised.stop()  # still listed meanwhile: a shutdown finishes it
                del self._running[name]
        for name, server in wanted.items():
            if name not in self._running:
                supervised = Supervised(name, server, self._log_dir / _log_name(name),
                                        self._client, self._on_restart, self._timings)
                self._running[name] = supervised
                supervised.start()

    def status(self) -> list[ServerStatus]:
        return [supervised.status() for supervised in self._running.values()]

    async def aclose(self) -> None:
        running, self._running = list(self._running.values()), {}
        try:
            outcomes = await asyncio.gather(*(supervised.stop() for supervised in running),
                                            return_exceptions=True)
            for supervised, outcome in zip(running, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    log.error("stopping the vLLM server of deployment '%s' failed: %s",
                              supervised.deployment, outcome)
        finally:
            await self._client.aclose()


def _log_name(deployment: str) -> str:
    # Deployment names may hold '/', ':' and '@' (model ids); file names may not.
    return f"vllm-{re.sub(r'[^A-Za-z0-9._-]', '_', deployment)}.log"


def _rotate(path: Path) -> None:
    """Keep one older log at most: a server restarted for weeks would fill the disk."""
    try:
        if path.stat().st_size > _LOG_ROTATE_BYTES:
            path.replace(path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def parent_death_signal(parent: int | None = None) -> Callable[[], None] | None:
    """What a child runs (before exec, or first thing) to get SIGTERM when ``parent``
    (by default this process) dies (Linux); it ends at once if the parent already has."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here, not in the child
    gateway = os.getpid() if parent is None else parent

    def arrange() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != gateway:  # it died before the signal was arranged
            os._exit(1)

    return arrange


def _port_taken(host: str, port: int) -> bool:
    """Is something already listening on ``host:port``? Bound as a server binds it
    (SO_REUSEADDR: a connection of an earlier server in TIME_WAIT is no obstacle)."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:  # unresolvable: the server's own start says why
        return False
    for family, kind, proto, _name, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False


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
