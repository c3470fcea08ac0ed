"""``aigw compile``: the graph as an operator reads it, in text and JSON, with no secret in it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aigw.cli import main
from aigw.compiler.keys import shown_moment

from .conftest import CI_BOT_KEY, CI_BOT_OLD_KEY, GUARD_TOKEN, OPS_EXPIRES, OPS_UNTIL


def _compiled(root: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["compile", str(root), *args]) == 0
    out: str = capsys.readouterr().out
    for secret in (GUARD_TOKEN, CI_BOT_KEY, CI_BOT_OLD_KEY, "token=abc"):
        assert secret not in out
    return out


def test_json_shows_a_routes_semantic_cache_and_guardrails(
    ops_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    faq = json.loads(_compiled(ops_dir, capsys, "--format", "json"))["routes"]["faq"]
    assert faq["cache"] == {"ttl_s": 600.0, "scope": "key", "semantic": {
        "embeddings": "embed", "threshold": 0.9, "max_prompt_tokens": 2048, "timeout_s": 2.0},
        # fast's echo-1 and its fallback's echo-1-large keep their answers apart
        "by_model": True}
    assert faq["guardrails"] == [
        {"name": "secrets", "kind": "regex", "on": ["input"], "action": "block"},
        {"name": "pii", "kind": "pii", "on": ["input", "output"], "action": "redact"},
        # The webhook's header by name only: its value is the checker's credential.
        {"name": "checker", "kind": "webhook", "on": ["output"], "action": "log",
         "webhook": {"url": "https://guard.example.com/check?***", "timeout_s": 2.0,
                     "on_error": "allow", "headers": ["authorization"],
                     "disabled_reason": None, "cache": None}},  # kept for input only
    ]
    fast = json.loads(_compiled(ops_dir, capsys, "--format", "json"))["routes"]["fast"]
    assert fast["cache"] is None and fast["guardrails"] == []


def test_json_shows_a_keys_mcp_servers_expiry_and_rotation_never_its_digests(
    ops_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _compiled(ops_dir, capsys, "--format", "json")
    keys = {key.pop("name"): key for key in json.loads(out)["keys"]}
    assert keys["ci-bot"] == {
        "team": "default", "admin": False, "routes": None, "mcp_servers": ["docs"],
        "passthrough": None,
        "expires_at": shown_moment(OPS_EXPIRES), "previous": [{"until": shown_moment(OPS_UNTIL)}]}
    assert keys["dev"] == {"team": "default", "admin": True, "routes": None,
                           "mcp_servers": None, "passthrough": None, "expires_at": None,
                           "previous": []}
    assert "sha256" not in out and "2f0527c3d35a" not in out  # the dev key's digest
    # The servers keys name, with their headers by name only (the value is a credential).
    assert json.loads(out)["mcp_servers"] == {"docs": {
        "url": "https://mcp.example.com/mcp", "timeout_s": 60.0, "tools": ["search"],
        "headers": ["Authorization"], "disabled_reason": None}}


def test_text_shows_the_same_on_the_route_and_key_lines(
    ops_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = _compiled(ops_dir, capsys).splitlines()
    assert ("  route faq -> group fast: echo-small, echo-large [cache 600 s key, by model, "
            "semantic via embed >= 0.9] [guardrails secrets input block, pii input,output "
            "redact, checker output log]") in lines
    assert (f"  key ci-bot: team default, mcp_servers docs, expires {shown_moment(OPS_EXPIRES)}, "
            f"previous until {shown_moment(OPS_UNTIL)}") in lines
    assert "  key dev: team default, admin" in lines


def test_json_hides_credentials_in_a_providers_base_url(
    gateway_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """User info in a base_url is a credential aigw sends as Basic auth."""
    monkeypatch.setenv("OPS_VLLM_PASSWORD", GUARD_TOKEN)
    config = gateway_dir / "gateway.yaml"
    config.write_text(config.read_text().replace("  local: {type: echo}\n", """  local: {type: echo}
  box: {type: vllm, base_url: "http://ops:${OPS_VLLM_PASSWORD}@127.0.0.1:9/v1"}
""", 1))
    providers = json.loads(_compiled(gateway_dir, capsys, "--format", "json"))["providers"]
    assert providers["box"]["base_url"] == "http://***@127.0.0.1:9/v1"
    assert providers["local"]["base_url"] is None


def test_a_passthrough_and_the_keys_it_narrows_show_in_json_and_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    case = Path(__file__).parent / "compiler" / "cases" / "ok-passthrough" / "gateway.yaml"
    (tmp_path / "gateway.yaml").write_text(case.read_text())
    monkeypatch.setenv("SET_KEY", "sk-set-key-0123456789")
    out = json.loads(_compiled(tmp_path, capsys, "--format", "json"))
    assert out["passthrough"] == {"openai-raw": {
        "provider": "openai",
        "paths": ["/v1/vector_stores/**", "/v1/files/*/content", "/v1/fine_tuning/**/events"],
        "methods": ["DELETE", "GET", "POST"]}}
    assert [key["passthrough"] for key in out["keys"]] == [["openai-raw"]]
    lines = _compiled(tmp_path, capsys).splitlines()
    assert ("  passthrough openai-raw -> openai: /v1/vector_stores/**, /v1/files/*/content, "
            "/v1/fine_tuning/**/events [DELETE, GET, POST]") in lines
    assert "  key ci-bot: passthrough openai-raw" in lines


def test_issuers_are_shown_with_what_their_tokens_must_carry(
    capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(__file__).parent / "compiler" / "cases" / "ok-issuers"
    issuers = json.loads(_compiled(root, capsys, "--format", "json"))["issuers"]
    assert issuers["corp"] == {
        "issuer": "https://login.example.com/",
        "jwks": "https://login.example.com/.well-known/jwks.json",
        "audiences": ["aigw"], "algorithms": ["RS256", "ES256"],
        "team": {"claim": "groups", "map": {"llm-eng": "engineering",
                                            "llm-research": "research"}, "default": None},
        "principal_claim": "sub", "routes": None, "mcp_servers": None, "passthrough": None}
    assert issuers["airgapped"]["jwks"] == "jwks_file"
    text = _compiled(root, capsys)
    assert ("  issuer corp https://login.example.com/: aud aigw, RS256, ES256, team by groups, "
            "principal sub\n") in text
