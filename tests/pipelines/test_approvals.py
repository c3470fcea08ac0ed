"""Approvals and who decides them: named approvers, inside a map, side by side, across a
reload and a restart, once only; and the end user a run is for. On both stores."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from aigw.runtime.store.executions import Checkpoint, StepState, StepStatus

from .conftest import ALICE_KEY, BOT_KEY, DEV_KEY, Serve, Served, approval_pipeline

BOT = {"authorization": f"Bearer {BOT_KEY}"}
ALICE = {"authorization": f"Bearer {ALICE_KEY}"}

EACH = """
input: {type: object}
steps:
  each:
    kind: map
    over: "['a', 'b']"
    concurrency: 1
    step: {kind: approval, message: "ship {{ item }}?", timeout_s: 60,
           approvers: {keys: [alice]}}
output: "{{ steps.each }}"
"""

SIDE_BY_SIDE = """
input: {type: object}
steps:
  legal: {kind: approval, message: "legal?", timeout_s: 60, approvers: {teams: [eng]}}
  own: {kind: approval, message: "own?", timeout_s: 60}
output: {legal: "{{ steps.legal.approved }}", own: "{{ steps.own.approved }}"}
"""

ONE = """
input: {type: object}
steps:
  legal: {kind: approval, message: "legal?", timeout_s: 60, approvers: {keys: [alice]}}
