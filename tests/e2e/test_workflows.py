"""Pipelines through a real ``aigw serve``: follow, approve, pause, kill -9, fail over.

Each test writes a gateway directory whose echo provider is slowed down (per token), so
an execution is reliably in the middle of a step when it is paused or killed.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from aigw.compiler.keys import shown_moment

from ..conftest import DEV_KEY
from ..fakes.serve import serving
from ..fakes.side_effects import SideEffects
from ..pipelines.conftest import ALICE_KEY, gateway_config
from ..redis_server import PrivateRedis
from .server import Server
from .ws import WebSocketClient, WebSocketClosed

pytestmark = pytest.mark.e2e

AUTH = {"authorization": f"Bearer {DEV_KEY}"}

APPROVAL = """
input: {type: object, required: [text]}
steps:
  draft: {kind: llm, model: fast, prompt: "{{ input.text }}"}
  sign_off:
    kind: approval
    needs: [draft]
    message: "Publish '{{ steps.draft }}'?"
    timeout_s: 60
  publish: {kind: transform, needs: [sign_off], expression: "'published: ' + steps.draft"}
output: "{{ steps.publish }}"
"""

# Five sequential model calls of a few hundred milliseconds each (80 ms per token).
CHAIN = """
input: {type: object}
steps:
  s1: {kind: llm, model: fast, prompt: "one two three"}
  s2: {kind: llm, model: fast, needs: [s1], prompt: "{{ steps.s1 }} four"}
  s3: {kind: llm, model: smart, needs: [s2], prompt: "{{ steps.s2 }} five"}
  s4: {kind: llm, model: fast, needs: [s3], prompt: "{{ steps.s3 }} six"}
  s5: {kind: llm, model: smart, needs: [s4], prompt: "{{ steps.s4 }} seven"}
