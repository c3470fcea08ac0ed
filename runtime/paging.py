"""The query of a list endpoint (``limit``, ``order``), checked as OpenAI checks its own:
a 400 naming the parameter, and showing the value cut short (``errors.quoted``), where
it is not one the endpoint takes."""

from __future__ import annotations

from .errors import BadRequest, quoted

__all__ = ["page_limit", "page_order", "whole_number"]

_ORDERS = ("asc", "desc")


def page_limit(text: str | None, default: int, most: int) -> int:
    """``?limit=``: a whole number from 1 to ``most``, ``default`` when absent.

    >>> page_limit(None, 20, 100), page_limit("100", 20, 100)
    (20, 100)
    """
    limit = default if text is None else whole_number(text)
    if limit is None or not 1 <= limit <= most:
        assert text is not None  # the default is within bounds
        raise BadRequest(f"Invalid value for 'limit': {quoted(text)} is not an integer from "
                         f"1 to {most}.", param="limit")
    return limit


def page_order(text: str | None, default: str = "desc") -> str:
    """``?order=``: ``asc`` or ``desc``, ``default`` when absent."""
    if text is None:
        return default
    if text not in _ORDERS:
        raise BadRequest(f"Invalid value for 'order': {quoted(text)} is not one of 'asc', "
                         "'desc'.", param="order")
    return text


def whole_number(text: str) -> int | None:
    """``text`` (a query value, a header, a form field) as a whole number, where it is one
    in ASCII digits (str.isdigit passes '²', which int refuses, and '٣', which it reads;
    int also reads ' 1' and '1_0'; 5,000 digits are past its limit).

    >>> [whole_number(text) for text in ("3600", "²", " 1", "1_0", "9" * 5000)]
    [3600, None, None, None, None]
    """
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None