output: "{{ steps.legal.approved }}"
"""


async def _start(served: Served, pipeline: str, headers: dict[str, str] = BOT,
                 **extra: Any) -> str:
    started = await served.http.post("/api/v1/executions", headers=headers,
                                     json={"pipeline": pipeline, "input": {}} | extra)
    assert started.status_code == 201, started.text
    execution_id: str = started.json()["id"]
    return execution_id


async def _waiting(served: Served) -> tuple[str, str]:
    """The bot key starts 'publish'; its execution id and approvals URL, once it waits."""
    execution_id = await _start(served, "publish", input={"text": "hello"})
    await served.wait_for(execution_id, lambda e: e["status"] == "waiting")
    return execution_id, f"/api/v1/executions/{execution_id}/approvals"


async def _inbox(served: Served, headers: dict[str, str]) -> list[tuple[str, str]]:
    answer = await served.http.get("/api/v1/approvals", headers=headers)
    assert answer.status_code == 200, answer.text
    return [(item["step"], item["message"]) for item in answer.json()["data"]]


async def _eventually(what: str, check: Any) -> Any:
    for _ in range(200):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.02)
    pytest.fail(f"gave up waiting for {what}")


async def test_an_approval_in_a_map_is_done_once_decided(
    serve: Serve, store_options: dict[str, Any]
) -> None:
    served = await serve({"each": EACH}, **store_options)
    execution_id = await _start(served, "each")
    url = f"/api/v1/executions/{execution_id}/approvals"
    assert await _eventually("the first item's approval",
                             lambda: _inbox(served, ALICE)) == [("each@1/0", "ship a?")]
    first = await served.http.post(url, headers=ALICE, json={"decision": "approve"})
    assert first.status_code == 200, first.text

    async def second_waits() -> bool:
        return await _inbox(served, ALICE) == [("each@1/1", "ship b?")]

    await _eventually("the second item alone in the inbox", second_waits)
    again = await served.http.post(url, headers=ALICE,
                                   json={"decision": "reject", "step": "each@1/0"})
    assert again.status_code == 409  # decided, and no longer waiting
    last = await served.http.post(url, headers=ALICE, json={"decision": "reject"})
    assert last.status_code == 200 and last.json()["step"] == "each@1/1"
    done = await served.wait_for(execution_id, lambda e: e["status"] == "succeeded")
    assert [item["approved"] for item in done["output"]] == [True, False]
    assert await _inbox(served, ALICE) == []
    assert all(state["status"] != "waiting" for state in (await served.steps(execution_id))
               .values())


async def _both_waiting(served: Served) -> str:
    """An execution of SIDE_BY_SIDE, once both of its approvals wait."""
    execution_id = await _start(served, "both")

    async def both_wait() -> bool:
        steps = await served.steps(execution_id)
        return all(steps.get(name, {}).get("status") == "waiting" for name in ("legal", "own"))

    await _eventually("both approvals", both_wait)
    return execution_id


async def test_approvals_side_by_side_each_reach_their_deciders(
    serve: Serve, store_options: dict[str, Any]
) -> None:
    served = await serve({"both": SIDE_BY_SIDE}, **store_options)
    execution_id = await _both_waiting(served)
    url = f"/api/v1/executions/{execution_id}/approvals"
    # The starter may decide only its own (no approvers); with no step named, that one.
    own = await served.http.post(url, headers=BOT, json={"decision": "approve"})
    assert own.status_code == 200 and own.json()["step"] == "own"
    refused = await served.http.post(url, headers=BOT,
                                     json={"decision": "approve", "step": "legal"})
    assert refused.status_code == 403
    assert "team 'eng'" in refused.json()["error"]["message"]

    async def own_done() -> bool:
        return (await served.steps(execution_id))["own"]["status"] == "succeeded"

    await _eventually("the decided approval to move on", own_done)
    # The execution runs again (one approval decided), the other still waits: it is
    # still in its deciders' inbox and on the admin page.
    assert await _inbox(served, ALICE) == [("legal", "legal?")]
    page = await served.http.get("/admin", auth=("admin", DEV_KEY))
    assert page.status_code == 200 and "legal?" in page.text and "team eng" in page.text
    twice = [served.http.post(url, headers=headers, json={"decision": verdict,
                                                          "step": "legal"})
             for headers, verdict in ((ALICE, "approve"), ({}, "reject"))]  # {}: the admin
    statuses = sorted(answer.status_code for answer in await asyncio.gather(*twice))
    assert statuses == [200, 409]  # one decision counts, and the other decider is told


async def test_who_decides_is_fixed_when_the_wait_begins(serve: Serve) -> None:
    served = await serve({"one": ONE})
    execution_id = await _start(served, "one")
    await served.wait_for(execution_id, lambda e: e["status"] == "waiting")
    (served.root / "pipelines" / "one.yaml").write_text(
        ONE.replace("keys: [alice]", "keys: [bot]"))
    assert (await served.gateway.reload("test")).ok
    await served.workflows.stop()  # and a new runner picks the execution up
    second = served.with_new_runner()
    try:
        await second.http.get(f"/api/v1/executions/{execution_id}", headers=BOT)

        async def resumed() -> bool:
            events = (await second.http.get(f"/api/v1/executions/{execution_id}/events",
                                            headers=BOT)).json()["data"]
            return [e["type"] for e in events].count("step_waiting") == 2

        await _eventually("the approval to wait again under the new runner", resumed)
        assert await _inbox(second, ALICE) == [("legal", "legal?")]
        assert await _inbox(second, BOT) == []
    finally:
        await second.aclose()


async def test_a_key_named_as_an_approver_can_still_be_revoked(serve: Serve) -> None:
    served = await serve({"one": ONE})
    config = served.root / "gateway.yaml"
    config.write_text("\n".join(line for line in config.read_text().splitlines()
                                if not line.strip().startswith("alice:")) + "\n")
    report = await served.gateway.reload("test")
    assert report.ok, report
    assert any(d["code"] == "AGW326" for d in report.diagnostics)  # a warning
    assert (await served.http.get("/api/v1/approvals", headers=ALICE)).status_code == 401


SHORT = """
input: {type: object}
steps:
  answer: {kind: llm, model: fast, prompt: "About {{ input.topic }}", max_tokens: 5}
