"""How much of a provider's answer the gateway will hold: ``max_response_mb`` bounds a
whole answer and each line (and event) of a stream, with both upstream clients, so a
wrong ``base_url`` serving a huge file cannot fill a worker's memory; and a stream line
longer than aiohttp's own 512 KiB line limit (an image in one event) still gets through."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from functools import partial

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from aigw.compiler.graph import Provider
from aigw.runtime.errors import UpstreamResponseTooLarge
from aigw.runtime.upstream import Upstream, capped_lines, sse_events, too_large
from aigw.runtime.upstream_aiohttp import AiohttpUpstream

from ..fakes.serve import serving

KIB = 1024
CLIENTS = ["aiohttp", "httpx"]


def _answer(size: int) -> bytes:
    """A JSON object of about ``size`` bytes."""
    return json.dumps({"id": "x", "padding": "a" * size}).encode()


def _upstream_app() -> Starlette:
    async def answer(request: Request) -> Response:
        size = int(request.query_params["size"])
        body = _answer(size)
        if request.query_params.get("chunked") != "1":
            return Response(body, media_type="application/json")

        async def pieces() -> AsyncIterator[bytes]:  # no content-length: read to the end
            for start in range(0, len(body), 16 * KIB):
                yield body[start:start + 16 * KIB]

        return StreamingResponse(pieces(), media_type="application/json")

    async def events(request: Request) -> Response:
        size = int(request.query_params["size"])
        lines = int(request.query_params.get("lines", "1"))

        async def stream() -> AsyncIterator[bytes]:
            data = "".join(f"data: {'b' * (size // lines)}\r\n" for _ in range(lines))
            for start in range(0, len(data), 7 * KIB):  # lines span many chunks
                yield data[start:start + 7 * KIB].encode()
            yield b"\r\n"
            yield b"data: [DONE]\r\n\r\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def ready(_request: Request) -> Response:
        return Response()

    return Starlette(routes=[Route("/v1/answer", answer, methods=["POST"]),
                             Route("/v1/events", events, methods=["POST"]),
                             Route("/__ready", ready)])


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with serving(_upstream_app()) as url:
        yield url


def _provider(base: str, limit: int) -> Provider:
    return Provider(name="big", type="openai", base_url=base, api_version=None, timeout_s=10.0,
                    max_connections=4, headers={}, disabled_reason=None,
                    max_response_bytes=limit)


def _client(kind: str, provider: Provider) -> AiohttpUpstream | Upstream:
    return AiohttpUpstream(provider) if kind == "aiohttp" else Upstream(provider)


async def _events(upstream: AiohttpUpstream | Upstream, url: str) -> list[tuple[str, str]]:
    try:
        return [event async for event in upstream.post_sse(url, {}, {})]
    finally:
        await upstream.aclose()


async def _json(upstream: AiohttpUpstream | Upstream, url: str) -> dict[str, object]:
    try:
        return await upstream.post_json(url, {}, {})
    finally:
        await upstream.aclose()


@pytest.mark.parametrize("chunked", ["0", "1"], ids=["content-length", "chunked"])
@pytest.mark.parametrize("kind", CLIENTS)
async def test_an_answer_over_max_response_mb_fails_the_attempt(
    base: str, kind: str, chunked: str
) -> None:
    provider = _provider(base, 64 * KIB)
    url = f"{base}/v1/answer?chunked={chunked}&size="
    fits = await _json(_client(kind, provider), f"{url}{60 * KIB}")
    assert fits["padding"] == "a" * 60 * KIB
    bound = r"max_response_mb \(0.0625 MiB\)"
    with pytest.raises(UpstreamResponseTooLarge, match=bound) as caught:
        await _json(_client(kind, provider), f"{url}{300 * KIB}")
    assert caught.value.status == 502 and caught.value.code == "upstream_response_too_large"
    assert caught.value.retryable is False  # the same request would bring the same answer


@pytest.mark.parametrize("kind", CLIENTS)
async def test_a_stream_line_longer_than_aiohttps_own_limit_gets_through(
    base: str, kind: str
) -> None:
    """aiohttp's line reader raises LineTooLong past 512 KiB; the default bound is 64 MiB."""
    provider = _provider(base, 64 << 20)
    events = await _events(_client(kind, provider), f"{base}/v1/events?size={1024 * KIB}")
    assert events == [("message", "b" * 1024 * KIB), ("message", "[DONE]")]


