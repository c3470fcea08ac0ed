"""Stage 3, link: names become references, ${ENV} references become values.

Input: ``Validated`` specs (possibly from several files) and the environment.
Output: ``Linked``, one table per section with every reference checked, route
candidate lists expanded through groups and fallbacks, and secrets resolved.
Problems are reported with "did you mean" hints; warnings do not stop the build.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Generic, TypeVar

from . import codes
from .agents import link_agent
from .diagnostics import DiagnosticSink, shown_url
from .gateway_spec import SettingsSpec
from .graph import ServedServer
from .guardrail_graph import Guardrail
from .guardrails import check_route_guardrails, check_served_kinds, link_guardrails
from .issuers import LinkedIssuer, link_issuers
from .keys import LinkedKey, link_keys
from .kinds import check_deployment_kind, check_group_kinds
from .mcp_servers import LinkedMcpServer, link_mcp_servers, not_ascii
from .passthrough import LinkedPassthrough, link_passthrough
from .pipeline_graph import Agent
from .semantic_caches import check_semantic_caches
from .served import link_served
from .source import NodePath, Position, SourceMap
from .spec import (
    ENV_NAME_PATTERN,
    NAMED_SECTIONS,
    READ_CHAT_PARAMS,
    AgentSpec,
    DeploymentSpec,
    GroupSpec,
    GuardrailSpec,
    IssuerSpec,
    KeySpec,
    McpServerSpec,
    PassthroughSpec,
    ProviderSpec,
    RouteSpec,
    Spec,
    TeamSpec,
)
from .validate import Validated

S = TypeVar("S", bound=Spec)

# Provider types the runtime has an adapter for; the others compile but are disabled.
SERVED_PROVIDER_TYPES = frozenset(
    {"echo", "openai", "openai_compatible", "vllm", "azure_openai", "anthropic", "gemini",
     "bedrock", "vertex", "cohere"}
)
# Types served only with an optional extra installed, and the module that extra brings.
# The compiler looks for it (importlib.util.find_spec) and never imports it.
_EXTRAS = {"bedrock": "botocore", "vertex": "google.auth"}
# Fields only one type takes, and those a type needs.
_TYPE_FIELDS = {"region": "bedrock", "project": "vertex", "location": "vertex",
                "credentials_file": "vertex", "publisher": "vertex"}
_NEEDS_FIELDS = {
    "bedrock": (("region",), "add region: us-east-1 (or ${AWS_REGION}); credentials come from "
                "the AWS chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, a profile, a role)"),
    "vertex": (("project", "location"), "add project: ${GOOGLE_CLOUD_PROJECT} and location: "
               "us-east5 (or global)"),
}
_NEEDS_BASE_URL = frozenset({"openai_compatible", "vllm", "azure_openai"})
_NEEDS_API_KEY = frozenset({"openai", "azure_openai", "anthropic", "gemini", "cohere"})
# The types whose api_key is sent as ``Authorization: Bearer``.
_BEARER_KEY = frozenset({"openai", "openai_compatible", "vllm", "bedrock", "cohere"})
# Provider types whose adapter writes the API version into the path, and the path it
# calls (a base_url for them is the server's root: https://api.cohere.com).
_APPENDS_VERSION: Mapping[str, str] = MappingProxyType({"cohere": "/v2/rerank"})
_VERSION_AT_END = re.compile(r"/v\d+/?$")
_ENV_REFERENCE = re.compile(r"\$\{([^}]*)\}")
# An unclosed reference: "${" and the name after it, as far as a name goes.
_UNCLOSED_REFERENCE = re.compile(r"\$\{[A-Za-z0-9_]*")
# A section's entry, said in a message, where its name is no plural of it.
_SINGULAR = MappingProxyType({"passthrough": "pass-through"})
_SECRET_LOOKING = re.compile(r"^(sk-|sk_|xai-|gsk_|AIza|AKIA)|^[A-Za-z0-9_\-]{32,}$")


@dataclass(frozen=True, slots=True)
class Entry(Generic[S]):
    """A named spec with the means to point back at it."""

    name: str
    spec: S
    source_map: SourceMap
    path: NodePath

    def key(self, *sub: str | int) -> Position:
        return self.source_map.key((*self.path, *sub))

    def value(self, *sub: str | int) -> Position:
        return self.source_map.value((*self.path, *sub))


@dataclass(frozen=True, slots=True)
class LinkedProvider:
    entry: Entry[ProviderSpec]
    base_url: str | None
    api_key: str | None
    headers: Mapping[str, str]
    disabled_reason: str | None
    region: str | None = None
    project: str | None = None
    location: str | None = None
    credentials_file: str | None = None


@dataclass(frozen=True, slots=True)
class Linked:
    settings: SettingsSpec
    providers: Mapping[str, LinkedProvider]
    deployments: Mapping[str, Entry[DeploymentSpec]]
    groups: Mapping[str, Entry[GroupSpec]]
    routes: Mapping[str, Entry[RouteSpec]]
    teams: Mapping[str, Entry[TeamSpec]]
    keys: Mapping[str, LinkedKey]
    issuers: Mapping[str, LinkedIssuer]
    route_candidates: Mapping[str, tuple[str, ...]]
    pipelines: Mapping[str, str]
    served: Mapping[str, ServedServer]  # deployment -> the vLLM server aigw starts for it
    mcp_servers: Mapping[str, LinkedMcpServer]
    agents: Mapping[str, Agent] = field(default_factory=dict)  # what agent steps call
    guardrails: Mapping[str, Guardrail] = field(default_factory=dict)
    passthrough: Mapping[str, LinkedPassthrough] = field(default_factory=dict)


def link(
    validated: Validated, environ: Mapping[str, str], sink: DiagnosticSink, now: float,
    root: Path = Path("."),
) -> Linked:
    """Resolve every name and ${ENV} reference in ``validated``; ``now`` (epoch seconds)
    is what key expiry warnings are measured from; an issuer's jwks_file is read from
    the gateway directory ``root``."""
    tables = _merge_sections(validated, sink)
    broken = validated.broken
    providers = {
        name: _link_provider(entry, environ, sink)
        for name, entry in _entries(tables, "providers", ProviderSpec).items()
    }
    deployments = _entries(tables, "deployments", DeploymentSpec)
    groups = _entries(tables, "groups", GroupSpec)
    routes = _entries(tables, "routes", RouteSpec)
    teams = _entries(tables, "teams", TeamSpec)
    pipelines = {name: doc.path for name, doc in validated.pipelines.items()}

    # Entries that failed validation still count as defined: their own errors are reported.
    known_providers = _known(providers, validated, "providers")
    known_deployments = _known(deployments, validated, "deployments")
    known_groups = _known(groups, validated, "groups")
    known_pipelines = _known(pipelines, validated, "pipelines")
    for deployment in deployments.values():
        _check_deployment(deployment, known_providers, sink)
    served = link_served(
        deployments, providers,
        lambda text, position: _resolve_env(
            text, position, environ, [], sink,
            "set it where aigw serves; until then the vLLM server gets it empty"), sink)
    errors_before = sink.error_count
    for group in groups.values():
        _check_group(group, known_deployments, known_groups, sink)
    _check_fallback_cycles(groups, sink)
    check_group_kinds(groups, deployments, sink)
    for route in routes.values():
        _check_route(route, known_deployments, known_groups, known_pipelines, sink)
    routing_ok = sink.error_count == errors_before
    guardrail_entries = _entries(tables, "guardrails", GuardrailSpec)
    known_guardrails = _known(guardrail_entries, validated, "guardrails")
    for route in routes.values():
        check_route_guardrails(route, known_guardrails, sink, partial(
            _unknown, sink, codes.REF_GUARDRAIL, "guardrail", known=known_guardrails,
            where=f"route '{route.name}'", extra="guardrails are defined under guardrails:"))
    known_teams = _known(teams, validated, "teams")
    key_entries = _entries(tables, "keys", KeySpec)
    for key_name, key_entry in key_entries.items():
        team = key_entry.spec.team
        if team is not None and team not in known_teams:
            _unknown(sink, codes.REF_TEAM, "team", team, known_teams, key_entry.value("team"),
                     f"key '{key_name}'")
    keys = link_keys(
        key_entries,
        lambda text, position, unset: _resolve_env(text, position, environ, unset, sink),
        now, sink)
    known_routes = _known(routes, validated, "routes")
    mcp_entries = _entries(tables, "mcp_servers", McpServerSpec)
    known_mcp_servers = _known(mcp_entries, validated, "mcp_servers")
    passthrough_entries = _entries(tables, "passthrough", PassthroughSpec)
    known_passthrough = _known(passthrough_entries, validated, "passthrough")
    for passthrough in passthrough_entries.values():
        if passthrough.spec.provider not in known_providers:
            _unknown(sink, codes.REF_PROVIDER, "provider", passthrough.spec.provider,
                     known_providers, passthrough.value("provider"),
                     f"pass-through '{passthrough.name}'")
    for item in keys.values():
        for index, route_name in enumerate(item.entry.spec.routes or ()):
            if route_name not in known_routes:
                _unknown(sink, codes.REF_ROUTE, "route", route_name, known_routes,
                         item.entry.value("routes", index), f"key '{item.entry.name}'")
        for index, server_name in enumerate(item.entry.spec.mcp_servers or ()):
            if server_name not in known_mcp_servers:
                _unknown(sink, codes.REF_MCP_SERVER, "MCP server", server_name,
                         known_mcp_servers, item.entry.value("mcp_servers", index),
                         f"key '{item.entry.name}'")
        for index, passthrough_name in enumerate(item.entry.spec.passthrough or ()):
            if passthrough_name not in known_passthrough:
                _unknown(sink, codes.REF_PASSTHROUGH, "pass-through", passthrough_name,
                         known_passthrough, item.entry.value("passthrough", index),
                         f"key '{item.entry.name}'", "pass-throughs are defined under "
                         "passthrough:")
    issuers = link_issuers(
        _entries(tables, "issuers", IssuerSpec), known_teams, known_routes, known_mcp_servers,
        known_passthrough, root, lambda code, kind, name, known, position, where: _unknown(
            sink, code, kind, name, known, position, where), sink)

    candidates = {name: _route_candidates(entry.spec, groups) for name, entry in routes.items()}
    if routing_ok:
        for name, entry in routes.items():
            cache = entry.spec.cache
            embeddings = cache.semantic.embeddings if cache and cache.semantic else None
            if embeddings is not None and embeddings not in known_routes:
                _unknown(sink, codes.REF_ROUTE, "route", embeddings, known_routes,
                         entry.value("cache", "semantic", "embeddings"),
                         f"route '{name}' semantic cache", "it names an embeddings route")
        check_semantic_caches(routes, candidates, deployments, keys, sink)
        check_served_kinds(routes, lambda route: {
            deployments[m].spec.kind for m in candidates.get(route, ()) if m in deployments},
            lambda name: frozenset(guardrail_entries[name].spec.on)
            if name in guardrail_entries else None, sink)
    # Reachability is only worth saying about a routing table without errors: a typo
    # in a member or a route would otherwise also show as "not reachable" (and with no
    # routes at all, AGW316 already says it).
    complete = validated.complete
    routing_ok = routing_ok and not broken.get("routes") and not broken.get("groups")
    if complete and routes and routing_ok:
        _check_reachability(deployments, candidates, sink)
    if complete and not routes and not broken.get("routes") and validated.gateway is not None:
        sink.add(
            codes.NO_ROUTES,
            "no routes are defined, so apps can call nothing",
            validated.documents[0].source_map.default,
            "add a 'routes:' section naming the models apps send",
        )
    mcp_servers = link_mcp_servers(
        mcp_entries,
        lambda text, position, unset: _resolve_env(
            text, position, environ, unset, sink,
            "set it where aigw serves; until then this MCP server is disabled"),
        lambda text: bool(_SECRET_LOOKING.search(text)), sink)
    settings = validated.gateway.settings if validated.gateway is not None else SettingsSpec()
    agents = {
        name: link_agent(entry, lambda text, position, unset: _resolve_env(
            text, position, environ, unset, sink), sink)
        for name, entry in _entries(tables, "agents", AgentSpec).items()
    }
    guardrails = link_guardrails(
        guardrail_entries,
        lambda text, position, unset: _resolve_env(
            text, position, environ, unset, sink,
            "set it where aigw serves; until then this guardrail's checker counts as "
            "unreachable (its on_error decides)"),
        lambda text: bool(_SECRET_LOOKING.search(text)), sink)
    return Linked(
        settings=settings,
        providers=providers,
        deployments=deployments,
        groups=groups,
        routes=routes,
        teams=teams,
        keys=keys,
        issuers=issuers,
        route_candidates=candidates,
        pipelines=pipelines,
        served=served,
        mcp_servers=mcp_servers,
        agents=agents,
        guardrails=guardrails,
        passthrough=link_passthrough(passthrough_entries, providers, sink),
    )


def _known(table: Mapping[str, object], validated: Validated, section: str) -> Mapping[str, object]:
    """The names a reference may use: the table's, those of entries that failed validation
    (their own errors are reported) and, when a config file was lost, any name at all."""
    if not validated.complete:
        return _AnyName(table)
    return {**dict.fromkeys(validated.broken.get(section, ())), **table}


class _AnyName(Mapping[str, object]):
    """Holds every name: a lost file may define any of them, so none is reported undefined."""

    def __init__(self, table: Mapping[str, object]) -> None:
        self._table = table

    def __contains__(self, name: object) -> bool:
        return True

    def __getitem__(self, name: str) -> object:
        return self._table.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


def _merge_sections(
    validated: Validated, sink: DiagnosticSink
) -> dict[str, dict[str, Entry[Spec]]]:
    tables: dict[str, dict[str, Entry[Spec]]] = {section: {} for section in NAMED_SECTIONS}
    for document in validated.documents:
        for section in NAMED_SECTIONS:
            specs: Mapping[str, Spec] = getattr(document.spec, section)
            for name, spec in specs.items():
                entry: Entry[Spec] = Entry(name, spec, document.source_map, (section, name))
                first = tables[section].get(name)
                if first is not None:
                    sink.add(
                        codes.DUPLICATE_NAME,
                        f"{_SINGULAR.get(section, section[:-1])} '{name}' is defined twice",
                        entry.key(),
                        f"first defined at {first.key()}; names must be unique across files",
                    )
                    continue
                tables[section][name] = entry
    return tables


def _entries(
    tables: Mapping[str, Mapping[str, Entry[Spec]]], section: str, kind: type[S]
) -> dict[str, Entry[S]]:
    return {name: entry for name, entry in tables[section].items() if isinstance(entry.spec, kind)}  # type: ignore[misc]


def _link_provider(
    entry: Entry[ProviderSpec], environ: Mapping[str, str], sink: DiagnosticSink
) -> LinkedProvider:
    spec = entry.spec
    unset: list[str] = []

    def resolve(text: str | None, *path: str) -> str | None:
        if text is None:
            return None
        return _resolve_env(text, entry.value(*path), environ, unset, sink)

    for text, path in ((spec.api_key, ("api_key",)), (spec.base_url, ("base_url",)),
                       *((value, ("headers", name)) for name, value in spec.headers.items())):
        _unwritten_reference(text, entry.value(*path), sink)
    api_key = resolve(spec.api_key, "api_key")
    base_url = resolve(spec.base_url, "base_url")
    headers = {name: resolve(value, "headers", name) or "" for name, value in spec.headers.items()}
    if base_url:
        _check_base_url(base_url, entry, sink)
        _check_user_info(base_url, entry, sink)
    key_text = spec.api_key or ""
    if "${" not in key_text and _SECRET_LOOKING.search(key_text):
        sink.add(
            codes.LITERAL_SECRET,
            f"provider '{entry.name}' has a literal api_key in the config",
            entry.value("api_key"),
            "keep keys out of git: write api_key: ${SOME_ENV_VAR} and set it where aigw runs",
        )
    reason = None
    if spec.latency is not None and spec.type != "echo":
        sink.add(
            codes.PROVIDER_FIELD_NOT_APPLICABLE,
            f"provider '{entry.name}' of type '{spec.type}' cannot simulate latency",
            entry.key("latency"),
            "latency: applies only to providers of type echo; remove it here",
        )
    if spec.type in _NEEDS_BASE_URL and spec.base_url is None:
        sink.add(
            codes.PROVIDER_FIELD,
            f"provider '{entry.name}' of type '{spec.type}' needs a base_url",
            entry.key(),
            "add base_url: with the API's root URL, e.g. http://127.0.0.1:8000/v1",
        )
    if spec.type in _NEEDS_API_KEY and spec.api_key is None:
        sink.add(
            codes.PROVIDER_FIELD,
            f"provider '{entry.name}' of type '{spec.type}' needs an api_key",
            entry.key(),
            f"add api_key: ${{{spec.type.upper()}_API_KEY}} and set that variable",
        )
    _check_type_fields(entry, sink)
    cloud = {name: resolve(getattr(spec, name), name)
             for name in ("region", "project", "location", "credentials_file")}
    if unset:
        reason = f"environment variable {', '.join(unset)} is not set"
    elif (odd := not_ascii(headers.items(), api_key)) is not None:
        reason = odd
    elif spec.type in _EXTRAS and not _installed(_EXTRAS[spec.type]):
        install = f"pip install 'aigw[{spec.type}]'"
        reason = f"provider type '{spec.type}' needs {_EXTRAS[spec.type]}: {install}"
        sink.add(
            codes.PROVIDER_EXTRA_MISSING,
            f"provider '{entry.name}' of type '{spec.type}' needs {_EXTRAS[spec.type]}, which "
            "is not installed; its deployments will not serve",
            entry.value("type"),
            f"install the extra where aigw serves: {install}",
        )
    elif spec.type not in SERVED_PROVIDER_TYPES:
        reason = f"provider type '{spec.type}' has no adapter in this version of aigw"
        sink.add(
            codes.PROVIDER_NO_ADAPTER,
            f"provider '{entry.name}': {reason}; its deployments will not serve",
            entry.value("type"),
            "serve these routes through an 'echo' provider until the adapter lands",
        )
    return LinkedProvider(entry, base_url, api_key, headers, reason, **cloud)


def _check_type_fields(entry: Entry[ProviderSpec], sink: DiagnosticSink) -> None:
    """region for bedrock, project and location for vertex, and each only there."""
    spec = entry.spec
    for name, owner in _TYPE_FIELDS.items():
        if getattr(spec, name) is not None and spec.type != owner:
            sink.add(
                codes.PROVIDER_FIELD_NOT_APPLICABLE,
                f"provider '{entry.name}' of type '{spec.type}' does not take {name}",
                entry.key(name),
                f"{name}: applies only to providers of type {owner}; remove it here",
            )
    if spec.type == "vertex" and spec.api_key is not None:
        sink.add(
            codes.PROVIDER_FIELD_NOT_APPLICABLE,
            f"provider '{entry.name}' of type 'vertex' does not take an api_key",
            entry.key("api_key"),
            "vertex signs in with a service account: credentials_file: "
            "${GOOGLE_APPLICATION_CREDENTIALS}",
        )
    needed, hint = _NEEDS_FIELDS.get(spec.type, ((), ""))
    missing = [name for name in needed if getattr(spec, name) is None]
    if missing:
        sink.add(
            codes.PROVIDER_FIELD,
            f"provider '{entry.name}' of type '{spec.type}' needs {' and '.join(missing)}",
            entry.key(),
            hint,
        )


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package (google, for google.auth) is missing
        return False


# An environment variable named the shell's way, or half our way: ``$NAME``, ``$(NAME)``,
# ``{NAME}``. Taken as it is, that text would be sent to the provider as the key.
_SHELL_REFERENCE = re.compile(r"^(?:\$(?P<a>\w+)|\$\((?P<b>\w+)\)|\{(?P<c>\w+)\})$")


def _unwritten_reference(text: str | None, position: Position, sink: DiagnosticSink) -> None:
    found = _SHELL_REFERENCE.match(text or "")
    if found is not None:
        name = found["a"] or found["b"] or found["c"]
        sink.add(codes.ENV_SYNTAX, f"{text!r} is not read from the environment",
                 position, f"write ${{{name}}}")


def _check_base_url(url: str, entry: Entry[ProviderSpec], sink: DiagnosticSink) -> None:
    """A base_url that cannot be called (no scheme or host), or that names an operation
    the adapter appends itself."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        sink.add(codes.SCHEMA_VALUE, f"provider '{entry.name}' has base_url "
                 f"{shown_url(url)!r}, which is "
                 "not an http(s) URL with a host", entry.value("base_url"),
                 "write the API's root URL, e.g. https://api.example.com/v1")
    elif parsed.path.rstrip("/").endswith(("/chat/completions", "/embeddings", "/messages",
                                           "/rerank", "/images/generations", "/images/edits",
                                           "/moderations")):
        sink.add(codes.BASE_URL_OPERATION, f"provider '{entry.name}' has a base_url that names "
                 f"an operation ({parsed.path})", entry.value("base_url"),
                 "give the API's root (e.g. .../v1): aigw appends /chat/completions itself")
    elif entry.spec.type in _APPENDS_VERSION and (
            version := _VERSION_AT_END.search(parsed.path)) is not None:
        # Cohere's adapter posts to {base_url}/v2/rerank: a base_url written the OpenAI
        # way, with its version, would call /v2/v2/rerank, a 404 on every request.
        root = urllib.parse.urlunsplit(parsed._replace(path=parsed.path[:version.start()]))
        sink.add(codes.BASE_URL_VERSIONED, f"provider '{entry.name}' of type "
                 f"'{entry.spec.type}' has a base_url that ends in an API version "
                 f"({version.group().rstrip('/')}), which its adapter appends itself",
                 entry.value("base_url"),
                 f"write base_url: {shown_url(root)} (aigw calls "
                 f"{_APPENDS_VERSION[entry.spec.type]} under it)")


