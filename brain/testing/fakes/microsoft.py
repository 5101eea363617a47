"""A fake Microsoft identity platform (v2.0 endpoints) and Microsoft Graph mail API, over https.

MSAL only accepts https authorities, so this fake serves TLS with a certificate from
``brain.testing.fakes.tls``; clients trust ``fake.ca_path``. Give MSAL the authority
``fake.authority()`` (``https://127.0.0.1:<port>/<tenant>``), ``instance_discovery=False``
and ``http_client=fake.requests_session()``. Graph lives under ``fake.graph_url``
(``https://127.0.0.1:<port>/v1.0``).

PKCE is required by default (``require_pkce``): an authorization request needs an S256
``code_challenge``, and redeeming its code the ``code_verifier`` that made it.

Run as a process for benchmarks: ``python -m brain.testing.fakes.microsoft --port 0 --user
a@contoso.example --populate 500`` prints the URL, then ``ca_path``, ``tenant_id``,
``client_id``, ``client_secret`` and a ``refresh_token`` line per user.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import hashlib
import email.utils
import functools
import json
import random
import re
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from multidict import MultiDict

from brain.testing.fakes import FakeServer, corpus, pkce_refusal, run_main
from brain.testing.fakes.mime import Part
from brain.testing.fakes.tls import TlsFiles, server_ssl_context, tls_files

__all__ = ["DEFAULT_SCOPES", "FakeMicrosoft"]

DEFAULT_SCOPES = ("Mail.Read", "User.Read")
# Graph keeps a subscription to messages at most this long.
SUBSCRIPTION_MAX_MINUTES = 4230
# MAPI property tags the fake hands out through $expand=singleValueExtendedProperties.
SIZE_TAG, IN_REPLY_TO_TAG, REFERENCES_TAG = 0x0E08, 0x1042, 0x1039  # PR_MESSAGE_SIZE, PR_IN_REPLY_TO_ID, PR_INTERNET_REFERENCES
RESERVED_SCOPES = {"openid", "profile", "offline_access", "email"}
WELL_KNOWN_FOLDERS = {
    "inbox": "Inbox",
    "sentitems": "Sent Items",
    "drafts": "Drafts",
    "deleteditems": "Deleted Items",
    "junkemail": "Junk Email",
    "archive": "Archive",
}
MESSAGE_FIELDS = (
    "id",
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "receivedDateTime",
    "sentDateTime",
    "hasAttachments",
    "internetMessageId",
    "subject",
    "bodyPreview",
    "importance",
    "parentFolderId",
    "conversationId",
    "isDeliveryReceiptRequested",
    "isReadReceiptRequested",
    "isRead",
    "isDraft",
    "webLink",
    "inferenceClassification",
    "body",
    "sender",
    "from",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "replyTo",
    "flag",
)
_GRAPH_ERRORS = {
    400: ("BadRequest", "Bad request."),
    401: ("InvalidAuthenticationToken", "Access token validation failure."),
    403: ("ErrorAccessDenied", "Access is denied. Check credentials and try again."),
    404: ("ErrorItemNotFound", "The specified object was not found in the store."),
    410: ("syncStateNotFound", "The sync state generation is not found."),
    429: ("ApplicationThrottled", "Application is over its MailboxConcurrency limit."),
    500: ("InternalServerError", "An internal server error occurred."),
    503: ("ServiceUnavailable", "Service Unavailable"),
    504: ("UnknownError", "Gateway timeout."),
}
_IDENTITY_ERRORS = {
    429: ("temporarily_unavailable", 90_000, "Too many requests."),
    500: ("server_error", 90_033, "A transient error has occurred. Please try again."),
    503: ("temporarily_unavailable", 90_033, "A transient error has occurred. Please try again."),
}


def _now_iso(at: datetime.datetime | None = None) -> str:
    at = at or datetime.datetime.now(datetime.UTC)
    return at.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _b64url_json(obj: Any) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


def _unb64url_json(text: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def _norm_scope(scope: str) -> str:
    scope = scope.strip()
    prefix = "https://graph.microsoft.com/"
    if scope.lower().startswith(prefix):
        scope = scope[len(prefix) :]
    return scope.lower()


@functools.lru_cache(maxsize=1)
def _signing_key() -> tuple[rsa.RSAPrivateKey, str]:
    """RSA key that signs id_tokens (one per process; key generation is slow-ish)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, "fake-" + secrets.token_hex(4)


def _jwt(claims: dict[str, Any]) -> str:
    key, kid = _signing_key()
    header = _b64url_json({"typ": "JWT", "alg": "RS256", "kid": kid})
    signing_input = f"{header}.{_b64url_json(claims)}".encode()
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return signing_input.decode() + "." + _b64url(signature)


def _jwks() -> dict[str, Any]:
    key, kid = _signing_key()
    numbers = key.public_key().public_numbers()
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    return {"keys": [{"kty": "RSA", "use": "sig", "kid": kid, "n": _b64url(n), "e": _b64url(e)}]}


class _GraphError(Exception):
    def __init__(
        self, status: int, code: str | None = None, message: str | None = None, headers: Mapping[str, str] | None = None
    ):
        default_code, default_message = _GRAPH_ERRORS.get(status, ("UnknownError", "Error."))
        super().__init__(message or default_message)
        self.status = status
        self.code = code or default_code
        self.message = message or default_message
        self.headers = dict(headers or {})


def graph_error(status: int, code: str | None = None, message: str | None = None) -> dict[str, Any]:
    """Graph's JSON error document (``{"error": {"code", "message", "innerError"}}``)."""
    default_code, default_message = _GRAPH_ERRORS.get(status, ("UnknownError", "Error."))
    return {
        "error": {
            "code": code or default_code,
            "message": message or default_message,
            "innerError": {
                "date": _now_iso(),
                "request-id": str(uuid.uuid4()),
                "client-request-id": str(uuid.uuid4()),
            },
        }
    }


@dataclass
class _Folder:
    id: str
    well_known: str
    display_name: str
    parent: str | None = None  # the parent folder's id; None: a top-level folder


@dataclass
class _Message:
    fields: dict[str, Any]  # "id" is the immutable id
    created_seq: int
    changed_seq: int
    attachments: list[dict[str, Any]] = field(default_factory=list)  # fileAttachment resources
    size: int = 0  # PR_MESSAGE_SIZE
    # MAPI string properties Graph hands out as singleValueExtendedProperties: PR_IN_REPLY_TO_ID
    # (0x1042), PR_INTERNET_REFERENCES (0x1039); absent on a message that has none.
    strings: dict[int, str] = field(default_factory=dict)
    moves: int = 0  # a default (REST) id changes with every move; the immutable one never

    @property
    def id(self) -> str:
        return self.fields["id"]

    @property
    def folder_id(self) -> str:
        return self.fields["parentFolderId"]


