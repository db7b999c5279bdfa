"""Security groups: the model operators know from OpenStack and AWS, and what one host's
datapath must enforce of it.

A group is a named set of ingress rules; each allows traffic ``from`` a group, a CIDR or
anyone, of a protocol, to a port range. Rules only allow and are stateful (replies to
allowed traffic pass). An endpoint in no group is open, as before groups existed; an
endpoint in groups takes only what one of its groups' rules allows (and replies).

Pure decisions on plain values: the store keeps groups, the control plane computes a
host's :class:`Policy` from them and the endpoints, a driver programs it (membership as
address sets, so a rule ``from web`` is one set lookup however many endpoints web has).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from netaddr import AddrFormatError, IPAddress, IPNetwork

from plugstrip.netdrivers.ipam import IpamError

Proto = Literal["tcp", "udp", "icmp", "icmpv6", "any"]
PROTOS: tuple[Proto, ...] = ("tcp", "udp", "icmp", "icmpv6", "any")
ANY = "any"
NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")


@dataclass(frozen=True, order=True)
class Rule:
    """Allow ``proto`` traffic from ``source`` (a group's name, a CIDR, or ``any``) to
    ports ``ports`` (first, last; None: every port, and for ICMP always None)."""

    source: str
    proto: Proto = "any"
    ports: tuple[int, int] | None = None

    def source_cidr(self) -> IPNetwork | None:
        return IPNetwork(self.source) if "/" in self.source else None

    def source_group(self) -> str | None:
        return None if self.source == ANY or "/" in self.source else self.source

    def describe(self) -> str:
        ports = ""
        if self.ports is not None:
            first, last = self.ports
            ports = f" port {first}" if first == last else f" ports {first}-{last}"
        return f"from {self.source} {self.proto}{ports}"


@dataclass(frozen=True)
class Group:
    name: str
    rules: tuple[Rule, ...] = ()


def check_name(name: str) -> str:
    if not NAME.fullmatch(name) or name == ANY:
        raise IpamError("invalid", f"invalid security group name {name!r}")
    return name


def parse_rule(source: str, proto: str = "any", port: str | None = None) -> Rule:
    """A rule from the operator's words (``--from web --proto tcp --port 5432``), or a
    clear error (category ``invalid``)."""
    if proto not in PROTOS:
        raise IpamError("invalid", f"invalid protocol {proto!r}: one of {', '.join(PROTOS)}")
    if "/" in source:
        try:
            cidr = IPNetwork(source)
        except (AddrFormatError, ValueError):
            raise IpamError("invalid", f"invalid CIDR {source!r}") from None
        if cidr.ip != cidr.network:
            raise IpamError("invalid", f"invalid CIDR {source}: host bits set ({cidr.cidr}?)")
        source = str(cidr.cidr)
    elif source != ANY:
        check_name(source)
    ports = None
    if port is not None:
        if proto not in ("tcp", "udp"):
            raise IpamError("invalid", f"--port is for tcp and udp, not {proto}")
        ports = parse_ports(port)
    return Rule(source, proto, ports)


def parse_ports(text: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    try:
        low, high = int(first), int(last if sep else first)
    except ValueError:
        raise IpamError("invalid", f"invalid port {text!r}: a number or a range N-M") from None
    if not 1 <= low <= high <= 65535:
        raise IpamError("invalid", f"invalid port {text!r}: 1 to 65535, low to high")
    return low, high


def port_masks(first: int, last: int) -> list[tuple[int, int]]:
    """The range as (value, mask) pairs of 16-bit ports, fewest first-fit blocks: how an
    OpenFlow match (which has no ranges) covers it."""
    out = []
    while first <= last:
        size = 1
        while first % (size * 2) == 0 and first + size * 2 - 1 <= last and size < 65536:
            size *= 2
        out.append((first, 0xFFFF & ~(size - 1)))
        first += size
    return out


# ---- a host's policy ----------------------------------------------------------------


@dataclass(frozen=True)
class Guarded:
    """A local endpoint in ``groups``: traffic to ``address`` needs one of ``rules`` (all
    its groups' rules)."""

    address: IPAddress
    rules: tuple[Rule, ...]
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    """What one host enforces: its guarded endpoints, the rules of the groups they are in,
    and the members of the groups those rules name (on every host: sources may be
    anywhere)."""

    guarded: tuple[Guarded, ...] = ()
    members: Mapping[str, frozenset[IPAddress]] = field(default_factory=dict)
    rules: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)


def policy(
    groups: Mapping[str, Group],
    endpoints: Iterable[tuple[IPAddress, Iterable[str], bool]],
) -> Policy:
    """The policy of a host from every group and every endpoint as (address, its groups,
    whether it is on this host). An endpoint's rules are all its groups' (a group it names
    that no longer exists adds none, so it stays guarded)."""
    members: dict[str, set[IPAddress]] = {}
    guarded = []
    for address, names, local in endpoints:
        names = list(names)
        for name in names:
            members.setdefault(name, set()).add(address)
        if local and names:
            rules = sorted({r for n in names for r in groups.get(n, Group(n)).rules})
            guarded.append(Guarded(address, tuple(rules), tuple(sorted(set(names)))))
    wanted = {g for e in guarded for r in e.rules if (g := r.source_group())}
    mine = sorted({n for e in guarded for n in e.groups})
    return Policy(
        tuple(sorted(guarded, key=lambda g: (g.address.version, int(g.address)))),
        {name: frozenset(members.get(name, ())) for name in sorted(wanted)},
        {name: tuple(sorted(groups.get(name, Group(name)).rules)) for name in mine},
    )