output: "{{ steps.s5 }}"
"""
CHAIN_OUTPUT = "one two three four five six seven"
SLOW = ", latency: {per_token_ms: 80}"

# Eight sequential model calls, each answer a word longer: about four seconds in all.
LONG_CHAIN = "".join((
    'input: {type: object}\nsteps:\n  t1: {kind: llm, model: fast, prompt: "a b c"}\n',
    *(f"  t{n}: {{kind: llm, model: fast, needs: [t{n - 1}], "
      f'prompt: "{{{{ steps.t{n - 1} }}}} w"}}\n' for n in range(2, 9)),
    'output: "{{ steps.t8 }}"\n'))


def _gateway(root: Path, pipelines: dict[str, str], store: str = "embedded",
             extra_routes: str = "") -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "gateway.yaml").write_text(gateway_config(store, extra_routes, latency=SLOW))
    for name, text in pipelines.items():
        (root / "pipelines" / f"{name}.yaml").write_text(text)
    return root


@pytest.fixture
def started() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(root: Path, *args: str) -> Server:
        server = Server(root, *args)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


def _post(server: Server, path: str, body: Any = None) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, headers=AUTH, timeout=30)


def _get(server: Server, path: str) -> Any:
    response = httpx.get(f"{server.base_url}{path}", headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _wait(server: Server, execution_id: str, check: Callable[[dict[str, Any]], bool],
          timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        execution: dict[str, Any] = _get(server, f"/api/v1/executions/{execution_id}")
        if check(execution):
            return execution
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; last seen {execution}\n{server.log}")
        time.sleep(0.05)


def _events(server: Server, execution_id: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = _get(server, f"/api/v1/executions/{execution_id}/events")["data"]
    return data


def _start(server: Server, pipeline: str, given: Any) -> str:
    response = _post(server, "/api/v1/executions", {"pipeline": pipeline, "input": given})
    assert response.status_code == 201, response.text
    execution_id: str = response.json()["id"]
    return execution_id


def test_follow_an_execution_over_websocket_and_approve_its_waiting_step(
    tmp_path: Path, started: Callable[..., Server]
) -> None:
    server = started(_gateway(tmp_path / "gw", {"publish": APPROVAL}))
    execution_id = _start(server, "publish", {"text": "hello world"})
    with pytest.raises(WebSocketClosed):  # a bad key is refused at the handshake
        WebSocketClient(server.port, f"/ws/executions/{execution_id}", "sk-wrong")
    seen: list[tuple[str, str | None]] = []
    with WebSocketClient(server.port, f"/ws/executions/{execution_id}", DEV_KEY) as ws:
        while True:
            event = ws.receive_json()
            seen.append((event["type"], event["step"]))
            if event["type"] == "step_waiting":
                assert event["data"]["message"] == "Publish 'hello world'?"
                approved = _post(server, f"/api/v1/executions/{execution_id}/approvals",
                                 {"decision": "approve", "comment": "looks good"})
                assert approved.status_code == 200, approved.text
            if event["type"] == "end":
                assert event["status"] == "succeeded"
                break
    assert seen[0] == ("execution_started", None)
    assert ("model_call", "draft") in seen
    assert seen.index(("step_waiting", "sign_off")) < seen.index(("approval_decided", "sign_off"))
    assert seen[-2:] == [("execution_succeeded", None), ("end", None)]
    final = _get(server, f"/api/v1/executions/{execution_id}")
    assert final["output"] == "published: hello world"
    # A client that joins late gets the whole history, then the end.
    with WebSocketClient(server.port, f"/ws/executions/{execution_id}?after=0",
                         DEV_KEY) as late:
        replay = []
        while (event := late.receive_json())["type"] != "end":
            replay.append((event["type"], event["step"]))
    assert replay == seen[:-1]


def test_pause_and_resume_a_running_execution(
    tmp_path: Path, started: Callable[..., Server]
) -> None:
    server = started(_gateway(tmp_path / "gw", {"chain": CHAIN}))
    execution_id = _start(server, "chain", {})
    _wait(server, execution_id, lambda e: e["usage"]["model_calls"] >= 1)
    assert _post(server, f"/api/v1/executions/{execution_id}/pause").status_code == 202
    paused = _wait(server, execution_id, lambda e: e["status"] == "paused")
    calls_when_paused = paused["usage"]["model_calls"]
    time.sleep(1.0)
    assert _get(server, f"/api/v1/executions/{execution_id}")["usage"]["model_calls"] == \
        calls_when_paused
    assert _post(server, f"/api/v1/executions/{execution_id}/resume").status_code == 202
    done = _wait(server, execution_id, lambda e: e["status"] == "succeeded")
    assert done["output"] == CHAIN_OUTPUT
    assert done["usage"]["model_calls"] == 5


def _assert_each_call_once(events: list[dict[str, Any]]) -> None:
    keys = Counter(e["data"]["key"] for e in events if e["type"] == "model_call")
    assert sorted(keys) == [f"s{n}@1#0" for n in range(1, 6)], keys
    assert set(keys.values()) == {1}
    succeeded = Counter(e["step"] for e in events if e["type"] == "step_succeeded")
    assert succeeded == {f"s{n}": 1 for n in range(1, 6)}


def test_kill_9_mid_run_then_restart_finishes_without_repeating_a_step(
    tmp_path: Path, started: Callable[..., Server]
) -> None:
    root = _gateway(tmp_path / "gw", {"chain": CHAIN})
    server = started(root)
    execution_id = _start(server, "chain", {})
    _wait(server, execution_id, lambda e: e["usage"]["model_calls"] >= 2)
    server.signal(signal.SIGKILL)
    server.process.wait(timeout=10)
    restarted = started(root)
    done = _wait(restarted, execution_id, lambda e: e["status"] == "succeeded")
    assert done["output"] == CHAIN_OUTPUT
    events = _events(restarted, execution_id)
    _assert_each_call_once(events)
    started_steps = Counter(e["step"] for e in events if e["type"] == "step_started")
    assert started_steps["s1"] == 1 and started_steps["s2"] == 1  # done before the kill
    assert [e["type"] for e in events].count("execution_resumed") == 1


def test_two_replicas_on_redis_one_killed_the_other_finishes(
    tmp_path: Path, started: Callable[..., Server]
) -> None:
    redis_server = PrivateRedis(tmp_path)
    redis_server.start()
    try:
        root = _gateway(tmp_path / "gw", {"chain": CHAIN}, store=redis_server.url)
        replicas = [started(root), started(root)]
        execution_id = _start(replicas[0], "chain", {})
        running = _wait(replicas[0], execution_id,
                        lambda e: e["runner"] is not None and e["usage"]["model_calls"] >= 1)
        pid = int(running["runner"].split(":")[1])
        victim = next(server for server in replicas if server.process.pid == pid)
        survivor = next(server for server in replicas if server is not victim)
        victim.signal(signal.SIGKILL)
        victim.process.wait(timeout=10)
        done = _wait(survivor, execution_id, lambda e: e["status"] == "succeeded")
        assert done["output"] == CHAIN_OUTPUT
        events = _events(survivor, execution_id)
        _assert_each_call_once(events)
        runners = [e["data"]["runner"] for e in events
                   if e["type"] in ("execution_started", "execution_resumed")]
        assert len(runners) == 2 and runners[0] == running["runner"] != runners[1]
        assert int(runners[1].split(":")[1]) == survivor.process.pid
    finally:
        redis_server.stop()


def _side_effects(tool: str) -> str:
    """A pipeline of three http steps, each a side effect the tool server counts; the
    middle one is held (its first call) until the test lets it go."""
    return f"""
