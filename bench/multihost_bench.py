"""plugstrip networks across hosts, on three test hosts (namespaces on an underlay bridge,
each with its own dockerd and plugstrip, one etcd on the underlay; see tests/cluster.py).

    python3 -m bench.multihost_bench [--quick]

Prints, measured in the same run:
- TCP throughput between containers on two hosts over plugstrip/weave, against a VXLAN
  built by hand (bridge, VXLAN device, veth) between the same two container namespaces
  (target >= 0.95x), and against the underlay itself (reported);
- the latency of one address allocation on the etcd store against the SQLite store;
- how long a new host takes to be reachable: from starting plugstrip on a third host to
  a container there answering pings from containers on both other hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import allocation_times, in_pid_ns, iperf
from plugstrip.netdrivers.stores.etcd import EtcdStore
from plugstrip.netdrivers.stores.sqlite import SqliteStore
from tests.cluster import cluster
from tests.dockerhost import UNDERLAY_DEVICE, DockerHost
from tests.etcd import etcd_server
from tests.netcheck import address, reaches, sleeper

HAND_VNI = 4000
HAND_NET = "10.199.0"
MTU = 1450  # the underlay's 1500 less VXLAN's 50, as plugstrip/weave sets it
LATENCY_SUBNET = "10.101.0.0/16"  # the allocation-latency network, in its own store


def pid_of(host: DockerHost, container: str) -> str:
    return str(json.loads(host.docker("inspect", container).stdout)[0]["State"]["Pid"])


def hand_built_vxlan(hosts: list[DockerHost], pids: list[str]) -> None:
    """What plugstrip/weave programs, by hand with ip(8): per host a bridge and a VXLAN
    device (static flood entry to the other host), and a veth into the container."""
    for i, (host, pid) in enumerate(zip(hosts, pids, strict=True)):
        peer = hosts[1 - i].address
        for cmd in (
            ["ip", "link", "add", "hbbr", "mtu", str(MTU), "type", "bridge"],
            [
                "ip",
                "link",
                "add",
                "hbvx",
                "mtu",
                str(MTU),
                "type",
                "vxlan",
                "id",
                str(HAND_VNI),
                "dstport",
                "4789",
                "local",
                str(host.address),
                "dev",
                UNDERLAY_DEVICE,
            ],
            ["ip", "link", "set", "hbvx", "master", "hbbr", "up"],
            ["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "hbvx", "dst", str(peer)],
            ["ip", "link", "add", "hbv", "mtu", str(MTU), "type", "veth", "peer", "name", "hb0"],
            ["ip", "link", "set", "hbv", "master", "hbbr", "up"],
            ["ip", "link", "set", "hb0", "netns", f"/proc/{pid}/ns/net"],
            ["ip", "link", "set", "hbbr", "up"],
            # where Docker's documentation puts a user's rules (dockerd keeps it first)
            ["iptables", "-I", "DOCKER-USER", "-i", "hbbr", "-o", "hbbr", "-j", "ACCEPT"],
        ):
            run = host.run_in_ns(*cmd)
            assert run.returncode == 0, (cmd, run.stderr)
        inside = in_pid_ns(pid)
        for cmd in (
            ["ip", "addr", "add", f"{HAND_NET}.{i + 1}/24", "dev", "hb0"],
            ["ip", "link", "set", "hb0", "up"],
        ):
            subprocess.run([*inside, *cmd], check=True)


def _each(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.2f}" for v in values) + ")"


def summary(times: list[float]) -> str:
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"median {statistics.median(times) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    seconds, count, rounds = (3, 100, 2) if args.quick else (10, 500, 3)
    if shutil.which("iperf3") is None:
        raise SystemExit("iperf3 is not installed: scripts/install-deps installs it")
    workdir = Path(tempfile.mkdtemp(prefix="ps-mhbench-"))
    with cluster(workdir / "cluster", 3, started=2) as c:
        a, b, new = c.hosts
        a.docker("network", "create", "-d", "plugstrip/weave", "wide")
        sleeper(a, "srv", "wide")
        sleeper(b, "cli", "wide")
        server_ip = address(a, "srv", "wide")
        deadline = time.monotonic() + 15
        while not reaches(b, "cli", server_ip) and time.monotonic() < deadline:
            time.sleep(0.2)
        pids = [pid_of(a, "srv"), pid_of(b, "cli")]
        hand_built_vxlan([a, b], pids)
        hand, weave = [], []
        for _ in range(rounds):  # taking turns, so that drift in load hits both alike
            hand.append(iperf(in_pid_ns(pids[0]), in_pid_ns(pids[1]), f"{HAND_NET}.1", seconds))
            weave.append(iperf(in_pid_ns(pids[0]), in_pid_ns(pids[1]), server_ip, seconds))
        under = iperf(
            ["nsenter", f"--net={a.netns_path}"],
            ["nsenter", f"--net={b.netns_path}"],
            str(a.address),
            seconds,
        )
        w, h = statistics.mean(weave), statistics.mean(hand)
        print(
            f"TCP between containers on two hosts, mean of {rounds} taking turns: "
            f"plugstrip/weave {w:.2f} Gbit/s {_each(weave)}, hand-built VXLAN {h:.2f} Gbit/s "
            f"{_each(hand)}, ratio {w / h:.2f}x (target >= 0.95x); the underlay itself "
            f"{under:.2f} Gbit/s (weave {w / under:.2f}x of it)"
        )

        started = time.perf_counter()
        c.start_plugstrip(new)  # a host joining: plugstrip starts, a container runs there
        sleeper(new, "newbie", "wide")
        ran = time.perf_counter()
        target = address(new, "newbie", "wide")
        for host, box in ((a, "srv"), (b, "cli")):
            while not reaches(host, box, target):
                if time.perf_counter() - started > 60:
                    raise SystemExit("the new host did not become reachable within 60 s")
        reached = time.perf_counter()
        print(
            f"a new host reachable from all others: {reached - started:.2f} s from starting "
            f"plugstrip there ({reached - ran:.2f} s after its first container was running)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = asyncio.run(
            allocation_times(SqliteStore(Path(tmp) / "lat.db"), 1000, LATENCY_SUBNET, count)
        )
    print(f"one allocation, 1,000 in use: SQLite {summary(sqlite)}")
    with etcd_server(workdir / "etcd") as url:
        etcd = asyncio.run(allocation_times(EtcdStore.from_url(url), 1000, LATENCY_SUBNET, count))
    ratio = statistics.median(etcd) / statistics.median(sqlite)
    print(f"one allocation, 1,000 in use: etcd {summary(etcd)} ({ratio:.1f}x SQLite's median)")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
