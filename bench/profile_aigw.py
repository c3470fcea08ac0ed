"""Where aigw spends its time under load: py-spy on ``aigw serve`` while wrk drives it.

Run: python bench/profile_aigw.py [--seconds 20] [--stream-every 0] [--top 25]

Starts the same upstream and gateway as bench/run.py (aigw pinned to core 0, wrk and
the upstream on core 1), samples aigw with py-spy (``pip install py-spy``) for
``--seconds`` under closed-loop wrk at 32 connections, and prints Markdown tables: the
frames that were running themselves (self time), the samples charged to the deepest
aigw line on each stack, and aigw's lines inclusive, so a hot spot reads as
``file:line``. Only the thread holding the GIL is sampled (``--gil``): py-spy cannot
tell a thread blocked in a queue or an fsync from a running one, and with one event
loop the GIL holder is where Python spends its CPU. The raw collapsed stacks are kept
in bench/results/ for a flame graph.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import measure
import targets
from targets import BENCH

FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
REPO = BENCH.parent
LIBRARY = re.compile(r"^.*/lib/python3\.\d+/(site-packages/)?")
OWN = ("runtime/", "compiler/", "aigw/")
IDLE = "_worker (concurrent/futures/thread.py"  # aigw's packages, as paths inside the repository


def summarize(collapsed: str, top: int) -> str:
    """Markdown tables of where the event loop's thread spent its samples."""
    self_time: collections.Counter[str] = collections.Counter()
    deepest: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_short(frame) for frame in stack.split(";")]
        if frames[-1].startswith(IDLE):
            continue  # an idle thread-pool worker, which py-spy cannot always tell apart
        count = int(count_text)
        total += count
        self_time[frames[-1]] += count
        own = [frame for frame in frames if _is_own(frame)]
        if own:
            deepest[own[-1]] += count
        for frame in set(own):
            inclusive[frame] += count
    if total == 0:
        return "py-spy recorded no samples.\n"
    return "\n".join([
        f"{total} samples of the thread holding the GIL (idle pool workers left out).",
        *_table("Self time: the frame itself was running", self_time, total, top),
        *_table("By aigw line: samples charged to the deepest aigw frame on the stack "
                "(that line, or library code it called)", deepest, total, top),
        *_table("aigw lines, inclusive: the line or anything under it", inclusive, total, top),
    ]) + "\n"


def _table(
    title: str, counts: collections.Counter[str], total: int, top: int
) -> list[str]:
    rows = [f"| {100 * n / total:.1f} | `{frame}` |" for frame, n in counts.most_common(top)]
    return ["", f"{title}:", "", "| % | frame |", "|---|---|", *rows]


def _short(frame: str) -> str:
    """``function (path:line)`` with the path relative to the repository or site-packages."""
    match = FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = LIBRARY.sub("", match["file"]).removeprefix(str(REPO) + "/")
    where = f"{path}:{match['line']}" if match["line"] else path
    return f"{match['function']} ({where})"


def _is_own(frame: str) -> bool:
    match = FRAME.match(frame)
    return match is not None and match["file"].startswith(OWN)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--stream-every", type=int, default=0, help="every n-th request streams")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples a second")
    parser.add_argument("--target", choices=("aigw", "aigw-lean", "floor"), default="aigw",
                        help="aigw: every stage on; aigw-lean: configured as LiteLLM is; "
                             "floor: the Starlette-on-hypercorn + aiohttp pass-through, "
                             "to compare the same stack without the gateway")
    args = parser.parse_args()
    spy = shutil.which("py-spy")
    if spy is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 1
    raw = BENCH / "results" / f"{args.target}-profile-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    raw.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aigw-profile-") as scratch:
        work = Path(scratch)
        upstream = targets.start_upstream(work, 1.0, 8, 1.0)
        port = int(upstream.url.split(":")[2].split("/")[0])
        try:
            gateway = (targets.start_floor(work, port, "aiohttp") if args.target == "floor"
                       else targets.start_aigw(work, port, lean=args.target == "aigw-lean"))
            try:
                measure.closed_loop(gateway, 3)  # warm the pools first
                load = threading.Thread(
                    target=measure.closed_loop,
                    args=(gateway, args.seconds + 4),
                    kwargs={"stream_every": args.stream_every},
                    daemon=True,
                )
                load.start()
                time.sleep(2)
                subprocess.run(
                    [spy, "record", "--pid", str(gateway.process.pid), "--duration",
                     str(round(args.seconds)), "--rate", str(args.rate), "--gil",
                     "--format", "raw",
                     "--output", str(raw)],
                    check=True, capture_output=True, timeout=args.seconds + 60,
                )
                load.join(timeout=args.seconds + 30)
            finally:
                gateway.stop()
        finally:
            upstream.stop()
    print(summarize(raw.read_text(), args.top))
    print(f"Collapsed stacks: {raw}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
