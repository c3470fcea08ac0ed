"""The ``agent`` step: one message to a remote agent over A2A 1.0's JSON-RPC binding, or
0.3's or 0.2's (their methods ``message/send``, ``tasks/get``, ``tasks/cancel``: the
calls below are made as 1.0's and translated at the wire, a2a_v03.py).

    policy        invoke on ``Agent::"name"`` for the execution's key and end user
    card          GET the agent card (when the agent's url is one), with the agent's
                  ``a2a_version`` as ``A2A-Version`` (a2a_v03.header; none when it has
                  none: the card's versions are what says it); its JSONRPC
                  interface of the agent's ``a2a_version`` (else of 1.0, else of 0.3,
                  else of 0.2: 1.0's ``supportedInterfaces``, 0.3's and 0.2's ``url``
                  and ``additionalInterfaces``) is the endpoint, which must be on the card's
                  origin; kept a minute (agent_cards.py), read again sooner if a call
                  there fails as if the agent had moved; an A2A 0.1 card fails the step
    SendMessage   the rendered prompt as one text part, its messageId the execution's
                  id and the try's key (the same however often it is sent), asking for
                  the task at once (``returnImmediately``) rather than when it ends
      a Message   its parts are the answer
      a Task      kept in the execution (a memo, saved as a model's answer is:
                  ``Run.keep``, on disk while the store is out), so a run that
                  resumes the step polls it rather than send the message again;
                  GetTask until the task is terminal (the step's timeout bounds the
                  wait; when it passes, the execution is cancelled, a step beside it
                  fails or GetTask fails, CancelTask: on any end but the run's own
                  stop, as its runner stops or loses the lease); completed: its
                  artifacts' parts (without any, its status message's) are the
                  answer; any other end fails the step, as does a task that asks for
                  input or authentication: the step sends one message and has nobody
                  to answer a question with

Every call goes through the run's ``HttpCaller`` (calls.py), as an ``http`` step's: no
redirects followed, no cookies kept, an answer bounded in size. Errors show the URL
without user info or query, and never the agent's credentials, even where its answer
quotes them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import httpx

from aigw.compiler.diagnostics import shown_url
from aigw.compiler.egress import origin
from aigw.compiler.pipeline_graph import Agent, AgentCall, Step

from ..errors import InternalError, StoreUnavailable
from ..jsonio import loads
from ..store.executions import LeaseLost, Memo, NewEvent
from ..upstream import scrub_values
from . import a2a_v03
from .a2a_wire import METHOD_NOT_FOUND
from .agent_cards import Endpoint
from .engine import HttpAnswer, Run, StepContext, StepFailed

log = logging.getLogger("aigw.workflows")

PROTOCOL_VERSION = "1.0"
# The versions an agent may be called with: its card's interfaces are tried in this order.
VERSIONS = (PROTOCOL_VERSION, a2a_v03.PROTOCOL_VERSION, a2a_v03.V02)
# A2A 0.1 (tasks/send, tasks/get), which the gateway does not speak. Its card names no
# protocolVersion, as 0.2's before 0.2.5 do; where it has ``authentication`` (0.1's field,
# which 0.2.0 replaced with ``securitySchemes``) it is known as 0.1's, else its agent
# shows itself only by answering message/send with MethodNotFound (``_other_version``).
V01 = "0.1"
_V01_UNSUPPORTED = "is not supported: the agent needs A2A 0.2 or later"
# Waits between GetTask calls: from the first, growing to the longest.
POLL_FIRST_S = 0.2
POLL_LONGEST_S = 2.0
# The most a step that gives up waits for its CancelTask to be answered.
CANCEL_WAIT_S = 5.0
# JSON-RPC errors worth another try (the step's retries): the server's own trouble.
_RETRYABLE_RPC_CODES = frozenset({-32603})
# Answers to a call that suggest the endpoint is no longer where the card said.
_MOVED_STATUSES = frozenset({404, 405, 410})
_DONE = "completed"
# States that end a task, or need what a step cannot give; any other state still runs.
_ENDS = {
    "failed": "failed the task", "canceled": "canceled the task",
    "rejected": "rejected the task", "input-required": "asks for more input (input-required)",
    "auth-required": "asks for authentication (auth-required)",
}
# Of those, the states in which the task is still open at the agent, waiting.
_WAITING = frozenset({"input-required", "auth-required"})


async def call_agent(context: StepContext, step: Step, action: AgentCall) -> Any:
    """Send the step's prompt to its agent; its reply (or finished task) is the output."""
    agent = action.agent
    if agent.disabled_reason is not None:
        raise StepFailed(f"agent '{agent.name}' is disabled: {agent.disabled_reason}",
                         retryable=False)
    # As a pipeline step is checked on Pipeline::"name": a deny fails the step, untried.
    await context.run.caller.check_agent(agent.name)
    client = _Client(context.run, agent, step.timeout_s)
    memo = f"{context.key}#task"
    kept = context.run.memos.get(memo)
    if kept is not None and kept.get("agent") == agent.name:
        # Resumed (a restart, another replica): the message was sent and its task made;
        # sent again, the agent would do the work twice.
        task: Mapping[str, Any] = {"id": kept["task"]}
        made = None
    else:
        result = await client.call("SendMessage", {"message": {
            # The same for every run of this try: an agent that dedupes by it sees a
            # message the gateway had to send again (its answer lost) as the same one.
            "messageId": f"{context.run.id}/{context.key}", "role": "ROLE_USER",
            "parts": [{"text": context.run.text(action.prompt, context.scope)}]},
            # An agent that held the call until its task ended left no task id to keep,
            # cancel or poll after a restart: a timeout or a stop cut it off blind.
            "configuration": {"returnImmediately": True}})
        if "message" in result:
            return _answer(_parts(result["message"]), action.output, agent)
        task = result.get("task")
        if not isinstance(task, Mapping) or not isinstance(task.get("id"), str):
            raise StepFailed(f"agent '{agent.name}' answered SendMessage with neither a "
                             "message nor a task", retryable=False)
        made = {"agent": agent.name, "task": task["id"]}
    try:
        if made is not None:
            # Saved again while the store is out: sent again, the work is done twice.
            # Kept on disk meanwhile: a runner stopped before the store is back left the
            # next run nothing to poll, and it sent the message again.
            await context.run.keep(Memo(memo, made), NewEvent("agent_task", context.path, made),
                                   f"agent '{agent.name}' made task {task['id']!r}, but the "
                                   "store did not keep it", on_disk=True)
        task = await _settled(client, task)
    except StepFailed:
        # The memo refused, or GetTask failed (the agent unreachable, its answer
        # unreadable, its JSON-RPC error): nobody will poll this task again, and a retry
        # of the step makes another beside it.
        await _cancel_task(context, client, str(task["id"]))
        raise
    except asyncio.CancelledError:
        if context.run.gives_up():  # not a stop: nobody will ask for this task again
            await _cancel_task(context, client, str(task["id"]))
        raise
    state = _state(task)
    if state in _WAITING:  # not over at the agent: it would wait for an answer forever
        await _cancel_task(context, client, str(task["id"]))
    if state != _DONE:
        said = client.scrub(_text(_parts(task.get("status", {}).get("message"))))
        raise StepFailed(f"agent '{agent.name}' {_ENDS[state]}" + (f": {said}" if said else ""),
                         retryable=state == "failed")
    parts = [part for artifact in task.get("artifacts") or () if isinstance(artifact, Mapping)
             for part in _parts(artifact)]
    return _answer(parts or _parts(task.get("status", {}).get("message")), action.output, agent)


