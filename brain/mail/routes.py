"""The mail routes on the API role: connect (OAuth or direct), the OAuth flow's connect link,
callback and result page, status and disconnect.

Connect, status and disconnect run behind the API's JWT guard and act for the token's user
only. The OAuth flow is bound to the browser that starts it, so that an authorize link
opened anywhere else connects nothing:

1. `POST /mail/connect` (JWT) mints a signed, single-use `state` and answers brain's connect
   link, `GET /mail/oauth/start?flow=<state>`.
2. The connect link, opened by the user's browser within `oauth_start_ttl_seconds`, binds
   the flow to that browser — a random HttpOnly, SameSite=Lax cookie named after the flow
   (`__Host-` prefixed and Secure over https; scoped to the callback's path over plain
   http), of which mail.db keeps only a hash — and redirects to the provider's consent page
   (PKCE challenge in it). A second opening is refused.
3. The provider redirects the browser to `GET /mail/oauth/callback?code&state`; the flow is
   used up only if the browser sends the cookie it was bound to (else `FLOW_NOT_BOUND`, and
   nothing is connected); the code is redeemed with the flow's PKCE verifier; the browser
   goes on to `[mail] app_redirect_url` (default: brain's own result page) with
   `?status=connected|error&code=...`.

A front end that takes the provider's redirect itself forwards `code` and `state` to the
callback with its bearer token instead: then the flow must belong to that token's user (no
cookie needed) and the answer is JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aiohttp import hdrs, web

from brain.apikeys import scope
from brain.contracts import AUTHENTICATOR, USER_HOME
from brain.errors import BadRequest, Conflict, HTTPError, PayloadTooLarge, TooManyRequests
from brain.mail.attachments import Downloads, content_disposition
from brain.mail.browser import NO_LEAKS, RESULT_HEADERS, FlowCookies, result_page
from brain.mail.db import Account, States
from brain.mail.directory import push_users
from brain.mail.openapi import PATHS, SCHEMAS, connect_schema
from brain.mail.ownership import Ownership
from brain.mail.provider import PushRequest
from brain.mail.selection import SyncChoices
from brain.mail.service import CALLBACK_PATH, RESULT_PATH, START_PATH, MailService
from brain.mail.sync import SyncNow
from brain.process import Process
from brain.routes import Route, current_user
from brain.web import json_response, read_body, read_json

__all__ = ["routes"]

log = logging.getLogger("brain.mail")

# What a client refused for too many connects is told to wait: a connect that hangs lasts the
# provider's timeout, one that works a second or two.
CONNECT_RETRY_AFTER = 5.0
# Gmail's and Graph's notifications are a few KiB; anything much larger is not one.
_PUSH_MAX_BYTES = 256 * 1024

T = TypeVar("T")


class ConnectSlots:
    """At most `per_user` provider connects of one user in progress; used from the event loop only.

    The connect pool is shared by everyone: without a cap one user naming a server that never
    answers could fill it and make every other user's connect wait behind theirs.
    """

    def __init__(self, per_user: int) -> None:
        self.per_user = per_user
        self._busy: dict[str, int] = {}

    @contextlib.contextmanager
    def hold(self, user_id: str) -> Iterator[None]:
        """One slot of ``user_id`` while the block runs; 429 `TOO_MANY_CONNECTS` if none is free."""
        busy = self._busy.get(user_id, 0)
        if busy >= self.per_user:
            raise TooManyRequests(
                f"{busy} mail connects of this user are still in progress (at most {self.per_user} at a time); "
                "try again when one has finished",
                retry_after=CONNECT_RETRY_AFTER,
                code="TOO_MANY_CONNECTS",
            )
        self._busy[user_id] = busy + 1
        try:
            yield
        finally:
            left = self._busy.pop(user_id) - 1
            if left:
                self._busy[user_id] = left


def routes(rt: Process, service: MailService, ownership: Ownership) -> list[Route]:
    """The mail routes of the API listener (each behind its bearer-token guard unless public)."""
    slots = ConnectSlots(rt.settings.mail.connects_per_user)
    cookies = FlowCookies(rt.settings.api_public_url, service.redirect_uri, rt.settings.mail.oauth_state_ttl_seconds)

    def user_of(request: web.Request) -> str:
        return current_user(request).id

    async def blocking(fn: Callable[[], T]) -> T:
        """mail.db work, in the loop's executor."""
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    async def provider_call(fn: Callable[[], T]) -> T:
        """Work that talks to a provider, on the connect pool (take a connect slot first)."""
        return await asyncio.get_running_loop().run_in_executor(service.connect_pool, fn)

    downloads = Downloads(service)

    async def download_call(fn: Callable[[], T]) -> T:
        """Attachment work (provider calls, each chunk), on the download pool."""
        return await asyncio.get_running_loop().run_in_executor(service.download_pool, fn)

    async def connected(result: tuple[Account, bool]) -> tuple[dict[str, Any], bool]:
        """Start the new account's sync; (its status, whether it is new)."""
        account, created = result
        await ownership.deliver(account, SyncNow("connect", reconnect=not created), start=True)
        fresh = await blocking(lambda: service.db.account(account.id))
        return service.account_status(fresh or account), created

    async def connect(request: web.Request) -> web.Response:
        user_id = user_of(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object with a provider field")
        name = service.provider_name(body.get("provider"))
        choices = SyncChoices.parse(body["sync"]) if "sync" in body else None
        fields = {k: v for k, v in body.items() if k not in ("provider", "sync")}
        with slots.hold(user_id):
            result = await provider_call(lambda: service.connect_direct(user_id, name, fields, choices))
            if result is None:
                flow = await provider_call(lambda: service.begin_oauth(user_id, name, choices))
                return json_response(flow)
        status, created = await connected(result)
        return json_response({"account": status}, status=201 if created else 200)

    async def start(request: web.Request) -> web.StreamResponse:
        flows = request.query.getall("flow", [])
        try:
            if len(flows) != 1 or not flows[0]:
                raise BadRequest("the connect link needs exactly one flow parameter", code="INVALID_STATE")
            payload = service.verified_state(flows[0])
            elsewhere = await at_home(request, payload)
            if elsewhere is not None:
                return elsewhere
            browser = secrets.token_urlsafe(32)
            url = await blocking(lambda: service.start_oauth(payload, browser))
        except HTTPError as exc:
            return app_redirect({"status": "error", "code": exc.code, "message": exc.message})
        response = web.Response(status=302, headers={hdrs.LOCATION: url, **NO_LEAKS})
        cookies.bind(response, payload["n"], browser)
        return response

    async def at_home(request: web.Request, payload: Mapping[str, Any]) -> web.StreamResponse | None:
        """Cluster mode: the flow's state lives on its user's node (mail.db's OAuthState), which a
        load balancer may not have sent the browser to: the answer of that node."""
        home = rt.stash.get(USER_HOME)
        return None if home is None else await home.at_home(request, str(payload["u"]))

    async def callback(request: web.Request) -> web.StreamResponse:
        try:
            elsewhere = await at_home(request, callback_query(request.query)[0])
        except HTTPError:
            elsewhere = None  # a bad state or code: answered here, as anywhere
        if elsewhere is not None:
            return elsewhere
        if hdrs.AUTHORIZATION in request.headers:
            # A front end that receives the redirect itself forwards code and state with its
            # own token: the flow must belong to that very user, and the answer is JSON.
            caller = rt.stash[AUTHENTICATOR].authenticate(request.headers[hdrs.AUTHORIZATION])
            payload, code = callback_query(request.query)
            status, created = await complete(payload, code, caller=caller.id, browser=None)
            return json_response({"account": status}, status=201 if created else 200)
        payload = None
        try:
            payload, code = callback_query(request.query)
            status, created = await complete(payload, code, caller=None, browser=cookies.value(request, payload["n"]))
        except HTTPError as exc:
            response = app_redirect({"status": "error", "code": exc.code, "message": exc.message})
        else:
            response = app_redirect(
                {"status": "connected", "account": status["account"], "provider": status["provider"],
                 "reconnected": "false" if created else "true"}
            )
        if payload is not None:
            cookies.clear(response, payload["n"])  # used up or refused: this flow is over
        return response

    def callback_query(query: Mapping[str, str]) -> tuple[dict[str, Any], str]:
        """The verified state payload and the code of a callback; 400 naming what is wrong."""
        if "error" in query:
            # The user declined, or the provider refused the request: nothing to store.
            detail = query.get("error_description") or query["error"]
            raise BadRequest(f"the provider did not authorise the connection: {detail}", code="OAUTH_DENIED")
        missing = [name for name in ("state", "code") if not query.get(name)]
        if missing:
            raise BadRequest(f"missing query parameter(s): {', '.join(missing)}")
        return service.verified_state(query["state"]), query["code"]

    async def complete(
        payload: dict[str, Any], code: str, *, caller: str | None, browser: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Use up the flow (bound to this browser or caller), redeem the code; (account status, new?)."""
        with slots.hold(payload["u"]):
            choices = await blocking(lambda: service.claim_flow(payload, browser=browser, caller=caller))
            result = await provider_call(lambda: service.finish_oauth(payload, code, choices))
        return await connected(result)

    def app_redirect(params: Mapping[str, str]) -> web.Response:
        """Send the browser on to the app (or brain's result page) with the outcome in the query."""
        app_url = urlsplit(service.app_redirect_url)
        query = urlencode(parse_qsl(app_url.query) + [(k, v[:300]) for k, v in params.items()])
        location = urlunsplit((app_url.scheme, app_url.netloc, app_url.path, query, ""))
        return web.Response(status=302, headers={hdrs.LOCATION: location, **NO_LEAKS})

    async def result(request: web.Request) -> web.Response:
        return web.Response(text=result_page(request.query), content_type="text/html", headers=RESULT_HEADERS)

    @scope("mail:read")
    async def status(request: web.Request) -> web.Response:
        user_id = user_of(request)
        accounts = await blocking(lambda: service.status(user_id))
        cache = await blocking(lambda: downloads.usage(user_id))
        return json_response({"accounts": accounts, "attachment_cache": cache})

    async def disconnect(request: web.Request) -> web.Response:
        user_id = user_of(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object with an account field")
        account = await blocking(lambda: service.owned_account(user_id, body.get("account")))
        # Stop first (wherever it syncs): a page in flight finishes before the credentials disappear.
        await ownership.stop(account)
        revocation = await provider_call(lambda: service.disconnect(account))
        fresh = await blocking(lambda: service.db.account(account.id))
        return json_response({
            "account": service.account_status(fresh or account),
            "events_kept": True,
            "revocation": {"revoked": revocation.revoked, "detail": revocation.detail},
        })

    async def tell(account: Account, message: SyncNow) -> bool:
        """Have the account's actor take ``message`` (starting it if it is not running); False if
        the account cannot sync (disconnected, needs re-authorisation)."""
        return await ownership.deliver(account, message, start=account.state not in States.STOPPED)

    async def change(request: web.Request) -> web.Response:
        user_id = user_of(request)
        account = await blocking(lambda: service.owned_account(user_id, request.match_info["account"]))
        body = await read_json(request)
        choices = SyncChoices.parse(body, base=SyncChoices.from_json(account.settings), field="body")
        fresh = await blocking(lambda: service.choose(account, choices))
        # A fresh engine reads the new choices (and starts a resync or a backfill if they ask for one).
        await tell(fresh, SyncNow("choices changed", reconnect=True))
        return json_response({"account": await blocking(lambda: service.account_status(fresh))})

    async def sync_now(request: web.Request) -> web.Response:
        user_id = user_of(request)
        account = await blocking(lambda: service.owned_account(user_id, request.match_info["account"]))
        if not await tell(account, SyncNow("asked for")):
            raise Conflict(
                f"account {account.id} is {account.state}: connect it again to sync", code="ACCOUNT_NOT_SYNCING"
            )
        fresh = await blocking(lambda: service.db.account(account.id))
        return json_response({"account": await blocking(lambda: service.account_status(fresh or account))}, status=202)

    @scope("mail:read")
    async def attachment(request: web.Request) -> web.StreamResponse:
        user_id = user_of(request)
        message_id, attachment_id = request.match_info["message"], request.match_info["attachment"]
        account_id = request.query.get("account")
        download = await download_call(lambda: downloads.open(user_id, message_id, attachment_id, account_id))
        try:
            response = web.StreamResponse(headers={
                hdrs.CONTENT_TYPE: download.mime_type,
                hdrs.CONTENT_DISPOSITION: content_disposition(download.filename),
                # Served from the API's origin: never rendered, never sniffed into something runnable.
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "sandbox; default-src 'none'",
                hdrs.CACHE_CONTROL: "private, no-store",
            })
            if download.size is not None and download.exact:
                response.content_length = download.size  # else chunked: a stated size may be off
            chunk = await download_call(lambda: next(download.chunks, None))
            await response.prepare(request)
            while chunk is not None:
                # One chunk ahead: the download is finished (and cached) before its last bytes go
                # out, so a client that asks again at once finds the copy.
                following = await download_call(lambda: next(download.chunks, None))
                await response.write(chunk)
                chunk = following
            await response.write_eof()
            return response
        except PayloadTooLarge:
            # The provider sent more than it said: the status went out already; cut the body short.
            log.warning("attachment %s of message %s was larger than announced; cut off", attachment_id, message_id)
            raise ConnectionResetError("attachment larger than announced") from None
        finally:
            await download_call(download.close)

    async def push(request: web.Request) -> web.Response:
        name = request.match_info["provider"]
        body = await read_body(request, limit=_PUSH_MAX_BYTES)
        notice = PushRequest(query=dict(request.query), headers=dict(request.headers), body=body)
        reply, accounts = await blocking(lambda: service.push_targets(name, notice))
        for account in accounts:
            with contextlib.suppress(HTTPError):
                await tell(account, SyncNow("push"))
        here = {account.push_key for account in accounts}
        elsewhere = await push_elsewhere(request, name, [target for target in reply.targets if target[0] not in here])
        if elsewhere is not None:
            return elsewhere
        return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)

    async def push_elsewhere(
        request: web.Request, name: str, targets: list[tuple[str, str | None]]
    ) -> web.StreamResponse | None:
        """Cluster mode: the notification sent on, body and all, to the node of each user whose
        account it names (`targets`: those mail.db here lacks) and who is placed on another node;
        a failed send's answer (the provider delivers the notification again), else None."""
        home = rt.stash.get(USER_HOME)
        if home is None or not targets or not home.ready():
            return None
        failed: web.StreamResponse | HTTPError | None = None
        for user_id in sorted(await push_users(rt, name, targets)):
            node = home.node_of_user(user_id)
            if node is None or node == home.node_id:
                continue
            try:
                answer = await home.at_home(request, user_id)  # None: a replay here already
            except HTTPError as exc:
                log.warning("mail push for user %s: could not send it on to node %s: %s", user_id, node, exc.message)
                failed = exc
                continue
            if answer is not None and answer.status >= 500:
                failed = answer
        if isinstance(failed, HTTPError):
            raise failed
        return failed

    components = {"schemas": {**SCHEMAS, "MailConnect": connect_schema(service.registry.names())}}
    return [
        Route("POST", "/mail/connect", connect, PATHS["/mail/connect"]["post"], components=components),
        # Opened by the user's browser: the signed state in `flow` names the user.
        Route("GET", START_PATH, start, PATHS[START_PATH]["get"], public=True),
        # A browser redirect from the provider (or a front end forwarding it with its token).
        Route("GET", CALLBACK_PATH, callback, PATHS[CALLBACK_PATH]["get"], public=True),
        # Where the browser lands when no app URL is configured: says what happened.
        Route("GET", RESULT_PATH, result, PATHS[RESULT_PATH]["get"], public=True),
        Route("GET", "/mail/status", status, PATHS["/mail/status"]["get"]),
        Route("POST", "/mail/disconnect", disconnect, PATHS["/mail/disconnect"]["post"]),
        Route("PATCH", "/mail/accounts/{account}", change, PATHS["/mail/accounts/{account}"]["patch"]),
        Route("POST", "/mail/accounts/{account}/sync", sync_now, PATHS["/mail/accounts/{account}/sync"]["post"]),
        Route(
            "GET", "/mail/messages/{message}/attachments/{attachment}", attachment,
            PATHS["/mail/messages/{message}/attachments/{attachment}"]["get"],
        ),
        # The provider's servers call it: the provider's reading of the request authenticates it.
        Route("POST", "/mail/push/{provider}", push, PATHS["/mail/push/{provider}"]["post"], public=True),
    ]
