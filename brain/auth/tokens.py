"""JWT minting: RS256 with the key ring snapshot, standard claims plus what plugins add."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pluggy

from brain.auth.keys import KeyRing
from brain.config import Settings

log = logging.getLogger("brain.auth.tokens")

# Claims the issuer sets itself; a plugin may not replace them (nor the identity it vouches for).
RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "id", "email", "emailVerified", "name"})


def plugin_claims(pm: pluggy.PluginManager, user: dict[str, Any]) -> dict[str, Any]:
    """Claims from the `jwt_claims` hooks, without reserved or non-JSON values (those are logged)."""
    extra: dict[str, Any] = {}
    for impl in reversed(pm.hook.jwt_claims.get_hookimpls()):
        # Called one by one so a refused claim can be blamed on the plugin that sent it.
        result = impl.function(**{name: user for name in impl.argnames if name == "user"})
        if result is None:
            continue
        if not isinstance(result, dict):
            log.error("plugin %s: jwt_claims returned %s, not a dict; ignored", impl.plugin_name, type(result).__name__)
            continue
        for key, value in result.items():
            if not isinstance(key, str) or key in RESERVED_CLAIMS:
                log.error("plugin %s: jwt_claims may not set reserved claim %r; refused", impl.plugin_name, key)
                continue
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                log.error("plugin %s: jwt_claims value for %r is not JSON; refused", impl.plugin_name, key)
                continue
            extra[key] = value
    return extra


def mint(ring: KeyRing, settings: Settings, pm: pluggy.PluginManager, user: dict[str, Any]) -> str:
    """A fresh JWT for a user (the public user object)."""
    now = int(time.time())
    claims: dict[str, Any] = plugin_claims(pm, user)
    claims.update(
        {
            "iss": settings.jwt_issuer,
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
