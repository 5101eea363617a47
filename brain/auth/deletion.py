"""Account deletion across both roles: the auth side deletes, every API side forgets at once.

The auth side (`Deletions.delete`, behind `POST /api/auth/delete-user` and `brain users
delete`) removes the user, their sessions and tokens from auth.db in one transaction and
records the deletion (`DeletedUser`). The API side (`ApiSide.apply`) then

1. revokes: the user id joins the TokenVerifier's `revoked` set (checked whenever a token is
   verified; the user's cached tokens are dropped), kept in `data/revoked-users.json` until the
   last JWT minted for the user has expired, so a restart refuses them too;
2. purges: stops the user's MailSync actors, deletes their mail accounts, credentials and
   message index from mail.db, stops their UserStore for good (`StoreManager.close_user`),
   deletes `data/users/{id}/` and the outbox marker, and purges their subjects from the
   JetStream event stream.

How the API side hears of it: in one process, directly (the HTTP answer comes after both
steps). Across processes, through JetStream: the auth side publishes `user-deleted` on stream
`BRAIN_CONTROL` (a deletion made while NATS is away waits in auth.db and is published when it
is back); each API process applies it through the durable consumer `brain-api-deletions`
(acknowledged only after the purge, so an API that was down catches up) and also revokes at once
from a plain subscription (every API process, even when several share the durable consumer).
Both steps are idempotent: a deletion seen twice changes nothing the second time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import shutil
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from brain import apikeys
from brain.actors.base import BrainActor, Link
from brain.auth.control_messages import CONTROL_TTL_S, control_key, refusal, signed_headers
from brain.ids import is_valid_user_id
from brain.redact import redact_text

if TYPE_CHECKING:
    from brain.actors.supervisor import ChildSpec
    from brain.auth.context import AuthContext
    from brain.auth.db import DeletedUser
    from brain.mail.db import MailDb
    from brain.runtime import Runtime

log = logging.getLogger("brain.auth.deletion")

STREAM = "BRAIN_CONTROL"
SUBJECT = "brain.control.user-deleted"
DURABLE = "brain-api-deletions"
REVOKED_FILE = "revoked-users.json"
# How long JetStream keeps deletions for API roles that were away (their consumer catches up):
# as long as a signed deletion stays valid.
_STREAM_MAX_AGE_S = CONTROL_TTL_S
# A purge stops mail actors (one page may finish first): give it time before redelivery.
_ACK_WAIT_S = 120.0
_RETRY_S = 5.0
MAIL_SUP = "data_sup/mail"


# --- the revoked set (API side) ------------------------------------------------------------------


class RevokedUsers:
    """Deleted user ids whose JWTs may still be unexpired; persisted so a restart keeps them."""

    def __init__(self, data_path: Path) -> None:
        self.path = data_path / REVOKED_FILE
        # The set the TokenVerifier reads (mutated in place, on the event loop thread only).
        self.ids: set[str] = set()
        self._until: dict[str, float] = {}
        self._write_lock = threading.Lock()
        self._version = 0  # bumped by every change; a save never replaces a newer one
        self._saved_version = -1

    def load(self) -> RevokedUsers:
        """Read the file (a missing or unreadable one is an empty set, logged)."""
        try:
            raw = json.loads(self.path.read_text())
            entries = raw["users"] if isinstance(raw, dict) else {}
        except FileNotFoundError:
            entries = {}
        except (OSError, ValueError, KeyError) as exc:
            log.error("%s unreadable (%s); starting with no revoked users", self.path, exc)
            entries = {}
        now = time.time()
        for user_id, until in entries.items():
            if is_valid_user_id(user_id) and isinstance(until, (int, float)) and until > now:
                self._until[user_id] = float(until)
                self.ids.add(user_id)
        return self

    def add(self, user_id: str, until: float) -> None:
        """Refuse the user's tokens from now until `until` (epoch seconds)."""
        self.ids.add(user_id)
        self._until[user_id] = max(until, self._until.get(user_id, 0.0))
        self._version += 1

    def prune(self, now: float | None = None) -> None:
        """Forget users whose last token has expired."""
        now = time.time() if now is None else now
        for user_id in [u for u, until in self._until.items() if until <= now]:
            del self._until[user_id]
            self.ids.discard(user_id)
            self._version += 1

    def snapshot(self) -> tuple[int, dict[str, float]]:
        """A numbered copy to save (taken on the thread that mutates the set)."""
        return self._version, dict(self._until)

    def save(self, snapshot: tuple[int, dict[str, float]] | None = None) -> None:
        """Write the file atomically (0600); blocking, so not on the event loop."""
        version, entries = self.snapshot() if snapshot is None else snapshot
        with self._write_lock:
            if version < self._saved_version:
                return  # a newer copy was written meanwhile
            self._saved_version = version
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{REVOKED_FILE}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"users": entries}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)

    def __len__(self) -> int:
        return len(self.ids)


