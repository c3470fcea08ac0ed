"""The stages of a call that is no chat (/v1/embeddings, /v1/rerank, /v1/images/generations,
/v1/moderations, /v1/audio/*) through a route.

    record -> route allowed -> Cedar invoke -> serves it? -> limits and budget held ->
    input guardrails -> attempt loop (members, retries, fallbacks, circuits, hedges) ->
    billed -> output guardrails -> settled

The chat's own pieces (``call_upstream``, ``run_attempts``, ``bill_answer``), run in the
chat's order, so an embeddings call and a rerank call are counted, routed, billed, logged
and traced alike; each endpoint brings only what differs: its ``Ask`` (which members fit)
and the call made to a member's adapter. Guardrails see the texts an endpoint names:
its ``texts`` going out (an embeddings call's inputs, a rerank call's query and
documents, an image's prompt, a speech's input and instructions, a transcription's
prompts), which the call is then made with, as the guardrails left them; and what
``checked`` walks of its answer (a transcript, an image's revised_prompt). A route
without guardrails does none of this.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from aigw.compiler.graph import ApiKey, Deployment, Route
from aigw.compiler.guardrail_graph import Guardrail

from .admission import DeploymentQuotas, Hold, check_route_allowed
from .chat import (
    A,
    bill_answer,
    bill_loser,
    call_upstream,
    deadline_s,
    overhead_header,
    run_attempts,
)
from .errors import BadRequest, GuardrailBlocked, OutputWithheld
from .guardrails import Check, Withheld, guard_texts
from .incoming import unless_gone
from .policy_request import authorize_route
from .providers.base import Usage
from .routing.attempts import AttemptLoop, Won
from .routing.candidates import Ask, Candidate, kind_name
from .telemetry.tracing import Span

if TYPE_CHECKING:
    from .exchange import Exchange


@dataclass(frozen=True, slots=True)
class Weighed:
    """What a call's texts, as they are sent, weigh: their prompt tokens, the ``Ask`` that
    picks the members whose window takes them, and what the call is billed cut short
    (``None``: its prompt tokens)."""

    prompt_tokens: int
    ask: Ask
    cut: Usage | None = None


async def call_route(
    exchange: Exchange, key: ApiKey, route: Route, *, kind: str, model: str,
    prompt_tokens: int, ask: Ask, cost: Callable[[Deployment, Weighed], float],
    call: Callable[[Candidate, tuple[str, ...], int], Callable[[], Awaitable[A]]],
    noted: Callable[[Span, A], None],
    check: Callable[[list[Deployment]], None] | None = None, timeout_s: float | None = None,
    operation: str | None = None,
    cut: Usage | None = None,
    release: Callable[[A], None] | None = None,
    texts: tuple[str, ...] = (),
    weigh: Callable[[tuple[str, ...]], Weighed] | None = None,
    checked: Callable[[A, Check], Awaitable[A]] | None = None,
    holds: dict[str, Hold | None] | None = None,
) -> Won[A]:
    """``call`` made through ``route`` for ``key`` (identified on ``exchange``): the route
    allowed to it, its policies asked, a route with no member of ``kind`` refused (400,
    then ``check`` asked of the members that are), its limits held for ``prompt_tokens``
    and the dearest member's ``cost``, the call billed and settled (``exchange.close``);
    a call cut short is billed ``cut`` (what a member bills a call whatever it answers:
    a rerank call's search units, a transcription's audio), else ``prompt_tokens``.
    Waits at most ``timeout_s`` where given (a semantic cache's embedding), else the
    route's deadline. Its spans are GenAI's ``operation`` (default: ``kind``). ``release``
    lets go of an answer still being read (speech's open audio) that is not passed on: a
    hedge's loser's, or the winner's when billing fails. ``holds`` given: the answer is a
    stream, which the caller bills and settles as it ends (runtime/media_stream.py),
    with the winner's deployment's own tpm hold, kept there by deployment name.

    The route's input guardrails check ``texts`` once its limits are held (a caller over
    them never reaches a checker), and ``call`` gets them as they left them, with their
    prompt tokens: ``prompt_tokens`` as given, or, where a guardrail redacted them, what
    ``weigh`` makes of what is sent (as a chat's redacted prompt is counted again): its
    tokens, the members whose window takes it (``ask``), its bill cut short, and, where it
    weighs more than what came (``cost`` of it dearer), a hold grown to it. A block is
    ``GuardrailBlocked``, and no call goes out. Its output guardrails check the answer's
    texts through ``checked``; a block there is ``OutputWithheld`` (the call is billed)."""
    live, headers, record = exchange.live, exchange.headers, exchange.record
    operation = operation or kind
    record.route, record.model, record.prompt_tokens = route.name, model, prompt_tokens
    live.telemetry.started(record)
    record.span, record.trace_context = live.telemetry.tracing.request(
        f"{operation} {model}", headers)
    check_route_allowed(key, route)
    gate = await authorize_route(live, key, exchange.user, route, headers, prompt_tokens)
    members = [d for d in route.candidates if d.kind == kind]
    if not members:
        raise BadRequest(f"'{route.name}' is {kind_name(route.candidates[0])}; it does not "
                         f"serve {kind}.", param="model")
    if check is not None:
        check(members)
    weighed = Weighed(prompt_tokens, ask, cut)
    held = max(cost(member, weighed) for member in members)
    await exchange.admit(key, prompt_tokens, held)
    guards = route.guardrails
    if guards is not None and guards.input and texts:
        try:
            sent = await guard_texts(guards.input, texts, "input", record, live.guard)
        except Withheld as exc:
            raise GuardrailBlocked(exc.guardrail) from None
        if sent is not texts and weigh is not None:
            # What goes out is what must fit a member's window, what the deployments' tpm
            # holds, and what a member that reports no usage (or a call cut short) is
            # billed. The key's hold, taken before the checkers (as a chat's), is grown
            # where what goes out weighs more (a redaction longer than what it took out):
            # never less than the upstream bills.
            weighed = weigh(sent)
            dearer = max(cost(member, weighed) for member in members)
            await exchange.grow(weighed.prompt_tokens - prompt_tokens, dearer - held)
            prompt_tokens = record.prompt_tokens = weighed.prompt_tokens
            ask, cut = weighed.ask, weighed.cut
        texts = sent

    quotas = DeploymentQuotas(live.store, record)

    async def attempt(candidate: Candidate) -> A:
        return await call_upstream(live, record, quotas, candidate, prompt_tokens, prompt_tokens,
                                   call(candidate, texts, prompt_tokens), operation, noted, cut,
                                   holds)

    budget_s = deadline_s(route, headers)  # as a chat's
    deadline = live.routing.clock() + (budget_s if timeout_s is None else min(budget_s, timeout_s))

    async def discard(lost: Won[A]) -> None:
        if release is not None:
            release(lost.value)
        await bill_loser(record, lost)
        if holds is not None:  # a stream's loser: its quota settled as it was billed
            await quotas.settle(holds.pop(lost.candidate.deployment.name, None),
                                lost.value.usage.total_tokens)

    loop = AttemptLoop(live.graph, live.routing, route, ask, deadline, attempt, discard,
                       gate=gate, finish=live.store.finish)
    # A client that leaves stops the call (a 499, the call billed as cut short), as a
    # chat's does: it ran on to its end, billed and logged as a 200 no one received.
    won = await unless_gone(run_attempts(live, route, loop, record), exchange.gone)
    # The request span's gen_ai.response.model, as a chat's: the model of the deployment
    # that answered (its attempt's span has the one the answer names, where it names one).
    record.response_model = won.candidate.deployment.model
    if holds is not None:
        return won
    try:
        bill_answer(live, record, won)
        if guards is not None and guards.output and checked is not None:
            won = await _guarded_answer(exchange, guards.output, won, checked)
        await exchange.close()
    except BaseException:
        if release is not None:
            release(won.value)
        raise
    return won


async def _guarded_answer(exchange: Exchange, guardrails: tuple[Guardrail, ...], won: Won[A],
                          checked: Callable[[A, Check], Awaitable[A]]) -> Won[A]:
    """``won`` with its answer's texts through the output guardrails. A block is
    ``OutputWithheld``, written down as the request's status before it is settled: the
    call was made, and is billed."""
    record = exchange.record
    try:
        value = await checked(won.value, Check(guardrails, "output", record,
                                               exchange.live.guard))
    except Withheld as exc:
        error = OutputWithheld(exc.guardrail)
        record.status, record.error = error.status, str(error.code)
        await exchange.close()
        raise error from None
    return won if value is won.value else replace(won, value=value)


def answer_headers(exchange: Exchange, route: Route, won: Won[A]) -> dict[str, str]:
    """Who served the call, the key's rate limits, and the gateway's overhead (so, taken
    last): a chat answer's headers (``Exchange.answer_headers``), but for the cache's."""
    return {"x-aigw-route": route.name, "x-aigw-deployment": won.candidate.deployment.name,
            "x-aigw-attempts": str(won.attempts), "x-request-id": exchange.record.request_id,
            **exchange.rate_headers(), **overhead_header(exchange.record)}
