"""What a pass-through's answer reported, read as its bytes go by (runtime/passthrough_usage.py)."""

from __future__ import annotations

import gzip
import json
import zlib

from aigw.runtime.passthrough_usage import (
    MAX_INFLATED_BYTES,
    MAX_JSON_BYTES,
    UsageReader,
)
from aigw.runtime.providers.base import Usage


def _fed(content_type: str, *parts: bytes) -> UsageReader:
    reader = UsageReader(content_type)
    for part in parts:
        reader.feed(part)
    return reader


def test_an_openai_answer_in_pieces_reports_its_model_and_usage() -> None:
    body = json.dumps({"id": "chatcmpl-1", "model": "gpt-4o-mini-2024-07-18", "usage": {
        "prompt_tokens": 12, "completion_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 4}}}).encode()
    reported = _fed("application/json; charset=utf-8", body[:7], body[7:]).reported()
    assert reported is not None
    assert reported.model == "gpt-4o-mini-2024-07-18"
    assert reported.usage == Usage(12, 5, cached_tokens=4)


def test_an_anthropic_stream_reports_its_cache_as_prompt_tokens() -> None:
    start = {"type": "message_start", "message": {"model": "claude-sonnet-4-6", "usage": {
        "input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20}}}
    delta = {"type": "message_delta", "usage": {"output_tokens": 42}}
    stream = (f"event: message_start\r\ndata: {json.dumps(start)}\r\n\r\n"
              f"event: message_delta\ndata: {json.dumps(delta)}\n\n").encode()
    # split inside a line: a line is read once it is whole
    reported = _fed("text/event-stream", stream[:30], stream[30:90], stream[90:]).reported()
    assert reported is not None and reported.model == "claude-sonnet-4-6"
    assert reported.usage == Usage(130, 42, cached_tokens=100, cache_creation_tokens=20)


def test_a_responses_stream_reports_the_completed_responses_usage() -> None:
    done = {"type": "response.completed", "response": {"model": "gpt-4.1", "usage": {
        "input_tokens": 8, "output_tokens": 3, "input_tokens_details": {"cached_tokens": 0}}}}
    reported = _fed("text/event-stream",
                    f"data: {json.dumps(done)}".encode()).reported()  # no final newline
    assert reported is not None and reported.usage == Usage(8, 3)


def test_a_gemini_stream_and_array_report_their_usage_metadata() -> None:
    chunk = {"candidates": [], "modelVersion": "gemini-2.5-flash", "usageMetadata": {
        "promptTokenCount": 20, "candidatesTokenCount": 7, "cachedContentTokenCount": 16}}
    streamed = _fed("text/event-stream", f"data: {json.dumps(chunk)}\r\n\r\n".encode())
    whole = _fed("application/json", json.dumps([chunk, {"candidates": []}]).encode())
    for reader in (streamed, whole):
        reported = reader.reported()
        assert reported is not None and reported.model == "gemini-2.5-flash"
        assert reported.usage == Usage(20, 7, cached_tokens=16)


def test_files_other_json_and_oversized_answers_report_nothing() -> None:
    assert _fed("application/octet-stream", b'{"usage": {"prompt_tokens": 3}}').reported() \
        is None
    assert _fed("application/json", b'{"object": "vector_store"}').reported() is None
    assert _fed("application/json", b"[1, 2]").reported() is None
    assert _fed("application/json", b'"usage"').reported() is None
    assert _fed("text/event-stream", b"data: [DONE]\n\n").reported() is None
    big = b'{"usage": {"prompt_tokens": 3}, "pad": "' + b"x" * MAX_JSON_BYTES + b'"}'
    assert _fed("application/json", big[:100], big[100:]).reported() is None
    assert _fed("application/json", b'{"usage": {"prompt_tokens": -1, '
                b'"completion_tokens": true}}').reported() is None


def test_a_gzipped_or_deflated_answer_in_pieces_reports_its_usage() -> None:
    body = json.dumps({"model": "claude-haiku-4-5", "usage": {
        "input_tokens": 9, "output_tokens": 4}}).encode()
    zlib_wrapped = zlib.compress(body)
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)  # deflate as some servers send it
    for encoding, squeezed in (("gzip", gzip.compress(body)), ("deflate", zlib_wrapped),
                               ("deflate", raw.compress(body) + raw.flush())):
        reader = UsageReader("application/json", encoding)
        for at in range(0, len(squeezed), 5):
            reader.feed(squeezed[at:at + 5])
        reported = reader.reported()
        assert reported is not None and reported.usage == Usage(9, 4), encoding


def test_a_compressed_answer_is_inflated_only_as_far_as_it_is_read() -> None:
    bomb = gzip.compress(b'{"usage": "' + b"x" * (MAX_JSON_BYTES + (4 << 20)) + b'"}')
    reader = UsageReader("application/json", "gzip")
    reader.feed(bomb)
    assert reader.reported() is None
    usage = b'data: {"usage": {"input_tokens": 1}}\n'
    for padding, read in ((1 << 20, True), (MAX_INFLATED_BYTES, False)):
        stream = gzip.compress(b"data: " + b"x" * padding + b"\n" + usage)
        reader = UsageReader("text/event-stream", "gzip")
        reader.feed(stream)
        # An event stream inflated past the bound is read no further.
        assert (reader.reported() is not None) is read
    for unread in ("br", "zstd"):
        reader = UsageReader("application/json", unread)
        reader.feed(b'{"usage": {"prompt_tokens": 1, "completion_tokens": 1}}')
        assert reader.reported() is None
        assert reader.unreadable == unread  # billed what its request held
    # Only an answer that would be read says so: a file in br reports nothing, as in plain.
    assert UsageReader("application/octet-stream", "br").unreadable is None
    assert UsageReader("text/event-stream", "gzip").unreadable is None
