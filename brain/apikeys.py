"""API keys: what the auth role (which issues them) and the API role (which accepts them) share.

A key is Better Auth's apiKey plugin's: a prefix (`auth.api_key_prefix`, `brain_` by default)
and 64 random letters; auth.db keeps its SHA-256 (base64url, Better Auth's default hasher).
Its `permissions` (`{resource: [action]}`, Better Auth's shape) are brain's scopes:

| scope | permissions |
|-------|-------------|
| `events:read` | `{"events": ["read"]}` |
| `events:write` | `{"events": ["write"]}` |
| `mail:read` | `{"mail": ["read"]}` |
| `search` | `{"search": ["read"]}` |

The API role finds a key through a `KeyDirectory`: the auth role's own when it runs in the same
process, else an HTTP call to the auth role. It caches what it found; when a key is deleted,
disabled or changed the auth role says so through this process's `ApiKeyHub`, which drops the
cached entry here at once and, for API roles in other processes, queues a message signed with
the issuer's JWT key for the control relay (NATS subject `CONTROL_SUBJECT`).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from brain.openapi import with_error
from brain.process import Process
from brain.stash import StashKey

log = logging.getLogger("brain.apikeys")

SCOPES = ("events:read", "events:write", "mail:read", "search")
_PERMISSION = {"events:read": ("events", "read"), "events:write": ("events", "write"),
               "mail:read": ("mail", "read"), "search": ("search", "read")}
_SCOPE = {permission: scope for scope, permission in _PERMISSION.items()}
# What a key (or anything worth looking up as one) is made of: Better Auth's prefix alphabet and
# letters, and no dot — a JWT always has two, which is how `Authorization: Bearer` tells them apart.
KEY_RE = re.compile(r"[A-Za-z0-9_-]{16,128}")
CONTROL_SUBJECT = "brain.control.api-key-revoked"
MAX_PER_MESSAGE = 500
MAX_PENDING = 10_000
# The audience of the signed revocation messages: no access token can pass for one, nor one for it.
CONTROL_AUDIENCE = "brain-control"


def hash_key(key: str) -> str:
    """What auth.db stores for a key: base64url(SHA-256), unpadded (Better Auth's defaultKeyHasher)."""
    return base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()).rstrip(b"=").decode()


def permissions_of(scopes: Iterable[str]) -> dict[str, list[str]]:
    """Better Auth's permissions object for a set of scopes."""
    out: dict[str, list[str]] = {}
    for scope in SCOPES:
        if scope in set(scopes):
            resource, action = _PERMISSION[scope]
            out.setdefault(resource, []).append(action)
    return out


def permissions_schema() -> dict[str, Any]:
    """The JSON schema of a permissions object, as `scopes_of` reads it (other resources only with no action)."""
    actions: dict[str, list[str]] = {}
    for resource, action in _PERMISSION.values():
        actions.setdefault(resource, []).append(action)
    return {
        "type": "object",
        "properties": {r: {"type": "array", "items": {"enum": a}} for r, a in actions.items()},
        "additionalProperties": {"type": "array", "maxItems": 0},
    }


def scopes_of(permissions: Any) -> frozenset[str]:
    """The scopes a permissions object grants; ValueError naming what is not one of brain's."""
    if not isinstance(permissions, dict):
        raise ValueError("must be an object of resource: [actions]")
    scopes = set()
    for resource, actions in permissions.items():
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise ValueError(f"{str(resource)[:40]}: must be a list of actions")
        for action in actions:
            scope = _SCOPE.get((resource, action))
            if scope is None:
                allowed = ", ".join(f"{r}: {a}" for r, a in _PERMISSION.values())
                raise ValueError(f"{str(resource)[:40]}: {action[:40]!r} is not a permission brain grants ({allowed})")
            scopes.add(scope)
    return frozenset(scopes)


@dataclass(frozen=True)
class KeyRecord:
    """What the API role needs to know about a key."""

    id: str
    user_id: str
    scopes: frozenset[str]
    enabled: bool = True
    expires_at_ms: int | None = None
    email: str | None = None
    name: str | None = None


class KeyDirectory(Protocol):
    """Where the API role finds a key (the auth role's database, here or over HTTP)."""

    async def find(self, key: str) -> KeyRecord | None:
        """The key's record, or None when there is no such key."""


class RevocationListener(Protocol):
    """An API role's key cache, told when cached keys must be looked up again."""

    def drop(self, key_hashes: Iterable[str]) -> None:
        """Forget these keys (they were deleted, disabled or changed)."""

    def clear(self) -> None:
        """Forget every key (revocations may have been missed)."""


