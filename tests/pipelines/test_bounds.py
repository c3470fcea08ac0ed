"""What a caller's input can make a pipeline do is bounded: the values its templates
make, the items a map runs, and how often a key may start runs."""

from __future__ import annotations

import asyncio

import pytest
from jinja2.exceptions import SecurityError

from aigw.compiler.templates import compile_expr, new_environment
from aigw.runtime.store import Reservation, Store

from .conftest import ALICE_KEY, Serve

GROW = """
input: {type: object}
steps:
  grown: {kind: transform, expression: "EXPRESSION"}
output: "{{ steps.grown | length }}"
"""


@pytest.mark.parametrize("expression, given", [
    ("'-' * input.n", {"n": 10**9}),
    ("3 ** input.n", {"n": 10**8}),
    ("'x'.ljust(input.n)", {"n": 10**9}),
    ("'x' | center(input.n)", {"n": 10**9}),
    ("('%' ~ input.n ~ 's') % 'x'", {"n": 10**9}),
    ("input.s | replace('a', input.s)", {"s": "a" * 100_000}),
    ("(range(100000) | list) * input.n", {"n": 100}),
])
async def test_a_template_cannot_be_made_to_build_a_huge_value(
    serve: Serve, expression: str, given: dict[str, object]
) -> None:
    served = await serve({"grow": GROW.replace("EXPRESSION", expression.replace('"', '\\"'))})
    result = await served.run("grow", given)
    assert result["status"] == "failed", result
    assert "over the template limit" in result["error"] or \
        "too large for a template" in result["error"], result["error"]


async def test_small_values_are_made_as_before(serve: Serve) -> None:
    served = await serve({"grow": GROW.replace("EXPRESSION", "'-' * input.n")})
    assert (await served.run("grow", {"n": 80}))["output"] == 80


async def test_nested_loops_over_range_stop_at_the_templates_allowance(serve: Serve) -> None:
    looping = """
input: {type: object}
steps:
  spun: {kind: transform, expression: "1"}
  said:
    kind: llm
    model: fast
    prompt: "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"
output: "{{ steps.said }}"
"""
    served = await serve({"spin": looping})
    result = await served.run("spin", {})
    # The rounds stop it now (1,000,000), before range() has handed out its 10,000,000.
    assert result["status"] == "failed" and "loops went round" in result["error"]


def test_a_recursive_loops_inner_rounds_count_too() -> None:
    """Only the iterable in the for tag was counted: ``loop(items)`` recursed through
    uncounted ones, and 36,000,000 rounds ran for 87 s (found by a review)."""
    from aigw.compiler.templates import compile_text

    text, _ = compile_text(new_environment(), (
        "{% for a in top recursive %}{% if loop.depth < 4 %}{{ loop(xs) }}{% endif %}"
        "{% endfor %}"))
    assert text.render({"top": [1, 2], "xs": [1, 2]}) == ""
    with pytest.raises(SecurityError, match=r"loops went round more than|ran for more than"):
        text.render({"top": [1] * 1000, "xs": [1] * 1000})


def test_range_calls_outside_loops_add_up_too() -> None:
    summed = " + ".join(["(range(100000) | length)"] * 101)
    expression, _ = compile_expr(new_environment(), summed)
    with pytest.raises(SecurityError, match="range\\(\\) handed out more than"):
        expression.evaluate({})
    assert compile_expr(new_environment(), "range(100000) | length")[0].evaluate({}) == 100_000


async def test_nested_loops_over_a_callers_list_stop_at_the_templates_allowance(
    serve: Serve,
) -> None:
    """A join-like template over a caller's lists made 10**10 rounds out of 100,000
    items each and kept the event loop (every request of the worker) for hours: it
    wrote nothing, so the bound on what it writes did not stop it."""
    joining = """
input: {type: object}
steps:
  said:
    kind: llm
    model: fast
    prompt: >-
      {% for a in input.xs %}{% for b in input.ys if a == b %}{{ a }}{% endfor %}{% endfor %}.
output: "{{ steps.said }}"
"""
    served = await serve({"join": joining})
    result = await served.run("join", {"xs": [1] * 100_000, "ys": [2] * 100_000})
    assert result["status"] == "failed", result
    assert "loops went round more than 1,000,000 times" in result["error"]
    small = await served.run("join", {"xs": [1, 2, 3], "ys": [3, 2]})
    assert small["status"] == "succeeded", small


