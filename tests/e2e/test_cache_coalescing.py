"""Single flight for the response cache, through a real ``aigw serve`` in front of a slow
OpenAI fake that counts its calls: identical requests that miss at once make one
upstream call, the others served its answer as hits; a leader that keeps nothing sends
each waiter upstream itself; a waiter waits at most half of what is left of its deadline."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ..fakes.brain import Action
from ..fakes.openai_fake import OpenAIFake
from .server import Server, running
from .test_response_cache import _access_lines, _ask, _client, _gateway, _lookups, _streamed

pytestmark = pytest.mark.e2e

CALLERS = 6
SLOW_S = 1.5


@pytest.fixture
def gateway(tmp_path: Path, openai_upstream: tuple[OpenAIFake, str]) -> Iterator[Server]:
    with running(_gateway(tmp_path / "gw", openai_upstream[1])) as server:
        yield server


def _at_once(count: int, call: Callable[[int], Any]) -> list[Any]:
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(call, range(count)))


def _first_in_flight(upstream: OpenAIFake, calls: int = 1) -> None:
    """Wait until the upstream has ``calls`` requests (the leader's is in flight)."""
    deadline = time.monotonic() + 10
    while len(upstream.script.requests) < calls and time.monotonic() < deadline:
        time.sleep(0.01)


def test_identical_misses_at_once_make_one_upstream_call(
    gateway: Server, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    upstream = openai_upstream[0]
    upstream.script.actions = [Action(delay_s=SLOW_S)]
    client = _client(gateway)

    answers = _at_once(CALLERS, lambda _: _ask(client, "asked by everyone at once"))

    assert len(upstream.script.requests) == 1
    assert {text for text, _, _ in answers} == {"fake-openai: asked by everyone at once"}
    assert sorted(headers["x-aigw-cache"] for _, headers, _ in answers) == (
        ["hit"] * (CALLERS - 1) + ["miss"])
    assert _lookups(gateway) == {("cached", "miss"): 1.0, ("cached", "hit"): CALLERS - 1.0}
    lines = [line for line in _access_lines(gateway) if line["route"] == "cached"]
    assert sorted(line["cache"] for line in lines) == ["hit"] * (CALLERS - 1) + ["miss"]
    assert sum(1 for line in lines if line["cost"] > 0) == 1  # only the call is billed


def test_identical_streams_at_once_make_one_upstream_call(
    gateway: Server, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    upstream = openai_upstream[0]
    upstream.script.actions = [Action(delay_s=SLOW_S)]
    client = _client(gateway)

    answers = _at_once(CALLERS, lambda _: _streamed(client, "streamed to everyone at once"))

    assert len(upstream.script.requests) == 1
    assert {text for text, _, _ in answers} == {"fake-openai: streamed to everyone at once"}
    assert sorted(headers["x-aigw-cache"] for _, headers, _ in answers) == (
        ["hit"] * (CALLERS - 1) + ["miss"])


def test_other_requests_are_not_held_by_a_flight(
    gateway: Server, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    """Another request, or the same one on a route without a cache or bypassing it, goes
    upstream at once."""
    upstream = openai_upstream[0]
    upstream.script.actions = [Action(delay_s=SLOW_S)]
    client = _client(gateway)
    with ThreadPoolExecutor(1) as pool:
        leader = pool.submit(_ask, client, "slow one")
        _first_in_flight(upstream)
        started = time.monotonic()
        assert _ask(client, "another one")[1]["x-aigw-cache"] == "miss"
        assert _ask(client, "slow one", model="plain")[0] == "fake-openai: slow one"
        fresh = _client(gateway, **{"Cache-Control": "no-cache"})
        assert _ask(fresh, "slow one")[1]["x-aigw-cache"] == "bypass"
        assert time.monotonic() - started < SLOW_S
        assert leader.result()[1]["x-aigw-cache"] == "miss"
    assert len(upstream.script.requests) == 4


def test_waiters_go_upstream_themselves_when_the_leader_fails(
    gateway: Server, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    """The leader's error may be its own (its budget, its policies): not handed on."""
    upstream = openai_upstream[0]
    upstream.script.actions = [Action(delay_s=SLOW_S, status=400)]
    client = _client(gateway)
    with ThreadPoolExecutor(CALLERS) as pool:
        leader = pool.submit(_ask, client, "fails first")
        _first_in_flight(upstream)
        waiters = [pool.submit(_ask, client, "fails first") for _ in range(CALLERS - 1)]
        with pytest.raises(Exception, match="400"):
            leader.result()
        answers = [waiter.result() for waiter in waiters]
    assert {text for text, _, _ in answers} == {"fake-openai: fails first"}
    assert len(upstream.script.requests) == CALLERS  # the leader's, then one each


def test_a_waiter_waits_at_most_half_its_deadline(
    gateway: Server, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    upstream = openai_upstream[0]
    upstream.script.actions = [Action(delay_s=4.0)]
    client = _client(gateway)
    with ThreadPoolExecutor(1) as pool:
        leader = pool.submit(_ask, client, "a long wait")
        _first_in_flight(upstream)
        started = time.monotonic()
        text, headers, _ = _ask(_client(gateway, **{"x-aigw-deadline-ms": "2000"}),
                                "a long wait")
        waited = time.monotonic() - started
        assert (text, headers["x-aigw-cache"]) == ("fake-openai: a long wait", "miss")
        assert 0.9 <= waited < 2.0, waited  # waited about 1 s, then answered itself
        leader.result()
    assert len(upstream.script.requests) == 2
