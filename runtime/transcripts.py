"""A transcript's texts through a route's output guardrails, in each format OpenAI answers.

    json           {"text": ...}
    verbose_json   its "text", each segment's "text" and each word's "word" (a redacted
                   text whose words were left as they came would still show them)
    text           the body
    srt, vtt       each cue's text lines; the cue numbers, timings and the WEBVTT header
                   are the format's, and are kept as they came (so are CRLF line endings)

What comes in pieces (srt's and vtt's cue lines, verbose_json's segments, its words) is
checked as the one text they make (``guard_joined``): a phrase said across two cues is
found, and a redaction lands in the cues (segments, words) it spans, each keeping its
place and timing. A transcript's texts are checked at once where a webhook is among the
guardrails, and a webhook is asked about each whole text, not about each of its words.
A body that is not the JSON its format says is checked whole, as text: a guardrail never
lets a transcript through unread.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from .guardrails import Check, checked_strings
from .jsonio import loads
from .providers.audio import TranscriptionResult

# Where a verbose_json's texts are: a field of the answer (index None), or the ``key``
# of the item ``index`` of the answer's list ``field``.
_Place = tuple[str, int | None, str]
# verbose_json's lists whose items' texts are the pieces of one text (read as it).
_PIECES = (("segments", "text"), ("words", "word"))


async def checked_transcript(response_format: str, result: TranscriptionResult,
                             check: Check) -> TranscriptionResult:
    """``result`` with its texts through ``check``; ``result`` itself when none changed."""
    text = result.body.decode("utf-8", errors="replace")
    if response_format in ("json", "verbose_json"):
        checked = await _checked_json(text, check)
    elif response_format in ("srt", "vtt"):
        checked = await _checked_cues(text, check)
    else:
        (checked,) = await check.texts((text,))
    return result if checked == text else replace(result, body=checked.encode())


async def _checked_json(text: str, check: Check) -> str:
    try:
        answer = loads(text)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return await _first(check, text)
    places: list[list[_Place]] = [[], *([] for _ in _PIECES)]
    odd: list[tuple[str, int, str]] = []  # no string (no OpenAI answer's): its strings
    if isinstance(answer.get("text"), str):
        places[0].append(("text", None, "text"))
    for pieces, (field, key) in zip(places[1:], _PIECES, strict=True):
        items = answer.get(field)
        for index, item in enumerate(items if isinstance(items, list) else ()):
            if isinstance(item, dict) and isinstance(item.get(key), str):
                pieces.append((field, index, key))
            elif isinstance(item, dict) and key in item:
                odd.append((field, index, key))
    texts = tuple(tuple(_get(answer, place) for place in group) for group in places)
    changed = False
    for group, olds, news in zip(places, texts, await check.joined(texts), strict=True):
        for (name, at, key), old, new in zip(group, olds, news, strict=True):
            if new != old:
                _put(answer, name, at, key, new)
                changed = True
    for name, position, key in odd:
        value = answer[name][position][key]
        found = await checked_strings(value, lambda one: _first(check, one))
        if found is not value:
            _put(answer, name, position, key, found)
            changed = True
    return json.dumps(answer) if changed else text


def _get(answer: dict[str, Any], place: _Place) -> str:
    field, index, key = place
    value = answer[field] if index is None else answer[field][index][key]
    assert isinstance(value, str)  # only strings are given a place
    return value


def _put(answer: dict[str, Any], field: str, index: int | None, key: str, value: Any) -> None:
    if index is None:
        answer[field] = value
    else:
        answer[field][index] = {**answer[field][index], key: value}


async def _first(check: Check, text: str) -> str:
    (checked,) = await check.texts((text,))
    return checked


async def _checked_cues(text: str, check: Check) -> str:
    """An SRT or WebVTT transcript with its cues' text lines checked, as one text.

    A CRLF transcript's lines are checked without their "\\r", which each keeps: read with
    it, the "\\r" stood where the space joining two cues goes (a phrase across them was
    not found), and a match that took it in took the line's ending out."""
    lines = text.split("\n")
    cues = [index for index, line in enumerate(lines) if (bare := line.strip())
            and not bare.isdigit() and "-->" not in bare
            and not (index == 0 and bare.startswith("WEBVTT"))]
    said = tuple(lines[index].removesuffix("\r") for index in cues)
    (checked,) = await check.joined((said,))
    for index, old, line in zip(cues, said, checked, strict=True):
        lines[index] = line + lines[index][len(old):]
    return "\n".join(lines)
