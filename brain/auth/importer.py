"""`brain import better-auth PATH/auth.db`: bring a Better Auth deployment's accounts into brain.

Reads Better Auth's SQLite schema (`user`, `account`, `session`, `verification`, `jwks`, and the
passkey plugin's `passkey`) read-only
and writes auth.db in one transaction (rolled back with --dry-run, so a dry run reports exactly
what a real one would do):

- users keep their Better Auth id (it is the `sub` of every JWT they hold, and the name of their
  data directory), email, name, image, verification state and dates; the password is the
  `credential` account's scrypt hash, which brain verifies at sign-in and replaces with argon2id;
- social accounts (every other `account` row) become linked accounts, without their provider
  tokens (brain does not call providers on a user's behalf);
- live sessions, with --sessions: the token is stored as its SHA-256 like brain's own;
- `jwks` public keys become verify-only keys bound to --issuer/--audience (Better Auth's baseURL
  by default for both), published in brain's JWKS until `auth.retired_key_keep_seconds` from the
  import, so JWTs Better Auth already issued keep verifying until they expire. The private halves
  (encrypted with Better Auth's secret) are never read;
- passkeys (the passkey plugin's rows) keep their credential id, public key and signature
  counter, so they sign in to brain as they did to Better Auth — provided brain's
  `auth.passkey_rp_id` is Better Auth's `rpID` (a passkey is bound to its RP ID). A user with
  only a passkey is imported too;
- `verification` rows (emailed links, OAuth state) are short-lived and are not carried over.

Running it again changes nothing: a row that is already there is counted as unchanged, never
overwritten (a user who has since changed their password in brain keeps the new one).
"""

from __future__ import annotations

import argparse
import base64
import json
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from brain.jwk import parse_jwks
from brain.auth.cookies import token_hash
from brain.auth.db import (
    DeletedUser, ImportedKey, LinkedAccount, Passkey, Session, SigningKey, User, database, now_ms, open_db,
)
from brain.auth.passkeys import MAX_CREDENTIAL_ID, usable_public_key
from brain.auth.passwords import is_better_auth_hash
from brain.commands import settings_from_args
from brain.config import Settings
from brain.errors import ConfigError
from brain.ids import is_valid_user_id, new_id

# The Better Auth jwt plugin's key type when its `alg` column is empty (keys made before 1.3).
_DEFAULT_ALG = "EdDSA"
_MAX_EMAIL = 254
TABLES = ("user", "account", "session", "verification", "jwks", "passkey")
_DEVICE_TYPES = ("singleDevice", "multiDevice")


@dataclass
class TableReport:
    """What happened to one Better Auth table's rows."""

    imported: int = 0
    unchanged: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)

    def skip(self, row_id: str, reason: str) -> None:
        """Record a row left out, and why."""
        self.skipped.append({"id": row_id, "reason": reason})


@dataclass
class ImportReport:
    """The outcome of one import, per table."""

    source: str
    dry_run: bool
    tables: dict[str, TableReport] = field(default_factory=lambda: {name: TableReport() for name in TABLES})

    @property
    def changed(self) -> bool:
        """Whether the import wrote (or, dry, would write) anything."""
        return any(t.imported for t in self.tables.values())

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-able data."""
        return {
            "source": self.source,
            "dry_run": self.dry_run,
            "changed": self.changed,
            "tables": {
                name: {"imported": t.imported, "unchanged": t.unchanged, "skipped": t.skipped}
                for name, t in self.tables.items()
            },
        }

    def text(self) -> str:
        """The report for a person."""
        verb = "would import" if self.dry_run else "imported"
        lines = [f"Better Auth import from {self.source}" + (" (dry run: nothing written)" if self.dry_run else "")]
        for name, t in self.tables.items():
            lines.append(f"  {name:<13} {t.imported} {verb}, {t.unchanged} unchanged, {len(t.skipped)} skipped")
        skipped = [(name, s) for name, t in self.tables.items() for s in t.skipped]
        if skipped:
            lines.append("skipped:")
            lines += [f"  {name} {s['id']}: {s['reason']}" for name, s in skipped]
        if not self.changed:
            lines.append("Nothing to change: everything importable is already in brain.")
        return "\n".join(lines)


def _ms(value: Any) -> int:
    """A Better Auth date column (ISO text from the Kysely SQLite adapter, or epoch ms) in ms."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            pass
    raise ValueError(f"not a date: {value!r}")


def _read(path: Path) -> dict[str, list[dict[str, Any]]]:
    if not path.is_file():
        raise ConfigError(f"no such Better Auth database: {path}")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        present = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"user", "account"} <= present:
            raise ConfigError(f"{path}: not a Better Auth database (no user and account tables)")
        return {t: [dict(r) for r in con.execute(f'SELECT * FROM "{t}"')] if t in present else [] for t in TABLES}
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"{path}: cannot read it as SQLite: {exc}") from None
    finally:
        con.close()


