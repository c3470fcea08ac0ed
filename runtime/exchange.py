"""One request's way through the serving core, whatever wire format it came in.

    open      authenticate's key + the parsed request -> route allowed? -> plan ->
              admit (rate limits and budgets reserved, all scopes at once)
    complete  / stream: the attempt loop (runtime/chat.py)
    close     settle the real tokens and cost, write the ledger record (durable before
              the response completes), finish the telemetry record
    fail      release the hold, write the ledger record, finish the telemetry record

Both /v1/chat/completions and /v1/messages drive an ``Exchange``, so limits, budgets,
the ledger and metrics behave the same whichever SDK the app uses.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import anyio
from starlette.datastructures import Headers

from aigw.compiler.graph import ApiKey, Deployment, Route

from .admission import (
    Admission,
    admit,
    check_route_allowed,
    ledger_record,
    subject_limits,
    worst_case,
)
from .chat import Plan, Served, complete, prepare, stream
from .chat_request import ChatRequest
from .errors import BudgetExceeded, GatewayError, StoreUnavailable
from .live import Live
from .policy_request import authorize
from .providers.base import ChatDelta, ChatResult
from .telemetry.record import RequestRecord

log = logging.getLogger("aigw.limits")

# How often (in streamed deltas) a stream checks that its budget has not run out.
_BUDGET_CHECK_EVERY = 16


class Exchange:
    def __init__(
        self,
        live: Live,
        record: RequestRecord,
        headers: Headers,
        current: Callable[[], Live] | None = None,
    ) -> None:
        self.live = live
        # The gateway's live snapshot now (after any reload), for limits that changed.
        self._current = current or (lambda: live)
        self._key_name: str | None = None
        self.record = record
        self.headers = headers
        self.user: str | None = None
        self.admission: Admission | None = None
        self.plan: Plan | None = None
        self._closed = False

    async def open(self, key: ApiKey, request: ChatRequest, route: Route | None = None) -> Plan:
        record, live = self.record, self.live
        record.key, record.team = key.name, key.team.name if key.team else None
        self._key_name = key.name
        self.user = request.user or self.headers.get(live.graph.settings.user_header) or None
        record.user = self.user
        plan = prepare(live, request, self.headers, record, route)
        check_route_allowed(key, plan.route)
        limits = subject_limits(key, self.user)
        tokens, cost = worst_case(plan.route, plan.prompt_tokens, request.output_limit)
        store = await live.store.get()
        plan = await authorize(live, store, key, self.user, plan, self.headers, limits)
        self.admission = await admit(store, record, limits, tokens, cost)
        self.plan = plan
        return plan

    def rate_headers(self) -> dict[str, str]:
        return self.admission.headers() if self.admission is not None else {}

    async def complete(self) -> tuple[Served, ChatResult]:
        assert self.plan is not None
        served, result = await complete(self.live, self.plan, self.record)
        await self.close()
        return served, result

    async def stream(self) -> tuple[Served, AsyncIterator[ChatDelta]]:
        assert self.plan is not None
        served, deltas = await stream(self.live, self.plan, self.record)
        return served, self._settled(deltas, served.deployment)

    async def _settled(
        self, deltas: AsyncIterator[ChatDelta], deployment: Deployment
    ) -> AsyncIterator[ChatDelta]:
        """The stream, settled when it ends or is cut; optionally stopped when over budget."""
        record = self.record
        streamed: list[str] = []
        billed = False
        watch = self.live.graph.settings.stop_streams_over_budget and self.admission is not None
        try:
            count = 0
            async for delta in deltas:
                if delta.usage is not None:
                    billed = True
                if delta.content:
                    streamed.append(delta.content)
                for call in delta.tool_calls:
                    streamed.append(call.arguments or "")
                count += 1
                if watch and count % _BUDGET_CHECK_EVERY == 0 and await self._over_budget():
                    raise BudgetExceeded("The budget ran out during this stream.")
                yield delta
        finally:
            if not billed:  # cut before the upstream reported usage: bill what was sent
                record.completion_tokens = self.live.counter.count("".join(streamed))
                record.cost = deployment.price.cost(record.prompt_tokens, record.completion_tokens)
            # Shielded: a client that went away cancels the stream, not its settlement.
            with anyio.CancelScope(shield=True):
                closer = getattr(deltas, "aclose", None)
                if closer is not None:
                    await closer()
                await self.close()

    async def _over_budget(self) -> bool:
        graph = self._current().graph
        key = next((k for k in graph.keys_by_sha256.values() if k.name == self._key_name), None)
        if key is None or self.admission is None:  # the key was removed: stop spending
            return True
        return await self.admission.over_budget(subject_limits(key, self.user))

    async def close(self) -> None:
        """Settle and record a served request (once)."""
        if self._closed:
            return
        self._closed = True
        record = self.record
        if self.admission is not None:
            try:
                await self.admission.settle(
                    record.prompt_tokens + record.completion_tokens, record.cost
                )
            except StoreUnavailable:
                log.error("could not settle %s: the store is unavailable", record.request_id)
        await self._write_ledger()

    async def fail(self, error: GatewayError) -> None:
        """Release the hold and record a failed request (once)."""
        record = self.record
        record.status, record.error = error.status, str(error.code)
        if self._closed:
            return
        self._closed = True
        if self.admission is not None:
            try:
                await self.admission.release()
            except StoreUnavailable:
                log.error("could not release %s: the store is unavailable", record.request_id)
        if record.key is not None:  # unauthenticated requests are not attributable
            await self._write_ledger()

    async def _write_ledger(self) -> None:
        try:
            store = await self.live.store.get()
            await store.record(ledger_record(self.record, self.live.graph, self.user))
        except StoreUnavailable:
            log.error("ledger record %s not written: the store is unavailable",
                      self.record.request_id)
