"""The Realtime relay's reading and writing of events (runtime/realtime.py): a frame's
event and its ``type``, the usage of a ``response.done``, and the ``error`` and
``rate_limits.updated`` events the gateway sends of its own.

A frame is classified by its event's ``type`` field, never by what its text contains: a
model's output may be any text (a delta of ``response.done``, a function's arguments
naming an event), and a client may escape any character of a type. Every frame is
parsed (pydantic-core): on this project's loaded dev machine that took 22 µs for a
6.5 KB audio delta and 370 µs for a 64 KB one, less than the four substring searches
it replaces (43 and 618 µs) and than a check of the frame's head that no second or
escaped ``"type"`` can fool (76 and 587 µs: it searches the frame for both).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from .errors import GatewayError
from .jsonio import loads
from .providers.base import Usage
from .store.values import RateStatus

# The first ``"type": "..."`` pair of a frame that is no JSON (one cut short): a quote
# inside a JSON string is escaped, so no text the frame carries reads as one.
_PAIR = re.compile(r'"type"\s*:\s*"([^"\\]*)"')


@dataclass(frozen=True, slots=True)
class Frame:
    """One text frame as the relay reads it: its event's ``type`` ("" where it names
    none) and the event (None: the frame is no JSON object)."""

    type: str
    event: dict[str, object] | None

    @property
    def carries_error(self) -> bool:
        """Whether the event has an error, which may quote the provider's key: an
        ``error`` event, a ``*.failed`` one's ``error``, a failed response's
        ``status_details.error``; and a frame that is no JSON object, whose text cannot
        be read for one (scrubbing it costs a search of a frame that is rare)."""
        if self.event is None:
            return True
        if "error" in self.event:
            return True
        response = self.event.get("response")
        details = response.get("status_details") if isinstance(response, dict) else None
        return isinstance(details, dict) and "error" in details


def read_frame(text: str) -> Frame:
    """``text``'s event and its type; a frame that is no JSON has the type of its first
    ``"type"`` pair (a ``response.done`` cut short is still one).

    >>> read_frame('{"type":"response.output_text.delta","delta":"response.done"}').type
    'response.output_text.delta'
    >>> read_frame('{"type":"response\\u002ecreate"}').type
    'response.create'
    >>> read_frame('{"type":"response.done","response":{"usa').type
    'response.done'
    """
    try:
        event = loads(text)
    except ValueError:
        event = None
    if not isinstance(event, dict):
        pair = _PAIR.search(text) if event is None else None
        return Frame(pair.group(1) if pair is not None else "", None)
    kind = event.get("type")
    return Frame(kind if isinstance(kind, str) else "", event)


def error_event(error: GatewayError, about: object = None) -> str:
    """OpenAI's ``error`` server event for ``error``; ``about``: the ``event_id`` of the
    client's event it refuses, where it gave one."""
    return json.dumps({"type": "error", "event_id": f"event_{os.urandom(12).hex()}",
                       "error": {"type": error.error_type, "code": error.shown_code,
                                 "message": error.message, "param": error.param,
                                 "event_id": about if isinstance(about, str) else None}})


def rates_event(rates: RateStatus) -> str:
    """OpenAI's ``rate_limits.updated`` server event for the gateway's ``rates``."""
    windows = (("requests", rates.requests), ("tokens", rates.tokens))
    return json.dumps({"type": "rate_limits.updated",
                       "event_id": f"event_{os.urandom(12).hex()}",
                       "rate_limits": [{"name": name, "limit": window.limit,
                                        "remaining": max(0, window.remaining),
                                        "reset_seconds": round(max(0.0, window.reset), 3)}
                                       for name, window in windows if window is not None]})


def response_usage(usage: object) -> Usage:
    """A ``response.done``'s ``response.usage``, as OpenAI's API reference gives it
    (``input_token_details``: ``cached_tokens``, ``audio_tokens``, and of the cached,
    ``cached_tokens_details.audio_tokens``; ``output_token_details.audio_tokens``); what
    it leaves out, or gives as no count, is 0. Its audio tokens: the input's not read
    from the cache, and the output's.

    >>> response_usage({"input_tokens": 120, "output_tokens": 40, "input_token_details": {
    ...     "cached_tokens": 20, "audio_tokens": 80}}).audio_input_tokens
    80
    """
    if not isinstance(usage, dict):
        return Usage(0, 0)
    given = _details(usage, "input_token_details")
    cached = _details(given, "cached_tokens_details")
    output = _details(usage, "output_token_details")
    fresh_audio = max(0, _count(given.get("audio_tokens")) - _count(cached.get("audio_tokens")))
    return Usage(_count(usage.get("input_tokens")), _count(usage.get("output_tokens")),
                 _count(given.get("cached_tokens")), audio_input_tokens=fresh_audio,
                 audio_output_tokens=_count(output.get("audio_tokens")))


def _details(usage: dict[str, object], name: str) -> dict[str, object]:
    found = usage.get(name)
    return found if isinstance(found, dict) else {}


def _count(value: object) -> int:
    return value if isinstance(value, int) and value > 0 else 0
