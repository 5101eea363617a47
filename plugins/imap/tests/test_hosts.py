"""The IMAP host policy on addresses alone (no server needed): which ones a user may name.

IPv6 forms that carry an IPv4 address are judged by that IPv4 address; tunnels whose IPv4 end
cannot be read are refused unless the operator allows them.
"""

from __future__ import annotations

import pytest

from brain.mail.provider import ConnectRejected
from brain_imap.hosts import allowed_networks, checked_address

LOOPBACK = allowed_networks(["127.0.0.0/8"])
TUNNELS = allowed_networks(["2002::/16", "2001::/32", "64:ff9b:1::/48"])

# (address, networks the operator allows, None if accepted or what the refusal names)
CASES = [
    # Plain addresses: public ones pass, the rest need an allowed network.
    ("8.8.8.8", (), None),
    ("2606:4700::1111", (), None),
    ("127.0.0.1", (), "non-public"),
    ("127.0.0.1", LOOPBACK, None),
    ("::1", (), "non-public"),
    ("::", (), "non-public"),
    # IPv4-mapped: the IPv4 address decides.
    ("::ffff:127.0.0.1", (), "127.0.0.1, a private, loopback"),
    ("::ffff:10.0.0.1", (), "10.0.0.1, a private, loopback"),
    ("::ffff:127.0.0.1", LOOPBACK, None),
    ("::ffff:8.8.8.8", (), None),
    # IPv4-compatible ::a.b.c.d: the same.
    ("::127.0.0.1", (), "127.0.0.1, a private, loopback"),
    ("::169.254.169.254", (), "169.254.169.254, a private, loopback"),
    ("::192.168.1.1", (), "192.168.1.1, a private, loopback"),
    ("::127.0.0.1", LOOPBACK, None),
    ("::8.8.8.8", (), None),
    # NAT64 well-known prefix 64:ff9b::/96: the last 32 bits are the IPv4 host.
    ("64:ff9b::7f00:1", (), "127.0.0.1, a private, loopback"),
    ("64:ff9b::a9fe:a9fe", (), "169.254.169.254, a private, loopback"),
    ("64:ff9b::10.1.2.3", (), "10.1.2.3, a private, loopback"),
    ("64:ff9b::7f00:1", LOOPBACK, None),
    ("64:ff9b::808:808", (), None),
    # Local-use NAT64, 6to4 and Teredo: refused outright, even towards a public IPv4 host...
    ("64:ff9b:1::7f00:1", (), "local-use NAT64"),
    ("64:ff9b:1::808:808", (), "local-use NAT64"),
    ("2002:7f00:1::1", (), "6to4"),
    ("2002:808:808::1", (), "6to4"),
    ("2002:7f00:1::1", LOOPBACK, "6to4"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", (), "Teredo"),
    ("2001::1", (), "Teredo"),
    # ...unless the operator allows the tunnel's own range.
    ("2002:808:808::1", TUNNELS, None),
    ("2001::1", TUNNELS, None),
    ("64:ff9b:1::808:808", TUNNELS, None),
]


@pytest.mark.parametrize(("address", "allowed", "refused"), CASES)
def test_ipv6_forms_embedding_ipv4_are_judged_by_the_ipv4_address(
    address: str, allowed: tuple, refused: str | None
) -> None:
    if refused is None:
        assert checked_address(address, 993, allowed) == address
    else:
        with pytest.raises(ConnectRejected, match="allowed_networks") as caught:
            checked_address(address, 993, allowed)
        assert refused in str(caught.value)
