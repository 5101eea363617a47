"""Account deletion across processes: a role deletes the account, the core relays, every plugin purges.

The auth role deletes a user from auth.db (one transaction, recorded as pending publication) and
hands the deletion to this process's `Deletions`. Every plugin that keeps something about users
forgets them through two hooks:

1. `user_revoked(rt, user_id, tokens_valid_until)`: refuse the user's credentials at once (on
   the event loop; the API role adds the id to the token verifier's revoked set);
2. `user_purge(rt, user_id)`: delete the user's data (in a worker thread; mail sync stops the
   user's actors and deletes their accounts, the API role closes and deletes the user's store).
   Purges run in reverse registration order, so a plugin's purge runs before the purges of the
   plugins it requires (mail stops writing before the API deletes the store).

The same connection carries the API-key revocations of brain.apikeys (`CONTROL_SUBJECT`,
signed by the issuer): the process that revoked publishes them, every process with an API key
cache drops the keys they name.

How a deletion reaches every process: in the process that deleted, directly (the HTTP answer
comes after both steps), and in the other workers of the same server (brain.workers) through
their master, before the answer too: the user's credentials are refused in every worker by the
time the client hears back. Across processes, through JetStream: the pending deletions of the
`DELETION_SOURCE` (the auth role's auth.db; one made while NATS is away waits there) are
published on stream `BRAIN_CONTROL` (at once by the process that deleted, and by the primary
worker's periodic look at what is still pending; JetStream drops a second copy by its
Nats-Msg-Id); each process with a plugin that purges applies them through a durable consumer of
its own (`brain-api-deletions`, `-w2` for worker 2 ...: acknowledged only after the purge, so a
process that was down catches up, and every worker purges what it holds) and also revokes at
once from a plain subscription. Both steps are idempotent.

Whoever else can publish on the shared NATS must not be able to delete a user: every deletion
is signed with a key derived from the server secret (brain.control_messages), and a message
that is unsigned, badly signed or expired is refused (logged and terminated, never redelivered).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import nats
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from brain import apikeys, jetstream
from brain.actors.base import Link
from brain.actors.loop import LoopActor
from brain.actors.supervisor import ChildSpec
from brain.actors.tree import Child
from brain.contracts import DELETION_SOURCE, UserDeleted
from brain.control_messages import CONTROL_TTL_S, control_key, refusal, signed_headers
from brain.ids import is_valid_user_id
from brain.nats_auth import process_connect_options
from brain.plugins import hookimpl
from brain.process import Process
from brain.redact import redact_text, redact_url
from brain.stash import StashKey
from brain.workers.peers import peers_for

__all__ = ["CHILD_ID", "Deletions", "deletions_for", "publish_deletions", "purge_here"]

log = logging.getLogger("brain.deletions")

STREAM = "BRAIN_CONTROL"
SUBJECT = "brain.control.user-deleted"
DURABLE = "brain-api-deletions"
CHILD_ID = "deletions"
# How long JetStream keeps deletions for processes that were away (their consumer catches up):
# as long as a signed deletion stays valid.
_STREAM_MAX_AGE_S = CONTROL_TTL_S
# A purge stops mail actors (one page may finish first): give it time before redelivery.
_ACK_WAIT_S = 120.0
_RETRY_S = 5.0

Summary = dict[str, Any]


def deletion_message(event: UserDeleted, key: bytes) -> tuple[bytes, dict[str, str]]:
    """The JetStream message announcing a deletion: payload and signed headers (brain.control_messages)."""
    payload = json.dumps(
        {"user_id": event.user_id, "deleted_at": event.deleted_at, "tokens_valid_until": event.tokens_valid_until},
        separators=(",", ":"),
    ).encode()
    return payload, signed_headers(key, SUBJECT, payload, f"user-deleted:{event.user_id}:{event.deleted_at}")


def parse_message(data: bytes) -> UserDeleted | None:
    """The deletion a message announces; None when it is malformed."""
    try:
        body = json.loads(data)
        user_id, until = body["user_id"], body["tokens_valid_until"]
        deleted_at = body.get("deleted_at", 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not is_valid_user_id(user_id) or isinstance(until, bool) or not isinstance(until, int):
        return None
    return UserDeleted(user_id, deleted_at if isinstance(deleted_at, int) else 0, until)


async def ensure_stream(js: Any, replicas: int = 1) -> None:
    """Create the control stream if it is missing (with `replicas` copies: nats.replicas)."""
    config = StreamConfig(name=STREAM, subjects=["brain.control.>"], storage=StorageType.FILE, max_age=_STREAM_MAX_AGE_S,
                          num_replicas=replicas)
    if await jetstream.ensure_stream(js, config):
        log.info("created stream %s (brain.control.>)", STREAM)


async def publish_deletions(
    connect: Mapping[str, Any], key: bytes, events: list[UserDeleted], timeout: float = 5.0, replicas: int = 1
) -> list[str]:
    """Publish signed deletions with a connection of its own (`brain users delete`); the ids JetStream took.

    `connect`: `nats.connect()` keyword arguments (brain.nats_auth.connect_options); `key`: the
    control messages' key (brain.control_messages.control_key).
    """
    async def quiet(_exc: Exception) -> None:
        pass  # the caller reports the one failure that matters

    # nats-py retries a refused first connection for ever, whatever max_reconnect_attempts says.
    async with asyncio.timeout(timeout):
        nc = await nats.connect(**connect, name="brain-cli", connect_timeout=timeout, max_reconnect_attempts=0,
                                allow_reconnect=False, error_cb=quiet)
    try:
        js = nc.jetstream(timeout=timeout)
        await ensure_stream(js, replicas)
        done = []
        for event in events:
            payload, headers = deletion_message(event, key)
            await js.publish(SUBJECT, payload, stream=STREAM, headers=headers)
            done.append(event.user_id)
        return done
    finally:
        await nc.close()


def purge_here(rt: Process, event: UserDeleted) -> Summary:
    """Revoke and purge in this (blocking) thread: what a command does with no server running."""
    rt.hook.user_revoked(rt=rt, user_id=event.user_id, tokens_valid_until=event.tokens_valid_until)
    return _purge(rt, event.user_id)


def _purge(rt: Process, user_id: str) -> Summary:
    summary: Summary = {}
    for figures in rt.hook.user_purge(rt=rt, user_id=user_id):
        if isinstance(figures, Mapping):
            summary.update(figures)
    return summary


class Deletions:
    """One process's side of account deletion (see the module docstring)."""

    def __init__(self, rt: Process) -> None:
        self.rt = rt
        self.relay = Relay(rt, self)
        self._purging: dict[str, asyncio.Future[Summary]] = {}

    @property
    def purges_here(self) -> bool:
        """Whether any plugin active in this process keeps something about users."""
        return bool(self.rt.hook.user_purge.get_hookimpls() or self.rt.hook.user_revoked.get_hookimpls())

    def revoke(self, event: UserDeleted) -> None:
        """Refuse the user's credentials from now on (event loop thread)."""
        self.rt.hook.user_revoked(rt=self.rt, user_id=event.user_id, tokens_valid_until=event.tokens_valid_until)

    async def apply(self, event: UserDeleted) -> Summary:
        """Revoke, then purge in a worker thread (idempotent; concurrent calls share one purge)."""
        if not is_valid_user_id(event.user_id):
            raise ValueError(f"not a user id: {event.user_id[:80]!r}")
        loop = asyncio.get_running_loop()
        self.revoke(event)
        pending = self._purging.get(event.user_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Summary] = loop.create_future()
        self._purging[event.user_id] = fut
        try:
            summary = await loop.run_in_executor(None, _purge, self.rt, event.user_id)
            fut.set_result(summary)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: concurrent waiters re-raise it
            raise
        finally:
            del self._purging[event.user_id]
        return summary

    async def deleted(self, event: UserDeleted) -> Summary | None:
        """An account was just deleted here: revoke here and in every other worker of the server,
        purge (if this process purges), then publish.

        None when nothing was purged in this process (then every other process does it on
        hearing of the deletion through JetStream).
        """
        log.info("user %s deleted", event.user_id)
        self.revoke(event)
        try:
            await peers_for(self.rt).broadcast("user-revoked", _event_fields(event))
        except Exception:  # noqa: BLE001 - they still hear of it through JetStream, a moment later
            log.exception("telling the other workers of the deletion of %s failed", event.user_id)
        summary: Summary | None = None
        if self.purges_here:
            try:
                summary = await self.apply(event)
            except Exception:
                # The account is gone and its tokens refused; JetStream redelivers the purge.
                log.exception("removing the data of deleted user %s failed; it is retried", event.user_id)
        self.relay.kick()
        return summary


