"""Online backups and restores of a data directory.

Which files a backup holds, the plugins say (`register_backup`): the auth role's `auth.db`,
mail sync's `mail.db`, the API role's `users/{id}/events.db` and `revoked-users.json`, the
core's dev-mode `secret.key`. A backup is a directory holding a consistent snapshot of every
database, taken with SQLite's online backup API while the server keeps running and writing,
plus the other files and `manifest.json` listing each file with its size and SHA-256. Each
database is copied in one step (a single read transaction), so it is a consistent snapshot as
of the moment its copy began; every write acknowledged before the backup started is in it.

A restore checks the manifest's checksums, copies the files into an empty data directory and
runs `PRAGMA integrity_check` on every database. A built-in plugin of the core (its commands:
`brain backup`, `brain restore`).

Backups and restored stores are private (0600 files in 0700 directories, `brain.files`): they
hold every user's data and, unless `--no-secret`, the dev-mode secret.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import brain
from brain.commands import CommandLine, settings_from_args
from brain.errors import BrainError
from brain.files import private_dir, private_file
from brain.ids import is_valid_user_id
from brain.plugins import hookimpl
from brain.plugins.manager import load_plugins

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class BackupError(BrainError):
    """A backup or restore cannot proceed; the message says why."""


@dataclass(frozen=True)
class BackupFile:
    """A file (or, with `*` for a user id, a family of files) of the data directory to back up.

    `database`: an SQLite file, copied with the online backup API and integrity-checked on
    restore (otherwise copied as it is). Every file is copied and restored private (0600).
    """

    path: str  # relative, POSIX; a `*` component stands for any valid user id
    kind: str
    database: bool = True

    def matches(self, rel: str) -> bool:
        """Whether a relative path is one of this entry's files."""
        parts, pattern = rel.split("/"), self.path.split("/")
        return len(parts) == len(pattern) and all(
            (is_valid_user_id(part) if want == "*" else part == want) for part, want in zip(parts, pattern)
        )

    def found_in(self, data_dir: Path) -> Iterator[tuple[str, Path]]:
        """(relative path, absolute path) of each of its files present in data_dir."""
        head, star, tail = self.path.partition("*")
        if not star:
            path = data_dir / self.path
            if path.is_file():
                yield self.path, path
            return
        parent = data_dir / head.rstrip("/")
        if not parent.is_dir():
            return
        for entry in sorted(parent.iterdir()):
            # Only directories named like a user id: anything else is not ours to copy.
            if is_valid_user_id(entry.name) and not entry.is_symlink() and (entry / tail.lstrip("/")).is_file():
                yield f"{head}{entry.name}{tail}", entry / tail.lstrip("/")


SECRET = BackupFile("secret.key", "secret", database=False)


@hookimpl
def register_backup(register: Callable[[BackupFile], None]) -> None:
    """The dev-mode server secret: without it restored keys and OAuth tokens cannot be decrypted."""
    register(SECRET)


def backup_files(pm: Any) -> list[BackupFile]:
    """Every file the plugins of `pm` back up: databases first, each group by path."""
    found: list[BackupFile] = []
    pm.hook.register_backup(register=found.append)
    return sorted(found, key=lambda f: (not f.database, f.path))


def _builtin_files() -> list[BackupFile]:
    return backup_files(load_plugins(()))


@dataclass(frozen=True)
class Entry:
    """One file in a backup."""

    path: str  # relative, POSIX
    kind: str  # "auth", "mail", "user", "secret"
    size: int
    sha256: str


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
    files: Sequence[BackupFile] | None = None,
) -> dict[str, Any]:
    """Snapshot every file data_dir holds of `files` (default: the built-in plugins') into dest."""
    data_dir, dest = Path(data_dir).resolve(), Path(dest).resolve()
    if not data_dir.is_dir():
        raise BackupError(f"data directory not found: {data_dir}")
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"backup destination is not empty: {dest}")
    if dest == data_dir or data_dir in dest.parents:
        raise BackupError("the backup destination must be outside the data directory")
    wanted = [f for f in (_builtin_files() if files is None else files) if include_secret or f.kind != SECRET.kind]
    present = [(spec, rel, src) for spec in wanted for rel, src in spec.found_in(data_dir)]
    bar = progress(sum(spec.database for spec, _, _ in present)) if progress else None
    private_dir(dest)
    started = time.time()
    entries: list[Entry] = []
    for spec, rel, src in present:
        target = dest / rel
        if spec.database:
            _copy_database(src, target)
        else:
            private_dir(target.parent)
            shutil.copyfile(src, target)
            private_file(target)
        entries.append(Entry(rel, spec.kind, target.stat().st_size, sha256_of(target)))
        if bar and spec.database:
            bar.step(rel)
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


