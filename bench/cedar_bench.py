"""Cedar ``route`` filtering for a 10-member group: what the policy stage adds to a request.

Run: python bench/cedar_bench.py [--iterations N]

Each sample is what a request pays between ``eligible`` and the strategy: the
request's context encoded once, then ``RequestGate.filter`` over the 10 candidates
(at most one ``is_authorized_batch`` call). The policies are the shipped ones (two
permit-alls and the three routing policies), so every candidate's live latency and
error rate and the request's SLA and budget are read. Four cases:

    unchanged    live metrics and context as for the previous request: cached decisions
    one changed  the deployment that served the previous request has a new latency (the
                 common case under load): one Cedar request in the batch
    all changed  every deployment's metrics moved: entities rebuilt, 10 Cedar requests
    new budget   the budget changes on every request, on the same side of the policy's
                 10.0: decisions are cached by how each comparison comes out
    new SLA      the latency SLA changes on every request (it is compared with each
                 deployment's latency, not a literal): 10 Cedar requests, entities cached
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aigw.compiler import compile_gateway
from aigw.compiler.graph import Graph
from aigw.runtime.policy import Facts, PolicyEngine, RequestGate, principal_for
from aigw.runtime.policy_live import StateLive
from aigw.runtime.providers.registry import build_adapters
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
    for i, stats in enumerate(state.stats.values()):
        stats.observe_latency(100 + 7 * i)
    engine = PolicyEngine(graph, StateLive(state))
    adapters = build_adapters(graph.providers, TokenCounter())
    candidates = [Candidate(graph.deployments[m], adapters[graph.deployments[m].provider.name],
                            1000) for m in MEMBERS]
    key = next(iter(graph.keys_by_sha256.values()))
    principal = principal_for(graph.authorization, key, None)
    change = _changes(state, case)
    samples = []
    for n in range(iterations):
        change(n)
        facts = Facts(route="r", estimated_tokens=1200, max_tokens=200, stream=False,
                      latency_sla_ms=400 + n if case == "new SLA" else 400,
                      budget_remaining=25.0 + n / 100 if case == "new budget" else 25.0)
        started = time.perf_counter_ns()
        gate = RequestGate(engine, principal, facts, "key 'app'")
        gate.filter(candidates)
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * len(samples)) - 1]


def _changes(state: RoutingState, case: str) -> Callable[[int], None]:
    stats = list(state.stats.values())

    def change(n: int) -> None:
        # Latencies never seen before, so no decision can come from the cache.
        if case == "one changed":
            stats[n % len(stats)].latency_ms = 100.0 + n
        elif case == "all changed":
            for i, item in enumerate(stats):
                item.latency_ms = 100.0 + n * len(stats) + i

    return change


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
        for case in ("unchanged", "one changed", "all changed", "new budget", "new SLA"):
            median, p99 = measure(graph, case, args.iterations)
            print(f"| {case} | {median:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    main()
