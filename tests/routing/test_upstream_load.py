"""Reading vLLM's /metrics (runtime/upstream_load.py): the parser, and the watcher's
rounds over a graph's vllm providers, with an httpx mock transport and a fake clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from aigw.compiler import compile_gateway
from aigw.compiler.graph import Graph
from aigw.runtime import upstream_load
from aigw.runtime.policy_live import StateLive
from aigw.runtime.routing.state import RoutingState
from aigw.runtime.upstream_load import ServerLoad, UpstreamLoadWatch, parse_load

# Two engines (data parallel), two models on one server, vLLM's older KV cache name.
METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="llama"} 3.0
vllm:num_requests_running{engine="1",model_name="llama"} 2.0
vllm:num_requests_running{engine="0",model_name="qwen"} 9.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama"} 4.0
vllm:num_requests_waiting{engine="1",model_name="llama"} 1.0
vllm:num_requests_waiting{engine="0",model_name="qwen"} 0.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="llama"} 0.25
vllm:gpu_cache_usage_perc{engine="1",model_name="llama"} 0.75
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="llama"} 1234.0
"""


def test_the_load_of_one_model_is_summed_over_its_engines() -> None:
    assert parse_load(METRICS, "llama") == ServerLoad(running=5, waiting=5, kv_cache_usage=0.75)
    assert parse_load(METRICS, "qwen") == ServerLoad(running=9, waiting=0, kv_cache_usage=None)
    # A model name the server does not label: the whole server's load.
    assert parse_load(METRICS, "other") == ServerLoad(14, 5, 0.75)


def test_a_page_without_vllm_metrics_says_nothing() -> None:
    assert parse_load("# TYPE up gauge\nup 1\n") is None


GATEWAY = """
version: 1
providers:
  box: {type: vllm, base_url: "http://gpu-box.test:8000/v1", metrics_interval_s: 1}
  other: {type: vllm, base_url: "http://other.test/v1", metrics_url: "http://other.test/m"}
  cloud: {type: echo}
deployments:
  llama: {provider: box, model: llama, context_window: 8192}
  qwen: {provider: box, model: qwen, context_window: 8192}
  far: {provider: other, model: llama, context_window: 8192}
  local: {provider: cloud, model: echo-1, context_window: 8192}
routes:
  chat: {deployment: llama}
"""


@pytest.fixture
def compiled(tmp_path: Path) -> Graph:
    (tmp_path / "gateway.yaml").write_text(GATEWAY)
    result = compile_gateway(tmp_path)
    assert result.graph is not None, result.diagnostics
    return result.graph


async def test_each_round_reads_the_due_servers_and_forgets_stale_numbers(
    compiled: Graph,
) -> None:
    graph, routing, now = compiled, RoutingState(), [100.0]
    routing.sync(graph)  # as Live.build does
    assert graph.providers["box"].metrics_url == "http://gpu-box.test:8000/metrics"
    assert graph.providers["cloud"].metrics_url is None
    asked: list[str] = []
    up = {"gpu-box.test": True, "other.test": True}

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        if not up[request.url.host]:
            return httpx.Response(503)
        return httpx.Response(200, text=METRICS)

    watch = UpstreamLoadWatch(lambda: (graph, routing),
                              httpx.AsyncClient(transport=httpx.MockTransport(handler)),
                              clock=lambda: now[0])
    sleep = await watch.round()
    assert sorted(asked) == ["http://gpu-box.test:8000/metrics", "http://other.test/m"]
    assert sleep == pytest.approx(1.0)  # box every second; other every 2 (the default)
    llama = routing.of(graph.deployments["llama"])
    assert (llama.upstream_running, llama.queue_depth, llama.kv_cache_usage) == (5, 5, 0.75)
    assert llama.load() == 10
    assert routing.of(graph.deployments["qwen"]).load() == 9
    assert routing.of(graph.deployments["local"]).upstream_running is None

    asked.clear()
    now[0] = 101.0
    await watch.round()
    assert asked == ["http://gpu-box.test:8000/metrics"]  # other is not due yet

    up["gpu-box.test"] = False  # the server stops answering: its numbers age out
    for second in (102.0, 103.0, 104.0):
        now[0] = second
        await watch.round()
    assert llama.upstream_running == 5  # three intervals old: still believed
    now[0] = 104.5
    await watch.round()
    assert (llama.upstream_running, llama.queue_depth, llama.upstream_seen_at) == (None, 0, None)
    llama.in_flight = 2
    assert llama.load() == 2  # back to the gateway's own count
    await watch._client.aclose()


def test_figures_that_are_not_finite_are_left_out() -> None:
    page = METRICS.replace('running{engine="1",model_name="llama"} 2.0',
                           'running{engine="1",model_name="llama"} +Inf').replace(
        'vllm:gpu_cache_usage_perc{engine="0",model_name="llama"} 0.25',
        'vllm:gpu_cache_usage_perc{engine="0",model_name="llama"} NaN')
    assert parse_load(page, "llama") == ServerLoad(running=3, waiting=5, kv_cache_usage=0.75)


