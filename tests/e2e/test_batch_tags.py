"""A real ``aigw serve``: a batch's lines are routed with the x-aigw-tags of the request
that created the batch, as that request's own chat would be (a line has no headers)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest

from .server import sdk_gateway

pytestmark = pytest.mark.e2e

PAIR = (
    "providers:\n"
    "  local: {type: echo}\n"
    "deployments:\n"
    "  cheap: {provider: local, model: cheap-1, context_window: 8000}\n"
    "  strong: {provider: local, model: strong-1, context_window: 8000}\n"
    "groups:\n"
    "  pair: {strategy: priority, members: [cheap, strong]}\n"
    "routes:\n"
    "  pair: {group: pair}\n"
)
# A request tagged 'eu' is not served by 'cheap' (say, hosted outside the EU).
EU_OFF_CHEAP = (
    '@id("everything")\npermit (principal, action, resource);\n'
    '@id("eu-stays-off-cheap")\nforbid (principal, action == Action::"route", '
    'resource == Deployment::"cheap") when { context.tags.contains("eu") };\n'
)
LINE = {"custom_id": "one", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "pair", "messages": [{"role": "user", "content": "which one"}]}}


def _served_by(client: openai.OpenAI, tags: str | None) -> str:
    """The model that answered a one-line batch created with ``tags`` (x-aigw-tags)."""
    headers = {"x-aigw-tags": tags} if tags else {}
    uploaded = client.files.create(file=("in.jsonl", json.dumps(LINE).encode() + b"\n"),
                                   purpose="batch")
    made = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                 completion_window="24h", extra_headers=headers)
    deadline = time.monotonic() + 30
    while (batch := client.batches.retrieve(made.id)).status != "completed":
        assert time.monotonic() < deadline and batch.status in ("validating", "in_progress",
                                                                "finalizing"), batch
        time.sleep(0.1)
    assert batch.output_file_id is not None, batch
    (line,) = [json.loads(text) for text in
               client.files.content(batch.output_file_id).text.splitlines()]
    model: str = line["response"]["body"]["model"]
    return model


def test_a_batchs_lines_are_routed_with_the_tags_of_the_request_that_made_it(
    tmp_path: Path,
) -> None:
    """A line was asked of Cedar as a request with no tags: a policy keeping tagged
    requests off a deployment held for the caller's chats and not for its batches."""
    root = tmp_path / "gw"
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "gateway.cedar").write_text(EU_OFF_CHEAP)
    with sdk_gateway(root, PAIR) as (client, _server):
        chat = client.chat.completions.with_raw_response.create(
            model="pair", messages=[{"role": "user", "content": "which one"}],
            extra_headers={"x-aigw-tags": "eu"})
        assert chat.headers["x-aigw-deployment"] == "strong"
        assert _served_by(client, None) == "cheap-1"
        assert _served_by(client, "eu") == "strong-1"
        listed = client.batches.list().data
        assert all("tags" not in batch.model_dump() for batch in listed)  # kept, not shown
