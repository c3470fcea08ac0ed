"""``agent`` steps through a real ``aigw serve``, calling real A2A agents (a2a-sdk) on loopback.

One gateway and one agents' server for the module: each test runs a pipeline with
``POST /v1/pipelines/{name}`` and reads its output, or the error it failed with.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import DEV_KEY
from ..fakes.a2a_agents import Seen, a2a_agents
from ..fakes.serve import free_port, serving
from ..pipelines.conftest import BOT_KEY, gateway_config, refuse_memos
from ..pipelines.test_approvals import EVERYTHING
from .server import Server

pytestmark = pytest.mark.e2e

AGENT_KEY = "a2a-secret-token-123"
ODD_KEY = "s\u00e9same-token-123"  # not ASCII: no HTTP client sends it as meant
# Everything is permitted but the echo agent to key bot (team ops).
POLICIES = EVERYTHING + ('@id("ops-may-not-ask-echo")\nforbid (principal in Team::"ops", '
                         'action == Action::"invoke", resource == Agent::"echo");\n')


def _ask(agent: str, output: str = "text", timeout_s: float = 20) -> str:
    return f"""
input: {{type: object, required: [topic], properties: {{topic: {{type: string}}}}}}
steps:
  ask:
    kind: agent
    agent: {agent}
    prompt: "Tell me about {{{{ input.topic }}}}"
    output: {output}
    timeout_s: {timeout_s}
output: "{{{{ steps.ask }}}}"
"""


PIPELINES = {
    "ask-echo": _ask("echo"),
    "ask-slow": _ask("slow"),
    "ask-slow-json": _ask("slow", output="json"),
    "ask-broken": _ask("broken"),
    "ask-curious": _ask("curious"),
    "ask-stuck": _ask("stuck", timeout_s=1),
    "ask-stuck-long": _ask("stuck", timeout_s=60),
    "ask-patient": _ask("patient", timeout_s=60),
    "ask-mover": _ask("mover"),
    # stuck's task is made (at once) before broken fails its own, 0.6 s in
    "ask-stuck-beside-broken": _ask("stuck", timeout_s=60).replace("\noutput:", """
  beside:
    kind: agent
    agent: broken
    prompt: "Index {{ input.topic }}"
