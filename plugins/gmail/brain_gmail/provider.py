"""Gmail through google-api-python-client and google-auth.

- Initial sync: record the mailbox's ``historyId`` (users.getProfile), then page through
  ``messages.list`` (spam and trash left out unless the account asks for them; one listing
  per chosen label when the account names labels; ``after:`` for a sync window) and fetch
  each page's messages with batched ``messages.get``, ``format=full`` (or ``raw``), turned
  into the message model with label names from ``labels.list``.
- Incremental sync: ``history.list`` from the recorded ``historyId``; every message a page
  touches (added, labels changed) is fetched again, deleted ones are reported, and so is a
  message that left what the account syncs (moved to spam or trash, its last chosen label
  removed); a 404 means the history id expired: ``CursorExpired``.
- Attachment ids are Gmail's part ids (``"2"``, ``"1.3"``): an ``attachmentId`` is not stable
  from one fetch of a message to the next, a part id is.
- Credentials: google-auth refreshes against the configured ``token_uri``; the API client's
  own credentials ask the core's token provider for every request, so refresh happens once,
  under the core's lock, ahead of expiry.

httplib2 is not thread-safe: each provider instance (one per thread) builds its own client.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hmac
import http.client
import json
import logging
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any
from urllib.parse import urlencode

import google.auth.credentials
import google.auth.exceptions
import google.oauth2.credentials
import google_auth_httplib2
import httplib2
from googleapiclient import discovery
from googleapiclient.errors import BatchError, HttpError
from googleapiclient.http import BatchHttpRequest

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
    TokenSource,
    Transient,
    gmail_context,
    gmail_part_filename,
    message_from_gmail,
    message_from_mime,
    mime_part,
    parse_retry_after,
    without_body,
)

__all__ = ["GmailProvider"]

log = logging.getLogger("brain.mail.gmail")

SCOPE = "https://www.googleapis.com/auth/gmail.readonly"
DEFAULTS: dict[str, Any] = {
    "api_endpoint": "https://gmail.googleapis.com",
    "token_uri": "https://oauth2.googleapis.com/token",
    "auth_uri": "https://accounts.google.com/o/oauth2/v2/auth",
    "batch_uri": "https://gmail.googleapis.com/batch/gmail/v1",
    "revoke_uri": "https://oauth2.googleapis.com/revoke",
    # Push: the Pub/Sub topic users.watch publishes to, and the token its push subscription
    # sends (?token=...) to {[mail] public_url}/mail/push/gmail. Empty: polling only.
    "pubsub_topic": "",
    "push_token": "",
    "message_format": "full",
    "batch_size": 50,
    # Gmail's per-user limit is 250 quota units per second.
    "quota_units_per_second": 250,
    "timeout": 30,
}
# Gmail's quota cost of each method.
UNITS = {"profile": 1, "labels": 1, "list": 5, "get": 5, "history": 2, "watch": 100}
BATCH_LIMIT = 100
MESSAGE_FORMATS = ("full", "raw")
# Left out of every sync unless the account asks for them.
SPAM_TRASH = frozenset({"SPAM", "TRASH"})
# Label names are asked for again when this old (a label renamed meanwhile) or when a message
# carries a label id the provider does not know yet.
LABELS_MAX_AGE = 3600.0
_NETWORK_ERRORS = (
    httplib2.HttpLib2Error,
    http.client.HTTPException,
    socket.timeout,
    ConnectionError,
    TimeoutError,
    ssl.SSLError,
    OSError,
)
_AUTH_ERRORS = {"invalid_grant", "invalid_client", "unauthorized_client", "access_denied", "invalid_scope"}


class _CoreCredentials(google.auth.credentials.Credentials):
    """google-auth credentials that take every access token from the core's token provider."""

    def __init__(self, tokens: TokenSource) -> None:
        super().__init__()
        self._tokens = tokens

    @property
    def expired(self) -> bool:
        return False  # the token provider refreshes ahead of expiry itself

    @property
    def valid(self) -> bool:
        return True

    def refresh(self, request: Any) -> None:
        """Called after a 401: the token was refused, so get a new one."""
        self._tokens.invalidate(self.token)
        self.token = self._tokens.access_token()

    def apply(self, headers: dict[str, str], token: str | None = None) -> None:
        self.token = token or self._tokens.access_token()
        headers["authorization"] = f"Bearer {self.token}"

    def before_request(self, request: Any, method: str, url: str, headers: dict[str, str]) -> None:
        self.apply(headers)


