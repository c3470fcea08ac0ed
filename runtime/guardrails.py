"""Guardrails: a route's checks on what goes to a model and what comes back.

    input   every message's text (system, user, assistant, tool results; text and
            refusal parts), name, tool calls' arguments and the fields passed on unread,
            the tools' descriptions (a function's, its parameters' schema's) and a
            /v1/completions request's ``suffix``, before the prompt is counted and the
            cache looked up: a redacted prompt is what is counted, cached and sent; a block
            is a 400 ``guardrail_blocked``
            naming the guardrail (never what it matched), and no call goes out
    output  each choice's text, tool-call arguments, refusal and the fields passed on
            unread (a reasoning_content): a block withholds the choice
            (no content, ``finish_reason: content_filter``; still billed, never cached),
            a redact replaces what matched; streams: runtime/guardrail_stream.py

The patterns were compiled by the compiler (compiler/guardrail_graph.py); here they
are only run. Each guardrail finds its spans on the text as it came, then the route's
guardrails decide in the order it lists them: a block wins, redactions are applied
together, a log only counts. Webhooks then see the text the patterns left.

What acted is written down in the request's record (``record.guardrails``): the
``aigw_guardrail_actions_total`` metric, the access log's ``guardrails`` field and the
request span's ``aigw.guardrails`` attribute come from it.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import httpx

from aigw.compiler.guardrail_graph import Direction, Guardrail, Webhook

from .chat_request import ChatRequest, ContentPart, Message, TextChatRequest
from .errors import BadRequest, GuardrailBlocked
from .guardrail_verdicts import Asked, Verdict, Verdicts
from .providers.base import ChatResult, Choice
from .telemetry.record import RequestRecord
from .upstream import no_cookies, read_bounded, scrub_url, scrub_values

log = logging.getLogger("aigw.guardrails")

# The most of a checker's answer read: it holds one text at most.
MAX_ANSWER_BYTES = 16 << 20


class Withheld(Exception):
    """A guardrail blocked a text (caught where the text is: never seen by a client)."""

    def __init__(self, guardrail: str) -> None:
        super().__init__(guardrail)
        self.guardrail = guardrail


Span = tuple[int, int, str]  # start, end, replacement


def spans(guardrail: Guardrail, text: str) -> list[Span]:
    """Where ``guardrail``'s patterns match ``text``, each span once (the first pattern
    to claim a stretch of text keeps it), in order.

    >>> from aigw.compiler.guardrail_graph import PII
    >>> g = Guardrail("pii", "pii", "redact", frozenset({"input"}), (PII["email"],))
    >>> spans(g, "mail a@b.io now")
    [(5, 11, '[EMAIL]')]
    """
    found: list[Span] = []
    redacts = guardrail.action == "redact"
    for matcher in guardrail.matchers:
        for match in matcher.pattern.finditer(text):
            start, end = match.span()
            if start == end and redacts:  # a lookahead alone, a \b: nothing to take out,
                continue  # and its label would be put in between two characters
            if matcher.check is not None and not matcher.check(match.group()):
                continue
            if any(start < taken_end and taken_start < end for taken_start, taken_end, _ in found):
                continue
            found.append((start, end, matcher.label))
    found.sort()
    return found


@dataclass(frozen=True, slots=True)
class Judged:
    """What the pattern guardrails made of ``text[seen:cut]``: the text to let through,
    or the guardrail that blocked it."""

    text: str
    cut: int
    blocked_by: str | None


def judge(guardrails: Sequence[Guardrail], text: str, direction: Direction,
          record: RequestRecord, hold: int | None = None, seen: int = 0) -> Judged:
    """Run the pattern guardrails over ``text``. With ``hold`` (a stream's text so far),
    only a prefix is decided: the last ``hold`` characters, and any match reaching into
    them, wait for more text, so that a pattern split across chunks still matches.
    ``seen``: the first characters of ``text`` went out already; they are there for what
    a pattern looks behind it at (a lookbehind such as ``(?<=password=)``, a word
    boundary), and are not decided again."""
    cut, blocked_by, redact = _decide(guardrails, text, direction, record, hold, seen)
    if blocked_by is not None:
        return Judged("", cut, blocked_by)
    return Judged(_redacted(text[seen:cut], redact), cut, None)


def _decide(guardrails: Sequence[Guardrail], text: str, direction: Direction,
            record: RequestRecord, hold: int | None,
            seen: int) -> tuple[int, str | None, list[Span]]:
    """``judge``'s verdict: where it cut, the guardrail that blocked (if one did), and
    the spans to redact in ``text[seen:cut]``."""
    found = [(guardrail, [span for span in spans(guardrail, text) if span[1] > seen])
             for guardrail in guardrails if guardrail.matchers]
    cut = len(text) if hold is None else max(seen, len(text) - hold)
    if hold is not None:
        moved = True
        while moved:  # moving the cut back can put it inside another match
            moved = False
            for _guardrail, matched in found:
                for start, end, _label in matched:
                    if start < cut < end and cut != max(start, seen):
                        cut, moved = max(start, seen), True
    redact: list[Span] = []
    for guardrail, matched in found:
        decided = [span for span in matched if span[1] <= cut]
        if not decided:
            continue
        acted(record, guardrail, direction, guardrail.action)
        if guardrail.action == "block":
            return cut, guardrail.name, []
        if guardrail.action == "redact":  # of a match begun in what went out, the rest
            redact.extend((max(start, seen) - seen, end - seen, label)
                          for start, end, label in decided)
    return cut, None, redact


def _redacted(text: str, found: list[Span]) -> str:
    if not found:
        return text
    parts, position = [], 0
    for start, end, label in sorted(found):
        if start < position:  # overlaps one replaced already (another guardrail's)
            if end > position:
                position = end
            continue
        parts.append(text[position:start])
        parts.append(label)
        position = end
    parts.append(text[position:])
    return "".join(parts)


def acted(record: RequestRecord, guardrail: Guardrail, direction: Direction,
          action: str) -> None:
    """Write down that ``guardrail`` acted (once per request, side and action)."""
    entry = (guardrail.name, direction, action)
    if record.guardrails is None:
        record.guardrails = [entry]
    elif entry not in record.guardrails:
        record.guardrails.append(entry)


class GuardClient:
    """Asks the webhook guardrails, on one pooled client made on first use (shared by
    every graph a reload brings). As http steps and agents are: redirects are not
    followed (the URL the config wrote is where a text goes), cookies are not kept.
    Its connections are not capped: each check is bounded by its checker's timeout_s,
    while a cap shared by every checker let one that hangs take all the connections,
    and the other checkers' checks time out waiting for one."""

    def __init__(self, client: httpx.AsyncClient | None = None,
                 verdicts: Verdicts | None = None) -> None:
        self._client = client
        # Kept for input texts only: a conversation sends its earlier turns again, while
        # a model's answer is new text each time.
        self.verdicts = verdicts if verdicts is not None else Verdicts()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(cookies=no_cookies(), follow_redirects=False,
                                             limits=httpx.Limits(max_connections=None))
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def check(self, guardrail: Guardrail, text: str, direction: Direction,
                    record: RequestRecord) -> str:
        """``text`` as the checker lets it through (its replacement, for a redact), or
        ``Withheld``. A checker that cannot answer (disabled, unreachable, a timeout, a
        non-2xx status, an unreadable answer) is what its ``on_error`` says. An input
        text it answered about already, for the same route, key and team, is not sent
        again while its verdict is kept (runtime/guardrail_verdicts.py)."""
        webhook = guardrail.webhook
        assert webhook is not None
        asked: Asked = {"text": text, "direction": direction, "route": record.route,
                        "key": record.key, "team": record.team}
        keeps = direction == "input" and webhook.cache is not None
        try:
            verdict = self.verdicts.get(guardrail, asked) if keeps else None
            if verdict is None:
                verdict = await self._ask(guardrail.name, webhook, asked)
                if keeps:  # only an answer: a checker that gave none is asked again
                    self.verdicts.put(guardrail, asked, verdict)
        except _Unanswered as exc:
            log.warning("guardrail %s (%s, request %s): %s; on_error %s", guardrail.name,
                        direction, record.request_id, _scrub(str(exc), webhook),
                        "allow" if webhook.allow_on_error else "block")
            acted(record, guardrail, direction, "error")
            if webhook.allow_on_error:
                return text
            acted(record, guardrail, direction, "block")
            raise Withheld(guardrail.name) from None
        allow, replacement = verdict
        if guardrail.action == "log":
            if not allow or (replacement is not None and replacement != text):
                acted(record, guardrail, direction, "log")
            return text
        if not allow:
            acted(record, guardrail, direction, "block")
            raise Withheld(guardrail.name)
        if replacement is not None and replacement != text:
            acted(record, guardrail, direction, "redact")
            return replacement
        return text

    async def _ask(self, name: str, webhook: Webhook, body: Asked) -> Verdict:
        if webhook.disabled_reason is not None:
            raise _Unanswered(f"the checker is disabled: {webhook.disabled_reason}")
        try:
            # timeout_s bounds the whole check: httpx's timeout is per read, so a checker
            # sending its answer a byte at a time would hold the request for ever.
            async with asyncio.timeout(webhook.timeout_s), self.client.stream(
                    "POST", webhook.url, json=body, headers=dict(webhook.headers),
                    timeout=webhook.timeout_s) as response:
                raw = await read_bounded(response.aiter_bytes(), MAX_ANSWER_BYTES,
                                         lambda: _Unanswered("its answer is too large"))
        except (TimeoutError, httpx.TimeoutException):
            raise _Unanswered(f"no answer within {webhook.timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            raise _Unanswered(f"{type(exc).__name__}: {exc}") from None
        except (httpx.InvalidURL, UnicodeError) as exc:
            # Not HTTPErrors: a ${ENV} made a URL httpx refuses (a bad host, a control
            # character), which was a 500 with the URL's host in its traceback.
            raise _Unanswered(f"its URL cannot be sent ({type(exc).__name__})") from None
        if not 200 <= response.status_code < 300:
            raise _Unanswered(f"it answered HTTP {response.status_code}")
        try:
            answer = json.loads(raw)
        except ValueError:
            raise _Unanswered("its answer is not JSON") from None
        allow = answer.get("allow") if isinstance(answer, dict) else None
        text = answer.get("text") if isinstance(answer, dict) else None
        if not isinstance(allow, bool) or not (text is None or isinstance(text, str)):
            raise _Unanswered("its answer is not {\"allow\": true|false, \"text\"?: string}")
        return allow, text


def _scrub(text: str, webhook: Webhook) -> str:
    """``text`` without the checker's URL nor its query, nor its header values."""
    return scrub_values(scrub_url(text, webhook.url, "the checker's URL"),
                        webhook.headers.values())


class _Unanswered(Exception):
    """The checker gave no usable answer."""


async def check_text(guardrails: Sequence[Guardrail], text: str, direction: Direction,
                     record: RequestRecord, client: GuardClient, seen: int = 0) -> str:
    """One whole text through ``guardrails`` (``text[seen:]``, with ``seen`` as in
    ``judge``): the patterns', then the webhooks'."""
    judged = judge(guardrails, text, direction, record, seen=seen)
    if judged.blocked_by is not None:
        raise Withheld(judged.blocked_by)
    text = judged.text
    for guardrail in guardrails:
        if guardrail.webhook is not None and text:
            text = await client.check(guardrail, text, direction, record)
    return text


async def guard_texts(guardrails: Sequence[Guardrail], texts: tuple[str, ...],
                      direction: Direction, record: RequestRecord,
                      client: GuardClient) -> tuple[str, ...]:
    """Each of ``texts`` (an embeddings call's inputs, a rerank call's query and
    documents, ...) through ``guardrails``; ``texts`` itself when none changed, and
    ``Withheld`` for the first a guardrail blocked."""

    async def check(text: str) -> str:
        return await check_text(guardrails, text, direction, record, client) if text else text

    try:
        if any(guardrail.webhook is not None for guardrail in guardrails):
            # At once, as a chat's messages are: a thousand documents asked one after
            # another waited a thousand checker calls; the first block cancels the rest.
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(check(text)) for text in texts]
            checked = tuple(task.result() for task in tasks)
        else:  # patterns only: no waiting, so no tasks
            checked = tuple([await check(text) for text in texts])
    except* Withheld as group_of:
        raise _first(group_of) from None
    return texts if checked == texts else checked


async def guard_joined(guardrails: Sequence[Guardrail], pieces: tuple[str, ...],
                       direction: Direction, record: RequestRecord,
                       client: GuardClient) -> tuple[str, ...]:
    """``pieces`` of one text (a transcript's cue lines, its segments, its words) through
    ``guardrails`` as that one text, so that a phrase split across two is found; as they
    let them through, ``pieces`` itself when none changed, and ``Withheld`` for a block.

    The patterns read the pieces joined by a space (none where one already ends or the
    next begins with one), and a redaction lands in the pieces its match spans: its label
    in the first, the rest of the match taken out of the others (a cue keeps its place
    and timing). A webhook is sent them a line each, and a text it answers is split back
    at those lines; one that did not keep them is asked about each piece alone.

    >>> from aigw.compiler.guardrail_graph import PII
    >>> g = Guardrail("pii", "pii", "redact", frozenset({"output"}), (PII["phone"],))
    >>> asyncio.run(guard_joined([g], ("call +1 415", "555 0100 now"), "output",
    ...                          RequestRecord("r", "audio", "g"), GuardClient()))
    ('call [PHONE]', ' now')
    """
    joined, starts = _joined(pieces)
    _cut, blocked_by, redact = _decide(guardrails, joined, direction, record, None, 0)
    if blocked_by is not None:
        raise Withheld(blocked_by)
    checked = _spread(pieces, starts, redact) if redact else pieces
    for guardrail in guardrails:
        if guardrail.webhook is None or not any(checked):
            continue
        sent = "\n".join(checked)
        answer = await client.check(guardrail, sent, direction, record)
        if answer == sent:
            continue
        lines = tuple(answer.split("\n"))
        checked = lines if len(lines) == len(checked) else await guard_texts(
            (guardrail,), checked, direction, record, client)
    return pieces if checked == pieces else checked


def _joined(pieces: tuple[str, ...]) -> tuple[str, list[int]]:
    """``pieces`` as one text, and where each begins in it."""
    parts: list[str] = []
    starts: list[int] = []
    at = 0
    for index, piece in enumerate(pieces):
        if index and not (pieces[index - 1][-1:].isspace() or piece[:1].isspace()):
            parts.append(" ")
            at += 1
        starts.append(at)
        parts.append(piece)
        at += len(piece)
    return "".join(parts), starts


def _spread(pieces: tuple[str, ...], starts: list[int], found: list[Span]) -> tuple[str, ...]:
    """``found`` (spans of the pieces joined, at ``starts``) redacted in the pieces."""
    merged: list[Span] = []
    for start, end, label in sorted(found):
        if merged and start < merged[-1][1]:  # overlaps one already (as ``_redacted``)
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]), merged[-1][2])
        else:
            merged.append((start, end, label))
    each: dict[int, list[Span]] = {}
    for start, end, label in merged:
        index = max(bisect.bisect_right(starts, start) - 1, 0)
        while index < len(pieces) and starts[index] < end:
            at = starts[index]
            low, high = max(start, at) - at, min(end, at + len(pieces[index])) - at
            if low < high:  # not in the space between two pieces alone
                each.setdefault(index, []).append((low, high, label))
                label = ""  # the label once, in the first piece the match reaches
            index += 1
    return tuple(_redacted(piece, each[index]) if index in each else piece
                 for index, piece in enumerate(pieces))