output:"""),
    "ask-leaky": _ask("leaky"),
    "ask-tattler": _ask("tattler"),
    "ask-garbled": _ask("garbled", timeout_s=30).replace("    timeout_s:", """    retries: 1
    backoff_ms: 10
    timeout_s:"""),
    "ask-elsewhere": _ask("elsewhere"),
    "ask-accented": _ask("accented"),
    **{f"ask-{name}": _ask(name) for name in (
        "old-echo", "old-slow", "old-broken", "old-direct", "old-unsaid", "old-as-new",
        "old-said", "older-echo", "older-slow", "older-direct", "older-said", "oldest",
        "oldest-open", "oldest-direct", "unversioned-echo", "unversioned-old")},
    "ask-old-slow-json": _ask("old-slow", output="json"),
    "ask-old-stuck": _ask("old-stuck", timeout_s=1),
}


@dataclass
class Agents:
    gateway: Server
    seen: Seen
    port: int  # the agents'
    last: str = ""  # the execution the last ``run`` made

    def restart(self, graceful: bool = False) -> None:
        """kill -9 the gateway (or stop it, SIGTERM) and start it again on its directory
        and store."""
        if graceful:
            self.gateway.stop()
        else:
            self.gateway.kill()
        self.gateway = _gateway(self.gateway.root)

    def run(self, pipeline: str, topic: str, key: str = DEV_KEY) -> tuple[int, Any]:
        response = httpx.post(f"{self.gateway.base_url}/v1/pipelines/{pipeline}",
                              json={"topic": topic}, timeout=60,
                              headers={"authorization": f"Bearer {key}"})
        body = response.json()
        self.last = body.get("execution", "")
        if response.status_code == 200:
            return 200, body["output"]
        return response.status_code, body["error"]["message"]

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """``/api/v1/executions...`` as the dev key: the JSON answer."""
        response = httpx.request(method, f"{self.gateway.base_url}/api/v1/executions{path}",
                                 json=body, timeout=30,
                                 headers={"authorization": f"Bearer {DEV_KEY}"})
        assert response.status_code < 300, response.text
        return response.json()

    def events(self, execution: str, kind: str) -> list[dict[str, Any]]:
        return [event["data"] for event in self.api("GET", f"/{execution}/events")["data"]
                if event["type"] == kind]

    def wait(self, check: Callable[[], Any], timeout: float = 20) -> Any:
        deadline = time.monotonic() + timeout
        while not (found := check()):
            assert time.monotonic() < deadline, "timed out waiting"
            time.sleep(0.05)
        return found


@pytest.fixture(scope="module")
def agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    port = free_port()
    seen = Seen()
    with serving(a2a_agents(f"http://127.0.0.1:{port}", seen), port=port) as base:
        card = "/.well-known/agent-card.json"
        lines = [
            *(f"{name}: {{url: '{base}/{name}/', api_key: '${{A2A_AGENT_KEY}}'}}"
              for name in ("echo", "tattler")),
            *(f"{name}: {{url: '{base}/{name}{card}'}}"
              for name in ("slow", "patient", "broken", "curious", "stuck", "elsewhere",
                           "mover", "garbled")),
            f"leaky: {{url: '{base}/leaky/'}}",
            f"accented: {{url: '{base}/echo/', headers: {{X-Token: '${{A2A_ODD_KEY}}'}}}}",
            # A2A 0.3's agents: as their cards say, as the config says, or neither
            *(f"{name}: {{url: '{base}/{name}{card}'}}"
              for name in ("old-echo", "old-slow", "old-broken", "old-stuck")),
            f"old-direct: {{url: '{base}/old-echo/', a2a_version: 0.3}}",
            f"old-unsaid: {{url: '{base}/old-echo/'}}",
            f"old-as-new: {{url: '{base}/old-echo{card}', a2a_version: '1.0'}}",
            f"old-said: {{url: '{base}/old-echo{card}', a2a_version: '0.3'}}",
            # Cards of agents whose version only the card says, read by no other test
            f"unversioned-echo: {{url: '{base}/echo{card}'}}",
            f"unversioned-old: {{url: '{base}/old-echo{card}'}}",
            # A2A 0.2's: their cards at 0.2's path, as they say or as the config says
            *(f"{name}: {{url: '{base}/{name}/.well-known/agent.json'}}"
              for name in ("older-echo", "older-slow")),
            f"older-direct: {{url: '{base}/older-echo/', a2a_version: 0.2}}",
            f"older-said: {{url: '{base}/older-echo/.well-known/agent.json', "
            "a2a_version: '0.2'}",
            # A2A 0.1's, which the gateway does not speak
            f"oldest: {{url: '{base}/oldest-echo/.well-known/agent.json'}}",
            f"oldest-open: {{url: '{base}/oldest-open/.well-known/agent.json'}}",
            f"oldest-direct: {{url: '{base}/oldest-echo/', a2a_version: '0.2'}}",
        ]
        root = tmp_path_factory.mktemp("agents") / "gw"
        (root / "pipelines").mkdir(parents=True)
        (root / "policies").mkdir()
        (root / "policies" / "gateway.cedar").write_text(POLICIES)
        (root / "gateway.yaml").write_text(gateway_config(agents=", ".join(lines)))
        for name, text in PIPELINES.items():
            (root / "pipelines" / f"{name}.yaml").write_text(text)
        found = Agents(_gateway(root), seen, port)
        try:
            yield found
        finally:
            found.gateway.stop()


def _gateway(root: Path) -> Server:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("A2A_AGENT_KEY", AGENT_KEY)
        patch.setenv("A2A_ODD_KEY", ODD_KEY)
        gateway = Server(root)
    gateway.wait_ready()
    return gateway


def test_an_agent_that_answers_with_a_message(agents: Agents) -> None:
    assert agents.run("ask-echo", "tides") == (200, "echo: Tell me about tides")
    _path, headers = next(item for item in agents.seen.requests if item[0] == "/echo/")
    assert headers["authorization"] == f"Bearer {AGENT_KEY}"
    assert headers["a2a-version"] == "1.0"


def test_an_agents_error_quoting_its_credential_shows_neither_in_the_step_nor_the_log(
    agents: Agents,
) -> None:
    status, message = agents.run("ask-tattler", "tides")
    assert status == 502
    _path, headers = next(item for item in agents.seen.requests if item[0] == "/tattler/")
    assert headers["authorization"] == f"Bearer {AGENT_KEY}"  # what it quotes back
    assert "SendMessage failed: the credential" in message, message
    assert AGENT_KEY not in message
    events = agents.api("GET", f"/{agents.last}/events")["data"]
    assert any(event["type"] == "step_failed" for event in events)
    assert AGENT_KEY not in json.dumps(events)
    assert AGENT_KEY not in agents.gateway.log


def test_a_header_that_is_not_ascii_disables_its_agent(agents: Agents) -> None:
    # httpx cannot send it. Each call failed, telling to encode it "in the template",
    # which an agent's header has none of; it is disabled at compile time instead, as
    # for an unset ${ENV}, saying which header but not its value.
    before = len(agents.seen.requests)
    status, message = agents.run("ask-accented", "tides")
    assert status == 502
    assert message.endswith("agent 'accented' is disabled: header x-token is not ASCII "
                            "text"), message
    assert len(agents.seen.requests) == before
    assert ODD_KEY not in agents.gateway.log


def test_policy_decides_who_may_call_an_agent_before_it_is_called(agents: Agents) -> None:
    before = len(agents.seen.requests)
    status, message = agents.run("ask-echo", "tides", key=BOT_KEY)
    assert status == 502
    assert message.endswith("policy does not allow key 'bot' to call agent 'echo': denied by "
                            "ops-may-not-ask-echo."), message
    assert len(agents.seen.requests) == before  # not called, nor tried again
    assert agents.run("ask-echo", "tides") == (200, "echo: Tell me about tides")


def test_a_task_is_polled_until_it_completes_and_its_artifacts_are_the_output(
    agents: Agents,
) -> None:
    status, output = agents.run("ask-slow", "moths")
    assert status == 200
    assert output.splitlines()[0] == "report on Tell me about moths"
    assert json.loads(output.splitlines()[1]) == {"topic": "Tell me about moths", "sources": 2}
    calls = [path for path, _ in agents.seen.requests if path.startswith("/slow/")]
    assert calls[0] == "/slow/.well-known/agent-card.json"
    assert len(calls) >= 3  # the card, SendMessage, then GetTask until it was done

    status, output = agents.run("ask-slow-json", "owls")
    assert (status, output) == (200, {"topic": "Tell me about owls", "sources": 2})


def test_a_failed_task_fails_the_step_with_the_agents_reason(agents: Agents) -> None:
    status, message = agents.run("ask-broken", "bees")
    assert status == 502
    assert message.endswith("agent 'broken' failed the task: the index is unavailable"), message


def test_a_task_that_asks_for_input_fails_the_step_saying_so(agents: Agents) -> None:
    status, message = agents.run("ask-curious", "wars")
    assert status == 502
    assert message.endswith("agent 'curious' asks for more input (input-required): which year "
                            "do you mean?"), message
    # The step gives up on the task, which would otherwise wait at the agent forever.
    tasks = [task["task"] for task in agents.events(agents.last, "agent_task")]
    assert tasks and all(("curious", task) in agents.seen.cancelled for task in tasks)
    assert agents.events(agents.last, "agent_task_cancel") == [
        {"agent": "curious", "task": task, "state": "canceled"} for task in tasks]


def test_an_agent_slower_than_the_steps_timeout_fails_it_and_its_task_is_cancelled(
    agents: Agents,
) -> None:
    status, message = agents.run("ask-stuck", "glaciers")
    assert status == 502
    assert message.endswith("timed out after 1s"), message
    [task] = agents.events(agents.last, "agent_task")
    assert ("stuck", task["task"]) in agents.seen.cancelled
    assert agents.events(agents.last, "agent_task_cancel") == [
        {"agent": "stuck", "task": task["task"], "state": "canceled"}]


def test_cancelling_the_execution_cancels_the_agents_task(agents: Agents) -> None:
    execution = agents.api("POST", "", {"pipeline": "ask-stuck-long",
                                        "input": {"topic": "ice"}})["id"]
    [task] = agents.wait(lambda: agents.events(execution, "agent_task"))
    agents.api("POST", f"/{execution}/cancel")
    agents.wait(lambda: agents.api("GET", f"/{execution}")["status"] == "cancelled")
    assert ("stuck", task["task"]) in agents.seen.cancelled
    assert agents.events(execution, "agent_task_cancel") == [
        {"agent": "stuck", "task": task["task"], "state": "canceled"}]


def test_a_step_beside_that_fails_cancels_the_agents_task(agents: Agents) -> None:
    status, message = agents.run("ask-stuck-beside-broken", "dunes")
    assert status == 502
    assert message.endswith("agent 'broken' failed the task: the index is unavailable"), message
    [task] = [task for task in agents.events(agents.last, "agent_task")
              if task["agent"] == "stuck"]
    assert ("stuck", task["task"]) in agents.seen.cancelled
    assert agents.events(agents.last, "agent_task_cancel") == [
        {"agent": "stuck", "task": task["task"], "state": "canceled"}]


def test_a_task_whose_polling_fails_is_cancelled_before_the_step_tries_again(
    agents: Agents,
) -> None:
    """GetTask answered 503 failed the try and left the task running: the retry made a
    second one beside it, and the step's failure left both at work."""
    status, message = agents.run("ask-garbled", "kelp")
    assert status == 502
    assert "agent 'garbled': POST http://127.0.0.1:" in message
    assert message.endswith("answered 503: <html>down for maintenance</html>"), message
    tasks = [task["task"] for task in agents.events(agents.last, "agent_task")]
    assert len(tasks) == 2  # one a try
    assert [("garbled", task) for task in tasks] == [
        item for item in agents.seen.cancelled if item[1] in tasks]
    assert agents.events(agents.last, "agent_task_cancel") == [
        {"agent": "garbled", "task": task, "state": "canceled"} for task in tasks]


