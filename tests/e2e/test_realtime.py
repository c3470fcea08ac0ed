"""A real ``aigw serve`` relaying OpenAI's Realtime API (GET /v1/realtime, a WebSocket) to a
fake Realtime upstream, driven by the official openai SDK's realtime client: events
relayed both ways, each ``response.done`` billed to the ledger and the key's spend, the
session's access-log line, a budget spent mid-session closing it after that response,
and each refusal (a bad key, an unknown model, a route the key may not call, every
upstream down) an error event and a close."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from ..conftest import DEV_KEY, metric_sample
from ..fakes.openai_realtime import (
    DROP,
    HANG_UP,
    HANG_UP_CODE,
    SLOW,
    USAGE,
    RealtimeFake,
    Session,
)
from ..fakes.serve import free_port
from ..redis_server import PrivateRedis
from .server import Server, sdk_gateway

pytestmark = pytest.mark.e2e

NARROW_KEY = "sk-aigw-narrow"
# A provider key the upstream does not take (route ``stale``): it answers an error event.
STALE_KEY = "sk-stale-provider-key-9q4w"
# The deployment's prices: a response (USAGE: 120 input tokens, 20 of them cached at 0.4,
# 80 audio at 32 and 20 text at 4; 40 output, 30 audio at 64 and 10 text at 16) costs:
RESPONSE_COST = (20 * 4.0 + 20 * 0.4 + 80 * 32.0 + 10 * 16.0 + 30 * 64.0) / 1_000_000


@dataclass
class Realtime:
    upstream: RealtimeFake
    server: Server

    def client(self, key: str = DEV_KEY) -> openai.AsyncOpenAI:
        # The beta client connects to wss:// of the base URL unless told where.
        return openai.AsyncOpenAI(
            base_url=f"{self.server.base_url}/v1", api_key=key, max_retries=0,
            websocket_base_url=f"{self.server.base_url.replace('http', 'ws', 1)}/v1")


@contextmanager
def realtime_gateway(root: Path, dev: str = "", keys: str = "",
                     settings: str = "", quota: str = "",
                     provider: str = "") -> Iterator[Realtime]:
    """A gateway with a realtime route on the fake (``realtime``), a group whose first
    member's upstream is down (``fallback``), one whose every member is (``down``), and a
    chat route, and one whose provider's key the upstream refuses (``stale``); the dev key
    (``dev``: more of it), a key that may call ``chat`` only, and ``keys``: more keys'
    lines; ``settings``: the settings section's entries; ``quota``: the ``limits`` of
    the realtime route's deployment (``gpt-realtime``), its own quota; ``provider``:
    more entries of its provider's (``openai``)."""
    upstream = RealtimeFake()
    down = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    narrow = hashlib.sha256(NARROW_KEY.encode()).hexdigest()
    with pytest.MonkeyPatch.context() as monkeypatch, upstream.serving() as url:
        monkeypatch.setenv("FAKE_REALTIME_KEY", upstream.api_key)
        with sdk_gateway(root, (
                (f"settings: {{{settings}}}\n" if settings else "")
                + "providers:\n"
                f'  openai: {{type: openai, base_url: "{url}/v1", '
                + (f"{provider}, " if provider else "")
                + 'api_key: "${FAKE_REALTIME_KEY}"}\n'
                f'  gone: {{type: openai_compatible, base_url: "{down}", '
                'api_key: "${FAKE_REALTIME_KEY}"}\n'
                f'  azure: {{type: azure_openai, base_url: "{url}", '
                'api_key: "${FAKE_REALTIME_KEY}"}\n'
                f'  stale: {{type: openai, base_url: "{url}/v1", api_key: "{STALE_KEY}"}}\n'
                "  local: {type: echo}\n"
                "deployments:\n"
                "  azure-realtime: {provider: azure, model: my-realtime, kind: realtime,\n"
                "                   context_window: 32000}\n"
                "  gpt-realtime: {provider: openai, model: gpt-realtime, kind: realtime,\n"
                "                 context_window: 32000,\n"
                + (f"                 limits: {{{quota}}},\n" if quota else "")
                + "                 price: {input: 4.0, output: 16.0, cache_read: 0.4,\n"
                "                         audio_input: 32.0, audio_output: 64.0}}\n"
                "  gone-realtime: {provider: gone, model: gpt-realtime, kind: realtime,\n"
                "                  context_window: 32000}\n"
                "  stale-realtime: {provider: stale, model: gpt-realtime, kind: realtime,\n"
                "                   context_window: 32000}\n"
                "  echo-chat: {provider: local, model: echo-1, context_window: 8192}\n"
                "groups:\n"
                "  fallback: {members: [gone-realtime, gpt-realtime], retry: {attempts: 0}}\n"
                "  down: {members: [gone-realtime], retry: {attempts: 0}}\n"
                "routes:\n"
                "  realtime: {deployment: gpt-realtime}\n"
                "  azure: {deployment: azure-realtime}\n"
                "  fallback: {group: fallback}\n"
                "  down: {group: down}\n"
                "  stale: {deployment: stale-realtime}\n"
                "  chat: {deployment: echo-chat}\n"
        ), dev, keys=f"  narrow: {{sha256: {narrow}, routes: [chat]}}\n{keys}") as (_, server):
            yield Realtime(upstream, server)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Realtime]:
    with realtime_gateway(tmp_path / "gw") as served:
        yield served


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Realtime]:
    """One gateway for the refusals (none reaches the upstream, nor bills)."""
    with realtime_gateway(tmp_path_factory.mktemp("refusing")) as served:
        yield served