@dataclass(frozen=True, slots=True)
class Check:
    """A route's guardrails on one side of one request, as an answer's texts are sent
    through them (runtime/route_call.py's ``checked``: a transcript, an image's
    revised_prompt)."""

    guardrails: tuple[Guardrail, ...]
    direction: Direction
    record: RequestRecord
    client: GuardClient

    async def texts(self, texts: tuple[str, ...]) -> tuple[str, ...]:
        """Each of ``texts`` alone (``guard_texts``)."""
        return await guard_texts(self.guardrails, texts, self.direction, self.record,
                                 self.client)

    async def joined(self, texts: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
        """Each of ``texts`` the pieces of one text (``guard_joined``); at once where a
        webhook is among the guardrails, the first block cancelling the rest."""

        async def check(pieces: tuple[str, ...]) -> tuple[str, ...]:
            return await guard_joined(self.guardrails, pieces, self.direction, self.record,
                                      self.client)

        try:
            if any(guardrail.webhook is not None for guardrail in self.guardrails):
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(check(pieces)) for pieces in texts]
                return tuple(task.result() for task in tasks)
            return tuple([await check(pieces) for pieces in texts])
        except* Withheld as group_of:
            raise _first(group_of) from None


async def guard_request(guardrails: Sequence[Guardrail], request: ChatRequest,
                        record: RequestRecord, client: GuardClient) -> ChatRequest:
    """``request`` with every message's text checked, and its tools' descriptions (the
    model reads them as prompt text too); a block is ``GuardrailBlocked``. A prompt of
    token ids (/v1/completions) is a 400 naming the first guardrail: ids are no text to
    check, and a guardrail a client could step around by tokenizing its prompt is none."""
    if isinstance(request, TextChatRequest) and request.prompt_ids is not None:
        raise BadRequest(f"'prompt' holds token ids, which guardrail '{guardrails[0].name}' "
                         "cannot check (it reads text): send the text.", param="prompt")
    functions = (request.model_extra or {}).get("functions")  # the legacy tools
    functions = functions if isinstance(functions, list) else []
    checks: list[Callable[[], Coroutine[Any, Any, Any]]] = [
        *(partial(_message, guardrails, message, record, client)
          for message in request.messages),
        *(partial(_tool, guardrails, tool, record, client) for tool in request.tools or ()),
        *(partial(_function, guardrails, function, record, client) for function in functions)]
    try:
        if any(guardrail.webhook is not None for guardrail in guardrails):
            # One text after another, a long conversation waited for one checker call
            # per text in turn: at once, the first block cancels the rest.
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(check()) for check in checks]
            checked = [task.result() for task in tasks]
        else:  # patterns only: no waiting, so no tasks
            checked = [await check() for check in checks]
        suffix_update: dict[str, Any] = {}
        if isinstance(request, TextChatRequest) and request.completion.suffix:
            # /v1/completions: the text after the gap is prompt too (fill in the middle)
            suffix = request.completion.suffix
            if (checked_suffix := await check_text(guardrails, suffix, "input", record,
                                                   client)) != suffix:
                suffix_update["completion"] = request.completion.model_copy(
                    update={"suffix": checked_suffix})
    except* Withheld as group_of:
        raise GuardrailBlocked(_first(group_of).guardrail) from None
    update: dict[str, Any] = suffix_update
    count = len(request.messages)
    messages: list[Message] = checked[:count]
    if any(new is not old for new, old in zip(messages, request.messages, strict=True)):
        update["messages"] = messages
    tools: list[dict[str, Any]] = checked[count:count + len(request.tools or ())]
    if any(new is not old for new, old in zip(tools, request.tools or (), strict=True)):
        update["tools"] = tools
    count += len(tools)
    if any(new is not old for new, old in zip(checked[count:], functions, strict=True)):
        update["functions"] = checked[count:]
    return request.model_copy(update=update) if update else request


