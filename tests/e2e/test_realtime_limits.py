"""A real ``aigw serve`` relaying OpenAI's Realtime API to its fake (tests/e2e/test_realtime.py
has the gateway), held to its key's limits and its deployment's own quota for the
session's whole life: each response counted against the rpm and tpm as a request is, one
over them refused in the session (an error event, the session kept open), a response the
upstream starts on its own (server VAD) cancelled when refused, the client told the
gateway's limits after each (not the provider's); ended, after its response in flight,
at its maximum length or its key's expiry; and dropped, its place given back, when its
client stops answering pings."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from aigw.compiler.keys import shown_moment

from ..conftest import DEV_KEY
from ..fakes.openai_realtime import CUT_DONE, ENDLESS, HELD, HOLLOW_DONE, SLOW, STUCK
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


async def _asked(connection: Any, text: str, event_id: str) -> None:
    await connection.conversation.item.create(item={
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    await until(connection, "conversation.item.created")
    await connection.response.create(event_id=event_id)


async def _third_refused(served: Realtime) -> tuple[Any, list[Any]]:
    """Two responses, then a third asked as ``evt_third``: what answered it (a refusal,
    in these tests), and the events up to a session.update after it (the session goes
    on)."""
    async with connected(served, "realtime") as connection:
        await said(connection, "hi")
        await said(connection, "again")
        await _asked(connection, "once more", "evt_third")
        refused = await asyncio.wait_for(connection.recv(), 10)
        await connection.session.update(session={"type": "realtime",
                                                 "instructions": "Be brief."})
        return refused, await until(connection, "session.updated")


def _refused_and_going_on(served: Realtime, refused: Any, after: list[Any],
                          unit: str) -> None:
    """The third response was refused by a limit of ``unit`` (an error event naming the
    event it refuses, not passed on), the session went on, and the two before it were
    billed."""
    assert (refused.type, refused.error.type, refused.error.code) == (
        "error", "rate_limit_error", "rate_limit_exceeded"), refused
    assert refused.error.event_id == "evt_third"
    assert unit in refused.error.message
    assert [event.type for event in after] == ["session.updated"]  # still open
    upstream = served.upstream.sessions[0]
    assert [event["type"] for event in upstream.events].count("response.create") == 2
    spend = httpx.get(f"{served.server.base_url}/admin/spend?group_by=key",
                      headers={"authorization": f"Bearer {DEV_KEY}"}).json()
    assert spend["data"][0]["requests"] == 2  # the two responses billed


@pytest.mark.parametrize(("limit", "unit", "store"), [
    ("rpm: 3", "RPM", "embedded"), ("tpm: 200", "TPM", "embedded"),
    ("tpm: 200", "TPM", "redis")])
def test_a_response_over_the_keys_rate_is_refused_and_the_session_goes_on(
        request: pytest.FixtureRequest, tmp_path: Path, limit: str, unit: str,
        store: str) -> None:
    """rpm 3: the connect and two responses fit, the third does not; tpm 200: a response
    uses 160 tokens, charged as it is done, so the second puts the bucket in debt and the
    third does not fit (on Redis too). The third response.create is answered an error
    event naming it, is not passed on, and the session goes on. A session's responses
    were never counted: a client ran as many as it liked in one socket."""
    settings = "" if store == "embedded" else \
        f'store: "{request.getfixturevalue("private_redis").url}"'

    with realtime_gateway(tmp_path / "gw", dev=f"limits: {{{limit}}}",
                          settings=settings) as served:
        refused, after = asyncio.run(_third_refused(served))
        _refused_and_going_on(served, refused, after, unit)


def test_a_response_the_upstream_starts_over_the_rate_is_cancelled(tmp_path: Path) -> None:
    """A response the upstream starts on its own (server VAD, at the end of a turn) counts
    as one the client asked for: over the rpm, it is cancelled upstream and the client
    gets an error event; its response.done, cancelled, is billed. It ran uncounted."""
    async def session(served: Realtime) -> list[Any]:
        async with connected(served, "realtime") as connection:
            await said(connection, "hi")
            await connection.input_audio_buffer.commit()
            return await until(connection, "response.done")

    with realtime_gateway(tmp_path / "gw", dev="limits: {rpm: 2}") as served:
        events = asyncio.run(session(served))
        kinds = [event.type for event in events]
        assert "error" in kinds and kinds.index("response.created") < kinds.index("error")
        assert events[kinds.index("error")].error.code == "rate_limit_exceeded"
        assert events[-1].response.status == "cancelled"
        upstream = served.upstream.sessions[0]
        cancel = upstream.events[-1]
        assert cancel["type"] == "response.cancel"
        assert cancel["response_id"] == events[kinds.index("response.created")].response.id
        assert len(served.server.ledger_rows(2)) == 2  # what it made, billed all the same


def test_a_response_under_the_rate_runs_and_counts(tmp_path: Path) -> None:
    """Under the rpm, a response the client asks for and one the upstream starts both run
    whole, and a third is refused: both were counted."""
    async def session(served: Realtime) -> tuple[list[Any], Any]:
        async with connected(served, "realtime") as connection:
            await connection.input_audio_buffer.commit()
            started = await until(connection, "response.done")
            await _asked(connection, SLOW, "evt_second")
            await until(connection, "response.done")
            await _asked(connection, "hi", "evt_third")
            return started, await asyncio.wait_for(connection.recv(), 10)

    with realtime_gateway(tmp_path / "gw", dev="limits: {rpm: 3}") as served:
        started, refused = asyncio.run(session(served))
        assert started[-1].response.status == "completed"
        assert (refused.type, refused.error.event_id) == ("error", "evt_third")


@pytest.mark.parametrize("named", [True, False])
def test_a_response_the_upstream_starts_after_it_refused_one_asked_is_counted(
        tmp_path: Path, named: bool) -> None:
    """rpm 3: the connect, a response, and a response.create the upstream refuses (a
    response is active) fill it; the response the upstream then starts on its own is the
    fourth request, cancelled. The refused ask stayed counted as waiting for its
    response.created, so the upstream's own response was taken for it and ran uncounted.
    With the client's event_id in the refusal, or none (then its code says which ask)."""
    async def session(served: Realtime) -> tuple[Any, list[Any]]:
        async with connected(served, "realtime") as connection:
            await _asked(connection, HELD, "evt_held")
            await until(connection, "response.output_text.delta")
            if named:
                await connection.response.create(event_id="evt_again")
            else:
                await connection.send({"type": "response.create"})
            while (refusal := await asyncio.wait_for(connection.recv(), 10)).type != "error":
                pass
            await connection.input_audio_buffer.clear()  # the held response ends
            await until(connection, "response.done")
            await connection.input_audio_buffer.commit()
            return refusal, await until(connection, "response.done")

    with realtime_gateway(tmp_path / "gw", dev="limits: {rpm: 3}") as served:
        refusal, events = asyncio.run(session(served))
        assert refusal.error.code == "conversation_already_has_active_response", refusal
        assert refusal.error.event_id == ("evt_again" if named else None)
        kinds = [event.type for event in events]
        assert "error" in kinds, kinds
        assert events[kinds.index("error")].error.code == "rate_limit_exceeded"
        assert events[-1].response.status == "cancelled"


