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
import json
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from netaddr import IPAddress, IPNetwork

from plugstrip.netdrivers.datapath import nflog
from plugstrip.netdrivers.datapath.netlink import run_in
from plugstrip.netdrivers.domain import security
from plugstrip.netdrivers.domain.security import (
    Binding,
    Count,
    Counted,
    Guarded,
    Policy,
    Probe,
    Rule,
    Verdict,
    drop_counter,
    rule_counter,
)

TABLE = "plugstrip"  # inet: the groups' rules, on IP packets crossing the bridges
PORTS = "plugstrip"  # bridge: each port bound to its endpoint, floods to guarded ones
SPOOFED, FLOOD_DROPPED = "spoofed", "flood_dropped"  # the bridge table's drop counters
# What the flow log samples: each table logs its drops to NFLOG at most this often
FLOW_LIMIT, FLOW_RATE = "flowlog", "rate 20/second burst 20 packets"
# What a container may never send: router advertisements and redirects, DHCP answers
_NEVER6 = "icmpv6 type { nd-router-advert, nd-redirect }"
_ND = "nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert"  # IPv6's ARP: always on
# What every IPv6 stack multicasts of itself: a guarded port does without it, and the flow
# log without its noise
_QUIET6 = (
    "nd-router-solicit, mld-listener-query, mld-listener-report, mld-listener-done,"
    " mld2-listener-report"
)


class NftError(RuntimeError):
    pass


def set_name(group: str, version: int) -> str:
    """A group's set of one family: its name as nft allows it, and a hash of the name (so
    ``a-b`` and ``a_b`` stay two sets)."""
    safe = group.replace("-", "_").replace(".", "_")
    return f"g{version}_{safe}_{hashlib.sha256(group.encode()).hexdigest()[:6]}"


def chain_name(address: IPAddress, egress: bool = False) -> str:
    """A guarded endpoint's chain, named by its address: the same while it is guarded."""
    return f"{'out' if egress else 'ep'}_{str(address).replace('.', '_').replace(':', '_')}"


@dataclass
class Body:
    """What one table holds: the objects a script declares."""

    sets: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # name: type, elements
    counters: set[str] = field(default_factory=set)
    chains: dict[str, list[str]] = field(default_factory=dict)  # name: its lines
    limits: dict[str, str] = field(default_factory=lambda: {FLOW_LIMIT: FLOW_RATE})

    def objects(self) -> set[tuple[str, str]]:
        return {
            *(("chain", n) for n in self.chains),
            *(("set", n) for n in self.sets),
            *(("counter", n) for n in self.counters),
            *(("limit", n) for n in self.limits),
        }


class Table:
    """One of plugstrip's tables, rewritten whole in one transaction per change, its named
    counters kept: the first time (and after a failure) the table is deleted and made
    anew; after that it is flushed (its rules go, its counters stay), the sets it keeps
    emptied, what it no longer has deleted, and its objects declared again."""

    def __init__(self, family: str, name: str) -> None:
        self.family, self.name = family, name
        self._have: set[tuple[str, str]] | None = None  # what it holds (None: unknown)

    def script(self, body: Body) -> str:
        head = f"{self.family} {self.name}"
        lines = [f"table {head}"]
        if self._have is None:
            lines.append(f"delete table {head}")
        else:
            lines += [f"add set {head} {n} {{ type {t}; }}" for n, (t, _) in body.sets.items()]
            lines.append(f"flush table {head}")  # rules: the chains' references go
            lines += [f"flush set {head} {n}" for n in body.sets]
            gone = self._have - body.objects()
            for kind in ("chain", "set", "counter", "limit"):
                lines += [f"delete {kind} {head} {n}" for k, n in sorted(gone) if k == kind]
        lines.append(f"table {head} {{")
        for name, (kind, elements) in body.sets.items():
            found = f" elements = {{ {', '.join(elements)} }}" if elements else ""
            lines.append(f"  set {name} {{ type {kind};{found} }}")
        lines += [f"  counter {name} {{ }}" for name in sorted(body.counters)]
        lines += [f"  limit {name} {{ {rate} }}" for name, rate in body.limits.items()]
        for name, rules in body.chains.items():
            lines += [f"  chain {name} {{", *(f"    {r}" for r in rules), "  }"]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def removal(self) -> str:
        """A script that removes the table, there or not."""
        head = f"{self.family} {self.name}"
        return f"table {head}\ndelete table {head}\n"

    def written(self, body: Body | None) -> None:
        """The last script (of ``body``, or None: the removal) was applied."""
        self._have = set() if body is None else body.objects()

    def lost(self) -> None:
        """A script failed: what the table holds is unknown, the next one makes it anew."""
        self._have = None


