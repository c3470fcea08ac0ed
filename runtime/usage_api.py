"""Spend and budgets over HTTP: GET /v1/costs/summary, /admin/spend and /admin/budgets.

A key sees its own usage on /v1/costs/summary; an admin key sees everyone's, there and
on the /admin endpoints. Figures come from the spend ledger (one record per request).
A summary with no ``since`` starts at the UTC midnight ``DEFAULT_WINDOW_DAYS`` whole days
before the day of ``until`` (or today) (``default_since``), and the body says which
``since`` and ``until`` it covers; ``since=0`` asks for all.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .auth import authenticate, require_admin
from .errors import BadRequest
from .live import Live
from .store import BudgetStatus, Dimension, Limits, Scope, UsageQuery
from .store.usage import DAY_S, day_number
from .telemetry.access import called_by

_NOT_A_TIME = "'{name}' must be a Unix time or an ISO 8601 date."
# Without a window, a summary covered every day ever recorded.
DEFAULT_WINDOW_DAYS = 31
_DIMENSIONS = ", ".join(dimension.value for dimension in Dimension)


def _timestamp(text: str | None, name: str) -> float | None:
    """Seconds since the epoch, or an ISO date/time (UTC unless it says otherwise)."""
    if text is None or text == "":
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = _iso_seconds(text, name)
    if not math.isfinite(seconds):  # float() reads nan and inf, which are no time (and
        # Redis refuses nan as a score)
        raise BadRequest(_NOT_A_TIME.format(name=name), param=name)
    return seconds


def _iso_seconds(text: str, name: str) -> float:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(_NOT_A_TIME.format(name=name), param=name) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def default_since(until: float | None, now: float) -> float:
    """Where a summary with no ``since`` starts: the UTC midnight ``DEFAULT_WINDOW_DAYS``
    whole days before the day of ``until`` (or of ``now``). Not ``until`` less 31 days: a
    window from midnight reads its days from their totals, where one from any time of
    day read its first day's records one by one (and showed that day in part).

    >>> default_since(None, 1767315600.0)  # 2026-01-02 01:00 UTC
    1764633600.0
    """
    return float((day_number(now if until is None else until) - DEFAULT_WINDOW_DAYS) * DAY_S)


def _query(request: Request, default: tuple[Dimension, ...]) -> UsageQuery:
    params = request.query_params
    raw = params.get("group_by")
    try:
        group_by = (
            tuple(Dimension(part.strip()) for part in raw.split(",") if part.strip())
            if raw else default
        )
    except ValueError:
        raise BadRequest(f"'group_by' takes a comma-separated list of: {_DIMENSIONS}.",
                         param="group_by") from None
    since = _timestamp(params.get("since"), "since")
    until = _timestamp(params.get("until"), "until")
    if since is None:
        since = default_since(until, time.time())
    return UsageQuery(
        group_by=group_by or default,
        since=since,
        until=until,
        team=params.get("team") or None,
        key=params.get("key") or None,
    )


async def _summary(live: Live, query: UsageQuery) -> Response:
    store = await live.store.get()
    rows = await store.summary(query)
    return JSONResponse({
        "object": "list",
        "group_by": [dimension.value for dimension in query.group_by],
        "since": query.since,
        "until": query.until,
        "data": [dataclasses.asdict(row) for row in rows],
    })


async def costs_summary(live: Live, request: Request) -> Response:
    """GET /v1/costs/summary?group_by=team,route,day&since=2026-11-01&team=eng"""
    key = called_by(request.scope, await authenticate(live, request.headers))
    query = _query(request, (Dimension.DAY, Dimension.ROUTE))
    if not key.admin:  # a key sees only its own usage
        query = dataclasses.replace(query, key=key.name, team=None)
    return await _summary(live, query)


async def admin_spend(live: Live, request: Request) -> Response:
    called_by(request.scope, require_admin(live.graph, request.headers))
    return await _summary(live, _query(request, (Dimension.TEAM, Dimension.KEY)))


async def declared_budgets(live: Live, user: str | None = None) -> tuple[BudgetStatus, ...]:
    """Every budget the graph declares for teams and keys, for its current period, and
    with ``user`` that end user's under each team and key (end users are not listed
    otherwise: their names are whatever clients send)."""
    limits: dict[tuple[Scope, str], Limits] = {}
    for key in live.graph.keys_by_name.values():
        for item in live.scopes.limits(key, user):
            if item.budget is not None:
                limits[(item.scope, item.name)] = item
    if not limits:
        return ()
    store = await live.store.get()
    return await store.budgets(tuple(limits.values()))


async def admin_budgets(live: Live, request: Request) -> Response:
    """Every budget the graph declares for teams and keys, for its current period
    (``?user=`` adds that end user's)."""
    called_by(request.scope, require_admin(live.graph, request.headers))
    statuses = await declared_budgets(live, request.query_params.get("user") or None)
    return JSONResponse({"object": "list", "data": [
        {
            "scope": status.scope.value,
            "name": status.name,
            "period": status.period.value,
            "period_key": status.period_key,
            "amount": status.amount,
            "spent": status.spent,
            "held": status.held,
            "remaining": status.remaining,
            "resets_at": status.resets_at,
        }
        for status in statuses
    ]})
