"""The Files and Batch APIs end to end, on both stores: ``client.files.*`` and
``client.batches.*`` on a real ``aigw serve``, each line answered by the OpenAI fake (or
the echo provider) through the gateway's own request path, the output and error files,
cancelling, keys that find only their own, the spend ledger, and a gateway killed
mid-batch that resumes without sending a finished line again."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import openai
import pytest
import redis
from openai.types import Batch

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from ..redis_server import PrivateRedis
from .responses_gateway import (
    ALICE,
    BOB,
    Upstreams,
    app_keys,
    assert_pages_refused,
    responses_gateway,
    sdk,
    store_url,
)
from .server import Server

pytestmark = pytest.mark.e2e

# One line at a time, so that a scripted upstream answer meets a known line; a lease
# short enough that a killed gateway's batches are resumed within the test.
SETTINGS = "batch_concurrency: 1, execution_lease_s: 2, files_max_bytes: 65536"
# Two keys of one team, which find each other's files and batches.
CAROL, DAVE = "sk-batches-carol", "sk-batches-dave"


def _keys() -> str:
    return "teams: {ops: {}}\n" + app_keys() + "".join(
        f"  {name}: {{team: ops, sha256: {hashlib.sha256(secret.encode()).hexdigest()}}}\n"
        for name, secret in (("carol", CAROL), ("dave", DAVE)))


@pytest.fixture(scope="module", params=["embedded", "redis"])
def upstreams(request: pytest.FixtureRequest,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    # On the shared test Redis, a namespace of its own: another test session's gateway
    # there must not take (or see) this one's batches.
    settings = f'store: "{store_url(request, request.param)}", {SETTINGS}' + (
        f", redis_namespace: batches-{secrets.token_hex(6)}" if request.param == "redis"
        else "")
    with responses_gateway(tmp_path_factory.mktemp("batches") / "gw", settings,
                           _keys()) as served:
        yield served


def _redis(upstreams: Upstreams) -> tuple[redis.Redis, str] | None:
    """The gateway's Redis and its namespace (None: its store is embedded)."""
    config = (upstreams.server.root / "gateway.yaml").read_text()
    url = re.search(r'store: "(redis://[^"]+)"', config)
    if url is None:
        return None
    namespace = re.search(r"redis_namespace: ([\w.-]+)", config)
    return (redis.Redis.from_url(url[1], decode_responses=True),
            namespace[1] if namespace else "aigw")


def _ledger(upstreams: Upstreams, request_id: str) -> tuple[str | None, int]:
    """The batch and status of a request's spend ledger record."""
    found_redis = _redis(upstreams)
    if found_redis is not None:
        client, namespace = found_redis
        with client:
            found = client.hgetall(f"{namespace}:rec:{quote(request_id, safe='')}")
        return found.get("batch"), int(found["status"])
    ledger = sqlite3.connect(upstreams.server.root / "aigw.sqlite")
    try:
        batch, status = ledger.execute("SELECT batch, status FROM ledger WHERE request_id = ?",
                                       (request_id,)).fetchone()
    finally:
        ledger.close()
    return batch, status


@pytest.fixture
def alice(upstreams: Upstreams) -> Iterator[openai.OpenAI]:
    upstreams.gpt.script.actions.clear()
    with sdk(upstreams, ALICE) as client:
        yield client


def _line(custom_id: str, model: str = "gpt", url: str = "/v1/chat/completions",
          **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url,
            "body": {"model": model, "messages": [{"role": "user", "content": custom_id}],
                     **body}}


def _jsonl(lines: list[Any]) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                   for line in lines).encode()


def _batch(client: openai.OpenAI, lines: list[Any],
           endpoint: str = "/v1/chat/completions") -> Batch:
    uploaded = client.files.create(file=("input.jsonl", _jsonl(lines)), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=endpoint,  # type: ignore[arg-type]
                                 completion_window="24h")


