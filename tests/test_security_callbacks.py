"""Reset-token theft through `callbackURL` / `redirectTo`, tried as an attacker would.

The attack: request a password reset for the victim with a `redirectTo` that Python reads as a
trusted host but a browser reads as the attacker's (`https://evil.example\\@app.example.com/`);
the victim opens the genuine mail, and `GET /api/auth/reset-password/{token}` sends their
browser, token attached, to the attacker. Every URL of the table goes to the real server over
HTTP, through every endpoint that takes a callback. What a browser would make of each URL is
not our guess: node's WHATWG `URL` (the parser browsers implement) reads the table, and any URL
that a browser would take to an untrusted origin, or that it reads differently from Python's
`urllib`, must be refused; an accepted one must lead where the browser would have gone.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from tests.support import BrainServer
from tests.test_auth_email import Inbox, get, link_in, mail_config, request_reset, smtp  # noqa: F401
from tests.test_auth_helpers import PASSWORD, bearer, sign_in, sign_up, unique_email

APP = "https://app.example.com"
WILDCARD = "https://*.trusted.example"
PORT = "{port}"  # stands for the server's auth port (its own origin is trusted), known once it runs
JS_DIR = Path(__file__).parent / "js"

# URLs that must be refused with 403 INVALID_CALLBACK_URL wherever a callback is accepted.
HOSTILE = [
    "https://evil.example\\@app.example.com/reset",  # the reported theft: browsers read \ as /
    "https://evil.example%5c@app.example.com/reset",
    "https://evil.example%5C@app.example.com/reset",
    "https://app.example.com\\@evil.example/reset",
    "https://evil.example\\.trusted.example/reset",  # urllib: a host under the wildcard
    "https://app.example.com/reset\\",
    "/\\evil.example/reset",
    "\\\\evil.example/reset",
    "\\/evil.example/reset",
    "/%5cevil.example/reset",
    "/%5Cevil.example/reset",
    "//evil.example/reset",
    "///evil.example/reset",
    " //evil.example/reset",
    "https:evil.example/reset",
    "https:/evil.example/reset",
    "https:///evil.example/reset",
    "http:\\\\evil.example/reset",
    "https://evil.example/reset",
    "https://app.example.com.evil.example/reset",
    "https://app.example.com@evil.example/reset",
    "https://user:pass@app.example.com/reset",  # userinfo, even before a trusted host
    "https://evil.example%2f@app.example.com/reset",
    "https://evil.example#@app.example.com/reset",
    "https://evil.example?@app.example.com/reset",
    "https://app.example.com:443@evil.example/reset",
    "https://[::1]@evil.example/reset",
    "https://evil.example%40app.example.com/reset",
    "https://app.example.com\t.evil.example/reset",
    "https://app.example.com\n.evil.example/reset",
    "https://evil.example\r\n@app.example.com/reset",
    "/\t/evil.example/reset",
    "/\n/evil.example/reset",
    "/\r/evil.example/reset",
    "/reset\r\nSet-Cookie: a=b",
    "/reset%0d%0aSet-Cookie:%20a=b",
    "/reset%00",
    "https://app.example.com%00.evil.example/reset",
    "https://app.example.com/\x7f",
    "https://app.example.com/\x1b[2J",
    "javascript:alert(document.domain)",
    "JaVaScRiPt:alert(1)",
    "java\tscript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "ftp://app.example.com/reset",
    "https://app\u3002example\u3002com/reset",  # ideographic full stops: IDNA maps them to dots
    "https://app.example.com\uff0eevil.example/reset",  # a fullwidth full stop
    "https://\uff41\uff50\uff50.example.com/reset",  # fullwidth letters
    "https://app.example.com\u2024evil.example/reset",  # one dot leader
    "https://app%2eexample%2ecom/reset",  # WHATWG percent-decodes hosts
    "https://sub.trusted.example.evil.example/reset",
    "https://evil.example/.trusted.example",
    "https://app.example.com./reset",
    "https://app.example.com:99999/reset",
    "https://app.example.com:0/reset",
    "http://2130706433:{port}/reset",  # the server's own origin, spelled as WHATWG numbers
    "http://0x7f.1:{port}/reset",
    "http://127.1:{port}/reset",
    "http://0177.0.0.1:{port}/reset",
    "https://app.example.com/caf\u00e9",  # raw non-ASCII: a client percent-encodes it first
    "reset",
    "./reset",
    "?token=x",
    "#x",
]

# Accepted URLs and the callback they become (rebuilt from their parts, never echoed).
SAFE = [
    ("https://app.example.com/reset", "https://app.example.com/reset"),
    ("HTTPS://App.Example.COM:443/reset?next=%2Fhome#top", "https://app.example.com/reset?next=%2Fhome#top"),
    ("https://app.example.com", "https://app.example.com/"),
    ("https://app.example.com/a\"b<c>`{}", "https://app.example.com/a%22b%3Cc%3E%60%7B%7D"),
    ("https://app.example.com/caf%C3%A9", "https://app.example.com/caf%C3%A9"),
    ("https://x.trusted.example/done", "https://x.trusted.example/done"),
    ("http://127.0.0.1:{port}/done", "http://127.0.0.1:{port}/done"),
    ("/reset", "/reset"),
    ("/reset?from=mail", "/reset?from=mail"),
    ("/", "/"),
]


@pytest.fixture(scope="module")
def server(smtp: tuple[Inbox, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:  # noqa: F811
    config = mail_config(smtp[1])
    config["auth"]["trusted_origins"] = [APP, WILDCARD]
    # GitHub's fixed endpoints: starting a flow needs no network (nothing here completes one).
    config["social"] = {"providers": ["github"], "github": {"client_id": "id", "client_secret": "secret"}}
    server = BrainServer(Path(tmp_path_factory.mktemp("callbacks")) / "brain", config=config)
    with server:
        yield server


@pytest.fixture(scope="module")
def reset_link(server: BrainServer, smtp: tuple[Inbox, int]) -> str:  # noqa: F811
    """A genuine, unused reset link of a real user (its callbackURL cut off)."""
    address = unique_email("victim")
    assert sign_up(server, address).status_code == 200
    assert request_reset(server, address).status_code == 200
    return link_in(smtp[0].wait(address)).split("?", 1)[0]


@pytest.fixture(scope="module")
def session(server: BrainServer) -> str:
    """A signed-in user's session token (delete-user needs one)."""
    r = sign_up(server, unique_email("deleter"))
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def whatwg(inputs: list[str], base: str) -> list[dict[str, str]]:
    """How a browser reads each input as a link on the page at base (node's WHATWG URL)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the callback tests check URLs against its WHATWG parser")
    out = subprocess.run(
        [node, "whatwg_url.mjs"], cwd=JS_DIR, input=json.dumps({"base": base, "inputs": inputs}),
        capture_output=True, text=True, timeout=60, check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def python_origin(url: str, base: str) -> str | None:
    """The origin Python's urllib reads in url on the page at base (what brain used to trust)."""
    try:
        parts = urlsplit(urljoin(base, url))
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{parts.hostname.lower()}" + (f":{port}" if port and port != default else "")


