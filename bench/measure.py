"""The two load generators bench/run.py drives, each run on the load core, as data.

Closed loop: ``wrk`` (Debian's package) at a fixed number of connections, for the most
a server can do. Open loop: ``bench/loadgen.py`` at a fixed rate, for latency and
time to first token (see its docstring for why wrk cannot do that part).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from targets import BENCH, DEV_KEY, LOAD_CORE, Server, pinned

WRK_SCRIPT = BENCH / "wrk_chat.lua"


@dataclass(frozen=True, slots=True)
class Throughput:
    """One closed-loop wrk run."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 1.0


@dataclass(frozen=True, slots=True)
class Rated:
    """One open-loop run at a fixed rate (loadgen.py's JSON, typed)."""

    rate: float
    sent: int
    errors: int
    achieved_rps: float
    sustained: bool
    latency_ms: dict[str, float]
    lag_ms: dict[str, float]
    ttft_ms: dict[str, float] | None


def ensure_wrk() -> str:
    """The wrk binary; installed from Debian's packages when missing and we are root."""
    found = shutil.which("wrk")
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed: apt-get update && apt-get install -y wrk")
    return found


def closed_loop(
    server: Server, seconds: float, connections: int = 32, stream_every: int = 0
) -> Throughput:
    """wrk with ``connections`` connections for ``seconds``; every ``stream_every``-th
    request streams (0: none)."""
    command = pinned(LOAD_CORE, [
        ensure_wrk(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "10s", "-s", str(WRK_SCRIPT), server.url,
        "--", server.model, DEV_KEY, str(stream_every),
    ])
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    summary = _last_json(completed.stdout)
    errors = sum(int(summary[k]) for k in summary if k.startswith("errors_"))
    return Throughput(
        requests=int(summary["requests"]),
        errors=errors,
        seconds=int(summary["duration_us"]) / 1e6,
        p50_ms=int(summary["p50_us"]) / 1000,
        p99_ms=int(summary["p99_us"]) / 1000,
    )


def open_loop(server: Server, rate: float, seconds: float, stream: bool = False) -> Rated:
    """loadgen.py at ``rate`` requests per second for ``seconds`` (plus 1 s unmeasured)."""
    command = pinned(LOAD_CORE, [
        sys.executable, str(BENCH / "loadgen.py"), "--url", server.url,
        "--model", server.model, "--key", DEV_KEY, "--rate", str(rate),
        "--duration", str(seconds), *(["--stream"] if stream else []),
    ])
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    result = _last_json(completed.stdout)
    return Rated(
        rate=float(result["rate"]),
        sent=int(result["sent"]),
        errors=int(result["errors"]),
        achieved_rps=float(result["achieved_rps"]),
        sustained=bool(result["sustained"]),
        latency_ms=result["latency_ms"],
        lag_ms=result["lag_ms"],
        ttft_ms=result["ttft_ms"],
    )


def _last_json(output: str) -> dict[str, Any]:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            document: dict[str, Any] = json.loads(line)
            return document
    raise RuntimeError(f"no JSON summary in the load generator's output:\n{output[-2000:]}")
