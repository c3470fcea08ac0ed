"""Pass-through (``passthrough:``) through a real ``aigw serve``: the official SDKs call
provider APIs the gateway does not model, the provider's key injected and never shown,
the caller's aigw key never sent on, governed by keys, Cedar and limits, and billed."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types

from ..conftest import DEV_KEY, metric_sample
from ..fakes.anthropic_fake import AnthropicFake
from ..fakes.brain import Action
from ..fakes.brotli_proxy import brotli_proxy
from ..fakes.gemini_fake import GeminiFake
from ..fakes.gzipping import gzipping
from ..fakes.openai_platform import OpenAIPlatformFake
from ..fakes.serve import serving
from .server import Server

pytestmark = pytest.mark.e2e

OPENAI_KEY = "sk-provider-platform-7f3a9c2e41b8d6"
ANTHROPIC_KEY = "sk-ant-provider-5b1e0c9d77aa42"
GEMINI_KEY = "AIzaProviderGeminiKey0123456789abc"
NARROW_KEY = "sk-aigw-narrow"  # passthrough: [] (none)
BLOCKED_KEY = "sk-aigw-blocked"  # Cedar forbids it openai-raw
SLOW_KEY = "sk-aigw-slow"  # 1 request a minute
SINGLE_KEY = "sk-aigw-single"  # 1 request at a time
UPLOAD_CAP = 8 << 20
PART_WAIT_S = 1.5  # settings.body_read_timeout_s
POLICIES = """
@id("everyone")
permit (principal, action, resource);

@id("blocked-keeps-off-openai")
forbid (principal in ApiKey::"blocked", action == Action::"invoke",
        resource == Passthrough::"openai-raw");
"""


@dataclass
class Gateway:
    server: Server
    platform: OpenAIPlatformFake
    claude: AnthropicFake
    gemini: GeminiFake
    squeezed: AnthropicFake  # behind a proxy that gzips its answers
    brotlied: AnthropicFake  # behind one that answers in brotli
    clients: dict[str, openai.OpenAI] = field(default_factory=dict)

    def openai(self, key: str = DEV_KEY) -> openai.OpenAI:
        """The openai SDK at the pass-through openai-raw, with ``key``: one a key, closed
        with the gateway."""
        if key not in self.clients:
            self.clients[key] = openai.OpenAI(
                base_url=f"{self.server.base_url}/passthrough/openai-raw/v1", api_key=key,
                max_retries=0)
        return self.clients[key]

    def url(self, path: str) -> str:
        return f"{self.server.base_url}{path}"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    platform = OpenAIPlatformFake(api_key=OPENAI_KEY)
    claude = AnthropicFake(api_key=ANTHROPIC_KEY)
    gemini = GeminiFake(api_key=GEMINI_KEY)
    squeezed = AnthropicFake(api_key=ANTHROPIC_KEY)
    brotlied = AnthropicFake(api_key=ANTHROPIC_KEY)
    with (serving(platform.app) as platform_url, serving(claude.app) as claude_url,
          serving(gemini.app) as gemini_url,
          serving(gzipping(squeezed.app)) as squeezed_url,
          serving(brotli_proxy(brotlied.app)) as brotlied_url):
        root = tmp_path_factory.mktemp("passthrough") / "gw"
        (root / "policies").mkdir(parents=True)
        (root / "policies" / "passthrough.cedar").write_text(POLICIES)
        (root / "gateway.yaml").write_text(f"""
version: 1
settings: {{max_passthrough_bytes: {UPLOAD_CAP}, body_read_timeout_s: {PART_WAIT_S}}}
providers:
  openai: {{type: openai, base_url: "{platform_url}/v1", api_key: "${{PT_OPENAI_KEY}}"}}
  claude: {{type: anthropic, base_url: "{claude_url}", api_key: "${{PT_ANTHROPIC_KEY}}"}}
  google: {{type: gemini, base_url: "{gemini_url}/v1beta", api_key: "${{PT_GEMINI_KEY}}"}}
  unkeyed: {{type: openai, base_url: "{platform_url}/v1", api_key: "${{PT_UNSET_KEY}}"}}
  squeezed: {{type: anthropic, base_url: "{squeezed_url}", api_key: "${{PT_ANTHROPIC_KEY}}"}}
  brotlied: {{type: anthropic, base_url: "{brotlied_url}", api_key: "${{PT_ANTHROPIC_KEY}}"}}
