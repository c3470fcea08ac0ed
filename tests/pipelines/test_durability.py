"""Executions survive their runner: stopped mid-run, resumed by the next one, no call repeated."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from aigw.runtime.store.executions import Checkpoint, Memo, NewEvent, StepState, StepStatus

from ..fakes.a2a_agents import Seen, a2a_agents
from ..fakes.serve import free_port, serving
from ..redis_server import PrivateRedis
from .conftest import AfterAnswer, Serve, Served, approval_pipeline, refuse_memos

LONG = """
input: {type: object}
steps:
  first: {kind: llm, model: fast, prompt: "start"}
  each:
    kind: map
    needs: [first]
    over: "['a', 'b', 'c', 'd', 'e', 'f']"
    concurrency: 1
    step: {kind: llm, model: fast, prompt: "{{ item }}"}
  last: {kind: llm, model: smart, needs: [each], prompt: "{{ steps.each | join }}"}
output: "{{ steps.last }}"
"""
SLOW_ECHO = ", latency: {per_token_ms: 80}"


async def _stop_after_calls(served: Served, execution_id: str, calls: int) -> None:
    async def enough() -> bool:
        events = await served.events(execution_id)
        return sum(e["type"] == "model_call" for e in events) >= calls

    for _ in range(500):
        if await enough():
            break
        await asyncio.sleep(0.01)
    await served.workflows.stop()


async def _check_resumed(first: Served, execution_id: str) -> None:
    await _stop_after_calls(first, execution_id, 3)
    second = first.with_new_runner()
    try:
        done = await second.wait_for(execution_id, lambda e: e["status"] == "succeeded", 20)
        assert done["output"] == "abcdef"
        events = await second.events(execution_id)
        calls = [e["data"] for e in events if e["type"] == "model_call"]
        keys = Counter(call["key"] for call in calls if "failed" not in call)
        assert len(keys) == 8 and set(keys.values()) == {1}  # each answer got once
        # and a call the stop cut short, billed an estimate, is counted as well
        cut = [call for call in calls if "failed" in call]
        assert all(call["estimated"] and call["key"] in keys for call in cut), cut
        assert done["usage"]["model_calls"] == 8 + len(cut)
        assert [e["type"] for e in events].count("execution_resumed") == 1
        started = Counter(e["step"] for e in events if e["type"] == "step_started")
        assert started == {"first": 1, "each": 1, "last": 1}  # "each" resumed, not restarted
        runners = [e["data"]["runner"] for e in events
                   if e["type"] in ("execution_started", "execution_resumed")]
        assert runners == [first.workflows.owner, second.workflows.owner]
    finally:
        await second.aclose()


async def test_a_stopped_gateway_resumes_where_it_was(serve: Serve) -> None:
    served = await serve({"long": LONG}, latency=SLOW_ECHO)
    started = await served.start("long", {})
    await _check_resumed(served, started["id"])


@pytest.mark.usefixtures("redis_url")
async def test_on_redis_another_replica_resumes_it(
    serve: Serve, redis_url: str, namespace: str
) -> None:
    served = await serve({"long": LONG}, latency=SLOW_ECHO, store=redis_url, namespace=namespace)
    started = await served.start("long", {})
    await _check_resumed(served, started["id"])


async def test_a_request_after_shutdown_starts_nothing(serve: Serve) -> None:
    """A request that arrives as the gateway stops is refused (503) rather than starting
    a runner and a store that nothing would close."""
    served = await serve({"long": LONG}, latency=SLOW_ECHO)
    started = await served.start("long", {})
    await served.workflows.stop()
    response = await served.http.get(f"/api/v1/executions/{started['id']}")
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "store_unavailable"
    assert served.workflows._runner is None and served.workflows._store is None


SLOW_CALL = """
input: {type: object}
steps:
  only: {kind: llm, model: fast, prompt: "one two three four five six seven eight"}
