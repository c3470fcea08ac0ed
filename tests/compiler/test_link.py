"""Stage 3, link: ${ENV} resolution, route candidates through fallbacks, reference checks."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from aigw.compiler import CompileResult, Graph, compile_gateway
from aigw.compiler.spec import moment_epoch

WriteGateway = Callable[..., Path]

DEPLOYMENTS = """\
deployments:
  a: {provider: local, model: m, context_window: 8192}
  b: {provider: local, model: m, context_window: 8192}
  c: {provider: local, model: m, context_window: 8192}
  d: {provider: local, model: m, context_window: 8192}
  e: {provider: local, model: m, context_window: 8192}
"""


def _compile(write_gateway: WriteGateway, body: str, environ: dict[str, str]) -> CompileResult:
    root = write_gateway({"gateway.yaml": "version: 1\n" + body})
    return compile_gateway(root, environ)


def _graph(result: CompileResult) -> Graph:
    assert result.graph is not None, [str(item.position) + " " + item.message
                                      for item in result.diagnostics]
    return result.graph


def test_env_reference_resolves_from_given_environ(
    write_gateway: WriteGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPU_HOST", "from-os-environ")  # must not be read
    body = """\
providers:
  local:
    type: echo
    api_key: "${SET_KEY}"
    base_url: "http://${GPU_HOST}:8000/v1"
    headers: {X-Team: "${TEAM}"}
deployments:
  a: {provider: local, model: m, context_window: 8192}
routes:
  chat: {deployment: a}
"""
    environ = {"SET_KEY": "sk-test-123", "GPU_HOST": "gpu-box", "TEAM": "search"}
    provider = _graph(_compile(write_gateway, body, environ)).providers["local"]
    assert provider.api_key == "sk-test-123"
    assert provider.base_url == "http://gpu-box:8000/v1"
    assert dict(provider.headers) == {"X-Team": "search"}
    assert provider.disabled_reason is None and provider.enabled


def test_unset_env_warns_and_disables_the_provider(write_gateway: WriteGateway) -> None:
    body = """\
providers:
  local: {type: echo}
  backup: {type: echo, api_key: "${BACKUP_KEY}"}
deployments:
  a: {provider: local, model: m, context_window: 8192}
  b: {provider: backup, model: m, context_window: 8192}
groups:
  main: {members: [a, b]}
routes:
  chat: {group: main}
"""
    result = _compile(write_gateway, body, {})
    graph = _graph(result)  # a warning does not stop the build
    assert [item.code.id for item in result.diagnostics] == ["AGW309"]
    assert result.diagnostics[0].message == "environment variable BACKUP_KEY is not set"
    assert graph.providers["backup"].disabled_reason == "environment variable BACKUP_KEY is not set"
    assert not graph.providers["backup"].enabled
    assert graph.providers["local"].enabled
    assert graph.deployments["b"].provider is graph.providers["backup"]


def test_a_key_or_header_that_is_not_ascii_disables_the_provider(
    write_gateway: WriteGateway,
) -> None:
    # httpx cannot send one (a UnicodeEncodeError and a traceback on every call), aiohttp
    # sends it as UTF-8, which no upstream takes for the key meant: as an unset ${ENV}.
    body = """\
providers:
  keyed: {type: gemini, base_url: "http://127.0.0.1:9", api_key: "${ODD}"}
  headed: {type: openai, base_url: "http://127.0.0.1:9/v1", api_key: "${KEY}",
           headers: {X-Team: "${ODD}", X-Plain: "${KEY}"}}
deployments:
  a: {provider: keyed, model: m, context_window: 8192}
  b: {provider: headed, model: m, context_window: 8192}
routes:
  a: {deployment: a}
  b: {deployment: b}
"""
    result = _compile(write_gateway, body, {"ODD": "s\u00e9same", "KEY": "sk-test-123"})
    graph = _graph(result)
    assert graph.providers["keyed"].disabled_reason == "api_key is not ASCII text"
    assert graph.providers["headed"].disabled_reason == "header X-Team is not ASCII text"
    assert not graph.providers["headed"].enabled


def test_a_served_deployments_command_line_reads_env_references(
    write_gateway: WriteGateway,
) -> None:
    """serve: args (and model, command) went to the vLLM process as written, ${HF_HOME}
    and all (no shell runs it to read them), where env: and the rest of the config read
    them. A flag aigw sets itself is refused once read, as when written out."""
    body = """\
providers:
  box: {type: vllm, base_url: "http://127.0.0.1:8001/v1"}
  other: {type: vllm, base_url: "http://127.0.0.1:8002/v1"}
deployments:
  a:
    provider: box
    model: m
    context_window: 8192
    serve:
      command: ["${VENV}/bin/vllm", serve]
      model: "${MODELS}/m"
      args: ["--download-dir=${HF_HOME}/hub", --max-num-seqs, "${SEQS}"]
  b:
    provider: other
    model: m
    context_window: 8192
    serve: {args: ["${EXTRA}"]}
