"""Traces from a real gateway process to a loopback OTLP receiver, with the GenAI attributes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from google import genai
from google.genai import types

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from ..fakes.openai_fake import OpenAIFake
from ..fakes.otlp_receiver import OtlpReceiver
from ..fakes.serve import serving
from .server import Server, sdk_gateway

pytestmark = pytest.mark.e2e

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def test_request_and_attempt_spans_follow_the_genai_conventions(
    gateway_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = OtlpReceiver()
    with _traced_shipped(gateway_dir, monkeypatch, receiver) as server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=DEV_KEY,
                               max_retries=0)
        client.chat.completions.create(
            model="fast", messages=[{"role": "user", "content": "trace me"}],
            extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        )
        client.embeddings.create(  # it made no span, and dropped the client's trace
            model="embed", input="trace me",
            extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        httpx.post(f"{server.base_url}/v1/rerank", timeout=10, json={
            "model": "rerank", "query": "trace me", "documents": ["me", "you"]},
            headers={"authorization": f"Bearer {DEV_KEY}",
                     "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}).raise_for_status()
        client.images.generate(model="images", prompt="trace me",
                               extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        client.moderations.create(model="moderation", input="trace me")
        client.audio.transcriptions.create(model="transcribe", file=("a.mp3", b"\xff" * 16000))
        deadline = time.monotonic() + 15
        while len(receiver.spans) < 12:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.1)
    # Image generation is GenAI's generate_content; moderation has no well-known name.
    drawing = next(s for s in receiver.spans if s["name"] == "generate_content images")
    drawn = next(s for s in receiver.spans if s["name"] == "generate_content echo-image-1")
    assert drawing["trace_id"] == TRACE_ID and drawn["parent_span_id"] == drawing["span_id"]
    assert drawing["attributes"]["gen_ai.operation.name"] == "generate_content"
    assert drawing["attributes"]["aigw.route"] == "images"
    assert drawn["attributes"]["gen_ai.usage.input_tokens"] == 2
    moderating = next(s for s in receiver.spans if s["name"] == "moderation moderation")
    moderated = next(s for s in receiver.spans if s["name"] == "moderation echo-moderation-1")
    assert moderated["parent_span_id"] == moderating["span_id"]
    assert moderating["attributes"]["gen_ai.operation.name"] == "moderation"
    assert moderated["attributes"]["gen_ai.usage.input_tokens"] == 2
    ranking = next(s for s in receiver.spans if s["name"] == "rerank rerank")
    ranked = next(s for s in receiver.spans if s["name"] == "rerank echo-rerank-1")
    assert ranking["trace_id"] == TRACE_ID and ranked["parent_span_id"] == ranking["span_id"]
    assert ranking["attributes"]["gen_ai.operation.name"] == "rerank"
    assert ranking["attributes"]["aigw.route"] == "rerank"
    assert ranked["attributes"]["gen_ai.operation.name"] == "rerank"
    assert ranked["attributes"]["gen_ai.usage.input_tokens"] == 2 * 2 + 1 + 1  # query twice
    transcribing = next(s for s in receiver.spans if s["name"] == "transcription transcribe")
    transcribed = next(s for s in receiver.spans
                       if s["name"] == "transcription echo-transcribe-1")
    assert transcribed["parent_span_id"] == transcribing["span_id"]
    assert transcribing["attributes"]["gen_ai.operation.name"] == "transcription"
    assert transcribed["attributes"]["gen_ai.operation.name"] == "transcription"
    embedding = next(s for s in receiver.spans if s["name"] == "embeddings embed")
    embedded = next(s for s in receiver.spans if s["name"] == "embeddings echo-embed-1")
    assert embedding["trace_id"] == TRACE_ID and embedding["parent_span_id"] == PARENT_ID
    assert embedded["parent_span_id"] == embedding["span_id"]
    assert embedding["attributes"]["gen_ai.operation.name"] == "embeddings"
    # The model that answered, on each request span (a chat's had it, these did not).
    for answered, model in ((embedding, "echo-embed-1"), (ranking, "echo-rerank-1"),
                            (drawing, "echo-image-1"), (moderating, "echo-moderation-1"),
                            (transcribing, "echo-transcribe-1")):
        assert answered["attributes"]["gen_ai.response.model"] == model, answered
    assert embedding["attributes"]["gen_ai.usage.input_tokens"] == 2
    assert embedded["attributes"]["gen_ai.operation.name"] == "embeddings"
    assert embedded["attributes"]["gen_ai.usage.input_tokens"] == 2
    request = next(s for s in receiver.spans if s["name"] == "chat fast")
    attempt = next(s for s in receiver.spans if s["name"] == "chat echo-1")
    assert request["trace_id"] == TRACE_ID and request["parent_span_id"] == PARENT_ID
    assert attempt["trace_id"] == TRACE_ID and attempt["parent_span_id"] == request["span_id"]
    attributes = request["attributes"]
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "fast"
    assert attributes["gen_ai.response.model"] == "echo-1"
    assert attributes["gen_ai.provider.name"] == "aigw.echo"
    assert attributes["gen_ai.usage.input_tokens"] == 8  # 3 + 3 overhead + "trace me"
    assert attributes["gen_ai.usage.output_tokens"] == 2
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["aigw.route"] == "fast"
    assert (attributes["aigw.key"], attributes["aigw.team"]) == ("dev", "default")
    assert len(attributes["aigw.graph"]) == 64
    assert attributes["aigw.fallback_hop"] == 0
    assert "any-deployment-may-serve" in attributes["aigw.policy_ids"]
    assert attempt["attributes"]["gen_ai.request.model"] == "echo-1"
    assert attempt["attributes"]["gen_ai.usage.output_tokens"] == 2


def test_translations_and_gemini_generate_content_name_their_operations(
    gateway_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A translation's spans were named transcription (its request span's
    gen_ai.operation.name said translation, its attempt's transcription), and Gemini's
    generateContent was a chat: the conventions name it generate_content ("such as
    Gemini Generate Content"). The call it makes upstream is still the chat it is."""
    receiver = OtlpReceiver()
    with _traced_shipped(gateway_dir, monkeypatch, receiver) as server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=DEV_KEY,
                               max_retries=0)
        with pytest.deprecated_call():  # the SDK marks OpenAI's translations deprecated
            client.audio.translations.create(model="transcribe",
                                             file=("a.mp3", b"\xff" * 16000))
        with genai.Client(api_key=DEV_KEY, http_options=types.HttpOptions(
                base_url=server.base_url, api_version="v1beta",
                retry_options=types.HttpRetryOptions(attempts=1))) as gemini:
            gemini.models.generate_content(model="fast", contents="trace me")
        translating = _span_named(receiver, server, "translation transcribe")
        translated = _span_named(receiver, server, "translation echo-transcribe-1")
        generating = _span_named(receiver, server, "generate_content fast")
        called = _span_named(receiver, server, "chat echo-1")
    assert translated["parent_span_id"] == translating["span_id"]
    assert translating["attributes"]["gen_ai.operation.name"] == "translation"
    assert translated["attributes"]["gen_ai.operation.name"] == "translation"
    assert called["parent_span_id"] == generating["span_id"]
    assert generating["attributes"]["gen_ai.operation.name"] == "generate_content"
    assert generating["attributes"]["gen_ai.usage.output_tokens"] == 2
    assert called["attributes"]["gen_ai.operation.name"] == "chat"


