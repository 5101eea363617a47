"""Credentials at rest and the OAuth state: encrypted, bound, signed, single use."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from brain.mail.crypto import CredentialBox, InvalidState, StateSigner, derive_key, pkce_challenge
from brain.mail.db import MailDb
from brain.mail.provider import Credentials

SECRET = b"k" * 40


def test_credentials_are_encrypted_in_mail_db(tmp_path: Path) -> None:
    db = MailDb(tmp_path / "mail.db", SECRET)
    account, _ = db.upsert_account(user_id="u1", provider="gmail", address="ada@example.com")
    creds = Credentials(access_token="ya29.ACCESS-SECRET", refresh_token="1//REFRESH-SECRET", expires_at=1.0)
    db.save_credentials(account.id, creds)

    assert db.load_credentials(account.id) == creds
    db.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("mail.db"))
    assert b"REFRESH-SECRET" not in raw and b"ACCESS-SECRET" not in raw

    other = MailDb(tmp_path / "mail.db", b"another secret entirely, 32+ chars")
    with pytest.raises(ValueError, match="cannot be decrypted"):
        other.load_credentials(account.id)


def test_a_credential_blob_moved_to_another_account_does_not_open(tmp_path: Path) -> None:
    db = MailDb(tmp_path / "mail.db", SECRET)
    mine, _ = db.upsert_account(user_id="u1", provider="gmail", address="a@example.com")
    theirs, _ = db.upsert_account(user_id="u2", provider="gmail", address="b@example.com")
    db.save_credentials(mine.id, Credentials(refresh_token="mine"))
    db.save_credentials(theirs.id, Credentials(refresh_token="theirs"))
    db.close()
    with sqlite3.connect(tmp_path / "mail.db") as conn:
        (blob,) = conn.execute("SELECT blob FROM credentials WHERE account_id = ?", (mine.id,)).fetchone()
        conn.execute("UPDATE credentials SET blob = ? WHERE account_id = ?", (blob, theirs.id))
    with pytest.raises(ValueError):
        db.load_credentials(theirs.id)


def test_credential_box_rejects_tampering() -> None:
    box = CredentialBox(SECRET)
    sealed = box.seal(b"token", account_id="a1")
    assert box.open(sealed, account_id="a1") == b"token"
    flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
    for bad in (flipped, b"", b"\x02" + sealed[1:]):
        with pytest.raises(ValueError):
            box.open(bad, account_id="a1")


def test_keys_differ_by_purpose() -> None:
    assert derive_key(SECRET, "mail credentials v1") != derive_key(SECRET, "mail oauth state v1")
    assert derive_key(SECRET, "x") == derive_key(SECRET, "x")


def test_state_is_signed_bound_and_expires() -> None:
    signer = StateSigner(SECRET)
    state, nonce, expires_at = signer.sign(user_id="u1", provider="gmail", ttl=60)
    payload = signer.verify(state)
    assert payload["u"] == "u1" and payload["p"] == "gmail" and payload["n"] == nonce
    assert expires_at > time.time()

    body, mac = state.split(".")
    forged_body = body[:-2] + ("AA" if body[-2:] != "AA" else "BB")
    for bad in (f"{forged_body}.{mac}", f"{body}.{mac[:-1]}x", body, "", ".", "a.b"):
        with pytest.raises(InvalidState):
            signer.verify(bad)
    with pytest.raises(InvalidState, match="signature"):
        StateSigner(b"z" * 40).verify(state)
    expired, _, _ = signer.sign(user_id="u1", provider="gmail", ttl=-5)
    with pytest.raises(InvalidState, match="expired"):
        signer.verify(expired)


def save_flow(db: MailDb, nonce: str, *, ttl: float = 60, start_within: float = 60) -> None:
    now = time.time()
    db.save_oauth_state(
        nonce=nonce, user_id="u1", provider="gmail", expires_at=now + ttl, start_by=now + start_within,
        authorize_url=f"https://accounts.example/auth?state={nonce}",
    )


def test_oauth_flow_binds_one_browser_once_and_is_single_use(tmp_path: Path) -> None:
    db = MailDb(tmp_path / "mail.db", SECRET)
    save_flow(db, "n1")
    assert db.bind_oauth_state(nonce="n1", browser="b1") == "https://accounts.example/auth?state=n1"
    assert db.bind_oauth_state(nonce="n1", browser="b2") is None  # the connect link works once
    assert db.oauth_state_bound("n1") and db.oauth_state_pending("n1")
    assert not db.consume_oauth_state(nonce="n1", user_id="u1", provider="gmail", browser="b2")
    assert not db.consume_oauth_state(nonce="n1", user_id="u2", provider="gmail", browser="b1")
    assert not db.consume_oauth_state(nonce="n1", user_id="u1", provider="outlook", browser="b1")
    assert db.consume_oauth_state(nonce="n1", user_id="u1", provider="gmail", browser="b1")
    assert not db.consume_oauth_state(nonce="n1", user_id="u1", provider="gmail", browser="b1")
    assert not db.oauth_state_pending("n1")

    save_flow(db, "unbound")  # nobody opened its connect link: no browser can finish it
    assert not db.consume_oauth_state(nonce="unbound", user_id="u1", provider="gmail", browser="b1")
    # ...but its own user, proven by a bearer token, can.
    assert db.consume_oauth_state(nonce="unbound", user_id="u1", provider="gmail", browser=None)
    save_flow(db, "late", start_within=-1)
    assert db.bind_oauth_state(nonce="late", browser="b1") is None and not db.oauth_state_bound("late")
    save_flow(db, "old", ttl=-1)
    assert db.bind_oauth_state(nonce="old", browser="b1") is None
    assert not db.consume_oauth_state(nonce="old", user_id="u1", provider="gmail", browser=None)


def test_flows_from_before_browser_binding_are_dropped(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "mail.db") as conn:
        conn.execute(
            "CREATE TABLE oauth_states (nonce TEXT PRIMARY KEY, user_id TEXT, provider TEXT, expires_at REAL)"
        )
        conn.execute("INSERT INTO oauth_states VALUES ('n0', 'u1', 'gmail', ?)", (time.time() + 60,))
    db = MailDb(tmp_path / "mail.db", SECRET)
    assert not db.oauth_state_pending("n0")
    save_flow(db, "n1")
    assert db.bind_oauth_state(nonce="n1", browser="b1")


def test_pkce_verifier_is_derived_per_flow_from_the_secret() -> None:
    signer = StateSigner(SECRET)
    verifier = signer.code_verifier("n1")
    assert len(verifier) == 43 and verifier == signer.code_verifier("n1")  # RFC 7636: 43-128 characters
    assert verifier != signer.code_verifier("n2") != StateSigner(b"z" * 40).code_verifier("n1")
    assert pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
