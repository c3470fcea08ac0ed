"""Every kind of step, run in-process through the gateway's echo provider (or a fake model)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from aigw.compiler.graph import Route
from aigw.runtime.chat_request import ChatRequest
from aigw.runtime.live import Gateway
from aigw.runtime.store.executions import Execution
from aigw.runtime.workflows.calls import MAX_STEP_ANSWER_BYTES, HttpxCaller
from aigw.runtime.workflows.engine import ModelAnswer, Spent

from ..fakes.cookie_setter import cookie_setter
from ..fakes.openai_fake import OpenAIFake
from ..fakes.serve import serving
from .conftest import ALICE_KEY, BOT_KEY, Serve


class FakeModels:
    """Answers by route name from a table (the prompt when the table has no entry)."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, route: Route, request: ChatRequest, spent: Spent) -> ModelAnswer:
        prompt = request.messages[-1].text()
        self.calls.append((route.name, prompt))
        return ModelAnswer(self.answers.get(route.name, prompt), route.name, 1, 1, 0.5)

    async def check_pipeline(self, pipeline: str) -> None:
        """Every pipeline may run (these tests have no policies)."""

    async def check_agent(self, agent: str) -> None:
        """Every agent may be called (these tests have no policies)."""

    async def check_caller(self) -> None:
        """The key is always accepted (these tests have no keys)."""


class _Factory:
    def __init__(self, models: FakeModels) -> None:
        self.models = models

    def __call__(self, gateway: Gateway, execution: Execution) -> FakeModels:
        return self.models


BRANCHES = """
input: {type: object, required: [n], properties: {n: {type: integer}}}
steps:
  double: {kind: transform, expression: "input.n * 2"}
  route:
    kind: branch
    needs: [double]
    cases:
      - {when: "steps.double > 10", then: [big]}
    default: [small]
  big: {kind: transform, expression: "'big'"}
  small: {kind: transform, expression: "'small'"}
  after_big: {kind: transform, needs: [big], expression: "steps.big + '!'"}
  join: {kind: transform, needs: [big, small], expression: "steps.big or steps.small"}
  never: {kind: transform, when: "input.n < 0", expression: "'negative'"}
output:
  double: "{{ steps.double }}"
  picked: "{{ steps.join }}"
  after_big: "{{ steps.after_big }}"
  never: "{{ steps.never }}"
"""


async def test_branch_skips_what_it_did_not_choose_and_what_only_needs_that(
    serve: Serve,
) -> None:
    served = await serve({"branches": BRANCHES})
    small = await served.run("branches", {"n": 3})
    assert small["status"] == "succeeded"
    assert small["output"] == {"double": 6, "picked": "small", "after_big": None, "never": None}
    steps = await served.steps(small["execution"])
    assert {name: state["status"] for name, state in steps.items()} == {
        "double": "succeeded", "route": "succeeded", "big": "skipped", "small": "succeeded",
        "after_big": "skipped", "join": "succeeded", "never": "skipped",
    }
    assert steps["big"]["detail"] == {"reason": "branch 'route' did not choose it"}
    assert steps["route"]["output"] == ["small"]
    big = await served.run("branches", {"n": 30})
    assert big["output"] == {"double": 60, "picked": "big", "after_big": "big!", "never": None}


JSON_ANSWERS = """
input: {type: object, required: [name]}
steps:
  parse:
    kind: llm
    model: fast
    output: json
    schema: {type: object, required: [name], properties: {name: {type: string}}}
    prompt: '{{ {"name": input.name} | json }}'
  broken:
    kind: llm
    model: fast
    when: "input.broken is defined"
    output: json
    validation_retries: 1
    prompt: "not json: {{ input.name }}"
output: "{{ steps.parse }}"
"""


