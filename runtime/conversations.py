"""/v1/conversations: OpenAI's Conversations API, and ``conversation`` on /v1/responses.

    POST   /v1/conversations                         made, with up to 20 items and metadata
    GET    POST  DELETE  /v1/conversations/{id}      read, metadata replaced, deleted
                                                     (not its items: OpenAI's rule)
    POST   GET   /v1/conversations/{id}/items        up to 20 added; a page of them
    GET    DELETE  /v1/conversations/{id}/items/{item_id}

A conversation is kept in the store beside the kept responses (runtime/store/
conversations.py) and is the key's that made it, as a kept response is: another key
finds nothing (404), admin keys find any. Its items are what ``input`` takes (message,
function_call and function_call_output items, checked as they are added, so that every
item can be given to a model later), each kept with an id (the app's, or ``msg_``/
``fc_``/``fco_`` and a random hex) unique in the conversation, and a status. A
conversation is kept ``responses_ttl_s`` from its last change, holds at most
``conversations_max_items`` items and ``responses_max_bytes`` of them (a record of a
response holds as much): adding past either is a 400 that says so. Deleted, it is
gone from this API at once and its items stay to that expiry (or a kept response's
made in it, which lists them).

``conversation`` on /v1/responses puts the conversation's items before ``input``, as
``previous_response_id`` puts a kept response's (``in_conversation``), refusing before
any upstream call a turn that would take it past its bounds. Once the response has
completed (or is incomplete; a failed one adds nothing), its new input items and its
output items are added (``add_turn``) before the answer (a stream's last event) goes
out, whether or not the response itself is kept (``store``). The output is added even
where it takes the conversation past its bounds (by one answer at most: the next turn
is refused), rather than leaving the conversation without the turn its app was given.
A turn the store cannot take (down, or the conversation deleted meanwhile) is answered
and not added, logged, as a response not kept is. The ids the app gave its input items
are claimed in the conversation before the turn goes upstream (``claim``): two turns at
once giving one id met only when the second was added, after it was answered and billed,
and it was left out, logged. The second is now a 409 before its call, as adding an id the
conversation holds is a 400: an id names one item. A 409, not the 400, as the first turn
may yet fail and free the id: the official SDKs retry a 409, and find the id added (the
400) or free. The claim ends when the turn is added or ends short (failed, cancelled,
refused); its lease, ``reservation_ttl_s``, is renewed every half lease while the turn
runs (a long stream kept it), so that it lapses only where a gateway stopped mid-turn.

The response's own record (``store``) holds its new input items and names the
conversation's last item before it, rather than repeating the conversation
(runtime/responses_stored.py): a record of each turn of a long conversation grew with
it, n²/2 in all, until one was over ``responses_max_bytes``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from aigw.compiler.graph import ApiKey, Settings

from . import jsonio
from .auth import authenticate
from .errors import BadRequest, Conflict, NotFound, StoreUnavailable, quoted
from .incoming import read_body
from .jsonio import JSONBody
from .live import Live
from .responses_stored import ID_PREFIX, ITEMS, item_line, page_query
from .responses_wire import Item, ResponsesRequest, bad_request_from
from .store.conversations import Bounds, ConversationStore, KeptConversation
from .telemetry.access import called_by
from .uncancelled import uncancelled

log = logging.getLogger("aigw.responses")

__all__ = ["Claim", "add_turn", "claim", "conversation_routes", "in_conversation",
           "release"]

MAX_ADDED = 20  # items one request may add, as OpenAI's
# The ids this gateway gives conversations (``_create``): any other names none. Looked up,
# "<id>:ids" and "<id>:items" were in Redis another conversation's own keys, of another
# type: a 503 (or a 500) where there is nothing to find.
_CONVERSATION_ID = re.compile(r"conv_[0-9a-f]{48}")
_ID_BYTES = 48  # more than the id and status a new item is given, kept


def _metadata(value: dict[str, str]) -> dict[str, str]:
    """OpenAI's bounds: 16 pairs, keys up to 64 characters, values up to 512."""
    if len(value) > 16:
        raise ValueError("at most 16 key-value pairs")
    for name, text in value.items():
        if len(name) > 64:
            raise ValueError(f"the key {name[:64]!r}... is over 64 characters")
        if len(text) > 512:
            raise ValueError(f"the value of {name!r} is over 512 characters")
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_metadata)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateConversation(_Wire):
    items: Annotated[list[Item], Field(max_length=MAX_ADDED)] | None = None
    metadata: Metadata | None = None


