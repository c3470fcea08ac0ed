"""Conversations (``/v1/conversations``) kept beside the responses, in the same store.

    ConversationStore               the seam; ``ResponseStore.conversations()`` gives it
    ├── SQLiteConversations         embedded: tables of their own in the responses' file
    └── RedisConversations          replicas: three keys a conversation, expired by Redis

A conversation is the key that made it (its name), when it was made, its metadata (a
JSON object, opaque here) and its items in order, each an opaque JSON object under an
id unique in the conversation. Every write (made, items added or removed, metadata
changed) sets its expiry ``ttl_s`` ahead: a conversation in use lives on, one left
alone for ``ttl_s`` is forgotten whole. Deleting one forgets it at once and leaves its
items to that expiry (OpenAI deletes a conversation's items apart): the responses made
in it are rebuilt from them. ``add`` checks the bounds and the ids in the
same step that writes (one SQLite job, one Lua script), so that two writers at once
cannot take a conversation past its bounds or give two items one id. A turn in flight
(``conversation`` on /v1/responses) whose input items have the app's ids ``claim``s them
first, under a token of its own, for ``lease_s``: another turn, or items added meanwhile,
cannot take them (``in_flight``, ``duplicate``), and the turn's own ``add`` (with its
token) turns its claims into items, or ``release`` drops them. Failures are
``StoreUnavailable``, as the response store's are.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, Protocol

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from .sqlite_file import SQLiteFile, run_statements

if TYPE_CHECKING:
    from .stored_responses import RedisResponses

# What adding items came to: written; no such conversation (never made, expired,
# deleted); over a bound; an id already in the conversation (or claimed by a turn in
# flight).
Added = Literal["added", "gone", "full", "duplicate"]
# What claiming ids came to: claimed; no such conversation; an id in the conversation
# already; an id claimed by another turn in flight.
Claimed = Literal["claimed", "gone", "duplicate", "in_flight"]
Item = tuple[str, bytes]  # an item's id and its JSON object

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id          TEXT PRIMARY KEY,
    "key"       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  REAL NOT NULL,
    metadata    BLOB NOT NULL,
    items       INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    deleted     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS conversations_expiry ON conversations (expires_at);
CREATE TABLE IF NOT EXISTS conversation_items (
    conversation TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    id           TEXT NOT NULL,
    body         BLOB NOT NULL,
    PRIMARY KEY (conversation, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS conversation_item_ids ON conversation_items (conversation, id);
CREATE TABLE IF NOT EXISTS conversation_claims (
    conversation TEXT NOT NULL,
    id           TEXT NOT NULL,
    token        TEXT NOT NULL,
    expires_at   REAL NOT NULL,
    PRIMARY KEY (conversation, id)
) WITHOUT ROWID
"""
_ADDED: Mapping[bytes, Added] = MappingProxyType({
    b"added": "added", b"gone": "gone", b"full": "full", b"duplicate": "duplicate"})
_CLAIMED: Mapping[bytes, Claimed] = MappingProxyType({
    b"claimed": "claimed", b"gone": "gone", b"duplicate": "duplicate",
    b"in_flight": "in_flight"})
_CHUNK = 500  # ids a statement names, well under SQLite's bound on parameters


@dataclass(frozen=True, slots=True)
class Bounds:
    """How many items a conversation may hold, and how many bytes they may be in all."""

    items: int
    bytes: int


@dataclass(frozen=True, slots=True)
class KeptConversation:
    """A conversation: the key that made it (its name), when (Unix seconds), its
    metadata and its items in order (empty when they were not read)."""

    key: str
    created_at: int
    metadata: bytes
    items: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class ItemsPage:
    """A page of a conversation's items, in the order asked for, and whether more follow."""

    items: tuple[bytes, ...]
    more: bool


