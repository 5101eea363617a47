"""Social sign-in against local fake providers: Better Auth's /sign-in/social -> provider ->
/callback/{provider} flow, linking rules, linked accounts, and the abuse cases (state replay or
from another browser, forged PKCE, id_tokens with a wrong aud/iss/nonce or expired)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from tests.fakes.oidc import FakeOidc
from tests.support import BrainServer
from tests.test_auth_helpers import NO_LIMITS
from tests.test_auth_js import JS_DIR, npm_install

VERIFIED = {"email": "alice@example.com", "email_verified": True, "name": "Alice"}


@pytest.fixture(scope="module")
def idps() -> Iterator[dict[str, FakeOidc]]:
    fakes = {
        "acme": FakeOidc(users={"alice": VERIFIED, "bob": {"email": "bob@example.com", "email_verified": True},
                                "carol": {"email": "carol@example.com", "email_verified": False}}),
        "other": FakeOidc(users={"alice": {**VERIFIED, "sub": "other-alice"}}),
        "microsoft": FakeOidc(issuer="{base}/{tenantid}/v2.0", users={
            "dave": {"email": "dave@example.com", "name": "Dave", "oid": "oid-dave", "tid": "tenant-1",
                     "verified_primary_email": ["dave@example.com"]}}),
        "github": FakeOidc(github=True, users={
            "erin": {"id": 4242, "name": "Erin", "emails": [
                {"email": "erin@example.com", "primary": True, "verified": True}]}}),
    }
    for fake in fakes.values():
        fake.start()
    try:
        yield fakes
    finally:
        for fake in fakes.values():
            fake.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, idps: dict[str, FakeOidc]) -> Iterator[BrainServer]:
    ms = idps["microsoft"]
    config: dict[str, Any] = {
        "auth": NO_LIMITS,
        "social": {
            "providers": ["acme", "other", "microsoft", "github"],
            "trusted_providers": ["acme", "microsoft"],
            "acme": idps["acme"].table(), "other": idps["other"].table(), "github": idps["github"].table(),
            # Microsoft reuses the mail plugin's OAuth client; only where to find it is set here.
            "microsoft": {"discovery_url": ms.discovery_url},
        },
        "plugins": {"outlook": {"client_id": ms.client_id, "client_secret": ms.client_secret}},
    }
    with BrainServer(tmp_path_factory.mktemp("social") / "brain", config=config) as s:
        yield s


class Browser:
    """A browser: one cookie jar, Origin on its POSTs, and redirects followed by hand."""

    def __init__(self, server: BrainServer) -> None:
        self.server = server
        self.http = requests.Session()

    def start(self, provider: str, path: str = "sign-in/social", **body: Any) -> str:
        r = self.http.post(f"{self.server.auth_url}/api/auth/{path}", json={"provider": provider, **body},
                           headers={"Origin": self.server.auth_url}, timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["redirect"] is (not body.get("disableRedirect", False))
        return r.json()["url"]

    def to_provider(self, url: str) -> str:
        """Follow the authorization URL; where the provider sends the browser back."""
        r = self.http.get(url, allow_redirects=False, timeout=10)
        assert r.status_code == 302, r.text
        return r.headers["Location"]

    def callback(self, url: str) -> tuple[str, dict[str, list[str]]]:
        r = self.http.get(url, allow_redirects=False, timeout=10)
        assert r.status_code == 302, (r.status_code, r.text)
        location = r.headers["Location"]
        return location, parse_qs(urlsplit(location).query)

    def sign_in(self, provider: str, **body: Any) -> tuple[str, dict[str, list[str]]]:
        return self.callback(self.to_provider(self.start(provider, **body)))

    def session(self) -> Any:
        return self.http.get(f"{self.server.auth_url}/api/auth/get-session", timeout=10).json()

    def accounts(self) -> list[dict[str, Any]]:
        r = self.http.get(f"{self.server.auth_url}/api/auth/list-accounts", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()


def test_sign_up_then_sign_in_with_an_oidc_provider(server: BrainServer, idps: dict[str, FakeOidc]) -> None:
    idps["acme"].login = "alice"
    browser = Browser(server)
    url = browser.start("acme", callbackURL="/app", newUserCallbackURL="/welcome")
    q = parse_qs(urlsplit(url).query)
    assert q["code_challenge_method"] == ["S256"] and len(q["code_challenge"][0]) == 43
    assert q["scope"] == ["openid email profile"] and q["nonce"] and q["state"]
    assert q["redirect_uri"] == [f"{server.auth_url}/api/auth/callback/acme"]
    location, _ = browser.callback(browser.to_provider(url))
    assert location == "/welcome"  # a new account
    got = browser.session()
    assert got["user"]["email"] == "alice@example.com" and got["user"]["emailVerified"] is True
    assert got["user"]["name"] == "Alice"
    assert [(a["providerId"], a["accountId"]) for a in browser.accounts()] == [("acme", "sub-alice")]

    again = Browser(server)
    location, _ = again.sign_in("acme", callbackURL="/app", newUserCallbackURL="/welcome")
    assert location == "/app"
    assert again.session()["user"]["id"] == got["user"]["id"]
    # Nobody can sign in with a password that was never set.
    r = requests.post(f"{server.auth_url}/api/auth/sign-in/email",
                      json={"email": "alice@example.com", "password": ""}, timeout=10)
    assert r.status_code in (400, 401)


def test_state_cannot_be_replayed_nor_finished_in_another_browser(server: BrainServer, idps: dict[str, FakeOidc]) -> None:
    idps["acme"].login = "bob"
    victim = Browser(server)
    back = victim.to_provider(victim.start("acme"))
    attacker = Browser(server)
    location, q = attacker.callback(back)  # no state cookie in this browser
    assert q["error"] == ["state_mismatch"] and location.startswith(f"{server.auth_url}/api/auth/error")
    assert attacker.session() is None
    # An attacker's own state cookie does not fit the victim's state either.
    attacker.start("acme")
    _, q = attacker.callback(back)
    assert q["error"] == ["state_mismatch"]
    # The victim's own browser finishes the flow once; a replay of the same callback is refused.
    location, q = victim.callback(back)
    assert "error" not in q and victim.session()["user"]["email"] == "bob@example.com"
    _, q = victim.callback(back)
    assert q["error"] == ["state_mismatch"]


def test_a_code_made_for_another_pkce_challenge_is_refused(server: BrainServer, idps: dict[str, FakeOidc]) -> None:
    idp = idps["acme"]
    idp.login = "bob"
    browser = Browser(server)
    url = browser.start("acme", errorCallbackURL="/oops")
    state = parse_qs(urlsplit(url).query)["state"][0]
    # The attacker's code was issued for their own challenge: brain's verifier cannot redeem it.
    forged = idp.code_for("bob", redirect_uri=f"{server.auth_url}/api/auth/callback/acme", challenge="A" * 43)
    location, q = browser.callback(f"{server.auth_url}/api/auth/callback/acme?code={forged}&state={state}")
    assert location.startswith("/oops?") and q["error"] == ["invalid_code"]
    assert browser.session() is None


@pytest.mark.parametrize("claims", [
    {"aud": "someone-else"}, {"iss": "https://evil.example"}, {"nonce": "not-this-flow"}, {"nonce": None},
    {"exp": 1_000_000_000}, {"iat": None},
], ids=["aud", "iss", "nonce", "no-nonce", "expired", "no-iat"])
def test_a_bad_id_token_is_refused(server: BrainServer, idps: dict[str, FakeOidc], claims: dict[str, Any]) -> None:
    idp = idps["acme"]
    idp.login = "bob"
    idp.id_token_claims = claims
    try:
        browser = Browser(server)
        _, q = browser.sign_in("acme")
    finally:
        idp.id_token_claims = {}
    assert q["error"] == ["unable_to_get_user_info"]
    assert browser.session() is None


def test_linking_by_email_needs_a_trusted_provider_and_verified_emails(server: BrainServer, idps: dict[str, FakeOidc]) -> None:
    # alice@example.com exists (verified, through acme). "other" is not trusted: no link.
    idps["acme"].login = "alice"
    Browser(server).sign_in("acme")
    idps["other"].login = "alice"
    browser = Browser(server)
    _, q = browser.sign_in("other")
    assert q["error"] == ["account_not_linked"] and browser.session() is None
    # An unverified email at a trusted provider does not link to the password account either.
    r = requests.post(f"{server.auth_url}/api/auth/sign-up/email",
                      json={"email": "carol@example.com", "password": "carol's password", "name": "Carol"}, timeout=10)
    assert r.status_code == 200
    idps["acme"].login = "carol"
    _, q = browser.sign_in("acme")
    assert q["error"] == ["account_not_linked"]


def test_microsoft_reuses_the_mail_client_and_checks_the_tenant_issuer(server: BrainServer, idps: dict[str, FakeOidc]) -> None:
    ms = idps["microsoft"]
    ms.login = "dave"
    browser = Browser(server)
    url = browser.start("microsoft")
    assert parse_qs(urlsplit(url).query)["client_id"] == [ms.client_id]
    _, q = browser.callback(browser.to_provider(url))
    assert "error" not in q
    assert browser.session()["user"]["emailVerified"] is True  # from verified_primary_email
    assert [(a["providerId"], a["accountId"]) for a in browser.accounts()] == [("microsoft", "oid-dave")]
    # A token naming another tenant than its issuer is refused.
    ms.id_token_claims = {"tid": "tenant-2"}
    try:
        _, q = Browser(server).sign_in("microsoft")
    finally:
        ms.id_token_claims = {}
    assert q["error"] == ["unable_to_get_user_info"]


def test_github_sign_in_link_list_and_unlink(server: BrainServer, idps: dict[str, FakeOidc]) -> None:
    idps["github"].login = "erin"
    browser = Browser(server)
    _, q = browser.sign_in("github")
    assert "error" not in q
    me = browser.session()["user"]
    assert me["email"] == "erin@example.com" and me["name"] == "Erin" and me["emailVerified"] is True
    accounts = browser.accounts()
    assert [(a["providerId"], a["accountId"]) for a in accounts] == [("github", "4242")]
    origin = {"Origin": server.auth_url}
    # The only way in cannot be unlinked.
    r = browser.http.post(f"{server.auth_url}/api/auth/unlink-account", json={"accountId": accounts[0]["id"]},
                          headers=origin, timeout=10)
    assert r.status_code == 400 and r.json()["code"] == "FAILED_TO_UNLINK_LAST_ACCOUNT"
    # Link an acme identity with the same (verified) email, then unlink GitHub.
    idps["acme"].users["erin"] = {"email": "erin@example.com", "email_verified": True}
    idps["acme"].login = "erin"
    location, q = browser.callback(browser.to_provider(browser.start("acme", path="link-social", callbackURL="/linked")))
    assert location == "/linked", q
    assert {a["providerId"] for a in browser.accounts()} == {"github", "acme"}
    r = browser.http.post(f"{server.auth_url}/api/auth/unlink-account", json={"accountId": accounts[0]["id"]},
                          headers=origin, timeout=10)
    assert r.status_code == 200 and r.json() == {"status": True}
    assert [a["providerId"] for a in browser.accounts()] == ["acme"]
    r = browser.http.post(f"{server.auth_url}/api/auth/unlink-account", json={"accountId": "nope"}, headers=origin, timeout=10)
    assert r.status_code == 400


def test_unknown_provider_and_bad_input(server: BrainServer) -> None:
    r = requests.post(f"{server.auth_url}/api/auth/sign-in/social", json={"provider": "nope"}, timeout=10)
    assert r.status_code == 404 and r.json()["code"] == "PROVIDER_NOT_FOUND"
    r = requests.post(f"{server.auth_url}/api/auth/sign-in/social", json={"provider": "acme", "callbackURL": "https://evil.example/"}, timeout=10)
    assert r.status_code == 403 and r.json()["code"] == "INVALID_CALLBACK_URL"
    r = requests.post(f"{server.auth_url}/api/auth/sign-in/social", json={"provider": "acme", "scopes": "x"}, timeout=10)
    assert r.status_code == 400
    r = requests.get(f"{server.auth_url}/api/auth/callback/acme", allow_redirects=False, timeout=10)
    assert r.status_code == 302 and "error=state_not_found" in r.headers["Location"]
    assert requests.get(f"{server.auth_url}/api/auth/list-accounts", timeout=10).status_code == 401


def run_client(server: BrainServer, **env: str) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the Better Auth client test needs node and npm")
    npm_install()
    out = subprocess.run([node, "social.mjs"], cwd=JS_DIR, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "AUTH_URL": server.auth_url, **env})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_better_auth_client_drives_social_sign_in_and_accounts(server: BrainServer, idps: dict[str, FakeOidc]) -> None:
    idps["acme"].users["frank"] = {"email": "frank@example.com", "email_verified": True}
    idps["acme"].login = "frank"
    started = run_client(server, STEP="start", PROVIDER="acme")
    assert started["signIn"]["error"] is None and started["signIn"]["data"]["redirect"] is False
    url = started["signIn"]["data"]["url"]
    assert url.startswith(idps["acme"].base_url + "/authorize?")
    assert started["unknown"]["error"] == {"status": 404, "code": "PROVIDER_NOT_FOUND"}
    # The browser part: the state cookie the client was given, the provider, the callback.
    browser = Browser(server)
    name, _, value = started["setCookie"].split(";", 1)[0].partition("=")
    assert name == "better-auth.state"
    browser.http.cookies.set(name, value)
    location, q = browser.callback(browser.to_provider(url))
    assert location == "/app", q
    token = browser.session()["session"]["token"]
    got = run_client(server, STEP="accounts", TOKEN=token)
    assert [(a["providerId"], a["accountId"]) for a in got["accounts"]["data"]] == [("acme", "sub-frank")]
    assert got["unlinkLast"]["error"] == {"status": 400, "code": "FAILED_TO_UNLINK_LAST_ACCOUNT"}
