"""auth.db: users, sessions and signing keys (peewee models on one WAL SQLite file).

Only the `AuthIssuer` actor (and the offline `brain keys` command) writes. Request handlers
read through their own thread's connection: peewee keeps one connection per thread, and WAL
lets those reads run while the actor commits.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import peewee

# Bound to the real database by `open_db` (one auth.db per process).
database = peewee.DatabaseProxy()

_PRAGMAS = {
    "journal_mode": "wal",
    "synchronous": "normal",
    "foreign_keys": 1,
    # The actor and `brain keys rotate` (another process) may write at the same moment.
    "busy_timeout": 5000,
}


def now_ms() -> int:
    """Wall-clock time in integer milliseconds (how every timestamp is stored)."""
    return int(time.time() * 1000)


def iso(ms: int) -> str:
    """A stored timestamp as JavaScript's Date.toJSON() writes it (what Better Auth returns)."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _Base(peewee.Model):
    class Meta:
        database = database
        legacy_table_names = False


class User(_Base):
    """One account. `email` is stored lower-cased, so uniqueness is case-insensitive."""

    id = peewee.CharField(primary_key=True, max_length=64)
    email = peewee.CharField(unique=True, max_length=254)
    name = peewee.TextField()
    image = peewee.TextField(null=True)
    email_verified = peewee.BooleanField(default=False)
    password_hash = peewee.TextField()
    created_at = peewee.BigIntegerField()
    updated_at = peewee.BigIntegerField()

    def public(self) -> dict[str, Any]:
        """Better Auth's user object."""
        return {
            "id": self.id,
            "email": self.email,
            "name": self.name,
            "image": self.image,
            "emailVerified": bool(self.email_verified),
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
        }


class Session(_Base):
    """A sign-in. Only the SHA-256 of the token is stored: a copy of auth.db signs nobody in."""

    id = peewee.CharField(primary_key=True, max_length=64)
    token_hash = peewee.CharField(unique=True, max_length=64)
    user = peewee.ForeignKeyField(User, backref="sessions", on_delete="CASCADE", column_name="user_id")
    expires_at = peewee.BigIntegerField(index=True)
    ip_address = peewee.TextField(default="")
    user_agent = peewee.TextField(default="")
    # rememberMe: false -> a one-day session that is never extended (Better Auth's dontRememberMe).
    remember = peewee.BooleanField(default=True)
    created_at = peewee.BigIntegerField()
    updated_at = peewee.BigIntegerField()

    def public(self, token: str) -> dict[str, Any]:
        """Better Auth's session object; the token comes from the request (it is not stored)."""
        return {
            "id": self.id,
            "userId": self.user_id,  # type: ignore[attr-defined]
            "token": token,
            "expiresAt": iso(self.expires_at),
            "ipAddress": self.ip_address,
            "userAgent": self.user_agent,
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
        }


class SigningKey(_Base):
    """One key of the JWT key ring; the private key is sealed with the server secret."""

    kid = peewee.CharField(primary_key=True, max_length=64)
    alg = peewee.CharField(default="RS256", max_length=16)
    public_jwk = peewee.TextField()
    private_sealed = peewee.BlobField()
    created_at = peewee.BigIntegerField()
    # It signs from this moment; until then it is only published (so caches learn it first).
    activates_at = peewee.BigIntegerField(index=True)


class Verification(_Base):
    """A single-use token sent by email (verification, password reset); only its SHA-256 is kept."""

    token_hash = peewee.CharField(primary_key=True, max_length=64)
    kind = peewee.CharField(max_length=32)
    user = peewee.ForeignKeyField(User, backref="verifications", on_delete="CASCADE", column_name="user_id")
    # The address the link went to: a verification link stops working if the email changes.
    email = peewee.CharField(max_length=254)
    expires_at = peewee.BigIntegerField(index=True)
    created_at = peewee.BigIntegerField()


class DeletedUser(_Base):
    """A deleted account, kept so every API role learns of it (and refuses its tokens in time)."""

    user_id = peewee.CharField(primary_key=True, max_length=64)
    deleted_at = peewee.BigIntegerField()
    # The last moment (ms) a JWT minted for the user can still verify: exp of one minted at deletion.
    tokens_valid_until = peewee.BigIntegerField()
    # Told to the API roles through JetStream (a deletion made while NATS was away waits here).
    published = peewee.BooleanField(default=False, index=True)


MODELS = (User, Session, SigningKey, Verification, DeletedUser)


def open_db(path: Path) -> peewee.SqliteDatabase:
    """Open (creating if needed) auth.db at path and bind the models to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = peewee.SqliteDatabase(str(path), pragmas=_PRAGMAS, thread_safe=True)
    database.initialize(db)
    with db.connection_context():
        db.create_tables(MODELS, safe=True)
    return db
