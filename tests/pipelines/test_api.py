"""The workflow API in-process: executions, control, approvals, costs, pipeline routes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Message

from aigw.runtime.app import create_app

from .conftest import ALICE_KEY, BOT_KEY, DEV_KEY, FAST_ONLY_KEY, Serve, approval_pipeline

SLOW = """
description: Three slow steps in a row.
input: {type: object}
steps:
  one: {kind: python, function: "asyncio:sleep", args: {delay: 0.3, result: 1}}
  two: {kind: python, needs: [one], function: "asyncio:sleep", args: {delay: 0.3, result: 2}}
  three: {kind: python, needs: [two], function: "asyncio:sleep", args: {delay: 0.3, result: 3}}
output: "{{ [steps.one, steps.two, steps.three] }}"
"""


async def test_approve_a_waiting_step(serve: Serve) -> None:
    served = await serve({"publish": approval_pipeline()})
    started = await served.start("publish", {"text": "hello"})
    waiting = await served.wait_for(started["id"], lambda e: e["status"] == "waiting")
    steps = await served.steps(waiting["id"])
    assert steps["sign_off"]["status"] == "waiting"
    assert steps["sign_off"]["detail"]["message"] == "Publish 'hello'?"
    response = await served.http.post(f"/api/v1/executions/{started['id']}/approvals",
                                      json={"decision": "approve", "comment": "ship it"})
    assert response.status_code == 200, response.text
    assert response.json() == {"execution": started["id"], "step": "sign_off",
                               "decision": "approve", "by": "dev"}
    done = await served.wait_for(started["id"], lambda e: e["status"] == "succeeded")
    assert done["output"] == {
        "decision": {"approved": True, "decision": "approve", "by": "dev",
                     "comment": "ship it", "timed_out": False},
        "published": "published: hello",
    }
    again = await served.http.post(f"/api/v1/executions/{started['id']}/approvals",
                                   json={"decision": "reject"})
    assert again.status_code == 409


async def test_a_change_to_one_execution_wakes_only_those_waiting_for_it(
    serve: Serve
) -> None:
    """Waiters (POST /v1/pipelines, a chat with a pipeline route, a WebSocket follower)
    each wait for one execution: a change to another one does not wake them to read the
    store again (it woke every waiter of every execution, on every checkpoint)."""
    served = await serve({"publish": approval_pipeline()})
    ids = [(await served.start("publish", {"text": f"t{n}"}))["id"] for n in range(3)]
    for execution_id in ids:
        await served.wait_for(execution_id, lambda e: e["status"] == "waiting")
    # Longer than the test: only a change wakes them, not the poll for other replicas'.
    waiters = {execution_id: asyncio.ensure_future(served.workflows.wait(execution_id, 60))
               for execution_id in ids}
    await asyncio.sleep(0.1)  # the runs waiting for their decisions poll the store meanwhile
    assert not any(waiter.done() for waiter in waiters.values())
    decided = await served.http.post(f"/api/v1/executions/{ids[0]}/approvals",
                                     json={"decision": "approve"})
    assert decided.status_code == 200, decided.text
    await served.wait_for(ids[0], lambda e: e["status"] == "succeeded")
    await asyncio.wait_for(waiters[ids[0]], 5)
    assert [waiters[other].done() for other in ids[1:]] == [False, False]
    for waiter in waiters.values():
        waiter.cancel()
    await asyncio.gather(*waiters.values(), return_exceptions=True)


async def test_a_rejected_approval_skips_what_depends_on_it(serve: Serve) -> None:
    served = await serve({"publish": approval_pipeline()})
    started = await served.start("publish", {"text": "hello"})
    await served.wait_for(started["id"], lambda e: e["status"] == "waiting")
    response = await served.http.post(f"/api/v1/executions/{started['id']}/approvals",
                                      json={"step": "sign_off", "decision": "reject"})
    assert response.status_code == 200
    done = await served.wait_for(started["id"], lambda e: e["status"] == "succeeded")
    assert done["output"]["published"] is None
    assert (await served.steps(started["id"]))["publish"]["status"] == "skipped"


async def test_an_approval_nobody_answers_takes_its_default(serve: Serve) -> None:
    served = await serve({"publish": approval_pipeline(timeout=0.2, default="approve")})
    result = await served.run("publish", {"text": "hi"})
    assert result["output"]["decision"]["timed_out"] is True
    assert result["output"]["published"] == "published: hi"


async def test_approvals_need_a_valid_decision_and_a_waiting_step(serve: Serve) -> None:
    served = await serve({"publish": approval_pipeline()})
    started = await served.start("publish", {"text": "hello"})
    url = f"/api/v1/executions/{started['id']}/approvals"
    assert (await served.http.post(url, json={"decision": "maybe"})).status_code == 400
    await served.wait_for(started["id"], lambda e: e["status"] == "waiting")
    wrong = await served.http.post(url, json={"step": "draft", "decision": "approve"})
    assert wrong.status_code == 409
    assert wrong.json()["error"]["message"] == "step 'draft' is not waiting for a decision"


async def test_pause_and_resume(serve: Serve) -> None:
    served = await serve({"slow": SLOW})
    started = await served.start("slow", {})
    await served.wait_for(started["id"], lambda e: e["status"] == "running")
    paused = await served.http.post(f"/api/v1/executions/{started['id']}/pause")
    assert paused.status_code == 202
    assert paused.json()["control"] == "pause"
    execution = await served.wait_for(started["id"], lambda e: e["status"] == "paused")
    steps = await served.steps(execution["id"])
    assert steps["one"]["status"] == "succeeded"
    assert "three" not in steps  # the step in flight finished; nothing new started
    await asyncio.sleep(0.4)
    assert (await served.get(started["id"]))["status"] == "paused"
    resumed = await served.http.post(f"/api/v1/executions/{started['id']}/resume")
    assert resumed.status_code == 202 and resumed.json()["status"] == "queued"
    done = await served.wait_for(started["id"], lambda e: e["status"] == "succeeded")
    assert done["output"] == [1, 2, 3]
    types = [event["type"] for event in await served.events(started["id"])]
    assert types.count("execution_paused") == 1 and types.count("execution_resumed") == 1
    assert types.count("step_started") == 3  # no step ran twice


NAP = """
input: {type: object}
steps:
  nap: {kind: python, function: "asyncio:sleep", args: {delay: 0.3, result: "napped"}}
