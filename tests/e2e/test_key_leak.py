"""A provider key never shows: not in responses, not in anything the gateway prints."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from .server import Server

pytestmark = pytest.mark.e2e

PROVIDER_KEY = "sk-provider-secret-7f3a9c2e41b8d6"


def test_failing_upstream_never_leaks_the_provider_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = OpenAIFake(api_key=PROVIDER_KEY)
    seen: list[str] = []
    with serving(fake.app) as upstream:
        root = tmp_path / "gw"
        root.mkdir()
        (root / "gateway.yaml").write_text(f"""
version: 1
settings: {{log_level: debug}}
providers:
  up: {{type: openai, base_url: "{upstream}/v1", api_key: "${{LEAK_TEST_KEY}}"}}
deployments:
  d: {{provider: up, model: gpt-x, context_window: 10000}}
groups:
  g: {{members: [d], retry: {{attempts: 0}}}}
routes:
  r: {{group: g}}
keys:
  dev: {{admin: true, sha256: 2f0527c3d35a1f337ec6033b75e33c053e72e7122963d86dffe7c2f10bcbb482}}
""")
        monkeypatch.setenv("LEAK_TEST_KEY", PROVIDER_KEY)
        server = Server(root)
        try:
            server.wait_ready()
            client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=DEV_KEY,
                                   max_retries=0)
            ask = {"model": "r", "messages": [{"role": "user", "content": "hi"}]}
            # An upstream that echoes the key it got, in several ways of failing.
            echo_key = {"error": {"message": f"bad key {PROVIDER_KEY} (…{PROVIDER_KEY[-4:]})",
                                  "type": "server_error", "param": None, "code": None}}
            fake.script.actions += [
                Action(status=500, body=echo_key),
                Action(status=400, body=echo_key),
                Action(status=429, body=echo_key, headers={"retry-after": "1"}),
            ]
            for _ in range(3):
                with pytest.raises(openai.APIStatusError) as failure:
                    client.chat.completions.create(**ask)  # type: ignore[call-overload]
                seen.append(failure.value.response.text)
                seen.append(str(failure.value))
            fake.api_key = "sk-a-different-key"  # now upstream refuses the gateway's key
            with pytest.raises(openai.APIStatusError) as refused:
                client.chat.completions.create(**ask)  # type: ignore[call-overload]
            seen.append(refused.value.response.text)
            admin = {"Authorization": f"Bearer {DEV_KEY}"}
            for path in ("/admin/status", "/metrics", "/v1/models"):
                seen.append(httpx.get(f"{server.base_url}{path}", headers=admin).text)
        finally:
            server.stop()
        seen.append(server.log)
    everything = "\n".join(seen)
    assert "upstream_auth_failed" in everything  # the failures did happen
    assert PROVIDER_KEY not in everything
    assert PROVIDER_KEY[-4:] not in everything
