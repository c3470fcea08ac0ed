"""The guardrails' matching, on graphs the compiler built: the PII recognizers and their
checks, several guardrails on one text, a stream's hold-back (a match split across
chunks however the upstream cut it), and webhook checks against a real checker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from aigw.compiler import compile_gateway
from aigw.compiler.guardrail_graph import RouteGuardrails
from aigw.runtime.chat_request import ChatRequest
from aigw.runtime.guardrail_stream import HOLD, guarded_stream
from aigw.runtime.guardrail_verdicts import Verdicts
from aigw.runtime.guardrails import (
    GuardClient,
    Withheld,
    guard_request,
    guard_result,
    judge,
    withheld,
)
from aigw.runtime.providers.base import ChatDelta, ChatResult, Choice, ToolCallDelta, Usage
from aigw.runtime.telemetry.record import RequestRecord

from ..fakes.guard_checker import GuardChecker
from ..fakes.serve import serving

GUARDRAILS = """
guardrails:
  pii: {kind: pii, entities: [email, phone, credit_card, ipv4, iban, us_ssn], action: redact}
  secrets: {kind: regex, patterns: ['top secret', 'sk-[a-z]{8}'], action: block}
  watch: {kind: regex, patterns: ['lighthouse'], action: log}
  passwords: {kind: regex, patterns: ['(?<=password=)\\S+'], action: redact}
"""


@pytest.fixture
def guards(tmp_path: Path) -> RouteGuardrails:
    (tmp_path / "gateway.yaml").write_text(f"""version: 1
providers: {{local: {{type: echo}}}}
deployments: {{echo: {{provider: local, model: echo-1, context_window: 8192}}}}
{GUARDRAILS}
routes:
  chat: {{deployment: echo, guardrails: [secrets, pii, watch, passwords]}}
