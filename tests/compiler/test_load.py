"""Stage 1, load: positions of every node, includes, and file problems as diagnostics."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from aigw.compiler import compile_gateway
from aigw.compiler.diagnostics import DiagnosticSink
from aigw.compiler.load import MAX_FILE_BYTES, load
from aigw.compiler.source import Position

WriteGateway = Callable[..., Path]

GATEWAY = """\
version: 1

providers:
  local: {type: echo}

deployments:
  echo-small:
    provider: local
    model: "echo-1"
    context_window: 8192
    tags: [local, free]

routes:
  chat: {deployment: echo-small}
"""


def _codes(root: Path) -> list[str]:
    return [item.code.id for item in compile_gateway(root, {}).diagnostics]


def test_source_map_positions_keys_and_values(write_gateway: WriteGateway) -> None:
    loaded = load(write_gateway({"gateway.yaml": GATEWAY}), DiagnosticSink())
    assert loaded.gateway is not None
    source_map = loaded.gateway.source_map
    assert source_map.key(("deployments", "echo-small")) == Position("gateway.yaml", 7, 3, 10)
    assert source_map.key(("deployments", "echo-small", "provider")) == Position(
        "gateway.yaml", 8, 5, 8
    )
    assert source_map.value(("deployments", "echo-small", "provider")) == Position(
        "gateway.yaml", 8, 15, 5
    )
    # A quoted value's span covers its quotes; a list item has its own column.
    assert source_map.value(("deployments", "echo-small", "model")) == Position(
        "gateway.yaml", 9, 12, 8
    )
    assert source_map.value(("deployments", "echo-small", "tags", 1)) == Position(
        "gateway.yaml", 11, 19, 4
    )
    assert source_map.value(("routes", "chat", "deployment")) == Position(
        "gateway.yaml", 14, 22, 10
    )


def test_source_map_falls_back_to_nearest_ancestor(write_gateway: WriteGateway) -> None:
    loaded = load(write_gateway({"gateway.yaml": GATEWAY}), DiagnosticSink())
    assert loaded.gateway is not None
    source_map = loaded.gateway.source_map
    missing = ("deployments", "echo-small", "max_output_tokens")
    assert source_map.key(missing) == source_map.key(("deployments", "echo-small"))
    assert source_map.value(("nothing", "here")) == Position("gateway.yaml", 1, 1)


def test_empty_value_points_at_its_key(write_gateway: WriteGateway) -> None:
    # ruamel places an empty value at the next token, a line below.
    loaded = load(write_gateway({"gateway.yaml": "version: 1\nteams:\n  ops:\nkeys: {}\n"}),
                  DiagnosticSink())
    assert loaded.gateway is not None
    assert loaded.gateway.source_map.value(("teams", "ops")) == Position("gateway.yaml", 3, 3, 3)


def test_merge_key_values_keep_the_anchor_position(write_gateway: WriteGateway) -> None:
    text = (
        "version: 1\n"
        "providers:\n"
        "  local: &base {type: echo, timeout_s: 5}\n"
        "  other:\n"
        "    <<: *base\n"
        "    timeout_s: 9\n"
    )
    loaded = load(write_gateway({"gateway.yaml": text}), DiagnosticSink())
    assert loaded.gateway is not None
    assert loaded.gateway.data["providers"]["other"] == {"timeout_s": 9, "type": "echo"}
    source_map = loaded.gateway.source_map
    assert source_map.value(("providers", "other", "type")) == Position("gateway.yaml", 3, 23, 4)
    assert source_map.value(("providers", "other", "timeout_s")) == Position(
        "gateway.yaml", 6, 16, 1
    )


def test_includes_merge_into_one_graph(write_gateway: WriteGateway) -> None:
    root = write_gateway({
        "gateway.yaml": "version: 1\ninclude: [config/models.yaml]\n"
                        "routes:\n  chat: {group: fast}\n",
        "config/models.yaml": "include: [providers.yaml]\n"
                              "deployments:\n"
                              "  echo-small: {provider: local, model: m, context_window: 8192}\n"
                              "groups:\n  fast: {members: [echo-small]}\n",
        # Relative to config/, the file that includes it.
        "config/providers.yaml": "providers:\n  local: {type: echo}\n",
    })
    result = compile_gateway(root, {})
    assert result.graph is not None, result.diagnostics
    assert set(result.graph.providers) == {"local"}
    assert [d.name for d in result.graph.routes["chat"].candidates] == ["echo-small"]
    assert set(result.sources) == {"gateway.yaml", "config/models.yaml", "config/providers.yaml"}


def test_diamond_include_is_read_once(write_gateway: WriteGateway) -> None:
    root = write_gateway({
        "gateway.yaml": "version: 1\ninclude: [a.yaml, b.yaml]\nroutes:\n  chat: {deployment: e}\n",
        "a.yaml": "include: [shared.yaml]\n",
        "b.yaml": "include: [shared.yaml]\n",
        "shared.yaml": "providers:\n  local: {type: echo}\n"
                       "deployments:\n  e: {provider: local, model: m, context_window: 10}\n",
    })
    loaded = load(root, DiagnosticSink())
    assert [doc.path for doc in loaded.includes] == ["a.yaml", "shared.yaml", "b.yaml"]
    assert _codes(root) == []  # no "defined twice" for the shared file


def test_missing_include_hides_undefined_references(write_gateway: WriteGateway) -> None:
    # What the missing file would define is unknown, so nothing is called undefined.
    root = write_gateway({
        "gateway.yaml": "version: 1\ninclude: [models.yaml]\nroutes:\n  chat: {group: fast}\n",
    })
    assert _codes(root) == ["AGW105"]


def test_include_cycle_is_reported_once(write_gateway: WriteGateway) -> None:
    root = write_gateway({
        "gateway.yaml": "version: 1\ninclude: [a.yaml]\n",
        "a.yaml": "include: [gateway.yaml]\n",
    })
    result = compile_gateway(root, {})
    assert [item.code.id for item in result.errors] == ["AGW106"]
    assert result.errors[0].message == "include cycle: gateway.yaml -> a.yaml -> gateway.yaml"


def test_non_utf8_column_counts_characters(write_gateway: WriteGateway) -> None:
    # A two-byte "é" before the bad byte: the column counts characters, not bytes.
    root = write_gateway({"gateway.yaml": "version: 1\n# é ".encode() + b"\xff\n"})
    (item,) = compile_gateway(root, {}).diagnostics
    assert (item.code.id, item.position.line, item.position.column) == ("AGW107", 2, 5)


def test_yaml_errors_never_raise(write_gateway: WriteGateway, tmp_path: Path) -> None:
    broken = {
        "nul.yaml": 'version: 1\ninclude: ["a\\0b"]\n',
        "control.yaml": 'version: 1\nteams: {"a\x07": {}}\n',
        "keys.yaml": "version: 1\nteams:\n  null: {}\n  ? [a, b]\n  : {}\n",
        "documents.yaml": "version: 1\n---\nversion: 1\n",
    }
    for name, text in broken.items():
        root = write_gateway({"gateway.yaml": text}, root=tmp_path / name)
        codes = _codes(root)
        assert codes and "AGW901" not in codes, (name, codes)


def _diagnostics(root: Path) -> list[tuple[str, str]]:
    return [(item.code.id, item.message) for item in compile_gateway(root, {}).diagnostics]


def test_a_config_file_is_read_only_if_it_is_a_plain_file_in_the_tree(
    write_gateway: WriteGateway, tmp_path: Path,
) -> None:
    """What CI checks must not hang it (a FIFO), fill its memory (/dev/zero) or echo a
    file from elsewhere into its log (/proc/self/environ behind a link)."""
    root = write_gateway({"gateway.yaml": GATEWAY})
    (root / "policies").mkdir(exist_ok=True)
    (root / "policies" / "zero.cedar").symlink_to("/dev/zero")
    outside = tmp_path / "secret.txt"
    outside.write_text("CI_TOKEN=ghp_not_for_the_log\n")
    (root / "policies" / "elsewhere.cedar").symlink_to(outside)
    os.mkfifo(root / "policies" / "pipe.cedar")
    found = _diagnostics(root)
    assert ("AGW109", "'policies/zero.cedar' leads outside the gateway directory") in found
    assert ("AGW109", "'policies/elsewhere.cedar' leads outside the gateway directory") in found
    assert ("AGW105", "'policies/pipe.cedar' is not a regular file") in found
    assert all("ghp_not_for_the_log" not in message for _, message in found)


def test_a_symlink_loop_among_the_config_files_is_a_diagnostic(
    write_gateway: WriteGateway,
) -> None:
    """It was AGW901 (an internal error: resolve() raises RuntimeError), hiding every
    other diagnostic."""
    root = write_gateway({"gateway.yaml": GATEWAY})
    (root / "pipelines").mkdir(exist_ok=True)
    (root / "pipelines" / "loop.yaml").symlink_to("loop.yaml")
    (root / "pipelines" / "broken.yaml").write_text("steps: [\n")
    found = _diagnostics(root)
    assert ("AGW105", "'pipelines/loop.yaml' is a symlink loop") in found
    assert "AGW901" not in {code for code, _ in found}
    assert "AGW101" in {code for code, _ in found}  # the other file is still checked


def test_a_config_file_past_the_size_limit_is_refused_unread(write_gateway: WriteGateway) -> None:
    root = write_gateway({"gateway.yaml": GATEWAY})
    (root / "policies").mkdir(exist_ok=True)
    (root / "policies" / "huge.cedar").write_text("// padding\n" * (MAX_FILE_BYTES // 11 + 1))
    assert ("AGW110", "'policies/huge.cedar' is larger than 8 MiB") in _diagnostics(root)


def test_a_policy_nested_past_what_cedar_can_parse_is_a_diagnostic(
    write_gateway: WriteGateway,
) -> None:
    """cedarpy's parser crashed the process (a segfault) at about 700 levels."""
    root = write_gateway({"gateway.yaml": GATEWAY})
    (root / "policies").mkdir(exist_ok=True)
    (root / "policies" / "deep.cedar").write_text(
        '@id("deep")\npermit(principal, action, resource) when { '
        + "(" * 1000 + "true" + ")" * 1000 + " };\n")
    result = compile_gateway(root, {})
    assert [(d.code.id, str(d.position)) for d in result.errors] == [
        ("AGW401", "policies/deep.cedar:2:107")]