output: "{{ steps.only }}"
"""


async def test_a_model_call_cut_by_a_stop_is_recorded_as_cancelled(serve: Serve) -> None:
    """Stopped mid-call, the call's hold is given back and its ledger record written
    then (status 499), not left to expire unrecorded."""
    served = await serve({"slow": SLOW_CALL}, latency=SLOW_ECHO)  # 8 tokens: 640 ms
    started = await served.start("slow", {})
    for _ in range(500):
        if any(e["type"] == "step_started" for e in await served.events(started["id"])):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # the model call is under way
    await served.workflows.stop()
    spend = await served.http.get("/admin/spend?group_by=route")
    assert spend.status_code == 200, spend.text
    rows = spend.json()["data"]
    assert [(row["route"], row["requests"], row["errors"]) for row in rows] == [("fast", 1, 1)]


async def test_a_call_cut_by_its_steps_timeout_counts_in_the_executions_totals(
        serve: Serve) -> None:
    """Cut short after it went out, the call is billed an estimate (an ``estimated``
    ledger record, charged to the budget), which the execution's totals showed as 0."""
    timed = SLOW_CALL.replace('eight"}', 'eight", timeout_s: 0.3}')
    served = await serve({"slow": timed}, latency=SLOW_ECHO)  # 8 tokens: 640 ms
    body = await served.run("slow", {})
    execution = await served.get(body["execution"])
    assert execution["status"] == "failed" and "timed out" in execution["error"]
    await served.assert_totals_are_the_ledgers(execution)
    assert (await served.spend())["estimated_cost"] == pytest.approx(execution["cost"])
    [call] = [e["data"] for e in await served.events(body["execution"])
              if e["type"] == "model_call"]
    assert call["estimated"] is True and call["cost"] == execution["cost"], call


async def test_a_hedges_loser_counts_in_the_executions_totals(serve: Serve) -> None:
    """The answer's call was counted, not the hedge it raced and cut short, which the
    ledger bills (an ``estimated`` record, settled with it to the budget)."""
    raced = SLOW_CALL.replace("model: fast", "model: raced")
    served = await serve(
        {"slow": raced}, latency=SLOW_ECHO,
        deployments="  twin: {provider: local, model: cheap-1, context_window: 100000, "
                    "price: {input: 1000000, output: 1000000}}",
        groups="  twins: {members: [cheap, twin]}",
        extra_routes="  raced: {group: twins, hedge_after_ms: 100}")
    body = await served.run("slow", {})
    assert body["status"] == "succeeded", body
    execution = await served.get(body["execution"])
    await served.assert_totals_are_the_ledgers(execution)
    assert 0 < (await served.spend())["estimated_cost"] < execution["cost"]
    [call] = [e["data"] for e in await served.events(body["execution"])
              if e["type"] == "model_call"]
    assert call["estimated"] is True and "failed" not in call, call
    assert execution["usage"]["model_calls"] == 1


RETRIED = """
input: {type: object}
steps:
  only: {kind: llm, model: fast, prompt: "hi", retries: 3}
output: "{{ steps.only }}"
"""


async def test_a_step_failed_for_good_before_a_crash_is_not_tried_again(
    serve: Serve, store_options: dict[str, Any]
) -> None:
    """A runner that recorded step_failed and died before execution_failed: the next one
    started the step again (a fresh attempt, though the failure was not retryable), so
    the execution could succeed past a failure it had already recorded."""
    served = await serve({"retried": RETRIED}, **store_options)
    error = "model 'fast': the request was refused"
    execution_id = await served.left_by_a_crash("retried", Checkpoint(
        steps=(StepState("only", StepStatus.FAILED, 1, error=error, started_at=1.0,
                         finished_at=2.0),),
        events=(NewEvent("step_failed", "only", {"attempt": 1, "error": error}),)))
    done = await served.wait_for(execution_id, lambda e: e["status"] in ("failed", "succeeded"))
    assert (done["status"], done["error"]) == ("failed", f"step 'only' failed: {error}")
    assert (await served.steps(execution_id))["only"]["attempts"] == 1
    events = [e["type"] for e in await served.events(execution_id)]
    assert "step_started" not in events and "model_call" not in events


