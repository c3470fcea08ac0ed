"""aigw test, aigw check --against, aigw route and aigw schema with Cedar."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aigw.cli import main

from .conftest import PERMIT_ALL, REPO, config

RUN_ENV_KEY = "sk"


def _aigw(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aigw", *args], capture_output=True, text=True,
                          cwd=cwd)


def test_aigw_test_passes_on_the_shipped_gateway() -> None:
    result = _aigw("test", str(REPO))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "policies/tests/routing.yaml" in result.stdout
    assert result.stdout.endswith(" cases, 0 failed\n")
    assert "FAIL" not in result.stdout


def _shipped_copy(tmp_path: Path) -> Path:
    root = tmp_path / "gw"
    root.mkdir()
    shutil.copy(REPO / "gateway.yaml", root / "gateway.yaml")
    shutil.copytree(REPO / "policies", root / "policies")
    shutil.copytree(REPO / "pipelines", root / "pipelines")
    return root


def test_aigw_test_reports_a_failing_case_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _shipped_copy(tmp_path)
    (root / "policies" / "tests" / "wrong.yaml").write_text(
        "cases:\n"
        "  - name: expects the slow one\n"
        "    request: {key: dev, model: fast, latency_sla_ms: 300}\n"
        "    live: {echo-small: {average_latency_ms: 900}}\n"
        "    expect: {deployment: echo-small, denied: {echo-large: [tight-sla-forbids-slow]}}\n"
        "  - name: names a deployment that does not exist\n"
        "    request: {key: dev, model: fast}\n"
        "    live: {gpt-5: {average_latency_ms: 1}}\n"
        "    expect: {deployment: echo-small}\n")
    assert main(["test", str(root)]) == 1
    out = capsys.readouterr().out
    assert "  FAIL  expects the slow one\n" in out
    assert "        deployment: expected echo-small, got echo-large\n" in out
    assert ("        denied: expected echo-large denied by ['tight-sla-forbids-slow'], "
            "but it was not denied\n") in out
    assert "echo-small is forbidden by tight-sla-forbids-slow" in out
    assert "  FAIL  names a deployment that does not exist\n" in out
    assert "bad case: live: no deployment 'gpt-5'" in out
    assert out.endswith(" 2 failed\n")


@pytest.mark.parametrize("text", ["cases: [!!int abc]\n", "cases: [2024-13-45]\n",
                                  "cases: " + "[" * 2000 + "]" * 2000 + "\n"])
def test_aigw_test_reports_a_fixture_yaml_cannot_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
) -> None:
    """These were ValueError and RecursionError tracebacks."""
    root = tmp_path / "gw"
    (root / "policies" / "tests").mkdir(parents=True)
    (root / "gateway.yaml").write_text(config())
    (root / "policies" / "tests" / "bad.yaml").write_text(text)
    assert main(["test", str(root)]) == 1
    out = capsys.readouterr().out
    assert "cannot read the fixture: " in out and out.endswith("1 case, 1 failed\n")


def test_aigw_test_with_no_fixtures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "gw"
    root.mkdir()
    (root / "gateway.yaml").write_text(config())
    assert main(["test", str(root)]) == 0
    assert capsys.readouterr().out == "no routing tests in policies/tests/\n"
    # A tests folder that is not a folder (or cannot be read) is a failure, not "none":
    # CI passed with every fixture unread.
    (root / "policies").mkdir()
    (root / "policies" / "tests").write_text("cases: []\n")
    assert main(["test", str(root)]) == 1
    assert capsys.readouterr().out.startswith("cannot read policies/tests/: ")


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), "-c", "user.email=ci@example.com", "-c",
                    "user.name=ci", *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository whose first commit is a gateway with permit-all policies."""
    root = tmp_path / "repo"
    (root / "gw" / "policies").mkdir(parents=True)
    (root / "gw" / "gateway.yaml").write_text(config())
    (root / "gw" / "policies" / "base.cedar").write_text(PERMIT_ALL)
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "permit all")
    return root / "gw"