def _first(group_of: BaseExceptionGroup[Withheld]) -> Withheld:
    """The first block of a group (all of them the same kind of refusal)."""
    first = group_of.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


async def _message(guardrails: Sequence[Guardrail], message: Message, record: RequestRecord,
                   client: GuardClient) -> Message:
    """``message`` with every text it sends a model checked: its content (text and
    refusal parts), name, tool calls' arguments and the fields aigw passes on unread
    (a legacy ``function_call``, a ``reasoning_content`` sent back)."""

    async def check(text: str) -> str:
        return await check_text(guardrails, text, "input", record, client)

    update: dict[str, Any] = {}
    content = message.content
    if isinstance(content, str):
        if content and (text := await check(content)) != content:
            update["content"] = text
    elif content:
        parts = [await _part(part, check) for part in content]
        if any(new is not old for new, old in zip(parts, content, strict=True)):
            update["content"] = parts
    if message.name and (name := await check(message.name)) != message.name:
        update["name"] = name
    if message.tool_calls:
        calls = [await _call(call, check) for call in message.tool_calls]
        if any(new is not old for new, old in zip(calls, message.tool_calls, strict=True)):
            update["tool_calls"] = calls
    for field_name, value in (message.model_extra or {}).items():
        if (checked := await checked_strings(value, check)) is not value:
            update[field_name] = checked
    return message.model_copy(update=update) if update else message


