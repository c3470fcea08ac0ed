"""Run an ASGI app (an upstream fake) with hypercorn on a free loopback port, in a thread."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.types import ASGIApp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _cancel_pending() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@contextmanager
def serving(app: ASGIApp, ready_path: str = "/__ready", port: int | None = None,
            errorlog: logging.Logger | None = None, root_path: str = "") -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (on ``port``, for an app that must know its own URL;
    else a free one) until the block ends; yields its base URL. hypercorn logs to
    ``errorlog`` (``aigw serve`` gives it ``hypercorn.error``; a fake, none) and mounts
    the app under ``root_path``, as behind a proxy that serves it under a prefix."""
    port = port or free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = errorlog
    config.root_path = root_path
    config.graceful_timeout = 0.5
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        # Tasks the app left running (an agent still at work) end here, in their own
        # loop: collected later, in another test's, their cleanup could block that one.
        loop.run_until_complete(_cancel_pending())

    thread = threading.Thread(target=run, name=f"fake-{port}", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(base_url + ready_path, timeout=0.5)
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    try:
        yield base_url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        loop.close()
