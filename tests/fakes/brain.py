"""What every upstream fake answers, whatever its wire format: deterministic and checkable.

- the last message is a tool result        -> text: "tool said: <result>"
- tools are offered (and not forbidden)    -> a call to the first tool, {"query": <user text>}
- otherwise                                -> text: "<fake name>: <last user text>"
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


def decide(
    fake: str, user_text: str, tool_names: list[str], tool_result: str | None, tools_allowed: bool
) -> Reply:
    if tool_result is not None:
        return Reply(text=f"tool said: {tool_result}")
    if tool_names and tools_allowed:
        return Reply(tool_name=tool_names[0], tool_arguments={"query": user_text})
    return Reply(text=f"{fake}: {user_text}")


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


@dataclass(slots=True)
class Script:
    """Actions to apply to the next requests, in order, and every request seen."""

    actions: list[Action] = field(default_factory=list)
    requests: list[dict[str, object]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def next(self) -> Action:
        return self.actions.pop(0) if self.actions else Action()