class ConversationStore(Protocol):
    """Where conversations live; every method raises ``StoreUnavailable`` when the store
    cannot answer."""

    async def create(self, conversation_id: str, key: str, created_at: int, metadata: bytes,
                     items: Sequence[Item], ttl_s: float) -> None:
        """Keep a new conversation (its id is new: nothing is replaced) with ``items``."""
        ...

    async def get(self, conversation_id: str, *, items: bool = False,
                  owner: str | None = None) -> KeptConversation | None:
        """The conversation (its items too if ``items``), or None when there is none. With
        an ``owner`` (a key's name; None for an admin's read, of any), its items are read
        only where it is that key's: another key that knows its id does not make the store
        read them (up to megabytes) only to be refused."""
        ...

    async def page(self, conversation_id: str, order: str, limit: int,
                   after: str | None) -> ItemsPage | None:
        """Up to ``limit`` of its items in ``order`` (``asc``: oldest first, or ``desc``),
        from the one after the item whose id is ``after``; None where it holds no such
        item. A range read: the page's items alone are read, not the conversation's (up to
        thousands, megabytes), so paging through one reads each item once."""
        ...

    async def update(self, conversation_id: str, metadata: bytes, ttl_s: float) -> bool:
        """Replace its metadata; False when there is no such conversation."""
        ...

    async def delete(self, conversation_id: str) -> bool:
        """Forget it; False when there was none. Its items are not deleted with it (as
        OpenAI's are not): the responses made in it still list them, until the expiry
        they had."""
        ...

    async def add(self, conversation_id: str, items: Sequence[Item], ttl_s: float,
                  bounds: Bounds | None, token: str = "") -> Added:
        """Append ``items`` unless that takes it past ``bounds`` (None: not checked), or
        one of their ids is in it already, given twice or claimed under another token
        than ``token`` (``"duplicate"``); ``token``'s claims of their ids end."""
        ...

    async def claim(self, conversation_id: str, ids: Sequence[str], token: str,
                    lease_s: float) -> Claimed:
        """Hold ``ids`` (none in it, nor claimed by another token) for the items of a
        turn in flight, until ``token``'s ``add`` or ``release``, or ``lease_s``; claimed
        again by ``token``, their lease is renewed."""
        ...

    async def release(self, conversation_id: str, ids: Sequence[str], token: str) -> None:
        """End ``token``'s claims of ``ids`` (a turn that added nothing)."""
        ...

    async def item(self, conversation_id: str, item_id: str) -> bytes | None:
        """One item of the conversation, or None."""
        ...

    async def held(self, conversation_id: str, last: str) -> tuple[bytes, ...] | None:
        """Its items in order up to the one whose id is ``last``, deleted or not (what a
        response made in it read); None when they are gone (expired, or ``last``
        removed)."""
        ...

    async def remove(self, conversation_id: str, item_id: str, ttl_s: float) -> bool:
        """Forget one item; False when the conversation has none of that id."""
        ...