""")
    result = compile_gateway(tmp_path, {})
    assert result.graph is not None, result.diagnostics
    found = result.graph.routes["chat"].guardrails
    assert found is not None
    return found


def _record() -> RequestRecord:
    return RequestRecord("chatcmpl-test", "chat", "graph")


@pytest.mark.parametrize(("text", "expected"), [
    ("jane.doe+x@mail.example.org", "[EMAIL]"),
    ("call (415) 555-0100 now", "call [PHONE] now"),
    ("+44 20 7946 0958", "[PHONE]"),
    ("4111-1111-1111-1111", "[CREDIT_CARD]"),
    ("4111-1111-1111-1112", "4111-1111-1111-1112"),  # fails the Luhn check
    ("SSN 078-05-1120.", "SSN [US_SSN]."),
    ("from 192.168.10.254:8080", "from [IPV4]:8080"),
    ("version 1.2.3.4.5", "version 1.2.3.4.5"),  # not an address
    ("DE89 3704 0044 0532 0130 00", "[IBAN]"),
    ("DE89 3704 0044 0532 0130 01", "DE89 3704 0044 0532 0130 01"),  # fails mod-97
    ("in 2024 we had 12 people", "in 2024 we had 12 people"),
    ("due 2024-01-15 or 15.01.2024", "due 2024-01-15 or 15.01.2024"),  # dates, not phones
    ("call 415-555-0100", "call [PHONE]"),
])
def test_pii_recognizers(guards: RouteGuardrails, text: str, expected: str) -> None:
    assert judge(guards.input, text, "input", _record()).text == expected


def test_a_block_wins_and_names_its_guardrail_and_the_record_says_who_acted(
        guards: RouteGuardrails) -> None:
    record = _record()
    judged = judge(guards.input, "mail a@b.io the top secret at the lighthouse", "input",
                   record)
    assert judged.blocked_by == "secrets"
    assert record.guardrails == [("secrets", "input", "block")]
    record = _record()
    judged = judge(guards.input, "mail a@b.io at the lighthouse", "output", record)
    assert (judged.text, judged.blocked_by) == ("mail [EMAIL] at the lighthouse", None)
    assert record.guardrails == [("pii", "output", "redact"), ("watch", "output", "log")]


def test_a_hold_keeps_back_the_tail_and_any_match_reaching_into_it(
        guards: RouteGuardrails) -> None:
    judged = judge(guards.output, "x" * (HOLD + 10), "output", _record(), hold=HOLD)
    assert judged.text == "x" * 10 and judged.cut == 10
    # A match that starts before the hold-back line waits whole.
    text = "y" * 5 + " a@b.io" + "z" * (HOLD - 3)
    judged = judge(guards.output, text, "output", _record(), hold=HOLD)
    assert judged.text == "y" * 5 + " " and judged.cut == 6


async def _deltas(*pieces: ChatDelta) -> AsyncIterator[ChatDelta]:
    for piece in pieces:
        yield piece


async def _run(guards: RouteGuardrails, *pieces: ChatDelta) -> tuple[list[ChatDelta], bool]:
    blocked: list[bool] = []
    out = [delta async for delta in guarded_stream(
        _deltas(*pieces), guards.output, False, _record(), GuardClient(),
        lambda: blocked.append(True))]
    return out, bool(blocked)


async def test_a_stream_matches_across_chunk_boundaries(guards: RouteGuardrails) -> None:
    text = "w" * 300 + " write to jane@exa" + "mple.com today"
    pieces = [ChatDelta(content=text[start:start + 3]) for start in range(0, len(text), 3)]
    out, blocked = await _run(guards, *pieces, ChatDelta(finish_reason="stop"),
                              ChatDelta(usage=Usage(10, 20)))
    assert not blocked
    assert "".join(d.content or "" for d in out) == "w" * 300 + " write to [EMAIL] today"
    assert out[-2].finish_reason == "stop" and out[-1].usage == Usage(10, 20)
    assert len([d for d in out if d.content]) > 2  # not held to the end


@pytest.mark.parametrize("size", [1, 4, 9])
async def test_a_stream_matches_what_looks_behind_it_at_text_that_went_out(
        guards: RouteGuardrails, size: int) -> None:
    # The chunks are shorter than "password=hunter2": no piece of text the hold-back
    # lets go of holds the match and what it looks behind it at together.
    text = "w" * 300 + " password=hunter2 ok " + "z" * 300
    pieces = [ChatDelta(content=text[start:start + size]) for start in range(0, len(text), size)]
    out, blocked = await _run(guards, *pieces, ChatDelta(finish_reason="stop"))
    assert not blocked
    assert "".join(d.content or "" for d in out) == text.replace("hunter2", "[REDACTED]")
    # Nor at the end of a stream, from the text the hold-back kept.
    text = "w" * 300 + " password=hunter2"
    pieces = [ChatDelta(content=text[start:start + size]) for start in range(0, len(text), size)]
    out, blocked = await _run(guards, *pieces, ChatDelta(finish_reason="stop"))
    assert "".join(d.content or "" for d in out) == text.replace("hunter2", "[REDACTED]")


async def test_a_stream_block_ends_the_choice_and_drops_the_rest(
        guards: RouteGuardrails) -> None:
    out, blocked = await _run(
        guards, ChatDelta(content="a " * 200), ChatDelta(content="the top"),
        ChatDelta(content=" secret is"), ChatDelta(content=" out"),
        ChatDelta(finish_reason="stop"), ChatDelta(usage=Usage(1, 2)))
    assert blocked
    text = "".join(d.content or "" for d in out)
    assert "top" not in text and "secret" not in text
    assert [d.finish_reason for d in out if d.finish_reason] == ["content_filter"]
    assert out[-1].usage == Usage(1, 2)  # still billed


async def test_tool_call_arguments_are_held_and_checked_whole(
        guards: RouteGuardrails) -> None:
    out, blocked = await _run(
        guards,
        ChatDelta(tool_calls=(ToolCallDelta(0, id="call_1", name="send", arguments=""),)),
        ChatDelta(tool_calls=(ToolCallDelta(0, arguments='{"to": "bob@ex'),)),
        ChatDelta(tool_calls=(ToolCallDelta(0, arguments='ample.com"}'),)),
        ChatDelta(finish_reason="tool_calls"))
    assert not blocked and len(out) == 1
    assert out[0].tool_calls == (ToolCallDelta(0, id="call_1", name="send",
                                               arguments='{"to": "[EMAIL]"}'),)
    assert out[0].finish_reason == "tool_calls"


async def test_a_stream_that_ends_without_a_finish_still_gives_what_it_held(
        guards: RouteGuardrails) -> None:
    out, blocked = await _run(guards, ChatDelta(content="ask "), ChatDelta(content="a@b.io"),
                              ChatDelta(usage=Usage(3, 4)))
    assert not blocked
    assert [(d.content, d.usage) for d in out] == [("ask [EMAIL]", None), (None, Usage(3, 4))]


def _webhooks(tmp_path: Path, url: str, env: dict[str, str] | None = None,
              quick: str = "timeout_s: 1") -> RouteGuardrails:
    """The route's webhook guardrails; ``quick``: the settings of the second one."""
    (tmp_path / "gateway.yaml").write_text(f"""version: 1
providers: {{local: {{type: echo}}}}
deployments: {{echo: {{provider: local, model: echo-1, context_window: 8192}}}}
guardrails:
  slow: {{kind: webhook, url: "{url}/check", timeout_s: 3, on: [input]}}
  quick: {{kind: webhook, url: "{url}/check", {quick}, on: [input, output]}}
  tokened: {{kind: webhook, url: "{url}/check", on: [input],
            headers: {{Authorization: "Bearer ${{GUARD_TOKEN}}"}}}}
  queried: {{kind: webhook, url: "{url}/check?token=${{GUARD_QUERY}}", on: [input]}}
routes:
  chat: {{deployment: echo, guardrails: [slow, quick, tokened, queried]}}
""")
    result = compile_gateway(tmp_path, env or {})
    assert result.graph is not None, result.diagnostics
    found = result.graph.routes["chat"].guardrails
    assert found is not None
    return found


