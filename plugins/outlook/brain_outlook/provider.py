"""Outlook / Microsoft 365 mail through MSAL and Microsoft Graph.

- Credentials: an MSAL ``ConfidentialClientApplication`` whose token cache is serialised into
  the account's (encrypted) credentials in mail.db, so the refresh token MSAL keeps — Entra
  rotates it on every refresh — survives restarts. The core decides when to refresh; MSAL is
  asked with ``force_refresh`` so a token Graph refused is never handed out again.
- Sync: ``/me/mailFolders/{folder}/messages/delta`` with ``Prefer: odata.maxpagesize``;
  ``@odata.nextLink`` is the checkpoint within a round, ``@odata.deltaLink`` the cursor
  between rounds; ``@removed`` entries are deletions (or moves out of the folder); 410 /
  ``syncStateNotFound`` means ``CursorExpired``.
- HTTP: one ``requests.Session`` per provider instance (one per thread). With a ``ca_bundle``
  the session ignores the environment (``trust_env=False``): ``REQUESTS_CA_BUNDLE`` would
  otherwise override ``verify``.
"""

from __future__ import annotations

import email.utils
import time
import warnings
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import msal
import requests

from brain.mail.provider import (
    AuthFailed,
    ConnectRejected,
    Credentials,
    CursorExpired,
    MailMessage,
    MailProvider,
    ProviderError,
    RateLimited,
    SyncContext,
    SyncPage,
    Transient,
    parse_retry_after,
)

__all__ = ["OutlookProvider"]

SCOPES = ["Mail.Read", "User.Read"]
DEFAULTS: dict[str, Any] = {
    "tenant": "common",
    "authority_host": "https://login.microsoftonline.com",
    "graph_base_url": "https://graph.microsoft.com/v1.0",
    "folder": "inbox",
    "timeout": 30,
    "ca_bundle": "",
}
SELECT = (
    "id,conversationId,internetMessageId,subject,from,toRecipients,ccRecipients,receivedDateTime,"
    "bodyPreview,isRead,flag,categories,importance,parentFolderId"
)
_AUTH_ERRORS = {
    "invalid_grant",
    "interaction_required",
    "consent_required",
    "login_required",
    "invalid_client",
    "unauthorized_client",
    "invalid_scope",
}
_EXPIRED_CODES = {"syncStateNotFound", "resyncRequired", "SyncStateInvalid", "syncStateInvalid"}