output: "{{ steps.nap }}"
"""
BESIDE = """
input: {type: object}
steps:
  sub: {kind: pipeline, pipeline: nap, input: {}}
  long: {kind: python, function: "asyncio:sleep", args: {delay: 0.8, result: "long"}}
output: {sub: "{{ steps.sub }}", long: "{{ steps.long }}"}
"""


async def _started(served: Any, execution_id: str, *steps: str) -> None:
    async def running() -> bool:
        found = await served.steps(execution_id)
        return all(found.get(step, {}).get("status") in ("running", "waiting")
                   for step in steps)

    await _eventually(running)


async def test_a_pause_lets_the_steps_beside_a_pipeline_step_finish(serve: Serve) -> None:
    """The pipeline step's pipeline, once its own step had finished, ended the whole run
    as a cancel does: the step in flight beside it was cut off, and ran again."""
    served = await serve({"beside": BESIDE, "nap": NAP})
    started = await served.start("beside", {})
    await _started(served, started["id"], "sub/nap", "long")
    assert (await served.http.post(f"/api/v1/executions/{started['id']}/pause")).status_code \
        == 202
    await served.wait_for(started["id"], lambda e: e["status"] == "paused")
    steps = await served.steps(started["id"])
    assert {name: state["status"] for name, state in steps.items()} == {
        "sub": "running", "sub/nap": "succeeded", "long": "succeeded"}
    await served.http.post(f"/api/v1/executions/{started['id']}/resume")
    done = await served.wait_for(started["id"], lambda e: e["status"] == "succeeded")
    assert done["output"] == {"sub": "napped", "long": "long"}
    events = await served.events(started["id"])
    assert [e["step"] for e in events if e["type"] == "step_started"] == ["sub", "long",
                                                                           "sub/nap"]


GATE_OR_NAP = """
input: {type: object}
steps:
  gate: {kind: approval, when: "input.item == 'a'", message: "ok?", timeout_s: 60}
  nap:
    kind: python
    when: "input.item == 'b'"
    function: "asyncio:sleep"
    args: {delay: 0.4, result: "napped"}
output: "{{ steps.nap if input.item == 'b' else steps.gate.approved }}"
"""
EACH_ITEM = """
input: {type: object}
steps:
  each:
    kind: map
    over: "['a', 'b']"
    concurrency: 2
    step: {kind: pipeline, pipeline: gate_or_nap, input: {item: "{{ item }}"}}
