"""Passkeys (WebAuthn credentials): the ceremonies of Better Auth 1.7's passkey plugin, checked
with py_webauthn.

A ceremony has two steps. The options step makes a challenge (32 random bytes) and keeps it, with
the ceremony that minted it (`registration` or `authentication`) and the user it is for, as a
browser flow (`brain.auth.flows`): a FlowState row under the hash of a random token that the
signed `better-auth.better-auth-passkey` cookie carries for `CHALLENGE_TTL_S`. The verify step
takes the row (deletes it, whatever the outcome: a challenge is good once) and checks the
authenticator's response against it with py_webauthn:

- clientDataJSON: its type (`webauthn.create` / `webauthn.get`), the challenge, and the origin,
  which must equal the request's `Origin` — already known to be trusted (the origin middleware
  refuses any other), which is Better Auth's rule when its `origin` option is unset;
- authenticator data: the SHA-256 of the RP ID, user presence, and user verification when
  `passkey_user_verification = "required"` (Better Auth never requires it);
- the attestation statement (`none`, `packed`, `tpm`, ...). No attestation root is trusted: as
  Better Auth asks for attestation `none`, an attestation proves only that the key signed it;
- at sign-in, the signature against the stored public key and the signature counter: an
  authenticator that counts must count up, or it is a clone and is refused. The counter is
  written back only if nobody else moved it meanwhile (one use of a count).

The `*_tx` functions change auth.db; they run inside the AuthIssuer's transaction
(`ctx.issuer("write", fn=fn, ...)`).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from webauthn import verify_authentication_response, verify_registration_response
from webauthn.helpers import (
    base64url_to_bytes, bytes_to_base64url, decode_credential_public_key, decoded_public_key_to_cryptography,
)
from webauthn.helpers.exceptions import WebAuthnException
from webauthn.helpers.structs import CredentialDeviceType

from brain.auth.db import Passkey, Session, iso
from brain.config import Settings
from brain.control_chars import escape_control
from brain.errors import BadRequest
from brain.ids import new_id

log = logging.getLogger("brain.auth.passkeys")

# Better Auth's MAX_AGE_IN_SECONDS: the challenge cookie and its row live five minutes.
CHALLENGE_TTL_S = 300
FLOW_KIND = "passkey"
REGISTRATION = "registration"
AUTHENTICATION = "authentication"
# What the browser may spend on the ceremony (SimpleWebAuthn's default, which Better Auth keeps).
TIMEOUT_MS = 60_000
# EdDSA, ES256, RS256: what Better Auth offers (SimpleWebAuthn's defaults) and py_webauthn accepts.
ALGORITHMS = (-8, -7, -257)
# A user's passkeys are listed in every registration's excludeCredentials; bound them so
# neither that list nor auth.db grows without end (Better Auth has no bound).
MAX_PER_USER = 100
# A credential id is at most 1023 bytes (WebAuthn): 1364 characters of base64url.
MAX_CREDENTIAL_ID = 1364
# A transport name as browsers write them ("usb", "internal", "hybrid", "smart-card", ...).
_TRANSPORT = re.compile(r"[a-z][a-z-]{0,31}")
_MAX_TRANSPORTS = 8
_DEVICE_TYPES = {CredentialDeviceType.SINGLE_DEVICE: "singleDevice", CredentialDeviceType.MULTI_DEVICE: "multiDevice"}
_USER_HANDLE_ALPHABET = string.ascii_lowercase + string.digits
_MAX_REASON = 200


def rp_id(settings: Settings) -> str:
    """The relying party's id: `auth.passkey_rp_id`, else the host of the auth role's public URL."""
    return settings.auth.passkey_rp_id or urlsplit(settings.auth_public_url).hostname or "localhost"


def _challenge() -> str:
    return bytes_to_base64url(os.urandom(32))


def _descriptor(row: Passkey) -> dict[str, Any]:
    """A stored passkey as excludeCredentials/allowCredentials name it."""
    out: dict[str, Any] = {"id": row.credential_id}
    transports = [t for t in row.transports.split(",") if t]
    if transports:
        out["transports"] = transports
    out["type"] = "public-key"
    return out


def registration_options(
    *, rp_id: str, rp_name: str, user_name: str, display_name: str, user_verification: str,
    attachment: str | None, existing: list[Passkey],
) -> dict[str, Any]:
    """PublicKeyCredentialCreationOptionsJSON as Better Auth's generate-register-options answers it."""
    selection: dict[str, Any] = {"residentKey": "preferred", "userVerification": user_verification}
    if attachment is not None:
        selection["authenticatorAttachment"] = attachment
    selection["requireResidentKey"] = False
    # Better Auth's user handle: 32 random characters, new for every registration (it never
    # looks a user up by it).
    handle = "".join(secrets.choice(_USER_HANDLE_ALPHABET) for _ in range(32))
    return {
        "challenge": _challenge(),
        "rp": {"name": rp_name, "id": rp_id},
        "user": {"id": bytes_to_base64url(handle.encode()), "name": user_name, "displayName": display_name},
        "pubKeyCredParams": [{"alg": alg, "type": "public-key"} for alg in ALGORITHMS],
        "timeout": TIMEOUT_MS,
        "attestation": "none",
        "excludeCredentials": [_descriptor(row) for row in existing],
        "authenticatorSelection": selection,
        "extensions": {"credProps": True},
        "hints": [],
    }