def _check_user_info(url: str, entry: Entry[ProviderSpec], sink: DiagnosticSink) -> None:
    """User info in a base_url is sent as ``Authorization: Basic``: with an api_key sent
    as a bearer token (or an Authorization header of ``headers:``), a request would carry
    two, which aiohttp refuses on every call (a 502) and httpx settles by dropping the
    key."""
    if urllib.parse.urlsplit(url).username is None:
        return
    spec = entry.spec
    header = next((name for name in spec.headers if name.lower() == "authorization"), None)
    if header is not None:
        other, drop = f"an {header} header", f"the {header} entry of headers:"
    elif spec.api_key is not None and spec.type in _BEARER_KEY:
        other, drop = "its api_key as Authorization: Bearer", "the api_key"
    else:
        return
    sink.add(codes.BASE_URL_USER_INFO_AND_KEY,
             f"provider '{entry.name}' has user info in its base_url "
             f"({shown_url(url)!r}), sent as Authorization: Basic, and sends {other}",
             entry.value("base_url"),
             "a request carries one Authorization header: keep the credential the server "
             f"checks (remove user:password@ from base_url, or {drop})")


def _resolve_env(
    text: str,
    position: Position,
    environ: Mapping[str, str],
    unset: list[str],
    sink: DiagnosticSink,
    unset_hint: str = "set it where aigw serves; until then what uses it is disabled",
) -> str:
    """Replace each ${NAME} in ``text``; an unset NAME is a warning and recorded in ``unset``."""
    if text.count("${") != len(_ENV_REFERENCE.findall(text)):
        # Only the reference is quoted: the rest may be a key, or a header with one in it.
        unclosed = _UNCLOSED_REFERENCE.search(_ENV_REFERENCE.sub("", text))
        shown = unclosed[0] if unclosed else "${"
        sink.add(codes.ENV_SYNTAX, f"unclosed ${{ in {shown!r}", position, "write ${NAME}")
        return text

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if not ENV_NAME_PATTERN.match(name) and _SECRET_LOOKING.search(name):
            sink.add(codes.ENV_SYNTAX, "a ${...} reference holds what looks like a key, not "
                     "an environment variable name", position,
                     "set the key in an environment variable and write its name: ${API_KEY}")
            return ""
        if not ENV_NAME_PATTERN.match(name):
            sink.add(
                codes.ENV_SYNTAX,
                f"'{name}' is not a valid environment variable name",
                position,
                "names are letters, digits and underscores, not starting with a digit",
            )
            return ""
        value = environ.get(name)
        if not value:  # set to nothing is as good as unset: a key of "" is refused upstream
            unset.append(name)
            sink.add(
                codes.ENV_UNSET,
                f"environment variable {name} is not set" if value is None
                else f"environment variable {name} is set, but empty",
                position,
                unset_hint,
            )
            return ""
        return value

    return _ENV_REFERENCE.sub(substitute, text)


