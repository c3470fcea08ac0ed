"""runtime/realtime_responses.py: a Realtime session's responses in flight, paired with
the client's asks, their first output timed and what they relayed estimated."""

from __future__ import annotations

from aigw.runtime.providers.base import Usage
from aigw.runtime.realtime_responses import InFlight, Response
from aigw.runtime.tokens import TokenCounter


def _created(response_id: str) -> dict[str, object]:
    return {"type": "response.created", "response": {"id": response_id}}


def _delta(response_id: str, delta: str) -> dict[str, object]:
    return {"type": "response.output_text.delta", "response_id": response_id, "delta": delta}


def test_a_response_is_timed_from_the_ask_it_answers() -> None:
    responding = InFlight()
    responding.asked("evt_1")
    response = responding.created(_created("resp_1"))
    assert response.asked_at < response.created_at
    first = responding.output(_delta("resp_1", "Hi"), audio=False)
    assert first is not None and first >= response.created_at - response.asked_at
    assert responding.output(_delta("resp_1", " there"), audio=False) is None  # not its first


def test_an_ask_the_upstream_refuses_times_no_response() -> None:
    responding = InFlight()
    responding.asked("evt_refused")
    responding.refused({"type": "error", "error": {"event_id": "evt_refused"}})
    response = responding.created(_created("resp_vad"))  # started by the upstream
    assert response.asked_at == response.created_at


def test_a_response_done_ends_its_own_response_or_the_oldest() -> None:
    responding = InFlight()
    first = responding.created(_created("resp_1"))
    second = responding.created(_created("resp_2"))
    assert responding.done({"response": {"id": "resp_2"}}) is second
    assert responding.done(None) is first  # no JSON: the oldest
    assert len(responding) == 0 and responding.done(None) is None


def test_what_is_left_in_flight_is_cut_with_its_output() -> None:
    responding = InFlight()
    responding.created(_created("resp_1"))
    responding.output(_delta("resp_1", "Hello there"), audio=False)
    responding.output({"type": "response.output_audio.delta", "response_id": "resp_1",
                       "delta": "AAAA" * 16_000}, audio=True)  # 48,000 bytes: a second
    (cut,) = responding.cut()
    assert len(responding) == 0
    usage = cut.estimate(TokenCounter(), Usage(120, 0, 20, audio_input_tokens=80))
    assert (usage.prompt_tokens, usage.cached_tokens, usage.audio_input_tokens) == (120, 20, 80)
    assert (usage.completion_tokens, usage.audio_output_tokens) == (2 + 20, 20)


def test_a_response_with_no_output_is_estimated_at_its_input_alone() -> None:
    usage = Response(0.0, 0.0).estimate(TokenCounter(), Usage(0, 0))
    assert (usage.prompt_tokens, usage.completion_tokens) == (0, 0)
