"""Cedar on the request path: invoke before routing, route policies over each tier's candidates."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.datastructures import Headers

from aigw.runtime.app import create_app
from aigw.runtime.errors import Forbidden
from aigw.runtime.live import Gateway
from aigw.runtime.policy_request import authorize_pipeline
from aigw.runtime.routing.breaker import Permit
from aigw.runtime.tokens import TokenCounter

from .conftest import PERMIT_ALL, SHIPPED_ROUTING, Factory, chat

FORBID_ENG_SOLO = """
@id("eng-not-on-solo")
forbid (principal in Team::"eng", action == Action::"invoke", resource == Route::"solo");
"""


async def test_an_invoke_deny_is_a_403_naming_the_deciding_policy(policy_gateway: Factory) -> None:
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "teams.cedar": FORBID_ENG_SOLO})
    denied = await gw.client("alice").post("/v1/chat/completions", json=chat("solo"))
    assert denied.status_code == 403
    error = denied.json()["error"]
    assert error["code"] == "permission_denied"
    assert error["message"] == ("Policy does not allow key 'alice' to call 'solo': "
                                "denied by eng-not-on-solo.")
    assert denied.headers["x-aigw-policy-ids"] == "eng-not-on-solo"
    assert (await gw.client("alice").post("/v1/chat/completions", json=chat("pair"))).is_success
    assert (await gw.client("ops").post("/v1/chat/completions", json=chat("solo"))).is_success


async def test_no_permit_is_a_deny_that_says_so(policy_gateway: Factory) -> None:
    only_ops = """
    @id("ops-may-invoke")
    permit (principal in Team::"ops", action == Action::"invoke", resource);

    @id("any-deployment-may-serve")
    permit (principal, action == Action::"route", resource);
    """
    gw = await policy_gateway({"p.cedar": only_ops})
    denied = await gw.client("alice").post("/v1/chat/completions", json=chat("pair"))
    assert denied.status_code == 403
    assert denied.json()["error"]["message"] == (
        "Policy does not allow key 'alice' to call 'pair': no policy permits it.")
    assert "x-aigw-policy-ids" not in denied.headers
    assert (await gw.client("ops").post("/v1/chat/completions", json=chat("pair"))).is_success


async def test_hide_policy_ids_leaves_them_out_of_the_403(policy_gateway: Factory) -> None:
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "teams.cedar": FORBID_ENG_SOLO},
                              settings="hide_policy_ids: true")
    denied = await gw.client("alice").post("/v1/chat/completions", json=chat("solo"))
    assert denied.status_code == 403
    assert denied.json()["error"]["message"] == "Policy does not allow key 'alice' to call 'solo'."
    assert "x-aigw-policy-ids" not in denied.headers


async def test_an_end_user_is_a_principal_in_its_key_and_team(policy_gateway: Factory) -> None:
    users = """
    @id("no-mallory")
    forbid (principal == User::"mallory", action == Action::"invoke", resource);

    @id("eng-users-not-on-solo")
    forbid (principal is User in Team::"eng", action == Action::"invoke",
            resource == Route::"solo");
    """
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "users.cedar": users})
    alice = gw.client("alice")
    mallory = await alice.post("/v1/chat/completions", json=chat("pair", user="mallory"))
    assert mallory.status_code == 403
    assert mallory.json()["error"]["message"] == (
        "Policy does not allow user 'mallory' of key 'alice' to call 'pair': denied by no-mallory.")
    bob = await alice.post("/v1/chat/completions", json=chat("solo", user="bob"))
    assert bob.status_code == 403
    assert bob.headers["x-aigw-policy-ids"] == "eng-users-not-on-solo"
    assert (await alice.post("/v1/chat/completions", json=chat("solo"))).is_success
    assert (await gw.client("ops").post("/v1/chat/completions",
                                        json=chat("solo", user="bob"))).is_success


async def test_route_policies_see_live_latency(policy_gateway: Factory) -> None:
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "routing.cedar": SHIPPED_ROUTING})
    client = gw.client()
    gw.stats("local-a").latency_ms = 900.0
    tight = {"x-aigw-latency-sla-ms": "300"}
    served = await client.post("/v1/chat/completions", json=chat("pair"), headers=tight)
    assert served.headers["x-aigw-deployment"] == "local-b"
    relaxed = await client.post("/v1/chat/completions", json=chat("pair"))
    assert relaxed.headers["x-aigw-deployment"] == "local-a"
    gw.stats("local-a").latency_ms = 250.0
    recovered = await client.post("/v1/chat/completions", json=chat("pair"), headers=tight)
    assert recovered.headers["x-aigw-deployment"] == "local-a"


async def test_streams_are_filtered_too(policy_gateway: Factory) -> None:
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "routing.cedar": SHIPPED_ROUTING})
    gw.stats("local-a").latency_ms = 900.0
    async with gw.client().stream("POST", "/v1/chat/completions", json=chat("pair", stream=True),
                                  headers={"x-aigw-latency-sla-ms": "300"}) as response:
        assert response.headers["x-aigw-deployment"] == "local-b"
        await response.aread()


async def test_the_highest_permitting_priority_goes_first(policy_gateway: Factory) -> None:
    prefer_b = """
    @id("prefer-b")
    @priority("50")
    permit (principal, action == Action::"route", resource == Deployment::"local-b");
    """
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "prefer.cedar": prefer_b})
    served = await gw.client().post("/v1/chat/completions", json=chat("pair"))
    assert served.headers["x-aigw-deployment"] == "local-b"  # strategy priority says local-a


async def test_a_route_policy_reads_the_cache_prices(policy_gateway: Factory) -> None:
    """A cache price is a deployment attribute as its input price is (the input price
    where the config names none): a prompt-cache-heavy route can prefer cheap reads."""
    prefer_cheap_reads = """
    @id("prefer-cheap-cache-reads")
    @priority("50")
    permit (principal, action == Action::"route", resource)
    when { resource.price.cache_read.lessThan(resource.price.input) };
    """
    gw = await policy_gateway(
        {"base.cedar": PERMIT_ALL, "prefer.cedar": prefer_cheap_reads},
        deployments="  cached: {provider: local, model: cached-1, context_window: 8192, "
                    "price: {input: 1, output: 2, cache_read: 0.1}}",
        groups="  caching: {members: [local-a, cached]}",
        routes="  caching: {group: caching}")
    served = await gw.client().post("/v1/chat/completions", json=chat("caching"))
    assert served.status_code == 200, served.text
    assert served.headers["x-aigw-deployment"] == "cached"  # strategy priority says local-a


async def test_forbid_wins_over_a_permit_of_any_priority(policy_gateway: Factory) -> None:
    both = """
    @id("prefer-b")
    @priority("100")
    permit (principal, action == Action::"route", resource == Deployment::"local-b");

    @id("never-b")
    forbid (principal, action == Action::"route", resource == Deployment::"local-b");
    """
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "b.cedar": both})
    served = await gw.client().post("/v1/chat/completions", json=chat("pair"))
    assert served.headers["x-aigw-deployment"] == "local-a"


async def test_nothing_permitted_is_a_403_naming_the_policies(policy_gateway: Factory) -> None:
    never_a = """
    @id("never-a")
    forbid (principal, action == Action::"route", resource == Deployment::"local-a");
    """
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "a.cedar": never_a})
    denied = await gw.client().post("/v1/chat/completions", json=chat("solo"))
    assert denied.status_code == 403
    assert denied.json()["error"]["message"] == (
        "Policy allows no deployment of 'solo' to serve this request: "
        "local-a is forbidden by never-a.")
    assert denied.headers["x-aigw-policy-ids"] == "never-a"


async def test_embeddings_are_checked_too(policy_gateway: Factory) -> None:
    rules = """
    @id("no-embeddings-for-eng")
    forbid (principal in Team::"eng", action == Action::"invoke", resource == Route::"embed");

    @id("vectors-not-for-ops")
    forbid (principal in Team::"ops", action == Action::"route",
            resource == Deployment::"vectors");
    """
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "embed.cedar": rules})
    body = {"model": "embed", "input": "hello"}
    invoke = await gw.client("alice").post("/v1/embeddings", json=body)
    assert (invoke.status_code, invoke.headers["x-aigw-policy-ids"]) == (
        403, "no-embeddings-for-eng")
    route = await gw.client("ops").post("/v1/embeddings", json=body)
    assert route.status_code == 403
    assert route.json()["error"]["message"] == (
        "Policy allows no deployment of 'embed' to serve this request: "
        "vectors is forbidden by vectors-not-for-ops.")


RANKERS = {
    "deployments": "  ranker: {provider: local, model: rank-1, kind: rerank, "
                   "context_window: 8192}\n"
                   "  ranker-2: {provider: local, model: rank-2, kind: rerank, "
                   "context_window: 8192, tags: [preferred]}",
    "groups": "  rankers: {members: [ranker, ranker-2]}",
    "routes": "  rank: {group: rankers}",
}


async def test_rerank_is_checked_and_explained_as_served(policy_gateway: Factory) -> None:
    """Cedar's invoke on the route and route on each deployment hold for /v1/rerank as
    for a chat, and POST /route explains a rerank route as /v1/rerank serves it."""
    rules = """
    @id("no-rerank-for-eng")
    forbid (principal in Team::"eng", action == Action::"invoke", resource == Route::"rank");

    @id("ranker-2-not-for-ops")
    forbid (principal in Team::"ops", action == Action::"route",
            resource == Deployment::"ranker-2");
    """
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "prefer.cedar": PREFER_TAGGED,
                               "rank.cedar": rules}, **RANKERS)
    body = {"model": "rank", "query": "hello", "documents": ["hello there", "bye"]}
    invoke = await gw.client("alice").post("/v1/rerank", json=body)
    assert (invoke.status_code, invoke.headers["x-aigw-policy-ids"]) == (
        403, "no-rerank-for-eng")
    # The preferred member is forbidden to ops: the other serves, as the router says.
    answer = (await gw.client().post("/route", json={"model": "rank", "key": "ops"})).json()
    assert (answer["allowed"], answer["deployment"], answer["alternatives"]) == (
        True, "ranker", [])
    served = await gw.client("ops").post("/v1/rerank", json=body)
    assert served.status_code == 200, served.text
    assert served.headers["x-aigw-deployment"] == answer["deployment"]


MEDIA = {
    "deployments": "  painter: {provider: local, model: image-1, kind: image, "
                   "context_window: 8192}\n"
                   "  moderator: {provider: local, model: moderation-1, kind: moderation, "
                   "context_window: 8192}",
    "routes": "  draw: {deployment: painter}\n  moderate: {deployment: moderator}",
}


async def test_images_and_moderations_are_checked_and_explained_as_served(
    policy_gateway: Factory,
) -> None:
    """Cedar's invoke holds for /v1/images/generations and /v1/moderations as for a chat
    (refused before any call, the policy named), and POST /route explains their routes."""
    rules = """
    @id("no-drawing-for-eng")
    forbid (principal in Team::"eng", action == Action::"invoke", resource == Route::"draw");

    @id("no-moderation-for-ops")
    forbid (principal in Team::"ops", action == Action::"invoke",
            resource == Route::"moderate");
    """
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "media.cedar": rules}, **MEDIA)
    draw = {"model": "draw", "prompt": "a cat"}
    moderate = {"model": "moderate", "input": "a cat"}
    denied = await gw.client("alice").post("/v1/images/generations", json=draw)
    assert (denied.status_code, denied.headers["x-aigw-policy-ids"]) == (
        403, "no-drawing-for-eng")
    assert denied.json()["error"]["code"] == "permission_denied"
    refused = await gw.client("ops").post("/v1/moderations", json=moderate)
    assert (refused.status_code, refused.headers["x-aigw-policy-ids"]) == (
        403, "no-moderation-for-ops")
    assert (await gw.client("ops").post("/v1/images/generations", json=draw)).status_code == 200
    assert (await gw.client("alice").post("/v1/moderations", json=moderate)).status_code == 200
    answer = (await gw.client().post("/route", json={"model": "draw", "key": "ops"})).json()
    assert (answer["allowed"], answer["deployment"]) == (True, "painter")


async def test_a_route_policy_compares_rerank_deployments_by_search_unit_price(
    policy_gateway: Factory,
) -> None:
    """Rerank's search-unit price is in ``price`` beside the token prices: a cost-aware
    policy can keep a route on its cheaper reranker."""
    cheap_search = """
    @id("cheap-search-units")
    @priority("50")
    permit (principal, action == Action::"route", resource)
    when { resource.price.per_1k_search_units.lessThan(decimal("2.0")) };
    """
    gw = await policy_gateway(
        {"base.cedar": PERMIT_ALL, "cost.cedar": cheap_search},
        deployments="  dear: {provider: local, model: rank-1, kind: rerank, "
                    "context_window: 8192, price: {per_1k_search_units: 2.0}}\n"
                    "  cheap: {provider: local, model: rank-2, kind: rerank, "
                    "context_window: 8192, price: {per_1k_search_units: 0.5}}",
        groups="  rankers: {members: [dear, cheap]}",
        routes="  rank: {group: rankers}")
    body = {"model": "rank", "query": "hello", "documents": ["hello there", "bye"]}
    served = await gw.client().post("/v1/rerank", json=body)
    assert served.status_code == 200, served.text
    assert served.headers["x-aigw-deployment"] == "cheap"  # strategy priority says dear


VOICES = {
    "deployments": "  listener: {provider: local, model: listen-1, kind: transcription, "
                   "context_window: 8192}\n"
                   "  voice: {provider: local, model: voice-1, kind: speech, "
                   "context_window: 8192}\n"
                   "  voice-2: {provider: local, model: voice-2, kind: speech, "
                   "context_window: 8192, tags: [preferred]}",
    "groups": "  voices: {members: [voice, voice-2]}",
    "routes": "  listen: {deployment: listener}\n  speak: {group: voices}",
}


async def test_audio_is_checked_and_explained_as_served(policy_gateway: Factory) -> None:
    """Cedar's invoke on the route and route on each deployment hold for /v1/audio/* as
    for a chat, and POST /route explains a speech route as /v1/audio/speech serves it."""
    rules = """
    @id("no-listening-for-eng")
    forbid (principal in Team::"eng", action == Action::"invoke", resource == Route::"listen");

    @id("voice-2-not-for-ops")
    forbid (principal in Team::"ops", action == Action::"route",
            resource == Deployment::"voice-2");
    """
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "prefer.cedar": PREFER_TAGGED,
                               "audio.cedar": rules}, **VOICES)
    invoke = await gw.client("alice").post("/v1/audio/transcriptions", data={"model": "listen"},
                                           files={"file": ("a.mp3", b"\xff" * 100)})
    assert (invoke.status_code, invoke.headers["x-aigw-policy-ids"]) == (
        403, "no-listening-for-eng")
    answer = (await gw.client().post("/route", json={"model": "speak", "key": "ops"})).json()
    assert (answer["allowed"], answer["deployment"], answer["alternatives"]) == (
        True, "voice", [])
    served = await gw.client("ops").post("/v1/audio/speech", json={
        "model": "speak", "input": "hello", "voice": "alloy"})
    assert served.status_code == 200, served.text
    assert served.headers["x-aigw-deployment"] == answer["deployment"]
    heard = await gw.client("ops").post("/v1/audio/transcriptions", data={"model": "listen"},
                                        files={"file": ("a.mp3", b"\xff" * 100)})
    assert heard.status_code == 200, heard.text


async def test_counting_a_messages_tokens_is_checked_as_sending_it_is(
    policy_gateway: Factory,
) -> None:
    """/v1/messages/count_tokens checked the key's routes: list only, so a principal a
    policy keeps off a route had its prompts counted (planned) there all the same."""
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "teams.cedar": FORBID_ENG_SOLO})
    body = {"model": "solo", "messages": [{"role": "user", "content": "hello"}]}
    refusal = {"type": "error", "error": {
        "type": "permission_error",
        "message": "Policy does not allow key 'alice' to call 'solo': denied by eng-not-on-solo."}}
    for path, sent in (("/v1/messages", {**body, "max_tokens": 16}),
                       ("/v1/messages/count_tokens", body)):
        denied = await gw.client("alice").post(path, json=sent)
        assert (denied.status_code, denied.json()) == (403, refusal), path
        assert denied.headers["x-aigw-policy-ids"] == "eng-not-on-solo"
    counted = await gw.client("ops").post("/v1/messages/count_tokens", json=body)
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 0, counted.text


VECTORS = {
    "deployments": "  vectors-2: {provider: local, model: vec-2, kind: embeddings, "
                   "context_window: 8192, tags: [preferred]}",
    "groups": "  vecs: {members: [vectors, vectors-2]}",
    "routes": "  vecs: {group: vecs}",
}
PREFER_TAGGED = """
@id("prefer-tagged")
@priority("50")
permit (principal, action == Action::"route", resource)
when { resource.tags.contains("preferred") };
"""


async def test_embeddings_try_the_permitted_deployments_by_priority(
    policy_gateway: Factory,
) -> None:
    """As a chat does: the highest @priority among the policies permitting each first,
    then the configured order. Embeddings went in the configured order alone (found by a
    review)."""
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "prefer.cedar": PREFER_TAGGED},
                              **VECTORS)
    served = await gw.client().post("/v1/embeddings", json={"model": "vecs", "input": "hi"})
    assert served.status_code == 200, served.text
    assert served.headers["x-aigw-deployment"] == "vectors-2"
    plain = await policy_gateway({"base.cedar": PERMIT_ALL}, **VECTORS)
    served = await plain.client().post("/v1/embeddings", json={"model": "vecs", "input": "hi"})
    assert served.headers["x-aigw-deployment"] == "vectors"


async def test_the_policy_router_explains_embeddings_as_they_are_served(
    policy_gateway: Factory,
) -> None:
    """POST /route on an embeddings route said allowed false, each member dropped as "an
    embeddings model", where /v1/embeddings served it (found by a review)."""
    rules = ('@id("vectors-not-for-ops")\nforbid (principal in Team::"ops", '
             'action == Action::"route", resource == Deployment::"vectors");\n')
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "prefer.cedar": PREFER_TAGGED,
                               "ops.cedar": rules}, **VECTORS)
    answer = (await gw.client().post("/route", json={"model": "vecs", "key": "alice"})).json()
    assert (answer["allowed"], answer["deployment"], answer["alternatives"]) == (
        True, "vectors-2", ["vectors"])
    assert answer["policies"] == ["any-deployment-may-serve", "prefer-tagged"]
    served = await gw.client("alice").post("/v1/embeddings", json={"model": "vecs", "input": "a"})
    assert served.headers["x-aigw-deployment"] == answer["deployment"]
    refused = (await gw.client().post("/route", json={"model": "embed", "key": "ops"})).json()
    assert (refused["allowed"], refused["policies"]) == (False, ["vectors-not-for-ops"])
    embedded = await gw.client("ops").post("/v1/embeddings", json={"model": "embed", "input": "a"})
    assert embedded.status_code == 403