# Retried, and with a timeout shorter than the store's outage: neither may lead to a
# second call for the answer the store failed to save.
SAVED = """
input: {type: object}
steps:
  only: {kind: llm, model: fast, prompt: "hi", retries: 2, timeout_s: 0.5}
output: "{{ steps.only }}"
"""
OUTAGE_S = 1.0
ASK_STUCK = """
input: {type: object}
steps:
  ask: {kind: agent, agent: stuck, prompt: "hi", timeout_s: 30}
output: "{{ steps.ask }}"
"""
ASK_SLOW = ASK_STUCK.replace("agent: stuck", "agent: slow")


class _Outage:
    """``AfterAnswer``'s ``then``: the store goes out (``begin``, run in a thread) as the
    first answer is in, before the run saves it, and is back ``OUTAGE_S`` later
    (``end``; with none, the test brings it back)."""

    def __init__(self, begin: Callable[[], None], end: Callable[[], None] | None = None):
        self.begin = begin
        self.end = end
        self.began = asyncio.Event()
        self.over: asyncio.Task[None] | None = None

    async def __call__(self, _execution_id: str) -> None:
        if self.began.is_set():
            return
        await asyncio.to_thread(self.begin)
        self.began.set()
        if self.end is not None:
            self.over = asyncio.create_task(self._back(self.end))

    async def _back(self, end: Callable[[], None]) -> None:
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(end)


async def _check_saved_once(served: Served, models: AfterAnswer, outage: _Outage) -> None:
    """The execution succeeds with its one answer, saved once the store is back."""
    started = await served.start("saved", {})
    await asyncio.wait_for(outage.began.wait(), 5)
    assert outage.over is not None
    await outage.over  # the store is back
    url = f"/api/v1/executions/{started['id']}"
    done = await _read_back(served, url, lambda e: e["status"] in ("failed", "succeeded"))
    assert (done["status"], done["output"]) == ("succeeded", "hi"), done
    assert models.calls == 1 and done["usage"]["model_calls"] == 1
    events = (await _read_back(served, f"{url}/events"))["data"]
    assert [e["data"]["key"] for e in events if e["type"] == "model_call"] == ["only@1#0"]
    steps = (await _read_back(served, f"{url}/steps"))["data"]
    assert [(state["step"], state["attempts"]) for state in steps] == [("only", 1)]
    assert await served.workflows.unsaved.executions() == ()  # not left on disk


async def _read_back(served: Served, url: str,
                     check: Callable[[dict[str, Any]], bool] = bool) -> dict[str, Any]:
    """GET ``url`` until ``check`` holds. After an outage a client's connections made
    before it fail once each as they are used again (a 503), then it is back."""
    for _ in range(500):
        answer = await served.http.get(url)
        assert answer.status_code in (200, 503), answer.text
        if answer.status_code == 200:
            body: dict[str, Any] = answer.json()
            if check(body):
                return body
        await asyncio.sleep(0.02)
    raise AssertionError(f"gave up on {url}: {answer.text}")


def _stop_redis(server: PrivateRedis) -> None:
    with closing(redis.Redis.from_url(server.url)) as client:
        client.save()  # what it holds comes back with it
    server.stop()


async def test_an_answer_the_embedded_store_fails_to_save_is_not_asked_for_again(
    serve: Serve, tmp_path: Path
) -> None:
    """A store failing to save a model's answer was a retryable failure of the step: the
    model was called again (billed again) for the same work, while the step timed out."""
    file = tmp_path / "gw0" / "aigw.sqlite"
    outage = _Outage(partial(refuse_memos, file, True), partial(refuse_memos, file, False))
    models = AfterAnswer(outage)
    served = await serve({"saved": SAVED}, models=models)
    await _check_saved_once(served, models, outage)


