"""Hostile tokens against the real API role: every rule of the JWT check, all 401, never 5xx.

One `brain serve --roles api` process per module, pointed at a fake foreign issuer
(tests/fakes/issuer.py) whose keys can sign whatever a test needs, including tokens pyjwt
would never produce.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.fakes.issuer import FakeIssuer, b64url
from tests.support import BrainServer, wait_until

LEEWAY = 2
MAX_TOKEN = 4096


def api_server(workdir: Path, issuer: FakeIssuer, **api: Any) -> BrainServer:
    """A started API-only brain that trusts `issuer`, once its keys are loaded."""
    server = BrainServer(
        workdir,
        roles="api",
        env={"AUTH_SERVER_URL": issuer.base_url},
        config={"api": {"issuer": issuer.issuer, **api}},
    )
    server.start()
    wait_until(lambda: health(server)["jwks"]["loaded"], timeout=15, what="JWKS loaded")
    return server


def health(server: BrainServer) -> dict[str, Any]:
    return server.health()


@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    yield from FakeIssuer.running()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, issuer: FakeIssuer) -> Iterator[BrainServer]:
    s = api_server(tmp_path_factory.mktemp("jwt"), issuer, leeway_seconds=LEEWAY, max_token_bytes=MAX_TOKEN)
    try:
        yield s
    finally:
        s.close()


def me(server: BrainServer, token: str | None, *, scheme: str = "Bearer") -> requests.Response:
    headers = {} if token is None else {"Authorization": f"{scheme} {token}".rstrip()}
    return requests.get(f"{server.api_url}/me", headers=headers, timeout=10)


def assert_refused(r: requests.Response, reason: str | None = None) -> None:
    """401 with Bearer error="invalid_token" and a JSON reason (optionally containing `reason`)."""
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"'), r.headers
    body = r.json()
    assert body["code"] == "INVALID_TOKEN"
    if reason is not None:
        assert reason in body["message"], body


def test_valid_token_is_accepted_and_me_is_the_subject(server: BrainServer, issuer: FakeIssuer) -> None:
    r = me(server, issuer.token("alice", email="alice@example.com", name="Alice"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "alice" and body["email"] == "alice@example.com" and body["name"] == "Alice"
    assert body["claims"]["iss"] == issuer.issuer
    # The scheme is case-insensitive (RFC 7235); the cache serves the repeat.
    assert me(server, issuer.token("alice"), scheme="bearer").status_code == 200


def now() -> int:
    return int(time.time())


def raw(issuer: FakeIssuer, header: dict[str, Any] | str, payload: dict[str, Any] | str) -> str:
    return issuer.sign_raw(header, payload)


def std_header(issuer: FakeIssuer, **extra: Any) -> dict[str, Any]:
    return {"alg": "RS256", "typ": "JWT", "kid": issuer.current_kid, **extra}


def hs256(key: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    signing_input = f"{b64url(json.dumps(header))}.{b64url(json.dumps(payload))}"
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def public_pem(issuer: FakeIssuer) -> bytes:
    return issuer.key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def hostile_tokens(issuer: FakeIssuer) -> dict[str, tuple[str, str]]:
    """name -> (token, expected reason fragment)."""
    kid = issuer.current_kid
    claims = issuer.claims("mallory")
    header = std_header(issuer)
    valid = issuer.token("mallory")
    h, p, s = valid.split(".")
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker_jwk = {**RSAAlgorithm.to_jwk(attacker.public_key(), as_dict=True), "kid": kid}
    out: dict[str, tuple[str, str]] = {
        # Algorithm confusion
        "alg none": (f"{b64url(json.dumps({'alg': 'none', 'kid': kid}))}.{p}.", "algorithm not allowed"),
        "alg None": (f"{b64url(json.dumps({'alg': 'None', 'kid': kid}))}.{p}.", "algorithm not allowed"),
        "HS256 with the RSA public key (PEM)": (hs256(public_pem(issuer), {**header, "alg": "HS256"}, claims), "algorithm not allowed"),
        "HS256 with the JWK as secret": (
            hs256(json.dumps(issuer.jwks()["keys"][0]).encode(), {**header, "alg": "HS256"}, claims),
            "algorithm not allowed",
        ),
        "RS512 (not on the allow-list)": (jwt.encode(claims, issuer.key(), algorithm="RS512", headers={"kid": kid}), "algorithm not allowed"),
        "PS256 (not on the allow-list)": (jwt.encode(claims, issuer.key(), algorithm="PS256", headers={"kid": kid}), "algorithm not allowed"),
        "alg missing": (raw(issuer, {"kid": kid}, claims), "algorithm not allowed"),
        "alg a list": (raw(issuer, {"alg": ["RS256"], "kid": kid}, claims), "algorithm not allowed"),
        # Key ids
        "unknown kid": (issuer.token("mallory", headers={"kid": "no-such-kid"}), "unknown key id"),
        "kid missing": (raw(issuer, {"alg": "RS256", "typ": "JWT"}, claims), "kid"),
        "kid a number": (raw(issuer, {"alg": "RS256", "kid": 7}, claims), "kid"),
        "kid empty": (raw(issuer, {"alg": "RS256", "kid": ""}, claims), "kid"),
        # Keys taken from the token itself
        "embedded jwk (attacker's key)": (
            jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": kid, "jwk": attacker_jwk}),
            "embedded",
        ),
        "jku": (issuer.token("mallory", headers={"jku": "http://127.0.0.1:1/jwks"}), "embedded"),
        "x5u": (issuer.token("mallory", headers={"x5u": "http://127.0.0.1:1/cert"}), "embedded"),
        "x5c": (issuer.token("mallory", headers={"x5c": ["MIIB"]}), "embedded"),
        "signed by another key under our kid": (jwt.encode(claims, attacker, algorithm="RS256", headers={"kid": kid}), "signature"),
        # crit / b64
        "crit unknown": (raw(issuer, {**header, "crit": ["exp"]}, claims), "critical"),
        "crit b64 false": (raw(issuer, {**header, "b64": False, "crit": ["b64"]}, claims), "critical"),
        "b64 false": (raw(issuer, {**header, "b64": False}, claims), "unencoded"),
        "typ JWE": (raw(issuer, {**header, "typ": "JWE"}, claims), "type"),
        # Time claims
        "expired": (issuer.token("mallory", exp=now() - 3600, iat=now() - 7200), "expired"),
        "expired beyond the leeway": (issuer.token("mallory", exp=now() - LEEWAY - 5), "expired"),
        "nbf in the future": (issuer.token("mallory", nbf=now() + 3600), "not valid yet"),
        "iat in the future": (issuer.token("mallory", iat=now() + 3600), "future"),
        "exp missing": (issuer.token("mallory", exp=None), "exp"),
        "exp a string": (raw(issuer, header, {**claims, "exp": str(now() + 300)}), "exp"),
        "exp true": (raw(issuer, header, {**claims, "exp": True}), "exp"),
        "exp null": (raw(issuer, header, {**claims, "exp": None}), "exp"),
        "exp NaN": (raw(issuer, header, json.dumps(claims).replace(f'"exp": {claims["exp"]}', '"exp": NaN')), "JSON"),
        "exp 1e400 (infinite)": (raw(issuer, header, json.dumps(claims).replace(f'"exp": {claims["exp"]}', '"exp": 1e400')), "exp"),
        "nbf a string": (raw(issuer, header, {**claims, "nbf": "0"}), "nbf"),
        "iat a list": (raw(issuer, header, {**claims, "iat": [1]}), "iat"),
        # Issuer / audience
        "wrong iss": (issuer.token("mallory", iss="https://evil.test"), "issuer"),
        "iss missing": (issuer.token("mallory", iss=None), "issuer"),
        "iss a list": (raw(issuer, header, {**claims, "iss": [issuer.issuer]}), "issuer"),
        "iss with a trailing slash": (issuer.token("mallory", iss=issuer.issuer + "/"), "issuer"),
        "wrong aud": (issuer.token("mallory", aud="someone-else"), "audience"),
        "aud missing": (issuer.token("mallory", aud=None), "audience"),
        "aud list without us": (issuer.token("mallory", aud=["a", "b"]), "audience"),
        "aud a number": (raw(issuer, header, {**claims, "aud": 1}), "audience"),
        # Subjects that would be paths
        "sub missing": (issuer.token("mallory", sub=None), "sub"),
        "sub empty": (raw(issuer, header, {**claims, "sub": ""}), "sub"),
        "sub a number": (raw(issuer, header, {**claims, "sub": 12345}), "sub"),
        "sub ..": (issuer.token(".."), "sub"),
        "sub .": (issuer.token("."), "sub"),
        "sub ../../etc": (issuer.token("../../etc"), "sub"),
        "sub a/b": (issuer.token("a/b"), "sub"),
        "sub with a backslash": (issuer.token("a\\b"), "sub"),
        "sub %2e%2e%2f": (issuer.token("%2e%2e%2fother"), "sub"),
        "sub with NUL": (issuer.token("alice\x00bob"), "sub"),
        "sub with newline": (issuer.token("alice\n"), "sub"),
        "sub unicode": (issuer.token("al\u00efce"), "sub"),
        "sub fullwidth dots": (issuer.token("\uff0e\uff0e"), "sub"),
        "sub 65 characters": (issuer.token("a" * 65), "sub"),
        "sub starting with a dash": (issuer.token("-rf"), "sub"),
        "sub with a dot": (issuer.token("alice.bob"), "sub"),
        # Duplicate members (pyjwt would keep the last one)
        "duplicate alg in header": (
            raw(issuer, f'{{"alg":"none","alg":"RS256","kid":"{kid}"}}', claims),
            "duplicate",
        ),
        "duplicate sub in payload": (
            raw(issuer, header, json.dumps(claims)[:-1] + ', "sub": "victim"}'),
            "duplicate",
        ),
        "duplicate kid in header": (raw(issuer, f'{{"alg":"RS256","kid":"x","kid":"{kid}"}}', claims), "duplicate"),
        # Structure and encoding
        "two segments": (f"{h}.{p}", "segments"),
        "four segments": (f"{h}.{p}.{s}.{s}", "segments"),
        "empty signature": (f"{h}.{p}.", "base64url"),
        "padding in a segment": (f"{h}==.{p}.{s}", "base64url"),
        "standard base64 characters": (f"{h}.{p}.{s[:-2]}+/", "base64url"),
        "impossible base64 length": (f"{h}.{p + 'x' * ((1 - len(p)) % 4)}.{s}", "base64url"),
        "header not JSON": (f"{b64url('not json')}.{p}.{s}", "JSON"),
        "header a JSON array": (f"{b64url('[1,2]')}.{p}.{s}", "object"),
        "header invalid UTF-8": (f"{b64url(bytes([0xFF, 0xFE, 0x7B]))}.{p}.{s}", "JSON"),
        "payload a JSON string": (raw(issuer, header, '"alice"'), "object"),
        "payload deeply nested": (raw(issuer, header, "[" * 1200 + "]" * 1200), "JSON"),
        "header too large": (raw(issuer, {**header, "x": "a" * 2000}, claims), "too large"),
        "token too large": (issuer.token("mallory", filler="x" * MAX_TOKEN), "too large"),
        # Tampering
        "payload swapped (other sub, old signature)": (
            f"{h}.{b64url(json.dumps({**claims, 'sub': 'victim'}))}.{s}",
            "signature",
        ),
        "signature flipped": (f"{h}.{p}.{s[:10]}{'A' if s[10] != 'A' else 'B'}{s[11:]}", "signature"),
        "signature truncated": (f"{h}.{p}.{s[:-8]}", "signature"),
    }
    return out


def test_hostile_token_catalogue_is_all_401(server: BrainServer, issuer: FakeIssuer) -> None:
    # The valid form of the token is accepted (and cached) first, so a variant slipping through
    # the cache would show here.
    assert me(server, issuer.token("mallory")).status_code == 200
    failures = []
    for name, (token, reason) in hostile_tokens(issuer).items():
        r = me(server, token)
        try:
            assert_refused(r, reason)
        except (AssertionError, ValueError, KeyError) as exc:
            failures.append(f"{name}: {r.status_code} {r.text[:200]} ({exc})")
    assert not failures, "\n".join(failures)
    # Nothing the hostile subjects named became a directory.
    users = server.data_dir / "users"
    assert not users.exists() or not any(users.iterdir())


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic YWxpY2U6c2VjcmV0",
        "Token abc.def.ghi",
        "Bearer a.b.c d.e.f",
        "Bearer\tabc",
    ],
)
def test_authorization_header_forms(server: BrainServer, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    r = requests.get(f"{server.api_url}/me", headers=headers, timeout=10)
    assert_refused(r)


def test_oversized_authorization_header_never_reaches_a_5xx(server: BrainServer) -> None:
    # Above max_token_bytes: our 401. Above aiohttp's header-line limit: its own 400. Never 5xx.
    r = requests.get(f"{server.api_url}/me", headers={"Authorization": "Bearer " + "a" * (MAX_TOKEN + 10)}, timeout=10)
    assert_refused(r, "too large")
    r = requests.get(f"{server.api_url}/me", headers={"Authorization": "Bearer " + "a" * 20_000}, timeout=10)
    assert 400 <= r.status_code < 500


def test_every_protected_route_refuses_a_bad_token(server: BrainServer, issuer: FakeIssuer) -> None:
    bad = issuer.token("mallory", aud="someone-else")
    for method, path in (("GET", "/me"), ("GET", "/events"), ("POST", "/events")):
        r = requests.request(method, server.api_url + path, headers={"Authorization": f"Bearer {bad}"}, json={}, timeout=10)
        assert_refused(r, "audience")


def test_cached_token_is_not_used_past_exp(server: BrainServer, issuer: FakeIssuer) -> None:
    token = issuer.token("shortlived", ttl=1)
    assert me(server, token).status_code == 200
    assert me(server, token).status_code == 200  # from the cache
    # Past exp the cache must not answer; past exp + leeway the check refuses it.
    time.sleep(1 + LEEWAY + 0.5)
    assert_refused(me(server, token), "expired")


def test_random_kids_and_bad_tokens_do_not_cost_a_5xx_under_load(server: BrainServer, issuer: FakeIssuer) -> None:
    session = requests.Session()
    statuses = set()
    for _ in range(200):
        token = issuer.token("mallory", headers={"kid": secrets.token_hex(8)})
        statuses.add(session.get(f"{server.api_url}/me", headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code)
        junk = base64.urlsafe_b64encode(secrets.token_bytes(60)).decode().rstrip("=")
        statuses.add(session.get(f"{server.api_url}/me", headers={"Authorization": f"Bearer {junk}"}, timeout=10).status_code)
    assert statuses == {401}
    assert health(server)["jwks"]["misses"] >= 200


def test_algorithm_allow_list_is_configurable_for_foreign_issuers(tmp_path: Path) -> None:
    with FakeIssuer(alg="ES256") as es_issuer:
        ed_kid = es_issuer.add_key("EdDSA")
        rsa_kid = es_issuer.add_key("RS256")
        strict = api_server(tmp_path / "strict", es_issuer)  # default allow-list: RS256 only
        try:
            assert_refused(me(strict, es_issuer.token("alice")), "algorithm not allowed")
            assert_refused(me(strict, es_issuer.token("alice", kid=ed_kid)), "algorithm not allowed")
            assert me(strict, es_issuer.token("alice", kid=rsa_kid)).status_code == 200
        finally:
            strict.close()
        foreign = api_server(tmp_path / "foreign", es_issuer, algorithms=["ES256", "EdDSA"])
        try:
            assert me(foreign, es_issuer.token("alice")).status_code == 200
            assert me(foreign, es_issuer.token("bob", kid=ed_kid)).json()["id"] == "bob"
            assert_refused(me(foreign, es_issuer.token("alice", kid=rsa_kid)), "algorithm not allowed")
            # An allowed alg with the wrong kind of key: ES256 claimed, EdDSA key named.
            forged = es_issuer.sign_raw({"alg": "ES256", "kid": ed_kid}, es_issuer.claims("alice"), kid=es_issuer.current_kid)
            assert_refused(me(foreign, forged), "does not match the key")
        finally:
            foreign.close()


def test_a_key_imported_from_another_issuer_verifies_only_that_issuers_tokens(tmp_path: Path) -> None:
    # brain publishes keys imported from a Better Auth database with the iss and aud their tokens
    # carry (brain.auth.importer); the API role must hold each such key to exactly those.
    with FakeIssuer() as issuer:
        old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = {**json.loads(RSAAlgorithm.to_jwk(old.public_key())), "kid": "old-issuer", "alg": "RS256", "use": "sig",
               "iss": "https://old.example", "aud": "https://old.example"}
        issuer.extra_jwks = [jwk]
        server = api_server(tmp_path / "brain", issuer)
        try:
            def old_token(**claims: Any) -> str:
                base = {"sub": "olduser1", "iat": now(), "exp": now() + 300,
                        "iss": "https://old.example", "aud": "https://old.example"}
                return jwt.encode({**base, **claims}, old, algorithm="RS256", headers={"kid": "old-issuer"})

            assert me(server, old_token()).status_code == 200
            # The old key cannot speak for brain's issuer or audience, nor brain's keys for the old issuer.
            assert_refused(me(server, old_token(iss=issuer.issuer, aud=issuer.audience)), "issuer mismatch")
            assert_refused(me(server, old_token(aud=issuer.audience)), "audience mismatch")
            assert_refused(me(server, issuer.token("newuser1", iss="https://old.example")), "issuer mismatch")
            assert me(server, issuer.token("newuser1")).status_code == 200
        finally:
            server.close()


def respellings(token: str) -> list[str]:
    """The same JWT with its signature's last character re-spelt: only spare bits differ."""
    head, body, sig = token.split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = {2: 0b1111, 3: 0b11}[len(sig) % 4]  # an RS256 signature (256 bytes) leaves spare bits
    last = alphabet.index(sig[-1])
    return [f"{head}.{body}.{sig[:-1]}{alphabet[last ^ bits]}" for bits in range(1, spare + 1)]


