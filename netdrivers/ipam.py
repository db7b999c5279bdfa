"""Address management on netaddr: subnets out of an allocation range, addresses out of a
subnet.

Pure decisions: what is taken comes in, a choice (or a categorised error) goes out. The
store runs a decision and its write as one transaction, so nothing is handed out twice,
on one host or (with etcd) on several.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from netaddr import AddrFormatError, IPAddress, IPNetwork, IPSet

# Weave's default allocation range, and Docker's default size for a user network.
DEFAULT_RANGE = IPNetwork("10.32.0.0/12")
DEFAULT_PREFIX = 24
# A /31 or /32 has no room for a gateway and a container.
MAX_PREFIX = 30

Category = Literal["invalid", "conflict", "exhausted", "not_found"]


class IpamError(Exception):
    """``category`` maps to an HTTP status at the API edge (400, 409, 409/503, 404)."""

    def __init__(self, category: Category, message: str) -> None:
        super().__init__(message)
        self.category = category


def parse_subnet(text: str) -> IPNetwork:
    """An IPv4 network in CIDR form with no host bits set (``10.40.1.0/24``)."""
    try:
        net = IPNetwork(text, version=4)
    except (AddrFormatError, ValueError, TypeError):
        raise IpamError("invalid", f"invalid subnet {text!r}: expected an IPv4 CIDR") from None
    if "/" not in text:
        raise IpamError("invalid", f"invalid subnet {text!r}: give a prefix length")
    if net.ip != net.network:
        raise IpamError(
            "invalid", f"invalid subnet {text}: host bits set (did you mean {net.cidr}?)"
        )
    if net.prefixlen > MAX_PREFIX:
        raise IpamError("invalid", f"invalid subnet {text}: /{MAX_PREFIX} is the smallest")
    return net


def check_subnet(subnet: IPNetwork, taken: Iterable[IPNetwork]) -> None:
    """Refuse a subnet that overlaps one already in use."""
    for other in taken:
        if subnet.first <= other.last and other.first <= subnet.last:
            raise IpamError("conflict", f"subnet {subnet} overlaps {other}, already in use")


def choose_subnet(
    taken: Iterable[IPNetwork],
    pool: IPNetwork = DEFAULT_RANGE,
    prefix: int = DEFAULT_PREFIX,
) -> IPNetwork:
    """The lowest free /``prefix`` of ``pool`` (free blocks, not every candidate, are
    walked, so a nearly full range costs no more than an empty one)."""
    if not pool.prefixlen <= prefix <= MAX_PREFIX:
        raise IpamError("invalid", f"cannot cut /{prefix} subnets out of {pool}")
    free = IPSet([pool]) - IPSet(list(taken))
    for block in free.iter_cidrs():  # sorted, each aligned to its own size
        if block.prefixlen <= prefix:
            return IPNetwork(f"{block.network}/{prefix}")
    raise IpamError("exhausted", f"no free /{prefix} left in {pool}")


def gateway_of(subnet: IPNetwork) -> IPAddress:
    return IPAddress(subnet.first + 1)


def choose_address(
    subnet: IPNetwork,
    gateway: IPAddress,
    taken: Iterable[IPAddress],
    requested: IPAddress | None = None,
) -> IPAddress:
    """``requested`` if it is usable, else the lowest free host address of ``subnet``."""
    used = {int(ip) for ip in taken}
    used.add(int(gateway))
    first, last = subnet.first + 1, subnet.last - 1  # not the network, not the broadcast
    if requested is not None:
        value = int(requested)
        if not first <= value <= last:
            raise IpamError(
                "invalid", f"address {requested} is not a usable address of subnet {subnet}"
            )
        if value in used:
            what = "the gateway" if value == int(gateway) else "in use"
            raise IpamError("conflict", f"address {requested} is {what} on {subnet}")
        return IPAddress(value)
    for value in range(first, last + 1):
        if value not in used:
            return IPAddress(value)
    raise IpamError("exhausted", f"no free address left in {subnet}")