class OutlookProvider(MailProvider):
    """Outlook / Graph (msal + requests); settings from `[plugins.outlook]`."""

    name = "outlook"
    title = "Outlook"

    def __init__(self, settings: Mapping[str, Any], *, page_size: int = 100) -> None:
        super().__init__(settings, page_size=page_size)
        conf = {**DEFAULTS, **settings}
        self.client_id = str(conf.get("client_id", ""))
        self.client_secret = str(conf.get("client_secret", ""))
        self.authority = f"{str(conf['authority_host']).rstrip('/')}/{conf['tenant']}"
        self.graph = str(conf["graph_base_url"]).rstrip("/")
        self.folder = str(conf["folder"])
        self.timeout = float(conf["timeout"])
        self.ca_bundle = str(conf["ca_bundle"] or "")
        self.page_size = max(1, min(1000, self.page_size))
        self._session: requests.Session | None = None
        self._cache = msal.SerializableTokenCache()
        self._app: msal.ConfidentialClientApplication | None = None

    # Connecting -----------------------------------------------------------------------

    def authorize_url(self, *, state: str, redirect_uri: str, code_challenge: str) -> str:
        """Microsoft's sign-in and consent page (`prompt=consent`), PKCE-bound."""
        with warnings.catch_warnings():
            # MSAL prefers initiate_auth_code_flow, whose flow dict (its own PKCE verifier
            # included) must travel from connect to callback; brain's signed, single-use
            # `state` and the verifier the core derives from it do that job instead.
            warnings.simplefilter("ignore", DeprecationWarning)
            url = self._msal().get_authorization_request_url(
                SCOPES, state=state, redirect_uri=redirect_uri, prompt="consent"
            )
        # The deprecated builder takes no PKCE parameters: they are added to its query.
        return f"{url}&{urlencode({'code_challenge': code_challenge, 'code_challenge_method': 'S256'})}"

    def exchange_code(self, *, code: str, redirect_uri: str, code_verifier: str) -> Credentials:
        """Redeem the code with its PKCE verifier; the MSAL cache (refresh token included) becomes the credentials."""
        self._cache = msal.SerializableTokenCache()
        self._app = None
        with warnings.catch_warnings():
            # Deprecated in favour of the auth-code-flow helpers (see authorize_url).
            warnings.simplefilter("ignore", DeprecationWarning)
            result = self._msal_call(
                lambda: self._msal().acquire_token_by_authorization_code(
                    code, SCOPES, redirect_uri=redirect_uri, data={"code_verifier": code_verifier}
                )
            )
        return self._credentials(result)

    def refresh(self, credentials: Credentials) -> Credentials:
        """A new access token: MSAL silent refresh from the stored cache (forced)."""
        self._load_cache(credentials)
        app = self._msal()
        account = self._account(app, credentials)
        if account is None:
            if not credentials.refresh_token:
                raise AuthFailed("no MSAL account or refresh token stored")
            result = self._msal_call(lambda: app.acquire_token_by_refresh_token(credentials.refresh_token, SCOPES))
        else:
            result = self._msal_call(
                lambda: app.acquire_token_silent_with_error(SCOPES, account=account, force_refresh=True)
            )
            if result is None:
                raise AuthFailed("MSAL holds no refresh token for the account")
        return self._credentials(result)

    def account_address(self, ctx: SyncContext) -> str:
        """The mailbox's address from Graph /me."""
        me = self._get(ctx, f"{self.graph}/me")
        address = me.get("mail") or me.get("userPrincipalName")
        if not address:
            raise ProviderError("Graph /me returned no mail address")
        return str(address)

    # Syncing ------------------------------------------------------------------------------

    def initial_sync(self, ctx: SyncContext, checkpoint: dict[str, Any] | None) -> SyncPage:
        """One page of a delta round started without a token (the whole folder)."""
        if checkpoint is None:
            folder = self._get(ctx, f"{self.graph}/me/mailFolders/{quote(self.folder)}")
            total = folder.get("totalItemCount")
            url = f"{self.graph}/me/mailFolders/{quote(self.folder)}/messages/delta?$select={SELECT}"
        else:
            total = checkpoint.get("total")
            url = checkpoint["link"]
        page = self._delta_page(ctx, url)
        if page.next is not None:
            page.next["total"] = total
        page.estimated_total = total
        return page

    def incremental_sync(self, ctx: SyncContext, cursor: dict[str, Any]) -> SyncPage:
        """One page of a delta round from the saved deltaLink (or the nextLink within it)."""
        return self._delta_page(ctx, cursor["link"])

    def close(self) -> None:
        """Close the HTTP session."""
        session, self._session = self._session, None
        self._app = None
        if session is not None:
            session.close()

    # Helpers ------------------------------------------------------------------------------

    def _http(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            if self.ca_bundle:
                session.trust_env = False
                session.verify = self.ca_bundle
            self._session = session
        return self._session

    def _msal(self) -> msal.ConfidentialClientApplication:
        if not self.client_id or not self.client_secret:
            raise ConnectRejected("Outlook is not configured: set MICROSOFT_CLIENT_ID and MICROSOFT_CLIENT_SECRET")
        if self._app is None:
            try:
                self._app = msal.ConfidentialClientApplication(
                    self.client_id,
                    client_credential=self.client_secret,
                    authority=self.authority,
                    http_client=self._http(),
                    instance_discovery=False,
                    validate_authority=False,
                    token_cache=self._cache,
                    timeout=self.timeout,
                )
            except ValueError as exc:  # authority discovery failed
                raise Transient(f"Microsoft identity platform unreachable: {exc}") from exc
            except requests.RequestException as exc:
                raise Transient(f"Microsoft identity platform unreachable: {exc}") from exc
        return self._app

    def _load_cache(self, credentials: Credentials) -> None:
        blob = credentials.extra.get("msal_cache")
        if blob:
            self._cache.deserialize(blob)

    def _account(self, app: msal.ConfidentialClientApplication, credentials: Credentials) -> dict[str, Any] | None:
        wanted = credentials.extra.get("home_account_id")
        accounts = app.get_accounts()
        for account in accounts:
            if wanted is None or account.get("home_account_id") == wanted:
                return account
        return None

    @staticmethod
    def _msal_call(fn: Any) -> dict[str, Any]:
        try:
            result = fn()
        except msal.exceptions.MsalServiceError as exc:  # 5xx from the token endpoint
            raise Transient(f"Microsoft token endpoint failed: {exc}") from exc
        except requests.RequestException as exc:
            raise Transient(f"Microsoft identity platform unreachable: {exc}") from exc
        if result is None:
            return result  # type: ignore[return-value]
        if "error" in result:
            error = result.get("error")
            description = str(result.get("error_description", "")).split(" Trace ID:")[0]
            if error in _AUTH_ERRORS:
                raise AuthFailed(f"{error}: {description}")
            raise Transient(f"{error}: {description}")
        return result

    def _credentials(self, result: dict[str, Any]) -> Credentials:
        now = time.time()
        claims = result.get("id_token_claims") or {}
        accounts = self._msal().get_accounts()
        home = None
        if accounts:
            oid, tid = claims.get("oid"), claims.get("tid")
            match = [a for a in accounts if oid and tid and a.get("home_account_id") == f"{oid}.{tid}"]
            home = (match or accounts)[0].get("home_account_id")
        refresh_tokens = list(self._cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN))
        extra: dict[str, Any] = {"msal_cache": self._cache.serialize()}
        if home:
            extra["home_account_id"] = home
        return Credentials(
            access_token=result["access_token"],
            expires_at=now + float(result.get("expires_in", 3600)),
            refresh_token=refresh_tokens[0]["secret"] if refresh_tokens else result.get("refresh_token"),
            extra=extra,
            obtained_at=now,
        )

    def _delta_page(self, ctx: SyncContext, url: str) -> SyncPage:
        body = self._get(ctx, url, prefer_page=True)
        messages: list[MailMessage] = []
        deleted: list[str] = []
        for item in body.get("value", []):
            if "@removed" in item:
                deleted.append(item["id"])
            else:
                messages.append(_message(item, self.folder))
        next_link = body.get("@odata.nextLink")
        if next_link:
            return SyncPage(messages=messages, deleted=deleted, next={"link": next_link})
        delta_link = body.get("@odata.deltaLink")
        if not delta_link:
            raise ProviderError("Graph delta page has neither nextLink nor deltaLink")
        return SyncPage(messages=messages, deleted=deleted, cursor={"link": delta_link})

    def _get(self, ctx: SyncContext, url: str, *, prefer_page: bool = False) -> dict[str, Any]:
        self._check_url(url)
        for attempt in range(2):
            token = ctx.tokens.access_token()
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
            if prefer_page:
                headers["Prefer"] = f"odata.maxpagesize={self.page_size}"
            ctx.budget.spend(1)
            try:
                resp = self._http().get(url, headers=headers, timeout=self.timeout)
                body = resp.json() if resp.content else {}
            except (requests.RequestException, ValueError) as exc:
                raise Transient(f"Graph unreachable: {type(exc).__name__}: {exc}") from exc
            if resp.status_code == 401 and attempt == 0:
                ctx.tokens.invalidate(token)  # expired or revoked: one refresh, then retry
                continue
            if resp.status_code < 400:
                return body
            raise _map_graph_error(resp, body)
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_url(self, url: str) -> None:
        """Links come from Graph; never send the bearer token anywhere else."""
        graph = urlsplit(self.graph)
        target = urlsplit(url)
        if (target.scheme, target.netloc) != (graph.scheme, graph.netloc):
            raise ProviderError(f"refusing to follow a link outside Graph: {target.scheme}://{target.netloc}")