async def _settled(client: _Client, task: Mapping[str, Any]) -> Mapping[str, Any]:
    """``task`` once it is terminal, or needs what a step cannot give: GetTask until then."""
    wait = POLL_FIRST_S
    while _state(task) not in (_DONE, *_ENDS):
        await asyncio.sleep(wait)
        wait = min(wait * 2, POLL_LONGEST_S)
        task = await client.call("GetTask", {"id": task["id"]})
    return task


async def _cancel_task(context: StepContext, client: _Client, task_id: str) -> None:
    """CancelTask, so the agent stops work nobody waits for; best effort, within
    ``CANCEL_WAIT_S``, shielded from the cancellation that led here, and recorded as an
    ``agent_task_cancel`` event (the task's state then, or why it was not cancelled)."""
    async def cancel() -> None:
        detail: dict[str, Any] = {"agent": client.agent.name, "task": task_id}
        try:
            async with asyncio.timeout(CANCEL_WAIT_S):
                detail["state"] = _state(await client.call("CancelTask", {"id": task_id}))
        except StepFailed as exc:
            detail["error"] = str(exc)
        except TimeoutError:
            detail["error"] = f"CancelTask had no answer in {CANCEL_WAIT_S:g}s"
        try:
            await context.run.emit(NewEvent("agent_task_cancel", context.path, detail))
        except (StoreUnavailable, InternalError, LeaseLost) as exc:  # the cancel is sent
            log.warning("execution %s: the cancel of agent task %s is not recorded: %s",
                        context.run.id, task_id, exc)

    # Its own task: this one is being cancelled, and a store write would see that.
    await asyncio.shield(asyncio.ensure_future(cancel()))


