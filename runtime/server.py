"""``aigw serve``: hypercorn serving the app, reload on SIGHUP or file change, N workers.

With one worker the gateway runs in this process. With several, this process binds
the sockets, starts the workers and forwards signals to them (SIGHUP: each worker
hot-reloads; SIGTERM/SIGINT: each drains and stops); a worker that reloaded for an API
call asks it, through a pipe, to SIGHUP the others.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from aigw.compiler import render_text
from aigw.compiler.served import is_loopback
from aigw.reload_signal import EARLY_RELOAD, note_early_reloads

from . import heap, protocols, ws_keepalive
from .app import create_app
from .auth import DEV_KEY_SHA256
from .background import Background
from .live import ConfigError, Gateway
from .store.namespaces import retired_variable_refusal
from .telemetry.record import AccessLog
from .tokens import TokenCounter
from .vllm_serve import ServedFleet, parent_death_signal

log = logging.getLogger("aigw")


@dataclass(frozen=True, slots=True)
class ServeOptions:
    root: Path
    host: str = "127.0.0.1"
    port: int = 4000
    workers: int = 1
    watch: bool = False
    # On SIGTERM: how long requests in flight may take to finish (LLM streams run for
    # minutes; hypercorn's own default is 5 s).
    graceful_timeout_s: float = 30.0
    # Run the vLLM servers of served deployments (serve:); with several workers only
    # the first does.
    supervise: bool = True


def serve(options: ServeOptions) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit code."""
    _configure_logging()
    config = _hypercorn_config(options)
    if options.workers <= 1:
        return _run_worker(options, config, None, None)
    sockets = _bind(options, config)
    if sockets is None:
        return 1
    return _run_master(options, config, sockets)


def _bind(options: ServeOptions, config: Config) -> Any:
    """The listening sockets; None, said in one line, when they cannot be had (a port
    in use, an address not on this machine): no traceback."""
    try:
        return config.create_sockets()
    except OSError as exc:
        sys.stderr.write(f"aigw: cannot listen on {options.host}:{options.port}: "
                         f"{exc.strerror or exc}\n")
        return None


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # httpx logs every upstream request at INFO; the access log already has one line each.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _access_log_to_stderr(access_log: AccessLog) -> None:
    """The gateway's access log is one JSON object a line (it has its own "ts"), written
    as it is: no timestamp formatting per request, and a line any log shipper parses."""
    access_log.to_stream(sys.stderr)
    # Lines of the loop's last turn, should the process leave by a path that skips
    # _serve_async's own flush (an error on the way out).
    atexit.register(access_log.flush)


