"""Security groups as a property, the kernel's datapath as the verdict: Hypothesis draws
groups, memberships and rules (from a group, from anyone, from one endpoint's /32; to a
port, a range, every port; ingress and egress), and senders honest and forged (another
endpoint's address, a foreign one; unicast and broadcast); each driver is programmed
with the policy (``security.policy``) over endpoints in namespaces of their own, the
datagrams are written as raw frames (tests/forge.py) and the receivers say what arrived.
What arrives must be exactly what the model (the semantics README states) allows: honest
traffic a receiver's ingress rules and the sender's egress rules both allow; nothing
forged, ever. ``PLUGSTRIP_PROPERTY_EXAMPLES`` sets the number of examples."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netaddr import IPAddress, IPNetwork

from plugstrip.netdrivers.datapath.ovs import OvsDriver
from plugstrip.netdrivers.datapath.ovsdb import Ovsdb
from plugstrip.netdrivers.datapath.weave import WeaveDriver
from plugstrip.netdrivers.domain import security
from plugstrip.netdrivers.domain.contract import Driver, Endpoint, Network
from plugstrip.netdrivers.domain.security import Group, Rule
from tests import netns
from tests.ovs import ovs_in

pytestmark = pytest.mark.system

FORGE = str(Path(__file__).with_name("forge.py"))
COUNT = 4  # endpoints
GROUPS = ("a", "b", "c")
EXAMPLES = int(os.environ.get("PLUGSTRIP_PROPERTY_EXAMPLES", "12"))
NET = Network("n-prop", "prop", IPNetwork("10.95.1.0/24"), vni=301)
BROADCAST = -1
PORT = 5000


def _rules() -> st.SearchStrategy[Rule]:
    peers = st.sampled_from([*GROUPS, "any", *(f"10.95.1.{2 + i}/32" for i in range(COUNT))])
    ports = st.sampled_from([None, (PORT, PORT), (PORT - 1, PORT), (1, 100)])
    return st.builds(
        Rule,
        peer=peers,
        proto=st.sampled_from(["udp", "any", "tcp"]),
        ports=ports,
        egress=st.booleans(),
    ).map(lambda r: r if r.proto in ("udp", "tcp") else Rule(r.peer, r.proto, None, r.egress))


@dataclass(frozen=True)
class Send:
    src: int
    claimed: int | None  # the endpoint whose address it writes (None: a foreign one)
    dst: int  # an endpoint, or BROADCAST


def _sends() -> st.SearchStrategy[Send]:
    index = st.integers(0, COUNT - 1)
    return st.builds(
        Send,
        src=index,
        claimed=st.one_of(st.none(), index),
        dst=st.one_of(index, st.just(BROADCAST)),
    ).filter(lambda s: s.src != s.dst)


@dataclass(frozen=True)
class Case:
    members: list[list[str]]  # each endpoint's groups
    rules: dict[str, list[Rule]]
    sends: list[Send]

    def groups(self) -> dict[str, Group]:
        return {g: Group(g, tuple(sorted(set(rs)))) for g, rs in self.rules.items()}


CASES = st.builds(
    Case,
    members=st.lists(
        st.lists(st.sampled_from(GROUPS), unique=True, max_size=2), min_size=COUNT, max_size=COUNT
    ),
    rules=st.fixed_dictionaries({g: st.lists(_rules(), max_size=3) for g in GROUPS}),
    sends=st.lists(_sends(), min_size=1, max_size=6),
)


# ---- the model --------------------------------------------------------------------------


def _matches(rule: Rule, peer: int, members: list[list[str]], port: int) -> bool:
    if rule.proto not in ("udp", "any"):
        return False
    if rule.ports is not None and not rule.ports[0] <= port <= rule.ports[1]:
        return False
    address = IPAddress(f"10.95.1.{2 + peer}")
    if rule.peer == "any":
        return True
    if "/" in rule.peer:
        return address in IPNetwork(rule.peer)
    return rule.peer in members[peer]


def allowed(groups: dict[str, Group], members: list[list[str]], src: int, dst: int) -> bool:
    """The documented semantics: a guarded receiver takes what one of its groups' ingress
    rules allows; a sender whose groups have egress rules sends what one of them allows."""

    def rules(who: int, egress: bool) -> list[Rule]:
        return [r for g in members[who] for r in groups[g].rules if r.egress == egress]

    inbound = not members[dst] or any(_matches(r, src, members, PORT) for r in rules(dst, False))
    out = rules(src, True)
    outbound = not out or any(_matches(r, dst, members, PORT) for r in out)
    return inbound and outbound


def sent(case: Case, groups: dict[str, Group]) -> list[tuple[int, Send]]:
    """The sends made: a broadcast only from a sender with no egress rules (egress rules
    are not applied to floods: README)."""
    return [
        (i, s)
        for i, s in enumerate(case.sends)
        if s.dst != BROADCAST
        or not any(r.egress for g in case.members[s.src] for r in groups[g].rules)
    ]


def expected(case: Case, groups: dict[str, Group]) -> set[tuple[int, str]]:
    members = case.members
    found = set()
    for i, send in sent(case, groups):
        if send.claimed is not None and send.claimed != send.src:
            continue  # forged: never
        if send.claimed is None:
            continue  # a foreign address: never
        targets = range(COUNT) if send.dst == BROADCAST else [send.dst]
        for dst in targets:
            if dst != send.src and allowed(groups, members, send.src, dst):
                found.add((dst, f"s{i}"))
    return found


# ---- the datapath -----------------------------------------------------------------------


Rig = tuple[asyncio.AbstractEventLoop, Driver, list[str], list[Endpoint]]


@contextmanager
def rig(
    kind: str, workdir: Path
) -> Iterator[tuple[asyncio.AbstractEventLoop, Driver, list[str], list[Endpoint]]]:
    loop = asyncio.new_event_loop()
    with netns.namespaces(COUNT + 1) as (host, *boxes):
        with ovs_in(netns.path(host), workdir) if kind == "ovs" else _nothing() as url:
            if kind == "ovs":
                ovsdb = Ovsdb(url)
                loop.run_until_complete(ovsdb.connect())
                driver: Driver = OvsDriver(ovsdb, netns=netns.path(host), datapath_type="netdev")
            else:
                driver = WeaveDriver(netns=netns.path(host))
            eps = [netns.endpoint(NET, box, 2 + i, f"c{i}") for i, box in enumerate(boxes)]
            loop.run_until_complete(driver.create_network(NET))
            for ep in eps:
                loop.run_until_complete(driver.join(NET, ep))
            try:
                yield loop, driver, boxes, eps
            finally:
                for ep in eps:
                    loop.run_until_complete(driver.leave(NET, ep))
                loop.run_until_complete(driver.delete_network(NET))
                loop.run_until_complete(driver.close())
                loop.close()


@contextmanager
def _nothing() -> Iterator[str]:
    yield ""


def _listen(box: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", box, sys.executable, FORGE, "listen", str(PORT), "1.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and "listening" in proc.stdout.readline()
    return proc


@pytest.mark.parametrize("kind", ["weave", "ovs"])
def test_the_datapath_allows_what_the_model_allows(kind: str, tmp_path: Path) -> None:
    with rig(kind, tmp_path) as (loop, driver, boxes, eps):
        rounds = iter(range(1, 10**6))

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(CASES)
        def check(case: Case) -> None:
            groups = case.groups()
            endpoints = [(ep.address, case.members[i], True) for i, ep in enumerate(eps)]
            bindings = [
                security.binding(NET.id, ep.container_id, ep.mac, [ep.address]) for ep in eps
            ]
            policy = security.policy(groups, endpoints, bindings)
            loop.run_until_complete(driver.set_policy(policy))
            sport = 20000 + next(rounds)  # a new flow each round: no conntrack entry carries over
            listeners = [_listen(box) for box in boxes]
            for i, send in sent(case, groups):
                src = eps[send.src]
                claimed = "192.0.2.9" if send.claimed is None else str(eps[send.claimed].address)
                if send.dst == BROADCAST:
                    dst, mac = "10.95.1.255", "ff:ff:ff:ff:ff:ff"
                else:
                    dst, mac = str(eps[send.dst].address), eps[send.dst].mac
                frame = {
                    **{"kind": "udp4", "eth_src": src.mac, "eth_dst": mac, "src": claimed},
                    **{"dst": dst, "sport": sport, "dport": PORT, "data": f"s{i}"},
                }
                netns.run(
                    boxes[send.src], sys.executable, FORGE, "send", src.ifname, json.dumps([frame])
                )
            arrived = set()
            for index, proc in enumerate(listeners):
                out, _ = proc.communicate(timeout=10)
                arrived |= {(index, json.loads(line)["data"]) for line in out.splitlines()}
            assert arrived == expected(case, groups), (case, arrived)

        check()
