"""Sessions and account changes over HTTP: list/revoke sessions, update-user, change-password and
change-email (with its mailed links, received by an aiosmtpd server in this process)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import BrainServer
from tests.test_auth_email import Inbox, get, link_in, mail_config, smtp  # noqa: F401 - smtp is a fixture
from tests.test_auth_helpers import PASSWORD, bearer, sign_in, unique_email, verify_jwt

APP = "https://app.example.com"


@pytest.fixture(scope="module")
def server(smtp: tuple[Inbox, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrainServer]:  # noqa: F811
    server = BrainServer(Path(tmp_path_factory.mktemp("account")) / "brain", config=mail_config(smtp[1]))
    with server:
        yield server


@pytest.fixture
def inbox(smtp: tuple[Inbox, int]) -> Inbox:  # noqa: F811
    return smtp[0]


def post(server: BrainServer, path: str, token: str | None, body: Any = None, **kwargs: Any) -> requests.Response:
    headers = bearer(token) if token else {}
    return requests.post(f"{server.auth_url}/api/auth/{path}", json=body if body is not None else {},
                         headers=headers, timeout=15, **kwargs)


def auth_get(server: BrainServer, path: str, token: str | None, **params: str) -> requests.Response:
    return requests.get(f"{server.auth_url}/api/auth/{path}", params=params, headers=bearer(token) if token else {},
                        timeout=15)


def new_account(server: BrainServer, address: str | None = None) -> dict[str, Any]:
    address = address or unique_email("account")
    r = requests.post(f"{server.auth_url}/api/auth/sign-up/email",
                      json={"name": "Acc", "email": address, "password": PASSWORD}, timeout=15)
    assert r.status_code == 200, r.text
    return r.json()


def session_alive(server: BrainServer, token: str) -> bool:
    return auth_get(server, "get-session", token).json() is not None


# --- sessions -------------------------------------------------------------------------------------


def test_list_sessions_shows_the_users_live_sessions_only(server: BrainServer) -> None:
    ada = new_account(server)
    other = sign_in(server, ada["user"]["email"]).json()
    bob = new_account(server)
    r = auth_get(server, "list-sessions", ada["token"])
    assert r.status_code == 200, r.text
    sessions = r.json()
    assert [s["id"] for s in sessions] == [ada["session"]["id"], other["session"]["id"]]
    assert all(s["userId"] == ada["user"]["id"] for s in sessions)
    # Only the caller's own session shows its token; the others show a revocation handle.
    assert sessions[0]["token"] == ada["token"]
    assert sessions[1]["token"] == other["session"]["id"] != other["token"]
    assert bob["session"]["id"] not in {s["id"] for s in sessions}
    assert auth_get(server, "list-sessions", None).status_code == 401


def test_revoke_session_stops_cookie_and_bearer_at_once_but_not_issued_jwts(server: BrainServer) -> None:
    ada = new_account(server)
    laptop = sign_in(server, ada["user"]["email"])
    cookie = laptop.cookies.get("better-auth.session_token")
    laptop_jwt = laptop.json()["jwt"]
    assert session_alive(server, laptop.json()["token"])
    handle = next(s["token"] for s in auth_get(server, "list-sessions", ada["token"]).json() if s["id"] != ada["session"]["id"])
    r = post(server, "revoke-session", ada["token"], {"token": handle})
    assert r.status_code == 200 and r.json() == {"status": True}
    assert not session_alive(server, laptop.json()["token"])
    r = requests.get(f"{server.auth_url}/api/auth/get-session", cookies={"better-auth.session_token": cookie}, timeout=10)
    assert r.json() is None
    assert auth_get(server, "token", laptop.json()["token"]).status_code == 401
    # A JWT already minted from the revoked session runs out within its TTL (README).
    assert requests.get(f"{server.api_url}/me", headers=bearer(laptop_jwt), timeout=10).status_code == 200
    assert session_alive(server, ada["token"])


def test_revoke_session_by_token_and_of_the_current_session_clears_the_cookie(server: BrainServer) -> None:
    ada = new_account(server)
    phone = sign_in(server, ada["user"]["email"]).json()
    assert post(server, "revoke-session", ada["token"], {"token": phone["token"]}).json() == {"status": True}
    assert not session_alive(server, phone["token"])
    r = post(server, "revoke-session", ada["token"], {"token": ada["token"]})
    assert r.status_code == 200 and "better-auth.session_token=;" in r.headers["Set-Cookie"]
    assert not session_alive(server, ada["token"])


def test_another_users_session_cannot_be_revoked(server: BrainServer) -> None:
    ada, bob = new_account(server), new_account(server)
    for handle in (bob["token"], bob["session"]["id"]):
        r = post(server, "revoke-session", ada["token"], {"token": handle})
        assert r.status_code == 200 and r.json() == {"status": True}  # Better Auth's answer: nothing said
    assert session_alive(server, bob["token"]) and session_alive(server, ada["token"])


def test_revoke_session_checks_its_input(server: BrainServer) -> None:
    ada = new_account(server)
    for body in ({}, {"token": 5}, {"token": None}, []):
        r = post(server, "revoke-session", ada["token"], body)
        assert r.status_code == 400 and r.json()["code"] == "VALIDATION_ERROR", (body, r.text)
    for token in ("x" * 10_000, "\u00e9" * 32, ""):
        assert post(server, "revoke-session", ada["token"], {"token": token}).status_code == 200
    assert post(server, "revoke-session", None, {"token": "x"}).status_code == 401


def test_revoke_other_sessions_and_revoke_sessions(server: BrainServer) -> None:
    ada = new_account(server)
    others = [sign_in(server, ada["user"]["email"]).json()["token"] for _ in range(2)]
    assert post(server, "revoke-other-sessions", ada["token"]).json() == {"status": True}
    assert not any(session_alive(server, t) for t in others) and session_alive(server, ada["token"])
    again = sign_in(server, ada["user"]["email"]).json()["token"]
    r = post(server, "revoke-sessions", ada["token"])
    assert r.json() == {"status": True} and "better-auth.session_token=;" in r.headers["Set-Cookie"]
    assert not session_alive(server, again) and not session_alive(server, ada["token"])
    for path in ("revoke-sessions", "revoke-other-sessions"):
        assert post(server, path, None).status_code == 401


def test_list_sessions_needs_a_fresh_session(make_server, smtp: tuple[Inbox, int]) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    server = make_server(config=mail_config(smtp[1], session_fresh_age_seconds=1)).start()
    ada = new_account(server)
    assert auth_get(server, "list-sessions", ada["token"]).status_code == 200
    time.sleep(1.1)
    r = auth_get(server, "list-sessions", ada["token"])
    assert r.status_code == 403 and r.json()["code"] == "SESSION_NOT_FRESH"


# --- update-user ------------------------------------------------------------------------------------


def test_update_user_changes_name_and_image(server: BrainServer) -> None:
    ada = new_account(server)
    r = post(server, "update-user", ada["token"], {"name": "Ada L.", "image": "https://example.com/ada.png"})
    assert r.status_code == 200 and r.json() == {"status": True}
    user = auth_get(server, "get-session", ada["token"]).json()["user"]
    assert user["name"] == "Ada L." and user["image"] == "https://example.com/ada.png"
    assert user["updatedAt"] > ada["user"]["updatedAt"]
    assert post(server, "update-user", ada["token"], {"image": None}).status_code == 200
    assert auth_get(server, "get-session", ada["token"]).json()["user"]["image"] is None
    # JWTs minted from now on carry the new name.
    token = auth_get(server, "token", ada["token"]).json()["token"]
    assert verify_jwt(server, token)["name"] == "Ada L."


@pytest.mark.parametrize(("body", "code", "field"), [
    ({"name": "Line\nbreak"}, "VALIDATION_ERROR", "name"),
    ({"name": "tab\there"}, "VALIDATION_ERROR", "name"),
    ({"name": "esc\x1b[31m"}, "VALIDATION_ERROR", "name"),
    ({"name": "bidi\u202eevil"}, "VALIDATION_ERROR", "name"),
    ({"name": "nul\x00"}, "VALIDATION_ERROR", "name"),
    ({"name": 42}, "VALIDATION_ERROR", "name"),
    ({"name": "x" * 300}, "VALIDATION_ERROR", "name"),
    ({"image": "a\r\nb"}, "VALIDATION_ERROR", "image"),
    ({"image": ["x"]}, "VALIDATION_ERROR", "image"),
    ({"email": "someone@example.com"}, "EMAIL_CAN_NOT_BE_UPDATED", None),
    ({"emailVerified": True}, "FIELD_NOT_ALLOWED", "emailVerified"),
    ({"twoFactorEnabled": True}, "FIELD_NOT_ALLOWED", "twoFactorEnabled"),
    ({}, "BAD_REQUEST", None),
    ([], "VALIDATION_ERROR", None),
])
def test_update_user_refuses_bad_input_naming_the_field(server: BrainServer, body: Any, code: str, field: str | None) -> None:
    ada = new_account(server)
    r = post(server, "update-user", ada["token"], body)
    assert r.status_code == 400 and r.json()["code"] == code, r.text
    if field:
        assert field in r.json()["message"]
    assert auth_get(server, "get-session", ada["token"]).json()["user"]["name"] == "Acc"


def test_update_user_needs_a_session(server: BrainServer) -> None:
    assert post(server, "update-user", None, {"name": "x"}).status_code == 401


# --- change-password ---------------------------------------------------------------------------------


def test_change_password_needs_the_current_one(server: BrainServer) -> None:
    ada = new_account(server)
    email = ada["user"]["email"]
    r = post(server, "change-password", ada["token"], {"currentPassword": "not the password", "newPassword": "new password 1"})
    assert r.status_code == 400 and r.json()["code"] == "INVALID_PASSWORD"
    r = post(server, "change-password", ada["token"], {"currentPassword": PASSWORD, "newPassword": "short"})
    assert r.status_code == 400 and r.json()["code"] == "PASSWORD_TOO_SHORT"
    r = post(server, "change-password", ada["token"], {"newPassword": "new password 1"})
    assert r.status_code == 400 and "currentPassword" in r.json()["message"]
    assert sign_in(server, email).status_code == 200
    other = sign_in(server, email).json()["token"]
    r = post(server, "change-password", ada["token"], {"currentPassword": PASSWORD, "newPassword": "new password 1"})
    assert r.status_code == 200, r.text
    assert r.json()["token"] is None and r.json()["user"]["id"] == ada["user"]["id"]
    assert sign_in(server, email).status_code == 401
    assert sign_in(server, email, "new password 1").status_code == 200
    # Without revokeOtherSessions, every session lives on.
    assert session_alive(server, other) and session_alive(server, ada["token"])


def test_change_password_with_revoke_other_sessions_answers_a_new_session(server: BrainServer) -> None:
    ada = new_account(server)
    other = sign_in(server, ada["user"]["email"]).json()["token"]
    r = post(server, "change-password", ada["token"],
             {"currentPassword": PASSWORD, "newPassword": "new password 2", "revokeOtherSessions": True})
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    assert token and token not in (ada["token"], other)
    assert r.headers["set-auth-token"].startswith(token + ".")
    assert f"better-auth.session_token={r.headers['set-auth-token']}" in r.headers["Set-Cookie"]
    assert verify_jwt(server, r.headers["set-auth-jwt"])["sub"] == ada["user"]["id"]
    assert session_alive(server, token)
    assert not session_alive(server, other) and not session_alive(server, ada["token"])


# --- change-email --------------------------------------------------------------------------------------


def verified_account(server: BrainServer, inbox: Inbox) -> dict[str, Any]:
    ada = new_account(server)
    r = post(server, "send-verification-email", ada["token"], {"email": ada["user"]["email"]})
    assert r.status_code == 200, r.text
    assert get(link_in(inbox.wait(ada["user"]["email"]))).status_code == 302
    return ada


def test_change_email_of_a_verified_user_confirms_at_the_old_address_first(server: BrainServer, inbox: Inbox) -> None:
    ada = verified_account(server, inbox)
    old, new = ada["user"]["email"], unique_email("moved")
    r = post(server, "change-email", ada["token"], {"newEmail": new.upper(), "callbackURL": f"{APP}/done"})
    assert r.status_code == 200 and r.json() == {"status": True}, r.text
    confirm = inbox.wait(old, count=2)
    assert "Confirm the change" in confirm["Subject"] and new in confirm.get_content()
    assert not inbox.to(new)
    # Until the new address is verified, the account keeps the old one (and signs in with it).
    assert auth_get(server, "get-session", ada["token"]).json()["user"]["email"] == old
    r = get(link_in(confirm))
    assert r.status_code == 302 and r.headers["Location"] == f"{APP}/done"
    assert auth_get(server, "get-session", ada["token"]).json()["user"]["email"] == old
    verify = inbox.wait(new)
    assert "Verify your new email" in verify["Subject"]
    link = link_in(verify)
    r = get(link.split("&")[0])  # without its callbackURL: the JSON answer
    assert r.status_code == 200, r.text
    assert r.json()["user"]["email"] == new and r.json()["user"]["emailVerified"] is True
    assert auth_get(server, "get-session", ada["token"]).json()["user"]["email"] == new
    assert sign_in(server, new).status_code == 200 and sign_in(server, old).status_code == 401
    # Every link is good once.
    assert get(link_in(confirm)).status_code == 302
    assert "error=INVALID_TOKEN" in get(link_in(confirm)).headers["Location"]
    assert get(link.split("&")[0]).json()["code"] == "INVALID_TOKEN"


def test_change_email_of_an_unverified_user_verifies_the_new_address_only(server: BrainServer, inbox: Inbox) -> None:
    ada = new_account(server)
    old, new = ada["user"]["email"], unique_email("unverified-move")
    assert post(server, "change-email", ada["token"], {"newEmail": new}).json() == {"status": True}
    verify = inbox.wait(new)
    assert not inbox.to(old)
    r = get(link_in(verify))
    assert r.status_code == 302 and r.headers["Location"] == "/"
    user = auth_get(server, "get-session", ada["token"]).json()["user"]
    assert user["email"] == new and user["emailVerified"] is True


def test_change_email_to_a_taken_address_looks_the_same_and_changes_nothing(server: BrainServer, inbox: Inbox) -> None:
    ada, bob = new_account(server), new_account(server)
    r = post(server, "change-email", ada["token"], {"newEmail": bob["user"]["email"]})
    assert r.status_code == 200 and r.json() == {"status": True}
    free = unique_email("free")
    assert post(server, "change-email", ada["token"], {"newEmail": free}).json() == {"status": True}
    inbox.wait(free)
    assert not inbox.to(bob["user"]["email"])
    assert auth_get(server, "get-session", ada["token"]).json()["user"]["email"] == ada["user"]["email"]


def test_change_email_link_dies_when_the_address_is_taken_or_changed_meanwhile(server: BrainServer, inbox: Inbox) -> None:
    ada = new_account(server)
    first, second = unique_email("first"), unique_email("second")
    assert post(server, "change-email", ada["token"], {"newEmail": first}).status_code == 200
    assert post(server, "change-email", ada["token"], {"newEmail": second}).status_code == 200
    to_first, to_second = link_in(inbox.wait(first)), link_in(inbox.wait(second))
    assert get(to_second).status_code == 302
    # The address changed since the first mail: its link no longer works.
    r = get(to_first)
    assert r.status_code == 302 and "error=INVALID_TOKEN" in r.headers["Location"]
    assert auth_get(server, "get-session", ada["token"]).json()["user"]["email"] == second
    carol = new_account(server)
    wanted = unique_email("wanted")
    assert post(server, "change-email", carol["token"], {"newEmail": wanted}).status_code == 200
    link = link_in(inbox.wait(wanted))
    new_account(server, wanted)  # someone signs up with it before carol follows the link
    r = get(link)
    assert r.status_code == 302 and "error=USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL" in r.headers["Location"]
    assert auth_get(server, "get-session", carol["token"]).json()["user"]["email"] == carol["user"]["email"]


def test_change_email_link_followed_in_another_users_session_is_refused(server: BrainServer, inbox: Inbox) -> None:
    ada, bob = new_account(server), new_account(server)
    new = unique_email("elsewhere")
    assert post(server, "change-email", ada["token"], {"newEmail": new}).status_code == 200
    link = link_in(inbox.wait(new)).split("&")[0]
    r = requests.get(link, headers=bearer(bob["token"]), allow_redirects=False, timeout=10)
    assert r.status_code == 401 and r.json()["code"] == "INVALID_USER"
    assert get(link).status_code == 200  # not spent by the refusal
    assert auth_get(server, "get-session", ada["token"]).json()["user"]["email"] == new


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"newEmail": "not an address"}, 400, "INVALID_EMAIL"),
    ({"newEmail": "a@b.example\r\nBcc: x@y.example"}, 400, "INVALID_EMAIL"),
    ({}, 400, "VALIDATION_ERROR"),
    ({"newEmail": 7}, 400, "VALIDATION_ERROR"),
    ({"newEmail": "ok@example.com", "callbackURL": "https://evil.example/x"}, 403, "INVALID_CALLBACK_URL"),
])
def test_change_email_checks_its_input(server: BrainServer, body: dict[str, Any], status: int, code: str) -> None:
    ada = new_account(server)
    r = post(server, "change-email", ada["token"], body)
    assert r.status_code == status and r.json()["code"] == code, r.text
    assert "newEmail" in r.json()["message"] or code == "INVALID_CALLBACK_URL"
    r = post(server, "change-email", ada["token"], {"newEmail": ada["user"]["email"].upper()})
    assert r.status_code == 400 and r.json()["message"] == "Email is the same"
    assert post(server, "change-email", None, {"newEmail": "x@example.com"}).status_code == 401


def test_change_email_can_be_turned_off(make_server, smtp: tuple[Inbox, int]) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    server = make_server(config=mail_config(smtp[1], change_email_enabled=False)).start()
    ada = new_account(server)
    r = post(server, "change-email", ada["token"], {"newEmail": unique_email("off")})
    assert r.status_code == 400 and r.json()["code"] == "CHANGE_EMAIL_DISABLED"