class _BatchRequest(BatchHttpRequest):
    """A batch whose parts are written as plain text.

    googleapiclient serialises every part through ``email.generator`` (a MIME object per
    part, with header folding); for hundreds of small GETs per page that was most of the
    client's time. The wire format is the same: request line, headers (credentials applied,
    ``Host`` last), blank line, body.
    """

    def _serialize_request(self, request: Any) -> str:
        parsed = urllib.parse.urlsplit(request.uri)
        target = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        headers = dict(request.headers)
        if request.http is not None:
            credentials = getattr(request.http, "credentials", None)
            if credentials is not None:
                credentials.apply(headers)
        content_type = headers.pop("content-type", "application/json")
        lines = [f"{request.method} {target} HTTP/1.1", f"Content-Type: {content_type}", "MIME-Version: 1.0"]
        lines += [f"{key}: {value}" for key, value in headers.items()]
        lines.append(f"Host: {parsed.netloc}")
        body = ""
        if request.body is not None:
            body = request.body if isinstance(request.body, str) else request.body.decode()
            lines.append(f"content-length: {len(request.body)}")
        return "\n".join(lines) + "\n\n" + body


class GmailProvider(MailProvider):
    """Gmail (google-api-python-client); settings from `[plugins.gmail]`."""

    name = "gmail"
    title = "Gmail"

    def __init__(self, settings: Mapping[str, Any], *, page_size: int = 100) -> None:
        super().__init__(settings, page_size=page_size)
        conf = {**DEFAULTS, **settings}
        self.client_id = str(conf.get("client_id", ""))
        self.client_secret = str(conf.get("client_secret", ""))
        self.api_endpoint = str(conf["api_endpoint"]).rstrip("/")
        self.token_uri = str(conf["token_uri"])
        self.auth_uri = str(conf["auth_uri"])
        self.batch_uri = str(conf["batch_uri"])
        self.revoke_uri = str(conf["revoke_uri"])
        self.pubsub_topic = str(conf["pubsub_topic"])
        self.message_format = str(conf["message_format"])
        self.batch_size = max(1, min(BATCH_LIMIT, int(conf["batch_size"])))
        self.quota_units_per_second = float(conf["quota_units_per_second"])
        self.timeout = float(conf["timeout"])
        self.page_size = max(1, min(500, self.page_size))
        self._service: Any = None
        self._service_tokens: TokenSource | None = None
        self._labels: dict[str, str] | None = None
        self._labels_at = 0.0

    # Connecting -----------------------------------------------------------------------

    def authorize_url(self, *, state: str, redirect_uri: str, code_challenge: str) -> str:
        """Google's consent screen, PKCE-bound.

        Offline access with `prompt=consent`: Google hands out a refresh token on the first
        consent only, so a reconnect without the prompt would come back without one.
        """
        self._require_client()
        query = {
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "response_type": "code",
            "scope": SCOPE,
            "access_type": "offline",
            "prompt": "consent",
            "include_granted_scopes": "true",
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        return f"{self.auth_uri}?{urlencode(query)}"

    def exchange_code(self, *, code: str, redirect_uri: str, code_verifier: str) -> Credentials:
        """Trade the authorization code (and the PKCE verifier) at the token endpoint."""
        self._require_client()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": code_verifier,
            "redirect_uri": redirect_uri,
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }
        try:
            resp, content = self._new_http().request(
                self.token_uri, "POST", body=urlencode(form),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        except _NETWORK_ERRORS as exc:
            raise Transient(f"token endpoint unreachable: {exc}") from exc
        try:
            body = json.loads(content or b"{}")
        except ValueError:
            body = {}
        if resp.status >= 500 or resp.status == 429:
            raise Transient(f"token endpoint answered {resp.status}", retry_after=_retry_after(resp))
        if resp.status != 200 or "access_token" not in body:
            error = body.get("error", f"HTTP {resp.status}")
            raise AuthFailed(f"code exchange refused: {error}: {body.get('error_description', '')}".rstrip(": "))
        if not body.get("refresh_token"):
            raise AuthFailed("Google returned no refresh token (offline access was not granted)")
        now = time.time()
        return Credentials(
            access_token=body["access_token"],
            expires_at=now + float(body.get("expires_in", 3600)),
            refresh_token=body["refresh_token"],
            obtained_at=now,
        )

    def refresh(self, credentials: Credentials) -> Credentials:
        """A new access token from the refresh token (google-auth, configurable token_uri)."""
        self._require_client()
        if not credentials.refresh_token:
            raise AuthFailed("no refresh token stored")
        creds = google.oauth2.credentials.Credentials(
            token=None,
            refresh_token=credentials.refresh_token,
            token_uri=self.token_uri,
            client_id=self.client_id,
            client_secret=self.client_secret,
        )
        try:
            creds.refresh(google_auth_httplib2.Request(self._new_http()))
        except google.auth.exceptions.RefreshError as exc:
            detail = exc.args[1] if len(exc.args) > 1 and isinstance(exc.args[1], dict) else {}
            error = detail.get("error")  # an OAuth error code, or Google's error object on a 5xx
            # Only an OAuth refusal (a 4xx error code) means re-authorise; a server error that
            # google-auth does not count as retryable (502, or no OAuth body at all) is transient.
            if isinstance(error, str) and (error in _AUTH_ERRORS or not getattr(exc, "retryable", False)):
                raise AuthFailed(str(exc.args[0] if exc.args else exc)) from exc
            raise Transient(f"token refresh failed: {exc}") from exc
        except google.auth.exceptions.TransportError as exc:
            raise Transient(f"token endpoint unreachable: {exc}") from exc
        except _NETWORK_ERRORS as exc:
            raise Transient(f"token endpoint unreachable: {exc}") from exc
        expires_at = None
        if creds.expiry is not None:
            expires_at = creds.expiry.replace(tzinfo=datetime.timezone.utc).timestamp()
        return Credentials(
            access_token=creds.token,
            expires_at=expires_at,
            refresh_token=creds.refresh_token,
            obtained_at=time.time(),
        )

    def account_address(self, ctx: SyncContext) -> str:
        """The mailbox's address from users.getProfile."""
        ctx.budget.spend(UNITS["profile"])
        profile = self._execute(self._client(ctx).users().getProfile(userId="me"))
        return str(profile["emailAddress"])

    # Syncing ----------------------------------------------------------------------------

    def initial_sync(self, ctx: SyncContext, checkpoint: dict[str, Any] | None) -> SyncPage:
        """One page of messages.list (of the current chosen label) plus their batched messages.get."""
        users = self._client(ctx).users()
        if checkpoint is None:
            ctx.budget.spend(UNITS["profile"])
            profile = self._execute(users.getProfile(userId="me"))
            # Recorded before listing: what changes from here on, history.list will tell.
            checkpoint = {
                "history_id": str(profile["historyId"]),
                "total": profile.get("messagesTotal"),
                "labels": self._chosen_label_ids(ctx),
                "li": 0,
            }
        label_ids: list[str] | None = checkpoint.get("labels")
        position = int(checkpoint.get("li", 0))
        query: dict[str, Any] = {
            "userId": "me",
            "maxResults": self.page_size,
            "pageToken": checkpoint.get("page_token"),
            "includeSpamTrash": not ctx.options.exclude_spam_trash,
        }
        if label_ids:
            query["labelIds"] = [label_ids[position]]
        if ctx.options.since is not None:
            query["q"] = f"after:{int(ctx.options.since)}"
        ctx.budget.spend(UNITS["list"])
        listing = self._execute(users.messages().list(**query))
        ids = [m["id"] for m in listing.get("messages", [])]
        messages, gone = self._fetch(ctx, ids)  # gone: deleted since listing (or out of scope)
        total = checkpoint.get("total")
        if total is None:
            total = listing.get("resultSizeEstimate")
        next_token = listing.get("nextPageToken")
        if next_token:
            return SyncPage(messages=messages, next={**checkpoint, "page_token": next_token}, estimated_total=total)
        if label_ids and position + 1 < len(label_ids):
            following = {**checkpoint, "li": position + 1, "page_token": None}
            return SyncPage(messages=messages, next=following, estimated_total=total)
        return SyncPage(messages=messages, cursor={"history_id": checkpoint["history_id"]}, estimated_total=total)

    def incremental_sync(self, ctx: SyncContext, cursor: dict[str, Any]) -> SyncPage:
        """One page of history.list; touched messages fetched again, deletions reported."""
        users = self._client(ctx).users()
        start = str(cursor["history_id"])
        ctx.budget.spend(UNITS["history"])
        page = self._execute(
            users.history().list(
                userId="me", startHistoryId=start, maxResults=self.page_size, pageToken=cursor.get("page_token")
            ),
            not_found=CursorExpired(f"history id {start} is no longer available"),
        )
        touched: dict[str, None] = {}
        deleted: dict[str, None] = {}
        for record in page.get("history", []):
            for kind in ("messagesAdded", "labelsAdded", "labelsRemoved"):
                for entry in record.get(kind, []):
                    message_id = entry["message"]["id"]
                    touched[message_id] = None
                    deleted.pop(message_id, None)
            for entry in record.get("messagesDeleted", []):
                message_id = entry["message"]["id"]
                deleted[message_id] = None
                touched.pop(message_id, None)
        messages, gone = self._fetch(ctx, list(touched))
        gone = [*deleted, *gone]
        next_token = page.get("nextPageToken")
        if next_token:
            return SyncPage(messages=messages, deleted=gone, next={"history_id": start, "page_token": next_token})
        return SyncPage(messages=messages, deleted=gone, cursor={"history_id": str(page["historyId"])})

    # Push notifications ------------------------------------------------------------------

    def open_push(
        self, ctx: SyncContext, *, notify_url: str, secret: str, channel: PushChannel | None
    ) -> PushChannel | None:
        """users.watch on the configured Pub/Sub topic (again, to renew: Gmail's lasts 7 days).

        Gmail publishes to the topic; the topic's push subscription (set up once in Google
        Cloud, pointing at ``notify_url`` with ``?token=<push_token>``) delivers to brain.
        """
        if not self.pubsub_topic:
            return None
        body: dict[str, Any] = {"topicName": self.pubsub_topic}
        if ctx.options.exclude_spam_trash:
            body.update(labelIds=sorted(SPAM_TRASH), labelFilterBehavior="exclude")
        ctx.budget.spend(UNITS["watch"])
        answer = self._execute(self._client(ctx).users().watch(userId="me", body=body))
        return PushChannel(
            key=ctx.address.lower(),
            expires_at=int(answer["expiration"]) / 1000,
            state={"history_id": str(answer.get("historyId", ""))},
        )

    def close_push(self, ctx: SyncContext, channel: PushChannel) -> None:
        """users.stop: no more notifications for this mailbox."""
        ctx.budget.spend(UNITS["watch"])
        self._execute(self._client(ctx).users().stop(userId="me"))

    @classmethod
    def read_push(cls, settings: Mapping[str, Any], request: PushRequest) -> PushReply:
        """A Pub/Sub push: its ``token`` must be the configured push_token; it names a mailbox."""
        expected = str(settings.get("push_token") or "")
        given = request.query.get("token", "")
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
            return PushReply(status=403, body=b"unknown push token")
        try:
            envelope = json.loads(request.body)
            data = json.loads(base64.b64decode(envelope["message"]["data"]))
            address = str(data["emailAddress"]).lower()
        except (ValueError, KeyError, TypeError):
            # Acknowledged all the same: Pub/Sub would redeliver a message that can never be read.
            return PushReply(status=204)
        return PushReply(status=204, targets=[(address, None)])

    # Attachments and disconnecting --------------------------------------------------------

    def fetch_attachment(self, ctx: SyncContext, message_id: str, attachment_id: str) -> AttachmentContent:
        """A part of a message: by its part id (``format=full``), or MIME part number (``raw``)."""
        messages_api = self._client(ctx).users().messages()
        gone = MessageGone(f"Gmail message {message_id} is gone")
        ctx.budget.spend(UNITS["get"])
        if self.message_format == "raw":
            resource = self._execute(messages_api.get(userId="me", id=message_id, format="raw"), not_found=gone)
            part = mime_part(_base64url(str(resource.get("raw") or "")), attachment_id)
            if part is None:
                raise MessageGone(f"Gmail message {message_id} has no part {attachment_id}")
            return AttachmentContent(part.mime_type, part.filename, len(part.content), iter((part.content,)))
        resource = self._execute(messages_api.get(userId="me", id=message_id, format="full"), not_found=gone)
        node = _find_part(resource.get("payload") or {}, attachment_id)
        if node is None:
            raise MessageGone(f"Gmail message {message_id} has no part {attachment_id}")
        body = node.get("body") or {}
        mime_type, filename = str(node.get("mimeType") or "application/octet-stream"), gmail_part_filename(node)
        if body.get("data") is not None:
            data = _base64url(str(body["data"]))
            return AttachmentContent(mime_type, filename, len(data), iter((data,)))
        size = body.get("size")

        def content() -> Iterator[bytes]:
            # Fetched only when read: the caller refuses one larger than its cap by the size first.
            ctx.budget.spend(UNITS["get"])
            request = messages_api.attachments().get(userId="me", messageId=message_id, id=str(body.get("attachmentId")))
            yield _base64url(str(self._execute(request, not_found=gone).get("data") or ""))

        # Gmail's stated size, not the bytes themselves: good for the cap, not a Content-Length.
        return AttachmentContent(mime_type, filename, size if isinstance(size, int) else None, content(), exact=False)

    def revoke(self, credentials: Credentials) -> Revocation:
        """Google's revoke endpoint with the refresh token: the grant (and its access tokens) ends."""
        token = credentials.refresh_token or credentials.access_token
        if not token:
            return Revocation(False, "no token was stored to revoke")
        try:
            resp, content = self._new_http().request(
                self.revoke_uri, "POST", body=urlencode({"token": token}),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        except _NETWORK_ERRORS as exc:
            return Revocation(False, f"Google's revoke endpoint could not be reached ({type(exc).__name__}); "
                                     "remove brain at https://myaccount.google.com/permissions")
        if resp.status == 200:
            return Revocation(True, "Google revoked brain's access")
        try:
            error = json.loads(content or b"{}").get("error", f"HTTP {resp.status}")
        except ValueError:
            error = f"HTTP {resp.status}"
        if error == "invalid_token":
            return Revocation(True, "Google no longer knew the grant (already revoked or expired)")
        return Revocation(False, f"Google refused to revoke ({error}); remove brain at https://myaccount.google.com/permissions")

    def close(self) -> None:
        """Drop the client (its httplib2 connections go with it)."""
        service, self._service = self._service, None
        if service is not None:
            try:
                service.close()
            except Exception:  # noqa: BLE001 - closing must not fail a stop
                pass

    # Helpers ---------------------------------------------------------------------------

    def _require_client(self) -> None:
        if not self.client_id or not self.client_secret:
            raise ConnectRejected("Gmail is not configured: set GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET")

    def _new_http(self) -> httplib2.Http:
        return httplib2.Http(timeout=self.timeout)

    def _client(self, ctx: SyncContext) -> Any:
        if self._service is None or self._service_tokens is not ctx.tokens:
            http = google_auth_httplib2.AuthorizedHttp(_CoreCredentials(ctx.tokens), http=self._new_http())
            self._service = discovery.build(
                "gmail",
                "v1",
                http=http,
                static_discovery=True,
                cache_discovery=False,
                client_options={"api_endpoint": self.api_endpoint},
            )
            self._service_tokens = ctx.tokens
        return self._service

    def _execute(self, request: Any, *, not_found: ProviderError | None = None) -> Any:
        try:
            return request.execute(num_retries=0)
        except HttpError as exc:
            raise _map_http_error(exc, not_found) from exc
        except _NETWORK_ERRORS as exc:
            raise Transient(f"Gmail unreachable: {type(exc).__name__}: {exc}") from exc

    def _fetch(self, ctx: SyncContext, ids: list[str]) -> tuple[list[MessageRecord], list[str]]:
        """Batched messages.get; (messages in order, ids gone or outside what the account syncs)."""
        if not ids:
            return [], []
        # Building a resource object creates every method of it: do it once, not per message.
        messages_api = self._client(ctx).users().messages()
        resources: dict[str, Mapping[str, Any]] = {}
        missing: list[str] = []
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start : start + self.batch_size]
            ctx.budget.spend(UNITS["get"] * len(chunk))
            results: dict[str, Any] = {}
            errors: dict[str, HttpError] = {}

            def collect(request_id: str, response: Any, exception: Any) -> None:
                if exception is not None:
                    errors[request_id] = exception
                else:
                    results[request_id] = response

            batch = _BatchRequest(batch_uri=self.batch_uri, callback=collect)
            for message_id in chunk:
                batch.add(messages_api.get(userId="me", id=message_id, format=self.message_format), request_id=message_id)
            try:
                batch.execute()
            except HttpError as exc:
                raise _map_http_error(exc, None) from exc
            except BatchError as exc:
                raise Transient(f"Gmail batch failed: {exc}") from exc
            except _NETWORK_ERRORS as exc:
                raise Transient(f"Gmail unreachable: {type(exc).__name__}: {exc}") from exc
            for message_id, error in errors.items():
                if isinstance(error, HttpError) and error.status_code == 404:
                    missing.append(message_id)
                elif isinstance(error, HttpError):
                    # One throttled or failed part fails the page; the core retries it whole.
                    raise _map_http_error(error, None)
                else:
                    raise Transient(f"Gmail batch part failed: {error}")
            resources.update(results)
        wanted = set(self._chosen_label_ids(ctx) or ())
        names = self._label_names(ctx, {label for r in resources.values() for label in r.get("labelIds") or ()})
        kept: list[Mapping[str, Any]] = []
        for message_id in ids:
            resource = resources.get(message_id)
            if resource is None:
                continue
            labels = set(resource.get("labelIds") or ())
            if (ctx.options.exclude_spam_trash and labels & SPAM_TRASH) or (wanted and not labels & wanted):
                missing.append(message_id)  # it left what the account syncs
            else:
                kept.append(resource)
        convert = partial(
            record_of, message_format=self.message_format, label_names=names, own_addresses=ctx.own_addresses,
            options=ctx.options.convert, bodies=ctx.options.bodies,
        )
        return ctx.convert(convert, kept), missing

    def _label_names(self, ctx: SyncContext, ids: set[str]) -> dict[str, str]:
        """Label id -> name (labels.list), asked again when stale or a label id is new."""
        fresh = time.monotonic() - self._labels_at < LABELS_MAX_AGE
        if self._labels is None or not fresh or not ids <= self._labels.keys():
            ctx.budget.spend(UNITS["labels"])
            listing = self._execute(self._client(ctx).users().labels().list(userId="me"))
            self._labels = {str(label["id"]): str(label.get("name") or label["id"]) for label in listing.get("labels", [])}
            self._labels_at = time.monotonic()
        return self._labels

    def _chosen_label_ids(self, ctx: SyncContext) -> list[str] | None:
        """The label ids the account chose (by id or name, system labels case-insensitively); None: all."""
        chosen = ctx.options.folders
        if not chosen:
            return None
        names = self._label_names(ctx, set())
        by_name = {name.lower(): label_id for label_id, name in names.items()}
        out: list[str] = []
        for entry in chosen:
            label_id = entry if entry in names else by_name.get(entry.lower())
            if label_id is None:
                log.warning("Gmail label %r not found; not synced", entry)
            elif label_id not in out:
                out.append(label_id)
        return out


def record_of(
    resource: Mapping[str, Any],
    *,
    message_format: str,
    label_names: Mapping[str, str],
    own_addresses: tuple[str, ...],
    options: ConvertOptions,
    bodies: bool,
) -> MessageRecord:
    """One messages.get resource as the message model (module level: it runs in the core's
    conversion workers)."""
    if message_format == "raw":
        context = gmail_context(resource, label_names=label_names, own_addresses=own_addresses)
        record = message_from_mime(_base64url(str(resource.get("raw") or "")), context, options)
    else:
        record = message_from_gmail(resource, label_names=label_names, own_addresses=own_addresses, options=options)
        part_ids = _part_ids(resource.get("payload") or {})
        if any(a.id in part_ids for a in record.attachments):
            attachments = tuple(dataclasses.replace(a, id=part_ids.get(a.id, a.id)) for a in record.attachments)
            record = dataclasses.replace(record, attachments=attachments)
    return record if bodies else without_body(record)


def _find_part(payload: Mapping[str, Any], part_id: str) -> Mapping[str, Any] | None:
    """The part of a ``format=full`` payload with this part id (or, from older records, attachmentId)."""
    stack = [payload]
    while stack:
        part = stack.pop()
        if str(part.get("partId") or "") == part_id or (part.get("body") or {}).get("attachmentId") == part_id:
            return part
        stack.extend(p for p in part.get("parts") or () if isinstance(p, Mapping))
    return None


def _part_ids(payload: Mapping[str, Any]) -> dict[str, str]:
    """attachmentId -> partId for every part of a ``format=full`` payload."""
    out: dict[str, str] = {}
    stack = [payload]
    while stack:
        part = stack.pop()
        attachment_id = (part.get("body") or {}).get("attachmentId")
        if attachment_id and part.get("partId"):
            out[str(attachment_id)] = str(part["partId"])
        stack.extend(p for p in part.get("parts") or () if isinstance(p, Mapping))
    return out


def _base64url(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _retry_after(resp: Any) -> float | None:
    return parse_retry_after(resp.get("retry-after") if resp is not None else None)


def _map_http_error(exc: HttpError, not_found: ProviderError | None) -> ProviderError:
    """A Gmail HTTP error as the core's typed error."""
    status = exc.status_code or getattr(exc.resp, "status", 0)
    reasons = {d.get("reason") for d in (exc.error_details or []) if isinstance(d, dict)}
    message = f"Gmail {status}: {exc.reason or ''}".strip()
    retry_after = _retry_after(exc.resp)
    if status == 429 or (status == 403 and reasons & {"rateLimitExceeded", "userRateLimitExceeded"}):
        return RateLimited(message, retry_after=retry_after)
    if status >= 500:
        return Transient(message, retry_after=retry_after)
    if status == 404 and not_found is not None:
        return not_found
    if status in (401, 403):
        return AuthFailed(message)
    return ProviderError(message)
