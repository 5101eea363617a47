"""Helpers shared by the reliability, security and soak tests (no tests here).

- `WriteLoad`: threads that post events for many users as fast as the server takes them, through
  crashes and restarts, remembering which writes were acknowledged (2xx) and which were not;
  `check_events` then proves every acknowledged event is stored exactly once.
- `Chaos`: crashes actors inside a running `brain serve` through tests/plugins/chaos_plugin.py.
- Snapshots of a data directory, `PRAGMA integrity_check` over every database, paging through
  `GET /events` and JetStream as a consumer sees it.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from brain.ids import is_valid_user_id
from tests.support import REPO, BrainServer, wait_until
from tests.test_auth_helpers import NO_LIMITS, bearer, new_user

CHAOS_DIST = REPO / "tests" / "plugins" / "chaos_dist"


def soak_scale(default: float = 1.0) -> float:
    """How much longer the soak run should go than its defaults (env SOAK_SCALE)."""
    return float(os.environ.get("SOAK_SCALE", default))


# -- users -------------------------------------------------------------------------------


@dataclass
class User:
    """A signed-up user: id, JWT for the API, session token for the auth role."""

    id: str
    jwt: str
    token: str
    email: str

    @classmethod
    def sign_up(cls, server: BrainServer) -> User:
        body = new_user(server)
        return cls(body["user"]["id"], body["jwt"], body["token"], body["user"]["email"])

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.jwt)


def sign_up_many(server: BrainServer, n: int) -> list[User]:
    """n fresh users."""
    return [User.sign_up(server) for _ in range(n)]


def wait_api_ready(server: BrainServer, timeout: float = 30.0) -> dict[str, Any]:
    """Wait until /health answers with the issuer's keys loaded; the health document."""

    def ready() -> dict[str, Any] | None:
        try:
            body = server.health()
        except (requests.RequestException, ValueError, AssertionError):
            return None
        return body if body.get("jwks", {}).get("loaded") else None

    return wait_until(ready, timeout=timeout, what="the API with keys loaded")


def api_get(server: BrainServer, path: str, user: User, **params: Any) -> requests.Response:
    """GET on the API as user, waiting out the 503s of a (re)starting server."""
    deadline = time.monotonic() + 20
    while True:
        r = requests.get(server.api_url + path, params=params, headers=user.headers, timeout=30)
        if r.status_code != 503 or time.monotonic() > deadline:
            return r
        time.sleep(0.1)


def all_events(server: BrainServer, user: User, **params: Any) -> list[dict[str, Any]]:
    """Every stored event of user (GET /events, every page), oldest first."""
    out: list[dict[str, Any]] = []
    query: dict[str, Any] = {"limit": 1000, **params}
    for _ in range(10_000):
        r = api_get(server, "/events", user, **query)
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["events"]
        if not page["next_cursor"]:
            return sorted(out, key=lambda e: e["id"])
        query["cursor"] = page["next_cursor"]
    raise AssertionError("paging did not end")


# -- write load ------------------------------------------------------------------------------


@dataclass
class Write:
    """One POST /events: the markers of its events (several for a batch) and its outcome."""

    user: str
    markers: list[str]
    key: str | None
    batch: bool
    acked: bool = False
    ids: list[int] = field(default_factory=list)


