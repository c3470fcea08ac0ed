"""Guardrails on the endpoints that are no chat, with a real ``aigw serve`` in front of the
OpenAI fake and a webhook checker, through the official openai SDK: input guardrails on
/v1/embeddings' inputs, /v1/rerank's query and documents, /v1/images/generations' prompt,
/v1/audio/speech's input and instructions and a transcription's prompt (a block is a 400
naming the guardrail and no call goes out; a redaction is what the upstream receives; a
webhook's verdicts, kept), and output guardrails on a transcript in each of its
formats and on an image's revised_prompt."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import httpx
import openai
import pytest

from aigw.runtime.tokens import TokenCounter

from ..fakes.brain import Action
from ..fakes.guard_checker import GuardChecker
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from ..media import wav
from .server import Server, sdk_gateway

pytestmark = pytest.mark.e2e

SECRET = "sk-" + "A1b2C3d4" * 4


@dataclass
class Guarded:
    upstream: OpenAIFake
    checker: GuardChecker
    client: openai.OpenAI
    server: Server

    def sent(self) -> dict[str, Any]:
        """What the upstream received last."""
        return self.upstream.script.requests[-1]

    def last_line(self, route: str) -> dict[str, Any]:
        """The access log's line of the last request to ``route``."""
        return [entry for entry in map(json.loads, (
            text for text in self.server.log.splitlines()
            if text.startswith("{") and "request_id" in text)) if entry["route"] == route][-1]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guarded]:
    upstream, checker = OpenAIFake(), GuardChecker()
    with pytest.MonkeyPatch.context() as env, serving(upstream.app) as url, \
            serving(checker.app) as hook:
        env.setenv("FAKE_OPENAI_KEY", upstream.api_key)
        # Each kind once with patterns (blocks and redacts), once with a webhook.
        routes = "".join(
            f"  {kind}: {{deployment: {kind}, guardrails: [no-secrets, pii]}}\n"
            f"  {kind}-checked: {{deployment: {kind}, guardrails: [{checker_name}]}}\n"
            for kind, checker_name in (("embed", "checker"), ("rerank", "checker"),
                                       ("image", "checker"), ("speech", "checker"),
                                       ("transcribe", "out-checker")))
        routes += "".join(f"  {kind}-small: {{deployment: {kind}-small, "
                          "guardrails: [no-secrets, pii]}\n"
                          for kind in ("embed", "rerank", "image"))
        with sdk_gateway(tmp_path_factory.mktemp("guarded") / "gw", (
                "providers:\n"
                f'  oai: {{type: openai, base_url: "{url}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}\n'
                f'  vllm: {{type: openai_compatible, base_url: "{url}/v1", '
                'api_key: "${FAKE_OPENAI_KEY}"}\n'
                "deployments:\n"
                "  embed: {provider: oai, model: text-embedding-3-small, kind: embeddings,\n"
                "          context_window: 8192}\n"
                "  rerank: {provider: vllm, model: BAAI/bge-reranker-v2-m3, kind: rerank,\n"
                "           context_window: 8192}\n"
                "  image: {provider: oai, model: dall-e-3, kind: image, context_window: 4000}\n"
                "  speech: {provider: oai, model: tts-1, kind: speech, context_window: 4096,\n"
                "           price: {per_1m_characters: 15.0}}\n"
                "  transcribe: {provider: oai, model: whisper-1, kind: transcription,\n"
                "               context_window: 8192}\n"
                # Windows a redacted input fits (10 tokens), and the input as it came not.
                "  embed-small: {provider: oai, model: text-embedding-3-small,\n"
                "                kind: embeddings, context_window: 10}\n"
                "  rerank-small: {provider: vllm, model: BAAI/bge-reranker-v2-m3,\n"
                "                 kind: rerank, context_window: 10}\n"
                "  image-small: {provider: oai, model: dall-e-3, kind: image,"
                " context_window: 10}\n"
                "guardrails:\n"
                "  no-secrets: {kind: regex, patterns: ['sk-[A-Za-z0-9]{20,}'], action: block}\n"
                "  pii: {kind: pii, entities: [email, phone], action: redact}\n"
                "  no-plans: {kind: regex, patterns: ['launch code'], on: [output],"
                " action: block}\n"
                f'  checker: {{kind: webhook, url: "{hook}/check", on: [input], timeout_s: 2}}\n'
                f'  out-checker: {{kind: webhook, url: "{hook}/check", on: [output],'
                " timeout_s: 2}\n"
                "routes:\n" + routes + "  embed-plain: {deployment: embed}\n"
                "  transcribe-plans: {deployment: transcribe, guardrails: [no-plans]}\n"
        )) as (client, server):
            yield Guarded(upstream, checker, client, server)


