"""A real ``aigw serve`` process driven by the official openai SDK: chat, stream, reload."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route

from aigw.runtime import server as server_module
from aigw.runtime.tokens import TokenCounter

from ..conftest import DEV_KEY, add_broken_route, metric_sample
from ..fakes.serve import serving
from .server import Server

pytestmark = pytest.mark.e2e

LONG_TEXT = " ".join(f"word{i}" for i in range(30))


def _client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=DEV_KEY, max_retries=0)


def _slow_echo(gateway_dir: Path) -> None:
    config = gateway_dir / "gateway.yaml"
    config.write_text(
        config.read_text().replace(
            "local: {type: echo}", "local: {type: echo, latency: {per_token_ms: 60}}"
        )
    )


def _add_route(gateway_dir: Path, name: str) -> None:
    config = gateway_dir / "gateway.yaml"
    config.write_text(
        config.read_text().replace(
            "  echo: {deployment: echo-small",
            f"  {name}: {{deployment: echo-large}}\n  echo: {{deployment: echo-small",
        )
    )


def test_openai_sdk_chat_and_stream(server: Server, counter: TokenCounter) -> None:
    client = _client(server)
    completion = client.chat.completions.create(
        model="fast", messages=[{"role": "user", "content": "Hello from the SDK"}]
    )
    assert completion.choices[0].message.content == "Hello from the SDK"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 4

    stream = client.chat.completions.create(
        model="smart",
        messages=[{"role": "user", "content": "streamed word by word"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "streamed word by word"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == counter.count("streamed word by word")
    assert [m.id for m in client.models.list()] == [
        "echo", "embed", "fast", "images", "moderation", "rerank", "smart", "speech",
        "transcribe"]
    assert client.models.retrieve("fast").id == "fast"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nope")


def test_responses_do_not_name_the_server_software(server: Server) -> None:
    response = httpx.get(f"{server.base_url}/health")
    assert response.status_code == 200
    assert "server" not in response.headers and "date" in response.headers


def test_sdk_sees_openai_errors(server: Server) -> None:
    client = _client(server)
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert not_found.value.code == "model_not_found"
    bad_key = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="sk-bad", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad_key.chat.completions.create(model="fast", messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize("trigger", ["sighup", "endpoint"])
def test_reload_while_a_stream_is_open(gateway_dir: Path, trigger: str) -> None:
    _slow_echo(gateway_dir)
    server = Server(gateway_dir)
    try:
        old = server.wait_ready()
        client = _client(server)
        with client.chat.completions.with_streaming_response.create(
            model="fast", messages=[{"role": "user", "content": LONG_TEXT}], stream=True
        ) as response:
            assert response.headers["x-aigw-graph"] == old
            chunks = response.parse()
            first = next(iter(chunks))
            assert first.choices[0].delta.role == "assistant"

            _add_route(gateway_dir, "after-reload")
            if trigger == "sighup":
                server.signal(signal.SIGHUP)
                deadline = time.monotonic() + 15
                while (new := httpx.get(f"{server.base_url}/health").json()["graph"]) == old:
                    assert time.monotonic() < deadline, server.log
                    time.sleep(0.05)
            else:
                reloaded = httpx.post(
                    f"{server.base_url}/admin/reload",
                    headers={"Authorization": f"Bearer {DEV_KEY}"},
                    timeout=30,
                )
                assert reloaded.status_code == 200, reloaded.text
                new = reloaded.json()["fingerprint"]
            assert new != old

            # New requests see the new graph while the old stream is still open.
            fresh = client.chat.completions.with_raw_response.create(
                model="after-reload", messages=[{"role": "user", "content": "hi"}]
            )
            assert fresh.headers["x-aigw-graph"] == new
            assert fresh.parse().choices[0].message.content == "hi"

            rest = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert rest == LONG_TEXT  # the open stream finished, on the graph it started with
    finally:
        server.stop()


def test_broken_config_on_reload_keeps_serving(server: Server, gateway_dir: Path) -> None:
    old = server.wait_ready()
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace("members: [echo-large]", "members: [echo-xl]"))
    server.signal(signal.SIGHUP)
    admin = {"Authorization": f"Bearer {DEV_KEY}"}
    deadline = time.monotonic() + 15
    while (status := httpx.get(f"{server.base_url}/admin/status", headers=admin).json())[
        "last_reload"
    ] is None:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.05)
    assert status["last_reload"]["ok"] is False
    errors = [d for d in status["last_reload"]["diagnostics"] if d["severity"] == "error"]
    assert [d["code"] for d in errors] == ["AGW302"]
    assert status["graph"]["fingerprint"] == old
    completion = _client(server).chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "still here"}]
    )
    assert completion.choices[0].message.content == "still here"
    assert "AGW302" in server.log


def test_watch_reloads_on_file_change(gateway_dir: Path) -> None:
    server = Server(gateway_dir, "--watch")
    try:
        old = server.wait_ready()
        time.sleep(0.5)  # let the watcher start
        _add_route(gateway_dir, "watched")
        deadline = time.monotonic() + 20
        while httpx.get(f"{server.base_url}/health").json()["graph"] == old:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.1)
        completion = _client(server).chat.completions.create(
            model="watched", messages=[{"role": "user", "content": "seen"}]
        )
        assert completion.choices[0].message.content == "seen"
    finally:
        server.stop()


def test_two_workers_serve_and_reload_on_sighup(gateway_dir: Path) -> None:
    server = Server(gateway_dir, "--workers", "2")
    try:
        server.wait_ready()
        # The shipped gateway is on the embedded store, whose limits are per process:
        # said once, by the first worker (the one that answered may be the other).
        deadline = time.monotonic() + 15
        while "each worker keeps its own rate limits" not in server.log:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.05)
        assert server.log.count("each worker keeps its own rate limits") == 1, server.log
        old = server.wait_ready()
        client = _client(server)
        for _ in range(6):
            assert (
                client.chat.completions.create(
                    model="echo", messages=[{"role": "user", "content": "w"}]
                )
                .choices[0]
                .message.content
                == "w"
            )
        _add_route(gateway_dir, "two")
        server.signal(signal.SIGHUP)
        time.sleep(1.0)
        graphs = {httpx.get(f"{server.base_url}/health").json()["graph"] for _ in range(20)}
        assert old not in graphs and len(graphs) == 1, server.log
    finally:
        assert server.stop() == 0, server.log


def _catches_sighup(pid: int) -> bool:
    """Whether the process has a handler for SIGHUP (its SigCgt mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGHUP - 1)))
    return False