async def test_a_hanging_checker_does_not_hold_up_another_checkers_checks(tmp_path: Path) -> None:
    checker = GuardChecker()
    client = GuardClient()
    with serving(checker.app) as url:
        slow, quick = _webhooks(tmp_path, url).input[:2]
        # More checks waiting on a checker that hangs than a default httpx pool holds
        # connections (100): the next check, of another checker, still gets one.
        hanging = [asyncio.create_task(client.check(slow, "please hang", "input", _record()))
                   for _ in range(110)]
        while len(checker.seen) < 100:  # all but those a default pool would keep waiting
            await asyncio.sleep(0.05)
        started = time.monotonic()
        assert await client.check(quick, "hello", "input", _record()) == "hello"
        assert time.monotonic() - started < 1
        for task in hanging:
            task.cancel()
        await asyncio.gather(*hanging, return_exceptions=True)
        await client.aclose()


async def test_a_header_that_is_not_ascii_disables_its_checker(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # httpx cannot send it (UnicodeEncodeError, a 500): the checker cannot answer, so
    # its on_error decides, and the log says which header without showing its value.
    tokened = _webhooks(tmp_path, "http://127.0.0.1:9", {"GUARD_TOKEN": "s\u00e9same"}).input[2]
    record = _record()
    with pytest.raises(Withheld):
        await GuardClient().check(tokened, "hello", "input", record)
    assert record.guardrails == [("tokened", "input", "error"), ("tokened", "input", "block")]
    assert "header authorization is not ASCII text" in caplog.text
    assert "s\u00e9same" not in caplog.text


async def test_a_token_in_the_checkers_url_is_not_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A transport whose error quotes the URL it could not reach (aiohttp's do): the
    # log line says what failed without the token a ${ENV} put in its query.
    token = "guard-query-token-8c1f"
    queried = _webhooks(tmp_path, "http://127.0.0.1:9", {"GUARD_QUERY": token}).input[3]

    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"Cannot connect to {request.url}", request=request)

    client = GuardClient(httpx.AsyncClient(transport=httpx.MockTransport(unreachable)))
    with pytest.raises(Withheld):
        await client.check(queried, "hello", "input", _record())
    await client.aclose()
    assert "ConnectError: Cannot connect to the checker's URL" in caplog.text
    assert token not in caplog.text


async def test_a_url_httpx_refuses_is_the_checkers_error_not_a_500(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # httpx.InvalidURL is no HTTPError: it went out of the check, a 500 whose traceback
    # quoted the host a ${ENV} made. Now the checker's on_error decides.
    host = "10.0.0.256"
    queried = _webhooks(tmp_path, "http://${GUARD_HOST}",
                        {"GUARD_HOST": host, "GUARD_QUERY": "q"}).input[3]
    record = _record()
    with pytest.raises(Withheld):
        await GuardClient().check(queried, "hello", "input", record)
    assert record.guardrails == [("queried", "input", "error"), ("queried", "input", "block")]
    assert "its URL cannot be sent (InvalidURL)" in caplog.text
    assert host not in caplog.text


async def test_a_refusal_and_the_fields_passed_on_unread_are_checked_too(
        guards: RouteGuardrails) -> None:
    # The model's text is not only content: a reasoning model's reasoning_content, a
    # legacy function_call's arguments, a refusal.
    answer = ChatResult("m", (
        Choice(0, "ok", "stop", refusal="not to a@b.io", logprobs={"content": []},
               extra={"reasoning_content": "mail a@b.io",
                      "function_call": {"name": "mail", "arguments": '{"to": "a@b.io"}'}}),
        Choice(1, "ok", "stop", extra={"reasoning_content": "the top secret"}),
    ), Usage(1, 2))
    result, blocked = await guard_result(guards.output, answer, _record(), GuardClient())
    assert blocked
    assert result.choices == (
        Choice(0, "ok", "stop", refusal="not to [EMAIL]",
               extra={"reasoning_content": "mail [EMAIL]",
                      "function_call": {"name": "mail", "arguments": '{"to": "[EMAIL]"}'}}),
        withheld(1))


async def test_a_streams_refusal_and_unread_fields_are_held_and_checked_whole(
        guards: RouteGuardrails) -> None:
    out, blocked = await _run(
        guards, ChatDelta(extra={"reasoning_content": "mail jane@exa"}),
        ChatDelta(extra={"reasoning_content": "mple.com",
                         "function_call": {"name": "mail", "arguments": '{"to": "a@'}}),
        ChatDelta(refusal="not to b@", extra={"function_call": {"arguments": 'b.io"}'}}),
        ChatDelta(refusal="c.io", finish_reason="function_call"))
    assert not blocked and len(out) == 1
    assert (out[0].refusal, out[0].extra, out[0].finish_reason) == (
        "not to [EMAIL]", {"reasoning_content": "mail [EMAIL]",
                           "function_call": {"name": "mail", "arguments": '{"to": "[EMAIL]"}'}},
        "function_call")
    out, blocked = await _run(guards, ChatDelta(extra={"reasoning_content": "the top "}),
                              ChatDelta(extra={"reasoning_content": "secret"}),
                              ChatDelta(content="fine", finish_reason="stop"))
    assert blocked and [(d.content, d.extra, d.finish_reason) for d in out] == [
        (None, None, "content_filter")]


def test_a_match_of_no_characters_blocks_but_redacts_nothing(tmp_path: Path) -> None:
    """A pattern that matches no characters (a lookahead alone, a word boundary) passes
    the compiler's empty-string check; redacting with it put labels between characters."""
    (tmp_path / "gateway.yaml").write_text("""version: 1
providers: {local: {type: echo}}
deployments: {echo: {provider: local, model: echo-1, context_window: 8192}}
guardrails:
  ahead: {kind: regex, patterns: ['(?=secret)'], action: block}
  bounds: {kind: regex, patterns: ['\\bsecret\\b|\\b'], action: redact}
routes:
  blocked: {deployment: echo, guardrails: [ahead]}
  redacted: {deployment: echo, guardrails: [bounds]}
""")
    graph = compile_gateway(tmp_path, {}).graph
    assert graph is not None
    blocked, redacted = graph.routes["blocked"].guardrails, graph.routes["redacted"].guardrails
    assert blocked is not None and redacted is not None
    assert judge(blocked.input, "my secret plan", "input", _record()).blocked_by == "ahead"
    judged = judge(redacted.input, "my secret plan", "input", _record())
    assert judged.text == "my [REDACTED] plan"


async def test_a_webhooks_verdicts_on_input_texts_are_kept(tmp_path: Path) -> None:
    """A conversation is sent again every turn: each text the checker judged (an allow,
    a block, a redaction) is not asked about again while its verdict is kept, and the
    request still records what the guardrail did."""
    checker, now = GuardChecker(), [0.0]
    client = GuardClient(verdicts=Verdicts(clock=lambda: now[0]))
    with serving(checker.app) as url:
        quick = _webhooks(tmp_path, url).input[1]
        for _ in range(2):
            record = _record()
            assert await client.check(quick, "hello", "input", record) == "hello"
            assert await client.check(quick, "a redact-me word", "input", record) == \
                "a [CHECKED] word"
            with pytest.raises(Withheld):
                await client.check(quick, "please deny", "input", record)
            assert record.guardrails == [("quick", "input", "redact"),
                                         ("quick", "input", "block")]
        assert [seen["text"] for seen in checker.seen] == [
            "hello", "a redact-me word", "please deny"]
        # Not a checker that did not answer: its on_error is decided afresh each time.
        for _ in range(2):
            with pytest.raises(Withheld):
                await client.check(quick, "please crash", "input", _record())
        # Nor a model's answer (new text each time), nor another caller's question (a
        # checker may judge by the route, key and team it is sent).
        await client.check(quick, "hello", "output", _record())
        other = _record()
        other.key = "other"
        await client.check(quick, "hello", "input", other)
        assert len(checker.seen) == 7
        now[0] = 299.0  # ttl_s is 300 by default
        await client.check(quick, "hello", "input", _record())
        assert len(checker.seen) == 7
        now[0] = 301.0
        await client.check(quick, "hello", "input", _record())
        assert len(checker.seen) == 8
        await client.aclose()


async def test_a_reload_that_changes_a_webhook_reuses_none_of_its_verdicts(
        tmp_path: Path) -> None:
    checker, client = GuardChecker(), GuardClient()
    with serving(checker.app) as url:
        await client.check(_webhooks(tmp_path, url).input[1], "hello", "input", _record())
        same = _webhooks(tmp_path, url).input[1]  # compiled again, as it was
        await client.check(same, "hello", "input", _record())
        assert len(checker.seen) == 1
        changed = _webhooks(tmp_path, url, quick="timeout_s: 1.5").input[1]
        await client.check(changed, "hello", "input", _record())
        assert len(checker.seen) == 2
        # A token the checker is called with changed: it may be another account's policy.
        tokened = _webhooks(tmp_path, url, {"GUARD_TOKEN": "one"}).input[2]
        retokened = _webhooks(tmp_path, url, {"GUARD_TOKEN": "two"}).input[2]
        for guardrail in (tokened, tokened, retokened):
            await client.check(guardrail, "hello", "input", _record())
        assert len(checker.seen) == 4
        # What a reload took out or changed is dropped, not kept for the process's life.
        client.verdicts.retain([changed])
        assert client.verdicts.get(changed, _asked("hello")) is not None
        assert client.verdicts.get(retokened, _asked("hello")) is None
        await client.aclose()


async def test_a_webhooks_cache_is_bounded_and_can_be_turned_off(tmp_path: Path) -> None:
    checker, client = GuardChecker(), GuardClient()
    with serving(checker.app) as url:
        one = _webhooks(tmp_path, url, quick="cache: {max_entries: 1}").input[1]
        for text in ("first", "second", "first"):  # the least recently used went
            await client.check(one, text, "input", _record())
        assert len(checker.seen) == 3
        off = _webhooks(tmp_path, url, quick="cache: false").input[1]
        for _ in range(2):
            await client.check(off, "hello", "input", _record())
        assert len(checker.seen) == 5
        await client.aclose()


def test_a_cache_on_a_pattern_guardrail_is_refused(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_text("""version: 1
providers: {local: {type: echo}}
deployments: {echo: {provider: local, model: echo-1, context_window: 8192}}
guardrails:
  secrets: {kind: regex, patterns: ['top secret'], cache: false}
routes:
  chat: {deployment: echo, guardrails: [secrets]}
""")
    found = [(item.code.id, item.message) for item in compile_gateway(tmp_path, {}).diagnostics]
    assert found == [("AGW342", "guardrail 'secrets' of kind regex does not take cache")]


def _asked(text: str) -> dict[str, str | None]:
    """What a check of ``text`` on input sends the checker, for a ``_record()``."""
    return {"text": text, "direction": "input", "route": None, "key": None, "team": None}


async def test_a_tools_schema_descriptions_are_found_wherever_they_are(
        guards: RouteGuardrails) -> None:
    """Descriptions of nested schemas (anyOf, items, $defs) are read by the model too; a
    property named "description" or "enum" is a schema, and a value (an enum, a
    default) is the client's interface, left as it is."""
    def mail(about: str) -> dict[str, object]:
        return {"type": "string", "description": about}
    schema = {"type": "object", "$defs": {"who": mail("a@b.io")}, "properties": {
        "description": mail("c@d.io"),
        "enum": {"anyOf": [mail("e@f.io"), {"type": "array", "items": mail("g@h.io")}]},
        "via": {"type": "string", "enum": ["i@j.io"], "default": "i@j.io",
                "examples": [{"description": "k@l.io"}]}}}
    request = ChatRequest(model="chat", messages=[{"role": "user", "content": "hi"}],
                          tools=[{"type": "function", "function": {
                              "name": "mail", "parameters": schema}}])
    checked = await guard_request(guards.input, request, _record(), GuardClient())
    assert checked.tools is not None
    assert checked.tools[0]["function"]["parameters"] == {
        "type": "object", "$defs": {"who": mail("[EMAIL]")}, "properties": {
            "description": mail("[EMAIL]"),
            "enum": {"anyOf": [mail("[EMAIL]"), {"type": "array", "items": mail("[EMAIL]")}]},
            "via": schema["properties"]["via"]}}  # type: ignore[index]
    assert request.tools == [{"type": "function", "function": {  # the client's, untouched
        "name": "mail", "parameters": schema}}]
