"""The gateway's own CPU per request, in process: no HTTP server, no load generator.

Run: python bench/inproc.py [--requests 20000] [--concurrency 32] [--lean]
     python bench/inproc.py --base REF [--rounds 4]     (A/B: REF against the working tree)
     python bench/inproc.py --calls                      (Python calls a request, cProfile)
     python bench/inproc.py --calls --stream             (... of a streamed request)
     python bench/inproc.py --floor [--rounds 4]         (and bench/floor.py's pass-through)
     python bench/inproc.py --profile PATH               (a cProfile of the requests, pstats)

Why: under wrk (bench/ab.py) the same code measures 13% apart from one round to the
next, because hypercorn, h11, wrk and the kernel's loopback all share the two cores.
Here the app is called as hypercorn calls it (an ASGI scope, a receive that gives the
body, a send that takes the response), ``--concurrency`` requests at a time on uvloop,
pinned to core 0, against bench/upstream.py on core 1. What is measured is this
process's CPU (every thread: the SQLite writer's too) per request, over
``--requests`` requests after a warm-up: aigw's request path, its upstream client
(aiohttp), Starlette's request object and the access log line, with every stage on as
in bench/run.py's "aigw, every stage on" (``--lean``: configured as LiteLLM). The HTTP
server's share (hypercorn and h11, about 40% under wrk) is not in it, so a saving here
is a larger share of this figure than of a wrk run's.

With ``--base REF`` each round runs REF's code (laid out as bench/ab.py does) and the
working tree's in fresh processes, order alternating, and prints both means.
``--calls`` counts the Python function calls of one request (deterministic: compare it
across revisions when time is too noisy to). ``--stream`` makes every request a streamed
one (``stream_options.include_usage``: the upstream's 8 deltas, then its usage); its
count varies by about 1% from run to run, as the deltas arrive in one read or several.
``--floor`` adds, each round, bench/floor.py's Starlette pass-through with aiohttp's
client, driven the same way: what the stack costs in process before any gateway logic.
``--profile PATH`` writes a cProfile of ``--requests`` requests at ``--concurrency``
(``python -m pstats PATH`` reads it).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import targets

Message = dict[str, Any]
App = Callable[[dict[str, Any], Callable[[], Awaitable[Message]],
                Callable[[Message], Awaitable[None]]], Awaitable[None]]

BODY = (b'{"model":"bench","messages":[{"role":"user","content":"Say hello to the benchmark."}],'
        b'"max_tokens":16}')
STREAM_BODY = BODY[:-1] + b',"stream":true,"stream_options":{"include_usage":true}}'


def scope_for(body: bytes) -> dict[str, Any]:
    """The scope hypercorn gives a POST /v1/chat/completions like wrk_chat.lua's."""
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1:4000"), (b"content-type", b"application/json"),
                    (b"authorization", b"Bearer " + targets.DEV_KEY.encode()),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 4000), "extensions": {},
    }


async def one_request(app: App, body: bytes = BODY) -> int:
    """One request through the app; its status."""
    sent = False
    status = 0
    finished = asyncio.Event()

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            finished.set()

    await app(scope_for(body), receive, send)
    return status


async def drive(app: App, requests: int, concurrency: int, body: bytes = BODY) -> int:
    """``requests`` requests, ``concurrency`` at a time; how many failed."""
    remaining = requests
    failed = 0

    async def worker() -> None:
        nonlocal remaining, failed
        while remaining > 0:
            remaining -= 1
            if await one_request(app, body) != 200:
                failed += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failed


async def measured(root: Path, requests: int, concurrency: int, calls: bool,
                   profile_to: str | None = None, floor_upstream: str | None = None,
                   body: bytes = BODY) -> dict[str, Any]:
    from aigw.runtime import heap

    app: App
    closing: Callable[[], Awaitable[None]]
    if floor_upstream:
        # bench/floor.py's pass-through with aiohttp's client: what aigw's stack costs in
        # process before any gateway logic (hypercorn's share is in neither figure).
        import floor

        forwarder = floor.make_forwarder("aiohttp", floor_upstream + "/v1/chat/completions")
        app = floor.create_app(forwarder)  # type: ignore[assignment]
        closing = forwarder.aclose
    else:
        from aigw.runtime.app import create_app
        from aigw.runtime.live import Gateway
        from aigw.runtime.telemetry import record
        from aigw.runtime.tokens import TokenCounter

        # The access log on, as aigw serve has it: one JSON line a request to a
        # line-buffered stream (serve's is stderr; here a file beside the gateway
        # directory). The gateway's own; a --base from before it had one: the process's.
        record.access_log.setLevel(logging.INFO)
        gateway = Gateway(root, TokenCounter())
        sink = getattr(record, "ACCESS_LOG", None) or gateway.telemetry.access_log
        sink.to_stream(open(root.parent / "access.log", "w", buffering=1))  # noqa: SIM115
        app = create_app(gateway)  # type: ignore[assignment]
        closing = gateway.aclose
    try:
        warm = await drive(app, min(2000, requests), concurrency, body)
        heap.freeze()  # as aigw serve does once it is up
        if calls:
            profile = cProfile.Profile()
            profile.enable()
            failed = await drive(app, 200, 1, body)
            profile.disable()
            stats = pstats.Stats(profile)
            return {"calls_per_request": stats.total_calls / 200,  # type: ignore[attr-defined]
                    "failed": failed + warm}
        if profile_to:
            profile = cProfile.Profile()
            profile.enable()
            failed = await drive(app, requests, concurrency, body)
            profile.disable()
            profile.dump_stats(profile_to)
            return {"profiled": profile_to, "failed": failed + warm}
        threads, cpu, wall = _thread_cpu(), time.process_time(), time.perf_counter()
        failed = await drive(app, requests, concurrency, body)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        after = _thread_cpu()
        main_thread = after.get(os.getpid(), 0.0) - threads.get(os.getpid(), 0.0)
    finally:
        await closing()
    return {"cpu_us": cpu / requests * 1e6, "requests_per_s": requests / wall,
            "other_threads_us": (cpu - main_thread) / requests * 1e6, "failed": failed + warm}


