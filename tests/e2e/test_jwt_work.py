"""Work a JWT's caller started outlives the gateway that took its token, on both stores.

A pipeline waiting for an approval and a batch half run, each started by a caller signed
in with a token whose claim picks its team, go on after ``aigw serve`` is stopped and
started again on the same store (as on another replica): billed to that caller, in the
team its token gave it, though no token is sent again. The caller's team taken out of
the config meanwhile fails the work, saying so.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.jwks_server import AUDIENCE, ISSUER, SigningKey, claims
from ..providers.conftest import DEV_KEY_LINE
from .server import Server

pytestmark = pytest.mark.e2e

SIGNING_KEY = SigningKey.rsa("work-1")
ADMIN = {"authorization": f"Bearer {DEV_KEY}"}
# The draft is made before the approval, the answer after it: a model call each side.
PUBLISH = """\
input: {type: object, required: [text]}
steps:
  draft: {kind: llm, model: chat, prompt: "{{ input.text }}"}
  sign_off: {kind: approval, needs: [draft], message: "Publish?", timeout_s: 300}
  publish: {kind: llm, model: chat, needs: [sign_off], prompt: "out {{ steps.draft }}"}
output: "{{ steps.publish }}"
"""
BOTH_TEAMS = "{llm-eng: engineering, llm-research: research}"


def _config(store: str, teams: str = "engineering: {}\n  research: {}",
            team_map: str = BOTH_TEAMS) -> str:
    # A slow echo (per token) and one batch line at a time: a batch is still running
    # when the gateway is stopped. A short lease: a restarted one takes its work at once.
    return f"""\
version: 1
settings:
  store: "{store}"
  execution_lease_s: 2
  batch_concurrency: 1
providers:
  local: {{type: echo, latency: {{per_token_ms: 60}}}}
deployments:
  echo-small: {{provider: local, model: echo-1, context_window: 8192,
               price: {{input: 1, output: 1}}}}
routes:
  chat: {{deployment: echo-small}}
teams:
  {teams}
issuers:
  corp:
    issuer: {ISSUER}
    jwks_file: jwks.json
    audiences: [{AUDIENCE}]
    team:
      claim: groups
      map: {team_map}
""" + DEV_KEY_LINE


@pytest.fixture(params=["embedded", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    return "embedded" if request.param == "embedded" else str(
        request.getfixturevalue("private_redis").url)


@pytest.fixture
def root(tmp_path: Path, store: str) -> Path:
    root = tmp_path / "gw"
    (root / "pipelines").mkdir(parents=True)
    (root / "pipelines" / "publish.yaml").write_text(PUBLISH)
    (root / "jwks.json").write_text(json.dumps({"keys": [SIGNING_KEY.public_jwk()]}))
    (root / "gateway.yaml").write_text(_config(store))
    return root


@pytest.fixture
def started() -> Iterator[Callable[[Path], Server]]:
    servers: list[Server] = []

    def start(root: Path) -> Server:
        server = Server(root)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


def _token(subject: str) -> str:
    return SIGNING_KEY.sign(claims(subject, groups=["staff", "llm-research"]))


def _execution(server: Server, execution_id: str,
               check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        execution: dict[str, Any] = httpx.get(
            f"{server.base_url}/api/v1/executions/{execution_id}", headers=ADMIN,
            timeout=10).json()
        if check(execution) or time.monotonic() > deadline:
            assert check(execution), f"{execution}\n{server.log}"
            return execution
        time.sleep(0.05)


def _waiting_for_approval(server: Server, subject: str) -> str:
    """An execution of ``publish`` started by ``subject``'s token, waiting for its
    approval (its draft made and billed)."""
    started = httpx.post(f"{server.base_url}/api/v1/executions",
                         json={"pipeline": "publish", "input": {"text": "hello world"}},
                         headers={"authorization": f"Bearer {_token(subject)}"}, timeout=30)
    assert started.status_code == 201, started.text
    execution_id: str = started.json()["id"]
    _execution(server, execution_id, lambda e: e["status"] == "waiting")
    return execution_id


def _approve(server: Server, execution_id: str) -> None:
    approved = httpx.post(f"{server.base_url}/api/v1/executions/{execution_id}/approvals",
                          json={"decision": "approve"}, headers=ADMIN, timeout=30)
    assert approved.status_code == 200, approved.text


def _spend(server: Server, key: str) -> list[tuple[str, int]]:
    """The ledger's (team, requests) rows of ``key``, whichever store holds it."""
    answer = httpx.get(f"{server.base_url}/admin/spend?group_by=team,key", headers=ADMIN,
                       timeout=10)
    assert answer.status_code == 200, answer.text
    return [(row["team"], row["requests"]) for row in answer.json()["data"]
            if row["key"] == key]


