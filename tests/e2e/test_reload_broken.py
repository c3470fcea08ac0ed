"""A config broken in ways that crashed the compiler, reloaded into a real ``aigw serve``:
the old graph keeps serving and the log names the problem at file:line:col."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from .server import Server

pytestmark = pytest.mark.e2e

ADMIN = {"Authorization": f"Bearer {DEV_KEY}"}


def _failed_reload(server: Server) -> dict[str, Any]:
    """/admin/status once a reload has been tried; it must have failed."""
    deadline = time.monotonic() + 30
    while (status := httpx.get(f"{server.base_url}/admin/status", headers=ADMIN,
                               timeout=10).json())["last_reload"] is None:
        assert server.process.poll() is None, server.log
        assert time.monotonic() < deadline, server.log
        time.sleep(0.1)
    assert status["last_reload"]["ok"] is False, status
    return status


def _still_serves(server: Server, fingerprint: str, status: dict[str, Any]) -> None:
    assert status["graph"]["fingerprint"] == fingerprint
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=DEV_KEY, max_retries=0)
    answer = client.chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "still here"}])
    assert answer.choices[0].message.content == "still here"
    assert "Traceback" not in server.log, server.log


def _positions(status: dict[str, Any]) -> list[tuple[str, str]]:
    return [(item["code"], f"{item['file']}:{item['line']}:{item['column']}")
            for item in status["last_reload"]["diagnostics"] if item["severity"] == "error"]


def test_a_yaml_value_the_loader_could_not_build_is_logged_at_its_place(
    gateway_dir: Path,
) -> None:
    """``!!bool maybe`` made ruamel raise a KeyError: an internal error at 1:1 (AGW901)."""
    server = Server(gateway_dir, "--watch")
    try:
        old = server.wait_ready()
        time.sleep(0.5)  # let the watcher start
        config = gateway_dir / "gateway.yaml"
        text = config.read_text()
        line = text[: text.index("context_window: 131072")].count("\n") + 1
        config.write_text(text.replace("context_window: 131072", "context_window: !!bool maybe"))
        status = _failed_reload(server)
        assert _positions(status) == [("AGW101", f"gateway.yaml:{line}:21")]
        assert re.search(rf"AGW101 gateway\.yaml:{line}:21 \"maybe\" cannot be read as !!bool",
                         server.log), server.log
        _still_serves(server, old, status)
    finally:
        server.stop()


def test_a_policy_that_overflowed_cedars_parser_is_logged_at_its_place(
    gateway_dir: Path,
) -> None:
    """20,000 operators in one policy overflowed cedarpy's parser's stack: the worker
    died of SIGSEGV on the reload, and with it the gateway."""
    server = Server(gateway_dir)
    try:
        old = server.wait_ready()
        condition = " && ".join(["context.stream"] * 20_000)
        (gateway_dir / "policies" / "long.cedar").write_text(
            f'@id("long")\npermit(principal, action, resource) when {{ {condition} }};\n')
        server.signal(signal.SIGHUP)
        status = _failed_reload(server)
        assert _positions(status) == [("AGW401", "policies/long.cedar:2:1851")]
        assert "AGW401 policies/long.cedar:2:1851 Cedar policy has more than 200 operators" \
            in server.log, server.log
        _still_serves(server, old, status)
    finally:
        server.stop()