async def test_a_gateway_without_policies_checks_nothing(policy_gateway: Factory) -> None:
    gw = await policy_gateway({})
    assert not gw.gateway.live.graph.authorization.enforced
    assert (await gw.client("alice").post("/v1/chat/completions", json=chat("solo"))).is_success


async def test_an_invoke_policy_may_read_the_remaining_budget(policy_gateway: Factory) -> None:
    """Read before the request is admitted (only route policies get it from the
    reservation): eng's budget of 5 is below the policy's 10, ops has none."""
    low_budget = """
@id("no-calls-on-a-low-budget")
forbid (principal, action == Action::"invoke", resource)
when { context.budget_remaining.lessThan(decimal("10.0")) };
"""
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "low.cedar": low_budget,
                               "routing.cedar": SHIPPED_ROUTING})
    refused = await gw.client("alice").post("/v1/chat/completions", json=chat("pair"))
    assert refused.status_code == 403, refused.text
    assert refused.headers["x-aigw-policy-ids"] == "no-calls-on-a-low-budget"
    assert (await gw.client("ops").post("/v1/chat/completions", json=chat("pair"))).is_success


# The three policies of the original design (policies/routing.cedar), one test each.

async def test_shipped_prefer_self_hosted_when_the_budget_is_below_10(
    policy_gateway: Factory, hosted: tuple[object, str]
) -> None:
    _fake, url = hosted
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "routing.cedar": SHIPPED_ROUTING},
                              hosted_url=url)
    # alice's team eng has a budget of 5: the self-hosted echo deployment goes first.
    low = await gw.client("alice").post("/v1/chat/completions", json=chat("mixed"))
    assert low.headers["x-aigw-deployment"] == "local-a"
    # ops has no budget at all: the group's own order (hosted first) stands.
    none = await gw.client("ops").post("/v1/chat/completions", json=chat("mixed"))
    assert none.headers["x-aigw-deployment"] == "hosted"


