"""Origins: what a browser's `Origin` header means, and which origins a role trusts.

Both HTTP roles answer browsers: the auth role (Better Auth's trusted origins, CORS for its
client) and the API role (CORS for browser apps). They judge an origin the same way, here: the
origin of a URL as browsers serialise it, and `TrustedOrigins`, a configured list of exact
origins or `https://*.example.com` patterns.

A `callbackURL`/`redirectTo` decides where a browser is sent with a reset token, so it must mean
the same place to every parser on the way: Python's `urlsplit` here, the browser's WHATWG
parser there. They disagree on `\\`, tabs and newlines (stripped by WHATWG), userinfo, missing
slashes (`https:evil`), percent-escapes and numbers in hosts, and non-ASCII hosts (IDNA
mapping). `TrustedOrigins.safe_callback` therefore accepts only a narrow form that both read
alike, and the redirect is rebuilt from the parsed parts, never echoed.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import quote, urlsplit

__all__ = ["TrustedOrigins", "origin_of"]

_DEFAULT_PORTS = {"http": 80, "https": 443}

# An absolute callback: scheme, "://", authority, and the rest from the first / ? or #.
_ABSOLUTE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<rest>.*)", re.DOTALL)
# host[:port] and nothing else: no userinfo, no percent-escapes, ASCII letters, digits, - and _
# in non-empty labels, or a bracketed IPv6 address.
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)(?::(?P<port>[0-9]{1,5}))?")
# WHATWG reads a host whose last label is a number (decimal, or 0x hex) as an IPv4 address.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9A-Fa-f]*")
# A percent-escape of a backslash or a control character, or a % that starts no escape.
_BAD_ESCAPE = re.compile(r"%(?:5[cC]|[01][0-9A-Fa-f]|7[fF]|(?![0-9A-Fa-f]{2}))")
# What stays literal when a callback's parts are re-encoded (RFC 3986 sub-delims, : @ / and
# existing escapes); anything else (" < > ` { } | ^ [ ] ...) is percent-encoded.
_SAFE_PATH = "/:@!$&'()*+,;=%"
_SAFE_QUERY = _SAFE_PATH + "?"


def origin_of(url: str) -> str | None:
    """scheme://host[:port] of a URL, lower-cased; None if it has no scheme or host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = _canonical_host(parts.hostname)
    return _origin(parts.scheme, host, port) if host is not None else None


def _origin(scheme: str, host: str, port: int | None) -> str:
    """The serialised origin, without the scheme's default port (as browsers send it)."""
    return f"{scheme}://{host}" + (f":{port}" if port and port != _DEFAULT_PORTS[scheme] else "")


def _canonical_host(host: str) -> str | None:
    """The host as WHATWG serialises it, when that is unambiguous; None when it is not.

    Numbers are where parsers part: WHATWG reads `0x7f.1` or `2130706433` as 127.0.0.1 and
    refuses `app.example.123`, while urlsplit keeps the text. Only canonical dotted quads and
    IPv6 literals (compressed, as WHATWG writes them) pass.
    """
    host = host.lower()
    if host.startswith("["):
        host = host[1:-1]
    if ":" in host:
        try:
            return f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            return None
    if _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        try:
            return host if str(ipaddress.IPv4Address(host)) == host else None
        except ValueError:
            return None
    return host


def _reencoded(target: str) -> str:
    """path?query#fragment with every character outside RFC 3986's safe set percent-encoded."""
    target, hash_, fragment = target.partition("#")
    path, mark, query = target.partition("?")
    return (
        quote(path, safe=_SAFE_PATH)
        + (mark + quote(query, safe=_SAFE_QUERY))
        + (hash_ + quote(fragment, safe=_SAFE_QUERY))
    )


class TrustedOrigins:
    """Matches request origins against the configured list."""

    def __init__(self, own_url: str, configured: Iterable[str]) -> None:
        exact: set[str] = set()
        patterns: list[str] = []
        for entry in (own_url, *configured):
            if "*" in entry:
                patterns.append(entry.strip().lower().rstrip("/"))
                continue
            origin = origin_of(entry)
            if origin:
                exact.add(origin)
        self.exact = frozenset(exact)
        self.patterns = tuple(patterns)

    def __contains__(self, origin: object) -> bool:
        if not isinstance(origin, str):
            return False
        normalized = origin_of(origin)
        if normalized is None:
            return False
        if normalized in self.exact:
            return True
        return any(fnmatch.fnmatchcase(normalized, p) for p in self.patterns)

    def safe_callback(self, url: str) -> str | None:
        """The callback rebuilt from its parsed parts, or None unless it is safe to redirect to.

        Safe: printable ASCII without `\\` (nor `%5c`, nor escaped control characters), and
        either a clean path (`/` alone, or `/` then neither `/` nor `\\`) or an http(s) URL
        `scheme://host[:port]...` without userinfo whose origin is trusted.
        """
        if not url or not url.isascii() or not url.isprintable() or " " in url or "\\" in url:
            return None
        if _BAD_ESCAPE.search(url):
            return None
        if url.startswith("/"):
            return _reencoded(url) if url[1:2] != "/" else None
        absolute = _ABSOLUTE.fullmatch(url)
        if absolute is None:
            return None  # `https:evil`, `javascript:...`, `//evil`, a bare word...
        scheme = absolute["scheme"].lower()
        authority = _HOST_PORT.fullmatch(absolute["authority"])
        if scheme not in _DEFAULT_PORTS or authority is None:
            return None
        host = _canonical_host(authority["host"])
        port = int(authority["port"]) if authority["port"] else None
        if host is None or port == 0 or (port is not None and port > 65535):
            return None
        origin = _origin(scheme, host, port)
        if origin not in self:
            return None
        rest = absolute["rest"]
        return origin + _reencoded(rest if rest.startswith("/") else "/" + rest)