def test_an_execution_waiting_for_approval_finishes_as_its_caller_after_a_restart(
        root: Path, started: Callable[[Path], Server]) -> None:
    """It failed on resume ("the key 'corp#ada' ... is no longer accepted"): the team
    its token's claim gave it was known only to the process that verified the token."""
    first = started(root)
    execution_id = _waiting_for_approval(first, "ada")
    first.stop()

    again = started(root)
    _approve(again, execution_id)
    done = _execution(again, execution_id, lambda e: e["status"] in ("succeeded", "failed"))
    assert (done["status"], done["error"]) == ("succeeded", None), done
    assert done["output"].startswith("out ") and done["usage"]["model_calls"] == 2
    assert done["key"] == "corp#ada"
    assert _spend(again, "corp#ada") == [("research", 2)]  # the draft and the answer


def test_an_execution_whose_callers_team_left_the_config_fails_saying_so(
        root: Path, store: str, started: Callable[[Path], Server]) -> None:
    first = started(root)
    execution_id = _waiting_for_approval(first, "bea")
    first.stop()
    (root / "gateway.yaml").write_text(_config(store, teams="engineering: {}",
                                               team_map="{llm-eng: engineering}"))

    again = started(root)
    failed = _execution(again, execution_id, lambda e: e["status"] == "failed")
    assert "team 'research'" in failed["error"] and "corp#bea" in failed["error"], failed
    assert _spend(again, "corp#bea") == [("research", 1)]  # the draft, before the stop


def test_a_batch_stopped_midway_finishes_as_its_caller_after_a_restart(
        root: Path, started: Callable[[Path], Server]) -> None:
    """Its lines after the restart were each a 401 (the creator 'corp#cy' "no longer in
    the gateway's config"), though the caller had not changed."""
    first = started(root)
    names = [f"line-{n}" for n in range(6)]
    lines = "".join(json.dumps({
        "custom_id": name, "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "chat", "messages": [{"role": "user", "content":
                                                 f"{name} one two three four"}]}}) + "\n"
        for name in names).encode()
    with openai.OpenAI(base_url=f"{first.base_url}/v1", api_key=_token("cy"),
                       max_retries=0) as client:
        uploaded = client.files.create(file=("input.jsonl", lines), purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id,
                                      endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 30
        while (counts := client.batches.retrieve(batch.id).request_counts) is None \
                or counts.completed < 1:
            assert time.monotonic() < deadline, first.log
            time.sleep(0.05)
    first.stop()  # waits for the line in flight; sends no other

    again = started(root)
    with openai.OpenAI(base_url=f"{again.base_url}/v1", api_key=_token("cy"),
                       max_retries=0) as client:
        deadline = time.monotonic() + 30
        while (done := client.batches.retrieve(batch.id)).status != "completed":
            assert time.monotonic() < deadline, (done, again.log)
            time.sleep(0.1)
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (6, 0), \
            (done, again.log)
        assert done.output_file_id is not None
        answered = [json.loads(text)["custom_id"]
                    for text in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(answered) == names
    assert _spend(again, "corp#cy") == [("research", 6)]