def _sets(policy: Policy) -> dict[str, tuple[str, list[str]]]:
    return {
        set_name(group, version): (kind, sorted(str(a) for a in members if a.version == version))
        for group, members in sorted(policy.members.items())
        for version, kind in ((4, "ipv4_addr"), (6, "ipv6_addr"))
    }


def rules(policy: Policy) -> Body:
    """The groups' table for ``policy``."""
    body = Body(_sets(policy))
    forward = [
        "type filter hook forward priority filter; policy accept;",
        "ct state established,related accept",
        f"icmpv6 type {{ {_ND} }} accept",
    ]
    directions = ((True, policy.egress_guarded()), (False, policy.guarded))
    for egress, chains in directions:
        for version, family in ((4, "ip"), (6, "ip6")):
            entries = [
                f"{e.address} : jump {chain_name(e.address, egress)}"
                for e in chains
                if e.address.version == version
            ]
            if entries:
                match = f"{family} {'saddr' if egress else 'daddr'}"
                forward.append(f"{match} vmap {{ {', '.join(entries)} }}")
    body.chains["forward"] = forward
    for egress, chains in directions:
        verdict = "return" if egress else "accept"  # egress allowed: on to the receiver's
        for guarded in chains:
            drop = f"d{drop_counter(guarded.groups, egress)}"
            lines = [f"{rule} {verdict}" for rule in _rules(policy, guarded, egress, body)]
            body.counters.add(drop)
            body.chains[chain_name(guarded.address, egress)] = [
                *lines,
                _logged(drop),
                f"counter name {drop} drop",
            ]
    return body


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


def _port_chain(port: str) -> str:
    return f"port_{port.replace('-', '_')}"


def ports(policy: Policy, port_of: Callable[[Binding], str]) -> Body:
    """The bridge table for ``policy``: every endpoint's port (``port_of`` names it)
    bound to its MAC and addresses, and broadcast and multicast to a guarded endpoint
    through its rules."""
    body = Body(_sets(policy), {SPOOFED, FLOOD_DROPPED})
    named = {b: port_of(b) for b in policy.bindings}
    chains = {port: _port_chain(port)[len("port_") :] for port in named.values()}
    prerouting = ["type filter hook prerouting priority -300; policy accept;"]
    if named:
        entries = [f'"{port}" : jump port_{chains[port]}' for port in named.values()]
        prerouting.append(f"iifname vmap {{ {', '.join(entries)} }}")
    body.chains["ports"] = prerouting
    for name, counter in ((_SPOOFED, SPOOFED), (_FLOODED, FLOOD_DROPPED)):
        body.chains[name] = [_logged(counter), f"counter name {counter} drop"]
    for bound, port in named.items():
        body.chains[f"port_{chains[port]}"] = bound_rules(bound)
    floods: dict[str, list[Guarded]] = {}  # a guarded port: its rules of both families
    for guarded in policy.guarded:  # an allowed address may be on two ports
        for port in (p for b, p in named.items() if guarded.address in b.addresses):
            floods.setdefault(port, []).append(guarded)
    forward = ["type filter hook forward priority filter; policy accept;"]
    if floods:
        jumps = ", ".join(f'"{port}" : jump flood_{chains[port]}' for port in floods)
        forward.append(f"meta pkttype {{ broadcast, multicast }} oifname vmap {{ {jumps} }}")
    body.chains["floods"] = forward
    for port, each in floods.items():
        allowed = [f"{r} accept" for g in each for r in _rules(policy, g, False, body)]
        body.chains[f"flood_{chains[port]}"] = [
            "ether type arp accept",
            f"icmpv6 type {{ {_ND} }} accept",
            *allowed,
            f"icmpv6 type {{ {_QUIET6} }} counter name {FLOOD_DROPPED} drop",  # not logged
            f"goto {_FLOODED}",
        ]
    return body


_SPOOFED, _FLOODED = "drop_spoofed", "drop_flood"  # the bridge table's drops: logged, counted


def bound_differs(listing: list[dict[str, Any]], port: str, bound: Binding) -> str | None:
    """What differs between a port's chain in the bridge table and its binding (None:
    nothing): the MAC and the addresses its ``!=`` matches let through."""
    chain = _port_chain(port)
    rules = [r["rule"]["expr"] for r in listing if r.get("rule", {}).get("chain") == chain]
    if not rules:
        return "no binding"
    found: dict[str, set[str]] = {"ether": set(), "ip": set(), "ip6": set()}
    for expr in rules:
        for statement in expr:
            match = statement.get("match", {})
            payload = match.get("left", {}).get("payload", {})
            if match.get("op") != "!=" or payload.get("field") != "saddr":
                continue
            right = match["right"]
            values = right["set"] if isinstance(right, dict) and "set" in right else [right]
            if payload.get("protocol") in found:
                found[payload["protocol"]] |= {str(v) for v in values}
    wanted = {
        "ether": {bound.mac},
        "ip": {str(a) for a in bound.of(4)} or {"255.255.255.255"},
        "ip6": {"::", *(str(a) for a in bound.of(6))},
    }
    wrong = [
        f"{kind}: has {sorted(found[kind])}, the store says {sorted(wanted[kind])}"
        for kind in wanted
        if found[kind] != wanted[kind]
    ]
    return "; ".join(wrong) or None


