"""Part of stage 3, link: the vLLM servers deployments ask ``aigw serve`` to run.

A deployment's ``serve:`` block becomes a ``ServedServer``: the command line that starts
vLLM where the deployment's provider points (its ``base_url``, which must be on this
machine with an explicit port), the environment it adds, and the URL that says when it
is up. Problems are positioned diagnostics (AGW324, AGW325); nothing here starts anything.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from . import codes
from .diagnostics import DiagnosticSink, shown_url
from .graph import ServedServer
from .source import Position
from .spec import ENV_NAME_PATTERN, DeploymentSpec, ServeSpec

if TYPE_CHECKING:
    from .link import Entry, LinkedProvider

# text, where it was written -> the text with its ${ENV} references replaced
Resolve = Callable[[str, Position], str]
# Environment aigw sets itself, and from what.
_OWN_ENV = {"CUDA_VISIBLE_DEVICES": "serve.gpus", "VLLM_API_KEY": "the provider's api_key"}

# Flags aigw writes from the config; given again in ``args`` they would contradict it.
_OWN_FLAGS = {
    "--host": "the provider's base_url",
    "--port": "the provider's base_url",
    "--served-model-name": "the deployment's model",
    "--gpu-memory-utilization": "serve.gpu_memory_utilization",
    "--tensor-parallel-size": "serve.tensor_parallel_size",
    "-tp": "serve.tensor_parallel_size",
    "--max-model-len": "serve.max_model_len",
    "--api-key": "the provider's api_key",
    "--model": "serve.model",
}


def link_served(
    deployments: Mapping[str, Entry[DeploymentSpec]],
    providers: Mapping[str, LinkedProvider],
    resolve: Resolve,
    sink: DiagnosticSink,
) -> dict[str, ServedServer]:
    """Deployment name -> the server to run for it, for every usable ``serve:`` block."""
    served: dict[str, ServedServer] = {}
    # Port -> the deployment serving there: every address is on this machine, and
    # 127.0.0.1, localhost and [::1] may well be one socket.
    listening: dict[int, str] = {}
    for name, entry in deployments.items():
        serve = entry.spec.serve
        provider = providers.get(entry.spec.provider)
        if serve is None or provider is None:  # an unknown provider is reported already
            continue
        address = _address(entry, provider, sink)
        server = _server(entry, serve, provider, address, resolve, sink)
        if server is None or address is None:
            continue
        port = address[1]
        if port in listening:
            sink.add(
                codes.SERVE_ADDRESS_TAKEN,
                f"deployments '{listening[port]}' and '{name}' both start a vLLM server "
                f"on port {port} of this machine",
                entry.key("serve"),
                "give each served deployment its own provider, with its own port in base_url",
            )
            continue
        listening[port] = name
        # A disabled provider (an unset ${ENV} key, say) serves nothing: no GPU for it.
        if provider.disabled_reason is None:
            served[name] = server
    return served


def _address(entry: Entry[DeploymentSpec], provider: LinkedProvider,
             sink: DiagnosticSink) -> tuple[str, int] | None:
    """Where the server must listen: the provider's base_url, if it is on this machine."""
    kind = provider.entry.spec.type
    if kind != "vllm":
        sink.add(
            codes.SERVE_INVALID,
            f"deployment '{entry.name}' has a serve: block, but its provider "
            f"'{provider.entry.name}' is of type '{kind}'; aigw starts only vLLM servers",
            entry.key("serve"),
            f"set type: vllm on provider '{provider.entry.name}', or remove serve:",
        )
        return None
    if provider.base_url is None:  # the provider's own error says it needs one
        return None
    url = urllib.parse.urlsplit(provider.base_url)
    try:
        port = url.port
    except ValueError:
        port = None
    host = url.hostname or ""
    if url.scheme != "http" or port is None or not is_loopback(host):
        sink.add(
            codes.SERVE_INVALID,
            f"deployment '{entry.name}' starts a vLLM server, but provider "
            f"'{provider.entry.name}' points at {shown_url(provider.base_url)}; a server aigw "
            "starts listens on this machine, over http, on the port base_url names",
            entry.key("serve"),
            f"set base_url: http://127.0.0.1:8001/v1 (a free port) on provider "
            f"'{provider.entry.name}'",
        )
        return None
    return host, port


