"""The one log line of an error no handler names (aigw's own fault, answered as a 500).

Written once, where the request's id is known, and the error then goes no further: an
error an ASGI app raises is logged again by the server (hypercorn's "Error in ASGI
Framework", a second traceback naming no request). The line names the request's method,
path and id (its ``x-request-id``), never its body; its traceback has the provider keys
of the request's graph and the caller's own credential scrubbed out, as an exception's
message may quote them (an httpx error its URL, a repr the headers it was given).
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Mapping

from aigw.compiler.graph import Graph

from ..upstream import scrub

log = logging.getLogger("aigw.http")

# Where a client sends its credential: the OpenAI SDKs, Anthropic's, Azure's, Google's.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


def log_fault(exc: BaseException, what: str, request_id: str | None, graph: Graph | None,
              headers: Mapping[str, str]) -> None:
    """Log ``exc``, raised serving ``what`` (``POST /v1/chat/completions``) as the request
    ``request_id``, with its traceback scrubbed of ``graph``'s provider keys and the
    credential in the request's ``headers``."""
    text = "".join(traceback.format_exception(exc)).rstrip()
    for credential in _credentials(headers):
        text = text.replace(credential, "***")
    for provider in graph.providers.values() if graph is not None else ():
        text = scrub(text, provider)
    log.error("unhandled error on %s (request %s)\n%s", what, request_id or "-", text)


def _credentials(headers: Mapping[str, str]) -> Iterator[str]:
    """The secrets a client sent: each credential header's token (``Bearer`` left out),
    unless too short to be one (a word that short would blank out ordinary text)."""
    for name in CREDENTIAL_HEADERS:
        token = (headers.get(name) or "").rpartition(" ")[2]
        if len(token) >= _SHORTEST_SECRET:
            yield token


_SHORTEST_SECRET = 8