class SQLiteConversations:
    """``ConversationStore`` in the responses' SQLite file (its ``SQLiteFile``, whose
    schema ``create_tables`` made). Expired rows are deleted by the responses' purge."""

    def __init__(self, db: SQLiteFile, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    async def create(self, conversation_id: str, key: str, created_at: int, metadata: bytes,
                     items: Sequence[Item], ttl_s: float) -> None:
        await self._db.call(partial(_create, conversation_id, key, created_at,
                                    self._clock() + ttl_s, metadata, tuple(items)))

    async def get(self, conversation_id: str, *, items: bool = False,
                  owner: str | None = None) -> KeptConversation | None:
        return await self._db.call(partial(_select, conversation_id, self._clock(), items,
                                           owner))

    async def page(self, conversation_id: str, order: str, limit: int,
                   after: str | None) -> ItemsPage | None:
        return await self._db.call(partial(_page, conversation_id, order, limit, after))

    async def update(self, conversation_id: str, metadata: bytes, ttl_s: float) -> bool:
        now = self._clock()
        return await self._db.call(partial(_update, conversation_id, now, now + ttl_s,
                                           metadata), single=True)

    async def delete(self, conversation_id: str) -> bool:
        return await self._db.call(partial(_delete, conversation_id, self._clock()))

    async def add(self, conversation_id: str, items: Sequence[Item], ttl_s: float,
                  bounds: Bounds | None, token: str = "") -> Added:
        if _repeated(items):
            return "duplicate"
        now = self._clock()
        return await self._db.call(partial(_add, conversation_id, now, now + ttl_s,
                                           tuple(items), bounds, token))

    async def claim(self, conversation_id: str, ids: Sequence[str], token: str,
                    lease_s: float) -> Claimed:
        now = self._clock()
        return await self._db.call(partial(_claim, conversation_id, tuple(ids), token, now,
                                           now + lease_s))

    async def release(self, conversation_id: str, ids: Sequence[str], token: str) -> None:
        await self._db.call(partial(_release, conversation_id, tuple(ids), token))

    async def item(self, conversation_id: str, item_id: str) -> bytes | None:
        return await self._db.call(partial(_item, conversation_id, item_id, self._clock()),
                                   single=True)

    async def remove(self, conversation_id: str, item_id: str, ttl_s: float) -> bool:
        now = self._clock()
        return await self._db.call(partial(_remove, conversation_id, item_id, now,
                                           now + ttl_s))

    async def held(self, conversation_id: str, last: str) -> tuple[bytes, ...] | None:
        return await self._db.call(partial(_held, conversation_id, last, self._clock()),
                                   single=True)


def create_tables(connection: sqlite3.Connection) -> None:
    run_statements(connection, SCHEMA)
    columns = {row[1] for row in connection.execute("PRAGMA table_info(conversations)")}
    if "deleted" not in columns:  # a file an older aigw made
        connection.execute("ALTER TABLE conversations ADD COLUMN deleted INTEGER NOT NULL "
                           "DEFAULT 0")


def purge(now: float, connection: sqlite3.Connection) -> None:
    """Delete the conversations expired by ``now``, and their items."""
    connection.execute("DELETE FROM conversation_items WHERE conversation IN "
                       "(SELECT id FROM conversations WHERE expires_at <= ?)", (now,))
    connection.execute("DELETE FROM conversations WHERE expires_at <= ?", (now,))
    connection.execute("DELETE FROM conversation_claims WHERE expires_at <= ?", (now,))


def _insert_items(conversation_id: str, first: int, items: tuple[Item, ...],
                  connection: sqlite3.Connection) -> None:
    connection.executemany(
        "INSERT INTO conversation_items (conversation, seq, id, body) VALUES (?, ?, ?, ?)",
        [(conversation_id, first + number, item_id, body)
         for number, (item_id, body) in enumerate(items)])


def _create(conversation_id: str, key: str, created_at: int, expires_at: float,
            metadata: bytes, items: tuple[Item, ...], connection: sqlite3.Connection) -> None:
    connection.execute(
        'INSERT INTO conversations (id, "key", created_at, expires_at, metadata, items, bytes) '
        "VALUES (?, ?, ?, ?, ?, ?, ?)", (conversation_id, key, created_at, expires_at,
                                         metadata, len(items), _size(items)))
    _insert_items(conversation_id, 0, items, connection)


def _select(conversation_id: str, now: float, items: bool, owner: str | None,
            connection: sqlite3.Connection) -> KeptConversation | None:
    row = connection.execute('SELECT "key", created_at, metadata FROM conversations '
                             "WHERE id = ? AND expires_at > ? AND deleted = 0",
                             (conversation_id, now)).fetchone()
    if row is None:
        return None
    bodies: tuple[bytes, ...] = ()
    if items and owner in (None, row[0]):
        bodies = tuple(bytes(body) for body, in connection.execute(
            "SELECT body FROM conversation_items WHERE conversation = ? ORDER BY seq",
            (conversation_id,)))
    return KeptConversation(row[0], int(row[1]), bytes(row[2]), bodies)


def _page(conversation_id: str, order: str, limit: int, after: str | None,
          connection: sqlite3.Connection) -> ItemsPage | None:
    """One read of ``limit`` + 1 rows by the primary key (conversation, seq): the one more
    tells whether more follow."""
    start: int | None = None
    if after is not None:
        row = connection.execute("SELECT seq FROM conversation_items WHERE conversation = ? "
                                 "AND id = ?", (conversation_id, after)).fetchone()
        if row is None:
            return None
        start = row[0]
    ascending = order == "asc"
    since = "" if start is None else "AND seq > ?" if ascending else "AND seq < ?"
    bodies = [bytes(body) for body, in connection.execute(
        f"SELECT body FROM conversation_items WHERE conversation = ? {since} "
        f"ORDER BY seq {'ASC' if ascending else 'DESC'} LIMIT ?",
        (conversation_id, *(() if start is None else (start,)), limit + 1))]
    return ItemsPage(tuple(bodies[:limit]), len(bodies) > limit)


def _update(conversation_id: str, now: float, expires_at: float, metadata: bytes,
            connection: sqlite3.Connection) -> bool:
    return connection.execute(
        "UPDATE conversations SET metadata = ?, expires_at = ? WHERE id = ? AND expires_at > ? "
        "AND deleted = 0",
        (metadata, expires_at, conversation_id, now)).rowcount > 0


def _delete(conversation_id: str, now: float, connection: sqlite3.Connection) -> bool:
    # Marked, not deleted: its items outlive it until its expiry (the purge deletes both)
    return connection.execute("UPDATE conversations SET deleted = 1 WHERE id = ? AND "
                              "expires_at > ? AND deleted = 0",
                              (conversation_id, now)).rowcount > 0


def _add(conversation_id: str, now: float, expires_at: float, items: tuple[Item, ...],
         bounds: Bounds | None, token: str, connection: sqlite3.Connection) -> Added:
    row = connection.execute("SELECT items, bytes FROM conversations WHERE id = ? AND "
                             "expires_at > ? AND deleted = 0", (conversation_id, now)).fetchone()
    if row is None:
        return "gone"
    count, size = row
    if bounds is not None and (count + len(items) > bounds.items
                               or size + _size(items) > bounds.bytes):
        return "full"
    ids = [item_id for item_id, _ in items]
    if (_any_of(connection, "conversation_items", conversation_id, ids)
            or _any_of(connection, "conversation_claims", conversation_id, ids,
                       "AND expires_at > ? AND token != ?", (now, token))):
        return "duplicate"
    (first,) = connection.execute("SELECT ifnull(max(seq), -1) + 1 FROM conversation_items "
                                  "WHERE conversation = ?", (conversation_id,)).fetchone()
    _insert_items(conversation_id, first, items, connection)
    connection.execute("UPDATE conversations SET items = items + ?, bytes = bytes + ?, "
                       "expires_at = ? WHERE id = ?",
                       (len(items), _size(items), expires_at, conversation_id))
    if token:
        _release(conversation_id, tuple(ids), token, connection)
    return "added"


def _any_of(connection: sqlite3.Connection, table: str, conversation_id: str,
            ids: Sequence[str], more: str = "", values: tuple[object, ...] = ()) -> bool:
    """Whether ``table`` has a row of the conversation with one of ``ids`` (``more``: a
    condition on it, with its ``values``)."""
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start:start + _CHUNK]
        if connection.execute(
                f"SELECT 1 FROM {table} WHERE conversation = ? AND id IN "
                f"({', '.join('?' * len(chunk))}) {more} LIMIT 1",
                (conversation_id, *chunk, *values)).fetchone() is not None:
            return True
    return False


