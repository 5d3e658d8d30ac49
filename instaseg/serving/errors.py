"""Errors that become an HTTP status and a JSON body `{"error": {"status", "kind", "message"}}`.

`kind` is a short stable identifier clients can branch on (and the `kind` label of `instaseg_errors_total`);
`message` says in words what was wrong and with which input.
"""

from __future__ import annotations

__all__ = [
    "BadInput",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServiceError",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMedia",
]


class ServiceError(ValueError):
    """A request the service answers with `status` (a 4xx or 5xx code) and a JSON error body."""

    status = 500
    default_kind = "internal"

    def __init__(self, message: str, kind: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind or self.default_kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"status": self.status, "kind": self.kind, "message": self.message}}


class BadInput(ServiceError):
    status = 400
    default_kind = "bad_request"


class Unauthorized(ServiceError):
    status = 401
    default_kind = "unauthorized"

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message, kind, {"WWW-Authenticate": "Bearer"})


class NotFound(ServiceError):
    status = 404
    default_kind = "not_found"


class PayloadTooLarge(ServiceError):
    status = 413
    default_kind = "payload_too_large"


class UnsupportedMedia(ServiceError):
    status = 415
    default_kind = "unsupported_media_type"


class RateLimited(ServiceError):
    status = 429
    default_kind = "rate_limited"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message, None, {"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


class Unavailable(ServiceError):
    """503: the model is not loaded, overloaded, too slow for the request's timeout, or failed on it."""

    status = 503
    default_kind = "unavailable"
