"""MCP traced through a real ``aigw serve`` exporting to a loopback OTLP receiver: the
official SDK's client in front, real MCP servers (the official SDK's: streamable HTTP,
stdio, HTTP+SSE) behind, spans as OpenTelemetry's MCP semantic conventions name them."""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from ..conftest import DEV_KEY
from ..fakes.mcp_server import PATH, RecordingMcpServer
from ..fakes.mcp_sse_server import PATH as SSE_PATH
from ..fakes.mcp_sse_server import SseMcpServer
from ..fakes.otlp_receiver import OtlpReceiver
from ..fakes.serve import free_port, serving
from .mcp_client import opened, session
from .server import Server

pytestmark = pytest.mark.e2e

SERVER_KIND, CLIENT_KIND, ERROR = 2, 3, 2  # OTLP's span kinds and status code
STDIO = f"[{sys.executable}, {Path(__file__).parent.parent / 'fakes' / 'mcp_stdio_server.py'}]"
POLICIES = """
@id("platform-uses-mcp")
permit (principal in Team::"platform", action == Action::"invoke", resource);

@id("no-echo-for-anyone")
forbid (principal, action == Action::"invoke", resource == McpServer::"tools")
when { context.tool == "echo" };
"""


@dataclass
class TracedGateway:
    server: Server
    receiver: OtlpReceiver
    upstream: RecordingMcpServer  # "tools": answers in SSE
    legacy: SseMcpServer  # "legacy": HTTP+SSE

    def url(self, name: str) -> str:
        return f"{self.server.base_url}/mcp/{name}"

    def spans(self, trace_id: str, count: int) -> list[dict[str, Any]]:
        """The spans of trace ``trace_id`` once there are ``count`` (exports are batched)."""
        deadline = time.monotonic() + 15
        while True:
            found = [span for span in self.receiver.spans if span["trace_id"] == trace_id]
            if len(found) >= count:
                time.sleep(0.3)  # and any more, which the test would be wrong to miss
                return [span for span in self.receiver.spans if span["trace_id"] == trace_id]
            assert time.monotonic() < deadline, (found, self.server.log)
            time.sleep(0.1)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TracedGateway]:
    receiver, upstream, legacy = OtlpReceiver(), RecordingMcpServer(traced=True), SseMcpServer()
    plain = RecordingMcpServer(json_response=True, get_stream=False)
    with (serving(receiver.app) as otlp, serving(upstream.app) as tools_url,
          serving(plain.app) as plain_url, serving(legacy.app) as legacy_url):
        root = tmp_path_factory.mktemp("mcp-traced") / "gw"
        (root / "policies").mkdir(parents=True)
        (root / "policies" / "mcp.cedar").write_text(POLICIES)
        (root / "gateway.yaml").write_text(f"""
version: 1
providers: {{local: {{type: echo}}}}
deployments: {{e: {{provider: local, model: echo-1, context_window: 8192}}}}
routes: {{echo: {{deployment: e}}}}
teams: {{platform: {{}}}}
keys:
  dev: {{admin: true, team: platform, sha256: {_sha256(DEV_KEY)}}}
mcp_servers:
  tools: {{url: "{tools_url}{PATH}", timeout_s: 10, tools: [add, echo, traceparent, confirm]}}
  plain: {{url: "{plain_url}{PATH}", timeout_s: 10}}
  fs: {{command: {STDIO}, timeout_s: 20}}
  legacy: {{url: "{legacy_url}{SSE_PATH}", transport: sse, timeout_s: 10}}
  down: {{url: "http://127.0.0.1:{free_port()}/mcp", timeout_s: 2}}
""")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
            patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
            server = Server(root)
        try:
            server.wait_ready()
            yield TracedGateway(server, receiver, upstream, legacy)
        finally:
            server.stop()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _traceparent(trace_id: str, span_id: str) -> str:
    return f"00-{trace_id}-{span_id}-01"


