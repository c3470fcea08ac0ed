"""A real ``aigw serve`` behind the official openai SDK's legacy completions
(``client.completions``): raw prompts and token ids to the OpenAI fake's own
/v1/completions, one user message to the Anthropic fake (never token ids), and chat's
pipeline (auth, Cedar, limits, the cache, ledger, fallbacks) between."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from hashlib import sha256
from typing import Any

import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from ..providers.conftest import DEV_KEY_LINE
from .responses_gateway import Upstreams, logged_and_billed, responses_gateway, sdk

pytestmark = pytest.mark.e2e


# Keys whose tpm holds one completion of 1,000 tokens, not three (best_of=3), or a prompt
# of 2,490 token ids and 10 out.
SMALL_KEY, IDS_KEY = "sk-completions-small-tpm", "sk-completions-ids-tpm"


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    """Both fakes and one server for the module: starting ``aigw serve`` takes seconds."""
    small = "".join(f"  {name}: {{sha256: {sha256(secret.encode()).hexdigest()}, "
                    "limits: {tpm: 2500}}\n"
                    for name, secret in (("small", SMALL_KEY), ("ids", IDS_KEY)))
    with responses_gateway(tmp_path_factory.mktemp("completions") / "gw",
                           keys=DEV_KEY_LINE + small) as served:
        yield served


def test_a_prompt_reaches_an_openai_upstream_raw(
    client: openai.OpenAI, upstreams: Upstreams,
) -> None:
    raw = client.completions.with_raw_response.create(
        model="gpt", prompt="def add(a, b):", suffix="return total", max_tokens=40,
        logprobs=2, echo=True, presence_penalty=0.5)
    assert raw.headers["x-aigw-route"] == "gpt" and raw.headers["x-aigw-deployment"] == "gpt"
    completion = raw.parse()
    assert completion.object == "text_completion"
    assert completion.id == "cmpl-" + raw.headers["x-request-id"].removeprefix("chatcmpl-")
    assert completion.model == "gpt-4o-mini"  # the model that answered, as chat says it
    [choice] = completion.choices
    said = "fake-openai: def add(a, b): [return total]"
    assert choice.text == "def add(a, b):" + said  # echo: the prompt, then the completion
    assert (choice.index, choice.finish_reason) == (0, "stop")
    assert choice.logprobs is not None and choice.logprobs.tokens is not None
    assert "".join(choice.logprobs.tokens) == choice.text
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3 + 2, 6)
    assert completion.usage.total_tokens == 11
    assert upstreams.gpt.script.requests[-1] == {
        "model": "gpt-4o-mini", "prompt": "def add(a, b):", "suffix": "return total",
        "echo": True, "logprobs": 2, "max_tokens": 40, "n": 1, "presence_penalty": 0.5,
        "stream": False}


def test_token_ids_reach_an_openai_upstream_as_they_came(
    client: openai.OpenAI, upstreams: Upstreams,
) -> None:
    """A prompt of token ids (vLLM's clients, evaluation harnesses) goes to the upstream's
    own /completions unchanged, whole and streamed; a list holding one list of them too."""
    raw = client.completions.with_raw_response.create(model="gpt", prompt=[11, 12],
                                                      logprobs=1)
    completion = raw.parse()
    assert completion.choices[0].text == "fake-openai: 11 12"  # the fake reads them so
    assert completion.usage is not None and completion.usage.prompt_tokens == 2
    assert upstreams.gpt.script.requests[-1] == {
        "model": "gpt-4o-mini", "prompt": [11, 12], "logprobs": 1, "max_tokens": 16, "n": 1,
        "stream": False}
    streamed = client.completions.with_raw_response.create(
        model="gpt", prompt=[[11, 2**31 - 1]], stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed.parse() if chunk.choices) == (
        f"fake-openai: 11 {2**31 - 1}")
    assert upstreams.gpt.script.requests[-1]["prompt"] == [11, 2**31 - 1]
    # Usage and spend: the access log and the ledger, one token an id in.
    ids = (raw.headers["x-request-id"], streamed.headers["x-request-id"])
    logged_and_billed(upstreams.server, "completions", *ids)
    with sqlite3.connect(upstreams.server.root / "aigw.sqlite") as ledger:
        tokens_in = ledger.execute("SELECT tokens_in FROM ledger WHERE request_id IN (?, ?)",
                                   ids).fetchall()
    ledger.close()
    assert tokens_in == [(2,), (2,)]


def test_token_ids_are_held_as_one_token_each(upstreams: Upstreams) -> None:
    """The key's tpm (2,500) holds the ids' count and max_tokens, exactly: no tokenizer's
    guess at them, nor a chat message's overhead."""
    with sdk(upstreams, IDS_KEY) as held:
        with pytest.raises(openai.RateLimitError):
            held.completions.create(model="gpt", prompt=[7] * 2491, max_tokens=10)
        held.completions.create(model="gpt", prompt=[7] * 2490, max_tokens=10)


def test_echo_answers_token_ids_written_out(client: openai.OpenAI) -> None:
    """The echo provider (a gateway with no keys) takes them, so they can be tried."""
    completion = client.completions.create(model="echo", prompt=[1, 2, 3])
    assert completion.choices[0].text == "1 2 3"
    assert completion.usage is not None and completion.usage.prompt_tokens == 3


def test_a_stream_from_an_openai_upstream_has_text_chunks_and_usage(
    client: openai.OpenAI, upstreams: Upstreams,
) -> None:
    chunks = list(client.completions.create(
        model="gpt", prompt="stream me", stream=True, stream_options={"include_usage": True}))
    assert {chunk.object for chunk in chunks} == {"text_completion"}
    assert len({chunk.id for chunk in chunks}) == 1 and chunks[0].id.startswith("cmpl-")
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "fake-openai: stream me"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 3)
    assert all(chunk.usage is None for chunk in chunks[:-1])
    sent = upstreams.gpt.script.requests[-1]
    assert (sent["prompt"], sent["stream"], sent["stream_options"], sent["max_tokens"]) == (
        "stream me", True, {"include_usage": True}, 16)  # OpenAI's default max_tokens


