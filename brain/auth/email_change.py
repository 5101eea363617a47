"""Changing a user's address, Better Auth's way: nothing changes until the new address is proven.

A verified user's request first mails a confirmation link to the current address (Better Auth's
`sendChangeEmailConfirmation`, `change_email_confirm_old_address`); following it mails a
verification link to the new address; following that one changes the address (verified). An
unverified user, or with the confirmation turned off, gets only the second mail. Each link is
a 32-character single-use token (only its SHA-256 is stored, in `EmailChange`) that expires
after `email_verification_ttl_seconds`, and it stops working when the address changed meanwhile.

The `*_tx` functions run inside the AuthIssuer's transaction (`ctx.issuer("write", fn=fn, ...)`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from brain.auth.db import EmailChange, Session, User, Verification

CONFIRM_OLD = "change-email-confirmation"
VERIFY_NEW = "change-email-verification"

Outcome = Literal["confirmed", "changed", "invalid", "expired", "taken"]


def request_tx(*, now: int, new_session: Callable[..., Session], kind: str, user_id: str, email: str, new_email: str,
               token_hash: str, ttl_s: int) -> None:
    """Store the token of a change mail (its hash)."""
    EmailChange.delete().where(EmailChange.expires_at <= now).execute()
    EmailChange.create(token_hash=token_hash, kind=kind, user=user_id, email=email, new_email=new_email,
                       expires_at=now + ttl_s * 1000, created_at=now)


@dataclass(frozen=True)
class Followed:
    """What following a change link came to."""

    outcome: Outcome
    user: User | None = None
    new_email: str = ""


def follow_tx(*, now: int, new_session: Callable[..., Session], token_hash: str, next_token_hash: str,
              ttl_s: int) -> Followed:
    """Use a change link: a confirmation stores the next link's token (next_token_hash); a
    verification changes the address. The token is gone whatever happens (single use)."""
    row = EmailChange.get_or_none(EmailChange.token_hash == token_hash)
    if row is None or not EmailChange.delete().where(EmailChange.token_hash == token_hash).execute():
        return Followed("invalid")
    if row.expires_at <= now:
        return Followed("expired")
    user = User.get_or_none(User.id == row.user_id)  # type: ignore[attr-defined]
    if user is None or user.email != row.email:
        return Followed("invalid")  # the address changed since the mail went out
    if row.kind == CONFIRM_OLD:
        request_tx(now=now, new_session=new_session, kind=VERIFY_NEW, user_id=user.id, email=user.email,
                   new_email=row.new_email, token_hash=next_token_hash, ttl_s=ttl_s)
        return Followed("confirmed", user, row.new_email)
    if User.select().where((User.email == row.new_email) & (User.id != user.id)).exists():
        return Followed("taken", user, row.new_email)
    User.update(email=row.new_email, email_verified=True, updated_at=now).where(User.id == user.id).execute()
    # Links mailed to the old address (verification, reset, other changes) are for an address
    # the account no longer has.
    Verification.delete().where(Verification.user == user.id).execute()
    EmailChange.delete().where(EmailChange.user == user.id).execute()
    return Followed("changed", User.get_by_id(user.id), row.new_email)
