"""The auth role's settings: [auth], [smtp] and [social] (declared through `register_settings`)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from brain.config import Section, Settings
from brain.control_chars import has_control
from brain.errors import ConfigError
from brain.plugins import hookimpl
from brain.sections import require_positive


@dataclass(frozen=True)
class AuthSettings:
    """The auth role: users, sessions, keys, tokens."""

    # `iss` of minted tokens. Empty: the server's public URL.
    issuer: str = ""
    audience: str = "brain"
    jwt_ttl_seconds: int = 900
    session_ttl_seconds: int = 7 * 24 * 3600
    # A session is extended when it is used and older than this (Better Auth's updateAge).
    session_update_age_seconds: int = 24 * 3600
    # Rotate the signing key this often (0: only by `brain keys rotate`).
    key_rotation_days: float = 0.0
    trusted_origins: tuple[str, ...] = ()
    argon2_memory_kib: int = 19_456
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1
    # Threads that hash passwords off the event loop.
    hash_workers: int = 2
    min_password_length: int = 8
    max_password_length: int = 128
    # Requests to sign-up/sign-in per client IP per minute.
    rate_limit_ip_per_minute: int = 60
    # Failed sign-ins per account within the window before the account is locked out.
    rate_limit_account_failures: int = 5
    rate_limit_account_window_seconds: int = 900
    # Clients and accounts each limit remembers. Past it the least recently seen ones under
    # their limit are forgotten; a lockout is never pushed out by other keys (brain.ratelimit).
    rate_limit_max_keys: int = 100_000
    require_email_verification: bool = False
    # A rotated key is published this long before it signs, so JWKS caches learn it first.
    key_publish_delay_seconds: float = 600.0
    # A retired key stays in the JWKS this long (at least jwt_ttl_seconds), then is deleted.
    retired_key_keep_seconds: int = 86400
    # How often the issuer looks for keys added by `brain keys rotate` in another process.
    key_poll_seconds: float = 5.0
    # Cache-Control max-age of the JWKS document.
    jwks_max_age_seconds: int = 300
    # Request bodies of the auth endpoints are small; refuse anything bigger.
    max_body_bytes: int = 16384
    # Lifetime of the single-use links in verification and password-reset emails
    # (Better Auth's emailVerification.expiresIn / resetPasswordTokenExpiresIn).
    email_verification_ttl_seconds: int = 3600
    password_reset_ttl_seconds: int = 3600
    # Send the verification email at sign-up even when verification is not required
    # (Better Auth's sendOnSignUp; with require_email_verification it is always sent).
    send_verification_on_sign_up: bool = False
    # Following the verification link signs the user in (Better Auth's autoSignInAfterVerification).
    auto_sign_in_after_verification: bool = False
    # Auth emails (verification, reset) to one address per hour; more are silently dropped.
    email_rate_limit_per_hour: int = 5
    # POST /api/auth/delete-user without the password needs a session younger than this
    # (Better Auth's session.freshAge; 0: any live session will do).
    session_fresh_age_seconds: int = 86400
    # POST /api/auth/delete-user (Better Auth's user.deleteUser.enabled); false: 404.
    delete_user_enabled: bool = True
    # WebAuthn relying party of passkeys (Better Auth's passkey rpID / rpName). Empty id: the
    # host of the public URL.
    passkey_rp_id: str = ""
    passkey_rp_name: str = "brain"
    # Whether passkey ceremonies ask the authenticator to verify the user (PIN, biometrics):
    # "required" also refuses a passkey response without the UV flag; Better Auth asks
    # "preferred" and never refuses.
    passkey_user_verification: Literal["required", "preferred", "discouraged"] = "preferred"
    # POST /api/auth/change-email (Better Auth's user.changeEmail.enabled); false: 400 CHANGE_EMAIL_DISABLED.
    change_email_enabled: bool = True
    # A verified user's change of address is first confirmed from the old address (Better
    # Auth's changeEmail.sendChangeEmailConfirmation); false: only the new one is asked.
    change_email_confirm_old_address: bool = True
    # Two-factor (Better Auth's twoFactor plugin): the issuer named in the TOTP URI, how long a
    # sign-in challenge (the two_factor cookie) lives, requests to /two-factor/* per client IP
    # per window, and the lockout after that many failed codes in a row (per account).
    two_factor_issuer: str = "brain"
    two_factor_challenge_seconds: int = 600
    two_factor_rate_limit_max: int = 3
    two_factor_rate_limit_window_seconds: int = 10
    two_factor_max_failures: int = 10
    two_factor_lockout_seconds: int = 900
    # API keys (Better Auth's apiKey plugin): the default prefix (how the API tells a key from
    # a JWT in `Authorization: Bearer`), the allowed expiry range, and how many one user may hold.
    api_key_prefix: str = "brain_"
    api_key_min_expires_days: float = 1.0
    api_key_max_expires_days: float = 365.0
    api_keys_per_user: int = 100


@dataclass(frozen=True)
class SmtpSettings:
    """Where the built-in `send_auth_email` sends verification and password-reset mail."""

    # Empty: no SMTP. In dev mode the mail (and its link) is logged at WARNING instead;
    # production refuses to send (install a plugin implementing send_auth_email, or set this).
    host: str = ""
    port: int = 587
    # "starttls" (upgrade after connecting), "implicit" (TLS from the start, port 465) or "none".
    tls: Literal["none", "starttls", "implicit"] = "starttls"
    username: str = ""
    password: str = ""  # BRAIN_SMTP__PASSWORD keeps it out of files
    from_address: str = ""  # required when host is set, e.g. "brain <no-reply@example.com>"
    # PEM bundle of CAs trusted for the SMTP server's certificate. Empty: the system CAs.
    ca_file: str = ""
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class SocialSettings:
    """Social sign-in (brain.auth.social): which providers, and which of them link by email."""

    # Provider ids to offer: "google", "microsoft", "github", or the name of a [social.NAME] table
    # with a discovery_url (any OpenID Connect provider).
    providers: tuple[str, ...] = ()
    # Providers whose verified email signs in to (and links) an existing account with that email
    # (Better Auth's account.accountLinking.trustedProviders); others get account_not_linked.
    trusted_providers: tuple[str, ...] = ()
    # One table per provider ([social.google] ...): client_id, client_secret, discovery_url...
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

# A WebAuthn RP ID is a domain (the origin's host or a registrable suffix of it), lower-case.
_RP_ID = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def jwt_issuer(settings: Settings) -> str:
    """`iss` of the tokens this server mints: configured, or the auth role's public URL."""
    return str(settings.auth.issuer or settings.auth_public_url)