def _until(client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...],
           timeout: float = 30.0) -> Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses or time.monotonic() > deadline:
            assert batch.status in statuses, batch
            return batch
        time.sleep(0.1)


def _lines(client: openai.OpenAI, file_id: str | None) -> dict[str, dict[str, Any]]:
    """The output or error file's lines by custom_id."""
    assert file_id is not None
    found = [json.loads(text) for text in client.files.content(file_id).text.splitlines()]
    return {line["custom_id"]: line for line in found}


def test_each_line_is_answered_into_the_output_and_error_files(
        alice: openai.OpenAI, upstreams: Upstreams) -> None:
    upstreams.gpt.script.actions[:] = [Action(), Action(status=400)]  # the second line's
    made = _batch(alice, [_line("one"), _line("two"), _line("three", model="echo"),
                          _line("four", model="locked")])
    assert made.status == "in_progress" and made.request_counts is not None
    assert made.request_counts.total == 4

    done = _until(alice, made.id, ("completed",))
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 2)
    assert done.completed_at and done.finalizing_at and done.in_progress_at

    output = _lines(alice, done.output_file_id)
    assert sorted(output) == ["one", "three"]
    one = output["one"]["response"]
    assert one["status_code"] == 200 and output["one"]["error"] is None
    assert one["body"]["choices"][0]["message"]["content"] == "fake-openai: one"
    assert one["request_id"] and output["one"]["id"].startswith("batch_req_")
    assert output["three"]["response"]["body"]["model"]  # the echo provider's answer

    errors = _lines(alice, done.error_file_id)
    assert errors["two"]["response"]["status_code"] == 400  # the upstream refused it
    assert errors["four"]["response"]["status_code"] == 403  # Cedar forbids route locked
    assert errors["four"]["response"]["body"]["error"]["code"] == "permission_denied"
    assert alice.files.retrieve(done.output_file_id or "").purpose == "batch_output"

    # Each line was a request of the gateway's own: in the access log and the spend
    # ledger, marked with the batch.
    logged = upstreams.server.access_line(one["request_id"])
    assert logged is not None and logged["batch"] == made.id
    assert logged["key"] == "alice" and logged["route"] == "gpt"
    request_ids = [line["response"]["request_id"] for line in [*output.values(),
                                                               *errors.values()]]
    assert sorted(_ledger(upstreams, request_id) for request_id in request_ids) == [
        (made.id, 200), (made.id, 200), (made.id, 400), (made.id, 403)]


def test_a_bad_input_file_fails_the_batch_with_line_errors(alice: openai.OpenAI,
                                                           upstreams: Upstreams) -> None:
    calls = len(upstreams.gpt.script.requests)
    failed = _batch(alice, [_line("a"), "{not json", _line("a"),
                            _line("b", url="/v1/embeddings"), _line("c", stream=True),
                            _line("d" * 512), _line("e" * 513)])  # custom_id had no cap
    assert failed.status == "failed" and failed.failed_at
    assert failed.errors is not None
    assert [(error.line, error.code) for error in failed.errors.data or []] == [
        (2, "invalid_json_line"), (3, "duplicate_custom_id"), (4, "mismatched_endpoint"),
        (5, "invalid_request"), (7, "string_above_max_length")]
    too_long = (failed.errors.data or [])[-1]
    assert (too_long.param, too_long.message) == ("custom_id", (
        "Invalid 'custom_id': string too long. Expected a string with maximum length 512, "
        "but got a string with length 513 instead."))
    time.sleep(1.5)  # the runner looks every second: a failed batch is never run
    assert len(upstreams.gpt.script.requests) == calls


