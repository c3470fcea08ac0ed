"""Cedar ``route`` filtering for a 10-member group: what the policy stage adds to a request.

Run: python bench/cedar_bench.py [--iterations N]

Each sample is what a request pays between ``eligible`` and the strategy: its context
encoded, then ``RequestGate.filter`` over the 10 candidates (at most one
``is_authorized_batch`` call). The policies are the shipped ones (two permit-alls and
the three routing policies), so each candidate's live latency and error rate and the
request's SLA and budget are read. Cases:

    warm         nothing changed since the previous request
    drift        every request moves every latency, error rate, the SLA and the budget,
                 none across a policy's threshold (the steady state under load): the
                 decisions still come from the cache, keyed by the comparisons' outcomes
    one miss     as drift, and the decision about one deployment is not in the cache
                 (dropped before each request, as when it crossed a threshold): one
                 Cedar request, its entity rebuilt, nine cached decisions
    cold         a fresh engine each request: every entity built, 10 Cedar requests
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from aigw.compiler import compile_gateway
from aigw.compiler.graph import Graph
from aigw.runtime.policy import Facts, PolicyEngine, RequestGate, principal_for
from aigw.runtime.policy_live import StateLive
from aigw.runtime.providers.registry import build_adapters
from aigw.runtime.routing.breaker import Permit
from aigw.runtime.routing.candidates import Candidate
from aigw.runtime.routing.state import RoutingState
from aigw.runtime.tokens import TokenCounter

REPO = Path(__file__).resolve().parent.parent
MEMBERS = [f"d{i}" for i in range(10)]


def _config() -> str:
    deployments = "\n".join(
        f"  {m}: {{provider: {'local' if i % 2 else 'gpu'}, model: {m}, context_window: 32000, "
        f"price: {{input: {i + 1}, output: {2 * i + 1}}}}}"
        for i, m in enumerate(MEMBERS)
    )
    return (
        "version: 1\nproviders:\n  local: {type: echo}\n"
        "  gpu: {type: openai_compatible, base_url: 'http://127.0.0.1:9/v1'}\n"
        f"deployments:\n{deployments}\n"
        f"groups:\n  g: {{members: [{', '.join(MEMBERS)}]}}\n"
        "routes:\n  r: {group: g}\n"
        "teams:\n  eng: {}\n"
        "keys:\n  app: {team: eng, sha256: "
        "2f0527c3d35a1f337ec6033b75e33c053e72e7122963d86dffe7c2f10bcbb482}\n"
    )


def _graph(scratch: Path) -> Graph:
    (scratch / "gateway.yaml").write_text(_config())
    shutil.copytree(REPO / "policies", scratch / "policies",
                    ignore=shutil.ignore_patterns("tests"))
    graph = compile_gateway(scratch, environ={}).graph
    assert graph is not None and graph.authorization.enforced
    return graph


def measure(graph: Graph, case: str, iterations: int) -> tuple[float, float]:
    state = RoutingState()
    state.sync(graph)
    stats = [state.stats[m] for m in MEMBERS]
    for i, item in enumerate(stats):
        item.latency_ms = 100.0 + 7 * i
    adapters = build_adapters(graph.providers, TokenCounter())
    candidates = [Candidate(graph.deployments[m], adapters[graph.deployments[m].provider.name],
                            1000) for m in MEMBERS]
    key = next(iter(graph.keys_by_sha256.values()))
    principal = principal_for(graph.authorization, key, None)
    engine = PolicyEngine(graph, StateLive(state))
    samples = []
    for n in range(iterations):
        sla, budget = 400, 25.0
        if case in ("drift", "one miss"):
            for i, item in enumerate(stats):  # new values, all below the SLA
                item.latency_ms = 100.0 + (n * 7 + i * 13) % 250
                item.breaker.record(state.clock(), ok=True, permit=Permit.CALL)
            sla, budget = 400 - n % 50, 25.0 + (n % 1000) / 100
        if case == "one miss":  # forget what was decided about d0, and its entity
            stats[0].latency_ms = 50.0 + n % 300 + (n // 300) / 1000
            for cached in [k for k in engine._decisions if "d0" in k]:
                del engine._decisions[cached]
        if case == "cold":
            engine = PolicyEngine(graph, StateLive(state))
        facts = Facts(route="r", estimated_tokens=1200, max_tokens=200, stream=False,
                      latency_sla_ms=sla, budget_remaining=budget)
        started = time.perf_counter_ns()
        RequestGate(engine, principal, facts, "key 'app'").filter(candidates)
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * len(samples)) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=5000)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {sys.platform}; "
          f"{args.iterations} filters per case, 10 candidates each\n")
    print("| case | median (µs) | p99 (µs) |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        graph = _graph(Path(scratch))
        for case in ("warm", "drift", "one miss", "cold"):
            median, p99 = measure(graph, case, args.iterations)
            print(f"| {case} | {median:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    main()