def _claim(conversation_id: str, ids: tuple[str, ...], token: str, now: float,
           expires_at: float, connection: sqlite3.Connection) -> Claimed:
    if connection.execute("SELECT 1 FROM conversations WHERE id = ? AND expires_at > ? AND "
                          "deleted = 0", (conversation_id, now)).fetchone() is None:
        return "gone"
    if _any_of(connection, "conversation_items", conversation_id, ids):
        return "duplicate"
    if _any_of(connection, "conversation_claims", conversation_id, ids,
               "AND expires_at > ? AND token != ?", (now, token)):
        return "in_flight"
    connection.executemany(  # over a lapsed claim of another turn, or its own (renewed)
        "INSERT OR REPLACE INTO conversation_claims (conversation, id, token, expires_at) "
        "VALUES (?, ?, ?, ?)", [(conversation_id, item_id, token, expires_at)
                                for item_id in ids])
    return "claimed"


def _release(conversation_id: str, ids: tuple[str, ...], token: str,
             connection: sqlite3.Connection) -> None:
    connection.executemany("DELETE FROM conversation_claims WHERE conversation = ? AND id = ? "
                           "AND token = ?", [(conversation_id, item_id, token)
                                             for item_id in ids])


def _item(conversation_id: str, item_id: str, now: float,
          connection: sqlite3.Connection) -> bytes | None:
    row = connection.execute(
        "SELECT body FROM conversation_items JOIN conversations ON conversations.id = "
        "conversation WHERE conversation = ? AND conversation_items.id = ? AND expires_at > ? "
        "AND deleted = 0",
        (conversation_id, item_id, now)).fetchone()
    return None if row is None else bytes(row[0])


