"""A pipeline's model steps pick their deployment as the request that started the
execution would have had it picked: Cedar's route policies asked with its tags."""

from __future__ import annotations

from pathlib import Path

from .conftest import Serve

PICK = """
input: {type: object}
steps:
  answer: {kind: llm, model: pair, prompt: "which one"}
output: "{{ steps.answer }}"
"""
# A request tagged 'eu' is not served by 'cheap' (say, hosted outside the EU).
EU_OFF_CHEAP = (
    '@id("everything")\npermit (principal, action, resource);\n'
    '@id("eu-stays-off-cheap")\nforbid (principal, action == Action::"route", '
    'resource == Deployment::"cheap") when { context.tags.contains("eu") };\n'
)
EU = {"x-aigw-tags": "eu"}


async def test_a_step_is_routed_with_the_tags_its_execution_was_started_with(
    serve: Serve, tmp_path: Path
) -> None:
    """The run's invoke checks were asked with the starting request's tags, but its
    model calls were routed as requests with none: a policy keeping tagged requests off
    a deployment held for a chat and not for the same request's pipeline."""
    root = tmp_path / "policed"
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "gateway.cedar").write_text(EU_OFF_CHEAP)
    served = await serve({"pick": PICK}, root=root, extra_routes="  pair: {group: pair}",
                         groups="  pair: {strategy: priority, members: [cheap, strong]}")
    chat = await served.http.post("/v1/chat/completions", headers=EU, json={
        "model": "pair", "messages": [{"role": "user", "content": "which one"}]})
    assert chat.status_code == 200 and chat.headers["x-aigw-deployment"] == "strong"

    for headers in ({}, EU):
        started = await served.http.post("/api/v1/executions", headers=headers,
                                         json={"pipeline": "pick", "input": {}})
        assert started.status_code == 201, started.text
        done = await served.wait_for(started.json()["id"],
                                     lambda e: e["status"] in ("failed", "succeeded"))
        assert done["status"] == "succeeded", done
    spend = await served.http.get("/admin/spend?group_by=deployment")
    assert spend.status_code == 200, spend.text
    served_by = {row["deployment"]: row["requests"] for row in spend.json()["data"]}
    # The untagged run's step by 'cheap'; the chat and the tagged run's step by 'strong'.
    assert served_by == {"cheap": 1, "strong": 2}