@pytest.mark.parametrize(("quota", "unit", "store"), [
    ("rpm: 3", "RPM", "embedded"), ("tpm: 200", "TPM", "embedded"),
    ("tpm: 200", "TPM", "redis")])
def test_a_response_over_the_deployments_quota_is_refused_and_the_session_goes_on(
        request: pytest.FixtureRequest, tmp_path: Path, quota: str, unit: str,
        store: str) -> None:
    """The deployment's own quota, the key unlimited. rpm 3: the connect and two
    responses fit, the third does not; tpm 200: the second response's 160 tokens put the
    deployment in debt (on Redis too). The third response.create is answered an error
    event naming it and the deployment, is not passed on, and the session goes on. A
    session's responses never counted against its deployment: one socket drove it past
    its provider's quota."""
    settings = "" if store == "embedded" else \
        f'store: "{request.getfixturevalue("private_redis").url}"'

    with realtime_gateway(tmp_path / "gw", quota=quota, settings=settings) as served:
        refused, after = asyncio.run(_third_refused(served))
        _refused_and_going_on(served, refused, after, unit)
        assert "deployment 'gpt-realtime' is at its own quota" in refused.error.message


def test_a_sessions_tokens_are_charged_to_its_deployment_once(tmp_path: Path) -> None:
    """tpm 400 on the deployment: a session of two responses (320 tokens) leaves room for
    the next session's response. Each response's tokens are charged by its own hold; the
    session's hold, settled as it ends, charges only those of responses that had none (a
    guard: charged twice, the next session's connect found the deployment in debt)."""
    async def session(served: Realtime, turns: int) -> list[Any]:
        async with connected(served, "realtime") as connection:
            return [await said(connection, f"turn {turn}") for turn in range(turns)]

    with realtime_gateway(tmp_path / "gw", quota="tpm: 400") as served:
        asyncio.run(session(served, 2))
        assert len(served.server.ledger_rows(2)) == 2
        [after] = asyncio.run(session(served, 1))
        assert after[-1].response.status == "completed"


