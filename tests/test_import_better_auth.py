"""`brain import better-auth`: a database written by a real Better Auth 1.7.25 server moves into brain.

tests/js/better_auth_db.mjs runs Better Auth itself (better-sqlite3, its jwt plugin, the passkey
plugin's table) to sign users up, sign them in, mint JWTs and store passkeys; then brain imports
the file and must let the same people in with the same passwords and passkeys, keep their live
sessions (with --sessions) and accept the JWTs Better Auth already issued until they expire.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fakes.authenticator import SoftAuthenticator
from tests.support import BrainServer
from tests.test_auth_helpers import NO_LIMITS
from tests.test_auth_js import JS_DIR, npm_install
from tests.test_auth_passkeys import Browser


def better_auth_database(path: Path) -> dict[str, Any]:
    """Have Better Auth write its database at path; what it made (users, passwords, tokens)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the Better Auth import test needs node and npm")
    npm_install()
    out = subprocess.run([node, "better_auth_db.mjs", str(path)], cwd=JS_DIR, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def brain_import(server: BrainServer, source: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "brain", "import", "better-auth", str(source), "--data-dir", str(server.data_dir),
         "--json", *args],
        capture_output=True, text=True, timeout=60, cwd=server.workdir,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def counts(report: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    return {name: (t["imported"], t["unchanged"], len(t["skipped"])) for name, t in report["tables"].items()}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    path = tmp_path_factory.mktemp("better-auth") / "auth.db"
    return path, better_auth_database(path)


def test_import_then_sign_in_with_the_same_passwords_sessions_and_jwts(make_server, made) -> None:  # type: ignore[no-untyped-def]
    source, ba = made
    server = make_server(config={"auth": NO_LIMITS, "api": {"algorithms": ["RS256", "EdDSA"]}})
    server.workdir.mkdir(parents=True, exist_ok=True)

    dry = brain_import(server, source, "--dry-run", "--sessions", "--issuer", ba["baseURL"])
    assert dry["dry_run"] is True and dry["changed"] is True
    # 4 users (one with a passkey only); 3 credential accounts + 1 GitHub; 5 live sessions (sign-up and
    # sign-in) + 1 expired; 1 key; 2 passkeys.
    expected = {"user": (4, 0, 0), "account": (4, 0, 0), "session": (5, 0, 1), "verification": (0, 0, 0), "jwks": (1, 0, 0),
                "passkey": (2, 0, 0)}
    assert counts(dry) == expected
    first = brain_import(server, source, "--sessions", "--issuer", ba["baseURL"])
    assert counts(first) == expected, "the dry run wrote something, or reported what the real run did not do"
    assert [s["reason"] for s in first["tables"]["session"]["skipped"]] == ["expired"]
    again = brain_import(server, source, "--sessions", "--issuer", ba["baseURL"])
    assert again["changed"] is False
    assert counts(again) == {"user": (0, 4, 0), "account": (0, 4, 0), "session": (0, 5, 1), "verification": (0, 0, 0),
                             "jwks": (0, 1, 0), "passkey": (0, 2, 0)}

    server.start()
    # NFKC, as Better Auth hashes: Zoë's password typed precomposed is the password she chose
    # decomposed (until this first sign-in rehashes it to argon2id, which compares as typed).
    zoe = ba["users"][1]
    composed = zoe["password"].replace("e\u0301", "\u00e9")
    assert composed != zoe["password"]
    r = requests.post(f"{server.auth_url}/api/auth/sign-in/email", json={"email": zoe["email"], "password": composed}, timeout=10)
    assert r.status_code == 200, r.text
    zoe["password"] = composed
    for person in (p for p in ba["users"] if p["password"] is not None):
        for attempt in range(2):  # the Better Auth hash, then the argon2id one it was replaced with
            r = requests.post(f"{server.auth_url}/api/auth/sign-in/email",
                              json={"email": person["email"], "password": person["password"]}, timeout=10)
            assert r.status_code == 200, (person["email"], attempt, r.text)
            assert r.json()["user"]["id"] == person["id"]  # the same id: the sub of every token they hold
        wrong = requests.post(f"{server.auth_url}/api/auth/sign-in/email",
                              json={"email": person["email"], "password": person["password"] + "!"}, timeout=10)
        assert wrong.status_code == 401

    # Rehashed to argon2id at the first sign-in; the scrypt hash is gone.
    with sqlite3.connect(server.data_dir / "auth.db") as db:
        hashes = dict(db.execute("SELECT email, password_hash FROM user WHERE password_hash != ''"))
    assert len(hashes) == 3 and all(h.startswith("$argon2id$") for h in hashes.values()), hashes

    # Passkeys sign in as before (brain's RP ID is the host Better Auth used), counting on from
    # where Better Auth left their counters; Linus, who has nothing but a passkey, is not lost.
    for passkey in ba["passkeys"]:
        key = SoftAuthenticator.holding(passkey["privateKey"], passkey["credentialID"], sign_count=passkey["counter"])
        r = Browser(server).sign_in(key)
        assert r.status_code == 200 and r.json()["user"]["id"] == passkey["userId"], r.text
        if passkey["counter"]:
            clone = Browser(server).sign_in(key, sign_count=passkey["counter"])
            assert clone.status_code == 400 and clone.json()["code"] == "AUTHENTICATION_FAILED"

    # Ada verified her address in Better Auth; Grace's GitHub identity came along.
    ada = requests.post(f"{server.auth_url}/api/auth/sign-in/email",
                        json={"email": "ada@example.com", "password": "analytical engine"}, timeout=10).json()
    assert ada["user"]["emailVerified"] is True and ada["user"]["name"] == "Ada Lovelace"

    # Live Better Auth sessions still sign their holders in (their token, as the bearer plugin sends it).
    for email, token in ba["sessions"].items():
        got = requests.get(f"{server.auth_url}/api/auth/get-session", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert got.status_code == 200 and got.json()["user"]["email"] == email.lower()

    # JWTs Better Auth minted verify on brain's API role, for their own user, until they expire.
    kids = [k["kid"] for k in requests.get(f"{server.auth_url}/api/auth/jwks", timeout=10).json()["keys"]]
    assert ba["jwks"]["keys"][0]["kid"] in kids
    for email, jwt in ba["jwts"].items():
        me = requests.get(f"{server.api_url}/me", headers={"Authorization": f"Bearer {jwt}"}, timeout=10)
        assert me.status_code == 200, me.text
        assert me.json()["email"] == email.lower()
        forged = jwt[:-4] + ("AAAA" if not jwt.endswith("AAAA") else "BBBB")
        bad = requests.get(f"{server.api_url}/me", headers={"Authorization": f"Bearer {forged}"}, timeout=10)
        assert bad.status_code == 401


def test_passkeys_that_cannot_work_in_brain_are_skipped_with_the_reason(make_server, made, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    source, ba = made
    copy = tmp_path / "auth.db"
    shutil.copy(source, copy)
    ada, grace = ba["users"][0]["id"], ba["users"][2]["id"]
    with sqlite3.connect(copy) as db:
        columns = "id, name, publicKey, userId, credentialID, counter, deviceType, backedUp, transports, createdAt, aaguid"
        good_key = db.execute("SELECT publicKey FROM passkey WHERE userId = ?", (ada,)).fetchone()[0]
        ada_credential = ba["passkeys"][0]["credentialID"]
        rows = [
            ("garbage-key", "x", "bm90IGEga2V5", grace, "cred-1", 0, "singleDevice", 0, "", None, None),
            ("no-such-user", "x", good_key, "nobody", "cred-2", 0, "singleDevice", 0, "", None, None),
            ("bad-counter", "x", good_key, grace, "cred-3", -1, "singleDevice", 0, "", None, None),
            # Ada's credential under Grace: imported with Ada first, so it is Ada's in brain.
            ("taken", "x", good_key, grace, ada_credential, 0, "singleDevice", 0, "", None, None),
        ]
        db.executemany(f"INSERT INTO passkey ({columns}) VALUES ({', '.join('?' * 11)})", rows)
    server = make_server()
    server.workdir.mkdir(parents=True, exist_ok=True)
    report = brain_import(server, copy)
    assert report["tables"]["passkey"]["imported"] == 2
    assert report["tables"]["passkey"]["skipped"] == [
        {"id": "garbage-key", "reason": "its public key is not a usable COSE key"},
        {"id": "no-such-user", "reason": "its user was not imported"},
        {"id": "bad-counter", "reason": "counter -1 is not a signature count"},
        {"id": "taken", "reason": "this credential is another brain user's passkey"},
    ]


def test_not_a_better_auth_database_is_refused(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    server.workdir.mkdir(parents=True, exist_ok=True)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (id INTEGER)")
    out = subprocess.run(
        [sys.executable, "-m", "brain", "import", "better-auth", str(other), "--data-dir", str(server.data_dir)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0 and "not a Better Auth database" in out.stderr