class _Importer:
    def __init__(self, rows: dict[str, list[dict[str, Any]]], report: ImportReport, settings: Settings,
                 *, sessions: bool, issuer: str | None, audience: str | None) -> None:
        self.rows = rows
        self.report = report
        self.settings = settings
        self.sessions = sessions
        self.issuer = issuer
        self.audience = audience or issuer
        self.now = now_ms()
        self.users: set[str] = set()  # ids present in brain after the user pass
        self.created: set[str] = set()  # of which this run created

    def run(self) -> None:
        self._users()
        self._accounts()
        self._sessions()
        self._jwks()
        self._passkeys()
        for row in self.rows["verification"]:
            self.report.tables["verification"].skip(
                str(row.get("id")), "short-lived (emailed links, OAuth state): not carried over"
            )

    def _users(self) -> None:
        report = self.report.tables["user"]
        passwords = {
            r["userId"]: r.get("password") for r in self.rows["account"] if r.get("providerId") == "credential"
        }
        for row in self.rows["user"]:
            uid, email = row.get("id"), str(row.get("email") or "").strip().lower()
            if not is_valid_user_id(uid):
                report.skip(str(uid), "id is not a valid brain user id")
                continue
            if not email or "@" not in email or len(email) > _MAX_EMAIL:
                report.skip(uid, f"email {email!r} is not an address brain accepts")
                continue
            existing = User.get_or_none(User.id == uid)
            if existing is not None:
                if existing.email == email:
                    report.unchanged += 1
                    self.users.add(uid)
                else:
                    report.skip(uid, "this id belongs to another brain user")
                continue
            if User.select().where(User.email == email).exists():
                report.skip(uid, f"{email} already has a brain account")
                continue
            if DeletedUser.get_or_none(DeletedUser.user_id == uid) is not None:
                report.skip(uid, "this account was deleted in brain")
                continue
            password = passwords.get(uid) or ""
            if password and not is_better_auth_hash(password):
                report.skip(uid, "its password hash is not Better Auth's scrypt format")
                continue
            try:
                created, updated = _ms(row["createdAt"]), _ms(row["updatedAt"])
            except (KeyError, ValueError) as exc:
                report.skip(uid, str(exc))
                continue
            User.create(
                id=uid, email=email, name=str(row.get("name") or ""), image=row.get("image"),
                email_verified=bool(row.get("emailVerified")), password_hash=password,
                created_at=created, updated_at=updated,
            )
            report.imported += 1
            self.users.add(uid)
            self.created.add(uid)

    def _accounts(self) -> None:
        report = self.report.tables["account"]
        for row in self.rows["account"]:
            row_id, provider, account_id, uid = (str(row.get(k)) for k in ("id", "providerId", "accountId", "userId"))
            if provider == "credential":
                # The password travelled with its user; nothing else to bring.
                if uid not in self.users:
                    report.skip(row_id, "its user was not imported")
                elif uid in self.created:
                    report.imported += 1
                else:
                    report.unchanged += 1
                continue
            if uid not in self.users:
                report.skip(row_id, "its user was not imported")
                continue
            existing = LinkedAccount.get_or_none(
                (LinkedAccount.provider_id == provider) & (LinkedAccount.account_id == account_id)
            )
            if existing is not None:
                if existing.user_id == uid:  # type: ignore[attr-defined]
                    report.unchanged += 1
                else:
                    report.skip(row_id, f"this {provider} identity is linked to another brain user")
                continue
            taken = LinkedAccount.get_or_none(LinkedAccount.id == row_id) is not None
            LinkedAccount.create(
                id=new_id() if taken else row_id, user=uid, provider_id=provider, account_id=account_id,
                scope=str(row.get("scope") or ""), created_at=_ms(row["createdAt"]), updated_at=_ms(row["updatedAt"]),
            )
            report.imported += 1

    def _sessions(self) -> None:
        report = self.report.tables["session"]
        for row in self.rows["session"]:
            row_id, uid, token = str(row.get("id")), str(row.get("userId")), row.get("token")
            if not self.sessions:
                report.skip(row_id, "sessions are imported only with --sessions")
                continue
            if uid not in self.users:
                report.skip(row_id, "its user was not imported")
                continue
            try:
                expires = _ms(row["expiresAt"])
            except (KeyError, ValueError) as exc:
                report.skip(row_id, str(exc))
                continue
            if expires <= self.now:
                report.skip(row_id, "expired")
                continue
            if not isinstance(token, str) or not token:
                report.skip(row_id, "no token")
                continue
            if Session.get_or_none(Session.token_hash == token_hash(token)) is not None:
                report.unchanged += 1
                continue
            taken = Session.get_or_none(Session.id == row_id) is not None
            Session.create(
                id=new_id() if taken else row_id, token_hash=token_hash(token), user=uid, expires_at=expires,
                ip_address=str(row.get("ipAddress") or ""), user_agent=str(row.get("userAgent") or ""),
                remember=True, created_at=_ms(row["createdAt"]), updated_at=_ms(row["updatedAt"]),
            )
            report.imported += 1

    def _jwks(self) -> None:
        report = self.report.tables["jwks"]
        keep_ms = self.settings.auth.retired_key_keep_seconds * 1000
        for row in self.rows["jwks"]:
            kid = str(row.get("id"))
            if self.issuer is None:
                report.skip(kid, "pass --issuer (Better Auth's baseURL, the iss of its JWTs) to import its keys")
                continue
            try:
                public = json.loads(row.get("publicKey") or "")
            except ValueError:
                public = None
            if not isinstance(public, dict):
                report.skip(kid, "publicKey is not a JWK")
                continue
            jwk = {**public, "alg": row.get("alg") or _DEFAULT_ALG, "kid": kid}
            if row.get("crv") and "crv" not in jwk:
                jwk["crv"] = row["crv"]
            jwk.pop("d", None)  # only ever the public half
            usable, problems = parse_jwks({"keys": [jwk]})
            if not usable:
                report.skip(kid, problems[0].split(": ", 1)[-1] if problems else "not a usable public key")
                continue
            if row.get("expiresAt") and _ms(row["expiresAt"]) <= self.now:
                report.skip(kid, "Better Auth had already expired it")
                continue
            if ImportedKey.get_or_none(ImportedKey.kid == kid) is not None:
                report.unchanged += 1
                continue
            if SigningKey.get_or_none(SigningKey.kid == kid) is not None:
                report.skip(kid, "a brain signing key has this kid")
                continue
            ImportedKey.create(
                kid=kid, public_jwk=json.dumps(jwk, separators=(",", ":")), issuer=self.issuer,
                audience=self.audience, imported_at=self.now, expires_at=self.now + keep_ms,
            )
            report.imported += 1

    def _passkeys(self) -> None:
        report = self.report.tables["passkey"]
        for row in self.rows["passkey"]:
            row_id, uid, credential_id = str(row.get("id")), str(row.get("userId")), row.get("credentialID")
            if uid not in self.users:
                report.skip(row_id, "its user was not imported")
                continue
            public_key = _standard_base64(row.get("publicKey"))
            counter = row.get("counter")
            if not isinstance(credential_id, str) or not 0 < len(credential_id) <= MAX_CREDENTIAL_ID:
                report.skip(row_id, "no credential id")
                continue
            if public_key is None or not usable_public_key(base64.b64decode(public_key)):
                report.skip(row_id, "its public key is not a usable COSE key")
                continue
            if not isinstance(counter, int) or isinstance(counter, bool) or not 0 <= counter < 2**32:
                report.skip(row_id, f"counter {counter!r} is not a signature count")
                continue
            try:
                created = _ms(row["createdAt"]) if row.get("createdAt") else self.now
            except ValueError as exc:
                report.skip(row_id, str(exc))
                continue
            existing = Passkey.get_or_none(Passkey.credential_id == credential_id)
            if existing is not None:
                if existing.user_id == uid:  # type: ignore[attr-defined]
                    report.unchanged += 1
                else:
                    report.skip(row_id, "this credential is another brain user's passkey")
                continue
            taken = Passkey.get_or_none(Passkey.id == row_id) is not None
            device_type = row.get("deviceType")
            Passkey.create(
                id=new_id() if taken else row_id, user=uid, name=row.get("name") or None, credential_id=credential_id,
                public_key=public_key, counter=counter,
                device_type=device_type if device_type in _DEVICE_TYPES else "singleDevice",
                backed_up=bool(row.get("backedUp")), transports=str(row.get("transports") or ""),
                aaguid=row.get("aaguid") or None, created_at=created,
            )
            report.imported += 1


