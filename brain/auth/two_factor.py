"""Two-factor secrets and their checks: TOTP (RFC 6238, pyotp) and backup codes.

What Better Auth's twoFactor plugin keeps, kept the same way: a TOTP secret (6 digits, 30-second
steps, one step of clock drift either way) and ten single-use backup codes `xxxxx-xxxxx`. Both
are sealed at rest with AES-256-GCM under a key derived (HKDF) from the server secret, bound to
the user, so a copy of auth.db holds no usable secret and a sealed value moved to another row
does not open. brain adds that a step's code is accepted once (a code seen over a shoulder or
replayed is refused).

Guessing is bounded three ways: requests to /two-factor/* per client IP
(`two_factor_rate_limit_max` per `two_factor_rate_limit_window_seconds`), five attempts per
sign-in challenge, and `two_factor_max_failures` wrong codes in a row per account, which lock
the account's second factor for `two_factor_lockout_seconds` — the right code included.

The `*_tx` functions change auth.db; they run inside the AuthIssuer's transaction
(`ctx.issuer("write", fn=fn, ...)`), so an attempt's check and its count are one step.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlencode

import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from brain.auth import keys
from brain.auth.db import Session, TwoFactor, TwoFactorChallenge, User

DIGITS = 6
PERIOD_S = 30
# Steps of clock drift accepted either way (Better Auth's window).
WINDOW = 1
BACKUP_CODES = 10
_BACKUP_ALPHABET = string.ascii_letters + string.digits
# Codes tried against one sign-in challenge before it is spent (Better Auth's allowedAttempts).
CHALLENGE_ATTEMPTS = 5
_HKDF_INFO = b"brain auth.db two-factor v1"


class Sealer:
    """Seals and opens a user's TOTP secret and backup codes (AES-256-GCM, bound to the user)."""

    def __init__(self, server_secret: bytes) -> None:
        self._aead: AESGCM = keys.sealing_key(server_secret, _HKDF_INFO)

    def seal_secret(self, user_id: str, secret: str) -> bytes:
        """The sealed TOTP secret."""
        return keys.seal(self._aead, f"totp-secret:{user_id}", secret.encode())

    def open_secret(self, user_id: str, sealed: bytes) -> str:
        """The TOTP secret (base32); InvalidTag if it was sealed for someone else or another secret."""
        return keys.unseal(self._aead, f"totp-secret:{user_id}", bytes(sealed)).decode()

    def seal_codes(self, user_id: str, codes: list[str]) -> bytes:
        """The sealed list of unused backup codes."""
        return keys.seal(self._aead, f"backup-codes:{user_id}", json.dumps(codes).encode())

    def open_codes(self, user_id: str, sealed: bytes) -> list[str]:
        """The unused backup codes."""
        codes = json.loads(keys.unseal(self._aead, f"backup-codes:{user_id}", bytes(sealed)))
        return [c for c in codes if isinstance(c, str)]


def new_secret() -> str:
    """A fresh TOTP secret: 160 random bits (RFC 4226's recommendation) in base32."""
    return base64.b32encode(os.urandom(20)).decode()


def new_backup_codes() -> list[str]:
    """Ten fresh backup codes, `xxxxx-xxxxx` of letters and digits (Better Auth's shape)."""
    out = []
    for _ in range(BACKUP_CODES):
        raw = "".join(secrets.choice(_BACKUP_ALPHABET) for _ in range(10))
        out.append(f"{raw[:5]}-{raw[5:]}")
    return out


def totp_uri(secret: str, issuer: str, account: str) -> str:
    """The otpauth:// URI an authenticator app scans, written as Better Auth writes it."""
    params = urlencode({"secret": secret.rstrip("="), "issuer": issuer, "digits": DIGITS, "period": PERIOD_S})
    return f"otpauth://totp/{quote(issuer, safe='')}:{quote(account, safe='')}?{params}"


def matching_step(secret: str, code: str, now_s: float) -> int | None:
    """The 30-second step whose code `code` is (within the drift window), or None."""
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=PERIOD_S)
    given = code.encode("utf-8", "surrogatepass")
    current = int(now_s // PERIOD_S)
    found = None
    # Every step of the window is compared, in constant time: the answer's timing tells nothing.
    for step in range(current - WINDOW, current + WINDOW + 1):
        if hmac.compare_digest(given, totp.generate_otp(step).encode()):
            found = step
    return found


def _same(given: str, code: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), code.encode())


# --- changes to auth.db (inside the issuer's transaction) --------------------------------------


def start_tx(*, now: int, new_session: Callable[..., Session], user_id: str, secret_sealed: bytes,
             codes_sealed: bytes) -> bool:
    """Store a new, not yet verified secret (replacing an unverified one); False if TOTP is on already."""
    row = TwoFactor.get_or_none(TwoFactor.user == user_id)
    if row is not None and row.verified:
        return False
    TwoFactor.replace(
        user=user_id, secret_sealed=secret_sealed, backup_codes_sealed=codes_sealed, verified=False, last_step=0,
        failed_count=0, locked_until=0, created_at=now, updated_at=now,
    ).execute()
    return True


def replace_codes_tx(*, now: int, new_session: Callable[..., Session], user_id: str, codes_sealed: bytes) -> bool:
    """New backup codes for a user with two-factor on; False if it is not on."""
    return bool(
        TwoFactor.update(backup_codes_sealed=codes_sealed, updated_at=now)
        .where((TwoFactor.user == user_id) & TwoFactor.verified)
        .execute()
    )