@pytest.mark.parametrize("lines", ["1", "64"], ids=["one-line", "many-lines"])
@pytest.mark.parametrize("kind", CLIENTS)
async def test_a_stream_event_over_max_response_mb_fails(base: str, kind: str, lines: str) -> None:
    """One long line, or one event of many data lines, past the bound: a many-line event
    is joined in memory as a long line would be."""
    provider = _provider(base, 64 * KIB)
    fits = await _events(_client(kind, provider), f"{base}/v1/events?size={48 * KIB}&lines={lines}")
    assert len(fits) == 2
    with pytest.raises(UpstreamResponseTooLarge, match="max_response_mb"):
        await _events(_client(kind, provider), f"{base}/v1/events?size={200 * KIB}&lines={lines}")


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def provider_lines(parts: AsyncIterator[bytes], provider: Provider) -> AsyncIterator[str]:
    """The lines of a provider's stream, at its max_response_bytes."""
    return capped_lines(parts, provider.max_response_bytes,
                        partial(too_large, provider, "a line"))


async def test_lines_are_split_across_chunks_and_line_endings() -> None:
    provider = _provider("http://unused", 8)
    lines = [line async for line in provider_lines(
        chunks(b"ab\r\ncd", b"e\n", b"\n", b"12345678\n", b"x\r", b"\ny\nlast"), provider)]
    assert lines == ["ab", "cde", "", "12345678", "x", "y", "last"]
    # A CR alone ends a line too (SSE allows it); a CRLF split by a chunk edge, even
    # an empty chunk, is one ending; a CR after a CR is an empty line.
    lines = [line async for line in provider_lines(
        chunks(b"a\rb\r", b"\rc\r\n", b"\n", b"d\r", b"", b"\ne\rlast\r"), provider)]
    assert lines == ["a", "b", "", "c", "", "d", "e", "last"]
    with pytest.raises(UpstreamResponseTooLarge):  # 9 bytes, across two chunks
        async for _line in provider_lines(chunks(b"ok\n1234", b"56789\n"), provider):
            pass


async def test_events_are_decoded_across_chunks() -> None:
    """Events whole in a chunk, split across chunks (a character's bytes too), several
    in one, with comments, event names, CRLFs and data of many lines; the last one
    unended."""
    provider = _provider("http://unused", 64)
    euro = "€".encode()
    events = [event async for event in sse_events(chunks(
        b'data: {"a":1}\n\n',
        b": keep-alive\n\nevent: delta\ndata: x" + euro[:1], euro[1:] + b"\n",
        b"data: y\r\n\r\ndata: 1\ndata:2\n\n\n",
        b"data: \xff\n\ndata: last"), provider)]
    assert events == [("message", '{"a":1}'), ("delta", "x€\ny"), ("message", "1\n2"),
                      ("message", "\ufffd"), ("message", "last")]


async def test_an_event_past_the_bound_fails_after_the_events_before_it() -> None:
    """As a reader taking one line at a time: the events before the long one in the same
    chunk still come, then the failure; a line over the bound as well."""
    provider = _provider("http://unused", 8)
    seen: list[tuple[str, str]] = []
    with pytest.raises(UpstreamResponseTooLarge, match="an event"):
        async for event in sse_events(chunks(b"data: 1\n\ndata:123\ndata:456\ndata:789\n\n"),
                                      provider):
            seen.append(event)
    assert seen == [("message", "1")]
    seen.clear()
    with pytest.raises(UpstreamResponseTooLarge, match="a line"):
        async for event in sse_events(chunks(b"data: 1\n\ndata: 123456789\n\n"), provider):
            seen.append(event)
    assert seen == [("message", "1")]
