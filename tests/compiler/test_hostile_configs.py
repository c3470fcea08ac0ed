"""The compiler never crashes: any config, however broken, gets positioned diagnostics.

Mutated copies of the shipped gateway and of golden cases (keys deleted, values of the
wrong type, duplicate keys, anchors, tags, deep nesting, huge numbers, NaN, bytes that
are not UTF-8, BOMs, tabs, empty files, Cedar that does not parse or names what the
config does not define) must compile to diagnostics that each have a code and a
position, and no internal error (AGW901: a crash the compiler caught). A seeded
generator, not hypothesis: the same cases every run, in a few seconds, and a failure
names the case that made it.
"""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from aigw.compiler import CompileResult, compile_gateway, render_github, render_json, render_text

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "cases"
# The shipped gateway (its gateway.yaml, policies/ and pipelines/) and golden cases that
# use most of the language; the small ones compile in a tenth of the time, so they are
# drawn more often.
BASES = (REPO, *(GOLDEN / name for name in (
    "ok-minimal", "ok-minimal", "ok-every-step-kind", "ok-yaml-anchors-and-merge",
    "ok-includes-and-policies", "ok-guardrails", "ok-passthrough", "ok-issuers")))
SEED = 20261125
MUTATED_CASES = 36
ENVIRON = {"SET_KEY": "sk-test-123"}

# Values a mutation writes in place of another, as YAML text.
VALUES = (
    "null", "''", "0", "-1", "1.5", "true", "[]", "{}", "[{}]", "{a: 1}", "[a, 1, null]",
    "99999999999999999999999999999", "1e999", "-1e999", ".nan", ".inf", "-.inf",
    "2024-13-45", "12:30:00", "0x1F", '"${"', '"${UNSET}"', "'" + "x" * 300 + "'",
    '"\\ud800"', '"\\x00"', "!!python/object:os.system {}", "!include other.yaml",
    "!!bool maybe", "!!int ''", "!!set x", "!!binary 5", "*undefined", "&anchor {x: 1}",
    "{<<: [x]}", "{null: 1}", "{1: 2}", "[" * 80 + "]" * 80, "{a: " * 300 + "1" + "}" * 300,
)
# Text a mutation writes at a random place of a YAML file.
YAML_SNIPPETS = ("&a ", "*a ", "<<: *a\n", "!!python/object:x ", "!x ", "{", "[", '"', "'",
                 ": ", "- ", "? ", "%YAML 1.1\n", "---\n", "\t", "\x07", "|\n")
# Policies appended to a Cedar file: syntax errors, unknown types, actions, attributes
# and entities, templates, annotations that are not what aigw reads.
POLICIES = (
    "permit(",
    "@id(\"x\") permit(principal, action, resource) when { resource.price > };",
    "@id(\"x\") permit(principal is Provider, action, resource);",
    "@id(\"x\") forbid(principal, action == Action::\"deploy\", resource);",
    "@id(\"x\") permit(principal in Team::\"nobody\", action == Action::\"invoke\", resource);",
    "@id(\"x\") permit(principal, action == Action::\"route\", resource) "
    "when { resource.average_latency < 5 };",
    "@id(\"x\") permit(principal == ?principal, action, resource);",
    "@priority(\"high\") @id(\"x\") permit(principal, action, resource);",
    "@id(\"x\") permit(principal, action, resource) when { "
    + " && ".join(["context.stream"] * 600) + " };",
    "@id(\"x\") permit(principal, action, resource) when { "
    + "(" * 300 + "true" + ")" * 300 + " };",
    "\"unended",
)

_DIAGNOSTIC = re.compile(r"^AGW\d{3} (?:error|warning) \S.*?:\d+:\d+ \S")


def _dump(data: Any) -> str:
    text = io.StringIO()
    YAML(typ="rt", pure=True).dump(data, text)
    return text.getvalue()


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``node`` but the root's."""
    found = [path] if path else []
    items = node.items() if isinstance(node, dict) else \
        enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        found += _nodes(value, (*path, key))
    return found


def _mutate_data(rng: random.Random, text: str) -> tuple[str, str]:
    """Keys deleted or renamed, values replaced by one of ``VALUES``."""
    data = YAML(typ="rt", pure=True).load(text)
    raw: dict[str, str] = {}
    done = []
    for _ in range(rng.randint(1, 3)):
        paths = _nodes(data)
        if not paths:
            break
        path = rng.choice(paths)
        parent = data
        for step in path[:-1]:
            parent = parent[step]
        choice = rng.random()
        if choice < 0.25:
            del parent[path[-1]]
            done.append(f"deleted {path}")
        elif choice < 0.9 or not isinstance(parent, dict):
            token = f"__value_{len(raw)}__"
            raw[token] = rng.choice(VALUES)
            parent[path[-1]] = token
            done.append(f"{path} = {raw[token][:40]}")
        else:
            parent[rng.choice(("", "x y", "-", "a" * 200, "\u00e9"))] = parent.pop(path[-1])
            done.append(f"renamed {path}")
    mutated = _dump(data)
    for token, value in raw.items():
        mutated = mutated.replace(token, value)
    return "; ".join(done), mutated


