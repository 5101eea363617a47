"""Rebuilding a user's events.db from the event stream: `brain repair --user ID`, and `api.auto_repair`.

Every committed event is on JetStream with everything its row holds (brain.api.publisher): its
id (`Brain-Event-Id`, and in the payload), type, data (the payload's `data`, as its exact
text), created_at, and its idempotency key (`Brain-Event-Key`). So a store that was lost or
quarantined (brain.api.quarantine) is rebuilt as what it always was, a materialised view of the
user's subjects — the same way a cluster rebuilds the users of a dead node. Three sources, in
order of trust:

1. the stream: every event it still holds (it keeps `nats.max_age_days` / `nats.max_bytes`);
2. a backup (`--backup`, a `brain backup` directory or a directory of them: the newest
   holding the user's store): what it has that the stream no longer does (older events);
3. the damaged file: rows that can still be read and that neither has (events committed but
   not yet published when the damage was found).

A deletion is on the stream as its tombstone (an `event.deleted` event naming the deleted id):
it becomes a tombstone again, and the event it names stays deleted though the stream still
holds it. Rows from 2 and 3 that the stream lacks go into the outbox, so they are published. Ids that no
source holds are reported as missing, by range. The new database is written beside the old
one as `events.db.repair` and renamed into place only once complete: a repair that dies
halfway leaves the user quarantined, never with half a store.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from brain.api.events import TOMBSTONE_TYPE, check_type, parse_time
from brain.api.quarantine import mark_repaired, move_aside, pending, quarantine_dir
from brain.api.user_store import SCHEMA, SCHEMA_VERSION, marker_path, store_path
from brain.commands import settings_from_args
from brain.errors import BadRequest, BrainError
from brain.nats_embedded import nats_for_command
from brain.sections import NatsSettings

log = logging.getLogger("brain.api.repair")

FETCH_BATCH = 500
FETCH_TIMEOUT = 10.0
# A damaged stretch of the b-tree is stepped over id by id; this many failures in a row end it.
SALVAGE_MAX_SKIPS = 1000
MANIFEST = "manifest.json"


class RepairError(BrainError):
    """A repair cannot be done; the message says why and what to do."""


class StreamEvent(NamedTuple):
    """One event as the stream holds it."""

    id: int
    type: str
    data: str  # the exact JSON text the store held
    created_at: str
    key: str | None


@dataclass
class StreamRead:
    """A user's events on the stream, and what the stream keeps."""

    events: list[StreamEvent]
    stream: str
    max_age_days: float
    since: str | None  # when the oldest of the user's messages still on the stream was stored
    unreadable: int = 0  # messages on the user's subjects that are not brain's events


