"""The four built-in templates run to completion offline, on the shipped gateway's echo models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aigw.runtime.app import create_app
from aigw.runtime.live import Gateway
from aigw.runtime.tokens import TokenCounter
from aigw.runtime.workflows import Workflows

from .conftest import DEV_KEY


@pytest.fixture
async def shipped(gateway_dir: Path, counter: TokenCounter) -> AsyncIterator[httpx.AsyncClient]:
    gateway = Gateway(gateway_dir, counter)
    workflows = Workflows(gateway, poll_s=0.05)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(gateway, workflows)),
        base_url="http://aigw.test", headers={"authorization": f"Bearer {DEV_KEY}"},
    ) as http:
        yield http
    await workflows.stop()
    await gateway.aclose()


async def _run(http: httpx.AsyncClient, name: str, given: dict[str, Any]) -> dict[str, Any]:
    response = await http.post(f"/v1/pipelines/{name}", json=given)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "succeeded"
    return body


async def test_research(shipped: httpx.AsyncClient) -> None:
    result = await _run(shipped, "research", {"topic": "durable execution"})
    assert result["output"]["topic"] == "durable execution"
    assert result["output"]["report"].startswith("Topic: durable execution\nFindings:\n")
    assert result["usage"]["model_calls"] == 3


async def test_coding_iterates_until_the_review_passes(shipped: httpx.AsyncClient) -> None:
    passing = await _run(shipped, "coding", {"task": "add two numbers"})
    assert passing["output"]["passed"] is True and passing["output"]["iterations"] == 1
    assert passing["output"]["code"] == "add two numbers"
    # On echo a review repeats the code, so code that starts with FAIL fails its first review.
    revised = await _run(shipped, "coding", {"task": "FAIL: add two numbers"})
    assert revised["output"]["iterations"] == 3  # review, revise, review
    assert revised["output"]["code"].startswith("Specification:\nFAIL: add two numbers\n")
    assert revised["output"]["passed"] is True


async def test_data_analysis(shipped: httpx.AsyncClient) -> None:
    result = await _run(shipped, "data_analysis", {
        "question": "Which region grew fastest?", "tables": "sales(region, month, amount)",
        "data": [{"region": "north", "amount": 3}]})
    output = result["output"]
    assert output["sql"].startswith("Question: Which region grew fastest?\nTables:")
    assert '[{"region": "north", "amount": 3}]' in output["analysis"]


async def test_document_analysis_runs_three_steps_in_parallel(
    shipped: httpx.AsyncClient,
) -> None:
    document = "Invoice from ACME Corp to Jane Doe, Paris, 1 March 2025."
    result = await _run(shipped, "document_analysis", {"document": document})
    assert result["output"] == {"classification": document, "entities": [],
                                "summary": document, "characters": len(document)}
    events = (await shipped.get(f"/api/v1/executions/{result['execution']}/events")).json()
    order = [(e["type"], e["step"]) for e in events["data"]
             if e["type"] in ("step_started", "step_succeeded")]
    started = [step for kind, step in order if kind == "step_started"]
    assert started[0] == "extract" and started[-1] == "validate"
    # classify, entities and summary all start before any of them has finished
    middle = order[order.index(("step_succeeded", "extract")) + 1:]
    assert [kind for kind, _step in middle[:3]] == ["step_started"] * 3
