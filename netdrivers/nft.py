"""Security groups on the kernel datapath: one nftables table plugstrip owns.

``inet plugstrip``, a forward-hook chain that sees the frames crossing plugstrip's bridges
as IP packets (bridge-nf-call-iptables, which dockerd turns on anyway and this module
makes sure of). Connection tracking passes replies and established flows; a verdict map
sends new traffic from an endpoint whose groups have egress rules to its ``out`` chain
(an allowing rule returns, else drop), then one sends new traffic to a guarded endpoint
(one lookup, however many there are) to its ``ep`` chain, whose rules accept it or it is
dropped. Group membership is a named set
per group and family, so a rule ``from web`` is one set lookup, and a member coming or
going rewrites a set, not a rule.

Through the ``nft`` command with a whole script per change (``nft -f``, one kernel
transaction): the Python bindings (python3-nftables) belong to Debian's interpreter and
are not on PyPI, and the script is the same text an operator reads with ``nft list``.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Callable, Iterable

from netaddr import IPAddress

from plugstrip.netdrivers.netlink import run_in
from plugstrip.netdrivers.security import Binding, Guarded, Policy, Rule

TABLE = "plugstrip"  # inet: the groups' rules, on IP packets crossing the bridges
PORTS = "plugstrip"  # bridge: each port bound to its endpoint, floods to guarded ones
SPOOFED, FLOOD_DROPPED = "spoofed", "flood_dropped"  # the bridge table's drop counters
# What a container may never send: router advertisements and redirects, DHCP answers
_NEVER6 = "icmpv6 type { nd-router-advert, nd-redirect }"
_ND = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert"  # IPv6's ARP: always on


class NftError(RuntimeError):
    pass


def set_name(group: str, version: int) -> str:
    """A group's set of one family: its name as nft allows it, and a hash of the name (so
    ``a-b`` and ``a_b`` stay two sets)."""
    safe = group.replace("-", "_").replace(".", "_")
    return f"g{version}_{safe}_{hashlib.sha256(group.encode()).hexdigest()[:6]}"


def chain_name(index: int, egress: bool = False) -> str:
    return f"{'out' if egress else 'ep'}{index}"


def script(policy: Policy) -> str:
    """The whole table for ``policy``, replacing what was there (in one transaction)."""
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{"]
    for group, members in sorted(policy.members.items()):
        for version, kind in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            lines.append(
                f"  set {set_name(group, version)} {{ type {kind};{_elements(members, version)} }}"
            )
    lines += [
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        "    ct state established,related accept",
        f"    icmpv6 type {{ {_ND} }} accept",
    ]
    directions = ((True, policy.egress_guarded()), (False, policy.guarded))
    for egress, chains in directions:
        for version, family in ((4, "ip"), (6, "ip6")):
            entries = [
                f"{e.address} : jump {chain_name(i, egress)}"
                for i, e in enumerate(chains)
                if e.address.version == version
            ]
            if entries:
                match = f"{family} {'saddr' if egress else 'daddr'}"
                lines.append(f"    {match} vmap {{ {', '.join(entries)} }}")
    lines.append("  }")
    for egress, chains in directions:
        verdict = "return" if egress else "accept"  # egress allowed: on to the receiver's
        for i, guarded in enumerate(chains):
            lines.append(f"  chain {chain_name(i, egress)} {{")
            lines += [f"    {rule} {verdict}" for rule in _rules(guarded, egress)]
            lines += ["    drop", "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def members_script(policy: Policy, groups: Iterable[str]) -> str:
    """Only the member sets of ``groups`` rewritten, in both tables (the rules are as
    they were)."""
    lines = []
    for group in sorted(groups):
        for version in (4, 6):
            name = set_name(group, version)
            addresses = [str(a) for a in policy.members[group] if a.version == version]
            for table in (f"inet {TABLE}", f"bridge {PORTS}"):
                lines.append(f"flush set {table} {name}")
                if addresses:
                    lines.append(f"add element {table} {name} {{ {', '.join(addresses)} }}")
    return "\n".join(lines) + "\n"


def ports_script(policy: Policy, port_of: Callable[[Binding], str]) -> str:
    """The bridge table for ``policy``: every endpoint's port (``port_of`` names it)
    bound to its MAC and addresses, and broadcast and multicast to a guarded endpoint
    through its rules, replacing what was there (in one transaction)."""
    lines = [f"table bridge {PORTS}", f"delete table bridge {PORTS}", f"table bridge {PORTS} {{"]
    lines += [f"  counter {SPOOFED} {{ }}", f"  counter {FLOOD_DROPPED} {{ }}"]
    for group, members in sorted(policy.members.items()):
        for version, kind in ((4, "ipv4_addr"), (6, "ipv6_addr")):
            lines.append(
                f"  set {set_name(group, version)} {{ type {kind};{_elements(members, version)} }}"
            )
    ports = {b: port_of(b) for b in policy.bindings}
    lines += ["  chain ports {", "    type filter hook prerouting priority -300; policy accept;"]
    if ports:
        entries = [f'"{port}" : jump port{i}' for i, port in enumerate(ports.values())]
        lines.append(f"    iifname vmap {{ {', '.join(entries)} }}")
    lines.append("  }")
    for i, bound in enumerate(ports):
        lines += [f"  chain port{i} {{", *(f"    {r}" for r in _bound(bound)), "  }"]
    floods: dict[str, list[Guarded]] = {}  # a guarded port: its rules of both families
    for guarded in policy.guarded:  # an allowed address may be on two ports
        for port in (p for b, p in ports.items() if guarded.address in b.addresses):
            floods.setdefault(port, []).append(guarded)
    lines += ["  chain floods {", "    type filter hook forward priority filter; policy accept;"]
    if floods:
        jumps = ", ".join(f'"{port}" : jump flood{i}' for i, port in enumerate(floods))
        lines.append(f"    meta pkttype {{ broadcast, multicast }} oifname vmap {{ {jumps} }}")
    lines.append("  }")
    for i, each in enumerate(floods.values()):
        lines += [
            f"  chain flood{i} {{",
            "    ether type arp accept",
            f"    icmpv6 type {{ {_ND} }} accept",
            *(f"    {rule} accept" for guarded in each for rule in _rules(guarded, egress=False)),
            f"    counter name {FLOOD_DROPPED} drop",
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _bound(bound: Binding) -> list[str]:
    """A port's chain: its MAC, its addresses, ARP and neighbour discovery only for them."""
    drop = f"counter name {SPOOFED} drop"
    v4 = ", ".join(str(a) for a in bound.of(4)) or "255.255.255.255"
    v6 = ", ".join(str(a) for a in [IPAddress("::"), *bound.of(6)])  # ::, for DAD
    targets = ", ".join(f"{int(a):#034x}" for a in bound.of(6))
    return [
        f"ether saddr != {bound.mac} {drop}",
        f"arp saddr ether != {bound.mac} {drop}",
        f"arp saddr ip != {{ 0.0.0.0, {v4} }} {drop}",  # 0.0.0.0: a probe, claims nothing
        "ether type arp accept",
        f"ip saddr != {{ {v4} }} {drop}",
        f"udp sport 67 {drop}",
        "ether type ip accept",
        f"ip6 saddr != {{ {v6} }} {drop}",
        f"{_NEVER6} {drop}",
        # the target of a neighbour advertisement: bits 64-191 of the ICMPv6 message
        f"icmpv6 type nd-neighbor-advert @th,64,128 != {{ {targets} }} {drop}",
        f"udp sport 547 {drop}",
        "ether type ip6 accept",
        drop,  # any other protocol
    ]