async def _part(part: ContentPart, check: Callable[[str], Awaitable[str]]) -> ContentPart:
    if part.type == "text" and part.text and (text := await check(part.text)) != part.text:
        return part.model_copy(update={"text": text})
    refusal = (part.model_extra or {}).get("refusal") if part.type == "refusal" else None
    if isinstance(refusal, str) and refusal and (text := await check(refusal)) != refusal:
        return part.model_copy(update={"refusal": text})
    return part


async def _call(call: dict[str, Any], check: Callable[[str], Awaitable[str]]) -> dict[str, Any]:
    """A tool call the client sends back, with its arguments checked (the id, type and
    name are the client's and the model's bookkeeping, not text it reads)."""
    function = call.get("function")
    if not isinstance(function, dict):
        return call
    arguments = function.get("arguments")
    checked = await checked_strings(arguments, check)  # a string, or what a client sent
    if checked is arguments:
        return call
    return {**call, "function": {**function, "arguments": checked}}


async def _tool(guardrails: Sequence[Guardrail], tool: dict[str, Any], record: RequestRecord,
                client: GuardClient) -> dict[str, Any]:
    """A tool definition with its descriptions checked: a function's (``{"type":
    "function", "function": {...}}``) or another kind's (``{"type": "custom", "custom":
    {...}}``), as /v1/messages and /v1/responses lower theirs to it."""
    kind = tool.get("type")
    if not isinstance(kind, str) or not isinstance(inner := tool.get(kind), dict):
        return tool
    checked = await _function(guardrails, inner, record, client)
    return tool if checked is inner else {**tool, kind: checked}


