"""A fake Gmail API and Google OAuth2 token endpoint, speaking the real wire protocol.

Point ``googleapiclient.discovery.build("gmail", "v1", ..., client_options={"api_endpoint":
fake.base_url})`` at it, with ``google.oauth2.credentials.Credentials(token_uri=fake.token_uri)``;
send batches to ``fake.batch_uri``. Mailboxes are keyed by the email the access token was
issued for; ``users/me`` and ``users/<that email>`` both address it.

The consent screen is ``fake.auth_uri``: it signs in ``login_hint`` (or ``fake.login_as``, or
the only mailbox), consents at once and redirects to ``redirect_uri`` with ``code`` and
``state``. Like Google it hands out a refresh token only for ``access_type=offline``, and
after the first consent only with ``prompt=consent``. PKCE is required by default
(``require_pkce``): the authorize request must carry an S256 ``code_challenge`` and the code
exchange the ``code_verifier`` that made it.

Run as a process for benchmarks: ``python -m brain.testing.fakes.gmail --port 0 --user a@example.com
--populate 500`` prints the URL, then ``client_id``/``client_secret`` and a ``refresh_token``
line per user; ``tests.fakes.control_call(url, "add_message", "a@example.com", subject="x")``
drives it from another process.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import email.header
import json
import random
import re
import secrets
import shlex
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import compat32
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aiohttp import web
from multidict import CIMultiDict, MultiDict

from brain.testing.fakes import FakeServer, corpus, pkce_refusal, run_main
from brain.testing.fakes.mime import Part, build_message

__all__ = ["BATCH_LIMIT", "GMAIL_READONLY", "FakeGmail"]

GMAIL_READONLY = "https://www.googleapis.com/auth/gmail.readonly"
BATCH_LIMIT = 100  # Gmail rejects batches with more parts
SYSTEM_LABELS = (
    "INBOX",
    "SENT",
    "DRAFT",
    "SPAM",
    "TRASH",
    "UNREAD",
    "STARRED",
    "IMPORTANT",
    "CHAT",
    "CATEGORY_PERSONAL",
    "CATEGORY_SOCIAL",
    "CATEGORY_PROMOTIONS",
    "CATEGORY_UPDATES",
    "CATEGORY_FORUMS",
)
HISTORY_TYPES = {
    "messageAdded": "messagesAdded",
    "messageDeleted": "messagesDeleted",
    "labelAdded": "labelsAdded",
    "labelRemoved": "labelsRemoved",
}
# Per-method costs from Gmail's quota table.
QUOTA_UNITS = {"profile": 1, "labels": 1, "messages.list": 5, "messages.get": 5, "history": 2, "watch": 100}
# A users.watch lasts this long unless renewed (Gmail: 7 days).
WATCH_SECONDS = 7 * 86400
_GOOGLE_STATUS = {
    400: ("INVALID_ARGUMENT", "badRequest"),
    401: ("UNAUTHENTICATED", "authError"),
    403: ("PERMISSION_DENIED", "forbidden"),
    404: ("NOT_FOUND", "notFound"),
    409: ("ABORTED", "conflict"),
    429: ("RESOURCE_EXHAUSTED", "rateLimitExceeded"),
    500: ("INTERNAL", "backendError"),
    503: ("UNAVAILABLE", "backendError"),
}
_INJECTED_MESSAGES = {
    429: "Too many concurrent requests for user.",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
}


class _ApiError(Exception):
    def __init__(self, status: int, message: str, reason: str | None = None, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.headers = dict(headers or {})


def google_error(status: int, message: str, reason: str | None = None) -> dict[str, Any]:
    """Google's JSON error document (``{"error": {"code", "message", "errors", "status"}}``)."""
    status_name, default_reason = _GOOGLE_STATUS.get(status, ("UNKNOWN", "unknown"))
    return {
        "error": {
            "code": status,
            "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason or default_reason}],
            "status": status_name,
        }
    }


@dataclass
class _Message:
    id: str
    thread_id: str
    label_ids: list[str]
    headers: list[tuple[str, str]]
    body: str  # the text, for search and snippets
    mime: bytes  # the message as sent (RFC 5322)
    snippet: str
    internal_date: int  # ms since the epoch
    size_estimate: int
    history_id: int
    seq: int  # creation order, breaks ties between equal internalDates

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return ""

    def ref(self) -> dict[str, Any]:
        return {"id": self.id, "threadId": self.thread_id}

    def brief(self) -> dict[str, Any]:
        return {"id": self.id, "threadId": self.thread_id, "labelIds": list(self.label_ids)}

    def raw(self) -> bytes:
        return self.mime

    def resource(
        self, fmt: str = "full", metadata_headers: Sequence[str] = (), attachment_ids: dict[str, tuple[str, str]] | None = None
    ) -> dict[str, Any]:
        res: dict[str, Any] = {
            "id": self.id,
            "threadId": self.thread_id,
            "labelIds": list(self.label_ids),
            "snippet": self.snippet,
            "sizeEstimate": self.size_estimate,
            "historyId": str(self.history_id),
            "internalDate": str(self.internal_date),
        }
        if fmt == "minimal":
            return res
        if fmt == "raw":
            res["raw"] = base64.urlsafe_b64encode(self.mime).decode()
            return res
        payload = mime_payload(self.mime, self.id, attachment_ids)
        if fmt == "metadata":
            headers = payload["headers"]
            if metadata_headers:
                wanted = {h.lower() for h in metadata_headers}
                headers = [h for h in headers if h["name"].lower() in wanted]
            res["payload"] = {"partId": "", "mimeType": payload["mimeType"], "filename": "", "headers": headers}
            return res
        res["payload"] = payload
        return res


