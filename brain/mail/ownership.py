"""Who syncs which mail account: each account is synced by exactly one process of the server.

A single process syncs every account (`LocalOwnership`): the mail supervisor resumes them all
when it starts, a connect starts the account's actor, a disconnect stops it.

With several workers (brain.workers), and so that the same holds for several machines sharing one
NATS, each account is owned through a lease (brain.leases) in the JetStream KV bucket
`brain_mail_leases`, keyed by account id (`LeasedOwnership`). The `mail_owner` actor of every
process looks at mail.db every `check_seconds` (a third of `mail.lease_ttl_seconds`, at most
2 s): it renews the leases it holds (and keeps their actors running), gives up those of accounts
that should no longer sync, and takes those nobody holds, starting their actors. An account is
taken at once by the worker it hashes to, by the others only once they have seen it unowned
twice in a row, so accounts spread over the workers and still move when one dies: a killed
owner's leases age out within the TTL, and another worker resumes their sync (from the
checkpoint in mail.db) within the TTL plus two checks.

A process that cannot renew a lease in time (NATS away, or the lease was taken over) stops the
account's actor: another process may own it by then. A connect or disconnect handled by a
worker that does not own the account reaches the owner through NATS
(`brain.mail.owner.<holder>`, request/reply); on shutdown a worker stops its actors, then
releases their leases, so the others take them over at their next check.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import socket
import time
from typing import Any, Protocol

import nats.errors
import pykka

from brain import jetstream
from brain.actors import bridge
from brain.actors.base import Link
from brain.actors.loop import LoopActor
from brain.actors.supervisor import ChildAlreadyStarted, ChildStartError
from brain.errors import ServiceUnavailable
from brain.leases import Leases
from brain.mail.db import Account
from brain.mail.service import MAIL_SUP, MailService, child_id, service_for
from brain.mail.sync import SyncNow
from brain.nats_auth import process_connect_options
from brain.process import Process
from brain.stash import StashKey

__all__ = ["BUCKET", "LeasedOwnership", "LocalOwnership", "MailOwner", "Ownership", "ownership_for"]

log = logging.getLogger("brain.mail.ownership")

BUCKET = "brain_mail_leases"
OWNER_SUBJECT = "brain.mail.owner"
# A disconnect waits this long for the owner to stop the account's actor (a page may finish).
_STOP_TIMEOUT_S = 60.0
# How long a request waits for an account's stopping actor (or its lease) to make way.
_ACTOR_CHANGE_SECONDS = 10.0
_TOKEN_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class Ownership(Protocol):
    """What the mail routes ask of whoever decides where an account syncs."""

    async def deliver(self, account: Account, message: SyncNow, *, start: bool) -> bool:
        """Hand `message` to the account's actor wherever it runs, starting one if none runs (and
        `start`); whether an actor took it."""

    async def stop(self, account: Account) -> None:
        """Stop the account's sync, wherever it runs; returns once it has stopped."""


class LocalOwnership:
    """This process syncs every account (a single process)."""

    def __init__(self, rt: Process, service: MailService) -> None:
        self.rt = rt
        self.service = service

    async def deliver(self, account: Account, message: SyncNow, *, start: bool) -> bool:
        """See Ownership: the actor is this process's."""
        return await deliver_here(self.rt, self.service, account, message, start=start)

    async def stop(self, account: Account) -> None:
        """Stop the account's actor (a page in flight finishes first)."""
        await stop_actor(self.rt, account.id, account.user_id)