@pytest.mark.parametrize("unreadable", [CUT_DONE, HOLLOW_DONE])
def test_a_response_done_the_gateway_cannot_read_is_billed_at_no_tokens_now(
        tmp_path: Path, unreadable: str) -> None:
    """A response.done cut short (not JSON) or with no response object: its response is
    billed at 0 tokens as it comes (a ledger record, its holds on the rates and the
    deployment's quota settled) and a warning names the deployment, not what the event
    carried (the user's words); the session goes on, the next response billed as usual.
    It was dropped: no record of the response, its holds left to the session's end."""
    async def session(served: Realtime) -> list[Any]:
        async with connected(served, "realtime") as connection:
            await said(connection, "hi")
            await _asked(connection, unreadable, "evt_unreadable")
            while b'"response.done"' not in await asyncio.wait_for(
                    connection.recv_bytes(), 10):
                pass
            return await said(connection, "again")

    with realtime_gateway(tmp_path / "gw", dev="limits: {rpm: 10, tpm: 1000}",
                          quota="rpm: 10") as served:
        after = asyncio.run(session(served))
        assert after[-1].response.status == "completed"
        rows = served.server.ledger_rows(3)
        assert [(row["tokens_in"], row["tokens_out"]) for row in rows] == [
            (120, 40), (0, 0), (120, 40)]
        assert "realtime deployment 'gpt-realtime' sent a response.done the gateway " \
            "cannot read: billed at 0 tokens" in served.server.log
        assert unreadable not in served.server.log


def _rates(event: Any) -> dict[str, tuple[int, int]]:
    return {limit.name: (limit.limit, limit.remaining) for limit in event.rate_limits}


def test_the_client_is_told_the_gateways_rate_limits_after_each_response(
        tmp_path: Path) -> None:
    """The key's rpm 10 and tpm 1000: after each response.done the client gets a
    ``rate_limits.updated`` of the gateway's (the connect and each response a request, a
    response's 160 tokens charged at its done), as a chat answer's x-ratelimit-* headers
    tell it; the upstream's, of the provider's key, never reaches it. The provider's
    limits were passed on, and the gateway's never told."""
    async def session(served: Realtime) -> list[list[Any]]:
        async with connected(served, "realtime") as connection:
            turns = []
            for text in ("hi", "again"):
                await said(connection, text)
                turns.append(await until(connection, "rate_limits.updated"))
            await connection.session.update(session={"type": "realtime",
                                                     "instructions": "Be brief."})
            turns.append(await until(connection, "session.updated"))
            return turns

    with realtime_gateway(tmp_path / "gw", dev="limits: {rpm: 10, tpm: 1000}") as served:
        first, second, rest = asyncio.run(session(served))
        assert [event.type for event in first] == ["rate_limits.updated"]
        assert _rates(first[0]) == {"requests": (10, 8), "tokens": (1000, 840)}
        assert [event.type for event in second] == ["rate_limits.updated"]
        assert _rates(second[0])["requests"] in ((10, 7), (10, 8))  # one refilled meanwhile
        limit, remaining = _rates(second[0])["tokens"]
        assert limit == 1000 and 680 <= remaining < 840, remaining
        assert all(0 < limit.reset_seconds <= 60 for limit in second[0].rate_limits)
        assert [event.type for event in rest] == ["session.updated"]  # the upstream's: dropped