async def test_llm_json_answer_is_parsed_checked_and_costed(serve: Serve) -> None:
    served = await serve({"extract": JSON_ANSWERS})
    result = await served.run("extract", {"name": "Ada"})
    assert result["output"] == {"name": "Ada"}
    # The echo deployment costs one unit per token, in and out.
    usage = result["usage"]
    assert usage["model_calls"] == 1
    assert result["cost"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


CAPPED_CALLS = """
input: {type: object}
steps:
  reason: {kind: llm, model: thinker, max_tokens: 40, prompt: "Think about {{ input.q }}"}
  plain: {kind: llm, model: compat, max_tokens: 30, prompt: "Say {{ input.q }}"}
output: "{{ steps.reason }}"
"""


async def test_an_llm_steps_cap_is_sent_as_each_upstream_reads_it(
    serve: Serve, openai_upstream: tuple[OpenAIFake, str]
) -> None:
    """OpenAI's reasoning models (o1, o3, gpt-5) refuse max_tokens: a step's cap reaches
    OpenAI's own API as max_completion_tokens, and a server that knows max_tokens only
    (an openai_compatible one) as max_tokens, as a client's cap does."""
    fake, base = openai_upstream
    served = await serve(
        {"capped": CAPPED_CALLS},
        providers=f"""
  oai: {{type: openai, base_url: "{base}/v1", api_key: "${{FAKE_OPENAI_KEY}}"}}
  local-compat: {{type: openai_compatible, base_url: "{base}/v1",
                 api_key: "${{FAKE_OPENAI_KEY}}"}}""",
        deployments="""
  o3: {provider: oai, model: o3-mini, context_window: 200000}
  llama: {provider: local-compat, model: llama-3.1-8b, context_window: 32000}""",
        extra_routes="""
  thinker: {deployment: o3}
  compat: {deployment: llama}""")
    result = await served.run("capped", {"q": "tides"})
    assert result["status"] == "succeeded", result
    sent = {body["model"]: body for body in fake.script.requests}
    assert sent["o3-mini"]["max_completion_tokens"] == 40, sent
    assert "max_tokens" not in sent["o3-mini"], sent
    assert sent["llama-3.1-8b"]["max_tokens"] == 30, sent
    assert "max_completion_tokens" not in sent["llama-3.1-8b"], sent


CACHED_CALL = """
input: {type: object}
steps:
  say: {kind: llm, model: remembered, prompt: "Say {{ input.word }}"}
output: "{{ steps.say }}"
"""


async def test_a_cached_model_answer_costs_an_execution_nothing(serve: Serve) -> None:
    served = await serve({"say": CACHED_CALL},
                         extra_routes="  remembered: {deployment: cheap, cache: {ttl_s: 60}}")
    first = await served.run("say", {"word": "hello"})
    again = await served.run("say", {"word": "hello"})
    assert again["output"] == first["output"] == "Say hello"
    assert first["cost"] > 0 and first["usage"]["prompt_tokens"] > 0
    # Answered from the route's cache: no tokens were spent, so none are counted.
    assert again["cost"] == 0
    assert (again["usage"]["prompt_tokens"], again["usage"]["completion_tokens"]) == (0, 0)


async def test_llm_json_answer_that_never_conforms_fails_after_asking_again(
    serve: Serve,
) -> None:
    served = await serve({"extract": JSON_ANSWERS})
    result = await served.run("extract", {"name": "Ada", "broken": True})
    assert result["status"] == "failed"
    assert "gave no valid JSON answer: it is not JSON" in result["error"]
    assert result["usage"]["model_calls"] == 3  # parse, then broken asked twice
    calls = [e for e in await served.events(result["execution"]) if e["type"] == "model_call"]
    assert [e["data"]["key"] for e in calls if e["step"] == "broken"] == [
        "broken@1#0", "broken@1#1"]


ENSEMBLE = """
input: {type: object}
steps:
  vote: {kind: ensemble, models: [fast, smart, tiered], prompt: "{{ input.q }}"}
  mean: {kind: ensemble, models: [fast, smart], combine: average, prompt: "{{ input.x }}"}
  every: {kind: ensemble, models: [fast, smart], combine: all, prompt: "{{ input.q }}"}
output: {vote: "{{ steps.vote }}", mean: "{{ steps.mean }}", every: "{{ steps.every }}"}
"""


async def test_ensemble_combines_answers(serve: Serve) -> None:
    served = await serve({"panel": ENSEMBLE})
    result = await served.run("panel", {"q": "yes", "x": "42"})
    assert result["output"] == {
        "vote": "yes", "mean": 42.0,
        "every": [{"model": "fast", "answer": "yes"}, {"model": "smart", "answer": "yes"}],
    }
    assert result["usage"]["model_calls"] == 7


async def test_majority_vote_ignores_case_and_a_final_period(serve: Serve) -> None:
    models = FakeModels({"fast": "No", "smart": "yes", "tiered": "Yes."})
    vote = ENSEMBLE.split("  mean:")[0] + 'output: "{{ steps.vote }}"\n'
    served = await serve({"panel": vote}, models=_Factory(models))
    result = await served.run("panel", {"q": "?"})
    assert result["output"] == "yes"


CASCADE = """
input: {type: object}
steps:
  answer:
    kind: cascade
    models: [fast, smart]
    prompt: "{{ input.q }}"
    check: "answer | length > 10"
output: "{{ steps.answer }}"
"""


async def test_cascade_escalates_when_the_check_fails(serve: Serve) -> None:
    models = FakeModels({"fast": "short", "smart": "a long and careful answer"})
    served = await serve({"cascade": CASCADE}, models=_Factory(models))
    result = await served.run("cascade", {"q": "why?"})
    assert result["output"] == "a long and careful answer"
    checks = [e["data"] for e in await served.events(result["execution"])
              if e["type"] == "cascade_check"]
    assert checks == [{"model": "fast", "tier": 0, "passed": False},
                      {"model": "smart", "tier": 1, "passed": True}]


async def test_cascade_stops_at_the_first_answer_that_passes(serve: Serve) -> None:
    served = await serve({"cascade": CASCADE})
    result = await served.run("cascade", {"q": "long enough already"})
    assert result["output"] == "long enough already"
    assert result["usage"]["model_calls"] == 1


MAP = """
input: {type: object, required: [items]}
steps:
  each:
    kind: map
    over: "input['items']"
    concurrency: 2
    step: {kind: llm, model: fast, prompt: "{{ item }}-{{ index }}"}
output: "{{ steps.each }}"
"""


async def test_map_runs_the_step_for_each_item_in_order(serve: Serve) -> None:
    served = await serve({"fanout": MAP})
    result = await served.run("fanout", {"items": ["a", "b", "c", "d", "e"]})
    assert result["output"] == ["a-0", "b-1", "c-2", "d-3", "e-4"]
    assert result["usage"]["model_calls"] == 5


LOOP = """
input: {type: object}
steps:
  planned:
    kind: loop
    max_iterations: 5
    planner:
      model: fast
      prompt: >-
        {% if iteration < 1 %}step{% elif iteration < 2 %}I choose: step.{% else %}`done`{% endif %}
    actions:
      step: {kind: transform, expression: "iteration * 10"}
  capped:
    kind: loop
    max_iterations: 3
    planner: {expression: "'again'"}
    actions:
      again: {kind: transform, expression: "(last or 0) + 1"}
output: {planned: "{{ steps.planned }}", capped: "{{ steps.capped }}"}
"""


async def test_loop_runs_what_the_planner_chooses_until_done_or_the_cap(serve: Serve) -> None:
    served = await serve({"loops": LOOP})
    result = await served.run("loops", {})
    planned, capped = result["output"]["planned"], result["output"]["capped"]
    assert planned["done"] is True and planned["iterations"] == 2
    assert planned["history"] == [{"action": "step", "output": 0},
                                  {"action": "step", "output": 10}]
    assert capped == {"done": False, "iterations": 3, "last": 3, "outputs": {"again": 3},
                      "history": [{"action": "again", "output": n} for n in (1, 2, 3)]}


UNDECIDED = """
input: {type: object}
steps:
  planned:
    kind: loop
    max_iterations: 5
    planner: {model: fast, prompt: "Not done yet. Next: step"}
    actions:
      step: {kind: transform, expression: "iteration"}
output: "{{ steps.planned }}"
"""


async def test_a_planner_answer_that_names_two_actions_chooses_neither(serve: Serve) -> None:
    served = await serve({"undecided": UNDECIDED})
    result = await served.run("undecided", {})
    assert result["status"] == "failed"
    assert "the planner chose 'Not done yet. Next: step'" in result["error"]


SUB = """
input: {type: object}
steps:
  call: {kind: pipeline, pipeline: inner, input: {text: "{{ input.text }}", n: 2}}
output: "{{ steps.call }}"
"""
INNER = """
input: {type: object, required: [text, n], properties: {n: {type: integer}}}
steps:
  shout: {kind: transform, expression: "input.text | upper"}
  twice: {kind: llm, model: fast, needs: [shout], prompt: "{{ (steps.shout + ' ') * input.n }}"}
output: {text: "{{ steps.twice | trim }}"}
"""


async def test_pipeline_step_runs_another_pipeline(serve: Serve) -> None:
    served = await serve({"outer": SUB, "inner": INNER})
    result = await served.run("outer", {"text": "hi"})
    assert result["output"] == {"text": "HI HI"}
    steps = await served.steps(result["execution"])
    assert set(steps) == {"call", "call/shout", "call/twice"}


PYTHON = """
input: {type: object}
steps:
  sum: {kind: python, function: "tests.pipelines.steps:add", args: {a: "{{ input.a }}", b: 2}}
  flaky:
    kind: python
    function: "tests.pipelines.steps:flaky"
    args: {marker: "{{ input.marker }}", failures: 2}
    retries: 2
    backoff_ms: 10
output: {sum: "{{ steps.sum }}", flaky: "{{ steps.flaky }}"}
"""


async def test_python_step_with_retries(serve: Serve, tmp_path: Path) -> None:
    served = await serve({"py": PYTHON})
    result = await served.run("py", {"a": 3, "marker": str(tmp_path / "marker")})
    assert result["output"] == {"sum": 5, "flaky": "ok after 2 failures"}
    steps = await served.steps(result["execution"])
    assert steps["flaky"]["attempts"] == 3
    retries = [e for e in await served.events(result["execution"]) if e["type"] == "step_retry"]
    assert [e["data"]["error"] for e in retries] == [
        "tests.pipelines.steps:flaky raised RuntimeError: failure 1 of 2",
        "tests.pipelines.steps:flaky raised RuntimeError: failure 2 of 2",
    ]


async def test_python_step_out_of_retries_fails_the_execution(
    serve: Serve, tmp_path: Path
) -> None:
    served = await serve({"py": PYTHON.replace("failures: 2", "failures: 5")})
    result = await served.run("py", {"a": 3, "marker": str(tmp_path / "marker")})
    assert result["status"] == "failed"
    assert result["error"] == ("step 'flaky' failed: tests.pipelines.steps:flaky raised "
                               "RuntimeError: failure 3 of 5")


TIMEOUT = """
input: {type: object}
steps:
  slow: {kind: python, function: "asyncio:sleep", args: {delay: 5}, timeout_s: 0.05}
output: "{{ steps.slow }}"
"""


async def test_a_step_past_its_timeout_fails(serve: Serve) -> None:
    served = await serve({"slow": TIMEOUT})
    result = await served.run("slow", {})
    assert result["status"] == "failed"
    assert result["error"] == "step 'slow' failed: timed out after 0.05s"


OUTPUT_SCHEMA = """
input: {type: object}
steps:
  count:
    kind: transform
    expression: "input.n"
    retries: 1
    backoff_ms: 1
    output_schema: {type: integer, minimum: 10}
output: "{{ steps.count }}"
output_schema: {type: integer}
"""


async def test_output_schemas_are_enforced(serve: Serve) -> None:
    served = await serve({"checked": OUTPUT_SCHEMA})
    assert (await served.run("checked", {"n": 12}))["output"] == 12
    result = await served.run("checked", {"n": 3})
    assert result["error"] == ("step 'count' failed: output does not match output_schema: "
                               "(root): 3 is less than the minimum of 10")
    steps = await served.steps(result["execution"])
    assert steps["count"]["attempts"] == 2


HTTP = """
input: {type: object}
steps:
  lookup:
    kind: http
    method: POST
    url: "http://tools.test/lookup/{{ input.id }}"
    headers: {x-trace: "t-{{ input.id }}"}
    body: {id: "{{ input.id }}", tags: "{{ input.tags }}", note: "id {{ input.id }}"}
    retries: 1
    backoff_ms: 1
output: "{{ steps.lookup }}"
"""


async def test_http_step_sends_a_templated_body_and_parses_json(serve: Serve) -> None:
    seen: list[httpx.Request] = []
    statuses = iter([503, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = next(statuses)
        return httpx.Response(status, json={"found": status == 200, "body": json.loads(
            request.content)})

    caller = HttpxCaller(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    served = await serve({"tool": HTTP}, http=caller)
    result = await served.run("tool", {"id": 7, "tags": ["a", "b"]})
    body = {"id": 7, "tags": ["a", "b"], "note": "id 7"}
    assert result["output"] == {"found": True, "body": body}
    assert [str(r.url) for r in seen] == ["http://tools.test/lookup/7"] * 2
    assert seen[0].headers["x-trace"] == "t-7"


async def test_http_client_errors_are_not_retried(serve: Serve) -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(404, text="no such id")

    caller = HttpxCaller(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    served = await serve({"tool": HTTP}, http=caller)
    result = await served.run("tool", {"id": 7, "tags": []})
    assert result["error"] == ("step 'lookup' failed: POST http://tools.test/lookup/7 answered "
                               "404: no such id")
    assert len(calls) == 1


ANY_TOOL = """
input: {type: object}
steps:
  fetch:
    kind: http
    method: GET
    url: "{{ input.url }}"
    allow_hosts: ["http://tools.test", secure.test]
    retries: 2
    backoff_ms: 1
output: "{{ steps.fetch }}"
"""


async def test_a_templated_url_reaches_only_the_hosts_the_step_allows(serve: Serve) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"ok": True})

    caller = HttpxCaller(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    served = await serve({"tool": ANY_TOOL}, http=caller)
    for url in ("http://tools.test/ok", "https://secure.test/ok"):
        assert (await served.run("tool", {"url": url}))["output"] == {"ok": True}
    not_listed = "is not on an origin the step's allow_hosts lists"
    for url, why in (
        ("http://169.254.169.254/latest/meta-data/", not_listed),
        ("http://tools.test:6379/", not_listed),  # another port of an allowed host
        ("http://secure.test/ok", not_listed),  # https only, unless the entry says http
        ("http://tools.test@evil.test/", "carries user info before its host"),
        ("file:///etc/passwd", "is not an http(s) URL with a host"),
    ):
        result = await served.run("tool", {"url": url})
        assert result["error"] == f"step 'fetch' failed: GET refused: '{url}' {why}"
        assert (await served.steps(result["execution"]))["fetch"]["attempts"] == 1  # no retry
    assert seen == ["http://tools.test/ok", "https://secure.test/ok"]  # nothing refused was sent


async def test_a_redirect_is_not_followed(serve: Serve) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"location": "http://169.254.169.254/"})

    caller = HttpxCaller(httpx.AsyncClient(transport=httpx.MockTransport(handler),
                                           follow_redirects=True))
    served = await serve({"tool": ANY_TOOL}, http=caller)
    result = await served.run("tool", {"url": "http://tools.test/moved"})
    assert result["error"] == (
        "step 'fetch' failed: GET http://tools.test/moved answered 302 (redirects are not "
        "followed; point the step at the final URL)")
    assert seen == ["http://tools.test/moved"]


async def test_an_http_answer_over_the_bound_fails_the_step_without_retries(
    serve: Serve,
) -> None:
    """An answer becomes the step's output, kept in the execution's checkpoint: one past
    MAX_STEP_ANSWER_BYTES fails the step rather than fill the worker and the store."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/huge":
            return httpx.Response(200, content=b"x" * (MAX_STEP_ANSWER_BYTES + 1))
        return httpx.Response(200, content="d\xe9j\xe0 vu".encode("latin-1"),
                              headers={"content-type": "text/plain; charset=latin-1"})

    served = await serve({"tool": ANY_TOOL}, http=HttpxCaller(
        httpx.AsyncClient(transport=httpx.MockTransport(handler))))
    result = await served.run("tool", {"url": "http://tools.test/huge"})
    assert result["error"] == (
        "step 'fetch' failed: GET http://tools.test/huge answered more than 16 MiB")
    assert (await served.steps(result["execution"]))["fetch"]["attempts"] == 1
    text = await served.run("tool", {"url": "http://tools.test/text"})
    assert text["output"] == "d\xe9j\xe0 vu"  # decoded by its charset, as before
    assert seen == ["/huge", "/text"]


async def test_template_errors_at_run_time_fail_without_retries(serve: Serve) -> None:
    pipeline = """
input: {type: object}
steps:
  pick: {kind: transform, expression: "input.missing.deeper", retries: 3}
output: "{{ steps.pick }}"
"""
    served = await serve({"strict": pipeline})
    result = await served.run("strict", {})
    assert result["status"] == "failed"
    assert result["error"].startswith("step 'pick' failed: template error: ")
    assert "'dict object' has no attribute 'missing'" in result["error"]


async def test_a_tool_servers_cookies_are_not_kept_for_other_runs(serve: Serve) -> None:
    """The http steps' client is shared by every key, execution and pipeline: a cookie
    one run's tool call was given (a session) went with every later call to that host,
    another team's included."""
    with serving(cookie_setter()) as tool:
        served = await serve({"tool": f"""
input: {{type: object}}
steps:
  call: {{kind: http, method: GET, url: "{tool}/login?tenant={{{{ input.tenant }}}}"}}
output: "{{{{ steps.call }}}}"
"""})
        first = await served.run("tool", {"tenant": "alice-session"}, key=ALICE_KEY)
        second = await served.run("tool", {"tenant": "bot-session"}, key=BOT_KEY)
    assert (first["output"], second["output"]) == ({"cookie": None}, {"cookie": None})


async def test_a_header_that_is_not_ascii_fails_the_step_naming_it(serve: Serve) -> None:
    """HTTP header values are ASCII: a templated one that is not failed the step as an
    "internal error: UnicodeEncodeError", naming neither the header nor the cause."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    caller = HttpxCaller(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    served = await serve({"tool": HTTP}, http=caller)
    result = await served.run("tool", {"id": "Zoë", "tags": []})
    assert result["error"] == (
        "step 'lookup' failed: POST http://tools.test/lookup/Zoë: header 'x-trace' is not "
        "ASCII text; encode it in the template (e.g. with urlencode)")  # its value unsaid
    assert (await served.steps(result["execution"]))["lookup"]["attempts"] == 1  # no retry
    assert seen == []
