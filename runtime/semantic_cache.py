"""A route cache's semantic lookup: an answer served again to a conversation that means
the same as the one it answered, not only to the same request.

A route with ``cache: {semantic: {embeddings: embed, threshold: 0.95}}`` looks up the
exact entry first (runtime/response_cache.py). On an exact miss, a request whose
messages are text only (not a /v1/completions prompt of token ids, which is looked up
exactly only) and whose last message is at most ``max_prompt_tokens`` is embedded
through the gateway's route ``embed``, as /v1/embeddings embeds (runtime/embeddings.py):
the caller's key must be allowed to it and its policies permit it, its limits hold the
call, and the call is billed to the key (team, end user) and written to the ledger as
an embeddings request of its own. What is embedded is the last message, its role and
text; the messages before it (the system prompt, earlier turns) are part of the shape,
compared exactly. A conversation's embedding moves little with a few of its words, so
comparing the whole one by meaning served a question asked under another system prompt
("Answer in French." / "in German.") or after another earlier answer ("9 days" / "90
days") the answer written for the other.

The embedding is compared with those of the cached entries of the same *shape*: the
route, the deployments that may serve it, the scope's owner, every request field but
the last message and those of delivery (``stream``, ``stream_options``, ``user``...),
and the embeddings deployment that made the vectors (another model's are not
comparable). The
nearest entry within the TTL is served if its cosine similarity reaches ``threshold``,
re-checked against the route policies as an exact hit is (one they deny: the next
nearest, of ``CANDIDATES``). A miss's answer, when it is
cached at all, is cached with its embedding.

A lookup that fails (the embeddings call refused or failed or past ``timeout_s``, the
cache unreachable) is a miss, never a failed request; it waits at most half of what is
left of the request's deadline, so that a miss is still answered in time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aigw.compiler.graph import ApiKey, Route, SemanticCache

from .chat_request import ChatRequest, Message, TextChatRequest
from .embeddings import embed
from .errors import GatewayError
from .response_cache import CacheBackend, cache_key

if TYPE_CHECKING:  # numpy (vector_index) is imported by the first lookup, not at start
    from .exchange import Exchange
    from .vector_index import Vector

log = logging.getLogger("aigw.cache")
# Entries tried, nearest first: the nearest may be one this caller is not served (its
# deployment denied to them by the route policies, an entry Redis dropped), and the
# next as near may be (theirs, from the deployment they are let use).
CANDIDATES = 4
_TEXT_ROLES = frozenset({"system", "developer", "user", "assistant"})


@dataclass(frozen=True, slots=True)
class SemanticAsk:
    """What a request's semantic lookup needs: its last message's text, and its shape's
    digest (all the rest)."""

    semantic: SemanticCache
    text: str
    shape: str


@dataclass(frozen=True, slots=True)
class Embedded:
    """A conversation's unit vector, and the bucket of the vectors it compares with."""

    bucket: str
    vector: Vector


def semantic_ask(route: Route, request: ChatRequest, key: ApiKey,
                 last_tokens: int) -> SemanticAsk | None:
    """The lookup ``request`` makes on ``route``'s semantic cache; None when the route has
    none, or the request is one it does not take (not text only, its last message, of
    ``last_tokens``, over the size: that is what is embedded; a /v1/completions prompt
    of token ids: numbers, whose meaning no embedding reads)."""
    assert route.cache is not None
    semantic = route.cache.semantic
    if semantic is None or last_tokens > semantic.max_prompt_tokens:
        return None
    if isinstance(request, TextChatRequest) and request.prompt_ids is not None:
        return None
    if conversation(request.messages) is None:
        return None
    *earlier, last = request.messages
    text = conversation([last])
    assert text is not None
    # The shape holds what came before the last message, compared exactly: the key of
    # the request without it (a bucket's name is a digest of it, apart from entries').
    before = request.model_copy(update={"messages": earlier})
    return SemanticAsk(semantic, text, cache_key(route, before, key))


def conversation(messages: list[Message]) -> str | None:
    """The messages as the text embedded: one ``role: text`` line (``role (name)`` for
    a named participant) each; None unless every message is text only (no tool calls
    or results, images, audio...).

    >>> conversation([Message(role="system", content="Be brief."),
    ...               Message(role="user", content="Hi")])
    'system: Be brief.\\nuser: Hi'
    """
    lines = []
    for message in messages:
        if message.role not in _TEXT_ROLES or message.tool_calls or message.model_extra:
            return None
        content = message.content
        if isinstance(content, list) and any(
                part.type != "text" or part.text is None for part in content):
            return None
        who = f"{message.role} ({message.name})" if message.name else message.role
        lines.append(f"{who}: {message.text()}")
    return "\n".join(lines)


async def embed_conversation(exchange: Exchange, key: ApiKey, ask: SemanticAsk,
                             wait_s: float) -> Embedded | None:
    """``ask``'s conversation embedded for ``key`` through the embeddings route, as a
    request of its own (``exchange.beside``): settled and in the ledger, refused or
    failed too (past ``wait_s``, say). None when it was refused or failed: the lookup is
    then a miss."""
    live = exchange.live
    route = live.graph.routes[ask.semantic.embeddings]  # the compiler checked it is one
    side = exchange.beside("embeddings")
    side.identify(key, exchange.user)
    user = exchange.plan.request.user if exchange.plan is not None else None
    try:
        won = await embed(side, key, route, (ask.text,), False, None, user, route.name,
                          wait_s)
    except GatewayError as exc:
        await side.fail(exc)
        live.telemetry.refused(side.record, side.headers)
        live.telemetry.finish(side.record)
        log.info("semantic cache lookup on %s is a miss: its embedding failed (%s)",
                 route.name, exc.code)
        return None
    except asyncio.CancelledError:
        await side.cancelled()
        live.telemetry.finish(side.record)
        raise
    live.telemetry.finish(side.record)
    vectors = won.value.vectors
    from .vector_index import unit
    vector = unit(vectors[0]) if vectors else None
    if vector is None:
        return None
    deployment = won.candidate.deployment
    bucket = hashlib.sha256(
        f"{ask.shape}\n{deployment.name}\n{deployment.model}".encode()).hexdigest()
    return Embedded(bucket, vector)


async def nearest(cache: CacheBackend, embedded: Embedded,
                  threshold: float) -> list[tuple[str, float]]:
    """The keys of the cached entries nearest ``embedded`` whose similarity reaches
    ``threshold`` (the few nearest: ``CANDIDATES``), nearest first, with it."""
    found = await cache.nearest(embedded.bucket, embedded.vector, CANDIDATES)
    # float32 rounding: the same conversation may score 0.99999994
    return [(key, min(1.0, similarity)) for key, similarity in found
            if similarity >= threshold - 1e-6]