def guarded_in(listing: str) -> set[tuple[str, str]]:
    """The (direction, address) pairs a listing of the groups' table (``nft list``)
    sends to a guarded endpoint's chain."""
    return {
        (way, address)
        for way, chain in (("in", "ep"), ("out", "out"))
        for address in re.findall(rf"([0-9a-f.:]+) : jump {chain}_[0-9a-f_]+", listing)
    }


def _logged(prefix: str) -> str:
    """A rule logging what reaches it to the flow log's NFLOG group (sampled: the table's
    limit), its prefix telling why (a counter's name)."""
    return f'limit name {FLOW_LIMIT} log group {nflog.GROUP} prefix "{prefix}"'


def bound_rules(bound: Binding) -> list[str]:
    """A port's chain: its MAC, its addresses, ARP and neighbour discovery only for them."""
    drop = f"goto {_SPOOFED}"
    v4 = ", ".join(str(a) for a in bound.of(4)) or "255.255.255.255"
    v6 = ", ".join(str(a) for a in [IPAddress("::"), *bound.of(6)])  # ::, for DAD
    targets = ", ".join(f"{int(a):#034x}" for a in bound.of(6))
    own = {4: ", ".join(str(a) for a in bound.of(4)), 6: ", ".join(str(a) for a in bound.of(6))}
    fast = [  # TCP from its own address, most of what it sends: two rules, not a dozen
        f"{family} saddr {{ {own[version]} }} meta l4proto tcp accept"
        for version, family in ((4, "ip"), (6, "ip6"))
        if own[version]
    ]
    return [
        f"ether saddr != {bound.mac} {drop}",
        *fast,
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


def _rules(policy: Policy, guarded: Guarded, egress: bool, body: Body) -> list[str]:
    """A guarded endpoint's rules of one direction as matches, each counted (the rule's
    group's counter, added to ``body``)."""
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
        counter = f"r{rule_counter(policy.group_of(guarded, rule), rule)}"
        body.counters.add(counter)
        out.append(" ".join(p for p in (peer, l4, f"counter name {counter}") if p))
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
    await _run(["nft", "-f", "-"], text, netns)


async def _run(cmd: list[str], stdin: str, netns: str | None) -> str:
    if shutil.which("nft") is None:
        raise NftError("security groups on plugstrip/weave need nft (apt install nftables)")
    if netns is not None:
        cmd = ["nsenter", f"--net={netns}", *cmd]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin.encode())
    if proc.returncode != 0:
        raise NftError(f"nft: {err.decode().strip()}")
    return out.decode()


async def listing(family: str, table: str, netns: str | None = None) -> list[dict[str, Any]]:
    """A table as ``nft -j list`` has it (none: no items)."""
    try:
        out = await _run(["nft", "-j", "list", "table", family, table], "", netns)
    except NftError:
        return []
    return list(json.loads(out).get("nftables", []))


async def listing_text(family: str, table: str, netns: str | None = None) -> str:
    """A table as ``nft list`` prints it ("": there is none)."""
    if shutil.which("nft") is None:
        raise NftError("nft is not installed (apt install nftables)")
    try:
        return await _run(["nft", "list", "table", family, table], "", netns)
    except NftError:
        return ""  # no table: nothing guarded here


async def counts(policy: Policy, netns: str | None = None) -> list[Count]:
    """The counters of both tables, as ``policy`` (the one they were written for) names
    them: its rules' and drops', and the ports' spoofed frames and floods dropped."""
    out = await _run(["nft", "-j", "list", "counters"], "", netns)
    named = {
        SPOOFED: Counted("", reason=security.SPOOFED),
        FLOOD_DROPPED: Counted("", reason=security.FLOOD),
    }
    ids = policy.counted()
    found = []
    for item in json.loads(out).get("nftables", []):
        counter = item.get("counter")
        if counter is None or counter["table"] not in (TABLE, PORTS):
            continue
        name = counter["name"]
        counted = named.get(name) or ids.get(name[1:])
        if counted is not None:
            found.append(Count(name, counted, int(counter["packets"]), int(counter["bytes"])))
    return found


class Unreadable(ValueError):
    """The ruleset holds what :func:`verdict` cannot evaluate (not plugstrip's writing)."""


