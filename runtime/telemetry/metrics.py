"""Prometheus metrics, labelled only with names the graph declares (never raw user input).

With several hypercorn workers, ``aigw serve`` sets PROMETHEUS_MULTIPROC_DIR before the
workers start, prometheus-client then keeps values in shared files, and ``/metrics``
aggregates them with its MultiProcessCollector.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

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

from ..routing.state import SERVER_UP, Snapshot

# 2 s is a boundary because HighLatency alerts on a p95 over 2 s: without it,
# histogram_quantile interpolated inside 1-2.5 s and read a route whose requests all took
# 1.1 s as "p95 2.4 s".
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 2.5, 5, 10, 30, 60,
                    120)
# Up to 2.5 s: a long stream (tens of µs a chunk) or a large prompt to count can take the
# gateway tenths of a second, which a top bucket of 0.1 s showed only as "over 0.1".
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                     0.25, 0.5, 1, 2.5)
CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class ServerGauges(Collector):
    """The vLLM servers' gauges, read at scrape time from the routing state of the
    process answering (``source``), not kept in prometheus-client gauges: with several
    workers those live in shared files that cannot be cleared, so a server that stopped
    answering, or a deployment a reload removed, would show its last figures (and
    ``aigw_vllm_server_up`` 0, paging) for as long as the gateway runs. Every worker
    reads the same servers, so any worker's view is the servers' view."""

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[str, Snapshot]] = dict

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> list[Metric]:
        requests, kv_cache, prefix_hits, up = families = self._families()
        for name, view in self.source().items():
            if view.server is not None:
                up.add_metric([name], 1.0 if view.server == SERVER_UP else 0.0)
            if view.upstream_running is None:  # shown while fresh, then not at all
                continue
            requests.add_metric([name, "running"], view.upstream_running)
            requests.add_metric([name, "waiting"], view.upstream_waiting or 0)
            if view.kv_cache_usage is not None:
                kv_cache.add_metric([name], view.kv_cache_usage)
            if view.prefix_cache_hit_rate is not None:
                prefix_hits.add_metric([name], view.prefix_cache_hit_rate)
        return list(families)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                "aigw_upstream_requests",
                "Requests a vLLM server says it is running or has waiting (its /metrics).",
                labels=["deployment", "state"]),
            GaugeMetricFamily(
                "aigw_upstream_kv_cache_usage_ratio",
                "Share of a vLLM server's KV cache in use (its /metrics).", labels=["deployment"]),
            GaugeMetricFamily(
                "aigw_upstream_prefix_cache_hit_ratio",
                "Share of prompt tokens a vLLM server's prefix cache had, between its last two "
                "readings (its /metrics).", labels=["deployment"]),
            GaugeMetricFamily(
                "aigw_vllm_server_up",
                "1 while a vLLM server aigw runs (serve:) answers, 0 while it starts or is down.",
                labels=["deployment"]),
        )


class KeyExpiries(Collector):
    """``aigw_key_expires_timestamp_seconds{key}``: when each key with ``expires`` is
    refused from (Unix time), read at scrape time from the graph this process serves
    (``source``), so a series per declared key and no more. Not a prometheus-client
    gauge: with several workers those live in shared files that cannot lose a series,
    so a key a reload dropped or stopped expiring would keep its date (and
    KeyExpiringSoon firing) for as long as the gateway runs."""

    def __init__(self) -> None:
        self.source: Callable[[], Mapping[str, float]] = dict

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        family = self._family()
        for key, expires_at in self.source().items():
            family.add_metric([key], expires_at)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "aigw_key_expires_timestamp_seconds",
            "When a key with expires: is refused from (Unix time); keys without are absent.",
            labels=["key"])


class Metrics:
    """Every metric aigw exports, in one registry per process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        request = ["route", "deployment", "provider", "team", "status"]
        served = ["route", "deployment", "provider"]
        self.requests = Counter("aigw_requests", "Requests answered, by outcome.",
                                request, registry=registry)
        # By ``stream``: a stream lasts as long as the model writes, so its duration says
        # nothing of how long a client waited (aigw_time_to_first_token_seconds does).
        self.latency = Histogram("aigw_request_duration_seconds",
                                 "Time from request to the last byte of the answer.",
                                 [*served, "stream"], buckets=_LATENCY_BUCKETS,
                                 registry=registry)
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
        # Apart from aigw_tokens, not a direction of it: these are input tokens already
        # counted there, and a sum over its directions would count them twice.
        self.prompt_cache = Counter(
            "aigw_prompt_cache_tokens",
            "Input tokens a provider's prompt cache served (read) or stored (write); "
            "part of aigw_tokens_total{direction=\"input\"}.",
            ["route", "deployment", "team", "operation"], registry=registry)
        self.cost = Counter("aigw_cost", "Cost in the price table's currency.",
                            ["route", "deployment", "team"], registry=registry)
        self.fallbacks = Counter("aigw_fallbacks", "Requests served by a fallback group.",
                                 ["route"], registry=registry)
        self.retries = Counter("aigw_retries", "Upstream attempts beyond the first.",
                               ["route"], registry=registry)
        self.mcp_requests = Counter(
            "aigw_mcp_requests", "MCP messages answered at /mcp/<server>, by outcome; tool is "
            "set for tools/call.", ["server", "method", "tool", "team", "status"],
            registry=registry)
        self.mcp_latency = Histogram("aigw_mcp_request_duration_seconds",
                                     "Time from an MCP message to the last byte of its answer.",
                                     ["server", "method"], buckets=_LATENCY_BUCKETS,
                                     registry=registry)
        self.cache = Counter("aigw_cache_lookups", "Response cache lookups.",
                             ["route", "result"], registry=registry)
        self.circuit = Gauge("aigw_circuit_state",
                             "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
                             ["deployment"], registry=registry, multiprocess_mode="livemax")
        # This process's breakers (deployment -> state), published by publish_circuits.
        self.circuits: Callable[[], Mapping[str, str]] = dict
        self._circuits_shown: set[tuple[str, ...]] = set()
        self.servers = ServerGauges()
        registry.register(self.servers)
        self.key_expiries = KeyExpiries()
        registry.register(self.key_expiries)
        self.served_restarts = Counter(
            "aigw_vllm_server_restarts", "Times aigw started a vLLM server again after it "
            "exited, hung or never came up.", ["deployment"], registry=registry)
        self.in_flight = Gauge("aigw_in_flight_requests", "Requests being served now.",
                               ["route"], registry=registry, multiprocess_mode="livesum")
        self.workflows = Counter("aigw_workflow_executions", "Pipeline executions that ended.",
                                 ["pipeline", "status"], registry=registry)
        self.budget_used = Gauge("aigw_budget_used_ratio",
                                 "Share of a budget spent in its current period.",
                                 ["scope", "name"], registry=registry,
                                 multiprocess_mode="mostrecent")
        self._budgets_shown: set[tuple[str, ...]] = set()
        self.reloads = Counter("aigw_config_reloads", "Config reloads, by outcome (ok, failed: "
                               "the config did not compile and the graph stayed).",
                               ["outcome"], registry=registry)
        # Both outcomes from the start, at 0: a series that first appears at 1 has no
        # increase() to Prometheus, so ConfigReloadFailed missed a gateway's first failure.
        for outcome in ("ok", "failed"):
            self.reloads.labels(outcome)
        self.budget_refusals = Counter(
            "aigw_budget_refusals", "Requests refused (429) or streams cut because a budget "
            "was spent; scope user counts the end users of the team or key named.",
            ["scope", "name"], registry=registry)
        # A Realtime session is one request (aigw_requests); each of its responses is
        # counted here: done (billed at its usage) or cut (no response.done came: its
        # upstream or client went first; billed at an estimate, as a failed response).
        self.realtime_responses = Counter(
            "aigw_realtime_responses", "Responses of Realtime sessions, by outcome (done; "
            "cut: ended without a response.done, billed at an estimate).",
            ["route", "deployment", "team", "outcome"], registry=registry)
        self.guardrail_actions = Counter(
            "aigw_guardrail_actions", "Requests a guardrail acted on, by side (input, "
            "output) and action (block, redact, log; error: its checker did not answer, and "
            "its on_error decided).", ["guardrail", "direction", "action"], registry=registry)
        self.last_reload = Gauge("aigw_config_last_reload_success_timestamp_seconds",
                                 "When a reload last swapped in a new graph (Unix time).",
                                 registry=registry, multiprocess_mode="livemax")
        self.graph = Gauge("aigw_graph_info", "1 for the fingerprint of the graph served; "
                           "two at once: workers serve different graphs.", ["fingerprint"],
                           registry=registry, multiprocess_mode="livemax")
        self._graph_shown: set[tuple[str, ...]] = set()

    def declare_pipelines(self, names: Iterable[str]) -> None:
        """Show each declared pipeline's failed executions from 0, so that WorkflowFailed
        sees the first failure as an increase (a series born at 1 has none)."""
        for name in names:
            self.workflows.labels(name, "failed")

    def publish_circuits(self) -> None:
        """Set aigw_circuit_state from this process's breakers, as they are now (an open
        circuit turns half-open by time alone, with no request to report it)."""
        self._circuits_shown = _publish(self.circuit, {
            (name,): CIRCUIT_VALUES[state] for name, state in self.circuits().items()
        }, self._circuits_shown)

    def publish_budgets(self, used: Mapping[tuple[str, ...], float]) -> None:
        """Set aigw_budget_used_ratio (by scope and name) from the store's figures."""
        self._budgets_shown = _publish(self.budget_used, used, self._budgets_shown)

    def serving(self, fingerprint: str) -> None:
        """Set aigw_graph_info to the graph this process serves now."""
        self._graph_shown = _publish(self.graph, {(fingerprint,): 1.0}, self._graph_shown)

    def reloaded(self, fingerprint: str | None) -> None:
        """Count a reload: ok with the new graph's fingerprint, failed with None."""
        self.reloads.labels("ok" if fingerprint else "failed").inc()
        if fingerprint:
            self.last_reload.set_to_current_time()
            self.serving(fingerprint)

    def exposition(self) -> tuple[bytes, str]:
        """The text format for a scrape, aggregated across workers in multiprocess mode."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            registry.register(self.servers)  # this worker's view; not in the files
            registry.register(self.key_expiries)  # this worker's graph; not in the files
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _publish(
    gauge: Gauge, values: Mapping[tuple[str, ...], float], shown: set[tuple[str, ...]]
) -> set[tuple[str, ...]]:
    """Set ``gauge`` to ``values``; a series shown before and absent now (a deployment or
    a budget a reload removed) leaves the metric, or, with several workers, is set to 0:
    their shared files cannot lose a series. Returns what is shown now."""
    multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    for gone in shown - values.keys():
        if multiprocess:
            gauge.labels(*gone).set(0)
        else:
            gauge.remove(*gone)
    for labels, value in values.items():
        gauge.labels(*labels).set(value)
    return set(values)