@dataclass
class _User:
    upn: str
    oid: str
    sub: str
    display_name: str
    folders: dict[str, _Folder]
    messages: dict[str, _Message] = field(default_factory=dict)
    # (seq, immutable id, folder id, the message's moves then): deletions and moves out of a folder
    tombstones: list[tuple[int, str, str, int]] = field(default_factory=list)
    seq: int = 0
    delta_epoch: int = 0
    generation: int = 0  # bumped by revoke()

    def folder_path(self, folder: _Folder) -> str:
        """``Parent/Child`` display names down to ``folder``."""
        names = [folder.display_name]
        while folder.parent is not None:
            folder = self.folders[folder.parent]
            names.append(folder.display_name)
        return "/".join(reversed(names))

    def find_folder(self, key: str) -> _Folder:
        """For the control methods: a folder by id, well-known name or ``Parent/Child`` path."""
        for folder in self.folders.values():
            if self.folder_path(folder).lower() == key.lower():
                return folder
        return self.folder(key)

    def folder(self, key: str) -> _Folder:
        """A folder by id or well-known name (case-insensitive like Graph)."""
        lowered = key.lower()
        for folder in self.folders.values():
            if folder.id == key or folder.well_known == lowered:
                return folder
        raise _GraphError(
            404,
            "ErrorInvalidIdMalformed" if len(key) < 20 else "ErrorItemNotFound",
            "The specified folder could not be found in the store.",
        )


@dataclass
class _Grant:
    upn: str
    scopes: tuple[str, ...]
    client_id: str
    generation: int


@dataclass
class _Code:
    grant: _Grant
    redirect_uri: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    expires_at: float


