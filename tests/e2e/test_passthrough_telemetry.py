"""A pass-through's telemetry, as a model endpoint's: its trace (a request span and one
for the call, whose traceparent goes upstream), its time to first byte, and its tokens
and duration in the metrics whether or not a deployment's price names its model (real
``aigw serve``, the official anthropic SDK, the Anthropic fake, the loopback OTLP
receiver)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from ..conftest import DEV_KEY, metric_sample
from ..fakes.anthropic_fake import AnthropicFake
from ..fakes.otlp_receiver import OtlpReceiver
from ..fakes.serve import serving
from .server import Server, running

pytestmark = pytest.mark.e2e

ANTHROPIC_KEY = "sk-ant-provider-telemetry-4c2e9a"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
ROUTE = "passthrough:claude-raw"


@pytest.fixture
def traced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[
        tuple[Server, AnthropicFake, OtlpReceiver]]:
    claude, receiver = AnthropicFake(api_key=ANTHROPIC_KEY), OtlpReceiver()
    with serving(receiver.app) as otlp, serving(claude.app) as claude_url:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        monkeypatch.setenv("PT_ANTHROPIC_KEY", ANTHROPIC_KEY)
        root = tmp_path / "gw"
        (root / "policies").mkdir(parents=True)
        (root / "policies" / "all.cedar").write_text(
            '@id("everyone")\npermit (principal, action, resource);\n')
        (root / "gateway.yaml").write_text(f"""
version: 1
providers:
  claude: {{type: anthropic, base_url: "{claude_url}", api_key: "${{PT_ANTHROPIC_KEY}}"}}
deployments:
  sonnet: {{provider: claude, model: claude-sonnet-4-6, context_window: 200000,
           price: {{input: 3, output: 15}}}}
routes: {{sonnet: {{deployment: sonnet}}}}
teams: {{eng: {{}}}}
keys:
  dev: {{admin: true, team: eng, sha256: {hashlib.sha256(DEV_KEY.encode()).hexdigest()}}}
passthrough:
  claude-raw: {{provider: claude, paths: ["/v1/messages"], methods: [POST]}}
""")
        with running(root) as server:
            yield server, claude, receiver


def test_a_passthrough_is_traced_timed_and_counted(
        traced: tuple[Server, AnthropicFake, OtlpReceiver]) -> None:
    """It had no span (and sent no traceparent upstream), no time to first byte, and an
    answer naming a model no deployment prices had its tokens in its access line but not
    in aigw_tokens_total, nor its duration in aigw_request_duration_seconds."""
    server, claude, receiver = traced
    client = anthropic.Anthropic(base_url=f"{server.base_url}/passthrough/claude-raw",
                                 api_key=DEV_KEY, max_retries=0)
    ask: Any = [{"role": "user", "content": "hi"}]
    priced = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=50, messages=ask,
        extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    unpriced = client.messages.with_raw_response.create(model="claude-haiku-9", max_tokens=50,
                                                        messages=ask)
    with client.messages.with_streaming_response.create(
            model="claude-sonnet-4-6", max_tokens=50, messages=ask, stream=True) as streamed:
        streamed.read()
    lines = [server.written_access_line(answer.headers["x-request-id"])
             for answer in (priced, unpriced, streamed)]
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text

    for line in lines:
        assert line["ttft_ms"] is not None and 0 < line["ttft_ms"] <= line["latency_ms"], line
    assert sum(metric_sample(metrics, "aigw_time_to_first_token_seconds_count", route=ROUTE,
                             deployment=deployment, provider="claude")
               for deployment in ("sonnet", "_none")) == 3
    unpriced_line = lines[1]
    assert unpriced_line["deployment"] is None and unpriced_line["prompt_tokens"] > 0
    unpriced = {"route": ROUTE, "deployment": "_none", "team": "eng"}
    assert metric_sample(metrics, "aigw_tokens_total", **unpriced,
                         direction="input") == unpriced_line["prompt_tokens"]
    assert metric_sample(metrics, "aigw_tokens_total", **unpriced,
                         direction="output") == unpriced_line["completion_tokens"]
    assert metric_sample(metrics, "aigw_request_duration_seconds_count", route=ROUTE,
                         deployment="_none", provider="claude",
                         stream="false") == 1  # a whole answer
    assert metric_sample(metrics, "aigw_tokens_total", route=ROUTE, deployment="sonnet",
                         team="eng", direction="output") == lines[0]["completion_tokens"] * 2

    request = _span(receiver, server, lambda s: s["name"] == "passthrough claude-raw"
                    and s["trace_id"] == TRACE_ID)
    call = _span(receiver, server, lambda s: s["parent_span_id"] == request["span_id"])
    assert request["parent_span_id"] == PARENT_ID
    assert call["name"] == "passthrough claude"
    assert claude.script.headers[0]["traceparent"] == f"00-{TRACE_ID}-{call['span_id']}-01"
    for span in (request, call):
        attributes = span["attributes"]
        assert attributes["gen_ai.operation.name"] == "passthrough", span
        assert attributes["gen_ai.provider.name"] == "anthropic", span
        assert attributes["gen_ai.response.model"] == "claude-sonnet-4-6", span
        assert attributes["gen_ai.usage.input_tokens"] == lines[0]["prompt_tokens"], span
        assert attributes["http.response.status_code"] == 200, span
    assert request["attributes"]["aigw.route"] == ROUTE
    assert request["attributes"]["aigw.key"] == "dev"


def _span(receiver: OtlpReceiver, server: Server, matches: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while (found := next((s for s in receiver.spans if matches(s)), None)) is None:
        assert time.monotonic() < deadline, (receiver.spans, server.log)
        time.sleep(0.1)
    return found
