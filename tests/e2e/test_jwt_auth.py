"""Apps sign in with their identity provider's JWTs (issuers:), through a real ``aigw serve``.

The provider is a fake key endpoint on loopback (tests/fakes/jwks_server.py) publishing
real RSA and EC keys; tokens are minted here with PyJWT and sent with the official
SDKs as their API key. Each test names its own subjects: the issuer gives every caller
an rpm of its own.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from ..conftest import DEV_KEY
from ..fakes.jwks_server import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    SigningKey,
    claims,
    hmac_with_public_key,
    unsigned,
)
from ..fakes.mcp_server import PATH, RecordingMcpServer
from ..fakes.serve import free_port, serving
from ..providers.conftest import DEV_KEY_LINE
from .mcp_client import opened, rpc, session
from .server import Server, running
from .test_realtime import connected, realtime_gateway, said, until

RSA_KEY = SigningKey.rsa("rsa-1")
EC_KEY = SigningKey.ec("ec-1")
FILE_KEY = SigningKey.rsa("offline-1")
INLINE_KEY = SigningKey.ec("inline-1")
AIRGAPPED = "https://idp.internal.test/"
WRITTEN_IN = "https://idp.written-in.test/"
UNREACHABLE = "https://down.example.test/"
HI = [{"role": "user", "content": "hi"}]
SUMMARY = """\
input:
  type: object
  required: [text]
  properties:
    text: {type: string}
steps:
  summary:
    kind: llm
    model: chat
    prompt: "{{ input.text }}"
output:
  summary: "{{ steps.summary }}"
"""

POLICY = """\
@id("everyone")
permit (principal, action, resource);

@id("mallory-not-secret")
forbid (principal in Subject::"mallory", action == Action::"invoke", resource == Route::"secret");
"""


def _gateway_yaml(jwks_url: str) -> str:
    return f"""\
version: 1
settings:
  stop_streams_over_budget: true
providers:
  local: {{type: echo}}
  idp: {{type: openai_compatible, base_url: "{jwks_url.rsplit("/", 1)[0]}/v1"}}
passthrough:
  idp-raw: {{provider: idp, paths: [/jwks.json], methods: [GET]}}
deployments:
  echo-small: {{provider: local, model: echo-1, context_window: 8192,
               price: {{input: 1, output: 1}}}}
routes:
  chat: {{deployment: echo-small}}
  secret: {{deployment: echo-small}}
teams:
  engineering: {{budget: {{amount: 1000}}}}
  research: {{}}
issuers:
  corp:
    issuer: {ISSUER}
    jwks_url: {jwks_url}
    audiences: [{AUDIENCE}]
    algorithms: [RS256, ES256]
    team:
      claim: groups
      map: {{llm-eng: engineering, llm-research: research}}
    limits: {{rpm: 3}}
    jwks_max_age_s: 1
    jwks_refetch_s: 1
  airgapped:
    issuer: {AIRGAPPED}
    jwks_file: jwks.json
    audiences: [{AUDIENCE}]
    team: research
    principal_claim: email
    routes: [chat]
    passthrough: []
  written-in:
    issuer: {WRITTEN_IN}
    jwks: {json.dumps({"keys": [INLINE_KEY.public_jwk()]})}
    audiences: [{AUDIENCE}]
    algorithms: [ES256]
    team: research
  unreachable:
    issuer: {UNREACHABLE}
    jwks_url: "http://127.0.0.1:{free_port()}/jwks.json?tenant=<a>&v=2"
    audiences: [{AUDIENCE}]
    team: engineering
