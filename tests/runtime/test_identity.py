"""runtime/identity.py through its seams: the key fetch (a coroutine) and the clock.

How often the provider is asked is the point here: many tokens at once naming a kid
the keys lack share one fetch, a provider that cannot be reached is asked again only
after jwks_refetch_s, and keys past their max age keep verifying while a renewal fails.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import jwt
import pytest
from jwt.algorithms import RSAAlgorithm

from aigw.compiler import compile_gateway
from aigw.compiler.graph import Graph
from aigw.runtime.errors import IdentityProviderUnavailable, TokenRefused, Unauthorized
from aigw.runtime.identity import (
    FETCH_TIMEOUT_S,
    Identities,
    looks_like_jwt,
    remade,
    token_caller,
)
from aigw.runtime.store.callers import TokenCaller

from ..fakes.jwks_server import ISSUER, JwksServer, SigningKey, claims
from ..fakes.serve import serving

KEY = SigningKey.rsa("k1")
ROTATED = SigningKey.rsa("k2")


class Provider:
    """The fetch seam: answers the keys it publishes, or fails while ``down``."""

    def __init__(self) -> None:
        self.published = [KEY]
        self.down = False
        self.fetches = 0
        self.delay_s = 0.0

    async def fetch(self, url: str) -> bytes:
        self.fetches += 1
        await asyncio.sleep(self.delay_s)
        if self.down:
            raise ValueError("unreachable")
        return json.dumps({"keys": [key.public_jwk() for key in self.published]}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def graph(tmp_path: Path) -> Graph:
    (tmp_path / "gateway.yaml").write_text(f"""\
version: 1
providers: {{local: {{type: echo}}}}
deployments: {{e: {{provider: local, model: echo-1, context_window: 8192}}}}
routes: {{chat: {{deployment: e}}}}
teams: {{eng: {{}}}}
issuers:
  corp: {{issuer: "{ISSUER}", jwks_url: "https://login.example.test/jwks", audiences: [aigw],
         team: eng, jwks_max_age_s: 60, jwks_refetch_s: 10}}
""")
    result = compile_gateway(tmp_path, {})
    assert result.graph is not None, result.diagnostics
    return result.graph


async def test_tokens_at_once_naming_a_new_kid_share_one_fetch(graph: Graph) -> None:
    provider, clock = Provider(), Clock()
    identities = Identities(provider.fetch, clock)
    await identities.caller(graph, KEY.sign(claims("a")))
    provider.published = [KEY, ROTATED]
    provider.delay_s = 0.05
    clock.now += 11
    callers = await asyncio.gather(*(identities.caller(graph, ROTATED.sign(claims(f"u{i}")))
                                     for i in range(40)))
    assert {caller.name for caller in callers} == {f"corp#u{i}" for i in range(40)}
    assert provider.fetches == 2


async def test_an_unknown_kid_refetches_at_most_once_a_refetch_interval(graph: Graph) -> None:
    provider, clock = Provider(), Clock()
    identities = Identities(provider.fetch, clock)
    await identities.caller(graph, KEY.sign(claims("a")))
    for index in range(30):
        clock.now += 1
        with pytest.raises(TokenRefused, match="is not among issuer 'corp''s keys"):
            await identities.caller(graph, KEY.sign(claims("a"), kid=f"made-up-{index}"))
    assert provider.fetches == 1 + 3  # the first, then one each 10 s of the 30


async def test_a_provider_never_reached_is_a_503_asked_again_only_after_the_interval(
        graph: Graph) -> None:
    provider, clock = Provider(), Clock()
    provider.down = True
    identities = Identities(provider.fetch, clock)
    token = KEY.sign(claims("a"))
    for waited in range(5):
        with pytest.raises(IdentityProviderUnavailable) as refused:
            await identities.caller(graph, token)
        # Retry-After: until the next fetch may be tried (the SDKs wait that long).
        assert refused.value.headers["retry-after"] == str(10 - 2 * waited)
        clock.now += 2
    assert provider.fetches == 1
    provider.down = False
    assert (await identities.caller(graph, token)).name == "corp#a"
    assert provider.fetches == 2


async def test_stale_keys_verify_while_their_renewal_fails(graph: Graph) -> None:
    provider, clock = Provider(), Clock()
    identities = Identities(provider.fetch, clock)
    token = KEY.sign(claims("a"))
    await identities.caller(graph, token)
    provider.down = True
    clock.now += 120  # past jwks_max_age_s
    callers = await asyncio.gather(*(identities.caller(graph, token) for _ in range(20)))
    assert {caller.name for caller in callers} == {"corp#a"}
    await asyncio.sleep(0.01)
    assert (await identities.caller(graph, token)).name == "corp#a"
    await identities.aclose()
    assert provider.fetches == 2  # one renewal tried, in the background


def test_a_jwt_has_three_base64url_parts_and_a_key_has_not() -> None:
    assert looks_like_jwt(KEY.sign(claims("a")))
    assert looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.")  # alg none: no signature
    assert not looks_like_jwt("sk-aigw-dev")
    assert not looks_like_jwt("a.b")
    assert not looks_like_jwt("a.b.c.d")
    assert not looks_like_jwt("a b.c.d")


def _compiled(root: Path, teams: str, issuers: str) -> Graph:
    root.mkdir(exist_ok=True)
    (root / "gateway.yaml").write_text(f"""\
