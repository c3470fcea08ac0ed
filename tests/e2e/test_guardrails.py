"""Guardrails with a real ``aigw serve`` in front of the OpenAI fake, driven by the openai
and anthropic SDKs: input blocked and redacted (what the upstream received), output
withheld and redacted, whole and streamed (a match split across chunks), log-only, a
webhook checker allowing, denying, redacting, timing out and failing with on_error
both ways, and the metrics and access-log fields that say which guardrail acted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from hashlib import sha256
from typing import Any, cast

import anthropic
import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.guard_checker import GuardChecker
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from ..providers.conftest import DEV_KEY_LINE
from .server import Server

pytestmark = pytest.mark.e2e

GUARD_TOKEN = "guard-token-5f0c1e9a7b3d4c2e8f6a"
LIMITED_KEY = "sk-guardrails-one-a-minute"
# Longer than the stream's hold-back (guardrail_stream.HOLD): text before a match goes out.
PREFIX = " ".join(f"word{number}" for number in range(60))


@pytest.fixture(scope="module")
def fake() -> Iterator[OpenAIFake]:
    upstream = OpenAIFake()
    with pytest.MonkeyPatch.context() as env, serving(upstream.app) as base_url:
        env.setenv("FAKE_OPENAI_KEY", upstream.api_key)  # the server inherits it
        upstream.base_url = base_url  # type: ignore[attr-defined]
        yield upstream


@pytest.fixture(scope="module")
def checker() -> Iterator[GuardChecker]:
    fake = GuardChecker()
    with pytest.MonkeyPatch.context() as env, serving(fake.app) as base_url:
        env.setenv("GUARD_TOKEN", GUARD_TOKEN)
        fake.base_url = base_url  # type: ignore[attr-defined]
        yield fake


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake: OpenAIFake,
           checker: GuardChecker) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("guardrails") / "gw"
    root.mkdir()
    upstream = fake.base_url  # type: ignore[attr-defined]
    hook = checker.base_url  # type: ignore[attr-defined]
    (root / "gateway.yaml").write_text(f"""version: 1
