"""Open-loop, fixed-rate load for bench/run.py: latency at a set request rate, and TTFT.

Run: python bench/loadgen.py --url URL --model M --key K --rate 500 --duration 10 [--stream]

wrk (closed-loop) measures the most a server can do, but at a fixed rate it cannot: a
closed loop waits for each answer before it sends the next request, so a slow server
is sent less and its stalls never show in the percentiles (coordinated omission).
wrk2, which fixes that, is not packaged by Debian, so this sends each request at its
scheduled time whatever is still in flight, and counts its latency from that time, as
wrk2 does. It speaks HTTP/1.1 itself over asyncio, as upstream.py does: an aiohttp
client could not hold 1,000 rps on the core it shares with the upstream (its own
scheduling lag reached tens of milliseconds). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
import urllib.parse
from dataclasses import asdict, dataclass
from typing import cast


@dataclass(frozen=True, slots=True)
class Sample:
    scheduled: float  # when the request was due (perf_counter seconds)
    started: float  # when it actually left the generator
    first_token: float | None  # first non-empty content (streams only)
    finished: float
    ok: bool


@dataclass(frozen=True, slots=True)
class Summary:
    rate: float
    duration_s: float
    sent: int
    ok: int
    errors: int
    achieved_rps: float
    # Under 1% errors, answers kept up with the schedule (>= 95%), and no queue built up
    # (p50 and p99 under their bounds): a server can finish every request yet fall behind.
    sustained: bool
    latency_ms: dict[str, float]
    lag_ms: dict[str, float]  # generator scheduling lag, included in every target alike
    ttft_ms: dict[str, float] | None


def percentiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank p50/p95/p99/max, in milliseconds, of ``values`` given in seconds."""
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    ordered = sorted(values)

    def rank(q: float) -> float:
        index = min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))
        return round(ordered[index] * 1000, 3)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99),
            "max": round(ordered[-1] * 1000, 3)}


FIRST_TOKEN = re.compile(rb'"content":\s*"[^"]')  # a non-empty content delta


class Exchange:
    """One request on one connection: the response parsed as it arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.done: asyncio.Future[bool] = loop.create_future()
        self.first_token: float | None = None
        self.status = 0
        self.head = True  # still reading the status line and headers
        self.length = -1  # content-length, or -1 for a chunked body
        self.body = bytearray()
        self.scan = 0  # where the chunked parser (and the token search) resumes
        self.keep_alive = True


class Connection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 client connection that reads just enough to find the end."""

    def __init__(self, stream: bool) -> None:
        self.stream = stream
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.exchange: Exchange | None = None
        self.open = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self.exchange is not None and not self.exchange.done.done():
            self.exchange.done.set_result(False)

    def send(self, request: bytes, exchange: Exchange) -> None:
        assert self.transport is not None
        self.exchange = exchange
        self.buffer.clear()
        self.transport.write(request)

    def close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None or exchange.done.done():
            return
        if exchange.head:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            exchange.status = int(head[9:12])
            exchange.head = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name == b"content-length":
                    exchange.length = int(value)
                elif name == b"connection" and b"close" in value:
                    exchange.keep_alive = False
            data = bytes(self.buffer[end + 4 :])
        exchange.body += data
        if self.stream and exchange.first_token is None and FIRST_TOKEN.search(exchange.body):
            exchange.first_token = time.perf_counter()
        if exchange.length >= 0:
            complete = len(exchange.body) >= exchange.length
        else:
            complete = _chunked_complete(exchange)
        if complete:
            exchange.done.set_result(exchange.status == 200)


def _chunked_complete(exchange: Exchange) -> bool:
    """Whether the chunked body has ended; resumes where the last call stopped."""
    body = exchange.body
    while True:
        line_end = body.find(b"\r\n", exchange.scan)
        if line_end < 0:
            return False
        size = int(bytes(body[exchange.scan : line_end]).split(b";")[0], 16)
        if size == 0:
            return body.find(b"\r\n\r\n", line_end) >= 0  # after any trailers
        chunk_end = line_end + 2 + size + 2
        if len(body) < chunk_end:
            return False
        exchange.scan = chunk_end