def test_what_openai_refuses_at_create_is_a_400_or_404(alice: openai.OpenAI) -> None:
    uploaded = alice.files.create(file=("in.jsonl", _jsonl([_line("x")])), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        alice.batches.create(input_file_id=uploaded.id, endpoint="/v1/moderations",  # type: ignore[arg-type]
                             completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        alice.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                             completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        alice.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                             completion_window="24h")
    with pytest.raises(openai.BadRequestError):
        alice.files.create(file=("in.jsonl", b"{}"), purpose="fine-tune")


def test_files_and_batch_outputs_take_openais_expiry(alice: openai.OpenAI) -> None:
    """expires_after (a file) and output_expires_after (a batch's files), in OpenAI's
    range; a file uploaded without one is kept until deleted, a batch's output by default
    for batch_output_retention_s (30 days)."""
    kept = alice.files.create(file=("in.jsonl", _jsonl([_line("x")])), purpose="batch",
                              expires_after={"anchor": "created_at", "seconds": 3600})
    assert kept.expires_at == kept.created_at + 3600
    assert alice.files.retrieve(kept.id).expires_at == kept.expires_at
    for seconds in (3599, 30 * 86_400 + 1):
        with pytest.raises(openai.BadRequestError) as refused:
            alice.files.create(file=("in.jsonl", b"{}"), purpose="batch",
                               expires_after={"anchor": "created_at", "seconds": seconds})
        assert refused.value.param == "expires_after.seconds"
        with pytest.raises(openai.BadRequestError):
            alice.batches.create(input_file_id=kept.id, endpoint="/v1/chat/completions",
                                 completion_window="24h", output_expires_after={
                                     "anchor": "created_at", "seconds": seconds})
    made = alice.batches.create(input_file_id=kept.id, endpoint="/v1/chat/completions",
                                completion_window="24h", output_expires_after={
                                    "anchor": "created_at", "seconds": 7200})
    output = alice.files.retrieve(_until(alice, made.id, ("completed",)).output_file_id or "")
    assert output.expires_at == output.created_at + 7200
    plain = _until(alice, _batch(alice, [_line("y")]).id, ("completed",))
    assert alice.files.retrieve(plain.input_file_id).expires_at is None
    output = alice.files.retrieve(plain.output_file_id or "")
    assert output.expires_at == output.created_at + 30 * 86_400


def test_an_upload_over_files_max_bytes_is_a_413(alice: openai.OpenAI,
                                                 upstreams: Upstreams) -> None:
    for size in (70_000, 200_000):  # found once parsed; refused by its Content-Length
        with pytest.raises(openai.APIStatusError) as refused:
            alice.files.create(file=("big.jsonl", b"x" * size), purpose="batch")
        assert refused.value.status_code == 413
        assert "files_max_bytes (65536)" in refused.value.message

    def chunks() -> Iterator[bytes]:  # no Content-Length: the size is not known up front
        yield b"--b\r\nContent-Disposition: form-data; name=purpose\r\n\r\nbatch\r\n--b--\r\n"

    unsized = httpx.post(f"{upstreams.server.base_url}/v1/files", content=chunks(),
                         headers={"authorization": f"Bearer {ALICE}",
                                  "content-type": "multipart/form-data; boundary=b"})
    assert unsized.status_code == 400 and "Content-Length" in unsized.json()["error"]["message"]


def test_a_cancelled_batch_stops_sending_lines(alice: openai.OpenAI,
                                               upstreams: Upstreams) -> None:
    upstreams.gpt.script.actions[:] = [Action(delay_s=0.3) for _ in range(10)]
    made = _batch(alice, [_line(f"slow-{n}") for n in range(10)])
    time.sleep(0.5)
    cancelling = alice.batches.cancel(made.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    cancelled = _until(alice, made.id, ("cancelled",))
    assert cancelled.cancelled_at and cancelled.request_counts is not None
    assert 0 < cancelled.request_counts.completed < 10
    assert len(_lines(alice, cancelled.output_file_id)) == cancelled.request_counts.completed
    with pytest.raises(openai.ConflictError):
        finished = _batch(alice, [_line("quick")])
        alice.batches.cancel(_until(alice, finished.id, ("completed",)).id)


def test_files_and_batches_are_their_owners_only(alice: openai.OpenAI,
                                                 upstreams: Upstreams) -> None:
    made = _batch(alice, [_line("mine")])
    with sdk(upstreams, BOB) as bob, sdk(upstreams, DEV_KEY) as admin:
        with pytest.raises(openai.NotFoundError):
            bob.batches.retrieve(made.id)
        with pytest.raises(openai.NotFoundError):
            bob.batches.cancel(made.id)
        with pytest.raises(openai.NotFoundError):
            bob.files.content(made.input_file_id)
        with pytest.raises(openai.NotFoundError):
            bob.files.delete(made.input_file_id)
        assert made.id not in {batch.id for batch in bob.batches.list()}
        assert made.input_file_id not in {file.id for file in bob.files.list()}
        assert admin.batches.retrieve(made.id).id == made.id  # admin keys find any
        assert made.id in {batch.id for batch in admin.batches.list(limit=100)}
    assert made.id in {batch.id for batch in alice.batches.list()}
    assert alice.files.retrieve(made.input_file_id).filename == "input.jsonl"
    _until(alice, made.id, ("completed",))
    assert alice.files.delete(made.input_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(made.input_file_id)


def test_a_bad_page_query_is_a_400_that_names_it(alice: openai.OpenAI) -> None:
    # As the Responses API's lists: OpenAI's bounds (files: up to 10,000), the value shown
    # cut short. An unknown ``after`` is no error here: the page after it is empty; a
    # batch list has no ``order``.
    long = ("limit", "9" * 8000)
    assert_pages_refused(alice.batches.list, (("limit", "0"), ("limit", "101"), long))
    assert_pages_refused(alice.files.list, (("limit", "0"), ("limit", "10001"), long,
                                            ("order", "o" * 8000)))


def test_a_line_in_flight_outlives_a_reload_that_drops_its_provider(
        alice: openai.OpenAI, upstreams: Upstreams) -> None:
    """A reload closes the clients of providers it changed once nothing on the old graph
    uses them: a batch's line in flight counts, as a request does."""
    upstreams.gpt.script.actions[:] = [Action(delay_s=1.5)]
    made = _batch(alice, [_line("through-a-reload")])
    config = upstreams.server.root / "gateway.yaml"
    before = config.read_text()
    deadline = time.monotonic() + 10
    while not upstreams.gpt.script.actions and time.monotonic() < deadline:
        time.sleep(0.02)  # until the line's call took its (slow) answer
    while upstreams.gpt.script.actions and time.monotonic() < deadline:
        time.sleep(0.02)
    config.write_text(before.replace("{type: openai, ", "{type: openai, timeout_s: 59, ", 1))
    reload = partial(httpx.post, f"{upstreams.server.base_url}/admin/reload",
                     headers={"authorization": f"Bearer {DEV_KEY}"}, timeout=30)
    try:
        assert reload().json()["ok"] is True
        done = _until(alice, made.id, ("completed",))
    finally:
        config.write_text(before)
        assert reload().json()["ok"] is True
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (1, 0), _lines(
        alice, done.error_file_id) if done.error_file_id else done


def test_a_teams_keys_share_its_files_and_batches(upstreams: Upstreams) -> None:
    with sdk(upstreams, CAROL) as carol, sdk(upstreams, DAVE) as dave, \
            sdk(upstreams, ALICE) as alice:
        made = _batch(carol, [_line("ours")])
        assert dave.batches.retrieve(made.id).id == made.id
        done = _until(dave, made.id, ("completed",))
        assert sorted(_lines(dave, done.output_file_id)) == ["ours"]
        with pytest.raises(openai.NotFoundError):
            alice.batches.retrieve(made.id)


def test_a_batch_of_legacy_completions(alice: openai.OpenAI) -> None:
    made = _batch(alice, [{"custom_id": "c1", "method": "POST", "url": "/v1/completions",
                           "body": {"model": "gpt", "prompt": "say this", "max_tokens": 5}}],
                  endpoint="/v1/completions")
    done = _until(alice, made.id, ("completed",))
    body = _lines(alice, done.output_file_id)["c1"]["response"]["body"]
    assert body["object"] == "text_completion" and body["choices"][0]["text"]


def test_a_batch_of_responses(alice: openai.OpenAI) -> None:
    made = _batch(alice, [{"custom_id": "r1", "method": "POST", "url": "/v1/responses",
                           "body": {"model": "gpt", "input": "hello there"}}],
                  endpoint="/v1/responses")
    done = _until(alice, made.id, ("completed",))
    body = _lines(alice, done.output_file_id)["r1"]["response"]["body"]
    assert body["object"] == "response" and body["status"] == "completed"
    assert body["output"][0]["content"][0]["text"] == "fake-openai: hello there"


@pytest.mark.parametrize("stop", ["kill", "term"])
def test_a_gateway_stopped_mid_batch_resumes_without_resending_finished_lines(
        alice: openai.OpenAI, upstreams: Upstreams, stop: str) -> None:
    """Killed, the line in flight is sent again after the restart (its outcome was not
    recorded); stopped (SIGTERM), the line in flight is waited for: none is sent twice."""
    gpt = upstreams.gpt
    gpt.script.actions[:] = [Action(delay_s=0.4) for _ in range(20)]
    names = [f"resume-{stop}-{n}" for n in range(6)]
    made = _batch(alice, [_line(name) for name in names])
    deadline = time.monotonic() + 20
    while True:
        counts = alice.batches.retrieve(made.id).request_counts
        assert counts is not None
        if counts.completed >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    finished_before = set(_recorded(upstreams, made.id))
    assert len(finished_before) >= 2
    if stop == "kill":
        upstreams.server.kill()
    upstreams.restart()

    with sdk(upstreams, ALICE) as client:
        done = _until(client, made.id, ("completed",))
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (6, 0)
        assert sorted(_lines(client, done.output_file_id)) == sorted(names)
    sent = Counter(request["messages"][0]["content"]  # type: ignore[index]
                   for request in gpt.script.requests if "messages" in request)
    assert all(sent[name] == 1 for name in finished_before), sent
    # killed: the one in flight then, sent again
    assert sum(sent[name] for name in names) <= (7 if stop == "kill" else 6), sent


def test_two_gateways_on_one_store_send_each_line_once(
        alice: openai.OpenAI, upstreams: Upstreams) -> None:
    """Two ``aigw serve`` on one store and files_dir (replicas): one holds the batch's
    lease and runs it; stopped mid-batch, the other takes it over and runs only the lines
    left. Each line reaches the upstream exactly once."""
    gpt = upstreams.gpt
    gpt.script.actions[:] = [Action(delay_s=0.3) for _ in range(20)]
    replica = Server(upstreams.server.root)
    try:
        replica.wait_ready()
        names = [f"replica-{n}" for n in range(8)]
        made = _batch(alice, [_line(name) for name in names])
        deadline = time.monotonic() + 20
        while (holder := _holder(upstreams, made.id)) is None or len(
                _recorded(upstreams, made.id)) < 2:
            assert time.monotonic() < deadline, "the batch was not run"
            time.sleep(0.05)
        held_by_first = f":{upstreams.server.process.pid}:" in holder
        assert held_by_first or f":{replica.process.pid}:" in holder, holder
        (upstreams.server if held_by_first else replica).stop()  # waits for its lines
        other = replica if held_by_first else upstreams.server
        with openai.OpenAI(base_url=f"{other.base_url}/v1", api_key=ALICE,
                           max_retries=0) as client:
            done = _until(client, made.id, ("completed",))
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (8, 0)
        after = _holder(upstreams, made.id)
        assert after is None or f":{other.process.pid}:" in after  # it finished it
    finally:
        replica.stop()
        if upstreams.server.process.poll() is not None:  # the module's gateway, again
            upstreams.server = Server(upstreams.server.root)
            upstreams.server.wait_ready()
    sent = Counter(request["messages"][0]["content"]  # type: ignore[index]
                   for request in gpt.script.requests if "messages" in request)
    assert [sent[name] for name in names] == [1] * 8, sent


def test_gateways_on_one_redis_in_two_namespaces_keep_apart(
        tmp_path: Path, private_redis: PrivateRedis) -> None:
    """Every Redis key was under "aigw": two gateways sharing one Redis (two environments)
    listed, read and ran each other's files and batches. Each keeps to its
    ``redis_namespace`` now, its limits, ledger and kept responses too."""
    served = [responses_gateway(tmp_path / name, f'store: "{private_redis.url}", '
                                f"redis_namespace: {name}, {SETTINGS}", _keys())
              for name in ("staging", "prod")]
    with served[0] as staging, served[1] as prod, sdk(staging, ALICE) as first, \
            sdk(prod, ALICE) as second:
        made = _batch(first, [_line("only-staging")])
        assert _until(first, made.id, ("completed",)).request_counts.completed == 1  # type: ignore[union-attr]
        first.responses.create(model="gpt", input="kept in staging")
        theirs = second.files.create(file=("input.jsonl", _jsonl([_line("p")])),
                                     purpose="batch")
        assert [file.id for file in second.files.list()] == [theirs.id]
        listed = {file.id for file in first.files.list()}
        assert made.input_file_id in listed and theirs.id not in listed
        assert second.batches.list().data == []
        with pytest.raises(openai.NotFoundError):
            second.batches.retrieve(made.id)
        with pytest.raises(openai.NotFoundError):
            second.files.retrieve(made.input_file_id)
        with redis.Redis.from_url(private_redis.url, decode_responses=True) as client:
            keys = list(client.scan_iter())
            recorded = set(client.hkeys("aigw.namespaces"))
        # One key outside them: the record of the namespaces gateways started under.
        keys.remove("aigw.namespaces")
        assert recorded == {"staging", "prod"}
        assert {key.partition(":")[0] for key in keys} == {"staging", "prod"}, keys
        assert {"staging:rec", "staging:response"} <= {  # its ledger, its kept response
            ":".join(key.split(":")[:2]) for key in keys}


def _holder(upstreams: Upstreams, batch_id: str) -> str | None:
    """The lease owner (``host:pid:token``) of a batch, None when nobody holds it."""
    found_redis = _redis(upstreams)
    if found_redis is not None:
        client, namespace = found_redis
        with client:
            found: str | None = client.get(f"{namespace}:batch:{batch_id}:lease")
            return found
    store = sqlite3.connect(upstreams.server.root / "aigw-batches.sqlite")
    try:
        owner, until = store.execute("SELECT lease_owner, lease_until FROM batches "
                                     "WHERE id = ?", (batch_id,)).fetchone()
    finally:
        store.close()
    return owner if until > time.time() else None


def _recorded(upstreams: Upstreams, batch_id: str) -> list[str]:
    """The custom ids of the lines the store has as finished."""
    found_redis = _redis(upstreams)
    if found_redis is not None:
        client, namespace = found_redis
        with client:
            results = [value[1:] for value in
                       client.hgetall(f"{namespace}:batch:{batch_id}:lines").values()]
        return [json.loads(result)["custom_id"] for result in results]
    store = sqlite3.connect(upstreams.server.root / "aigw-batches.sqlite")
    try:
        return [json.loads(result)["custom_id"] for (result,) in store.execute(
            "SELECT result FROM batch_lines WHERE batch_id = ?", (batch_id,))]
    finally:
        store.close()
