"""A real ``aigw serve`` relaying OpenAI's Realtime API to its fake (tests/e2e/test_realtime.py
has the gateway): each frame is acted on by its event's ``type``, never by the text it
carries (a model may say anything, a client may escape anything), and frames the
protocol has not (binary) are not passed on for the upstream to read unseen."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ..conftest import DEV_KEY
from ..fakes.openai_realtime import BINARY, CUT_ERROR, HUGE, VERBATIM
from .test_realtime import (
    Realtime,
    _code,
    _session_line,
    connected,
    realtime_gateway,
    said,
    until,
)

pytestmark = pytest.mark.e2e

# What a model may say, delta by delta: the names of the events the relay acts on, and
# "stream", which holds the tail of the fake's provider key (...-upstream).
SAID = ["response.done", "response.created", "error", "rate_limits.updated", "stream"]


def test_a_models_words_that_name_events_are_passed_on_and_not_acted_on(
        tmp_path: Path) -> None:
    """A response whose deltas are "response.done", "response.created", "error", ... (and
    whose response.done's message has them as its parts): every delta and the
    response.done reach the client as sent, the rate_limits.updated comes once (after
    the response.done), nothing is refused nor cancelled, and the response is billed
    once. Frames were classified by their text: a delta of "response.created" counted a
    response (over the rpm of 2: refused, the response cancelled upstream), one of
    "response.done" sent a rate_limits.updated mid-response, and one of "error" had the
    response.done scrubbed as if it quoted the key ("stream" became "st***")."""
    async def session(served: Realtime) -> list[Any]:
        async with connected(served, "realtime") as connection:
            await connection.conversation.item.create(item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": VERBATIM + "|".join(SAID)}]})
            await connection.response.create()
            events = await until(connection, "response.done")
            return [*events, *await until(connection, "rate_limits.updated")]

    with realtime_gateway(tmp_path / "gw", dev="limits: {rpm: 2, tpm: 1000}") as served:
        events = asyncio.run(session(served))
        kinds = [event.type for event in events]
        assert "error" not in kinds, events
        assert kinds[-2:] == ["response.done", "rate_limits.updated"]
        assert kinds.count("rate_limits.updated") == 1
        assert [event.delta for event in events
                if event.type == "response.output_text.delta"] == SAID
        done = events[-2].response
        assert done.status == "completed"
        assert [part.text for part in done.output[0].content] == SAID
        upstream = served.upstream.sessions[0]
        assert "response.cancel" not in [event["type"] for event in upstream.events]
        assert len(served.server.ledger_rows(1)) == 1


@asynccontextmanager
async def _raw(served: Realtime) -> AsyncIterator[ClientConnection]:
    """A session on a plain WebSocket client, which sends frames as written."""
    url = served.server.base_url.replace("http", "ws", 1) + "/v1/realtime?model=realtime"
    async with connect(url, additional_headers={"authorization": f"Bearer {DEV_KEY}"}
                       ) as websocket:
        assert json.loads(await asyncio.wait_for(websocket.recv(), 10))["type"] == \
            "session.created"
        yield websocket


async def _next(websocket: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        event = json.loads(await asyncio.wait_for(websocket.recv(), 10))
        if event["type"] == kind:
            return dict(event)


def test_a_response_create_the_client_escaped_is_counted_as_any(tmp_path: Path) -> None:
    """rpm 2: the connect and one response fit. A second ``response.create`` written with
    an escape (``response\\u002ecreate``, which every JSON parser reads as the same
    event) is refused as a plain one is: an error event naming it, not passed on. It
    was passed on uncounted (no "response.create" in its text), and the upstream ran it."""
    async def session(served: Realtime) -> dict[str, Any]:
        async with _raw(served) as websocket:
            await websocket.send(json.dumps({"type": "response.create"}))
            await _next(websocket, "response.done")
            await websocket.send('{"type": "response\\u002ecreate", "event_id": "evt_esc"}')
            return await _next(websocket, "error")

    with realtime_gateway(tmp_path / "gw", dev="limits: {rpm: 2}") as served:
        refused = asyncio.run(session(served))
        assert (refused["error"]["code"], refused["error"]["event_id"]) == (
            "rate_limit_exceeded", "evt_esc")
        upstream = served.upstream.sessions[0]
        assert [event["type"] for event in upstream.events] == ["response.create"]


def test_a_clients_binary_frame_is_refused_and_not_passed_on(tmp_path: Path) -> None:
    """Realtime events are JSON text: a binary frame (here one holding a response.create,
    which a parser upstream may read all the same) is answered an error event and not
    passed on; the session goes on. It was passed on unread, its response uncounted
    until the upstream started it."""
    async def session(served: Realtime) -> tuple[dict[str, Any], dict[str, Any]]:
        async with _raw(served) as websocket:
            await websocket.send(json.dumps({"type": "response.create"}).encode())
            refused = await _next(websocket, "error")
            await websocket.send(json.dumps({"type": "response.create"}))
            return refused, await _next(websocket, "response.done")

    with realtime_gateway(tmp_path / "gw") as served:
        refused, done = asyncio.run(session(served))
        assert refused["error"]["code"] == "invalid_request"
        assert "binary frame was not passed on" in refused["error"]["message"]
        assert done["response"]["status"] == "completed"
        upstream = served.upstream.sessions[0]
        assert [event["type"] for event in upstream.events] == ["response.create"]
        assert len(served.server.ledger_rows(1)) == 1


def test_an_upstreams_binary_frames_are_read_as_the_events_they_hold(tmp_path: Path) -> None:
    """An upstream that sends its events in binary frames (JSON all the same, which a
    client's parser reads as any): each is passed on as the text it holds and acted on,
    its response.done billed and followed by the gateway's rate_limits.updated, the
    provider's dropped. They were passed on unread: the response went unbilled."""
    async def session(served: Realtime) -> list[Any]:
        async with connected(served, "realtime") as connection:
            await said(connection, BINARY)
            events = await said(connection, "hi")
            return [*events, *await until(connection, "rate_limits.updated")]

    with realtime_gateway(tmp_path / "gw", dev="limits: {rpm: 10, tpm: 1000}") as served:
        events = asyncio.run(session(served))
        assert [event.type for event in events][-2:] == ["response.done", "rate_limits.updated"]
        assert [limit.name for limit in events[-1].rate_limits] == ["requests", "tokens"]
        assert events[-1].rate_limits[0].limit == 10  # the gateway's, not the provider's
        assert len(served.server.ledger_rows(2)) == 2


def test_an_upstream_event_past_the_providers_max_response_mb_ends_the_session_saying_so(
        tmp_path: Path) -> None:
    """max_response_mb: 1, and an upstream delta of 2 MiB: aiohttp does not read it (it
    closes the upstream 1009); the client gets an upstream_response_too_large error
    event naming the setting, then a 1011, and the access line says so. It was told
    "ended the session without closing it" (upstream_unreachable), which sent an
    operator looking for a network fault."""
    async def session(served: Realtime) -> tuple[Any, int | None]:
        async with connected(served, "realtime") as connection:
            await connection.conversation.item.create(item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": HUGE}]})
            await connection.response.create()
            error = await until(connection, "error")
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(connection.recv(), 10)
            return error[-1], _code(closed.value)

    with realtime_gateway(tmp_path / "gw", provider="max_response_mb: 1") as served:
        error, code = asyncio.run(session(served))
        assert (error.error.code, code) == ("upstream_response_too_large", 1011)
        assert "max_response_mb (1 MiB)" in error.error.message
        assert _session_line(served.server, status=502)["error"] == \
            "upstream_response_too_large"


def test_an_upstream_frame_that_is_no_json_is_scrubbed_of_the_providers_key(
        tmp_path: Path) -> None:
    """A frame cut short cannot be read for an error, yet may quote one: it is scrubbed
    as an error event is. An error event cut short reached the client with the
    provider's key in it."""
    async def session(served: Realtime) -> str:
        async with _raw(served) as websocket:
            await websocket.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": CUT_ERROR}]}}))
            await websocket.send(json.dumps({"type": "response.create"}))
            while True:
                frame = await asyncio.wait_for(websocket.recv(), 10)
                if isinstance(frame, str) and "Incorrect API key" in frame:
                    return frame

    with realtime_gateway(tmp_path / "gw") as served:
        frame = asyncio.run(session(served))
        assert served.upstream.api_key not in frame, frame


def test_a_clients_event_over_websocket_max_message_bytes_closes_the_session_1009(
        tmp_path: Path) -> None:
    """websocket_max_message_bytes: 65536 (the gateway's own cap, set on hypercorn, whose
    default of 16 MiB it was by chance): an event within it is passed on; one over it
    closes the session with 1009 (message too big), never passed on, the upstream closed
    and the session logged, with no traceback."""
    def item(size: int) -> str:
        return json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "x" * size}]}})

    async def session(served: Realtime) -> int | None:
        async with _raw(served) as websocket:
            await websocket.send(item(60_000))
            await _next(websocket, "conversation.item.created")
            await websocket.send(item(70_000))
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(websocket.recv(), 10)
            return _code(closed.value)

    with realtime_gateway(tmp_path / "gw",
                          settings="websocket_max_message_bytes: 65536") as served:
        assert asyncio.run(session(served)) == 1009
        line = _session_line(served.server)
        assert (line["status"], line["responses"]) == (200, 0)
        upstream = served.upstream.sessions[0]
        assert [event["type"] for event in upstream.events] == ["conversation.item.create"]
        for _ in range(100):  # the upstream's close, as the session ends
            if upstream.close_code is not None:
                break
            time.sleep(0.05)
        assert upstream.close_code == 1000
        assert "Traceback" not in served.server.log, served.server.log