def _server(
    entry: Entry[DeploymentSpec],
    serve: ServeSpec,
    provider: LinkedProvider,
    address: tuple[str, int] | None,
    resolve: Resolve,
    sink: DiagnosticSink,
) -> ServedServer | None:
    spec = entry.spec
    errors = sink.error_count
    if serve.gpus is not None:
        if len(set(serve.gpus)) != len(serve.gpus):
            sink.add(codes.SERVE_INVALID, f"deployment '{entry.name}' lists a GPU twice",
                     entry.value("serve", "gpus"), "list each GPU index once")
        elif len(serve.gpus) < serve.tensor_parallel_size:
            sink.add(
                codes.SERVE_INVALID,
                f"deployment '{entry.name}' splits its model over {serve.tensor_parallel_size} "
                f"GPUs (tensor_parallel_size) but may use only {len(serve.gpus)}",
                entry.value("serve", "gpus"),
                "list at least tensor_parallel_size GPUs, or lower tensor_parallel_size",
            )
    max_model_len = serve.max_model_len or spec.context_window
    if max_model_len < spec.context_window:
        sink.add(
            codes.SERVE_INVALID,
            f"deployment '{entry.name}': its server accepts {max_model_len} tokens "
            f"(max_model_len) but the gateway sends it up to {spec.context_window} "
            "(context_window), which it would refuse",
            entry.value("serve", "max_model_len"),
            f"lower context_window to {max_model_len}, or raise max_model_len",
        )
    # ${ENV} references are read as everywhere else in the config (no shell runs the
    # command to read them); an unset one is a warning, and the server gets it empty.
    args = [resolve(argument, entry.value("serve", "args", index))
            for index, argument in enumerate(serve.args)]
    command = [resolve(part, entry.value("serve", "command", index))
               for index, part in enumerate(serve.command)]
    model = spec.model if serve.model is None \
        else resolve(serve.model, entry.value("serve", "model"))
    for index, argument in enumerate(args):
        # vLLM's parser takes --max_model_len for --max-model-len.
        flag = argument.split("=", 1)[0]
        flag = "--" + flag[2:].replace("_", "-") if flag.startswith("--") else flag
        if flag in _OWN_FLAGS:
            sink.add(
                codes.SERVE_INVALID,
                f"deployment '{entry.name}': {flag} is set by aigw from {_OWN_FLAGS[flag]}",
                entry.value("serve", "args", index),
                f"remove it from args and set {_OWN_FLAGS[flag]} instead",
            )
    for name in serve.env:
        if not ENV_NAME_PATTERN.match(name):
            sink.add(codes.SERVE_INVALID,
                     f"deployment '{entry.name}': '{name}' is not an environment variable name",
                     entry.key("serve", "env", name),
                     "names are letters, digits and underscores, not starting with a digit")
        elif name in _OWN_ENV:
            sink.add(codes.SERVE_INVALID,
                     f"deployment '{entry.name}': {name} is set by aigw from {_OWN_ENV[name]}",
                     entry.key("serve", "env", name),
                     f"remove it from env and set {_OWN_ENV[name]} instead")
    if sink.error_count > errors or address is None:
        return None
    host, port = address
    argv = (
        *command, model,
        "--host", host, "--port", str(port),
        "--served-model-name", spec.model,
        "--gpu-memory-utilization", f"{serve.gpu_memory_utilization:g}",
        "--tensor-parallel-size", str(serve.tensor_parallel_size),
        "--max-model-len", str(max_model_len),
        *args,
    )
    env = {name: resolve(value, entry.value("serve", "env", name))
           for name, value in serve.env.items()}  # an unset ${NAME} is empty (a warning)
    if serve.gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, serve.gpus))
    if provider.api_key:  # the server then refuses callers without the gateway's key
        env["VLLM_API_KEY"] = provider.api_key  # not on the command line: ps shows that
    authority = f"[{host}]" if ":" in host else host
    return ServedServer(
        argv=argv,
        env=tuple(sorted(env.items())),
        host=host,
        port=port,
        health_url=f"http://{authority}:{port}/health",
        startup_timeout_s=serve.startup_timeout_s,
    )


def is_loopback(host: str) -> bool:
    """Is ``host`` (a name or an address) this machine's loopback?"""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
