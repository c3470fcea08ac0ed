"""A fake vLLM server: the OpenAI fake plus vLLM's ``/health`` and ``/metrics``.

In-process (``FakeVllm(...).app``, served by ``serving``) a test sets its load. As a
process it stands in for the ``vllm serve`` command that ``aigw serve`` starts for a
``serve:`` block, taking the same command line::

    python tests/fakes/vllm_fake.py serve MODEL --host H --port P --served-model-name N ...

Like vLLM it opens its port only once its model is "loaded" (after
``FAKE_VLLM_LOAD_S`` seconds, and once the file ``FAKE_VLLM_HOLD`` names exists, when
a test wants to decide when), requires ``VLLM_API_KEY`` as the bearer key when that
is set, and runs an engine in a child process of its own process group (with
``FAKE_VLLM_ENGINE=1``), as vLLM's engine core does. ``GET /fake/launch`` says how it
was started; ``POST /fake/sick`` makes ``/health`` fail as vLLM's does when its
engine died while the API process lives on.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

if __package__ in (None, ""):  # run as a script: make ``tests.fakes`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fakes.openai_fake import OpenAIFake


class FakeVllm:
    """An OpenAI-compatible server with vLLM's metrics, whose load a test sets."""

    def __init__(self, name: str, model: str = "meta-llama/Llama-3.1-8B-Instruct") -> None:
        self.chat = OpenAIFake(name=name)
        self.model = model
        self.running, self.waiting, self.kv_cache = 0, 0, 0.1
        self.prefix_hits, self.prefix_queries = 0.0, 0.0  # tokens, since it started
        self.healthy = True
        self.launch: dict[str, object] = {}  # how the process was started (as a process)
        self.app = Starlette(routes=[
            *self.chat.app.routes,
            Route("/metrics", self._metrics),
            Route("/health", self._health),
            Route("/fake/launch", self._launch),
            Route("/fake/sick", self._sick, methods=["POST"]),
        ])

    async def _health(self, _request: Request) -> Response:
        return Response(status_code=200 if self.healthy else 500)

    async def _launch(self, _request: Request) -> JSONResponse:
        return JSONResponse(self.launch)

    async def _sick(self, _request: Request) -> Response:
        self.healthy = False
        return Response(status_code=204)

    async def _metrics(self, _request: Request) -> PlainTextResponse:
        labels = f'engine="0",model_name="{self.model}"'
        return PlainTextResponse(
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{labels}}} {float(self.running)}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{labels}}} {float(self.waiting)}\n"
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f"vllm:kv_cache_usage_perc{{{labels}}} {self.kv_cache}\n"
            "# HELP vllm:prefix_cache_queries Prefix cache queries, in tokens.\n"
            "# TYPE vllm:prefix_cache_queries counter\n"
            f"vllm:prefix_cache_queries_total{{{labels}}} {self.prefix_queries}\n"
            "# HELP vllm:prefix_cache_hits Prefix cache hits, in tokens.\n"
            "# TYPE vllm:prefix_cache_hits counter\n"
            f"vllm:prefix_cache_hits_total{{{labels}}} {self.prefix_hits}\n"
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
            "# TYPE vllm:prompt_tokens_total counter\n"
            f"vllm:prompt_tokens_total{{{labels}}} 1234.0\n",
            media_type="text/plain; version=0.0.4")


def main() -> None:
    parser = argparse.ArgumentParser(prog="vllm")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name")
    options, _rest = parser.parse_known_args()
    time.sleep(float(os.environ.get("FAKE_VLLM_LOAD_S", "0")))  # "loading the model"
    hold = os.environ.get("FAKE_VLLM_HOLD")
    while hold and not Path(hold).exists():
        time.sleep(0.05)
    engine = None
    if os.environ.get("FAKE_VLLM_ENGINE"):  # vLLM's engine core runs as a child process
        engine = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    fake = FakeVllm("fake-vllm", options.served_model_name or options.model)
    fake.chat.api_key = os.environ.get("VLLM_API_KEY", "")
    fake.launch = {
        "argv": sys.argv[1:],
        "pid": os.getpid(),
        "engine_pid": engine.pid if engine is not None else None,
        "env": {name: os.environ.get(name)
                for name in ("CUDA_VISIBLE_DEVICES", "VLLM_API_KEY", "HF_TOKEN",
                             "PROMETHEUS_MULTIPROC_DIR")},
    }
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"{options.host}:{options.port}"]
    config.accesslog = None
    print(f"fake vLLM: serving {options.model} on port {options.port}", flush=True)
    asyncio.run(serve(fake.app, config))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
