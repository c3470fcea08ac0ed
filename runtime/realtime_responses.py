"""The responses of a Realtime session in flight (runtime/realtime.py), from the client's
``response.create`` to their ``response.done``: when each was asked for, when its first
output came (its time to first token), and what output it relayed, which is what a
response cut short is billed.

    response.create (the client's, passed on) -> asked: its time kept, first come first
        paired with the next response.created (an ``error`` the upstream answers it with,
        naming its event_id, drops it)
    response.created -> in flight, timed from its ask (one the upstream started on its
        own, server VAD, from its response.created: there is no ask to time it from)
    response.*.delta -> its first: the time to first token; each: its output kept
    response.done -> billed at its usage, and no longer in flight

A response cut short has no ``response.done`` and so no usage: its upstream closed or
dropped in the middle of it, its client left and the upstream never answered the cancel,
or a session that had to end stopped waiting for it. The provider most likely billed it
all the same, and the client has what was relayed: it is billed at an estimate
(``Response.estimate``).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field, replace

from .providers.base import Usage
from .tokens import PCM16_BYTES_PER_SECOND, TokenCounter, base64_size, spoken_tokens

# The output deltas of OpenAI's Realtime events (GA names, then the beta protocol's):
# text (the model's text, a spoken answer's transcript, a function call's arguments),
# counted with the gateway's tokenizer; and audio (base64), counted by its length.
TEXT_DELTAS = frozenset({
    "response.output_text.delta", "response.output_audio_transcript.delta",
    "response.function_call_arguments.delta",
    "response.text.delta", "response.audio_transcript.delta",
})
AUDIO_DELTAS = frozenset({"response.output_audio.delta", "response.audio.delta"})


@dataclass(slots=True)
class Response:
    """One response in flight: when it was asked for and created (``time.perf_counter``),
    when its first output came (None: none yet), and the output relayed so far."""

    asked_at: float
    created_at: float
    first_output_at: float | None = None
    text: list[str] = field(default_factory=list)
    audio_bytes: int = 0

    def estimate(self, counter: TokenCounter, prompt: Usage) -> Usage:
        """What it is billed cut short: the output it relayed, its text counted as the
        gateway counts a chat stream's cut before its usage, its audio at OpenAI's
        ~20 tokens a second of assistant audio (``tokens.spoken_tokens``; pcm16 at
        24 kHz, the Realtime default: a g711 session's audio lasts 6 times as long as
        counted); and ``prompt``, what the caller knows of its input.

        >>> cut = Response(0.0, 0.0, text=["Hello", " there"], audio_bytes=48_000)
        >>> cut.estimate(TokenCounter(), Usage(120, 0, 20)).completion_tokens
        22
        """
        audio = spoken_tokens(self.audio_bytes, PCM16_BYTES_PER_SECOND) \
            if self.audio_bytes else 0
        text = counter.count("".join(self.text)) if self.text else 0
        return replace(prompt, completion_tokens=text + audio, audio_output_tokens=audio)


# The error code of a response.create refused while the conversation has a response
# running (OpenAI's Realtime API).
ACTIVE_RESPONSE = "conversation_already_has_active_response"


class InFlight:
    """A session's responses in flight, oldest first, by the response id the upstream
    gave them (a response.done that names none, or no JSON, ends the oldest)."""

    def __init__(self) -> None:
        self._asks: deque[tuple[str | None, float]] = deque()  # (event_id, when)
        self._responses: dict[str, Response] = {}
        self._unnamed = itertools.count(1)

    def __len__(self) -> int:
        return len(self._responses)

    def asked(self, event_id: object) -> None:
        """A client's ``response.create`` passed on (``event_id``: its own, if any)."""
        self._asks.append((event_id if isinstance(event_id, str) else None,
                           time.perf_counter()))

    def refused(self, event: dict[str, object] | None) -> bool:
        """An upstream ``error`` event: the ask it names (its ``error.event_id``) will
        start no response, so that the next response is not timed from it; whether it
        dropped one. An ask with no event_id refused because a response is active (the
        one refusal that names no event and is surely of a response.create) is the
        newest of those with none."""
        error = event.get("error") if event is not None else None
        if not isinstance(error, dict):
            return False
        about = error.get("event_id")
        if not isinstance(about, str):
            if error.get("code") != ACTIVE_RESPONSE:
                return False
            about = None
        for ask in reversed(self._asks):
            if ask[0] == about:
                self._asks.remove(ask)
                return True
        return False

    def created(self, event: dict[str, object] | None) -> Response:
        """A ``response.created``: of the client's oldest ask where one waits, else one
        the upstream started on its own."""
        now = time.perf_counter()
        asked_at = self._asks.popleft()[1] if self._asks else now
        response = Response(asked_at, now)
        self._responses[_response_id(event) or f"_{next(self._unnamed)}"] = response
        return response

    def output(self, event: dict[str, object], audio: bool) -> float | None:
        """An output delta kept; the response's time to first token (seconds) where it is
        its first output, else None."""
        response_id = event.get("response_id")
        response = self._responses.get(response_id) if isinstance(response_id, str) \
            else None
        if response is None:  # it names none the relay saw: the newest's
            if not self._responses:
                return None
            response = next(reversed(self._responses.values()))
        delta = event.get("delta")
        if isinstance(delta, str):
            if audio:
                response.audio_bytes += base64_size(delta)
            else:
                response.text.append(delta)
        if response.first_output_at is not None:
            return None
        response.first_output_at = time.perf_counter()
        return response.first_output_at - response.asked_at

    def done(self, event: dict[str, object] | None) -> Response | None:
        """A ``response.done``: the response it ends (None: none was in flight)."""
        response = self._responses.pop(_response_id(event) or "", None)
        if response is None and self._responses:
            return self._responses.pop(next(iter(self._responses)))
        return response

    def cut(self) -> list[Response]:
        """The responses still in flight, taken: the session ends without their
        ``response.done``."""
        responses = list(self._responses.values())
        self._responses.clear()
        return responses


def _response_id(event: dict[str, object] | None) -> str | None:
    response = event.get("response") if event is not None else None
    response_id = response.get("id") if isinstance(response, dict) else None
    return response_id if isinstance(response_id, str) else None