output: "{{ steps.each }}"
"""


async def test_a_pause_lets_the_map_items_beside_a_waiting_approval_finish(
    serve: Serve,
) -> None:
    served = await serve({"each": EACH_ITEM, "gate_or_nap": GATE_OR_NAP})
    started = await served.start("each", {})
    await _started(served, started["id"], "each@1/0/gate", "each@1/1/nap")
    await served.http.post(f"/api/v1/executions/{started['id']}/pause")
    await served.wait_for(started["id"], lambda e: e["status"] == "paused")
    steps = await served.steps(started["id"])
    assert steps["each@1/1/nap"]["status"] == "succeeded"  # not cut off by the pause
    await served.http.post(f"/api/v1/executions/{started['id']}/resume")
    await _started(served, started["id"], "each@1/0/gate")
    await _eventually(lambda: _executions(served, "waiting"))
    decided = await served.http.post(f"/api/v1/executions/{started['id']}/approvals",
                                     json={"decision": "approve"})
    assert decided.status_code == 200, decided.text
    done = await served.wait_for(started["id"], lambda e: e["status"] == "succeeded")
    assert done["output"] == [True, "napped"]
    events = await served.events(started["id"])
    assert [e["step"] for e in events if e["type"] == "step_started"].count(
        "each@1/1/nap") == 1


async def test_a_resume_before_the_pause_took_hold_takes_it_back(serve: Serve) -> None:
    served = await serve({"slow": SLOW})
    started = await served.start("slow", {})
    await served.wait_for(started["id"], lambda e: e["status"] == "running")
    url = f"/api/v1/executions/{started['id']}"
    assert (await served.http.post(f"{url}/pause")).json()["control"] == "pause"
    await asyncio.sleep(0.15)  # the runner (polling each 0.05 s) has seen the pause
    # While step one (0.3 s) finishes, before the pause holds: the resume withdraws it.
    withdrawn = await served.http.post(f"{url}/resume")
    assert withdrawn.status_code == 202 and withdrawn.json()["control"] is None
    done = await served.wait_for(started["id"], lambda e: e["status"] in ("succeeded",
                                                                         "paused"))
    assert (done["status"], done["output"]) == ("succeeded", [1, 2, 3])


async def test_resume_of_a_running_execution_is_a_conflict(serve: Serve) -> None:
    served = await serve({"slow": SLOW})
    started = await served.start("slow", {})
    response = await served.http.post(f"/api/v1/executions/{started['id']}/resume")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


async def test_cancel_stops_an_execution(serve: Serve) -> None:
    served = await serve({"slow": SLOW})
    started = await served.start("slow", {})
    await served.wait_for(started["id"], lambda e: e["status"] == "running")
    response = await served.http.post(f"/api/v1/executions/{started['id']}/cancel")
    assert response.status_code == 202
    done = await served.wait_for(started["id"], lambda e: e["status"] == "cancelled")
    assert done["error"] == "cancelled"
    assert (await served.http.post(f"/api/v1/executions/{started['id']}/cancel")).status_code \
        == 409


async def test_idempotency_key_returns_the_same_execution(serve: Serve) -> None:
    served = await serve({"slow": SLOW})
    first = await served.http.post("/api/v1/executions", json={
        "pipeline": "slow", "input": {}, "idempotency_key": "order-1"})
    second = await served.http.post("/api/v1/executions", json={"pipeline": "slow", "input": {}},
                                    headers={"idempotency-key": "order-1"})
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    other = await served.http.post("/api/v1/executions", json={
        "pipeline": "slow", "input": {"n": 2}, "idempotency_key": "order-1"})
    assert other.status_code == 409  # the key names another request: not its execution
    assert first.json()["id"] in other.json()["error"]["message"]


async def test_bad_requests(serve: Serve) -> None:
    served = await serve({"publish": approval_pipeline()})
    post = served.http.post
    missing = await post("/api/v1/executions", json={"pipeline": "nope", "input": {}})
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "No pipeline named 'nope' (pipelines: publish)."
    bad_input = await post("/api/v1/executions", json={"pipeline": "publish", "input": []})
    assert bad_input.status_code == 400
    assert bad_input.json()["error"]["message"] == (
        "The input does not match pipeline 'publish': (root): [] is not of type 'object'")
    assert (await post("/api/v1/executions", content=b"{")).status_code == 400
    template = await post("/api/v1/executions", json={"template": "research", "input": {}})
    assert template.status_code == 404
    assert "copy research.yaml" in template.json()["error"]["message"]
    assert (await served.http.get("/api/v1/executions/exec_nope")).status_code == 404
    no_key = await served.http.get("/api/v1/workflows", headers={"authorization": ""})
    assert no_key.status_code == 401


async def test_a_key_sees_only_its_own_executions(serve: Serve) -> None:
    served = await serve({"slow": SLOW})
    mine = await served.start("slow", {})
    alice = {"authorization": f"Bearer {ALICE_KEY}"}
    hidden = await served.http.get(f"/api/v1/executions/{mine['id']}", headers=alice)
    assert hidden.status_code == 404
    assert (await served.http.post(f"/api/v1/executions/{mine['id']}/cancel",
                                   headers=alice)).status_code == 404
    hers = await served.http.post("/api/v1/executions", headers=alice,
                                  json={"pipeline": "slow", "input": {}})
    listed = await served.http.get("/api/v1/executions", headers=alice)
    assert [item["id"] for item in listed.json()["data"]] == [hers.json()["id"]]
    everything = await served.http.get("/api/v1/executions")  # the dev key is an admin
    assert {item["id"] for item in everything.json()["data"]} == {mine["id"], hers.json()["id"]}
    assert (await served.http.get("/api/v1/costs/summary", headers=alice)).status_code == 403


async def test_a_keys_executions_are_paged_and_another_keys_is_no_cursor(
    serve: Serve, store_options: dict[str, Any]
) -> None:
    """A key with more executions than a page (1,000 at most) could not see past it:
    the list had no cursor."""
    served = await serve({"slow": SLOW}, **store_options)
    alice = {"authorization": f"Bearer {ALICE_KEY}"}
    hers = [(await served.http.post("/api/v1/executions", headers=alice, json={
        "pipeline": "slow", "input": {}})).json()["id"] for _ in range(5)]
    theirs = await served.start("slow", {})  # the dev key's
    pages: list[list[str]] = []
    params = {"limit": "2"}
    while True:
        page = (await served.http.get("/api/v1/executions", headers=alice,
                                      params=params)).json()
        pages.append([item["id"] for item in page["data"]])
        assert (page["first_id"], page["last_id"]) == (pages[-1][0], pages[-1][-1])
        if not page["has_more"]:
            break
        params = {"limit": "2", "after": page["last_id"]}
    assert pages == [hers[:2:-1], hers[2:0:-1], hers[:1]]
    everything = (await served.http.get("/api/v1/executions", params={
        "after": hers[3]})).json()  # the admin key's: every key's, after it
    assert [item["id"] for item in everything["data"]] == hers[2::-1]
    # Another key's execution is no cursor: it is as unknown to this key as a made-up id.
    for cursor in (theirs["id"], "exec_nope"):
        refused = await served.http.get("/api/v1/executions", headers=alice,
                                        params={"after": cursor})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["message"] == (
            f"Invalid value for 'after': '{cursor}' is not the id of an execution of this "
            "key's.")


async def test_a_bad_list_query_is_a_400_that_names_it(serve: Serve) -> None:
    # ``limit`` out of bounds was cut to them, and a bad value repeated whole (kilobytes)
    # in a message that named no parameter.
    served = await serve({"slow": SLOW})
    started = await served.start("slow", {})
    for path, param, value in (
            ("/api/v1/executions", "limit", "0"), ("/api/v1/executions", "limit", "1001"),
            ("/api/v1/executions", "limit", "9" * 8000), ("/api/v1/approvals", "limit", "-1"),
            (f"/api/v1/executions/{started['id']}/events", "after", "a" * 8000)):
        refused = await served.http.get(path, params={param: value})
        assert refused.status_code == 400, (path, param, value)
        error = refused.json()["error"]
        assert error["param"] == param and len(error["message"]) < 200, error
    listed = await served.http.get("/api/v1/executions", params={"limit": "1000"})
    assert [item["id"] for item in listed.json()["data"]] == [started["id"]]


ECHO_PIPELINE = """
input: {type: object, required: [topic], properties: {topic: {type: string}}}
steps:
  answer: {kind: llm, model: fast, prompt: "About {{ input.topic }}"}