def _standard_base64(value: Any) -> str | None:
    """A key column in standard base64 (Better Auth writes it so, and reads base64url too); None if it is neither."""
    if not isinstance(value, str) or not value:
        return None
    for altchars in (b"+/", b"-_"):
        try:
            data = base64.b64decode(value + "=" * (-len(value) % 4), altchars=altchars, validate=True)
        except ValueError:
            continue
        return base64.b64encode(data).decode()
    return None


def import_better_auth(
    source: Path,
    settings: Settings,
    *,
    dry_run: bool = False,
    sessions: bool = False,
    issuer: str | None = None,
    audience: str | None = None,
) -> ImportReport:
    """Import a Better Auth SQLite database into auth.db (rolled back when dry_run); the report."""
    rows = _read(source)
    report = ImportReport(source=str(source), dry_run=dry_run)
    db = open_db(settings.data_path / "auth.db")
    try:
        with database.atomic("IMMEDIATE") as txn:
            _Importer(rows, report, settings, sessions=sessions, issuer=issuer, audience=audience).run()
            if dry_run:
                txn.rollback()
    finally:
        db.close()
    return report


def import_command(args: argparse.Namespace) -> int:
    """`brain import better-auth PATH`: import, then print the report."""
    report = import_better_auth(
        args.path, settings_from_args(args), dry_run=args.dry_run, sessions=args.sessions,
        issuer=args.issuer, audience=args.audience,
    )
    print(json.dumps(report.as_json()) if args.json else report.text())
    return 0
