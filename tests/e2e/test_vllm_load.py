"""vLLM servers' own load, read from their /metrics by a real ``aigw serve``: least_busy
follows it, a Cedar policy spills to a hosted API on a long queue, /metrics shows it.
The vLLM servers are the OpenAI fake plus a /metrics page in vLLM's exposition format."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from ..fakes.vllm_fake import FakeVllm
from ..providers.conftest import DEV_KEY_LINE
from .server import Server

pytestmark = pytest.mark.e2e

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[
        tuple[Server, FakeVllm, FakeVllm]]:
    a, b, hosted = FakeVllm("gpu-a"), FakeVllm("gpu-b"), OpenAIFake(name="hosted")
    for fake in (a.chat, b.chat, hosted):
        fake.api_key = "sk-fake-shared-key"
    monkeypatch.setenv("FAKE_KEY", "sk-fake-shared-key")
    root = tmp_path / "gw"
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "gateway.cedar").write_text(
        '@id("invoke") permit (principal, action == Action::"invoke", resource);\n'
        '@id("route") permit (principal, action == Action::"route", resource);\n'
        '@id("spill-on-long-queue")\n'
        'forbid (principal, action == Action::"route", resource)\n'
        'when { resource.queue_depth >= 8 };\n'
        '@id("spill-when-the-queue-breaks-the-sla")\n'
        'forbid (principal, action == Action::"route", resource)\n'
        'when { resource.queue_wait_ms > context.latency_sla_ms };\n')
    with ExitStack() as stack:
        urls = [stack.enter_context(serving(app)) for app in (a.app, b.app, hosted.app)]
        (root / "gateway.yaml").write_text(
            "version: 1\n"
            "providers:\n"
            f'  box-a: {{type: vllm, base_url: "{urls[0]}/v1", api_key: "${{FAKE_KEY}}",'
            " metrics_interval_s: 0.1}\n"
            f'  box-b: {{type: vllm, base_url: "{urls[1]}/v1", api_key: "${{FAKE_KEY}}",'
            " metrics_interval_s: 0.1}\n"
            f'  cloud: {{type: openai, base_url: "{urls[2]}/v1", api_key: "${{FAKE_KEY}}"}}\n'
            "deployments:\n"
            f"  gpu-a: {{provider: box-a, model: {MODEL}, context_window: 8192}}\n"
            f"  gpu-b: {{provider: box-b, model: {MODEL}, context_window: 8192}}\n"
            "  hosted: {provider: cloud, model: gpt-4o-mini, context_window: 128000}\n"
            "groups:\n"
            "  gpus: {strategy: least_busy, members: [gpu-a, gpu-b]}\n"
            "  local-first: {strategy: priority, members: [gpu-a, hosted]}\n"
            "routes:\n"
            "  llama: {group: gpus}\n"
            "  local-first: {group: local-first}\n" + DEV_KEY_LINE)
        server = Server(root)
        stack.callback(server.stop)
        server.wait_ready()
        yield server, a, b


def _served_by(server: Server, model: str, sla_ms: int | None = None) -> str:
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=DEV_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-aigw-latency-sla-ms": str(sla_ms)} if sla_ms is not None else None)
    return raw.headers["x-aigw-deployment"]


def _upstream_metrics(server: Server) -> dict[str, float]:
    found = {}
    for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
        if line.startswith("aigw_upstream_"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def _until(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the gateway never read the servers' metrics"
        time.sleep(0.05)


def test_least_busy_follows_what_the_servers_say(
    fleet: tuple[Server, FakeVllm, FakeVllm],
) -> None:
    server, a, b = fleet
    a.running, a.waiting = 6, 3  # busy with other clients' requests
    _until(lambda: _upstream_metrics(server).get(
        'aigw_upstream_requests{deployment="gpu-a",state="waiting"}') == 3.0)
    assert {_served_by(server, "llama") for _ in range(4)} == {"gpu-b"}

    a.running, a.waiting, b.running, b.waiting = 0, 0, 7, 2
    _until(lambda: _upstream_metrics(server).get(
        'aigw_upstream_requests{deployment="gpu-b",state="running"}') == 7.0)
    assert {_served_by(server, "llama") for _ in range(4)} == {"gpu-a"}
    assert _upstream_metrics(server)[
        'aigw_upstream_kv_cache_usage_ratio{deployment="gpu-b"}'] == pytest.approx(0.1)
    status = httpx.get(f"{server.base_url}/admin/status",
                       headers={"authorization": f"Bearer {DEV_KEY}"}).json()
    gpu_b = status["deployments"]["gpu-b"]
    assert (gpu_b["upstream_running"], gpu_b["upstream_waiting"]) == (7, 2)
    assert status["deployments"]["hosted"]["upstream_running"] is None  # not a vLLM server
    page = httpx.get(f"{server.base_url}/admin", auth=("ops", DEV_KEY)).text
    assert "<td>7 / 2 / 10% / -</td>" in page  # no prefix cache lookups yet


def test_the_prefix_cache_hit_share_is_read_between_readings(
    fleet: tuple[Server, FakeVllm, FakeVllm],
) -> None:
    server, a, _b = fleet
    metric = 'aigw_upstream_prefix_cache_hit_ratio{deployment="gpu-a"}'
    _until(lambda: 'aigw_upstream_requests{deployment="gpu-a",state="waiting"}'
           in _upstream_metrics(server))
    assert metric not in _upstream_metrics(server)  # nothing looked up yet: no share
    a.prefix_queries, a.prefix_hits = 1000.0, 100.0
    _until(lambda: _upstream_metrics(server).get(metric) == pytest.approx(0.1))
    a.prefix_queries, a.prefix_hits = 1400.0, 400.0  # 300 of the next 400 tokens hit
    _until(lambda: _upstream_metrics(server).get(metric) == pytest.approx(0.75))
    time.sleep(0.3)  # readings with no new lookups: the last share stands
    assert _upstream_metrics(server)[metric] == pytest.approx(0.75)
    page = httpx.get(f"{server.base_url}/admin", auth=("ops", DEV_KEY)).text
    assert "<td>0 / 0 / 10% / 75%</td>" in page


def test_a_long_queue_spills_to_the_hosted_api_through_a_policy(
    fleet: tuple[Server, FakeVllm, FakeVllm],
) -> None:
    server, a, _b = fleet
    _until(lambda: 'aigw_upstream_requests{deployment="gpu-a",state="waiting"}'
           in _upstream_metrics(server))
    assert _served_by(server, "local-first") == "gpu-a"
    a.waiting = 12  # resource.queue_depth >= 8: forbidden while the queue lasts
    _until(lambda: _upstream_metrics(server).get(
        'aigw_upstream_requests{deployment="gpu-a",state="waiting"}') == 12.0)
    assert _served_by(server, "local-first") == "hosted"
    a.waiting = 0
    _until(lambda: _upstream_metrics(server).get(
        'aigw_upstream_requests{deployment="gpu-a",state="waiting"}') == 0.0)
    assert _served_by(server, "local-first") == "gpu-a"


def test_a_queue_that_would_break_the_latency_sla_spills_to_the_hosted_api(
    fleet: tuple[Server, FakeVllm, FakeVllm],
) -> None:
    server, a, _b = fleet
    waiting = 'aigw_upstream_requests{deployment="gpu-a",state="waiting"}'
    _until(lambda: waiting in _upstream_metrics(server))
    for _ in range(3):  # the gateway measures gpu-a's latency on its own calls
        assert _served_by(server, "local-first", sla_ms=1) == "gpu-a"  # no queue: no wait
    # One request at a time, seven waiting: a new one waits about seven calls' time,
    # under the queue_depth >= 8 bound, so only the SLA policy can decide.
    a.running, a.waiting = 1, 7
    _until(lambda: _upstream_metrics(server).get(waiting) == 7.0)
    assert _served_by(server, "local-first", sla_ms=600_000) == "gpu-a"  # it can wait
    assert _served_by(server, "local-first", sla_ms=1) == "hosted"  # it cannot
    assert _served_by(server, "local-first") == "gpu-a"  # the deadline's SLA: minutes