def _spec_for(rel: str, files: Sequence[BackupFile]) -> BackupFile:
    """The entry a manifest path belongs to; anything else must never be written."""
    path = Path(rel)
    if not path.is_absolute() and ".." not in path.parts:
        for spec in files:
            if spec.matches(rel):
                return spec
    raise BackupError(f"manifest names an unexpected file: {rel!r}")


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
    files: Sequence[BackupFile] | None = None,
) -> dict[str, Any]:
    """Put a backup back into an empty data dir, verifying checksums and integrity."""
    files = _builtin_files() if files is None else files
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
    items = manifest.get("files") or []
    for item in items:
        rel = str(item.get("path", ""))
        _spec_for(rel, files)
        path = src / rel
        if not path.is_file():
            raise BackupError(f"backup is missing {rel}")
        if sha256_of(path) != item.get("sha256"):
            raise BackupError(f"checksum mismatch for {rel}: the backup is damaged")
    bar = progress(len(items)) if progress else None
    private_dir(data_dir)
    checked: dict[str, str] = {}
    for item in items:
        rel = item["path"]
        spec = _spec_for(rel, files)
        target = data_dir / rel
        private_dir(target.parent)
        shutil.copyfile(src / rel, target)
        private_file(target)
        if spec.database:
            verdict = integrity_check(target)
            if verdict != "ok":
                raise BackupError(f"integrity check failed for {rel}: {verdict}")
            checked[rel] = verdict
        if bar:
            bar.step(rel)
    return {"restored": len(items), "integrity": checked, "source": str(src), "data_dir": str(data_dir)}


# Command line -------------------------------------------------------------------------------


@hookimpl
def register_commands(cli: CommandLine) -> None:
    """`brain backup`, `brain restore` and `brain check` (brain.check): what an operator does to a data directory."""
    bk = cli.subcommands.add_parser("backup", help="take a consistent online snapshot of every database (server may run)")
    cli.add_config_args(bk)
    bk.add_argument("dest", metavar="DEST", help="new or empty directory to write the backup to")
    bk.add_argument("--no-secret", action="store_true", help="leave the dev-mode secret.key out of the backup")
    bk.add_argument("--json", action="store_true", help="print the manifest as JSON instead of a progress bar")
    cli.runs(bk, "brain.backup:backup_command")

    rs = cli.subcommands.add_parser("restore", help="restore a backup into an empty data dir and integrity-check it")
    cli.add_config_args(rs)
    rs.add_argument("src", metavar="SRC", help="a directory written by `brain backup`")
    rs.add_argument("--json", action="store_true", help="print the result as JSON")
    cli.runs(rs, "brain.backup:restore_command")

    ck = cli.subcommands.add_parser(
        "check", help="verify every database offline (integrity, indexes, outboxes, quarantined stores) as a table"
    )
    cli.add_config_args(ck)
    ck.add_argument("--json", action="store_true", help="print the findings as JSON")
    cli.runs(ck, "brain.check:check_command")


def backup_command(args: argparse.Namespace) -> int:
    """`brain backup DEST`."""
    settings = settings_from_args(args)
    manifest = backup(
        settings.data_path,
        Path(args.dest),
        include_secret=not args.no_secret,
        progress=lambda n: Progress(n, "backup", enabled=not args.json),
        files=backup_files(load_plugins(settings.plugins.enabled)),
    )
    if args.json:
        print(json.dumps(manifest, indent=2))
    else:
        print(f"backed up {len(manifest['files'])} files ({manifest['total_bytes']} bytes) to {args.dest}")
    return 0


def restore_command(args: argparse.Namespace) -> int:
    """`brain restore SRC`."""
    settings = settings_from_args(args)
    result = restore(
        Path(args.src), settings.data_path, progress=lambda n: Progress(n, "restore", enabled=not args.json),
        files=backup_files(load_plugins(settings.plugins.enabled)),
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"restored {result['restored']} files into {result['data_dir']}; every database passed integrity_check")
    return 0
