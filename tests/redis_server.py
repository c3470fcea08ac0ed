"""A redis-server of a test's own, on a free loopback port (the shared one is never touched)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A redis-server of this test's own on a free port, with no persistence."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; run ./scripts/redis")
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            for _ in range(100):
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        pytest.fail(f"the private redis-server on port {self.port} did not start")

    def start_on_same_port(self) -> None:
        """Start again where it was (after ``stop``), as a restarted Redis would."""
        self.start()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
REPO = Path(__file__).resolve().parent.parent


def pings(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def shared_redis_url() -> str:
    """The shared test Redis (``AIGW_TEST_REDIS_URL``, default db 15), started if needed."""
    url = os.environ.get("AIGW_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    if not pings(url) and url == DEFAULT_REDIS_URL:
        subprocess.run([REPO / "scripts" / "redis"], check=True)
    if not pings(url):
        pytest.fail(f"no Redis answers at {url}; run ./scripts/redis or set AIGW_TEST_REDIS_URL")
    return url
