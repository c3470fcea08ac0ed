"""The limits a Realtime session (runtime/realtime.py) is held to while it is open: each
of its responses counted as a request against its key's, team's and end user's rpm and
tpm, as a chat request is, and against its deployment's own rpm and tpm, as a chat
request's attempt is; and its end, when its key expires (or a reload removed it) or it
reaches ``realtime_max_session_s`` (``outlived``).

    response.create (the client's) -> counted before it is passed on; refused: not
        passed on, the client answered an ``error`` event (the session goes on)
    response.created -> one the client asked for was counted then; one the upstream
        started on its own (server VAD) is counted now; refused: cancelled upstream
        (``response.cancel``), the client answered an ``error`` event, and its
        ``response.done`` (with what was made) billed as any
    response.done -> its tokens charged to tpm (the holds of a response counted), and
        the client told the gateway's limits as the store has them then (``rates``)

A response holds no tokens while it runs (what it will use is not known, as a chat
request's ``max_tokens`` tells): it is admitted while the tokens bucket is not in debt,
and its tokens are taken at its ``response.done``, which may put the bucket in debt and
refuse the next until it refills. The tokens of a response that had no hold (refused,
yet billed) are charged to tpm as the session ends, with the session's own holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from aigw.compiler.graph import ApiKey, Deployment, Graph

from .admission import (
    Admission,
    DeploymentQuotas,
    Hold,
    StoreHandle,
    at_quota,
    deployment_limits,
    rate_limits,
)
from .auth import key_named
from .errors import GatewayError, SessionExpired, StoreUnavailable, Unauthorized
from .identity import caller_in
from .store import Denied, Limits, RateStatus

# How often an open session reads its key again: a reload may move its expires, or
# remove it, while the session waits for neither.
_RECHECK_S = 60.0


@dataclass(frozen=True, slots=True)
class ResponseHolds:
    """One response's holds: on the key's (team's, user's) rates, and on its
    deployment's own quota (None: it has none)."""

    rates: Admission
    quota: Hold | None

    async def settle(self, tokens: int) -> None:
        """Safe to repeat: a store settles a reservation once."""
        await self.rates.settle(tokens, 0.0)
        await DeploymentQuotas.settle(self.quota, tokens)


