"""Typed errors. Each carries the HTTP status and machine-readable code it maps to.

They are mapped to HTTP in one place (`brain.web.failure_response`, run by the auth role's
`error_middleware` and by each API route's guard); code that raises them never builds a
response itself.
"""

from __future__ import annotations

from typing import Any


class BrainError(Exception):
    """Base class for every error brain raises on purpose."""


class ConfigError(BrainError):
    """A setting is missing, unknown or malformed; the message names the key."""


class PluginError(BrainError):
    """A plugin could not be loaded or implements a hook wrongly."""


class HTTPError(BrainError):
    """An error meant for an HTTP client: status, Better Auth-style code and a message."""

    status: int = 400
    code: str = "BAD_REQUEST"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        """The JSON body sent to the client."""
        return {"message": self.message, "code": self.code, **self.extra}


class BadRequest(HTTPError):
    status = 400
    code = "VALIDATION_ERROR"


class Unauthorized(HTTPError):
    status = 401
    code = "UNAUTHORIZED"


class InvalidToken(Unauthorized):
    """A bearer token was refused; always 401 with WWW-Authenticate."""

    code = "INVALID_TOKEN"

    def __init__(self, reason: str) -> None:
        # The reason lands inside a quoted header value: keep it to safe characters.
        safe = "".join(c for c in reason if c.isprintable() and c not in '"\\')[:200]
        super().__init__(
            reason,
            headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{safe}"'},
        )


class Forbidden(HTTPError):
    status = 403
    code = "FORBIDDEN"


class NotFound(HTTPError):
    status = 404
    code = "NOT_FOUND"


class Conflict(HTTPError):
    status = 409
    code = "CONFLICT"


class PayloadTooLarge(HTTPError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"


class Unprocessable(HTTPError):
    status = 422
    code = "UNPROCESSABLE_ENTITY"


class TooManyRequests(HTTPError):
    status = 429
    code = "TOO_MANY_REQUESTS"

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(max(1, int(retry_after + 0.999)))})


class InsufficientStorage(HTTPError):
    """A quota of stored bytes is used up; Retry-After says when trying again may be worth it."""

    status = 507
    code = "INSUFFICIENT_STORAGE"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after + 0.999)))})


class ServiceUnavailable(HTTPError):
    status = 503
    code = "SERVICE_UNAVAILABLE"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, int(retry_after + 0.999)))})


class AddressRefused(BadRequest):
    """A host a user named resolves to an address brain may not connect to (`brain.outbound`)."""

    code = "ADDRESS_REFUSED"

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"host {host} resolves to {reason}")
        self.host = host
        self.reason = reason


# What an operator should do about each kind of StorageFault, for the log, /health and the CLI.
ADVICE = {
    "disk_full": "free space on the data directory's file system or grow it; writes resume by themselves",
    "read_only": "the data directory's file system is read-only (remounted after an error?): stop brain, "
                 "check it (fsck), remount it read-write and start brain again",
    "corrupt": "run `brain check`; a user's store is rebuilt by `brain repair --user ID`; auth.db, mail.db and "
               "webhooks.db come back from a backup (`brain restore`, or with brain stopped the backup's copy of "
               "that one file put in its place)",
    "quarantined": "run `brain repair --user ID` (or set api.auto_repair = true)",
    "busy": "another process holds a lock on the database for longer than its busy timeout (a long `brain` "
            "command?)",
    "no_descriptors": "raise the open-file limit (ulimit -n, systemd LimitNOFILE) or lower api.max_open_stores",
    "io_error": "check the disk (dmesg) and run `brain check`",
}


def explain(fault: StorageFault) -> str:
    """A fault for an operator: its kind, what the database said, and what to do."""
    return f"{fault.kind} ({fault.detail or fault.message}). What to do: {ADVICE.get(fault.kind, ADVICE['io_error'])}"


class StorageFault(HTTPError):
    """The disk under a database failed us (full, read-only, corrupt, busy, out of descriptors).

    Raised typed by whoever meets the fault (`brain.storage.classify` names it once), answered
    as 503 `STORE_UNAVAILABLE` (507 for a full disk) with `reason` saying which fault it is, and
    counted and logged by `brain.storage.StorageFaults`. `retry_after` None: retrying will not
    help until an operator acts.
    """

    status = 503
    code = "STORE_UNAVAILABLE"
    # Which fault (the `reason` in the body, the `kind` label of brain_storage_faults_total).
    kind = "io_error"

    def __init__(self, message: str, *, retry_after: float | None = None, detail: str = "") -> None:
        headers = {} if retry_after is None else {"Retry-After": str(max(1, int(retry_after + 0.999)))}
        super().__init__(message, headers=headers, extra={"reason": self.kind})
        # What the database said (for the log, never for the client: it may name paths).
        self.detail = detail
        # Counted already (brain.storage.StorageFaults.record): not again on its way out.
        self.recorded = False


class DiskFull(StorageFault):
    """No room for the write (or less free space than `server.min_free_bytes` keeps in reserve)."""

    status = 507
    code = "INSUFFICIENT_STORAGE"
    kind = "disk_full"


class ReadOnlyStorage(StorageFault):
    """The file system holding the data is read-only: reads work, writes cannot."""

    kind = "read_only"


class StoreCorrupt(StorageFault):
    """A database failed its integrity check or SQLite found it malformed."""

    kind = "corrupt"


class StoreQuarantined(StorageFault):
    """A user's store was found damaged and moved aside; it answers again once repaired."""

    kind = "quarantined"


class StoreBusy(StorageFault):
    """The database stayed locked longer than its busy timeout."""

    kind = "busy"


class NoFileDescriptors(StorageFault):
    """The process is out of file descriptors (`ulimit -n`): no database can be opened now."""

    kind = "no_descriptors"


class StorageIOError(StorageFault):
    """Any other I/O error from the disk."""

    kind = "io_error"
