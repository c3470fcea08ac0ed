"""What Python's cyclic garbage collector costs ``aigw serve`` under load, with the
collector as CPython sets it and as aigw sets it (runtime/heap.py).

Run: python bench/gc_pauses.py [--seconds 20] [--lean]

Starts the upstream and aigw as bench/run.py does (aigw alone on core 0), twice: once
with ``heap.freeze`` made a no-op (CPython's defaults: thresholds 700/10/10, nothing
frozen), once as shipped. Each time wrk drives it closed-loop for ``--seconds`` while a
``gc.callbacks`` hook inside the server times every collection; the server writes
what it saw when it stops. Prints a Markdown table per generation: collections, total
and longest pause, and the throughput wrk saw.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import measure
import targets

HERE = Path(__file__).resolve()


def serve_with_probe() -> int:
    """The server side: ``gc_pauses.py --probe OUT MODE serve DIR --port N``."""
    import atexit
    import gc
    import time

    out, mode, argv = sys.argv[2], sys.argv[3], sys.argv[4:]
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started = [0.0]
    serving = [False]  # collections before the server is up (start-up) are not counted

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif serving[0]:
            pauses[info["generation"]].append((time.perf_counter() - started[0]) * 1000)

    from aigw.runtime import heap

    freeze = heap.freeze

    def freeze_then_count() -> None:
        if mode == "shipped":
            freeze()
        serving[0] = True

    heap.freeze = freeze_then_count
    gc.callbacks.append(callback)
    atexit.register(lambda: Path(out).write_text(json.dumps(pauses)))
    from aigw.cli import main

    sys.argv = ["aigw", *argv]
    return main()


def run(mode: str, seconds: float, lean: bool, work: Path, upstream_port: int) -> dict[str, object]:
    out = work / f"gc-{mode}.json"
    server = targets.start_aigw(work, upstream_port, lean=lean,
                                launcher=(sys.executable, str(HERE), "--probe", str(out), mode))
    try:
        measure.closed_loop(server, 3)  # warm up (pools, caches)
        load = measure.closed_loop(server, seconds)
    finally:
        server.stop()
    pauses = {int(k): v for k, v in json.loads(out.read_text()).items()}
    return {"mode": mode, "rps": load.rps, "pauses": pauses}


def table(results: list[dict[str, object]], seconds: float) -> str:
    lines = ["| collector | requests/s | generation | collections | total ms | "
             "share of the run | longest ms |", "|---|---|---|---|---|---|---|"]
    for result in results:
        pauses: dict[int, list[float]] = result["pauses"]  # type: ignore[assignment]
        for generation in (0, 1, 2):
            found = pauses.get(generation, [])
            total = sum(found)
            lines.append(
                f"| {result['mode']} | {result['rps']:,.0f} | {generation} | {len(found)} | "
                f"{total:,.0f} | {total / 1000 / seconds:.1%} | "
                f"{max(found, default=0.0):.1f} |")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        return serve_with_probe()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--lean", action="store_true", help="aigw configured as LiteLLM is")
    args = parser.parse_args()
    measure.ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="aigw-gc-") as scratch:
        work = Path(scratch)
        upstream = targets.start_upstream(work, 1.0, 8, 1.0)
        port = int(upstream.url.split(":")[2].split("/")[0])
        try:
            results = [run(mode, args.seconds, args.lean, work, port)
                       for mode in ("CPython defaults", "shipped")]
        finally:
            upstream.stop()
    print(f"wrk closed-loop, 32 connections, {args.seconds:g} s; "
          f"aigw {'configured as LiteLLM' if args.lean else 'with every stage on'}; "
          "loadavg " + " ".join(f"{load:.2f}" for load in os.getloadavg()))
    print(table(results, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
