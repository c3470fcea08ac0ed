"""A pipeline's llm step calls a route as an app does: the route's guardrails apply."""

from __future__ import annotations

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