async def test_shipped_tight_sla_forbids_slow_deployments(policy_gateway: Factory) -> None:
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "routing.cedar": SHIPPED_ROUTING})
    gw.stats("local-a").latency_ms = 450.0
    client = gw.client()
    denied = await client.post("/v1/chat/completions", json=chat("solo"),
                               headers={"x-aigw-latency-sla-ms": "400"})
    assert denied.status_code == 403
    assert denied.headers["x-aigw-policy-ids"] == "tight-sla-forbids-slow"
    # An SLA of 500 ms is not tight; one the deployment meets is no problem.
    for sla in ("500", "450"):
        ok = await client.post("/v1/chat/completions", json=chat("solo"),
                               headers={"x-aigw-latency-sla-ms": sla})
        assert ok.headers["x-aigw-deployment"] == "local-a", sla


async def test_shipped_error_rate_over_5_percent_forbids(policy_gateway: Factory) -> None:
    gw = await policy_gateway({"base.cedar": PERMIT_ALL, "routing.cedar": SHIPPED_ROUTING})
    stats = gw.stats("local-a")
    now = gw.gateway.live.routing.clock()
    for ok in [False] + [True] * 8:  # 1 failure in 9 calls: under min_requests (10), rate 0
        stats.breaker.record(now, ok=ok, permit=Permit.CALL)
    client = gw.client()
    first = await client.post("/v1/chat/completions", json=chat("pair"))
    assert first.headers["x-aigw-deployment"] == "local-a"  # its success is the 10th call
    moved = await client.post("/v1/chat/completions", json=chat("pair"))  # 1 in 10: 10%
    assert moved.headers["x-aigw-deployment"] == "local-b"
    for _ in range(10):  # 1 in 20: exactly 5% is not over 5%
        stats.breaker.record(now, ok=True, permit=Permit.CALL)
    back = await client.post("/v1/chat/completions", json=chat("pair"))
    assert back.headers["x-aigw-deployment"] == "local-a"


