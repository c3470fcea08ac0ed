"""Stage 6, freeze: the Graph cannot be changed, and its fingerprint follows the source files."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aigw.compiler import Graph, compile_gateway
from aigw.compiler.graph import McpSse

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


def test_rerank_prices_search_units_per_thousand(write_gateway: WriteGateway) -> None:
    """Cohere prices rerank per 1,000 search units: the config says it so, and a call's
    cost adds its search units at a thousandth of that to its tokens' price."""
    priced = GATEWAY.replace(
        "context_window: 8192, tags: [free]}",
        "context_window: 8192, tags: [free]}\n"
        "  r: {provider: local, model: m, kind: rerank, context_window: 4096,\n"
        "      price: {input: 0.5, per_1k_search_units: 2}}")
    price = _graph(write_gateway({"gateway.yaml": priced})).deployments["r"].price
    assert price.search_unit == 0.002
    assert price.cost(1_000_000, 0, search_units=3) == pytest.approx(0.5 + 0.006)


def test_images_are_priced_each_by_size_or_at_per_image(write_gateway: WriteGateway) -> None:
    """DALL-E bills an image by its size: a size priced is billed and held at its price;
    one not priced is billed per_image, and held at the dearest, as 'auto' may be any."""
    priced = GATEWAY.replace(
        "context_window: 8192, tags: [free]}",
        "context_window: 8192, tags: [free]}\n"
        "  d: {provider: local, model: dall-e-3, kind: image, context_window: 4000,\n"
        "      price: {per_image: 0.04, per_image_by_size: {1792x1024: 0.08, 1024x1024: 0.04}}}")
    price = _graph(write_gateway({"gateway.yaml": priced})).deployments["d"].price
    assert price.image_by_size == (("1024x1024", 0.04), ("1792x1024", 0.08))
    assert price.cost(0, 0, images=2, image_size="1792x1024") == pytest.approx(0.16)
    assert price.cost(0, 0, images=2, image_size="512x512") == pytest.approx(0.08)
    assert price.cost(0, 0, images=1) == pytest.approx(0.04)
    assert price.dearest_image("1024x1024") == 0.04
    assert price.dearest_image("auto") == price.dearest_image(None) == 0.08


def test_audio_prices_per_minute_and_per_million_characters(
    write_gateway: WriteGateway,
) -> None:
    """OpenAI bills whisper per minute of audio and tts per million characters: a call's
    cost adds its seconds at a sixtieth of the one and its characters at a millionth of
    the other to its tokens' price (gpt-4o-transcribe's)."""
    priced = GATEWAY.replace(
        "context_window: 8192, tags: [free]}",
        "context_window: 8192, tags: [free]}\n"
        "  w: {provider: local, model: m, kind: transcription, context_window: 4096,\n"
        "      price: {input: 2.5, output: 10, per_minute: 0.006}}\n"
        "  s: {provider: local, model: m, kind: speech, context_window: 4096,\n"
        "      price: {per_1m_characters: 15}}")
    deployments = _graph(write_gateway({"gateway.yaml": priced})).deployments
    whisper, speech = deployments["w"].price, deployments["s"].price
    assert (whisper.minute, speech.character) == (0.006, 0.000015)
    assert whisper.cost(1000, 100, audio_seconds=90) == pytest.approx(
        0.0025 + 0.001 + 0.009)
    assert speech.cost(0, 0, characters=4096) == pytest.approx(4096 * 15 / 1_000_000)


def test_audio_token_prices_default_to_the_input_and_output_prices(
    write_gateway: WriteGateway,
) -> None:
    """A Realtime response's audio tokens are priced on their own where the config says
    (gpt-realtime's audio is 8x its text in, 4x out), else as text; cached audio is
    priced as any cached token."""
    priced = GATEWAY.replace(
        "context_window: 8192, tags: [free]}",
        "context_window: 8192, tags: [free], price: {input: 4, output: 16}}\n"
        "  b: {provider: local, model: m, context_window: 8192,\n"
        "      price: {input: 4, output: 16, cache_read: 0.4, audio_input: 32,\n"
        "              audio_output: 64}}")
    deployments = _graph(write_gateway({"gateway.yaml": priced})).deployments
    plain, audio = deployments["a"].price, deployments["b"].price
    assert (plain.audio_input, plain.audio_output) == (4, 16)
    # 120 in: 20 cached, 80 fresh audio, 20 fresh text; 40 out: 30 audio, 10 text.
    assert audio.cost(120, 40, cache_read_tokens=20, audio_input_tokens=80,
                      audio_output_tokens=30) == pytest.approx(
        (20 * 4 + 20 * 0.4 + 80 * 32 + 10 * 16 + 30 * 64) / 1_000_000)
    assert plain.cost(120, 40, audio_input_tokens=80, audio_output_tokens=30) == \
        pytest.approx(plain.cost(120, 40))


