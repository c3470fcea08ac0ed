"""One request's way through the serving core, whatever wire format it came in.

    open      authenticate's key + the parsed request -> route allowed? -> plan ->
              admit (rate limits and budgets reserved, all scopes at once; on a route
              whose cache may answer it, its count only: rpm and max_parallel)
              -> input guardrails
    complete  / stream: the route's response cache (runtime/response_cache.py; on an
              exact miss, the same request's flight in this process if one is in the
              air: runtime/cache_flights.py; then its semantic lookup:
              runtime/semantic_cache.py), then, on a miss, its tokens and cost held
              and the attempt loop (runtime/chat.py)
    close     settle the real tokens and cost, write the ledger record (durable before
              the response completes), finish the telemetry record
    fail      release the hold, write the ledger record, finish the telemetry record

Calls the attempt loop cut short (or hedges' losers) are billed either way: settled
with the request, to its budgets, each with an estimated ledger record of its own.

/v1/chat/completions, /v1/completions, /v1/messages and /v1/responses all drive an
``Exchange``, so limits, budgets, the ledger and metrics behave the same whichever SDK
the app uses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import anyio
from starlette.datastructures import Headers
from starlette.responses import Response

from aigw.compiler.graph import ApiKey, Deployment, Route
from aigw.compiler.guardrail_graph import Guardrail

from .admission import (
    Admission,
    admit,
    admit_counted,
    budget_label,
    budget_remaining,
    check_route_allowed,
    cut_records,
    cut_totals,
    ledger_record,
    worst_case,
)
from .cache_flights import landed
from .chat import (
    Plan,
    Served,
    complete,
    new_record,
    overhead_header,
    prepare,
    stream,
    upstream_id_header,
)
from .chat_request import ChatRequest
from .errors import (
    BadRequest,
    BudgetExceeded,
    Cancelled,
    GatewayError,
    InternalError,
    ShutDown,
    StoreUnavailable,
    Unauthorized,
)
from .guardrail_stream import guarded_stream
from .guardrails import guard_request, guard_result
from .identity import caller_in
from .incoming import unless_gone
from .live import Live
from .policy_request import authorize
from .providers.base import ChatDelta, ChatResult, Usage, close_deltas
from .response_cache import (
    CachedAnswer,
    StreamedAnswer,
    cache_key,
    cacheable,
    decode_answer,
    encode_answer,
    lookup_kind,
    may_store,
    model_key,
    replay,
)
from .routing.candidates import ChatAsk
from .routing.choice import first_choice
from .semantic_cache import Embedded, SemanticAsk, embed_conversation, nearest, semantic_ask
from .telemetry.faults import log_fault
from .telemetry.record import RequestRecord, answered_as
from .tokens import audio_prompt_tokens
from .uncancelled import uncancelled

log = logging.getLogger("aigw.limits")
R = TypeVar("R")

# How often (in streamed deltas) a stream checks that its budget has not run out.
BUDGET_CHECK_EVERY = 16
# The longest end-user name (a body's ``user``, or the user header): it is a Cedar
# entity's id, a ledger field and a limits scope, so one of megabytes was stored and
# counted under. OpenAI documents no cap; its own ids are far shorter.
MAX_USER = 256


def end_user(given: str | None, headers: Headers, user_header: str) -> str | None:
    """The end user a request is for: the body's ``user``, else the user header; every
    endpoint (a pipeline's and an A2A task's too) reads it here, so the cap holds for all.

    >>> end_user(None, Headers({"x-aigw-user": "alice"}), "x-aigw-user")
    'alice'
    """
    if given:
        if len(given) > MAX_USER:
            raise BadRequest("Invalid 'user': string too long. Expected a string with "
                             f"maximum length {MAX_USER}, but got a string with length "
                             f"{len(given)} instead.", param="user")
        return given
    header = headers.get(user_header)
    if header and len(header) > MAX_USER:
        raise BadRequest(f"The {user_header} header is too long: an end user's name is "
                         f"at most {MAX_USER} characters; it has {len(header)}.")
    return header or None


class Exchange:
    def __init__(
        self,
        live: Live,
        record: RequestRecord,
        headers: Headers,
        current: Callable[[], Live] | None = None,
        gone: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.live = live
        # Returns once the client has gone (None: never known); only after the body is
        # read, as it takes the ASGI messages that follow it.
        self.gone = gone
        # The gateway's live snapshot now (after any reload), for limits that changed.
        self._current = current or (lambda: live)
        self._caller: ApiKey | None = None
        self.record = record
        self.headers = headers
        self.user: str | None = None
        self.admission: Admission | None = None
        self.plan: Plan | None = None
        self._cache_key: str | None = None  # set when the route caches answers
        self._route_key: str | None = None  # the same, of any model (RouteCache.by_model)
        # On a route whose deployments are not one model: the model of the member it is
        # routed to first, whose answers alone it is served.
        self._model: str | None = None
        self._storing = False  # this request's answer may be cached (no Cache-Control no-store)
        self._key: ApiKey | None = None
        self._semantic: SemanticAsk | None = None  # on a route with a semantic cache
        self._embedded: Embedded | None = None  # the conversation's, kept with the answer
        self._closed = False
        # Admitted by its count alone (its route's cache may answer it): its tokens and
        # cost are held by ``_hold`` once the cache did not.
        self._unheld = False
        # The flight this request leads: identical misses wait for its answer to be kept.
        self._flight: asyncio.Event | None = None
        # A call made on behalf of another request (``beside``): its client's request
        # and place in flight are that request's, so it holds tokens and cost only.
        self._on_behalf = False

    async def open(self, key: ApiKey, request: ChatRequest, route: Route | None = None) -> Plan:
        record, live = self.record, self.live
        self.identify(key, request.user)
        plan = prepare(live, request, self.headers, record, route)
        check_route_allowed(key, plan.route)
        limits = self.live.scopes.limits(key, self.user)
        store = await live.store.get()
        plan = await authorize(live, store, key, self.user, plan, self.headers, limits)
        record.cache = lookup_kind(self.headers, plan.route)
        self._unheld = record.cache == "miss"
        tokens, cost = _worst_case(plan, request)
        if self._unheld:
            # The cache may answer it, and a hit calls no upstream: it spends no tokens
            # and no money, so it needs no room under tpm nor in a budget (a key whose
            # budget ran out is still served what its team has cached). Its tokens and
            # cost are held once the lookup missed (``_hold``). It still counts against
            # rpm and takes a place under max_parallel, as LiteLLM and Portkey count a
            # hit: rpm is how often a key may make the gateway work (policy, the input
            # guardrails' checkers, the lookup, a semantic lookup's embedding), and the
            # requests per minute an app counts are all of its requests.
            self.admission = admission = await admit_counted(store, record, limits)
        else:
            self.admission = admission = await admit(store, record, limits, tokens, cost)
        live.store.keep(admission)
        guards = plan.route.guardrails
        if guards is not None and guards.input:  # after the limits: a caller over them
            # never reaches a checker, however often it asks (a 429 costs no webhook call;
            # on a route that caches, over its rpm: a checker sees at most that many)
            held = plan.prompt_tokens
            plan = await self._guarded(plan, guards.input)
            request = plan.request
            if plan.prompt_tokens > held and not self._unheld:  # a redaction longer than
                # what it took out: the hold covers what is sent, which the upstream bills
                more, dearer = _worst_case(plan, request)
                await self.grow(more - tokens, dearer - cost)
        if not self._unheld and plan.gate is not None and plan.gate.budget_pending:
            plan.gate.learn_budget(admission.reservation.budget_remaining
                                   if admission.reservation is not None else None)
        self.plan = plan
        if record.cache is not None:
            assert plan.route.cache is not None
            self._route_key = cache_key(plan.route, request, key)
            if plan.route.cache.by_model and record.cache == "miss":
                if plan.gate is not None and plan.gate.budget_pending:  # route policies
                    # that read the budget left choose the member: no hold brings it yet
                    plan.gate.learn_budget(await budget_remaining(store, limits))
                self._model = self._routed_model(plan)
            self._cache_key = model_key(self._route_key, self._model)
            self._storing = may_store(self.headers, plan.route, key)
            semantic = plan.route.cache.semantic if plan.route.cache is not None else None
            # A key that may not call the embeddings route (AGW346) is looked up exactly
            # only, rather than refused an embedding (a ledger record) every request.
            if record.cache == "miss" and semantic is not None and (
                    key.routes is None or semantic.embeddings in key.routes):
                self._key = key
                last = live.counter.count_messages(request.messages[-1:])  # what is embedded
                self._semantic = semantic_ask(plan.route, request, key, last)
        return plan

    def _routed_model(self, plan: Plan) -> str | None:
        """The model of the member the attempt loop would call first for ``plan`` now
        (None: none), read from a shadow of the routing state (a round robin unmoved)."""
        route = plan.route
        if route.group is None:
            return None
        live = self.live
        ask = ChatAsk(live.adapters, route, plan.request, plan.prompt_tokens)
        chosen = first_choice(live.graph, route.group, ask, live.routing.shadow(), plan.gate)
        return chosen.deployment.model if chosen is not None else None

    async def _guarded(self, plan: Plan, guardrails: tuple[Guardrail, ...]) -> Plan:
        """``plan`` with its request's messages and tool definitions through the input
        guardrails (a block is ``GuardrailBlocked``); a redacted prompt is counted again,
        as what is sent."""
        request = await guard_request(guardrails, plan.request, self.record, self.live.guard)
        if request is plan.request:
            return plan
        tokens = self.record.prompt_tokens = self.live.counter.count_request(request)
        return Plan(plan.route, request, tokens, plan.deadline, plan.gate)

    def beside(self, endpoint: str) -> Exchange:
        """An exchange of its own for a call this request makes on its behalf (its
        semantic cache's embedding): the same headers and client, another record."""
        # Not watched for the client's leaving: the request it serves watches, and
        # receive() has one reader.
        side = Exchange(self.live, new_record(self.live, endpoint), self.headers,
                        self._current)
        side._on_behalf = True
        return side

    def identify(self, key: ApiKey, user: str | None) -> None:
        """Whose request this is (for the ledger record, a refusal's too): ``key``, its
        team, and the end user the body names (``user``) or the user header does."""
        record = self.record
        record.key, record.team = key.name, key.team.name if key.team else None
        self.user = end_user(user, self.headers, self.live.graph.settings.user_header)
        record.user = self.user
        self._caller = key

    async def admit(self, key: ApiKey, tokens: int, cost: float) -> None:
        """Hold ``key``'s limits (its team's and the end user's too) for an identified
        request that is not a chat completion; ``close`` settles it, ``fail`` gives it
        back."""
        store = await self.live.store.get()
        limits = self.live.scopes.limits(key, self.user)
        if self._on_behalf:  # counted as one more request, it halved a key's rpm, and
            # with max_parallel: 1 it was refused the place its own request holds
            limits = tuple(replace(item, rpm=None, max_parallel=None) for item in limits)
        self.admission = await admit(store, self.record, limits, tokens, cost)
        self.live.store.keep(self.admission)

    async def grow(self, tokens: int, cost: float) -> None:
        """Hold ``tokens`` and ``cost`` more (where either is more than nothing) for the
        request ``admit`` held: what its input guardrails send weighs more than it did."""
        if self.admission is not None and (tokens > 0 or cost > 0):
            await self.admission.grow(self.record, tokens, cost)

    def answer_headers(self, served: Served) -> dict[str, str]:
        """An OpenAI-format answer's headers: who served it, the key's rate limits, the
        cache's verdict and the gateway's overhead so far (so, taken last). In one
        dict, the cache asked only on a route that has one: every answer pays for this."""
        admission, record = self.admission, self.record
        return {**served.headers(), **(admission.headers() if admission is not None else {}),
                **(self.cache_headers() if record.cache is not None else {}),
                **upstream_id_header(record), **overhead_header(record)}

    def rate_headers(self) -> dict[str, str]:
        return self.admission.headers() if self.admission is not None else {}

    def cache_headers(self) -> dict[str, str]:
        """``x-aigw-cache: hit | miss | bypass`` on a route that caches answers; a semantic
        hit is a hit, with ``x-aigw-cache-similarity``."""
        record = self.record
        if record.cache == "semantic_hit":
            return {"x-aigw-cache": "hit",
                    "x-aigw-cache-similarity": f"{record.cache_similarity or 0.0:.4f}"}
        return {"x-aigw-cache": record.cache} if record.cache is not None else {}

    def complete(self) -> Awaitable[tuple[Served, ChatResult]]:
        """The whole answer as it came (``complete_as``'s coroutine itself: no frame of
        its own for every resumption of the request to pass through)."""
        return self.complete_as(_as_is)

    async def complete_as(self, render: Callable[[Served, ChatResult], R]) -> tuple[Served, R]:
        """The whole answer, rendered by ``render`` before the request is settled and
        recorded: a render that finds the answer unusable (a GatewayError, such as tool
        arguments /v1/messages cannot pass on) is recorded with that status, not as a 200,
        and billed all the same, as the provider was paid."""
        assert self.plan is not None
        try:
            cached = await self._cached()
            if cached is not None:
                served, result = cached
            else:
                if self._unheld:
                    await self._hold()
                served, result = await unless_gone(
                    complete(self.live, self.plan, self.record), self.gone)
            try:
                guards = self.plan.route.guardrails
                if guards is not None and guards.output:  # in here: the call is billed
                    # however its check ends (a client that left while a webhook was asked)
                    result = await self._guarded_result(guards.output, result)
                rendered = render(served, result)
            except GatewayError as exc:
                self.record.status, self.record.error = exc.status, str(exc.code)
                raise
            finally:
                await self.close()  # settled and recorded before anything else can fail
            if cached is None:
                await self._remember(served.deployment, result)
        finally:
            if self._flight is not None:  # after its answer was kept, or it failed
                self._land()
        return served, rendered

    async def _guarded_result(self, guardrails: tuple[Guardrail, ...],
                              result: ChatResult) -> ChatResult:
        """``result`` through the output guardrails; one they withheld is not cached."""
        result, blocked = await guard_result(guardrails, result, self.record, self.live.guard)
        self._storing = self._storing and not blocked
        self.record.finish_reasons = tuple(choice.finish_reason for choice in result.choices)
        return result

    async def stream(self) -> tuple[Served, AsyncIterator[ChatDelta]]:
        """The answer's deltas; its flight (if it leads one) lands when they end, or here
        if it failed before its first."""
        assert self.plan is not None
        cached = await self._cached()
        if cached is not None:
            served, deltas = cached[0], replay(cached[1])
        else:
            try:
                if self._unheld:
                    await self._hold()
                served, deltas = await stream(self.live, self.plan, self.record)
            except BaseException:
                self._land()
                raise
        guards = self.plan.route.guardrails
        if guards is not None and guards.output:
            deltas = guarded_stream(deltas, guards.output, guards.output_webhook, self.record,
                                    self.live.guard, self._withheld)
        if cached is None and self._storing:
            deltas = self._remembered(deltas, served.deployment)
        return served, self._settled(deltas)

    async def _hold(self) -> None:
        """Hold the tokens and worst-case cost of a request admitted by its count alone
        (``_unheld``), now that the cache did not answer it (a 429 where they do not
        fit), and give the route policies the budget left as it was held."""
        self._unheld = False
        plan, admission = self.plan, self.admission
        assert plan is not None and admission is not None
        tokens, cost = _worst_case(plan, plan.request)
        await admission.hold(self.record, tokens, cost)
        self.live.store.keep(admission)
        if plan.gate is not None and plan.gate.budget_pending:
            plan.gate.learn_budget(admission.held.budget_remaining
                                   if admission.held is not None else None)

    def _withheld(self) -> None:
        """An output guardrail withheld a choice: the answer is not cached."""
        self._storing = False

    async def _cached(self) -> tuple[Served, ChatResult] | None:
        """The route's cached answer to this request, billed as nothing; None on a miss."""
        if self._cache_key is None or self.record.cache != "miss":
            return None
        assert self.plan is not None
        live, record = self.live, self.record
        answer = await self._entry(self._cache_key)
        if answer is None and await self._waited():  # the same request's answer, just kept
            answer = await self._entry(self._cache_key)
        # A resting cache (Redis away) can neither be read nor keep the answer: its
        # embedding would be paid for nothing, each request.
        if answer is None and self._semantic is not None and not live.store.cache.resting():
            answer = await self._semantic_entry(self._semantic)
        if answer is None:
            return None
        deployment = live.graph.deployments[answer.deployment]
        record.cache = "hit" if record.cache_similarity is None else "semantic_hit"
        record.deployment, record.provider = deployment.name, deployment.provider.name
        record.provider_type = deployment.provider.type
        record.response_model = answer.result.model
        record.finish_reasons = tuple(choice.finish_reason for choice in answer.result.choices)
        # No upstream was called: nothing is billed, and no tokens count against tpm.
        record.prompt_tokens = record.completion_tokens = 0
        record.cost = 0.0
        served = Served(record.request_id, int(time.time()), self.plan.route, deployment, 0)
        return served, answer.result

    async def _waited(self) -> bool:
        """After an exact miss: whether this request waited for the same request's
        flight in this process to land (runtime/cache_flights.py); where none was in the
        air, it leads one, landed (``_land``) once its answer is kept or it failed."""
        assert self._cache_key is not None and self.plan is not None
        if not self._storing or self.live.store.cache.resting():  # it would keep nothing
            return False
        flight, leads = self.live.store.flights.join(self._cache_key)
        if leads:
            self._flight = flight
            return False
        # Half of what is left of its deadline at most: the rest is its own call's, should
        # the leader keep nothing (or take longer).
        wait_s = (self.plan.deadline - self.live.routing.clock()) / 2
        return await landed(flight, wait_s)

    def _land(self) -> None:
        """This request's flight (if it leads one) is over: its waiters look again."""
        if self._flight is not None:
            assert self._cache_key is not None
            self.live.store.flights.land(self._cache_key, self._flight)
            self._flight = None

    async def _entry(self, key: str) -> CachedAnswer | None:
        """The entry ``key`` if this caller may be served it."""
        live = self.live
        value = await live.store.cache.get(key)
        answer = decode_answer(value, live.graph) if value is not None else None
        if answer is None:
            return None
        if self._model is not None and live.graph.deployments[answer.deployment].model != \
                self._model:  # a semantic neighbour another model answered
            return None
        gate = self.plan.gate if self.plan is not None else None
        if gate is not None and gate.budget_pending and self.admission is not None:
            # Route policies that read the budget left: read here, as no hold brings it
            # (a hit is admitted by its count alone).
            gate.learn_budget(await budget_remaining(await live.store.get(),
                                                     self.admission.limits))
        if gate is not None and gate.deny([live.graph.deployments[answer.deployment]]):
            # The route policies would not let this caller be served by the deployment
            # that gave the answer (now): a miss, served by one they permit.
            return None
        return answer

    async def _semantic_entry(self, ask: SemanticAsk) -> CachedAnswer | None:
        """The entry of the nearest conversation, near enough; its similarity recorded."""
        assert self._key is not None and self.plan is not None
        # Half of what is left of the request's deadline at most: the rest is the answer's
        # on a miss (an embedding slow within timeout_s used it all: the request's 504).
        wait_s = min(ask.semantic.timeout_s, (self.plan.deadline - self.live.routing.clock()) / 2)
        if wait_s <= 0:
            return None
        self._embedded = embedded = await embed_conversation(self, self._key, ask, wait_s)
        if embedded is None:
            return None
        for key, similarity in await nearest(self.live.store.cache, embedded,
                                             ask.semantic.threshold):
            answer = await self._entry(key)
            if answer is not None:
                self.record.cache_similarity = similarity
                return answer
        return None

    async def _remember(self, deployment: Deployment, result: ChatResult) -> None:
        if not self._storing or not cacheable(result):
            return
        assert self._route_key is not None and self.plan is not None
        route_cache = self.plan.route.cache
        assert route_cache is not None
        entry = encode_answer(deployment.name, result,
                              self.live.graph.settings.cache_max_entry_bytes)
        if entry is None:
            return  # served, not kept: one answer may be max_response_mb (64 MiB by default)
        # Under the model that answered (not always the one looked up: a fallback's).
        key = model_key(self._route_key, deployment.model if route_cache.by_model else None)
        cache, ttl_s = self.live.store.cache, route_cache.ttl_s
        await cache.put(key, entry, ttl_s)
        if self._embedded is not None:
            await cache.add_vector(self._embedded.bucket, key, self._embedded.vector, ttl_s)

    async def _remembered(
        self, deltas: AsyncIterator[ChatDelta], deployment: Deployment
    ) -> AsyncIterator[ChatDelta]:
        """The stream, cached once it has ended normally (not cut, not failed), with the
        usage its upstream reported (every stream ends with one: a count of what it sent
        where the upstream gave none), as an answer is cached with its own."""
        answer = StreamedAnswer(self.record.response_model or deployment.model,
                                self.live.graph.settings.cache_max_entry_bytes)
        usage: Usage | None = None
        try:
            async for delta in deltas:
                answer.add(delta)
                usage = delta.usage or usage
                yield delta
        finally:  # cut or failed too: the stream underneath settles its quota as it closes
            with anyio.CancelScope(shield=True):
                await close_deltas(deltas)
        record = self.record
        result = answer.result(usage or Usage(record.prompt_tokens, record.completion_tokens))
        if result is not None:
            await self._remember(deployment, result)

    async def _settled(self, deltas: AsyncIterator[ChatDelta]) -> AsyncIterator[ChatDelta]:
        """The stream, settled when it ends or is cut; optionally stopped when over budget.
        What a cut stream sent is billed underneath (``chat._measured``), before this one
        closes it and settles; a cached answer, replayed, costs nothing."""
        record = self.record
        watch = self.watches_budget
        try:
            count = 0
            async for delta in deltas:
                count += 1
                if watch and count % BUDGET_CHECK_EVERY == 0:
                    await self.check_budget()
                yield delta
        except GatewayError as exc:
            # After the status line: the client sees a 200 and an error event, but the
            # ledger (its errors column), the metrics and the log count a failed request.
            record.sent_status = record.status
            record.status, record.error = exc.status, str(exc.code)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away, or a shutdown past its grace cut the stream: the
            # ledger (written below, before the stream's own record is finished), the
            # metrics and the log count a request not seen to its end, as 499 or 503.
            record.sent_status = record.status
            record.status, record.error = self.live.shutdown.cut()
            raise
        finally:
            # Shielded: a client that went away cancels the stream, not its settlement;
            # and ``close`` settles a task cancelled outright, which no anyio shield stops.
            with anyio.CancelScope(shield=True):
                try:
                    await close_deltas(deltas)
                finally:
                    if self._flight is not None:  # after a stream that ended was kept
                        self._land()
                    await self.close()

    @property
    def watches_budget(self) -> bool:
        """Whether its stream is stopped when its budget runs out (a check every
        ``BUDGET_CHECK_EVERY`` chunks or events): stop_streams_over_budget, and limits
        held for it."""
        return self.live.graph.settings.stop_streams_over_budget and self.admission is not None

    async def check_budget(self) -> None:
        """Stop the stream (an error event) when its key was revoked or its budget ran
        out. A store that cannot answer now is not a budget run out: fail_closed refuses
        new requests, while one in flight goes on and settles through the outbox."""
        graph = self._current().graph
        key = caller_in(graph, self._caller) if self._caller is not None else None
        if key is None:  # a reload removed the key: stop spending
            raise Unauthorized("The API key was revoked during this stream.")
        assert self.admission is not None
        try:
            spent = await self.admission.spent_budget(
                self._current().scopes.limits(key, self.user))
        except StoreUnavailable:
            self.live.store.unchecked()
            return
        self.live.store.checked()
        if spent is not None:
            self.record.budget_refused = budget_label(spent.scope, spent.name)
            raise BudgetExceeded("The budget ran out during this stream.")

    async def close(self) -> None:
        """Settle and record a served request (once). If the request's task is cancelled
        meanwhile (a shutdown past its grace), what is left of it runs in a task of its
        own, rather than leave the hold to expire unbilled and the request unrecorded:
        both steps may run again, as a reservation is settled once and a request id
        recorded once, whatever the stores are asked after."""
        if self._closed:
            return
        self._closed = True
        await uncancelled(self._settle_and_record, self.live.store.finish, again=True)

    async def _settle_and_record(self) -> None:
        record = self.record
        if self.admission is not None:
            tokens, cost = record.prompt_tokens + record.completion_tokens, record.cost
            if record.cut:  # the calls it cut short are charged with it
                cut_tokens, cut_cost = cut_totals(record.cut)
                tokens, cost = tokens + cut_tokens, cost + cut_cost
            try:
                await self.admission.settle(tokens, cost)
            except StoreUnavailable:
                log.error("could not settle %s: the store is unavailable", record.request_id)
        await self._write_ledger()

    async def cancelled(self) -> None:
        """Cancelled before it was served (a shutdown past its grace, an execution
        stopped mid-call): give the hold back and write the ledger record now, as 503
        (the shutdown's) or 499, shielded from a further cancellation, rather than leave
        the hold to expire and the request unrecorded."""
        error = (ShutDown("the gateway shut down before the request was served")
                 if self.live.shutdown.cutting() else Cancelled("the request was cancelled"))
        await uncancelled(partial(self.fail, error), self.live.store.finish)

    async def fail(self, error: GatewayError) -> None:
        """Release the hold and record a failed request (once)."""
        record = self.record
        record.status, record.error = error.status, str(error.code)
        if self._flight is not None:
            self._land()
        if self._closed:
            return
        self._closed = True
        if self.admission is not None:
            try:
                if record.cut:  # calls it made and cut short are charged all the same
                    await self.admission.settle(*cut_totals(record.cut))
                else:
                    await self.admission.release()
            except StoreUnavailable:
                log.error("could not release %s: the store is unavailable", record.request_id)
        if record.key is not None:  # unauthenticated requests are not attributable
            await self._write_ledger()
        if error.key_name is not None and (record.key is None
                                           or isinstance(error, Unauthorized)):
            # A caller refused by name (a key expired, or an old secret past its
            # rotation; a JWT's issuer, and its principal once verified): the access log
            # says whose client sent it; nothing was admitted, so no ledger record (named
            # after the write above). Here, for every endpoint.
            record.key, record.team = error.key_name, error.team_name

    async def _write_ledger(self) -> None:
        try:
            store = await self.live.store.get()
            record, graph = self.record, self.live.graph
            await store.record(ledger_record(record, graph, self.user))
            if record.cut:  # each call it cut short has its own, marked estimated
                for cut in cut_records(record, graph, self.user):
                    await store.record(cut)
        except StoreUnavailable:
            log.error("ledger record %s not written: the store is unavailable",
                      self.record.request_id)


def _worst_case(plan: Plan, request: ChatRequest) -> tuple[int, float]:
    """What ``request`` holds (``worst_case``), its audio at the audio prices: a hold
    held at text prices would let a spoken answer overrun a budget 8-16 times."""
    return worst_case(plan.route, plan.prompt_tokens, request.output_limit, request.samples,
                      audio_prompt_tokens(request.messages), request.speaks)


def _as_is(_served: Served, result: ChatResult) -> ChatResult:
    return result


async def exchanged(exchange: Exchange, key: Callable[[], Awaitable[ApiKey]],
                    body: Callable[[], Awaitable[bytes]],
                    answer: Callable[[Exchange, ApiKey, bytes], Awaitable[Response]],
                    ) -> Response:
    """``answer``'s response to ``key()`` and ``body()``. Failed or cancelled (a shutdown
    past its grace), the request's hold is given back and its ledger record written here;
    served, ``answer`` settled it, and a stream's record is finished when the stream ends."""
    live, record = exchange.live, exchange.record
    try:
        response = await answer(exchange, await key(), await body())
    except GatewayError as exc:
        await exchange.fail(exc)
        exc.headers = {**exc.headers, **overhead_header(record)}
        live.telemetry.refused(record, exchange.headers)
        live.telemetry.finish(record)
        raise
    except asyncio.CancelledError:
        await exchange.cancelled()
        live.telemetry.finish(record)
        raise
    except Exception:  # aigw's own fault (logged by the handler): still given back,
        # recorded and counted, as any failure, rather than held until it expires
        await exchange.fail(InternalError("The gateway had an internal error."))
        live.telemetry.finish(record)
        raise
    if not (record.stream or record.finished_by_body):
        live.telemetry.finish(record)
    return response


async def in_its_shape(
    live: Live, endpoint: str, headers: Headers, current: Callable[[], Live] | None,
    gone: Callable[[], Awaitable[None]] | None,
    serve: Callable[[Exchange], Awaitable[Response]],
    error_response: Callable[[GatewayError], Response],
    scope: MutableMapping[str, Any] | None = None,
) -> Response:
    """One request of an API whose errors are not OpenAI's (Anthropic's /v1/messages,
    Gemini's generateContent): ``serve`` drives its ``Exchange``; whatever it raises is
    failed on the exchange (hold released, ledger written) and answered by
    ``error_response``, so the app's OpenAI-shaped handlers see none. The request's
    record is finished here, or when its stream ends; its id is the answer's
    (``answered_as``) when the request's ASGI ``scope`` is given."""
    record = new_record(live, endpoint)
    if scope is not None:
        answered_as(scope, record.request_id)
    exchange = Exchange(live, record, headers, current, gone)
    try:
        response = await serve(exchange)
    except asyncio.CancelledError:  # a shutdown past its grace period
        await exchange.cancelled()
        live.telemetry.finish(record)
        raise
    except Exception as exc:
        if not isinstance(exc, GatewayError):  # aigw's own fault: logged, answered as a 500
            log_fault(exc, f"endpoint {endpoint}", record.request_id, live.graph, headers)
            exc = InternalError("The gateway had an internal error; it is logged.")
        await exchange.fail(exc)
        exc.headers = {**exc.headers, **overhead_header(record)}
        response = error_response(exc)
        record.status = response.status_code
        live.telemetry.refused(record, headers)
        live.telemetry.finish(record)
        return response
    if not (record.stream or record.finished_by_body):  # finished as the body ends
        live.telemetry.finish(record)
    return response