providers:
  oai: {{type: openai, base_url: "{upstream}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}
deployments:
  gpt: {{provider: oai, model: gpt-4o-mini, context_window: 128000,
        capabilities: [streaming, tools], price: {{input: 1000000, output: 1000000}}}}
guardrails:
  no-secrets: {{kind: regex, patterns: ['sk-[A-Za-z0-9]{{20,}}'], action: block}}
  pii:
    kind: pii
    entities: [email, phone, credit_card, ipv4, iban, us_ssn]
    action: redact
  watch: {{kind: regex, patterns: ['lighthouse'], action: log}}
  out-secret: {{kind: regex, patterns: ['top secret'], on: [output], action: block}}
  out-redact: {{kind: regex, patterns: ['classified \\w+'], on: [output], action: redact}}
  checker:
    kind: webhook
    url: "{hook}/check"
    headers: {{Authorization: "Bearer ${{GUARD_TOKEN}}"}}
    timeout_s: 0.5
    on_error: block
  lenient: {{kind: webhook, url: "{hook}/check", timeout_s: 0.5, on_error: allow}}
  out-checker: {{kind: webhook, url: "{hook}/check", on: [output], timeout_s: 0.5}}
  unkept: {{kind: webhook, url: "{hook}/check", on: [input], timeout_s: 0.5, cache: false}}
routes:
  guarded: {{deployment: gpt, guardrails: [no-secrets, pii, watch]}}
  guarded-cached: {{deployment: gpt, guardrails: [pii], cache: {{ttl_s: 600}}}}
  out-block: {{deployment: gpt, guardrails: [out-secret], cache: {{ttl_s: 600}}}}
  out-redact: {{deployment: gpt, guardrails: [out-redact]}}
  checked: {{deployment: gpt, guardrails: [checker]}}
  lenient: {{deployment: gpt, guardrails: [lenient]}}
  out-checked: {{deployment: gpt, guardrails: [out-checker]}}
  unkept: {{deployment: gpt, guardrails: [unkept]}}
  plain: {{deployment: gpt}}
""" + DEV_KEY_LINE + f"""  limited: {{sha256: {sha256(LIMITED_KEY.encode()).hexdigest()},
             limits: {{rpm: 1}}}}
""")
    started = Server(root)
    started.wait_ready()
    yield started
    started.stop()


@pytest.fixture
def client(server: Server) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=DEV_KEY,
                       max_retries=0) as sdk:
        yield sdk


def _ask(client: openai.OpenAI, model: str, text: str) -> Any:
    return client.chat.completions.create(model=model,
                                          messages=[{"role": "user", "content": text}])


def _streamed(client: openai.OpenAI, model: str, text: str) -> tuple[list[str], str | None]:
    """The content pieces a stream gave, and its finish reason."""
    pieces: list[str] = []
    finish = None
    for chunk in client.chat.completions.create(
            model=model, stream=True, messages=[{"role": "user", "content": text}]):
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    return pieces, finish


def _sent(fake: OpenAIFake) -> str:
    """The last user text the upstream received."""
    messages: Any = fake.script.requests[-1]["messages"]
    return str(messages[-1]["content"])


def _access(server: Server) -> list[dict[str, Any]]:
    return [json.loads(line) for line in server.log.splitlines()
            if line.startswith("{") and '"request_id"' in line]


def _last_access(server: Server, route: str) -> dict[str, Any]:
    return [line for line in _access(server) if line["route"] == route][-1]


def _ledger(server: Server, route: str) -> dict[str, Any]:
    rows = httpx.get(f"{server.base_url}/admin/spend?group_by=route",
                     headers={"Authorization": f"Bearer {DEV_KEY}"}).json()["data"]
    return next((row for row in rows if row["route"] == route),
                {"requests": 0, "errors": 0})


def _actions(server: Server) -> dict[tuple[str, str, str], float]:
    found: dict[tuple[str, str, str], float] = {}
    for line in httpx.get(f"{server.base_url}/metrics").text.splitlines():
        if line.startswith("aigw_guardrail_actions_total{"):
            labels = dict(part.split("=") for part in line[line.index("{") + 1:
                                                            line.index("}")].split(","))
            found[(labels["guardrail"].strip('"'), labels["direction"].strip('"'),
                   labels["action"].strip('"'))] = float(line.rsplit(" ", 1)[1])
    return found


def test_an_input_block_is_a_400_naming_the_guardrail_and_no_call_goes_out(
        client: openai.OpenAI, fake: OpenAIFake, server: Server) -> None:
    calls = len(fake.script.requests)
    before = _actions(server).get(("no-secrets", "input", "block"), 0)
    ledger_before = _ledger(server, "guarded")
    secret = "sk-" + "A1b2C3d4" * 4
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(client, "guarded", f"my key is {secret}")
    error = caught.value
    assert error.status_code == 400
    assert error.code == "guardrail_blocked"
    assert "no-secrets" in error.message and secret not in str(error.body)
    assert len(fake.script.requests) == calls
    line = _last_access(server, "guarded")
    assert (line["status"], line["error"]) == (400, "guardrail_blocked")
    assert line["guardrails"] == ["no-secrets:input:block"]
    assert secret not in server.log
    assert _actions(server)[("no-secrets", "input", "block")] == before + 1
    ledger = _ledger(server, "guarded")  # a refused request, as other 400s are
    assert (ledger["requests"], ledger["errors"]) == (ledger_before["requests"] + 1,
                                                      ledger_before["errors"] + 1)


def test_input_redaction_is_what_the_upstream_receives(
        client: openai.OpenAI, fake: OpenAIFake, server: Server) -> None:
    client.chat.completions.create(model="guarded", messages=[
        {"role": "system", "content": "Reply to ops@example.com only."},
        {"role": "user", "content": [{"type": "text", "text": (
            "mail jane.doe@example.com or call +1 415 555 0100; card 4111 1111 1111 1111, "
            "not 4111 1111 1111 1112; host 10.0.12.7; IBAN GB82 WEST 1234 5698 7654 32; "
            "SSN 123-45-6789")}]},
    ])
    messages: Any = fake.script.requests[-1]["messages"]
    assert messages[0]["content"] == "Reply to [EMAIL] only."
    assert messages[1]["content"] == [{"type": "text", "text": (
        "mail [EMAIL] or call [PHONE]; card [CREDIT_CARD], not 4111 1111 1111 1112; "
        "host [IPV4]; IBAN [IBAN]; SSN [US_SSN]")}]
    assert _last_access(server, "guarded")["guardrails"] == ["pii:input:redact"]


def test_a_completions_prompt_and_suffix_are_checked_as_input(
        client: openai.OpenAI, fake: OpenAIFake) -> None:
    """/v1/completions: the prompt and the suffix (fill in the middle) are both prompt;
    the suffix went upstream unchecked, past a block or a redaction."""
    client.completions.create(model="guarded", prompt="mail jane.doe@example.com",
                              suffix="or ops@example.com")
    sent = fake.script.requests[-1]
    assert (sent["prompt"], sent["suffix"]) == ("mail [EMAIL]", "or [EMAIL]")
    calls = len(fake.script.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="guarded", prompt="key = '",
                                  suffix="sk-" + "A1b2C3d4" * 4 + "'")
    assert caught.value.code == "guardrail_blocked" and "no-secrets" in caught.value.message
    assert len(fake.script.requests) == calls


def test_a_completions_prompt_of_token_ids_is_refused_where_guardrails_check_input(
        client: openai.OpenAI, fake: OpenAIFake) -> None:
    """Token ids are no text a guardrail can check, and a guardrail a client could step
    around by tokenizing its prompt would be none: a 400 naming the first guardrail, and
    no call. A route without input guardrails sends them."""
    calls = len(fake.script.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model="guarded", prompt=[1, 2, 3])
    assert (caught.value.param, caught.value.code) == ("prompt", "invalid_request")
    assert cast(Any, caught.value.body)["message"] == (
        "'prompt' holds token ids, which guardrail 'no-secrets' cannot check (it reads "
        "text): send the text.")
    assert len(fake.script.requests) == calls
    client.completions.create(model="out-redact", prompt=[1, 2, 3])
    assert fake.script.requests[-1]["prompt"] == [1, 2, 3]


def test_a_redacted_prompt_is_what_the_cache_keys_on(
        client: openai.OpenAI, fake: OpenAIFake) -> None:
    calls = len(fake.script.requests)
    first = client.chat.completions.with_raw_response.create(
        model="guarded-cached", messages=[{"role": "user", "content": "mail ann@example.com"}])
    second = client.chat.completions.with_raw_response.create(
        model="guarded-cached", messages=[{"role": "user", "content": "mail bob@example.org"}])
    assert (first.headers["x-aigw-cache"], second.headers["x-aigw-cache"]) == ("miss", "hit")
    assert second.parse().choices[0].message.content == "fake-openai: mail [EMAIL]"
    assert len(fake.script.requests) == calls + 1


def test_a_tool_result_is_redacted_too(client: openai.OpenAI, fake: OpenAIFake) -> None:
    client.chat.completions.create(model="guarded", messages=[
        {"role": "user", "content": "who is on call?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "bob@example.com"},
    ])
    messages: Any = fake.script.requests[-1]["messages"]
    assert messages[-1]["content"] == "[EMAIL]"


def test_every_text_a_message_sends_is_checked(
        client: openai.OpenAI, fake: OpenAIFake) -> None:
    # Not only content: tool calls' arguments, a legacy function_call, a refusal part
    # and a name go to the model too.
    client.chat.completions.create(model="guarded", messages=cast(Any, [
        {"role": "user", "content": "who is on call?", "name": "ann"},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "not bob@example.com"}]},
        {"role": "assistant", "content": None,
         "function_call": {"name": "mail", "arguments": '{"to": "bob@example.com"}'}},
        {"role": "function", "name": "mail", "content": "sent"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": '{"who": "bob@example.com"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "on call"},
    ]))
    messages: Any = fake.script.requests[-1]["messages"]
    assert messages[1]["content"] == [{"type": "refusal", "refusal": "not [EMAIL]"}]
    assert messages[2]["function_call"] == {"name": "mail", "arguments": '{"to": "[EMAIL]"}'}
    assert messages[4]["tool_calls"][0]["function"] == {"name": "lookup",
                                                       "arguments": '{"who": "[EMAIL]"}'}
    calls = len(fake.script.requests)
    secret = "sk-" + "Q1w2E3r4" * 4
    for message in ({"role": "user", "content": "hi", "name": secret},
                    {"role": "assistant", "content": None, "tool_calls": [{
                        "id": "call_1", "type": "function",
                        "function": {"name": "f", "arguments": f'{{"key": "{secret}"}}'}}]}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="guarded", messages=cast(Any, [
                message, {"role": "user", "content": "go on"}]))
        assert caught.value.code == "guardrail_blocked"
    assert len(fake.script.requests) == calls


def test_log_only_passes_the_text_and_says_it_acted(
        client: openai.OpenAI, fake: OpenAIFake, server: Server) -> None:
    answer = _ask(client, "guarded", "meet at the lighthouse")
    assert answer.choices[0].message.content == "fake-openai: meet at the lighthouse"
    assert _sent(fake) == "meet at the lighthouse"
    # The fake says it back: the output matched too.
    assert _last_access(server, "guarded")["guardrails"] == ["watch:input:log",
                                                            "watch:output:log"]
    assert _actions(server)[("watch", "input", "log")] >= 1


def test_a_route_without_guardrails_is_untouched(
        client: openai.OpenAI, fake: OpenAIFake, server: Server) -> None:
    _ask(client, "plain", "mail jane@example.com")
    assert _sent(fake) == "mail jane@example.com"
    assert _last_access(server, "plain")["guardrails"] is None


def test_an_output_block_withholds_the_choice_bills_it_and_does_not_cache_it(
        client: openai.OpenAI, fake: OpenAIFake, server: Server) -> None:
    calls = len(fake.script.requests)
    for _ in range(2):  # the route caches: a withheld answer is not kept
        answer = _ask(client, "out-block", "the top secret plan")
        choice = answer.choices[0]
        assert (choice.message.content, choice.finish_reason) == (None, "content_filter")
    assert len(fake.script.requests) == calls + 2
    line = _last_access(server, "out-block")
    assert line["guardrails"] == ["out-secret:output:block"]
    assert line["status"] == 200 and line["completion_tokens"] > 0 and line["cost"] > 0


def test_a_streamed_output_block_ends_with_content_filter_across_chunks(
        client: openai.OpenAI, server: Server) -> None:
    pieces, finish = _streamed(client, "out-block", f"{PREFIX} top secret plan")
    text = "".join(pieces)
    assert finish == "content_filter"
    assert text and PREFIX.startswith(text.removeprefix("fake-openai: ").rstrip())
    assert "secret" not in text and "plan" not in text
    line = _last_access(server, "out-block")
    assert line["guardrails"] == ["out-secret:output:block"] and line["cost"] > 0


def test_output_redaction_whole_and_streamed(client: openai.OpenAI, server: Server) -> None:
    answer = _ask(client, "out-redact", "the classified alpha file")
    assert answer.choices[0].message.content == "fake-openai: the [REDACTED] file"
    # The fake streams word by word: "classified" and " alpha" come in chunks of their own.
    pieces, finish = _streamed(client, "out-redact", f"{PREFIX} the classified alpha file")
    assert finish == "stop"
    assert "".join(pieces) == f"fake-openai: {PREFIX} the [REDACTED] file"
    assert len(pieces) > 1  # the text before the hold-back went out as it came
    assert _last_access(server, "out-redact")["guardrails"] == ["out-redact:output:redact"]


def test_the_webhook_sees_the_text_and_who_asks_and_gets_its_header(
        client: openai.OpenAI, checker: GuardChecker) -> None:
    answer = _ask(client, "checked", "hello there")
    assert answer.choices[0].message.content == "fake-openai: hello there"
    asked, answered = checker.seen[-2:]
    assert asked == {"text": "hello there", "direction": "input", "route": "checked",
                     "key": "dev", "team": None}
    assert answered["direction"] == "output"
    assert answered["text"] == "fake-openai: hello there"
    assert checker.headers[-1]["authorization"] == f"Bearer {GUARD_TOKEN}"


def test_the_webhook_denies_and_redacts(
        client: openai.OpenAI, fake: OpenAIFake, server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(client, "checked", "please deny this")
    assert caught.value.code == "guardrail_blocked" and "checker" in caught.value.message
    answer = _ask(client, "checked", "a redact-me word")
    assert _sent(fake) == "a [CHECKED] word"
    assert answer.choices[0].message.content == "fake-openai: a [CHECKED] word"
    assert _last_access(server, "checked")["guardrails"] == ["checker:input:redact"]


@pytest.mark.parametrize("trouble", ["hang", "drip", "crash", "garble"])
def test_a_checker_that_cannot_answer_is_what_on_error_says(
        client: openai.OpenAI, server: Server, trouble: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _ask(client, "checked", f"please {trouble}")
    assert caught.value.code == "guardrail_blocked"
    assert _last_access(server, "checked")["guardrails"] == [
        "checker:input:error", "checker:input:block"]
    answer = _ask(client, "lenient", f"please {trouble}")
    assert answer.choices[0].message.content == f"fake-openai: please {trouble}"
    assert _last_access(server, "lenient")["guardrails"] == [
        "lenient:input:error", "lenient:output:error"]
    assert GUARD_TOKEN not in server.log


def test_a_caller_over_its_limits_never_reaches_the_checker(
        server: Server, checker: GuardChecker) -> None:
    """The input checks run after the limits: a 429 costs the checker nothing, however
    often a caller over its rpm asks."""
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=LIMITED_KEY,
                       max_retries=0) as limited:
        _ask(limited, "checked", "first of the minute")
        asked = len(checker.seen)
        for _ in range(3):
            with pytest.raises(openai.RateLimitError):
                _ask(limited, "checked", "one too many")
    assert len(checker.seen) == asked


def test_a_conversations_messages_are_checked_at_once(
        client: openai.OpenAI, checker: GuardChecker) -> None:
    """One after another, each of a long conversation's texts waited for the checker in
    turn: a webhook's input checks run together."""
    checker.most_at_once = 0
    answer = client.chat.completions.create(model="checked", messages=[
        {"role": "system", "content": "be slow to judge"},
        {"role": "user", "content": "a slow question"},
        {"role": "assistant", "content": "a slow answer"},
        {"role": "user", "content": "another slow one"}])
    assert answer.choices[0].message.content == "fake-openai: another slow one"
    assert checker.most_at_once == 4


def _three_turns(client: openai.OpenAI, model: str) -> None:
    """A chat app's conversation: each turn sends the whole of it again."""
    history: list[Any] = [{"role": "system", "content": f"you answer on {model}"}]
    for turn in ("first", "second", "third"):
        history.append({"role": "user", "content": f"the {turn} question on {model}"})
        answer = client.chat.completions.create(model=model, messages=history)
        history.append({"role": "assistant", "content": answer.choices[0].message.content})


def test_a_webhook_is_asked_about_each_input_text_once_over_a_conversation(
        client: openai.OpenAI, checker: GuardChecker) -> None:
    """Its verdicts are kept: each turn asks about the new question and the answer sent
    back, not the whole conversation again (2 + 2 + 2 checks, not 2 + 4 + 6)."""
    before = len(checker.seen)
    _three_turns(client, "checked")
    asked = [seen["text"] for seen in checker.seen[before:] if seen["direction"] == "input"]
    assert len(asked) == len(set(asked)) == 6
    before = len(checker.seen)
    _three_turns(client, "unkept")  # cache: false
    asked = [seen["text"] for seen in checker.seen[before:] if seen["direction"] == "input"]
    assert len(asked) == 2 + 4 + 6


def test_a_webhook_on_a_streams_output_checks_it_whole(
        client: openai.OpenAI, checker: GuardChecker) -> None:
    pieces, finish = _streamed(client, "out-checked", "one redact-me two")
    assert pieces == ["fake-openai: one [CHECKED] two"] and finish == "stop"
    assert checker.seen[-1]["text"] == "fake-openai: one redact-me two"
    pieces, finish = _streamed(client, "out-checked", "please deny it")
    assert pieces == [] and finish == "content_filter"


def test_messages_endpoint_runs_the_guardrails(server: Server, fake: OpenAIFake) -> None:
    with anthropic.Anthropic(base_url=server.base_url, api_key=DEV_KEY,
                             max_retries=0) as sdk:
        message = sdk.messages.create(model="guarded", max_tokens=100, messages=[
            {"role": "user", "content": "write to jane@example.com"}])
        assert _sent(fake) == "write to [EMAIL]"
        assert message.content[0].text == "fake-openai: write to [EMAIL]"  # type: ignore[union-attr]
        with pytest.raises(anthropic.BadRequestError) as caught:
            sdk.messages.create(model="guarded", max_tokens=100, messages=[
                {"role": "user", "content": "key sk-" + "Z9y8X7w6" * 4}])
        assert "no-secrets" in caught.value.message
        sdk.messages.create(model="guarded", max_tokens=100, messages=[
            {"role": "user", "content": "who?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                               "name": "lookup",
                                               "input": {"who": "bob@example.com"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                          "content": "on call"}]}])
        calls: Any = fake.script.requests[-1]["messages"][1]["tool_calls"]
        assert calls[0]["function"]["arguments"] == '{"who": "[EMAIL]"}'
        withheld = sdk.messages.create(model="out-block", max_tokens=100, messages=[
            {"role": "user", "content": "the top secret"}])
        assert withheld.content == [] and withheld.stop_reason == "refusal"


def test_tool_call_arguments_are_redacted_whole_and_streamed(client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "function": {
        "name": "lookup", "parameters": {"type": "object",
                                         "properties": {"query": {"type": "string"}}}}}]
    messages: Any = [{"role": "user", "content": "the classified alpha file"}]
    whole = client.chat.completions.create(model="out-redact", messages=messages, tools=tools)
    call = whole.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.arguments == '{"query": "the [REDACTED] file"}'  # type: ignore[union-attr]
    # The fake streams the arguments 7 characters at a time.
    arguments, finish = "", None
    for chunk in client.chat.completions.create(model="out-redact", messages=messages,
                                                tools=tools, stream=True):
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or ():
                arguments += piece.function.arguments or ""  # type: ignore[union-attr]
            finish = choice.finish_reason or finish
    assert arguments == '{"query": "the [REDACTED] file"}' and finish == "tool_calls"