routes:
  a: {deployment: a}
  b: {deployment: b}
"""
    environ = {"VENV": "/opt/vllm", "MODELS": "/srv/models", "HF_HOME": "/srv/hf",
               "SEQS": "64", "EXTRA": "--port=9000"}
    result = _compile(write_gateway, body, environ)
    assert [(item.code.id, item.message) for item in result.diagnostics] == [
        ("AGW324", "deployment 'b': --port is set by aigw from the provider's base_url")]
    del environ["EXTRA"]
    served = _graph(_compile(write_gateway, body, environ)).deployments["a"].serve
    assert served is not None
    assert served.argv == (
        "/opt/vllm/bin/vllm", "serve", "/srv/models/m", "--host", "127.0.0.1",
        "--port", "8001", "--served-model-name", "m", "--gpu-memory-utilization", "0.9",
        "--tensor-parallel-size", "1", "--max-model-len", "8192",
        "--download-dir=/srv/hf/hub", "--max-num-seqs", "64")


def test_key_secret_is_kept_only_as_its_digest_and_only_when_set(
    write_gateway: WriteGateway,
) -> None:
    body = """\
providers:
  local: {type: echo}
deployments:
  a: {provider: local, model: m, context_window: 8192}
routes:
  chat: {deployment: a}
keys:
  ci-bot: {secret: "${SET_KEY}"}
  nightly: {secret: "${NIGHTLY_KEY}"}
"""
    result = _compile(write_gateway, body, {"SET_KEY": "sk-test-123"})
    keys = _graph(result).keys_by_sha256
    digest = hashlib.sha256(b"sk-test-123").hexdigest()
    assert list(keys) == [digest]
    assert keys[digest].name == "ci-bot"
    assert [item.code.id for item in result.diagnostics] == ["AGW309"]


ROTATING_KEY = """\
providers:
  local: {type: echo}
deployments:
  a: {provider: local, model: m, context_window: 8192}
routes:
  chat: {deployment: a}
keys:
  ci-bot:
    secret: "${NEW_KEY}"
    expires: 2027-01-01
    previous:
      - {secret: "${OLD_KEY}", until: "2026-12-15T12:00:00+01:00"}
      - {secret: "${UNSET_KEY}"}
"""
ROTATION_ENV = {"NEW_KEY": "sk-new", "OLD_KEY": "sk-old"}


def test_a_previous_secret_is_the_same_key_until_its_date_in_epoch_seconds(
    write_gateway: WriteGateway,
) -> None:
    graph = _graph(_compile(write_gateway, ROTATING_KEY, ROTATION_ENV))
    new, old = (hashlib.sha256(secret).hexdigest() for secret in (b"sk-new", b"sk-old"))
    key = graph.keys_by_sha256[new]
    assert list(graph.keys_by_sha256) == [new]  # one key, listed once wherever keys are
    assert list(graph.previous_by_sha256) == [old]  # the unset one is not accepted
    assert graph.previous_by_sha256[old].key is key
    assert graph.previous_by_sha256[old].until == 1797332400.0  # 2026-12-15T11:00:00Z
    assert key.expires_at == 1798761600.0  # 2027-01-01T00:00:00Z


def test_a_previous_secret_is_still_the_key_when_the_current_ones_env_is_unset(
    write_gateway: WriteGateway,
) -> None:
    """Mid-rotation, the new secret's ${ENV} not set yet: the old secret still signs in
    as the key (it was dropped with the key), and the unset one is still warned about."""
    result = _compile(write_gateway, ROTATING_KEY, {"OLD_KEY": "sk-old"})
    graph, old = _graph(result), hashlib.sha256(b"sk-old").hexdigest()
    assert dict(graph.keys_by_sha256) == {}
    assert list(graph.previous_by_sha256) == [old]
    assert graph.previous_by_sha256[old].key is graph.keys_by_name["ci-bot"]
    assert [(item.code.id, item.message) for item in result.diagnostics] == [
        ("AGW309", "environment variable NEW_KEY is not set"),
        ("AGW309", "environment variable UNSET_KEY is not set")]


@pytest.mark.parametrize(("now", "found"), [
    ("2026-12-01T00:00:00Z", []),
    ("2026-12-25T00:00:00Z", ["AGW348 key 'ci-bot' expires at 2027-01-01T00:00:00Z, within 7 days",
                              "AGW349 key 'ci-bot' previous[0] is refused since "
                              "2026-12-15T11:00:00Z"]),
    ("2027-01-01T00:00:00Z", ["AGW348 key 'ci-bot' expired at 2027-01-01T00:00:00Z",
                              "AGW349 key 'ci-bot' previous[0] is refused since "
                              "2026-12-15T11:00:00Z"]),
])
def test_expiry_warnings_are_measured_from_now(
    write_gateway: WriteGateway, now: str, found: list[str]
) -> None:
    root = write_gateway({"gateway.yaml": "version: 1\n" + ROTATING_KEY})
    result = compile_gateway(root, ROTATION_ENV, now=moment_epoch(now))
    assert result.ok
    assert [f"{item.code.id} {item.message}" for item in result.diagnostics
            if item.code.id != "AGW309"] == found


def test_route_candidates_follow_fallbacks_in_order_each_once(
    write_gateway: WriteGateway,
) -> None:
    body = "providers:\n  local: {type: echo}\n" + DEPLOYMENTS + """\
