"""Verification and password-reset emails: single-use tokens, their links, and delivery.

A token is 32 random alphanumerics (~190 bits); auth.db keeps only its SHA-256 (through the
AuthIssuer), with its kind, user, address and expiry. The link points at the auth role's public
URL, in Better Auth's shapes:

- `{public_url}/api/auth/verify-email?token=...&callbackURL=...`
- `{public_url}/api/auth/reset-password/{token}?callbackURL=...`

Mail goes out through the `send_auth_email` hook (firstresult; the built-in default is
`brain.auth.smtp`), called in a worker thread. Each address gets at most
`auth.email_rate_limit_per_hour` mails; more are dropped (and logged), never reported to the
client, so the answer never tells whether an address is known.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from brain.auth import accounts, email_change
from brain.auth.cookies import token_hash
from brain.ratelimit import shared_limit
from brain.auth.smtp import EmailDeliveryFailed, EmailNotConfigured, SmtpMailer
from brain.ids import new_id

if TYPE_CHECKING:
    from brain.auth.context import AuthContext

log = logging.getLogger("brain.auth.emails")

SUBJECTS = {
    accounts.VERIFY_EMAIL: "Verify your email address",
    accounts.RESET_PASSWORD: "Reset your password",
    email_change.CONFIRM_OLD: "Confirm the change of your email address",
    email_change.VERIFY_NEW: "Verify your new email address",
}


class AuthMail:
    """Creates emailed tokens and sends their mails for one auth role."""

    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx
        self.auth = ctx.auth
        self.base = ctx.settings.auth_public_url
        self.site = urlsplit(self.base).netloc or self.base
        self.per_address = shared_limit(ctx.rt, "auth.mail_per_address", self.auth.email_rate_limit_per_hour, 3600.0)
        hook = ctx.rt.pm.hook.send_auth_email
        builtin = [impl.plugin for impl in hook.get_hookimpls() if isinstance(impl.plugin, SmtpMailer)]
        others = [impl for impl in hook.get_hookimpls() if not isinstance(impl.plugin, SmtpMailer)]
        smtp_ready = any(plugin.configured for plugin in builtin)
        # Dev mode can always "send" (the built-in logs the mail); production needs a real way.
        self.available = bool(others) or smtp_ready or (bool(builtin) and ctx.settings.server.mode == "dev")

    def check_available(self) -> None:
        """503 EMAIL_NOT_CONFIGURED up front (before anything that depends on the address)."""
        if not self.available:
            raise EmailNotConfigured()

    async def allow(self, address: str) -> bool:
        """Count one mail to address; False when its hourly budget is spent."""
        if await self.per_address.take(address) > 0:
            log.warning("auth email to %s dropped: more than %d this hour", address, self.auth.email_rate_limit_per_hour)
            return False
        return True

    async def _new_token(self, kind: str, user_id: str, email: str, ttl_s: int) -> str:
        token = new_id()
        await self.ctx.issuer(
            "create_token", kind=kind, user_id=user_id, email=email, token_hash=token_hash(token), ttl_s=ttl_s
        )
        return token

    async def verification(self, user: dict[str, Any], callback_url: str | None) -> str:
        """Create a verification token for the user; the text of its mail (with the link)."""
        ttl = self.auth.email_verification_ttl_seconds
        token = await self._new_token(accounts.VERIFY_EMAIL, user["id"], user["email"], ttl)
        url = f"{self.base}/api/auth/verify-email?token={token}&callbackURL={quote(callback_url or '/', safe='')}"
        return (
            f"Hello {user['name']},\n\n"
            f"please confirm your email address for {self.site} by opening this link:\n\n"
            f"{url}\n\n"
            f"The link works once and expires in {_duration(ttl)}. "
            "If you did not create an account, you can ignore this message.\n"
        )

    async def password_reset(self, user: dict[str, Any], redirect_to: str | None) -> str:
        """Create a reset token for the user; the text of its mail (with the link)."""
        ttl = self.auth.password_reset_ttl_seconds
        token = await self._new_token(accounts.RESET_PASSWORD, user["id"], user["email"], ttl)
        url = f"{self.base}/api/auth/reset-password/{token}?callbackURL={quote(redirect_to or '', safe='')}"
        return (
            f"Hello {user['name']},\n\n"
            f"someone (hopefully you) asked to reset the password of your account on {self.site}. "
            "To choose a new password, open this link:\n\n"
            f"{url}\n\n"
            f"The link works once and expires in {_duration(ttl)}. Setting a new password signs you "
            "out everywhere. If you did not ask for this, ignore this message: your password stays as it is.\n"
        )

    def email_change(self, kind: str, user: dict[str, Any], new_email: str, token: str, callback_url: str | None) -> str:
        """The text of a change-of-address mail (to the old address: confirm; to the new: verify)."""
        url = f"{self.base}/api/auth/verify-email?token={token}&callbackURL={quote(callback_url or '/', safe='')}"
        ttl = _duration(self.auth.email_verification_ttl_seconds)
        if kind == email_change.CONFIRM_OLD:
            ask = (f"someone (hopefully you) asked to change the email address of your account on {self.site} "
                   f"to {new_email}. To confirm, open this link; a second mail then goes to the new address:")
            ignore = "If you did not ask for this, ignore this message: your address stays as it is."
        else:
            ask = f"please confirm {new_email} as the new email address of your account on {self.site} by opening this link:"
            ignore = "Until then your account keeps its old address. If you did not ask for this, ignore this message."
        return f"Hello {user['name']},\n\n{ask}\n\n{url}\n\nThe link works once and expires in {ttl}. {ignore}\n"

    async def send(self, to: str, kind: str, text: str) -> None:
        """Deliver through the send_auth_email hook, in a worker thread (smtplib blocks)."""
        call = functools.partial(self.ctx.rt.pm.hook.send_auth_email, to=to, subject=SUBJECTS[kind], text=text, kind=kind)
        sent = await asyncio.get_running_loop().run_in_executor(None, call)
        if sent is not True:
            raise EmailDeliveryFailed(f"no send_auth_email implementation delivered the {kind} email")

    def send_later(self, to: str, kind: str, text: str) -> None:
        """Deliver in the background (the answer must not wait for, or reveal, the outcome)."""
        self.ctx.in_background(asyncio.ensure_future(self.send(to, kind, text)), f"{kind} email to {to}")


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return f"{hours} hour" + ("s" if hours != 1 else "")
    minutes = max(1, round(seconds / 60))
    return f"{minutes} minute" + ("s" if minutes != 1 else "")
