"""vLLM servers' own view of their load, read from their Prometheus metrics.

The gateway counts the requests it has in flight to each deployment, but a vLLM server
shared by several gateways (or replicas, or other clients) knows better: how many
requests it is running and how many are queued behind them, and how full its KV cache
is. For every ``vllm`` provider of the graph serving now, ``UpstreamLoadWatch`` reads
``metrics_url`` every ``metrics_interval_s`` and puts what it says into the routing
state of the provider's deployments:

- ``queue_depth`` (requests waiting): Cedar's ``resource.queue_depth``, so a route
  policy can spill a request to another member when the queue is long;
- the ``least_busy`` strategy orders by the server's running + waiting requests
  (never less than the gateway's own in-flight count);
- ``/metrics`` shows them as ``aigw_upstream_requests{deployment, state}``,
  ``aigw_upstream_kv_cache_usage_ratio{deployment}`` and
  ``aigw_upstream_prefix_cache_hit_ratio{deployment}`` (the share of prompt tokens
  its prefix cache had since the previous reading: is ``prefix_affinity`` working?).

For a deployment whose server ``aigw serve`` runs (``serve:``, runtime/vllm_serve.py),
a page that cannot be read also marks it down, and requests skip it until a read
works: it is starting, restarting or dead, and every worker sees that here.

Numbers older than three intervals (a server that stopped answering) are dropped:
the deployment goes back to the gateway's own count and a queue depth of 0, and the
circuit breaker judges the server by its answers as before.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from aigw.compiler.diagnostics import shown_url
from aigw.compiler.graph import Deployment, Graph, Provider

from .routing.state import NOT_ANSWERING, DeploymentStats, RoutingState

log = logging.getLogger("aigw.routing")

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
# The KV cache gauge was renamed in vLLM 0.10 (gpu_cache_usage_perc before).
KV_CACHE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
# Prefix cache use, in tokens: counters since vLLM's V1 engine (with a gpu_ prefix in
# some releases), a hit-rate gauge before it.
PREFIX_HITS = ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total")
PREFIX_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total")
PREFIX_HIT_RATE = "vllm:gpu_prefix_cache_hit_rate"
_STALE_AFTER = 3  # intervals without a reading
_IDLE_S = 5.0  # how often a graph with no vllm provider is looked at again


@dataclass(frozen=True, slots=True)
class ServerLoad:
    running: int
    waiting: int
    kv_cache_usage: float | None  # 0..1
    # Prefix cache: tokens looked up and found since the server started (counters), or
    # the server's own hit rate (older vLLM); None when it does not say.
    prefix_hits: float | None = None
    prefix_queries: float | None = None
    prefix_hit_rate: float | None = None


Samples = dict[str, list[tuple[dict[str, str], float]]]


def read_samples(text: str) -> Samples:
    """vLLM's load gauges in a Prometheus page, by name; values that are not finite (a
    server may print NaN or +Inf) are left out. Raises ValueError when their lines are
    not Prometheus's format."""
    values: Samples = {}
    for family in text_string_to_metric_families(_wanted_lines(text)):
        for sample in family.samples:
            if sample.name in _SAMPLES and math.isfinite(sample.value):
                values.setdefault(sample.name, []).append((sample.labels, sample.value))
    return values


_SAMPLES = frozenset((WAITING, RUNNING, *KV_CACHE, *PREFIX_HITS, *PREFIX_QUERIES,
                      PREFIX_HIT_RATE))
# Family names as HELP and TYPE lines write them (a counter's without its _total).
_FAMILIES = tuple(name.removesuffix("_total") for name in _SAMPLES)
_COMMENTS = ("# HELP ", "# TYPE ")


def _wanted_lines(text: str) -> str:
    """The lines of ``text`` that can be about the samples we read, with their HELP and
    TYPE.

    The parse runs on the event loop, and prometheus-client's parser takes about 35 µs a
    line: a vLLM page is hundreds of lines of histograms and counters (25 ms for one of
    730 lines, every ``metrics_interval_s``, per server, with every request in flight
    waiting), where ours are a few lines. A prefix match keeps a few more (say
    ``vllm:num_requests_waiting_by_reason``); ``read_samples`` keeps exact names only.
    """
    kept = []
    for line in text.split("\n"):  # as the parser splits: not at a label's U+2028
        bare = line.lstrip()
        if (bare[7:] if bare.startswith(_COMMENTS) else bare).startswith(_FAMILIES):
            kept.append(line)
    return "\n".join(kept) + "\n" if kept else ""