def _hypercorn_config(options: ServeOptions) -> Config:
    config = Config()
    host = f"[{options.host}]" if ":" in options.host else options.host
    config.bind = [f"{host}:{options.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = options.graceful_timeout_s
    config.keep_alive_timeout = 75.0
    # No "server: hypercorn-h11": what software answers is nobody's business but ours
    # (and it is one header fewer for h11 to validate on every response).
    config.include_server_header = False
    config.workers = options.workers
    return config


def _run_worker(options: ServeOptions, config: Config, sockets: Any,
                peers: Connection | None) -> int:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (e.g. on Windows)
        return asyncio.run(_serve_async(options, config, sockets, peers))
    return uvloop.run(_serve_async(options, config, sockets, peers))


async def _serve_async(options: ServeOptions, config: Config, sockets: Any,
                       peers: Connection | None) -> int:
    counter = await asyncio.to_thread(TokenCounter)
    try:
        gateway = await asyncio.to_thread(Gateway, options.root, counter)
    except ConfigError as exc:
        sys.stderr.write(render_text(exc.result.diagnostics, exc.result.sources))
        sys.stderr.write(f"aigw: not serving: the config in {options.root} has errors\n")
        return 1
    settings = gateway.live.graph.settings
    refusal = retired_variable_refusal(settings.store, settings.redis_namespace, os.environ)
    if refusal is not None:
        sys.stderr.write(f"aigw: not serving: {refusal}\n")
        await gateway.aclose()
        return 1
    if sockets is None:  # one process: hypercorn binds below; a port in use is said now
        probe = _bind(options, config)
        if probe is None:
            await gateway.aclose()
            return 1
        for sock in (*probe.secure_sockets, *probe.insecure_sockets):
            sock.close()  # hypercorn binds its own (SO_REUSEADDR)
    _access_log_to_stderr(gateway.telemetry.access_log)
    graph = gateway.live.graph
    # Each WebSocket pinged, and one whose client stopped answering dropped: a vanished
    # Realtime client held its place under max_parallel until TCP gave up.
    config.websocket_ping_interval = graph.settings.websocket_ping_interval_s
    if config.websocket_ping_interval is not None:
        ws_keepalive.install()
    # The gateway's own cap on a client's WebSocket message, not hypercorn's default (16
    # MiB, which a hypercorn upgrade could move): one over it is closed with 1009.
    config.websocket_max_message_size = graph.settings.websocket_max_message_bytes
    # An HTTP/2 client still sending a body the gateway has answered (a 401, a 413) lost
    # its answer and its connection to a KeyError in hypercorn; a request h11 cannot read
    # was refused with no error object.
    protocols.install()
    logging.getLogger("aigw").setLevel(graph.settings.log_level.upper())
    _warn_dev_key(options.host, DEV_KEY_SHA256 in graph.keys_by_sha256)
    if options.workers > 1 and options.supervise and graph.settings.store == "embedded":
        # Said once (by the first worker), at start: the README says it, few read it there.
        log.warning("serving with --workers %d on store: embedded: each worker keeps its "
                    "own rate limits and budgets, so a key may get up to %d times its "
                    "limits; set settings.store to a redis:// URL to share them",
                    options.workers, options.workers)
    held = sorted(name for name, server in graph.mcp_servers.items()
                  if server.stdio or server.sse)
    if options.workers > 1 and options.supervise and held:
        # A stdio server's session is a process of the worker that started it, an HTTP+SSE
        # server's an event stream of the worker that opened it: another worker that takes
        # one of its messages knows no such session (a 404).
        log.warning("serving with --workers %d: the stdio and HTTP+SSE MCP servers (%s) "
                    "keep each session in the worker that opened it, and a message another "
                    "worker takes is a 404; serve them with --workers 1",
                    options.workers, ", ".join(held))
    for warning in graph.warnings:
        log.warning("%s %s %s", warning.code.id, warning.position, warning.message)

    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    background = Background()

    def stop() -> None:
        # From now on the requests in flight have the graceful timeout (hypercorn starts
        # counting it later still): one cut after it is recorded as the shutdown's.
        gateway.shutdown.begin(options.graceful_timeout_s)
        shutdown.set()

    loop.add_signal_handler(signal.SIGTERM, stop)
    loop.add_signal_handler(signal.SIGINT, stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: background.spawn(gateway.reload("SIGHUP")))
    if EARLY_RELOAD.is_set():
        background.spawn(gateway.reload("SIGHUP"))
    if peers is not None:  # a worker: the master sends SIGHUP to every other worker
        gateway.reload_peers = _asking_master(peers)
    if options.watch:
        background.spawn(_watch(gateway, shutdown))

    log.info(
        "serving graph %s from %s on http://%s:%d (routes: %s)",
        graph.fingerprint[:12],
        options.root,
        options.host,
        options.port,
        ", ".join(sorted(graph.routes)) or "none",
    )
    following: asyncio.Task[None] | None = None
    if options.supervise:
        restarts = gateway.telemetry.metrics.served_restarts
        fleet = ServedFleet(options.root, lambda name: restarts.labels(name).inc())
        following = loop.create_task(fleet.follow(lambda: gateway.live.graph))
    app = create_app(gateway)
    heap.freeze()  # the graph and libraries are loaded: keep the collector off them
    try:
        if sockets is None:
            await hypercorn_serve(app, config, shutdown_trigger=shutdown.wait)  # type: ignore[arg-type]
        else:
            from hypercorn.asyncio.run import worker_serve
            from hypercorn.utils import wrap_app

            await worker_serve(
                wrap_app(app, config.wsgi_max_body_size, None),  # type: ignore[arg-type]
                config,
                sockets=sockets,
                shutdown_trigger=shutdown.wait,
            )
    finally:
        if following is not None:  # requests have drained: now stop the vLLM servers
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        await gateway.aclose()
        gateway.telemetry.tracing.shutdown()
        # The last turn's lines, if the loop stops before its end.
        gateway.telemetry.access_log.flush()
    return 0


async def _watch(gateway: Gateway, shutdown: asyncio.Event) -> None:
    from watchfiles import awatch

    def relevant(_change: object, path: str) -> bool:
        return path.endswith((".yaml", ".yml", ".cedar"))

    async for changes in awatch(gateway.root, watch_filter=relevant, stop_event=shutdown):
        log.info("config changed (%d files); reloading", len(changes))
        await gateway.reload("watch")


def _warn_dev_key(host: str, dev_key_accepted: bool) -> None:
    if not dev_key_accepted or is_loopback(host):
        return
    banner = "!" * 78
    log.warning(
        "\n%s\n"
        "!! The development key sk-aigw-dev is accepted by this gateway, and it is\n"
        "!! listening on %s, which is reachable from other machines. Anyone who has\n"
        "!! read the README can use it (it is an admin key in the shipped config).\n"
        "!! Remove the 'dev' key from gateway.yaml before serving beyond loopback.\n"
        "%s",
        banner,
        host,
        banner,
    )


# A worker that ends on its own after this long up is started again (a crash, an OOM
# kill); one that ends sooner is failing to start, and ends the gateway instead.
RESPAWN_AFTER_UP_S = 10.0


@contextlib.contextmanager
def shared_metrics_dir() -> Iterator[Path]:
    """The folder the workers share their metrics through (prometheus-client's
    multiprocess mode), named in ``PROMETHEUS_MULTIPROC_DIR`` for them: the one the
    environment names, emptied of an earlier run's files first, as the client asks
    (they would count into this run: an old circuit shown open, old request counts);
    else a temporary one, removed when the master ends however it ends (an exception
    left it in /tmp, and one was made even when the environment named another)."""
    named = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if named:
        for kind in ("counter", "gauge", "histogram", "summary"):  # prometheus-client's
            for stale in Path(named).glob(f"{kind}_*.db"):
                stale.unlink(missing_ok=True)
        yield Path(named)
        return
    made = tempfile.mkdtemp(prefix="aigw-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made  # before a worker imports the client
    try:
        yield Path(made)
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(made, ignore_errors=True)


def _asking_master(peers: Connection) -> Callable[[], None]:
    """Asks the master to reload every worker but this one, through ``peers`` (a pipe
    the master reads): a SIGHUP to the master reached this worker too, which had just
    reloaded, and it compiled and counted the same files twice. Without blocking the
    loop: a full pipe already holds a request the master has yet to read."""
    os.set_blocking(peers.fileno(), False)

    def ask() -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError):  # the master has gone
            os.write(peers.fileno(), b"r")

    return ask


def _run_master(options: ServeOptions, config: Config, sockets: Any) -> int:
    with shared_metrics_dir():
        return _supervise(options, config, sockets)


def _supervise(options: ServeOptions, config: Config, sockets: Any) -> int:
    """Start the workers, forward signals to them, start again one that ended after
    it was up; returns the exit code once they have all ended."""
    context = multiprocessing.get_context("spawn")
    workers: list[Any] = []
    started: dict[int, float] = {}  # worker index -> when it was started
    # worker index -> the reading end of its pipe: a byte on it asks to reload the others
    asks: dict[int, Connection] = {}
    stopping = False

    def start(index: int) -> Any:
        reader, writer = context.Pipe(duplex=False)
        worker = context.Process(target=_worker_main, daemon=False,
                                 args=(replace(options, supervise=index == 0), config, sockets,
                                       os.getpid(), writer))
        # SIGHUP's default ends a process, and a worker takes seconds to import and
        # compile before it can reload: it is started with SIGHUP blocked (a signal mask
        # is inherited through fork and exec), so one sent meanwhile waits until
        # ``_worker_main`` has made it "reload once up". Blocked here too, not ignored:
        # a SIGHUP to the master while a worker starts is forwarded once it has started.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            worker.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
            writer.close()  # the worker's now: its end reads as an end of file here
        started[index] = time.monotonic()
        if index in asks:
            asks.pop(index).close()
        asks[index] = reader
        return worker

    def reload_others(index: int) -> None:
        """Read what worker ``index`` wrote: a reload it made, for the others to make."""
        reader = asks[index]
        try:
            asked = os.read(reader.fileno(), 4096)
        except OSError:
            asked = b""
        if not asked:  # the worker ended
            asks.pop(index).close()
            return
        for other, worker in enumerate(workers):
            if other != index and worker.pid is not None and worker.is_alive():
                _send_signal(worker.pid, signal.SIGHUP)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = stopping or signum in (signal.SIGTERM, signal.SIGINT)
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                _send_signal(worker.pid, signum)

    # Before the workers start: a signal meanwhile is forwarded, not the master's death
    # (a worker that starts after a SIGHUP reads the files as they are then anyway).
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    for index in range(options.workers):
        workers.append(start(index))
    exitcodes: list[int] = []
    replacements: set[int] = set()  # slots whose worker was started in place of another
    while any(worker.is_alive() for worker in workers):
        # With a timeout: a worker's sentinel stays open while a process it started
        # holds it, and waitpid (``is_alive``) sees the end anyway.
        ready = multiprocessing.connection.wait(
            [*(w.sentinel for w in workers if w.is_alive()), *asks.values()], timeout=1.0)
        for index, reader in list(asks.items()):
            if reader in ready:
                reload_others(index)
        for index, worker in enumerate(workers):
            if isinstance(worker, _Resting):
                if stopping:
                    workers[index] = _Ended(0)
                elif time.monotonic() >= worker.until:
                    workers[index] = start(index)
                continue
            if isinstance(worker, _Ended) or worker.is_alive():
                continue
            _forget_worker_metrics(worker.pid)
            up_s = time.monotonic() - started[index]
            others = any(w.is_alive() for i, w in enumerate(workers) if i != index)
            if not stopping and up_s < RESPAWN_AFTER_UP_S and index in replacements and others:
                # A replacement compiles the files as they are now, which may be a config
                # a reload refused: the other workers go on serving the graph they have,
                # and it is tried again (ending the gateway would end that graph too).
                log.error("worker %d, started in place of one that ended, ended (exit code "
                          "%s) %.1f s after it started; the others serve on; trying again "
                          "in %.0f s", worker.pid, worker.exitcode, up_s, RESPAWN_AFTER_UP_S)
                workers[index] = _Resting(time.monotonic() + RESPAWN_AFTER_UP_S)
                continue
            if stopping or up_s < RESPAWN_AFTER_UP_S:
                # One stopped by the forwarded signal before it could handle it (a worker
                # still starting) stopped as asked.
                asked = stopping and worker.exitcode in (-signal.SIGTERM, -signal.SIGINT)
                # Killed by a signal N is 128 + N, as a shell says: never 0 (a failure
                # a supervisor must see).
                code = worker.exitcode
                exitcodes.append(0 if asked else 128 - code if code < 0 else code)
                workers[index] = _Ended(worker.exitcode)
                if not stopping:  # failing to start: end the gateway, not a loop
                    log.error("worker %d ended (exit code %s) %.1f s after it started; "
                              "stopping the gateway", worker.pid, worker.exitcode, up_s)
                    forward(signal.SIGTERM, None)
                continue
            log.error("worker %d ended (exit code %s) after %.0f s; starting another",
                      worker.pid, worker.exitcode, up_s)
            workers[index] = start(index)
            replacements.add(index)
            if stopping:  # asked to stop while it started: it was not there to be told
                _send_signal(workers[index].pid, signal.SIGTERM)
    if any(isinstance(worker, _Resting) for worker in workers):
        exitcodes.append(1)  # no worker serves, and one could not start: a failure
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets):
        sock.close()
    for reader in asks.values():
        reader.close()
    return max(exitcodes, default=0)


