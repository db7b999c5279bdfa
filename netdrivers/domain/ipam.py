"""Address management on netaddr: subnets out of an allocation range, addresses out of a
subnet.

Dual-stack networks pair an IPv6 subnet with the IPv4 one, and an endpoint's IPv6 address
with its IPv4 address: the same host number in each (``10.70.0.5`` and ``fd70::5``), so
the one allocation the store makes per endpoint is unique in both families, and the
datapath, names and peers on other hosts learn both from it.

Pure decisions: what is taken comes in, a choice (or an error of ``errors``) goes out. The
store runs a decision and its write as one transaction, so nothing is handed out twice,
on one host or (with etcd) on several.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

from netaddr import AddrFormatError, IPAddress, IPNetwork, IPSet

from plugstrip.netdrivers.domain.errors import Conflict, Exhausted, Invalid

# Weave's default allocation range, and Docker's default size for a user network.
DEFAULT_RANGE = IPNetwork("10.32.0.0/12")
DEFAULT_PREFIX = 24
# IPv6 subnets for networks made with --ipv6 and no IPv6 subnet: a /64 each out of a
# unique local /48 ("plugs" in ASCII: the same on every host, so hosts agree without
# being told; --ipv6-range picks another, RFC 4193's random one, say).
DEFAULT_RANGE6 = IPNetwork("fd70:6c75:6773::/48")
DEFAULT_PREFIX6 = 64
# A /31 or /32 has no room for a gateway and a container; an IPv6 subnet as small as a
# /120 still pairs with a /24.
MAX_PREFIX = {4: 30, 6: 120}


def parse_subnet(text: str, version: Literal[4, 6] = 4) -> IPNetwork:
    """An IPv4 (or IPv6) network in CIDR form with no host bits set (``10.40.1.0/24``)."""
    family = f"IPv{version}"
    try:
        net = IPNetwork(text, version=version)
    except (AddrFormatError, ValueError, TypeError):
        raise Invalid(f"invalid subnet {text!r}: expected an {family} CIDR") from None
    if "/" not in text:
        raise Invalid(f"invalid subnet {text!r}: give a prefix length")
    if net.ip != net.network:
        raise Invalid(f"invalid subnet {text}: host bits set (did you mean {net.cidr}?)")
    if net.prefixlen > MAX_PREFIX[version]:
        raise Invalid(f"invalid subnet {text}: /{MAX_PREFIX[version]} is the smallest")
    return net


def check_subnet(subnet: IPNetwork, taken: Iterable[IPNetwork]) -> None:
    """Refuse a subnet that overlaps one already in use."""
    for other in taken:
        if subnet.first <= other.last and other.first <= subnet.last:
            raise Conflict(f"subnet {subnet} overlaps {other}, already in use")


def choose_subnet(
    taken: Iterable[IPNetwork],
    pool: IPNetwork = DEFAULT_RANGE,
    prefix: int = DEFAULT_PREFIX,
) -> IPNetwork:
    """The lowest free /``prefix`` of ``pool`` (free blocks, not every candidate, are
    walked, so a nearly full range costs no more than an empty one)."""
    if not pool.prefixlen <= prefix <= MAX_PREFIX[pool.version]:
        raise Invalid(f"cannot cut /{prefix} subnets out of {pool}")
    free = IPSet([pool]) - IPSet(list(taken))
    for block in free.iter_cidrs():  # sorted, each aligned to its own size
        if block.prefixlen <= prefix:
            return IPNetwork(f"{block.network}/{prefix}")
    raise Exhausted(f"no free /{prefix} left in {pool}")


def gateway_of(subnet: IPNetwork) -> IPAddress:
    return IPAddress(subnet.first + 1, subnet.version)


def paired(address: IPAddress, subnet: IPNetwork, other: IPNetwork) -> IPAddress:
    """The address with ``address``'s host number in ``subnet``, in ``other``."""
    return IPAddress(other.first + (int(address) - subnet.first), other.version)


def check_pair(
    subnet: IPNetwork, gateway: IPAddress, subnet6: IPNetwork, gateway6: IPAddress | None
) -> None:
    """Refuse an IPv6 subnet that cannot give every IPv4 host number its twin, or an IPv6
    gateway that is not the IPv4 gateway's twin."""
    if subnet6.size < subnet.size:
        raise Invalid(
            f"IPv6 subnet {subnet6} is smaller than IPv4 subnet {subnet}: plugstrip gives an "
            "endpoint the same host number in both",
        )
    twin = paired(gateway, subnet, subnet6)
    if gateway6 is not None and gateway6 != twin:
        raise Invalid(
            f"IPv6 gateway {gateway6}: on {subnet6} it is {twin}, the IPv4 gateway's host "
            "number (plugstrip pairs the families' addresses)",
        )


def requested_pair(
    subnet: IPNetwork,
    subnet6: IPNetwork,
    requested: IPAddress | None,
    requested6: IPAddress | None,
) -> IPAddress | None:
    """The IPv4 address to ask the store for, given what an endpoint asked in each family
    (``--ip``, ``--ip6``)."""
    if requested6 is None:
        return requested
    if requested6 not in subnet6:
        raise Invalid(
            f"Invalid address {requested6}: It does not belong to any of this network's subnets",
        )
    if int(requested6) - subnet6.first >= subnet.size:
        raise Invalid(
            f"address {requested6}: its host number is beyond IPv4 subnet {subnet}, and "
            "plugstrip gives an endpoint the same host number in both families",
        )
    twin = paired(requested6, subnet6, subnet)
    if requested is not None and requested != twin:
        raise Invalid(
            f"--ip {requested} and --ip6 {requested6} differ in host number: plugstrip pairs "
            f"them (--ip {twin} goes with that --ip6)",
        )
    return twin


def choose_address(
    subnet: IPNetwork,
    gateway: IPAddress,
    is_taken: Callable[[int], bool],
    requested: IPAddress | None = None,
    after: int | None = None,
    reserved: frozenset[int] = frozenset(),
) -> IPAddress:
    """``requested`` if it is usable, else the next free host address of ``subnet`` after
    ``after`` (the last one handed out), wrapping around; the lowest free without it.

    Next-fit, as Docker's IPAM: a released address is not handed out again at once (peers
    may still hold it in their ARP caches), and with 10,000 addresses in use a choice
    costs a lookup or two, not a walk over all of them. ``is_taken`` answers for one
    address (as an integer); the gateway and the ``reserved`` (aux addresses) are never
    free, and ``reserved`` is not ``requested`` either: an endpoint names them as allowed
    addresses, not as its own."""
    first, last = subnet.first + 1, subnet.last - 1  # not the network, not the broadcast

    def free(value: int) -> bool:
        return value != int(gateway) and value not in reserved and not is_taken(value)

    if requested is not None:
        value = int(requested)
        if not first <= value <= last:
            raise Invalid(f"address {requested} is not a usable address of subnet {subnet}")
        if not free(value):
            what = (
                "the gateway"
                if value == int(gateway)
                else "reserved (an auxiliary address)"
                if value in reserved
                else "in use"
            )
            raise Conflict(f"address {requested} is {what} on {subnet}")
        return IPAddress(value, 4)
    start = after + 1 if after is not None and first <= after < last else first
    for value in (*range(start, last + 1), *range(first, start)):
        if free(value):
            return IPAddress(value, 4)
    raise Exhausted(f"no free address left in {subnet}")