def _mutate_yaml_text(rng: random.Random, text: str) -> tuple[str, str | bytes]:
    lines = text.splitlines(keepends=True)
    at = rng.randrange(len(lines))
    offset = rng.randrange(len(text) + 1)
    mutations: dict[str, Callable[[], str | bytes]] = {
        "line repeated (duplicate key)": lambda: "".join(lines[: at + 1] + lines[at:]),
        "indent as a tab": lambda: "".join(
            [*lines[:at], lines[at].replace("  ", "\t", 1), *lines[at + 1 :]]),
        "line deleted": lambda: "".join(lines[:at] + lines[at + 1 :]),
        "snippet inserted": lambda: text[:offset] + rng.choice(YAML_SNIPPETS) + text[offset:],
        "byte 0xff": lambda: text[:offset].encode() + b"\xff" + text[offset:].encode(),
        "UTF-8 BOM": lambda: b"\xef\xbb\xbf" + text.encode(),
        "UTF-16": lambda: text.encode("utf-16"),
        "empty": lambda: "",
        "CRLF line ends": lambda: text.replace("\n", "\r\n"),
        "nested 400 deep": lambda: text + "x:\n" + "".join(
            "  " * depth + "y:\n" for depth in range(1, 400)),
        "alias bomb": lambda: text + "a: &a [x, x, x, x, x, x, x, x]\n" + "".join(
            f"{name}: &{name} [{', '.join([f'*{prev}'] * 8)}]\n"
            for prev, name in zip("abcdefg", "bcdefgh", strict=True)),
    }
    name = rng.choice(sorted(mutations))
    return f"{name} at line {at + 1}", mutations[name]()


def _mutate_cedar(rng: random.Random, text: str) -> tuple[str, str]:
    if rng.random() < 0.7:
        policy = rng.choice(POLICIES)
        return f"appended {policy[:60]!r}", f"{text}\n{policy}\n"
    offset = rng.randrange(len(text) + 1)
    inserted = rng.choice(("(", ")", ";", '"', "{", "}", "::", "@", "==", "\x00"))
    return f"inserted {inserted!r} at {offset}", text[:offset] + inserted + text[offset:]


def _copy(base: Path, root: Path) -> None:
    shutil.copytree(base, root, ignore=shutil.ignore_patterns(
        "expected.txt", "tests", "__pycache__", ".*", "*.md", "*.toml", "*.egg-info",
        "aigw", "compiler", "runtime", "bench", "deploy", "schemas", "scripts"))


def _mutated(rng: random.Random, root: Path) -> str:
    """Copy a base to ``root`` and break one of its files; says what was done."""
    base = rng.choice(BASES)
    _copy(base, root)
    files = sorted(path for path in root.rglob("*") if path.suffix in (".yaml", ".cedar"))
    target = rng.choice(files)
    text = target.read_text(encoding="utf-8")
    if target.suffix == ".cedar":
        what, content = _mutate_cedar(rng, text)
    elif rng.random() < 0.5:
        what, content = _mutate_data(rng, text)
    else:
        what, content = _mutate_yaml_text(rng, text)
    if isinstance(content, str):
        content = content.encode("utf-8")
    target.write_bytes(content)
    return f"{base.name}/{target.relative_to(root)}: {what}"


def _only_diagnostics(result: CompileResult) -> list[str]:
    """What is wrong with ``result`` as the outcome of a compile: each problem a line."""
    problems = [f"internal error: {item.message}" for item in result.diagnostics
                if item.code.id == "AGW901"]
    problems += [f"no position: {item}" for item in result.diagnostics
                 if item.position.line < 1 or item.position.column < 1]
    for name, render in (("text", lambda: render_text(result.diagnostics, result.sources)),
                         ("github", lambda: render_github(result.diagnostics)),
                         ("json", lambda: render_json(result.diagnostics))):
        try:
            render().encode("utf-8")
        except UnicodeEncodeError as exc:
            problems.append(f"{name} output cannot be written as UTF-8: {exc}")
    return problems