@pytest.mark.parametrize("graceful", [False, True], ids=["killed", "stopped"])
def test_a_gateway_restarted_mid_task_polls_it_rather_than_send_the_message_again(
    agents: Agents, graceful: bool,
) -> None:
    topic = f"tides {graceful}"
    execution = agents.api("POST", "", {"pipeline": "ask-patient",
                                        "input": {"topic": topic}})["id"]
    [task] = agents.wait(lambda: agents.events(execution, "agent_task"))
    # The step was polling; a new runner takes the execution over. Stopped, the runner
    # cancelled the step, but not the agent's task: the run that resumes it polls it.
    agents.restart(graceful)
    done = agents.wait(lambda: (found := agents.api("GET", f"/{execution}"))["status"]
                       in ("succeeded", "failed") and found)
    assert done["output"].startswith(f"report on Tell me about {topic}"), done
    # One message, named after the execution and the try, and the task it made polled
    assert [item for item in agents.seen.messages if item[1].startswith(execution)] == [
        ("patient", f"{execution}/ask@1")]
    assert agents.events(execution, "agent_task") == [task]
    assert ("patient", task["task"]) not in agents.seen.cancelled
    assert agents.events(execution, "agent_task_cancel") == []


def test_a_task_the_store_fails_to_save_is_saved_once_it_is_back_not_sent_again(
    agents: Agents,
) -> None:
    """A task made as the store was out failed the try (or stopped the run), and the
    message was sent again: the agent did the work twice."""
    store = agents.gateway.root / "aigw.sqlite"
    refuse_memos(store, True)
    try:
        execution = agents.api("POST", "", {"pipeline": "ask-slow",
                                            "input": {"topic": "reefs"}})["id"]
        agents.wait(lambda: any(item[1].startswith(execution)
                                for item in agents.seen.messages))
        time.sleep(1.0)  # the task is made: its save is tried meanwhile
    finally:
        refuse_memos(store, False)
    done = agents.wait(lambda: (found := agents.api("GET", f"/{execution}"))["status"]
                       in ("succeeded", "failed") and found)
    assert done["output"].startswith("report on Tell me about reefs"), done
    assert [item for item in agents.seen.messages if item[1].startswith(execution)] == [
        ("slow", f"{execution}/ask@1")]
    assert len(agents.events(execution, "agent_task")) == 1
    assert f"execution {execution}: ask@1#task is not saved, the store is unavailable" \
        in agents.gateway.log