def validate(s: Settings) -> None:
    """Cross-field and range checks of [auth] and [smtp]; each error names the key."""
    require_positive(
        {
            "auth.jwt_ttl_seconds": s.auth.jwt_ttl_seconds,
            "auth.session_ttl_seconds": s.auth.session_ttl_seconds,
            "auth.hash_workers": s.auth.hash_workers,
            "auth.argon2_time_cost": s.auth.argon2_time_cost,
            "auth.argon2_parallelism": s.auth.argon2_parallelism,
            "auth.key_poll_seconds": s.auth.key_poll_seconds,
            "auth.max_body_bytes": s.auth.max_body_bytes,
            "auth.rate_limit_ip_per_minute": s.auth.rate_limit_ip_per_minute,
            "auth.rate_limit_account_failures": s.auth.rate_limit_account_failures,
            "auth.rate_limit_account_window_seconds": s.auth.rate_limit_account_window_seconds,
            "auth.rate_limit_max_keys": s.auth.rate_limit_max_keys,
            "auth.session_update_age_seconds": s.auth.session_update_age_seconds,
            "auth.email_verification_ttl_seconds": s.auth.email_verification_ttl_seconds,
            "auth.password_reset_ttl_seconds": s.auth.password_reset_ttl_seconds,
            "auth.email_rate_limit_per_hour": s.auth.email_rate_limit_per_hour,
            "auth.two_factor_challenge_seconds": s.auth.two_factor_challenge_seconds,
            "auth.two_factor_rate_limit_max": s.auth.two_factor_rate_limit_max,
            "auth.two_factor_rate_limit_window_seconds": s.auth.two_factor_rate_limit_window_seconds,
            "auth.two_factor_max_failures": s.auth.two_factor_max_failures,
            "auth.two_factor_lockout_seconds": s.auth.two_factor_lockout_seconds,
            "auth.api_key_min_expires_days": s.auth.api_key_min_expires_days,
            "auth.api_keys_per_user": s.auth.api_keys_per_user,
            "smtp.timeout_seconds": s.smtp.timeout_seconds,
        }
    )
    if s.auth.argon2_memory_kib < 19_456 and s.server.mode == "production":
        raise ConfigError("auth.argon2_memory_kib: production requires at least 19456 (OWASP minimum)")
    if s.auth.argon2_memory_kib < 8 * s.auth.argon2_parallelism:
        raise ConfigError("auth.argon2_memory_kib: must be at least 8 x argon2_parallelism")
    if s.auth.key_publish_delay_seconds < 0 or s.auth.jwks_max_age_seconds < 0 or s.auth.key_rotation_days < 0:
        raise ConfigError("auth.key_publish_delay_seconds, jwks_max_age_seconds, key_rotation_days: must not be negative")
    if s.auth.retired_key_keep_seconds < s.auth.jwt_ttl_seconds:
        raise ConfigError("auth.retired_key_keep_seconds: must be at least auth.jwt_ttl_seconds (tokens must keep verifying)")
    if not 8 <= s.auth.min_password_length <= s.auth.max_password_length:
        raise ConfigError("auth.min_password_length: must be at least 8 and at most max_password_length")
    if s.auth.api_key_max_expires_days < s.auth.api_key_min_expires_days:
        raise ConfigError("auth.api_key_max_expires_days: must not be below api_key_min_expires_days")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", s.auth.api_key_prefix):
        raise ConfigError("auth.api_key_prefix: 1-32 letters, digits, '_' or '-' (Better Auth's prefix rule)")
    if not s.auth.two_factor_issuer or any(ord(c) < 0x20 or c == ":" for c in s.auth.two_factor_issuer):
        raise ConfigError("auth.two_factor_issuer: must be non-empty, without ':' or control characters")
    if s.auth.passkey_rp_id and not _RP_ID.fullmatch(s.auth.passkey_rp_id):
        raise ConfigError("auth.passkey_rp_id: a host name (like example.com), without scheme, port or path")
    if not s.auth.passkey_rp_name or has_control(s.auth.passkey_rp_name):
        raise ConfigError("auth.passkey_rp_name: must be non-empty, without control characters")
    if s.auth.session_fresh_age_seconds < 0:
        raise ConfigError("auth.session_fresh_age_seconds: must not be negative (0: no freshness check)")
    if not 1 <= s.smtp.port <= 65535:
        raise ConfigError(f"smtp.port: must be a port number 1-65535, got {s.smtp.port}")
    for key in ("host", "username", "password", "from_address"):
        if any(c in getattr(s.smtp, key) for c in "\r\n\x00"):
            raise ConfigError(f"smtp.{key}: must not contain CR, LF or NUL")
    if s.smtp.host and not s.smtp.from_address:
        raise ConfigError("smtp.from_address: required when smtp.host is set")


@hookimpl
def register_settings(register: Callable[[Section], None]) -> None:
    """[auth] (checked with [smtp]), [smtp], and [social] with its [social.NAME] provider tables."""
    register(Section("auth", AuthSettings, validate=validate))
    register(Section("smtp", SmtpSettings))
    register(Section("social", SocialSettings, tables=True))