""" + DEV_KEY_LINE


@pytest.fixture(scope="module")
def provider() -> Iterator[JwksServer]:
    fake = JwksServer(RSA_KEY, EC_KEY)
    with serving(fake.app) as base_url:
        fake.url = f"{base_url}/jwks.json"  # type: ignore[attr-defined]
        yield fake


@pytest.fixture(scope="module")
def gateway(provider: JwksServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("jwt") / "gw"
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "jwt.cedar").write_text(POLICY)
    (root / "pipelines").mkdir()
    (root / "pipelines" / "summary.yaml").write_text(SUMMARY)
    (root / "jwks.json").write_text(json.dumps({"keys": [FILE_KEY.public_jwk()]}))
    (root / "gateway.yaml").write_text(_gateway_yaml(provider.url))  # type: ignore[attr-defined]
    with running(root) as server:
        yield server


@pytest.fixture(autouse=True)
def provider_up(provider: JwksServer) -> Iterator[None]:
    provider.publish(RSA_KEY, EC_KEY)
    provider.down = False
    yield
    provider.publish(RSA_KEY, EC_KEY)
    provider.down = False


def _client(server: Server, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=token, max_retries=0)


def _chat(server: Server, token: str, model: str = "chat") -> Any:
    with _client(server, token) as client:
        return client.chat.completions.with_raw_response.create(model=model, messages=HI)


def _refused(server: Server, token: str, status: type[openai.APIStatusError]) -> dict[str, Any]:
    """The error a chat call with ``token`` gets, checked to be ``status`` and to say
    nothing of the token itself."""
    with pytest.raises(status) as refused:
        _chat(server, token)
    response = refused.value.response
    assert token not in response.text
    for part in token.split("."):
        if len(part) > 8:
            assert part not in response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def _ledger(server: Server, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(server.root / "aigw.sqlite") as ledger:
            ledger.row_factory = sqlite3.Row
            row = ledger.execute('SELECT "key", team, route, cost_nanos FROM ledger '
                                 "WHERE request_id = ?", (request_id,)).fetchone()
        ledger.close()
        if row is not None or time.monotonic() > deadline:
            assert row is not None, f"no ledger record of {request_id}"
            return dict(row)
        time.sleep(0.05)


def test_a_valid_token_is_served_and_billed_to_its_mapped_team(gateway: Server) -> None:
    token = RSA_KEY.sign(claims("alice", groups=["staff", "llm-eng"]))
    raw = _chat(gateway, token)
    assert raw.parse().choices[0].message.content
    row = _ledger(gateway, raw.headers["x-request-id"])
    assert row["key"] == "corp#alice"
    assert row["team"] == "engineering"
    assert row["cost_nanos"] > 0
    assert token not in gateway.log


def test_a_tokens_stream_is_watched_for_budget_and_runs_to_its_end(gateway: Server) -> None:
    words = " ".join(f"word{index}" for index in range(80))
    token = RSA_KEY.sign(claims("stella", groups=["llm-eng"]))
    with _client(gateway, token) as client:
        chunks = list(client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": words}], stream=True))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert "word79" in text


def test_an_ec_token_maps_to_the_team_its_claim_names(gateway: Server) -> None:
    raw = _chat(gateway, EC_KEY.sign(claims("erin", groups="llm-research")))
    assert _ledger(gateway, raw.headers["x-request-id"])["team"] == "research"


def test_a_token_whose_claim_maps_to_no_team_is_refused(gateway: Server) -> None:
    error = _refused(gateway, RSA_KEY.sign(claims("zed", groups=["sales"])),
                     openai.PermissionDeniedError)
    assert "maps to a team" in error["message"]


@pytest.mark.parametrize(("made", "said"), [
    (lambda: RSA_KEY.sign(claims("bob", exp=int(time.time()) - 600)), "The token expired at"),
    (lambda: RSA_KEY.sign(claims("bob", aud="someone-else")), "audience 'someone-else'"),
    (lambda: RSA_KEY.sign(claims("bob", iss="https://evil.example.test/")),
     "issuer 'https://evil.example.test/' is not one this gateway accepts"),
    (lambda: SigningKey.rsa("rsa-1").sign(claims("bob")), "signature does not verify"),
    (lambda: unsigned(claims("bob")), "alg 'none', which issuer 'corp' does not accept"),
    (lambda: hmac_with_public_key(claims("bob"), RSA_KEY),
     "alg 'HS256', which issuer 'corp' does not accept"),
    (lambda: RSA_KEY.sign(claims("bob", nbf=int(time.time()) + 600)), "not valid yet"),
    (lambda: RSA_KEY.sign({k: v for k, v in claims("bob").items() if k != "exp"}),
     "no 'exp' claim"),
    (lambda: RSA_KEY.sign(claims("bob", groups=["llm-eng"]), kid="ec-1"), "kid 'ec-1'"),
    (lambda: f"{unsigned({}).split('.')[0]}.{'W1tb' * 1000}.c2ln", "not a well-formed JWT"),
], ids=["expired", "wrong-aud", "wrong-iss", "bad-signature", "alg-none", "hs256-public-key",
        "not-yet-valid", "no-exp", "key-of-another-algorithm", "claims-nested-past-the-limit"])
def test_a_token_that_does_not_verify_is_a_401_that_says_why(
        gateway: Server, made: Any, said: str) -> None:
    token = made()
    error = _refused(gateway, token, openai.AuthenticationError)
    assert error["code"] == "invalid_token"
    assert said in error["message"]
    assert token not in gateway.log


def _access_line(server: Server, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while (line := server.access_line(request_id)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line is not None, f"no access line of {request_id}"
    return line


def test_a_refused_token_names_its_issuer_and_no_caller_in_the_access_log(
        gateway: Server) -> None:
    """A token of a known issuer that fails verification is logged as ``<issuer>#?``:
    its principal claim is the sender's to write; an unknown issuer is not named at all."""
    for token, key in (
            (RSA_KEY.sign(claims("bob", exp=int(time.time()) - 600)), "corp#?"),
            (SigningKey.rsa("rsa-1").sign(claims("bob", groups=["llm-eng"])), "corp#?"),
            (RSA_KEY.sign(claims("bob", aud="someone-else")), "corp#?"),
            (RSA_KEY.sign(claims("bob", iss="https://evil.example.test/")), None)):
        with pytest.raises(openai.AuthenticationError) as refused:
            _chat(gateway, token)
        line = _access_line(gateway, refused.value.response.headers["x-request-id"])
        assert (line["key"], line["team"], line["status"], line["error"]) == (
            key, None, 401, "invalid_token")
        assert "bob" not in json.dumps(line) and "evil" not in json.dumps(line)


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/chat/completions"), ("POST", "/v1/pipelines/summary"), ("GET", "/v1/models"),
    ("POST", "/v1/messages"), ("POST", "/a2a/summary"), ("POST", "/mcp/tools")])
