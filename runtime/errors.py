"""The one exception tree of the runtime, and its OpenAI-shaped rendering.

    GatewayError                    status, OpenAI error type and code
    ├── BadRequest                  400 invalid_request_error
    │   ├── GuardrailBlocked            400 guardrail_blocked (an input guardrail; no call made)
    │   │   └── OutputWithheld              an output guardrail blocked a whole answer (billed)
    │   ├── PreviousResponseNotFound    400 previous_response_not_found (none kept for this key)
    │   └── SessionExpired              400 session_expired (a Realtime session's maximum length)
    ├── Unauthorized                401 invalid_api_key
    │   ├── KeyExpired                  401 key_expired (past the key's expires)
    │   └── TokenRefused                401 invalid_token (a JWT of issuers: that does not verify)
    ├── Forbidden                   403 permission_denied
    ├── ModelNotFound, NotFound     404
    │   └── McpSessionUnknown           404 mcp_session_not_found (not this key's session)
    ├── MethodNotAllowed            405
    ├── RequestTimeout              408 request_timeout (the body took too long to arrive)
    ├── PayloadTooLarge             413 request_too_large
    ├── ContextWindowExceeded       422 context_length_exceeded (no upstream call made)
    ├── RateLimited                 429 rate_limit_exceeded (with Retry-After)
    │   └── BudgetExceeded          429 insufficient_quota (a budget has no room left)
    ├── InternalError               500
    ├── StatusError                 any status with no error of its own (Starlette's own
    │                               HTTPException): its code the status's phrase
    ├── NotImplementedRoute         501 not_implemented
    ├── Conflict                    409 conflict (e.g. resuming an execution that is not paused)
    ├── PipelineFailed              502 pipeline_failed (an execution ended without an output)
    ├── PipelineTimeout             504 pipeline_timeout (not done within the route's deadline)
    ├── NoDeploymentAvailable       503 no_deployment_available
    ├── StoreUnavailable            503 store_unavailable (limits/budgets/ledger store down)
    ├── PassthroughUnavailable      503 passthrough_unavailable (its provider is disabled)
    ├── IdentityProviderUnavailable 503 identity_provider_unavailable (no JWKS fetched yet)
    ├── McpServerFailed             502 mcp_server_failed (an MCP server unreachable or failing)
    │   ├── McpServerTimeout            504 mcp_server_timeout
    │   ├── McpServerDisabled           503 mcp_server_disabled (its ${ENV} is not set)
    │   └── McpServerBusy               503 mcp_server_busy (its max_sessions)
    ├── ShutDown                    503 shutdown (cut by a shutdown; recorded, never sent)
    ├── Cancelled                   499 cancelled (its caller stopped waiting; recorded only)
    └── UpstreamError               502 a provider failed; ``retryable``: may another try work?
        ├── UpstreamRateLimited         429, retryable, honours the provider's Retry-After
        │   └── DeploymentAtQuota           a deployment's own rpm/tpm: no call went out
        ├── UpstreamOverloaded          503, retryable
        ├── UpstreamServerError         502, retryable
        ├── UpstreamTimeout             504, retryable
        ├── UpstreamConnectionError     502, retryable
        ├── UpstreamContextLength       400 context_length_exceeded
        ├── UpstreamContentPolicy       400 content_policy_violation
        ├── UpstreamBadRequest          400 the provider refused the request
        ├── UpstreamAuthError           502 the provider refused the gateway's credentials
        └── UpstreamUnusable            502 no credit or quota left, or no such model

An error that the same request would meet again however often it is sent (``final``:
refused credentials, an unusable deployment, an answer past its size cap; and a 429
that waiting cannot help, see ``store.values.Denied``) carries ``x-should-retry:
false``, which the official SDKs read before retrying a 429 or 5xx.

Errors from libraries (pydantic, httpx, redis, sqlite3, providers) are translated into
this tree at the boundary with ``raise ... from exc``; nothing else reaches a client,
and no message carries a provider key.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Mapping
from http import HTTPStatus
from types import MappingProxyType
from typing import ClassVar, TypeVar

_T = TypeVar("_T")


class GatewayError(Exception):
    """Base of every error a client can see."""

    # Set by each class; per instance only by StatusError (a status met at run time).
    status: int = 500
    error_type: str = "server_error"
    code: str | None = "internal_error"
    # True where the same request would fail the same way however often it is sent: the
    # official SDKs retry a 5xx (twice, by default) unless told not to.
    final: ClassVar[bool] = False
    # The key refused by name (an expired one, an old secret past its rotation's
    # ``until``, a key not admin on the admin API): the access log says whose client
    # sent it.
    key_name: str | None = None
    team_name: str | None = None

    def __init__(
        self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        if self.final:
            self.headers = {**self.headers, **NO_RETRY}

    def body(self) -> dict[str, object]:
        """The OpenAI error object: {"error": {"message", "type", "param", "code"}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.shown_code,
            }
        }

    @property
    def shown_code(self) -> str | None:
        """The ``code`` the client is shown (``code`` is the gateway's, for its logs)."""
        return self.code


class BadRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class GuardrailBlocked(BadRequest):
    """An input guardrail refused the request: no call went out. The message names the
    guardrail, never what it matched."""

    code = "guardrail_blocked"

    def __init__(self, guardrail: str) -> None:
        super().__init__(f"The request was blocked by guardrail '{guardrail}'.")


class OutputWithheld(GuardrailBlocked):
    """An output guardrail blocked an answer that has no choices to withhold one of (a
    transcript): the call was made and is billed, and nothing of its answer is sent."""

    def __init__(self, guardrail: str) -> None:
        BadRequest.__init__(self, f"The answer was withheld by guardrail '{guardrail}'.")


class SessionExpired(BadRequest):
    """A Realtime session reached its maximum length (``realtime_max_session_s``): closed,
    as OpenAI closes one past its own cap, with this code."""

    code = "session_expired"


class Unauthorized(GatewayError):
    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class KeyExpired(Unauthorized):
    code = "key_expired"


class TokenRefused(Unauthorized):
    """A JWT that names an issuer of the config's, or looks like one, and does not verify:
    expired, for another audience, signed with a key or algorithm the issuer does not
    use. The message says which, never the token."""

    code = "invalid_token"


class Forbidden(GatewayError):
    status = 403
    error_type = "permission_denied"
    code = "permission_denied"


class ModelNotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class PreviousResponseNotFound(BadRequest):
    """A ``previous_response_id`` the gateway does not keep for this key: never kept
    (``store: false``, or ``why``: too large), expired, deleted, or another key's.
    OpenAI's status and code."""

    code = "previous_response_not_found"

    def __init__(self, response_id: str, why: str | None = None) -> None:
        super().__init__(f"Previous response with id {quoted(response_id)} not found."
                         + (f" {why}" if why else ""), param="previous_response_id")


class NotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class McpSessionUnknown(NotFound):
    """An ``Mcp-Session-Id`` that is not one this key was given for this MCP server (the
    spec's answer to a session that ended: a client starts a new one)."""

    code = "mcp_session_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    status = 408
    error_type = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(GatewayError):
    status = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class ContextWindowExceeded(GatewayError):
    status = 422
    error_type = "invalid_request_error"
    code = "context_length_exceeded"


class RateLimited(GatewayError):
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(RateLimited):
    """A key's, team's or user's budget for the period has no room for this request."""

    error_type = "insufficient_quota"
    code = "insufficient_quota"


class InternalError(GatewayError):
    status = 500


class StatusError(GatewayError):
    """An HTTP status with no error of its own (a Starlette ``HTTPException``: a
    handler's, or its own): a 4xx is the client's (``invalid_request_error``), a 5xx the
    gateway's (``server_error``); its code is the status's phrase.

    >>> StatusError(413, "Too large").code
    'request_entity_too_large'
    """

    def __init__(self, status: int, message: str, *,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers=headers)
        self.status = status
        self.error_type = "invalid_request_error" if status < 500 else "server_error"
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:  # a status Python has no name for
            phrase = "client error" if status < 500 else "server error"
        self.code = phrase.lower().replace(" ", "_").replace("-", "_")


class Cancelled(GatewayError):
    """The caller stopped waiting (an execution stopped mid-call): recorded as 499, as
    web servers log a request whose client went away; never sent to a client."""

    status = 499
    error_type = "api_error"
    code = "cancelled"


class ShutDown(GatewayError):
    """The gateway's shutdown cut the request (past its graceful timeout): recorded as
    503, the server's doing, not its client's; never sent (the connection is closing)."""

    status = 503
    error_type = "api_error"
    code = "shutdown"


class NotImplementedRoute(GatewayError):
    status = 501
    error_type = "invalid_request_error"
    code = "not_implemented"


class Conflict(GatewayError):
    status = 409
    error_type = "invalid_request_error"
    code = "conflict"


class PipelineFailed(GatewayError):
    status = 502
    error_type = "server_error"
    code = "pipeline_failed"


class PipelineTimeout(GatewayError):
    status = 504
    error_type = "server_error"
    code = "pipeline_timeout"


class NoDeploymentAvailable(GatewayError):
    status = 503
    error_type = "api_error"
    code = "no_deployment_available"


class StoreUnavailable(GatewayError):
    """The limits, budgets and spend store cannot answer (Redis down with fail_closed, disk)."""

    status = 503
    error_type = "api_error"
    code = "store_unavailable"


class PassthroughUnavailable(GatewayError):
    """A pass-through whose provider cannot be called (its ${ENV} key is not set)."""

    status = 503
    error_type = "api_error"
    code = "passthrough_unavailable"


class IdentityProviderUnavailable(GatewayError):
    """A token's issuer publishes its keys at a jwks_url the gateway has not fetched them
    from yet, and cannot now (once fetched, keys are used while the provider is down)."""

    status = 503
    error_type = "api_error"
    code = "identity_provider_unavailable"