def test_a_reload_asked_while_the_gateway_starts_does_not_stop_it(gateway_dir: Path) -> None:
    """SIGHUP's default ends a process, and aigw serve took seconds (importing its
    runtime, compiling) before it handled it: a reload asked then (systemctl reload,
    logrotate) ended the gateway. Now the command line notes one from its start, and
    the gateway reloads once it is up."""
    server = Server(gateway_dir)
    try:
        deadline = time.monotonic() + 20
        while not _catches_sighup(server.process.pid):
            assert time.monotonic() < deadline and server.process.poll() is None, server.log
            time.sleep(0.01)
        _add_route(gateway_dir, "two")
        server.signal(signal.SIGHUP)
        server.wait_ready()
        _until_every_answer_has_route(server, "two")  # its reload may follow its start
    finally:
        assert server.stop() == 0, server.log


def test_a_reload_asked_while_the_workers_start_does_not_stop_the_gateway(
    gateway_dir: Path,
) -> None:
    """A worker takes seconds to import and compile before it can reload; a SIGHUP
    meanwhile ended it (SIGHUP's default), and the master with it."""
    server = Server(gateway_dir, "--workers", "2")
    try:
        time.sleep(2.0)  # the master is up (its imports take about a second), the workers
        # are starting
        _add_route(gateway_dir, "two")
        server.signal(signal.SIGHUP)
        server.wait_ready()
        # Each worker serves the config as it is: compiled after the edit, or reloaded
        # once up (a reload that may still be under way as the first worker answers).
        _until_every_answer_has_route(server, "two")
    finally:
        assert server.stop() == 0, server.log


def _until_every_answer_has_route(server: Server, route: str) -> None:
    """Until ten answers in a row, each on a new connection (any worker), list ``route``."""
    deadline = time.monotonic() + 15
    in_a_row = 0
    while in_a_row < 10:
        assert time.monotonic() < deadline, server.log
        models = httpx.get(f"{server.base_url}/v1/models",
                           headers={"authorization": f"Bearer {DEV_KEY}"}).json()["data"]
        in_a_row = in_a_row + 1 if route in {model["id"] for model in models} else 0
        time.sleep(0.02 if in_a_row else 0.1)