def test_a_token_refused_for_want_of_a_team_or_of_its_issuers_keys_is_named_in_the_access_log(
        gateway: Server, method: str, path: str) -> None:
    """The 403 of a verified token whose claim maps to no team names its caller
    (``corp#zed``: the provider signed its principal); the 503 of an issuer whose keys
    cannot be fetched names the issuer and no caller. Both lines named nobody."""
    for token, status, code, key in (
            (RSA_KEY.sign(claims("zed", groups=["sales"])), 403, "permission_denied",
             "corp#zed"),
            (RSA_KEY.sign(claims("ursula", iss=UNREACHABLE)), 503,
             "identity_provider_unavailable", "unreachable#?")):
        answer = httpx.request(method, f"{gateway.base_url}{path}", json={},
                               headers={"authorization": f"Bearer {token}"}, timeout=30)
        assert answer.status_code == status, answer.text
        line = _access_line(gateway, answer.headers["x-request-id"])
        assert (line["key"], line["team"], line["status"], line["error"]) == (
            key, None, status, code)
        assert "ursula" not in json.dumps(line)
        assert not any(part in gateway.log for part in token.split(".")[1:])


def test_a_kept_token_stops_once_its_key_leaves_the_providers_set(
        gateway: Server, provider: JwksServer) -> None:
    token = RSA_KEY.sign(claims("kim", groups=["llm-eng"]))
    _chat(gateway, token)  # verified, and kept
    provider.publish(EC_KEY)  # rsa-1 withdrawn, as after a compromise
    time.sleep(1.1)  # past jwks_max_age_s
    # The keys it has serve this one while they are renewed, in the background.
    assert _chat(gateway, token).http_response.status_code == 200
    time.sleep(0.3)
    error = _refused(gateway, token, openai.AuthenticationError)
    assert "kid 'rsa-1'" in error["message"]
    provider.publish(RSA_KEY, EC_KEY)
    time.sleep(1.1)  # the next test's rsa-1 token may fetch the keys again


