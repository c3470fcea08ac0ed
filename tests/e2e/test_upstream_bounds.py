"""A real ``aigw serve`` whose provider answers more than its ``max_response_mb``: the
openai SDK gets an OpenAI-shaped 502 naming the setting, and the gateway goes on serving
(the answer was never held whole). The OpenAI fake echoes the prompt, so a long prompt
makes a long answer, and a one-word prompt one long stream line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from .server import Server, sdk_gateway

pytestmark = pytest.mark.e2e


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[openai.OpenAI,
                                                                              Server]]:
    fake = OpenAIFake()
    monkeypatch.setenv("FAKE_OPENAI_KEY", fake.api_key)
    with serving(fake.app) as base_url, sdk_gateway(tmp_path / "gw", (
        "providers:\n"
        f'  up: {{type: openai, base_url: "{base_url}/v1", api_key: "${{FAKE_OPENAI_KEY}}",'
        " max_response_mb: 0.0625}\n"  # 64 KiB
        "deployments:\n"
        "  gpt: {provider: up, model: gpt-4o, context_window: 1000000,"
        " capabilities: [streaming]}\n"
        "routes:\n"
        "  gpt: {deployment: gpt}\n"
    )) as gateway:
        yield gateway


def test_an_answer_over_the_providers_bound_is_a_502(
    gateway: tuple[openai.OpenAI, Server],
) -> None:
    client, server = gateway
    big = "word " * 20_000  # about 100 KiB, echoed back
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": big}])
    assert caught.value.status_code == 502
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["code"] == "upstream_response_too_large"
    assert "max_response_mb" in caught.value.body["message"]

    # A stream's first chunk (the role) was sent on already: the error ends the stream.
    with pytest.raises(openai.APIError, match="max_response_mb") as in_stream:
        for _chunk in client.chat.completions.create(
                model="gpt", stream=True, messages=[{"role": "user", "content": "x" * 100_000}]):
            pass
    assert isinstance(in_stream.value.body, dict)
    assert in_stream.value.body["code"] == "upstream_response_too_large"

    answer = client.chat.completions.create(  # the same gateway, a small answer: served
        model="gpt", messages=[{"role": "user", "content": "hello"}])
    assert answer.choices[0].message.content == "fake-openai: hello"
    records = [json.loads(line) for line in server.log.splitlines() if line.startswith("{")]
    errors = [record.get("error") for record in records if record.get("error")]
    assert errors == ["upstream_response_too_large"] * 2