version: 1
providers: {{local: {{type: echo}}}}
deployments: {{e: {{provider: local, model: echo-1, context_window: 8192}}}}
routes: {{chat: {{deployment: e}}}}
teams: {teams}
issuers:
{issuers}""")
    result = compile_gateway(root, {})
    assert result.graph is not None, result.diagnostics
    return result.graph


CLAIMED = (f'  corp: {{issuer: "{ISSUER}", jwks_url: "https://login.example.test/jwks", '
           "audiences: [aigw], team: {claim: groups, map: {g-eng: eng, g-ops: ops}}}\n")
FIXED = ('  partner: {issuer: "https://partner.test/", jwks_url: "https://partner.test/jwks", '
         "audiences: [aigw], team: eng}\n")


async def test_a_kept_caller_is_made_again_in_the_team_its_claim_gave_it(
        tmp_path: Path) -> None:
    graph = _compiled(tmp_path / "a", "{eng: {}, ops: {}}", CLAIMED + FIXED)
    identities = Identities(Provider().fetch, Clock())
    signed_in = await identities.caller(graph, KEY.sign(claims("ada", groups=["g-ops"])))
    kept = token_caller(signed_in)
    assert kept == TokenCaller("corp", "ada", "ops")
    assert TokenCaller.from_json(json.loads(json.dumps(kept.as_json()))) == kept
    assert remade(graph, kept) == signed_in
    # A fixed team is the issuer's as the config has it now, as a key's team is.
    partner = remade(graph, TokenCaller("partner", "bo", "gone-team"))
    assert (partner.name, partner.team and partner.team.name) == ("partner#bo", "eng")
    # A key of the config is found again by its name: nothing of it is kept.
    assert token_caller(replace(signed_in, name="dev", issuer=None, subject=None)) is None
    await identities.aclose()


def test_a_kept_caller_whose_team_or_issuer_left_the_config_is_refused(tmp_path: Path) -> None:
    kept = TokenCaller("corp", "ada", "ops")
    without_ops = _compiled(tmp_path / "a", "{eng: {}}", CLAIMED.replace(", g-ops: ops", ""))
    with pytest.raises(Unauthorized) as refused:
        remade(without_ops, kept)
    assert refused.value.message == (
        "The caller 'corp#ada' is no longer accepted: its team 'ops' (the one its token "
        "gave it when it started this work) is no longer in the gateway's config.")
    assert refused.value.key_name == "corp#ada"
    without_corp = _compiled(tmp_path / "b", "{eng: {}}", FIXED)
    with pytest.raises(Unauthorized) as gone:
        remade(without_corp, kept)
    assert gone.value.message == ("The caller 'corp#ada' is no longer accepted: its issuer "
                                  "'corp' is no longer in the gateway's config.")
    # It had no team (its issuer gave none then); its issuer picks one by claim now.
    with pytest.raises(Unauthorized) as teamless:
        remade(without_ops, TokenCaller("corp", "ada", None))
    assert teamless.value.message == (
        "The caller 'corp#ada' is no longer accepted: issuer 'corp' now gives its callers a "
        "team by their token's 'groups' claim, and it had none when it started this work.")


Verify = Callable[..., bool]


@pytest.fixture
def verifies(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many RS256 signatures PyJWT checked: its algorithm's ``verify``, counted on
    the way through (the check itself still made)."""
    counted = [0]
    checked: Verify = RSAAlgorithm.verify

    def counting(self: RSAAlgorithm, message: bytes, key: object, signature: bytes) -> bool:
        counted[0] += 1
        return checked(self, message, key, signature)

    monkeypatch.setattr(RSAAlgorithm, "verify", counting)
    return counted