async def _function(guardrails: Sequence[Guardrail], function: Any, record: RequestRecord,
                    client: GuardClient) -> Any:
    """A function's description and those in its parameters' JSON schema, checked as
    input. A redaction replaces description text only: descriptions are annotations,
    so what the schema accepts is unchanged. Its name, the parameters' names and the
    schema's values (an enum, a default) are the client's interface, not checked."""
    if not isinstance(function, dict):
        return function

    async def check(text: str) -> str:
        return await check_text(guardrails, text, "input", record, client)

    update: dict[str, Any] = {}
    description = function.get("description")
    if isinstance(description, str) and description \
            and (text := await check(description)) != description:
        update["description"] = text
    parameters = function.get("parameters")
    if (schema := await _schema(parameters, check)) is not parameters:
        update["parameters"] = schema
    return {**function, **update} if update else function


# JSON Schema keywords whose value is a schema (or a list of them: items in drafts 4-7,
# anyOf...), and those whose value maps names to schemas. The others hold values
# (enum, const, default, examples), where a "description" key is data, not a description.
_SUBSCHEMA = ("items", "additionalItems", "additionalProperties", "not", "if", "then", "else",
              "contains", "propertyNames", "unevaluatedItems", "unevaluatedProperties",
              "anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions",
                   "dependentSchemas")