output: "{{ steps.answer }}"
"""


async def test_a_pipeline_chats_log_line_does_not_count_its_steps_again(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """The chat's line carried its steps' tokens and cost, which their own lines carry:
    the access log summed to more than the ledger."""
    served = await serve({"about": ECHO_PIPELINE}, extra_routes="  about: {pipeline: about}")
    caplog.set_level(logging.INFO, logger="aigw.access")
    response = await served.http.post("/v1/chat/completions", json={
        "model": "about", "messages": [{"role": "user", "content": "cats"}]})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] > 0  # the client is still told
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "aigw.access"]
    chat = [line for line in lines if line["route"] == "about"]
    steps = [line for line in lines if line["route"] != "about"]
    assert len(chat) == 1 and steps, lines
    assert (chat[0]["completion_tokens"], chat[0]["cost"]) == (0, 0.0)
    assert sum(line["completion_tokens"] for line in steps) > 0


async def test_a_failed_run_answers_openais_error_object_with_the_execution(
    serve: Serve,
) -> None:
    """The execution's fields were merged over the error object: its ``error`` (a string)
    replaced OpenAI's, which an SDK reads the message from."""
    served = await serve({"broken": """
input: {type: object}
steps:
  pick: {kind: transform, expression: "input.missing.deeper"}
output: "{{ steps.pick }}"
"""})
    response = await served.http.post("/v1/pipelines/broken", json={})
    assert response.status_code == 502, response.text
    body = response.json()
    execution = await served.get(body["execution"])
    assert body == {
        "error": {"message": f"Pipeline 'broken' failed: {execution['error']}",
                  "type": "server_error", "param": None, "code": "pipeline_failed"},
        "execution": execution["id"], "pipeline": "broken", "status": "failed",
        "output": None, "cost": 0, "usage": execution["usage"]}
    assert execution["error"].startswith("step 'pick' failed: template error: ")