async def test_a_token_verified_once_signs_in_again_without_its_signature_checked(
        graph: Graph, verifies: list[int]) -> None:
    identities = Identities(Provider().fetch, Clock())
    token = KEY.sign(claims("ada"))
    callers = [await identities.caller(graph, token) for _ in range(5)]
    assert {caller.name for caller in callers} == {"corp#ada"}
    assert verifies[0] == 1
    await identities.caller(graph, KEY.sign(claims("bo")))
    assert verifies[0] == 2
    # A refusal is not kept: the same bad token is checked, and refused, each time.
    forged = ROTATED.sign(claims("ada"), kid="k1")
    for _ in range(2):
        with pytest.raises(TokenRefused, match="signature does not verify") as refused:
            await identities.caller(graph, forged)
        assert refused.value.key_name == "corp#?"
    assert verifies[0] == 4
    assert (await identities.caller(graph, token)).name == "corp#ada"
    assert verifies[0] == 4


class Wall:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_a_kept_token_past_its_exp_is_refused_naming_its_issuer_only(
        graph: Graph, verifies: list[int]) -> None:
    wall = Wall()
    identities = Identities(Provider().fetch, Clock(), wall)
    exp = int(wall.now) + 120
    token = KEY.sign(claims("ada", exp=exp))
    await identities.caller(graph, token)
    wall.now = exp + 30 - 1  # within the issuer's leeway (30 s unless set)
    assert (await identities.caller(graph, token)).name == "corp#ada"
    assert verifies[0] == 1
    wall.now = exp + 30
    with pytest.raises(TokenRefused, match=r"The token expired at .*issuer 'corp'") as refused:
        await identities.caller(graph, token)
    assert (refused.value.key_name, refused.value.team_name) == ("corp#?", None)
    # A token naming an issuer the gateway does not have: the sender wrote that name.
    with pytest.raises(TokenRefused) as stranger:
        await identities.caller(graph, KEY.sign(claims("ada", iss="https://evil.test/")))
    assert stranger.value.key_name is None


async def test_a_kept_token_is_verified_again_after_a_reload_and_refused_without_its_issuer(
        graph: Graph, tmp_path: Path, verifies: list[int]) -> None:
    identities = Identities(Provider().fetch, Clock())
    token = KEY.sign(claims("ada"))
    await identities.caller(graph, token)
    await identities.caller(graph, token)
    assert verifies[0] == 1
    # The same config compiled again: new Issuer objects, the token verified once more.
    same = _compiled(tmp_path / "same", "{eng: {}}", (
        f'  corp: {{issuer: "{ISSUER}", jwks_url: "https://login.example.test/jwks", '
        "audiences: [aigw], team: eng, jwks_max_age_s: 60, jwks_refetch_s: 10}\n"))
    for _ in range(2):
        assert (await identities.caller(same, token)).name == "corp#ada"
    assert verifies[0] == 2
    # The issuer now wants another audience, then is gone: the kept caller is not served.
    other_audience = _compiled(tmp_path / "aud", "{eng: {}}", (
        f'  corp: {{issuer: "{ISSUER}", jwks_url: "https://login.example.test/jwks", '
        "audiences: [elsewhere], team: eng}\n"))
    with pytest.raises(TokenRefused, match="is not this gateway"):
        await identities.caller(other_audience, token)
    await identities.caller(same, token)
    assert verifies[0] == 4
    without_corp = _compiled(tmp_path / "gone", "{eng: {}}", FIXED)
    with pytest.raises(TokenRefused, match="is not one this gateway accepts"):
        await identities.caller(without_corp, token)