# --- purging a user's data (blocking helpers; also used by `brain users delete` offline) ----------


def purge_mail_rows(db: MailDb, user_id: str) -> int:
    """Delete the user's mail accounts, credentials, message index and OAuth flows; accounts gone."""
    from brain.mail.db import Account, Credential, Message, OAuthState

    with db.unit(), db.db.atomic():
        ids = [row.id for row in Account.select(Account.id).where(Account.user_id == user_id)]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            Credential.delete().where(Credential.account_id.in_(chunk)).execute()
            Message.delete().where(Message.account_id.in_(chunk)).execute()
        Account.delete().where(Account.user_id == user_id).execute()
        OAuthState.delete().where(OAuthState.user_id == user_id).execute()
    return len(ids)


def remove_user_files(data_path: Path, user_id: str) -> bool:
    """Delete `data/users/{id}/` and the user's outbox marker; True if the directory existed."""
    from brain.api.store import marker_path, store_path

    user_dir = store_path(data_path, user_id).parent  # validated: sits right under data/users/
    existed = user_dir.exists()
    if existed:
        shutil.rmtree(user_dir)
    marker_path(data_path, user_id).unlink(missing_ok=True)
    return existed


def deletion_message(user_id: str, deleted_at: int, tokens_valid_until: int, key: bytes) -> tuple[bytes, dict[str, str]]:
    """The JetStream message announcing a deletion: payload and signed headers (control_messages)."""
    payload = json.dumps(
        {"user_id": user_id, "deleted_at": deleted_at, "tokens_valid_until": tokens_valid_until},
        separators=(",", ":"),
    ).encode()
    return payload, signed_headers(key, SUBJECT, payload, f"user-deleted:{user_id}:{deleted_at}")


async def ensure_stream(js: Any) -> None:
    """Create the control stream if it is missing."""
    try:
        await js.stream_info(STREAM)
    except nats.js.errors.NotFoundError:
        await js.add_stream(
            StreamConfig(
                name=STREAM, subjects=["brain.control.>"], storage=StorageType.FILE, max_age=_STREAM_MAX_AGE_S
            )
        )
        log.info("created stream %s (brain.control.>)", STREAM)


async def publish_deletions(
    connect: dict[str, Any], key: bytes, rows: list[tuple[str, int, int]], timeout: float = 5.0
) -> list[str]:
    """Publish signed deletions with a connection of its own (`brain users delete`); the ids JetStream took."""
    async def quiet(_exc: Exception) -> None:
        pass  # the caller reports the one failure that matters

    # nats-py retries a refused first connection for ever, whatever max_reconnect_attempts says.
    async with asyncio.timeout(timeout):
        nc = await nats.connect(**connect, name="brain-cli", connect_timeout=timeout, max_reconnect_attempts=0,
                                allow_reconnect=False, error_cb=quiet)
    try:
        js = nc.jetstream(timeout=timeout)
        await ensure_stream(js)
        done = []
        for user_id, deleted_at, until in rows:
            payload, headers = deletion_message(user_id, deleted_at, until, key)
            await js.publish(SUBJECT, payload, stream=STREAM, headers=headers)
            done.append(user_id)
        return done
    finally:
        await nc.close()


# --- the API side ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Purged:
    """What a purge removed."""

    mail_accounts: int
    directory: bool


