"""`brain check`: every database of a data directory verified, as a table.

Which databases: the files the plugins back up (`register_backup`). For each, SQLite's own
checks, read-only: `integrity` is `PRAGMA quick_check` (every page, every record), `index` is
`PRAGMA integrity_check` beyond that (every index entry matches its row). Then each plugin adds
what it knows of its own files (`check_data`): the API role its outboxes and quarantined
stores. Meant for a stopped server, safe beside a running one (nothing is written).
Exit status 1 when anything is wrong.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from brain.backup import backup_files
from brain.commands import settings_from_args
from brain.plugins.manager import load_plugins
from brain.storage import quick_check

# Verdicts that are not problems: fine, not applicable, or a figure.
OK = "ok"
NOT_APPLICABLE = "-"


@dataclass
class CheckRow:
    """One database (or a store that should be one) and the verdict of each check on it."""

    path: str  # relative to the data directory
    kind: str  # the BackupFile kind: "auth", "mail", "user", ...
    size: int
    checks: dict[str, str] = field(default_factory=dict)
    # Set by a check that found something wrong: what is wrong, in a few words.
    problems: list[str] = field(default_factory=list)

    def note(self, column: str, verdict: str, *, problem: bool = False) -> None:
        """Record a check's verdict (a problem is also listed under `problems`)."""
        self.checks[column] = verdict
        if problem:
            self.problems.append(f"{column}: {verdict}")


def sqlite_checks(path: Path) -> tuple[str, str]:
    """(quick_check verdict, integrity_check's findings beyond it) of a database, read-only."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        return f"cannot open: {exc}", NOT_APPLICABLE
    try:
        quick = quick_check(db)
        if quick != OK:
            return quick, NOT_APPLICABLE
        full = "; ".join(str(r[0]) for r in db.execute("PRAGMA integrity_check(20)"))
        return OK, full
    except sqlite3.Error as exc:
        return f"{exc}", NOT_APPLICABLE
    finally:
        db.close()


def check(data_dir: Path, pm: Any) -> list[CheckRow]:
    """Every database of the data directory, checked by SQLite and by the plugins."""
    rows: list[CheckRow] = []
    for spec in backup_files(pm):
        if not spec.database:
            continue
        for rel, path in spec.found_in(data_dir):
            row = CheckRow(rel, spec.kind, path.stat().st_size)
            integrity, index = sqlite_checks(path)
            row.note("integrity", integrity, problem=integrity != OK)
            row.note("index", index, problem=index not in (OK, NOT_APPLICABLE))
            rows.append(row)
    pm.hook.check_data(data_dir=data_dir, rows=rows)
    return rows


def table(rows: list[CheckRow]) -> str:
    """The rows as a plain-text table, one database per line."""
    columns = ["integrity", "index"] + sorted({c for r in rows for c in r.checks} - {"integrity", "index"})
    header = ["DATABASE", "SIZE", *(c.upper() for c in columns), "VERDICT"]
    body = [
        [r.path, _size(r.size), *(r.checks.get(c, NOT_APPLICABLE)[:60] for c in columns),
         "PROBLEM" if r.problems else OK]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *body]]
    bad = [r for r in rows if r.problems]
    lines.append(f"{len(rows)} databases checked, {len(bad)} with problems")
    for r in bad:
        lines.append(f"  {r.path}: " + "; ".join(r.problems))
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def check_command(args: argparse.Namespace) -> int:
    """`brain check`."""
    settings = settings_from_args(args)
    rows = check(settings.data_path, load_plugins(settings.plugins.enabled))
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(table(rows))
    return 1 if any(r.problems for r in rows) else 0