async def test_a_reload_that_stops_watching_a_provider_drops_its_figures(
    compiled: Graph, tmp_path: Path,
) -> None:
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "gateway.yaml").write_text(
        GATEWAY.replace("type: vllm, base_url: \"http://gpu-box.test:8000/v1\"",
                        "type: openai_compatible, base_url: \"http://gpu-box.test:8000/v1\"")
        .replace("  far: {provider: other, model: llama, context_window: 8192}\n", ""))
    later = compile_gateway(tmp_path / "later").graph
    assert later is not None and later.providers["box"].metrics_url is None
    routing, current = RoutingState(), [compiled]
    routing.sync(compiled)
    watch = UpstreamLoadWatch(
        lambda: (current[0], routing),
        httpx.AsyncClient(transport=httpx.MockTransport(lambda _r: httpx.Response(
            200, text=METRICS))), clock=lambda: 100.0)
    await watch.round()
    assert routing.stats["llama"].upstream_running == 5
    assert routing.stats["far"].upstream_running == 5

    current[0] = later  # box is no vLLM server any more; "far" is gone
    routing.sync(later)
    await watch.round()
    assert routing.stats["llama"].upstream_running is None
    assert routing.stats["llama"].queue_depth == 0
    assert "far" not in routing.stats  # a read never brings a removed deployment back
    await watch._client.aclose()


async def test_the_watcher_outlives_a_round_that_fails(
    compiled: Graph, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upstream_load, "_IDLE_S", 0.01)
    routing, calls = RoutingState(), [0]
    routing.sync(compiled)

    def current() -> tuple[Graph, RoutingState]:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("a bug in one round")
        return compiled, routing

    watch = UpstreamLoadWatch(current, httpx.AsyncClient(transport=httpx.MockTransport(
        lambda _r: httpx.Response(200, text=METRICS))))
    task = asyncio.create_task(watch.run())
    try:
        for _ in range(200):
            if routing.stats["llama"].upstream_running:
                break
            await asyncio.sleep(0.01)
        assert routing.stats["llama"].upstream_running == 5
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_only_the_gauges_lines_are_parsed() -> None:
    # A line the parser cannot read elsewhere on the page (here a histogram bucket with
    # no value) costs nothing: the parse runs on the event loop, so only the load
    # gauges' lines reach it.
    page = METRICS + '# TYPE vllm:e2e_request_latency_seconds histogram\n' \
        'vllm:e2e_request_latency_seconds_bucket{le="0.5"}\n'
    assert parse_load(page, "llama") == ServerLoad(running=5, waiting=5, kv_cache_usage=0.75)
    # A broken gauge line is still an error (the watcher logs it and keeps no figures).
    with pytest.raises(ValueError):
        parse_load(METRICS.replace('model_name="qwen"} 9.0', 'model_name="qwen"} nine'))


async def test_a_page_that_is_not_vllms_is_logged_once_and_changes_nothing(
    compiled: Graph, caplog: pytest.LogCaptureFixture,
) -> None:
    routing = RoutingState()
    routing.sync(compiled)
    pages = iter(["<html>metrics are elsewhere</html>", "# TYPE up gauge\nup 1\n", METRICS,
                  "<html>the wrong URL after a redeploy</html>"])
    clock = [0.0]
    watch = UpstreamLoadWatch(
        lambda: (compiled, routing),
        httpx.AsyncClient(transport=httpx.MockTransport(
            lambda request: httpx.Response(200, text=next(pages) if "gpu-box" in str(
                request.url) else METRICS))),
        clock=lambda: clock[0],
    )
    with caplog.at_level("WARNING", logger="aigw.routing"):
        for second in (0.0, 1.0):
            clock[0] = second
            await watch.round()
            assert routing.stats["llama"].upstream_running is None
    assert caplog.text.count("has no finite vLLM load gauges") == 1
    clock[0] = 2.0
    await watch.round()
    assert routing.stats["llama"].upstream_running == 5
    clock[0] = 3.0
    with caplog.at_level("WARNING", logger="aigw.routing"):
        await watch.round()  # it worked in between: a new failure is news
    assert caplog.text.count("has no finite vLLM load gauges") == 2
    await watch._client.aclose()


def _prefix_page(hits: float, queries: float) -> str:
    """METRICS plus vLLM V1's prefix cache counters for llama, split over two engines."""
    lines = ["# HELP vllm:prefix_cache_queries Prefix cache queries, in tokens.",
             "# TYPE vllm:prefix_cache_queries counter",
             "# HELP vllm:prefix_cache_hits Prefix cache hits, in tokens.",
             "# TYPE vllm:prefix_cache_hits counter"]
    for engine in ("0", "1"):
        labels = f'engine="{engine}",model_name="llama"'
        lines.append(f"vllm:prefix_cache_queries_total{{{labels}}} {queries / 2}")
        lines.append(f"vllm:prefix_cache_hits_total{{{labels}}} {hits / 2}")
    lines.append('vllm:prefix_cache_hits_total{engine="0",model_name="qwen"} 999.0')
    return METRICS + "\n".join(lines) + "\n"


