"""The live routing state, in one place: in-flight counts, latency EWMAs, breakers, usage.

It is keyed by deployment name and outlives graph reloads: ``sync`` keeps the stats
of deployments that still exist and adopts new policies. Everything is updated from
the event loop between awaits, so there is nothing to lock; each gateway process
keeps its own (several replicas each learn their own view of the upstreams).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aigw.compiler.graph import Deployment, Graph

from .breaker import CircuitBreaker, CircuitState

_EWMA_WEIGHT = 0.2  # weight of the newest sample
_LATENCY_SAMPLES = 200  # for p95
_USAGE_WINDOW_S = 60.0
# Why a deployment whose vLLM server aigw runs is skipped (after its name in a 503).
NOT_UP_YET = "is starting (its vLLM server has not answered yet)"
NOT_ANSWERING = "is down (its vLLM server does not answer)"
SERVER_UP = "up"  # Snapshot.server of a served deployment whose server answers


class DeploymentStats:
    """What the gateway has seen of one deployment lately."""

    def __init__(self, deployment: Deployment) -> None:
        self.breaker = CircuitBreaker(deployment.breaker)
        self.in_flight = 0
        self.queue_depth = 0  # requests waiting upstream, when its metrics say (vLLM)
        # What a vLLM server's metrics said last (runtime/upstream_load.py); None: nothing
        # read lately. ``upstream_seen_at`` is on the watcher's monotonic clock.
        self.upstream_running: int | None = None
        self.kv_cache_usage: float | None = None
        self.prefix_cache_hit_rate: float | None = None
        self.prefix_counts: tuple[float, float] | None = None  # (hits, queries) last read
        self.upstream_seen_at: float | None = None
        # A server aigw runs for the deployment (``serve:``) and cannot reach now: why.
        # Requests skip it meanwhile (runtime/upstream_load.py learns it).
        self.serve = deployment.serve
        self.server_down: str | None = NOT_UP_YET if self.served else None
        self.latency_ms: float | None = None  # EWMA of whole-call latency
        self.ttft_ms: float | None = None  # EWMA of time to first token (streams)
        self.requests = 0
        self.failures = 0
        self._latencies: deque[float] = deque(maxlen=_LATENCY_SAMPLES)
        # Tokens per second of the clock, for TPM headroom: [second, tokens], oldest
        # first, at most a window's worth (one entry a request leaked ~100 bytes each).
        self._usage: deque[list[int]] = deque()
        self._usage_total = 0

    @property
    def served(self) -> bool:
        """Is its server one ``aigw serve`` runs (a ``serve:`` block)?"""
        return self.serve is not None

    def forget_upstream(self) -> None:
        """Drop what the server's metrics said: back to the gateway's own view."""
        self.queue_depth = 0
        self.upstream_running = self.kv_cache_usage = self.upstream_seen_at = None
        self.prefix_cache_hit_rate = self.prefix_counts = None

    def load(self) -> int:
        """Requests the deployment is busy with: what its server says it runs and queues
        when it says (other clients' included), never less than this gateway's own."""
        if self.upstream_running is None:
            return self.in_flight
        return max(self.in_flight, self.upstream_running + self.queue_depth)

    def p95_ms(self) -> float | None:
        if len(self._latencies) < 5:
            return None
        ordered = sorted(self._latencies)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    def observe_latency(self, latency_ms: float) -> None:
        self._latencies.append(latency_ms)
        self.latency_ms = _ewma(self.latency_ms, latency_ms)

    def observe_ttft(self, ttft_ms: float) -> None:
        self.ttft_ms = _ewma(self.ttft_ms, ttft_ms)

    def add_usage(self, now: float, tokens: int) -> None:
        second = int(now)
        if self._usage and self._usage[-1][0] == second:
            self._usage[-1][1] += tokens
        else:
            self._usage.append([second, tokens])
        self._usage_total += tokens
        self._forget_before(now)

    def tokens_last_minute(self, now: float) -> int:
        self._forget_before(now)
        return self._usage_total

    def _forget_before(self, now: float) -> None:
        horizon = now - _USAGE_WINDOW_S
        while self._usage and self._usage[0][0] + 1 <= horizon:  # the whole second is older
            self._usage_total -= self._usage.popleft()[1]

    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def _ewma(previous: float | None, sample: float) -> float:
    return sample if previous is None else previous + _EWMA_WEIGHT * (sample - previous)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One deployment's stats for /admin/status, metrics and ``aigw route``."""

    in_flight: int
    latency_ms: float | None
    ttft_ms: float | None
    p95_ms: float | None
    circuit: str
    requests: int
    failures: int
    # A vLLM server's own figures (runtime/upstream_load.py); None: not read lately.
    upstream_running: int | None = None
    upstream_waiting: int | None = None
    kv_cache_usage: float | None = None
    prefix_cache_hit_rate: float | None = None
    # Deployments aigw runs a vLLM server for: "up", or why it is not; None for the others.
    server: str | None = None


class RoutingState:
    """Per-deployment stats plus the per-group counters strategies need."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats: dict[str, DeploymentStats] = {}
        self.round_robin: dict[str, int] = {}
        self._synced: frozenset[str] | None = None  # the deployments of the last sync

    def sync(self, graph: Graph) -> None:
        """Adopt a new graph: keep stats of deployments that remain, drop the rest."""
        fresh: dict[str, DeploymentStats] = {}
        for name, deployment in graph.deployments.items():
            kept = self.stats.get(name)
            if kept is None:
                kept = DeploymentStats(deployment)
            else:
                kept.breaker.policy = deployment.breaker
                if kept.serve != deployment.serve:  # aigw (re)starts it, or no longer runs
                    kept.serve = deployment.serve  # it (then its answers judge it)
                    kept.server_down = NOT_UP_YET if kept.served else None
            fresh[name] = kept
        self.stats = fresh
        self._synced = frozenset(fresh)
        self.round_robin = {n: c for n, c in self.round_robin.items() if n in graph.groups}

    def shadow(self) -> RoutingState:
        """The live stats, read, with strategy counters of its own: an order taken from it
        (the policy router's answer, the deployment a count asks) moves no round robin
        and draws nothing from the live random numbers."""
        shadow = RoutingState(self.clock, random.Random())
        shadow.stats = dict(self.stats)
        shadow.round_robin = dict(self.round_robin)
        shadow._synced = self._synced
        return shadow

    def of(self, deployment: Deployment) -> DeploymentStats:
        stats = self.stats.get(deployment.name)
        if stats is None:
            stats = DeploymentStats(deployment)
            # Kept only for a deployment of the synced graph (or before any sync): one a
            # reload removed, still serving a request, gets stats that go with it, rather
            # than come back at /admin/status and in the metrics.
            if self._synced is None or deployment.name in self._synced:
                self.stats[deployment.name] = stats
        return stats

    def circuits(self) -> dict[str, str]:
        """Each deployment's circuit state now (a cheaper ``snapshot`` for metrics)."""
        now = self.clock()
        return {name: stats.breaker.state(now).value for name, stats in self.stats.items()}

    def snapshot(self) -> Mapping[str, Snapshot]:
        now = self.clock()
        return {
            name: Snapshot(
                in_flight=stats.in_flight,
                latency_ms=stats.latency_ms,
                ttft_ms=stats.ttft_ms,
                p95_ms=stats.p95_ms(),
                circuit=stats.breaker.state(now).value,
                requests=stats.requests,
                failures=stats.failures,
                upstream_running=stats.upstream_running,
                upstream_waiting=stats.queue_depth if stats.upstream_running is not None else None,
                kv_cache_usage=stats.kv_cache_usage,
                prefix_cache_hit_rate=stats.prefix_cache_hit_rate,
                server=(stats.server_down or SERVER_UP) if stats.served else None,
            )
            for name, stats in sorted(self.stats.items())
        }

    def circuit_open(self, deployment: Deployment) -> bool:
        return self.of(deployment).breaker.state(self.clock()) is CircuitState.OPEN
