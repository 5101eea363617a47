"""The mail subsystem of one process: registry, mail.db, connect flows, actors.

Blocking methods (they talk to providers and to mail.db) run in worker threads: the routes
call the ones that talk to providers on `connect_pool` (its own bounded pool, so a provider
that hangs never holds a thread the rest of the server waits for) and mail.db-only ones in the
event loop's executor; the actors call them from their own threads.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import pluggy

from brain.actors.supervisor import ChildSpec, Supervisor
from brain.config import Settings
from brain.contracts import EVENT_SINK
from brain.errors import BadRequest, Forbidden, NotFound, ServiceUnavailable, StorageFault
from brain.mail.conversion import ConversionPool
from brain.mail.crypto import InvalidState, StateSigner, pkce_challenge
from brain.mail.db import Account, MailDb, States
from brain.mail.engine import AccountSync, EventSink, QuotaPacer
from brain.mail.provider import (
    AuthFailed,
    ConnectRejected,
    ConvertOptions,
    Credentials,
    MailProvider,
    ProviderError,
    PushReply,
    PushRequest,
    Revocation,
    SyncContext,
    SyncOptions,
    iso_utc,
)
from brain.mail.registry import ProviderRegistry
from brain.mail.selection import SyncChoices, content_key
from brain.mail.sync import MailSync
from brain.mail.access_tokens import TokenProvider
from brain.process import Process
from brain.stash import StashKey
from brain.storage import storage_faults

__all__ = [
    "CALLBACK_PATH",
    "MAIL_SUP",
    "MailService",
    "MailSupervisor",
    "RESULT_PATH",
    "START_PATH",
    "child_id",
    "push_secret_matches",
    "service_for",
    "stop_user",
]

log = logging.getLogger("brain.mail")

# Where the mail supervisor sits in the tree (under the data tier, after the stores).
MAIL_SUP = "data_sup/mail"
START_PATH = "/mail/oauth/start"
CALLBACK_PATH = "/mail/oauth/callback"
RESULT_PATH = "/mail/oauth/result"


def _digest(browser: str) -> str:
    """What mail.db keeps of a flow cookie: its SHA-256 (a copy of mail.db binds no browser)."""
    return hashlib.sha256(browser.encode()).hexdigest()


def child_id(user_id: str, account_id: str) -> str:
    """The mail supervisor's child id of an account's actor."""
    return f"{user_id}:{account_id}"


class MailService:
    """Everything mail sync needs, shared by the routes, the supervisor and the actors."""

    def __init__(self, settings: Settings, secret: bytes, pm: pluggy.PluginManager, sink: EventSink) -> None:
        self.settings = settings
        self.registry = ProviderRegistry.from_plugins(pm)
        self.db = MailDb(settings.data_path / "mail.db", secret)
        self.signer = StateSigner(secret)
        self.sink = sink
        self.connect_pool = ThreadPoolExecutor(settings.mail.connect_workers, thread_name_prefix="brain-mail-connect")
        self.conversion = ConversionPool(settings.mail.convert_workers)
        # Attachment downloads (provider calls, then one chunk per call) have threads of their
        # own: a slow download never holds up a connect, nor the other way round.
        self.download_pool = ThreadPoolExecutor(settings.mail.connect_workers, thread_name_prefix="brain-mail-download")

    @property
    def redirect_uri(self) -> str:
        """Where providers send the browser back after consent."""
        return self.settings.mail.redirect_uri or f"{self.settings.api_public_url}{CALLBACK_PATH}"

    @property
    def app_redirect_url(self) -> str:
        """Where the callback sends the browser when done: the app, or brain's result page."""
        return self.settings.mail.app_redirect_url or f"{self.settings.api_public_url}{RESULT_PATH}"

    def new_provider(self, name: str) -> MailProvider:
        """A fresh provider instance for the calling thread."""
        return self.registry.create(name, self.settings.plugin_settings(name), page_size=self.settings.mail.page_size)

    def provider_name(self, value: Any) -> str:
        """Check a client's `provider` field: a 400 naming the problem if it is not a known one."""
        known = ", ".join(self.registry.names()) or "none"
        if value is None:
            raise BadRequest(f"provider is required (one of: {known})")
        if not isinstance(value, str) or value not in self.registry:
            raise BadRequest(f"unknown provider {value!r} (known: {known})", code="UNKNOWN_PROVIDER")
        return value

    # Actors -------------------------------------------------------------------------------

    def child_spec(self, account: Account) -> ChildSpec:
        """How the mail supervisor starts (and restarts) an account's actor."""
        return ChildSpec(
            id=child_id(account.user_id, account.id),
            start=lambda link: MailSync.start(link=link, service=self, account_id=account.id),
            restart="transient",
            # A step in progress (one page) must be able to finish when the actor is stopped.
            shutdown_timeout=30.0,
        )

    def engine_for(self, account_id: str) -> AccountSync | None:
        """The sync engine of one account, built in the calling (actor) thread.

        None when the account cannot sync: gone, disconnected, its provider no longer
        installed (it resumes once the plugin is back), or its credentials unreadable (the
        server secret changed: the account needs the user to connect it again).
        """
        account = self.db.account(account_id)
        if account is None:
            return None
        if account.provider not in self.registry:
            log.warning("mail account %s: provider %r is not available", account_id, account.provider)
            return None
        try:
            credentials = self.db.load_credentials(account_id)
        except ValueError as exc:
            log.error("mail account %s: stored credentials unusable: %s", account_id, exc)
            self.db.update_account(
                account_id, state=States.NEEDS_REAUTH, last_error=f"stored credentials unusable: {exc}",
                last_error_at=time.time(), retry_at=None,
            )
            return None
        if credentials is None:
            return None
        provider = self.new_provider(account.provider)
        tokens = self._token_provider(provider, credentials, account_id)
        rate = provider.quota_units_per_second
        return AccountSync(
            db=self.db,
            account_id=account_id,
            provider=provider,
            tokens=tokens,
            sink=self.sink,
            settings=self.settings.mail,
            budget=QuotaPacer(rate),
            address=account.address,
            options=self.sync_options(account),
            convert=self.conversion.map,
        )

    def provider_context(self, account: Account) -> tuple[MailProvider, SyncContext]:
        """A provider and its context for one call on an account's behalf outside its sync (an
        attachment download): the stored credentials, refreshed and saved like the sync's."""
        if account.provider not in self.registry:
            raise ServiceUnavailable(f"the {account.provider} provider is not installed on this server")
        try:
            credentials = self.db.load_credentials(account.id)
        except ValueError:
            credentials = None
        if credentials is None:
            raise NotFound("the account of this message has no credentials (disconnected)", code="ACCOUNT_DISCONNECTED")
        provider = self.new_provider(account.provider)
        tokens = self._token_provider(provider, credentials, account.id)
        ctx = SyncContext(
            tokens=tokens, budget=QuotaPacer(provider.quota_units_per_second), page_size=provider.page_size,
            account_id=account.id, address=account.address, options=self.sync_options(account),
        )
        return provider, ctx

    def push_url(self, provider: str) -> str | None:
        """Where ``provider`` sends push notifications, or None without `[mail] public_url`."""
        base = self.settings.mail.public_url.rstrip("/")
        return f"{base}/mail/push/{provider}" if base else None

    def sync_options(self, account: Account) -> SyncOptions:
        """What the account's provider syncs and keeps: the user's choices, the server's caps."""
        mail = self.settings.mail
        convert = ConvertOptions(keep_html=mail.keep_html, max_text_bytes=mail.max_text_bytes)
        return SyncChoices.from_json(account.settings).options(convert)

    def _token_provider(self, provider: MailProvider, credentials: Credentials, account_id: str | None) -> TokenProvider:
        if account_id is None:
            return TokenProvider(provider, credentials, skew=self.settings.mail.refresh_skew_seconds, key=f"new:{id(provider)}")
        return TokenProvider(
            provider,
            credentials,
            skew=self.settings.mail.refresh_skew_seconds,
            key=account_id,
            persist=lambda creds: self.db.save_credentials(account_id, creds),
            reload=lambda: self.db.load_credentials(account_id),
        )

    # Connecting (blocking) -----------------------------------------------------------------

    @property
    def start_url(self) -> str:
        """brain's connect link: it binds a flow to the browser that opens it, then goes to the provider."""
        return f"{self.settings.api_public_url}{START_PATH}"

    def begin_oauth(self, user_id: str, provider_name: str, choices: SyncChoices | None = None) -> dict[str, Any]:
        """Start an OAuth flow: a signed, single-use state and brain's connect link carrying it.

        The provider's consent page (with the state and the PKCE challenge) is built now, so
        a misconfigured provider fails here, and kept for the connect link to redirect to; so
        are the account's sync choices, until the callback connects it.
        """
        provider = self.new_provider(provider_name)
        if not provider.oauth:
            fields = ", ".join(provider.direct_fields)
            raise BadRequest(f"provider {provider_name!r} has no OAuth flow; send {fields}")
        mail = self.settings.mail
        state, nonce, expires_at = self.signer.sign(user_id=user_id, provider=provider_name, ttl=mail.oauth_state_ttl_seconds)
        challenge = pkce_challenge(self.signer.code_verifier(nonce))
        try:
            url = self._connect_call(
                lambda: provider.authorize_url(state=state, redirect_uri=self.redirect_uri, code_challenge=challenge)
            )
        finally:
            provider.close()
        start_by = min(expires_at, time.time() + mail.oauth_start_ttl_seconds)
        self.db.save_oauth_state(
            nonce=nonce, user_id=user_id, provider=provider_name, expires_at=expires_at, start_by=start_by,
            authorize_url=url, settings=choices.to_json() if choices is not None else None,
        )
        return {
            "provider": provider_name,
            "authorize_url": f"{self.start_url}?{urlencode({'flow': state})}",
            "state": state,
            "redirect_uri": self.redirect_uri,
            "start_by": iso_utc(start_by),
        }

    def verified_state(self, state: str) -> dict[str, Any]:
        """The payload ({u, p, n, e}) of a genuine, unexpired state; 400 `INVALID_STATE` otherwise."""
        try:
            payload = self.signer.verify(state)
        except InvalidState as exc:
            raise BadRequest(str(exc), code="INVALID_STATE") from None
        if payload["p"] not in self.registry:
            raise BadRequest(f"unknown provider {payload['p']!r} in state", code="INVALID_STATE")
        return payload

    def start_oauth(self, payload: Mapping[str, Any], browser: str) -> str:
        """Bind the flow to the browser holding the cookie ``browser``; the provider's consent page.

        Only the first browser to open the connect link, within `oauth_start_ttl_seconds`.
        """
        url = self.db.bind_oauth_state(nonce=payload["n"], browser=_digest(browser))
        if url is not None:
            return url
        if self.db.oauth_state_bound(payload["n"]):
            raise Forbidden(
                "this connect link was already opened (in this or another browser); start the connection again",
                code="FLOW_ALREADY_STARTED",
            )
        raise BadRequest(
            "this connect link was used already, is too old or unknown; start the connection again",
            code="INVALID_STATE",
        )

    def claim_flow(self, payload: Mapping[str, Any], *, browser: str | None, caller: str | None) -> SyncChoices | None:
        """Use up a callback's flow: it must be bound to this browser, or ``caller`` be its user;
        the sync choices the connect request made, if any.

        ``browser`` is the flow cookie the callback's request carried; ``caller`` the user of
        its bearer token, when a front end forwards code and state itself.
        """
        nonce, user_id, provider = payload["n"], payload["u"], payload["p"]
        settings = self.db.oauth_state_settings(nonce)
        if caller is not None:
            if caller != user_id:
                raise Forbidden("this authorization was started by another user", code="STATE_USER_MISMATCH")
            used = self.db.consume_oauth_state(nonce=nonce, user_id=user_id, provider=provider, browser=None)
        else:
            used = browser is not None and self.db.consume_oauth_state(
                nonce=nonce, user_id=user_id, provider=provider, browser=_digest(browser)
            )
            if not used and self.db.oauth_state_pending(nonce):
                raise Forbidden(
                    "this authorization was not started in this browser, so nothing was connected: open the "
                    "connect link from the app in the browser that signs in to the provider",
                    code="FLOW_NOT_BOUND",
                )
        if not used:
            raise BadRequest("state was already used or is unknown; start the connection again", code="INVALID_STATE")
        return SyncChoices.from_json(settings) if settings else None

    def finish_oauth(
        self, payload: Mapping[str, Any], code: str, choices: SyncChoices | None = None
    ) -> tuple[Account, bool]:
        """Exchange the code (with the flow's PKCE verifier), identify the mailbox, store the credentials."""
        provider = self.new_provider(payload["p"])
        verifier = self.signer.code_verifier(payload["n"])
        try:
            credentials = self._connect_call(
                lambda: provider.exchange_code(code=code, redirect_uri=self.redirect_uri, code_verifier=verifier)
            )
            return self._connect(payload["u"], provider, credentials, choices)
        finally:
            provider.close()

    def connect_direct(
        self, user_id: str, provider_name: str, fields: Mapping[str, Any], choices: SyncChoices | None = None
    ) -> tuple[Account, bool] | None:
        """Connect with credentials the client sent; None when it sent none (start OAuth)."""
        provider = self.new_provider(provider_name)
        try:
            credentials = self._connect_call(lambda: provider.direct_credentials(fields))
            if credentials is None:
                return None
            return self._connect(user_id, provider, credentials, choices)
        finally:
            provider.close()

    def _connect(
        self, user_id: str, provider: MailProvider, credentials: Credentials, choices: SyncChoices | None
    ) -> tuple[Account, bool]:
        tokens = self._token_provider(provider, credentials, None)
        mail = self.settings.mail
        convert = ConvertOptions(keep_html=mail.keep_html, max_text_bytes=mail.max_text_bytes)
        ctx = SyncContext(
            tokens=tokens, budget=QuotaPacer(0), page_size=provider.page_size,
            options=(choices or SyncChoices()).options(convert),
        )
        # Refreshing now proves the credentials work before anything is stored.
        self._connect_call(tokens.credentials)
        address = self._connect_call(lambda: provider.account_address(ctx))
        account, created = self.db.upsert_account(
            user_id=user_id, provider=provider.name, address=address, id_scheme=provider.id_scheme
        )
        if choices is not None:
            account = self.choose(account, choices)
        self.db.save_credentials(account.id, tokens.current)
        log.info("mail account %s connected (%s, user %s)", account.id, provider.name, user_id)
        return account, created

    def choose(self, account: Account, choices: SyncChoices) -> Account:
        """Store an account's sync choices. Syncing another set of messages means a resync that
        reconciles (what left the choice is deleted, what joined it received); keeping more or
        less of each message means a backfill, which the next sync starts by itself."""
        before = SyncChoices.from_json(account.settings)
        fields: dict[str, Any] = {"settings": choices.to_json()}
        started = account.initial_done or account.position is not None or account.phase != "initial"
        if before.selection_differs(choices) and started:
            fields.update(
                phase="initial", position=None, resync=True, epoch=account.epoch + 1, progress_done=0,
                progress_total=None,
            )
        self.db.update_account(account.id, **fields)
        return self.db.account(account.id) or account

    @staticmethod
    def _connect_call(fn: Any) -> Any:
        """Map provider errors during connect to client errors."""
        try:
            return fn()
        except ConnectRejected as exc:
            raise BadRequest(str(exc)) from None
        except AuthFailed as exc:
            raise BadRequest(f"the provider refused the credentials: {exc}", code="PROVIDER_AUTH_FAILED") from None
        except ProviderError as exc:
            raise BadRequest(
                f"the provider could not be reached: {exc}", status=502, code="PROVIDER_UNAVAILABLE"
            ) from None

    # Status and disconnect -------------------------------------------------------------------

    def status(self, user_id: str) -> list[dict[str, Any]]:
        """Every account of the user, as `GET /mail/status` shows them."""
        return [self.account_status(account) for account in self.db.accounts_for_user(user_id)]

    def account_status(self, account: Account) -> dict[str, Any]:
        """One account as `GET /mail/status` shows it."""
        return account.status(content_key(self.sync_options(account)))

    def owned_account(self, user_id: str, account_id: Any) -> Account:
        """The user's account ``account_id``: 400 if malformed, 404 if not theirs."""
        if account_id is None:
            raise BadRequest("account is required")
        if not isinstance(account_id, str) or not account_id or len(account_id) > 64:
            raise BadRequest("account must be an account id string")
        account = self.db.user_account(user_id, account_id)
        if account is None:
            raise NotFound(f"no mail account {account_id!r}", code="ACCOUNT_NOT_FOUND")
        return account


    # Disconnecting and push -------------------------------------------------------------------

    def disconnect(self, account: Account) -> Revocation:
        """Stop push, revoke the grant at the provider, delete the credentials (blocking).

        The account's actor must be stopped first. Whatever the provider says, brain's copy of
        the credentials is deleted; the answer says whether the grant is gone at the provider.
        """
        revocation = Revocation(None, "no credentials were stored")
        try:
            credentials = self.db.load_credentials(account.id)
        except ValueError:
            credentials = None
        if credentials is not None and account.provider in self.registry:
            engine = self.engine_for(account.id)
            if engine is not None:
                try:
                    engine.end_push()
                    revocation = engine.provider.revoke(credentials)
                finally:
                    engine.close()
        self.db.disconnect(account.id)
        log.info("mail account %s disconnected (revoked: %s)", account.id, revocation.revoked)
        return revocation

    def push_targets(self, provider_name: str, request: PushRequest) -> tuple[PushReply, list[Account]]:
        """The provider's reading of a notification, and the accounts it names (secret checked)."""
        provider_class = self.registry.get(provider_name)
        if provider_class is None:
            raise NotFound(f"no mail provider {provider_name!r}")
        reply = provider_class.read_push(self.settings.plugin_settings(provider_name), request)
        accounts: dict[str, Account] = {}
        for key, secret in reply.targets:
            for account in self.db.accounts_by_push_key(provider_name, key):
                if not push_secret_matches(account.push, secret):
                    log.warning("mail push for account %s carried the wrong secret; ignored", account.id)
                    continue
                accounts[account.id] = account
        return reply, list(accounts.values())


