"""The Cedar entity model generated from the linked config: types, attributes, context.

    principals  ApiKey::"ci-bot" in Team::"eng"; Subject::"<sub>" (a caller signed in
                with a JWT, its issuer's principal_claim) in Issuer::"corp" and in its
                team; User::"alice" (the request's ``user``) in its key (or subject)
                and in that one's team
    resources   Route (in its Group or Pipeline), Group, Deployment (in its groups),
                Pipeline, Agent, Tool, McpServer, Passthrough
    actions     invoke (ApiKey|Subject|User -> Route|Pipeline|Agent|McpServer|Passthrough),
                route (ApiKey|Subject|User -> Deployment), call_tool (ApiKey|Subject|User|
                Pipeline|Agent -> Tool)

Cedar has no floats. Money and rates are ``decimal`` (four digits after the point,
compared with ``.lessThan()`` and friends); milliseconds and tokens are ``Long``.
Team, Issuer, Group, Pipeline, Agent, Tool, McpServer and Passthrough are enumerated types
when the config defines at least one, so a misspelt ``Team::"engg"`` fails validation in
any Cedar tool.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .link import Linked
    from .validate import Validated

# Cedar's decimal range; the largest value is also the "no budget applies" sentinel.
DECIMAL_MAX = 922337203685477.5807
NO_BUDGET = "922337203685477.5807"
LONG_MAX = 2**63 - 1

# Provider types that run on the operator's own machines; a deployment tagged
# "self-hosted" counts too (an Ollama behind openai_compatible, say).
SELF_HOSTED_TYPES = frozenset({"echo", "vllm"})
SELF_HOSTED_TAG = "self-hosted"


@dataclass(frozen=True, slots=True)
class CedarType:
    """One attribute type, as Cedar schema text and as Cedar's JSON schema form."""

    text: str
    json: Mapping[str, Any]


LONG = CedarType("Long", {"type": "Long"})
BOOL = CedarType("Bool", {"type": "Boolean"})
STRING = CedarType("String", {"type": "String"})
DECIMAL = CedarType("decimal", {"type": "Extension", "name": "decimal"})
STRINGS = CedarType("Set<String>", {"type": "Set", "element": {"type": "String"}})
# A deployment's prices, per million tokens: prompt cache reads and writes are input
# tokens at ``cache_read`` and ``cache_write`` (the input price where the config names
# none), as they are billed; and a rerank call's search units, per 1,000 (0 where the
# config names none), so that a route policy can compare rerank deployments by price.
PRICE_PARTS = ("input", "output", "cache_read", "cache_write", "per_1k_search_units")
PRICE = CedarType(
    "{" + ", ".join(f"{part}: decimal" for part in PRICE_PARTS) + "}",
    {"type": "Record", "attributes": {part: DECIMAL.json for part in PRICE_PARTS}},
)

PRINCIPAL_ATTRIBUTES: Mapping[str, CedarType] = MappingProxyType({"admin": BOOL})
ROUTE_ATTRIBUTES: Mapping[str, CedarType] = MappingProxyType({"kind": STRING, "target": STRING})
DEPLOYMENT_STATIC: Mapping[str, CedarType] = MappingProxyType({
    "provider": STRING,
    "provider_type": STRING,
    "model": STRING,
    "kind": STRING,
    "tags": STRINGS,
    "capabilities": STRINGS,
    "price": PRICE,
    "context_window": LONG,
    "max_output_tokens": LONG,
    "self_hosted": BOOL,
})
DEPLOYMENT_LIVE: Mapping[str, CedarType] = MappingProxyType({
    "average_latency_ms": LONG,
    "p95_latency_ms": LONG,
    "current_error_rate": DECIMAL,
    "in_flight": LONG,
    "queue_depth": LONG,
    "queue_wait_ms": LONG,
    "circuit_open": BOOL,
})
CONTEXT: Mapping[str, CedarType] = MappingProxyType({
    "estimated_tokens": LONG,
    "max_tokens": LONG,
    "stream": BOOL,
    "latency_sla_ms": LONG,
    "budget_remaining": DECIMAL,
    "intent": STRING,
    "hour_of_day": LONG,
    "tags": STRINGS,
    "route": STRING,
    "tool": STRING,
})
# What each attribute and context field holds: in the schema file, and in the README.
DOCS: Mapping[str, str] = MappingProxyType({
    "ApiKey.admin": "an admin key",
    "User.admin": "the user's key is an admin key",
    "Subject.admin": "always false: a caller signed in with a JWT is never an admin",
    "Route.kind": "group, deployment or pipeline",
    "Route.target": "the name of that group, deployment or pipeline",
    "Deployment.provider": "the provider's name in gateway.yaml",
    "Deployment.provider_type": "echo, openai, anthropic, vllm, ...",
    "Deployment.kind": "chat, embeddings, rerank, image, moderation, transcription, speech "
                       "or realtime",
    "Deployment.price": "per million tokens; cache_read and cache_write: the input price "
                        "when not set; per_1k_search_units: rerank's, 0 when not set",
    "Deployment.self_hosted": "provider type vllm or echo, or tagged self-hosted",
    "Deployment.average_latency_ms": "EWMA of whole-call latency; 0 until measured",
    "Deployment.p95_latency_ms": "over the last 200 calls; 0 until 5 are measured",
    "Deployment.current_error_rate":
        "failed share of the breaker window; 0 until it holds min_requests",
    "Deployment.in_flight": "calls open now",
    "Deployment.queue_depth": "requests waiting upstream (vLLM); 0 when unknown",
    "Deployment.queue_wait_ms":
        "estimated wait upstream before a new request starts (vLLM): queue_depth x "
        "average_latency_ms / requests it runs at once; 0 when unknown",
    "Deployment.circuit_open": "the circuit breaker is open",
    "context.estimated_tokens": "prompt tokens, counted before the call",
    "context.max_tokens": "the request's output cap; 0 when it sets none",
    "context.latency_sla_ms": "header x-aigw-latency-sla-ms, else what is left of the deadline",
    "context.budget_remaining":
        'least left of any budget; decimal("922337203685477.5807") when none applies',
    "context.intent": 'the intent a classifying route found; "" otherwise',
    "context.hour_of_day": "0-23, UTC",
    "context.tags": "header x-aigw-tags: a,b",
    "context.route": "the model (route) name the app sent",
    "context.tool": 'the MCP tool a tools/call names (McpServer invoke); "" otherwise',
})


