"""Every answer carries the request's id (``x-request-id``), its errors' too, and it is
the id of the request's access-log line: a client quoting a failed request's id to ops
points them at its line. Before, only a model's answer had one: a 400, 401, 429 or an
upstream's 5xx came with none (real ``aigw serve``, the official SDKs)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from ..providers.conftest import DEV_KEY_LINE
from .responses_gateway import Upstreams, responses_gateway, sdk

pytestmark = pytest.mark.e2e

ONCE_A_MINUTE = "sk-request-ids-one-rpm"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    digest = hashlib.sha256(ONCE_A_MINUTE.encode()).hexdigest()
    keys = DEV_KEY_LINE + f"  once: {{sha256: {digest}, limits: {{rpm: 1}}}}\n"
    with responses_gateway(tmp_path_factory.mktemp("request-ids") / "gw", keys=keys) as served:
        yield served


def logged_as(upstreams: Upstreams, headers: httpx.Headers, status: int) -> dict[str, Any]:
    """The access-log line of the answer whose ``headers`` are given: it has the one
    ``x-request-id`` they carry, and the answer's ``status``."""
    (request_id,) = headers.get_list("x-request-id")
    deadline = time.monotonic() + 5.0
    while (line := upstreams.server.access_line(request_id)) is None:
        assert time.monotonic() < deadline, f"no access-log line has {request_id}"
        time.sleep(0.05)
    assert (line["request_id"], line["status"]) == (request_id, status)
    return line


def refused(call: Callable[[], object]) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value


def test_a_400_carries_the_id_of_its_access_line(upstreams: Upstreams) -> None:
    with sdk(upstreams, DEV_KEY) as client:
        error = refused(lambda: client.chat.completions.create(model="gpt", messages=[]))
        embedding = refused(lambda: client.embeddings.create(model="gpt", input="hi"))
    assert error.status_code == embedding.status_code == 400
    assert logged_as(upstreams, error.response.headers, 400)["error"] is not None
    assert logged_as(upstreams, embedding.response.headers, 400)["endpoint"] == "embeddings"


def test_a_401_carries_the_id_of_its_access_line(upstreams: Upstreams) -> None:
    with sdk(upstreams, "sk-nobody-has-this-key") as client:
        error = refused(lambda: client.chat.completions.create(model="gpt", messages=HELLO))
    assert error.status_code == 401
    logged_as(upstreams, error.response.headers, 401)


def test_a_429_carries_the_id_of_its_access_line(upstreams: Upstreams) -> None:
    with sdk(upstreams, ONCE_A_MINUTE) as client:
        served = client.chat.completions.with_raw_response.create(model="gpt",
                                                                  messages=HELLO)
        logged_as(upstreams, served.headers, 200)  # one id on a model's answer, as before
        error = refused(lambda: client.chat.completions.create(model="gpt", messages=HELLO))
    assert error.status_code == 429
    assert logged_as(upstreams, error.response.headers, 429)["key"] == "once"


def test_an_upstreams_5xx_carries_the_id_of_its_access_line(upstreams: Upstreams) -> None:
    upstreams.gpt.script.actions += [Action(status=500)] * 5  # its retries fail too
    try:
        with sdk(upstreams, DEV_KEY) as client:
            error = refused(lambda: client.chat.completions.create(model="gpt",
                                                                   messages=HELLO))
    finally:
        upstreams.gpt.script.actions.clear()
    assert error.status_code == 502
    line = logged_as(upstreams, error.response.headers, 502)
    assert line["route"] == "gpt"
    # A provider's 5xx is what a ticket to it is most often about: the line of a request
    # whose every call failed names the provider's id of the last one.
    assert line["upstream_request_id"] == upstreams.gpt.request_ids[-1]