deployments:
  sonnet: {{provider: claude, model: claude-sonnet-4-6, context_window: 200000,
           price: {{input: 3, output: 15}}}}
  flash: {{provider: google, model: gemini-2.5-flash, context_window: 1048576,
          price: {{input: 0.3, output: 2.5}}}}
  haiku: {{provider: squeezed, model: claude-haiku-4-5, context_window: 200000,
          price: {{input: 1, output: 5}}}}
  mini: {{provider: openai, model: gpt-4o-mini, context_window: 128000,
         price: {{input: 0.15, output: 0.6}}}}
  opus: {{provider: brotlied, model: claude-opus-4-1, context_window: 200000,
         price: {{input: 15, output: 75}}}}
routes: {{sonnet: {{deployment: sonnet}}, flash: {{deployment: flash}},
         haiku: {{deployment: haiku}}, mini: {{deployment: mini}}, opus: {{deployment: opus}}}}
keys:
  dev: {{admin: true, sha256: {_digest(DEV_KEY)}}}
  narrow: {{sha256: {_digest(NARROW_KEY)}, passthrough: []}}
  blocked: {{sha256: {_digest(BLOCKED_KEY)}}}
  slow: {{sha256: {_digest(SLOW_KEY)}, limits: {{rpm: 1}}}}
  single: {{sha256: {_digest(SINGLE_KEY)}, limits: {{max_parallel: 1}}}}
passthrough:
  openai-raw:
    provider: openai
    paths: ["/v1/vector_stores/**", "/v1/files/**", "/v1/responses/*"]
    methods: [GET, POST, DELETE]
  anthropic-raw: {{provider: claude, paths: ["/v1/messages"], methods: [POST]}}
  gemini-raw: {{provider: google, paths: ["/v1beta/models/*"], methods: [POST]}}
  unkeyed-raw: {{provider: unkeyed, paths: ["/v1/vector_stores/**"]}}
  squeezed-raw: {{provider: squeezed, paths: ["/v1/messages"], methods: [POST]}}
  brotlied-raw: {{provider: brotlied, paths: ["/v1/messages"], methods: [POST]}}
