"""The gateway the /v1/responses and /v1/completions end-to-end tests serve: routes on
the OpenAI fake, the Anthropic fake and the echo provider (``spill``: the OpenAI fake,
the Anthropic one when it fails), a real ``aigw serve`` in front of them.

A test module defines its own ``upstreams`` fixture (``responses_gateway`` with its
settings and keys, or the shared ``kept_upstreams`` for one that keeps responses on
both stores);
the fixtures ``client`` (the dev key's SDK) and ``alice`` (an app key's) are shared,
re-exported by the folder's conftest."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.anthropic_fake import AnthropicFake
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from ..providers.conftest import DEV_KEY_LINE, dev_key_line
from .server import Server

# The secrets of two apps' keys, which find only what they made themselves.
ALICE, BOB = "sk-responses-alice", "sk-responses-bob"

POLICIES = """
@id("keys-may-invoke-routes")
permit (principal, action == Action::"invoke", resource);

@id("any-deployment-may-serve")
permit (principal, action == Action::"route", resource);

@id("nobody-calls-locked")
forbid (principal, action == Action::"invoke", resource == Route::"locked");
"""


@dataclass
class Upstreams:
    gpt: OpenAIFake
    claude: AnthropicFake
    server: Server

    def restart(self) -> None:
        """Stop the gateway and serve its directory again, the fakes left running."""
        self.server.stop()
        self.server = Server(self.server.root)
        self.server.wait_ready()


def _gateway_yaml(gpt_url: str, claude_url: str, settings: str, keys: str) -> str:
    return (
        "version: 1\n"
        f"settings: {{{settings}}}\n"
        "providers:\n"
        f'  oai: {{type: openai, base_url: "{gpt_url}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}\n'
        f'  ant: {{type: anthropic, base_url: "{claude_url}", '
        'api_key: "${FAKE_ANTHROPIC_KEY}"}\n'
        "  local: {type: echo}\n"
        "deployments:\n"
        "  gpt: {provider: oai, model: gpt-4o-mini, context_window: 128000,\n"
        "        capabilities: [streaming, tools, vision]}\n"
        "  sonnet: {provider: ant, model: claude-sonnet-4-5, context_window: 200000,\n"
        "           max_output_tokens: 4096, capabilities: [streaming, tools]}\n"
        "  echo: {provider: local, model: echo-1, context_window: 8192,\n"
        "         capabilities: [streaming, json_schema]}\n"
        "groups:\n"
        "  gpt-first: {members: [gpt], retry: {attempts: 0}, fallbacks: {on_error: [spare]}}\n"
        "  spare: {members: [sonnet]}\n"
        "routes:\n"
        "  gpt: {deployment: gpt}\n"
        "  claude: {deployment: sonnet}\n"
        "  echo: {deployment: echo}\n"
        "  gpt-cached: {deployment: gpt, cache: {ttl_s: 600}}\n"
        "  locked: {deployment: gpt}\n"
        "  spill: {group: gpt-first}\n" + keys
    )


@contextmanager
def responses_gateway(root: Path, settings: str = "store: embedded",
                      keys: str = DEV_KEY_LINE) -> Iterator[Upstreams]:
    """Both fakes and ``aigw serve`` on ``root`` (a folder it makes) with ``settings`` (the
    inside of its flow mapping) and ``keys`` (the keys section), until the block ends."""
    gpt, claude = OpenAIFake(), AnthropicFake()
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "gateway.cedar").write_text(POLICIES)
    with (pytest.MonkeyPatch.context() as env, serving(gpt.app) as gpt_url,
          serving(claude.app) as claude_url):
        env.setenv("FAKE_OPENAI_KEY", gpt.api_key)  # the server inherits them
        env.setenv("FAKE_ANTHROPIC_KEY", claude.api_key)
        (root / "gateway.yaml").write_text(_gateway_yaml(gpt_url, claude_url, settings, keys))
        upstreams = Upstreams(gpt, claude, Server(root))
        try:
            upstreams.server.wait_ready()
            yield upstreams
        finally:
            upstreams.server.stop()


def app_keys() -> str:
    """The keys section: the dev key (an admin) and two keys of apps, alice and bob."""
    return dev_key_line() + "".join(
        f"  {name}: {{sha256: {hashlib.sha256(secret.encode()).hexdigest()}}}\n"
        for name, secret in (("alice", ALICE), ("bob", BOB)))


def store_url(request: pytest.FixtureRequest, kind: str) -> str:
    """``settings.store`` of a test parametrized by ``kind``: embedded, or the test Redis."""
    return "embedded" if kind == "embedded" else str(request.getfixturevalue("redis_url"))


def sdk(upstreams: Upstreams, key: str) -> openai.OpenAI:
    """The official client, on the gateway, with ``key`` and no retries."""
    return openai.OpenAI(base_url=f"{upstreams.server.base_url}/v1", api_key=key,
                         max_retries=0)


# Query values a list endpoint refuses, by parameter (OpenAI's limit is a whole number
# from 1 to the endpoint's most; order asc or desc; after an item's id). The long ones
# are kilobytes, which the 400 is not to repeat.
REFUSED_PAGES = (("limit", "0"), ("limit", "101"), ("limit", " 5"), ("limit", "1_0"),
                 ("limit", "9" * 8000), ("order", "up"), ("order", "o" * 8000),
                 ("after", "a" * 8000))


def assert_pages_refused(listed: Callable[..., object],
                         refused: tuple[tuple[str, str], ...] = REFUSED_PAGES) -> None:
    """Each of ``refused`` (a parameter and its value) in the query of ``listed`` (an SDK
    list method, its other arguments given) is a 400 naming that parameter, whose
    message shows at most the first few dozen characters of the value."""
    for param, value in refused:
        with pytest.raises(openai.BadRequestError) as bad:
            listed(extra_query={param: value})
        assert bad.value.body["param"] == param, (param, value)  # type: ignore[index]
        assert len(bad.value.message) < 300, (param, len(bad.value.message))


# The stores a module whose responses are kept runs on, once each.
STORES = ("embedded", "redis")


@pytest.fixture(scope="module", params=STORES)
def kept_upstreams(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    """The gateway of a module that keeps responses, on each of ``STORES`` (kept in the
    shared test Redis too, so they expire within the hour), with alice's and bob's keys."""
    settings = f'store: "{store_url(request, request.param)}", responses_ttl_s: 3600'
    with responses_gateway(tmp_path_factory.mktemp("kept") / "gw", settings,
                           app_keys()) as served:
        yield served


@pytest.fixture
def client(upstreams: Upstreams) -> Iterator[openai.OpenAI]:
    """The dev key's SDK on the module's gateway."""
    with sdk(upstreams, DEV_KEY) as dev:
        yield dev


@pytest.fixture
def alice(upstreams: Upstreams) -> Iterator[openai.OpenAI]:
    """Alice's app key's SDK on the module's gateway (``app_keys``)."""
    with sdk(upstreams, ALICE) as app:
        yield app


