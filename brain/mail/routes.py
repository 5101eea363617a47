"""The mail routes on the API role: connect (OAuth or direct), the OAuth callback, status and
disconnect.

Every route but the callback runs behind the API's JWT guard and acts for the token's
user only. The callback is reached by a browser redirect from the provider and carries no
token: its user comes from the signed, single-use `state` minted by `POST /mail/connect`. A
front end that takes the redirect itself and forwards `code` and `state` with its bearer
token gets the stronger check: the state must have been minted for that same user.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import pykka
from aiohttp import hdrs, web

from brain.actors import bridge
from brain.actors.supervisor import ChildAlreadyStarted, ChildStartError
from brain.api import token_verifier
from brain.api.openapi import add_paths
from brain.api.routes import current_user, public, scope
from brain.errors import BadRequest, Forbidden, ServiceUnavailable, TooManyRequests
from brain.mail import openapi
from brain.mail.db import Account
from brain.mail.service import MailService, child_id
from brain.mail.sync import SyncNow
from brain.web import add_route, json_response, read_json

if TYPE_CHECKING:
    from brain.runtime import Runtime

__all__ = ["CALLBACK_PATH", "add_routes"]

log = logging.getLogger("brain.mail")

CALLBACK_PATH = "/mail/oauth/callback"
MAIL_SUP = "data_sup/mail"
# What a client refused for too many connects is told to wait: a connect that hangs lasts the
# provider's timeout, one that works a second or two.
CONNECT_RETRY_AFTER = 5.0

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


def add_routes(app: web.Application, rt: Runtime, service: MailService) -> None:
    """Register the mail routes on the API application (each behind its bearer-token guard)."""
    add_paths("api", openapi.PATHS, openapi.SCHEMAS)

    def user_of(request: web.Request) -> str:
        return current_user(request).id

    slots = ConnectSlots(rt.settings.mail.connects_per_user)

    async def blocking(fn: Callable[[], T]) -> T:
        """mail.db work, in the loop's executor."""
        return await asyncio.get_running_loop().run_in_executor(None, fn)

    async def provider_call(user_id: str, fn: Callable[[], T]) -> T:
        """Work that talks to a provider: on the connect pool, within the user's connect slots."""
        with slots.hold(user_id):
            return await asyncio.get_running_loop().run_in_executor(service.connect_pool, fn)

    async def stop_connect_pool(_app: web.Application) -> None:
        # Connects still waiting for a thread are dropped; running ones end with their provider timeout.
        service.connect_pool.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(stop_connect_pool)

    async def start_sync(account: Account, *, reconnect: bool) -> None:
        """Start the account's actor, or tell the running one to sync now."""
        sup = await rt.alookup(MAIL_SUP)
        if sup is None:
            raise ServiceUnavailable("mail sync is not running")
        try:
            await bridge.ask(sup.proxy().start_child(service.child_spec(account)))
        except ChildAlreadyStarted as exc:
            if exc.ref is not None:
                try:
                    exc.ref.tell(SyncNow("connect", reconnect=reconnect))
                except pykka.ActorDeadError:
                    pass
        except ChildStartError:
            log.exception("mail account %s: sync actor did not start", account.id)
            raise ServiceUnavailable("mail sync could not be started; try again") from None

    async def connected(result: tuple[Account, bool]) -> web.Response:
        account, created = result
        await start_sync(account, reconnect=not created)
        fresh = await blocking(lambda: service.db.account(account.id))
        return json_response({"account": (fresh or account).status()}, status=201 if created else 200)

    async def connect(request: web.Request) -> web.Response:
        user_id = user_of(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object with a provider field")
        name = service.provider_name(body.get("provider"))
        fields = {k: v for k, v in body.items() if k != "provider"}
        result = await provider_call(user_id, lambda: service.connect_direct(user_id, name, fields))
        if result is not None:
            return await connected(result)
        flow = await provider_call(user_id, lambda: service.begin_oauth(user_id, name))
        return json_response(flow)

    @public  # a browser redirect from the provider: the signed state names the user
    async def callback(request: web.Request) -> web.Response:
        query = request.query
        if "error" in query:
            # The user declined, or the provider refused the request: nothing to store.
            detail = query.get("error_description") or query["error"]
            raise BadRequest(f"the provider did not authorise the connection: {detail}", code="OAUTH_DENIED")
        missing = [name for name in ("state", "code") if not query.get(name)]
        if missing:
            raise BadRequest(f"missing query parameter(s): {', '.join(missing)}")
        payload = await blocking(lambda: service.check_state(query["state"]))
        if hdrs.AUTHORIZATION in request.headers:
            # A front end that receives the redirect itself forwards code and state with its
            # own token: then the state must belong to that very user (no login CSRF).
            caller = token_verifier(rt).authenticate(request.headers[hdrs.AUTHORIZATION])
            if caller.id != payload["u"]:
                raise Forbidden("this authorization was started by another user", code="STATE_USER_MISMATCH")
        result = await provider_call(payload["u"], lambda: service.finish_oauth(payload["u"], payload["p"], query["code"]))
        return await connected(result)

    @scope("mail:read")
    async def status(request: web.Request) -> web.Response:
        user_id = user_of(request)
        accounts = await blocking(lambda: service.status(user_id))
        return json_response({"accounts": accounts})

    async def disconnect(request: web.Request) -> web.Response:
        user_id = user_of(request)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object with an account field")
        account = await blocking(lambda: service.owned_account(user_id, body.get("account")))
        sup = await rt.alookup(MAIL_SUP)
        if sup is not None:
            # Stop first: a page in flight finishes before the credentials disappear.
            await bridge.ask(sup.proxy().terminate_child(child_id(account)))
        await blocking(lambda: service.db.disconnect(account.id))
        fresh = await blocking(lambda: service.db.account(account.id))
        return json_response({"account": (fresh or account).status(), "events_kept": True})

    add_route(app, "POST", "/mail/connect", connect)
    add_route(app, "GET", CALLBACK_PATH, callback)
    add_route(app, "GET", "/mail/status", status)
    add_route(app, "POST", "/mail/disconnect", disconnect)
