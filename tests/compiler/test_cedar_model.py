"""Stage 4 with the config: the generated Cedar schema, validation positions, what policies read."""

from __future__ import annotations

import json

import cedarpy

from aigw.compiler import compile_gateway
from aigw.compiler.entity_model import (
    NO_BUDGET,
    EntityNames,
    cedar_decimal,
    cedar_schema_json,
    cedar_schema_text,
    is_self_hosted,
)
from aigw.compiler.policy_analysis import reads
from aigw.compiler.source import Position

from .conftest import WriteGateway

GATEWAY = """\
version: 1
providers:
  local: {type: echo}
  gpu: {type: vllm, base_url: "http://gpu:8000/v1"}
  box: {type: openai_compatible, base_url: "http://box:11434/v1"}
deployments:
  small: {provider: local, model: s, context_window: 8192, price: {input: 0.15, output: 0.6}}
  vllm: {provider: gpu, model: llama, context_window: 32768}
  ollama: {provider: box, model: qwen, context_window: 32768, tags: [self-hosted]}
  cloud: {provider: box, model: big, context_window: 32768}
groups:
  fast: {members: [small, vllm, ollama, cloud]}
routes:
  fast: {group: fast}
teams:
  eng: {}
keys:
  ci: {team: eng, sha256: 2f0527c3d35a1f337ec6033b75e33c053e72e7122963d86dffe7c2f10bcbb482}
"""
PERMIT_ALL = (
    '@id("invoke")\npermit (principal, action == Action::"invoke", resource);\n'
    '@id("route")\npermit (principal, action == Action::"route", resource);\n'
)


def _names() -> EntityNames:
    return EntityNames({"Team": ("eng",), "ApiKey": ("ci",), "Group": ("fast",),
                        "Deployment": ("small",), "Route": ("fast",), "Pipeline": (),
                        "Agent": (), "Tool": ()})


def test_the_schema_text_and_json_are_the_same_schema() -> None:
    names = _names()
    as_text = cedarpy.Schema.from_str(cedar_schema_text(names))
    as_json = cedarpy.Schema.from_json_str(json.dumps(cedar_schema_json(names)))
    assert str(as_text) == str(as_json).replace("__cedar::", "")


def test_named_types_are_enumerated_from_the_config() -> None:
    text = cedar_schema_text(_names())
    assert 'entity Team enum ["eng"];' in text
    assert 'entity Group enum ["fast"];' in text
    assert "entity Pipeline;" in text  # none defined: an enum cannot be empty
    assert "entity Deployment in [Group] = {" in text
    assert "  current_error_rate: decimal,  // failed share of the breaker window" in text


def test_agents_are_entities_policies_may_name(write_gateway: WriteGateway) -> None:
    root = write_gateway({
        "gateway.yaml": GATEWAY + "agents:\n  research: {url: 'https://agents.example/a2a/'}\n",
        "policies/a.cedar": PERMIT_ALL + '@id("no-research")\nforbid (principal, action == '
                                         'Action::"invoke", resource == Agent::"research");\n',
    })
    result = compile_gateway(root, environ={})
    assert result.diagnostics == ()
    assert result.graph is not None
    assert 'entity Agent enum ["research"];' in result.graph.authorization.schema_text


def test_self_hosted_is_vllm_echo_or_tagged() -> None:
    assert is_self_hosted("vllm", ())
    assert is_self_hosted("echo", ())
    assert is_self_hosted("openai_compatible", ("self-hosted",))
    assert not is_self_hosted("openai_compatible", ("local",))


def test_decimals_have_four_places_and_a_ceiling() -> None:
    assert cedar_decimal(0.15) == {"__extn": {"fn": "decimal", "arg": "0.1500"}}
    assert cedar_decimal(1e30) == {"__extn": {"fn": "decimal", "arg": NO_BUDGET}}
    assert cedar_decimal(float("inf"))["__extn"]["arg"] == NO_BUDGET