def _embed(client: openai.OpenAI, model: str, text: str) -> Any:
    return client.embeddings.create(model=model, input=["first, plain", text])


def _rerank(client: openai.OpenAI, model: str, text: str) -> Any:
    # Rerank is no endpoint of the SDK's own: its generic post, as a client of it would.
    return client.post("/rerank", cast_to=httpx.Response, body={
        "model": model, "query": "which one", "documents": ["a plain one", text]}).json()


def _image(client: openai.OpenAI, model: str, text: str) -> Any:
    return client.images.generate(model=model, prompt=text)


def _speech(client: openai.OpenAI, model: str, text: str) -> Any:
    return client.audio.speech.create(model=model, voice="alloy", input=text).read()


# Each input endpoint: how to call it, and the texts its upstream received.
INPUTS: dict[str, tuple[Callable[[openai.OpenAI, str, str], Any],
                        Callable[[dict[str, Any]], list[str]]]] = {
    "embed": (_embed, lambda sent: list(sent["input"])),
    "rerank": (_rerank, lambda sent: [sent["query"], *sent["documents"]]),
    "image": (_image, lambda sent: [sent["prompt"]]),
    "speech": (_speech, lambda sent: [sent["input"]]),
}


@pytest.mark.parametrize("kind", INPUTS)
def test_an_input_block_is_a_400_naming_the_guardrail_and_no_call_goes_out(
        guarded: Guarded, kind: str) -> None:
    call, _texts = INPUTS[kind]
    calls = len(guarded.upstream.script.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        call(guarded.client, kind, f"my key is {SECRET}")
    assert caught.value.code == "guardrail_blocked"
    assert "no-secrets" in caught.value.message and SECRET not in str(caught.value.body)
    assert len(guarded.upstream.script.requests) == calls


def test_embeddings_token_ids_are_refused_where_guardrails_check_input(
        guarded: Guarded) -> None:
    """Token ids are no text a guardrail can check (they went upstream unchecked, past
    a block or a redaction): a 400 naming the first guardrail, and no call, as for a
    completions prompt of ids. A route without input guardrails sends them."""
    calls = len(guarded.upstream.script.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        guarded.client.embeddings.create(model="embed", input=[[1, 2, 3], [4]])
    assert (caught.value.param, caught.value.code) == ("input", "invalid_request")
    assert cast(Any, caught.value.body)["message"] == (
        "'input' holds token ids, which guardrail 'no-secrets' cannot check (it reads "
        "text): send the text.")
    assert len(guarded.upstream.script.requests) == calls
    guarded.client.embeddings.create(model="embed-plain", input=[[1, 2, 3], [4]])
    assert guarded.sent()["input"] == [[1, 2, 3], [4]]


@pytest.mark.parametrize("kind", INPUTS)
def test_input_redaction_is_what_the_upstream_receives(guarded: Guarded, kind: str) -> None:
    call, texts = INPUTS[kind]
    call(guarded.client, kind, "mail jane.doe@example.com or call +1 415 555 0100")
    assert texts(guarded.sent())[-1] == "mail [EMAIL] or call [PHONE]"


def test_a_redacted_input_is_counted_as_it_is_sent(guarded: Guarded) -> None:
    # DALL-E reports no usage: the image is billed the prompt tokens counted here, and
    # the deployment's tpm held for them; they are those of the prompt the upstream got.
    prompt = ("draw for alexandra.longname-example@subdomain.example.com and "
              "bartholomew.other@another-domain.example.org")
    _image(guarded.client, "image", prompt)
    assert guarded.sent()["prompt"] == "draw for [EMAIL] and [EMAIL]"
    counter = TokenCounter()
    assert counter.count(prompt) > counter.count("draw for [EMAIL] and [EMAIL]")
    assert guarded.last_line("image")["prompt_tokens"] == counter.count(
        "draw for [EMAIL] and [EMAIL]")


@pytest.mark.parametrize("kind", ["embed", "rerank", "image"])
def test_a_redacted_input_fits_a_window_as_it_is_sent(guarded: Guarded, kind: str) -> None:
    # 24 tokens as it came, past the small deployments' 10-token windows; 9 as sent. (A
    # rerank call's query is what must fit.)
    prompt = ("draw for alexandra.longname-example@subdomain.example.com and "
              "bartholomew.other@another-domain.example.org")
    model = f"{kind}-small"
    if kind == "rerank":
        guarded.client.post("/rerank", cast_to=httpx.Response, body={
            "model": model, "query": prompt, "documents": ["a plain one"]})
        sent = guarded.sent()["query"]
    else:
        INPUTS[kind][0](guarded.client, model, prompt)
        sent = INPUTS[kind][1](guarded.sent())[-1]
    assert sent == "draw for [EMAIL] and [EMAIL]"
    assert guarded.last_line(model)["deployment"] == model


def test_a_speech_cut_short_is_billed_the_characters_sent(guarded: Guarded) -> None:
    # The client stops waiting; tts-1 bills the characters it was sent: the redacted input.
    before = len(guarded.server.ledger_rows(0))
    guarded.upstream.script.actions.append(Action(delay_s=3))
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{guarded.client.base_url}audio/speech", timeout=0.5,
                   headers={"Authorization": f"Bearer {guarded.client.api_key}"},
                   json={"model": "speech", "voice": "alloy",
                         "input": "mail alexandra.longname-example@subdomain.example.com"})
    cut = [row for row in guarded.server.ledger_rows(before + 2) if row["estimated"]][-1]
    assert cut["cost"] == pytest.approx(len("mail [EMAIL]") * 15 / 1e6)


def test_a_rerank_answer_returns_the_documents_the_client_sent(guarded: Guarded) -> None:
    ranked = guarded.client.post("/rerank", cast_to=httpx.Response, body={
        "model": "rerank", "query": "mail", "documents": ["to jane.doe@example.com"],
        "return_documents": True}).json()
    assert guarded.sent()["documents"] == ["to [EMAIL]"]
    assert ranked["results"][0]["document"] == {"text": "to jane.doe@example.com"}


@pytest.mark.parametrize("kind", INPUTS)
def test_a_webhook_denies_redacts_and_its_verdicts_are_kept(guarded: Guarded,
                                                            kind: str) -> None:
    call, texts = INPUTS[kind]
    model = f"{kind}-checked"
    with pytest.raises(openai.BadRequestError) as caught:
        call(guarded.client, model, f"deny this {kind}")
    assert caught.value.code == "guardrail_blocked" and "checker" in caught.value.message
    before = len(guarded.checker.seen)
    call(guarded.client, model, f"please redact-me {kind}")
    assert texts(guarded.sent())[-1] == f"please [CHECKED] {kind}"
    seen = guarded.checker.seen[-1]
    assert (seen["text"], seen["direction"], seen["route"]) == (
        f"please redact-me {kind}", "input", model)
    asked = len(guarded.checker.seen)
    call(guarded.client, model, f"please redact-me {kind}")  # the same texts again
    assert texts(guarded.sent())[-1] == f"please [CHECKED] {kind}"
    assert asked > before and len(guarded.checker.seen) == asked  # verdicts kept


def test_a_speech_s_instructions_are_checked_as_its_input(guarded: Guarded) -> None:
    calls = len(guarded.upstream.script.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        guarded.client.audio.speech.create(model="speech", voice="alloy", input="hello",
                                           instructions=f"whisper {SECRET}").read()
    assert caught.value.code == "guardrail_blocked" and "no-secrets" in caught.value.message
    assert len(guarded.upstream.script.requests) == calls
    guarded.client.audio.speech.create(model="speech", voice="alloy", input="hello",
                                       instructions="sound like jane.doe@example.com").read()
    assert guarded.sent()["instructions"] == "sound like [EMAIL]"
    assert guarded.sent()["input"] == "hello"


@pytest.mark.parametrize("operation", ["transcriptions", "translations"])
def test_a_transcription_s_prompt_is_checked_as_its_input(guarded: Guarded,
                                                          operation: str) -> None:
    audio = getattr(guarded.client.audio, operation)
    calls = len(guarded.upstream.script.requests)
    # The SDK marks OpenAI's translations deprecated.
    with warnings.catch_warnings(action="ignore", category=DeprecationWarning):
        with pytest.raises(openai.BadRequestError) as caught:
            audio.create(model="transcribe", file=("talk.wav", wav(1.0)),
                         prompt=f"the key is {SECRET}")
        assert caught.value.code == "guardrail_blocked"
        assert "no-secrets" in caught.value.message
        assert len(guarded.upstream.script.requests) == calls
        audio.create(model="transcribe", file=("talk.wav", wav(1.0)),
                     prompt="spelled jane.doe@example.com")
    assert guarded.sent()["prompt"] == "spelled [EMAIL]"


def test_every_prompt_of_a_transcription_is_checked(guarded: Guarded) -> None:
    # A form may repeat a field; each one is sent on, so each one is checked.
    answer = httpx.post(f"{guarded.client.base_url}audio/transcriptions",
                        headers={"Authorization": f"Bearer {guarded.client.api_key}"},
                        files={"file": ("talk.wav", wav(1.0))},
                        data={"model": "transcribe",
                              "prompt": ["plain", "mail jane.doe@example.com"]})
    assert answer.status_code == 200, answer.text
    assert guarded.sent()["prompt"] == ["plain", "mail [EMAIL]"]


def test_a_route_without_guardrails_sends_the_inputs_as_they_came(guarded: Guarded) -> None:
    _embed(guarded.client, "embed-plain", f"mail jane.doe@example.com, key {SECRET}")
    assert guarded.sent()["input"][-1] == f"mail jane.doe@example.com, key {SECRET}"


def _drawn(guarded: Guarded, revised: str) -> Any:
    """Two images drawn on the guarded route, whose upstream says it revised the prompt
    to ``revised``."""
    guarded.upstream.revised_prompt = revised
    try:
        return guarded.client.images.with_raw_response.generate(
            model="image", prompt="a lighthouse", n=2)
    finally:
        guarded.upstream.revised_prompt = None


def test_an_image_s_revised_prompt_is_redacted(guarded: Guarded) -> None:
    answer = _drawn(guarded, "a lighthouse drawn for jane.doe@example.com").parse()
    assert [image.revised_prompt for image in answer.data] == [
        "a lighthouse drawn for [EMAIL]"] * 2


def test_an_image_whose_revised_prompt_an_output_guardrail_blocks_is_a_400_and_billed(
        guarded: Guarded) -> None:
    calls = len(guarded.upstream.script.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        _drawn(guarded, f"a lighthouse, and the key {SECRET}")
    assert caught.value.code == "guardrail_blocked"
    assert "no-secrets" in caught.value.message and SECRET not in str(caught.value.body)
    assert len(guarded.upstream.script.requests) == calls + 1  # drawn, and billed
    line = guarded.last_line("image")
    assert (line["status"], line["error"], line["deployment"]) == (
        400, "guardrail_blocked", "image")
    assert line["guardrails"] == ["no-secrets:output:block"]


def _transcribe(guarded: Guarded, model: str, transcript: str, response_format: str,
                line_end: str = "\n") -> str:
    """The transcript's body, whose srt's or vtt's lines the upstream ends in ``line_end``."""
    guarded.upstream.transcript, guarded.upstream.cue_line_end = transcript, line_end
    try:
        answer = guarded.client.audio.transcriptions.with_raw_response.create(
            model=model, file=("talk.wav", wav(1.0)), response_format=response_format,
            timestamp_granularities=["word"] if response_format == "verbose_json" else
            openai.NOT_GIVEN)
    finally:
        guarded.upstream.transcript, guarded.upstream.cue_line_end = None, "\n"
    return answer.text


# Each format whose pieces are read as one text, and an srt's and a vtt's with CRLF lines
# (whose "\r" must not stand where the space joining two cues goes).
CUES = [("verbose_json", "\n"), ("srt", "\n"), ("vtt", "\n"), ("srt", "\r\n"),
        ("vtt", "\r\n")]


@pytest.mark.parametrize("response_format", ["json", "verbose_json", "text", "srt", "vtt"])
def test_a_transcript_is_redacted_in_each_format(guarded: Guarded,
                                                 response_format: str) -> None:
    body = _transcribe(guarded, "transcribe", "write to jane.doe@example.com today",
                       response_format)
    assert "jane.doe@example.com" not in body
    assert "write to [EMAIL] today" in body
    if response_format == "srt":
        assert body.startswith("1\n00:00:00,000 --> 00:00:42,500\n")
    if response_format == "vtt":
        assert body.startswith("WEBVTT\n\n1\n00:00:00.000 --> 00:00:42.500\n")


@pytest.mark.parametrize(("response_format", "line_end"), CUES)
def test_a_phrase_said_across_two_cues_is_found(guarded: Guarded, response_format: str,
                                                line_end: str) -> None:
    # The cues (segments) "the launch" and "code is ready" say "launch code".
    with pytest.raises(openai.BadRequestError) as caught:
        _transcribe(guarded, "transcribe-plans", "the launch\ncode is ready",
                    response_format, line_end)
    assert caught.value.code == "guardrail_blocked" and "no-plans" in caught.value.message


@pytest.mark.parametrize(("response_format", "line_end"), CUES[1:])
def test_a_redaction_across_two_cues_lands_in_both(guarded: Guarded, response_format: str,
                                                   line_end: str) -> None:
    # Neither cue holds a phone number's 8 digits; the two of them do. Each line keeps
    # its ending.
    body = _transcribe(guarded, "transcribe", "call me on +1 415\n555 0100 tomorrow",
                       response_format, line_end)
    mark = "," if response_format == "srt" else "."
    cues = (f"1\n00:00:00{mark}000 --> 00:00:21{mark}250\ncall me on [PHONE]\n\n"
            f"2\n00:00:21{mark}250 --> 00:00:42{mark}500\n tomorrow\n")
    cues = cues if response_format == "srt" else f"WEBVTT\n\n{cues}"
    assert body == cues.replace("\n", line_end)


def test_a_redaction_across_segments_and_words_lands_in_each(guarded: Guarded) -> None:
    body = json.loads(_transcribe(guarded, "transcribe", "call me on +1 415\n555 0100 tomorrow",
                                  "verbose_json"))
    assert body["text"] == "call me on [PHONE] tomorrow"
    assert [segment["text"] for segment in body["segments"]] == [
        "call me on [PHONE]", " tomorrow"]
    assert [segment["start"] for segment in body["segments"]] == [0.0, 21.25]
    assert [word["word"] for word in body["words"]] == [
        "call", "me", "on", "[PHONE]", "", "", "", "tomorrow"]


def test_a_streamed_transcript_is_refused_where_output_guardrails_read_it(
        guarded: Guarded) -> None:
    # Its events would go out as they come, past guardrails that read the whole text.
    calls = len(guarded.upstream.script.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        guarded.client.audio.transcriptions.create(
            model="transcribe", file=("talk.wav", wav(1.0)), stream=True)
    assert caught.value.param == "stream" and "output guardrails" in caught.value.message
    assert len(guarded.upstream.script.requests) == calls


def test_a_transcript_an_output_guardrail_blocks_is_a_400_and_billed(guarded: Guarded) -> None:
    calls = len(guarded.upstream.script.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        _transcribe(guarded, "transcribe", f"the key is {SECRET}", "json")
    assert caught.value.code == "guardrail_blocked"
    assert "no-secrets" in caught.value.message and SECRET not in str(caught.value.body)
    line = guarded.last_line("transcribe")
    assert (line["status"], line["error"]) == (400, "guardrail_blocked")
    assert line["guardrails"] == ["no-secrets:output:block"]
    # The call was made, and is recorded as its deployment's (billed as it reported).
    assert len(guarded.upstream.script.requests) == calls + 1
    assert line["deployment"] == "transcribe"


def test_a_webhook_judges_a_transcript(guarded: Guarded) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _transcribe(guarded, "transcribe-checked", "deny what was said", "text")
    assert "out-checker" in caught.value.message
    body = _transcribe(guarded, "transcribe-checked", "please redact-me now", "json")
    assert "please [CHECKED] now" in body
    assert guarded.checker.seen[-1]["direction"] == "output"


@pytest.mark.parametrize(("said", "asked", "cues"), [
    ("please redact-me\nnow", 1, ["please [CHECKED]", "now"]),
    # A checker that did not keep the lines is asked about each cue alone.
    ("one-line redact-me\nnow", 3, ["one-line [CHECKED]", "now"]),
])
def test_a_webhook_reads_the_cues_as_one_text(guarded: Guarded, said: str, asked: int,
                                              cues: list[str]) -> None:
    before = len(guarded.checker.seen)
    body = _transcribe(guarded, "transcribe-checked", said, "srt")
    assert body.split("\n")[2::4] == cues
    assert guarded.checker.seen[before]["text"] == said
    assert len(guarded.checker.seen) - before == asked


def test_a_transcript_s_texts_are_judged_at_once(guarded: Guarded) -> None:
    # A verbose_json's text, its segments and its words are three checker calls, made at
    # once (here each takes 0.2 s): word by word, an hour's words waited thousands.
    guarded.checker.most_at_once = 0
    asked = len(guarded.checker.seen)
    words = " ".join(f"slow-{index}" for index in range(8))
    body = json.loads(_transcribe(guarded, "transcribe-checked", words, "verbose_json"))
    assert [word["word"] for word in body["words"]] == words.split()
    assert len(guarded.checker.seen) - asked == 3
    assert guarded.checker.most_at_once > 1