class UpdateConversation(_Wire):
    metadata: Metadata | None  # required, as OpenAI's; null clears it


class AddItems(_Wire):
    items: Annotated[list[Item], Field(min_length=1, max_length=MAX_ADDED)]


W = TypeVar("W", bound=_Wire)


def conversation_routes() -> list[Route]:
    return [
        Route("/v1/conversations", _create, methods=["POST"]),
        Route("/v1/conversations/{conversation_id}", _conversation,
              methods=["GET", "POST", "DELETE"]),
        Route("/v1/conversations/{conversation_id}/items", _items, methods=["GET", "POST"]),
        Route("/v1/conversations/{conversation_id}/items/{item_id}", _item,
              methods=["GET", "DELETE"]),
    ]


def _live(request: Request) -> Live:
    live: Live = request.scope["state"]["live"]
    return live


async def _store(live: Live) -> ConversationStore:
    return (await live.store.responses()).conversations()


def _bounds(settings: Settings) -> Bounds:
    return Bounds(items=settings.conversations_max_items, bytes=settings.responses_max_bytes)


async def _body(request: Request, live: Live, model: type[W]) -> W:
    """The body, read once the key was checked (``read_body``'s bounds), as ``model``."""
    try:
        return model.model_validate_json(await read_body(request, live.graph.settings))
    except ValidationError as exc:
        raise bad_request_from(exc) from exc


def _not_found(conversation_id: str, param: str = "conversation_id") -> NotFound:
    return NotFound(f"Conversation with id {quoted(conversation_id)} not found.", param=param)


async def _owned(live: Live, key: ApiKey, conversation_id: str, param: str = "conversation_id",
                 items: bool = False) -> KeptConversation:
    """The conversation if ``key`` may read it (its own, or any for an admin key); its
    items, if asked for, are read once that is known."""
    if _CONVERSATION_ID.fullmatch(conversation_id) is None:
        raise _not_found(conversation_id, param)
    kept = await (await _store(live)).get(conversation_id, items=items,
                                          owner=None if key.admin else key.name)
    if kept is None or (kept.key != key.name and not key.admin):
        raise _not_found(conversation_id, param)
    return kept


def _object(conversation_id: str, created_at: int, metadata: bytes) -> dict[str, Any]:
    return {"id": conversation_id, "object": "conversation", "created_at": created_at,
            "metadata": jsonio.loads(metadata)}


def _new_items(items: Sequence[Any], given: set[str] | None = None) -> list[tuple[str, bytes]]:
    """``items`` as kept, each with its id: the app's, else a new one. An id given twice,
    or one the conversation holds (``given``), is a 400: an id names one item."""
    hex_id = secrets.token_hex(12)
    kept: list[tuple[str, bytes]] = []
    seen = set(given or ())
    for number, item in enumerate(items):
        if item.id in seen:
            raise BadRequest(f"Invalid value for 'items.{number}.id': {quoted(item.id)} names "
                             "another item already.", param=f"items.{number}.id")
        item_id = item.id or f"{ID_PREFIX[item.type]}_{hex_id}_{number}"
        seen.add(item_id)
        kept.append((item_id, item_line(item, item_id)))
    return kept


