"""A real ``aigw serve`` behind Google's own SDK (google-genai), its routes served by the
OpenAI fake and the echo provider."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pydantic
import pytest
from google import genai
from google.genai import errors, types

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from ..fakes.gemini_fake import GeminiFake
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from ..providers.conftest import PIXEL, dev_key_line
from .server import Server

pytestmark = pytest.mark.e2e

NARROW_KEY = "sk-gemini-echo-only"
LOOKUP = types.FunctionDeclaration(
    name="lookup", description="Look a thing up",
    parameters=types.Schema(type=types.Type.OBJECT,
                            properties={"query": types.Schema(type=types.Type.STRING)}),
)


@pytest.fixture(scope="module")
def fake() -> Iterator[OpenAIFake]:
    """One fake and one server for the module: starting ``aigw serve`` takes seconds."""
    upstream = OpenAIFake()
    with pytest.MonkeyPatch.context() as env, serving(upstream.app) as base_url:
        env.setenv("FAKE_OPENAI_KEY", upstream.api_key)  # the server inherits it
        upstream.base_url = base_url  # type: ignore[attr-defined]
        yield upstream


@pytest.fixture(scope="module")
def gemini() -> Iterator[GeminiFake]:
    upstream = GeminiFake()
    with pytest.MonkeyPatch.context() as env, serving(upstream.app) as base_url:
        env.setenv("FAKE_GEMINI_KEY", upstream.api_key)
        upstream.base_url = base_url
        yield upstream


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake: OpenAIFake,
           gemini: GeminiFake) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("gemini") / "gw"
    root.mkdir()
    base = fake.base_url  # type: ignore[attr-defined]
    narrow = hashlib.sha256(NARROW_KEY.encode()).hexdigest()
    (root / "gateway.yaml").write_text(
        "version: 1\n"
        "providers:\n"
        f'  oai: {{type: openai, base_url: "{base}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}\n'
        "  local: {type: echo}\n"
        f'  gem: {{type: gemini, base_url: "{gemini.base_url}/v1beta", '
        'api_key: "${FAKE_GEMINI_KEY}"}\n'
        "deployments:\n"
        "  flash: {provider: gem, model: gemini-2.5-flash, context_window: 1048576,\n"
        "          capabilities: [streaming, tools, json_schema]}\n"
        "  gpt: {provider: oai, model: gpt-4o-mini, context_window: 128000,\n"
        "        max_output_tokens: 4096, capabilities: [streaming, tools, vision, json_schema],\n"
        "        price: {input: 1.0, output: 2.0}}\n"
        "  echo: {provider: local, model: echo-1, context_window: 8192,\n"
        "         capabilities: [streaming, json_schema]}\n"
        "guardrails:\n"
        "  no-secrets: {kind: regex, patterns: ['sk-[A-Za-z0-9]{20,}'], action: block}\n"
        "routes:\n"
        "  gpt: {deployment: gpt}\n"
        "  gpt-cached: {deployment: gpt, cache: {ttl_s: 600}}\n"
        "  guarded: {deployment: gpt, guardrails: [no-secrets]}\n"
        "  echo: {deployment: echo}\n"
        "  flash: {deployment: flash}\n"
        # A budget, so that a request holds an amount until it settles (a leaked hold
        # would show in /admin/budgets).
        + dev_key_line("budget: {amount: 1000, period: total}",
                       f"  narrow: {{routes: [echo], sha256: {narrow}}}\n")
    )
    started = Server(root)
    started.wait_ready()
    yield started
    started.stop()


def _client(server: Server, api_key: str = DEV_KEY) -> genai.Client:
    return genai.Client(api_key=api_key, http_options=types.HttpOptions(
        base_url=server.base_url, api_version="v1beta",
        retry_options=types.HttpRetryOptions(attempts=1)))


@pytest.fixture
def client(server: Server) -> Iterator[genai.Client]:
    with _client(server) as sdk:
        yield sdk


def test_generate_content_is_served_by_an_openai_upstream(
    client: genai.Client, fake: OpenAIFake, server: Server
) -> None:
    answer = client.models.generate_content(
        model="gpt", contents="hello there",
        config=types.GenerateContentConfig(system_instruction="Be brief.", temperature=0.5,
                                           max_output_tokens=100, top_k=5))
    assert answer.text == "fake-openai: hello there"
    assert answer.candidates and answer.candidates[0].finish_reason == types.FinishReason.STOP
    assert answer.model_version == "gpt-4o-mini"
    usage = answer.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count,
            usage.total_token_count) == (10, 3, 13)  # the fake's count: words + 3
    sent = fake.script.requests[-1]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "hello there"}]
    assert sent["temperature"] == 0.5 and sent["max_completion_tokens"] == 100
    assert "top_k" not in sent  # OpenAI refuses it; kept only for upstreams that take it
    # Billed, in the ledger and the access log, as a request of its own endpoint.
    request_id = f"chatcmpl-{answer.response_id}"
    row = server.ledger_row(request_id, wait_s=5)
    assert (row["route"], row["deployment"], row["status"]) == ("gpt", "gpt", 200)
    assert (row["tokens_in"], row["tokens_out"]) == (10, 3) and row["cost"] > 0
    line = server.access_line(request_id)
    assert line is not None and line["endpoint"] == "generate_content"


def test_stream_gives_text_then_finish_and_usage(client: genai.Client, server: Server) -> None:
    chunks = list(client.models.generate_content_stream(
        model="gpt", contents="streamed word by word"))
    assert "".join(chunk.text or "" for chunk in chunks) == "fake-openai: streamed word by word"
    assert len(chunks) > 2  # as it came, not one answer at the end
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata is not None
    assert last.usage_metadata.candidates_token_count == 5
    row = server.ledger_row(f"chatcmpl-{last.response_id}", wait_s=5)
    assert (row["route"], row["status"], row["tokens_out"]) == ("gpt", 200, 5)


def test_the_echo_provider_answers_whole_and_streamed(client: genai.Client) -> None:
    whole = client.models.generate_content(model="echo", contents="say it back")
    streamed = client.models.generate_content_stream(model="echo", contents="say it back")
    assert whole.text and whole.text == "".join(chunk.text or "" for chunk in streamed)


def test_function_calling_round_trip(client: genai.Client, fake: OpenAIFake) -> None:
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[LOOKUP])],
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
            mode=types.FunctionCallingConfigMode.AUTO)),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    question = types.Content(role="user", parts=[types.Part(text="find the moon")])
    for streamed in (False, True):
        if streamed:
            chunks = list(client.models.generate_content_stream(
                model="gpt", contents=[question], config=config))
            calls = [call for chunk in chunks for call in chunk.function_calls or ()]
            content = types.Content(role="model", parts=[types.Part(function_call=calls[0])])
        else:
            first = client.models.generate_content(model="gpt", contents=[question],
                                                   config=config)
            calls = first.function_calls or []
            assert first.candidates and first.candidates[0].content is not None
            content = first.candidates[0].content
        assert [(call.id, call.name, call.args) for call in calls] == [
            ("call_fake_1", "lookup", {"query": "find the moon"})]
    sent = fake.script.requests[-1]
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "lookup", "description": "Look a thing up",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]
    assert sent["tool_choice"] == "auto"

    result = types.Part.from_function_response(name="lookup", response={"result": "full"})
    assert result.function_response is not None
    result.function_response.id = calls[0].id  # as an app answers the call it was given
    answer = client.models.generate_content(
        model="gpt", config=config,
        contents=[question, content, types.Content(role="user", parts=[result])])
    assert answer.text == 'tool said: {"result": "full"}'
    assert fake.script.requests[-1]["messages"][1:] == [
        {"role": "assistant", "tool_calls": [
            {"id": "call_fake_1", "type": "function",
             "function": {"name": "lookup", "arguments": '{"query": "find the moon"}'}}]},
        {"role": "tool", "tool_call_id": "call_fake_1", "content": '{"result": "full"}'},
    ]


def test_several_allowed_functions_reach_the_upstream_alone(
    client: genai.Client, fake: OpenAIFake
) -> None:
    """Mode ANY with several allowed names: the upstream is sent only those tools, and
    must call one of them."""
    other = types.FunctionDeclaration(name="clock", description="Tell the time")
    unused = types.FunctionDeclaration(name="news", description="Read the news")
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[LOOKUP, other, unused])],
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
            mode=types.FunctionCallingConfigMode.ANY,
            allowed_function_names=["lookup", "clock"])),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    answer = client.models.generate_content(model="gpt", contents="find the moon",
                                            config=config)
    assert [call.name for call in answer.function_calls or ()] == ["lookup"]
    sent = fake.script.requests[-1]
    assert [tool["function"]["name"] for tool in sent["tools"]] == ["lookup", "clock"]
    assert sent["tool_choice"] == "required"


def _validated(*declarations: types.FunctionDeclaration,
               allowed: list[str] | None = None) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=list(declarations))],
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
            mode=types.FunctionCallingConfigMode.VALIDATED, allowed_function_names=allowed)),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))


def test_validated_calls_reach_openai_as_strict_auto_and_gemini_as_validated(
    client: genai.Client, fake: OpenAIFake, gemini: GeminiFake
) -> None:
    """Mode VALIDATED was refused (400). An OpenAI upstream is sent auto with the
    allowed functions alone, strict where their schemas can be (every property
    required); a Gemini one is sent VALIDATED itself."""
    required = types.FunctionDeclaration(
        name="lookup", description="Look a thing up",
        parameters=types.Schema(type=types.Type.OBJECT, required=["query"],
                                properties={"query": types.Schema(type=types.Type.STRING)}))
    news = types.FunctionDeclaration(name="news", description="Read the news")
    answer = client.models.generate_content(model="gpt", contents="find the moon",
                                            config=_validated(required, news,
                                                              allowed=["lookup"]))
    assert [call.name for call in answer.function_calls or ()] == ["lookup"]
    sent = fake.script.requests[-1]
    assert sent["tool_choice"] == "auto"
    assert sent["tools"] == [{"type": "function", "function": {
        "name": "lookup", "description": "Look a thing up", "strict": True,
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                       "required": ["query"], "additionalProperties": False}}}]
    client.models.generate_content(model="gpt", contents="find the moon",
                                   config=_validated(LOOKUP, news))
    assert [(tool["function"]["name"], tool["function"].get("strict"))
            for tool in fake.script.requests[-1]["tools"]] == [("lookup", None),
                                                                ("news", True)]
    answer = client.models.generate_content(model="flash", contents="find the moon",
                                            config=_validated(LOOKUP, news))
    assert [call.name for call in answer.function_calls or ()] == ["lookup"]
    sent = gemini.script.requests[-1]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "VALIDATED"}}
    assert [each["name"] for each in sent["tools"][0]["functionDeclarations"]] == \
        ["lookup", "news"]


def test_count_tokens_and_models(client: genai.Client) -> None:
    counted = client.models.count_tokens(model="gpt", contents="how many tokens is this")
    assert counted.total_tokens is not None and counted.total_tokens > 0
    names = [model.name for model in client.models.list()]
    assert names == ["models/echo", "models/flash", "models/gpt", "models/gpt-cached",
                     "models/guarded"]
    paged = client.models.list(config=types.ListModelsConfig(page_size=2))
    assert len(paged.page) == 2  # the SDK's pager asks for the next page as it is read
    assert [model.name for model in paged] == names
    model = client.models.get(model="gpt")
    assert (model.input_token_limit, model.output_token_limit) == (128000, 4096)


def test_count_tokens_asks_a_gemini_deployment_and_falls_back_to_the_gateways_count(
    client: genai.Client, server: Server, gemini: GeminiFake
) -> None:
    """countTokens answered with the gateway's estimate even where the route's
    deployment is Gemini's, whose own count is exact. Now the deployment is asked (with
    the provider's key, never the gateway's), and says what a call's promptTokenCount
    will be; a route of another provider, or a count that fails, is the gateway's.
    ``x-aigw-counted-by`` says which."""
    body = {"contents": [{"role": "user", "parts": [{"text": "how many tokens is this"}]}],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "tools": [{"functionDeclarations": [{"name": "lookup"}]}]}

    def count(route: str) -> httpx.Response:
        return httpx.post(f"{server.base_url}/v1beta/models/{route}:countTokens", timeout=30,
                          headers={"x-goog-api-key": DEV_KEY},
                          json={"generateContentRequest": body})

    counted = count("flash")
    assert counted.status_code == 200, counted.text
    assert (counted.headers["x-aigw-counted-by"], counted.headers["x-aigw-deployment"]) == \
        ("deployment", "flash")
    assert gemini.paths[-1] == "/v1beta/models/gemini-2.5-flash:countTokens"
    assert gemini.script.headers[-1]["x-goog-api-key"] == gemini.api_key
    asked = gemini.script.requests[-1]["generateContentRequest"]
    assert asked["model"] == "models/gemini-2.5-flash"
    assert asked["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    answer = client.models.generate_content(
        model="flash", contents="how many tokens is this",
        config=types.GenerateContentConfig(system_instruction="Be brief.", tools=[
            types.Tool(function_declarations=[types.FunctionDeclaration(name="lookup")])]))
    assert answer.usage_metadata is not None
    assert counted.json() == {"totalTokens": answer.usage_metadata.prompt_token_count}

    # The deployment's time counting is not the gateway's overhead.
    gemini.script.actions.append(Action(delay_s=1.0))
    slow = count("flash")
    assert slow.headers["x-aigw-counted-by"] == "deployment"
    assert float(slow.headers["x-aigw-overhead-ms"]) < 1000

    other = count("gpt")
    assert other.status_code == 200 and other.headers["x-aigw-counted-by"] == "gateway"
    assert "x-aigw-deployment" not in other.headers and other.json()["totalTokens"] > 0

    # A count that fails (its message quoting the provider's key) is the gateway's.
    gemini.script.actions.append(Action(status=400, body={"error": {
        "code": 400, "status": "INVALID_ARGUMENT",
        "message": f"API key not valid: {gemini.api_key}"}}))
    fallen = count("flash")
    assert fallen.status_code == 200 and fallen.headers["x-aigw-counted-by"] == "gateway"
    assert fallen.json()["totalTokens"] > 0
    assert gemini.api_key not in fallen.text and gemini.api_key not in server.log
    assert "countTokens: deployment 'flash' did not count the prompt" in server.log


# google-genai's async client subclasses aiohttp's session when aiohttp is installed (as
# an app's would be), which aiohttp warns about: the SDK's warning, not the gateway's.
_AIOHTTP_SUBCLASS = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession:DeprecationWarning")


def test_a_cached_route_answers_the_same_question_from_its_cache(
    client: genai.Client, fake: OpenAIFake
) -> None:
    calls = len(fake.script.requests)
    config = types.GenerateContentConfig(temperature=0)
    answers = [client.models.generate_content(model="gpt-cached", contents="cache me please",
                                              config=config) for _ in range(2)]
    sent = [answer.sdk_http_response.headers if answer.sdk_http_response else None
            for answer in answers]
    assert [headers and headers.get("x-aigw-cache") for headers in sent] == ["miss", "hit"]
    assert answers[1].text == answers[0].text == "fake-openai: cache me please"
    assert len(fake.script.requests) == calls + 1  # the second never went upstream


def test_an_input_guardrail_block_is_googles_400_naming_it(
    client: genai.Client, fake: OpenAIFake, server: Server
) -> None:
    calls = len(fake.script.requests)
    secret = "sk-" + "A1b2C3d4" * 4
    with pytest.raises(errors.ClientError) as blocked:
        client.models.generate_content(model="guarded", contents=f"my key is {secret}")
    assert (blocked.value.code, blocked.value.status) == (400, "INVALID_ARGUMENT")
    assert "no-secrets" in (blocked.value.message or "")
    assert secret not in str(blocked.value.details)
    assert len(fake.script.requests) == calls  # no call went out


@_AIOHTTP_SUBCLASS
async def test_the_async_sdk_generates_and_streams(server: Server) -> None:
    async with _client(server).aio as sdk:
        answer = await sdk.models.generate_content(model="gpt", contents="hello async")
        assert answer.text == "fake-openai: hello async"
        chunks = [chunk async for chunk in await sdk.models.generate_content_stream(
            model="gpt", contents="streamed async")]
    assert "".join(chunk.text or "" for chunk in chunks) == "fake-openai: streamed async"
    assert chunks[-1].candidates and chunks[-1].candidates[0].finish_reason == "STOP"
    row = server.ledger_row(f"chatcmpl-{chunks[-1].response_id}", wait_s=5)
    assert (row["route"], row["status"], row["tokens_out"]) == ("gpt", 200, 3)


@_AIOHTTP_SUBCLASS
async def test_an_async_stream_closed_early_is_billed_and_holds_nothing(
    server: Server, fake: OpenAIFake
) -> None:
    fake.script.actions.append(Action(event_delay_s=0.3))
    async with _client(server).aio as sdk:
        stream = await sdk.models.generate_content_stream(
            model="gpt", contents="a slow answer of many words")
        first = await anext(stream)  # the app leaves after its first words
        await stream.aclose()
    request_id = f"chatcmpl-{first.response_id}"
    deadline = time.monotonic() + 10
    while not (line := server.access_line(request_id)):
        assert time.monotonic() < deadline, server.log
        await anyio.sleep(0.1)
    assert (line["endpoint"], line["stream"], line["status"], line["error"]) == (
        "generate_content", True, 499, "client_disconnected")
    row = server.ledger_row(request_id, wait_s=5)
    assert row["status"] == 499 and 0 < row["tokens_out"] < 8 and row["cost"] > 0
    budget = _key_budget(server)
    assert budget["held"] == 0 and budget["spent"] > 0  # settled, not left held


def _key_budget(server: Server) -> dict[str, float]:
    response = httpx.get(f"{server.base_url}/admin/budgets",
                         headers={"Authorization": f"Bearer {DEV_KEY}"}, timeout=10)
    assert response.status_code == 200, response.text
    rows: list[dict[str, float]] = response.json()["data"]
    return next(row for row in rows if row["name"] == "dev")


def test_errors_are_googles_shape(server: Server, client: genai.Client) -> None:
    with _client(server, "sk-not-a-key") as bad_key, pytest.raises(errors.ClientError) as bad:
        bad_key.models.generate_content(model="gpt", contents="x")
    assert (bad.value.code, bad.value.status) == (401, "UNAUTHENTICATED")
    with pytest.raises(errors.ClientError) as missing:
        client.models.generate_content(model="nope", contents="x")
    assert (missing.value.code, missing.value.status) == (404, "NOT_FOUND")
    with _client(server, NARROW_KEY) as narrow:
        assert [model.name for model in narrow.models.list()] == ["models/echo"]
        with pytest.raises(errors.ClientError) as refused:
            narrow.models.generate_content(model="gpt", contents="x")
        assert refused.value.code == 404
        with pytest.raises(errors.ClientError):
            narrow.models.get(model="gpt")
    with pytest.raises(errors.ClientError) as two:
        client.models.generate_content(model="gpt", contents="x", config=types.
                                       GenerateContentConfig(candidate_count=2))
    assert (two.value.code, two.value.status) == (400, "INVALID_ARGUMENT")
    assert "candidateCount" in (two.value.message or "")
    with pytest.raises(errors.ClientError) as unknown:
        client.models.generate_content(model="gpt", contents="x", config=types.
                                       GenerateContentConfig(safety_settings=[types.SafetySetting(
                                           category=types.HarmCategory.HARM_CATEGORY_HATE_SPEECH,
                                           threshold=types.HarmBlockThreshold.BLOCK_NONE)]))
    assert "safetySettings" in (unknown.value.message or "")


def test_the_key_may_come_in_the_query(server: Server) -> None:
    url = f"{server.base_url}/v1beta/models/echo:generateContent"
    body = {"contents": [{"parts": [{"text": "by query"}]}]}
    answer = httpx.post(url, params={"key": DEV_KEY}, json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["candidates"][0]["content"]["parts"]
    nothing = httpx.post(url, json=body, timeout=10)
    assert nothing.status_code == 401
    assert nothing.json()["error"]["status"] == "UNAUTHENTICATED"


class Place(pydantic.BaseModel):
    city: str


def test_structured_output_is_parsed(client: genai.Client, fake: OpenAIFake) -> None:
    """``response_schema`` (a pydantic class, sent as Gemini's Schema) reaches the echo
    deployment, which answers with the JSON it was sent, and the OpenAI fake, which
    answers JSON of the schema only when response_format reaches it."""
    config = types.GenerateContentConfig(response_mime_type="application/json",
                                         response_schema=Place)
    echoed = client.models.generate_content(model="echo", contents='{"city": "Oslo"}',
                                            config=config)
    assert echoed.parsed == Place(city="Oslo")
    answered = client.models.generate_content(model="gpt", contents="Where is it?",
                                              config=config)
    assert answered.parsed == Place(city="fake-openai: Where is it?")
    assert fake.script.requests[-1]["response_format"]["type"] == "json_schema"


def test_an_image_reaches_the_upstream_as_a_data_url(
    client: genai.Client, fake: OpenAIFake
) -> None:
    png = base64.b64decode(PIXEL)
    client.models.generate_content(model="gpt", contents=[
        "what is this?", types.Part.from_bytes(data=png, mime_type="image/png")])
    assert fake.script.requests[-1]["messages"][-1]["content"][1] == {
        "type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}


def test_failure_mid_stream_reaches_the_sdk_as_an_error(
    client: genai.Client, fake: OpenAIFake
) -> None:
    fake.script.actions.append(Action(cut_stream_after=3))  # after a first word has gone out
    with pytest.raises(errors.ServerError) as failed:
        for _chunk in client.models.generate_content_stream(model="gpt",
                                                            contents="one two three"):
            pass
    assert failed.value.code == 502


def _array_elements(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The elements of Google's streamed JSON array as they arrive: each starts on a line
    of its own after ``[`` or ``,`` (the framing Google's API writes)."""
    held = ""
    for line in lines:
        stripped = line.strip()
        if stripped in (",", "]"):
            continue
        held += stripped.removeprefix("[").removesuffix("]")
        try:
            element = json.loads(held)
        except ValueError:  # not yet whole
            continue
        held = ""
        yield element


def test_a_stream_without_alt_sse_is_a_json_array_sent_as_it_comes(
    server: Server, fake: OpenAIFake
) -> None:
    """REST clients (Google's curl examples) leave ``alt`` out and read a JSON array;
    its elements come as the upstream's words do, and a failure is its last element."""
    url = f"{server.base_url}/v1beta/models/gpt:streamGenerateContent"
    body = {"contents": [{"parts": [{"text": "one two three four"}]}]}
    headers = {"x-goog-api-key": DEV_KEY}
    fake.script.actions.append(Action(event_delay_s=0.3))
    with httpx.stream("POST", url, json=body, headers=headers, timeout=10) as response:
        assert response.headers["content-type"] == "application/json"
        arrived = [(time.monotonic(), element)
                   for element in _array_elements(response.iter_lines())]
    texts = [part["text"] for _, element in arrived
             for part in element["candidates"][0]["content"]["parts"]]
    assert "".join(texts) == "fake-openai: one two three four"
    assert arrived[-1][1]["candidates"][0]["finishReason"] == "STOP"
    assert arrived[-1][0] - arrived[0][0] > 0.6  # read one by one, not all at the end
    fake.script.actions.append(Action(cut_stream_after=3))
    with httpx.stream("POST", url, json=body, headers=headers, timeout=10) as response:
        raw = response.read()
    elements = json.loads(raw)  # still one valid array
    assert elements[0]["candidates"][0]["content"]["parts"][0]["text"]
    assert elements[-1]["error"]["code"] == 502
    assert elements[-1]["error"]["status"] == "UNAVAILABLE"


def test_a_gemini_upstream_gets_the_call_and_its_answer_back(
    client: genai.Client, gemini: GeminiFake
) -> None:
    """Gemini in, Gemini out: the conversation reaches it as the app wrote it, with the
    provider's key (never the gateway's), and the call's thoughtSignature, which Gemini 3
    wants back, comes back with it (kept in the call's id)."""
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[LOOKUP])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    question = types.Content(role="user", parts=[types.Part(text="find the moon")])
    first = client.models.generate_content(model="flash", contents=[question], config=config)
    (call,) = first.function_calls or []
    assert (call.name, call.args) == ("lookup", {"query": "find the moon"})
    assert first.candidates and first.candidates[0].content is not None
    result = types.Part.from_function_response(name="lookup", response={"result": "full"})
    answer = client.models.generate_content(model="flash", config=config, contents=[
        question, first.candidates[0].content, types.Content(role="user", parts=[result])])
    assert answer.text and "full" in answer.text
    assert gemini.script.headers[-1]["x-goog-api-key"] == gemini.api_key
    assert gemini.script.requests[-1]["contents"][1:] == [
        {"role": "model", "parts": [{"functionCall": {"name": "lookup",
                                                      "args": {"query": "find the moon"}},
                                     "thoughtSignature": "c2lnbmVkLWJ5LWZha2UtZ2VtaW5p"}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "lookup",
                                                         "response": {"result": "full"}}}]},
    ]