def mime_payload(raw: bytes, message_id: str, attachment_ids: dict[str, tuple[str, str]] | None = None) -> dict[str, Any]:
    """What Gmail's messages.get(format=full) answers for these MIME bytes: the part tree.

    Parts with a file name are sent by ``attachmentId`` only (a fresh one on every fetch, as
    Gmail's are; ``attachment_ids`` records what each names: message id and part id), the
    rest with their content; part ids count from 0 (``"0"``, ``"1.0"``).
    """
    msg = BytesParser(policy=compat32).parsebytes(raw)

    def text(value: Any) -> str:
        return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")

    def part(node: Any, part_id: str) -> dict[str, Any]:
        ctype = node.get_content_type()
        out: dict[str, Any] = {
            "partId": part_id,
            "mimeType": ctype,
            "filename": text(node.get_filename() or ""),
            "headers": [{"name": k, "value": text(v)} for k, v in node.raw_items()],
        }
        if node.is_multipart() and not ctype.startswith("message/"):
            out["body"] = {"size": 0}
            prefix = f"{part_id}." if part_id else ""
            out["parts"] = [part(child, f"{prefix}{i}") for i, child in enumerate(node.get_payload())]
            return out
        if node.is_multipart():  # message/rfc822: Gmail lists the enclosed message's parts too
            inner = node.get_payload()
            out["parts"] = [part(m, f"{part_id}.{i}") for i, m in enumerate(inner)]
            data = b"".join(m.as_bytes() for m in inner)
        else:
            data = node.get_payload(decode=True) or b""
        if not node.get_filename():
            out["body"] = {"size": len(data), "data": base64.urlsafe_b64encode(data).decode().rstrip("=")}
        else:
            attachment_id = "ANGjdJ" + secrets.token_urlsafe(48)
            if attachment_ids is not None:
                attachment_ids[attachment_id] = (message_id, part_id)
            out["body"] = {"size": len(data), "attachmentId": attachment_id}
        return out

    return part(msg, "")


def _part_data(raw: bytes, part_id: str) -> bytes | None:
    """The decoded content of one part (a Gmail part id) of a message, None if there is none."""
    node: Any = BytesParser(policy=compat32).parsebytes(raw)
    for step in [int(x) for x in part_id.split(".")] if part_id else []:
        children = node.get_payload() if node.is_multipart() else None
        if not children or step >= len(children):
            return None
        node = children[step]
    if node.is_multipart():
        return b"".join(m.as_bytes() for m in node.get_payload())
    return node.get_payload(decode=True) or b""


@dataclass
class _Mailbox:
    email: str
    history_id: int
    history_floor: int  # startHistoryId below this is gone (404)
    messages: dict[str, _Message] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    quota: deque[tuple[float, int]] = field(default_factory=deque)
    quota_total: int = 0
    labels: dict[str, str] = field(default_factory=dict)  # user label id -> name
    watch: dict[str, Any] | None = None  # users.watch: topic, expiration (ms), label filter


@dataclass
class _Grant:
    email: str
    scope: str
    generation: int


@dataclass
class _Code:
    grant: _Grant
    redirect_uri: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    offline: bool  # the exchange also returns a refresh token


@dataclass
class _AccessToken:
    grant: _Grant
    expires_at: float  # time.monotonic()


