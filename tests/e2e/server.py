"""Start and stop a real ``aigw serve`` process on a free loopback port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai

from ..conftest import DEV_KEY
from ..providers.conftest import dev_key_line


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One ``python -m aigw serve`` process; its output goes to a log file the test can read."""

    def __init__(
        self, root: Path, *args: str, host: str = "127.0.0.1", port: int | None = None
    ) -> None:
        self.root = root
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = root.parent / f"serve-{self.port}.log"
        self._log = self.log_path.open("wb")
        # Its temporary files (a --workers master's metrics folder) in a folder of its
        # own, removed when it is stopped or killed: one killed with -9 cannot remove
        # them itself, and they piled up in /tmp.
        self.tmp = root.parent / f"tmp-{self.port}"
        self.tmp.mkdir(exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(self.tmp)}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aigw",
                "serve",
                str(root),
                "--host",
                host,
                "--port",
                str(self.port),
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_ready(self, timeout: float = 60.0) -> str:
        """Wait for /health; returns the fingerprint of the graph being served. The wait
        is long for a loaded machine (several workers each compiling the config)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"aigw serve exited with {self.process.returncode}:\n{self.log}")
            try:
                response = httpx.get(f"{self.base_url}/health", timeout=1.0)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if response.status_code == 200:
                fingerprint: str = response.json()["graph"]
                return fingerprint
        raise TimeoutError(f"aigw serve did not become ready:\n{self.log}")

    def wait_for_graph(self, fingerprint: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(f"{self.base_url}/health", timeout=2.0).json()["graph"] == fingerprint:
                return
            time.sleep(0.05)
        raise TimeoutError(f"graph {fingerprint[:12]} never served:\n{self.log}")

    def access_line(self, request_id: str) -> dict[str, Any] | None:
        """The access log's line (JSON, in the process's output) of one request."""
        for text in self.log.splitlines():
            if text.startswith("{") and f'"{request_id}"' in text:
                line: dict[str, Any] = json.loads(text)
                return line
        return None

    def written_access_line(self, request_id: str, wait_s: float = 10.0) -> dict[str, Any]:
        """The access line of ``request_id`` once it is written (a stream's when it
        ends), waiting ``wait_s`` at most."""
        deadline = time.monotonic() + wait_s
        while (line := self.access_line(request_id)) is None:
            assert time.monotonic() < deadline, self.log
            time.sleep(0.05)
        return line

    def ledger_rows(self, count: int, wait_s: float = 10.0) -> list[dict[str, Any]]:
        """The ledger's records (status, estimated, cost, latency_ms, tokens_in,
        tokens_out, tokens_audio_in, tokens_audio_out), the request's before
        those of the calls it cut short, once it holds ``count`` of them or ``wait_s``
        passed (a request a client left is written as its calls are cut)."""
        deadline = time.monotonic() + wait_s
        while True:
            with sqlite3.connect(self.root / "aigw.sqlite") as ledger:
                ledger.row_factory = sqlite3.Row
                rows = [dict(row) for row in ledger.execute(
                    "SELECT status, estimated, cost_nanos / 1e9 AS cost, latency_ms, "
                    "tokens_in, tokens_out, tokens_audio_in, tokens_audio_out FROM ledger "
                    "ORDER BY estimated, at")]
            ledger.close()
            if len(rows) >= count or time.monotonic() >= deadline:
                return rows
            time.sleep(0.05)

    def ledger_row(self, request_id: str, wait_s: float = 0.0) -> dict[str, Any]:
        """The spend ledger's record of one request (the embedded store's SQLite file):
        route, deployment, status, tokens_in, tokens_out (and of them tokens_audio_in,
        tokens_audio_out) and cost. ``wait_s``: how long
        to wait for it (a stream's is written as it ends, after its last byte went out)."""
        deadline = time.monotonic() + wait_s
        while True:
            with sqlite3.connect(self.root / "aigw.sqlite") as ledger:
                ledger.row_factory = sqlite3.Row
                row = ledger.execute(
                    "SELECT route, deployment, status, tokens_in, tokens_out, "
                    "tokens_audio_in, tokens_audio_out, "
                    "cost_nanos / 1e9 AS cost FROM ledger WHERE request_id = ?",
                    (request_id,)).fetchone()
            ledger.close()
            if row is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        assert row is not None, f"no ledger record of {request_id}"
        return dict(row)

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    @property
    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: no shutdown, no flush, nothing graceful."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=15)
        self._log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def stop(self) -> int:
        if self._log.closed:
            return self.process.returncode
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return self.process.returncode


@contextmanager
def running(root: Path) -> Iterator[Server]:
    """A real ``aigw serve`` of ``root``, once it answers /health; stopped at the end."""
    server = Server(root)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@contextmanager
def sdk_gateway(root: Path, sections: str, dev: str = "",
                keys: str = "") -> Iterator[tuple[openai.OpenAI, Server]]:
    """``sections`` (the YAML after ``version: 1``; the admin dev key is added, with
    ``dev``: more of its entry, a budget say, and ``keys``: more keys' lines) served from
    ``root`` by a real ``aigw serve``, and the official openai SDK pointed at it (no
    retries of its own); stopped at the end."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "gateway.yaml").write_text("version: 1\n" + sections + dev_key_line(dev, keys))
    with running(root) as server, openai.OpenAI(
            base_url=f"{server.base_url}/v1", api_key=DEV_KEY, max_retries=0) as client:
        yield client, server


def answered_both_ways(client: openai.OpenAI, model: str,
                       messages: list[Any]) -> list[tuple[str, str | None]]:
    """The deployment that served ``messages`` and the answer's text, asked for whole and
    then streamed through the openai SDK."""
    answers = []
    whole = client.chat.completions.with_raw_response.create(model=model, messages=messages)
    answers.append((whole.headers["x-aigw-deployment"],
                    whole.parse().choices[0].message.content))
    streamed = client.chat.completions.with_raw_response.create(model=model, messages=messages,
                                                                stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed.parse()
                   if chunk.choices)
    answers.append((streamed.headers["x-aigw-deployment"], text))
    return answers
