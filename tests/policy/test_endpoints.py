"""The policy router: /route, /evaluate, /policies/reload and /models, admin keys only."""

from __future__ import annotations

import pytest

from .conftest import PERMIT_ALL, SHIPPED_ROUTING, Factory, chat

POLICIES = {"base.cedar": PERMIT_ALL, "routing.cedar": SHIPPED_ROUTING}


@pytest.mark.parametrize("method,path", [("POST", "/route"), ("POST", "/evaluate"),
                                         ("POST", "/policies/reload"), ("GET", "/models")])
async def test_admin_keys_only(policy_gateway: Factory, method: str, path: str) -> None:
    gw = await policy_gateway(POLICIES)
    response = await gw.client("alice").request(method, path, json={})
    assert response.status_code == 403
    assert response.json()["error"]["message"] == "key 'alice' is not an admin key"


async def test_route_answers_with_the_choice_alternatives_and_policies(
    policy_gateway: Factory,
) -> None:
    gw = await policy_gateway(POLICIES)
    gw.stats("local-a").latency_ms = 900.0
    answer = (await gw.client().post("/route", json={
        "model": "pair", "user": "carol", "team": "eng", "budget_remaining": 5,
        "latency_sla_ms": 300,
    })).json()
    assert answer["principal"] == 'User::"carol"'
    assert answer["allowed"] is True
    assert answer["deployment"] == "local-b"
    assert answer["alternatives"] == []
    assert answer["policies"] == ["any-deployment-may-serve", "prefer-self-hosted-on-low-budget"]
    (tier,) = answer["tiers"]
    assert tier["order"][0]["priority"] == 50
    assert tier["dropped"] == [{"deployment": "local-a",
                                "reason": "is forbidden by tight-sla-forbids-slow",
                                "policies": ["tight-sla-forbids-slow"]}]
    assert answer["context"]["budget_remaining"] == 5
    assert gw.stats("local-a").in_flight == 0  # nothing was called


async def test_route_with_nothing_permitted(policy_gateway: Factory) -> None:
    gw = await policy_gateway(POLICIES)
    gw.stats("local-a").latency_ms = 900.0
    answer = (await gw.client().post("/route", json={"model": "solo", "key": "alice",
                                                     "latency_sla_ms": 300})).json()
    assert answer["principal"] == 'ApiKey::"alice"'
    assert (answer["allowed"], answer["deployment"]) == (False, None)
    assert answer["policies"] == ["tight-sla-forbids-slow"]


ASK = """
input: {type: object}
steps:
  ask: {kind: llm, model: pair, prompt: "{{ input.prompt }}"}
output: "{{ steps.ask }}"
"""


async def test_route_names_a_deny_of_the_pipeline_a_route_runs(policy_gateway: Factory) -> None:
    """A chat to a pipeline route is checked on the route and on Pipeline::"ask"; /route
    checked the route only, and said allowed where the chat was a 403 (found by a
    review)."""
    no_ask = ('@id("alice-not-ask")\nforbid (principal in ApiKey::"alice", '
              'action == Action::"invoke", resource == Pipeline::"ask");\n')
    gw = await policy_gateway({**POLICIES, "ask.cedar": no_ask}, routes="  asker: {pipeline: ask}",
                              pipelines={"ask": ASK})
    refused = await gw.client("alice").post("/v1/chat/completions", json=chat("asker"))
    assert refused.status_code == 403, refused.text
    answer = (await gw.client().post("/route", json={"model": "asker", "key": "alice"})).json()
    assert answer["invoke"]["decision"] == "deny"
    assert (answer["allowed"], answer["policies"], answer["pipeline"]) == (
        False, ["alice-not-ask"], "ask")
    allowed = (await gw.client().post("/route", json={"model": "asker"})).json()
    assert (allowed["allowed"], allowed["policies"]) == (True, ["keys-may-invoke-routes"])


async def test_route_names_an_invoke_deny(policy_gateway: Factory) -> None:
    no_solo = '@id("no-solo")\nforbid (principal, action == Action::"invoke", ' \
              'resource == Route::"solo");\n'
    gw = await policy_gateway({**POLICIES, "solo.cedar": no_solo})
    answer = (await gw.client().post("/route", json={"model": "solo"})).json()
    assert answer["invoke"]["decision"] == "deny"
    assert (answer["allowed"], answer["policies"]) == (False, ["no-solo"])


async def test_route_rejects_bad_queries(policy_gateway: Factory) -> None:
    client = (await policy_gateway(POLICIES)).client()
    assert (await client.post("/route", json={"model": "nope"})).status_code == 404
    assert (await client.post("/route", json={"model": "pair", "key": "eve"})).status_code == 400
    unknown = await client.post("/route", json={"model": "pair", "latency": 3})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "latency"
    # JSON as parsed takes NaN, Infinity and 1e999 (inf): they were a 500 with a traceback.
    for number in ("NaN", "Infinity", "-Infinity", "1e999"):
        odd = await client.post("/route", content=f'{{"model": "pair", "budget_remaining": '
                                f'{number}}}', headers={"content-type": "application/json"})
        assert odd.status_code == 400, (number, odd.text)
        assert odd.json()["error"]["param"] == "budget_remaining"


