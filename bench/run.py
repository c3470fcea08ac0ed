"""Gateway overhead: aigw vs the upstream directly vs LiteLLM's proxy, and our stack's floor.

Run: python bench/run.py [--quick] [--soak-seconds 600] [--note "..."]

Starts a fixed-latency upstream (bench/upstream.py), then each target in turn, pinned
to its own core, and measures: latency added over direct at fixed rates (open loop,
bench/loadgen.py), the most throughput (closed loop, wrk at 32 connections), streaming
time to first token, and resident memory around a soak. Then the floor: a bare
Starlette-on-hypercorn pass-through with each upstream client. Writes the "Gateway
overhead" section of bench/BENCH.md (only that section) and the raw numbers to
bench/results/. ``--quick`` (10 s a point, a 30 s soak) ends within about ten minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import measure
import report
import targets
from floor import CLIENTS
from measure import Rated
from report import RunResult, TargetResult
from targets import BENCH, Server


@dataclasses.dataclass(frozen=True)
class Options:
    point_s: float
    soak_s: float
    warmup_s: float
    rates: tuple[float, ...]
    ttft_rate: float
    delay_ms: float
    tokens: int
    token_interval_ms: float
    litellm: bool
    lean: bool  # also aigw configured as LiteLLM is
    floors: bool
    search_steps: int  # probes for the highest sustained rate, below a rate that failed
    throughput_rounds: int  # closed-loop rounds a target; its best valid one is reported


def parse_options(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="10 s a point and a 30 s soak (about 10 minutes in all)")
    parser.add_argument("--point-seconds", type=float, help="seconds a point (30; quick 10)")
    parser.add_argument("--soak-seconds", type=float, help="soak length (600; quick 30)")
    parser.add_argument("--rates", default="100,500,1000", help="fixed rates, requests/s")
    parser.add_argument("--ttft-rate", type=float, default=20.0,
                        help="streams per second (at most half a target's throughput)")
    parser.add_argument("--upstream-delay-ms", type=float, default=1.0,
                        help="the upstream's time to first byte")
    parser.add_argument("--stream-tokens", type=int, default=8)
    parser.add_argument("--token-interval-ms", type=float, default=1.0)
    parser.add_argument("--throughput-rounds", type=int,
                        help="closed-loop rounds a target, the best reported (3; quick 1)")
    parser.add_argument("--skip-litellm", action="store_true", help="e.g. with no PyPI access")
    parser.add_argument("--skip-floors", action="store_true")
    parser.add_argument("--skip-lean", action="store_true",
                        help="skip aigw configured as LiteLLM is (key auth, one route)")
    parser.add_argument("--note", default="", help="a sentence for the report, e.g. the load")
    parser.add_argument("--output", type=Path, default=BENCH / "BENCH.md")
    args = parser.parse_args(argv)
    options = Options(
        point_s=args.point_seconds or (10.0 if args.quick else 30.0),
        soak_s=args.soak_seconds if args.soak_seconds is not None else (
            30.0 if args.quick else 600.0),
        warmup_s=2.0 if args.quick else 5.0,
        rates=tuple(float(rate) for rate in args.rates.split(",") if rate.strip()),
        ttft_rate=args.ttft_rate,
        delay_ms=args.upstream_delay_ms,
        tokens=args.stream_tokens,
        token_interval_ms=args.token_interval_ms,
        litellm=not args.skip_litellm,
        lean=not args.skip_lean,
        floors=not args.skip_floors,
        search_steps=2 if args.quick else 3,
        throughput_rounds=args.throughput_rounds or (1 if args.quick else 3),
    )
    return options, args


def log(message: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def measure_target(
    server: Server, options: Options, soak: bool, direct: Callable[[float], Rated] | None
) -> TargetResult:
    """The whole series for one started server. ``direct`` measures the upstream at a
    rate this target needed and the fixed list lacks (its highest sustained rate)."""
    result = TargetResult(server.name, rss_idle_mib=server.rss_mib())
    measure.closed_loop(server, options.warmup_s)  # fills pools and caches; not recorded
    _best_throughput(server, options, result)
    failed_at: float | None = None
    for rate in options.rates:
        if failed_at is not None:
            result.skipped_rates.append(rate)
            continue
        rated = measure.open_loop(server, rate, options.point_s)
        result.rated[rate] = rated
        log(f"{server.name}: {rate:g} rps -> p50 {rated.latency_ms['p50']} ms, "
            f"p99 {rated.latency_ms['p99']} ms, sustained {rated.sustained}")
        if not rated.sustained:
            failed_at = rate
    if failed_at is not None and direct is not None:
        _find_sustained(server, options, result, failed_at, direct)
    # Streams at a rate every target can serve, or TTFT would measure a queue.
    ttft_rate = min(options.ttft_rate, float(max(1, round(result.throughput.rps / 2))))
    result.ttft = measure.open_loop(server, ttft_rate, options.point_s, stream=True)
    log(f"{server.name}: TTFT {result.ttft.ttft_ms}")
    if soak and options.soak_s > 0:
        result.rss_before_soak_mib = server.rss_mib()
        result.soak = measure.closed_loop(server, options.soak_s, stream_every=2)
        result.rss_after_soak_mib = server.rss_mib()
        log(f"{server.name}: RSS {result.rss_before_soak_mib} -> "
            f"{result.rss_after_soak_mib} MiB over {result.soak.requests:,} requests")
    return result


def measure_floor(
    server: Server, options: Options, direct: Callable[[float], Rated]
) -> TargetResult:
    """The floor's most throughput, and its latency at the lowest fixed rate: what any
    gateway on this stack adds before doing anything of its own."""
    result = TargetResult(server.name)
    measure.closed_loop(server, options.warmup_s)
    _best_throughput(server, options, result)
    assert result.throughput is not None
    rate = options.rates[0]
    result.rated[rate] = measure.open_loop(server, rate, options.point_s)
    direct(rate)
    log(f"{server.name}: {result.throughput.rps:,.0f} rps closed-loop; at {rate:g} rps "
        f"p50 {result.rated[rate].latency_ms['p50']} ms")
    return result


def _best_throughput(server: Server, options: Options, result: TargetResult) -> None:
    """``throughput_rounds`` closed-loop rounds; the best with under 1% errors stands
    (the best of all if none). Each target gets its best: LiteLLM's own throughput
    varied from 24 to 92 rps between runs, so one round made the ratio a lottery."""
    rounds = []
    for number in range(options.throughput_rounds):
        rounds.append(measure.closed_loop(server, options.point_s))
        log(f"{server.name}: round {number + 1}: {rounds[-1].rps:,.0f} rps closed-loop, "
            f"{rounds[-1].error_rate:.2%} errors")
    valid = [round_ for round_ in rounds if round_.error_rate < 0.01] or rounds
    result.throughput = max(valid, key=lambda round_: round_.rps)
    result.throughput_rounds = [round_.rps for round_ in rounds]


def _find_sustained(
    server: Server, options: Options, result: TargetResult, failed_at: float,
    direct: Callable[[float], Rated],
) -> None:
    """Bisect between the highest sustained rate and the lowest failed one, a few probes;
    the first probe is 80% of the closed-loop throughput, the likeliest answer."""
    assert result.throughput is not None
    low = max((rate for rate, r in result.rated.items() if r.sustained), default=0.0)
    high = failed_at
    guess = result.throughput.rps * 0.8
    for _ in range(options.search_steps):
        probe = guess if low < guess < high else (low + high) / 2
        probe = float(max(10, int(probe / 10) * 10))
        guess = 0.0
        if not low < probe < high:
            break
        rated = measure.open_loop(server, probe, options.point_s)
        result.rated[probe] = rated
        log(f"{server.name}: {probe:g} rps -> p50 {rated.latency_ms['p50']} ms, "
            f"p99 {rated.latency_ms['p99']} ms, sustained {rated.sustained}")
        if rated.sustained:
            low = probe
        else:
            high = probe
    if low > 0:
        direct(low)  # the added latency at the highest sustained rate needs its baseline


def machine() -> dict[str, str]:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.partition(":")[2].strip()
            break
    memory = "unknown memory"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": memory,
        "python": platform.python_version(),
        "kernel": f"Linux {platform.release()}",
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def _command_line(argv: list[str]) -> str:
    """The command as typed, with a ``--note`` text (printed in the report anyway) elided."""
    shown: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            shown.append(arg)
    elided = " --note ..." if len(shown) < len(argv) else ""
    return shlex.join(["python", "bench/run.py", *shown]) + elided


def main(argv: list[str] | None = None) -> int:
    options, args = parse_options(argv)
    command = _command_line(argv if argv is not None else sys.argv[1:])
    started = time.monotonic()
    host = machine()
    measure.ensure_wrk()
    if not targets.can_pin():
        log("taskset or a second core is missing: nothing is pinned, numbers are rougher")
    results: dict[str, TargetResult] = {}
    with tempfile.TemporaryDirectory(prefix="aigw-bench-") as scratch:
        work = Path(scratch)
        upstream = targets.start_upstream(work, options.delay_ms, options.tokens,
                                          options.token_interval_ms)
        upstream_port = upstream.port
        try:
            log("direct: measuring the upstream itself")
            results["direct"] = measure_target(upstream, options, soak=False, direct=None)

            def direct_at(rate: float) -> Rated:
                if rate not in results["direct"].rated:
                    results["direct"].rated[rate] = measure.open_loop(
                        upstream, rate, options.point_s)
                return results["direct"].rated[rate]

            # (name, start, soak): aigw with every stage on, then aigw configured as
            # LiteLLM is (the like-for-like throughput comparison), then LiteLLM.
            starters: list[tuple[str, Callable[[], Server], bool]] = [
                ("aigw", lambda: targets.start_aigw(work, upstream_port), True)]
            if options.lean:
                starters.append(("aigw-lean",
                                 lambda: targets.start_aigw(work, upstream_port, lean=True),
                                 False))
            if options.litellm:
                starters.append(
                    ("litellm", lambda: targets.start_litellm(work, upstream_port), True))
            for name, start, soak in starters:
                log(f"{name}: starting")
                server = start()
                try:
                    results[name] = measure_target(server, options, soak=soak,
                                                   direct=direct_at)
                finally:
                    server.stop()
            if options.floors:
                for client in CLIENTS:
                    server = targets.start_floor(work, upstream_port, client)
                    try:
                        results[server.name] = measure_floor(server, options, direct_at)
                    finally:
                        server.stop()
        finally:
            upstream.stop()
    run = RunResult(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        command=command,
        machine=host,
        settings={
            "seconds a point": f"{options.point_s:g}",
            "soak": f"{options.soak_s:g} s",
            "fixed rates": report.rates_text(options.rates) + " rps",
            "TTFT rate": f"{options.ttft_rate:g} rps or half the target's throughput",
            "upstream delay": f"{options.delay_ms:g} ms",
            "stream": f"{options.tokens} chunks {options.token_interval_ms:g} ms apart",
            "LiteLLM": targets.LITELLM_VERSION if options.litellm else "skipped",
        },
        note=args.note,
        targets=results,
    )
    report.write_section(args.output, report.render(run))
    raw = BENCH / "results" / f"overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    raw.parent.mkdir(exist_ok=True)
    raw.write_text(json.dumps(dataclasses.asdict(run), indent=2, default=str))
    log(f"done in {time.monotonic() - started:.0f} s: {args.output} and {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
