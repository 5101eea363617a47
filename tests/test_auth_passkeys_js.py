"""Compatibility: Better Auth 1.7's own client ($fetch; its passkey plugin is not published for
1.7.25) lists, renames and deletes passkeys and signs in with one (tests/js/passkey.mjs); the
passkey is registered here with the software authenticator, whose key the script signs with."""

from __future__ import annotations

from tests.fakes.authenticator import SoftAuthenticator
from tests.test_auth_helpers import NO_LIMITS, PASSWORD
from tests.test_auth_js import Steps, run_node
from tests.test_auth_passkeys import signed_in


def test_better_auth_client_manages_passkeys_and_signs_in_with_one(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(config={"auth": NO_LIMITS}).start()
    user, browser = signed_in(server)
    key = SoftAuthenticator()
    assert browser.register(key, name="Laptop").status_code == 200
    _other, other_browser = signed_in(server)
    assert other_browser.register(SoftAuthenticator()).status_code == 200
    others = other_browser.passkeys()

    steps = Steps(run_node("passkey.mjs", server, EMAIL=user["email"], PASSWORD=PASSWORD, KEY_PEM=key.private_pem(),
                           CREDENTIAL_ID=key.id, OTHER_PASSKEY_ID=others[0]["id"]))
    ok, error = steps.ok, steps.error

    listed = ok("list")
    assert [(p["name"], p["credentialID"], p["userId"]) for p in listed] == [("Laptop", key.id, user["id"])]
    assert ok("rename") == {"passkey": {**listed[0], "name": "Renamed by the client"}}
    for name in ("renameOthers", "deleteOthers"):
        assert error(name) == {"status": 404, "code": "PASSKEY_NOT_FOUND", "message": "Passkey not found"}
    assert other_browser.passkeys() == others
    assert ok("sessionAfterSignOut") is None

    assert ok("options")["rpId"] == "127.0.0.1" and steps["options"]["cookies"] == ["better-auth.better-auth-passkey"]
    signed = steps["signInPasskey"]
    assert signed["error"] is None and signed["data"]["user"]["id"] == user["id"], signed
    assert set(signed["data"]) == {"token", "user", "session", "jwt"}
    assert signed["bearer"].startswith(signed["data"]["token"] + ".")  # set-auth-token, which the client keeps
    assert signed["cookies"] == ["better-auth.session_token"]  # the challenge cookie is gone
    assert error("replay") == {"status": 400, "code": "AUTHENTICATION_FAILED", "message": "Authentication failed"}
    assert ok("session")["session"]["token"] == signed["data"]["token"]
    assert ok("delete") == {"status": True} and ok("listAfterDelete") == []

    verified = steps["verify"]
    assert any("verify-authentication" in name for name in verified) and len(verified) >= 2
    for name, result in verified.items():
        assert result == {"ok": True, "sub": user["id"]}, (name, result)