def _elements(members: Iterable[IPAddress], version: int) -> str:
    found = sorted(str(a) for a in members if a.version == version)
    return f" elements = {{ {', '.join(found)} }}" if found else ""


def _rules(guarded: Guarded, egress: bool) -> list[str]:
    version = guarded.address.version
    family = "ip" if version == 4 else "ip6"
    out = []
    for rule in guarded.rules_of(egress):
        peer = _peer(rule, version, f"{family} {'daddr' if egress else 'saddr'}")
        if peer is None:
            continue  # a CIDR of the other family
        l4 = _l4(rule, version)
        if l4 is None:
            continue  # icmp for IPv6 or icmpv6 for IPv4: nothing of this family
        out.append(" ".join(p for p in (peer, l4) if p))
    return out


def _peer(rule: Rule, version: int, match: str) -> str | None:
    cidr = rule.peer_cidr()
    if cidr is not None:
        return f"{match} {cidr}" if cidr.version == version else None
    group = rule.peer_group()
    return f"{match} @{set_name(group, version)}" if group else ""


def _l4(rule: Rule, version: int) -> str | None:
    if rule.proto == "any":
        return ""
    if rule.proto in ("icmp", "icmpv6"):
        wanted = "icmp" if version == 4 else "icmpv6"
        return (
            f"meta l4proto {'icmp' if version == 4 else 'ipv6-icmp'}"
            if rule.proto == wanted
            else None
        )
    if rule.ports is None:
        return f"meta l4proto {rule.proto}"
    first, last = rule.ports
    return f"{rule.proto} dport {first if first == last else f'{first}-{last}'}"


async def apply(text: str, netns: str | None = None) -> None:
    """Run an nft script in ``netns`` (None: here), all of it or none."""
    if shutil.which("nft") is None:
        raise NftError("security groups on plugstrip/weave need nft (apt install nftables)")
    cmd = ["nft", "-f", "-"]
    if netns is not None:
        cmd = ["nsenter", f"--net={netns}", *cmd]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate(text.encode())
    if proc.returncode != 0:
        raise NftError(f"nft: {err.decode().strip()}")


def removal(family: str = "inet") -> str:
    """A script that removes plugstrip's table of ``family``, there or not."""
    name = TABLE if family == "inet" else PORTS
    return f"table {family} {name}\ndelete table {family} {name}\n"


async def bridges_filtered(netns: str | None = None) -> None:
    """Frames crossing Linux bridges through the IP hooks (dockerd does this too). Only
    written when off: in a container /proc/sys is read-only, and dockerd has turned them
    on already."""

    def turn_on() -> None:
        for family in ("iptables", "ip6tables"):
            path = f"/proc/sys/net/bridge/bridge-nf-call-{family}"
            try:
                with open(path) as sysctl:
                    if sysctl.read().strip() == "1":
                        continue
                with open(path, "w") as sysctl:
                    sysctl.write("1")
            except OSError as exc:
                raise NftError(
                    f"security groups on plugstrip/weave need {path} set to 1"
                    f" (modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-{family}=1):"
                    f" {exc.strerror}"
                ) from None

    await asyncio.to_thread(run_in, netns, turn_on)
