"""Private files: what brain writes into a data directory or a backup is its own user's alone.

Every `brain` command runs under umask 077 (`use_private_umask`, first thing in `brain.cli.main`),
so whatever it creates is 0600 in 0700 directories: databases, SQLite's -wal and -shm files
(SQLite gives them the database's mode), the embedded nats-server's store (a child inherits the
umask), backups and restored stores. The helpers below also tighten what existed before (a data
directory made by hand or by an older brain) and set the modes explicitly where brain's
functions may be called without the CLI's umask (tests, other programs).
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600
# The files of a data directory that hold secrets or every user's accounts, with SQLite's own.
SENSITIVE_FILES = tuple(
    f"{name}{suffix}" for name in ("auth.db", "mail.db") for suffix in ("", "-wal", "-shm", "-journal")
) + ("secret.key",)


def use_private_umask() -> None:
    """From now on this process creates files 0600 and directories 0700."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) 0700, or tighten it to 0700 if it exists; the path."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> None:
    """Make an existing file 0600."""
    if path.stat().st_mode & 0o777 != FILE_MODE:
        os.chmod(path, FILE_MODE)


def secure_data_dir(data_path: Path) -> None:
    """The data directory 0700 and its sensitive files 0600 (they may predate the umask)."""
    private_dir(data_path)
    for name in SENSITIVE_FILES:
        path = data_path / name
        if path.is_file() and not path.is_symlink():
            private_file(path)