def test_the_graph_carries_the_parsed_policy_set(write_gateway: WriteGateway) -> None:
    root = write_gateway({
        "gateway.yaml": GATEWAY,
        "policies/a.cedar": PERMIT_ALL,
        "policies/b.cedar": '@id("prefer-vllm")\n@priority("50")\n'
                            'permit (principal, action == Action::"route", resource)\n'
                            "when { resource.self_hosted };\n",
    })
    graph = compile_gateway(root, environ={}).graph
    assert graph is not None
    authorization = graph.authorization
    assert authorization.enforced
    assert {k: p.id for k, p in authorization.by_cedar_id.items()} == {
        "policy0": "invoke", "policy1": "route", "policy2": "prefer-vllm"}
    assert authorization.policy_ids(["policy2", "policy0"]) == ("invoke", "prefer-vllm")
    assert authorization.priority(["policy1", "policy2"]) == 50
    assert len(authorization.policy_set) == 3
    assert {name: dict(attrs) for name, attrs in authorization.deployment_attributes.items()} == {
        "small": {"self_hosted": True}, "vllm": {"self_hosted": True},
        "ollama": {"self_hosted": True}, "cloud": {"self_hosted": False}}
    assert authorization.deployment_groups["cloud"] == ("fast",)


def test_an_error_in_a_later_file_is_placed_in_that_file(write_gateway: WriteGateway) -> None:
    root = write_gateway({
        "gateway.yaml": GATEWAY,
        "policies/a.cedar": PERMIT_ALL,
        "policies/b.cedar": "// slow ones\n\n@id(\"slow\")\nforbid (principal, action == "
                            'Action::"route", resource)\n'
                            "when { resource.latency_ms > 900 };\n",
    })
    result = compile_gateway(root, environ={})
    (error,) = result.errors
    assert error.code.id == "AGW406"
    assert error.position == Position("policies/b.cedar", 5, 17, 10)
    assert error.message == 'policy "slow": Deployment has no attribute `latency_ms`'


def test_every_policy_error_is_reported_in_one_run(write_gateway: WriteGateway) -> None:
    root = write_gateway({
        "gateway.yaml": GATEWAY,
        "policies/a.cedar": PERMIT_ALL + '@id("bad-team")\npermit (principal in Team::"egn", '
                                         'action == Action::"invoke", resource);\n'
                                         '@id("bad-type")\npermit (principal, action == '
                                         'Action::"route", resource)\n'
                                         'when { context.stream > 1 };\n',
    })
    result = compile_gateway(root, environ={})
    assert [(d.code.id, d.position.line) for d in result.diagnostics] == [
        ("AGW409", 6), ("AGW408", 9)]
    assert result.diagnostics[0].hint == 'did you mean Team::"eng"?'