def test_a_pipelines_model_calls_are_spans_of_the_request_that_ran_it(
    gateway_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST /v1/pipelines/{name} made no span, so the client's trace ended there, and
    each step's model call was a root span of a trace of its own."""
    receiver = OtlpReceiver()
    with _traced_shipped(gateway_dir, monkeypatch, receiver) as server:
        ran = httpx.post(f"{server.base_url}/v1/pipelines/research",
                         json={"topic": "otters"}, timeout=60,
                         headers={"Authorization": f"Bearer {DEV_KEY}",
                                  "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
        assert ran.status_code == 200, ran.text
        request = _span_named(receiver, server, "invoke_agent research")
        steps = 3  # search, analyse, report: a request span and an attempt span each
        deadline = time.monotonic() + 15
        while len(receiver.spans) < 1 + 2 * steps:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.1)
    assert request["trace_id"] == TRACE_ID and request["parent_span_id"] == PARENT_ID
    assert request["attributes"]["gen_ai.operation.name"] == "invoke_agent"
    assert request["attributes"]["gen_ai.agent.name"] == "research"
    calls = [s for s in receiver.spans if s["parent_span_id"] == request["span_id"]]
    assert sorted(s["name"] for s in calls) == ["chat fast", "chat smart", "chat smart"]
    assert all(s["trace_id"] == TRACE_ID for s in receiver.spans)


def _llm(deployment: str) -> str:
    """Route ``llm`` on the deployment ``llm`` (``deployment``: more of its YAML flow
    mapping), for ``_traced_gateway``."""
    return ("deployments:\n"
            f"  llm: {{provider: up, model: served-llm, context_window: 32000, {deployment}}}\n"
            "routes:\n"
            "  llm: {deployment: llm}\n")


@contextmanager
def _traced_shipped(
    gateway_dir: Path, monkeypatch: pytest.MonkeyPatch, receiver: OtlpReceiver
) -> Iterator[Server]:
    """The shipped gateway as ``aigw serve`` runs it, exporting its traces to
    ``receiver``; stopped at the end."""
    with serving(receiver.app) as otlp:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        server = Server(gateway_dir)
        try:
            server.wait_ready()
            yield server
        finally:
            server.stop()


def _abc(sections: str) -> str:
    """Deployments a, b and c (models served-a, -b and -c) on ``up``, then ``sections``
    (groups, routes), for ``_traced_gateway``."""
    return "deployments:\n" + "".join(
        f"  {name}: {{provider: up, model: served-{name}, context_window: 32000}}\n"
        for name in "abc") + sections


def _span_named(receiver: OtlpReceiver, server: Server, name: str) -> dict[str, Any]:
    """The first span called ``name`` once ``receiver`` has it (exports are batched)."""
    deadline = time.monotonic() + 15
    while True:
        found = next((span for span in receiver.spans if span["name"] == name), None)
        if found is not None:
            return found
        assert time.monotonic() < deadline, server.log
        time.sleep(0.1)


@contextmanager
def _traced_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: OtlpReceiver,
    fake: OpenAIFake, sections: str, providers: str = "",
) -> Iterator[tuple[openai.OpenAI, Server]]:
    """A real gateway exporting its traces to ``receiver``, with the provider ``up`` on
    ``fake`` (and ``providers``: more entries, two spaces in) and ``sections``
    (deployments, groups, routes: ``_llm``)."""
    with serving(receiver.app) as otlp, serving(fake.app) as upstream:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
        monkeypatch.setenv("FAKE_OPENAI_KEY", fake.api_key)
        with sdk_gateway(tmp_path / "gw", (
            "providers:\n"
            f'  up: {{type: openai_compatible, base_url: "{upstream}/v1", '
            'api_key: "${FAKE_OPENAI_KEY}"}\n' + providers + sections
        )) as served:
            yield served


def test_a_completions_request_is_a_text_completion_span(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/v1/completions: the request and its raw-prompt call are GenAI text_completion
    spans (they were named chat, as every request of the chat core was)."""
    receiver, fake = OtlpReceiver(), OpenAIFake()
    with _traced_gateway(tmp_path, monkeypatch, receiver, fake, _abc(
        "routes:\n  r: {deployment: a}\n"
    )) as (client, server):
        client.completions.create(model="r", prompt="trace me")
        request = _span_named(receiver, server, "text_completion r")
        attempt = _span_named(receiver, server, "text_completion served-a")
    assert request["attributes"]["gen_ai.operation.name"] == "text_completion"
    assert request["attributes"]["gen_ai.usage.output_tokens"] == 3
    assert attempt["parent_span_id"] == request["span_id"]
    assert attempt["attributes"]["gen_ai.operation.name"] == "text_completion"


def test_the_upstream_is_sent_its_attempts_traceparent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream that traces (vLLM, another gateway) joins the request's trace: its
    calls carried no traceparent, so the trace ended at the gateway."""
    receiver, fake = OtlpReceiver(), OpenAIFake()
    with _traced_gateway(tmp_path, monkeypatch, receiver, fake,
                         _llm("capabilities: [streaming]")) as (client, server):
        for stream in (False, True):
            answer = client.chat.completions.create(
                model="llm", messages=[{"role": "user", "content": "trace me"}],
                stream=stream, extra_headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
            if stream:
                list(answer)  # type: ignore[call-overload]
        deadline = time.monotonic() + 15
        while len(receiver.spans) < 4:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.1)
    attempts = [s for s in receiver.spans if s["name"] == "chat served-llm"]
    sent = [headers.get("traceparent") for headers in fake.script.headers]
    assert sorted(sent) == sorted(f"00-{TRACE_ID}-{s['span_id']}-01" for s in attempts), sent
    # The streamed attempt's span lasts to the stream's end, with its usage: it ended at
    # the first delta, with none.
    assert all(s["attributes"].get("gen_ai.usage.output_tokens", 0) > 0 for s in attempts), \
        attempts
    assert all(s["attributes"].get("gen_ai.response.model") == "served-llm" for s in attempts)


def test_spans_say_the_input_tokens_a_prompt_cache_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Billed at price.cache_read, they were in no span: the GenAI conventions'
    gen_ai.usage.cache_read.input_tokens is on the request's span and its attempt's, for
    an answer and for a stream (and nothing was written to the cache, so no
    gen_ai.usage.cache_creation.input_tokens)."""
    receiver, fake = OtlpReceiver(), OpenAIFake()
    fake.cached_tokens = 3
    with _traced_gateway(tmp_path, monkeypatch, receiver, fake,
                         _llm("capabilities: [streaming]")) as (client, server):
        for stream in (False, True):
            answer = client.chat.completions.create(
                model="llm", messages=[{"role": "user", "content": "a long shared prefix"}],
                stream=stream)
            if stream:
                list(answer)  # type: ignore[call-overload]
        deadline = time.monotonic() + 15
        while len(receiver.spans) < 4:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.1)
    spans = [s for s in receiver.spans if s["name"] in ("chat llm", "chat served-llm")]
    assert len(spans) == 4, receiver.spans
    for span in spans:
        attributes = span["attributes"]
        assert attributes["gen_ai.usage.cache_read.input_tokens"] == 3, span
        assert attributes["gen_ai.usage.input_tokens"] == 7, span  # the 3 among them
        assert "gen_ai.usage.cache_creation.input_tokens" not in attributes, span


def test_an_attempt_that_timed_out_is_a_failed_span(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its span ended as if the call had succeeded (status unset, no error.type), while
    the metrics counted an upstream_timeout."""
    receiver, fake = OtlpReceiver(), OpenAIFake()
    for _ in range(4):
        fake.script.actions.append(Action(delay_s=2.0))
    with _traced_gateway(tmp_path, monkeypatch, receiver, fake,
                         _llm("timeout_s: 0.2")) as (client, server):
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(
                model="llm", messages=[{"role": "user", "content": "too slow"}])
        deadline = time.monotonic() + 15
        while not any(s["name"] == "chat llm" for s in receiver.spans):
            assert time.monotonic() < deadline, server.log
            time.sleep(0.1)
    attempts = [s for s in receiver.spans if s["name"] == "chat served-llm"]
    assert attempts and all(s["attributes"].get("error.type") == "cancelled"
                            for s in attempts), attempts


def test_a_member_refusing_a_parameter_before_calling_has_no_attempt_span(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Anthropic member refuses ``seed`` before any call goes out, and the next member
    serves: the refused member had an attempt span of its own (a call that was never
    made), beside the one that served."""
    receiver, fake = OtlpReceiver(), OpenAIFake()
    with _traced_gateway(
        tmp_path, monkeypatch, receiver, fake,
        "deployments:\n"
        "  claude: {provider: ant, model: claude-x, context_window: 32000}\n"
        "  llm: {provider: up, model: served-llm, context_window: 32000, "
        "capabilities: [streaming]}\n"
        "groups:\n"
        "  g: {members: [claude, llm], retry: {attempts: 0}}\n"
        "routes:\n"
        "  r: {group: g}\n",
        providers='  ant: {type: anthropic, base_url: "http://127.0.0.1:9", '
                  'api_key: "sk-ant-never-called"}\n',
    ) as (client, server):
        for stream in (False, True):
            answer = client.chat.completions.create(
                model="r", seed=7, stream=stream, messages=[{"role": "user", "content": "x"}])
            if stream:
                list(answer)  # type: ignore[call-overload]
        deadline = time.monotonic() + 15
        while len(receiver.spans) < 4:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.1)
    assert len(fake.script.requests) == 2
    assert sorted(s["name"] for s in receiver.spans) == [
        "chat r", "chat r", "chat served-llm", "chat served-llm"], receiver.spans
    assert all(s["attributes"]["aigw.attempts"] == 1
               for s in receiver.spans if s["name"] == "chat r")


def test_a_request_refused_before_routing_has_its_span(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 401 or an unknown model made no span: a client's trace stopped short of the
    gateway, with nothing to say why."""
    receiver, fake = OtlpReceiver(), OpenAIFake()
    with _traced_gateway(tmp_path, monkeypatch, receiver, fake, _llm("timeout_s: 5")) as (
            client, server):
        traced = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", extra_headers=traced,
                                           messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.AuthenticationError):
            client.with_options(api_key="sk-wrong").chat.completions.create(
                model="llm", extra_headers=traced, messages=[{"role": "user", "content": "x"}])
        deadline = time.monotonic() + 15
        while len(receiver.spans) < 2:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.1)
    assert sorted((s["name"], s["trace_id"], s["parent_span_id"],
                   s["attributes"]["http.response.status_code"]) for s in receiver.spans) == [
        ("chat", TRACE_ID, PARENT_ID, 401), ("chat", TRACE_ID, PARENT_ID, 404)]


def test_a_request_that_used_its_attempts_traces_only_the_calls_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """max_attempts used up on a group's last member: the trace has those calls, no
    fallback hop and the upstream's error; the fallback group, never entered, is not in
    it (a review found the loop entered it before noticing the cap)."""
    receiver, fake = OtlpReceiver(), OpenAIFake()
    fake.script.actions += [Action(status=500), Action(status=500)]
    with _traced_gateway(tmp_path, monkeypatch, receiver, fake, _abc(
        "groups:\n"
        "  g: {members: [a, b], retry: {attempts: 0}, fallbacks: {on_error: [spare]}}\n"
        "  spare: {members: [c]}\n"
        "routes:\n"
        "  r: {group: g, max_attempts: 2}\n"
    )) as (client, server):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="r",
                                           messages=[{"role": "user", "content": "x"}])
        request = _span_named(receiver, server, "chat r")
    assert len(fake.script.requests) == 2
    attempts = sorted(s["name"] for s in receiver.spans if s is not request)
    assert attempts == ["chat served-a", "chat served-b"], receiver.spans
    attributes = request["attributes"]
    assert (attributes["aigw.attempts"], attributes["aigw.fallback_hop"]) == (2, 0)
    assert attributes["http.response.status_code"] == 502
    assert attributes["error.type"] == "upstream_error"