async def test_a_kept_token_is_refused_once_its_key_leaves_the_providers_set(
        graph: Graph, verifies: list[int]) -> None:
    provider, clock = Provider(), Clock()
    identities = Identities(provider.fetch, clock)
    token = KEY.sign(claims("ada"))
    for _ in range(2):
        await identities.caller(graph, token)
    assert verifies[0] == 1
    provider.published = [ROTATED]  # k1 withdrawn, as after a compromise
    clock.now += 61  # past jwks_max_age_s: the next sign-in renews the set
    await identities.caller(graph, token)  # served by the set it has, while renewing
    await asyncio.sleep(0.01)
    assert provider.fetches == 2
    with pytest.raises(TokenRefused, match="kid 'k1'") as refused:
        await identities.caller(graph, token)
    assert refused.value.key_name == "corp#?"
    # Kept ones of a key still in the set stand across the renewal.
    kept = ROTATED.sign(claims("bo"))
    await identities.caller(graph, kept)
    provider.published = [ROTATED, KEY]
    clock.now += 61
    await identities.caller(graph, kept)
    await asyncio.sleep(0.01)
    counted = verifies[0]
    assert (await identities.caller(graph, kept)).name == "corp#bo"
    assert verifies[0] == counted
    await identities.aclose()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_a_token_nested_past_the_recursion_limit_is_refused_as_malformed(
        graph: Graph) -> None:
    """A header of "[[[[..." a few KiB long was a RecursionError (a 500, its traceback
    logged); one nested deeper than any token is, but not past the limit at once, was
    parsed again further down the stack by PyJWT."""
    identities = Identities(Provider().fetch, Clock())
    deep = _b64(b"[" * 5000 + b"]" * 5000)
    nested: object = "x"
    for _ in range(40):
        nested = [nested]
    for token in (f"{deep}.{_b64(b'{}')}.c2ln", f"{_b64(b'{}')}.{deep}.c2ln",
                  jwt.encode(claims("a"), KEY.private, algorithm="RS256",
                             headers={"kid": "k1", "x5c_chain": nested})):
        with pytest.raises(TokenRefused, match="not a well-formed JWT"):
            await identities.caller(graph, token)


@pytest.mark.parametrize("answer", [b"[" * 100_000, b'"keys"', b'{"keys": {"k1": {}}}',
                                    b"\xff\xfe<html>", b"[]"],
                         ids=["nested-past-the-recursion-limit", "a-string", "keys-not-a-list",
                              "not-utf-8", "a-list"])
async def test_a_provider_answering_garbage_is_unavailable_and_its_old_keys_kept(
        graph: Graph, answer: bytes) -> None:
    """JSON nested past the recursion limit was a RecursionError: a 500 for the token
    that waited on the fetch, or a renewal's task dying."""
    provider, clock = Provider(), Clock()
    fetch = provider.fetch

    async def answering(url: str) -> bytes:
        return answer if provider.down else await fetch(url)

    provider.down = True
    identities = Identities(answering, clock)
    with pytest.raises(IdentityProviderUnavailable):
        await identities.caller(graph, KEY.sign(claims("a")))
    provider.down = False
    clock.now += 10
    await identities.caller(graph, KEY.sign(claims("b")))
    provider.down = True
    clock.now += 120  # past jwks_max_age_s: renewed in the background, to garbage
    await identities.caller(graph, KEY.sign(claims("c")))
    await asyncio.sleep(0.05)
    assert (await identities.caller(graph, KEY.sign(claims("d")))).name == "corp#d"
    assert identities.status(graph)["corp"]["last_fetch_failed"] is True
    await identities.aclose()


async def test_keys_with_no_kid_are_each_kept(tmp_path: Path) -> None:
    """A set of an RSA and an EC key, neither with a kid, kept only the last (both were
    filed under kid ""): an RS256 token naming no kid was refused."""
    ec_key = SigningKey.ec("unused")

    async def keyless(url: str) -> bytes:
        keys = [{name: value for name, value in key.public_jwk().items() if name != "kid"}
                for key in (KEY, ec_key)]
        return json.dumps({"keys": keys}).encode()

    graph = _compiled(tmp_path, "{}", f'  corp: {{issuer: "{ISSUER}", '
                      'jwks_url: "https://login.example.test/jwks", audiences: [aigw], '
                      "algorithms: [RS256, ES256]}\n")
    identities = Identities(keyless, Clock())
    for key in (KEY, ec_key):
        token = jwt.encode(claims(key.algorithm), key.private, algorithm=key.algorithm)
        assert (await identities.caller(graph, token)).name == f"corp#{key.algorithm}"
    assert identities.status(graph)["corp"]["kids"] == ["", ""]


async def test_a_provider_answering_a_byte_at_a_time_is_given_up_on_in_the_fetch_timeout(
        tmp_path: Path) -> None:
    """httpx's timeout is each read's: a provider sending a byte a second held every
    token of its issuer (waiting on its one fetch) for as long as it went on."""
    provider = JwksServer(KEY)
    provider.drip_s = 0.25
    with serving(provider.app) as base_url:
        graph = _compiled(tmp_path, "{}", f'  corp: {{issuer: "{ISSUER}", '
                          f'jwks_url: "{base_url}/jwks.json", audiences: [aigw]}}\n')
        identities = Identities()
        started = time.monotonic()
        with pytest.raises(IdentityProviderUnavailable):
            await asyncio.wait_for(identities.caller(graph, KEY.sign(claims("a"))), 20)
        assert time.monotonic() - started < FETCH_TIMEOUT_S + 2
        await identities.aclose()


