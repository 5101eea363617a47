"""The auth role: Better Auth-compatible sign-up/sign-in, sessions, JWT minting, JWKS.

Layout: `plugin` (everything the role adds to a process, through the core's hooks), `db`
(auth.db models), `keys` (sealed RSA key ring and its snapshot), `issuer` (the AuthIssuer actor,
sole writer), `context` (the role's per-process state), `passwords` (argon2id on a worker pool),
`validation`, `cookies`, `origins` (CORS and origin checks), `ratelimit`, `minting` (JWT
minting), `routes` (the endpoints) and `openapi` (their description), `accounts` + `emails` +
`smtp` + `account_routes` (email verification, password reset, deletion), `social` +
`social_routes` + `social_openapi` + `flows` (sign-in with Google, Microsoft, GitHub, OpenID
Connect; linked accounts), `passkeys` + `passkey_routes` + `passkey_openapi` (WebAuthn passkeys),
`deletion` (the auth side of account deletion; the core relays it),
`control` (the control socket), `cli` (declares `brain keys`, `brain users`, `brain import`;
`admin` and `importer` run them) and `hookspecs` (sign-up, JWT claims and auth email hooks).
"""

from brain.plugins.manifest import Manifest

MANIFEST = Manifest(
    name="auth",
    # The SMTP sender is an object made fresh for each process (it keeps that process's settings).
    hooks=("brain.auth.plugin", "brain.auth.smtp:SmtpMailer"),
    settings="brain.auth.settings",
    hookspecs="brain.auth.hookspecs",
    commands="brain.auth.cli",
    listener="auth",
    description="Better Auth-compatible accounts, sessions and JWTs",
)