# Entity type -> (parent types, attributes). Enumerable types have neither.
ENTITY_TYPES: Mapping[str, tuple[tuple[str, ...], Mapping[str, CedarType]]] = MappingProxyType({
    "Team": ((), MappingProxyType({})),
    "Issuer": ((), MappingProxyType({})),
    "ApiKey": (("Team",), PRINCIPAL_ATTRIBUTES),
    "Subject": (("Issuer", "Team"), PRINCIPAL_ATTRIBUTES),
    "User": (("ApiKey", "Subject", "Team"), PRINCIPAL_ATTRIBUTES),
    "Group": ((), MappingProxyType({})),
    "Deployment": (("Group",), MappingProxyType({**DEPLOYMENT_STATIC, **DEPLOYMENT_LIVE})),
    "Route": (("Group", "Pipeline"), ROUTE_ATTRIBUTES),
    "Pipeline": ((), MappingProxyType({})),
    "Agent": ((), MappingProxyType({})),
    "Tool": ((), MappingProxyType({})),
    "McpServer": ((), MappingProxyType({})),
    "Passthrough": ((), MappingProxyType({})),
})
ENUMERABLE = ("Team", "Issuer", "Group", "Pipeline", "Agent", "Tool", "McpServer",
              "Passthrough")
PRINCIPALS = ("ApiKey", "Subject", "User")
ACTIONS: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]] = MappingProxyType({
    "invoke": (PRINCIPALS, ("Route", "Pipeline", "Agent", "McpServer", "Passthrough")),
    "route": (PRINCIPALS, ("Deployment",)),
    "call_tool": ((*PRINCIPALS, "Pipeline", "Agent"), ("Tool",)),
})
CONTEXT_TYPE = "RequestContext"


@dataclass(frozen=True, slots=True)
class EntityNames:
    """The ids each entity type has in the config (User ids come with requests)."""

    by_type: Mapping[str, tuple[str, ...]]
    # False when part of the config was lost to an error: then no id is called unknown.
    complete: bool = True

    def known(self, entity_type: str) -> tuple[str, ...] | None:
        """The ids of ``entity_type``, or None when any id is fine (User; a lost file)."""
        return self.by_type.get(entity_type) if self.complete else None


def entity_names(linked: Linked, validated: Validated) -> EntityNames:
    """The entities a config defines; entries that failed validation still count."""
    def ids(section: str, table: Mapping[str, object]) -> tuple[str, ...]:
        return tuple(sorted({*table, *validated.broken.get(section, ())}))

    return EntityNames(
        MappingProxyType({
            "Team": ids("teams", linked.teams),
            "ApiKey": ids("keys", linked.keys),
            "Issuer": ids("issuers", linked.issuers),
            "Group": ids("groups", linked.groups),
            "Deployment": ids("deployments", linked.deployments),
            "Route": ids("routes", linked.routes),
            "Pipeline": ids("pipelines", linked.pipelines),
            "Agent": ids("agents", linked.agents),
            "Tool": (),
            "McpServer": ids("mcp_servers", linked.mcp_servers),
            "Passthrough": ids("passthrough", linked.passthrough),
        }),
        complete=validated.complete,
    )