def test_reads_are_what_policies_can_observe() -> None:
    text = (
        '@id("a") permit (principal, action == Action::"route", resource)\n'
        'when { context.budget_remaining.lessThan(decimal("10.0")) && resource.self_hosted };\n'
        '@id("b") forbid (principal, action == Action::"route", resource)\n'
        "when { context.latency_sla_ms < 500 && "
        "resource.average_latency_ms > context.latency_sla_ms };\n"
        '@id("c") forbid (principal, action == Action::"route", resource)\n'
        'when { decimal("0.05").lessThan(resource.current_error_rate) };\n'
    )
    bodies = list(json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"].values())
    found = reads(bodies)
    assert found.attributes == {"self_hosted", "average_latency_ms", "current_error_rate"}
    assert found.context == {"budget_remaining", "latency_sla_ms"}
    assert found.live_isolated
    # Every field is only compared: with a literal, or with another field that is.
    assert found.compared == {"context.budget_remaining", "context.latency_sla_ms",
                              "resource.average_latency_ms", "resource.current_error_rate"}
    assert found.comparisons == (
        ("<", ("field", "context.budget_remaining"), ("decimal", "10.0")),
        ("<", ("field", "context.latency_sla_ms"), ("long", "500")),
        (">", ("field", "resource.average_latency_ms"), ("field", "context.latency_sla_ms")),
        ("<", ("decimal", "0.05"), ("field", "resource.current_error_rate")),
    )


def test_what_must_be_known_before_routing_is_what_non_route_policies_read() -> None:
    """Route-only policies may read fields the request learns as it is admitted (the
    remaining budget, from its reservation); any policy that can decide invoke may not."""
    route_only = (
        '@id("a") permit (principal, action == Action::"route", resource)\n'
        'when { context.budget_remaining.lessThan(decimal("10.0")) };\n'
        '@id("b") forbid (principal, action in [Action::"route"], resource)\n'
        "when { context.estimated_tokens > 100 };\n"
    )
    also_invoke = {
        "an invoke policy": '@id("c") forbid (principal, action == Action::"invoke", resource)\n'
                            "when { context.latency_sla_ms < 10 };\n",
        "any action": '@id("c") forbid (principal, action, resource)\n'
                      "when { context.latency_sla_ms < 10 };\n",
        "a list with invoke": '@id("c") forbid (principal, action in [Action::"route", '
                              'Action::"invoke"], resource)\n'
                              "when { context.latency_sla_ms < 10 };\n",
    }

    def bodies(text: str) -> list[dict[str, object]]:
        return list(json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"].values())

    assert reads(bodies(route_only)).before_routing == set()
    for case, text in also_invoke.items():
        found = reads(bodies(route_only + text))
        assert found.before_routing == {"latency_sla_ms"}, case
    whole = reads(bodies(route_only + '@id("d") permit (principal, action, resource) '
                         "when { context == {} };\n"))
    assert "budget_remaining" in whole.before_routing


def test_a_field_read_otherwise_counts_by_its_value() -> None:
    text = (
        '@id("a") forbid (principal, action == Action::"route", resource)\n'
        "when { resource.in_flight > context.max_tokens && context.max_tokens + 1 > 2 "
        "&& context.estimated_tokens > 100 };\n"
    )
    bodies = list(json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"].values())
    found = reads(bodies)
    # max_tokens is also added to: its value matters, and so does in_flight's, which is
    # compared with it.
    assert found.compared == {"context.estimated_tokens"}
    assert found.comparisons == (
        (">", ("field", "context.estimated_tokens"), ("long", "100")),)


def test_reading_the_whole_context_or_another_deployment_is_noticed() -> None:
    text = (
        '@id("a") permit (principal, action, resource) when { context == {} };\n'
        '@id("b") forbid (principal, action == Action::"route", resource)\n'
        'when { Deployment::"x".in_flight > 3 };\n'
    )
    bodies = list(json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"].values())
    found = reads(bodies)
    assert "estimated_tokens" in found.context and "route" in found.context
    assert not found.live_isolated
    assert found.compared == set()


def test_policies_read_a_deployments_cache_prices(write_gateway: WriteGateway) -> None:
    """``resource.price`` had only input and output: a policy on price.cache_read (billed
    since the cache prices came) failed ``aigw check``. A cache price the config leaves
    out reads as the input price, as it is billed; a misspelt one still fails, placed."""
    priced = GATEWAY.replace(
        "price: {input: 0.15, output: 0.6}",
        "price: {input: 0.15, output: 0.6, cache_read: 0.015}")
    cheap_reads = ('@id("cheap-cache-reads")\n@priority("10")\n'
                   'permit (principal, action == Action::"route", resource)\n'
                   "when { resource.price.cache_read.lessThan(resource.price.input) && "
                   'resource.price.cache_write.lessThan(decimal("1.0")) };\n')
    root = write_gateway({"gateway.yaml": priced, "policies/a.cedar": PERMIT_ALL + cheap_reads})
    result = compile_gateway(root, environ={})
    assert result.diagnostics == ()
    assert result.graph is not None
    attributes = result.graph.authorization.deployment_attributes
    assert attributes["small"]["price"] == {
        "input": cedar_decimal(0.15), "output": cedar_decimal(0.6),
        "cache_read": cedar_decimal(0.015), "cache_write": cedar_decimal(0.15),
        "per_1k_search_units": cedar_decimal(0)}

    misspelt = write_gateway({"gateway.yaml": priced, "policies/a.cedar": PERMIT_ALL
                              + cheap_reads.replace("price.cache_read", "price.cache_reed")},
                             root=root.parent / "misspelt")
    (error,) = compile_gateway(misspelt, environ={}).errors
    assert error.code.id == "AGW406"
    assert (error.position.file, error.position.line, error.position.column) == (
        "policies/a.cedar", 8, 23)  # at the misspelt field
    assert error.message == (
        'policy "cheap-cache-reads": Deployment has no attribute `price.cache_reed`')
    assert error.hint is not None