async def test_evaluate_is_one_direct_decision(policy_gateway: Factory) -> None:
    gw = await policy_gateway(POLICIES)
    gw.stats("local-a").latency_ms = 900.0
    client = gw.client()
    denied = (await client.post("/evaluate", json={
        "principal": 'ApiKey::"alice"', "action": "route",
        "resource": 'Deployment::"local-a"', "context": {"latency_sla_ms": 300},
    })).json()
    assert (denied["decision"], denied["policies"]) == ("deny", ["tight-sla-forbids-slow"])
    assert denied["resource"] == 'Deployment::"local-a"'
    allowed = (await client.post("/evaluate", json={
        "principal": {"type": "User", "id": "carol"}, "team": "eng", "action": 'Action::"route"',
        "resource": 'Deployment::"local-b"', "context": {"budget_remaining": 2.5},
    })).json()
    assert allowed["decision"] == "allow"
    assert allowed["policies"] == ["any-deployment-may-serve", "prefer-self-hosted-on-low-budget"]
    assert allowed["priority"] == 50
    invoke = (await client.post("/evaluate", json={
        "principal": 'ApiKey::"dev"', "action": "invoke", "resource": 'Route::"pair"'})).json()
    assert (invoke["decision"], invoke["policies"]) == ("allow", ["keys-may-invoke-routes"])


@pytest.mark.parametrize("body,param", [
    ({"principal": "alice", "action": "route", "resource": 'Deployment::"local-a"'}, "principal"),
    ({"principal": 'Robot::"r"', "action": "route", "resource": 'Deployment::"a"'}, "principal"),
    ({"principal": 'ApiKey::"dev"', "action": "route", "resource": 'Deployment::"local-a"',
      "context": {"budget": 1}}, "context"),
    ({"principal": 'ApiKey::"dev"', "action": "route", "resource": 'Deployment::"local-a"',
      "context": {"latency_sla_ms": "fast"}}, "context.latency_sla_ms"),
    ('{"principal": "ApiKey::\\"dev\\"", "action": "route", '
     '"resource": "Deployment::\\"local-a\\"", "context": {"budget_remaining": NaN}}',
     "context.budget_remaining"),
    ('{"principal": "ApiKey::\\"dev\\"", "action": "route", '
     '"resource": "Deployment::\\"local-a\\"", "context": {"budget_remaining": 1e999}}',
     "context.budget_remaining"),
])
async def test_evaluate_rejects_bad_queries(policy_gateway: Factory,
                                            body: dict[str, object] | str, param: str) -> None:
    """A body as text is JSON with NaN or Infinity in it, which the JSON encoder cannot
    write; they were a 500 with a traceback."""
    client = (await policy_gateway(POLICIES)).client()
    response = await (client.post("/evaluate", json=body) if isinstance(body, dict) else
                      client.post("/evaluate", content=body,
                                  headers={"content-type": "application/json"}))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


async def test_policies_reload_swaps_in_new_policies(policy_gateway: Factory) -> None:
    gw = await policy_gateway(POLICIES)
    client = gw.client()
    (gw.root / "policies" / "extra.cedar").write_text(
        '@id("never-a")\nforbid (principal, action == Action::"route", '
        'resource == Deployment::"local-a");\n')
    report = await client.post("/policies/reload")
    assert report.status_code == 200
    assert "never-a" in report.json()["policies"]
    served = await client.post("/v1/chat/completions", json={
        "model": "pair", "messages": [{"role": "user", "content": "hi"}]})
    assert served.headers["x-aigw-deployment"] == "local-b"
    (gw.root / "policies" / "extra.cedar").write_text(
        '@id("broken")\nforbid (principal, action == Action::"route", resource)\n'
        'when { resource.latency > 1 };\n')
    failed = await client.post("/policies/reload")
    assert failed.status_code == 422
    assert [d["code"] for d in failed.json()["diagnostics"]] == ["AGW406"]
    assert "never-a" in [p.id for p in gw.gateway.live.graph.policies]  # the old graph serves


async def test_models_shows_the_live_values_policies_see(policy_gateway: Factory) -> None:
    gw = await policy_gateway(POLICIES)
    gw.stats("local-b").latency_ms = 123.4
    gw.stats("local-b").in_flight = 2
    models = (await gw.client().get("/models")).json()["deployments"]
    assert sorted(models) == ["local-a", "local-b", "vectors"]
    assert models["local-b"]["live"] == {
        "average_latency_ms": 123, "p95_latency_ms": 0, "current_error_rate": 0.0,
        "in_flight": 2, "queue_depth": 0, "queue_wait_ms": 0, "circuit_open": False}
    assert models["local-b"]["groups"] == ["pair", "backup"]
    assert models["local-b"]["provider_type"] == "echo"