output: "{{ steps.answer }}"
"""


async def test_a_run_is_for_the_user_the_body_or_the_header_names(serve: Serve) -> None:
    served = await serve({"about": SHORT})
    cases = [({"user": "用户"}, {}, "用户"),  # any text, though a header could not carry it
             ({"user": ""}, {"x-aigw-user": "from-header"}, "from-header"),
             ({}, {}, None)]
    for extra, headers, expected in cases:
        started = await served.http.post("/api/v1/executions", headers={**ALICE, **headers},
                                         json={"pipeline": "about",
                                               "input": {"topic": "cats"}, **extra})
        assert started.status_code == 201, started.text
        done = await served.wait_for(started.json()["id"],
                                     lambda e: e["status"] in ("succeeded", "failed"))
        assert (done["status"], done["user"]) == ("succeeded", expected), done
    spend = (await served.http.get("/admin/spend?group_by=user")).json()["data"]
    assert {row["user"] for row in spend} == {"用户", "from-header", None}


@pytest.mark.parametrize("approvers", ["{keys: [alice]}", "{teams: [eng]}"])
async def test_only_the_named_approvers_decide_not_the_key_that_started_it(
    serve: Serve, approvers: str
) -> None:
    served = await serve({"publish": approval_pipeline(approvers=approvers)})
    started, url = await _waiting(served)

    own = await served.http.post(url, headers=BOT, json={"decision": "approve"})
    assert own.status_code == 403, own.text
    assert "may not decide step 'sign_off'" in own.json()["error"]["message"]
    assert (await served.http.get("/api/v1/approvals", headers=BOT)).json()["data"] == []

    inbox = (await served.http.get("/api/v1/approvals", headers=ALICE)).json()["data"]
    assert [(item["execution"], item["step"], item["started_by"], item["message"])
            for item in inbox] == [(started, "sign_off", "bot", "Publish 'hello'?")]
    # An approver decides; it sees nothing else of an execution it did not start.
    hidden = await served.http.get(f"/api/v1/executions/{started}", headers=ALICE)
    assert hidden.status_code == 404
    decided = await served.http.post(url, headers=ALICE, json={"decision": "approve"})
    assert decided.status_code == 200, decided.text
    assert decided.json()["by"] == "alice"
    done = await served.wait_for(started, lambda e: e["status"] == "succeeded")
    assert done["output"]["decision"]["by"] == "alice"
    assert done["output"]["published"] == "published: hello"
    assert (await served.http.get("/api/v1/approvals", headers=ALICE)).json()["data"] == []


async def test_without_approvers_only_the_key_that_started_it_decides(serve: Serve) -> None:
    served = await serve({"publish": approval_pipeline()})
    started, url = await _waiting(served)
    assert (await served.http.post(url, headers=ALICE,
                                   json={"decision": "approve"})).status_code == 404
    assert (await served.http.get("/api/v1/approvals", headers=ALICE)).json()["data"] == []
    inbox = (await served.http.get("/api/v1/approvals", headers=BOT)).json()["data"]
    assert [item["step"] for item in inbox] == ["sign_off"]
    admins = (await served.http.get("/api/v1/approvals")).json()["data"]  # the dev key
    assert [item["execution"] for item in admins] == [started]
    assert (await served.http.post(url, headers=BOT,
                                   json={"decision": "reject"})).status_code == 200


async def test_a_pipeline_holds_the_budget_of_the_end_user_it_runs_for(serve: Serve) -> None:
    # Each end user of team eng may spend 30 a day; a model call here costs about 10
    # (1 a token). The user is named by the header, the body's user, or a chat's user.
    served = await serve({"about": SHORT}, extra_routes="  about: {pipeline: about}",
                         eng="{per_user: {budget: {amount: 30, period: day}}}")
    alice = {"authorization": f"Bearer {ALICE_KEY}"}

    async def run_for(user: str, how: str) -> int:
        if how == "header":
            answer = await served.http.post("/v1/pipelines/about", json={"topic": "cats"},
                                            headers={**alice, "x-aigw-user": user})
            return answer.status_code
        if how == "chat":
            answer = await served.http.post("/v1/chat/completions", headers=alice, json={
                "model": "about", "user": user,
                "messages": [{"role": "user", "content": '{"topic": "cats"}'}]})
            return answer.status_code
        started = await served.http.post("/api/v1/executions", headers=alice, json={
            "pipeline": "about", "input": {"topic": "cats"}, "user": user})
        assert started.status_code == 201, started.text
        assert started.json()["user"] == user
        final = await served.wait_for(started.json()["id"],
                                      lambda e: e["status"] in ("succeeded", "failed"))
        return 200 if final["status"] == "succeeded" else 502

    outcomes = [await run_for("u1", how) for how in ("header", "body", "chat", "header")]
    assert outcomes == [200, 200, 502, 502]  # 2 calls spent ~20; a third would pass 30
    assert await run_for("u2", "body") == 200  # another user's budget is its own
    spend = (await served.http.get("/admin/spend?group_by=user")).json()["data"]
    by_user = {row["user"]: row for row in spend}
    assert set(by_user) == {"u1", "u2"}, spend
    assert 20 <= by_user["u1"]["cost"] <= 30


THEN = """
input: {type: object}
steps:
  own: {kind: approval, message: "own?", timeout_s: 60}
  legal: {kind: approval, message: "legal?", timeout_s: 60, needs: [own],
          approvers: {keys: [alice]}}