@pytest.mark.parametrize("endpoint, trigger", [("/admin/reload", "admin-api"),
                                               ("/policies/reload", "policies-api")])
def test_an_admin_reload_with_two_workers_reloads_both(
    gateway_dir: Path, endpoint: str, trigger: str
) -> None:
    server = Server(gateway_dir, "--workers", "2")
    try:
        old = server.wait_ready()
        _add_route(gateway_dir, "two")
        answer = httpx.post(f"{server.base_url}{endpoint}",
                            headers={"authorization": f"Bearer {DEV_KEY}"}, timeout=30)
        assert answer.status_code == 200 and answer.json()["ok"], answer.text
        new = answer.json()["fingerprint"]
        # The worker that answered reloaded, then asked the master to SIGHUP the other.
        deadline = time.monotonic() + 15
        while server.log.count("reload (SIGHUP)") < 1:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.05)
        assert server.log.count(f"reload ({trigger})") == 1
        graphs = {httpx.get(f"{server.base_url}/health").json()["graph"] for _ in range(20)}
        assert graphs == {new} and new != old, server.log
        # One compile a worker: the one that answered was SIGHUPed too, and reloaded the
        # same files again (counted three times in all).
        time.sleep(1.5)
        assert server.log.count("reload (SIGHUP)") == 1, server.log
        metrics = httpx.get(f"{server.base_url}/metrics").text
        assert metric_sample(metrics, "aigw_config_reloads_total", outcome="ok") == 2.0
    finally:
        assert server.stop() == 0, server.log


def test_serve_refuses_a_broken_config_with_diagnostics(gateway_dir: Path) -> None:
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace("version: 1", "version: 7"))
    result = subprocess.run(
        [sys.executable, "-m", "aigw", "serve", str(gateway_dir), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "AGW206 error gateway.yaml:9:10" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_dev_key_on_a_public_address_warns_loudly(gateway_dir: Path) -> None:
    server = Server(gateway_dir, host="0.0.0.0")
    try:
        server.wait_ready()
        assert "development key sk-aigw-dev is accepted" in server.log
    finally:
        server.stop()
    quiet = Server(gateway_dir)
    try:
        quiet.wait_ready()
        assert "development key" not in quiet.log
    finally:
        quiet.stop()


def test_metrics_add_up_across_workers(gateway_dir: Path) -> None:
    """Whichever worker answers a scrape, the counters are every worker's and a key's
    expiry is there (read from that worker's graph, not from the shared files)."""
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace(
        "    admin: true\n", "    admin: true\n    expires: '2031-01-01'\n", 1))
    server = Server(gateway_dir, "--workers", "2")
    try:
        server.wait_ready()
        client = _client(server)
        for _ in range(10):  # new connections: both workers get some
            with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=DEV_KEY,
                               max_retries=0) as fresh:
                fresh.chat.completions.create(
                    model="echo", messages=[{"role": "user", "content": "m"}])
        del client
        texts = {httpx.get(f"{server.base_url}/metrics").text for _ in range(6)}
        for text in texts:  # whichever worker answers the scrape, the total is the same
            line = next(line for line in text.splitlines()
                        if line.startswith("aigw_requests_total{") and 'route="echo"' in line
                        and 'status="200"' in line)
            assert float(line.rsplit(" ", 1)[1]) == 10.0
            assert metric_sample(text, "aigw_key_expires_timestamp_seconds",
                                 key="dev") == 1924992000  # 2031-01-01T00:00:00Z
    finally:
        assert server.stop() == 0, server.log


def test_circuit_state_with_two_workers_is_each_workers_as_it_is_now(
    gateway_dir: Path,
) -> None:
    """A scrape is answered by one worker from the shared metric files; every worker's
    breakers are written there each second, so a circuit that has half-opened (by time,
    with no request since) shows so, whichever worker answers."""
    add_broken_route(gateway_dir, cooldown_s=4.0)
    server = Server(gateway_dir, "--workers", "2")
    try:
        server.wait_ready()
        for _ in range(12):  # new connections: both workers get some, and open the circuit
            httpx.post(f"{server.base_url}/v1/chat/completions",
                       headers={"authorization": f"Bearer {DEV_KEY}"}, timeout=30,
                       json={"model": "broken", "messages": [{"role": "user", "content": "x"}]})
        time.sleep(1.2)  # each worker has written its breakers since
        for _ in range(8):  # both workers answer scrapes while it is open
            assert _circuit_state(server, "broken") == 2.0
        time.sleep(5.0)  # past the cooldown, and a second for every worker to write again
        assert _circuit_state(server, "broken") == 1.0  # half-open: none is open now
    finally:
        assert server.stop() == 0, server.log


