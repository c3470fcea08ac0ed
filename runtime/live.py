"""The serving graph and its replacement: one reference, swapped whole on reload.

A request reads ``Gateway.live`` once when it starts and uses that snapshot to its
end, so a reload never changes the graph under a request in flight. Reloads compile
off the event loop; a config that fails to compile never replaces a good one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aigw.compiler import CompileResult, compile_gateway
from aigw.compiler.graph import Graph

from . import heap
from .admission import KeyScopes, StoreHandle
from .background import Background
from .guardrails import GuardClient
from .identity import Identities
from .policy import PolicyEngine
from .policy_live import StateLive
from .providers.base import ChatAdapter
from .providers.registry import build_adapters
from .routing.state import RoutingState
from .telemetry.record import Telemetry
from .tokens import TokenCounter

log = logging.getLogger("aigw.reload")


class InFlight:
    """How many requests (and pipeline model calls) one ``Live`` is serving: a reload
    closes the adapters it dropped once the requests still on them are done, however
    long their streams last."""

    __slots__ = ("_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()

    async def idle(self) -> None:
        """Until nothing is in flight."""
        while self.count > 0:
            if self._idle is None or self._idle.is_set():
                self._idle = asyncio.Event()
            await self._idle.wait()  # shared: several closings may wait on one snapshot


class Shutdown:
    """When requests still in flight at a shutdown are cut: ``aigw serve`` gives them its
    graceful timeout from the signal on. One for the gateway, shared by every snapshot,
    so that a request cut after it is recorded as the gateway's doing, not its client's."""

    __slots__ = ("_began", "_cut_at")

    def __init__(self) -> None:
        self._cut_at: float | None = None
        self._began = asyncio.Event()

    def begin(self, grace_s: float) -> None:
        """The gateway stops taking requests now; those in flight have ``grace_s``."""
        if self._cut_at is None:
            self._cut_at = time.monotonic() + grace_s
            self._began.set()

    async def began(self) -> None:
        """Return once the shutdown has begun: a stream that can end early (an MCP GET
        stream, which its client opens again) ends then, not at the grace's end."""
        await self._began.wait()

    def cutting(self) -> bool:
        """Whether the grace is over: the server cuts requests no earlier."""
        return self._cut_at is not None and time.monotonic() >= self._cut_at

    def cut(self) -> tuple[int, str]:
        """The status and error of a stream cut now: 503 ``shutdown`` by the shutdown,
        else its client went away (499 ``client_disconnected``, as nginx names it)."""
        return (503, "shutdown") if self.cutting() else (499, "client_disconnected")


@dataclass(frozen=True, slots=True)
class Live:
    """What serves requests now: a graph and the provider adapters built for it."""

    graph: Graph
    adapters: Mapping[str, ChatAdapter]
    counter: TokenCounter
    routing: RoutingState  # shared by every snapshot: stats outlive a reload
    telemetry: Telemetry  # shared too: metrics are per process, not per graph
    store: StoreHandle  # limits, budgets and the ledger (opened from the first graph)
    loaded_at: float
    policy: PolicyEngine  # Cedar for this graph, with its caches
    shutdown: Shutdown  # the gateway's, shared by every snapshot
    scopes: KeyScopes  # each key's limits in this graph
    in_flight: InFlight = field(default_factory=InFlight)
    # Asks webhook guardrails; one for the gateway, handed on by each reload.
    guard: GuardClient = field(default_factory=GuardClient)
    # Issuers' fetched signing keys (JWT sign-in); handed on too, so a reload refetches none.
    identities: Identities = field(default_factory=Identities)

    @classmethod
    def build(
        cls,
        graph: Graph,
        counter: TokenCounter,
        routing: RoutingState,
        telemetry: Telemetry,
        store: StoreHandle,
        shutdown: Shutdown,
        previous: Live | None = None,
    ) -> Live:
        """Adapters of providers whose config did not change are kept, with their pools."""
        fresh = build_adapters(graph.providers, counter, _reusable(graph, previous))
        routing.sync(graph)
        guard = previous.guard if previous is not None else GuardClient()
        guard.verdicts.retain(guardrail for route in graph.routes.values()
                              if route.guardrails is not None
                              for guardrail in route.guardrails.input)
        identities = previous.identities if previous is not None else Identities()
        return cls(graph, fresh, counter, routing, telemetry, store, time.time(),
                   PolicyEngine(graph, StateLive(routing)), shutdown, KeyScopes.of(graph),
                   guard=guard, identities=identities)