input: {{type: object}}
steps:
  before: {{kind: http, method: POST, url: "{tool}/effect/before"}}
  during: {{kind: http, method: POST, needs: [before], url: "{tool}/hold/during",
           timeout_s: 60}}
  after: {{kind: http, method: POST, needs: [during], url: "{tool}/effect/after"}}
output: "{{{{ steps.after }}}}"
"""


def test_a_killed_replicas_execution_is_resumed_by_one_of_two_racing_for_its_lease(
    tmp_path: Path,
) -> None:
    """Three replicas on one Redis; the one running an execution is killed (-9) in the
    middle of a step. Once its lease has run out, the two left race for it: one resumes
    it, the other does nothing with it. The steps done before the kill are not done
    again; the step cut by the kill is sent again (its answer was never saved: a step
    is at least once, as the design says; model calls, memoized, are never repeated),
    once, by the replica that won; the step after it, once."""
    side = SideEffects()
    redis_server = PrivateRedis(tmp_path)
    redis_server.start()
    replicas: list[Server] = []
    try:
        with serving(side.app()) as tool:
            root = _gateway(tmp_path / "gw", {"effects": _side_effects(tool)},
                            store=redis_server.url)
            replicas = [Server(root) for _ in range(3)]
            for replica in replicas:  # three at once on a shared machine: slow to start
                replica.wait_ready(timeout=120)
            execution_id = _start(replicas[0], "effects", {})
            assert side.holding.wait(30), "the held step was never called"
            running = _get(replicas[0], f"/api/v1/executions/{execution_id}")
            victim = next(server for server in replicas
                          if server.process.pid == int(running["runner"].split(":")[1]))
            survivors = [server for server in replicas if server is not victim]
            victim.kill()
            killed_at = time.time()
            side.released.set()  # the held call answers a gateway that is gone
            done = _wait(survivors[0], execution_id, lambda e: e["status"] == "succeeded")
        assert done["output"] == {"done": "/effect/after"}
        assert side.calls == {"/effect/before": 1, "/hold/during": 2, "/effect/after": 1}
        events = _events(survivors[0], execution_id)
        runs = [e for e in events if e["type"] in ("execution_started", "execution_resumed")]
        assert [e["type"] for e in runs] == ["execution_started", "execution_resumed"]
        assert runs[0]["data"]["runner"] == running["runner"]
        winner = int(runs[1]["data"]["runner"].split(":")[1])
        assert winner in {server.process.pid for server in survivors}
        # Not before the lease ran out: 2 s from the victim's last renewal (a third of
        # a lease at most before the kill).
        assert runs[1]["at"] - killed_at >= 2 * 2 / 3 - 0.2, (runs[1]["at"], killed_at)
        succeeded = Counter(e["step"] for e in events if e["type"] == "step_succeeded")
        assert succeeded == {"before": 1, "during": 1, "after": 1}
    finally:
        for replica in replicas:
            replica.stop()
        redis_server.stop()


def test_the_four_templates_complete_offline(server: Server) -> None:
    inputs = {
        "research": {"topic": "vector databases"},
        "coding": {"task": "reverse a string"},
        "data_analysis": {"question": "What sold best?"},
        "document_analysis": {"document": "A letter from Ada to Charles."},
    }
    for name, given in inputs.items():
        response = _post(server, f"/v1/pipelines/{name}", given)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "succeeded", name
    costs = _get(server, "/api/v1/costs/summary")["data"]
    assert sorted(row["pipeline"] for row in costs) == sorted(inputs)


def test_an_sdk_that_gives_up_on_a_pipeline_chat_leaves_no_run_behind(
    tmp_path: Path, started: Callable[..., Server]
) -> None:
    """The stock OpenAI SDK times out, closes the connection and tries again, twice, with
    no Idempotency-Key: each try started a run that went on for nobody (three runs of
    the pipeline for one question, each waiting for its approval)."""
    server = started(_gateway(tmp_path / "gw", {"publish": APPROVAL},
                              extra_routes="  publish: {pipeline: publish}"))
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=DEV_KEY, timeout=1.5,
                           max_retries=2)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="publish", messages=[
            {"role": "user", "content": '{"text": "hello"}'}])
    executions = _get(server, "/api/v1/executions")["data"]
    assert len(executions) == 3  # one a try
    for execution in executions:  # each cancelled once its client went away
        _wait(server, execution["id"], lambda e: e["status"] == "cancelled", timeout=5)


def test_a_client_that_stops_waiting_for_a_pipeline_ends_only_its_wait(
    tmp_path: Path, started: Callable[..., Server]
) -> None:
    """POST /v1/pipelines/{name} waited all its wait_s (any number: 1e999 was for ever)
    for a client long gone, polling the store: a thousand such waits held half a core.
    Now wait_s is a number from 0 to 300, and the wait ends with its client (a 499 in
    the access log); the execution runs on, for GET /api/v1/executions/{id}. Each
    refusal carries the id of its access-log line (``x-request-id``)."""
    server = started(_gateway(tmp_path / "gw", {"publish": APPROVAL}))
    refused_ids = []
    for wait_s in ("1e999", "inf", "nan", "-1", "soon"):
        refused = httpx.post(f"{server.base_url}/v1/pipelines/publish?wait_s={wait_s}",
                             json={"text": "hello"}, headers=AUTH, timeout=5)
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "wait_s"
        refused_ids += refused.headers.get_list("x-request-id")
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(f"{server.base_url}/v1/pipelines/publish?wait_s=300",
                   json={"text": "hello"}, headers=AUTH, timeout=1)
    deadline = time.monotonic() + 5
    while len(lines := _access_lines(server, "pipelines")) < 6:
        assert time.monotonic() < deadline, f"the wait went on:\n{server.log}"
        time.sleep(0.05)
    assert [(line["route"], line["status"], line["error"]) for line in lines] == [
        (None, 400, "invalid_request")] * 5 + [("pipeline:publish", 499, "cancelled")]
    assert [line["request_id"] for line in lines[:5]] == refused_ids
    (execution,) = _get(server, "/api/v1/executions")["data"]
    assert execution["status"] == "waiting"  # for its approval: the run goes on


def _access_lines(server: Server, endpoint: str) -> list[dict[str, Any]]:
    return [line for line in map(json.loads, (text for text in server.log.splitlines()
                                              if text.startswith("{")))
            if line.get("endpoint") == endpoint]


def test_an_expired_keys_execution_fails_its_next_step_as_its_batch_lines_are_refused(
    tmp_path: Path, started: Callable[..., Server]
) -> None:
    """A reload gives 'alice' an ``expires`` a second or two away while her executions
    run: the chain fails the step it is at with KeyExpired's message (its model calls
    went on as the key's before), and one waiting for an approval stops after the
    decision. Approvals wait on: a reload may move the key's ``expires`` again."""
    root = _gateway(tmp_path / "gw", {"chain": LONG_CHAIN, "publish": APPROVAL})
    server = started(root)
    alice = {"authorization": f"Bearer {ALICE_KEY}"}
    ids = []
    for pipeline, given in (("chain", {}), ("publish", {"text": "hello"})):
        response = httpx.post(f"{server.base_url}/api/v1/executions", headers=alice,
                              json={"pipeline": pipeline, "input": given}, timeout=30)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    chain, publish = ids
    _wait(server, publish, lambda e: e["status"] == "waiting")
    _wait(server, chain, lambda e: e["usage"]["model_calls"] >= 1)
    expires = int(time.time()) + 2
    config = root / "gateway.yaml"
    config.write_text(config.read_text().replace(
        "alice: {team: eng, ", f"alice: {{team: eng, expires: '{shown_moment(expires)}', "))
    reloaded = httpx.post(f"{server.base_url}/admin/reload", headers=AUTH, timeout=30)
    assert reloaded.status_code == 200, reloaded.text
    expired = f"the API key 'alice' expired at {shown_moment(expires)}."

    failed = _wait(server, chain, lambda e: e["status"] in ("failed", "succeeded"))
    assert failed["status"] == "failed", failed
    assert failed["usage"]["model_calls"] < 8, failed
    step = next(e for e in _events(server, chain) if e["type"] == "step_failed")
    assert step["data"]["error"] == expired, step
    assert failed["error"] == f"step '{step['step']}' failed: {expired}", failed

    while time.time() < expires + 0.2:
        time.sleep(0.05)
    decided = _post(server, f"/api/v1/executions/{publish}/approvals", {"decision": "approve"})
    assert decided.status_code == 200, decided.text
    stopped = _wait(server, publish, lambda e: e["status"] in ("failed", "succeeded"))
    assert (stopped["status"], stopped["error"]) == (
        "failed", f"stopped after the decision on 'sign_off': {expired}"), stopped
    assert stopped["usage"]["model_calls"] == 1  # the draft, before the key expired
