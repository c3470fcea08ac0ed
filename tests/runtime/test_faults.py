"""runtime/telemetry/faults.py: an error no handler names, served by hypercorn as
``aigw serve`` runs it (its errors logged to ``hypercorn.error``).

The provider adapter is the seam: one whose call fails as a bug in aigw would, its
error quoting the provider's key and the caller's (as a repr of headers or a URL may).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from aigw.compiler.graph import Provider
from aigw.runtime.app import create_app
from aigw.runtime.live import Gateway
from aigw.runtime.providers import registry
from aigw.runtime.providers.base import ChatAdapter, ChatCall, ChatResult
from aigw.runtime.providers.echo import EchoAdapter
from aigw.runtime.providers.realtime import RealtimeCall
from aigw.runtime.tokens import TokenCounter

from ..conftest import DEV_KEY
from ..fakes.serve import serving

PROVIDER_KEY = "sk-provider-0123456789abcdef"
PROMPT = "a prompt only the request body holds"


class _Buggy(EchoAdapter):
    """A call that fails inside aigw, its message quoting both keys."""

    async def complete(self, call: ChatCall) -> ChatResult:
        raise RuntimeError(f"a bug, with {self._provider.api_key} and Bearer {DEV_KEY} "
                           "in its message")


@pytest.fixture
def gateway(tmp_path: Path, counter: TokenCounter,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    def buggy(provider: Provider, counter: TokenCounter) -> ChatAdapter:
        return _Buggy(provider, counter)

    monkeypatch.setattr(registry, "ADAPTERS", {**registry.ADAPTERS, "openai": buggy})
    (tmp_path / "gateway.yaml").write_text(f"""\
version: 1
providers: {{openai: {{type: openai, api_key: {PROVIDER_KEY}}}}}
deployments: {{mini: {{provider: openai, model: gpt-4o-mini, context_window: 128000}}}}
routes: {{chat: {{deployment: mini}}}}
keys: {{dev: {{admin: true, secret: {DEV_KEY}}}}}
""")
    yield Gateway(tmp_path, counter)


@pytest.mark.parametrize(("root_path", "path"), [
    ("", "/v1/chat/completions"), ("/gw", "/v1/chat/completions"), ("", "/v1/messages"),
], ids=["a-model-endpoint-called-directly", "through-starlettes-router", "messages"])
def test_an_unexpected_error_is_logged_once_with_its_request_id_and_no_secret(
        gateway: Gateway, caplog: pytest.LogCaptureFixture, root_path: str, path: str) -> None:
    """Through Starlette's router (an app mounted under a prefix goes that way) the
    error was logged twice, by the app's handler and again by hypercorn, which logs what
    an app raises; no line named the request's id, and each quoted the keys."""
    with serving(create_app(gateway), ready_path="/health",
                 errorlog=logging.getLogger("hypercorn.error"), root_path=root_path) as base:
        response = httpx.post(f"{base}{root_path}{path}", json={
            "model": "chat", "max_tokens": 50,
            "messages": [{"role": "user", "content": PROMPT}]},
            headers={"authorization": f"Bearer {DEV_KEY}"})
    assert response.status_code == 500
    assert "internal error" in response.text
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, [record.getMessage() for record in errors]
    logged = caplog.text
    assert f"(request {response.headers['x-request-id']})" in errors[0].getMessage()
    assert "RuntimeError: a bug, with *** and Bearer *** in its message" in logged
    assert PROVIDER_KEY not in logged and PROVIDER_KEY[-4:] not in logged
    assert DEV_KEY not in logged
    assert PROMPT not in logged


class _BuggyRealtime(_Buggy):
    """A Realtime session that fails inside aigw, quoting both keys: as it opens, or
    (``relaying``) as its relay reads the upstream's first frame."""

    relaying = False

    async def realtime(self, call: RealtimeCall) -> aiohttp.ClientWebSocketResponse:
        if self.relaying:
            return _BrokenSocket(self._provider.api_key)  # type: ignore[return-value]
        raise RuntimeError(f"a bug, with {self._provider.api_key} and Bearer {DEV_KEY} "
                           "in its message")


class _BrokenSocket:
    """An upstream socket whose reading fails as a bug in aigw would."""

    def __init__(self, key: str) -> None:
        self._key = key

    async def receive(self) -> aiohttp.WSMessage:
        raise RuntimeError(f"a bug, with {self._key} and Bearer {DEV_KEY} in its message")

    async def send_str(self, _text: str) -> None:
        """Sent nowhere."""

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        return True


@pytest.mark.parametrize("relaying", [False, True], ids=["opening", "relaying"])
def test_an_unexpected_error_of_a_realtime_session_is_logged_once_and_closes_it_1011(
        tmp_path: Path, counter: TokenCounter, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, relaying: bool) -> None:
    """The error went to hypercorn's log alone ("Error in ASGI Framework"), its traceback
    quoting the keys and naming no session; a relay's session was closed as if it had
    ended well (1000)."""
    def buggy(provider: Provider, counter: TokenCounter) -> ChatAdapter:
        adapter = _BuggyRealtime(provider, counter)
        adapter.relaying = relaying
        return adapter

    monkeypatch.setattr(registry, "ADAPTERS", {**registry.ADAPTERS, "openai": buggy})
    (tmp_path / "gateway.yaml").write_text(f"""\
version: 1
providers: {{openai: {{type: openai, api_key: {PROVIDER_KEY}}}}}
deployments:
  voice: {{provider: openai, model: gpt-realtime, kind: realtime, context_window: 32000}}
routes: {{voice: {{deployment: voice}}}}
keys: {{dev: {{admin: true, secret: {DEV_KEY}}}}}
""")

    async def session(base: str) -> tuple[str, int | None]:
        url = base.replace("http", "ws", 1) + "/v1/realtime?model=voice"
        async with connect(url, additional_headers={"authorization": f"Bearer {DEV_KEY}"}
                           ) as socket:
            with pytest.raises(ConnectionClosed) as closed:
                while True:  # the error event first, where the session has one
                    event = json.loads(await socket.recv())
                    assert event["type"] == "error"
                    assert event["error"]["message"] == "The gateway had an internal error."
            assert socket.response is not None
            return socket.response.headers["x-request-id"], closed.value.rcvd and \
                closed.value.rcvd.code

    caplog.set_level(logging.INFO, logger="aigw.access")
    with serving(create_app(Gateway(tmp_path, counter)), ready_path="/health",
                 errorlog=logging.getLogger("hypercorn.error")) as base:
        request_id, code = asyncio.run(session(base))
    assert code == 1011
    [line] = [json.loads(record.getMessage()) for record in caplog.records
              if record.name == "aigw.access"]
    assert (line["request_id"], line["status"]) == (request_id, 500)
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, [record.getMessage() for record in errors]
    assert f"on GET /v1/realtime (request {request_id})" in errors[0].getMessage()
    logged = caplog.text
    assert "RuntimeError: a bug, with *** and Bearer *** in its message" in logged
    assert PROVIDER_KEY not in logged and PROVIDER_KEY[-4:] not in logged
    assert DEV_KEY not in logged