@dataclass
class RepairReport:
    """What a repair recovered, from where, and what it could not."""

    user_id: str
    events: int = 0
    from_stream: int = 0
    from_backup: int = 0
    salvaged: int = 0
    unpublished: int = 0  # recovered rows the stream lacked: in the outbox, to be published
    missing: list[tuple[int, int]] = field(default_factory=list)  # id ranges no source holds
    missing_count: int = 0
    highest_id: int = 0
    stream: str = ""
    stream_max_age_days: float = 0.0
    stream_since: str | None = None
    backup: str | None = None
    quarantine: str | None = None
    salvage_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-able."""
        return asdict(self)

    def summary(self) -> str:
        """What an operator reads."""
        lines = [
            f"repaired the store of {self.user_id}: {self.events} events (highest id {self.highest_id})",
            f"  from the stream {self.stream}: {self.from_stream}",
        ]
        if self.backup:
            lines.append(f"  from the backup {self.backup}: {self.from_backup}")
        if self.quarantine:
            lines.append(f"  salvaged from the damaged file: {self.salvaged}"
                         + (f" ({self.salvage_errors} unreadable spots stepped over)" if self.salvage_errors else ""))
        if self.unpublished:
            lines.append(f"  {self.unpublished} of them were not on the stream: they are published now")
        if self.missing_count:
            ranges = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in self.missing[:20])
            kept = f"the stream holds this user's events since {self.stream_since}" if self.stream_since else "not on the stream"
            why = (f"older than the stream's max_age_days ({self.stream_max_age_days:g}): {kept}"
                   if self.stream_max_age_days else f"{kept} (trimmed by nats.max_bytes?)")
            lines.append(f"  MISSING: {self.missing_count} events (ids {ranges}{' ...' if len(self.missing) > 20 else ''}): "
                         f"{why} and in no backup given")
        else:
            lines.append("  nothing is missing")
        return "\n".join(lines)


# -- reading the stream ---------------------------------------------------------------------------


def parse_message(user_id: str, headers: dict[str, str] | None, payload: bytes) -> StreamEvent | None:
    """The event in one stream message of the user, or None if it is not one of brain's events."""
    try:
        body = json.loads(payload)
        event_id, etype, created_at = body["id"], body["type"], body["created_at"]
    except (ValueError, KeyError, TypeError):
        return None
    if body.get("user_id") != user_id or isinstance(event_id, bool) or not isinstance(event_id, int) or event_id < 1:
        return None
    if not isinstance(etype, str) or not isinstance(created_at, str):
        return None
    # The data's exact text: the payload is written as this frame around it (payload_for).
    head = f'{{"id":{event_id},"user_id":"{user_id}","type":"{etype}","data":'.encode()
    tail = f',"created_at":"{created_at}"}}'.encode()
    if payload.startswith(head) and payload.endswith(tail):
        data = payload[len(head): len(payload) - len(tail)].decode()
    else:
        data = json.dumps(body["data"], separators=(",", ":"), ensure_ascii=False)
    raw_key = (headers or {}).get("Brain-Event-Key")
    return StreamEvent(event_id, etype, data, created_at, None if raw_key is None else unquote(raw_key))


async def read_stream(js: Any, settings: NatsSettings, user_id: str) -> StreamRead:
    """Every event of the user on the stream, through an ephemeral consumer of their subjects."""
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=60.0, mem_storage=True,
    )
    sub = await js.pull_subscribe(f"{settings.subject_prefix}.{user_id}.>", stream=settings.stream, config=config)
    events: list[StreamEvent] = []
    unreadable = 0
    since: str | None = None
    try:
        remaining = (await sub.consumer_info()).num_pending
        while remaining > 0:
            for msg in await sub.fetch(min(FETCH_BATCH, remaining), timeout=FETCH_TIMEOUT):
                event = parse_message(user_id, msg.headers, msg.data)
                if event is None:
                    unreadable += 1
                else:
                    events.append(event)
                if since is None:
                    since = msg.metadata.timestamp.isoformat()
                remaining = msg.metadata.num_pending
    finally:
        try:
            await sub.unsubscribe()
            await js.delete_consumer(settings.stream, (await sub.consumer_info()).name)
        except Exception:  # noqa: BLE001 - the consumer goes by itself after inactive_threshold
            pass
    return StreamRead(events, settings.stream, settings.max_age_days, since, unreadable)


# -- the other sources ----------------------------------------------------------------------------


def newest_backup(path: Path, user_id: str) -> Path | None:
    """The user's events.db in a backup, or in the newest of a directory of backups that has it."""
    candidates = [path] if (path / MANIFEST).exists() else sorted(
        (p for p in path.iterdir() if (p / MANIFEST).exists()), reverse=True
    ) if path.is_dir() else []
    if not candidates:
        raise RepairError(f"{path} is neither a `brain backup` directory nor a directory of them")
    best: tuple[float, Path] | None = None
    for backup in candidates:
        try:
            manifest = json.loads((backup / MANIFEST).read_text())
        except (OSError, ValueError):
            continue
        rel = f"users/{user_id}/events.db"
        if any(item.get("path") == rel for item in manifest.get("files", [])):
            when = float(manifest.get("started_at", 0))
            if best is None or when > best[0]:
                best = (when, backup / rel)
    return None if best is None else best[1]


