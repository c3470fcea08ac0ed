"""Output guardrails on a stream: what the client sees is checked before it goes out.

Each choice's text is held back by ``HOLD`` characters (and any match reaching into
them), so that a pattern split across chunks still matches: what is let through is
decided for good. Tool-call arguments are held to the end of their choice and checked
whole (a redaction inside JSON arguments replaces the matched text only). A route with
a webhook on its output holds each choice to its end: the checker sees the whole text
once, and the client gets it in one piece after the check.

A block ends the choice at once with ``finish_reason: content_filter``; what was let
through before it stays with the client (it was checked), the rest is dropped. The
upstream's stream is still read to its end, so the call is billed what the provider
billed, and ``on_block`` tells the exchange not to cache the answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from aigw.compiler.guardrail_graph import Guardrail

from .guardrails import GuardClient, Withheld, check_text, judge
from .providers.base import ChatDelta, ToolCallDelta, close_deltas
from .telemetry.record import RequestRecord

# Characters of a choice's text held back while its stream runs: a match up to this long
# is seen whole however the upstream split it. Longer ones may be let through in part.
HOLD = 256


@dataclass(slots=True)
class _Choice:
    text: str = ""
    # Tool calls by index: [id, name, arguments so far], released at the choice's end.
    calls: dict[int, list[str | None]] = field(default_factory=dict)
    ended: bool = False


async def guarded_stream(
    deltas: AsyncIterator[ChatDelta], guardrails: Sequence[Guardrail], whole: bool,
    record: RequestRecord, client: GuardClient, on_block: Callable[[], None],
) -> AsyncIterator[ChatDelta]:
    """``deltas`` with ``guardrails`` run over each choice; ``whole``: hold each choice
    to its end (a webhook checks the output)."""
    choices: dict[int, _Choice] = {}
    usage: ChatDelta | None = None
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
            if delta.finish_reason is None:
                out = _passing(delta, state, guardrails, whole, record)
                if out is not None:
                    yield out
                if state.ended:
                    on_block()
                    yield ChatDelta(delta.index, finish_reason="content_filter")
                continue
            try:
                yield await _ending(delta, state, guardrails, record, client)
            except Withheld:
                on_block()
                yield ChatDelta(delta.index, finish_reason="content_filter")
            state.ended = True
        for index, state in choices.items():  # an upstream that never said it finished
            if not state.ended and (state.text or state.calls):
                try:
                    yield await _ending(ChatDelta(index), state, guardrails, record, client)
                except Withheld:
                    on_block()
                    yield ChatDelta(index, finish_reason="content_filter")
        if usage is not None:
            yield usage
    finally:
        await close_deltas(deltas)


def _passing(delta: ChatDelta, state: _Choice, guardrails: Sequence[Guardrail], whole: bool,
             record: RequestRecord) -> ChatDelta | None:
    """What of a choice may go out mid-stream (None: nothing now)."""
    text = ""
    if not whole and state.text:
        judged = judge(guardrails, state.text, "output", record, hold=HOLD)
        if judged.blocked_by is not None:
            state.ended = True
            return None
        text, state.text = judged.text, state.text[judged.cut:]
    if text or delta.refusal is not None or delta.extra:
        # Log probabilities are left out: they would show what a redaction took out.
        return ChatDelta(delta.index, content=text or None, refusal=delta.refusal,
                         extra=delta.extra)
    return None


async def _ending(delta: ChatDelta, state: _Choice, guardrails: Sequence[Guardrail],
                  record: RequestRecord, client: GuardClient) -> ChatDelta:
    """The rest of a choice, checked whole, with its finish; or ``Withheld``."""
    text = await check_text(guardrails, state.text, "output", record, client) \
        if state.text else ""
    calls = []
    for index, (call_id, name, arguments) in sorted(state.calls.items()):
        if arguments:
            arguments = await check_text(guardrails, arguments, "output", record, client)
        calls.append(ToolCallDelta(index, id=call_id, name=name, arguments=arguments or ""))
    return ChatDelta(delta.index, content=text or None, tool_calls=tuple(calls),
                     finish_reason=delta.finish_reason, refusal=delta.refusal,
                     extra=delta.extra, stop_sequence=delta.stop_sequence)
