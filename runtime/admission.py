"""Admission and settlement: rate limits, budgets and the spend ledger on the request path.

    admit    -> reserve 1 request, prompt + output tokens and the worst-case cost against
                the key, its team and the end user, all at once, and a place among
                their requests in flight where they have a max_parallel (429 / 503
                otherwise); the place is held until the request is settled. A request
                its route's cache may answer is admitted by its count alone
                (``admit_counted``: rpm and max_parallel), its tokens and cost held
                only once the cache did not answer it (``Admission.hold``): a hit
                spends neither
    attempt  -> each deployment with its own rpm/tpm quota is reserved per attempt
    cut      -> a call made and not used (cut by its timeout or the deadline, a hedge's
                loser, the client gone) is billed an estimate (``cut_short``)
    settle   -> the real tokens and cost are charged and the rest released, once,
                when the answer is complete, the stream ends or is cut, or it failed;
                the calls cut short are charged with it, to the same budgets
    record   -> one ledger record per request, durable before the response completes,
                and one marked ``estimated`` per call cut short
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import unquote

from aigw.compiler.graph import ApiKey, Deployment, Graph, Quota, Route

from .background import Background
from .cache_flights import Flights
from .errors import Cancelled, DeploymentAtQuota, ModelNotFound
from .providers.base import Usage
from .response_cache import open_cache
from .store import (
    Budget,
    BudgetStatus,
    Denied,
    Exceeded,
    LedgerRecord,
    Limits,
    Period,
    Reservation,
    Scope,
    Store,
    open_store,
    tightest_remaining,
)
from .store.batches import BatchStore, SQLiteBatches, batches_file
from .store.batches_redis import RedisBatches
from .store.factory import embedded_file
from .store.stored_responses import ResponseStore, open_responses
from .telemetry.record import CutCall, RequestRecord

T = TypeVar("T")

log = logging.getLogger("aigw.limits")


class StoreHandle:
    """The store named by ``settings.store``, opened on first use (it is async to open),
    and the response cache and the kept responses (``/v1/responses``) that live next to it."""

    def __init__(
        self, url: str, root: Path, failure: str, ttl: float, sync: str,
        cache_entries: int = 10_000, outbox: str = "memory", cache_bytes: int = 128 << 20,
        ledger_retention_days: int | None = None, namespace: str = "aigw",
    ) -> None:
        self.url = url
        # Every key in Redis is under it: two gateways on one Redis each have their own.
        self.namespace = namespace
        self.cache = open_cache(url, cache_entries, cache_bytes, namespace)
        self.flights = Flights()  # this process's cache misses being fetched
        self._root = root
        self._failure = failure
        self._ttl = ttl
        self._sync = sync
        self._outbox = outbox
        self._retention = ledger_retention_days * 86_400.0 if ledger_retention_days else None
        self._store: Store | None = None
        self._responses: ResponseStore | None = None
        self._batches: BatchStore | None = None
        self._lock = asyncio.Lock()
        self._finishing = Background()  # settlements cut short, finishing on their own
        self._unchecked = False  # streams go on unchecked against budgets (store down)

    async def get(self) -> Store:
        if self._store is not None:
            return self._store
        async with self._lock:
            if self._store is None:
                self._store = await open_store(
                    self.url, root=self._root, on_unavailable=self._failure,
                    reservation_ttl=self._ttl, synchronous=self._sync.upper(),
                    outbox=self._outbox, ledger_retention=self._retention,
                    namespace=self.namespace,
                )
        return self._store

    async def responses(self) -> ResponseStore:
        """Where ``/v1/responses`` keeps responses (opened on first use: a gateway that
        serves none opens nothing)."""
        if self._responses is not None:
            return self._responses
        async with self._lock:
            if self._responses is None:
                self._responses = await open_responses(self.url, self._root,
                                                       self._sync.upper(), self.namespace)
        return self._responses

    async def batches(self, create: bool = True) -> BatchStore | None:
        """Where /v1/files and /v1/batches keep their records (opened on first use): a
        SQLite file beside the embedded store's, or the Redis store. Unless ``create``,
        None while that file was never made (the runner looks for work without making it)."""
        if self._batches is not None:
            return self._batches
        ledger = embedded_file(self.url, self._root)
        if ledger is not None and not create and not batches_file(ledger).exists():
            return None
        async with self._lock:
            if self._batches is None:
                self._batches = (
                    RedisBatches(self.url, self.namespace) if ledger is None else
                    await SQLiteBatches.open(batches_file(ledger), synchronous=self._sync.upper()))
        return self._batches

    def unchecked(self) -> None:
        """A stream's budget check found the store unavailable: logged once an outage
        (not once a check, which is every few chunks of every stream)."""
        if not self._unchecked:
            self._unchecked = True
            log.warning("the store is unavailable: streams in flight go on without their "
                        "budget checks (stop_streams_over_budget) until it answers")

    def checked(self) -> None:
        """A stream's budget check reached the store (the next outage is logged again)."""
        self._unchecked = False

    def keep(self, admission: Admission) -> None:
        """Renew ``admission``'s budget holds (and its places under max_parallel) every
        half TTL until it is settled: a hold counts from the reservation, so a call
        longer than ``reservation_ttl_s`` let its hold lapse while it ran, and others
        spent the budget it was to be charged to."""
        first, held = admission.reservation, admission.held
        if admission.settled or admission.renewal is not None or not (
                (first is not None and (first.periods or first.parallel))
                or (held is not None and (held.periods or held.parallel))):
            return  # no budget nor place held (or renewed already): nothing lapses
        # By weak reference: a request dropped without a settle (a bug) must not hold its
        # budget for as long as the process lives; its hold lapses after the TTL, as before.
        admission.renewal = asyncio.get_running_loop().call_later(
            self._ttl / 2, self._renew, weakref.ref(admission))

    def _renew(self, held: weakref.ref[Admission]) -> None:
        admission = held()
        if admission is None:
            return
        admission.renewal = None
        if not admission.settled and self._store is not None:  # not closed meanwhile
            self._finishing.spawn(self._renewed(admission))

    async def _renewed(self, admission: Admission) -> None:
        for held in (admission.reservation, admission.held, admission.more):
            if held is not None:
                await admission.store.renew(held, ttl=self._ttl)
        self.keep(admission)

    def finish(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``work`` (the settlement of a request whose task was cancelled half-way
        through it) in a task of its own, which ``aclose`` waits for."""
        return self._finishing.spawn(work)

    async def aclose(self) -> None:
        await self._finishing.wait()  # before the store closes underneath them
        await self.cache.aclose()
        if self._responses is not None:
            await self._responses.aclose()
            self._responses = None
        if self._batches is not None:
            await self._batches.aclose()
            self._batches = None
        if self._store is not None:
            await self._store.aclose()
            self._store = None


@functools.lru_cache(maxsize=4096)  # per request otherwise; quotas are frozen graph data
def _limits(scope: Scope, name: str, quota: Quota) -> Limits | None:
    if quota.unlimited:
        return None
    budget = Budget(quota.budget, Period(quota.period)) if quota.budget is not None else None
    return Limits(scope, name, rpm=quota.rpm, tpm=quota.tpm, budget=budget,
                  max_parallel=quota.max_parallel)


def subject_limits(key: ApiKey, user: str | None) -> tuple[Limits, ...]:
    """Every scope a request by ``key`` (for end user ``user``) is counted against, worked
    out afresh; a request asks its graph's ``KeyScopes``, which keeps a key's own."""
    found = [_limits(Scope.KEY, key.name, key.quota)]
    if key.team is not None:
        found.append(_limits(Scope.TEAM, key.team.name, key.team.quota))
    if user:
        # The owner, then the first "/", then the user (the client's own text). Names may
        # hold "/" and ":", so the owner's are escaped: else user "x/victim" of team "eng"
        # shared the budget of user "victim" of team "eng/x", and a team named "key:k"
        # that of key k's users. Plain names read as before ("eng/u1", "key:k/u1"). A key
        # with a per_user of its own owns its users' counters: under the team's name, a
        # user's spend through it counted against the team's (smaller) per_user too.
        owner = (_escaped(key.team.name) if key.team is not None and not key.own_per_user
                 else f"key:{_escaped(key.name)}")
        found.append(_limits(Scope.USER, f"{owner}/{user}", key.per_user))
    return tuple(item for item in found if item is not None)


@dataclass(frozen=True, slots=True)
class KeyScopes:
    """Each key's own scopes (its and its team's) in one graph, worked out when the graph
    goes live and dropped with it: most requests name no end user, and hashing a key's
    quotas for ``_limits``' cache each request cost more than the rest of the lookup.

    Kept by name with the key object itself, so a key of another graph (a request that
    began before a reload, a key made by a test) is never answered with this graph's.
    """

    by_name: Mapping[str, tuple[ApiKey, tuple[Limits, ...]]]

    @classmethod
    def of(cls, graph: Graph) -> KeyScopes:
        return cls(MappingProxyType({name: (key, subject_limits(key, None))
                                     for name, key in graph.keys_by_name.items()}))

    def limits(self, key: ApiKey, user: str | None) -> tuple[Limits, ...]:
        """``subject_limits(key, user)``: the same tuple each request for no end user."""
        if not user:
            kept = self.by_name.get(key.name)
            if kept is not None and kept[0] is key:
                return kept[1]
        return subject_limits(key, user)


def rpm_limits(limits: tuple[Limits, ...]) -> tuple[Limits, ...]:
    """``limits`` with only their rpm: what an MCP message counts against (it has no
    tokens and no cost)."""
    return tuple(found for item in limits if (found := _rpm_only(item)) is not None)


@functools.lru_cache(maxsize=4096)  # one object per quota, as ``_limits`` (the stores key on it)
def _held_only(limits: Limits) -> Limits | None:
    """``limits`` without its rpm and max_parallel: what a hold's top-up counts against."""
    if limits.tpm is None and limits.budget is None:
        return None
    return Limits(limits.scope, limits.name, tpm=limits.tpm, budget=limits.budget)