class _Moved(StepFailed):
    """A call that went unanswered, or was answered as if nothing were there (any more)."""


class _Client:
    """One step's calls to one agent, through the run's ``HttpCaller``."""

    def __init__(self, run: Run, agent: Agent, timeout: float) -> None:
        self.run = run
        self.agent = agent
        self.timeout = timeout
        self.headers = dict(agent.headers)
        self.cards = run.services.agent_cards
        self._endpoint: Endpoint | None = None
        self._kept = False  # the endpoint is what the card named to an earlier step

    async def call(self, method: str, params: Mapping[str, Any]) -> Any:
        """``method``'s result from the agent's endpoint. One its card named to an
        earlier step is looked up again when the call suggests the agent has moved (no
        answer, a redirect, 404, 405, 410), and the call made there if it has."""
        if self._endpoint is None:
            self._endpoint = self.cards.get(self.agent)
            self._kept = self._endpoint is not None
            if self._endpoint is None:
                self._endpoint = await self._read_card()
        try:
            return await self.rpc(self._endpoint, method, params)
        except _Moved:
            if not self._kept:
                raise
            was, self._kept = self._endpoint, False
            self.cards.drop(self.agent)
            self._endpoint = await self._read_card()
            if self._endpoint == was:
                raise
        return await self.rpc(self._endpoint, method, params)

    async def _read_card(self) -> Endpoint:
        """The JSON-RPC endpoint: the agent's url, or what its card names (kept)."""
        if not self.agent.card:
            return Endpoint(self.agent.url, self.agent.a2a_version or PROTOCOL_VERSION)
        # Asked in the version its calls will speak (0.2: none, as they have none): not
        # as 1.0's to an agent configured as 0.3's. Of an agent whose version is not
        # known, with none (A2A 1.0, 3.6.1: a version is said by a client that knows it
        # speaks one, and an agent reads none as 0.3): the card says which it speaks.
        card = await self._json("GET", self.agent.url, None, self.agent.a2a_version)
        offers = _offers(card) if isinstance(card, Mapping) else []
        if any(said == V01 for _binding, said, _url in offers):
            raise StepFailed(f"the card of agent '{self.agent.name}' is an A2A 0.1 card (it has "
                             f"0.1's authentication field): A2A 0.1 (tasks/send) "
                             f"{_V01_UNSUPPORTED}", retryable=False)
        unsaid = isinstance(card, Mapping) and card.get("protocolVersion") is None \
            and card.get("supportedInterfaces") is None
        wanted = (self.agent.a2a_version,) if self.agent.a2a_version else VERSIONS
        for version in wanted:
            for binding, said, url in offers:
                if binding == "JSONRPC" and _version(said) == version:
                    self._check_origin(url)
                    endpoint = Endpoint(url, version, unsaid)
                    self.cards.put(self.agent, endpoint)
                    return endpoint
        shown = ", ".join(f"{binding} {said}" for binding, said, _url in offers) or "none"
        raise StepFailed(f"the card of agent '{self.agent.name}' offers no JSONRPC interface "
                         f"of A2A {' or '.join(wanted)}"
                         + (" (its a2a_version)" if self.agent.a2a_version else "")
                         + f"; it offers: {shown}", retryable=False)

    def _check_origin(self, url: str) -> None:
        # The card is the agent's word, not the config's: an endpoint elsewhere could
        # point the gateway, with the agent's credentials, at any host.
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            parsed = None
        reached = origin(parsed.scheme, parsed.host, parsed.port) \
            if parsed is not None and parsed.host and not parsed.userinfo else ""
        if reached not in self.agent.egress.origins:
            raise StepFailed(f"the card of agent '{self.agent.name}' names the endpoint "
                             f"{shown_url(url)!r}, not on the card's origin "
                             f"{next(iter(self.agent.egress.origins))}", retryable=False)

    async def rpc(self, endpoint: Endpoint, method: str, params: Mapping[str, Any]) -> Any:
        """``method``'s (1.0's) result, or the step fails with the agent's error. To an
        agent of 0.3 (or 0.2), the call is made with 0.3's method and params, and its
        result read as 1.0's."""
        legacy = endpoint.version in a2a_v03.LEGACY
        sent = a2a_v03.CALLS[method] if legacy else method
        request = {"jsonrpc": "2.0", "id": str(uuid.uuid4()), "method": sent,
                   "params": a2a_v03.raised_params(params, endpoint.version) if legacy
                   else dict(params)}
        answer = await self._json("POST", endpoint.url, request, endpoint.version)
        if not isinstance(answer, Mapping):
            raise self._failed(f"{sent} answered {type(answer).__name__}, not a JSON-RPC "
                               "response", retryable=False)
        error = answer.get("error")
        if isinstance(error, Mapping):
            code = error.get("code")
            raise self._failed(f"{sent} failed: {self.scrub(str(error.get('message')))} "
                               f"(JSON-RPC error {code})"
                               + self._other_version(code, endpoint, method),
                               retryable=code in _RETRYABLE_RPC_CODES)
        result = answer.get("result")
        if not isinstance(result, Mapping):
            raise self._failed(f"{sent} answered no result", retryable=False)
        if not legacy:
            return result
        return a2a_v03.lowered_result(result) if method == "SendMessage" \
            else a2a_v03.lowered_task(result)

    def _other_version(self, code: Any, endpoint: Endpoint, method: str) -> str:
        """A hint for a method the agent does not know: at an endpoint no card named, it
        may speak another version; asked as 0.2 (its card, if any, saying no version), it
        may speak 0.1, which has no message/send."""
        if code != METHOD_NOT_FOUND:
            return ""
        hint = ""
        if not self.agent.card:
            others = [version for version in VERSIONS if version != endpoint.version]
            hint = (f"; if the agent speaks A2A {' or '.join(others)}, set its a2a_version: "
                    + " or ".join(f"'{version}'" for version in others))
        if method == "SendMessage" and endpoint.version == a2a_v03.V02 \
                and (endpoint.unsaid or not self.agent.card):
            hint += f"; if it speaks A2A 0.1 (tasks/send), that {_V01_UNSUPPORTED}"
        return hint

    async def _json(self, method: str, url: str, body: Any, version: str | None) -> Any:
        """``method`` ``url``'s JSON answer, asked as A2A ``version`` (a2a_v03.header);
        ``None``: a card's GET for an agent whose version is not known, said in no header."""
        shown = shown_url(url)
        said = None if version is None else a2a_v03.header(version)
        headers = self.headers if said is None else {**self.headers, "a2a-version": said}
        try:
            answer: HttpAnswer = await self.run.services.http(
                method, url, headers, body, self.timeout)
        except StepFailed as exc:  # its message quotes the URL as sent
            raise _Moved(self.scrub(str(exc).replace(url, shown)),
                         retryable=exc.retryable) from exc
        if 300 <= answer.status < 400:  # not followed: a redirect could lead anywhere
            raise self._failed(f"{method} {shown} answered {answer.status} (redirects are not "
                               "followed; configure the URL it points to)", retryable=False,
                               moved=True)
        if answer.status >= 400:
            raise self._failed(f"{method} {shown} answered {answer.status}: "
                               f"{self.scrub(answer.text[:200])}",
                               retryable=answer.status in (408, 425, 429) or answer.status >= 500,
                               moved=answer.status in _MOVED_STATUSES)
        try:
            return loads(answer.text)
        except ValueError as exc:
            raise self._failed(f"{method} {shown} sent invalid JSON: {exc}",
                               retryable=False) from exc

    def _failed(self, message: str, *, retryable: bool, moved: bool = False) -> StepFailed:
        kind = _Moved if moved else StepFailed
        return kind(f"agent '{self.agent.name}': {message}", retryable=retryable)

    def scrub(self, text: str) -> str:
        """``text`` without the agent's credentials: an answer may quote what it was sent
        (scrubbed as a provider's error text is)."""
        return scrub_values(text, (value for _name, value in self.agent.headers))


