"""Errors as typed exceptions: one class per HTTP status brain answers, each carrying the server's `code`."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BadRequest",
    "BrainError",
    "Conflict",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "Unauthorized",
    "Unprocessable",
    "error_for",
]


class BrainError(Exception):
    """An error answer from brain: its HTTP status, its machine-readable `code` and its message."""

    status: int = 0

    def __init__(self, status: int, code: str, message: str, body: Any = None, retry_after: float | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body
        self.retry_after = retry_after


class BadRequest(BrainError):
    """400: the request is malformed; the message names the field (code VALIDATION_ERROR, ...)."""


class Unauthorized(BrainError):
    """401: no valid token, session or API key."""


class Forbidden(BrainError):
    """403: authenticated, but not allowed (a reserved event type, an untrusted origin, a missing scope)."""


class NotFound(BrainError):
    """404: no such thing of the caller's."""


class Conflict(BrainError):
    """409: the thing is not in a state that allows this."""


class PayloadTooLarge(BrainError):
    """413: body, batch or event too large."""


class Unprocessable(BrainError):
    """422: e.g. IDEMPOTENCY_KEY_REUSED, USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL."""


class RateLimited(BrainError):
    """429: too many requests; `retry_after` says how many seconds to wait."""


class ServiceUnavailable(BrainError):
    """503: not ready (keys not loaded, a store restarting); `retry_after` says when to try again."""


class ServerError(BrainError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[BrainError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge,
    422: Unprocessable, 429: RateLimited, 503: ServiceUnavailable,
}


def error_for(status: int, body: Any, retry_after: float | None) -> BrainError:
    """The typed exception for an error answer (status, parsed JSON body or text)."""
    code, message = "HTTP_ERROR", str(body)[:500] if body else f"HTTP {status}"
    if isinstance(body, dict):
        code = str(body.get("code") or code)
        message = str(body.get("message") or message)
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else BrainError)
    return kind(status, code, message, body, retry_after)