async def deliver_here(
    rt: Process, service: MailService, account: Account, message: SyncNow | None, *, start: bool
) -> bool:
    """Hand `message` (None: nothing, just make sure it runs) to the account's actor in this
    process, starting one if none runs (and `start`); whether an actor took it.

    An ask, not a tell: an actor that is stopping (it just found the credentials refused) never
    reads its inbox again, and a message told to it would be lost with the sync the user asked
    for. Its ask fails instead, and a fresh actor starts once it is gone.
    """
    sup = await rt.alookup(MAIL_SUP)
    if sup is None:
        raise ServiceUnavailable("mail sync is not running")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _ACTOR_CHANGE_SECONDS
    while loop.time() < deadline:
        ref = await bridge.ask(sup.proxy().get_child(child_id(account.user_id, account.id)))
        if ref is None:
            if not start:
                return False
            try:
                await bridge.ask(sup.proxy().start_child(service.child_spec(account)))
                return True  # a new actor syncs at once, from the stored credentials
            except ChildAlreadyStarted:
                continue  # started by someone else meanwhile: hand it the message
            except ChildStartError:
                log.exception("mail account %s: sync actor did not start", account.id)
                raise ServiceUnavailable("mail sync could not be started; try again") from None
        if message is None:
            return True
        try:
            await bridge.ask(ref.ask(message, block=False))
            return True
        except pykka.ActorDeadError:
            await asyncio.sleep(0.05)  # stopping: wait for it to leave the supervisor
    raise ServiceUnavailable("the account's sync is restarting; try again")


async def stop_actor(rt: Process, account_id: str, user_id: str) -> None:
    """Stop the account's actor here, if it runs (returns once it has stopped)."""
    sup = await rt.alookup(MAIL_SUP)
    if sup is not None:
        await bridge.ask(sup.proxy().terminate_child(child_id(user_id, account_id)))