def _check_deployment(
    entry: Entry[DeploymentSpec], providers: Mapping[str, object], sink: DiagnosticSink
) -> None:
    spec = entry.spec
    if spec.provider not in providers:
        _unknown(sink, codes.REF_PROVIDER, "provider", spec.provider, providers,
                 entry.value("provider"), f"deployment '{entry.name}'")
    provider = providers.get(spec.provider)
    if isinstance(provider, LinkedProvider):
        check_deployment_kind(entry, provider.entry.spec.type, sink)
    if spec.max_output_tokens is not None and spec.max_output_tokens > spec.context_window:
        sink.add(
            codes.OUTPUT_EXCEEDS_CONTEXT,
            f"deployment '{entry.name}': max_output_tokens {spec.max_output_tokens} is larger "
            f"than context_window {spec.context_window}",
            entry.value("max_output_tokens"),
            "the output shares the context window with the prompt; lower max_output_tokens",
        )
    _check_pass_params(entry, sink)


# What a call that is no chat sends upstream: the fields the gateway reads.
_SENT_FIELDS = {"embeddings": "input, dimensions and user",
                "rerank": "query, documents, top_n and max_tokens_per_doc",
                "image": "the image request's own fields (prompt, n, size, quality, ...)",
                "moderation": "input",
                "transcription": "the client's form fields, file included",
                "speech": "the client's input, voice and format fields",
                "realtime": "the client's WebSocket events, as they come"}


