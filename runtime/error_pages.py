"""What an upstream's error answer that is no JSON says, in a few words: a proxy's HTML
page by its title, a body that is no text by its type and size.

A load balancer or a CDN in front of a provider answers a 502 or a 503 with a page of its
own (nginx's "502 Bad Gateway", Cloudflare's): passed on as it came, a client read up to
``upstream.MAX_MESSAGE`` characters of markup, styles and scripts in its error message.
"""

from __future__ import annotations

from html.parser import HTMLParser

# The most of a page's title said: a title is a line; what is past that is no title.
MAX_TITLE = 200
# Media types of text that is said as it is: a short plain-text error reads well whole.
_TEXT_TYPES = ("text/", "application/json", "application/xml")
_TEXT_SUFFIXES = ("+json", "+xml")
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
# How an HTML page opens, whatever type its server said (some say text/plain, or none).
_HTML_OPENINGS = ("<!doctype html", "<html")


def described(status: int, body: bytes, content_type: str | None) -> str | None:
    """A short account of an error ``body`` that is no JSON, or None for text that can
    be said as it is.

    >>> described(502, b"<html><head><title>502 Bad Gateway</title></head></html>",
    ...           "text/html")
    'HTTP 502 (an HTML page: 502 Bad Gateway)'
    >>> described(500, bytes(40), "application/octet-stream")
    'HTTP 500 (a body of 40 bytes, application/octet-stream)'
    >>> described(500, b"upstream connect error", "text/plain") is None
    True
    """
    media = (content_type or "").partition(";")[0].strip().lower()
    opening = body[:64].lstrip().lower()
    if media in _HTML_TYPES or opening.startswith(tuple(o.encode() for o in _HTML_OPENINGS)):
        title = _title(body.decode("utf-8", "replace"))
        return f"HTTP {status} (an HTML page: {title})" if title else \
            f"HTTP {status} (an HTML page)"
    if media.startswith(_TEXT_TYPES) or media.endswith(_TEXT_SUFFIXES):
        return None
    if not media:
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return f"HTTP {status} (a body of {len(body)} bytes that is not text)"
        return None
    return f"HTTP {status} (a body of {len(body)} bytes, {media})"


def _title(page: str) -> str:
    """The page's title, or its first heading where it has none (nginx's 503 page), its
    white space collapsed and its entities read; "" where it has neither."""
    reader = _Headings()
    reader.feed(page)
    reader.close()
    found = reader.texts.get("title") or reader.texts.get("h1") or ""
    return " ".join(found.split())[:MAX_TITLE]


class _Headings(HTMLParser):
    """The text of a page's first ``<title>`` and first ``<h1>``, markup left out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: dict[str, str] = {}
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("title", "h1") and tag not in self.texts and self._open is None:
            self._open = tag
            self.texts[tag] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == self._open:
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None and len(self.texts[self._open]) <= MAX_TITLE:
            self.texts[self._open] += data
