"""Signed control messages: only brain itself can tell an API role to delete a user.

Whoever can publish on the NATS that brain's roles share (another service, a leaked client
credential) could otherwise send `brain.control.user-deleted` and wipe a user. Every control
message therefore carries, in headers,

    Brain-Expires:    unix seconds after which it is refused
    Brain-Signature:  v1=<hex HMAC-SHA256 over "v1", the subject, the expiry, the Nats-Msg-Id
                      and the payload>

under a key derived (HKDF-SHA256) from the server secret, which the roles of one deployment
share. A receiver refuses (and logs) a message that is unsigned, badly signed, expired, or whose
expiry lies further ahead than `CONTROL_TTL_S`: a signer cannot make a message that never
expires. The bound equals how long the control stream keeps messages, so an API role that was
down catches up on every deletion still in the stream and accepts nothing older.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

CONTROL_TTL_S = 30 * 86400
EXPIRES_HEADER = "Brain-Expires"
SIGNATURE_HEADER = "Brain-Signature"
MSG_ID_HEADER = "Nats-Msg-Id"
_VERSION = "v1"
_HKDF_INFO = b"brain NATS control messages v1"
# Clocks of the roles may differ a little: an expiry this far beyond the bound is still fine.
_CLOCK_SKEW_S = 300


def control_key(secret: bytes) -> bytes:
    """The HMAC key of control messages, derived from the server secret."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret)


def _mac(key: bytes, subject: str, expires: str, msg_id: str, payload: bytes) -> str:
    signed = "\n".join((_VERSION, subject, expires, msg_id)).encode() + b"\n" + payload
    return f"{_VERSION}={hmac.new(key, signed, hashlib.sha256).hexdigest()}"


def signed_headers(key: bytes, subject: str, payload: bytes, msg_id: str, *, now: float | None = None) -> dict[str, str]:
    """The headers that make `payload` on `subject` a control message receivers accept."""
    expires = str(int((time.time() if now is None else now) + CONTROL_TTL_S))
    return {
        MSG_ID_HEADER: msg_id,
        EXPIRES_HEADER: expires,
        SIGNATURE_HEADER: _mac(key, subject, expires, msg_id, payload),
    }


def refusal(
    key: bytes, subject: str, payload: bytes, headers: Mapping[str, str] | None, *, now: float | None = None
) -> str | None:
    """Why a received control message must be refused; None when it is genuine and current."""
    headers = headers or {}
    signature, expires = headers.get(SIGNATURE_HEADER), headers.get(EXPIRES_HEADER)
    if not signature or not expires:
        return "unsigned"
    if not expires.isdigit():
        return f"malformed {EXPIRES_HEADER}"
    expected = _mac(key, subject, expires, headers.get(MSG_ID_HEADER, ""), payload)
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        return "bad signature"
    now = time.time() if now is None else now
    if int(expires) <= now:
        return "expired"
    if int(expires) > now + CONTROL_TTL_S + _CLOCK_SKEW_S:
        return "expiry beyond the allowed bound"
    return None