def _reusable(graph: Graph, previous: Live | None) -> Mapping[str, ChatAdapter]:
    if previous is None:
        return {}
    return {
        name: adapter
        for name, adapter in previous.adapters.items()
        if graph.providers.get(name) == previous.graph.providers[name]
    }


def _grace_s(graph: Graph) -> float:
    """How long a request on ``graph`` can still be running after a reload swapped it out."""
    return max((p.timeout_s for p in graph.providers.values()), default=0.0) + 5.0


# The longest the adapters a reload dropped stay open for requests still on them: a
# stream that never ends must not keep a provider's pool (and its old key) for ever.
RETIRE_LIMIT_S = 3600.0


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """The outcome of one reload attempt, shown at /admin/status."""

    at: float
    trigger: str
    ok: bool
    fingerprint: str | None
    duration_ms: float
    diagnostics: tuple[dict[str, object], ...] = field(default=())
    # Settings the new graph changed that the running gateway keeps until a restart.
    restart_needed: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "at": self.at,
            "trigger": self.trigger,
            "ok": self.ok,
            "fingerprint": self.fingerprint,
            "duration_ms": round(self.duration_ms, 3),
            "diagnostics": list(self.diagnostics),
            "restart_needed": list(self.restart_needed),
        }


# Settings read once, when the store and its cache are opened: a reload cannot apply them.
RESTART_SETTINGS = ("store", "redis_namespace", "store_failure", "store_outbox",
                    "reservation_ttl_s",
                    "ledger_sync", "ledger_retention_days", "cache_max_entries",
                    "cache_max_bytes",
                    # the pipeline runner's, read when it starts
                    "execution_lease_s", "execution_retention_s", "unsaved_dir",
                    # the batch runner's (runtime/batches), read when it is made
                    "files_dir", "batches_concurrency",
                    # hypercorn's, read as it starts serving
                    "websocket_ping_interval_s", "websocket_max_message_bytes")


class ConfigError(Exception):
    """The config could not be compiled when the gateway started."""

    def __init__(self, result: CompileResult) -> None:
        super().__init__(f"{len(result.errors)} error(s) in the gateway config")
        self.result = result