def _check_pass_params(entry: Entry[DeploymentSpec], sink: DiagnosticSink) -> None:
    listed = entry.spec.pass_params
    if listed is None:
        return
    if entry.spec.kind != "chat":
        sink.add(codes.PASS_PARAMS_NOT_CHAT,
                 f"deployment '{entry.name}' serves {entry.spec.kind}, and pass_params "
                 "applies to chat parameters only", entry.key("pass_params"),
                 f"remove pass_params: {entry.spec.kind} calls send only "
                 f"{_SENT_FIELDS[entry.spec.kind]}")
    for index, name in enumerate(listed):
        if name in READ_CHAT_PARAMS:
            sink.add(codes.PASS_PARAM_READ,
                     f"deployment '{entry.name}': pass_params lists '{name}', a field the "
                     "gateway reads and translates itself", entry.value("pass_params", index),
                     f"remove '{name}': it is never refused by pass_params (capabilities "
                     "decide who takes tools, streaming and images)")


def _check_group(
    entry: Entry[GroupSpec],
    deployments: Mapping[str, object],
    groups: Mapping[str, object],
    sink: DiagnosticSink,
) -> None:
    if not entry.spec.members:
        sink.add(codes.EMPTY_GROUP, f"group '{entry.name}' has no members", entry.value("members"),
                 "list the deployments that serve this group")
    seen: set[str] = set()
    for index, member in enumerate(entry.spec.members):
        where = entry.value("members", index)
        if member in seen:
            sink.add(codes.GROUP_DUPLICATE_MEMBER,
                     f"group '{entry.name}' lists deployment '{member}' twice", where,
                     "remove the repeat; use a weighted strategy to favour a member")
        seen.add(member)
        if member in deployments:
            continue
        if member in groups:
            sink.add(codes.REF_DEPLOYMENT,
                     f"group '{entry.name}' lists '{member}', which is a group, as a member",
                     where, f"members are deployments; put '{member}' under fallbacks: instead")
        else:
            _unknown(sink, codes.REF_DEPLOYMENT, "deployment", member, deployments, where,
                     f"group '{entry.name}'")
    for path, fallback in entry.spec.fallback_references():
        if fallback not in groups:
            _unknown(sink, codes.REF_GROUP, "group", fallback, groups,
                     entry.value(*path), f"group '{entry.name}'")
    for member in entry.spec.weights:
        if member not in entry.spec.members:
            sink.add(codes.GROUP_WEIGHT_NOT_MEMBER,
                     f"group '{entry.name}' weighs '{member}', which is not one of its members",
                     entry.key("weights", member),
                     _did_you_mean(member, entry.spec.members)
                     or f"members: {', '.join(entry.spec.members) or 'none'}")
    if entry.spec.weights and entry.spec.strategy != "weighted":
        sink.add(codes.WEIGHTS_UNUSED,
                 f"group '{entry.name}' gives weights, which strategy "
                 f"'{entry.spec.strategy}' does not read", entry.key("weights"),
                 "set strategy: weighted, or remove weights")