output: "{{ steps.legal.approved }}"
"""


async def test_a_step_not_yet_waiting_cannot_be_decided_past_its_approvers(
    serve: Serve, store_options: dict[str, Any]
) -> None:
    """The starter named 'legal' (alice's to decide) while only 'own' waited, and sent
    the body once 'legal' waited: what was waiting had been read before the body, the
    approvers' check was skipped for a step not waiting, and the decision stood."""
    served = await serve({"then": THEN}, **store_options)
    execution_id = await _start(served, "then")
    url = f"/api/v1/executions/{execution_id}/approvals"

    async def legal_waits() -> bool:
        return (await served.steps(execution_id)).get("legal", {}).get("status") == "waiting"

    async def body_once_legal_waits() -> Any:
        own = await served.http.post(url, headers=BOT, json={"decision": "approve"})
        assert own.status_code == 200 and own.json()["step"] == "own", own.text
        await _eventually("'legal' to wait", legal_waits)
        yield b'{"decision": "approve", "step": "legal"}'

    await _eventually("'own' to wait", lambda: _inbox(served, BOT))
    sneaked = await served.http.post(url, headers={**BOT, "content-type": "application/json"},
                                     content=body_once_legal_waits())
    assert sneaked.status_code == 403, sneaked.text
    assert (await served.steps(execution_id))["legal"]["status"] == "waiting"
    early = await served.http.post(f"/api/v1/executions/{await _start(served, 'then')}"
                                   "/approvals", headers=ALICE,
                                   json={"decision": "approve", "step": "legal"})
    assert early.status_code in (404, 409), early.text  # alice sees nothing before it waits


QUICK = """
input: {type: object}
steps:
  sum: {kind: transform, expression: "1 + 2"}
output: "{{ steps.sum }}"
"""


async def test_approvals_waiting_for_a_decision_leave_room_for_new_executions(
    serve: Serve, store_options: dict[str, Any]
) -> None:
    """Each waiting approval held one of the runner's 256 slots for up to its timeout
    (a day by default): 256 of them and every new execution stayed queued."""
    served = await serve({"one": ONE, "quick": QUICK},
                         settings="  execution_capacity: 2", **store_options)
    waiting = [await _start(served, "one") for _ in range(3)]  # more than the capacity
    for execution_id in waiting:
        await served.wait_for(execution_id, lambda e: e["status"] == "waiting")
    answer = await served.http.post("/v1/pipelines/quick?wait_s=5", json={})
    assert answer.status_code == 200 and answer.json()["output"] == 3, answer.text


SLOW = """
input: {type: object}
steps:
  answer: {kind: llm, model: fast, prompt: "one two three four five"}
output: "{{ steps.answer }}"
"""


async def test_executions_past_the_capacity_wait_queued(serve: Serve) -> None:
    served = await serve({"slow": SLOW}, settings="  execution_capacity: 1",
                         latency=", latency: {per_token_ms: 100}")
    first = await _start(served, "slow")
    await served.wait_for(first, lambda e: e["status"] == "running")
    second = await _start(served, "slow")
    await asyncio.sleep(0.2)  # a few of the runner's rounds (poll_s is 0.05)
    assert (await served.get(second))["status"] == "queued"
    await served.wait_for(first, lambda e: e["status"] == "succeeded")
    await served.wait_for(second, lambda e: e["status"] == "succeeded")


LEGAL_THEN_SLOW = """
input: {type: object}
steps:
  legal: {kind: approval, message: "legal?", timeout_s: 60}
  answer: {kind: llm, model: fast, needs: [legal], prompt: "one two three four five"}
output: "{{ steps.answer }}"
"""


async def test_an_execution_decided_while_the_capacity_is_taken_waits_for_room(
    serve: Serve, store_options: dict[str, Any]
) -> None:
    """Its slot given up while its approval waited (and taken by another execution), an
    execution went on as soon as it was decided: two ran at once under a capacity of 1."""
    served = await serve({"legal": LEGAL_THEN_SLOW, "slow": SLOW},
                         settings="  execution_capacity: 1",
                         latency=", latency: {per_token_ms: 100}", **store_options)
    decided = await _start(served, "legal")
    await served.wait_for(decided, lambda e: e["status"] == "waiting")
    other = await _start(served, "slow")
    await served.wait_for(other, lambda e: e["status"] == "running")
    answer = await served.http.post(f"/api/v1/executions/{decided}/approvals", headers=BOT,
                                    json={"decision": "approve"})
    assert answer.status_code == 200, answer.text
    first = await served.wait_for(other, lambda e: e["status"] == "succeeded")
    await served.wait_for(decided, lambda e: e["status"] == "succeeded")
    went_on = (await served.steps(decided))["answer"]["started_at"]
    assert went_on >= first["finished_at"]


async def test_an_approval_of_an_execution_that_has_ended_is_a_conflict(
    serve: Serve, store_options: dict[str, Any]
) -> None:
    served = await serve({"one": ONE}, **store_options)
    execution_id = await _start(served, "one")
    await served.wait_for(execution_id, lambda e: e["status"] == "waiting")
    cancelled = await served.http.post(f"/api/v1/executions/{execution_id}/cancel",
                                       headers=BOT)
    assert cancelled.status_code == 202, cancelled.text
    await served.wait_for(execution_id, lambda e: e["status"] == "cancelled")
    url = f"/api/v1/executions/{execution_id}/approvals"
    for body in ({"decision": "approve"}, {"decision": "approve", "step": "legal"}):
        late = await served.http.post(url, headers=ALICE, json=body)
        assert late.status_code == 409, late.text
        assert "has already cancelled" in late.json()["error"]["message"]


async def test_an_execution_waits_while_any_of_its_approvals_does(
    serve: Serve, store_options: dict[str, Any]
) -> None:
    """One of two approvals side by side decided, the execution read running while the
    other still waited: ?status=waiting missed it."""
    served = await serve({"both": SIDE_BY_SIDE}, **store_options)
    execution_id = await _both_waiting(served)
    url = f"/api/v1/executions/{execution_id}/approvals"
    own = await served.http.post(url, headers=BOT, json={"decision": "approve"})
    assert own.status_code == 200 and own.json()["step"] == "own", own.text

    async def own_done() -> bool:
        return (await served.steps(execution_id))["own"]["status"] == "succeeded"

    await _eventually("the decided approval to move on", own_done)
    assert (await served.get(execution_id))["status"] == "waiting"
    listed = await served.http.get("/api/v1/executions?status=waiting")
    assert [item["id"] for item in listed.json()["data"]] == [execution_id]
    legal = await served.http.post(url, headers=ALICE, json={"decision": "reject"})
    assert legal.status_code == 200, legal.text
    done = await served.wait_for(execution_id, lambda e: e["status"] == "succeeded")
    assert done["output"] == {"legal": False, "own": True}


TIMED_OUT_MAP = """
input: {type: object}
steps:
  each:
    kind: map
    over: "['a']"
    timeout_s: 0.3
    retries: 1
    backoff_ms: {backoff_ms}
    step: {kind: approval, message: "ship {{ item }}?", timeout_s: 60}
output: "{{ steps.each }}"
"""


async def test_an_approval_of_an_abandoned_attempt_no_longer_waits(
    serve: Serve, store_options: dict[str, Any]
) -> None:
    """A map whose try timed out while its item's approval waited: the retry's approval
    (each@2/0) waited, and so, for good, did the first try's (each@1/0), listed in the
    inbox and decidable though nothing would ever read its decision, and keeping the
    execution 'waiting' once the live one was decided."""
    served = await serve({"each": TIMED_OUT_MAP.replace("{backoff_ms}", "0")}, **store_options)
    execution_id = await _start(served, "each")
    url = f"/api/v1/executions/{execution_id}/approvals"

    async def retry_waits() -> bool:
        return (await served.steps(execution_id)).get("each@2/0", {}).get("status") \
            == "waiting"

    await _eventually("the second try's approval", retry_waits)
    assert await _inbox(served, BOT) == [("each@2/0", "ship a?")]
    abandoned = (await served.steps(execution_id))["each@1/0"]
    assert abandoned["status"] == "failed", abandoned
    assert abandoned["error"] == "abandoned: try 1 of step 'each' failed (timed out after 0.3s)"
    stale = await served.http.post(url, headers=BOT, json={"decision": "approve",
                                                             "step": "each@1/0"})
    assert stale.status_code == 409, stale.text
    decided = await served.http.post(url, headers=BOT, json={"decision": "approve"})
    assert decided.status_code == 200 and decided.json()["step"] == "each@2/0", decided.text
    done = await served.wait_for(execution_id, lambda e: e["status"] == "succeeded")
    assert [item["approved"] for item in done["output"]] == [True]
    assert all(state["status"] != "waiting"
               for state in (await served.steps(execution_id)).values())


async def test_a_try_that_failed_before_a_restart_is_not_taken_up_again(
    serve: Serve, store_options: dict[str, Any]
) -> None:
    """Stopped while a failed try's retry waited out its backoff, the next runner went on
    with the failed try (its number, its keys): the approval it had abandoned waited
    again, and, the count of tries starting again from nothing, the step had one try
    more than its retries allow."""
    served = await serve({"each": TIMED_OUT_MAP.replace("{backoff_ms}", "60000")},
                         **store_options)
    execution_id = await _start(served, "each")

    async def retrying() -> bool:
        return any(e["type"] == "step_retry" for e in await served.events(execution_id))

    await _eventually("the first try to time out", retrying)
    await served.workflows.stop()
    second = served.with_new_runner()
    try:
        done = await second.wait_for(execution_id, lambda e: e["status"] == "failed")
        assert done["error"] == "step 'each' failed: timed out after 0.3s"
        events = await second.events(execution_id)
        assert [e["step"] for e in events if e["type"] == "step_waiting"] == \
            ["each@1/0", "each@2/0"]
        assert [e["data"]["attempt"] for e in events if e["type"] == "step_started"] == [1, 2]
        steps = await second.steps(execution_id)
        assert [steps[name]["status"] for name in ("each", "each@1/0", "each@2/0")] == \
            ["failed"] * 3
    finally:
        await second.aclose()


EVERYTHING = '@id("everything")\npermit (principal, action, resource);\n'
NO_PUBLISH_FOR_BOT = ('@id("no-publish-for-bot")\nforbid (principal in ApiKey::"bot", '
                      'action == Action::"invoke", resource == Pipeline::"publish");\n')
# As an execution's error has it: the clause after a colon.
DENIED = ("policy does not allow key 'bot' to run pipeline 'publish': denied by "
          "no-publish-for-bot.")


async def _forbid_publish_to_bot(served: Served) -> None:
    """Reload ``served`` with a policy that forbids the bot key to run 'publish'."""
    (served.root / "policies" / "gateway.cedar").write_text(EVERYTHING + NO_PUBLISH_FOR_BOT)
    assert (await served.gateway.reload("test")).ok


async def _serve_policed(serve: Serve, tmp_path: Path, policies: str = EVERYTHING,
                         **options: Any) -> Served:
    """'publish' (a draft, then a sign-off) and 'slow', with ``policies`` (by default,
    policies that let every key run them)."""
    root = tmp_path / "policed"
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "gateway.cedar").write_text(policies)
    return await serve({"publish": approval_pipeline(), "slow": SLOW}, root=root, **options)


