"""The servers bench/run.py measures: how each is configured, started, pinned and stopped.

Every server runs as its own process group, pinned with ``taskset`` (the server under
test on one core, the upstream and the load on the other), and is stopped by its own
process id. Resident memory is read from ``/proc``, summed over the server's process
tree so that a server with helper processes is not flattered.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
LITELLM_VERSION = "1.106.2"
LITELLM_VENV = BENCH / ".venv-litellm"
DEV_KEY = "sk-aigw-dev"
DEV_KEY_SHA256 = "2f0527c3d35a1f337ec6033b75e33c053e72e7122963d86dffe7c2f10bcbb482"
SERVER_CORE = "0"
LOAD_CORE = "1"


def free_port() -> int:
    """A loopback port nobody listens on now (others' test servers share this machine)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def can_pin() -> bool:
    return shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2


def pinned(core: str, command: Sequence[str]) -> list[str]:
    """``command`` on one core; ``taskset`` execs it, so the process id stays the server's."""
    return ["taskset", "-c", core, *command] if can_pin() else list(command)


@dataclass
class Server:
    """A started server: its process, where it answers, and its log."""

    name: str
    process: subprocess.Popen[bytes]
    url: str  # the chat completions URL
    model: str  # the model name to send
    log_path: Path

    @property
    def port(self) -> int:
        """The port it listens on (its URL is http://127.0.0.1:PORT/...)."""
        return int(self.url.split(":")[2].split("/")[0])

    def rss_mib(self) -> float:
        """Resident memory of the process and its descendants, in MiB, from /proc."""
        total_kib = sum(_rss_kib(pid) for pid in _tree(self.process.pid))
        return round(total_kib / 1024, 1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def start(
    name: str,
    command: Sequence[str],
    *,
    url: str,
    model: str,
    health: str,
    log_dir: Path,
    env: dict[str, str] | None = None,
    startup_timeout: float = 180.0,
) -> Server:
    """Start ``command`` and wait (bounded) until ``health`` answers 200."""
    log_path = log_dir / f"{name}.log"
    log: IO[bytes] = log_path.open("wb")
    process = subprocess.Popen(
        list(command),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=log_dir,
        start_new_session=True,  # a Ctrl-C reaches run.py only, which stops each server
    )
    log.close()
    server = Server(name, process, url, model, log_path)
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(health, timeout=2) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"{name} did not answer {health} within {startup_timeout:.0f} s")


def start_upstream(log_dir: Path, delay_ms: float, tokens: int, interval_ms: float,
                   core: str = LOAD_CORE, name: str = "upstream") -> Server:
    """bench/upstream.py. By default it shares the load generator's core: the server
    under test gets one core to itself, and the machine has only two."""
    port = free_port()
    command = [sys.executable, str(BENCH / "upstream.py"), "--port", str(port),
               "--delay-ms", str(delay_ms), "--tokens", str(tokens),
               "--token-interval-ms", str(interval_ms)]
    return start(name, pinned(core, command),
                 url=f"http://127.0.0.1:{port}/v1/chat/completions", model="bench-model",
                 health=f"http://127.0.0.1:{port}/health", log_dir=log_dir)


def aigw_config(upstream_port: int, lean: bool = False, cache: bool = False) -> str:
    """A gateway directory's gateway.yaml.

    By default every request-path stage is on: the key is authenticated, its rpm/tpm and
    its team's rpm/tpm and monthly budget are reserved and settled, the deployment is
    priced (cost, spend ledger), and, with the shipped policies beside it
    (``start_aigw``), Cedar decides invoke and route. The limits are far above what the
    benchmark sends, so they are checked and never bind. ``lean`` is LiteLLM's
    equivalent (``litellm_config``): one key, one route, no limits, budget or policies.
    ``cache`` puts the route's response cache on (bench/cache_hits.py).
    """
    if lean:
        team, key_limits = "  default: {}\n", ""
    else:
        team = ("  default:\n"
                "    budget: {amount: 1000000, period: month}\n"
                "    limits: {rpm: 100000000, tpm: 1000000000}\n")
        key_limits = "    limits: {rpm: 100000000, tpm: 1000000000}\n"
    return f"""version: 1
providers:
  upstream: {{type: openai_compatible, base_url: "http://127.0.0.1:{upstream_port}/v1"}}
deployments:
  bench-model:
    provider: upstream
    model: bench-model
    context_window: 128000
    max_output_tokens: 256
    price: {{input: 0.15, output: 0.60}}
    capabilities: [streaming]
routes:
  bench: {{deployment: bench-model{", cache: {ttl_s: 3600}" if cache else ""}}}
teams:
{team}keys:
  dev:
    team: default
    sha256: {DEV_KEY_SHA256}
{key_limits}"""


def start_aigw(
    log_dir: Path,
    upstream_port: int,
    lean: bool = False,
    launcher: Sequence[str] = (sys.executable, "-m", "aigw"),
    env: dict[str, str] | None = None,
    cache: bool = False,
) -> Server:
    """``launcher serve DIR --port N``: ``python -m aigw`` unless a benchmark wraps it."""
    name = ("aigw-lean" if lean else "aigw") + ("-cached" if cache else "")
    root = log_dir / f"{name}-gateway"
    root.mkdir(exist_ok=True)
    (root / "gateway.yaml").write_text(aigw_config(upstream_port, lean, cache))
    if not lean:  # the policies aigw ships with: an invoke permit, a route permit and
        # the three routing policies that read live latency, error rate, SLA and budget
        shutil.copytree(REPO / "policies", root / "policies", dirs_exist_ok=True)
    port = free_port()
    command = [*launcher, "serve", str(root), "--port", str(port)]
    return start(name, pinned(SERVER_CORE, command),
                 url=f"http://127.0.0.1:{port}/v1/chat/completions", model="bench",
                 health=f"http://127.0.0.1:{port}/health", log_dir=log_dir, env=env)


def litellm_config(upstream_port: int) -> str:
    """LiteLLM's equivalent: one model_list entry on the upstream, the same key as master."""
    return f"""model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench-model
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: sk-upstream-unused
general_settings:
  master_key: {DEV_KEY}
"""


def ensure_litellm() -> Path:
    """LiteLLM's ``litellm`` command, installed into its own venv on first use."""
    command = LITELLM_VENV / "bin" / "litellm"
    if command.exists():
        return command
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run(
        [str(LITELLM_VENV / "bin" / "pip"), "install", "--quiet",
         f"litellm[proxy]=={LITELLM_VERSION}"],
        check=True,
    )
    return command


def start_litellm(log_dir: Path, upstream_port: int) -> Server:
    command = ensure_litellm()
    config = log_dir / "litellm.yaml"
    config.write_text(litellm_config(upstream_port))
    port = free_port()
    env = {
        # The proxy would otherwise fetch its price map from the internet at start-up.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        # Its documented switch for uvicorn's log level: no access line per request,
        # as aigw writes none to the terminal either.
        "LITELLM_LOG": "ERROR",
    }
    argv = [str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1"]
    return start("litellm", pinned(SERVER_CORE, argv),
                 url=f"http://127.0.0.1:{port}/v1/chat/completions", model="bench",
                 health=f"http://127.0.0.1:{port}/health/liveliness", log_dir=log_dir, env=env)


def start_floor(log_dir: Path, upstream_port: int, client: str) -> Server:
    port = free_port()
    command = [sys.executable, str(BENCH / "floor.py"), "--upstream",
               f"http://127.0.0.1:{upstream_port}", "--client", client, "--port", str(port)]
    return start(f"floor-{client}", pinned(SERVER_CORE, command),
                 url=f"http://127.0.0.1:{port}/v1/chat/completions", model="bench-model",
                 health=f"http://127.0.0.1:{port}/health", log_dir=log_dir)


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the task ended while we looked
            continue
        for child in children:
            pids.extend(_tree(int(child)))
    return pids


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:  # the process ended while we looked
        return 0
    return 0