def test_an_empty_key_set_keeps_the_keys_fetched_before(
        gateway: Server, provider: JwksServer) -> None:
    """{"keys": []} from the provider replaced the set held, and every new token of the
    issuer was a 401 (its kid not among the keys) until a fetch found keys again."""
    _chat(gateway, RSA_KEY.sign(claims("emma", groups=["llm-eng"])))
    provider.publish()
    time.sleep(1.1)  # past jwks_max_age_s: renewed in the background, to no keys
    before = provider.fetches
    assert _chat(gateway, RSA_KEY.sign(claims("emil", groups=["llm-eng"]))).http_response \
        .status_code == 200
    time.sleep(0.3)
    assert provider.fetches > before
    raw = _chat(gateway, EC_KEY.sign(claims("emmy", groups=["llm-research"])))
    assert _ledger(gateway, raw.headers["x-request-id"])["key"] == "corp#emmy"
    assert "answered a key set with no usable signing key; keeping those" in gateway.log
    provider.publish(RSA_KEY, EC_KEY)
    time.sleep(1.1)  # the next test's tokens may fetch the keys again


def test_a_new_signing_key_is_fetched_when_a_token_names_it(
        gateway: Server, provider: JwksServer) -> None:
    _chat(gateway, RSA_KEY.sign(claims("rotor", groups=["llm-eng"])))  # the old set, fetched
    rotated = SigningKey.rsa("rsa-2")
    provider.publish(RSA_KEY, rotated)
    time.sleep(1.1)  # jwks_refetch_s
    raw = _chat(gateway, rotated.sign(claims("rotor", groups=["llm-eng"])))
    assert _ledger(gateway, raw.headers["x-request-id"])["key"] == "corp#rotor"


def test_a_flood_of_unknown_kids_fetches_the_keys_at_most_once_a_refetch_interval(
        gateway: Server, provider: JwksServer) -> None:
    _chat(gateway, RSA_KEY.sign(claims("flood", groups=["llm-eng"])))
    time.sleep(1.1)
    before = provider.fetches
    started = time.monotonic()
    for index in range(25):
        error = _refused(gateway, RSA_KEY.sign(claims("flood"), kid=f"made-up-{index}"),
                         openai.AuthenticationError)
        assert "is not among issuer 'corp''s keys" in error["message"]
    fetched = provider.fetches - before
    assert 1 <= fetched <= 1 + int(time.monotonic() - started)


def test_cached_keys_sign_in_while_the_provider_is_down(
        gateway: Server, provider: JwksServer) -> None:
    _chat(gateway, RSA_KEY.sign(claims("dora", groups=["llm-eng"])))
    provider.down = True
    time.sleep(1.1)  # past jwks_max_age_s: the keys are stale, and cannot be renewed
    before = provider.fetches
    for _ in range(2):
        raw = _chat(gateway, RSA_KEY.sign(claims("dora", groups=["llm-eng"])))
        assert raw.http_response.status_code == 200
    time.sleep(0.3)
    assert provider.fetches > before  # it tried, in the background


def test_an_issuer_whose_keys_were_never_fetched_is_a_503_while_it_is_down(
        gateway: Server) -> None:
    token = RSA_KEY.sign(claims("ursula", iss=UNREACHABLE))
    error = _refused(gateway, token, openai.InternalServerError)
    assert error["code"] == "identity_provider_unavailable"


def test_admin_status_shows_each_issuers_keys_and_its_last_fetch(gateway: Server) -> None:
    _chat(gateway, RSA_KEY.sign(claims("stan", groups=["llm-eng"])))
    with pytest.raises(openai.InternalServerError):
        _chat(gateway, RSA_KEY.sign(claims("stan", iss=UNREACHABLE)))
    status = httpx.get(f"{gateway.base_url}/admin/status",
                       headers={"authorization": f"Bearer {DEV_KEY}"}).json()
    issuers = status["graph"]["issuers"]
    assert issuers["corp"]["kids"] == ["ec-1", "rsa-1"]
    assert issuers["corp"]["fetched_s_ago"] is not None
    assert (issuers["unreachable"]["kids"], issuers["unreachable"]["fetched_s_ago"],
            issuers["unreachable"]["last_fetch_failed"]) == ([], None, True)
    assert issuers["airgapped"]["kids"] == ["offline-1"]