def logged_and_billed(server: Server, endpoint: str, whole: str,
                      streamed: str) -> dict[str, Any]:
    """Checks a whole and a streamed answer of route ``gpt`` (3 tokens out each) are in
    the access log as ``endpoint`` and in the ledger; returns the whole one's line."""
    deadline = time.monotonic() + 10
    while not (server.access_line(whole) and server.access_line(streamed)):
        assert time.monotonic() < deadline, server.log
        time.sleep(0.05)
    whole_line, streamed_line = server.access_line(whole), server.access_line(streamed)
    assert whole_line is not None and streamed_line is not None
    assert (whole_line["endpoint"], whole_line["status"], whole_line["stream"],
            whole_line["route"]) == (endpoint, 200, False, "gpt")
    assert (streamed_line["endpoint"], streamed_line["stream"],
            streamed_line["completion_tokens"]) == (endpoint, True, 3)
    with sqlite3.connect(server.root / "aigw.sqlite") as ledger:
        rows = ledger.execute("SELECT request_id, route, status, tokens_out FROM ledger "
                              "WHERE request_id IN (?, ?)", (whole, streamed)).fetchall()
    ledger.close()
    assert sorted(rows) == sorted([(whole, "gpt", 200, 3), (streamed, "gpt", 200, 3)])
    return whole_line