def test_a_stream_without_include_usage_has_no_usage(upstreams: Upstreams) -> None:
    raw = httpx.post(f"{upstreams.server.base_url}/v1/completions",
                     headers={"authorization": f"Bearer {DEV_KEY}"},
                     json={"model": "gpt", "prompt": "plain", "stream": True})
    events = [line for line in raw.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all('"usage"' not in event for event in events)


def test_a_chat_only_provider_gets_the_prompt_as_a_user_message(
    client: openai.OpenAI, upstreams: Upstreams,
) -> None:
    completion = client.completions.create(model="claude", prompt="hello claude",
                                           max_tokens=100)
    assert completion.choices[0].text == "fake-anthropic: hello claude"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].logprobs is None
    sent = upstreams.claude.script.requests[-1]
    assert sent["messages"] == [{"role": "user", "content": [{"type": "text",
                                                              "text": "hello claude"}]}]
    assert sent["max_tokens"] == 100
    streamed = list(client.completions.create(model="claude", prompt="stream claude",
                                              stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == (
        "fake-anthropic: stream claude")
    assert streamed[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_max_tokens_cuts_the_answer_with_finish_reason_length(
    client: openai.OpenAI, model: str,
) -> None:
    completion = client.completions.create(model=model, prompt="one two three four",
                                           max_tokens=2)
    assert completion.choices[0].finish_reason == "length"
    assert len(completion.choices[0].text.split()) == 2
    streamed = list(client.completions.create(model=model, prompt="one two three four",
                                              max_tokens=2, stream=True))
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "length"


def test_ledger_and_access_log_say_completions(
    client: openai.OpenAI, upstreams: Upstreams,
) -> None:
    raw = client.completions.with_raw_response.create(model="gpt", prompt="count me")
    request_id = raw.headers["x-request-id"]
    streamed = client.completions.with_raw_response.create(model="gpt", prompt="me too",
                                                           stream=True)
    list(streamed.parse())
    streamed_id = streamed.headers["x-request-id"]
    whole = logged_and_billed(upstreams.server, "completions", request_id, streamed_id)
    assert (whole["prompt_tokens"], whole["completion_tokens"]) == (2, 3)


def test_best_of_is_held_and_billed_for_every_sample(
    client: openai.OpenAI, upstreams: Upstreams,
) -> None:
    """best_of=3 writes three completions to return one: the key's limits hold three
    (max_tokens each), and the upstream's usage, which counts all three, is billed."""
    completion = client.completions.create(model="gpt", prompt="pick one", best_of=3)
    assert len(completion.choices) == 1
    assert completion.usage is not None and completion.usage.completion_tokens == 3 * 3
    assert upstreams.gpt.script.requests[-1]["best_of"] == 3
    with openai.OpenAI(base_url=f"{upstreams.server.base_url}/v1", api_key=SMALL_KEY,
                       max_retries=0) as small:
        with pytest.raises(openai.RateLimitError):
            small.completions.create(model="gpt", prompt="pick one", max_tokens=1000,
                                     best_of=3)
        small.completions.create(model="gpt", prompt="pick one", max_tokens=1000)


def test_the_response_cache_keeps_completions_apart_from_chat(client: openai.OpenAI) -> None:
    """A raw-prompt answer is not a chat answer: the same text as a chat message is a
    miss, and the same completion again a hit."""
    first = client.completions.with_raw_response.create(model="gpt-cached", prompt="cache me")
    again = client.completions.with_raw_response.create(model="gpt-cached", prompt="cache me")
    chat = client.chat.completions.with_raw_response.create(
        model="gpt-cached", messages=[{"role": "user", "content": "cache me"}],
        max_tokens=16)
    assert [raw.headers["x-aigw-cache"] for raw in (first, again, chat)] == [
        "miss", "hit", "miss"]
    assert again.parse().choices[0].text == first.parse().choices[0].text


def test_the_response_cache_keys_on_token_ids(client: openai.OpenAI) -> None:
    """Token ids are another prompt than the same numbers as text (which the upstream
    would tokenize otherwise), and other ids another again."""
    asks = ([5, 6], [5, 6], "5 6", [5, 7])
    raws = [client.completions.with_raw_response.create(model="gpt-cached", prompt=prompt)
            for prompt in asks]
    assert [raw.headers["x-aigw-cache"] for raw in raws] == ["miss", "hit", "miss", "miss"]


def test_a_failure_mid_stream_is_an_error_in_the_stream(
    client: openai.OpenAI, upstreams: Upstreams,
) -> None:
    upstreams.gpt.script.actions.append(Action(cut_stream_after=2))  # after two words
    texts: list[str] = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in client.completions.create(model="gpt", prompt="one two three four",
                                               stream=True):
            texts.extend(choice.text for choice in chunk.choices)
    assert "".join(texts) == "fake-openai: one"
    assert "provider 'oai' is unreachable" in failed.value.message  # chat's error object


@pytest.mark.parametrize(("ask", "param", "words"), [
    ({"model": "claude", "suffix": "}"}, "suffix",
     "sonnet has a chat API only, which takes no 'suffix' (its provider is anthropic)"),
    ({"model": "claude", "echo": True}, "echo", "takes no 'echo'"),
    ({"model": "claude", "logprobs": 1}, "logprobs", "takes no 'logprobs'"),
    ({"model": "claude", "best_of": 2}, "best_of", "takes no 'best_of'"),
    ({"model": "claude", "n": 2}, "n", "'n' must be 1"),
    ({"model": "claude", "prompt": [1, 2, 3]}, "prompt",
     "sonnet has a chat API only, which takes no token ids for 'prompt' (its provider is "
     "anthropic)"),
    ({"prompt": [[1, 2], [3]]}, "prompt", "'prompt' holds 2 prompts"),
    ({"prompt": ["one", "two"]}, "prompt", "'prompt' holds 2 prompts"),
    ({"prompt": []}, "prompt", "the list is empty"),
    ({"prompt": [[]]}, "prompt", "its list of token ids is empty"),
    ({"prompt": [1, 2**31]}, "prompt", "a token id out of range (0 to 2147483647)"),
    ({"prompt": [-1]}, "prompt", "a token id out of range"),
    ({"prompt": 7}, "prompt", "expected a string"),
    ({"prompt": [1, "two"]}, "prompt", "or token ids (a list of integers)"),
    ({"prompt": [1.5]}, "prompt", "or token ids (a list of integers)"),
    ({"n": 3, "best_of": 2}, "best_of", "greater than or equal to n"),
    ({"logprobs": 6}, "logprobs", "less than or equal to 5"),
    ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"max_tokens": 200000}, "max_tokens", "the request asks for 200000"),
    ({"extra_body": {"messages": [{"role": "user", "content": "hi"}]}}, None,
     "Unrecognized request argument supplied: messages"),
])
def test_bad_input_is_a_400_naming_the_parameter(
    client: openai.OpenAI, ask: dict[str, Any], param: str | None, words: str,
) -> None:
    body = {"model": "gpt", "prompt": "hi", **ask}
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(**body)
    assert refused.value.param == param, refused.value.message
    assert words in refused.value.message


def test_a_missing_prompt_is_a_400(upstreams: Upstreams) -> None:
    answer = httpx.post(f"{upstreams.server.base_url}/v1/completions",
                        headers={"authorization": f"Bearer {DEV_KEY}"}, json={"model": "gpt"})
    assert answer.status_code == 400
    assert answer.json()["error"] == {"message": "Missing required parameter: 'prompt'.",
                                      "type": "invalid_request_error", "param": "prompt",
                                      "code": "invalid_request"}


def test_other_errors_have_chat_statuses(upstreams: Upstreams, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        client.completions.create(model="nope", prompt="hi")
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"
    with pytest.raises(openai.AuthenticationError), sdk(upstreams, "sk-not-a-key") as stranger:
        stranger.completions.create(model="gpt", prompt="hi")
    with pytest.raises(openai.PermissionDeniedError) as forbidden:  # by Cedar
        client.completions.create(model="locked", prompt="hi")
    assert forbidden.value.code == "permission_denied"


def test_a_failing_deployment_falls_back_to_another_provider(
    client: openai.OpenAI, upstreams: Upstreams,
) -> None:
    """Last in the module: the OpenAI member failed, and may cool down."""
    upstreams.gpt.script.actions.append(Action(status=500))
    raw = client.completions.with_raw_response.create(model="spill", prompt="fall back",
                                                      max_tokens=50)
    assert raw.headers["x-aigw-deployment"] == "sonnet"
    assert raw.headers["x-aigw-attempts"] == "2"
    assert raw.parse().choices[0].text == "fake-anthropic: fall back"
    assert upstreams.gpt.script.requests[-1]["prompt"] == "fall back"  # tried raw first