class ApiSide:
    """Applies deletions in an API process: revoke tokens at once, then purge the user's data."""

    def __init__(self, rt: Runtime) -> None:
        from brain import api

        self.rt = rt
        self.leeway = rt.settings.api.leeway_seconds
        self.revoked = RevokedUsers(rt.settings.data_path).load()
        self.revoked.prune()
        self.verifier = api.token_verifier(rt)
        self.verifier.revoked = self.revoked.ids
        self.stores = api.store_manager(rt)
        self.relay: Relay | None = None
        self._purging: dict[str, asyncio.Future[Purged]] = {}

    def revoke(self, user_id: str, tokens_valid_until_ms: int) -> bool:
        """Refuse the user's tokens from now on (event loop thread); False if already refused."""
        known = user_id in self.revoked.ids
        self.revoked.add(user_id, tokens_valid_until_ms / 1000 + self.leeway)
        dropped = self.verifier.forget_user(user_id)
        if not known:
            log.info("tokens of deleted user %s refused from now on (%d cached dropped)", user_id, dropped)
        return not known

    async def apply(self, user_id: str, tokens_valid_until_ms: int) -> Purged:
        """Revoke, persist the revoked set, purge the user's data (idempotent)."""
        if not is_valid_user_id(user_id):
            raise ValueError(f"not a user id: {user_id[:80]!r}")
        loop = asyncio.get_running_loop()
        self.revoke(user_id, tokens_valid_until_ms)
        self.revoked.prune()
        await loop.run_in_executor(None, self.revoked.save, self.revoked.snapshot())
        pending = self._purging.get(user_id)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Purged] = loop.create_future()
        self._purging[user_id] = fut
        try:
            purged = await loop.run_in_executor(None, self._purge_blocking, user_id)
            fut.set_result(purged)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: concurrent waiters re-raise it
            raise
        finally:
            del self._purging[user_id]
        if self.relay is not None:
            await self.relay.purge_events(user_id)
        return purged

    def _purge_blocking(self, user_id: str) -> Purged:
        from brain.mail import service_for

        self._stop_mail(user_id)
        accounts = purge_mail_rows(service_for(self.rt).db, user_id)
        self.stores.close_user(user_id)
        existed = remove_user_files(self.rt.settings.data_path, user_id)
        log.info("data of deleted user %s removed (%d mail accounts, store %s)", user_id, accounts,
                 "deleted" if existed else "absent")
        return Purged(accounts, existed)

    def _stop_mail(self, user_id: str) -> None:
        sup = self.rt.lookup(MAIL_SUP)
        if sup is None:
            return
        proxy = sup.proxy()
        prefix = f"{user_id}:"  # brain.mail.service.child_id: "{user_id}:{account_id}"
        for child in proxy.which_children().get(timeout=10):
            if child["id"].startswith(prefix):
                # Blocks until the actor stopped (a page in flight finishes first).
                proxy.terminate_child(child["id"]).get(timeout=60)


# --- the auth side ---------------------------------------------------------------------------------


class Deletions:
    """Deletes accounts (auth role) and makes every API side forget them."""

    def __init__(self, ctx: AuthContext, lifecycle: AccountLifecycle) -> None:
        self.ctx = ctx
        self.lifecycle = lifecycle

    async def delete(self, user_id: str) -> tuple[DeletedUser, Purged | None] | None:
        """Delete the user; with the API role in this process, also revoke and purge before returning."""
        row = await self.ctx.issuer("delete_user", user_id=user_id)
        if row is None:
            return None
        log.info("user %s deleted", user_id)
        purged: Purged | None = None
        api = self.lifecycle.api
        if api is not None:
            try:
                purged = await api.apply(user_id, row.tokens_valid_until)
            except Exception:
                # The account is gone and its tokens refused; JetStream redelivers the purge.
                log.exception("removing the data of deleted user %s failed; it is retried", user_id)
        self.lifecycle.kick()
        return row, purged


# --- JetStream relay ------------------------------------------------------------------------------