class LeasedOwnership:
    """Accounts owned through leases, one process each (see the module docstring).

    The `MailOwner` actor runs its checks and connection; routes reach it through `deliver`/`stop`.
    """

    def __init__(self, rt: Process, service: MailService) -> None:
        self.rt = rt
        self.service = service
        self.ttl = rt.settings.mail.lease_ttl_seconds
        self.check_seconds = min(self.ttl / 3, 2.0)
        token = _TOKEN_UNSAFE.sub("-", f"{socket.gethostname()}-w{rt.worker.index}-{os.getpid()}")
        self.owner = token[-120:]
        self.nc: Any = None
        self.leases: Leases | None = None
        self.stopping = False
        self._seen_free: set[str] = set()
        self._users: dict[str, str] = {}  # account id -> user id, of the accounts held
        # Held accounts whose sync was stopped on request (a disconnect), until when (monotonic).
        self._paused: dict[str, float] = {}
        self.checks = 0
        self.last_error = ""

    # -- what the routes ask ---------------------------------------------------------------------

    async def deliver(self, account: Account, message: SyncNow, *, start: bool) -> bool:
        """See Ownership: here if this process holds the account's lease or can take it (when
        `start`), else through the process that holds it."""
        leases = self._ready()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _ACTOR_CHANGE_SECONDS
        while loop.time() < deadline:
            try:
                if account.id in leases.held() or (start and await leases.claim(account.id)):
                    self._users[account.id] = account.user_id
                    self._paused.pop(account.id, None)
                    return await deliver_here(self.rt, self.service, account, message, start=start)
                holder = await leases.holder(account.id)
            except (nats.errors.Error, TimeoutError) as exc:
                raise ServiceUnavailable(f"mail sync ownership is out of reach ({type(exc).__name__}); try again") from None
            if holder is None and not start:
                return False  # nobody syncs it, and it is not to be started
            if holder is not None:
                body = {"op": "sync", "account": account.id, "reason": message.reason,
                        "reconnect": message.reconnect, "start": start}
                answer = await self._ask_owner(holder, body, timeout=_ACTOR_CHANGE_SECONDS)
                if answer is not None and answer.get("done") is not None:
                    return bool(answer["done"])
                # Its holder is going (its lease is about to be released or to age out).
                await asyncio.sleep(0.2)
            # else: released a moment ago: take it
        raise ServiceUnavailable("the account's sync is moving between workers; try again")

    async def stop(self, account: Account) -> None:
        """Stop the account's sync, here or at its owner; returns once it has stopped.

        The owner keeps the lease (its sync paused) until its check finds the account no longer
        to be synced: released at once, another worker could take the account up again in the
        moment before the caller records the disconnect.
        """
        leases = self._ready()
        if account.id in leases.held():
            await self._pause(account.id, account.user_id)
            return
        await stop_actor(self.rt, account.id, account.user_id)  # one whose lease was lost, if any
        holder = await leases.holder(account.id)
        if holder is not None and holder != self.owner:
            await self._ask_owner(holder, {"op": "stop", "account": account.id}, timeout=_STOP_TIMEOUT_S)

    async def _pause(self, account_id: str, user_id: str) -> None:
        self._paused[account_id] = time.monotonic() + _STOP_TIMEOUT_S
        await stop_actor(self.rt, account_id, user_id)

    def stats(self) -> dict[str, Any]:
        """Figures for /health."""
        held = sorted(self.leases.held()) if self.leases else []
        return {"owner": self.owner, "leases_held": len(held), "accounts": held, "lease_ttl_seconds": self.ttl,
                "checks": self.checks, "last_error": self.last_error or None}

    # -- the actor's loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, then check every `check_seconds` until stopped."""
        self.nc = await jetstream.connect_kept(
            process_connect_options(self.rt), name="brain-mail-owner", stopping=lambda: self.stopping, note=self._note,
        )
        if self.nc is None:
            return
        leases = Leases(self.nc.jetstream(timeout=5), BUCKET, ttl=self.ttl, owner=self.owner,
                        replicas=self.rt.settings.nats.replicas)

        async def opened() -> Leases:
            await leases.open()
            return leases

        if await jetstream.retried(opened, what=f"lease bucket {BUCKET}", stopping=lambda: self.stopping,
                                   note=self._note) is None:
            return  # stopped before JetStream gave the bucket
        await self.nc.subscribe(f"{OWNER_SUBJECT}.{self.owner}", cb=self._on_request)
        self.ttl = leases.ttl
        self.check_seconds = min(self.ttl / 3, 2.0)
        self.leases = leases
        await jetstream.every(lambda: self.check_seconds, self._round, what="checking the mail leases",
                              stopping=lambda: self.stopping, note=self._note)

    async def close(self) -> None:
        """Stop our accounts' actors, then give their leases up (the others take them at once)."""
        self.stopping = True
        leases = self.leases
        if leases is not None:
            for account_id in leases.held():
                try:
                    await self._give_up(account_id)
                except Exception:  # noqa: BLE001 - the lease ages out anyway
                    log.exception("mail account %s: giving up its lease failed", account_id)
        await jetstream.close_quietly(self.nc)

    async def _round(self) -> None:
        try:
            await self._check()
        finally:
            await self._drop_expired()  # whether or not the bucket answered: a lapsed lease is not ours
            self.checks += 1

    async def _check(self) -> None:
        leases = self._ready()
        accounts = await asyncio.get_running_loop().run_in_executor(None, self.service.db.accounts_to_resume)
        wanted = {a.id: a for a in accounts if a.provider in self.service.registry}
        for account_id in leases.held():
            account = wanted.get(account_id)
            if account is None:
                await self._give_up(account_id)  # disconnected, deleted, needs the user again
            elif await leases.renew(account_id):
                if self._paused.get(account_id, 0.0) <= time.monotonic():
                    self._paused.pop(account_id, None)
                    # Running after a mail supervisor restart too.
                    await deliver_here(self.rt, self.service, account, None, start=True)
            else:
                await self._stop_here(account_id)
        for account_id, account in wanted.items():
            if account_id in leases.held():
                continue
            if self._mine(account_id) or account_id in self._seen_free:
                if await leases.claim(account_id):
                    log.info("mail account %s: syncing here (lease taken)", account_id)
                    self._seen_free.discard(account_id)
                    self._users[account_id] = account.user_id
                    await deliver_here(self.rt, self.service, account, None, start=True)
            elif await leases.holder(account_id) is None:
                self._seen_free.add(account_id)
            else:
                self._seen_free.discard(account_id)

    async def _drop_expired(self) -> None:
        """Stop the accounts whose lease we could not renew in time: another process may own them now."""
        leases = self.leases
        if leases is None:
            return
        now = time.monotonic()
        for account_id in leases.held():
            if leases.valid_until(account_id) <= now + self.check_seconds:
                log.warning("mail account %s: its lease could not be renewed in time; stopping its sync here",
                            account_id)
                await self._stop_here(account_id)
                leases.forget_one(account_id)

    def _mine(self, account_id: str) -> bool:
        """Whether the account hashes to this worker (which then takes it without waiting)."""
        digest = int.from_bytes(hashlib.sha256(account_id.encode()).digest()[:8], "big")
        return digest % self.rt.worker.count == self.rt.worker.index - 1

    async def _give_up(self, account_id: str) -> None:
        self._paused.pop(account_id, None)
        await self._stop_here(account_id)
        if self.leases is not None:
            await self.leases.release(account_id)

    async def _stop_here(self, account_id: str) -> None:
        user_id = self._users.pop(account_id, None)
        if user_id is None:
            account = await asyncio.get_running_loop().run_in_executor(None, self.service.db.account, account_id)
            user_id = account.user_id if account is not None else None
        if user_id is not None:
            await stop_actor(self.rt, account_id, user_id)

    # -- requests from the other processes ------------------------------------------------------------

    async def _on_request(self, msg: Any) -> None:
        """Another process asks the owner of an account: `sync` (deliver a SyncNow) or `stop`.

        The answer's `done` is None when this process does not hold the account (any more): the
        asker looks for its owner again.
        """
        try:
            body = json.loads(msg.data)
            account_id = str(body["account"])
            op = body["op"]
        except (ValueError, KeyError, TypeError):
            return
        leases = self.leases
        done: bool | None = None
        try:
            if leases is not None and account_id in leases.held():
                account = await asyncio.get_running_loop().run_in_executor(None, self.service.db.account, account_id)
                if account is None:
                    done = False
                elif op == "stop":
                    await self._pause(account.id, account.user_id)
                    done = True
                elif op == "sync":
                    self._paused.pop(account_id, None)
                    message = SyncNow(str(body.get("reason", "")), reconnect=bool(body.get("reconnect")))
                    done = await deliver_here(self.rt, self.service, account, message, start=bool(body.get("start")))
        except ServiceUnavailable:
            done = None  # restarting here: the asker tries again
        if msg.reply:
            await msg.respond(json.dumps({"done": done}).encode())

    async def _ask_owner(self, holder: str, body: dict[str, Any], *, timeout: float) -> dict[str, Any] | None:
        """The owner's answer to `body`; None if it did not answer (it is gone: its lease ages out,
        and the next owner resumes the account)."""
        try:
            reply = await self.nc.request(f"{OWNER_SUBJECT}.{holder}", json.dumps(body).encode(), timeout=timeout)
            answer = json.loads(reply.data)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.info("mail account %s: its owner %s did not answer (%r)", body["account"], holder, exc)
            return None
        return answer if isinstance(answer, dict) else None

    def _ready(self) -> Leases:
        if self.leases is None:
            raise ServiceUnavailable("mail sync is still starting; try again")
        return self.leases

    def _note(self, message: str) -> None:
        if message != self.last_error:
            log.warning("mail ownership: %s", message)
        self.last_error = message