def _page_row(page: str, first: str) -> list[str]:
    """The cells, as text, of the admin page's table row whose first cell is ``first``."""
    found = re.search(rf"<tr><td>{re.escape(first)}</td>.*?</tr>", page, re.S)
    assert found is not None, f"no row {first!r} on the page"
    return [html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
            for cell in re.findall(r"<td[^>]*>(.*?)</td>", found.group(0), re.S)]


def test_the_admin_page_shows_each_issuer_and_pass_through(gateway: Server) -> None:
    """What /admin/status says of issuers (key ids, last fetch, its failure) and the
    pass-throughs, on the page a person reads, escaped."""
    _chat(gateway, RSA_KEY.sign(claims("page", groups=["llm-eng"])))
    with pytest.raises(openai.InternalServerError):
        _chat(gateway, RSA_KEY.sign(claims("page", iss=UNREACHABLE)))
    answer = httpx.get(f"{gateway.base_url}/admin", auth=("admin", DEV_KEY))
    assert answer.status_code == 200, answer.text
    page = answer.text
    corp = _page_row(page, "corp")
    assert corp[:5] == ["corp", ISSUER, corp[2], AUDIENCE,
                        "by its groups claim: llm-eng → engineering, llm-research → research; "
                        "else refused"]
    assert corp[5:8] == ["all", "all", "ec-1, rsa-1"]
    # An earlier test's provider outage may have left its last fetch failed.
    assert re.match(r"[\d.]+ s ago", corp[8]), corp[8]
    unreachable = _page_row(page, "unreachable")
    assert unreachable[2].endswith("/jwks.json?tenant=<a>&v=2")
    assert "?tenant=&lt;a&gt;&amp;v=2" in page and "<a>&v" not in page
    assert unreachable[4:] == ["engineering", "all", "all", "none",
                               "never (the last fetch failed)"]
    assert _page_row(page, "airgapped")[4:] == ["research", "chat", "none", "offline-1",
                                                "from its jwks_file"]
    assert _page_row(page, "idp-raw") == ["idp-raw", "idp (openai_compatible)", "GET",
                                          "/jwks.json"]


def test_an_air_gapped_issuer_verifies_with_its_key_file_and_keeps_to_its_routes(
        gateway: Server) -> None:
    raw = _chat(gateway, FILE_KEY.sign(claims("x", iss=AIRGAPPED, email="ann@corp.test")))
    row = _ledger(gateway, raw.headers["x-request-id"])
    assert (row["key"], row["team"]) == ("airgapped#ann@corp.test", "research")
    with pytest.raises(openai.NotFoundError):  # a route outside the issuer's routes
        _chat(gateway, FILE_KEY.sign(claims("x", iss=AIRGAPPED, email="ann@corp.test")),
              "secret")


def test_an_issuer_verifies_with_the_key_set_written_in_its_config(gateway: Server) -> None:
    raw = _chat(gateway, INLINE_KEY.sign(claims("iris", iss=WRITTEN_IN)))
    row = _ledger(gateway, raw.headers["x-request-id"])
    assert (row["key"], row["team"]) == ("written-in#iris", "research")
    error = _refused(gateway, SigningKey.ec("inline-1").sign(claims("iris", iss=WRITTEN_IN)),
                     openai.AuthenticationError)
    assert "signature does not verify with issuer 'written-in'" in error["message"]
    status = httpx.get(f"{gateway.base_url}/admin/status",
                       headers={"authorization": f"Bearer {DEV_KEY}"}).json()
    written_in = status["graph"]["issuers"]["written-in"]
    assert (written_in["jwks"], written_in["kids"]) == ("jwks", ["inline-1"])
    page = httpx.get(f"{gateway.base_url}/admin", auth=("admin", DEV_KEY)).text
    assert _page_row(page, "written-in")[2:] == ["jwks", AUDIENCE, "research", "all", "all",
                                                 "inline-1", "written in its config"]


