"""The auth role's half of the contract (tests/test_openapi_contract.py has the API role's and
the harness): `schemathesis run --checks all` over the auth role, in its own file so that xdist
runs it beside the API role's half.
"""

from __future__ import annotations

import pytest

from tests.support import BrainServer
from tests.test_openapi_contract import RUN_TIMEOUT, assert_clean, schemathesis
from tests.test_openapi_contract import server  # noqa: F401 - fixture

# The operations that keep who the run is signed in as: one user, the stateful phase included.
AUTH_OPERATIONS = [
    "signUpEmail", "signInEmail", "getSession", "token", "signOut", "jwks", "authOk", "openidConfiguration",
    "sendVerificationEmail", "verifyEmail", "requestPasswordReset", "forgetPassword", "resetPasswordCallback",
    "resetPassword", "listUserSessions", "revokeSession", "revokeSessions", "revokeOtherSessions", "updateUser",
    "examplesIndex", "examplesConfig", "exampleFile",
]
# The auth role's operations that change who is signed in, or what they sign in with: run with a
# fresh user per request, since each can spoil the user for the requests after it.
IDENTITY_OPERATIONS = [
    "changePassword", "changeEmail", "deleteUser", "createApiKey", "deleteApiKey", "getApiKey", "listApiKeys",
    "updateApiKey", "verifyApiKey", "listUserAccounts", "unlinkAccount", "enableTwoFactor", "disableTwoFactor",
    "getTOTPURI", "generateBackupCodes", "verifyTOTP", "verifyBackupCode", "listPasskeys", "updatePasskey",
    "deletePasskey", "generatePasskeyRegistrationOptions", "passkeyGenerateAuthenticateOptions",
    "passkeyVerifyRegistration", "passkeyVerifyAuthentication", "socialSignIn", "linkSocialAccount",
    "handleOAuthCallback", "handleOAuthCallbackPost", "errorPage",
]


@pytest.mark.timeout(RUN_TIMEOUT)
def test_auth_role_keeps_its_contract(server: BrainServer) -> None:
    ids = [arg for op in AUTH_OPERATIONS for arg in ("--include-operation-id", op)]
    code, report = schemathesis(server, server.auth_url, *ids)
    assert_clean(code, report)
    assert "Traceback" not in server.log_text(), server.log_text()[-3000:]


@pytest.mark.timeout(RUN_TIMEOUT)
def test_auth_operations_that_change_identity_keep_their_contract(server: BrainServer) -> None:
    # No stateful phase here: its chains of requests would each be sent as a different user.
    ids = [arg for op in IDENTITY_OPERATIONS for arg in ("--include-operation-id", op)]
    code, report = schemathesis(server, server.auth_url, *ids, "--phases", "examples,coverage,fuzzing", fresh_users=True)
    assert_clean(code, report)
    assert "Traceback" not in server.log_text(), server.log_text()[-3000:]
