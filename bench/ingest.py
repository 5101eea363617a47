"""Mail ingest: messages per second through an initial sync.

Two figures. The target is judged on the instant provider (bench/instant_provider.py), a fake
provider that answers at once with no I/O: brain's own pipeline — sync actor, checkpoints,
events in the user's store, outbox. Beside it, the Gmail plugin against the fake Gmail server
(brain/testing/fakes/gmail.py) with quota pacing lifted: the same pipeline plus google-api-python-client
and its batch MIME handling, which dominate there. The clock runs from the connect request
until `/mail/status` reports the initial sync complete with every message synced, or until a
time cap, in which case the rate is over the messages synced by then. It then goes on until the
user's `mail.message.received` events are all in the JetStream stream (published from the
outbox after each commit): the second clock, end to end.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.client import KeepAliveClient, expect
from bench.servers import cpu_utilisation, proc_sample, tree_cpu_seconds, tree_cpu_used
from bench.users import User

MAILBOX = "bench.mailbox@example.com"
UNPACED = 0  # quota_units_per_second = 0: the plugin does not pace at all


@dataclass(frozen=True)
class IngestResult:
    """What one initial sync took."""

    messages: int
    seconds: float
    complete: bool  # False: the time cap came first; the rate is over what was synced by then
    brain_cpu: float  # brain's CPU time / wall time meanwhile
    fake_cpu: float  # the harness's (the fake's, mostly) CPU time / wall time meanwhile
    streamed_seconds: float | None = None  # connect -> every event in JetStream; None: not all within the cap
    # CPU seconds of brain and its child processes (conversion workers, embedded NATS) meanwhile:
    # a cost per message that the load of other work on the machine inflates far less than the rate.
    tree_cpu_seconds: float = 0.0
    # Bytes brain's own process wrote to storage meanwhile (/proc/<pid>/io write_bytes: the user's
    # store with its WAL and checkpoints, mail.db); None where the kernel does not say.
    written_bytes: int | None = None

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.messages / self.seconds

    @property
    def cpu_ms_per_message(self) -> float:
        """CPU milliseconds that brain's processes spent per message synced."""
        return 1000.0 * self.tree_cpu_seconds / self.messages if self.messages else 0.0

    @property
    def streamed_rate(self) -> float | None:
        """Messages per second into JetStream (end to end), when they all got there."""
        return self.messages / self.streamed_seconds if self.streamed_seconds else None


def written_bytes(pid: int) -> int | None:
    """What process ``pid`` has caused to be written to storage so far, or None if unknown."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def start_fake_gmail(messages: int) -> Any:
    """A running FakeGmail with `messages` messages in MAILBOX."""
    from brain.testing.fakes.gmail import FakeGmail

    fake = FakeGmail().start()
    fake.populate(MAILBOX, messages)
    return fake


def gmail_settings(fake: Any) -> dict[str, Any]:
    """The `[plugins.gmail]` table that points brain at the fake, unpaced."""
    return {
        "client_id": fake.client_id,
        "client_secret": fake.client_secret,
        "api_endpoint": fake.base_url,
        "token_uri": fake.token_uri,
        "batch_uri": fake.batch_uri,
        "revoke_uri": fake.revoke_uri,
        "quota_units_per_second": UNPACED,
    }


REPO = Path(__file__).resolve().parent.parent
INSTANT_PLUGIN_PATH = REPO / "bench" / "plugins"  # holds the dist-info naming the entry point


def instant_env() -> dict[str, str]:
    """Environment for a brain that loads the instant provider next to the bundled plugins.

    The bundled plugins come from this tree too: the venv's editable installs follow the tree
    it was installed from, so a `git archive` of another version (an A/B run with that
    version first on PYTHONPATH) would otherwise load this version's plugins beside its own
    core, and exit at their first import of something it does not have."""
    plugins = [str(REPO / "plugins" / name) for name in ("gmail", "outlook", "imap")]
    return {
        "PYTHONPATH": os.pathsep.join([str(INSTANT_PLUGIN_PATH), str(REPO), *plugins]),
        "BRAIN_PLUGINS__ENABLED": "gmail,outlook,instant",
    }


def gmail_connect(fake: Any) -> dict[str, Any]:
    """The connect body for the fake Gmail mailbox."""
    return {"provider": "gmail", "refresh_token": fake.issue_refresh_token(MAILBOX)}


INSTANT_CONNECT = {"provider": "instant", "refresh_token": "instant"}
INSTANT_HTML_CONNECT = {"provider": "instant_html", "refresh_token": "instant"}


def measure(
    api_port: int, pid: int, user: User, connect_body: dict[str, Any], *, messages: int, max_seconds: float,
    streamed: Callable[[], int] | None = None,
) -> IngestResult:
    """Connect a mailbox for `user` and time its initial sync (at most max_seconds), then (with
    ``streamed``, the count of the user's received events in JetStream) until the stream has them."""
    headers = {"Authorization": user.authorization}
    already = streamed() if streamed is not None else 0
    with KeepAliveClient(api_port) as c:
        brain_before, fake_before, tree_before = proc_sample(pid), proc_sample(os.getpid()), tree_cpu_seconds(pid)
        written_before = written_bytes(pid)
        start = time.perf_counter()
        connect = c.request("POST", "/mail/connect", headers=headers, body=connect_body)
        account = expect(connect, 200, 201, what="POST /mail/connect").json()["account"]["account"]
        status_raw = c.encode("GET", "/mail/status", headers=headers)
        while True:
            accounts = expect(c.send(status_raw), 200, what="GET /mail/status").json()["accounts"]
            elapsed = time.perf_counter() - start
            mine = next((a for a in accounts if a["account"] == account), None)
            if mine is None:
                raise RuntimeError(f"account {account} missing from /mail/status")
            synced = mine["messages_synced"]
            done = mine["initial_sync"]["complete"] and synced >= messages
            if done or (elapsed > max_seconds and synced > 0):
                result = IngestResult(
                    messages=synced, seconds=elapsed, complete=done,
                    brain_cpu=cpu_utilisation(brain_before, proc_sample(pid)),
                    fake_cpu=cpu_utilisation(fake_before, proc_sample(os.getpid())),
                    tree_cpu_seconds=tree_cpu_used(tree_before, tree_cpu_seconds(pid)),
                )
                written_after = written_bytes(pid)
                if written_before is not None and written_after is not None:
                    result = dataclasses.replace(result, written_bytes=written_after - written_before)
                if streamed is None or not done:
                    return result
                while streamed() < already + synced:
                    if time.perf_counter() - start > 2 * max_seconds:
                        return result
                    time.sleep(0.05)
                return dataclasses.replace(result, streamed_seconds=time.perf_counter() - start)
            if mine["state"] in ("needs_reauth", "error", "disconnected"):
                raise RuntimeError(f"sync ended in state {mine['state']}: {mine.get('last_error')}")
            if elapsed > max_seconds:
                raise RuntimeError(f"no message synced within {max_seconds:.0f}s")
            # Each GET /mail/status costs brain database reads on the threads that sync (at
            # 50 a second, a tenth of the time the ingest held the GIL): asked often only near
            # the end, where the clock stops.
            time.sleep(0.02 if synced >= 0.9 * messages else 0.1)
