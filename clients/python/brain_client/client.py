"""The clients: `Client` (blocking) and `AsyncClient` (asyncio), over httpx.

Both hold the caller's credentials (a session token from sign-up/sign-in and the JWT minted for
it, or an API key) and add for every call what an app would otherwise write around it: a JWT
refreshed from the session before it expires, an Idempotency-Key on every event write, retries
of 429/503 answers after their Retry-After (and of lost connections where that is safe), and a
typed exception carrying the server's `code` for every error answer.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from http.cookiejar import CookieJar, DefaultCookiePolicy
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Literal, cast

import httpx

from brain_client import _calls as calls
from brain_client.errors import BrainError, RateLimited, ServiceUnavailable
from brain_client.models import (
    ChangesPage,
    Deleted,
    Event,
    EventsPage,
    Health,
    Jwks,
    MailAccount,
    Me,
    SearchPage,
    SearchPageResultsItem,
    SessionResponse,
    Stats,
    StreamTicket,
)
from brain_client.stream import AsyncEventStream, EventStream, SseMessage, StreamState

__all__ = ["AsyncClient", "Client"]

# Refresh a JWT this long before it expires (clock skew and a slow request included).
REFRESH_MARGIN = 60.0
# An event stream silent for this long (no event, no heartbeat) is taken for a lost connection.
STREAM_IDLE_TIMEOUT = 60.0
_RETRIED = (RateLimited, ServiceUnavailable)


def no_cookies() -> CookieJar:
    """A jar that keeps nothing: the client authenticates with bearer tokens, and a session cookie
    sent back without an Origin is refused as a possible CSRF (403 MISSING_OR_NULL_ORIGIN)."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


class _Credentials:
    """What the client authenticates with, and where the two roles are."""

    def __init__(self, api_url: str, auth_url: str | None, jwt: str | None, session_token: str | None,
                 api_key: str | None, max_retries: int, max_retry_wait: float, timeout: float) -> None:
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self.auth_url = (auth_url or api_url).rstrip("/")
        self.jwt = jwt
        self.session_token = session_token
        self.api_key = api_key
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        # Retries made so far (429/503 waited out, lost connections sent again): for logs and tests.
        self.retries = 0

    def url(self, call: calls.Call) -> str:
        return (self.api_url if call.role == "api" else self.auth_url) + call.path

    def headers(self, call: calls.Call) -> dict[str, str]:
        headers = {"Accept": "application/json", **call.headers}
        if call.auth == "session" and self.session_token:
            headers["Authorization"] = f"Bearer {self.session_token}"
        elif call.auth == "user":
            if self.jwt:
                headers["Authorization"] = f"Bearer {self.jwt}"
            elif self.api_key:
                headers["x-api-key"] = self.api_key
        return headers

    def send_args(self, call: calls.Call) -> dict[str, Any]:
        """httpx.request arguments for a call."""
        args: dict[str, Any] = {"headers": self.headers(call), "params": call.params}
        if call.body is not None or call.method in ("POST", "PATCH", "PUT"):
            args["json"] = call.body if call.body is not None else {}
        return args

    def stream_timeout(self, idle_timeout: float) -> httpx.Timeout:
        """An event stream's timeouts: the usual ones to connect, `idle_timeout` between reads."""
        return httpx.Timeout(self.timeout, read=idle_timeout)

    def should_refresh(self, call: calls.Call) -> bool:
        return call.auth == "user" and self.session_token is not None and calls.needs_refresh(self.jwt, REFRESH_MARGIN)

    def signed_in(self, body: SessionResponse) -> SessionResponse:
        self.session_token = body["token"]
        self.jwt = body.get("jwt") or self.jwt
        return body

    def retry_wait(self, call: calls.Call, failure: Exception, attempt: int) -> float:
        """How long to wait before sending the call again after this failure; re-raises it when
        it is not worth retrying (an error answer other than 429/503, a wait too long, a lost
        connection for a write without an idempotency key, no retries left)."""
        wait: float | None = None
        if attempt < self.max_retries:
            if isinstance(failure, _RETRIED):
                wait = failure.retry_after if failure.retry_after is not None else 2.0 ** attempt
                wait = wait if wait <= self.max_retry_wait else None
            elif isinstance(failure, httpx.TransportError) and call.repeatable:
                wait = 0.2 * 2.0 ** attempt
        if wait is None:
            raise failure
        self.retries += 1
        return wait


