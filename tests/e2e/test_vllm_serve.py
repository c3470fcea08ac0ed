"""A real ``aigw serve`` running a vLLM server for a deployment (``serve:``): requests
skip it while it loads and while it is down, go to it once it answers, /metrics and
/admin/status say so, and it stops with the gateway. The server is the vLLM fake run
as a process (tests/fakes/vllm_fake.py), the hosted API the OpenAI fake."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import free_port, serving
from ..providers.conftest import DEV_KEY_LINE
from .server import Server, running

pytestmark = pytest.mark.e2e

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "vllm_fake.py"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def write_config(root: Path, port: int, hosted_url: str) -> None:
    """The fake vLLM "loads its model" until the file ``root/loaded`` exists."""
    root.mkdir()
    (root / "gateway.yaml").write_text(
        "version: 1\n"
        "providers:\n"
        f'  box: {{type: vllm, base_url: "http://127.0.0.1:{port}/v1", '
        'api_key: "${BOX_KEY}", metrics_interval_s: 0.2}\n'
        f'  cloud: {{type: openai, base_url: "{hosted_url}/v1", api_key: "${{HOSTED_KEY}}"}}\n'
        "deployments:\n"
        f"  gpu: {{provider: box, model: {MODEL}, context_window: 8192, serve: {{\n"
        f'    command: ["{sys.executable}", "{FAKE}", serve],\n'
        f'    env: {{FAKE_VLLM_HOLD: "{root / "loaded"}"}}}}}}\n'
        "  hosted: {provider: cloud, model: gpt-4o-mini, context_window: 128000}\n"
        "groups:\n"
        "  local-first: {strategy: priority, members: [gpu, hosted]}\n"
        "routes:\n"
        "  local-first: {group: local-first}\n"
        "  gpu-only: {deployment: gpu}\n" + DEV_KEY_LINE)


@pytest.fixture
def hosted_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    hosted = OpenAIFake(name="hosted")
    hosted.api_key = "sk-fake-hosted-key"
    monkeypatch.setenv("HOSTED_KEY", hosted.api_key)
    monkeypatch.setenv("BOX_KEY", "sk-box-key")
    with serving(hosted.app) as url:
        yield url


@pytest.fixture
def gateway(tmp_path: Path, hosted_url: str) -> Iterator[tuple[Server, int]]:
    port = free_port()
    write_config(tmp_path / "gw", port, hosted_url)
    with running(tmp_path / "gw") as server:
        yield server, port


def ask(server: Server, model: str) -> httpx.Headers:
    """The answer's headers. A client a call, closed at once: one left to the collector
    warns of its open socket (and -W error makes that a failure somewhere else)."""
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=DEV_KEY,
                       max_retries=0) as client:
        return client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}]).headers


def served_by(server: Server, model: str) -> str:
    return ask(server, model)["x-aigw-deployment"]


def metric(server: Server, name: str) -> float | None:
    for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


UP = 'aigw_vllm_server_up{deployment="gpu"}'


def test_requests_skip_the_served_server_until_it_answers_and_while_it_is_down(
    gateway: tuple[Server, int],
) -> None:
    server, port = gateway
    # Loading its model: the route with nowhere else to go says so, the other falls back.
    with pytest.raises(openai.APIStatusError) as refused:
        ask(server, "gpu-only")
    assert refused.value.status_code == 503
    assert "gpu is starting (its vLLM server has not answered yet)" in refused.value.message
    assert served_by(server, "local-first") == "hosted"
    assert metric(server, UP) == 0.0
    page = httpx.get(f"{server.base_url}/admin", auth=("ops", DEV_KEY)).text
    assert "<td>starting (its vLLM server has not answered yet)</td>" in page

    (server.root / "loaded").touch()  # the model is loaded: the server opens its port

    until(lambda: metric(server, UP) == 1.0)
    assert served_by(server, "local-first") == "gpu"
    assert served_by(server, "gpu-only") == "gpu"  # the provider's key opened the server
    status = httpx.get(f"{server.base_url}/admin/status",
                       headers={"authorization": f"Bearer {DEV_KEY}"}).json()
    assert status["deployments"]["gpu"]["server"] == "up"
    assert status["deployments"]["hosted"]["server"] is None  # aigw does not run it

    first = httpx.get(f"http://127.0.0.1:{port}/fake/launch").json()["pid"]
    os.kill(first, signal.SIGKILL)
    until(lambda: metric(server, UP) == 0.0)
    assert served_by(server, "local-first") == "hosted"
    until(lambda: metric(server, UP) == 1.0)
    assert served_by(server, "local-first") == "gpu"
    assert metric(server, 'aigw_vllm_server_restarts_total{deployment="gpu"}') == 1.0
    second = httpx.get(f"http://127.0.0.1:{port}/fake/launch").json()["pid"]
    assert second != first
    assert "vLLM server of deployment 'gpu' exited with code -9" in server.log

    server.stop()  # the gateway's shutdown stops the server it started
    until(lambda: not Path(f"/proc/{second}").exists()
          or "State:\tZ" in Path(f"/proc/{second}/status").read_text(), timeout=5)


def gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "State:\tZ" in status.read_text()


def test_with_several_workers_one_of_them_runs_the_server(tmp_path: Path, hosted_url: str) -> None:
    port = free_port()
    write_config(tmp_path / "gw", port, hosted_url)
    (tmp_path / "gw" / "loaded").touch()
    server = Server(tmp_path / "gw", "--workers", "2")
    try:
        server.wait_ready()
        until(lambda: {served_by(server, "local-first") for _ in range(6)} == {"gpu"})
        time.sleep(1.0)  # a second supervisor would have started (and failed) by now
        log = (tmp_path / "gw" / "vllm-gpu.log").read_text()
        assert log.count("--- aigw: starting") == 1, log
        assert metric(server, UP) == 1.0  # the answering worker's own view
        assert metric(server, 'aigw_vllm_server_restarts_total{deployment="gpu"}') in (None, 0.0)
        pid = httpx.get(f"http://127.0.0.1:{port}/fake/launch").json()["pid"]

        # A reload that stops running the server: it stops, and its series leave
        # /metrics in every worker (gauges in the workers' shared files never would).
        config = tmp_path / "gw" / "gateway.yaml"
        config.write_text(re.sub(r", serve: \{.*?\}\}\}", "}", config.read_text(), flags=re.S))
        server.signal(signal.SIGHUP)
        until(lambda: gone(pid), timeout=15)
        waiting = 'aigw_upstream_requests{deployment="gpu",state="waiting"}'
        until(lambda: all(metric(server, name) is None
                          for name in (UP, waiting) for _ in range(4)), timeout=15)
    finally:
        server.stop()


def _loaded_gateway(tmp_path: Path, hosted_url: str, port: int) -> Path:
    """tmp_path/gw, whose one deployment's (fake) vLLM server, on ``port``, loads at once."""
    write_config(tmp_path / "gw", port, hosted_url)
    (tmp_path / "gw" / "loaded").touch()
    return tmp_path / "gw"


