"""Online backups and restores of a data directory.

A backup is a directory holding a consistent snapshot of every database (`auth.db`, `mail.db`,
`users/{id}/events.db`), taken with SQLite's online backup API while the server keeps running
and writing, plus `manifest.json` listing each file with its size and SHA-256. Each database is
copied in one step (a single read transaction), so it is a consistent snapshot as of the
moment its copy began; every write acknowledged before the backup started is in it.

A restore checks the manifest's checksums, copies the files into an empty data directory and
runs `PRAGMA integrity_check` on every database.

Backups and restored stores are private (0600 files in 0700 directories, `brain.files`): they
hold every user's data and, unless `--no-secret`, the dev-mode secret.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import brain
from brain.auth.deletion import REVOKED_FILE
from brain.errors import BrainError
from brain.files import private_dir, private_file
from brain.ids import is_valid_user_id

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class BackupError(BrainError):
    """A backup or restore cannot proceed; the message says why."""


@dataclass(frozen=True)
class Entry:
    """One file in a backup."""

    path: str  # relative, POSIX
    kind: str  # "auth", "mail", "user", "secret"
    size: int
    sha256: str


def databases(data_dir: Path) -> Iterator[tuple[str, str, Path]]:
    """(relative path, kind, absolute path) of every database in a data dir, auth/mail first."""
    for name, kind in (("auth.db", "auth"), ("mail.db", "mail")):
        path = data_dir / name
        if path.is_file():
            yield name, kind, path
    users = data_dir / "users"
    if users.is_dir():
        for user_dir in sorted(users.iterdir()):
            db = user_dir / "events.db"
            # Only directories named like a user id: anything else is not ours to copy.
            if is_valid_user_id(user_dir.name) and not user_dir.is_symlink() and db.is_file():
                yield f"users/{user_dir.name}/events.db", "user", db


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Progress:
    """A one-line progress bar on a terminal; plain periodic lines otherwise."""

    def __init__(self, total: int, label: str, out: TextIO | None = None, enabled: bool = True) -> None:
        self.total = max(total, 1)
        self.label = label
        self.out = out or sys.stderr
        self.enabled = enabled
        self.done = 0
        self._tty = self.out.isatty()
        self._last = 0.0

    def step(self, note: str = "") -> None:
        """Count one item done and redraw."""
        self.done += 1
        if not self.enabled:
            return
        now = time.monotonic()
        last = self.done == self.total
        if self._tty:
            width = 30
            filled = int(width * self.done / self.total)
            bar = "#" * filled + "-" * (width - filled)
            self.out.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {note[:40]:<40}")
            if last:
                self.out.write("\n")
            self.out.flush()
        elif last or now - self._last >= 1.0:
            self.out.write(f"{self.label}: {self.done}/{self.total}\n")
            self.out.flush()
            self._last = now


def _copy_database(src: Path, dst: Path) -> None:
    private_dir(dst.parent)
    # Read-only source connection: a backup must never write to (or create) a live database.
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30)
    try:
        target = sqlite3.connect(dst)
        try:
            # pages=-1 copies everything in one read transaction: a consistent snapshot even
            # while the server writes (a stepwise copy restarts on every foreign write).
            source.backup(target, pages=-1)
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    finally:
        source.close()
    private_file(dst)


def backup(
    data_dir: Path,
    dest: Path,
    *,
    include_secret: bool = True,
    progress: Callable[[int], Progress] | None = None,
) -> dict[str, Any]:
    """Snapshot every database of data_dir into dest (new or empty); return the manifest."""
    data_dir, dest = Path(data_dir).resolve(), Path(dest).resolve()
    if not data_dir.is_dir():
        raise BackupError(f"data directory not found: {data_dir}")
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"backup destination is not empty: {dest}")
    if dest == data_dir or data_dir in dest.parents:
        raise BackupError("the backup destination must be outside the data directory")
    dbs = list(databases(data_dir))
    bar = progress(len(dbs)) if progress else None
    private_dir(dest)
    started = time.time()
    entries: list[Entry] = []
    for rel, kind, src in dbs:
        target = dest / rel
        _copy_database(src, target)
        entries.append(Entry(rel, kind, target.stat().st_size, sha256_of(target)))
        if bar:
            bar.step(rel)
    revoked = data_dir / REVOKED_FILE
    if revoked.is_file():
        # Deleted users' ids, refused until their last token expires: without it a restore
        # would let a deleted user's still-valid JWT in again.
        shutil.copyfile(revoked, dest / REVOKED_FILE)
        private_file(dest / REVOKED_FILE)
        entries.append(Entry(REVOKED_FILE, "state", revoked.stat().st_size, sha256_of(dest / REVOKED_FILE)))
    secret = data_dir / "secret.key"
    if include_secret and secret.is_file():
        # Without the dev-mode secret the restored keys and OAuth tokens cannot be decrypted.
        shutil.copyfile(secret, dest / "secret.key")
        private_file(dest / "secret.key")
        entries.append(Entry("secret.key", "secret", secret.stat().st_size, sha256_of(dest / "secret.key")))
    manifest = {
        "format": FORMAT_VERSION,
        "brain_version": brain.__version__,
        "source": str(data_dir),
        "started_at": started,
        "finished_at": time.time(),
        "files": [e.__dict__ for e in entries],
        "total_bytes": sum(e.size for e in entries),
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    private_file(dest / MANIFEST)
    return manifest


def _safe_relpath(rel: str) -> Path:
    path = Path(rel)
    parts = path.parts
    ok = (
        not path.is_absolute()
        and ".." not in parts
        and (
            rel in ("auth.db", "mail.db", "secret.key", REVOKED_FILE)
            or (len(parts) == 3 and parts[0] == "users" and is_valid_user_id(parts[1]) and parts[2] == "events.db")
        )
    )
    if not ok:
        raise BackupError(f"manifest names an unexpected file: {rel!r}")
    return path


def integrity_check(path: Path) -> str:
    """SQLite's own verdict on a database file ("ok" when sound)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return "; ".join(str(r[0]) for r in rows)