async def test_a_decision_after_a_policy_forbids_the_pipeline_does_not_go_on(
    serve: Serve, tmp_path: Path
) -> None:
    """Policy was asked once, when the run began: an approval decided after a reload that
    forbids the key the pipeline let the run go on, publishing under the old decision."""
    served = await _serve_policed(serve, tmp_path)
    execution_id, url = await _waiting(served)
    await _forbid_publish_to_bot(served)
    decided = await served.http.post(url, headers=BOT, json={"decision": "approve"})
    assert decided.status_code == 200, decided.text
    done = await served.wait_for(execution_id, lambda e: e["status"] in ("failed", "succeeded"))
    assert done["error"] == f"stopped after the decision on 'sign_off': {DENIED}"
    steps = await served.steps(execution_id)
    assert steps["sign_off"]["status"] == "succeeded" and "publish" not in steps


async def test_a_run_resumed_after_a_policy_forbids_the_pipeline_does_not_go_on(
    serve: Serve, tmp_path: Path
) -> None:
    served = await _serve_policed(serve, tmp_path)
    execution_id, _ = await _waiting(served)
    await served.workflows.stop()
    await _forbid_publish_to_bot(served)
    second = served.with_new_runner()
    try:
        done = await second.wait_for(execution_id, lambda e: e["status"] in ("failed",
                                                                             "succeeded"))
        assert done["error"] == f"stopped as it resumed: {DENIED}"
        events = [e["type"] for e in await second.events(execution_id)]
        # The approval it waited for is closed with it.
        assert events[-3:] == ["execution_resumed", "step_abandoned", "execution_failed"]
    finally:
        await second.aclose()


