"""Security groups: the model operators know from OpenStack and AWS, and what one host's
datapath must enforce of it.

A group is a named set of rules; an ingress rule allows traffic ``from`` a group, a CIDR
or anyone, an egress rule traffic ``to`` one, of a protocol, to a port range. Rules only
allow and are stateful (replies to allowed traffic pass). An endpoint in no group is open,
as before groups existed; an endpoint in groups takes in only what one of its groups'
ingress rules allows, and sends out anything unless one of its groups has egress rules:
then only what one of them allows. Between two guarded endpoints both ends must agree (the
sender's egress and the receiver's ingress), as in AWS and OpenStack.

Before any rule, every local endpoint's port is bound to its identity (``Binding``): what
leaves it must carry its MAC and one of its addresses (ARP and neighbour discovery only
for those), guarded or not, so a rule ``from web`` means web's endpoints and not anyone
who writes web's addresses. Broadcast and multicast to a guarded endpoint follow its
rules as unicast does.

Pure decisions on plain values: the store keeps groups, the control plane computes a
host's :class:`Policy` from them and the endpoints, a driver programs it (membership as
address sets, so a rule ``from web`` is one set lookup however many endpoints web has).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from netaddr import EUI, AddrFormatError, IPAddress, IPNetwork

from plugstrip.netdrivers.domain.errors import Invalid

Proto = Literal["tcp", "udp", "icmp", "icmpv6", "any"]
PROTOS: tuple[Proto, ...] = ("tcp", "udp", "icmp", "icmpv6", "any")
ANY = "any"
NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")


@dataclass(frozen=True)
class Rule:
    """Allow ``proto`` traffic from ``peer`` (a group's name, a CIDR, or ``any``), or to
    it if ``egress``, to ports ``ports`` (first, last; None: every port, and for ICMP
    always None)."""

    peer: str
    proto: Proto = "any"
    ports: tuple[int, int] | None = None
    egress: bool = False

    def __lt__(self, other: Rule) -> bool:
        """Rules sort by their fields (every port, None, first: a rule from a group with
        and one without ports, in two of an endpoint's groups, must sort too)."""
        return self._key() < other._key()

    def _key(self) -> tuple[str, str, tuple[int, int], bool]:
        return (self.peer, self.proto, self.ports or (0, 0), self.egress)

    def peer_cidr(self) -> IPNetwork | None:
        return IPNetwork(self.peer) if "/" in self.peer else None

    def peer_group(self) -> str | None:
        return None if self.peer == ANY or "/" in self.peer else self.peer

    def port_text(self) -> str | None:
        """The ports as Docker writes them: ``80``, ``8000-8100/udp`` (tcp unsaid)."""
        if self.ports is None:
            return None
        first, last = self.ports
        text = str(first) if first == last else f"{first}-{last}"
        return text if self.proto == "tcp" else f"{text}/{self.proto}"

    def describe(self) -> str:
        ports = ""
        if self.ports is not None:
            first, last = self.ports
            ports = f" port {first}" if first == last else f" ports {first}-{last}"
        return f"{'to' if self.egress else 'from'} {self.peer} {self.proto}{ports}"


@dataclass(frozen=True)
class Group:
    name: str
    rules: tuple[Rule, ...] = ()


def check_name(name: str) -> str:
    if not NAME.fullmatch(name) or name == ANY:
        raise Invalid(f"invalid security group name {name!r}")
    return name


def parse_rule(
    peer: str, proto: str = "any", port: str | None = None, egress: bool = False
) -> Rule:
    """A rule from the operator's words (``--from web --proto tcp --port 5432``, or
    ``--to`` for egress), or a clear error (category ``invalid``)."""
    if proto not in PROTOS:
        raise Invalid(f"invalid protocol {proto!r}: one of {', '.join(PROTOS)}")
    if "/" in peer:
        try:
            cidr = IPNetwork(peer)
        except (AddrFormatError, ValueError):
            raise Invalid(f"invalid CIDR {peer!r}") from None
        if cidr.ip != cidr.network:
            raise Invalid(f"invalid CIDR {peer}: host bits set ({cidr.cidr}?)")
        peer = str(cidr.cidr)
    elif peer != ANY:
        check_name(peer)
    ports = None
    if port is not None:
        if proto not in ("tcp", "udp"):
            raise Invalid(f"--port is for tcp and udp, not {proto}")
        ports = parse_ports(port)
    return Rule(peer, proto, ports, egress)


def parse_ports(text: str) -> tuple[int, int]:
    first, sep, last = text.partition("-")
    try:
        low, high = int(first), int(last if sep else first)
    except ValueError:
        raise Invalid(f"invalid port {text!r}: a number or a range N-M") from None
    if not 1 <= low <= high <= 65535:
        raise Invalid(f"invalid port {text!r}: 1 to 65535, low to high")
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
    """A local endpoint in ``groups``: traffic to ``address`` needs one of ``rules`` (its
    groups' ingress rules); new traffic from it, if ``egress`` has any (its groups' egress
    rules), needs one of those too."""

    address: IPAddress
    rules: tuple[Rule, ...]
    groups: tuple[str, ...] = ()
    egress: tuple[Rule, ...] = ()

    def rules_of(self, egress: bool) -> tuple[Rule, ...]:
        """Its rules of one direction."""
        return self.egress if egress else self.rules


@dataclass(frozen=True, order=True)
class Binding:
    """A local endpoint's port (its network and owner name it in each driver) and what may
    leave it: frames from ``mac``, from one of ``addresses`` (its own, its IPv6
    link-local, those the operator allows it)."""

    network_id: str
    owner: str
    mac: str
    addresses: tuple[IPAddress, ...]

    def of(self, version: int) -> list[IPAddress]:
        return sorted((a for a in self.addresses if a.version == version), key=int)


def binding(
    network_id: str, owner: str, mac: str, addresses: Iterable[IPAddress | None]
) -> Binding:
    """An endpoint's binding: its addresses and the link-local its kernel makes of its
    MAC (EUI-64), which IPv6 needs before any other (neighbour discovery, MLD)."""
    own = {a for a in addresses if a is not None}
    own.add(EUI(mac).ipv6_link_local())
    return Binding(
        network_id, owner, mac.lower(), tuple(sorted(own, key=lambda a: (a.version, int(a))))
    )


@dataclass(frozen=True)
class Policy:
    """What one host enforces: its endpoints' bindings, its guarded endpoints, the rules
    of the groups they are in, and the members of the groups those rules name (on every
    host: peers may be anywhere)."""

    guarded: tuple[Guarded, ...] = ()
    members: Mapping[str, frozenset[IPAddress]] = field(default_factory=dict)
    rules: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)
    bindings: tuple[Binding, ...] = ()

    def egress_guarded(self) -> tuple[Guarded, ...]:
        return tuple(g for g in self.guarded if g.egress)

    def group_of(self, guarded: Guarded, rule: Rule) -> str:
        """The group of ``guarded``'s that has ``rule`` (the first, where two have it):
        what the rule's verdicts are counted for."""
        return next((g for g in guarded.groups if rule in self.rules.get(g, ())), "")

    def counted(self) -> dict[str, Counted]:
        """Every counter a datapath keeps for this policy, by id: one per group's rule
        (shared by the group's endpoints here), one per set of groups an endpoint is in
        and direction (its drops: what no rule allowed)."""
        out = {
            rule_counter(group, rule): Counted(
                group, "egress" if rule.egress else "ingress", rule.describe()
            )
            for group, rules in self.rules.items()
            for rule in rules
        }
        for guarded in self.guarded:
            for egress in (False, True) if guarded.egress else (False,):
                out[drop_counter(guarded.groups, egress)] = Counted(
                    ",".join(guarded.groups), "egress" if egress else "ingress", "", NO_RULE
                )
        return out


NO_RULE, SPOOFED, FLOOD = "no rule", "spoofed", "flood"  # why a datapath dropped


@dataclass(frozen=True)
class Counted:
    """What one datapath counter counts: the traffic ``rule`` of ``group`` let in (or
    out, ``direction``) where ``reason`` is empty, else drops for that reason (no rule,
    for an endpoint in ``group``s; a spoofed frame or a flood, anywhere)."""

    group: str
    direction: str = ""
    rule: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Count:
    """A counter's packets and bytes as the datapath has them (they restart when it
    drops the counter: whoever sums them over time takes a fall as a restart)."""

    id: str
    counted: Counted
    packets: int
    bytes: int


@dataclass(frozen=True)
class Probe:
    """The first packet of a new connection from ``src`` to ``dst``, as ``sg trace`` asks
    a datapath about it (``port``: tcp's and udp's destination port)."""

    src: IPAddress
    dst: IPAddress
    proto: Proto
    port: int | None = None


@dataclass(frozen=True)
class Verdict:
    """What a datapath does with a probe: whether it passes, the counters it went through
    (ids of ``Policy.counted``, or ``SPOOFED``, ``FLOOD``; the last decided: none, nothing
    of the groups' did), and the steps it went through as the datapath names them."""

    allowed: bool
    counters: tuple[str, ...] = ()
    steps: tuple[str, ...] = ()


@dataclass(frozen=True)
class Denial:
    """A packet a datapath dropped and logged (a sample: the datapath logs at most a few
    a second): why (``counted``'s reason, of which groups and direction), what it says
    of itself, and the endpoint whose port it came in on (its real sender, whatever
    source it wrote; empty where it came from elsewhere, a tunnel)."""

    counted: Counted
    src: IPAddress | None = None
    dst: IPAddress | None = None
    proto: str = ""
    port: int | None = None
    network_id: str = ""
    owner: str = ""


def rule_counter(group: str, rule: Rule) -> str:
    """A group's rule's counter id: the same while the rule is, whatever else changes."""
    return _digest(f"rule\0{group}\0{rule}")


def drop_counter(groups: Iterable[str], egress: bool) -> str:
    return _digest(f"drop\0{','.join(groups)}\0{egress}")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def policy(
    groups: Mapping[str, Group],
    endpoints: Iterable[tuple[IPAddress, Iterable[str], bool]],
    bindings: Iterable[Binding] = (),
) -> Policy:
    """The policy of a host from every group and every endpoint address as (address, its
    groups, whether it is on this host). An endpoint's rules are all its groups' (a group
    it names that no longer exists adds none, so it stays guarded); an address two local
    endpoints may send from (a VIP) takes the rules of both's groups."""
    members: dict[str, set[IPAddress]] = {}
    local_groups: dict[IPAddress, set[str]] = {}  # a guarded address: every group it is in
    for address, names, local in endpoints:
        names = list(names)
        for name in names:
            members.setdefault(name, set()).add(address)
        if local and names:  # an allowed address two endpoints share: both's groups
            local_groups.setdefault(address, set()).update(names)
    guarded = []
    for address, names in local_groups.items():
        every = sorted({r for n in names for r in groups.get(n, Group(n)).rules})
        guarded.append(
            Guarded(
                address,
                tuple(r for r in every if not r.egress),
                tuple(sorted(names)),
                tuple(r for r in every if r.egress),
            )
        )
    wanted = {g for e in guarded for r in (*e.rules, *e.egress) if (g := r.peer_group())}
    mine = sorted({n for e in guarded for n in e.groups})
    return Policy(
        tuple(sorted(guarded, key=lambda g: (g.address.version, int(g.address)))),
        {name: frozenset(members.get(name, ())) for name in sorted(wanted)},
        {name: tuple(sorted(groups.get(name, Group(name)).rules)) for name in mine},
        tuple(sorted(bindings)),
    )