@pytest.mark.parametrize("store", ["embedded", "redis"])
def test_the_rate_limits_told_after_a_response_are_the_stores_then(
        request: pytest.FixtureRequest, tmp_path: Path, store: str) -> None:
    """The key's rpm 10 and tpm 1000; while a session's response runs, a second session
    on the same key connects and has a response (2 requests, 160 tokens). The first's
    ``rate_limits.updated`` after its response counts them: read from the store then
    (on Redis, what every replica took). It was the store's answer to the first's own
    response.create, less its own tokens: 8 requests and 840 tokens left, as if the
    second session had spent nothing."""
    settings = "" if store == "embedded" else \
        f'store: "{request.getfixturevalue("private_redis").url}"'

    async def sessions(served: Realtime) -> Any:
        async with connected(served, "realtime") as first:
            await _asked(first, ENDLESS, "evt_endless")
            await until(first, "response.created")
            async with connected(served, "realtime") as second:
                await said(second, "hi")
            await first.response.cancel()  # its response.done, billed its 160 tokens
            return (await until(first, "rate_limits.updated"))[-1]

    with realtime_gateway(tmp_path / "gw", dev="limits: {rpm: 10, tpm: 1000}",
                          settings=settings) as served:
        told = _rates(asyncio.run(sessions(served)))
        assert told["requests"] in ((10, 6), (10, 7)), told  # one refilled meanwhile
        limit, remaining = told["tokens"]
        assert limit == 1000 and 680 <= remaining < 760, remaining  # refilled 16.7 a second


def test_the_upstreams_rate_limits_are_not_passed_on(tmp_path: Path) -> None:
    """A key with no rpm nor tpm is told no rate limits, and not the provider's: the
    upstream's rate_limits.updated (its limits on the gateway's provider key, which
    every client shares) is dropped. It was passed on."""
    async def session(served: Realtime) -> list[Any]:
        async with connected(served, "realtime") as connection:
            await said(connection, "hi")
            await connection.session.update(session={"type": "realtime",
                                                     "instructions": "Be brief."})
            return await until(connection, "session.updated")

    with realtime_gateway(tmp_path / "gw") as served:
        after = asyncio.run(session(served))
        assert [event.type for event in after] == ["session.updated"]


def test_a_session_at_its_maximum_length_ends_after_its_response(tmp_path: Path) -> None:
    """realtime_max_session_s: 0.5, a response under way as it passes (one the fake
    answers until it is told to end it): the response goes on whole and is billed (a
    response.create meanwhile is refused: the session starts no more), then a
    session_expired error event and a 1001 close (as OpenAI closes a session past its
    own cap). A session went on as long as its client liked."""
    async def session(served: Realtime) -> tuple[list[Any], Any, Any, int | None, float]:
        async with connected(served, "realtime") as connection:
            await until(connection, "session.created")
            opened = time.monotonic()
            await _asked(connection, HELD, "evt_held")
            await until(connection, "response.output_text.delta")
            late = await _asked_until_expired(connection, opened + 0.5)
            await connection.input_audio_buffer.clear()  # the held response ends
            released = time.monotonic()
            events = await until(connection, "response.done")
            error = await asyncio.wait_for(connection.recv(), 10)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(connection.recv(), 10)
            return events, late, error, _code(closed.value), time.monotonic() - released

    with realtime_gateway(tmp_path / "gw", settings="realtime_max_session_s: 0.5") as served:
        events, late, error, code, lasted = asyncio.run(session(served))
        assert events[-1].response.status == "completed"
        assert late.error.code == "session_expired"
        assert (error.type, error.error.code) == ("error", "session_expired")
        assert "maximum duration of 0.5 seconds" in error.error.message
        assert code == 1001
        assert lasted < 5, lasted
        upstream = served.upstream.sessions[0]
        asked = [event.get("event_id") for event in upstream.events
                 if event["type"] == "response.create"]
        assert asked[0] == "evt_held" and late.error.event_id not in asked
        assert len(served.server.ledger_rows(1)) == 1
        assert _session_line(served.server)["status"] == 400