def authentication_options(*, rp_id: str, user_verification: str, allowed: list[Passkey]) -> dict[str, Any]:
    """PublicKeyCredentialRequestOptionsJSON as Better Auth's generate-authenticate-options answers
    it (allowCredentials only for a signed-in user with passkeys)."""
    options: dict[str, Any] = {"rpId": rp_id, "challenge": _challenge()}
    if allowed:
        options["allowCredentials"] = [_descriptor(row) for row in allowed]
    options["timeout"] = TIMEOUT_MS
    options["userVerification"] = user_verification
    return options


def _reason(exc: Exception) -> str:
    """What py_webauthn found wrong, fit for a message (its own errors say; others do not)."""
    if isinstance(exc, WebAuthnException):
        return escape_control(str(exc))[:_MAX_REASON]
    return "malformed response"


def transports_of(response: dict[str, Any]) -> str:
    """The transports a registration response names, as Better Auth stores them ("usb,nfc")."""
    inner = response.get("response")
    value = inner.get("transports") if isinstance(inner, dict) else None
    if value is None:
        return ""
    if (not isinstance(value, list) or len(value) > _MAX_TRANSPORTS
            or not all(isinstance(t, str) and _TRANSPORT.fullmatch(t) for t in value)):
        raise BadRequest(f"[body.response.response.transports] must be a list of at most {_MAX_TRANSPORTS} transport "
                         "names (usb, nfc, ble, internal, hybrid, ...)", code="VALIDATION_ERROR")
    return ",".join(dict.fromkeys(value))


@dataclass(frozen=True)
class NewPasskey:
    """A verified registration: what auth.db keeps of the credential."""

    credential_id: str
    public_key: str
    counter: int
    device_type: str
    backed_up: bool
    transports: str
    aaguid: str


def usable_public_key(cose: bytes) -> bool:
    """Whether a COSE key is a public key signatures can be checked with (an algorithm py_webauthn
    knows, a point on its curve, every member there)."""
    try:
        decoded_public_key_to_cryptography(decode_credential_public_key(cose))
    # Decoding reads CBOR the client chose: its failures come as any of KeyError, IndexError,
    # TypeError, ValueError or py_webauthn's own errors.
    except Exception:  # noqa: BLE001
        return False
    return True


def verify_registration(response: dict[str, Any], *, challenge: str, origin: str, rp_id: str,
                        require_uv: bool) -> NewPasskey:
    """The credential a registration response creates; 400 FAILED_TO_VERIFY_REGISTRATION naming
    what is wrong with it."""
    transports = transports_of(response)
    try:
        verified = verify_registration_response(
            credential=response, expected_challenge=base64url_to_bytes(challenge), expected_origin=origin,
            expected_rp_id=rp_id, require_user_verification=require_uv,
        )
    # py_webauthn parses attacker-chosen base64, CBOR, COSE keys and X.509 chains: besides its
    # own errors, a malformed value surfaces from deep inside as KeyError, IndexError, TypeError,
    # ValueError or an OpenSSL error. Each means the response is not valid: the client's fault.
    except Exception as exc:  # noqa: BLE001 - see above
        raise BadRequest(f"Failed to verify registration: {_reason(exc)}",
                         code="FAILED_TO_VERIFY_REGISTRATION") from None
    # With attestation `none` nothing has used the key yet: a point off its curve or a
    # malformed COSE key would be stored, and no sign-in could ever verify with it.
    if not usable_public_key(verified.credential_public_key):
        raise BadRequest("Failed to verify registration: the credential's public key is not a usable key",
                         code="FAILED_TO_VERIFY_REGISTRATION")
    return NewPasskey(
        credential_id=bytes_to_base64url(verified.credential_id),
        # Better Auth's column: the COSE key in standard base64.
        public_key=base64.b64encode(verified.credential_public_key).decode(),
        counter=verified.sign_count,
        device_type=_DEVICE_TYPES[verified.credential_device_type],
        backed_up=verified.credential_backed_up,
        transports=transports,
        aaguid=verified.aaguid,
    )


