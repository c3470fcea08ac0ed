"""What a request costs a server when requests arrive one at a time: CPU and thread switches.

Run: python bench/wakeups.py [--targets upstream floor aigw aigw-lean] [--rates 100 300 3000]
                             [--seconds 10]

Each target runs alone on core 0 (the load and, for the gateways, the upstream on core
1), and is driven open loop by bench/loadgen.py at each rate. Read from ``/proc`` around
each run, per request: the CPU time of the server (``stat``: every thread's, ended
ones included, in clock ticks), and
its voluntary switches (it went to sleep: nothing to do, or waiting on a lock, the GIL
or the disk) and involuntary ones (the scheduler took the core away), for the thread
running the event loop and for the others together. ``upstream`` is bench/upstream.py
measured as the server itself: a raw asyncio protocol with almost no Python per request,
so what it costs at a low rate is mostly what this machine charges for a wake-up.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import measure
import targets
from targets import SERVER_CORE, Server


@dataclass(frozen=True, slots=True)
class Threads:
    """Totals over a process's threads, and its main thread's switches."""

    cpu_ns: int
    main_voluntary: int
    main_involuntary: int
    other_voluntary: int
    other_involuntary: int


def read_threads(pid: int) -> Threads:
    # The process's own utime + stime count threads that already ended as well.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    main_vol = main_invol = other_vol = other_invol = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            status = (task / "status").read_text()
        except OSError:  # the thread ended while we looked
            continue
        voluntary = _field(status, "voluntary_ctxt_switches")
        involuntary = _field(status, "nonvoluntary_ctxt_switches")
        if task.name == str(pid):
            main_vol, main_invol = voluntary, involuntary
        else:
            other_vol += voluntary
            other_invol += involuntary
    return Threads(cpu, main_vol, main_invol, other_vol, other_invol)


def _field(status: str, name: str) -> int:
    for line in status.splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    return 0


def start(name: str, work: Path, upstream: Server | None) -> Server:
    if name == "upstream":  # measured as the server itself, on the server's core
        return targets.start_upstream(work, 0.0, 8, 1.0, core=SERVER_CORE,
                                      name="upstream-alone")
    assert upstream is not None
    if name == "floor":
        return targets.start_floor(work, upstream.port, "aiohttp")
    return targets.start_aigw(work, upstream.port, lean=name == "aigw-lean")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", nargs="+", default=["upstream", "floor", "aigw"],
                        choices=["upstream", "floor", "aigw", "aigw-lean"])
    parser.add_argument("--rates", nargs="+", type=float, default=[100.0, 300.0])
    parser.add_argument("--seconds", type=float, default=10.0)
    options = parser.parse_args()
    rows = ["| target | rate (rps) | CPU µs a request | main thread: voluntary / "
            "involuntary switches | other threads | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="aigw-wakeups-") as directory:
        work = Path(directory)
        upstream = targets.start_upstream(work, 1.0, 8, 1.0)
        try:
            for name in options.targets:
                server = start(name, work, upstream)
                try:
                    measure.open_loop(server, 50, 2)  # connections open, code paths warm
                    for rate in options.rates:
                        before = read_threads(server.process.pid)
                        rated = measure.open_loop(server, rate, options.seconds)
                        after = read_threads(server.process.pid)
                        # Per answered request: past its capacity a server never sees
                        # some of what was sent (they time out in the generator).
                        answered = max(1, rated.sent - rated.errors)

                        def per(field: str, before: Threads = before, after: Threads = after,
                                answered: int = answered) -> float:
                            change: int = getattr(after, field) - getattr(before, field)
                            return change / answered

                        rows.append(
                            f"| {name} | {rate:g} | {per('cpu_ns') / 1000:,.0f} | "
                            f"{per('main_voluntary'):.2f} / {per('main_involuntary'):.2f} | "
                            f"{per('other_voluntary'):.2f} / {per('other_involuntary'):.2f} | "
                            f"{rated.latency_ms['p50']:.2f} | {rated.latency_ms['p99']:.2f} | "
                            f"{rated.errors}/{rated.sent} |"
                        )
                        print(rows[-1], file=sys.stderr, flush=True)
                finally:
                    server.stop()
        finally:
            upstream.stop()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