groups:
  first: {members: [a, b], fallbacks: [second, third]}
  second: {members: [b, c], fallbacks: [fourth]}
  third: {members: [d, a]}
  fourth: {members: [e, c], fallbacks: [first]}
routes:
  chat: {group: first}
  tail: {group: third}
  direct: {deployment: c}
"""
    result = _compile(write_gateway, body, {})
    # fourth -> first closes a cycle, which is an error; check the candidates without it.
    assert [item.code.id for item in result.errors] == ["AGW306"]
    acyclic = body.replace(", fallbacks: [first]}", "}")
    graph = _graph(_compile(write_gateway, acyclic, {}))

    def names(route: str) -> list[str]:
        return [deployment.name for deployment in graph.routes[route].candidates]

    # Breadth first: the group's members, then each fallback's in order, then theirs.
    assert names("chat") == ["a", "b", "c", "d", "e"]
    assert names("tail") == ["d", "a"]
    assert names("direct") == ["c"]


def test_reference_to_an_entry_that_failed_validation_is_not_reported(
    write_gateway: WriteGateway,
) -> None:
    body = """\
providers:
  local: {type: echo}
deployments:
  a: {provider: local, model: m, context_window: 8k}
routes:
  chat: {deployment: a}
"""
    result = _compile(write_gateway, body, {})
    assert [item.code.id for item in result.diagnostics] == ["AGW204"]


def test_unknown_reference_hint_names_the_closest(write_gateway: WriteGateway) -> None:
    body = "providers:\n  local: {type: echo}\n" + DEPLOYMENTS + """\
routes:
  chat: {deployment: f}
  smart: {group: nothing}
"""
    result = _compile(write_gateway, body, {})
    hints = {item.code.id: item.hint for item in result.errors}
    assert hints == {
        "AGW302": "defined deployments: a, b, c, d, e",
        "AGW303": "no groups are defined",
    }


def test_no_diagnostic_quotes_a_password_or_key_it_was_given(
    write_gateway: WriteGateway,
) -> None:
    """Diagnostics reach whoever reads ``aigw check`` or /admin/status (last_reload): a
    base_url was quoted whole, user info and ${ENV} values included, and the text of an
    api_key or header with an unclosed ${ in it."""
    body = """\
providers:
  files: {type: openai, base_url: "ftp://user:SECRETPW@files.example/v1", api_key: "${SET_KEY}"}
  gpu:
    type: vllm
    base_url: "http://admin:${PASSWORD}@gpu-7.internal:8000/v1?token=${TOKEN}"
  headed:
    type: openai
    api_key: "${sk-proj-PASTEDKEY}"
    headers: {Authorization: "Bearer sk-live-HEADERKEY ${ORG"}
deployments:
  a: {provider: files, model: m, context_window: 8192}
  served: {provider: gpu, model: m, context_window: 8192, serve: {}}
  h: {provider: headed, model: m, context_window: 8192}
routes:
  chat: {deployment: a}
  fetch: {pipeline: fetch}
"""
    pipeline = """\
input: {type: object}
steps:
  page: {kind: http, method: GET, url: "https://bot:PIPESECRET@{{ input.host }}/status"}
output: "{{ steps.page }}"
"""
    root = write_gateway({"gateway.yaml": "version: 1\n" + body,
                          "pipelines/fetch.yaml": pipeline})
    environ = {"SET_KEY": "sk-test-123", "PASSWORD": "ENVPASSWORD", "TOKEN": "ENVTOKEN"}
    result = compile_gateway(root, environ)
    said = "\n".join(f"{item.code.id} {item.message} {item.hint}" for item in result.diagnostics)
    for code in ("AGW205", "AGW324", "AGW317", "AGW513"):
        assert code in said, said
    for secret in ("SECRETPW", "ENVPASSWORD", "ENVTOKEN", "PASTEDKEY", "HEADERKEY", "PIPESECRET"):
        assert secret not in said, said
    assert "base_url 'ftp://***@files.example/v1'" in said
    assert "points at http://***@gpu-7.internal:8000/v1?***" in said
    assert "unclosed ${ in '${ORG'" in said
