"""Redis namespaces a gateway left behind: said at start, and listed by ``aigw namespaces``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from ..redis_server import PrivateRedis
from .server import Server

pytestmark = pytest.mark.e2e


def _on_redis(gateway_dir: Path, url: str, namespace: str) -> None:
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace(
        "  store: embedded", f"  store: {url}\n  redis_namespace: {namespace}", 1))


def test_a_gateway_new_to_its_namespace_names_the_ones_left_with_keys(
    gateway_dir: Path, private_redis: PrivateRedis
) -> None:
    """A changed redis_namespace left the old one's keys (executions in flight, batches,
    spend) where nothing read them, without a word. A gateway records its namespace at
    start; the first start under a new one names the recorded namespaces holding keys,
    and ``aigw namespaces`` counts every prefix (one older than the record too)."""
    client = redis.Redis.from_url(private_redis.url, decode_responses=True)
    try:
        client.hset("aigw.namespaces", "before", json.dumps(
            {"started": 1_700_000_000.0, "root": "/etc/aigw", "host": "gw-1"}))
        client.set("before:wf:x:1:memo", "kept")
        client.set("before:ledger:1", "kept")
        client.set("legacy:wf:x:2:memo", "kept")  # a namespace from before the record
        _on_redis(gateway_dir, private_redis.url, "after")
        server = Server(gateway_dir)
        try:
            server.wait_ready()
            deadline = time.monotonic() + 15
            while "is new on this Redis" not in server.log:
                assert time.monotonic() < deadline, server.log
                time.sleep(0.1)
        finally:
            assert server.stop() == 0, server.log
        assert ("settings.redis_namespace 'after' is new on this Redis, which holds keys of "
                "other gateway namespaces: 'before' (2 keys; last started "
                "2023-11-14T22:13:20Z from /etc/aigw on gw-1)") in server.log
        assert "legacy" not in server.log  # unrecorded: maybe not aigw's at all
        assert json.loads(client.hget("aigw.namespaces", "after") or "")["root"] == str(
            gateway_dir)
        listed = subprocess.run([sys.executable, "-m", "aigw", "namespaces", str(gateway_dir)],
                                capture_output=True, text=True, timeout=60)
    finally:
        client.close()
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "KEYS", "LAST", "STARTED", "FROM"]
    assert lines[1].startswith("* after ") and lines[1].endswith(f"{gateway_dir} on "
                                                                 f"{socket.gethostname()}"), lines
    assert lines[2].split() == ["before", "2", "2023-11-14T22:13:20Z", "/etc/aigw", "on",
                                "gw-1"]
    assert lines[3].split()[:3] == ["legacy", "1", "-"]
    assert "not recorded" in lines[3]


def test_namespaces_of_a_gateway_on_the_embedded_store_says_there_are_none(
    gateway_dir: Path,
) -> None:
    listed = subprocess.run([sys.executable, "-m", "aigw", "namespaces", str(gateway_dir)],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 1
    assert listed.stderr == ("settings.store is 'embedded', not Redis: no namespaces "
                             "(pass --store URL)\n")
