"""OpenAI's Realtime API as a WebSocket server (``/v1/realtime?model=``, and Azure's
``/openai/realtime?api-version=&deployment=``), speaking the GA event protocol.

As OpenAI's API reference gives it: on connect the server sends ``session.created``;
``session.update`` is answered ``session.updated``; ``conversation.item.create`` is
``conversation.item.created`` (its text kept); ``input_audio_buffer.append`` is taken
silently; ``response.create`` is ``response.created``, a ``response.output_text.delta``
a word of the answer (``"You said: "`` and the last text given), ``response.output_text
.done``, then ``response.done`` whose ``response.usage`` is ``USAGE``, and after it (as
OpenAI's does) ``rate_limits.updated``, the provider's limits (``RATE_LIMITS``). A wrong
key is an ``error`` event (``invalid_request_error`` / ``invalid_api_key``, the message showing
the given key's last four characters), then a close with 3000, as OpenAI's API does.
A user message of ``HANG_UP`` closes the session with ``HANG_UP_CODE``, one of ``DROP``
drops the connection unclosed; one of ``SLOW`` is answered slowly, and can be
cancelled (``response.cancel``); one of ``CUT_DONE`` or ``HOLLOW_DONE`` is answered a
``response.done`` cut short or with no ``response``. One of ``ENDLESS`` is answered a
word every 0.2 s until it is cancelled, one of ``STUCK`` a ``response.created`` and then
nothing, cancel or not (a stuck upstream). One starting ``VERBATIM`` is answered, as
deltas, the pieces after it (split at ``|``) as they are, and the response.done's
message has a part for each: a model saying what a relay might take for an event's type.
After one of ``BINARY`` the session's events come in binary frames, as JSON still; one
of ``HUGE`` is answered a delta of ``HUGE_BYTES``, one of ``CUT_ERROR`` an ``error``
event cut short (no JSON) that quotes the fake's key.
One of ``HALFWAY_DROP``, ``HALFWAY_CLOSE`` or ``HALFWAY_GONE`` is answered the first
two words of its answer and a second of audio (``HALFWAY_AUDIO``), then no
``response.done``: the connection is dropped, closed (``HANG_UP_CODE``), or, at the
client's ``response.cancel``, dropped. One of ``HELD`` is answered a word every 0.1 s
until the client sends ``input_audio_buffer.clear`` (then done, completed); a
``response.create`` meanwhile is refused as OpenAI's API refuses one while a response is
active (``conversation_already_has_active_response``).
``input_audio_buffer.commit`` stands for the end of a turn that server VAD detects: the
server starts a (slow) response of its own, as OpenAI's does with ``turn_detection`` on.
``intent=transcription`` with no model opens a transcription session; with a model the
session is a conversation, which refuses a transcription ``session.update`` as OpenAI's
does. Each session's handshake headers and the close code its client sent are kept for
the test to read.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

# What each response reports using: 120 input tokens (20 of them cached; 80 audio),
# 40 output tokens (30 audio).
USAGE: dict[str, Any] = {
    "total_tokens": 160, "input_tokens": 120, "output_tokens": 40,
    "input_token_details": {"cached_tokens": 20, "text_tokens": 40, "audio_tokens": 80,
                            "cached_tokens_details": {"text_tokens": 20, "audio_tokens": 0}},
    "output_token_details": {"text_tokens": 10, "audio_tokens": 30},
}
# What each rate_limits.updated tells: the limits of the provider's key, as OpenAI gives
# them (its API reference, "rate_limits.updated").
RATE_LIMITS: list[dict[str, Any]] = [
    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
    {"name": "tokens", "limit": 800000, "remaining": 799840, "reset_seconds": 0.012},
]
# A text event that ends the session from the upstream's side: closed with this code.
HANG_UP = "hang up"
HANG_UP_CODE = 4000
# And one that drops its connection, with no close frame.
DROP = "drop the line"
# One whose response comes a word every 0.2 s (several at once where asked for: an
# out-of-band response runs beside the conversation's); a response.cancel meanwhile ends
# them with a response.done of status cancelled (its usage USAGE).
SLOW = "take your time"
# Ones whose response.done comes unreadable: cut short (not JSON), or with no response
# object; each still carries the text it answers, which nobody should log.
CUT_DONE = "cut the bill short"
HOLLOW_DONE = "leave the bill empty"
# One answered until cancelled, and one never done.
ENDLESS = "keep talking"
STUCK = "say nothing more"
# The prefix of one answered, delta by delta, the pieces after it, split at "|".
VERBATIM = "say exactly: "
# One after which the session's events come in binary frames (JSON all the same).
BINARY = "speak in binary"
# One answered a delta of HUGE_BYTES characters.
HUGE = "say a great deal"
HUGE_BYTES = 2 << 20
# One answered an error event cut short (no JSON) that quotes the fake's key, then done.
CUT_ERROR = "quote your key, cut short"
# Ones whose response ends with no response.done after two words and a second of audio
# (pcm16 at 24 kHz: 48,000 bytes): the connection dropped, closed, or dropped at a cancel.
HALFWAY_DROP = "drop the line halfway"
HALFWAY_CLOSE = "hang up halfway"
HALFWAY_GONE = "go quiet halfway"
HALFWAY_TEXT = "You said: "  # the two words sent
HALFWAY_AUDIO = base64.b64encode(bytes(48_000)).decode()
# One answered until the client sends input_audio_buffer.clear.
HELD = "hold on"


@dataclass
class Session:
    """One connection as the fake saw it: its handshake, the events it got, and the close
    code its client sent (None while open)."""

    path: str
    headers: dict[str, str]
    query: dict[str, str]
    events: list[dict[str, Any]] = field(default_factory=list)
    close_code: int | None = None


class RealtimeFake:
    """Served on a websockets server (it reports the close code a client sends; an ASGI
    server tells its app none)."""

    def __init__(self, api_key: str = "sk-fake-realtime-upstream") -> None:
        self.api_key = api_key
        self.sessions: list[Session] = []
        self._binary: set[ServerConnection] = set()  # sessions that were told BINARY
        self._ids = itertools.count(1)

    @contextmanager
    def serving(self) -> Iterator[str]:
        """Listen on a free loopback port until the block ends; yields its http:// URL."""
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        ports: list[int] = []  # set once it listens

        async def run() -> None:
            async with serve(self._session, "127.0.0.1", 0, compression=None) as server:
                ports.append(next(iter(server.sockets)).getsockname()[1])
                await stop.wait()

        thread = threading.Thread(target=loop.run_until_complete, args=(run(),),
                                  name="fake-realtime", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not ports:
            if time.monotonic() > deadline:
                raise TimeoutError("the realtime fake did not start")
            time.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{ports[0]}"
        finally:
            loop.call_soon_threadsafe(stop.set)
            thread.join(10)
            loop.close()

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}"

    async def _session(self, websocket: ServerConnection) -> None:
        request = websocket.request
        assert request is not None
        target = urlsplit(request.path)
        session = Session(target.path, {name.lower(): value for name, value
                                        in request.headers.raw_items()},
                          dict(parse_qsl(target.query)))
        self.sessions.append(session)
        given = session.headers.get("authorization") or \
            f"Bearer {session.headers.get('api-key', '')}"
        if given != f"Bearer {self.api_key}":
            await self._send(websocket, "error", error={
                "type": "invalid_request_error", "code": "invalid_api_key",
                # OpenAI's message shows the tail of the key it was given.
                "message": f"Incorrect API key provided: sk-...{given[-4:]}.", "param": None,
                "event_id": None})
            await websocket.close(3000, "invalid_request_error.invalid_api_key")
            return
        model = session.query.get("model") or session.query.get("deployment")
        # A transcription session is one asked for with no model (OpenAI's guide, "Realtime
        # transcription"); with a model the URL opens a conversation, whatever the intent.
        kind_of_session = "transcription" if model is None and \
            session.query.get("intent") == "transcription" else "realtime"
        await self._send(websocket, "session.created", session={
            "id": self._id("sess"), "object": "realtime.session", "type": kind_of_session,
            "model": model, "output_modalities": ["audio"]})
        said = ""
        cancelled = asyncio.Event()  # the client's response.cancel
        released = asyncio.Event()  # the client's input_audio_buffer.clear (HELD)
        responding: list[asyncio.Future[None]] = []  # SLOW responses, answered meanwhile
        try:
            async for message in websocket:
                event = json.loads(message)
                session.events.append(event)
                kind = event.get("type")
                if kind == "session.update" and \
                        event.get("session", {}).get("type", kind_of_session) != kind_of_session:
                    await self._send(websocket, "error", error={
                        "type": "invalid_request_error", "code": "invalid_parameter",
                        "message": "Passing a transcription session update event to a "
                        "realtime session is not allowed.", "param": None,
                        "event_id": event.get("event_id")})
                elif kind == "session.update":
                    await self._send(websocket, "session.updated", session={
                        "id": "sess", "object": "realtime.session", "type": kind_of_session,
                        "model": model, **event.get("session", {})})
                elif kind == "conversation.item.create":
                    item = {"id": self._id("item"), **event["item"]}
                    said = " ".join(part.get("text", "") for part in item.get("content", []))
                    await self._send(websocket, "conversation.item.created",
                                     previous_item_id=None, item=item)
                    if said == BINARY:
                        self._binary.add(websocket)
                    if said == HANG_UP:
                        await websocket.close(HANG_UP_CODE, "hung up")
                    elif said == DROP:
                        websocket.transport.abort()
                elif kind == "input_audio_buffer.commit":  # the end of a turn, as server
                    # VAD detects it: the server starts a response of its own, slowly
                    await self._send(websocket, "input_audio_buffer.committed",
                                     previous_item_id=None, item_id=self._id("item"))
                    cancelled.clear()
                    responding.append(asyncio.ensure_future(
                        self._respond(websocket, SLOW, cancelled)))
                elif kind == "response.create" and any(
                        not answer.done() for answer in responding) and said == HELD:
                    await self._send(websocket, "error", error={
                        "type": "invalid_request_error",
                        "code": "conversation_already_has_active_response",
                        "message": "Conversation already has an active response in "
                        "progress. Wait until the response is finished before creating a "
                        "new one.", "param": None, "event_id": event.get("event_id")})
                elif kind == "response.create" and said in (SLOW, ENDLESS, STUCK, HELD,
                                                            HALFWAY_GONE):
                    # cancel read meanwhile
                    cancelled.clear()
                    released.clear()
                    responding.append(asyncio.ensure_future(
                        self._respond(websocket, said, cancelled, released)))
                elif kind == "input_audio_buffer.clear":
                    await self._send(websocket, "input_audio_buffer.cleared")
                    released.set()
                elif kind == "response.create":
                    await self._respond(websocket, said, cancelled)
                elif kind == "response.cancel":
                    cancelled.set()
        except ConnectionClosed:
            pass
        await asyncio.gather(*responding, return_exceptions=True)
        session.close_code = websocket.close_code

    async def _respond(self, websocket: ServerConnection, said: str,
                       cancelled: asyncio.Event, released: asyncio.Event | None = None) -> None:
        response_id, item_id = self._id("resp"), self._id("item")
        response = {"id": response_id, "object": "realtime.response", "status": "in_progress",
                    "output": [], "usage": None}
        await self._send(websocket, "response.created", response=response)
        if said == STUCK:
            await websocket.wait_closed()
            return
        if said in (HALFWAY_DROP, HALFWAY_CLOSE, HALFWAY_GONE):
            await self._halfway(websocket, said, response_id, item_id, cancelled)
            return
        if said == HELD:
            assert released is not None
            while not released.is_set():
                await self._send(websocket, "response.output_text.delta",
                                 response_id=response_id, item_id=item_id, output_index=0,
                                 content_index=0, delta="wait ")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(released.wait(), 0.1)
            await self._done(websocket, {**response, "status": "completed", "usage": USAGE})
            return
        if said == CUT_ERROR:
            error = json.dumps({"type": "error", "error": {
                "type": "invalid_request_error",
                "message": f"Incorrect API key provided: {self.api_key}."}})
            await websocket.send(error[:-3])
            await self._done(websocket, {**response, "status": "completed", "usage": USAGE})
            return
        text = f"You said: {said}"
        words = [word + " " for word in text.split(" ")]
        if said == HUGE:
            words = ["x" * HUGE_BYTES]
        if said.startswith(VERBATIM):
            words = said.removeprefix(VERBATIM).split("|")
            text = "".join(words)
        for word in itertools.cycle(words) if said == ENDLESS else words:
            if cancelled.is_set():  # what was made is billed all the same
                await self._done(websocket, {**response, "status": "cancelled",
                                             "usage": USAGE})
                return
            await self._send(websocket, "response.output_text.delta", response_id=response_id,
                             item_id=item_id, output_index=0, content_index=0,
                             delta=word)
            if said in (SLOW, ENDLESS):
                await asyncio.sleep(0.2)
        await self._send(websocket, "response.output_text.done", response_id=response_id,
                         item_id=item_id, output_index=0, content_index=0, text=text)
        if said in (CUT_DONE, HOLLOW_DONE):
            done = json.dumps({"event_id": self._id("event"), "type": "response.done",
                               "response_text": text})
            await websocket.send(done[:-10] if said == CUT_DONE else done)
            await self._send(websocket, "rate_limits.updated", rate_limits=RATE_LIMITS)
            return
        parts = words if said.startswith(VERBATIM) else [text]
        await self._done(websocket, {
            **response, "status": "completed", "usage": USAGE,
            "output": [{"id": item_id, "type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": part}
                                    for part in parts]}]})

    async def _halfway(self, websocket: ServerConnection, said: str, response_id: str,
                       item_id: str, cancelled: asyncio.Event) -> None:
        """Two words and a second of audio of an answer, then no response.done."""
        where = {"response_id": response_id, "item_id": item_id, "output_index": 0,
                 "content_index": 0}
        for word in HALFWAY_TEXT.split(" ")[:2]:
            await self._send(websocket, "response.output_text.delta", **where, delta=word + " ")
        await self._send(websocket, "response.output_audio.delta", **where,
                         delta=HALFWAY_AUDIO)
        if said == HALFWAY_CLOSE:
            await websocket.close(HANG_UP_CODE, "hung up")
            return
        if said == HALFWAY_GONE:
            await cancelled.wait()
        websocket.transport.abort()

    async def _done(self, websocket: ServerConnection, response: dict[str, Any]) -> None:
        await self._send(websocket, "response.done", response=response)
        await self._send(websocket, "rate_limits.updated", rate_limits=RATE_LIMITS)

    async def _send(self, websocket: ServerConnection, kind: str, **fields: Any) -> None:
        text = json.dumps({"event_id": self._id("event"), "type": kind, **fields})
        await websocket.send(text.encode() if websocket in self._binary else text)