def _valid(row: tuple[Any, ...]) -> bool:
    """A row read from a damaged or foreign file that looks like an event brain wrote."""
    try:
        event_id, etype, data, created_at, key = row
        check_type(etype)
        json.loads(data)
        return isinstance(event_id, int) and event_id > 0 and parse_time(created_at, "created_at") == created_at and (
            key is None or isinstance(key, str))
    except (BadRequest, ValueError, TypeError):
        return False


def read_rows(path: Path) -> tuple[dict[int, tuple[str, str, str, str | None]], int]:
    """Every readable event row of a (possibly damaged) events.db, stepping over damage; (rows, spots skipped)."""
    rows: dict[int, tuple[str, str, str, str | None]] = {}
    skipped = 0
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        # A copy, so the evidence is never changed (opening a WAL database recovers it in place).
        copy = Path(scratch) / "events.db"
        for suffix in ("", "-wal"):
            if Path(f"{path}{suffix}").exists():
                shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
        try:
            db = sqlite3.connect(copy)
        except sqlite3.Error:
            return rows, 1
        try:
            after = 0
            failing = 0  # failures since the last row read
            while failing < SALVAGE_MAX_SKIPS:
                try:
                    for row in db.execute(
                        "SELECT id, type, data, created_at, key FROM events WHERE id > ? ORDER BY id", (after,)
                    ):
                        after, failing = row[0], 0
                        if _valid(row):
                            rows[row[0]] = row[1:]
                    break
                except sqlite3.DatabaseError as exc:
                    skipped += 1
                    failing += 1
                    after += 1
                    if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB":
                        break  # no header: nothing in this file can be read
            try:
                # Deletions' tombstones (schema 3), as the stream carries them: event.deleted events.
                for seq, data, deleted_at in db.execute("SELECT seq, data, deleted_at FROM tombstones ORDER BY seq"):
                    row = (seq, TOMBSTONE_TYPE, data, deleted_at, None)
                    if _valid(row) and _deleted_id(data) is not None:
                        rows[seq] = row[1:]
            except sqlite3.DatabaseError:
                skipped += 1  # damaged there, or an older store without deletions
        finally:
            db.close()
    return rows, skipped


def _deleted_id(data: str) -> int | None:
    """The id of the event a tombstone's data names (None: not a tombstone brain wrote)."""
    try:
        event_id = json.loads(data).get("id")
    except (ValueError, AttributeError):
        return None
    return event_id if isinstance(event_id, int) and not isinstance(event_id, bool) and event_id > 0 else None


def _deletions(rows: dict[int, tuple[str, str, str, str | None]]) -> dict[int, int]:
    """The tombstones among rows (type event.deleted, from the stream or a store): seq -> the deleted event's id."""
    found: dict[int, int] = {}
    for seq, (etype, data, _, _) in rows.items():
        deleted = _deleted_id(data) if etype == TOMBSTONE_TYPE else None
        if deleted is not None:
            found[seq] = deleted
    return found


# -- the rebuild -----------------------------------------------------------------------------------