async def _asked_until_expired(connection: Any, ends_at: float) -> Any:
    """From ``ends_at`` (the session's end by the client's clock, which the gateway's
    reaches first: its session opened before the client had session.created), a
    response.create each time the one before was refused, until one is refused for the
    session's end (its error event, returned). One the gateway passed on (it had not yet
    acted on the session's end) is refused by the upstream: a response is active."""
    await asyncio.sleep(max(0.0, ends_at - time.monotonic()))
    for number in itertools.count(1):
        event_id = f"evt_late{number}"
        await connection.response.create(event_id=event_id)
        while (event := await asyncio.wait_for(connection.recv(), 10)).type != "error" or \
                event.error.event_id != event_id:
            pass
        if event.error.code == "session_expired":
            return event
        assert event.error.code == "conversation_already_has_active_response", event
    raise AssertionError("unreachable")


def test_a_session_at_its_end_waits_on_a_silent_upstream_no_longer_than_ten_seconds(
        tmp_path: Path) -> None:
    """realtime_max_session_s: 3, a response in flight that the upstream never ends
    (its response.created, then nothing): once the upstream has been silent for 10 s
    the session ends all the same (session_expired, 1001), its response billed as cut
    and its hold given back. It waited for that response.done for ever, the session open
    past its end."""
    async def session(served: Realtime) -> tuple[Any, int | None, float]:
        async with connected(served, "realtime") as connection:
            await until(connection, "session.created")
            opened = time.monotonic()
            await _asked(connection, STUCK, "evt_stuck")
            await until(connection, "response.created")
            error = await asyncio.wait_for(connection.recv(), 30)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(connection.recv(), 10)
            return error, _code(closed.value), time.monotonic() - opened

    with realtime_gateway(tmp_path / "gw", settings="realtime_max_session_s: 3") as served:
        error, code, lasted = asyncio.run(session(served))
        assert (error.type, error.error.code, code) == ("error", "session_expired", 1001)
        assert 10 <= lasted < 25, lasted
        line = _session_line(served.server)
        # The response it never ended, billed as cut (it relayed nothing, and the session
        # had no response before it to tell its input): a 499, the gateway's giving up.
        assert (line["responses"], line["responses_cut"]) == (1, 1)
        assert [(row["status"], row["tokens_in"], row["tokens_out"])
                for row in served.server.ledger_rows(1)] == [(499, 0, 0)]


def test_a_session_at_its_end_cancels_a_response_that_runs_on_after_thirty_seconds(
        tmp_path: Path) -> None:
    """realtime_max_session_s: 3, a response in flight that the upstream would stream for
    ever: 30 s past the session's end it is cancelled, its response.done (cancelled,
    with what was made) billed, and the session ends (session_expired, 1001). It ran
    on, and the session with it, as long as the upstream talked."""
    async def session(served: Realtime) -> tuple[Any, Any, int | None, float]:
        async with connected(served, "realtime") as connection:
            await until(connection, "session.created")
            opened = time.monotonic()
            await _asked(connection, ENDLESS, "evt_endless")
            events = await until(connection, "response.done")
            while (error := await asyncio.wait_for(connection.recv(), 10)).type != "error":
                pass
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(connection.recv(), 10)
            return events[-1], error, _code(closed.value), time.monotonic() - opened

    with realtime_gateway(tmp_path / "gw", settings="realtime_max_session_s: 3") as served:
        done, error, code, lasted = asyncio.run(asyncio.wait_for(session(served), 60))
        assert done.response.status == "cancelled"
        assert (error.error.code, code) == ("session_expired", 1001)
        assert 30 <= lasted < 50, lasted
        assert len(served.server.ledger_rows(1)) == 1


