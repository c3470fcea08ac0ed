"""What each kind of step does, given its context (see ``engine.Run``).

    llm        one model call; ``output: json`` parses and checks the answer, asking
               again with the validation error while it does not conform
    ensemble   the same call to every model at once, then majority_vote | average | all
    cascade    models in order until ``check`` accepts an answer (else the last answer)
    http       a tool call; a JSON response is parsed
    transform  an expression's value
    branch     the names of the steps it chooses
    map        the inline step for each item, at most ``concurrency`` at a time
    loop       planner -> action, until the planner says done or max_iterations
    approval   a person's decision, or the default at the timeout (approvals.py)
    pipeline   another pipeline's output
    python     an awaited function's result
    agent      a remote A2A agent's reply (agents.py)
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import Coroutine, Mapping
from typing import Any

import httpx

from aigw.compiler.egress import Egress, origin
from aigw.compiler.pipeline_graph import (
    AgentCall,
    Approval,
    Branch,
    Cascade,
    Ensemble,
    Http,
    Llm,
    Loop,
    MapStep,
    ModelCall,
    Python,
    Step,
    SubPipeline,
    Transform,
)

from ..chat_request import ChatRequest, Message
from ..errors import GatewayError, StoreUnavailable
from ..jsonio import loads
from ..store.executions import LeaseLost, NewEvent
from .agents import call_agent
from .approvals import wait_for_decision
from .engine import Run, StepContext, StepFailed, Suspended, jsonable, truthy

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n(?P<body>.*?)\n\s*```\s*$", re.DOTALL)


async def act(context: StepContext, step: Step) -> Any:
    """Run ``step``'s action once."""
    action = step.action
    run = context.run
    if isinstance(action, Llm):
        return await ask(context, action.call, action.call.models[0], context.key)
    if isinstance(action, Ensemble):
        return await _ensemble(context, action)
    if isinstance(action, Cascade):
        return await _cascade(context, action)
    if isinstance(action, Http):
        return await _http(context, step, action)
    if isinstance(action, Transform):
        return run.evaluate(action.expression, context.scope)
    if isinstance(action, Branch):
        for when, then in action.cases:
            if truthy(run.evaluate(when, context.scope)):
                return list(then)
        return list(action.default)
    if isinstance(action, MapStep):
        return await _map(context, action)
    if isinstance(action, Loop):
        return await _loop(context, action)
    if isinstance(action, Approval):
        return await wait_for_decision(context, step, action)
    if isinstance(action, SubPipeline):
        return await _pipeline(context, action)
    if isinstance(action, AgentCall):
        return await call_agent(context, step, action)
    assert isinstance(action, Python)
    return await _python(context, action)


async def ask(
    context: StepContext,
    call: ModelCall,
    model: str,
    key: str,
    scope: Mapping[str, Any] | None = None,
) -> Any:
    """Send ``call``'s prompt to ``model``; a json answer is parsed and checked."""
    run = context.run
    scope = context.scope if scope is None else scope
    messages = []
    if call.system is not None:
        messages.append(Message(role="system", content=run.text(call.system, scope)))
    messages.append(Message(role="user", content=run.text(call.prompt, scope)))
    problem = ""
    for turn in range(call.validation_retries + 1 if call.output == "json" else 1):
        # max_completion_tokens, as /v1/messages lowers its cap: OpenAI's reasoning models
        # refuse max_tokens, and the adapters of servers that know max_tokens only move it.
        request = ChatRequest(model=model, messages=messages,
                              max_completion_tokens=call.max_tokens,
                              temperature=call.temperature)
        try:
            text = await run.call_model(context, model, request, _turn(key, turn))
        except GatewayError as exc:  # the call's own: its answer's save raises none (Run.keep)
            raise StepFailed(f"model '{model}': {exc.message}",
                             retryable=exc.status == 429 or exc.status >= 500) from exc
        if call.output == "text":
            return text
        value, problem = _parse_json(text, call)
        if not problem:
            return value
        messages = [*messages, Message(role="assistant", content=text),
                    Message(role="user", content=f"Your answer is not valid: {problem}. "
                            "Answer again with only the JSON.")]
    raise StepFailed(f"model '{model}' gave no valid JSON answer: {problem}")


def _turn(key: str, turn: int) -> str:
    """The memo key of a call's ``turn`` (0, then one per answer asked for again)."""
    return f"{key}#{turn}"


def _parse_json(text: str, call: ModelCall) -> tuple[Any, str]:
    fenced = _FENCE.match(text)
    try:
        value = loads(fenced.group("body") if fenced else text)
    except ValueError as exc:
        return None, f"it is not JSON ({exc})"
    if call.schema is not None:
        problems = call.schema.errors(value)
        if problems:
            return None, "it does not match the schema: " + "; ".join(problems)
    return value, ""