def verdict(listing: str, probe: Probe) -> Verdict:
    """What the groups' table in ``listing`` (``nft -j list table inet plugstrip``)
    does with ``probe``: its forward chain evaluated as the kernel would, for the
    expressions plugstrip writes (anything else is :class:`Unreadable`)."""
    items = json.loads(listing).get("nftables", [])
    sets = {i["set"]["name"]: i["set"].get("elem", []) for i in items if "set" in i}
    chains: dict[str, list[list[dict[str, Any]]]] = {}
    for item in items:
        if "rule" in item:
            chains.setdefault(item["rule"]["chain"], []).append(item["rule"]["expr"])
    steps: list[str] = []
    passed: list[str] = []  # the counters of the rules that gave a verdict, in order

    def run(chain: str) -> tuple[str, str | None]:
        """(verdict: accept, drop, return or "" at the chain's end, its counter)"""
        for expr in chains.get(chain, []):
            counter = None
            for statement in expr:
                if "match" in statement:
                    if not _matches(statement["match"], probe, sets):
                        break
                elif "counter" in statement:
                    counter = statement["counter"]
                elif "limit" in statement or "log" in statement:
                    continue  # the flow log's sample: no verdict
                elif "vmap" in statement:
                    target = _lookup(statement["vmap"], probe)
                    if target is None:
                        break
                    steps.append(f"{chain}: jump {target}")
                    result, counted = run(target)
                    if result in ("accept", "drop"):
                        return result, counted
                    break  # returned: on with the next rule
                elif any(v in statement for v in ("accept", "drop", "return")):
                    (result,) = (v for v in ("accept", "drop", "return") if v in statement)
                    steps.append(
                        f"{chain}: {result}" + (f" (counter {counter})" if counter else "")
                    )
                    if counter:
                        passed.append(counter[1:])
                    return result, counter
                else:
                    raise Unreadable(f"chain {chain}: {json.dumps(statement)}")
        return "", None

    result, _ = run("forward")
    if result == "":
        steps.append("forward: policy accept")
    return Verdict(result != "drop", tuple(passed), tuple(steps))


def _value(left: dict[str, Any], probe: Probe) -> object:
    """A packet field as a match's left side names it (None: the packet has none)."""
    version = probe.src.version
    if "payload" in left:
        protocol, field_ = left["payload"]["protocol"], left["payload"]["field"]
        if protocol in ("ip", "ip6"):
            if protocol != ("ip" if version == 4 else "ip6"):
                return None
            return probe.src if field_ == "saddr" else probe.dst if field_ == "daddr" else None
        if protocol in ("tcp", "udp") and field_ == "dport":
            return probe.port if probe.proto == protocol else None
        if protocol == "icmpv6" and field_ == "type":
            return None  # a probe is a connection's first packet, not neighbour discovery
    elif left.get("meta", {}).get("key") == "l4proto":
        return {"icmpv6": "ipv6-icmp"}.get(probe.proto, probe.proto)
    elif left.get("ct", {}).get("key") == "state":
        return "new"
    raise Unreadable(f"a match on {json.dumps(left)}")


def _matches(match: dict[str, Any], probe: Probe, sets: dict[str, list[Any]]) -> bool:
    value = _value(match["left"], probe)
    if value is None:
        return False
    found = _within(value, match["right"], sets)
    return found if match["op"] in ("==", "in") else not found


def _within(value: object, right: object, sets: dict[str, list[Any]]) -> bool:
    if isinstance(right, str) and right.startswith("@"):
        return any(_within(value, e, sets) for e in sets.get(right[1:], []))
    if isinstance(right, list):
        return any(_within(value, e, sets) for e in right)
    if isinstance(right, dict):
        if "set" in right:
            return _within(value, right["set"], sets)
        if "prefix" in right:
            prefix = right["prefix"]
            return isinstance(value, IPAddress) and value in IPNetwork(
                f"{prefix['addr']}/{prefix['len']}"
            )
        if "range" in right:
            low, high = right["range"]
            return isinstance(value, int) and int(low) <= value <= int(high)
        raise Unreadable(f"a value {json.dumps(right)}")
    if isinstance(value, IPAddress):
        return isinstance(right, str) and value == IPAddress(right)
    return value == right


def _lookup(vmap: dict[str, Any], probe: Probe) -> str | None:
    """The chain a verdict map jumps to for ``probe`` (None: no element matches)."""
    value = _value(vmap["key"], probe)
    for key, target in vmap["data"]["set"]:
        if value is not None and _within(value, key, {}):
            jump = target.get("jump") or target.get("goto")
            if jump is None:
                raise Unreadable(f"a verdict map's verdict {json.dumps(target)}")
            return str(jump["target"])
    return None


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
