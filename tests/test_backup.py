"""brain backup / restore: consistent online snapshots, manifest, integrity, refusals."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from brain.backup import BackupError, backup, integrity_check, restore
from tests.support import BrainServer
from tests.test_auth_helpers import bearer, new_user

USERS = ["alice0000000000000000000000000001", "bob00000000000000000000000000002"]


def make_store(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, type TEXT NOT NULL, data TEXT NOT NULL)")
    return conn


def brain_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAIN_")}
    return subprocess.run([sys.executable, "-m", "brain", *args], capture_output=True, text=True, timeout=60, env=env)


def test_backup_under_write_load_keeps_every_acknowledged_row(tmp_path: Path) -> None:
    data = tmp_path / "data"
    conns = {u: make_store(data / "users" / u / "events.db") for u in USERS}
    auth = make_store(data / "auth.db")
    auth.execute("INSERT INTO events (type, data) VALUES ('user', '{}')")
    (data / "secret.key").write_text("s" * 48)
    (data / "revoked-users.json").write_text('{"gone": 1}')
    acknowledged: dict[str, int] = {u: 0 for u in USERS}
    stop = threading.Event()

    def writer(user: str) -> None:
        conn = conns[user]
        while not stop.is_set():
            conn.execute("INSERT INTO events (type, data) VALUES ('t', ?)", ("x" * 200,))
            acknowledged[user] += 1  # committed (autocommit) before we count it

    threads = [threading.Thread(target=writer, args=(u,)) for u in USERS]
    for t in threads:
        t.start()
    time.sleep(0.3)
    before = dict(acknowledged)
    manifest = backup(data, tmp_path / "bk")
    stop.set()
    for t in threads:
        t.join()

    names = {f["path"] for f in manifest["files"]}
    assert names == {"auth.db", "secret.key", "revoked-users.json", *(f"users/{u}/events.db" for u in USERS)}
    restored = tmp_path / "restored"
    result = restore(tmp_path / "bk", restored)
    assert set(result["integrity"].values()) == {"ok"}
    for user in USERS:
        db = restored / "users" / user / "events.db"
        count = sqlite3.connect(db).execute("SELECT count(*) FROM events").fetchone()[0]
        assert count >= before[user] > 0
        assert integrity_check(db) == "ok"
    assert (restored / "secret.key").stat().st_mode & 0o777 == 0o600
    assert (restored / "revoked-users.json").read_text() == '{"gone": 1}'


def test_restore_refuses_a_non_empty_target_and_damaged_backups(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_store(data / "users" / USERS[0] / "events.db").execute("INSERT INTO events (type, data) VALUES ('a', 'b')")
    backup(data, tmp_path / "bk")
    with pytest.raises(BackupError, match="not empty"):
        restore(tmp_path / "bk", data)
    with pytest.raises(BackupError, match="not empty"):
        backup(data, tmp_path / "bk")
    with pytest.raises(BackupError, match="outside the data directory"):
        backup(data, data / "inside")
    db = tmp_path / "bk" / "users" / USERS[0] / "events.db"
    db.write_bytes(db.read_bytes()[:-10] + b"corruption")
    with pytest.raises(BackupError, match="checksum mismatch"):
        restore(tmp_path / "bk", tmp_path / "r1")
    with pytest.raises(BackupError, match="not a brain backup"):
        restore(tmp_path, tmp_path / "r2")


def test_restore_refuses_paths_outside_the_data_dir(tmp_path: Path) -> None:
    bk = tmp_path / "bk"
    bk.mkdir()
    (bk / "evil").write_text("x")
    (bk / "manifest.json").write_text(json.dumps({"format": 1, "files": [{"path": "../evil", "kind": "user", "sha256": ""}]}))
    with pytest.raises(BackupError, match="unexpected file"):
        restore(bk, tmp_path / "r")
    assert not (tmp_path / "evil").exists() or (tmp_path / "evil").read_text() == "x"


def test_backup_skips_directories_that_are_not_user_ids(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_store(data / "users" / USERS[0] / "events.db")
    make_store(data / "users" / ".." / "x" / "events.db")  # data/x/events.db: not under users/
    make_store(data / "users" / "bad.name" / "events.db")
    manifest = backup(data, tmp_path / "bk")
    assert [f["path"] for f in manifest["files"]] == [f"users/{USERS[0]}/events.db"]


def test_cli_backup_and_restore(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_store(data / "users" / USERS[1] / "events.db").execute("INSERT INTO events (type, data) VALUES ('a', 'b')")
    out = brain_cli("backup", "--data-dir", str(data), str(tmp_path / "bk"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["files"][0]["path"] == f"users/{USERS[1]}/events.db"
    out = brain_cli("restore", "--data-dir", str(tmp_path / "new"), str(tmp_path / "bk"))
    assert out.returncode == 0, out.stderr
    assert "integrity_check" in out.stdout
    out = brain_cli("restore", "--data-dir", str(tmp_path / "new"), str(tmp_path / "bk"))
    assert out.returncode == 2 and "not empty" in out.stderr


def open_to_others(root: Path) -> list[str]:
    """Everything under root (root included) that its group or other users could read or enter."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {oct(mode & 0o777)}")
    return found


def test_stores_secrets_backups_and_restores_are_private(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: BrainServer = make_server().start()
    body = new_user(server)
    r = requests.post(f"{server.api_url}/events", json={"type": "note.created", "data": {"secret": 1}},
                      headers=bearer(body["jwt"]), timeout=10)
    assert r.status_code == 201, r.text
    data, user_dir = server.data_dir, server.data_dir / "users" / body["user"]["id"]
    # While it runs: the databases, SQLite's -wal/-shm beside them, the secret, the NATS store.
    for name in ("auth.db", "auth.db-wal", "auth.db-shm", "mail.db", "secret.key"):
        assert (data / name).is_file(), name
    assert (user_dir / "events.db-wal").is_file() and (user_dir / "events.db-shm").is_file()
    assert open_to_others(data) == []

    out = brain_cli("backup", "--data-dir", str(data), str(tmp_path / "bk"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "bk" / "secret.key").is_file()
    assert open_to_others(tmp_path / "bk") == []
    assert server.stop() == 0

    out = brain_cli("restore", "--data-dir", str(tmp_path / "restored"), str(tmp_path / "bk"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "restored" / "users" / body["user"]["id"] / "events.db").is_file()
    assert open_to_others(tmp_path / "restored") == []
    # The restored store serves, and stays private with the -wal/-shm files it gets again.
    restored: BrainServer = make_server(  # on the same ports: the JWT's issuer is the old auth URL
        "second", data_dir=tmp_path / "restored", auth_port=server.auth_port, api_port=server.api_port,
    ).start()
    r = requests.get(f"{restored.api_url}/events", headers=bearer(body["jwt"]), timeout=10)
    assert r.status_code == 200 and r.json()["events"][0]["data"] == {"secret": 1}, r.text
    assert (tmp_path / "restored" / "users" / body["user"]["id"] / "events.db-wal").is_file()
    assert open_to_others(tmp_path / "restored") == []