async def _ensemble(context: StepContext, action: Ensemble) -> Any:
    call = action.call
    answers = await _all(context.run, [
        ask(context, call, model, f"{context.key}/{index}")
        for index, model in enumerate(call.models)
    ])
    if action.combine == "all":
        return [{"model": model, "answer": answer}
                for model, answer in zip(call.models, answers, strict=True)]
    if action.combine == "average":
        numbers = [_number(answer, model) for model, answer in
                   zip(call.models, answers, strict=True)]
        return sum(numbers) / len(numbers)
    votes = Counter(_ballot(answer) for answer in answers)
    best = max(votes.values())
    for answer in answers:  # ties go to the model listed first
        if votes[_ballot(answer)] == best:
            return answer
    raise AssertionError("unreachable: the ensemble has answers")


def _ballot(answer: Any) -> str:
    if isinstance(answer, str):
        return " ".join(answer.split()).casefold().rstrip(".")
    return json.dumps(answer, sort_keys=True)


def _number(answer: Any, model: str) -> float:
    if isinstance(answer, bool):
        raise StepFailed(f"model '{model}' answered {answer!r}, not a number")
    if isinstance(answer, int | float):
        return float(answer)
    try:
        return float(str(answer).strip())
    except ValueError:
        raise StepFailed(f"model '{model}' answered {str(answer)[:80]!r}, not a number") from None


async def _cascade(context: StepContext, action: Cascade) -> Any:
    run = context.run
    answer: Any = None
    for tier, model in enumerate(action.call.models):
        answer = await ask(context, action.call, model, f"{context.key}/{tier}")
        passed = truthy(run.evaluate(action.check, context.with_scope(answer=answer)))
        await run.emit(NewEvent("cascade_check", context.path,
                                {"model": model, "tier": tier, "passed": passed}))
        if passed:
            return answer
    return answer


async def _http(context: StepContext, step: Step, action: Http) -> Any:
    run = context.run
    url = run.text(action.url, context.scope)
    refusal = _refusal(action.egress, url)
    if refusal is not None:  # a caller's input steered the URL somewhere it may not go
        raise StepFailed(f"{action.method} refused: {refusal}", retryable=False)
    headers = {name: run.text(value, context.scope) for name, value in action.headers}
    body = run.render(action.body, context.scope) if action.body is not None else None
    answer = await run.services.http(action.method, url, headers, jsonable(body), step.timeout_s)
    if 300 <= answer.status < 400:  # not followed: a redirect could lead anywhere
        raise StepFailed(f"{action.method} {url} answered {answer.status} (redirects are not "
                         "followed; point the step at the final URL)", retryable=False)
    if answer.status >= 400:
        raise StepFailed(f"{action.method} {url} answered {answer.status}: {answer.text[:200]}",
                         retryable=answer.status in (408, 425, 429) or answer.status >= 500)
    if "json" in answer.content_type:
        try:
            return loads(answer.text)
        except ValueError as exc:
            raise StepFailed(f"{action.method} {url} sent invalid JSON: {exc}") from exc
    return answer.text