@contextmanager
def repair_lock(path: Path) -> Iterator[None]:
    """One repair of a store at a time, across processes (a server's auto repair, `brain repair`)."""
    base = quarantine_dir(path)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(base / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RepairError("another repair of this store is running") from None
        yield


def rebuild(
    data_path: Path,
    user_id: str,
    stream: StreamRead,
    *,
    backup: Path | None = None,
    force: bool = False,
) -> RepairReport:
    """Write the user's events.db anew from the stream (and a backup, and what the damaged file still holds)."""
    try:
        path = store_path(data_path, user_id)
    except ValueError as exc:
        raise RepairError(str(exc)) from None
    with repair_lock(path):
        entry = pending(path)
        if path.exists():
            if not force:
                raise RepairError(f"the store of {user_id} is in place and not quarantined: nothing to repair "
                                  "(--force moves it to quarantine first; only while brain is stopped)")
            move_aside(path, user_id, "operator", "moved aside by `brain repair --force`")
            entry = pending(path)
        report = RepairReport(user_id, stream=stream.stream, stream_max_age_days=stream.max_age_days,
                              stream_since=stream.since)
        rows: dict[int, tuple[str, str, str, str | None]] = {}
        on_stream: set[int] = set()
        if backup is not None:
            found = newest_backup(backup, user_id)
            if found is not None:
                backed, _ = read_rows(found)
                rows.update(backed)
                report.backup = str(found.parent.parent.parent)
        for event in stream.events:
            rows[event.id] = (event.type, event.data, event.created_at, event.key)
            on_stream.add(event.id)
        report.from_stream = len(on_stream)
        report.from_backup = len(set(rows) - on_stream)
        if entry is not None:
            report.quarantine = entry["path"]
        # An entry without a file (a cluster node taking a user over, brain.api.handover) has nothing to salvage.
        if entry is not None and (Path(entry["path"]) / "events.db").exists():
            damaged, report.salvage_errors = read_rows(Path(entry["path"]) / "events.db")
            fresh = {i: row for i, row in damaged.items() if i not in rows}
            rows.update(fresh)
            report.salvaged = len(fresh)
        _write(path, rows, on_stream)
        tombstones = _deletions(rows)
        gone = set(tombstones.values())
        report.events = len(set(rows) - set(tombstones) - gone)
        report.unpublished = len(set(rows) - on_stream)
        report.highest_id = max(rows, default=0)
        # A deleted event's id is accounted for by its tombstone, not missing.
        report.missing = _gaps(sorted(set(rows) | gone))
        report.missing_count = sum(b - a + 1 for a, b in report.missing)
        if report.unpublished:
            marker = marker_path(data_path, user_id)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        if entry is not None:
            mark_repaired(Path(entry["path"]), report.as_dict())
    log.warning("%s", report.summary())
    return report


def _write(path: Path, rows: dict[int, tuple[str, str, str, str | None]], on_stream: set[int]) -> None:
    """The new events.db, written aside, made durable, then renamed into place."""
    scratch = path.with_name("events.db.repair")
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    os.close(os.open(scratch, os.O_WRONLY | os.O_CREAT, 0o600))
    db = sqlite3.connect(scratch, isolation_level=None)
    try:
        db.executescript(SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("BEGIN")
        # A deletion stays one: its tombstone is a tombstone again, and the event it names (which
        # the stream still holds) is not brought back.
        tombstones = _deletions(rows)
        gone = set(tombstones.values())
        db.executemany(
            "INSERT INTO events (id, type, data, created_at, key) VALUES (?, ?, ?, ?, ?)",
            ((i, *rows[i]) for i in sorted(rows) if i not in tombstones and i not in gone),
        )
        db.executemany(
            "INSERT INTO tombstones (seq, event_id, data, deleted_at) VALUES (?, ?, ?, ?)",
            ((seq, event_id, rows[seq][1], rows[seq][2]) for seq, event_id in sorted(tombstones.items())),
        )
        # The triggers put every row in the outbox: only what the stream lacks stays there.
        db.execute("DELETE FROM outbox WHERE event_id IN (SELECT value FROM json_each(?))", (json.dumps(sorted(on_stream)),))
        db.execute("COMMIT")
        verdict = db.execute("PRAGMA integrity_check").fetchone()[0]
        if verdict != "ok":
            raise RepairError(f"the rebuilt store failed its integrity check: {verdict}")
    finally:
        db.close()
    with open(scratch, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(scratch, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _gaps(ids: list[int]) -> list[tuple[int, int]]:
    """The id ranges between 1 and the highest id that are not in `ids` (sorted)."""
    out: list[tuple[int, int]] = []
    expected = 1
    for i in ids:
        if i > expected:
            out.append((expected, i - 1))
        expected = i + 1
    return out


# -- in the server: api.auto_repair ---------------------------------------------------------------


class AutoRepair:
    """Repairs quarantined stores in the server itself, one at a time, reading the stream over the bus's connection."""

    RETRY_SECONDS = 5.0

    def __init__(self, data_path: Path, read: Callable[[str], StreamRead], on_repaired: Callable[[str], None]) -> None:
        self.data_path = data_path
        self._read = read
        self._on_repaired = on_repaired
        self._lock = threading.Lock()
        self._queued: set[str] = set()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self.repaired = 0
        self.failures = 0
        self.last_report: dict[str, Any] | None = None
        self._thread = threading.Thread(target=self._run, name="brain-auto-repair", daemon=True)
        self._thread.start()

    def request(self, user_id: str) -> None:
        """Repair this user's store soon (any thread; idempotent)."""
        with self._lock:
            self._queued.add(user_id)
            self._wake.notify()

    def stop(self) -> None:
        """Repair nothing more."""
        with self._lock:
            self._stopping = True
            self._wake.notify()

    def stats(self) -> dict[str, Any]:
        """Figures for /health."""
        return {"queued": sorted(self._queued), "repaired": self.repaired, "failures": self.failures,
                "last": self.last_report}

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queued and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                user_id = min(self._queued)
            if _rebuilt_elsewhere(self.data_path, user_id):
                # Rebuilt meanwhile by another worker of the server (or `brain repair`): open it again here.
                with self._lock:
                    self._queued.discard(user_id)
                self._on_repaired(user_id)
                continue
            try:
                report = rebuild(self.data_path, user_id, self._read(user_id))
            except Exception as exc:  # noqa: BLE001 - NATS not connected yet, another repair running: later
                self.failures += 1
                log.warning("automatic repair of the store of %s failed (%r); retrying in %.0fs", user_id, exc,
                            self.RETRY_SECONDS)
                with self._lock:
                    self._wake.wait(self.RETRY_SECONDS)
                continue
            with self._lock:
                self._queued.discard(user_id)
            self.repaired += 1
            self.last_report = report.as_dict()
            self._on_repaired(user_id)


def _rebuilt_elsewhere(data_path: Path, user_id: str) -> bool:
    """Whether the user's store is out of quarantine already (a bad user id is left to `rebuild` to name)."""
    try:
        return pending(store_path(data_path, user_id)) is None
    except ValueError:
        return False


def repair_command(args: argparse.Namespace) -> int:
    """`brain repair --user ID [--backup PATH] [--force] [--json]`."""
    settings = settings_from_args(args)

    async def read(options: dict[str, Any]) -> StreamRead:
        nc = await nats.connect(**options, connect_timeout=5, allow_reconnect=False)
        try:
            return await read_stream(nc.jetstream(timeout=FETCH_TIMEOUT), settings.nats, args.user)
        finally:
            await nc.close()

    with nats_for_command(settings) as options:
        stream = asyncio.run(read(options))
    report = rebuild(settings.data_path, args.user, stream, backup=Path(args.backup) if args.backup else None,
                     force=args.force)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.summary())
    return 0


def read_stream_blocking(js: Any, loop: asyncio.AbstractEventLoop, settings: NatsSettings, user_id: str,
                         timeout: float = 300.0) -> StreamRead:
    """`read_stream` on the loop that owns the connection, waited for from another thread."""
    return asyncio.run_coroutine_threadsafe(read_stream(js, settings, user_id), loop).result(timeout)


__all__ = [
    "AutoRepair", "RepairError", "RepairReport", "StreamEvent", "StreamRead", "newest_backup",
    "parse_message", "read_rows", "read_stream", "rebuild",
]