class FakeGmail(FakeServer):
    """Fake Gmail API + OAuth2 token endpoint on http://127.0.0.1:<port>."""

    control_methods = FakeServer.control_methods | {
        "issue_code",
        "issue_refresh_token",
        "issue_access_token",
        "revoke",
        "expire_access_tokens",
        "add_mailbox",
        "add_message",
        "add_label",
        "delete_message",
        "modify_labels",
        "messages",
        "message_ids",
        "populate",
        "history_id",
        "expire_history",
        "quota_units",
    }

    def __init__(
        self,
        *,
        port: int = 0,
        client_id: str = "fake-client-id.apps.googleusercontent.com",
        client_secret: str = "fake-client-secret",
        access_token_lifetime: int = 3600,
        rotate_refresh_tokens: bool = False,
        quota_per_second: int | None = None,
        require_pkce: bool = True,
    ) -> None:
        super().__init__(port=port)
        self.client_id = client_id
        self.client_secret = client_secret
        #: ``expires_in`` of new access tokens; change it between calls as needed.
        self.access_token_lifetime = access_token_lifetime
        #: Google keeps the refresh token on refresh; set True to hand out a new one each time.
        self.rotate_refresh_tokens = rotate_refresh_tokens
        #: Per-user quota units per second (Gmail's is 250); None: unlimited.
        self.quota_per_second = quota_per_second
        #: Authorization codes need PKCE (an S256 challenge, then its verifier at the exchange).
        self.require_pkce = require_pkce
        #: The account the consent screen signs in when the request has no login_hint.
        self.login_as: str | None = None
        self._mailboxes: dict[str, _Mailbox] = {}
        self._codes: dict[str, _Code] = {}
        self._consented: set[str] = set()  # emails that consented once (no new refresh token after)
        self._refresh_tokens: dict[str, _Grant] = {}
        self._access_tokens: dict[str, _AccessToken] = {}
        self._generations: dict[str, int] = {}
        self._seq = 0
        # attachmentId -> (message id, part id): every fetch mints new ones, like Gmail's.
        self._attachment_ids: dict[str, tuple[str, str]] = {}
        #: Where the Pub/Sub push subscription of the watched topic delivers (None: nowhere).
        self.push_endpoint: str | None = None

    # -- URLs ---------------------------------------------------------------------

    @property
    def token_uri(self) -> str:
        """OAuth2 token endpoint, for ``Credentials(token_uri=...)``."""
        return self.base_url + "/token"

    @property
    def auth_uri(self) -> str:
        """The consent screen (Google's ``accounts.google.com/o/oauth2/v2/auth``)."""
        return self.base_url + "/o/oauth2/v2/auth"

    @property
    def revoke_uri(self) -> str:
        """Token revocation (Google's ``oauth2.googleapis.com/revoke``)."""
        return self.base_url + "/revoke"

    @property
    def batch_uri(self) -> str:
        """Batch endpoint, for ``BatchHttpRequest(batch_uri=...)``."""
        return self.base_url + "/batch/gmail/v1"

    # -- tokens -------------------------------------------------------------------

    def issue_code(
        self,
        email: str,
        *,
        scope: str = GMAIL_READONLY,
        redirect_uri: str | None = None,
        code_challenge: str | None = None,
    ) -> str:
        """An authorization code for ``email`` (single use), as the consent screen would give
        for an offline request carrying ``code_challenge`` (S256; required with require_pkce)."""
        if self.require_pkce and not code_challenge:
            raise ValueError("this fake requires PKCE: pass code_challenge (see tests.fakes.pkce_pair)")
        with self.lock:
            self.add_mailbox(email)
            return self._new_code(
                _Code(self._grant(email, scope), redirect_uri, code_challenge, "S256" if code_challenge else None, True)
            )

    def issue_refresh_token(self, email: str, *, scope: str = GMAIL_READONLY) -> str:
        """A refresh token for ``email`` without the code exchange."""
        with self.lock:
            self.add_mailbox(email)
            return self._new_refresh_token(self._grant(email, scope))

    def issue_access_token(self, email: str, *, expires_in: int | None = None) -> str:
        """A valid access token for ``email`` without any exchange."""
        with self.lock:
            self.add_mailbox(email)
            return self._new_access_token(self._grant(email, GMAIL_READONLY), expires_in)

    def revoke(self, email: str) -> None:
        """Revoke every grant of ``email``: refresh gives ``invalid_grant``, tokens give 401."""
        with self.lock:
            self._generations[email] = self._generations.get(email, 0) + 1

    def expire_access_tokens(self, email: str | None = None) -> None:
        """Make the access tokens of ``email`` (or everyone) expired now."""
        with self.lock:
            for token in self._access_tokens.values():
                if email is None or token.grant.email == email:
                    token.expires_at = 0.0

    def _grant(self, email: str, scope: str) -> _Grant:
        return _Grant(email, scope, self._generations.get(email, 0))

    def _valid(self, grant: _Grant) -> bool:
        return grant.generation == self._generations.get(grant.email, 0)

    def _new_code(self, code: _Code) -> str:
        value = "4/0A" + secrets.token_urlsafe(24)
        self._codes[value] = code
        self._consented.add(code.grant.email)
        return value

    def _new_refresh_token(self, grant: _Grant) -> str:
        token = "1//0g" + secrets.token_urlsafe(32)
        self._refresh_tokens[token] = grant
        return token

    def _new_access_token(self, grant: _Grant, expires_in: int | None = None) -> str:
        lifetime = self.access_token_lifetime if expires_in is None else expires_in
        token = "ya29.fake-" + secrets.token_urlsafe(32)
        self._access_tokens[token] = _AccessToken(grant, time.monotonic() + lifetime)
        return token

    # -- mailbox ------------------------------------------------------------------

    def add_mailbox(self, email: str) -> None:
        """Create an empty mailbox for ``email`` if it has none."""
        with self.lock:
            if email not in self._mailboxes:
                start = 10_000 + random.randrange(1000)
                self._mailboxes[email] = _Mailbox(email=email, history_id=start, history_floor=start)

    def add_message(self, email: str, **fields: Any) -> str:
        """Deliver a message (records ``messagesAdded``); returns its Gmail id.

        Fields (all optional): ``id``, ``thread_id``, ``label_ids`` (default INBOX, UNREAD),
        and either ``raw`` (the whole message as RFC 5322 bytes) or the parts to build one
        from (`brain.testing.fakes.mime.build_message`): ``sender``, ``to``, ``subject``, ``body``
        (the plain text), ``html``, ``attachments`` and ``inline`` (`Part`s), ``charset``,
        ``date`` (aware datetime), ``internet_message_id`` (the Message-ID header) and
        ``headers`` (extra header name -> value). ``internal_date`` (ms), ``snippet`` and
        ``size_estimate`` override what Gmail would derive.
        """
        with self.lock:
            self.add_mailbox(email)
            return self._add(self._mailboxes[email], **fields)

    def add_label(self, email: str, name: str) -> str:
        """Create a user label (``Label_N``) named ``name``; returns its id."""
        with self.lock:
            self.add_mailbox(email)
            box = self._mailboxes[email]
            label_id = f"Label_{len(box.labels) + 1}"
            box.labels[label_id] = name
            return label_id

    def _add(
        self,
        box: _Mailbox,
        *,
        id: str | None = None,
        thread_id: str | None = None,
        label_ids: Iterable[str] = ("INBOX", "UNREAD"),
        raw: bytes | None = None,
        sender: str = "Alice Example <alice@example.com>",
        to: str | None = None,
        subject: str = "Hello",
        body: str | None = "Hi there, this is a test message.",
        html: str | None = None,
        attachments: Sequence[Part] = (),
        inline: Sequence[Part] = (),
        charset: str = "utf-8",
        date: datetime.datetime | None = None,
        internal_date: int | None = None,
        snippet: str | None = None,
        size_estimate: int | None = None,
        internet_message_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        self._seq += 1
        msg_id = id or format(0x18C0_0000_0000_0000 + self._seq * 7919 + random.randrange(7919), "x")
        if msg_id in box.messages:
            raise ValueError(f"message {msg_id} already exists")
        if date is None:
            date = (
                datetime.datetime.fromtimestamp(internal_date / 1000, datetime.UTC)
                if internal_date is not None
                else datetime.datetime.now(datetime.UTC)
            )
        if internal_date is None:
            internal_date = int(date.timestamp() * 1000)
        if raw is None:
            domain = sender.rsplit("@", 1)[-1].rstrip(">") or "example.com"
            raw = build_message(
                sender=sender, to=[to or box.email], subject=subject, text=body, html=html,
                attachments=attachments, inline=inline, charset=charset, date=date,
                message_id=internet_message_id or f"<{secrets.token_hex(8)}.{msg_id}@{domain}>", headers=headers,
            )
        parsed = BytesParser(policy=compat32).parsebytes(raw)
        header_list = [(k, _decoded(v)) for k, v in parsed.raw_items()]
        text = _plain_text(parsed)
        box.history_id += 1
        msg = _Message(
            id=msg_id,
            thread_id=thread_id or msg_id,
            label_ids=list(dict.fromkeys(label_ids)),
            headers=header_list,
            body=text,
            mime=raw,
            snippet=" ".join(text.split())[:200] if snippet is None else snippet,
            internal_date=internal_date,
            size_estimate=len(raw) if size_estimate is None else size_estimate,
            history_id=box.history_id,
            seq=self._seq,
        )
        box.messages[msg_id] = msg
        box.history.append(
            {"id": str(box.history_id), "messages": [msg.ref()], "messagesAdded": [{"message": msg.brief()}]}
        )
        self._publish(box, msg.label_ids)
        return msg_id

    def delete_message(self, email: str, id: str) -> None:
        """Delete a message for good (records ``messagesDeleted``)."""
        with self.lock:
            box = self._box(email)
            msg = box.messages.pop(id)
            box.history_id += 1
            box.history.append(
                {"id": str(box.history_id), "messages": [msg.ref()], "messagesDeleted": [{"message": msg.brief()}]}
            )
            self._publish(box, msg.label_ids)

    def modify_labels(self, email: str, id: str, add: Iterable[str] = (), remove: Iterable[str] = ()) -> None:
        """Add/remove labels (records ``labelsAdded``/``labelsRemoved`` for real changes)."""
        with self.lock:
            box = self._box(email)
            msg = box.messages[id]
            added = [label for label in dict.fromkeys(add) if label not in msg.label_ids]
            removed = [label for label in dict.fromkeys(remove) if label in msg.label_ids and label not in added]
            if not added and not removed:
                return
            box.history_id += 1
            msg.label_ids = [label for label in msg.label_ids if label not in removed] + added
            msg.history_id = box.history_id
            record: dict[str, Any] = {"id": str(box.history_id), "messages": [msg.ref()]}
            if added:
                record["labelsAdded"] = [{"message": msg.brief(), "labelIds": added}]
            if removed:
                record["labelsRemoved"] = [{"message": msg.brief(), "labelIds": removed}]
            box.history.append(record)
            self._publish(box, [*msg.label_ids, *removed])

    def messages(self, email: str) -> list[dict[str, Any]]:
        """Every message as its ``format=full`` resource, newest first."""
        with self.lock:
            return [m.resource("full") for m in self._sorted(self._box(email))]

    def message_ids(self, email: str) -> set[str]:
        """The ids of every message in the mailbox."""
        with self.lock:
            return set(self._box(email).messages)

    def history_id(self, email: str) -> int:
        """The mailbox's current historyId."""
        with self.lock:
            return self._box(email).history_id

    def expire_history(self, email: str) -> None:
        """Drop the history log: older startHistoryIds now give 404."""
        with self.lock:
            box = self._box(email)
            box.history.clear()
            box.history_floor = box.history_id

    def populate(self, email: str, n: int, *, seed: int = 0, days: int = 90) -> list[str]:
        """Deliver ``n`` realistic messages spread over the last ``days``; returns their ids."""
        rng = random.Random(seed)
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        ids: list[str] = []
        with self.lock:
            self.add_mailbox(email)
            box = self._mailboxes[email]
            threads: list[tuple[str, str]] = []
            offsets = sorted((rng.uniform(0, days * 86400) for _ in range(n)), reverse=True)
            for offset in offsets:
                name, address = rng.choice(corpus.PEOPLE)
                if threads and rng.random() < 0.25:
                    thread_id, topic = rng.choice(threads)
                    subject = "Re: " + topic
                else:
                    thread_id, topic = None, rng.choice(corpus.SUBJECTS).format(n=rng.randrange(2, 99))
                    subject = topic
                labels = ["INBOX", rng.choice(corpus.GMAIL_CATEGORIES)]
                if rng.random() < 0.4:
                    labels.append("UNREAD")
                if rng.random() < 0.05:
                    labels.append("STARRED")
                body = " ".join(rng.choice(corpus.WORDS) for _ in range(rng.randrange(12, 80))).capitalize() + "."
                msg_id = self._add(
                    box,
                    thread_id=thread_id,
                    label_ids=labels,
                    sender=f"{name} <{address}>",
                    subject=subject,
                    body=body,
                    date=now - datetime.timedelta(seconds=offset),
                )
                if thread_id is None:
                    threads.append((msg_id, topic))
                ids.append(msg_id)
        return ids

    def quota_units(self, email: str, window: float | None = None) -> int:
        """Quota units ``email`` used in the last ``window`` seconds (or in total)."""
        with self.lock:
            box = self._box(email)
            if window is None:
                return box.quota_total
            since = time.monotonic() - window
            return sum(units for at, units in box.quota if at >= since)

    def _box(self, email: str) -> _Mailbox:
        try:
            return self._mailboxes[email]
        except KeyError:
            raise KeyError(f"no mailbox for {email}") from None

    @staticmethod
    def _sorted(box: _Mailbox) -> list[_Message]:
        return sorted(box.messages.values(), key=lambda m: (m.internal_date, m.seq), reverse=True)

    # -- HTTP ---------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/o/oauth2/v2/auth", self._consent)
        app.router.add_get("/o/oauth2/auth", self._consent)
        app.router.add_post("/token", self._token)
        app.router.add_post("/revoke", self._revoke)
        app.router.add_post("/batch/gmail/v1", self._batch)
        app.router.add_post("/batch", self._batch)
        app.router.add_route("*", "/gmail/v1/{tail:.*}", self._api_handler)

    def error_body(self, status: int, message: str, path: str = "") -> dict[str, Any]:
        return google_error(status, _INJECTED_MESSAGES.get(status, message))

    async def _consent(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("client_id") != self.client_id:
            return _oauth_error(401, "invalid_client", "The OAuth client was not found.")
        redirect_uri = query.get("redirect_uri")
        if not redirect_uri:
            return _oauth_error(400, "invalid_request", "Missing required parameter: redirect_uri")
        if query.get("response_type") != "code":
            return _oauth_error(400, "unsupported_response_type", "Invalid response_type")
        scope = query.get("scope", "")
        if not scope.split():
            return _oauth_error(400, "invalid_request", "Missing required parameter: scope")
        challenge, method = query.get("code_challenge"), query.get("code_challenge_method")
        if self.require_pkce and not challenge:
            return _oauth_error(400, "invalid_request", "Missing required parameter: code_challenge")
        if challenge and (method or "plain") not in (("S256",) if self.require_pkce else ("S256", "plain")):
            return _oauth_error(400, "invalid_request", f"Invalid code_challenge_method: {method}")
        with self.lock:
            email = query.get("login_hint") or self.login_as
            if email is None and len(self._mailboxes) == 1:
                email = next(iter(self._mailboxes))
            if email is None or email not in self._mailboxes:
                return _oauth_error(400, "invalid_request", "No such Google account")
            # Google returns a refresh token for offline access on the first consent only,
            # unless prompt=consent asks for consent (and a refresh token) again.
            offline = query.get("access_type") == "offline" and (
                "consent" in query.get("prompt", "").split() or email not in self._consented
            )
            code = self._new_code(
                _Code(self._grant(email, scope), redirect_uri, challenge, (method or "plain") if challenge else None, offline)
            )
        params = [("code", code), ("scope", scope)]
        if "state" in query:
            params.insert(0, ("state", query["state"]))
        split = urlsplit(redirect_uri)
        location = urlunsplit((split.scheme, split.netloc, split.path, urlencode(parse_qsl(split.query) + params), ""))
        return web.Response(status=302, headers={"Location": location})

    async def _token(self, request: web.Request) -> web.Response:
        if request.content_type == "application/json":
            form: Mapping[str, str] = {k: str(v) for k, v in (await request.json()).items()}
        else:
            form = await request.post()  # type: ignore[assignment]
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("Authorization", "")
        if basic.startswith("Basic "):
            client_id, _, client_secret = base64.b64decode(basic[6:]).decode().partition(":")
        if client_id != self.client_id or client_secret != self.client_secret:
            return _oauth_error(401, "invalid_client", "The OAuth client was not found.")
        grant_type = form.get("grant_type")
        with self.lock:
            if grant_type == "authorization_code":
                code = self._codes.pop(form.get("code", ""), None)
                if code is None or not self._valid(code.grant):
                    return _oauth_error(400, "invalid_grant", "Malformed auth code.")
                grant = code.grant
                if code.redirect_uri is not None and form.get("redirect_uri") != code.redirect_uri:
                    return _oauth_error(400, "redirect_uri_mismatch", "Bad Request")
                refused = pkce_refusal(code.code_challenge, code.code_challenge_method, form.get("code_verifier"))
                if refused is not None:
                    return _oauth_error(400, "invalid_grant", refused)
                refresh_token: str | None = self._new_refresh_token(grant) if code.offline else None
            elif grant_type == "refresh_token":
                grant_or_none = self._refresh_tokens.get(form.get("refresh_token", ""))
                if grant_or_none is None or not self._valid(grant_or_none):
                    return _oauth_error(400, "invalid_grant", "Token has been expired or revoked.")
                grant = grant_or_none
                refresh_token = self._new_refresh_token(grant) if self.rotate_refresh_tokens else None
            else:
                return _oauth_error(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
            body: dict[str, Any] = {
                "access_token": self._new_access_token(grant),
                "expires_in": self.access_token_lifetime,
                "scope": grant.scope,
                "token_type": "Bearer",
            }
            if refresh_token is not None:
                body["refresh_token"] = refresh_token
        return web.json_response(body, headers={"Cache-Control": "no-cache, no-store, max-age=0, must-revalidate"})

    async def _revoke(self, request: web.Request) -> web.Response:
        token = request.query.get("token") or (await request.post()).get("token")
        with self.lock:
            grant = self._refresh_tokens.get(str(token))
            access = self._access_tokens.get(str(token))
            if grant is None and access is not None:
                grant = access.grant
            if grant is None:
                return _oauth_error(400, "invalid_token", "Token expired or revoked")
            self.revoke(grant.email)
        return web.json_response({})

    async def _api_handler(self, request: web.Request) -> web.Response:
        payload = await request.read() if request.method == "POST" else b""
        status, headers, body = self._api(
            request.method, request.match_info["tail"], MultiDict(request.query), request.headers.get("Authorization"),
            payload,
        )
        return web.json_response(body, status=status, headers=headers)

    def _api(
        self, method: str, tail: str, query: MultiDict[str], authorization: str | None, body: bytes = b""
    ) -> tuple[int, dict[str, str], dict[str, Any]]:
        """Serve one Gmail API call (``tail`` is the path after ``/gmail/v1/``)."""
        try:
            with self.lock:
                return 200, {}, self._route(method, tail, query, authorization, body)
        except _ApiError as err:
            return err.status, err.headers, google_error(err.status, err.message, err.reason)

    def _route(
        self, method: str, tail: str, query: MultiDict[str], authorization: str | None, body: bytes = b""
    ) -> dict[str, Any]:
        if match := re.fullmatch(r"users/([^/]+)/(watch|stop)", tail):
            if method != "POST":
                raise _ApiError(404, f"Method not found: {method} /gmail/v1/{tail}", "notFound")
            box = self._authorize(authorization, match.group(1))
            self._charge(box, "watch")
            return self._watch(box, body) if match.group(2) == "watch" else self._stop(box)
        match = re.fullmatch(
            r"users/([^/]+)/(profile|messages|messages/([^/]+)|messages/([^/]+)/attachments/([^/]+)|history|labels)",
            tail,
        )
        if match is None or method != "GET":
            raise _ApiError(404, f"Method not found: {method} /gmail/v1/{tail}", "notFound")
        box = self._authorize(authorization, match.group(1))
        kind = match.group(2)
        if kind == "profile":
            self._charge(box, "profile")
            return {
                "emailAddress": box.email,
                "messagesTotal": len(box.messages),
                "threadsTotal": len({m.thread_id for m in box.messages.values()}),
                "historyId": str(box.history_id),
            }
        if kind == "messages":
            self._charge(box, "messages.list")
            return self._list_messages(box, query)
        if kind == "history":
            self._charge(box, "history")
            return self._list_history(box, query)
        if kind == "labels":
            self._charge(box, "labels")
            return self._list_labels(box)
        if match.group(5) is not None:
            self._charge(box, "messages.get")
            return self._get_attachment(box, match.group(4), match.group(5))
        self._charge(box, "messages.get")
        return self._get_message(box, match.group(3), query)

    def _authorize(self, authorization: str | None, user_id: str) -> _Mailbox:
        token = authorization[7:] if authorization and authorization.startswith("Bearer ") else None
        access = self._access_tokens.get(token or "")
        if access is None or access.expires_at <= time.monotonic() or not self._valid(access.grant):
            raise _ApiError(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie "
                "or other valid authentication credential. "
                "See https://developers.google.com/identity/sign-in/web/devconsole-project.",
                "authError",
                {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/", error="invalid_token"'},
            )
        email_address = access.grant.email
        if user_id not in ("me", email_address):
            raise _ApiError(403, "Delegation denied for " + email_address, "forbidden")
        return self._mailboxes[email_address]

    def _charge(self, box: _Mailbox, method: str) -> None:
        units = QUOTA_UNITS[method]
        now = time.monotonic()
        while box.quota and box.quota[0][0] < now - 1.0:
            box.quota.popleft()
        if self.quota_per_second is not None:
            used = sum(u for _, u in box.quota)
            if used + units > self.quota_per_second:
                raise _ApiError(
                    429,
                    "User-rate limit exceeded.  Retry after 1 second",
                    "rateLimitExceeded",
                    {"Retry-After": "1"},
                )
        box.quota.append((now, units))
        box.quota_total += units

    def _list_messages(self, box: _Mailbox, query: MultiDict[str]) -> dict[str, Any]:
        max_results = _int_param(query, "maxResults", 100, 1, 500)
        label_ids = query.getall("labelIds", [])
        include_spam_trash = query.get("includeSpamTrash", "false").lower() == "true"
        predicate = _search(query.get("q", ""))
        hidden = set() if include_spam_trash else {"SPAM", "TRASH"}
        hidden -= set(label_ids)
        if "in:anywhere" in query.get("q", "") or re.search(r"\bin:(spam|trash)\b", query.get("q", ""), re.IGNORECASE):
            hidden = set()
        matches = [
            m
            for m in self._sorted(box)
            if all(label in m.label_ids for label in label_ids)
            and not hidden.intersection(m.label_ids)
            and predicate(m)
        ]
        token = query.get("pageToken")
        if token:
            cursor = _decode_cursor(token)
            matches_after = [m for m in matches if (m.internal_date, m.seq) < cursor]
        else:
            matches_after = matches
        page = matches_after[:max_results]
        body: dict[str, Any] = {}
        if page:
            body["messages"] = [m.ref() for m in page]
        if len(matches_after) > max_results:
            last = page[-1]
            body["nextPageToken"] = _encode_cursor((last.internal_date, last.seq))
        body["resultSizeEstimate"] = len(matches)
        return body

    def _get_message(self, box: _Mailbox, msg_id: str, query: MultiDict[str]) -> dict[str, Any]:
        fmt = query.get("format", "full")
        if fmt not in ("full", "metadata", "minimal", "raw"):
            raise _ApiError(400, f"Invalid value at 'format' ({fmt})", "invalidArgument")
        msg = box.messages.get(msg_id)
        if msg is None:
            raise _ApiError(404, "Requested entity was not found.", "notFound")
        return msg.resource(fmt, query.getall("metadataHeaders", []), self._attachment_ids)

    def _watch(self, box: _Mailbox, body: bytes) -> dict[str, Any]:
        try:
            request = json.loads(body or b"{}")
            topic = str(request["topicName"])
        except (ValueError, KeyError, TypeError):
            raise _ApiError(400, "Invalid topicName", "invalidArgument") from None
        if not re.fullmatch(r"projects/[^/]+/topics/[^/]+", topic):
            raise _ApiError(400, f"Invalid topicName does not match projects/*/topics/*: {topic}", "invalidArgument")
        expiration = int((time.time() + WATCH_SECONDS) * 1000)
        box.watch = {
            "topic": topic,
            "expiration": expiration,
            "label_ids": list(request.get("labelIds") or []),
            "behavior": str(request.get("labelFilterBehavior") or "include").lower(),
        }
        return {"historyId": str(box.history_id), "expiration": str(expiration)}

    def _stop(self, box: _Mailbox) -> dict[str, Any]:
        box.watch = None
        return {}

    def _publish(self, box: _Mailbox, labels: Iterable[str]) -> None:
        """Gmail -> Pub/Sub -> the topic's push subscription: tell ``push_endpoint`` the mailbox changed."""
        watch = box.watch
        if watch is None or self.push_endpoint is None or watch["expiration"] / 1000 < time.time():
            return
        touched = set(labels)
        if watch["label_ids"]:
            wanted = bool(touched & set(watch["label_ids"]))
            if wanted == (watch["behavior"] == "exclude"):
                return
        data = base64.b64encode(json.dumps({"emailAddress": box.email, "historyId": box.history_id}).encode()).decode()
        envelope = {
            "message": {"data": data, "messageId": secrets.token_hex(8), "publishTime": _rfc3339(time.time())},
            "subscription": watch["topic"].replace("/topics/", "/subscriptions/") + "-push",
        }
        self.post_later(self.push_endpoint, json.dumps(envelope).encode(), headers={"Content-Type": "application/json"})

    def _get_attachment(self, box: _Mailbox, msg_id: str, attachment_id: str) -> dict[str, Any]:
        msg = box.messages.get(msg_id)
        if msg is None:
            raise _ApiError(404, "Requested entity was not found.", "notFound")
        named = self._attachment_ids.get(attachment_id)
        if named is None or named[0] != msg_id:
            raise _ApiError(400, "Invalid attachment token", "invalidArgument")
        data = _part_data(msg.mime, named[1])
        if data is None:
            raise _ApiError(404, "Requested entity was not found.", "notFound")
        return {"size": len(data), "data": base64.urlsafe_b64encode(data).decode()}

    def _list_history(self, box: _Mailbox, query: MultiDict[str]) -> dict[str, Any]:
        raw_start = query.get("startHistoryId")
        if raw_start is None:
            raise _ApiError(400, "Missing required parameter: startHistoryId", "required")
        try:
            start = int(raw_start)
        except ValueError:
            raise _ApiError(400, f"Invalid value for startHistoryId: {raw_start}", "invalidArgument") from None
        if start < box.history_floor:
            raise _ApiError(404, "Requested entity was not found.", "notFound")
        max_results = _int_param(query, "maxResults", 100, 1, 500)
        after = start
        if query.get("pageToken"):
            after = max(after, int(_decode_cursor(query["pageToken"])[0]))
        wanted = [HISTORY_TYPES[t] for t in query.getall("historyTypes", []) if t in HISTORY_TYPES]
        label_id = query.get("labelId")
        records = []
        for record in box.history:
            if int(record["id"]) <= after:
                continue
            record = _filter_record(record, wanted, label_id)
            if record is not None:
                records.append(record)
        page = records[:max_results]
        body: dict[str, Any] = {}
        if page:
            body["history"] = page
        if len(records) > max_results:
            body["nextPageToken"] = _encode_cursor((int(page[-1]["id"]), 0))
        body["historyId"] = str(box.history_id)
        return body

    def _list_labels(self, box: _Mailbox) -> dict[str, Any]:
        unnamed = {label for m in box.messages.values() for label in m.label_ids} - set(SYSTEM_LABELS) - set(box.labels)
        labels = [{"id": label, "name": label, "type": "system"} for label in SYSTEM_LABELS]
        labels += [{"id": label, "name": name, "type": "user"} for label, name in sorted(box.labels.items())]
        labels += [{"id": label, "name": label, "type": "user"} for label in sorted(unnamed)]
        return {"labels": labels}

    async def _batch(self, request: web.Request) -> web.Response:
        content_type = request.headers.get("Content-Type", "")
        if not content_type.lower().startswith("multipart/mixed"):
            return web.json_response(google_error(400, "Batch requests must be multipart/mixed."), status=400)
        raw = await request.read()
        envelope = BytesParser(policy=compat32).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
        )
        parts = envelope.get_payload() if envelope.is_multipart() else None
        if not parts:
            return web.json_response(google_error(400, "Failed to parse batch request."), status=400)
        if len(parts) > BATCH_LIMIT:
            return web.json_response(
                google_error(400, f"Too many requests in batch: {len(parts)} (limit {BATCH_LIMIT})."), status=400
            )
        outer_auth = request.headers.get("Authorization")
        boundary = "batch_" + secrets.token_urlsafe(18)
        chunks: list[bytes] = []
        for part in parts:
            status, headers, body = self._batch_part(part, outer_auth)
            content_id = (part.get("Content-ID") or "").strip()
            response_id = f"<response-{content_id[1:-1] if content_id.startswith('<') else content_id}>"
            status_line = f"HTTP/1.1 {status} {_reason_phrase(status)}"
            inner_headers = {"Content-Type": "application/json; charset=UTF-8", "Vary": "Origin, X-Origin, Referer"}
            inner_headers.update(headers)
            inner = status_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in inner_headers.items())
            chunks.append(
                (
                    f"--{boundary}\r\nContent-Type: application/http\r\nContent-ID: {response_id}\r\n\r\n"
                    + inner
                    + "\r\n"
                    + json.dumps(body)
                    + "\r\n"
                ).encode()
            )
        chunks.append(f"--{boundary}--\r\n".encode())
        return web.Response(body=b"".join(chunks), headers={"Content-Type": f"multipart/mixed; boundary={boundary}"})

    def _batch_part(self, part: Any, outer_auth: str | None) -> tuple[int, dict[str, str], dict[str, Any]]:
        payload = part.get_payload()
        if not isinstance(payload, str):
            return 400, {}, google_error(400, "Batch part is not application/http.")
        head, _, _body = payload.replace("\r\n", "\n").partition("\n\n")
        lines = head.split("\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            return 400, {}, google_error(400, "Malformed request line in batch part.")
        headers = CIMultiDict()
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers.add(key.strip(), value.strip())
        split = urlsplit(target)
        query = MultiDict(parse_qsl(split.query, keep_blank_values=True))
        entry = self.log_request(method, split.path, query, via_batch=True)
        fault = self.faults.take("fail", method, split.path)
        if fault is not None:
            status, fault_headers, body = self.fault_response(fault, split.path)
        elif split.path.startswith("/gmail/v1/"):
            status, fault_headers, body = self._api(
                method, split.path[len("/gmail/v1/") :], query, headers.get("Authorization") or outer_auth
            )
        else:
            status, fault_headers, body = 404, {}, google_error(404, f"Not found: {split.path}")
        entry.status = status
        return status, fault_headers, body


def _rfc3339(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _decoded(value: str) -> str:
    """A header value with its RFC 2047 words decoded (what search matches against)."""
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (LookupError, ValueError, UnicodeError):
        return value


def _plain_text(msg: Any) -> str:
    """The text of a message, roughly (for search and snippets): text parts, tags dropped."""
    texts = []
    for part in msg.walk():
        if part.get_content_maintype() != "text" or part.get_filename():
            continue
        data = part.get_payload(decode=True) or b""
        try:
            text = data.decode(part.get_content_charset() or "utf-8", "replace")
        except LookupError:
            text = data.decode("utf-8", "replace")
        if part.get_content_subtype() == "html":
            text = re.sub(r"<[^>]+>", " ", text)
        texts.append(text)
    return "\n".join(texts).strip()


def _oauth_error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


def _reason_phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _int_param(query: MultiDict[str], name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _ApiError(400, f"Invalid value for {name}: {raw}", "invalidArgument") from None
    if value < low:
        raise _ApiError(400, f"Invalid value for {name}: {raw}", "invalidArgument")
    return min(value, high)


def _encode_cursor(cursor: tuple[int, int]) -> str:
    return base64.urlsafe_b64encode(f"{cursor[0]}:{cursor[1]}".encode()).decode().rstrip("=")


def _decode_cursor(token: str) -> tuple[int, int]:
    try:
        first, second = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().split(":")
        return int(first), int(second)
    except (ValueError, UnicodeDecodeError):
        raise _ApiError(400, "Invalid pageToken", "invalidArgument") from None


def _filter_record(record: dict[str, Any], wanted: list[str], label_id: str | None) -> dict[str, Any] | None:
    out: dict[str, Any] = {"id": record["id"], "messages": record["messages"]}
    found = False
    for key in HISTORY_TYPES.values():
        if key not in record or (wanted and key not in wanted):
            continue
        entries = record[key]
        if label_id is not None:
            entries = [e for e in entries if label_id in e["message"]["labelIds"] or label_id in e.get("labelIds", [])]
        if entries:
            out[key] = entries
            found = True
    return out if found else None


_LABEL_ALIASES = {
    "inbox": "INBOX",
    "sent": "SENT",
    "spam": "SPAM",
    "trash": "TRASH",
    "drafts": "DRAFT",
    "draft": "DRAFT",
    "starred": "STARRED",
    "important": "IMPORTANT",
    "unread": "UNREAD",
    "chats": "CHAT",
}


def _search(q: str) -> Callable[[_Message], bool]:
    """A predicate for a small subset of Gmail's search syntax."""
    try:
        terms = shlex.split(q)
    except ValueError:
        terms = q.split()
    checks = [check for term in terms if (check := _search_term(term)) is not None]
    return lambda m: all(check(m) for check in checks)


def _search_term(term: str) -> Callable[[_Message], bool] | None:
    key, sep, value = term.partition(":")
    key, lowered = key.lower(), value.lower()
    if not sep:
        word = term.lower()
        return lambda m: word in f"{m.header('Subject')} {m.body} {m.header('From')}".lower()
    if key in ("in", "label"):
        if lowered == "anywhere":
            return None
        label = _LABEL_ALIASES.get(lowered, value).lower()
        return lambda m: any(x.lower() == label for x in m.label_ids)
    if key == "is":
        if lowered == "read":
            return lambda m: "UNREAD" not in m.label_ids
        label = _LABEL_ALIASES.get(lowered, value.upper())
        return lambda m: label in m.label_ids
    if key in ("from", "to", "subject"):
        header = key.capitalize()
        return lambda m: lowered in m.header(header).lower()
    if key in ("after", "before", "newer_than", "older_than"):
        if key in ("after", "before"):
            bound = _parse_day(value)
        else:
            unit = {"d": 86400, "m": 30 * 86400, "y": 365 * 86400}.get(lowered[-1:], 86400)
            bound = int((time.time() - int(value[:-1] or 0) * unit) * 1000)
        if key in ("after", "newer_than"):
            return lambda m: m.internal_date >= bound
        return lambda m: m.internal_date < bound
    word = term.lower()
    return lambda m: word in f"{m.header('Subject')} {m.body}".lower()


def _parse_day(value: str) -> int:
    if value.isdigit():
        return int(value) * 1000
    day = datetime.datetime.strptime(value.replace("-", "/"), "%Y/%m/%d").replace(tzinfo=datetime.UTC)
    return int(day.timestamp() * 1000)


def _build(args: argparse.Namespace) -> FakeGmail:
    fake = FakeGmail(port=args.port, access_token_lifetime=args.expires_in, quota_per_second=args.quota)
    fake._cli_users = args.user or []  # type: ignore[attr-defined]
    for user in fake._cli_users:  # type: ignore[attr-defined]
        fake.populate(user, args.populate)
    return fake


def _describe(fake: FakeServer) -> list[str]:
    assert isinstance(fake, FakeGmail)
    lines = [f"client_id {fake.client_id}", f"client_secret {fake.client_secret}"]
    for user in getattr(fake, "_cli_users", []):
        lines.append(f"refresh_token {user} {fake.issue_refresh_token(user)}")
    return lines


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", action="append", help="create this mailbox (repeatable)")
    parser.add_argument("--populate", type=int, default=0, help="messages to put in each --user mailbox")
    parser.add_argument("--expires-in", type=int, default=3600, help="access token lifetime in seconds")
    parser.add_argument("--quota", type=int, default=None, help="quota units per user per second")


def main(argv: list[str] | None = None) -> None:
    """Serve a FakeGmail until interrupted."""
    run_main(_build, _describe, argv, add_arguments=_arguments, prog="python -m brain.testing.fakes.gmail")


if __name__ == "__main__":
    main()