def test_one_jwt_takes_one_token_cache_entry_however_the_header_is_spelt(
    tmp_path: Path, issuer: FakeIssuer
) -> None:
    token_for_metrics = "metrics-token-" + "c" * 20
    server = BrainServer(
        tmp_path / "brain", roles="api", env={"AUTH_SERVER_URL": issuer.base_url},
        config={"api": {"issuer": issuer.issuer}, "metrics": {"token": token_for_metrics}},
    )
    with server:
        wait_until(lambda: health(server)["jwks"]["loaded"], timeout=15, what="JWKS loaded")
        token = issuer.token("alice")
        headers = [f"{scheme}{gap}{token}{tail}" for scheme in ("Bearer", "bearer", "BEARER", "bEaReR")
                   for gap in (" ", "  ", " \t ") for tail in ("", "  ")]
        with requests.Session() as session:
            for value in headers:
                r = session.get(f"{server.api_url}/me", headers={"Authorization": value}, timeout=10)
                assert r.status_code == 200 and r.json()["id"] == "alice", (value, r.text)
            for variant in respellings(token):
                # The same signature bytes, another spelling: refused, so it takes no entry.
                assert_refused(me(server, variant), "canonical")
            scraped = session.get(f"{server.api_url}/metrics", timeout=10,
                                  headers={"Authorization": f"Bearer {token_for_metrics}"}).text
        entries = [line for line in scraped.splitlines() if line.startswith("brain_jwt_cache_entries ")]
        assert entries == ["brain_jwt_cache_entries 1.0"], entries
