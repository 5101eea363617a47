"""Where brain may open a connection that a user names: the address policy.

Users name hosts that brain then connects to: an IMAP server (the imap provider), a webhook
URL (the webhooks plugin). Without a policy, brain would open TCP (and TLS) connections
wherever it is told — its own loopback services, the private network it runs in, a cloud
metadata address — and report back whether they answered: a network-probing tool for anyone
with an account. So a host must resolve only to public (globally routable) addresses, unless
an address falls in one of the networks the operator allows for that feature (CIDRs, e.g. a
company mail server on 10.0.0.0/8 or a test receiver on 127.0.0.0/8).

Callers check when the user names the host (a refusal is a 400 naming the address) and again
before every connection, and connect to exactly the address that was checked, so a name that
re-resolves somewhere else between the check and the connect (DNS rebinding) gains nothing.

IPv6 has forms that carry an IPv4 address inside them and reach it through a translator or a
tunnel: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` and the NAT64 well-known
prefix `64:ff9b::/96` hold it in their last 32 bits, so the IPv4 address is taken out and
judged as itself (`::ffff:127.0.0.1` is loopback, however global the IPv6 form may look). The
tunnelling forms — 6to4 `2002::/16`, Teredo `2001::/32` — and the local-use NAT64 prefix
`64:ff9b:1::/48` (whose operator chooses where the IPv4 address sits, so it cannot be read
reliably) are refused outright unless the IPv6 address itself lies in an allowed network.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from brain.errors import AddressRefused

__all__ = ["Address", "AddressRefused", "Network", "allowed_networks", "checked_addresses", "refusal"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# The last 32 bits of these are an IPv4 address that the IPv6 one stands for.
_EMBEDDING_IPV4 = (
    ipaddress.ip_network("::ffff:0:0/96"),  # IPv4-mapped
    ipaddress.ip_network("::/96"),  # IPv4-compatible (deprecated, still routed by some stacks)
    ipaddress.ip_network("64:ff9b::/96"),  # NAT64 well-known prefix (RFC 6052)
)
# Tunnels and translators whose IPv4 end cannot be judged from the address alone.
_TUNNELS = {
    ipaddress.ip_network("2002::/16"): "a 6to4 address",
    ipaddress.ip_network("2001::/32"): "a Teredo address",
    ipaddress.ip_network("64:ff9b:1::/48"): "a local-use NAT64 address",
}
# :: and ::1 sit inside ::/96 but are IPv6's own unspecified and loopback addresses.
_NOT_EMBEDDING = (ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::1"))


def allowed_networks(value: Any, *, field: str) -> tuple[Network, ...]:
    """CIDRs from a list or a comma-separated string; ValueError naming the field."""
    if value in (None, ""):
        return ()
    items: Iterable[Any] = value.split(",") if isinstance(value, str) else value
    if isinstance(items, (bytes, dict)) or not isinstance(items, Iterable):
        raise ValueError(f"{field}: a list of networks such as ['10.0.0.0/8']")
    out = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        try:
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{field}: not a network (CIDR) or address: {text[:60]!r}") from None
    return tuple(out)


def refusal(address: str, allowed: Sequence[Network]) -> str | None:
    """Why brain may not connect to ``address`` (None: it may), after the policy above."""
    ip: Address = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone
    if _allowed(ip, allowed):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip not in _NOT_EMBEDDING:
        for net, what in _TUNNELS.items():
            if ip in net:
                return f"{ip}, {what} (a tunnel to an IPv4 host brain cannot check)"
        if any(ip in net for net in _EMBEDDING_IPV4):
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
            if _allowed(ip, allowed):
                return None
    if not ip.is_global or ip.is_multicast:
        return f"{ip}, a private, loopback or otherwise non-public address"
    return None


def _allowed(ip: Address, allowed: Sequence[Network]) -> bool:
    return any(ip in net for net in allowed)


def checked_addresses(host: str, port: int, allowed: Sequence[Network]) -> list[str]:
    """Every address host:port resolves to, once all pass the policy; AddressRefused if one does not.

    A name mixing a public address with a private one is refused. Resolution failures raise
    OSError (socket.gaierror). Blocking: call it from a worker thread.
    """
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    addresses = list(dict.fromkeys(info[4][0] for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)))
    if not addresses:
        raise OSError(f"{host} has no IPv4 or IPv6 address")
    for address in addresses:
        why = refusal(address, allowed)
        if why is not None:
            raise AddressRefused(host, why)
    return addresses
