"""OAuth bearer tokens for Vertex AI, from a service-account file or Google's default credentials.

The file must hold a service account (``"type": "service_account"``): the file names
which account signs in, never what kind of credential to trust.

``GoogleTokens`` holds one provider's credentials: loaded and refreshed off the event
loop (``asyncio.to_thread``), one refresh at a time, the token kept until google-auth
calls it stale (a few minutes before it expires). ``BearerAuth`` is the
``httpx.Auth`` that puts it on every request, and asks once for a new one when the
upstream refuses it (401: revoked or rotated). The token endpoint is called through
httpx, so the extra needs google-auth and nothing more. Only imported when a vertex
provider is configured.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import google.auth
import google.auth.transport
import httpx
from google.auth.credentials import TokenState
from google.auth.exceptions import DefaultCredentialsError, RefreshError, TransportError
from google.oauth2 import service_account

from ..errors import UpstreamAuthError, UpstreamConnectionError

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


class GoogleTokens:
    """Access tokens for one provider: ``credentials_file``, or the default credentials
    (GOOGLE_APPLICATION_CREDENTIALS, gcloud's, the metadata server) when it is None."""

    def __init__(self, provider_name: str, credentials_file: str | None,
                 timeout_s: float) -> None:
        self.provider_name = provider_name
        self.credentials_file = credentials_file
        self.timeout_s = timeout_s
        self._credentials: Any = None  # google.auth Credentials, once loaded
        self._lock = asyncio.Lock()

    async def token(self, refused: str | None = None) -> str:
        """A fresh access token, never ``refused`` (one the upstream turned down)."""
        if self._stale(refused):
            async with self._lock:
                if self._stale(refused):
                    self._credentials = await asyncio.to_thread(self._refresh)
        return str(self._credentials.token)

    def _stale(self, refused: str | None) -> bool:
        credentials = self._credentials
        return (credentials is None or credentials.token_state != TokenState.FRESH
                or (refused is not None and credentials.token == refused))

    def _refresh(self) -> Any:
        name = self.provider_name
        credentials = self._credentials or self._load()
        try:
            credentials.refresh(_HttpxRequest(self.timeout_s))
        except RefreshError as exc:
            raise UpstreamAuthError(f"provider '{name}' was refused an access token: "
                                    f"{_reason(exc)}", provider=name) from exc
        except TransportError as exc:
            raise UpstreamConnectionError(f"provider '{name}' could not reach Google's token "
                                          f"endpoint: {_reason(exc)}", provider=name) from exc
        return credentials

    def _load(self) -> Any:
        try:
            if self.credentials_file is None:
                credentials, _project = google.auth.default(scopes=SCOPES)
                return credentials
            load = service_account.Credentials.from_service_account_file
            return load(self.credentials_file, scopes=SCOPES)  # type: ignore[no-untyped-call]
        except (DefaultCredentialsError, OSError, ValueError) as exc:  # ValueError: not an account
            raise UpstreamAuthError(
                f"provider '{self.provider_name}' could not load its Google credentials: "
                f"{_reason(exc)}", provider=self.provider_name) from exc


class BearerAuth(httpx.Auth):
    """``Authorization: Bearer`` with a token from ``tokens``; one retry with a new token
    when the upstream answers 401."""

    def __init__(self, tokens: GoogleTokens) -> None:
        self.tokens = tokens

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.tokens.token()
        request.headers["authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            token = await self.tokens.token(refused=token)
            request.headers["authorization"] = f"Bearer {token}"
            yield request


class _HttpxRequest(google.auth.transport.Request):
    """google-auth's HTTP seam, over a short-lived synchronous httpx client (it runs in a
    worker thread)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s

    def __call__(self, url: str, method: str = "GET", body: bytes | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float | None = None,
                 **kwargs: Any) -> _Response:
        try:
            with httpx.Client(timeout=timeout or self.timeout_s) as client:
                response = client.request(method, url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise TransportError(  # type: ignore[no-untyped-call]
                f"{type(exc).__name__}: {exc}") from exc
        return _Response(response)


class _Response(google.auth.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


def _reason(exc: Exception) -> str:
    """The first line of google-auth's message (its later arguments can hold whole bodies)."""
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__
