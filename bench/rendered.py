"""`python -m bench.rendered [SIZE...]`: an event's stored JSON copy (`rendered`) against rendering on read.

brain.api.pages keeps each event's public JSON beside its data so that a page of GET /events is
one `group_concat` of ready texts; events with data over `RENDER_INLINE_MAX` characters keep no
copy and the page query renders them as it reads. For each data size this writes 2,000 events
both ways into a fresh store file (the store's schema and page query, and its JSON expression,
`render_sql`, in a plain INSERT that stores the copy or not whatever the size; in process) and
prints the CPU time of a page of the newest 100 and the file's bytes per event. The bytes of
the two pages are compared: they must be equal.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from brain.api.pages import RENDERED, RENDER_INLINE_MAX, read_page, render_sql
from brain.api.user_store import SCHEMA

EVENTS = 2000
_WORDS = "meeting notes budget draft schedule invoice travel release design review".split()


def _store(path: Path, size: int, *, copy: bool) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    rendered = render_sql("?1", "?2", "?3", "?4") if copy else "NULL"
    insert = f"INSERT INTO events (id, type, data, created_at, key, rendered) VALUES (?1, ?2, ?3, ?4, NULL, {rendered})"
    rng = random.Random(size)
    db.execute("BEGIN")
    for i in range(EVENTS):
        text = " ".join(rng.choice(_WORDS) for _ in range(size // 6 + 1))[:size]
        data = json.dumps({"subject": "benchmark", "body_text": text}, separators=(",", ":"))
        db.execute(insert, (i + 1, "mail.message.received", data, f"2026-01-01T00:00:{i // 1000:02d}.{i % 1000:03d}000Z"))
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db


def _page_us(db: sqlite3.Connection, rendered: str, repeats: int) -> tuple[float, bytes]:
    times = []
    body = b""
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(20):
            body = read_page(db, [], [], 100, rendered).events
        times.append((time.process_time() - start) / 20 * 1e6)
    return statistics.median(times), body


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[300, 1000, 2000, 4000, 20000], help="data sizes (bytes)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    print(f"RENDER_INLINE_MAX = {RENDER_INLINE_MAX}; {EVENTS} events a store, a page of the newest 100, CPU time (median of {args.repeats})")
    print(f"{'data bytes':>10}  {'page, copy':>11}  {'page, on read':>13}  {'ratio':>5}  {'file/event, copy':>16}  {'on read':>8}")
    with tempfile.TemporaryDirectory(prefix="brain-rendered-") as tmp:
        for size in args.sizes:
            row = []
            for copy in (True, False):
                path = Path(tmp) / f"{size}-{copy}.db"
                db = _store(path, size, copy=copy)
                try:
                    us, body = _page_us(db, "rendered" if copy else RENDERED, args.repeats)
                finally:
                    db.close()
                row.append((us, body, path.stat().st_size / EVENTS))
            (copy_us, copy_body, copy_bytes), (read_us, read_body, read_bytes) = row
            if copy_body != read_body:
                raise SystemExit(f"the pages differ at {size} bytes")
            print(f"{size:>10}  {copy_us:>8.0f} us  {read_us:>10.0f} us  {read_us / copy_us:>5.2f}  {copy_bytes:>14.0f} B  {read_bytes:>6.0f} B")


if __name__ == "__main__":
    main()