async def test_a_run_queued_when_a_policy_forbids_the_pipeline_does_not_start(
    serve: Serve, tmp_path: Path
) -> None:
    served = await _serve_policed(serve, tmp_path, settings="  execution_capacity: 1",
                                  latency=", latency: {per_token_ms: 100}")
    first = await _start(served, "slow")
    await served.wait_for(first, lambda e: e["status"] == "running")
    queued = await _start(served, "publish", input={"text": "hello"})
    await _forbid_publish_to_bot(served)
    done = await served.wait_for(queued, lambda e: e["status"] in ("failed", "succeeded"))
    assert done["error"] == f"not started: {DENIED}" and done["usage"]["model_calls"] == 0


# Pipelines run only for a request tagged 'release'; models and routes for anyone.
TAGGED = ('@id("models")\npermit (principal, action, resource) unless { resource is Pipeline };\n'
          '@id("tagged")\npermit (principal, action == Action::"invoke", resource is Pipeline) '
          'when { context.tags.contains("release") };\n')
RELEASE = {**BOT, "x-aigw-tags": "release"}


async def _resumed(served: Served, execution_id: str) -> dict[str, Any]:
    """The execution once a new runner has resumed it and it waits again, or ended."""
    async def settled() -> bool:
        types = [e["type"] for e in await served.events(execution_id)]
        after = types[len(types) - types[::-1].index("execution_resumed"):] \
            if "execution_resumed" in types else []
        return "step_waiting" in after or "execution_failed" in after

    await _eventually("the run to resume", settled)
    return await served.get(execution_id)