class Relay:
    """The control stream's connection, on the HTTP event loop: publishes (auth), consumes (API)."""

    def __init__(self, rt: Runtime, lifecycle: AccountLifecycle) -> None:
        self.rt = rt
        self.lifecycle = lifecycle
        self.publishes = "auth" in rt.roles
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
        if self.lifecycle.api is not None:
            await self._subscribe()
        self.rt.api_keys.kick = self.kick
        while not self.stopping:
            if self.publishes and self.connected:
                await self._publish_pending()
                await self._publish_api_key_revocations()
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), timeout=_RETRY_S)
            except TimeoutError:
                pass

    async def _connect(self) -> None:
        while not self.stopping:
            try:
                self.nc = await nats.connect(
                    **self.rt.nats_connect_options(), name="brain-control", allow_reconnect=True, max_reconnect_attempts=-1,
                    reconnect_time_wait=1, connect_timeout=2, disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
                self.js = self.nc.jetstream(timeout=5)
                await ensure_stream(self.js)
                self.connected = True
                return
            except Exception as exc:  # noqa: BLE001 - NATS not up yet: retry
                self._note(f"control stream on {self.rt.nats_shown_url}: {redact_text(repr(exc))}")
                if self.nc is not None:
                    await self.nc.close()
                    self.nc = None
                await asyncio.sleep(1.0)

    async def _on_disconnected(self) -> None:
        self.connected = False

    async def _on_reconnected(self) -> None:
        self.connected = True
        # API-key revocations sent while we were away were missed: the key cache starts over.
        self.rt.api_keys.reconnected()
        self.kick()

    def _note(self, message: str) -> None:
        if message != self._last_error:
            log.warning("account deletions: %s", message)
        self._last_error = message

    async def _subscribe(self) -> None:
        config = ConsumerConfig(ack_wait=_ACK_WAIT_S, deliver_policy=DeliverPolicy.ALL, max_ack_pending=64)
        while not self.stopping:
            try:
                await self.js.subscribe(SUBJECT, durable=DURABLE, stream=STREAM, cb=self._on_durable,
                                        manual_ack=True, config=config)
                await self.nc.subscribe(SUBJECT, cb=self._on_live)
                await self.nc.subscribe(apikeys.CONTROL_SUBJECT, cb=self._on_api_keys_revoked)
                return
            except Exception as exc:  # noqa: BLE001 - retried
                self._note(f"subscribing to {SUBJECT}: {exc!r}")
                await asyncio.sleep(1.0)

    @staticmethod
    def _parse(data: bytes) -> tuple[str, int] | None:
        try:
            body = json.loads(data)
            user_id, until = body["user_id"], body["tokens_valid_until"]
        except (ValueError, KeyError, TypeError):
            return None
        if not is_valid_user_id(user_id) or isinstance(until, bool) or not isinstance(until, int):
            return None
        return user_id, until

    def _genuine(self, msg: Any) -> bool:
        """Whether a received deletion is signed by a role of this deployment and current."""
        return refusal(self.key, SUBJECT, msg.data, msg.headers) is None

    async def _on_live(self, msg: Any) -> None:
        # Refusals are logged once, by the durable consumer below.
        parsed = self._parse(msg.data)
        api = self.lifecycle.api
        if parsed is not None and api is not None and self._genuine(msg):
            api.revoke(*parsed)

    async def _on_api_keys_revoked(self, msg: Any) -> None:
        self.rt.api_keys.receive(msg.data)

    async def _on_durable(self, msg: Any) -> None:
        why = refusal(self.key, SUBJECT, msg.data, msg.headers)
        if why is not None:
            log.warning("refused a %s message (%s): nobody is deleted; payload %r", SUBJECT, why, msg.data[:200])
            await msg.term()  # never redelivered
            return
        parsed = self._parse(msg.data)
        api = self.lifecycle.api
        if parsed is None or api is None:
            log.error("dropping a malformed %s message: %r", SUBJECT, msg.data[:200])
            await msg.ack()
            return
        try:
            await api.apply(*parsed)
        except Exception:
            log.exception("applying the deletion of user %s failed; retried in %ss", parsed[0], _RETRY_S)
            await msg.nak(delay=_RETRY_S)
            return
        await msg.ack()

    async def _publish_pending(self) -> None:
        from brain.auth.context import context_for

        ctx = context_for(self.rt)
        try:
            rows = await ctx.issuer("unpublished_deletions")
        except Exception as exc:  # noqa: BLE001 - the issuer is restarting: next round
            self._note(f"reading pending deletions: {exc!r}")
            return
        done: list[str] = []
        for row in rows:
            payload, headers = deletion_message(row.user_id, row.deleted_at, row.tokens_valid_until, self.key)
            try:
                await self.js.publish(SUBJECT, payload, stream=STREAM, headers=headers)
            except Exception as exc:  # noqa: BLE001 - kept for the next round
                self._note(f"publishing the deletion of {row.user_id}: {exc!r}")
                break
            done.append(row.user_id)
        if done:
            await ctx.issuer("mark_published", user_ids=done)
            log.info("deletion of %d user(s) published on %s", len(done), SUBJECT)

    async def _publish_api_key_revocations(self) -> None:
        """Tell the other processes' API roles which keys to look up again (brain.apikeys)."""
        try:
            outgoing = self.rt.api_keys.take_outgoing()
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
            self.rt.api_keys.put_back(hashes)

    async def purge_events(self, user_id: str) -> None:
        """Purge the user's subjects from the event stream (best effort: when connected)."""
        if not self.connected or self.js is None:
            return
        nats_settings = self.rt.settings.nats
        try:
            await self.js.purge_stream(nats_settings.stream, subject=f"{nats_settings.subject_prefix}.{user_id}.>")
        except Exception as exc:  # noqa: BLE001 - e.g. the stream does not exist yet
            log.warning("purging the events of deleted user %s from %s failed: %r", user_id, nats_settings.stream,
                        exc)

    async def close(self) -> None:
        """Stop and close the connection."""
        self.stopping = True
        self.connected = False
        if self._kick is not None:
            self._kick.set()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.close(), timeout=2)
            except Exception:  # noqa: BLE001 - closing anyway
                pass