class Pool:
    """At most ``size`` requests in flight, on reused connections; waiting for one counts."""

    def __init__(self, host: str, port: int, size: int, stream: bool) -> None:
        self.host, self.port, self.stream = host, port, stream
        self.slots = asyncio.Semaphore(size)
        self.idle: list[Connection] = []

    async def acquire(self) -> Connection:
        await self.slots.acquire()
        while self.idle:
            connection = self.idle.pop()
            if connection.open:
                return connection
        try:
            _, connection = await asyncio.get_running_loop().create_connection(
                lambda: Connection(self.stream), self.host, self.port
            )
        except BaseException:
            self.slots.release()
            raise
        return connection

    def release(self, connection: Connection, reusable: bool) -> None:
        if reusable and connection.open:
            self.idle.append(connection)
        else:
            connection.close()
        self.slots.release()

    def close(self) -> None:
        for connection in self.idle:
            connection.close()


async def fire(pool: Pool, request: bytes, scheduled: float, timeout: float) -> Sample:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    exchange = Exchange(loop)
    ok = False
    connection: Connection | None = None
    try:
        async with asyncio.timeout(timeout):
            connection = await pool.acquire()
            connection.send(request, exchange)
            ok = await exchange.done
    except (OSError, TimeoutError):
        ok = False
    finished = time.perf_counter()
    if connection is not None:
        pool.release(connection, ok and exchange.keep_alive and exchange.done.done())
    return Sample(scheduled, started, exchange.first_token, finished, ok)


async def run(args: argparse.Namespace) -> Summary:
    url = urllib.parse.urlsplit(args.url)
    message = {"role": "user", "content": "Say hello to the benchmark."}
    document: dict[str, object] = {"model": args.model, "messages": [message], "max_tokens": 16}
    if args.stream:
        document |= {"stream": True, "stream_options": {"include_usage": True}}
    body = json.dumps(document).encode()
    request = (
        f"POST {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {args.key}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    pool = Pool(url.hostname or "127.0.0.1", url.port or 80, args.connections, args.stream)
    interval = 1.0 / args.rate
    total = max(1, int(args.rate * (args.warmup + args.duration)))
    begin = time.perf_counter() + 0.05
    measured_from = begin + args.warmup
    tasks: list[asyncio.Task[Sample]] = []
    loop = asyncio.get_running_loop()
    for index in range(total):
        scheduled = begin + index * interval
        wait = scheduled - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        # Late wake-ups send every due request at once: the schedule never slips.
        tasks.append(loop.create_task(fire(pool, request, scheduled, args.timeout)))
    done, pending = await asyncio.wait(tasks, timeout=args.timeout + 1)
    for task in pending:
        task.cancel()
    pool.close()
    samples = [task.result() for task in done if task.result().scheduled >= measured_from]
    return summarize(
        samples, len(pending), args.rate, args.duration, measured_from, args.max_p50_ms,
        args.max_p99_ms,
    )


def summarize(
    samples: list[Sample], cut_off: int, rate: float, duration: float, measured_from: float,
    max_p50_ms: float, max_p99_ms: float,
) -> Summary:
    good = [s for s in samples if s.ok]
    latency = percentiles([s.finished - s.scheduled for s in good])
    sent = len(samples) + cut_off
    errors = sent - len(good)
    span = max((s.finished for s in good), default=measured_from) - measured_from
    achieved = len(good) / max(span, duration)
    return Summary(
        rate=rate,
        duration_s=duration,
        sent=sent,
        ok=len(good),
        errors=errors,
        achieved_rps=round(achieved, 1),
        sustained=(
            sent > 0 and errors / sent < 0.01 and achieved >= 0.95 * rate
            and latency["p50"] < max_p50_ms and latency["p99"] < max_p99_ms
        ),
        latency_ms=latency,
        lag_ms=percentiles([s.started - s.scheduled for s in samples]),
        ttft_ms=(
            percentiles([s.first_token - s.scheduled for s in good if s.first_token is not None])
            if any(s.first_token is not None for s in good)
            else None
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--key", default="sk-aigw-dev")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--stream", action="store_true", help="stream=true; measure TTFT")
    parser.add_argument("--connections", type=int, default=256, help="most open at once")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request, seconds")
    parser.add_argument("--max-p50-ms", type=float, default=50.0,
                        help="a higher p50 means a queue built up: not sustained (50)")
    parser.add_argument("--max-p99-ms", type=float, default=200.0,
                        help="a higher p99 means a queue built up: not sustained (200)")
    args = parser.parse_args()
    if args.rate <= 0 or args.duration <= 0:
        parser.error("--rate and --duration must be positive")
    started = time.monotonic()
    try:
        import uvloop
    except ImportError:  # plain asyncio only adds scheduling lag, which is reported
        summary = asyncio.run(run(args))
    else:
        summary = uvloop.run(run(args))
    result = asdict(summary) | {"wall_s": round(time.monotonic() - started, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
