"""aigw's throughput as a share of its stack's floor, closed loop, in a few minutes.

Run: python bench/share.py [--seconds 15] [--rounds 3]

bench/run.py measures this too, once in a run of about an hour (open-loop rates,
LiteLLM, a soak). This is its closed-loop part alone, for checking where a change
leaves the share: aigw with every stage on, aigw configured as LiteLLM, and
bench/floor.py's Starlette + aiohttp pass-through, each started afresh, warmed 3 s
and driven by wrk (1 thread, 32 connections) for ``--seconds``, pinned as run.py pins
them (the server alone on core 0). The targets' order rotates from round to round,
so that no target always runs first or last on a machine that drifts. Prints each
round (requests/s and the server's CPU a request, every thread, from /proc) and the
medians, and each aigw's median as a share of the floor's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import targets
from ab import warmed_run

TARGETS: dict[str, Callable[[Path, int], targets.Server]] = {
    "aigw, every stage on": lambda work, port: targets.start_aigw(work, port),
    "aigw, configured as LiteLLM": lambda work, port: targets.start_aigw(work, port, lean=True),
    "floor: Starlette on hypercorn + aiohttp":
        lambda work, port: targets.start_floor(work, port, "aiohttp"),
}
FLOOR = "floor: Starlette on hypercorn + aiohttp"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    names = list(TARGETS)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="aigw-share-") as scratch:
        work = Path(scratch)
        upstream = targets.start_upstream(work, 1.0, 8, 1.0)
        try:
            for number in range(args.rounds):
                for name in names[number % len(names):] + names[:number % len(names)]:
                    round_dir = work / f"{number}-{names.index(name)}"
                    round_dir.mkdir()
                    server = TARGETS[name](round_dir, upstream.port)
                    try:
                        run, cpu = warmed_run(server, args.seconds)
                    finally:
                        server.stop()
                    if run.error_rate >= 0.01:
                        raise RuntimeError(f"{name}: {run.errors} errors in {run.requests}")
                    rate = run.rps
                    results[name].append((rate, cpu))
                    print(f"round {number + 1} {name}: {rate:,.0f} requests/s, "
                          f"{cpu:,.0f} µs of server CPU a request", flush=True)
        finally:
            upstream.stop()
    floor = statistics.median(rate for rate, _ in results[FLOOR])
    for name, rows in results.items():
        rate = statistics.median(r for r, _ in rows)
        share = "" if name == FLOOR else f", {rate / floor:.0%} of the floor"
        print(f"{name}: median {rate:,.0f} requests/s "
              f"({', '.join(f'{r:,.0f}' for r, _ in rows)}), "
              f"{statistics.median(c for _, c in rows):,.0f} µs a request{share}")


if __name__ == "__main__":
    main()