def test_anthropic_and_gemini_shaped_errors_carry_the_id_of_their_access_line(
    upstreams: Upstreams,
) -> None:
    base_url = upstreams.server.base_url
    with (anthropic.Anthropic(base_url=base_url, api_key="sk-nobody-has-this-key",
                              max_retries=0) as claude,
          pytest.raises(anthropic.AuthenticationError) as caught):
        claude.messages.create(model="claude", max_tokens=10,
                               messages=[{"role": "user", "content": "hello"}])
    logged_as(upstreams, caught.value.response.headers, 401)
    gemini = httpx.post(f"{base_url}/v1beta/models/gpt:generateContent",
                        headers={"x-goog-api-key": DEV_KEY}, content=b"{not json")
    assert gemini.status_code == 400
    logged_as(upstreams, gemini.headers, 400)


def test_an_answer_names_the_providers_id_of_its_call_apart_from_the_gateways(
    upstreams: Upstreams,
) -> None:
    """OpenAI's x-request-id and Anthropic's request-id (what a ticket to the provider
    quotes) were on no answer and in no line: they are x-aigw-upstream-request-id and the
    line's upstream_request_id, x-request-id staying the gateway's (the line's id)."""
    with sdk(upstreams, DEV_KEY) as client:
        by_openai = client.chat.completions.with_raw_response.create(model="gpt",
                                                                     messages=HELLO)
        openai_id = upstreams.gpt.request_ids[-1]
        by_anthropic = client.chat.completions.with_raw_response.create(model="claude",
                                                                        messages=HELLO)
        anthropic_id = upstreams.claude.request_ids[-1]
        # A cached answer called no provider: it names no call.
        client.chat.completions.create(model="gpt-cached", messages=HELLO)
        cached = client.chat.completions.with_raw_response.create(model="gpt-cached",
                                                                  messages=HELLO)
    for answer, provider_id in ((by_openai, openai_id), (by_anthropic, anthropic_id)):
        assert answer.headers["x-aigw-upstream-request-id"] == provider_id
        line = logged_as(upstreams, answer.headers, 200)
        assert line["upstream_request_id"] == provider_id
        assert line["request_id"] != provider_id
    assert "x-aigw-upstream-request-id" not in cached.headers
    assert logged_as(upstreams, cached.headers, 200)["upstream_request_id"] is None
    with anthropic.Anthropic(base_url=upstreams.server.base_url, api_key=DEV_KEY,
                             max_retries=0) as claude:
        answer = claude.messages.with_raw_response.create(
            model="claude", max_tokens=10, messages=[{"role": "user", "content": "hello"}])
    message = answer.parse()
    assert answer.headers["x-aigw-upstream-request-id"] == upstreams.claude.request_ids[-1]
    # The SDK's _request_id (its request-id header) is the gateway's, the line's id.
    assert message._request_id == answer.headers["x-request-id"]
    assert logged_as(upstreams, answer.headers, 200)["upstream_request_id"] == (
        upstreams.claude.request_ids[-1])


def test_a_stream_names_the_providers_id_of_its_call_apart_from_the_gateways(
    upstreams: Upstreams,
) -> None:
    """A streamed answer's headers go before its first byte: the provider's id is read as
    its answer's headers come, and named on the stream's as on a whole answer's."""
    with sdk(upstreams, DEV_KEY) as client:
        for route, provider in (("gpt", upstreams.gpt), ("claude", upstreams.claude)):
            with client.chat.completions.with_streaming_response.create(
                    model=route, messages=HELLO, stream=True) as answer:
                assert "".join(answer.iter_lines())
            assert answer.headers["x-aigw-upstream-request-id"] == provider.request_ids[-1]
            line = logged_as(upstreams, answer.headers, 200)
            assert (line["stream"], line["upstream_request_id"]) == (
                True, provider.request_ids[-1])
    with (anthropic.Anthropic(base_url=upstreams.server.base_url, api_key=DEV_KEY,
                              max_retries=0) as claude,
          claude.messages.stream(model="claude", max_tokens=10,
                                 messages=[{"role": "user", "content": "hello"}]) as stream):
        stream.get_final_message()
    headers = stream.response.headers
    assert headers["x-aigw-upstream-request-id"] == upstreams.claude.request_ids[-1]
    assert headers["request-id"] == headers["x-request-id"]
    assert logged_as(upstreams, headers, 200)["upstream_request_id"] == (
        upstreams.claude.request_ids[-1])
