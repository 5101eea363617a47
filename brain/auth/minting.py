"""JWT minting: RS256 with the key ring snapshot, standard claims plus what plugins add."""

from __future__ import annotations

import json
import logging
from typing import Any

import pluggy

from brain.auth.keys import KeyRing
from brain.auth.settings import jwt_issuer
from brain.clock import steady_time
from brain.config import Settings

log = logging.getLogger("brain.auth.minting")

# Claims the issuer sets itself; a plugin may not replace them (nor the identity it vouches for).
RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "id", "email", "emailVerified", "name"})


def plugin_claims(pm: pluggy.PluginManager, user: dict[str, Any]) -> dict[str, Any]:
    """Claims from the `jwt_claims` hooks, without reserved or non-JSON values (those are logged)."""
    extra: dict[str, Any] = {}
    for result in pm.hook.jwt_claims(user=user):
        if not isinstance(result, dict):
            log.error("a jwt_claims hook returned %s, not a dict; ignored", type(result).__name__)
            continue
        for key, value in result.items():
            if not isinstance(key, str) or key in RESERVED_CLAIMS:
                log.error("a jwt_claims hook may not set reserved claim %r; refused", key)
                continue
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                log.error("a jwt_claims hook returned a non-JSON value for %r; refused", key)
                continue
            # Two plugins setting one claim: the one pluggy calls first (registered last) wins.
            extra.setdefault(key, value)
    return extra


def mint(ring: KeyRing, settings: Settings, pm: pluggy.PluginManager, user: dict[str, Any]) -> str:
    """A fresh JWT for a user (the public user object)."""
    # The steady clock (brain.clock): a token minted after this machine's clock stepped back
    # must not reach the API already expired.
    now = int(steady_time())
    claims: dict[str, Any] = plugin_claims(pm, user)
    claims.update(
        {
            "iss": jwt_issuer(settings),
            "aud": settings.auth.audience,
            "sub": user["id"],
            "iat": now,
            "exp": now + settings.auth.jwt_ttl_seconds,
            # Better Auth's default payload is the user; these are the fields worth carrying.
            "email": user["email"],
            "name": user["name"],
            "emailVerified": user["emailVerified"],
        }
    )
    return ring.sign(claims)
