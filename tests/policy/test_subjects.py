"""A JWT's caller named where a key is: ``subject:`` in aigw test's cases, ``aigw route
--subject``, ``POST /route``; asked about as a token's caller is (the same entities)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from aigw.cli import main
from aigw.compiler import compile_gateway
from aigw.runtime.identity import Identities, stand_in
from aigw.runtime.live import Gateway
from aigw.runtime.policy import principal_for
from aigw.runtime.tokens import TokenCounter

from ..conftest import app_client
from ..fakes.jwks_server import AUDIENCE, ISSUER, SigningKey, claims

ADMIN = "sk-aigw-subjects-admin"
CI_ISSUER = "https://token.actions.example.test"
GATEWAY = f"""\
version: 1
providers:
  local: {{type: echo}}
  upstream: {{type: openai, base_url: "http://127.0.0.1:9/v1", api_key: "${{UPSTREAM_KEY}}"}}
deployments:
  small: {{provider: local, model: small-1, context_window: 8192}}
  large: {{provider: local, model: large-1, context_window: 8192}}
groups:
  pair: {{members: [small, large]}}
routes:
  fast: {{group: pair}}
  other: {{deployment: small}}
passthrough:
  files-raw: {{provider: upstream, paths: ["/v1/files/**"]}}
teams:
  engineering: {{}}
  research: {{}}
  contractors: {{}}
keys:
  dev: {{admin: true, team: engineering, sha256: "{hashlib.sha256(ADMIN.encode()).hexdigest()}"}}
issuers:
  corp:
    issuer: {ISSUER}
    jwks_url: https://login.example.test/jwks.json
    audiences: [{AUDIENCE}]
    team:
      claim: groups
      map: {{llm-eng: engineering, llm-research: research}}
      default: contractors
  github-ci:
    issuer: {CI_ISSUER}
    jwks_url: https://token.actions.example.test/jwks
    audiences: [{AUDIENCE}]
    team: research
    routes: [fast]
"""
POLICIES = """\
@id("anyone-may-invoke")
permit (principal, action == Action::"invoke", resource);

@id("any-deployment-may-serve")
permit (principal, action == Action::"route", resource);

@id("contractors-not-on-fast")
forbid (principal in Team::"contractors", action == Action::"invoke", resource == Route::"fast");

@id("ci-never-large")
forbid (principal in Issuer::"github-ci", action == Action::"route",
        resource == Deployment::"large");