class McpServerFailed(GatewayError):
    """An MCP server behind /mcp/<name> could not be reached, or failed (never a refusal of
    the client's own: those pass on as the server gave them)."""

    status = 502
    error_type = "api_error"
    code = "mcp_server_failed"


class McpServerTimeout(McpServerFailed):
    status = 504
    code = "mcp_server_timeout"


class McpServerDisabled(McpServerFailed):
    status = 503
    code = "mcp_server_disabled"


class McpServerBusy(McpServerFailed):
    """A stdio or HTTP+SSE MCP server already has its max_sessions sessions."""

    status = 503
    code = "mcp_server_busy"


# What the official OpenAI and Anthropic SDKs read before retrying (an error a retry
# cannot fix); they retry 429s and 5xx otherwise.
NO_RETRY = MappingProxyType({"x-should-retry": "false"})


def quoted(value: object, most: int = 64) -> str:
    """A client's ``value`` as an error message shows it: quoted (a string; another JSON
    value as Python writes it), and cut to ``most`` characters with its length said (a
    query value can be kilobytes, and a message that repeats it whole is as large).

    >>> quoted("asc"), quoted("x" * 100, 4), quoted(7), quoted([1] * 50, 6)
    ("'asc'", "'xxxx'... (100 characters)", '7', '[1, 1,... (150 characters)')
    """
    if not isinstance(value, str):
        written = repr(value)
        if len(written) <= most:
            return written
        return f"{written[:most]}... ({len(written)} characters)"
    if len(value) <= most:
        return repr(value)
    return f"{value[:most]!r}... ({len(value)} characters)"


def retry_after_headers(seconds: float) -> dict[str, str]:
    """``Retry-After`` and ``retry-after-ms``, rounded up: a client that waits what it is
    told does not come back early."""
    return {"retry-after": str(max(1, math.ceil(seconds))),
            "retry-after-ms": str(max(1, math.ceil(seconds * 1000)))}


async def params_renamed(params: Mapping[str, str], answer: Awaitable[_T]) -> _T:
    """``answer`` awaited, an error it raises naming the parameter as the client's API
    names it: an endpoint that lowers its request to chat's (/v1/completions,
    /v1/responses) renames chat's ``messages``, ``max_completion_tokens``... through
    ``params``. Only errors raised before any answer went out pass here."""
    try:
        return await answer
    except GatewayError as exc:
        exc.param = params.get(exc.param or "", exc.param)
        raise


class UpstreamError(GatewayError):
    """A provider failed. ``retryable`` says whether another attempt may succeed."""

    status = 502
    error_type = "api_error"
    code = "upstream_error"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        retry_after: float | None = None,
        upstream_status: int | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        upstream_code: str | None = None,
        upstream_request_id: str | None = None,
    ) -> None:
        headers = dict(headers or {})
        if retry_after:
            headers.update(retry_after_headers(retry_after))
        super().__init__(message, param=param, headers=headers or None)
        self.provider = provider
        self.retry_after = retry_after
        self.upstream_status = upstream_status
        # The provider's id of the call that failed, where it named one (for a ticket).
        self.upstream_request_id = upstream_request_id
        # The provider's own code for a request it refused (OpenAI's "invalid_value"),
        # shown to the client as it came; logs and metrics keep the gateway's ``code``.
        self.upstream_code = upstream_code

    @property
    def shown_code(self) -> str | None:
        return self.upstream_code or self.code


class UpstreamRateLimited(UpstreamError):
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"
    retryable = True


class DeploymentAtQuota(UpstreamRateLimited):
    """A deployment is at its own rpm/tpm quota: it is skipped like one that answered
    429, but no call went out, so it is not an attempt (``max_attempts``)."""


class UpstreamOverloaded(UpstreamError):
    status = 503
    code = "upstream_overloaded"
    retryable = True


class UpstreamServerError(UpstreamError):
    code = "upstream_error"
    retryable = True


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    retryable = True


class UpstreamResponseTooLarge(UpstreamError):
    """A response (or one line of a stream) passed the provider's ``max_response_mb``:
    not retried, as the same request would bring the same answer."""

    code = "upstream_response_too_large"
    final = True


class UpstreamConnectionError(UpstreamError):
    code = "upstream_unreachable"
    retryable = True


class UpstreamContextLength(UpstreamError):
    status = 400
    error_type = "invalid_request_error"
    code = "context_length_exceeded"


class UpstreamContentPolicy(UpstreamError):
    status = 400
    error_type = "invalid_request_error"
    code = "content_policy_violation"


class UpstreamBadRequest(UpstreamError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class UpstreamAuthError(UpstreamError):
    code = "upstream_auth_failed"
    final = True


class UpstreamUnusable(UpstreamError):
    """The provider will not serve this deployment until someone acts: its account is
    out of credit or quota, or it has no such model (retired, misspelt). Not retried;
    the next member of a group stands in, as for a refused key."""

    code = "upstream_unusable"
    final = True