def test_cache_prices_default_to_the_input_price(write_gateway: WriteGateway) -> None:
    """A config that names no cache price bills cached prompt tokens as input tokens, as
    before cache prices existed; one that names them gets them, each on its own."""
    priced = GATEWAY.replace(
        "context_window: 8192, tags: [free]}",
        "context_window: 8192, tags: [free], price: {input: 3, output: 15}}\n"
        "  b: {provider: local, model: m, context_window: 8192,\n"
        "      price: {input: 3, output: 15, cache_read: 0.3, cache_write: 3.75}}\n"
        "  c: {provider: local, model: m, context_window: 8192,\n"
        "      price: {input: 3, output: 15, cache_read: 0}}")
    deployments = _graph(write_gateway({"gateway.yaml": priced})).deployments
    prices = {name: dataclasses.astuple(deployments[name].price) for name in "abc"}
    assert prices == {"a": (3, 15, 3, 3, 0, 0, (), 0, 0, 3, 15),
                      "b": (3, 15, 0.3, 3.75, 0, 0, (), 0, 0, 3, 15),
                      "c": (3, 15, 0, 3, 0, 0, (), 0, 0, 3, 15)}
    price = deployments["b"].price
    # 400,000 fresh, 500,000 read and 100,000 written of a million prompt tokens; 1,000 out
    assert price.cost(1_000_000, 1000, 500_000, 100_000) == pytest.approx(
        1.2 + 0.15 + 0.375 + 0.015)
    assert price.most(1_000_000, 1000) == pytest.approx(3.75 + 0.015)  # all written


def test_a_stdio_mcp_server_is_frozen_with_its_cwd_from_the_config_folder(
    write_gateway: WriteGateway,
) -> None:
    root = write_gateway({"gateway.yaml": GATEWAY + """\
mcp_servers:
  fs: {command: [sh, -c, "exec my-server"], cwd: data, env: {TOKEN: "${MCP_TOKEN}"}}
  plain: {command: [sh]}
  web: {url: "https://mcp.example.com/mcp"}
"""})
    graph = compile_gateway(root, {"MCP_TOKEN": "t0ken"}).graph
    assert graph is not None
    fs, plain = graph.mcp_servers["fs"], graph.mcp_servers["plain"]
    assert fs.url == "stdio://fs" and fs.stdio is not None and plain.stdio is not None
    assert fs.stdio.command == ("sh", "-c", "exec my-server")
    assert (fs.stdio.cwd, plain.stdio.cwd) == (str(root / "data"), str(root))
    assert (fs.stdio.idle_timeout_s, fs.stdio.max_sessions) == (300.0, 16)
    assert dict(fs.stdio.env) == {"TOKEN": "t0ken"} and "t0ken" not in repr(fs)
    with pytest.raises(TypeError):
        fs.stdio.env["X"] = "y"  # type: ignore[index]
    assert graph.mcp_servers["web"].stdio is None
    assert graph.mcp_servers["web"].sse is None


def test_an_sse_mcp_server_is_frozen_with_how_its_sessions_are_held(
    write_gateway: WriteGateway,
) -> None:
    root = write_gateway({"gateway.yaml": GATEWAY + """\
mcp_servers:
  legacy: {url: "https://mcp.example.com/sse", transport: sse, max_sessions: 4}
  web: {url: "https://mcp.example.com/mcp", transport: streamable_http}
"""})
    graph = _graph(root)
    legacy = graph.mcp_servers["legacy"]
    assert legacy.url == "https://mcp.example.com/sse" and legacy.stdio is None
    assert legacy.sse == McpSse(idle_timeout_s=300.0, max_sessions=4)
    assert graph.mcp_servers["web"].sse is None


def test_a_routes_cache_keeps_answers_apart_by_model_unless_it_is_one_model(
    write_gateway: WriteGateway,
) -> None:
    """Deployments of one model id share a route's cached answers, whatever their
    providers; of several, only where the cache says they are one model (``one_model``),
    a fallback group's members counted: a caller routed to one model is otherwise served
    another's answer."""
    text = GATEWAY.replace("  local: {type: echo}\n", "  local: {type: echo}\n"
                           "  other: {type: echo}\n").replace(
        "tags: [free]}\n", "tags: [free]}\n"
        "  twin: {provider: other, model: m, context_window: 8192}\n"
        "  big: {provider: other, model: m-large, context_window: 8192}\n").replace(
        "  main: {members: [a]}\n", "  main: {members: [a]}\n  twins: {members: [a, twin]}\n"
        "  pair: {members: [a, big]}\n  falls: {members: [a], fallbacks: [pair]}\n").replace(
        "  chat: {group: main}\n", "  chat: {group: main, cache: {}}\n"
        "  twins: {group: twins, cache: {}}\n  pair: {group: pair, cache: {}}\n"
        "  falls: {group: falls, cache: {}}\n"
        "  alike: {group: pair, cache: {one_model: true}}\n")
    routes = _graph(write_gateway({"gateway.yaml": text})).routes
    by_model = {name: route.cache.by_model for name, route in routes.items()
                if route.cache is not None}
    assert by_model == {"chat": False, "twins": False, "pair": True, "falls": True,
                        "alike": False}
