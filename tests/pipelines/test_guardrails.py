"""A pipeline's llm step calls a route as an app does: the route's guardrails apply."""

from __future__ import annotations

import asyncio

from ..fakes.guard_checker import GuardChecker
from ..fakes.serve import serving
from .conftest import Serve

PIPELINE = """
input: {type: object, required: [topic], properties: {topic: {type: string}}}
steps:
  answer: {kind: llm, model: careful, prompt: "About {{ input.topic }}"}
output: "{{ steps.answer }}"
"""
GUARDRAILS = """
  pii: {kind: pii, entities: [email], action: redact, on: [input]},
  no-plans: {kind: regex, patterns: ['secret plan'], action: block, on: [output]},
"""
CAREFUL = "  careful: {deployment: cheap, guardrails: [pii, no-plans]}"


async def test_an_llm_steps_prompt_is_redacted_by_its_routes_guardrail(serve: Serve) -> None:
    served = await serve({"about": PIPELINE}, extra_routes=CAREFUL, guardrails=GUARDRAILS)
    body = await served.run("about", {"topic": "jane@example.com"})
    assert body["output"] == "About [EMAIL]"  # the echo deployment says back what it got


async def test_an_llm_step_whose_answer_is_withheld_fails(serve: Serve) -> None:
    served = await serve({"about": PIPELINE}, extra_routes=CAREFUL, guardrails=GUARDRAILS)
    body = await served.run("about", {"topic": "the secret plan"})
    assert body["status"] == "failed"
    assert "guardrail 'no-plans' withheld the answer of model 'careful'" in body["error"]


async def test_a_withheld_answer_counts_in_the_executions_totals(serve: Serve) -> None:
    """The call was billed (the ledger, the key's budget), but the execution's cost and
    usage showed 0 for it: they are reconciled with the ledger."""
    served = await serve({"about": PIPELINE}, extra_routes=CAREFUL, guardrails=GUARDRAILS)
    body = await served.run("about", {"topic": "the secret plan"})
    execution = await served.get(body["execution"])
    assert execution["status"] == "failed" and execution["usage"]["model_calls"] == 1
    await served.assert_totals_are_the_ledgers(execution)
    [call] = [e["data"] for e in await served.events(body["execution"])
              if e["type"] == "model_call"]
    assert call["cost"] == execution["cost"] and "withheld" in call["failed"], call
    assert "estimated" not in call


async def test_a_call_cancelled_while_its_answer_is_checked_is_still_billed(
        serve: Serve) -> None:
    """The provider was paid once the answer came: cut off while a webhook guardrail
    checked it (the execution cancelled), the call is charged to the team's budget, not
    given back as if none had been made."""
    checker = GuardChecker()
    with serving(checker.app) as hook:
        served = await serve(
            {"about": PIPELINE}, eng="{budget: {amount: 1000000, period: day}}",
            extra_routes="  careful: {deployment: cheap, guardrails: [slow-checker]}",
            guardrails=f'slow-checker: {{kind: webhook, url: "{hook}/check", on: [output], '
                       "timeout_s: 30}")
        started = await served.start("about", {"topic": "hang on"})
        deadline = asyncio.get_running_loop().time() + 10
        while not checker.seen:  # the answer is in, and being checked
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        response = await served.http.post(f"/api/v1/executions/{started['id']}/cancel")
        assert response.status_code == 202
        await served.wait_for(started["id"], lambda e: e["status"] == "cancelled")
        budgets = (await served.http.get("/admin/budgets")).json()["data"]
        [(spent, held)] = [(b["spent"], b["held"]) for b in budgets if b["name"] == "eng"]
        assert spent > 0 and held == 0
