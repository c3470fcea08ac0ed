"""Routing decision time for a 10-member group: filter (eligible) + order (strategy).

Run: python bench/routing_bench.py [--iterations N]
Prints median and p99 per strategy, in microseconds, as a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from aigw.compiler import compile_gateway
from aigw.runtime.chat_request import ChatRequest
from aigw.runtime.providers.registry import build_adapters
from aigw.runtime.routing.candidates import eligible, order_candidates
from aigw.runtime.routing.state import RoutingState
from aigw.runtime.routing.strategies import STRATEGIES, Demand, prefix_digest
from aigw.runtime.tokens import TokenCounter


def _config(strategy: str) -> str:
    members = [f"d{i}" for i in range(10)]
    deployments = "\n".join(
        f"  {m}: {{provider: local, model: {m}, context_window: {8000 + i * 1000}, "
        f"price: {{input: {i + 1}, output: {2 * i + 1}}}, limits: {{tpm: {100000 + i}}}, "
        f"capabilities: [streaming, tools]}}"
        for i, m in enumerate(members)
    )
    return (
        "version: 1\nproviders:\n  local: {type: echo}\n"
        f"deployments:\n{deployments}\n"
        f"groups:\n  g: {{members: [{', '.join(members)}], strategy: {strategy}}}\n"
        "routes:\n  r: {group: g}\n"
    )


def measure(strategy: str, iterations: int, counter: TokenCounter) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "gateway.yaml").write_text(_config(strategy))
        graph = compile_gateway(tmp, environ={}).graph
    assert graph is not None
    adapters = build_adapters(graph.providers, counter)
    state = RoutingState()
    state.sync(graph)
    for i, stats in enumerate(state.stats.values()):
        stats.observe_latency(100 + 7 * i)
        stats.in_flight = i % 4
    group = graph.groups["g"]
    request = ChatRequest.model_validate(
        {"model": "r", "max_tokens": 200, "messages": [{"role": "user", "content": "hi"}]}
    )
    demand = Demand(1200, 200, False)
    texts = [message.text() for message in request.messages]
    samples = []
    for _ in range(iterations):
        started = time.perf_counter_ns()
        if strategy == "prefix_affinity":  # the digest is part of that decision's cost
            demand = Demand(1200, 200, False, prefix_digest(texts))
        fit, _dropped = eligible(group, adapters, request, 1200)
        order_candidates(group, fit, state, demand)
        samples.append((time.perf_counter_ns() - started) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(0.99 * len(samples)) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=20_000)
    args = parser.parse_args()
    counter = TokenCounter()
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"{sys.platform}; {args.iterations} decisions per strategy\n")
    print("| strategy | median (µs) | p99 (µs) |")
    print("|---|---|---|")
    for strategy in STRATEGIES:
        median, p99 = measure(strategy, args.iterations, counter)
        print(f"| {strategy} | {median:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    main()
