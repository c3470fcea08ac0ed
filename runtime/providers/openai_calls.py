"""An OpenAI-format stream's tool-call pieces, passed on as OpenAI itself sends them.

OpenAI gives a call's ``id``, ``type`` and ``name`` on its first piece only, then
argument fragments under the same ``index``; clients (the openai SDK's
``chat.completions.stream``, LangChain, the Vercel AI SDK) join every string field of
one index, so a server that strays from that breaks the calls they assemble:

    a server that repeats the id and name on     the id and name are given once:
    every piece (Fireworks, DeepSeek, Qwen)      "call_a1call_a1call_a1" otherwise
    a server that sends no index (Gemini's       a call with a new id is the next
    OpenAI layer: each call whole)               index: all were index 0, their
                                                 arguments run together
    a server that sends no id (vLLM with some    an id is made (``call_<24 hex>``):
    tool parsers)                                the client's tool message needs one

A whole answer's calls with no id are given one the same way (``made_call_id``), and
arguments sent as a JSON object (TGI, llama.cpp's server) go on as its JSON text
(``arguments_text``), whole or streamed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from .base import ToolCallDelta


def arguments_text(arguments: object) -> str:
    """A call's arguments as the JSON text OpenAI sends: an object as it came from TGI
    and llama.cpp's server (``{"city": "Paris"}``) dumped, not written as Python's
    ``{'city': 'Paris'}``, which no client parses."""
    if arguments is None:  # none sent: no arguments (a whole answer's "")
        return ""
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def made_call_id() -> str:
    """An id for a tool call its server gave none (``call_`` and 24 hex digits, within
    the 40 characters OpenAI takes back in a tool message)."""
    return f"call_{uuid.uuid4().hex[:24]}"


class StreamedCalls:
    """The calls of one stream so far: each choice's ids and names by index."""

    __slots__ = ("_ids", "_names", "_numbers")

    def __init__(self) -> None:
        self._ids: dict[tuple[int, int], str] = {}  # (choice, index) -> the call's id
        self._names: dict[tuple[int, int], str] = {}  # (choice, index) -> its name so far
        self._numbers: dict[tuple[int, str], int] = {}  # (choice, id) -> its index

    def piece(self, choice: int, call: Mapping[str, Any]) -> ToolCallDelta:
        """One piece of ``call`` (a ``delta.tool_calls`` entry of ``choice``) as OpenAI
        would send it."""
        function = call.get("function") or {}
        given_id = call.get("id") or None
        index = call.get("index")
        if isinstance(index, bool) or not isinstance(index, int):
            index = self._number(choice, given_id)
        key = (choice, index)
        call_id = None
        if key not in self._ids:  # its first piece: the id given, or one made
            call_id = str(given_id) if given_id else made_call_id()
            self._ids[key] = call_id
            self._numbers[(choice, call_id)] = index
        name = function.get("name") or None
        if name is not None:
            so_far = self._names.get(key, "")
            if name == so_far:  # said again, not a further piece of it
                name = None
            else:
                self._names[key] = so_far + str(name)
        arguments = function.get("arguments")
        return ToolCallDelta(index=index, id=call_id, name=name,
                             arguments=None if arguments is None else arguments_text(arguments))

    def _number(self, choice: int, call_id: object) -> int:
        """The index of a piece that names none: its id's call, or a new one for a new
        id; with no id, the choice's latest call (or its first)."""
        if call_id is not None and (choice, str(call_id)) in self._numbers:
            return self._numbers[(choice, str(call_id))]
        calls = sum(1 for key in self._ids if key[0] == choice)
        if call_id is not None:
            return calls
        return max(calls - 1, 0)
