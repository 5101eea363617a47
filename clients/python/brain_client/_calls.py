"""What each operation sends and how its answer is read: shared by the sync and the async client.

A `Call` is a request described without I/O; `Client` and `AsyncClient` only differ in how they
send it (and how they wait before a retry).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import httpx

from brain_client.errors import error_for

Auth = Literal["user", "session", "none"]
# Methods that may be sent again after a lost connection without doing twice what they do.
_SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Call:
    """One request: which role serves it, what to send, which credential, how to read the answer."""

    method: str
    role: Literal["api", "auth"]
    path: str
    auth: Auth = "user"
    params: Mapping[str, Any] | None = None
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    read: Literal["json", "bytes"] = "json"

    @property
    def repeatable(self) -> bool:
        """Whether a lost connection may be retried: a read, or a write carrying an idempotency key."""
        return self.method in _SAFE_METHODS or "Idempotency-Key" in self.headers


def new_idempotency_key() -> str:
    """A fresh key for one logical write (reused by every retry of it)."""
    return str(uuid.uuid4())


def jwt_expiry(jwt: str) -> float | None:
    """The `exp` of a JWT (unverified: the server verifies; the client only plans its refresh)."""
    try:
        payload = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def needs_refresh(jwt: str | None, margin: float) -> bool:
    """Whether a JWT is missing or expires within `margin` seconds."""
    if jwt is None:
        return True
    exp = jwt_expiry(jwt)
    return exp is not None and exp - time.time() < margin


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked to wait (Retry-After in seconds), if it said."""
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def result(call: Call, response: httpx.Response) -> Any:
    """The parsed answer, or the typed exception for an error status."""
    if response.status_code >= 400:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        raise error_for(response.status_code, body, retry_after(response))
    if call.read == "bytes":
        return response.content
    if not response.content:
        return None
    return response.json()


def clean(params: Mapping[str, Any]) -> dict[str, Any]:
    """Query parameters without the ones left out (None)."""
    return {k: v for k, v in params.items() if v is not None}


def segment(value: str) -> str:
    """A path segment, percent-encoded (ids may hold '/', '+', '=')."""
    return quote(value, safe="")


# -- the operations ------------------------------------------------------------------------------


def sign_up(name: str, email: str, password: str, **extra: Any) -> Call:
    """POST /api/auth/sign-up/email."""
    return Call("POST", "auth", "/api/auth/sign-up/email", "none", body={"name": name, "email": email,
                                                                          "password": password, **extra})


def sign_in(email: str, password: str, **extra: Any) -> Call:
    """POST /api/auth/sign-in/email."""
    return Call("POST", "auth", "/api/auth/sign-in/email", "none", body={"email": email, "password": password, **extra})


def get_session() -> Call:
    """GET /api/auth/get-session."""
    return Call("GET", "auth", "/api/auth/get-session", "session")


def token() -> Call:
    """GET /api/auth/token: a fresh JWT for the session."""
    return Call("GET", "auth", "/api/auth/token", "session")


def sign_out() -> Call:
    """POST /api/auth/sign-out."""
    return Call("POST", "auth", "/api/auth/sign-out", "session", body={})


def jwks() -> Call:
    """GET /api/auth/jwks."""
    return Call("GET", "auth", "/api/auth/jwks", "none")


def health() -> Call:
    """GET /health."""
    return Call("GET", "api", "/health", "none")


def openapi() -> Call:
    """GET /openapi.json."""
    return Call("GET", "api", "/openapi.json", "none")


def asyncapi() -> Call:
    """GET /asyncapi.json."""
    return Call("GET", "api", "/asyncapi.json", "none")


def me() -> Call:
    """GET /me."""
    return Call("GET", "api", "/me")


def post_events(events: Sequence[Mapping[str, Any]] | Mapping[str, Any], idempotency_key: str | None) -> Call:
    """POST /events: one event (a mapping) or a batch (a sequence), keyed so a retry is not stored twice."""
    body = dict(events) if isinstance(events, Mapping) else [dict(e) for e in events]
    key = idempotency_key or new_idempotency_key()
    return Call("POST", "api", "/events", body=body, headers={"Idempotency-Key": key})


