"""Security groups: what enforcing them costs the datapath, and how fast a rule reaches
every host, measured in the same run.

    python3 -m bench.sg_bench [--quick]

Prints, for plugstrip/weave and plugstrip/ovs on a test host (tests/dockerhost.py):
- TCP throughput (iperf3 in the containers' namespaces) and the rate of new TCP
  connections (each one through conntrack and the rules) of two pairs of containers in
  groups whose rules allow the traffic, two pairs in no group (their ports bound, as
  plugstrip binds every port), and two pairs in no group whose bindings the benchmark
  took out of the datapath (the floor): groups and bindings together against the floor
  (target >= 0.95x), each alone, and each kind's two pairs against each other (the noise
  floor), the pairs taking turns, each run's figures printed;
and, on three hosts sharing etcd (tests/cluster.py) with 1,000 endpoints in the source
group: the time from a rule written to the store to it being in every host's datapath
(nftables table, OpenFlow flows), p50 and worst.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import in_pid_ns, iperf
from plugstrip.netdrivers.control.service import NetworkService
from plugstrip.netdrivers.datapath.ovs import bridge_socket
from plugstrip.netdrivers.datapath.ovsdb import rundir
from plugstrip.netdrivers.domain.security import parse_rule
from plugstrip.netdrivers.stores.etcd import EtcdStore
from plugstrip.netdrivers.stores.store import EndpointMeta
from tests.cluster import cluster
from tests.dockerhost import DockerHost, docker_host
from tests.netcheck import DRIVERS, address, plugstrip_cmd, sleeper

LABEL = "io.plugstrip.security-groups"
MEMBERS = 1000
# The client closes with a reset (linger 0): no side keeps TIME_WAIT. With it, the tens of
# thousands of connections a run makes reuse every ephemeral port of the pair, and a SYN
# meeting a server's TIME_WAIT waits a second: each pair's rate then hung on its own
# history (ratios of 0.52x to 1.95x for the same datapath).
CONNECTOR = """
import socket, struct, sys, time
address, seconds = sys.argv[1], float(sys.argv[2])
reset = struct.pack("ii", 1, 0)
done, deadline = 0, time.monotonic() + seconds
while time.monotonic() < deadline:
    with socket.create_connection((address, 9100), timeout=2) as s:
        s.recv(1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
    done += 1
print(done / seconds)
"""
ACCEPTOR = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 9100))
s.listen(512)
while True:
    c, _ = s.accept()
    c.send(b"x")
    c.close()
"""


KINDS = ("grouped", "plain", "bare")  # groups and bindings; bindings only; neither


def pair(h: DockerHost, network: str, tag: str, kind: str) -> tuple[list[str], list[str], str]:
    """Two containers on ``network`` (in groups srv and cli, or in none): the prefixes
    that run a command in the server's and the client's namespace, and the server's
    address. ``bare``: in no group, and their ports' bindings taken out of the datapath by
    the benchmark (plugstrip binds every port: this is the floor it is measured against)."""
    names = [f"{tag}-srv", f"{tag}-cli"]
    for name, group in zip(names, ("srv", "cli"), strict=True):
        sleeper(h, name, network, *(("--label", f"{LABEL}={group}") if kind == "grouped" else ()))
    pids = [str(h.inspect(n)["State"]["Pid"]) for n in names]
    return in_pid_ns(pids[0]), in_pid_ns(pids[1]), address(h, names[0], network)


def unbind(h: DockerHost, driver: str, container: str, network: str) -> None:
    """Take a container's port binding out of the datapath: its port chain accepts all
    (weave), its port's table-0 flows pass all on (ovs)."""
    settings: Any = h.inspect(container)["NetworkSettings"]["Networks"][network]
    mac = settings["MacAddress"]
    if driver == "plugstrip/weave":
        listing = json.loads(
            h.run_in_ns("nft", "-j", "list", "table", "bridge", "plugstrip").stdout
        )
        chain = next(
            r["rule"]["chain"]
            for r in listing["nftables"]
            if "rule" in r and f'"right": "{mac}"' in json.dumps(r["rule"]["expr"])
        )
        h.run_in_ns(
            "nft", f"flush chain bridge plugstrip {chain}; add rule bridge plugstrip {chain} accept"
        )
        return
    socket = bridge_socket(h.ovsdb)
    flows = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", socket, "table=0"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    port = re.search(rf"in_port=(\d+),dl_src={mac}", flows)
    assert port is not None, f"no binding of {mac} in table 0"
    for command, flow in (
        ("del-flows", f"table=0,in_port={port.group(1)}"),
        ("add-flow", f"table=0,priority=300,in_port={port.group(1)},actions=resubmit(,5)"),
    ):
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", command, socket, flow], check=True)


def connection_rate(server: list[str], client: list[str], ip: str, seconds: float) -> float:
    acceptor = subprocess.Popen([*server, sys.executable, "-c", ACCEPTOR])
    try:
        time.sleep(0.5)
        out = subprocess.run(
            [*client, sys.executable, "-c", CONNECTOR, ip, str(seconds)],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 30,
        ).stdout
        return float(out)
    finally:
        acceptor.kill()
        acceptor.wait()


def measure_datapath(h: DockerHost, driver: str, runs: int, seconds: int) -> None:
    """Two pairs in groups srv (which allows TCP from cli) and cli, two in none, and two in
    none whose bindings the benchmark took out, on a network of ``driver``: throughput and
    connection rate of each, taking turns. Two pairs of each kind, so that no one pair's
    luck (pairs on one bridge differ by some percent) is read as a cost; each kind's two
    pairs against each other are the noise floor."""
    network = f"sg-{driver.split('/')[1]}"
    h.docker("network", "create", "-d", driver, network)
    pairs = {
        f"{kind}{n}": pair(h, network, f"{kind[0]}{n}{driver[-1]}", kind)
        for n in (1, 2)
        for kind in KINDS
    }
    time.sleep(1.5)  # the guard has enforced the new endpoints' groups and bindings
    for n in (1, 2):
        for end in ("srv", "cli"):
            unbind(h, driver, f"b{n}{driver[-1]}-{end}", network)
    order = list(pairs)
    for what, measure in (("Gbit/s", iperf), ("connections/s", connection_rate)):
        results: dict[str, list[float]] = {name: [] for name in pairs}
        for _ in range(runs):  # one measure at a time, the pairs taking turns
            order = order[1:] + order[:1]  # each goes first as often: no order effect
            for name in order:
                results[name].append(measure(*pairs[name], seconds))
        for name, values in results.items():  # the spread, to read the ratios against
            print(f"{driver}: {what} {name}: {' '.join(f'{v:.4g}' for v in values)}")
        # a round's pairs ran seconds apart: their ratio cancels the machine's drift
        rounds = {  # each round's two pairs of a kind, added
            kind: [x + y for x, y in zip(results[f"{kind}1"], results[f"{kind}2"], strict=True)]
            for kind in KINDS
        }
        medians = {
            kind: statistics.median(results[f"{kind}1"] + results[f"{kind}2"]) for kind in KINDS
        }
        print(
            f"{driver}: {what} medians: groups and bindings {medians['grouped']:.4g}, bindings"
            f" {medians['plain']:.4g}, neither {medians['bare']:.4g}"
        )
        for these, those, what_it_costs in (
            ("grouped", "bare", "groups and bindings together (target >= 0.95x)"),
            ("plain", "bare", "bindings alone"),
            ("grouped", "plain", "groups alone"),
        ):
            print(
                f"{driver}: {what} {what_it_costs}: ratio of medians "
                f"{medians[these] / medians[those]:.2f}x, median of the rounds' ratios "
                f"{paired(rounds[these], rounds[those]):.2f}x"
            )
        floors = ", ".join(f"{k} {paired(results[f'{k}2'], results[f'{k}1']):.2f}x" for k in KINDS)
        print(f"{driver}: {what} floor, a kind's two pairs against each other: {floors}")


def paired(these: list[float], those: list[float]) -> float:
    """The median of each round's ratio of ``these`` to ``those``."""
    return statistics.median(a / b for a, b in zip(these, those, strict=True))


class FlowWatch:
    """The flows a host's integration bridge gains, as OVS reports them (a flow monitor,
    ``ovs-ofctl monitor ... watch:``), written to a file: waiting for a rule reads a file
    instead of asking the switch being measured for its flows 150 times a second."""

    def __init__(self, ovsdb: str, path: Path) -> None:
        self.path = path
        # ovs-ofctl buffers what it prints to a pipe until it exits; a file set through
        # its control socket is written as the events come
        self.proc = subprocess.Popen(
            ["ovs-ofctl", "monitor", bridge_socket(ovsdb), "watch:!initial,table=2"],
            stdout=subprocess.DEVNULL,
            env={**os.environ, "OVS_RUNDIR": rundir(ovsdb)},
        )
        control = f"{rundir(ovsdb)}/ovs-ofctl.{self.proc.pid}.ctl"
        for _ in range(100):
            if Path(control).exists():
                break
            time.sleep(0.05)
        subprocess.run(
            ["ovs-appctl", "-t", control, "ofctl/set-output-file", str(path)],
            check=True,
            capture_output=True,
        )

    def has(self, port: int) -> bool:
        added = re.compile(rf"event=ADDED .*tp_dst={port}\b")
        return any(added.search(line) for line in self.path.read_text().splitlines())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


async def in_datapath(ns: str, watch: FlowWatch | None, port: int) -> bool:
    """Whether a host's datapath has a rule for TCP port ``port``."""
    if watch is not None:
        return watch.has(port)
    cmd = ["ip", "netns", "exec", ns, "nft", "list", "table", "inet", "plugstrip"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    return re.search(rf"dport {port}\b", (await proc.communicate())[0].decode()) is not None


async def fill_and_change(
    url: str, network: str, hosts: list[tuple[str, str]], driver: str, changes: int
) -> list[float]:
    """``MEMBERS`` endpoints in group cli, as another host's (no such host runs: they are
    sources only, in every host's member set); then seconds from each rule written to the
    store to its being in every host's datapath (``hosts``: namespace and OVSDB)."""
    store = EtcdStore.from_url(url)
    service = NetworkService(store, {})
    times = []
    watches: dict[str, FlowWatch | None] = {ns: None for ns, _ in hosts}
    try:
        if driver == "plugstrip/ovs":
            folder = Path(tempfile.mkdtemp(prefix="ps-flowwatch-"))
            watches = {ns: FlowWatch(ovsdb, folder / ns) for ns, ovsdb in hosts}
        record = await store.get_network(network)
        for i in range(MEMBERS):
            meta = EndpointMeta(host="elsewhere", groups=("cli",))
            await store.allocate(record.id, f"member-{i}", meta=meta)
        await asyncio.sleep(2)  # every host has enforced the members
        for i in range(changes):
            port = 7000 + i
            rule = parse_rule("cli", "tcp", str(port))
            started = time.monotonic()
            await service.allow("srv", rule)
            waiting = set(watches)
            while waiting:  # every host probed at once: a round costs one probe, not three
                probed = list(waiting)
                found = await asyncio.gather(*(in_datapath(h, watches[h], port) for h in probed))
                waiting = {h for h, done in zip(probed, found, strict=True) if not done}
                if time.monotonic() - started > 30:
                    raise SystemExit(f"rule tcp/{port} not on every host after 30 s")
                await asyncio.sleep(0.02)
            times.append(time.monotonic() - started)
            await service.revoke("srv", rule)
    finally:
        for watch in watches.values():
            if watch is not None:
                watch.close()
        await service.close()
    return times


def measure_propagation(workdir: Path, driver: str, changes: int) -> None:
    through_ovs = driver.endswith("ovs")
    with cluster(workdir / driver.split("/")[1], 3, underlay_through_ovs=through_ovs) as c:
        url = c.etcd.url
        first = c.hosts[0]
        for args in (("create", "srv"), ("create", "cli")):
            cmd = ["nsenter", f"--net={first.netns_path}", "plugstrip", "sg", *args]
            subprocess.run([*cmd, "--store", url], check=True, capture_output=True)
        network = "wide"
        first.docker("network", "create", "-d", driver, "--subnet", "10.120.0.0/16", network)
        for i, h in enumerate(c.hosts):
            sleeper(h, f"srv{i}", network, "--label", f"{LABEL}=srv")
        hosts = json.dumps([(h.ns, h.ovsdb) for h in c.hosts])
        # etcd is on the underlay: the measuring client runs in a host's namespace
        out = subprocess.run(
            [
                *("nsenter", f"--net={first.netns_path}", sys.executable, "-m", "bench.sg_bench"),
                *("--changes-worker", url, network, driver, str(changes), hosts),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        times = json.loads(out.splitlines()[-1])
        print(
            f"{driver}: a rule reaches all 3 hosts' datapaths, {MEMBERS:,} endpoints in its "
            f"source group: p50 {statistics.median(times) * 1000:.0f} ms, worst "
            f"{max(times) * 1000:.0f} ms over {len(times)} changes (target < 1000 ms)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("datapath", "propagation"), help="one part only")
    parser.add_argument("--driver", choices=DRIVERS, help="one driver only")
    parser.add_argument("--changes-worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.changes_worker:
        url, network, driver, changes, hosts = args.changes_worker
        pairs = [tuple(h) for h in json.loads(hosts)]
        print(json.dumps(asyncio.run(fill_and_change(url, network, pairs, driver, int(changes)))))
        return
    runs, seconds, changes = (3, 2, 5) if args.quick else (9, 3, 20)
    drivers = [args.driver] if args.driver else DRIVERS
    for tool in ("iperf3", "nft"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: scripts/install-deps installs it")
    workdir = Path(tempfile.mkdtemp(prefix="ps-sgbench-"))
    with docker_host(workdir / "host") as h:
        h.start_plugstrip()
        for args_ in (
            ("create", "srv"),
            ("create", "cli"),
            ("allow", "srv", "--from", "cli", "--proto", "tcp"),
        ):
            out = plugstrip_cmd(h, "sg", *args_, ovs=False)
            if out.returncode != 0:
                raise SystemExit(out.stderr)
        for driver in drivers:
            if args.only != "propagation":
                measure_datapath(h, driver, runs, seconds)
        h.stop_plugstrip()
    for driver in drivers:
        if args.only != "datapath":
            measure_propagation(workdir, driver, changes)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
