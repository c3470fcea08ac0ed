"""The vLLM servers ``aigw serve`` runs for ``serve:`` blocks: started with the command
line the compiler built, restarted when they die, hang or never come up, kept in step
with reloads, and stopped with their whole process group. The servers are real
processes: tests/fakes/vllm_fake.py run as the ``vllm serve`` command."""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from aigw.compiler import compile_gateway
from aigw.compiler.graph import Graph
from aigw.runtime.routing.state import NOT_UP_YET, RoutingState
from aigw.runtime.vllm_serve import ServedFleet, ServerState, Timings

from ..fakes.serve import free_port, serving

FAKE = Path(__file__).resolve().parents[1] / "fakes" / "vllm_fake.py"
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
# Short enough for a test, long enough for a fake to start between checks.
QUICK = Timings(liveness=0.1, startup_poll=0.1, stop_timeout=5.0, first_backoff=0.2,
                max_backoff=0.8)


def compiled(root: Path, port: int, serve: str = "", environ: dict[str, str] | None = None,
             served: bool = True) -> Graph:
    """A graph whose deployment 'llama' is served by the fake; ``serve``: more fields."""
    root.mkdir(parents=True, exist_ok=True)
    fields = ", ".join(filter(None, [f'command: ["{sys.executable}", "{FAKE}", serve]', serve]))
    block = f", serve: {{{fields}}}" if served else ""
    (root / "gateway.yaml").write_text(
        "version: 1\n"
        "providers:\n"
        f'  box: {{type: vllm, base_url: "http://127.0.0.1:{port}/v1", '
        'api_key: "${BOX_KEY}"}\n'
        "deployments:\n"
        f"  llama: {{provider: box, model: {MODEL}, context_window: 8192{block}}}\n"
        "routes:\n"
        "  llama: {deployment: llama}\n")
    result = compile_gateway(root, {"BOX_KEY": "sk-box-key", **(environ or {})})
    assert result.graph is not None, [d.message for d in result.diagnostics]
    return result.graph


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


def alive(pid: int) -> bool:
    # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


async def launch(port: int) -> dict[str, object]:
    async with httpx.AsyncClient() as client:
        info: dict[str, object] = (await client.get(f"http://127.0.0.1:{port}/fake/launch")).json()
        return info


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[ServedFleet, list[str]]]:
    restarted: list[str] = []
    served = ServedFleet(tmp_path, restarted.append, QUICK)
    yield served, restarted
    await served.aclose()


def state(fleet: ServedFleet) -> ServerState | None:
    statuses = fleet.status()
    return statuses[0].state if statuses else None


async def up(served: ServedFleet, root: Path) -> tuple[int, int]:
    """Serve the fake for deployment 'llama' until it is up: its port and pid."""
    port = free_port()
    await served.apply(compiled(root, port))
    await until(lambda: state(served) is ServerState.UP)
    pid = served.status()[0].pid
    assert pid is not None
    return port, pid


