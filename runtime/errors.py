"""The one exception tree of the runtime, and its OpenAI-shaped rendering.

    GatewayError                 status, OpenAI error type and code
    ├── BadRequest               400 invalid_request_error
    ├── Unauthorized             401 invalid_api_key
    ├── Forbidden                403 permission_denied
    ├── ModelNotFound            404 model_not_found
    ├── PayloadTooLarge          413 request_too_large
    ├── ContextWindowExceeded    422 context_length_exceeded
    ├── RateLimited              429 rate_limit_exceeded (with Retry-After)
    ├── NotImplementedRoute      501 not_implemented
    ├── UpstreamError            502 upstream_error        (retryable or not)
    ├── NoDeploymentAvailable    503 no_deployment_available
    └── UpstreamTimeout          504 upstream_timeout

Errors from libraries (pydantic, httpx, providers) are translated into this tree at
the boundary with ``raise ... from exc``; nothing else reaches a client.
"""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    """Base of every error a client can see."""

    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = "internal_error"

    def __init__(
        self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        """The OpenAI error object: {"error": {"message", "type", "param", "code"}}."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class BadRequest(GatewayError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class Unauthorized(GatewayError):
    status = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    error_type = "permission_denied"
    code = "permission_denied"


class ModelNotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class NotFound(GatewayError):
    status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    error_type = "invalid_request_error"
    code = "method_not_allowed"


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


class InternalError(GatewayError):
    status = 500


class NotImplementedRoute(GatewayError):
    status = 501
    error_type = "invalid_request_error"
    code = "not_implemented"


class UpstreamError(GatewayError):
    """The provider failed; ``retryable`` says whether another attempt may succeed."""

    status = 502
    error_type = "api_error"
    code = "upstream_error"

    def __init__(self, message: str, *, retryable: bool = False, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retryable = retryable


class NoDeploymentAvailable(GatewayError):
    status = 503
    error_type = "api_error"
    code = "no_deployment_available"


class UpstreamTimeout(GatewayError):
    status = 504
    error_type = "api_error"
    code = "upstream_timeout"
