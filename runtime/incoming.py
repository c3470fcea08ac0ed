"""What a client sends after a request's headers: its body, then (only) its disconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.requests import Request
from starlette.types import Message, Receive

from aigw.compiler.graph import Settings

from .errors import Cancelled, GatewayError, PayloadTooLarge, RequestTimeout

R = TypeVar("R")


async def read_body(request: Request, settings: Settings, bound: int | None = None) -> bytes:
    """The request body, refusing more than ``max_request_bytes`` (or ``bound``, where
    smaller: an endpoint's own) without reading them all, and a body that takes more
    than ``body_read_timeout_s`` to arrive (from the first wait for it): a client
    trickling a byte every few seconds held its connection for ever. hypercorn's own
    read_timeout cannot do it: it also runs while an answer that takes long is awaited."""
    limit, timeout_s = settings.max_request_bytes, settings.body_read_timeout_s
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
        if message["type"] == "http.disconnect":
            raise GatewayError("client disconnected while sending the body")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _arrived(receive: Receive) -> bool:
    """Whether the next message is already queued: hypercorn's ``receive`` is its
    ``asyncio.Queue``'s ``get``. Any other ``receive`` reads as not yet arrived."""
    queue = getattr(receive, "__self__", None)
    return isinstance(queue, asyncio.Queue) and not queue.empty()


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
    left = False

    def on_gone(done: asyncio.Future[None]) -> None:
        nonlocal left
        if not done.cancelled() and done.exception() is None:
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
        watcher.remove_done_callback(on_gone)
        watcher.cancel()