def test_a_card_is_read_once_a_while_and_again_when_its_endpoint_moved(
    agents: Agents,
) -> None:
    def calls(path: str) -> int:
        return sum(1 for item, _ in agents.seen.requests if item == path)

    card = "/mover/.well-known/agent-card.json"
    for topic in ("a", "b"):
        assert agents.run("ask-mover", topic) == (200, f"echo: Tell me about {topic}")
    assert (calls(card), calls("/mover/")) == (1, 2)  # the card kept from the first run
    agents.seen.moved = True
    assert agents.run("ask-mover", "c") == (200, "echo: Tell me about c")
    assert (calls(card), calls("/mover/"), calls("/mover/v2/")) == (2, 3, 1)
    assert agents.run("ask-mover", "d") == (200, "echo: Tell me about d")
    assert (calls(card), calls("/mover/v2/")) == (2, 2)


def test_redirects_and_card_endpoints_elsewhere_are_not_followed(agents: Agents) -> None:
    status, message = agents.run("ask-leaky", "x")
    assert status == 502
    assert "agent 'leaky': POST http://127.0.0.1:" in message
    assert message.endswith("answered 307 (redirects are not followed; configure the URL it "
                            "points to)"), message
    status, message = agents.run("ask-elsewhere", "x")
    assert status == 502
    assert message.endswith("the card of agent 'elsewhere' names the endpoint "
                            "'http://169.254.169.254/latest/', not on the card's origin "
                            f"http://127.0.0.1:{agents.port}"), message


