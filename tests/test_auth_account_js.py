"""Compatibility: Better Auth 1.7's own client, with its twoFactorClient and apiKeyClient
(@better-auth/api-key), drives sessions, account changes, two-factor and API keys
(tests/js/account.mjs); jose verifies every JWT. The change of address is finished here by
following the mailed links (received by aiosmtpd in this process)."""

from __future__ import annotations

import requests

from tests.test_auth_email import Inbox, get, link_in, mail_config, smtp  # noqa: F401 - smtp is a fixture
from tests.test_auth_helpers import bearer
from tests.test_auth_js import Steps, run_node


def test_better_auth_client_drives_sessions_account_two_factor_and_api_keys(make_server, smtp: tuple[Inbox, int]) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    inbox = smtp[0]
    server = make_server(config=mail_config(smtp[1], two_factor_rate_limit_max=100_000)).start()
    steps = Steps(run_node("account.mjs", server))
    ok, error = steps.ok, steps.error

    user = ok("signUp")["user"]
    email = user["email"]

    # Sessions: listed (the caller's with its token, the others with a handle), revoked one by one
    # and all-but-this-one; revoked devices have no session any more.
    listed = ok("listSessions")
    assert len(listed) == 3 and listed[0]["token"] == ok("signUp")["token"]
    assert ok("revokeLaptop") == {"status": True} and ok("laptopAfterRevoke") is None
    assert ok("phoneStillIn")["user"]["id"] == user["id"]
    assert ok("revokeOthers") == {"status": True} and ok("phoneAfterRevokeOthers") is None
    assert [s["id"] for s in ok("listAfterRevokes")] == [listed[0]["id"]]

    # Account changes.
    assert ok("updateUser") == {"status": True}
    assert ok("sessionAfterUpdate")["user"]["name"] == "Renamed User"
    assert ok("sessionAfterUpdate")["user"]["image"] == "https://example.com/me.png"
    refused = error("updateUserControlChars")
    assert refused["status"] == 400 and refused["code"] == "VALIDATION_ERROR" and "name" in refused["message"]
    assert error("updateUserEmail")["code"] == "EMAIL_CAN_NOT_BE_UPDATED"
    assert error("changePasswordWrong") == {"status": 400, "code": "INVALID_PASSWORD", "message": "Invalid password"}
    assert ok("changePasswordKeep")["token"] is None and ok("signInPhoneAgain")["token"]
    changed = steps["changePasswordRevoke"]
    assert changed["error"] is None and changed["data"]["token"] and changed["bearerChanged"] is True
    assert ok("phoneAfterPasswordRevoke") is None
    assert ok("mainAfterPasswordRevoke")["session"]["token"] == changed["data"]["token"]
    assert ok("changeEmail") == {"status": True}

    # Two-factor.
    enabled = ok("enable2fa")
    assert enabled["method"] == "totp" and enabled["totpURI"].startswith("otpauth://totp/brain:") and len(enabled["backupCodes"]) == 10
    assert ok("verifyTotpEnabling")["user"]["twoFactorEnabled"] is True
    assert ok("getTotpUri")["totpURI"] == enabled["totpURI"]
    assert len(ok("generateBackupCodes")["backupCodes"]) == 10
    signed_in = steps["signIn2fa"]
    assert signed_in["data"] == {"twoFactorRedirect": True, "twoFactorMethods": ["totp"]}
    assert signed_in["cookies"] == ["better-auth.two_factor"] and signed_in["redirects"] == 1
    assert error("verifyTotpWrong") == {"status": 401, "code": "INVALID_CODE", "message": "Invalid code"}
    verified = steps["verifyTotpSignIn"]
    assert verified["error"] is None and verified["data"]["token"] and verified["data"]["user"]["email"] == email
    assert "better-auth.two_factor" not in verified["cookies"] and verified["bearer"].startswith(verified["data"]["token"])
    assert ok("sessionAfter2fa")["session"]["token"] == verified["data"]["token"]
    assert ok("verifyBackupCode")["token"]
    assert error("verifyBackupCodeReuse")["code"] == "INVALID_BACKUP_CODE"
    assert ok("verifyOtherBackupCode")["token"]
    assert ok("disable2fa") == {"status": True}
    assert ok("signInWithout2fa")["token"] and ok("signInWithout2fa")["user"]["twoFactorEnabled"] is False

    # API keys: created, listed, read, renamed, used on the API role within their scopes, deleted.
    created = ok("createKey")
    assert created["key"].startswith("brain_") and created["name"] == "reader"
    assert created["permissions"] == {"events": ["read"]} and created["metadata"] == {"purpose": "compat"}
    assert ok("listKeys")["total"] == 2 and all("key" not in k for k in ok("listKeys")["apiKeys"])
    assert ok("getKey")["id"] == created["id"] and ok("updateKey")["name"] == "events reader"
    assert error("serverOnlyField")["code"] == "SERVER_ONLY_PROPERTY"
    for name in ("apiMeWithKey", "apiMeWithBearerKey"):
        me = steps[name]
        assert me["status"] == 200 and me["body"]["id"] == user["id"]
        assert me["body"]["auth"] == {"method": "api_key", "keyId": created["id"], "scopes": ["events:read"]}
    assert steps["apiEventsRead"]["status"] == 200
    assert steps["apiEventsWrite"]["status"] == 403 and steps["apiEventsWrite"]["body"]["code"] == "INSUFFICIENT_SCOPE"
    assert steps["apiEventsWriteFullKey"]["status"] == 201
    assert steps["apiMeWithJwt"]["body"]["auth"] == {"method": "jwt"}
    assert ok("deleteKey") == {"success": True}
    after = steps["apiMeAfterDelete"]
    assert after["status"] == 401 and after["body"]["code"] == "INVALID_API_KEY" and after["challenge"].startswith("Bearer")
    assert ok("listAfterDelete")["total"] == 1

    # jose verified every JWT the client was handed (sign-up, sign-ins, 2FA, change-password, sessions).
    verified_jwts = steps["verify"]
    assert len(verified_jwts) >= 8
    for name, result in verified_jwts.items():
        assert result["ok"] is True and result["sub"] == user["id"], (name, result)
    assert any("verify-totp" in name for name in verified_jwts) and any("change-password" in name for name in verified_jwts)

    # The change of address the client asked for: the account was not verified, so the link went
    # straight to the new address; until it is followed the old address stays.
    new = f"new-{email}"
    link = link_in(inbox.wait(new))
    assert requests.get(f"{server.auth_url}/api/auth/get-session", headers=bearer(ok("signInWithout2fa")["token"]),
                        timeout=10).json()["user"]["email"] == email
    r = get(link)
    assert r.status_code == 302 and r.headers["Location"] == "/settings"
    session = requests.get(f"{server.auth_url}/api/auth/get-session", headers=bearer(ok("signInWithout2fa")["token"]),
                           timeout=10).json()
    assert session["user"]["email"] == new and session["user"]["emailVerified"] is True
