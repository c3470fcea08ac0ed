"""MCP through a real ``aigw serve``: a real MCP server (the official SDK's) behind it,
and the official SDK's client in front, authenticated with aigw keys and authorized
by Cedar."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from aigw.runtime.mcp import MAX_ANSWER_BYTES

from ..conftest import DEV_KEY
from ..fakes.mcp_server import PATH, RETRY_MS, RecordingMcpServer
from ..fakes.serve import free_port, serving
from .mcp_client import (
    CutAtFirstEvent,
    event_ids,
    opened,
    rpc,
    server_session,
    session,
    shown_event_id,
    until,
)
from .server import Server

pytestmark = pytest.mark.e2e

UPSTREAM_TOKEN = "mcp-upstream-token-5d1e8a73c0f2"
ODD_TOKEN = "s\u00e9same-5d1e8a73"  # not ASCII: no HTTP client sends it as meant
OUTSIDER_KEY = "sk-aigw-outsider"
TEAMMATE_KEY = "sk-aigw-teammate"  # may use "tools" too: Cedar lets its team
TEAMMATE_OLD_KEY = "sk-aigw-teammate-old"  # the secret teammate's rotation replaced
LIMITED_KEY = "sk-aigw-limited"  # of team platform, 3 requests a minute
PLAIN_ONLY_KEY = "sk-aigw-plain-only"  # of team platform, mcp_servers: [plain]
STREAMER_KEY = "sk-aigw-streamer"  # of team platform, 1 request a minute
LAPSED_KEY = "sk-aigw-lapsed"  # of team platform, expired
POLICIES = """
@id("platform-uses-tools")
permit (principal in Team::"platform", action == Action::"invoke", resource == McpServer::"tools");

@id("platform-uses-down")
permit (principal in Team::"platform", action == Action::"invoke", resource == McpServer::"down");
@id("platform-uses-badhost")
permit (principal in Team::"platform", action == Action::"invoke",
        resource == McpServer::"badhost");

@id("platform-uses-plain")
permit (principal in Team::"platform", action == Action::"invoke", resource == McpServer::"plain");

@id("platform-uses-accented")
permit (principal in Team::"platform", action == Action::"invoke",
        resource == McpServer::"accented");

@id("platform-uses-live")
permit (principal in Team::"platform", action == Action::"invoke", resource == McpServer::"live");

@id("platform-uses-cr")
permit (principal in Team::"platform", action == Action::"invoke", resource == McpServer::"cr");

@id("no-echo-for-anyone")
forbid (principal, action == Action::"invoke", resource == McpServer::"tools")
when { context.tool == "echo" };

@id("no-secrets-from-plain")
forbid (principal, action == Action::"invoke", resource == McpServer::"plain")
when { context.tool == "secret" };
"""


@dataclass
class McpGateway:
    server: Server
    upstream: RecordingMcpServer  # "tools": answers in SSE
    plain: RecordingMcpServer  # "plain": answers in JSON (json_response), has no GET stream
    cr: RecordingMcpServer  # "cr": answers in SSE whose lines end with a CR alone
    live: RecordingMcpServer  # "live": keeps its events, for a GET's Last-Event-ID
    root: Path

    def url(self, name: str) -> str:
        return f"{self.server.base_url}/mcp/{name}"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpGateway]:
    upstream = RecordingMcpServer()
    plain = RecordingMcpServer(json_response=True, get_stream=False)
    cr, live = RecordingMcpServer(cr_lines=True), RecordingMcpServer(resumable=True)
    with (serving(upstream.app) as base_url, serving(plain.app) as plain_url,
          serving(cr.app) as cr_url, serving(live.app) as live_url):
        root = tmp_path_factory.mktemp("mcp") / "gw"
        (root / "policies").mkdir(parents=True)
        (root / "policies" / "mcp.cedar").write_text(POLICIES)
        outsider = hashlib.sha256(OUTSIDER_KEY.encode()).hexdigest()
        teammate = hashlib.sha256(TEAMMATE_KEY.encode()).hexdigest()
        teammate_old = hashlib.sha256(TEAMMATE_OLD_KEY.encode()).hexdigest()
        limited = hashlib.sha256(LIMITED_KEY.encode()).hexdigest()
        plain_only = hashlib.sha256(PLAIN_ONLY_KEY.encode()).hexdigest()
        streamer = hashlib.sha256(STREAMER_KEY.encode()).hexdigest()
        (root / "gateway.yaml").write_text(f"""
