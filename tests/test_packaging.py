"""Packaging promises: a light compiler, fresh schemas, a clean default config, helpful CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from aigw.cli import main
from aigw.compiler import compile_gateway
from aigw.compiler.schema import json_schemas

REPO = Path(__file__).resolve().parent.parent


def test_compiler_imports_no_runtime_or_network_library() -> None:
    probe = (
        "import sys, aigw.compiler, aigw.cli\n"
        "heavy = {'starlette', 'httpx', 'redis', 'hypercorn', 'aiohttp', 'watchfiles', 'uvloop'}\n"
        "print([m for m in sys.modules if m.split('.')[0] in heavy"
        " or m.startswith('aigw.runtime')])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_every_module_is_under_800_lines() -> None:
    """STYLE.md: aim for ~400 lines a module, never past ~800."""
    long = {str(path.relative_to(REPO)): lines
            for folder in ("compiler", "runtime", "aigw")
            for path in sorted((REPO / folder).rglob("*.py"))
            if (lines := len(path.read_text().splitlines())) > 800}
    assert long == {}


def test_the_runtime_does_not_import_the_a2a_sdk() -> None:
    """a2a-sdk is a test dependency (the agents agent steps call in tests): the
    gateway speaks A2A's wire format itself."""
    probe = (
        "import sys, aigw.runtime.app, aigw.runtime.workflows.kinds\n"
        "print([m for m in sys.modules if m.split('.')[0] == 'a2a'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_gateway_starts_without_numpy() -> None:
    """numpy serves the semantic cache only: imported at start, it cost every gateway
    0.1 s and its memory whether any route had a semantic cache or not."""
    probe = (
        "import sys, aigw.runtime.app, aigw.runtime.exchange\n"
        "print([m for m in sys.modules if m.split('.')[0] == 'numpy'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_checked_in_schemas_are_fresh() -> None:
    for name, text in json_schemas().items():
        path = REPO / "schemas" / name
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run 'aigw schema'"


def test_checked_in_cedar_schema_is_fresh() -> None:
    graph = compile_gateway(REPO, environ={}).graph
    assert graph is not None
    path = REPO / "schemas" / "policies.cedarschema"
    assert path.read_text(encoding="utf-8") == graph.authorization.schema_text, (
        f"{path} is stale: run 'aigw schema'")


def test_schema_check_flags_stale_files(tmp_path: Path) -> None:
    assert main(["schema", str(tmp_path), "--check"]) == 1
    assert main(["schema", str(tmp_path)]) == 0
    assert main(["schema", str(tmp_path), "--check"]) == 0
    schema = json.loads((tmp_path / "schemas" / "gateway.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert "deployments" in schema["properties"]


def test_shipped_gateway_compiles_without_any_diagnostic() -> None:
    result = compile_gateway(REPO, environ={})
    assert result.ok
    assert result.diagnostics == ()


def test_aigw_check_on_the_shipped_config_exits_zero() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aigw", "check", str(REPO), "--strict"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "no problems\n"


def test_every_command_has_help_with_an_example() -> None:
    for command in ("check", "compile", "schema", "serve", "reload", "test", "route",
                    "namespaces"):
        result = subprocess.run(
            [sys.executable, "-m", "aigw", command, "--help"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "example" in result.stdout, command