def test_check_against_prints_a_narrowing_flip_and_passes(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "policies" / "eng.cedar").write_text(
        '@id("eng-not-on-solo")\n'
        'forbid (principal in Team::"eng", action == Action::"invoke",\n'
        '        resource == Route::"solo");\n')
    assert main(["check", str(repo), "--against", "HEAD"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no problems\naigw check --against HEAD: ")
    assert ('  NARROWS ApiKey::"alice" invoke Route::"solo": allow -> deny in ' in out)
    assert ("before permitted by keys-may-invoke-routes; after forbidden by eng-not-on-solo"
            in out)
    # The key's end users too (any user id: the stand-in that no policy names).
    assert ('  NARROWS User::"any-other-user" of ApiKey::"alice" invoke Route::"solo": '
            "allow -> deny in " in out)
    assert "WIDENS" not in out
    assert out.endswith("2 decisions change: 0 widen access, 2 narrow it\n")


def _widen_the_slow_forbid(repo: Path) -> None:
    """Commit a forbid on deployments slower than 1500 ms, then move it to 2500 in the
    working tree: every latency between widens."""
    slow = ('@id("no-slow")\nforbid (principal, action == Action::"route", resource)\n'
            "when { resource.average_latency_ms > 1500 };\n")
    (repo / "policies" / "slow.cedar").write_text(slow)
    _git(repo.parent, "add", "-A")
    _git(repo.parent, "commit", "-qm", "forbid slow")
    (repo / "policies" / "slow.cedar").write_text(slow.replace("1500", "2500"))


def test_check_against_fails_when_access_widens(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _widen_the_slow_forbid(repo)
    assert main(["check", str(repo), "--against", "HEAD"]) == 1
    out = capsys.readouterr().out
    assert '  WIDENS  ApiKey::"dev" route Deployment::"local-a": deny -> allow in ' in out
    # The threshold moved from 1500 to 2500: 1501 ms (just past the old one) now passes.
    assert "with average_latency_ms=1501" in out
    assert "before forbidden by no-slow; after permitted by any-deployment-may-serve" in out
    assert "access widens: review the changes above" in out
    assert main(["check", str(repo), "--against", "HEAD", "--allow-widening"]) == 0


def test_check_against_in_json_is_one_document_with_the_flips(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The text report was printed after the JSON document: not JSON, no flips in it."""
    _widen_the_slow_forbid(repo)
    assert main(["check", str(repo), "--against", "HEAD", "--format", "json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert (document["errors"], document["diagnostics"]) == (0, [])
    against = document["against"]
    assert against["ref"] == "HEAD" and against["widen"] >= 1 and against["narrow"] == 0
    flip = next(flip for flip in against["flips"] if (flip["principal"], flip["resource"])
                == ('ApiKey::"dev"', 'Deployment::"local-a"'))
    assert (flip["action"], flip["change"]) == ("route", "widens")
    example = flip["examples"][0]
    assert example["scenario"] == "slow deployments, route guarded"
    assert example["before"] == {"allowed": False, "policies": ["no-slow"],
                                 "why": "forbidden by no-slow"}
    assert example["after"]["allowed"] is True
    assert main(["check", str(repo), "--against", "HEAD", "--format", "json",
                 "--allow-widening"]) == 0
    json.loads(capsys.readouterr().out)
    assert main(["check", str(repo), "--against", "no-such-branch", "--format", "json"]) == 2
    assert "is not a commit" in json.loads(capsys.readouterr().out)["against"]["error"]


@pytest.mark.parametrize(("removed", "flip"), [
    ('@id("no-end-users-on-solo")\nforbid (principal is User, action == Action::"invoke",\n'
     '        resource == Route::"solo");\n',
     'WIDENS  User::"any-other-user" of ApiKey::"alice" invoke Route::"solo": deny -> allow'),
    ('@id("alice-not-research")\nforbid (principal in ApiKey::"alice", '
     'action == Action::"invoke",\n        resource == Pipeline::"research");\n',
     'WIDENS  ApiKey::"alice" invoke Pipeline::"research": deny -> allow'),
])
def test_check_against_sees_a_forbid_on_end_users_or_a_pipeline_removed(
    repo: Path, capsys: pytest.CaptureFixture[str], removed: str, flip: str
) -> None:
    """Only end users a policy named were compared, and no Pipeline at all: removing
    either forbid printed "no decision changes" (found by a review)."""
    (repo / "pipelines").mkdir()
    (repo / "pipelines" / "research.yaml").write_text(
        "input: {type: object}\nsteps:\n  ask: {kind: llm, model: pair, prompt: hi}\n"
        'output: "{{ steps.ask }}"\n')
    (repo / "policies" / "forbid.cedar").write_text(removed)
    _git(repo.parent, "add", "-A")
    _git(repo.parent, "commit", "-qm", "a forbid")
    (repo / "policies" / "forbid.cedar").unlink()
    assert main(["check", str(repo), "--against", "HEAD"]) == 1
    out = capsys.readouterr().out
    assert f"  {flip} in " in out, out
    assert "before forbidden by " in out


def test_check_against_an_unknown_revision(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(repo), "--against", "no-such-branch"]) == 2
    assert "'no-such-branch' is not a commit of the repository" in capsys.readouterr().out


def test_check_without_against_does_not_import_the_runtime() -> None:
    probe = ("import sys\nfrom aigw.cli import main\nmain(['check', sys.argv[1]])\n"
             "print(sorted(m for m in sys.modules if m.startswith('aigw.runtime')))\n")
    result = subprocess.run([sys.executable, "-c", probe, str(REPO)], capture_output=True,
                            text=True, check=True)
    assert result.stdout.endswith("[]\n")


def test_route_shows_cedar_decisions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _shipped_copy(tmp_path)
    assert main(["route", str(root), "--model", "fast", "--key", "dev",
                 "--budget-remaining", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('invoke as ApiKey::"dev": allowed by keys-may-invoke-routes\n')
    assert ("1. echo-small  expected cost 0.000000  permitted by any-deployment-may-serve, "
            "prefer-self-hosted-on-low-budget (priority 50)") in out


def test_schema_writes_the_cedar_schema_of_the_config(tmp_path: Path) -> None:
    root = _shipped_copy(tmp_path)
    assert main(["schema", str(root)]) == 0
    text = (root / "schemas" / "policies.cedarschema").read_text()
    assert 'entity Group enum ["fast", "smart"];' in text
    assert main(["schema", str(root), "--check"]) == 0
    (root / "gateway.yaml").write_text((root / "gateway.yaml").read_text().replace(
        "  smart:\n    strategy", "  clever:\n    strategy").replace("fallbacks: [smart]",
                                                                     "fallbacks: [clever]")
        .replace("{group: smart,", "{group: clever,"))
    assert main(["schema", str(root), "--check"]) == 1


def test_schema_refuses_a_directory_that_does_not_exist(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A typo made the directory, and schemas/ in it, and exited 0."""
    assert main(["schema", str(tmp_path / "typo-dir")]) == 1
    assert not (tmp_path / "typo-dir").exists()
    assert capsys.readouterr().err == (f"aigw schema: {tmp_path / 'typo-dir'} is not a "
                                       "directory (the gateway directory, whose schemas/ "
                                       "it writes)\n")


def test_schema_says_why_it_cannot_write_rather_than_raise(tmp_path: Path) -> None:
    root = _shipped_copy(tmp_path)
    (root / "schemas").write_text("a file where the folder goes\n")
    result = _aigw("schema", str(root))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cannot write" in result.stderr


def test_a_byte_order_mark_before_a_policy_is_not_a_syntax_error(tmp_path: Path) -> None:
    root = _shipped_copy(tmp_path)
    policy = next((root / "policies").glob("*.cedar"))
    policy.write_bytes(b"\xef\xbb\xbf" + policy.read_bytes())  # as some editors save
    result = _aigw("check", str(root))
    assert result.returncode == 0, result.stdout + result.stderr


_ISSUER = """\
issuers:
  corp:
    issuer: https://login.example.test/
    jwks_url: https://login.example.test/jwks.json
    audiences: [aigw]
    team: {claim: groups, map: {llm-eng: eng, llm-ops: ops}}
"""


@pytest.mark.parametrize(("before", "after", "flip"), [
    ('@id("no-mallory")\nforbid (principal in Subject::"mallory", action == Action::"invoke",\n'
     '        resource == Route::"solo");\n', "",
     'WIDENS  Subject::"mallory" of Issuer::"corp" with groups "llm-eng" invoke Route::"solo"'),
    ('@id("corp-not-solo")\nforbid (principal in Issuer::"corp", action == Action::"invoke",\n'
     '        resource == Route::"solo");\n', "",
     'WIDENS  Subject::"any-other-subject" of Issuer::"corp" with groups "llm-ops" invoke '
     'Route::"solo"'),
    ('@id("ops-not-solo")\nforbid (principal in Team::"ops", action == Action::"invoke",\n'
     '        resource == Route::"solo");\n', "llm-ops: eng",
     'WIDENS  Subject::"any-other-subject" of Issuer::"corp" with groups "llm-ops" invoke '
     'Route::"solo"'),
], ids=["subject-forbid-removed", "issuer-forbid-removed", "claim-maps-to-another-team"])
def test_check_against_compares_the_token_callers_of_each_issuer(
    repo: Path, capsys: pytest.CaptureFixture[str], before: str, after: str, flip: str
) -> None:
    """Only keys were compared: a forbid on a Subject or an Issuer removed, or an issuer's
    claim now mapping to another team, printed "no decision changes"."""
    (repo / "gateway.yaml").write_text(config() + _ISSUER)
    (repo / "policies" / "forbid.cedar").write_text(before)
    _git(repo.parent, "add", "-A")
    _git(repo.parent, "commit", "-qm", "an issuer and a forbid")
    if after:  # the same policy; the claim's value now gives another team
        (repo / "gateway.yaml").write_text(config() + _ISSUER.replace("llm-ops: ops", after))
    else:
        (repo / "policies" / "forbid.cedar").unlink()
    assert main(["check", str(repo), "--against", "HEAD"]) == 1
    out = capsys.readouterr().out
    assert f"  {flip}: deny -> allow in " in out, out
    assert "before forbidden by " in out
    # A token whose claim the map lacks is refused (no default team): never compared.
    assert "with no groups it maps" not in out
