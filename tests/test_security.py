"""Security groups as pure decisions: rules from the operator's words, a host's policy
from groups and endpoints, and the two datapaths' programs for it (nftables text, OpenFlow
flows), checked for what they must say."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from netaddr import IPAddress

from plugstrip.netdrivers.datapath import nflog, nft, ovs_flows
from plugstrip.netdrivers.domain.errors import Invalid, NetworkError
from plugstrip.netdrivers.domain.security import (
    Counted,
    Group,
    Rule,
    binding,
    drop_counter,
    parse_rule,
    policy,
    port_masks,
    rule_counter,
)
from plugstrip.netdrivers.stores.store import dump_group, load_group


def test_rules_from_the_operators_words() -> None:
    assert parse_rule("web", "tcp", "5432") == Rule("web", "tcp", (5432, 5432))
    assert parse_rule("10.40.0.0/16", "icmp") == Rule("10.40.0.0/16", "icmp", None)
    assert parse_rule("any", "udp", "5000-5100") == Rule("any", "udp", (5000, 5100))
    assert parse_rule("fd70::/64", "icmpv6").peer_cidr() is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("web", "sctp"), "invalid protocol"),
        (("web", "tcp", "0"), "invalid port"),
        (("web", "tcp", "70000"), "invalid port"),
        (("web", "tcp", "9-3"), "invalid port"),
        (("web", "tcp", "http"), "invalid port"),
        (("web", "icmp", "80"), "--port is for tcp and udp"),
        (("10.40.0.0/33", "tcp"), "invalid CIDR"),
        (("10.40.0.1/16", "tcp"), "host bits set"),
        (("bad name!", "tcp"), "invalid security group name"),
    ],
)
def test_bad_rules_are_refused(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(NetworkError) as info:
        parse_rule(*args)
    assert isinstance(info.value, Invalid) and message in str(info.value)


@given(st.integers(1, 65535), st.integers(0, 3000))
def test_port_masks_cover_the_range_exactly(first: int, span: int) -> None:
    last = min(65535, first + span)
    covered = set()
    for value, mask in port_masks(first, last):
        block = {p for p in range(value, value + (~mask & 0xFFFF) + 1)}
        assert not covered & block and all(p & mask == value for p in block)
        covered |= block
    assert covered == set(range(first, last + 1))


DB = IPAddress("10.40.0.5")
WEB = [IPAddress("10.40.0.2"), IPAddress("10.41.0.7")]  # on two networks, any host
GROUPS = {
    "db": Group("db", (Rule("web", "tcp", (5432, 5432)), Rule("10.40.0.0/16", "icmp"))),
    "web": Group("web", (Rule("any", "tcp", (80, 80)),)),
}


def endpoints() -> list[tuple[IPAddress, list[str], bool]]:
    return [
        (DB, ["db"], True),
        (WEB[0], ["web"], True),
        (WEB[1], ["web"], False),  # another host's: a source, not guarded here
        (IPAddress("10.40.0.9"), [], True),  # in no group: open, not guarded
    ]


def test_a_hosts_policy() -> None:
    found = policy(GROUPS, endpoints())
    assert [g.address for g in found.guarded] == [WEB[0], DB]
    assert dict(found.members) == {"web": frozenset(WEB)}
    (db,) = (g for g in found.guarded if g.address == DB)
    assert db.rules == tuple(sorted(GROUPS["db"].rules))


def test_a_group_gone_leaves_its_members_guarded_with_nothing_allowed() -> None:
    found = policy({}, [(DB, ["db"], True)])
    assert [(g.address, g.rules) for g in found.guarded] == [(DB, ())]


def test_nftables_table() -> None:
    text = nft.Table("inet", nft.TABLE).script(nft.rules(policy(GROUPS, endpoints())))
    web4 = nft.set_name("web", 4)
    assert f"set {web4} {{ type ipv4_addr; elements = {{ 10.40.0.2, 10.41.0.7 }} }}" in text
    assert "ct state established,related accept" in text
    jumps = "10.40.0.2 : jump ep_10_40_0_2, 10.40.0.5 : jump ep_10_40_0_5"
    assert f"ip daddr vmap {{ {jumps} }}" in text
    db5432 = rule_counter("db", Rule("web", "tcp", (5432, 5432)))
    assert f"ip saddr @{web4} tcp dport 5432 counter name r{db5432} accept" in text
    assert "ip saddr 10.40.0.0/16 meta l4proto icmp counter name r" in text
    assert "tcp dport 80 counter name r" in text
    assert text.count(" drop\n") == 2  # each guarded endpoint: what no rule allows
    assert f"counter name d{drop_counter(['db'], False)} drop" in text
    assert text.startswith(f"table inet {nft.TABLE}\ndelete table inet {nft.TABLE}\n")
    members = nft.members_script(policy(GROUPS, endpoints()), ["web"])
    assert f"flush set inet plugstrip {web4}" in members
    assert "add element inet plugstrip" in members and "10.41.0.7" in members


def test_openflow_tables() -> None:
    found = ovs_flows.flows(policy(GROUPS, endpoints()))
    assert "table=1,priority=100,ct_state=+trk+est,actions=NORMAL" in found
    assert "table=4,priority=50,ip,nw_dst=10.40.0.5,actions=resubmit(,2)" in found
    # from web to db: one conjunction, its dimensions web's members, db's endpoints here,
    # and the rules' protocols and ports
    conj = ovs_flows.conj_id("web", "db", 4)
    members = [f for f in found if "nw_src=10.4" in f and "conjunction" in f]
    assert len(members) == 2 and all(f"conjunction({conj},1/3)" in f for f in members)
    assert f"table=2,priority=10,ip,nw_dst=10.40.0.5,actions=conjunction({conj},2/3)" in found
    assert f"table=2,priority=10,tcp,tp_dst=0x1538/0xffff,actions=conjunction({conj},3/3)" in found
    to_rules = f"actions=load:{conj}->NXM_NX_REG7[],resubmit(,7)"
    assert f"table=2,priority=10,conj_id={conj},ip,{to_rules}" in found
    db5432 = ovs_flows.cookie(rule_counter("db", Rule("web", "tcp", (5432, 5432))))
    assert (
        f"cookie={db5432:#x},table=7,priority=10,reg7={conj},tcp,tp_dst=0x1538/0xffff,"
        "actions=ct(commit,zone=1),NORMAL"
    ) in found  # the rule of the conjunction that allowed it, counted
    dropped = ovs_flows.cookie(drop_counter(["db"], False))
    assert f"cookie={dropped:#x},table=2,priority=1,ip,nw_dst=10.40.0.5,actions=drop" in found
    assert any("icmp,nw_src=10.40.0.0/16,nw_dst=10.40.0.5" in f for f in found)  # a CIDR
    assert any("tcp,tp_dst=0x0050/0xffff,nw_dst=10.40.0.2" in f for f in found)  # any
    assert "table=2,priority=0,actions=drop" in found
    assert ovs_flows.flows(policy({}, [])) == ["table=0,priority=0,actions=NORMAL"]


def test_a_new_rule_from_a_group_leaves_the_members_flows_as_they_were() -> None:
    """What makes a rule change cheap with 1,000 members: their flows do not change."""
    before = set(ovs_flows.flows(policy(GROUPS, endpoints())))
    more = Group("db", (*GROUPS["db"].rules, Rule("web", "udp", (53, 53))))
    after = set(ovs_flows.flows(policy({**GROUPS, "db": more}, endpoints())))
    conj = ovs_flows.conj_id("web", "db", 4)
    counted = ovs_flows.cookie(rule_counter("db", Rule("web", "udp", (53, 53))))
    assert sorted(after - before) == [
        f"cookie={counted:#x},table=7,priority=10,reg7={conj},udp,tp_dst=0x0035/0xffff,"
        "actions=ct(commit,zone=1),NORMAL",
        f"table=2,priority=10,udp,tp_dst=0x0035/0xffff,actions=conjunction({conj},3/3)",
    ]
    assert before - after == set()


EGRESS = {
    **GROUPS,
    "web": Group(
        "web",
        (
            *GROUPS["web"].rules,
            Rule("db", "tcp", (5432, 5432), egress=True),
            Rule("10.99.0.0/16", "udp", (53, 53), egress=True),
        ),
    ),
}


def test_egress_rules_guard_what_their_endpoints_send() -> None:
    assert parse_rule("db", "tcp", "5432", egress=True).describe() == "to db tcp port 5432"
    found = policy(EGRESS, endpoints())
    (web,) = (g for g in found.guarded if g.address == WEB[0])
    assert [r.peer for r in web.egress] == ["10.99.0.0/16", "db"] and len(web.rules) == 1
    assert [g.address for g in found.egress_guarded()] == [WEB[0]]  # db: egress open
    assert set(found.members) == {"web", "db"}  # db: named by web's egress rule


def test_nftables_egress_chains_return_to_the_receivers_check() -> None:
    text = nft.Table("inet", nft.TABLE).script(nft.rules(policy(EGRESS, endpoints())))
    forward = text.split("chain forward {", 1)[1].split("\n  }", 1)[0]
    # the sender's check comes first, then the receiver's
    out = "ip saddr vmap { 10.40.0.2 : jump out_10_40_0_2 }"
    assert forward.index(out) < forward.index("daddr vmap")
    out0 = text.split("chain out_10_40_0_2 {", 1)[1].split("\n  }", 1)[0]
    assert re.search(
        rf"ip daddr @{nft.set_name('db', 4)} tcp dport 5432 counter name r\w+ return", out0
    )
    assert re.search(r"ip daddr 10.99.0.0/16 udp dport 53 counter name r\w+ return", out0)
    assert out0.strip().endswith("drop")
    assert text.count(" drop\n") == 3


def test_openflow_egress_table() -> None:
    found = ovs_flows.flows(policy(EGRESS, endpoints()))
    assert "table=1,priority=50,ct_state=+trk+new,ip,nw_src=10.40.0.2,actions=resubmit(,3)" in found
    assert not any("nw_src=10.40.0.5,actions=resubmit(,3)" in f for f in found)  # db: open
    assert "table=1,priority=0,actions=resubmit(,4)" in found
    assert "table=4,priority=50,ip,nw_dst=10.40.0.5,actions=resubmit(,2)" in found
    assert "table=3,priority=0,actions=drop" in found
    dns = ovs_flows.cookie(rule_counter("web", Rule("10.99.0.0/16", "udp", (53, 53), True)))
    assert (
        f"cookie={dns:#x},table=3,priority=20,udp,tp_dst=0x0035/0xffff,nw_src=10.40.0.2,"
        "nw_dst=10.99.0.0/16,actions=resubmit(,4)"
    ) in found
    # to db: a conjunction whose dimensions are web's endpoints here, db's members and the
    # port, in the egress table, with its own id
    conj = ovs_flows.conj_id("db", "web", 4, egress=True)
    assert conj != ovs_flows.conj_id("db", "web", 4)
    assert f"table=3,priority=10,ip,nw_dst=10.40.0.5,actions=conjunction({conj},1/3)" in found
    assert f"table=3,priority=10,ip,nw_src=10.40.0.2,actions=conjunction({conj},2/3)" in found
    assert (
        f"table=3,priority=10,conj_id={conj},ip,actions=load:{conj}->NXM_NX_REG7[],resubmit(,7)"
        in found
    )


def test_groups_round_trip_the_store_with_their_directions() -> None:
    assert load_group("web", dump_group(EGRESS["web"])) == EGRESS["web"]
    old = '[{"source": "web", "proto": "tcp", "ports": [80, 80]}]'  # before egress
    assert load_group("db", old) == Group("db", (Rule("web", "tcp", (80, 80)),))


def test_ports_as_docker_writes_them() -> None:
    assert parse_rule("web", "tcp", "80").port_text() == "80"
    assert parse_rule("web", "udp", "8000-8100").port_text() == "8000-8100/udp"
    assert parse_rule("web", "icmp").port_text() is None


def test_rules_with_and_without_ports_sort_together() -> None:
    """An endpoint in two groups whose rules differ only in having ports (found by the
    datapath property: the policy could not be computed, and the endpoint was refused)."""
    groups = {
        "a": Group("a", (parse_rule("web", "udp"),)),
        "b": Group("b", (parse_rule("web", "udp", "53"),)),
    }
    found = policy(groups, [(IPAddress("10.0.0.2"), ["a", "b"], True)])
    assert [r.ports for r in found.guarded[0].rules] == [None, (53, 53)]


def test_an_allowed_address_two_endpoints_share_is_bound_and_guarded_for_both() -> None:
    """A VIP keepalived moves between two endpoints here: both ports may send from it,
    it is a member of both's groups, and traffic to it takes the rules of both."""
    vip, a, b = IPAddress("10.0.0.100"), IPAddress("10.0.0.2"), IPAddress("10.0.0.3")
    groups = {
        "lb": Group("lb", (parse_rule("web", "tcp", "80"),)),
        "admin": Group("admin", (parse_rule("ops", "tcp", "22"),)),
        "web": Group("web", (parse_rule("lb", "tcp", "8080"),)),
    }
    eps = [(a, ["lb"], True), (vip, ["lb"], True), (b, ["admin"], True), (vip, ["admin"], True)]
    bindings = [
        binding("n", "a", "02:42:0a:00:00:02", [a, vip]),
        binding("n", "b", "02:42:0a:00:00:03", [b, vip]),
    ]
    web = (IPAddress("10.0.0.9"), ["web"], True)
    found = policy(groups, [*eps, web], bindings)
    (shared,) = (g for g in found.guarded if g.address == vip)
    assert shared.groups == ("admin", "lb")
    assert [r.ports for r in shared.rules] == [(22, 22), (80, 80)]
    assert vip in found.members["lb"]
    text = nft.Table("bridge", nft.PORTS).script(nft.ports(found, lambda b: f"vp{b.owner}"))
    assert text.count("10.0.0.100") >= 2 and text.count('"vp') == 4  # ports; floods: both
    flows = ovs_flows.flows(found, lambda bound: {"a": 1, "b": 2}[bound.owner])
    for port in (1, 2):
        assert any(f"in_port={port},dl_src=" in f and "nw_src=10.0.0.100" in f for f in flows)


