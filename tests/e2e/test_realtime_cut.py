"""A real ``aigw serve`` relaying OpenAI's Realtime API to its fake (tests/e2e/test_realtime.py
has the gateway): a response that ends with no ``response.done`` (its upstream closed or
dropped in the middle of it, or its client left and the cancel went unanswered) billed
all the same, at an estimate of what it relayed, as a failed response of its own in the
ledger, the spend, the session's access line and the metrics; and each response's time
to first token, from its ``response.create`` to its first output delta."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from aigw.runtime.tokens import TokenCounter

from ..conftest import DEV_KEY, metric_sample
from ..fakes.openai_realtime import (
    HALFWAY_CLOSE,
    HALFWAY_DROP,
    HALFWAY_GONE,
    HALFWAY_TEXT,
    HELD,
)
from .test_realtime import (
    RESPONSE_COST,
    Realtime,
    _session_line,
    connected,
    realtime_gateway,
    said,
    until,
)

pytestmark = pytest.mark.e2e

# A response cut after HALFWAY_TEXT and a second of audio (20 output audio tokens), the
# session's response before it having read 120 input tokens (20 cached, 80 audio): that
# input again, and what it relayed, at the deployment's prices (test_realtime.py's).
CUT_TEXT_TOKENS = TokenCounter().count(HALFWAY_TEXT)
CUT_COST = (20 * 4.0 + 20 * 0.4 + 80 * 32.0 + CUT_TEXT_TOKENS * 16.0 + 20 * 64.0) / 1_000_000


async def _ask(connection: Any, text: str) -> None:
    await connection.conversation.item.create(item={
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    await connection.response.create()


def _billed_as_cut(served: Realtime, status: int) -> None:
    """The session's second response was billed cut short with ``status``: a ledger
    record of its own (a failed response, as a chat stream cut short is a failed request),
    the key's spend, the access line, the metrics."""
    done, cut = served.server.ledger_rows(2)
    assert (done["status"], done["estimated"]) == (200, 0)
    assert (cut["status"], cut["estimated"]) == (status, 0)
    assert (cut["tokens_in"], cut["tokens_audio_in"]) == (120, 80)
    assert (cut["tokens_out"], cut["tokens_audio_out"]) == (CUT_TEXT_TOKENS + 20, 20)
    assert cut["cost"] == pytest.approx(CUT_COST)
    spend = httpx.get(f"{served.server.base_url}/admin/spend?group_by=key",
                      headers={"authorization": f"Bearer {DEV_KEY}"}).json()
    assert (spend["data"][0]["requests"], spend["data"][0]["errors"]) == (2, 1)
    assert spend["data"][0]["cost"] == pytest.approx(RESPONSE_COST + CUT_COST)
    line = _session_line(served.server)
    assert (line["responses"], line["responses_cut"]) == (2, 1)
    assert line["completion_tokens"] == 40 + CUT_TEXT_TOKENS + 20
    assert line["cost"] == pytest.approx(RESPONSE_COST + CUT_COST)
    metrics = httpx.get(f"{served.server.base_url}/metrics").text
    served_by = {"route": "realtime", "deployment": "gpt-realtime", "team": "_none"}  # dev's
    assert metric_sample(metrics, "aigw_realtime_responses_total", outcome="done",
                         **served_by) == 1
    assert metric_sample(metrics, "aigw_realtime_responses_total", outcome="cut",
                         **served_by) == 1
    assert metric_sample(metrics, "aigw_cost_total", **served_by) == pytest.approx(
        RESPONSE_COST + CUT_COST)


@pytest.mark.parametrize("cut_by", [HALFWAY_DROP, HALFWAY_CLOSE])
def test_a_response_its_upstream_ends_halfway_is_billed_as_cut(tmp_path: Path,
                                                               cut_by: str) -> None:
    """The upstream drops its connection (or closes it) after two words and a second of
    audio of a response, with no response.done: the response is billed at what it
    relayed (its text counted, its audio by its length) and the input of the response
    before it, a 502 ledger record. It went unbilled: no ledger record, no
    spend, no metrics, though the client had its output."""
    async def session(served: Realtime) -> list[Any]:
        async with connected(served, "realtime") as connection:
            await said(connection, "hi")
            await _ask(connection, cut_by)
            events = []
            with pytest.raises(ConnectionClosed):
                while True:
                    events.append(await asyncio.wait_for(connection.recv(), 10))
            return events

    with realtime_gateway(tmp_path / "gw") as served:
        kinds = [event.type for event in asyncio.run(session(served))]
        assert "response.output_audio.delta" in kinds and "response.done" not in kinds
        _billed_as_cut(served, 502)


def test_a_response_its_client_leaves_halfway_is_billed_as_cut(tmp_path: Path) -> None:
    """The client leaves after two words and a second of audio of a response; the
    upstream answers the gateway's response.cancel by dropping its connection, with no
    response.done: the response is billed as cut, a 499 (its client went first). It went
    unbilled."""
    async def session(served: Realtime) -> None:
        async with connected(served, "realtime") as connection:
            await said(connection, "hi")
            await _ask(connection, HALFWAY_GONE)
            await until(connection, "response.output_audio.delta")

    with realtime_gateway(tmp_path / "gw") as served:
        asyncio.run(session(served))
        _billed_as_cut(served, 499)
        assert served.upstream.sessions[0].events[-1]["type"] == "response.cancel"


def test_each_response_has_its_time_to_first_token(tmp_path: Path) -> None:
    """Each response's time from its response.create to its first output delta is
    observed in aigw_time_to_first_token_seconds, labelled by route, deployment and
    provider as a chat stream's is. An ask the upstream refuses (a response already
    active) starts no response: the response after it is timed from its own ask, not
    from the refused one, 1.5 s before. Realtime observed none."""
    async def session(served: Realtime) -> None:
        async with connected(served, "realtime") as connection:
            await said(connection, "hi")
            await _ask(connection, HELD)
            await until(connection, "response.output_text.delta")
            await connection.response.create(event_id="evt_busy")
            refused = await until(connection, "error")
            assert refused[-1].error.code == "conversation_already_has_active_response"
            await asyncio.sleep(1.5)  # a time the next response must not be charged
            await connection.input_audio_buffer.clear()
            await until(connection, "response.done")
            await said(connection, "again")

    with realtime_gateway(tmp_path / "gw") as served:
        asyncio.run(session(served))
        _session_line(served.server)
        metrics = httpx.get(f"{served.server.base_url}/metrics").text
        labels = {"route": "realtime", "deployment": "gpt-realtime", "provider": "openai"}
        count = metric_sample(metrics, "aigw_time_to_first_token_seconds_count", **labels)
        total = metric_sample(metrics, "aigw_time_to_first_token_seconds_sum", **labels)
        assert count == 3
        assert 0 < total < 1.5, total