async def test_a_pipeline_route_answers_chat_completions(serve: Serve) -> None:
    served = await serve({"about": ECHO_PIPELINE}, extra_routes="  about: {pipeline: about}")
    response = await served.http.post("/v1/chat/completions", json={
        "model": "about", "messages": [{"role": "user", "content": "cats"}]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "About cats"
    assert body["model"] == "about"
    assert body["usage"]["completion_tokens"] > 0
    assert response.headers["x-aigw-execution"].startswith("exec_")
    streamed = await served.http.post("/v1/chat/completions", json={
        "model": "about", "stream": True,
        "messages": [{"role": "user", "content": json.dumps({"topic": "dogs"})}]})
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "About dogs"
    # Counted in flight while they ran, and no more after (it went to -2: only the end
    # was counted).
    metrics = (await served.http.get("/metrics")).text
    assert 'aigw_in_flight_requests{route="about"} 0.0' in metrics


PUBLISH_ROUTE = "  publish: {pipeline: publish, deadline_s: 0.3}"
PUBLISH_CHAT = {"model": "publish", "messages": [{"role": "user", "content": '{"text": "hi"}'}]}


async def test_a_chat_past_its_deadline_cancels_the_run_nobody_can_collect(
    serve: Serve,
) -> None:
    """The run went on after the 504, and each retry of the OpenAI SDK (which sends no
    Idempotency-Key) started another: three runs for one question."""
    served = await serve({"publish": approval_pipeline()}, extra_routes=PUBLISH_ROUTE)
    response = await served.http.post("/v1/chat/completions", json=PUBLISH_CHAT)
    assert response.status_code == 504, response.text
    assert "is cancelled" in response.json()["error"]["message"]
    (execution,) = (await served.http.get("/api/v1/executions")).json()["data"]
    await served.wait_for(execution["id"], lambda e: e["status"] == "cancelled")


async def test_a_chat_on_a_pipeline_route_keeps_the_deadline_its_client_asked(
    serve: Serve,
) -> None:
    """x-aigw-deadline-ms shortens any route's deadline (README); a pipeline route's wait
    for its execution read the route's deadline_s alone, here 300 s."""
    served = await serve({"publish": approval_pipeline()},
                         extra_routes="  publish: {pipeline: publish}")
    started = time.monotonic()
    response = await served.http.post("/v1/chat/completions", json=PUBLISH_CHAT,
                                      headers={"x-aigw-deadline-ms": "300"})
    assert response.status_code == 504, response.text
    assert time.monotonic() - started < 10
    assert "after 0.3s" in response.json()["error"]["message"]


async def test_a_chat_cut_off_cancels_the_run_it_started(serve: Serve) -> None:
    served = await serve({"publish": approval_pipeline()},
                         extra_routes="  publish: {pipeline: publish}")
    call = asyncio.create_task(served.http.post("/v1/chat/completions", json=PUBLISH_CHAT))
    (execution,) = await _eventually(lambda: _executions(served, "waiting"))
    call.cancel()  # as a shutdown past its grace cancels the request
    with pytest.raises(asyncio.CancelledError):
        await call
    await served.wait_for(execution["id"], lambda e: e["status"] == "cancelled")


async def test_a_chat_retried_with_its_idempotency_key_waits_for_the_same_run(
    serve: Serve,
) -> None:
    served = await serve({"publish": approval_pipeline()}, extra_routes=PUBLISH_ROUTE)
    key = {"idempotency-key": "question-1"}
    first = await served.http.post("/v1/chat/completions", json=PUBLISH_CHAT, headers=key)
    assert first.status_code == 504, first.text
    assert "same Idempotency-Key" in first.json()["error"]["message"]
    (execution,) = await _executions(served, "waiting")  # left to run: a retry collects it
    decided = await served.http.post(f"/api/v1/executions/{execution['id']}/approvals",
                                     json={"decision": "approve"})
    assert decided.status_code == 200, decided.text
    again = await served.http.post("/v1/chat/completions", json=PUBLISH_CHAT, headers=key)
    assert again.status_code == 200, again.text
    assert again.headers["x-aigw-execution"] == execution["id"]
    assert "published: hi" in again.json()["choices"][0]["message"]["content"]
    assert len((await served.http.get("/api/v1/executions")).json()["data"]) == 1


async def _executions(served: Any, status: str) -> list[dict[str, Any]]:
    answer = await served.http.get(f"/api/v1/executions?status={status}")
    found: list[dict[str, Any]] = answer.json()["data"]
    return found


async def _eventually(check: Any) -> Any:
    for _ in range(250):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.02)
    pytest.fail("gave up waiting")


def _follow_scope(execution_id: str, query: bytes = b"") -> dict[str, Any]:
    """The ASGI scope of a WebSocket that follows ``execution_id`` (the dev key's)."""
    path = f"/ws/executions/{execution_id}"
    return {"type": "websocket", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "scheme": "ws", "path": path, "raw_path": path.encode(), "query_string": query,
            "root_path": "", "headers": [(b"authorization", f"Bearer {DEV_KEY}".encode())],
            "server": ("aigw.test", 80), "client": ("127.0.0.1", 50000), "subprotocols": [],
            "extensions": {"websocket.http.response": {}}}  # as hypercorn gives it


async def test_a_websocket_followers_bad_after_is_a_400_before_the_accept(
        serve: Serve) -> None:
    """``?after=`` was checked after the socket was accepted: its 400 went out as an HTTP
    answer on an open socket, which hypercorn refuses (an error logged, the socket
    closed as an internal error), so the client never saw why."""
    served = await serve({"publish": approval_pipeline()})
    started = await served.start("publish", {"text": "hello"})
    app = create_app(served.gateway, served.workflows)
    client: asyncio.Queue[Message] = asyncio.Queue()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await client.put({"type": "websocket.connect"})
    await asyncio.wait_for(app(_follow_scope(started["id"], b"after=-1"), client.get, send), 5)
    assert [message["type"] for message in sent] == [
        "websocket.http.response.start", "websocket.http.response.body"]
    assert sent[0]["status"] == 400
    error = json.loads(sent[1]["body"])["error"]
    assert (error["param"], error["message"]) == (
        "after", "Invalid value for 'after': '-1' is not a whole number.")


async def test_a_websocket_follower_ends_when_its_client_closes(serve: Serve) -> None:
    """The follower never read from its socket: closed while no event came (an approval
    waiting for days), it went on polling the store for nobody."""
    served = await serve({"publish": approval_pipeline()})
    started = await served.start("publish", {"text": "hello"})
    await served.wait_for(started["id"], lambda e: e["status"] == "waiting")
    app = create_app(served.gateway, served.workflows)
    scope = _follow_scope(started["id"])
    client: asyncio.Queue[Message] = asyncio.Queue()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await client.put({"type": "websocket.connect"})
    follower = asyncio.create_task(app(scope, client.get, send))

    async def waiting_sent() -> bool:
        return any('"step_waiting"' in message.get("text", "") for message in sent)

    await _eventually(waiting_sent)  # the history, up to the approval it waits for
    await client.put({"type": "websocket.disconnect", "code": 1001})
    await asyncio.wait_for(follower, 5)
    assert (await served.get(started["id"]))["status"] == "waiting"  # the run goes on


async def test_a_policy_on_the_pipeline_holds_for_its_chat_route(
    serve: Serve, tmp_path: Path
) -> None:
    """A chat to a pipeline route runs the pipeline: a forbid on Pipeline::"about" held
    on /v1/pipelines/about and /api/v1/executions, but a chat with model "about" was
    checked only against Route::"about" (found by a review helper)."""
    root = _no_about_for_alice(tmp_path)
    served = await serve({"about": ECHO_PIPELINE}, extra_routes="  about: {pipeline: about}",
                         root=root)
    chat = {"model": "about", "messages": [{"role": "user", "content": "cats"}]}
    refused = await served.http.post("/v1/chat/completions", json=chat,
                                     headers={"authorization": f"Bearer {ALICE_KEY}"})
    assert refused.status_code == 403, refused.text
    assert "no-about-for-alice" in refused.json()["error"]["message"]
    allowed = await served.http.post("/v1/chat/completions", json=chat)  # the dev key
    assert allowed.status_code == 200, allowed.text


def _no_about_for_alice(tmp_path: Path) -> Path:
    """A gateway directory whose policies forbid key alice the pipeline "about"."""
    root = tmp_path / "policed"
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "gateway.cedar").write_text(
        '@id("everything")\npermit (principal, action, resource);\n'
        '@id("no-about-for-alice")\nforbid (principal in ApiKey::"alice", '
        'action == Action::"invoke", resource == Pipeline::"about");\n')
    return root