def test_an_issuers_passthrough_list_narrows_its_callers_as_a_keys_does(
        gateway: Server) -> None:
    """A token's caller could use every pass-through: the issuer had no passthrough: to
    narrow it with, as a key has."""
    url = f"{gateway.base_url}/passthrough/idp-raw/jwks.json"
    corp = RSA_KEY.sign(claims("ann", groups=["llm-eng"]))
    served = httpx.get(url, headers={"authorization": f"Bearer {corp}"})
    assert served.status_code == 200, served.text
    assert [key["kid"] for key in served.json()["keys"]][:1] == ["rsa-1"]
    narrowed = FILE_KEY.sign(claims("x", iss=AIRGAPPED, email="ann@corp.test"))
    refused = httpx.get(url, headers={"authorization": f"Bearer {narrowed}"})
    assert refused.status_code == 404, refused.text  # as for a name not defined


def test_cedar_decides_on_the_subject_of_a_token(gateway: Server) -> None:
    mallory = RSA_KEY.sign(claims("mallory", groups=["llm-eng"]))
    _chat(gateway, mallory, "chat")
    with pytest.raises(openai.PermissionDeniedError) as refused:
        _chat(gateway, mallory, "secret")
    assert "mallory-not-secret" in refused.value.response.text
    with _client(gateway, mallory) as client, pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="secret", messages=HI, user="someone-else")
    _chat(gateway, RSA_KEY.sign(claims("mike", groups=["llm-eng"])), "secret")


def test_each_caller_has_the_issuers_rpm_of_its_own(gateway: Server) -> None:
    rita = RSA_KEY.sign(claims("rita", groups=["llm-eng"]))
    for _ in range(3):
        _chat(gateway, rita)
    with pytest.raises(openai.RateLimitError):
        _chat(gateway, rita)
    _chat(gateway, RSA_KEY.sign(claims("sam", groups=["llm-eng"])))


def test_a_token_signs_in_on_the_other_endpoints(gateway: Server) -> None:
    token = RSA_KEY.sign(claims("otto", groups=["llm-eng"]))
    with _client(gateway, token) as client:
        assert client.responses.create(model="chat", input="hi").output_text
        assert {model.id for model in client.models.list()} == {"chat", "secret"}
    with anthropic.Anthropic(base_url=gateway.base_url, api_key=token, max_retries=0) as claude:
        message = claude.messages.create(model="chat", max_tokens=16, messages=[
            {"role": "user", "content": "hi"}])
        assert message.content
    gemini = httpx.post(f"{gateway.base_url}/v1beta/models/chat:generateContent",
                        headers={"x-goog-api-key": token},
                        json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]})
    assert gemini.status_code == 200, gemini.text