def _state(task: Mapping[str, Any]) -> str:
    """A task's state as the spec names it: "TASK_STATE_INPUT_REQUIRED" is "input-required"."""
    status = task.get("status")
    state = str(status.get("state") or "") if isinstance(status, Mapping) else ""
    return state.removeprefix("TASK_STATE_").lower().replace("_", "-")


def _parts(message: Any) -> list[Mapping[str, Any]]:
    parts = message.get("parts") if isinstance(message, Mapping) else None
    return [part for part in parts if isinstance(part, Mapping)] if isinstance(parts, list) \
        else []


def _text(parts: list[Mapping[str, Any]]) -> str:
    """Text parts as they are and data parts as JSON, a line each; files are left out."""
    lines = [str(part["text"]) if "text" in part else json.dumps(part["data"])
             for part in parts if "text" in part or "data" in part]
    return "\n".join(lines)


def _answer(parts: list[Mapping[str, Any]], output: str, agent: Agent) -> Any:
    if output == "text":
        return _text(parts)
    data = [part["data"] for part in parts if "data" in part]
    if data:
        return data[0] if len(data) == 1 else data
    text = _text(parts).strip()
    if text.startswith("```"):  # a fenced block, as models often write JSON
        text = text.removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        return loads(text)
    except ValueError as exc:
        raise StepFailed(f"agent '{agent.name}' answered no JSON ({exc}): {text[:80]!r}",
                         retryable=False) from exc


