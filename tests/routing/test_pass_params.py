"""A deployment's ``pass_params``: which parameters beyond those the gateway reads may
reach it. Unlisted ones are refused before any call (a 400 naming the parameter), and a
group's member that takes them serves instead."""

from __future__ import annotations

from aigw.compiler.spec import READ_CHAT_PARAMS
from aigw.runtime.chat_request import ChatRequest

from ..providers.conftest import GatewayFactory
from .conftest import Fleet

CHAT = "/v1/chat/completions"


def _config(fleet: Fleet) -> str:
    return f"""
{fleet.providers_yaml()}
deployments:
  a: {{provider: p-a, model: strict, context_window: 1000, pass_params: [logprobs]}}
  b: {{provider: p-b, model: open, context_window: 1000}}
groups:
  g: {{members: [a, b]}}
routes:
  strict: {{deployment: a}}
  grouped: {{group: g}}
"""


def _ask(model: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_an_unlisted_parameter_is_refused_naming_it_and_nothing_is_called(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet))
    response = await client.post(CHAT, json=_ask("strict", service_tier="priority",
                                                 store=True))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "service_tier"
    assert "not configured to take service_tier, store" in error["message"]
    assert fleet.calls() == []


async def test_a_listed_parameter_and_the_fields_the_gateway_reads_go_upstream(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    client = await make_gateway(_config(fleet))
    response = await client.post(CHAT, json=_ask("strict", logprobs=True, temperature=0.5,
                                                 stream=False))
    assert response.status_code == 200, response.text
    sent = fleet.fakes["a"].script.requests[-1]
    assert (sent["logprobs"], sent["temperature"]) == (True, 0.5)


async def test_a_group_member_that_takes_the_parameter_serves_it(
    fleet: Fleet, make_gateway: GatewayFactory
) -> None:
    """The refusal made no call: it is not an attempt, and b serves as the only one."""
    client = await make_gateway(_config(fleet))
    response = await client.post(CHAT, json=_ask("grouped", service_tier="flex"))
    assert response.status_code == 200, response.text
    assert fleet.calls() == ["b"]
    assert response.headers["x-aigw-attempts"] == "1"
    assert fleet.fakes["b"].script.requests[-1]["service_tier"] == "flex"


def test_the_compilers_list_of_read_fields_is_the_requests_fields() -> None:
    """pass_params may not list a field the gateway reads (the compiler's check uses
    READ_CHAT_PARAMS): the list must be ChatRequest's fields, no more and no fewer."""
    assert set(ChatRequest.model_fields) == READ_CHAT_PARAMS
