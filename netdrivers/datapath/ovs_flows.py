"""Security groups on Open vSwitch: OpenFlow tables with conntrack, in the style of OVS's
own firewall drivers, on the integration bridge plugstrip owns.

    table 0   every endpoint's port bound: frames from it pass on (to table 5) only
              with its MAC and one of its addresses, ARP and neighbour advertisements
              only for those, no router advertisements or DHCP answers; the rest of what
              it sends is dropped (counted: cookie SPOOFED); other ports (tunnels, the
              bridge's own) pass on
    table 5   IPv6 neighbour discovery passes; broadcast and multicast IP on a network
              with a guarded endpoint here is flooded by hand: to each unguarded port of
              the network, and to each guarded one through table 6; other IP goes through
              conntrack, to table 1; the rest (ARP) is switched as before (NORMAL)
    table 6   a flood to one guarded endpoint (its port in reg6): out to it if one of
              its ingress rules allows the sender and port, else dropped (counted:
              cookie FLOOD_DROPPED)
    table 1   established and related pass, invalid drops; new traffic from an endpoint
              whose groups have egress rules goes to table 3, other new traffic to 4
    table 3   an endpoint's egress rules: what one allows goes on to table 4, else drop
    table 4   new traffic to a guarded endpoint goes to table 2, to any other is
              committed and passes
    table 2   a guarded endpoint's ingress rules: from anyone or a CIDR, one flow; from a
              group, a conjunctive match per (peer group, endpoint's group): the peer's
              members x the group's endpoints here x the rules' protocols and ports, so a
              member, an endpoint or a rule coming or going is a flow or two, and a rule
              costs one classifier lookup however large the group; else drop (a flow per
              endpoint, counted: its groups' drops)
    table 7   which rule of a conjunction's allowed it (the conjunction's id in reg7): a
              flow per rule, counted (its cookie); tables 2, 3 and 6 count the rules they
              decide by themselves the same way

Tables 3 and 2 are the two directions of one shape (table 3 with source and destination
swapped). Programmed with ``ovs-ofctl``: the flows that changed since the last time, and
now and then (and at start) ``replace-flows``, which reconciles the bridge to the policy
whatever it had. Each in one OpenFlow bundle: the switch takes a change whole or not at
all (no rule half-installed), and commits it once: the first rule naming a group of 1,000
members adds 1,000 flows, which as separate flow mods took a userspace switch 130 ms
idle and 400-800 ms on a loaded machine, and as one bundle 20-40 ms idle.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Callable, Mapping, Sequence

from netaddr import IPAddress

from plugstrip.netdrivers.domain import security
from plugstrip.netdrivers.domain.security import (
    Binding,
    Count,
    Counted,
    Denial,
    Guarded,
    Policy,
    Probe,
    Rule,
    Verdict,
    drop_counter,
    port_masks,
    rule_counter,
)

ZONE = 1  # subnets never overlap across plugstrip networks: one conntrack zone serves
PASS = f"ct(commit,zone={ZONE}),NORMAL"
INGRESS, EGRESS, AFTER_EGRESS, CLASSIFY, FLOOD, GROUP_RULES = 2, 3, 4, 5, 6, 7  # tables
_GROUP_BITS = "01:00:00:00:00:00/01:00:00:00:00:00"  # a broadcast or multicast destination
SPOOFED, FLOOD_DROPPED = 0x5B00F, 0xF100D  # the cookies of the drop flows counted
_COUNTED = 1 << 63  # the top bit of a rule's or a drop's cookie (security.Policy.counted)
METER = 1  # the flow log's: drops sent to a controller (the flow log) at most this often
FLOW_RATE = 20  # packets a second
_LOGGED = f"meter:{METER},controller(max_len=128)"  # a drop the flow log samples


def cookie(counter_id: str) -> int:
    """The cookie of the flows a counter of ``Policy.counted`` counts."""
    return _COUNTED | int(counter_id, 16)


def flows(
    policy: Policy,
    port_of: Callable[[Binding], int | None] = lambda b: None,
    tunnels: Mapping[str, Sequence[int]] | None = None,
    logged: bool = False,
) -> list[str]:
    """Every flow of the bridge for ``policy``, each binding's port numbered by
    ``port_of`` (None: not on the bridge), ``tunnels`` the port numbers of each network's
    tunnels; with nothing bound or guarded, switching as before. ``logged``: the counted
    drops go to the flow log (through meter ``METER``, which must be there)."""
    drop = _LOGGED if logged else "drop"
    bound = [(b, n) for b in policy.bindings if (n := port_of(b)) is not None]
    if not policy.guarded and not bound:
        return ["table=0,priority=0,actions=NORMAL"]
    out = list(_PASS_ON)
    for binding, number in bound:
        out += _bound(binding, number, drop)
    if not policy.guarded:
        return out
    out += [
        f"table={CLASSIFY},priority=200,icmp6,icmp_type=135,actions=NORMAL",
        f"table={CLASSIFY},priority=200,icmp6,icmp_type=136,actions=NORMAL",
        f"table={CLASSIFY},priority=100,ip,actions=ct(table=1,zone={ZONE})",
        f"table={CLASSIFY},priority=100,ipv6,actions=ct(table=1,zone={ZONE})",
        *_floods(policy, bound, tunnels or {}, drop),
        "table=1,priority=100,ct_state=+trk+est,actions=NORMAL",
        "table=1,priority=100,ct_state=+trk+rel,actions=NORMAL",
        "table=1,priority=90,ct_state=+trk+inv,actions=drop",
        f"table=1,priority=0,actions=resubmit(,{AFTER_EGRESS})",
        f"table={AFTER_EGRESS},priority=0,ip,actions={PASS}",  # ct() wants its L3 matched
        f"table={AFTER_EGRESS},priority=0,ipv6,actions={PASS}",
        f"table={INGRESS},priority=0,actions=drop",
        f"table={EGRESS},priority=0,actions=drop",
        f"table={GROUP_RULES},priority=0,actions=drop",
    ]
    for guarded in policy.guarded:
        ip = _ip(guarded.address)
        out.append(
            f"table={AFTER_EGRESS},priority=50,{ip},{_dst(ip)}={guarded.address},"
            f"actions=resubmit(,{INGRESS})"
        )
    for guarded in policy.egress_guarded():
        ip = _ip(guarded.address)
        out.append(
            f"table=1,priority=50,ct_state=+trk+new,{ip},{_src(ip)}={guarded.address},"
            f"actions=resubmit(,{EGRESS})"
        )
    for egress in (False, True):
        out += _direction(policy, egress, drop)
    return out


# what is not dropped in table 0 goes on to table 5, which switches what it does not guard
_PASS_ON = (
    f"table=0,priority=0,actions=resubmit(,{CLASSIFY})",
    f"table={CLASSIFY},priority=0,actions=NORMAL",
)


def port_flows(binding: Binding, port: int, logged: bool = False) -> list[str]:
    """What binds one port, as ``flows`` has it: for ``join``, before the port's container
    end is plugged in (the rest of the bridge's flows as they were)."""
    return [*_PASS_ON, *_bound(binding, port, _LOGGED if logged else "drop")]


def _bound(binding: Binding, port: int, dropped: str) -> list[str]:
    """The table-0 flows of one endpoint's port: what it may send goes on, the rest is
    dropped and counted."""
    on = f"actions=resubmit(,{CLASSIFY})"
    mine = f"table=0,priority=300,in_port={port},dl_src={binding.mac}"
    drop = f"cookie={SPOOFED:#x},table=0,priority=%d,in_port={port}%s,actions={dropped}"
    v4, v6 = binding.of(4), binding.of(6)
    out = [drop % (100, "")]
    out += [f"{mine},arp,arp_sha={binding.mac},arp_spa={a},{on}" for a in ["0.0.0.0", *v4]]
    out += [f"{mine},ip,nw_src={a},{on}" for a in v4]
    out += [f"{mine},ipv6,ipv6_src={a},{on}" for a in ["::", *v6]]  # ::, for DAD
    out += [drop % (310, ",udp,tp_src=67"), drop % (310, ",udp6,tp_src=547")]
    out += [drop % (310, f",icmp6,icmp_type={t}") for t in (134, 137)]  # RA, redirect
    # a neighbour advertisement only for its own addresses, from its own
    out.append(drop % (315, ",icmp6,icmp_type=136"))
    out += [
        f"table=0,priority=320,in_port={port},dl_src={binding.mac},icmp6,icmp_type=136,"
        f"ipv6_src={src},nd_target={target},{on}"
        for src in v6
        for target in v6
    ]
    return out


def _floods(
    policy: Policy,
    bound: list[tuple[Binding, int]],
    tunnels: Mapping[str, Sequence[int]],
    drop: str,
) -> list[str]:
    """Broadcast and multicast IP on each network with a guarded port here, flooded by
    hand (NORMAL would give it to every port): each guarded port takes it only through
    its ingress rules, in table 6."""
    guarded: dict[int, list[Guarded]] = {}  # a guarded port: its endpoint, each family
    for each in policy.guarded:
        for binding, port in bound:
            if each.address in binding.addresses:
                guarded.setdefault(port, []).append(each)
    ports: dict[str, list[int]] = {}
    for binding, port in bound:
        ports.setdefault(binding.network_id, []).append(port)
    out = []
    for network, local in ports.items():
        if not any(p in guarded for p in local):
            continue
        remote = list(tunnels.get(network, ()))
        for source in [*local, *remote]:
            # a tunnel's flood came from a host that floods to the others itself
            targets = [*local, *(remote if source not in remote else ())]
            actions = [f"output:{q}" for q in targets if q != source and q not in guarded]
            actions += [
                f"load:{q}->NXM_NX_REG6[],resubmit(,{FLOOD})"
                for q in local
                if q != source and q in guarded
            ]
            for ip in ("ip", "ipv6"):
                out.append(
                    f"table={CLASSIFY},priority=150,in_port={source},dl_dst={_GROUP_BITS},"
                    f"{ip},actions={','.join(actions) or 'drop'}"
                )
    for port, endpoints in guarded.items():
        for each in endpoints:
            version = each.address.version
            ip = _ip(each.address)
            for rule in each.rules:
                counted = f"cookie={_rule_cookie(policy, each, rule):#x}"
                for l4 in _l4(rule, version) or ():
                    for sender in _sources(policy, rule, version, _src(ip)):
                        match = ",".join(m for m in (f"reg6={port}", l4, sender) if m)
                        out.append(
                            f"{counted},table={FLOOD},priority=10,{match},actions=output:{port}"
                        )
    out.append(f"cookie={FLOOD_DROPPED:#x},table={FLOOD},priority=0,actions={drop}")
    # what every IPv6 stack multicasts of itself (router solicitations, MLD): a guarded
    # port does without it, and the flow log without its noise
    out += [
        f"cookie={FLOOD_DROPPED:#x},table={FLOOD},priority=5,icmp6,icmp_type={t},actions=drop"
        for t in (130, 131, 132, 133, 143)
    ]
    return out


def _rule_cookie(policy: Policy, guarded: Guarded, rule: Rule) -> int:
    return cookie(rule_counter(policy.group_of(guarded, rule), rule))


def _sources(policy: Policy, rule: Rule, version: int, field: str) -> list[str]:
    """A rule's senders as matches of one family (none: the rule has none in it)."""
    cidr = rule.peer_cidr()
    if cidr is not None:
        return [f"{field}={cidr}"] if cidr.version == version else []
    group = rule.peer_group()
    if group is None:
        return [""]  # anyone
    members = sorted((a for a in policy.members.get(group, ()) if a.version == version), key=int)
    return [f"{field}={a}" for a in members]


def _direction(policy: Policy, egress: bool, drop: str) -> list[str]:
    """The flows of one direction's rules table: for ingress, traffic from a peer to a
    guarded endpoint; for egress, from a guarded endpoint to a peer."""
    table = EGRESS if egress else INGRESS
    allowed = f"resubmit(,{AFTER_EGRESS})" if egress else PASS

    def ends(ip: str, peer: object, mine: object) -> str:  # the (source, destination) match
        ends = zip((_src(ip), _dst(ip)), (mine, peer) if egress else (peer, mine), strict=True)
        return ",".join(f"{field}={value}" for field, value in ends if value is not None)

    out = []
    for guarded in policy.guarded:  # from (to) anyone or a CIDR: one flow per endpoint
        ip = _ip(guarded.address)
        if egress and not guarded.egress:
            continue
        mine = _dst(ip) if not egress else _src(ip)
        dropped = cookie(drop_counter(guarded.groups, egress))
        out.append(
            f"cookie={dropped:#x},table={table},priority=1,{ip},{mine}={guarded.address},"
            f"actions={drop}"
        )
        for rule in guarded.rules_of(egress):
            cidr = rule.peer_cidr()
            l4s = _l4(rule, guarded.address.version)
            if rule.peer_group() is not None or l4s is None:
                continue
            if cidr is not None and cidr.version != guarded.address.version:
                continue
            counted = f"cookie={_rule_cookie(policy, guarded, rule):#x}"
            for l4 in l4s:
                match = ends(ip, cidr, guarded.address)
                out.append(f"{counted},table={table},priority=20,{l4},{match},actions={allowed}")
    # From (to) a group: one conjunction per (peer group, endpoint's group, family), whose
    # dimensions are the peer's members, the group's endpoints here, and the rules'
    # protocols and ports; a rule, a member or an endpoint is then a flow or two.
    conjunctions: dict[str, list[str]] = {}  # a match -> its conjunction actions
    for target, every in policy.rules.items():
        rules = [r for r in every if r.egress == egress]
        for version in (4, 6):
            here = [g.address for g in policy.guarded if target in g.groups]
            here = [a for a in here if a.version == version]
            ip = "ip" if version == 4 else "ipv6"
            for peer in sorted({g for r in rules if (g := r.peer_group())}):
                members = [a for a in policy.members.get(peer, ()) if a.version == version]
                l4s = [m for r in rules if r.peer_group() == peer for m in _l4(r, version) or ()]
                if not (here and members and l4s):
                    continue
                conj = conj_id(peer, target, version, egress)
                for member in sorted(members, key=int):
                    conjunctions.setdefault(f"{ip},{ends(ip, member, None)}", []).append(
                        f"conjunction({conj},1/3)"
                    )
                for address in sorted(here, key=int):
                    conjunctions.setdefault(f"{ip},{ends(ip, None, address)}", []).append(
                        f"conjunction({conj},2/3)"
                    )
                for l4 in sorted(set(l4s)):
                    conjunctions.setdefault(l4, []).append(f"conjunction({conj},3/3)")
                out.append(
                    f"table={table},priority=10,conj_id={conj},{ip},"
                    f"actions=load:{conj}->NXM_NX_REG7[],resubmit(,{GROUP_RULES})"
                )
                for rule in (r for r in rules if r.peer_group() == peer):  # which one: counted
                    counted = f"cookie={cookie(rule_counter(target, rule)):#x}"
                    for l4 in _l4(rule, version) or ():
                        out.append(
                            f"{counted},table={GROUP_RULES},priority=10,reg7={conj},{l4},"
                            f"actions={allowed}"
                        )
    for match, actions in conjunctions.items():
        out.append(f"table={table},priority=10,{match},actions={','.join(sorted(actions))}")
    return out


def conj_id(peer: str, target: str, version: int, egress: bool = False) -> int:
    """A conjunction's id, the same whatever else the policy holds (so a new rule or group
    elsewhere leaves this one's flows as they are)."""
    key = f"{peer}\0{target}\0{version}" + ("\0egress" if egress else "")
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF or 1


def _src(ip: str) -> str:
    return "nw_src" if ip == "ip" else "ipv6_src"


def _dst(ip: str) -> str:
    return "nw_dst" if ip == "ip" else "ipv6_dst"


def _ip(address: IPAddress) -> str:
    return "ip" if address.version == 4 else "ipv6"


def _l4(rule: Rule, version: int) -> list[str] | None:
    """The protocol and port matches of a rule in one family (None: none in it)."""
    six = version == 6
    if rule.proto == "any":
        return ["ipv6" if six else "ip"]
    if rule.proto in ("icmp", "icmpv6"):
        if (rule.proto == "icmpv6") != six:
            return None
        return ["icmp6" if six else "icmp"]
    proto = f"{rule.proto}6" if six else rule.proto
    if rule.ports is None:
        return [proto]
    return [f"{proto},tp_dst={value:#06x}/{mask:#06x}" for value, mask in port_masks(*rule.ports)]


def counts(policy: Policy, dump: str) -> list[Count]:
    """The counted flows of a ``dump-flows`` (``policy``'s, the one they were programmed
    for), summed by cookie: its rules' and drops', and the spoofed frames and floods
    dropped."""
    from ovs.flow.ofp import OFPFlow  # ovs's own parser of ovs-ofctl's text

    named = {
        SPOOFED: Counted("", reason=security.SPOOFED),
        FLOOD_DROPPED: Counted("", reason=security.FLOOD),
    }
    named |= {cookie(i): c for i, c in policy.counted().items()}
    sums: dict[int, tuple[int, int]] = {}
    for line in dump.splitlines():
        if "actions=" not in line:
            continue
        info = OFPFlow(line.strip()).info
        found = info.get("cookie", 0)
        if found in named:
            packets, octets = sums.get(found, (0, 0))
            sums[found] = (packets + info.get("n_packets", 0), octets + info.get("n_bytes", 0))
    return [Count(f"{c:#x}", named[c], p, b) for c, (p, b) in sums.items()]


def denial(
    policy: Policy, head: str, packet: str, owner_of: Callable[[str], tuple[str, str]]
) -> Denial | None:
    """A packet-in of a logged drop, as ``ovs-ofctl monitor`` prints it (``head``: its
    cookie and in_port; ``packet``: the packet as a flow), its port's endpoint by
    ``owner_of`` (None: not a drop of plugstrip's)."""
    found = re.search(r"cookie=(0x[0-9a-f]+)", head)
    number = int(found.group(1), 16) if found else 0
    if number & _COUNTED:
        counted = policy.counted().get(f"{number & ~_COUNTED:012x}")
    else:
        reason = {SPOOFED: security.SPOOFED, FLOOD_DROPPED: security.FLOOD}.get(number)
        counted = Counted("", reason=reason) if reason else None
    if counted is None:
        return None
    port = re.search(r"in_port=(\S+)", head)
    described = packet.split(" ", 1)[0].split(",")  # udp,vlan_tci=0x0000,...,tp_dst=5000
    fields = {key: value for key, _, value in (f.partition("=") for f in described)}
    proto = next((p for p in ("tcp", "udp", "icmp") if p in fields or f"{p}6" in fields), "")
    src = fields.get("nw_src") or fields.get("ipv6_src")
    dst = fields.get("nw_dst") or fields.get("ipv6_dst")
    network, owner = owner_of(port.group(1)) if port else ("", "")
    return Denial(
        counted,
        IPAddress(src) if src else None,
        IPAddress(dst) if dst else None,
        "icmpv6" if "icmp6" in fields else proto,
        int(fields["tp_dst"]) if proto in ("tcp", "udp") and "tp_dst" in fields else None,
        network,
        owner,
    )


def bound_differs(listing: str, number: int, bound: Binding) -> str | None:
    """What differs between a port's table-0 flows and its binding (None: nothing): the
    MAC and addresses its flows pass on."""
    mine = [line for line in listing.splitlines() if re.search(rf"\bin_port={number}\b", line)]
    passed = [line for line in mine if "priority=300" in line and f"resubmit(,{CLASSIFY})" in line]
    if not passed:
        return "no binding"
    macs = {m for line in passed for m in re.findall(r"dl_src=([0-9a-f:]+)", line)}
    addresses = {
        str(IPAddress(a))
        for line in passed
        for a in re.findall(r"(?:nw_src|ipv6_src|arp_spa)=([0-9a-f.:]+)", line)
    }
    wanted = {str(a) for a in bound.addresses} | {"0.0.0.0", "::"}
    wrong = []
    if macs != {bound.mac}:
        wrong.append(f"MAC: has {sorted(macs)}, the store says {bound.mac}")
    if addresses != wanted:
        wrong.append(f"addresses: has {sorted(addresses)}, the store says {sorted(wanted)}")
    return "; ".join(wrong) or None


def guarded_in(listing: str) -> set[tuple[str, str]]:
    """The (direction, address) pairs a ``dump-flows`` sends to a guarded endpoint's
    rules (tables 2 and 3)."""
    return {
        (way, address)
        for way, field, table in (("in", "dst", INGRESS), ("out", "src", EGRESS))
        for address in re.findall(
            rf"(?:nw_{field}|ipv6_{field})=([0-9a-f.:]+) actions=resubmit\(,{table}\)", listing
        )
    }


def trace_flow(probe: Probe, in_port: int | str, src_mac: str, dst_mac: str) -> str:
    """The flow ``ofproto/trace`` takes for ``probe`` coming in on ``in_port``."""
    six = probe.src.version == 6
    ip = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmpv6": "icmp6"}.get(probe.proto, "ip")
    if six and ip in ("tcp", "udp"):
        ip += "6"
    elif six and ip == "ip":
        ip = "ipv6"
    fields = [f"in_port={in_port}", f"dl_src={src_mac}", f"dl_dst={dst_mac}", ip]
    fields += [f"{_src(_ip(probe.src))}={probe.src}", f"{_dst(_ip(probe.dst))}={probe.dst}"]
    if probe.port is not None:  # tp_dst, which flows take, is refused in a trace's flow
        fields.append(f"{probe.proto}_dst={probe.port}")
    if probe.proto in ("icmp", "icmpv6"):
        fields.append(f"icmp_type={128 if six else 8}")  # an echo request
    return ",".join(fields)


_TRACED = re.compile(r"^\s*(\d+)\. (.*?), priority (\d+)(?:, cookie (0x[0-9a-f]+))?$")


def verdict(trace: str) -> Verdict:
    """What ``ofproto/trace`` (with ``--ct-next trk,new``) says the bridge does: the
    last datapath actions (no port among them: dropped), and the last counted flow it went
    through (rules' and drops' cookies, the bindings' and floods')."""
    steps, counters, final = [], [], ""
    for line in trace.splitlines():
        traced = _TRACED.match(line)
        if traced:
            table, match, priority, found = traced.groups()
            steps.append(f"table {table}: {match} (priority {priority})")
            number = int(found, 16) if found else 0
            if number & _COUNTED:
                counters.append(f"{number & ~_COUNTED:012x}")
            elif number in (SPOOFED, FLOOD_DROPPED):
                counters.append({SPOOFED: security.SPOOFED, FLOOD_DROPPED: security.FLOOD}[number])
        elif line.startswith("Datapath actions:"):
            final = line.split(":", 1)[1].strip()
    steps.append(f"datapath actions: {final}")
    return Verdict(_outputs(final), tuple(counters), tuple(steps))


def _outputs(actions: str) -> bool:
    """Whether datapath actions send the packet out of a port (a bare port number at the
    top level: ``ct(commit,zone=1),2``; not ``drop``, nor a meter and a userspace action)."""
    depth, part, parts = 0, "", []
    for char in actions:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(part)
            part = ""
        else:
            part += char
    parts.append(part)
    return any(p.strip().isdigit() for p in parts)


class Programmer:
    """Keeps a bridge's flows as wanted: ``replace-flows`` the first time (and every
    ``FULL_EVERY`` times, and after a failure: it reads the bridge's flows and mends any
    drift), else only the flows that changed (``add-flows`` overwrites a flow whose match
    is kept, ``del-flows --strict`` the ones gone): a member coming or going is one flow
    mod, not a dump and diff of thousands."""

    FULL_EVERY = 30

    def __init__(self) -> None:
        self._sent: dict[str, str] | None = None  # match -> flow, as the bridge has them
        self._count = 0

    async def add(self, bridge_socket: str, flows: list[str]) -> None:
        """Flows added (or overwritten, where the match is the same) at once, as the next
        ``program`` will want them."""
        try:
            await _ofctl("add-flows", bridge_socket, flows)
        except BaseException:
            self._sent = None
            raise
        if self._sent is not None:
            self._sent.update({_match(f): f for f in flows})

    async def program(self, bridge_socket: str, wanted: list[str]) -> None:
        flows = {_match(f): f for f in wanted}
        self._count += 1
        try:
            if self._sent is None or self._count % self.FULL_EVERY == 0:
                await _ofctl("replace-flows", bridge_socket, wanted)
            else:
                changed = [f for m, f in flows.items() if self._sent.get(m) != f]
                gone = [m for m in self._sent if m not in flows]
                if changed:
                    await _ofctl("add-flows", bridge_socket, changed)
                if gone:
                    await _ofctl("del-flows", bridge_socket, gone, "--strict")
        except BaseException:
            self._sent = None  # unknown: the next time replaces them all
            raise
        self._sent = flows


def _match(flow: str) -> str:
    """A flow's match, as ``del-flows --strict`` takes it (without its cookie)."""
    match = flow.split(",actions=", 1)[0]
    return match.split(",", 1)[1] if match.startswith("cookie=") else match


async def _ofctl(command: str, bridge_socket: str, lines: list[str], *options: str) -> None:
    await ofctl(command, bridge_socket, "-", *options, "--bundle", stdin="\n".join(lines) + "\n")


async def ofctl(command: str, bridge_socket: str, *args: str, stdin: str = "") -> str:
    """``ovs-ofctl`` in OpenFlow 1.3 (table ids in flow mods: 1.0 has none), its output."""
    proc = await asyncio.create_subprocess_exec(
        "ovs-ofctl",
        "-O",
        "OpenFlow13",
        command,
        bridge_socket,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ.copy(),
    )
    out, err = await proc.communicate(stdin.encode())
    if proc.returncode != 0:
        raise RuntimeError(f"ovs-ofctl {command}: {err.decode().strip()}")
    return out.decode()