async def _schema(schema: Any, check: Callable[[str], Awaitable[str]]) -> Any:
    """``schema`` with each ``description`` in it through ``check``; ``schema`` itself
    when none changed.

    >>> import asyncio
    >>> async def upper(text: str) -> str: return text.upper()
    >>> asyncio.run(_schema({"type": "object", "properties": {"to": {
    ...     "type": "string", "description": "who", "enum": [{"description": "x"}]}}}, upper))
    {'type': 'object', 'properties': {'to': {'type': 'string', 'description': 'WHO', \
'enum': [{'description': 'x'}]}}}
    """
    if isinstance(schema, list):
        items = [await _schema(item, check) for item in schema]
        return schema if all(new is old for new, old in zip(items, schema, strict=True)) \
            else items
    if not isinstance(schema, dict):
        return schema
    update: dict[str, Any] = {}
    description = schema.get("description")
    if isinstance(description, str) and description \
            and (text := await check(description)) != description:
        update["description"] = text
    for word in _SUBSCHEMA:
        if word in schema and (sub := await _schema(schema[word], check)) is not schema[word]:
            update[word] = sub
    for word in _SUBSCHEMA_MAPS:
        named = schema.get(word)
        if isinstance(named, dict):
            subs = {name: await _schema(sub, check) for name, sub in named.items()}
            if any(subs[name] is not named[name] for name in named):
                update[word] = subs
    return {**schema, **update} if update else schema