async def test_running_a_pipeline_directly_is_an_invoke_of_the_pipeline(
    policy_gateway: Factory,
) -> None:
    rules = """
    @id("routes-for-all")
    permit (principal, action == Action::"invoke", resource is Route);

    @id("pipelines-for-ops")
    permit (principal in Team::"ops", action == Action::"invoke", resource is Pipeline);

    @id("any-deployment-may-serve")
    permit (principal, action == Action::"route", resource);
    """
    gw = await policy_gateway({"rules.cedar": rules})
    live = gw.gateway.live
    keys = {k.name: k for k in live.graph.keys_by_sha256.values()}
    await authorize_pipeline(live, keys["ops"], None, "research", Headers())
    with pytest.raises(Forbidden) as denied:
        await authorize_pipeline(live, keys["alice"], "carol", "research", Headers())
    assert denied.value.message == ("Policy does not allow user 'carol' of key 'alice' to run "
                                    "pipeline 'research': no policy permits it.")


async def test_pipelines_are_invoked_only_when_cedar_permits(
    gateway_dir: Path, counter: TokenCounter
) -> None:
    (gateway_dir / "policies" / "no-research.cedar").write_text(
        '@id("no-research-for-dev")\n'
        'forbid (principal in ApiKey::"dev", action == Action::"invoke",'
        ' resource == Pipeline::"research");\n'
    )  # "in": the key and its end users (with ==, a request naming a user escaped it)
    gateway = Gateway(gateway_dir, counter)
    try:
        transport = httpx.ASGITransport(app=create_app(gateway))
        async with httpx.AsyncClient(transport=transport, base_url="http://aigw.test",
                                     headers={"Authorization": "Bearer sk-aigw-dev"}) as http:
            direct = await http.post("/v1/pipelines/research", json={"topic": "tides"})
            started = await http.post("/api/v1/executions",
                                      json={"pipeline": "research", "input": {"topic": "x"}})
            as_user = await http.post("/v1/pipelines/research", json={"topic": "tides"},
                                      headers={"x-aigw-user": "someone"})
        for refused in (direct, started, as_user):
            assert refused.status_code == 403, refused.text
            assert "no-research-for-dev" in refused.json()["error"]["message"]
    finally:
        await gateway.aclose()
