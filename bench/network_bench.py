"""plugstrip networks against Docker's own bridge networks, measured in the same run on a
test host (its own namespace, dockerd, Open vSwitch, plugstrip; see tests/dockerhost.py).

    python3 -m bench.network_bench [--quick]

Prints each measure direct and through plugstrip, and the ratio:
- `docker run -d --network NET` wall time, on a plugstrip/weave network through plugstrip
  vs a Docker user-defined bridge network on the daemon directly (target <= 1.25x), with
  plugstrip's spare holders (the default) and without;
- TCP throughput between two containers (iperf3 in their namespaces), plugstrip/weave vs
  Docker's bridge network (target >= 0.9x);
- IPAM: allocations per second with 10,000 addresses in use, on the SQLite store and on
  etcd (and on etcd with 1,000).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import allocation_times, in_pid_ns, iperf
from plugstrip.netdrivers.stores.etcd import EtcdStore
from plugstrip.netdrivers.stores.sqlite import SqliteStore
from plugstrip.netdrivers.stores.store import Store
from tests import harness
from tests.dockerhost import docker_host
from tests.etcd import etcd_server

SETTLE = 1.0  # seconds after each run: a spare holder is made and started in well under


def run_times(pairs: list[tuple[str, str]], count: int) -> list[list[float]]:
    """Seconds per `docker run -d` for each (DOCKER_HOST, network), taking turns so that
    drift in the machine's load hits all alike, with a pause after each run so that work
    it left in the background (plugstrip topping up its spare holders) does not slow the
    next one; the containers removed after."""
    times: list[list[float]] = [[] for _ in pairs]
    made: list[tuple[str, str]] = []
    for i in range(count):
        for (host, network), out in zip(pairs, times, strict=True):
            name = f"bench-{network}-{i}"
            started = time.perf_counter()
            harness.docker(
                host, "run", "-d", "--name", name, "--network", network, "busybox", "sleep", "1d"
            )
            out.append(time.perf_counter() - started)
            made.append((host, name))
            time.sleep(SETTLE)
    for host, name in made:
        harness.docker(host, "rm", "-f", name)
    return times


def tcp_throughput(host: str, network: str, seconds: int) -> float:
    """Gbit/s from one container to another with iperf3 run in their namespaces."""
    names = [f"iperf-{network}-a", f"iperf-{network}-b"]
    for name in names:
        harness.docker(
            host, "run", "-d", "--name", name, "--network", network, "busybox", "sleep", "1d"
        )
    try:
        info = [json.loads(harness.docker(host, "inspect", n).stdout)[0] for n in names]
        server, client = (in_pid_ns(str(i["State"]["Pid"])) for i in info)
        server_ip = info[0]["NetworkSettings"]["Networks"][network]["IPAddress"]
        return iperf(server, client, server_ip, seconds)
    finally:
        harness.docker(host, "rm", "-f", *names)


def ipam_rate(store: Store, in_use: int, count: int) -> float:
    """Allocations per second with ``in_use`` addresses already held on a /16."""
    return count / sum(asyncio.run(allocation_times(store, in_use, "10.100.0.0/16", count)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    runs, seconds = (5, 3) if args.quick else (20, 10)
    if shutil.which("iperf3") is None:
        raise SystemExit("iperf3 is not installed: scripts/install-deps installs it")
    workdir = Path(tempfile.mkdtemp(prefix="ps-netbench-"))
    with docker_host(workdir / "host") as h:
        h.start_plugstrip()
        harness.docker(h.daemon, "network", "create", "dockerbr")
        h.docker("network", "create", "-d", "plugstrip/weave", "psweave")
        both = [(h.daemon, "dockerbr"), (h.host, "psweave")]
        run_times(both, 2)  # warm both paths (holder image, caches)
        direct, through = (statistics.median(t) for t in run_times(both, runs))
        print(
            f"docker run -d --network: Docker bridge direct {direct * 1000:.0f} ms, "
            f"plugstrip/weave through plugstrip {through * 1000:.0f} ms, "
            f"ratio {through / direct:.2f}x (target <= 1.25x)"
        )
        bridge_bw = tcp_throughput(h.daemon, "dockerbr", seconds)
        weave_bw = tcp_throughput(h.host, "psweave", seconds)
        print(
            f"TCP between two containers: Docker bridge {bridge_bw:.2f} Gbit/s, "
            f"plugstrip/weave {weave_bw:.2f} Gbit/s, ratio {weave_bw / bridge_bw:.2f}x "
            "(target >= 0.9x)"
        )
        # without spare holders every run starts its holder first
        h.stop_plugstrip()
        h.extra = ["--spare-holders", "0"]
        h.start_plugstrip()
        both = [(h.daemon, "dockerbr"), (h.host, "psweave")]
        direct, cold = (statistics.median(t) for t in run_times(both, runs))
        print(
            f"  the same with --spare-holders 0: direct {direct * 1000:.0f} ms, through "
            f"{cold * 1000:.0f} ms, ratio {cold / direct:.2f}x"
        )
    count = 200 if args.quick else 1000
    rate = ipam_rate(SqliteStore(workdir / "ipam.db"), 10_000, count)
    print(f"IPAM: {rate:.0f} allocations/s with 10,000 addresses in use (SQLite store)")
    with etcd_server(workdir) as url:
        for in_use in (1_000, 10_000):
            rate = ipam_rate(EtcdStore.from_url(url, f"/b{in_use}/"), in_use, count)
            print(f"IPAM: {rate:.0f} allocations/s with {in_use:,} addresses in use (etcd store)")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