def test_a_table_is_made_anew_once_then_rewritten_keeping_its_counters() -> None:
    """The first script (and the one after a failure) replaces the table; later ones
    flush it, empty the sets they keep, delete what is gone, and declare the rest again,
    so named counters (rules', drops') go on counting."""
    table = nft.Table("inet", nft.TABLE)
    first = nft.rules(policy(GROUPS, endpoints()))
    assert "delete table inet plugstrip" in table.script(first)
    table.written(first)
    fewer = nft.rules(policy(GROUPS, [e for e in endpoints() if e[0] != WEB[0]]))  # web's gone
    text = table.script(fewer)
    assert "delete table" not in text and "flush table inet plugstrip" in text
    web4 = nft.set_name("web", 4)
    assert f"add set inet plugstrip {web4} {{ type ipv4_addr; }}" in text  # there to flush
    assert text.index(f"flush set inet plugstrip {web4}") < text.index("table inet plugstrip {")
    assert "delete chain inet plugstrip ep_10_40_0_2" in text
    assert "ep_10_40_0_5 {" in text  # db's kept
    gone = drop_counter(["web"], False)
    assert f"delete counter inet plugstrip d{gone}" in text
    table.lost()
    assert "delete table inet plugstrip" in table.script(fewer)


def test_what_the_flow_log_reads_of_a_logged_packet() -> None:
    """NFLOG's payload (the network header on) and ovs-ofctl monitor's packet-in, as the
    flow log reads them; an ofproto/trace's datapath actions, as sg trace reads them."""
    src4, dst4 = IPAddress("10.77.0.4"), IPAddress("10.77.0.2")
    udp4 = bytes.fromhex("450000200001000040110000") + src4.packed + dst4.packed
    assert nflog.headers(udp4 + bytes.fromhex("13881388000c0000")) == nflog.Headers(
        src4, dst4, "udp", 5000
    )
    src6, dst6 = IPAddress("fd77::4"), IPAddress("fd77::2")
    tcp6 = bytes.fromhex("6000000000140640") + src6.packed + dst6.packed
    assert nflog.headers(tcp6 + bytes.fromhex("c0000016")) == nflog.Headers(src6, dst6, "tcp", 22)
    assert nflog.headers(bytes.fromhex("0001080006040001")) is None  # ARP: no addresses read
    found = policy(GROUPS, endpoints())
    dropped = f"{ovs_flows.cookie(drop_counter(['db'], False)):#x}"
    head = f"NXT_PACKET_IN (OF1.3) (xid=0x0): cookie={dropped} total_len=46 in_port=7 (via"
    packet = "udp,dl_src=02:42:0a:4d:00:04,nw_src=10.40.0.9,nw_dst=10.40.0.5,tp_dst=5432 x"
    denial = ovs_flows.denial(found, head, packet, lambda port: ("net", f"port {port}"))
    assert denial is not None and denial.counted == Counted("db", "ingress", "", "no rule")
    assert (denial.src, denial.dst, denial.proto, denial.port, denial.owner) == (
        IPAddress("10.40.0.9"),
        IPAddress("10.40.0.5"),
        "udp",
        5432,
        "port 7",
    )
    other = head.replace(dropped, "0x0")  # not a drop of plugstrip's
    assert ovs_flows.denial(found, other, packet, lambda port: ("", "")) is None
    assert ovs_flows.verdict("Datapath actions: ct(commit,zone=1),2").allowed
    logged = "Datapath actions: meter(0),userspace(pid=1,controller(reason=1))"
    assert not ovs_flows.verdict(logged).allowed
    assert not ovs_flows.verdict("Datapath actions: drop").allowed