async def test_a_run_is_asked_again_with_the_tags_it_was_started_with(
    serve: Serve, tmp_path: Path, store_options: dict[str, Any]
) -> None:
    """Asked again as it resumed and after its approval's decision, policy was asked
    without the starting request's tags (and with the default latency SLA): a policy
    that permits the pipeline only to a tagged request stopped every such run."""
    served = await _serve_policed(serve, tmp_path, TAGGED, **store_options)
    untagged = await served.http.post("/api/v1/executions", headers=BOT,
                                      json={"pipeline": "publish", "input": {"text": "x"}})
    assert untagged.status_code == 403, untagged.text
    execution_id = await _start(served, "publish", RELEASE, input={"text": "hello"})
    await served.wait_for(execution_id, lambda e: e["status"] == "waiting")
    await served.workflows.stop()
    second = served.with_new_runner()
    try:
        resumed = await _resumed(second, execution_id)
        assert (resumed["status"], resumed["error"]) == ("waiting", None)
        url = f"/api/v1/executions/{execution_id}/approvals"
        decided = await second.http.post(url, headers=BOT, json={"decision": "approve"})
        assert decided.status_code == 200, decided.text
        done = await second.wait_for(execution_id, lambda e: e["status"] in ("failed",
                                                                             "succeeded"))
        assert (done["status"], done["output"]["published"]) == ("succeeded",
                                                                "published: hello"), done
    finally:
        await second.aclose()


