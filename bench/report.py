"""The "Gateway overhead" section of bench/BENCH.md, rendered from one run's results.

Only the text between the section's two markers is ever replaced, so the sections that
other benchmarks write into the same file survive every run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from measure import Rated, Throughput

START = "<!-- overhead:start -->"
END = "<!-- overhead:end -->"
FLOOR = "floor-"  # the floors' names: floor-httpx, floor-aiohttp, ...
TITLES = {
    "direct": "direct (upstream)",
    "aigw": "aigw, every stage on",
    "aigw-lean": "aigw, configured as LiteLLM",
    "litellm": "LiteLLM proxy",
}
GATEWAYS = ("aigw", "aigw-lean")  # the aigw targets the goals are checked for
NONE = "n/a"  # an empty cell: not measured, or nothing to compare with
# The goals for aigw: added p50 and p99 at the highest sustained rate, and
# throughput relative to LiteLLM's.
GOAL_P50_MS = 1.0
GOAL_P99_MS = 5.0
GOAL_VS_LITELLM = 15.0
GOAL_FLOOR_SHARE = 0.75


@dataclass
class TargetResult:
    """Everything measured for one target."""

    name: str
    throughput: Throughput | None = None
    rated: dict[float, Rated] = field(default_factory=dict)
    skipped_rates: list[float] = field(default_factory=list)  # above a rate it failed
    ttft: Rated | None = None
    rss_idle_mib: float | None = None
    rss_before_soak_mib: float | None = None
    rss_after_soak_mib: float | None = None
    soak: Throughput | None = None
    throughput_rounds: list[float] = field(default_factory=list)  # each round's rps

    def highest_sustained(self) -> Rated | None:
        sustained = [r for r in self.rated.values() if r.sustained]
        return max(sustained, key=lambda r: r.rate, default=None)


@dataclass
class RunResult:
    date: str
    command: str
    machine: Mapping[str, str]
    settings: Mapping[str, str]
    note: str
    targets: dict[str, TargetResult]  # the floors too, as "floor-<client>"


def render(run: RunResult) -> str:
    """The whole section, markers included."""
    parts = [START, "## Gateway overhead", "", _preamble(run), _method(run)]
    parts += _latency_table(run.targets)
    parts += _throughput_table(run.targets)
    parts += _ttft_table(run.targets)
    parts += _memory_table(run.targets)
    parts += _verdict(run)
    parts.append(END)
    return "\n".join(parts) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this section in ``path`` (or append it), leaving every other section alone."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _match: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def _preamble(run: RunResult) -> str:
    machine = run.machine
    lines = [
        f"Measured on {run.date} on {machine['nproc']} cores of {machine['cpu']}, "
        f"{machine['memory']}, Python {machine['python']}, {machine['kernel']}.",
        f"Load average when the run started: {machine['loadavg']}.",
    ]
    if run.note:
        lines.append(run.note)
    lines += ["", f"Command: `{run.command}`", ""]
    lines.append("Settings: " + "; ".join(f"{k} {v}" for k, v in run.settings.items()) + ".")
    return "\n".join(lines) + "\n"


def _method(run: RunResult) -> str:
    return "\n".join([
        "How it is measured:",
        "",
        "- Upstream: `bench/upstream.py`, a raw asyncio (uvloop) OpenAI-compatible server "
        "that answers one fixed small completion after a fixed delay, and streams "
        "fixed chunks for `stream: true`.",
        "- aigw is measured twice. **Every stage on** (`bench/targets.py`): key auth, "
        "the key's and its team's rpm/tpm and the team's monthly budget reserved and "
        "settled in the embedded store, a priced deployment (cost, a durable spend-ledger "
        "record per request), the shipped Cedar policies (`policies/`: invoke, route and "
        "the three routing policies reading live latency, error rate, SLA and budget), "
        "metrics and the JSON access log; the limits are set far above the load, so they "
        "are checked and never bind. **Configured as LiteLLM** is: one key, one route, no "
        "limits, budget or policies (LiteLLM's config has a master key and one model), "
        "for the like-for-like throughput ratio; metrics and the access log stay on.",
        "- Pinning: the server under test runs alone on core 0 (`taskset -c 0`); the load "
        "generator and the upstream share core 1 (`taskset -c 1`), as the machine has only "
        "two. The direct target is the upstream itself, so it has core 1 only, shared with "
        "the generator: its throughput is a lower bound of what the upstream can do.",
        "- Most throughput: `wrk` (Debian's package) closed-loop, 1 thread, 32 connections, "
        "`bench/wrk_chat.lua` (POST JSON, bearer key); the best of `--throughput-rounds` "
        "rounds (3; `--quick` 1) for every target alike, LiteLLM's included.",
        "- Latency at a fixed rate: `bench/loadgen.py`, open loop. wrk is closed-loop and "
        "cannot hold a rate; wrk2 (which can) and vegeta are not packaged by Debian, `hey` "
        "neither; h2load's `--rps` paces each connection (still closed per connection) and "
        "reports no percentiles; locust's constant-throughput is pacing per user, gevent-"
        "bound near 1k rps on a core. So loadgen.py sends each request at its scheduled "
        "time whatever is in flight, counts latency from that time (no coordinated "
        "omission, as wrk2), and speaks raw HTTP/1.1 over asyncio: an aiohttp client "
        "could not hold 1,000 rps on a shared core (its own lag reached tens of ms). "
        "Its scheduling lag is shown; it falls on every target alike.",
        "- Added latency = the target's percentile minus the direct percentile at the same "
        "rate. A rate counts as sustained with under 1% errors, answers keeping up "
        "(achieved >= 95% of the rate) and no queue building up (p50 under 50 ms, p99 under "
        "200 ms); rates "
        "above a failed one are skipped, and the highest sustained rate is then bisected "
        "for (2 probes quick, 3 full; the first at 80% of the target's wrk throughput).",
        "- TTFT: streaming requests at a fixed rate (the lower of the TTFT rate and half the "
        "target's wrk throughput, so that no queue is measured), time from the scheduled "
        "send to the first chunk with non-empty content.",
        "- Floor: `bench/floor.py`, Starlette on hypercorn served as `aigw serve` serves it "
        "(uvloop, no access log), passing the body through with one upstream client each: "
        "its most throughput, and its latency at the lowest fixed rate, bound what aigw's "
        "stack allows before any gateway logic.",
        "- Memory: VmRSS from /proc, summed over the server's process tree: idle after "
        "start-up, then before and after a soak (wrk closed-loop, 32 connections, every "
        "second request streaming).",
        "",
    ])


def _title(name: str) -> str:
    if name.startswith(FLOOR):
        return f"floor: Starlette on hypercorn + {name.removeprefix(FLOOR)}"
    return TITLES.get(name, name)


def _row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return NONE
    return f"{value:.2f}"


def _added(value: float | None, base: float | None) -> str:
    if value is None or base is None or math.isnan(value) or math.isnan(base):
        return NONE
    return f"{value - base:+.2f}"


def _latency_table(targets: Mapping[str, TargetResult]) -> list[str]:
    direct = targets.get("direct")
    lines = [
        "### Latency at fixed rates (open loop), and what each gateway adds over direct",
        "",
        "| target | rate (rps) | achieved (rps) | sustained | p50 ms | p95 ms | p99 ms "
        "| added p50 | added p95 | added p99 | errors | generator lag p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, target in targets.items():
        for rate in sorted(target.rated):
            result = target.rated[rate]
            base = direct.rated.get(rate) if direct is not None and name != "direct" else None
            latency = result.latency_ms
            added = [_added(latency[q], base.latency_ms[q]) if base else NONE
                     for q in ("p50", "p95", "p99")]
            lines.append(_row([
                _title(name), f"{rate:g}", f"{result.achieved_rps:g}",
                "yes" if result.sustained else "**no**",
                _ms(latency["p50"]), _ms(latency["p95"]), _ms(latency["p99"]), *added,
                f"{result.errors}/{result.sent}", _ms(result.lag_ms["p99"]),
            ]))
        for rate in target.skipped_rates:
            lines.append(f"| {_title(name)} | {rate:g} | not run: a lower rate "
                         "already failed | | | | | | | | | |")
    return [*lines, ""]


def _throughput_table(targets: Mapping[str, TargetResult]) -> list[str]:
    lines = [
        "### Most throughput (closed loop: wrk, 1 thread, 32 connections)",
        "",
        "Each target's best round with under 1% errors; every round's requests/s beside it.",
        "",
        "| target | requests/s | errors | p50 ms | p99 ms | rounds (requests/s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, target in targets.items():
        result = target.throughput
        if result is None:
            continue
        flag = "" if result.error_rate < 0.01 else " (1% errors or more: not valid)"
        rounds = ", ".join(f"{rps:,.0f}" for rps in target.throughput_rounds) or "—"
        lines.append(f"| {_title(name)} | {result.rps:,.0f}{flag} | {result.error_rate:.2%} "
                     f"| {_ms(result.p50_ms)} | {_ms(result.p99_ms)} | {rounds} |")
    return [*lines, ""]


def _ttft_table(targets: Mapping[str, TargetResult]) -> list[str]:
    direct = targets.get("direct")
    base = direct.ttft.ttft_ms if direct is not None and direct.ttft is not None else None
    lines = [
        "### Streaming time to first token (open loop)",
        "",
        "| target | rate (rps) | TTFT p50 ms | TTFT p99 ms | added p50 | added p99 | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, target in targets.items():
        if target.ttft is None or target.ttft.ttft_ms is None:
            continue
        ttft = target.ttft.ttft_ms
        other = base if name != "direct" else None
        lines.append(
            f"| {_title(name)} | {target.ttft.rate:g} "
            f"| {_ms(ttft['p50'])} | {_ms(ttft['p99'])} "
            f"| {_added(ttft['p50'], other['p50']) if other else NONE} "
            f"| {_added(ttft['p99'], other['p99']) if other else NONE} "
            f"| {target.ttft.errors}/{target.ttft.sent} |"
        )
    return [*lines, ""]


def _memory_table(targets: Mapping[str, TargetResult]) -> list[str]:
    lines = [
        "### Resident memory (MiB)",
        "",
        "| target | idle after start | before soak | after soak | growth | soak requests "
        "| soak errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, target in targets.items():
        if target.soak is None:
            continue
        before, after = target.rss_before_soak_mib, target.rss_after_soak_mib
        growth = f"{after - before:+.1f}" if before is not None and after is not None else NONE
        lines.append(
            f"| {_title(name)} | {target.rss_idle_mib} | {before} | {after} "
            f"| {growth} | {target.soak.requests:,} | {target.soak.error_rate:.2%} |"
        )
    return [*lines, ""]


def _verdict(run: RunResult) -> list[str]:
    lines = ["### Ratios and goals", ""]
    measured = [name for name in GATEWAYS
                if (t := run.targets.get(name)) is not None and t.throughput is not None]
    if not measured:
        return [*lines, "aigw was not measured.", ""]
    for name in measured:
        lines += _goals(run, name)
    lines += _floor_latency(run.targets)
    return [*lines, ""]


def _goals(run: RunResult, name: str) -> list[str]:
    """The issue's goals, checked for one aigw target."""
    aigw = run.targets[name]
    assert aigw.throughput is not None
    litellm, direct = run.targets.get("litellm"), run.targets.get("direct")
    title = _title(name)
    lines = []
    if litellm is not None and litellm.throughput is not None and litellm.throughput.rps:
        ratio = aigw.throughput.rps / litellm.throughput.rps
        lines.append(f"- {title} vs LiteLLM throughput: **{ratio:.1f}x** "
                     f"(goal >= {GOAL_VS_LITELLM:g}x: {_pass(ratio >= GOAL_VS_LITELLM)})")
    floors = {floor: t.throughput for floor, t in run.targets.items()
              if floor.startswith(FLOOR) and t.throughput is not None}
    if floors:
        floor, fastest = max(floors.items(), key=lambda item: item[1].rps)
        share = aigw.throughput.rps / fastest.rps if fastest.rps else 0.0
        lines.append(f"- {title} as a share of the fastest {_title(floor)} "
                     f"({fastest.rps:,.0f} rps): **{share:.0%}** "
                     f"(goal >= {GOAL_FLOOR_SHARE:.0%}: {_pass(share >= GOAL_FLOOR_SHARE)})")
    top = aigw.highest_sustained()
    base = direct.rated.get(top.rate) if direct is not None and top is not None else None
    if top is not None and base is not None:
        p50 = top.latency_ms["p50"] - base.latency_ms["p50"]
        p99 = top.latency_ms["p99"] - base.latency_ms["p99"]
        lines.append(
            f"- {title}: added latency at its highest sustained rate ({top.rate:g} rps): "
            f"p50 **{p50:+.2f} ms** (goal < {GOAL_P50_MS:g}: {_pass(p50 < GOAL_P50_MS)}), "
            f"p99 **{p99:+.2f} ms** (goal < {GOAL_P99_MS:g}: {_pass(p99 < GOAL_P99_MS)})"
        )
    elif top is None:
        lines.append(f"- {title} sustained none of the fixed rates.")
    within = _highest_within_goals(aigw, direct)
    lines.append(f"- {title}: highest measured rate with added p99 under {GOAL_P99_MS:g} ms: "
                 + (f"{within:g} rps" if within is not None else "none"))
    return lines