@id("raw-files-engineering-only")
forbid (principal, action == Action::"invoke", resource == Passthrough::"files-raw")
unless { principal in Team::"engineering" };
"""
CASES = """\
defaults: {key: dev}
cases:
  - name: an engineering caller of corp is served on fast
    request: {model: fast, subject: corp#alice, team: engineering}
    expect: {invoke: allow, deployment: small, order: [small, large]}
  - name: a contractor of corp may not invoke fast
    request: {model: fast, subject: corp#bob, team: contractors}
    expect: {invoke: deny, policies: [contractors-not-on-fast]}
  - name: a github-ci caller, in its issuer's fixed team, never gets large
    request: {model: fast, subject: github-ci#repo:org/app}
    expect: {order: [small], denied: {large: [ci-never-large]}}
  - name: a github-ci caller asks a route outside its issuer's routes (live, a 404)
    request: {model: other, subject: github-ci#repo:org/app}
    expect: {invoke: deny}
  - name: the key from defaults still asks as itself
    request: {model: fast}
    expect: {order: [small, large]}
  - name: an end user of a github-ci caller is in its issuer too
    request: {model: fast, subject: github-ci#bot, user: carol}
    expect: {denied: {large: [ci-never-large]}}
  - name: a research caller may not use the raw files pass-through
    evaluate: {subject: corp#alice, team: research, action: invoke,
               resource: 'Passthrough::"files-raw"'}
    expect: {decision: deny, policies: [raw-files-engineering-only]}
  - name: an engineering caller may
    evaluate: {principal: 'Subject::"alice"', subject: corp#alice, team: engineering,
               action: invoke, resource: 'Passthrough::"files-raw"'}
    expect: {decision: allow, policies: [anyone-may-invoke]}
  - name: an end user of a research caller may not either
    evaluate: {principal: 'User::"carol"', subject: corp#alice, team: research,
               action: invoke, resource: 'Passthrough::"files-raw"'}
    expect: {decision: deny}
"""
WRONG = """\
defaults: {subject: crop#alice}
cases:
  - name: a typo in the issuer
    request: {model: fast, subject: crop#alice, team: engineering}
    expect: {invoke: allow}
  - name: a team the issuer never maps to
    request: {model: fast, subject: corp#alice, team: ops}
    expect: {invoke: allow}
  - name: no team for an issuer that maps one by a claim
    request: {model: fast, subject: corp#alice}
    expect: {invoke: allow}
  - name: another team than the issuer's fixed one
    request: {model: fast, subject: github-ci#bot, team: engineering}
    expect: {invoke: allow}
  - name: the issuer's typo in defaults
    request: {model: fast}
    expect: {invoke: allow}
  - name: a Subject without its issuer
    evaluate: {principal: 'Subject::"alice"', action: invoke, resource: 'Route::"fast"'}
    expect: {decision: allow}
  - name: a key and a subject
    request: {model: fast, subject: corp#alice, key: dev}
    expect: {invoke: allow}
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "gw"
    (root / "policies" / "tests").mkdir(parents=True)
    (root / "gateway.yaml").write_text(GATEWAY)
    (root / "policies" / "jwt.cedar").write_text(POLICIES)
    return root


def test_aigw_test_runs_cases_that_name_a_jwt_caller(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (root / "policies" / "tests" / "subjects.yaml").write_text(CASES)
    assert main(["test", str(root)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "FAIL" not in out
    assert out.endswith("9 cases, 0 failed\n")


def test_aigw_test_points_at_what_is_wrong_with_a_subject(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (root / "policies" / "tests" / "wrong.yaml").write_text(WRONG)
    assert main(["test", str(root)]) == 1
    problems = [line.strip() for line in capsys.readouterr().out.splitlines()
                if line.startswith("        ")]
    at = "bad case: policies/tests/wrong.yaml:"
    assert problems == [
        f"{at}4:37: request.subject: There is no issuer 'crop'; did you mean 'corp'?",
        f"{at}7:55: request.team: Issuer 'corp' picks a caller's team by its 'groups' "
        "claim: it gives no team 'ops' (one of engineering, research, contractors).",
        f"{at}10:37: request.team: Issuer 'corp' picks a caller's team by its 'groups' "
        "claim: name the team (one of engineering, research, contractors).",
        f"{at}13:58: request.team: Issuer 'github-ci' puts every caller in team "
        "'research', not 'engineering'.",
        f"{at}1:21: request.subject: There is no issuer 'crop'; did you mean 'corp'?",
        # Asked as Subject::"alice" in nothing, a policy on its issuer or team would not
        # hold for it as for a token's caller (this case passed, as an allow).
        f"{at}19:27: evaluate: a Subject principal is named by subject: <issuer>#alice "
        "(and team:), its issuer and team being its parents",
        f"{at}22:37: request: name a key or a subject, not both",
    ]


async def test_a_stand_in_has_the_entities_of_the_tokens_caller(root: Path) -> None:
    """What aigw test, aigw route and POST /route ask with is what a request signed in
    with a token asks with: the same principal and entities, user or none."""
    graph = compile_gateway(root).graph
    assert graph is not None
    key = SigningKey.rsa("k1")

    async def fetch(url: str) -> bytes:
        return json.dumps({"keys": [key.public_jwk()]}).encode()

    identities = Identities(fetch)
    try:
        for subject, team, token in [
            ("corp#alice", "research", key.sign(claims("alice", groups=["llm-research"]))),
            ("corp#bob", "contractors", key.sign(claims("bob", groups=["staff"]))),
            ("github-ci#bot", None, key.sign(claims("bot", iss=CI_ISSUER))),
        ]:
            signed_in = await identities.caller(graph, token)
            made = stand_in(graph, subject, team)
            assert made == signed_in
            for user in (None, "carol"):
                assert (principal_for(graph.authorization, made, user)
                        == principal_for(graph.authorization, signed_in, user))
    finally:
        await identities.aclose()


def test_aigw_route_names_a_subject(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["route", str(root), "--model", "fast", "--subject", "github-ci#bot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith('invoke as Subject::"bot" (github-ci#bot, team research): allowed '
                          "by anyone-may-invoke\n")
    assert "    dropped large: is forbidden by ci-never-large\n" in out
    assert main(["route", str(root), "--model", "fast", "--subject", "corp#bob",
                 "--team", "contractors"]) == 0
    assert capsys.readouterr().out == ('invoke as Subject::"bob" (corp#bob, team contractors): '
                                       "denied by contractors-not-on-fast\n")
    assert main(["route", str(root), "--model", "fast", "--subject", "crop#bob"]) == 1
    assert capsys.readouterr().err == ("--subject: There is no issuer 'crop'; did you mean "
                                       "'corp'?\n")
    assert main(["route", str(root), "--model", "fast", "--team", "research"]) == 2
    assert "give the --subject too" in capsys.readouterr().err


async def test_route_endpoint_asks_as_a_subject(root: Path, counter: TokenCounter) -> None:
    gateway = Gateway(root, counter)
    try:
        async with app_client(gateway, ADMIN) as client:
            answer = (await client.post("/route", json={
                "model": "fast", "subject": "github-ci#bot", "user": "carol"})).json()
            assert answer["principal"] == 'User::"carol"'
            assert answer["deployment"] == "small"
            assert answer["tiers"][0]["dropped"] == [{
                "deployment": "large", "reason": "is forbidden by ci-never-large",
                "policies": ["ci-never-large"]}]
            denied = (await client.post("/route", json={
                "model": "fast", "subject": "corp#bob", "team": "contractors"})).json()
            assert (denied["principal"], denied["allowed"], denied["policies"]) == (
                'Subject::"bob"', False, ["contractors-not-on-fast"])
            wrong = await client.post("/route", json={"model": "fast", "subject": "crop#bob"})
            assert wrong.status_code == 400
            assert wrong.json()["error"]["param"] == "subject"
            assert wrong.json()["error"]["message"] == ("There is no issuer 'crop'; did you "
                                                        "mean 'corp'?")
    finally:
        await gateway.aclose()


async def test_evaluate_endpoint_asks_a_subject_in_its_issuer_and_team(
    root: Path, counter: TokenCounter
) -> None:
    """A Subject principal was asked as in nothing: the engineering-only forbid's
    ``unless`` never held for it, so even an engineering caller was refused."""
    gateway = Gateway(root, counter)
    files = 'Passthrough::"files-raw"'
    try:
        async with app_client(gateway, ADMIN) as client:
            for team, decision in [("engineering", "allow"), ("research", "deny")]:
                answer = await client.post("/evaluate", json={
                    "principal": 'Subject::"alice"', "subject": "corp#alice", "team": team,
                    "action": "invoke", "resource": files})
                assert answer.status_code == 200, answer.text
                assert (answer.json()["principal"], answer.json()["decision"]) == (
                    'Subject::"alice"', decision)
            user = (await client.post("/evaluate", json={
                "principal": 'User::"carol"', "subject": "github-ci#bot",
                "action": "invoke", "resource": files})).json()
            assert (user["decision"], user["policies"]) == ("deny",
                                                            ["raw-files-engineering-only"])
            bare = await client.post("/evaluate", json={
                "principal": 'Subject::"alice"', "action": "invoke", "resource": files})
            assert bare.status_code == 400
            assert bare.json()["error"]["param"] == "subject"
            other = await client.post("/evaluate", json={
                "principal": 'Subject::"mallory"', "subject": "corp#alice",
                "team": "engineering", "action": "invoke", "resource": files})
            assert other.status_code == 400
            assert other.json()["error"]["message"] == (
                "Subject 'corp#alice' is Subject::\"alice\", not Subject::\"mallory\".")
    finally:
        await gateway.aclose()