version: 1
providers: {{local: {{type: echo}}}}
deployments: {{e: {{provider: local, model: echo-1, context_window: 8192}}}}
routes: {{echo: {{deployment: e}}}}
teams: {{platform: {{}}, others: {{}}}}
keys:
  dev: {{admin: true, team: platform, sha256: {hashlib.sha256(DEV_KEY.encode()).hexdigest()}}}
  outsider: {{team: others, sha256: {outsider}}}
  teammate: {{team: platform, sha256: {teammate}, previous: [{{sha256: {teammate_old}}}]}}
  limited: {{team: platform, sha256: {limited}, limits: {{rpm: 3, tpm: 1}}}}
  plain-only: {{team: platform, sha256: {plain_only}, mcp_servers: [plain]}}
  streamer: {{team: platform, sha256: {streamer}, limits: {{rpm: 1}}}}
  lapsed: {{team: platform, sha256: {hashlib.sha256(LAPSED_KEY.encode()).hexdigest()},
           expires: '2020-01-01T00:00:00Z'}}
mcp_servers:
  tools:
    url: {base_url}{PATH}
    headers: {{Authorization: "Bearer ${{MCP_TEST_UPSTREAM_TOKEN}}"}}
    timeout_s: 10
    tools: [add, echo, big]
  plain: {{url: "{plain_url}{PATH}", timeout_s: 10}}
  cr: {{url: "{cr_url}{PATH}", timeout_s: 10, tools: [add, big]}}
  live: {{url: "{live_url}{PATH}", timeout_s: 10}}
  down: {{url: "http://127.0.0.1:{free_port()}/mcp", timeout_s: 2}}
  badhost: {{url: "http://10.0.0.256/mcp", timeout_s: 2}}
  accented: {{url: "{base_url}{PATH}", headers: {{X-Token: "${{MCP_TEST_ODD_TOKEN}}"}}}}
