"""A fake of Vertex AI: Google's OAuth token endpoint and both publishers' model endpoints.

``POST /token`` is Google's service-account grant: a form with ``grant_type``
``urn:ietf:params:oauth:grant-type:jwt-bearer`` and an RS256 ``assertion`` signed by
the account's private key, whose ``iss`` is the account, ``aud`` Google's token
endpoint (which google-auth names even when ``token_uri`` points elsewhere) and
``scope`` the cloud-platform scope; it answers ``{"access_token", "expires_in",
"token_type"}`` or ``{"error": "invalid_grant", ...}`` as Google does.
``make_service_account`` writes the JSON file of an account with a throwaway key
(``make_key``) and ``token_uri`` pointing here.

Model endpoints require one of the tokens issued here (``revoke`` withdraws them):
401 UNAUTHENTICATED otherwise, and a project or location other than the fake's is
403 PERMISSION_DENIED, both in Google's error shape.

- ``publishers/google/models/{model}:generateContent`` and
  ``:streamGenerateContent?alt=sse`` are served by a ``GeminiFake`` (its checks, its
  answers, its script), handed the request as Gemini's API would receive it; so is
  ``:countTokens``, whose body on Vertex is the prompt's fields themselves (contents,
  systemInstruction, tools; any other is 400), handed on as Gemini's
  ``generateContentRequest``.
- ``publishers/anthropic/models/{model}:rawPredict`` and ``:streamRawPredict`` need
  ``anthropic_version: vertex-2023-10-16`` and no ``model`` in the body (400
  invalid_request_error otherwise), ``stream: true`` exactly on streamRawPredict, and
  no image given by URL (Vertex refuses ``"source": {"type": "url"}`` with "URL sources
  are not supported"); then an ``AnthropicFake`` answers, the model moved into the body.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import exceptions, jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .anthropic_fake import AnthropicFake
from .anthropic_fake import error as anthropic_error
from .gemini_fake import GeminiFake, google_error

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
AUDIENCE = "https://oauth2.googleapis.com/token"  # whatever the file's token_uri says
VERSION = "vertex-2023-10-16"
COUNTED_FIELDS = {"contents", "systemInstruction", "tools", "generationConfig"}


def make_key() -> rsa.RSAPrivateKey:
    """A throwaway RSA key for a service account."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_service_account(directory: Path, token_uri: str, key: rsa.RSAPrivateKey,
                         email: str = "aigw-test@fake-project.iam.gserviceaccount.com"
                         ) -> tuple[Path, bytes]:
    """A service-account JSON file for ``key``; returns the file and the public key (PEM)
    that verifies its assertions."""
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    path = directory / "service-account.json"
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "fake-project",
        "private_key_id": "fakekeyid0123456789", "private_key": private,
        "client_email": email, "client_id": "123456789012345678901",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth", "token_uri": token_uri,
    }))
    return path, public