class FakeMicrosoft(FakeServer):
    """Fake Microsoft identity platform + Graph mail on https://127.0.0.1:<port>."""

    control_methods = FakeServer.control_methods | {
        "add_user",
        "issue_code",
        "issue_refresh_token",
        "issue_access_token",
        "revoke",
        "expire_access_tokens",
        "add_message",
        "add_folder",
        "default_id",
        "update_message",
        "delete_message",
        "messages",
        "message_ids",
        "populate",
        "expire_delta",
    }

    def __init__(
        self,
        *,
        port: int = 0,
        tenant_id: str | None = None,
        client_id: str = "6731de76-14a6-49ae-97bc-6eba6914391e",
        client_secret: str = "fake~client~secret",
        access_token_lifetime: int = 3600,
        rotate_refresh_tokens: bool = True,
        default_page_size: int = 10,
        tls: TlsFiles | None = None,
        require_pkce: bool = True,
    ) -> None:
        self.tls = tls or tls_files()
        super().__init__(port=port, ssl_context=server_ssl_context(self.tls))
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.client_id = client_id
        self.client_secret = client_secret
        #: ``expires_in`` of new access tokens (MSAL treats < 300 s as already expired).
        self.access_token_lifetime = access_token_lifetime
        #: Entra hands out a new refresh token on every refresh; old ones stay valid.
        self.rotate_refresh_tokens = rotate_refresh_tokens
        #: Delta page size when the client sends no ``Prefer: odata.maxpagesize``.
        self.default_page_size = default_page_size
        #: The user the authorize endpoint signs in when the request has no login_hint.
        self.login_as: str | None = None
        #: Authorization codes need PKCE (an S256 challenge, then its verifier at the exchange).
        self.require_pkce = require_pkce
        self._users: dict[str, _User] = {}
        self._codes: dict[str, _Code] = {}
        self._refresh_tokens: dict[str, _Grant] = {}
        self._access_tokens: dict[str, tuple[_Grant, float]] = {}
        self._counter = 0
        self._rest_ids: dict[str, str] = {}  # default id -> immutable id, of every default id handed out
        #: Change-notification subscriptions by id (what POST /subscriptions created).
        self.subscriptions: dict[str, dict[str, Any]] = {}

    # -- URLs and client helpers ---------------------------------------------------

    @property
    def ca_path(self) -> str:
        """PEM file a client must trust to talk to this fake."""
        return str(self.tls.ca_path)

    def authority(self, tenant: str | None = None) -> str:
        """Authority URL for MSAL (``tenant`` defaults to the fake's tenant id)."""
        return f"{self.base_url}/{tenant or self.tenant_id}"

    @property
    def graph_url(self) -> str:
        """Graph root, like ``https://graph.microsoft.com/v1.0``."""
        return self.base_url + "/v1.0"

    def requests_session(self) -> requests.Session:
        """A session that trusts this fake and ignores proxy/CA settings from the environment."""
        session = requests.Session()
        session.trust_env = False  # or REQUESTS_CA_BUNDLE overrides verify
        session.verify = self.ca_path
        return session

    # -- users and tokens ----------------------------------------------------------

    def add_user(self, upn: str, display_name: str | None = None) -> str:
        """Create a user (and mailbox) if missing; returns its object id."""
        key = upn.lower()
        with self.lock:
            user = self._users.get(key)
            if user is None:
                name = display_name or upn.split("@")[0].replace(".", " ").title()
                folders = {}
                for well_known, shown in WELL_KNOWN_FOLDERS.items():
                    folder = _Folder(self._new_id("AQMkAD"), well_known, shown)
                    folders[folder.id] = folder
                user = _User(
                    upn=upn,
                    oid=str(uuid.uuid4()),
                    sub=_b64url(secrets.token_bytes(32)),
                    display_name=name,
                    folders=folders,
                )
                self._users[key] = user
            return user.oid

    def issue_code(
        self,
        user: str,
        *,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        redirect_uri: str | None = None,
        nonce: str | None = None,
        code_challenge: str | None = None,
    ) -> str:
        """An authorization code for ``user`` (single use, 10 minutes), as the authorize endpoint
        would give for a request carrying ``code_challenge`` (S256; required with require_pkce)."""
        if self.require_pkce and not code_challenge:
            raise ValueError("this fake requires PKCE: pass code_challenge (see tests.fakes.pkce_pair)")
        with self.lock:
            self.add_user(user)
            grant = self._grant(user, scopes, self.client_id)
            return self._new_code(grant, redirect_uri, code_challenge, "S256" if code_challenge else None, nonce)

    def issue_refresh_token(self, user: str, *, scopes: Iterable[str] = DEFAULT_SCOPES) -> str:
        """A refresh token for ``user`` without the code exchange."""
        with self.lock:
            self.add_user(user)
            token = "0.A" + secrets.token_urlsafe(48)
            self._refresh_tokens[token] = self._grant(user, scopes, self.client_id)
            return token

    def issue_access_token(self, user: str, *, expires_in: int | None = None) -> str:
        """A Graph access token for ``user`` without any exchange."""
        with self.lock:
            self.add_user(user)
            return self._new_access_token(self._grant(user, DEFAULT_SCOPES, self.client_id), expires_in)

    def revoke(self, user: str) -> None:
        """Revoke every session of ``user``: refresh gives ``invalid_grant``, tokens give 401."""
        with self.lock:
            self._user(user).generation += 1

    def expire_access_tokens(self, user: str | None = None) -> None:
        """Make the access tokens of ``user`` (or everyone) expired now."""
        with self.lock:
            for token, (grant, _) in list(self._access_tokens.items()):
                if user is None or grant.upn.lower() == user.lower():
                    self._access_tokens[token] = (grant, 0.0)

    def _grant(self, user: str, scopes: Iterable[str], client_id: str) -> _Grant:
        wanted = tuple(s for s in scopes if _norm_scope(s) not in RESERVED_SCOPES)
        return _Grant(user, wanted, client_id, self._user(user).generation)

    def _valid(self, grant: _Grant) -> bool:
        user = self._users.get(grant.upn.lower())
        return user is not None and user.generation == grant.generation

    def _new_code(
        self, grant: _Grant, redirect_uri: str | None, challenge: str | None, method: str | None, nonce: str | None
    ) -> str:
        code = "1.A" + secrets.token_urlsafe(48)
        self._codes[code] = _Code(grant, redirect_uri, challenge, method, nonce, time.monotonic() + 600)
        return code

    def _new_access_token(self, grant: _Grant, expires_in: int | None = None) -> str:
        lifetime = self.access_token_lifetime if expires_in is None else expires_in
        token = "eyJ0eXAiOiJKV1Qi.fake." + secrets.token_urlsafe(40)
        self._access_tokens[token] = (grant, time.monotonic() + lifetime)
        return token

    def _user(self, user: str) -> _User:
        try:
            return self._users[user.lower()]
        except KeyError:
            raise KeyError(f"no such user: {user}") from None

    def _new_id(self, prefix: str = "AAMkAD") -> str:
        # Shaped like Exchange ids: long, URL-safe base64 with '-', '_' and '=' padding.
        self._counter += 1
        raw = self._counter.to_bytes(4, "big") + secrets.token_bytes(65)
        return prefix + base64.urlsafe_b64encode(raw).decode()[len(prefix) :] + "="

    # -- mailbox -------------------------------------------------------------------

    def add_message(self, user: str, **fields: Any) -> str:
        """Deliver a message; returns its (immutable) Graph id.

        Fields (all optional): ``folder`` (well-known name, id or ``Parent/Child`` path, default
        inbox), ``subject``, ``sender`` ("Name <addr>"), ``to`` (list of "Name <addr>"),
        ``cc``, ``body``, ``body_type`` ("text"/"html"), ``attachments`` and ``inline``
        (`brain.testing.fakes.mime.Part`s; inline ones need a ``content_id``), ``received`` (aware
        datetime), ``is_read``, ``is_draft``, ``categories``, ``flag``
        ("notFlagged"/"flagged"/"complete"), ``importance``, ``conversation_id``,
        ``internet_message_id``, ``in_reply_to`` (a msg-id), ``references`` (msg-ids), ``id``.
        """
        with self.lock:
            self.add_user(user)
            return self._add(self._user(user), **fields)

    def add_folder(self, user: str, name: str, *, parent: str | None = None) -> str:
        """Create a folder (under ``parent``, a well-known name, id or path); returns its id."""
        with self.lock:
            self.add_user(user)
            owner = self._user(user)
            folder = _Folder(self._new_id("AQMkAD"), "", name, owner.find_folder(parent).id if parent else None)
            owner.folders[folder.id] = folder
            return folder.id

    def _add(
        self,
        user: _User,
        *,
        id: str | None = None,
        folder: str = "inbox",
        subject: str = "Hello",
        sender: str = "Alice Example <alice@example.com>",
        to: Iterable[str] | None = None,
        cc: Iterable[str] = (),
        body: str = "Hi there, this is a test message.",
        body_type: str = "text",
        attachments: Sequence[Part] = (),
        inline: Sequence[Part] = (),
        received: datetime.datetime | None = None,
        is_read: bool = False,
        is_draft: bool = False,
        categories: Iterable[str] = (),
        flag: str = "notFlagged",
        importance: str = "normal",
        conversation_id: str | None = None,
        internet_message_id: str | None = None,
        in_reply_to: str | None = None,
        references: Sequence[str] = (),
    ) -> str:
        target = user.find_folder(folder)
        msg_id = id or self._new_id()
        if msg_id in user.messages:
            raise ValueError(f"message {msg_id} already exists")
        received = received or datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        sender_address = _address(sender)
        domain = sender_address["emailAddress"]["address"].rsplit("@", 1)[-1] or "example.com"
        user.seq += 1
        created = _now_iso()
        change_key = _b64url(secrets.token_bytes(12))
        files = [self._attachment(part, inline=False) for part in attachments]
        files += [self._attachment(part, inline=True) for part in inline]
        fields = {
            "id": msg_id,
            "createdDateTime": created,
            "lastModifiedDateTime": created,
            "changeKey": change_key,
            "categories": list(categories),
            "receivedDateTime": _now_iso(received),
            "sentDateTime": _now_iso(received - datetime.timedelta(seconds=2)),
            # Graph's own quirk: inline attachments alone do not count.
            "hasAttachments": any(not f["isInline"] for f in files),
            "internetMessageId": internet_message_id or f"<{secrets.token_hex(10)}@{domain}>",
            "subject": subject,
            "bodyPreview": " ".join(_strip_html(body).split())[:255],
            "importance": importance,
            "parentFolderId": target.id,
            "conversationId": conversation_id or self._new_id("AAQkAD"),
            "isDeliveryReceiptRequested": False,
            "isReadReceiptRequested": False,
            "isRead": is_read,
            "isDraft": is_draft,
            "webLink": f"https://outlook.office365.com/owa/?ItemID={msg_id}&exvsurl=1&viewmodel=ReadMessageItem",
            "inferenceClassification": "focused",
            "body": {"contentType": body_type, "content": body},
            "sender": sender_address,
            "from": sender_address,
            "toRecipients": [_address(a) for a in (to if to is not None else [f"{user.display_name} <{user.upn}>"])],
            "ccRecipients": [_address(a) for a in cc],
            "bccRecipients": [],
            "replyTo": [],
            "flag": {"flagStatus": flag},
        }
        size = 1500 + len(body.encode()) + sum(len(f["contentBytes"]) for f in files)
        strings = {tag: value for tag, value in ((IN_REPLY_TO_TAG, in_reply_to), (REFERENCES_TAG, " ".join(references))) if value}
        user.messages[msg_id] = _Message(
            fields, created_seq=user.seq, changed_seq=user.seq, attachments=files, size=size, strings=strings
        )
        self._notify(user, msg_id, "created")
        return msg_id

    def _attachment(self, part: Part, *, inline: bool) -> dict[str, Any]:
        return {
            "@odata.type": "#microsoft.graph.fileAttachment",
            "id": self._new_id("AAMkADatt"),
            "lastModifiedDateTime": _now_iso(),
            "name": part.filename,
            "contentType": part.mime_type,
            "size": len(part.data),
            "isInline": inline,
            "contentId": part.content_id,
            "contentBytes": base64.b64encode(part.data).decode(),
        }

    def update_message(self, user: str, id: str, **changes: Any) -> None:
        """Change a message, as the user would in Outlook (shows up in the next delta).

        Changes: ``is_read``, ``subject``, ``categories``, ``flag`` (a flagStatus),
        ``importance``, ``body``, ``folder`` (moves it: a ``@removed`` in the old folder's
        delta), or any Graph field by its own name (``isRead``, ``flag`` dict, ...).
        """
        aliases = {"is_read": "isRead", "subject": "subject", "categories": "categories", "importance": "importance"}
        with self.lock:
            owner = self._user(user)
            msg = owner.messages[id]
            owner.seq += 1
            for key, value in changes.items():
                if key == "folder":
                    target = owner.find_folder(value)
                    if target.id != msg.folder_id:
                        owner.tombstones.append((owner.seq, id, msg.folder_id, msg.moves))
                        msg.fields["parentFolderId"] = target.id
                        msg.moves += 1
                elif key == "flag" and isinstance(value, str):
                    msg.fields["flag"] = {"flagStatus": value}
                elif key == "body" and isinstance(value, str):
                    msg.fields["body"] = {"contentType": msg.fields["body"]["contentType"], "content": value}
                    msg.fields["bodyPreview"] = " ".join(_strip_html(value).split())[:255]
                elif key in aliases or key in MESSAGE_FIELDS:
                    if key == "id":
                        raise ValueError("a message id cannot change")
                    msg.fields[aliases.get(key, key)] = list(value) if key == "categories" else value
                else:
                    raise ValueError(f"unknown message field: {key}")
            msg.fields["lastModifiedDateTime"] = _now_iso()
            msg.fields["changeKey"] = _b64url(secrets.token_bytes(12))
            msg.changed_seq = owner.seq
            self._notify(owner, id, "updated")

    def delete_message(self, user: str, id: str) -> None:
        """Delete a message for good (a ``@removed`` entry in its folder's next delta)."""
        with self.lock:
            owner = self._user(user)
            msg = owner.messages.pop(id)
            owner.seq += 1
            owner.tombstones.append((owner.seq, id, msg.folder_id, msg.moves))
            self._notify(owner, id, "deleted")

    def messages(self, user: str, folder: str | None = None) -> list[dict[str, Any]]:
        """Every message (of ``folder``, if given) as its Graph resource, newest first."""
        with self.lock:
            owner = self._user(user)
            folder_id = owner.find_folder(folder).id if folder else None
            found = [m.fields for m in owner.messages.values() if folder_id in (None, m.folder_id)]
            found.sort(key=lambda f: f["receivedDateTime"], reverse=True)
            return json.loads(json.dumps(found))

    def message_ids(self, user: str, folder: str | None = None) -> set[str]:
        """The ids of every message (of ``folder``, if given)."""
        return {m["id"] for m in self.messages(user, folder)}

    def default_id(self, user: str, id: str) -> str:
        """The message's default (REST) id as it is now: what a client without ImmutableId sees."""
        with self.lock:
            return self._rest_id(self._user(user).messages[id])

    def folder_id(self, user: str, folder: str) -> str:
        """The id of a folder given by well-known name (``inbox``) or id."""
        with self.lock:
            return self._user(user).folder(folder).id

    def populate(self, user: str, n: int, *, folder: str = "inbox", seed: int = 0, days: int = 90) -> list[str]:
        """Deliver ``n`` realistic messages spread over the last ``days``; returns their ids."""
        rng = random.Random(seed)
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        ids = []
        with self.lock:
            self.add_user(user)
            owner = self._user(user)
            conversations: list[tuple[str, str]] = []
            for offset in sorted((rng.uniform(0, days * 86400) for _ in range(n)), reverse=True):
                name, address = rng.choice(corpus.PEOPLE)
                if conversations and rng.random() < 0.25:
                    conversation_id, topic = rng.choice(conversations)
                    subject = "RE: " + topic
                else:
                    conversation_id = self._new_id("AAQkAD")
                    topic = subject = rng.choice(corpus.SUBJECTS).format(n=rng.randrange(2, 99))
                    conversations.append((conversation_id, topic))
                body = " ".join(rng.choice(corpus.WORDS) for _ in range(rng.randrange(12, 80))).capitalize() + "."
                ids.append(
                    self._add(
                        owner,
                        folder=folder,
                        subject=subject,
                        sender=f"{name} <{address}>",
                        body=body,
                        received=now - datetime.timedelta(seconds=offset),
                        is_read=rng.random() < 0.6,
                        flag="flagged" if rng.random() < 0.05 else "notFlagged",
                        conversation_id=conversation_id,
                    )
                )
        return ids

    def expire_delta(self, user: str) -> None:
        """Invalidate every delta/skip token of ``user``: following one gives 410."""
        with self.lock:
            self._user(user).delta_epoch += 1

    # -- HTTP: identity ------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._openid_configuration)
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._keys)
        app.router.add_get("/{tenant}/oauth2/v2.0/authorize", self._authorize_endpoint)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        app.router.add_route("*", "/v1.0/{tail:.*}", self._graph)

    def error_body(self, status: int, message: str, path: str = "") -> dict[str, Any]:
        if path.startswith("/v1.0/"):
            return graph_error(status)
        error, code, description = _IDENTITY_ERRORS.get(status, ("server_error", 90_033, message))
        return self._identity_error(error, code, description)

    def _tenant_ok(self, tenant: str) -> bool:
        return tenant.lower() in {self.tenant_id, "common", "organizations"}

    def _bad_tenant(self, tenant: str) -> web.Response:
        return web.json_response(
            self._identity_error("invalid_tenant", 90002, f"Tenant '{tenant}' not found."), status=400
        )

    def _identity_error(self, error: str, code: int, description: str) -> dict[str, Any]:
        trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return {
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {trace_id} "
            f"Correlation ID: {correlation_id} Timestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self.base_url}/error?code={code}",
        }

    async def _openid_configuration(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if not self._tenant_ok(tenant):
            return self._bad_tenant(tenant)
        base = self.base_url
        issuer_tenant = "{tenantid}" if tenant.lower() in ("common", "organizations") else self.tenant_id
        return web.json_response(
            {
                "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/{issuer_tenant}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"{base}/oidc/userinfo",
                "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/{tenant}/oauth2/v2.0/logout",
                "claims_supported": [
                    "sub",
                    "iss",
                    "aud",
                    "exp",
                    "iat",
                    "nonce",
                    "preferred_username",
                    "name",
                    "tid",
                    "ver",
                    "oid",
                    "email",
                ],
                "kerberos_endpoint": f"{base}/{tenant}/kerberos",
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": urlsplit(base).netloc,
                "rbac_url": "https://pas.windows.net",
            }
        )

    async def _keys(self, request: web.Request) -> web.Response:
        return web.json_response(_jwks())

    async def _authorize_endpoint(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        query = request.query
        if not self._tenant_ok(tenant):
            return self._bad_tenant(tenant)
        redirect_uri = query.get("redirect_uri")
        if query.get("client_id") != self.client_id or not redirect_uri:
            return web.json_response(
                self._identity_error("unauthorized_client", 700016, "Application not found in the directory."),
                status=400,
            )
        challenge, method = query.get("code_challenge"), query.get("code_challenge_method")
        if self.require_pkce and (not challenge or method != "S256"):
            return web.json_response(
                self._identity_error(
                    "invalid_request", 50148 if challenge else 50149,
                    "Proof Key for Code Exchange is required: send code_challenge with code_challenge_method=S256.",
                ),
                status=400,
            )
        with self.lock:
            hint = query.get("login_hint") or self.login_as
            if hint is None and len(self._users) == 1:
                hint = next(iter(self._users.values())).upn
            if hint is None or hint.lower() not in self._users:
                return web.json_response(
                    self._identity_error("invalid_request", 50034, "The user account does not exist."), status=400
                )
            scopes = query.get("scope", "").split()
            grant = self._grant(hint, scopes, self.client_id)
            code = self._new_code(grant, redirect_uri, challenge, (method or "plain") if challenge else None, query.get("nonce"))
        params = {"code": code, "session_state": str(uuid.uuid4())}
        if "state" in query:
            params["state"] = query["state"]
        split = urlsplit(redirect_uri)
        merged = parse_qsl(split.query) + list(params.items())
        location = urlunsplit((split.scheme, split.netloc, split.path, urlencode(merged), ""))
        return web.Response(status=302, headers={"Location": location})

    async def _token(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if not self._tenant_ok(tenant):
            return self._bad_tenant(tenant)
        form = await request.post()
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
        if client_id != self.client_id:
            return web.json_response(
                self._identity_error(
                    "unauthorized_client",
                    700016,
                    f"Application with identifier '{client_id}' was not found in the directory.",
                ),
                status=400,
            )
        if client_secret != self.client_secret:
            return web.json_response(
                self._identity_error("invalid_client", 7000215, "Invalid client secret provided."), status=401
            )
        grant_type = form.get("grant_type")
        requested = str(form.get("scope", "")).split()
        with self.lock:
            if grant_type == "authorization_code":
                result = self._redeem_code(form)
            elif grant_type == "refresh_token":
                result = self._redeem_refresh_token(str(form.get("refresh_token", "")))
            else:
                return web.json_response(
                    self._identity_error(
                        "unsupported_grant_type", 70003, "The app requested an unsupported grant type."
                    ),
                    status=400,
                )
            if isinstance(result, web.Response):
                return result
            grant, nonce = result
            granted = {_norm_scope(s) for s in grant.scopes}
            asked = [s for s in requested if _norm_scope(s) not in RESERVED_SCOPES]
            missing = [s for s in asked if _norm_scope(s) not in granted]
            if missing:
                return web.json_response(
                    self._identity_error(
                        "invalid_grant",
                        65001,
                        f"The user or administrator has not consented to use the application "
                        f"with ID '{self.client_id}' for scopes {' '.join(missing)}.",
                    ),
                    status=400,
                )
            body = self._token_response(grant, asked or list(grant.scopes), nonce, requested)
            if grant_type == "refresh_token" and not self.rotate_refresh_tokens:
                body.pop("refresh_token")
        return web.json_response(body, headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})

    def _redeem_code(self, form: Mapping[str, Any]) -> tuple[_Grant, str | None] | web.Response:
        code = self._codes.pop(str(form.get("code", "")), None)
        if code is None:
            return web.json_response(
                self._identity_error(
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed, "
                    "please retry with a new valid code or use an existing refresh token.",
                ),
                status=400,
            )
        if code.expires_at < time.monotonic() or not self._valid(code.grant):
            return web.json_response(
                self._identity_error(
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token has expired due to inactivity.",
                ),
                status=400,
            )
        if code.redirect_uri is not None and form.get("redirect_uri") != code.redirect_uri:
            return web.json_response(
                self._identity_error(
                    "invalid_grant",
                    500112,
                    "The reply address does not match the reply "
                    "address provided when requesting the authorization code.",
                ),
                status=400,
            )
        verifier = form.get("code_verifier")
        refused = pkce_refusal(code.code_challenge, code.code_challenge_method, None if verifier is None else str(verifier))
        if refused is not None:
            return web.json_response(self._identity_error("invalid_grant", 501481, refused), status=400)
        return code.grant, code.nonce

    def _redeem_refresh_token(self, token: str) -> tuple[_Grant, None] | web.Response:
        grant = self._refresh_tokens.get(token)
        if grant is None or not self._valid(grant):
            return web.json_response(
                self._identity_error(
                    "invalid_grant",
                    70008,
                    "The provided authorization code or refresh token "
                    "has expired due to inactivity. Send a new interactive authorization "
                    "request for this user and resource.",
                ),
                status=400,
            )
        return grant, None

    def _token_response(
        self, grant: _Grant, scopes: list[str], nonce: str | None, requested: list[str]
    ) -> dict[str, Any]:
        user = self._user(grant.upn)
        now = int(time.time())
        claims = {
            "aud": grant.client_id,
            "iss": f"{self.base_url}/{self.tenant_id}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "name": user.display_name,
            "oid": user.oid,
            "preferred_username": user.upn,
            "email": user.upn,
            "rh": "0.A" + secrets.token_urlsafe(8),
            "sub": user.sub,
            "tid": self.tenant_id,
            "uti": secrets.token_urlsafe(16),
            "ver": "2.0",
        }
        if nonce:
            claims["nonce"] = nonce
        refresh_token = "0.A" + secrets.token_urlsafe(48)
        self._refresh_tokens[refresh_token] = grant
        shown = scopes + [s for s in requested if _norm_scope(s) in {"openid", "profile", "email"}]
        return {
            "token_type": "Bearer",
            "scope": " ".join(dict.fromkeys(shown)),
            "expires_in": self.access_token_lifetime,
            "ext_expires_in": self.access_token_lifetime,
            "access_token": self._new_access_token(grant),
            "refresh_token": refresh_token,
            "id_token": _jwt(claims),
            "client_info": _b64url_json({"uid": user.oid, "utid": self.tenant_id}),
        }

    # -- HTTP: Graph ---------------------------------------------------------------

    async def _graph(self, request: web.Request) -> web.Response:
        payload = await request.read() if request.method in ("POST", "PATCH") else b""
        if request.method == "POST" and request.match_info["tail"].lower() == "subscriptions":
            return await self._subscribe(request, payload)
        try:
            with self.lock:
                user = self._graph_user(request.headers.get("Authorization"))
                answer = self._graph_route(request, user, request.match_info["tail"], payload)
        except _GraphError as err:
            return web.json_response(
                graph_error(err.status, err.code, err.message), status=err.status, headers=err.headers
            )
        if isinstance(answer, web.Response):
            return answer
        body, headers = answer
        return web.json_response(
            body,
            headers={
                **headers,
                "Content-Type": "application/json;odata.metadata=minimal;"
                "odata.streaming=true;IEEE754Compatible=false;charset=utf-8",
                "request-id": str(uuid.uuid4()),
            },
            content_type=None,
        )

    def _graph_user(self, authorization: str | None) -> _User:
        token = authorization[7:] if authorization and authorization.startswith("Bearer ") else ""
        unauthorized = {
            "WWW-Authenticate": 'Bearer realm="", authorization_uri="https://login.microsoftonline.com/'
            'common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"'
        }
        if not token:
            raise _GraphError(401, "InvalidAuthenticationToken", "Access token is empty.", unauthorized)
        entry = self._access_tokens.get(token)
        if entry is None:
            raise _GraphError(401, "InvalidAuthenticationToken", "IDX14100: JWT is not well formed.", unauthorized)
        grant, expires_at = entry
        if expires_at <= time.monotonic():
            raise _GraphError(
                401, "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired.", unauthorized
            )
        if not self._valid(grant):
            raise _GraphError(401, "InvalidAuthenticationToken", "Access token has been revoked.", unauthorized)
        return self._user(grant.upn)

    def _graph_route(
        self, request: web.Request, user: _User, tail: str, payload: bytes
    ) -> tuple[dict[str, Any], dict[str, str]] | web.Response:
        view = _View.of(request)
        if request.method == "POST" and re.fullmatch(r"me/translateexchangeids", tail, re.IGNORECASE):
            return self._translate_ids(user, payload), {}
        if match := re.fullmatch(r"subscriptions/([^/]+)", tail, re.IGNORECASE):
            return self._subscription(request.method, user, match.group(1), payload)
        if request.method != "GET":
            raise _GraphError(405, "Request_BadRequest", "This fake supports GET here.")
        folder = r"mailfolders(?:/([^/()]+)|\('([^']+)'\))"
        if re.fullmatch(r"me", tail, re.IGNORECASE):
            return self._me(user), {}
        if re.fullmatch(r"me/mailfolders", tail, re.IGNORECASE):
            top = [f for f in user.folders.values() if f.parent is None]
            return {"value": [self._folder_resource(user, f) for f in top]}, {}
        if match := re.fullmatch(rf"me/{folder}/childfolders", tail, re.IGNORECASE):
            parent = user.folder(match.group(1) or match.group(2))
            children = [f for f in user.folders.values() if f.parent == parent.id]
            return {"value": [self._folder_resource(user, f) for f in children]}, {}
        if match := re.fullmatch(rf"me/{folder}", tail, re.IGNORECASE):
            return self._folder_resource(user, user.folder(match.group(1) or match.group(2))), {}
        if match := re.fullmatch(rf"me/{folder}/messages/delta", tail, re.IGNORECASE):
            return self._delta(request, user, user.folder(match.group(1) or match.group(2)), view)
        if match := re.fullmatch(r"me/messages/([^/]+)/attachments", tail, re.IGNORECASE):
            msg = self._message(user, match.group(1))
            return {"value": [_attachment_resource(a, request.query.get("$select")) for a in msg.attachments]}, {}
        if match := re.fullmatch(r"me/messages/([^/]+)/attachments/([^/]+?)(/\$value)?", tail, re.IGNORECASE):
            msg = self._message(user, match.group(1))
            attachment = next((a for a in msg.attachments if a["id"] == match.group(2)), None)
            if attachment is None:
                raise _GraphError(404)
            if match.group(3):
                return web.Response(body=base64.b64decode(attachment["contentBytes"]), content_type=attachment["contentType"])
            return _attachment_resource(attachment, request.query.get("$select")), {}
        if match := re.fullmatch(r"me/messages/([^/]+)", tail, re.IGNORECASE):
            msg = self._message(user, match.group(1))
            return self._render(user, msg, _select(request.query.get("$select")), view), view.applied()
        raise _GraphError(400, "BadRequest", f"Resource not found for the segment '{tail.split('/')[-1]}'.")

    # -- subscriptions (change notifications) ----------------------------------------

    async def _subscribe(self, request: web.Request, payload: bytes) -> web.Response:
        """POST /subscriptions: validate the notification URL (Graph's handshake), then keep it."""
        try:
            with self.lock:
                user = self._graph_user(request.headers.get("Authorization"))
            body = json.loads(payload)
            url, resource = str(body["notificationUrl"]), str(body["resource"])
            change_types = str(body["changeType"]).split(",")
            expires = datetime.datetime.fromisoformat(str(body["expirationDateTime"]).replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError):
            return web.json_response(graph_error(400, "InvalidRequest", "Invalid subscription request."), status=400)
        except _GraphError as err:
            return web.json_response(graph_error(err.status, err.code, err.message), status=err.status)
        if resource.lower() not in ("me/messages", "me/mailfolders('inbox')/messages"):
            return web.json_response(graph_error(400, "InvalidRequest", f"Unsupported resource {resource}."), status=400)
        if expires.timestamp() > time.time() + SUBSCRIPTION_MAX_MINUTES * 60:
            return web.json_response(
                graph_error(400, "InvalidRequest", "Subscription expiration can only be 4230 minutes in the future."),
                status=400,
            )
        token = secrets.token_urlsafe(24)
        status, answer, content_type = await self.post_now(f"{url}?{urlencode({'validationToken': token})}", b"", {})
        if status != 200 or answer.decode(errors="replace") != token or content_type != "text/plain":
            return web.json_response(
                graph_error(400, "InvalidRequest", "Subscription validation request failed. Response must exactly "
                            "match validationToken query parameter."),
                status=400,
            )
        with self.lock:
            self._counter += 1
            subscription = {
                "id": str(uuid.uuid4()),
                "resource": resource,
                "changeType": ",".join(change_types),
                "notificationUrl": url,
                "clientState": body.get("clientState"),
                "expirationDateTime": _now_iso(expires),
                "user": user.upn.lower(),
            }
            self.subscriptions[subscription["id"]] = subscription
        return web.json_response({k: v for k, v in subscription.items() if k != "user"}, status=201)

    def _subscription(
        self, method: str, user: _User, subscription_id: str, payload: bytes
    ) -> tuple[dict[str, Any], dict[str, str]] | web.Response:
        subscription = self.subscriptions.get(subscription_id)
        if subscription is None or subscription["user"] != user.upn.lower():
            raise _GraphError(404, "ResourceNotFound", f"The object was not found: {subscription_id}")
        if method == "DELETE":
            del self.subscriptions[subscription_id]
            return web.Response(status=204)
        if method != "PATCH":
            raise _GraphError(405, "Request_BadRequest", "This fake supports PATCH and DELETE here.")
        try:
            expires = datetime.datetime.fromisoformat(json.loads(payload)["expirationDateTime"].replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise _GraphError(400, "InvalidRequest", "expirationDateTime is required.") from None
        subscription["expirationDateTime"] = _now_iso(expires)
        return {k: v for k, v in subscription.items() if k != "user"}, {}

    def _notify(self, user: _User, msg_id: str, change: str) -> None:
        """Post a change notification to every live subscription of ``user`` that wants it."""
        now = _now_iso()
        for subscription in self.subscriptions.values():
            if subscription["user"] != user.upn.lower() or subscription["expirationDateTime"] < now:
                continue
            if change not in subscription["changeType"].split(","):
                continue
            item = {
                "subscriptionId": subscription["id"],
                "subscriptionExpirationDateTime": subscription["expirationDateTime"],
                "changeType": change,
                "resource": f"Users/{user.oid}/Messages/{msg_id}",
                "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": msg_id},
                "clientState": subscription["clientState"],
                "tenantId": self.tenant_id,
            }
            self.post_later(
                subscription["notificationUrl"], json.dumps({"value": [item]}).encode(),
                headers={"Content-Type": "application/json"},
            )

    def _message(self, user: _User, key: str) -> _Message:
        """A message by its immutable id or its current default id."""
        msg = user.messages.get(self._rest_ids.get(key, key))
        if msg is None or (key in self._rest_ids and self._rest_id(msg) != key):
            raise _GraphError(404)  # an old default id: the message moved since
        return msg

    def _rest_id(self, msg: _Message, moves: int | None = None) -> str:
        """The message's default id: Exchange-shaped, different after every move."""
        digest = hashlib.sha256(f"{msg.id}/{msg.moves if moves is None else moves}".encode()).digest()
        rest = "AAMkAG" + base64.urlsafe_b64encode(digest * 2).decode().rstrip("=") + "="
        self._rest_ids[rest] = msg.id
        return rest

    def _out_id(self, msg: _Message, view: _View, moves: int | None = None) -> str:
        return msg.id if view.immutable else self._rest_id(msg, moves)

    def _translate_ids(self, user: _User, payload: bytes) -> dict[str, Any]:
        try:
            body = json.loads(payload)
            ids, source, target = body["inputIds"], body["sourceIdType"], body["targetIdType"]
        except (ValueError, KeyError, TypeError):
            raise _GraphError(400, "ErrorInvalidRequest", "inputIds, sourceIdType and targetIdType are required.") from None
        kinds = {"restId", "restImmutableEntryId"}
        if source not in kinds or target not in kinds or not isinstance(ids, list) or len(ids) > 1000:
            raise _GraphError(400, "ErrorInvalidRequest", "Unsupported id types or more than 1000 ids.")
        out = []
        for source_id in ids:
            immutable = self._rest_ids.get(source_id, source_id) if source == "restId" else source_id
            msg = user.messages.get(immutable)
            if msg is None or (source == "restId" and source_id in self._rest_ids and self._rest_id(msg) != source_id):
                out.append({"sourceId": source_id, "targetId": None})
                continue
            out.append({"sourceId": source_id, "targetId": msg.id if target == "restImmutableEntryId" else self._rest_id(msg)})
        return {"value": out}

    def _me(self, user: _User) -> dict[str, Any]:
        given, _, surname = user.display_name.partition(" ")
        return {
            "@odata.context": f"{self.graph_url}/$metadata#users/$entity",
            "businessPhones": [],
            "displayName": user.display_name,
            "givenName": given,
            "jobTitle": None,
            "mail": user.upn,
            "mobilePhone": None,
            "officeLocation": None,
            "preferredLanguage": "en-US",
            "surname": surname,
            "userPrincipalName": user.upn,
            "id": user.oid,
        }

    def _folder_resource(self, user: _User, folder: _Folder) -> dict[str, Any]:
        inside = [m for m in user.messages.values() if m.folder_id == folder.id]
        return {
            "id": folder.id,
            "displayName": folder.display_name,
            "parentFolderId": folder.parent or "AQMkADroot" + user.oid.replace("-", ""),
            "childFolderCount": sum(1 for f in user.folders.values() if f.parent == folder.id),
            "unreadItemCount": sum(1 for m in inside if not m.fields["isRead"]),
            "totalItemCount": len(inside),
            "isHidden": False,
        }

    def _render(self, user: _User, msg: _Message, select: list[str] | None, view: _View) -> dict[str, Any]:
        """A message resource as this request asked for it: fields, id type, body type, expansions."""
        fields = dict(msg.fields)
        fields["id"] = self._out_id(msg, view)
        body = fields["body"]
        if view.text_body and body["contentType"] == "html":
            fields["body"] = {"contentType": "text", "content": _html_text(body["content"])}
        out = {"@odata.etag": f'W/"{fields["changeKey"]}"'}
        if select is None:
            out.update(fields)
        else:
            out["id"] = fields["id"]
            out.update({k: fields[k] for k in select})
        extended = [{"id": "Integer 0xe08", "value": str(msg.size)}] if SIZE_TAG in view.extended else []
        extended += [{"id": f"String {tag:#x}", "value": msg.strings[tag]} for tag in view.extended if tag in msg.strings]
        if extended:
            out["singleValueExtendedProperties"] = extended
        return json.loads(json.dumps(out))

    def _delta(
        self, request: web.Request, user: _User, folder: _Folder, view: _View
    ) -> tuple[dict[str, Any], dict[str, str]]:
        query = MultiDict(request.query)
        page_size, applied = _max_page_size(request.headers.get("Prefer", ""), self.default_page_size)
        token_text = query.get("$skiptoken") or query.get("$deltatoken")
        if token_text:
            try:
                state = _unb64url_json(token_text)
            except ValueError:
                raise _GraphError(400, "BadRequest", "Invalid delta token.") from None
            if state.get("u") != user.oid or state.get("f") != folder.id or state.get("e") != user.delta_epoch:
                raise _GraphError(
                    410, "syncStateNotFound", "The sync state generation is not found. Please do a full sync."
                )
            if "$deltatoken" in query:  # a new round: changes since the last round's snapshot
                state = {**state, "s": state["n"], "n": user.seq, "c": None}
        else:
            select = _select(query.get("$select"))
            state = {
                "u": user.oid,
                "f": folder.id,
                "e": user.delta_epoch,
                "s": 0,
                "n": user.seq,
                "c": None,
                "sel": select,
                "flt": _received_filter(query.get("$filter")),
                "x": list(_expanded_tags(query.get("$expand"))),
            }
        view = dataclasses.replace(view, extended=tuple(state.get("x") or ()))  # the link carries the expansion
        since, snapshot = state["s"], state["n"]
        changes: list[tuple[int, str, int]] = []  # (seq, immutable id, moves if removed else -1)
        floor = state.get("flt")
        for msg in user.messages.values():
            in_round = msg.folder_id == folder.id and since < msg.changed_seq <= snapshot
            if in_round and (floor is None or msg.fields["receivedDateTime"] >= floor):
                changes.append((msg.changed_seq, msg.id, -1))
        if since > 0:
            changes += [
                (seq, msg_id, moves)
                for seq, msg_id, folder_id, moves in user.tombstones
                if folder_id == folder.id and since < seq <= snapshot
            ]
        changes.sort()
        if state["c"] is not None:
            cursor = tuple(state["c"])
            changes = [c for c in changes if (c[0], c[1]) > cursor]
        page = changes[:page_size]
        values = []
        for _seq, msg_id, moves in page:
            if moves >= 0:
                gone = _Message({"id": msg_id}, 0, 0, moves=moves)
                values.append(
                    {"@odata.type": "#microsoft.graph.message", "id": self._out_id(gone, view),
                     "@removed": {"reason": "deleted"}}
                )
            else:
                item = self._render(user, user.messages[msg_id], state["sel"], view)
                values.append({"@odata.type": "#microsoft.graph.message", **item})
        link_base = f"{self.graph_url}/me/mailFolders('{folder.id}')/messages/delta"
        body: dict[str, Any] = {"@odata.context": f"{self.graph_url}/$metadata#Collection(message)", "value": values}
        if len(changes) > page_size:
            last = page[-1]
            token = _b64url_json({**state, "c": [last[0], last[1]]})
            body["@odata.nextLink"] = f"{link_base}?$skiptoken={token}"
        else:
            body["@odata.deltaLink"] = f"{link_base}?$deltatoken={_b64url_json({**state, 'c': None})}"
        headers = view.applied()
        if applied:
            headers["Preference-Applied"] = ", ".join(
                p for p in (f"odata.maxpagesize={page_size}", headers.get("Preference-Applied")) if p
            )
        return body, headers


@dataclass(frozen=True)
class _View:
    """What a Graph request's Prefer header and $expand ask of the message resources it gets."""

    immutable: bool = False  # Prefer: IdType="ImmutableId"
    text_body: bool = False  # Prefer: outlook.body-content-type="text"
    extended: tuple[int, ...] = ()  # property tags $expand asks for (singleValueExtendedProperties)

    @classmethod
    def of(cls, request: web.Request) -> _View:
        prefer = request.headers.get("Prefer", "").lower().replace(" ", "")
        return cls(
            immutable='idtype="immutableid"' in prefer,
            text_body='outlook.body-content-type="text"' in prefer,
            extended=_expanded_tags(request.query.get("$expand")),
        )

    def applied(self) -> dict[str, str]:
        applied = [p for p, on in (('IdType="ImmutableId"', self.immutable),
                                   ('outlook.body-content-type="text"', self.text_body)) if on]
        return {"Preference-Applied": ", ".join(applied)} if applied else {}


def _expanded_tags(expand: str | None) -> tuple[int, ...]:
    """The property tags an ``$expand=singleValueExtendedProperties($filter=id eq 'Integer 0x0E08'
    or id eq ...)`` asks for, among those the fake knows."""
    if not expand or "singlevalueextendedproperties" not in expand.lower():
        return ()
    asked = (int(tag, 16) for tag in re.findall(r"0x([0-9a-f]{1,4})\b", expand.lower()))
    return tuple(dict.fromkeys(tag for tag in asked if tag in (SIZE_TAG, IN_REPLY_TO_TAG, REFERENCES_TAG)))


def _attachment_resource(attachment: dict[str, Any], select: str | None) -> dict[str, Any]:
    if not select:
        return dict(attachment)
    wanted = {f.strip() for f in select.split(",")}
    out = {"@odata.type": attachment["@odata.type"], "id": attachment["id"]}
    out.update({k: v for k, v in attachment.items() if k in wanted})
    return out


def _html_text(html: str) -> str:
    """Roughly what Exchange makes of HTML for ``outlook.body-content-type="text"``."""
    text = re.sub(r"(?is)<(script|style)\b.*?</\1>", "", html)
    text = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</li>|</h\d>", "\r\n", text)
    return re.sub(r"<[^>]+>", "", text).replace("&nbsp;", " ").replace("&amp;", "&").strip()


def _max_page_size(prefer: str, default: int) -> tuple[int, bool]:
    for preference in prefer.split(","):
        match = re.fullmatch(r"\s*odata\.maxpagesize\s*=\s*(\d+)\s*", preference, re.IGNORECASE)
        if match and int(match.group(1)) > 0:
            return int(match.group(1)), True
    return default, False


def _select(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    fields = [f.strip() for f in raw.split(",") if f.strip()]
    for name in fields:
        if name not in MESSAGE_FIELDS:
            raise _GraphError(
                400,
                "RequestBroker--ParseUri",
                f"Could not find a property named '{name}' on type 'microsoft.graph.message'.",
            )
    return fields


def _received_filter(raw: str | None) -> str | None:
    """Support ``receivedDateTime ge <iso>`` (what delta accepts); anything else is a 400."""
    if not raw:
        return None
    match = re.fullmatch(r"\s*receivedDateTime\s+(ge|gt)\s+(\S+)\s*", raw)
    if match is None:
        raise _GraphError(400, "ErrorInvalidUrlQueryFilter", "The query filter contains one or more invalid nodes.")
    value = datetime.datetime.fromisoformat(match.group(2))
    return _now_iso(value)


def _address(text: str) -> dict[str, Any]:
    name, address = email.utils.parseaddr(text)
    return {"emailAddress": {"name": name or address, "address": address}}


def _strip_html(text: str) -> str:
    return re.sub(r"<[^>]+>", " ", text)


def _build(args: argparse.Namespace) -> FakeMicrosoft:
    fake = FakeMicrosoft(port=args.port, access_token_lifetime=args.expires_in)
    fake._cli_users = args.user or []  # type: ignore[attr-defined]
    for user in fake._cli_users:  # type: ignore[attr-defined]
        fake.populate(user, args.populate)
    return fake


def _describe(fake: FakeServer) -> list[str]:
    assert isinstance(fake, FakeMicrosoft)
    lines = [
        f"ca_path {fake.ca_path}",
        f"tenant_id {fake.tenant_id}",
        f"client_id {fake.client_id}",
        f"client_secret {fake.client_secret}",
    ]
    for user in getattr(fake, "_cli_users", []):
        lines.append(f"refresh_token {user} {fake.issue_refresh_token(user)}")
    return lines


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", action="append", help="create this user and mailbox (repeatable)")
    parser.add_argument("--populate", type=int, default=0, help="messages to put in each --user inbox")
    parser.add_argument("--expires-in", type=int, default=3600, help="access token lifetime in seconds")


def main(argv: list[str] | None = None) -> None:
    """Serve a FakeMicrosoft until interrupted."""
    run_main(_build, _describe, argv, add_arguments=_arguments, prog="python -m brain.testing.fakes.microsoft")


if __name__ == "__main__":
    main()
