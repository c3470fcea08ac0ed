"""Stage 6, freeze: the Graph cannot be changed, and its fingerprint follows the source files."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aigw.compiler import Graph, compile_gateway

WriteGateway = Callable[..., Path]

GATEWAY = """\
version: 1
providers:
  local: {type: echo}
deployments:
  a: {provider: local, model: m, context_window: 8192, tags: [free]}
groups:
  main: {members: [a]}
routes:
  chat: {group: main}
"""
POLICY = '@id("all")\npermit (principal, action, resource);\n'


def _graph(root: Path) -> Graph:
    graph = compile_gateway(root, {}).graph
    assert graph is not None
    return graph


def test_graph_fields_cannot_be_assigned(write_gateway: WriteGateway) -> None:
    graph = _graph(write_gateway({"gateway.yaml": GATEWAY}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.fingerprint = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.deployments["a"].context_window = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        graph.routes["chat"].candidates[0].provider.disabled_reason = "off"  # type: ignore[misc]


def test_graph_mappings_and_sequences_cannot_be_changed(write_gateway: WriteGateway) -> None:
    graph = _graph(write_gateway({"gateway.yaml": GATEWAY, "policies/p.cedar": POLICY}))
    mappings: list[Any] = [graph.providers, graph.deployments, graph.groups, graph.routes,
                           graph.teams, graph.keys_by_sha256, graph.pipelines,
                           graph.providers["local"].headers]
    for mapping in mappings:
        with pytest.raises(TypeError):
            mapping["new"] = None
    sequences: list[Any] = [graph.policies, graph.warnings, graph.routes["chat"].candidates,
                            graph.groups["main"].members, graph.deployments["a"].tags]
    for sequence in sequences:
        assert isinstance(sequence, tuple)
    assert isinstance(graph.deployments["a"].capabilities, frozenset)


def test_fingerprint_is_stable_and_changes_with_any_file(write_gateway: WriteGateway) -> None:
    root = write_gateway({"gateway.yaml": GATEWAY, "policies/p.cedar": POLICY})
    first = _graph(root).fingerprint
    assert len(first) == 64
    assert _graph(root).fingerprint == first

    (root / "gateway.yaml").write_text(GATEWAY + "# a comment\n", encoding="utf-8")
    edited = _graph(root).fingerprint
    assert edited != first

    (root / "policies/p.cedar").write_text(POLICY.replace('"all"', '"everyone"'), encoding="utf-8")
    assert _graph(root).fingerprint not in {first, edited}


def test_fingerprint_does_not_depend_on_the_directory(
    write_gateway: WriteGateway, tmp_path: Path
) -> None:
    files = {"gateway.yaml": GATEWAY, "policies/p.cedar": POLICY}
    one = write_gateway(files, root=tmp_path / "one")
    two = write_gateway(files, root=tmp_path / "two")
    assert _graph(one).fingerprint == _graph(two).fingerprint