@asynccontextmanager
async def connected(gateway: Realtime, model: str, key: str = DEV_KEY,
                    query: dict[str, str] | None = None
                    ) -> AsyncIterator[AsyncRealtimeConnection]:
    """A session on route ``model``; ``query``: more of the URL's query parameters."""
    async with gateway.client(key) as client, client.realtime.connect(
            model=model, extra_query=query or {}) as connection:
        yield connection


async def until(connection: AsyncRealtimeConnection, kind: str) -> list[Any]:
    """The events received up to and including the first of type ``kind``."""
    events = []
    while True:
        event = await asyncio.wait_for(connection.recv(), 10)
        events.append(event)
        if event.type == kind:
            return events


async def said(connection: AsyncRealtimeConnection, text: str) -> list[Any]:
    """One turn: ``text`` as a user message, a response asked for, its events to done."""
    await connection.conversation.item.create(item={
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    await connection.response.create()
    return await until(connection, "response.done")


def test_a_session_relays_events_both_ways_and_bills_each_response(gateway: Realtime) -> None:
    async def session() -> tuple[list[Any], list[Any], list[Any]]:
        async with connected(gateway, "realtime") as connection:
            created = await until(connection, "session.created")
            await connection.session.update(session={"type": "realtime",
                                                     "instructions": "Be brief."})
            await until(connection, "session.updated")
            return created, await said(connection, "hello there"), await said(connection,
                                                                             "again")

    created, first, second = asyncio.run(session())
    assert created[-1].session.model == "gpt-realtime"  # the deployment's model upstream
    deltas = "".join(event.delta for event in first if event.type == "response.output_text.delta")
    assert deltas.strip() == "You said: hello there"
    assert second[-1].response.usage.input_tokens == USAGE["input_tokens"]

    upstream = gateway.upstream.sessions[0]
    assert upstream.query == {"model": "gpt-realtime"}
    assert [event["type"] for event in upstream.events] == [
        "session.update", "conversation.item.create", "response.create",
        "conversation.item.create", "response.create"]
    assert upstream.events[0]["session"]["instructions"] == "Be brief."

    # Each response is a ledger record of its own, at the deployment's prices.
    rows = gateway.server.ledger_rows(2)
    assert [row["status"] for row in rows] == [200, 200]
    # Its audio tokens too: the fresh input audio's, the output's.
    assert [(row["tokens_audio_in"], row["tokens_audio_out"]) for row in rows] == [(80, 30)] * 2
    assert all(row["latency_ms"] > 0 for row in rows)  # from response.created
    assert [row["cost"] for row in rows] == pytest.approx([RESPONSE_COST] * 2)
    spend = httpx.get(f"{gateway.server.base_url}/admin/spend?group_by=key",
                      headers={"authorization": f"Bearer {DEV_KEY}"}).json()
    assert spend["data"][0]["cost"] == pytest.approx(2 * RESPONSE_COST)
    assert spend["data"][0]["requests"] == 2

    line = _session_line(gateway.server)
    assert (line["route"], line["deployment"], line["status"]) == (
        "realtime", "gpt-realtime", 200)
    assert line["responses"] == 2
    assert (line["prompt_tokens"], line["completion_tokens"], line["cached_tokens"]) == (240, 80,
                                                                                         40)
    assert line["cost"] == pytest.approx(2 * RESPONSE_COST)
    assert _upstream_close(upstream) == 1000  # the client's close, passed on

    metrics = httpx.get(f"{gateway.server.base_url}/metrics").text
    served = {"route": "realtime", "deployment": "gpt-realtime", "team": "_none"}  # dev's
    assert metric_sample(metrics, "aigw_requests_total", provider="openai", status="200",
                         **served) == 1
    assert metric_sample(metrics, "aigw_cost_total", **served) == pytest.approx(
        2 * RESPONSE_COST)


def test_the_upstreams_close_is_passed_on(gateway: Realtime) -> None:
    """An upstream's close code and reason reach the client; one that drops its connection
    unclosed is an error event and a 1011, and counted as the deployment's failure."""
    async def ended(text: str) -> tuple[list[Any], ConnectionClosed]:
        async with connected(gateway, "realtime") as connection:
            await connection.conversation.item.create(item={
                "type": "message", "role": "user", "content": [{"type": "input_text",
                                                                "text": text}]})
            events = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    events.append(await asyncio.wait_for(connection.recv(), 10))
            return events, closed.value

    events, closed = asyncio.run(ended(HANG_UP))
    assert [event.type for event in events] == ["session.created", "conversation.item.created"]
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (HANG_UP_CODE, "hung up")
    line = _session_line(gateway.server)
    assert (line["status"], line["responses"], line["cost"]) == (200, 0, 0.0)

    events, closed = asyncio.run(ended(DROP))
    assert [event.type for event in events] == ["session.created", "conversation.item.created",
                                                "error"]
    assert events[-1].error.code == "upstream_unreachable"
    assert _code(closed) == 1011
    assert _session_line(gateway.server, status=502)["error"] == "upstream_unreachable"
    metrics = httpx.get(f"{gateway.server.base_url}/metrics").text
    assert metric_sample(metrics, "aigw_upstream_failures_total", deployment="gpt-realtime",
                         provider="openai", error="upstream_unreachable") == 1


def test_the_provider_key_goes_upstream_and_never_the_clients(gateway: Realtime) -> None:
    """The SDK's GA client, its beta one (whose OpenAI-Beta header is passed on), and a
    browser's (its key a subprotocol, as it can set no header): the upstream sees the
    provider's key only, and the client never sees it."""
    async def sessions() -> tuple[list[Any], Any, str | None]:
        async with connected(gateway, "realtime") as connection:
            events = await said(connection, "hi")
        async with gateway.client() as client, \
                client.beta.realtime.connect(model="realtime") as beta:
            created = await asyncio.wait_for(beta.recv(), 10)
        url = gateway.server.base_url.replace("http", "ws", 1) + "/v1/realtime?model=realtime"
        async with connect(url, subprotocols=[Subprotocol("realtime"), Subprotocol(
                f"openai-insecure-api-key.{DEV_KEY}"), Subprotocol("openai-beta.realtime-v1")]
                           ) as browser:
            assert json.loads(await asyncio.wait_for(browser.recv(), 10))["type"] == \
                "session.created"
            return events, created, browser.subprotocol

    events, created, subprotocol = asyncio.run(sessions())
    assert (created.type, subprotocol) == ("session.created", "realtime")
    ga, beta, browser = gateway.upstream.sessions
    for session in (ga, beta, browser):
        assert session.headers["authorization"] == f"Bearer {gateway.upstream.api_key}"
        assert DEV_KEY not in json.dumps(session.headers)
    assert "openai-beta" not in ga.headers
    assert beta.headers["openai-beta"] == browser.headers["openai-beta"] == "realtime=v1"
    assert gateway.upstream.api_key not in json.dumps([event.to_dict() for event in events])


def test_an_upstreams_error_event_never_shows_the_provider_key(gateway: Realtime) -> None:
    """An upstream refusing the provider's key says so in an error event that shows the
    key's tail, as OpenAI's does: the client gets the event with the key scrubbed, as a
    call's upstream error is, and the close after it."""
    async def refused() -> tuple[Any, int | None]:
        return await _refusal(gateway, "stale")

    event, code = asyncio.run(refused())
    assert (event.type, event.error.code) == ("error", "invalid_api_key")
    assert STALE_KEY[-4:] not in event.error.message
    assert "Incorrect API key provided" in event.error.message
    assert code == 3000
    assert gateway.upstream.sessions[0].headers["authorization"] == f"Bearer {STALE_KEY}"


def test_an_azure_openai_session_opens_its_deployments_realtime_url(gateway: Realtime) -> None:
    """Azure's /openai/realtime, its deployment named in the query, the preview
    api-version (its GA one has no realtime), and its key in api-key."""
    async def session() -> list[Any]:
        async with connected(gateway, "azure") as connection:
            return await said(connection, "hi")

    assert asyncio.run(session())[-1].type == "response.done"
    upstream = gateway.upstream.sessions[0]
    assert upstream.path == "/openai/realtime"
    assert upstream.query == {"api-version": "2024-10-01-preview", "deployment": "my-realtime"}
    assert upstream.headers["api-key"] == gateway.upstream.api_key
    assert "authorization" not in upstream.headers


def test_openais_query_parameters_go_upstream_and_no_others(gateway: Realtime) -> None:
    """Only ``model`` (the deployment's) went upstream: a transcription session
    (``intent=transcription``) opened as a conversation, and ``call_id`` (joining a call)
    was dropped. Now the documented parameters go on, on OpenAI's URL and Azure's; a
    key or anything else in the query does not; an intent OpenAI has not is a 400."""
    given = {"intent": "transcription", "call_id": "rtc_u1_9c2f", "api-key": DEV_KEY,
             "foo": "bar"}

    async def sessions() -> Any:
        for route in ("realtime", "azure"):
            async with connected(gateway, route, query=given) as connection:
                await asyncio.wait_for(connection.recv(), 10)
        async with connected(gateway, "realtime", query={"intent": "dictation"}) as refused:
            return await asyncio.wait_for(refused.recv(), 10)

    refused = asyncio.run(sessions())
    openai_session, azure_session = gateway.upstream.sessions
    passed = {"intent": "transcription", "call_id": "rtc_u1_9c2f"}
    assert openai_session.query == passed  # a transcription session names no model
    assert azure_session.query == {"api-version": "2024-10-01-preview",
                                   "deployment": "my-realtime", **passed}
    assert (refused.type, refused.error.param) == ("error", "intent")
    assert "realtime, transcription" in refused.error.message


def test_a_transcription_session_opens_upstream_with_no_model(gateway: Realtime) -> None:
    """OpenAI's transcription sessions are opened with ``intent=transcription`` and no
    model: with the deployment's model in the URL too, the upstream opened a conversation
    session, which refuses a transcription session.update. A session without the intent
    still names its model."""
    async def session() -> tuple[list[Any], list[Any]]:
        async with connected(gateway, "realtime",
                             query={"intent": "transcription"}) as connection:
            created = await until(connection, "session.created")
            await connection.session.update(session={
                "type": "transcription",
                "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}}}})
            updated = [await asyncio.wait_for(connection.recv(), 10)]
        return created, updated

    created, updated = asyncio.run(session())
    assert created[-1].session.type == "transcription"
    assert [event.type for event in updated] == ["session.updated"], updated
    assert gateway.upstream.sessions[0].query == {"intent": "transcription"}


def test_a_group_falls_back_to_its_next_member_when_one_cannot_be_reached(
        gateway: Realtime) -> None:
    async def session() -> list[Any]:
        async with connected(gateway, "fallback") as connection:
            return await said(connection, "hi")

    assert asyncio.run(session())[-1].type == "response.done"
    line = _session_line(gateway.server)
    assert (line["deployment"], line["attempts"], line["responses"]) == ("gpt-realtime", 2, 1)


def test_a_refused_handshake_names_the_access_line_of_its_session(refusing: Realtime) -> None:
    """The handshake's answer carries the session's ``x-request-id``, as an HTTP answer
    does: a client refused (here, a wrong key) can quote it to ops. Before, it had none."""

    async def refused() -> str:
        url = f"{refusing.server.base_url.replace('http', 'ws', 1)}/v1/realtime?model=realtime"
        async with connect(url, additional_headers={"authorization": "Bearer sk-aigw-wrong"}
                           ) as socket:
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(socket.recv(), 10)
            assert socket.response is not None
            return str(socket.response.headers["x-request-id"])

    request_id = asyncio.run(refused())
    for _ in range(100):  # written as the session ends
        line = refusing.server.access_line(request_id)
        if line is not None:
            break
        time.sleep(0.05)
    assert line is not None, f"no access line has {request_id}"
    assert (line["endpoint"], line["status"], line["error"]) == (
        "realtime", 401, "invalid_api_key")


@pytest.mark.parametrize(("key", "model", "code", "error_code"), [
    ("sk-aigw-wrong", "realtime", 3000, "invalid_api_key"),
    (DEV_KEY, "no-such-model", 1008, "model_not_found"),
    (NARROW_KEY, "realtime", 1008, "model_not_found"),
    (DEV_KEY, "chat", 1008, "invalid_request"),  # a chat route: no realtime member
    (DEV_KEY, "down", 1011, None),  # every member unreachable: the upstream's error
], ids=["bad-key", "unknown-model", "route-not-allowed", "not-realtime", "upstream-down"])
def test_a_refused_session_is_an_error_event_then_a_close(
        refusing: Realtime, key: str, model: str, code: int, error_code: str | None) -> None:
    event, closed_with = asyncio.run(_refusal(refusing, model, key))
    assert event.type == "error"
    if error_code is not None:
        assert event.error.code == error_code
    assert closed_with == code
    assert refusing.upstream.sessions == []  # nothing reached the upstream
    assert DEV_KEY not in event.error.message and NARROW_KEY not in event.error.message


def test_a_session_holds_its_keys_place_under_max_parallel_until_it_ends(
        tmp_path: Path) -> None:
    """With max_parallel: 1, a second session while one is open is refused (1013, as a
    rate limit); once the first has ended, another is admitted."""
    async def while_open(served: Realtime) -> tuple[Any, int | None]:
        async with connected(served, "realtime") as first:
            await until(first, "session.created")
            return await _refusal(served, "realtime")

    async def again(served: Realtime) -> str:
        async with connected(served, "realtime") as connection:
            return str((await until(connection, "session.created"))[-1].type)

    with realtime_gateway(tmp_path / "gw", dev="limits: {max_parallel: 1}") as served:
        refused, code = asyncio.run(while_open(served))
        assert (refused.error.code, code) == ("rate_limit_exceeded", 1013)
        _session_line(served.server, status=200)  # written once the first is settled
        assert asyncio.run(again(served)) == "session.created"


def test_a_key_a_reload_removed_ends_its_session_after_the_response(tmp_path: Path) -> None:
    """The response in flight is passed on whole and billed; then an invalid_api_key
    error event and a 3000 close, as for a bad key."""
    caller = "sk-aigw-caller"
    line = f"  caller: {{sha256: {hashlib.sha256(caller.encode()).hexdigest()}}}\n"

    async def session(served: Realtime) -> tuple[list[Any], Any, int | None]:
        async with connected(served, "realtime", caller) as connection:
            await said(connection, "hi")
            config = served.server.root / "gateway.yaml"
            config.write_text(config.read_text().replace(line, ""))
            reloaded = httpx.post(f"{served.server.base_url}/admin/reload", timeout=30,
                                  headers={"authorization": f"Bearer {DEV_KEY}"})
            assert reloaded.status_code == 200, reloaded.text
            events = await said(connection, "again")
            error = await asyncio.wait_for(connection.recv(), 10)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(connection.recv(), 10)
            return events, error, _code(closed.value)

    with realtime_gateway(tmp_path / "gw", keys=line) as served:
        events, error, code = asyncio.run(session(served))
        assert events[-1].type == "response.done"
        assert (error.error.code, code) == ("invalid_api_key", 3000)
        assert len(served.server.ledger_rows(2)) == 2  # both responses billed
        assert _session_line(served.server)["status"] == 401


def test_a_response_the_client_leaves_after_is_billed(tmp_path: Path,
                                                      private_redis: PrivateRedis) -> None:
    """A client may leave as soon as it has a response's response.done, which is passed on
    before it is billed: the bill under way (Redis stalled here, as a slow store is) is
    finished as the session ends, not cancelled with the relay (the response went
    unbilled, its ledger record and its budget charge lost)."""
    async def session(served: Realtime) -> None:
        async with connected(served, "realtime") as connection:
            await until(connection, "session.created")
            private_redis.process.send_signal(signal.SIGSTOP)
            try:
                await said(connection, "hi")
            except BaseException:
                private_redis.process.send_signal(signal.SIGCONT)
                raise
        await asyncio.sleep(0.3)  # the client has gone; Redis answers within its timeout
        private_redis.process.send_signal(signal.SIGCONT)

    with realtime_gateway(tmp_path / "gw", settings=f'store: "{private_redis.url}"') as served:
        asyncio.run(session(served))
        assert _session_line(served.server)["responses"] == 1
        spend = httpx.get(f"{served.server.base_url}/admin/spend?group_by=key",
                          headers={"authorization": f"Bearer {DEV_KEY}"}).json()
        assert spend["data"][0]["requests"] == 1
        assert spend["data"][0]["cost"] == pytest.approx(RESPONSE_COST)


def test_a_response_the_client_leaves_in_the_middle_of_is_cancelled_and_billed(
        gateway: Realtime) -> None:
    """A client that leaves once it has what it wanted of a response (its deltas), before
    the response.done that bills it: the response is cancelled upstream, and the
    response.done that answers, with the usage the upstream bills, is billed to the key.
    It was not billed at all."""
    async def session(out_of_band: bool) -> None:
        async with connected(gateway, "realtime") as connection:
            await connection.conversation.item.create(item={
                "type": "message", "role": "user", "content": [{"type": "input_text",
                                                                "text": SLOW}]})
            await connection.response.create()
            if out_of_band:  # a second response beside it, billed too
                await connection.response.create(response={"conversation": "none"})
            await until(connection, "response.output_text.delta")

    asyncio.run(session(out_of_band=False))
    rows = gateway.server.ledger_rows(1)
    assert [row["cost"] for row in rows] == pytest.approx([RESPONSE_COST])
    line = _session_line(gateway.server)
    assert (line["status"], line["responses"]) == (200, 1)
    assert gateway.upstream.sessions[0].events[-1]["type"] == "response.cancel"

    asyncio.run(session(out_of_band=True))
    assert [row["cost"] for row in gateway.server.ledger_rows(3)] == pytest.approx(
        [RESPONSE_COST] * 3)


def test_a_stop_ends_a_session_after_its_response_in_flight(gateway: Realtime) -> None:
    """At a stop a session ends after the response in flight, billed, with 1012 (service
    restart: its client opens another), not held open to the grace's end and cut there
    (the response unbilled, the client told nothing)."""
    async def session() -> tuple[list[Any], int | None, float]:
        async with connected(gateway, "realtime") as connection:
            await connection.conversation.item.create(item={
                "type": "message", "role": "user", "content": [{"type": "input_text",
                                                                "text": SLOW}]})
            await connection.response.create()
            await until(connection, "response.output_text.delta")
            gateway.server.process.send_signal(signal.SIGTERM)
            stopped = time.monotonic()
            events = await until(connection, "response.done")
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(connection.recv(), 10)
            return events, _code(closed.value), time.monotonic() - stopped

    events, code, waited = asyncio.run(session())
    assert events[-1].response.status == "completed"
    assert code == 1012
    assert waited < 5, waited
    assert gateway.server.process.wait(10) == 0
    assert [row["cost"] for row in gateway.server.ledger_rows(1)] == pytest.approx(
        [RESPONSE_COST])


def test_a_budget_spent_mid_session_closes_it_after_that_response(tmp_path: Path) -> None:
    """The first response takes the budget past its amount: it is passed on whole and
    billed, then the session ends with an insufficient_quota error event; a new session
    is refused at connect."""
    async def session(served: Realtime) -> tuple[list[Any], Any, int]:
        async with connected(served, "realtime") as connection:
            events = await said(connection, "hi")
            error = await asyncio.wait_for(connection.recv(), 10)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(connection.recv(), 10)
            return events, error, _code(closed.value)

    budget = f"budget: {{amount: {RESPONSE_COST / 2}, period: total}}"
    with realtime_gateway(tmp_path / "gw", dev=budget) as served:
        events, error, code = asyncio.run(session(served))
        assert events[-1].type == "response.done"
        assert (error.type, error.error.code, code) == ("error", "insufficient_quota", 1008)
        line = _session_line(served.server)
        assert (line["status"], line["responses"]) == (429, 1)
        assert served.server.ledger_rows(1)[0]["cost"] == pytest.approx(RESPONSE_COST)
        assert _upstream_close(served.upstream.sessions[0]) == 1000

        refused, code = asyncio.run(_refusal(served, "realtime"))
        assert (refused.error.code, code) == ("insufficient_quota", 1008)


async def _refusal(served: Realtime, model: str, key: str = DEV_KEY) -> tuple[Any, int | None]:
    """A refused session's error event and close code."""
    async with connected(served, model, key) as connection:
        event = await asyncio.wait_for(connection.recv(), 10)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(connection.recv(), 10)
        return event, _code(closed.value)


def _upstream_close(session: Session) -> int | None:
    """The close code the upstream got, once it got one (it may come after the client's)."""
    for _ in range(100):
        if session.close_code is not None:
            break
        time.sleep(0.05)
    return session.close_code


def _code(closed: ConnectionClosed) -> int | None:
    """The close code the gateway sent."""
    return closed.rcvd.code if closed.rcvd is not None else None


def _session_line(server: Server, status: int | None = None) -> dict[str, Any]:
    """The access log's line of the last realtime session (written as it ends), or of the
    last that ended with ``status``."""
    for _ in range(100):
        lines = [line for line in (json.loads(text) for text in server.log.splitlines()
                                   if text.startswith("{"))
                 if line.get("endpoint") == "realtime"
                 and (status is None or line["status"] == status)]
        if lines:
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError(f"no realtime access line:\n{server.log}")