def _check_fallback_cycles(groups: Mapping[str, Entry[GroupSpec]], sink: DiagnosticSink) -> None:
    reported: set[frozenset[str]] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        for path, fallback in groups[name].spec.fallback_references():
            if fallback not in groups:
                continue
            if fallback in stack:
                cycle = (*stack[stack.index(fallback):], fallback)
                if frozenset(cycle) not in reported:
                    reported.add(frozenset(cycle))
                    sink.add(codes.FALLBACK_CYCLE,
                             f"fallback cycle: {' -> '.join(cycle)}",
                             groups[name].value(*path),
                             "fallbacks must end somewhere; remove one link of the cycle")
                continue
            visit(fallback, (*stack, fallback))

    for name in groups:
        visit(name, (name,))


def _check_route(
    entry: Entry[RouteSpec],
    deployments: Mapping[str, object],
    groups: Mapping[str, object],
    pipelines: Mapping[str, object],
    sink: DiagnosticSink,
) -> None:
    spec = entry.spec
    where = f"route '{entry.name}'"
    if spec.group is not None and spec.group not in groups:
        _unknown(sink, codes.REF_GROUP, "group", spec.group, groups, entry.value("group"), where)
    if spec.deployment is not None and spec.deployment not in deployments:
        _unknown(sink, codes.REF_DEPLOYMENT, "deployment", spec.deployment, deployments,
                 entry.value("deployment"), where)
    if spec.pipeline is not None and spec.pipeline not in pipelines:
        _unknown(sink, codes.REF_PIPELINE, "pipeline", spec.pipeline, pipelines,
                 entry.value("pipeline"), where, "pipelines are the files pipelines/<name>.yaml")