def _circuit_state(server: Server, deployment: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    line = next(line for line in text.splitlines()
                if line.startswith(f'aigw_circuit_state{{deployment="{deployment}"}}'))
    return float(line.rsplit(" ", 1)[1])


def _workers(server: Server) -> set[int]:
    """The master's child processes (its workers), from /proc."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    found = set()
    for pid in children.read_text().split():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # ended meanwhile
            continue
        # A worker runs spawn_main; multiprocessing's resource tracker is no worker.
        if b"spawn_main" in command and b"resource_tracker" not in command:
            found.add(int(pid))
    return found


def test_a_worker_that_dies_is_started_again(gateway_dir: Path) -> None:
    """A worker killed (OOM, a crash) left the gateway one worker short for good, and its
    last in-flight and circuit figures in /metrics."""
    server = Server(gateway_dir, "--workers", "2")
    try:
        server.wait_ready()
        time.sleep(server_module.RESPAWN_AFTER_UP_S + 0.5)  # up long enough to be respawned
        before = _workers(server)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while len(_workers(server) - before) < 1 or "starting another" not in server.log:
            assert time.monotonic() < deadline, (before, _workers(server), server.log)
            time.sleep(0.1)
        assert victim not in _workers(server) and len(_workers(server)) == 2
        for _ in range(6):  # new connections: both workers answer
            assert httpx.get(f"{server.base_url}/health").status_code == 200
    finally:
        assert server.stop() == 0, server.log


def test_a_replacement_worker_that_cannot_compile_leaves_the_others_serving(
    gateway_dir: Path,
) -> None:
    """A config a reload refused is still on disk; a worker that crashed then was
    replaced by one that compiled it, failed at once, and the master stopped the
    gateway, the graph every other worker was serving with it. Now the others serve
    on, and the slot is tried again until the files compile."""
    server = Server(gateway_dir, "--workers", "2")
    try:
        server.wait_ready()
        time.sleep(server_module.RESPAWN_AFTER_UP_S + 0.5)  # up long enough to be respawned
        good = (gateway_dir / "gateway.yaml").read_text()
        (gateway_dir / "gateway.yaml").write_text(good.replace("routes:", "routes: [", 1))
        before = _workers(server)
        os.kill(min(before), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "the others serve on" not in server.log:
            assert time.monotonic() < deadline and server.process.poll() is None, server.log
            time.sleep(0.1)
        for _ in range(6):
            assert httpx.get(f"{server.base_url}/health").status_code == 200
        (gateway_dir / "gateway.yaml").write_text(good)  # fixed: the slot fills again
        deadline = time.monotonic() + 30
        while len(_workers(server)) < 2:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.2)
    finally:
        assert server.stop() == 0, server.log


def test_metrics_of_an_earlier_run_do_not_count_into_this_one(
    gateway_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PROMETHEUS_MULTIPROC_DIR the environment names was used as it was: the last
    run's request counts (and circuits) showed in the new one."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    (tmp_path / "metrics").mkdir()

    def echo_requests(server: Server) -> float:
        text = httpx.get(f"{server.base_url}/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("aigw_requests_total{") and 'route="echo"' in line)

    for expected in (3.0, 3.0):  # the second run counts its own three only
        server = Server(gateway_dir, "--workers", "2")
        try:
            server.wait_ready()
            assert not list(server.tmp.glob("aigw-metrics-*"))  # the named one serves
            for _ in range(3):
                httpx.post(f"{server.base_url}/v1/chat/completions",
                           headers={"authorization": f"Bearer {DEV_KEY}"},
                           json={"model": "echo", "messages": [{"role": "user", "content": "m"}]})
            assert echo_requests(server) == expected
        finally:
            assert server.stop() == 0, server.log


def test_the_metrics_folder_made_for_workers_goes_however_the_master_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was removed only at a normal end: an exception left it in /tmp."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(RuntimeError), server_module.shared_metrics_dir() as folder:
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(folder)
        assert folder.parent == tmp_path and folder.is_dir()
        raise RuntimeError("the master failed")
    assert list(tmp_path.iterdir()) == []
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_no_metrics_folder_is_made_where_the_environment_names_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = tmp_path / "metrics"
    named.mkdir()
    (named / "counter_123.db").write_bytes(b"an earlier run's")
    (named / "notes.txt").write_text("not prometheus-client's")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(named))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with server_module.shared_metrics_dir() as folder:
        assert folder == named
        assert sorted(path.name for path in tmp_path.iterdir()) == ["metrics"]
        assert [path.name for path in named.iterdir()] == ["notes.txt"]
    assert named.is_dir() and os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(named)


def test_a_worker_killed_while_it_starts_stops_the_gateway_with_a_failure(
    gateway_dir: Path,
) -> None:
    """Not started again (it would fail again), and not an exit code of 0 that a
    supervisor takes for success (max() of -9 and 0 was 0)."""
    server = Server(gateway_dir, "--workers", "2")
    try:
        # Killed as soon as it is there, not once the gateway answers: on a loaded
        # machine that took longer than RESPAWN_AFTER_UP_S, and a worker up that long is
        # one that crashed, started again (the test then waited for an end never coming).
        deadline = time.monotonic() + 30
        while not (workers := _workers(server)):
            assert time.monotonic() < deadline and server.process.poll() is None, server.log
            time.sleep(0.01)
        os.kill(min(workers), signal.SIGKILL)
        assert server.process.wait(timeout=60) == 128 + signal.SIGKILL, server.log
        assert "stopping the gateway" in server.log
    finally:
        server.stop()


def _aigw(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aigw", *args], capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "AIGW_ADMIN_KEY": "k", **environ})


def test_serve_on_a_port_in_use_or_out_of_range_says_so_in_one_line(gateway_dir: Path) -> None:
    """A port in use was an OSError traceback, --port 99999 an OverflowError one."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            result = _aigw("serve", str(gateway_dir), "--port", str(port), "--workers", workers)
            assert result.returncode == 1, result.stderr
            assert f"aigw: cannot listen on 127.0.0.1:{port}: Address already in use\n" in (
                result.stderr)
            assert "Traceback" not in result.stderr
    result = _aigw("serve", str(gateway_dir), "--port", "99999")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "expected a port (0 to 65535), got '99999'" in result.stderr


def test_serve_refuses_the_retired_variable_that_moved_executions_alone(
    gateway_dir: Path, redis_url: str
) -> None:
    """AIGW_EXECUTIONS_NAMESPACE put the executions under another prefix than every
    other key, silently. It is no longer read: set to another namespace than
    settings.redis_namespace, the gateway does not start (what a previous run left there
    would be left unread) and says what to set; set to the same, it warns and serves."""
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace(
        "  store: embedded", f"  store: {redis_url}\n  redis_namespace: aigw-test-ns", 1))
    with socket.socket() as taken:  # where the check passes, serving stops at the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        moved = _aigw("serve", str(gateway_dir), "--port", port,
                      AIGW_EXECUTIONS_NAMESPACE="aigw-old")
        same = _aigw("serve", str(gateway_dir), "--port", port,
                     AIGW_EXECUTIONS_NAMESPACE="aigw-test-ns")
    assert moved.returncode == 1 and "Traceback" not in moved.stderr
    assert ("aigw: not serving: AIGW_EXECUTIONS_NAMESPACE='aigw-old' is no longer read: "
            "executions are kept under settings.redis_namespace ('aigw-test-ns') with every "
            "other key. Set settings.redis_namespace: aigw-old to serve the executions kept "
            "under 'aigw-old:wf:'") in moved.stderr
    assert "cannot listen" not in moved.stderr
    assert "AIGW_EXECUTIONS_NAMESPACE is set but no longer read" in same.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in same.stderr