def _served_up(server: Server, port: int) -> int:
    """Once ``server`` is up with its vLLM server (on ``port``): that server's pid."""
    server.wait_ready()
    until(lambda: metric(server, UP) == 1.0)
    pid: int = httpx.get(f"http://127.0.0.1:{port}/fake/launch").json()["pid"]
    return pid


def test_a_gateway_killed_outright_takes_its_server_with_it(
    tmp_path: Path, hosted_url: str,
) -> None:
    port = free_port()
    server = Server(_loaded_gateway(tmp_path, hosted_url, port))
    try:
        pid = _served_up(server, port)
    finally:
        server.kill()  # kill -9: no shutdown runs, the kernel sends the server SIGTERM
    until(lambda: gone(pid), timeout=10)


def test_a_gateway_with_workers_killed_outright_takes_its_workers_and_server_with_it(
    tmp_path: Path, hosted_url: str,
) -> None:
    """The workers served on as orphans, and the first kept its server."""
    port = free_port()
    server = Server(_loaded_gateway(tmp_path, hosted_url, port), "--workers", "2")
    workers: list[int] = []
    try:
        pid = _served_up(server, port)
        master = server.process.pid
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        workers += [int(child) for child in children
                    if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()]
        assert len(workers) == 2
    finally:
        server.kill()  # kill -9: the kernel sends each worker SIGTERM, and they stop
    try:
        until(lambda: all(gone(worker) for worker in workers) and gone(pid), timeout=15)
    finally:  # on failure, no orphans left to the next test
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGTERM)
