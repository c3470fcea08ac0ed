"""The Cedar side of the graph: the policy set parsed once, the schema, the static entities.

The policies stage (``check_cedar``) validates every policy against the schema
generated from the linked config; freeze then builds ``Authorization`` from what
passed and the frozen config. The runtime only asks it: it never parses a policy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import cedarpy

from .diagnostics import DiagnosticSink
from .entity_model import (
    PRICE_PARTS,
    EntityNames,
    cedar_decimal,
    cedar_schema_json,
    cedar_schema_text,
    entity_names,
    is_self_hosted,
)
from .load import PolicyFile
from .policies import ParsedPolicy, parse_policies
from .policy_analysis import Reads, reads
from .policy_check import check_policies, schema_for

if TYPE_CHECKING:
    from .graph import ApiKey, Deployment, Group, Policy, Route, Team
    from .link import Linked
    from .validate import Validated


@dataclass(frozen=True, slots=True)
class CheckedPolicies:
    """The policies stage's output: what validated, and the schema it validated against."""

    parsed: tuple[ParsedPolicy, ...]
    names: EntityNames

    @property
    def policies(self) -> tuple[Policy, ...]:
        return tuple(item.policy for item in self.parsed)


def check_cedar(
    files: Sequence[PolicyFile], linked: Linked, validated: Validated, sink: DiagnosticSink
) -> CheckedPolicies:
    """Stage 4: parse every policy, then validate them against the config's schema."""
    errors = sink.error_count
    parsed = parse_policies(files, sink)
    names = entity_names(linked, validated)
    if parsed:
        all_parsed = sink.error_count == errors
        parsed = check_policies(parsed, names, schema_for(names), sink, all_parsed)
    return CheckedPolicies(parsed, names)


@dataclass(frozen=True, slots=True)
class Authorization:
    """Everything the runtime asks Cedar with, built once per graph.

    ``enforced`` is False only for a gateway with no policies at all: then nothing is
    checked. Otherwise Cedar decides, and denies what no policy permits.
    """

    enforced: bool
    policy_set: cedarpy.PolicySet
    by_cedar_id: Mapping[str, Policy]  # cedarpy's "policyN" -> the N-th policy
    bodies: tuple[Mapping[str, Any], ...]  # cedarpy's JSON form of each policy, in order
    schema: cedarpy.Schema
    schema_json: str
    schema_text: str
    reads: Reads
    entities: cedarpy.Entities  # every static entity (deployments come with live values)
    deployment_attributes: Mapping[str, Mapping[str, Any]]  # static, as policies read them
    deployment_groups: Mapping[str, tuple[str, ...]]

    def policy_ids(self, cedar_ids: Sequence[str]) -> tuple[str, ...]:
        """Our @ids for cedarpy's policy ids, in the order the policies were written."""
        known = sorted((item for item in cedar_ids if item in self.by_cedar_id),
                       key=lambda item: int(item.removeprefix("policy")))
        return tuple(self.by_cedar_id[item].id for item in known)

    def priority(self, cedar_ids: Sequence[str]) -> int:
        """The highest @priority among ``cedar_ids`` (0 when there are none)."""
        return max((self.by_cedar_id[item].priority for item in cedar_ids
                    if item in self.by_cedar_id), default=0)


def build_authorization(
    checked: CheckedPolicies,
    deployments: Mapping[str, Deployment],
    groups: Mapping[str, Group],
    routes: Mapping[str, Route],
    teams: Mapping[str, Team],
    keys: Sequence[ApiKey],
    pipelines: Sequence[str],
    mcp_servers: Sequence[str] = (),
    agents: Sequence[str] = (),
    passthrough: Sequence[str] = (),
    issuers: Sequence[str] = (),
) -> Authorization:
    """The frozen Cedar model of a compiled config (its policies already validated)."""
    parsed = checked.parsed
    found = reads([item.body for item in parsed])
    policy_set = cedarpy.PolicySet.from_str("\n".join(item.chunk.text for item in parsed))
    schema_json = cedar_schema_json(checked.names)
    members: dict[str, list[str]] = {name: [] for name in deployments}
    for group in groups.values():
        for member in group.members:
            members[member.name].append(group.name)
    static = [
        *({"uid": _uid("Team", name), "attrs": {}, "parents": []} for name in teams),
        *({"uid": _uid("Group", name), "attrs": {}, "parents": []} for name in groups),
        *({"uid": _uid("Pipeline", name), "attrs": {}, "parents": []} for name in pipelines),
        *({"uid": _uid("McpServer", name), "attrs": {}, "parents": []} for name in mcp_servers),
        *({"uid": _uid("Agent", name), "attrs": {}, "parents": []} for name in agents),
        *({"uid": _uid("Passthrough", name), "attrs": {}, "parents": []}
          for name in passthrough),
        *({"uid": _uid("Issuer", name), "attrs": {}, "parents": []} for name in issuers),
        *(_key(key, found) for key in keys),
        *(_route(route, found) for route in routes.values()),
    ]
    return Authorization(
        enforced=bool(parsed),
        policy_set=policy_set,
        by_cedar_id=MappingProxyType({f"policy{i}": item.policy for i, item in enumerate(parsed)}),
        bodies=tuple(item.body for item in parsed),
        schema=cedarpy.Schema.from_json_str(json.dumps(schema_json)),
        schema_json=json.dumps(schema_json, indent=2, sort_keys=True) + "\n",
        schema_text=cedar_schema_text(checked.names),
        reads=found,
        entities=cedarpy.Entities.from_json_str(json.dumps(static)),
        deployment_attributes=MappingProxyType({
            name: MappingProxyType(_project(deployment_attributes(d), found))
            for name, d in deployments.items()
        }),
        deployment_groups=MappingProxyType({n: tuple(g) for n, g in members.items()}),
    )


def deployment_attributes(deployment: Deployment) -> dict[str, Any]:
    """A deployment's attributes from the config, in Cedar's JSON form."""
    return {
        "provider": deployment.provider.name,
        "provider_type": deployment.provider.type,
        "model": deployment.model,
        "kind": deployment.kind,
        "tags": list(deployment.tags),
        "capabilities": sorted(deployment.capabilities),
        "price": {part: cedar_decimal(getattr(deployment.price, part)) for part in PRICE_PARTS},
        "context_window": deployment.context_window,
        "max_output_tokens": deployment.max_output_tokens,
        "self_hosted": is_self_hosted(deployment.provider.type, deployment.tags),
    }


def _uid(entity_type: str, name: str) -> dict[str, str]:
    return {"type": entity_type, "id": name}


def _key(key: ApiKey, found: Reads) -> dict[str, Any]:
    parents = [_uid("Team", key.team.name)] if key.team is not None else []
    return {"uid": _uid("ApiKey", key.name), "attrs": _project({"admin": key.admin}, found),
            "parents": parents}


def _route(route: Route, found: Reads) -> dict[str, Any]:
    kind = route.kind.value
    parents = ([_uid("Group", route.target)] if kind == "group"
               else [_uid("Pipeline", route.target)] if kind == "pipeline" else [])
    return {"uid": _uid("Route", route.name),
            "attrs": _project({"kind": kind, "target": route.target}, found), "parents": parents}


def _project(attributes: Mapping[str, Any], found: Reads) -> dict[str, Any]:
    """Only the attributes some policy reads: the others cannot change a decision."""
    return {name: value for name, value in attributes.items() if name in found.attributes}
