"""The attempt loop: one request, tried across members, retries and fallback groups.

For each group (the route's, then fallbacks chosen by the class of the last failure):
the members that can serve the request (its ``Ask``: a chat's, an embeddings call's) in
strategy order;
each member with an open circuit is skipped; each attempt has a timeout; a retryable
failure is retried with exponential backoff and jitter that honours Retry-After. An
overall deadline and a hard cap on attempts bound the whole loop; at the cap, or when
the deadline leaves no time for another attempt, it stops with the last upstream error
(a member skipped for its own quota made no attempt); a call the deadline cuts short is
a 504 that says that upstream error too. Optionally the
first attempt is hedged: the next member starts after a delay, the first answer wins
and the other is cancelled (or, answered too, discarded) and billed, as any call cut
short is (``admission.cut_short``). A first attempt that fails before the
delay started no race: it is retried as any other, and the next member is still next.
When both members of a race fail, the first goes on with its retries, then the other
with its own: its attempt in the race was its first.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

import anyio

from aigw.compiler.graph import Deployment, Graph, Group, Route

from ..errors import (
    BadRequest,
    DeploymentAtQuota,
    GatewayError,
    NoDeploymentAvailable,
    UpstreamAuthError,
    UpstreamBadRequest,
    UpstreamContentPolicy,
    UpstreamContextLength,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamUnusable,
    retry_after_headers,
)
from ..policy import Denied, RequestGate
from ..uncancelled import Spawn, uncancelled
from .breaker import Permit
from .candidates import Ask, Candidate, Dropped
from .choice import fallbacks, rank, unavailable, untried_class
from .state import RoutingState

log = logging.getLogger("aigw.routing")
T = TypeVar("T")

# The failure class of a tier that ended because the route used its max_attempts: the
# loop stops there, with the last upstream error, and takes no fallback.
_SPENT = "attempts spent"
# And of one that ended because the request's deadline came before another attempt
# could start: the loop stops there too, with the last upstream error.
_LATE = "deadline passed"
# A 400 with unrecognised wording, for a prompt this close to the window, is taken to be
# "context length exceeded": providers word that error in too many ways to list.
_CONTEXT_SUSPECT_RATIO = 0.8


@dataclass(slots=True)
class Trace:
    """What the loop decided and why: for the debug log, 422/503 messages and ``aigw route``."""

    steps: list[str] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    attempts: int = 0
    backoff_s: float = 0.0  # waited before retries (backoff, a provider's Retry-After)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # deployment, provider, code
    policies: dict[str, tuple[str, ...]] = field(default_factory=dict)  # deployment -> permits
    # The provider's id of the last call that failed, where it named one (the access line
    # has it when no call answered).
    upstream_request_id: str | None = None
    # The deployment and provider of the last call a cancellation cut (a hedge that lost,
    # or the request's own: its client gone, a shutdown), which a request cancelled before
    # any call answered is counted under.
    cut: tuple[str, str] | None = None
    # Whether ``steps`` are written down: only the debug log reads them, so with it off
    # the lines every request makes (its candidates, its attempt) are not even built.
    keep: bool = True

    def add(self, text: str) -> None:
        if self.keep:
            self.steps.append(text)


@dataclass(frozen=True, slots=True)
class Won(Generic[T]):
    candidate: Candidate
    value: T
    attempts: int
    started: float  # clock() when the winning attempt began
    hop: int = 0  # how many fallbacks away from the route's group the one that served is
    # A stream's verdict on its deployment, given at its end (``stream_ended``); None:
    # given already (a whole answer is judged when it arrives).
    pending: Permit | None = None


@dataclass(slots=True)
class _Tier:
    group: Group
    reason: str
    hop: int = 0  # fallbacks away from the route's group


@dataclass(slots=True)
class _Hedge:
    """The member that may race the first attempt, whether it was started, and how its
    call failed when both failed (its first try: its retries follow the first's)."""

    partner: Candidate
    launched: bool = False
    failed: UpstreamError | None = None


class AttemptLoop(Generic[T]):
    """Runs ``attempt(candidate)`` until one succeeds; ``discard`` cleans up (and bills) a
    hedge's loser that answered too."""

    def __init__(
        self,
        graph: Graph,
        state: RoutingState,
        route: Route,
        ask: Ask,
        deadline: float,
        attempt: Callable[[Candidate], Awaitable[T]],
        discard: Callable[[Won[T]], Awaitable[None]],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        *,
        gate: RequestGate | None = None,
        streaming: bool = False,
        finish: Spawn[None],
    ) -> None:
        assert route.group is not None
        self.graph = graph
        self.state = state
        self.route = route
        self.ask = ask  # a chat's, an embeddings call's: which members fit, and why not
        self.deadline = deadline
        self.attempt = attempt
        self.discard = discard
        self.sleep = sleep
        self.gate = gate  # Cedar's route policies; None: every candidate may serve
        # A stream's first delta is no verdict: the stream may fail after it. Its
        # attempt leaves the verdict (and a half-open probe) to ``stream_ended``.
        self.streaming = streaming
        # Runs a hedge's burial on its own (kept: the store closes after it) when the
        # request is cancelled outright while it buries (``StoreHandle.finish``).
        self.finish = finish
        self.trace = Trace(keep=log.isEnabledFor(logging.DEBUG))
        # The last failure an upstream answered with (or its own timeout): a deadline that
        # then cuts a call short says it too, not only which call it cut.
        self._upstream_failure: UpstreamError | None = None

    async def run(self) -> Won[T]:
        queue: deque[_Tier] = deque([_Tier(self.route.group, "route")])  # type: ignore[arg-type]
        visited: set[str] = set()
        last_error: UpstreamError | None = None
        stopped = ""
        while queue:
            tier = queue.popleft()
            if tier.group.name in visited:
                continue
            visited.add(tier.group.name)
            stopped = self._stop()
            if stopped:  # a fallback no attempt may reach is not entered, nor traced
                break
            won, failure_class, error = await self._tier(tier)
            if won is not None:
                return won
            last_error = error or last_error
            if failure_class in (_SPENT, _LATE):
                stopped = failure_class
                break
            for name in fallbacks(tier.group, failure_class):
                if name not in visited and name in self.graph.groups:
                    queue.append(_Tier(self.graph.groups[name], f"{failure_class} fallback",
                                       tier.hop + 1))
        raise self._failure(last_error, stopped)

    def _failure(self, error: UpstreamError | None, stopped: str) -> GatewayError:
        """What the client is told when nothing served: the last upstream error, as it
        came, as at the end of the fallbacks and at the cap. When the deadline stopped
        the loop, the error says so: a 504 for a deadline that only came between
        attempts hid what the upstreams answered (a 500, a 429 and its Retry-After),
        and the metrics and log counted a timeout no upstream had."""
        if isinstance(error, _Unsupported):
            return error.refusal  # no member could honour the request: say which parameter
        if error is None:
            if stopped == _LATE:
                return UpstreamTimeout(f"route '{self.route.name}' passed its deadline")
            return self._nothing_to_try()
        if stopped == _LATE and not isinstance(error, _DeadlineCut):
            # Each attempt raises its own error: this one is the request's alone.
            error.message = (f"{error.message} (the request's deadline left no time for "
                             "another attempt)")
            error.args = (error.message,)
        return error

    async def _tier(self, tier: _Tier) -> tuple[Won[T] | None, str, UpstreamError | None]:
        group = tier.group
        ranked = rank(group, self.ask, self.state, self.gate)
        ordered, dropped = ranked.ordered, ranked.dropped
        for name, decision in ranked.decisions.items():
            self.trace.policies[name] = decision.policies
        self.trace.dropped.extend(dropped)
        for item in dropped:
            self.trace.add(f"{group.name}: drop {item.deployment}: {item.reason}")
        if self.trace.keep:
            self.trace.add(f"{group.name} ({tier.reason}, {group.strategy}): "
                           f"{', '.join(c.deployment.name for c in ordered) or 'no candidates'}")
        failure_class = untried_class(dropped)
        last_error: UpstreamError | None = None
        raced: UpstreamError | None = None  # the next member's failed call in a hedge race
        position = 0
        while position < len(ordered):
            stop = self._stop()
            if stop:
                return None, stop, last_error
            candidate = ordered[position]
            position += 1
            first, raced = raced, None
            skip = self._unavailable(candidate)
            if skip is not None:
                breaker = self.state.of(candidate.deployment).breaker
                self.trace.dropped.append(Dropped(
                    candidate.deployment.name, skip, False,
                    retry_after=breaker.reopens_in(self.state.clock())))
                self.trace.add(f"{group.name}: skip {candidate.deployment.name}: {skip}")
                continue
            hedge = self._hedge_partner(ordered, position)
            try:
                won = await self._with_retries(group, candidate, len(ordered) == 1, hedge,
                                               first)
                # Built, not dataclasses.replace()d: this runs once a request.
                served = Won(won.candidate, won.value, won.attempts, won.started, tier.hop,
                             won.pending)
                return served, "", None
            except _NoTimeLeft as exc:
                self.trace.add(f"route '{self.route.name}' passed its deadline")
                return None, _LATE, exc.after or last_error
            except UpstreamError as exc:
                last_error = exc
                failure_class = _failure_class(exc)
                if failure_class == "fatal":
                    raise
                if hedge is not None and hedge.launched:
                    # The partner, next, goes on from its call in the race with its own
                    # retries (a hedge is there for latency: it takes none away).
                    raced = hedge.failed
        return None, failure_class, last_error

    async def _with_retries(
        self, group: Group, candidate: Candidate, alone: bool, hedge: _Hedge | None = None,
        raced: UpstreamError | None = None,
    ) -> Won[T]:
        """Try ``candidate`` with the group's retries; ``raced``: how its call in a hedge
        race failed, its first try."""
        failed = raced
        for number in range(0 if raced is None else 1, 1 + group.retry.attempts):
            if failed is not None:
                await self._before_retry(group, candidate, alone, number, failed)
            try:
                if number == 0 and hedge is not None:
                    return await self._hedged(candidate, hedge)
                return await self._one(candidate)
            except _NoTimeLeft as exc:
                # The wait for this retry ended past the deadline (a sleep may end late):
                # no call went out, so the failure it followed is the last.
                exc.after = failed
                raise
            except UpstreamError as exc:
                failed = exc
        assert failed is not None
        raise failed

    async def _before_retry(
        self, group: Group, candidate: Candidate, alone: bool, number: int, error: UpstreamError
    ) -> None:
        """Wait before retry ``number`` (from 1) of ``candidate``, which follows ``error``;
        raise ``error`` when no retry may follow it."""
        if not error.retryable or (isinstance(error, UpstreamRateLimited) and not alone):
            raise error  # a rate-limited member is left for the next one, not hammered
        if self._spent():
            raise error  # a retry the cap forbids is not waited for
        wait = self._backoff(group, number - 1, error)
        if wait is None:
            raise error
        self.trace.add(f"retry {candidate.deployment.name} in {wait * 1000:.0f} ms "
                       f"after {error.code}")
        self.trace.backoff_s += wait
        await self.sleep(wait)

    def _backoff(self, group: Group, number: int, error: UpstreamError) -> float | None:
        """Seconds to wait before retry ``number + 1``, or None when the deadline forbids it."""
        base = min(group.retry.max_backoff_ms, group.retry.backoff_ms * (2**number)) / 1000
        wait = base * (0.5 + self.state.rng.random() / 2)  # jitter: 50-100% of the backoff
        if error.retry_after is not None:
            wait = max(wait, error.retry_after)
        return wait if self.state.clock() + wait < self.deadline else None

    def _stop(self) -> str:
        """Why no further attempt may start, said in the trace ("" while one may): the
        route has used its max_attempts, or the request's deadline has passed."""
        if self._spent():
            self.trace.add(f"route '{self.route.name}' used its "
                           f"{self.route.max_attempts} attempts")
            return _SPENT
        if self.state.clock() >= self.deadline:
            self.trace.add(f"route '{self.route.name}' passed its deadline")
            return _LATE
        return ""

    def _spent(self) -> bool:
        """Has the route used its max_attempts? Checked before every call but a hedge's."""
        return self.trace.attempts >= self.route.max_attempts

    async def _one(self, candidate: Candidate) -> Won[T]:
        now = self.state.clock()
        remaining = self.deadline - now
        if remaining <= 0:
            raise _NoTimeLeft(f"route '{self.route.name}' passed its deadline",
                              provider=candidate.deployment.provider.name)
        stats = self.state.of(candidate.deployment)
        permit = stats.breaker.try_acquire(now)
        if permit is None:
            raise _CircuitOpen(f"circuit of '{candidate.deployment.name}' is open",
                               provider=candidate.deployment.provider.name)
        self.trace.attempts += 1
        if self.trace.keep:
            self.trace.add(f"attempt {self.trace.attempts}: {candidate.deployment.name}")
        stats.in_flight += 1
        stats.requests += 1
        # Only the deployment's own timeout says it is unwell. The request's deadline is
        # the route's, or shorter at any client's word (x-aigw-deadline-ms): running out
        # of it must not open a healthy deployment's circuit for everyone else.
        own_timeout = candidate.deployment.timeout_s <= remaining
        try:
            async with asyncio.timeout(min(candidate.deployment.timeout_s, remaining)):
                value = await self.attempt(candidate)
        except TimeoutError:
            if own_timeout:
                stats.failures += 1
                stats.breaker.record(self.state.clock(), ok=False, permit=permit)
                message = f"deployment '{candidate.deployment.name}' did not answer in time"
            else:
                stats.breaker.release(permit)
                message = (f"route '{self.route.name}' passed its deadline waiting for "
                           f"deployment '{candidate.deployment.name}'")
                if self._upstream_failure is not None:  # what made it wait on this call
                    message += f"; before that, {self._upstream_failure.message}"
            self.trace.add(f"  {candidate.deployment.name} timed out")
            self._failed(candidate, "upstream_timeout")
            error = UpstreamTimeout if own_timeout else _DeadlineCut
            timeout = error(message, provider=candidate.deployment.provider.name)
            if own_timeout:
                self._upstream_failure = timeout
            raise timeout from None
        except DeploymentAtQuota:  # no call went out: not an attempt
            self.trace.attempts -= 1
            stats.requests -= 1
            stats.breaker.release(permit)
            # Nor an upstream failure (aigw_upstream_failures, the log's failures): the
            # trace says it was skipped.
            self.trace.add(f"  {candidate.deployment.name} skipped: at its own quota")
            raise
        except UpstreamError as exc:
            judge(self.state, candidate.deployment, permit, exc)
            self.trace.add(f"  {candidate.deployment.name} failed: {exc.code}")
            self._failed(candidate, str(exc.code))
            if exc.upstream_request_id is not None:
                self.trace.upstream_request_id = exc.upstream_request_id
            self._upstream_failure = self._suspect_context(exc, candidate)
            raise self._upstream_failure from exc
        except BadRequest as exc:  # this member cannot honour a parameter; another may
            self.trace.attempts -= 1  # refused before calling out: not an attempt either
            stats.requests -= 1
            stats.breaker.release(permit)
            self.trace.add(f"  {candidate.deployment.name} cannot serve it: {exc.message}")
            raise _Unsupported(exc) from exc
        except asyncio.CancelledError:  # a hedge that lost: no verdict on the deployment
            stats.breaker.release(permit)
            self.trace.cut = (candidate.deployment.name, candidate.deployment.provider.name)
            raise
        except Exception:  # not the deployment's answer (the store, a bug): no verdict
            # either, but a half-open breaker's probe must be given back, or it stays
            # half-open and refuses every request until a restart.
            stats.breaker.release(permit)
            raise
        finally:
            stats.in_flight -= 1
        if self.streaming:
            return Won(candidate, value, self.trace.attempts, now, pending=permit)
        judge(self.state, candidate.deployment, permit, None)
        return Won(candidate, value, self.trace.attempts, now)

    def _failed(self, candidate: Candidate, code: str) -> None:
        deployment = candidate.deployment
        self.trace.failures.append((deployment.name, deployment.provider.name, code))

    def _suspect_context(self, error: UpstreamError, candidate: Candidate) -> UpstreamError:
        window = candidate.deployment.context_window
        tokens = self.ask.window_tokens
        near_full = tokens >= _CONTEXT_SUSPECT_RATIO * window
        if type(error) is UpstreamBadRequest and near_full:
            return UpstreamContextLength(
                f"{error.message} (taken as context length exceeded: the prompt has "
                f"~{tokens} tokens of a {window}-token window)",
                provider=error.provider, upstream_status=error.upstream_status)
        return error

    def _unavailable(self, candidate: Candidate) -> str | None:
        """Why no call should go to ``candidate`` now, or None."""
        return unavailable(self.state, candidate.deployment)

    def _hedge_partner(self, ordered: list[Candidate], position: int) -> _Hedge | None:
        route = self.route
        if self.trace.attempts or position >= len(ordered) or route.max_attempts < 2:
            return None
        if route.hedge_after_ms is None and not route.hedge_at_p95:
            return None
        partner = ordered[position]
        return _Hedge(partner) if self._unavailable(partner) is None else None

    def _hedge_delay(self, first: Candidate) -> float:
        if self.route.hedge_after_ms is not None:
            return self.route.hedge_after_ms / 1000
        p95 = self.state.of(first.deployment).p95_ms()
        return (p95 if p95 is not None else first.deployment.timeout_s * 1000) / 1000

    async def _hedged(self, first: Candidate, hedge: _Hedge) -> Won[T]:
        """Start ``first``; if it has not answered after the hedge delay, start the partner.
        The first success wins and the other is cancelled. If both fail, ``first``'s error:
        its retries go on from it, and the partner's from its failure (``hedge.failed``)."""
        leader = asyncio.create_task(self._one(first))
        started = {leader}
        discards: dict[asyncio.Task[Won[T]], asyncio.Future[None]] = {}  # see ``_bury``
        try:
            delay = self._hedge_delay(first)
            done, _ = await asyncio.wait({leader}, timeout=delay)
            if done:  # answered or failed before the delay: a plain attempt, no race
                return leader.result()
            hedge.launched = True
            self.trace.add(f"hedge: {hedge.partner.deployment.name} after "
                           f"{delay * 1000:.0f} ms")
            partner = asyncio.create_task(self._one(hedge.partner))
            pending = {leader, partner}
            started |= pending
            while pending:
                done, pending = await asyncio.wait(pending,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is None:
                        for loser in pending:
                            loser.cancel()
                        # Both may have answered in the same round: the other's answer is
                        # discarded too (a stream closed now, not when it is collected).
                        await self._bury((pending | done) - {task}, discards)
                        return task.result()
            error = partner.exception()
            if isinstance(error, UpstreamError) and not isinstance(error, _UNCALLED):
                hedge.failed = error
            return leader.result()  # raises: both failed
        except BaseException:
            # The request itself was cancelled (its client gone, a shutdown): its attempts
            # are its own. Left running, a winner's stream, quota hold and a half-open
            # circuit's probe (held until a stream ends) were never given back, and the
            # deployment was skipped as "circuit open" until a restart. Cancelled while a
            # loser was discarded, the winner is nobody's either: discarded too.
            for task in started:
                task.cancel()
            with anyio.CancelScope(shield=True):  # and cancelled outright: ``uncancelled``
                await uncancelled(partial(self._bury, started, discards), self.finish,
                                  again=True)
            raise

    async def _bury(self, losers: set[asyncio.Task[Won[T]]],
                    discards: dict[asyncio.Task[Won[T]], asyncio.Future[None]]) -> None:
        """Close (and bill) those of ``losers`` that answered, each once: ``discards``
        holds the discard begun for each. A discard runs in a task of its own, so that
        the request cancelled meanwhile (its client gone, a shutdown) leaves it to finish:
        cut halfway, a stream stayed open and its deployment's quota hold was kept until
        it expired, refusing calls meanwhile. Safe to run again after a cut (each discard
        is begun once), as ``uncancelled`` does."""
        for loser in losers:
            if loser not in discards:
                # Waited for, not awaited: a cancellation of this task is not the loser's
                # failure, to be swallowed here.
                await asyncio.wait((loser,))
                if loser.cancelled() or loser.exception() is not None:
                    continue  # its own failure: nothing to close
                won = loser.result()
                # It answered too, just later: closed and billed as a call cut short, and
                # no verdict given.
                stream_ended(self.state, won, ended=False, error=None)
                discards[loser] = asyncio.ensure_future(self.discard(won))
            await asyncio.wait((discards[loser],))
        for loser in losers:  # the first that failed, once every one is done
            if loser in discards:
                discards[loser].result()

    def _nothing_to_try(self) -> GatewayError:
        denied = [d for d in self.trace.dropped if isinstance(d, Denied)]
        if denied and self.gate is not None and not self.gate.permitted:
            return self.gate.forbidden(self.route.name, denied)  # no deployment was permitted
        if self.trace.dropped and all(d.unfit for d in self.trace.dropped):
            return self.ask.unfit(self.route.name, self.trace.dropped)
        reasons = "; ".join(f"{d.deployment} {d.reason}" for d in self.trace.dropped)
        # When the first open circuit lets a call through again, a retry may be served.
        waits = [d.retry_after for d in self.trace.dropped if d.retry_after is not None]
        return NoDeploymentAvailable(
            f"No deployment of '{self.route.name}' is available: {reasons or 'none configured'}.",
            headers=retry_after_headers(min(waits)) if waits else None)


class _Unsupported(UpstreamError):
    """A member refused a parameter before calling out; the next member may accept it."""

    status = 400
    code = "unsupported_parameter"

    def __init__(self, refusal: BadRequest) -> None:
        super().__init__(refusal.message, param=refusal.param)
        self.refusal = refusal


class _NoTimeLeft(UpstreamTimeout):
    """The request's deadline came before the call could start: none went out.
    ``after``: the failure the call was to retry, if it was a retry."""

    after: UpstreamError | None = None


class _DeadlineCut(UpstreamTimeout):
    """The request's deadline (not the deployment's timeout_s) cut an attempt short."""


class _CircuitOpen(UpstreamError):
    """The breaker opened between choosing a member and calling it; try the next member."""

    status = 503
    code = "circuit_open"


# Failures of a member that made no call: a hedge partner that failed so is tried afresh.
_UNCALLED = (_NoTimeLeft, _CircuitOpen, _Unsupported, DeploymentAtQuota)


def stream_ended(
    state: RoutingState, won: Won[Any], ended: bool, error: BaseException | None
) -> None:
    """Give the verdict a stream's first delta left open: ok if it ``ended`` cleanly, a
    failure if the upstream failed after its first byte (``error``, one that says the
    deployment is unwell), none if the client went away or the gateway stopped it."""
    permit = won.pending
    if permit is None:
        return
    if ended:
        judge(state, won.candidate.deployment, permit, None)
    elif isinstance(error, UpstreamError):
        judge(state, won.candidate.deployment, permit, error)
    else:
        state.of(won.candidate.deployment).breaker.release(permit)


def judge(
    state: RoutingState, deployment: Deployment, permit: Permit, error: UpstreamError | None
) -> None:
    """Give a call's verdict to its deployment's breaker and stats: well (``error`` None),
    a failure if ``error`` says the deployment is unwell, else none (the request's own
    fault, a rate limit), which gives a half-open probe's place back."""
    stats = state.of(deployment)
    if error is None:
        stats.breaker.record(state.clock(), ok=True, permit=permit)
    elif _counts_against_health(error):
        stats.failures += 1
        stats.breaker.record(state.clock(), ok=False, permit=permit)
    else:
        stats.breaker.release(permit)


def _failure_class(error: UpstreamError) -> str:
    if isinstance(error, UpstreamRateLimited):
        return "rate_limit"
    if isinstance(error, UpstreamContextLength):
        return "context_window"
    if isinstance(error, UpstreamContentPolicy):
        return "content_policy"
    if isinstance(error, UpstreamBadRequest):
        return "fatal"  # the request itself is wrong: another deployment will not fix it
    return "error"


def _counts_against_health(error: UpstreamError) -> bool:
    """Failures that say the deployment is unwell (not that the request was wrong)."""
    unwell = error.retryable and not isinstance(error, UpstreamRateLimited)
    return unwell or isinstance(error, UpstreamAuthError | UpstreamUnusable)