async def test_a_run_made_before_its_request_was_kept_is_asked_as_one_without_headers(
    serve: Serve, tmp_path: Path, store_options: dict[str, Any]
) -> None:
    """An execution that kept no facts of its request (made by an older gateway) is asked
    again as a request that sent no x-aigw-tags nor SLA: where policy permits the pipeline
    only to tagged requests, it fails, saying why (only a forbid stopped it, so it went
    on); where policy permits it to any request, it goes on."""
    served = await _serve_policed(serve, tmp_path, TAGGED, **store_options)
    running = Checkpoint(steps=(StepState("answer", StepStatus.RUNNING, 1, started_at=1.0),))
    stopped = await served.left_by_a_crash("slow", running)
    done = await served.wait_for(stopped, lambda e: e["status"] in ("failed", "succeeded"))
    assert (done["status"], done["error"]) == ("failed", (
        "stopped as it resumed: policy does not allow key 'dev' to run pipeline 'slow': no "
        "policy permits it. The execution was made before aigw kept the facts of the "
        "request that started it, so it was asked as one with no x-aigw-tags and no "
        "x-aigw-latency-sla-ms; start it again to run it."))
    assert done["usage"]["model_calls"] == 0
    await served.workflows.stop()  # nothing takes the next one before it is left so
    (served.root / "policies" / "gateway.cedar").write_text(EVERYTHING)
    assert (await served.gateway.reload("test")).ok
    kept = await served.left_by_a_crash("slow", running)
    second = served.with_new_runner()
    try:
        done = await second.wait_for(kept, lambda e: e["status"] in ("failed", "succeeded"))
        assert (done["status"], done["error"]) == ("succeeded", None)
    finally:
        await second.aclose()


# 'slow' may not be run through the chat route 'research'; through the API it may.
NOT_THROUGH_RESEARCH = EVERYTHING + (
    '@id("no-slow-chat")\nforbid (principal, action == Action::"invoke", '
    'resource == Pipeline::"slow") when { context.route == "research" };\n')


async def test_a_run_made_before_its_request_was_kept_is_asked_as_each_route_to_it(
    serve: Serve, tmp_path: Path, store_options: dict[str, Any]
) -> None:
    """An execution that kept no facts may have been made through a chat route to its
    pipeline: asked as an API request alone, it went on where a forbid names that route.
    It fails closed, saying which route it was asked as; with no such route to it (or
    one its key may not use), it goes on."""
    served = await _serve_policed(serve, tmp_path, NOT_THROUGH_RESEARCH,
                                  extra_routes="  research: {pipeline: slow}", **store_options)
    chat = await served.http.post("/v1/chat/completions", json={
        "model": "research", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 403, chat.text  # as it is refused to a chat now
    running = Checkpoint(steps=(StepState("answer", StepStatus.RUNNING, 1, started_at=1.0),))
    stopped = await served.left_by_a_crash("slow", running)
    done = await served.wait_for(stopped, lambda e: e["status"] in ("failed", "succeeded"))
    assert (done["status"], done["error"]) == ("failed", (
        "stopped as it resumed: policy does not allow key 'dev' to run pipeline 'slow': "
        "denied by no-slow-chat. The execution was made before aigw kept the facts of the "
        "request that started it, which may have come through route 'research': it was "
        "asked as such a request with no x-aigw-tags and no x-aigw-latency-sla-ms; start "
        "it again to run it."))
    assert done["usage"]["model_calls"] == 0
    kept = await _start(served, "slow")  # made now: its facts are kept, it goes on
    done = await served.wait_for(kept, lambda e: e["status"] in ("failed", "succeeded"))
    assert (done["status"], done["error"]) == ("succeeded", None)


async def test_a_chat_with_a_pipeline_keeps_what_policy_was_asked_with(
    serve: Serve, tmp_path: Path
) -> None:
    served = await _serve_policed(serve, tmp_path, TAGGED,
                                  extra_routes="  research: {pipeline: slow}")
    answer = await served.http.post("/v1/chat/completions", headers=RELEASE, json={
        "model": "research", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200, answer.text
    store = await served.workflows.store()
    execution = await store.get(answer.headers["x-aigw-execution"])
    assert execution is not None and execution.facts is not None
    assert (execution.facts["route"], execution.facts["tags"]) == ("research", ["release"])
