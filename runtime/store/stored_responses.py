"""Responses kept for ``previous_response_id`` and ``GET /v1/responses/{id}``, in the store.

    ResponseStore                   the seam; ``open_responses(settings.store URL)``
    ├── SQLiteResponses             embedded: a SQLite file of their own beside the ledger's
    └── RedisResponses              replicas: a key per response, expired by Redis

A kept response is two opaque parts (built by runtime/responses_stored.py) under its id,
with the name of the key that made it, when it expires, the id of the response it
continued (``previous``) and that of the conversation it was made in (``conversation``,
whose items it does not repeat): its ``body`` (the response object) and its ``items``
(its own input items), read only by the reads that need them (``get(id, items=False)``
reads the body alone). ``chain(id)`` reads a response and the ones before it, following
``previous``, in one round-trip: one job of the SQLite file's thread, one Lua script on
Redis (which reads keys it finds in the records, not in KEYS: a chain's ids are known
only as it is walked; the records are all under this store's prefix). A record an older
aigw wrote has no ``previous`` (its ``items`` are its whole conversation), so a walk
stops there. Keeping a record that continues a chain makes the records before it, and
the conversation its first was made in, expire no sooner than it does (a chain is read
from its newest turn, so an older turn or those items expiring first would cut the later
ones off). The write is awaited before the answer (or a stream's last event) goes out,
as a ledger record is, so a client that continues at once finds it, whichever worker or
replica serves the next turn: in SQLite it is committed by a writer thread of its own,
with the other responses it has queued (group commit), in a file of its own beside the
ledger's (``aigw-responses.sqlite`` beside ``aigw.sqlite``): a response of megabytes
takes that file's write lock, never the ledger's, which every request's record and
budget charge waits on. A response past its expiry is not found; SQLite's expired rows
are deleted by the first write each hour, Redis expires its own. After Redis did not
answer, it is left alone for ``RedisResponses.REST_S`` (reads are 503s, writes not made,
at once): a Redis that hangs must not hold every answer for its timeout.

The conversations of ``/v1/conversations`` live in the same store
(runtime/store/conversations.py: ``ResponseStore.conversations()``), in tables of their
own in the same file, or under keys of their own on the same Redis client.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ..errors import StoreUnavailable
from .conversations import ConversationStore, RedisConversations, SQLiteConversations
from .conversations import create_tables as create_conversation_tables
from .conversations import purge as purge_conversations
from .factory import embedded_file
from .redis_store import disconnected
from .sqlite_file import SQLiteFile, run_statements

PURGE_EVERY_S = 3600.0
# How far a new record extends its chain's expiry: the bound of responses_chain_max_depth
# (a chain is read no deeper than that; the walk ends at its start well before).
MAX_CHAIN_LINKS = 100_001

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id          TEXT PRIMARY KEY,
    "key"       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL,
    body        BLOB NOT NULL,
    items       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at)
"""

# Walks a chain from ARGV[2] (ARGV[1] the prefix of the keys): at most ARGV[3] records,
# stopping after the one that takes their parts past ARGV[4] bytes; each record is four
# values (key, body, items, previous: "" for none), newest first.
CHAIN = """
local prefix, id, owner = ARGV[1], ARGV[2], ARGV[5]
local links, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local out, bytes = {}, 0
for _ = 1, links do
  local key = redis.call('HGET', prefix .. id, 'key')
  if not key or (owner ~= '' and key ~= owner) then break end
  local v = redis.call('HMGET', prefix .. id, 'key', 'body', 'items', 'previous')
  if not v[1] or not v[2] then break end
  local items, previous = v[3] or '', v[4] or ''
  out[#out + 1] = v[1]
  out[#out + 1] = v[2]
  out[#out + 1] = items
  out[#out + 1] = previous
  bytes = bytes + #v[2] + #items
  if previous == '' or bytes > max_bytes then break end
  id = previous
end
return out
"""