async def test_a_key_set_is_asked_for_uncompressed(tmp_path: Path) -> None:
    """The key set's size cap counts the bytes read, and a gzip answer's chunk may decode
    to many MiB before it is counted: the fetch asks for the set as it is."""
    provider = JwksServer(KEY)
    with serving(provider.app) as base_url:
        graph = _compiled(tmp_path, "{}", f'  corp: {{issuer: "{ISSUER}", '
                          f'jwks_url: "{base_url}/jwks.json", audiences: [aigw]}}\n')
        identities = Identities()
        caller = await identities.caller(graph, KEY.sign(claims("a")))
        await identities.aclose()
    assert caller.name == "corp#a"
    assert provider.encodings_asked == ["identity"]


async def test_a_set_without_kids_is_fetched_again_when_it_has_no_key_for_a_token(
        tmp_path: Path) -> None:
    """A provider with no kids that moved from an RSA key to an EC one: a token naming
    no kid found no key for ES256 and was refused until the set was past its max age
    (a minute here, five by default); it is fetched again as for a new kid."""
    provider, clock = Provider(), Clock()
    ec_key = SigningKey.ec("unused")

    async def keyless(url: str) -> bytes:
        provider.fetches += 1
        return json.dumps({"keys": [{name: value for name, value in key.public_jwk().items()
                                     if name != "kid"} for key in provider.published]}).encode()

    graph = _compiled(tmp_path, "{}", f'  corp: {{issuer: "{ISSUER}", '
                      'jwks_url: "https://login.example.test/jwks", audiences: [aigw], '
                      "algorithms: [RS256, ES256], jwks_max_age_s: 60}\n")
    identities = Identities(keyless, clock)
    rsa = jwt.encode(claims("a"), KEY.private, algorithm="RS256")
    assert (await identities.caller(graph, rsa)).name == "corp#a"
    provider.published = [ec_key]
    clock.now += 11  # past jwks_refetch_s, not jwks_max_age_s
    ec = jwt.encode(claims("b"), ec_key.private, algorithm="ES256")
    assert (await identities.caller(graph, ec)).name == "corp#b"
    assert provider.fetches == 2


@pytest.mark.parametrize(("aud", "said"), [
    (["other", "aigw"], None),
    (["other", "someone"], "audience [\"other\", \"someone\"] is not this gateway"),
    (["aigw", 5], "aud claim is not a string or a list of strings"),
    ({"aud": "aigw"}, "aud claim is not a string or a list of strings"),
], ids=["a-list-holding-this-gateway", "a-list-without-it", "a-list-holding-a-number",
        "an-object"])
async def test_an_aud_claim_that_is_a_list(graph: Graph, aud: object, said: str | None) -> None:
    """A list holding this gateway's audience and a number was refused as "not this
    gateway", naming the list that named it."""
    identities = Identities(Provider().fetch, Clock())
    token = KEY.sign(claims("a", aud=aud))
    if said is None:
        assert (await identities.caller(graph, token)).name == "corp#a"
        return
    with pytest.raises(TokenRefused) as refused:
        await identities.caller(graph, token)
    assert said in refused.value.message


def _served_issuer(root: Path, base_url: str) -> Graph:
    return _compiled(root, "{}", f'  corp: {{issuer: "{ISSUER}", jwks_url: "{base_url}/jwks.json", '
                     "audiences: [aigw], jwks_max_age_s: 300, jwks_refetch_s: 10}\n")


@pytest.mark.parametrize("kid", ["k1", None], ids=["the-same-kid", "no-kid"])
async def test_a_key_rotated_under_the_same_kid_is_fetched_again_on_a_bad_signature(
        tmp_path: Path, kid: str | None) -> None:
    """A provider that rotates its key and keeps the kid (or names none): a token signed
    with the new key failed its signature check against the set held here until that
    was past jwks_max_age_s (five minutes by default); the set is fetched again at once."""
    provider, clock = JwksServer(), Clock()
    old, new = SigningKey.rsa("k1"), SigningKey.rsa("k1")
    provider.publish(old)
    with serving(provider.app) as base_url:
        graph = _served_issuer(tmp_path, base_url)
        identities = Identities(clock=clock)

        def signed(key: SigningKey, sub: str) -> str:
            return jwt.encode(claims(sub), key.private, algorithm="RS256",
                              headers={"kid": kid} if kid else None)

        assert (await identities.caller(graph, signed(old, "a"))).name == "corp#a"
        provider.publish(new)
        clock.now += 11  # past jwks_refetch_s, well within jwks_max_age_s
        assert (await identities.caller(graph, signed(new, "b"))).name == "corp#b"
        assert provider.fetches == 2
        # The old key is gone from the set: its tokens (a kept one too) are refused.
        with pytest.raises(TokenRefused, match="signature does not verify"):
            await identities.caller(graph, signed(old, "a"))
        await identities.aclose()