def restore(
    src: Path,
    data_dir: Path,
    *,
    progress: Callable[[int], Progress] | None = None,
) -> dict[str, Any]:
    """Put a backup back into an empty data dir, verifying checksums and integrity."""
    src, data_dir = Path(src).resolve(), Path(data_dir).resolve()
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{src} is not a brain backup (no {MANIFEST})") from None
    except ValueError as exc:
        raise BackupError(f"{src / MANIFEST} is not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise BackupError(f"unsupported backup format {manifest.get('format')!r}")
    if data_dir.exists() and any(data_dir.iterdir()):
        raise BackupError(f"restore target is not empty: {data_dir} (restore only into an empty data dir)")
    files = manifest.get("files") or []
    for item in files:
        rel = _safe_relpath(str(item.get("path", "")))
        path = src / rel
        if not path.is_file():
            raise BackupError(f"backup is missing {rel}")
        if sha256_of(path) != item.get("sha256"):
            raise BackupError(f"checksum mismatch for {rel}: the backup is damaged")
    bar = progress(len(files)) if progress else None
    private_dir(data_dir)
    checked: dict[str, str] = {}
    for item in files:
        rel = _safe_relpath(item["path"])
        target = data_dir / rel
        private_dir(target.parent)
        shutil.copyfile(src / rel, target)
        private_file(target)
        if item["kind"] not in ("secret", "state"):
            verdict = integrity_check(target)
            if verdict != "ok":
                raise BackupError(f"integrity check failed for {rel}: {verdict}")
            checked[str(rel)] = verdict
        if bar:
            bar.step(str(rel))
    return {"restored": len(files), "integrity": checked, "source": str(src), "data_dir": str(data_dir)}


# Command line -------------------------------------------------------------------------------


def add_parser(sub: Any, add_config_args: Callable[[Any], None], settings_from_args: Callable[[Any], Any]) -> None:
    """Add `brain backup` and `brain restore` to the CLI."""

    def cmd_backup(args: Any) -> int:
        settings = settings_from_args(args)
        manifest = backup(
            settings.data_path,
            Path(args.dest),
            include_secret=not args.no_secret,
            progress=lambda n: Progress(n, "backup", enabled=not args.json),
        )
        if args.json:
            print(json.dumps(manifest, indent=2))
        else:
            print(f"backed up {len(manifest['files'])} files ({manifest['total_bytes']} bytes) to {args.dest}")
        return 0

    def cmd_restore(args: Any) -> int:
        settings = settings_from_args(args)
        result = restore(
            Path(args.src), settings.data_path, progress=lambda n: Progress(n, "restore", enabled=not args.json)
        )
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(f"restored {result['restored']} files into {result['data_dir']}; every database passed integrity_check")
        return 0

    bk = sub.add_parser("backup", help="take a consistent online snapshot of every database (server may run)")
    add_config_args(bk)
    bk.add_argument("dest", metavar="DEST", help="new or empty directory to write the backup to")
    bk.add_argument("--no-secret", action="store_true", help="leave the dev-mode secret.key out of the backup")
    bk.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a progress bar")
    bk.set_defaults(func=cmd_backup)

    rs = sub.add_parser("restore", help="restore a backup into an empty data dir and integrity-check it")
    add_config_args(rs)
    rs.add_argument("src", metavar="SRC", help="a directory written by `brain backup`")
    rs.add_argument("--json", action="store_true", help="print the result as JSON")
    rs.set_defaults(func=cmd_restore)