def test_the_gateway_file_given_for_its_directory_gets_a_hint(tmp_path: Path) -> None:
    """``aigw check gateway.yaml`` said "Not a directory" and no more."""
    config = tmp_path / "gateway.yaml"
    config.write_text("version: 1\n")
    [diagnostic] = compile_gateway(config).diagnostics
    assert diagnostic.code.id == "AGW105"
    assert diagnostic.hint == "pass the directory that holds gateway.yaml, not the file"


def test_a_policies_folder_that_cannot_be_read_is_an_error_not_no_policies(
    tmp_path: Path,
) -> None:
    """An unlistable policies/ read as empty: no policy, so Cedar checked nothing, and
    aigw check said "no problems" of a config whose forbids were all gone. Run as a
    process without the capability to read past permissions (root has it)."""
    (tmp_path / "gateway.yaml").write_text(
        "version: 1\nproviders: {local: {type: echo}}\n"
        "deployments: {e: {provider: local, model: echo-1, context_window: 8192}}\n"
        "routes: {r: {deployment: e}}\n")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.cedar").write_text('@id("no-r")\nforbid (principal, action, resource);\n')
    command = [sys.executable, "-m", "aigw", "check", str(tmp_path)]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root reads any folder, and setpriv (to drop that) is not here")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    policies.chmod(0)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    finally:
        policies.chmod(0o755)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "AGW105 error policies:1:1 'policies/' cannot be read" in done.stdout
