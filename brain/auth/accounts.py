"""Account changes in auth.db that must happen in one transaction: emailed single-use tokens,
email verification, password reset and deletion.

The AuthIssuer (the server's one writer of auth.db) calls these from its thread; `brain users
delete` calls `delete_user` directly while no server runs. Each function expects to run inside
`database.atomic()`.
"""

from __future__ import annotations

from typing import Literal

from brain.auth.db import DeletedUser, Session, User, Verification

VERIFY_EMAIL = "email-verification"
RESET_PASSWORD = "password-reset"

TokenStatus = Literal["ok", "invalid", "expired"]

# Deletion records are kept this long after the last token of the user expired (then pruned).
_DELETED_KEEP_MS = 30 * 86400 * 1000


def create_token(*, kind: str, user_id: str, email: str, token_hash: str, ttl_s: int, now: int) -> None:
    """Store a new emailed token (its hash) that works once until now + ttl_s."""
    Verification.create(
        token_hash=token_hash, kind=kind, user=user_id, email=email, expires_at=now + ttl_s * 1000, created_at=now
    )


def take_token(kind: str, token_hash: str, now: int) -> tuple[TokenStatus, Verification | None]:
    """Use a token: it is deleted whatever happens next (single use); expired ones say so."""
    row = Verification.get_or_none((Verification.token_hash == token_hash) & (Verification.kind == kind))
    if row is None:
        return "invalid", None
    deleted = Verification.delete().where(Verification.token_hash == token_hash).execute()
    if not deleted:  # another connection used it first
        return "invalid", None
    if row.expires_at <= now:
        return "expired", None
    return "ok", row


def peek_token(kind: str, token_hash: str, now: int) -> bool:
    """Whether a token is usable right now (without using it)."""
    return (
        Verification.select()
        .where((Verification.token_hash == token_hash) & (Verification.kind == kind) & (Verification.expires_at > now))
        .exists()
    )


def verify_email(token_hash: str, now: int) -> tuple[TokenStatus, User | None]:
    """Use a verification token and mark its user's email verified."""
    status, row = take_token(VERIFY_EMAIL, token_hash, now)
    if row is None:
        return status, None
    user = User.get_or_none(User.id == row.user_id)  # type: ignore[attr-defined]
    if user is None or user.email != row.email:
        return "invalid", None  # the address changed since the mail went out
    if not user.email_verified:
        User.update(email_verified=True, updated_at=now).where(User.id == user.id).execute()
        user = User.get_by_id(user.id)
    return "ok", user


def reset_password(token_hash: str, password_hash: str, now: int) -> tuple[TokenStatus, str | None]:
    """Use a reset token: set the new password hash, delete every session of the user and every
    other reset token (a second mail, perhaps requested by someone else, must not undo the reset)."""
    status, row = take_token(RESET_PASSWORD, token_hash, now)
    if row is None:
        return status, None
    user_id: str = row.user_id  # type: ignore[attr-defined]
    if not User.update(password_hash=password_hash, updated_at=now).where(User.id == user_id).execute():
        return "invalid", None
    Session.delete().where(Session.user == user_id).execute()
    Verification.delete().where((Verification.user == user_id) & (Verification.kind == RESET_PASSWORD)).execute()
    return "ok", user_id


def delete_user(user_id: str, *, now: int, jwt_ttl_ms: int) -> DeletedUser | None:
    """Delete a user with their sessions and tokens; record the deletion for the API roles."""
    Session.delete().where(Session.user == user_id).execute()
    Verification.delete().where(Verification.user == user_id).execute()
    if not User.delete().where(User.id == user_id).execute():
        return None
    DeletedUser.replace(
        user_id=user_id, deleted_at=now, tokens_valid_until=now + jwt_ttl_ms, published=False
    ).execute()
    return DeletedUser.get_by_id(user_id)


def sweep(now: int) -> int:
    """Delete expired tokens and long-settled deletion records; how many rows went."""
    gone = Verification.delete().where(Verification.expires_at <= now).execute()
    gone += (
        DeletedUser.delete()
        .where(DeletedUser.published & (DeletedUser.tokens_valid_until < now - _DELETED_KEEP_MS))
        .execute()
    )
    return int(gone)