@functools.lru_cache(maxsize=4096)  # one object per quota, as ``_limits`` (the stores key on it)
def _counted_only(limits: Limits) -> Limits | None:
    """``limits`` with only their rpm and max_parallel: what a request its route's cache
    may answer is admitted against before its lookup (``admit_counted``)."""
    if limits.rpm is None and limits.max_parallel is None:
        return None
    return Limits(limits.scope, limits.name, rpm=limits.rpm, max_parallel=limits.max_parallel)


@functools.lru_cache(maxsize=4096)  # one object per quota, as ``_limits`` (the stores key on it)
def _rpm_only(limits: Limits) -> Limits | None:
    return None if limits.rpm is None else Limits(limits.scope, limits.name, rpm=limits.rpm)


def rate_limits(limits: tuple[Limits, ...]) -> tuple[Limits, ...]:
    """``limits`` with only their rpm and tpm: what each response of a Realtime session
    counts against (the session holds the place in flight, its tab the budgets)."""
    return tuple(found for item in limits if (found := _rates_only(item)) is not None)


@functools.lru_cache(maxsize=4096)  # one object per quota, as ``_limits`` (the stores key on it)
def _rates_only(limits: Limits) -> Limits | None:
    if limits.rpm is None and limits.tpm is None:
        return None
    return Limits(limits.scope, limits.name, rpm=limits.rpm, tpm=limits.tpm)