class Client(_Credentials):
    """A blocking client for both roles of one brain deployment.

    `api_url`: the API role; `auth_url`: the auth role (default: the same URL). Credentials: sign
    up or in through the client, or pass a `session_token` (the JWT is then fetched and kept
    fresh), a `jwt`, or an `api_key`.
    """

    def __init__(self, api_url: str, auth_url: str | None = None, *, jwt: str | None = None,
                 session_token: str | None = None, api_key: str | None = None, max_retries: int = 3,
                 max_retry_wait: float = 30.0, timeout: float = 30.0, http: httpx.Client | None = None) -> None:
        super().__init__(api_url, auth_url, jwt, session_token, api_key, max_retries, max_retry_wait, timeout)
        self.http = http or httpx.Client(timeout=timeout, cookies=no_cookies())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def _run(self, call: calls.Call) -> Any:
        if self.should_refresh(call):
            self.refresh()
        for attempt in itertools.count():
            try:
                return calls.result(call, self.http.request(call.method, self.url(call), **self.send_args(call)))
            except (BrainError, httpx.TransportError) as failure:
                time.sleep(self.retry_wait(call, failure, attempt))

    # -- auth role -------------------------------------------------------------------------------

    def sign_up(self, name: str, email: str, password: str, **extra: Any) -> SessionResponse:
        """Create an account and sign in: the client keeps its session token and JWT."""
        return self.signed_in(self._run(calls.sign_up(name, email, password, **extra)))

    def sign_in(self, email: str, password: str, **extra: Any) -> SessionResponse:
        """Sign in with email and password: the client keeps the session token and JWT."""
        return self.signed_in(self._run(calls.sign_in(email, password, **extra)))

    def refresh(self) -> str:
        """A fresh JWT for the session (done for you before the current one expires)."""
        self.jwt = cast(str, self._run(calls.token())["token"])
        return self.jwt

    def get_session(self) -> dict[str, Any] | None:
        """The current session and user (None when it is over)."""
        return cast("dict[str, Any] | None", self._run(calls.get_session()))

    def sign_out(self) -> None:
        """End the session; the client forgets its credentials."""
        self._run(calls.sign_out())
        self.session_token = self.jwt = None

    def jwks(self) -> Jwks:
        """The issuer's public keys."""
        return cast(Jwks, self._run(calls.jwks()))

    # -- API role --------------------------------------------------------------------------------

    def health(self) -> Health:
        """Liveness: status, version, problems."""
        return cast(Health, self._run(calls.health()))

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI document the server serves."""
        return cast("dict[str, Any]", self._run(calls.openapi()))

    def asyncapi(self) -> dict[str, Any]:
        """The AsyncAPI document of the JetStream event stream."""
        return cast("dict[str, Any]", self._run(calls.asyncapi()))

    def me(self) -> Me:
        """Who the credentials speak for."""
        return cast(Me, self._run(calls.me()))

    def post_event(self, type: str, data: Any, *, created_at: str | float | None = None,
                   idempotency_key: str | None = None) -> Event:
        """Store one event (keyed: a retry returns the stored one instead of storing it twice)."""
        return cast(Event, self._run(calls.post_events(calls.new_event(type, data, created_at), idempotency_key)))

    def post_events(self, events: Sequence[Mapping[str, Any]], *, idempotency_key: str | None = None) -> list[Event]:
        """Store a batch of NewEvent mappings atomically."""
        return cast("list[Event]", self._run(calls.post_events(events, idempotency_key))["events"])

    def list_events(self, *, type: str | None = None, since: str | float | None = None,
                    until: str | float | None = None, limit: int | None = None,
                    cursor: str | None = None) -> EventsPage:
        """One page of the user's events, newest first."""
        return cast(EventsPage, self._run(calls.list_events(type, since, until, limit, cursor)))

    def iter_events(self, *, type: str | None = None, since: str | float | None = None,
                    until: str | float | None = None, page_size: int | None = None) -> Iterator[Event]:
        """Every matching event, newest first, following the cursors page after page."""
        cursor = None
        while True:
            page = self.list_events(type=type, since=since, until=until, limit=page_size, cursor=cursor)
            yield from page["events"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def search(self, q: str, *, since: str | float | None = None, until: str | float | None = None,
               limit: int | None = None, cursor: str | None = None) -> SearchPage:
        """One page of the user's events matching the query (GET /search), best first."""
        return cast(SearchPage, self._run(calls.search(q, since, until, limit, cursor)))

    def iter_search(self, q: str, *, since: str | float | None = None, until: str | float | None = None,
                    page_size: int | None = None) -> Iterator[SearchPageResultsItem]:
        """Every match, best first, following the cursors page after page."""
        cursor = None
        while True:
            page = self.search(q, since=since, until=until, limit=page_size, cursor=cursor)
            yield from page["results"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def get_event(self, event_id: int) -> Event:
        """One event by id."""
        return cast(Event, self._run(calls.get_event(event_id)))

    def delete_event(self, event_id: int) -> Deleted:
        """Delete one event (a tombstone, event.deleted, takes its place in the commit order)."""
        return cast(Deleted, self._run(calls.delete_event(event_id)))

    def delete_events(self, *, type: str | Sequence[str] | None = None, since: str | float | None = None,
                      until: str | float | None = None) -> int:
        """Delete the events of these types and/or times (at least one of them); how many went."""
        return cast(int, self._run(calls.delete_events(type, since, until))["deleted"])

    def event_changes(self, after: int = 0, *, limit: int | None = None,
                      type: str | Sequence[str] | None = None) -> ChangesPage:
        """One page of what was committed after a sequence number, deletions included."""
        return cast(ChangesPage, self._run(calls.event_changes(after, limit, type)))

    def iter_changes(self, after: int = 0, *, page_size: int | None = None,
                     type: str | Sequence[str] | None = None) -> Iterator[Event]:
        """Everything committed after `after`, in commit order, until the feed is read to its end."""
        while True:
            page = self.event_changes(after, limit=page_size, type=type)
            yield from page["events"]
            after = page["next_after"]
            if not page["has_more"]:
                return

    def me_stats(self) -> Stats:
        """The user's event counts by type, storage, search index state and quotas."""
        return cast(Stats, self._run(calls.me_stats()))

    def stream_events(self, *, type: str | Sequence[str] | None = None, after: int | None = None,
                      reconnect: bool = True, idle_timeout: float = STREAM_IDLE_TIMEOUT) -> EventStream:
        """The user's events as they commit (GET /events/stream), for as long as it is iterated.

        `type`: names or `prefix.*`; `after`: first every event committed after this id (0: from
        the start). The stream resumes with Last-Event-ID, without a gap or a repeat, when its
        connection drops or the server ends it for a reason a reconnect cures (an expired JWT is
        refreshed first); `reconnect=False` raises StreamEnded instead.
        """
        state = StreamState(type, after, reconnect)
        return EventStream(state, self._stream(state, idle_timeout))

    def _stream(self, state: StreamState, idle_timeout: float) -> Iterator[Event]:
        while True:
            ending: SseMessage | None = None
            try:
                for message in self._messages(state.call(), state, idle_timeout):
                    if message.event != "message":
                        ending = message
                        break
                    yield state.event(message)
                else:
                    raise httpx.RemoteProtocolError("the event stream closed without saying why")
            except (BrainError, httpx.TransportError) as failure:
                wait = state.lost(failure)
            else:
                wait = state.ended(ending)
            time.sleep(wait)

    def _messages(self, call: calls.Call, state: StreamState, idle_timeout: float) -> Iterator[SseMessage]:
        if self.should_refresh(call):
            self.refresh()
        with self.http.stream(call.method, self.url(call), timeout=self.stream_timeout(idle_timeout),
                              **self.send_args(call)) as response:
            if response.status_code >= 400:
                response.read()
                calls.result(call, response)
            for line in response.iter_lines():
                message = state.parser.line(line)
                if message is not None:
                    yield message

    def stream_ticket(self) -> StreamTicket:
        """A single-use ticket that opens one stream without a header: `stream?ticket=` for a
        browser's EventSource (POST /events/stream/ticket)."""
        return cast(StreamTicket, self._run(calls.stream_ticket()))

    def mail_connect(self, provider: str, *, refresh_token: str | None = None,
                     sync: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Connect a mail account: the OAuth authorize link, or (with a refresh token or the
        provider's own fields, such as IMAP's host and password) the account."""
        return cast("dict[str, Any]", self._run(calls.mail_connect(provider, refresh_token, sync, fields)))

    def mail_status(self) -> list[MailAccount]:
        """The caller's mail accounts and their sync state."""
        return cast("list[MailAccount]", self._run(calls.mail_status())["accounts"])

    def mail_disconnect(self, account: str) -> dict[str, Any]:
        """Stop syncing an account and delete its credentials."""
        return cast("dict[str, Any]", self._run(calls.mail_disconnect(account)))

    def mail_change_account(self, account: str, **choices: Any) -> MailAccount:
        """Change what an account syncs (folders, bodies, keep_html, ...)."""
        return cast(MailAccount, self._run(calls.mail_change_account(account, choices))["account"])

    def mail_sync_now(self, account: str) -> MailAccount:
        """Sync an account now."""
        return cast(MailAccount, self._run(calls.mail_sync_now(account))["account"])

    def mail_attachment(self, message: str, attachment: str, *, account: str | None = None) -> bytes:
        """An attachment's content."""
        return cast(bytes, self._run(calls.mail_attachment(message, attachment, account)))

    def request(self, method: str, path: str, *, role: Literal["api", "auth"] = "api",
                auth: calls.Auth = "user", params: Mapping[str, Any] | None = None, json: Any = None) -> Any:
        """Any other operation of the OpenAPI document, with the same credentials, retries and errors."""
        return self._run(calls.request(method, role, path, auth=auth, params=params, body=json))


class AsyncClient(_Credentials):
    """The same client for asyncio: every method is a coroutine (iter_events an async iterator)."""

    def __init__(self, api_url: str, auth_url: str | None = None, *, jwt: str | None = None,
                 session_token: str | None = None, api_key: str | None = None, max_retries: int = 3,
                 max_retry_wait: float = 30.0, timeout: float = 30.0, http: httpx.AsyncClient | None = None) -> None:
        super().__init__(api_url, auth_url, jwt, session_token, api_key, max_retries, max_retry_wait, timeout)
        self.http = http or httpx.AsyncClient(timeout=timeout, cookies=no_cookies())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    async def _run(self, call: calls.Call) -> Any:
        if self.should_refresh(call):
            await self.refresh()
        for attempt in itertools.count():
            try:
                response = await self.http.request(call.method, self.url(call), **self.send_args(call))
                return calls.result(call, response)
            except (BrainError, httpx.TransportError) as failure:
                await asyncio.sleep(self.retry_wait(call, failure, attempt))

    async def sign_up(self, name: str, email: str, password: str, **extra: Any) -> SessionResponse:
        """Create an account and sign in: the client keeps its session token and JWT."""
        return self.signed_in(await self._run(calls.sign_up(name, email, password, **extra)))

    async def sign_in(self, email: str, password: str, **extra: Any) -> SessionResponse:
        """Sign in with email and password: the client keeps the session token and JWT."""
        return self.signed_in(await self._run(calls.sign_in(email, password, **extra)))

    async def refresh(self) -> str:
        """A fresh JWT for the session (done for you before the current one expires)."""
        self.jwt = cast(str, (await self._run(calls.token()))["token"])
        return self.jwt

    async def get_session(self) -> dict[str, Any] | None:
        """The current session and user (None when it is over)."""
        return cast("dict[str, Any] | None", await self._run(calls.get_session()))

    async def sign_out(self) -> None:
        """End the session; the client forgets its credentials."""
        await self._run(calls.sign_out())
        self.session_token = self.jwt = None

    async def jwks(self) -> Jwks:
        """The issuer's public keys."""
        return cast(Jwks, await self._run(calls.jwks()))

    async def health(self) -> Health:
        """Liveness: status, version, problems."""
        return cast(Health, await self._run(calls.health()))

    async def openapi(self) -> dict[str, Any]:
        """The OpenAPI document the server serves."""
        return cast("dict[str, Any]", await self._run(calls.openapi()))

    async def asyncapi(self) -> dict[str, Any]:
        """The AsyncAPI document of the JetStream event stream."""
        return cast("dict[str, Any]", await self._run(calls.asyncapi()))

    async def me(self) -> Me:
        """Who the credentials speak for."""
        return cast(Me, await self._run(calls.me()))

    async def post_event(self, type: str, data: Any, *, created_at: str | float | None = None,
                         idempotency_key: str | None = None) -> Event:
        """Store one event (keyed: a retry returns the stored one instead of storing it twice)."""
        return cast(Event, await self._run(calls.post_events(calls.new_event(type, data, created_at), idempotency_key)))

    async def post_events(self, events: Sequence[Mapping[str, Any]], *,
                          idempotency_key: str | None = None) -> list[Event]:
        """Store a batch of NewEvent mappings atomically."""
        return cast("list[Event]", (await self._run(calls.post_events(events, idempotency_key)))["events"])

    async def list_events(self, *, type: str | None = None, since: str | float | None = None,
                          until: str | float | None = None, limit: int | None = None,
                          cursor: str | None = None) -> EventsPage:
        """One page of the user's events, newest first."""
        return cast(EventsPage, await self._run(calls.list_events(type, since, until, limit, cursor)))

    async def iter_events(self, *, type: str | None = None, since: str | float | None = None,
                          until: str | float | None = None, page_size: int | None = None) -> AsyncIterator[Event]:
        """Every matching event, newest first, following the cursors page after page."""
        cursor = None
        while True:
            page = await self.list_events(type=type, since=since, until=until, limit=page_size, cursor=cursor)
            for event in page["events"]:
                yield event
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def search(self, q: str, *, since: str | float | None = None, until: str | float | None = None,
                     limit: int | None = None, cursor: str | None = None) -> SearchPage:
        """One page of the user's events matching the query (GET /search), best first."""
        return cast(SearchPage, await self._run(calls.search(q, since, until, limit, cursor)))

    async def iter_search(self, q: str, *, since: str | float | None = None, until: str | float | None = None,
                          page_size: int | None = None) -> AsyncIterator[SearchPageResultsItem]:
        """Every match, best first, following the cursors page after page."""
        cursor = None
        while True:
            page = await self.search(q, since=since, until=until, limit=page_size, cursor=cursor)
            for result in page["results"]:
                yield result
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def get_event(self, event_id: int) -> Event:
        """One event by id."""
        return cast(Event, await self._run(calls.get_event(event_id)))

    async def delete_event(self, event_id: int) -> Deleted:
        """Delete one event (a tombstone, event.deleted, takes its place in the commit order)."""
        return cast(Deleted, await self._run(calls.delete_event(event_id)))

    async def delete_events(self, *, type: str | Sequence[str] | None = None, since: str | float | None = None,
                            until: str | float | None = None) -> int:
        """Delete the events of these types and/or times (at least one of them); how many went."""
        return cast(int, (await self._run(calls.delete_events(type, since, until)))["deleted"])

    async def event_changes(self, after: int = 0, *, limit: int | None = None,
                            type: str | Sequence[str] | None = None) -> ChangesPage:
        """One page of what was committed after a sequence number, deletions included."""
        return cast(ChangesPage, await self._run(calls.event_changes(after, limit, type)))

    async def iter_changes(self, after: int = 0, *, page_size: int | None = None,
                           type: str | Sequence[str] | None = None) -> AsyncIterator[Event]:
        """Everything committed after `after`, in commit order, until the feed is read to its end."""
        while True:
            page = await self.event_changes(after, limit=page_size, type=type)
            for event in page["events"]:
                yield event
            after = page["next_after"]
            if not page["has_more"]:
                return

    async def me_stats(self) -> Stats:
        """The user's event counts by type, storage, search index state and quotas."""
        return cast(Stats, await self._run(calls.me_stats()))

    def stream_events(self, *, type: str | Sequence[str] | None = None, after: int | None = None,
                      reconnect: bool = True, idle_timeout: float = STREAM_IDLE_TIMEOUT) -> AsyncEventStream:
        """The user's events as they commit (GET /events/stream): as Client.stream_events, an async iterator."""
        state = StreamState(type, after, reconnect)
        return AsyncEventStream(state, self._stream(state, idle_timeout))

    async def _stream(self, state: StreamState, idle_timeout: float) -> AsyncIterator[Event]:
        while True:
            ending: SseMessage | None = None
            try:
                async for message in self._messages(state.call(), state, idle_timeout):
                    if message.event != "message":
                        ending = message
                        break
                    yield state.event(message)
                else:
                    raise httpx.RemoteProtocolError("the event stream closed without saying why")
            except (BrainError, httpx.TransportError) as failure:
                wait = state.lost(failure)
            else:
                wait = state.ended(ending)
            await asyncio.sleep(wait)

    async def _messages(self, call: calls.Call, state: StreamState, idle_timeout: float) -> AsyncIterator[SseMessage]:
        if self.should_refresh(call):
            await self.refresh()
        async with self.http.stream(call.method, self.url(call), timeout=self.stream_timeout(idle_timeout),
                                    **self.send_args(call)) as response:
            if response.status_code >= 400:
                await response.aread()
                calls.result(call, response)
            async for line in response.aiter_lines():
                message = state.parser.line(line)
                if message is not None:
                    yield message

    async def stream_ticket(self) -> StreamTicket:
        """A single-use ticket that opens one stream without a header (POST /events/stream/ticket)."""
        return cast(StreamTicket, await self._run(calls.stream_ticket()))

    async def mail_connect(self, provider: str, *, refresh_token: str | None = None,
                           sync: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """Connect a mail account: the OAuth authorize link, or (with a refresh token or the
        provider's own fields, such as IMAP's host and password) the account."""
        return cast("dict[str, Any]", await self._run(calls.mail_connect(provider, refresh_token, sync, fields)))

    async def mail_status(self) -> list[MailAccount]:
        """The caller's mail accounts and their sync state."""
        return cast("list[MailAccount]", (await self._run(calls.mail_status()))["accounts"])

    async def mail_disconnect(self, account: str) -> dict[str, Any]:
        """Stop syncing an account and delete its credentials."""
        return cast("dict[str, Any]", await self._run(calls.mail_disconnect(account)))

    async def mail_change_account(self, account: str, **choices: Any) -> MailAccount:
        """Change what an account syncs (folders, bodies, keep_html, ...)."""
        return cast(MailAccount, (await self._run(calls.mail_change_account(account, choices)))["account"])

    async def mail_sync_now(self, account: str) -> MailAccount:
        """Sync an account now."""
        return cast(MailAccount, (await self._run(calls.mail_sync_now(account)))["account"])

    async def mail_attachment(self, message: str, attachment: str, *, account: str | None = None) -> bytes:
        """An attachment's content."""
        return cast(bytes, await self._run(calls.mail_attachment(message, attachment, account)))

    async def request(self, method: str, path: str, *, role: Literal["api", "auth"] = "api",
                      auth: calls.Auth = "user", params: Mapping[str, Any] | None = None, json: Any = None) -> Any:
        """Any other operation of the OpenAPI document, with the same credentials, retries and errors."""
        return await self._run(calls.request(method, role, path, auth=auth, params=params, body=json))