def _highest_within_goals(aigw: TargetResult, direct: TargetResult | None) -> float | None:
    """The highest rate at which the added p99 stayed under its goal (p50 is reported
    above; on this stack the floor alone adds more than its goal)."""
    if direct is None:
        return None
    ok = [rate for rate, result in aigw.rated.items()
          if result.sustained and (base := direct.rated.get(rate)) is not None
          and result.latency_ms["p99"] - base.latency_ms["p99"] < GOAL_P99_MS]
    return max(ok, default=None)


def _floor_latency(targets: Mapping[str, TargetResult]) -> list[str]:
    """What the bare stack alone adds at the lowest rate: the bound under aigw's own."""
    direct = targets.get("direct")
    lines = []
    for name, target in targets.items():
        if not name.startswith(FLOOR) or direct is None:
            continue
        for rate, result in target.rated.items():
            base = direct.rated.get(rate)
            if base is None or not result.sustained:
                continue
            p50 = result.latency_ms["p50"] - base.latency_ms["p50"]
            p99 = result.latency_ms["p99"] - base.latency_ms["p99"]
            lines.append(f"- {_title(name)} alone adds p50 {p50:+.2f} ms, p99 {p99:+.2f} ms "
                         f"at {rate:g} rps")
    return lines


def _pass(ok: bool) -> str:
    return "met" if ok else "**missed**"


def rates_text(rates: Iterable[float]) -> str:
    return ", ".join(f"{rate:g}" for rate in rates)
