"""API keys on the auth side: issuing, rendering and finding them (Better Auth's apiKey plugin).

A key is `prefix` + 64 random letters (Better Auth's generator); only its SHA-256 is stored
(`brain.apikeys.hash_key`), with `start` (the prefix and the next four characters) to tell keys
apart in a list. brain sets no usage quota or per-key rate limit (Better Auth's `remaining`,
`refill*`, `rateLimit*`: answered as null/false, and refused as input like Better Auth refuses
them from a client); it adds `permissions` as client input, limited to brain's scopes.

The `*_tx` functions run inside the AuthIssuer's transaction (`ctx.issuer("write", fn=fn, ...)`).
"""

from __future__ import annotations

import json
import math
import re
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from brain.apikeys import CONTROL_AUDIENCE, SCOPES, KeyRecord, hash_key, permissions_of, scopes_of
from brain.auth.db import ApiKey, Session, User, iso
from brain.auth.validation import require_object, text_field, validation_error
from brain.auth.settings import AuthSettings
from brain.control_chars import has_control
from brain.errors import BadRequest, Unauthorized
from brain.ids import new_id

KEY_LENGTH = 64
_START_EXTRA = 4
PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+")
MAX_PREFIX = 32
MAX_NAME = 32
MAX_METADATA_BYTES = 4096
# Client input Better Auth accepts only from server code: refused here as there.
_SERVER_ONLY = ("refillAmount", "refillInterval", "rateLimitMax", "rateLimitTimeWindow", "rateLimitEnabled", "remaining")
SORTABLE = {"createdAt": ApiKey.created_at, "updatedAt": ApiKey.updated_at, "name": ApiKey.name,
            "expiresAt": ApiKey.expires_at}
# How long a signed revocation message is good for (it is signed when published).
CONTROL_TTL_S = 600


def new_key(prefix: str) -> str:
    """A fresh key: prefix + 64 random letters (Better Auth's defaultKeyGenerator)."""
    return prefix + "".join(secrets.choice(string.ascii_letters) for _ in range(KEY_LENGTH))


def start_of(key: str, prefix: str) -> str:
    """What a listing shows of a key: its prefix and the next few characters."""
    return key[: len(prefix) + _START_EXTRA]


def render(row: ApiKey, *, key: str | None = None) -> dict[str, Any]:
    """Better Auth's key object (with the key itself only when it was just created)."""
    body: dict[str, Any] = {
        "id": row.id,
        "configId": "default",
        "name": row.name,
        "start": row.start,
        "prefix": row.prefix,
        "referenceId": row.user_id,  # type: ignore[attr-defined]
        "enabled": bool(row.enabled),
        "expiresAt": iso(row.expires_at) if row.expires_at is not None else None,
        "createdAt": iso(row.created_at),
        "updatedAt": iso(row.updated_at),
        "lastRequest": None,
        "lastRefillAt": None,
        "remaining": None,
        "refillAmount": None,
        "refillInterval": None,
        "rateLimitEnabled": False,
        "rateLimitTimeWindow": None,
        "rateLimitMax": None,
        "requestCount": 0,
        "metadata": json.loads(row.metadata) if row.metadata else None,
        "permissions": json.loads(row.permissions) if row.permissions else None,
    }
    if key is not None:
        body["key"] = key
    return body


def record(row: ApiKey, user: User) -> KeyRecord:
    """What the API role needs to know about a key."""
    try:
        scopes = scopes_of(json.loads(row.permissions)) if row.permissions else frozenset()
    except ValueError:
        scopes = frozenset()
    return KeyRecord(id=row.id, user_id=user.id, scopes=scopes, enabled=bool(row.enabled),
                     expires_at_ms=row.expires_at, email=user.email, name=user.name)


def find_row(key: str) -> tuple[ApiKey, User] | None:
    """The stored key (and its user) for a presented key."""
    row = ApiKey.select(ApiKey, User).join(User).where(ApiKey.key_hash == hash_key(key)).first()
    return None if row is None else (row, row.user)


class LocalDirectory:
    """The API role's directory when the auth role runs in the same process: auth.db itself."""

    async def find(self, key: str) -> KeyRecord | None:
        """The key's record (one indexed read of auth.db), or None."""
        found = find_row(key)
        return None if found is None else record(*found)


def control_signer(sign: Callable[[dict[str, Any]], str], issuer: str) -> Callable[[dict[str, Any]], str]:
    """Signs revocation messages as short-lived JWTs for the control audience (never an access token)."""

    def signed(claims: dict[str, Any]) -> str:
        now = int(time.time())
        return sign({**claims, "iss": issuer, "aud": CONTROL_AUDIENCE, "iat": now, "exp": now + CONTROL_TTL_S})

    return signed


# --- request bodies -------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyChanges:
    """What a create or update body sets (None: not given)."""

    name: str | None = None
    prefix: str | None = None
    enabled: bool | None = None
    # Seconds from now; 0 means "no expiry" (null in the body).
    expires_in: float | None = None
    metadata: str | None = None
    permissions: str | None = None


def _number(body: dict[str, Any], field: str) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise validation_error(field, "Invalid input: expected number")
    return float(value)


