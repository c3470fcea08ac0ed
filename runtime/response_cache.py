"""The exact-match response cache: a route's answer to the same request, served again.

A route with ``cache: {ttl_s: ..., scope: team}`` answers a request it has already
answered, within the TTL and the scope, without calling any upstream. Whether two
requests are "the same" is decided by everything that shapes the answer: the route,
the deployments (their models and max_output_tokens) that may serve it, and the
request body with the fields that only shape its delivery left out (``stream``,
``stream_options``, ``user``, ``safety_identifier``, ``prompt_cache_key``). Both
non-streaming and streaming requests read and fill it; a stream is cached only once it
ended normally.

The deployments of a route share its entries when they are one model: all of one
model id (gpt-4o-mini on OpenAI and on Azure), or the cache says ``one_model: true``.
Otherwise (``RouteCache.by_model``) each model's answers are kept apart (``model_key``)
and a request is looked up under the model it would be routed to first now
(``routing.choice.first_choice``): a caller routed to one model is never served another's
answer (a fallback's, kept while the first member was down).

A client opts out per request with ``Cache-Control``: ``no-cache`` skips the lookup
(the fresh answer refreshes the entry where the entry is the caller's own: a ``key``
scope, or an admin key), ``no-store`` skips the cache entirely.

Entries live where the store lives: in-process (least recently used dropped first,
within a count and a byte budget) for the embedded store, in Redis (``SET ... PX``)
when replicas share one. A route with ``semantic`` also keeps each entry's conversation
embedding (runtime/semantic_cache.py) next to it: in-process, dropped with its entry
(and counted in its bytes); in Redis, a hash per shape bucket of its most recent
``RedisCache.MAX_VECTORS`` entries. An answer larger than ``cache_max_entry_bytes`` is not kept
in either: one answer may be up to a provider's ``max_response_mb``, and in Redis the
entries share memory with the limits and budgets. A cache that fails is a miss, never
a failed request.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from starlette.datastructures import Headers

from aigw.compiler.graph import ApiKey, Graph, Route

from .chat_request import ChatRequest
from .jsonio import loads
from .providers.base import ChatDelta, ChatResult, Choice, ToolCall, ToolCallDelta, Usage
from .store.redis_store import disconnected

if TYPE_CHECKING:  # numpy is imported by the first semantic cache, not at start
    from .vector_index import Rows, Vector

log = logging.getLogger("aigw.cache")

Lookup = Literal["hit", "semantic_hit", "miss", "bypass"]
# Fields that shape how an answer is delivered, not what it says: who it is for (an
# abuse signal: ``user``, and ``safety_identifier`` that OpenAI has replace it) and
# which of the provider's prompt caches it is routed to (``prompt_cache_key``).
_DELIVERY_FIELDS = {"stream", "stream_options", "user", "safety_identifier", "prompt_cache_key"}
_ENTRY_VERSION = 1
# A provider's content filter cut or withheld the answer: a verdict on this one sample
# (filters are probabilistic and change), not an answer to serve for the whole TTL.
_FILTERED = "content_filter"


class CacheBackend(Protocol):
    """Where cached answers live: the one seam the cache needs."""

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def add_vector(self, bucket: str, key: str, vector: Vector, ttl_s: float) -> None:
        """Keep the unit ``vector`` of the entry ``key`` (just put) in ``bucket``."""

    async def nearest(self, bucket: str, vector: Vector,
                      count: int = 1) -> list[tuple[str, float]]:
        """The keys of the ``count`` unexpired entries in ``bucket`` whose vectors are
        nearest the unit ``vector``, nearest first, and their cosine similarities."""

    def resting(self) -> bool:
        """True while every lookup is a miss and nothing is kept (a Redis that did not
        answer): a lookup that costs something first (a semantic cache's embedding,
        billed) is not worth making."""

    async def aclose(self) -> None: ...


class LocalCache:
    """In-process entries, at most ``max_entries`` of them and ``max_bytes`` of values
    and of the matrices holding their vectors, the least recently used dropped first,
    with their vectors."""

    def __init__(self, max_entries: int, max_bytes: int = 128 << 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: collections.OrderedDict[str, tuple[float, bytes]] = (
            collections.OrderedDict())
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0  # of the values held, and the buckets' matrices
        self._clock = clock
        self._buckets: dict[str, Rows] = {}
        self._vector_of: dict[str, str] = {}  # entry key -> the bucket of its vector

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return value

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self._max_bytes:  # it would push out everything else, then itself
            self._drop(key)
            return
        old = self._entries.pop(key, None)  # a refresh: same messages, so its vector stays
        if old is not None:
            self._bytes -= len(old[1])
        self._entries[key] = (self._clock() + ttl_s, value)
        self._bytes += len(value)
        self._bound()

    def _bound(self) -> None:
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[1])
        bucket = self._vector_of.pop(key, None)
        if bucket is not None:
            rows = self._buckets[bucket]
            held = rows.nbytes
            rows.remove(key)
            self._bytes += rows.nbytes - held
            if not rows:
                del self._buckets[bucket]

    async def add_vector(self, bucket: str, key: str, vector: Vector, ttl_s: float) -> None:
        if key not in self._entries or key in self._vector_of:  # not kept, or kept with one
            return
        rows = self._buckets.get(bucket)
        if rows is not None and rows.width != vector.shape[0]:
            # The bucket's embedding model changed under its name (a reload): the vectors
            # it holds compare with no new one, and would keep every new one out until
            # they expired. They go (their entries stay, for exact hits).
            for old in rows:
                del self._vector_of[old]
            self._bytes -= rows.nbytes
            rows = None
        if rows is None:
            from .vector_index import Rows
            rows = self._buckets[bucket] = Rows()
        held = rows.nbytes
        rows.add(key, vector)
        self._vector_of[key] = bucket
        self._bytes += rows.nbytes - held
        self._bound()

    async def nearest(self, bucket: str, vector: Vector,
                      count: int = 1) -> list[tuple[str, float]]:
        rows = self._buckets.get(bucket)
        found = rows.nearest(vector, count) if rows is not None else []
        now = self._clock()
        if rows is None or all(self._entries[key][0] > now for key, _ in found):
            return found
        # Expired (entries are dropped as they are read): the bucket's expired entries
        # go at once, as they expire together (one TTL a route), then the nearest left.
        for key in [key for key in rows if self._entries[key][0] <= now]:
            self._drop(key)
        rows = self._buckets.get(bucket)
        return rows.nearest(vector, count) if rows is not None else []

    def resting(self) -> bool:
        return False

    async def aclose(self) -> None:
        self._entries.clear()
        self._buckets.clear()
        self._vector_of.clear()
        self._bytes = 0


class RedisCache:
    """Entries shared by every replica on one Redis, expired by Redis itself.

    A cache must never cost more than it saves: each command waits at most
    ``TIMEOUT_S`` and is not retried, and after Redis did not answer (unreachable, too
    slow) the cache is left alone (every lookup a miss, nothing written) for ``REST_S``,
    so a Redis that hangs costs one request a fraction of a second, not every request
    seconds. A call Redis answers with a refusal (a write out of memory under
    ``maxmemory``, as a cache next to limits and budgets should expect; a read-only
    replica) is that call's miss or unkept entry only: it came back at once, and the
    next call may well succeed. Each kind of refusal is logged once."""

    TIMEOUT_S = 0.25
    REST_S = 5.0
    # Vectors kept per shape bucket, the most recent: a lookup reads them all (256 of
    # 1,536 float32 dimensions: 1.5 MiB), within TIMEOUT_S.
    MAX_VECTORS = 256

    def __init__(self, url: str, namespace: str = "aigw") -> None:
        self._redis: Redis = Redis.from_url(
            url, socket_timeout=self.TIMEOUT_S, socket_connect_timeout=self.TIMEOUT_S,
            retry=Retry(NoBackoff(), 0))
        self._prefix = f"{namespace}:cache:"
        self._resting_until = 0.0
        self._refusals: set[tuple[str, str]] = set()  # (read or write, error type): logged
        self._add_vector = self._redis.register_script(_ADD_VECTOR)
        self._live_vectors = self._redis.register_script(_LIVE_VECTORS)

    def resting(self) -> bool:
        return time.monotonic() < self._resting_until

    def _failed(self, what: str, exc: BaseException) -> None:
        if disconnected(exc):
            self._resting_until = time.monotonic() + self.REST_S
            log.warning("response cache %s failed (a miss; the cache rests %.0f s): %s",
                        what, self.REST_S, exc)
            return
        kind = (what, type(exc).__name__)
        if kind not in self._refusals:
            self._refusals.add(kind)
            log.warning("response cache %s refused by Redis (%s: that one a miss, the cache "
                        "goes on; this kind of refusal is not logged again): %s", what,
                        type(exc).__name__, exc)

    async def get(self, key: str) -> bytes | None:
        if self.resting():
            return None
        try:
            value = await self._redis.get(self._prefix + key)
        except (RedisError, OSError) as exc:
            self._failed("read", exc)
            return None
        return value if isinstance(value, bytes) else None  # the client does not decode

    async def put(self, key: str, value: bytes, ttl_s: float) -> None:
        if self.resting():
            return
        try:
            await self._redis.set(self._prefix + key, value, px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError) as exc:
            self._failed("write", exc)

    async def add_vector(self, bucket: str, key: str, vector: Vector, ttl_s: float) -> None:
        if self.resting():
            return
        now_ms = int(time.time() * 1000)
        ttl_ms = max(1, int(ttl_s * 1000))
        try:
            await self._add_vector(
                keys=[f"{self._prefix}vectors:{{{bucket}}}", f"{self._prefix}ages:{{{bucket}}}"],
                args=[key, vector.tobytes(), now_ms + ttl_ms, now_ms, self.MAX_VECTORS, ttl_ms])
        except (RedisError, OSError) as exc:
            self._failed("write", exc)

    async def nearest(self, bucket: str, vector: Vector,
                      count: int = 1) -> list[tuple[str, float]]:
        if self.resting():
            return []
        try:
            stored = await self._live_vectors(
                keys=[f"{self._prefix}vectors:{{{bucket}}}", f"{self._prefix}ages:{{{bucket}}}"],
                args=[int(time.time() * 1000)])
        except (RedisError, OSError) as exc:
            self._failed("read", exc)
            return []
        pairs = zip(stored[::2], stored[1::2], strict=True)  # the client does not decode
        from .vector_index import nearest_of
        return nearest_of(((key.decode(), blob) for key, blob in pairs
                           if isinstance(key, bytes) and isinstance(blob, bytes)), vector,
                          count)

    async def aclose(self) -> None:
        await self._redis.aclose()


# A bucket's vectors (a hash of entry key -> float32 bytes) and when each entry expires
# (a sorted set): the expired and all but the MAX_VECTORS most recent dropped as one is
# added, both keys expiring with the bucket's last entry.
_ADD_VECTOR = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
local over = redis.call('ZCARD', KEYS[2]) - #gone - tonumber(ARGV[5])
if over > 0 then
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[4], '+inf', 'LIMIT', 0, over)
  for _, key in ipairs(oldest) do gone[#gone + 1] = key end
end
if #gone > 0 then
  redis.call('HDEL', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return #gone
"""
# The vectors of a bucket's entries that have not expired (ARGV[1]: now, in ms), as
# key, vector, key, vector...
_LIVE_VECTORS = """
local live = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf')
if #live == 0 then return {} end
local vectors = redis.call('HMGET', KEYS[1], unpack(live))
local found = {}
for i, key in ipairs(live) do
  if vectors[i] then
    found[#found + 1] = key
    found[#found + 1] = vectors[i]
  end
end
return found
"""