def test_a_sessions_key_expiring_ends_it_though_it_is_idle(tmp_path: Path) -> None:
    """A key's ``expires`` passing ends its open session, idle or not (after its
    response in flight, billed): a key_expired error event and a 3000 close, as a bad
    key's refusal. Revocation ended a session; expiry did not, ever."""
    caller = "sk-aigw-expiring"
    line = f"  expiring: {{sha256: {hashlib.sha256(caller.encode()).hexdigest()}}}\n"

    async def session(served: Realtime) -> tuple[Any, int | None]:
        async with connected(served, "realtime", caller) as connection:
            await said(connection, "hi")
            error = await asyncio.wait_for(connection.recv(), 15)
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(connection.recv(), 10)
            return error, _code(closed.value)

    with realtime_gateway(tmp_path / "gw", keys=line) as served:
        expires = int(time.time()) + 3  # from now: the gateway took its time to start
        config = served.server.root / "gateway.yaml"
        config.write_text(config.read_text().replace(
            line, line.replace("}\n", f", expires: '{shown_moment(expires)}'}}\n")))
        reloaded = httpx.post(f"{served.server.base_url}/admin/reload", timeout=30,
                              headers={"authorization": f"Bearer {DEV_KEY}"})
        assert reloaded.status_code == 200, reloaded.text
        error, code = asyncio.run(session(served))
        assert time.time() >= expires
        assert (error.type, error.error.code, code) == ("error", "key_expired", 3000)
        assert len(served.server.ledger_rows(1)) == 1
        assert _session_line(served.server)["status"] == 401


def test_a_client_that_stops_answering_pings_is_dropped_and_its_place_given_back(
        tmp_path: Path) -> None:
    """websocket_ping_interval_s: 0.5, max_parallel: 2. A client that answers the pings
    (the SDK's) stays, idle or not; one that has stopped reading (a raw socket that
    upgraded, then went quiet: a hung or vanished client) is closed with 1011 "keepalive
    ping timeout", its session ended and its place under max_parallel given back, so a
    third session is admitted. It held its place until TCP gave up (never, here)."""
    async def sessions(served: Realtime) -> tuple[list[Any], str]:
        async with connected(served, "realtime") as kept:
            await until(kept, "session.created")
            with _quiet_client(served) as quiet:
                await asyncio.sleep(2.5)  # five pings: the quiet one answered none
                async with connected(served, "realtime") as third:
                    created = await asyncio.wait_for(third.recv(), 10)
                ended = _read_to_end(quiet)
            return [created, *await said(kept, "still here")], ended

    with realtime_gateway(tmp_path / "gw", dev="limits: {max_parallel: 2}",
                          settings="websocket_ping_interval_s: 0.5") as served:
        events, ended = asyncio.run(sessions(served))
        assert events[0].type == "session.created"  # the quiet client's place, given back
        assert events[-1].type == "response.done"  # the answering client still served
        assert "keepalive ping timeout" in ended


@contextmanager
def _quiet_client(served: Realtime) -> Iterator[socket.socket]:
    """A client that opens a session (its handshake, answered 101) and then reads and
    sends nothing, so answers no ping."""
    port = int(served.server.base_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as quiet:
        quiet.sendall((
            "GET /v1/realtime?model=realtime HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            f"Authorization: Bearer {DEV_KEY}\r\n\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += quiet.recv(1)  # the handshake only: the events after it stay unread
        assert answer.startswith(b"HTTP/1.1 101"), answer
        yield quiet


def _read_to_end(quiet: socket.socket) -> str:
    """What the gateway sent the quiet client, to the connection's end (10 s at most)."""
    deadline = time.monotonic() + 10
    received = b""
    while time.monotonic() < deadline:  # a ping every interval, and no end: ends here
        quiet.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = quiet.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        received += chunk
    return received.decode("latin-1")