def parse_changes(body: Any, settings: AuthSettings, *, creating: bool) -> tuple[KeyChanges, dict[str, Any]]:
    """Check a create/update body the way Better Auth does; (the changes, the body)."""
    body = require_object(body)
    for field in _SERVER_ONLY:
        # Better Auth lets a client send `remaining: null` (its default) but nothing else here.
        if field in body and not (field == "remaining" and body[field] is None):
            raise BadRequest("The property you're trying to set can only be set from the server auth instance only.",
                             code="SERVER_ONLY_PROPERTY")
    name = text_field(body, "name", required=False)
    if name:
        if len(name) > MAX_NAME:
            raise BadRequest("The name length is either too large or too small.", code="INVALID_NAME_LENGTH")
        if has_control(name):
            raise validation_error("name", "must not contain control characters")
    prefix = text_field(body, "prefix", required=False) if creating else None
    if prefix is not None:
        if not PREFIX_RE.fullmatch(prefix):
            raise validation_error("prefix", "Invalid prefix format, must be alphanumeric and contain only underscores "
                                             "and hyphens.")
        if len(prefix) > MAX_PREFIX:
            raise BadRequest("The prefix length is either too large or too small.", code="INVALID_PREFIX_LENGTH")
    # A new key is always enabled (Better Auth's create has no such field).
    enabled = None if creating else body.get("enabled")
    if enabled is not None and not isinstance(enabled, bool):
        raise validation_error("enabled", "Invalid input: expected boolean")
    expires_in = _number(body, "expiresIn")
    if expires_in is not None:
        if expires_in < 1:
            raise validation_error("expiresIn", "Too small: expected number to be >=1")
        days = expires_in / 86400
        if days < settings.api_key_min_expires_days:
            raise BadRequest("The expiresIn is smaller than the predefined minimum value.", code="EXPIRES_IN_IS_TOO_SMALL")
        if days > settings.api_key_max_expires_days:
            raise BadRequest("The expiresIn is larger than the predefined maximum value.", code="EXPIRES_IN_IS_TOO_LARGE")
    elif not creating and "expiresIn" in body:
        expires_in = 0.0  # null: the key no longer expires
    metadata = None
    if body.get("metadata") is not None:
        if not isinstance(body["metadata"], dict):
            raise BadRequest("metadata must be an object or undefined", code="INVALID_METADATA_TYPE")
        metadata = json.dumps(body["metadata"], separators=(",", ":"), ensure_ascii=False)
        if len(metadata.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
            raise validation_error("metadata", f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    permissions = None
    if "permissions" in body:
        raw = body["permissions"]
        try:
            # Absent or null: every scope (the default a key is created with).
            scopes = SCOPES if raw is None else scopes_of(raw)
        except ValueError as exc:
            raise validation_error("permissions", str(exc)) from None
        permissions = json.dumps(permissions_of(scopes), separators=(",", ":"))
    return KeyChanges(name, prefix, enabled, expires_in, metadata, permissions), body


def check_owner(body: dict[str, Any], user_id: str) -> None:
    """A `userId` in a client's body is Better Auth's server-only field: refused unless it is the caller."""
    if "userId" in body and body["userId"] != user_id:
        raise Unauthorized("Unauthorized or invalid session", code="UNAUTHORIZED_SESSION")


# --- changes to auth.db (inside the issuer's transaction) ------------------------------------------


def create_tx(*, now: int, new_session: Callable[..., Session], user_id: str, key_hash: str, prefix: str, start: str,
              changes: KeyChanges, limit: int) -> ApiKey | None:
    """Store a new key; None when the user already has `limit` keys."""
    if ApiKey.select().where(ApiKey.user == user_id).count() >= limit:
        return None
    expires = now + int(changes.expires_in * 1000) if changes.expires_in else None
    return ApiKey.create(
        id=new_id(), user=user_id, key_hash=key_hash, name=changes.name, prefix=prefix, start=start, enabled=True,
        permissions=changes.permissions or json.dumps(permissions_of(SCOPES), separators=(",", ":")),
        metadata=changes.metadata, expires_at=expires, created_at=now, updated_at=now,
    )


def update_tx(*, now: int, new_session: Callable[..., Session], user_id: str, key_id: str,
              changes: KeyChanges) -> ApiKey | None:
    """Apply changes to one of the user's keys; None if the user has no such key."""
    row = ApiKey.get_or_none((ApiKey.id == key_id) & (ApiKey.user == user_id))
    if row is None:
        return None
    fields: dict[str, Any] = {"updated_at": now}
    if changes.name is not None:
        fields["name"] = changes.name
    if changes.enabled is not None:
        fields["enabled"] = changes.enabled
    if changes.expires_in is not None:
        fields["expires_at"] = now + int(changes.expires_in * 1000) if changes.expires_in else None
    if changes.metadata is not None:
        fields["metadata"] = changes.metadata
    if changes.permissions is not None:
        fields["permissions"] = changes.permissions
    ApiKey.update(**fields).where(ApiKey.id == key_id).execute()
    return ApiKey.get_by_id(key_id)


def delete_tx(*, now: int, new_session: Callable[..., Session], user_id: str, key_id: str) -> str | None:
    """Delete one of the user's keys; its hash (for the revocation), or None if there was none."""
    row = ApiKey.get_or_none((ApiKey.id == key_id) & (ApiKey.user == user_id))
    if row is None:
        return None
    row.delete_instance()
    return str(row.key_hash)
