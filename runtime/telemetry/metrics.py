"""Prometheus metrics, labelled only with names the graph declares (never raw user input).

With several hypercorn workers, ``aigw serve`` sets PROMETHEUS_MULTIPROC_DIR before the
workers start, prometheus-client then keeps values in shared files, and ``/metrics``
aggregates them with its MultiProcessCollector.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class ServedUp(Collector):
    """``aigw_vllm_server_up``: read at scrape time from the routing state of the process
    answering, not kept in a gauge. With several workers a gauge lives in shared files
    that cannot be cleared, so the series of a deployment a reload removed while its
    server was down would say 0, and page, for as long as the gateway runs."""

    def __init__(self) -> None:
        # (deployment, its server answers) for each deployment whose server aigw runs
        self.source: Callable[[], Iterable[tuple[str, bool]]] = lambda: ()

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        family = self._family()
        for deployment, up in self.source():
            family.add_metric([deployment], 1.0 if up else 0.0)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "aigw_vllm_server_up",
            "1 while a vLLM server aigw runs (serve:) answers, 0 while it starts or is down.",
            labels=["deployment"])


class Metrics:
    """Every metric aigw exports, in one registry per process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        request = ["route", "deployment", "provider", "team", "status"]
        served = ["route", "deployment", "provider"]
        self.requests = Counter("aigw_requests", "Requests answered, by outcome.",
                                request, registry=registry)
        self.latency = Histogram("aigw_request_duration_seconds",
                                 "Time from request to the last byte of the answer.",
                                 served, buckets=_LATENCY_BUCKETS, registry=registry)
        self.ttft = Histogram("aigw_time_to_first_token_seconds",
                              "Time from request to the first streamed token.",
                              served, buckets=_LATENCY_BUCKETS, registry=registry)
        self.overhead = Histogram("aigw_overhead_seconds",
                                  "Time the gateway itself spent on a request, upstream excluded.",
                                  ["route"], buckets=_OVERHEAD_BUCKETS, registry=registry)
        self.upstream_failures = Counter("aigw_upstream_failures",
                                         "Failed upstream attempts, by class of failure.",
                                         ["deployment", "provider", "error"], registry=registry)
        self.tokens = Counter("aigw_tokens", "Tokens billed, by direction.",
                              ["route", "deployment", "team", "direction"], registry=registry)
        self.cost = Counter("aigw_cost", "Cost in the price table's currency.",
                            ["route", "deployment", "team"], registry=registry)
        self.fallbacks = Counter("aigw_fallbacks", "Requests served by a fallback group.",
                                 ["route"], registry=registry)
        self.retries = Counter("aigw_retries", "Upstream attempts beyond the first.",
                               ["route"], registry=registry)
        self.cache = Counter("aigw_cache_lookups", "Response cache lookups.",
                             ["route", "result"], registry=registry)
        self.circuit = Gauge("aigw_circuit_state",
                             "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                             ["deployment"], registry=registry, multiprocess_mode="max")
        self.upstream_requests = Gauge(
            "aigw_upstream_requests",
            "Requests a vLLM server says it is running or has waiting (its /metrics).",
            ["deployment", "state"], registry=registry, multiprocess_mode="max")
        self.upstream_kv_cache = Gauge(
            "aigw_upstream_kv_cache_usage_ratio",
            "Share of a vLLM server's KV cache in use (its /metrics).",
            ["deployment"], registry=registry, multiprocess_mode="max")
        self.upstream_prefix_hits = Gauge(
            "aigw_upstream_prefix_cache_hit_ratio",
            "Share of prompt tokens a vLLM server's prefix cache had, between its last two "
            "readings (its /metrics).",
            ["deployment"], registry=registry, multiprocess_mode="max")
        self.served_up = ServedUp()
        registry.register(self.served_up)
        self.served_restarts = Counter(
            "aigw_vllm_server_restarts", "Times aigw started a vLLM server again after it "
            "exited, hung or never came up.", ["deployment"], registry=registry)
        self.in_flight = Gauge("aigw_in_flight_requests", "Requests being served now.",
                               ["route"], registry=registry, multiprocess_mode="livesum")
        self.workflows = Counter("aigw_workflow_executions", "Pipeline executions that ended.",
                                 ["pipeline", "status"], registry=registry)
        self.budget_used = Gauge("aigw_budget_used_ratio",
                                 "Share of a budget spent in its current period.",
                                 ["scope", "name"], registry=registry, multiprocess_mode="max")

    def exposition(self) -> tuple[bytes, str]:
        """The text format for a scrape, aggregated across workers in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            registry.register(self.served_up)  # this worker's view; not in the files
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