class ApiKeyHub:
    """Per process: the directory the API role asks, and how revocations reach the API roles."""

    def __init__(self) -> None:
        # The auth role's directory when it runs in this process (None: ask it over HTTP).
        self.directory: KeyDirectory | None = None
        # The API role's key cache, when it runs here.
        self.listener: RevocationListener | None = None
        # Auth role: signs a control message (the issuer's JWT key); API role: checks one and
        # returns its claims (None when it does not verify).
        self.sign: Callable[[dict[str, Any]], str] | None = None
        self.check: Callable[[str], dict[str, Any] | None] | None = None
        # Set by the control relay: publish now (called from the event loop's thread).
        self.kick: Callable[[], None] | None = None
        # Set by the control relay: the other workers of this server drop these keys (awaited).
        self.tell_workers: Callable[[list[str]], Awaitable[object]] | None = None
        self._outgoing: list[str] = []

    async def revoked(self, key_hashes: Iterable[str]) -> None:
        """Keys that stopped working or changed: forget them here and in this server's other workers
        now (returns once they have), and tell the other processes through NATS."""
        hashes = list(key_hashes)
        if not hashes:
            return
        if self.listener is not None:
            self.listener.drop(hashes)
        if self.tell_workers is not None:
            await self.tell_workers(hashes)
        self._outgoing.extend(hashes)
        # Bounded: should the relay stay away, the oldest go (those caches expire within
        # api_key_cache_seconds anyway, and a reconnect clears them).
        del self._outgoing[:-MAX_PENDING]
        if self.kick is not None:
            self.kick()

    def take_outgoing(self) -> tuple[list[str], bytes] | None:
        """The hashes waiting to be announced and their signed message (the relay publishes it)."""
        if not self._outgoing or self.sign is None:
            return None
        hashes = self._outgoing[:MAX_PER_MESSAGE]
        message = self.sign({"revoked_api_keys": hashes}).encode()  # may raise: then nothing is taken
        del self._outgoing[: len(hashes)]
        return hashes, message

    def put_back(self, hashes: list[str]) -> None:
        """Hashes whose message could not be published: sent with the next one."""
        self._outgoing[:0] = hashes

    def drop(self, key_hashes: list[str]) -> None:
        """Another worker of this server revoked these keys: forget them here."""
        if self.listener is not None:
            self.listener.drop(key_hashes)

    def receive(self, data: bytes) -> None:
        """A control message from NATS: drop the keys it names, if it is signed by the issuer."""
        if self.listener is None or self.check is None:
            return
        claims = self.check(data.decode("ascii", "replace"))
        hashes = claims.get("revoked_api_keys") if claims else None
        if not isinstance(hashes, list) or not all(isinstance(h, str) for h in hashes):
            log.warning("ignored a %s message that is not signed by the issuer", CONTROL_SUBJECT)
            return
        self.listener.drop(hashes)

    def reconnected(self) -> None:
        """The control connection was away: what was revoked meanwhile is unknown, so forget all."""
        if self.listener is not None:
            self.listener.clear()


_HUB: StashKey[ApiKeyHub] = StashKey("brain.apikeys.hub")


def api_key_hub(rt: Process) -> ApiKeyHub:
    """The process's ApiKeyHub, where the auth role's directory and the API role's cache meet."""
    return rt.stash.setdefault(_HUB, ApiKeyHub)


# The scope an API key needs for a route ("" any key); absent: the route takes no keys.
SCOPE_ATTR = "brain_api_key_scope"
H = TypeVar("H")


def scope(name: str | None) -> Callable[[H], H]:
    """Let API keys call a route: keys holding scope `name` (SCOPES), any key when None.

    A route without it takes JWTs only; JWTs are never limited by scopes. The API listener's
    guard reads the mark.
    """
    if name is not None and name not in SCOPES:
        raise ValueError(f"unknown scope {name!r}")

    def mark(handler: H) -> H:
        setattr(handler, SCOPE_ATTR, name or "")
        return handler

    return mark


def with_api_keys(operation: dict[str, Any], scope: str | None) -> dict[str, Any]:
    """An operation that also takes API keys: its security, the scope a key needs (`x-api-key-scope`,
    "any" for any key) and, when it needs one, the 403 for a key without it."""
    described = dict(operation) if scope is None else with_error(
        operation, "403", "INSUFFICIENT_SCOPE: the API key lacks the scope", "INSUFFICIENT_SCOPE")
    return {**described, "security": [{"bearerAuth": []}, {"apiKeyHeader": []}], "x-api-key-scope": scope or "any"}
