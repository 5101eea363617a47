"""A software WebAuthn authenticator and the browser around it, for brain's passkey tests.

It does what `navigator.credentials.create()` / `.get()` and a security key do between them, from
the spec, with `cryptography` and a small CBOR encoder of its own (so the server's parser,
cbor2 under py_webauthn, is not also the test's): an ES256 credential key; authenticator data
(SHA-256 of the RP ID, flags, the signature counter, for a registration the attested credential
data with its COSE key); clientDataJSON (type, challenge, origin); attestation `none` or `packed`
self-attestation; assertions signed over authenticator data + SHA-256(clientDataJSON). What it
answers is the JSON a browser's `PublicKeyCredential.toJSON()` gives (SimpleWebAuthn's
startRegistration / startAuthentication), which Better Auth's client posts as `response`.

Everything a hostile or broken client could get wrong is a keyword: another origin, RP ID or
ceremony type, other flags, a counter of one's choosing (a clone), another challenge.

    key = SoftAuthenticator()
    credential = key.create(options, origin="http://127.0.0.1:3000")
    assertion = key.get(options, origin="http://127.0.0.1:3000")
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

UP = 0x01  # user present
UV = 0x04  # user verified
BE = 0x08  # backup eligible
BS = 0x10  # backed up
AT = 0x40  # attested credential data included
ES256 = -7


def b64url(data: bytes) -> str:
    """base64url without padding, as WebAuthn's JSON writes bytes."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    """The bytes of a base64url string (padding optional)."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def cbor(value: Any) -> bytes:
    """CTAP2 canonical CBOR of ints, byte strings, text, lists and maps (what authenticators write)."""

    def head(major: int, n: int) -> bytes:
        if n < 24:
            return bytes([major << 5 | n])
        for info, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
            if n < 1 << (8 * struct.calcsize(fmt)):
                return bytes([major << 5 | info]) + struct.pack(fmt, n)
        raise ValueError("integer too large for CBOR")

    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return head(0, value) if value >= 0 else head(1, -1 - value)
    if isinstance(value, bytes):
        return head(2, len(value)) + value
    if isinstance(value, str):
        data = value.encode()
        return head(3, len(data)) + data
    if isinstance(value, list):
        return head(4, len(value)) + b"".join(cbor(v) for v in value)
    if isinstance(value, dict):
        # Canonical order: shorter encoded keys first, then bytewise.
        items = sorted((cbor(k), cbor(v)) for k, v in value.items())
        items.sort(key=lambda kv: len(kv[0]))
        return head(5, len(items)) + b"".join(k + v for k, v in items)
    raise TypeError(f"cannot encode {type(value).__name__} as CBOR")


class SoftAuthenticator:
    """One credential on one authenticator: create it, then sign assertions with it."""

    def __init__(self, *, counts: bool = True, aaguid: bytes = bytes(16), backed_up: bool = False) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.credential_id = os.urandom(32)
        # Authenticators that count start at 0 and add one per signature; synced passkeys send 0.
        self.counts = counts
        self.sign_count = 0
        self.aaguid = aaguid
        self.backed_up = backed_up

    @classmethod
    def holding(cls, private_pem: str, credential_id: str, *, sign_count: int = 0) -> SoftAuthenticator:
        """An authenticator holding a credential made elsewhere (its ES256 private key in PEM)."""
        authenticator = cls()
        key = serialization.load_pem_private_key(private_pem.encode(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        authenticator.key, authenticator.credential_id, authenticator.sign_count = key, unb64url(credential_id), sign_count
        return authenticator

    @property
    def id(self) -> str:
        """The credential id as the server stores it (base64url)."""
        return b64url(self.credential_id)

    def cose_key(self) -> bytes:
        """The credential's public key as a COSE_Key (EC2, P-256, ES256)."""
        numbers = self.key.public_key().public_numbers()
        return cbor({1: 2, 3: ES256, -1: 1, -2: numbers.x.to_bytes(32, "big"), -3: numbers.y.to_bytes(32, "big")})

    def private_pem(self) -> str:
        """The credential's private key in PKCS#8 PEM (for a signer in another language)."""
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()).decode()

    def _flags(self, flags: int | None) -> int:
        if flags is not None:
            return flags
        return UP | UV | ((BE | BS) if self.backed_up else 0)

    def _next_count(self, sign_count: int | None) -> int:
        if sign_count is not None:
            return sign_count
        if self.counts:
            self.sign_count += 1
        return self.sign_count

    def _client_data(self, kind: str, challenge: str, origin: str) -> bytes:
        return json.dumps({"type": kind, "challenge": challenge, "origin": origin, "crossOrigin": False},
                          separators=(",", ":")).encode()

    def _sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def create(
        self, options: dict[str, Any], *, origin: str, rp_id: str | None = None, kind: str = "webauthn.create",
        flags: int | None = None, attestation: str = "none", challenge: str | None = None,
        transports: list[str] | None = None,
    ) -> dict[str, Any]:
        """navigator.credentials.create() with creation options: the RegistrationResponseJSON."""
        rp = rp_id if rp_id is not None else options["rp"]["id"]
        client_data = self._client_data(kind, challenge if challenge is not None else options["challenge"], origin)
        auth_data = (
            hashlib.sha256(rp.encode()).digest() + bytes([self._flags(flags) | AT]) + struct.pack(">I", self.sign_count)
            + self.aaguid + struct.pack(">H", len(self.credential_id)) + self.credential_id + self.cose_key()
        )
        if attestation == "none":
            statement: dict[str, Any] = {}
        elif attestation == "packed":  # self-attestation: signed by the credential key itself
            statement = {"alg": ES256, "sig": self._sign(auth_data + hashlib.sha256(client_data).digest())}
        else:
            raise ValueError(f"unknown attestation {attestation!r}")
        attestation_object = cbor({"fmt": attestation, "attStmt": statement, "authData": auth_data})
        public_der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
        return {
            "id": self.id, "rawId": self.id, "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data), "attestationObject": b64url(attestation_object),
                "transports": transports if transports is not None else ["usb", "internal"],
                "publicKeyAlgorithm": ES256, "publicKey": b64url(public_der), "authenticatorData": b64url(auth_data),
            },
            "authenticatorAttachment": "cross-platform", "clientExtensionResults": {"credProps": {"rk": True}},
        }

    def get(
        self, options: dict[str, Any], *, origin: str, rp_id: str | None = None, kind: str = "webauthn.get",
        flags: int | None = None, sign_count: int | None = None, challenge: str | None = None,
    ) -> dict[str, Any]:
        """navigator.credentials.get() with request options: the AuthenticationResponseJSON."""
        rp = rp_id if rp_id is not None else options["rpId"]
        client_data = self._client_data(kind, challenge if challenge is not None else options["challenge"], origin)
        auth_data = hashlib.sha256(rp.encode()).digest() + bytes([self._flags(flags)]) + struct.pack(
            ">I", self._next_count(sign_count))
        signature = self._sign(auth_data + hashlib.sha256(client_data).digest())
        return {
            "id": self.id, "rawId": self.id, "type": "public-key",
            "response": {
                "clientDataJSON": b64url(client_data), "authenticatorData": b64url(auth_data),
                "signature": b64url(signature), "userHandle": None,
            },
            "authenticatorAttachment": "cross-platform", "clientExtensionResults": {},
        }