def load_of(values: Samples, model: str | None = None) -> ServerLoad | None:
    """The load of ``model`` (summed over the server's engines) in ``read_samples``'s
    result, or the whole server's when it labels no sample with that model; None when
    the page has no vLLM load gauges."""
    if WAITING not in values and RUNNING not in values:
        return None
    # A server that labels this model's samples: only those count; one that does not
    # (an unknown name, or no labels): the whole server's.
    mine = model is not None and any(labels.get("model_name") == model
                                     for samples in values.values() for labels, _ in samples)

    def chosen(name: str) -> list[float]:
        return [value for labels, value in values.get(name, [])
                if not mine or labels.get("model_name") == model]

    def total(names: tuple[str, ...]) -> float | None:
        found = next((chosen(name) for name in names if name in values), None)
        return sum(found) if found else None

    kv = next((chosen(name) for name in KV_CACHE if name in values), [])
    rates = chosen(PREFIX_HIT_RATE)
    return ServerLoad(
        running=round(sum(chosen(RUNNING))),
        waiting=round(sum(chosen(WAITING))),
        kv_cache_usage=max(kv) if kv else None,  # the fullest engine decides
        prefix_hits=total(PREFIX_HITS),
        prefix_queries=total(PREFIX_QUERIES),
        prefix_hit_rate=sum(rates) / len(rates) if rates else None,
    )


def parse_load(text: str, model: str | None = None) -> ServerLoad | None:
    """``load_of(read_samples(text), model)``."""
    return load_of(read_samples(text), model)


class UpstreamLoadWatch:
    """Reads the metrics of every vllm provider of the current graph, for ever."""

    def __init__(
        self,
        current: Callable[[], tuple[Graph, RoutingState]],
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._current = current
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(2.0))
        self._clock = clock
        self._due: dict[str, float] = {}  # provider name -> when to read it next
        # Providers whose last read failed, with why (logged once, and again on a new why).
        self._failing: dict[str, str] = {}

    async def run(self) -> None:
        try:
            while True:
                try:
                    pause = await self.round()
                # The watcher must outlive any one bad page or URL: without it every
                # vLLM deployment would keep its last figures for good.
                except Exception:
                    log.exception("reading vLLM servers' metrics failed; trying again")
                    pause = _IDLE_S
                await asyncio.sleep(pause)
        finally:
            await self._client.aclose()

    async def round(self) -> float:
        """Read every provider that is due; returns how long to sleep until the next."""
        graph, routing = self._current()
        watched = [p for p in graph.providers.values() if _watched(p)]
        now = self._clock()
        due = [p for p in watched if self._due.get(p.name, 0.0) <= now]
        names = {p.name for p in watched}  # a provider a reload removed starts afresh
        self._failing = {n: why for n, why in self._failing.items() if n in names}
        await asyncio.gather(*(self._read(provider, graph, routing) for provider in due))
        for provider in due:
            self._due[provider.name] = now + provider.metrics_interval_s
        self._forget_stale(graph, routing, self._clock())
        if not watched:
            return _IDLE_S
        soonest = min(self._due.get(p.name, now) for p in watched)
        return max(0.05, soonest - self._clock())

    async def _read(self, provider: Provider, graph: Graph, routing: RoutingState) -> None:
        assert provider.metrics_url is not None
        deployments = _served_by(graph, provider)
        # As logged: a base_url's user info (or a query) can hold a password.
        shown = shown_url(provider.metrics_url)
        try:
            response = await self._client.get(provider.metrics_url)
            text = response.text
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            why = str(exc).replace(provider.metrics_url, shown)  # httpx may quote the URL
            self._failed(provider, "unreachable", f"cannot read its metrics at {shown}: {why}")
            _server_answers(deployments, routing, False)
            return
        if not response.is_success:  # said here: httpx's message quotes the URL as it is
            self._failed(provider, "unreachable",
                         f"cannot read its metrics at {shown}: HTTP {response.status_code}")
            _server_answers(deployments, routing, False)
            return
        _server_answers(deployments, routing, True)
        try:
            values = read_samples(text)
        except ValueError as exc:  # not the Prometheus text format
            self._failed(provider, "malformed", f"{shown} is not Prometheus text: {exc}")
            return
        if WAITING not in values and RUNNING not in values:
            self._failed(provider, "no gauges",
                         f"{shown} has no finite vLLM load gauges ({RUNNING}, "
                         f"{WAITING}); is it a vLLM server's /metrics?")
            return
        if self._failing.pop(provider.name, None) is not None:
            log.info("reading the metrics of provider '%s' again", provider.name)
        now = self._clock()
        for deployment in deployments:
            load = load_of(values, deployment.model)
            stats = routing.stats.get(deployment.name)  # None: a reload removed it meanwhile
            if load is not None and stats is not None:
                _apply(stats, load, now)

    def _failed(self, provider: Provider, kind: str, why: str) -> None:
        """Log why a provider's load is unknown: once until a read works again or it
        fails another way (unreachable, then serving the wrong page, say)."""
        if self._failing.get(provider.name) != kind:
            log.warning("provider '%s': %s", provider.name, why)
            self._failing[provider.name] = kind

    def _forget_stale(self, graph: Graph, routing: RoutingState, now: float) -> None:
        """Drop figures older than three intervals, and those of deployments no longer on
        a watched provider (a reload changed or removed it: stats outlive reloads)."""
        for name, stats in routing.stats.items():
            seen = stats.upstream_seen_at
            if seen is None:
                continue
            deployment = graph.deployments.get(name)
            provider = deployment.provider if deployment is not None else None
            if (provider is None or not _watched(provider)
                    or now - seen > _STALE_AFTER * provider.metrics_interval_s):
                stats.forget_upstream()