def _route_candidates(spec: RouteSpec, groups: Mapping[str, Entry[GroupSpec]]) -> tuple[str, ...]:
    if spec.deployment is not None:
        return (spec.deployment,)
    if spec.group is None:
        return ()
    ordered: list[str] = []
    visited: set[str] = set()
    queue = [spec.group]
    while queue:  # breadth first: the group's own members, then each fallback's, in order
        name = queue.pop(0)
        if name in visited or name not in groups:
            continue
        visited.add(name)
        ordered.extend(m for m in groups[name].spec.members if m not in ordered)
        queue.extend(name for _path, name in groups[name].spec.fallback_references())
    return tuple(ordered)


def _check_reachability(
    deployments: Mapping[str, Entry[DeploymentSpec]],
    candidates: Mapping[str, Iterable[str]],
    sink: DiagnosticSink,
) -> None:
    reachable = {name for names in candidates.values() for name in names}
    for name, entry in deployments.items():
        if name not in reachable:
            sink.add(codes.UNREACHABLE_DEPLOYMENT,
                     f"deployment '{name}' is not reachable from any route", entry.key(),
                     "add it to a group that a route uses, or give it a route of its own")


def _did_you_mean(name: str, known: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def _unknown(
    sink: DiagnosticSink,
    code: codes.Code,
    kind: str,
    name: str,
    known: Mapping[str, object],
    position: Position,
    where: str,
    extra: str | None = None,
) -> None:
    hint = _did_you_mean(name, known) or (
        f"defined {kind}s: {', '.join(sorted(known))}" if known else f"no {kind}s are defined"
    )
    if extra:
        hint = f"{hint} ({extra})"
    sink.add(code, f"{where} refers to {kind} '{name}', which is not defined", position, hint)


