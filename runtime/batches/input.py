"""A batch's input file, checked line by line before any line runs.

Each line is ``{"custom_id", "method": "POST", "url", "body"}``; ``custom_id`` is unique
in the file, ``url`` is the batch's endpoint, ``body`` a JSON object (not a stream: a
batch line's answer is one document). What is wrong is reported as OpenAI reports it:
the batch ``failed``, with ``errors.data`` of ``{code, line, message, param}``, at most
``MAX_ERRORS`` of them.

The file (up to files_max_bytes) is read ``READ_CHUNK`` at a time, never whole: checking
it holds one line and the custom_ids seen, and a resumed batch parses only the lines it
has not finished, as they are sent (``pending_lines``).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

MAX_ERRORS = 100
READ_CHUNK = 1 << 20
# The longest custom_id: OpenAI caps it too. It is copied into every output or error
# line and held (with every other line's) while a file is checked for duplicates.
MAX_CUSTOM_ID = 512


@dataclass(frozen=True, slots=True)
class InputLine:
    line: int  # from 1, as the errors count them
    custom_id: str
    body: bytes  # the request's JSON, as the endpoint reads it


@dataclass(frozen=True, slots=True)
class UnreadLine:
    """A line of a running batch's input that no longer parses as it did when the batch
    was checked (its file changed under it, or a check added since refuses it): it is
    failed with ``error``, in the error file and counted, not skipped."""

    line: int
    custom_id: str | None  # None: the line does not give a usable one
    error: dict[str, Any]  # {code, message}, as the error file's lines have it


@dataclass(frozen=True, slots=True)
class Checked:
    total: int  # the lines that may run
    errors: tuple[dict[str, Any], ...]  # none: every line may run


def _error(code: str, line: int | None, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "line": line, "message": message, "param": param}


def longest_line(max_line_bytes: int) -> int:
    """The longest line read whole: its body re-encoded may be up to 6 times shorter (a
    ``\\u0041`` is an ``A``), plus its custom_id and the rest."""
    return 6 * max_line_bytes + (64 << 10)


def read_lines(file: BinaryIO, longest: int) -> Iterator[tuple[int, bytes | None]]:
    """The lines of ``file``, numbered from 1 as ``bytes.splitlines`` numbers them, read
    ``READ_CHUNK`` at a time. A line past ``longest`` bytes is ``None``, and the last.

    >>> import io
    >>> list(read_lines(io.BytesIO(b"a\\r\\nb\\n\\nc"), 10))
    [(1, b'a'), (2, b'b'), (3, b''), (4, b'c')]
    """
    number, held = 0, bytearray()  # held: the start of a line whose end is not read yet
    while chunk := file.read(READ_CHUNK):
        start = max(len(held) - 1, 0)  # the breaks before it were cut at already
        held += chunk
        # After the last line break, but not a final \r: a \n may follow it.
        cut = max(held.rfind(b"\n", start), held.rfind(b"\r", start, len(held) - 1)) + 1
        for raw in held[:cut].splitlines():
            number += 1
            yield number, bytes(raw)
        del held[:cut]
        if len(held) > longest:
            yield number + 1, None
            return
    for raw in held.splitlines():
        number += 1
        yield number, bytes(raw)


def check_lines(lines: Iterable[tuple[int, bytes | None]], endpoint: str, max_lines: int,
                max_line_bytes: int) -> Checked:
    """How many of ``lines`` may run against ``endpoint``, or why none may."""
    total = 0
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in lines:
        if raw is not None and not raw.strip():
            continue
        if total >= max_lines:
            errors.append(_error("too_many_tasks", number,
                                 f"The input file has more than {max_lines} requests, this "
                                 "gateway's batch_max_lines."))
            break
        found = _too_large(number) if raw is None else \
            _line(raw, number, endpoint, seen, max_line_bytes)
        if isinstance(found, InputLine):
            total += 1
            seen.add(found.custom_id)
        else:
            errors.append(found)
        if len(errors) >= MAX_ERRORS:
            break
    if not total and not errors:
        errors.append(_error("empty_file", None, "The input file has no requests."))
    return Checked(total, tuple(errors))


def check_input(data: bytes, endpoint: str, max_lines: int, max_line_bytes: int) -> Checked:
    """``check_lines`` of a file in memory.

    >>> check_input(b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", '
    ...             b'"body": {"model": "m", "input": "x"}}', "/v1/embeddings", 10, 1000)
    Checked(total=1, errors=())
    """
    return check_lines(enumerate(data.splitlines(), 1), endpoint, max_lines, max_line_bytes)


def check_file(file: BinaryIO, endpoint: str, max_lines: int, max_line_bytes: int) -> Checked:
    """``check_lines`` of a file on disk, read a chunk at a time (in a worker thread)."""
    return check_lines(read_lines(file, longest_line(max_line_bytes)), endpoint, max_lines,
                       max_line_bytes)


def pending_lines(file: BinaryIO, endpoint: str, done: frozenset[int],
                  max_line_bytes: int) -> Generator[InputLine | UnreadLine, None, None]:
    """The lines of a checked input file that are not ``done``, parsed as they are read;
    ``max_line_bytes`` is the limit the file was checked against (a line it accepted is
    sent, whatever the setting is now). One that no longer parses is an ``UnreadLine``:
    skipped, the batch's request_counts fell short of its total with no trace of it."""
    seen: set[str] = set()  # not kept: the file was checked when its batch was created
    for number, raw in read_lines(file, longest_line(max_line_bytes)):
        if number in done or (raw is not None and not raw.strip()):
            continue
        found = _too_large(number) if raw is None else \
            _line(raw, number, endpoint, seen, max_line_bytes)
        if isinstance(found, InputLine):
            yield found
        else:
            yield UnreadLine(number, None if raw is None else _custom_id_of(raw),
                             {"code": found["code"], "message": found["message"]})