async def test_bad_signatures_refetch_at_most_once_a_refetch_interval(tmp_path: Path) -> None:
    """Forged signatures under a known kid, many at once and then one a second: the
    provider is asked once each jwks_refetch_s, never once a token."""
    provider, clock = JwksServer(KEY), Clock()
    forger = SigningKey.rsa("k1")
    with serving(provider.app) as base_url:
        graph = _served_issuer(tmp_path, base_url)
        identities = Identities(clock=clock)
        assert (await identities.caller(graph, KEY.sign(claims("a")))).name == "corp#a"
        clock.now += 11
        refused = await asyncio.gather(
            *(identities.caller(graph, forger.sign(claims(f"f{i}"))) for i in range(40)),
            return_exceptions=True)
        assert all(isinstance(each, TokenRefused) for each in refused)
        assert provider.fetches == 2
        for index in range(30):
            clock.now += 1
            with pytest.raises(TokenRefused, match="signature does not verify"):
                await identities.caller(graph, forger.sign(claims(f"g{index}")))
        assert provider.fetches == 2 + 3  # one each 10 s of the 30
        assert (await identities.caller(graph, KEY.sign(claims("a")))).name == "corp#a"
        await identities.aclose()


@pytest.mark.parametrize("published", [(), (replace(SigningKey.rsa("k9"), use="enc"),)],
                         ids=["no-keys", "only-an-encryption-key"])
async def test_a_set_with_no_usable_key_keeps_the_keys_fetched_before(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        published: tuple[SigningKey, ...]) -> None:
    """A provider answering {"keys": []} (or keys none of which signs) mid-rotation or
    misconfigured: that set replaced the good one, and every token of the issuer was
    refused, its kid "not among" the keys, until a later fetch found some again."""
    provider, clock = JwksServer(KEY), Clock()
    with serving(provider.app) as base_url:
        graph = _served_issuer(tmp_path, base_url)
        identities = Identities(clock=clock)
        assert (await identities.caller(graph, KEY.sign(claims("a")))).name == "corp#a"
        provider.publish(*published)
        clock.now += 301  # past jwks_max_age_s: renewed in the background, to no keys
        assert (await identities.caller(graph, KEY.sign(claims("b")))).name == "corp#b"
        await asyncio.sleep(0.2)
        assert provider.fetches == 2
        assert (await identities.caller(graph, KEY.sign(claims("c")))).name == "corp#c"
        status = identities.status(graph)["corp"]
        assert (status["kids"], status["last_fetch_failed"]) == (["k1"], True)
        assert "answered a key set with no usable signing key; keeping those" in caplog.text
        # Only tokens no kept key verifies are refused.
        with pytest.raises(TokenRefused, match="signature does not verify"):
            await identities.caller(graph, ROTATED.sign(claims("d"), kid="k1"))
        await identities.aclose()


async def test_a_bad_signature_whose_kid_the_set_fetched_again_lacks_is_an_unknown_kid(
        tmp_path: Path) -> None:
    """A token under kid k1 that k1 does not verify, after the provider withdrew k1: the
    set fetched again on the bad signature lacks k1, and the refusal said the signature
    does not verify, as if the kid were still a key to sign with."""
    provider, clock = JwksServer(KEY), Clock()
    with serving(provider.app) as base_url:
        graph = _served_issuer(tmp_path, base_url)
        identities = Identities(clock=clock)
        assert (await identities.caller(graph, KEY.sign(claims("a")))).name == "corp#a"
        provider.publish(ROTATED)  # k1 withdrawn
        clock.now += 11  # past jwks_refetch_s, within jwks_max_age_s
        with pytest.raises(TokenRefused) as refused:
            await identities.caller(graph, ROTATED.sign(claims("b"), kid="k1"))
        assert refused.value.message == (
            "The token's signing key (kid 'k1') is not among issuer 'corp''s keys for RS256.")
        assert provider.fetches == 2
        await identities.aclose()