def _event_fields(event: UserDeleted) -> dict[str, Any]:
    return {"user_id": event.user_id, "deleted_at": event.deleted_at, "tokens_valid_until": event.tokens_valid_until}


_DELETIONS: StashKey[Deletions] = StashKey("brain.deletions")


def deletions_for(rt: Process) -> Deletions:
    """The process's Deletions (created on first use)."""
    return rt.stash.setdefault(_DELETIONS, lambda: Deletions(rt))


class Relay:
    """The control stream's connection, on the HTTP event loop: publishes and consumes deletions."""

    def __init__(self, rt: Process, deletions: Deletions) -> None:
        self.rt = rt
        self.deletions = deletions
        self.key = control_key(rt.secret)  # signs what it publishes, checks what it receives
        self.nc: Any = None
        self.js: Any = None
        self.connected = False
        self.stopping = False
        self._kick: asyncio.Event | None = None
        self._last_error = ""

    def kick(self) -> None:
        """Publish pending deletions now (any thread)."""
        loop, event = self.rt.loop, self._kick
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    async def run(self) -> None:
        """Connect, then publish and consume until stopped."""
        self._kick = asyncio.Event()
        await self._connect()
        if self.deletions.purges_here:
            await self._subscribe()
        hub = apikeys.api_key_hub(self.rt)
        hub.kick = self.kick
        kicked = True
        while not self.stopping:
            source = self.rt.stash.get(DELETION_SOURCE)
            if self.connected:
                # What auth.db still holds is looked at by the primary worker alone (and by a
                # worker that just deleted someone): one publisher per server, not one per worker.
                if source is not None and (kicked or self.rt.worker.primary):
                    await self._publish_pending(source)
                await self._publish_api_key_revocations(hub)
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=_RETRY_S)
                kicked = True
            except TimeoutError:
                kicked = False

    async def _connect(self) -> None:
        while not self.stopping:
            self.nc = await jetstream.connect_kept(
                process_connect_options(self.rt), name="brain-control", stopping=lambda: self.stopping, note=self._note,
                disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected,
            )
            if self.nc is None:
                return
            try:
                self.js = self.nc.jetstream(timeout=5)
                await ensure_stream(self.js, self.rt.settings.nats.replicas)
                self.connected = True
                return
            except Exception as exc:  # noqa: BLE001 - JetStream not ready yet: retry
                self._note(f"control stream on {redact_url(self.rt.nats_url)}: {redact_text(repr(exc))}")
                await self.nc.close()
                self.nc = None
                await asyncio.sleep(1.0)

    async def _on_disconnected(self) -> None:
        self.connected = False

    async def _on_reconnected(self) -> None:
        self.connected = True
        # API-key revocations sent while we were away were missed: the key cache starts over.
        apikeys.api_key_hub(self.rt).reconnected()
        self.kick()

    def _note(self, message: str) -> None:
        if message != self._last_error:
            log.warning("account deletions: %s", message)
        self._last_error = message

    async def _subscribe(self) -> None:
        config = ConsumerConfig(ack_wait=_ACK_WAIT_S, deliver_policy=DeliverPolicy.ALL, max_ack_pending=64)
        while not self.stopping:
            try:
                await self.js.subscribe(SUBJECT, durable=durable_name(self.rt), stream=STREAM, cb=self._on_durable,
                                        manual_ack=True, config=config)
                await self.nc.subscribe(SUBJECT, cb=self._on_live)
                await self.nc.subscribe(apikeys.CONTROL_SUBJECT, cb=self._on_api_keys_revoked)
                return
            except Exception as exc:  # noqa: BLE001 - retried
                self._note(f"subscribing to {SUBJECT}: {exc!r}")
                await asyncio.sleep(1.0)

    def _genuine(self, msg: Any) -> bool:
        """Whether a received deletion is signed by a process of this deployment and current."""
        return refusal(self.key, SUBJECT, msg.data, msg.headers) is None

    async def _on_live(self, msg: Any) -> None:
        # Refusals are logged once, by the durable consumer below.
        event = parse_message(msg.data)
        if event is not None and self._genuine(msg):
            self.deletions.revoke(event)

    async def _on_api_keys_revoked(self, msg: Any) -> None:
        apikeys.api_key_hub(self.rt).receive(msg.data)

    async def _on_durable(self, msg: Any) -> None:
        why = refusal(self.key, SUBJECT, msg.data, msg.headers)
        if why is not None:
            log.warning("refused a %s message (%s): nobody is deleted; payload %r", SUBJECT, why, msg.data[:200])
            await msg.term()  # never redelivered
            return
        event = parse_message(msg.data)
        if event is None:
            log.error("dropping a malformed %s message: %r", SUBJECT, msg.data[:200])
            await msg.ack()
            return
        try:
            await self.deletions.apply(event)
        except Exception:
            log.exception("applying the deletion of user %s failed; retried in %ss", event.user_id, _RETRY_S)
            await msg.nak(delay=_RETRY_S)
            return
        await msg.ack()

    async def _publish_pending(self, source: Any) -> None:
        try:
            events = await source.pending()
        except Exception as exc:  # noqa: BLE001 - the source is restarting: next round
            self._note(f"reading pending deletions: {exc!r}")
            return
        done: list[str] = []
        for event in events:
            payload, headers = deletion_message(event, self.key)
            try:
                await self.js.publish(SUBJECT, payload, stream=STREAM, headers=headers)
            except Exception as exc:  # noqa: BLE001 - kept for the next round
                self._note(f"publishing the deletion of {event.user_id}: {exc!r}")
                break
            done.append(event.user_id)
        if done:
            await source.mark_published(done)
            log.info("deletion of %d user(s) published on %s", len(done), SUBJECT)

    async def _publish_api_key_revocations(self, hub: apikeys.ApiKeyHub) -> None:
        """Tell the other processes' API roles which keys to look up again (brain.apikeys)."""
        try:
            outgoing = hub.take_outgoing()
        except Exception as exc:  # noqa: BLE001 - no key ring yet: next round
            self._note(f"signing API-key revocations: {exc!r}")
            return
        if outgoing is None:
            return
        hashes, message = outgoing
        try:
            await self.nc.publish(apikeys.CONTROL_SUBJECT, message)
            await self.nc.flush(timeout=5)
        except Exception as exc:  # noqa: BLE001 - kept for the next round
            self._note(f"publishing API-key revocations: {exc!r}")
            hub.put_back(hashes)

    async def close(self) -> None:
        """Stop and close the connection."""
        self.stopping = True
        self.connected = False
        if self._kick is not None:
            self._kick.set()
        await jetstream.close_quietly(self.nc)