def _thread_cpu() -> dict[int, float]:
    """Each thread's CPU seconds (user + system), from /proc: the event loop's thread is
    the one whose id is the process's."""
    ticks = os.sysconf("SC_CLK_TCK")
    found = {}
    for task in Path("/proc/self/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        found[int(task.name)] = (int(fields[11]) + int(fields[12])) / ticks
    return found


def child(args: argparse.Namespace) -> None:
    """Measure in this process and print one JSON line."""
    if targets.can_pin():
        os.sched_setaffinity(0, {int(targets.SERVER_CORE)})
    try:
        import uvloop
        run: Callable[..., Any] = uvloop.run
    except ImportError:
        run = asyncio.run
    result = run(measured(Path(args.root), args.requests, args.concurrency, args.calls,
                          args.profile, args.floor_upstream,
                          STREAM_BODY if args.stream else BODY))
    print(json.dumps(result), flush=True)


def gateway_dir(work: Path, upstream_port: int, lean: bool) -> Path:
    root = work / ("aigw-lean" if lean else "aigw")
    root.mkdir()
    (root / "gateway.yaml").write_text(targets.aigw_config(upstream_port, lean))
    if not lean:
        shutil.copytree(targets.REPO / "policies", root / "policies")
    return root


def spawn(args: argparse.Namespace, root: Path, env: dict[str, str],
          floor_upstream: str | None = None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", "--root", str(root),
               "--requests", str(args.requests), "--concurrency", str(args.concurrency)]
    if floor_upstream:
        command += ["--floor-upstream", floor_upstream]
    if args.calls:
        command.append("--calls")
    if args.stream:
        command.append("--stream")
    if args.profile:
        command += ["--profile", str(Path(args.profile).resolve())]
    done = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True,
                          cwd=root.parent)
    if done.returncode != 0:
        raise RuntimeError(f"the measuring process failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["failed"]:
        raise RuntimeError(f"{result['failed']} requests failed: {result}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--lean", action="store_true", help="aigw configured as LiteLLM")
    parser.add_argument("--base", help="A/B: this git revision (A) against the working tree")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", action="store_true",
                        help="count the Python calls of a request instead of timing")
    parser.add_argument("--stream", action="store_true",
                        help="every request streamed (with its usage at the end)")
    parser.add_argument("--profile", metavar="PATH",
                        help="write a cProfile of --requests requests (pstats format) to PATH")
    parser.add_argument("--floor", action="store_true",
                        help="also measure bench/floor.py's aiohttp pass-through each round")
    parser.add_argument("--floor-upstream", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from ab import base_tree

    with tempfile.TemporaryDirectory(prefix="aigw-inproc-") as scratch:
        work = Path(scratch)
        upstream = targets.start_upstream(work, 1.0, 8, 1.0)
        envs = {"B": {}} if args.base is None else {
            "A": {"PYTHONPATH": str(base_tree(args.base, work))}, "B": {}}
        if args.floor:
            envs["floor"] = {}
        rounds = 1 if args.calls or args.profile else args.rounds
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in envs}
        try:
            for number in range(rounds):
                order = sorted(envs, reverse=number % 2 == 0)
                for name in order:
                    round_dir = work / f"{name}{number}"
                    round_dir.mkdir()
                    result = spawn(args, gateway_dir(round_dir, upstream.port, args.lean),
                                   envs[name], f"http://127.0.0.1:{upstream.port}"
                                   if name == "floor" else None)
                    results[name].append(result)
                    print(f"round {number + 1} {name}: {json.dumps(result)}", flush=True)
        finally:
            upstream.stop()
    for name, rows in results.items():
        label = {"A": args.base, "floor": "Starlette + aiohttp pass-through"}.get(
            name, "working tree")
        if args.calls:
            print(f"{name} ({label}): {rows[0]['calls_per_request']:.1f} Python calls a request")
            continue
        if args.profile:
            print(f"{name} ({label}): profile written to {rows[0]['profiled']}")
            continue
        cpu = [row["cpu_us"] for row in rows]
        print(f"{name} ({label}): CPU µs a request: median {statistics.median(cpu):,.0f}, "
              f"mean {statistics.mean(cpu):,.0f} over {len(cpu)} rounds "
              f"({', '.join(f'{c:,.0f}' for c in cpu)}); in-process requests/s, mean "
              f"{statistics.mean(row['requests_per_s'] for row in rows):,.0f}")


if __name__ == "__main__":
    main()
