"""Where a pipeline's ``http`` step may send a request.

An ``http`` step's URL is a template, and what it renders can come from a client's
input: without a rule, ``url: "{{ input.url }}"`` lets any caller make the gateway
fetch ``http://169.254.169.254/...`` or an internal service (server-side request
forgery). So the compiler fixes each step's destination:

- a URL whose scheme, host and port are written out (``https://tools.example.com/v1/
  {{ input.id }}``) may only reach that origin;
- a URL whose host is templated needs ``allow_hosts``, where it may go: a host alone
  means https on port 443; ``host:port`` https on that port; ``http://host[:port]``
  plain http there (the scheme and port are pinned too, so a template can neither
  pick another port of an allowed host nor send its headers in clear text);

and the runtime checks every rendered URL against that rule (runtime/workflows/
kinds.py, with the parser httpx sends with), refusing user info (``https://tools.example.com@evil.test/``),
other schemes and other hosts. Redirects are not followed.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

# The start of a template: the URL before it is literal text.
_TEMPLATE_START = re.compile(r"\{[{%#]")
# A written-out origin: its authority ends with a "/", "?" or "#" before any template
# (or the URL has no template at all).
_LITERAL_ORIGIN = re.compile(r"^(?P<origin>https?://[^/?#\\{}\s]+)(?P<end>[/?#]|$)",
                             re.IGNORECASE)
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Egress:
    """The origins one ``http`` step may reach ("https://tools.example.com:443"), and
    whether its URL wrote the one origin out (else they come from ``allow_hosts``). The
    runtime checks each rendered URL against them (runtime/workflows/kinds.py)."""

    origins: frozenset[str]
    written_out: bool


def origin(scheme: str, host: str, port: int | None) -> str:
    """``scheme://host:port``, lower case, the port always written."""
    scheme = scheme.lower()
    return f"{scheme}://{host.lower()}:{port or DEFAULT_PORTS.get(scheme, 0)}"


def allowed_origin(entry: str) -> str:
    """An ``allow_hosts`` entry (``host``, ``host:port`` or ``http(s)://host[:port]``, as
    the spec's pattern allows) as an origin; https unless it says http."""
    scheme, _, rest = entry.rpartition("://")
    host, _, port = rest.partition(":")
    return origin(scheme or "https", host, int(port) if port else None)


def literal_origin(template: str) -> str | None:
    """The origin a URL template writes out in full, or None if any of it is templated."""
    literal = _TEMPLATE_START.split(template, maxsplit=1)[0]
    match = _LITERAL_ORIGIN.match(literal)
    if match is None or (not match["end"] and literal != template):
        return None  # e.g. "https://tools.example.com{{ rest }}": the host may go on
    try:
        parsed = urllib.parse.urlsplit(match["origin"])
        port = parsed.port
    except ValueError:  # a port that is not a number
        return None
    if parsed.username is not None or not parsed.hostname:
        return None
    return origin(parsed.scheme, parsed.hostname, port)


def endpoint(url: str, credentials: str, whose: str) -> urllib.parse.SplitResult | str:
    """``url`` parsed, for an endpoint aigw calls as written (an agent, a guardrail's
    checker), or why it cannot be called: ``credentials`` says where they go instead of
    user info, ``whose`` names the URL ("an agent's").

    >>> endpoint("https://u@guard.internal/check", "headers", "a checker's")
    'it has user info: send credentials with headers instead'
    """
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 -- raises on a port that is not a number
    except ValueError as exc:  # a port that is not a number, a bad IPv6 literal
        return f"it does not parse ({exc})"
    if parsed.scheme.lower() not in ("http", "https") or not parsed.hostname:
        return "it is not an http(s) URL with a host"
    if parsed.username is not None:
        return f"it has user info: send credentials with {credentials} instead"
    if "{" in url:
        return f"it is not a template: {whose} URL is written out"
    return parsed
