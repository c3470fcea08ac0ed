"""What runs of a guardrail: patterns compiled once, with the PII recognizers built in.

A route's guardrails (``Route.guardrails``) are split by direction when the graph is
frozen, so a request only walks the tuple for the side it is on; a route with none has
``None`` there and its requests do no guardrail work at all (runtime/guardrails.py).

The PII recognizers are plain regular expressions, each with an optional check of
what it matched (a credit card's Luhn digit, an IBAN's mod-97), so that no new
dependency is needed and every number that looks like one is not redacted.

>>> [m.group() for m in PII["credit_card"].pattern.finditer("card 4111 1111 1111 1111.")]
['4111 1111 1111 1111']
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Direction = Literal["input", "output"]
Action = Literal["block", "redact", "log"]


def luhn(text: str) -> bool:
    """Whether the digits of ``text`` (13 to 19 of them) pass the Luhn check.

    >>> luhn("4111 1111 1111 1111"), luhn("4111 1111 1111 1112")
    (True, False)
    """
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_checksum(text: str) -> bool:
    """Whether an IBAN (spaces allowed) has a valid ISO 13616 mod-97 check.

    >>> iban_checksum("GB82 WEST 1234 5698 7654 32"), iban_checksum("GB82 WEST 1234 5698 7654 33")
    (True, False)
    """
    compact = text.replace(" ", "")
    moved = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


# A date written with digits only (2024-01-15, 15.01.2024) has the shape of a phone number.
_DATE = re.compile(r"\d{4}([-.])\d{2}\1\d{2}|\d{2}([-.])\d{2}\2\d{4}")


def _phone_digits(text: str) -> bool:
    # A phone number has 8 to 15 digits (E.164); fewer is a year or a count, more a card.
    return 8 <= sum(c.isdigit() for c in text) <= 15 and _DATE.fullmatch(text) is None


@dataclass(frozen=True, slots=True)
class Matcher:
    """One pattern, what replaces its matches, and a check a match must pass too."""

    label: str  # the replacement text: [REDACTED] for a regex guardrail, [EMAIL] for pii
    pattern: re.Pattern[str]
    check: Callable[[str], bool] | None = None


# The recognizers, in the order a span is claimed: a credit card's digits are not also
# a phone number, an SSN is not a phone number.
PII: Mapping[str, Matcher] = MappingProxyType({
    "credit_card": Matcher("[CREDIT_CARD]", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"),
                           luhn),
    "us_ssn": Matcher("[US_SSN]", re.compile(
        r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")),
    "iban": Matcher("[IBAN]", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"),
                    iban_checksum),
    "ipv4": Matcher("[IPV4]", re.compile(
        r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
        r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?!\.?\d)")),
    "email": Matcher("[EMAIL]", re.compile(
        r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")),
    "phone": Matcher("[PHONE]", re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]?\d{2,4}){1,4}"
        r"(?![\w-])"), _phone_digits),
})


@dataclass(frozen=True, slots=True)
class VerdictCache:
    """How many of a webhook's verdicts on input texts a process keeps, and how long."""

    max_entries: int
    ttl_s: float


@dataclass(frozen=True, slots=True)
class Webhook:
    """An external checker: POSTed {text, direction, route, key, team}, answering
    {allow, reason?, text?}. ``disabled_reason``: an unset ${ENV} (treated as an error
    of the checker, so ``on_error`` decides). ``cache``: None, each text is asked about
    every time. ``fingerprint``: of the whole guardrail as configured (its ${ENV}s
    resolved), so a reload that changes it reuses none of its old verdicts."""

    url: str
    timeout_s: float
    allow_on_error: bool
    disabled_reason: str | None
    headers: Mapping[str, str] = field(repr=False)
    cache: VerdictCache | None
    fingerprint: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Guardrail:
    """A named check; exactly one of ``matchers`` (regex, pii) or ``webhook`` is set."""

    name: str
    kind: Literal["regex", "pii", "webhook"]
    action: Action
    sides: frozenset[Direction]
    matchers: tuple[Matcher, ...] = ()
    webhook: Webhook | None = None


@dataclass(frozen=True, slots=True)
class RouteGuardrails:
    """A route's guardrails by direction, in the order the route lists them."""

    input: tuple[Guardrail, ...]
    output: tuple[Guardrail, ...]

    @property
    def output_webhook(self) -> bool:
        """A webhook checks the output: a stream holds each choice back to its end."""
        return any(guardrail.webhook is not None for guardrail in self.output)