class _Crashed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class DeletionRelay(BrainActor):
    """Supervises the Relay coroutine on the HTTP loop: its crash is this actor's crash."""

    def __init__(self, *, link: Link | None = None, relay: Relay) -> None:
        super().__init__(link=link)
        self.relay = relay
        self._main: concurrent.futures.Future[None] | None = None

    def on_start(self) -> None:
        """Start the relay on the serving loop (nothing to do without one: no HTTP, no NATS)."""
        loop = self.relay.rt.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return
        self.relay.stopping = False
        self._main = asyncio.run_coroutine_threadsafe(self.relay.run(), loop)
        ref, relay = self.actor_ref, self.relay

        def crashed(fut: concurrent.futures.Future[None]) -> None:
            if fut.cancelled() or relay.stopping:
                return
            try:
                ref.tell(_Crashed(fut.exception() or RuntimeError("the relay ended")))
            except Exception:  # noqa: BLE001 - the actor is gone already
                pass

        self._main.add_done_callback(crashed)

    def on_receive(self, message: Any) -> Any:
        """A crash of the relay coroutine crashes the actor (its supervisor restarts it)."""
        if isinstance(message, _Crashed):
            raise RuntimeError("the deletion relay failed") from message.error
        return super().on_receive(message)

    def on_stop(self) -> None:
        """Close the NATS connection."""
        self._shutdown()

    def on_failure(self, *_exc: object) -> None:
        """Close the NATS connection."""
        self._shutdown()

    def _shutdown(self) -> None:
        relay, loop = self.relay, self.relay.rt.loop
        relay.stopping = True
        if self._main is not None:
            self._main.cancel()
        if loop is not None and not loop.is_closed() and loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(relay.close(), loop).result(timeout=5)
            except Exception:  # noqa: BLE001 - abandoned
                log.warning("account deletions: the NATS connection did not close cleanly")


# --- per-process wiring ---------------------------------------------------------------------------


class AccountLifecycle:
    """One per Runtime: the API side (if the API role runs here) and the JetStream relay."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.api = ApiSide(rt) if "api" in rt.roles else None
        self.relay = Relay(rt, self)
        if self.api is not None:
            self.api.relay = self.relay

    def kick(self) -> None:
        """Publish pending deletions now."""
        self.relay.kick()


_lifecycles: weakref.WeakKeyDictionary[Runtime, AccountLifecycle] = weakref.WeakKeyDictionary()
_lifecycles_lock = threading.Lock()


def lifecycle_for(rt: Runtime) -> AccountLifecycle:
    """The runtime's AccountLifecycle, created on first use."""
    with _lifecycles_lock:
        lifecycle = _lifecycles.get(rt)
        if lifecycle is None:
            lifecycle = _lifecycles[rt] = AccountLifecycle(rt)
        return lifecycle


def child_specs(rt: Runtime) -> list[ChildSpec]:
    """The deletion relay (a root child, after data_sup: it stops before the stores)."""
    from brain.actors.supervisor import ChildSpec
    from brain.auth.control import hold_data_dir

    hold_data_dir(rt)  # before any actor opens a database: `brain users delete` may be at work
    lifecycle = lifecycle_for(rt)
    return [ChildSpec(id="deletions", start=lambda link: DeletionRelay.start(link=link, relay=lifecycle.relay))]
