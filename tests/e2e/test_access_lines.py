"""Every API request has one access-log line and its answer that line's id
(``x-request-id``), not only the model endpoints': the stored responses, conversations,
files and batches, the usage and admin APIs, /v1/models, the token counts and a path or
method no route has. Before, these wrote no line and carried no id: an operator could
not see who deleted a stored response, nor count a misconfigured client's 404s (real
``aigw serve``, the official SDKs)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..providers.conftest import dev_key_line
from .responses_gateway import Upstreams, responses_gateway, sdk
from .test_request_ids import logged_as
from .ws import refused_handshake

pytestmark = pytest.mark.e2e

ALICE = "sk-access-lines-alice"  # a key of team eng, never to be seen in a line


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    digest = hashlib.sha256(ALICE.encode()).hexdigest()
    keys = "teams:\n  eng: {}\n" + dev_key_line(keys=f"  alice: {{team: eng, sha256: {digest}}}\n")
    with responses_gateway(tmp_path_factory.mktemp("access-lines") / "gw", keys=keys) as served:
        yield served


def line_of(upstreams: Upstreams, answer: httpx.Response, status: int,
            endpoint: str, key: str | None = "alice") -> dict[str, Any]:
    """The access line of ``answer``: its status, endpoint and caller, and no secret."""
    assert answer.status_code == status, answer.text
    line = logged_as(upstreams, answer.headers, status)
    assert (line["endpoint"], line["key"]) == (endpoint, key)
    assert line["team"] == ("eng" if key == "alice" else None)
    assert ALICE not in str(line) and DEV_KEY not in str(line)
    assert line["graph"] == answer.headers["x-aigw-graph"]
    return line


def as_alice(upstreams: Upstreams) -> httpx.Client:
    return httpx.Client(base_url=upstreams.server.base_url, timeout=30,
                        headers={"authorization": f"Bearer {ALICE}"})


def test_stored_responses_have_their_lines(upstreams: Upstreams) -> None:
    with sdk(upstreams, ALICE) as client:
        made = client.responses.create(model="echo", input="hello", store=True)
        got = client.responses.with_raw_response.retrieve(made.id)
        items = client.responses.input_items.with_raw_response.list(made.id)
        cancelled = client.responses.with_raw_response.cancel  # a 400: it has ended
        with pytest.raises(openai.BadRequestError) as refused:
            cancelled(made.id)
        deleted = client.responses.with_raw_response.delete(made.id)
        with pytest.raises(openai.NotFoundError) as gone:
            client.responses.retrieve(made.id)
    line_of(upstreams, got.http_response, 200, "responses_stored")
    line_of(upstreams, items.http_response, 200, "responses_stored")
    assert line_of(upstreams, refused.value.response, 400,
                   "responses_stored")["error"] is not None
    deletion = line_of(upstreams, deleted.http_response, 200, "responses_stored")
    assert (deletion["method"], deletion["path"]) == ("DELETE", f"/v1/responses/{made.id}")
    assert line_of(upstreams, gone.value.response, 404, "responses_stored")["error"]
    for line in (deletion,):  # no model was called: nothing of one is claimed
        assert (line["route"], line["deployment"]) == (None, None)
        assert "prompt_tokens" not in line


def test_conversations_files_and_batches_have_their_lines(upstreams: Upstreams) -> None:
    with sdk(upstreams, ALICE) as client:
        made = client.conversations.with_raw_response.create()
        conversation = made.parse()
        read = client.conversations.with_raw_response.retrieve(conversation.id)
        files = client.files.with_raw_response.list()
        with pytest.raises(openai.NotFoundError) as missing:
            client.batches.retrieve("batch_nobody_made")
    line_of(upstreams, made.http_response, 200, "conversations")
    assert line_of(upstreams, read.http_response, 200, "conversations")["path"] == (
        f"/v1/conversations/{conversation.id}")
    line_of(upstreams, files.http_response, 200, "files")
    line_of(upstreams, missing.value.response, 404, "batches")


def test_models_usage_and_admin_have_their_lines(upstreams: Upstreams) -> None:
    with sdk(upstreams, ALICE) as client:
        models = client.models.with_raw_response.list()
    line_of(upstreams, models.http_response, 200, "models")
    with as_alice(upstreams) as alice:
        line_of(upstreams, alice.get("/v1/costs/summary"), 200, "usage")
        refused = line_of(upstreams, alice.get("/admin/status"), 403, "admin")
    assert refused["error"] is not None
    status = httpx.get(f"{upstreams.server.base_url}/admin/status", timeout=30,
                       headers={"authorization": f"Bearer {DEV_KEY}"})
    line_of(upstreams, status, 200, "admin", key="dev")
    nobody = httpx.get(f"{upstreams.server.base_url}/v1/models", timeout=30)
    assert line_of(upstreams, nobody, 401, "models", key=None)["error"] is not None


def test_token_counts_have_their_lines(upstreams: Upstreams) -> None:
    base_url = upstreams.server.base_url
    with anthropic.Anthropic(base_url=base_url, api_key=ALICE, max_retries=0) as claude:
        counted = claude.messages.with_raw_response.count_tokens(
            model="claude", messages=[{"role": "user", "content": "hello"}])
    line_of(upstreams, counted.http_response, 200, "count_tokens")
    gemini = httpx.post(f"{base_url}/v1beta/models/gpt:countTokens", timeout=30,
                        headers={"x-goog-api-key": ALICE},
                        json={"contents": [{"parts": [{"text": "hello"}]}]})
    line_of(upstreams, gemini, 200, "gemini")
    listed = httpx.get(f"{base_url}/v1beta/models", headers={"x-goog-api-key": ALICE})
    line_of(upstreams, listed, 200, "gemini")


def test_an_unknown_path_or_method_has_its_line_and_a_bounded_count(
    upstreams: Upstreams,
) -> None:
    with as_alice(upstreams) as alice:
        unknown = alice.get("/v1/no-such-thing/sk-not-a-label")
        wrong = alice.get("/v1/chat/completions")
        probe, metrics = alice.get("/health"), alice.get("/metrics")
    line = line_of(upstreams, unknown, 404, "not_found", key=None)
    assert (line["path"], line["error"]) == ("/v1/no-such-thing/sk-not-a-label",
                                              "not_found")
    assert line_of(upstreams, wrong, 405, "other", key=None)["error"] == "method_not_allowed"
    # The probes are not logged, and carry no id.
    assert "x-request-id" not in probe.headers and "x-request-id" not in metrics.headers
    # Counted with no route, deployment or provider: the path is never a label.
    assert "sk-not-a-label" not in metrics.text
    assert ('aigw_requests_total{deployment="_none",provider="_none",route="_none",'
            'status="404",team="_none"}') in metrics.text


def test_a_websocket_to_an_unknown_path_has_its_line(upstreams: Upstreams) -> None:
    """Starlette refuses it before the accept (the server answers 403): it had no line,
    SnapshotMiddleware passing every WebSocket through, and its 403 no id."""
    status, headers, body = refused_handshake(upstreams.server.port, "/v1/nowhere")
    assert status == 403
    deadline = time.monotonic() + 5.0
    while (line := upstreams.server.access_line(headers["x-request-id"])) is None:
        assert time.monotonic() < deadline, "no access-log line has its x-request-id"
        time.sleep(0.05)
    assert {name: line[name] for name in ("endpoint", "method", "path", "status", "error",
                                          "key", "graph")} == {
        "endpoint": "not_found", "method": "GET", "path": "/v1/nowhere", "status": 403,
        "error": "not_found", "key": None, "graph": headers["x-aigw-graph"]}
    assert json.loads(body)["error"] == {
        "message": "Unknown endpoint: GET /v1/nowhere.", "type": "invalid_request_error",
        "param": None, "code": "not_found"}
