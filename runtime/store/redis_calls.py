"""The Redis store's key names and the script calls it sends (KEYS and ARGV as the
scripts in lua.py read them), built apart from when and how the store sends them."""

from __future__ import annotations

import math
from urllib.parse import quote

from .checks import (
    SETTLE_GRACE,
    BudgetCheck,
    Plan,
    Shapes,
    SlotCheck,
    keep_seconds,
)
from .outbox import Arg, Invocation
from .values import Reservation


class RedisCalls:
    """The keys of one namespace, and the ``Invocation`` of each script on them."""

    def __init__(self, namespace: str, shapes: Shapes) -> None:
        self._ns = namespace
        self._shapes = shapes  # its store's

    def key(self, *parts: str) -> str:
        return ":".join((self._ns, *parts))

    def bucket_key(self, scope: str, name: str, unit: str) -> str:
        return self.key("rate", scope, quote(name, safe=""), unit)

    def budget_keys(self, check: BudgetCheck) -> tuple[str, str]:
        counter = self.key("budget", check.scope.value, quote(check.name, safe=""))
        counter += f":{check.period_key}"
        return counter, counter + ":holds"

    def places_key(self, check: SlotCheck) -> str:
        return self.key("par", check.scope.value, quote(check.name, safe=""))

    def reserve(
        self, request_id: str, checks: Plan, now: float, ttl: float, nonce: str
    ) -> Invocation:
        keys = [self.key("res", quote(request_id, safe=""))]
        args: list[Arg] = [
            now,
            request_id,
            ttl,
            marker_ms(ttl),
            checks.cost_nanos,
            len(checks.buckets),
            len(checks.budgets),
            nonce,
        ]
        for bucket in checks.buckets:
            keys.append(self.bucket_key(bucket.scope.value, bucket.name, bucket.unit.value))
            args += [bucket.cap, bucket.need]
        for budget in checks.budgets:
            keys += self.budget_keys(budget)
            args += [budget.amount_nanos, keep_seconds(budget, now)]
        for slot in checks.slots:
            keys.append(self.places_key(slot))
            args.append(slot.cap)
        return Invocation("reserve", tuple(keys), tuple(args))

    def settle(self, request_id: str, charge: Plan, now: float) -> Invocation:
        keys = [self.key("res", quote(request_id, safe=""))]
        args: list[Arg] = [
            now,
            request_id,
            charge.cost_nanos,
            len(charge.buckets),
            len(charge.budgets),
        ]
        for bucket in charge.buckets:
            keys.append(self.bucket_key(bucket.scope.value, bucket.name, bucket.unit.value))
            args += [bucket.cap, bucket.need]
        for budget in charge.budgets:
            keys += self.budget_keys(budget)
            args.append(keep_seconds(budget, now))
        keys += [self.places_key(slot) for slot in charge.slots]
        return Invocation("settle", tuple(keys), tuple(args))

    def abandon(
        self, request_id: str, checks: Plan, now: float, ttl: float, nonce: str
    ) -> Invocation:
        keys = [self.key("res", quote(request_id, safe=""))]
        args: list[Arg] = [now, request_id, marker_ms(ttl), nonce,
                           len(checks.buckets), len(checks.budgets)]
        for bucket in checks.buckets:
            keys.append(self.bucket_key(bucket.scope.value, bucket.name, bucket.unit.value))
            args += [bucket.cap, bucket.need]
        for budget in checks.budgets:
            keys += self.budget_keys(budget)
        keys += [self.places_key(slot) for slot in checks.slots]
        return Invocation("abandon", tuple(keys), tuple(args))

    def renew(self, reservation: Reservation, now: float, ttl: float) -> Invocation:
        keys = [self.key("res", quote(reservation.request_id, safe=""))]
        budgets = self._shapes.reservation_budgets(reservation)
        for budget in budgets:
            keys += self.budget_keys(budget)
        keys += [self.places_key(slot) for slot in self._shapes.reservation_slots(reservation)]
        return Invocation("renew", tuple(keys), (
            reservation.request_id, now, now + ttl, marker_ms(ttl), len(budgets)))

    def adoption(self, reservation: Reservation, until: float, now: float) -> Invocation:
        """The ``adopt`` of a local reservation whose holds here last until ``until``."""
        budgets = self._shapes.reservation_budgets(reservation) if reservation.cost_nanos else ()
        keys = self._adopted_keys(reservation, budgets)
        args: list[Arg] = [adopted_hold(reservation.request_id), until, reservation.cost_nanos,
                           math.ceil((until - now) * 1000) + 1000, len(budgets)]
        args += [keep_seconds(budget, now) for budget in budgets]
        return Invocation("adopt", tuple(keys), tuple(args))

    def unadoption(self, reservation: Reservation) -> Invocation:
        """The ``unadopt`` of a local reservation's adoption, at its settle."""
        budgets = self._shapes.reservation_budgets(reservation) if reservation.cost_nanos else ()
        keys = self._adopted_keys(reservation, budgets)
        args: tuple[Arg, ...] = (adopted_hold(reservation.request_id),
                                 math.ceil(SETTLE_GRACE), len(budgets))
        return Invocation("unadopt", tuple(keys), args)

    def charge(self, request_id: str, charge: Plan, now: float) -> Invocation:
        """The charge of a local reservation's cost, at its settle (before its
        ``unadopt``, if it was adopted)."""
        keys = [self.key("charged", quote(request_id, safe=""))]
        keys += [self.budget_keys(budget)[0] for budget in charge.budgets]
        args: list[Arg] = [math.ceil(SETTLE_GRACE), charge.cost_nanos]
        args += [keep_seconds(budget, now) for budget in charge.budgets]
        return Invocation("charge", tuple(keys), tuple(args))

    def _adopted_keys(self, reservation: Reservation,
                      budgets: tuple[BudgetCheck, ...]) -> list[str]:
        """The marker, the budgets (hash, expiry set) and the places of an adoption."""
        keys = [self.key("charged", quote(reservation.request_id, safe=""))]
        for budget in budgets:
            keys += self.budget_keys(budget)
        keys += [self.places_key(slot) for slot in self._shapes.reservation_slots(reservation)]
        return keys


def adopted_hold(request_id: str) -> str:
    """The name an adoption holds under (its budget holds, its places): not the request
    id, which a reserve of the same request that Redis ran late holds under (its reply
    lost, the request admitted locally), and which that reserve's abandon gives back:
    it gave back the adoption's hold with it, or that reserve, run after the adoption,
    added its cost to ``held`` a second time under the one hold."""
    return f"adopted:{request_id}"


def marker_ms(ttl: float) -> int:
    """How long a reservation's marker lives: past its hold, for settles that come late."""
    return math.ceil((ttl + SETTLE_GRACE) * 1000)
