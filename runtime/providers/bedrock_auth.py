"""AWS Signature Version 4 for Bedrock requests, with credentials from the standard AWS chain.

``SigV4`` is an ``httpx.Auth``: it signs each request as it leaves, so every call the
adapter makes through its client is signed without the adapter knowing how. The
credentials are botocore's chain (environment, shared files and profiles, SSO,
container and instance roles), resolved once, off the event loop, on the first
request; refreshable ones (roles) refresh off the loop too. Needs botocore: this
module is only imported when a bedrock provider is configured.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import BotoCoreError
from botocore.session import Session

from ..errors import UpstreamAuthError

SERVICE = "bedrock"  # the signing name of bedrock-runtime


class AwsCredentials:
    """The AWS credential chain of one provider, resolved on first use and kept."""

    def __init__(self, provider_name: str) -> None:
        self.provider_name = provider_name
        self._credentials: Any = None  # botocore Credentials, once resolved
        self._last: Any = None  # the frozen triple last signed with
        self._lock = asyncio.Lock()

    async def frozen(self) -> Any:
        """A consistent (access key, secret key, token) triple to sign one request with."""
        if self._credentials is None:
            async with self._lock:
                if self._credentials is None:
                    self._credentials = await asyncio.to_thread(self._resolve)
        credentials = self._credentials
        if isinstance(credentials, RefreshableCredentials) and credentials.refresh_needed():
            self._last = await asyncio.to_thread(self._freeze, credentials)
        else:
            self._last = self._freeze(credentials)
        return self._last

    def secrets(self) -> tuple[str, ...]:
        """What must never appear in a message: the key id, the secret and the token."""
        last = self._last
        if last is None:
            return ()
        return tuple(str(s) for s in (last.access_key, last.secret_key, last.token) if s)

    def _resolve(self) -> Any:
        try:
            credentials = Session().get_credentials()
        except BotoCoreError as exc:
            raise UpstreamAuthError(
                f"provider '{self.provider_name}' could not load AWS credentials: "
                f"{type(exc).__name__}", provider=self.provider_name) from exc
        if credentials is None:
            raise UpstreamAuthError(
                f"provider '{self.provider_name}' found no AWS credentials: set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or a role",
                provider=self.provider_name)
        return credentials

    def _freeze(self, credentials: Any) -> Any:
        try:
            return credentials.get_frozen_credentials()
        except BotoCoreError as exc:
            raise UpstreamAuthError(
                f"provider '{self.provider_name}' could not refresh its AWS credentials: "
                f"{type(exc).__name__}", provider=self.provider_name) from exc


class SigV4(httpx.Auth):
    """Signs each request for Bedrock in ``region``: Authorization, X-Amz-Date and, with
    temporary credentials, X-Amz-Security-Token.

    Only ``content-type`` and ``host`` are signed besides the date and token: headers a
    transport may add or rewrite later (user-agent, content-length) stay out of it.
    """

    requires_request_body = True

    def __init__(self, credentials: AwsCredentials, region: str) -> None:
        self.credentials = credentials
        self.region = region

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        frozen = await self.credentials.frozen()
        signed = AWSRequest(
            method=request.method,
            url=str(request.url),
            data=request.content,
            headers={"content-type": request.headers.get("content-type", "application/json")},
        )
        SigV4Auth(frozen, SERVICE, self.region).add_auth(signed)
        for name, value in signed.headers.items():
            request.headers[name] = value
        yield request
