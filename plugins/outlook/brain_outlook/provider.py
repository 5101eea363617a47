"""Outlook / Microsoft 365 mail through MSAL and Microsoft Graph.

- Credentials: an MSAL ``ConfidentialClientApplication`` whose token cache is serialised into
  the account's (encrypted) credentials in mail.db, so the refresh token MSAL keeps — Entra
  rotates it on every refresh — survives restarts. The core decides when to refresh; MSAL is
  asked with ``force_refresh`` so a token Graph refused is never handed out again.
- Folders: every mail folder (child folders too, named ``Parent/Child``) but Junk Email and
  Deleted Items, or the ones the account chose (well-known names such as ``sentitems``,
  display names, paths or ids).
- Sync: ``/me/mailFolders/{folder}/messages/delta`` per folder, one after the other, with
  ``Prefer: odata.maxpagesize``; ``@odata.nextLink`` is the checkpoint within a round,
  ``@odata.deltaLink`` (one per folder) the cursor between rounds; 410 / ``syncStateNotFound``
  means ``CursorExpired``. Every request prefers ``IdType="ImmutableId"``, so a message keeps
  its id when it moves: a ``@removed`` entry is looked up by id, and a message found in
  another synced folder is a change of folder (an update), not a deletion.
- Content: ``body`` as text (``Prefer: outlook.body-content-type="text"``; HTML when the
  account keeps HTML, converted by the core's model), the size (``PR_MESSAGE_SIZE``, expanded)
  and In-Reply-To / References (``PR_IN_REPLY_TO_ID``, ``PR_INTERNET_REFERENCES``, expanded),
  and the attachment listing of every message that has attachments (metadata only).
- HTTP: one ``requests.Session`` per provider instance (one per thread). With a ``ca_bundle``
  the session ignores the environment (``trust_env=False``): ``REQUESTS_CA_BUNDLE`` would
  otherwise override ``verify``.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import msal
import requests

from brain.mail.provider import (
    AttachmentContent,
    AuthFailed,
    ConnectRejected,
    ConvertOptions,
    Credentials,
    CursorExpired,
    MailProvider,
    MessageGone,
    MessageRecord,
    ProviderError,
    PushChannel,
    PushReply,
    PushRequest,
    RateLimited,
    Revocation,
    SyncContext,
    SyncPage,
    Transient,
    message_from_graph,
    parse_retry_after,
)

__all__ = ["OutlookProvider"]

log = logging.getLogger("brain.mail.outlook")

SCOPES = ["Mail.Read", "User.Read"]
DEFAULTS: dict[str, Any] = {
    "tenant": "common",
    "authority_host": "https://login.microsoftonline.com",
    "graph_base_url": "https://graph.microsoft.com/v1.0",
    "timeout": 30,
    "ca_bundle": "",
}
SELECT = (
    "id,conversationId,internetMessageId,subject,from,sender,toRecipients,ccRecipients,bccRecipients,replyTo,"
    "receivedDateTime,sentDateTime,bodyPreview,isRead,isDraft,flag,categories,importance,parentFolderId,hasAttachments"
)
# Three MAPI properties Graph's message type lacks: PR_MESSAGE_SIZE (the message's size in
# bytes), PR_IN_REPLY_TO_ID and PR_INTERNET_REFERENCES (the In-Reply-To and References headers,
# which Graph's internetMessageHeaders would give only with every other header of the message).
PROPERTIES_EXPAND = (
    "singleValueExtendedProperties($filter=id eq 'Integer 0x0E08' or id eq 'String 0x1042' or id eq 'String 0x1039')"
)
ATTACHMENT_SELECT = "id,name,contentType,size,isInline"
WELL_KNOWN = ("inbox", "sentitems", "drafts", "archive", "deleteditems", "junkemail")
SPAM_TRASH = ("junkemail", "deleteditems")
# 3: the delta links ask for In-Reply-To and References too. A link keeps the query it was made
# with, so a cursor of version 2 would never carry them: it expires, and one resync (which
# stores no event twice) makes links of the new kind.
CURSOR_VERSION = 3
# The folder tree is listed again when this old (a folder added meanwhile is synced from then).
FOLDERS_MAX_AGE = 900.0
# Graph keeps a subscription to messages at most 4230 minutes; brain asks for a little less.
SUBSCRIPTION_SECONDS = 4200 * 60
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
    # Immutable ids (Prefer: IdType="ImmutableId"): a message keeps its id when it moves.
    id_scheme = "immutable"

    def __init__(self, settings: Mapping[str, Any], *, page_size: int = 100) -> None:
        super().__init__(settings, page_size=page_size)
        conf = {**DEFAULTS, **settings}
        self.client_id = str(conf.get("client_id", ""))
        self.client_secret = str(conf.get("client_secret", ""))
        self.authority = f"{str(conf['authority_host']).rstrip('/')}/{conf['tenant']}"
        self.graph = str(conf["graph_base_url"]).rstrip("/")
        self.timeout = float(conf["timeout"])
        self.ca_bundle = str(conf["ca_bundle"] or "")
        self.page_size = max(1, min(1000, self.page_size))
        self._session: requests.Session | None = None
        self._cache = msal.SerializableTokenCache()
        self._app: msal.ConfidentialClientApplication | None = None
        self._folders: list[dict[str, str]] | None = None  # every mail folder: id, name (path), wk
        self._folders_at = 0.0

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
        """One page of a delta round started without a token, folder after folder."""
        if checkpoint is None or checkpoint.get("v") != CURSOR_VERSION:
            folders = self._chosen(ctx)
            total = sum(int(f.get("total") or 0) for f in folders)
            checkpoint = {"v": CURSOR_VERSION, "folders": [_slim(f) for f in folders], "i": 0, "link": None,
                          "links": {}, "total": total}
        page = self._round_page(ctx, checkpoint)
        page.estimated_total = checkpoint["total"]
        return page

    def incremental_sync(self, ctx: SyncContext, cursor: dict[str, Any]) -> SyncPage:
        """One page of a round from the saved deltaLinks; folders new since the last round start fresh."""
        if cursor.get("v") != CURSOR_VERSION:
            raise CursorExpired("cursor from another version of the Outlook provider")
        if "i" not in cursor:  # a new round: the folders may have changed since the last one
            chosen = [_slim(f) for f in self._chosen(ctx)]
            ids = {f["id"] for f in chosen}
            if any(f["id"] not in ids for f in cursor["folders"]):
                # A folder left what the account syncs (deleted, renamed out of the choice): its
                # messages must go, and only a resync that reconciles can tell which.
                raise CursorExpired("a synced folder is gone")
            cursor = {**cursor, "folders": chosen, "i": 0, "link": None}
        return self._round_page(ctx, cursor)

    def translate_ids(self, ctx: SyncContext, ids: Sequence[str]) -> dict[str, str]:
        """Default (REST) ids, from before brain asked for immutable ones, as immutable ids."""
        body = {"inputIds": list(ids), "sourceIdType": "restId", "targetIdType": "restImmutableEntryId"}
        resp = self._send(ctx, f"{self.graph}/me/translateExchangeIds", method="POST", body=body)
        if resp.status_code == 404:
            raise ProviderError("Graph has no translateExchangeIds here")
        return {str(item["sourceId"]): str(item["targetId"]) for item in resp.json().get("value", []) if item.get("targetId")}

    # Push notifications ------------------------------------------------------------------

    def open_push(
        self, ctx: SyncContext, *, notify_url: str, secret: str, channel: PushChannel | None
    ) -> PushChannel | None:
        """A Graph subscription to every message of the mailbox (renewed while it exists).

        Creating one makes Graph validate ``notify_url`` at once (it POSTs a validationToken,
        which brain's push route echoes), so brain must be reachable there when this runs.
        """
        expires = time.time() + SUBSCRIPTION_SECONDS
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires))
        if channel is not None:
            url = f"{self.graph}/subscriptions/{quote(channel.key)}"
            resp = self._send(ctx, url, method="PATCH", body={"expirationDateTime": stamp})
            if resp.status_code != 404:
                return PushChannel(key=channel.key, expires_at=_graph_time(resp.json().get("expirationDateTime"), expires))
            # Graph dropped it (expired, or removed): subscribe again.
        body = {
            "changeType": "created,updated,deleted",
            "notificationUrl": notify_url,
            "resource": "me/messages",
            "expirationDateTime": stamp,
            "clientState": secret,
        }
        resp = self._send(ctx, f"{self.graph}/subscriptions", method="POST", body=body)
        if resp.status_code == 404:
            raise ProviderError("Graph has no subscriptions endpoint here")
        created = resp.json()
        return PushChannel(key=str(created["id"]), expires_at=_graph_time(created.get("expirationDateTime"), expires))

    def close_push(self, ctx: SyncContext, channel: PushChannel) -> None:
        """Delete the subscription (gone already is fine)."""
        self._send(ctx, f"{self.graph}/subscriptions/{quote(channel.key)}", method="DELETE").close()

    @classmethod
    def read_push(cls, settings: Mapping[str, Any], request: PushRequest) -> PushReply:
        """Graph's validation handshake (echo the token), or change notifications by subscription."""
        token = request.query.get("validationToken")
        if token is not None:
            return PushReply(status=200, content_type="text/plain", body=token.encode())
        try:
            items = json.loads(request.body)["value"]
            targets = [(str(item["subscriptionId"]), str(item.get("clientState") or "")) for item in items]
        except (ValueError, KeyError, TypeError):
            return PushReply(status=400, body=b"not a Graph change notification")
        return PushReply(status=202, targets=targets)

    # Attachments and disconnecting --------------------------------------------------------

    def fetch_attachment(self, ctx: SyncContext, message_id: str, attachment_id: str) -> AttachmentContent:
        """The attachment's metadata, then its raw content (``/$value``) streamed."""
        base = f"{self.graph}/me/messages/{quote(message_id)}/attachments/{quote(attachment_id)}"
        meta = self._get(ctx, f"{base}?$select={ATTACHMENT_SELECT}", missing_ok=True)
        if meta is None:
            raise MessageGone(f"Outlook message {message_id} has no attachment {attachment_id}")
        resp = self._send(ctx, f"{base}/$value", stream=True)
        if resp.status_code == 404:
            resp.close()
            raise MessageGone(f"Outlook attachment {attachment_id} has no content (an item or a link, not a file)")
        size = meta.get("size")

        def chunks() -> Iterator[bytes]:
            with resp:
                yield from resp.iter_content(64 * 1024)

        # Graph's size is the attachment's in the store, which may not be the bytes of $value.
        return AttachmentContent(
            str(meta.get("contentType") or "application/octet-stream"), str(meta.get("name") or ""),
            size if isinstance(size, int) else None, chunks(), exact=False,
        )

    def revoke(self, credentials: Credentials) -> Revocation:
        """What an app can do: nothing that withdraws the user's consent.

        Microsoft has no endpoint for one app to revoke its own delegated grant: deleting the
        consent (oauth2PermissionGrants) needs admin rights, and revokeSignInSessions signs the
        user out of every app and device, which no one disconnecting a mailbox asks for. brain
        deletes its tokens; the user withdraws the consent in their account.
        """
        return Revocation(
            False,
            "Microsoft offers apps no way to withdraw their own consent; brain deleted its tokens. To revoke "
            "the grant, remove brain at https://myapps.microsoft.com (work or school accounts) or "
            "https://account.live.com/consent/Manage (personal accounts)",
        )

    def close(self) -> None:
        """Close the HTTP session."""
        session, self._session = self._session, None
        self._app = None
        if session is not None:
            session.close()

    # Rounds -------------------------------------------------------------------------------

    def _round_page(self, ctx: SyncContext, position: dict[str, Any]) -> SyncPage:
        """One delta page of the folder the position is at, and where the round goes next."""
        folders: list[dict[str, str]] = position["folders"]
        links: dict[str, str] = dict(position["links"])
        i = position["i"]
        if i >= len(folders):
            return SyncPage(cursor={"v": CURSOR_VERSION, "folders": folders, "links": links})
        folder = folders[i]
        url = position["link"] or links.get(folder["id"]) or self._fresh_delta_url(ctx, folder["id"])
        body = self._get(ctx, url, page=True)
        items = [item for item in body.get("value", []) if "@removed" not in item]
        removed = [item["id"] for item in body.get("value", []) if "@removed" in item]
        names = {f["id"]: f["name"] for f in folders}
        messages, deleted = self._records(ctx, items, names)
        if removed:
            found, gone = self._look_up(ctx, removed, names)
            messages += found
            deleted += gone
        next_link = body.get("@odata.nextLink")
        if next_link:
            return SyncPage(messages=messages, deleted=deleted, next={**position, "link": next_link})
        delta_link = body.get("@odata.deltaLink")
        if not delta_link:
            raise ProviderError("Graph delta page has neither nextLink nor deltaLink")
        links[folder["id"]] = delta_link
        following = {**position, "i": i + 1, "link": None, "links": links}
        if i + 1 < len(folders):
            return SyncPage(messages=messages, deleted=deleted, next=following)
        return SyncPage(messages=messages, deleted=deleted, cursor={"v": CURSOR_VERSION, "folders": folders, "links": links})

    def _fresh_delta_url(self, ctx: SyncContext, folder_id: str) -> str:
        select = SELECT + (",body" if ctx.options.bodies else "")
        query = {"$select": select, "$expand": PROPERTIES_EXPAND}
        if ctx.options.since is not None:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ctx.options.since))
            query["$filter"] = f"receivedDateTime ge {since}"
        return f"{self.graph}/me/mailFolders/{quote(folder_id)}/messages/delta?{urlencode(query, safe='$,()=', quote_via=quote)}"

    def _records(
        self, ctx: SyncContext, items: Sequence[Mapping[str, Any]], names: Mapping[str, str]
    ) -> tuple[list[MessageRecord], list[str]]:
        """Graph messages as the model, attachments listed; (records, ids outside the synced folders)."""
        kept: list[Mapping[str, Any]] = []
        listings: list[list[Any] | None] = []
        outside: list[str] = []
        for item in items:
            if item.get("parentFolderId") not in names:
                outside.append(str(item["id"]))
                continue
            attachments = None
            if item.get("hasAttachments"):
                listing = self._get(ctx, f"{self.graph}/me/messages/{quote(str(item['id']))}/attachments"
                                         f"?$select={ATTACHMENT_SELECT}")
                attachments = listing.get("value", [])
            kept.append(item)
            listings.append(attachments)
        convert = partial(record_of, folder_names=dict(names), own_addresses=ctx.own_addresses, options=ctx.options.convert)
        return ctx.convert(convert, kept, listings), outside

    def _look_up(
        self, ctx: SyncContext, ids: Sequence[str], names: Mapping[str, str]
    ) -> tuple[list[MessageRecord], list[str]]:
        """Messages a folder reported removed: still in a synced folder (moved), or gone."""
        found: list[Mapping[str, Any]] = []
        gone: list[str] = []
        select = SELECT + (",body" if ctx.options.bodies else "")
        for message_id in ids:
            url = f"{self.graph}/me/messages/{quote(message_id)}?$select={select}&$expand={PROPERTIES_EXPAND}"
            item = self._get(ctx, url, missing_ok=True)
            if item is None:
                gone.append(message_id)
            else:
                found.append(item)
        records, outside = self._records(ctx, found, names)
        return records, gone + outside

    # Folders ------------------------------------------------------------------------------

    def _chosen(self, ctx: SyncContext) -> list[dict[str, str]]:
        """The folders the account syncs, in tree order."""
        folders = self._all_folders(ctx)
        chosen = ctx.options.folders
        if chosen is None:
            excluded = {f["id"] for f in folders if ctx.options.exclude_spam_trash and f.get("wk") in SPAM_TRASH}
            out = []
            for folder in folders:  # children of an excluded folder are excluded with it
                if folder["id"] in excluded or folder.get("parent") in excluded:
                    excluded.add(folder["id"])
                else:
                    out.append(folder)
            return out
        picked: dict[str, dict[str, str]] = {}
        for entry in chosen:
            key = entry.lower()
            match = [f for f in folders if key in (f["id"].lower(), f.get("wk", ""), f["name"].lower())]
            if not match:
                log.warning("Outlook folder %r not found; not synced", entry)
            for folder in match:
                picked.setdefault(folder["id"], folder)
        return [f for f in folders if f["id"] in picked]

    def _all_folders(self, ctx: SyncContext) -> list[dict[str, str]]:
        """Every mail folder (depth first), named by its path, with its well-known name if any."""
        if self._folders is not None and time.monotonic() - self._folders_at < FOLDERS_MAX_AGE:
            return self._folders
        well_known: dict[str, str] = {}
        for name in WELL_KNOWN:
            folder = self._get(ctx, f"{self.graph}/me/mailFolders/{name}?$select=id", missing_ok=True)
            if folder is not None:
                well_known[str(folder["id"])] = name
        out: list[dict[str, str]] = []

        def walk(url: str, parent: dict[str, str] | None) -> None:
            while url:
                body = self._get(ctx, url)
                for item in body.get("value", []):
                    path = f"{parent['name']}/{item['displayName']}" if parent else str(item["displayName"])
                    folder = {"id": str(item["id"]), "name": path, "wk": well_known.get(str(item["id"]), ""),
                              "parent": parent["id"] if parent else "", "total": str(item.get("totalItemCount") or 0)}
                    out.append(folder)
                    if item.get("childFolderCount"):
                        walk(f"{self.graph}/me/mailFolders/{quote(folder['id'])}/childFolders?$top=250", folder)
                url = body.get("@odata.nextLink") or ""

        walk(f"{self.graph}/me/mailFolders?$top=250", None)
        self._folders, self._folders_at = out, time.monotonic()
        return out

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

    def _get(self, ctx: SyncContext, url: str, *, page: bool = False, missing_ok: bool = False) -> Any:
        """GET a Graph resource as JSON (None for a 404 when ``missing_ok``)."""
        resp = self._send(ctx, url, page=page)
        try:
            body = resp.json() if resp.content else {}
        except ValueError as exc:
            raise Transient(f"Graph sent no JSON: {exc}") from exc
        if resp.status_code < 400:
            return body
        if resp.status_code == 404 and missing_ok:
            return None
        raise _map_graph_error(resp, body)

    def _send(
        self, ctx: SyncContext, url: str, *, page: bool = False, stream: bool = False, method: str = "GET",
        body: Mapping[str, Any] | None = None,
    ) -> requests.Response:
        """A request with the account's token and brain's preferences; one refresh after a 401.

        Errors other than a 404 are raised mapped; a 404 is the caller's to read.
        """
        self._check_url(url)
        preferences = ['IdType="ImmutableId"']
        if not ctx.options.convert.keep_html:
            preferences.append('outlook.body-content-type="text"')
        if page:
            preferences.append(f"odata.maxpagesize={self.page_size}")
        for attempt in range(2):
            token = ctx.tokens.access_token()
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json", "Prefer": ", ".join(preferences)}
            ctx.budget.spend(1)
            try:
                resp = self._http().request(method, url, headers=headers, timeout=self.timeout, stream=stream, json=body)
            except requests.RequestException as exc:
                raise Transient(f"Graph unreachable: {type(exc).__name__}: {exc}") from exc
            if resp.status_code == 401 and attempt == 0:
                resp.close()
                ctx.tokens.invalidate(token)  # expired or revoked: one refresh, then retry
                continue
            if resp.status_code < 400 or resp.status_code == 404:
                return resp
            try:
                body = resp.json() if resp.content else {}
            except (ValueError, requests.RequestException):
                body = {}
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


def record_of(
    item: Mapping[str, Any],
    attachments: list[Any] | None,
    *,
    folder_names: Mapping[str, str],
    own_addresses: tuple[str, ...],
    options: ConvertOptions,
) -> MessageRecord:
    """One Graph message (and its attachment listing) as the message model (module level: it
    runs in the core's conversion workers)."""
    return message_from_graph(
        item, attachments=attachments, folder_names=folder_names, own_addresses=own_addresses, options=options
    )


def _graph_time(value: Any, default: float) -> float:
    """A Graph dateTime as epoch seconds (``default`` if absent or unreadable)."""
    try:
        return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


def _slim(folder: Mapping[str, str]) -> dict[str, str]:
    """What a cursor keeps of a folder: its id and name."""
    return {"id": folder["id"], "name": folder["name"]}