def _map_graph_error(resp: requests.Response, body: Any) -> ProviderError:
    error = body.get("error", {}) if isinstance(body, dict) else {}
    code = error.get("code", "") if isinstance(error, dict) else ""
    message = f"Graph {resp.status_code} {code}: {error.get('message', '') if isinstance(error, dict) else ''}"
    status = resp.status_code
    if status == 410 or code in _EXPIRED_CODES:
        return CursorExpired(message)
    if status == 429:
        return RateLimited(message, retry_after=parse_retry_after(resp.headers.get("Retry-After")))
    if status >= 500:
        return Transient(message, retry_after=parse_retry_after(resp.headers.get("Retry-After")))
    if status in (401, 403):
        return AuthFailed(message)
    return ProviderError(message)


def _address(value: Any) -> str:
    if not isinstance(value, dict):
        return ""
    inner = value.get("emailAddress") or {}
    return email.utils.formataddr((inner.get("name") or "", inner.get("address") or ""))


def _message(item: Mapping[str, Any], folder: str) -> MailMessage:
    labels = [folder.upper()]
    if item.get("isRead") is False:
        labels.append("UNREAD")
    if (item.get("flag") or {}).get("flagStatus") == "flagged":
        labels.append("FLAGGED")
    if item.get("importance") == "high":
        labels.append("IMPORTANT")
    labels += [f"category:{c}" for c in item.get("categories") or []]
    return MailMessage(
        id=item["id"],
        thread_id=item.get("conversationId"),
        internet_message_id=item.get("internetMessageId"),
        subject=item.get("subject") or "",
        sender=_address(item.get("from")),
        to=tuple(a for a in map(_address, item.get("toRecipients") or []) if a),
        cc=tuple(a for a in map(_address, item.get("ccRecipients") or []) if a),
        date=item.get("receivedDateTime") or None,
        snippet=item.get("bodyPreview") or "",
        labels=tuple(labels),
        headers={"Message-ID": item["internetMessageId"]} if item.get("internetMessageId") else {},
    )
