"""What a key may do is checked on every endpoint, and every secret a key may have
signs in (found by a review helper)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from .conftest import ClientFactory, digest

UNICODE_SECRET = "sk-clé-ünïcode-0005"


async def test_count_tokens_checks_the_keys_routes(limited: ClientFactory) -> None:
    """bob may call only 'free': counting the tokens of a 'paid' request is refused as
    the request itself would be."""
    client: Callable[[str], httpx.AsyncClient] = await limited()
    ask = {"model": "paid", "messages": [{"role": "user", "content": "hi"}]}
    refused = await client("bob").post("/v1/messages/count_tokens", json=ask)
    assert refused.status_code == 404, refused.text
    allowed = await client("bob").post("/v1/messages/count_tokens", json={**ask, "model": "free"})
    assert allowed.status_code == 200, allowed.text


async def test_a_secret_with_non_ascii_characters_signs_in(limited: ClientFactory) -> None:
    """The digest is of the secret's UTF-8; a header value arrives decoded as latin-1,
    so such a key was refused whatever the client sent."""
    client = await limited(
        extra_keys=f"  intl: {{team: eng, sha256: {digest(UNICODE_SECRET)}}}\n")
    http = client("dev")
    ask = {"model": "paid", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    signed = await http.post("/v1/chat/completions", json=ask, headers={
        "Authorization": b"Bearer " + UNICODE_SECRET.encode()})
    assert signed.status_code == 200, signed.text
    wrong = await http.post("/v1/chat/completions", json=ask, headers={
        "Authorization": b"Bearer " + UNICODE_SECRET.encode()[:-1]})
    assert wrong.status_code == 401