def _one(spans: list[dict[str, Any]], name: str, kind: int,
         where: Callable[[dict[str, Any]], bool] = lambda span: True) -> dict[str, Any]:
    found = [span for span in spans if span["name"] == name and span["kind"] == kind
             and where(span)]
    assert len(found) == 1, (name, kind, [(s["name"], s["kind"]) for s in spans])
    return found[0]


async def test_a_tool_call_is_a_server_span_with_the_call_upstream_under_it(
    gateway: TracedGateway,
) -> None:
    """The client's traceparent header parents the gateway's SERVER span of each message;
    the call upstream is its CLIENT child, whose traceparent the server gets in the HTTP
    header and in params._meta. (MCP requests had no spans at all.)"""
    trace_id, parent = "5bf92f3577b34da6a3ce929d0e0e4736", "10f067aa0ba902b7"
    async with session(gateway.url("tools"), DEV_KEY,
                       headers={"traceparent": _traceparent(trace_id, parent)}) as client:
        await client.initialize()
        added = await client.call_tool("add", {"a": 2, "b": 40})
        carried = await client.call_tool("traceparent", {})
    assert added.structured_content == {"result": 42}
    # initialize, notifications/initialized, two tools/call: a SERVER and a CLIENT span
    # each (the session's GET stream and DELETE: HTTP spans, two each)
    spans = gateway.spans(trace_id, 12)
    answer = _one(spans, "tools/call add", SERVER_KIND)
    call = _one(spans, "tools/call add", CLIENT_KIND)
    assert answer["parent_span_id"] == parent
    assert call["parent_span_id"] == answer["span_id"]
    attributes = answer["attributes"]
    assert attributes["mcp.method.name"] == "tools/call"
    assert attributes["gen_ai.operation.name"] == "execute_tool"
    assert attributes["gen_ai.tool.name"] == "add"
    assert attributes["jsonrpc.request.id"].isdigit()
    assert attributes["mcp.session.id"].startswith("aigw1.")  # the id the client knows
    assert attributes["mcp.protocol.version"]
    assert attributes["network.transport"] == "tcp"
    assert attributes["aigw.mcp.server"] == "tools"
    assert len(attributes["aigw.graph"]) == 64
    assert attributes["aigw.key"] == "dev" and attributes["aigw.team"] == "platform"
    assert "error.type" not in attributes and answer["status"][0] != ERROR
    upstream = call["attributes"]
    assert upstream["mcp.method.name"] == "tools/call"
    assert upstream["gen_ai.tool.name"] == "add"
    assert upstream["jsonrpc.request.id"] == attributes["jsonrpc.request.id"]
    # The server's own session id, which only the gateway and the server know.
    assert upstream["mcp.session.id"] and not upstream["mcp.session.id"].startswith("aigw1.")
    assert upstream["network.transport"] == "tcp"
    assert _traceparent(trace_id, call["span_id"]) in [
        headers.get("traceparent") for headers in gateway.upstream.headers]
    carrying = _one(spans, "tools/call traceparent", CLIENT_KIND)
    assert carried.structured_content == {
        "result": _traceparent(trace_id, carrying["span_id"])}
    opening = _one(spans, "initialize", SERVER_KIND)
    assert opening["attributes"]["mcp.session.id"].startswith("aigw1.")  # learnt answering
    assert _one(spans, "initialize", CLIENT_KIND)["parent_span_id"] == opening["span_id"]
    _one(spans, "notifications/initialized", SERVER_KIND)
    ending = _one(spans, "DELETE /mcp/{server}", SERVER_KIND)
    assert _one(spans, "DELETE", CLIENT_KIND)["parent_span_id"] == ending["span_id"]