class WriteLoad:
    """Threads posting events for users until stopped; a write counts only when answered 201.

    A third of the writes are batches (stored atomically), a third carry an Idempotency-Key and
    are retried until acknowledged (so they must end up stored exactly once, even when a crash
    ate the first answer). Connection errors and 503s (a server restarting) are expected and
    simply leave a write unacknowledged; anything else is recorded in `errors`.
    """

    def __init__(self, url: str, users: list[User], *, threads: int = 6, seed: int = 0, pause: float = 0.0) -> None:
        self.url = url
        self.users = users
        self.threads = threads
        self.pause = pause
        self.rng = random.Random(seed)
        self.writes: list[Write] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._workers: list[threading.Thread] = []

    def start(self) -> WriteLoad:
        for i in range(self.threads):
            seed = self.rng.randrange(1 << 30)
            t = threading.Thread(target=self._run, args=(i, seed), name=f"writer-{i}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def stop(self) -> None:
        """Stop every writer (each finishes the request it is in)."""
        self._stop.set()
        for t in self._workers:
            t.join(timeout=60)
            assert not t.is_alive(), f"{t.name} did not stop"
        self._workers.clear()

    @property
    def acked_count(self) -> int:
        with self._lock:
            return sum(len(w.markers) for w in self.writes if w.acked)

    def wait_acked(self, n: int, timeout: float = 30.0) -> None:
        """Block until at least n more events are acknowledged than now."""
        target = self.acked_count + n
        wait_until(lambda: self.acked_count >= target, timeout=timeout, what=f"{n} acknowledged writes")

    def settle(self, timeout: float = 60.0) -> None:
        """Retry every unacknowledged idempotent write until the server acknowledges it."""
        session = requests.Session()
        deadline = time.monotonic() + timeout
        for write in [w for w in self.writes if w.key is not None and not w.acked]:
            while not self._post(session, write):
                assert time.monotonic() < deadline, f"idempotent write {write.key} never acknowledged"
                time.sleep(0.1)

    def _run(self, index: int, seed: int) -> None:
        rng = random.Random(seed)
        session = requests.Session()
        retry: Write | None = None
        while not self._stop.is_set():
            write = retry or self._new_write(rng, index)
            retry = None
            if not self._post(session, write) and write.key is not None:
                retry = write  # an idempotent write is retried until acknowledged
            if not write.acked:
                time.sleep(0.05)  # the server is down or restarting: do not spin
            elif self.pause:
                time.sleep(self.pause)

    def _new_write(self, rng: random.Random, index: int) -> Write:
        user = rng.choice(self.users)
        n = next(self._seq)
        kind = rng.random()
        batch = kind < 0.33
        size = rng.randint(2, 6) if batch else 1
        marker = f"w{index}-{n}"
        write = Write(
            user=user.id,
            markers=[f"{marker}#{i}" for i in range(size)] if batch else [marker],
            key=f"k-{uuid.uuid4().hex}" if 0.33 <= kind < 0.66 else None,
            batch=batch,
        )
        with self._lock:
            self.writes.append(write)
        return write

    def _post(self, session: requests.Session, write: Write) -> bool:
        user = next(u for u in self.users if u.id == write.user)
        events = [{"type": "load.write", "data": {"m": m, "owner": user.id}} for m in write.markers]
        headers = dict(user.headers)
        if write.key is not None:
            headers["Idempotency-Key"] = write.key
        try:
            r = session.post(f"{self.url}/events", json=events if write.batch else events[0], headers=headers, timeout=15)
        except requests.RequestException:
            return False
        if r.status_code == 201:
            body = r.json()
            stored = body["events"] if write.batch else [body]
            with self._lock:
                write.acked = True
                write.ids = [e["id"] for e in stored]
            if [e["data"]["m"] for e in stored] != write.markers:
                self.errors.append(f"answer does not match the write: {write.markers} -> {body}")
            return True
        if r.status_code != 503:
            self.errors.append(f"POST /events {r.status_code}: {r.text[:300]}")
        return False


def check_events(load: WriteLoad, stored: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Problems with what is stored, given what the load wrote (empty: all promises kept).

    Acknowledged events: present exactly once, under the id the answer gave. Unacknowledged
    ones (a crash ate the answer): at most once, and a batch all or nothing. Nothing else, and
    nothing of another user, in anyone's store.
    """
    problems: list[str] = []
    known = {w.user for w in load.writes} | set(stored)
    for user_id in known:
        events = stored.get(user_id, [])
        counts = Counter(e["data"]["m"] for e in events if e["type"] == "load.write")
        by_marker = {e["data"]["m"]: e for e in events if e["type"] == "load.write"}
        owners = {e["data"]["owner"] for e in events if e["type"] == "load.write"}
        if owners - {user_id}:
            problems.append(f"{user_id}: holds events of {owners - {user_id}}")
        written: set[str] = set()
        for w in (w for w in load.writes if w.user == user_id):
            written.update(w.markers)
            present = [m for m in w.markers if counts[m]]
            if w.acked:
                for m, event_id in zip(w.markers, w.ids):
                    if counts[m] != 1:
                        problems.append(f"{user_id}: acknowledged {m} stored {counts[m]} times")
                    elif by_marker[m]["id"] != event_id:
                        problems.append(f"{user_id}: {m} answered as id {event_id}, stored as {by_marker[m]['id']}")
            else:
                if any(counts[m] > 1 for m in w.markers):
                    problems.append(f"{user_id}: unacknowledged {w.markers} stored more than once")
                if w.batch and present and len(present) != len(w.markers):
                    problems.append(f"{user_id}: half a batch stored: {present} of {w.markers}")
        if set(counts) - written:
            problems.append(f"{user_id}: events nobody wrote: {sorted(set(counts) - written)[:5]}")
    return problems


# -- databases and files ---------------------------------------------------------------------------


def databases(data_dir: Path) -> list[Path]:
    """Every SQLite database brain keeps in data_dir (auth, mail, each user's events)."""
    found = [p for p in (data_dir / "auth.db", data_dir / "mail.db") if p.exists()]
    users = data_dir / "users"
    if users.exists():
        found += sorted(users.glob("*/events.db"))
    return found


def integrity_problems(data_dir: Path) -> list[str]:
    """`PRAGMA integrity_check` of every database (opened read-write, so a WAL is recovered)."""
    problems = []
    for path in databases(data_dir):
        db = sqlite3.connect(path, timeout=10)
        try:
            result = [row[0] for row in db.execute("PRAGMA integrity_check")]
        except sqlite3.DatabaseError as exc:
            result = [str(exc)]
        finally:
            db.close()
        if result != ["ok"]:
            problems.append(f"{path}: {result[:5]}")
    return problems


def files_under(root: Path) -> set[str]:
    """Every file below root, as paths relative to it."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def unexpected_files(workdir: Path, data_dir: Path, before: set[str], user_ids: Iterable[str]) -> list[str]:
    """Files that appeared under workdir and are not where brain may create them.

    Allowed: data/users/<a real user's id>/events.db (-wal, -shm), data/outbox/<user id>
    markers, the embedded NATS store (data/nats/), and the server's own log and config.
    """
    users = set(user_ids)
    data_rel = data_dir.relative_to(workdir)
    out = []
    for rel in sorted(files_under(workdir) - before):
        parts = Path(rel).parts
        inside = parts[: len(data_rel.parts)] == data_rel.parts
        tail = parts[len(data_rel.parts):] if inside else parts
        if inside and len(tail) == 3 and tail[0] == "users" and tail[1] in users and tail[2] in (
            "events.db", "events.db-wal", "events.db-shm"
        ):
            continue
        if inside and len(tail) == 2 and tail[0] == "outbox" and is_valid_user_id(tail[1]) and tail[1] in users:
            continue
        if inside and tail and tail[0] == "nats":
            continue
        if not inside and tail in (("brain.log",), ("brain.toml",)):
            continue
        out.append(rel)
    return out


# -- JetStream ------------------------------------------------------------------------------------


def stream_ids(server: BrainServer) -> Counter[str]:
    """How often each Nats-Msg-Id ("user:id") is on the server's stream, as a consumer reads it."""
    from tests.test_jetstream import stream_messages

    url = server.nats_url()
    return Counter(m.headers["Nats-Msg-Id"] for m in stream_messages(url, "brain.events.>"))


def wait_outbox_empty(server: BrainServer, timeout: float = 60.0) -> None:
    """Wait until the bus has nothing left to publish (no queued events, no dirty users)."""

    def drained() -> bool:
        nats = server.health()["nats"]
        return bool(nats.get("connected")) and not (nats.get("queued") or nats.get("in_flight") or nats.get("dirty_users"))

    wait_until(drained, timeout=timeout, interval=0.2, what="the outbox to drain")


# -- chaos -----------------------------------------------------------------------------------------


class Chaos:
    """Crash actors inside a running server (see tests/plugins/chaos_plugin.py)."""

    PLUGINS = "gmail,outlook,chaos"

    @staticmethod
    def env() -> dict[str, str]:
        return {
            "BRAIN_PLUGINS__ENABLED": Chaos.PLUGINS,
            "PYTHONPATH": os.pathsep.join([str(CHAOS_DIST), str(REPO)]),
        }

    @staticmethod
    def config() -> dict[str, Any]:
        return {"chaos": {"control_dir": "chaos"}}

    def __init__(self, server: BrainServer) -> None:
        self.dir = server.workdir / "chaos"
        self._seq = itertools.count()

    def crash(self, actor_class: str, count: int = 1, timeout: float = 10.0) -> int:
        """Crash up to count live actors of actor_class; how many were crashed."""
        name = f"order-{os.getpid()}-{next(self._seq)}"
        tmp = self.dir / f"{name}.tmp"
        tmp.write_text(json.dumps({"crash": actor_class, "count": count}))
        os.replace(tmp, self.dir / f"{name}.json")
        done = self.dir / f"{name}.done"
        wait_until(done.exists, timeout=timeout, interval=0.02, what=f"the chaos plugin to crash {actor_class}")
        return json.loads(done.read_text())["crashed"]


def chaos_server(workdir: Path, **kwargs: Any) -> BrainServer:
    """A BrainServer (not started) with the chaos plugin enabled."""
    config = {"auth": dict(NO_LIMITS), "plugins": Chaos.config()}
    for section, table in kwargs.pop("config", {}).items():
        config.setdefault(section, {}).update(table)
    env = {**Chaos.env(), **kwargs.pop("env", {})}
    return BrainServer(workdir, config=config, env=env, **kwargs)


def health(server: BrainServer) -> dict[str, Any]:
    """The API's detailed /health document."""
    return server.health()


def pick(rng: random.Random, items: list[Any]) -> Any:
    """rng.choice, typed."""
    return items[rng.randrange(len(items))]


def chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    """items in lists of n."""
    for i in range(0, len(items), n):
        yield items[i: i + n]