def trusted(origin: str | None, server: BrainServer) -> bool:
    """The test's own reading of the server's trusted origins (APP, the wildcard, itself)."""
    return origin in (APP, server.auth_url) or bool(origin and re.fullmatch(r"https://[a-z0-9-]+\.trusted\.example", origin))


def with_param(url: str, name: str, value: str) -> str:
    """url with one more query parameter, before any fragment."""
    base, hash_, fragment = url.partition("#")
    return f"{base}{'&' if '?' in base else '?'}{name}={value}{hash_}{fragment}"


def social(server: BrainServer, path: str, session: str | None = None, **body: str) -> requests.Response:
    """Start a GitHub sign-in (or, with a session, a link) flow."""
    return requests.post(f"{server.auth_url}/api/auth/{path}", json={"provider": "github", "disableRedirect": True, **body},
                         headers=bearer(session) if session else {}, timeout=15)


def expect_refused(r: requests.Response, what: str) -> None:
    assert r.status_code == 403, (what, r.status_code, r.headers.get("Location"), r.text)
    assert r.json() == {"message": "Invalid callbackURL", "code": "INVALID_CALLBACK_URL"}, what


@pytest.mark.parametrize("url", HOSTILE, ids=[ascii(u) for u in HOSTILE])
def test_hostile_callbacks_are_refused_everywhere(server: BrainServer, reset_link: str, session: str, url: str) -> None:
    url = url.replace(PORT, str(server.auth_port))
    expect_refused(request_reset(server, unique_email("target"), redirectTo=url), "request-password-reset")
    token = reset_link.rsplit("/", 1)[1]
    r = get(reset_link, params={"callbackURL": url})
    expect_refused(r, "reset-password/{token}")
    r = get(f"{server.auth_url}/api/auth/verify-email", params={"token": token, "callbackURL": url})
    expect_refused(r, "verify-email")
    r = requests.post(f"{server.auth_url}/api/auth/send-verification-email", json={"email": unique_email(), "callbackURL": url}, timeout=15)
    expect_refused(r, "send-verification-email")
    expect_refused(sign_in(server, unique_email(), extra={"callbackURL": url}), "sign-in")
    expect_refused(sign_up(server, unique_email("never"), callbackURL=url), "sign-up")
    r = requests.post(f"{server.auth_url}/api/auth/delete-user", json={"password": PASSWORD, "callbackURL": url},
                      headers=bearer(session), timeout=15)
    expect_refused(r, "delete-user")
    r = requests.post(f"{server.auth_url}/api/auth/change-email", json={"newEmail": unique_email("moved"), "callbackURL": url},
                      headers=bearer(session), timeout=15)
    expect_refused(r, "change-email")
    for field in ("callbackURL", "errorCallbackURL", "newUserCallbackURL"):
        expect_refused(social(server, "sign-in/social", **{field: url}), f"sign-in/social {field}")
        expect_refused(social(server, "link-social", session, **{field: url}), f"link-social {field}")


