"""A streamed answer (a transcription with ``stream=true``, speech with
``stream_format: "sse"``, an image with ``stream: true``) passed on to the client event by
event, as the provider sent them, and billed as it ends.

The request was held and routed as a whole answer is (runtime/route_call.py, with
``holds``); its stream is billed, and its deployment's own tpm settled, for the usage its
last event reports (``transcript.text.done``, ``speech.audio.done``,
``image_generation.completed``), else for the hold's estimate: a stream the client
left, or one the upstream broke off, is billed that estimate and recorded as cut (499,
or 503 in a shutdown). The upstream's answer is let go as soon as the client's stream
ends, however it ends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

import anyio
from starlette.responses import StreamingResponse

from aigw.compiler.graph import Route

from .admission import DeploymentQuotas, Hold
from .chat import bill_answer
from .errors import GatewayError, UpstreamError
from .exchange import BUDGET_CHECK_EVERY
from .providers.events import EventStream
from .route_call import answer_headers
from .routing.attempts import Won
from .sse import error_event, settled_stream
from .telemetry.record import UpstreamFailure
from .uncancelled import uncancelled

if TYPE_CHECKING:
    from .exchange import Exchange


async def passed_on(exchange: Exchange, route: Route,
                    routed: Callable[..., Awaitable[Won[EventStream]]]) -> StreamingResponse:
    """The ``text/event-stream`` response of the events ``routed`` (``call_route`` with
    all but ``release`` and ``holds``) opened; the request is billed, settled, recorded
    and finished when the stream ends."""
    holds: dict[str, Hold | None] = {}
    won = await routed(release=EventStream.cut, holds=holds)
    # Its first event is in (the attempt read it): the time to the first token, as a chat
    # stream's first delta. Without it a streamed transcription, speech or image was in
    # no latency a client waits on (aigw_request_duration_seconds leaves streams out).
    record = exchange.record
    record.ttft_s = time.perf_counter() - record.started
    hold = holds.pop(won.candidate.deployment.name, None)  # its losers' were settled
    headers = answer_headers(exchange, route, won)
    exchange.record.stream = True  # its record is finished by the stream, not the answer
    return await settled_stream(_events(exchange, won, hold), headers)


async def _events(exchange: Exchange, won: Won[EventStream],
                  hold: Hold | None) -> AsyncGenerator[bytes, None]:
    live, record, stream = exchange.live, exchange.record, won.value
    provider = won.candidate.deployment.provider
    usage = None
    ended = False
    watch, count = exchange.watches_budget, 0
    try:
        name, data = stream.first
        while True:
            usage = stream.billed(data, provider) or usage
            yield _event(name, data)
            count += 1
            if watch and count % BUDGET_CHECK_EVERY == 0:
                # As a chat stream's (stop_streams_over_budget): the rest is not sent, nor
                # billed but for the estimate. An image's few events never reach a check:
                # its one billable event is the completed image.
                await exchange.check_budget()
            record.waiting_upstream()
            try:
                name, data = await anext(stream.rest)
            except StopAsyncIteration:
                break
            finally:
                record.waited_upstream()
        ended = True
    except GatewayError as exc:  # after the status line: the error goes in the stream
        record.sent_status = record.status
        record.status, record.error = exc.status, str(exc.code)
        if isinstance(exc, UpstreamError):  # not a budget's stopping it, no upstream's fault
            deployment = won.candidate.deployment
            record.failures.append(UpstreamFailure(deployment.name, provider.name,
                                                   str(exc.code)))
        ended = True
        yield error_event(exc.body())
    finally:  # also when the client went away: the upstream cut, the call billed as such
        if not ended:
            record.sent_status = record.status
            record.status, record.error = live.shutdown.cut()
        # Shielded: a client that went away cancels the stream, not its settlement; and
        # a task cancelled outright (no anyio shield stops it) settles all the same.
        with anyio.CancelScope(shield=True):
            try:
                await stream.aclose()  # the upstream cut, if it was not at its end
            finally:
                try:  # the deployment's own tpm, as a chat stream's: what it used, known now
                    await uncancelled(partial(DeploymentQuotas.settle, hold, (
                        usage or stream.usage).total_tokens), live.store.finish, again=True)
                finally:
                    bill_answer(live, record, won if usage is None
                                else replace(won, value=replace(stream, usage=usage)))
                    try:
                        await exchange.close()
                    finally:
                        live.telemetry.finish(record)


def _event(name: str, data: str) -> bytes:
    """An event as the provider wrote it: its name where it gave one, its data's lines."""
    lines = "data: " + data.replace("\n", "\ndata: ")
    if name != "message":
        lines = f"event: {name}\n{lines}"
    return f"{lines}\n\n".encode()