def test_a_slow_round_is_stopped_by_the_renderings_deadline() -> None:
    """Few rounds, each sorting a long list: the count alone would let it run on."""
    from aigw.compiler.templates import MAX_RENDER_S, compile_text

    text, _ = compile_text(new_environment(),
                           "{% for a in xs %}{{ xs | sort | first }}{% endfor %}")
    assert text.render({"xs": [3, 1, 2]}) == "111"
    with pytest.raises(SecurityError, match=f"ran for more than {MAX_RENDER_S:g} s"):
        text.render({"xs": list(range(300_000, 0, -1))})


def test_a_huge_constant_is_not_computed_when_the_pipeline_compiles() -> None:
    # jinja2 folds constant expressions as it compiles: a large enough power stalled a
    # reload for as long as it took. Bounded, it is left for run time, and refused there.
    expression, _ = compile_expr(new_environment(), "(3 ** 200000) > 1")
    with pytest.raises(SecurityError, match="too large for a template"):
        expression.evaluate({})


MAPPED = """
input: {type: object}
steps:
  each:
    kind: map
    over: "input.numbers"
    max_items: 5
    concurrency: 2
    step: {kind: transform, expression: "item * 2"}
output: "{{ steps.each }}"
"""


async def test_a_map_runs_at_most_its_max_items(serve: Serve) -> None:
    served = await serve({"mapped": MAPPED})
    ran = await served.run("mapped", {"numbers": [1, 2, 3, 4, 5]})
    assert ran["output"] == [2, 4, 6, 8, 10], ran
    refused = await served.run("mapped", {"numbers": list(range(6))})
    assert refused["status"] == "failed" and "at most 5 (max_items)" in refused["error"]


async def test_starting_a_run_counts_against_the_keys_requests_a_minute(serve: Serve) -> None:
    served = await serve({"mapped": MAPPED}, eng="{limits: {rpm: 2}}")
    alice = {"authorization": f"Bearer {ALICE_KEY}"}
    answers = [await served.http.post("/api/v1/executions", headers=alice, json={
        "pipeline": "mapped", "input": {"numbers": [1]}}) for _ in range(3)]
    assert [answer.status_code for answer in answers] == [201, 201, 429]
    assert answers[2].json()["error"]["code"] == "rate_limit_exceeded"
    direct = await served.http.post("/v1/pipelines/mapped", headers=alice,
                                    json={"numbers": [1]})
    assert direct.status_code == 429


class _SlowRelease:
    """The gateway's store, whose releases wait for ``go`` (a slow Redis round trip)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.releasing = asyncio.Event()
        self.go = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def release(self, reservation: Reservation) -> None:
        self.releasing.set()
        await self.go.wait()
        await self.store.release(reservation)


async def test_a_run_start_cancelled_while_it_gives_its_place_back_frees_it(
    serve: Serve,
) -> None:
    """Starting a run takes a place under the key's max_parallel, as a request does, and
    gives it back at once. Given back unshielded, a start whose task was cancelled
    meanwhile (its client gone) left the place held until the hold expired (10 minutes),
    refusing the team's every request (this failed before)."""
    served = await serve({"mapped": MAPPED}, eng="{limits: {max_parallel: 1}}")
    slow = _SlowRelease(await served.gateway.store.get())
    served.gateway.store._store = slow  # type: ignore[assignment]  # the store it opened, slowed
    alice = {"authorization": f"Bearer {ALICE_KEY}"}
    start = {"pipeline": "mapped", "input": {"numbers": [1]}}
    call = asyncio.create_task(served.http.post("/api/v1/executions", headers=alice,
                                                json=start))
    await asyncio.wait_for(slow.releasing.wait(), 5)
    call.cancel()
    slow.go.set()
    with pytest.raises(asyncio.CancelledError):
        await call
    answer = await served.http.post("/api/v1/executions", headers=alice, json=start)
    assert answer.status_code == 201, answer.text
