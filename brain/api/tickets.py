"""Stream tickets: a short-lived, single-use stand-in for a bearer credential, for `EventSource`.

A browser's `EventSource` cannot send an `Authorization` header, and a JWT in a URL ends up in
access logs, proxies and browser history for as long as it is valid. So a client with a token
asks `POST /events/stream/ticket` for a ticket and opens `GET /events/stream?ticket=...`: the
ticket is good for one stream, for `api.stream_ticket_seconds`, and the stream it opens ends
when the credential it was issued for would have expired.

A ticket is self-contained (user, credential expiry, its own expiry and a nonce, MAC'd with a
key derived from the server secret), so any process of the same deployment can check it; what
makes it single-use is the set of nonces this process has seen, kept until they expire. With
several processes that set must be shared (docs/live.md).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

from brain.api.verifier import TokenUser
from brain.clock import steady_time
from brain.errors import InvalidToken

# Far more tickets than a process can be asked for within a ticket's lifetime at sane request rates;
# past it the oldest nonces are forgotten (a replay of those would still fail on expiry soon).
MAX_SPENT = 200_000
MAX_TICKET_LENGTH = 300


class StreamTickets:
    """Issues and redeems stream tickets (see the module docstring); lives on the event loop."""

    def __init__(self, secret: bytes, *, ttl: float, is_revoked: Callable[[str], bool]) -> None:
        self._key = hmac.new(secret, b"brain.api.stream-ticket", hashlib.sha256).digest()
        self.ttl = ttl
        self._is_revoked = is_revoked
        self._spent: OrderedDict[str, float] = OrderedDict()  # nonce -> ticket expiry, oldest first
        self.issued = 0
        self.redeemed = 0

    def issue(self, user: TokenUser) -> tuple[str, float]:
        """A new ticket for this caller, and when it expires (epoch seconds)."""
        # The steady clock (brain.clock): a ticket issued before the wall clock steps back does not
        # live on for the length of the step, nor does a spent nonce's memory end before its ticket does.
        expires = steady_time() + self.ttl
        credential_expiry = user.exp if math.isfinite(user.exp) else None
        body = _b64(json.dumps(
            {"u": user.id, "x": credential_expiry, "e": expires, "n": secrets.token_urlsafe(12)},
            separators=(",", ":"),
        ).encode())
        self.issued += 1
        return f"{body}.{self._mac(body)}", expires

    def redeem(self, ticket: str) -> TokenUser:
        """The caller a genuine, unexpired, unused ticket stands for; InvalidToken otherwise."""
        body, dot, mac = ticket.partition(".")
        if not dot or len(ticket) > MAX_TICKET_LENGTH or not ticket.isascii():
            raise InvalidToken("not a stream ticket")
        if not hmac.compare_digest(mac, self._mac(body)):
            raise InvalidToken("not a stream ticket")
        try:
            data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            user_id, credential_expiry, expires, nonce = data["u"], data["x"], data["e"], data["n"]
        except (ValueError, TypeError, KeyError, binascii.Error):
            raise InvalidToken("not a stream ticket") from None
        now = steady_time()
        self._forget_expired(now)
        if expires <= now:
            raise InvalidToken("the stream ticket has expired; ask for a new one")
        if nonce in self._spent:
            raise InvalidToken("the stream ticket was used already; ask for a new one")
        if self._is_revoked(user_id):
            raise InvalidToken("the account was deleted")
        # The credential's expiry is the issuer's figure: judged by the wall clock, as the verifier does.
        if credential_expiry is not None and credential_expiry <= time.time():
            raise InvalidToken("the token the ticket was issued for has expired")
        self._spent[nonce] = expires
        if len(self._spent) > MAX_SPENT:
            self._spent.popitem(last=False)
        self.redeemed += 1
        return TokenUser(id=user_id, claims={}, exp=math.inf if credential_expiry is None else credential_expiry)

    def _forget_expired(self, now: float) -> None:
        spent = self._spent
        while spent:
            nonce, expires = next(iter(spent.items()))
            if expires > now:
                return
            del spent[nonce]

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:24])

    def stats(self) -> dict[str, int]:
        """Figures for /health."""
        return {"issued": self.issued, "redeemed": self.redeemed, "spent_remembered": len(self._spent)}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
