"""A/B of aigw's request path: the code of a git revision (A) against the working tree
(B), closed loop, rounds alternating which goes first.

Run: python bench/ab.py BASE_REF [--seconds 15] [--rounds 3] [--lean]

Starts the upstream and aigw as bench/run.py does (aigw alone on core 0). A runs from
``git archive BASE_REF`` laid out as the installed package (aigw, aigw.compiler,
aigw.runtime) on PYTHONPATH, with a ``sitecustomize`` that drops the editable install's
finder so that the tree on the path is the one imported; B runs the installed aigw.
Each round starts each server afresh, warms it for 3 s, then wrk drives it for
``--seconds``; the server's CPU (every thread, from /proc/PID/task/*/schedstat) is read
around the measured part. The order alternates: state the rounds share (the spend
ledger file grows) makes later rounds slower, which would favour whichever goes first.
Prints each round and the means.
"""

from __future__ import annotations

import argparse
import glob
import shutil
import subprocess
import tempfile
from pathlib import Path

import measure
import targets

REPO = Path(__file__).resolve().parent.parent
# Where each import package lives in the repository (pyproject.toml's package-dir).
LAYOUT = {"aigw": "aigw", "aigw/compiler": "compiler", "aigw/runtime": "runtime"}
SITECUSTOMIZE = """\
import sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if "__editable__" not in getattr(f, "__module__", "")]
"""


def base_tree(ref: str, into: Path) -> Path:
    """``ref``'s code, importable as ``aigw`` from ``into`` (put it on PYTHONPATH)."""
    source = into / "source"
    source.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive, check=True)
    tree = into / "tree"
    for package, folder in LAYOUT.items():
        shutil.copytree(source / folder, tree / package)
    (tree / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return tree


def server_cpu_us(pid: int) -> float:
    return sum(int(Path(task, "schedstat").read_text().split()[0])
               for task in glob.glob(f"/proc/{pid}/task/*")) / 1000


def warmed_run(server: targets.Server, seconds: float) -> tuple[measure.Throughput, float]:
    """wrk for 3 s unmeasured, then for ``seconds``: that run, and the server's CPU (every
    thread) a request over it, in µs."""
    measure.closed_loop(server, 3)
    before = server_cpu_us(server.process.pid)
    run = measure.closed_loop(server, seconds)
    used = server_cpu_us(server.process.pid) - before
    return run, used / max(run.requests, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", help="the git revision A runs (B is the working tree)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lean", action="store_true", help="aigw configured as LiteLLM")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aigw-ab-") as scratch:
        work = Path(scratch)
        envs = {"A": {"PYTHONPATH": str(base_tree(args.base, work))}, "B": {}}
        upstream = targets.start_upstream(work, 1.0, 8, 1.0)
        results: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
        try:
            for round_number in range(args.rounds):
                order = ("B", "A") if round_number % 2 == 0 else ("A", "B")
                for name in order:
                    server = targets.start_aigw(work, upstream.port, lean=args.lean,
                                                env=envs[name])
                    try:
                        run, cpu = warmed_run(server, args.seconds)
                    finally:
                        server.stop()
                    rate = run.requests / run.seconds
                    results[name].append((rate, cpu))
                    print(f"round {round_number + 1} {name}: {rate:,.0f} requests/s, "
                          f"{cpu:,.0f} µs of server CPU a request", flush=True)
        finally:
            upstream.stop()
    for name, rows in results.items():
        print(f"{name} ({args.base if name == 'A' else 'working tree'}): mean "
              f"{sum(r for r, _ in rows) / len(rows):,.0f} requests/s, "
              f"{sum(c for _, c in rows) / len(rows):,.0f} µs a request")


if __name__ == "__main__":
    main()