def _full(conversation_id: str, settings: Settings, param: str) -> BadRequest:
    return BadRequest(
        f"Conversation '{conversation_id}' cannot take these items: it would hold more than "
        f"{settings.conversations_max_items} items or {settings.responses_max_bytes} bytes "
        "(this gateway's conversations_max_items and responses_max_bytes). Delete items "
        "from it, or start another conversation.", param=param)


def _list(items: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    data = [jsonio.loads(line) for _, line in items]
    return {"object": "list", "data": data, "first_id": items[0][0] if items else None,
            "last_id": items[-1][0] if items else None, "has_more": False}


async def _create(request: Request) -> Response:
    live = _live(request)
    key = called_by(request.scope, await authenticate(live, request.headers))
    asked = await _body(request, live, CreateConversation)
    settings = live.graph.settings
    items = _new_items(asked.items or ())
    conversation_id = f"conv_{secrets.token_hex(24)}"
    if (len(items) > settings.conversations_max_items
            or sum(len(line) for _, line in items) > settings.responses_max_bytes):
        raise _full(conversation_id, settings, "items")
    created_at, metadata = int(time.time()), jsonio.dumps(asked.metadata or {})
    await (await _store(live)).create(conversation_id, key.name, created_at, metadata, items,
                                      settings.responses_ttl_s)
    return JSONBody(_object(conversation_id, created_at, metadata))


async def _conversation(request: Request) -> Response:
    """GET, POST (its metadata replaced) or DELETE /v1/conversations/{id}."""
    live, conversation_id = _live(request), request.path_params["conversation_id"]
    key = called_by(request.scope, await authenticate(live, request.headers))
    kept = await _owned(live, key, conversation_id)
    store = await _store(live)
    if request.method == "GET":
        return JSONBody(_object(conversation_id, kept.created_at, kept.metadata))
    if request.method == "DELETE":
        if not await store.delete(conversation_id):
            raise _not_found(conversation_id)  # expired or deleted meanwhile
        return JSONBody({"id": conversation_id, "object": "conversation.deleted",
                         "deleted": True})
    metadata = jsonio.dumps((await _body(request, live, UpdateConversation)).metadata or {})
    if not await store.update(conversation_id, metadata, live.graph.settings.responses_ttl_s):
        raise _not_found(conversation_id)
    return JSONBody(_object(conversation_id, kept.created_at, metadata))


async def _items(request: Request) -> Response:
    """GET (a page, as input_items pages) or POST (items added) .../items."""
    live, conversation_id = _live(request), request.path_params["conversation_id"]
    key = called_by(request.scope, await authenticate(live, request.headers))
    if request.method == "GET":
        order, limit, after = page_query(request.query_params)
        await _owned(live, key, conversation_id)  # its head alone: the page is read apart
        page = await (await _store(live)).page(conversation_id, order, limit, after)
        if page is None:
            assert after is not None
            raise BadRequest(f"Invalid value for 'after': no item of '{conversation_id}' has "
                             f"id {quoted(after)}.", param="after")
        data = [jsonio.loads(line) for line in page.items]
        return JSONBody({"object": "list", "data": data,
                         "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": page.more})
    await _owned(live, key, conversation_id)
    items = _new_items((await _body(request, live, AddItems)).items)
    settings = live.graph.settings
    added = await (await _store(live)).add(conversation_id, items, settings.responses_ttl_s,
                                           _bounds(settings))
    if added == "gone":
        raise _not_found(conversation_id)
    if added == "full":
        raise _full(conversation_id, settings, "items")
    if added == "duplicate":
        raise BadRequest("Invalid value for 'items': the conversation has an item with one "
                         "of their ids already.", param="items")
    return JSONBody(_list(items))


async def _item(request: Request) -> Response:
    """GET or DELETE .../items/{item_id}; a deletion answers the conversation."""
    live = _live(request)
    conversation_id, item_id = (request.path_params["conversation_id"],
                                request.path_params["item_id"])
    key = called_by(request.scope, await authenticate(live, request.headers))
    kept = await _owned(live, key, conversation_id)
    store = await _store(live)
    missing = NotFound(f"Item with id {quoted(item_id)} not found in conversation "
                       f"'{conversation_id}'.", param="item_id")
    if request.method == "GET":
        body = await store.item(conversation_id, item_id)
        if body is None:
            raise missing
        return Response(body, media_type="application/json")  # as kept: compact JSON
    if not await store.remove(conversation_id, item_id, live.graph.settings.responses_ttl_s):
        raise missing
    return JSONBody(_object(conversation_id, kept.created_at, kept.metadata))


async def in_conversation(live: Live, key: ApiKey, request: ResponsesRequest,
                          ) -> tuple[ResponsesRequest, list[bytes]]:
    """``request`` (whose ``conversation`` is set) with the conversation's items before its
    own input, and those items as kept (the response's record starts with them). A turn
    that would take the conversation past its bounds, or give an id it holds, is a 400
    here, before any upstream call."""
    conversation_id = request.conversation
    assert conversation_id is not None
    earlier = list((await _owned(live, key, conversation_id, "conversation", True)).items)
    try:  # parsed and validated in one pass, no dicts between
        items = ITEMS.validate_json(b"[" + b",".join(earlier) + b"]")
    except ValidationError as exc:  # kept by another aigw version, in a shape this one refuses
        raise BadRequest(f"The conversation '{conversation_id}' cannot be continued by this "
                         "gateway version: send the whole conversation as 'input'.",
                         param="conversation") from exc
    held = {item.id for item in items}
    for number, item in enumerate(request.input):
        if item.id is not None:
            if item.id in held:
                raise BadRequest(f"Invalid value for 'input.{number}.id': {quoted(item.id)} names "
                                 "another item of the conversation already.",
                                 param=f"input.{number}.id")
            held.add(item.id)
    settings = live.graph.settings
    size = sum(map(len, earlier)) + sum(
        len(item.model_dump_json(by_alias=True, exclude_none=True)) + _ID_BYTES
        for item in request.input)
    if (len(earlier) + len(request.input) > settings.conversations_max_items
            or size > settings.responses_max_bytes):
        raise _full(conversation_id, settings, "conversation")
    return request.model_copy(update={"input": [*items, *request.input]}), earlier


@dataclass(slots=True, weakref_slot=True)
class Claim:
    """The ids the app gave a turn's input items, held in its conversation under
    ``token`` while the turn runs, its lease renewed (``renewal``) until it has
    ``ended`` (added or released): mutable for that alone, as an ``Admission`` is."""

    conversation: str
    ids: tuple[str, ...]
    token: str
    ended: bool = False
    renewal: asyncio.TimerHandle | None = None


async def claim(live: Live, request: ResponsesRequest) -> Claim | None:
    """Hold the ids the app gave ``request``'s own input items (``in_conversation`` found
    none in the conversation) until its turn is added or ``release``d; None where it gave
    none (no store call). A 409 where another turn in flight holds one."""
    conversation_id = request.conversation
    assert conversation_id is not None
    ids = tuple(item.id for item in request.input if item.id)
    if not ids:
        return None
    held = Claim(conversation_id, ids, secrets.token_hex(12))
    outcome = await (await _store(live)).claim(conversation_id, ids, held.token,
                                               live.graph.settings.reservation_ttl_s)
    shown = ", ".join(map(quoted, ids[:3])) + (", ..." if len(ids) > 3 else "")
    if outcome == "gone":
        raise _not_found(conversation_id, "conversation")
    if outcome == "duplicate":  # added since it was read
        raise BadRequest(f"Invalid value for 'input': an id of its items ({shown}) names "
                         "another item of the conversation already.", param="input")
    if outcome == "in_flight":
        raise Conflict(f"Invalid value for 'input': an id of its items ({shown}) names an "
                       f"item of another turn of conversation '{conversation_id}' in "
                       "progress. Retry once it has ended, or give the item another id.",
                       param="input")
    _keep(live, held)
    return held


def _keep(live: Live, held: Claim) -> None:
    """Renew ``held``'s lease every half lease until its turn has ended: the lease is
    ``reservation_ttl_s`` from the claim, and a turn longer than that (a long stream) let
    it lapse, another turn or an app's items took an id, and the turn was answered, billed
    and then not added. By weak reference, as an ``Admission``'s holds are renewed: a turn
    dropped without ending (a bug) lets its claim lapse, rather than hold it for as long as
    the process lives."""
    lease_s = live.graph.settings.reservation_ttl_s
    held.renewal = asyncio.get_running_loop().call_later(
        lease_s / 2, _renew, live, weakref.ref(held), lease_s)


def _renew(live: Live, ref: weakref.ref[Claim], lease_s: float) -> None:
    held = ref()
    if held is None or held.ended:
        return
    held.renewal = None
    live.store.finish(_renewed(live, held, lease_s))


async def _renewed(live: Live, held: Claim, lease_s: float) -> None:
    """One renewal: its own claim again, under its token (which holds it already)."""
    try:
        outcome = await (await _store(live)).claim(held.conversation, held.ids, held.token,
                                                   lease_s)
    except StoreUnavailable as exc:  # tried again at the next half lease
        log.warning("the ids %s of conversation %s not renewed: %s", held.ids,
                    held.conversation, exc)
        outcome = "claimed"
    if held.ended:  # added or released meanwhile: a claim made again after that is dropped
        if outcome == "claimed":
            await release(live, held)
        return
    if outcome != "claimed":  # lapsed (the store was away) and taken, or conversation gone
        log.warning("the ids %s of conversation %s are no longer the turn's: %s", held.ids,
                    held.conversation, outcome)
        return
    _keep(live, held)


def _ended(held: Claim) -> None:
    held.ended = True
    if held.renewal is not None:
        held.renewal.cancel()
        held.renewal = None


async def release(live: Live, held: Claim | None) -> None:
    """End ``held`` (a turn that adds nothing); where the store cannot, it lapses. Shielded:
    a turn cut by its client releases too."""
    if held is None:
        return
    _ended(held)
    with anyio.CancelScope(shield=True):  # and cancelled outright: ``uncancelled``
        await uncancelled(partial(_released, live, held), live.store.finish, again=True)


async def _released(live: Live, held: Claim) -> None:
    try:  # again after a cut: a claim released already is not this token's any more
        await (await _store(live)).release(held.conversation, held.ids, held.token)
    except StoreUnavailable as exc:
        log.warning("the ids %s of conversation %s not released (they lapse): %s",
                    held.ids, held.conversation, exc)


async def add_turn(live: Live, conversation_id: str, response: dict[str, Any],
                   lines: list[bytes], held: Claim | None = None) -> None:
    """Add a response's new input items (``lines``, as kept, each with its id) and its
    output items to its conversation (their ids ``held`` by the turn, if it gave any); a
    turn not added is logged (the answer is not failed for it: it was made, and
    billed)."""
    items = [(jsonio.loads(line)["id"], line) for line in lines]
    items += [(item["id"], jsonio.dumps(item)) for item in response["output"]]
    if held is not None:
        _ended(held)
    try:
        added = await (await _store(live)).add(conversation_id, items,
                                               live.graph.settings.responses_ttl_s, None,
                                               held.token if held else "")
    except StoreUnavailable as exc:
        log.warning("response %s not added to conversation %s: %s", response["id"],
                    conversation_id, exc)
        return
    if added != "added":
        await release(live, held)
        log.warning("response %s not added to conversation %s: %s", response["id"],
                    conversation_id, "it is gone" if added == "gone"
                    else "an item's id is in it already")