async def count_request(store: Store, request_id: str, limits: tuple[Limits, ...]) -> None:
    """Count one request against the rpm of ``limits``, nothing else (a 429 with
    Retry-After when one has no room)."""
    if not limits:
        return
    decision = await store.reserve(request_id, limits, tokens=0, cost=0.0)
    if isinstance(decision, Denied):
        raise decision.error()
    await store.release(decision)  # a release still counts the request


def _escaped(name: str) -> str:
    return name.replace("%", "%25").replace("/", "%2F").replace(":", "%3A")


def deployment_limits(deployment: Deployment) -> Limits | None:
    if deployment.rpm is None and deployment.tpm is None:
        return None
    return _deployment_limits(deployment.name, deployment.rpm, deployment.tpm)


# One Limits object per quota, as for keys and teams (``_limits``): the stores cache
# what a set of limits checks by the objects' identities, so a new one every attempt
# would be worked out again every attempt (and crowd that cache).
@functools.lru_cache(maxsize=4096)
def _deployment_limits(name: str, rpm: int | None, tpm: int | None) -> Limits:
    return Limits(Scope.DEPLOYMENT, name, rpm=rpm, tpm=tpm)


def check_route_allowed(key: ApiKey, route: Route) -> None:
    """A key limited to some routes sees no other: the same 404 as for a route that does
    not exist (a 403 told it which names do, as /v1/models does not)."""
    if key.routes is not None and route.name not in key.routes:
        raise ModelNotFound(f"The model '{route.name}' does not exist or you do not have "
                            "access to it.", param="model")