def verify_authentication(response: dict[str, Any], *, challenge: str, origin: str, rp_id: str, require_uv: bool,
                          passkey: Passkey) -> int:
    """The authenticator's new signature count, for a valid assertion by `passkey`; else 400
    AUTHENTICATION_FAILED (why goes to the log: the caller is not signed in, and py_webauthn's
    reasons would tell them the stored count)."""
    try:
        verified = verify_authentication_response(
            credential=response, expected_challenge=base64url_to_bytes(challenge), expected_origin=origin,
            expected_rp_id=rp_id, credential_public_key=base64.b64decode(passkey.public_key),
            credential_current_sign_count=passkey.counter, require_user_verification=require_uv,
        )
    except Exception as exc:  # noqa: BLE001 - as in verify_registration: every failure is the response's
        log.info("passkey sign-in refused: %s", _reason(exc))
        raise BadRequest("Authentication failed", code="AUTHENTICATION_FAILED") from None
    return verified.new_sign_count


def passkey_json(row: Passkey) -> dict[str, Any]:
    """Better Auth's passkey object."""
    return {
        "id": row.id, "name": row.name, "publicKey": row.public_key,
        "userId": row.user_id,  # type: ignore[attr-defined]
        "credentialID": row.credential_id, "counter": row.counter, "deviceType": row.device_type,
        "backedUp": bool(row.backed_up), "transports": row.transports, "createdAt": iso(row.created_at),
        "aaguid": row.aaguid,
    }


# --- writes, run in the AuthIssuer (AuthIssuer.write) ---------------------------------------


def register_tx(*, now: int, new_session: Callable[..., Session], user_id: str, passkey: dict[str, Any],
                name: str | None, session: dict[str, Any] | None) -> tuple[Passkey, Session | None]:
    """Store a verified credential for the user (and, with session fields, open a session)."""
    if Passkey.select().where(Passkey.credential_id == passkey["credential_id"]).exists():
        raise BadRequest("Previously registered", code="PREVIOUSLY_REGISTERED")
    if Passkey.select().where(Passkey.user == user_id).count() >= MAX_PER_USER:
        raise BadRequest(f"A user has at most {MAX_PER_USER} passkeys: delete one first", code="TOO_MANY_PASSKEYS")
    row = Passkey.create(id=new_id(), user=user_id, name=name, created_at=now, **passkey)
    return row, (new_session(user_id, **session) if session is not None else None)


def sign_in_tx(*, now: int, new_session: Callable[..., Session], passkey_id: str, counter: int, new_counter: int,
               session: dict[str, Any]) -> Session | None:
    """Record the passkey's new count and open a session; None if the count moved meanwhile (the
    same count used twice) or the passkey is gone."""
    moved = (Passkey.update(counter=new_counter)
             .where((Passkey.id == passkey_id) & (Passkey.counter == counter)).execute())
    if not moved:
        return None
    row = Passkey.get_by_id(passkey_id)
    return new_session(row.user_id, **session)


def rename_tx(*, now: int, new_session: Callable[..., Session], user_id: str, passkey_id: str,
              name: str) -> Passkey | None:
    """Rename one of the user's passkeys; None if the user has no such passkey."""
    if not Passkey.update(name=name).where((Passkey.id == passkey_id) & (Passkey.user == user_id)).execute():
        return None
    return Passkey.get_by_id(passkey_id)


def delete_tx(*, now: int, new_session: Callable[..., Session], user_id: str, passkey_id: str) -> bool:
    """Delete one of the user's passkeys; False if the user has no such passkey."""
    return bool(Passkey.delete().where((Passkey.id == passkey_id) & (Passkey.user == user_id)).execute())
