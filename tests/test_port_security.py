"""Ports bound to their endpoints, attacked from a container with only ``NET_RAW`` (Docker's
default set), on both drivers: forged IPv4 and IPv6 sources (a member's, a foreign one),
a forged source MAC, gratuitous ARP and unsolicited neighbour advertisements for another
endpoint's address, router advertisements, and broadcast and multicast to a guarded port.
Frames are written by tests/forge.py run in the attacker's network namespace; a witness
in the guarded container's namespace says what arrived; the honest sender's frames,
written the same way, arrive (so each check can fail), and the datapath's drop counters
move."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from netaddr import IPAddress
from prometheus_client.parser import text_string_to_metric_families

from plugstrip.netdrivers.datapath import nft, ovs_flows
from plugstrip.netdrivers.datapath.ovs import bridge_socket
from plugstrip.netdrivers.domain.security import binding
from tests.dockerhost import DockerHost
from tests.harness import wait_for
from tests.netcheck import DRIVERS, Networks, plugstrip_cmd, sleeper, uname

FORGE = str(Path(__file__).with_name("forge.py"))
PORT = 5000
LABEL = "io.plugstrip.security-groups"
ALLOWED = "io.plugstrip.allowed-addresses"


class Box:
    """A container on the test network: its namespace and its endpoint's identity."""

    def __init__(self, net: DockerHost, name: str, network: str) -> None:
        self.net, self.name = net, name
        info: Any = net.inspect(name)
        self.pid = str(info["State"]["Pid"])
        settings = info["NetworkSettings"]["Networks"][network]
        self.mac, self.ip4, self.ip6 = (
            settings["MacAddress"],
            settings["IPAddress"],
            settings["GlobalIPv6Address"],
        )
        links = self.run("ip", "-o", "link").stdout
        self.ifname = next(
            line.split(":")[1].strip().split("@")[0]
            for line in links.splitlines()
            if self.mac in line
        )
        self.ll6 = re.search(r"inet6 (fe80::[0-9a-f:]+)/64", self.run("ip", "-6", "addr").stdout)

    def run(self, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", "-t", self.pid, "-n", *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def send(self, *frames: dict[str, Any]) -> None:
        self.run(sys.executable, FORGE, "send", self.ifname, json.dumps(list(frames)))

    def neighbour(self, address: str) -> str:
        out = self.run("ip", "neigh", "show", address).stdout
        found = re.search(r"lladdr ([0-9a-f:]+)", out)
        return found.group(1) if found else ""


def witness_at(box: Box, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["nsenter", "-t", box.pid, "-n", sys.executable, FORGE, "listen", str(PORT), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and "listening" in proc.stdout.readline()
    return proc


def arrived_at(proc: subprocess.Popen[str]) -> set[str]:
    out, _ = proc.communicate(timeout=30)
    return {json.loads(line)["data"] for line in out.splitlines()}


def bridge_flows(net: DockerHost, *match: str) -> str:
    """The test host's integration bridge's flows (those ``match`` selects), as dumped."""
    dump = ["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge_socket(net.ovsdb), *match]
    return subprocess.run(dump, capture_output=True, text=True, check=True).stdout


def drops(net: DockerHost, driver: str) -> tuple[int, int]:
    """The datapath's drop counters: (spoofed frames, floods no rule allowed)."""
    if driver == "plugstrip/weave":
        found = []
        for counter in (nft.SPOOFED, nft.FLOOD_DROPPED):
            out = net.run_in_ns("nft", "list", "counter", "bridge", nft.PORTS, counter).stdout
            found.append(int(re.search(r"packets (\d+)", out).group(1)))  # type: ignore[union-attr]
        return found[0], found[1]
    flows = bridge_flows(net)
    counts = {ovs_flows.SPOOFED: 0, ovs_flows.FLOOD_DROPPED: 0}
    for cookie, packets in re.findall(r"cookie=(0x[0-9a-f]+), .*?n_packets=(\d+)", flows):
        if int(cookie, 16) in counts:
            counts[int(cookie, 16)] += int(packets)
    return counts[ovs_flows.SPOOFED], counts[ovs_flows.FLOOD_DROPPED]


def sg_metrics(net: DockerHost) -> dict[tuple[str, str, str, str, str], float]:
    """plugstrip's security-group counters on its /metrics, by (metric, group, direction,
    rule, reason), summed over drivers."""
    assert net.ps is not None
    fetch = (
        "import sys, urllib.request as u; sys.stdout.write(u.urlopen(sys.argv[1]).read().decode())"
    )
    text = net.run_in_ns(sys.executable, "-c", fetch, net.ps.admin + "/metrics").stdout
    found: dict[tuple[str, str, str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith("plugstrip_sg_") or not sample.name.endswith("_total"):
                continue
            name = sample.name.removeprefix("plugstrip_sg_").removesuffix("_total")
            labels = sample.labels
            key = (
                name,
                labels.get("group", ""),
                labels.get("direction", ""),
                labels.get("rule", ""),
                labels.get("reason", ""),
            )
            found[key] = found.get(key, 0) + sample.value
    return found


def rule_is_in(net: DockerHost, driver: str) -> bool:
    """Whether the datapath has the test's tcp/22 rule (its rules were rewritten)."""
    if driver == "plugstrip/weave":
        return "tcp dport 22" in net.run_in_ns("nft", "list", "table", "inet", nft.TABLE).stdout
    return re.search(r"tp_dst=(22|0x0016)\b", bridge_flows(net)) is not None


@pytest.fixture
def scene(net: DockerHost, networks: Networks, driver: str) -> Any:
    """db takes udp/5000 from web; the attacker is in no group, on the same network."""
    plug = networks(driver, "--ipv6", "--subnet", "10.77.0.0/24", "--subnet", "fd77::/64")
    db_g, web_g = uname("db"), uname("web")
    for group in (db_g, web_g):
        _sg(net, "create", group)
    _sg(net, "allow", db_g, "--from", web_g, "--proto", "udp", "--port", str(PORT))
    names = {"db": uname("db"), "web": uname("web"), "atk": uname("atk")}
    sleeper(net, names["db"], plug, "--label", f"{LABEL}={db_g}")
    sleeper(net, names["web"], plug, "--label", f"{LABEL}={web_g}")
    sleeper(net, names["atk"], plug)
    boxes: dict[str, Any] = {role: Box(net, name, plug) for role, name in names.items()}
    boxes["groups"] = {"db": db_g, "web": web_g}
    yield boxes
    for name in names.values():
        net.docker("rm", "-f", name)
    _sg(net, "revoke", db_g, "--from", web_g, "--proto", "udp", "--port", str(PORT))
    for group in (db_g, web_g):
        _sg(net, "rm", group)


def _sg(net: DockerHost, *args: str) -> None:
    out = plugstrip_cmd(net, "sg", *args, ovs=False)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("driver", DRIVERS)
def test_forged_sources_and_floods_arrive_nowhere(
    net: DockerHost, scene: dict[str, Box], driver: str
) -> None:
    db, web, atk = scene["db"], scene["web"], scene["atk"]
    to_db = {"eth_dst": db.mac, "dport": PORT}
    bcast4 = {"dst": "10.77.0.255", "eth_dst": "ff:ff:ff:ff:ff:ff", "dport": PORT}
    mcast4 = {"dst": "224.0.0.1", "eth_dst": "01:00:5e:00:00:01", "dport": PORT}
    mcast6 = {"dst": "ff02::1", "eth_dst": "33:33:00:00:00:01", "dport": PORT}
    honest = [
        {"kind": "udp4", "eth_src": web.mac, "src": web.ip4, "dst": db.ip4, **to_db},
        {"kind": "udp6", "eth_src": web.mac, "src": web.ip6, "dst": db.ip6, **to_db},
        {"kind": "udp4", "eth_src": web.mac, "src": web.ip4, **bcast4},
    ]
    for spec, tag in zip(honest, ("web4", "web6", "web-broadcast"), strict=True):
        spec["data"] = tag
    forged = {
        "as web's IPv4": {"kind": "udp4", "eth_src": atk.mac, "src": web.ip4, "dst": db.ip4},
        "as web's IPv4 and MAC": {
            "kind": "udp4",
            "eth_src": web.mac,
            "src": web.ip4,
            "dst": db.ip4,
        },
        "as a foreign IPv4": {
            "kind": "udp4",
            "eth_src": atk.mac,
            "src": "192.0.2.7",
            "dst": db.ip4,
        },
        "as web's IPv6": {"kind": "udp6", "eth_src": atk.mac, "src": web.ip6, "dst": db.ip6},
        "as a foreign IPv6": {
            "kind": "udp6",
            "eth_src": atk.mac,
            "src": "2001:db8::7",
            "dst": db.ip6,
        },
    }
    floods = {
        "broadcast": {"kind": "udp4", "eth_src": atk.mac, "src": atk.ip4, **bcast4},
        "multicast": {"kind": "udp4", "eth_src": atk.mac, "src": atk.ip4, **mcast4},
        "IPv6 multicast": {"kind": "udp6", "eth_src": atk.mac, "src": atk.ip6, **mcast6},
    }
    unruled = {"kind": "udp4", "eth_src": atk.mac, "src": atk.ip4, "dst": db.ip4, **to_db}
    spoofed0, flooded0 = drops(net, driver)
    metrics0 = sg_metrics(net)
    witness = witness_at(db, 4)
    web.send(*honest)
    atk.send({**unruled, "data": "no rule"})
    atk.send(*({**to_db, **spec, "data": tag} for tag, spec in forged.items()))
    atk.send(*({**spec, "data": tag} for tag, spec in floods.items()))
    arrived = arrived_at(witness)
    assert {"web4", "web6", "web-broadcast"} <= arrived, arrived  # the witness hears
    assert not arrived & {*forged, *floods, "no rule"}, arrived
    spoofed, flooded = drops(net, driver)
    assert spoofed - spoofed0 >= 3 * len(forged)  # three frames a case
    assert flooded - flooded0 >= 3 * len(floods)
    # the same verdicts on /metrics, by rule and group
    gained = {k: v - metrics0.get(k, 0) for k, v in sg_metrics(net).items()}
    rule = f"from {scene['groups']['web']} udp port {PORT}"
    db_g = scene["groups"]["db"]
    assert gained[("rule_packets", db_g, "ingress", rule, "")] >= 3, gained  # web's three
    assert gained[("rule_bytes", db_g, "ingress", rule, "")] > 0, gained
    assert gained[("dropped_packets", db_g, "ingress", "", "no rule")] >= 3, gained
    assert gained[("dropped_packets", "", "", "", "spoofed")] >= 3 * len(forged), gained
    assert gained[("dropped_packets", "", "", "", "flood")] >= 3 * len(floods), gained

    # the flow log has a sample of each, naming the endpoints, the real sender of a
    # forged source among them
    def logged() -> list[dict[str, Any]]:
        path = net.workdir / "plugstrip" / "state" / "flow-log.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines]

    def find(reason: str, **where: Any) -> dict[str, Any] | None:
        for line in logged():
            named = {k: (line.get(k) or {}).get("name") for k in ("source", "sender")}
            named["destination"] = (line.get("destination") or {}).get("address")
            if line["reason"] == reason and all(named.get(k) == v for k, v in where.items()):
                return line
        return None

    def sent_and_logged(frames: list[dict[str, Any]], reason: str, **where: Any) -> bool:
        for _ in range(5):  # the flow log writes a few a second: a second apart each time
            atk.send(*frames)
            time.sleep(1.1)
            if find(reason, **where) is not None:
                return True
        return False

    assert sent_and_logged([{**unruled, "data": "x"}], "no rule", source=atk.name), [
        (x["reason"], x["proto"], x["source"], (x["sender"] or {}).get("name")) for x in logged()
    ]
    unruled_line = find("no rule", source=atk.name)
    assert unruled_line is not None and unruled_line["group"] == db_g, unruled_line
    assert (unruled_line["proto"], unruled_line["port"]) == ("udp", PORT), unruled_line
    assert unruled_line["destination"]["name"] == db.name, unruled_line
    as_web = {**to_db, **forged["as web's IPv4"], "data": "x"}
    assert sent_and_logged([as_web], "spoofed", sender=atk.name, source=web.name), [
        (x["reason"], x["proto"], x["source"], x["sender"]) for x in logged()[-6:]
    ]
    flood = {**floods["broadcast"], "data": "x"}
    assert sent_and_logged([flood], "flood", sender=atk.name), logged()
    # a rule changing rewrites the datapath's rules: its counters go on from where they were
    _sg(net, "allow", db_g, "--from", "any", "--proto", "tcp", "--port", "22")
    try:
        wait_for(lambda: rule_is_in(net, driver), 10, "the new rule is not in the datapath")
        assert drops(net, driver)[0] >= spoofed  # not made anew: what it counted, kept
    finally:
        _sg(net, "revoke", db_g, "--from", "any", "--proto", "tcp", "--port", "22")


@pytest.mark.parametrize("driver", DRIVERS)
def test_no_claim_on_anothers_address_or_the_router(
    net: DockerHost, scene: dict[str, Box], driver: str
) -> None:
    db, web, atk = scene["db"], scene["web"], scene["atk"]
    # db learns web's addresses (ARP and neighbour discovery pass whatever the groups)
    for ping, address in (("ping", web.ip4), ("ping6", web.ip6)):
        net.docker("exec", db.name, ping, "-c", "1", "-W", "1", address, check=False)
    assert db.neighbour(web.ip4) == web.mac, db.run("ip", "neigh").stdout
    assert db.neighbour(web.ip6) == web.mac, db.run("ip", "neigh").stdout
    spoofed0, _ = drops(net, driver)
    assert atk.ll6 is not None
    atk_ll = atk.ll6.group(1)
    atk.send(
        {"kind": "arp", "eth_src": atk.mac, "sha": atk.mac, "spa": web.ip4},  # gratuitous
        {
            "kind": "arp",
            "eth_src": atk.mac,
            "sha": atk.mac,
            "spa": web.ip4,
            "tpa": db.ip4,
            "tha": db.mac,
            "eth_dst": db.mac,
        },
        {
            "kind": "na",
            "eth_src": atk.mac,
            "src": atk_ll,
            "target": web.ip6,
            "lladdr": atk.mac,
            "eth_dst": "33:33:00:00:00:01",
        },
        {"kind": "ra", "eth_src": atk.mac, "src": atk_ll, "eth_dst": "33:33:00:00:00:01"},
    )
    time.sleep(1)
    assert db.neighbour(web.ip4) == web.mac and db.neighbour(web.ip6) == web.mac
    assert "fd99:" not in db.run("ip", "-6", "addr").stdout  # no prefix taken from it
    assert "fe80" not in db.run("ip", "-6", "route", "show", "default").stdout
    spoofed, _ = drops(net, driver)
    assert spoofed - spoofed0 >= 4 * 3


@pytest.mark.parametrize("driver", DRIVERS)
def test_allowed_addresses_are_sent_from_and_guarded(
    net: DockerHost, networks: Networks, driver: str
) -> None:
    """A VIP (an aux address the network reserves) an endpoint is allowed: it sends from
    it as a member of its groups, nobody else may, and traffic to it is guarded as to the
    endpoint's own address; IPAM hands it to nobody, and an address the network does not
    reserve is refused."""
    vip_db, vip_web = "10.78.0.200", "10.78.0.201"
    aux = ("--aux-address", f"a={vip_db}", "--aux-address", f"b={vip_web}")
    plug = networks(driver, "--subnet", "10.78.0.0/24", *aux)
    config: Any = net.inspect(plug)["IPAM"]["Config"][0]
    assert config["AuxiliaryAddresses"] == {"a": vip_db, "b": vip_web}
    db_g, web_g = uname("db"), uname("web")
    names = {"db": uname("db"), "web": uname("web"), "atk": uname("atk")}
    for group in (db_g, web_g):
        _sg(net, "create", group)
    _sg(net, "allow", db_g, "--from", web_g, "--proto", "udp", "--port", str(PORT))
    try:
        for role, group, vip in (("db", db_g, vip_db), ("web", web_g, vip_web)):
            labels = ("--label", f"{LABEL}={group}", "--label", f"{ALLOWED}={vip}")
            sleeper(net, names[role], plug, *labels)
        sleeper(net, names["atk"], plug)
        db, web, atk = (Box(net, names[r], plug) for r in ("db", "web", "atk"))
        db.run("ip", "addr", "add", f"{vip_db}/24", "dev", db.ifname)  # as keepalived would
        to_db = {"kind": "udp4", "eth_dst": db.mac, "dst": db.ip4, "dport": PORT}
        to_vip = {**to_db, "dst": vip_db}
        cases = {
            "web from its VIP": {**to_db, "eth_src": web.mac, "src": vip_web},
            "web to db's VIP": {**to_vip, "eth_src": web.mac, "src": web.ip4},
            "atk from web's VIP": {**to_db, "eth_src": atk.mac, "src": vip_web},
            "atk to db's VIP": {**to_vip, "eth_src": atk.mac, "src": atk.ip4},
        }
        spoofed0, _ = drops(net, driver)
        witness = witness_at(db, 4)
        for tag, spec in cases.items():
            (web if tag.startswith("web") else atk).send({**spec, "data": tag})
        arrived = arrived_at(witness)
        assert arrived == {"web from its VIP", "web to db's VIP"}, arrived
        spoofed, _ = drops(net, driver)
        assert spoofed - spoofed0 >= 3  # atk's forged VIP source; its send to the VIP: no rule

        run = ("run", "--rm", "--network", plug)
        taken = net.docker(*run, "--ip", vip_db, "busybox", "true", check=False)
        assert taken.returncode != 0 and b"reserved" in taken.stderr, taken.stderr
        label = ("--label", f"{ALLOWED}=10.78.0.202")
        unreserved = net.docker(*run, *label, "busybox", "true", check=False)
        assert unreserved.returncode != 0, unreserved.stderr
        assert b"--aux-address" in unreserved.stderr, unreserved.stderr
    finally:
        for name in names.values():
            net.docker("rm", "-f", name, check=False)
        _sg(net, "revoke", db_g, "--from", web_g, "--proto", "udp", "--port", str(PORT))
        for group in (db_g, web_g):
            _sg(net, "rm", group)


@pytest.mark.parametrize("driver", DRIVERS)
def test_trace_tells_what_the_datapath_does_and_which_rule_decides(
    net: DockerHost, scene: dict[str, Any], driver: str
) -> None:
    """`plugstrip sg trace` asks the live datapath (nft's ruleset, ofproto/trace): its
    verdicts agree with what arrives, and name the rule or the group that decided."""
    db, web, atk = scene["db"], scene["web"], scene["atk"]
    db_g, web_g = scene["groups"]["db"], scene["groups"]["web"]
    rule = f'rule "from {web_g} udp port {PORT}" of group {db_g} (ingress)'
    cases = [
        ((web.name, db.name, str(PORT), "--proto", "udp"), 0, rule),
        ((web.name, db.name, str(PORT), "--proto", "udp", "-6"), 0, rule),
        ((atk.name, db.name, str(PORT), "--proto", "udp"), 1, f"no rule of {db_g} (ingress)"),
        ((web.name, db.name, str(PORT + 1), "--proto", "udp"), 1, f"no rule of {db_g}"),
        ((web.ip4, db.ip4, "--proto", "icmp"), 1, f"no rule of {db_g}"),
        (("192.0.2.9", db.name, str(PORT), "--proto", "udp"), 1, f"no rule of {db_g}"),
        ((db.name, web.name, "22"), 1, f"no rule of {web_g} (ingress)"),
        ((db.name, atk.name, str(PORT), "--proto", "udp"), 0, "no security group"),
    ]
    for args, status, decided in cases:
        out = plugstrip_cmd(net, "sg", "trace", *args)
        assert out.returncode == status, (args, out.stdout, out.stderr)
        assert f"decided by: {decided}" in out.stdout, (args, out.stdout)
    # the datapath agrees: what the trace allows arrives, what it drops does not
    witness = witness_at(db, 3)
    for box, tag in ((web, "web"), (atk, "atk")):
        box.send({"kind": "udp4", "eth_src": box.mac, "src": box.ip4, "dst": db.ip4,
                  "eth_dst": db.mac, "dport": PORT, "data": tag})  # fmt: skip
    assert arrived_at(witness) == {"web"}
    missing = plugstrip_cmd(net, "sg", "trace", web.name, "nosuch", "80")
    assert missing.returncode != 0 and "no plugstrip endpoint on this host" in missing.stderr


@pytest.mark.parametrize("driver", DRIVERS)
def test_doctor_finds_a_binding_that_differs_from_the_store(
    net: DockerHost, scene: dict[str, Any], driver: str
) -> None:
    """A port bound to another endpoint's address (plugstrip's own rendering, as a stale
    or tampered datapath would have it) fails `plugstrip doctor`, naming the port and
    both sides; a restart binds it as the store says."""
    web, atk = scene["web"], scene["atk"]
    check = f"port bindings ({driver})"
    assert f"OK    {check}: 3 port(s) bound" in plugstrip_cmd(net, "doctor").stdout
    forged = binding("n", "o", atk.mac, [IPAddress(web.ip4)])  # atk's port, web's address
    if driver == "plugstrip/weave":
        listing = json.loads(
            net.run_in_ns("nft", "-j", "list", "table", "bridge", nft.PORTS).stdout
        )
        chain = next(
            r["rule"]["chain"]
            for r in listing["nftables"]
            if "rule" in r and f'"right": "{atk.mac}"' in json.dumps(r["rule"]["expr"])
        )
        rules = "; ".join(
            f"add rule bridge {nft.PORTS} {chain} {r}" for r in nft.bound_rules(forged)
        )
        net.run_in_ns("nft", f"flush chain bridge {nft.PORTS} {chain}; {rules}")
    else:
        socket = bridge_socket(net.ovsdb)
        flows = bridge_flows(net, "table=0")
        port = re.search(rf"in_port=(\d+),dl_src={atk.mac}", flows)
        assert port is not None, flows
        number = int(port.group(1))
        edit = ["ovs-ofctl", "-O", "OpenFlow13"]
        subprocess.run([*edit, "del-flows", socket, f"table=0,in_port={number}"], check=True)
        again = "\n".join(ovs_flows.port_flows(forged, number)) + "\n"
        subprocess.run([*edit, "add-flows", socket, "-"], input=again, text=True, check=True)
    doctor = plugstrip_cmd(net, "doctor")
    assert doctor.returncode != 0, doctor.stdout
    failed = next(line for line in doctor.stdout.splitlines() if check in line)
    assert failed.startswith("FAIL") and "differs from the store's" in failed, failed
    assert web.ip4 in failed and atk.ip4 in failed, failed  # what it has, what it should
    net.stop_plugstrip()
    net.start_plugstrip()
    wait_for(
        lambda: f"OK    {check}: 3 port(s) bound" in plugstrip_cmd(net, "doctor").stdout,
        10,
        "the binding is not mended by a restart",
    )