def worst_case(
    route: Route, prompt_tokens: int, output_limit: int | None, choices: int = 1,
    audio_input_tokens: int = 0, audio_output: bool = False,
) -> tuple[int, float]:
    """Tokens and cost to hold for a request before knowing which deployment serves it:
    each of its ``choices`` (``n``) may write as much as a call to it is capped at. Of
    the prompt, ``audio_input_tokens`` are held at the audio input price, and with
    ``audio_output`` the output at the dearer of the output prices (``Price.most``)."""
    tokens, cost = prompt_tokens, 0.0
    for deployment in route.candidates:
        out = deployment.output_cap(prompt_tokens, output_limit) * choices
        tokens = max(tokens, prompt_tokens + out)
        cost = max(cost, deployment.price.most(prompt_tokens, out, audio_input_tokens,
                                               audio_output))
    return tokens, cost


@dataclass(slots=True, weakref_slot=True)
class Admission:
    """A request's hold on its limits, settled exactly once."""

    store: Store
    reservation: Reservation | None
    limits: tuple[Limits, ...]
    settled: bool = False
    renewal: asyncio.TimerHandle | None = None  # its holds' next renewal (StoreHandle.keep)
    # What ``grow`` held beside it: the request as sent weighs more than as it came.
    more: Reservation | None = None
    # What ``hold`` held after an admission by count (``admit_counted``): the tokens and
    # cost, charged here when the request is settled.
    held: Reservation | None = None

    def headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers: the tokens window as ``grow``'s top-up left it, read
        after both holds (the requests window is the first's: the top-up is no request)."""
        if self.reservation is None:
            return {}
        rate = self.reservation.rate
        for later in (self.held, self.more):
            if later is not None and later.rate.tokens is not None:
                rate = replace(rate, tokens=later.rate.tokens)
        return rate.headers()

    # ``settled`` is set once the store has answered: a settle cut short by a
    # cancellation can be made again (the stores settle a reservation once, whatever
    # they are asked after).

    async def settle(self, tokens: int, cost: float) -> None:
        if self.settled:
            return
        self._stop_renewing()
        if self.held is not None:  # the tokens and cost were held apart from the count
            await self.store.settle(self.held, tokens=tokens, cost=cost)
            tokens, cost = 0, 0.0
        if self.reservation is not None:
            await self.store.settle(self.reservation, tokens=tokens, cost=cost)
        if self.more is not None:  # the whole bill went to the first: this one is given back
            await self.store.release(self.more)
        self.settled = True

    async def release(self) -> None:
        if self.settled:
            return
        self._stop_renewing()
        for held in (self.reservation, self.held, self.more):
            if held is not None:
                await self.store.release(held)
        self.settled = True

    async def hold(self, record: RequestRecord, tokens: int, cost: float) -> None:
        """Hold ``tokens`` and the worst-case ``cost`` against the tokens per minute and
        budgets of a request admitted by its count alone (``admit_counted``), once its
        route's cache did not answer it: a 429 as ``admit``'s where they do not fit. Once
        a request; ``settle`` charges what it used here."""
        limits = tuple(found for item in self.limits
                       if (found := _held_only(item)) is not None)
        if self.settled or self.held is not None or not limits:
            return
        decision = await self.store.reserve(f"{record.request_id}:held", limits,
                                            tokens=tokens, cost=cost)
        if isinstance(decision, Denied):
            if decision.exceeded is Exceeded.BUDGET:
                record.budget_refused = budget_label(decision.scope, decision.name)
            raise decision.error()
        self.held = decision

    async def grow(self, record: RequestRecord, tokens: int, cost: float) -> None:
        """Hold ``tokens`` and ``cost`` more against the same tokens per minute and budgets
        (not another request, nor another place in flight), all or nothing: a 429 as
        ``admit``'s where they do not fit. Once a request: what its input guardrails sent
        weighs more than what was held before they ran (a redaction longer than what it
        took out).

        A policy's ``context.budget_remaining`` needs no second decision: it is what the
        budgets had left before this request held anything (``Reservation``), which the
        top-up does not change; the request was allowed on that, and the top-up is
        refused where the budget cannot hold it."""
        limits = tuple(found for item in self.limits
                       if (found := _held_only(item)) is not None)
        if self.settled or self.more is not None or not limits or (tokens <= 0 and cost <= 0):
            return
        decision = await self.store.reserve(f"{record.request_id}:more", limits,
                                            tokens=max(tokens, 0), cost=max(cost, 0.0))
        if isinstance(decision, Denied):
            if decision.exceeded is Exceeded.BUDGET:
                record.budget_refused = budget_label(decision.scope, decision.name)
            raise decision.error()
        self.more = decision

    def _stop_renewing(self) -> None:
        if self.renewal is not None:
            self.renewal.cancel()
            self.renewal = None

    async def spent_budget(self, limits: tuple[Limits, ...]) -> BudgetStatus | None:
        """The first of ``limits``' budgets that has run out: spent and held (this
        request's hold included) beyond its amount. ``limits`` are the current ones, so a
        budget that a reload lowered counts at its new amount."""
        if not any(limit.budget is not None for limit in limits):
            return None
        statuses = await self.store.budgets(limits)
        return next((status for status in statuses
                     if status.spent + status.held > status.amount), None)


async def admit(
    store: Store, record: RequestRecord, limits: tuple[Limits, ...], tokens: int, cost: float
) -> Admission:
    """Reserve against every scope at once; a denial is a 429 with OpenAI's headers."""
    if not limits:
        return Admission(store, None, limits)
    decision = await store.reserve(record.request_id, limits, tokens=tokens, cost=cost)
    if isinstance(decision, Denied):
        if decision.exceeded is Exceeded.BUDGET:
            record.budget_refused = budget_label(decision.scope, decision.name)
        raise decision.error()
    return Admission(store, decision, limits)


async def admit_counted(store: Store, record: RequestRecord,
                        limits: tuple[Limits, ...]) -> Admission:
    """Count the request against every scope's rpm and take its place under their
    max_parallel (a 429 / 503 as ``admit``'s), holding no tokens nor cost: a request its
    route's cache may answer, which ``Admission.hold`` holds them for once it did not."""
    counted = tuple(found for item in limits if (found := _counted_only(item)) is not None)
    if not counted:
        return Admission(store, None, limits)
    decision = await store.reserve(record.request_id, counted, tokens=0, cost=0.0)
    if isinstance(decision, Denied):
        raise decision.error()
    return Admission(store, decision, limits)


def budget_label(scope: Scope, name: str) -> tuple[str, str]:
    """(scope, name) for aigw_budget_refusals: an end user's budget by its owner, the
    team or the key ("key:<name>") whose per_user it is, as user ids are the client's
    own text and would make a series each. The owner is the name's part before its
    first "/" (``subject_limits`` escapes any in the owner's own name)."""
    if scope is Scope.USER:
        return scope.value, unquote(name.split("/", 1)[0])
    return scope.value, name


@dataclass(frozen=True, slots=True)
class Hold:
    store: Store
    reservation: Reservation


class DeploymentQuotas:
    """Each attempt at a deployment with its own rpm/tpm is reserved against it; over the
    quota, the member is skipped like one that answered 429, and no call goes out."""

    def __init__(self, handle: StoreHandle, record: RequestRecord) -> None:
        self._handle = handle
        self._record = record
        self._attempts = 0

    async def take(self, deployment: Deployment, tokens: int) -> Hold | None:
        limits = deployment_limits(deployment)
        if limits is None:
            return None
        store = await self._handle.get()
        self._attempts += 1
        request_id = f"{self._record.request_id}:{deployment.name}:{self._attempts}"
        decision = await store.reserve(request_id, (limits,), tokens=tokens, cost=0.0)
        if isinstance(decision, Denied):
            raise at_quota(deployment, decision)
        return Hold(store, decision)

    @staticmethod
    async def settle(hold: Hold | None, tokens: int) -> None:
        if hold is not None:
            await hold.store.settle(hold.reservation, tokens=tokens, cost=0.0)

    @staticmethod
    async def release(hold: Hold | None) -> None:
        if hold is not None:
            await hold.store.release(hold.reservation)

    async def failed(self, hold: Hold | None, deployment: Deployment, prompt_tokens: int,
                     error: BaseException, cut: Usage | None = None) -> None:
        """An attempt at ``deployment`` ended in ``error`` before it answered: its hold is
        given back, but for one cut short (cancelled: its timeout, the deadline, a hedge
        that lost, the client gone) after its call went out, which the provider most
        likely billed: that is billed ``cut`` where given (what the call is billed for
        whatever it answers: a rerank call's search units, which Cohere bills per call; a
        transcription's audio; a speech's characters; the images asked for), else its
        ``prompt_tokens`` (``cut_short``), and its hold settled at the tokens. Call it
        shielded from a cancellation."""
        if isinstance(error, asyncio.CancelledError):
            used = Usage(prompt_tokens, 0) if cut is None else cut
            await self.settle(hold, cut_short(self._record, deployment, used))
        else:
            await self.release(hold)


def at_quota(deployment: Deployment, denied: Denied) -> DeploymentAtQuota:
    """What a reservation against ``deployment``'s own quota refused is."""
    return DeploymentAtQuota(
        f"deployment '{deployment.name}' is at its own quota: {denied.message}",
        provider=deployment.provider.name, retry_after=denied.retry_after,
        headers=denied.rate.headers(),
    )


def cut_short(record: RequestRecord, deployment: Deployment, usage: Usage) -> int:
    """Bill a call to ``deployment`` that ``record``'s request made and did not use: one
    cut short (its timeout, the deadline, a hedge that lost, the client gone), whose
    provider has most likely been paid for its prompt and for what it sent before the
    cut, though it reported no usage; or a hedge's loser that answered too. ``usage``:
    the prompt tokens aigw counted for the call's hold and the output it received, or
    the loser's own. Settled with the request (``Exchange``), to the same budgets, and
    written to the ledger as an ``estimated`` record of its own (``cut_records``).
    Returns its tokens."""
    cut = CutCall(deployment.name, deployment.provider.name, usage.prompt_tokens,
                  usage.completion_tokens, usage.cached_tokens,
                  usage.cost(deployment.price), usage.audio_input_tokens,
                  usage.audio_output_tokens)
    if record.cut is None:
        record.cut = [cut]
    else:
        record.cut.append(cut)
    return usage.total_tokens


def cut_totals(cuts: list[CutCall]) -> tuple[int, float]:
    """The tokens and cost of calls cut short, to settle with their request's."""
    return (sum(cut.prompt_tokens + cut.completion_tokens for cut in cuts),
            sum(cut.cost for cut in cuts))


async def budget_remaining(store: Store, limits: tuple[Limits, ...]) -> float | None:
    """The least any budget of the request has left (None: no budget applies)."""
    if not any(limit.budget is not None for limit in limits):
        return None
    return tightest_remaining(await store.budgets(limits))


def cut_records(record: RequestRecord, graph: Graph,
                user: str | None) -> tuple[LedgerRecord, ...]:
    """An ``estimated`` ledger record for each call ``record``'s request cut short."""
    at = time.time()
    return tuple(LedgerRecord(
        request_id=f"{record.request_id}:{cut.deployment}:{number}",
        at=at,
        key=record.key,
        team=record.team,
        user=user,
        route=record.route,
        deployment=cut.deployment,
        tokens_in=cut.prompt_tokens,
        tokens_out=cut.completion_tokens,
        tokens_cached=cut.cached_tokens,
        tokens_audio_in=cut.audio_input_tokens,
        tokens_audio_out=cut.audio_output_tokens,
        cost=cut.cost,
        latency_ms=0.0,  # not timed: a call's own time is not kept, only the request's
        status=Cancelled.status,  # aigw stopped waiting for it (or for its answer)
        fingerprint=graph.fingerprint,
        estimated=True,
        batch=record.batch,
    ) for number, cut in enumerate(record.cut or (), 1))


def ledger_record(record: RequestRecord, graph: Graph, user: str | None) -> LedgerRecord:
    return LedgerRecord(
        request_id=record.request_id,
        at=time.time(),
        key=record.key,
        team=record.team,
        user=user,
        route=record.route,
        deployment=record.deployment,
        tokens_in=record.prompt_tokens if record.deployment else 0,
        tokens_out=record.completion_tokens,
        tokens_cached=record.cached_tokens,
        tokens_audio_in=record.audio_input_tokens,
        tokens_audio_out=record.audio_output_tokens,
        cost=record.cost,
        latency_ms=round((time.perf_counter() - record.started) * 1000, 3),
        status=record.status,
        fingerprint=graph.fingerprint,
        batch=record.batch,
    )