async def test_on_redis_an_answer_in_as_the_server_stops_is_saved_once_it_is_back(
    serve: Serve, private_redis: PrivateRedis
) -> None:
    outage = _Outage(partial(_stop_redis, private_redis), private_redis.start_on_same_port)
    models = AfterAnswer(outage)
    served = await serve({"saved": SAVED}, models=models, store=private_redis.url,
                         namespace="aigw-test-saved")
    await _check_saved_once(served, models, outage)


async def _stopped_unsaved(served: Served, outage: _Outage | asyncio.Event,
                           pipeline: str = "saved") -> str:
    """Start ``pipeline`` and stop the runner while the store is out with its answer (or
    task) unsaved (once the gateway keeps it on disk, or a second has passed)."""
    started = await served.start(pipeline, {})
    began = outage.began if isinstance(outage, _Outage) else outage
    await asyncio.wait_for(began.wait(), 5)
    for _ in range(100):
        if any(served.workflows.unsaved.folder.glob("*.json")):
            break
        await asyncio.sleep(0.01)
    await served.workflows.stop()
    execution_id: str = started["id"]
    return execution_id


def _answers(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["data"]["key"]) for e in events if e["type"].startswith("model_")]


async def test_an_answer_left_unsaved_by_a_runner_that_stopped_is_not_asked_for_again(
    serve: Serve, tmp_path: Path
) -> None:
    """Held in memory only while the store was out, the answer was lost with a runner
    stopped before the store was back: the next one called the model again, paying
    twice, and the execution counted one call."""
    file = tmp_path / "gw0" / "aigw.sqlite"
    outage = _Outage(partial(refuse_memos, file, True))
    models = AfterAnswer(outage)
    served = await serve({"saved": SAVED}, models=models)
    execution_id = await _stopped_unsaved(served, outage)
    await asyncio.to_thread(refuse_memos, file, False)
    second = served.with_new_runner(models)
    try:
        done = await second.wait_for(execution_id, lambda e: e["status"] in ("failed",
                                                                             "succeeded"))
        assert (done["status"], done["output"]) == ("succeeded", "hi"), done
        assert models.calls == 1 and done["usage"]["model_calls"] == 1
        assert _answers(await second.events(execution_id)) == [
            ("model_call", "only@1#0"), ("model_answer_recovered", "only@1#0")]
        assert await second.workflows.unsaved.executions() == ()
    finally:
        await second.aclose()


async def test_an_agents_task_left_unsaved_by_a_runner_that_stopped_is_not_sent_again(
    serve: Serve, tmp_path: Path
) -> None:
    """Held in memory only while the store was out, the task memo was lost with a runner
    stopped before the store was back: the next one sent the message again, and the
    agent did the work twice. (Kept in the folder settings.unsaved_dir names.)"""
    file = tmp_path / "gw0" / "aigw.sqlite"
    began = asyncio.Event()
    loop = asyncio.get_running_loop()

    def outage(_agent: str, _message_id: str) -> None:  # as the agent takes the message
        refuse_memos(file, True)
        loop.call_soon_threadsafe(began.set)

    port = free_port()
    seen = Seen(on_message=outage)
    with serving(a2a_agents(f"http://127.0.0.1:{port}", seen), port=port) as base:
        served = await serve({"ask": ASK_SLOW}, agents=f"slow: {{url: '{base}/slow/'}}",
                             settings="  unsaved_dir: spill/memos")
        execution_id = await _stopped_unsaved(served, began, "ask")
        assert len(list((served.root / "spill" / "memos").glob(f"{execution_id}.*.json"))) == 1
        seen.on_message = None
        await asyncio.to_thread(refuse_memos, file, False)
        second = served.with_new_runner()
        try:
            done = await second.wait_for(execution_id, lambda e: e["status"] in (
                "failed", "succeeded"))
            events = await second.events(execution_id)
        finally:
            await second.aclose()
    assert done["output"].startswith("report on hi"), done
    assert seen.messages == [("slow", f"{execution_id}/ask@1")]
    [task] = [e["data"] for e in events if e["type"] == "agent_task"]
    assert [(e["type"], e["data"]) for e in events if e["type"] == "agent_task_recovered"] \
        == [("agent_task_recovered", {"key": "ask@1#task"})]
    assert seen.cancelled == [] and task["agent"] == "slow"
    assert await served.workflows.unsaved.executions() == ()


