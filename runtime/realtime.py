"""GET /v1/realtime?model=<route>: OpenAI's Realtime API, a WebSocket relayed to one of the
route's ``kind: realtime`` deployments.

    accept -> key (Authorization, or the browser's ``openai-insecure-api-key.<key>``
    subprotocol) -> route allowed -> Cedar invoke -> limits held (runtime/route_call.py)
    -> the upstream's WebSocket opened (the attempt loop: the group's next member when
    one cannot be reached; never after it is open) -> events relayed both ways, each
    ``response.done`` billed -> both ends closed, the session settled and logged

The WebSocket is accepted before anything is checked, as OpenAI's API does: a refusal
(a bad key, an unknown model, a route the key may not call, a limit, every upstream
down) is an ``error`` event in OpenAI's shape, then a close whose reason is the error's
``type.code`` (close codes in ``_CLOSE_CODES``). The upstream is opened with the
provider's key, never the client's; of the handshake only ``OpenAI-Beta`` is passed on
(it picks the protocol's version), and of the query only the parameters OpenAI's URL
takes besides ``model`` (``_PASSED``: ``intent``, ``call_id``); the upstream's error
events and close reason reach the client with that key scrubbed, as a call's upstream
error does.

A connection counts as one request at connect (rpm, and a place under max_parallel for
as long as it lasts), against its key's limits and its deployment's own quota, and each
response as one more against both (runtime/realtime_limits.py: the client's
``response.create`` counted before it is passed on, a response the upstream starts on
its own at its ``response.created``; one over the rpm or tpm is refused with an
``error`` event, the session kept open). Each ``response.done`` carries the response's
usage: its tokens are charged to both tpm then, and the client is sent a
``rate_limits.updated`` of the gateway's limits (the key's, team's and user's, as a chat
answer's ``x-ratelimit-*`` headers, read from the store then: what other sessions and
replicas took counts; none where none applies). The upstream's
``rate_limits.updated`` is dropped, not passed on: it tells the limits of the provider's
key, which every client shares, and no client's own. The response is billed at the
deployment's token prices (its audio tokens at ``audio_input`` and ``audio_output``,
which default to the text prices), charged to the budgets and written to the ledger as
a record of its own (``<session id>:<n>``; runtime/realtime_bills.py). A client that
leaves within a response has it cancelled upstream, and the ``response.done`` that
answers (``_CANCEL_WAIT_S``) billed. A response the session ends in the middle of, with
no ``response.done`` (its upstream closed or dropped, a cancel unanswered, a session
that stopped waiting), is billed at an estimate of what it relayed, a failed record
(502 where its upstream ended it, else 499; runtime/realtime_responses.py). When the
gateway stops, a session ends after its response in flight, closed with 1012.
Between responses the session holds an empty reservation against its budgets (the
*tab*); when the next one is refused, a budget ran out: the session is closed after the
response that spent it, with an ``insufficient_quota`` error event. A key a reload
removed ends its sessions the same way, and so does a key's ``expires`` (``key_expired``,
3000) or the session's maximum length, ``realtime_max_session_s`` (``session_expired``,
1001, as OpenAI closes a session past its own cap), waited for while the session is
idle too. A session that must end waits for its responses in flight while the upstream
sends their events, for ``_FINISH_WAIT_S`` at most (then they are cancelled, and their
``response.done`` billed); silent for ``_CANCEL_WAIT_S`` (a stuck upstream), it ends
without them. The access log has one line per session (its responses, those cut short,
tokens and cost), and the metrics count it as one request, each response's outcome
(``aigw_realtime_responses``) and time from its ``response.create`` to its first output
delta (``aigw_time_to_first_token_seconds``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
from starlette.datastructures import Headers, QueryParams
from starlette.websockets import WebSocket

from aigw.compiler.graph import ApiKey

from .admission import DeploymentQuotas, Hold
from .auth import authenticate
from .chat import new_record, resolve_route
from .errors import (
    BadRequest,
    BudgetExceeded,
    Cancelled,
    GatewayError,
    InternalError,
    SessionExpired,
    StoreUnavailable,
    UpstreamConnectionError,
    UpstreamError,
)
from .exchange import Exchange
from .providers.base import Usage
from .providers.realtime import RealtimeAdapter, RealtimeCall, realtime_adapter
from .realtime_bills import Bill, Bills
from .realtime_events import (
    Frame,
    error_event,
    rates_event,
    read_frame,
)
from .realtime_limits import ResponseCounts, outlived
from .realtime_responses import AUDIO_DELTAS, TEXT_DELTAS, InFlight
from .route_call import call_route
from .routing.attempts import Won
from .routing.candidates import AudioAsk, Candidate
from .telemetry.record import UpstreamFailure, answered_as
from .telemetry.tracing import Span
from .uncancelled import uncancelled
from .upstream import scrub, too_large

if TYPE_CHECKING:
    from .live import Gateway, Live

log = logging.getLogger("aigw.realtime")

# The browser's way to send a key (it cannot set headers on a WebSocket): a subprotocol.
KEY_PROTOCOL = "openai-insecure-api-key."
BETA_PROTOCOL = "openai-beta.realtime-v1"
# The query parameters OpenAI's /v1/realtime takes besides model (its API reference,
# "Realtime: connect"): ``intent`` (a transcription session) and ``call_id`` (joining a
# call). Passed on as given; nothing else of the client's query goes upstream (a key
# some clients put there, parameters the upstream might read in ways we do not know).
_PASSED = ("intent", "call_id")
_INTENTS = ("realtime", "transcription")
# A refusal's close code by its status: 3000 and 3003 are IANA's registered
# "Unauthorized" and "Forbidden" (OpenAI closes a bad key with 3000), 1013 "try again
# later" (a rate limit, an upstream at its own), 1011 the upstream's failure; the rest
# (a bad request, an unknown model, a spent budget) 1008, a policy violation.
_CLOSE_CODES = {401: 3000, 403: 3003, 429: 1013, 503: 1013}
POLICY_VIOLATION = 1008
SERVER_ERROR = 1011
SERVICE_RESTART = 1012  # the gateway is stopping: a client opens another session
_STOPPING = "the gateway is shutting down"
NORMAL = 1000
GOING_AWAY = 1001
# The close codes one end may send (RFC 6455 7.4; 1004-1006 and 1015 are never sent).
_SENDABLE = frozenset([*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)])
# What a client that leaves within a response has the upstream do (its response.done,
# with what was made, is then billed), and how long that response.done is waited for
# (and, by a session that must end, an upstream silent within a response).
_CANCEL = json.dumps({"type": "response.cancel"})
# A client's binary frame: OpenAI's Realtime events are JSON text (audio in base64).
_BINARY_REFUSED = BadRequest("The Realtime API takes events as JSON text frames: a binary "
                             "frame was not passed on.")
_CANCEL_WAIT_S = 10.0
# How long a session that must end lets its responses in flight run before it cancels
# them: an answer of a minute or so of audio goes on whole.
_FINISH_WAIT_S = 30.0


async def realtime(gateway: Gateway, websocket: WebSocket) -> None:
    """One Realtime session, on the graph live when it connected (a reload meanwhile
    serves new sessions; this one keeps its adapters until it ends)."""
    live = gateway.live
    live.in_flight.count += 1
    try:
        await _session(gateway, live, websocket)
    finally:
        live.in_flight.leave()


@dataclass(slots=True)
class _Opened:
    """An upstream WebSocket; ``usage`` is what the attempt loop bills a hedge's loser,
    closed as soon as it lost: nothing."""

    socket: aiohttp.ClientWebSocketResponse
    usage: Usage = field(default_factory=lambda: Usage(0, 0))
    closing: asyncio.Future[bool] | None = None  # a loser's close, kept while it runs


async def _session(gateway: Gateway, live: Live, websocket: WebSocket) -> None:
    offered = [name.strip() for value in websocket.headers.getlist("sec-websocket-protocol")
               for name in value.split(",")]
    headers = _headers(websocket.headers, offered)
    record = new_record(live, "realtime")
    answered_as(websocket.scope, record.request_id)  # the session's id, for its faults' line
    # The subprotocol a browser offers besides its key (OpenAI answers "realtime"); the
    # handshake's answer names the session's access line, as an HTTP answer does.
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else None,
                           headers=[(b"x-request-id", record.request_id.encode())])
    record.stream = True  # a session: timed as a stream is, from connect to close
    exchange = Exchange(live, record, headers, lambda: gateway.live)
    try:
        key, won, hold = await _open(exchange, headers, websocket.query_params,
                                     BETA_PROTOCOL in offered)
    except GatewayError as exc:
        await exchange.fail(exc)
        live.telemetry.refused(record, headers)
        live.telemetry.finish(record)
        await _refuse(websocket, exc)
        return
    except asyncio.CancelledError:
        await exchange.cancelled()
        live.telemetry.finish(record)
        raise
    except Exception:  # aigw's own fault (logged as the app's error): given back and
        # recorded all the same, rather than held until the hold expires
        await exchange.fail(InternalError("The gateway had an internal error."))
        live.telemetry.finish(record)
        raise
    await _Relay(exchange, key, won, hold, websocket, lambda: gateway.live).run()


def _headers(headers: Headers, offered: list[str]) -> Headers:
    """The handshake's headers, with a subprotocol's key as ``Authorization`` where the
    handshake has none (a browser's)."""
    given = next((name[len(KEY_PROTOCOL):] for name in offered
                  if name.startswith(KEY_PROTOCOL)), None)
    if given is None or "authorization" in headers:
        return headers
    return Headers(raw=[*headers.raw, (b"authorization", f"Bearer {given}".encode())])


async def _open(exchange: Exchange, headers: Headers, query: QueryParams,
                beta_protocol: bool) -> tuple[ApiKey, Won[_Opened], Hold | None]:
    """The caller's key and the upstream's WebSocket, opened through the route's members
    as any call is (its limits held, its policies asked); its deployment's tpm hold."""
    live = exchange.live
    key = await authenticate(live, headers)
    model = query.get("model")
    if not model:
        raise BadRequest("Missing required parameter: 'model' (the route, as "
                         "/v1/realtime?model=...).", param="model")
    passed = _passed(query)
    exchange.identify(key, None)
    route = resolve_route(live.graph, model)
    beta = beta_protocol or headers.get("openai-beta", "").strip().lower() == "realtime=v1"

    def call(candidate: Candidate, _texts: tuple[str, ...], _tokens: int) -> Callable[
            [], Awaitable[_Opened]]:
        # Opened when the attempt is made (after the deployment's own quota is taken).
        return partial(_connected, realtime_adapter(candidate.adapter, candidate.deployment),
                       RealtimeCall(candidate.deployment, beta, passed))

    holds: dict[str, Hold | None] = {}
    # Held at nothing: a session's tokens are unknown until its responses are done, and
    # each is charged as it is (the tab). The connection itself is the request counted.
    won = await call_route(exchange, key, route, kind="realtime", model=model,
                           prompt_tokens=0, ask=AudioAsk(live.adapters, "realtime", 0),
                           cost=lambda _deployment, _sent: 0.0, call=call, noted=_noted,
                           release=_let_go, holds=holds)
    return key, won, holds.pop(won.candidate.deployment.name, None)


def _passed(query: QueryParams) -> tuple[tuple[str, str], ...]:
    """The client's ``_PASSED`` parameters, for the upstream's URL; an ``intent`` OpenAI
    has not is a 400 here rather than the upstream's refused handshake."""
    intent = query.get("intent")
    if intent is not None and intent not in _INTENTS:
        raise BadRequest(f"Invalid value for 'intent': '{intent}' (expected one of "
                         f"{', '.join(_INTENTS)}).", param="intent")
    return tuple((name, query[name]) for name in _PASSED if name in query)


async def _connected(adapter: RealtimeAdapter, call: RealtimeCall) -> _Opened:
    return _Opened(await adapter.realtime(call))


def _noted(span: Span, opened: _Opened) -> None:
    """An attempt's span ends at the handshake: a session's usage is its record's."""


def _let_go(opened: _Opened) -> None:
    """A hedge's loser (open too late): closed in a task, as the attempt loop lets go of
    a loser without waiting (and the close waits for the upstream's close frame)."""
    opened.closing = asyncio.ensure_future(opened.socket.close())


async def _refuse(websocket: WebSocket, error: GatewayError) -> None:
    await websocket.send_text(error_event(error))
    await websocket.close(_close_code(error), _fitted(_reason(error)))


def _close_code(error: GatewayError) -> int:
    if isinstance(error, BudgetExceeded):
        return POLICY_VIOLATION  # not a wait: the budget's period has to turn
    if isinstance(error, SessionExpired):
        return GOING_AWAY  # as OpenAI closes one past its own cap
    return _CLOSE_CODES.get(error.status, SERVER_ERROR if error.status >= 500
                            else POLICY_VIOLATION)


def _reason(error: GatewayError) -> str:
    """The close reason OpenAI gives: the error's ``type.code``."""
    return f"{error.error_type}.{error.shown_code or ''}".rstrip(".")


def _fitted(reason: str) -> str:
    """``reason`` within the 123 bytes a close frame holds (an upstream's may be longer)."""
    return reason.encode()[:123].decode(errors="ignore")


def _ended_by(error: GatewayError) -> _Ending:
    return _Ending(_close_code(error), _reason(error), error=error)


@dataclass(slots=True)
class _Ending:
    """How the relay ended: the close code and reason each end is sent, the error event
    the client gets first (the gateway's own ending: a budget, a revoked key), and whether
    the upstream ended it (closed or dropped: its responses in flight failed there)."""

    client_code: int
    client_reason: str = ""
    upstream_code: int = NORMAL
    error: GatewayError | None = None
    upstream_ended: bool = False


class _Relay:
    """One open session: the client's frames to the upstream, the upstream's to the
    client, each ``response.done`` billed, until either end closes."""

    def __init__(self, exchange: Exchange, key: ApiKey, won: Won[_Opened], hold: Hold | None,
                 websocket: WebSocket, current: Callable[[], Live]) -> None:
        self.exchange = exchange
        self.current = current  # the gateway's live graph now (after any reload)
        self.live = exchange.live
        self.record = exchange.record
        self.key = key
        self.deployment = won.candidate.deployment
        self.won = won
        self.hold = hold
        self.upstream = won.value.socket
        self.websocket = websocket
        assert exchange.admission is not None  # held at connect, else no relay
        self.counts = ResponseCounts(self.live.store, self.record.request_id,
                                     exchange.admission.limits, self.deployment)
        self.bills = Bills(exchange, key, self.deployment, self.counts, current)
        self.billing: asyncio.Future[GatewayError | None] | None = None  # the last bill
        # Responses whose response.created has come and their response.done not yet (an
        # out-of-band one, ``conversation: none``, may run beside the conversation's).
        self.responding = InFlight()
        self.client_gone = False  # what the upstream sends now goes to no one
        # How the session ends once no response is in flight: the gateway is stopping, or
        # the session's key expired, or its maximum length passed.
        self.closing: _Ending | None = None
        self.opened_at = time.time()
        self.heard_at = time.monotonic()  # the upstream's last frame

    async def run(self) -> None:
        live, record = self.live, self.record
        record.responses = 0
        stats = live.routing.of(self.deployment)
        stats.observe_latency((live.routing.clock() - self.won.started) * 1000)  # connect
        ending = _Ending(NORMAL)
        try:
            stopped = await self.bills.next_tab()  # a budget spent by another since the connect
            if stopped is not None:
                ending = _ended_by(stopped)
            else:
                ending = await self._relayed()
        except Exception:  # aigw's own fault (logged as the app's error): the session ends
            # as a server error (1011) and is recorded as one, not as a session closed well
            ending = _Ending(SERVER_ERROR, "internal error",
                             error=InternalError("The gateway had an internal error."))
            raise
        finally:
            with anyio.CancelScope(shield=True):  # a shutdown past its grace: settled all the same
                await self._closed(ending)

    async def _relayed(self) -> _Ending:
        inbound = asyncio.ensure_future(self._from_client())
        outbound = asyncio.ensure_future(self._from_upstream())
        stop = asyncio.ensure_future(self.live.shutdown.began())
        deadline = asyncio.ensure_future(outlived(
            lambda: self.current().graph, self.key, self.opened_at,
            self.live.graph.settings.realtime_max_session_s))
        waited = {inbound, outbound, stop, deadline}
        # A session that must end, waiting on its responses in flight: no longer than
        # ``_waited_out`` says.
        finishing: asyncio.Future[None] | None = None
        try:
            while True:
                done, _pending = await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
                if outbound in done:
                    return outbound.result()
                if inbound in done:
                    break
                if finishing in done:  # a response never done (a stuck upstream, one
                    # that talks on) kept a session that had to end open for ever
                    await self.upstream.close()
                    assert self.closing is not None
                    return self.closing
                # The gateway is stopping (1012, so that its client opens another: it was
                # held open to the grace's end, then cut), or the session must end (its key
                # expired or was removed, its maximum length: it went on as long as its
                # client liked): now, or after the responses in flight (each billed by its
                # response.done).
                for ended in done:
                    waited.discard(ended)
                    self.closing = self.closing or (
                        _Ending(SERVICE_RESTART, _STOPPING) if ended is stop
                        else _ended_by(deadline.result()))
                if self.closing is not None and not self.responding:
                    await self.upstream.close()
                    return self.closing
                if finishing is None:
                    finishing = asyncio.ensure_future(self._waited_out())
                    waited.add(finishing)
            ending = inbound.result()
            if self.responding:
                # The client left within a response (it may have had all of its deltas):
                # the response is cancelled, and the response.done that answers, with what
                # the upstream bills, is read and billed by the other direction. It was
                # never billed.
                self.client_gone = True
                with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                    await self.upstream.send_str(_CANCEL)
                await asyncio.wait((outbound,), timeout=_CANCEL_WAIT_S)
            # Closed while its reader waits, which reads the close frame that answers:
            # cancelled, aiohttp's reader drops the connection (1006 upstream).
            await self.upstream.close(code=ending.upstream_code)
            return ending
        finally:
            tasks: list[asyncio.Future[Any]] = [inbound, outbound, stop, deadline]
            if finishing is not None:
                tasks.append(finishing)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _waited_out(self) -> None:
        """Returns when a session that must end stops waiting for its responses in
        flight: the upstream was silent ``_CANCEL_WAIT_S``, or they ran on
        ``_FINISH_WAIT_S`` and were cancelled ``_CANCEL_WAIT_S`` ago (a response.done
        that answers ends the session first, billed)."""
        try:
            await asyncio.wait_for(self._silent(_CANCEL_WAIT_S), _FINISH_WAIT_S)
            return
        except TimeoutError:
            pass
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):  # it is closing
            await self.upstream.send_str(_CANCEL)
        await asyncio.sleep(_CANCEL_WAIT_S)

    async def _silent(self, seconds: float) -> None:
        """Returns once the upstream has sent nothing for ``seconds``."""
        while (left := self.heard_at + seconds - time.monotonic()) > 0:
            await asyncio.sleep(left)

    async def _from_client(self) -> _Ending:
        """The client's frames, passed on as they come; its close, passed on too."""
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                # hypercorn reports 1006 for any close the app did not start (it keeps
                # the client's code to itself): the upstream is closed normally then.
                code = message.get("code", NORMAL)
                return _Ending(NORMAL, upstream_code=code if code in _SENDABLE else NORMAL)
            text = message.get("text")
            if text is None:  # refused, not passed on: the upstream might read the
                # event it holds, which the relay did not (a response.create, uncounted)
                await self.websocket.send_text(error_event(_BINARY_REFUSED))
                continue
            frame = read_frame(text)
            if frame.type == "response.create":
                if await self._refused(frame):
                    continue
                self.responding.asked((frame.event or {}).get("event_id"))
            try:
                await self.upstream.send_str(text)
            except (aiohttp.ClientError, ConnectionError):  # the upstream is closing: its
                # close frame (or its end) is what the other direction reads next
                return await asyncio.Future()  # the other direction ends the relay

    async def _refused(self, frame: Frame) -> bool:
        """Whether the client's ``response.create`` is refused by its rates (the client
        told so); it was passed on however many a session asked for."""
        event = frame.event or {}
        # A session ending after its responses in flight starts no more (else one more
        # each time kept it open past its end).
        refused = self.closing.error if self.closing is not None else None
        refused = refused or await self.counts.asked()
        if refused is None:
            return False
        await self.websocket.send_text(error_event(refused, event.get("event_id")))
        return True

    async def _from_upstream(self) -> _Ending:
        """The upstream's frames, passed on as they come, each ``response.done`` billed;
        its close code passed on, or the gateway's ending when the bill stops it."""
        while True:
            message = await self.upstream.receive()
            self.heard_at = time.monotonic()
            if message.type is aiohttp.WSMsgType.TEXT:
                ending = await self._passed_on(message.data)
            elif message.type is aiohttp.WSMsgType.BINARY:
                # Read as the text it holds, as a client's JSON parser reads it: a
                # response.done in one went to the client unbilled.
                try:
                    ending = await self._passed_on(message.data.decode())
                except UnicodeDecodeError:  # no event: nothing a client could read
                    log.warning("realtime deployment '%s' sent a binary frame that is no "
                                "UTF-8 text: dropped", self.deployment.name)
                    ending = None
            elif message.type is aiohttp.WSMsgType.CLOSE:
                code = message.data
                return _Ending(code if code in _SENDABLE else NORMAL,
                               scrub(message.extra or "", self.deployment.provider),
                               upstream_ended=True)
            else:  # CLOSED, ERROR: it went without a close frame, or aiohttp ended it
                error = self._broken(message.data)
                self.record.failures.append(UpstreamFailure(
                    self.deployment.name, self.deployment.provider.name, str(error.code)))
                return _Ending(SERVER_ERROR, _reason(error), error=error, upstream_ended=True)
            if ending is not None:
                return ending

    def _broken(self, cause: object) -> UpstreamError:
        """Why the upstream's socket ended with no close frame: an event larger than the
        provider's max_response_mb (aiohttp closed it, 1009), or the connection lost."""
        provider = self.deployment.provider
        if isinstance(cause, aiohttp.WebSocketError) and \
                cause.code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG:
            return too_large(provider, "an event")
        return UpstreamConnectionError(
            f"provider '{provider.name}' ended the session without closing it",
            provider=provider.name)

    async def _passed_on(self, data: str) -> _Ending | None:
        """One of the upstream's events passed on (its ``rate_limits.updated`` dropped)
        and acted on by its type; the relay's ending where a response.done's bill ends
        it."""
        frame = read_frame(data)
        if frame.carries_error:  # scrubbed as a call's upstream error is
            data = scrub(data, self.deployment.provider)
            # a response.create it refuses starts none: the next response.created is
            # not that one's, and is counted (one the upstream starts on its own)
            if frame.type == "error" and self.responding.refused(frame.event):
                self.counts.unasked()
        elif frame.type == "rate_limits.updated":
            return None  # the provider's limits: the client is told the gateway's
        elif frame.event is not None and (frame.type in TEXT_DELTAS or
                                          frame.type in AUDIO_DELTAS):
            first = self.responding.output(frame.event, frame.type in AUDIO_DELTAS)
            if first is not None:
                self.live.telemetry.first_token(self.record, first)
        if not self.client_gone:
            await self.websocket.send_text(data)
        if frame.type == "response.done":  # the bill first: what matters if both were
            # In a task the session's end waits for, not cancels: a client may leave as
            # soon as it has the response.done, and the bill (a store's round trips) was
            # cut with the relay, the response never billed.
            self.billing = asyncio.ensure_future(
                self.bills.done(frame.event, self.responding.done(frame.event)))
            stopped = await asyncio.shield(self.billing)
            rates = None if self.client_gone else await self.counts.rates()
            if rates is not None and not self.client_gone:
                await self.websocket.send_text(rates_event(rates))
            if stopped is not None:
                return _ended_by(stopped)
            if self.client_gone and not self.responding:  # those it left, billed
                return _Ending(NORMAL)
            if self.closing is not None and not self.responding:
                return self.closing
        elif frame.type == "response.created":
            self.responding.created(frame.event)
            await self._started(frame.event or {})
        return None

    async def _started(self, event: dict[str, object]) -> None:
        """A response the upstream started on its own (server VAD) counted; one its rates
        refuse is cancelled upstream (its response.done, with what was made, billed) and
        the client told. It ran uncounted, however many a session had."""
        refused = await self.counts.started()
        if refused is None:
            return
        response = event.get("response")
        cancel = {"type": "response.cancel"}
        if isinstance(response, dict) and isinstance(response.get("id"), str):
            cancel["response_id"] = response["id"]
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):  # it is closing
            await self.upstream.send_str(json.dumps(cancel))
        if not self.client_gone:
            await self.websocket.send_text(error_event(refused))

    async def _closed(self, ending: _Ending) -> None:
        """Both ends closed (the error event first), the session settled and logged."""
        record, live = self.record, self.live
        if self.billing is not None:  # finished, whatever ended the relay meanwhile
            await asyncio.gather(self.billing, return_exceptions=True)
        if ending.error is not None:
            record.status, record.error = ending.error.status, str(ending.error.code)
        try:
            await self.upstream.close(code=ending.upstream_code)
            try:
                if ending.error is not None:
                    await self.websocket.send_text(error_event(ending.error))
                await self.websocket.close(ending.client_code, _fitted(ending.client_reason))
            except (RuntimeError, OSError):  # the client has gone already
                pass
        finally:  # cancelled outright meanwhile (no anyio shield stops that): settled still
            # The responses it ends in the middle of billed (bills.cut), as failed ones.
            cut = self.bills.cut(self.responding.cut(), UpstreamError.status
                                 if ending.upstream_ended else Cancelled.status)
            await uncancelled(partial(self._settle, cut), live.store.finish, again=True)
        live.telemetry.finish(record)

    async def _settle(self, cut: tuple[Bill, ...]) -> None:
        """The ``cut`` responses billed and the session's holds settled at its tokens;
        safe to run again (each hold is settled once, a ledger record written once)."""
        record = self.record
        await self.bills.charge(cut)
        try:
            if self.bills.tab is not None:
                await self.bills.tab.release()
            await self.counts.close()
            if self.exchange.admission is not None:  # the place given back; to tpm, the
                # tokens of responses that had no hold of their own (refused, yet billed)
                await self.exchange.admission.settle(self.counts.unheld_tokens, 0.0)
            # Of the session's own hold on its deployment's quota, as of its admission's:
            # each response's tokens were charged by its own holds.
            await DeploymentQuotas.settle(self.hold, self.counts.unheld_tokens)
        except StoreUnavailable:
            log.error("could not settle realtime session %s: the store is unavailable",
                      record.request_id)