def test_a_traceparent_in_params_meta_is_the_parent_and_the_header_a_link(
    gateway: TracedGateway,
) -> None:
    """params._meta.traceparent, the MCP conventions' carrier, wins over the HTTP header's
    (linked): an agent's MCP client puts its tool call's context there."""
    shown = opened(gateway.url("tools"), DEV_KEY)
    meta_trace, meta_parent = "6bf92f3577b34da6a3ce929d0e0e4736", "20f067aa0ba902b7"
    http_trace, http_parent = "7bf92f3577b34da6a3ce929d0e0e4736", "30f067aa0ba902b7"
    answer = httpx.post(gateway.url("tools"), timeout=10, headers={
        "Authorization": f"Bearer {DEV_KEY}", "mcp-session-id": shown,
        "accept": "application/json", "mcp-protocol-version": "2025-06-18",
        "traceparent": _traceparent(http_trace, http_parent)}, json={
        "jsonrpc": "2.0", "id": "call-9", "method": "tools/call", "params": {
            "name": "traceparent", "arguments": {},
            "_meta": {"traceparent": _traceparent(meta_trace, meta_parent),
                      "progressToken": 5}}})
    assert answer.status_code == 200, answer.text
    spans = gateway.spans(meta_trace, 2)
    server = _one(spans, "tools/call traceparent", SERVER_KIND)
    call = _one(spans, "tools/call traceparent", CLIENT_KIND)
    assert server["parent_span_id"] == meta_parent
    assert server["links"] == [(http_trace, http_parent)]
    assert server["attributes"]["jsonrpc.request.id"] == "call-9"
    # the server was sent the gateway's span as the parent, not the client's
    assert answer.json()["result"]["structuredContent"] == {
        "result": _traceparent(meta_trace, call["span_id"])}
    assert not [span for span in gateway.receiver.spans if span["trace_id"] == http_trace]
    # One in params._meta that is none: the header's is the parent, not a new trace.
    fallback_trace = "cbf92f3577b34da6a3ce929d0e0e4736"
    answer = httpx.post(gateway.url("tools"), timeout=10, headers={
        "Authorization": f"Bearer {DEV_KEY}", "mcp-session-id": shown,
        "accept": "application/json", "mcp-protocol-version": "2025-06-18",
        "traceparent": _traceparent(fallback_trace, http_parent)}, json={
        "jsonrpc": "2.0", "id": 10, "method": "ping",
        "params": {"_meta": {"traceparent": "00-not-a-trace-01"}}})
    assert answer.status_code == 200, answer.text
    pinged = _one(gateway.spans(fallback_trace, 2), "ping", SERVER_KIND)
    assert pinged["parent_span_id"] == http_parent and pinged["links"] == []


