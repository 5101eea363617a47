"""Passkeys in a real browser: headless Chromium with its virtual authenticator.

tests/test_auth_passkeys.py drives the ceremonies with a software authenticator written for the
tests; here Chromium itself makes the credential (`navigator.credentials.create()`) and the
assertion (`navigator.credentials.get()`) from the options brain gives, through WebDriver's
virtual authenticator (CTAP2, internal transport, resident keys, user verified), so the options'
wire format, the base64url fields and the origin/RP ID rules are the ones a browser applies.

Chromium refuses an IP address as RP ID, so the server's public URL is `http://localhost:<port>`
(a secure context over http): the page is brain's own origin, and its RP ID is `localhost`.
"""

from __future__ import annotations

from typing import Any

from selenium import webdriver
from selenium.webdriver.common.virtual_authenticator import Protocol, Transport, VirtualAuthenticatorOptions

from tests.support import BrainServer, free_port
from tests.test_auth_helpers import NO_LIMITS, PASSWORD, unique_email
from tests.test_browser import browser  # noqa: F401  (the Chromium fixture)

# Runs in the page: each step's answer (status and JSON) or the browser's own error, so a
# failure names the step. Better Auth's options are WebAuthn's JSON forms, which Chromium parses
# itself (PublicKeyCredential.parse*OptionsFromJSON) and answers with credential.toJSON().
CEREMONIES = """
const [email, password, done] = arguments;
const steps = {};
async function call(name, method, path, body) {
  const response = await fetch(path, {
    method, credentials: "include",
    headers: body === undefined ? {} : {"content-type": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let json = null;
  try { json = await response.json(); } catch (e) {}
  steps[name] = {status: response.status, json};
  if (!response.ok) throw new Error(name + " answered " + response.status + " " + JSON.stringify(json));
  return json;
}
(async () => {
  await call("sign-up", "POST", "/api/auth/sign-up/email", {email, password, name: "Passkey Person"});
  const creation = await call("register-options", "GET", "/api/auth/passkey/generate-register-options");
  const created = await navigator.credentials.create(
    {publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(creation)});
  await call("verify-registration", "POST", "/api/auth/passkey/verify-registration",
             {response: created.toJSON(), name: "chromium"});
  await call("list", "GET", "/api/auth/passkey/list-user-passkeys");
  await call("sign-out", "POST", "/api/auth/sign-out", {});
  await call("session-after-sign-out", "GET", "/api/auth/get-session");
  const request = await call("authenticate-options", "GET", "/api/auth/passkey/generate-authenticate-options");
  const asserted = await navigator.credentials.get(
    {publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(request)});
  await call("verify-authentication", "POST", "/api/auth/passkey/verify-authentication", {response: asserted.toJSON()});
  await call("session", "GET", "/api/auth/get-session");
  // The same assertion again: its challenge was used, and the counter has moved on.
  try {
    await call("replay", "POST", "/api/auth/passkey/verify-authentication", {response: asserted.toJSON()});
  } catch (e) {}
  done({steps});
})().catch((e) => done({steps, error: String(e)}));
"""


def test_chromium_registers_a_passkey_and_signs_in_with_it(browser: webdriver.Chrome, make_server: Any) -> None:  # noqa: F811
    port = free_port()
    server: BrainServer = make_server(
        auth_port=port, config={"server": {"public_url": f"http://localhost:{port}"}, "auth": dict(NO_LIMITS)},
    ).start()
    options = VirtualAuthenticatorOptions()
    options.protocol = Protocol.CTAP2
    options.transport = Transport.INTERNAL
    options.has_resident_key = True
    options.has_user_verification = True
    options.is_user_verified = True
    browser.add_virtual_authenticator(options)
    browser.get(f"http://localhost:{port}/api/auth/ok")
    browser.set_script_timeout(30)
    email = unique_email("passkey-browser")

    result = browser.execute_async_script(CEREMONIES, email, PASSWORD)

    steps = result["steps"]
    assert "error" not in result, (result["error"], steps)
    (passkey,) = steps["list"]["json"]
    assert passkey["name"] == "chromium" and passkey["backedUp"] is False
    assert steps["session-after-sign-out"]["json"] is None  # signed out: the sign-in below is the passkey's
    signed_in = steps["verify-authentication"]["json"]
    assert signed_in["user"]["email"] == email and signed_in["token"]
    assert steps["session"]["json"]["user"]["email"] == email  # the passkey's session cookie works
    assert steps["replay"]["status"] == 400, steps["replay"]
    # Chromium's credential is the one stored: the authenticator holds exactly the registered id.
    (credential,) = browser.get_credentials()
    assert credential.id == passkey["credentialID"] or passkey["credentialID"].rstrip("=") in credential.id
    assert server.log_text().count(" 500 ") == 0