def disable_tx(*, now: int, new_session: Callable[..., Session], user_id: str) -> None:
    """Turn two-factor off: the secret, the codes and pending sign-in challenges go."""
    TwoFactor.delete().where(TwoFactor.user == user_id).execute()
    TwoFactorChallenge.delete().where(TwoFactorChallenge.user == user_id).execute()
    User.update(two_factor_enabled=False, updated_at=now).where(User.id == user_id).execute()


def challenge_tx(*, now: int, new_session: Callable[..., Session], user_id: str, token_hash: str, remember: bool,
                 ttl_s: int, new_password_hash: str | None) -> None:
    """Record a sign-in that waits for its second factor (and a rehashed password, as sign-in does)."""
    if new_password_hash is not None:
        User.update(password_hash=new_password_hash, updated_at=now).where(User.id == user_id).execute()
    TwoFactorChallenge.delete().where(TwoFactorChallenge.expires_at <= now).execute()
    TwoFactorChallenge.create(token_hash=token_hash, user=user_id, remember=remember, expires_at=now + ttl_s * 1000)


Outcome = Literal[
    "ok", "invalid", "not-enabled", "no-challenge", "too-many-attempts", "locked",
]


@dataclass(frozen=True)
class Check:
    """What one code check came to; with a session when it completed a sign-in."""

    outcome: Outcome
    user: User | None = None
    session: Session | None = None
    locked_until: int = 0


@dataclass(frozen=True)
class Attempt:
    """One code to check: TOTP or backup code, for a signed-in user or for a sign-in challenge."""

    kind: Literal["totp", "backup"]
    code: str
    # Exactly one of these: the signed-in user, or the challenge's token hash and the new
    # session's fields (token_hash, ip_address, user_agent).
    user_id: str | None = None
    challenge_hash: str | None = None
    session_fields: dict[str, object] | None = None
    # A backup code that completes a challenge without a session (Better Auth's disableSession).
    open_session: bool = True


def check_tx(*, now: int, new_session: Callable[..., Session], attempt: Attempt, sealer: Sealer, max_failures: int,
             lockout_s: int) -> Check:
    """Check one code, count it, and on success finish what it was for (one transaction)."""
    challenge = None
    if attempt.challenge_hash is not None:
        challenge = TwoFactorChallenge.get_or_none(TwoFactorChallenge.token_hash == attempt.challenge_hash)
        if challenge is None or challenge.expires_at <= now:
            return Check("no-challenge")
        user_id: str = challenge.user_id  # type: ignore[attr-defined]
    else:
        assert attempt.user_id is not None
        user_id = attempt.user_id
    row = TwoFactor.get_or_none(TwoFactor.user == user_id)
    # A sign-in asks only for a verified TOTP; backup codes exist from the enabling step on.
    if row is None or (challenge is not None and attempt.kind == "totp" and not row.verified):
        return Check("not-enabled")
    if challenge is not None:
        if row.locked_until > now:
            return Check("locked", locked_until=row.locked_until)
        if challenge.attempts >= CHALLENGE_ATTEMPTS:
            challenge.delete_instance()
            return Check("too-many-attempts")
    ok = _code_matches(attempt, row, sealer, now)
    user = User.get_by_id(user_id)
    if not ok:
        if challenge is not None:
            TwoFactorChallenge.update(attempts=TwoFactorChallenge.attempts + 1).where(
                TwoFactorChallenge.token_hash == challenge.token_hash
            ).execute()
            failed = row.failed_count + 1
            locked = now + lockout_s * 1000 if failed >= max_failures else 0
            TwoFactor.update(failed_count=0 if locked else failed, locked_until=locked).where(
                TwoFactor.user == user_id
            ).execute()
        return Check("invalid", user=user)
    if challenge is not None:
        TwoFactor.update(failed_count=0, locked_until=0).where(TwoFactor.user == user_id).execute()
    if attempt.kind == "totp" and not row.verified:
        # The first good code finishes enabling: from now on sign-in asks for it.
        TwoFactor.update(verified=True).where(TwoFactor.user == user_id).execute()
        User.update(two_factor_enabled=True, updated_at=now).where(User.id == user_id).execute()
        user = User.get_by_id(user_id)
    session = None
    if challenge is not None and attempt.open_session:
        challenge.delete_instance()
        assert attempt.session_fields is not None
        session = new_session(user_id, remember=challenge.remember, **attempt.session_fields)
    return Check("ok", user=user, session=session)


def _code_matches(attempt: Attempt, row: TwoFactor, sealer: Sealer, now: int) -> bool:
    """Whether the code is good; a good one is used up (its step, or the backup code)."""
    user_id: str = row.user_id  # type: ignore[attr-defined]
    try:
        if attempt.kind == "totp":
            step = matching_step(sealer.open_secret(user_id, row.secret_sealed), attempt.code, now / 1000)
            if step is None or step <= row.last_step:
                return False
            TwoFactor.update(last_step=step, updated_at=now).where(TwoFactor.user == user_id).execute()
            return True
        codes = sealer.open_codes(user_id, row.backup_codes_sealed)
    except InvalidTag:
        # Sealed under another server secret: no code can match (and the user must re-enable).
        return False
    matched = [c for c in codes if _same(attempt.code, c)]
    if not matched:
        return False
    remaining = [c for c in codes if c not in matched]
    TwoFactor.update(backup_codes_sealed=sealer.seal_codes(user_id, remaining), updated_at=now).where(
        TwoFactor.user == user_id
    ).execute()
    return True