def test_prefix_cache_counters_and_the_older_hit_rate_are_read() -> None:
    load = parse_load(_prefix_page(hits=40, queries=200), "llama")
    assert load is not None and (load.prefix_hits, load.prefix_queries) == (40, 200)
    assert load.prefix_hit_rate is None
    older = METRICS + ("# TYPE vllm:gpu_prefix_cache_hit_rate gauge\n"
                       'vllm:gpu_prefix_cache_hit_rate{model_name="llama"} 0.5\n')
    load = parse_load(older, "llama")
    assert load is not None and load.prefix_hit_rate == 0.5 and load.prefix_hits is None
    assert parse_load(METRICS, "llama") == ServerLoad(5, 5, 0.75)  # none given: None


async def test_the_prefix_hit_share_is_taken_between_readings_and_survives_restarts(
    compiled: Graph,
) -> None:
    routing, now = RoutingState(), [0.0]
    routing.sync(compiled)
    # (hits, queries) as the server counts them; the third reading is after a restart.
    readings = iter([(10.0, 100.0), (40.0, 200.0), (40.0, 200.0), (5.0, 50.0), (25.0, 100.0)])
    page = [""]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=page[0] if "gpu-box" in str(request.url) else METRICS)

    watch = UpstreamLoadWatch(lambda: (compiled, routing),
                              httpx.AsyncClient(transport=httpx.MockTransport(handler)),
                              clock=lambda: now[0])
    llama = routing.of(compiled.deployments["llama"])
    seen = []
    for second, (hits, queries) in enumerate(readings):
        now[0], page[0] = float(second), _prefix_page(hits, queries)
        await watch.round()
        seen.append(llama.prefix_cache_hit_rate)
    # first: nothing to compare with; 30 of 100 tokens; no lookups since: it stands;
    # counters went back (restart): unknown; 20 of 50 since the restart.
    assert seen == [None, pytest.approx(0.3), pytest.approx(0.3), None, pytest.approx(0.4)]
    assert routing.snapshot()["llama"].prefix_cache_hit_rate == pytest.approx(0.4)
    assert routing.of(compiled.deployments["qwen"]).prefix_cache_hit_rate is None
    now[0] = 10.0  # no reading for three intervals: forgotten with the rest
    page[0] = "<html>gone</html>"
    await watch.round()
    assert (llama.prefix_cache_hit_rate, llama.prefix_counts) == (None, None)
    await watch._client.aclose()


def test_cedar_sees_the_wait_a_vllm_queue_means(compiled: Graph) -> None:
    routing = RoutingState()
    routing.sync(compiled)
    live = StateLive(routing)
    llama = compiled.deployments["llama"]
    stats = routing.of(llama)
    stats.latency_ms, stats.queue_depth = 800.0, 6
    assert live.values(llama, ("queue_wait_ms",)) == (0,)  # no reading of the server yet
    stats.upstream_running = 4  # four at a time, 800 ms each: six waiting take 1,200 ms
    assert live.values(llama, ("queue_wait_ms", "queue_depth")) == (1200, 6)
    stats.upstream_running = 0  # all queued, none running: counted as one at a time
    assert live.values(llama, ("queue_wait_ms",)) == (4800,)
    stats.latency_ms = None  # never measured: nothing to estimate with
    assert live.values(llama, ("queue_wait_ms",)) == (0,)


async def test_a_password_in_the_servers_url_is_not_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A vLLM server behind basic auth (``http://user:password@host/v1``): each failure
    to read its metrics logged the URL as written, the password with it."""
    (tmp_path / "gateway.yaml").write_text(GATEWAY.replace(
        "http://gpu-box.test:8000/v1", "http://svc:pw-canary-4242@gpu-box.test:8000/v1"))
    graph = compile_gateway(tmp_path).graph
    assert graph is not None
    routing, clock = RoutingState(), [0.0]
    routing.sync(graph)
    answers = iter([httpx.Response(401), httpx.Response(200, text="<html>login</html>"),
                    httpx.Response(200, text="vllm:num_requests_running{} nine\n")])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host != "gpu-box.test":
            return httpx.Response(200, text=METRICS)
        if clock[0] == 3.0:
            raise httpx.ConnectError(f"cannot reach {request.url}")
        return next(answers)

    watch = UpstreamLoadWatch(lambda: (graph, routing),
                              httpx.AsyncClient(transport=httpx.MockTransport(handler)),
                              clock=lambda: clock[0])
    with caplog.at_level("WARNING", logger="aigw.routing"):
        for second in (0.0, 1.0, 2.0, 3.0):
            clock[0] = second
            await watch.round()
    await watch._client.aclose()
    shown = "http://***@gpu-box.test:8000/metrics"
    assert [record.getMessage() for record in caplog.records] == [
        f"provider 'box': cannot read its metrics at {shown}: HTTP 401",
        f"provider 'box': {shown} has no finite vLLM load gauges (vllm:num_requests_running, "
        "vllm:num_requests_waiting); is it a vLLM server's /metrics?",
        f"provider 'box': {shown} is not Prometheus text: could not convert string to "
        "float: 'nine'",
        f"provider 'box': cannot read its metrics at {shown}: cannot reach {shown}",
    ]
