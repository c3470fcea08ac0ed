"""Redis namespaces: ``settings.redis_namespace`` is the one prefix of a gateway's keys.

A gateway started on Redis records its namespace in ``aigw.namespaces`` (a hash outside
every namespace), and says so when it is new there while other recorded namespaces still
hold keys: a changed ``redis_namespace`` leaves its old keys where nothing reads them.
``aigw namespaces`` lists every prefix with its key count.

``AIGW_EXECUTIONS_NAMESPACE`` once moved the pipeline executions alone under another
prefix (it predates ``redis_namespace``); it is no longer read. Where it is still set
and would have moved them, ``aigw serve`` refuses to start rather than leave the
executions of a previous run where nothing reads them.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from .redis_store import REDIS_ERRORS

log = logging.getLogger("aigw")

RETIRED_ENV = "AIGW_EXECUTIONS_NAMESPACE"


def retired_variable_refusal(store: str, namespace: str,
                             environ: Mapping[str, str]) -> str | None:
    """Why the gateway must not start with ``environ``'s ``AIGW_EXECUTIONS_NAMESPACE``,
    or None (a warning logged where it is set but would change nothing: the same
    namespace, or the embedded store, which has none).

    >>> retired_variable_refusal("redis://r:6379/0", "aigw", {RETIRED_ENV: "old"})[:42]
    "AIGW_EXECUTIONS_NAMESPACE='old' is no long"
    """
    value = environ.get(RETIRED_ENV)
    if value is None:
        return None
    if value == namespace or store.startswith("embedded"):
        log.warning("%s is set but no longer read (every key, executions too, is under "
                    "settings.redis_namespace, %r here); unset it", RETIRED_ENV, namespace)
        return None
    return (f"{RETIRED_ENV}={value!r} is no longer read: executions are kept under "
            f"settings.redis_namespace ({namespace!r}) with every other key. Set "
            f"settings.redis_namespace: {value} to serve the executions kept under "
            f"'{value}:wf:' (the other keys, limits and spend among them, then start "
            f"empty there), or unset {RETIRED_ENV} to leave them behind.")


# Which namespaces gateways have started under on a Redis server: one hash, a field a
# namespace (when it last started, from which directory, on which host). Its name has no
# ':', so it is in no namespace: no gateway's keys, scans or purges ever include it.
RECORD_KEY = "aigw.namespaces"


@dataclass(frozen=True, slots=True)
class NamespaceUse:
    """A prefix of keys on a Redis server, and what the record says of it (None: it is
    not in the record: a namespace used before the record existed, or not aigw's)."""

    name: str
    keys: int
    started: float | None = None
    root: str | None = None
    host: str | None = None


async def record_namespace(client: Redis, namespace: str, root: Path) -> bool:
    """Note that a gateway serving ``root`` starts under ``namespace``; whether that
    namespace is new to this Redis (the first start under it since it was recorded)."""
    entry = json.dumps({"started": time.time(), "root": str(root), "host": socket.gethostname()})
    added: int = await client.hset(RECORD_KEY, namespace, entry)
    return added == 1


async def namespaces_in_use(client: Redis) -> tuple[NamespaceUse, ...]:
    """Every prefix of keys on ``client``'s database with how many keys it has, the
    recorded namespaces first (by last start, newest first; one with no keys left too).
    One SCAN of the whole database: for a command, or once a namespace is new, never
    per request."""
    counts: Counter[str] = Counter()
    async for key in client.scan_iter(count=1000):
        name = key.decode() if isinstance(key, bytes) else key
        prefix, colon, _ = name.partition(":")
        if colon:
            counts[prefix] += 1
    recorded = {}
    for field, value in (await client.hgetall(RECORD_KEY)).items():
        name = field.decode() if isinstance(field, bytes) else field
        entry = _entry(value)
        recorded[name] = NamespaceUse(name, counts.pop(name, 0), entry.get("started"),
                                      entry.get("root"), entry.get("host"))
    by_start = sorted(recorded.values(), key=lambda use: -(use.started or 0.0))
    others = sorted((NamespaceUse(name, count) for name, count in counts.items()),
                    key=lambda use: (-use.keys, use.name))
    return (*by_start, *others)


async def warn_of_namespaces_left(url: str, namespace: str, root: Path) -> None:
    """At start on Redis: record ``namespace``; when it is new there and other recorded
    namespaces still hold keys, say so (a changed ``settings.redis_namespace`` leaves its
    old keys where nothing reads them). Best effort: a Redis that does not answer is
    the store's to report."""
    client = Redis.from_url(url, socket_connect_timeout=5.0, socket_timeout=30.0)
    try:
        if not await record_namespace(client, namespace, root):
            return
        left = [use for use in await namespaces_in_use(client)
                if use.started is not None and use.name != namespace and use.keys]
    except REDIS_ERRORS as exc:
        log.debug("recording redis_namespace %r failed: %s", namespace, exc)
        return
    finally:
        await client.aclose()
    if left:
        log.warning(
            "settings.redis_namespace %r is new on this Redis, which holds keys of other "
            "gateway namespaces: %s. If this gateway used one of them before its "
            "redis_namespace changed, what it kept there (executions in flight, batches, "
            "spend, kept responses) is left unread; `aigw namespaces` lists them",
            namespace, ", ".join(
                f"{use.name!r} ({use.keys} keys; last started {_moment(use.started)} "
                f"from {use.root} on {use.host})" for use in left))


def _entry(value: str | bytes) -> dict[str, Any]:
    """A record's entry; one that is not ours to read (written by hand) says nothing."""
    try:
        entry = json.loads(value)
    except ValueError:
        return {}
    return entry if isinstance(entry, dict) else {}


def _moment(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def listed(url: str) -> tuple[NamespaceUse, ...]:
    """``namespaces_in_use`` on the Redis server ``url`` names (``aigw namespaces``)."""
    client = Redis.from_url(url, socket_connect_timeout=5.0, socket_timeout=30.0)
    try:
        return await namespaces_in_use(client)
    finally:
        await client.aclose()


def render_namespaces(uses: tuple[NamespaceUse, ...], current: str) -> str:
    """A table of ``uses``, ``current`` (the config's namespace) marked with ``*``.

    >>> print(render_namespaces((NamespaceUse("prod", 12, 0.0, "/gw", "h"),
    ...                          NamespaceUse("other", 3)), "prod"), end="")
      NAMESPACE  KEYS  LAST STARTED          FROM
    * prod         12  1970-01-01T00:00:00Z  /gw on h
      other         3  -                     not recorded: older than the record, or not aigw's
    """
    rows = [("NAMESPACE", "KEYS", "LAST STARTED", "FROM")]
    for use in uses:
        recorded = use.started is not None
        rows.append((use.name, str(use.keys), _moment(use.started) if recorded else "-",
                     f"{use.root} on {use.host}" if recorded
                     else "not recorded: older than the record, or not aigw's"))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = []
    for index, (name, keys, started, source) in enumerate(rows):
        mark = "*" if index and name == current else " "
        lines.append(f"{mark} {name:<{widths[0]}}  {keys:>{widths[1]}}  "
                     f"{started:<{widths[2]}}  {source}".rstrip())
    return "\n".join(lines) + "\n"