class MailOwner(LoopActor):
    """Runs a LeasedOwnership's checks on the serving loop (its supervisor restarts it if they fail)."""

    def __init__(self, *, link: Link | None = None, ownership: LeasedOwnership) -> None:
        super().__init__(link=link, loop=ownership.rt.loop)
        self.ownership = ownership

    def on_start(self) -> None:
        """Check (again, after a restart: leases held by this process are taken back)."""
        self.ownership.stopping = False
        super().on_start()

    async def main(self) -> None:
        """The checks, until stopped."""
        await self.ownership.run()

    async def close(self) -> None:
        """Stop the actors of our accounts, give their leases up, close the connection."""
        await self.ownership.close()

    def on_stop(self) -> None:
        """Stop checking, then close."""
        self.ownership.stopping = True
        super().on_stop()

    def on_failure(self, *exc_info: object) -> None:
        """Stop checking, then close."""
        self.ownership.stopping = True
        super().on_failure(*exc_info)


_OWNERSHIP: StashKey[LocalOwnership | LeasedOwnership] = StashKey("brain.mail.ownership")


def ownership_for(rt: Process) -> LocalOwnership | LeasedOwnership:
    """The process's Ownership: leases when other processes share the data (several workers),
    this process alone otherwise."""

    def make() -> LocalOwnership | LeasedOwnership:
        service = service_for(rt)
        return LeasedOwnership(rt, service) if rt.worker.several else LocalOwnership(rt, service)

    return rt.stash.setdefault(_OWNERSHIP, make)
