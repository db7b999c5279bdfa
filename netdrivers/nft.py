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
from collections.abc import Iterable

from netaddr import IPAddress

from plugstrip.netdrivers.netlink import run_in
from plugstrip.netdrivers.security import Guarded, Policy, Rule

TABLE = "plugstrip"
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
    """Only the member sets of ``groups`` rewritten (the rules are as they were)."""
    lines = []
    for group in sorted(groups):
        for version in (4, 6):
            name = set_name(group, version)
            lines.append(f"flush set inet {TABLE} {name}")
            addresses = [str(a) for a in policy.members[group] if a.version == version]
            if addresses:
                lines.append(f"add element inet {TABLE} {name} {{ {', '.join(addresses)} }}")
    return "\n".join(lines) + "\n"


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


async def remove(netns: str | None = None) -> None:
    if shutil.which("nft") is None:
        return  # no nftables here: no table of plugstrip's either
    await apply(f"table inet {TABLE}\ndelete table inet {TABLE}\n", netns)


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