def test_a_pipeline_runs_its_steps_as_the_tokens_caller(gateway: Server) -> None:
    token = RSA_KEY.sign(claims("pia", groups=["llm-eng"]))
    response = httpx.post(f"{gateway.base_url}/v1/pipelines/summary", json={"text": "hello"},
                          headers={"authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded", response.text
    with sqlite3.connect(gateway.root / "aigw.sqlite") as ledger:
        rows = ledger.execute('SELECT team FROM ledger WHERE "key" = ?', ("corp#pia",)).fetchall()
    ledger.close()
    assert rows and {team for (team,) in rows} == {"engineering"}


def test_a_tokens_caller_is_never_an_admin(gateway: Server) -> None:
    token = RSA_KEY.sign(claims("eve", groups=["llm-eng"]))
    status = httpx.get(f"{gateway.base_url}/admin/status",
                       headers={"authorization": f"Bearer {token}"})
    assert status.status_code == 401
    assert token not in status.text


def test_a_gateway_without_issuers_refuses_a_jwt_as_a_wrong_key(tmp_path: Path) -> None:
    root = tmp_path / "gw"
    root.mkdir()
    (root / "gateway.yaml").write_text(
        "version: 1\nproviders:\n  local: {type: echo}\ndeployments:\n"
        "  e: {provider: local, model: echo-1, context_window: 8192}\n"
        "routes:\n  chat: {deployment: e}\n" + DEV_KEY_LINE)
    server = Server(root)
    try:
        server.wait_ready()
        error = _refused(server, RSA_KEY.sign(claims("alice")), openai.AuthenticationError)
        assert error["code"] == "invalid_api_key"
    finally:
        server.stop()


def test_a_realtime_session_signed_in_with_a_token_bills_each_response(tmp_path: Path) -> None:
    root = tmp_path / "gw"
    root.mkdir()
    (root / "jwks.json").write_text(json.dumps({"keys": [FILE_KEY.public_jwk()]}))
    issuer = (f"issuers:\n  airgapped: {{issuer: '{AIRGAPPED}', jwks_file: jwks.json, "
              f"audiences: [{AUDIENCE}]}}\n")
    token = FILE_KEY.sign(claims("rae", iss=AIRGAPPED))

    async def session(gateway: Any) -> list[Any]:
        async with connected(gateway, "realtime", key=token) as connection:
            await until(connection, "session.created")
            return [(await said(connection, text))[-1] for text in ("hello", "again")]

    with realtime_gateway(root, keys=issuer) as gateway:
        done = asyncio.run(session(gateway))
        assert [event.type for event in done] == ["response.done", "response.done"]
        with sqlite3.connect(root / "aigw.sqlite") as ledger:
            keys = [key for (key,) in ledger.execute('SELECT "key" FROM ledger')]
        ledger.close()
        assert keys == ["airgapped#rae", "airgapped#rae"]


def test_an_mcp_session_signed_in_with_a_token_calls_the_tools_its_issuer_allows(
        tmp_path: Path) -> None:
    upstream = RecordingMcpServer()
    root = tmp_path / "gw"
    (root / "policies").mkdir(parents=True)
    (root / "policies" / "mcp.cedar").write_text(
        '@id("airgapped-tools")\npermit (principal in Issuer::"airgapped", '
        'action == Action::"invoke", resource == McpServer::"tools");\n')
    (root / "jwks.json").write_text(json.dumps({"keys": [FILE_KEY.public_jwk()]}))
    token = FILE_KEY.sign(claims("x", iss=AIRGAPPED, email="mo@corp.test"))

    async def added(url: str) -> Any:
        async with session(url, token) as client:
            await client.initialize()
            return await client.call_tool("add", {"a": 2, "b": 40})

    with serving(upstream.app) as base_url:
        (root / "gateway.yaml").write_text(f"""\
version: 1
providers: {{local: {{type: echo}}}}
deployments: {{e: {{provider: local, model: echo-1, context_window: 8192}}}}
routes: {{echo: {{deployment: e}}}}
mcp_servers:
  tools: {{url: "{base_url}{PATH}", timeout_s: 10}}
  other: {{url: "{base_url}{PATH}", timeout_s: 10}}
issuers:
  airgapped: {{issuer: "{AIRGAPPED}", jwks_file: jwks.json, audiences: [{AUDIENCE}],
              principal_claim: email, mcp_servers: [tools]}}
""" + DEV_KEY_LINE)
        server = Server(root)
        try:
            server.wait_ready()
            result = asyncio.run(added(f"{server.base_url}/mcp/tools"))
            assert result.structured_content == {"result": 42}
            assert all(token not in value for headers in upstream.headers
                       for value in headers.values())
            outside = httpx.post(
                f"{server.base_url}/mcp/other", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                headers={"authorization": f"Bearer {token}",
                         "accept": "application/json, text/event-stream"})
            assert outside.status_code == 404, outside.text

            # A session outlives the token that opened it: the client's next token (its
            # identity provider's refresh) goes on in it; another caller's opens none.
            url = f"{server.base_url}/mcp/tools"
            shown = opened(url, token)
            time.sleep(1.1)  # a later iat and exp: a token of other bytes
            renewed = FILE_KEY.sign(claims("x", iss=AIRGAPPED, email="mo@corp.test"))
            assert renewed != token
            answer = rpc(url, renewed, shown, "tools/call", {"name": "add",
                                                            "arguments": {"a": 1, "b": 2}})
            assert answer.status_code == 200, answer.text
            other = FILE_KEY.sign(claims("x", iss=AIRGAPPED, email="eve@corp.test"))
            assert rpc(url, other, shown, "ping", {}).status_code == 404
        finally:
            server.stop()