async def test_an_answer_left_on_disk_but_saved_goes_while_its_execution_waits_here(
    serve: Serve,
) -> None:
    """A file left by a try cancelled after a save that went through unanswered: the
    sweep passed over executions its runner held, so it stayed as long as the execution
    waited for an approval (a run's own saves drop theirs; it reads the folder only as
    it starts)."""
    served = await serve({"publish": approval_pipeline()})
    started = await served.start("publish", {"text": "hello"})
    execution_id = started["id"]
    await served.wait_for(execution_id, lambda e: e["status"] == "waiting")
    store = await served.workflows.store()
    saved = (await store.memos(execution_id))["draft@1#0"]
    memo = Memo("draft@1#0", saved, 2.0, 1, 1, model_call=True)
    assert await served.workflows.unsaved.put(execution_id, memo, NewEvent(
        "model_call", "draft", {"key": "draft@1#0"}))
    for _ in range(300):  # the sweep runs once a lease period (2 s here)
        if not await served.workflows.unsaved.executions():
            break
        await asyncio.sleep(0.02)
    assert await served.workflows.unsaved.executions() == ()
    done = await served.get(execution_id)
    assert (done["status"], done["usage"]["model_calls"]) == ("waiting", 1)
    assert not [e for e in await served.events(execution_id) if e["type"].startswith("model_a")]