async def test_refusals_and_failures_are_errors_on_the_spans(gateway: TracedGateway) -> None:
    """A Cedar denial, a tool outside the allow-list, a server that is down and the
    server's own JSON-RPC error: each span says so (error.type the JSON-RPC code), and
    a call upstream that failed says how."""
    trace_id = "8bf92f3577b34da6a3ce929d0e0e4736"
    traced = {"traceparent": _traceparent(trace_id, "40f067aa0ba902b7")}
    async with session(gateway.url("tools"), DEV_KEY, headers=traced) as client:
        await client.initialize()
        with pytest.raises(MCPError):
            await client.call_tool("echo", {"text": "hi"})  # a forbid names it
        with pytest.raises(MCPError):
            await client.call_tool("secret", {})  # not in the allow-list
    async with session(gateway.url("plain"), DEV_KEY, headers=traced) as client:
        await client.initialize()
        with pytest.raises(MCPError):
            await client.get_prompt("no-such-prompt")  # the server's JSON-RPC error
        failed = await client.call_tool("add", {"a": "two", "b": 1})  # the tool's own
    assert failed.is_error
    down = httpx.post(gateway.url("down"), timeout=10, headers={
        "Authorization": f"Bearer {DEV_KEY}", "accept": "application/json", **traced},
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert down.status_code == 502, down.text
    refused = httpx.post(gateway.url("tools"), timeout=10, json={"jsonrpc": "2.0"},
                         headers={"Authorization": "Bearer sk-not-a-key", **traced})
    assert refused.status_code == 401, refused.text
    spans = gateway.spans(trace_id, 20)

    denied = _one(spans, "tools/call", SERVER_KIND,
                  lambda span: span["attributes"].get("gen_ai.tool.name") == "echo")
    assert denied["attributes"]["error.type"] == "-32600"
    assert denied["attributes"]["rpc.response.status_code"] == "-32600"
    assert denied["attributes"]["aigw.error"] == "permission_denied"
    assert denied["attributes"]["aigw.policy_ids"] == ["no-echo-for-anyone"]
    assert denied["attributes"]["http.response.status_code"] == 403
    assert denied["status"][0] == ERROR and "denied by" in denied["status"][1]
    unlisted = _one(spans, "tools/call", SERVER_KIND,
                    lambda span: span["attributes"].get("gen_ai.tool.name") == "secret")
    assert unlisted["attributes"]["error.type"] == "-32602"
    assert unlisted["attributes"]["aigw.error"] == "tool_not_allowed"
    assert not [span for span in spans if span["kind"] == CLIENT_KIND
                and span["attributes"].get("gen_ai.tool.name") in ("echo", "secret")]

    prompt = _one(spans, "prompts/get", SERVER_KIND)  # no such prompt: not in the name
    prompted = _one(spans, "prompts/get", CLIENT_KIND)
    assert prompt["attributes"]["gen_ai.prompt.name"] == "no-such-prompt"
    code = prompt["attributes"]["error.type"]
    assert code.lstrip("-").isdigit() and prompted["attributes"]["error.type"] == code
    assert prompt["status"][0] == ERROR and prompted["status"][0] == ERROR
    tool_error = _one(spans, "tools/call add", SERVER_KIND,
                      lambda span: span["attributes"].get("aigw.mcp.server") == "plain")
    assert tool_error["attributes"]["error.type"] == "tool_error"

    unreachable = _one(spans, "ping", SERVER_KIND)
    reaching = _one(spans, "ping", CLIENT_KIND)
    assert reaching["parent_span_id"] == unreachable["span_id"]
    assert unreachable["attributes"]["error.type"] == "-32603"
    assert unreachable["attributes"]["aigw.error"] == "mcp_server_failed"
    assert reaching["attributes"]["error.type"] == "mcp_server_failed"
    assert "sk-" not in str(spans)  # no key's secret in a span

    unauthenticated = _one(spans, "POST /mcp/{server}", SERVER_KIND)
    assert unauthenticated["attributes"]["error.type"] == "-32600"
    assert unauthenticated["attributes"]["aigw.error"] == "invalid_api_key"
    assert unauthenticated["attributes"]["http.response.status_code"] == 401


async def test_a_stdio_server_is_sent_the_trace_in_params_meta(gateway: TracedGateway) -> None:
    """stdio has no headers: the call's trace context goes in params._meta alone, and its
    span's transport is a pipe."""
    trace_id = "9bf92f3577b34da6a3ce929d0e0e4736"
    async with session(gateway.url("fs"), DEV_KEY,
                       headers={"traceparent": _traceparent(trace_id, "50f067aa0ba902b7")}
                       ) as client:
        await client.initialize()
        carried = await client.call_tool("traceparent", {})
    spans = gateway.spans(trace_id, 8)
    call = _one(spans, "tools/call traceparent", CLIENT_KIND)
    assert call["attributes"]["network.transport"] == "pipe"
    assert carried.structured_content == {"result": _traceparent(trace_id, call["span_id"])}


async def test_an_http_sse_server_is_sent_the_trace_in_the_posts_header(
    gateway: TracedGateway,
) -> None:
    """HTTP+SSE: each message's POST carries its call's traceparent header."""
    trace_id = "abf92f3577b34da6a3ce929d0e0e4736"
    async with session(gateway.url("legacy"), DEV_KEY,
                       headers={"traceparent": _traceparent(trace_id, "60f067aa0ba902b7")},
                       ) as client:
        await client.initialize()
        added = await client.call_tool("add", {"a": 1, "b": 2})
    assert added.structured_content == {"result": 3}
    spans = gateway.spans(trace_id, 8)
    call = _one(spans, "tools/call add", CLIENT_KIND)
    assert call["attributes"]["network.transport"] == "tcp"
    assert _traceparent(trace_id, call["span_id"]) in [
        headers.get("traceparent") for headers in gateway.legacy.posts]


async def test_a_clients_answer_to_a_request_of_the_servers_is_traced(
    gateway: TracedGateway,
) -> None:
    """A client's answer to a request of the server's (elicitation/create; sampling and
    roots/list alike) had no span: the request went down the call's stream untraced, and
    its answer came in a POST of its own that made none. Now the request passing on is a
    SERVER span (the gateway taking it, under the call upstream that asked it) and a
    CLIENT span (asking the client) under it, named for its method, whether it came on
    the call's stream or the GET stream; the client's answer ends the CLIENT span, and
    its delivery to the server the SERVER span."""
    trace_id = "ebf92f3577b34da6a3ce929d0e0e4736"
    traced = {"traceparent": _traceparent(trace_id, "70f067aa0ba902b7")}
    async with session(gateway.url("tools"), DEV_KEY, headers=traced,
                       confirms=True) as client:
        await client.initialize()
        confirmed = await client.call_tool("confirm", {})
        outside = await client.call_tool("confirm", {"outside": True})  # the GET stream's
    assert confirmed.structured_content == {"result": "accept {'ok': True}"}
    assert outside.structured_content == confirmed.structured_content
    spans = gateway.spans(trace_id, 16)
    calls = [span for span in spans if span["name"] == "tools/call confirm"
             and span["kind"] == CLIENT_KIND]
    assert len(calls) == 2
    asked = []
    for call in calls:  # each asked during its call upstream (its params._meta says so)
        taken = _one(spans, "elicitation/create", SERVER_KIND,
                     lambda span, call=call: span["parent_span_id"] == call["span_id"])
        asking = _one(spans, "elicitation/create", CLIENT_KIND,
                      lambda span, taken=taken: span["parent_span_id"] == taken["span_id"])
        asked.append((taken, asking))
    for taken, asking in asked:
        _asked_of_the_client(taken, asking)


def _asked_of_the_client(taken: dict[str, Any], asking: dict[str, Any]) -> None:
    """``taken`` and ``asking`` are the spans of an elicitation/create a client answered."""
    for span in (taken, asking):
        attributes = span["attributes"]
        assert attributes["mcp.method.name"] == "elicitation/create"
        assert attributes["jsonrpc.request.id"]
        assert attributes["aigw.mcp.server"] == "tools"
        assert "error.type" not in attributes and span["status"][0] != ERROR
    assert asking["attributes"]["mcp.session.id"].startswith("aigw1.")  # the client's
    assert not taken["attributes"]["mcp.session.id"].startswith("aigw1.")  # the server's
    assert taken["attributes"]["jsonrpc.request.id"] == asking["attributes"][
        "jsonrpc.request.id"]
    assert taken["attributes"]["http.response.status_code"] == 202  # delivered


async def test_a_clients_error_answer_to_a_request_of_the_servers_is_an_error(
    gateway: TracedGateway,
) -> None:
    """The client refused (a JSON-RPC error): its code is error.type on both spans."""
    refused_trace = "fbf92f3577b34da6a3ce929d0e0e4736"
    async with session(gateway.url("tools"), DEV_KEY, headers={
            "traceparent": _traceparent(refused_trace, "80f067aa0ba902b7")}) as client:
        await client.initialize()
        with pytest.raises(MCPError, match="nobody to ask"):
            await client.call_tool("confirm", {})  # this client asks nobody
    spans = gateway.spans(refused_trace, 12)
    for kind in (SERVER_KIND, CLIENT_KIND):
        refused = _one(spans, "elicitation/create", kind)
        assert refused["attributes"]["error.type"] == "-32600"
        assert refused["status"][0] == ERROR
