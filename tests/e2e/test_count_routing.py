"""A real ``aigw serve`` in front of two Gemini fakes: Gemini's ``:countTokens`` asks the
deployment a request would be served by for this caller now, as the attempt loop picks
it (Cedar's route policies, open circuits skipped), never one a policy forbids to the
caller or one whose circuit is open."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from ..conftest import DEV_KEY
from ..fakes.brain import Action
from ..fakes.gemini_fake import GeminiFake
from ..fakes.serve import serving
from ..providers.conftest import dev_key_line
from .server import Server, running

pytestmark = pytest.mark.e2e

NARROW_KEY = "sk-count-narrow-0001"
BODY = {"contents": [{"role": "user", "parts": [{"text": "how many tokens is this"}]}]}
POLICIES = (
    '@id("invoke") permit (principal, action == Action::"invoke", resource);\n'
    '@id("route") permit (principal, action == Action::"route", resource);\n'
    '@id("narrow-stays-off-a") forbid (principal in ApiKey::"narrow", '
    'action == Action::"route", resource == Deployment::"a");\n'
)


@contextmanager
def _gateway(root: Path, env: pytest.MonkeyPatch,
             ) -> Iterator[tuple[Server, GeminiFake, GeminiFake]]:
    """Route ``r``: group ``g`` of ``a`` then ``b`` (priority), each a Gemini deployment
    on a fake of its own; ``a``'s circuit opens at its first failure and stays open."""
    first, second = GeminiFake("AIzaFakeKeyOfA0123456789"), GeminiFake("AIzaFakeKeyOfB0123456789")
    env.setenv("FAKE_GEMINI_KEY_A", first.api_key)  # the server inherits them
    env.setenv("FAKE_GEMINI_KEY_B", second.api_key)
    with serving(first.app) as url_a, serving(second.app) as url_b:
        root.mkdir(parents=True)
        narrow = hashlib.sha256(NARROW_KEY.encode()).hexdigest()
        (root / "gateway.yaml").write_text(
            "version: 1\n"
            "providers:\n"
            f'  gem-a: {{type: gemini, base_url: "{url_a}/v1beta",\n'
            '          api_key: "${FAKE_GEMINI_KEY_A}"}\n'
            f'  gem-b: {{type: gemini, base_url: "{url_b}/v1beta",\n'
            '          api_key: "${FAKE_GEMINI_KEY_B}"}\n'
            "deployments:\n"
            "  a: {provider: gem-a, model: gemini-2.5-flash, context_window: 1048576,\n"
            "      circuit_breaker: {consecutive_failures: 1, cooldown_s: 600}}\n"
            "  b: {provider: gem-b, model: gemini-2.5-pro, context_window: 1048576}\n"
            "groups:\n"
            "  g: {strategy: priority, members: [a, b], retry: {attempts: 0}}\n"
            "routes:\n"
            "  r: {group: g}\n"
            + dev_key_line(keys=f"  narrow: {{sha256: {narrow}}}\n"))
        (root / "policies").mkdir()
        (root / "policies" / "gateway.cedar").write_text(POLICIES)
        with running(root) as server:
            yield server, first, second


def _post(server: Server, method: str, key: str, body: object) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1beta/models/r:{method}", json=body, timeout=30,
                      headers={"x-goog-api-key": key})


def _counted_by(answer: httpx.Response) -> tuple[str, str | None]:
    assert answer.status_code == 200, answer.text
    return answer.headers["x-aigw-counted-by"], answer.headers.get("x-aigw-deployment")


def _counts(fake: GeminiFake) -> int:
    return sum(path.endswith(":countTokens") for path in fake.paths)


def test_count_tokens_never_asks_a_deployment_the_policies_forbid_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The count asked the route's first member whoever called: a key Cedar keeps off
    ``a`` (its requests served by ``b``) had its prompt sent to ``a`` all the same."""
    with _gateway(tmp_path / "gw", monkeypatch) as (server, first, second):
        assert _counted_by(_post(server, "countTokens", DEV_KEY, BODY)) == ("deployment", "a")
        assert _counts(first) == 1

        served = _post(server, "generateContent", NARROW_KEY, BODY)
        assert served.status_code == 200 and served.headers["x-aigw-deployment"] == "b"
        counted = _post(server, "countTokens", NARROW_KEY, BODY)
        assert _counted_by(counted) == ("deployment", "b")  # the one that serves it
        assert counted.json() == {"totalTokens": served.json()["usageMetadata"][
            "promptTokenCount"]}
        assert (_counts(first), _counts(second)) == (1, 1)  # a never saw narrow's prompt


def test_count_tokens_skips_a_deployment_whose_circuit_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The count asked the route's first member though its circuit was open (every
    request passing it by for ``b``): a failing upstream was sent each count."""
    with _gateway(tmp_path / "gw", monkeypatch) as (server, first, second):
        first.script.actions.append(Action(status=500))
        served = _post(server, "generateContent", DEV_KEY, BODY)
        assert served.status_code == 200 and served.headers["x-aigw-deployment"] == "b"
        status = httpx.get(f"{server.base_url}/admin/status",
                           headers={"Authorization": f"Bearer {DEV_KEY}"}).json()
        assert status["deployments"]["a"]["circuit"] == "open"

        assert _counted_by(_post(server, "countTokens", DEV_KEY, BODY)) == ("deployment", "b")
        assert (_counts(first), _counts(second)) == (0, 1)
