"""Kept responses: ``previous_response_id`` and ``GET``/``DELETE /v1/responses/{id}``
(and its ``cancel``, which OpenAI does only for background responses: a 400 here).

A response whose request said ``store: true`` (OpenAI's default when absent) is kept in
the store (runtime/store/stored_responses.py) for ``settings.responses_ttl_s``, as one
record of two parts: the key that made it (its name), the route and the response object
as answered; apart, its own input items, a JSON line each (the request's items, each
with an id: ``msg_``/``fc_``/``fco_``/``rs_`` and the response's hex where the app gave
none), and beside them the id of the response it continued (``previous``). A
continuation's record does not repeat the conversation before it: each turn is kept
once, so a chain of n turns keeps n turns, not n²/2. Its whole input is read by walking
the chain (``store.chain``: one round-trip, at most ``responses_chain_max_depth``
records and ``responses_chain_max_bytes`` of them, else a 400), each record's key
checked; a record not found on the way (expired, deleted) is a missing previous
response (``input_items`` lists the turns kept after it). A record an older aigw kept
has no ``previous`` and its whole conversation as items: a walk ends there, and reads
it as it is. A response made in a
``conversation`` does not repeat the conversation's items either (they are kept once,
in the conversation, runtime/conversations.py): its record names the conversation (its
response's ``conversation``) and the last item it held before the turn (``after``), and
its input is that conversation's items up to that one, then its own, read in a second
round-trip, whether or not the conversation was deleted since (its items are not); an
item of it removed since is left out, and that item removed, or the items expired,
makes it a missing previous response, as a gone turn of a chain does. A continuation
of such a response by ``previous_response_id`` starts from that input and its output
(what the model was sent and answered; OpenAI's documentation does not say otherwise).
One made in a conversation by an older aigw holds the conversation whole, and is read
as it is. A GET reads and parses the first
part alone; ``input_items`` parses the chain's bodies (their output items) and only the
input lines of its page: a record is up to ``responses_max_bytes`` (4 MiB), and parsing
it holds the event loop (on a worker thread too: the parser holds the GIL, so it is not
moved to one). That setting bounds one turn (a response over it is answered and not
kept, logged: a marker kept in its place makes a continuation, a GET or input_items
say why).

``previous_response_id`` puts the chain's input items and output items before the
request's own; instructions are not carried over (OpenAI's rule: each request gives its
own). The continuation runs on the route its own ``model`` names, authorized as any
request is: the earlier turns' route (kept, for the record) grants nothing, and may be
gone. A response is the key's that made it: another key finds nothing (404, or a
``previous_response_not_found`` 400), as for an id never kept; admin keys find any.
Completed and incomplete (cut at the output limit) responses are kept, and so are
streams that failed (``failed``, with their ``error``) or that the client cut
(``cancelled``), with the output items they completed. A cancelled one can be
continued (its completed items are its answer); a failed one cannot (a 400 that says
to continue the one before it).

The earlier conversation (a chain, or a ``conversation``'s items) is read once the
model is known to name a route the key may call (a lookup: no store read for a model
it cannot call), and before Cedar and the limits are asked (exchange.open): they count
its tokens (Cedar's ``estimated_tokens``, the tpm and budget held by the same step that
counts the rpm), so a key over its rpm or refused by Cedar still has its records read
and validated before its 429 or 403: only the key's own records (the key is compared
first), at most ``responses_chain_max_bytes`` (16 MiB) in all, about 65 ms of CPU a 4
MiB, as parsing a request body of that size costs (which any caller makes the gateway
do before the limits). Unlike a body, it takes the caller a few hundred bytes a
request. That is accepted for now: refusing earlier needs a look at the rpm that counts
nothing, which neither store has (the embedded limiter and the Redis scripts would each
need one), and a Cedar decision asked without the tokens and again with them (two
plans, two gates: a fork of exchange.open's stages).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import QueryParams
from starlette.responses import Response

from aigw.compiler.graph import ApiKey

from . import jsonio
from .errors import (
    BadRequest,
    GatewayError,
    NotFound,
    PreviousResponseNotFound,
    StoreUnavailable,
    quoted,
)
from .jsonio import JSONBody
from .live import Live
from .paging import page_limit, page_order
from .responses_wire import (
    FunctionCallItem,
    FunctionCallOutputItem,
    Item,
    MessageItem,
    ReasoningItem,
    ResponsesRequest,
)
from .store.stored_responses import KeptResponse

log = logging.getLogger("aigw.responses")

__all__ = ["ID_PREFIX", "ITEMS", "cancel_response", "continued", "delete_response",
           "get_response", "input_items",
           "item_line", "items_page", "keep", "kept_items", "page_query"]

ITEMS: TypeAdapter[list[Item]] = TypeAdapter(list[Item])
# The prefix of an id given to an item the app sent without one, by its type.
ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco",
             "reasoning": "rs"}
# The field of a record that stands for a response answered and not kept (too large): a
# continuation is told why, where "not found" would leave the app guessing.
_NOT_KEPT = "not_kept"
# The field of a record made in a conversation that names the conversation's last item
# before the turn: its record holds its own input items, and reads the conversation's
# (kept once, in the conversation) up to that one.
_AFTER = "after"


@dataclass(frozen=True, slots=True)
class _Record:
    """A kept record: its first part parsed (the response, or the marker of one not
    kept) and its own input items as they are kept, one JSON object a line, unparsed
    (empty when not read)."""

    head: dict[str, Any]
    items: bytes

    def lines(self) -> list[bytes]:
        return self.items.split(b"\n") if self.items else []

    def output(self) -> list[bytes]:
        return [jsonio.dumps(item) for item in self.head["response"]["output"]]


async def _found(live: Live, key: ApiKey, response_id: str) -> _Record | None:
    """The record of ``response_id`` (its body alone) if ``key`` may read it: a kept
    response, or the marker of one answered and not kept (``_NOT_KEPT``, why)."""
    store = await live.store.responses()
    found: KeptResponse | None = await store.get(response_id, items=False,
                                                 owner=None if key.admin else key.name)
    if found is None or (found.key != key.name and not key.admin):
        return None
    return _Record(jsonio.loads(found.body), found.items)


async def _kept(live: Live, key: ApiKey, response_id: str) -> _Record:
    """The kept record of ``response_id`` for GET; else a 404 that says why where the
    gateway knows."""
    record = await _found(live, key, response_id)
    if record is None or _NOT_KEPT in record.head:
        raise _not_found(response_id, record.head[_NOT_KEPT] if record else None)
    return record


async def _chain(live: Live, key: ApiKey, response_id: str,
                 missing: Callable[[str | None], GatewayError],
                 continuing: bool = False, whole: bool = True) -> list[_Record]:
    """The records of ``response_id`` and of the responses before it, oldest first, read
    in one round-trip (and a second for the items of the conversation the first was made
    in, which its record does not repeat); ``missing(why)`` is raised where one is not
    found for ``key`` (the first not kept, expired, deleted or another key's; the
    conversation's items gone), a 400 where the chain is
    over ``responses_chain_max_depth`` (counting the response that is ``continuing`` it)
    or ``responses_chain_max_bytes``. Not ``whole``, only the first missing raises: an
    earlier one missing ends the records there (the conversation's items gone, they are
    left out)."""
    settings = live.graph.settings
    depth = settings.responses_chain_max_depth - continuing
    most = settings.responses_chain_max_bytes
    param = "previous_response_id" if continuing else "response_id"
    store = await live.store.responses()
    found = await store.chain(response_id, depth + 1, most,
                              owner=None if key.admin else key.name)
    records: list[_Record] = []
    for link in found:
        if link.key != key.name and not key.admin:
            break
        head = jsonio.loads(link.body)
        if _NOT_KEPT in head:
            if records and not whole:
                break
            raise missing(head[_NOT_KEPT])
        records.append(_Record(head, link.items))
    if not records:
        raise missing(None)
    size = sum(len(link.body) + len(link.items) for link in found)
    too_large = BadRequest(f"The conversation of response '{response_id}' is too large: "
                           f"this gateway's responses_chain_max_bytes is {most} bytes, as "
                           "kept. Send the conversation (or its recent part) as 'input'.",
                           param=param)
    if size > most:
        raise too_large
    if len(found) > depth:
        raise BadRequest(f"The chain of response '{response_id}' is too long: this "
                         "gateway's responses_chain_max_depth is "
                         f"{settings.responses_chain_max_depth} responses. Send the "
                         "conversation (or its recent part) as 'input'.",
                         param=param)
    gone = found[len(records) - 1].previous  # where the walk stopped short of the start
    if gone is not None:
        if not whole:
            return records[::-1]
        raise missing(f"An earlier response of its conversation, '{gone}', is not kept "
                      "(expired or deleted).")
    first = records[-1]  # the chain's start: made in a conversation, its items come first
    held = await _conversation_items(live, first, missing if whole else None)
    if held:
        if size + sum(map(len, held)) > most:
            raise too_large
        records[-1] = _Record(first.head, b"\n".join([*held, *first.lines()]))
    return records[::-1]


async def _conversation_items(live: Live, first: _Record,
                              missing: Callable[[str | None], GatewayError] | None,
                              ) -> tuple[bytes, ...]:
    """The items of the conversation the first turn of a chain was made in, up to the one
    it started after (its record names it, ``_AFTER``); none where it names none (made in
    no conversation, or an empty one; or kept by an older aigw, whose record holds them).
    Gone, ``missing(why)`` is raised (none where it is None)."""
    after = first.head.get(_AFTER)
    if after is None:
        return ()
    conversation = first.head["response"]["conversation"]["id"]
    store = await live.store.responses()
    held = await store.conversations().held(conversation, after)
    if held is None:
        if missing is None:
            return ()
        raise missing(f"The items of its conversation '{conversation}' are not kept "
                      f"(expired, or its item '{after}' deleted).")
    return held


def _input_lines(records: list[_Record]) -> list[bytes]:
    """The whole input of the newest of ``records`` (a chain, oldest first): each earlier
    one's own input and output, then its own input."""
    lines: list[bytes] = []
    for record in records[:-1]:
        lines += record.lines()
        lines += record.output()
    return lines + records[-1].lines()


async def continued(live: Live, key: ApiKey,
                    request: ResponsesRequest) -> tuple[ResponsesRequest, list[bytes]]:
    """``request`` with the conversation of its ``previous_response_id`` before its own
    input, and that conversation's items as kept lines (the new record's own items
    follow them)."""
    previous = request.previous_response_id
    if previous is None:
        return request, []
    records = await _chain(live, key, previous,
                           lambda why: PreviousResponseNotFound(previous, why), continuing=True)
    failed = records[-1].head["response"]
    if failed["status"] == "failed":  # its answer never came: nothing to go on from
        raise BadRequest(f"Previous response with id '{previous}' failed "
                         f"({failed['error']['message']}) and cannot be continued: continue "
                         "the one before it, or send the conversation as 'input'.",
                         param="previous_response_id")
    earlier = [*_input_lines(records), *records[-1].output()]
    try:  # parsed and validated in one pass, no dicts between
        items = ITEMS.validate_json(b"[" + b",".join(earlier) + b"]")
    except ValidationError as exc:  # kept by another aigw version, in a shape this one refuses
        raise BadRequest(f"The response '{previous}' cannot be continued by this gateway "
                         "version: send the whole conversation as 'input'.",
                         param="previous_response_id") from exc
    return request.model_copy(update={"input": [*items, *request.input]}), earlier


def kept_items(request: ResponsesRequest, earlier: list[bytes], hex_id: str) -> list[bytes]:
    """The input items a kept response lists, a JSON line each: ``earlier`` as kept, then
    the request's own (``request.input`` ends with them), each given an id and a status
    if it has none."""
    items = list(earlier)
    for number, item in enumerate(request.input[len(earlier):], start=len(earlier)):
        # "_in": apart from the ids of the response's own output items (msg_<hex>_<n>),
        # which a conversation holds beside these.
        items.append(item_line(item, f"{ID_PREFIX[item.type]}_{hex_id}_in{number}"))
    return items


def item_line(item: MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem,
              default_id: str) -> bytes:
    """``item`` as it is kept, a line of compact JSON: with an id (``default_id`` where it
    has none) and a status."""
    dumped = item.model_dump(by_alias=True, exclude_none=True)
    dumped.setdefault("id", default_id)
    dumped.setdefault("status", "completed")  # the SDK's assistant message needs it
    return jsonio.dumps(dumped)


async def keep(live: Live, key: ApiKey, route: str, response: dict[str, Any],
               items: list[bytes], previous: str | None = None,
               after: str | None = None) -> None:
    """Keep ``response`` (a completed or incomplete one) and its own input ``items``, those
    after the conversation of ``previous`` (the response it continued), or after the item
    ``after`` of the conversation it was made in (``response["conversation"]``), which are
    read from there. Not kept, logged, when it is over ``responses_max_bytes`` (a marker is
    kept instead, so that naming it says why) or the store cannot take it: the answer
    itself is not failed for it."""
    settings = live.graph.settings
    head = {"key": key.name, "route": route, "response": response}
    conversation = None
    if after is not None:
        conversation = response["conversation"]["id"]
        head[_AFTER] = after
    body = jsonio.dumps(head)
    lines = b"\n".join(items)  # compact JSON has no newline of its own
    size = len(body) + len(lines)
    if size > settings.responses_max_bytes:
        log.warning("response %s of key %s not kept: %d bytes with its input items, over "
                    "responses_max_bytes (%d); previous_response_id cannot name it",
                    response["id"], key.name, size, settings.responses_max_bytes)
        body, lines = jsonio.dumps({"key": key.name, "route": route, _NOT_KEPT: (
            f"It was answered and not kept: with its input items it is {size} bytes, "
            f"over this gateway's responses_max_bytes ({settings.responses_max_bytes}). "
            "Send the whole conversation as 'input'.")}), b""
        previous = conversation = None  # a marker ends its chain
    try:
        store = await live.store.responses()
        await store.put(response["id"], key.name, body, lines, settings.responses_ttl_s,
                        previous, conversation)
    except StoreUnavailable as exc:
        log.warning("response %s of key %s not kept: %s", response["id"], key.name, exc)


def _not_found(response_id: str, why: str | None = None) -> NotFound:
    return NotFound(f"Response with id {quoted(response_id)} not found."
                    + (f" {why}" if why else ""),
                    param="response_id")


async def get_response(live: Live, key: ApiKey, response_id: str) -> Response:
    """GET /v1/responses/{id}: the Response object as it was answered, to ``key``
    (authenticated)."""
    record = await _kept(live, key, response_id)
    return JSONBody(record.head["response"])


async def delete_response(live: Live, key: ApiKey, response_id: str) -> Response:
    """DELETE /v1/responses/{id}: forgotten; later reads and continuations find nothing.
    The marker of one not kept is deleted as a response is (the app was told store: true)."""
    if await _found(live, key, response_id) is None:
        raise _not_found(response_id)
    store = await live.store.responses()
    if not await store.delete(response_id):
        raise _not_found(response_id)  # expired or deleted meanwhile
    return JSONBody({"id": response_id, "object": "response", "deleted": True})


async def cancel_response(live: Live, key: ApiKey, response_id: str) -> Response:
    """POST /v1/responses/{id}/cancel: OpenAI cancels only a background response, and this
    gateway runs none (``background`` is refused), so a kept one has ended: a 400 that
    says so (a 404 as GET's where the key finds none). An unknown endpoint's 404 told an
    app the Responses API was not there."""
    record = await _kept(live, key, response_id)
    raise BadRequest(f"Response with id '{response_id}' cannot be cancelled: only responses "
                     "created with 'background': true can be, and this gateway runs none "
                     f"(it is {record.head['response']['status']}).", param="response_id")


async def input_items(live: Live, key: ApiKey, response_id: str,
                      query: QueryParams) -> Response:
    """GET /v1/responses/{id}/input_items: a page of its input items, as OpenAI pages
    them (``order`` desc by default, ``limit`` 1 to 100, 20 by default, ``after`` an
    item id; ``include`` is accepted and changes nothing). Where an earlier turn of its
    conversation is gone (expired, deleted; or the conversation's items it was made
    after), those kept are listed: the turns since and its own. A GET answers the
    response, so a 404 here told an app it was gone; a continuation's input cannot go
    without them, and refuses it (``previous_response_not_found``)."""
    order, limit, after = page_query(query)  # checked before the store is read
    records = await _chain(live, key, response_id, partial(_not_found, response_id),
                           whole=False)
    return JSONBody(items_page(_input_lines(records), order, limit, after, response_id))


def items_page(lines: list[bytes], order: str, limit: int, after: str | None,
               owner: str) -> dict[str, Any]:
    """A list object of the items kept as ``lines`` (oldest first), ``order``ed, from the
    one after the item whose id is ``after``, at most ``limit``; ``owner`` (the response
    or conversation holding them) named in errors."""
    lines = lines[::-1] if order == "desc" else lines
    if after is not None:
        lines = lines[_following(lines, after, owner):]
    page = [jsonio.loads(line) for line in lines[:limit]]  # only the page's items parsed
    return {"object": "list", "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(lines) > limit}


def page_query(query: QueryParams) -> tuple[str, int, str | None]:
    """A page's ``order``, ``limit`` and ``after``, checked (``include`` is accepted and
    changes nothing)."""
    return page_order(query.get("order")), page_limit(query.get("limit"), 20, 100), \
        query.get("after")


def _following(lines: list[bytes], after: str, owner: str) -> int:
    """Where the items after the one whose id is ``after`` start in ``lines``. A line is
    parsed only when its text has that id (a string's own quotes are escaped in JSON,
    so none of a string's text matches)."""
    needle = b'"id":' + jsonio.dumps(after)
    for number, line in enumerate(lines):
        if needle in line and jsonio.loads(line).get("id") == after:
            return number + 1
    raise BadRequest(f"Invalid value for 'after': no item of '{owner}' has id "
                     f"{quoted(after)}.", param="after")