def test_a_messages_stream_withheld_stops_as_a_refusal(server: Server) -> None:
    with anthropic.Anthropic(base_url=server.base_url, api_key=DEV_KEY,
                             max_retries=0) as sdk, sdk.messages.stream(
            model="out-block", max_tokens=100,
            messages=[{"role": "user", "content": "the top secret"}]) as stream:
        final = stream.get_final_message()
    assert final.content == [] and final.stop_reason == "refusal"


def _tool_with(description: str, about: str) -> dict[str, Any]:
    """A chat tool whose description and a parameter's description are the texts given,
    with an enum value (the client's interface, not checked) that looks like an email."""
    return {"type": "function", "function": {
        "name": "mail", "description": description, "parameters": {
            "type": "object", "properties": {
                "to": {"type": "string", "description": about},
                "via": {"type": "string", "enum": ["relay@example.com"]}}}}}


def _sent_tool(fake: OpenAIFake) -> Any:
    return fake.script.requests[-1]["tools"][0]["function"]


def test_tool_definitions_are_checked_as_input_on_chat(
        client: openai.OpenAI, fake: OpenAIFake, checker: GuardChecker, server: Server) -> None:
    """A tool's description and its parameters' go to the model as prompt text: they
    are redacted (description text only, so the schema accepts what it did) and block."""
    ask: Any = [{"role": "user", "content": "hi"}]
    client.chat.completions.create(model="guarded", messages=ask, tools=[cast(Any, _tool_with(
        "mails ops@example.com", "who, such as jane@example.com"))])
    sent = _sent_tool(fake)
    assert sent["description"] == "mails [EMAIL]"
    assert sent["parameters"]["properties"] == {
        "to": {"type": "string", "description": "who, such as [EMAIL]"},
        "via": {"type": "string", "enum": ["relay@example.com"]}}
    assert _last_access(server, "guarded")["guardrails"] == ["pii:input:redact"]
    calls = len(fake.script.requests)
    secret = "sk-" + "T1o2O3l4" * 4
    for tool in (_tool_with(f"uses {secret}", "who"), _tool_with("mails", f"key {secret}")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="guarded", messages=ask,
                                           tools=[cast(Any, tool)])
        assert caught.value.code == "guardrail_blocked" and "no-secrets" in caught.value.message
    # The legacy functions too, and a webhook is asked about them.
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="checked", messages=ask, functions=[
            cast(Any, _tool_with("please deny this tool", "who")["function"])])
    assert caught.value.code == "guardrail_blocked"
    assert checker.seen[-1]["text"] == "please deny this tool"
    assert len(fake.script.requests) == calls


