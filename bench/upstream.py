"""A fixed-latency OpenAI-compatible upstream for the gateway benchmarks (bench/run.py).

Run: python bench/upstream.py [--port 9100] [--delay-ms 1] [--tokens 8] [--token-interval-ms 1]

``POST .../chat/completions`` answers one fixed small completion ``--delay-ms`` after the
request arrived; with ``"stream": true`` it sends the first token after the same delay
and the others ``--token-interval-ms`` apart as server-sent events (usage last when
``stream_options.include_usage`` asks for it, then ``data: [DONE]``). ``GET /health``
answers 200.

It is a raw asyncio protocol, not a framework: it must cost far less per request than
anything measured through it, so it parses only what a keep-alive HTTP/1.1 client
sends (a request line, headers, a ``Content-Length`` body) and keeps its answers as
prebuilt bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

MODEL = "bench-model"
CONTENT = "Hello from the benchmark upstream."
USAGE = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
MAX_HEADER_BYTES = 64 * 1024


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type
        + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def _chunk(event: dict[str, Any] | str) -> bytes:
    """One SSE event framed as one HTTP chunk, so each token is its own write on the wire."""
    data = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
    payload = f"data: {data}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(payload), payload)


@dataclass(frozen=True, slots=True)
class Answers:
    """Everything the server sends, built once at start-up."""

    delay_s: float
    token_interval_s: float
    completion: bytes
    stream_head: bytes
    stream_tokens: tuple[bytes, ...]  # content chunks, then the finish_reason chunk
    stream_usage: bytes
    stream_tail: bytes  # data: [DONE] and the last (empty) chunk
    health: bytes
    not_found: bytes
    bad_request: bytes

    @classmethod
    def build(cls, delay_ms: float, tokens: int, token_interval_ms: float) -> Answers:
        completion = {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": CONTENT},
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
        }
        base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                "created": 1_700_000_000, "model": MODEL}
        words = CONTENT.split(" ")
        pieces = [words[i % len(words)] + " " for i in range(tokens)]
        token_chunks = [
            _chunk({**base, "choices": [{"index": 0, "delta": (
                {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            ), "finish_reason": None}]})
            for i, piece in enumerate(pieces)
        ]
        token_chunks.append(
            _chunk({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        )
        return cls(
            delay_s=delay_ms / 1000,
            token_interval_s=token_interval_ms / 1000,
            completion=_response("200 OK", json.dumps(completion).encode()),
            stream_head=(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
            ),
            stream_tokens=tuple(token_chunks),
            stream_usage=_chunk({**base, "choices": [], "usage": USAGE}),
            stream_tail=_chunk("[DONE]") + b"0\r\n\r\n",
            health=_response("200 OK", b'{"status":"ok"}'),
            not_found=_response("404 Not Found", b'{"error":{"message":"not found"}}'),
            bad_request=_response("400 Bad Request", b'{"error":{"message":"bad request"}}'),
        )


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection; requests are answered strictly in order."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False  # an answer is still being sent; later requests wait in the buffer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._next_request()

    def _next_request(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEADER_BYTES:
                self._close()
            return
        head = bytes(self.buffer[:end]).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        length = 0
        for line in header_lines:
            name, _, value = line.partition(":")
            lowered = name.strip().lower()
            if lowered == "content-length":
                length = int(value.strip())
            elif lowered == "transfer-encoding":
                self._send_and_close(self.answers.bad_request)  # no client here sends chunks
                return
        if len(self.buffer) < end + 4 + length:
            return  # the body is still arriving
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        method, _, rest = request_line.partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        self.busy = True
        if method == "POST" and path.endswith("/chat/completions"):
            self._chat(body)
        elif method == "GET" and path.endswith("/health"):
            self._finish(self.answers.health)
        else:
            self._finish(self.answers.not_found)

    def _chat(self, body: bytes) -> None:
        try:
            request = json.loads(body)
        except ValueError:
            self._finish(self.answers.bad_request)
            return
        if not isinstance(request, dict):
            self._finish(self.answers.bad_request)
            return
        if request.get("stream") is True:
            options = request.get("stream_options") or {}
            usage = isinstance(options, dict) and options.get("include_usage") is True
            self._later(self.answers.delay_s, lambda: self._stream(0, usage))
        else:
            self._later(self.answers.delay_s, lambda: self._finish(self.answers.completion))

    def _stream(self, position: int, usage: bool) -> None:
        if self.transport is None:
            return
        tokens = self.answers.stream_tokens
        if position == 0:
            self.transport.write(self.answers.stream_head + tokens[0])
        else:
            self.transport.write(tokens[position])
        if position + 1 < len(tokens):
            self._later(self.answers.token_interval_s, lambda: self._stream(position + 1, usage))
            return
        self._finish((self.answers.stream_usage if usage else b"") + self.answers.stream_tail)

    def _later(self, delay_s: float, action: Callable[[], None]) -> None:
        if delay_s > 0:
            self.loop.call_later(delay_s, action)
        else:
            action()

    def _finish(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.transport.write(data)
        self.busy = False
        if self.buffer:
            self._next_request()

    def _send_and_close(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.buffer.clear()


async def serve(host: str, port: int, answers: Answers) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(
        lambda: UpstreamProtocol(answers), host, port, backlog=4096, reuse_address=True
    )
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--delay-ms", type=float, default=1.0,
                        help="time before the first byte of each answer (default 1)")
    parser.add_argument("--tokens", type=int, default=8, help="content chunks per stream")
    parser.add_argument("--token-interval-ms", type=float, default=1.0,
                        help="time between stream chunks (default 1)")
    args = parser.parse_args()
    answers = Answers.build(args.delay_ms, max(1, args.tokens), args.token_interval_ms)
    try:
        import uvloop
    except ImportError:  # plain asyncio still works, only slower
        asyncio.run(serve(args.host, args.port, answers))
    else:
        uvloop.run(serve(args.host, args.port, answers))


if __name__ == "__main__":
    main()
