"""Standard Webhooks signatures (https://www.standardwebhooks.com/): how a receiver knows a delivery is brain's.

Every delivery carries three headers:

- `webhook-id`: the message id (`msg_...`), the same on every retry of it, so a receiver can
  drop a repeat;
- `webhook-timestamp`: when this attempt was signed, in whole seconds since the epoch (a
  receiver refuses old ones, which stops replays);
- `webhook-signature`: `v1,` then the base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`, keyed
  with the endpoint's secret: the bytes the base64 after `whsec_` stands for.

The secret is `whsec_` and the base64 of 24 to 64 random bytes; brain makes one of 32 unless the
user brings their own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64


def new_secret() -> str:
    """A fresh endpoint secret."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key a secret stands for; ValueError unless it is `whsec_` + base64 of 24-64 bytes."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX) or len(secret) > 200:
        raise ValueError(f"must be {SECRET_PREFIX} followed by the base64 of {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"must be {SECRET_PREFIX} followed by base64") from None
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(f"must encode {MIN_SECRET_BYTES}-{MAX_SECRET_BYTES} bytes, not {len(key)}")
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value of one attempt."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(key: bytes, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, msg_id, timestamp, body),
    }