def test_reload_against_something_that_is_no_gateway_says_so(gateway_dir: Path) -> None:
    """A server answering HTML was a JSONDecodeError traceback; a malformed URL an
    InvalidURL one."""
    page = Starlette(routes=[Route("/admin/reload", lambda _r: HTMLResponse("<h1>hi</h1>"),
                                   methods=["POST"]),
                             Route("/__ready", lambda _r: HTMLResponse("ok"))])
    with serving(page) as url:
        result = _aigw("reload", "--url", url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"{url} answered 200, not with JSON (is it an aigw gateway?): <h1>hi</h1>" in (
        result.stderr)
    result = _aigw("reload", "--url", "http://[::1")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot reach http://[::1: " in result.stderr


def test_a_body_that_trickles_in_gets_a_408_and_its_connection_closed(
    gateway_dir: Path,
) -> None:
    """Through hypercorn, whose read_timeout cannot be used (it also runs while a long
    answer is awaited): a client with a key that sent its body a byte every few seconds
    held the request, and the connection, for ever."""
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace(
        "  max_request_bytes: 4194304\n", "  max_request_bytes: 4194304\n"
        "  body_read_timeout_s: 1\n", 1))
    server = Server(gateway_dir)
    try:
        server.wait_ready()
        with socket.create_connection(("127.0.0.1", server.port), timeout=0.2) as sock:
            sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: aigw\r\n"
                         f"Authorization: Bearer {DEV_KEY}\r\nContent-Length: 1000\r\n"
                         "Content-Type: application/json\r\n\r\n{".encode())
            started, answer = time.monotonic(), b""
            while time.monotonic() - started < 10:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    sock.sendall(b" ")  # a byte every 0.2 s: never idle for long
                    continue
                if not chunk:
                    break  # closed
                answer += chunk
            elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b'"code":"request_timeout"' in answer.replace(b" ", b"")
        assert 0.9 < elapsed < 5, elapsed
        whole = _client(server).chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "still served"}])
        assert whole.choices[0].message.content == "still served"
    finally:
        server.stop()