def durable_name(rt: Process) -> str:
    """The durable consumer through which this process purges (one per worker: each purges what it holds)."""
    return f"{DURABLE}-w{rt.worker.index}" if rt.worker.several else DURABLE


class DeletionRelay(LoopActor):
    """Supervises the Relay on the HTTP loop (without a serving loop there is nothing to relay)."""

    def __init__(self, *, link: Link | None = None, relay: Relay) -> None:
        super().__init__(link=link, loop=relay.rt.loop)
        self.relay = relay

    def on_start(self) -> None:
        """Relay (again, after a restart)."""
        self.relay.stopping = False
        super().on_start()

    async def main(self) -> None:
        """Publish and consume until stopped."""
        await self.relay.run()

    async def close(self) -> None:
        """Close the NATS connection."""
        await self.relay.close()

    def on_stop(self) -> None:
        """Stop relaying, then close."""
        self.relay.stopping = True
        super().on_stop()

    def on_failure(self, *exc_info: object) -> None:
        """Stop relaying, then close."""
        self.relay.stopping = True
        super().on_failure(*exc_info)


@hookimpl
def setup_process(rt: Process) -> None:
    """Hear from the other workers of this server what they revoke (brain.workers.peers)."""
    deletions = deletions_for(rt)
    hub = apikeys.api_key_hub(rt)
    peers = peers_for(rt)

    async def user_revoked(data: Any) -> None:
        event = UserDeleted(data["user_id"], data["deleted_at"], data["tokens_valid_until"])
        if is_valid_user_id(event.user_id):
            deletions.revoke(event)

    async def api_keys_revoked(data: Any) -> None:
        hub.drop([h for h in data if isinstance(h, str)])

    async def tell_workers(hashes: list[str]) -> None:
        await peers.broadcast("api-keys-revoked", hashes)

    peers.answer("user-revoked", user_revoked)
    peers.answer("api-keys-revoked", api_keys_revoked)
    hub.tell_workers = tell_workers


@hookimpl
def register_children(rt: Process, register: Callable[[Child], None]) -> None:
    """The relay (a root child; plugins whose data it purges start before it and stop after it)."""
    relay = deletions_for(rt).relay
    register(Child(ChildSpec(id=CHILD_ID, start=lambda link: DeletionRelay.start(link=link, relay=relay))))
