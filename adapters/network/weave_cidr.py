"""Weave's ``WEAVE_CIDR`` grammar, checked when a container is created (Weave only found a
bad value at start, and killed the container).

``none`` (no network), ``net:default`` (the default subnet), ``net:CIDR`` (an address in
that subnet), ``ip:IP/len`` or ``IP/len`` (that exact address); several, separated by
spaces, attach several interfaces. The result is plain typed requests for the IPAM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from netaddr import AddrFormatError, IPAddress, IPNetwork

from plugstrip.netdrivers.domain.errors import NetworkError
from plugstrip.netdrivers.domain.ipam import parse_subnet


class WeaveCidrError(ValueError):
    pass


@dataclass(frozen=True)
class AddressRequest:
    kind: Literal["default", "net", "ip"]
    subnet: IPNetwork | None = None  # net: and ip:
    address: IPAddress | None = None  # ip: only


def parse(text: str) -> tuple[AddressRequest, ...]:
    """The requests in ``text``; ``()`` for ``none``."""
    tokens = text.split()
    if not tokens:
        raise WeaveCidrError("WEAVE_CIDR is empty: give none, net:default, net:CIDR or IP/len")
    if "none" in tokens:
        if len(tokens) > 1:
            raise WeaveCidrError(f"WEAVE_CIDR {text!r}: 'none' cannot be combined with others")
        return ()
    requests = [_token(t) for t in tokens]
    subnets = [str(r.subnet) for r in requests if r.subnet is not None]
    kinds = [r.kind for r in requests]
    if len(set(subnets)) != len(subnets) or kinds.count("default") > 1:
        raise WeaveCidrError(f"WEAVE_CIDR {text!r}: a network is named twice")
    return tuple(requests)


def _token(token: str) -> AddressRequest:
    if token == "net:default":
        return AddressRequest("default")
    if token.startswith("net:"):
        try:
            return AddressRequest("net", subnet=parse_subnet(token[4:]))
        except NetworkError as exc:
            raise WeaveCidrError(f"WEAVE_CIDR {token!r}: {exc}") from None
    value = token[3:] if token.startswith("ip:") else token
    if "/" not in value:
        raise WeaveCidrError(
            f"WEAVE_CIDR {token!r}: expected none, net:default, net:CIDR, ip:IP/len or IP/len"
        )
    try:
        iface = IPNetwork(value, version=4)
    except (AddrFormatError, ValueError):
        raise WeaveCidrError(
            f"WEAVE_CIDR {token!r}: {value!r} is not an IPv4 address/len"
        ) from None
    subnet = iface.cidr
    if subnet.prefixlen > 30 or iface.ip in (subnet.network, subnet.broadcast):
        raise WeaveCidrError(f"WEAVE_CIDR {token!r}: {iface.ip} is not a host address of {subnet}")
    return AddressRequest("ip", subnet=subnet, address=iface.ip)