""")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("MCP_TEST_UPSTREAM_TOKEN", UPSTREAM_TOKEN)
            patch.setenv("MCP_TEST_ODD_TOKEN", ODD_TOKEN)
            server = Server(root)
        try:
            server.wait_ready()
            yield McpGateway(server, upstream, plain, cr, live, root)
        finally:
            server.stop()


async def test_tools_are_listed_as_the_allow_list_and_cedar_have_them(
    gateway: McpGateway,
) -> None:
    async with session(gateway.url("tools"), DEV_KEY) as client:
        await client.initialize()
        listed = await client.list_tools()
    # secret: not in the allow-list; echo: in it, but a forbid names it
    assert sorted(tool.name for tool in listed.tools) == ["add", "big"]


async def test_a_server_that_answers_in_json(gateway: McpGateway) -> None:
    calls = len(gateway.plain.headers)
    async with session(gateway.url("plain"), DEV_KEY) as client:
        await client.initialize()
        listed = await client.list_tools()
        result = await client.call_tool("add", {"a": 1, "b": 2})
        with pytest.raises(MCPError) as forbidden:
            await client.call_tool("secret", {})
    # no allow-list: every tool but the one a forbid names
    assert sorted(tool.name for tool in listed.tools) == [
        "add", "big", "echo", "late", "notify", "poll", "shout"]
    assert result.structured_content == {"result": 3}
    assert "denied by no-secrets-from-plain" in str(forbidden.value)
    # initialize, its notification, tools/list, add (and the session's DELETE): not secret
    assert len(gateway.plain.headers) - calls <= 5


async def test_a_server_whose_event_lines_end_with_a_cr(gateway: McpGateway) -> None:
    """Read as LF-ended lines are: the allow-list filters tools/list (the old reader saw
    one line, no event, and passed the list on whole), each event goes on as it comes (a
    progress notification before the answer), and a JSON-only client gets the answer."""
    progress: list[float] = []

    async def progressed(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    shown: list[str] = []
    async with session(gateway.url("cr"), DEV_KEY, session_ids=shown) as client:
        await client.initialize()
        listed = await client.list_tools()
        big = await client.call_tool("big", {"size": 5, "log_first": True},
                                     progress_callback=progressed)
        answer = rpc(gateway.url("cr"), DEV_KEY, shown[-1], "tools/call",
                     {"name": "add", "arguments": {"a": 1, "b": 2}})
    assert sorted(tool.name for tool in listed.tools) == ["add", "big"]
    assert big.structured_content == {"result": "xxxxx"}
    assert progress == [0.5]
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["structuredContent"] == {"result": 3}


async def test_a_tool_call_goes_through_with_the_servers_own_credentials(
    gateway: McpGateway,
) -> None:
    async with session(gateway.url("tools"), DEV_KEY) as client:
        await client.initialize()
        result = await client.call_tool("add", {"a": 2, "b": 40})
    assert not result.is_error
    assert result.structured_content == {"result": 42}
    sent = gateway.upstream.headers[-1]
    assert sent["authorization"] == f"Bearer {UPSTREAM_TOKEN}"  # never the aigw key
    assert all(DEV_KEY not in value for headers in gateway.upstream.headers
               for value in headers.values())
    assert "mcp-session-id" in sent  # the upstream's session, passed through


async def test_a_tool_outside_the_allow_list_is_refused(gateway: McpGateway) -> None:
    calls = len(gateway.upstream.headers)
    async with session(gateway.url("tools"), DEV_KEY) as client:
        await client.initialize()
        with pytest.raises(MCPError) as refused:
            await client.call_tool("secret", {})
        calls_after_initialize = len(gateway.upstream.headers)
    assert "Tool 'secret' is not available through MCP server 'tools'" in str(refused.value)
    assert calls_after_initialize - calls <= 3  # initialize, its notification, no call


async def test_a_bad_key_is_a_401(gateway: McpGateway) -> None:
    statuses: list[int] = []
    async with session(gateway.url("tools"), "sk-not-a-key", statuses) as client:
        with pytest.raises(MCPError) as refused:
            await client.initialize()
    assert statuses == [401]
    assert "Incorrect API key provided" in str(refused.value)


def test_an_answer_carries_the_id_of_its_access_line(gateway: McpGateway) -> None:
    """A refusal's too, as on /v1 (tests/e2e/test_request_ids.py): it had none."""
    refused = httpx.post(gateway.url("tools"), headers={"authorization": "Bearer sk-not-a-key"},
                         json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert refused.status_code == 401
    (request_id,) = refused.headers.get_list("x-request-id")
    line = gateway.server.access_line(request_id)
    assert line is not None
    assert (line["endpoint"], line["status"]) == ("mcp", 401)


async def test_an_expired_key_is_refused_and_named_in_the_access_log(
        gateway: McpGateway) -> None:
    statuses: list[int] = []
    async with session(gateway.url("tools"), LAPSED_KEY, statuses) as client:
        with pytest.raises(MCPError):
            await client.initialize()
    assert statuses == [401]
    [refused] = [json.loads(line) for line in gateway.server.log.splitlines()
                 if line.startswith("{") and '"key_expired"' in line]
    assert (refused["endpoint"], refused["key"], refused["team"]) == ("mcp", "lapsed",
                                                                      "platform")


async def test_cedar_forbids_a_tool_and_a_team(gateway: McpGateway) -> None:
    statuses: list[int] = []
    async with session(gateway.url("tools"), DEV_KEY, statuses) as client:
        await client.initialize()
        with pytest.raises(MCPError) as forbidden:
            await client.call_tool("echo", {"text": "hi"})
    assert 403 in statuses
    assert "denied by no-echo-for-anyone" in str(forbidden.value)
    statuses.clear()
    async with session(gateway.url("tools"), OUTSIDER_KEY, statuses) as client:
        with pytest.raises(MCPError) as outsider:
            await client.initialize()
    assert statuses == [403]
    assert "no policy permits it" in str(outsider.value)


async def test_a_server_that_is_down_is_a_clear_error(gateway: McpGateway) -> None:
    statuses: list[int] = []
    async with session(gateway.url("down"), DEV_KEY, statuses) as client:
        with pytest.raises(MCPError) as failed:
            await client.initialize()
    assert statuses == [502]
    assert "MCP server 'down' is unreachable" in str(failed.value)
    assert "Traceback" not in gateway.server.log


async def test_a_url_httpx_refuses_is_a_clear_error_not_a_500(gateway: McpGateway) -> None:
    # httpx.InvalidURL is no HTTPError: it was a 500 whose traceback quoted the host.
    statuses: list[int] = []
    async with session(gateway.url("badhost"), DEV_KEY, statuses) as client:
        with pytest.raises(MCPError) as failed:
            await client.initialize()
    assert statuses == [502]
    assert "MCP server 'badhost' cannot be called" in str(failed.value)
    assert "10.0.0.256" not in gateway.server.log


async def test_a_header_that_is_not_ascii_disables_its_server(gateway: McpGateway) -> None:
    # httpx cannot send it: every message was a 500 with a traceback. The server is
    # disabled at compile time, saying which header but not its value.
    statuses: list[int] = []
    calls = len(gateway.upstream.headers)
    async with session(gateway.url("accented"), DEV_KEY, statuses) as client:
        with pytest.raises(MCPError) as failed:
            await client.initialize()
    assert statuses == [503]
    assert str(failed.value) == ("MCP server 'accented' is disabled: header X-Token is not "
                                 "ASCII text.")
    assert len(gateway.upstream.headers) == calls
    assert "Traceback" not in gateway.server.log
    assert ODD_TOKEN not in gateway.server.log


def test_unknown_server_get_and_metrics(gateway: McpGateway) -> None:
    auth = {"Authorization": f"Bearer {DEV_KEY}"}
    unknown = httpx.post(gateway.url("nope"), headers=auth,
                         json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "MCP server 'nope' is not defined."
    # A GET outside a session: the server's own refusal, passed on at its status
    sessionless = httpx.get(gateway.url("tools"), headers=auth)
    assert sessionless.status_code == 400
    assert "session" in sessionless.json()["error"]["message"].lower()
    batch = httpx.post(gateway.url("tools"), headers=auth, json=[{"jsonrpc": "2.0"}])
    assert batch.status_code == 400
    metrics = httpx.get(f"{gateway.server.base_url}/metrics", headers=auth).text
    assert 'aigw_mcp_requests_total{method="tools/call",server="tools",status="200",' \
           'team="platform",tool="add"}' in metrics
    assert UPSTREAM_TOKEN not in metrics
    log = gateway.server.log
    assert '"endpoint":"mcp"' in log and '"mcp_server":"tools"' in log
    assert UPSTREAM_TOKEN not in log and DEV_KEY not in log


async def test_a_server_outside_the_keys_mcp_servers_is_not_defined_for_it(
    gateway: McpGateway,
) -> None:
    """Cedar permits the key's team every server; the key's own mcp_servers narrows it,
    and a server outside them is the 404 of one that is not defined, never reached."""
    async with session(gateway.url("plain"), PLAIN_ONLY_KEY) as client:
        await client.initialize()
        result = await client.call_tool("add", {"a": 1, "b": 2})
    assert result.structured_content == {"result": 3}
    calls = len(gateway.upstream.headers)
    statuses: list[int] = []
    async with session(gateway.url("tools"), PLAIN_ONLY_KEY, statuses) as client:
        with pytest.raises(MCPError) as refused:
            await client.initialize()
    assert statuses == [404]
    assert str(refused.value) == "MCP server 'tools' is not defined."
    assert len(gateway.upstream.headers) == calls
    auth = {"Authorization": f"Bearer {PLAIN_ONLY_KEY}"}
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    outside = httpx.post(gateway.url("tools"), headers=auth, json=ping)
    unknown = httpx.post(gateway.url("nope"), headers=auth, json=ping)
    assert outside.status_code == unknown.status_code == 404
    assert outside.json() == {**unknown.json(), "error": {
        **unknown.json()["error"], "message": "MCP server 'tools' is not defined."}}
    assert httpx.delete(gateway.url("tools"), headers=auth).status_code == 404


async def test_a_session_is_bound_to_the_key_that_opened_it(
    gateway: McpGateway, monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, add = gateway.url("tools"), {"name": "add", "arguments": {"a": 1, "b": 1}}
    shown: list[str] = []
    async with session(url, DEV_KEY, session_ids=shown) as client:
        await client.initialize()
        await client.send_ping()
        upstream_id = gateway.upstream.headers[-1]["mcp-session-id"]
        session_id = shown[-1]
        assert upstream_id not in session_id  # the server's own id is not shown
        calls = len(gateway.upstream.headers)
        # Another key that learns the id, as shown or as the server has it, gets a 404 as
        # for an unknown session, and the server never hears of it.
        for tried in (session_id, upstream_id):
            stolen = rpc(url, TEAMMATE_KEY, tried, "tools/call", add)
            assert stolen.status_code == 404
            assert stolen.json()["error"]["message"].startswith("Session not found")
        ended = httpx.delete(url, headers={"Authorization": f"Bearer {TEAMMATE_KEY}",
                                           "mcp-session-id": session_id})
        assert ended.status_code == 404
        assert rpc(gateway.url("plain"), DEV_KEY, session_id, "ping", {}).status_code == 404
        assert len(gateway.upstream.headers) == calls
        result = await client.call_tool("add", {"a": 2, "b": 3})  # still the owner's
        assert result.structured_content == {"result": 5}
        assert gateway.upstream.headers[-1]["mcp-session-id"] == upstream_id  # its own id
        # Stateless: another gateway on the same config (a replica, a restart) opens it.
        monkeypatch.setenv("MCP_TEST_UPSTREAM_TOKEN", UPSTREAM_TOKEN)
        replica = Server(gateway.root)
        try:
            replica.wait_ready()
            replayed = rpc(f"{replica.base_url}/mcp/tools", DEV_KEY, session_id,
                           "tools/call", add)
        finally:
            replica.stop()
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["result"]["structuredContent"] == {"result": 2}
    assert gateway.upstream.headers[-2]["mcp-session-id"] == upstream_id


async def test_a_session_opened_with_a_keys_old_secret_does_not_open_with_its_new_one(
    gateway: McpGateway,
) -> None:
    """Both secrets are key teammate, but a session is sealed to the secret that opened
    it: a client that switches secrets mid-rotation gets a 404 and starts a new session
    (as the MCP spec has it do), and a leaked old secret's sessions stay its own."""
    url = gateway.url("tools")
    shown: list[str] = []
    async with session(url, TEAMMATE_OLD_KEY, session_ids=shown) as client:
        await client.initialize()
        result = await client.call_tool("add", {"a": 2, "b": 3})
        assert result.structured_content == {"result": 5}
        calls = len(gateway.upstream.headers)
        switched = rpc(url, TEAMMATE_KEY, shown[-1], "ping", {})
        assert switched.status_code == 404
        assert switched.json()["error"]["message"].startswith("Session not found")
        assert len(gateway.upstream.headers) == calls
        assert rpc(url, TEAMMATE_OLD_KEY, shown[-1], "ping", {}).status_code == 200


@pytest.mark.parametrize("log_first", [False, True], ids=["answer-first", "after-a-log"])
async def test_an_answer_over_the_cap_is_a_clear_error(gateway: McpGateway,
                                                      log_first: bool) -> None:
    statuses: list[int] = []
    progress: list[float] = []

    async def progressed(done: float, total: float | None, message: str | None) -> None:
        progress.append(done)

    async with session(gateway.url("tools"), DEV_KEY, statuses) as client:
        await client.initialize()
        with pytest.raises(MCPError) as failed:
            async with asyncio.timeout(60):  # not a wait for an answer that never comes
                await client.call_tool("big", {"size": MAX_ANSWER_BYTES + 1,
                                               "log_first": log_first},
                                       progress_callback=progressed if log_first else None)
        assert (await client.call_tool("add", {"a": 1, "b": 1})).structured_content == {
            "result": 2}  # the session goes on
    assert "MCP server 'tools' sent an answer larger than 32 MiB" in str(failed.value)
    # Before any of the stream went out, the status says it; after, the error event does.
    assert (502 in statuses) is not log_first
    assert progress == ([0.5] if log_first else [])


def test_messages_count_against_the_keys_rpm_not_its_tpm(gateway: McpGateway) -> None:
    headers = {"Authorization": f"Bearer {LIMITED_KEY}", "accept": "application/json"}
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    # tpm 1: a message has no tokens, so it never meets the tpm
    answers = [httpx.post(gateway.url("tools"), headers=headers, json=ping) for _ in range(4)]
    refused = answers[3]
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["id"] == 1
    assert refused.json()["error"]["data"]["code"] == "rate_limit_exceeded"
    assert all(answer.status_code != 429 for answer in answers[:3])


async def test_the_servers_get_stream_reaches_the_client(gateway: McpGateway) -> None:
    """The SDK's client opens the session's GET stream; what the server sends outside any
    call comes down it, and a Last-Event-ID GET replays what came after that event."""
    live, notified, shown = gateway.live, list[str](), list[str]()
    async with session(gateway.url("live"), DEV_KEY, session_ids=shown,
                       notified=notified) as client:
        await client.initialize()
        await until(lambda: live.open_gets == 1, "the GET stream opened")
        for _ in range(2):
            assert (await client.call_tool("notify", {})).structured_content == {
                "result": "sent"}
        await until(lambda: notified.count("notifications/tools/list_changed") == 2,
                    "both notifications came down the GET stream")
        sent = live.gets[-1]
        upstream_id = sent["mcp-session-id"]
        assert upstream_id not in shown[-1]  # the server's own id, opened
        assert "authorization" not in sent  # the client's aigw key stays with aigw
        first, second = [event_id for event_id, stream, message in live.events.stored
                         if stream == "_GET_stream" and message is not None]
        ids = event_ids("live", upstream_id)  # sealed to the key and session
        headers = {"Authorization": f"Bearer {DEV_KEY}", "mcp-session-id": shown[-1],
                   "accept": "text/event-stream",
                   "last-event-id": shown_event_id(ids, first),
                   "mcp-protocol-version": "2025-06-18"}
        async with (httpx.AsyncClient(timeout=10) as http,
                    http.stream("GET", gateway.url("live"), headers=headers) as replayed):
            text = (await replayed.aread()).decode()
        assert replayed.status_code == 200, text
        assert live.gets[-1]["last-event-id"] == first
        assert f"id: {shown_event_id(ids, second)}" in text
        assert f"id: {shown_event_id(ids, first)}\n" not in text
        assert "notifications/tools/list_changed" in text
    log = [json.loads(line) for line in gateway.server.log.splitlines()
           if line.startswith("{") and '"mcp_server":"live"' in line]
    assert [(line["method"], line["status"]) for line in log
            if line["method"] == "get"][-2:] == [("get", 200), ("get", 200)]


async def test_a_calls_stream_is_resumed_with_the_servers_own_event_ids(
    gateway: McpGateway,
) -> None:
    """A streamable HTTP server's POST stream, its events' ids as the server gave them
    (its priming event's first; sealed to the key and session), is resumed through the
    gateway as the spec has it: a GET with the last id the client had, sent on to the
    server as the server gave it, and the rest of that stream passed back, to the call's
    response."""
    url, live = gateway.url("live"), gateway.live
    shown = opened(url, DEV_KEY)
    headers = {"Authorization": f"Bearer {DEV_KEY}", "mcp-session-id": shown,
               "mcp-protocol-version": "2025-11-25"}
    late = {"jsonrpc": "2.0", "id": "late-1", "method": "tools/call",
            "params": {"name": "late", "arguments": {"seconds": 1.5}}}
    async with httpx.AsyncClient(timeout=20) as http:
        async with http.stream("POST", url, json=late, headers={
                **headers, "accept": "application/json, text/event-stream"}) as stream:
            assert stream.status_code == 200
            async with asyncio.timeout(10):
                first = await anext(_events(stream.aiter_lines()))
        # The priming event alone, and the connection gone: the server's id and retry,
        # unchanged
        primed = [event_id for event_id, _stream, message in live.events.stored
                  if message is None]
        ids = event_ids("live", server_session(shown, "live"))
        assert first == {"id": shown_event_id(ids, primed[-1]), "retry": str(RETRY_MS),
                         "data": ""}, first
        async with http.stream("GET", url, headers={
                **headers, "accept": "text/event-stream", "last-event-id": first["id"]},
                ) as stream:
            assert stream.status_code == 200
            async with asyncio.timeout(10):
                answer = await anext(event async for event in _events(stream.aiter_lines())
                                     if event["data"])
        assert live.gets[-1]["last-event-id"] == primed[-1]
        assert int(ids.opened(answer["id"]) or 0) > int(primed[-1])
        response = json.loads(answer["data"])
        assert response["id"] == "late-1"
        assert response["result"]["structuredContent"] == {"result": "late"}
        assert (await http.delete(url, headers=headers)).status_code == 200


async def _events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    """A stream's SSE events, each as its fields (``data`` joined, "" when empty)."""
    fields: dict[str, str] = {}
    async for line in lines:
        if not line:
            if fields:
                yield fields
            fields = {}
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        fields[name] = fields[name] + "\n" + value if name == "data" and name in fields \
            else value


async def test_the_sdks_client_resumes_a_call_through_the_gateway(gateway: McpGateway) -> None:
    """The official SDK's client, its call's stream cut after the server's priming event,
    resumes it through the gateway (a GET with that event's id, which the server replays
    after) and has its answer."""
    network = CutAtFirstEvent()
    async with session(gateway.url("live"), DEV_KEY, transport=network) as client:
        await client.initialize()
        answered = await client.call_tool("late", {"seconds": 1.5})
    assert network.cut == 1 and len(network.passed) == 1
    primed = network.passed[0].decode().partition("id: ")[2].partition("\n")[0]
    assert [get["last-event-id"] for get in gateway.live.gets if "last-event-id" in get
            and event_ids("live", get["mcp-session-id"]).opened(primed) == get[
                "last-event-id"]], "the server was sent its own id, opened"
    assert answered.structured_content == {"result": "late"}


async def test_a_call_whose_server_closes_its_stream_is_answered_when_polled(
    gateway: McpGateway,
) -> None:
    """MCP 2025-11-25 lets a server close a call's stream before its response (after an
    event with an id; with a retry, how long to wait) and have the client poll for the
    rest: a GET with the last id. A client taking SSE does so itself through the gateway.
    For a client taking JSON the gateway reads the stream, and it answered "the MCP
    server's stream ended without a response" (502): now it polls as a client would,
    after the retry the server asked for, and answers with the response."""
    url, live = gateway.url("live"), gateway.live
    async with session(url, DEV_KEY) as client:
        await client.initialize()
        polled = await client.call_tool("poll", {"seconds": 0.5})
    assert polled.structured_content == {"result": "polled"}
    shown = opened(url, DEV_KEY)
    headers = {"Authorization": f"Bearer {DEV_KEY}", "mcp-session-id": shown,
               "mcp-protocol-version": "2025-11-25", "accept": "application/json"}
    poll = {"jsonrpc": "2.0", "id": "poll-1", "method": "tools/call",
            "params": {"name": "poll", "arguments": {"seconds": 0.5}}}
    gets = len(live.gets)
    async with httpx.AsyncClient(timeout=20) as http:
        answered = await http.post(url, json=poll, headers=headers)
        assert answered.status_code == 200, answered.text
        assert answered.headers["content-type"].startswith("application/json")
        assert answered.json()["result"]["structuredContent"] == {"result": "polled"}
        resumed = [get.get("last-event-id") for get in live.gets[gets:]]
        assert resumed and all(resumed), resumed
        assert (await http.delete(url, headers=headers)).status_code == 200


async def test_a_client_that_leaves_its_get_stream_closes_the_servers(
    gateway: McpGateway,
) -> None:
    """The server's end is closed with the client's: the server allows one GET stream a
    session, and one left open would refuse the client's next (409)."""
    url, live = gateway.url("live"), gateway.live
    shown = opened(url, DEV_KEY)
    headers = {"Authorization": f"Bearer {DEV_KEY}", "mcp-session-id": shown,
               "accept": "text/event-stream", "mcp-protocol-version": "2025-06-18"}
    before = live.open_gets
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(2):
            async with http.stream("GET", url, headers=headers) as stream:
                assert stream.status_code == 200
                await until(lambda: live.open_gets == before + 1, "the GET stream opened")
            await until(lambda: live.open_gets == before, "the server's stream closed")


async def test_an_event_over_the_cap_ends_the_get_stream(gateway: McpGateway) -> None:
    url, live = gateway.url("live"), gateway.live
    shown = opened(url, DEV_KEY)
    headers = {"Authorization": f"Bearer {DEV_KEY}", "mcp-session-id": shown,
               "accept": "text/event-stream", "mcp-protocol-version": "2025-06-18"}
    before = live.open_gets
    async with (httpx.AsyncClient(timeout=60) as http,
                http.stream("GET", url, headers=headers) as stream):
        await until(lambda: live.open_gets == before + 1, "the GET stream opened")
        sent = await asyncio.to_thread(rpc, url, DEV_KEY, shown, "tools/call",
                                       {"name": "shout", "arguments": {"size": MAX_ANSWER_BYTES}})
        assert sent.json()["result"]["structuredContent"] == {"result": "sent"}
        passed = await stream.aread()  # it ends: the event is not passed on, whole or cut
    assert len(passed) < 1000
    assert ("MCP GET stream from 'live' ended early: MCP server 'live' sent an answer larger "
            "than 32 MiB") in gateway.server.log


def test_get_streams_are_checked_as_messages_are(gateway: McpGateway) -> None:
    """Key, the key's mcp_servers, Cedar and rpm as for a message; a server without a
    GET stream gives its 405."""
    plain = opened(gateway.url("plain"), DEV_KEY)
    sse = {"accept": "text/event-stream", "mcp-protocol-version": "2025-06-18"}

    def get(name: str, key: str, session_id: str | None = None) -> httpx.Response:
        session_header = {"mcp-session-id": session_id} if session_id else {}
        return httpx.get(gateway.url(name), timeout=10, headers={
            "Authorization": f"Bearer {key}", **sse, **session_header})

    refused = get("plain", DEV_KEY, plain)
    assert refused.status_code == 405, refused.text
    assert refused.json()["error"]["message"] == "no GET stream here"
    assert get("plain", TEAMMATE_KEY, plain).status_code == 404  # not its session
    assert get("tools", "sk-not-a-key").status_code == 401
    assert get("tools", PLAIN_ONLY_KEY).status_code == 404
    assert "no policy permits it" in get("tools", OUTSIDER_KEY).json()["error"]["message"]
    calls = len(gateway.upstream.gets)
    assert get("tools", STREAMER_KEY).status_code == 400  # no session: the server's answer
    assert get("tools", STREAMER_KEY).status_code == 429
    assert len(gateway.upstream.gets) == calls + 1
    metrics = httpx.get(f"{gateway.server.base_url}/metrics",
                        headers={"Authorization": f"Bearer {DEV_KEY}"}).text
    assert 'aigw_mcp_requests_total{method="get",server="plain",status="405",' \
           'team="platform",tool=""}' in metrics


async def test_a_protocol_header_past_ascii_is_a_400_not_a_500(gateway: McpGateway) -> None:
    """The client's MCP-Protocol-Version (on every message) and Last-Event-ID (a GET's)
    go on to the server; a byte past ASCII in either was a UnicodeEncodeError as httpx
    built the request: a 500 and a traceback in the log. Now a 400 saying which header."""
    auth = {"Authorization": f"Bearer {DEV_KEY}", "accept": "application/json"}
    async with httpx.AsyncClient(timeout=10) as http:
        posted = await http.post(gateway.url("tools"), json={
            "jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={**auth, "mcp-protocol-version": b"2025-06-18\xe9"})
        assert posted.status_code == 400, posted.text
        assert posted.json()["error"]["message"] == (
            "The mcp-protocol-version header is not visible ASCII, as its values are.")
        shown = opened(gateway.url("live"), DEV_KEY)
        resumed = await http.get(gateway.url("live"), headers={
            **auth, "accept": "text/event-stream", "mcp-session-id": shown,
            "last-event-id": b"\xe9"})
        assert resumed.status_code == 400, resumed.text
        assert "last-event-id header" in resumed.json()["error"]["message"]
    assert "Traceback" not in gateway.server.log
