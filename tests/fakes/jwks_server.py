"""An OpenID provider's key endpoint, and the provider's side of signing: tokens minted here.

``GET /jwks.json`` answers the JSON Web Key Set of the public keys the provider
``publish``es now, as Okta, Entra ID, Keycloak or GitHub's OIDC issuer publish theirs
at their jwks_uri; ``down`` makes it answer 503 (a provider that cannot be reached);
``drip_s`` makes it send its answer a byte each so many seconds (one that never quite
answers).
``fetches`` counts the requests it answered, and ``encodings_asked`` keeps each one's
Accept-Encoding, so a test sees what the gateway asked.
Keys are real RSA and EC keys from ``cryptography``; tokens are signed with PyJWT.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

ISSUER = "https://login.example.test/"
AUDIENCE = "aigw"


@dataclass
class SigningKey:
    """A provider's key pair, named by ``kid``, for ``algorithm``."""

    kid: str
    algorithm: str
    private: Any = field(repr=False)
    use: str = "sig"  # "enc": a key the provider publishes for encryption, not signing

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def public_jwk(self) -> dict[str, Any]:
        family = RSAAlgorithm if self.algorithm.startswith("RS") else ECAlgorithm
        jwk: dict[str, Any] = json.loads(family.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": self.use, "alg": self.algorithm}

    def public_pem(self) -> bytes:
        pem: bytes = self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return pem

    def sign(self, claims: dict[str, Any], kid: str | None = None) -> str:
        """A JWT of ``claims`` signed with this key, its header naming ``kid`` (this key's
        own unless given)."""
        return jwt.encode(claims, self.private, algorithm=self.algorithm,
                          headers={"kid": kid or self.kid})


def claims(sub: str, **more: Any) -> dict[str, Any]:
    """A valid token's claims for ``sub``: the provider's iss, aigw's aud, an hour left."""
    now = int(time.time())
    return {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "nbf": now,
            "exp": now + 3600, **more}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(payload: dict[str, Any]) -> str:
    """A token with ``alg: none`` and no signature, as an attacker would send it."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(payload).encode())}."


def hmac_with_public_key(payload: dict[str, Any], key: SigningKey) -> str:
    """The algorithm-confusion attack: HS256 keyed with the provider's public key (PEM),
    which anyone can download; PyJWT refuses to make one, so it is made by hand."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    body = _b64(json.dumps(payload).encode())
    signature = hmac.new(key.public_pem(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{_b64(signature)}"


class JwksServer:
    def __init__(self, *keys: SigningKey) -> None:
        self.published: list[SigningKey] = list(keys)
        self.down = False
        self.drip_s = 0.0
        self.fetches = 0
        self.encodings_asked: list[str] = []
        self.app = Starlette(routes=[
            Route("/__ready", self._ready),
            Route("/jwks.json", self._jwks),
        ])

    def publish(self, *keys: SigningKey) -> None:
        self.published = list(keys)

    async def _ready(self, request: Request) -> Response:
        return Response("ok")

    async def _jwks(self, request: Request) -> Response:
        self.fetches += 1
        self.encodings_asked.append(request.headers.get("accept-encoding", ""))
        if self.down:
            return JSONResponse({"error": "temporarily_unavailable"}, status_code=503)
        if self.drip_s:
            body = json.dumps({"keys": [key.public_jwk() for key in self.published]}).encode()
            return StreamingResponse(self._dripped(body, self.drip_s),
                                     media_type="application/json")
        return JSONResponse({"keys": [key.public_jwk() for key in self.published]},
                            headers={"cache-control": "public, max-age=3600"})

    @staticmethod
    async def _dripped(body: bytes, every_s: float) -> AsyncIterator[bytes]:
        for index in range(len(body)):
            await asyncio.sleep(every_s)
            yield body[index:index + 1]