def test_tool_definitions_are_checked_on_messages_and_responses(
        client: openai.OpenAI, fake: OpenAIFake, server: Server) -> None:
    schema = {"type": "object", "properties": {
        "to": {"type": "string", "description": "who, such as jane@example.com"}}}
    with anthropic.Anthropic(base_url=server.base_url, api_key=DEV_KEY,
                             max_retries=0) as sdk:
        sdk.messages.create(model="guarded", max_tokens=100, tools=[{
            "name": "mail", "description": "mails ops@example.com", "input_schema": schema}],
            messages=[{"role": "user", "content": "hi"}])
        assert _sent_tool(fake)["description"] == "mails [EMAIL]"
        assert _sent_tool(fake)["parameters"]["properties"]["to"]["description"] == \
            "who, such as [EMAIL]"
        with pytest.raises(anthropic.BadRequestError) as refused:
            sdk.messages.create(model="guarded", max_tokens=100, tools=[{
                "name": "mail", "description": "uses sk-" + "M1s2G3s4" * 4,
                "input_schema": schema}], messages=[{"role": "user", "content": "hi"}])
        assert "no-secrets" in refused.value.message
    client.responses.create(model="guarded", input="hi", tools=[{
        "type": "function", "name": "mail", "description": "mails ops@example.com",
        "parameters": schema, "strict": False}])
    assert _sent_tool(fake)["description"] == "mails [EMAIL]"
    assert _sent_tool(fake)["parameters"]["properties"]["to"]["description"] == \
        "who, such as [EMAIL]"
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="guarded", input="hi", tools=[{
            "type": "function", "name": "mail", "description": "uses sk-" + "R1e2S3p4" * 4,
            "parameters": schema, "strict": False}])
    assert caught.value.code == "guardrail_blocked"
