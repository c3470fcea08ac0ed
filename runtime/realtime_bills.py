"""What a Realtime session (runtime/realtime.py) bills: each response at the usage of its
``response.done``, or, cut short with none, at an estimate; each charged to the session's
tab (an empty reservation against its budgets, held between responses), to its rates'
holds (runtime/realtime_limits.py) and written to the ledger as a record of its own
(``<session id>:<n>``), the session's record (its access line and metrics) counting it.

    response.done -> ``done``: billed at its usage, the next tab held (refused: a budget
        ran out, and the session ends after it)
    the session's end with responses in flight -> ``cut``: each billed at its estimate
        (runtime/realtime_responses.py), a ledger record whose status says who ended it
        (502 its upstream, 499 its client or the gateway), as a chat stream cut short is
        its request's record (not ``estimated``, a call a request made and did not use:
        the client had its output); ``charge`` writes them with the session's settlement
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

from aigw.compiler.graph import ApiKey, Deployment

from .admission import Admission, admit
from .errors import BudgetExceeded, GatewayError, StoreUnavailable, Unauthorized
from .exchange import Exchange
from .identity import caller_in
from .providers.base import Usage
from .realtime_events import response_usage
from .realtime_limits import ResponseCounts, ResponseHolds
from .realtime_responses import Response
from .store.values import LedgerRecord
from .telemetry.record import RequestRecord
from .uncancelled import uncancelled

if TYPE_CHECKING:
    from .live import Live

log = logging.getLogger("aigw.realtime")


@dataclass(frozen=True, slots=True)
class Bill:
    """One response's bill: its tokens and cost, its holds (None: it had none) and its
    ledger record."""

    tokens: int
    cost: float
    held: ResponseHolds | None
    ledger: LedgerRecord


class Bills:
    """One session's responses billed, and the tab the next is charged to (``tab``)."""

    def __init__(self, exchange: Exchange, key: ApiKey, deployment: Deployment,
                 counts: ResponseCounts, current: Callable[[], Live]) -> None:
        self.exchange = exchange
        self.live = exchange.live
        self.record = exchange.record
        self.key = key
        self.deployment = deployment
        self.counts = counts
        self.current = current  # the gateway's live graph now (after any reload)
        self.tab: Admission | None = None
        self.responses = 0
        # The input of the last response done: what one cut short is billed as its input.
        self.last_prompt = Usage(0, 0)

    async def done(self, event: dict[str, object] | None,
                   relayed: Response | None) -> GatewayError | None:
        """Bill a ``response.done`` event's usage (``event``: None where it is no JSON) of
        ``relayed`` (None: the relay saw no response.created for it); the error that ends
        the session when its budget has run out (or its key was revoked), else None."""
        response = event.get("response") if event is not None else None
        if not isinstance(response, dict):
            # Billed at 0 tokens now: left unbilled, its holds (rpm, tpm, the quota) waited
            # for the session's end and refused the responses after it meanwhile. Its text
            # is not logged: it may hold what the user said.
            log.warning("realtime deployment '%s' sent a response.done the gateway cannot "
                        "read: billed at 0 tokens", self.deployment.name)
            response = {}
        usage = response_usage(response.get("usage"))
        if isinstance(response.get("usage"), dict):
            self.last_prompt = replace(usage, completion_tokens=0, audio_output_tokens=0)
        # Timed from its response.created: the model's time, as a call's is the upstream's.
        bill = self._counted(usage, relayed.created_at if relayed is not None
                             else time.perf_counter(), 200)
        # Billed whole though a shutdown cancels the session meanwhile: its tab settled at
        # the response's cost, not released by the session's end as if nothing was spent.
        await uncancelled(partial(self.charge, (bill,)), self.live.store.finish, again=True)
        self.live.telemetry.realtime_response(self.record, "done")
        return await self.next_tab()

    def cut(self, responses: list[Response], status: int) -> tuple[Bill, ...]:
        """The bills of the responses the session ends in the middle of (no response.done
        came: the upstream closed or dropped, the client left and the cancel went
        unanswered, the session stopped waiting), as failed responses of ``status``: they
        went unbilled, though the client had their output and the provider most likely
        billed them. No hold tells their tokens (a response holds none while it runs), so
        they are estimated: their output counted from the deltas relayed
        (``Response.estimate``), their input, which only a usage tells, taken to be the
        last response's (the conversation they read holds what it read, and grows: a
        floor; none for a session's first)."""
        counter = self.live.counter
        bills = tuple(self._counted(response.estimate(counter, self.last_prompt),
                                    response.created_at, status) for response in responses)
        if responses:
            self.record.responses_cut = len(responses)
        for _ in responses:
            self.live.telemetry.realtime_response(self.record, "cut")
        return bills

    async def charge(self, bills: tuple[Bill, ...]) -> None:
        """Responses' tokens charged to tpm, the tab settled at them and their ledger
        records written; safe to run again (a hold is settled once, a record id written
        once)."""
        if not bills:
            return
        try:
            for bill in bills:
                if bill.held is not None:
                    await bill.held.settle(bill.tokens)
            if self.tab is not None:
                await self.tab.settle(sum(bill.tokens for bill in bills),
                                      sum(bill.cost for bill in bills))
                self.tab = None
            store = await self.live.store.get()
            for bill in bills:
                await store.record(bill.ledger)
        except StoreUnavailable:  # a session is not ended for it: the next response is
            # billed as usual once the store answers
            log.error("realtime responses %s not billed: the store is unavailable",
                      ", ".join(bill.ledger.request_id for bill in bills))

    async def next_tab(self) -> GatewayError | None:
        """The next response's tab; the error that ends the session when it is refused,
        or when a reload removed the key (it stops spending, as a stream does). A store
        that cannot answer is not a budget run out (as for a stream: fail_closed refuses
        new requests, not one in flight): the response after is charged to no tab."""
        if caller_in(self.current().graph, self.key) is None:
            return Unauthorized("The API key was revoked during this session.")
        try:
            self.tab = await self._tab()
        except BudgetExceeded as exc:
            return exc
        except StoreUnavailable:
            log.error("realtime session %s holds no budget tab: the store is unavailable",
                      self.record.request_id)
        return None

    async def _tab(self) -> Admission:
        """An empty reservation against the session's budgets (none: nothing held), which
        the next response is charged to; refused (``BudgetExceeded``) once one is spent."""
        exchange = self.exchange
        assert exchange.admission is not None
        limits = tuple(replace(item, rpm=None, tpm=None, max_parallel=None)
                       for item in exchange.admission.limits if item.budget is not None)
        # A record of its own: a reservation's id is unique, and a refusal names its budget.
        tab_record = RequestRecord(f"{self.record.request_id}:tab{self.responses}",
                                   "realtime", self.record.graph)
        store = await self.live.store.get()
        try:
            tab = await admit(store, tab_record, limits, 0, 0.0)
        finally:
            if tab_record.budget_refused is not None:
                self.record.budget_refused = tab_record.budget_refused
        self.live.store.keep(tab)
        return tab

    def _counted(self, usage: Usage, started: float, status: int) -> Bill:
        """One more response of ``usage`` on the session's record (its access line and
        metrics), and its bill; ``started``: its response.created (perf_counter)."""
        record, live = self.record, self.live
        cost = usage.cost(self.deployment.price)
        self.responses += 1
        record.responses = self.responses
        record.prompt_tokens += usage.prompt_tokens
        record.completion_tokens += usage.completion_tokens
        record.cached_tokens += usage.cached_tokens
        record.audio_input_tokens += usage.audio_input_tokens
        record.audio_output_tokens += usage.audio_output_tokens
        record.cost += cost
        live.routing.of(self.deployment).add_usage(live.routing.clock(), usage.total_tokens)
        return Bill(usage.total_tokens, cost, self.counts.done(usage.total_tokens),
                    self._ledger_record(usage, cost, started, status))

    def _ledger_record(self, usage: Usage, cost: float, started: float,
                       status: int) -> LedgerRecord:
        record = self.record
        return LedgerRecord(
            request_id=f"{record.request_id}:{self.responses}", at=time.time(),
            key=record.key, team=record.team, user=self.exchange.user, route=record.route,
            deployment=self.deployment.name, tokens_in=usage.prompt_tokens,
            tokens_out=usage.completion_tokens, tokens_cached=usage.cached_tokens,
            tokens_audio_in=usage.audio_input_tokens,
            tokens_audio_out=usage.audio_output_tokens, cost=cost,
            latency_ms=round((time.perf_counter() - started) * 1000, 3), status=status,
            fingerprint=self.live.graph.fingerprint, batch=None)