def _watched(provider: Provider) -> bool:
    return provider.metrics_url is not None and provider.disabled_reason is None


def _server_answers(deployments: list[Deployment], routing: RoutingState,
                    answers: bool) -> None:
    """Mark those of ``deployments`` whose server aigw runs as up or down: requests skip
    them while down (a server it did not start is judged by its answers instead)."""
    for deployment in deployments:
        stats = routing.stats.get(deployment.name)
        if stats is None or not stats.served:
            continue
        if answers:
            stats.server_down = None
        elif stats.server_down is None:  # it answered before (until then: "starting")
            stats.server_down = NOT_ANSWERING


def _served_by(graph: Graph, provider: Provider) -> list[Deployment]:
    return [d for d in graph.deployments.values() if d.provider.name == provider.name]


def _apply(stats: DeploymentStats, load: ServerLoad, now: float) -> None:
    stats.queue_depth = load.waiting
    stats.upstream_running = load.running
    stats.kv_cache_usage = load.kv_cache_usage
    stats.prefix_cache_hit_rate = _prefix_hit_rate(stats, load)
    stats.upstream_seen_at = now


def _prefix_hit_rate(stats: DeploymentStats, load: ServerLoad) -> float | None:
    """The share of prompt tokens the prefix cache had, between the last two readings
    that saw lookups (the server's counters only grow); the server's own rate when it
    gives one instead. None until two readings, and after a restart of the server."""
    if load.prefix_hit_rate is not None:
        return load.prefix_hit_rate
    if load.prefix_hits is None or load.prefix_queries is None:
        stats.prefix_counts = None
        return None
    before, stats.prefix_counts = stats.prefix_counts, (load.prefix_hits, load.prefix_queries)
    if before is None:
        return None
    hits, queries = load.prefix_hits - before[0], load.prefix_queries - before[1]
    if hits < 0 or queries < 0:  # the server restarted: its counters began again
        return None
    if queries == 0:  # nothing looked up since: the last rate still stands
        return stats.prefix_cache_hit_rate
    return min(1.0, hits / queries)