async def test_a_served_deployment_runs_with_the_compiled_command_line_and_stops_with_its_group(
    tmp_path: Path, fleet: tuple[ServedFleet, list[str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    served, restarted = fleet
    monkeypatch.setenv("FAKE_VLLM_ENGINE", "1")
    # The gateway's own: not for the server (with --workers the metrics folder is set).
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    monkeypatch.setenv("VLLM_API_KEY", "a-key-the-provider-did-not-declare")
    port = free_port()
    graph = compiled(tmp_path / "gw", port, "gpus: [2, 3], tensor_parallel_size: 2, "
                     "gpu_memory_utilization: 0.75, args: [--enable-prefix-caching], "
                     'env: {HF_TOKEN: "${HF}"}', {"HF": "hf-secret"})
    await served.apply(graph)
    await until(lambda: state(served) is ServerState.UP)
    started = await launch(port)
    assert started["argv"] == [
        "serve", MODEL, "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", MODEL, "--gpu-memory-utilization", "0.75",
        "--tensor-parallel-size", "2", "--max-model-len", "8192", "--enable-prefix-caching"]
    # The provider's key guards the server, and goes by environment, not command line.
    assert started["env"] == {"CUDA_VISIBLE_DEVICES": "2,3", "VLLM_API_KEY": "sk-box-key",
                              "HF_TOKEN": "hf-secret", "PROMETHEUS_MULTIPROC_DIR": None}
    status = served.status()[0]
    assert (status.deployment, status.pid, status.restarts) == ("llama", started["pid"], 0)
    log_text = (tmp_path / "vllm-llama.log").read_text()
    assert "fake vLLM: serving" in log_text and "hf-secret" not in log_text

    await served.aclose()  # the gateway stops: the server and its engine child go too
    engine = started["engine_pid"]
    assert isinstance(engine, int)
    assert not alive(int(str(started["pid"]))) and not alive(engine)
    assert restarted == []


async def test_a_server_that_dies_is_started_again(
    tmp_path: Path, fleet: tuple[ServedFleet, list[str]],
) -> None:
    served, restarted = fleet
    _port, first = await up(served, tmp_path / "gw")
    os.kill(first, 9)  # the OOM killer, say
    await until(lambda: state(served) is ServerState.RESTARTING)
    await until(lambda: state(served) is ServerState.UP)
    status = served.status()[0]
    assert status.pid != first and status.restarts == 1
    assert status.last_exit == "exited with code -9"
    assert restarted == ["llama"]


async def test_a_server_whose_health_fails_is_restarted(
    tmp_path: Path, fleet: tuple[ServedFleet, list[str]],
) -> None:
    served, restarted = fleet
    port, first = await up(served, tmp_path / "gw")
    async with httpx.AsyncClient() as client:  # the engine died; the API process lives on
        await client.post(f"http://127.0.0.1:{port}/fake/sick")
    await until(lambda: served.status()[0].restarts == 1)
    assert served.status()[0].last_exit == (
        f"failed 3 health checks in a row at http://127.0.0.1:{port}/health")
    await until(lambda: state(served) is ServerState.UP)
    assert served.status()[0].pid != first and restarted == ["llama"]
    assert not alive(first)


async def test_a_server_that_never_comes_up_is_restarted_after_its_startup_timeout(
    tmp_path: Path, fleet: tuple[ServedFleet, list[str]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_VLLM_LOAD_S", "60")
    served, _ = fleet
    await served.apply(compiled(tmp_path / "gw", free_port(), "startup_timeout_s: 0.5"))
    assert state(served) is ServerState.STARTING
    await until(lambda: served.status()[0].restarts == 1)
    assert served.status()[0].last_exit == "was not up after 0.5 s (startup_timeout_s)"


async def test_a_command_that_cannot_run_is_retried_with_a_doubling_backoff(
    tmp_path: Path,
) -> None:
    restarted_at: list[float] = []
    served = ServedFleet(tmp_path, lambda _name: restarted_at.append(time.monotonic()), QUICK)
    root = tmp_path / "gw"
    compiled(root, free_port())
    text = (root / "gateway.yaml").read_text()
    (root / "gateway.yaml").write_text(text.replace(f'"{sys.executable}", "{FAKE}", serve',
                                                    "/nonexistent/vllm, serve"))
    graph = compile_gateway(root, {"BOX_KEY": "k"}).graph
    assert graph is not None
    try:
        await served.apply(graph)
        await until(lambda: len(restarted_at) == 1)
        status = served.status()[0]
        assert status.state is ServerState.RESTARTING and status.pid is None
        assert status.last_exit == ("could not be started: there is no /nonexistent/vllm "
                                    "(pip install 'aigw[vllm]', or set serve.command)")
        assert "cannot start it" in (tmp_path / "vllm-llama.log").read_text()
        await until(lambda: len(restarted_at) >= 5)
    finally:
        await served.aclose()
    gaps = [later - earlier for earlier, later in itertools.pairwise(restarted_at)][:4]
    # Each wait is at least its backoff: 0.2 s, doubling, at most 0.8 s (sleeps never
    # end early, so only lower bounds: the machine may be slower, never faster).
    assert all(gap >= wanted for gap, wanted in zip(gaps, [0.2, 0.4, 0.8, 0.8], strict=True))


async def test_a_port_another_process_listens_on_is_not_taken_for_the_server(
    tmp_path: Path, fleet: tuple[ServedFleet, list[str]],
) -> None:
    """A stale server on the port answered the health checks: the supervisor said "up",
    its own server failed to bind and was restarted forever, requests went to the
    stranger."""
    served, restarted = fleet
    stranger = Starlette(routes=[Route("/health", lambda _request: PlainTextResponse("ok"))])
    with serving(stranger, ready_path="/health") as url:
        port = int(url.rsplit(":", 1)[1])
        await served.apply(compiled(tmp_path / "gw", port))
        await until(lambda: len(restarted) >= 2)
        status = served.status()[0]
        assert status.state is not ServerState.UP and status.pid is None
        assert status.last_exit == f"was not started: port {port} is in use by another process"
        log_text = (tmp_path / "vllm-llama.log").read_text()
        assert "fake vLLM" not in log_text and "port " + str(port) + " is in use" in log_text
    # The port is free again: the server starts and comes up.
    await until(lambda: state(served) is ServerState.UP)
    assert served.status()[0].pid is not None


async def test_supervision_outlives_a_log_it_cannot_write(tmp_path: Path) -> None:
    restarted: list[str] = []
    served = ServedFleet(tmp_path / "no-such-folder", restarted.append, QUICK)
    try:
        await served.apply(compiled(tmp_path / "gw", free_port()))
        await until(lambda: len(restarted) >= 2)  # retried, not given up
        status = served.status()[0]
        assert status.last_exit is not None and status.last_exit.startswith("could not be run")
    finally:
        await served.aclose()
    assert served.status() == []


def test_a_reload_that_makes_a_deployment_served_routes_around_it_until_it_answers(
    tmp_path: Path,
) -> None:
    port = free_port()
    state = RoutingState()
    state.sync(compiled(tmp_path / "gw", port, served=False))
    assert state.stats["llama"].server_down is None  # not aigw's: its answers judge it
    state.sync(compiled(tmp_path / "gw", port))
    assert state.stats["llama"].server_down == NOT_UP_YET
    state.stats["llama"].server_down = None  # it answered
    state.sync(compiled(tmp_path / "gw", port, "gpu_memory_utilization: 0.5"))
    assert state.stats["llama"].server_down == NOT_UP_YET  # restarted with new flags
    state.sync(compiled(tmp_path / "gw", port, served=False))
    assert state.stats["llama"].server_down is None


async def test_reloads_restart_a_changed_server_keep_an_unchanged_one_and_stop_a_removed_one(
    tmp_path: Path, fleet: tuple[ServedFleet, list[str]],
) -> None:
    served, restarted = fleet
    port, first = await up(served, tmp_path / "gw")
    await served.apply(compiled(tmp_path / "gw", port))  # the same serve: block
    assert served.status()[0].pid == first

    await served.apply(compiled(tmp_path / "gw", port, "gpu_memory_utilization: 0.5"))
    await until(lambda: state(served) is ServerState.UP)
    second = served.status()[0].pid
    assert second != first and not alive(first)
    assert "0.5" in (await launch(port))["argv"]  # type: ignore[operator]

    await served.apply(compiled(tmp_path / "gw", port, served=False))
    assert served.status() == [] and second is not None and not alive(second)
    assert restarted == []  # stopped on purpose: not restarts
