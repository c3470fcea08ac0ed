"""A reload does not cut the streams in flight on the provider clients it replaced: they
are closed once those requests end (however long), and a client closed under a stream
ends its reader with an error, never leaves it waiting."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx

from aigw.compiler.graph import Provider
from aigw.runtime.app import create_app
from aigw.runtime.errors import UpstreamError
from aigw.runtime.live import Gateway
from aigw.runtime.tokens import TokenCounter
from aigw.runtime.upstream_aiohttp import AiohttpUpstream

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from ..fakes.openai_fake import OpenAIFake

DEV_SHA256 = hashlib.sha256(DEV_KEY.encode()).hexdigest()
WORDS = " ".join(f"w{n}" for n in range(16))


def _config(upstream: str, header: str) -> str:
    return f"""
version: 1
providers:
  up: {{type: openai, base_url: "{upstream}/v1", api_key: "${{FAKE_OPENAI_KEY}}",
        timeout_s: 1, headers: {{x-rotation: "{header}"}}}}
deployments:
  gpt: {{provider: up, model: gpt-4o-mini, context_window: 128000}}
routes:
  chat: {{deployment: gpt}}
keys:
  dev: {{admin: true, sha256: {DEV_SHA256}}}
"""


async def test_a_stream_outlives_the_reload_that_replaced_its_provider(
    tmp_path: Path, counter: TokenCounter, openai_upstream: tuple[OpenAIFake, str]
) -> None:
    fake, url = openai_upstream
    # 18 events 0.4 s apart: longer than the providers' timeout_s + 5 s, the fixed grace
    # after which a reload used to close the client under the stream.
    fake.script.actions.append(Action(event_delay_s=0.4))
    (tmp_path / "gateway.yaml").write_text(_config(url, "one"))
    gateway = Gateway(tmp_path, counter)
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        http = httpx.AsyncClient(transport=transport, base_url="http://aigw.test",
                                 headers={"authorization": f"Bearer {DEV_KEY}"}, timeout=60)
        async with http, http.stream("POST", "/v1/chat/completions", json={
                "model": "chat", "stream": True,
                "messages": [{"role": "user", "content": WORDS}]}) as response:
            chunks = response.aiter_text()
            first = await anext(chunks)
            (tmp_path / "gateway.yaml").write_text(_config(url, "two"))  # a new client
            assert (await gateway.reload("test")).ok
            async with asyncio.timeout(30):
                rest = "".join([chunk async for chunk in chunks])
        text = first + rest
        assert '"finish_reason":"stop"' in text and text.rstrip().endswith("data: [DONE]")
    finally:
        await gateway.aclose()


async def test_closing_a_client_ends_the_stream_it_was_reading_with_an_error(
    openai_upstream: tuple[OpenAIFake, str],
) -> None:
    fake, url = openai_upstream
    fake.script.actions.append(Action(event_delay_s=5.0))
    provider = Provider(name="up", type="openai", base_url=f"{url}/v1", api_version=None,
                        timeout_s=30.0, max_connections=4, headers={}, disabled_reason=None,
                        api_key=fake.api_key)
    client = AiohttpUpstream(provider)
    events = client.post_sse(f"{url}/v1/chat/completions",
                             {"model": "m", "stream": True,
                              "messages": [{"role": "user", "content": WORDS}]},
                             {"authorization": f"Bearer {fake.api_key}"})
    await anext(events)
    await client.aclose()
    async with asyncio.timeout(10):  # it raised at once; it waited for ever
        try:
            await anext(events)
        except UpstreamError:
            pass
        else:
            raise AssertionError("the stream went on after its client was closed")
    await events.aclose()