""")
        with pytest.MonkeyPatch.context() as patch:
            for name, value in (("PT_OPENAI_KEY", OPENAI_KEY), ("PT_ANTHROPIC_KEY", ANTHROPIC_KEY),
                                ("PT_GEMINI_KEY", GEMINI_KEY)):
                patch.setenv(name, value)
            patch.delenv("PT_UNSET_KEY", raising=False)
            server = Server(root)
        gateway = Gateway(server, platform, claude, gemini, squeezed, brotlied)
        try:
            server.wait_ready()
            yield gateway
        finally:
            for client in gateway.clients.values():
                client.close()
            server.stop()


def test_vector_stores_through_the_openai_sdk_with_the_provider_key(gateway: Gateway) -> None:
    client = gateway.openai()
    gateway.platform.seen.clear()
    created = client.vector_stores.with_raw_response.create(name="docs")
    store = created.parse()
    assert store.name == "docs" and store.id.startswith("vs_")
    assert client.vector_stores.retrieve(store.id).id == store.id
    assert store.id in [item.id for item in client.vector_stores.list()]
    assert client.vector_stores.delete(store.id).deleted is True
    # Every request went up with the provider's key, none with the caller's.
    assert len(gateway.platform.seen) == 4
    for headers in gateway.platform.seen:
        assert headers["authorization"] == f"Bearer {OPENAI_KEY}"
        assert not any(DEV_KEY in value for value in headers.values())
    row = _last_ledger_row(gateway.server, "passthrough:openai-raw")
    assert row["status"] == 200 and row["cost"] == 0 and row["deployment"] is None


def test_files_stream_both_ways_within_the_size_cap(gateway: Gateway) -> None:
    client = gateway.openai()
    data = os.urandom(6 << 20)
    uploaded = client.files.create(file=("big.bin", data), purpose="assistants")
    assert uploaded.bytes == len(data)
    assert gateway.platform.files[uploaded.id] == data
    with client.files.with_streaming_response.content(uploaded.id) as answer:
        assert answer.headers["content-length"] == str(len(data))
        assert b"".join(answer.iter_bytes()) == data
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=("huge.bin", os.urandom(UPLOAD_CAP + 1)), purpose="assistants")
    assert refused.value.status_code == 413
    assert "max_passthrough_bytes" in refused.value.message


def test_an_answer_is_passed_on_as_it_comes_not_when_it_ends(gateway: Gateway) -> None:
    gateway.platform.release.clear()
    url = gateway.url("/passthrough/openai-raw/v1/files/file-held/content")
    with httpx.stream("GET", url, headers={"authorization": f"Bearer {DEV_KEY}"},
                      timeout=10) as answer:
        parts = answer.iter_raw()
        assert next(parts) == b"first part;"  # while the upstream still holds the rest
        gateway.platform.release.set()
        assert b"".join(parts) == b"the rest"


def test_a_chunked_upload_past_the_cap_is_refused_as_it_passes_it(gateway: Gateway) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(UPLOAD_CAP // (1 << 20) + 2):
            yield b"x" * (1 << 20)

    # No content-length: counted as it comes, the upstream reading it (a JSON body).
    answer = httpx.post(gateway.url("/passthrough/openai-raw/v1/vector_stores"),
                        content=body(), headers={"authorization": f"Bearer {DEV_KEY}",
                                                 "content-type": "application/json"},
                        timeout=30)
    assert answer.status_code == 413
    assert "max_passthrough_bytes" in answer.json()["error"]["message"]


def test_a_slow_upload_is_timed_a_part_at_a_time_not_whole(gateway: Gateway) -> None:
    def body() -> Iterator[bytes]:
        for part in (b'{"name": ', b'"slo', b'w-up', b'load"', b"}"):
            yield part
            time.sleep(PART_WAIT_S / 2)  # 2.5 waits in all: longer than one may be

    answer = httpx.post(gateway.url("/passthrough/openai-raw/v1/vector_stores"),
                        content=body(), headers={"authorization": f"Bearer {DEV_KEY}",
                                                 "content-type": "application/json"},
                        timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["name"] == "slow-upload"


def test_an_anthropic_stream_is_passed_on_and_billed_at_the_deployment_price(
        gateway: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.url("/passthrough/anthropic-raw"),
                                 api_key=DEV_KEY, max_retries=0)
    with client, client.messages.stream(
            model="claude-sonnet-4-6-20260101", max_tokens=64,
            messages=[{"role": "user", "content": "hello there"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text
    row = _last_ledger_row(gateway.server, "passthrough:anthropic-raw")
    usage = final.usage
    assert row["deployment"] == "sonnet" and row["status"] == 200
    assert (row["tokens_in"], row["tokens_out"]) == (usage.input_tokens, usage.output_tokens)
    expected = (usage.input_tokens * 3 + usage.output_tokens * 15) / 1_000_000
    assert row["cost"] == pytest.approx(expected, abs=1e-9)


def test_google_genai_passes_its_key_as_google_takes_it_the_providers_goes_on_billed(
        gateway: Gateway) -> None:
    with genai.Client(api_key=DEV_KEY, http_options=types.HttpOptions(
            base_url=gateway.url("/passthrough/gemini-raw"), api_version="v1beta",
            retry_options=types.HttpRetryOptions(attempts=1))) as client:
        answer = client.models.generate_content(model="gemini-2.5-flash", contents="hello")
    assert answer.text
    row = _last_ledger_row(gateway.server, "passthrough:gemini-raw")
    usage = answer.usage_metadata
    assert usage is not None and row["deployment"] == "flash"
    assert row["cost"] == pytest.approx(((usage.prompt_token_count or 0) * 0.3 + (
        usage.candidates_token_count or 0) * 2.5) / 1_000_000, abs=1e-9)
    sent = gateway.gemini.script.headers[-1]
    assert sent["x-goog-api-key"] == GEMINI_KEY
    assert not any(DEV_KEY in value for value in sent.values())
    # The aigw key in ?key= (Google's other way) is taken, and never sent on.
    answer_raw = httpx.post(
        gateway.url("/passthrough/gemini-raw/v1beta/models/gemini-2.5-flash:generateContent"
                    f"?key={DEV_KEY}"),
        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    assert answer_raw.status_code == 200
    assert gateway.gemini.paths[-1] == "/v1beta/models/gemini-2.5-flash:generateContent"


def test_paths_and_methods_outside_the_allow_list_are_refused(gateway: Gateway) -> None:
    headers = {"authorization": f"Bearer {DEV_KEY}"}
    before = len(gateway.platform.seen)
    for path in ("/passthrough/openai-raw/v1/fine_tuning/jobs",
                 "/passthrough/openai-raw/v1/vector_stores/%2e%2e/fine_tuning/jobs",
                 "/passthrough/openai-raw/v1/vector_stores%2F..%2Ffine_tuning",
                 "/passthrough/nowhere/v1/vector_stores"):
        answer = httpx.get(gateway.url(path), headers=headers)
        assert answer.status_code == 404, path
        assert answer.json()["error"]["code"] == "not_found"
    answer = httpx.put(gateway.url("/passthrough/openai-raw/v1/vector_stores"), headers=headers)
    assert answer.status_code == 405
    assert answer.headers["allow"] == "DELETE, GET, POST"
    assert len(gateway.platform.seen) == before  # nothing went upstream


def test_a_key_not_allowed_the_passthrough_is_refused(gateway: Gateway) -> None:
    before = len(gateway.platform.seen)
    with pytest.raises(openai.NotFoundError):  # not its to know the name exists
        gateway.openai(NARROW_KEY).vector_stores.list()
    with pytest.raises(openai.PermissionDeniedError) as forbidden:
        gateway.openai(BLOCKED_KEY).vector_stores.list()
    assert "blocked-keeps-off-openai" in forbidden.value.message
    with pytest.raises(openai.AuthenticationError):
        gateway.openai("sk-not-a-key").vector_stores.list()
    assert len(gateway.platform.seen) == before


def test_a_passthrough_whose_provider_is_disabled_says_why_and_sends_nothing(
        gateway: Gateway) -> None:
    before = len(gateway.platform.seen)
    answer = httpx.get(gateway.url("/passthrough/unkeyed-raw/v1/vector_stores"),
                       headers={"authorization": f"Bearer {DEV_KEY}"})
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "passthrough_unavailable"
    assert "PT_UNSET_KEY is not set" in error["message"]
    assert len(gateway.platform.seen) == before
    row = _last_ledger_row(gateway.server, "passthrough:unkeyed-raw")
    assert row["status"] == 503
    # The refusal carries the id of its access line, for the client to quote to ops.
    (request_id,) = answer.headers.get_list("x-request-id")
    deadline = time.monotonic() + 10
    while (line := gateway.server.access_line(request_id)) is None:
        assert time.monotonic() < deadline, f"no access-log line has {request_id}"
        time.sleep(0.05)
    assert line["status"] == 503


def test_the_key_rate_limit_applies(gateway: Gateway) -> None:
    client = gateway.openai(SLOW_KEY)
    client.vector_stores.list()
    with pytest.raises(openai.RateLimitError):
        client.vector_stores.list()


def test_a_stream_holds_its_place_until_its_client_leaves_and_is_recorded(
        gateway: Gateway) -> None:
    gateway.platform.release.clear()
    url = gateway.url("/passthrough/openai-raw/v1/files/file-held/content")
    client = gateway.openai(SINGLE_KEY)
    with httpx.stream("GET", url, headers={"authorization": f"Bearer {SINGLE_KEY}"},
                      timeout=10) as answer:
        parts = answer.iter_raw()  # kept: a generator let go of closes the response
        assert next(parts) == b"first part;"
        with pytest.raises(openai.RateLimitError):  # its one place is this stream's
            client.vector_stores.list()
    # The client left mid-answer: recorded as such, and its place given back.
    row = _last_ledger_row(gateway.server, "passthrough:openai-raw", status=499)
    assert row["cost"] == 0
    client.vector_stores.list()
    gateway.platform.release.set()


def test_an_upstream_that_cuts_its_answer_cuts_the_clients_and_is_recorded(
        gateway: Gateway) -> None:
    url = gateway.url("/passthrough/openai-raw/v1/files/file-cut/content")
    with pytest.raises(httpx.HTTPError), httpx.stream(
            "GET", url, headers={"authorization": f"Bearer {DEV_KEY}"}, timeout=10) as answer:
        answer.read()
    row = _last_ledger_row(gateway.server, "passthrough:openai-raw", status=502)
    assert row["deployment"] is None
    assert OPENAI_KEY not in gateway.server.log


def test_the_provider_key_is_scrubbed_from_an_error_answer_and_the_log(
        gateway: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        gateway.openai().vector_stores.create(name="echo-key")
    assert refused.value.status_code == 400
    body = refused.value.response.text
    assert "refused for key" in body
    assert OPENAI_KEY not in body and OPENAI_KEY[-4:] not in body
    assert OPENAI_KEY not in gateway.server.log
    assert DEV_KEY not in gateway.server.log


def test_metrics_label_the_passthrough_never_the_path(gateway: Gateway) -> None:
    client = gateway.openai()
    store = client.vector_stores.create(name="metrics")
    client.vector_stores.retrieve(store.id)
    page = httpx.get(gateway.url("/metrics")).text
    assert 'route="passthrough:openai-raw"' in page
    assert store.id not in page and "vector_stores" not in page


def test_a_gzipped_answer_goes_on_as_it_came_and_its_usage_is_billed(
        gateway: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gateway.url("/passthrough/squeezed-raw"),
                                 api_key=DEV_KEY, max_retries=0)
    with client:
        raw = client.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=64,
            messages=[{"role": "user", "content": "one two three"}])
        assert raw.headers["content-encoding"] == "gzip"  # the bytes as the upstream sent
        usage = raw.parse().usage
        row = _ledger_row_of(gateway.server, "passthrough:squeezed-raw", usage.output_tokens)
        assert row["deployment"] == "haiku" and row["status"] == 200
        assert (row["tokens_in"], row["tokens_out"]) == (usage.input_tokens,
                                                         usage.output_tokens)
        assert row["cost"] == pytest.approx(
            (usage.input_tokens * 1 + usage.output_tokens * 5) / 1_000_000, abs=1e-12)
        with client.messages.stream(
                model="claude-haiku-4-5", max_tokens=64,
                messages=[{"role": "user", "content": "a b c d e f g h i j k l"}]) as stream:
            assert "".join(stream.text_stream)
            final = stream.get_final_message().usage
        row = _ledger_row_of(gateway.server, "passthrough:squeezed-raw", final.output_tokens)
        assert row["deployment"] == "haiku"
        assert (row["tokens_in"], row["tokens_out"]) == (final.input_tokens,
                                                         final.output_tokens)


def test_a_gzipped_error_answer_is_read_scrubbed_and_sent_readable(gateway: Gateway) -> None:
    gateway.squeezed.script.actions.append(Action(status=400, body={
        "type": "error", "error": {"type": "invalid_request_error",
                                   "message": f"key {ANTHROPIC_KEY} may not do that"}}))
    client = anthropic.Anthropic(base_url=gateway.url("/passthrough/squeezed-raw"),
                                 api_key=DEV_KEY, max_retries=0)
    with client, pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model="claude-haiku-4-5", max_tokens=8,
                               messages=[{"role": "user", "content": "hi"}])
    assert "content-encoding" not in refused.value.response.headers
    message = refused.value.response.json()["error"]["message"]
    assert message.startswith("key ") and message.endswith(" may not do that")
    assert ANTHROPIC_KEY not in message


def test_an_answer_in_an_encoding_aigw_cannot_read_is_billed_what_it_held(
        gateway: Gateway) -> None:
    """No brotli decoder is installed: aigw asks the upstream for ``identity``, and an
    answer in br all the same (a CDN set to compress) went on unread, billed nothing.
    It is billed its request's hold: its prompt at 4 bytes a token and its max_tokens,
    at the price of the deployment of the model it names."""
    content = json.dumps({"model": "claude-opus-4-1", "max_tokens": 64, "messages": [
        {"role": "user", "content": "one two three"}]}).encode()
    with httpx.stream("POST", gateway.url("/passthrough/brotlied-raw/v1/messages"),
                      content=content, timeout=10,
                      headers={"x-api-key": DEV_KEY, "anthropic-version": "2023-06-01",
                               "content-type": "application/json"}) as answer:
        raw = b"".join(answer.iter_raw())
    assert answer.status_code == 200
    assert answer.headers["content-encoding"] == "br"  # the bytes as the upstream sent
    assert raw.endswith(b"\x03") and b'"usage"' in raw  # stored meta-blocks
    assert gateway.brotlied.script.headers[-1]["accept-encoding"] == "identity"
    row = gateway.server.ledger_row(answer.headers["x-request-id"], wait_s=10)
    prompt = -(-len(content) // 4)
    assert (row["deployment"], row["tokens_in"], row["tokens_out"]) == ("opus", prompt, 64)
    assert row["cost"] == pytest.approx((prompt * 15 + 64 * 75) / 1_000_000, abs=1e-9)
    assert "which aigw cannot read: billed what it held" in gateway.server.log


def test_a_whole_answer_is_recorded_as_whole_a_stream_as_a_stream(gateway: Gateway) -> None:
    """Every pass-through was recorded as a stream (the access line's stream, the
    duration histogram's label): a whole JSON answer or a file was timed with the streams,
    out of what a latency alert on whole answers watches."""
    def durations(stream: str) -> float:
        page = httpx.get(gateway.url("/metrics"), timeout=10).text
        return metric_sample(page, "aigw_request_duration_seconds_count",
                             route="passthrough:anthropic-raw", deployment="sonnet",
                             provider="claude", stream=stream)

    before = durations("false"), durations("true")
    client = anthropic.Anthropic(base_url=gateway.url("/passthrough/anthropic-raw"),
                                 api_key=DEV_KEY, max_retries=0)
    ask: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hello"}]
    with client:
        whole = client.messages.with_raw_response.create(
            model="claude-sonnet-4-6", max_tokens=16, messages=ask)
        with client.messages.with_streaming_response.create(
                model="claude-sonnet-4-6", max_tokens=16, messages=ask,
                stream=True) as streamed:
            streamed.read()
    uploaded = gateway.openai().files.create(file=("small.txt", b"plain text"),
                                             purpose="assistants")
    content = gateway.openai().files.with_raw_response.content(uploaded.id)
    assert content.content == b"plain text"
    for headers, stream in ((whole.headers, False), (streamed.headers, True),
                            (content.headers, False)):
        line = _line_of(gateway.server, headers["x-request-id"])
        assert line["stream"] is stream, line
    assert (durations("false"), durations("true")) == (before[0] + 1, before[1] + 1)


def test_the_caller_cannot_pick_the_provider_keys_organization_or_project(
        gateway: Gateway) -> None:
    with openai.OpenAI(base_url=gateway.url("/passthrough/openai-raw/v1"), api_key=DEV_KEY,
                       organization="org-someone-else", project="proj_someone_else",
                       max_retries=0) as client:
        client.vector_stores.list()
    sent = gateway.platform.seen[-1]
    assert "openai-organization" not in sent and "openai-project" not in sent


def test_a_stored_response_fetched_again_is_not_billed_again(gateway: Gateway) -> None:
    gateway.platform.responses["resp_stored"] = {
        "id": "resp_stored", "object": "response", "created_at": int(time.time()),
        "status": "completed", "model": "gpt-4o-mini-2024-07-18", "output": [],
        "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
        "usage": {"input_tokens": 1200, "output_tokens": 300, "total_tokens": 1500,
                  "input_tokens_details": {"cached_tokens": 0},
                  "output_tokens_details": {"reasoning_tokens": 0}}}
    fetched = gateway.openai().responses.with_raw_response.retrieve("resp_stored")
    usage = fetched.parse().usage
    assert usage is not None and usage.output_tokens == 300
    row = gateway.server.ledger_row(fetched.headers["x-request-id"], wait_s=10)
    # Billed when it was made (a POST); a GET runs no model.
    assert (row["deployment"], row["tokens_out"], row["cost"]) == (None, 0, 0)


def test_a_client_gone_mid_upload_is_recorded_as_gone_not_as_the_gateways_fault(
        gateway: Gateway) -> None:
    class Gone(Exception):
        pass

    def body() -> Iterator[bytes]:
        yield b'{"name": "half'
        time.sleep(0.3)
        raise Gone  # the client's connection closes with its body half sent

    before = _statuses(gateway.server, "passthrough:openai-raw")
    with pytest.raises(Gone):
        httpx.post(gateway.url("/passthrough/openai-raw/v1/vector_stores"), content=body(),
                   headers={"authorization": f"Bearer {DEV_KEY}",
                            "content-type": "application/json"}, timeout=10)
    deadline = time.monotonic() + 10
    while (after := _statuses(gateway.server, "passthrough:openai-raw")) == before:
        assert time.monotonic() < deadline, "no ledger record of the request"
        time.sleep(0.05)
    # A 499, as any request whose client went away: not a 500 on the gateway's error rate.
    assert after.get(499, 0) == before.get(499, 0) + 1
    assert after.get(500, 0) == before.get(500, 0)


def _statuses(server: Server, route: str) -> dict[int, int]:
    """How many ledger records ``route`` has of each status."""
    with sqlite3.connect(server.root / "aigw.sqlite") as ledger:
        counts = dict(ledger.execute("SELECT status, COUNT(*) FROM ledger WHERE route = ? "
                                     "GROUP BY status", (route,)).fetchall())
    ledger.close()
    return counts


def _ledger_row_of(server: Server, route: str, tokens_out: int) -> dict[str, object]:
    """The latest ledger record of ``route`` with ``tokens_out``, waited for (a stream's
    is written as it ends)."""
    deadline = time.monotonic() + 10
    while (row := _last_ledger_row(server, route))["tokens_out"] != tokens_out:
        assert time.monotonic() < deadline, row
        time.sleep(0.05)
    return row


def _last_ledger_row(server: Server, route: str,
                     status: int | None = None) -> dict[str, object]:
    """The latest ledger record of ``route`` (of ``status``, where given), waited for (a
    stream's is written as it ends)."""
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(server.root / "aigw.sqlite") as ledger:
            ledger.row_factory = sqlite3.Row
            row = ledger.execute(
                "SELECT route, deployment, status, tokens_in, tokens_out, "
                "cost_nanos / 1e9 AS cost FROM ledger WHERE route = ? "
                "AND (? IS NULL OR status = ?) ORDER BY at DESC LIMIT 1",
                (route, status, status)).fetchone()
        ledger.close()
        if row is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert row is not None, f"no ledger record of {route}"
    return dict(row)


def _line_of(server: Server, request_id: str) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while (line := server.access_line(request_id)) is None:
        assert time.monotonic() < deadline, f"no access-log line has {request_id}"
        time.sleep(0.05)
    return line


def test_the_request_id_is_the_gateways_the_providers_given_apart(gateway: Gateway) -> None:
    """A pass-through copies the provider's answer headers: the client got OpenAI's
    x-request-id (and Anthropic's request-id), which no access line has, so ops could not
    find the request an app quoted. x-request-id is the gateway's, as on every answer;
    the provider's id, for a ticket to the provider, is x-aigw-upstream-request-id and
    the line's upstream_request_id. An error answer's too."""
    client = gateway.openai()
    created = client.vector_stores.with_raw_response.create(name="ids")
    missing = httpx.get(gateway.url("/passthrough/openai-raw/v1/vector_stores/vs_none"),
                        headers={"authorization": f"Bearer {DEV_KEY}"})
    assert missing.status_code == 404
    claude = anthropic.Anthropic(base_url=gateway.url("/passthrough/anthropic-raw"),
                                 api_key=DEV_KEY, max_retries=0)
    with claude:
        message = claude.messages.create(model="claude-sonnet-4-6", max_tokens=16,
                                         messages=[{"role": "user", "content": "hello"}])
    answers = ((created.headers, gateway.platform.request_ids[-2]),
               (missing.headers, gateway.platform.request_ids[-1]))
    for headers, provider_id in answers:
        (request_id,) = headers.get_list("x-request-id")
        assert request_id != provider_id
        assert headers["x-aigw-upstream-request-id"] == provider_id
        line = _line_of(gateway.server, request_id)
        assert (line["request_id"], line["upstream_request_id"]) == (request_id, provider_id)
    # The anthropic SDK's _request_id (its request-id header) is the gateway's id too.
    assert message._request_id is not None
    line = _line_of(gateway.server, message._request_id)
    assert line["route"] == "passthrough:anthropic-raw"
    assert line["upstream_request_id"] == gateway.claude.request_ids[-1]