def _remove(conversation_id: str, item_id: str, now: float, expires_at: float,
            connection: sqlite3.Connection) -> bool:
    body = _item(conversation_id, item_id, now, connection)
    if body is None:
        return False
    connection.execute("DELETE FROM conversation_items WHERE conversation = ? AND id = ?",
                       (conversation_id, item_id))
    connection.execute("UPDATE conversations SET items = items - 1, bytes = bytes - ?, "
                       "expires_at = ? WHERE id = ?", (len(body), expires_at, conversation_id))
    return True


def _held(conversation_id: str, last: str, now: float,
          connection: sqlite3.Connection) -> tuple[bytes, ...] | None:
    row = connection.execute(
        "SELECT seq FROM conversation_items JOIN conversations ON conversations.id = "
        "conversation WHERE conversation = ? AND conversation_items.id = ? AND expires_at > ?",
        (conversation_id, last, now)).fetchone()
    if row is None:
        return None
    return tuple(bytes(body) for body, in connection.execute(
        "SELECT body FROM conversation_items WHERE conversation = ? AND seq <= ? ORDER BY seq",
        (conversation_id, row[0])))


def _size(items: Sequence[Item]) -> int:
    return sum(len(body) for _, body in items)


def _repeated(items: Sequence[Item]) -> bool:
    """Whether two of ``items`` have one id (the scripts check those already kept)."""
    return len({item_id for item_id, _ in items}) < len(items)


# KEYS: the conversation's hash, its ids (a list, in order), its items (a hash by id),
# the claims of turns in flight (a hash: id -> "<lease end, Unix ms>:<token>").
_EXPIRE = "for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ttl) end\n"
# Whether ``id`` is claimed by another token than ``token`` whose lease has not ended
_CLAIMED_BY_ANOTHER = """
local function claimed(id, token)
  local held = redis.call('HGET', KEYS[4], id)
  if not held then return false end
  local ends, by = string.match(held, '^(%d+):(.*)$')
  local now = redis.call('TIME')
  return by ~= token and tonumber(ends) > now[1] * 1000 + math.floor(now[2] / 1000)
end
"""
# ARGV: ttl in ms, most items and bytes (0: unbounded), the token whose claims the items
# are ('' for none), then an id and a body per item.
ADD = _CLAIMED_BY_ANOTHER + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
local ttl, token, added = ARGV[1], ARGV[4], 0
local claims = redis.call('EXISTS', KEYS[4]) == 1
for i = 5, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[3], ARGV[i]) == 1 then return 'duplicate' end
  if claims and claimed(ARGV[i], token) then return 'duplicate' end
  added = added + #ARGV[i + 1]
