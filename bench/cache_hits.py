"""What a response-cache hit costs against a request that goes upstream.

Run: python bench/cache_hits.py [--seconds 20] [--rate 100]

Starts the upstream and aigw as bench/run.py does (every stage on, aigw alone on
core 0), once with the route's cache off and once with it on. The benchmark sends one
request body over and over, so with the cache on every request after the first is a
hit: what is measured is the hit path (authentication, limits, the Cedar invoke
check, the lookup, the ledger record and the response) with no upstream call. For
each: wrk's throughput closed-loop, the server's CPU per request (from /proc), and
open-loop latency at ``--rate``. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import measure
import targets


def cpu_seconds(pid: int) -> float:
    """User + system time of every thread of ``pid`` so far."""
    ticks = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=100.0)
    options = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        upstream = targets.start_upstream(work, 1.0, 8, 1.0)
        upstream_port = upstream.port
        try:
            for cached in (False, True):
                server = targets.start_aigw(work, upstream_port, cache=cached)
                try:
                    measure.closed_loop(server, 3)  # warm up (and fill the cache)
                    before = cpu_seconds(server.process.pid)
                    throughput = measure.closed_loop(server, options.seconds)
                    cpu_us = (cpu_seconds(server.process.pid) - before) / max(
                        1, throughput.requests) * 1e6
                    rated = measure.open_loop(server, options.rate, options.seconds)
                finally:
                    server.stop()
                rows.append((cached, throughput, cpu_us, rated))
        finally:
            upstream.stop()
    print(f"| aigw, every stage on | requests/s (wrk) | CPU per request µs | errors "
          f"| p50 ms at {options.rate:g} rps | p99 ms at {options.rate:g} rps |")
    print("|---|---|---|---|---|---|")
    for cached, throughput, cpu_us, rated in rows:
        label = ("route cache on: every request a hit" if cached
                 else "no cache: every request upstream")
        print(f"| {label} | {throughput.rps:,.0f} | {cpu_us:,.0f} | "
              f"{throughput.errors + rated.errors} | {rated.latency_ms['p50']:.2f} "
              f"| {rated.latency_ms['p99']:.2f} |")


if __name__ == "__main__":
    main()