async def test_a_folder_for_unsaved_answers_that_cannot_be_written_is_a_warning_at_start(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    served = await serve({"saved": SAVED}, settings="  unsaved_dir: gateway.yaml/unsaved")
    with caplog.at_level(logging.WARNING, logger="aigw.workflows"):
        done = await served.run("saved", {})
    assert done["output"] == "hi"  # the runner runs all the same
    [warning] = [record.getMessage() for record in caplog.records
                 if "cannot keep unsaved answers" in record.getMessage()]
    assert warning.startswith(
        f"workflows: cannot keep unsaved answers in {served.root / 'gateway.yaml/unsaved'} ")
    assert "(settings.unsaved_dir names a writable folder)" in warning


async def test_on_redis_an_answer_left_unsaved_is_recorded_when_another_replica_asked_again(
    serve: Serve, private_redis: PrivateRedis
) -> None:
    """The replica that resumes the execution cannot read what the stopped one kept, and
    calls the model again; the call left unsaved is recorded (its cost counted, an event
    naming it) once the stopped replica is back. It was not recorded at all: the
    execution read one call of two paid for."""
    outage = _Outage(partial(_stop_redis, private_redis))
    models = AfterAnswer(outage)
    options = {"models": models, "store": private_redis.url, "namespace": "aigw-test-lost"}
    first = await serve({"saved": SAVED}, **options)
    execution_id = await _stopped_unsaved(first, outage)
    await asyncio.to_thread(private_redis.start_on_same_port)
    other = await serve({"saved": SAVED}, **options)  # a gateway of its own: another root
    url = f"/api/v1/executions/{execution_id}"
    done = await _read_back(other, url, lambda e: e["status"] in ("failed", "succeeded"))
    assert (done["status"], done["usage"]["model_calls"], models.calls) == ("succeeded", 1, 2)
    back = first.with_new_runner()
    try:
        counted = await _read_back(back, url, lambda e: e["usage"]["model_calls"] == 2)
        assert counted["cost"] == 2 * done["cost"] and counted["status"] == "succeeded"
        events = (await _read_back(back, f"{url}/events"))["data"]
        assert _answers(events) == [("model_call", "only@1#0"),
                                    ("model_answer_lost", "only@1#0")]
        lost = events[-1]["data"]
        assert lost["request"].startswith("chatcmpl-") and lost["cost"] == done["cost"]
        assert await back.workflows.unsaved.executions() == ()
    finally:
        await back.aclose()


async def test_on_redis_replicas_sharing_the_unsaved_folder_recover_each_others_answers(
    serve: Serve, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """A replica that never comes back: with a folder of its own, its answer is never
    recorded and another replica calls the model again; with one they share, the
    replica that resumes the execution saves it and calls nothing."""
    outage = _Outage(partial(_stop_redis, private_redis))
    models = AfterAnswer(outage)
    shared = tmp_path / "shared-unsaved"
    options = {"models": models, "store": private_redis.url, "namespace": "aigw-test-share",
               "settings": f"  unsaved_dir: {shared}"}
    gone = await serve({"saved": SAVED}, **options)
    execution_id = await _stopped_unsaved(gone, outage)
    await asyncio.to_thread(private_redis.start_on_same_port)
    other = await serve({"saved": SAVED}, **options)  # another root, the same folder
    url = f"/api/v1/executions/{execution_id}"
    done = await _read_back(other, url, lambda e: e["status"] in ("failed", "succeeded"))
    assert (done["status"], done["output"], models.calls) == ("succeeded", "hi", 1), done
    events = (await _read_back(other, f"{url}/events"))["data"]
    assert _answers(events) == [("model_call", "only@1#0"),
                                ("model_answer_recovered", "only@1#0")]
    assert await other.workflows.unsaved.executions() == ()


async def test_on_redis_an_answer_the_store_refuses_fails_the_step_without_another_call(
    serve: Serve, redis_url: str, namespace: str
) -> None:
    """Redis refusing the save itself (a key of the wrong type), as it would again."""
    async def break_memos(execution_id: str) -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await client.set(f"{namespace}:wf:x:{execution_id}:memo", "not a hash")
        finally:
            await client.aclose()

    models = AfterAnswer(break_memos)
    served = await serve({"saved": SAVED}, models=models, store=redis_url, namespace=namespace)
    started = await served.start("saved", {})
    done = await served.wait_for(started["id"], lambda e: e["status"] in ("failed",
                                                                          "succeeded"))
    assert done["error"] == ("step 'only' failed: model 'fast' answered, but the store did not "
                             "keep the answer: The executions store (redis) refused a call; "
                             "the error is logged.")
    assert models.calls == 1
    assert (await served.steps(started["id"]))["only"]["attempts"] == 1


async def test_on_redis_an_agents_task_the_store_refuses_fails_the_step_and_is_cancelled(
    serve: Serve, redis_url: str, namespace: str
) -> None:
    """The store refusing to keep the task an agent made: nobody will poll it. The error
    escaped the step as an internal error, and the task ran on at the agent."""
    def break_memos(_agent: str, message_id: str) -> None:
        execution_id = message_id.split("/")[0]
        with closing(redis.Redis.from_url(redis_url)) as client:
            client.set(f"{namespace}:wf:x:{execution_id}:memo", "not a hash")

    port = free_port()
    seen = Seen(on_message=break_memos)
    with serving(a2a_agents(f"http://127.0.0.1:{port}", seen), port=port) as base:
        served = await serve({"ask": ASK_STUCK}, store=redis_url, namespace=namespace,
                             agents=f"stuck: {{url: '{base}/stuck/'}}")
        started = await served.start("ask", {})
        done = await served.wait_for(started["id"], lambda e: e["status"] in ("failed",
                                                                              "succeeded"))
        [cancel] = [event["data"] for event in await served.events(started["id"])
                    if event["type"] == "agent_task_cancel"]
    assert done["error"] == (f"step 'ask' failed: agent 'stuck' made task {cancel['task']!r}, "
                             "but the store did not keep it: The executions store (redis) "
                             "refused a call; the error is logged.")
    assert seen.cancelled == [("stuck", cancel["task"])]
    assert cancel["state"] == "canceled"