def push_secret_matches(push: str | None, secret: str | None) -> bool:
    """Whether a notification carrying `secret` (None: the provider authenticated it otherwise)
    may be for the account whose push channel is `push` (mail.db's column)."""
    if secret is None:
        return True
    stored = json.loads(push or "{}").get("secret", "")
    return hmac.compare_digest(secret.encode(), str(stored).encode())


# Told to the mail supervisor itself: resume the accounts again (mail.db could not be read).
_RESUME = "resume-accounts"


class MailSupervisor(Supervisor):
    """The mail supervisor: on every start (boot or restart) resumes each connected account, unless
    leases decide which process syncs which (`resume` false: brain.mail.ownership).

    When mail.db cannot be read (damaged, locked, no descriptors), it resumes nothing and tries
    again every RESUME_RETRY_SECONDS: crashing instead would restart it past the data tier's
    restart intensity and stop the whole process, the users' event stores with it.
    """

    RESUME_RETRY_SECONDS = 10.0

    def __init__(self, *, service: MailService, resume: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = service
        self.resume = resume

    def on_start(self) -> None:
        """Start the static children, then one MailSync per account that should sync."""
        super().on_start()
        if self.resume:
            self._resume()

    def on_receive(self, message: Any) -> Any:
        """Try resuming the accounts again (after a storage fault); the rest is the Supervisor's."""
        if message == _RESUME:
            self._resume()
            return None
        return super().on_receive(message)

    def _resume(self) -> None:
        try:
            accounts = self.service.db.accounts_to_resume()
        except StorageFault as exc:  # counted and logged with what to do where it was met (brain.storage)
            log.warning("mail accounts not resumed (mail.db: %s); trying again in %gs", exc.kind, self.RESUME_RETRY_SECONDS)
            self.schedule(self.RESUME_RETRY_SECONDS, _RESUME)
            return
        for account in accounts:
            if account.provider not in self.service.registry:
                log.warning("mail account %s: provider %r not available; not resumed", account.id, account.provider)
                continue
            try:
                self.start_child(self.service.child_spec(account))
            except Exception:
                log.exception("mail account %s could not be resumed", account.id)


_SERVICE: StashKey[MailService] = StashKey("brain.mail.service")


def service_for(rt: Process) -> MailService:
    """The process's mail service (created on first use; it opens mail.db)."""

    def create() -> MailService:
        service = MailService(rt.settings, rt.secret, rt.pm, _event_sink(rt))
        service.db.db.watch(storage_faults(rt))
        return service

    return rt.stash.setdefault(_SERVICE, create)


def _event_sink(rt: Process) -> EventSink:
    def append(user_id: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sink = rt.stash.get(EVENT_SINK)
        if sink is None:
            raise RuntimeError("this process has no event stores (no plugin offers an event sink)")
        return sink.append_from_thread(
            user_id, events, timeout=30, max_event_bytes=rt.settings.mail.max_event_bytes, with_data=False
        )

    return append


def stop_user(rt: Process, user_id: str) -> None:
    """Stop every MailSync actor of a user (blocking: a page in flight finishes first)."""
    sup = rt.lookup(MAIL_SUP)
    if sup is None:
        return
    proxy = sup.proxy()
    prefix = f"{user_id}:"  # child_id: "{user_id}:{account_id}"
    for child in proxy.which_children().get(timeout=10):
        if child["id"].startswith(prefix):
            proxy.terminate_child(child["id"]).get(timeout=60)