def test_mutated_configs_get_positioned_diagnostics_never_a_crash(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    failures = []
    for index in range(MUTATED_CASES):
        root = tmp_path / f"case-{index}"
        what = _mutated(rng, root)
        problems = _only_diagnostics(compile_gateway(root, ENVIRON))
        if problems:
            failures.append(f"case {index} ({what}; kept in {root}): {problems}")
    assert not failures, "\n".join(failures)


MINIMAL = (GOLDEN / "ok-minimal" / "gateway.yaml").read_text(encoding="utf-8")
CONTEXT_WINDOW = "context_window: 8192"


def _policy(condition: str) -> str:
    return f'@id("long")\npermit(principal, action, resource) when {{ {condition} }};\n'


# Inputs that crashed the compiler: the files written, then the code and position of
# the diagnostic that says what is wrong instead.
HOSTILE: dict[str, tuple[dict[str, str | bytes], tuple[str, str]]] = {
    "a tagged value its tag cannot read (KeyError)": (
        {"gateway.yaml": MINIMAL.replace(CONTEXT_WINDOW, "context_window: !!bool maybe")},
        ("AGW101", "gateway.yaml:7:64")),
    "an empty !!int (IndexError)": (
        {"gateway.yaml": MINIMAL.replace(CONTEXT_WINDOW, "context_window: !!int ''")},
        ("AGW101", "gateway.yaml:7:64")),
    "a scalar tagged !!set (AttributeError)": (
        {"gateway.yaml": MINIMAL.replace(CONTEXT_WINDOW, "context_window: !!set x")},
        ("AGW101", "gateway.yaml:7:64")),
    "an ordered map (!!omap), whose keys ruamel keeps no positions of": (
        {"gateway.yaml": MINIMAL.replace("version: 1", "version: !!omap [a: 1]")},
        ("AGW206", "gateway.yaml:1:10")),
    "half a surrogate pair escaped": (
        {"gateway.yaml": MINIMAL.replace("provider: local,", 'provider: "lo\\ud800",')},
        ("AGW111", "gateway.yaml:7:26")),
    "a policy file name that is not UTF-8": (
        {"gateway.yaml": MINIMAL, os.fsdecode(b"policies/r\xe8gles.cedar"): "permit("},
        ("AGW107", "policies/r\ufffdgles.cedar:1:1")),
    "a policy of 600 operators (RecursionError reading cedarpy's JSON)": (
        {"gateway.yaml": MINIMAL,
         "policies/long.cedar": _policy(" && ".join(["context.stream"] * 600))},
        ("AGW401", "policies/long.cedar:2:1851")),
    "a pipeline input schema whose required is a number": (
        {"gateway.yaml": MINIMAL.replace("chat: {deployment: echo-small}",
                                         "chat: {deployment: echo-small}\n  p: {pipeline: p}"),
         "pipelines/p.yaml": "input: {type: object, properties: {q: {type: string}}, "
                             "required: 5}\n"
                             "steps: {a: {kind: llm, model: chat, prompt: hi}}\n"
                             "output: '{{ steps.a }}'\n"},
        ("AGW507", "pipelines/p.yaml:1:66")),
}


@pytest.mark.parametrize("files, expected", HOSTILE.values(), ids=HOSTILE.keys())
def test_inputs_that_crashed_the_compiler_get_a_diagnostic(
    tmp_path: Path, files: dict[str, str | bytes], expected: tuple[str, str]
) -> None:
    root = tmp_path / "gw"
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes)
                         else content.encode("utf-8", "surrogateescape"))
    result = compile_gateway(root, ENVIRON)
    assert _only_diagnostics(result) == []
    assert expected in [(item.code.id, str(item.position)) for item in result.errors]


def test_aigw_check_prints_diagnostics_where_it_crashed(tmp_path: Path) -> None:
    """Through the command line, under a locale that writes strictly: a surrogate reached
    its output (a traceback), and a policy of 20,000 operators overflowed cedarpy's
    parser's stack (the process died of SIGSEGV, saying nothing)."""
    root = tmp_path / "gw"
    (root / "policies").mkdir(parents=True)
    (root / "gateway.yaml").write_text(
        MINIMAL.replace("provider: local,", 'provider: "lo\\udcff",'), encoding="utf-8")
    (root / "policies" / "long.cedar").write_text(
        _policy(" && ".join(["true"] * 20_000)), encoding="utf-8")
    (root / os.fsdecode(b"policies/\xff.cedar")).write_text("permit(", encoding="utf-8")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    done = subprocess.run([sys.executable, "-m", "aigw", "check", str(root)],
                          capture_output=True, env=env, timeout=60)
    out = done.stdout.decode("utf-8")
    assert (done.returncode, done.stderr) == (1, b""), out + done.stderr.decode(errors="replace")
    headers = [line for line in out.splitlines() if line.startswith("AGW")]
    assert all(_DIAGNOSTIC.match(line) for line in headers), out
    assert sorted(line.split()[0] for line in headers) == ["AGW107", "AGW111", "AGW401"], out
    assert out.endswith("3 errors, 0 warnings\n"), out