# Keeps a new record's chain (from ARGV[2], the new record; ARGV[1] the prefix) at least
# as long as the new record (ARGV[3] ms), at most ARGV[4] records, and the conversation
# that a record of it was made in (its three keys, ARGV[5] their prefix): a response is
# continued from its newest turn, and each turn's record holds only its own items (the
# first, the conversation's by reference), so an older turn or the conversation's items
# expiring first would cut every later one off from its start.
EXTEND = """
local prefix, id = ARGV[1], ARGV[2]
local ttl, links = tonumber(ARGV[3]), tonumber(ARGV[4])
local function extend(name)
  if redis.call('PTTL', name) < ttl then redis.call('PEXPIRE', name, ttl) end
end
for _ = 1, links do
  local name = prefix .. id
  extend(name)
  local v = redis.call('HMGET', name, 'previous', 'conversation')
  if v[2] then
    local conversation = ARGV[5] .. v[2]
    extend(conversation)
    extend(conversation .. ':ids')
    extend(conversation .. ':items')
  end
  if not v[1] or v[1] == '' then break end
  id = v[1]
end
return 0
"""


@dataclass(frozen=True, slots=True)
class KeptResponse:
    """A kept response: the key that made it (its name), its parts (``items`` empty
    when they were not read) and the id of the response it continued, whose items it
    does not repeat (None: its ``items`` are its whole input)."""

    key: str
    body: bytes
    items: bytes = b""
    previous: str | None = None


class ResponseStore(Protocol):
    """Where kept responses live; every method raises ``StoreUnavailable`` when the
    store cannot answer."""

    async def put(self, response_id: str, key: str, body: bytes, items: bytes,
                  ttl_s: float, previous: str | None = None,
                  conversation: str | None = None) -> None:
        """Keep ``body`` and ``items`` under ``response_id`` for ``ttl_s`` seconds, after
        ``previous`` (its chain kept as long), or made in ``conversation`` (whose items it
        does not repeat, kept as long); a later read (from this process, or any replica for
        Redis) finds them once this returns."""
        ...

    async def get(self, response_id: str, *, items: bool = True,
                  owner: str | None = None) -> KeptResponse | None:
        """The response (its items too unless ``items`` is False), or None when it was
        never kept, has expired or was deleted, or, with an ``owner`` (a key's name), is
        another key's: its body is then not read."""
        ...

    async def chain(self, response_id: str, links: int, max_bytes: int,
                    owner: str | None = None) -> list[KeptResponse]:
        """The response and those before it (``previous``), newest first, with their
        items: at most ``links``, ending with the first one not found, the first without
        a ``previous``, or the one that takes their bodies and items past ``max_bytes``.
        With an ``owner`` (a key's name; None for an admin's read, of any), a record of
        another key ends it too, before its body is read: another key that knows an id
        does not make the store read up to ``max_bytes`` only to be refused."""
        ...

    async def delete(self, response_id: str) -> bool:
        """Forget the response; False when there was none."""
        ...

    def conversations(self) -> ConversationStore:
        """The conversations (/v1/conversations), kept in the same store."""
        ...

    async def aclose(self) -> None: ...


class SQLiteResponses:
    """``ResponseStore`` in a SQLite file (``responses_file``)."""

    def __init__(self, db: SQLiteFile, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock
        self._purge_at = 0.0  # when expired rows are next deleted
        self._conversations = SQLiteConversations(db, clock)

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "FULL",
                   clock: Callable[[], float] = time.time) -> SQLiteResponses:
        return cls(await SQLiteFile.open(path, synchronous=synchronous, schema=_create_table),
                   clock)

    async def put(self, response_id: str, key: str, body: bytes, items: bytes,
                  ttl_s: float, previous: str | None = None,
                  conversation: str | None = None) -> None:
        now = self._clock()
        await self._db.call(partial(_insert, response_id, key, now, now + ttl_s, body, items,
                                    previous, conversation), single=True)
        if now >= self._purge_at:  # queued, not awaited: at most once every PURGE_EVERY_S
            self._purge_at = now + PURGE_EVERY_S
            self._db.post(partial(_purge, now))

    def conversations(self) -> ConversationStore:
        return self._conversations

    async def get(self, response_id: str, *, items: bool = True,
                  owner: str | None = None) -> KeptResponse | None:
        return await self._db.call(partial(_select, response_id, self._clock(), items, owner),
                                   single=True)

    async def chain(self, response_id: str, links: int, max_bytes: int,
                    owner: str | None = None) -> list[KeptResponse]:
        return await self._db.call(partial(_chain, response_id, self._clock(), links,
                                           max_bytes, owner), single=True)

    async def delete(self, response_id: str) -> bool:
        return await self._db.call(partial(_delete, response_id, self._clock()), single=True)

    async def aclose(self) -> None:
        await self._db.aclose()


