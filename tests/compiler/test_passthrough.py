"""Pass-through (compiler/passthrough.py): globs compiled once, the frozen entry, its Cedar."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from aigw.compiler import compile_gateway

WriteGateway = Callable[..., Path]

GATEWAY = """\
version: 1
providers:
  openai: {type: openai, api_key: "${OPENAI_KEY}"}
deployments:
  mini: {provider: openai, model: gpt-4o-mini, context_window: 8192, price: {input: 1}}
  mini-too: {provider: openai, model: gpt-4o-mini, context_window: 8192, price: {input: 9}}
routes: {mini: {deployment: mini}, mini-too: {deployment: mini-too}}
keys:
  narrow: {sha256: 2f0527c3d35a1f337ec6033b75e33c053e72e7122963d86dffe7c2f10bcbb482,
           passthrough: [openai-raw]}
passthrough:
  openai-raw:
    provider: openai
    paths: ["/v1/vector_stores/**", "/v1/files/*/content", "/v1/fine_tuning/**/events"]
    methods: [GET, DELETE]
"""


@pytest.mark.parametrize(("path", "allowed"), [
    ("/v1/vector_stores", True),
    ("/v1/vector_stores/vs_1/files/file-2", True),
    ("/v1/vector_storesX", False),
    ("/v1/files/file-1/content", True),
    ("/v1/files/file-1", False),
    ("/v1/files/a/b/content", False),
    ("/v1/fine_tuning/events", True),
    ("/v1/fine_tuning/jobs/ftjob-1/events", True),
    ("/v1/fine_tuning/jobs", False),
    ("/v2/vector_stores", False),
])
def test_paths_match_the_globs_whole(write_gateway: WriteGateway, path: str,
                                     allowed: bool) -> None:
    graph = compile_gateway(write_gateway({"gateway.yaml": GATEWAY}), {"OPENAI_KEY": "sk-1"}).graph
    assert graph is not None
    assert graph.passthrough["openai-raw"].allows(path) is allowed


def test_the_frozen_entry_its_key_and_its_cedar_resource(write_gateway: WriteGateway) -> None:
    graph = compile_gateway(write_gateway({"gateway.yaml": GATEWAY}), {"OPENAI_KEY": "sk-1"}).graph
    assert graph is not None
    passthrough = graph.passthrough["openai-raw"]
    assert passthrough.provider is graph.providers["openai"]
    assert passthrough.methods == frozenset({"GET", "DELETE"})
    assert passthrough.prices["gpt-4o-mini"].name == "mini"  # the first that serves it
    assert graph.keys_by_name["narrow"].passthrough == frozenset({"openai-raw"})
    schema = graph.authorization.schema_text
    assert 'entity Passthrough enum ["openai-raw"];' in schema
    assert "Passthrough]" in schema  # a resource of invoke
