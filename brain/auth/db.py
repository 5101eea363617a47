"""auth.db: users, sessions, signing keys, linked accounts and passkeys (peewee models, one WAL file).

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
from playhouse.migrate import SqliteMigrator, migrate

from brain.clock import steady_time_ns
from brain.storage import WatchedDatabase

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
    """Wall-clock time in integer milliseconds (how every timestamp is stored), never stepping back
    (brain.clock): a session made after the clock stepped back must not expire before older ones."""
    return steady_time_ns() // 1_000_000


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
    # Better Auth's twoFactor plugin field: set once the user's TOTP secret is verified.
    two_factor_enabled = peewee.BooleanField(default=False)

    @property
    def has_password(self) -> bool:
        """Whether the user can sign in with a password (social-only users store "")."""
        return bool(self.password_hash)

    def public(self) -> dict[str, Any]:
        """Better Auth's user object (with its twoFactor plugin's field)."""
        return {
            "id": self.id,
            "email": self.email,
            "name": self.name,
            "image": self.image,
            "emailVerified": bool(self.email_verified),
            "twoFactorEnabled": bool(self.two_factor_enabled),
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


class LinkedAccount(_Base):
    """A social sign-in identity of a user (Better Auth's `account` row for a provider).

    The provider's tokens are not kept: brain signs the user in and has no use for them.
    """

    id = peewee.CharField(primary_key=True, max_length=64)
    user = peewee.ForeignKeyField(User, backref="linked_accounts", on_delete="CASCADE", column_name="user_id")
    provider_id = peewee.CharField(max_length=64)
    # The user's id at the provider (`sub`, Microsoft's `oid`, GitHub's numeric id).
    account_id = peewee.CharField(max_length=255)
    scope = peewee.TextField(default="")
    created_at = peewee.BigIntegerField()
    updated_at = peewee.BigIntegerField()

    class Meta:
        indexes = ((("provider_id", "account_id"), True),)


class Passkey(_Base):
    """A WebAuthn credential (Better Auth's passkey plugin row)."""

    id = peewee.CharField(primary_key=True, max_length=64)
    user = peewee.ForeignKeyField(User, backref="passkeys", on_delete="CASCADE", column_name="user_id")
    name = peewee.TextField(null=True)
    credential_id = peewee.CharField(unique=True, max_length=1400)  # base64url, as the browser sends it
    public_key = peewee.TextField()  # COSE key, standard base64 (Better Auth's column format)
    counter = peewee.BigIntegerField(default=0)
    device_type = peewee.CharField(max_length=32)
    backed_up = peewee.BooleanField(default=False)
    transports = peewee.TextField(default="")
    aaguid = peewee.CharField(null=True, max_length=64)
    created_at = peewee.BigIntegerField()


class FlowState(_Base):
    """A browser flow in progress (OAuth state, WebAuthn challenge): single use, bound to a cookie.

    Keyed by the SHA-256 of the random value the browser's signed cookie holds, so auth.db alone
    cannot finish anybody's flow.
    """

    key_hash = peewee.CharField(primary_key=True, max_length=64)
    kind = peewee.CharField(max_length=32)
    data = peewee.TextField()
    expires_at = peewee.BigIntegerField(index=True)


class ImportedKey(_Base):
    """A public key imported from another issuer (`brain import better-auth`): verify-only.

    Published in the JWKS next to the signing keys so tokens that issuer minted keep verifying
    until `expires_at`; bound to that issuer's `iss` and `aud`. brain never signs with it.
    """

    kid = peewee.CharField(primary_key=True, max_length=256)
    public_jwk = peewee.TextField()
    issuer = peewee.TextField()
    audience = peewee.TextField()
    imported_at = peewee.BigIntegerField()
    expires_at = peewee.BigIntegerField(index=True)


class TwoFactor(_Base):
    """A user's TOTP secret and backup codes (Better Auth's twoFactor table), both sealed with a
    key derived from the server secret; plus the account's failed-code count and lockout."""

    user = peewee.ForeignKeyField(User, primary_key=True, on_delete="CASCADE", column_name="user_id")
    secret_sealed = peewee.BlobField()
    backup_codes_sealed = peewee.BlobField()
    # False until the first code checks out (the enabling step); only then does sign-in ask for it.
    verified = peewee.BooleanField(default=False)
    # The newest 30-second step a code was accepted for: a code is good once.
    last_step = peewee.BigIntegerField(default=0)
    failed_count = peewee.IntegerField(default=0)
    locked_until = peewee.BigIntegerField(default=0)
    created_at = peewee.BigIntegerField()
    updated_at = peewee.BigIntegerField()


class TwoFactorChallenge(_Base):
    """A sign-in that passed the password and waits for its second factor (the two_factor
    cookie holds the token; only its SHA-256 is kept)."""

    token_hash = peewee.CharField(primary_key=True, max_length=64)
    user = peewee.ForeignKeyField(User, on_delete="CASCADE", column_name="user_id")
    remember = peewee.BooleanField(default=True)
    attempts = peewee.IntegerField(default=0)
    expires_at = peewee.BigIntegerField(index=True)


class EmailChange(_Base):
    """A requested change of address: the single-use token of its confirmation mail (to the old
    address) or verification mail (to the new one); only the token's SHA-256 is kept."""

    token_hash = peewee.CharField(primary_key=True, max_length=64)
    kind = peewee.CharField(max_length=32)
    user = peewee.ForeignKeyField(User, on_delete="CASCADE", column_name="user_id")
    # The address when the change was asked for: the link stops working if it changed since.
    email = peewee.CharField(max_length=254)
    new_email = peewee.CharField(max_length=254)
    expires_at = peewee.BigIntegerField(index=True)
    created_at = peewee.BigIntegerField()


class ApiKey(_Base):
    """A user's API key (Better Auth's apikey table). Only the key's SHA-256 (base64url, as
    Better Auth's default hasher writes it) is stored; `start` is its first characters."""

    id = peewee.CharField(primary_key=True, max_length=64)
    user = peewee.ForeignKeyField(User, on_delete="CASCADE", column_name="user_id", index=True)
    key_hash = peewee.CharField(unique=True, max_length=64)
    name = peewee.TextField(null=True)
    prefix = peewee.TextField(null=True)
    start = peewee.TextField(null=True)
    enabled = peewee.BooleanField(default=True)
    # Better Auth's permissions ({resource: [action]}) and metadata, as JSON text.
    permissions = peewee.TextField(null=True)
    metadata = peewee.TextField(null=True)
    expires_at = peewee.BigIntegerField(null=True)
    created_at = peewee.BigIntegerField()
    updated_at = peewee.BigIntegerField()


MODELS = (
    User, Session, SigningKey, Verification, DeletedUser, LinkedAccount, Passkey, FlowState, ImportedKey, TwoFactor,
    TwoFactorChallenge, EmailChange, ApiKey,
)


def _add_new_columns(db: peewee.SqliteDatabase) -> None:
    """Add the columns a model gained after an auth.db was created (each has a default)."""
    migrator = SqliteMigrator(db)
    for model in MODELS:
        table = model._meta.table_name
        present = {column.name for column in db.get_columns(table)}
        missing = [field for field in model._meta.sorted_fields if field.column_name not in present]
        if missing:
            migrate(*(migrator.add_column(table, field.column_name, field) for field in missing))


def open_db(path: Path) -> WatchedDatabase:
    """Open (creating if needed) auth.db at path and bind the models to it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = WatchedDatabase(path, label="auth.db", pragmas=_PRAGMAS, thread_safe=True)
    database.initialize(db)
    with db.connection_context():
        db.create_tables(MODELS, safe=True)
        _add_new_columns(db)
    return db