def test_an_agent_of_a2a_0_3_is_called_in_0_3s_wire_format(agents: Agents) -> None:
    """Its card says 0.3 (or the config does, for an endpoint without one): the step's
    calls are 0.3's (message/send, tasks/get) and their answers read as 1.0's were."""
    assert agents.run("ask-old-echo", "tides") == (200, "echo: Tell me about tides")
    calls = [(path, headers) for path, headers in agents.seen.requests
             if path.startswith("/old-echo/")]
    assert [path for path, _ in calls] == ["/old-echo/.well-known/agent-card.json",
                                           "/old-echo/"]
    assert calls[1][1]["a2a-version"] == "0.3"
    assert agents.run("ask-old-direct", "tides") == (200, "echo: Tell me about tides")

    status, output = agents.run("ask-old-slow", "moths")
    assert status == 200
    assert output.splitlines()[0] == "report on Tell me about moths"
    assert json.loads(output.splitlines()[1]) == {"topic": "Tell me about moths", "sources": 2}
    status, output = agents.run("ask-old-slow-json", "owls")
    assert (status, output) == (200, {"topic": "Tell me about owls", "sources": 2})
    # Its task polled (tasks/get), not the message sent again: one a run
    assert [sent.split("/")[1] for name, sent in agents.seen.messages
            if name == "old-slow"] == ["ask@1", "ask@1"]


def test_a_0_3_agents_failed_task_fails_the_step_and_one_that_times_out_is_cancelled(
    agents: Agents,
) -> None:
    status, message = agents.run("ask-old-broken", "bees")
    assert status == 502
    assert message.endswith("agent 'old-broken' failed the task: the index is "
                            "unavailable"), message
    status, message = agents.run("ask-old-stuck", "glaciers")
    assert status == 502
    assert message.endswith("timed out after 1s"), message
    [task] = agents.events(agents.last, "agent_task")
    assert ("old-stuck", task["task"]) in agents.seen.cancelled  # by tasks/cancel
    assert agents.events(agents.last, "agent_task_cancel") == [
        {"agent": "old-stuck", "task": task["task"], "state": "canceled"}]


def test_an_agent_of_a2a_0_2_is_called_in_0_3s_wire_format_as_0_2_requires(
    agents: Agents,
) -> None:
    """Its card says 0.2 (0.2.5's ``protocolVersion``, or none before it), or the config
    does: the calls are 0.3's, with the ``acceptedOutputModes`` 0.2 requires (the agent
    refuses a message without) and without ``A2A-Version``, which 0.2 predates."""
    start = len(agents.seen.requests)
    assert agents.run("ask-older-echo", "tides") == (200, "echo: Tell me about tides")
    calls = [(path, headers) for path, headers in agents.seen.requests[start:]
             if path.startswith("/older-echo/")]
    assert [path for path, _ in calls] == ["/older-echo/.well-known/agent.json",
                                           "/older-echo/"]
    assert "a2a-version" not in calls[1][1]
    assert agents.run("ask-older-direct", "tides") == (200, "echo: Tell me about tides")

    status, output = agents.run("ask-older-slow", "moths")
    assert status == 200
    assert output.splitlines()[0] == "report on Tell me about moths"
    # Its task polled (tasks/get), not the message sent again
    assert [name for name, _sent in agents.seen.messages if name == "older-slow"] == \
        ["older-slow"]