WRAPPER = """
input: {type: object, required: [topic], properties: {topic: {type: string}}}
steps:
  call: {kind: pipeline, pipeline: about, input: {topic: "{{ input.topic }}"}}
output: "{{ steps.call }}"
"""


async def test_a_policy_on_a_pipeline_holds_when_another_runs_it(
    serve: Serve, tmp_path: Path
) -> None:
    """A forbid on Pipeline::"about" stopped a run of "about" by name, but not a run of a
    pipeline with a step ``{kind: pipeline, pipeline: about}`` (found by a review)."""
    root = _no_about_for_alice(tmp_path)
    served = await serve({"about": ECHO_PIPELINE, "wrapper": WRAPPER}, root=root)
    alice = {"authorization": f"Bearer {ALICE_KEY}"}
    direct = await served.http.post("/api/v1/executions", headers=alice,
                                    json={"pipeline": "about", "input": {"topic": "cats"}})
    assert direct.status_code == 403, direct.text
    started = await served.http.post("/api/v1/executions", headers=alice,
                                     json={"pipeline": "wrapper", "input": {"topic": "cats"},
                                           "user": "carol"})
    assert started.status_code == 201, started.text
    failed = await served.wait_for(started.json()["id"],
                                   lambda e: e["status"] in ("failed", "succeeded"))
    assert failed["error"] == (
        "step 'call' failed: policy does not allow user 'carol' of key 'alice' to run "
        "pipeline 'about': denied by no-about-for-alice.")
    steps = await served.steps(failed["id"])
    assert steps["call"]["attempts"] == 1  # a deny is not tried again
    assert "call/answer" not in steps  # nothing of "about" ran
    allowed = await served.run("wrapper", {"topic": "cats"})  # the dev key
    assert allowed["status"] == "succeeded" and allowed["output"] == "About cats"


