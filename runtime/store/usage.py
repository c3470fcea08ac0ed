"""Usage summaries computed from ledger records in Python (the Redis store's way; the
embedded store asks SQLite for the same rows, in the same order)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .values import NANOS, Dimension, LedgerRecord, UsageQuery, UsageRow, to_nanos


def day_of(at: float) -> str:
    """The UTC day a record belongs to: ``day_of(1767225600.0) == "2026-01-01"``."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d")


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
    """Running sums for one group while records stream past."""

    __slots__ = ("cost_nanos", "errors", "estimated_nanos", "requests", "tokens_cached",
                 "tokens_in", "tokens_out")

    def __init__(self) -> None:
        self.requests = self.errors = self.tokens_in = self.tokens_out = self.cost_nanos = 0
        self.tokens_cached = self.estimated_nanos = 0

    def add(self, record: LedgerRecord) -> None:
        cost = to_nanos(record.cost)
        if record.estimated:  # a call a request made and did not use: no request itself
            self.estimated_nanos += cost
        else:
            self.requests += 1
            self.errors += record.status >= 400
        self.tokens_in += record.tokens_in
        self.tokens_out += record.tokens_out
        self.tokens_cached += record.tokens_cached
        self.cost_nanos += cost


class Summary:
    """Feed it records (``add``), then read the rows, sorted like SQL's ORDER BY."""

    def __init__(self, query: UsageQuery) -> None:
        self.query = query
        self._groups: dict[tuple[str | None, ...], Totals] = {}

    def add(self, record: LedgerRecord) -> None:
        if matches(record, self.query):
            group = tuple(_group(record, dimension) for dimension in self.query.group_by)
            totals = self._groups.get(group)
            if totals is None:
                totals = self._groups[group] = Totals()
            totals.add(record)

    def rows(self) -> tuple[UsageRow, ...]:
        def order(group: tuple[str | None, ...]) -> tuple[tuple[bool, str], ...]:
            return tuple((value is not None, value or "") for value in group)  # NULLs first

        rows = []
        for group in sorted(self._groups, key=order):
            totals = self._groups[group]
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