end
local most_items, most_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
if most_items > 0 and redis.call('HLEN', KEYS[3]) + (#ARGV - 4) / 2 > most_items then
  return 'full'
end
if most_bytes > 0 and tonumber(redis.call('HGET', KEYS[1], 'bytes')) + added > most_bytes then
  return 'full'
end
for i = 5, #ARGV, 2 do
  redis.call('RPUSH', KEYS[2], ARGV[i])
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  if claims then redis.call('HDEL', KEYS[4], ARGV[i]) end  -- an item now, or lapsed
end
redis.call('HINCRBY', KEYS[1], 'bytes', added)
""" + _EXPIRE + "return 'added'\n"
# ARGV: the lease in ms, the token, then the ids.
CLAIM = _CLAIMED_BY_ANOTHER + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
for i = 3, #ARGV do
  if redis.call('HEXISTS', KEYS[3], ARGV[i]) == 1 then return 'duplicate' end
  if claimed(ARGV[i], ARGV[2]) then return 'in_flight' end
end
local now = redis.call('TIME')
local held = string.format('%d:%s', now[1] * 1000 + math.floor(now[2] / 1000) + ARGV[1],
                           ARGV[2])
for i = 3, #ARGV do redis.call('HSET', KEYS[4], ARGV[i], held) end
if redis.call('PTTL', KEYS[4]) < tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[4], ARGV[1])  -- kept as long as its longest lease
end
return 'claimed'
"""
# ARGV: the token, then the ids.
RELEASE = """
for i = 2, #ARGV do
  local held = redis.call('HGET', KEYS[4], ARGV[i])
  if held and string.match(held, '^%d+:(.*)$') == ARGV[1] then
    redis.call('HDEL', KEYS[4], ARGV[i])
  end
end
return 1
"""
# ARGV: the item's id, ttl in ms.
REMOVE = """
local ttl = ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local body = redis.call('HGET', KEYS[3], ARGV[1])
if not body then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('LREM', KEYS[2], 1, ARGV[1])
redis.call('HINCRBY', KEYS[1], 'bytes', -#body)
""" + _EXPIRE + "return 1\n"
# ARGV: the metadata, ttl in ms.
UPDATE = """
local ttl = ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'metadata', ARGV[1])
""" + _EXPIRE + "return 1\n"
# The key's name, created_at and metadata, then the items' bodies in order (HMGET in
# chunks: Lua's unpack has a bound on how many values it spreads); the items only where
# the key is ARGV[1] or ARGV[1] is empty (any key's: an admin's read).
READ = """
local head = redis.call('HMGET', KEYS[1], 'key', 'created_at', 'metadata')
if not head[1] then return {} end
if ARGV[1] ~= '' and head[1] ~= ARGV[1] then return head end
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
for i = 1, #ids, 1000 do
  local bodies = redis.call('HMGET', KEYS[3], unpack(ids, i, math.min(i + 999, #ids)))
  for j = 1, #bodies do head[#head + 1] = bodies[j] end
end
return head
"""

# A page: ARGV the order ('asc' or 'desc'), the limit, the id it starts after ('' for
# none). The ids' positions from the list (LPOS compares ids, reads no item), then the
# page's bodies alone; {1 if more follow else 0, bodies...}, or nil where ``after`` is
# not one of its ids.
PAGE = """
local limit, last = tonumber(ARGV[2]), redis.call('LLEN', KEYS[2]) - 1
local first, stop, more
if ARGV[1] == 'asc' then
  first = 0
  if ARGV[3] ~= '' then
    local at = redis.call('LPOS', KEYS[2], ARGV[3])
    if not at then return nil end
    first = at + 1
  end
  stop = math.min(first + limit - 1, last)
  more = last > stop
else
  stop = last
  if ARGV[3] ~= '' then
    local at = redis.call('LPOS', KEYS[2], ARGV[3])
    if not at then return nil end
    stop = at - 1
  end
  first = math.max(stop - limit + 1, 0)
  more = first > 0
end
local out = {more and 1 or 0}
if stop < first then return out end
local ids = redis.call('LRANGE', KEYS[2], first, stop)
local bodies = redis.call('HMGET', KEYS[3], unpack(ids))
if ARGV[1] == 'asc' then
  for i = 1, #bodies do out[#out + 1] = bodies[i] end
else
  for i = #bodies, 1, -1 do out[#out + 1] = bodies[i] end
end
return out
"""

# Its items up to the one whose id is ARGV[1], whether or not its head is there (deleted);
# none when that item is not.
HELD = """
local ids = redis.call('LRANGE', KEYS[2], 0, -1)
local last = 0
for i = 1, #ids do
  if ids[i] == ARGV[1] then last = i break end
end
local out = {}
for i = 1, last, 1000 do
  local bodies = redis.call('HMGET', KEYS[3], unpack(ids, i, math.min(i + 999, last)))
  for j = 1, #bodies do out[#out + 1] = bodies[j] end
end
return out
"""


class RedisConversations:
    """``ConversationStore`` on the responses' Redis client: ``<namespace>:conversation:
    <id>`` (a hash: key, created_at, metadata, bytes), ``...:ids`` and ``...:items``, all
    three expiring together, and ``...:claims`` (expiring with its longest lease).
    Failures and rests are the response store's."""

    def __init__(self, responses: RedisResponses, namespace: str = "aigw") -> None:
        self._responses = responses
        self._redis = responses.redis
        self._prefix = f"{namespace}:conversation:"
        self._add = self._redis.register_script(ADD)
        self._remove = self._redis.register_script(REMOVE)
        self._update = self._redis.register_script(UPDATE)
        self._read = self._redis.register_script(READ)
        self._held = self._redis.register_script(HELD)
        self._page = self._redis.register_script(PAGE)
        self._claim = self._redis.register_script(CLAIM)
        self._release = self._redis.register_script(RELEASE)

    def _keys(self, conversation_id: str) -> list[str]:
        name = self._prefix + conversation_id
        return [name, f"{name}:ids", f"{name}:items", f"{name}:claims"]

    async def create(self, conversation_id: str, key: str, created_at: int, metadata: bytes,
                     items: Sequence[Item], ttl_s: float) -> None:
        self._responses.check()
        head, ids, bodies, _ = self._keys(conversation_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(head, mapping={"key": key, "created_at": created_at,
                                         "metadata": metadata, "bytes": _size(items)})
                if items:
                    pipe.rpush(ids, *(item_id for item_id, _ in items))
                    pipe.hset(bodies, mapping=dict(items))
                for name in (head, ids, bodies):
                    pipe.pexpire(name, _ms(ttl_s))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._responses.failed(exc) from exc

    async def get(self, conversation_id: str, *, items: bool = False,
                  owner: str | None = None) -> KeptConversation | None:
        self._responses.check()
        keys = self._keys(conversation_id)
        try:
            if items:
                found = await self._read(keys=keys, args=[owner or ""])
            else:
                found = await self._redis.hmget(keys[0], ["key", "created_at", "metadata"])
        except (RedisError, OSError) as exc:
            raise self._responses.failed(exc) from exc
        if not found or not isinstance(found[0], bytes):
            return None
        key, created_at, metadata, *bodies = found
        return KeptConversation(key.decode(), int(created_at), metadata,
                                tuple(body for body in bodies if isinstance(body, bytes)))

    async def page(self, conversation_id: str, order: str, limit: int,
                   after: str | None) -> ItemsPage | None:
        self._responses.check()
        try:
            found = await self._page(keys=self._keys(conversation_id),
                                     args=[order, limit, after or ""])
        except (RedisError, OSError) as exc:
            raise self._responses.failed(exc) from exc
        if found is None:
            return None
        more, *bodies = found
        return ItemsPage(tuple(body for body in bodies if isinstance(body, bytes)), more == 1)

    async def update(self, conversation_id: str, metadata: bytes, ttl_s: float) -> bool:
        return await self._script(self._update, conversation_id, metadata, _ms(ttl_s)) == 1

    async def delete(self, conversation_id: str) -> bool:
        self._responses.check()
        try:  # its head alone: its ids and items outlive it until their expiry
            return bool(await self._redis.delete(self._keys(conversation_id)[0]))
        except (RedisError, OSError) as exc:
            raise self._responses.failed(exc) from exc

    async def add(self, conversation_id: str, items: Sequence[Item], ttl_s: float,
                  bounds: Bounds | None, token: str = "") -> Added:
        if _repeated(items):
            return "duplicate"
        pairs = [part for item in items for part in item]
        outcome = await self._script(
            self._add, conversation_id, _ms(ttl_s), bounds.items if bounds else 0,
            bounds.bytes if bounds else 0, token, *pairs)
        return _ADDED[outcome if isinstance(outcome, bytes) else b""]

    async def claim(self, conversation_id: str, ids: Sequence[str], token: str,
                    lease_s: float) -> Claimed:
        outcome = await self._script(self._claim, conversation_id, _ms(lease_s), token, *ids)
        return _CLAIMED[outcome if isinstance(outcome, bytes) else b""]

    async def release(self, conversation_id: str, ids: Sequence[str], token: str) -> None:
        await self._script(self._release, conversation_id, token, *ids)

    async def item(self, conversation_id: str, item_id: str) -> bytes | None:
        self._responses.check()
        head, _, bodies, _ = self._keys(conversation_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.exists(head)
                pipe.hget(bodies, item_id)
                alive, body = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._responses.failed(exc) from exc
        return body if alive and isinstance(body, bytes) else None

    async def remove(self, conversation_id: str, item_id: str, ttl_s: float) -> bool:
        return await self._script(self._remove, conversation_id, item_id, _ms(ttl_s)) == 1

    async def held(self, conversation_id: str, last: str) -> tuple[bytes, ...] | None:
        self._responses.check()
        try:
            found = await self._held(keys=self._keys(conversation_id), args=[last])
        except (RedisError, OSError) as exc:
            raise self._responses.failed(exc) from exc
        bodies = tuple(body for body in found if isinstance(body, bytes))
        return bodies or None  # ``last`` is one of them when found

    async def _script(self, script: AsyncScript, conversation_id: str,
                      *args: str | bytes | int) -> bytes | int:
        self._responses.check()
        try:
            found = await script(keys=self._keys(conversation_id), args=list(args))
        except (RedisError, OSError) as exc:
            raise self._responses.failed(exc) from exc
        assert isinstance(found, bytes | int)
        return found


def _ms(ttl_s: float) -> int:
    return max(1, int(ttl_s * 1000))