ON_GROUP = """
input: {type: object}
steps:
  answer: {kind: llm, model: tiered, prompt: "on the group"}
output: "{{ steps.answer }}"
"""


async def test_a_policy_on_a_group_holds_for_a_step_that_names_the_group(
    serve: Serve, tmp_path: Path
) -> None:
    """A step naming a group or deployment (not a route) is served by a route made up
    for it, which policies did not see: it had no Group parent and no kind or target,
    so a forbid on the group held for a chat and not for the pipeline (found by a
    review)."""
    root = tmp_path / "policed"
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "gateway.cedar").write_text(
        '@id("everything")\npermit (principal, action, resource);\n'
        '@id("no-tiered-for-alice")\nforbid (principal in ApiKey::"alice", '
        'action == Action::"invoke", resource in Group::"tiered");\n'
        '@id("no-strong-by-name-for-bot")\nforbid (principal in ApiKey::"bot", '
        'action == Action::"invoke", resource is Route) '
        'when { resource.kind == "deployment" && resource.target == "strong" };\n')
    on_deployment = ON_GROUP.replace("model: tiered", "model: strong")
    served = await serve({"on_group": ON_GROUP, "on_deployment": on_deployment},
                         extra_routes="  tiered-route: {group: tiered}", root=root)
    chat = await served.http.post(
        "/v1/chat/completions", headers={"authorization": f"Bearer {ALICE_KEY}"},
        json={"model": "tiered-route", "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 403, chat.text
    refused = await served.run("on_group", {}, key=ALICE_KEY)
    assert refused["status"] == "failed", refused
    assert "Policy does not allow key 'alice' to call 'tiered': denied by " \
        "no-tiered-for-alice" in refused["error"]
    refused = await served.run("on_deployment", {}, key=BOT_KEY)
    assert refused["status"] == "failed", refused
    assert "denied by no-strong-by-name-for-bot" in refused["error"]
    for name in ("on_group", "on_deployment"):
        allowed = await served.run(name, {})  # the dev key
        assert allowed["status"] == "succeeded", allowed


async def test_costs_summary_per_pipeline(serve: Serve) -> None:
    served = await serve({"about": ECHO_PIPELINE, "slow": SLOW})
    one = await served.run("about", {"topic": "a"})
    two = await served.run("about", {"topic": "b"})
    response = await served.http.get("/api/v1/costs/summary")
    assert response.status_code == 200
    rows = {row["pipeline"]: row for row in response.json()["data"]}
    assert rows["about"]["executions"] == 2 and rows["about"]["succeeded"] == 2
    assert rows["about"]["cost"] == one["cost"] + two["cost"] > 0
    assert rows["about"]["model_calls"] == 2
    assert "slow" not in rows


async def test_workflows_and_templates_are_listed(serve: Serve) -> None:
    served = await serve({"about": ECHO_PIPELINE, "research": ECHO_PIPELINE})
    workflows = (await served.http.get("/api/v1/workflows")).json()["data"]
    about = next(item for item in workflows if item["name"] == "about")
    assert about["steps"] == [{"name": "answer", "kind": "llm", "needs": [], "when": None,
                               "retries": 0, "timeout_s": 300.0, "description": None}]
    assert about["endpoint"] == "/v1/pipelines/about"
    assert about["input"]["required"] == ["topic"]
    # A key limited to routes that run no pipeline may run none, and lists none.
    limited = {"authorization": f"Bearer {FAST_ONLY_KEY}"}
    assert (await served.http.get("/api/v1/workflows", headers=limited)).json()["data"] == []
    # Nor learns their names: one it may not run is as unknown as one that is not there.
    for name in ("about", "nope"):
        refused = await served.http.post("/api/v1/executions", headers=limited,
                                         json={"pipeline": name, "input": {"topic": "x"}})
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["message"] == \
            f"No pipeline named '{name}' (pipelines: none)."
    templates: list[dict[str, Any]] = (await served.http.get("/api/v1/templates")).json()["data"]
    assert [t["name"] for t in templates] == [
        "coding", "data_analysis", "document_analysis", "research"]
    assert [t["installed"] for t in templates] == [False, False, False, True]
    assert templates[3]["yaml"].startswith("# yaml-language-server")


async def test_ended_executions_are_counted_in_the_metrics(serve: Serve) -> None:
    served = await serve({"about": ECHO_PIPELINE})
    await served.run("about", {"topic": "a"})
    metrics = (await served.http.get("/metrics")).text
    assert 'aigw_workflow_executions_total{pipeline="about",status="succeeded"} 1.0' in metrics


async def test_a_pipeline_call_has_its_log_line_and_metrics(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """POST /v1/pipelines/{name} (its 401s too) left no access log line and no metric;
    only the model calls inside it did."""
    served = await serve({"about": ECHO_PIPELINE})
    caplog.set_level(logging.INFO, logger="aigw.access")
    ran = await served.http.post("/v1/pipelines/about", json={"topic": "cats"})
    assert ran.status_code == 200, ran.text
    assert float(ran.headers["x-aigw-overhead-ms"]) >= 0
    refused = await served.http.post("/v1/pipelines/about", json={"topic": "cats"},
                                     headers={"authorization": "Bearer sk-nobody"})
    assert refused.status_code == 401
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "aigw.access"]
    calls = [line for line in lines if line["endpoint"] == "pipelines"]
    assert [(line["route"], line["status"], line["key"]) for line in calls] == [
        ("pipeline:about", 200, "dev"), (None, 401, None)]
    # Its model calls' tokens are on their own lines, as is their cost: the pipeline's
    # line repeated them (with cost 0), and a sum over the log counted them twice.
    steps = [line for line in lines if line["endpoint"] == "pipeline"]
    assert steps and all(line["completion_tokens"] > 0 for line in steps)
    assert (calls[0]["prompt_tokens"], calls[0]["completion_tokens"], calls[0]["cost"]) == (
        0, 0, 0.0)
    metrics = (await served.http.get("/metrics")).text
    assert 'aigw_requests_total{deployment="_none",provider="_none",route="pipeline:about",' \
        'status="200",team="eng"} 1.0' in metrics
    assert 'aigw_in_flight_requests{route="pipeline:about"} 0.0' in metrics