def _offers(card: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """The card's interfaces as (binding, version, url), in its order of preference: 1.0's
    ``supportedInterfaces`` (a version left out is 1.0), then a 0.3 or 0.2 card's own:
    its ``url`` (in its ``preferredTransport``, JSONRPC if it names none) and its
    ``additionalInterfaces``. A card of neither kind with a ``url`` is 0.2's from before
    0.2.5, which named no ``protocolVersion`` (and before 0.2.4 no transport: JSON-RPC
    was the only one), or, with ``authentication``, 0.1's (``V01``)."""
    found: list[tuple[str, str, str]] = []
    interfaces = card.get("supportedInterfaces")
    for interface in interfaces if isinstance(interfaces, list) else ():
        if isinstance(interface, Mapping):
            found.append((str(interface.get("protocolBinding")),
                          str(interface.get("protocolVersion") or PROTOCOL_VERSION),
                          str(interface.get("url") or "")))
    said = card.get("protocolVersion")
    if said is None and interfaces is None:
        said = V01 if "authentication" in card else a2a_v03.V02
    if isinstance(said, str) and isinstance(card.get("url"), str):
        found.append((str(card.get("preferredTransport") or "JSONRPC"), said, card["url"]))
        others = card.get("additionalInterfaces")
        for interface in others if isinstance(others, list) else ():
            if isinstance(interface, Mapping):
                found.append((str(interface.get("transport")), said,
                              str(interface.get("url") or "")))
    return found


def _version(said: str) -> str | None:
    """The version of ``VERSIONS`` an interface's ``protocolVersion`` is: any 1.x is 1.0,
    0.3.x is 0.3, 0.2.x is 0.2; None for one this gateway does not speak."""
    if said.startswith("1."):
        return PROTOCOL_VERSION
    return next((version for version in a2a_v03.LEGACY
                 if said == version or said.startswith(f"{version}.")), None)
