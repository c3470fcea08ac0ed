"""The ``aigw`` command line: check, compile, schema, serve and reload a gateway directory."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aigw import __version__
from aigw.compiler import (
    CompileResult,
    compile_gateway,
    overview,
    render_github,
    render_json,
    render_text,
)
from aigw.compiler.diagnostics import shown_url
from aigw.compiler.graph import ApiKey, Graph, PreviousSecret, Route
from aigw.compiler.keys import shown_moment
from aigw.compiler.schema import json_schemas
from aigw.reload_signal import note_early_reloads

_EPILOG = """\
examples:
  aigw check                      lint ./gateway.yaml, policies/ and pipelines/
  aigw check deploy/gw --format github --strict
  aigw compile --format json      print the compiled graph
  aigw serve --port 8080          serve the gateway on 127.0.0.1:8080
  aigw schema                     write JSON Schemas and the Cedar schema into ./schemas/
  aigw test                       run the routing tests in policies/tests/
  aigw check --against main       show the Cedar decisions this change flips
  aigw namespaces                 list the key namespaces on the gateway's Redis
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not UTF-8 reaches a diagnostic as surrogate escapes; under a
        # locale that encodes strictly (en_US.UTF-8) writing it raised UnicodeEncodeError
        # in place of the diagnostics. It is shown escaped (\udcff) instead.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    result: int = args.run(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aigw",
        description="aigw compiles a gateway directory (gateway.yaml, policies/*.cedar, "
        "pipelines/*.yaml) into one checked routing graph and serves it behind "
        "OpenAI-compatible endpoints.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"aigw {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = _command(
        commands,
        "check",
        "compile the config and report every problem",
        "aigw check\n  aigw check ./gw --format github --strict",
        "Exit 1 on any error; warnings fail only with --strict.",
    )
    check.add_argument("--format", choices=("text", "json", "github"), default="text")
    check.add_argument("--strict", action="store_true", help="treat warnings as errors")
    check.add_argument("--against", metavar="GIT_REF", default=None,
                       help="also compare every Cedar decision with the config at GIT_REF")
    check.add_argument("--allow-widening", action="store_true",
                       help="with --against: do not fail when access widens")
    check.set_defaults(run=_run_check)

    test = _command(
        commands,
        "test",
        "run the routing tests in policies/tests/*.yaml",
        "aigw test\n  aigw test deploy/gw",
        "Each case is a request, the live metrics it sees and the expected decision, "
        "deployment or order; nothing is called. Exit 1 when a case fails.",
    )
    test.set_defaults(run=_run_test)

    compile_ = _command(
        commands,
        "compile",
        "print the compiled graph and its fingerprint",
        "aigw compile\n  aigw compile --format json | jq .routes",
        "Exit 1 (with diagnostics on stderr) when the config has errors.",
    )
    compile_.add_argument("--format", choices=("text", "json"), default="text")
    compile_.set_defaults(run=_run_compile)

    schema = _command(
        commands,
        "schema",
        "write JSON Schemas for the YAML files",
        "aigw schema            # writes ./schemas/*.json\n  aigw schema --check",
        "Point yaml-language-server at schemas/gateway.schema.json for "
        "completion and checks in editors.",
    )
    schema.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when the files in schemas/ are stale",
    )
    schema.set_defaults(run=_run_schema)

    serve = _command(
        commands,
        "serve",
        "serve the gateway over HTTP",
        "aigw serve\n  aigw serve ./gw --host 0.0.0.0 --port 8080 --watch",
        "Reload without dropping requests: SIGHUP, POST /admin/reload, or --watch.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=4000, help="port to bind (default 4000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--watch", action="store_true", help="reload when a config file changes")
    serve.add_argument("--graceful-timeout", type=_seconds, default=30.0, metavar="SECONDS",
                       help="on SIGTERM, how long requests in flight (streams too) may take "
                            "to finish before they are cut (default 30)")
    serve.set_defaults(run=_run_serve)

    route = _command(
        commands,
        "route",
        "explain how a request would be routed, calling nothing",
        "aigw route --model fast --prompt-tokens 9000 --max-tokens 500",
        "Prints the groups in order, each candidate with its expected cost, and "
        "every deployment dropped with the reason.",
    )
    route.add_argument("--model", required=True, help="the model (route) name an app sends")
    route.add_argument("--key", default=None, help="the API key's name, to check access")
    route.add_argument("--subject", default=None,
                       help="a JWT's caller instead of a key: ISSUER#PRINCIPAL (corp#alice)")
    route.add_argument("--team", default=None,
                       help="the team the subject's issuer would map it to by its claim")
    route.add_argument("--prompt-tokens", type=int, default=100)
    route.add_argument("--max-tokens", type=int, default=None)
    route.add_argument("--stream", action="store_true")
    route.add_argument("--user", default=None, help="the end user (the request's user field)")
    route.add_argument("--latency-sla-ms", type=int, default=None)
    route.add_argument("--budget-remaining", type=float, default=None)
    route.add_argument("--tag", action="append", default=[], help="a request tag (repeatable)")
    route.set_defaults(run=_run_route)

    namespaces = _command(
        commands,
        "namespaces",
        "list the key namespaces on the gateway's Redis, with their key counts",
        "aigw namespaces\n  aigw namespaces ./gw --store redis://redis:6379/0",
        "Every prefix of keys on the Redis database (one SCAN of it), the namespaces "
        "gateways started under first; the config's settings.redis_namespace is marked *. "
        "A changed redis_namespace leaves the old one's keys behind: they show here.",
    )
    namespaces.add_argument("--store", default=None, metavar="URL",
                            help="the Redis URL (default: the config's settings.store)")
    namespaces.set_defaults(run=_run_namespaces)

    reload = _command(
        commands,
        "reload",
        "ask a running gateway to reload its config",
        "AIGW_ADMIN_KEY=... aigw reload --url http://127.0.0.1:4000",
        "Calls POST /admin/reload with an admin key and prints the result.",
    )
    reload.add_argument("--url", default="http://127.0.0.1:4000")
    reload.add_argument("--key", default=None, help="admin key (default: $AIGW_ADMIN_KEY)")
    reload.set_defaults(run=_run_reload)
    return parser


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    example: str,
    detail: str,
) -> argparse.ArgumentParser:
    command = commands.add_parser(
        name,
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}. {detail}",
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if name != "reload":
        command.add_argument(
            "dir", nargs="?", default=".", metavar="DIR", help="the gateway directory (default: .)"
        )
    return command


def _run_check(args: argparse.Namespace) -> int:
    result = compile_gateway(args.dir)
    status = 1 if args.strict and result.warnings else 0
    if args.format == "json" and result.ok and args.against is not None:
        # One document: the flips go into it, under "against".
        from aigw.policy_diff import against_document

        flipped, against = against_document(Path(args.dir), args.against, args.allow_widening)
        sys.stdout.write(render_json(result.diagnostics, {"against": against}))
        return max(status, flipped)
    _print_diagnostics(result, args.format, sys.stdout, args.dir)
    if not result.ok:
        return 1
    if args.against is None:
        return status
    from aigw.policy_diff import check_against  # evaluates policies: the runtime's code

    return max(status, check_against(Path(args.dir), args.against, args.allow_widening))


def _run_test(args: argparse.Namespace) -> int:
    from aigw.policy_test import run_tests

    result = compile_gateway(args.dir)
    if result.graph is None:
        _print_diagnostics(result, "text", sys.stderr, args.dir)
        return 1
    return run_tests(result.graph, Path(args.dir))


def _print_diagnostics(result: CompileResult, fmt: str, stream: object, root: str) -> None:
    out = stream if hasattr(stream, "write") else sys.stdout
    if fmt == "json":
        out.write(render_json(result.diagnostics))
    elif fmt == "github":
        out.write(render_github(result.diagnostics, "" if root == "." else root))
    else:
        out.write(render_text(result.diagnostics, result.sources))


def _run_compile(args: argparse.Namespace) -> int:
    result = compile_gateway(args.dir)
    if result.graph is None:
        _print_diagnostics(result, "text", sys.stderr, args.dir)
        return 1
    if args.format == "json":
        sys.stdout.write(json.dumps(describe_graph(result.graph), indent=2) + "\n")
    else:
        sys.stdout.write(_graph_text(result.graph))
    return 0


def describe_graph(graph: Graph) -> dict[str, object]:
    """A JSON-ready summary of the graph, with no secrets in it."""
    return {
        "fingerprint": graph.fingerprint,
        "providers": {
            name: {
                "type": p.type,
                # As diagnostics show it: user info (sent as Basic auth) and a query can
                # carry a credential.
                "base_url": None if p.base_url is None else shown_url(p.base_url),
                "enabled": p.enabled,
                "disabled_reason": p.disabled_reason,
            }
            for name, p in graph.providers.items()
        },
        "deployments": {
            name: {
                "provider": d.provider.name,
                "model": d.model,
                "context_window": d.context_window,
                "max_output_tokens": d.max_output_tokens,
                "price": {"input": d.price.input, "output": d.price.output},
                "tags": list(d.tags),
                "capabilities": sorted(d.capabilities),
                "pass_params": None if d.pass_params is None else sorted(d.pass_params),
                # The command line, and only the names of what it adds to the environment:
                # the values may be secrets (HF_TOKEN, the provider's key).
                "serve": {"argv": list(d.serve.argv),
                          "env": [name for name, _ in d.serve.env]} if d.serve else None,
            }
            for name, d in graph.deployments.items()
        },
        "groups": {
            name: {
                "strategy": g.strategy,
                "members": [m.name for m in g.members],
                "fallbacks": list(g.fallbacks),
            }
            for name, g in graph.groups.items()
        },
        "routes": {
            name: {
                "kind": r.kind.value,
                "target": r.target,
                "candidates": [d.name for d in r.candidates],
                "cache": overview.route_cache(r.cache),
                "guardrails": overview.route_guardrails(r.guardrails),
            }
            for name, r in graph.routes.items()
        },
        "mcp_servers": {name: overview.mcp_server(server)
                        for name, server in graph.mcp_servers.items()},
        "passthrough": {name: overview.passthrough(entry)
                        for name, entry in graph.passthrough.items()},
        "teams": sorted(graph.teams),
        "keys": [{"name": key.name, **overview.key_entry(key, previous)}
                 for key, previous in overview.keys(graph)],
        "issuers": {issuer.name: overview.issuer_entry(issuer)
                    for issuer in overview.issuers(graph)},
        "policies": [
            {"id": p.id, "file": p.file, "line": p.line, "priority": p.priority}
            for p in graph.policies
        ],
        "pipelines": sorted(graph.pipelines),
    }


def _graph_text(graph: Graph) -> str:
    lines = [f"graph {graph.fingerprint}"]
    for name, route in sorted(graph.routes.items()):
        served = ", ".join(
            d.name + ("" if d.provider.enabled else " (disabled)") for d in route.candidates
        )
        lines.append(f"  route {name} -> {route.kind.value} {route.target}: {served or '-'}"
                     + _route_extras(route))
    for name, entry in sorted(graph.passthrough.items()):
        lines.append(f"  passthrough {name} -> {entry.provider.name}: {', '.join(entry.globs)} "
                     f"[{', '.join(sorted(entry.methods))}]")
    for key, previous in overview.keys(graph):
        lines.append(f"  key {key.name}{_key_extras(key, previous)}")
    for issuer in overview.issuers(graph):
        shown_issuer = overview.issuer_entry(issuer)
        team = shown_issuer["team"]
        shown = (f"team by {team['claim']}" if isinstance(team, dict)
                 else f"team {team}" if team else "no team")
        lines.append(f"  issuer {issuer.name} {issuer.issuer}: aud {', '.join(issuer.audiences)}, "
                     f"{', '.join(issuer.algorithms)}, {shown}, principal {issuer.principal_claim}")
    lines.append(
        f"  {len(graph.providers)} providers, {len(graph.deployments)} deployments, "
        f"{len(graph.groups)} groups, {len(graph.routes)} routes, {len(graph.teams)} teams, "
        f"{len(graph.keys_by_name)} keys, {len(graph.policies)} policies"
    )
    return "\n".join(lines) + "\n"


def _route_extras(route: Route) -> str:
    """`` [cache 3600 s team, by model, semantic via embed >= 0.95] [guardrails pii input,output
    redact]``"""
    extras = ""
    cache = route.cache
    if cache is not None:
        semantic = cache.semantic
        extras += f" [cache {cache.ttl_s:g} s {cache.scope}" + (
            ", by model" if cache.by_model else "") + (
            f", semantic via {semantic.embeddings} >= {semantic.threshold:g}]"
            if semantic is not None else "]")
    if route.guardrails is not None:
        extras += " [guardrails " + ", ".join(
            f"{g.name} {','.join(sorted(g.sides))} {g.action}"
            for g in overview.each_guardrail(route.guardrails)) + "]"
    return extras


def _key_extras(key: ApiKey, previous: list[PreviousSecret]) -> str:
    """``: team eng, admin, mcp_servers docs, expires 2027-01-01T00:00:00Z, previous until
    2026-12-15T00:00:00Z``; nothing for a key of no team with nothing limiting it."""
    parts = [f"team {key.team.name}"] if key.team else []
    if key.admin:
        parts.append("admin")
    for field, names in (("routes", key.routes), ("mcp_servers", key.mcp_servers),
                         ("passthrough", key.passthrough)):
        if names is not None:
            parts.append(f"{field} {', '.join(sorted(names)) or '(none)'}")
    if key.expires_at is not None:
        parts.append(f"expires {shown_moment(key.expires_at)}")
    parts.extend(f"previous until {'(while listed)' if p.until is None else shown_moment(p.until)}"
                 for p in previous)
    return f": {', '.join(parts)}" if parts else ""


CEDAR_SCHEMA_FILE = "policies.cedarschema"


def _run_schema(args: argparse.Namespace) -> int:
    if not Path(args.dir).is_dir():  # a typo would make a new tree of schemas elsewhere
        print(f"aigw schema: {args.dir} is not a directory (the gateway directory, whose "
              "schemas/ it writes)", file=sys.stderr)
        return 1
    target = Path(args.dir) / "schemas"
    files = dict(json_schemas())
    if (Path(args.dir) / "gateway.yaml").exists():  # the Cedar schema is the config's own
        result = compile_gateway(args.dir, environ={})
        if result.graph is None:
            _print_diagnostics(result, "text", sys.stderr, args.dir)
            return 1
        files[CEDAR_SCHEMA_FILE] = result.graph.authorization.schema_text
    stale = []
    try:
        for name, text in files.items():
            path = target / name
            current = path.read_text(encoding="utf-8") if path.is_file() else None
            if current == text:
                continue
            stale.append(path)
            if not args.check:
                target.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    except OSError as exc:  # schemas is a file, or not writable: said, not a traceback
        print(f"aigw schema: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    verb = "stale" if args.check else "wrote"
    for path in stale:
        print(f"{verb} {path}")
    if args.check and stale:
        print("run 'aigw schema' and commit the result", file=sys.stderr)
        return 1
    return 0


def _port(text: str) -> int:
    """A TCP port, 0 to 65535 (argparse's error for anything else)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port (0 to 65535), got {text!r}")
    return value


def _seconds(text: str) -> float:
    """A number of seconds, 0 or more (argparse's error for anything else)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds (0 or more), got {text!r}")
    return value


def _run_serve(args: argparse.Namespace) -> int:
    note_early_reloads()  # before the seconds of importing and compiling
    from aigw.runtime.server import ServeOptions, serve  # the runtime only when serving

    return serve(
        ServeOptions(
            root=Path(args.dir),
            host=args.host,
            port=args.port,
            workers=args.workers,
            watch=args.watch,
            graceful_timeout_s=args.graceful_timeout,
        )
    )


def _run_namespaces(args: argparse.Namespace) -> int:
    import asyncio

    from aigw.runtime.store.namespaces import listed, render_namespaces
    from aigw.runtime.store.redis_store import REDIS_ERRORS

    result = compile_gateway(args.dir)
    if result.graph is None:
        _print_diagnostics(result, "text", sys.stderr, args.dir)
        return 1
    settings = result.graph.settings
    url = args.store or settings.store
    if not url.startswith(("redis://", "rediss://", "unix://")):
        print(f"settings.store is {url!r}, not Redis: no namespaces (pass --store URL)",
              file=sys.stderr)
        return 1
    try:
        uses = asyncio.run(listed(url))
    except REDIS_ERRORS as exc:
        print(f"aigw: cannot list the namespaces on {shown_url(url)}: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(render_namespaces(uses, settings.redis_namespace))
    return 0


def _run_route(args: argparse.Namespace) -> int:
    from aigw.runtime.errors import BadRequest
    from aigw.runtime.identity import stand_in
    from aigw.runtime.policy import Facts, PolicyEngine, Principal, principal_for
    from aigw.runtime.policy_live import StateLive
    from aigw.runtime.policy_plan import plan_route
    from aigw.runtime.routing.explain import render
    from aigw.runtime.routing.state import RoutingState

    result = compile_gateway(args.dir)
    if result.graph is None:
        _print_diagnostics(result, "text", sys.stderr, args.dir)
        return 1
    graph = result.graph
    if args.model not in graph.routes:
        known = ", ".join(sorted(graph.routes)) or "none"
        print(f"no route named '{args.model}' (routes: {known})", file=sys.stderr)
        return 1
    if args.key is not None and args.key not in graph.keys_by_name:
        print(f"no key named '{args.key}'", file=sys.stderr)
        return 1
    route = graph.routes[args.model]
    key = graph.keys_by_name.get(args.key) if args.key is not None else None
    if args.subject is not None or args.team is not None:
        if args.subject is None:
            print("--team names a subject's team: give the --subject too", file=sys.stderr)
            return 2
        if key is not None:
            print("name a key (--key) or a subject (--subject), not both", file=sys.stderr)
            return 2
        try:
            key = stand_in(graph, args.subject, args.team)
        except BadRequest as exc:
            print(f"--{exc.param or 'subject'}: {exc.message}", file=sys.stderr)
            return 1
    principal = (principal_for(graph.authorization, key, args.user) if key is not None
                 else Principal("ApiKey", "", None))
    facts = Facts(
        route=route.name, estimated_tokens=args.prompt_tokens, max_tokens=args.max_tokens,
        stream=args.stream,
        latency_sla_ms=(args.latency_sla_ms if args.latency_sla_ms is not None
                        else round(route.deadline_s * 1000)),
        budget_remaining=args.budget_remaining, tags=tuple(args.tag),
    )
    state = RoutingState()
    state.sync(graph)
    plan = plan_route(graph, PolicyEngine(graph, StateLive(state)), principal, facts, state,
                      key=key)
    if key is None:
        who = "an unnamed key (pass --key NAME)"
    elif key.issuer is None:
        who = str(principal)
    else:  # a JWT's caller: which issuer's, and in which team
        team = f", team {key.team.name}" if key.team is not None else ""
        who = f"{principal} ({key.name}{team})"
    if graph.authorization.enforced:
        verdict = "allowed" if plan.invoke.allowed else "denied"
        print(f"invoke as {who}: {verdict} by {', '.join(plan.invoke.policies) or 'no policy'}")
    if not plan.invoke.allowed:
        return 0
    if route.group is None:
        print(f"route {args.model} runs pipeline '{route.target}'")
        return 0
    sys.stdout.write(render(args.model, list(plan.tiers), args.prompt_tokens, args.max_tokens))
    return 0


def _run_reload(args: argparse.Namespace) -> int:
    import httpx

    key = args.key or os.environ.get("AIGW_ADMIN_KEY")
    if not key:
        print("aigw reload needs an admin key: --key or $AIGW_ADMIN_KEY", file=sys.stderr)
        return 2
    try:
        response = httpx.post(
            f"{args.url.rstrip('/')}/admin/reload",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL is no HTTPError
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    try:
        answer = response.json()
    except ValueError:  # not a gateway that answered
        print(f"{args.url} answered {response.status_code}, not with JSON (is it an aigw "
              f"gateway?): {response.text[:500]}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0 if response.status_code == 200 else 1