def test_fallback_hop_counts_the_fallbacks_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Served by the fallback of a fallback: aigw.fallback_hop 2. It was a flag, 1 for
    any fallback, so a trace could not tell how far a request had to go."""
    receiver, fake = OtlpReceiver(), OpenAIFake()
    fake.script.actions += [Action(status=500), Action(status=500)]
    with _traced_gateway(tmp_path, monkeypatch, receiver, fake, _abc(
        "groups:\n"
        "  first: {members: [a], retry: {attempts: 0}, fallbacks: {on_error: [second]}}\n"
        "  second: {members: [b], retry: {attempts: 0}, fallbacks: {on_error: [third]}}\n"
        "  third: {members: [c]}\n"
        "routes:\n"
        "  r: {group: first}\n"
    )) as (client, server):
        answer = client.chat.completions.create(model="r",
                                                messages=[{"role": "user", "content": "x"}])
        assert answer.model == "served-c"
        request = _span_named(receiver, server, "chat r")
        metrics = httpx.get(f"{server.base_url}/metrics").text
    assert (request["attributes"]["aigw.attempts"],
            request["attributes"]["aigw.fallback_hop"]) == (3, 2)
    assert 'aigw_fallbacks_total{route="r"} 1.0' in metrics  # one request served by one


def test_the_request_span_names_the_guardrails_that_acted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver, fake = OtlpReceiver(), OpenAIFake()
    with _traced_gateway(tmp_path, monkeypatch, receiver, fake, (
        "deployments:\n"
        "  llm: {provider: up, model: served-llm, context_window: 32000}\n"
        "guardrails:\n"
        "  pii: {kind: pii, entities: [email], action: redact, on: [input]}\n"
        "routes:\n"
        "  llm: {deployment: llm, guardrails: [pii]}\n"
    )) as (client, server):
        client.chat.completions.create(
            model="llm", messages=[{"role": "user", "content": "mail a@example.com"}])
        span = _span_named(receiver, server, "chat llm")
    assert span["attributes"]["aigw.guardrails"] == ["pii:input:redact"]


def test_a_stream_a_guardrail_withheld_says_content_filter_as_a_whole_answer_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stream's request span had the upstream's "stop" for the withheld choice. The
    # attempt's span keeps it: it is what the upstream said.
    receiver, fake = OtlpReceiver(), OpenAIFake()
    with _traced_gateway(tmp_path, monkeypatch, receiver, fake, (
        "deployments:\n"
        "  llm: {provider: up, model: served-llm, context_window: 32000}\n"
        "guardrails:\n"
        "  secret: {kind: regex, patterns: ['top secret'], action: block, on: [output]}\n"
        "routes:\n"
        "  llm: {deployment: llm, guardrails: [secret]}\n"
        "  whole: {deployment: llm, guardrails: [secret]}\n"
    )) as (client, server):
        ask = [{"role": "user", "content": "a top secret plan"}]
        chunks = list(client.chat.completions.create(model="llm", messages=ask, stream=True))
        answer = client.chat.completions.create(model="whole", messages=ask)
        streamed = _span_named(receiver, server, "chat llm")
        whole = _span_named(receiver, server, "chat whole")
        attempt = _span_named(receiver, server, "chat served-llm")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"
    assert answer.choices[0].finish_reason == "content_filter"
    assert whole["attributes"]["gen_ai.response.finish_reasons"] == ["content_filter"]
    assert streamed["attributes"]["gen_ai.response.finish_reasons"] == ["content_filter"]
    assert attempt["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]