def test_the_table_covers_what_browsers_and_urllib_read_differently(server: BrainServer, reset_link: str) -> None:
    """Every URL a browser would take off the trusted origins, or read unlike urllib, is in HOSTILE."""
    hostile = [u.replace(PORT, str(server.auth_port)) for u in HOSTILE]
    safe = [u.replace(PORT, str(server.auth_port)) for u, _ in SAFE]
    readings = whatwg(hostile + safe, reset_link)
    dangerous = [
        url for url, seen in zip(hostile + safe, readings, strict=True)
        if "error" not in seen and (not trusted(seen["origin"], server) or seen["origin"] != python_origin(url, reset_link))
    ]
    assert dangerous and set(dangerous) <= set(hostile), set(dangerous) - set(hostile)
    # The reported URL is the confusion itself: urllib trusts it, a browser leaves for evil.example.
    assert python_origin(HOSTILE[0], reset_link) == APP
    assert readings[0]["origin"] == "https://evil.example"


@pytest.mark.parametrize("url, rebuilt", SAFE, ids=[u for u, _ in SAFE])
def test_safe_callbacks_redirect_where_the_browser_would_go(server: BrainServer, reset_link: str, url: str, rebuilt: str) -> None:
    url, rebuilt = url.replace(PORT, str(server.auth_port)), rebuilt.replace(PORT, str(server.auth_port))
    token = reset_link.rsplit("/", 1)[1]
    r = get(reset_link, params={"callbackURL": url})
    assert r.status_code == 302, r.text
    location = r.headers["Location"]
    assert location == with_param(urljoin(server.auth_url + "/", rebuilt), "token", token)
    r = get(f"{server.auth_url}/api/auth/verify-email", params={"token": "not-a-token", "callbackURL": url})
    assert r.status_code == 302 and r.headers["Location"] == with_param(rebuilt, "error", "INVALID_TOKEN")
    r = sign_in(server, unique_email(), extra={"callbackURL": url})
    assert r.status_code == 401 and r.json()["code"] == "INVALID_EMAIL_OR_PASSWORD"
    assert request_reset(server, unique_email("target"), redirectTo=url).status_code == 200
    r = social(server, "sign-in/social", callbackURL=url, errorCallbackURL=url, newUserCallbackURL=url)
    assert r.status_code == 200 and r.json()["url"].startswith("https://github.com/login/oauth/authorize?"), r.text
    # The browser follows the rebuilt Location to the origin it would have read in the input.
    asked, followed = whatwg([url, location], reset_link)
    assert followed["origin"] == asked["origin"] and trusted(followed["origin"], server), (asked, followed)


def test_sign_in_answers_the_rebuilt_callback(server: BrainServer) -> None:
    """Better Auth's client navigates to the sign-in answer's `url`: it is the rebuilt one too."""
    address = unique_email("signin")
    assert sign_up(server, address).status_code == 200
    r = sign_in(server, address, extra={"callbackURL": "HTTPS://APP.example.com:443/home?x=<y>"})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["redirect"] is True and body["url"] == "https://app.example.com/home?x=%3Cy%3E"
