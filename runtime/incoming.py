"""What a client sends after a request's headers: its body, then (only) its disconnect."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from starlette.requests import Request
from starlette.types import Message, Receive

from aigw.compiler.graph import Settings

from .errors import BadRequest, Cancelled, PayloadTooLarge, RequestTimeout

# An opening bracket (group 1), or a run of JSON strings (escapes and all) and what is
# between them up to the next bracket: brackets inside strings are text, not structure.
# A run is one match however many strings it holds, so a body takes at most two matches
# a bracket outside its strings; possessive, as a run kept a backtracking point a string
# (70 MB for 1 MiB of them).
_OPENING_OR_STRINGS = re.compile(
    rb'([\[{])|(?:"[^"\\]*+(?:\\.[^"\\]*+)*+"[^"\[{]*+)++', re.DOTALL)

R = TypeVar("R")


async def read_body(request: Request, settings: Settings, bound: int | None = None, *,
                    upload_limit: int | None = None) -> bytes:
    """The request body, refusing more than ``max_request_bytes`` (or ``bound``, where
    smaller: an endpoint's own) without reading them all, and a body that takes more
    than ``body_read_timeout_s`` to arrive (from the first wait for it): a client
    trickling a byte every few seconds held its connection for ever. hypercorn's own
    read_timeout cannot do it: it also runs while an answer that takes long is awaited.
    And a body with more JSON objects and arrays than ``max_request_json_containers``
    (see ``check_containers``). ``upload_limit``: a body that is an upload, not JSON (an
    audio file's multipart form), refused past it instead of ``max_request_bytes``."""
    limit, timeout_s = settings.max_request_bytes, settings.body_read_timeout_s
    if upload_limit is not None:
        limit = upload_limit
    if bound is not None:
        limit = min(limit, bound)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body of {declared} bytes exceeds the limit of {limit}.")
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    deadline: float | None = None
    while True:
        if _arrived(receive):  # the common case, the body here with the headers: no timer
            message = await receive()
        else:
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + timeout_s
            message = await _before(deadline, receive, timeout_s)
        if message["type"] == "http.disconnect":  # the client's doing: a 499, not a 500
            raise Cancelled("The client went away while sending the body.")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            chunks.append(chunk)
        if not message.get("more_body", False):
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            # "[]" is two bytes: a smaller body cannot hold too many, and is not looked
            # at; nor is an upload, whose bytes are no JSON.
            if upload_limit is None and size > 2 * settings.max_request_json_containers:
                check_containers(body, settings.max_request_json_containers)
            return body


def check_containers(body: bytes, most: int) -> None:
    """A ``BadRequest`` for a JSON body with more than ``most`` objects and arrays, before
    it is parsed: each becomes a Python dict, list or model of 60 to 600 bytes, so 1 MiB
    of ``[[],[],...]`` in a field aigw passes on cost 22 MB while parsed, and one of
    ``{"role":"user"}`` messages 36 MB (the 4 MiB body limit let a request take 140 MB).
    Counted without building anything: the brackets first (those in strings too, at
    memchr's speed), and only when they are too many, again outside strings (about
    50 ms a MiB; ``re.sub`` cutting the strings out took 200 bytes of memory a string).
    Nesting needs no bound of its own: the parser refuses more than 200 levels, and
    every level is a container."""
    if body.count(b"[") + body.count(b"{") <= most:
        return
    found = 0
    for match in _OPENING_OR_STRINGS.finditer(body):
        if match.lastindex:  # a bracket, not strings
            found += 1
            if found > most:
                raise BadRequest(f"The request body holds more than {most} JSON objects and "
                                 "arrays (settings.max_request_json_containers).")


def _queue_of(receive: Receive) -> asyncio.Queue[Message] | None:
    """hypercorn's queue of a request's messages: its ``receive`` is the queue's ``get``
    (or wraps it, naming it ``__wrapped__``, as functools does). None for another."""
    queue = getattr(getattr(receive, "__wrapped__", receive), "__self__", None)
    return queue if isinstance(queue, asyncio.Queue) else None


def _arrived(receive: Receive) -> bool:
    """Whether the next message is already queued (``_queue_of``). Any other
    ``receive`` reads as not yet arrived."""
    queue = _queue_of(receive)
    return queue is not None and not queue.empty()


def body_arriving(receive: Receive) -> bool:
    """Whether the rest of a request's body is still on its way, parts of it to be
    queued behind what hypercorn's queue of the request's messages (``_queue_of``) holds:
    the queue holds no end of the body (hypercorn queues one, ``more_body`` false, for
    every request, a GET's too). Asked only while the app has not read the end itself.
    See ``SnapshotMiddleware`` in app.py."""
    queue = _queue_of(receive)
    if queue is None:
        return False
    held: Iterable[Message] = getattr(queue, "_queue", ())  # a deque; Queue has no peek
    return all(message.get("more_body", False) for message in held)


async def _before(deadline: float, receive: Receive, timeout_s: float) -> Message:
    try:
        async with asyncio.timeout_at(deadline):
            return await receive()
    except TimeoutError:
        raise RequestTimeout(f"The request body did not arrive within {timeout_s:g} s "
                             "(settings.body_read_timeout_s).") from None


async def client_gone(receive: Receive) -> None:
    """Returns once the client has gone: after the body only http.disconnect follows
    (hypercorn sends it when the connection closes; httpx's in-process transport once
    the response is complete)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_gone(
    work: Awaitable[R], gone: Callable[[], Awaitable[None]] | None, awaited: str = "the answer"
) -> R:
    """``work``, stopped if the client goes away first (``gone()`` returns: ``client_gone``
    for a request, a WebSocket's close): a ``Cancelled`` (499), ``work`` given up; None
    for ``gone``: never known. A model call ran on to its end, billed and logged as a 200
    no one received, and a wait for a pipeline polled the store for nobody.

    One watching task, which cancels this one: no second task for ``work``, and a
    shutdown's cancel (this task's own, counted by ``uncancel``) stays a CancelledError,
    not taken for the client's leaving."""
    if gone is None:
        return await work
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.ensure_future(gone())
    left = ended = False

    def on_gone(done: asyncio.Future[None]) -> None:
        nonlocal left
        # ``ended``: the client left as ``work`` ended, in one turn of the loop; this
        # callback was already scheduled, and removing it no longer stopped it. Its cancel
        # fell on whatever the task awaited next (the answer's settlement, a turn being
        # kept and added to its conversation): billed, and then lost.
        if not ended and not done.cancelled() and done.exception() is None:
            left = True
            task.cancel()

    watcher.add_done_callback(on_gone)
    try:
        return await work
    except asyncio.CancelledError:
        if left and task.uncancel() == 0:  # ours alone: not a shutdown's
            raise Cancelled(f"The client went away before {awaited}.") from None
        raise
    finally:
        ended = True
        watcher.remove_done_callback(on_gone)
        watcher.cancel()
