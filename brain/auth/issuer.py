"""The AuthIssuer actor: the one writer of auth.db (users, sessions, signing keys).

It owns what must be serialised — creating users and sessions, extending and revoking
sessions, rotating keys — and publishes the key ring as an immutable snapshot that request
handlers read without asking it. Everything slow (password hashing) happens elsewhere, before
the ask, so the actor only ever runs short transactions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import peewee

from brain.actors.base import BrainActor, Link
from brain.auth import accounts, keys
from brain.auth.db import DeletedUser, Session, SigningKey, User, database, now_ms
from brain.auth.settings import AuthSettings
from brain.errors import StorageFault, Unprocessable
from brain.ids import new_id

log = logging.getLogger("brain.auth.issuer")

_POLL = "poll-keys"
# Expired sessions are deleted this often (they are refused on read long before that).
_SESSION_SWEEP_MS = 3600 * 1000


class EmailTaken(Unprocessable):
    """Better Auth's duplicate sign-up error."""

    code = "USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL"

    def __init__(self) -> None:
        super().__init__("User already exists. Use another email.")


class AuthIssuer(BrainActor):
    """Owns auth.db writes and the signing key ring."""

    def __init__(
        self,
        *,
        link: Link | None = None,
        settings: AuthSettings,
        aead: Any,
        publish: Callable[[keys.KeyRing], None],
        upkeep: bool = True,
    ) -> None:
        """`upkeep`: this issuer rotates keys on schedule, prunes retired ones and sweeps expired
        sessions (one issuer per server does: the primary worker's, brain.workers)."""
        super().__init__(link=link)
        self.settings = settings
        self.upkeep = upkeep
        self._aead = aead
        self._publish = publish
        self._keep_ms = settings.retired_key_keep_seconds * 1000
        self._data_version: int | None = None
        self._ring_shape: tuple[bytes, tuple[tuple[str, int], ...]] | None = None
        self._last_sweep = 0

    # --- lifecycle ---

    def on_start(self) -> None:
        """Make sure a signing key exists, publish the ring, start polling for rotations."""
        database.connect(reuse_if_open=True)
        keys.ensure_active_key(self._aead)
        self._refresh_ring()
        self.schedule(self.settings.key_poll_seconds, _POLL)

    def on_stop(self) -> None:
        """Close this thread's connection."""
        database.close()

    def on_failure(self, *_exc: object) -> None:
        """Close this thread's connection (a crash must not leak it)."""
        database.close()

    def on_receive(self, message: Any) -> Any:
        """Periodic work: pick up key changes made elsewhere (`brain keys rotate`, another worker's
        issuer); with upkeep, rotate on schedule, prune and sweep."""
        if message == _POLL:
            try:
                self._poll()
            except (peewee.OperationalError, StorageFault) as exc:  # locked by `brain keys` too long, disk full
                log.warning("key ring poll failed, will retry: %s", exc)
            self.schedule(self.settings.key_poll_seconds, _POLL)
            return None
        return super().on_receive(message)

    # --- asks from request handlers ---

    def create_user(
        self,
        *,
        email: str,
        name: str,
        image: str | None,
        password_hash: str,
        session: dict[str, Any] | None,
    ) -> tuple[User, Session | None]:
        """Insert a user (and its first session) in one transaction; EmailTaken on a duplicate."""
        now = now_ms()
        try:
            with database.atomic():
                user = User.create(
                    id=new_id(), email=email, name=name, image=image, email_verified=False,
                    password_hash=password_hash, created_at=now, updated_at=now,
                )
                row = self._insert_session(user.id, now=now, **session) if session is not None else None
        except peewee.IntegrityError:
            raise EmailTaken() from None
        return user, row

    def create_session(
        self,
        *,
        user_id: str,
        token_hash: str,
        ip_address: str,
        user_agent: str,
        remember: bool,
        new_password_hash: str | None = None,
    ) -> Session:
        """Insert a session; also store a rehashed password when the argon2 parameters changed."""
        now = now_ms()
        with database.atomic():
            if new_password_hash is not None:
                User.update(password_hash=new_password_hash, updated_at=now).where(User.id == user_id).execute()
            return self._insert_session(
                user_id, token_hash=token_hash, ip_address=ip_address, user_agent=user_agent,
                remember=remember, now=now,
            )

    def extend_session(self, session_id: str) -> Session | None:
        """Slide a live session's expiry forward; None if it was revoked or has expired."""
        now = now_ms()
        expires = now + self.settings.session_ttl_seconds * 1000
        updated = (
            Session.update(expires_at=expires, updated_at=now)
            .where((Session.id == session_id) & (Session.expires_at > now))
            .execute()
        )
        return Session.get_or_none(Session.id == session_id) if updated else None

    def revoke_session(self, token_hash: str) -> bool:
        """Delete the session with this token hash; True if there was one."""
        return bool(Session.delete().where(Session.token_hash == token_hash).execute())

    def write(self, fn: Callable[..., Any], **kwargs: Any) -> Any:
        """Run another auth module's write (social accounts, passkeys, flow state) in one transaction.

        `fn(now=..., new_session=..., **kwargs)`; `new_session(user_id, **session_fields)` inserts a
        session in the same transaction. The modules keep their own rules; the actor keeps
        auth.db's writes on one thread.
        """
        now = now_ms()
        with database.atomic():
            return fn(now=now, new_session=lambda user_id, **fields: self._insert_session(user_id, now=now, **fields),
                      **kwargs)

    def create_token(self, *, kind: str, user_id: str, email: str, token_hash: str, ttl_s: int) -> None:
        """Store a single-use emailed token (its hash)."""
        with database.atomic():
            accounts.create_token(
                kind=kind, user_id=user_id, email=email, token_hash=token_hash, ttl_s=ttl_s, now=now_ms()
            )

    def verify_email(
        self, *, token_hash: str, session: dict[str, Any] | None = None
    ) -> tuple[accounts.TokenStatus, User | None, Session | None]:
        """Use a verification token; with session fields, also sign the user in (one transaction).

        A user with two-factor is not signed in by the link: that would skip the second factor.
        """
        now = now_ms()
        with database.atomic():
            status, user = accounts.verify_email(token_hash, now)
            signs_in = user is not None and bool(session) and not user.two_factor_enabled
            row = self._insert_session(user.id, now=now, **session) if signs_in else None
        return status, user, row

    def reset_password(self, *, token_hash: str, password_hash: str) -> tuple[accounts.TokenStatus, str | None]:
        """Use a reset token: new password, every session of the user revoked (one transaction)."""
        with database.atomic():
            return accounts.reset_password(token_hash, password_hash, now_ms())

    def delete_user(self, *, user_id: str) -> DeletedUser | None:
        """Delete a user, their sessions and tokens; None if there was no such user."""
        with database.atomic():
            return accounts.delete_user(user_id, now=now_ms(), jwt_ttl_ms=self.settings.jwt_ttl_seconds * 1000)

    def unpublished_deletions(self) -> list[DeletedUser]:
        """Deletions the API roles have not been told of yet (through JetStream)."""
        return list(DeletedUser.select().where(~DeletedUser.published).order_by(DeletedUser.deleted_at))

    def mark_published(self, *, user_ids: list[str]) -> None:
        """Record that these deletions reached JetStream."""
        DeletedUser.update(published=True).where(DeletedUser.user_id.in_(user_ids)).execute()

    # --- internals ---

    def _insert_session(
        self, user_id: str, *, token_hash: str, ip_address: str, user_agent: str, remember: bool, now: int
    ) -> Session:
        # rememberMe: false gets a one-day session, as in Better Auth.
        ttl_s = self.settings.session_ttl_seconds if remember else min(86400, self.settings.session_ttl_seconds)
        return Session.create(
            id=new_id(), token_hash=token_hash, user=user_id, expires_at=now + ttl_s * 1000,
            ip_address=ip_address, user_agent=user_agent, remember=remember, created_at=now, updated_at=now,
        )

    def _refresh_ring(self) -> None:
        self._data_version = self._read_data_version()
        ring = keys.load_ring(self._aead, self._keep_ms)
        # Any commit to auth.db by another process (a sign-in on another worker) brings us here;
        # the same keys are not published (and logged) again.
        shape = (ring.jwks_bytes, tuple((k.kid, k.activates_at) for k in ring.keys))
        if shape != self._ring_shape:
            self._ring_shape = shape
            self._publish(ring)

    def _read_data_version(self) -> int:
        # Changes whenever another connection (another process: `brain keys rotate`) commits.
        return int(database.execute_sql("PRAGMA data_version").fetchone()[0])

    def _poll(self) -> None:
        if self.upkeep:
            self._keep_up()
        if keys.ensure_active_key(self._aead):
            self._data_version = None
        if self._data_version != self._read_data_version():
            self._refresh_ring()

    def _keep_up(self) -> None:
        """Scheduled rotation, pruning of retired keys, the sweep of expired sessions."""
        now = now_ms()
        if self.settings.key_rotation_days > 0:
            newest = SigningKey.select(peewee.fn.MAX(SigningKey.created_at)).scalar() or 0
            if now - newest >= self.settings.key_rotation_days * 86400 * 1000:
                log.info("scheduled key rotation (every %s days)", self.settings.key_rotation_days)
                keys.rotate(self._aead, publish_delay_s=self.settings.key_publish_delay_seconds)
                self._data_version = None
        if keys.prune(self._keep_ms):
            self._data_version = None
        if now - self._last_sweep >= _SESSION_SWEEP_MS:
            self._last_sweep = now
            swept = Session.delete().where(Session.expires_at <= now).execute()
            accounts.sweep(now)
            if swept:
                log.info("deleted %d expired sessions", swept)
