"""Usage summaries: a window cut at UTC midnights, and totals summed per group.

Both stores keep totals per UTC day and per key, team, route and deployment
(``TOTALS_BY``), written with each record, so a summary reads the days its window
covers whole from them, and only the records of its partial first and last days one
by one (``window_of``). The Redis store sums those here (``Summary``); the embedded
store asks SQLite for the same rows, in the same order.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .values import NANOS, Dimension, LedgerRecord, UsageQuery, UsageRow, to_nanos

DAY_S = 86_400
_EPOCH = datetime.date(1970, 1, 1)
# The days a date can name (years 1 to 9999): no record is outside them (its day could
# not be written), so a window's bound beyond them is no bound.
_FIRST_DAY = (datetime.date.min - _EPOCH).days
_LAST_DAY = (datetime.date.max - _EPOCH).days


def day_number(at: float) -> int:
    """The UTC day ``at`` falls in, as whole days since 1970-01-01 (exactly: a record at
    the last float before midnight is in the day before, as its time says)."""
    day = int(at // DAY_S)
    if day * DAY_S > at:  # floor division of floats may round up to the next day
        day -= 1
    elif (day + 1) * DAY_S <= at:
        day += 1
    return day


def day_name(day: int) -> str:
    """``day_name(20454) == "2026-01-01"``."""
    return (_EPOCH + datetime.timedelta(days=day)).isoformat()


def day_of(at: float) -> str:
    """The UTC day a record belongs to: ``day_of(1767225600.0) == "2026-01-01"``."""
    return day_name(day_number(at))


@dataclass(frozen=True, slots=True)
class Cut:
    """A window ``since <= at < until`` cut at UTC midnights.

    ``days`` are the whole days inside it, ``[first, end)`` as day numbers (None: no
    bound), or None when it holds no whole day; ``edges`` are the ``[low, high)`` rest,
    read record by record (``low`` None: from the start; ``high`` None: to the end).

    >>> cut(1767225600.0 + 3600, 1767225600.0 + 3 * 86400)
    Cut(days=(20455, 20457), edges=((1767229200.0, 1767312000.0),))
    """

    days: tuple[int | None, int | None] | None
    edges: tuple[tuple[float | None, float | None], ...]


def cut(since: float | None, until: float | None) -> Cut:
    if (since is not None and not since <= _LAST_DAY * DAY_S) or (
        until is not None and not until >= _FIRST_DAY * DAY_S
    ):  # past every day a record can have, or NaN (the records' read says what of it)
        return Cut(None, ((since, until),))
    # The first midnight at or after since, the last at or before until (None: no bound).
    first = None if since is None or since <= _FIRST_DAY * DAY_S else -day_number(-since)
    end = None if until is None or until >= (_LAST_DAY + 1) * DAY_S else day_number(until)
    if first is not None and end is not None and first >= end:
        return Cut(None, ((since, until),))
    edges: list[tuple[float | None, float | None]] = []
    if since is not None and first is not None and since < first * DAY_S:
        edges.append((since, float(first * DAY_S)))
    if until is not None and end is not None and end * DAY_S < until:
        edges.append((float(end * DAY_S), until))
    return Cut((first, end), tuple(edges))


# What the days' totals are kept by. Not the end user: its names are whatever clients
# send, as many as the records at worst, so totals per day and user could cost a row a
# record and save no reading; a summary grouped by user reads its records.
TOTALS_BY = (Dimension.KEY, Dimension.TEAM, Dimension.ROUTE, Dimension.DEPLOYMENT)


def window_of(query: UsageQuery) -> Cut:
    """Where ``query`` is read: its whole days from their totals and the rest record by
    record (``cut``), or all of it record by record when it groups by the user."""
    if Dimension.USER in query.group_by:
        return Cut(None, ((query.since, query.until),))
    return cut(query.since, query.until)


def matches(record: LedgerRecord, query: UsageQuery) -> bool:
    return (
        (query.since is None or record.at >= query.since)
        and (query.until is None or record.at < query.until)
        and (query.team is None or record.team == query.team)
        and (query.key is None or record.key == query.key)
    )


def _group(record: LedgerRecord, dimension: Dimension) -> str | None:
    if dimension is Dimension.DAY:
        return day_of(record.at)
    value: str | None = getattr(record, dimension.value)
    return value


class Totals:
    """Running sums for one group while records (or a day's totals) stream past.

    ``records`` counts them all; ``requests`` and ``errors`` leave out the estimated
    ones (calls a request made and did not use), whose cost ``estimated_nanos`` sums."""

    __slots__ = ("cost_nanos", "errors", "estimated_nanos", "records", "requests",
                 "tokens_audio_in", "tokens_audio_out", "tokens_cached", "tokens_in",
                 "tokens_out")

    def __init__(self) -> None:
        self.records = self.requests = self.errors = self.tokens_in = self.tokens_out = 0
        self.tokens_cached = self.cost_nanos = self.estimated_nanos = 0
        self.tokens_audio_in = self.tokens_audio_out = 0

    def add(self, record: LedgerRecord) -> None:
        cost = to_nanos(record.cost)
        self.records += 1
        if record.estimated:  # a call a request made and did not use: no request itself
            self.estimated_nanos += cost
        else:
            self.requests += 1
            self.errors += record.status >= 400
        self.tokens_in += record.tokens_in
        self.tokens_out += record.tokens_out
        self.tokens_cached += record.tokens_cached
        self.tokens_audio_in += record.tokens_audio_in
        self.tokens_audio_out += record.tokens_audio_out
        self.cost_nanos += cost

    def merge(self, other: Totals) -> None:
        self.records += other.records
        self.requests += other.requests
        self.errors += other.errors
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.tokens_cached += other.tokens_cached
        self.tokens_audio_in += other.tokens_audio_in
        self.tokens_audio_out += other.tokens_audio_out
        self.cost_nanos += other.cost_nanos
        self.estimated_nanos += other.estimated_nanos


class Summary:
    """Feed it records (``add``) and days' totals (``add_day``), then read the rows,
    sorted like SQL's ORDER BY."""

    def __init__(self, query: UsageQuery) -> None:
        self.query = query
        self._groups: dict[tuple[str | None, ...], Totals] = {}

    def _totals(self, group: tuple[str | None, ...]) -> Totals:
        totals = self._groups.get(group)
        if totals is None:
            totals = self._groups[group] = Totals()
        return totals

    def add(self, record: LedgerRecord) -> None:
        if matches(record, self.query):
            group = tuple(_group(record, dimension) for dimension in self.query.group_by)
            self._totals(group).add(record)

    def add_day(self, owner: Mapping[Dimension, str | None], totals: Totals) -> None:
        """One day's totals of one group (the day and ``TOTALS_BY``); the caller picked
        the days, this checks the team and key."""
        query = self.query
        if (query.team is None or owner[Dimension.TEAM] == query.team) and (
            query.key is None or owner[Dimension.KEY] == query.key
        ):
            self._totals(tuple(owner[dimension] for dimension in query.group_by)).merge(totals)

    def rows(self) -> tuple[UsageRow, ...]:
        def order(group: tuple[str | None, ...]) -> tuple[tuple[bool, str], ...]:
            return tuple((value is not None, value or "") for value in group)  # NULLs first

        rows = []
        for group in sorted(self._groups, key=order):
            totals = self._groups[group]
            if not totals.records:  # every record of it deleted since (a retention)
                continue
            fields: dict[str, Any] = {
                d.value: v for d, v in zip(self.query.group_by, group, strict=True)
            }
            rows.append(
                UsageRow(
                    **fields,
                    requests=totals.requests,
                    errors=totals.errors,
                    tokens_in=totals.tokens_in,
                    tokens_out=totals.tokens_out,
                    tokens_cached=totals.tokens_cached,
                    tokens_audio_in=totals.tokens_audio_in,
                    tokens_audio_out=totals.tokens_audio_out,
                    cost=totals.cost_nanos / NANOS,
                    estimated_cost=totals.estimated_nanos / NANOS,
                )
            )
        return tuple(rows)


def summarize(records: Iterable[LedgerRecord], query: UsageQuery) -> tuple[UsageRow, ...]:
    summary = Summary(query)
    for record in records:
        summary.add(record)
    return summary.rows()
