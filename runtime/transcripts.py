"""A transcript's texts through a route's output guardrails, in each format OpenAI answers.

    json           {"text": ...}
    verbose_json   its "text", each segment's "text" and each word's "word" (a redacted
                   text whose words were left as they came would still show them)
    text           the body
    srt, vtt       each cue's text lines; the cue numbers, timings and the WEBVTT header
                   are the format's, and are kept as they came

A body that is not the JSON its format says is checked whole, as text: a guardrail
never lets a transcript through unread.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from .guardrails import Check, checked_strings
from .providers.audio import TranscriptionResult


async def checked_transcript(response_format: str, result: TranscriptionResult,
                             check: Check) -> TranscriptionResult:
    """``result`` with its texts through ``check``; ``result`` itself when none changed."""
    text = result.body.decode("utf-8", errors="replace")
    if response_format in ("json", "verbose_json"):
        checked = await _checked_json(text, check)
    elif response_format in ("srt", "vtt"):
        checked = await _checked_cues(text, check)
    else:
        checked = await check(text) if text else text
    return result if checked == text else replace(result, body=checked.encode())


async def _checked_json(text: str, check: Check) -> str:
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        return await check(text) if text else text
    update: dict[str, Any] = {}
    if isinstance(answer.get("text"), str) and answer["text"]:
        update["text"] = await check(answer["text"])
    for field, key in (("segments", "text"), ("words", "word")):
        items = answer.get(field)
        if isinstance(items, list):
            update[field] = [await _checked_item(item, key, check) for item in items]
    changed = {name: value for name, value in update.items() if value != answer[name]}
    return json.dumps({**answer, **changed}) if changed else text


async def _checked_item(item: Any, key: str, check: Check) -> Any:
    if not isinstance(item, dict) or key not in item:
        return item
    return {**item, key: await checked_strings(item[key], check)}


async def _checked_cues(text: str, check: Check) -> str:
    """An SRT or WebVTT transcript with each cue's text lines checked, one at a time."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        bare = line.strip()
        if not bare or bare.isdigit() or "-->" in bare or (index == 0 and
                                                          bare.startswith("WEBVTT")):
            continue
        lines[index] = await check(line)
    return "\n".join(lines)
