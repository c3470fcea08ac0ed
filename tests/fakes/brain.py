"""What every upstream fake answers, whatever its wire format: deterministic and checkable.

- the last message is a tool result        -> text: "tool said: <result>"
- tools are offered (and not forbidden)    -> a call to the first tool, {"query": <user text>}
- otherwise                                -> text: "<fake name>: <last user text>"
- with a seed, that text is one of a few phrasings, chosen by the seed ("<fake name>
  says: ..."), as a seed picks one of the answers a model might give
- with structured output asked for            -> that text in JSON of the schema's shape
  (``json_answer``)
Failures are scripted per fake: each request pops the next ``Action`` if any.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Reply:
    text: str | None = None
    tool_name: str | None = None
    tool_arguments: dict[str, object] | None = None

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.tool_arguments or {})


# What a seeded answer says; none is the unseeded "<fake>: ...", so a seed that is lost
# on the way shows.
PHRASINGS = ("says", "heard", "repeats", "notes")


def decide(
    fake: str, user_text: str, tool_names: list[str], tool_result: str | None,
    tools_allowed: bool, seed: int | None = None,
) -> Reply:
    if tool_result is not None:
        return Reply(text=f"tool said: {tool_result}")
    if tool_names and tools_allowed:
        return Reply(tool_name=tool_names[0], tool_arguments={"query": user_text})
    if seed is not None:
        return Reply(text=f"{fake} {PHRASINGS[seed % len(PHRASINGS)]}: {user_text}")
    return Reply(text=f"{fake}: {user_text}")


def json_answer(schema: object, text: str) -> object:
    """A value of ``schema``'s shape (a JSON Schema as structured outputs take it): every
    property of an object, one item of an array, ``text`` for a string, the first of an
    enum or ``anyOf``; ``$ref`` within the schema followed (pydantic's ``$defs``). Types
    may be Gemini's capitals (``OBJECT``) as well as JSON Schema's.

    >>> json_answer({"type": "object", "properties": {"city": {"type": "string"}}}, "Oslo")
    {'city': 'Oslo'}
    """
    def value(node: object, depth: int) -> object:
        if not isinstance(node, dict) or depth > 16:
            return text
        if "$ref" in node:
            target: object = schema
            for part in str(node["$ref"]).removeprefix("#/").split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
            return value(target, depth + 1)
        if "const" in node:
            return node["const"]
        if node.get("enum"):
            return node["enum"][0]
        for choice in ("anyOf", "oneOf", "allOf"):
            if node.get(choice):
                return value(node[choice][0], depth + 1)
        kind = node.get("type", "object" if "properties" in node else "string")
        if isinstance(kind, list):
            kind = next((item for item in kind if item != "null"), "null")
        kind = str(kind).lower()  # Gemini's own Schema spells types in capitals: "OBJECT"
        if kind == "object":
            return {name: value(item, depth + 1)
                    for name, item in (node.get("properties") or {}).items()}
        if kind == "array":
            return [value(node.get("items", {}), depth + 1)
                    for _ in range(max(1, int(node.get("minItems", 1))))]
        return {"integer": len(text.split()), "number": float(len(text.split())),
                "boolean": True, "null": None}.get(kind, text)

    return value(schema, 0)


def words(text: str) -> list[str]:
    """Stream pieces: each word with the space before it."""
    pieces = text.split(" ")
    return [pieces[0]] + [" " + piece for piece in pieces[1:]]


@dataclass(slots=True)
class Action:
    """A scripted misbehaviour for the next request."""

    status: int = 200  # an HTTP error status to answer with, or 200 to behave
    body: dict[str, object] | None = None  # the error body; a default in the provider's shape
    headers: dict[str, str] = field(default_factory=dict)  # sent with the answer (or error)
    delay_s: float = 0.0  # wait this long before answering (timeouts)
    cut_stream_after: int | None = None  # close the connection after N stream events
    event_delay_s: float = 0.0  # between stream events (a long stream)
    stall_after: int | None = None  # then wait stall_s after N stream events (OpenAI fake)
    stall_s: float = 0.0
    # Thought before answering: reasoning_content (whole, or streamed first) and its
    # reasoning tokens, as DeepSeek's and vLLM's reasoning models send it (OpenAI fake).
    reasoning: str | None = None


@dataclass(slots=True)
class Script:
    """Actions to apply to the next requests, in order, and every request seen."""

    actions: list[Action] = field(default_factory=list)
    requests: list[dict[str, object]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def next(self) -> Action:
        return self.actions.pop(0) if self.actions else Action()
