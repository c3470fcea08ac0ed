"""Output guardrails on a stream: what the client sees is checked before it goes out.

Each choice's text is held back by ``HOLD`` characters (and any match reaching into
them), so that a pattern split across chunks still matches: what is let through is
decided for good, and its last ``HOLD`` characters are kept for the patterns that look
behind them (``(?<=password=)``). Tool-call arguments, a refusal and the fields aigw
passes on unread (a ``reasoning_content``, a legacy ``function_call``: their pieces
joined) are held to the end of their choice and checked whole (a redaction inside JSON
arguments replaces the matched text only). A route with a webhook on its output holds
each choice to its end: the checker sees the whole text once, and the client gets it
in one piece after the check.

A block ends the choice at once with ``finish_reason: content_filter`` (the request's
record and span say so too, as for a whole answer); what was let through before it
stays with the client (it was checked), the rest is dropped. The
upstream's stream is still read to its end, so the call is billed what the provider
billed, and ``on_block`` tells the exchange not to cache the answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aigw.compiler.guardrail_graph import Guardrail

from .guardrails import GuardClient, Withheld, check_text, checked_strings, judge
from .providers.base import ChatDelta, ToolCallDelta, close_deltas
from .telemetry.record import RequestRecord

# Characters of a choice's text held back while its stream runs: a match up to this long
# is seen whole however the upstream split it. Longer ones may be let through in part.
HOLD = 256


@dataclass(slots=True)
class _Choice:
    # The text held back, after the last HOLD characters that went out (``seen`` of them):
    # a pattern that looks behind it (``(?<=password=)``) sees what came before.
    text: str = ""
    seen: int = 0
    # Tool calls by index: [id, name, arguments so far], released at the choice's end.
    calls: dict[int, list[str | None]] = field(default_factory=dict)
    refusal: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # the pieces so far, joined
    ended: bool = False

    @property
    def held(self) -> bool:
        """Something of the choice waits to be checked."""
        return bool(len(self.text) > self.seen or self.calls or self.refusal or self.extra)


async def guarded_stream(
    deltas: AsyncIterator[ChatDelta], guardrails: Sequence[Guardrail], whole: bool,
    record: RequestRecord, client: GuardClient, on_block: Callable[[], None],
) -> AsyncIterator[ChatDelta]:
    """``deltas`` with ``guardrails`` run over each choice; ``whole``: hold each choice
    to its end (a webhook checks the output)."""
    choices: dict[int, _Choice] = {}
    usage: ChatDelta | None = None
    # The finishes that went out, for the record once a choice was withheld: it had the
    # upstream's (written as they came, under this stream), so a request span said
    # "stop" where the client got content_filter.
    finished: list[str] = []
    blocked = False

    def withhold(index: int) -> ChatDelta:
        nonlocal blocked
        on_block()
        blocked = True
        finished.append("content_filter")
        return ChatDelta(index, finish_reason="content_filter")

    async def ending(delta: ChatDelta, state: _Choice) -> ChatDelta:
        out = await _ending(delta, state, guardrails, record, client)
        if out.finish_reason is not None:
            finished.append(out.finish_reason)
        return out

    try:
        async for delta in deltas:
            if delta.usage is not None:  # last, after what a choice still holds
                usage = ChatDelta(usage=delta.usage)
                if delta == usage:
                    continue
            state = choices.setdefault(delta.index, _Choice())
            if state.ended:
                continue  # withheld: the rest of it is dropped
            if delta.content:
                state.text += delta.content
            for call in delta.tool_calls:
                held = state.calls.setdefault(call.index, [None, None, ""])
                held[0] = held[0] or call.id
                held[1] = held[1] or call.name
                held[2] = (held[2] or "") + (call.arguments or "")
            state.refusal += delta.refusal or ""
            if delta.extra:
                _join(state.extra, delta.extra)
            if delta.finish_reason is None:
                out = _passing(delta, state, guardrails, whole, record)
                if out is not None:
                    yield out
                if state.ended:
                    yield withhold(delta.index)
                continue
            try:
                yield await ending(delta, state)
            except Withheld:
                yield withhold(delta.index)
            state.ended = True
        for index, state in choices.items():  # an upstream that never said it finished
            if not state.ended and state.held:
                try:
                    yield await ending(ChatDelta(index), state)
                except Withheld:
                    yield withhold(index)
        if usage is not None:
            yield usage
    finally:
        await close_deltas(deltas)
        if blocked:  # after the upstream's stream (closed above) wrote its own
            record.finish_reasons = tuple(finished)


def _passing(delta: ChatDelta, state: _Choice, guardrails: Sequence[Guardrail], whole: bool,
             record: RequestRecord) -> ChatDelta | None:
    """What of a choice may go out mid-stream (None: nothing now)."""
    text = ""
    if not whole and len(state.text) > state.seen:
        judged = judge(guardrails, state.text, "output", record, hold=HOLD, seen=state.seen)
        if judged.blocked_by is not None:
            state.ended = True
            return None
        text = judged.text
        keep = max(0, judged.cut - HOLD)
        state.text, state.seen = state.text[keep:], judged.cut - keep
    if text:
        # Log probabilities are left out: they would show what a redaction took out.
        return ChatDelta(delta.index, content=text)
    return None


async def _ending(delta: ChatDelta, state: _Choice, guardrails: Sequence[Guardrail],
                  record: RequestRecord, client: GuardClient) -> ChatDelta:
    """The rest of a choice, checked whole, with its finish; or ``Withheld``."""

    async def check(text: str, seen: int = 0) -> str:
        return await check_text(guardrails, text, "output", record, client, seen) \
            if len(text) > seen else ""

    text = await check(state.text, state.seen)
    calls = [ToolCallDelta(index, id=call_id, name=name, arguments=await check(arguments or ""))
             for index, (call_id, name, arguments) in sorted(state.calls.items())]
    refusal = await check(state.refusal)
    extra = await checked_strings(state.extra, check) if state.extra else None
    return ChatDelta(delta.index, content=text or None, tool_calls=tuple(calls),
                     finish_reason=delta.finish_reason, refusal=refusal or None, extra=extra,
                     stop_sequence=delta.stop_sequence)


def _join(held: dict[str, Any], piece: Mapping[str, Any]) -> None:
    """Add a delta's unread fields to what a choice holds, as a client joins them: strings
    are pieces of one text (``reasoning_content``, ``function_call.arguments``), objects
    are joined field by field, lists are items more; anything else, the last one given."""
    for name, value in piece.items():
        before = held.get(name)
        if isinstance(before, str) and isinstance(value, str):
            held[name] = before + value
        elif isinstance(value, Mapping):
            held[name] = before if isinstance(before, dict) else {}
            _join(held[name], value)
        elif isinstance(before, list) and isinstance(value, list):
            held[name] = before + value
        else:
            held[name] = value
