"""Which IMAP servers a user may make brain connect to, and connecting to exactly the one checked.

The policy is the core's (`brain.outbound`): a host must resolve only to public addresses
unless an address falls in one of `[plugins.imap] allowed_networks`. The check runs when an
account connects (a refusal is a 400 naming the address) and again before every connection a
sync opens, and that connection goes to exactly the address that was checked
(`PinnedIMAPClient`), so a name that re-resolves to somewhere else between the check and the
connect (DNS rebinding) gains nothing. TLS still verifies the certificate against the host name.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from typing import Any

import imapclient
from imapclient import imap4, tls

from brain import outbound
from brain.mail.provider import ConnectRejected
from brain.outbound import Network

__all__ = ["Network", "PinnedIMAPClient", "allowed_networks", "checked_address"]

SETTING = "plugins.imap.allowed_networks"


def allowed_networks(value: Any, *, field: str = SETTING) -> tuple[Network, ...]:
    """CIDRs from a list or a comma-separated string; ValueError naming the field."""
    return outbound.allowed_networks(value, field=field)


def checked_address(host: str, port: int, allowed: Sequence[Network]) -> str:
    """The address to connect to for host:port, after the core's policy; ConnectRejected if refused.

    Resolution failures raise OSError (socket.gaierror).
    """
    try:
        return outbound.checked_addresses(host, port, allowed)[0]
    except outbound.AddressRefused as exc:
        raise ConnectRejected(
            f"{exc.message}: brain connects only to public mail servers unless "
            f"the operator allows the network ([plugins.imap] allowed_networks)"
        ) from None


class _PinnedTLS(tls.IMAP4_TLS):
    def __init__(self, host: str, port: int, ssl_context: ssl.SSLContext | None, timeout: float | None, *, address: str) -> None:
        self._address = address
        super().__init__(host, port, ssl_context, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        sock = socket.create_connection((self._address, self.port), timeout=self._timeout if timeout is None else timeout)
        return tls.wrap_socket(sock, self.ssl_context, self.host)  # verified against the name


class _PinnedPlain(imap4.IMAP4WithTimeout):
    def __init__(self, host: str, port: int, timeout: float | None, *, address: str) -> None:
        self._address = address
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        return socket.create_connection((self._address, self.port), self._timeout if timeout is None else timeout)


class PinnedIMAPClient(imapclient.IMAPClient):
    """IMAPClient that connects to a given address, keeping the host name for TLS and STARTTLS."""

    def __init__(self, host: str, *, address: str, **kwargs: Any) -> None:
        self._pinned_address = address
        super().__init__(host, **kwargs)

    def _create_IMAP4(self) -> Any:  # noqa: N802 - IMAPClient's own hook
        timeout = getattr(self._timeout, "connect", None)
        if self.ssl:
            return _PinnedTLS(self.host, self.port, self.ssl_context, timeout, address=self._pinned_address)
        return _PinnedPlain(self.host, self.port, timeout, address=self._pinned_address)