class _Ended:
    """A worker slot whose process ended and was not started again."""

    pid = None
    sentinel = None

    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode

    def is_alive(self) -> bool:
        return False


class _Resting:
    """A worker slot whose replacement could not start, to be started again at ``until``
    while the other workers serve."""

    pid = None
    sentinel = None

    def __init__(self, until: float) -> None:
        self.until = until

    def is_alive(self) -> bool:
        return False


def _forget_worker_metrics(pid: int | None) -> None:
    """Drop an ended worker's live gauges (in flight, circuit state) from /metrics."""
    if pid is None:
        return
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _send_signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the worker already exited
        os.kill(pid, signum)


def _worker_main(options: ServeOptions, config: Config, sockets: Any, master: int,
                 peers: Connection) -> None:
    # A master killed outright (kill -9) runs no shutdown: the kernel sends its workers
    # SIGTERM, so they drain and stop their vLLM servers instead of serving on as
    # orphans; one whose master died before this ends here.
    arrange = parent_death_signal(master)
    if arrange is not None:
        arrange()
    # A reload asked before this worker can reload (SIGHUP to the master, or /admin/reload
    # on a worker already up) is noted now and made once it is up; SIGHUP's default
    # ended the worker, and the master with it.
    note_early_reloads()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked by the master
    _configure_logging()
    # Ctrl-C reaches the whole process group; the master forwards it once instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(_run_worker(options, config, sockets, peers))