def _create_table(connection: sqlite3.Connection) -> None:
    run_statements(connection, SCHEMA)
    columns = {row[1] for row in connection.execute("PRAGMA table_info(responses)")}
    for name in ("previous", "conversation"):
        if name not in columns:  # a file an older aigw made: its rows have none
            connection.execute(f"ALTER TABLE responses ADD COLUMN {name} TEXT")
    create_conversation_tables(connection)


# The ids of a record's chain, from the record itself (the first parameter), at most the
# second parameter of them.
_CHAIN_IDS = ("WITH RECURSIVE chain(id, depth) AS (SELECT ?, 1 UNION ALL SELECT r.previous, "
              "c.depth + 1 FROM responses r JOIN chain c ON r.id = c.id "
              "WHERE r.previous IS NOT NULL AND c.depth < ?) ")


def _insert(response_id: str, key: str, created_at: float, expires_at: float, body: bytes,
            items: bytes, previous: str | None, conversation: str | None,
            connection: sqlite3.Connection) -> None:
    connection.execute(
        'INSERT OR REPLACE INTO responses (id, "key", created_at, expires_at, body, items, '
        "previous, conversation) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (response_id, key, created_at, expires_at, body, items, previous, conversation))
    if previous is None and conversation is None:
        return
    # The chain, and the conversation its first turn was made in, live as long as its
    # newest turn (see EXTEND)
    walk = (response_id, MAX_CHAIN_LINKS, expires_at, expires_at)
    if previous is not None:
        connection.execute(_CHAIN_IDS + "UPDATE responses SET expires_at = ? WHERE id IN "
                           "(SELECT id FROM chain) AND expires_at < ?", walk)
    connection.execute(
        _CHAIN_IDS + "UPDATE conversations SET expires_at = ? WHERE id IN (SELECT conversation "
        "FROM responses WHERE id IN (SELECT id FROM chain) AND conversation IS NOT NULL) "
        "AND expires_at < ?", walk)


def _chain(response_id: str, now: float, links: int, max_bytes: int, owner: str | None,
           connection: sqlite3.Connection) -> list[KeptResponse]:
    found: list[KeptResponse] = []
    size, next_id = 0, response_id
    while len(found) < links:
        row = connection.execute('SELECT "key", body, items, previous FROM responses '
                                 'WHERE id = ? AND expires_at > ? AND (? IS NULL OR "key" = ?)',
                                 (next_id, now, owner, owner)).fetchone()
        if row is None:
            break
        found.append(KeptResponse(row[0], bytes(row[1]), bytes(row[2]), row[3]))
        size += len(row[1]) + len(row[2])
        if row[3] is None or size > max_bytes:
            break
        next_id = row[3]
    return found


def _select(response_id: str, now: float, items: bool, owner: str | None,
            connection: sqlite3.Connection) -> KeptResponse | None:
    columns = '"key", body, items, previous' if items else '"key", body, x\'\', previous'
    row = connection.execute(f"SELECT {columns} FROM responses WHERE id = ? AND expires_at > ? "
                             'AND (? IS NULL OR "key" = ?)',
                             (response_id, now, owner, owner)).fetchone()
    return None if row is None else KeptResponse(row[0], bytes(row[1]), bytes(row[2]), row[3])


def _delete(response_id: str, now: float, connection: sqlite3.Connection) -> bool:
    cursor = connection.execute("DELETE FROM responses WHERE id = ? AND expires_at > ?",
                                (response_id, now))
    return cursor.rowcount > 0


def _purge(now: float, connection: sqlite3.Connection) -> None:
    connection.execute("DELETE FROM responses WHERE expires_at <= ?", (now,))
    purge_conversations(now, connection)


class RedisResponses:
    """``ResponseStore`` on Redis: ``<namespace>:response:<id>``, a hash of the key's
    name and the response's parts, expiring with the response."""

    TIMEOUT_S = 1.0
    REST_S = 5.0

    def __init__(self, url: str, namespace: str = "aigw") -> None:
        self.redis: Redis = Redis.from_url(
            url, socket_timeout=self.TIMEOUT_S, socket_connect_timeout=self.TIMEOUT_S,
            retry=Retry(NoBackoff(), 1))
        self._prefix = f"{namespace}:response:"
        self._conversation_prefix = f"{namespace}:conversation:"
        self._resting_until = 0.0
        self._conversations = RedisConversations(self, namespace)
        self._chain = self.redis.register_script(CHAIN)
        self._extend = self.redis.register_script(EXTEND)

    def conversations(self) -> ConversationStore:
        return self._conversations

    def check(self) -> None:
        """Refuses at once while Redis rests (it did not answer a moment ago)."""
        if time.monotonic() < self._resting_until:
            raise StoreUnavailable("the response store (Redis) did not answer a moment ago")

    def failed(self, exc: RedisError | OSError) -> StoreUnavailable:
        if disconnected(exc):
            self._resting_until = time.monotonic() + self.REST_S
        return StoreUnavailable(f"the response store (Redis) failed: {exc}")

    async def put(self, response_id: str, key: str, body: bytes, items: bytes,
                  ttl_s: float, previous: str | None = None,
                  conversation: str | None = None) -> None:
        self.check()
        name = self._prefix + response_id
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(name, mapping={"key": key, "body": body, "items": items})
                ttl_ms = max(1, int(ttl_s * 1000))
                if previous is not None:
                    pipe.hset(name, "previous", previous)
                if conversation is not None:
                    pipe.hset(name, "conversation", conversation)
                pipe.pexpire(name, ttl_ms)
                if previous is not None or conversation is not None:
                    await self._extend(args=[self._prefix, response_id, ttl_ms,
                                             MAX_CHAIN_LINKS, self._conversation_prefix],
                                       client=pipe)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self.failed(exc) from exc

    async def get(self, response_id: str, *, items: bool = True,
                  owner: str | None = None) -> KeptResponse | None:
        self.check()
        fields = ["key", "body", "previous", "items"] if items else ["key", "body", "previous"]
        try:
            if owner is not None:  # its key first: another key's body is not read
                key = await self.redis.hget(self._prefix + response_id, "key")
                if key != owner.encode():
                    return None
            found = await self.redis.hmget(self._prefix + response_id, fields)
        except (RedisError, OSError) as exc:
            raise self.failed(exc) from exc
        key, body, previous, *rest = found  # not decoded: bytes, or None when absent
        if not isinstance(key, bytes) or not isinstance(body, bytes):
            return None
        kept = rest[0] if rest and isinstance(rest[0], bytes) else b""
        return KeptResponse(key.decode(), body, kept,
                            previous.decode() if isinstance(previous, bytes) else None)

    async def chain(self, response_id: str, links: int, max_bytes: int,
                    owner: str | None = None) -> list[KeptResponse]:
        self.check()
        try:
            found = await self._chain(args=[self._prefix, response_id, links, max_bytes,
                                            owner or ""])
        except (RedisError, OSError) as exc:
            raise self.failed(exc) from exc
        assert isinstance(found, list)
        return [KeptResponse(key.decode(), body, items, previous.decode() or None)
                for key, body, items, previous in zip(*[iter(found)] * 4, strict=True)]

    async def delete(self, response_id: str) -> bool:
        self.check()
        try:
            return bool(await self.redis.delete(self._prefix + response_id))
        except (RedisError, OSError) as exc:
            raise self.failed(exc) from exc

    async def aclose(self) -> None:
        await self.redis.aclose()


def responses_file(ledger: Path) -> Path:
    """The SQLite file of the responses beside the ledger's ``ledger``: its name with
    ``-responses`` (``aigw.sqlite`` -> ``aigw-responses.sqlite``, in its folder);
    ``:memory:`` stays in memory (a database of its own: each connection has one)."""
    if str(ledger) == ":memory:":
        return ledger
    return ledger.with_name(f"{ledger.stem}-responses{ledger.suffix}")


async def open_responses(url: str, root: Path, synchronous: str = "FULL",
                         namespace: str = "aigw") -> ResponseStore:
    """The response store of a ``settings.store`` URL: a SQLite file beside the
    embedded store's (``responses_file``) or Redis (under ``namespace``)."""
    ledger = embedded_file(url, root)
    if ledger is not None:
        return await SQLiteResponses.open(responses_file(ledger), synchronous=synchronous)
    return RedisResponses(url, namespace)
