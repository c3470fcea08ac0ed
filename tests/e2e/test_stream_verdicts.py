"""A real ``aigw serve``: a stream's verdict on its deployment's circuit is given at its
end, and a client that leaves a streamed half-open probe gives the probe back (no
verdict), so the circuit is not left half-open, refusing everyone, until a restart."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from .server import sdk_gateway

pytestmark = pytest.mark.e2e


def _on(base_url: str, deployment: str = "", rest: str = "routes:\n  r: {deployment: a}\n"
        ) -> str:
    """Deployment ``a`` (gpt-4o; ``deployment``: more of its flow mapping) on the OpenAI
    fake at ``base_url``, then ``rest`` (groups, routes, settings)."""
    return ("providers:\n"
            f'  up: {{type: openai, base_url: "{base_url}/v1", '
            'api_key: "${FAKE_OPENAI_KEY}"}\n'
            "deployments:\n"
            f"  a: {{provider: up, model: gpt-4o, context_window: 8000{deployment}}}\n" + rest)


def _circuit(base_url: str) -> str:
    status = httpx.get(f"{base_url}/admin/status",
                       headers={"Authorization": f"Bearer {DEV_KEY}"}).json()
    circuit: str = status["deployments"]["a"]["circuit"]
    return circuit


def test_a_client_leaving_a_streamed_probe_gives_the_probe_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = OpenAIFake(name="a")
    monkeypatch.setenv("FAKE_OPENAI_KEY", fake.api_key)
    fake.script.actions += [Action(status=500), Action(stall_after=2, stall_s=5.0)]
    with serving(fake.app) as base_url, sdk_gateway(tmp_path / "gw", _on(
        base_url, ", capabilities: [streaming]",
        "groups:\n"
        "  g: {members: [a], retry: {attempts: 0}}\n"
        "routes:\n"
        "  r: {group: g}\n"
        "settings:\n"
        "  circuit_breaker: {consecutive_failures: 1, cooldown_s: 0.3}\n"
    )) as (client, server):
        said: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(model="r", messages=said)
        assert _circuit(server.base_url) == "open"
        time.sleep(0.35)
        probe = client.chat.completions.create(model="r", messages=said, stream=True)
        next(iter(probe))  # its first chunk came; then the upstream stalls
        assert _circuit(server.base_url) == "half_open"  # the probe's verdict is not in yet
        probe.close()  # the client leaves: no verdict, and the probe's place is free again
        answer = None
        for _ in range(50):
            try:
                answer = client.chat.completions.create(model="r", messages=said)
                break
            except openai.APIStatusError as refused:  # until the gateway sees it gone
                assert refused.status_code == 503
                time.sleep(0.05)
        assert answer is not None, "the probe's place was never given back"
        assert answer.choices[0].message.content == "a: hello there"
        assert _circuit(server.base_url) == "closed"


def test_an_upstream_failing_mid_stream_counts_as_an_upstream_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only failures before a stream's first byte were in aigw_upstream_failures_total:
    the dashboard's failures by provider and class missed every broken stream."""
    fake = OpenAIFake(name="a")
    monkeypatch.setenv("FAKE_OPENAI_KEY", fake.api_key)
    fake.script.actions += [Action(cut_stream_after=3)]
    with serving(fake.app) as base_url, sdk_gateway(
            tmp_path / "gw", _on(base_url, ", capabilities: [streaming]")) as (client, server):
        said: list[ChatCompletionMessageParam] = [
            {"role": "user", "content": "one two three four five six"}]
        stream = client.chat.completions.create(model="r", messages=said, stream=True)
        with pytest.raises(openai.APIError):
            for _chunk in stream:
                pass
        metrics = httpx.get(f"{server.base_url}/metrics").text
    failures = [line for line in metrics.splitlines()
                if line.startswith("aigw_upstream_failures_total{")]
    assert len(failures) == 1 and 'deployment="a"' in failures[0], failures
    assert failures[0].endswith(" 1.0")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_client_leaving_a_whole_answer_stops_its_upstream_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A client that timed out waiting for a whole (not streamed) answer left the call
    running to its end, billed and logged as a 200 nobody received; an SDK's retries
    made that two or three calls. Now it is stopped, and recorded as 499."""
    fake = OpenAIFake(name="a")
    monkeypatch.setenv("FAKE_OPENAI_KEY", fake.api_key)
    fake.script.actions += [Action(delay_s=3.0)]
    with serving(fake.app) as base_url, sdk_gateway(tmp_path / "gw", _on(base_url)) as (
            _client, server):
        body = {"model": "r", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.base_url}{path}", json=body, timeout=0.5,
                       headers={"Authorization": f"Bearer {DEV_KEY}"})
        deadline = time.monotonic() + 10
        while "aigw_requests_total" not in (metrics := httpx.get(
                f"{server.base_url}/metrics").text) or 'status="499"' not in metrics:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.1)
        spend = httpx.get(f"{server.base_url}/admin/spend?group_by=route",
                          headers={"Authorization": f"Bearer {DEV_KEY}"}).json()["data"]
    assert 'status="200"' not in metrics
    assert [(row["route"], row["requests"], row["errors"], row["tokens_out"])
            for row in spend] == [("r", 1, 1, 0)]
    assert time.monotonic() < deadline - 8  # cut when the client left, not after 3 s
