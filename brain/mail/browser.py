"""What an OAuth flow sets and shows in the user's browser: the cookie that binds the flow to
the browser, the headers of the flow's redirects, and brain's own result page.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from urllib.parse import urlsplit

from aiohttp import hdrs, web

__all__ = ["NO_LEAKS", "RESULT_HEADERS", "FlowCookies", "result_page"]

# The OAuth redirects carry states and codes: no cache keeps them, no Referer repeats them.
NO_LEAKS = {hdrs.CACHE_CONTROL: "no-store", "Referrer-Policy": "no-referrer"}
RESULT_HEADERS = {
    **NO_LEAKS,
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


class FlowCookies:
    """The cookie that binds an OAuth flow to the browser that opened its connect link.

    One cookie per flow (named after its nonce), so two flows started in one browser do not
    undo each other. Over https it is `__Host-` prefixed (Secure, Path=/, no Domain: no other
    host or plain-http page can plant or overwrite it); over plain http (development) it is
    scoped to the callback's path instead.
    """

    def __init__(self, api_public_url: str, redirect_uri: str, max_age: float) -> None:
        self.secure = api_public_url.startswith("https://")
        self.prefix = "__Host-" if self.secure else ""
        self.path = "/" if self.secure else (urlsplit(redirect_uri).path or "/")
        self.max_age = int(max_age)

    def name(self, nonce: str) -> str:
        """The cookie name of the flow with this nonce."""
        return f"{self.prefix}brain-mail-flow-{nonce}"

    def bind(self, response: web.StreamResponse, nonce: str, value: str) -> None:
        """Set the flow's cookie on the connect link's redirect."""
        response.set_cookie(
            self.name(nonce), value, max_age=self.max_age, path=self.path, secure=self.secure or None,
            httponly=True, samesite="Lax",
        )

    def value(self, request: web.Request, nonce: str | None) -> str | None:
        """The flow's cookie as the callback's browser sent it, if it did."""
        return None if nonce is None else request.cookies.get(self.name(nonce))

    def clear(self, response: web.StreamResponse, nonce: str) -> None:
        """Tell the browser to forget the flow's cookie."""
        response.del_cookie(self.name(nonce), path=self.path, secure=self.secure or None, httponly=True, samesite="Lax")


_OUTCOMES = {
    "connected": ("Mailbox connected", "Its mail is being synced into your brain. You can close this window."),
    "error": ("The mailbox was not connected", "Nothing was connected. Start again from the app."),
}


def result_page(query: Mapping[str, str]) -> str:
    """brain's own page for the end of an OAuth flow; every value shown is escaped."""
    title, text = _OUTCOMES.get(query.get("status", ""), ("Unknown outcome", "Start again from the app."))
    details = "".join(
        f"<dt>{name}</dt><dd>{html.escape(query[name][:300])}</dd>"
        for name in ("code", "message", "provider", "account")
        if query.get(name)
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>brain: '
        f"{title}</title></head><body><h1>{title}</h1><p>{text}</p><dl>{details}</dl></body></html>"
    )
