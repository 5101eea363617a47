"""Secrets out of what brain shows: URLs in logs, /health, errors, metrics and CLI output.

A configured URL may carry credentials: `nats://user:password@host:4222`, a NATS token as the
user name, `https://user:pass@issuer/`, `?token=...`. What brain shows keeps what an operator
needs to tell servers apart (scheme, host, port, path, the names of the query parameters) and
hides the rest: the userinfo becomes `***`, and so does the value of every query parameter whose
name looks like a secret. A comma-separated server list (a NATS cluster) is redacted URL by URL;
`redact_text` does the same to every URL inside a message (an exception's text, say).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"
# A query parameter is secret when its name contains any of these (compared in lower case).
_SECRET_NAME_PARTS = (
    "pass", "pwd", "secret", "token", "key", "auth", "sig", "cred", "session", "code", "state", "jwt", "nonce",
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# A URL inside free text: a scheme, then everything up to whitespace or a quote or bracket.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{}]+")


def _secret_name(name: str) -> bool:
    low = unquote(name).lower()
    return any(part in low for part in _SECRET_NAME_PARTS)


def _redact_query(query: str) -> str:
    items = []
    for item in query.split("&"):
        name, eq, _value = item.partition("=")
        items.append(f"{name}={MASK}" if eq and _secret_name(name) else item)
    return "&".join(items)


def _redact_one(url: str) -> str:
    scheme_match = _SCHEME.match(url)
    scheme = scheme_match.group(0) if scheme_match else ""
    rest = url[len(scheme):]
    # The authority ends at the first '/', '?' or '#'; an '@' inside it ends the userinfo
    # (the last '@': a password may contain one, a host cannot).
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        authority = f"{MASK}@{authority.rpartition('@')[2]}"
    tail, hash_, fragment = tail.partition("#")
    path, question, query = tail.partition("?")
    if question:
        query = _redact_query(query)
    if hash_ and "=" in fragment:  # OAuth implicit flows put tokens in the fragment
        fragment = _redact_query(fragment)
    return f"{scheme}{authority}{path}{question}{query}{hash_}{fragment}"


def redact_url(url: str) -> str:
    """The URL (or comma-separated URL list) with its userinfo and secret query values masked."""
    return ",".join(_redact_one(part) for part in url.split(","))


def redact_text(text: str) -> str:
    """A message with every URL in it redacted (`redact_url`)."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
