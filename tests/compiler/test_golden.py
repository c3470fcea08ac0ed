"""Golden diagnostics: each folder under cases/ is a gateway directory and its `aigw check` text.

A folder is named ``<code>-<what it breaks>`` (``agw301-unknown-provider-typo``), and
its output must contain that code; ``ok-<what it shows>`` folders compile, with
warnings at most. Regenerate every expected.txt with ``AIGW_UPDATE_GOLDEN=1``, then
read the diff: a golden file is only as right as the review it got.
"""

from __future__ import annotations

import json
import os
import re
import typing
from pathlib import Path

import pytest

from aigw.compiler import CompileResult, compile_gateway, render_json, render_text
from aigw.compiler.codes import ALL_CODES
from aigw.compiler.link import SERVED_PROVIDER_TYPES
from aigw.compiler.spec import ProviderType

CASES_DIR = Path(__file__).parent / "cases"
CASES = sorted(path for path in CASES_DIR.iterdir() if path.is_dir())
EXPECTED = "expected.txt"
# Fixed, so a case never depends on the machine it runs on: SET_KEY is set, nothing else is.
ENVIRON = {"SET_KEY": "sk-test-123", "EMPTY_KEY": ""}
_CODE_PREFIX = re.compile(r"^(agw\d{3})-")
_CODE_IN_OUTPUT = re.compile(r"^(AGW\d{3}) (?:error|warning) ", re.MULTILINE)


def _compile(case: Path) -> CompileResult:
    return compile_gateway(case, ENVIRON)


def _codes(text: str) -> set[str]:
    return set(_CODE_IN_OUTPUT.findall(text))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case_output_matches_expected(case: Path) -> None:
    result = _compile(case)
    actual = render_text(result.diagnostics, result.sources)
    expected_file = case / EXPECTED
    if os.environ.get("AIGW_UPDATE_GOLDEN") == "1":
        expected_file.write_text(actual, encoding="utf-8")
        return
    assert expected_file.is_file(), f"{case.name} has no {EXPECTED}; run with AIGW_UPDATE_GOLDEN=1"
    assert actual == expected_file.read_text(encoding="utf-8")


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case_shows_the_code_it_is_named_for(case: Path) -> None:
    result = _compile(case)
    found = {item.code.id for item in result.diagnostics}
    named = _CODE_PREFIX.match(case.name)
    if named is None:
        assert case.name.startswith("ok-"), f"name {case.name} as agwNNN-... or ok-..."
        assert result.ok, f"{case.name} should compile; it has {sorted(found)}"
    else:
        assert named.group(1).upper() in found
    assert "AGW901" not in found, "an internal compiler error is never a golden answer"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_json_output_has_every_diagnostic(case: Path) -> None:
    result = _compile(case)
    document = json.loads(render_json(result.diagnostics))
    assert len(document["diagnostics"]) == len(result.diagnostics)
    assert document["errors"] + document["warnings"] == len(result.diagnostics)
    assert [item["code"] for item in document["diagnostics"]] == [
        item.code.id for item in result.diagnostics
    ]


def _untriggerable_codes() -> set[str]:
    """Codes no config can produce today, each with the reason it is left out."""
    codes = {"AGW901"}  # an internal compiler error is a bug, never a golden answer
    if set(typing.get_args(ProviderType)) <= SERVED_PROVIDER_TYPES:
        codes.add("AGW314")  # "no adapter": every provider type has one
    # "extra not installed" depends on the machine's packages, which a golden text must not.
    codes.add("AGW322")
    # "file too large" needs a file of more than 8 MiB: tests/compiler/test_load.py writes
    # one rather than keep it in git.
    codes.add("AGW110")
    return codes


def test_cases_cover_every_code_that_can_be_triggered() -> None:
    covered: set[str] = set()
    for case in CASES:
        covered |= _codes((case / EXPECTED).read_text(encoding="utf-8"))
    assert len(covered) >= 25, sorted(covered)
    missing = {code.id for code in ALL_CODES} - covered - _untriggerable_codes()
    assert not missing, f"add a case for each of {sorted(missing)}"


def test_every_case_name_code_is_in_its_expected_text() -> None:
    for case in CASES:
        named = _CODE_PREFIX.match(case.name)
        if named is not None:
            assert named.group(1).upper() in _codes((case / EXPECTED).read_text(encoding="utf-8"))