def _refusal(egress: Egress, url: str) -> str | None:
    """Why ``url`` may not be called (None: it may), parsed as httpx will send it."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        return f"'{url}' is not a URL ({exc})"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return f"'{url}' is not an http(s) URL with a host"
    if parsed.userinfo:
        return f"'{url}' carries user info before its host"
    if origin(parsed.scheme, parsed.host, parsed.port) in egress.origins:
        return None
    if egress.written_out:
        return f"'{url}' leaves {next(iter(egress.origins))}, the origin the step's URL names"
    return f"'{url}' is not on an origin the step's allow_hosts lists"


async def _map(context: StepContext, action: MapStep) -> list[Any]:
    run = context.run
    items = run.evaluate(action.over, context.scope)
    if isinstance(items, Mapping | str) or not hasattr(items, "__iter__"):
        raise StepFailed(f"map over {action.over.source!r} needs a list, got "
                         f"{type(items).__name__}", retryable=False)
    items = list(items)
    if len(items) > action.max_items:
        raise StepFailed(f"map over {len(items):,} items; this step runs at most "
                         f"{action.max_items:,} (max_items)", retryable=False)
    results: list[Any] = [None] * len(items)
    queue = iter(enumerate(items))

    async def worker() -> None:
        # ``concurrency`` workers take the items in turn: one task each, not one an item.
        for index, item in queue:
            if await run.control() == "pause":  # the items in flight finish; no new one
                raise Suspended()
            scope = context.with_scope(item=item, index=index)
            results[index] = await run.run_inline(
                _with(context, scope), action.step, f"{context.key}/{index}"
            )

    await _all(run, [worker() for _ in range(min(action.concurrency, len(items)))])
    return results


async def _loop(context: StepContext, action: Loop) -> dict[str, Any]:
    run = context.run
    history: list[dict[str, Any]] = []
    outputs: dict[str, Any] = dict.fromkeys(action.actions)
    last: Any = None
    last_action: str | None = None
    done = False
    for iteration in range(action.max_iterations):
        key = f"{context.key}/{iteration}"
        scope = context.with_scope(history=list(history), iteration=iteration, last=last,
                                   last_action=last_action, outputs=dict(outputs))
        chosen = await _plan(context, action, scope, key)
        if chosen == "done":
            done = True
            break
        output = await run.run_inline(_with(context, scope), action.actions[chosen],
                                      f"{key}/{chosen}")
        history.append({"action": chosen, "output": output})
        outputs[chosen], last, last_action = output, output, chosen
    return {"done": done, "iterations": len(history), "history": history, "outputs": outputs,
            "last": last}


async def _plan(context: StepContext, action: Loop, scope: Mapping[str, Any], key: str) -> str:
    run = context.run
    names = [*action.actions, "done"]
    kept = False
    if isinstance(action.planner, ModelCall):
        model = action.planner.models[0]
        # A resumed run reads the answer it kept, given on the graph of its time.
        kept = _turn(f"{key}/plan", 0) in run.memos
        text = str(await ask(context, action.planner, model, f"{key}/plan", scope))
        chosen = _named(text, names)
    else:
        chosen = str(run.evaluate(action.planner, scope)).strip()
    if chosen not in names:
        # Retryable for a model: a new try of the loop asks again, on the graph serving.
        if kept:  # not the model's mistake, most likely: say so
            raise StepFailed(f"iteration {scope['iteration']}: the planner chose "
                             f"{chosen[:80]!r} before the run resumed, which is none of the "
                             f"actions now: {', '.join(names)} (a reload may have removed "
                             "or renamed it)")
        raise StepFailed(f"the planner chose {chosen[:80]!r}, which is none of: "
                         f"{', '.join(names)}", retryable=isinstance(action.planner, ModelCall))
    return chosen


def _named(text: str, names: list[str]) -> str:
    """The action a model's answer names: the whole answer, or the one name among its
    words. An answer naming several ("not done yet: search") names none, and is asked
    again, rather than read as its first match."""
    lowered = {name.lower(): name for name in names}
    strip = ".,:;!?'\"`*()[]"
    whole = text.strip().strip(strip).lower()
    if whole in lowered:
        return lowered[whole]
    named = {lowered[word] for word in (part.strip(strip).lower() for part in text.split())
             if word in lowered}
    return named.pop() if len(named) == 1 else text.strip()


async def _pipeline(context: StepContext, action: SubPipeline) -> Any:
    run = context.run
    pipeline = run.pipelines.get(action.pipeline)
    if pipeline is None:
        raise StepFailed(f"pipeline '{action.pipeline}' is no longer defined", retryable=False)
    # Run by name, it is checked on Pipeline::"name"; run by another, it is too.
    await run.caller.check_pipeline(action.pipeline)
    given = jsonable(run.render(action.input, context.scope))
    problems = await asyncio.to_thread(pipeline.input_schema.errors, given)  # as a run's
    if problems:
        raise StepFailed(f"input for pipeline '{action.pipeline}' does not match its schema: "
                         + "; ".join(problems), retryable=False)
    return await run.run_pipeline(pipeline, f"{context.path}/", given)


async def _python(context: StepContext, action: Python) -> Any:
    run = context.run
    args = {name: jsonable(run.render(value, context.scope)) for name, value in action.args}
    # The boundary to the user's own code: whatever it raises fails this try of the step.
    try:
        return await action.function(**args)
    except (StepFailed, asyncio.CancelledError):
        raise
    except Exception as exc:
        raise StepFailed(f"{action.function_name} raised {type(exc).__name__}: {exc}") from exc


async def _all(run: Run, awaitables: list[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Every result in order; the first failure cancels the others and is raised as is.
    One that gives way to a pause (``Suspended``) lets the others finish, or give way
    too, before it is raised: cancelled, their work in flight was lost."""
    tasks = [asyncio.ensure_future(item) for item in awaitables]
    try:
        pending = set(tasks)
        while pending:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None \
                        and not isinstance(task.exception(), Suspended):
                    raise task.exception()  # type: ignore[misc]
        for task in tasks:
            if isinstance(task.exception(), Suspended):
                raise Suspended()
        return [task.result() for task in tasks]
    except (LeaseLost, StoreUnavailable):  # the others are cut off, not given up
        run.stopping = True
        raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _with(context: StepContext, scope: Mapping[str, Any]) -> StepContext:
    return StepContext(context.run, context.pipeline, context.path, context.key, scope)
