"""HTTP/2 clients (h2c with prior knowledge, as ``httpx.AsyncClient(http2=True)`` speaks it
to a cleartext port) of a real ``aigw serve``, answered before their body has all arrived:
a bad key's 401 and a 413 past ``max_request_bytes``, while the client goes on sending.
The answers arrive, OpenAI-shaped; the connection, and the other streams on it, go on.

The streams side by side are driven with the ``h2`` protocol engine itself (httpx's own):
httpx uploading on one connection while another of its streams reads can stall its
uploader (a WINDOW_UPDATE read by the other stream is not looked at again, pydantic/httpx2
#1133), which would make this test flaky for a reason not the gateway's."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from ..conftest import DEV_KEY
from .server import Server

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"


def _chat_body(size: int, content: str = "x") -> bytes:
    """A chat request of about ``size`` bytes."""
    return json.dumps({"model": "echo", "messages": [
        {"role": "user", "content": content * max(1, size // len(content))}]}).encode()


def _local_port(response: httpx.Response) -> Any:
    """The client's end of the connection that carried ``response``."""
    return response.extensions["network_stream"].get_extra_info("client_addr")


async def test_answers_before_the_whole_body_keep_the_connection(server: Server) -> None:
    dev = {"Authorization": f"Bearer {DEV_KEY}"}
    async with httpx.AsyncClient(http2=True, http1=False, base_url=server.base_url,
                                 timeout=30) as http:
        first = await http.post(CHAT, content=_chat_body(1, "first"), headers=dev)
        bad_key = await http.post(CHAT, content=_chat_body(3_000_000),
                                  headers={"Authorization": "Bearer sk-wrong"})
        too_large = await http.post(CHAT, content=_chat_body(5_000_000), headers=dev)
        after = await http.post(CHAT, content=_chat_body(1, "after"), headers=dev)
        ports = {_local_port(answer) for answer in (first, bad_key, too_large, after)}

    assert first.http_version == "HTTP/2" and first.status_code == 200
    assert bad_key.status_code == 401
    assert bad_key.json()["error"]["code"] == "invalid_api_key"
    assert too_large.status_code == 413
    assert too_large.json()["error"]["code"] == "request_too_large"
    assert after.json()["choices"][0]["message"]["content"] == "after"
    assert len(ports) == 1  # one connection throughout
    assert "Traceback" not in server.log


@dataclass
class _Answer:
    status: int = 0
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False

    def json(self) -> Any:
        return json.loads(self.body)


class _H2Client:
    """One h2c connection (prior knowledge) driven frame by frame; the client's own
    flow control honoured, the server's DATA acknowledged as read."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.h2.initiate_connection()
        self.answers: dict[int, _Answer] = {}
        self.terminated = False
        self._flush()

    def open(self, path: str, key: str, body: bytes, *, end: bool) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.answers[stream_id] = _Answer()
        self.h2.send_headers(stream_id, [
            (":method", "POST"), (":path", path), (":scheme", "http"),
            (":authority", "127.0.0.1"), ("authorization", f"Bearer {key}"),
            ("content-type", "application/json"), ("content-length", str(len(body)))])
        if end:
            self.h2.send_data(stream_id, body, end_stream=True)
        self._flush()
        return stream_id

    def send(self, stream_id: int, body: bytes) -> None:
        """All of ``body`` on ``stream_id``, then its end, as the windows let it go."""
        while body:
            room = min(self.h2.local_flow_control_window(stream_id),
                       self.h2.max_outbound_frame_size)
            if room == 0:
                self.read()
                continue
            self.h2.send_data(stream_id, body[:room])
            body = body[room:]
            self._flush()
        self.h2.end_stream(stream_id)
        self._flush()

    def until_answered(self, *stream_ids: int) -> None:
        while not all(self.answers[stream_id].ended for stream_id in stream_ids):
            self.read()

    def read(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the gateway closed the connection"
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.answers[event.stream_id].status = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                self.answers[event.stream_id].body += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length or 0,
                                                  event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self.answers[event.stream_id].ended = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.terminated = True
        self._flush()

    def _flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())


def test_the_other_streams_go_on_while_an_answered_body_arrives(server: Server) -> None:
    client = _H2Client(server.port)
    try:
        body = _chat_body(3_000_000)
        refused = client.open(CHAT, "sk-wrong", body, end=False)
        client.until_answered(refused)  # answered with no byte of its body sent
        beside = client.open(CHAT, DEV_KEY, _chat_body(1, "beside"), end=True)
        client.send(refused, body)  # all of it, after its answer
        client.until_answered(beside)
        after = client.open(CHAT, DEV_KEY, _chat_body(1, "after"), end=True)
        client.until_answered(after)
    finally:
        client.sock.close()

    answers = client.answers
    assert answers[refused].status == 401
    assert answers[refused].json()["error"]["code"] == "invalid_api_key"
    assert answers[beside].json()["choices"][0]["message"]["content"] == "beside"
    assert answers[after].json()["choices"][0]["message"]["content"] == "after"
    assert not client.terminated
    assert "Traceback" not in server.log