class Gateway:
    """Holds the live snapshot; the only thing a reload changes is which snapshot it holds."""

    def __init__(
        self,
        root: Path,
        counter: TokenCounter,
        compiler: Callable[[Path], CompileResult] = compile_gateway,
        routing: RoutingState | None = None,
    ) -> None:
        self.root = root
        self.counter = counter
        self._compile = compiler
        result = compiler(root)
        if result.graph is None:
            raise ConfigError(result)
        self.routing = routing or RoutingState()
        self.telemetry = Telemetry()
        # Read at scrape time (and, with workers, published each second): both live as
        # long as the gateway, across reloads.
        self.telemetry.metrics.servers.source = self.routing.snapshot
        self.telemetry.metrics.circuits = self.routing.circuits
        self.telemetry.metrics.key_expiries.source = self._key_expiries
        settings = self._started = result.graph.settings  # what the store was opened with
        self.store = StoreHandle(
            settings.store, root, settings.store_failure, settings.reservation_ttl_s,
            settings.ledger_sync, settings.cache_max_entries, settings.store_outbox,
            settings.cache_max_bytes, settings.ledger_retention_days, settings.redis_namespace,
        )
        self.shutdown = Shutdown()
        self.live = Live.build(result.graph, counter, self.routing, self.telemetry, self.store,
                               self.shutdown)
        self.telemetry.metrics.serving(result.graph.fingerprint)
        self.telemetry.metrics.declare_pipelines(result.graph.pipelines)
        self.last_reload: ReloadReport | None = None
        # With several workers: asks the others to reload too (``aigw serve`` sets it).
        self.reload_peers: Callable[[], None] | None = None
        self._reload_lock = asyncio.Lock()
        self._closing = Background()  # adapters a reload dropped, closing once unused
        self._retired: list[ChatAdapter] = []  # dropped by a reload, not closed yet
        self._draining: list[Live] = []  # replaced graphs that may still have requests

    def _key_expiries(self) -> dict[str, float]:
        """Each key's expires in the graph served now (after a reload, the new one's)."""
        return {key.name: key.expires_at for key in self.live.graph.keys_by_name.values()
                if key.expires_at is not None}

    async def reload_everywhere(self, trigger: str) -> ReloadReport:
        """Reload here and, when it compiled, ask the other workers to (an API call
        reaches one worker: /admin/reload and /policies/reload alike)."""
        report = await self.reload(trigger)
        if report.ok and self.reload_peers is not None:
            self.reload_peers()
        return report

    async def reload(self, trigger: str) -> ReloadReport:
        """Compile the config again (in a thread) and swap it in if it compiles."""
        async with self._reload_lock:  # reloads queue; requests never wait on this
            started = time.perf_counter()
            result = await asyncio.to_thread(self._compile, self.root)
            elapsed = (time.perf_counter() - started) * 1000
            diagnostics = tuple(item.as_dict() for item in result.diagnostics)
            self.telemetry.metrics.reloaded(result.graph.fingerprint if result.graph else None)
            if result.graph is None:
                report = ReloadReport(time.time(), trigger, False, None, elapsed, diagnostics)
                log.error(
                    "reload (%s) failed; still serving graph %s:\n%s",
                    trigger,
                    self.live.graph.fingerprint[:12],
                    "\n".join(
                        f"  {d['code']} {d['file']}:{d['line']}:{d['column']} {d['message']}"
                        for d in diagnostics
                    ),
                )
            else:
                previous = self.live
                restart = tuple(
                    name for name in RESTART_SETTINGS
                    if getattr(result.graph.settings, name) != getattr(self._started, name))
                if restart:
                    log.warning("reload (%s): settings %s changed; they take effect when the "
                                "gateway restarts (it keeps the ones it started with)",
                                trigger, ", ".join(restart))
                self.live = Live.build(result.graph, self.counter, self.routing,
                                       self.telemetry, self.store, self.shutdown, previous)
                self.telemetry.metrics.declare_pipelines(result.graph.pipelines)
                logging.getLogger("aigw").setLevel(result.graph.settings.log_level.upper())
                self._retire(previous)
                heap.refreeze_later(_grace_s(previous.graph))
                report = ReloadReport(
                    time.time(), trigger, True, result.graph.fingerprint, elapsed, diagnostics,
                    restart,
                )
                log.info(
                    "reload (%s): graph %s -> %s in %.1f ms",
                    trigger,
                    previous.graph.fingerprint[:12],
                    result.graph.fingerprint[:12],
                    elapsed,
                )
            self.last_reload = report
            return report

    def _retire(self, previous: Live) -> None:
        """Close adapters the new graph dropped once the requests of every replaced graph
        that holds them are over. A fixed grace (the providers' timeout_s) cut streams
        longer than it, and a cut stream's reader waited for ever. Every such graph, not
        only the one just replaced: a reload that keeps a provider hands its client on,
        so requests of graphs two or more reloads old may still be using it."""
        self._draining = [old for old in self._draining if old.in_flight.count > 0]
        self._draining.append(previous)
        current = set(map(id, self.live.adapters.values()))
        dropped = [a for a in previous.adapters.values() if id(a) not in current]
        if not dropped:
            return
        self._retired.extend(dropped)
        ids = set(map(id, dropped))
        holders = [old for old in self._draining
                   if any(id(adapter) in ids for adapter in old.adapters.values())]
        self._closing.spawn(self._close_when_done(holders, dropped))

    async def _close_when_done(self, holders: list[Live], dropped: list[ChatAdapter]) -> None:
        try:
            async with asyncio.timeout(RETIRE_LIMIT_S):
                for old in holders:
                    await old.in_flight.idle()
        except TimeoutError:
            log.warning("closing %d provider clients a reload dropped with %d requests "
                        "still on them, after %.0f s", len(dropped),
                        sum(old.in_flight.count for old in holders), RETIRE_LIMIT_S)
        for adapter in dropped:
            if adapter in self._retired:  # else aclose() closed it already
                self._retired.remove(adapter)
                await adapter.aclose()

    async def aclose(self) -> None:
        """Close every adapter (those a reload dropped too, their grace cut short) and
        the store (at shutdown)."""
        retired, self._retired = self._retired, []
        for adapter in (*self.live.adapters.values(), *retired):
            await adapter.aclose()
        self._closing.cancel()  # those still waiting for their requests: closed just now
        await self._closing.wait()
        await self.live.guard.aclose()
        await self.live.identities.aclose()
        await self.store.aclose()