def _custom_id_of(raw: bytes) -> str | None:
    """The custom_id of a line that did not parse as a request, where it gives one."""
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    custom_id = parsed.get("custom_id") if isinstance(parsed, dict) else None
    return custom_id if isinstance(custom_id, str) and len(custom_id) <= MAX_CUSTOM_ID \
        else None


def _too_large(number: int) -> dict[str, Any]:
    return _error("request_too_large", number, "This line is over the gateway's "
                  "max_request_bytes, many times over.", "body")


def _line(raw: bytes, number: int, endpoint: str, seen: set[str],
          max_line_bytes: int) -> InputLine | dict[str, Any]:
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: a line nested thousands deep
        return _error("invalid_json_line", number,
                      "This line is not parseable as valid JSON.")
    if not isinstance(parsed, dict):
        return _error("invalid_json_line", number, "This line is not a JSON object.")
    custom_id = parsed.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _error("missing_required_parameter", number,
                      "Missing required parameter: 'custom_id' (a string).", "custom_id")
    if len(custom_id) > MAX_CUSTOM_ID:
        return _error("string_above_max_length", number,
                      "Invalid 'custom_id': string too long. Expected a string with maximum "
                      f"length {MAX_CUSTOM_ID}, but got a string with length "
                      f"{len(custom_id)} instead.", "custom_id")
    if custom_id in seen:
        return _error("duplicate_custom_id", number,
                      f"The custom_id '{custom_id}' is used by an earlier line; each "
                      "line's custom_id must be unique.", "custom_id")
    if parsed.get("method") != "POST":
        return _error("invalid_method", number,
                      "The method of every line must be 'POST'.", "method")
    if parsed.get("url") != endpoint:
        return _error("mismatched_endpoint", number,
                      f"The url {parsed.get('url')!r} of this line is not the batch's "
                      f"endpoint {endpoint!r}.", "url")
    body = parsed.get("body")
    if not isinstance(body, dict):
        return _error("missing_required_parameter", number,
                      "Missing required parameter: 'body' (a JSON object).", "body")
    if body.get("stream"):
        return _error("invalid_request", number,
                      "Streaming is not supported in a batch: leave 'stream' out.", "body.stream")
    encoded = json.dumps(body).encode()
    if len(encoded) > max_line_bytes:
        return _error("request_too_large", number,
                      f"This line's body is over the gateway's max_request_bytes "
                      f"({max_line_bytes}).", "body")
    return InputLine(number, custom_id, encoded)
