"""Live deployment metrics as Cedar sees them, behind a one-method seam.

``StateLive`` reads the routing state (what serving uses); ``FixedLive`` takes the
values outright (``aigw test``, ``aigw check --against``, tests).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from aigw.compiler.graph import Deployment

from .routing.breaker import CircuitState
from .routing.state import DeploymentStats, RoutingState


class LiveSource(Protocol):
    """The seam for live metrics: the routing state when serving, fixed values in tests."""

    def values(self, deployment: Deployment, fields: Sequence[str]) -> tuple[object, ...]:
        """The live attributes ``fields`` of ``deployment`` as plain values (the error rate
        a float, rounded to four places)."""
        ...


class StateLive:
    """Live attributes as the routing state has them now; only those asked for are read."""

    def __init__(self, state: RoutingState) -> None:
        self.state = state

    def values(self, deployment: Deployment, fields: Sequence[str]) -> tuple[object, ...]:
        stats = self.state.of(deployment)
        now = self.state.clock()
        return tuple([_READERS[name](stats, deployment, now) for name in fields])


def _error_rate(stats: DeploymentStats, deployment: Deployment, now: float) -> float:
    """Failed share of the breaker window; 0 until it holds the breaker's min_requests."""
    calls, failed = stats.breaker.recent(now)
    return round(failed / calls, 4) if calls >= deployment.breaker.min_requests else 0.0


def _queue_wait_ms(stats: DeploymentStats, _deployment: Deployment, _now: float) -> int:
    """How long a request joining the server's queue waits, by its own figures: the server
    runs ``upstream_running`` requests at once, each about ``latency_ms`` (as this gateway
    measures whole calls), so the queue ahead drains at running / latency a millisecond."""
    if stats.upstream_running is None or not stats.queue_depth or stats.latency_ms is None:
        return 0
    return round(stats.queue_depth * stats.latency_ms / max(1, stats.upstream_running))


_READERS: Mapping[str, Callable[[DeploymentStats, Deployment, float], object]] = {
    "average_latency_ms": lambda stats, _d, _now: round(stats.latency_ms or 0),
    "p95_latency_ms": lambda stats, _d, _now: round(stats.p95_ms() or 0),
    "current_error_rate": _error_rate,
    "in_flight": lambda stats, _d, _now: stats.in_flight,
    "queue_depth": lambda stats, _d, _now: stats.queue_depth,
    "queue_wait_ms": _queue_wait_ms,
    "circuit_open": lambda stats, _d, now: stats.breaker.state(now) is CircuitState.OPEN,
}


class FixedLive:
    """Live attributes given outright (aigw test, aigw check --against): 0 when not given."""

    def __init__(self, values: Mapping[str, Mapping[str, Any]]) -> None:
        self._values = values

    def values(self, deployment: Deployment, fields: Sequence[str]) -> tuple[object, ...]:
        given = self._values.get(deployment.name, {})
        return tuple(given.get(name, False if name == "circuit_open" else 0) for name in fields)