class ResponseCounts:
    """One session's responses counted against ``limits``' rpm and tpm (``limits``: the
    session's own, as held at connect) and ``deployment``'s own quota."""

    def __init__(self, handle: StoreHandle, request_id: str,
                 limits: tuple[Limits, ...], deployment: Deployment) -> None:
        self._handle = handle
        self._request_id = request_id
        self._limits = rate_limits(limits)
        self._deployment = deployment
        self._quota = deployment_limits(deployment)
        self._numbers = itertools.count(1)
        # Holds not settled yet, oldest first: which response settles which does not
        # matter (each holds nothing against the same buckets), only that each is once.
        self._held: deque[ResponseHolds] = deque()
        self._asked = 0  # the client's response.creates passed on, not started yet
        self.unheld_tokens = 0  # of responses that had no hold: charged at the session's end

    async def rates(self) -> RateStatus | None:
        """The key's (team's, user's) rpm and tpm left now, as the ``x-ratelimit-*``
        headers of a chat answer tell them: read from the store (one round trip), so
        that what other sessions, requests and replicas took on the same limits is in
        it; None where none applies, or the store cannot answer."""
        if not self._limits:
            return None
        try:
            store = await self._handle.get()
            return await store.rates(self._limits)
        except StoreUnavailable:  # a status, not a refusal: the session goes on untold
            return None

    async def asked(self) -> GatewayError | None:
        """A client's ``response.create``: counted; the refusal (it is not passed on)."""
        refused = await self._count()
        if refused is None:
            self._asked += 1
        return refused

    def unasked(self) -> None:
        """A ``response.create`` passed on that the upstream refused: it starts no
        response (it was counted all the same, as a request the upstream refuses is)."""
        if self._asked:
            self._asked -= 1

    async def started(self) -> GatewayError | None:
        """A ``response.created``: one the client asked for is counted already, one the
        upstream started on its own (server VAD) now; its refusal (it is cancelled)."""
        if self._asked:
            self._asked -= 1
            return None
        return await self._count()

    def done(self, tokens: int) -> ResponseHolds | None:
        """A ``response.done`` of ``tokens``: the holds to settle at them (the caller
        settles them, safe to repeat); with none, they are charged as the session ends."""
        if self._held:
            return self._held.popleft()
        self.unheld_tokens += tokens
        return None

    async def close(self) -> None:
        """The holds of responses never done (asked, then refused upstream; or cut by the
        session's end) settled at no tokens: each was a request all the same. Safe to
        run again."""
        while self._held:
            await self._held[0].settle(0)
            self._held.popleft()

    async def _count(self) -> GatewayError | None:
        if not self._limits and self._quota is None:
            return None
        request_id = f"{self._request_id}:response{next(self._numbers)}"
        rates: Admission | None = None
        try:
            store = await self._handle.get()
            rates = Admission(store, None, self._limits)
            if self._limits:
                decision = await store.reserve(request_id, self._limits, tokens=0, cost=0.0)
                if isinstance(decision, Denied):
                    return decision.error()
                rates.reservation = decision
            quota = await self._quota_held(f"{request_id}:{self._deployment.name}")
        except GatewayError as exc:  # over the deployment's quota, or the store cannot
            # answer (fail_closed): refused, as a chat request is then; the key's hold
            # given back (the request counted all the same, as a chat request's is)
            if rates is not None:  # a hold of no budget: one the store missed refills
                with contextlib.suppress(StoreUnavailable):
                    await rates.release()
            return exc
        self._held.append(ResponseHolds(rates, quota))
        return None

    async def _quota_held(self, request_id: str) -> Hold | None:
        """One request of no tokens held against the deployment's own quota
        (``DeploymentAtQuota`` where it has no room), as a chat request's attempt is."""
        if self._quota is None:
            return None
        store = await self._handle.get()
        decision = await store.reserve(request_id, (self._quota,), tokens=0, cost=0.0)
        if isinstance(decision, Denied):
            raise at_quota(self._deployment, decision)
        return Hold(store, decision)


async def outlived(graph: Callable[[], Graph], key: ApiKey, opened_at: float,
                   longest_s: float) -> GatewayError:
    """Wait until a session opened at ``opened_at`` (epoch seconds) must end, and say
    why: its key expired, or is gone from the current graph (``graph()``; a JWT's
    caller: its issuer is), or the session is ``longest_s`` old.

    >>> _duration(3600.0), _duration(90.0), _duration(1.5)
    ('60 minutes', '90 seconds', '1.5 seconds')
    """
    ends_at = opened_at + longest_s
    while True:
        now = time.time()
        try:
            current = _current(graph(), key)
        except Unauthorized as exc:  # KeyExpired among them
            return exc
        if ends_at <= now:
            return SessionExpired(
                f"Your session hit the maximum duration of {_duration(longest_s)}.")
        until = ends_at if current.expires_at is None else min(ends_at, current.expires_at)
        await asyncio.sleep(min(until - now, _RECHECK_S))


def _current(graph: Graph, key: ApiKey) -> ApiKey:
    """``key`` as ``graph`` has it: a key by its name (refused as its secret would be);
    a JWT's caller while its issuer is configured (a key's name would never be its)."""
    if key.issuer is None:
        return key_named(graph, key.name)
    if caller_in(graph, key) is None:
        raise Unauthorized(f"The issuer '{key.issuer}' is no longer in the gateway's config.")
    return key


def _duration(seconds: float) -> str:
    if seconds >= 120 and seconds % 60 == 0:
        return f"{int(seconds // 60)} minutes"
    return f"{seconds:g} seconds"
