"""A small blocking WebSocket client on wsproto (hypercorn's own WebSocket library)."""

from __future__ import annotations

import contextlib
import json
import socket
from collections import deque
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError


class WebSocketClosed(Exception):
    def __init__(self, code: int | None) -> None:
        super().__init__(f"closed with code {code}")
        self.code = code


class WebSocketClient:
    """``with WebSocketClient(port, "/ws/x", token) as ws: ws.receive_json()``."""

    def __init__(self, port: int, path: str, token: str | None = None,
                 timeout: float = 30.0) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._events: deque[Event] = deque()
        self._text: list[str] = []
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        self._sock.sendall(self._ws.send(Request(host=f"127.0.0.1:{port}", target=path,
                                                 extra_headers=headers)))
        event = self._next()
        if not isinstance(event, AcceptConnection):
            self._sock.close()
            if isinstance(event, RejectConnection):
                raise WebSocketClosed(event.status_code)
            raise AssertionError(f"unexpected handshake answer {event!r}")

    def __enter__(self) -> WebSocketClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def receive_json(self) -> Any:
        """The next text message, parsed; ``WebSocketClosed`` when the server closed."""
        while True:
            event = self._next()
            if isinstance(event, TextMessage):
                self._text.append(event.data)
                if event.message_finished:
                    text, self._text = "".join(self._text), []
                    return json.loads(text)
            elif isinstance(event, Ping):
                self._sock.sendall(self._ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._sock.sendall(self._ws.send(event.response()))
                raise WebSocketClosed(event.code)

    def close(self) -> None:
        with contextlib.suppress(OSError, LocalProtocolError):  # closed already, either side
            self._sock.sendall(self._ws.send(CloseConnection(code=1000)))
        self._sock.close()

    def _next(self) -> Event:
        while not self._events:
            data = self._sock.recv(65536)
            if not data:
                raise WebSocketClosed(None)
            self._ws.receive_data(data)
            self._events.extend(self._ws.events())
        return self._events.popleft()


def refused_handshake(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the answer to a handshake the server refuses."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        ws = WSConnection(ConnectionType.CLIENT)
        sock.sendall(ws.send(Request(host=f"127.0.0.1:{port}", target=path)))
        rejected: RejectConnection | None = None
        body = b""
        while True:
            data = sock.recv(65536)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, RejectConnection):
                    rejected = event
                elif isinstance(event, RejectData):
                    body += event.data
                    if event.body_finished:
                        data = b""
                else:
                    raise AssertionError(f"unexpected handshake answer {event!r}")
            if not data:
                break
    assert rejected is not None, "the handshake had no answer"
    headers = {name.decode("latin-1"): value.decode("latin-1")
               for name, value in rejected.headers}
    return rejected.status_code, headers, body