async def checked_strings(value: Any, check: Callable[[str], Awaitable[str]]) -> Any:
    """``value`` (JSON: a field aigw passes on unread) with each string in it through
    ``check``; ``value`` itself when nothing in it changed.

    >>> import asyncio
    >>> async def upper(text: str) -> str: return text.upper()
    >>> asyncio.run(checked_strings({"function_call": {"arguments": "x", "n": 1}}, upper))
    {'function_call': {'arguments': 'X', 'n': 1}}
    """
    if isinstance(value, str):
        checked = await check(value) if value else value
        return value if checked == value else checked
    if isinstance(value, Mapping):
        items = {name: await checked_strings(item, check) for name, item in value.items()}
        return value if all(items[name] is value[name] for name in value) else items
    if isinstance(value, list):
        listed = [await checked_strings(item, check) for item in value]
        return value if all(new is old for new, old in zip(listed, value, strict=True)) \
            else listed
    return value


async def guard_result(guardrails: Sequence[Guardrail], result: ChatResult,
                       record: RequestRecord, client: GuardClient) -> tuple[ChatResult, bool]:
    """``result`` with each choice checked, and whether a choice was withheld."""
    choices: list[Choice] = []
    blocked = False
    for choice in result.choices:
        try:
            checked = await _choice(guardrails, choice, record, client)
        except Withheld:
            checked, blocked = withheld(choice.index), True
        choices.append(checked)
    if all(new is old for new, old in zip(choices, result.choices, strict=True)):
        return result, False
    return replace(result, choices=tuple(choices)), blocked


def withheld_by(record: RequestRecord) -> str | None:
    """The output guardrail that withheld (a choice of) the request's answer, if one did."""
    for name, direction, action in record.guardrails or ():
        if direction == "output" and action == "block":
            return name
    return None


def withheld(index: int) -> Choice:
    """A choice a guardrail blocked: nothing of it is shown, as OpenAI's content filter."""
    return Choice(index, None, "content_filter")


async def _choice(guardrails: Sequence[Guardrail], choice: Choice, record: RequestRecord,
                  client: GuardClient) -> Choice:
    async def check(text: str) -> str:
        return await check_text(guardrails, text, "output", record, client)

    content = await check(choice.content) if choice.content else choice.content
    calls = tuple([
        call if not call.arguments else replace(call, arguments=await check(call.arguments))
        for call in choice.tool_calls])
    refusal = await check(choice.refusal) if choice.refusal else choice.refusal
    # What aigw passes on unread (a legacy function_call, a reasoning_content) is the
    # model's text too.
    extra = await checked_strings(choice.extra, check)
    if content == choice.content and refusal == choice.refusal and extra is choice.extra \
            and all(new.arguments == old.arguments
                    for new, old in zip(calls, choice.tool_calls, strict=True)):
        return choice
    # Log probabilities would show the tokens a redaction took out.
    return replace(choice, content=content, tool_calls=calls, refusal=refusal, extra=extra,
                   logprobs=None)