def cedar_schema_json(names: EntityNames) -> dict[str, Any]:
    """The schema in Cedar's JSON form (the empty namespace)."""
    entity_types: dict[str, Any] = {}
    for name, (parents, attributes) in ENTITY_TYPES.items():
        ids = names.known(name)
        if name in ENUMERABLE and ids:
            entity_types[name] = {"enum": list(ids)}
            continue
        shape: dict[str, Any] = {}
        if parents:
            shape["memberOfTypes"] = list(parents)
        if attributes:
            shape["shape"] = _record_json(attributes)
        entity_types[name] = shape
    actions = {
        name: {"appliesTo": {"principalTypes": list(principals),
                             "resourceTypes": list(resources),
                             "context": {"type": CONTEXT_TYPE}}}
        for name, (principals, resources) in ACTIONS.items()
    }
    return {"": {"commonTypes": {CONTEXT_TYPE: _record_json(CONTEXT)},
                 "entityTypes": entity_types, "actions": actions}}


def cedar_schema_text(names: EntityNames) -> str:
    """The same schema in Cedar's own syntax, for people and editors."""
    lines = [
        "// The Cedar schema aigw generates from gateway.yaml; `aigw schema` writes it.",
        "// Money and rates are decimal (compare with .lessThan()); ms and tokens are Long.",
        "",
        f"type {CONTEXT_TYPE} = {_record_text(CONTEXT, 'context')};",
    ]
    for name, (parents, attributes) in ENTITY_TYPES.items():
        lines.append("")
        ids = names.known(name)
        if name in ENUMERABLE and ids:
            lines.append(f"entity {name} enum [{', '.join(json.dumps(i) for i in ids)}];")
            continue
        head = f"entity {name}" + (f" in [{', '.join(parents)}]" if parents else "")
        lines.append(f"{head} = {_record_text(attributes, name)};" if attributes else f"{head};")
    for name, (principals, resources) in ACTIONS.items():
        lines.append("")
        lines.append(f'action "{name}" appliesTo {{')
        lines.append(f"  principal: [{', '.join(principals)}],")
        lines.append(f"  resource: [{', '.join(resources)}],")
        lines.append(f"  context: {CONTEXT_TYPE}")
        lines.append("};")
    return "\n".join(lines) + "\n"


def _record_json(attributes: Mapping[str, CedarType]) -> dict[str, Any]:
    return {"type": "Record", "attributes": {k: dict(t.json) for k, t in attributes.items()}}


def _record_text(attributes: Mapping[str, CedarType], owner: str) -> str:
    fields = []
    for index, (name, kind) in enumerate(attributes.items()):
        comma = "," if index < len(attributes) - 1 else ""
        doc = f"  // {DOCS[f'{owner}.{name}']}" if f"{owner}.{name}" in DOCS else ""
        fields.append(f"  {name}: {kind.text}{comma}{doc}")
    return "{\n" + "\n".join(fields) + "\n}"


def cedar_decimal(value: float | str) -> dict[str, Any]:
    """A number as a Cedar decimal value in entity or context JSON (four places, clamped).

    >>> cedar_decimal(0.15)
    {'__extn': {'fn': 'decimal', 'arg': '0.1500'}}
    """
    if isinstance(value, str):
        return {"__extn": {"fn": "decimal", "arg": value}}
    clamped = max(-DECIMAL_MAX, min(DECIMAL_MAX, value))
    text = NO_BUDGET if clamped >= DECIMAL_MAX else f"{clamped:.4f}"
    return {"__extn": {"fn": "decimal", "arg": text}}


def cedar_long(value: float) -> int:
    """A number as a Cedar Long (rounded, clamped to the signed 64-bit range)."""
    return max(-LONG_MAX - 1, min(LONG_MAX, round(value)))


def encode_value(kind: CedarType, value: Any) -> Any:
    """A plain JSON value (a number for a decimal) in Cedar's JSON form for ``kind``."""
    if kind is DECIMAL:
        return cedar_decimal(value if isinstance(value, str) else float(value))
    if kind is LONG:  # an int as it is (float() of a 400-digit one overflows), clamped
        return cedar_long(value if isinstance(value, int) else float(value))
    if kind is PRICE:
        return {part: cedar_decimal(float(value[part])) for part in PRICE_PARTS}
    if kind is STRINGS:
        return sorted(str(item) for item in value)
    return value


def is_self_hosted(provider_type: str, tags: tuple[str, ...]) -> bool:
    return provider_type in SELF_HOSTED_TYPES or SELF_HOSTED_TAG in tags
