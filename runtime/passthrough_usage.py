"""What a pass-through's answer says it used: the ``usage`` (and the ``model``) of an
OpenAI, Anthropic or Gemini shaped JSON answer, or of the events of such a stream, read from the
bytes as they go by to the client, never holding the answer back.

    OpenAI chat, completions, embeddings    {model, usage: {prompt_tokens, completion_tokens,
                                             prompt_tokens_details: {cached_tokens}}}
    OpenAI Responses (and response.* events) {model, usage: {input_tokens, output_tokens,
                                             input_tokens_details: {cached_tokens}}}, or
                                             {response: {...}} in an event
    Anthropic Messages (and its events)     {model, usage: {input_tokens, output_tokens,
                                             cache_read_input_tokens,
                                             cache_creation_input_tokens}}, message_start's
                                             {message: {...}}, message_delta's {usage}
    Gemini generateContent (and its stream)  {modelVersion, usageMetadata: {promptTokenCount,
                                             candidatesTokenCount, cachedContentTokenCount}}

A stream's counts are the largest each event reported (Anthropic's message_delta
repeats the output so far). Anything else (a file, an answer past ``MAX_JSON_BYTES``,
an event line past ``MAX_LINE_BYTES``, JSON of another shape) reports nothing.

The gateway asks for ``accept-encoding: identity``, but an upstream (or a proxy before
it) may compress all the same: a ``gzip`` or ``deflate`` answer is read from a copy
inflated as it goes by, a bounded piece at a time (``Inflater``), and only while there
is something left to read; the client gets the bytes as they came. Another encoding
(``br``, ``zstd``: no decoder is installed) reports nothing, and says so
(``UsageReader.unreadable``: such an answer is billed what its request held).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .providers.base import Usage

# The most of a JSON answer kept to read its usage: a larger one is passed on unread.
MAX_JSON_BYTES = 8 << 20
# The longest event line read; a longer one is passed on unread.
MAX_LINE_BYTES = 1 << 20
# The most of a compressed answer inflated to read it (a stream's events all together):
# a bomb of a few kilobytes costs this much work and a piece of it in memory, no more.
MAX_INFLATED_BYTES = 64 << 20
# The most inflated at a time: the memory a compressed answer's reading takes.
_INFLATED_PIECE = 64 << 10
# zlib's window bits for each encoding read (deflate: zlib's wrapper, as RFC 9110 has it;
# ``Inflater`` falls back to a raw stream, which some servers send instead).
_WINDOW_BITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
                "deflate": zlib.MAX_WBITS}


class Inflater:
    """A gzip or deflate body inflated as it comes, ``most`` bytes of it at most, a piece
    at a time; ``failed`` once it is past ``most`` or not what its encoding says."""

    def __init__(self, encoding: str, most: int = MAX_INFLATED_BYTES) -> None:
        self._bits = _WINDOW_BITS[encoding]
        self._inflater = zlib.decompressobj(self._bits)
        self._left = most
        self._started = False
        self.failed = False

    @staticmethod
    def reads(encoding: str) -> bool:
        """Whether a body of ``encoding`` (a Content-Encoding value) can be inflated."""
        return encoding in _WINDOW_BITS

    def pieces(self, chunk: bytes) -> Iterator[bytes]:
        """What ``chunk`` inflates to, a bounded piece at a time."""
        data = chunk
        while data and not self.failed:
            try:
                piece = self._inflater.decompress(data, min(_INFLATED_PIECE, self._left + 1))
            except zlib.error:
                if self._started or self._bits != zlib.MAX_WBITS:
                    self.failed = True
                    return
                self._bits = -zlib.MAX_WBITS  # a raw deflate stream, not zlib's wrapper
                self._inflater = zlib.decompressobj(self._bits)
                continue
            self._started = True
            self._left -= len(piece)
            if self._left < 0:
                self.failed = True
                return
            if piece:
                yield piece
            data = self._inflater.unconsumed_tail


def inflated(body: bytes, encoding: str, most: int) -> bytes | None:
    """``body`` inflated from ``encoding``, cut at ``most`` bytes; None where it is not
    what its encoding says.

    >>> import gzip
    >>> inflated(gzip.compress(b"x" * 10), "gzip", 4), inflated(b"plain", "gzip", 4)
    (b'xxxx', None)
    """
    inflater = Inflater(encoding, most + _INFLATED_PIECE)
    out = bytearray()
    for piece in inflater.pieces(body):
        out += piece
        if len(out) >= most:
            return bytes(out[:most])
    return None if inflater.failed else bytes(out)


@dataclass(frozen=True, slots=True)
class Reported:
    """The model an answer names (None: none) and the usage it reports."""

    model: str | None
    usage: Usage


class UsageReader:
    """Fed an answer's bytes as they go by (``feed``), then asked what it reported
    (``reported``). ``content_type`` is the answer's: JSON is kept whole (up to
    ``MAX_JSON_BYTES``) and read at the end; an event stream is read a line at a time.
    ``encoding`` is its Content-Encoding (none: as it is); ``unreadable`` names it where
    it would be read but for an encoding that cannot be (None: read, or not to be)."""

    def __init__(self, content_type: str, encoding: str = "") -> None:
        media = content_type.split(";", 1)[0].strip().lower()
        self._events = media == "text/event-stream"
        self._json = not self._events and (media == "application/json"
                                           or media.endswith("+json"))
        encoding = encoding.strip().lower()
        self._inflater: Inflater | None = None
        self.unreadable: str | None = None
        if encoding not in ("", "identity"):
            if Inflater.reads(encoding):
                self._inflater = Inflater(encoding)
            else:
                if self._events or self._json:
                    self.unreadable = encoding
                self._events = self._json = False
        self._kept = bytearray()
        self._skipping = False  # within an event line too long to read
        self._model: str | None = None
        self._counts: dict[str, int] = {}

    def feed(self, chunk: bytes) -> None:
        inflater = self._inflater
        if inflater is None:
            self._feed(chunk)
            return
        for piece in inflater.pieces(chunk):
            self._feed(piece)
            if not (self._json or self._events):
                return  # nothing left to read it for: inflated no further
        if inflater.failed:
            self._json = self._events = False
            self._kept.clear()

    def _feed(self, chunk: bytes) -> None:
        if self._json:
            if len(self._kept) + len(chunk) > MAX_JSON_BYTES:
                self._json = False
                self._kept.clear()
            else:
                self._kept += chunk
        elif self._events:
            self._lines(chunk)

    def reported(self) -> Reported | None:
        """The usage the answer reported, once it has all gone by; None where it reported
        none."""
        if self._json and self._kept:
            self._read(bytes(self._kept))
            self._kept.clear()
        elif self._events and self._kept and not self._skipping:
            self._line(bytes(self._kept))
        if not self._counts:
            return None
        counts = self._counts
        cached = counts.get("cached", 0)
        written = counts.get("written", 0)
        prompt = counts.get("input", 0)
        if counts.get("anthropic"):  # Anthropic's input_tokens leaves out the cache's
            prompt += cached + written
        return Reported(self._model, Usage(prompt, counts.get("output", 0), cached, written))

    def _lines(self, chunk: bytes) -> None:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if not self._skipping:
                self._kept += chunk[start:end]
                self._line(bytes(self._kept))
            self._kept.clear()
            self._skipping = False
            start = end + 1
        if not self._skipping:
            self._kept += chunk[start:]
            if len(self._kept) > MAX_LINE_BYTES:
                self._kept.clear()
                self._skipping = True

    def _line(self, line: bytes) -> None:
        line = line.rstrip(b"\r")
        if line.startswith(b"data:"):
            self._read(line[5:].strip())

    def _read(self, text: bytes) -> None:
        try:
            document = json.loads(text)
        except ValueError:  # [DONE], or not JSON at all: nothing reported
            return
        # A list: Gemini's streamGenerateContent without alt=sse, one JSON array
        for item in document if isinstance(document, list) else (document,):
            if not isinstance(item, dict):
                continue
            for holder in (item, item.get("message"), item.get("response")):
                if isinstance(holder, dict):
                    self._take(holder)

    def _take(self, holder: Mapping[str, Any]) -> None:
        model = holder.get("model", holder.get("modelVersion"))
        if self._model is None and isinstance(model, str) and model:
            self._model = model
        usage = holder.get("usage")
        if not isinstance(usage, dict):
            self._google(holder.get("usageMetadata"))
            return
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
        found = {
            "input": usage.get("prompt_tokens", usage.get("input_tokens")),
            "output": usage.get("completion_tokens", usage.get("output_tokens")),
            "cached": usage.get("cache_read_input_tokens",
                                details.get("cached_tokens") if isinstance(details, dict)
                                else None),
            "written": usage.get("cache_creation_input_tokens"),
            "anthropic": 1 if "cache_read_input_tokens" in usage
            or "cache_creation_input_tokens" in usage else None,
        }
        self._count(found)

    def _count(self, found: Mapping[str, object]) -> None:
        for name, value in found.items():
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                self._counts[name] = max(self._counts.get(name, 0), value)

    def _google(self, usage: object) -> None:
        """Gemini's ``usageMetadata``, whose prompt count holds its cached tokens, as
        OpenAI's does."""
        if not isinstance(usage, dict):
            return
        self._count({"input": usage.get("promptTokenCount"),
                     "output": usage.get("candidatesTokenCount"),
                     "cached": usage.get("cachedContentTokenCount")})