def open_cache(store_url: str, max_entries: int, max_bytes: int = 128 << 20,
               namespace: str = "aigw") -> CacheBackend:
    """The backend next to the store ``settings.store`` names (Redis: under ``namespace``)."""
    if store_url.startswith(("redis://", "rediss://", "unix://")):
        return RedisCache(store_url, namespace)
    return LocalCache(max_entries, max_bytes)


def _directives(headers: Headers) -> set[str]:
    control = headers.get("cache-control") or ""
    return {part.strip().lower() for part in control.split(",")}


def lookup_kind(headers: Headers, route: Route) -> Lookup | None:
    """Whether this request reads the cache: None when the route caches nothing."""
    if route.cache is None:
        return None
    if _directives(headers) & {"no-store", "no-cache"}:
        return "bypass"
    return "miss"  # until the lookup finds it


def may_store(headers: Headers, route: Route, key: ApiKey) -> bool:
    """``Cache-Control: no-store`` keeps a client's answer out of the cache; ``no-cache``
    refreshes an entry only where it is the caller's own (or the caller an admin key):
    in a ``team`` or ``shared`` scope, one caller re-asking with ``no-cache`` until an
    answer suited it would choose what everybody else is served."""
    directives = _directives(headers)
    if "no-store" in directives:
        return False
    if "no-cache" in directives:
        assert route.cache is not None
        return route.cache.scope == "key" or key.admin
    return True


