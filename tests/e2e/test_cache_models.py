"""Which deployments of a route share its cached answers, through a real ``aigw serve``:
those of one model id, or any where the config says the route is one model
(``one_model: true``); otherwise a caller routed to one model is never served another's
answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..fakes.brain import Action
from ..fakes.openai_fake import OpenAIFake
from .server import Server, running
from .test_response_cache import _ask, _client, _gateway

pytestmark = pytest.mark.e2e


@pytest.fixture
def gateway(tmp_path: Path, openai_upstream: tuple[OpenAIFake, str]) -> Iterator[Server]:
    with running(_pairs(tmp_path / "gw", openai_upstream[1])) as server:
        yield server


def _pairs(root: Path, upstream: str) -> Path:
    """Groups of two deployments on two providers (one fake behind both), the first
    member preferred (priority) and not retried: ``pair`` of two models, ``twins`` of
    one model id."""
    root = _gateway(root, upstream)
    config = root / "gateway.yaml"
    other = (f'  other: {{type: openai, base_url: "{upstream}/v1", '
             'api_key: "${FAKE_OPENAI_KEY}"}\n')
    config.write_text(config.read_text().replace("deployments:\n", other + """deployments:
  big: {provider: other, model: gpt-4o, context_window: 128000}
  twin: {provider: other, model: gpt-4o-mini, context_window: 128000}
""", 1).replace("routes:\n", """groups:
  pair: {strategy: priority, members: [gpt, big], retry: {attempts: 0}}
  twins: {strategy: priority, members: [gpt, twin], retry: {attempts: 0}}
routes:
  mixed: {group: pair, cache: {scope: shared}}
  alike: {group: pair, cache: {scope: shared, one_model: true}}
  same: {group: twins, cache: {scope: shared}}
""", 1))
    return root


def _served(server: Server, route: str, text: str) -> tuple[str, str]:
    headers = _ask(_client(server), text, model=route)[1]
    return headers["x-aigw-cache"], headers["x-aigw-deployment"]


def test_a_caller_routed_to_one_model_is_not_served_anothers_answer(
    gateway: Server, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    """gpt failed once, and big (another model) answered: that answer was served for the
    whole TTL to every caller routed to gpt again."""
    upstream = openai_upstream[0]
    upstream.script.actions = [Action(status=503)]
    assert _served(gateway, "mixed", "which model") == ("miss", "big")
    assert _served(gateway, "mixed", "which model") == ("miss", "gpt")
    assert _served(gateway, "mixed", "which model") == ("hit", "gpt")
    assert len(upstream.script.requests) == 3


@pytest.mark.parametrize("route", ["alike", "same"])
def test_one_model_shares_its_answers_across_providers(
    gateway: Server, openai_upstream: tuple[OpenAIFake, str], route: str,
) -> None:
    """Deployments of one model id, or a route the config says is one model."""
    upstream = openai_upstream[0]
    upstream.script.actions = [Action(status=503)]
    first = _served(gateway, route, "which model")
    assert first[0] == "miss" and first[1] != "gpt"
    assert _served(gateway, route, "which model") == ("hit", first[1])
    assert len(upstream.script.requests) == 2


def test_the_model_looked_up_is_the_one_route_policies_on_the_budget_choose(
    tmp_path: Path, openai_upstream: tuple[OpenAIFake, str],
) -> None:
    """A route policy that reads the budget left sends this team to big: the lookup
    asked gpt's answers (as if no budget applied) and was a miss every time."""
    root = _pairs(tmp_path / "gw", openai_upstream[1])
    config = root / "gateway.yaml"
    config.write_text(config.read_text().replace(
        "  eng: {}\n", "  eng: {budget: {amount: 200000, period: total}}\n"))
    (root / "policies").mkdir()
    (root / "policies" / "gateway.cedar").write_text(
        '@id("invoke") permit (principal, action == Action::"invoke", resource);\n'
        '@id("route") permit (principal, action == Action::"route", resource);\n'
        '@id("gpt-for-the-rich") forbid (principal, action == Action::"route", '
        'resource == Deployment::"gpt") '
        'when { context.budget_remaining.lessThan(decimal("1000000.0")) };\n')
    server = Server(root)
    try:
        server.wait_ready()
        assert _served(server, "mixed", "on a budget") == ("miss", "big")
        assert _served(server, "mixed", "on a budget") == ("hit", "big")
        assert len(openai_upstream[0].script.requests) == 1
    finally:
        server.stop()