class _Forward(Response):
    """Hands the request, re-addressed and re-bodied, to another fake's ASGI app."""

    def __init__(self, app: ASGIApp, path: str, query: str, headers: dict[str, str],
                 body: bytes) -> None:
        self.app, self.path, self.query, self.body_bytes = app, path, query, body
        self.forward_headers = [(name.encode(), value.encode()) for name, value in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inner = {key: scope[key] for key in ("type", "asgi", "http_version", "method", "scheme",
                                             "server", "client") if key in scope}
        inner.update(path=self.path, raw_path=self.path.encode(), root_path="",
                     query_string=self.query.encode(), headers=self.forward_headers)
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if delivered:
                return dict(await receive())
            delivered = True
            return {"type": "http.request", "body": self.body_bytes, "more_body": False}

        await self.app(inner, replay, send)


class VertexFake:
    """Token endpoint and model endpoints of one project and location."""

    def __init__(self, public_key: bytes = b"", project: str = "fake-project",
                 location: str = "us-east5") -> None:
        self.public_key = public_key
        self.project = project
        self.location = location
        self.base_url = ""
        self.token_lifetime_s = 3600
        self.token_requests = 0
        self.tokens: set[str] = set()
        self.refuse_grants = False
        self.gemini = GeminiFake()
        self.anthropic = AnthropicFake()
        self.paths: list[str] = []
        self.requests: list[dict[str, Any]] = []  # bodies as they reached Vertex
        self.authorizations: list[str] = []
        self.app = Starlette(routes=[
            Route("/__ready", self._ready),
            Route("/token", self._token, methods=["POST"]),
            Route("/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/"
                  "{target}", self._model, methods=["POST"]),
        ])

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    def revoke(self) -> None:
        self.tokens.clear()

    async def _ready(self, request: Request) -> Response:
        return Response("ok")

    async def _token(self, request: Request) -> Response:
        self.token_requests += 1
        form = parse_qs((await request.body()).decode())
        if form.get("grant_type") != [GRANT] or len(form.get("assertion", [])) != 1:
            return JSONResponse({"error": "unsupported_grant_type",
                                 "error_description": "Invalid grant_type"}, 400)
        try:
            claims = jwt.decode(form["assertion"][0], certs=self.public_key, audience=AUDIENCE)
        except (exceptions.GoogleAuthError, ValueError):
            return JSONResponse({"error": "invalid_grant",
                                 "error_description": "Invalid JWT Signature."}, 400)
        if self.refuse_grants or SCOPE not in str(claims.get("scope", "")).split():
            return JSONResponse({"error": "invalid_grant", "error_description":
                                 "Invalid grant: account not found"}, 400)
        token = f"ya29.fake-token-{self.token_requests}-{int(time.time())}"
        self.tokens.add(token)
        return JSONResponse({"access_token": token, "expires_in": self.token_lifetime_s,
                             "token_type": "Bearer"})

    async def _model(self, request: Request) -> Response:
        params = request.path_params
        authorization = request.headers.get("authorization", "")
        self.authorizations.append(authorization)
        if authorization.removeprefix("Bearer ") not in self.tokens:
            return google_error(401, "Request had invalid authentication credentials. Expected "
                                "OAuth 2 access token, login cookie or other valid "
                                "authentication credential.")
        if (params["project"], params["location"]) != (self.project, self.location):
            return google_error(403, f"Permission 'aiplatform.endpoints.predict' denied on "
                                f"resource 'projects/{params['project']}/locations/"
                                f"{params['location']}' (or it may not exist).")
        self.paths.append(request.url.path + (f"?{request.url.query}" if request.url.query
                                              else ""))
        model, _, method = str(params["target"]).rpartition(":")
        body = await request.body()
        try:
            self.requests.append(json.loads(body))
        except ValueError:
            self.requests.append({"_": body.decode(errors="replace")})
        if params["publisher"] == "google" and method == "countTokens":
            flat = json.loads(body)
            if not isinstance(flat, dict) or not set(flat) <= COUNTED_FIELDS:
                return google_error(400, "Invalid JSON payload received. Unknown name in "
                                    f"CountTokensRequest: {sorted(set(flat) - COUNTED_FIELDS)}")
            body = json.dumps({"generateContentRequest": {
                "model": f"models/{model}", **flat}}).encode()
        if params["publisher"] == "google":
            return _Forward(self.gemini.app, f"/v1beta/models/{model}:{method}",
                            request.url.query, {"content-type": "application/json",
                                                "x-goog-api-key": self.gemini.api_key}, body)
        if params["publisher"] == "anthropic":
            return self._claude(model, method, body)
        return google_error(404, f"Publisher Model `{params['publisher']}/{model}` not found.")

    def _claude(self, model: str, method: str, raw: bytes) -> Response:
        if method not in ("rawPredict", "streamRawPredict"):
            return google_error(404, f"Method not found: {method}")
        try:
            body = json.loads(raw)
        except ValueError:
            return anthropic_error(400, "There was an error parsing the body of your request")
        if not isinstance(body, dict) or body.get("anthropic_version") != VERSION:
            return anthropic_error(400, f"anthropic_version: Input should be '{VERSION}'")
        if "model" in body:
            return anthropic_error(400, "model: Extra inputs are not permitted")
        if bool(body.get("stream")) != (method == "streamRawPredict"):
            return anthropic_error(400, "stream: must be true exactly on streamRawPredict")
        for index, message in enumerate(body.get("messages") or []):
            content = message.get("content") if isinstance(message, dict) else None
            for number, block in enumerate(content if isinstance(content, list) else []):
                if isinstance(block, dict) and (block.get("source") or {}).get("type") == "url":
                    return anthropic_error(400, f"messages.{index}.content.{number}.image.source"
                                           ".base64.data: URL sources are not supported")
        body = {name: value for name, value in body.items() if name != "anthropic_version"}
        headers = {"content-type": "application/json", "x-api-key": self.anthropic.api_key,
                   "anthropic-version": "2023-06-01"}
        return _Forward(self.anthropic.app, "/v1/messages", "", headers,
                        json.dumps({**body, "model": model}).encode())