def cache_key(route: Route, request: ChatRequest, key: ApiKey) -> str:
    """A digest of everything that decides the answer, within the route's scope: all
    but the request fields of delivery."""
    assert route.cache is not None
    scope = route.cache.scope
    if scope == "shared":
        owner = ""
    elif scope == "team" and key.team is not None:
        owner = f"team:{key.team.name}"
    else:
        owner = f"key:{key.name}"
    identity: dict[str, object] = {
        "route": route.name,
        "target": f"{route.kind.value}:{route.target}",
        # With its max_output_tokens: what a request that sets no output limit is sent, so
        # a reload that raises it no longer serves the answers it cut short.
        "serves": [[deployment.name, deployment.model, deployment.max_output_tokens]
                   for deployment in route.candidates],
        "owner": owner,
        "request": request.model_dump(mode="json", exclude=_DELIVERY_FIELDS,
                                      exclude_none=True),
    }
    # The same body asked of an upstream another way: a Gemini deployment is sent mode
    # VALIDATED; an OpenAI-format one (vLLM, which takes top_k) is sent no Anthropic hints
    # (a /v1/messages top_k), where a chat client's own top_k goes as it came; a
    # /v1/completions prompt goes raw to the upstream's legacy API.
    flags = {"validated_calls": request.validated_calls,
             "anthropic_hints": request.anthropic_hints,
             "text_completion": request.text_completion}
    identity.update((name, True) for name, on in flags.items() if on)
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def model_key(route_key: str, model: str | None) -> str:
    """The key of ``model``'s answers under ``route_key`` (``cache_key``) on a route whose
    deployments are not one model (``RouteCache.by_model``); ``route_key`` itself where
    every deployment's answer is the route's (``model`` None).

    >>> model_key("ab12", None)
    'ab12'
    >>> model_key("ab12", "gpt-4o") == model_key("ab12", "gpt-4o-mini")
    False
    """
    if model is None:
        return route_key
    return hashlib.sha256(f"{route_key}\0{model}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An answer as cached: the deployment that gave it, and what it said."""

    deployment: str
    result: ChatResult
    version: int = _ENTRY_VERSION


_ANSWER = TypeAdapter(CachedAnswer)


def encode_answer(deployment: str, result: ChatResult, max_bytes: int) -> bytes | None:
    """The entry to keep for ``result``, or None when it would pass ``max_bytes``. One
    answer may be up to a provider's max_response_mb: one whose text alone passes the cap
    is refused before it is encoded (a copy as large again, for nothing), the rest after."""
    if sum(_chars(choice) for choice in result.choices) > max_bytes:
        return None
    if result.upstream_request_id is not None:  # a hit calls no provider: it has no id
        result = replace(result, upstream_request_id=None)
    entry = _ANSWER.dump_json(CachedAnswer(deployment, result))
    return entry if len(entry) <= max_bytes else None


def _chars(piece: Choice | ChatDelta) -> int:
    """Characters of an answer's (or a streamed piece's) text: at most what its entry
    holds in bytes (UTF-8 and JSON's escapes only add to them), counted without
    building anything."""
    return len(piece.content or "") + len(piece.refusal or "") + sum(
        len(call.id or "") + len(call.name or "") + len(call.arguments or "")
        for call in piece.tool_calls)


def decode_answer(value: bytes, graph: Graph) -> CachedAnswer | None:
    """The cached answer, or None when it cannot be served (old format, deployment gone)."""
    try:
        answer = _ANSWER.validate_json(value)
    except ValidationError:
        return None
    if answer.version != _ENTRY_VERSION or answer.deployment not in graph.deployments:
        return None
    return answer


def cacheable(result: ChatResult) -> bool:
    """Whether an answer may be served again: not one whose tool call arguments are not
    a JSON object (an ingress refuses those with a 502; it must not be a lasting one),
    nor one a provider's content filter cut or withheld."""
    for choice in result.choices:
        if choice.logprobs is not None or choice.extra:  # not kept: never half served again
            return False
        if choice.finish_reason == _FILTERED:
            return False
        for call in choice.tool_calls:
            try:
                if not isinstance(loads(call.arguments or "{}"), dict):
                    return False
            except ValueError:
                return False
    return True


def replay(result: ChatResult) -> AsyncIterator[ChatDelta]:
    """A cached answer as the deltas of a stream: each choice whole, then the usage."""

    async def deltas() -> AsyncIterator[ChatDelta]:
        for choice in result.choices:
            calls = tuple(ToolCallDelta(index, call.id, call.name, call.arguments)
                          for index, call in enumerate(choice.tool_calls))
            if choice.content or calls or choice.refusal:
                yield ChatDelta(index=choice.index, content=choice.content or None,
                                tool_calls=calls, refusal=choice.refusal)
            yield ChatDelta(index=choice.index, finish_reason=choice.finish_reason,
                            stop_sequence=choice.stop_sequence)
        yield ChatDelta(usage=result.usage)

    return deltas()


@dataclass(slots=True)
class _ChoiceParts:
    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    calls: dict[int, list[str]] = field(default_factory=dict)  # index -> [id, name, arguments]
    finish_reason: str | None = None
    stop_sequence: str | None = None


class StreamedAnswer:
    """A stream's deltas put back together, so that a finished stream can be cached.

    Only up to ``max_chars`` of text (the entry cap: an entry holds at least as many
    bytes): past that the answer cannot be kept, so what was gathered is let go and the
    rest of the stream is not gathered at all (a stream may be max_response_mb)."""

    def __init__(self, model: str, max_chars: int) -> None:
        self._model = model
        self._choices: dict[int, _ChoiceParts] = {}
        self._unkept = False
        self._chars = 0
        self._max_chars = max_chars

    @property
    def kept(self) -> bool:
        """False once the answer cannot be cached, whatever comes after."""
        return not self._unkept

    def add(self, delta: ChatDelta) -> None:
        if self._unkept or (delta.usage is not None and not delta.content
                            and delta.finish_reason is None):
            return
        if delta.logprobs is not None or delta.extra:
            self._let_go()  # not kept by the cache: never served again without them
            return
        self._chars += _chars(delta)
        if self._chars > self._max_chars:
            self._let_go()
            return
        parts = self._choices.setdefault(delta.index, _ChoiceParts())
        if delta.content:
            parts.content.append(delta.content)
        if delta.refusal:
            parts.refusal.append(delta.refusal)
        for call in delta.tool_calls:
            pieces = parts.calls.setdefault(call.index, ["", "", ""])
            pieces[0] = call.id or pieces[0]
            pieces[1] = call.name or pieces[1]
            pieces[2] += call.arguments or ""
        if delta.finish_reason is not None:
            parts.finish_reason = delta.finish_reason
            parts.stop_sequence = delta.stop_sequence

    def _let_go(self) -> None:
        self._unkept = True
        self._choices.clear()

    def result(self, usage: Usage) -> ChatResult | None:
        """The whole answer, or None if any choice did not finish or was filtered (or it
        carried what the cache does not keep: log probabilities, audio..., or passed the
        cap)."""
        if not self._choices or self._unkept or \
                any(p.finish_reason in (None, _FILTERED) for p in self._choices.values()):
            return None
        return ChatResult(self._model, tuple(
            Choice(index, "".join(parts.content) if parts.content else None,
                   parts.finish_reason or "stop",
                   tuple(ToolCall(*parts.calls[i]) for i in sorted(parts.calls)),
                   "".join(parts.refusal) if parts.refusal else None,
                   stop_sequence=parts.stop_sequence)
            for index, parts in sorted(self._choices.items())
        ), usage)
