"""A batch's input file, checked line by line before any line runs.

Each line is ``{"custom_id", "method": "POST", "url", "body"}``; ``custom_id`` is unique
in the file, ``url`` is the batch's endpoint, ``body`` a JSON object (not a stream: a
batch line's answer is one document). What is wrong is reported as OpenAI reports it:
the batch ``failed``, with ``errors.data`` of ``{code, line, message, param}``, at most
``MAX_ERRORS`` of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_ERRORS = 100


@dataclass(frozen=True, slots=True)
class InputLine:
    line: int  # from 1, as the errors count them
    custom_id: str
    body: bytes  # the request's JSON, as the endpoint reads it


@dataclass(frozen=True, slots=True)
class Checked:
    lines: tuple[InputLine, ...]
    errors: tuple[dict[str, Any], ...]  # none: every line may run


def _error(code: str, line: int | None, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "line": line, "message": message, "param": param}


def check_input(data: bytes, endpoint: str, max_lines: int, max_line_bytes: int) -> Checked:
    """The lines of ``data`` to run against ``endpoint``, or why none may run.

    >>> check_input(b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", '
    ...             b'"body": {"model": "m", "input": "x"}}', "/v1/embeddings", 10, 1000).errors
    ()
    """
    lines: list[InputLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        if len(lines) >= max_lines:
            errors.append(_error("too_many_tasks", number,
                                 f"The input file has more than {max_lines} requests, this "
                                 "gateway's batch_max_lines."))
            break
        found = _line(raw, number, endpoint, seen, max_line_bytes)
        if isinstance(found, InputLine):
            lines.append(found)
            seen.add(found.custom_id)
        else:
            errors.append(found)
        if len(errors) >= MAX_ERRORS:
            break
    if not lines and not errors:
        errors.append(_error("empty_file", None, "The input file has no requests."))
    return Checked(tuple(lines), tuple(errors))


def _line(raw: bytes, number: int, endpoint: str, seen: set[str],
          max_line_bytes: int) -> InputLine | dict[str, Any]:
    try:
        parsed = json.loads(raw)
    except ValueError:
        return _error("invalid_json_line", number,
                      "This line is not parseable as valid JSON.")
    if not isinstance(parsed, dict):
        return _error("invalid_json_line", number, "This line is not a JSON object.")
    custom_id = parsed.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _error("missing_required_parameter", number,
                      "Missing required parameter: 'custom_id' (a string).", "custom_id")
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
