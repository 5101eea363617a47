"""schemathesis hooks for the contract run over the auth operations that change who is signed in.

Loaded only by that run (SCHEMATHESIS_HOOKS=tests.schemathesis_hooks, tests/test_openapi_contract.py):
- every generated request signs up a user of its own first and carries that user's session
  token, so changing the password or the email, deleting the user, turning on two-factor or
  revoking a key spoils nothing for the next request;
- the current password, which only the user knows, is the user's real one wherever a request
  carries it as text; schemathesis then re-judges whether the request is valid, so a request
  whose only flaw was the password is not counted as invalid.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import requests
import schemathesis

# Body fields that hold the signed-in user's current password.
PASSWORD_FIELDS = ("password", "currentPassword")
_users = itertools.count()


@schemathesis.auth(refresh_interval=None)
class FreshUser:
    """A newly signed-up user's session token for each request (no caching: refresh_interval=None)."""

    def get(self, case: Any, context: Any) -> str:
        email = f"contract-{os.getpid()}-{next(_users)}@example.com"
        body = {"name": "Contract", "email": email, "password": os.environ["BRAIN_TEST_PASSWORD"]}
        r = requests.post(f"{os.environ['BRAIN_AUTH_URL']}/api/auth/sign-up/email", json=body, timeout=30)
        r.raise_for_status()
        return str(r.json()["token"])

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """The user's real password in the fields that ask for it (when the request sends one as text)."""
    if isinstance(case.body, dict):
        for name in PASSWORD_FIELDS:
            if isinstance(case.body.get(name), str):
                case.body[name] = os.environ["BRAIN_TEST_PASSWORD"]
