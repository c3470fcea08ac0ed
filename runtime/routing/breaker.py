"""A circuit breaker per deployment: closed, open, then half-open with a single probe.

    closed --(N failures in a row, or failure rate over the window)--> open
    open --(cooldown elapsed)--> half_open: one probe request is let through
    half_open --probe succeeds--> closed      half_open --probe fails--> open

Only the probe's verdict moves a half-open circuit: a call let through while the circuit
was closed, ending now, counts in the window and nothing more, and cannot give back
the probe's place while the probe is still out.

Updated only from the event loop's thread, between awaits, so it needs no lock.
"""

from __future__ import annotations

from collections import deque
from enum import Enum, StrEnum

from aigw.compiler.graph import BreakerPolicy


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Permit(Enum):
    """What ``try_acquire`` let through: an ordinary call, or the half-open probe."""

    CALL = "call"
    PROBE = "probe"


class CircuitBreaker:
    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self._state = CircuitState.CLOSED
        self._opened_at = 0.0
        self._consecutive = 0
        self._window: deque[tuple[float, bool]] = deque()
        self._window_failures = 0  # failed calls in _window, kept as it changes
        self._probe_out = False

    def state(self, now: float) -> CircuitState:
        if self._state is CircuitState.OPEN and now - self._opened_at >= self.policy.cooldown_s:
            self._state = CircuitState.HALF_OPEN
            self._probe_out = False
        return self._state

    def try_acquire(self, now: float) -> Permit | None:
        """May a request go to this deployment now (None: no)? In half-open, only the one
        probe may. The call's verdict is given back with the permit (``record``,
        ``release``)."""
        state = self.state(now)
        if state is CircuitState.CLOSED:
            return Permit.CALL
        if state is CircuitState.HALF_OPEN and not self._probe_out:
            self._probe_out = True
            return Permit.PROBE
        return None

    def available(self, now: float) -> bool:
        """Like ``try_acquire`` but claims nothing (for explaining and filtering)."""
        state = self.state(now)
        return state is CircuitState.CLOSED or (
            state is CircuitState.HALF_OPEN and not self._probe_out
        )

    def reopens_in(self, now: float) -> float | None:
        """Seconds until an open circuit lets its probe through (the rest of its
        cooldown); None when it is not open (a half-open one waits on its probe)."""
        if self.state(now) is not CircuitState.OPEN:
            return None
        return self.policy.cooldown_s - (now - self._opened_at)

    def recent(self, now: float) -> tuple[int, int]:
        """Calls and failed calls in the window that ends at ``now`` (for policies)."""
        self._trim(now)
        return len(self._window), self._window_failures

    def record(self, now: float, ok: bool, permit: Permit) -> None:
        """A call's verdict. Only the probe's decides a half-open circuit; a call begun
        before the circuit opened is counted in the window and changes nothing else."""
        self._window.append((now, ok))
        self._window_failures += 0 if ok else 1
        self._trim(now)
        if permit is Permit.PROBE and self._state is CircuitState.HALF_OPEN:
            if ok:
                self._close()
            else:
                self._open(now)
            return
        if self._state is not CircuitState.CLOSED:
            return
        if ok:
            self._consecutive = 0
            return
        self._consecutive += 1
        failures = sum(1 for _, success in self._window if not success)
        over_rate = (
            len(self._window) >= self.policy.min_requests
            and failures / len(self._window) >= self.policy.failure_rate
        )
        if self._consecutive >= self.policy.consecutive_failures or over_rate:
            self._open(now)

    def _trim(self, now: float) -> None:
        horizon = now - self.policy.window_s
        while self._window and self._window[0][0] < horizon:
            _, ok = self._window.popleft()
            self._window_failures -= 0 if ok else 1

    def release(self, permit: Permit) -> None:
        """The call ended without a verdict (cancelled, the request's own fault): if it
        was the probe, let another one through."""
        if permit is Permit.PROBE:
            self._probe_out = False

    def _open(self, now: float) -> None:
        self._state = CircuitState.OPEN
        self._opened_at = now
        self._probe_out = False

    def _close(self) -> None:
        self._state = CircuitState.CLOSED
        self._consecutive = 0
        self._window.clear()
        self._window_failures = 0
        self._probe_out = False