def test_an_agents_card_is_asked_for_in_the_version_it_is_configured_to_speak(
    agents: Agents,
) -> None:
    """``A2A-Version`` on the card's GET is the agent's a2a_version (none for 0.2), as on
    its calls; not 1.0 to an agent configured as 0.3."""
    start = len(agents.seen.requests)
    assert agents.run("ask-old-said", "tides") == (200, "echo: Tell me about tides")
    assert agents.run("ask-older-said", "tides") == (200, "echo: Tell me about tides")
    assert [(path, headers.get("a2a-version")) for path, headers
            in agents.seen.requests[start:] if path.startswith(("/old-echo/", "/older-echo/"))] == [
        ("/old-echo/.well-known/agent-card.json", "0.3"), ("/old-echo/", "0.3"),
        ("/older-echo/.well-known/agent.json", None), ("/older-echo/", None)]


def test_the_card_of_an_agent_of_no_a2a_version_is_asked_for_without_one(
    agents: Agents,
) -> None:
    """Its version not known, the card's GET says none (A2A 1.0, 3.6.1: an agent reads
    none as 0.3; it was asked as 1.0's); the calls then speak the version the card
    names: 1.0's or 0.3's."""
    start = len(agents.seen.requests)
    assert agents.run("ask-unversioned-echo", "tides") == (200, "echo: Tell me about tides")
    assert agents.run("ask-unversioned-old", "tides") == (200, "echo: Tell me about tides")
    assert [(path, headers.get("a2a-version")) for path, headers
            in agents.seen.requests[start:]] == [
        ("/echo/.well-known/agent-card.json", None), ("/echo/", "1.0"),
        ("/old-echo/.well-known/agent-card.json", None), ("/old-echo/", "0.3")]


def test_a_0_3_agent_called_as_1_0_fails_saying_which_version_to_set(agents: Agents) -> None:
    status, message = agents.run("ask-old-unsaid", "x")
    assert status == 502
    assert message.endswith("agent 'old-unsaid': SendMessage failed: Method not found "
                            "(JSON-RPC error -32601); if the agent speaks A2A 0.3 or 0.2, set "
                            "its a2a_version: '0.3' or '0.2'"), message
    status, message = agents.run("ask-old-as-new", "x")
    assert status == 502
    assert message.endswith("the card of agent 'old-as-new' offers no JSONRPC interface of "
                            "A2A 1.0 (its a2a_version); it offers: JSONRPC 0.3.0"), message


def test_an_a2a_0_1_agent_fails_its_step_saying_0_1_is_not_supported(agents: Agents) -> None:
    """A 0.1 card (a url, no protocolVersion) was read as 0.2's, and the step failed with
    a bare MethodNotFound from message/send (0.1 has tasks/send). Now a card with 0.1's
    authentication field fails the step before any call; one without it, or an agent
    called as 0.2 without a card, fails on the MethodNotFound saying 0.1 is not
    supported and what the agent needs."""
    sent = len(agents.seen.requests)
    status, message = agents.run("ask-oldest", "x")
    assert status == 502
    assert message.endswith("the card of agent 'oldest' is an A2A 0.1 card (it has 0.1's "
                            "authentication field): A2A 0.1 (tasks/send) is not supported: "
                            "the agent needs A2A 0.2 or later"), message
    assert [path for path, _headers in agents.seen.requests[sent:]] == \
        ["/oldest-echo/.well-known/agent.json"]  # its card only: no call
    unsupported = ("; if it speaks A2A 0.1 (tasks/send), that is not supported: the agent "
                   "needs A2A 0.2 or later")
    status, message = agents.run("ask-oldest-open", "x")
    assert status == 502
    assert message.endswith("agent 'oldest-open': message/send failed: Method not found "
                            f"(JSON-RPC error -32601){unsupported}"), message
    status, message = agents.run("ask-oldest-direct", "x")
    assert status == 502
    assert message.endswith("(JSON-RPC error -32601); if the agent speaks A2A 1.0 or 0.3, set "
                            f"its a2a_version: '1.0' or '0.3'{unsupported}"), message