def new_event(type: str, data: Any, created_at: str | float | None) -> dict[str, Any]:
    """A NewEvent body."""
    event: dict[str, Any] = {"type": type, "data": data}
    if created_at is not None:
        event["created_at"] = created_at
    return event


def list_events(type: str | None, since: str | float | None, until: str | float | None, limit: int | None,
                cursor: str | None) -> Call:
    """GET /events: one page."""
    params = clean({"type": type, "since": since, "until": until, "limit": limit, "cursor": cursor})
    return Call("GET", "api", "/events", params=params)


def search(q: str, since: str | float | None, until: str | float | None, limit: int | None,
           cursor: str | None) -> Call:
    """GET /search: one page of matches, best first."""
    return Call("GET", "api", "/search", params=clean({"q": q, "since": since, "until": until, "limit": limit,
                                                        "cursor": cursor}))


def get_event(event_id: int) -> Call:
    """GET /events/{id}."""
    return Call("GET", "api", f"/events/{int(event_id)}")


def delete_event(event_id: int) -> Call:
    """DELETE /events/{id}."""
    return Call("DELETE", "api", f"/events/{int(event_id)}")


def delete_events(types: str | Sequence[str] | None, since: str | float | None, until: str | float | None) -> Call:
    """DELETE /events?type&since&until: the matching events."""
    return Call("DELETE", "api", "/events", params=clean({"type": type_filter(types), "since": since, "until": until}))


def event_changes(after: int, limit: int | None, types: str | Sequence[str] | None) -> Call:
    """GET /events/changes: what was committed after a sequence number."""
    return Call("GET", "api", "/events/changes", params=clean({"after": after, "limit": limit,
                                                               "type": type_filter(types)}))


def me_stats() -> Call:
    """GET /me/stats."""
    return Call("GET", "api", "/me/stats")


def type_filter(types: str | Sequence[str] | None) -> str | None:
    """A `type` parameter: names or `prefix.*`, comma-separated."""
    if types is None or isinstance(types, str):
        return types
    return ",".join(types) or None


def stream_events(types: Sequence[str], after: int | None) -> Call:
    """GET /events/stream, resuming after `after` (sent as Last-Event-ID, as EventSource does)."""
    headers = {"Accept": "text/event-stream"}
    if after is not None:
        headers["Last-Event-ID"] = str(after)
    return Call("GET", "api", "/events/stream", params=clean({"type": type_filter(types)}), headers=headers)


def stream_ticket() -> Call:
    """POST /events/stream/ticket: a single-use ticket for one stream (EventSource in a browser)."""
    return Call("POST", "api", "/events/stream/ticket")


def mail_connect(provider: str, refresh_token: str | None, sync: Mapping[str, Any] | None,
                 fields: Mapping[str, Any]) -> Call:
    """POST /mail/connect (fields: what else the provider needs, e.g. IMAP's host and password)."""
    body: dict[str, Any] = {"provider": provider, **fields}
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    if sync is not None:
        body["sync"] = dict(sync)
    return Call("POST", "api", "/mail/connect", body=body)


def mail_status() -> Call:
    """GET /mail/status."""
    return Call("GET", "api", "/mail/status")


def mail_disconnect(account: str) -> Call:
    """POST /mail/disconnect."""
    return Call("POST", "api", "/mail/disconnect", body={"account": account})


def mail_change_account(account: str, choices: Mapping[str, Any]) -> Call:
    """PATCH /mail/accounts/{account}."""
    return Call("PATCH", "api", f"/mail/accounts/{segment(account)}", body=dict(choices))


def mail_sync_now(account: str) -> Call:
    """POST /mail/accounts/{account}/sync."""
    return Call("POST", "api", f"/mail/accounts/{segment(account)}/sync")


def mail_attachment(message: str, attachment: str, account: str | None) -> Call:
    """GET /mail/messages/{message}/attachments/{attachment}: the bytes."""
    path = f"/mail/messages/{segment(message)}/attachments/{segment(attachment)}"
    return Call("GET", "api", path, params=clean({"account": account}), read="bytes")


def request(method: str, role: Literal["api", "auth"], path: str, *, auth: Auth, params: Mapping[str, Any] | None,
            body: Any) -> Call:
    """Any other operation of the document, by method and path."""
    return Call(method.upper(), role, path, auth, params=params, body=body)