def test_an_answer_given_before_the_body_was_read_leaves_no_connection_hanging(
    server: Server,
) -> None:
    """A 404 on the headers alone (no such conversation) to a 5 MB POST: hypercorn queues
    at most 10 parts of a body for the app, and once the answer was sent it put the
    disconnect behind them, which with the queue full never returned. The connection
    hung, and so did the next request a client (the SDKs keep connections) sent on it."""
    with httpx.Client(base_url=server.base_url, timeout=5.0,
                      headers={"authorization": f"Bearer {DEV_KEY}"}) as client:
        for _ in range(5):
            refused = client.post("/v1/conversations/conv_none/items",
                                  content=b"x" * (5 << 20),
                                  headers={"content-type": "application/json"})
            assert refused.status_code == 404, refused.text
            assert refused.headers["connection"] == "close"
            assert client.get("/health").status_code == 200
        # Answers to a body read whole and to a GET keep the connection alive. (A small
        # body answered on the headers alone may close it, or not: whether its end had
        # come when the answer went is the client's timing.)
        answered = client.post("/v1/chat/completions", json={
            "model": "fast", "messages": [{"role": "user", "content": "kept alive"}]})
        assert answered.status_code == 200
        refused = client.post("/v1/conversations/conv_none/items", json={"items": []})
        assert refused.status_code == 404
        for response in (answered, client.get("/health"), client.get("/v1/models")):
            assert "connection" not in response.headers, response.request.url


def test_an_answer_given_while_the_body_has_barely_begun_closes_the_connection(
    server: Server,
) -> None:
    """The answer (a 404 on the headers alone) goes while one part of a 5 MB body has
    come: the queue was then not half full, the connection was kept, and the rest of
    the body, sent after, filled hypercorn's queue and hung it. Decided by whether the
    body's end has come, not by how much of it waits now."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"POST /v1/conversations/conv_none/items HTTP/1.1\r\nHost: aigw\r\n"
                     f"Authorization: Bearer {DEV_KEY}\r\nContent-Length: {5 << 20}\r\n"
                     "Content-Type: application/json\r\n\r\n{".encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 404 "), head
        assert b"\r\nconnection: close" in head, head
        try:  # the rest of the body is read and dropped until the gateway closes
            for _ in range(5 << 4):
                sock.sendall(b"x" * (64 << 10))
        except (BrokenPipeError, ConnectionResetError):
            pass
    with httpx.Client(base_url=server.base_url, timeout=5.0) as client:
        assert client.get("/health").status_code == 200
